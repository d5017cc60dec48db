//! The MQTT reconnection storm of failure report 003 (docs/scenarios.md),
//! replayed against the engine with the in-memory transport on a real
//! multi-thread runtime.
//!
//! ```sh
//! cargo run --example storm
//! ```
//!
//! An SDK that fires `on_connection_interrupted` from dozens of its own
//! threads at once used to start several reconnect loops that tore each
//! other's links down (attempt counters going 1, 2, 5, 3). Here 48 plain
//! `std::thread`s fire the same callbacks at the engine's handle, released
//! together by a barrier:
//!
//! 1. **storm**: reports of the current link's loss, duplicates, activity,
//!    reports about the previous link and about a generation that never
//!    existed, all at once;
//! 2. **late interrupts**: the replaced link's own callbacks fire after the
//!    reconnect (its reporter still holds its old generation);
//! 3. **flapping**: the link is severed eight times in a row, each time
//!    with a small storm and a late interrupt from the link before;
//! 4. **resume (S05)**, on an engine with a resume grace, as for an SDK
//!    that reconnects underneath: interrupts are queued, then the SDK
//!    reports the link resumed;
//! 5. **storm, no resume**: the same engine, interrupts and no resume.
//!
//! It prints a table and exits non-zero if an invariant was broken: one
//! connect attempt per outage (the transport always succeeds), none for a
//! resumed link or a stale report, never more than one link open or one
//! attempt in flight. Waits are explicit (the engine's watch channel, with
//! generous timeouts), so a loaded machine makes it slower, not flaky.

use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use redial::backoff::{Backoff, Jitter};
use redial::machine::{Config, ErrorKind, Generation, Reason, StateKind};
use redial::runtime::{Engine, Handle, OpenContext, Report, Stats, Transport};
use redial::testing::{LogEntry, MemoryControl, MemoryError, MemoryLink, MemoryTransport, Plan};
use tokio::runtime::Runtime;

/// Reporting threads per storm.
const THREADS: usize = 48;
/// Reports each thread fires in a big storm.
const REPORTS: usize = 250;
/// Severs in the flapping phase.
const FLAPS: usize = 8;
/// How long to wait for any expected state before calling it a failure.
const PATIENCE: Duration = Duration::from_secs(60);
/// The SDK engine's resume grace.
const GRACE: Duration = Duration::from_millis(1500);
const TRANSIENT: ErrorKind = ErrorKind::Transient;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Small delays, so that the whole run takes a few seconds.
fn config(seed: u64, grace: Option<Duration>) -> Config {
    let builder = Config::builder()
        .seed(seed)
        .backoff(
            Backoff::builder()
                .initial(ms(5))
                .multiplier(2.0)
                .max(ms(40))
                .jitter(Jitter::Proportional { fraction: 0.5 })
                .build()
                .unwrap(),
        )
        .stable_period(ms(50))
        .connect_timeout(Duration::from_secs(10))
        .no_liveness_timeout();
    match grace {
        Some(grace) => builder.resume_grace(grace),
        None => builder.no_resume_grace(),
    }
    .build()
    .expect("valid config")
}

/// What the reporting threads were told, summed.
#[derive(Default)]
struct Tally {
    reports: AtomicU64,
    queued: AtomicU64,
    coalesced: AtomicU64,
    stale: AtomicU64,
}

