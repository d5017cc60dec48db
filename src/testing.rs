//! An in-memory transport for tests, examples and benchmarks.
//!
//! It can succeed, fail, hang, flap, go silent (half-open) and hand out its
//! links' reporters so that a test can fire late callbacks from any thread.
//! It counts what a harness needs: connect and close calls, links open now
//! and at most, and a log of opens and closes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::Instrument;

use crate::machine::{ErrorKind, Generation, ProbeOutcome};
use crate::outbox::{Deliver, DeliveryError, MessageId};
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
#[non_exhaustive]
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
    delivery: DeliveryState,
    /// What probes answer (`None`: `Unsupported`, as a transport without probes).
    probe: Option<ProbeOutcome>,
    probe_calls: u64,
    /// Endpoints whose opens fail and whose probes answer `Unreachable`.
    down: HashSet<usize>,
    /// The endpoint of every open and probe, in order.
    tries: Vec<Try>,
}

/// One open or probe, with the endpoint it targeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Try {
    /// An open of `endpoint`.
    Open(usize),
    /// A probe of `endpoint`.
    Probe(usize),
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
///
/// # Examples
///
/// A test of an application's retry handling: the broker refuses twice,
/// then accepts; and a message the broker nacks.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), redial::runtime::WaitError> {
/// use std::time::Duration;
/// use redial::machine::{Config, ErrorKind};
/// use redial::outbox::{OutboxConfig, PublishError, Publisher};
/// use redial::runtime::Engine;
/// use redial::testing::{MemoryTransport, Plan, Script};
///
/// let transport = MemoryTransport::new();
/// let control = transport.control();
/// // Opens fail twice, then succeed (the default plan).
/// control.plan([Plan::Fail(ErrorKind::Transient), Plan::Fail(ErrorKind::Transient)]);
/// // Messages are confirmed (the default script), but this one is nacked.
/// control.script("bad", [Script::Nack]);
///
/// let engine = Engine::spawn(Config::default(), transport.clone());
/// let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
/// engine.handle().wait_connected(Duration::from_secs(60)).await?;
/// assert_eq!(control.connect_calls(), 3);
///
/// let receipt = publisher.publish("bad".to_string()).await;
/// assert!(matches!(receipt.await, Err(PublishError::Nacked)));
/// assert_eq!(control.sent().len(), 1);
/// engine.shutdown().await;
/// assert_eq!(control.open_links(), 0);
/// # Ok(())
/// # }
/// ```
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

    /// What every later probe answers (until told otherwise; the default
    /// is `Unsupported`, as a transport that cannot probe).
    pub fn answer_probes(&self, outcome: ProbeOutcome) {
        self.state().probe = Some(outcome);
    }

    /// Takes `endpoint` down (its opens fail as transient and its probes
    /// answer `Unreachable`, whatever the plans) or brings it back.
    pub fn set_endpoint_down(&self, endpoint: usize, down: bool) {
        let mut state = self.state();
        if down {
            state.down.insert(endpoint);
        } else {
            state.down.remove(&endpoint);
        }
    }

    /// Every open and probe so far, with its endpoint, in order.
    pub fn tries(&self) -> Vec<Try> {
        self.state().tries.clone()
    }

    /// `probe` calls so far.
    pub fn probe_calls(&self) -> u64 {
        self.state().probe_calls
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
                state.tries.push(Try::Open(ctx.endpoint));
                state.reporters.insert(generation, ctx.reporter.clone());
                if state.down.contains(&ctx.endpoint) {
                    Plan::Fail(ErrorKind::Transient)
                } else {
                    state
                        .plans
                        .pop_front()
                        .or(state.default_plan)
                        .unwrap_or(Plan::Succeed)
                }
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
                tokio::spawn(
                    async move {
                        let mut tick = tokio::time::interval(interval);
                        while open.load(Ordering::Acquire) {
                            tick.tick().await;
                            if !silent.load(Ordering::Acquire) && open.load(Ordering::Acquire) {
                                reporter.activity();
                            }
                        }
                    }
                    .in_current_span(),
                );
            }
            Ok(MemoryLink { generation, open })
        }
    }

    fn probe(
        &self,
        endpoint: usize,
    ) -> impl std::future::Future<Output = ProbeOutcome> + Send + 'static {
        let outcome = {
            let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            state.probe_calls += 1;
            state.tries.push(Try::Probe(endpoint));
            match state.probe {
                Some(_) if state.down.contains(&endpoint) => ProbeOutcome::Unreachable,
                answer => answer.unwrap_or(ProbeOutcome::Unsupported),
            }
        };
        self.inner.changed.notify_waiters();
        std::future::ready(outcome)
    }

    fn close(
        &self,
        link: MemoryLink,
        _reason: crate::machine::Reason,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
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

// ---- the outbox's side: publishing through in-memory links ---------------

/// What an in-memory link does with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// Written; the broker confirms at once.
    Confirm,
    /// Written; the broker confirms after a delay.
    ConfirmAfter(Duration),
    /// Written; the broker nacks it.
    Nack,
    /// Written; the broker returns it as unroutable.
    Unroutable,
    /// Written; the broker rejects it permanently.
    Reject(String),
    /// Written; the broker never answers (the confirm future never ends).
    NeverConfirm,
    /// Written; the link dies before the confirm (the confirm fails with `LinkLost`).
    ConfirmLinkLost,
    /// The write fails: the link is dead.
    LinkLost,
    /// The write times out (a half-open link).
    Timeout,
    /// Written; the broker closes the link's publishing channel because of
    /// it, `after` the write (a publish to a missing exchange). Until then
    /// the channel discards every later write (never confirmed, as a broker
    /// does after a channel error); then every message still unconfirmed on
    /// the channel, this one included, fails with
    /// [`DeliveryError::ChannelClosed`], and later writes go to a new channel.
    CloseChannel {
        /// The reply code.
        code: u16,
        /// The reply text.
        text: String,
        /// Delay between the write and the close.
        after: Duration,
    },
    /// Not written: the channel was closing ([`DeliveryError::NotWritten`]).
    NotWritten,
}

