//! Shared helpers for the engine-level tests (the `engine` test binary:
//! `tests/engine/scenarios_*.rs`, `liveness.rs`, `observability.rs`): an event recorder, a
//! probing transport over the in-memory one, waits on the snapshot, and the
//! reference backoff schedule.
//!
//! `tests/engine/main.rs` declares it once as `mod engine` (the broker
//! helpers in `support/mod.rs` are not needed here).

// Each test binary uses a different part of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use redial::backoff::{Backoff, BackoffState};
use redial::machine::{Config, ConfigBuilder, ErrorKind, FailCause, Generation, Reason, StateKind};
use redial::runtime::{
    Engine, Event, EventStream, Handle, OpenContext, Report, Snapshot, Transport,
};
use redial::testing::{LogEntry, MemoryControl, MemoryError, MemoryLink, MemoryTransport};
use tokio::time::Instant;

/// The seed of every single-engine test.
pub const SEED: u64 = 0x5EED;
/// The scenarios' cap on a backoff delay (dmax).
pub const DMAX: Duration = Duration::from_secs(60);
/// The default stable period: a link that lived this long starts a fresh outage when lost.
pub const STABLE: Duration = Duration::from_secs(10);

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

pub fn secs(v: u64) -> Duration {
    Duration::from_secs(v)
}

/// The scenarios' defaults (d0 = 1 s, x2, cap 60 s, jitter x U(0.5, 1.5): the
/// crate's default policy), a fixed seed, and the watchdog off: the in-memory
/// links send no heartbeats, so tests that are not about liveness would see
/// them declared dead after 60-90 s of virtual time.
pub fn builder() -> ConfigBuilder {
    Config::builder().seed(SEED).no_liveness_timeout()
}

pub fn config() -> Config {
    builder().build().expect("valid config")
}

/// The delays the machine draws for `policy` and `seed`, in order: one
/// `BackoffState` per machine, reset (not reseeded) at every new outage,
/// one draw per scheduled wait except an immediate first retry.
pub struct Schedule {
    policy: Backoff,
    state: BackoffState,
}

impl Schedule {
    pub fn new(policy: &Backoff, seed: u64) -> Self {
        Self {
            policy: policy.clone(),
            state: BackoffState::new(policy, seed),
        }
    }

    /// The crate's default policy with [`SEED`].
    pub fn default_policy() -> Self {
        Self::new(&Backoff::default(), SEED)
    }

    /// A new outage starts: the next draw is step 1 again.
    pub fn reset(&mut self) {
        self.state.reset(&self.policy);
    }

    pub fn next(&mut self) -> Duration {
        ms(self.state.next_delay_ms(&self.policy))
    }

    pub fn policy(&self) -> &Backoff {
        &self.policy
    }
}

/// The attempt times of an outage that starts at `lost_at` after a stable
/// link, against a broker that refuses until `back`: an immediate first
/// retry, then one drawn delay per failure; the first attempt at or after
/// `back` succeeds.
pub fn outage_schedule(lost_at: Instant, back: Instant, schedule: &mut Schedule) -> Vec<Instant> {
    schedule.reset();
    let mut times = vec![lost_at];
    while *times.last().unwrap() < back {
        let next = *times.last().unwrap() + schedule.next();
        times.push(next);
    }
    assert_ne!(times[times.len() - 2], back, "pick another seed: a tie");
    times
}

/// Runs every task until the runtime is idle, then moves the paused clock
/// by 1 ms. With paused time the clock only auto-advances once no task can
/// make progress, so when this returns the driver has handled everything
/// it was woken for. Only for `start_paused` tests.
pub async fn idle() {
    tokio::time::sleep(ms(1)).await;
}

/// Polls `fut` once: for starting a request (e.g. `Handle::shutdown`) whose
/// effect must be queued before the driver runs again.
pub async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// A wait longer than any scenario. With a paused clock an idle runtime
/// jumps straight to it, so a wait the engine never satisfies fails at once
/// instead of hanging; real-time tests never reach it (they set their own).
const NEVER: Duration = Duration::from_secs(7 * 86_400);

