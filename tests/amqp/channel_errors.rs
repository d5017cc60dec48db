//! Delivery under AMQP channel errors and missing confirms, against the
//! real broker (docs/delivery.md sections 7, 8 and 14; docs/amqp.md,
//! "Publishing").
//!
//! * Bad publishes (to a missing exchange) mixed with valid ones on one
//!   link: only the bad ones are refused, with the broker's reason; every
//!   valid one is confirmed and enqueued; a refused one is never enqueued;
//!   first appearances at the queue follow submission order; duplicates
//!   only come from replays; the connection is never lost.
//! * A path that drops every publish while heartbeats flow: the link is
//!   replaced after the default confirm timeout and the messages are
//!   confirmed on the next link.
//!
//! An independent plain lapin consumer on a direct connection checks what
//! reached the queue.
#![cfg(feature = "amqp")]

use crate::support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redial::amqp::{AmqpConfig, AmqpMessage, AmqpTransport, Heartbeat};
use redial::machine::StateKind;
use redial::outbox::{OutboxConfig, PublishError, Publisher};
use redial::runtime::Engine;

use support::amqp as a;
use support::brokers;
use support::chaos;

/// Message ids (outbox ids) in the order the queue received them.
async fn arrivals(conn: &lapin::Connection, queue: &str, prefix: &str) -> Arc<Mutex<Vec<u64>>> {
    let (ch, mut consumer) = a::plain_consumer(conn, queue).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    let prefix = format!("{prefix}-");
    tokio::spawn(async move {
        let _ch = ch;
        while let Some(Ok(d)) = consumer.next().await {
            let id = d
                .properties
                .message_id()
                .as_ref()
                .and_then(|s| s.as_str().strip_prefix(&prefix)?.parse().ok())
                .expect("a redial message id");
            seen.lock().unwrap().push(id);
        }
    });
    out
}

