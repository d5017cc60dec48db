//! The runtime surface an embedder touches: waiting for the first connect
//! with a result, events from the very first, counters that mean what they
//! say, and a lifecycle that follows ownership. In-memory transport, paused
//! tokio time.

use std::time::Duration;

use futures::StreamExt;
use redial::machine::{Config, ConfigBuilder, ErrorKind, FailCause, Generation, Reason, StateKind};
use redial::outbox::{OutboxConfig, PublishErrorKind, Publisher};
use redial::runtime::{Engine, Event, EventStream, Handle, WaitError};
use redial::testing::{MemoryError, MemoryTransport, Plan, Script};
use tokio::time::Instant;

/// A fixed seed, and the watchdog off (in-memory links send no heartbeats).
fn builder() -> ConfigBuilder {
    Config::builder().seed(12).no_liveness_timeout()
}

fn config() -> Config {
    builder().build().expect("valid config")
}

/// Longer than anything the engine does by itself here.
const LONG: Duration = Duration::from_secs(600);

/// The next state change on `events`, skipping other events.
async fn next_change(events: &mut EventStream) -> Event {
    loop {
        let event = events
            .next()
            .await
            .expect("the engine runs")
            .expect("no event missed");
        if matches!(event, Event::StateChanged { .. }) {
            return event;
        }
    }
}

/// The next state change with `reason`.
async fn next_change_for(events: &mut EventStream, reason: Reason) -> Event {
    loop {
        let event = next_change(events).await;
        if matches!(&event, Event::StateChanged { reason: r, .. } if *r == reason) {
            return event;
        }
    }
}

async fn connected(handle: &Handle) -> Generation {
    handle.wait_connected(LONG).await.expect("connects")
}

// ---- the first connect ------------------------------------------------------

/// A permanent error at the first connect: `wait_connected` returns at
/// once with the engine's give-up and the transport's error, instead of
/// hanging; after `reconnect_now` the same wait sees the new link.
#[tokio::test(start_paused = true)]
async fn wait_connected_returns_the_error_of_a_permanent_first_connect_failure() {
    let transport = MemoryTransport::new();
    let control = transport.control();
    control.plan([Plan::Fail(ErrorKind::Permanent)]);
    let engine = Engine::spawn(config(), transport);
    let handle = engine.handle();

    let start = Instant::now();
    let error = handle
        .wait_connected(Duration::from_secs(60))
        .await
        .expect_err("the first connect failed for good");
    assert_eq!(start.elapsed(), Duration::ZERO, "returned at once");
    let WaitError::Failed { cause, error } = error else {
        panic!("not a give-up: {error:?}");
    };
    assert_eq!(cause, FailCause::Permanent);
    let error = error.expect("the transport's error is kept");
    let memory = error
        .downcast_ref::<MemoryError>()
        .expect("the transport's own error type");
    assert_eq!(memory.kind, ErrorKind::Permanent);
    // Any state but a shutdown is out of reach too.
    assert!(matches!(
        handle
            .wait_for_timeout(StateKind::Connected, Duration::from_secs(60))
            .await,
        Err(WaitError::Failed { .. })
    ));

    // The user asks again: a wait right after the request is not answered
    // with the old give-up (the driver has not taken the request yet).
    handle.reconnect_now().unwrap();
    let generation = handle
        .wait_connected(Duration::from_secs(60))
        .await
        .expect("the second try succeeds");
    assert_eq!(generation, handle.generation());
    engine.shutdown().await;
}

/// `wait_for_timeout` ends with `TimedOut` when the state does not come,
/// with `ShutDown` once the engine is shut down, and waits for `Closed`.
#[tokio::test(start_paused = true)]
async fn wait_for_timeout_times_out_and_stops_at_shutdown() {
    let transport = MemoryTransport::new();
    transport.control().set_default(Plan::Hang);
    let engine = Engine::spawn(builder().no_connect_timeout().build().unwrap(), transport);
    let handle = engine.handle();

    let start = Instant::now();
    let error = handle
        .wait_for_timeout(StateKind::Connected, Duration::from_secs(5))
        .await
        .expect_err("the open hangs");
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert!(
        matches!(error, WaitError::TimedOut { after, last } if after == Duration::from_secs(5) && last.state == StateKind::Connecting),
        "{error:?}"
    );

    handle.shutdown().await;
    assert!(matches!(
        handle.wait_connected(LONG).await,
        Err(WaitError::ShutDown)
    ));
    let closed = handle
        .wait_for_timeout(StateKind::Closed, Duration::ZERO)
        .await
        .expect("closed already");
    assert_eq!(closed.state, StateKind::Closed);
    drop(engine);
}

// ---- events -----------------------------------------------------------------

