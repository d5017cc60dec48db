//! The thread-safe handle: plain methods, callable from any thread, never
//! blocking the caller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::machine::{ErrorKind, FailCause, Generation, Reason, StateKind};
use crate::runtime::events::{Event, EventStream, SharedError};
use crate::runtime::histogram::{AtomicHistogram, Histogram};
use crate::runtime::shared::{LinkEvent, Report, Shared};

/// What the driver last published about the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The state.
    pub state: StateKind,
    /// The current generation (the live link's, or the next link's).
    pub generation: Generation,
    /// Attempts made in the current outage.
    pub attempt: u32,
    /// The endpoint of the live link, or the one the next attempt or probe
    /// targets (an index into the transport's endpoint list; 0 with one).
    pub endpoint: usize,
    /// Why the state last changed (`None` before the first change).
    pub reason: Option<Reason>,
    /// Why the engine gave up, when it is `Failed`.
    pub failure: Option<FailCause>,
}

/// Counters, readable at any time from the handle.
///
/// Every loss of an up link ends in exactly one of `resumes` (the transport
/// restored it by itself) or `outages` (it was replaced, or the engine gave
/// up or shut down without it), so `losses` is `resumes + outages`, plus
/// one while a lost link may still resume (within the resume grace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Links the driver asked the transport to open.
    pub attempts: u64,
    /// New links that came up: opens that succeeded, and an adopted first
    /// link. Resumes are not counted here.
    pub connects: u64,
    /// Lost links the transport restored by itself (accepted resumes).
    pub resumes: u64,
    /// Reachability probes sent while backing off (see
    /// [`crate::runtime::Transport::probe`]); not counted in `attempts`.
    pub probes: u64,
    /// Times an up link went down, for any reason but the engine's own
    /// shutdown (losses, liveness, a blocked link replaced, a reconnect
    /// the user asked for), blips that later resumed included.
    pub losses: u64,
    /// Losses that were not undone by a resume: counted when the lost
    /// link is closed (at once without a resume grace, when the grace
    /// ends otherwise). A blip the transport resumed is not an outage.
    pub outages: u64,
    /// Reports received from links and callbacks, in total.
    pub reports: u64,
    /// Reports dropped because they named an old generation (at the handle
    /// or in the machine).
    pub stale_reports: u64,
    /// Reports merged into a batch the driver had not taken yet.
    pub coalesced_reports: u64,
    /// Times a report woke the driver.
    pub wakeups: u64,
    /// How long the last recovered loss lasted (loss to a link up again,
    /// resumed or new); the first connect is not a recovery.
    pub last_recovery: Option<Duration>,
    /// Every recovered loss: from the loss to a link up again (resumed or
    /// new). Blips and outages alike.
    pub recovery_time: Histogram,
    /// Every outage that ended with a new link: from the loss to the new
    /// link up (a resumed blip is not counted here).
    pub outage_length: Histogram,
    /// Time spent without a link, in total (including the first connect).
    pub disconnected_total: Duration,
}

/// The histograms, made by the driver at the first recovery: an engine
/// that never lost its link does not carry them.
#[derive(Debug, Default)]
pub(crate) struct Histograms {
    pub(crate) recovery_time: AtomicHistogram,
    pub(crate) outage_length: AtomicHistogram,
}

