//! Instructions per operation on the hot paths, counted by callgrind, and a
//! check that none of them allocates.
//!
//! Wall-clock nanoseconds depend on the machine and on whoever else uses
//! it; the number of instructions executed does not (for a given build), so
//! these are the figures to compare across runs and commits.
//!
//! `cargo bench --bench icount` runs every operation twice under
//! `valgrind --tool=callgrind`, collecting only inside [`icount_measured`]
//! (`--toggle-collect`), with `n` and `2n` repetitions; the difference
//! divided by `n` is the cost of one operation without any setup. An
//! operation allocates if any allocator function ran inside the measured
//! region. Without valgrind it prints wall-clock times instead.
//!
//! Single-threaded only: valgrind serialises threads, so contention is
//! measured by `benches/handle.rs`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use redial::machine::{Config, ErrorKind, Generation, Input, Machine, StateKind};
use redial::outbox::{OutboxConfig, Publisher, SubmitOptions};
use redial::runtime::{Engine, Handle};
use redial::testing::MemoryTransport;
use redial::unstable::OutboxCore;
use support::NullBroker;

/// Repetitions of the short run of a cheap operation; the long run does
/// twice as many.
const N: u64 = 20_000;

/// One measured operation.
struct Op {
    name: &'static str,
    /// What one repetition does.
    what: &'static str,
    /// Repetitions of the short run (fewer for the slow ones: callgrind
    /// runs about fifty times slower than the machine).
    n: u64,
    /// Messages per repetition: the table shows instructions per message.
    per: u64,
}

/// Every measured operation.
const OPS: &[Op] = &[
    Op {
        name: "handle.is_connected",
        what: "one atomic load",
        n: N,
        per: 1,
    },
    Op {
        name: "handle.report_lost stale",
        what: "a report naming an old generation",
        n: N,
        per: 1,
    },
    Op {
        name: "handle.report_lost duplicate",
        what: "the current generation, already in the mailbox",
        n: N,
        per: 1,
    },
    Op {
        name: "handle.report_activity duplicate",
        what: "inbound traffic, already in the mailbox",
        n: N,
        per: 1,
    },
    Op {
        name: "machine.activity + drain",
        what: "Input::Activity, then poll until None",
        n: N,
        per: 1,
    },
    Op {
        name: "machine.stale link_lost + drain",
        what: "an old generation's loss, then poll until None",
        n: N,
        per: 1,
    },
    Op {
        name: "machine.poll, nothing due",
        what: "one poll on a connected machine",
        n: N,
        per: 1,
    },
    Op {
        name: "machine.outage cycle",
        what: "loss + drain, then success + drain",
        n: N,
        per: 1,
    },
    Op {
        name: "outbox core: one message",
        what: "submit, next_to_send, confirmed, poll_resolved",
        n: N,
        per: 1,
    },
    Op {
        name: "publisher: one message",
        what: "publish, write, confirm, receipt (null broker), one at a time",
        n: N / 10,
        per: 1,
    },
    Op {
        name: "publisher: 256 in flight",
        what: "the same, per message, with 256 in flight at once",
        n: N / 1000,
        per: 256,
    },
    Op {
        name: "calibration: Box::new",
        what: "allocates on purpose: checks the allocation detector",
        n: N,
        per: 1,
    },
];

/// The measured region: callgrind collects only while this is on the stack.
#[inline(never)]
fn icount_measured(n: u64, mut op: impl FnMut()) {
    for _ in 0..n {
        op();
    }
}

fn connected_machine(t0: Instant) -> Machine {
    let mut m = Machine::new(Config::builder().seed(1).build().expect("config"));
    m.handle(t0, Input::Start);
    while m.poll(t0).is_some() {}
    let generation = m.generation();
    m.handle(t0, Input::AttemptSucceeded { generation });
    while m.poll(t0).is_some() {}
    m
}

/// A connected engine whose driver runs only inside `block_on`, so that
/// reports stay in the mailbox.
fn connected_handle(rt: &tokio::runtime::Runtime) -> (Engine<MemoryTransport>, Handle) {
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
    (engine, handle)
}