/// Subscribed before the engine starts, the stream sees the very first
/// transition (`idle -> connecting`) and everything after it, in order.
#[tokio::test(start_paused = true)]
async fn no_early_event_is_missed() {
    let prepared = Engine::prepare(config(), MemoryTransport::new());
    let mut events = prepared.events();
    let engine = prepared.start();

    let first = events.next().await.expect("an event").expect("not lagged");
    assert!(
        matches!(
            first,
            Event::StateChanged {
                from: StateKind::Idle,
                to: StateKind::Connecting,
                generation: Generation(1),
                lost: None,
                reason: Reason::Start,
                ..
            }
        ),
        "{first:?}"
    );
    let second = events.next().await.expect("an event").expect("not lagged");
    assert!(
        matches!(
            second,
            Event::AttemptStarted {
                generation: Generation(1),
                attempt: 1,
                ..
            }
        ),
        "{second:?}"
    );
    let third = next_change(&mut events).await;
    assert!(
        matches!(
            third,
            Event::StateChanged {
                from: StateKind::Connecting,
                to: StateKind::Connected,
                ..
            }
        ),
        "{third:?}"
    );
    assert_eq!(events.missed(), 0);
    engine.shutdown().await;
    // The stream ends with the engine.
    while let Some(event) = events.next().await {
        event.expect("no event missed");
    }
}

/// A change that takes a link down names it in `lost`; `generation` is
/// already the next link's. The shutdown's change names the link it
/// closes, not the one that never existed.
#[tokio::test(start_paused = true)]
async fn loss_events_name_the_lost_link() {
    let transport = MemoryTransport::new();
    let control = transport.control();
    let prepared = Engine::prepare(config(), transport);
    let mut events = prepared.events();
    let engine = prepared.start();
    let handle = engine.handle();
    let first = connected(&handle).await;

    control.sever();
    let loss = next_change_for(&mut events, Reason::LinkLost).await;
    let Event::StateChanged {
        from,
        generation,
        lost,
        ..
    } = loss
    else {
        unreachable!()
    };
    assert_eq!(from, StateKind::Connected);
    assert_eq!(lost, Some(first), "the link that was lost");
    assert_eq!(generation, first.next(), "the next link's generation");

    let second = connected(&handle).await;
    assert_eq!(second, first.next());
    handle.shutdown().await;
    let Event::StateChanged {
        from,
        to,
        generation,
        lost,
        ..
    } = next_change_for(&mut events, Reason::Shutdown).await
    else {
        unreachable!()
    };
    assert_eq!((from, to), (StateKind::Connected, StateKind::Closing));
    assert_eq!(lost, Some(second), "the link the shutdown closes");
    assert_eq!(generation, second.next());
    drop(engine);
}

// ---- counters ---------------------------------------------------------------

/// A blip the transport resumes within the grace is a loss and a resume,
/// not an outage; a loss that outlives the grace is an outage, replaced
/// by a new link. The histograms keep each recovery.
#[tokio::test(start_paused = true)]
async fn a_resumed_blip_is_not_an_outage_and_a_real_one_is() {
    let grace = Duration::from_secs(5);
    let config = builder().resume_grace(grace).build().unwrap();
    let transport = MemoryTransport::new();
    let control = transport.control();
    let engine = Engine::spawn(config, transport);
    let handle = engine.handle();
    let first = connected(&handle).await;

    // A blip: lost, then resumed by the transport 100 ms later.
    let reporter = control.latest_reporter().expect("a link");
    reporter.lost(ErrorKind::Transient);
    handle
        .wait_for_timeout(StateKind::BackingOff, LONG)
        .await
        .unwrap();
    let lingering = handle.stats();
    assert_eq!((lingering.losses, lingering.outages), (1, 0), "may resume");
    tokio::time::sleep(Duration::from_millis(100)).await;
    reporter.resumed();
    assert_eq!(connected(&handle).await, first, "the same link");
    let stats = handle.stats();
    assert_eq!(
        (stats.connects, stats.resumes, stats.losses, stats.outages),
        (1, 1, 1, 0)
    );
    assert_eq!(stats.last_recovery, Some(Duration::from_millis(100)));
    assert_eq!(stats.recovery_time.count(), 1);
    assert_eq!(
        stats.recovery_time.quantile(1.0),
        Some(Duration::from_millis(100)),
        "in the bucket up to 100 ms"
    );
    assert_eq!(stats.outage_length.count(), 0, "a blip is no outage");

    // A real outage: lost, no resume; the grace ends and a new link comes.
    reporter.lost(ErrorKind::Transient);
    let second = connected_after(&handle, first).await;
    let stats = handle.stats();
    assert_eq!(
        (stats.connects, stats.resumes, stats.losses, stats.outages),
        (2, 1, 2, 1)
    );
    assert_eq!(stats.losses, stats.resumes + stats.outages);
    assert_eq!(stats.outage_length.count(), 1);
    assert_eq!(stats.outage_length.sum(), grace, "the grace, then at once");
    assert_eq!(stats.outage_length.quantile(0.5), Some(grace));
    assert_eq!(stats.recovery_time.count(), 2);
    assert_eq!(
        stats.recovery_time.sum(),
        grace + Duration::from_millis(100)
    );
    assert!(second > first);
    engine.shutdown().await;
}