impl Tally {
    fn count(&self, report: Report) {
        self.reports.fetch_add(1, Ordering::Relaxed);
        let slot = match report {
            Report::Queued => &self.queued,
            Report::Coalesced => &self.coalesced,
            Report::Stale => &self.stale,
            // `Report` may grow: a case this example does not know is not counted.
            _ => return,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self, counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Fires `per_thread` reports from each of `threads` threads, released
/// together; `report(thread, i)` makes one. Returns once all are joined.
fn fire(
    threads: usize,
    per_thread: usize,
    report: impl Fn(usize, usize) -> Report + Sync,
) -> Tally {
    let tally = Tally::default();
    let barrier = Barrier::new(threads);
    thread::scope(|s| {
        for t in 0..threads {
            let (tally, barrier, report) = (&tally, &barrier, &report);
            s.spawn(move || {
                barrier.wait();
                for i in 0..per_thread {
                    tally.count(report(t, i));
                }
            });
        }
    });
    tally
}

/// Counts the generations alive at once: an attempt in flight (a running
/// reconnect loop) or an open link. Report 003's bug shows here as 2 or more.
#[derive(Default)]
struct Gauge {
    alive: AtomicU64,
    max: AtomicU64,
}

impl Gauge {
    fn up(&self) {
        let now = self.alive.fetch_add(1, Ordering::AcqRel) + 1;
        self.max.fetch_max(now, Ordering::AcqRel);
    }
    fn down(&self) {
        self.alive.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ends an attempt's life unless it produced a link (then `close` does).
struct AttemptGuard(Option<Arc<Gauge>>);

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if let Some(gauge) = self.0.take() {
            gauge.down();
        }
    }
}

/// The in-memory transport, watched by a [`Gauge`].
struct Watched {
    inner: MemoryTransport,
    gauge: Arc<Gauge>,
}

impl Transport for Watched {
    type Link = MemoryLink;
    type Error = MemoryError;

    fn open(
        &self,
        ctx: OpenContext,
    ) -> impl Future<Output = Result<MemoryLink, MemoryError>> + Send + 'static {
        let open = self.inner.open(ctx);
        let gauge = self.gauge.clone();
        async move {
            gauge.up();
            // Dropped with the future when the driver aborts the attempt.
            let mut guard = AttemptGuard(Some(gauge));
            let result = open.await;
            if result.is_ok() {
                guard.0 = None;
            }
            result
        }
    }

    fn close(&self, link: MemoryLink, reason: Reason) -> impl Future<Output = ()> + Send + 'static {
        let close = self.inner.close(link, reason);
        let gauge = self.gauge.clone();
        async move {
            close.await;
            gauge.down();
        }
    }
}

/// One engine on the in-memory transport, and its counters at a point.
struct Rig {
    name: &'static str,
    engine: Engine<Watched>,
    handle: Handle,
    control: MemoryControl,
    gauge: Arc<Gauge>,
    /// Connect attempts the invariants allow so far.
    allowed_attempts: u64,
}

#[derive(Clone, Copy)]
struct Mark {
    stats: Stats,
    connect_calls: u64,
}

/// One line of the table.
struct Row {
    phase: String,
    threads: usize,
    reports: u64,
    handle_stale: u64,
    outages: u64,
    attempts: u64,
    stale: u64,
    coalesced: u64,
    wakeups: u64,
    recovery: Option<Duration>,
    problems: Vec<String>,
}

impl Rig {
    fn start(rt: &Runtime, name: &'static str, config: Config) -> Result<Self, String> {
        let transport = MemoryTransport::new();
        let control = transport.control();
        // Opens take a little while, so that storms overlap the reconnect.
        control.set_default(Plan::SucceedAfter(ms(10)));
        let gauge = Arc::new(Gauge::default());
        let watched = Watched {
            inner: transport,
            gauge: gauge.clone(),
        };
        let engine = {
            let _enter = rt.enter();
            Engine::spawn(config, watched)
        };
        let handle = engine.handle();
        let rig = Self {
            name,
            engine,
            handle,
            control,
            gauge,
            allowed_attempts: 1,
        };
        rig.wait_connected_after(rt, Generation(0))?;
        Ok(rig)
    }

    fn mark(&self) -> Mark {
        Mark {
            stats: self.handle.stats(),
            connect_calls: self.control.connect_calls(),
        }
    }

