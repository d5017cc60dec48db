//! Endpoint failover on the engine (docs/spec.md, 12.1), with the in-memory
//! transport and paused time: the driver opens the endpoint the machine
//! names, a dead node costs one refused attempt and no backoff wait, and
//! events and snapshots name the endpoint. The real-broker counterparts are
//! `tests/cluster/amqp.rs` and `tests/mqtt/failover.rs`.

use crate::engine;

use std::time::Duration;

use engine::*;
use redial::machine::{ErrorKind, Generation, ProbeOutcome, StateKind};
use redial::runtime::Event;
use redial::testing::Try;
use tokio::time::Instant;

const ENDPOINTS: usize = 3;

fn cluster() -> redial::machine::ConfigBuilder {
    // A first backoff of 20 s or more: any wait would show.
    let slow = redial::backoff::Backoff::builder()
        .initial(secs(40))
        .multiplier(2.0)
        .max(secs(60))
        .jitter(redial::backoff::Jitter::Proportional { fraction: 0.5 })
        .build()
        .unwrap();
    builder().endpoints(ENDPOINTS).backoff(slow)
}

fn opened(tries: &[Try]) -> Vec<usize> {
    tries
        .iter()
        .filter_map(|t| match t {
            Try::Open(e) => Some(*e),
            Try::Probe(_) => None,
        })
        .collect()
}

/// The node of a stable link dies: the engine retries it once (it may have
/// been a blip), is refused, and opens the next node at once, without the
/// clock moving; the events and the snapshot name each endpoint.
#[tokio::test(start_paused = true)]
async fn a_dead_node_costs_one_refused_attempt_and_no_wait() {
    let rig = Rig::connected(cluster().build().unwrap(), Probe::memory()).await;
    let home = rig.handle.snapshot().endpoint;
    assert_eq!(opened(&rig.control.tries()), vec![home]);
    tokio::time::sleep(STABLE).await;

    rig.control.set_endpoint_down(home, true);
    let lost_at = Instant::now();
    rig.handle.report_lost(Generation(1), ErrorKind::Transient);
    let snapshot = connected_after(&rig.handle, Generation(2)).await;
    assert_eq!(Instant::now(), lost_at, "no wait: the clock did not move");

    let tries = opened(&rig.control.tries());
    assert_eq!(tries.len(), 3, "{tries:?}");
    assert_eq!(
        tries[1], home,
        "the first retry returns to the healthy node"
    );
    assert_ne!(tries[2], home, "then the next node, at once");
    assert_eq!(snapshot.endpoint, tries[2]);
    assert_eq!(snapshot.generation, Generation(3));

    let mut events = rig.events;
    let started: Vec<(Generation, u32, usize)> = events
        .drain()
        .iter()
        .filter_map(|e| match e {
            Event::AttemptStarted {
                generation,
                attempt,
                endpoint,
                ..
            } => Some((*generation, *attempt, *endpoint)),
            _ => None,
        })
        .collect();
    assert_eq!(
        started,
        vec![
            (Generation(1), 1, home),
            (Generation(2), 1, home),
            (Generation(3), 2, tries[2]),
        ]
    );
    let failed: Vec<usize> = events
        .drain()
        .iter()
        .filter_map(|e| match e {
            Event::AttemptFailed { endpoint, .. } => Some(*endpoint),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec![home]);
}

/// Two of three nodes down at the start: connected within one round, at
/// once, on the node that is up.
#[tokio::test(start_paused = true)]
async fn one_node_up_of_three_is_found_within_one_round() {
    for seed in 0..8 {
        let config = cluster().seed(seed).build().unwrap();
        let probe = Probe::memory();
        let control = probe.control();
        let up = (seed as usize) % ENDPOINTS;
        for endpoint in (0..ENDPOINTS).filter(|e| *e != up) {
            control.set_endpoint_down(endpoint, true);
        }
        let started = Instant::now();
        let rig = Rig::spawn(config, probe);
        let snapshot = wait_until(&rig.handle, |s| s.state == StateKind::Connected).await;
        assert_eq!(Instant::now(), started, "seed {seed}: no wait");
        assert_eq!(snapshot.endpoint, up, "seed {seed}");
        let tries = opened(&control.tries());
        assert!(tries.len() <= ENDPOINTS, "seed {seed}: {tries:?}");
        rig.engine.shutdown().await;
    }
}

/// Every node down: one round of attempts, then one backoff wait (a round
/// grows the backoff, not each failure); with probes the wait ends in a
/// probe round, and the first node that answers gets the attempt.
#[tokio::test(start_paused = true)]
async fn a_whole_cluster_down_backs_off_per_round_then_probes_each_node() {
    let config = cluster()
        .probe_interval(Duration::from_millis(500))
        .build()
        .unwrap();
    let probe = Probe::memory();
    let control = probe.control();
    control.answer_probes(ProbeOutcome::Reachable);
    for endpoint in 0..ENDPOINTS {
        control.set_endpoint_down(endpoint, true);
    }
    let started = Instant::now();
    let rig = Rig::spawn(config, probe);
    // The first round: three refused attempts, then a wait of 20 to 60 s.
    wait_until(&rig.handle, |s| {
        s.state == StateKind::BackingOff && s.attempt == 3
    })
    .await;
    assert_eq!(Instant::now(), started);
    let round: Vec<usize> = opened(&control.tries());
    let mut sorted = round.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![0, 1, 2], "one attempt per node: {round:?}");

    // During the wait one node comes back: the probe round after the wait
    // finds it, and the attempt goes there.
    let back = round[1];
    control.set_endpoint_down(back, false);
    let snapshot = wait_until(&rig.handle, |s| s.state == StateKind::Connected).await;
    let waited = Instant::now() - started;
    assert!(
        waited >= secs(20) && waited <= secs(61),
        "one backoff wait, then probes: {waited:?}"
    );
    assert_eq!(snapshot.endpoint, back);
    let tries = control.tries();
    let probes: Vec<usize> = tries[3..]
        .iter()
        .filter_map(|t| match t {
            Try::Probe(e) => Some(*e),
            Try::Open(_) => None,
        })
        .collect();
    assert!(
        !probes.is_empty() && probes.len() <= ENDPOINTS,
        "one probe round at most: {probes:?}"
    );
    assert_eq!(*probes.last().unwrap(), back);
    assert_eq!(opened(&tries).len(), 4);
}