/// The driver's counters, shared with the handle.
#[derive(Debug, Default)]
pub(crate) struct DriverCounters {
    pub(crate) attempts: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) resumes: AtomicU64,
    pub(crate) probes: AtomicU64,
    pub(crate) losses: AtomicU64,
    pub(crate) outages: AtomicU64,
    pub(crate) machine_stale: AtomicU64,
    /// Milliseconds + 1, so that 0 means "none yet".
    pub(crate) last_recovery_ms_plus_one: AtomicU64,
    pub(crate) disconnected_total_ms: AtomicU64,
    pub(crate) histograms: OnceLock<Box<Histograms>>,
    /// `reconnect_now` calls, and how many of them the driver has taken:
    /// a waiter that finds the engine `Failed` with one not yet taken
    /// keeps waiting, as the engine is about to leave `Failed`.
    pub(crate) reconnects_requested: AtomicU64,
    pub(crate) reconnects_taken: AtomicU64,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The engine is shutting down or shut down.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Why a wait for a state ended without it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The engine gave up (it stays `Failed` until
    /// [`Handle::reconnect_now`] or a shutdown): waiting longer cannot help.
    #[error("the engine gave up: {cause}")]
    Failed {
        /// Why it gave up.
        cause: FailCause,
        /// The transport error it gave up on, when one caused it (a
        /// permanent error at the first connect, say).
        #[source]
        error: Option<SharedError>,
    },
    /// The engine is shutting down or shut down.
    #[error("the engine is shut down")]
    ShutDown,
    /// The state was not reached in time.
    #[error("the engine did not reach the state within {after:?} (it is {})", last.state)]
    TimedOut {
        /// The timeout.
        after: Duration,
        /// The engine's snapshot when the time ran out.
        last: Snapshot,
    },
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) shared: Shared,
    /// The engine's owners (see `owner.rs`): the `Engine` and its publishers.
    pub(crate) owners: std::sync::atomic::AtomicUsize,
    pub(crate) snapshot: watch::Receiver<Snapshot>,
    /// The event ring, made by the first subscriber: an engine nobody
    /// listens to does not carry 1024 slots (57 KB) for nothing.
    pub(crate) events: OnceLock<broadcast::Sender<Event>>,
    pub(crate) counters: DriverCounters,
    /// The error of the latest loss reported with one, for the event of
    /// that loss (taken by the driver).
    pub(crate) loss_error: Mutex<Option<(Generation, SharedError)>>,
    /// The error the engine gave up with, set before its snapshot says
    /// `Failed`: what a publisher fails its messages with, without
    /// subscribing to the events.
    pub(crate) failure_error: Mutex<Option<SharedError>>,
    /// The embedder's name for the engine ([`crate::runtime::Prepared::name`]):
    /// the `engine` field of its spans and the label of its metrics.
    pub(crate) name: OnceLock<Arc<str>>,
}

/// Locks, ignoring poisoning: the slot holds plain data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How many events the ring holds for a subscriber that falls behind.
pub(crate) const EVENT_CAPACITY: usize = 1024;

impl Inner {
    /// Broadcasts `event` when someone ever subscribed (no allocation otherwise).
    pub(crate) fn emit(&self, event: Event) {
        if let Some(events) = self.events.get() {
            // No receivers left is fine too: nobody is listening now.
            let _ = events.send(event);
        }
    }
}

/// The engine's handle: cheap to clone, `Send + Sync`, every method but
/// [`Handle::shutdown`] is a plain call that never blocks.
///
/// # Examples
///
/// Callbacks report from their own threads, with the generation of the
/// link they are about; duplicates and late reports change nothing.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), redial::runtime::WaitError> {
/// use std::time::Duration;
/// use redial::machine::{Config, ErrorKind};
/// use redial::runtime::{Engine, Report};
/// use redial::testing::MemoryTransport;
///
/// let engine = Engine::spawn(Config::default(), MemoryTransport::new());
/// let handle = engine.handle();
/// let first = handle.wait_connected(Duration::from_secs(30)).await?;
///
/// // An SDK fires its "connection interrupted" callback from three threads.
/// let threads: Vec<_> = (0..3)
///     .map(|_| {
///         let handle = handle.clone();
///         std::thread::spawn(move || handle.report_lost(first, ErrorKind::Transient))
///     })
///     .collect();
/// for thread in threads {
///     thread.join().unwrap();
/// }
/// let mut snapshots = handle.watch();
/// snapshots
///     .wait_for(|s| s.state.is_link_up() && s.generation > first)
///     .await
///     .expect("the engine is running");
///
/// // A callback about the replaced link, however late, is stale.
/// assert_eq!(handle.report_lost(first, ErrorKind::Transient), Report::Stale);
/// assert_eq!(handle.stats().outages, 1); // one outage, one reconnect
/// engine.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Handle {
    pub(crate) inner: Arc<Inner>,
}

impl Handle {
    /// Reports that link `generation` died (an SDK's interrupt callback, a
    /// socket error). A report about an old generation is dropped.
    ///
    /// Report one link's loss and resume in the order they happened: the
    /// latest report about a link wins (docs/spec.md, 15.1, rule 6).
    pub fn report_lost(&self, generation: Generation, kind: ErrorKind) -> Report {
        self.inner.shared.report(generation, LinkEvent::Lost(kind))
    }

