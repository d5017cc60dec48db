//! Network and broker faults against the real broker: a half-open link, a
//! refused outage, a broker-side close, and permanent errors.
#![cfg(feature = "amqp")]

use crate::support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use redial::amqp::{AmqpConfig, AmqpError, AmqpMessage, AmqpTransport, Heartbeat};
use redial::backoff::{Backoff, Jitter};
use redial::machine::{ErrorKind, FailCause, Reason, StateKind};
use redial::outbox::{OutboxConfig, OverflowPolicy, PublishError, Publisher};
use redial::runtime::{Classify, Engine, Event};

use support::amqp::{self as a, Receipts, Timeline};
use support::brokers;

fn outbox() -> OutboxConfig {
    OutboxConfig::builder()
        .max_messages(20_000)
        .overflow(OverflowPolicy::Wait { deadline: None })
        .build()
        .unwrap()
}

/// Publishes `count` messages to `queue` at `rate` per second.
fn produce(
    publisher: &Publisher<AmqpTransport>,
    receipts: &Receipts,
    queue: &str,
    count: u64,
    rate: u64,
) -> tokio::task::JoinHandle<()> {
    let publisher = publisher.clone();
    let receipts = receipts.clone();
    let queue = queue.to_owned();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        for n in 0..count {
            tick.tick().await;
            let m = AmqpMessage::new("", &queue, n.to_be_bytes().to_vec());
            let at = Instant::now();
            receipts.push(at, publisher.publish(m).await);
        }
    })
}

