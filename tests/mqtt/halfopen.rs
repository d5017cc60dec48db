//! Half-open link: the proxy blackholes every connection for 20 s (sockets
//! open, nothing forwarded) with a 5 s keep-alive while the application
//! keeps publishing QoS 1 at 100/s. The dead link must be declared dead by
//! redial's liveness watchdog (1 to 1.5 x keep-alive after its last inbound
//! packet; rumqttc's own ping check needs about 2 x, TCP minutes), and
//! nothing may be lost. The broker and the witness are a private Mosquitto
//! that never drops for a slow subscriber: the replay burst after the
//! blackhole is larger than the system broker's queue.
#![cfg(feature = "mqtt")]

use crate::mqtt_util;
use crate::support;

use std::time::{Duration, Instant};

use mqtt_util::{Client, Steady, Witness, unique};
use redial::machine::StateKind;
use redial::mqtt::MqttConfig;
use redial::outbox::OutboxConfig;
use redial::runtime::Event;
use support::mosquitto::Mosquitto;

const KEEP_ALIVE: Duration = Duration::from_secs(5);
const BLACKHOLE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_link_is_detected_within_one_and_a_half_keep_alives() {
    if !support::mosquitto::require_private() {
        return;
    }
    let broker = Mosquitto::deep_queue().expect("private mosquitto");
    let proxy = support::chaos::start(broker.addr()).await.unwrap();
    let topic = unique("redial/halfopen");
    let witness = Witness::start(&broker, &topic).await;
    let cfg = MqttConfig::new("127.0.0.1", proxy.addr().port(), unique("halfopen"))
        .keep_alive(KEEP_ALIVE)
        .connect_timeout(Duration::from_secs(3));
    let engine = cfg.engine_config();
    assert_eq!(
        engine.clone().build().unwrap().liveness_timeout(),
        Some(KEEP_ALIVE)
    );
    let outbox = OutboxConfig::builder()
        .max_messages(10_000)
        .build()
        .unwrap();
    let c = Client::start(cfg, engine, outbox);
    c.connected(Duration::from_secs(10)).await;
    let handle = c.engine.handle();

    let steady = Steady::start(
        c.publisher.clone(),
        &topic,
        Duration::from_millis(10),
        5_000,
    );

    // Let a link carry traffic, then go silent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = handle.generation();
    let blackholed = Instant::now();
    proxy.blackhole(true);
    tokio::time::sleep(BLACKHOLE).await;
    proxy.blackhole(false);
    let lifted = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let s = handle.snapshot();
            if s.state == StateKind::Connected && s.generation > old {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("reconnected after the blackhole");
    let reconnected = Instant::now();
    // Publish a little more on the new link, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (published, outcomes) = steady.finish().await;
    let seen = witness
        .wait_for(published as usize, Duration::from_secs(10))
        .await;

    // The last confirm before the blackhole bounds the last inbound packet
    // from below, so "detection - last confirm" over-estimates the figure.
    let last_confirm = outcomes
        .iter()
        .filter(|o| o.1 == Ok(old) && o.2 <= blackholed)
        .map(|o| o.2)
        .max()
        .expect("confirms before the blackhole");
    let events = c.log.events();
    let (detected, how) = events
        .iter()
        .filter(|(t, _)| *t >= blackholed)
        .find_map(|(t, e)| match e {
            Event::StateChanged { from, reason, .. } if *from == StateKind::Connected => {
                Some((*t, format!("{reason:?}")))
            }
            _ => None,
        })
        .expect("the dead link was detected");
    let liveness_events = events
        .iter()
        .filter(|(_, e)| matches!(e, Event::LivenessLost { .. }))
        .count();
    let detection = detected - last_confirm;
    let failed = outcomes.iter().filter(|o| o.1.is_err()).count();
    let ok_missing = outcomes
        .iter()
        .filter(|o| o.1.is_ok() && !witness.has(o.0))
        .count();
    let stats = handle.stats();
    let tstats = c.transport.stats();
    println!(
        "half-open: keep-alive {KEEP_ALIVE:?}, blackhole {BLACKHOLE:?}; detected {:?} after the \
         last confirm before the blackhole ({:?} after the blackhole began), by {how} \
         (watchdog LivenessLost events: {liveness_events}); reconnected {:?} after the lift; \
         published={published} witness unique={seen} total={} lost={} failed={failed} \
         ok-but-missing={ok_missing}; engine attempts={} connects={} outages={}; \
         sessions opened={} max live={}; proxy accepted={}",
        detection,
        detected - blackholed,
        reconnected - lifted,
        witness.total(),
        published as usize - seen,
        stats.attempts,
        stats.connects,
        stats.outages,
        tstats.sessions_opened,
        tstats.max_sessions_live,
        proxy.accepted().len(),
    );
    assert_eq!(witness.errors(), 0);
    // A liveness check found it, not TCP: the engine's watchdog or rumqttc's
    // missing-PINGRESP check (pings every half keep-alive, so both fire
    // near one keep-alive and either may win). The time bound has slack a
    // loaded machine cannot break and lies far below TCP's timeouts.
    assert!(
        liveness_events as u64 + tstats.ping_timeouts >= 1,
        "not detected by a liveness check ({how}, {tstats:?})"
    );
    assert!(
        detection <= KEEP_ALIVE * 3 / 2 + Duration::from_millis(2000),
        "half-open link detected after {detection:?}"
    );
    assert_eq!(failed, 0);
    assert_eq!(ok_missing, 0);
    assert_eq!(seen, published as usize, "lost messages");
    assert_eq!(tstats.max_sessions_live, 1, "two sessions overlapped");
    witness.stop().await;
    c.stop().await;
}
