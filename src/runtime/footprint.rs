//! What one idle engine costs on the heap, piece by piece: the sizes of the
//! engine's parts and the allocations each step of `spawn` + connect makes
//! (`allocation-counter` counts per thread; on a current-thread runtime the
//! driver and its tasks run on the measuring thread).
//!
//! ```sh
//! cargo test --release --lib runtime::footprint -- --nocapture
//! ```
//!
//! (In debug builds tokio boxes a future over 2 KiB before spawning it: one
//! more allocation than in release.)

use std::future::Future;
use std::mem::{size_of, size_of_val};
use std::time::Duration;

use allocation_counter::AllocationInfo;

use super::*;
use crate::machine::{Input, Output, Reason, State, StateKind};
use crate::runtime::driver::Driver;
use crate::testing::MemoryError;

/// A transport that keeps nothing, as the fleet's bare mode.
struct Bare;

impl Transport for Bare {
    type Link = ();
    type Error = MemoryError;

    fn open(
        &self,
        _ctx: OpenContext,
    ) -> impl Future<Output = Result<(), MemoryError>> + Send + 'static {
        std::future::ready(Ok(()))
    }

    fn close(&self, _link: (), _reason: Reason) -> impl Future<Output = ()> + Send + 'static {
        std::future::ready(())
    }
}

fn config(seed: u64) -> Config {
    // As the fleet's idle engines: liveness on, everything else default.
    Config::builder()
        .seed(seed)
        .liveness_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn measure<R>(f: impl FnOnce() -> R) -> (R, AllocationInfo) {
    let mut out = None;
    let info = allocation_counter::measure(|| out = Some(f()));
    (out.expect("ran"), info)
}

fn row(what: &str, info: &AllocationInfo) {
    println!(
        "| {what} | {} allocs ({} kept) | {} B requested ({} B kept) |",
        info.count_total, info.count_current, info.bytes_total, info.bytes_current
    );
}

#[test]
fn idle_engine_footprint() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    // Warm-up: the runtime's and tracing's lazy state is made once.
    let warm: Vec<_> = (0..4)
        .map(|i| Engine::spawn(config(100 + i), Bare))
        .collect();
    for e in &warm {
        rt.block_on(e.handle().wait_for(StateKind::Connected));
    }

    println!("== sizes (bytes)");
    println!("Engine<Bare>          {}", size_of::<Engine<Bare>>());
    println!("Inner                 {}", size_of::<handle::Inner>());
    println!("  Shared              {}", size_of::<Shared>());
    println!(
        "  ReportCounters      {}",
        size_of::<shared::ReportCounters>()
    );
    println!("  DriverCounters      {}", size_of::<DriverCounters>());
    println!(
        "  watch::Receiver     {}",
        size_of::<watch::Receiver<Snapshot>>()
    );
    println!(
        "  OnceLock<broadcast::Sender> {}",
        size_of::<std::sync::OnceLock<tokio::sync::broadcast::Sender<Event>>>()
    );
    println!(
        "  Mutex<Option<(Generation, SharedError)>> {}",
        size_of::<std::sync::Mutex<Option<(crate::machine::Generation, SharedError)>>>()
    );
    println!("Snapshot              {}", size_of::<Snapshot>());
    println!("Machine               {}", size_of::<Machine>());
    println!("  Config              {}", size_of::<Config>());
    println!("  State               {}", size_of::<State>());
    println!("Output                {}", size_of::<Output>());
    println!("Input                 {}", size_of::<Input>());
    println!("Driver<Bare>          {}", size_of::<Driver<Bare>>());
    println!("tokio::time::Sleep    {}", size_of::<tokio::time::Sleep>());
    println!(
        "JoinHandle<()>        {}",
        size_of::<tokio::task::JoinHandle<()>>()
    );
    println!("tracing::Span         {}", size_of::<tracing::Span>());
    {
        let prepared = Engine::prepare(config(7), Bare);
        let machine = Machine::new(config(7));
        let channels = driver::channels::<()>(machine.generation());
        let driver = Driver::new(
            machine,
            Bare,
            Arc::clone(&prepared.handle().inner),
            channels.snapshot_tx,
            channels.links_tx,
        );
        for (what, size) in driver::future_sizes(
            Driver::new(
                Machine::new(config(7)),
                Bare,
                Arc::clone(&prepared.handle().inner),
                driver::channels::<()>(crate::machine::Generation(1)).snapshot_tx,
                driver::channels::<()>(crate::machine::Generation(1)).links_tx,
            ),
            (),
        ) {
            println!("  {what:<20} {size}");
        }
        let fut = driver.run(None);
        println!("driver.run(None) future {}", size_of_val(&fut));
        let spawned = tracing::Instrument::instrument(fut, tracing::info_span!("redial"));
        println!(
            "  instrumented (what tokio::spawn gets) {}",
            size_of_val(&spawned)
        );
    }

    println!("== allocations (current-thread runtime, after a warm-up)");
    let (_, info) = measure(|| std::hint::black_box(config(1)));
    row("Config::build", &info);
    let (machine, info) = measure(|| Machine::new(config(1)));
    row("Machine::new (endpoint order)", &info);
    let (_snap, info) = measure(|| {
        watch::channel(Snapshot {
            state: StateKind::Idle,
            generation: machine.generation(),
            attempt: 0,
            endpoint: 0,
            reason: None,
            failure: None,
        })
    });
    row("watch::channel<Snapshot>", &info);
    let (_links, info) = measure(|| watch::channel::<Option<CurrentLink<()>>>(None));
    row("watch::channel<Option<CurrentLink<()>>>", &info);
    drop(machine);

    let (prepared, prepare) = measure(|| Engine::prepare(config(2), Bare));
    row("Engine::prepare (all of the above + Arc<Inner>)", &prepare);
    let (_span, info) = measure(|| tracing::info_span!("redial"));
    row("tracing::info_span! (no subscriber)", &info);
    let (small, info) = measure(|| tokio::spawn(async {}));
    row(
        "tokio::spawn(async {}) (task cell of an empty future)",
        &info,
    );
    small.abort();
    let (engine, start) = measure(|| prepared.start());
    row("Prepared::start (driver task: tokio::spawn)", &start);
    let handle = engine.handle();
    let (_, connect) = measure(|| rt.block_on(handle.wait_for(StateKind::Connected)));
    row("run to Connected (driver's first steps)", &connect);
    let (_, idle) = measure(|| rt.block_on(tokio::time::sleep(Duration::from_millis(20))));
    row("idle 20 ms", &idle);
    let kept = prepare.bytes_current + start.bytes_current + connect.bytes_current;
    let count = prepare.count_current + start.count_current + connect.count_current;
    println!("== kept per idle engine: {count} allocations, {kept} bytes requested");

    // Counts, not sizes: the same on every toolchain and allocator. The
    // four: the driver's task, the shared `Inner` and the two watch channels.
    assert_eq!(idle.count_total, 0, "an idle engine allocates nothing");
    assert!(
        count <= 4,
        "an idle engine keeps {count} allocations; it kept 4 when measured (docs/PERFORMANCE.md)"
    );
    drop(handle);
    drop(engine);
    drop(warm);
}
