//! Shutdown scenarios S19, S33 and S41 of `docs/scenarios.md`, on the engine
//! with the in-memory transport and paused time. The publish and buffer
//! parts of these scenarios belong to the outbox and are tested there.

use crate::engine;

use std::pin::pin;

use engine::*;
use redial::machine::{ErrorKind, Generation, Reason, StateKind};
use redial::runtime::{EngineError, Report};
use redial::testing::Plan;

use ErrorKind::Transient;
use StateKind::{BackingOff, Closed, Closing, Connected, Connecting};

/// S19: shutting down while a reconnect sleeps before attempt 3 ends it as
/// a cancellation (state `Closed`, no `GaveUp`), every link that was ever
/// up was closed exactly once (the lost one too), and nothing is opened
/// afterwards.
#[tokio::test(start_paused = true)]
async fn s19_shutdown_while_backing_off_stops_everything() {
    let rig = Rig::connected(config(), Probe::memory()).await;
    let Rig {
        engine,
        handle,
        mut events,
        control,
        probe,
    } = rig;
    tokio::time::sleep(STABLE).await;
    control.set_default(Plan::Fail(Transient));
    handle.report_lost(Generation(1), Transient);
    wait_until(&handle, |s| s.state == BackingOff && s.attempt == 2).await;
    let mut schedule = Schedule::default_policy();
    schedule.next();
    // Halfway through the wait before attempt 3.
    tokio::time::sleep(schedule.next() / 2).await;
    let connects = control.connect_calls();
    events.clear();

    engine.shutdown().await;
    assert_eq!(handle.state(), Closed);
    assert_eq!(events.states(), [(BackingOff, Closed, Reason::Shutdown)]);
    assert!(events.gave_up().is_empty(), "cancelled is not failed");
    assert_eq!(handle.snapshot().failure, None);
    assert_eq!(handle.reconnect_now(), Err(EngineError::ShuttingDown));

    tokio::time::sleep(10 * DMAX).await;
    assert_eq!(control.connect_calls(), connects);
    assert_eq!(probe.opens().len() as u64, connects);
    assert_eq!(
        control.close_calls(),
        1,
        "link 1, closed although it was down"
    );
    assert_eq!(control.open_links(), 0);
}

/// S19 with a resume grace: the lost link is still lingering (it might
/// resume) when the shutdown comes; it is closed, and counted, although it
/// was reported down.
#[tokio::test(start_paused = true)]
async fn s19_shutdown_while_a_lost_link_lingers_closes_it() {
    let cfg = builder().resume_grace(secs(30)).build().unwrap();
    let rig = Rig::connected(cfg, Probe::memory()).await;
    let Rig {
        engine,
        handle,
        mut events,
        control,
        ..
    } = rig;
    handle.report_lost(Generation(1), Transient);
    wait_until(&handle, |s| s.state == BackingOff).await;
    events.clear();

    engine.shutdown().await;
    assert_eq!(
        events.states(),
        [
            (BackingOff, Closing, Reason::Shutdown),
            (Closing, Closed, Reason::CloseCompleted),
        ]
    );
    assert!(events.gave_up().is_empty());
    tokio::time::sleep(10 * DMAX).await;
    assert_eq!(control.connect_calls(), 1);
    assert_eq!(control.close_calls(), 1);
    assert_eq!(control.open_links(), 0);
}

/// S19 during an attempt: the open in flight is aborted, nothing is left
/// open and nothing is opened afterwards.
#[tokio::test(start_paused = true)]
async fn s19_shutdown_during_an_attempt_cancels_it() {
    let probe = Probe::memory();
    probe.control().plan([Plan::Succeed, Plan::Hang]);
    let rig = Rig::connected(config(), probe).await;
    let Rig {
        engine,
        handle,
        mut events,
        control,
        probe,
    } = rig;
    handle.report_lost(Generation(1), Transient);
    wait_until(&handle, |s| s.state == Connecting).await;
    wait_connect_calls(&control, 2).await;
    assert_eq!(probe.in_flight(), 1);
    events.clear();

    engine.shutdown().await;
    assert_eq!(probe.in_flight(), 0, "the open was aborted");
    assert_eq!(
        events.states(),
        [
            (Connecting, Closing, Reason::Shutdown),
            (Closing, Closed, Reason::CloseCompleted),
        ]
    );
    assert!(events.gave_up().is_empty());
    tokio::time::sleep(10 * DMAX).await;
    assert_eq!(control.connect_calls(), 2);
    assert_eq!(control.open_links(), 0);
}