    /// Like [`Handle::report_lost`], with the error that killed the link:
    /// the [`Event::StateChanged`] of the loss carries it to observers.
    /// Costs a short lock besides the report (a loss is rare; a storm of
    /// them keeps the latest error).
    pub fn report_lost_because(
        &self,
        generation: Generation,
        kind: ErrorKind,
        error: SharedError,
    ) -> Report {
        if self.inner.shared.snapshot().0 == generation {
            *lock(&self.inner.loss_error) = Some((generation, error));
        }
        self.report_lost(generation, kind)
    }

    /// Reports that link `generation` came back by itself (an SDK's resume callback).
    pub fn report_resumed(&self, generation: Generation) -> Report {
        self.inner.shared.report(generation, LinkEvent::Resumed)
    }

    /// Reports that link `generation` came back by itself but the broker
    /// kept no session for it (MQTT `session_present = 0`): once the engine
    /// accepts the resume it asks the transport to
    /// [restore](crate::runtime::Transport::restore) the link.
    ///
    /// The session's end is a loss: when the engine has not heard of one
    /// (the interrupt was never reported, or merged away with this resume),
    /// it takes the loss first, then the resume. With a resume grace the
    /// link is kept and restored; without one the loss replaces it.
    pub fn report_resumed_without_session(&self, generation: Generation) -> Report {
        self.inner
            .shared
            .report(generation, LinkEvent::ResumedWithoutSession)
    }

    /// Reports inbound traffic on link `generation` (liveness).
    pub fn report_activity(&self, generation: Generation) -> Report {
        self.inner.shared.report(generation, LinkEvent::Activity)
    }

    /// Reports that the broker blocked publishing on link `generation`.
    pub fn report_blocked(&self, generation: Generation) -> Report {
        self.inner.shared.report(generation, LinkEvent::Blocked)
    }

    /// Reports that the broker unblocked publishing on link `generation`.
    pub fn report_unblocked(&self, generation: Generation) -> Report {
        self.inner.shared.report(generation, LinkEvent::Unblocked)
    }

    /// A reporter bound to `generation`, for a link's own tasks and callbacks.
    pub fn reporter(&self, generation: Generation) -> LinkReporter {
        LinkReporter {
            handle: self.clone(),
            generation,
        }
    }

    /// The engine's name, as given to [`crate::runtime::Prepared::name`]
    /// (`None` for an unnamed engine, and before the engine starts).
    pub fn name(&self) -> Option<&str> {
        self.inner.name.get().map(|n| &**n)
    }

    /// A link is up. One atomic load.
    #[inline]
    pub fn is_connected(&self) -> bool {
        self.inner.shared.snapshot().1.is_link_up()
    }

    /// The "actively reconnecting" flag that callback-SDK clients keep by
    /// hand ([report 003](crate#scenario-ids-and-failure-reports)), derived from the state
    /// (connecting or backing off). One atomic load.
    #[inline]
    pub fn is_reconnecting(&self) -> bool {
        self.inner.shared.snapshot().1.is_reconnecting()
    }

    /// The current generation. One atomic load.
    #[inline]
    pub fn generation(&self) -> Generation {
        self.inner.shared.snapshot().0
    }

    /// The current state. One atomic load.
    #[inline]
    pub fn state(&self) -> StateKind {
        self.inner.shared.snapshot().1
    }

    /// The last snapshot the driver published.
    pub fn snapshot(&self) -> Snapshot {
        *self.inner.snapshot.borrow()
    }

