//! The outbox end to end: engine, publisher and the in-memory transport,
//! with paused time. Scenario ids refer to `docs/scenarios.md`.

use std::collections::HashMap;
use std::time::Duration;

use futures::FutureExt;
use redial::machine::{Config, ErrorKind, FailCause, Generation, StateKind};
use redial::outbox::{
    ConfirmTimeout, OutboxConfig, OverflowPolicy, PublishError, PublishErrorKind, Publisher,
    Receipt, SubmitOptions,
};
use redial::runtime::{Engine, Handle};
use redial::testing::{MemoryControl, MemoryTransport, Plan, Script};
use tokio::time::Instant;

struct Rig {
    engine: Engine<MemoryTransport>,
    publisher: Publisher<MemoryTransport>,
    control: MemoryControl,
    handle: Handle,
}

fn machine() -> redial::machine::ConfigBuilder {
    Config::builder().seed(1)
}

fn outbox(max: usize, overflow: OverflowPolicy) -> OutboxConfig {
    OutboxConfig::builder()
        .max_messages(max)
        .overflow(overflow)
        .build()
        .unwrap()
}

/// Plans go in before the engine starts, so the first open follows them.
fn rig(config: Config, outbox: OutboxConfig, plans: &[Plan]) -> Rig {
    let transport = MemoryTransport::new();
    let control = transport.control();
    control.plan(plans.iter().copied());
    let engine = Engine::spawn(config, transport.clone());
    let publisher = Publisher::new(&engine, transport, outbox);
    let handle = engine.handle();
    Rig {
        engine,
        publisher,
        control,
        handle,
    }
}

async fn wait_state(handle: &Handle, pred: impl Fn(StateKind) -> bool) {
    let mut rx = handle.watch();
    let _ = rx.wait_for(|s| pred(s.state)).await;
}

/// Lets every task that can run do so, without letting time advance.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn kind(outcome: &redial::outbox::Outcome) -> Option<PublishErrorKind> {
    outcome.as_ref().err().map(PublishError::kind)
}

fn ready(receipt: &mut Receipt) -> Option<redial::outbox::Outcome> {
    receipt.now_or_never()
}

async fn publish_all(p: &Publisher<MemoryTransport>, names: &[&str]) -> Vec<Receipt> {
    let mut out = Vec::new();
    for n in names {
        out.push(p.publish(n.to_string()).await);
    }
    out
}

fn sent_names(control: &MemoryControl) -> Vec<(Generation, String)> {
    control
        .sent()
        .into_iter()
        .map(|s| (s.generation, s.message))
        .collect()
}

// ---- S21: the buffer flushes on every route back to Connected -----------

