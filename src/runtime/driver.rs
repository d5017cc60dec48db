//! The tokio driver: runs the machine, executes its outputs through the
//! transport, arms one timer, and feeds the handle's reports.
//!
//! Data flows one way: reports and task results become machine inputs, the
//! machine's outputs become transport calls. The driver decides nothing.

use std::future::{Future, pending, poll_fn};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::chain::Chain;
use crate::machine::{
    ErrorKind, Generation, Input, Machine, Output, ProbeOutcome, Reason, State, StateKind,
};
use crate::runtime::events::{Event, SharedError};
use crate::runtime::handle::{Handle, Inner, Snapshot};
use crate::runtime::metrics;
use crate::runtime::step::{Effects, Step, Work};
use crate::runtime::transport::{Classify, OpenContext, Transport};

/// The link the driver currently holds, shared with publishers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CurrentLink<L> {
    /// Its generation.
    pub generation: Generation,
    /// The link.
    pub link: L,
}

/// An attempt that the machine ended because it exceeded the connect timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connect timed out after {after:?}")]
#[non_exhaustive]
pub struct ConnectTimedOut {
    /// The configured connect timeout.
    pub after: std::time::Duration,
}

type OpenResult<T> = Result<<T as Transport>::Link, <T as Transport>::Error>;

struct Opening<T: Transport> {
    generation: Generation,
    attempt: u32,
    endpoint: usize,
    task: JoinHandle<OpenResult<T>>,
}

/// The probe in flight: at most one, dropped when the machine moves on.
struct Probing {
    probe: u64,
    task: JoinHandle<ProbeOutcome>,
}

/// Runs one engine. Built by [`crate::runtime::Engine`].
pub(crate) struct Driver<T: Transport> {
    step: Step,
    io: Io<T>,
}

/// Everything the driver does around the machine: the transport, the
/// handle's shared state, the watch channels, events and counters.
struct Io<T: Transport> {
    /// Inline, not in an `Arc`: nothing shares it, and the `Arc` was a
    /// heap allocation of its own per engine (a 32-byte chunk for a
    /// transport that keeps no state).
    transport: T,
    handle: Handle,
    snapshot_tx: watch::Sender<Snapshot>,
    links_tx: watch::Sender<Option<CurrentLink<T::Link>>>,
    opening: Option<Opening<T>>,
    probing: Option<Probing>,
    link: Option<(Generation, T::Link)>,
    /// The restore of a link that resumed without its session.
    restoring: Option<(Generation, JoinHandle<()>)>,
    down_since: Option<DownSince>,
    /// A lost link that may still resume (within the resume grace): its
    /// loss is an outage only if the grace ends without a resume.
    lingering: bool,
    last_error: Option<SharedError>,
    /// The error a loss being fed was reported with, for its event.
    loss_error: Option<SharedError>,
    last_reason: Option<Reason>,
    /// The snapshot changed since watchers were last notified.
    snapshot_unseen: bool,
}

/// When the engine last lost its link, and whether that was an outage (the
/// time before the first connect is not).
#[derive(Debug, Clone, Copy)]
struct DownSince {
    at: Instant,
    outage: bool,
}

enum Wake<T: Transport> {
    Work,
    Timer,
    Opened(Result<OpenResult<T>, tokio::task::JoinError>),
    Probed(u64, Result<ProbeOutcome, tokio::task::JoinError>),
}

/// The span of one link's work (its open, close and restore, and the tasks
/// the transport spawns from them): a child of the engine's span, so the
/// generation stays fixed for the span's life (docs/observability.md).
/// `peer` is recorded only when a subscriber keeps the span.
pub(crate) fn link_span<T: Transport>(
    transport: &T,
    generation: Generation,
    attempt: Option<u32>,
    endpoint: Option<usize>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "redial.link",
        generation = generation.0,
        attempt,
        endpoint,
        peer = tracing::field::Empty,
    );
    if let Some(endpoint) = endpoint
        && !span.is_disabled()
    {
        span.record("peer", transport.peer(endpoint).as_deref());
    }
    span
}

pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl<T: Transport> Driver<T> {
    pub(crate) fn new(
        machine: Machine,
        transport: T,
        inner: Arc<Inner>,
        snapshot_tx: watch::Sender<Snapshot>,
        links_tx: watch::Sender<Option<CurrentLink<T::Link>>>,
    ) -> Self {
        let io = Io {
            transport,
            handle: Handle { inner },
            snapshot_tx,
            links_tx,
            opening: None,
            probing: None,
            link: None,
            restoring: None,
            down_since: Some(DownSince {
                at: now(),
                outage: false,
            }),
            lingering: false,
            last_error: None,
            loss_error: None,
            last_reason: None,
            snapshot_unseen: false,
        };
        Self {
            step: Step::new(machine),
            io,
        }
    }

    /// Runs until the engine is closed. `adopted` is the application's own
    /// first link ([`crate::runtime::Prepared::adopt`]); without one the
    /// engine starts by opening its first link.
    ///
    /// Not an `async fn`: one stores its arguments twice in its future (the
    /// argument, and the local the body moves it into; rust-lang/rust#62958),
    /// which put the whole `Driver` (744 bytes) twice into every engine's
    /// task. The `async move` block uses the captured `self` in place.
    #[allow(clippy::manual_async_fn)] // on purpose, see above
    pub(crate) fn run(mut self, adopted: Option<T::Link>) -> impl Future<Output = ()> + Send {
        async move {
            match adopted {
                Some(link) => {
                    let generation = self.step.machine().generation();
                    self.io.link = Some((generation, link.clone()));
                    self.io
                        .links_tx
                        .send_replace(Some(CurrentLink { generation, link }));
                    self.feed(Input::Adopt { generation }).await;
                }
                None => self.feed(Input::Start).await,
            }
            while self.step.machine().kind() != StateKind::Closed {
                let deadline = self.step.machine().poll_timeout();
                match self.wait(deadline).await {
                    Wake::Work => self.take_work().await,
                    Wake::Timer => {
                        // Activity first: the liveness check must see it.
                        self.take_work().await;
                        self.feed(Input::Timeout).await;
                    }
                    Wake::Opened(result) => self.opened(result).await,
                    Wake::Probed(probe, result) => {
                        self.io.probing = None;
                        tracing::debug!(probe, ?result, "probe answered");
                        // A probe that panicked is a transport bug: stop probing.
                        let outcome = result.unwrap_or(ProbeOutcome::Unsupported);
                        self.feed(Input::Probed { probe, outcome }).await;
                    }
                }
            }
            self.io.drop_probe();
            self.io.drop_restore();
            self.io.links_tx.send_replace(None);
            tracing::debug!("driver stopped");
        }
    }

    async fn wait(&mut self, deadline: Option<Instant>) -> Wake<T> {
        let shared = &self.io.handle.inner.shared;
        let work = poll_fn(|cx| shared.poll_work(cx));
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => pending().await,
            }
        };
        let opened = async {
            match &mut self.io.opening {
                Some(o) => (&mut o.task).await,
                None => pending().await,
            }
        };
        let probed = async {
            match &mut self.io.probing {
                Some(p) => (p.probe, (&mut p.task).await),
                None => pending().await,
            }
        };
        tokio::select! {
            biased;
            () = work => Wake::Work,
            r = opened => Wake::Opened(r),
            (probe, r) = probed => Wake::Probed(probe, r),
            () = timer => Wake::Timer,
        }
    }

    /// Takes the user's commands and the links' reports and feeds them.
    async fn take_work(&mut self) {
        let work = Work::take(&self.io.handle.inner.shared);
        let counters = &self.io.handle.inner.counters;
        // Read after the take: includes every request whose command was taken.
        let requested = counters.reconnects_requested.load(Ordering::SeqCst);
        for input in work.inputs() {
            if let Input::LinkLost { generation, .. } = input {
                let slot = crate::runtime::handle::lock(&self.io.handle.inner.loss_error).take();
                self.io.loss_error = slot.filter(|(g, _)| *g == generation).map(|(_, e)| e);
            }
            self.feed(input).await;
            self.io.loss_error = None;
        }
        // After the state those requests led to was published (see
        // `Handle::reconnects_settled`).
        self.io
            .handle
            .inner
            .counters
            .reconnects_taken
            .store(requested, Ordering::SeqCst);
    }

    async fn opened(&mut self, result: Result<OpenResult<T>, tokio::task::JoinError>) {
        let Some(Opening {
            generation,
            attempt,
            endpoint,
            ..
        }) = self.io.opening.take()
        else {
            return;
        };
        let (error, kind) = match result {
            Ok(Ok(link)) => {
                self.io.link = Some((generation, link.clone()));
                self.io
                    .links_tx
                    .send_replace(Some(CurrentLink { generation, link }));
                self.feed(Input::AttemptSucceeded { generation }).await;
                return;
            }
            Ok(Err(error)) => {
                metrics::count(self.io.name(), metrics::ENGINE_ATTEMPTS_FAILED);
                let kind = error.kind();
                tracing::warn!(generation = generation.0, attempt, endpoint, ?kind, error = %Chain(&error), "attempt failed");
                (Arc::new(error) as SharedError, kind)
            }
            Err(join) => {
                metrics::count(self.io.name(), metrics::ENGINE_ATTEMPTS_FAILED);
                // The open task panicked: a bug in the transport, treated as transient.
                tracing::error!(generation = generation.0, attempt, endpoint, %join, "open task failed");
                (Arc::new(join) as SharedError, ErrorKind::Transient)
            }
        };
        self.io.last_error = Some(error.clone());
        self.io.emit(Event::AttemptFailed {
            generation,
            attempt,
            endpoint,
            kind,
            error,
        });
        self.feed(Input::failed(generation, kind)).await;
    }

    /// Feeds one input and executes every action it causes, round by round
    /// (`step.rs` decides; this only runs the opens and closes).
    async fn feed(&mut self, input: Input) {
        let mut actions = self.step.feed(input, &mut self.io);
        loop {
            for action in actions.drain(..) {
                self.execute(action).await;
            }
            match self.step.settle(&mut self.io) {
                Some(next) => {
                    self.step.recycle(actions);
                    actions = next;
                }
                None => break,
            }
        }
        self.step.recycle(actions);
    }

    async fn execute(&mut self, output: Output) {
        let io = &mut self.io;
        match output {
            Output::Open {
                generation,
                attempt,
                endpoint,
            } => {
                let endpoint = endpoint as usize;
                tracing::info!(generation = generation.0, attempt, endpoint, "opening link");
                io.handle
                    .inner
                    .counters
                    .attempts
                    .fetch_add(1, Ordering::Relaxed);
                metrics::count(io.name(), metrics::ENGINE_ATTEMPTS);
                io.emit(Event::AttemptStarted {
                    generation,
                    attempt,
                    endpoint,
                });
                io.drop_probe();
                let ctx = OpenContext {
                    generation,
                    attempt,
                    endpoint,
                    reporter: io.handle.reporter(generation),
                };
                let span = link_span(&io.transport, generation, Some(attempt), Some(endpoint));
                // The transport's own tasks, spawned from `open`, inherit it.
                let open = span.in_scope(|| io.transport.open(ctx));
                let task = tokio::spawn(open.instrument(span));
                io.opening = Some(Opening {
                    generation,
                    attempt,
                    endpoint,
                    task,
                });
            }
            Output::Close { generation, reason } => {
                let timeout = self.step.machine().config().close_timeout();
                // Boxed: a future is as large as its largest await, and the
                // close's (two timeouts, each with a 112-byte `Sleep`) made
                // every idle engine's task about 240 bytes larger. A close
                // is rare; one short-lived allocation then is cheaper.
                Box::pin(io.close(generation, reason, timeout)).await;
            }
            Output::Restore { generation } => io.restore(generation),
            Output::Probe { probe, endpoint } => {
                let endpoint = endpoint as usize;
                tracing::debug!(probe, endpoint, "probing the broker");
                io.handle
                    .inner
                    .counters
                    .probes
                    .fetch_add(1, Ordering::Relaxed);
                metrics::count(io.name(), metrics::ENGINE_PROBES);
                // The machine ignores the older probe's answer: stop its work.
                io.drop_probe();
                let span = tracing::info_span!(
                    "redial.probe",
                    probe,
                    endpoint,
                    peer = tracing::field::Empty
                );
                if !span.is_disabled() {
                    span.record("peer", io.transport.peer(endpoint).as_deref());
                }
                let probed = span.in_scope(|| io.transport.probe(endpoint));
                let task = tokio::spawn(probed.instrument(span));
                io.probing = Some(Probing { probe, task });
            }
            report => io.report(self.step.machine(), report),
        }
    }
}

