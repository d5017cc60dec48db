//! Flow control against the real broker: `connection.blocked` puts the
//! engine in Blocked (publishers wait), the blocked timeout replaces the
//! link, `connection.unblocked` resumes publishing.
//!
//! It raises a memory alarm on the whole broker, so it lives in its own test
//! binary (cargo runs test binaries one after the other) and clears the
//! alarm however it ends.
#![cfg(feature = "amqp")]

mod support;

use std::time::{Duration, Instant};

use redial::amqp::{AmqpConfig, AmqpMessage, AmqpTransport, Heartbeat};
use redial::machine::{Reason, StateKind};
use redial::outbox::{OutboxConfig, Publisher};
use redial::runtime::Engine;

use support::amqp::{self as a, Timeline};
use support::brokers;

/// Clears the broker's memory alarm when dropped (even on a panic).
struct AlarmGuard;

impl AlarmGuard {
    fn raise() -> Option<Self> {
        a::rabbitmqctl(&["set_vm_memory_high_watermark", "absolute", "1"])?;
        Some(AlarmGuard)
    }
}

impl Drop for AlarmGuard {
    fn drop(&mut self) {
        let _ = a::rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    }
}

async fn wait_state(
    timeline: &Timeline,
    to: StateKind,
    since: Instant,
    timeout: Duration,
) -> Option<(Instant, redial::machine::Generation)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(hit) = timeline.first_into(to, since) {
            return Some(hit);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_connection_applies_backpressure_and_times_out() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    if a::rabbitmqctl(&["status", "--quiet"]).is_none() {
        if std::env::var("REDIAL_REQUIRE_BROKERS").as_deref() == Ok("1") {
            panic!("rabbitmqctl is required for the flow-control test");
        }
        eprintln!("SKIPPED: rabbitmqctl is not available");
        return;
    }
    let queue = a::unique("blocked");
    let direct = a::direct().await;
    a::declare_queue(&direct, &queue).await;
    // Liveness 2 s, so the smallest accepted blocked timeout is 4 s.
    let config = AmqpConfig::new(a::BROKER_URI)
        .connection_name(a::unique("blocked-conn"))
        .heartbeat(Heartbeat::secs(2))
        .connect_timeout(Duration::from_secs(3));
    let transport = AmqpTransport::new(config.clone()).unwrap();
    let engine_config = config
        .engine_config()
        .blocked_timeout(Duration::from_secs(4))
        .stable_period(Duration::from_secs(1))
        .build()
        .unwrap();
    let engine = Engine::spawn(engine_config, transport.clone());
    let handle = engine.handle();
    let timeline = Timeline::start(&handle);
    handle.wait_for(StateKind::Connected).await;
    let publisher = Publisher::new(&engine, transport.clone(), OutboxConfig::default());
    publisher
        .publish(AmqpMessage::new("", &queue, b"before".to_vec()))
        .await
        .await
        .expect("confirmed before the alarm");

    let alarm_at = Instant::now();
    let guard = AlarmGuard::raise().expect("rabbitmqctl set_vm_memory_high_watermark");
    // RabbitMQ blocks a connection when it publishes during the alarm.
    let mut during = publisher
        .publish(AmqpMessage::new("", &queue, b"during".to_vec()))
        .await;
    let (blocked_at, g) = wait_state(
        &timeline,
        StateKind::Blocked,
        alarm_at,
        Duration::from_secs(10),
    )
    .await
    .expect("the engine entered Blocked");
    // Backpressure: nothing is confirmed while blocked.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut during)
            .await
            .is_err(),
        "confirmed while blocked"
    );
    // The blocked timeout (4 s) replaces the link.
    let (left_at, reason) = loop {
        if let Some(hit) = timeline.first_out_of(StateKind::Blocked, blocked_at) {
            break hit;
        }
        assert!(
            blocked_at.elapsed() < Duration::from_secs(10),
            "never left Blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let blocked_for = left_at.duration_since(blocked_at);
    drop(guard);
    let cleared_at = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(20), during)
        .await
        .expect("confirmed once the alarm cleared");
    let confirmed = outcome.expect("confirmed");
    let (up, g2) = timeline
        .first_into(StateKind::Connected, cleared_at)
        .or_else(|| Some((Instant::now(), handle.generation())))
        .unwrap();
    println!(
        "flow control: blocked on link {g} {:?} after the alarm, left Blocked after {blocked_for:?} ({reason:?}), \
         the publish was confirmed on link {} {:?} after the alarm cleared (connected on {g2} at +{:?})",
        blocked_at.duration_since(alarm_at),
        confirmed.generation,
        cleared_at.elapsed(),
        up.saturating_duration_since(cleared_at),
    );
    assert_eq!(reason, Reason::BlockedTooLong);
    assert!(blocked_for >= Duration::from_secs(4) && blocked_for < Duration::from_secs(6));
    assert!(confirmed.generation > g, "replaced by a new link");
    publisher.shutdown(Duration::from_secs(5)).await;
    a::delete_queue(&direct, &queue).await;
}
