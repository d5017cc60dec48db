//! The sans-IO reconnect state machine.
//!
//! No threads, no I/O, no clock reads, no global randomness: time is an
//! argument, jitter comes from a PRNG seeded by the [`Config`].
//!
//! # The contract
//!
//! 1. Feed every event with [`Machine::handle`]`(now, input)`.
//! 2. Drain [`Machine::poll`]`(now)` until it returns `None`, executing each
//!    [`Output`] in order (`Close` before the `Open` that follows it).
//! 3. Call `handle(now, Input::Timeout)` (or just `poll(now)`) when
//!    [`Machine::poll_timeout`] is reached. Early or spurious timeouts are
//!    harmless no-ops.
//!
//! `now` must never go backwards; an earlier `now` is treated as the latest
//! one seen.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use redial::machine::{Config, ErrorKind, Input, Machine, Output};
//!
//! let mut m = Machine::new(Config::builder().seed(7).build().unwrap());
//! let t0 = Instant::now();
//! m.handle(t0, Input::Start);
//! let mut opened = None;
//! while let Some(out) = m.poll(t0) {
//!     if let Output::Open { generation, .. } = out {
//!         opened = Some(generation); // the driver starts opening link `generation`
//!     }
//! }
//! let generation = opened.unwrap();
//! m.handle(t0 + Duration::from_millis(5), Input::AttemptSucceeded { generation });
//! assert!(m.is_connected());
//! // A late report about an older link changes nothing.
//! m.handle(t0 + Duration::from_millis(6), Input::lost(generation.next(), ErrorKind::Transient));
//! assert!(m.is_connected());
//! ```

mod config;
// Public through `crate::unstable` only (no semver guarantees).
#[cfg_attr(not(feature = "unstable"), allow(dead_code, unreachable_pub))]
pub(crate) mod invariants;
mod io;
mod state;
#[cfg_attr(not(feature = "unstable"), allow(dead_code))]
pub(crate) mod table;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use config::{
    Config, ConfigBuilder, ConfigError, MAX_ENDPOINTS, MAX_FIRST_GENERATION, RetryBudget,
};
pub use io::{ErrorKind, FailCause, Generation, Input, Output, ProbeOutcome, Reason, StateKind};
pub use state::{Link, Liveness, State};

use crate::backoff::BackoffState;
use crate::rng::SplitMix64;

/// Counters kept by the machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MachineStats {
    /// Inputs naming a generation other than the current one (dropped).
    pub stale_inputs: u64,
    /// Inputs of the current generation (or none) that the state ignores:
    /// duplicates, reports that do not apply.
    pub ignored_inputs: u64,
    /// `Open` outputs emitted.
    pub opens: u64,
    /// `Close` outputs emitted.
    pub closes: u64,
    /// Attempts that failed (including links that dropped before the stable period).
    pub failed_attempts: u64,
    /// Times an up link went down.
    pub outages: u64,
    /// `Probe` outputs emitted.
    pub probes: u64,
    /// Resumes accepted (a lingering link restored by the transport).
    pub resumes: u64,
    /// Links adopted from the application.
    pub adoptions: u64,
}

/// The bookkeeping of the current outage; reset only when a link that stayed
/// up for the stable period is lost, or the user asks to reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outage {
    started: Instant,
    attempts: u32,
    permanent_failures: u32,
}

/// The reconnect state machine. See the [module docs](self) for the contract.
///
/// # Examples
///
/// A driver's loop, with time passed in: a link comes up and dies; the
/// machine closes it and, once the backoff delay has passed, asks for the
/// next link. Sleeping until [`Machine::poll_timeout`] is the driver's job.
///
/// ```
/// use std::time::Instant;
/// use redial::machine::{Config, ErrorKind, Generation, Input, Machine, Output};
///
/// /// Executes the outputs due at `now`; returns the link to open, if any.
/// fn drain(machine: &mut Machine, now: Instant) -> Option<Generation> {
///     let mut open = None;
///     while let Some(output) = machine.poll(now) {
///         match output {
///             Output::Open { generation, .. } => open = Some(generation),
///             Output::Close { generation, .. } => println!("close link {generation}"),
///             _ => {} // state changes (and probes, when configured)
///         }
///     }
///     open
/// }
///
/// # fn main() -> Result<(), redial::machine::ConfigError> {
/// let mut machine = Machine::new(Config::builder().seed(1).build()?);
/// let mut now = Instant::now();
/// machine.handle(now, Input::Start);
/// let first = drain(&mut machine, now).expect("the first link is opened at once");
/// machine.handle(now, Input::AttemptSucceeded { generation: first });
/// drain(&mut machine, now);
/// assert!(machine.is_connected());
///
/// // The link's socket reports an error: the link is closed, and the next
/// // one opened when the backoff delay has passed.
/// machine.handle(now, Input::lost(first, ErrorKind::Transient));
/// let next = loop {
///     if let Some(generation) = drain(&mut machine, now) {
///         break generation;
///     }
///     now = machine.poll_timeout().expect("the next attempt is scheduled");
/// };
/// assert_eq!(next, first.next());
/// assert_eq!(machine.stats().closes, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Machine {
    config: Config,
    state: State,
    generation: Generation,
    outage: Option<Outage>,
    backoff: BackoffState,
    /// Immediate retries left, and since when the budget earns the next
    /// (`None`: never spent, full).
    retry_tokens: Option<(u32, Instant)>,
    /// The number the next probe gets.
    next_probe: u64,
    /// The transport answered `Unsupported`: no more probes.
    probes_unsupported: bool,
    /// The endpoints in the order tries visit them (shuffled once). Empty
    /// with a single endpoint, whose order is `[0]`: a one-element box
    /// was a heap allocation per engine for nothing.
    order: Box<[u32]>,
    /// Position in `order` of the live link's endpoint, or the next try's.
    cursor: u32,
    /// Endpoints of the current round not yet tried.
    untried: u32,
    outputs: VecDeque<Output>,
    now: Option<Instant>,
    /// The detail of the input being handled (copied onto its outputs).
    detail: Option<u32>,
    stats: MachineStats,
}

