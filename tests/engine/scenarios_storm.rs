//! Storm scenarios S01-S09 and S43 of `docs/scenarios.md`, on the engine with the
//! in-memory transport.
//!
//! Mapping onto redial: an SDK's interrupt callback is `report_lost(gen)`,
//! its resume callback `report_resumed(gen)`; a "start-step queued to L" is
//! a report sitting in the handle's mailbox until the driver takes it; a
//! "loop" is the driver reconnecting (`Connecting`/`BackingOff`), and
//! loops_started is the number of times the state left `Connected` for it.
//! Unless a test says otherwise time is paused, so the driver only runs when
//! the test awaits: everything reported before an `.await` is one batch.

use crate::engine;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use engine::*;
use redial::backoff::{Backoff, Jitter};
use redial::machine::{ErrorKind, FailCause, Generation, Machine, Reason, StateKind};
use redial::runtime::Report;
use redial::testing::{LogEntry, Plan};
use tokio::time::Instant;

use ErrorKind::{Permanent, Transient};
use StateKind::{BackingOff, Connected, Connecting, Failed};

/// S01: an interrupt about a link that is not the live one (a late or
/// early report) while connected schedules nothing.
#[tokio::test(start_paused = true)]
async fn s01_interrupt_while_connected_is_a_no_op() {
    let mut rig = Rig::connected(config(), Probe::memory()).await;
    // Replace the first link so that there is an old generation to report about.
    rig.handle.reconnect_now().unwrap();
    connected_on(&rig.handle, Generation(2)).await;
    idle().await;
    rig.events.clear();
    let before = rig.handle.stats();
    let (connects, closes) = (rig.control.connect_calls(), rig.control.close_calls());

    for stale in [Generation(1), Generation(3)] {
        assert_eq!(rig.handle.report_lost(stale, Transient), Report::Stale);
    }
    // Rejected at the handle: the driver was not even woken.
    let after = rig.handle.stats();
    assert_eq!(after.wakeups, before.wakeups);
    assert_eq!(after.stale_reports, before.stale_reports + 2);

    tokio::time::sleep(10 * DMAX).await;
    assert_eq!(rig.control.connect_calls(), connects);
    assert_eq!(rig.control.close_calls(), closes);
    assert_eq!(rig.handle.state(), Connected);
    assert_eq!(rig.generation(), Generation(2));
    assert!(rig.events.drain().is_empty(), "{:?}", rig.events.drain());
}

/// S02: one genuine interrupt schedules exactly one reconnect, whose first
/// attempt starts at once (immediate first retry after a stable link).
#[tokio::test(start_paused = true)]
async fn s02_interrupt_on_the_live_link_schedules_exactly_one_attempt() {
    let probe = Probe::memory();
    probe.control().plan([Plan::Succeed, Plan::Hang]);
    let mut rig = Rig::connected(config(), probe).await;
    tokio::time::sleep(STABLE).await;
    rig.events.clear();
    let wakeups = rig.handle.stats().wakeups;

    assert_eq!(
        rig.handle.report_lost(Generation(1), Transient),
        Report::Queued
    );
    assert_eq!(rig.handle.stats().wakeups, wakeups + 1);
    wait_connect_calls(&rig.control, 2).await;
    idle().await;

    assert_eq!(
        rig.events.states(),
        [(Connected, Connecting, Reason::LinkLost)]
    );
    assert_eq!(rig.events.attempts(), [(Generation(2), 1)]);
    assert!(rig.handle.is_reconnecting());
    assert_eq!(rig.handle.snapshot().attempt, 1);
    assert_eq!(rig.probe.in_flight(), 1);
}

/// S03: a report is judged when the driver handles it, not only when it is
/// queued. The loss of link 1 passes the handle's check (1 is current), but
/// the application replaces the link before the driver runs: by the time
/// the machine sees the loss, link 1 is retired and the report is dropped.
#[tokio::test(start_paused = true)]
async fn s03_queued_report_is_rechecked_when_the_driver_handles_it() {
    let mut rig = Rig::connected(config(), Probe::memory()).await;
    rig.events.clear();

    assert_eq!(
        rig.handle.report_lost(Generation(1), Transient),
        Report::Queued
    );
    rig.handle.reconnect_now().unwrap();
    connected_on(&rig.handle, Generation(2)).await;
    tokio::time::sleep(10 * DMAX).await;

    assert_eq!(
        rig.handle.stats().stale_reports,
        1,
        "dropped by the machine"
    );
    assert_eq!(rig.events.attempts(), [(Generation(2), 1)]);
    assert_eq!(
        rig.events.states(),
        [
            (Connected, Connecting, Reason::ReconnectRequested),
            (Connecting, Connected, Reason::AttemptSucceeded),
        ]
    );
    assert_eq!(rig.control.connect_calls(), 2);
    assert_eq!(rig.control.close_calls(), 1);
    assert_eq!(rig.generation(), Generation(2));
}