    /// Watches the snapshot. Its value ([`Handle::snapshot`]) changes as
    /// soon as the machine moves, before the step's events are broadcast;
    /// watchers are notified after them. So a reader who got an event sees
    /// its state in the snapshot, and a watcher woken by a change finds its
    /// events already queued. A slow watcher may skip intermediate states
    /// (use [`Handle::events`] for all of them).
    ///
    /// Copy the snapshot out of a borrow (`*rx.borrow()`, or the value
    /// `wait_for` returns) before awaiting anything: while a borrow is held
    /// the driver cannot publish the next snapshot, so holding one across
    /// `engine.shutdown().await` on a `current_thread` runtime never ends.
    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.inner.snapshot.clone()
    }

    /// Every event from now on, as a [`futures::Stream`] (or with
    /// [`EventStream::recv`] and [`EventStream::try_recv`]). The ring holds
    /// the last 1024 events; a reader that falls further behind gets an
    /// `Err(Lagged)` item telling how many it missed, never a silent gap.
    /// The first call allocates the ring; events before it are not kept:
    /// subscribe before the engine starts
    /// ([`crate::runtime::Prepared::events`]) to see every one.
    ///
    /// # Examples
    ///
    /// Logging an outage as it happens:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), redial::runtime::WaitError> {
    /// use std::time::Duration;
    /// use futures::StreamExt;
    /// use redial::machine::{Config, StateKind};
    /// use redial::runtime::{Engine, Event};
    /// use redial::testing::MemoryTransport;
    ///
    /// let transport = MemoryTransport::new();
    /// let control = transport.control();
    /// let engine = Engine::spawn(Config::default(), transport);
    /// let handle = engine.handle();
    /// let first = handle.wait_connected(Duration::from_secs(30)).await?;
    ///
    /// let mut events = handle.events();
    /// control.sever();
    /// let mut lost = None;
    /// while let Some(event) = events.next().await {
    ///     match event {
    ///         Ok(Event::StateChanged { to: StateKind::Connected, .. }) => break,
    ///         Ok(Event::StateChanged { lost: Some(link), reason, .. }) => lost = Some((link, reason)),
    ///         Ok(other) => println!("{other:?}"),
    ///         Err(lagged) => println!("missed {} events", lagged.missed),
    ///     }
    /// }
    /// assert_eq!(lost.map(|(link, _)| link), Some(first));
    /// engine.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn events(&self) -> EventStream {
        let sender = self
            .inner
            .events
            .get_or_init(|| broadcast::channel(EVENT_CAPACITY).0);
        EventStream::new(sender.subscribe())
    }

    /// The error behind the latest give-up (see `Inner::failure_error`).
    pub(crate) fn failure_error(&self) -> Option<SharedError> {
        lock(&self.inner.failure_error).clone()
    }

    /// Times an up link went down (`Stats::losses`), in one load.
    pub(crate) fn losses(&self) -> u64 {
        self.inner.counters.losses.load(Ordering::Relaxed)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let r = &self.inner.shared.counters;
        let last = c.last_recovery_ms_plus_one.load(Ordering::Relaxed);
        let histograms = c.histograms.get();
        Stats {
            attempts: c.attempts.load(Ordering::Relaxed),
            connects: c.connects.load(Ordering::Relaxed),
            resumes: c.resumes.load(Ordering::Relaxed),
            probes: c.probes.load(Ordering::Relaxed),
            losses: c.losses.load(Ordering::Relaxed),
            outages: c.outages.load(Ordering::Relaxed),
            reports: r.reports.load(Ordering::Relaxed),
            stale_reports: r
                .stale
                .load(Ordering::Relaxed)
                .saturating_add(c.machine_stale.load(Ordering::Relaxed)),
            coalesced_reports: r.coalesced.load(Ordering::Relaxed),
            wakeups: r.wakeups.load(Ordering::Relaxed),
            last_recovery: (last > 0).then(|| Duration::from_millis(last - 1)),
            recovery_time: histograms
                .map(|h| h.recovery_time.snapshot())
                .unwrap_or_default(),
            outage_length: histograms
                .map(|h| h.outage_length.snapshot())
                .unwrap_or_default(),
            disconnected_total: Duration::from_millis(
                c.disconnected_total_ms.load(Ordering::Relaxed),
            ),
        }
    }

    /// Replaces the link now, skips a backoff wait, or leaves `Failed`
    /// (resetting the attempt counter). A no-op while an attempt is running.
    pub fn reconnect_now(&self) -> Result<(), EngineError> {
        if self.state().is_shutting_down() {
            return Err(EngineError::ShuttingDown);
        }
        // Counted before the command is sent: a waiter that sees `Failed`
        // and this request not yet taken knows `Failed` is about to end.
        self.inner
            .counters
            .reconnects_requested
            .fetch_add(1, Ordering::SeqCst);
        self.inner.shared.command(true, false);
        Ok(())
    }

    /// Stops reconnecting, closes the link and returns once the engine is
    /// closed. A second call returns at once.
    pub async fn shutdown(&self) {
        self.inner.shared.command(false, true);
        let mut rx = self.inner.snapshot.clone();
        // An error means the driver is gone, which also means closed.
        let _ = rx.wait_for(|s| s.state == StateKind::Closed).await;
    }

    /// Waits without limit until the engine reaches `state`; returns the
    /// current snapshot at once if the driver has stopped. Never returns
    /// while the engine is `Failed` and `state` is another one: prefer
    /// [`Handle::wait_for_timeout`] or [`Handle::wait_connected`], which
    /// return an error then.
    pub async fn wait_for(&self, state: StateKind) -> Snapshot {
        let mut rx = self.inner.snapshot.clone();
        let result = rx.wait_for(|s| s.state == state).await.map(|s| *s);
        result.unwrap_or_else(|_| *rx.borrow())
    }

    /// Waits until a link is up (connected or blocked), for at most
    /// `timeout` (`Duration::MAX`: without limit), and returns its
    /// generation. The first-connect story: spawn, then
    /// `handle.wait_connected(timeout).await?`.
    ///
    /// # Errors
    /// At once when the engine is `Failed` ([`WaitError::Failed`], with the
    /// error it gave up on) or shutting down ([`WaitError::ShutDown`]);
    /// [`WaitError::TimedOut`] when the time runs out.
    ///
    /// # Examples
    ///
    /// Bad credentials are a permanent error: the engine gives up and the
    /// wait says so at once, with the error, instead of waiting it out.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use redial::machine::{Config, ErrorKind};
    /// use redial::runtime::{Engine, WaitError};
    /// use redial::testing::{MemoryTransport, Plan};
    ///
    /// let transport = MemoryTransport::new();
    /// transport.control().set_default(Plan::Fail(ErrorKind::Permanent));
    /// let engine = Engine::spawn(Config::default(), transport);
    /// match engine.handle().wait_connected(Duration::from_secs(30)).await {
    ///     Err(WaitError::Failed { cause, error }) => {
    ///         println!("gave up ({cause}): {error:?}");
    ///     }
    ///     other => panic!("expected a give-up, got {other:?}"),
    /// }
    /// engine.shutdown().await;
    /// # }
    /// ```
    pub async fn wait_connected(&self, timeout: Duration) -> Result<Generation, WaitError> {
        self.wait_until(timeout, StateKind::is_link_up)
            .await
            .map(|s| s.generation)
    }

    /// Waits until the engine reaches `state`, for at most `timeout`
    /// (`Duration::MAX`: without limit).
    ///
    /// # Errors
    /// At once when `state` can no longer be reached without the user
    /// acting: the engine is `Failed` ([`WaitError::Failed`]; `Closing` and
    /// `Closed` can still be reached from there) or shutting down
    /// ([`WaitError::ShutDown`]; unless `state` is `Closing` or `Closed`).
    /// [`WaitError::TimedOut`] when the time runs out.
    pub async fn wait_for_timeout(
        &self,
        state: StateKind,
        timeout: Duration,
    ) -> Result<Snapshot, WaitError> {
        self.wait_until(timeout, |s| s == state).await
    }

    async fn wait_until(
        &self,
        timeout: Duration,
        reached: impl Fn(StateKind) -> bool,
    ) -> Result<Snapshot, WaitError> {
        let wait = async {
            let mut rx = self.inner.snapshot.clone();
            loop {
                // The reconnect requests are read before the snapshot (see
                // `dead_end`).
                let settled = self.reconnects_settled();
                let snapshot = *rx.borrow_and_update();
                if reached(snapshot.state) {
                    return Ok(snapshot);
                }
                if let Some(error) = self.dead_end(&snapshot, settled, &reached) {
                    return Err(error);
                }
                if rx.changed().await.is_err() {
                    // The driver is gone: the engine is closed.
                    let last = *rx.borrow();
                    return if reached(last.state) {
                        Ok(last)
                    } else {
                        Err(WaitError::ShutDown)
                    };
                }
            }
        };
        // A timeout beyond the clock's range waits without limit.
        match tokio::time::Instant::now().checked_add(timeout) {
            Some(deadline) => tokio::time::timeout_at(deadline, wait)
                .await
                .unwrap_or_else(|_| {
                    Err(WaitError::TimedOut {
                        after: timeout,
                        last: self.snapshot(),
                    })
                }),
            None => wait.await,
        }
    }

    /// Whether every `reconnect_now` so far was taken by the driver and no
    /// request is pending. Read before the snapshot: the driver stores
    /// what it took only after it published the state the request led to,
    /// so a `Failed` snapshot read after a settled check is not one a
    /// request made before the wait is about to end.
    fn reconnects_settled(&self) -> bool {
        let c = &self.inner.counters;
        let requested = c.reconnects_requested.load(Ordering::SeqCst);
        let taken = c.reconnects_taken.load(Ordering::SeqCst);
        taken >= requested && !self.inner.shared.reconnect_pending()
    }

    /// The error that ends a wait for a state `snapshot` cannot reach.
    fn dead_end(
        &self,
        snapshot: &Snapshot,
        reconnects_settled: bool,
        reached: impl Fn(StateKind) -> bool,
    ) -> Option<WaitError> {
        let shutdown_awaited = reached(StateKind::Closing) || reached(StateKind::Closed);
        match snapshot.state {
            StateKind::Closing | StateKind::Closed if !shutdown_awaited => {
                Some(WaitError::ShutDown)
            }
            StateKind::Failed if !shutdown_awaited && reconnects_settled => {
                Some(WaitError::Failed {
                    cause: snapshot.failure.unwrap_or(FailCause::RetriesExhausted),
                    error: self.failure_error(),
                })
            }
            _ => None,
        }
    }
}