impl<T: Transport> Effects for Io<T> {
    fn now(&self) -> Instant {
        now()
    }

    /// Publishes the machine's state as soon as it moves: the atomic the
    /// handle reads (so stale reports are rejected at once) and the watched
    /// snapshot's value, without notifying watchers yet.
    fn publish(&mut self, machine: &Machine) {
        if machine.kind() == StateKind::Failed {
            // Before the state: a publisher that sees `Failed` finds the
            // error (a connect timeout's is set again when it is reported).
            *crate::runtime::handle::lock(&self.handle.inner.failure_error) = self.give_up_error();
        }
        self.handle
            .inner
            .shared
            .publish(machine.generation(), machine.kind());
        let next = Snapshot {
            state: machine.kind(),
            generation: machine.generation(),
            attempt: machine.attempts(),
            endpoint: machine.endpoint() as usize,
            reason: self.last_reason,
            failure: match machine.state() {
                State::Failed { cause } => Some(*cause),
                _ => None,
            },
        };
        let mut changed = false;
        self.snapshot_tx.send_if_modified(|s| {
            changed = *s != next;
            *s = next;
            false
        });
        self.snapshot_unseen |= changed;
    }

    /// Broadcasts what the machine reports (no I/O).
    fn report(&mut self, machine: &Machine, output: Output) {
        match output {
            Output::StateChanged {
                from,
                to,
                generation,
                reason,
                ..
            } => {
                // The link this change took down; still held, as the close
                // runs after the round's reports.
                let lost = (from.is_link_up() && !to.is_link_up())
                    .then(|| self.link.as_ref().map(|(g, _)| *g))
                    .flatten();
                match lost {
                    Some(lost) => tracing::info!(
                        generation = generation.0,
                        lost = lost.0,
                        from = %from,
                        to = %to,
                        ?reason,
                        "state changed"
                    ),
                    None => {
                        tracing::info!(generation = generation.0, from = %from, to = %to, ?reason, "state changed")
                    }
                }
                metrics::state_changed(self.name(), from, to);
                self.account(from, to, reason, generation, lost);
                if reason == Reason::ConnectTimeout
                    && let Some(opening) = &self.opening
                {
                    let (generation, attempt) = (opening.generation, opening.attempt);
                    let endpoint = opening.endpoint;
                    metrics::count(self.name(), metrics::ENGINE_ATTEMPTS_FAILED);
                    let error: SharedError = Arc::new(ConnectTimedOut {
                        after: machine.config().connect_timeout().unwrap_or_default(),
                    });
                    self.last_error = Some(error.clone());
                    self.emit(Event::AttemptFailed {
                        generation,
                        attempt,
                        endpoint,
                        kind: ErrorKind::Transient,
                        error,
                    });
                }
                if let State::BackingOff { attempt, until, .. } = machine.state() {
                    let delay_ms =
                        u64::try_from(until.saturating_duration_since(now()).as_millis())
                            .unwrap_or(u64::MAX);
                    tracing::info!(generation = generation.0, attempt, delay_ms, "backing off");
                }
                // Readers of `snapshot()` who got the event see its reason.
                self.last_reason = Some(reason);
                self.publish(machine);
                let error = match reason {
                    Reason::AttemptFailed | Reason::ConnectTimeout => self.last_error.clone(),
                    Reason::LinkLost => self.loss_error.clone(),
                    _ => None,
                };
                self.emit(Event::StateChanged {
                    from,
                    to,
                    generation,
                    lost,
                    reason,
                    error,
                });
            }
            Output::LivenessLost { generation } => {
                tracing::warn!(
                    generation = generation.0,
                    "liveness lost: no inbound traffic"
                );
                self.emit(Event::LivenessLost { generation });
            }
            Output::GaveUp {
                cause, attempts, ..
            } => {
                tracing::error!(%cause, attempts, "gave up reconnecting");
                metrics::count(self.name(), metrics::ENGINE_GIVE_UPS);
                let error = self.give_up_error();
                self.emit(Event::GaveUp {
                    cause,
                    attempts,
                    error,
                });
            }
            // Actions: run by `execute`, never reported.
            Output::Open { .. }
            | Output::Close { .. }
            | Output::Probe { .. }
            | Output::Restore { .. } => {}
        }
    }