    /// Waits until a link newer than `generation` is up.
    fn wait_connected_after(&self, rt: &Runtime, generation: Generation) -> Result<(), String> {
        let mut watch = self.handle.watch();
        let waited = rt.block_on(async {
            tokio::time::timeout(
                PATIENCE,
                watch.wait_for(|s| s.state == StateKind::Connected && s.generation > generation),
            )
            .await
        });
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!(
                "{}: no link after generation {generation} within {PATIENCE:?} (state {})",
                self.name,
                self.handle.state()
            )),
        }
    }

    /// Compares the counters since `before` with what the phase allows.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        phase: &str,
        threads: usize,
        tally: &Tally,
        before: Mark,
        expected_attempts: u64,
        recovery: Option<Duration>,
        mut problems: Vec<String>,
    ) -> Row {
        let after = self.mark();
        let (a, b) = (after.stats, before.stats);
        let attempts = after.connect_calls - before.connect_calls;
        self.allowed_attempts += expected_attempts;
        if attempts != expected_attempts {
            problems.push(format!(
                "{attempts} connect attempts, expected {expected_attempts}"
            ));
        }
        if a.attempts - b.attempts != attempts {
            problems.push("driver and transport disagree on attempts".into());
        }
        Row {
            phase: format!("{}: {phase}", self.name),
            threads,
            reports: tally.get(&tally.reports),
            handle_stale: tally.get(&tally.stale),
            outages: a.outages - b.outages,
            attempts,
            stale: a.stale_reports - b.stale_reports,
            coalesced: a.coalesced_reports - b.coalesced_reports,
            wakeups: a.wakeups - b.wakeups,
            recovery,
            problems,
        }
    }

    /// Shuts down and checks the whole run from the transport's log;
    /// returns a summary line and the problems found.
    fn finish(self, rt: &Runtime) -> (String, Vec<String>) {
        let mut problems = Vec::new();
        let Self {
            name,
            engine,
            control,
            gauge,
            allowed_attempts,
            ..
        } = self;
        rt.block_on(async {
            if tokio::time::timeout(PATIENCE, engine.shutdown())
                .await
                .is_err()
            {
                problems.push(format!("{name}: shutdown did not finish"));
            }
        });
        let calls = control.connect_calls();
        if calls != allowed_attempts {
            problems.push(format!(
                "{name}: {calls} connect attempts in all, {allowed_attempts} allowed"
            ));
        }
        if !opened_in_order(&control.log()) {
            problems.push(format!(
                "{name}: a generation was opened twice or out of order"
            ));
        }
        let alive = gauge.max.load(Ordering::Acquire);
        if alive > 1 {
            problems.push(format!("{name}: {alive} attempts or links alive at once"));
        }
        if control.max_open_links() > 1 {
            problems.push(format!(
                "{name}: {} links open at once",
                control.max_open_links()
            ));
        }
        if control.open_links() != 0 || gauge.alive.load(Ordering::Acquire) != 0 {
            problems.push(format!("{name}: a link or attempt outlived the shutdown"));
        }
        let summary = format!(
            "{name:<6} {calls:>3} connect attempts in all; most links open at once: {}; \
             most reconnect loops (attempts in flight or links open) at once: {alive}",
            control.max_open_links()
        );
        (summary, problems)
    }
}

/// Each generation was opened once, in increasing order.
fn opened_in_order(log: &[LogEntry]) -> bool {
    let opens: Vec<Generation> = log
        .iter()
        .filter_map(|e| match e {
            LogEntry::Open(g, _) => Some(*g),
            _ => None,
        })
        .collect();
    opens.windows(2).all(|w| w[0] < w[1])
}

/// Phase 1: the storm.
fn storm(rt: &Runtime, rig: &mut Rig) -> Row {
    let before = rig.mark();
    let g = rig.handle.generation();
    let previous = Generation(g.0.saturating_sub(1));
    let bogus = Generation(g.0 + 1_000);
    let handle = &rig.handle;
    let started = Instant::now();
    let tally = fire(THREADS, REPORTS, |t, i| match (t + i) % 8 {
        0..=4 => handle.report_lost(g, TRANSIENT),
        5 => handle.report_activity(g),
        6 => handle.report_lost(previous, TRANSIENT),
        _ => handle.report_lost(bogus, TRANSIENT),
    });
    let mut problems = Vec::new();
    if let Err(e) = rig.wait_connected_after(rt, g) {
        problems.push(e);
    }
    let recovery = started.elapsed();
    rig.row(
        "storm",
        THREADS,
        &tally,
        before,
        1,
        Some(recovery),
        problems,
    )
}

