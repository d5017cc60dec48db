//! The sans-IO outbox (see [`OutboxCore`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::machine::{FailCause, Generation};

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
    /// The engine gave up reconnecting.
    #[error("the engine gave up reconnecting ({cause})")]
    GaveUp {
        /// Why the engine gave up.
        cause: FailCause,
        /// The last transport error, when one was known.
        error: Option<SharedError>,
    },
}

/// The name of a [`PublishError`], without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// What a full outbox does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Backpressure: the caller waits for room, at most `deadline` (`None`:
    /// as long as it takes), then gets [`PublishError::Overflow`]. The core
    /// answers [`Submit::Full`]; the async publisher does the waiting.
    Wait {
        /// The longest wait.
        deadline: Option<Duration>,
    },
    /// The new message fails at once with [`PublishError::Overflow`].
    #[default]
    RejectNew,
    /// The oldest *queued* message fails with [`PublishError::Dropped`] to
    /// make room (messages in flight are never dropped; when they alone fill
    /// the outbox, the new message fails with `Overflow`).
    DropOldest,
}

/// Why an [`OutboxConfig`] cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxConfigError {
    /// A capacity or window of zero.
    #[error("{field} must be at least 1")]
    Zero {
        /// The offending setting.
        field: &'static str,
    },
}

/// The outbox's limits and defaults. Build one with [`OutboxConfig::builder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    max_messages: usize,
    max_bytes: usize,
    overflow: OverflowPolicy,
    max_in_flight: usize,
    default_ttl: Option<Duration>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_messages: 1000,
            max_bytes: 64 << 20,
            overflow: OverflowPolicy::RejectNew,
            max_in_flight: 256,
            default_ttl: None,
        }
    }
}

impl OutboxConfig {
    /// A builder holding the defaults: 1000 messages, 64 MiB, `RejectNew`,
    /// 256 messages in flight, no time to live.
    pub fn builder() -> OutboxConfigBuilder {
        OutboxConfigBuilder {
            config: Self::default(),
        }
    }
    /// Most messages pending at once (queued plus in flight).
    pub fn max_messages(&self) -> usize {
        self.max_messages
    }
    /// Most bytes pending at once, as the messages' sizes say.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
    /// What a full outbox does with a new message.
    pub fn overflow(&self) -> OverflowPolicy {
        self.overflow
    }
    /// Most messages written to a link and not yet confirmed.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }
    /// The time to live of a message that does not set its own.
    pub fn default_ttl(&self) -> Option<Duration> {
        self.default_ttl
    }
}

/// Builds an [`OutboxConfig`].
#[derive(Debug, Clone, Copy)]
pub struct OutboxConfigBuilder {
    config: OutboxConfig,
}

impl OutboxConfigBuilder {
    /// Most messages pending at once (default 1000).
    pub fn max_messages(mut self, n: usize) -> Self {
        self.config.max_messages = n;
        self
    }
    /// Most bytes pending at once (default 64 MiB). Sizes come from
    /// [`SubmitOptions::size_bytes`] (the publisher fills it in from the
    /// adapter's `Deliver::size_of`).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.config.max_bytes = n;
        self
    }
    /// The overflow policy (default `RejectNew`).
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.config.overflow = policy;
        self
    }
    /// Most messages in flight (default 256).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.config.max_in_flight = n;
        self
    }
    /// The default time to live (default none).
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.config.default_ttl = ttl;
        self
    }
    /// Checks the settings.
    pub fn build(self) -> Result<OutboxConfig, OutboxConfigError> {
        let c = self.config;
        for (field, v) in [
            ("max_messages", c.max_messages),
            ("max_bytes", c.max_bytes),
            ("max_in_flight", c.max_in_flight),
        ] {
            if v == 0 {
                return Err(OutboxConfigError::Zero { field });
            }
        }
        Ok(c)
    }
}

/// Per-message settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SubmitOptions {
    /// Time to live from submission (`None`: the config's default).
    pub ttl: Option<Duration>,
    /// Size counted against the byte capacity (`None`: 0 in the core; the
    /// publisher asks the adapter's `Deliver::size_of`).
    pub size_bytes: Option<usize>,
    /// Overrides the config's overflow policy for this message.
    pub overflow: Option<OverflowPolicy>,
}

impl SubmitOptions {
    /// No time to live, no size, the config's overflow policy.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the time to live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// Sets the size.
    pub fn size_bytes(mut self, size: usize) -> Self {
        self.size_bytes = Some(size);
        self
    }
    /// Sets the overflow policy for this message.
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = Some(policy);
        self
    }
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
    }
}