impl Machine {
    /// A machine in `Idle`, whose first link will be generation
    /// `config.first_generation()` (1 by default).
    pub fn new(config: Config) -> Self {
        let backoff = BackoffState::new(config.backoff(), config.seed());
        let order = shuffled_endpoints(config.endpoints, config.seed());
        let untried = config.endpoints;
        let first = config.first_generation();
        Self {
            config,
            state: State::Idle,
            generation: first,
            outage: None,
            backoff,
            retry_tokens: None,
            next_probe: 1,
            probes_unsupported: false,
            order,
            cursor: 0,
            untried,
            outputs: VecDeque::new(),
            now: None,
            detail: None,
            stats: MachineStats::default(),
        }
    }

    // ---- getters -------------------------------------------------------

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The current state with its data.
    pub fn state(&self) -> &State {
        &self.state
    }
    /// The current state's name.
    pub fn kind(&self) -> StateKind {
        self.state.kind()
    }
    /// The current generation: the live link's, or the one the next link will get.
    pub fn generation(&self) -> Generation {
        self.generation
    }
    /// A link is up (connected, possibly blocked).
    pub fn is_connected(&self) -> bool {
        self.kind().is_link_up()
    }
    /// The "actively reconnecting" flag that callback-SDK clients keep by
    /// hand ([report 003](crate#scenario-ids-and-failure-reports)), derived from the state.
    pub fn is_reconnecting(&self) -> bool {
        self.kind().is_reconnecting()
    }
    /// Attempts made in the current outage (0 before the first).
    pub fn attempts(&self) -> u32 {
        self.outage.map_or(0, |o| o.attempts)
    }
    /// The endpoint of the live link, or the one the next attempt or probe
    /// targets (always 0 with one endpoint).
    pub fn endpoint(&self) -> u32 {
        self.order.get(self.cursor as usize).copied().unwrap_or(0)
    }
    /// The order tries visit the endpoints in (shuffled once from the seed).
    pub fn endpoint_order(&self) -> &[u32] {
        if self.order.is_empty() {
            &[0]
        } else {
            &self.order
        }
    }
    /// The counters.
    pub fn stats(&self) -> MachineStats {
        self.stats
    }

    // ---- outputs -------------------------------------------------------

    /// The next output, or `None` when there is nothing to do. Fires a due
    /// timer first when no output is queued.
    #[must_use]
    pub fn poll(&mut self, now: Instant) -> Option<Output> {
        // Judged at the clamped time, as `handle` would judge the timeout.
        let clamped = self.now.map_or(now, |last| last.max(now));
        if self.outputs.is_empty() && self.poll_timeout().is_some_and(|t| t <= clamped) {
            self.handle(now, Input::Timeout);
        }
        self.outputs.pop_front()
    }

    /// Gives the output queue's buffer back when it is drained. For hosts
    /// that keep many machines that sit quiet for long (a 112-byte heap
    /// chunk each); the next output allocates it again, so not for a loop.
    pub fn release_buffers(&mut self) {
        if self.outputs.is_empty() {
            self.outputs = VecDeque::new();
        }
    }

    /// When the machine next needs [`Input::Timeout`], if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Connecting { deadline, .. } => *deadline,
            State::Closing { deadline } => Some(*deadline),
            State::Connected(link) => link.liveness.map(|l| l.next_check),
            State::Blocked { link, deadline } => {
                let live = link.liveness.map(|l| l.next_check);
                match (live, *deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            State::BackingOff { until, .. } => Some(*until),
            State::Idle | State::Closed | State::Failed { .. } => None,
        }
    }

    // ---- inputs --------------------------------------------------------