#[tokio::test(start_paused = true)]
async fn s21_flush_after_a_new_link_in_order() {
    let r = rig(
        machine().build().unwrap(),
        OutboxConfig::default(),
        &[Plan::Succeed, Plan::SucceedAfter(Duration::from_secs(5))],
    );
    r.handle.wait_for(StateKind::Connected).await;
    let g1 = r.handle.generation();
    r.control.sever();
    wait_state(&r.handle, |s| !s.is_link_up()).await;
    let receipts = publish_all(&r.publisher, &["c1", "c2", "c3"]).await;
    settle().await;
    assert!(r.control.sent().is_empty(), "nothing is written while down");
    let mut generations = Vec::new();
    for receipt in receipts {
        generations.push(receipt.await.unwrap().generation);
    }
    let g2 = r.handle.generation();
    assert!(g2 > g1);
    assert_eq!(generations, [g2, g2, g2]);
    assert_eq!(
        sent_names(&r.control),
        [(g2, "c1".into()), (g2, "c2".into()), (g2, "c3".into())]
    );
    r.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn s21_flush_after_an_internal_resume() {
    let config = machine()
        .resume_grace(Duration::from_secs(30))
        .build()
        .unwrap();
    let r = rig(config, OutboxConfig::default(), &[]);
    r.handle.wait_for(StateKind::Connected).await;
    let g1 = r.handle.generation();
    r.control.sever();
    r.handle.wait_for(StateKind::BackingOff).await;
    let receipts = publish_all(&r.publisher, &["c1", "c2", "c3"]).await;
    settle().await;
    assert!(
        r.control.sent().is_empty(),
        "a lingering link is not written to"
    );
    r.handle.report_resumed(g1);
    for receipt in receipts {
        assert_eq!(receipt.await.unwrap().generation, g1);
    }
    assert_eq!(
        sent_names(&r.control),
        [(g1, "c1".into()), (g1, "c2".into()), (g1, "c3".into())]
    );
    assert_eq!(r.control.connect_calls(), 1);
    r.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn s21_flush_after_a_requested_reconnect() {
    let r = rig(
        machine().build().unwrap(),
        OutboxConfig::default(),
        &[Plan::Succeed, Plan::SucceedAfter(Duration::from_secs(2))],
    );
    r.handle.wait_for(StateKind::Connected).await;
    r.handle.reconnect_now().unwrap();
    r.handle.wait_for(StateKind::Connecting).await;
    let receipts = publish_all(&r.publisher, &["c1", "c2", "c3"]).await;
    let mut generations = Vec::new();
    for receipt in receipts {
        generations.push(receipt.await.unwrap().generation);
    }
    let g2 = r.handle.generation();
    assert_eq!(generations, [g2; 3]);
    assert_eq!(
        sent_names(&r.control),
        [(g2, "c1".into()), (g2, "c2".into()), (g2, "c3".into())]
    );
    r.engine.shutdown().await;
}

// ---- S25: bounded buffer, visible drops, expiry, order on mid-flush failure

fn s25_config() -> Config {
    machine()
        .connect_timeout(Duration::from_secs(600))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn s25_drop_oldest_expiry_and_mid_flush_failure() {
    let start = Instant::now();
    // A 5-minute outage: the publish timeout (60 s by default) is off here.
    let config = OutboxConfig::builder()
        .max_messages(3)
        .overflow(OverflowPolicy::DropOldest)
        .no_publish_timeout()
        .build()
        .unwrap();
    let r = rig(
        s25_config(),
        config,
        &[Plan::SucceedAfter(Duration::from_secs(310))],
    );
    r.control.script("p3", [Script::LinkLost]);
    let p = &r.publisher;
    let mut p1 = p.publish("p1".into()).await;
    let p2 = p
        .publish_with(
            "p2".into(),
            SubmitOptions::new().ttl(Duration::from_secs(300)),
        )
        .await;
    let p3 = p.publish("p3".into()).await;
    let p4 = p.publish("p4".into()).await;
    // The overflow dropped the oldest, visibly and at once.
    assert_eq!(
        kind(&ready(&mut p1).unwrap()),
        Some(PublishErrorKind::Dropped)
    );
    assert_eq!(p.stats().dropped, 1);

    assert_eq!(kind(&p2.await), Some(PublishErrorKind::Expired));
    assert_eq!(start.elapsed().as_secs(), 300, "expired while disconnected");

    let c3 = p3.await.unwrap();
    let c4 = p4.await.unwrap();
    let first_link = Generation(1);
    assert!(c3.generation > first_link, "p3 failed on the first link");
    assert_eq!(c3.generation, c4.generation);
    // p3's write failed on link 1: back to the front, then p3, p4 on the next link.
    assert_eq!(r.control.send_attempts(), 3);
    assert_eq!(
        sent_names(&r.control),
        [(c3.generation, "p3".into()), (c3.generation, "p4".into())]
    );
    let s = p.stats();
    assert_eq!(
        (s.submitted, s.confirmed, s.dropped, s.expired),
        (4, 2, 1, 1)
    );
    assert_eq!(s.failed.total(), 0);
    assert_eq!((s.requeued, s.replayed), (1, 1));
    assert!(s.is_balanced());
    r.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn s25_reject_new_alternative() {
    let r = rig(
        s25_config(),
        outbox(3, OverflowPolicy::RejectNew),
        &[Plan::SucceedAfter(Duration::from_secs(10))],
    );
    let receipts = publish_all(&r.publisher, &["p1", "p2", "p3"]).await;
    let mut p4 = r.publisher.publish("p4".into()).await;
    assert_eq!(
        kind(&ready(&mut p4).unwrap()),
        Some(PublishErrorKind::Overflow),
        "a full buffer answers at once"
    );
    for receipt in receipts {
        receipt.await.unwrap();
    }
    let names: Vec<_> = sent_names(&r.control).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["p1", "p2", "p3"]);
    let s = r.publisher.stats();
    assert_eq!((s.submitted, s.confirmed, s.failed.overflow), (4, 3, 1));
    r.engine.shutdown().await;
}

// ---- S27: publishes during the reconnect window are not lost --------------

#[tokio::test(start_paused = true)]
async fn s27_reconnect_window_loses_nothing() {
    let r = rig(machine().build().unwrap(), OutboxConfig::default(), &[]);
    r.handle.wait_for(StateKind::Connected).await;
    let g1 = r.handle.generation();
    // A stable link, so the loss starts a fresh outage (immediate retry).
    tokio::time::sleep(Duration::from_secs(11)).await;
    r.control.script("p0", [Script::NeverConfirm]);
    let p0 = r.publisher.publish("p0".into()).await;
    r.control.wait_sent(1).await;

    r.control
        .plan([Plan::SucceedAfter(Duration::from_secs(12))]);
    let t0 = Instant::now();
    r.control.sever();
    let mut threads = Vec::new();
    for k in 0..4u64 {
        let publisher = r.publisher.clone();
        threads.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in (1..=100u64).filter(|i| i % 4 == k) {
                tokio::time::sleep_until(t0 + Duration::from_millis(110 * i)).await;
                mine.push((i, publisher.publish(format!("p{i}")).await));
            }
            mine
        }));
    }
    let mut receipts = Vec::new();
    for t in threads {
        receipts.push(t.await.unwrap());
    }
    let g2 = r.handle.generation();
    assert!(g2 > g1);
    for mine in receipts {
        for (i, receipt) in mine {
            let c = receipt.await.unwrap_or_else(|e| panic!("p{i}: {e}"));
            assert_eq!(c.generation, g2, "p{i} confirmed on the new link");
        }
    }
    match p0.await {
        Ok(c) => assert_eq!(c.generation, g2, "p0 is only confirmed by its replay"),
        Err(e) => panic!("p0 should have been replayed, got {e}"),
    }
    let sent = r.control.sent();
    assert!(t0.elapsed() >= Duration::from_secs(12));
    // Nothing was written during the window; on the new link, each message once.
    let on_g2: Vec<_> = sent.iter().filter(|s| s.generation == g2).collect();
    assert_eq!(on_g2.len(), 101);
    let mut seen = HashMap::new();
    for (pos, s) in on_g2.iter().enumerate() {
        assert!(seen.insert(s.message.clone(), pos).is_none(), "{s:?} twice");
    }
    // p0 first (replayed), then each thread's messages in its order.
    assert_eq!(on_g2[0].message, "p0");
    for k in 0..4u64 {
        let positions: Vec<_> = (1..=100u64)
            .filter(|i| i % 4 == k)
            .map(|i| seen[&format!("p{i}")])
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "thread {k}");
    }
    let s = r.publisher.stats();
    assert_eq!(s.confirmed + s.failed.total(), 101);
    assert_eq!(s.submitted, 101);
    assert_eq!(r.control.connect_calls(), 2);
    r.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn s27_full_buffer_answers_at_once_not_a_hang() {
    let r = rig(
        machine().build().unwrap(),
        outbox(5, OverflowPolicy::RejectNew),
        &[Plan::Hang],
    );
    let _kept = publish_all(&r.publisher, &["a", "b", "c", "d", "e"]).await;
    let mut f = r.publisher.try_publish("f".into(), SubmitOptions::new());
    assert_eq!(
        kind(&ready(&mut f).unwrap()),
        Some(PublishErrorKind::Overflow)
    );
    r.engine.shutdown().await;
}

