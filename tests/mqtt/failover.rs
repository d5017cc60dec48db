//! MQTT failover between the two brokers of a failover group (issue 14),
//! with the defaults: two private Mosquittos, each behind a chaos proxy;
//! the engine knows both proxies. The broker the engine is on "dies" (its
//! proxy resets the link and refuses every new connection, while the broker
//! itself stays up so that its witness sees everything it acknowledged),
//! three times, alternating.
//!
//! Checked: every publish resolves; every confirmed message reached a
//! witness subscriber on one of the brokers (0 lost, duplicates only from
//! replays); the subscription is restored on the new broker (a message
//! published there reaches the engine's subscriber); each failover costs
//! one refused attempt at most, then the other broker at once. The time
//! from the death to the first confirm on the other broker is printed
//! (docs/PERFORMANCE.md, "Cluster failover").
#![cfg(feature = "mqtt")]

use crate::mqtt_util;
use crate::support;

use std::time::{Duration, Instant};

use mqtt_util::{Client, Outcome, Steady, Witness, publish_direct, recv_payload, unique};
use redial::machine::StateKind;
use redial::mqtt::{MqttConfig, QoS};
use redial::outbox::OutboxConfig;
use redial::runtime::Event;
use support::mosquitto::Mosquitto;

/// How long each link is up before its broker dies: past the stable
/// period (10 s by default) the engine first retries the broker it was on
/// (a blip would be over; here it is refused) and then the other at once;
/// a link lost sooner counts as a failed try and moves on at once.
const UPTIMES: [Duration; 3] = [
    Duration::from_millis(10_500),
    Duration::from_millis(10_500),
    Duration::from_millis(700),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_between_two_brokers_loses_nothing_and_restores_subscriptions() {
    if !support::mosquitto::require_private() {
        return;
    }
    let brokers = [
        Mosquitto::deep_queue().expect("private mosquitto"),
        Mosquitto::deep_queue().expect("private mosquitto"),
    ];
    let proxies = [
        support::chaos::start(brokers[0].addr()).await.unwrap(),
        support::chaos::start(brokers[1].addr()).await.unwrap(),
    ];
    let topic = unique("redial/failover");
    let witnesses = [
        Witness::start(&brokers[0], &topic).await,
        Witness::start(&brokers[1], &topic).await,
    ];
    let inbound = unique("redial/failover-in");

    let config = MqttConfig::new("127.0.0.1", proxies[0].addr().port(), unique("failover"))
        .failover("127.0.0.1", proxies[1].addr().port());
    let c = Client::start(
        config.clone(),
        config.engine_config(),
        OutboxConfig::default(),
    );
    c.transport
        .subscribe(inbound.clone(), QoS::AtLeastOnce)
        .await
        .expect("subscription recorded");
    c.connected(Duration::from_secs(10)).await;
    let Client {
        engine,
        publisher: outbox,
        mut messages,
        log,
        ..
    } = c;
    let handle = engine.handle();

    let steady = Steady::start(outbox.clone(), &topic, Duration::from_millis(10), u64::MAX);

    let mut failover_times = Vec::new();
    for (round, uptime) in UPTIMES.into_iter().enumerate() {
        tokio::time::sleep(uptime).await;
        let before = handle.snapshot();
        assert_eq!(before.state, StateKind::Connected);
        let dead = before.endpoint;
        let alive = 1 - dead;
        let attempts_before = handle.stats().attempts;

        let died = Instant::now();
        proxies[dead].refuse(true);
        proxies[dead].sever();
        let after = *tokio::time::timeout(
            Duration::from_secs(30),
            handle
                .watch()
                .wait_for(|s| s.state == StateKind::Connected && s.generation > before.generation),
        )
        .await
        .expect("reconnected in time")
        .expect("the driver runs");
        assert_eq!(after.endpoint, alive, "round {round}: on the other broker");
        let first_confirm = loop {
            let found = steady
                .outcomes()
                .iter()
                .filter(|(_, r, at)| *at > died && r.as_ref().is_ok_and(|g| *g == after.generation))
                .map(|(_, _, at)| *at)
                .min();
            if let Some(at) = found {
                break at;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        failover_times.push(first_confirm - died);
        let attempts = handle.stats().attempts - attempts_before;
        let expected = if uptime > Duration::from_secs(10) {
            2
        } else {
            1
        };
        assert_eq!(
            attempts, expected,
            "round {round}: the dead broker once after a stable link, then the other at once"
        );

        // The subscription was restored on the new broker.
        let payload = format!("restored-{round}");
        publish_direct(brokers[alive].addr(), &inbound, &payload).await;
        assert!(
            recv_payload(&mut messages, &payload, Duration::from_secs(10))
                .await
                .is_some(),
            "round {round}: no message through the restored subscription"
        );
        proxies[dead].refuse(false);
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (published, outcomes) = steady.finish().await;
    assert_eq!(outcomes.len() as u64, published, "every publish resolved");
    let confirmed: Vec<u64> = outcomes
        .iter()
        .filter(|(_, r, _)| r.is_ok())
        .map(|(id, _, _)| *id)
        .collect();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|(_, r, _)| r.is_err()).collect();
    // Everything confirmed must be at a witness; give them time to drain.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lost = loop {
        let lost: Vec<u64> = confirmed
            .iter()
            .copied()
            .filter(|id| !witnesses.iter().any(|w| w.has(*id)))
            .collect();
        if lost.is_empty() || Instant::now() > deadline {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let duplicates: u64 = witnesses.iter().map(|w| w.total()).sum::<u64>()
        - witnesses.iter().map(|w| w.unique() as u64).sum::<u64>();
    let mut sorted = failover_times.clone();
    sorted.sort();
    println!(
        "mqtt failover: {published} published, {} confirmed, {} failed, {} lost, {duplicates} duplicates at the witnesses; death to first confirm on the other broker: {failover_times:?} (median {:?})",
        confirmed.len(),
        failed.len(),
        lost.len(),
        sorted[sorted.len() / 2],
    );
    assert!(lost.is_empty(), "confirmed but never delivered: {lost:?}");
    assert!(failed.is_empty(), "failed publishes: {failed:?}");

    let attempts: Vec<usize> = log
        .events()
        .iter()
        .filter_map(|(_, e)| match e {
            Event::AttemptStarted { endpoint, .. } => Some(*endpoint),
            _ => None,
        })
        .collect();
    println!("mqtt failover: attempts by endpoint {attempts:?}");
    for w in witnesses {
        w.stop().await;
    }
    outbox.shutdown(Duration::from_secs(2)).await;
    engine.shutdown().await;
}