/// A [`Handle`] bound to one link's generation; what a transport keeps in
/// its I/O tasks and callbacks.
///
/// # Examples
///
/// An SDK's interrupt callback that captures its link's reporter: fired
/// late, after its link was replaced, it is stale and changes nothing (the
/// reconnect storm of report 003 cannot start).
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), redial::runtime::WaitError> {
/// use std::time::Duration;
/// use redial::machine::{Config, ErrorKind};
/// use redial::runtime::{Engine, Report};
/// use redial::testing::MemoryTransport;
///
/// let transport = MemoryTransport::new();
/// let control = transport.control();
/// let engine = Engine::spawn(Config::default(), transport);
/// let first = engine.handle().wait_connected(Duration::from_secs(30)).await?;
///
/// // What the transport handed link `first`'s callbacks (`OpenContext::reporter`).
/// let reporter = control.reporter(first).expect("link opened");
/// let on_interrupted = move || reporter.lost(ErrorKind::Transient);
///
/// assert_eq!(on_interrupted(), Report::Queued);
/// let mut snapshots = engine.handle().watch();
/// snapshots.wait_for(|s| s.state.is_link_up() && s.generation > first).await.unwrap();
/// assert_eq!(on_interrupted(), Report::Stale); // the same callback, queued and run late
/// engine.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LinkReporter {
    handle: Handle,
    generation: Generation,
}

