//! The sans-IO outbox (see [`OutboxCore`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::machine::{FailCause, Generation};
use crate::outbox::config::{OutboxConfig, OverflowPolicy, SubmitOptions};
use crate::outbox::store::{Store, TimeIndex};

/// The stable identity of one publish, assigned in submission order
/// (strictly increasing per outbox, starting at 1). It stays the same
/// across replays, so consumers can deduplicate on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A broker confirm: the message was accepted on link `generation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Confirmed {
    /// The message.
    pub id: MessageId,
    /// The link whose broker confirmed it.
    pub generation: Generation,
}

/// An error shared by every message it concerns.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync>;

/// Why a publish did not end in a broker confirm.
///
/// An error after the message was written to a link (everything but
/// `Overflow`, `Cancelled`, and `Expired` of a message never sent) does not
/// prove that the broker did not get it: delivery is at least once.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The broker refused the message (AMQP `basic.nack`).
    #[error("the broker nacked the message")]
    Nacked,
    /// The broker could not route the message (AMQP mandatory return).
    #[error("the broker could not route the message")]
    Unroutable,
    /// The broker refused the message permanently (a protocol error about
    /// this message, an MQTT v5 failure reason code).
    #[error("the broker rejected the message: {0}")]
    Rejected(String),
    /// Its time to live passed before a broker confirmed it.
    #[error("the message expired before it was confirmed")]
    Expired,
    /// The outbox was full (policy `RejectNew`, or `Wait` past its deadline).
    #[error("the outbox is full")]
    Overflow,
    /// It was the oldest queued message when a new one arrived at a full
    /// outbox (policy `DropOldest`).
    #[error("dropped to make room for a newer message")]
    Dropped,
    /// The caller cancelled it while it was still queued.
    #[error("cancelled before it was sent")]
    Cancelled,
    /// The outbox or the engine shut down before a confirm arrived.
    #[error("the outbox shut down before the message was confirmed")]
    ShutDown,
    /// No outcome within the publish timeout (queued, written, or awaiting
    /// its confirm). It may have reached the broker if it was written.
    #[error("no outcome within the publish timeout")]
    Timeout,
    /// The engine gave up reconnecting.
    #[error("the engine gave up reconnecting ({cause})")]
    GaveUp {
        /// Why the engine gave up.
        cause: FailCause,
        /// The last transport error, when one was known (also the
        /// [`source`](std::error::Error::source)).
        #[source]
        error: Option<SharedError>,
    },
}

/// The name of a [`PublishError`], without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// [`PublishError::Nacked`].
    Nacked,
    /// [`PublishError::Unroutable`].
    Unroutable,
    /// [`PublishError::Rejected`].
    Rejected,
    /// [`PublishError::Expired`].
    Expired,
    /// [`PublishError::Overflow`].
    Overflow,
    /// [`PublishError::Dropped`].
    Dropped,
    /// [`PublishError::Cancelled`].
    Cancelled,
    /// [`PublishError::ShutDown`].
    ShutDown,
    /// [`PublishError::Timeout`].
    Timeout,
    /// [`PublishError::GaveUp`].
    GaveUp,
}

impl PublishErrorKind {
    /// The name the spec and the vectors use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Nacked => "nacked",
            Self::Unroutable => "unroutable",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Overflow => "overflow",
            Self::Dropped => "dropped",
            Self::Cancelled => "cancelled",
            Self::ShutDown => "shut_down",
            Self::Timeout => "timeout",
            Self::GaveUp => "gave_up",
        }
    }
}

impl PublishError {
    /// The variant's name.
    pub fn kind(&self) -> PublishErrorKind {
        match self {
            Self::Nacked => PublishErrorKind::Nacked,
            Self::Unroutable => PublishErrorKind::Unroutable,
            Self::Rejected(_) => PublishErrorKind::Rejected,
            Self::Expired => PublishErrorKind::Expired,
            Self::Overflow => PublishErrorKind::Overflow,
            Self::Dropped => PublishErrorKind::Dropped,
            Self::Cancelled => PublishErrorKind::Cancelled,
            Self::ShutDown => PublishErrorKind::ShutDown,
            Self::Timeout => PublishErrorKind::Timeout,
            Self::GaveUp { .. } => PublishErrorKind::GaveUp,
        }
    }
}

/// How one publish ended.
pub type Outcome = Result<Confirmed, PublishError>;

/// A message that reached its outcome, handed back with it.
#[derive(Debug)]
pub struct Resolved<M> {
    /// The message's id.
    pub id: MessageId,
    /// The message.
    pub message: M,
    /// How it ended.
    pub outcome: Outcome,
}

/// What [`OutboxCore::submit`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Submit<M> {
    /// Queued for sending.
    Queued(MessageId),
    /// Counted and resolved at once (overflow, shut down, gave up): its
    /// outcome is waiting in [`OutboxCore::poll_resolved`].
    Resolved(MessageId),
    /// Policy `Wait` and no room: nothing was counted; the message is
    /// handed back to retry once there is room (or to submit with
    /// `RejectNew` when the wait is over).
    Full(M),
}

