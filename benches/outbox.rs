//! The outbox per message: the sans-IO core's submit, send and confirm
//! steps, and the async publisher end to end (publish, write, confirm,
//! receipt) over a broker that costs nothing ([`support::NullBroker`]).
//! Instruction counts of the same paths are in `benches/icount.rs`.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use redial::machine::{Config, Generation, StateKind};
use redial::outbox::{OutboxConfig, Publisher, SubmitOptions};
use redial::runtime::Engine;
use redial::unstable::{OutboxCore, Submit};
use support::NullBroker;

/// Messages per batch: the publisher's default in-flight window.
const BATCH: u64 = 256;

fn core_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("outbox core");
    group.throughput(Throughput::Elements(1));
    let generation = Generation(1);
    let t0 = Instant::now();
    let mut core: OutboxCore<u64> = OutboxCore::new(OutboxConfig::default());

    // Each step is timed over a batch of BATCH messages; the other steps
    // run untimed around it, so the core is empty between batches.
    let mut step = |timed: usize, iters: u64| -> Duration {
        let mut spent = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(BATCH);
            left -= n;
            let start = Instant::now();
            for i in 0..n {
                black_box(core.submit(t0, black_box(i), SubmitOptions::new()));
            }
            let submitted = start.elapsed();
            let start = Instant::now();
            let mut ids = [None; BATCH as usize];
            for slot in ids.iter_mut().take(n as usize) {
                *slot = core.next_to_send(t0, generation).map(|(id, _)| id);
            }
            let sent = start.elapsed();
            let start = Instant::now();
            for id in ids.iter().take(n as usize).flatten() {
                core.confirmed(generation, *id);
            }
            while let Some(r) = core.poll_resolved() {
                black_box(r);
            }
            let confirmed = start.elapsed();
            spent += match timed {
                0 => submitted,
                1 => sent,
                2 => confirmed,
                _ => submitted + sent + confirmed,
            };
        }
        spent
    };
    group.bench_function("submit", |b| b.iter_custom(|iters| step(0, iters)));
    group.bench_function("next_to_send", |b| b.iter_custom(|iters| step(1, iters)));
    group.bench_function("confirmed + poll_resolved", |b| {
        b.iter_custom(|iters| step(2, iters))
    });
    group.bench_function("all four steps", |b| b.iter_custom(|iters| step(3, iters)));
    group.finish();
    assert!(matches!(
        core.submit(t0, 0, SubmitOptions::new()),
        Submit::Queued(_)
    ));
}

fn publisher_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (engine, publisher) = rt.block_on(async {
        let config = Config::builder()
            .seed(1)
            .no_liveness_timeout()
            .build()
            .expect("config");
        let engine = Engine::spawn(config, NullBroker);
        engine.handle().wait_for(StateKind::Connected).await;
        let publisher = Publisher::new(&engine, NullBroker, OutboxConfig::default());
        (engine, publisher)
    });

    let mut group = c.benchmark_group("publisher (null broker)");
    group.throughput(Throughput::Elements(1));
    // Latency: one message at a time, publish to confirmed receipt.
    group.bench_function("publish + confirmed receipt, one at a time", |b| {
        b.iter(|| {
            rt.block_on(async {
                let receipt = publisher.publish(black_box(7)).await;
                receipt.await.expect("confirmed")
            })
        })
    });
    // Throughput: a full window in flight, then every receipt.
    group.bench_function("publish + confirmed receipt, 256 in flight", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let mut left = iters;
                let mut receipts = Vec::with_capacity(BATCH as usize);
                while left > 0 {
                    let n = left.min(BATCH);
                    left -= n;
                    for i in 0..n {
                        receipts.push(publisher.publish(black_box(i)).await);
                    }
                    for r in receipts.drain(..) {
                        r.await.expect("confirmed");
                    }
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    let stats = publisher.stats();
    assert!(stats.is_balanced(), "{stats:?}");
    rt.block_on(async {
        publisher.shutdown(Duration::from_secs(1)).await;
        engine.shutdown().await;
    });
}

criterion_group!(benches, core_benches, publisher_benches);
criterion_main!(benches);