/// Phase 2: the replaced link's own callbacks, fired late.
fn late_interrupts(rig: &mut Rig) -> Row {
    let before = rig.mark();
    let current = rig.handle.generation();
    let old = rig
        .control
        .reporter(Generation(current.0 - 1))
        .expect("the replaced link's reporter");
    let tally = fire(THREADS, REPORTS / 5, |_, i| {
        if i % 10 == 9 {
            old.resumed()
        } else {
            old.lost(TRANSIENT)
        }
    });
    let mut problems = Vec::new();
    let total = tally.get(&tally.reports);
    if tally.get(&tally.stale) != total {
        problems.push(format!(
            "{} of {total} late reports were not rejected at the handle",
            total - tally.get(&tally.stale)
        ));
    }
    if rig.handle.generation() != current || !rig.handle.is_connected() {
        problems.push("the late reports moved the engine".into());
    }
    rig.row(
        "late interrupts",
        THREADS,
        &tally,
        before,
        0,
        None,
        problems,
    )
}

/// Phase 3: the link is severed again and again, each time under a small
/// storm, and the link before it fires its interrupt late.
fn flapping(rt: &Runtime, rig: &mut Rig) -> Row {
    let before = rig.mark();
    let tally = Tally::default();
    let mut problems = Vec::new();
    let started = Instant::now();
    for _ in 0..FLAPS {
        let g = rig.handle.generation();
        let handle = &rig.handle;
        // Link g's own reporter: `sever()` would pick the newest link, which
        // may already be the next attempt when this thread runs late.
        let link = rig
            .control
            .reporter(g)
            .expect("the current link's reporter");
        let flap = fire(THREADS / 2, 20, |t, i| {
            if t == 0 && i == 0 {
                link.lost(TRANSIENT);
            }
            match i % 4 {
                0..=2 => handle.report_lost(g, TRANSIENT),
                _ => handle.report_lost(Generation(g.0 - 1), TRANSIENT),
            }
        });
        for (sum, part) in [
            (&tally.reports, &flap.reports),
            (&tally.queued, &flap.queued),
            (&tally.coalesced, &flap.coalesced),
            (&tally.stale, &flap.stale),
        ] {
            sum.fetch_add(part.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        if let Err(e) = rig.wait_connected_after(rt, g) {
            problems.push(e);
            break;
        }
        if let Some(old) = rig.control.reporter(g) {
            tally.count(old.lost(TRANSIENT));
        }
    }
    let recovery = started.elapsed() / FLAPS as u32;
    rig.row(
        &format!("flapping x{FLAPS}"),
        THREADS / 2,
        &tally,
        before,
        FLAPS as u64,
        Some(recovery),
        problems,
    )
}

/// Phase 4 (S05): interrupts queued, then the SDK resumes the link itself.
fn resume(rt: &Runtime, rig: &mut Rig) -> Row {
    let before = rig.mark();
    let g = rig.handle.generation();
    let handle = &rig.handle;
    let tally = fire(THREADS, REPORTS, |_, _| handle.report_lost(g, TRANSIENT));
    tally.count(handle.report_resumed(g));
    let mut problems = Vec::new();
    // The link is up again at once (or never left, if the driver took the
    // interrupts and the resume in one batch).
    let mut watch = handle.watch();
    let up = rt.block_on(async {
        tokio::time::timeout(
            PATIENCE,
            watch.wait_for(|s| s.state == StateKind::Connected),
        )
        .await
    });
    if !matches!(up, Ok(Ok(_))) {
        problems.push("the resumed link did not come back".into());
    }
    // A reconnect, if the resume had been lost, would start when the grace
    // ends: look again after it. This wait can only miss a bug, never
    // invent one.
    thread::sleep(GRACE + ms(500));
    if handle.generation() != g || handle.state() != StateKind::Connected {
        problems.push(format!(
            "the link was replaced after its resume (now {} on generation {})",
            handle.state(),
            handle.generation()
        ));
    }
    rig.row(
        "interrupts, resume",
        THREADS,
        &tally,
        before,
        0,
        None,
        problems,
    )
}

/// Phase 5: the same engine, interrupts and no resume: one reconnect once
/// the grace is over.
fn storm_without_resume(rt: &Runtime, rig: &mut Rig) -> Row {
    let before = rig.mark();
    let g = rig.handle.generation();
    let handle = &rig.handle;
    let started = Instant::now();
    let tally = fire(THREADS, REPORTS, |t, i| match (t + i) % 4 {
        0..=2 => handle.report_lost(g, TRANSIENT),
        _ => handle.report_lost(Generation(g.0 - 1), TRANSIENT),
    });
    let mut problems = Vec::new();
    if let Err(e) = rig.wait_connected_after(rt, g) {
        problems.push(e);
    }
    let recovery = started.elapsed();
    rig.row(
        "storm, no resume",
        THREADS,
        &tally,
        before,
        1,
        Some(recovery),
        problems,
    )
}

fn print(rows: &[Row]) {
    println!(
        "{:<26} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9} {:>9} {:>7} {:>9}",
        "phase",
        "threads",
        "reports",
        "outages",
        "connect",
        "stale at",
        "stale in",
        "coalesced",
        "driver",
        "recovery"
    );
    println!(
        "{:<26} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9} {:>9} {:>7} {:>9}",
        "", "", "", "", "attempts", "handle", "all", "", "wakeups", ""
    );
    for r in rows {
        let recovery = r
            .recovery
            .map_or("-".to_string(), |d| format!("{} ms", d.as_millis()));
        println!(
            "{:<26} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9} {:>9} {:>7} {:>9}",
            r.phase,
            r.threads,
            r.reports,
            r.outages,
            r.attempts,
            r.handle_stale,
            r.stale,
            r.coalesced,
            r.wakeups,
            recovery
        );
    }
}

fn main() -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let mut summaries = Vec::new();

    match Rig::start(&rt, "socket", config(3, None)) {
        Ok(mut rig) => {
            rows.push(storm(&rt, &mut rig));
            rows.push(late_interrupts(&mut rig));
            rows.push(flapping(&rt, &mut rig));
            let (summary, found) = rig.finish(&rt);
            summaries.push(summary);
            problems.extend(found);
        }
        Err(e) => problems.push(e),
    }
    match Rig::start(&rt, "sdk", config(4, Some(GRACE))) {
        Ok(mut rig) => {
            rows.push(resume(&rt, &mut rig));
            rows.push(storm_without_resume(&rt, &mut rig));
            let (summary, found) = rig.finish(&rt);
            summaries.push(summary);
            problems.extend(found);
        }
        Err(e) => problems.push(e),
    }

    print(&rows);
    println!();
    for summary in &summaries {
        println!("{summary}");
    }
    println!(
        "\n\"socket\": a transport whose links report their own death; \"sdk\": an SDK \
         that reconnects underneath ({} ms resume grace).",
        GRACE.as_millis()
    );
    println!(
        "Stale at handle: rejected from the atomic snapshot before the driver saw them; \
         stale in all: also those the machine dropped. Recovery: first report to the new \
         link up (flapping: mean per sever)."
    );
    for r in &rows {
        for p in &r.problems {
            problems.push(format!("{}: {p}", r.phase));
        }
    }
    if problems.is_empty() {
        println!(
            "\nOK: one connect attempt per outage, none for resumed links or stale reports, \
             never more than one link or attempt at once."
        );
        ExitCode::SUCCESS
    } else {
        println!("\nINVARIANTS BROKEN:");
        for p in &problems {
            println!("  - {p}");
        }
        ExitCode::FAILURE
    }
}
