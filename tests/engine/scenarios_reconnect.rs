//! Reconnect scenarios S10-S18 and S20 of `docs/scenarios.md` (S19 is in
//! `scenarios_shutdown.rs`), on the engine with the in-memory transport and
//! paused time.
//!
//! Mapping onto redial: an "active reconnect" is `Handle::reconnect_now`;
//! a "deep reconnect" (refresh credentials, connect, resubscribe) is what a
//! transport's `open` does, since `open` returns only when the link is
//! ready. Report 003's "actively reconnecting" flag guards one attempt in
//! flight: in redial that is the state `Connecting` (an open is running).
//! `Handle::is_reconnecting` is wider on purpose: it also stays true while
//! backing off, because the reconnect is still under way.

use crate::engine;

use std::future::Future;
use std::sync::{Arc, Mutex};

use engine::*;
use redial::machine::{ErrorKind, Generation, Reason, StateKind};
use redial::runtime::{Engine, OpenContext, Report, Transport};
use redial::testing::{LogEntry, MemoryError, MemoryLink, MemoryTransport, Plan};
use tokio::time::Instant;

use ErrorKind::Transient;
use StateKind::{BackingOff, Connected, Connecting};

/// S10: an active reconnect closes the old link, then opens the new one;
/// the flag is up exactly while the open runs, and the link is reported
/// healthy only when the open (which restores subscriptions) returned.
#[tokio::test(start_paused = true)]
async fn s10_active_reconnect_holds_the_flag_only_while_it_runs() {
    let probe = Probe::memory();
    probe
        .control()
        .plan([Plan::Succeed, Plan::SucceedAfter(secs(2))]);
    let mut rig = Rig::connected(config(), probe).await;
    rig.events.clear();

    let t0 = Instant::now();
    rig.handle.reconnect_now().unwrap();
    wait_until(&rig.handle, |s| s.state == Connecting).await;
    assert!(rig.handle.is_reconnecting());
    assert!(!rig.handle.is_connected());
    connected_on(&rig.handle, Generation(2)).await;
    assert_eq!(
        Instant::now(),
        t0 + secs(2),
        "healthy only once open returned"
    );
    assert!(!rig.handle.is_reconnecting());

    let flags: Vec<bool> = rig.probe.opens()[1..]
        .iter()
        .map(|o| o.reconnecting)
        .collect();
    assert_eq!(flags, [true]);
    assert_eq!(rig.probe.opens()[1].open_links, 0, "old link closed first");
    assert_eq!(
        rig.control.log(),
        [
            LogEntry::Open(Generation(1), 1),
            LogEntry::Up(Generation(1)),
            LogEntry::Close(Generation(1)),
            LogEntry::Open(Generation(2), 1),
            LogEntry::Up(Generation(2)),
        ]
    );
    assert_eq!(
        rig.events.states(),
        [
            (Connected, Connecting, Reason::ReconnectRequested),
            (Connecting, Connected, Reason::AttemptSucceeded),
        ]
    );
}

/// S11: a failed active reconnect surfaces the transport's error, leaves no
/// attempt in flight, and the next attempt runs at its backoff time.
#[tokio::test(start_paused = true)]
async fn s11_failed_active_reconnect_surfaces_the_error_and_backs_off() {
    let probe = Probe::memory();
    probe.control().plan([Plan::Succeed, Plan::Fail(Transient)]);
    let mut rig = Rig::connected(config(), probe).await;
    rig.events.clear();
    let mut schedule = Schedule::default_policy();

    let t0 = Instant::now();
    rig.handle.reconnect_now().unwrap();
    wait_until(&rig.handle, |s| s.state == BackingOff).await;
    let expected_error = MemoryError { kind: Transient }.to_string();
    assert_eq!(
        rig.events.failures(),
        [(Generation(2), 1, Transient, expected_error)]
    );
    assert_eq!(rig.probe.in_flight(), 0, "no attempt in flight");
    assert!(!rig.handle.is_connected());

    connected_on(&rig.handle, Generation(3)).await;
    let opens = rig.probe.opens();
    assert_eq!(opens[2].attempt, 2);
    assert_eq!(opens[2].at, t0 + schedule.next());
}

