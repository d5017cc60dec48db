//! The handle's hot paths: `is_connected()`, and loss reports from 1, 2 and
//! 8 threads at once (stale generations and duplicates), with the driver
//! wake-ups they cause.
//!
//! One criterion iteration of a report benchmark is one *round*: every
//! thread reports once, all at the same time. So the time per iteration is
//! what one report costs the thread that makes it (waiting for the others'
//! cache traffic included), and the throughput is reports per second over
//! all threads.
//!
//! After the criterion groups, a storm against a *live* driver prints how
//! many outages and driver wake-ups a round of concurrent reports caused.
//! Instruction counts and the allocation check are in `benches/icount.rs`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use redial::backoff::{Backoff, Jitter};
use redial::machine::{Config, ErrorKind, Generation, StateKind};
use redial::runtime::{Engine, Handle, Stats};
use redial::testing::MemoryTransport;

/// Reports `per_thread` times from each of `threads` threads at once and
/// returns the span from the first thread's start to the last one's end
/// (not the slowest thread's own time: with more threads than cores, a
/// thread that starts late would hide the time it waited).
fn storm(handle: &Handle, threads: usize, per_thread: u64, generation: Generation) -> Duration {
    let barrier = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let handle = handle.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for _ in 0..per_thread {
                    black_box(handle.report_lost(black_box(generation), ErrorKind::Transient));
                }
                (start, Instant::now())
            })
        })
        .collect();
    let spans: Vec<(Instant, Instant)> = workers
        .into_iter()
        .map(|w| w.join().expect("reporting thread"))
        .collect();
    let first = spans.iter().map(|s| s.0).min();
    let last = spans.iter().map(|s| s.1).max();
    match (first, last) {
        (Some(first), Some(last)) => last - first,
        _ => Duration::ZERO,
    }
}

fn bench(c: &mut Criterion) {
    // A current-thread runtime runs the driver only inside `block_on`, so
    // between calls the reports below pile up in the mailbox exactly as
    // they do while a busy driver has not taken them yet.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let engine = rt.block_on(async {
        let engine = Engine::spawn(
            Config::builder()
                .seed(1)
                .no_liveness_timeout()
                .build()
                .expect("config"),
            MemoryTransport::new(),
        );
        engine.handle().wait_for(StateKind::Connected).await;
        engine
    });
    let handle = engine.handle();

    let mut group = c.benchmark_group("handle");
    group.bench_function("is_connected", |b| {
        b.iter(|| black_box(black_box(&handle).is_connected()))
    });
    group.finish();

    // An old generation: dropped after one load of the snapshot.
    let mut group = c.benchmark_group("handle stale report");
    for threads in [1usize, 2, 8] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(format!("{threads} thread(s)"), |b| {
            b.iter_custom(|rounds| storm(&handle, threads, rounds, Generation(0)))
        });
    }
    group.finish();

    // Duplicates of the current generation: the first report of the batch
    // queues and wakes the driver, every later one coalesces.
    let generation = handle.generation();
    let before = handle.stats();
    let mut group = c.benchmark_group("handle duplicate report");
    for threads in [1usize, 2, 8] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(format!("{threads} thread(s)"), |b| {
            b.iter_custom(|rounds| storm(&handle, threads, rounds, generation))
        });
    }
    group.finish();
    let after = handle.stats();
    println!(
        "duplicate reports, driver not running: {} reports, {} coalesced, {} stale, {} driver wake-up(s)",
        after.reports - before.reports,
        after.coalesced_reports - before.coalesced_reports,
        after.stale_reports - before.stale_reports,
        after.wakeups - before.wakeups,
    );
    rt.block_on(engine.shutdown());

    live_storms();
}

/// Storms against a driver that runs on its own worker thread: each round,
/// every thread reports the loss of the current link `per_thread` times as
/// fast as it can; then the round waits for the engine to reconnect.
/// Prints, per round, the outages and driver wake-ups the storm caused.
fn live_storms() {
    // `cargo test --benches` runs this binary without `--bench`: keep it short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (rounds, per_thread) = if quick { (3, 100) } else { (200, 10_000) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // Reconnect within a millisecond so that rounds stay short.
    let backoff = Backoff::builder()
        .initial(Duration::from_millis(1))
        .multiplier(1.0)
        .max(Duration::from_millis(1))
        .jitter(Jitter::None)
        .build()
        .expect("backoff");
    let config = Config::builder()
        .seed(1)
        .backoff(backoff)
        .stable_period(Duration::from_millis(1))
        .no_liveness_timeout()
        .build()
        .expect("config");
    let engine = rt.block_on(async {
        let engine = Engine::spawn(config, MemoryTransport::new());
        engine.handle().wait_for(StateKind::Connected).await;
        engine
    });
    let handle = engine.handle();
    println!(
        "live driver: {rounds} rounds of {per_thread} loss reports per thread about the current link"
    );
    for threads in [1usize, 2, 8] {
        let before = handle.stats();
        let mut busy = Duration::ZERO;
        for _ in 0..rounds {
            let generation = handle.generation();
            busy += storm(&handle, threads, per_thread, generation);
            wait_reconnected(&rt, &handle, generation);
        }
        let after = handle.stats();
        let d = delta(before, after);
        let reports = (threads as u64 * per_thread * rounds) as f64;
        println!(
            "  {threads} thread(s): per round {:.2} outage(s), {:.2} driver wake-up(s), \
             {:.0} coalesced, {:.0} stale; {:.1} M reports/s while storming",
            d.outages as f64 / rounds as f64,
            d.wakeups as f64 / rounds as f64,
            d.coalesced_reports as f64 / rounds as f64,
            d.stale_reports as f64 / rounds as f64,
            reports / busy.as_secs_f64() / 1e6,
        );
    }
    rt.block_on(engine.shutdown());
}

/// Waits until link `old` has been replaced by a connected one.
fn wait_reconnected(rt: &tokio::runtime::Runtime, handle: &Handle, old: Generation) {
    let mut watch = handle.watch();
    let reconnected =
        rt.block_on(watch.wait_for(|s| s.generation > old && s.state == StateKind::Connected));
    assert!(reconnected.is_ok(), "the driver stopped");
}

fn delta(a: Stats, b: Stats) -> Stats {
    // `Stats` is non-exhaustive: start from `b` (the histograms and the
    // last recovery stay as they are) and subtract the counters.
    let mut d = b;
    d.attempts = b.attempts - a.attempts;
    d.connects = b.connects - a.connects;
    d.resumes = b.resumes - a.resumes;
    d.probes = b.probes - a.probes;
    d.losses = b.losses - a.losses;
    d.outages = b.outages - a.outages;
    d.reports = b.reports - a.reports;
    d.stale_reports = b.stale_reports - a.stale_reports;
    d.coalesced_reports = b.coalesced_reports - a.coalesced_reports;
    d.wakeups = b.wakeups - a.wakeups;
    d.disconnected_total = b.disconnected_total - a.disconnected_total;
    d
}

criterion_group!(benches, bench);
criterion_main!(benches);