/// Failure counts, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FailedCounts {
    /// Nacked by the broker.
    pub nacked: u64,
    /// Unroutable.
    pub unroutable: u64,
    /// Rejected permanently by the broker.
    pub rejected: u64,
    /// Refused because the outbox was full.
    pub overflow: u64,
    /// Cancelled by the caller.
    pub cancelled: u64,
    /// Ended by a shutdown.
    pub shut_down: u64,
    /// Ended because the engine gave up.
    pub gave_up: u64,
    /// No outcome within the publish timeout.
    pub timeout: u64,
}

impl FailedCounts {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.nacked
            + self.unroutable
            + self.rejected
            + self.overflow
            + self.cancelled
            + self.shut_down
            + self.gave_up
            + self.timeout
    }
}

/// The outbox's counters.
///
/// Invariant, at every instant: `submitted = confirmed + failed.total() +
/// expired + dropped + pending()`, checked by [`OutboxStats::is_balanced`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Messages submitted (every message that got an id).
    pub submitted: u64,
    /// Confirmed by the broker.
    pub confirmed: u64,
    /// Failed, by reason.
    pub failed: FailedCounts,
    /// Expired.
    pub expired: u64,
    /// Dropped by `DropOldest`.
    pub dropped: u64,
    /// Sends of a message that had been sent before (replays).
    pub replayed: u64,
    /// Times a message went back to the queue after its link died.
    pub requeued: u64,
    /// Confirms and failures ignored because they named another generation
    /// (or a message not in flight).
    pub stale_reports: u64,
    /// Channel closes that sent several messages back as suspects (see
    /// the outbox core's `channel_closed`).
    pub channel_closes: u64,
    /// Waiting to be sent.
    pub queued: u64,
    /// Written to a link, not yet confirmed.
    pub in_flight: u64,
    /// Bytes of the pending messages.
    pub pending_bytes: u64,
}

impl OutboxStats {
    /// Messages without an outcome yet: queued plus in flight.
    pub fn pending(&self) -> u64 {
        self.queued + self.in_flight
    }
    /// Messages with an outcome.
    pub fn resolved(&self) -> u64 {
        self.confirmed + self.failed.total() + self.expired + self.dropped
    }
    /// The accounting invariant holds.
    pub fn is_balanced(&self) -> bool {
        self.submitted == self.resolved() + self.pending()
    }
}

/// A broken internal invariant (a bug in the outbox).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbox invariant broken: {0}")]
pub struct InvariantViolation(String);

impl InvariantViolation {
    /// What is broken.
    pub fn detail(&self) -> &str {
        &self.0
    }
}

/// Whether the outbox takes new messages.
#[derive(Debug, Clone)]
pub enum Gate {
    /// New messages are queued.
    Open,
    /// New messages fail with [`PublishError::GaveUp`] (the engine is in
    /// `Failed`); [`OutboxCore::resume`] opens the gate again.
    GaveUp {
        /// Why the engine gave up.
        cause: FailCause,
        /// The last transport error, if known.
        error: Option<SharedError>,
    },
    /// New messages fail with [`PublishError::ShutDown`]; final.
    Closed,
}

#[derive(Debug)]
struct Entry<M> {
    message: M,
    size: usize,
    /// Time to live: applies while queued.
    deadline: Option<Instant>,
    /// Publish timeout: applies while pending, queued or in flight.
    timeout_at: Option<Instant>,
    sends: u32,
    /// Was in flight when a channel closed with others: written alone.
    suspect: bool,
    /// Unblocked time (see [`ActiveClock`]) of its last write.
    written: Duration,
}

/// What [`OutboxCore::channel_closed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelClosed {
    /// The message was not in flight on that generation: nothing changed.
    Stale,
    /// The message was the only one in flight on its link: it caused the
    /// close and resolved with [`PublishError::Rejected`].
    Rejected,
    /// Several were in flight: all of them (this many) went back to the
    /// queue as suspects, to be written one at a time.
    Requeued(usize),
}

/// Time that counts for confirm deadlines: the outbox's clock minus the time
/// the broker blocked publishing (a blocked link confirms nothing, and that
/// is flow control, not a fault).
#[derive(Debug, Default, Clone, Copy)]
struct ActiveClock {
    origin: Option<Instant>,
    blocked_total: Duration,
    blocked_since: Option<Instant>,
}

impl ActiveClock {
    /// Unblocked time from the origin to `now` (`now` never goes back).
    fn at(&mut self, now: Instant) -> Duration {
        let origin = *self.origin.get_or_insert(now);
        let blocked_now = self
            .blocked_since
            .map_or(Duration::ZERO, |b| now.saturating_duration_since(b));
        now.saturating_duration_since(origin)
            .saturating_sub(self.blocked_total.saturating_add(blocked_now))
    }

    fn set_blocked(&mut self, now: Instant, blocked: bool) {
        self.origin.get_or_insert(now);
        match (self.blocked_since, blocked) {
            (None, true) => self.blocked_since = Some(now),
            (Some(since), false) => {
                self.blocked_total = self
                    .blocked_total
                    .saturating_add(now.saturating_duration_since(since));
                self.blocked_since = None;
            }
            _ => {}
        }
    }