// ---- S35: a publish during backoff triggers no attempt -------------------

#[tokio::test(start_paused = true)]
async fn s35_publish_during_backoff_is_buffered_not_an_attempt() {
    let r = rig(machine().build().unwrap(), OutboxConfig::default(), &[]);
    r.handle.wait_for(StateKind::Connected).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    r.control.plan([Plan::Fail(ErrorKind::Transient)]);
    r.control.sever();
    r.handle.wait_for(StateKind::BackingOff).await;
    let calls = r.control.connect_calls();
    let receipts = publish_all(&r.publisher, &["a", "b", "c"]).await;
    settle().await;
    assert_eq!(
        r.control.connect_calls(),
        calls,
        "publishing opened nothing"
    );
    assert_eq!(r.handle.state(), StateKind::BackingOff);
    assert!(r.control.sent().is_empty());
    for receipt in receipts {
        let c = receipt.await.unwrap();
        assert_eq!(c.generation, r.handle.generation());
    }
    assert_eq!(
        r.control.connect_calls(),
        calls + 1,
        "only the scheduled attempt"
    );
    r.engine.shutdown().await;
}

// ---- overflow policies ----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn overflow_wait_with_deadline_gives_overflow_after_it() {
    let r = rig(
        machine().build().unwrap(),
        outbox(
            2,
            OverflowPolicy::Wait {
                deadline: Some(Duration::from_secs(5)),
            },
        ),
        &[Plan::Hang],
    );
    let _kept = publish_all(&r.publisher, &["a", "b"]).await;
    let start = Instant::now();
    let c = r.publisher.publish("c".into()).await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(kind(&c.await), Some(PublishErrorKind::Overflow));
    let s = r.publisher.stats();
    assert_eq!((s.submitted, s.failed.overflow, s.queued), (3, 1, 2));
    r.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn overflow_wait_is_admitted_when_room_frees() {
    let r = rig(
        machine().build().unwrap(),
        outbox(1, OverflowPolicy::Wait { deadline: None }),
        &[Plan::SucceedAfter(Duration::from_secs(3))],
    );
    let start = Instant::now();
    let a = r.publisher.publish("a".into()).await;
    let b = r.publisher.publish("b".into()).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(3),
        "b waited for a's confirm"
    );
    a.await.unwrap();
    b.await.unwrap();
    assert_eq!(r.publisher.stats().confirmed, 2);
    r.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn overflow_drop_oldest_resolves_the_victim() {
    let r = rig(
        machine().build().unwrap(),
        outbox(2, OverflowPolicy::DropOldest),
        &[Plan::SucceedAfter(Duration::from_secs(1))],
    );
    let mut receipts = publish_all(&r.publisher, &["a", "b", "c"]).await;
    assert_eq!(
        kind(&ready(&mut receipts[0]).unwrap()),
        Some(PublishErrorKind::Dropped)
    );
    receipts.remove(0);
    for receipt in receipts {
        receipt.await.unwrap();
    }
    let names: Vec<_> = sent_names(&r.control).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["b", "c"]);
    r.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn byte_capacity_uses_the_adapters_sizes() {
    let config = OutboxConfig::builder()
        .max_bytes(10)
        .overflow(OverflowPolicy::RejectNew)
        .build()
        .unwrap();
    let r = rig(machine().build().unwrap(), config, &[Plan::Hang]);
    let _a = r.publisher.publish("12345678".into()).await;
    let mut b = r.publisher.publish("abc".into()).await;
    assert_eq!(
        kind(&ready(&mut b).unwrap()),
        Some(PublishErrorKind::Overflow)
    );
    assert_eq!(r.publisher.stats().pending_bytes, 8);
    r.engine.shutdown().await;
}