/// S12: a reconnect requested while an attempt runs returns at once, opens
/// and closes nothing, and leaves the running attempt alone.
#[tokio::test(start_paused = true)]
async fn s12_reentrant_reconnect_is_a_no_op() {
    let probe = Probe::memory();
    probe
        .control()
        .plan([Plan::Succeed, Plan::SucceedAfter(secs(5))]);
    let rig = Rig::connected(config(), probe).await;

    let t0 = Instant::now();
    rig.handle.reconnect_now().unwrap();
    let running = wait_until(&rig.handle, |s| s.state == Connecting).await;
    let (connects, closes) = (rig.control.connect_calls(), rig.control.close_calls());

    assert_eq!(rig.handle.reconnect_now(), Ok(()));
    let h = rig.handle.clone();
    std::thread::spawn(move || h.reconnect_now())
        .join()
        .unwrap()
        .unwrap();
    idle().await;
    assert_eq!(rig.control.connect_calls(), connects);
    assert_eq!(rig.control.close_calls(), closes);
    assert_eq!(rig.handle.snapshot(), running);
    assert!(rig.handle.is_reconnecting());

    connected_on(&rig.handle, Generation(2)).await;
    assert_eq!(
        Instant::now(),
        t0 + secs(5),
        "the running attempt was not disturbed"
    );
    assert_eq!(rig.control.connect_calls(), 2);
    assert_eq!(rig.control.close_calls(), 1);
}

/// One step of a deep reconnect, as the transport performed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Close(Generation),
    Refresh(Generation),
    /// The connect, with `Handle::is_reconnecting()` at that moment.
    Connect(Generation, bool),
    Resubscribe(Generation),
}

/// A transport whose `open` is a deep reconnect: refresh the credentials
/// (100 ms), connect (the in-memory plan), resubscribe (50 ms).
#[derive(Clone)]
struct Deep {
    inner: MemoryTransport,
    steps: Arc<Mutex<Vec<Step>>>,
}

impl Deep {
    fn new() -> Self {
        Self {
            inner: MemoryTransport::new(),
            steps: Arc::default(),
        }
    }

    fn steps(&self) -> Vec<Step> {
        self.steps.lock().unwrap().clone()
    }
}

impl Transport for Deep {
    type Link = MemoryLink;
    type Error = MemoryError;

    fn open(
        &self,
        ctx: OpenContext,
    ) -> impl Future<Output = Result<MemoryLink, MemoryError>> + Send + 'static {
        let steps = self.steps.clone();
        let connect = self.inner.open(ctx.clone());
        async move {
            let g = ctx.generation;
            steps.lock().unwrap().push(Step::Refresh(g));
            tokio::time::sleep(ms(100)).await;
            let flag = ctx.reporter.handle().is_reconnecting();
            steps.lock().unwrap().push(Step::Connect(g, flag));
            let link = connect.await?;
            tokio::time::sleep(ms(50)).await;
            steps.lock().unwrap().push(Step::Resubscribe(g));
            Ok(link)
        }
    }

    fn close(&self, link: MemoryLink, reason: Reason) -> impl Future<Output = ()> + Send + 'static {
        self.steps
            .lock()
            .unwrap()
            .push(Step::Close(link.generation));
        self.inner.close(link, reason)
    }
}

/// S13: a deep reconnect runs close, refresh, connect, resubscribe in that
/// order, refreshes once, and is healthy only after resubscribing.
#[tokio::test(start_paused = true)]
async fn s13_deep_reconnect_closes_refreshes_connects_resubscribes_in_order() {
    let deep = Deep::new();
    let engine = Engine::spawn(config(), deep.clone());
    let handle = engine.handle();
    connected_on(&handle, Generation(1)).await;
    let first = deep.steps().len();

    let t0 = Instant::now();
    handle.reconnect_now().unwrap();
    connected_on(&handle, Generation(2)).await;
    assert_eq!(
        Instant::now(),
        t0 + ms(150),
        "healthy only after resubscribing"
    );
    assert!(!handle.is_reconnecting());
    let g = Generation(2);
    assert_eq!(
        deep.steps()[first..],
        [
            Step::Close(Generation(1)),
            Step::Refresh(g),
            Step::Connect(g, true),
            Step::Resubscribe(g),
        ]
    );
    engine.shutdown().await;
}