/// S33: 200 worker rotations. Each new worker connects in one attempt while
/// the old one still runs; the old one then shuts down: it closes its link
/// (whose SDK fires an interrupt during the close, which is stale), never
/// reconnects, and the broker's open links equal the live workers after
/// every rotation.
#[tokio::test(start_paused = true)]
async fn s33_two_hundred_rotations_close_cleanly_and_never_reconnect() {
    let mut old = Rig::connected(config(), Probe::memory().hangup_on_close()).await;
    for rotation in 0..200 {
        let mut new = Rig::connected(config(), Probe::memory().hangup_on_close()).await;
        assert_eq!(new.events.attempts(), [(Generation(1), 1)], "#{rotation}");
        assert_eq!(old.control.open_links() + new.control.open_links(), 2);

        let Rig {
            engine,
            handle,
            mut events,
            control,
            probe,
        } = old;
        events.clear();
        engine.shutdown().await;
        assert_eq!(handle.state(), Closed);
        assert_eq!(
            events.states(),
            [
                (Connected, Closing, Reason::Shutdown),
                (Closing, Closed, Reason::CloseCompleted),
            ],
            "#{rotation}"
        );
        assert!(
            events.attempts().is_empty(),
            "#{rotation}: our close reconnected"
        );
        assert_eq!(probe.close_reports(), [(Generation(1), Report::Stale)]);
        assert_eq!(control.connect_calls(), 1);
        assert_eq!(control.close_calls(), 1);
        assert_eq!(control.open_links(), 0, "#{rotation}: link leaked");
        assert_eq!(new.control.open_links(), 1, "broker links = live workers");
        old = new;
    }
    old.engine.shutdown().await;
    assert_eq!(old.control.open_links(), 0);
}

/// S41: a shutdown is under way (closing link 1, which takes 2 s and fires
/// its own interrupt meanwhile) while a loss report queued before the
/// shutdown is still waiting: the reconnect request is refused, nothing is
/// opened after the shutdown began, and a second shutdown is a no-op.
#[tokio::test(start_paused = true)]
async fn s41_reconnect_requested_during_shutdown_is_refused() {
    let probe = Probe::memory().hangup_on_close().slow_close(secs(2));
    let Rig {
        engine,
        handle,
        mut events,
        control,
        probe,
    } = Rig::connected(config(), probe).await;
    events.clear();

    // A start-step queued before the shutdown began...
    assert_eq!(handle.report_lost(Generation(1), Transient), Report::Queued);
    // ...then the shutdown request, queued before the driver runs again.
    let mut shutdown = pin!(handle.shutdown());
    assert!(poll_once(&mut shutdown).await.is_pending());
    let connects = control.connect_calls();

    wait_until(&handle, |s| s.state == Closing).await;
    assert_eq!(handle.reconnect_now(), Err(EngineError::ShuttingDown));
    assert_eq!(
        handle.report_lost(Generation(1), Transient),
        Report::Stale,
        "our own close's interrupt"
    );
    shutdown.await;

    assert_eq!(handle.state(), Closed);
    assert_eq!(probe.close_reports(), [(Generation(1), Report::Stale)]);
    assert_eq!(
        events.states(),
        [
            (Connected, Closing, Reason::Shutdown),
            (Closing, Closed, Reason::CloseCompleted),
        ]
    );
    let closes = control.close_calls();
    assert_eq!(closes, 1);
    handle.shutdown().await;
    assert_eq!(
        control.close_calls(),
        closes,
        "a second shutdown closes nothing"
    );
    assert_eq!(handle.reconnect_now(), Err(EngineError::ShuttingDown));
    drop(engine);
    tokio::time::sleep(10 * DMAX).await;
    assert_eq!(
        control.connect_calls(),
        connects,
        "nothing opened after shutdown began"
    );
    assert!(events.attempts().is_empty());
}

/// S41 when a reconnect request and the shutdown reach the driver in the
/// same batch: the shutdown wins and nothing is opened.
#[tokio::test(start_paused = true)]
async fn s41_reconnect_queued_with_the_shutdown_opens_nothing() {
    let Rig {
        engine,
        handle,
        mut events,
        control,
        ..
    } = Rig::connected(config(), Probe::memory()).await;
    events.clear();

    assert_eq!(handle.reconnect_now(), Ok(()));
    engine.shutdown().await;
    tokio::time::sleep(10 * DMAX).await;
    assert_eq!(control.connect_calls(), 1);
    assert_eq!(control.close_calls(), 1);
    assert!(events.attempts().is_empty());
    assert_eq!(
        events.states(),
        [
            (Connected, Closing, Reason::Shutdown),
            (Closing, Closed, Reason::CloseCompleted),
        ]
    );
}