    /// Feeds one input at time `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        let now = self.advance_clock(now);
        if input.generation().is_some_and(|g| g != self.generation) {
            self.stats.stale_inputs = self.stats.stale_inputs.saturating_add(1);
            tracing::trace!(?input, current = %self.generation, "stale input dropped");
            return;
        }
        self.detail = input.detail();
        let handled = match input {
            Input::Start => self.on_start(now),
            Input::Adopt { .. } => self.on_adopt(now),
            Input::AttemptSucceeded { .. } => self.on_attempt_succeeded(now),
            Input::AttemptFailed { kind, .. } => {
                self.on_attempt_failed(now, kind, Reason::AttemptFailed)
            }
            Input::LinkLost { kind, .. } => self.on_link_lost(now, kind),
            Input::LinkResumed {
                session_present, ..
            } => self.on_link_resumed(now, session_present),
            Input::Activity { .. } => self.on_activity(),
            Input::Blocked { .. } => self.on_blocked(now),
            Input::Unblocked { .. } => self.on_unblocked(),
            Input::Probed { probe, outcome } => self.on_probed(now, probe, outcome),
            Input::ReconnectNow => self.on_reconnect_now(now),
            Input::Shutdown => self.on_shutdown(now),
            Input::CloseCompleted => self.on_close_completed(),
            Input::Timeout => self.on_timeout(now),
        };
        self.detail = None;
        if !handled {
            self.stats.ignored_inputs = self.stats.ignored_inputs.saturating_add(1);
        }
    }

    fn advance_clock(&mut self, now: Instant) -> Instant {
        let now = self.now.map_or(now, |last| last.max(now));
        self.now = Some(now);
        now
    }

    fn on_start(&mut self, now: Instant) -> bool {
        if !matches!(self.state, State::Idle) {
            return false;
        }
        self.new_outage(now);
        self.open(now, Reason::Start);
        true
    }

    /// The application's own first link: supervised from now on, attempt 0.
    fn on_adopt(&mut self, now: Instant) -> bool {
        if !matches!(self.state, State::Idle) {
            return false;
        }
        // An outage, as for `start`: an early loss of the adopted link is
        // then a failed try like any other.
        self.new_outage(now);
        self.stats.adoptions = self.stats.adoptions.saturating_add(1);
        let link = self.new_link(self.generation, 0, now);
        self.set_state(State::Connected(link), Reason::Adopted);
        true
    }

    fn on_attempt_succeeded(&mut self, now: Instant) -> bool {
        let State::Connecting {
            generation,
            attempt,
            ..
        } = self.state
        else {
            return false;
        };
        let link = self.new_link(generation, attempt, now);
        self.set_state(State::Connected(link), Reason::AttemptSucceeded);
        true
    }

    fn new_link(&self, generation: Generation, attempt: u32, now: Instant) -> Link {
        let liveness = self.config.liveness_timeout_ms.map(|h| Liveness {
            next_check: later(now, h / 2),
            missed: 0,
            seen: false,
        });
        Link {
            generation,
            attempt,
            since: now,
            liveness,
        }
    }

    fn on_attempt_failed(&mut self, now: Instant, kind: ErrorKind, reason: Reason) -> bool {
        let State::Connecting { generation, .. } = self.state else {
            return false;
        };
        self.stats.failed_attempts = self.stats.failed_attempts.saturating_add(1);
        self.retire(generation, reason);
        if kind == ErrorKind::Permanent && !self.permanent_retry_allowed() {
            self.give_up(crate::machine::FailCause::Permanent);
        } else {
            let in_round = self.advance();
            self.schedule_attempt(now, reason, None, false, in_round);
        }
        true
    }

    fn on_link_lost(&mut self, now: Instant, kind: ErrorKind) -> bool {
        match self.state {
            State::Connecting { .. } => self.on_attempt_failed(now, kind, Reason::LinkLost),
            State::Connected(link) | State::Blocked { link, .. } => {
                self.link_down(now, link, Reason::LinkLost, kind, true);
                true
            }
            _ => false,
        }
    }

    fn on_link_resumed(&mut self, now: Instant, session_present: bool) -> bool {
        let State::BackingOff {
            lingering: Some(generation),
            ..
        } = self.state
        else {
            return false;
        };
        // The transport's own reconnect counts as an attempt of the outage,
        // so a link that keeps resuming and dropping still backs off.
        let outage = self.outage.as_mut().expect("an outage is under way");
        outage.attempts = outage.attempts.saturating_add(1);
        let attempt = outage.attempts;
        self.stats.resumes = self.stats.resumes.saturating_add(1);
        let link = self.new_link(generation, attempt, now);
        self.set_state(State::Connected(link), Reason::LinkResumed);
        if !session_present {
            self.outputs.push_back(Output::Restore { generation });
        }
        true
    }

    fn on_activity(&mut self) -> bool {
        match &mut self.state {
            State::Connected(link) | State::Blocked { link, .. } => {
                if let Some(l) = &mut link.liveness {
                    l.seen = true;
                }
                true
            }
            _ => false,
        }
    }

    fn on_blocked(&mut self, now: Instant) -> bool {
        let State::Connected(link) = self.state else {
            return false;
        };
        let deadline = self.config.blocked_timeout_ms.map(|b| later(now, b));
        self.set_state(State::Blocked { link, deadline }, Reason::Blocked);
        true
    }

    fn on_unblocked(&mut self) -> bool {
        let State::Blocked { link, .. } = self.state else {
            return false;
        };
        self.set_state(State::Connected(link), Reason::Unblocked);
        true
    }

    fn on_probed(&mut self, now: Instant, answered: u64, outcome: ProbeOutcome) -> bool {
        let State::BackingOff {
            attempt,
            until,
            lingering,
            probe: Some(probe),
        } = self.state
        else {
            return self.stale_probe(answered);
        };
        if answered != probe {
            return self.stale_probe(answered);
        }
        match outcome {
            ProbeOutcome::Reachable => self.open(now, Reason::BackoffElapsed),
            ProbeOutcome::Unsupported => {
                self.probes_unsupported = true;
                self.open(now, Reason::BackoffElapsed);
            }
            // The round's next endpoint is probed at once; after a whole
            // round, the next probe starts when this one's time is up.
            ProbeOutcome::Unreachable => {
                if self.advance() {
                    self.probe_or_open(now, attempt);
                } else {
                    self.state = State::BackingOff {
                        attempt,
                        until,
                        lingering,
                        probe: None,
                    };
                }
            }
        }
        true
    }

    /// An answer to a probe that is not the one in flight changes nothing.
    fn stale_probe(&mut self, probe: u64) -> bool {
        self.stats.stale_inputs = self.stats.stale_inputs.saturating_add(1);
        tracing::trace!(probe, "stale probe answer dropped");
        true
    }

    fn on_reconnect_now(&mut self, now: Instant) -> bool {
        match self.state {
            State::Connected(link) | State::Blocked { link, .. } => {
                self.stats.outages = self.stats.outages.saturating_add(1);
                self.retire(link.generation, Reason::ReconnectRequested);
                self.new_outage(now);
            }
            State::BackingOff { lingering, .. } => {
                if let Some(generation) = lingering {
                    self.retire(generation, Reason::ReconnectRequested);
                }
            }
            State::Failed { .. } => self.new_outage(now),
            State::Idle | State::Connecting { .. } | State::Closing { .. } | State::Closed => {
                return false;
            }
        }
        self.open(now, Reason::ReconnectRequested);
        true
    }

    fn on_shutdown(&mut self, now: Instant) -> bool {
        match self.state.live_link() {
            _ if self.kind().is_shutting_down() => return false,
            Some(generation) => {
                self.retire(generation, Reason::Shutdown);
                let deadline = later(now, self.config.close_timeout_ms);
                self.set_state(State::Closing { deadline }, Reason::Shutdown);
            }
            None => self.set_state(State::Closed, Reason::Shutdown),
        }
        true
    }

    fn on_close_completed(&mut self) -> bool {
        if !matches!(self.state, State::Closing { .. }) {
            return false;
        }
        self.set_state(State::Closed, Reason::CloseCompleted);
        true
    }

    fn on_timeout(&mut self, now: Instant) -> bool {
        if self.poll_timeout().is_none_or(|t| t > now) {
            return false;
        }
        match self.state {
            State::Connecting { .. } => {
                self.on_attempt_failed(now, ErrorKind::Transient, Reason::ConnectTimeout);
            }
            State::Connected(mut link) => {
                if self.liveness_expired(&mut link, now) {
                    self.outputs.push_back(Output::LivenessLost {
                        generation: link.generation,
                    });
                    self.link_down(now, link, Reason::LivenessLost, ErrorKind::Transient, false);
                } else {
                    self.state = State::Connected(link);
                }
            }
            State::Blocked { mut link, deadline } => {
                if self.liveness_expired(&mut link, now) {
                    self.outputs.push_back(Output::LivenessLost {
                        generation: link.generation,
                    });
                    self.link_down(now, link, Reason::LivenessLost, ErrorKind::Transient, false);
                } else if deadline.is_some_and(|d| d <= now) {
                    self.link_down(
                        now,
                        link,
                        Reason::BlockedTooLong,
                        ErrorKind::Transient,
                        false,
                    );
                } else {
                    self.state = State::Blocked { link, deadline };
                }
            }
            State::BackingOff {
                attempt,
                lingering,
                probe,
                ..
            } => {
                if lingering.is_none() && self.probing() {
                    if probe.is_some() {
                        // Unanswered in time: it counts as unreachable.
                        self.advance();
                    }
                    self.probe_or_open(now, attempt);
                    return true;
                }
                if let Some(generation) = lingering {
                    self.retire(generation, Reason::BackoffElapsed);
                }
                self.open(now, Reason::BackoffElapsed);
            }
            State::Closing { .. } => self.set_state(State::Closed, Reason::CloseTimeout),
            State::Idle | State::Closed | State::Failed { .. } => return false,
        }
        true
    }

    // ---- the moves every transition is built from ----------------------

    /// Runs the due liveness checks; true when the link is dead.
    fn liveness_expired(&self, link: &mut Link, now: Instant) -> bool {
        let Some(h) = self.config.liveness_timeout_ms else {
            return false;
        };
        let Some(l) = &mut link.liveness else {
            return false;
        };
        // At most three rounds: a reset, then two misses, whatever the jump.
        while l.next_check <= now {
            if l.seen {
                l.missed = 0;
                l.seen = false;
            } else {
                l.missed += 1;
            }
            l.next_check = later(l.next_check, h / 2);
            if l.missed >= 2 {
                return true;
            }
        }
        false
    }

    /// An up link went down. A link that stayed up for the stable period
    /// starts a fresh outage; one that did not counts as a failed attempt.
    fn link_down(
        &mut self,
        now: Instant,
        link: Link,
        reason: Reason,
        kind: ErrorKind,
        may_linger: bool,
    ) {
        self.stats.outages = self.stats.outages.saturating_add(1);
        let stable = now.saturating_duration_since(link.since) >= ms(self.config.stable_period_ms);
        if stable {
            self.new_outage(now);
        } else {
            self.stats.failed_attempts = self.stats.failed_attempts.saturating_add(1);
        }
        if kind == ErrorKind::Permanent && !self.permanent_retry_allowed() {
            self.retire(link.generation, reason);
            self.give_up(FailCause::Permanent);
            return;
        }
        let mut in_round = false;
        let lingering = if may_linger && self.config.resume_grace_ms.is_some() {
            Some(link.generation)
        } else {
            self.retire(link.generation, reason);
            // An early loss is a failed try of this endpoint.
            in_round = !stable && self.advance();
            None
        };
        self.schedule_attempt(now, reason, lingering, true, in_round);
    }

    /// Decides when the next attempt runs: at once (the round's next
    /// endpoint, the first attempt of an outage, or an up link's early loss
    /// within the retry budget), after a backoff delay, or never (limits
    /// reached).
    fn schedule_attempt(
        &mut self,
        now: Instant,
        reason: Reason,
        lingering: Option<Generation>,
        link_was_up: bool,
        in_round: bool,
    ) {
        let outage = self.outage.expect("an outage is under way");
        if self
            .config
            .max_attempts
            .is_some_and(|max| outage.attempts >= max)
        {
            self.give_up_lingering(lingering, FailCause::RetriesExhausted, reason);
            return;
        }
        if in_round
            && lingering.is_none()
            && self
                .config
                .max_elapsed_ms
                .is_none_or(|max| elapsed_ms(now, outage.started) <= max)
        {
            if matches!(self.state, State::Connecting { .. }) {
                // A zero wait, so that no state change goes from connecting to connecting.
                let wait = State::BackingOff {
                    attempt: outage.attempts.saturating_add(1),
                    until: now,
                    lingering: None,
                    probe: None,
                };
                self.set_state(wait, reason);
                self.open(now, Reason::BackoffElapsed);
            } else {
                self.open(now, reason);
            }
            return;
        }
        let first = outage.attempts == 0;
        if self.config.immediate_first_retry && lingering.is_none() {
            // A link that came up moments ago proved the broker reachable.
            let proven = link_was_up
                && !first
                && self
                    .config
                    .max_elapsed_ms
                    .is_none_or(|max| elapsed_ms(now, outage.started) <= max)
                && self.take_retry_token(now);
            if first || proven {
                self.open(now, reason);
                return;
            }
        }
        let mut wait = if first && self.config.immediate_first_retry {
            0
        } else {
            self.backoff.next_delay_ms(&self.config.backoff)
        };
        if lingering.is_some() {
            wait = wait.max(self.config.resume_grace_ms.unwrap_or(0));
        }
        if let Some(max) = self.config.max_elapsed_ms {
            let elapsed = elapsed_ms(now, outage.started);
            if elapsed.saturating_add(wait) > max {
                if outage.attempts > 0 {
                    self.give_up_lingering(lingering, FailCause::DeadlineExhausted, reason);
                    return;
                }
                // Every outage gets at least one attempt: cut the wait to
                // the budget left rather than give up untried.
                wait = max.saturating_sub(elapsed);
            }
        }
        let next = State::BackingOff {
            attempt: outage.attempts.saturating_add(1),
            until: later(now, wait),
            lingering,
            probe: None,
        };
        self.set_state(next, reason);
    }

    /// Spends one immediate retry if the budget has one: it is full until
    /// first spent, then earns one per `refill_ms`, up to `burst`.
    fn take_retry_token(&mut self, now: Instant) -> bool {
        let Some(budget) = self.config.retry_budget else {
            return false;
        };
        let (tokens, since) = match self.retry_tokens {
            None => (budget.burst, now),
            Some((tokens, since)) => {
                let earned = elapsed_ms(now, since) / budget.refill_ms;
                let total = u64::from(tokens).saturating_add(earned);
                if total >= u64::from(budget.burst) {
                    (budget.burst, now)
                } else {
                    // `total < burst`, so `earned` fits and the remainder counts on.
                    let tokens = u32::try_from(total).unwrap_or(budget.burst);
                    (
                        tokens,
                        later(since, earned.saturating_mul(budget.refill_ms)),
                    )
                }
            }
        };
        self.retry_tokens = Some((tokens.saturating_sub(1), since));
        tokens > 0
    }

    /// Probes are configured and the transport did not refuse them.
    fn probing(&self) -> bool {
        self.config.probe_interval_ms.is_some() && !self.probes_unsupported
    }

    /// The backoff wait (or the last probe's time) is over: emits the next
    /// probe, or makes the attempt at once when another probe interval
    /// would outlast `max_elapsed` (its failure then gives up, as ever).
    fn probe_or_open(&mut self, now: Instant, attempt: u32) {
        let outage = self.outage.expect("an outage is under way");
        let interval = self.config.probe_interval_ms.expect("probing is on");
        if self
            .config
            .max_elapsed_ms
            .is_some_and(|max| elapsed_ms(now, outage.started).saturating_add(interval) > max)
        {
            self.open(now, Reason::BackoffElapsed);
            return;
        }
        let probe = self.next_probe;
        self.next_probe = probe.saturating_add(1);
        self.state = State::BackingOff {
            attempt,
            until: later(now, interval),
            lingering: None,
            probe: Some(probe),
        };
        self.stats.probes = self.stats.probes.saturating_add(1);
        let endpoint = self.endpoint();
        self.outputs.push_back(Output::Probe { probe, endpoint });
    }

    /// Emits `Open` for the current (fresh) generation.
    fn open(&mut self, now: Instant, reason: Reason) {
        let outage = self.outage.as_mut().expect("an outage is under way");
        outage.attempts = outage.attempts.saturating_add(1);
        let attempt = outage.attempts;
        let generation = self.generation;
        let deadline = self.config.connect_timeout_ms.map(|t| later(now, t));
        self.set_state(
            State::Connecting {
                generation,
                attempt,
                deadline,
            },
            reason,
        );
        self.stats.opens = self.stats.opens.saturating_add(1);
        let endpoint = self.endpoint();
        self.outputs.push_back(Output::Open {
            generation,
            attempt,
            endpoint,
        });
    }

    /// The try at the cursor failed: moves to the next endpoint. True while
    /// the round still has an untried endpoint (the next try goes at once);
    /// false when the round is over (a new one begins with the next try).
    fn advance(&mut self) -> bool {
        let n = self.config.endpoints;
        self.cursor = (self.cursor + 1) % n;
        self.untried -= 1;
        if self.untried > 0 {
            return true;
        }
        self.untried = n;
        false
    }

    /// Retires link `generation`: the generation advances first, so every late
    /// report about `generation` is stale, then `Close` is emitted.
    fn retire(&mut self, generation: Generation, reason: Reason) {
        debug_assert_eq!(
            generation, self.generation,
            "only the current link can be retired"
        );
        self.generation = generation.next();
        self.stats.closes = self.stats.closes.saturating_add(1);
        self.outputs.push_back(Output::Close { generation, reason });
    }

    fn give_up_lingering(
        &mut self,
        lingering: Option<Generation>,
        cause: FailCause,
        reason: Reason,
    ) {
        if let Some(generation) = lingering {
            self.retire(generation, reason);
        }
        self.give_up(cause);
    }

    fn give_up(&mut self, cause: FailCause) {
        self.set_state(State::Failed { cause }, Reason::GaveUp);
        let attempts = self.attempts();
        let detail = self.detail;
        self.outputs.push_back(Output::GaveUp {
            cause,
            attempts,
            detail,
        });
    }

    fn permanent_retry_allowed(&mut self) -> bool {
        let outage = self.outage.as_mut().expect("an outage is under way");
        outage.permanent_failures = outage.permanent_failures.saturating_add(1);
        outage.permanent_failures <= self.config.permanent_retries
    }

    fn new_outage(&mut self, now: Instant) {
        self.outage = Some(Outage {
            started: now,
            attempts: 0,
            permanent_failures: 0,
        });
        self.backoff.reset(&self.config.backoff);
        // A new round, from the cursor: the endpoint of the lost link first.
        self.untried = self.config.endpoints;
    }

    /// The one place the state changes; emits `StateChanged`.
    fn set_state(&mut self, next: State, reason: Reason) {
        let from = self.state.kind();
        let to = next.kind();
        debug_assert!(
            table::allows(from, reason, to),
            "transition {from} -> {to} ({reason:?}) is not in the table"
        );
        self.state = next;
        tracing::debug!(%from, %to, generation = %self.generation, ?reason, "state changed");
        // Only the failure's own change carries its detail.
        let detail = match reason {
            Reason::AttemptFailed | Reason::LinkLost => self.detail,
            _ => None,
        };
        self.outputs.push_back(Output::StateChanged {
            from,
            to,
            generation: self.generation,
            reason,
            detail,
        });
    }
}