/// One write the in-memory transport accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The link it was written to.
    pub generation: Generation,
    /// The outbox's id for it.
    pub id: MessageId,
    /// The message.
    pub message: String,
}

#[derive(Default)]
struct DeliveryState {
    scripts: HashMap<String, VecDeque<Script>>,
    default_script: Option<Script>,
    sent: Vec<Sent>,
    attempts: u64,
    channels: HashMap<Generation, MemoryChannel>,
    channel_closes: u64,
}

/// A link's publishing channel: who waits for a confirm on it, and whether a
/// write on it already made the broker close it.
#[derive(Default)]
struct MemoryChannel {
    id: u64,
    closing: bool,
    waiters: Vec<tokio::sync::oneshot::Sender<DeliveryError>>,
}

fn close_channel(inner: &Inner, generation: Generation, id: u64, error: &DeliveryError) {
    let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    let d = &mut state.delivery;
    let Some(channel) = d.channels.get_mut(&generation).filter(|c| c.id == id) else {
        return;
    };
    for waiter in channel.waiters.drain(..) {
        let _ = waiter.send(error.clone());
    }
    *channel = MemoryChannel {
        id: id + 1,
        ..MemoryChannel::default()
    };
    d.channel_closes += 1;
}

/// The confirm future of the in-memory transport.
pub struct MemoryConfirm(Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send>>);

impl fmt::Debug for MemoryConfirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemoryConfirm")
    }
}

