//! The async front of the outbox (see [`Publisher`]).

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{Fuse, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

use crate::machine::{ErrorKind, FailCause, Generation, StateKind};
use crate::outbox::config::{OutboxConfig, OverflowPolicy, SubmitOptions};
use crate::outbox::core::{
    MessageId, OutboxCore, OutboxStats, Outcome, PublishError, Resolved, Submit,
};
use crate::outbox::deliver::{Deliver, DeliveryError};
use crate::outbox::flush::{FlushStep, Next, Plan, View};
use crate::outbox::shared::Shared;
use crate::runtime::{CurrentLink, Engine, Handle, Owner, Snapshot};

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A message in the core, with the sender of its outcome.
struct Entry<M> {
    message: Arc<M>,
    tx: oneshot::Sender<Outcome>,
}

/// What the mutex protects: the core, and the engine state last applied
/// to it, so that every observer applies engine states in order and an
/// unchanged state costs one atomic load.
struct Guarded<M> {
    core: OutboxCore<Entry<M>>,
    seen: Option<StateKind>,
    /// The buffer outcomes are moved to before they are sent.
    spare: Vec<Resolved<Entry<M>>>,
}

impl<M> Guarded<M> {
    /// Applies the engine's state to the gate when it changed: `Failed`
    /// fails everything with `GaveUp`, `Closing`/`Closed` with `ShutDown`,
    /// anything else reopens a gate the engine's failure had closed.
    fn observe(&mut self, handle: &Handle) {
        let state = handle.state();
        if self.seen == Some(state) {
            return;
        }
        let mut cause = None;
        if state == StateKind::Failed {
            // The cause is in the full snapshot, which may lag the atomic
            // state by a moment: look again at the next lock.
            let snapshot = handle.snapshot();
            if snapshot.state != StateKind::Failed {
                return;
            }
            cause = Some(snapshot.failure.unwrap_or(FailCause::RetriesExhausted));
        }
        self.seen = Some(state);
        // Confirm deadlines do not run while the broker blocks publishing.
        self.core.set_blocked(now(), state == StateKind::Blocked);
        match state {
            StateKind::Failed => {
                if let Some(cause) = cause
                    && matches!(self.core.gate(), crate::outbox::Gate::Open)
                {
                    self.core.give_up(cause, handle.failure_error());
                }
            }
            StateKind::Closing | StateKind::Closed => self.core.shutdown(),
            _ => self.core.resume(),
        }
    }
}

/// The state shared by the publisher handles, the flush task and the receipts.
struct Hub<M> {
    shared: Shared<Guarded<M>>,
    /// Signalled whenever messages resolve (room may have freed up).
    room: Notify,
    handle: Handle,
    /// The outbox's metrics, set under the lock at every pass, before any
    /// receipt hears its outcome (a reader woken by one sees it counted).
    #[cfg(feature = "metrics")]
    metrics: crate::runtime::metrics::OutboxMetrics,
}

impl<M> Hub<M> {
    /// Runs `f` on the core under the lock (after applying the engine's
    /// latest state), then hands the outcomes it produced to their receipts.
    fn with_core<R>(&self, f: impl FnOnce(&mut OutboxCore<Entry<M>>) -> R) -> R {
        let (r, mut done) = {
            let mut g = self.shared.lock();
            g.observe(&self.handle);
            let r = f(&mut g.core);
            #[cfg(feature = "metrics")]
            self.metrics.export(&g.core.stats());
            let mut done = Vec::new();
            if g.core.has_resolved() {
                // A buffer kept for this, so that a batch allocates nothing.
                done = std::mem::take(&mut g.spare);
                done.extend(std::iter::from_fn(|| g.core.poll_resolved()));
            }
            (r, done)
        };
        if done.is_empty() {
            return r;
        }
        // Outside the lock: a woken caller may publish again at once, and
        // must not find the lock held and park on it.
        for resolved in done.drain(..) {
            // The receiver may be gone: the caller dropped the receipt.
            let _ = resolved.message.tx.send(resolved.outcome);
        }
        self.room.notify_waiters();
        let mut g = self.shared.lock();
        if g.spare.capacity() < done.capacity() {
            g.spare = done;
        }
        r
    }
}

/// Cancels a queued message; what a [`Receipt`] needs of its publisher.
trait Cancel: Send + Sync {
    fn cancel(&self, id: MessageId) -> bool;
}

impl<M: Send + Sync> Cancel for Hub<M> {
    fn cancel(&self, id: MessageId) -> bool {
        self.with_core(|core| core.cancel(id))
    }
}

/// The outcome of one publish, as a future: `Ok` only after a broker
/// confirm, or a typed [`PublishError`].
///
/// Dropping it does not cancel the publish (the message is still sent and
/// counted); call [`Receipt::cancel`] for that. It resolves exactly once
/// and never stays pending forever: a shutdown, an engine that gives up or
/// a runtime that stops resolve it with an error.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use redial::machine::Config;
/// use redial::outbox::{OutboxConfig, PublishError, Publisher};
/// use redial::runtime::Engine;
/// use redial::testing::MemoryTransport;
///
/// let transport = MemoryTransport::new();
/// let engine = Engine::spawn(Config::default(), transport.clone());
/// let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
///
/// // Nothing has run yet: both messages wait in the outbox.
/// let mut first = publisher.publish("first".to_string()).await;
/// let second = publisher.publish("second".to_string()).await;
/// assert!(first.try_result().is_none()); // pending
/// assert!(second.cancel()); // still queued: removed, never written
/// assert!(matches!(second.await, Err(PublishError::Cancelled)));
///
/// let confirmed = first.await.expect("confirmed");
/// println!("{} confirmed on link {}", confirmed.id, confirmed.generation);
/// engine.shutdown().await;
/// # }
/// ```
pub struct Receipt {
    id: MessageId,
    rx: oneshot::Receiver<Outcome>,
    /// The outcome [`Receipt::try_result`] took, for a later await (the
    /// channel gives it only once).
    taken: Option<Outcome>,
    hub: Weak<dyn Cancel>,
}

impl Receipt {
    /// The message's id (stable across replays).
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// Removes the message if it is still queued (not written to a link):
    /// the receipt then resolves with [`PublishError::Cancelled`]. Returns
    /// false when it is in flight or already resolved.
    pub fn cancel(&self) -> bool {
        self.hub.upgrade().is_some_and(|hub| hub.cancel(self.id))
    }

    /// The outcome if the message has reached it, without waiting: `None`
    /// while it is pending. Awaiting the receipt afterwards still yields
    /// the outcome.
    ///
    /// # Examples
    ///
    /// Polling receipts from a loop that must not await, such as a
    /// synchronous caller's:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use redial::machine::Config;
    /// use redial::outbox::{OutboxConfig, Publisher, SubmitOptions};
    /// use redial::runtime::Engine;
    /// use redial::testing::MemoryTransport;
    ///
    /// let transport = MemoryTransport::new();
    /// let engine = Engine::spawn(Config::default(), transport.clone());
    /// let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
    /// let mut receipt = publisher.try_publish("ping".to_string(), SubmitOptions::new());
    /// let outcome = loop {
    ///     match receipt.try_result() {
    ///         Some(outcome) => break outcome,
    ///         None => tokio::time::sleep(Duration::from_millis(1)).await, // other work
    ///     }
    /// };
    /// assert!(outcome.is_ok());
    /// assert!(receipt.await.is_ok()); // awaiting afterwards yields it too
    /// engine.shutdown().await;
    /// # }
    /// ```
    pub fn try_result(&mut self) -> Option<Outcome> {
        if self.taken.is_none() {
            self.taken = match self.rx.try_recv() {
                Ok(outcome) => Some(outcome),
                Err(oneshot::error::TryRecvError::Empty) => None,
                // Only reachable if the outbox itself was torn down.
                Err(oneshot::error::TryRecvError::Closed) => Some(Err(PublishError::ShutDown)),
            };
        }
        self.taken.clone()
    }
}

impl Future for Receipt {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        if let Some(outcome) = self.taken.take() {
            return Poll::Ready(outcome);
        }
        Pin::new(&mut self.rx)
            .poll(cx)
            // Only reachable if the outbox itself was torn down.
            .map(|r| r.unwrap_or(Err(PublishError::ShutDown)))
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receipt").field("id", &self.id).finish()
    }
}

