//! Fleet simulation: 10,000 engines supervised in one process, on the
//! in-memory transport.
//!
//! ```sh
//! cargo run --release --example fleet                 # 10,000 engines, writes docs/fleet-reconnect.svg
//! cargo run --release --example fleet -- --engines 1000 --svg /tmp/fleet.svg   # a quick run
//! ```
//!
//! Options (or environment variables): `--engines N` (`REDIAL_FLEET_ENGINES`,
//! default 10,000), `--outage-secs S` (default 30), `--rate R` (connections
//! the broker accepts per second once it is back, default 1,000; 0 means no
//! limit), `--idle-secs S` (real seconds of idle CPU measurement, default 5),
//! `--no-immediate` (no immediate first retry after losing a stable link),
//! `--no-probes` (no reachability probes: attempts on the backoff schedule
//! alone, as before the adapters probed),
//! `--svg PATH` (default `docs/fleet-reconnect.svg`; `-` for none),
//! `--default-only` (the broker restart for the default jitter mode only).
//!
//! It measures, in this order:
//!
//! 1. **Memory per idle engine**: peak RSS (`VmHWM` in `/proc/self/status`)
//!    once every engine is connected, minus the RSS before the first engine
//!    was spawned, divided by the number of engines. Liveness is on (60 s).
//! 2. **CPU while idle**, in real time: user + system CPU time of the
//!    process (`/proc/self/stat`) over a few real seconds with every engine
//!    connected and idle; and, on tokio's paused clock, the CPU that ten
//!    virtual minutes of liveness checks and broker heartbeats cost.
//! 3. **A broker restart**, on tokio's paused clock (deterministic): every
//!    link drops at once, the broker refuses every connection for the
//!    outage, then accepts at most `rate` connections per second (extra
//!    attempts are refused, as by a broker whose accept queue is full).
//!    For each jitter mode: connection attempts per 100 ms, attempts per
//!    engine (the "work" of the AWS analysis), and the time until 99 % and
//!    100 % of the engines are back (its "completion time"). The engines
//!    probe every 500 ms once a backoff wait is over, as the AMQP and MQTT
//!    adapters do by default; a probe (a TCP connect and one frame) is
//!    answered whenever the broker is up, without counting against the
//!    handshake rate, and is counted apart from attempts.
//!
//! Every engine has its own seed. The broker gate is a wrapper around
//! [`MemoryTransport`] defined here, so the library is unchanged.

use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plotters::prelude::*;
use redial::backoff::{Backoff, Jitter};
use redial::machine::{Config, ErrorKind, ProbeOutcome, Reason, StateKind};
use redial::runtime::{DEFAULT_PROBE_INTERVAL, Engine, Event, OpenContext, Transport};
use redial::testing::{MemoryControl, MemoryError, MemoryLink, MemoryTransport};
use tokio::sync::Notify;

/// Width of one histogram bin.
const BIN: Duration = Duration::from_millis(100);
/// Simulated time after which a run gives up waiting for the last engines.
const GIVE_UP_AFTER: Duration = Duration::from_secs(3600);

/// The command line.
#[derive(Debug, Clone)]
struct Options {
    engines: usize,
    outage: Duration,
    rate_per_sec: u64,
    idle: Duration,
    immediate_first_retry: bool,
    probes: bool,
    svg: Option<PathBuf>,
    /// Child mode: measure only the memory of the engines' event rings.
    rings_only: bool,
    /// Child mode: measure engines on a transport that keeps no state.
    bare_only: bool,
    /// Run the broker restart for the default jitter mode only.
    default_only: bool,
}

