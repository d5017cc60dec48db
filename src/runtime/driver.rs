//! The tokio driver: runs the machine, executes its outputs through the
//! transport, arms one timer, and feeds the handle's reports.
//!
//! Data flows one way: reports and task results become machine inputs, the
//! machine's outputs become transport calls. The driver decides nothing.

use std::future::{Future, pending, poll_fn};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::machine::{ErrorKind, Generation, Input, Machine, Output, Reason, State, StateKind};
use crate::runtime::events::{Event, SharedError};
use crate::runtime::handle::{Handle, Inner, Snapshot};
use crate::runtime::transport::{Classify, OpenContext, Transport};

/// The link the driver currently holds, shared with publishers.
#[derive(Debug, Clone)]
pub struct CurrentLink<L> {
    /// Its generation.
    pub generation: Generation,
    /// The link.
    pub link: L,
}

/// An attempt that the machine ended because it exceeded the connect timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connect timed out after {after:?}")]
pub struct ConnectTimedOut {
    /// The configured connect timeout.
    pub after: std::time::Duration,
}

type OpenResult<T> = Result<<T as Transport>::Link, <T as Transport>::Error>;

struct Opening<T: Transport> {
    generation: Generation,
    attempt: u32,
    task: JoinHandle<OpenResult<T>>,
}

