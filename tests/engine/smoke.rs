//! The engine end to end on the in-memory transport, with paused time.

use std::time::Duration;

use redial::machine::{Config, ErrorKind, StateKind};
use redial::runtime::{Engine, Report};
use redial::testing::{MemoryTransport, Plan};

fn config() -> Config {
    Config::builder().seed(1).build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn connects_reconnects_and_shuts_down() {
    let transport = MemoryTransport::new();
    let control = transport.control();
    let engine = Engine::spawn(config(), transport);
    let handle = engine.handle();
    handle.wait_for(StateKind::Connected).await;
    assert_eq!(control.connect_calls(), 1);
    let first = handle.generation();

    assert_eq!(
        handle.report_lost(first, ErrorKind::Transient),
        Report::Queued
    );
    control.wait_connect_calls(2).await;
    handle.wait_for(StateKind::Connected).await;
    assert_ne!(handle.generation(), first);
    // The old link's late report is stale.
    assert_eq!(
        handle.report_lost(first, ErrorKind::Transient),
        Report::Stale
    );
    assert_eq!(control.max_open_links(), 1);

    engine.shutdown().await;
    assert_eq!(handle.state(), StateKind::Closed);
    assert_eq!(control.open_links(), 0);
    assert_eq!(control.connect_calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn failed_attempts_back_off() {
    let transport = MemoryTransport::new();
    let control = transport.control();
    control.plan([
        Plan::Fail(ErrorKind::Transient),
        Plan::Fail(ErrorKind::Transient),
    ]);
    let start = tokio::time::Instant::now();
    let engine = Engine::spawn(config(), transport);
    let handle = engine.handle();
    handle.wait_for(StateKind::Connected).await;
    assert_eq!(control.connect_calls(), 3);
    // Two backoff waits of 1 s and 2 s, each jittered by +-50 %.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited <= Duration::from_millis(4500),
        "{waited:?}"
    );
    engine.shutdown().await;
}
