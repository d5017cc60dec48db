//! S44: reachability probes on the engine, with the in-memory transport and
//! paused time. An outage costs one refused attempt and cheap probes, and
//! the engine is back within one probe interval of the broker's return
//! (scenario C of issue 11, minus the sockets: `tests/*_outage_c.rs` run it
//! against the real brokers).

use crate::engine;

use std::time::Duration;

use engine::*;
use redial::machine::{ErrorKind, Generation, ProbeOutcome, StateKind};
use redial::testing::Plan;
use tokio::time::Instant;

const PROBE: Duration = Duration::from_millis(500);

/// A 10 s outage of a stable link: the immediate retry is refused, then
/// probes (every 500 ms, counted) find the broker down until it is back;
/// the attempt that follows the first reachable probe connects. Two opens
/// in all, and the link is back within one probe interval.
#[tokio::test(start_paused = true)]
async fn s44_an_outage_costs_one_refused_attempt_and_ends_within_a_probe_interval() {
    let rig = Rig::connected(
        builder().probe_interval(PROBE).build().unwrap(),
        Probe::memory(),
    )
    .await;
    tokio::time::sleep(STABLE).await;
    rig.control.set_default(Plan::Fail(ErrorKind::Transient));
    rig.control.answer_probes(ProbeOutcome::Unreachable);

    let lost_at = Instant::now();
    rig.handle.report_lost(Generation(1), ErrorKind::Transient);
    let back = lost_at + secs(10);
    tokio::time::sleep_until(back).await;
    let probes_in_outage = rig.control.probe_calls();
    rig.control.set_default(Plan::Succeed);
    rig.control.answer_probes(ProbeOutcome::Reachable);
    connected_after(&rig.handle, Generation(1)).await;
    let recovered = Instant::now() - back;

    let opens = rig.probe.open_times();
    assert_eq!(
        opens.len(),
        3,
        "start, the immediate retry, the one after the probe"
    );
    assert_eq!(
        opens[1], lost_at,
        "the stable link's loss is retried at once"
    );
    assert!(
        recovered <= PROBE,
        "back {recovered:?} after the broker, probe interval {PROBE:?}"
    );
    // The first wait is the backoff's first delay (0.5 to 1.5 s); then one
    // probe per 500 ms until the broker is back.
    assert!(
        (17..=20).contains(&probes_in_outage),
        "{probes_in_outage} probes in a 10 s outage"
    );
}

/// A transport that cannot probe (the in-memory default) answers
/// `Unsupported` once: the attempt is made at once and the rest of the
/// outage follows the backoff schedule, as without probes.
#[tokio::test(start_paused = true)]
async fn a_transport_without_probes_gets_the_backoff_schedule() {
    let config = builder().probe_interval(PROBE).build().unwrap();
    let rig = Rig::connected(config, Probe::memory()).await;
    tokio::time::sleep(STABLE).await;
    rig.control.set_default(Plan::Fail(ErrorKind::Transient));

    let lost_at = Instant::now();
    rig.handle.report_lost(Generation(1), ErrorKind::Transient);
    let back = lost_at + secs(30);
    tokio::time::sleep_until(back).await;
    rig.control.set_default(Plan::Succeed);
    connected_after(&rig.handle, Generation(1)).await;

    assert_eq!(
        rig.control.probe_calls(),
        1,
        "one probe, answered unsupported"
    );
    let got = rig.probe.open_times()[1..].to_vec();
    let expected = outage_schedule(lost_at, back, &mut Schedule::default_policy());
    assert_eq!(got, expected, "the schedule, to the millisecond");
}

/// A broker that answers probes but refuses attempts (overloaded) sees
/// attempts no faster than the backoff schedule: a probe goes out only once
/// each wait is over.
#[tokio::test(start_paused = true)]
async fn a_broker_that_answers_probes_but_refuses_attempts_sees_the_schedule() {
    let config = builder().probe_interval(PROBE).build().unwrap();
    let rig = Rig::connected(config, Probe::memory()).await;
    tokio::time::sleep(STABLE).await;
    rig.control.set_default(Plan::Fail(ErrorKind::Transient));
    rig.control.answer_probes(ProbeOutcome::Reachable);

    let lost_at = Instant::now();
    rig.handle.report_lost(Generation(1), ErrorKind::Transient);
    tokio::time::sleep_until(lost_at + secs(60)).await;

    let got = rig.probe.open_times()[1..].to_vec();
    let horizon = lost_at + secs(60);
    let mut expected = outage_schedule(lost_at, horizon, &mut Schedule::default_policy());
    expected.retain(|t| *t <= horizon);
    assert_eq!(
        got, expected,
        "each attempt when its wait ends (reachable at once)"
    );
    assert_eq!(rig.control.probe_calls() as usize, got.len() - 1);
}

/// A shutdown during a probe ends the engine at once; the probe's answer
/// changes nothing and no attempt follows.
#[tokio::test(start_paused = true)]
async fn shutdown_while_probing_opens_nothing() {
    let config = builder().probe_interval(PROBE).build().unwrap();
    let rig = Rig::connected(config, Probe::memory()).await;
    tokio::time::sleep(STABLE).await;
    rig.control.set_default(Plan::Fail(ErrorKind::Transient));
    rig.control.answer_probes(ProbeOutcome::Unreachable);
    rig.handle.report_lost(Generation(1), ErrorKind::Transient);
    tokio::time::sleep(secs(5)).await;
    assert!(rig.control.probe_calls() > 0);
    let opens = rig.probe.open_times().len();
    rig.control.answer_probes(ProbeOutcome::Reachable);
    rig.engine.shutdown().await;
    assert_eq!(rig.handle.state(), StateKind::Closed);
    assert_eq!(rig.probe.open_times().len(), opens);
}