impl Future for MemoryConfirm {
    type Output = Result<(), DeliveryError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl MemoryControl {
    /// Queues what the next writes of `message` do, in order (each script
    /// is used once; then the default applies).
    pub fn script(&self, message: impl Into<String>, scripts: impl IntoIterator<Item = Script>) {
        self.state()
            .delivery
            .scripts
            .entry(message.into())
            .or_default()
            .extend(scripts);
    }

    /// What a write does when no script is queued for its message (default: `Confirm`).
    pub fn set_default_script(&self, script: Script) {
        self.state().delivery.default_script = Some(script);
    }

    /// Every accepted write, in wire order.
    pub fn sent(&self) -> Vec<Sent> {
        self.state().delivery.sent.clone()
    }

    /// `send` calls so far, accepted or not.
    pub fn send_attempts(&self) -> u64 {
        self.state().delivery.attempts
    }

    /// Publishing channels the simulated broker closed so far.
    pub fn channel_closes(&self) -> u64 {
        self.state().delivery.channel_closes
    }

    /// Waits until at least `n` writes were accepted.
    pub async fn wait_sent(&self, n: usize) {
        loop {
            let notified = self.inner.changed.notified();
            if self.state().delivery.sent.len() >= n {
                return;
            }
            notified.await;
        }
    }
}

impl Deliver for MemoryTransport {
    type Message = String;
    type Confirm = MemoryConfirm;

    fn send(
        &self,
        link: &MemoryLink,
        message: &String,
        id: MessageId,
    ) -> impl Future<Output = Result<MemoryConfirm, DeliveryError>> + Send {
        let inner = self.inner.clone();
        let link = link.clone();
        let message = message.clone();
        async move {
            let (script, channel, closed) = {
                let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                let d = &mut state.delivery;
                d.attempts += 1;
                let script = d
                    .scripts
                    .get_mut(&message)
                    .and_then(VecDeque::pop_front)
                    .or_else(|| d.default_script.clone())
                    .unwrap_or(Script::Confirm);
                match script {
                    _ if !link.is_open() => return Err(DeliveryError::LinkLost),
                    Script::LinkLost => return Err(DeliveryError::LinkLost),
                    Script::Timeout => return Err(DeliveryError::Timeout),
                    Script::NotWritten => return Err(DeliveryError::NotWritten),
                    _ => {}
                }
                d.sent.push(Sent {
                    generation: link.generation,
                    id,
                    message,
                });
                let channel = d.channels.entry(link.generation).or_default();
                // A closing channel discards what is written on it.
                let discarded = channel.closing;
                if let Script::CloseChannel { .. } = script {
                    channel.closing = true;
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                channel.waiters.retain(|w| !w.is_closed());
                channel.waiters.push(tx);
                (script, channel.id, (rx, discarded))
            };
            inner.changed.notify_waiters();
            let (closed, discarded) = closed;
            let answer: Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send>> =
                match script {
                    _ if discarded => Box::pin(std::future::pending()),
                    Script::ConfirmAfter(d) => Box::pin(async move {
                        tokio::time::sleep(d).await;
                        Ok(())
                    }),
                    Script::Nack => Box::pin(std::future::ready(Err(DeliveryError::Nacked))),
                    Script::Unroutable => {
                        Box::pin(std::future::ready(Err(DeliveryError::Unroutable)))
                    }
                    Script::Reject(why) => {
                        Box::pin(std::future::ready(Err(DeliveryError::Rejected(why))))
                    }
                    Script::NeverConfirm => Box::pin(std::future::pending()),
                    Script::ConfirmLinkLost => {
                        Box::pin(std::future::ready(Err(DeliveryError::LinkLost)))
                    }
                    Script::CloseChannel { code, text, after } => {
                        let inner = inner.clone();
                        let generation = link.generation;
                        tokio::spawn(
                            async move {
                                tokio::time::sleep(after).await;
                                close_channel(
                                    &inner,
                                    generation,
                                    channel,
                                    &DeliveryError::ChannelClosed { code, text },
                                );
                            }
                            .in_current_span(),
                        );
                        Box::pin(std::future::pending())
                    }
                    _ => Box::pin(std::future::ready(Ok(()))),
                };
            // The message's own answer, unless its channel closes first.
            let confirm = async move {
                tokio::select! {
                    biased;
                    result = answer => result,
                    Ok(error) = closed => Err(error),
                }
            };
            Ok(MemoryConfirm(Box::pin(confirm)))
        }
    }

    fn heartbeat(&self, _link: &MemoryLink) -> Option<Duration> {
        self.inner.heartbeat
    }

    fn size_of(message: &String) -> usize {
        message.len()
    }
}