/// The default outbox absorbs an outage that outlasts its capacity at the
/// publishing rate: once full, callers wait for room instead of failing,
/// nothing beyond the capacity is held, and every publish is confirmed
/// after the link comes back.
#[tokio::test(start_paused = true)]
async fn the_default_outbox_slows_publishers_down_instead_of_failing_them() {
    const RATE_PER_S: u64 = 1_000;
    const OUTAGE: Duration = Duration::from_secs(15);
    let config = OutboxConfig::default();
    let capacity = config.max_messages() as u64;
    let total = RATE_PER_S * OUTAGE.as_secs() + 1_000;
    assert!(
        total > capacity + 1_000,
        "the outage must outlast the capacity"
    );
    let r = rig(machine().build().unwrap(), config, &[Plan::Succeed]);
    wait_state(&r.handle, |s| s == StateKind::Connected).await;
    r.control.set_default(Plan::Fail(ErrorKind::Transient));
    r.control.sever();
    let control = r.control.clone();
    let restore = tokio::spawn(async move {
        tokio::time::sleep(OUTAGE).await;
        control.set_default(Plan::Succeed);
    });
    let start = tokio::time::Instant::now();
    let mut receipts = Vec::new();
    let mut most_pending = 0;
    let mut waited = 0;
    for i in 0..total {
        // A fixed-rate publisher that catches up when it falls behind.
        tokio::time::sleep_until(start + Duration::from_micros(i * 1_000_000 / RATE_PER_S)).await;
        let called = tokio::time::Instant::now();
        receipts.push(r.publisher.publish(format!("m{i}")).await);
        if called.elapsed() > Duration::ZERO {
            waited += 1;
        }
        let s = r.publisher.stats();
        most_pending = most_pending.max(s.queued + s.in_flight);
    }
    for receipt in receipts {
        receipt.await.expect("every publish is confirmed");
    }
    restore.await.unwrap();
    let s = r.publisher.stats();
    assert_eq!(s.confirmed, total, "{s:?}");
    assert_eq!(s.failed.total(), 0, "{s:?}");
    assert!(most_pending <= capacity, "held {most_pending} > {capacity}");
    assert!(
        waited > 0,
        "no publisher ever waited: the outage did not fill the outbox"
    );
    r.engine.shutdown().await;
}