impl Options {
    fn parse() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let number = |flag: &str, env: Option<&str>, default: u64| -> u64 {
            value(flag)
                .or_else(|| env.and_then(|e| std::env::var(e).ok()))
                .map(|v| v.replace('_', "").parse().expect("a number"))
                .unwrap_or(default)
        };
        let svg = match value("--svg").as_deref() {
            Some("-") => None,
            Some(path) => Some(PathBuf::from(path)),
            None => Some(PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../docs/fleet-reconnect.svg"
            ))),
        };
        Self {
            engines: number("--engines", Some("REDIAL_FLEET_ENGINES"), 10_000) as usize,
            outage: Duration::from_secs(number("--outage-secs", None, 30)),
            rate_per_sec: number("--rate", None, 1_000),
            idle: Duration::from_secs(number("--idle-secs", None, 5)),
            immediate_first_retry: !args.iter().any(|a| a == "--no-immediate"),
            probes: !args.iter().any(|a| a == "--no-probes"),
            svg,
            rings_only: args.iter().any(|a| a == "--rings-only"),
            bare_only: args.iter().any(|a| a == "--bare-only"),
            default_only: args.iter().any(|a| a == "--default-only"),
        }
    }
}

// ---- the simulated broker ------------------------------------------------

/// What the broker saw after the restart, per 100 ms bin.
#[derive(Debug, Default, Clone)]
struct Bins {
    attempts: Vec<u64>,
    accepted: Vec<u64>,
    probes: Vec<u64>,
}

impl Bins {
    fn bump(v: &mut Vec<u64>, bin: usize) {
        if v.len() <= bin {
            v.resize(bin + 1, 0);
        }
        v[bin] += 1;
    }
}

/// The broker all engines connect to: refuses everything until
/// `down_until`, then accepts at most `per_bin` connections per bin.
#[derive(Debug)]
struct Broker {
    state: Mutex<BrokerState>,
    accepted_total: AtomicU64,
    engines: u64,
    all_back: Notify,
}

#[derive(Debug, Default)]
struct BrokerState {
    /// When the restart happened; `None` before it (no limits, no records).
    restart: Option<tokio::time::Instant>,
    down_until: Option<tokio::time::Instant>,
    per_bin: Option<u64>,
    bins: Bins,
}

impl Broker {
    fn new(engines: usize) -> Self {
        Self {
            state: Mutex::new(BrokerState::default()),
            accepted_total: AtomicU64::new(0),
            engines: engines as u64,
            all_back: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BrokerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The broker restarts now: it refuses connections for `outage`, then
    /// accepts `rate_per_sec` per second (0: no limit).
    fn restart(&self, outage: Duration, rate_per_sec: u64) {
        let now = tokio::time::Instant::now();
        let mut s = self.lock();
        s.restart = Some(now);
        s.down_until = Some(now + outage);
        s.per_bin =
            (rate_per_sec > 0).then(|| (rate_per_sec * BIN.as_millis() as u64 / 1000).max(1));
        self.accepted_total.store(0, Ordering::Relaxed);
    }

    /// One probe: answered whenever the broker is up (a TCP accept and one
    /// frame, not a handshake: the rate limit does not apply).
    fn probe(&self) -> ProbeOutcome {
        let now = tokio::time::Instant::now();
        let mut s = self.lock();
        let Some(restart) = s.restart else {
            return ProbeOutcome::Reachable;
        };
        let bin = ((now - restart).as_millis() / BIN.as_millis()) as usize;
        Bins::bump(&mut s.bins.probes, bin);
        if s.down_until.is_some_and(|d| now < d) {
            ProbeOutcome::Unreachable
        } else {
            ProbeOutcome::Reachable
        }
    }

    /// One connection attempt: accepted or refused.
    fn admit(&self) -> Result<(), MemoryError> {
        let now = tokio::time::Instant::now();
        let mut s = self.lock();
        let Some(restart) = s.restart else {
            return Ok(());
        };
        let bin = ((now - restart).as_millis() / BIN.as_millis()) as usize;
        Bins::bump(&mut s.bins.attempts, bin);
        let refused = MemoryError {
            kind: ErrorKind::Transient,
        };
        if s.down_until.is_some_and(|d| now < d) {
            return Err(refused);
        }
        let accepted_here = s.bins.accepted.get(bin).copied().unwrap_or(0);
        if s.per_bin.is_some_and(|limit| accepted_here >= limit) {
            return Err(refused);
        }
        Bins::bump(&mut s.bins.accepted, bin);
        drop(s);
        if self.accepted_total.fetch_add(1, Ordering::Relaxed) + 1 >= self.engines {
            self.all_back.notify_one();
        }
        Ok(())
    }
}

/// The in-memory transport behind the broker's gate.
#[derive(Debug, Clone)]
struct FleetTransport {
    memory: MemoryTransport,
    broker: Arc<Broker>,
}

impl Transport for FleetTransport {
    type Link = MemoryLink;
    type Error = MemoryError;

    fn open(
        &self,
        ctx: OpenContext,
    ) -> impl Future<Output = Result<MemoryLink, MemoryError>> + Send + 'static {
        let broker = self.broker.clone();
        let open = self.memory.open(ctx);
        async move {
            broker.admit()?;
            open.await
        }
    }

    fn close(&self, link: MemoryLink, reason: Reason) -> impl Future<Output = ()> + Send + 'static {
        self.memory.close(link, reason)
    }

