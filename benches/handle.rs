//! The handle's hot paths: `is_connected()` and reports from 1, 2 and 8
//! threads (duplicates and stale generations), with the driver wake-ups
//! they cause.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use redial::machine::{Config, ErrorKind, Generation, StateKind};
use redial::runtime::{Engine, Handle};
use redial::testing::MemoryTransport;

/// Reports `per_thread` times from each of `threads` threads at once and
/// returns the wall time of the slowest thread.
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
                    black_box(handle.report_lost(generation, ErrorKind::Transient));
                }
                start.elapsed()
            })
        })
        .collect();
    workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .max()
        .unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    // A current-thread runtime runs the driver only inside `block_on`, so
    // between calls the reports below pile up in the mailbox exactly as
    // they do while a busy driver has not taken them yet.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = rt.block_on(async {
        let engine = Engine::spawn(
            Config::builder().seed(1).liveness_timeout(None).build().unwrap(),
            MemoryTransport::new(),
        );
        engine.handle().wait_for(StateKind::Connected).await;
        engine
    });
    let handle = engine.handle();

    let mut group = c.benchmark_group("handle");
    group.bench_function("is_connected", |b| b.iter(|| black_box(handle.is_connected())));
    for threads in [1usize, 2, 8] {
        group.bench_function(format!("stale report, {threads} thread(s)"), |b| {
            b.iter_custom(|iters| {
                let per_thread = iters.div_ceil(threads as u64);
                storm(&handle, threads, per_thread, Generation(0))
                    / u32::try_from(per_thread.max(1)).unwrap_or(u32::MAX)
            })
        });
    }
    group.finish();

    // Duplicates of the current generation: the first report of the batch
    // queues and wakes the driver, every later one coalesces.
    let generation = handle.generation();
    let before = handle.stats();
    let mut group = c.benchmark_group("handle duplicates");
    for threads in [1usize, 2, 8] {
        group.bench_function(format!("duplicate report, {threads} thread(s)"), |b| {
            b.iter_custom(|iters| {
                let per_thread = iters.div_ceil(threads as u64);
                storm(&handle, threads, per_thread, generation)
                    / u32::try_from(per_thread.max(1)).unwrap_or(u32::MAX)
            })
        });
    }
    group.finish();
    let after = handle.stats();
    println!(
        "duplicate storm: {} reports, {} coalesced, {} stale, {} driver wake-ups",
        after.reports - before.reports,
        after.coalesced_reports - before.coalesced_reports,
        after.stale_reports - before.stale_reports,
        after.wakeups - before.wakeups,
    );
    rt.block_on(engine.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