/// S14: a failed deep reconnect surfaces its error and leaves no attempt in
/// flight; the retry succeeds, and a later genuine interrupt on the new link
/// starts a new reconnect.
#[tokio::test(start_paused = true)]
async fn s14_failed_deep_reconnect_clears_and_a_later_interrupt_restarts() {
    let deep = Deep::new();
    deep.inner
        .control()
        .plan([Plan::Succeed, Plan::Fail(Transient)]);
    let engine = Engine::spawn(config(), deep.clone());
    let handle = engine.handle();
    let mut events = Recorder::new(&handle);
    connected_on(&handle, Generation(1)).await;
    events.clear();
    let mut schedule = Schedule::default_policy();

    let t0 = Instant::now();
    handle.reconnect_now().unwrap();
    wait_until(&handle, |s| s.state == BackingOff).await;
    assert_eq!(Instant::now(), t0 + ms(100), "failed after the refresh");
    assert_eq!(
        events.failures(),
        [(
            Generation(2),
            1,
            Transient,
            MemoryError { kind: Transient }.to_string()
        )]
    );
    connected_on(&handle, Generation(3)).await;
    assert_eq!(Instant::now(), t0 + ms(100) + schedule.next() + ms(150));

    tokio::time::sleep(STABLE).await;
    events.clear();
    assert_eq!(handle.report_lost(Generation(3), Transient), Report::Queued);
    connected_on(&handle, Generation(4)).await;
    assert_eq!(
        events.states()[0],
        (Connected, Connecting, Reason::LinkLost)
    );
    assert_eq!(events.attempts(), [(Generation(4), 1)]);
    engine.shutdown().await;
}

/// S15: a resume that arrives just before the retry is due (1 ms before,
/// or with the retry's timer already fired) is applied by the driver, not
/// by the reporting thread, and cancels the retry: nothing is opened or
/// closed.
#[tokio::test(start_paused = true)]
async fn s15_resume_just_before_the_retry_cancels_it_on_the_driver() {
    for timer_already_fired in [false, true] {
        let cfg = builder().resume_grace(secs(5)).build().unwrap();
        let mut rig = Rig::connected(cfg, Probe::memory()).await;
        tokio::time::sleep(STABLE).await;
        rig.events.clear();

        rig.handle.report_lost(Generation(1), Transient);
        wait_until(&rig.handle, |s| s.state == BackingOff).await;
        // A stable link's loss: the retry waits for the grace only.
        let wake = Instant::now() + secs(5);
        tokio::time::sleep_until(wake - ms(1)).await;

        assert_eq!(rig.handle.report_resumed(Generation(1)), Report::Queued);
        assert_eq!(rig.handle.state(), BackingOff, "the caller only queued it");
        if timer_already_fired {
            // The driver next runs with both the retry timer and the resume ready.
            tokio::time::advance(ms(1)).await;
        }
        connected_on(&rig.handle, Generation(1)).await;
        tokio::time::sleep(10 * DMAX).await;

        assert_eq!(
            rig.control.connect_calls(),
            1,
            "fired={timer_already_fired}"
        );
        assert_eq!(rig.control.close_calls(), 0, "fired={timer_already_fired}");
        assert!(!rig.handle.is_reconnecting());
        assert_eq!(
            rig.events.states(),
            [
                (Connected, BackingOff, Reason::LinkLost),
                (BackingOff, Connected, Reason::LinkResumed),
            ]
        );
    }
}