    fn probe(&self, _endpoint: usize) -> impl Future<Output = ProbeOutcome> + Send + 'static {
        std::future::ready(self.broker.probe())
    }
}

/// One engine of the fleet with its remote control.
struct Member {
    engine: Engine<FleetTransport>,
    control: MemoryControl,
}

fn spawn_fleet(
    n: usize,
    broker: &Arc<Broker>,
    heartbeat: Option<Duration>,
    config: impl Fn(u64) -> Config,
) -> Vec<Member> {
    (0..n)
        .map(|i| {
            let memory = match heartbeat {
                Some(every) => MemoryTransport::with_heartbeat(every),
                None => MemoryTransport::new(),
            };
            let control = memory.control();
            let transport = FleetTransport {
                memory,
                broker: broker.clone(),
            };
            Member {
                engine: Engine::spawn(config(i as u64 + 1), transport),
                control,
            }
        })
        .collect()
}

async fn all_connected(fleet: &[Member]) {
    for m in fleet {
        m.engine.handle().wait_for(StateKind::Connected).await;
    }
}

// ---- process accounting --------------------------------------------------

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of the process so far (`/proc/self/stat`, in
/// clock ticks of 1/100 s, Linux's fixed USER_HZ).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

// ---- the phases ----------------------------------------------------------

fn idle_config(seed: u64) -> Config {
    Config::builder()
        .seed(seed)
        .liveness_timeout(Duration::from_secs(60))
        .build()
        .expect("config")
}

/// Phase 1 and 2a: memory and real-time idle CPU.
fn measure_idle(opts: &Options) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rss_before = status_kib("VmRSS:");
    let broker = Arc::new(Broker::new(opts.engines));
    let started = Instant::now();
    let fleet = rt.block_on(async {
        let fleet = spawn_fleet(opts.engines, &broker, None, idle_config);
        all_connected(&fleet).await;
        fleet
    });
    let spawn_time = started.elapsed();
    let rings = rings_per_engine(opts.engines);
    let bare = bare_per_engine(opts.engines);
    let hwm = status_kib("VmHWM:");
    let rss = status_kib("VmRSS:");
    let per_engine =
        |kib: u64| kib.saturating_sub(rss_before) as f64 * 1024.0 / opts.engines as f64;
    println!(
        "== memory ({} engines, liveness 60 s, multi-thread runtime with 2 workers)",
        opts.engines
    );
    println!("RSS before spawning:           {rss_before} KiB");
    println!("peak RSS, all connected:       {hwm} KiB (VmHWM)");
    println!(
        "per idle engine:               {:.0} bytes (peak), {:.0} bytes (current RSS)",
        per_engine(hwm),
        per_engine(rss)
    );
    match rings {
        Some(bytes) => println!(
            "  event ring, per subscribed engine: {bytes:.0} bytes more (a broadcast channel of 1024 events of {} bytes, measured alone; made by the first subscriber, none here)",
            std::mem::size_of::<Event>()
        ),
        None => println!("  event ring: not measured (the child process failed)"),
    }
    match bare {
        Some(bytes) => println!(
            "  engine alone: {bytes:.0} bytes (the same engines on a transport that keeps no state, measured in a child process); the in-memory transport's own state is the rest"
        ),
        None => println!("  engine alone: not measured (the child process failed)"),
    }
    println!(
        "spawn + connect all:           {:.0} ms (real time)",
        spawn_time.as_secs_f64() * 1e3
    );

    let cpu0 = cpu_time();
    let wall0 = Instant::now();
    rt.block_on(async { tokio::time::sleep(opts.idle).await });
    let cpu = cpu_time().saturating_sub(cpu0);
    let wall = wall0.elapsed();
    println!("== CPU while idle, real time ({:.1} s)", wall.as_secs_f64());
    println!(
        "process CPU:                   {} ms over {:.1} s = {:.2} % of one core",
        cpu.as_millis(),
        wall.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
    );
    let connected = fleet
        .iter()
        .filter(|m| m.engine.handle().is_connected())
        .count();
    println!(
        "still connected:               {connected} of {}",
        opts.engines
    );
    drop(fleet);
    drop(rt);
}

