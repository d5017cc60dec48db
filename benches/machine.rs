//! Cost of one machine input and of draining its outputs (wall clock;
//! `benches/icount.rs` counts the instructions of the same operations).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use redial::machine::{Config, ErrorKind, Generation, Input, Machine};

fn connected(t0: Instant) -> Machine {
    let mut m = Machine::new(Config::builder().seed(1).build().unwrap());
    m.handle(t0, Input::Start);
    while m.poll(t0).is_some() {}
    let generation = m.generation();
    m.handle(t0, Input::AttemptSucceeded { generation });
    while m.poll(t0).is_some() {}
    m
}

fn bench(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut group = c.benchmark_group("machine");

    let mut m = connected(t0);
    let generation = m.generation();
    group.bench_function("activity (current generation)", |b| {
        b.iter(|| {
            m.handle(t0, black_box(Input::Activity { generation }));
            while let Some(o) = m.poll(t0) {
                black_box(o);
            }
        })
    });

    let mut m = connected(t0);
    group.bench_function("stale link_lost", |b| {
        b.iter(|| {
            m.handle(
                t0,
                black_box(Input::lost(Generation(0), ErrorKind::Transient)),
            );
            while let Some(o) = m.poll(t0) {
                black_box(o);
            }
        })
    });

    // Draining with nothing queued and no timer due: the driver's idle poll.
    let mut m = connected(t0);
    group.bench_function("poll, nothing due", |b| {
        b.iter(|| black_box(m.poll(black_box(t0))))
    });

    // A full outage: loss, immediate reopen, success; time moves past the
    // stable period each round so every outage starts afresh.
    let mut m = connected(t0);
    let mut now = t0;
    group.bench_function("outage cycle (lost, open, succeeded)", |b| {
        b.iter(|| {
            now += Duration::from_secs(11);
            let generation = m.generation();
            m.handle(now, Input::lost(generation, ErrorKind::Transient));
            while let Some(o) = m.poll(now) {
                black_box(o);
            }
            let generation = m.generation();
            m.handle(now, Input::AttemptSucceeded { generation });
            while let Some(o) = m.poll(now) {
                black_box(o);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