/// Publishes `n` messages on one link, every `every`-th to a missing
/// exchange, and checks every delivery property against the queue.
async fn mixed(n: usize, every: usize) {
    let queue = a::unique("channel-errors");
    let missing = a::unique("missing-exchange");
    let prefix = format!("ce{}", std::process::id());
    let direct = a::direct().await;
    a::declare_queue(&direct, &queue).await;
    let seen = arrivals(&direct, &queue, &prefix).await;

    let config = AmqpConfig::new(a::BROKER_URI)
        .connection_name(a::unique("channel-errors-conn"))
        .heartbeat(Heartbeat::secs(5))
        .message_id_prefix(prefix.clone());
    let transport = AmqpTransport::new(config.clone()).unwrap();
    let engine = Engine::spawn(config.engine_config().build().unwrap(), transport.clone());
    let handle = engine.handle();
    handle.wait_for(StateKind::Connected).await;
    let publisher = Publisher::new(&engine, transport.clone(), OutboxConfig::default());

    let mut receipts = Vec::new();
    for i in 0..n {
        let bad = i % every == every - 1;
        let message = if bad {
            AmqpMessage::new(&missing, "k", format!("{i}").into_bytes())
        } else {
            AmqpMessage::new("", &queue, format!("{i}").into_bytes())
        };
        receipts.push((bad, publisher.publish(message).await));
    }
    let mut valid = Vec::new();
    let mut refused = Vec::new();
    let mut wrong = Vec::new();
    for (bad, receipt) in receipts {
        let id = receipt.id().0;
        let outcome = tokio::time::timeout(Duration::from_secs(120), receipt)
            .await
            .expect("every publish resolves within 120 s");
        match (bad, outcome) {
            (false, Ok(_)) => valid.push(id),
            (true, Err(PublishError::Rejected(why))) if why.contains(&missing) => refused.push(id),
            (bad, outcome) => wrong.push((id, bad, outcome)),
        }
    }
    // Everything confirmed reached the queue (a confirm follows enqueueing).
    let want: HashSet<u64> = valid.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !want.iter().all(|id| seen.lock().unwrap().contains(id)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Late duplicates (a replay after an unconfirmed enqueue) have arrived by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let arrived = seen.lock().unwrap().clone();
    let stats = publisher.stats();
    let engine_stats = handle.stats();
    let mut count: HashMap<u64, u32> = HashMap::new();
    let mut first = Vec::new();
    for id in &arrived {
        let c = count.entry(*id).or_default();
        if *c == 0 {
            first.push(*id);
        }
        *c += 1;
    }
    let duplicates: u64 = count.values().map(|c| u64::from(c - 1)).sum();
    println!(
        "{n} messages, 1 in {every} bad: confirmed {}, refused {}, wrong {}, arrivals {}, \
         duplicates {duplicates}; outbox replayed {}, channel closes isolated {}, requeued {}; \
         engine connects {}, outages {}",
        valid.len(),
        refused.len(),
        wrong.len(),
        arrived.len(),
        stats.replayed,
        stats.channel_closes,
        stats.requeued,
        engine_stats.connects,
        engine_stats.outages
    );
    assert!(
        wrong.is_empty(),
        "wrong outcomes: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(refused.len(), n / every);
    assert_eq!(valid.len(), n - n / every);
    let missing_ids: Vec<u64> = want
        .iter()
        .filter(|id| !count.contains_key(id))
        .copied()
        .collect();
    assert!(
        missing_ids.is_empty(),
        "confirmed, never enqueued: {missing_ids:?}"
    );
    let enqueued_refused: Vec<u64> = refused
        .iter()
        .filter(|id| count.contains_key(id))
        .copied()
        .collect();
    assert!(
        enqueued_refused.is_empty(),
        "refused yet enqueued: {enqueued_refused:?}"
    );
    let inversions = first.windows(2).filter(|w| w[0] > w[1]).count();
    assert_eq!(inversions, 0, "first appearances out of order: {first:?}");
    assert!(
        duplicates <= stats.replayed,
        "{duplicates} duplicates, only {} replays",
        stats.replayed
    );
    assert_eq!(
        engine_stats.connects, 1,
        "the connection was never replaced"
    );
    assert_eq!(engine_stats.outages, 0, "the connection was never lost");
    publisher.shutdown(Duration::from_secs(5)).await;
    a::delete_queue(&direct, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_publish_in_three_refuses_only_the_bad_ones() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    mixed(300, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_publish_in_forty_keeps_order_and_the_connection() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    mixed(600, 40).await;
}

/// Heartbeats flow, publishes vanish: the link is replaced after the
/// default confirm timeout (2 x the 2 s heartbeat, at least 5 s), not by
/// the liveness check, and the messages are confirmed on the next link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_that_vanish_replace_the_link_after_the_confirm_timeout() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    let queue = a::unique("vanishing");
    let prefix = format!("vn{}", std::process::id());
    let direct = a::direct().await;
    a::declare_queue(&direct, &queue).await;
    let seen = arrivals(&direct, &queue, &prefix).await;
    let proxy = chaos::start(a::broker_addr()).await.unwrap();
    let config = AmqpConfig::new(a::proxied_uri(proxy.addr()))
        .connection_name(a::unique("vanishing-conn"))
        .heartbeat(Heartbeat::secs(2))
        .message_id_prefix(prefix);
    let transport = AmqpTransport::new(config.clone()).unwrap();
    let engine = Engine::spawn(config.engine_config().build().unwrap(), transport.clone());
    let handle = engine.handle();
    let g1 = handle.wait_for(StateKind::Connected).await.generation;
    let publisher = Publisher::new(&engine, transport.clone(), OutboxConfig::default());
    let warm = publisher
        .publish(AmqpMessage::new("", &queue, b"warm".to_vec()))
        .await;
    assert_eq!(warm.await.unwrap().generation, g1);

    proxy.drop_publishes(true);
    let start = Instant::now();
    let mut receipts = Vec::new();
    for i in 0..5 {
        let m = AmqpMessage::new("", &queue, format!("{i}").into_bytes());
        receipts.push(publisher.publish(m).await);
    }
    let mut watch = handle.watch();
    tokio::time::timeout(
        Duration::from_secs(20),
        watch.wait_for(|s| s.generation > g1 || s.state != StateKind::Connected),
    )
    .await
    .expect("the link is replaced within 20 s")
    .unwrap();
    let replaced_after = start.elapsed();
    proxy.drop_publishes(false);
    let mut generations = Vec::new();
    for receipt in receipts {
        let confirmed = tokio::time::timeout(Duration::from_secs(20), receipt)
            .await
            .expect("resolved within 20 s")
            .expect("confirmed");
        generations.push(confirmed.generation);
    }
    let stats = handle.stats();
    println!(
        "publishes dropped {}, link replaced after {replaced_after:?}, confirmed on {generations:?}, \
         engine connects {}, outbox replayed {}",
        proxy.dropped_publishes(),
        stats.connects,
        publisher.stats().replayed
    );
    assert!(proxy.dropped_publishes() >= 1);
    assert!(
        replaced_after >= Duration::from_millis(4900),
        "replaced before the confirm timeout: heartbeats did not flow? {replaced_after:?}"
    );
    assert!(
        replaced_after < Duration::from_secs(8),
        "the confirm timeout is 5 s, replaced after {replaced_after:?}"
    );
    assert!(generations.iter().all(|g| *g > g1), "{generations:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let distinct = || seen.lock().unwrap().iter().collect::<HashSet<_>>().len();
    while distinct() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        distinct(),
        6,
        "the warm-up and the 5 messages reached the queue"
    );
    publisher.shutdown(Duration::from_secs(5)).await;
    a::delete_queue(&direct, &queue).await;
}