/// Phase 2b: the CPU that liveness checks and heartbeats cost, on the
/// paused clock (CPU is real, time is virtual).
fn measure_liveness(opts: &Options) {
    let rt = paused_runtime();
    let virtual_span = Duration::from_secs(1800);
    let broker = Arc::new(Broker::new(opts.engines));
    let (cpu, connected) = rt.block_on(async {
        // A broker heartbeat every 30 s, as RabbitMQ sends at half a 60 s timeout.
        let fleet = spawn_fleet(
            opts.engines,
            &broker,
            Some(Duration::from_secs(30)),
            idle_config,
        );
        all_connected(&fleet).await;
        let cpu0 = cpu_time();
        tokio::time::sleep(virtual_span).await;
        let cpu = cpu_time().saturating_sub(cpu0);
        let connected = fleet
            .iter()
            .filter(|m| m.engine.handle().is_connected())
            .count();
        let outages: u64 = fleet
            .iter()
            .map(|m| m.engine.handle().stats().outages)
            .sum();
        assert_eq!(outages, 0, "an idle link was declared dead");
        (cpu, connected)
    });
    drop(rt);
    let checks = opts.engines as f64 * virtual_span.as_secs_f64() / 30.0;
    println!(
        "== CPU while idle, paused clock ({} virtual s, liveness 60 s: a check and a heartbeat every 30 s per engine)",
        virtual_span.as_secs()
    );
    println!(
        "process CPU:                   {} ms for {:.0} checks = {:.2} us per engine per 30 s",
        cpu.as_millis(),
        checks,
        cpu.as_secs_f64() * 1e6 / checks
    );
    println!(
        "as a share of one core:        {:.4} % for the whole fleet",
        cpu.as_secs_f64() / virtual_span.as_secs_f64() * 100.0
    );
    println!(
        "still connected:               {connected} of {}",
        opts.engines
    );
}

/// The event ring alone: each engine's `broadcast::channel(1024)` of
/// events, measured in a child process so that the fleet's own memory does
/// not blur it.
fn rings_per_engine(engines: usize) -> Option<f64> {
    child_bytes_per_engine("--rings-only", engines)
}

/// The engine without its transport's state: the same engines on a
/// transport whose links are `()` and which remembers nothing, measured in
/// a child process.
fn bare_per_engine(engines: usize) -> Option<f64> {
    child_bytes_per_engine("--bare-only", engines)
}

