//! A slow consumer, on a private Mosquitto that queues everything (so a
//! broker queue limit is never taken for a client fault):
//!
//! * the number of deliveries buffered client-side never exceeds the bound,
//!   whatever the broker has queued (40,000 x 1 KiB QoS 1 here), and the
//!   process's memory barely moves (figures printed);
//! * nothing is acknowledged before the application took it: a client that
//!   took a few, dropped its stream and was stopped finds every other
//!   message again on its persistent session;
//! * a buffer smaller than the broker's in-flight window stops reading the
//!   socket without losing anything;
//! * QoS 0 deliveries that find the buffer full are dropped and reported;
//! * deliveries still buffered when a later link resumed their session give
//!   way to the broker's redelivery: each message is taken once, and the
//!   new link does not stall behind them.
#![cfg(feature = "mqtt")]

use crate::mqtt_util;
use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use mqtt_util::{Client, id_of, publish_many, rss_kib, unique};
use redial::mqtt::{InboundError, Messages, MqttConfig, MqttTransport, QoS};
use redial::outbox::OutboxConfig;
use support::brokers::require;
use support::mosquitto::{Auth, Mosquitto};

const QUEUE_EVERYTHING: &str = "max_queued_messages 100000\n";

fn broker() -> Option<Mosquitto> {
    require(
        "mosquitto (the binary, for a private broker)",
        support::mosquitto::binary_available(),
    )
    .then(|| Mosquitto::start_with(Auth::Anonymous, None, QUEUE_EVERYTHING).unwrap())
}

/// A persistent-session client subscribed to `filter`, not yet connected.
async fn start(broker: &Mosquitto, id: &str, filter: &str, qos: QoS, capacity: usize) -> Client {
    let config = MqttConfig::new("127.0.0.1", broker.addr().port(), id)
        .clean_session(false)
        .inbound_capacity(capacity);
    let c = Client::start(
        config.clone(),
        config.engine_config(),
        OutboxConfig::default(),
    );
    c.transport.subscribe(filter, qos).await.unwrap();
    c
}

/// The same, connected.
async fn client(broker: &Mosquitto, id: &str, filter: &str, qos: QoS, capacity: usize) -> Client {
    let c = start(broker, id, filter, qos, capacity).await;
    c.connected(Duration::from_secs(10)).await;
    c
}

/// Waits until `f(stats)` holds (polling the counters), or panics.
async fn until(transport: &MqttTransport, what: &str, f: impl Fn(u64, u64) -> bool) {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let s = transport.stats();
            if f(s.messages_received, s.messages_buffered) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: {:?}", transport.stats()));
}