/// Checks that every publish was confirmed and reached `queue`; returns
/// (confirmed, received distinct, duplicates).
async fn verify_all_delivered(
    transport: &AmqpTransport,
    receipts: &Receipts,
    seen: &std::sync::Arc<std::sync::Mutex<a::Seen>>,
    count: u64,
) -> (usize, usize, u64) {
    let done = receipts.wait(count as usize, Duration::from_secs(30)).await;
    assert_eq!(done.len() as u64, count, "every publish resolved");
    let failed: Vec<_> = done.iter().filter(|r| r.outcome.is_err()).collect();
    assert!(
        failed.is_empty(),
        "failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    let prefix = transport.message_id_prefix().to_owned();
    let expected: HashSet<String> = done.iter().map(|r| format!("{prefix}-{}", r.id)).collect();
    let complete = a::wait_seen(seen, Duration::from_secs(15), |s| {
        expected.iter().all(|id| s.by_id.contains_key(id))
    })
    .await;
    let s = seen.lock().unwrap();
    let missing = expected
        .iter()
        .filter(|id| !s.by_id.contains_key(*id))
        .count();
    assert!(
        complete,
        "{missing} confirmed messages never reached the queue"
    );
    (done.len(), s.distinct(), s.duplicates())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_link_is_detected_within_one_and_a_half_heartbeats() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    const H: Duration = Duration::from_secs(5);
    let queue = a::unique("halfopen");
    let direct = a::direct().await;
    a::declare_queue(&direct, &queue).await;
    let seen = a::collect(&direct, &queue).await;
    let proxy = support::chaos::start(a::broker_addr()).await.unwrap();
    let config = AmqpConfig::new(a::proxied_uri(proxy.addr()))
        .connection_name(a::unique("halfopen-conn"))
        .heartbeat(Heartbeat::secs(5))
        .connect_timeout(Duration::from_secs(3));
    let transport = AmqpTransport::new(config.clone()).unwrap();
    let engine_config = config
        .engine_config()
        .stable_period(Duration::from_secs(1))
        .backoff(
            Backoff::builder()
                .initial(Duration::from_millis(500))
                .multiplier(2.0)
                .max(Duration::from_secs(2))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let engine = Engine::spawn(engine_config, transport.clone());
    let handle = engine.handle();
    let timeline = Timeline::start(&handle);
    handle.wait_for(StateKind::Connected).await;
    assert_eq!(transport.negotiated_heartbeat(), Some(Some(H)));
    let publisher = Publisher::new(&engine, transport.clone(), outbox());
    let receipts = Receipts::start();
    const COUNT: u64 = 1_300;
    let producer = produce(&publisher, &receipts, &queue, COUNT, 50);

    tokio::time::sleep(Duration::from_secs(2)).await;
    // The last inbound frame before the blackhole: the latest confirm.
    let blackhole_at = Instant::now();
    proxy.blackhole(true);
    let last_confirm = receipts
        .wait(0, Duration::ZERO)
        .await
        .iter()
        .filter(|r| r.resolved <= blackhole_at)
        .map(|r| r.resolved)
        .max()
        .expect("confirms before the blackhole");
    let deadline = blackhole_at + Duration::from_secs(10);
    // Detection: the watchdog's event, or the link reporting its own death
    // (the state change itself follows the close of the dead link).
    let detected = loop {
        let liveness = timeline.events().into_iter().find_map(|(t, e)| {
            (t >= blackhole_at && matches!(e, Event::LivenessLost { .. }))
                .then_some((t, Reason::LivenessLost))
        });
        if let Some(hit) =
            liveness.or_else(|| timeline.first_out_of(StateKind::Connected, blackhole_at))
        {
            break Some(hit);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (detected_at, reason) = detected.expect("the half-open link was never detected");
    let since_last_frame = detected_at.duration_since(last_confirm);
    let since_blackhole = detected_at.duration_since(blackhole_at);
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(blackhole_at.elapsed())).await;
    proxy.blackhole(false);
    let lifted = Instant::now();
    producer.await.unwrap();
    let (confirmed, received, duplicates) =
        verify_all_delivered(&transport, &receipts, &seen, COUNT).await;
    let (up, g) = timeline
        .first_into(StateKind::Connected, lifted)
        .expect("reconnected after the blackhole");
    println!(
        "half-open: detected {since_blackhole:?} after the blackhole, {since_last_frame:?} after the last confirm \
         (bound 1.5 x H = 7.5 s), reason {reason:?}; reconnected {:?} after the lift as link {g}; \
         published {COUNT}, confirmed {confirmed}, received {received}, lost {}, duplicates {duplicates}, \
         proxy attempts {}, engine attempts {}",
        up.duration_since(lifted),
        COUNT as usize - received,
        proxy.accepted().len(),
        handle.stats().attempts,
    );
    // Slack a loaded machine cannot break, still below lapin's own
    // missed-heartbeat check (more than 2 x H) and far below TCP's.
    assert!(
        since_last_frame <= H * 3 / 2 + Duration::from_millis(2000),
        "detected {since_last_frame:?} after the last inbound frame"
    );
    assert!(
        since_blackhole >= H - Duration::from_millis(100),
        "declared dead too early: {since_blackhole:?}"
    );
    assert!(matches!(reason, Reason::LinkLost | Reason::LivenessLost));
    assert_eq!(received as u64, COUNT);
    publisher.shutdown(Duration::from_secs(5)).await;
    a::delete_queue(&direct, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_outage_follows_the_backoff_schedule() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    let queue = a::unique("outage");
    let direct = a::direct().await;
    a::declare_queue(&direct, &queue).await;
    let seen = a::collect(&direct, &queue).await;
    let proxy = support::chaos::start(a::broker_addr()).await.unwrap();
    let (initial, multiplier, cap) = (Duration::from_millis(250), 2.0, Duration::from_secs(4));
    // Probes off: this checks the schedule a transport without probes gets
    // (with them, an outage costs one attempt: `amqp_recovery.rs`).
    let config = AmqpConfig::new(a::proxied_uri(proxy.addr()))
        .connection_name(a::unique("outage-conn"))
        .heartbeat(Heartbeat::secs(5))
        .connect_timeout(Duration::from_secs(3));
    let engine_config = config
        .engine_config()
        .no_probe_interval()
        .stable_period(Duration::from_secs(1))
        .backoff(
            Backoff::builder()
                .initial(initial)
                .multiplier(multiplier)
                .max(cap)
                .jitter(Jitter::Proportional { fraction: 0.2 })
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let (transport, engine, timeline) =
        a::engine_on_queue(&config, engine_config.clone(), &queue).await;
    let handle = engine.handle();
    handle.wait_for(StateKind::Connected).await;
    let publisher = Publisher::new(&engine, transport.clone(), outbox());
    let receipts = Receipts::start();
    const COUNT: u64 = 700;
    let producer = produce(&publisher, &receipts, &queue, COUNT, 50);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let outage_at = Instant::now();
    proxy.refuse(true);
    proxy.sever();
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.refuse(false);
    let lifted = Instant::now();
    let refused = proxy.refused();
    producer.await.unwrap();
    let (confirmed, received, duplicates) =
        verify_all_delivered(&transport, &receipts, &seen, COUNT).await;
    let (up, _) = timeline
        .first_into(StateKind::Connected, lifted)
        .expect("reconnected after the outage");

    // Attempt times as the engine saw them; the proxy counted the same ones.
    let attempts: Vec<Instant> = timeline
        .events()
        .into_iter()
        .filter_map(|(t, e)| matches!(e, Event::AttemptStarted { .. }).then_some(t))
        .filter(|t| *t >= outage_at)
        .collect();
    let gaps: Vec<Duration> = attempts
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .collect();
    println!(
        "outage: refused {refused} connections in 10 s, {} attempts (gaps {:?}), reconnected {:?} after the refusal ended; \
         published {COUNT}, confirmed {confirmed}, received {received}, lost {}, duplicates {duplicates}",
        attempts.len(),
        gaps,
        up.duration_since(lifted),
        COUNT as usize - received,
    );
    // Attempts during the outage = refused connections, plus the one that
    // succeeded after it.
    assert_eq!(
        attempts.len(),
        refused + 1,
        "every attempt reached the proxy once"
    );
    assert_eq!(
        proxy.accepted().len(),
        2,
        "the first link and the one after the outage"
    );
    // Gap i (i >= 1) follows the schedule: base(i) = initial * 2^(i-1),
    // capped, +-20 % jitter, plus the time a refused attempt takes. The
    // first retry is immediate (the link had been stable).
    let backoff = engine_config.backoff().clone();
    for (i, gap) in gaps.iter().enumerate() {
        let base = Duration::from_millis(backoff.base_ms(i as u32 + 1));
        let (lo, hi) = (
            base.mul_f64(0.8),
            // Slack for a loaded machine; the low bound tells a wait from none.
            base.mul_f64(1.2) + Duration::from_millis(1000),
        );
        if attempts[i + 1] <= lifted {
            assert!(
                *gap >= lo && *gap <= hi,
                "gap {i} = {gap:?}, expected {lo:?}..{hi:?}"
            );
        }
    }
    // No storm: at most what the schedule allows in 10 s (1 + steps).
    assert!(refused <= 8, "{refused} attempts in 10 s");
    assert_eq!(received as u64, COUNT);
    publisher.shutdown(Duration::from_secs(5)).await;
    a::delete_queue(&direct, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_side_close_is_recovered_without_loss() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    if a::rabbitmqctl(&["status", "--quiet"]).is_none() {
        if std::env::var("REDIAL_REQUIRE_BROKERS").as_deref() == Ok("1") {
            panic!("rabbitmqctl is required for the broker-side close test");
        }
        eprintln!("SKIPPED: rabbitmqctl is not available");
        return;
    }
    let queue = a::unique("brokerclose");
    let name = a::unique("brokerclose-conn");
    let direct = a::direct().await;
    a::declare_queue(&direct, &queue).await;
    let seen = a::collect(&direct, &queue).await;
    // Direct to the broker: the broker closes our connection (by its
    // unique name, so that tests running in parallel are not affected).
    let config = AmqpConfig::new(a::BROKER_URI)
        .connection_name(&name)
        .heartbeat(Heartbeat::secs(5))
        .connect_timeout(Duration::from_secs(3));
    let transport = AmqpTransport::new(config.clone()).unwrap();
    let engine_config = config
        .engine_config()
        .stable_period(Duration::from_secs(1))
        .build()
        .unwrap();
    let engine = Engine::spawn(engine_config, transport.clone());
    let handle = engine.handle();
    let timeline = Timeline::start(&handle);
    handle.wait_for(StateKind::Connected).await;
    let publisher = Publisher::new(&engine, transport.clone(), outbox());
    let receipts = Receipts::start();
    const COUNT: u64 = 500;
    let producer = produce(&publisher, &receipts, &queue, COUNT, 100);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let closing_at = Instant::now();
    let closed = tokio::task::spawn_blocking(move || a::close_named_connections(&name))
        .await
        .unwrap();
    // rabbitmqctl can take seconds: check that the close happened, then
    // wait for the reconnection it caused, before judging either.
    assert_eq!(closed, 1, "rabbitmqctl closed our connection");
    // A new link, not link 1 leaving Blocked (a broker-wide memory alarm
    // raised by another process is not this test's fault).
    let relinked = || {
        timeline
            .transitions()
            .into_iter()
            .find(|(t, _, to, g, _)| *to == StateKind::Connected && g.0 >= 2 && *t >= closing_at)
            .map(|(t, _, _, g, _)| (t, g))
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        while relinked().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("reconnected after the broker closed the connection");
    producer.await.unwrap();
    let (confirmed, received, duplicates) =
        verify_all_delivered(&transport, &receipts, &seen, COUNT).await;
    let lost_at = timeline.first_out_of(StateKind::Connected, closing_at);
    let (up, g) = relinked().expect("reconnected");
    println!(
        "broker-side close: closed {closed} connection(s); down {:?}, up again as link {g} {:?} later; \
         published {COUNT}, confirmed {confirmed}, received {received}, lost {}, duplicates {duplicates}, engine attempts {}",
        lost_at.map(|(_, r)| r),
        lost_at.map(|(t, _)| up.duration_since(t)),
        COUNT as usize - received,
        handle.stats().attempts,
    );
    assert!(g.0 >= 2);
    assert_eq!(handle.stats().attempts, 2, "one attempt after the close");
    assert_eq!(received as u64, COUNT);
    publisher.shutdown(Duration::from_secs(5)).await;
    a::delete_queue(&direct, &queue).await;
}

/// Opens an engine on `uri` through a proxy; returns what the permanent
/// error tests check.
async fn permanent(
    uri_for: impl Fn(std::net::SocketAddr) -> String,
) -> (AmqpError, usize, u64, Option<FailCause>, PublishError) {
    let proxy = support::chaos::start(a::broker_addr()).await.unwrap();
    // A short backoff: a retry, if any, would show within the wait below.
    let config = AmqpConfig::new(uri_for(proxy.addr()))
        .connection_name(a::unique("permanent-conn"))
        .connect_timeout(Duration::from_secs(3));
    let transport = AmqpTransport::new(config.clone()).unwrap();
    let engine_config = config
        .engine_config()
        .backoff(
            Backoff::builder()
                .initial(Duration::from_millis(100))
                .multiplier(2.0)
                .max(Duration::from_millis(200))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let engine = Engine::spawn(engine_config, transport.clone());
    let handle = engine.handle();
    let mut events = handle.events();
    // A publish submitted before the engine gives up fails with the cause.
    let publisher = Publisher::new(&engine, transport.clone(), outbox());
    let pending = publisher
        .publish(AmqpMessage::new("", "nowhere", b"x".to_vec()))
        .await;
    let snapshot =
        tokio::time::timeout(Duration::from_secs(10), handle.wait_for(StateKind::Failed))
            .await
            .expect("the engine gave up");
    let error = loop {
        match events.recv().await.unwrap().unwrap() {
            Event::AttemptFailed { error, kind, .. } => {
                assert_eq!(kind, ErrorKind::Permanent);
                break error;
            }
            _ => continue,
        }
    };
    let error = error
        .downcast_ref::<AmqpError>()
        .expect("a typed AmqpError")
        .clone();
    assert_eq!(error.kind(), ErrorKind::Permanent);
    // No retries: wait well past a few backoff steps.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let outcome = tokio::time::timeout(Duration::from_secs(2), pending)
        .await
        .expect("fails fast");
    // And so does a new one.
    let late = tokio::time::timeout(
        Duration::from_secs(2),
        publisher
            .publish(AmqpMessage::new("", "nowhere", b"y".to_vec()))
            .await,
    )
    .await
    .expect("fails fast");
    assert!(
        matches!(
            late,
            Err(PublishError::GaveUp {
                cause: FailCause::Permanent,
                ..
            })
        ),
        "{late:?}"
    );
    let publish_error = outcome.expect_err("no broker confirm");
    let attempts = proxy.accepted().len() + proxy.refused();
    let stats = handle.stats().attempts;
    engine.shutdown().await;
    (error, attempts, stats, snapshot.failure, publish_error)
}

#[tokio::test]
async fn wrong_password_is_permanent_after_one_attempt() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    let (error, attempts, engine_attempts, failure, publish) =
        permanent(|addr| format!("amqp://guest:wrong-password@{addr}/%2f")).await;
    println!(
        "wrong password: {error}; proxy attempts {attempts}, engine attempts {engine_attempts}, failure {failure:?}, publish {publish}"
    );
    assert!(
        matches!(&error, AmqpError::AccessRefused { user, mechanism, .. }
            if user == "guest" && *mechanism == redial::amqp::lapin::uri::SASLMechanism::Plain),
        "{error:?}"
    );
    assert_eq!(error.reply_code(), Some(403));
    assert_eq!(attempts, 1);
    assert_eq!(engine_attempts, 1);
    assert_eq!(failure, Some(FailCause::Permanent));
    assert!(
        matches!(
            publish,
            PublishError::GaveUp {
                cause: FailCause::Permanent,
                error: Some(_)
            }
        ),
        "{publish:?}"
    );
}

#[tokio::test]
async fn unknown_vhost_is_permanent_after_one_attempt() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    let (error, attempts, engine_attempts, failure, _) =
        permanent(|addr| format!("amqp://guest:guest@{addr}/redial-no-such-vhost")).await;
    println!(
        "unknown vhost: {error}; proxy attempts {attempts}, engine attempts {engine_attempts}"
    );
    assert!(
        matches!(&error, AmqpError::NotAllowed { vhost, .. } if vhost == "redial-no-such-vhost"),
        "{error:?}"
    );
    assert_eq!(error.reply_code(), Some(530));
    assert_eq!(attempts, 1);
    assert_eq!(engine_attempts, 1);
    assert_eq!(failure, Some(FailCause::Permanent));
}

#[tokio::test]
async fn tls_failure_is_permanent_after_one_attempt() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    // amqps:// to the plain AMQP port: the TLS handshake cannot succeed.
    let (error, attempts, engine_attempts, failure, _) =
        permanent(|addr| format!("amqps://guest:guest@{addr}/%2f")).await;
    println!("TLS failure: {error}; proxy attempts {attempts}, engine attempts {engine_attempts}");
    assert!(matches!(error, AmqpError::Tls { .. }), "{error:?}");
    // The TLS stack's error is kept whole, as the source.
    assert!(std::error::Error::source(&error).is_some(), "{error:?}");
    assert_eq!(attempts, 1);
    assert_eq!(engine_attempts, 1);
    assert_eq!(failure, Some(FailCause::Permanent));
}
