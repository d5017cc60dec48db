//! Scenarios B (half-open) and C (outage) of issue 11 against the real
//! broker through the chaos proxy, with the default configuration (only the
//! heartbeat set, to 5 s). Scenario A is `amqp_sever.rs`.
//!
//! * **B**: 3,000 publishes at 300/s; from 2 s to 22 s the proxy forwards
//!   nothing either way and swallows every connection made meanwhile (they
//!   stay dead after it lifts, as in a partition that lost their SYNs).
//! * **C**: 2,000 publishes at 200/s; from 2 s to 12 s every connection is
//!   reset and every new one refused, then the broker is reachable again.
//!
//! Both assert what noise cannot break: no publish failed, none lost; B's
//! death was found by the liveness watchdog within 1.5 x the heartbeat; the
//! return was noticed by a probe, not by the backoff schedule (C: one
//! attempt in the outage, probes meanwhile); and the first confirm on the
//! new link came within a bound far below the schedule's next attempt. The
//! measured figures are printed (docs/PERFORMANCE.md has them).
#![cfg(feature = "amqp")]

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use redial::amqp::lapin::options::QueueDeclareOptions;
use redial::amqp::lapin::types::FieldTable;
use redial::amqp::{AmqpConfig, AmqpMessage, AmqpTransport, Heartbeat};
use redial::machine::{Reason, StateKind};
use redial::outbox::{OutboxConfig, Publisher};
use redial::runtime::{Engine, Handle, Stats};

use support::amqp::{self as a, Resolved, Timeline};
use support::brokers;
use support::chaos::ChaosProxy;

const HEARTBEAT: Duration = Duration::from_secs(5);

/// What one run saw.
struct Run {
    /// When publishing started.
    t0: Instant,
    done: Vec<Resolved>,
    lost: usize,
    timeline: Timeline,
    /// The engine's counters at the fault's start and end, and at the end.
    stats: [Stats; 3],
    proxy_refused: usize,
}

impl Run {
    fn failed(&self) -> Vec<&Resolved> {
        self.done.iter().filter(|r| r.outcome.is_err()).collect()
    }

    /// The first confirm of a publish on a link opened after `t`.
    fn first_confirm_on_a_new_link_after(&self, t: Instant) -> Option<Instant> {
        let (_, generation) = self.timeline.first_into(StateKind::Connected, t)?;
        self.done
            .iter()
            .filter(|r| r.outcome.as_ref().is_ok_and(|c| c.generation >= generation))
            .map(|r| r.resolved)
            .min()
    }
}