    /// Wakes the snapshot's watchers, once the round's events were broadcast.
    fn notify(&mut self) {
        if std::mem::take(&mut self.snapshot_unseen) {
            self.snapshot_tx.send_modify(|_| {});
        }
    }

    fn stale_input(&mut self) {
        self.handle
            .inner
            .counters
            .machine_stale
            .fetch_add(1, Ordering::Relaxed);
    }

    fn idle(&self) -> bool {
        self.opening.is_none() && self.link.is_none()
    }
}

impl<T: Transport> Io<T> {
    /// Stops the probe in flight, if any: its answer would be stale.
    fn drop_probe(&mut self) {
        if let Some(p) = self.probing.take() {
            p.task.abort();
        }
    }

    /// Stops the restore in flight, if any: its link is gone.
    fn drop_restore(&mut self) {
        if let Some((_, task)) = self.restoring.take() {
            task.abort();
        }
    }

    /// Restores link `generation`, which resumed without its session, in
    /// the background; a failure is reported as the link's loss.
    fn restore(&mut self, generation: Generation) {
        let Some((_, link)) = self.link.as_ref().filter(|(g, _)| *g == generation) else {
            return;
        };
        tracing::info!(
            generation = generation.0,
            "restoring a link that resumed without its session"
        );
        let span = link_span(&self.transport, generation, None, None);
        let restore = span.in_scope(|| self.transport.restore(link.clone()));
        self.drop_restore();
        let reporter = self.handle.reporter(generation);
        let task = tokio::spawn(
            async move {
                if let Err(error) = restore.await {
                    tracing::warn!(generation = generation.0, error = %Chain(&error), "restore failed");
                    reporter.lost_because(error.kind(), Arc::new(error));
                }
            }
            .instrument(span),
        );
        self.restoring = Some((generation, task));
    }

