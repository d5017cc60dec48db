//! The report path never allocates (issue 3, "Done when").
//!
//! `allocation-counter` installs a counting global allocator whose counts
//! are per thread; each reporting thread measures only its own reporting
//! loop, after a warm-up, while the engine reconnects on the runtime's
//! worker threads (whose allocations are not the report path's).

use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use redial::backoff::{Backoff, Jitter};
use redial::machine::{Config, ErrorKind, Generation, StateKind};
use redial::runtime::{Engine, Report};
use redial::testing::MemoryTransport;

const THREADS: usize = 8;
const REPORTS: usize = 10_000;
const ROUNDS: usize = 20;
const LOST: ErrorKind = ErrorKind::Transient;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[test]
fn reporting_does_not_allocate() {
    // The counter is live in this binary: it sees a single box.
    let control = allocation_counter::measure(|| drop(std::hint::black_box(Box::new(1u64))));
    assert_eq!(control.count_total, 1);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Fast reconnects, so the driver keeps working while threads report.
    let backoff = Backoff::builder()
        .initial(ms(1))
        .multiplier(2.0)
        .max(ms(4))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let config = Config::builder()
        .seed(5)
        .backoff(backoff)
        .stable_period(ms(1))
        .no_liveness_timeout()
        .build()
        .unwrap();
    let engine = {
        let _enter = rt.enter();
        Engine::spawn(config, MemoryTransport::new())
    };
    let handle = engine.handle();
    rt.block_on(handle.wait_for(StateKind::Connected));
    let first = handle.generation();
    let barrier = Barrier::new(THREADS);

    let measured: Vec<_> = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (handle, barrier) = (&handle, &barrier);
                s.spawn(move || {
                    let reporter = handle.reporter(first);
                    let report = |i: usize| -> Report {
                        match (t + i) % 8 {
                            // A loss of whatever link is current: wakes the driver,
                            // which reconnects (on its own threads) again and again.
                            0 => handle.report_lost(handle.generation(), LOST),
                            1 => handle.report_lost(first, LOST),
                            2 => reporter.lost(LOST),
                            3 => handle.report_lost(Generation(first.0 + 1_000), LOST),
                            4 => handle.report_activity(handle.generation()),
                            5 => handle.report_resumed(first),
                            6 => handle.report_blocked(handle.generation()),
                            _ => {
                                assert!(handle.is_connected() || !handle.is_connected());
                                handle.report_unblocked(handle.generation())
                            }
                        }
                    };
                    // Warm-up: first touches of thread-locals, the wake path.
                    for i in 0..64 {
                        report(i);
                    }
                    barrier.wait();
                    let before = handle.stats().wakeups;
                    let mut outcomes = [0u64; 3];
                    let mut info = allocation_counter::AllocationInfo::default();
                    // Rounds with a pause between them (not measured), so the
                    // driver empties the mailbox and the next round wakes it.
                    for round in 0..ROUNDS {
                        info += allocation_counter::measure(|| {
                            for i in 0..REPORTS / ROUNDS {
                                let slot = match report(round + i) {
                                    Report::Queued => 0,
                                    Report::Coalesced => 1,
                                    Report::Stale => 2,
                                    other => panic!("a new report case: {other:?}"),
                                };
                                outcomes[slot] += 1;
                            }
                        });
                        thread::sleep(ms(1));
                    }
                    (info, outcomes, before)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });

    let stats = handle.stats();
    rt.block_on(engine.shutdown());
    let mut totals = [0u64; 3];
    let before = measured.iter().map(|m| m.2).min().unwrap();
    for (t, (info, outcomes, _)) in measured.iter().enumerate() {
        assert_eq!(
            info.count_total, 0,
            "thread {t} allocated {} times ({} bytes) while reporting",
            info.count_total, info.bytes_total
        );
        for (sum, n) in totals.iter_mut().zip(outcomes) {
            *sum += n;
        }
    }
    // Every path was measured: queued, coalesced, stale, and waking the driver.
    assert_eq!(totals.iter().sum::<u64>(), (THREADS * REPORTS) as u64);
    assert!(totals.iter().all(|n| *n > 0), "{totals:?}");
    let wakeups = stats.wakeups - before;
    assert!(wakeups > 0, "no report woke the driver: {stats:?}");
    eprintln!(
        "{} reports from {THREADS} threads, 0 allocations: queued {}, coalesced {}, stale {}; \
         driver wake-ups while measuring {wakeups}, connect attempts {}",
        THREADS * REPORTS,
        totals[0],
        totals[1],
        totals[2],
        stats.attempts
    );
}