// ---- S34/S38: the engine gives up, and recovers ---------------------------

#[tokio::test(start_paused = true)]
async fn gave_up_fails_pending_and_new_publishes_fast_then_recovers() {
    let r = rig(
        machine().build().unwrap(),
        OutboxConfig::default(),
        &[Plan::FailAfter(
            Duration::from_secs(1),
            ErrorKind::Permanent,
        )],
    );
    let pending = r.publisher.publish("before".into()).await;
    match pending.await {
        Err(PublishError::GaveUp { cause, error }) => {
            assert_eq!(cause, FailCause::Permanent);
            assert!(error.is_some(), "the transport's error comes along");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.handle.state(), StateKind::Failed);
    let mut during = r.publisher.publish("during".into()).await;
    assert_eq!(
        kind(&ready(&mut during).unwrap()),
        Some(PublishErrorKind::GaveUp)
    );
    r.handle.reconnect_now().unwrap();
    r.handle.wait_for(StateKind::Connected).await;
    let after = r.publisher.publish("after".into()).await;
    after.await.unwrap();
    let s = r.publisher.stats();
    assert_eq!((s.failed.gave_up, s.confirmed), (2, 1));
    r.engine.shutdown().await;
}

// ---- shutdown -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn shutdown_drains_then_resolves_the_rest() {
    let r = rig(machine().build().unwrap(), OutboxConfig::default(), &[]);
    r.handle.wait_for(StateKind::Connected).await;
    r.control
        .script("slow", [Script::ConfirmAfter(Duration::from_secs(2))]);
    r.control.script("stuck", [Script::NeverConfirm]);
    let slow = r.publisher.publish("slow".into()).await;
    let stuck = r.publisher.publish("stuck".into()).await;
    r.control.wait_sent(2).await;
    let start = Instant::now();
    let stats = r.publisher.shutdown(Duration::from_secs(5)).await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    slow.await.unwrap();
    assert_eq!(kind(&stuck.await), Some(PublishErrorKind::ShutDown));
    assert_eq!((stats.confirmed, stats.failed.shut_down), (1, 1));
    // Only the publisher was drained: the engine, which others may share, runs on.
    assert_eq!(r.handle.state(), StateKind::Connected);
    let mut late = r.publisher.publish("late".into()).await;
    assert_eq!(
        kind(&ready(&mut late).unwrap()),
        Some(PublishErrorKind::ShutDown)
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_as_soon_as_everything_is_confirmed() {
    let r = rig(machine().build().unwrap(), OutboxConfig::default(), &[]);
    r.handle.wait_for(StateKind::Connected).await;
    r.control
        .script("slow", [Script::ConfirmAfter(Duration::from_secs(2))]);
    let slow = r.publisher.publish("slow".into()).await;
    let start = Instant::now();
    r.publisher.shutdown(Duration::from_secs(60)).await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    slow.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn engine_shutdown_resolves_every_pending_receipt() {
    let r = rig(
        machine().build().unwrap(),
        OutboxConfig::default(),
        &[Plan::Hang],
    );
    let receipts = publish_all(&r.publisher, &["a", "b"]).await;
    r.engine.shutdown().await;
    for receipt in receipts {
        assert_eq!(kind(&receipt.await), Some(PublishErrorKind::ShutDown));
    }
}

// ---- link-level answers ---------------------------------------------------

#[tokio::test(start_paused = true)]
async fn broker_refusals_are_typed_and_the_flush_goes_on() {
    let r = rig(machine().build().unwrap(), OutboxConfig::default(), &[]);
    r.control.script("n", [Script::Nack]);
    r.control.script("u", [Script::Unroutable]);
    r.control.script("r", [Script::Reject("too large".into())]);
    let receipts = publish_all(&r.publisher, &["n", "u", "r", "ok"]).await;
    let mut kinds = Vec::new();
    for receipt in receipts {
        kinds.push(kind(&receipt.await));
    }
    assert_eq!(
        kinds,
        [
            Some(PublishErrorKind::Nacked),
            Some(PublishErrorKind::Unroutable),
            Some(PublishErrorKind::Rejected),
            None
        ]
    );
    let s = r.publisher.stats();
    assert_eq!(
        (s.failed.nacked, s.failed.unroutable, s.failed.rejected),
        (1, 1, 1)
    );
    assert_eq!(
        r.control.connect_calls(),
        1,
        "refusals do not replace the link"
    );
    r.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn s22_timeout_replays_on_a_replacement_link() {
    let r = rig(machine().build().unwrap(), OutboxConfig::default(), &[]);
    r.handle.wait_for(StateKind::Connected).await;
    let g1 = r.handle.generation();
    r.control.script("a", [Script::Timeout]);
    let a = r.publisher.publish("a".into()).await;
    let c = a.await.unwrap();
    assert!(c.generation > g1, "replayed on a new link");
    assert_eq!(
        r.control.connect_calls(),
        2,
        "the suspect link was replaced"
    );
    r.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_confirm_lost_with_its_link_is_replayed() {
    let r = rig(machine().build().unwrap(), OutboxConfig::default(), &[]);
    r.handle.wait_for(StateKind::Connected).await;
    let g1 = r.handle.generation();
    r.control.script("a", [Script::ConfirmLinkLost]);
    let receipts = publish_all(&r.publisher, &["a", "b"]).await;
    let mut generations = Vec::new();
    for receipt in receipts {
        generations.push(receipt.await.unwrap().generation);
    }
    assert!(generations[0] > g1);
    let names: Vec<_> = sent_names(&r.control)
        .into_iter()
        .filter(|(g, _)| *g > g1)
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("a"), "replay first");
    r.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn in_flight_window_bounds_unconfirmed_writes() {
    let config = OutboxConfig::builder().max_in_flight(2).build().unwrap();
    let r = rig(machine().build().unwrap(), config, &[]);
    r.handle.wait_for(StateKind::Connected).await;
    r.control.set_default_script(Script::NeverConfirm);
    let _receipts = publish_all(&r.publisher, &["a", "b", "c"]).await;
    r.control.wait_sent(2).await;
    settle().await;
    assert_eq!(r.control.sent().len(), 2);
    let s = r.publisher.stats();
    assert_eq!((s.in_flight, s.queued), (2, 1));
    r.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn nothing_is_written_while_the_broker_blocks_publishing() {
    let r = rig(machine().build().unwrap(), OutboxConfig::default(), &[]);
    r.handle.wait_for(StateKind::Connected).await;
    let g = r.handle.generation();
    r.handle.report_blocked(g);
    r.handle.wait_for(StateKind::Blocked).await;
    let a = r.publisher.publish("a".into()).await;
    settle().await;
    assert!(r.control.sent().is_empty());
    r.handle.report_unblocked(g);
    assert_eq!(a.await.unwrap().generation, g);
    r.engine.shutdown().await;
}

// ---- receipts -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn cancel_removes_a_queued_message_only() {
    let r = rig(
        machine().build().unwrap(),
        OutboxConfig::default(),
        &[Plan::SucceedAfter(Duration::from_secs(1))],
    );
    let a = r.publisher.publish("a".into()).await;
    let b = r.publisher.publish("b".into()).await;
    assert!(a.cancel());
    assert!(!a.cancel(), "only once");
    assert_eq!(kind(&a.await), Some(PublishErrorKind::Cancelled));
    b.await.unwrap();
    r.control.set_default_script(Script::NeverConfirm);
    let c = r.publisher.publish("c".into()).await;
    r.control.wait_sent(2).await;
    assert!(!c.cancel(), "a message in flight keeps its course");
    let names: Vec<_> = sent_names(&r.control).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["b", "c"]);
    r.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn dropping_a_receipt_does_not_cancel_the_publish() {
    let r = rig(
        machine().build().unwrap(),
        OutboxConfig::default(),
        &[Plan::SucceedAfter(Duration::from_secs(1))],
    );
    drop(r.publisher.publish("a".into()).await);
    r.control.wait_sent(1).await;
    while r.publisher.stats().confirmed == 0 {
        tokio::task::yield_now().await;
    }
    assert!(r.publisher.stats().is_balanced());
    r.engine.shutdown().await;
}

// ---- threads: real concurrency, real time ---------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s27_threads_publish_while_the_link_flaps() {
    let backoff = redial::backoff::Backoff::builder()
        .initial(Duration::from_millis(1))
        .multiplier(2.0)
        .max(Duration::from_millis(5))
        .jitter(redial::backoff::Jitter::None)
        .build()
        .unwrap();
    let config = machine().backoff(backoff).build().unwrap();
    let r = rig(config, OutboxConfig::default(), &[]);
    r.handle.wait_for(StateKind::Connected).await;
    let threads: Vec<_> = (0..4)
        .map(|k| {
            let p = r.publisher.clone();
            std::thread::spawn(move || {
                (0..100)
                    .map(|i| {
                        if i % 10 == 0 {
                            std::thread::yield_now();
                        }
                        p.try_publish(format!("t{k}-{i}"), SubmitOptions::new())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for _ in 0..5 {
        r.control.sever();
        tokio::task::yield_now().await;
    }
    let mut all = Vec::new();
    for t in threads {
        all.push(t.join().unwrap());
    }
    for (k, receipts) in all.into_iter().enumerate() {
        for (i, receipt) in receipts.into_iter().enumerate() {
            let outcome = tokio::time::timeout(Duration::from_secs(30), receipt)
                .await
                .expect("every receipt resolves");
            assert!(outcome.is_ok(), "t{k}-{i}: {outcome:?}");
        }
    }
    // Per link, writes follow submission order (ids only grow).
    let sent = r.control.sent();
    let mut last: HashMap<Generation, u64> = HashMap::new();
    for s in &sent {
        let prev = last.insert(s.generation, s.id.0).unwrap_or(0);
        assert!(s.id.0 > prev, "{s:?} after id {prev} on the same link");
    }
    let stats = r.publisher.stats();
    assert_eq!((stats.submitted, stats.confirmed), (400, 400));
    r.engine.shutdown().await;
}

// ---- channel errors and missing confirms ----------------------------------

fn no_exchange(after: Duration) -> Script {
    Script::CloseChannel {
        code: 404,
        text: "NOT_FOUND - no exchange 'missing' in vhost '/'".into(),
        after,
    }
}

/// One bad publish among valid ones whose confirms take a while (so several
/// are unconfirmed when the channel closes): only the culprit is refused,
/// with the broker's own reason; every other message is confirmed on the
/// same link; the link is never replaced; writes on the link never go
/// backwards except for the isolated replays.
#[tokio::test(start_paused = true)]
async fn a_channel_close_refuses_only_its_culprit_and_keeps_the_link() {
    let r = rig(machine().build().unwrap(), OutboxConfig::default(), &[]);
    r.handle.wait_for(StateKind::Connected).await;
    let g = r.handle.generation();
    r.control
        .set_default_script(Script::ConfirmAfter(Duration::from_millis(20)));
    // The culprit closes the channel on each of its writes (a missing exchange).
    r.control
        .script("m07", (0..3).map(|_| no_exchange(Duration::from_millis(5))));
    r.control
        .script("m15", (0..3).map(|_| no_exchange(Duration::from_millis(5))));
    let names: Vec<String> = (0..30).map(|i| format!("m{i:02}")).collect();
    let mut receipts = Vec::new();
    for n in &names {
        receipts.push(r.publisher.publish(n.clone()).await);
    }
    for (n, receipt) in names.iter().zip(receipts) {
        let outcome = receipt.await;
        if n == "m07" || n == "m15" {
            match outcome {
                Err(PublishError::Rejected(why)) => assert!(why.contains("404"), "{why}"),
                other => panic!("{n}: expected rejected, got {other:?}"),
            }
        } else {
            assert_eq!(outcome.map(|c| c.generation).ok(), Some(g), "{n}");
        }
    }
    assert_eq!(r.control.connect_calls(), 1, "the link was kept");
    assert_eq!(r.handle.stats().outages, 0);
    // m07's close catches all 30 (m08 and later were discarded by the
    // closing channel); then each culprit closes the channel alone.
    assert_eq!(r.control.channel_closes(), 3);
    let s = r.publisher.stats();
    assert_eq!(
        (s.confirmed, s.failed.rejected, s.failed.total()),
        (28, 2, 2)
    );
    assert_eq!(s.channel_closes, 1, "{s:?}");
    assert_eq!(
        s.replayed, 30,
        "every message caught by the close went again, once"
    );
    r.engine.shutdown().await;
}

/// A write that finds the channel closing goes back without blame.
#[tokio::test(start_paused = true)]
async fn a_message_not_written_is_sent_again_without_blame() {
    let r = rig(machine().build().unwrap(), OutboxConfig::default(), &[]);
    r.handle.wait_for(StateKind::Connected).await;
    let g = r.handle.generation();
    r.control
        .script("a", [Script::NotWritten, Script::NotWritten]);
    let a = r.publisher.publish("a".into()).await;
    assert_eq!(a.await.unwrap().generation, g);
    assert_eq!(r.control.send_attempts(), 3);
    assert_eq!(r.control.connect_calls(), 1);
    assert_eq!(r.publisher.stats().failed.total(), 0);
    r.engine.shutdown().await;
}

/// A link whose heartbeats flow but which never confirms is replaced
/// within the default confirm timeout (2 x heartbeat, at least 5 s), and
/// the message is confirmed on the next link.
#[tokio::test(start_paused = true)]
async fn a_missing_confirm_replaces_the_link_within_the_confirm_timeout() {
    let transport = MemoryTransport::with_heartbeat(Duration::from_secs(1));
    let control = transport.control();
    let engine = Engine::spawn(
        machine()
            .liveness_timeout(Duration::from_secs(3))
            .build()
            .unwrap(),
        transport.clone(),
    );
    let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
    let handle = engine.handle();
    handle.wait_for(StateKind::Connected).await;
    let g1 = handle.generation();
    control.script("a", [Script::NeverConfirm]);
    let start = Instant::now();
    let a = publisher.publish("a".into()).await;
    let confirmed = a.await.unwrap();
    let took = start.elapsed();
    assert!(confirmed.generation > g1, "confirmed on a new link");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(7),
        "replaced after the 5 s confirm timeout, took {took:?}"
    );
    assert_eq!(control.connect_calls(), 2);
    assert_eq!(publisher.stats().replayed, 1);
    engine.shutdown().await;
}

/// Time while the broker blocks publishing does not count toward the
/// confirm timeout: flow control is not a broken link.
#[tokio::test(start_paused = true)]
async fn blocked_time_does_not_count_toward_the_confirm_timeout() {
    let config = OutboxConfig::builder()
        .confirm_timeout(ConfirmTimeout::After(Duration::from_secs(5)))
        .build()
        .unwrap();
    let r = rig(machine().build().unwrap(), config, &[]);
    r.handle.wait_for(StateKind::Connected).await;
    let g1 = r.handle.generation();
    r.control.script("a", [Script::NeverConfirm]);
    let start = Instant::now();
    let mut a = r.publisher.publish("a".into()).await;
    r.control.wait_sent(1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.handle.report_blocked(g1);
    r.handle.wait_for(StateKind::Blocked).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(ready(&mut a).is_none());
    assert_eq!(r.control.connect_calls(), 1, "not replaced while blocked");
    r.handle.report_unblocked(g1);
    let confirmed = a.await.unwrap();
    let took = start.elapsed();
    assert!(confirmed.generation > g1);
    assert!(
        took >= Duration::from_secs(25) && took < Duration::from_secs(26),
        "1 s before and 4 s after the block, took {took:?}"
    );
    r.engine.shutdown().await;
}

/// By default no publish waits forever: a link that never comes up
/// resolves every publish with `Timeout` after 60 s.
#[tokio::test(start_paused = true)]
async fn the_default_publish_timeout_bounds_a_publish_during_an_outage() {
    let r = rig(machine().build().unwrap(), OutboxConfig::default(), &[]);
    r.control.set_default(Plan::Fail(ErrorKind::Transient));
    let start = Instant::now();
    let a = r.publisher.publish("a".into()).await;
    assert_eq!(kind(&a.await), Some(PublishErrorKind::Timeout));
    assert_eq!(start.elapsed(), Duration::from_secs(60));
    assert_eq!(r.publisher.stats().failed.timeout, 1);
    r.engine.shutdown().await;
}

/// The longest durations configuration accepts never panic: a `Wait`
/// deadline and a drain timeout of `Duration::MAX`.
#[tokio::test(start_paused = true)]
async fn maximal_durations_do_not_panic() {
    let config = OutboxConfig::builder()
        .max_messages(1)
        .overflow(OverflowPolicy::Wait {
            deadline: Some(Duration::MAX),
        })
        .build()
        .unwrap();
    let r = rig(machine().build().unwrap(), config, &[]);
    r.control.set_default(Plan::Fail(ErrorKind::Transient));
    let long = SubmitOptions::new().publish_timeout(Duration::from_secs(120));
    let _a = r.publisher.publish_with("a".into(), long).await;
    let start = Instant::now();
    // Full: waits for room, at most the publish timeout.
    let b = r.publisher.publish("b".into()).await;
    assert_eq!(kind(&b.await), Some(PublishErrorKind::Overflow));
    assert_eq!(start.elapsed(), Duration::from_secs(60));
    let stats = r.publisher.shutdown(Duration::MAX).await;
    assert_eq!(stats.pending(), 0);
}