/// Runs one engine. Built by [`crate::runtime::Engine`].
pub(crate) struct Driver<T: Transport> {
    machine: Machine,
    transport: Arc<T>,
    handle: Handle,
    snapshot_tx: watch::Sender<Snapshot>,
    links_tx: watch::Sender<Option<CurrentLink<T::Link>>>,
    opening: Option<Opening<T>>,
    link: Option<(Generation, T::Link)>,
    down_since: Option<DownSince>,
    last_error: Option<SharedError>,
    last_reason: Option<Reason>,
    /// Reused buffer for a step's opens and closes.
    actions: Vec<Output>,
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
        Self {
            machine,
            transport: Arc::new(transport),
            handle: Handle { inner },
            snapshot_tx,
            links_tx,
            opening: None,
            link: None,
            down_since: Some(DownSince {
                at: now(),
                outage: false,
            }),
            last_error: None,
            last_reason: None,
            actions: Vec::new(),
            snapshot_unseen: false,
        }
    }

    pub(crate) async fn run(mut self) {
        self.feed(Input::Start).await;
        while self.machine.kind() != StateKind::Closed {
            let deadline = self.machine.poll_timeout();
            match self.wait(deadline).await {
                Wake::Work => self.take_work().await,
                Wake::Timer => {
                    // Activity first: the liveness check must see it.
                    self.take_work().await;
                    self.feed(Input::Timeout).await;
                }
                Wake::Opened(result) => self.opened(result).await,
            }
        }
        self.links_tx.send_replace(None);
        tracing::debug!("driver stopped");
    }

    async fn wait(&mut self, deadline: Option<Instant>) -> Wake<T> {
        let shared = &self.handle.inner.shared;
        let work = poll_fn(|cx| shared.poll_work(cx));
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => pending().await,
            }
        };
        let opened = async {
            match &mut self.opening {
                Some(o) => (&mut o.task).await,
                None => pending().await,
            }
        };
        tokio::select! {
            biased;
            () = work => Wake::Work,
            r = opened => Wake::Opened(r),
            () = timer => Wake::Timer,
        }
    }

    /// Takes the user's commands and the links' reports and feeds them.
    async fn take_work(&mut self) {
        let shared = &self.handle.inner.shared;
        let (commands, batch) = shared.take_work();
        if commands.shutdown {
            self.feed(Input::Shutdown).await;
        } else if commands.reconnect {
            self.feed(Input::ReconnectNow).await;
        }
        if !batch.is_empty() {
            for input in batch.inputs() {
                self.feed(input).await;
            }
        }
    }

    async fn opened(&mut self, result: Result<OpenResult<T>, tokio::task::JoinError>) {
        let Some(Opening {
            generation,
            attempt,
            ..
        }) = self.opening.take()
        else {
            return;
        };
        match result {
            Ok(Ok(link)) => {
                self.link = Some((generation, link.clone()));
                self.links_tx
                    .send_replace(Some(CurrentLink { generation, link }));
                self.feed(Input::AttemptSucceeded { generation }).await;
            }
            Ok(Err(error)) => {
                let kind = error.kind();
                tracing::warn!(generation = generation.0, attempt, ?kind, %error, "attempt failed");
                let error: SharedError = Arc::new(error);
                self.last_error = Some(error.clone());
                self.emit(Event::AttemptFailed {
                    generation,
                    attempt,
                    kind,
                    error,
                });
                self.feed(Input::AttemptFailed { generation, kind }).await;
            }
            Err(join) => {
                // The open task panicked: a bug in the transport, treated as transient.
                tracing::error!(generation = generation.0, attempt, %join, "open task failed");
                let error: SharedError = Arc::new(join);
                self.last_error = Some(error.clone());
                self.emit(Event::AttemptFailed {
                    generation,
                    attempt,
                    kind: ErrorKind::Transient,
                    error,
                });
                self.feed(Input::AttemptFailed {
                    generation,
                    kind: ErrorKind::Transient,
                })
                .await;
            }
        }
    }

    /// Feeds one input and executes every output it causes.
    async fn feed(&mut self, input: Input) {
        let before = self.machine.stats().stale_inputs;
        self.machine.handle(now(), input);
        if self.machine.stats().stale_inputs > before {
            self.handle
                .inner
                .counters
                .machine_stale
                .fetch_add(1, Ordering::Relaxed);
        }
        self.publish_state();
        loop {
            // Report first, act second: the step's events are broadcast and
            // watchers notified before any close or open is awaited, so they
            // see `closing` while the close runs, and they are notified only
            // after the events of the change were broadcast.
            let mut actions = std::mem::take(&mut self.actions);
            while let Some(output) = self.machine.poll(now()) {
                match output {
                    Output::Open { .. } | Output::Close { .. } => actions.push(output),
                    report => self.report(report),
                }
            }
            self.publish_state();
            self.notify_watchers();
            for action in actions.drain(..) {
                self.execute(action).await;
            }
            self.actions = actions;
            // A shutdown's close has been executed (closes are awaited inline).
            if self.machine.kind() == StateKind::Closing
                && self.opening.is_none()
                && self.link.is_none()
            {
                self.machine.handle(now(), Input::CloseCompleted);
                self.publish_state();
                continue;
            }
            break;
        }
    }

    async fn execute(&mut self, output: Output) {
        let counters = &self.handle.inner.counters;
        match output {
            Output::Open {
                generation,
                attempt,
            } => {
                tracing::info!(generation = generation.0, attempt, "opening link");
                counters.attempts.fetch_add(1, Ordering::Relaxed);
                self.emit(Event::AttemptStarted {
                    generation,
                    attempt,
                });
                let ctx = OpenContext {
                    generation,
                    attempt,
                    reporter: self.handle.reporter(generation),
                };
                let task = tokio::spawn(self.transport.open(ctx));
                self.opening = Some(Opening {
                    generation,
                    attempt,
                    task,
                });
            }
            Output::Close { generation } => self.close(generation).await,
            report => self.report(report),
        }
    }

    /// Broadcasts what the machine reports (no I/O).
    fn report(&mut self, output: Output) {
        match output {
            Output::StateChanged {
                from,
                to,
                generation,
                reason,
            } => {
                tracing::info!(generation = generation.0, from = %from, to = %to, ?reason, "state changed");
                self.account(from, to);
                if reason == Reason::ConnectTimeout
                    && let Some(opening) = &self.opening
                {
                    let (generation, attempt) = (opening.generation, opening.attempt);
                    let error: SharedError = Arc::new(ConnectTimedOut {
                        after: self.machine.config().connect_timeout(),
                    });
                    self.last_error = Some(error.clone());
                    self.emit(Event::AttemptFailed {
                        generation,
                        attempt,
                        kind: ErrorKind::Transient,
                        error,
                    });
                }
                if let State::BackingOff { attempt, until, .. } = self.machine.state() {
                    let delay_ms =
                        u64::try_from(until.saturating_duration_since(now()).as_millis())
                            .unwrap_or(u64::MAX);
                    tracing::info!(generation = generation.0, attempt, delay_ms, "backing off");
                }
                self.emit(Event::StateChanged {
                    from,
                    to,
                    generation,
                    reason,
                });
            }
            Output::LivenessLost { generation } => {
                tracing::warn!(
                    generation = generation.0,
                    "liveness lost: no inbound traffic"
                );
                self.emit(Event::LivenessLost { generation });
            }
            Output::GaveUp { cause } => {
                tracing::error!(%cause, "gave up reconnecting");
                self.emit(Event::GaveUp {
                    cause,
                    error: self.last_error.clone(),
                });
            }
            // Actions: run by `execute`, never reported.
            Output::Open { .. } | Output::Close { .. } => {}
        }
    }

    /// Closes link `generation`, aborting its open if it is still running.
    /// Awaited inline: the next `Open` never starts before the close ends.
    async fn close(&mut self, generation: Generation) {
        let timeout = self.machine.config().close_timeout();
        if self
            .opening
            .as_ref()
            .is_some_and(|o| o.generation == generation)
        {
            let opening = self.opening.take().expect("checked above");
            opening.task.abort();
            // An open that finished just before the abort still built a link.
            if let Ok(Ok(link)) = opening.task.await {
                let _ = tokio::time::timeout(timeout, self.transport.close(link)).await;
            }
        }
        if self.link.as_ref().is_some_and(|(g, _)| *g == generation) {
            let (_, link) = self.link.take().expect("checked above");
            self.links_tx.send_replace(None);
            tracing::debug!(generation = generation.0, "closing link");
            if tokio::time::timeout(timeout, self.transport.close(link))
                .await
                .is_err()
            {
                tracing::warn!(generation = generation.0, "close timed out");
            }
        }
    }

    fn account(&mut self, from: StateKind, to: StateKind) {
        let counters = &self.handle.inner.counters;
        let t = now();
        // Our own shutdown is not an outage.
        if from.is_link_up() && !to.is_link_up() && !to.is_shutting_down() {
            counters.outages.fetch_add(1, Ordering::Relaxed);
            self.down_since = Some(DownSince {
                at: t,
                outage: true,
            });
        }
        if to.is_link_up() && !from.is_link_up() {
            // A later give-up must not blame an error from before this link.
            self.last_error = None;
            counters.connects.fetch_add(1, Ordering::Relaxed);
            if let Some(down) = self.down_since.take() {
                let ms = u64::try_from(t.saturating_duration_since(down.at).as_millis())
                    .unwrap_or(u64::MAX);
                // The first connect is not a recovery.
                if down.outage {
                    counters
                        .last_recovery_ms_plus_one
                        .store(ms.saturating_add(1), Ordering::Relaxed);
                }
                counters
                    .disconnected_total_ms
                    .fetch_add(ms, Ordering::Relaxed);
            }
        }
    }

    /// Publishes the machine's state as soon as it moves: the atomic the
    /// handle reads (so stale reports are rejected at once) and the watched
    /// snapshot's value, without notifying watchers yet.
    fn publish_state(&mut self) {
        self.handle
            .inner
            .shared
            .publish(self.machine.generation(), self.machine.kind());
        let next = Snapshot {
            state: self.machine.kind(),
            generation: self.machine.generation(),
            attempt: self.machine.attempts(),
            reason: self.last_reason,
            failure: match self.machine.state() {
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

    /// Wakes the snapshot's watchers, once the step's events were broadcast.
    fn notify_watchers(&mut self) {
        if std::mem::take(&mut self.snapshot_unseen) {
            self.snapshot_tx.send_modify(|_| {});
        }
    }

    fn emit(&mut self, event: Event) {
        if let Event::StateChanged { reason, .. } = &event {
            self.last_reason = Some(*reason);
            // Readers of `snapshot()` who got the event see its reason.
            self.publish_state();
        }
        // No receivers is fine: nobody is listening.
        let _ = self.handle.inner.events.send(event);
    }
}

/// Makes sure a spawned driver's future is `Send`.
#[allow(dead_code)]
fn assert_send<F: Future + Send>(_: F) {}

#[allow(dead_code)]
fn driver_is_send<T: Transport>(d: Driver<T>) {
    assert_send(d.run());
}

/// The driver's ends of the engine's channels, and the snapshot's reader.
pub(crate) struct Channels<L> {
    pub(crate) snapshot_tx: watch::Sender<Snapshot>,
    pub(crate) snapshot_rx: watch::Receiver<Snapshot>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) links_tx: watch::Sender<Option<CurrentLink<L>>>,
}

pub(crate) fn channels<L>() -> Channels<L> {
    let (snapshot_tx, snapshot_rx) = watch::channel(Snapshot {
        state: StateKind::Idle,
        generation: Generation(1),
        attempt: 0,
        reason: None,
        failure: None,
    });
    let (events, _) = broadcast::channel(1024);
    let (links_tx, _) = watch::channel(None);
    Channels {
        snapshot_tx,
        snapshot_rx,
        events,
        links_tx,
    }
}