/// Publishes through an engine's links with at-least-once replay. Cheap to
/// clone; every clone feeds the same outbox.
///
/// Submit from any thread or task; one flush task per publisher watches [`Engine::links`] and the engine's
/// snapshot. While link `g` is up and the engine is `Connected`, it takes
/// messages from the core one at a time, writes each with
/// [`Deliver::send`] (so the wire order is the submission order) and awaits
/// the confirms concurrently, up to the in-flight window. When the link
/// goes away or is replaced, everything in flight on it goes back to the
/// front of the queue. The core sits behind a mutex held only for short
/// synchronous sections; nothing awaits while holding it.
///
/// The flush task runs until the engine shuts down or
/// [`Publisher::shutdown`] is called; dropping every `Publisher` does not
/// stop it, so publishes already submitted still reach their outcome.
///
/// A publisher made with [`Publisher::new`] is one of the engine's owners:
/// the engine keeps running while it or any clone of it exists, even once
/// the [`Engine`] is dropped, and shuts down when the last owner goes (see
/// [`Engine`]). [`Publisher::shutdown`] ends this publisher only.
///
/// # Examples
///
/// A message written to a link that dies before the broker confirms it is
/// replayed on the next link, and its receipt resolves once, there:
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::Duration;
/// use redial::machine::Config;
/// use redial::outbox::{OutboxConfig, Publisher};
/// use redial::runtime::Engine;
/// use redial::testing::{MemoryTransport, Script};
///
/// let transport = MemoryTransport::new();
/// let control = transport.control();
/// control.script("order-1", [Script::ConfirmLinkLost]); // first write: the link dies
///
/// let engine = Engine::spawn(Config::default(), transport.clone());
/// let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
/// // Accepted at once, while the first link is still opening.
/// let receipt = publisher.publish("order-1".to_string()).await;
///
/// let confirmed = receipt.await.expect("confirmed on the next link");
/// let writes = control.sent();
/// assert_eq!(writes.len(), 2); // written twice: at least once
/// assert_eq!(confirmed.generation, writes[1].generation);
/// assert_eq!(confirmed.generation, writes[0].generation.next());
///
/// publisher.shutdown(Duration::from_secs(5)).await;
/// engine.shutdown().await;
/// # }
/// ```
pub struct Publisher<T: Deliver> {
    hub: Arc<Hub<T::Message>>,
    /// Keeps the engine running (`None` from [`Publisher::from_parts`]).
    _owner: Option<Owner>,
    /// What every receipt holds of the hub, made once.
    cancel: Weak<dyn Cancel>,
    config: OutboxConfig,
    task: Arc<StdMutex<Option<JoinHandle<()>>>>,
}