/// Runs operation `name` `n` times inside the measured region.
fn run(name: &str, n: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (_engine, handle) = connected_handle(&rt);
    let generation = handle.generation();
    let t0 = Instant::now();
    let mut m = connected_machine(t0);
    let current = m.generation();
    match name {
        "handle.is_connected" => icount_measured(n, || {
            black_box(black_box(&handle).is_connected());
        }),
        "handle.report_lost stale" => icount_measured(n, || {
            black_box(handle.report_lost(black_box(Generation(0)), ErrorKind::Transient));
        }),
        "handle.report_lost duplicate" => {
            handle.report_lost(generation, ErrorKind::Transient);
            icount_measured(n, || {
                black_box(handle.report_lost(black_box(generation), ErrorKind::Transient));
            })
        }
        "handle.report_activity duplicate" => {
            handle.report_activity(generation);
            icount_measured(n, || {
                black_box(handle.report_activity(black_box(generation)));
            })
        }
        "machine.activity + drain" => icount_measured(n, || {
            m.handle(
                t0,
                black_box(Input::Activity {
                    generation: current,
                }),
            );
            while let Some(o) = m.poll(t0) {
                black_box(o);
            }
        }),
        "machine.stale link_lost + drain" => icount_measured(n, || {
            m.handle(
                t0,
                black_box(Input::lost(Generation(0), ErrorKind::Transient)),
            );
            while let Some(o) = m.poll(t0) {
                black_box(o);
            }
        }),
        "machine.poll, nothing due" => icount_measured(n, || {
            black_box(m.poll(black_box(t0)));
        }),
        "machine.outage cycle" => {
            let mut now = t0;
            icount_measured(n, || {
                // Past the stable period, so that every outage starts afresh.
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
        }
        "outbox core: one message" => {
            let mut core: OutboxCore<u64> = OutboxCore::new(OutboxConfig::default());
            let g = Generation(1);
            icount_measured(n, || {
                black_box(core.submit(t0, black_box(7), SubmitOptions::new()));
                let id = core.next_to_send(t0, g).map(|(id, _)| id);
                if let Some(id) = id {
                    core.confirmed(g, id);
                }
                black_box(core.poll_resolved());
            })
        }
        "publisher: one message" | "publisher: 256 in flight" => {
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
            let batch = if name.contains("256") { 256 } else { 1 };
            let mut receipts = Vec::with_capacity(batch);
            icount_measured(n, || {
                rt.block_on(async {
                    for i in 0..batch {
                        receipts.push(publisher.publish(black_box(i as u64)).await);
                    }
                    for r in receipts.drain(..) {
                        black_box(r.await.is_ok());
                    }
                })
            });
            drop((engine, publisher));
        }
        "calibration: Box::new" => icount_measured(n, || {
            black_box(Box::new(black_box(1u64)));
        }),
        other => panic!("unknown operation {other:?}"),
    }
}

/// Total instructions (`Ir`) and whether an allocator function ran, from
/// one callgrind output file.
fn parse_callgrind(path: &Path) -> Option<(u64, bool)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut total = None;
    let mut allocated = false;
    for line in text.lines() {
        if let Some(rest) = line
            .strip_prefix("totals:")
            .or_else(|| line.strip_prefix("summary:"))
        {
            total = rest.split_whitespace().next()?.parse().ok();
        }
        // Functions appear as `fn=(id) name` / `cfn=(id) name` lines.
        if (line.starts_with("fn=") || line.starts_with("cfn="))
            && ["malloc", "calloc", "realloc", "__rust_alloc", "__rdl_alloc"]
                .iter()
                .any(|f| line.contains(f))
        {
            allocated = true;
        }
    }
    total.map(|t| (t, allocated))
}

/// Runs `op` `n` times under callgrind.
fn callgrind(exe: &Path, dir: &Path, op: &str, n: u64) -> Option<(u64, bool)> {
    let out = dir.join(format!("{}-{n}.out", op.replace([' ', ',', '+'], "_")));
    let status = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--toggle-collect=*icount_measured*",
            "--compress-strings=no",
            "--compress-pos=no",
        ])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args(["--op", op, "--iters", &n.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    parse_callgrind(&out)
}

fn has_valgrind() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    // Child mode: one operation, inside callgrind.
    if let Some(op) = value("--op") {
        let n = value("--iters").and_then(|v| v.parse().ok()).unwrap_or(N);
        run(&op, n);
        return;
    }
    // `cargo test --benches` runs bench binaries without `--bench`: smoke only.
    if !args.iter().any(|a| a == "--bench") {
        for op in OPS {
            run(op.name, 2);
        }
        println!("icount: {} operations ran (smoke test)", OPS.len());
        return;
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with("--"));
    let ops = OPS
        .iter()
        .filter(|op| filter.is_none_or(|f| op.name.contains(f.as_str())));
    if !has_valgrind() {
        println!("valgrind not found: wall-clock times instead of instruction counts");
        for op in ops {
            let n = op.n * 500;
            let start = Instant::now();
            run(op.name, n);
            let ns = start.elapsed().as_nanos() as f64 / (n * op.per) as f64;
            println!(
                "{:<36} {ns:>10.2} ns/op (setup included)  {}",
                op.name, op.what
            );
        }
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir: PathBuf = std::env::temp_dir().join(format!("redial-icount-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!(
        "instructions per operation (callgrind, (Ir(2n) - Ir(n)) / n; per message for the outbox)"
    );
    println!(
        "{:<36} {:>10}  {:<9}  what",
        "operation", "Ir/op", "allocates"
    );
    for op in ops {
        let short = callgrind(&exe, &dir, op.name, op.n);
        let long = callgrind(&exe, &dir, op.name, 2 * op.n);
        let (name, what) = (op.name, op.what);
        match (short, long) {
            (Some((a, alloc_a)), Some((b, alloc_b))) => {
                let per_op = b.saturating_sub(a) as f64 / (op.n * op.per) as f64;
                let allocates = if alloc_a || alloc_b { "YES" } else { "no" };
                println!("{name:<36} {per_op:>10.1}  {allocates:<9}  {what}");
            }
            _ => println!("{name:<36} {:>10}  {:<9}  {what}", "failed", "?"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