    /// The instant at which unblocked time reaches `active` (`None` while
    /// blocked, or past the clock's range).
    fn instant_of(&self, active: Duration) -> Option<Instant> {
        if self.blocked_since.is_some() {
            return None;
        }
        self.origin?
            .checked_add(active.checked_add(self.blocked_total)?)
    }
}

/// The sans-IO outbox: a bounded queue of publishes with per-generation
/// in-flight tracking. No threads, no clock reads, no I/O: time is an
/// argument and outcomes are drained with [`OutboxCore::poll_resolved`].
///
/// # The contract
///
/// 1. [`OutboxCore::submit`] every publish; it gets a [`MessageId`].
/// 2. While link `g` is ready, take messages with
///    [`OutboxCore::next_to_send`]`(now, g)` and write them in that order.
/// 3. Report what the link said: [`OutboxCore::confirmed`],
///    [`OutboxCore::failed`], or [`OutboxCore::requeue`] (the write failed
///    because the link died). When link `g` is gone, call
///    [`OutboxCore::link_lost`]`(g)`.
/// 4. Call [`OutboxCore::expire`] at [`OutboxCore::poll_timeout`].
/// 5. After every call, drain [`OutboxCore::poll_resolved`]: each message
///    comes out exactly once, with its outcome.
///
/// Ids are assigned in submission order, and a message that goes back for
/// replay always has a smaller id than every message never sent, so "replayed
/// messages first, each group in submission order" is simply ascending id
/// order (see `store.rs`).
///
/// ```
/// use std::time::Instant;
/// use redial::machine::Generation;
/// use redial::outbox::{OutboxConfig, SubmitOptions};
/// use redial::unstable::{OutboxCore, Submit};
///
/// let mut core = OutboxCore::new(OutboxConfig::default());
/// let t0 = Instant::now();
/// let Submit::Queued(id) = core.submit(t0, "hello", SubmitOptions::new()) else { unreachable!() };
/// let (sent, _) = core.next_to_send(t0, Generation(1)).unwrap();
/// assert_eq!(sent, id);
/// // The link of generation 1 dies before the broker confirms: back to the queue.
/// core.link_lost(Generation(1));
/// // A late confirm naming generation 1 confirms nothing.
/// assert!(!core.confirmed(Generation(1), id));
/// // Replayed on generation 2 and confirmed there.
/// let (again, _) = core.next_to_send(t0, Generation(2)).unwrap();
/// assert!(core.confirmed(Generation(2), again));
/// let resolved = core.poll_resolved().unwrap();
/// assert_eq!(resolved.outcome.unwrap().generation, Generation(2));
/// core.check_invariants().unwrap();
/// ```
#[derive(Debug)]
pub struct OutboxCore<M> {
    config: OutboxConfig,
    next_id: u64,
    store: Store<Entry<M>>,
    /// TTL deadlines of queued messages only.
    deadlines: BTreeSet<(Instant, MessageId)>,
    /// Publish timeouts of pending messages, queued or in flight.
    timeouts: TimeIndex<Instant>,
    /// Messages in flight, by the unblocked time of their write, in the
    /// order written (so in time order); entries whose message is no
    /// longer in flight with that time are skipped. The front is live.
    writes: VecDeque<(Duration, MessageId)>,
    /// Pending messages marked suspect.
    suspects: usize,
    clock: ActiveClock,
    pending_bytes: usize,
    /// Every generation up to this one is dead.
    retired: Generation,
    gate: Gate,
    resolved: VecDeque<Resolved<M>>,
    stats: OutboxStats,
    now: Option<Instant>,
}

impl<M> OutboxCore<M> {
    /// An empty, open outbox.
    pub fn new(config: OutboxConfig) -> Self {
        Self {
            config,
            next_id: 1,
            store: Store::default(),
            deadlines: BTreeSet::new(),
            timeouts: TimeIndex::default(),
            writes: VecDeque::new(),
            suspects: 0,
            clock: ActiveClock::default(),
            pending_bytes: 0,
            retired: Generation(0),
            gate: Gate::Open,
            resolved: VecDeque::new(),
            stats: OutboxStats::default(),
            now: None,
        }
    }

    // ---- getters -------------------------------------------------------

