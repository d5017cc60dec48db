//! Scenarios B (half-open) and C (outage) of issue 11 through the chaos
//! proxy, with the default configuration (only the keep-alive set, to
//! 5 s), against a private Mosquitto with a deep queue (the witness must
//! not be dropped messages). `support/recovery.rs` has the schedules and
//! the checks, shared with `amqp_recovery.rs`. Scenario A is
//! `mqtt_storm.rs`.
#![cfg(feature = "mqtt")]

use crate::mqtt_util;
use crate::support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_util::{Client, Outcome, Witness, message, track, unique};
use redial::machine::StateKind;
use redial::mqtt::{MqttConfig, QoS};
use redial::outbox::OutboxConfig;
use support::mosquitto::Mosquitto;
use support::recovery::{self, Figures, HALF_OPEN, OUTAGE, Scenario};

async fn run(s: &Scenario) -> Figures {
    let broker = Mosquitto::deep_queue().expect("private mosquitto");
    let proxy = support::chaos::start(broker.addr()).await.unwrap();
    let topic = unique("redial/recovery");
    let witness = Witness::start(&broker, &topic).await;
    let cfg = MqttConfig::new("127.0.0.1", proxy.addr().port(), unique("recovery"))
        .keep_alive(recovery::HEARTBEAT);
    let engine = cfg.engine_config();
    let c = Client::start(cfg, engine, OutboxConfig::default());
    c.connected(Duration::from_secs(10)).await;
    let handle = c.engine.handle();

    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let t0 = Instant::now();
    let chaos = tokio::spawn({
        let handle = handle.clone();
        let (from, to, fault) = (s.from, s.to, s.fault);
        async move {
            tokio::time::sleep_until((t0 + from).into()).await;
            let at_from = handle.stats();
            fault(&proxy, true);
            tokio::time::sleep_until((t0 + to).into()).await;
            let at_to = handle.stats();
            fault(&proxy, false);
            (proxy, at_from, at_to)
        }
    });
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / s.rate));
    let mut waiters = Vec::new();
    for id in 1..=s.messages {
        tick.tick().await;
        let receipt = c
            .publisher
            .publish(message(&topic, id, QoS::AtLeastOnce))
            .await;
        waiters.push(track(&outcomes, id, receipt));
    }
    let (_proxy, at_from, at_to) = chaos.await.unwrap();
    for w in waiters {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("every receipt resolves")
            .unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let confirmed: Vec<u64> = outcomes
        .iter()
        .filter(|o| o.1.is_ok())
        .map(|o| o.0)
        .collect();
    witness
        .wait_for(confirmed.len(), Duration::from_secs(15))
        .await;
    let lost = confirmed.iter().filter(|id| !witness.has(**id)).count();
    let transitions = support::events::transitions(&c.log.events());
    c.stop().await;
    witness.stop().await;

    let (fault_on, fault_off) = (t0 + s.from, t0 + s.to);
    let recovery = transitions
        .iter()
        .find(|(t, _, to, _, _)| *t >= fault_off && *to == StateKind::Connected)
        .and_then(|(_, _, _, generation, _)| {
            outcomes
                .iter()
                .filter(|(_, r, _)| r.as_ref().is_ok_and(|g| g >= generation))
                .map(|(_, _, at)| *at)
                .min()
        })
        .map(|c| c.saturating_duration_since(fault_off));
    Figures {
        adapter: "mqtt",
        resolved: outcomes.len(),
        failed: outcomes.iter().filter(|o| o.1.is_err()).count(),
        lost,
        left_connected: transitions
            .iter()
            .find(|(t, from, _, _, _)| *t >= fault_on && *from == StateKind::Connected)
            .map(|(t, _, _, _, reason)| (*t - fault_on, *reason)),
        recovery,
        attempts_in_fault: at_to.attempts - at_from.attempts,
        probes_in_fault: at_to.probes - at_from.probes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_link_is_found_dead_by_the_watchdog_and_replaced_when_the_path_heals() {
    if support::mosquitto::require_private() {
        recovery::check_half_open(&run(&HALF_OPEN).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_costs_one_attempt_and_ends_within_a_probe_interval() {
    if support::mosquitto::require_private() {
        recovery::check_outage(&run(&OUTAGE).await);
    }
}