impl LinkReporter {
    /// The link's generation.
    pub fn generation(&self) -> Generation {
        self.generation
    }
    /// The link died.
    pub fn lost(&self, kind: ErrorKind) -> Report {
        self.handle.report_lost(self.generation, kind)
    }
    /// The link died of `error` (see [`Handle::report_lost_because`]).
    pub fn lost_because(&self, kind: ErrorKind, error: SharedError) -> Report {
        self.handle
            .report_lost_because(self.generation, kind, error)
    }
    /// The link came back by itself.
    pub fn resumed(&self) -> Report {
        self.handle.report_resumed(self.generation)
    }
    /// The link came back by itself without its session (see
    /// [`Handle::report_resumed_without_session`]).
    pub fn resumed_without_session(&self) -> Report {
        self.handle.report_resumed_without_session(self.generation)
    }
    /// Inbound traffic arrived.
    pub fn activity(&self) -> Report {
        self.handle.report_activity(self.generation)
    }
    /// The broker blocked publishing.
    pub fn blocked(&self) -> Report {
        self.handle.report_blocked(self.generation)
    }
    /// The broker unblocked publishing.
    pub fn unblocked(&self) -> Report {
        self.handle.report_unblocked(self.generation)
    }
    /// Whether this link is still the current one (one atomic load).
    pub fn is_current(&self) -> bool {
        self.handle.generation() == self.generation
    }
    /// The engine's handle.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}
