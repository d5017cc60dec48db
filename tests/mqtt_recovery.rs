//! Scenarios B (half-open) and C (outage) of issue 11 through the chaos
//! proxy, with the default configuration (only the keep-alive set, to
//! 5 s), against a private Mosquitto with a deep queue (the witness must
//! not be dropped messages). Scenario A is `mqtt_storm.rs`; the AMQP twins
//! are in `amqp_recovery.rs`, with the same assertions and rationale.
#![cfg(feature = "mqtt")]

mod mqtt_util;
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_util::{Client, Witness, message, unique};
use redial::machine::{Generation, Reason, StateKind};
use redial::mqtt::{MqttConfig, QoS};
use redial::outbox::OutboxConfig;
use redial::runtime::{Event, Stats};
use support::chaos::ChaosProxy;
use support::mosquitto::Mosquitto;

const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// What one run saw.
struct Run {
    t0: Instant,
    /// (payload id, confirmed on generation or the error, when).
    outcomes: Vec<(u64, Result<Generation, String>, Instant)>,
    lost: usize,
    events: Vec<(Instant, Event)>,
    /// The engine's counters at the fault's start and end, and at the end.
    stats: [Stats; 3],
}

impl Run {
    fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.1.is_err()).count()
    }

    fn transitions(
        &self,
    ) -> impl Iterator<Item = (Instant, StateKind, StateKind, Generation, Reason)> {
        self.events.iter().filter_map(|(t, e)| match e {
            Event::StateChanged {
                from,
                to,
                generation,
                reason,
            } => Some((*t, *from, *to, *generation, *reason)),
            _ => None,
        })
    }

    /// The first confirm of a publish on a link that came up after `t`.
    fn first_confirm_on_a_new_link_after(&self, t: Instant) -> Option<Instant> {
        let (_, _, _, generation, _) = self
            .transitions()
            .find(|(at, _, to, _, _)| *at >= t && *to == StateKind::Connected)?;
        self.outcomes
            .iter()
            .filter(|(_, r, _)| r.as_ref().is_ok_and(|g| *g >= generation))
            .map(|(_, _, at)| *at)
            .min()
    }
}

async fn run(
    messages: u64,
    rate: u64,
    from: Duration,
    to: Duration,
    fault: impl Fn(&ChaosProxy, bool) + Send + 'static,
) -> Run {
    let broker = Mosquitto::deep_queue().expect("private mosquitto");
    let proxy = support::chaos::start(broker.addr()).await.unwrap();
    let topic = unique("redial/recovery");
    let witness = Witness::start(&broker, &topic).await;
    let cfg = MqttConfig::new("127.0.0.1", proxy.addr().port(), unique("recovery"))
        .keep_alive(KEEP_ALIVE);
    let engine = cfg.engine_config();
    let c = Client::start(cfg, engine, OutboxConfig::default());
    c.connected(Duration::from_secs(10)).await;
    let handle = c.engine.handle();

    type Outcomes = Arc<Mutex<Vec<(u64, Result<Generation, String>, Instant)>>>;
    let outcomes: Outcomes = Arc::default();
    let t0 = Instant::now();
    let chaos = tokio::spawn({
        let handle = handle.clone();
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
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut waiters = Vec::new();
    for id in 1..=messages {
        tick.tick().await;
        let receipt = c
            .publisher
            .publish(message(&topic, id, QoS::AtLeastOnce))
            .await;
        let outcomes = outcomes.clone();
        waiters.push(tokio::spawn(async move {
            let r = receipt
                .await
                .map(|c| c.generation)
                .map_err(|e| e.to_string());
            outcomes.lock().unwrap().push((id, r, Instant::now()));
        }));
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
    let events = c.log.events();
    let end = handle.stats();
    c.stop().await;
    witness.stop().await;
    Run {
        t0,
        outcomes,
        lost,
        events,
        stats: [at_from, at_to, end],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_link_is_found_dead_by_the_watchdog_and_replaced_when_the_path_heals() {
    if !support::mosquitto::require_private() {
        return;
    }
    let (from, to) = (Duration::from_secs(2), Duration::from_secs(22));
    let r = run(3_000, 300, from, to, |p, on| p.blackhole_swallowing(on)).await;

    let (dead_at, _, _, _, reason) = r
        .transitions()
        .find(|(t, f, _, _, _)| *t >= r.t0 + from && *f == StateKind::Connected)
        .expect("the link was found dead");
    let detection = dead_at - (r.t0 + from);
    let healed = r.t0 + to;
    let recovery = r
        .first_confirm_on_a_new_link_after(healed)
        .map(|c| c.saturating_duration_since(healed));
    let probes = r.stats[2].probes - r.stats[0].probes;
    println!(
        "mqtt half-open B: {} resolved, {} failed, {} lost; dead after {detection:?} ({reason:?}); \
         first confirm {recovery:?} after the path healed; {} attempts and {} probes during \
         the blackhole, {probes} probes in all",
        r.outcomes.len(),
        r.failed(),
        r.lost,
        r.stats[1].attempts - r.stats[0].attempts,
        r.stats[1].probes - r.stats[0].probes,
    );
    assert_eq!(r.outcomes.len(), 3_000, "every publish resolved");
    assert_eq!(r.failed(), 0, "failed publishes");
    assert_eq!(r.lost, 0, "confirmed but never delivered");
    assert_eq!(reason, Reason::LivenessLost, "the watchdog, not TCP");
    assert!(
        detection <= KEEP_ALIVE * 3 / 2 + Duration::from_millis(1_500),
        "detection took {detection:?}"
    );
    assert!(probes > 0, "no probe was sent");
    let recovery = recovery.expect("a confirm on a new link after the path healed");
    assert!(
        recovery <= Duration::from_secs(3),
        "first confirm {recovery:?} after healing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_costs_one_attempt_and_ends_within_a_probe_interval() {
    if !support::mosquitto::require_private() {
        return;
    }
    let (from, to) = (Duration::from_secs(2), Duration::from_secs(12));
    let r = run(2_000, 200, from, to, |p, on| {
        p.refuse(on);
        if on {
            p.sever();
        }
    })
    .await;

    let back = r.t0 + to;
    let recovery = r
        .first_confirm_on_a_new_link_after(back)
        .map(|c| c.saturating_duration_since(back));
    let attempts = r.stats[1].attempts - r.stats[0].attempts;
    let probes = r.stats[1].probes - r.stats[0].probes;
    println!(
        "mqtt outage C: {} resolved, {} failed, {} lost; {attempts} attempts and {probes} probes \
         in the 10 s outage; first confirm {recovery:?} after the broker was back",
        r.outcomes.len(),
        r.failed(),
        r.lost,
    );
    assert_eq!(r.outcomes.len(), 2_000, "every publish resolved");
    assert_eq!(r.failed(), 0, "failed publishes");
    assert_eq!(r.lost, 0, "confirmed but never delivered");
    assert!(attempts <= 2, "{attempts} attempts during the outage");
    assert!(probes >= 10, "{probes} probes during the outage");
    let recovery = recovery.expect("a confirm on a new link after the broker was back");
    assert!(
        recovery <= Duration::from_secs(3),
        "first confirm {recovery:?} after the return"
    );
}
