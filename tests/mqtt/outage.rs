//! Outage: the proxy refuses every connection for 10 s (accept, then reset).
//!
//! redial's attempts, counted at its proxy, must follow the backoff
//! schedule (probes off, as for a transport that cannot probe; the default
//! with probes is `tests/recovery/mqtt_recovery.rs`), and nothing published meanwhile may
//! be lost. In the same run,
//! plain rumqttc is driven the way its README shows (a loop on
//! `eventloop.poll()`) through its own proxy refusing for the same 10 s;
//! its attempts are counted at that proxy and the ratio is printed. The
//! plain loop runs on its own thread and stops after the window or after
//! 200,000 attempts, whichever comes first.
#![cfg(feature = "mqtt")]

use crate::mqtt_util;
use crate::support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_util::{Client, Witness, message, unique};
use redial::backoff::{Backoff, Jitter};
use redial::machine::{Generation, StateKind};
use redial::mqtt::rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet};
use redial::mqtt::{MqttConfig, QoS};
use redial::outbox::OutboxConfig;
use redial::runtime::Event;
use support::mosquitto::Mosquitto;

const OUTAGE: Duration = Duration::from_secs(10);
const PLAIN_MAX_ATTEMPTS: u64 = 200_000;

/// Plain rumqttc as its README drives it, on its own thread and runtime.
/// Returns (poll errors during the window, whether it connected first).
fn plain_rumqttc(
    port: u16,
    connected: std::sync::mpsc::Sender<()>,
    window_end: Arc<Mutex<Option<Instant>>>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut options = MqttOptions::new(unique("plain"), "127.0.0.1", port);
            options.set_keep_alive(Duration::from_secs(5));
            let (_client, mut eventloop) = AsyncClient::new(options, 10);
            let hard_stop = Instant::now() + Duration::from_secs(60);
            let mut errors = 0u64;
            let mut told = false;
            loop {
                let now = Instant::now();
                let end = (*window_end.lock().unwrap())
                    .unwrap_or(hard_stop)
                    .min(hard_stop);
                if now >= end || errors >= PLAIN_MAX_ATTEMPTS {
                    break;
                }
                // README: `loop { let notification = eventloop.poll().await; ... }`
                match tokio::time::timeout(end - now, eventloop.poll()).await {
                    Ok(Ok(MqttEvent::Incoming(Packet::ConnAck(_)))) if !told => {
                        told = true;
                        let _ = connected.send(());
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => errors += 1,
                    Err(_) => break,
                }
            }
            errors
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_attempts_follow_the_backoff_schedule() {
    if !support::mosquitto::require_private() {
        return;
    }
    // A private broker that never drops for the witness.
    let broker = Mosquitto::deep_queue().expect("private mosquitto");
    let ours = support::chaos::start(broker.addr()).await.unwrap();
    let theirs = support::chaos::start(broker.addr()).await.unwrap();
    let topic = unique("redial/outage");
    let witness = Witness::start(&broker, &topic).await;

    let initial = Duration::from_millis(500);
    let cap = Duration::from_secs(4);
    let policy = Backoff::builder()
        .initial(initial)
        .multiplier(2.0)
        .max(cap)
        .jitter(Jitter::Proportional { fraction: 0.5 })
        .build()
        .unwrap();
    // Probes off: this checks the schedule a transport without probes gets
    // (with them, an outage costs one attempt: `mqtt_recovery.rs`).
    let cfg = MqttConfig::new("127.0.0.1", ours.addr().port(), unique("outage"))
        .keep_alive(Duration::from_secs(5));
    let c = Client::start(
        cfg.clone(),
        cfg.engine_config()
            .no_probe_interval()
            .backoff(policy.clone())
            .stable_period(Duration::from_secs(1)),
        OutboxConfig::default(),
    );
    c.connected(Duration::from_secs(10)).await;
    let handle = c.engine.handle();

    let window_end = Arc::new(Mutex::new(None));
    let (tx, rx) = std::sync::mpsc::channel();
    let plain = plain_rumqttc(theirs.addr().port(), tx, window_end.clone());
    tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("plain rumqttc connected");

    // Publish 20/s all along.
    type Outcomes = Arc<Mutex<Vec<(u64, Result<Generation, String>)>>>;
    let outcomes: Outcomes = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = tokio::spawn({
        let publisher = c.publisher.clone();
        let outcomes = outcomes.clone();
        let stop = stop.clone();
        let topic = topic.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut waiters = Vec::new();
            let mut id = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && id < 2_000 {
                tick.tick().await;
                id += 1;
                let receipt = publisher
                    .publish(message(&topic, id, QoS::AtLeastOnce))
                    .await;
                let outcomes = outcomes.clone();
                waiters.push(tokio::spawn(async move {
                    let r = receipt
                        .await
                        .map(|c| c.generation)
                        .map_err(|e| e.to_string());
                    outcomes.lock().unwrap().push((id, r));
                }));
            }
            (id, waiters)
        }
    });
    // Past the stable period: the outage's first attempt is immediate.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The outage: both proxies refuse and drop what they carry.
    let began = Instant::now();
    *window_end.lock().unwrap() = Some(began + OUTAGE);
    ours.refuse(true);
    theirs.refuse(true);
    ours.sever();
    theirs.sever();
    tokio::time::sleep_until((began + OUTAGE).into()).await;
    ours.refuse(false);
    theirs.refuse(false);
    let lifted = Instant::now();
    let plain_errors = tokio::task::spawn_blocking(move || plain.join().unwrap())
        .await
        .unwrap();
    let plain_attempts = theirs.refused();

    tokio::time::timeout(cap * 2 + Duration::from_secs(5), async {
        loop {
            if handle.state() == StateKind::Connected && handle.stats().connects >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("reconnected after the outage");
    let recovered = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (published, waiters) = publisher.await.unwrap();
    for w in waiters {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("every receipt resolves")
            .unwrap();
    }
    let seen = witness
        .wait_for(published as usize, Duration::from_secs(10))
        .await;

    // The schedule, from the engine's own events during the outage.
    let events = c.log.events();
    let starts: Vec<(Instant, u32)> = events
        .iter()
        .filter(|(t, _)| *t >= began)
        .filter_map(|(t, e)| match e {
            Event::AttemptStarted { attempt, .. } => Some((*t, *attempt)),
            _ => None,
        })
        .collect();
    let failures = events
        .iter()
        .filter(|(t, e)| *t >= began && matches!(e, Event::AttemptFailed { .. }))
        .count();
    // (attempt number, time since the previous attempt started)
    let gaps: Vec<(u32, Duration)> = starts
        .windows(2)
        .map(|w| (w[1].1, w[1].0 - w[0].0))
        .collect();
    let first_after = starts.first().map(|(t, n)| (*n, *t - began));
    let redial_attempts = ours.refused();
    let failed = outcomes
        .lock()
        .unwrap()
        .iter()
        .filter(|o| o.1.is_err())
        .count();
    println!(
        "outage {OUTAGE:?}: redial attempts at its proxy={redial_attempts} (engine: {} started, \
         {failures} failed; first attempt {first_after:?}; (attempt, gap) {:?}); plain rumqttc attempts at its proxy={plain_attempts} \
         (poll errors {plain_errors}); ratio plain/redial = {:.0}; redial recovered {:?} after \
         the lift; published={published} witness unique={seen} lost={} failed={failed}",
        starts.len(),
        gaps,
        plain_attempts as f64 / redial_attempts.max(1) as f64,
        recovered - lifted,
        published as usize - seen,
    );

    assert_eq!(witness.errors(), 0);
    // Every attempt the engine made in the outage reached the proxy and was refused.
    assert_eq!(
        redial_attempts, failures,
        "attempts at the proxy vs the engine's"
    );
    // The link was stable: attempt 1 of the outage is immediate (the
    // engine went straight from Connected to Connecting, no backoff) ...
    let (n, after) = first_after.expect("attempts in the outage");
    assert_eq!(n, 1);
    let left_connected = events
        .iter()
        .filter(|(t, _)| *t >= began)
        .find_map(|(_, e)| match e {
            Event::StateChanged { from, to, .. } if *from == StateKind::Connected => Some(*to),
            _ => None,
        });
    assert_eq!(
        left_connected,
        Some(StateKind::Connecting),
        "first attempt after {after:?}"
    );
    // ... then attempt n waits step n-1 of the jittered schedule:
    // base(n-1) x [0.5, 1.5], plus slack for a loaded machine (the low
    // bound is what tells a backoff wait from none).
    for (n, gap) in &gaps {
        let base = Duration::from_millis(policy.base_ms(n - 1));
        let low = base / 2;
        let high = base * 3 / 2 + Duration::from_millis(1000);
        assert!(
            *gap >= low && *gap <= high,
            "attempt {n}: gap {gap:?} outside [{low:?}, {high:?}] (all {gaps:?})"
        );
    }
    assert!(
        (3..=8).contains(&redial_attempts),
        "redial made {redial_attempts} attempts in {OUTAGE:?}"
    );
    assert!(
        plain_attempts > 50 * redial_attempts,
        "plain rumqttc made only {plain_attempts} attempts"
    );
    assert_eq!(failed, 0);
    assert_eq!(seen, published as usize, "lost messages");
    witness.stop().await;
    c.stop().await;
}
