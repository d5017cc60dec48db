//! Scenario A, the sever storm, against the real broker through the chaos
//! proxy with the default configuration (only the heartbeat set, to 5 s):
//! 5,000 confirmed publishes at about 500/s while the proxy resets every
//! connection 5 times, 1.5 s apart.
#![cfg(feature = "amqp")]

use crate::support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use redial::amqp::{AmqpConfig, AmqpMessage, Heartbeat};
use redial::machine::{Generation, StateKind};
use redial::outbox::{OutboxConfig, Publisher};

use support::amqp::{self as a, Receipts};
use support::brokers;

const MESSAGES: u64 = 5_000;
const RATE_PER_S: u64 = 500;
const SEVERS: usize = 5;
const SEVER_EVERY: Duration = Duration::from_millis(1_500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sever_storm_loses_nothing_and_recovers_at_once() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    let queue = a::unique("sever");
    let name = a::unique("sever-conn");
    let direct = a::direct().await;
    a::declare_queue(&direct, &queue).await;
    let seen = a::collect(&direct, &queue).await;

    let proxy = support::chaos::start(a::broker_addr()).await.unwrap();
    // The defaults: no link lives the stable period (10 s) between severs,
    // so each is an early loss, retried at once while the retry budget (3
    // at once, one more per 2 s) lasts: one sever per 1.5 s never drains it.
    let config = AmqpConfig::new(a::proxied_uri(proxy.addr()))
        .connection_name(&name)
        .heartbeat(Heartbeat::secs(5));
    let (transport, engine, timeline) =
        a::engine_on_queue(&config, config.engine_config().build().unwrap(), &queue).await;
    let handle = engine.handle();
    handle.wait_for(StateKind::Connected).await;
    let publisher = Publisher::new(&engine, transport.clone(), OutboxConfig::default());
    let receipts = Receipts::start();

    // The producer: 5,000 publishes at ~500/s.
    let producer = {
        let publisher = publisher.clone();
        let receipts = receipts.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_S));
            for n in 0..MESSAGES {
                tick.tick().await;
                let m = AmqpMessage::new("", &queue, n.to_be_bytes().to_vec());
                let at = Instant::now();
                receipts.push(at, publisher.publish(m).await);
            }
        })
    };

    // The chaos: 5 severs, 1.5 s apart, the first after 1 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut severs = Vec::new();
    for _ in 0..SEVERS {
        let in_flight = publisher.stats().in_flight;
        let at = Instant::now();
        proxy.sever();
        severs.push((at, in_flight));
        tokio::time::sleep(SEVER_EVERY).await;
    }
    producer.await.unwrap();

    let done = receipts
        .wait(MESSAGES as usize, Duration::from_secs(30))
        .await;
    assert_eq!(done.len() as u64, MESSAGES, "every publish resolved");
    let confirmed: Vec<_> = done.iter().filter(|r| r.outcome.is_ok()).collect();
    let failed: Vec<_> = done.iter().filter(|r| r.outcome.is_err()).collect();
    assert!(
        failed.is_empty(),
        "failed publishes: {:?}",
        &failed[..failed.len().min(5)]
    );

    // Every confirmed message reached the queue (checked on a direct connection).
    let prefix = transport.message_id_prefix().to_owned();
    let expected: HashSet<String> = confirmed
        .iter()
        .map(|r| format!("{prefix}-{}", r.id))
        .collect();
    let complete = a::wait_seen(&seen, Duration::from_secs(15), |s| {
        expected.iter().all(|id| s.by_id.contains_key(id))
    })
    .await;
    let (missing, lost, duplicates, duplicated) = {
        let s = seen.lock().unwrap();
        let missing: Vec<String> = expected
            .iter()
            .filter(|id| !s.by_id.contains_key(*id))
            .cloned()
            .collect();
        let lost = MESSAGES as usize - s.distinct().min(MESSAGES as usize);
        let duplicates = s.duplicates();
        let duplicated: Vec<String> = s
            .by_id
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| id.clone())
            .collect();
        (missing, lost, duplicates, duplicated)
    };

    // Duplicates: only messages that were in flight at a sever (submitted
    // before it, confirmed after it), and no more than were in flight.
    let in_flight_at: Vec<HashSet<String>> = severs
        .iter()
        .map(|(t, _)| {
            done.iter()
                .filter(|r| r.submitted < *t && r.resolved > *t)
                .map(|r| format!("{prefix}-{}", r.id))
                .collect()
        })
        .collect();
    let in_flight_total: u64 = severs.iter().map(|(_, n)| n).sum();

    // Recovery: sever -> first confirm of a publish on the new link.
    let mut by_generation: HashMap<Generation, Instant> = HashMap::new();
    for r in &confirmed {
        let c = r.outcome.as_ref().unwrap();
        let e = by_generation.entry(c.generation).or_insert(r.resolved);
        if r.resolved < *e {
            *e = r.resolved;
        }
    }
    let mut recoveries = Vec::new();
    let mut reconnects = Vec::new();
    for (t, _) in &severs {
        let first_new = by_generation
            .values()
            .filter(|c| *c > t)
            .min()
            .copied()
            .expect("a confirm after every sever");
        recoveries.push(first_new.duration_since(*t));
        let (up, _) = timeline
            .first_into(StateKind::Connected, *t)
            .expect("reconnected after every sever");
        reconnects.push(up.duration_since(*t));
    }
    let accepted = proxy.accepted();
    let stats = publisher.stats();
    println!(
        "sever storm: published {MESSAGES}, confirmed {}, failed {}, received {} distinct ({} deliveries), \
         lost {lost}, reported-ok-but-missing {}, duplicates {duplicates} (in flight at severs: {:?}, total {in_flight_total}), \
         replayed {}, proxy attempts {} (expected {}), engine attempts {}",
        confirmed.len(),
        failed.len(),
        MESSAGES as usize - lost,
        MESSAGES + duplicates,
        missing.len(),
        severs.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        stats.replayed,
        accepted.len(),
        1 + SEVERS,
        handle.stats().attempts,
    );
    println!(
        "sever storm: recovery (sever -> first confirm on the new link) {:?}; sever -> Connected {:?}",
        recoveries, reconnects
    );

    assert!(complete, "reported ok but missing: {}", missing.len());
    assert_eq!(lost, 0);
    for id in &duplicated {
        assert!(
            in_flight_at.iter().any(|set| set.contains(id)),
            "duplicate {id} was not in flight at any sever"
        );
    }
    assert!(
        duplicates <= in_flight_at.iter().map(|s| s.len() as u64).sum::<u64>(),
        "more duplicates than messages in flight at the severs"
    );
    // One connection attempt per outage, counted at the proxy.
    assert_eq!(
        accepted.len(),
        1 + SEVERS,
        "connection attempts at the proxy"
    );
    assert_eq!(handle.stats().attempts, 1 + SEVERS as u64);
    // The mechanism: each outage went straight from Connected to
    // Connecting (an immediate retry), never through BackingOff.
    let transitions = timeline.transitions();
    assert!(
        !transitions
            .iter()
            .any(|(_, _, to, _, _)| *to == StateKind::BackingOff),
        "a backoff wait was scheduled: {transitions:?}"
    );
    // The figure the issue asks for is 50 ms; the assertion keeps a margin a
    // loaded 2-core machine cannot break while staying far below the
    // smallest backoff delay (500 ms), so it still proves the mechanism.
    for (i, r) in recoveries.iter().enumerate() {
        assert!(
            *r < Duration::from_millis(400),
            "recovery {i} took {r:?}: not an immediate retry"
        );
    }
    let within_50 = recoveries
        .iter()
        .filter(|r| **r <= Duration::from_millis(50))
        .count();
    println!("sever storm: {within_50}/{SEVERS} recoveries within 50 ms");

    publisher.shutdown(Duration::from_secs(5)).await;
    a::delete_queue(&direct, &queue).await;
    let _ = direct.close(200, "done".into()).await;
}