/// Awaits `fut`, panicking after [`NEVER`] (virtual time when paused).
pub async fn guarded<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(NEVER, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: still waiting after a week"),
    }
}

/// Waits until the snapshot satisfies `f`.
pub async fn wait_until(handle: &Handle, f: impl FnMut(&Snapshot) -> bool) -> Snapshot {
    let mut rx = handle.watch();
    let waited = guarded("snapshot condition", rx.wait_for(f)).await;
    *waited.expect("the driver stopped first")
}

/// Waits until the transport saw at least `n` opens.
pub async fn wait_connect_calls(control: &MemoryControl, n: u64) {
    guarded("connect calls", control.wait_connect_calls(n)).await;
}

/// Waits until link `generation` is up.
pub async fn connected_on(handle: &Handle, generation: Generation) -> Snapshot {
    wait_until(handle, |s| {
        s.state == StateKind::Connected && s.generation == generation
    })
    .await
}

/// Waits until some link newer than `generation` is up.
pub async fn connected_after(handle: &Handle, generation: Generation) -> Snapshot {
    wait_until(handle, |s| {
        s.state == StateKind::Connected && s.generation > generation
    })
    .await
}

/// Every event the engine broadcasts, read without ever skipping one.
pub struct Recorder {
    rx: EventStream,
    events: Vec<Event>,
}

impl Recorder {
    pub fn new(handle: &Handle) -> Self {
        Self::from_receiver(handle.events())
    }

    /// Records from a subscription taken earlier (e.g. before the engine started).
    pub fn from_receiver(rx: EventStream) -> Self {
        Self {
            rx,
            events: Vec::new(),
        }
    }

    /// Takes every event sent so far; panics if the channel dropped some.
    pub fn drain(&mut self) -> &[Event] {
        loop {
            match self.rx.try_recv() {
                Some(Ok(event)) => self.events.push(event),
                None => break,
                Some(Err(lagged)) => panic!("the recorder missed {} events", lagged.missed),
            }
        }
        &self.events
    }

    /// Forgets what was recorded so far (after taking what was sent).
    pub fn clear(&mut self) {
        self.take();
    }

    /// Takes what was recorded plus everything sent so far, in one go (on a
    /// multi-thread runtime an `attempts()` then `clear()` could lose an
    /// event sent in between).
    pub fn take(&mut self) -> Vec<Event> {
        self.drain();
        std::mem::take(&mut self.events)
    }

    /// Waits for the next event matching `f` and returns it with the
    /// (virtual) time it was received, which is the time it was sent.
    pub async fn next_matching(&mut self, mut f: impl FnMut(&Event) -> bool) -> (Instant, Event) {
        loop {
            let event = match guarded("event", self.rx.recv()).await {
                Some(Ok(event)) => event,
                Some(Err(e)) => panic!("event stream: {e}"),
                None => panic!("event stream: the engine is gone"),
            };
            self.events.push(event.clone());
            if f(&event) {
                return (Instant::now(), event);
            }
        }
    }

    /// The state trace: `(from, to, reason)` of every `StateChanged`.
    pub fn states(&mut self) -> Vec<(StateKind, StateKind, Reason)> {
        self.drain()
            .iter()
            .filter_map(|e| match e {
                Event::StateChanged {
                    from, to, reason, ..
                } => Some((*from, *to, *reason)),
                _ => None,
            })
            .collect()
    }

    /// The attempt trace: `(generation, attempt)` of every `AttemptStarted`.
    pub fn attempts(&mut self) -> Vec<(Generation, u32)> {
        attempts_of(self.drain())
    }

    pub fn attempt_numbers(&mut self) -> Vec<u32> {
        self.attempts().into_iter().map(|(_, a)| a).collect()
    }

    /// `(generation, attempt, kind, error text)` of every `AttemptFailed`.
    pub fn failures(&mut self) -> Vec<(Generation, u32, ErrorKind, String)> {
        self.drain()
            .iter()
            .filter_map(|e| match e {
                Event::AttemptFailed {
                    generation,
                    attempt,
                    kind,
                    error,
                    ..
                } => Some((*generation, *attempt, *kind, error.to_string())),
                _ => None,
            })
            .collect()
    }

