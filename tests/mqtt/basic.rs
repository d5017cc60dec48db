//! MQTT adapter basics against a real Mosquitto: publish at every QoS
//! through the outbox, subscriptions (granted, refused, removed), and the
//! rejection of a publish that could never go on the wire.
#![cfg(feature = "mqtt")]

use crate::mqtt_util;
use crate::support;

use std::time::Duration;

use mqtt_util::{Client, FakeBroker, message, recv_payload, unique};
use redial::backoff::{Backoff, Jitter};
use redial::machine::Generation;
use redial::machine::{ErrorKind, FailCause, StateKind};
use redial::mqtt::MqttError;
use redial::mqtt::{MqttConfig, MqttMessage, QoS, SubscribeError, SubscribeOutcome};
use redial::outbox::{OutboxConfig, PublishError};
use redial::runtime::Event;
use support::brokers::{mqtt_available, require};

fn config(client: &str) -> MqttConfig {
    MqttConfig::new("127.0.0.1", 1883, unique(client)).keep_alive(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_at_every_qos_and_receives_on_the_stream() {
    if !require("mqtt", mqtt_available()) {
        return;
    }
    let topic = unique("redial/basic");
    let cfg = config("basic");
    let mut c = Client::start(cfg.clone(), cfg.engine_config(), OutboxConfig::default());
    // Recorded before the first link: restored by `open`.
    assert_eq!(
        c.transport
            .subscribe(format!("{topic}/#"), QoS::ExactlyOnce)
            .await,
        Ok(SubscribeOutcome::Deferred)
    );
    c.connected(Duration::from_secs(10)).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let receipt = c
            .publisher
            .publish(message(&format!("{topic}/{i}"), i as u64, qos))
            .await;
        let confirmed = receipt.await.expect("confirmed");
        assert_eq!(confirmed.generation, Generation(1));
        let m = recv_payload(&mut c.messages, &i.to_string(), Duration::from_secs(5))
            .await
            .expect("delivered back to us");
        assert_eq!(m.generation, Generation(1));
        assert_eq!(m.topic(), format!("{topic}/{i}"));
    }
    // A runtime subscribe on an up link is granted at once.
    assert_eq!(
        c.transport
            .subscribe(format!("{topic}-other"), QoS::AtLeastOnce)
            .await,
        Ok(SubscribeOutcome::Granted(QoS::AtLeastOnce))
    );
    assert_eq!(c.transport.subscriptions().len(), 2);

    // Unsubscribed: nothing more arrives on that filter.
    c.transport.unsubscribe(format!("{topic}/#")).await.unwrap();
    c.publisher
        .publish(message(&format!("{topic}/x"), 99, QoS::AtLeastOnce))
        .await
        .await
        .unwrap();
    assert!(
        recv_payload(&mut c.messages, "99", Duration::from_millis(500))
            .await
            .is_none()
    );
    assert_eq!(c.transport.subscriptions().len(), 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_or_oversized_publishes_are_rejected_not_replayed() {
    if !require("mqtt", mqtt_available()) {
        return;
    }
    let cfg = config("reject").max_packet_size(1024);
    let c = Client::start(cfg.clone(), cfg.engine_config(), OutboxConfig::default());
    c.connected(Duration::from_secs(10)).await;
    let big = MqttMessage::new(unique("redial/big"), QoS::AtLeastOnce, vec![0u8; 4096]);
    let outcome = c.publisher.publish(big).await.await;
    assert!(
        matches!(outcome, Err(PublishError::Rejected(_))),
        "{outcome:?}"
    );
    let wildcard = MqttMessage::new("redial/+/bad", QoS::AtLeastOnce, "x");
    let outcome = c.publisher.publish(wildcard).await.await;
    assert!(
        matches!(outcome, Err(PublishError::Rejected(_))),
        "{outcome:?}"
    );
    // The link survived both.
    assert_eq!(c.engine.handle().stats().connects, 1);
    assert!(matches!(
        c.transport.subscribe("a/#/b", QoS::AtMostOnce).await,
        Err(SubscribeError::InvalidFilter(_))
    ));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_is_a_typed_error() {
    // Mosquitto 2.0 grants ACL-denied subscriptions (it filters delivery
    // instead), so a scripted broker answers SUBACK 0x80.
    let broker = FakeBroker::start(0, 0x80).await;
    let cfg = MqttConfig::new("127.0.0.1", broker.addr().port(), unique("suback"))
        .keep_alive(Duration::from_secs(5));
    let c = Client::start(cfg.clone(), cfg.engine_config(), OutboxConfig::default());
    c.connected(Duration::from_secs(10)).await;
    assert_eq!(
        c.transport.subscribe("denied/x", QoS::AtLeastOnce).await,
        Err(SubscribeError::Refused {
            filter: "denied/x".into()
        })
    );
    // Refused filters are not kept for restore.
    assert!(c.transport.subscriptions().is_empty());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_restore_fails_the_attempt_and_is_retried() {
    let broker = FakeBroker::start(0, 0x80).await;
    let cfg = MqttConfig::new("127.0.0.1", broker.addr().port(), unique("restore"))
        .keep_alive(Duration::from_secs(5));
    let engine = cfg.engine_config().backoff(
        Backoff::builder()
            .initial(Duration::from_millis(50))
            .multiplier(2.0)
            .max(Duration::from_millis(100))
            .jitter(Jitter::None)
            .build()
            .unwrap(),
    );
    // Recorded before the engine starts, so that every open must restore it
    // (subscribed after a first connect, it would be refused at once).
    let transport = redial::mqtt::MqttTransport::new(cfg).unwrap();
    transport
        .subscribe("denied/x", QoS::AtLeastOnce)
        .await
        .unwrap();
    let prepared = redial::runtime::Engine::prepare(engine.build().unwrap(), transport.clone());
    let mut events = prepared.events();
    let engine = prepared.start();
    let error = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Ok(Event::AttemptFailed { error, kind, .. })) = events.recv().await {
                return (error, kind);
            }
        }
    })
    .await
    .expect("the failed restore is surfaced");
    assert_eq!(error.1, ErrorKind::Transient);
    let e = error.0.downcast_ref::<MqttError>().expect("typed");
    assert!(
        matches!(e, MqttError::RestoreRefused { filters } if filters == &["denied/x".to_string()])
    );
    // Retried, never reported healthy.
    tokio::time::timeout(Duration::from_secs(5), async {
        while broker.connections() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("retried");
    assert_eq!(engine.handle().stats().connects, 0);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_unavailable_is_retried_and_bad_credentials_are_not() {
    let unavailable = FakeBroker::start(3, 0).await;
    let cfg = MqttConfig::new("127.0.0.1", unavailable.addr().port(), unique("unavail"));
    let engine = cfg.engine_config().backoff(
        Backoff::builder()
            .initial(Duration::from_millis(20))
            .multiplier(2.0)
            .max(Duration::from_millis(40))
            .jitter(Jitter::None)
            .build()
            .unwrap(),
    );
    let c = Client::start(cfg, engine, OutboxConfig::default());
    tokio::time::timeout(Duration::from_secs(5), async {
        while unavailable.connections() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a transient refusal is retried");
    assert_ne!(c.engine.handle().state(), StateKind::Failed);
    c.stop().await;

    let refused = FakeBroker::start(4, 0).await;
    let cfg = MqttConfig::new("127.0.0.1", refused.addr().port(), unique("badcreds"));
    let engine = cfg.engine_config();
    let c = Client::start(cfg, engine, OutboxConfig::default());
    let snapshot = tokio::time::timeout(
        Duration::from_secs(5),
        c.engine.handle().wait_for(StateKind::Failed),
    )
    .await
    .expect("gave up");
    assert_eq!(snapshot.failure, Some(FailCause::Permanent));
    assert_eq!(refused.connections(), 1);
    c.stop().await;
}
