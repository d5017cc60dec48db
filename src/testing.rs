//! An in-memory transport for tests, examples and benchmarks.
//!
//! It can succeed, fail, hang, flap, go silent (half-open) and hand out its
//! links' reporters so that a test can fire late callbacks from any thread.
//! It counts what a harness needs: connect and close calls, links open now
//! and at most, and a log of opens and closes.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::machine::{ErrorKind, Generation};
use crate::runtime::{Classify, LinkReporter, OpenContext, Transport};

/// What the next open does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Succeed at once.
    Succeed,
    /// Succeed after a delay.
    SucceedAfter(Duration),
    /// Fail at once.
    Fail(ErrorKind),
    /// Fail after a delay.
    FailAfter(Duration, ErrorKind),
    /// Never answer (the driver's connect timeout must end it).
    Hang,
}

/// The in-memory transport's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("in-memory transport refused the connection ({kind:?})")]
pub struct MemoryError {
    /// Transient or permanent.
    pub kind: ErrorKind,
}

impl Classify for MemoryError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// One entry of the transport's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEntry {
    /// `open` was called for this generation and attempt.
    Open(Generation, u32),
    /// The open succeeded.
    Up(Generation),
    /// `close` was called.
    Close(Generation),
}

/// A link of the in-memory transport.
#[derive(Clone)]
pub struct MemoryLink {
    /// Its generation.
    pub generation: Generation,
    open: Arc<AtomicBool>,
}

impl MemoryLink {
    /// Whether it has not been closed yet.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

impl fmt::Debug for MemoryLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLink")
            .field("generation", &self.generation)
            .field("open", &self.is_open())
            .finish()
    }
}

#[derive(Default)]
struct State {
    plans: VecDeque<Plan>,
    default_plan: Option<Plan>,
    reporters: HashMap<Generation, LinkReporter>,
    silent: HashMap<Generation, Arc<AtomicBool>>,
    log: Vec<LogEntry>,
}

struct Inner {
    state: Mutex<State>,
    connect_calls: AtomicU64,
    close_calls: AtomicU64,
    open_links: AtomicU64,
    max_open_links: AtomicU64,
    heartbeat: Option<Duration>,
    changed: Notify,
}

/// The transport (give it to the engine) and, via [`MemoryTransport::control`],
/// its remote control (keep it in the test).
#[derive(Clone)]
pub struct MemoryTransport {
    inner: Arc<Inner>,
}

/// Drives and inspects a [`MemoryTransport`] from a test.
#[derive(Clone)]
pub struct MemoryControl {
    inner: Arc<Inner>,
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport").finish_non_exhaustive()
    }
}

impl fmt::Debug for MemoryControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryControl")
            .field("connect_calls", &self.connect_calls())
            .field("close_calls", &self.close_calls())
            .finish()
    }
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTransport {
    /// A transport whose opens succeed unless told otherwise, and whose
    /// links never report inbound traffic by themselves.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// Like [`MemoryTransport::new`], but every link reports inbound traffic
    /// every `interval` from a runtime task (a broker's heartbeats), until
    /// it is closed or made [silent](MemoryControl::silence).
    pub fn with_heartbeat(interval: Duration) -> Self {
        Self::build(Some(interval))
    }

    fn build(heartbeat: Option<Duration>) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                connect_calls: AtomicU64::new(0),
                close_calls: AtomicU64::new(0),
                open_links: AtomicU64::new(0),
                max_open_links: AtomicU64::new(0),
                heartbeat,
                changed: Notify::new(),
            }),
        }
    }

    /// The remote control.
    pub fn control(&self) -> MemoryControl {
        MemoryControl {
            inner: self.inner.clone(),
        }
    }
}

impl MemoryControl {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the behaviour of the next opens, in order.
    pub fn plan(&self, plans: impl IntoIterator<Item = Plan>) {
        self.state().plans.extend(plans);
    }

    /// The behaviour once the queued plans are used up (default: succeed).
    pub fn set_default(&self, plan: Plan) {
        self.state().default_plan = Some(plan);
    }

    /// `open` calls so far.
    pub fn connect_calls(&self) -> u64 {
        self.inner.connect_calls.load(Ordering::Acquire)
    }

    /// `close` calls so far.
    pub fn close_calls(&self) -> u64 {
        self.inner.close_calls.load(Ordering::Acquire)
    }