impl<T: Deliver> Clone for Publisher<T> {
    fn clone(&self) -> Self {
        Self {
            hub: self.hub.clone(),
            _owner: self._owner.clone(),
            cancel: self.cancel.clone(),
            config: self.config,
            task: self.task.clone(),
        }
    }
}

impl<T: Deliver> fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<T: Deliver> Publisher<T> {
    /// A publisher for `engine`'s links. `deliver` is the adapter (usually
    /// a clone of the transport given to the engine).
    ///
    /// # Panics
    /// When called outside a tokio runtime, as `tokio::spawn` does.
    pub fn new(engine: &Engine<T>, deliver: T, config: OutboxConfig) -> Self {
        let mut publisher = Self::from_parts(engine.handle(), engine.links(), deliver, config);
        publisher._owner = Some(engine.owner());
        publisher
    }

    /// Like [`Publisher::new`], from an engine's handle and links; such a
    /// publisher does not keep the engine running (a handle only observes).
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn from_parts(
        handle: Handle,
        links: watch::Receiver<Option<CurrentLink<T::Link>>>,
        deliver: T,
        config: OutboxConfig,
    ) -> Self {
        let guarded = Guarded {
            core: OutboxCore::new(config),
            seen: None,
            spare: Vec::new(),
        };
        let hub = Arc::new(Hub {
            shared: Shared::new(guarded),
            room: Notify::new(),
            handle: handle.clone(),
            #[cfg(feature = "metrics")]
            metrics: crate::runtime::metrics::OutboxMetrics::new(handle.inner.name.get()),
        });
        let flusher = Flusher {
            hub: hub.clone(),
            deliver: Arc::new(deliver),
            config,
            snapshots: handle.watch(),
            links,
        };
        // The engine's name on the flush task's logs, and the deliverer's.
        let span = tracing::info_span!("redial.outbox", engine = handle.name());
        // A span no subscriber wanted records nothing: skip entering it on
        // every poll of the publish path.
        let task = if span.is_disabled() {
            tokio::spawn(flusher.run())
        } else {
            tokio::spawn(tracing::Instrument::instrument(flusher.run(), span))
        };
        let cancel: Arc<dyn Cancel> = hub.clone();
        Self {
            cancel: Arc::downgrade(&cancel),
            _owner: None,
            hub,
            config,
            task: Arc::new(StdMutex::new(Some(task))),
        }
    }