/// Publishes `messages` at `rate` per second through the proxy with the
/// defaults; `fault(on)` is called at `from` and `to` (after the start).
async fn run(
    name: &str,
    messages: u64,
    rate: u64,
    from: Duration,
    to: Duration,
    fault: impl Fn(&ChaosProxy, bool),
) -> Run {
    let queue = a::unique(name);
    let direct = a::direct().await;
    a::declare_queue(&direct, &queue).await;
    let seen = a::collect(&direct, &queue).await;
    let proxy = support::chaos::start(a::broker_addr()).await.unwrap();
    let config = AmqpConfig::new(a::proxied_uri(proxy.addr()))
        .connection_name(a::unique(name))
        .heartbeat(Heartbeat::secs(5));
    let transport = AmqpTransport::new(config.clone()).unwrap();
    transport
        .declare_queue(
            &queue,
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let engine = Engine::spawn(config.engine_config().unwrap(), transport.clone());
    let handle: Handle = engine.handle();
    let timeline = Timeline::start(&handle);
    handle.wait_for(StateKind::Connected).await;
    let publisher = Publisher::new(&engine, transport.clone(), OutboxConfig::default());
    let receipts = a::Receipts::start();

    let t0 = Instant::now();
    let producer = {
        let publisher = publisher.clone();
        let receipts = receipts.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            for n in 0..messages {
                tick.tick().await;
                let m = AmqpMessage::new("", &queue, n.to_be_bytes().to_vec());
                receipts.push(Instant::now(), publisher.publish(m).await);
            }
        })
    };
    tokio::time::sleep_until((t0 + from).into()).await;
    let at_from = handle.stats();
    fault(&proxy, true);
    tokio::time::sleep_until((t0 + to).into()).await;
    let at_to = handle.stats();
    fault(&proxy, false);
    producer.await.unwrap();

    let done = receipts
        .wait(messages as usize, Duration::from_secs(60))
        .await;
    let prefix = transport.message_id_prefix().to_owned();
    let expected: HashSet<String> = done
        .iter()
        .filter(|r| r.outcome.is_ok())
        .map(|r| format!("{prefix}-{}", r.id))
        .collect();
    a::wait_seen(&seen, Duration::from_secs(15), |s| {
        expected.iter().all(|id| s.by_id.contains_key(id))
    })
    .await;
    let lost = expected
        .iter()
        .filter(|id| !seen.lock().unwrap().by_id.contains_key(*id))
        .count();
    let end = handle.stats();
    publisher.shutdown(Duration::from_secs(5)).await;
    a::delete_queue(&direct, &queue).await;
    let _ = direct.close(200, "done".into()).await;
    Run {
        t0,
        done,
        lost,
        timeline,
        stats: [at_from, at_to, end],
        proxy_refused: proxy.refused(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_link_is_found_dead_by_the_watchdog_and_replaced_when_the_path_heals() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    let (from, to) = (Duration::from_secs(2), Duration::from_secs(22));
    let r = run("half-open", 3_000, 300, from, to, |p, on| {
        p.blackhole_swallowing(on)
    })
    .await;

    let (dead_at, reason) = r
        .timeline
        .first_out_of(StateKind::Connected, r.t0 + from)
        .expect("the link was found dead");
    let detection = dead_at - (r.t0 + from);
    let healed = r.t0 + to;
    let recovery = r
        .first_confirm_on_a_new_link_after(healed)
        .map(|c| c.saturating_duration_since(healed));
    let attempts_in_fault = r.stats[1].attempts - r.stats[0].attempts;
    let probes = r.stats[2].probes - r.stats[0].probes;
    println!(
        "half-open B: {} resolved, {} failed, {} lost; dead after {detection:?} ({reason:?}); \
         first confirm {recovery:?} after the path healed; {attempts_in_fault} attempts and \
         {} probes during the blackhole, {probes} probes in all",
        r.done.len(),
        r.failed().len(),
        r.lost,
        r.stats[1].probes - r.stats[0].probes,
    );
    assert_eq!(r.done.len(), 3_000, "every publish resolved");
    assert!(
        r.failed().is_empty(),
        "failed: {:?}",
        &r.failed()[..r.failed().len().min(3)]
    );
    assert_eq!(r.lost, 0, "confirmed but never delivered");
    // The watchdog, not TCP: within 1.5 x the heartbeat (+ 1.5 s for a loaded machine).
    assert_eq!(reason, Reason::LivenessLost);
    assert!(
        detection <= HEARTBEAT * 3 / 2 + Duration::from_millis(1_500),
        "detection took {detection:?}"
    );
    // The return was noticed by a probe: probes ran, and the new link came
    // well before the attempt that timed out in the blackhole would have
    // been followed by the schedule's next one.
    assert!(probes > 0, "no probe was sent");
    let recovery = recovery.expect("a confirm on a new link after the path healed");
    assert!(
        recovery <= Duration::from_secs(3),
        "first confirm {recovery:?} after healing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_costs_one_attempt_and_ends_within_a_probe_interval() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    let (from, to) = (Duration::from_secs(2), Duration::from_secs(12));
    let r = run("outage", 2_000, 200, from, to, |p, on| {
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
        "outage C: {} resolved, {} failed, {} lost; {attempts} attempts and {probes} probes \
         in the 10 s outage ({} connections refused at the proxy); first confirm {recovery:?} \
         after the broker was back",
        r.done.len(),
        r.failed().len(),
        r.lost,
        r.proxy_refused,
    );
    assert_eq!(r.done.len(), 2_000, "every publish resolved");
    assert!(
        r.failed().is_empty(),
        "failed: {:?}",
        &r.failed()[..r.failed().len().min(3)]
    );
    assert_eq!(r.lost, 0, "confirmed but never delivered");
    // The immediate retry, then probes only: the schedule alone makes 5.
    assert!(attempts <= 2, "{attempts} attempts during the outage");
    assert!(probes >= 10, "{probes} probes during the outage");
    let recovery = recovery.expect("a confirm on a new link after the broker was back");
    assert!(
        recovery <= Duration::from_secs(3),
        "first confirm {recovery:?} after the return"
    );
}