    /// Closes link `generation`, aborting its open if it is still running.
    /// Awaited inline: the next `Open` never starts before the close ends.
    async fn close(
        &mut self,
        generation: Generation,
        reason: Reason,
        timeout: std::time::Duration,
    ) {
        if self
            .restoring
            .as_ref()
            .is_some_and(|(g, _)| *g == generation)
        {
            self.drop_restore();
        }
        if self
            .opening
            .as_ref()
            .is_some_and(|o| o.generation == generation)
        {
            let opening = self.opening.take().expect("checked above");
            opening.task.abort();
            // An open that finished just before the abort still built a link.
            if let Ok(Ok(link)) = opening.task.await {
                let span = link_span(&self.transport, generation, None, None);
                let close = span.in_scope(|| self.transport.close(link, reason));
                let _ = tokio::time::timeout(timeout, close.instrument(span)).await;
            }
        }
        if self.link.as_ref().is_some_and(|(g, _)| *g == generation) {
            let (_, link) = self.link.take().expect("checked above");
            self.links_tx.send_replace(None);
            tracing::debug!(generation = generation.0, ?reason, "closing link");
            let span = link_span(&self.transport, generation, None, None);
            let close = span.in_scope(|| self.transport.close(link, reason));
            if tokio::time::timeout(timeout, close.instrument(span))
                .await
                .is_err()
            {
                tracing::warn!(generation = generation.0, "close timed out");
            }
        }
    }