    /// Links open right now.
    pub fn open_links(&self) -> u64 {
        self.inner.open_links.load(Ordering::Acquire)
    }

    /// The most links that were ever open at once.
    pub fn max_open_links(&self) -> u64 {
        self.inner.max_open_links.load(Ordering::Acquire)
    }

    /// Opens and closes, in order.
    pub fn log(&self) -> Vec<LogEntry> {
        self.state().log.clone()
    }

    /// The reporter handed to link `generation`, to fire its callbacks
    /// (late ones included) from any thread.
    pub fn reporter(&self, generation: Generation) -> Option<LinkReporter> {
        self.state().reporters.get(&generation).cloned()
    }

    /// The reporter of the most recent link.
    pub fn latest_reporter(&self) -> Option<LinkReporter> {
        let state = self.state();
        state
            .reporters
            .iter()
            .max_by_key(|(g, _)| **g)
            .map(|(_, r)| r.clone())
    }

    /// The most recent link reports its own loss (a severed socket).
    pub fn sever(&self) {
        if let Some(r) = self.latest_reporter() {
            r.lost(ErrorKind::Transient);
        }
    }

    /// Stops link `generation`'s heartbeats while keeping it open (half-open).
    pub fn silence(&self, generation: Generation) {
        if let Some(flag) = self.state().silent.get(&generation) {
            flag.store(true, Ordering::Release);
        }
    }

    /// Waits until `open` was called at least `n` times.
    pub async fn wait_connect_calls(&self, n: u64) {
        loop {
            let notified = self.inner.changed.notified();
            if self.connect_calls() >= n {
                return;
            }
            notified.await;
        }
    }

    /// Waits until `close` was called at least `n` times.
    pub async fn wait_close_calls(&self, n: u64) {
        loop {
            let notified = self.inner.changed.notified();
            if self.close_calls() >= n {
                return;
            }
            notified.await;
        }
    }
}

impl Transport for MemoryTransport {
    type Link = MemoryLink;
    type Error = MemoryError;

    fn open(
        &self,
        ctx: OpenContext,
    ) -> impl std::future::Future<Output = Result<MemoryLink, MemoryError>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            let generation = ctx.generation;
            let plan = {
                let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                state.log.push(LogEntry::Open(generation, ctx.attempt));
                state.reporters.insert(generation, ctx.reporter.clone());
                state
                    .plans
                    .pop_front()
                    .or(state.default_plan)
                    .unwrap_or(Plan::Succeed)
            };
            inner.connect_calls.fetch_add(1, Ordering::AcqRel);
            inner.changed.notify_waiters();
            match plan {
                Plan::Succeed => {}
                Plan::SucceedAfter(d) => tokio::time::sleep(d).await,
                Plan::Fail(kind) => return Err(MemoryError { kind }),
                Plan::FailAfter(d, kind) => {
                    tokio::time::sleep(d).await;
                    return Err(MemoryError { kind });
                }
                Plan::Hang => std::future::pending::<()>().await,
            }
            let open = Arc::new(AtomicBool::new(true));
            let silent = Arc::new(AtomicBool::new(false));
            {
                let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                state.log.push(LogEntry::Up(generation));
                state.silent.insert(generation, silent.clone());
            }
            let now_open = inner.open_links.fetch_add(1, Ordering::AcqRel) + 1;
            inner.max_open_links.fetch_max(now_open, Ordering::AcqRel);
            if let Some(interval) = inner.heartbeat {
                let reporter = ctx.reporter.clone();
                let open = open.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(interval);
                    while open.load(Ordering::Acquire) {
                        tick.tick().await;
                        if !silent.load(Ordering::Acquire) && open.load(Ordering::Acquire) {
                            reporter.activity();
                        }
                    }
                });
            }
            Ok(MemoryLink { generation, open })
        }
    }

    fn close(&self, link: MemoryLink) -> impl std::future::Future<Output = ()> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            {
                let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                state.log.push(LogEntry::Close(link.generation));
            }
            if link.open.swap(false, Ordering::AcqRel) {
                inner.open_links.fetch_sub(1, Ordering::AcqRel);
            }
            inner.close_calls.fetch_add(1, Ordering::AcqRel);
            inner.changed.notify_waiters();
        }
    }
}