    /// Publishes with the default options. See [`Publisher::publish_with`].
    pub async fn publish(&self, message: T::Message) -> Receipt {
        self.publish_with(message, SubmitOptions::new()).await
    }

    /// Submits a message and returns its [`Receipt`] once the outbox took
    /// it. Returns at once, except under [`OverflowPolicy::Wait`] with a
    /// full outbox, where it waits for room (at most the policy's deadline
    /// and the publish timeout, after which the receipt resolves with
    /// `Overflow`). The receipt resolves within the publish timeout (60 s
    /// by default) counted from this call. Never starts a
    /// connection attempt: while the link is down the message waits in the
    /// outbox. Dropping this future before it returns abandons the message
    /// (it was never submitted).
    pub async fn publish_with(&self, message: T::Message, options: SubmitOptions) -> Receipt {
        let started = tokio::time::Instant::now();
        let policy = options.overflow.unwrap_or(self.config.overflow());
        let timeout = options.publish_timeout.or(self.config.publish_timeout());
        // The wait for room counts toward the publish timeout; a deadline
        // beyond the clock's range never comes.
        let wait_deadline = match policy {
            OverflowPolicy::Wait { deadline } => deadline.and_then(|d| started.checked_add(d)),
            _ => None,
        };
        let deadline = match (wait_deadline, timeout.and_then(|t| started.checked_add(t))) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (pending, rx) = self.prepare(message, options);
        let mut rx = Some(rx);
        // Most publishes find room at once: one clock read, nothing to
        // register for.
        let mut pending = match self.submit(pending, &mut rx, started.into_std()) {
            Ok(receipt) => return receipt,
            Err(back) => back,
        };
        loop {
            let mut notified = pin!(self.hub.room.notified());
            // Register before looking, so no freed room goes unnoticed.
            notified.as_mut().enable();
            pending = remaining_timeout(pending, timeout, started);
            match self.submit(pending, &mut rx, now()) {
                Ok(receipt) => return receipt,
                Err(back) => pending = back,
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        let (entry, options) = remaining_timeout(pending, timeout, started);
                        let options = options.overflow(OverflowPolicy::RejectNew);
                        match self.submit((entry, options), &mut rx, now()) {
                            Ok(receipt) => return receipt,
                            // RejectNew never answers `Full`.
                            Err(back) => pending = back,
                        }
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Submits a message without ever waiting: under
    /// [`OverflowPolicy::Wait`] a full outbox answers `Overflow` at once,
    /// like `RejectNew`. For threads that must not block.
    pub fn try_publish(&self, message: T::Message, options: SubmitOptions) -> Receipt {
        let options = match options.overflow.unwrap_or(self.config.overflow()) {
            OverflowPolicy::Wait { .. } => options.overflow(OverflowPolicy::RejectNew),
            _ => options,
        };
        let (pending, rx) = self.prepare(message, options);
        let mut rx = Some(rx);
        match self.submit(pending, &mut rx, now()) {
            Ok(receipt) => receipt,
            // Unreachable (neither policy answers `Full`), but resolve rather than hang.
            Err((entry, _)) => {
                let _ = entry.tx.send(Err(PublishError::Overflow));
                Receipt {
                    id: MessageId(0),
                    rx: rx.take().unwrap_or_else(|| oneshot::channel().1),
                    taken: None,
                    hub: Weak::<Hub<T::Message>>::new(),
                }
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> OutboxStats {
        self.hub.with_core(|core| core.stats())
    }

    /// The engine's handle.
    pub fn handle(&self) -> &Handle {
        &self.hub.handle
    }

    /// Shuts this publisher down gracefully: stops taking messages (new
    /// ones resolve with `ShutDown`), keeps flushing and waits for
    /// outstanding confirms up to `drain_timeout`, resolves whatever is
    /// left with `ShutDown`, and ends its flush task. The engine, which
    /// other publishers may share, keeps running: shut it down with
    /// [`Engine::shutdown`] (or drop its last owner). Returns the final
    /// counters. A second call returns once the first is done.
    pub async fn shutdown(&self, drain_timeout: Duration) -> OutboxStats {
        self.hub.with_core(|core| core.close());
        // A drain timeout beyond the clock's range waits until drained.
        let deadline = tokio::time::Instant::now().checked_add(drain_timeout);
        loop {
            let mut notified = pin!(self.hub.room.notified());
            notified.as_mut().enable();
            if self.hub.with_core(|core| core.pending()) == 0 {
                break;
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        break;
                    }
                }
                None => notified.await,
            }
        }
        self.hub.with_core(|core| core.shutdown());
        self.hub.shared.notify();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.stats()
    }

    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        message: T::Message,
        options: SubmitOptions,
    ) -> (
        (Entry<T::Message>, SubmitOptions),
        oneshot::Receiver<Outcome>,
    ) {
        let size = options.size_bytes.unwrap_or_else(|| T::size_of(&message));
        let (tx, rx) = oneshot::channel();
        let entry = Entry {
            message: Arc::new(message),
            tx,
        };
        ((entry, options.size_bytes(size)), rx)
    }

    /// One attempt to submit at `at`; hands the entry back when the
    /// outbox is full under `Wait`.
    #[allow(clippy::type_complexity)]
    fn submit(
        &self,
        (entry, options): (Entry<T::Message>, SubmitOptions),
        rx: &mut Option<oneshot::Receiver<Outcome>>,
        at: Instant,
    ) -> Result<Receipt, (Entry<T::Message>, SubmitOptions)> {
        let answer = self.hub.with_core(|core| core.submit(at, entry, options));
        let id = match answer {
            Submit::Full(entry) => return Err((entry, options)),
            Submit::Queued(id) => {
                self.hub.shared.notify();
                id
            }
            Submit::Resolved(id) => id,
        };
        Ok(Receipt {
            id,
            // Taken once: a submit that answers anything but `Full` ends the attempt.
            rx: rx.take().unwrap_or_else(|| oneshot::channel().1),
            taken: None,
            hub: self.cancel.clone(),
        })
    }
}

/// What is left of the publish timeout for a message submitted after
/// waiting since `started`.
fn remaining_timeout<E>(
    (entry, options): (E, SubmitOptions),
    timeout: Option<Duration>,
    started: tokio::time::Instant,
) -> (E, SubmitOptions) {
    match timeout {
        Some(t) => (
            entry,
            options.publish_timeout(t.saturating_sub(started.elapsed())),
        ),
        None => (entry, options),
    }
}

/// The flush task's state: the I/O around [`FlushStep`], which decides.
struct Flusher<T: Deliver> {
    hub: Arc<Hub<T::Message>>,
    deliver: Arc<T>,
    config: OutboxConfig,
    links: watch::Receiver<Option<CurrentLink<T::Link>>>,
    snapshots: watch::Receiver<Snapshot>,
}

/// Resolves everything left when the flush task ends, however it ends
/// (including a runtime that drops it): no receipt waits forever.
struct EndGuard<M: Send + Sync>(Arc<Hub<M>>);

impl<M: Send + Sync> Drop for EndGuard<M> {
    fn drop(&mut self) {
        self.0.with_core(|core| core.shutdown());
    }
}

type SendResult<C> = (Generation, MessageId, Result<C, DeliveryError>);

async fn send_one<T: Deliver>(
    deliver: Arc<T>,
    generation: Generation,
    link: T::Link,
    message: Arc<T::Message>,
    id: MessageId,
) -> SendResult<T::Confirm> {
    (generation, id, deliver.send(&link, &message, id).await)
}

type AnswerResult = (Generation, MessageId, Result<(), DeliveryError>);

/// One awaited confirm, with its message's id and link (a `map`, so that
/// the confirm lives in the set's node without a box of its own).
fn answer<C: Future<Output = Result<(), DeliveryError>>>(
    generation: Generation,
    id: MessageId,
    confirm: C,
) -> impl Future<Output = AnswerResult> {
    confirm.map(move |r| (generation, id, r))
}

/// The next confirm that already arrived, without waiting.
fn ready_one<F: Future<Output = AnswerResult>>(
    confirms: &mut FuturesUnordered<F>,
) -> Option<AnswerResult> {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    match confirms.poll_next_unpin(&mut cx) {
        Poll::Ready(Some(answer)) => Some(answer),
        _ => None,
    }
}

/// The confirms that already arrived, without waiting for more.
fn ready<F: Future<Output = AnswerResult>>(
    confirms: &mut FuturesUnordered<F>,
) -> Vec<AnswerResult> {
    std::iter::from_fn(|| ready_one(confirms)).collect()
}

impl<T: Deliver> Flusher<T> {
    async fn run(mut self) {
        let hub = self.hub.clone();
        let _end = EndGuard(hub.clone());
        let mut step = FlushStep::new();
        let mut link: Option<CurrentLink<T::Link>> = None;
        let mut snapshot = *self.snapshots.borrow_and_update();
        // `changed()` marks a value seen: after it fires, borrow again.
        let (mut links_changed, mut snapshot_changed) = (true, false);
        let mut confirm_timeout = None;
        let mut confirms = FuturesUnordered::new();
        let mut sending = pin!(Fuse::terminated());
        loop {
            // Borrowed only when changed: a borrow takes the channel's lock.
            if std::mem::take(&mut links_changed) || !matches!(self.links.has_changed(), Ok(false))
            {
                let current = self.links.borrow_and_update().clone();
                if current.as_ref().map(|l| l.generation) != link.as_ref().map(|l| l.generation) {
                    // What is under way on the old link can only be stale now.
                    confirms = FuturesUnordered::new();
                    sending.set(Fuse::terminated());
                    let heartbeat = current
                        .as_ref()
                        .and_then(|l| self.deliver.heartbeat(&l.link));
                    confirm_timeout = self.config.confirm_timeout().resolve(heartbeat);
                    link = current;
                }
            }
            if std::mem::take(&mut snapshot_changed)
                || !matches!(self.snapshots.has_changed(), Ok(false))
            {
                snapshot = *self.snapshots.borrow_and_update();
            }
            let view = View {
                link: link.as_ref().map(|l| l.generation),
                confirm_timeout,
                state: snapshot.state,
                generation: snapshot.generation,
                outages: hub.handle.losses(),
            };
            let plan = hub.with_core(|core| step.plan(core, now(), &view, |e| e.message.clone()));
            let next = match plan {
                Plan::Finish => break,
                Plan::Write {
                    generation,
                    id,
                    message,
                } => {
                    // Yields now and then: a broker that is always ready
                    // must not keep the flush task from ever yielding.
                    tokio::task::coop::consume_budget().await;
                    // The step writes only to the link it was shown.
                    if let Some(l) = link.as_ref().filter(|l| l.generation == generation) {
                        let deliver = self.deliver.clone();
                        let write = send_one(deliver, generation, l.link.clone(), message, id);
                        sending.set(write.fuse());
                        // A write that is done at once is handled at once,
                        // without a round of the `select!` below.
                        match poll_fn(|cx| Poll::Ready(sending.as_mut().poll(cx))).await {
                            Poll::Ready((generation, id, Ok(confirm))) => {
                                if step.wrote(generation) {
                                    confirms.push(answer(generation, id, confirm));
                                }
                                Next::Continue
                            }
                            Poll::Ready((generation, id, Err(error))) => hub.with_core(|core| {
                                step.write_failed(core, generation, id, error, || {
                                    ready(&mut confirms)
                                })
                            }),
                            Poll::Pending => Next::Continue,
                        }
                    } else {
                        let error = DeliveryError::NotWritten;
                        hub.with_core(|core| {
                            step.write_failed(core, generation, id, error, Vec::new)
                        })
                    }
                }
                Plan::Wait {
                    expire_at,
                    overdue_at,
                } => tokio::select! {
                    biased;
                    changed = self.links.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        links_changed = true;
                        Next::Continue
                    }
                    changed = self.snapshots.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        snapshot_changed = true;
                        Next::Continue
                    }
                    (generation, id, result) = &mut sending => match result {
                        Ok(confirm) => {
                            if step.wrote(generation) {
                                confirms.push(answer(generation, id, confirm));
                            }
                            Next::Continue
                        }
                        Err(error) => hub.with_core(|core| {
                            step.write_failed(core, generation, id, error, || ready(&mut confirms))
                        }),
                    },
                    Some(first) = confirms.next(), if !confirms.is_empty() => {
                        // Every answer that already arrived, under one lock.
                        hub.with_core(|core| {
                            let mut next = Next::Continue;
                            let mut answer = Some(first);
                            while let Some((generation, id, result)) = answer {
                                next = step.answer(core, generation, id, result, || {
                                    ready(&mut confirms)
                                });
                                if next == Next::ChannelReset {
                                    break;
                                }
                                answer = ready_one(&mut confirms);
                            }
                            next
                        })
                    }
                    () = poll_fn(|cx| hub.shared.poll_work(cx)) => Next::Continue,
                    () = sleep_until(expire_at), if expire_at.is_some() => {
                        hub.with_core(|core| core.expire(now()));
                        Next::Continue
                    }
                    () = sleep_until(overdue_at), if overdue_at.is_some() => {
                        hub.with_core(|core| step.overdue(core, now()));
                        Next::Continue
                    }
                },
            };
            if next == Next::ChannelReset {
                sending.set(Fuse::terminated());
                confirms = FuturesUnordered::new();
            }
            if let Some(generation) = step.report(|| hub.handle.losses()) {
                // Dead, half-open or confirming nothing: have the engine
                // replace it (a no-op when it already reported its death).
                hub.handle.report_lost(generation, ErrorKind::Transient);
            }
        }
        // The engine is gone or the outbox is closed: `_end` resolves what is left.
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