/// S16: cancelling when there is nothing to cancel is harmless, and a
/// genuine loss after a cancelled reconnect starts a new one.
#[tokio::test(start_paused = true)]
async fn s16_cancel_is_idempotent_and_a_later_genuine_drop_restarts_the_loop() {
    let cfg = builder().resume_grace(secs(5)).build().unwrap();
    let mut rig = Rig::connected(cfg, Probe::memory()).await;
    rig.events.clear();

    // (a) No reconnect under way: a resume (twice) changes nothing.
    for _ in 0..2 {
        assert_eq!(rig.handle.report_resumed(Generation(1)), Report::Queued);
        idle().await;
    }
    assert!(rig.events.states().is_empty());
    // (b) A reconnect that already finished: resuming its old link is stale.
    rig.handle.reconnect_now().unwrap();
    connected_on(&rig.handle, Generation(2)).await;
    assert_eq!(rig.handle.report_resumed(Generation(1)), Report::Stale);
    idle().await;
    assert_eq!(rig.handle.state(), Connected);
    assert_eq!(rig.control.connect_calls(), 2);
    rig.events.clear();

    // (c) Interrupted, resumed (cancelled), then a genuine loss.
    rig.handle.report_lost(Generation(2), Transient);
    wait_until(&rig.handle, |s| s.state == BackingOff).await;
    rig.handle.report_resumed(Generation(2));
    connected_on(&rig.handle, Generation(2)).await;
    rig.handle.report_lost(Generation(2), Transient);
    wait_until(&rig.handle, |s| s.state == BackingOff).await;
    assert!(rig.handle.is_reconnecting(), "the second loop is live");
    connected_on(&rig.handle, Generation(3)).await;

    let loops = rig
        .events
        .states()
        .iter()
        .filter(|(from, _, _)| *from == Connected)
        .count();
    assert_eq!(loops, 2);
    assert_eq!(
        rig.events.attempts().len(),
        1,
        "only the second loop opened"
    );
    assert_eq!(rig.probe.max_in_flight(), 1);
    assert_eq!(rig.control.max_open_links(), 1);
}

/// S17: the old link is closed, even when it was already reported down,
/// before the next one is opened, on every route to a new link; one link
/// at most is ever open, and a 10-minute soak after the outage is quiet.
#[tokio::test(start_paused = true)]
async fn s17_old_link_is_closed_before_the_new_one_opens() {
    // Routes with a resume grace: the grace runs out, or the user reconnects.
    let cfg = builder().resume_grace(secs(5)).build().unwrap();
    let rig = Rig::connected(cfg, Probe::memory()).await;
    tokio::time::sleep(STABLE).await;
    rig.handle.report_lost(Generation(1), Transient);
    connected_on(&rig.handle, Generation(2)).await;
    rig.handle.reconnect_now().unwrap();
    connected_on(&rig.handle, Generation(3)).await;
    // Route without a grace: the loss itself replaces the link.
    let plain = Rig::connected(config(), Probe::memory()).await;
    tokio::time::sleep(STABLE).await;
    plain.handle.report_lost(Generation(1), Transient);
    connected_on(&plain.handle, Generation(2)).await;

    tokio::time::sleep(secs(600)).await;
    for (rig, last) in [(&rig, 3), (&plain, 2)] {
        let mut expected = vec![
            LogEntry::Open(Generation(1), 1),
            LogEntry::Up(Generation(1)),
        ];
        for g in 2..=last {
            expected.extend([
                LogEntry::Close(Generation(g - 1)),
                LogEntry::Open(Generation(g), 1),
                LogEntry::Up(Generation(g)),
            ]);
        }
        assert_eq!(rig.control.log(), expected);
        assert!(rig.probe.opens().iter().all(|o| o.open_links == 0));
        assert_eq!(rig.control.max_open_links(), 1);
        assert_eq!(rig.control.open_links(), 1);
    }
}