/// S04: a loss starts one live reconnect, whose first attempt runs at the
/// first scheduled time t1 (here the first backoff delay, with the
/// immediate first retry turned off so that t1 is a drawn delay).
#[tokio::test(start_paused = true)]
async fn s04_loss_starts_one_live_loop_first_attempt_at_t1() {
    let cfg = builder().immediate_first_retry(false).build().unwrap();
    let mut rig = Rig::connected(cfg, Probe::memory()).await;
    tokio::time::sleep(STABLE).await;
    rig.events.clear();
    let mut schedule = Schedule::default_policy();
    let t1 = schedule.next();

    let lost_at = Instant::now();
    rig.handle.report_lost(Generation(1), Transient);
    let s = wait_until(&rig.handle, |s| s.state == BackingOff).await;
    assert!(rig.handle.is_reconnecting(), "the loop is live");
    assert_eq!(s.attempt, 0, "no attempt made yet");
    assert_eq!(rig.control.connect_calls(), 1);

    connected_on(&rig.handle, Generation(2)).await;
    let opens = rig.probe.opens();
    assert_eq!(opens.len(), 2);
    assert_eq!(opens[1].at, lost_at + t1);
    assert_eq!(opens[1].attempt, 1);
    assert_eq!(rig.events.attempts(), [(Generation(2), 1)]);
    let loops = rig
        .events
        .states()
        .iter()
        .filter(|(from, _, _)| *from == Connected)
        .count();
    assert_eq!(loops, 1);
}

#[derive(Debug, Clone, Copy)]
enum S05Order {
    /// Interrupt and resume both reach the driver in one batch.
    QueuedTogether,
    /// The driver handles the interrupt before the resume arrives.
    LossHandledFirst,
}

/// S05, the core storm race: interrupt, then resume, then the queued
/// interrupt is handled. With a resume grace (the setting for SDKs that
/// reconnect underneath) neither order opens or closes anything, and the
/// link stays the same generation. Without a grace, the batched pair is a
/// resume too; a loss handled alone is acted on (nothing could resume it).
#[tokio::test(start_paused = true)]
async fn s05_stale_interrupt_after_resume_does_not_reconnect() {
    let grace = builder().resume_grace(secs(5)).build().unwrap();
    for (cfg, order) in [
        (grace.clone(), S05Order::QueuedTogether),
        (grace, S05Order::LossHandledFirst),
        (config(), S05Order::QueuedTogether),
    ] {
        let mut rig = Rig::connected(cfg, Probe::memory()).await;
        tokio::time::sleep(STABLE).await;
        rig.events.clear();
        let before = rig.handle.snapshot();

        assert_eq!(
            rig.handle.report_lost(Generation(1), Transient),
            Report::Queued
        );
        if let S05Order::LossHandledFirst = order {
            wait_until(&rig.handle, |s| s.state == BackingOff).await;
        }
        assert_eq!(rig.handle.report_resumed(Generation(1)), Report::Queued);
        connected_on(&rig.handle, Generation(1)).await;
        tokio::time::sleep(10 * DMAX).await;

        assert_eq!(rig.control.connect_calls(), 1, "{order:?}");
        assert_eq!(rig.control.close_calls(), 0, "{order:?}");
        assert_eq!(rig.generation(), Generation(1), "{order:?}");
        assert_eq!(rig.handle.state(), Connected, "{order:?}");
        assert!(rig.events.attempts().is_empty(), "{order:?}");
        let after = rig.handle.snapshot();
        match order {
            S05Order::QueuedTogether => {
                assert!(rig.events.states().is_empty(), "{order:?}");
                assert_eq!(after.attempt, before.attempt);
            }
            S05Order::LossHandledFirst => {
                assert_eq!(
                    rig.events.states(),
                    [
                        (Connected, BackingOff, Reason::LinkLost),
                        (BackingOff, Connected, Reason::LinkResumed),
                    ]
                );
                // A stable link's loss opened a fresh outage whose only attempt
                // is the transport's own reconnect (spec: a resume counts as one).
                assert_eq!(after.attempt, 1);
            }
        }
    }
}

