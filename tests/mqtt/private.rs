//! Tests that need a broker of their own (a private `mosquitto` on a free
//! loopback port, reached through the chaos proxy):
//! * broker restart: the broker is killed and started again on the same
//!   port; subscriptions are restored before the outbox flushes, so even the
//!   messages published while the broker was down come back to our own
//!   subscription, and messages published after recovery arrive;
//! * permanent error: wrong credentials are refused at CONNACK; one
//!   attempt, a typed error, no retry over 10 x the maximum backoff delay,
//!   and publishes fail fast with that cause (S38).
#![cfg(feature = "mqtt")]

use crate::mqtt_util;
use crate::support;

use std::time::{Duration, Instant};

use mqtt_util::{Client, message, recv_payload, unique};
use redial::backoff::{Backoff, Jitter};
use redial::machine::{FailCause, Generation, StateKind};
use redial::mqtt::{ConnectReturnCode, MqttConfig, MqttError, QoS};
use redial::outbox::{OutboxConfig, PublishError};
use support::brokers::require;
use support::mosquitto::{Auth, Mosquitto};

fn mosquitto_ok() -> bool {
    require(
        "mosquitto (the binary, for a private broker)",
        support::mosquitto::binary_available(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_restores_subscriptions_before_replay() {
    if !mosquitto_ok() {
        return;
    }
    let mut broker = Mosquitto::start(Auth::Anonymous).expect("private mosquitto");
    let proxy = support::chaos::start(broker.addr()).await.unwrap();
    let topic = unique("redial/restart");
    let cfg = MqttConfig::new("127.0.0.1", proxy.addr().port(), unique("restart"))
        .keep_alive(Duration::from_secs(5));
    let engine = cfg.engine_config().backoff(
        Backoff::builder()
            .initial(Duration::from_millis(200))
            .multiplier(2.0)
            .max(Duration::from_secs(1))
            .jitter(Jitter::None)
            .build()
            .unwrap(),
    );
    let mut c = Client::start(cfg, engine, OutboxConfig::default());
    c.transport
        .subscribe(format!("{topic}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    c.connected(Duration::from_secs(10)).await;
    let handle = c.engine.handle();
    c.publisher
        .publish(message(&format!("{topic}/a"), 0, QoS::AtLeastOnce))
        .await
        .await
        .expect("confirmed before the restart");
    assert!(
        recv_payload(&mut c.messages, "0", Duration::from_secs(5))
            .await
            .is_some()
    );
    let restored_before = c.transport.stats().filters_restored;

    broker.stop();
    let stopped = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), async {
        while handle.state() == StateKind::Connected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the loss was noticed");
    let noticed = stopped.elapsed();
    // Published while the broker is down: queued in the outbox.
    let mut queued = Vec::new();
    for id in 1..=5 {
        queued.push(
            c.publisher
                .publish(message(&format!("{topic}/down"), id, QoS::AtLeastOnce))
                .await,
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.start_again().expect("broker restarted");
    let restarted = Instant::now();
    for r in queued {
        let confirmed = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("resolved after the restart")
            .expect("confirmed after the restart");
        assert!(confirmed.generation > Generation(1));
    }
    let recovered = restarted.elapsed();
    // The broker kept nothing (no persistence): the subscription was
    // restored before the replay, so the replayed messages came back to us.
    for id in 1..=5 {
        let m = recv_payload(&mut c.messages, &id.to_string(), Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("queued message {id} not received"));
        assert!(m.generation > Generation(1));
    }
    for id in 100..110 {
        c.publisher
            .publish(message(&format!("{topic}/after"), id, QoS::AtLeastOnce))
            .await
            .await
            .expect("confirmed after recovery");
        assert!(
            recv_payload(&mut c.messages, &id.to_string(), Duration::from_secs(5))
                .await
                .is_some(),
            "message {id} published after recovery did not arrive"
        );
    }
    let stats = handle.stats();
    let t = c.transport.stats();
    println!(
        "broker restart: loss noticed {noticed:?} after the kill; broker down {:?}; recovered \
         (queued publishes confirmed) {recovered:?} after the restart; engine attempts={} \
         connects={} outages={}; filters restored={} (before the restart {restored_before}); \
         sessions opened={} max live={}",
        restarted - stopped,
        stats.attempts,
        stats.connects,
        stats.outages,
        t.filters_restored,
        t.sessions_opened,
        t.max_sessions_live,
    );
    assert!(t.filters_restored > restored_before);
    assert_eq!(t.max_sessions_live, 1);
    c.stop().await;
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_once_with_a_typed_error() {
    if !mosquitto_ok() {
        return;
    }
    let broker = Mosquitto::start(Auth::Password {
        user: "redial".into(),
        password: "right".into(),
    })
    .expect("private mosquitto");
    let proxy = support::chaos::start(broker.addr()).await.unwrap();
    let max_delay = Duration::from_millis(300);
    let policy = Backoff::builder()
        .initial(Duration::from_millis(100))
        .multiplier(2.0)
        .max(max_delay)
        .jitter(Jitter::None)
        .build()
        .unwrap();

    // The right password works (the broker is fine).
    let good = MqttConfig::new("127.0.0.1", proxy.addr().port(), unique("good"))
        .credentials("redial", "right");
    let c = Client::start(good.clone(), good.engine_config(), OutboxConfig::default());
    c.connected(Duration::from_secs(10)).await;
    c.stop().await;
    let before = proxy.accepted().len();

    let bad = MqttConfig::new("127.0.0.1", proxy.addr().port(), unique("bad"))
        .credentials("redial", "wrong");
    let c = Client::start(
        bad.clone(),
        bad.engine_config().backoff(policy),
        OutboxConfig::default(),
    );
    let mut events = c.engine.handle().events();
    let error = mqtt_util::gave_up(&mut events, Duration::from_secs(10)).await;
    let snapshot = c.engine.handle().snapshot();
    assert_eq!(snapshot.state, StateKind::Failed);
    assert_eq!(snapshot.failure, Some(FailCause::Permanent));
    // No retry over 10 x the largest backoff delay.
    tokio::time::sleep(max_delay * 10).await;
    let attempts = proxy.accepted().len() - before;
    let stats = c.engine.handle().stats();
    // The typed error, from the GaveUp event.
    let code = error
        .downcast_ref::<MqttError>()
        .and_then(MqttError::refusal);
    // Publishes fail fast with the cause.
    let outcome = c
        .publisher
        .publish(message("redial/never", 1, QoS::AtLeastOnce))
        .await
        .await;
    println!(
        "permanent error: attempts at the proxy={attempts}, engine attempts={}, CONNACK code \
         {code:?}, state {:?}, publish outcome {outcome:?}",
        stats.attempts, snapshot.state
    );
    assert_eq!(attempts, 1);
    assert_eq!(stats.attempts, 1);
    assert!(
        matches!(
            code,
            Some(ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized)
        ),
        "{code:?}"
    );
    assert!(
        matches!(
            outcome,
            Err(PublishError::GaveUp {
                cause: FailCause::Permanent,
                ..
            })
        ),
        "{outcome:?}"
    );
    c.stop().await;
}