    /// Counts a state change (see `Stats` for what each counter means).
    fn account(
        &mut self,
        from: StateKind,
        to: StateKind,
        reason: Reason,
        generation: Generation,
        lost: Option<Generation>,
    ) {
        let counters = &self.handle.inner.counters;
        let t = now();
        // A lingering link's grace ends: resumed, or an outage after all.
        let name = self.handle.inner.name.get();
        if from == StateKind::BackingOff
            && std::mem::take(&mut self.lingering)
            && reason != Reason::LinkResumed
        {
            counters.outages.fetch_add(1, Ordering::Relaxed);
            metrics::count(name, metrics::ENGINE_OUTAGES);
        }
        // Our own shutdown is not a loss.
        if from.is_link_up() && !to.is_link_up() && !to.is_shutting_down() {
            counters.losses.fetch_add(1, Ordering::Relaxed);
            metrics::count(name, metrics::ENGINE_LOSSES);
            // A retired link moved the generation on; a lingering one did not.
            if lost == Some(generation) && to == StateKind::BackingOff {
                self.lingering = true;
            } else {
                counters.outages.fetch_add(1, Ordering::Relaxed);
                metrics::count(name, metrics::ENGINE_OUTAGES);
            }
            self.down_since = Some(DownSince {
                at: t,
                outage: true,
            });
        }
        if to.is_link_up() && !from.is_link_up() {
            // A later give-up must not blame an error from before this link.
            self.last_error = None;
            let resumed = reason == Reason::LinkResumed;
            let counter = if resumed {
                &counters.resumes
            } else {
                &counters.connects
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let metric = if resumed {
                metrics::ENGINE_RESUMES
            } else {
                metrics::ENGINE_CONNECTS
            };
            metrics::count(name, metric);
            if let Some(down) = self.down_since.take() {
                let down_for = t.saturating_duration_since(down.at);
                let ms = u64::try_from(down_for.as_millis()).unwrap_or(u64::MAX);
                // The first connect is not a recovery.
                if down.outage {
                    counters
                        .last_recovery_ms_plus_one
                        .store(ms.saturating_add(1), Ordering::Relaxed);
                    let histograms = counters.histograms.get_or_init(Box::default);
                    histograms.recovery_time.record(down_for);
                    metrics::record(name, metrics::ENGINE_RECOVERY, down_for);
                    if !resumed {
                        histograms.outage_length.record(down_for);
                        metrics::record(name, metrics::ENGINE_OUTAGE, down_for);
                    }
                }
                counters
                    .disconnected_total_ms
                    .fetch_add(ms, Ordering::Relaxed);
            }
        }
    }

    fn emit(&mut self, event: Event) {
        self.handle.inner.emit(event);
    }

    /// The engine's name, for its metrics' label.
    fn name(&self) -> Option<&Arc<str>> {
        self.handle.inner.name.get()
    }

    /// The error a give-up is blamed on: the loss's, else the last attempt's.
    fn give_up_error(&self) -> Option<SharedError> {
        self.loss_error.clone().or_else(|| self.last_error.clone())
    }
}

/// Makes sure a spawned driver's future is `Send`.
#[allow(dead_code)]
fn assert_send<F: Future + Send>(_: F) {}

#[allow(dead_code)]
fn driver_is_send<T: Transport>(d: Driver<T>) {
    assert_send(d.run(None));
}

/// The driver's ends of the engine's channels, and the snapshot's reader.
pub(crate) struct Channels<L> {
    pub(crate) snapshot_tx: watch::Sender<Snapshot>,
    pub(crate) snapshot_rx: watch::Receiver<Snapshot>,
    pub(crate) links_tx: watch::Sender<Option<CurrentLink<L>>>,
}

pub(crate) fn channels<L>(generation: Generation) -> Channels<L> {
    let (snapshot_tx, snapshot_rx) = watch::channel(Snapshot {
        state: StateKind::Idle,
        generation,
        attempt: 0,
        endpoint: 0,
        reason: None,
        failure: None,
    });
    let (links_tx, _) = watch::channel(None);
    Channels {
        snapshot_tx,
        snapshot_rx,
        links_tx,
    }
}

/// The sizes of the driver's futures, for `footprint.rs`.
#[cfg(all(test, not(loom)))]
pub(crate) fn future_sizes<T: Transport>(
    mut d: Driver<T>,
    link: T::Link,
) -> Vec<(&'static str, usize)> {
    use std::mem::size_of_val;
    let g = d.step.machine().generation();
    let mut v = vec![
        ("Driver", std::mem::size_of::<Driver<T>>()),
        ("  Step", std::mem::size_of::<Step>()),
        ("  Io", std::mem::size_of::<Io<T>>()),
    ];
    let size = size_of_val(&d.wait(None));
    v.push(("wait()", size));
    let size = size_of_val(&d.take_work());
    v.push(("take_work()", size));
    let size = size_of_val(&d.feed(Input::Start));
    v.push(("feed()", size));
    let size = size_of_val(&d.execute(Output::Restore { generation: g }));
    v.push(("execute()", size));
    let size = size_of_val(&d.io.close(g, Reason::Shutdown, std::time::Duration::ZERO));
    v.push(("Io::close()", size));
    let size = size_of_val(&d.opened(Ok(Ok(link))));
    v.push(("opened()", size));
    v.push(("run()", size_of_val(&d.run(None))));
    v
}