/// Without a resume grace a loss is an outage at once.
#[tokio::test(start_paused = true)]
async fn without_a_grace_a_loss_is_an_outage_at_once() {
    let transport = MemoryTransport::new();
    let control = transport.control();
    control.set_default(Plan::Hang);
    control.plan([Plan::Succeed]);
    let engine = Engine::spawn(config(), transport);
    let handle = engine.handle();
    connected(&handle).await;
    control.sever();
    // The replacement hangs: the engine stays without a link.
    handle
        .wait_for_timeout(StateKind::Connecting, LONG)
        .await
        .unwrap();
    let stats = handle.stats();
    assert_eq!((stats.losses, stats.outages, stats.resumes), (1, 1, 0));
    assert_eq!(stats.outage_length.count(), 0, "not over yet");
    engine.shutdown().await;
    let stats = handle.stats();
    assert_eq!(
        (stats.losses, stats.outages),
        (1, 1),
        "a shutdown is no loss"
    );
}

async fn connected_after(handle: &Handle, old: Generation) -> Generation {
    let mut watch = handle.watch();
    let snapshot = tokio::time::timeout(
        LONG,
        watch.wait_for(|s| s.state.is_link_up() && s.generation > old),
    )
    .await
    .expect("in time")
    .expect("the engine runs");
    snapshot.generation
}

// ---- lifecycle --------------------------------------------------------------

/// `try_result` answers without waiting: `None` while the confirm is
/// outstanding, the outcome once it came; the receipt still resolves.
#[tokio::test(start_paused = true)]
async fn a_receipt_can_be_checked_without_awaiting_it() {
    let transport = MemoryTransport::new();
    let control = transport.control();
    let engine = Engine::spawn(config(), transport.clone());
    connected(&engine.handle()).await;
    let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
    control.script("slow", [Script::ConfirmAfter(Duration::from_secs(2))]);

    let mut receipt = publisher.publish("slow".into()).await;
    assert!(receipt.try_result().is_none(), "the confirm takes 2 s");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcome = receipt.try_result().expect("confirmed by now");
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(
        receipt.try_result().map(|o| o.is_ok()),
        Some(true),
        "asked again"
    );
    assert!(receipt.await.is_ok(), "awaiting still yields it");
    publisher.shutdown(Duration::from_secs(1)).await;
    engine.shutdown().await;
}

/// One publisher's shutdown drains that publisher only: the engine and the
/// other publisher sharing it go on.
#[tokio::test(start_paused = true)]
async fn a_publisher_shutdown_leaves_a_shared_engine_running() {
    let transport = MemoryTransport::new();
    let engine = Engine::spawn(config(), transport.clone());
    let handle = engine.handle();
    connected(&handle).await;
    let first = Publisher::new(&engine, transport.clone(), OutboxConfig::default());
    let second = Publisher::new(&engine, transport, OutboxConfig::default());

    first.shutdown(Duration::from_secs(1)).await;
    assert_eq!(handle.state(), StateKind::Connected);
    let late = first.publish("late".into()).await;
    assert_eq!(
        late.await.unwrap_err().kind(),
        PublishErrorKind::ShutDown,
        "the drained publisher takes nothing more"
    );
    let receipt = second.publish("still".into()).await;
    assert!(receipt.await.is_ok(), "the other publisher still delivers");
    engine.shutdown().await;
}

/// The engine runs while an owner is left: dropping the `Engine` with a
/// publisher alive keeps it running; dropping that publisher too shuts it
/// down.
#[tokio::test(start_paused = true)]
async fn the_engine_shuts_down_with_its_last_owner() {
    let transport = MemoryTransport::new();
    let engine = Engine::spawn(config(), transport.clone());
    let handle = engine.handle();
    connected(&handle).await;
    let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
    let clone = publisher.clone();

    drop(engine);
    tokio::time::sleep(LONG).await;
    assert_eq!(handle.state(), StateKind::Connected, "a publisher owns it");
    assert!(publisher.publish("kept".into()).await.await.is_ok());

    drop(publisher);
    tokio::time::sleep(LONG).await;
    assert_eq!(handle.state(), StateKind::Connected, "a clone owns it");
    drop(clone);
    let closed = handle
        .wait_for_timeout(StateKind::Closed, LONG)
        .await
        .expect("the last owner is gone");
    assert_eq!(closed.state, StateKind::Closed);
}