/// S06: three rapid interrupts start exactly one reconnect; the extra two
/// are merged in O(1) without waking the driver again, and the attempts of
/// that reconnect run 1, 2, 3 on schedule.
#[tokio::test(start_paused = true)]
async fn s06_three_rapid_interrupts_start_exactly_one_loop() {
    let probe = Probe::memory();
    probe
        .control()
        .plan([Plan::Succeed, Plan::Fail(Transient), Plan::Fail(Transient)]);
    let mut rig = Rig::connected(config(), probe).await;
    tokio::time::sleep(STABLE).await;
    rig.events.clear();
    let before = rig.handle.stats();
    let mut schedule = Schedule::default_policy();

    let lost_at = Instant::now();
    let reports: Vec<Report> = (0..3)
        .map(|_| rig.handle.report_lost(Generation(1), Transient))
        .collect();
    assert_eq!(
        reports,
        [Report::Queued, Report::Coalesced, Report::Coalesced]
    );
    let stats = rig.handle.stats();
    assert_eq!(stats.wakeups, before.wakeups + 1);
    assert_eq!(stats.coalesced_reports, before.coalesced_reports + 2);

    connected_on(&rig.handle, Generation(4)).await;
    assert_eq!(
        rig.events.attempts(),
        [(Generation(2), 1), (Generation(3), 2), (Generation(4), 3)]
    );
    let loops = rig
        .events
        .states()
        .iter()
        .filter(|(from, _, _)| *from == Connected)
        .count();
    assert_eq!(loops, 1);
    let d1 = schedule.next();
    let d2 = schedule.next();
    assert_eq!(
        rig.probe.open_times()[1..],
        [lost_at, lost_at + d1, lost_at + d1 + d2]
    );
    assert_eq!(rig.probe.max_in_flight(), 1);
    assert_eq!(rig.control.max_open_links(), 1);
}

/// S07: a fresh engine is not "actively reconnecting", and its first
/// genuine interrupt is acted on.
#[tokio::test(start_paused = true)]
async fn s07_fresh_engine_is_not_reconnecting() {
    assert!(!Machine::new(config()).is_reconnecting());
    // The driver has not run yet: spawning only queues it on this runtime.
    let mut rig = Rig::spawn(config(), Probe::memory());
    assert!(!rig.handle.is_reconnecting());
    assert_eq!(rig.handle.state(), StateKind::Idle);

    connected_on(&rig.handle, Generation(1)).await;
    assert!(!rig.handle.is_reconnecting());
    rig.events.clear();
    assert_eq!(
        rig.handle.report_lost(Generation(1), Transient),
        Report::Queued
    );
    connected_on(&rig.handle, Generation(2)).await;
    // A young link's loss: retried at once, from the retry budget.
    assert_eq!(
        rig.events.states()[0],
        (Connected, Connecting, Reason::LinkLost)
    );
}

/// S08: the interrupt the old link fires because we close it (during the
/// close, while the next attempt runs, and after it is up) names a retired
/// generation: it is dropped at the handle and changes nothing.
#[tokio::test(start_paused = true)]
async fn s08_interrupt_from_our_own_teardown_is_ignored() {
    let probe = Probe::memory().hangup_on_close();
    probe
        .control()
        .plan([Plan::Succeed, Plan::SucceedAfter(secs(2))]);
    let mut rig = Rig::connected(config(), probe).await;
    tokio::time::sleep(STABLE).await;
    rig.events.clear();

    assert_eq!(
        rig.handle.report_lost(Generation(1), Transient),
        Report::Queued
    );
    wait_until(&rig.handle, |s| s.state == Connecting).await;
    assert_eq!(
        rig.probe.close_reports(),
        [(Generation(1), Report::Stale)],
        "the hangup fired during our close"
    );
    assert!(rig.handle.is_reconnecting());
    assert_eq!(
        rig.handle.report_lost(Generation(1), Transient),
        Report::Stale
    );
    connected_on(&rig.handle, Generation(2)).await;
    assert_eq!(
        rig.handle.report_lost(Generation(1), Transient),
        Report::Stale
    );
    tokio::time::sleep(10 * DMAX).await;

    assert_eq!(rig.control.connect_calls(), 2);
    assert_eq!(rig.control.close_calls(), 1);
    assert_eq!(rig.generation(), Generation(2));
    assert_eq!(rig.handle.stats().stale_reports, 3);
    assert_eq!(
        rig.events.states(),
        [
            (Connected, Connecting, Reason::LinkLost),
            (Connecting, Connected, Reason::AttemptSucceeded),
        ]
    );
}

/// S09: a genuine interrupt is forwarded exactly once with its kind: a
/// transient one reconnects, a permanent one (the error said retrying
/// cannot help) gives up visibly.
#[tokio::test(start_paused = true)]
async fn s09_genuine_interrupt_is_forwarded_once_with_its_kind() {
    let mut rig = Rig::connected(config(), Probe::memory()).await;
    rig.events.clear();
    rig.handle.report_lost(Generation(1), Transient);
    connected_on(&rig.handle, Generation(2)).await;
    let left: Vec<_> = rig
        .events
        .states()
        .into_iter()
        .filter(|(from, _, _)| *from == Connected)
        .collect();
    // Acted on once: a young link's loss, retried at once from the budget.
    assert_eq!(left, [(Connected, Connecting, Reason::LinkLost)]);

    let mut rig = Rig::connected(config(), Probe::memory()).await;
    rig.events.clear();
    rig.handle.report_lost(Generation(1), Permanent);
    wait_until(&rig.handle, |s| s.state == Failed).await;
    tokio::time::sleep(10 * DMAX).await;
    assert_eq!(rig.events.states(), [(Connected, Failed, Reason::GaveUp)]);
    assert_eq!(rig.events.gave_up(), [(FailCause::Permanent, None)]);
    assert_eq!(rig.handle.snapshot().failure, Some(FailCause::Permanent));
    assert_eq!(rig.control.connect_calls(), 1);
    assert_eq!(rig.control.close_calls(), 1);
}