/// Runs this program in a child mode and reads the bytes per engine it prints.
fn child_bytes_per_engine(mode: &str, engines: usize) -> Option<f64> {
    let out = std::process::Command::new(std::env::current_exe().ok()?)
        .args([mode, "--engines", &engines.to_string()])
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// A transport that keeps nothing: every open succeeds with a `()` link.
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

/// Child mode for [`bare_per_engine`]: prints bytes per connected engine.
fn measure_bare(engines: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let before = status_kib("VmRSS:");
    let fleet: Vec<Engine<Bare>> = rt.block_on(async {
        let fleet: Vec<_> = (0..engines)
            .map(|i| Engine::spawn(idle_config(i as u64 + 1), Bare))
            .collect();
        for engine in &fleet {
            engine.handle().wait_for(StateKind::Connected).await;
        }
        fleet
    });
    let after = status_kib("VmHWM:");
    println!(
        "{:.0}",
        after.saturating_sub(before) as f64 * 1024.0 / engines as f64
    );
    drop(fleet);
}

/// Child mode for [`rings_per_engine`]: prints bytes per ring.
fn measure_rings(engines: usize) {
    let before = status_kib("VmRSS:");
    let rings: Vec<_> = (0..engines)
        .map(|_| tokio::sync::broadcast::channel::<Event>(1024))
        .collect();
    let after = status_kib("VmHWM:");
    println!(
        "{:.0}",
        after.saturating_sub(before) as f64 * 1024.0 / engines as f64
    );
    drop(rings);
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// What one broker restart produced for one jitter mode.
#[derive(Debug, Clone)]
struct StormResult {
    name: &'static str,
    bins: Bins,
    attempts: u64,
    /// Attempts made while the broker was down (refused whatever the load).
    attempts_down: u64,
    peak_bin: u64,
    /// The most attempts in one bin once the broker was back.
    peak_bin_up: u64,
    /// Probes (TCP connects that open nothing) in the whole run.
    probes: u64,
    /// Engines back when the run ended.
    back: u64,
    /// Time after the restart until 99 % and 100 % were back (`None`: not by the end).
    t99: Option<Duration>,
    t100: Option<Duration>,
    real: Duration,
}

fn storm(opts: &Options, name: &'static str, jitter: Jitter) -> StormResult {
    let rt = paused_runtime();
    let broker = Arc::new(Broker::new(opts.engines));
    let backoff = Backoff::default().with_jitter(jitter).expect("backoff");
    let started = Instant::now();
    rt.block_on(async {
        // Liveness off: it plays no part while links are down, and without
        // heartbeats it would drop the idle links after 60 s.
        let fleet = spawn_fleet(opts.engines, &broker, None, |seed| {
            let builder = Config::builder()
                .seed(seed)
                .backoff(backoff.clone())
                .immediate_first_retry(opts.immediate_first_retry)
                .no_liveness_timeout();
            let builder = if opts.probes {
                builder.probe_interval(DEFAULT_PROBE_INTERVAL)
            } else {
                builder.no_probe_interval()
            };
            builder.build().expect("config")
        });
        all_connected(&fleet).await;
        // Up for longer than the stable period (10 s), as a fleet would be.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let back = broker.all_back.notified();
        tokio::pin!(back);
        back.as_mut().enable();
        broker.restart(opts.outage, opts.rate_per_sec);
        for m in &fleet {
            m.control.sever();
        }
        let _ = tokio::time::timeout(GIVE_UP_AFTER, back).await;
        drop(fleet);
    });
    drop(rt);
    let bins = broker.lock().bins.clone();
    let quantile = |q: f64| {
        let target = (q * opts.engines as f64).ceil() as u64;
        let mut sum = 0;
        bins.accepted
            .iter()
            .position(|&c| {
                sum += c;
                sum >= target
            })
            .map(|i| BIN * (i as u32 + 1))
    };
    StormResult {
        name,
        attempts: bins.attempts.iter().sum(),
        attempts_down: bins
            .attempts
            .iter()
            .take((opts.outage.as_millis() / BIN.as_millis()) as usize)
            .sum(),
        peak_bin: bins.attempts.iter().copied().max().unwrap_or(0),
        peak_bin_up: bins
            .attempts
            .iter()
            .skip((opts.outage.as_millis() / BIN.as_millis()) as usize)
            .copied()
            .max()
            .unwrap_or(0),
        back: bins.accepted.iter().sum(),
        probes: bins.probes.iter().sum(),
        t99: quantile(0.99),
        t100: quantile(1.0),
        bins,
        real: started.elapsed(),
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || format!(">{} s", GIVE_UP_AFTER.as_secs()),
        |d| format!("{:.1} s", d.as_secs_f64()),
    )
}

// ---- the plot ------------------------------------------------------------

const COLOURS: [RGBColor; 5] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
];

fn plot(
    path: &PathBuf,
    opts: &Options,
    results: &[StormResult],
) -> Result<(), Box<dyn std::error::Error>> {
    // Un-jittered waves can take far longer than the rest: the axis covers
    // the jittered modes, the captions give every mode's figures.
    let horizon = results
        .iter()
        .filter(|r| r.name != "none")
        .filter_map(|r| r.t100)
        .max()
        .unwrap_or(Duration::from_secs(120))
        .as_secs_f64()
        .ceil()
        + 10.0;
    let panels = results.len() + 1;
    let root = SVGBackend::new(path, (1000, 170 * panels as u32 + 60)).into_drawing_area();
    root.fill(&WHITE)?;
    let rate = if opts.rate_per_sec == 0 {
        "no limit".to_string()
    } else {
        format!("{} connections/s", opts.rate_per_sec)
    };
    let root = root.titled(
        &format!(
            "{} engines, broker down {} s, then accepting {rate}: connection attempts per 100 ms (log scale)",
            opts.engines,
            opts.outage.as_secs()
        ),
        ("sans-serif", 16),
    )?;
    let areas = root.split_evenly((panels, 1));
    let y_max = results
        .iter()
        .map(|r| r.peak_bin)
        .max()
        .unwrap_or(1)
        .max(10) as f64
        * 2.0;
    for ((area, r), colour) in areas.iter().zip(results).zip(COLOURS) {
        let mut chart = ChartBuilder::on(area)
            .margin(5)
            .x_label_area_size(20)
            .y_label_area_size(50)
            .caption(
                format!(
                    "{}: {:.2} attempts per engine, 99 % back after {}, {}",
                    r.name,
                    r.attempts as f64 / opts.engines as f64,
                    secs(r.t99),
                    match r.t100 {
                        Some(t) => format!("all after {:.1} s", t.as_secs_f64()),
                        None => format!(
                            "{:.0} % back after {} s",
                            r.back as f64 * 100.0 / opts.engines as f64,
                            GIVE_UP_AFTER.as_secs()
                        ),
                    }
                ),
                ("sans-serif", 13),
            )
            .build_cartesian_2d(0f64..horizon, (1f64..y_max).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_labels(4)
            .x_label_formatter(&|x| format!("{x:.0} s"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        // One vertical line per non-empty bin: visible however narrow the bin.
        let x_of = |i: usize| i as f64 * BIN.as_secs_f64();
        chart.draw_series(
            r.bins
                .attempts
                .iter()
                .enumerate()
                .filter(|(i, c)| **c > 0 && x_of(*i) <= horizon)
                .map(|(i, &c)| {
                    PathElement::new(
                        vec![(x_of(i), 1.0), (x_of(i), c as f64)],
                        colour.stroke_width(1),
                    )
                }),
        )?;
        // The broker comes back (grey) and 99 % are back (black).
        let up = opts.outage.as_secs_f64();
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(up, 1.0), (up, y_max)],
            RGBColor(0xa0, 0xa0, 0xa0).stroke_width(1),
        )))?;
        if let Some(t) = r.t99.map(|t| t.as_secs_f64()).filter(|t| *t <= horizon) {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(t, 1.0), (t, y_max)],
                BLACK.stroke_width(1),
            )))?;
        }
    }
    // The last panel: share of the fleet back, per mode.
    let area = &areas[panels - 1];
    let mut chart = ChartBuilder::on(area)
        .margin(5)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .caption("share of the fleet reconnected (%)", ("sans-serif", 13))
        .build_cartesian_2d(0f64..horizon, 0f64..100f64)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_labels(5)
        .x_label_formatter(&|x| format!("{x:.0} s"))
        .y_label_formatter(&|y| format!("{y:.0} %"))
        .x_desc("time after the restart; grey: the broker is back, black: 99 % reconnected")
        .draw()?;
    for (r, colour) in results.iter().zip(COLOURS) {
        let mut sum = 0u64;
        let points: Vec<(f64, f64)> = r
            .bins
            .accepted
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                sum += c;
                (
                    (i + 1) as f64 * BIN.as_secs_f64(),
                    sum as f64 * 100.0 / opts.engines as f64,
                )
            })
            .take_while(|(x, _)| *x <= horizon)
            .collect();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(r.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() {
    let opts = Options::parse();
    if opts.rings_only {
        measure_rings(opts.engines);
        return;
    }
    if opts.bare_only {
        measure_bare(opts.engines);
        return;
    }
    println!(
        "fleet: {} engines, outage {} s, broker accepts {} connections/s afterwards (0: no limit)",
        opts.engines,
        opts.outage.as_secs(),
        opts.rate_per_sec
    );
    measure_idle(&opts);
    measure_liveness(&opts);

    let modes: [(&'static str, Jitter); 5] = [
        ("none", Jitter::None),
        ("full", Jitter::Full),
        ("equal", Jitter::Equal),
        ("decorrelated", Jitter::Decorrelated),
        (
            "proportional 0.5 (default)",
            Jitter::Proportional { fraction: 0.5 },
        ),
    ];
    let floor = opts.outage.as_secs_f64()
        + if opts.rate_per_sec > 0 {
            opts.engines as f64 / opts.rate_per_sec as f64
        } else {
            0.0
        };
    println!(
        "== broker restart (paused clock; backoff 1 s x2 capped at 60 s, immediate first retry {}, \
         probes {}; the fastest possible recovery is {floor:.1} s)",
        if opts.immediate_first_retry {
            "on"
        } else {
            "off"
        },
        if opts.probes { "every 500 ms" } else { "off" },
    );
    println!(
        "{:<28} {:>12} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>7} {:>10} {:>7}",
        "jitter",
        "attempts/eng",
        "while down",
        "after",
        "peak/100ms",
        "after up",
        "99 % back",
        "all back",
        "back %",
        "probes/eng",
        "real"
    );
    let mut results = Vec::new();
    let modes = if opts.default_only {
        &modes[4..]
    } else {
        &modes[..]
    };
    for &(name, jitter) in modes {
        let r = storm(&opts, name, jitter);
        let per_engine = |a: u64| a as f64 / opts.engines as f64;
        println!(
            "{:<28} {:>12.2} {:>10.2} {:>8.2} {:>10} {:>10} {:>10} {:>10} {:>7.1} {:>10.1} {:>5.1} s",
            r.name,
            per_engine(r.attempts),
            per_engine(r.attempts_down),
            per_engine(r.attempts - r.attempts_down),
            r.peak_bin,
            r.peak_bin_up,
            secs(r.t99),
            secs(r.t100),
            per_engine(r.back) * 100.0,
            per_engine(r.probes),
            r.real.as_secs_f64()
        );
        results.push(r);
    }
    // Attempts per second, up to the last jittered engine's return.
    let until = results
        .iter()
        .filter(|r| r.name != "none")
        .filter_map(|r| r.t100)
        .max()
        .map_or(120, |t| t.as_secs() as usize + 1);
    println!("== attempts per second after the restart (the plot has 100 ms bins)");
    let mut header = format!("{:>5}  ", "s");
    for r in &results {
        let _ = write!(header, " {:>8}", r.name.split(' ').next().unwrap_or(r.name));
    }
    println!("{header}");
    for second in 0..until {
        let mut line = format!("{second:>5}  ");
        for r in &results {
            let s: u64 = r.bins.attempts.iter().skip(second * 10).take(10).sum();
            let _ = write!(line, " {s:>8}");
        }
        println!("{line}");
    }
    if let Some(path) = &opts.svg {
        match plot(path, &opts, &results) {
            Ok(()) => println!("plot written to {}", path.display()),
            Err(e) => eprintln!("plot failed: {e}"),
        }
    }
}