    /// The configuration.
    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }
    /// Whether new messages are taken.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }
    /// The counters.
    pub fn stats(&self) -> OutboxStats {
        let mut s = self.stats;
        s.queued = self.store.queued_len() as u64;
        s.in_flight = self.store.in_flight_len() as u64;
        s.pending_bytes = self.pending_bytes as u64;
        s
    }
    /// Messages without an outcome (queued plus in flight).
    pub fn pending(&self) -> usize {
        self.store.queued_len() + self.store.in_flight_len()
    }
    /// Whether a message is waiting to be sent and the in-flight window
    /// has room (what [`OutboxCore::next_to_send`] needs, suspects aside).
    pub fn has_sendable(&self) -> bool {
        self.store.queued_len() > 0 && self.store.in_flight_len() < self.config.max_in_flight
    }
    /// Whether the message is a suspect of a channel close (written alone).
    pub fn is_suspect(&self, id: MessageId) -> bool {
        self.store.get(id).is_some_and(|s| s.entry.suspect)
    }
    /// Whether a message of `size` bytes would fit now without dropping anything.
    pub fn has_room_for(&self, size: usize) -> bool {
        self.pending() < self.config.max_messages
            && self.pending_bytes.saturating_add(size) <= self.config.max_bytes
    }
    /// The generation a message is in flight on, if it is.
    pub fn in_flight_generation(&self, id: MessageId) -> Option<Generation> {
        self.store.get(id).and_then(|s| s.in_flight)
    }
    /// Whether the message is queued (not yet sent, or back for replay).
    pub fn is_queued(&self, id: MessageId) -> bool {
        self.store.get(id).is_some_and(|s| s.in_flight.is_none())
    }
    /// When [`OutboxCore::expire`] next has work: the earliest time to live
    /// of a queued message or publish timeout of a pending one.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ttl = self.deadlines.first().map(|(t, _)| *t);
        let timeout = self.timeouts.first().map(|(t, _)| t);
        match (ttl, timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    /// When the oldest message in flight will have waited `timeout` for its
    /// confirm, not counting time blocked (`None`: nothing in flight, the
    /// broker blocks publishing, or beyond the clock's range). See
    /// [`OutboxCore::confirm_overdue`].
    pub fn confirm_deadline(&self, timeout: Duration) -> Option<Instant> {
        let (written, _) = self.writes.front()?;
        self.clock.instant_of(written.saturating_add(timeout))
    }

    // ---- outcomes ------------------------------------------------------

    /// The next message that reached its outcome, in the order the outcomes
    /// were reached. Drain it after every call.
    pub fn poll_resolved(&mut self) -> Option<Resolved<M>> {
        self.resolved.pop_front()
    }

    /// Whether [`OutboxCore::poll_resolved`] has something.
    pub fn has_resolved(&self) -> bool {
        !self.resolved.is_empty()
    }

    // ---- inputs --------------------------------------------------------

    /// Submits a message at `now`. See [`Submit`] for the answers.
    pub fn submit(&mut self, now: Instant, message: M, options: SubmitOptions) -> Submit<M> {
        let now = self.advance_clock(now);
        // What is due expires first: it frees room and must not count as dropped.
        self.expire(now);
        let size = options.size_bytes.unwrap_or(0);
        let refusal = match &self.gate {
            Gate::Open => None,
            Gate::Closed => Some(PublishError::ShutDown),
            Gate::GaveUp { cause, error } => Some(PublishError::GaveUp {
                cause: *cause,
                error: error.clone(),
            }),
        };
        if refusal.is_none() && !self.has_room_for(size) {
            let policy = options.overflow.unwrap_or(self.config.overflow);
            // A message larger than the whole capacity never fits: waiting would hang.
            let never_fits = size > self.config.max_bytes;
            match policy {
                OverflowPolicy::Wait { .. } if !never_fits => return Submit::Full(message),
                OverflowPolicy::DropOldest if self.make_room(size) => {}
                _ => return self.refuse(message, PublishError::Overflow),
            }
        }
        if let Some(error) = refusal {
            return self.refuse(message, error);
        }
        let id = self.assign_id();
        let ttl = options.ttl.or(self.config.default_ttl);
        // A deadline past the clock's range never comes.
        let deadline = ttl.and_then(|t| now.checked_add(t));
        let timeout_at = options
            .publish_timeout
            .or(self.config.publish_timeout)
            .and_then(|t| now.checked_add(t));
        self.pending_bytes += size;
        if let Some(d) = deadline {
            self.deadlines.insert((d, id));
        }
        if let Some(t) = timeout_at {
            self.timeouts.insert(t, id);
        }
        self.store.push_new(
            id,
            Entry {
                message,
                size,
                deadline,
                timeout_at,
                sends: 0,
                suspect: false,
                written: Duration::ZERO,
            },
        );
        // A zero time to live expires at once, like any due one (nothing
        // else can be due: everything due expired above).
        if deadline.is_some_and(|d| d <= now) || timeout_at.is_some_and(|t| t <= now) {
            self.expire(now);
        }
        Submit::Queued(id)
    }

    /// The next message to write to link `generation`, marked in flight on
    /// it: replayed messages first, then the rest, each in submission
    /// order. `None` when nothing is queued, the in-flight window is full,
    /// `generation` was reported lost, or a suspect must be written alone
    /// (the next message is a suspect and something is in flight on
    /// `generation`, or a suspect is in flight on it). Expires due messages
    /// first.
    pub fn next_to_send(
        &mut self,
        now: Instant,
        generation: Generation,
    ) -> Option<(MessageId, &M)> {
        self.expire(now);
        if generation <= self.retired || self.store.in_flight_len() >= self.config.max_in_flight {
            return None;
        }
        if self.suspects > 0 && !self.suspect_may_go(generation) {
            return None;
        }
        let (id, entry) = self.store.send_first(generation)?;
        if let Some(d) = entry.deadline {
            self.deadlines.remove(&(d, id));
        }
        if entry.sends > 0 {
            self.stats.replayed = self.stats.replayed.saturating_add(1);
        }
        entry.sends = entry.sends.saturating_add(1);
        entry.written = self.clock.at(self.now.unwrap_or(now));
        self.writes.push_back((entry.written, id));
        Some((id, &entry.message))
    }

    /// Isolation: a suspect is written only when nothing is in flight on
    /// its link, and nothing follows it until it is answered.
    fn suspect_may_go(&self, generation: Generation) -> bool {
        let mut busy = false;
        for (_, slot) in self.store.all() {
            if slot.in_flight == Some(generation) {
                if slot.entry.suspect {
                    return false;
                }
                busy = true;
            }
        }
        let next_is_suspect = self.store.first_queued().is_some_and(|(_, e)| e.suspect);
        !(busy && next_is_suspect)
    }

    /// The broker confirmed message `id` on link `generation`. Ignored
    /// (and counted as stale) unless the message is in flight on exactly
    /// that generation. Returns whether it applied.
    pub fn confirmed(&mut self, generation: Generation, id: MessageId) -> bool {
        let Some(entry) = self.take_in_flight(generation, id) else {
            return false;
        };
        self.resolve(id, entry, Ok(Confirmed { id, generation }));
        true
    }

    /// The broker answered message `id` on link `generation` with an error.
    /// Ignored unless the message is in flight on exactly that generation.
    pub fn failed(&mut self, generation: Generation, id: MessageId, error: PublishError) -> bool {
        let Some(entry) = self.take_in_flight(generation, id) else {
            return false;
        };
        self.resolve(id, entry, Err(error));
        true
    }

    /// The write of message `id` on link `generation` failed because the
    /// link died (or timed out): the message goes back to the queue, in
    /// front of every message never sent, in submission order.
    pub fn requeue(&mut self, generation: Generation, id: MessageId) -> bool {
        let Some(entry) = self.take_in_flight(generation, id) else {
            return false;
        };
        self.put_back(id, entry);
        true
    }

    /// The broker closed link `generation`'s publishing channel while
    /// message `id` was unconfirmed on it; the link itself is fine.
    ///
    /// A publishing channel is closed only by a publish, and every message
    /// written before the culprit that is no longer in flight was
    /// confirmed. So when `id` is the only message in flight on
    /// `generation`, it is the culprit: it resolves with
    /// [`PublishError::Rejected`]`(reason)`. Otherwise every message in
    /// flight on `generation` goes back to the queue marked suspect (the
    /// link is not retired), and [`OutboxCore::next_to_send`] writes each
    /// suspect alone: the culprit is found alone on a later close, every
    /// other suspect is confirmed. Ignored (stale) unless `id` is in flight
    /// on exactly `generation`.
    pub fn channel_closed(
        &mut self,
        generation: Generation,
        id: MessageId,
        reason: impl Into<String>,
    ) -> ChannelClosed {
        if self.in_flight_generation(id) != Some(generation) {
            self.stats.stale_reports = self.stats.stale_reports.saturating_add(1);
            return ChannelClosed::Stale;
        }
        let on_link: Vec<MessageId> = self
            .store
            .in_flight_ids()
            .into_iter()
            .filter(|(_, g)| *g == generation)
            .map(|(id, _)| id)
            .collect();
        if on_link.len() == 1 {
            if let Some((_, entry)) = self.remove_in_flight(id) {
                self.resolve(id, entry, Err(PublishError::Rejected(reason.into())));
            }
            return ChannelClosed::Rejected;
        }
        self.stats.channel_closes = self.stats.channel_closes.saturating_add(1);
        for id in &on_link {
            if let Some((_, mut entry)) = self.remove_in_flight(*id) {
                if !entry.suspect {
                    entry.suspect = true;
                    self.suspects += 1;
                }
                self.put_back(*id, entry);
            }
        }
        ChannelClosed::Requeued(on_link.len())
    }

    /// The broker blocks (`true`) or unblocks publishing from `now`: blocked
    /// time does not count toward confirm deadlines. Expires due messages first.
    pub fn set_blocked(&mut self, now: Instant, blocked: bool) {
        self.expire(now);
        let now = self.advance_clock(now);
        self.clock.set_blocked(now, blocked);
    }

    /// The link of a message in flight that has waited at least `timeout`
    /// for its confirm (time blocked not counted): that link confirms
    /// nothing and should be replaced ([`OutboxCore::link_lost`] then sends
    /// its messages back). `None` when no message is overdue. Expires due
    /// messages first.
    pub fn confirm_overdue(&mut self, now: Instant, timeout: Duration) -> Option<Generation> {
        self.expire(now);
        let now = self.advance_clock(now);
        let active = self.clock.at(now);
        let (written, id) = *self.writes.front()?;
        if active.saturating_sub(written) < timeout {
            return None;
        }
        self.in_flight_generation(id)
    }

    /// Link `generation` is gone: every message in flight on it (or on an
    /// older link) goes back to the queue, and `next_to_send` refuses it
    /// from now on. Returns how many went back.
    pub fn link_lost(&mut self, generation: Generation) -> usize {
        self.retired = self.retired.max(generation);
        let lost: Vec<MessageId> = self
            .store
            .in_flight_ids()
            .into_iter()
            .filter(|(_, g)| *g <= generation)
            .map(|(id, _)| id)
            .collect();
        for id in &lost {
            if let Some((_, entry)) = self.remove_in_flight(*id) {
                self.put_back(*id, entry);
            }
        }
        lost.len()
    }

    /// Resolves every queued message whose time to live has passed with
    /// [`PublishError::Expired`], and every pending message (queued or in
    /// flight) whose publish timeout has passed with
    /// [`PublishError::Timeout`], in time order (a time to live first on a
    /// tie). Messages in flight do not expire: their link's answer decides,
    /// within the publish timeout. Returns how many resolved.
    pub fn expire(&mut self, now: Instant) -> usize {
        let now = self.advance_clock(now);
        let mut n = 0;
        loop {
            let ttl = self.deadlines.first().copied().filter(|(d, _)| *d <= now);
            let timeout = self.timeouts.first().filter(|(d, _)| *d <= now);
            match (ttl, timeout) {
                (None, None) => break,
                (Some(t), Some(o)) if o.0 < t.0 => self.time_out(o),
                (Some(t), _) => {
                    self.deadlines.remove(&t);
                    if let Some(entry) = self.store.remove_queued(t.1) {
                        self.resolve(t.1, entry, Err(PublishError::Expired));
                    }
                }
                (None, Some(o)) => self.time_out(o),
            }
            n += 1;
        }
        n
    }

    fn time_out(&mut self, (at, id): (Instant, MessageId)) {
        let entry = self
            .take_queued(id)
            .or_else(|| self.remove_in_flight(id).map(|(_, e)| e));
        match entry {
            // Resolving removes its timeout.
            Some(entry) => self.resolve(id, entry, Err(PublishError::Timeout)),
            None => self.remove_timeout(at, id),
        }
    }

    /// Drops `(at, id)` from the timeout index (its message is gone).
    fn remove_timeout(&mut self, at: Instant, id: MessageId) {
        let store = &self.store;
        let pending = store.queued_len() + store.in_flight_len();
        self.timeouts.remove(at, id, pending, |(t, id)| {
            store
                .get(*id)
                .is_some_and(|s| s.entry.timeout_at == Some(*t))
        });
    }

    /// Cancels message `id` if it is still queued: it resolves with
    /// [`PublishError::Cancelled`]. A message in flight cannot be taken
    /// back; it keeps its course.
    pub fn cancel(&mut self, id: MessageId) -> bool {
        let Some(entry) = self.take_queued(id) else {
            return false;
        };
        self.resolve(id, entry, Err(PublishError::Cancelled));
        true
    }

    /// The engine gave up: every pending message resolves with
    /// [`PublishError::GaveUp`], and so does every new one until
    /// [`OutboxCore::resume`]. Ignored once closed.
    pub fn give_up(&mut self, cause: FailCause, error: Option<SharedError>) {
        if matches!(self.gate, Gate::Closed) {
            return;
        }
        self.gate = Gate::GaveUp {
            cause,
            error: error.clone(),
        };
        self.resolve_all(|| PublishError::GaveUp {
            cause,
            error: error.clone(),
        });
    }

    /// The engine left `Failed`: new messages are taken again.
    pub fn resume(&mut self) {
        if matches!(self.gate, Gate::GaveUp { .. }) {
            self.gate = Gate::Open;
        }
    }

    /// Stops taking new messages (they resolve with
    /// [`PublishError::ShutDown`]); pending ones keep their course (a drain).
    pub fn close(&mut self) {
        self.gate = Gate::Closed;
    }

    /// Closes, and resolves every pending message with [`PublishError::ShutDown`].
    pub fn shutdown(&mut self) {
        self.close();
        self.resolve_all(|| PublishError::ShutDown);
    }

    /// Checks the accounting invariant and the internal bookkeeping.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let s = self.stats();
        let fail = |m: String| Err(InvariantViolation(m));
        if !s.is_balanced() {
            return fail(format!("accounting: {s:?}"));
        }
        if let Err(m) = self.store.check() {
            return fail(m);
        }
        let bytes: usize = self.store.all().map(|(_, s)| s.entry.size).sum();
        if bytes != self.pending_bytes {
            return fail(format!("bytes {bytes} != {}", self.pending_bytes));
        }
        if self.pending() > self.config.max_messages || bytes > self.config.max_bytes {
            return fail(format!("over capacity: {s:?}"));
        }
        if self.store.in_flight_len() > self.config.max_in_flight {
            return fail("in-flight window exceeded".into());
        }
        let queued_deadline = |id: &MessageId| {
            self.store
                .get(*id)
                .filter(|s| s.in_flight.is_none())
                .and_then(|s| s.entry.deadline)
        };
        let with_ttl = self
            .store
            .queued()
            .filter(|(_, e)| e.deadline.is_some())
            .count();
        if with_ttl != self.deadlines.len()
            || self
                .deadlines
                .iter()
                .any(|(d, id)| queued_deadline(id) != Some(*d))
        {
            return fail("deadline index out of sync".into());
        }
        let timeout_index: BTreeSet<(Instant, MessageId)> = self
            .store
            .all()
            .filter_map(|(id, s)| s.entry.timeout_at.map(|t| (t, id)))
            .collect();
        let live = |(t, id): &(Instant, MessageId)| {
            self.store
                .get(*id)
                .is_some_and(|s| s.entry.timeout_at == Some(*t))
        };
        if timeout_index != self.timeouts.live(live) || !self.timeouts.is_consistent(live) {
            return fail("timeout index out of sync".into());
        }
        let in_flight_writes: BTreeSet<(Duration, MessageId)> = self
            .store
            .all()
            .filter(|(_, s)| s.in_flight.is_some())
            .map(|(id, s)| (s.entry.written, id))
            .collect();
        let live_writes: BTreeSet<(Duration, MessageId)> = self
            .writes
            .iter()
            .filter(|w| in_flight_writes.contains(w))
            .copied()
            .collect();
        if live_writes != in_flight_writes
            || self
                .writes
                .front()
                .is_some_and(|w| !in_flight_writes.contains(w))
            || !self.writes.iter().is_sorted_by_key(|(written, _)| *written)
        {
            return fail("write index out of sync".into());
        }
        if self.store.all().filter(|(_, s)| s.entry.suspect).count() != self.suspects {
            return fail("suspect count out of sync".into());
        }
        let mut suspects_on: BTreeMap<Generation, (usize, usize)> = BTreeMap::new();
        for (_, slot) in self.store.all() {
            if let Some(g) = slot.in_flight {
                let c = suspects_on.entry(g).or_default();
                c.0 += 1;
                c.1 += usize::from(slot.entry.suspect);
            }
        }
        if suspects_on.values().any(|(all, s)| *s > 0 && *all > 1) {
            return fail("a suspect is in flight with another message on its link".into());
        }
        if self.store.all().any(|(id, _)| id.0 >= self.next_id) {
            return fail("an id from the future".into());
        }
        Ok(())
    }

    // ---- the moves everything is built from ----------------------------

    fn advance_clock(&mut self, now: Instant) -> Instant {
        let now = self.now.map_or(now, |last| last.max(now));
        self.now = Some(now);
        now
    }

    fn assign_id(&mut self) -> MessageId {
        let id = MessageId(self.next_id);
        self.next_id = self.next_id.saturating_add(1);
        self.stats.submitted = self.stats.submitted.saturating_add(1);
        id
    }

    /// Counts a new message and resolves it at once.
    fn refuse(&mut self, message: M, error: PublishError) -> Submit<M> {
        let id = self.assign_id();
        self.record(&Err(error.clone()));
        self.resolved.push_back(Resolved {
            id,
            message,
            outcome: Err(error),
        });
        Submit::Resolved(id)
    }

    /// Drops the oldest queued messages until `size` fits; drops nothing
    /// and returns false when even an empty queue would not make room.
    fn make_room(&mut self, size: usize) -> bool {
        let mut count = self.pending();
        let mut bytes = self.pending_bytes;
        let mut victims = 0;
        for (_, entry) in self.store.queued() {
            if count < self.config.max_messages
                && bytes.saturating_add(size) <= self.config.max_bytes
            {
                break;
            }
            count -= 1;
            bytes -= entry.size;
            victims += 1;
        }
        if count >= self.config.max_messages || bytes.saturating_add(size) > self.config.max_bytes {
            return false;
        }
        for _ in 0..victims {
            let first = self.store.first_queued().map(|(id, _)| id);
            if let Some(id) = first
                && let Some(entry) = self.take_queued(id)
            {
                self.resolve(id, entry, Err(PublishError::Dropped));
            }
        }
        true
    }

    fn take_in_flight(&mut self, generation: Generation, id: MessageId) -> Option<Entry<M>> {
        let Some(entry) = self.store.take_in_flight(id, generation) else {
            self.stats.stale_reports = self.stats.stale_reports.saturating_add(1);
            return None;
        };
        self.clean_writes(id);
        Some(entry)
    }

    fn remove_in_flight(&mut self, id: MessageId) -> Option<(Generation, Entry<M>)> {
        let (g, entry) = self.store.remove_in_flight(id)?;
        self.clean_writes(id);
        Some((g, entry))
    }

    /// Drops what is no longer in flight from the front of `writes`, and
    /// compacts it when confirms out of order left it mostly stale.
    fn clean_writes(&mut self, removed: MessageId) {
        // Confirms come mostly in order: the front is usually the one
        // just removed, known dead without a lookup.
        if self.writes.front().is_some_and(|(_, id)| *id == removed) {
            self.writes.pop_front();
        }
        let live = |store: &Store<Entry<M>>, (written, id): &(Duration, MessageId)| {
            store
                .get(*id)
                .is_some_and(|s| s.in_flight.is_some() && s.entry.written == *written)
        };
        while let Some(front) = self.writes.front() {
            if live(&self.store, front) {
                break;
            }
            self.writes.pop_front();
        }
        if self.writes.len() > 2 * self.store.in_flight_len() + 64 {
            let store = &self.store;
            self.writes.retain(|w| live(store, w));
        }
    }

    fn take_queued(&mut self, id: MessageId) -> Option<Entry<M>> {
        let entry = self.store.remove_queued(id)?;
        if let Some(d) = entry.deadline {
            self.deadlines.remove(&(d, id));
        }
        Some(entry)
    }

    fn put_back(&mut self, id: MessageId, entry: Entry<M>) {
        self.stats.requeued = self.stats.requeued.saturating_add(1);
        if let Some(d) = entry.deadline {
            self.deadlines.insert((d, id));
        }
        self.store.requeue(id, entry);
        // Its time to live may have passed while it was in flight.
        if let Some(now) = self.now {
            self.expire(now);
        }
    }

    fn resolve_all(&mut self, error: impl Fn() -> PublishError) {
        self.deadlines.clear();
        self.writes.clear();
        self.timeouts.clear();
        // In submission order.
        for (id, entry) in self.store.drain_sorted() {
            self.resolve(id, entry, Err(error()));
        }
    }

    fn resolve(&mut self, id: MessageId, entry: Entry<M>, outcome: Outcome) {
        self.pending_bytes -= entry.size;
        if let Some(t) = entry.timeout_at {
            self.remove_timeout(t, id);
        }
        if entry.suspect {
            self.suspects -= 1;
        }
        self.record(&outcome);
        self.resolved.push_back(Resolved {
            id,
            message: entry.message,
            outcome,
        });
    }

    fn record(&mut self, outcome: &Outcome) {
        let s = &mut self.stats;
        let counter = match outcome {
            Ok(_) => &mut s.confirmed,
            Err(e) => match e.kind() {
                PublishErrorKind::Expired => &mut s.expired,
                PublishErrorKind::Dropped => &mut s.dropped,
                PublishErrorKind::Nacked => &mut s.failed.nacked,
                PublishErrorKind::Unroutable => &mut s.failed.unroutable,
                PublishErrorKind::Rejected => &mut s.failed.rejected,
                PublishErrorKind::Overflow => &mut s.failed.overflow,
                PublishErrorKind::Cancelled => &mut s.failed.cancelled,
                PublishErrorKind::ShutDown => &mut s.failed.shut_down,
                PublishErrorKind::Timeout => &mut s.failed.timeout,
                PublishErrorKind::GaveUp => &mut s.failed.gave_up,
            },
        };
        // u64 counters cannot wrap in practice; saturating keeps them from
        // panicking in debug builds all the same.
        *counter = counter.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(max: usize, policy: OverflowPolicy) -> OutboxCore<&'static str> {
        OutboxCore::new(
            OutboxConfig::builder()
                .max_messages(max)
                .overflow(policy)
                .build()
                .unwrap(),
        )
    }

    fn drain(c: &mut OutboxCore<&'static str>) -> Vec<(&'static str, Option<PublishErrorKind>)> {
        std::iter::from_fn(|| c.poll_resolved())
            .map(|r| (r.message, r.outcome.err().map(|e| e.kind())))
            .collect()
    }

    #[test]
    fn drop_oldest_never_drops_in_flight() {
        let t = Instant::now();
        let mut c = core(2, OverflowPolicy::DropOldest);
        c.submit(t, "a", SubmitOptions::new());
        c.submit(t, "b", SubmitOptions::new());
        c.next_to_send(t, Generation(1));
        c.next_to_send(t, Generation(1));
        assert!(matches!(
            c.submit(t, "c", SubmitOptions::new()),
            Submit::Resolved(_)
        ));
        assert_eq!(drain(&mut c), [("c", Some(PublishErrorKind::Overflow))]);
        c.check_invariants().unwrap();
    }

    #[test]
    fn oversized_message_never_waits() {
        let t = Instant::now();
        let cfg = OutboxConfig::builder()
            .max_bytes(10)
            .overflow(OverflowPolicy::Wait { deadline: None })
            .build()
            .unwrap();
        let mut c = OutboxCore::new(cfg);
        let r = c.submit(t, "big", SubmitOptions::new().size_bytes(11));
        assert!(matches!(r, Submit::Resolved(_)));
        assert!(matches!(
            c.submit(t, "fits", SubmitOptions::new().size_bytes(10)),
            Submit::Queued(_)
        ));
        assert!(matches!(
            c.submit(t, "waits", SubmitOptions::new().size_bytes(1)),
            Submit::Full("waits")
        ));
        c.check_invariants().unwrap();
    }

    #[test]
    fn requeued_message_expires_when_it_comes_back_late() {
        let t = Instant::now();
        let mut c = core(10, OverflowPolicy::RejectNew);
        c.submit(t, "a", SubmitOptions::new().ttl(Duration::from_secs(1)));
        let (id, _) = c.next_to_send(t, Generation(1)).unwrap();
        // In flight: not expired even past its deadline.
        assert_eq!(c.expire(t + Duration::from_secs(5)), 0);
        assert!(c.requeue(Generation(1), id));
        assert_eq!(drain(&mut c), [("a", Some(PublishErrorKind::Expired))]);
        c.check_invariants().unwrap();
    }
}