/// S43: 16 threads released by a barrier report the same loss (some of
/// them several times), 1000 outages in a row on a multi-thread runtime.
/// Each outage gives exactly one reconnect: generations advance by one,
/// and the attempt trace runs 1, 2, 3, ... without gaps or repeats (every
/// link here lives less than the stable period, so all the losses belong
/// to one outage whose attempt counter keeps counting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s43_concurrent_interrupts_from_16_threads_reconnect_once_per_outage() {
    const THREADS: usize = 16;
    const OUTAGES: u64 = 1000;
    // 1 ms fixed delays keep 1000 outages fast in real time.
    let policy = Backoff::builder()
        .initial(ms(1))
        .multiplier(1.0)
        .max(ms(1))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let cfg = builder().backoff(policy).build().unwrap();
    let mut rig = Rig::spawn(cfg, Probe::memory());
    let within = Duration::from_secs(10);
    let handle = rig.handle.clone();

    let target = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(THREADS + 1));
    let done = Arc::new(Barrier::new(THREADS + 1));
    let reporters: Vec<_> = (0..THREADS)
        .map(|i| {
            let (handle, target) = (handle.clone(), target.clone());
            let (start, done) = (start.clone(), done.clone());
            std::thread::spawn(move || {
                let mut tally = [0u64; 3];
                for _ in 0..OUTAGES {
                    start.wait();
                    let generation = Generation(target.load(Ordering::Acquire));
                    for _ in 0..=(i % 3) {
                        let slot = match handle.report_lost(generation, Transient) {
                            Report::Queued => 0,
                            Report::Coalesced => 1,
                            Report::Stale => 2,
                            other => panic!("a new report case: {other:?}"),
                        };
                        tally[slot] += 1;
                    }
                    done.wait();
                }
                tally
            })
        })
        .collect();

    let mut attempts = Vec::new();
    for k in 1..=OUTAGES {
        let generation = Generation(k);
        tokio::time::timeout(within, connected_on(&handle, generation))
            .await
            .unwrap_or_else(|_| panic!("link {k} never came up"));
        target.store(k, Ordering::Release);
        // Blocking waits on the test's own thread; the driver runs on the workers.
        start.wait();
        done.wait();
        attempts.extend(attempts_of(&rig.events.take()));
    }
    tokio::time::timeout(within, connected_on(&handle, Generation(OUTAGES + 1)))
        .await
        .expect("the last link never came up");

    let mut tally = [0u64; 3];
    for t in reporters {
        for (sum, n) in tally.iter_mut().zip(t.join().unwrap()) {
            *sum += n;
        }
    }
    rig.engine.shutdown().await;
    attempts.extend(attempts_of(&rig.events.take()));

    // One attempt per outage, numbered 1, 2, 3... (reported compactly).
    let expected: Vec<(Generation, u32)> = (1..=OUTAGES + 1)
        .map(|k| (Generation(k), k as u32))
        .collect();
    if let Some(i) = (0..expected.len()).find(|&i| attempts.get(i) != expected.get(i)) {
        panic!(
            "attempt trace diverges at #{i}: got {:?}, expected {:?}",
            &attempts[i.saturating_sub(2)..(i + 3).min(attempts.len())],
            &expected[i.saturating_sub(2)..(i + 3).min(expected.len())]
        );
    }
    assert_eq!(attempts.len(), expected.len());
    assert_eq!(rig.control.connect_calls(), OUTAGES + 1);
    assert_eq!(rig.probe.max_in_flight(), 1);
    assert_eq!(rig.control.max_open_links(), 1);
    assert_eq!(rig.control.open_links(), 0);
    let per_outage = (0..THREADS).map(|i| 1 + (i % 3) as u64).sum::<u64>();
    assert_eq!(tally.iter().sum::<u64>(), per_outage * OUTAGES);
    assert!(
        tally[0] >= OUTAGES,
        "each outage was queued at least once: {tally:?}"
    );
    let closes = rig
        .control
        .log()
        .iter()
        .filter(|e| matches!(e, LogEntry::Close(_)))
        .count() as u64;
    assert_eq!(closes, OUTAGES + 1);
}
