//! Sessions through the chaos proxy:
//! * clean session: a subscription made before a sever still delivers
//!   after it (restored on the new link);
//! * persistent session: the broker kept it, so nothing is subscribed
//!   twice, and delivery goes on;
//! * flapping: the link is severed every 100 ms for 10 s; the attempt
//!   counter keeps growing (no reset before the stable period), the attempts
//!   stay within the schedule, and there is one session at a time, as the
//!   client counts it and as the broker's own log shows (no takeover).
#![cfg(feature = "mqtt")]

use crate::mqtt_util;
use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mqtt_util::{Client, forget_session, local_broker, publish_direct, recv_payload, unique};
use redial::machine::{Generation, StateKind};
use redial::mqtt::{MqttConfig, QoS};
use redial::outbox::OutboxConfig;
use redial::runtime::Event;
use support::brokers::{mqtt_available, require};
use support::mosquitto::{Auth, Mosquitto};

/// Severs and waits for the next link; returns its generation.
async fn sever_and_wait(c: &Client, proxy: &support::chaos::ChaosProxy) -> Generation {
    let handle = c.engine.handle();
    let old = handle.generation();
    proxy.sever();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let s = handle.snapshot();
            if s.state == StateKind::Connected && s.generation > old {
                return s.generation;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("reconnected")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_session_subscription_survives_a_sever() {
    if !require("mqtt", mqtt_available()) {
        return;
    }
    let proxy = support::chaos::start(local_broker()).await.unwrap();
    let topic = unique("redial/clean");
    let cfg = MqttConfig::new("127.0.0.1", proxy.addr().port(), unique("clean"))
        .clean_session(true)
        .keep_alive(Duration::from_secs(5));
    let mut c = Client::start(cfg.clone(), cfg.engine_config(), OutboxConfig::default());
    c.connected(Duration::from_secs(10)).await;
    c.transport
        .subscribe(&topic, QoS::AtLeastOnce)
        .await
        .unwrap();
    publish_direct(local_broker(), &topic, "before").await;
    let m = recv_payload(&mut c.messages, "before", Duration::from_secs(5))
        .await
        .expect("delivered before the sever");
    assert_eq!(m.generation, Generation(1));
    let restored = c.transport.stats().filters_restored;

    let generation = sever_and_wait(&c, &proxy).await;
    publish_direct(local_broker(), &topic, "after").await;
    let m = recv_payload(&mut c.messages, "after", Duration::from_secs(5))
        .await
        .expect("delivered after the sever: the subscription was restored");
    assert_eq!(m.generation, generation);
    let t = c.transport.stats();
    println!(
        "clean session: delivered on link {} after the sever; filters restored {} -> {}",
        m.generation, restored, t.filters_restored
    );
    assert_eq!(t.filters_restored, restored + 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_is_not_subscribed_twice() {
    if !require("mqtt", mqtt_available()) {
        return;
    }
    let proxy = support::chaos::start(local_broker()).await.unwrap();
    let topic = unique("redial/persistent");
    let id = unique("persistent");
    forget_session(local_broker(), &id).await;
    let cfg = MqttConfig::new("127.0.0.1", proxy.addr().port(), id.clone())
        .clean_session(false)
        .keep_alive(Duration::from_secs(5));
    let mut c = Client::start(cfg.clone(), cfg.engine_config(), OutboxConfig::default());
    c.connected(Duration::from_secs(10)).await;
    c.transport
        .subscribe(&topic, QoS::AtLeastOnce)
        .await
        .unwrap();
    let generation = sever_and_wait(&c, &proxy).await;
    let link = c.engine.links().borrow().clone().expect("a link").link;
    assert!(link.session_present(), "the broker kept the session");
    publish_direct(local_broker(), &topic, "kept").await;
    let m = recv_payload(&mut c.messages, "kept", Duration::from_secs(5))
        .await
        .expect("delivered through the kept session");
    assert_eq!(m.generation, generation);
    assert_eq!(c.transport.stats().filters_restored, 0, "subscribed twice");
    c.stop().await;
    forget_session(local_broker(), &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_keeps_counting_attempts_with_one_session_at_a_time() {
    let have = support::mosquitto::binary_available();
    if !require("mosquitto (the binary, for a private broker)", have) {
        return;
    }
    let broker = Mosquitto::start(Auth::Anonymous).expect("private mosquitto");
    let proxy = Arc::new(support::chaos::start(broker.addr()).await.unwrap());
    let cfg = MqttConfig::new("127.0.0.1", proxy.addr().port(), unique("flap"))
        .keep_alive(Duration::from_secs(5));
    // Default policy (1 s, x2, +-50 %, stable period 10 s), as in S40.
    let engine = cfg.engine_config();
    let policy = engine.clone().build().unwrap();
    let c = Client::start(cfg, engine, OutboxConfig::default());
    c.connected(Duration::from_secs(10)).await;
    let handle = c.engine.handle();

    // Sample the proxy's open connections meanwhile.
    let max_open = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let window = Duration::from_secs(10);
    let sampler = tokio::spawn({
        let proxy = proxy.clone();
        let max_open = max_open.clone();
        async move {
            while began.elapsed() < window {
                max_open.fetch_max(proxy.open_connections(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut severs = 0;
    while began.elapsed() < window {
        tick.tick().await;
        proxy.sever();
        severs += 1;
    }
    let ended = Instant::now();
    sampler.await.unwrap();
    let attempts: Vec<(Instant, u32)> = c
        .log
        .events()
        .into_iter()
        .filter(|(t, _)| *t >= began && *t < ended)
        .filter_map(|(t, e)| match e {
            Event::AttemptStarted { attempt, .. } => Some((t, attempt)),
            _ => None,
        })
        .collect();
    // The next scheduled attempt (at most 1.5 x the cap away) reconnects.
    let recovered = tokio::time::timeout(policy.backoff().max() * 3 / 2, async {
        loop {
            if handle.state() == StateKind::Connected
                && handle.snapshot().generation > Generation(1)
            {
                break Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("connected after the flapping stopped");
    let numbers: Vec<u32> = attempts.iter().map(|a| a.1).collect();
    let log = broker.log();
    let takeovers = log.matches("already connected").count();
    // The log records every connection, so a takeover would show.
    let logged_connects = log.matches("New client connected").count();
    let t = c.transport.stats();
    let stats = handle.stats();
    println!(
        "flapping: {severs} severs in {window:?}; attempts in the window {} with numbers \
         {numbers:?}; connected {:?} after the flapping stopped; engine attempts={} connects={} \
         outages={}; sessions opened={} max live={}; proxy max open connections={}; \
         broker: connections logged={logged_connects} takeovers={takeovers}",
        attempts.len(),
        recovered - ended,
        stats.attempts,
        stats.connects,
        stats.outages,
        t.sessions_opened,
        t.max_sessions_live,
        max_open.load(Ordering::Relaxed),
    );
    assert!(numbers.len() >= 2, "too few attempts to judge: {numbers:?}");
    // No reset before the stable period: each attempt number is the last + 1.
    for w in numbers.windows(2) {
        assert_eq!(w[1], w[0] + 1, "attempt counter reset: {numbers:?}");
    }
    // About log2(10 s / 1 s) + 1 attempts, as the schedule allows, plus
    // the early losses the retry budget retries at once (its burst, then
    // one per refill).
    let budget = policy.retry_budget().map_or(0, |b| {
        b.burst as usize + (window.as_millis() / b.refill.as_millis()) as usize
    });
    assert!(
        numbers.len() <= 7 + budget,
        "{} attempts in {window:?} (schedule 7, budget {budget})",
        numbers.len()
    );
    assert_eq!(t.max_sessions_live, 1, "two sessions overlapped");
    assert!(logged_connects as u64 >= t.sessions_opened, "{log}");
    assert_eq!(takeovers, 0, "the broker saw a session takeover:\n{log}");
    c.stop().await;
}
