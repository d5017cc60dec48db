//! A delivery larger than `max_packet_size` on a persistent session (on a
//! private Mosquitto that queues everything, so a broker limit is never
//! taken for a client fault).
//!
//! rumqttc's own size check kills the link when the packet's header
//! arrives, and the broker delivers the same message again on every new
//! link: before this adapter read and measured deliveries itself, that
//! meant an outage per attempt, forever, and nothing queued behind it was
//! ever delivered. Now the message is surfaced once as a typed
//! `InboundError::TooLarge`, acknowledged when taken, and the traffic
//! behind it flows on the same link.
#![cfg(feature = "mqtt")]

use crate::mqtt_util;
use crate::support;

use std::time::Duration;

use mqtt_util::{Client, publish_many, unique};
use redial::mqtt::{InboundError, Message, Messages, MqttConfig, MqttMessage, QoS};
use redial::outbox::OutboxConfig;
use support::brokers::require;
use support::mosquitto::{Auth, Mosquitto};

const QUEUE_EVERYTHING: &str = "max_queued_messages 100000\n";

async fn next(messages: &mut Messages) -> Result<Message, InboundError> {
    tokio::time::timeout(Duration::from_secs(10), messages.recv())
        .await
        .expect("a delivery within 10 s")
        .expect("the stream is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_delivery_is_surfaced_once_and_acknowledged() {
    if !require(
        "mosquitto (the binary, for a private broker)",
        support::mosquitto::binary_available(),
    ) {
        return;
    }
    let broker = Mosquitto::start_with(Auth::Anonymous, None, QUEUE_EVERYTHING).unwrap();
    let topic = unique("redial/poison");
    // The default max_packet_size (1 MiB), a persistent session.
    let config = MqttConfig::new("127.0.0.1", broker.addr().port(), unique("poison"))
        .clean_session(false)
        .keep_alive(Duration::from_secs(5));
    let max = 1 << 20;
    let mut c = Client::start(
        config.clone(),
        config.engine_config(),
        OutboxConfig::default(),
    );
    c.transport
        .subscribe(format!("{topic}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    c.connected(Duration::from_secs(10)).await;

    // The poison (1.5 MiB), then a small message behind it.
    let big = format!("{topic}/big");
    publish_many(broker.addr(), &big, 0..1, 3 << 19, QoS::AtLeastOnce).await;
    publish_many(
        broker.addr(),
        &format!("{topic}/small"),
        1..2,
        16,
        QoS::AtLeastOnce,
    )
    .await;

    match next(&mut c.messages).await {
        Err(InboundError::TooLarge {
            topic: t,
            pkid,
            qos,
            size,
            max: m,
            ..
        }) => {
            assert_eq!(t, big);
            assert_ne!(pkid, 0);
            assert_eq!(qos, QoS::AtLeastOnce);
            assert!(size > 3 << 19, "size {size}");
            assert_eq!(m, max);
            println!("surfaced: topic {t}, packet id {pkid}, {size} bytes (max {m})");
        }
        other => panic!("expected the oversized message first, got {other:?}"),
    }
    let small = next(&mut c.messages).await.expect("the small message");
    assert_eq!(small.topic(), format!("{topic}/small"));
    let stats = c.transport.stats();
    assert_eq!(stats.sessions_opened, 1, "no outage: {stats:?}");
    assert_eq!(stats.messages_too_large, 1);

    // Both acknowledgements reach the broker before link 1 goes: they are
    // queued on the link, then a publish behind them on the same link is
    // confirmed (the broker reads in order).
    tokio::time::timeout(Duration::from_secs(10), async {
        while c.transport.stats().messages_acked < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both acknowledgements queued");
    let sync = MqttMessage::new(format!("{topic}-sync"), QoS::AtLeastOnce, "sync");
    c.publisher.publish(sync).await.await.expect("confirmed");

    // A new link on the same session: had the poison not been
    // acknowledged, Mosquitto would send it again before anything new.
    let generation = c.engine.handle().generation();
    let mut watch = c.engine.handle().watch();
    c.engine.handle().reconnect_now().unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|s| s.generation > generation && s.state.is_link_up()),
    )
    .await
    .expect("reconnected in time")
    .expect("the engine runs");
    publish_many(
        broker.addr(),
        &format!("{topic}/fence"),
        2..3,
        16,
        QoS::AtLeastOnce,
    )
    .await;
    let fence = next(&mut c.messages).await.expect("no second poison");
    assert_eq!(fence.topic(), format!("{topic}/fence"));
    let stats = c.transport.stats();
    assert_eq!(stats.sessions_opened, 2, "{stats:?}");
    assert_eq!(stats.messages_too_large, 1, "surfaced once: {stats:?}");
    c.stop().await;
}