async fn take(messages: &mut Messages) -> redial::mqtt::Message {
    tokio::time::timeout(Duration::from_secs(10), messages.recv())
        .await
        .expect("a delivery within 10 s")
        .expect("the stream is open")
        .expect("a message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_bounded_and_nothing_is_acked_before_taken() {
    let Some(broker) = broker() else { return };
    const N: u64 = 40_000;
    const TAKEN: u64 = 5;
    let topic = unique("redial/slow");
    let id = unique("slow");
    // The default inbound capacity (100); Mosquitto's window is 20.
    let c = client(&broker, &id, &topic, QoS::AtLeastOnce, 100).await;
    let capacity = 100;

    let rss_before = rss_kib();
    publish_many(broker.addr(), &topic, 0..N, 1024, QoS::AtLeastOnce).await;
    // The broker has all 40,000; it sends what its window allows.
    until(&c.transport, "deliveries arrive", |received, _| {
        received > 0
    })
    .await;
    // Give it every chance to send more than it may.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib();
    let s = c.transport.stats();
    println!(
        "slow consumer: {N} x 1 KiB QoS 1 queued at the broker; client holds {} (max {}), \
         received {}; RSS {} KiB -> {} KiB ({:+} KiB)",
        s.messages_buffered,
        s.max_messages_buffered,
        s.messages_received,
        rss_before,
        rss_after,
        rss_after as i64 - rss_before as i64
    );
    assert!(s.max_messages_buffered <= capacity, "{s:?}");
    assert!(s.messages_received <= capacity, "nothing taken yet: {s:?}");

    // Take a few: each one's ack lets the broker send one more.
    let Client {
        engine,
        transport,
        publisher,
        mut messages,
        ..
    } = c;
    let before = transport.stats().messages_received;
    for want in 0..TAKEN {
        assert_eq!(id_of(take(&mut messages).await.payload()), want);
    }
    until(&transport, "acks reached the broker", |received, _| {
        received >= before + TAKEN
    })
    .await;
    // The application stops taking and goes away: nothing it did not take
    // was acknowledged.
    drop(messages);
    publisher.shutdown(Duration::from_secs(2)).await;
    engine.shutdown().await;
    drop(transport);

    // Read at once, as an application does: the resumed session's burst
    // (Mosquitto resends more than its window here) and the restore's
    // SUBACK behind it wait for room in the buffer.
    let mut c = start(&broker, &id, &topic, QoS::AtLeastOnce, 100).await;
    let mut seen = BTreeSet::new();
    let first = id_of(take(&mut c.messages).await.payload());
    assert_eq!(first, TAKEN, "the first untaken message comes again first");
    seen.insert(first);
    while (seen.len() as u64) < N - TAKEN {
        let id = id_of(take(&mut c.messages).await.payload());
        assert!(id >= TAKEN, "message {id} was taken and acknowledged");
        seen.insert(id);
    }
    let s = c.transport.stats();
    println!(
        "after the restart: {} delivered, max buffered {}",
        seen.len(),
        s.max_messages_buffered
    );
    assert!(s.max_messages_buffered <= capacity, "{s:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_smaller_than_the_broker_window_stalls_without_loss() {
    let Some(broker) = broker() else { return };
    const N: u64 = 300;
    let topic = unique("redial/stall");
    let mut c = client(&broker, &unique("stall"), &topic, QoS::AtLeastOnce, 5).await;
    publish_many(broker.addr(), &topic, 0..N, 64, QoS::AtLeastOnce).await;
    until(&c.transport, "the buffer fills", |_, buffered| {
        buffered == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = c.transport.stats();
    // Five buffered, one waiting for room; Mosquitto's window holds the rest.
    assert!(s.max_messages_buffered <= 5, "{s:?}");
    assert!(s.messages_received <= 6, "{s:?}");
    for want in 0..N {
        assert_eq!(id_of(take(&mut c.messages).await.payload()), want);
    }
    let s = c.transport.stats();
    assert_eq!(s.sessions_opened, 1, "the link stayed up: {s:?}");
    assert!(s.max_messages_buffered <= 5, "{s:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_overflow_is_dropped_and_reported() {
    let Some(broker) = broker() else { return };
    const N: u64 = 50;
    let topic = unique("redial/qos0");
    let mut c = client(&broker, &unique("qos0"), &topic, QoS::AtMostOnce, 5).await;
    publish_many(broker.addr(), &topic, 0..N, 64, QoS::AtMostOnce).await;
    until(
        &c.transport,
        "every QoS 0 delivery arrives",
        |received, _| received == N,
    )
    .await;
    let s = c.transport.stats();
    assert_eq!(
        (s.messages_buffered, s.messages_dropped),
        (5, N - 5),
        "{s:?}"
    );
    let first = tokio::time::timeout(Duration::from_secs(5), c.messages.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, Err(InboundError::Dropped { count: N - 5 }));
    for want in 0..5 {
        assert_eq!(id_of(take(&mut c.messages).await.payload()), want);
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_deliveries_of_an_old_link_give_way_to_the_resumed_session() {
    let Some(broker) = broker() else { return };
    const N: u64 = 30;
    const CAPACITY: usize = 10;
    let topic = unique("redial/superseded");
    let mut c = client(
        &broker,
        &unique("superseded"),
        &topic,
        QoS::AtLeastOnce,
        CAPACITY,
    )
    .await;
    publish_many(broker.addr(), &topic, 0..N, 64, QoS::AtLeastOnce).await;
    until(&c.transport, "the buffer fills", |_, buffered| {
        buffered == CAPACITY as u64
    })
    .await;
    // A new link on the same session while link 1's deliveries wait unread.
    let handle = c.engine.handle();
    let first = handle.generation();
    handle.reconnect_now().unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while c.transport.stats().sessions_opened < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a second link");
    let mut taken = Vec::new();
    for _ in 0..N {
        let m = take(&mut c.messages).await;
        assert_ne!(
            m.generation, first,
            "a delivery of the replaced link was taken"
        );
        taken.push(id_of(m.payload()));
    }
    assert_eq!(
        taken,
        (0..N).collect::<Vec<_>>(),
        "each message once, in order"
    );
    let s = c.transport.stats();
    assert_eq!(s.messages_superseded, CAPACITY as u64, "{s:?}");
    assert_eq!(s.sessions_opened, 2, "{s:?}");
    c.stop().await;
}

/// A reader slower than the ping interval, with the buffer full while the
/// same link publishes: the link stops reading, so PINGRESPs wait in the
/// socket behind deliveries and PUBACKs. That must not cost the link
/// (rumqttc alone would call it dead at its next ping); the watchdog, which
/// sees every packet read, is the judge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_slower_than_the_pings_keeps_its_link() {
    let Some(broker) = broker() else { return };
    const N: u64 = 600;
    const SLOW: u64 = 20;
    let topic = unique("redial/slow-pings");
    let config = MqttConfig::new("127.0.0.1", broker.addr().port(), unique("slow-pings"))
        .clean_session(false)
        .keep_alive(Duration::from_secs(2))
        .inbound_capacity(5);
    let mut c = mqtt_util::Client::start(
        config.clone(),
        config.engine_config(),
        OutboxConfig::default(),
    );
    c.transport
        .subscribe(&topic, QoS::AtLeastOnce)
        .await
        .unwrap();
    c.connected(Duration::from_secs(10)).await;
    // The link publishes what it reads, 200 per second.
    let publisher = c.publisher.clone();
    let sender = tokio::spawn({
        let topic = topic.clone();
        async move {
            let mut receipts = Vec::new();
            for id in 0..N {
                receipts.push(
                    publisher
                        .publish(mqtt_util::message(&topic, id, QoS::AtLeastOnce))
                        .await,
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            receipts
        }
    });
    // 20 takes 200 ms apart: 4 s, four pings of 1 s, behind deliveries.
    let mut taken = Vec::new();
    for i in 0..N {
        let m = tokio::time::timeout(Duration::from_secs(10), c.messages.recv()).await;
        let Ok(Some(Ok(m))) = m else {
            panic!(
                "no delivery {i} within 10 s: {:?} {:?} {:?}",
                c.transport.stats(),
                c.publisher.stats(),
                c.engine.handle().snapshot()
            );
        };
        taken.push(m);
        if i < SLOW {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for receipt in sender.await.unwrap() {
        receipt.await.expect("confirmed");
    }
    let ids: Vec<u64> = taken
        .iter()
        .map(|m| std::str::from_utf8(m.payload()).unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (0..N).collect::<Vec<_>>(), "each once, in order");
    let s = c.transport.stats();
    assert_eq!(s.sessions_opened, 1, "the link stayed up: {s:?}");
    c.stop().await;
}