/// S18: the link is reported healthy (state and the publishers' link) only
/// when `open` returned, i.e. after the topology was restored; a failed
/// restore is surfaced as an event, keeps the state unhealthy and is retried.
#[tokio::test(start_paused = true)]
async fn s18_link_is_reported_healthy_only_after_open_restored_it() {
    let probe = Probe::memory();
    probe.control().plan([
        Plan::Succeed,
        Plan::FailAfter(secs(1), Transient),
        Plan::SucceedAfter(secs(3)),
    ]);
    let mut rig = Rig::connected(config(), probe).await;
    tokio::time::sleep(STABLE).await;
    rig.events.clear();
    let links = rig.engine.links();
    let current = || links.borrow().as_ref().map(|l| l.generation);
    let mut schedule = Schedule::default_policy();

    let t0 = Instant::now();
    rig.handle.report_lost(Generation(1), Transient);
    wait_until(&rig.handle, |s| s.state == Connecting).await;
    assert_eq!(current(), None, "restoring: not published");
    wait_until(&rig.handle, |s| s.state == BackingOff).await;
    assert_eq!(Instant::now(), t0 + secs(1));
    assert_eq!(
        rig.events.failures().len(),
        1,
        "the restore failure is surfaced"
    );
    assert!(!rig.handle.is_connected());
    assert_eq!(current(), None);

    let retry = t0 + secs(1) + schedule.next();
    tokio::time::sleep_until(retry + secs(2)).await;
    assert_eq!(rig.handle.state(), Connecting, "still restoring");
    assert_eq!(current(), None);
    connected_on(&rig.handle, Generation(3)).await;
    assert_eq!(Instant::now(), retry + secs(3));
    assert_eq!(current(), Some(Generation(3)));
}

/// S20: an attempt that fails with a transient error, or whose open fails
/// with something that is not a transport error at all (a panic), counts
/// as one failed attempt; the next attempt runs at its scheduled time and
/// succeeds.
#[tokio::test(start_paused = true)]
async fn s20_transient_non_transport_error_does_not_end_the_loop() {
    for panics in [false, true] {
        let probe = Probe::memory();
        let control = probe.control();
        let probe = if panics {
            // Opens: #1 initial, #2 attempt 1, #3 attempt 2 panics.
            control.plan([Plan::Succeed, Plan::Fail(Transient), Plan::Succeed]);
            probe.panic_on_open(3)
        } else {
            control.plan([
                Plan::Succeed,
                Plan::Fail(Transient),
                Plan::Fail(Transient),
                Plan::Succeed,
            ]);
            probe
        };
        let mut rig = Rig::connected(config(), probe).await;
        tokio::time::sleep(STABLE).await;
        rig.events.clear();
        let mut schedule = Schedule::default_policy();

        let lost_at = Instant::now();
        rig.handle.report_lost(Generation(1), Transient);
        connected_on(&rig.handle, Generation(4)).await;

        let (d1, d2) = (schedule.next(), schedule.next());
        assert_eq!(
            rig.probe.open_times()[1..],
            [lost_at, lost_at + d1, lost_at + d1 + d2],
            "panics={panics}"
        );
        assert_eq!(rig.events.attempt_numbers(), [1, 2, 3], "panics={panics}");
        let failed = rig
            .events
            .states()
            .iter()
            .filter(|(_, _, r)| *r == Reason::AttemptFailed)
            .count();
        assert_eq!(failed, 2, "panics={panics}");
        assert_eq!(rig.handle.state(), Connected);
    }
}

/// S20 (observability): an open that panicked is a failed attempt, so the
/// event stream should carry an `AttemptFailed` for it like for any other
/// failed open (S11/S14: the error surfaces).
#[tokio::test(start_paused = true)]
async fn s20_panicking_open_is_reported_as_a_failed_attempt() {
    let probe = Probe::memory().panic_on_open(2);
    let mut rig = Rig::connected(config(), probe).await;
    tokio::time::sleep(STABLE).await;
    rig.events.clear();
    rig.handle.report_lost(Generation(1), Transient);
    connected_on(&rig.handle, Generation(3)).await;
    let failed: Vec<_> = rig
        .events
        .failures()
        .into_iter()
        .map(|(g, a, k, _)| (g, a, k))
        .collect();
    assert_eq!(failed, [(Generation(2), 1, Transient)]);
}
