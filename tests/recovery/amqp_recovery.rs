//! Scenarios B (half-open) and C (outage) of issue 11 against the real
//! broker through the chaos proxy, with the default configuration (only the
//! heartbeat set, to 5 s); `support/recovery.rs` has the schedules and the
//! checks, shared with `mqtt_recovery.rs`. Scenario A is `amqp_sever.rs`.
//! The measured figures are printed (docs/PERFORMANCE.md has them).
#![cfg(feature = "amqp")]

use crate::support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use redial::amqp::{AmqpConfig, AmqpMessage, Heartbeat};
use redial::machine::StateKind;
use redial::outbox::{OutboxConfig, Publisher};

use support::amqp::{self as a, Resolved, Timeline};
use support::brokers;
use support::recovery::{self, Figures, HALF_OPEN, OUTAGE, Scenario};

/// Publishes the scenario's messages through the proxy with the defaults,
/// with its fault on from `from` to `to`.
async fn run(s: &Scenario) -> Figures {
    let queue = a::unique("recovery");
    let direct = a::direct().await;
    a::declare_queue(&direct, &queue).await;
    let seen = a::collect(&direct, &queue).await;
    let proxy = support::chaos::start(a::broker_addr()).await.unwrap();
    let config = AmqpConfig::new(a::proxied_uri(proxy.addr()))
        .connection_name(a::unique("recovery"))
        .heartbeat(Heartbeat::secs(recovery::HEARTBEAT.as_secs() as u16));
    let (transport, engine, timeline) =
        a::engine_on_queue(&config, config.engine_config().build().unwrap(), &queue).await;
    let handle = engine.handle();
    handle.wait_for(StateKind::Connected).await;
    let publisher = Publisher::new(&engine, transport.clone(), OutboxConfig::default());
    let receipts = a::Receipts::start();

    let t0 = Instant::now();
    let producer = {
        let publisher = publisher.clone();
        let receipts = receipts.clone();
        let queue = queue.clone();
        let (messages, rate) = (s.messages, s.rate);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            for n in 0..messages {
                tick.tick().await;
                let m = AmqpMessage::new("", &queue, n.to_be_bytes().to_vec());
                receipts.push(Instant::now(), publisher.publish(m).await);
            }
        })
    };
    tokio::time::sleep_until((t0 + s.from).into()).await;
    let at_from = handle.stats();
    (s.fault)(&proxy, true);
    tokio::time::sleep_until((t0 + s.to).into()).await;
    let at_to = handle.stats();
    (s.fault)(&proxy, false);
    producer.await.unwrap();

    let done = receipts
        .wait(s.messages as usize, Duration::from_secs(60))
        .await;
    let prefix = transport.message_id_prefix().to_owned();
    let expected: HashSet<String> = done
        .iter()
        .filter(|r| r.outcome.is_ok())
        .map(|r| format!("{prefix}-{}", r.id))
        .collect();
    a::wait_seen(&seen, Duration::from_secs(15), |seen| {
        expected.iter().all(|id| seen.by_id.contains_key(id))
    })
    .await;
    let lost = expected
        .iter()
        .filter(|id| !seen.lock().unwrap().by_id.contains_key(*id))
        .count();
    publisher.shutdown(Duration::from_secs(5)).await;
    a::delete_queue(&direct, &queue).await;
    let _ = direct.close(200, "done".into()).await;

    let (fault_on, fault_off) = (t0 + s.from, t0 + s.to);
    Figures {
        adapter: "amqp",
        resolved: done.len(),
        failed: done.iter().filter(|r| r.outcome.is_err()).count(),
        lost,
        left_connected: timeline
            .first_out_of(StateKind::Connected, fault_on)
            .map(|(t, reason)| (t - fault_on, reason)),
        recovery: first_confirm_on_a_new_link_after(&timeline, &done, fault_off)
            .map(|c| c.saturating_duration_since(fault_off)),
        attempts_in_fault: at_to.attempts - at_from.attempts,
        probes_in_fault: at_to.probes - at_from.probes,
    }
}

/// The first confirm of a publish on a link that came up after `t`.
fn first_confirm_on_a_new_link_after(
    timeline: &Timeline,
    done: &[Resolved],
    t: Instant,
) -> Option<Instant> {
    let (_, generation) = timeline.first_into(StateKind::Connected, t)?;
    done.iter()
        .filter(|r| r.outcome.as_ref().is_ok_and(|c| c.generation >= generation))
        .map(|r| r.resolved)
        .min()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_link_is_found_dead_by_the_watchdog_and_replaced_when_the_path_heals() {
    if brokers::require("AMQP", brokers::amqp_available()) {
        recovery::check_half_open(&run(&HALF_OPEN).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_costs_one_attempt_and_ends_within_a_probe_interval() {
    if brokers::require("AMQP", brokers::amqp_available()) {
        recovery::check_outage(&run(&OUTAGE).await);
    }
}