    /// `(cause, error text)` of every `GaveUp`.
    pub fn gave_up(&mut self) -> Vec<(FailCause, Option<String>)> {
        self.drain()
            .iter()
            .filter_map(|e| match e {
                Event::GaveUp { cause, error, .. } => {
                    Some((*cause, error.as_ref().map(|e| e.to_string())))
                }
                _ => None,
            })
            .collect()
    }

    pub fn liveness_lost(&mut self) -> Vec<Generation> {
        self.drain()
            .iter()
            .filter_map(|e| match e {
                Event::LivenessLost { generation } => Some(*generation),
                _ => None,
            })
            .collect()
    }
}

/// `(generation, attempt)` of every `AttemptStarted` in `events`.
pub fn attempts_of(events: &[Event]) -> Vec<(Generation, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::AttemptStarted {
                generation,
                attempt,
                ..
            } => Some((*generation, *attempt)),
            _ => None,
        })
        .collect()
}

/// What the probe saw when the driver asked for a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRecord {
    /// When the open started (virtual time with a paused clock).
    pub at: Instant,
    pub generation: Generation,
    pub attempt: u32,
    /// `Handle::is_reconnecting()` while the open runs.
    pub reconnecting: bool,
    /// `Handle::state()` while the open runs.
    pub state: StateKind,
    /// Links of this transport still open when the open started.
    pub open_links: u64,
}

#[derive(Default)]
struct ProbeState {
    opens: Mutex<Vec<OpenRecord>>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    close_reports: Mutex<Vec<(Generation, Report)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts an open as in flight until its future ends or is dropped (aborted).
struct InFlight(Arc<ProbeState>);

impl InFlight {
    fn enter(state: Arc<ProbeState>) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        state.max_in_flight.fetch_max(now, Ordering::AcqRel);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The in-memory transport with a probe around it: it records every open
/// (time, generation, attempt, what the handle said meanwhile), counts the
/// opens in flight, and on request behaves like an SDK whose link fires its
/// own interrupt callback while we close it, closes slowly, or panics inside
/// an open (an error that is not a transport error).
#[derive(Clone)]
pub struct Probe {
    inner: MemoryTransport,
    control: MemoryControl,
    state: Arc<ProbeState>,
    hangup_on_close: bool,
    close_delay: Option<Duration>,
    panic_on_open: Option<usize>,
}

/// The test's view of a [`Probe`].
#[derive(Clone)]
pub struct ProbeLog {
    state: Arc<ProbeState>,
}

impl Probe {
    pub fn new(inner: MemoryTransport) -> Self {
        Self {
            control: inner.control(),
            inner,
            state: Arc::default(),
            hangup_on_close: false,
            close_delay: None,
            panic_on_open: None,
        }
    }

    /// A probe over `MemoryTransport::new()`.
    pub fn memory() -> Self {
        Self::new(MemoryTransport::new())
    }

    /// Closing a link makes it report its own loss first (an SDK's
    /// UNEXPECTED_HANGUP interrupt fired by our own teardown, S08).
    pub fn hangup_on_close(mut self) -> Self {
        self.hangup_on_close = true;
        self
    }

    /// Every close takes `delay` before it completes.
    pub fn slow_close(mut self, delay: Duration) -> Self {
        self.close_delay = Some(delay);
        self
    }

    /// The `n`-th open (1-based, counting every open) panics before it
    /// reaches the broker, so it uses none of the in-memory plans.
    pub fn panic_on_open(mut self, n: usize) -> Self {
        self.panic_on_open = Some(n);
        self
    }

    pub fn control(&self) -> MemoryControl {
        self.control.clone()
    }

    pub fn log(&self) -> ProbeLog {
        ProbeLog {
            state: self.state.clone(),
        }
    }
}

impl ProbeLog {
    pub fn opens(&self) -> Vec<OpenRecord> {
        lock(&self.state.opens).clone()
    }