/// The outbox's counters.
///
/// Invariant, at every instant: `submitted = confirmed + failed.total() +
/// expired + dropped + pending()`, checked by [`OutboxStats::is_balanced`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
pub struct InvariantViolation(pub String);

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
    deadline: Option<Instant>,
    sends: u32,
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
/// order: the queue is a `BTreeMap` keyed by id.
///
/// ```
/// use std::time::Instant;
/// use redial::machine::Generation;
/// use redial::outbox::{OutboxConfig, OutboxCore, Submit, SubmitOptions};
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
    queued: BTreeMap<MessageId, Entry<M>>,
    in_flight: BTreeMap<MessageId, (Generation, Entry<M>)>,
    /// TTL deadlines of queued messages only.
    deadlines: BTreeSet<(Instant, MessageId)>,
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
            queued: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            deadlines: BTreeSet::new(),
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
        s.queued = self.queued.len() as u64;
        s.in_flight = self.in_flight.len() as u64;
        s.pending_bytes = self.pending_bytes as u64;
        s
    }
    /// Messages without an outcome (queued plus in flight).
    pub fn pending(&self) -> usize {
        self.queued.len() + self.in_flight.len()
    }
    /// Whether a message is waiting to be sent and the in-flight window
    /// has room (what [`OutboxCore::next_to_send`] would need).
    pub fn has_sendable(&self) -> bool {
        !self.queued.is_empty() && self.in_flight.len() < self.config.max_in_flight
    }
    /// Whether a message of `size` bytes would fit now without dropping anything.
    pub fn has_room_for(&self, size: usize) -> bool {
        self.pending() < self.config.max_messages
            && self.pending_bytes.saturating_add(size) <= self.config.max_bytes
    }
    /// The generation a message is in flight on, if it is.
    pub fn in_flight_generation(&self, id: MessageId) -> Option<Generation> {
        self.in_flight.get(&id).map(|(g, _)| *g)
    }
    /// Whether the message is queued (not yet sent, or back for replay).
    pub fn is_queued(&self, id: MessageId) -> bool {
        self.queued.contains_key(&id)
    }
    /// When [`OutboxCore::expire`] next has work: the earliest time to live
    /// of a queued message.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    // ---- outcomes ------------------------------------------------------

    /// The next message that reached its outcome, in the order the outcomes
    /// were reached. Drain it after every call.
    pub fn poll_resolved(&mut self) -> Option<Resolved<M>> {
        self.resolved.pop_front()
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
        self.pending_bytes += size;
        if let Some(d) = deadline {
            self.deadlines.insert((d, id));
        }
        self.queued.insert(
            id,
            Entry {
                message,
                size,
                deadline,
                sends: 0,
            },
        );
        // A zero time to live expires at once, like any due one.
        self.expire(now);
        Submit::Queued(id)
    }

    /// The next message to write to link `generation`, marked in flight on
    /// it: replayed messages first, then the rest, each in submission
    /// order. `None` when nothing is queued, the in-flight window is full,
    /// or `generation` was reported lost. Expires due messages first.
    pub fn next_to_send(
        &mut self,
        now: Instant,
        generation: Generation,
    ) -> Option<(MessageId, &M)> {
        self.expire(now);
        if generation <= self.retired || self.in_flight.len() >= self.config.max_in_flight {
            return None;
        }
        let (id, mut entry) = self.queued.pop_first()?;
        if let Some(d) = entry.deadline {
            self.deadlines.remove(&(d, id));
        }
        if entry.sends > 0 {
            self.stats.replayed += 1;
        }
        entry.sends = entry.sends.saturating_add(1);
        let (_, entry) = self.in_flight.entry(id).or_insert((generation, entry));
        Some((id, &entry.message))
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

    /// Link `generation` is gone: every message in flight on it (or on an
    /// older link) goes back to the queue, and `next_to_send` refuses it
    /// from now on. Returns how many went back.
    pub fn link_lost(&mut self, generation: Generation) -> usize {
        self.retired = self.retired.max(generation);
        let lost: Vec<MessageId> = self
            .in_flight
            .iter()
            .filter(|(_, (g, _))| *g <= generation)
            .map(|(id, _)| *id)
            .collect();
        for id in &lost {
            if let Some((_, entry)) = self.in_flight.remove(id) {
                self.put_back(*id, entry);
            }
        }
        lost.len()
    }

    /// Resolves every queued message whose time to live has passed with
    /// [`PublishError::Expired`]. Messages in flight wait for their link's
    /// answer; they expire if they come back to the queue late.
    pub fn expire(&mut self, now: Instant) -> usize {
        let now = self.advance_clock(now);
        let mut n = 0;
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(entry) = self.queued.remove(&id) {
                self.resolve(id, entry, Err(PublishError::Expired));
                n += 1;
            }
        }
        n
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
        let bytes: usize = self
            .queued
            .values()
            .map(|e| e.size)
            .chain(self.in_flight.values().map(|(_, e)| e.size))
            .sum();
        if bytes != self.pending_bytes {
            return fail(format!("bytes {bytes} != {}", self.pending_bytes));
        }
        if self.pending() > self.config.max_messages || bytes > self.config.max_bytes {
            return fail(format!("over capacity: {s:?}"));
        }
        if self.in_flight.len() > self.config.max_in_flight {
            return fail("in-flight window exceeded".into());
        }
        let with_ttl = self
            .queued
            .values()
            .filter(|e| e.deadline.is_some())
            .count();
        if with_ttl != self.deadlines.len()
            || self
                .deadlines
                .iter()
                .any(|(d, id)| self.queued.get(id).and_then(|e| e.deadline) != Some(*d))
        {
            return fail("deadline index out of sync".into());
        }
        if self.queued.keys().any(|id| self.in_flight.contains_key(id)) {
            return fail("a message is both queued and in flight".into());
        }
        if self
            .queued
            .keys()
            .chain(self.in_flight.keys())
            .any(|id| id.0 >= self.next_id)
        {
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
        self.next_id += 1;
        self.stats.submitted += 1;
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
        for entry in self.queued.values() {
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
            if let Some((id, entry)) = self.queued.pop_first() {
                if let Some(d) = entry.deadline {
                    self.deadlines.remove(&(d, id));
                }
                self.resolve(id, entry, Err(PublishError::Dropped));
            }
        }
        true
    }

    fn take_in_flight(&mut self, generation: Generation, id: MessageId) -> Option<Entry<M>> {
        match self.in_flight.get(&id) {
            Some((g, _)) if *g == generation => self.in_flight.remove(&id).map(|(_, e)| e),
            _ => {
                self.stats.stale_reports += 1;
                None
            }
        }
    }

    fn take_queued(&mut self, id: MessageId) -> Option<Entry<M>> {
        let entry = self.queued.remove(&id)?;
        if let Some(d) = entry.deadline {
            self.deadlines.remove(&(d, id));
        }
        Some(entry)
    }

    fn put_back(&mut self, id: MessageId, entry: Entry<M>) {
        self.stats.requeued += 1;
        if let Some(d) = entry.deadline {
            self.deadlines.insert((d, id));
        }
        self.queued.insert(id, entry);
        // Its time to live may have passed while it was in flight.
        if let Some(now) = self.now {
            self.expire(now);
        }
    }

    fn resolve_all(&mut self, error: impl Fn() -> PublishError) {
        let in_flight = std::mem::take(&mut self.in_flight);
        let queued = std::mem::take(&mut self.queued);
        self.deadlines.clear();
        // In submission order: the in-flight messages are older on the whole,
        // but a merge keeps the outcome order strictly by id.
        let mut all: Vec<(MessageId, Entry<M>)> = in_flight
            .into_iter()
            .map(|(id, (_, e))| (id, e))
            .chain(queued)
            .collect();
        all.sort_by_key(|(id, _)| *id);
        for (id, entry) in all {
            self.resolve(id, entry, Err(error()));
        }
    }

    fn resolve(&mut self, id: MessageId, entry: Entry<M>, outcome: Outcome) {
        self.pending_bytes -= entry.size;
        self.record(&outcome);
        self.resolved.push_back(Resolved {
            id,
            message: entry.message,
            outcome,
        });
    }

    fn record(&mut self, outcome: &Outcome) {
        let s = &mut self.stats;
        match outcome {
            Ok(_) => s.confirmed += 1,
            Err(e) => match e.kind() {
                PublishErrorKind::Expired => s.expired += 1,
                PublishErrorKind::Dropped => s.dropped += 1,
                PublishErrorKind::Nacked => s.failed.nacked += 1,
                PublishErrorKind::Unroutable => s.failed.unroutable += 1,
                PublishErrorKind::Rejected => s.failed.rejected += 1,
                PublishErrorKind::Overflow => s.failed.overflow += 1,
                PublishErrorKind::Cancelled => s.failed.cancelled += 1,
                PublishErrorKind::ShutDown => s.failed.shut_down += 1,
                PublishErrorKind::GaveUp => s.failed.gave_up += 1,
            },
        }
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

    #[test]
    fn config_rejects_zero() {
        assert_eq!(
            OutboxConfig::builder().max_in_flight(0).build(),
            Err(OutboxConfigError::Zero {
                field: "max_in_flight"
            })
        );
    }
}