/// The endpoints `0..n` in a Fisher-Yates order drawn from a generator of
/// their own, so the backoff's draws do not depend on the endpoint count.
fn shuffled_endpoints(n: u32, seed: u64) -> Box<[u32]> {
    const SALT: u64 = u64::from_be_bytes(*b"endpoint");
    if n <= 1 {
        // No allocation: an empty order stands for `[0]` (see `Machine::order`).
        return Box::default();
    }
    let mut order: Box<[u32]> = (0..n).collect();
    let mut rng = SplitMix64::new(seed ^ SALT);
    for i in (1..order.len()).rev() {
        let j = rng.uniform_inclusive(0, i as u64) as usize;
        order.swap(i, j);
    }
    order
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Whole milliseconds from `since` to `now` (0 if `now` is earlier).
fn elapsed_ms(now: Instant, since: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX)
}

/// `t + v ms`, saturating at the latest instant the platform can represent:
/// a caller's clock near that limit must not make the machine panic.
fn later(t: Instant, v: u64) -> Instant {
    let d = ms(v);
    if let Some(at) = t.checked_add(d) {
        return at;
    }
    // Binary search for the largest representable step (overflow path only).
    let (mut ok, mut too_far) = (Duration::ZERO, d);
    while too_far - ok > Duration::from_nanos(1) {
        let mid = ok + (too_far - ok) / 2;
        if t.checked_add(mid).is_some() {
            ok = mid;
        } else {
            too_far = mid;
        }
    }
    t + ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(m: &mut Machine, t: Instant) {
        while m.poll(t).is_some() {}
    }

    fn outputs(m: &mut Machine, t: Instant) -> Vec<Output> {
        std::iter::from_fn(|| m.poll(t)).collect()
    }

    /// A probing machine (500 ms) whose first attempt failed, backing off
    /// before attempt 2; with its start and the end of its wait.
    fn probing_after_a_failure(max_elapsed: Option<Duration>) -> (Machine, Instant, Instant) {
        let builder = Config::builder()
            .seed(3)
            .probe_interval(Duration::from_millis(500));
        let config = match max_elapsed {
            Some(e) => builder.max_elapsed(e),
            None => builder,
        }
        .build()
        .unwrap();
        let mut m = Machine::new(config);
        let t = Instant::now();
        m.handle(t, Input::Start);
        drain(&mut m, t);
        let generation = m.generation();
        m.handle(t, Input::failed(generation, ErrorKind::Transient));
        drain(&mut m, t);
        let until = m.poll_timeout().expect("backing off");
        (m, t, until)
    }

    #[test]
    fn probes_start_when_the_backoff_wait_ends_and_a_reachable_one_opens() {
        let (mut m, _, until) = probing_after_a_failure(None);
        assert_eq!(
            outputs(&mut m, until),
            vec![Output::Probe {
                probe: 1,
                endpoint: 0
            }]
        );
        assert_eq!(m.kind(), StateKind::BackingOff);
        // Refused: the next probe starts one interval after the first.
        m.handle(
            until,
            Input::Probed {
                probe: 1,
                outcome: ProbeOutcome::Unreachable,
            },
        );
        assert_eq!(m.poll_timeout(), Some(until + Duration::from_millis(500)));
        let next = until + Duration::from_millis(500);
        assert_eq!(
            outputs(&mut m, next),
            vec![Output::Probe {
                probe: 2,
                endpoint: 0
            }]
        );
        // Unanswered: at its time up the next probe starts, the late answer is stale.
        let later = next + Duration::from_millis(500);
        assert_eq!(
            outputs(&mut m, later),
            vec![Output::Probe {
                probe: 3,
                endpoint: 0
            }]
        );
        let stale = m.stats().stale_inputs;
        m.handle(
            later,
            Input::Probed {
                probe: 2,
                outcome: ProbeOutcome::Reachable,
            },
        );
        assert_eq!(m.kind(), StateKind::BackingOff);
        assert_eq!(m.stats().stale_inputs, stale + 1);
        m.handle(
            later,
            Input::Probed {
                probe: 3,
                outcome: ProbeOutcome::Reachable,
            },
        );
        let out = outputs(&mut m, later);
        assert!(
            matches!(out.last(), Some(Output::Open { attempt: 2, .. })),
            "{out:?}"
        );
        assert_eq!(m.stats().probes, 3);
    }

    /// A backoff wait of 0 ends in a probe within the same step: the state
    /// then waits for the probe's answer, bounded by the probe interval,
    /// not by the backoff cap (a case the fuzzer found in the checker).
    #[test]
    fn a_zero_wait_probes_at_once_within_the_checked_bounds() {
        use crate::backoff::{Backoff, Jitter};
        use crate::machine::invariants::Checker;
        let mut probed_in_the_failing_step = 0;
        for seed in 0..32 {
            let backoff = Backoff::builder()
                .initial(Duration::from_millis(1))
                .multiplier(2.0)
                .max(Duration::from_millis(1))
                .jitter(Jitter::Full)
                .build()
                .unwrap();
            let config = Config::builder()
                .seed(seed)
                .backoff(backoff)
                .probe_interval(Duration::from_millis(433))
                .build()
                .unwrap();
            let mut m = Machine::new(config);
            let mut checker = Checker::new(&m);
            let t = Instant::now();
            checker.drive(&mut m, t, Input::Start).unwrap();
            let generation = m.generation();
            let failed = Input::failed(generation, ErrorKind::Transient);
            let out = checker
                .drive(&mut m, t, failed)
                .unwrap_or_else(|v| panic!("seed {seed}: {v}"));
            if out.iter().any(|o| matches!(o, Output::Probe { .. })) {
                probed_in_the_failing_step += 1;
            }
        }
        assert!(probed_in_the_failing_step > 0, "no seed drew a 0 wait");
    }

    #[test]
    fn an_unsupported_answer_opens_and_ends_probing_for_good() {
        let (mut m, _, until) = probing_after_a_failure(None);
        assert_eq!(
            outputs(&mut m, until),
            vec![Output::Probe {
                probe: 1,
                endpoint: 0
            }]
        );
        m.handle(
            until,
            Input::Probed {
                probe: 1,
                outcome: ProbeOutcome::Unsupported,
            },
        );
        drain(&mut m, until);
        assert_eq!(m.kind(), StateKind::Connecting);
        let generation = m.generation();
        m.handle(until, Input::failed(generation, ErrorKind::Transient));
        drain(&mut m, until);
        let next = m.poll_timeout().unwrap();
        let out = outputs(&mut m, next);
        assert!(
            matches!(out.last(), Some(Output::Open { attempt: 3, .. })),
            "{out:?}"
        );
    }

    #[test]
    fn probing_that_would_outlast_max_elapsed_makes_the_last_attempt_instead() {
        let (mut m, t, until) = probing_after_a_failure(Some(Duration::from_secs(4)));
        let mut now = until;
        loop {
            let out = outputs(&mut m, now);
            if let Some(Output::Open { .. }) = out.last() {
                break;
            }
            assert!(matches!(out.as_slice(), [Output::Probe { .. }]), "{out:?}");
            now = m.poll_timeout().unwrap();
            assert!(
                now <= t + Duration::from_secs(4),
                "probing past max_elapsed"
            );
        }
        let generation = m.generation();
        m.handle(now, Input::failed(generation, ErrorKind::Transient));
        assert_eq!(m.kind(), StateKind::Failed);
    }

    /// `poll` judges a due timer at the clamped time, as `handle` would:
    /// an input that moved the clock past the connect deadline leaves the
    /// timeout due even for a caller whose `now` is earlier.
    #[test]
    fn poll_with_an_earlier_now_fires_what_is_due_at_the_clock_reading() {
        let config = Config::builder().seed(1).build().unwrap();
        let connect_timeout = config
            .connect_timeout()
            .expect("the default config has a connect timeout");
        let mut m = Machine::new(config);
        let t = Instant::now();
        m.handle(t, Input::Start);
        drain(&mut m, t);
        let generation = m.generation();
        // Ignored while connecting, but it moves the clock.
        m.handle(t + connect_timeout * 2, Input::Activity { generation });
        let outputs: Vec<Output> = std::iter::from_fn(|| m.poll(t)).collect();
        assert!(
            outputs.contains(&Output::Close {
                generation,
                reason: Reason::ConnectTimeout
            }),
            "{outputs:?}"
        );
        assert_eq!(m.kind(), StateKind::BackingOff);
    }

    /// Counters are u32: an unlimited outage (or unlimited permanent
    /// retries) must saturate them, never overflow.
    #[test]
    fn outage_counters_saturate() {
        let config = Config::builder()
            .seed(1)
            .permanent_retries(u32::MAX)
            .build()
            .unwrap();
        let mut m = Machine::new(config);
        let mut t = Instant::now();
        m.handle(t, Input::Start);
        drain(&mut m, t);
        let outage = m.outage.as_mut().unwrap();
        outage.attempts = u32::MAX - 1;
        outage.permanent_failures = u32::MAX - 1;
        for _ in 0..3 {
            let generation = m.generation();
            m.handle(t, Input::failed(generation, ErrorKind::Permanent));
            drain(&mut m, t);
            assert_eq!(m.kind(), StateKind::BackingOff);
            assert_eq!(m.state().attempt(), u32::MAX);
            t = m.poll_timeout().unwrap();
            drain(&mut m, t);
            assert_eq!(m.kind(), StateKind::Connecting);
        }
        assert_eq!(m.attempts(), u32::MAX);
        assert_eq!(m.outage.unwrap().permanent_failures, u32::MAX);
    }
}