    pub fn open_times(&self) -> Vec<Instant> {
        self.opens().iter().map(|o| o.at).collect()
    }

    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::Acquire)
    }

    /// The most opens that ever ran at once.
    pub fn max_in_flight(&self) -> u64 {
        self.state.max_in_flight.load(Ordering::Acquire)
    }

    /// What the handle answered to the interrupts fired during our closes.
    pub fn close_reports(&self) -> Vec<(Generation, Report)> {
        lock(&self.state.close_reports).clone()
    }
}

impl Transport for Probe {
    type Link = MemoryLink;
    type Error = MemoryError;

    fn open(
        &self,
        ctx: OpenContext,
    ) -> impl Future<Output = Result<MemoryLink, MemoryError>> + Send + 'static {
        let state = self.state.clone();
        let control = self.control.clone();
        let panic_on = self.panic_on_open;
        let inner = self.inner.open(ctx.clone());
        async move {
            let _in_flight = InFlight::enter(state.clone());
            let handle = ctx.reporter.handle();
            let n = {
                let mut opens = lock(&state.opens);
                opens.push(OpenRecord {
                    at: Instant::now(),
                    generation: ctx.generation,
                    attempt: ctx.attempt,
                    reconnecting: handle.is_reconnecting(),
                    state: handle.state(),
                    open_links: control.open_links(),
                });
                opens.len()
            };
            if panic_on == Some(n) {
                panic!("probe: open #{n} panics on purpose (a non-transport error)");
            }
            inner.await
        }
    }

    fn probe(
        &self,
        endpoint: usize,
    ) -> impl Future<Output = redial::machine::ProbeOutcome> + Send + 'static {
        self.inner.probe(endpoint)
    }

    fn close(&self, link: MemoryLink, reason: Reason) -> impl Future<Output = ()> + Send + 'static {
        let state = self.state.clone();
        let control = self.control.clone();
        let hangup = self.hangup_on_close;
        let delay = self.close_delay;
        let generation = link.generation;
        let inner = self.inner.close(link, reason);
        async move {
            if hangup && let Some(reporter) = control.reporter(generation) {
                let report = reporter.lost(ErrorKind::Transient);
                lock(&state.close_reports).push((generation, report));
            }
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            inner.await;
        }
    }
}

/// An engine on a probe, its handle and its event recorder.
pub struct Rig {
    pub engine: Engine<Probe>,
    pub handle: Handle,
    pub events: Recorder,
    pub control: MemoryControl,
    pub probe: ProbeLog,
}

impl Rig {
    /// Spawns the engine. The recorder subscribes before the driver first
    /// runs (on a current-thread runtime), so it sees every event.
    pub fn spawn(config: Config, probe: Probe) -> Self {
        let control = probe.control();
        let log = probe.log();
        // Subscribe before the driver starts: the first attempt's events too.
        let prepared = Engine::prepare(config, probe);
        let rx = prepared.events();
        let engine = prepared.start();
        let handle = engine.handle();
        let events = Recorder::from_receiver(rx);
        Self {
            engine,
            handle,
            events,
            control,
            probe: log,
        }
    }

    /// Spawns the engine and waits until its first link (generation 1) is up.
    pub async fn connected(config: Config, probe: Probe) -> Self {
        let rig = Self::spawn(config, probe);
        connected_on(&rig.handle, Generation(1)).await;
        rig
    }

    /// The current link's generation.
    pub fn generation(&self) -> Generation {
        self.handle.generation()
    }
}

/// Links that came up, in order (from the transport's log).
pub fn links_up(control: &MemoryControl) -> Vec<Generation> {
    control
        .log()
        .iter()
        .filter_map(|e| match e {
            LogEntry::Up(g) => Some(*g),
            _ => None,
        })
        .collect()
}

/// Links closed, in order (from the transport's log).
pub fn links_closed(control: &MemoryControl) -> Vec<Generation> {
    control
        .log()
        .iter()
        .filter_map(|e| match e {
            LogEntry::Close(g) => Some(*g),
            _ => None,
        })
        .collect()
}
