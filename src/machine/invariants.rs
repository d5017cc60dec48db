//! A reusable checker of the machine's invariants (`docs/spec.md`, "Invariants").
//!
//! A [`Checker`] watches a [`Machine`] step by step: after every
//! `handle(now, input)` and the drain of `poll(now)` that follows it, hand the
//! input, the drained outputs and the machine to [`Checker::observe`]. It
//! returns the first broken invariant as a typed [`Violation`]. It is cheap
//! (a few comparisons and one clone of the state per step), so the property
//! tests, the fuzzer and the runtime tests all run it after every step.
//!
//! The checker does not re-implement the machine: it checks *properties* of
//! what the machine emits (links, generations, attempts, delays, state
//! changes) that every correct machine has, whatever the timing and the
//! jitter. [`Checker::drive`] does the handle/drain/observe dance in one call.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use redial::unstable::invariants::Checker;
//! use redial::machine::{Config, ErrorKind, Generation, Input, Machine};
//!
//! let mut m = Machine::new(Config::builder().seed(1).build().unwrap());
//! let mut checker = Checker::new(&m);
//! let t0 = Instant::now();
//! checker.drive(&mut m, t0, Input::Start).unwrap();
//! let g = m.generation();
//! checker.drive(&mut m, t0, Input::AttemptSucceeded { generation: g }).unwrap();
//! // A duplicate report of a loss is inert, however late it comes.
//! let lost = Input::lost(g, ErrorKind::Transient);
//! checker.drive(&mut m, t0 + Duration::from_secs(1), lost).unwrap();
//! checker.drive(&mut m, t0 + Duration::from_secs(1), lost).unwrap();
//! assert!(m.generation() > Generation(1));
//! ```
//!
//! # Contract
//!
//! - Observe every step, starting from the machine the checker was built on,
//!   with the same `now` that was passed to `handle` and `poll`.
//! - Drain `poll(now)` completely before observing.
//! - A driver that fires timers with `poll(now)` alone (no `handle`) observes
//!   that step as [`Input::Timeout`].
//! - The checks that say "this input changed nothing" are exact only when no
//!   timer was already due at `now` (the drain may fire it). Drivers that
//!   advance time with a `Timeout` step first, then feed inputs at that
//!   instant, get every check.
//! - After a violation the checker's bookkeeping is undefined: discard it.

use std::fmt;
use std::time::{Duration, Instant};

use super::{
    Config, ErrorKind, FailCause, Generation, Input, Machine, MachineStats, Output, Reason, State,
    StateKind, table,
};

/// The invariants the [`Checker`] enforces, named as in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Invariant {
    /// At most one link is open or being opened; a new link is opened only
    /// after the previous one was closed; the state's live link is the one
    /// the outputs left open.
    SingleLink,
    /// `Open` and `Close` strictly alternate: every `Close` names the link
    /// that was opened last and is still open, so each `Open` is answered by
    /// exactly one `Close` before the next `Open`.
    OpenCloseAlternate,
    /// `Open` generations strictly increase and are never reused; each
    /// `Open` names the machine's current generation, which advances exactly
    /// when a link is closed.
    GenerationsIncrease,
    /// An input naming a generation other than the current one produces no
    /// output and leaves the state unchanged.
    StaleInputInert,
    /// A genuine loss of the current link (a failed attempt, a lost link, a
    /// connect or liveness timeout, a link blocked too long) always leads to
    /// a new attempt (an `Open` now or a `BackingOff` with a deadline) unless
    /// the machine gives up: no lost interrupts.
    LossLeadsToAttempt,
    /// Sticky terminal states: in `Closed` nothing is ever emitted; in
    /// `Failed` only `ReconnectNow` and `Shutdown` have any effect.
    StickyTerminal,
    /// After a shutdown no link is ever opened again; `Closing` only moves to
    /// `Closed` (on `CloseCompleted` or its timer) and ignores everything else.
    ShutdownIsFinal,
    /// `Idle` reacts only to `Start` and `Shutdown`.
    IdleWaitsForStart,
    /// Every backoff wait is within `[0, cap]`; a wait that gives a lost link
    /// its resume grace is within `[grace, max(cap, grace)]`; no attempt is
    /// scheduled past `max_elapsed` from the start of the outage.
    BackoffWithinBounds,
    /// The first attempt after losing a link that had been stable is made at
    /// once when `immediate_first_retry` is set (and the link is not given a
    /// resume grace).
    ImmediateFirstRetry,
    /// Attempt numbers rise by exactly one within an outage, restart at 1
    /// only on a fresh outage (start, a user's reconnect, the loss of a link
    /// that stayed up for the stable period) and never exceed `max_attempts`.
    /// A transport's own resume of a lingering link counts as the attempt
    /// the wait was for.
    AttemptCounting,
    /// `StateChanged` outputs are consistent: `from` is the previous state,
    /// the edge is in [`table::EDGES`], the generation is the current one,
    /// and they lead to the machine's actual state.
    StateChangesConsistent,
    /// Exactly one "disconnected" (out of connected/blocked) and one
    /// "reconnected" (into connected) change per outage: they alternate and
    /// a step holds at most one of each.
    OneDisconnectPerOutage,
    /// `GaveUp` follows exactly the transitions into `Failed`, with a cause
    /// the configuration allows (`max_attempts` reached, `max_elapsed` set,
    /// a permanent failure).
    GaveUpConsistent,
    /// A permanent failure gives up once more than `permanent_retries` of
    /// them happened in the outage (by default at the first), and only then.
    PermanentGivesUp,
    /// `LivenessLost` is emitted only with a liveness timeout configured,
    /// for the current up link, and is followed by that link's `Close`.
    LivenessLostConsistent,
    /// After `poll(now)` is drained, `poll_timeout()` is later than `now`;
    /// the waiting states (connecting, backing off, closing) always have a
    /// timer, idle, closed and failed never do.
    TimerContract,
    /// The machine's counters match the outputs and the stale inputs seen.
    StatsConsistent,
    /// Every `Open` and `Probe` names an endpoint below the configured
    /// count; within an outage, a try never targets an endpoint among the
    /// last `endpoints - 1` failed tries (so no endpoint is tried twice in
    /// a row while another is untried), and a wait begins after a failed
    /// try only once the last `endpoints` failed tries covered every
    /// endpoint (a round is over).
    EndpointRounds,
}

impl Invariant {
    /// The invariant's name as the spec writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Invariant::SingleLink => "single_link",
            Invariant::OpenCloseAlternate => "open_close_alternate",
            Invariant::GenerationsIncrease => "generations_increase",
            Invariant::StaleInputInert => "stale_input_inert",
            Invariant::LossLeadsToAttempt => "loss_leads_to_attempt",
            Invariant::StickyTerminal => "sticky_terminal",
            Invariant::ShutdownIsFinal => "shutdown_is_final",
            Invariant::IdleWaitsForStart => "idle_waits_for_start",
            Invariant::BackoffWithinBounds => "backoff_within_bounds",
            Invariant::ImmediateFirstRetry => "immediate_first_retry",
            Invariant::AttemptCounting => "attempt_counting",
            Invariant::StateChangesConsistent => "state_changes_consistent",
            Invariant::OneDisconnectPerOutage => "one_disconnect_per_outage",
            Invariant::GaveUpConsistent => "gave_up_consistent",
            Invariant::PermanentGivesUp => "permanent_gives_up",
            Invariant::LivenessLostConsistent => "liveness_lost_consistent",
            Invariant::TimerContract => "timer_contract",
            Invariant::StatsConsistent => "stats_consistent",
            Invariant::EndpointRounds => "endpoint_rounds",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A broken invariant, with the step and input that broke it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invariant `{invariant}` violated at step {step} (input {input:?}): {detail}")]
pub struct Violation {
    /// Which invariant.
    pub invariant: Invariant,
    /// The 1-based number of the observed step.
    pub step: u64,
    /// The input of that step.
    pub input: Input,
    /// What exactly went wrong.
    pub detail: String,
}

/// Half a timeout in whole milliseconds, as the watchdog counts it.
fn half_ms(timeout: Duration) -> Duration {
    Duration::from_millis(u64::try_from(timeout.as_millis() / 2).unwrap_or(u64::MAX))
}

/// Most outputs one step may produce before [`Checker::drive`] declares that
/// `poll` never drains (a real step emits at most about six).
pub const MAX_OUTPUTS_PER_STEP: usize = 64;

/// Watches a machine step by step and checks every [`Invariant`].
/// See the module docs (`redial::unstable::invariants`) for the contract.
#[derive(Debug, Clone)]
pub struct Checker {
    config: Config,
    step: u64,
    clock: Option<Instant>,
    /// The state after the last observed step.
    state: State,
    kind: StateKind,
    /// The machine's generation as the outputs imply it.
    generation: Generation,
    open_link: Option<Generation>,
    last_open: Option<Generation>,
    /// The attempt number the next attempt (`Open` or `BackingOff`) must carry.
    next_attempt: u32,
    /// Whether the outage bookkeeping below is known (false when the checker
    /// was attached in the middle of an outage, until the next fresh one).
    outage_known: bool,
    outage_started: Option<Instant>,
    permanent_failures: u32,
    up_since: Option<Instant>,
    timeout: Option<Instant>,
    stats: MachineStats,
    shut_down: bool,
    disconnects: u64,
    reconnects: u64,
    /// The endpoints of the outage's failed tries, the latest last (at most
    /// `endpoints` kept).
    failed_tries: std::collections::VecDeque<u32>,
    /// The endpoint of the last `Open` and of the last `Probe`.
    open_endpoint: u32,
    probe_endpoint: u32,
}

/// Returns a [`Violation`] from the enclosing `observe` when `cond` is false.
macro_rules! ensure {
    ($self:ident, $input:expr, $cond:expr, $inv:ident, $($fmt:tt)+) => {
        if !$cond {
            return Err($self.violation(Invariant::$inv, $input, format!($($fmt)+)));
        }
    };
}

impl Checker {
    /// A checker for `machine`, normally a fresh one. It may also be attached
    /// to a machine in the middle of a run: the outage-related checks
    /// (elapsed time, permanent failures) then wait for the next fresh outage.
    pub fn new(machine: &Machine) -> Self {
        let state = machine.state().clone();
        let kind = state.kind();
        let generation = machine.generation();
        let open_link = state.live_link();
        let first = machine.config().first_generation();
        let last_open =
            open_link.or_else(|| (generation > first).then(|| Generation(generation.0 - 1)));
        let up_since = match &state {
            State::Connected(link) | State::Blocked { link, .. } => Some(link.since),
            _ => None,
        };
        Self {
            config: machine.config().clone(),
            step: 0,
            clock: None,
            kind,
            generation,
            open_link,
            last_open,
            next_attempt: machine.attempts().saturating_add(1),
            outage_known: kind == StateKind::Idle,
            outage_started: None,
            permanent_failures: 0,
            up_since,
            timeout: machine.poll_timeout(),
            stats: machine.stats(),
            shut_down: kind.is_shutting_down(),
            disconnects: 0,
            reconnects: u64::from(kind.is_link_up()),
            failed_tries: std::collections::VecDeque::new(),
            open_endpoint: machine.endpoint(),
            probe_endpoint: machine.endpoint(),
            state,
        }
    }

    /// How many steps were observed.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Feeds `input` at `now`, drains `poll(now)`, observes the step and
    /// returns the outputs. Fails with [`Invariant::TimerContract`] when the
    /// drain yields more than [`MAX_OUTPUTS_PER_STEP`] outputs.
    pub fn drive(
        &mut self,
        machine: &mut Machine,
        now: Instant,
        input: Input,
    ) -> Result<Vec<Output>, Violation> {
        machine.handle(now, input);
        let mut outputs = Vec::new();
        while let Some(out) = machine.poll(now) {
            outputs.push(out);
            if outputs.len() > MAX_OUTPUTS_PER_STEP {
                self.step += 1;
                return Err(self.violation(
                    Invariant::TimerContract,
                    &input,
                    format!("poll(now) does not drain: {outputs:?}"),
                ));
            }
        }
        self.observe(now, &input, &outputs, machine)?;
        Ok(outputs)
    }

    fn violation(&self, invariant: Invariant, input: &Input, detail: String) -> Violation {
        Violation {
            invariant,
            step: self.step,
            input: *input,
            detail,
        }
    }

    fn fresh_outage(&mut self, now: Instant) {
        self.next_attempt = 1;
        self.outage_known = true;
        self.outage_started = Some(now);
        self.permanent_failures = 0;
        self.failed_tries.clear();
    }

    fn failed_try(&mut self, endpoint: u32) {
        if self.failed_tries.len() >= self.config.endpoints() {
            self.failed_tries.pop_front();
        }
        self.failed_tries.push_back(endpoint);
    }

    /// A new try of `endpoint` must not repeat one of the last
    /// `endpoints - 1` failed tries.
    fn check_try(&self, input: &Input, what: &str, endpoint: u32) -> Result<(), Violation> {
        let n = self.config.endpoints();
        ensure!(
            self,
            input,
            (endpoint as usize) < n,
            EndpointRounds,
            "{what} names endpoint {endpoint} of {n}"
        );
        let recent = self.failed_tries.iter().rev().take(n - 1);
        ensure!(
            self,
            input,
            !recent.clone().any(|&e| e == endpoint),
            EndpointRounds,
            "{what} tries endpoint {endpoint} again while another is untried (failed tries {:?})",
            self.failed_tries
        );
        Ok(())
    }

    /// Checks one step: `input` was handled at `now`, then `poll(now)` was
    /// drained into `outputs`, leaving `machine`.
    pub fn observe(
        &mut self,
        now: Instant,
        input: &Input,
        outputs: &[Output],
        machine: &Machine,
    ) -> Result<(), Violation> {
        self.step += 1;
        let drained_at = now;
        let now = self.clock.map_or(now, |c| c.max(now));
        self.clock = Some(now);
        let cfg = self.config.clone();

        let before_kind = self.kind;
        let before_gen = self.generation;
        let timer_due = self.timeout.is_some_and(|t| t <= now);
        let unanswered = match &self.state {
            State::BackingOff { probe, .. } => *probe,
            _ => None,
        };
        let stale = input.generation().is_some_and(|g| g != before_gen)
            || matches!(input, Input::Probed { probe, .. } if Some(*probe) != unanswered);
        let unchanged = outputs.is_empty()
            && machine.state() == &self.state
            && machine.generation() == before_gen;

        // ---- inputs that must change nothing ---------------------------
        if stale && !timer_due {
            ensure!(
                self,
                input,
                unchanged,
                StaleInputInert,
                "stale input {input:?} (current generation {before_gen}) had an effect: {outputs:?}, state {:?}",
                machine.state()
            );
        }
        if before_kind == StateKind::Closed {
            ensure!(
                self,
                input,
                unchanged,
                StickyTerminal,
                "closed machine reacted: {outputs:?}, state {:?}",
                machine.state()
            );
        }
        if before_kind == StateKind::Failed
            && !matches!(input, Input::ReconnectNow | Input::Shutdown)
        {
            ensure!(
                self,
                input,
                unchanged,
                StickyTerminal,
                "failed machine reacted: {outputs:?}, state {:?}",
                machine.state()
            );
        }
        if before_kind == StateKind::Idle
            && !matches!(input, Input::Start | Input::Shutdown | Input::Adopt { .. })
        {
            ensure!(
                self,
                input,
                unchanged,
                IdleWaitsForStart,
                "idle machine reacted: {outputs:?}, state {:?}",
                machine.state()
            );
        }
        if before_kind == StateKind::Closing
            && !timer_due
            && !matches!(input, Input::CloseCompleted)
        {
            ensure!(
                self,
                input,
                unchanged,
                ShutdownIsFinal,
                "closing machine reacted: {outputs:?}, state {:?}",
                machine.state()
            );
        }

        // ---- a probe that failed: answered unreachable, or overtaken -----
        let mut tried_in_step = false;
        let probe_failed = match *input {
            Input::Probed {
                probe,
                outcome: super::ProbeOutcome::Unreachable,
            } => Some(probe) == unanswered,
            Input::Timeout => timer_due && unanswered.is_some(),
            _ => false,
        };
        if probe_failed {
            self.failed_try(self.probe_endpoint);
            tried_in_step = true;
        }

        // ---- walk the outputs in order ---------------------------------
        let mut opens = 0u64;
        let mut probes = 0u64;
        let mut closes = 0u64;
        let mut opened: Option<(Generation, u32)> = None;
        let mut gave_up: Option<FailCause> = None;
        let mut pending_gave_up = false;
        let mut first_change: Option<StateKind> = None;
        let mut changes = 0usize;
        let mut disconnects_here = 0u32;
        let mut reconnects_here = 0u32;
        let mut loss_transition = false;
        // A loss of a stable link in this step: (its reason, the state it led to).
        let mut stable_loss: Option<(Reason, StateKind)> = None;

        for (i, out) in outputs.iter().enumerate() {
            ensure!(
                self,
                input,
                !pending_gave_up || matches!(out, Output::GaveUp { .. }),
                GaveUpConsistent,
                "transition into failed not followed by GaveUp but by {out:?}"
            );
            match *out {
                Output::Open {
                    generation,
                    attempt,
                    endpoint,
                } => {
                    self.check_try(input, &format!("Open({generation})"), endpoint)?;
                    self.open_endpoint = endpoint;
                    ensure!(
                        self,
                        input,
                        self.open_link.is_none(),
                        SingleLink,
                        "Open({generation}) while link {:?} is still open",
                        self.open_link
                    );
                    ensure!(
                        self,
                        input,
                        self.last_open.is_none_or(|last| generation > last),
                        GenerationsIncrease,
                        "Open({generation}) after Open({:?})",
                        self.last_open
                    );
                    ensure!(
                        self,
                        input,
                        generation == self.generation,
                        GenerationsIncrease,
                        "Open({generation}) but the current generation is {}",
                        self.generation
                    );
                    ensure!(
                        self,
                        input,
                        !self.shut_down,
                        ShutdownIsFinal,
                        "Open({generation}) after a shutdown"
                    );
                    ensure!(
                        self,
                        input,
                        self.kind == StateKind::Connecting,
                        StateChangesConsistent,
                        "Open({generation}) emitted in state {} (expected connecting)",
                        self.kind
                    );
                    ensure!(
                        self,
                        input,
                        attempt == self.next_attempt,
                        AttemptCounting,
                        "Open({generation}) is attempt {attempt}, expected {}",
                        self.next_attempt
                    );
                    ensure!(
                        self,
                        input,
                        cfg.max_attempts().is_none_or(|max| attempt <= max),
                        AttemptCounting,
                        "attempt {attempt} exceeds max_attempts {:?}",
                        cfg.max_attempts()
                    );
                    self.open_link = Some(generation);
                    self.last_open = Some(generation);
                    self.next_attempt = attempt.saturating_add(1);
                    opened = Some((generation, attempt));
                    opens += 1;
                }
                Output::Probe { probe, endpoint } => {
                    self.check_try(input, &format!("Probe({probe})"), endpoint)?;
                    self.probe_endpoint = endpoint;
                    probes += 1;
                    ensure!(
                        self,
                        input,
                        probe == self.stats.probes.saturating_add(probes),
                        StatsConsistent,
                        "Probe({probe}) after {} probes",
                        self.stats.probes.saturating_add(probes - 1)
                    );
                    ensure!(
                        self,
                        input,
                        self.kind == StateKind::BackingOff && self.open_link.is_none(),
                        SingleLink,
                        "Probe({probe}) in state {} with link {:?} open",
                        self.kind,
                        self.open_link
                    );
                    ensure!(
                        self,
                        input,
                        !self.shut_down,
                        ShutdownIsFinal,
                        "Probe({probe}) after a shutdown"
                    );
                }
                Output::Close { generation, reason } => {
                    ensure!(
                        self,
                        input,
                        self.open_link == Some(generation),
                        OpenCloseAlternate,
                        "Close({generation}) but the open link is {:?}",
                        self.open_link
                    );
                    // The user's requests, and only they, close for the user.
                    let asked = match input {
                        Input::Shutdown => Some(Reason::Shutdown),
                        Input::ReconnectNow => Some(Reason::ReconnectRequested),
                        _ => None,
                    };
                    let by_user_reason =
                        matches!(reason, Reason::Shutdown | Reason::ReconnectRequested);
                    ensure!(
                        self,
                        input,
                        asked.map_or(!by_user_reason, |r| r == reason),
                        OpenCloseAlternate,
                        "Close({generation}) with reason {reason:?} for input {input:?}"
                    );
                    // A failed try: an attempt that ended without a link, or
                    // a link lost before the stable period (not by the user).
                    let early = self.up_since.is_some_and(|since| {
                        now.saturating_duration_since(since) < cfg.stable_period()
                    });
                    let by_user = matches!(input, Input::Shutdown | Input::ReconnectNow);
                    let failed = match self.kind {
                        StateKind::Connecting => true,
                        StateKind::Connected | StateKind::Blocked => early,
                        _ => false,
                    };
                    if failed && !by_user && self.outage_known {
                        self.failed_try(self.open_endpoint);
                        tried_in_step = true;
                    }
                    self.open_link = None;
                    self.generation = generation.next();
                    closes += 1;
                }
                Output::StateChanged {
                    from,
                    to,
                    generation,
                    reason,
                    detail,
                } => {
                    let own = matches!(reason, Reason::AttemptFailed | Reason::LinkLost);
                    ensure!(
                        self,
                        input,
                        detail == if own { input.detail() } else { None },
                        StateChangesConsistent,
                        "StateChanged ({reason:?}) carries detail {detail:?} for input {input:?}"
                    );
                    ensure!(
                        self,
                        input,
                        from == self.kind,
                        StateChangesConsistent,
                        "StateChanged from {from} but the state was {}",
                        self.kind
                    );
                    ensure!(
                        self,
                        input,
                        table::allows(from, reason, to),
                        StateChangesConsistent,
                        "edge {from} -> {to} ({reason:?}) is not in the table"
                    );
                    ensure!(
                        self,
                        input,
                        generation == self.generation,
                        StateChangesConsistent,
                        "StateChanged {from} -> {to} carries generation {generation}, current is {}",
                        self.generation
                    );
                    if self.shut_down {
                        ensure!(
                            self,
                            input,
                            from == StateKind::Closing && to == StateKind::Closed,
                            ShutdownIsFinal,
                            "{from} -> {to} ({reason:?}) after a shutdown"
                        );
                    }
                    changes += 1;
                    first_change.get_or_insert(from);
                    if matches!(
                        from,
                        StateKind::Connecting | StateKind::Connected | StateKind::Blocked
                    ) && matches!(
                        reason,
                        Reason::AttemptFailed
                            | Reason::ConnectTimeout
                            | Reason::LinkLost
                            | Reason::LivenessLost
                            | Reason::BlockedTooLong
                            | Reason::GaveUp
                    ) {
                        loss_transition = true;
                    }
                    if from.is_link_up() && !to.is_link_up() {
                        disconnects_here += 1;
                        self.disconnects += 1;
                        ensure!(
                            self,
                            input,
                            self.disconnects == self.reconnects,
                            OneDisconnectPerOutage,
                            "{} disconnects after {} reconnects",
                            self.disconnects,
                            self.reconnects
                        );
                        let lost = matches!(
                            reason,
                            Reason::LinkLost
                                | Reason::LivenessLost
                                | Reason::BlockedTooLong
                                | Reason::GaveUp
                        );
                        let stable = self.up_since.is_some_and(|since| {
                            now.saturating_duration_since(since) >= cfg.stable_period()
                        });
                        if reason == Reason::ReconnectRequested {
                            self.fresh_outage(now);
                        } else if lost && stable {
                            self.fresh_outage(now);
                            stable_loss = Some((reason, to));
                        }
                        self.up_since = None;
                    }
                    if !from.is_link_up() && to.is_link_up() {
                        reconnects_here += 1;
                        self.reconnects += 1;
                        ensure!(
                            self,
                            input,
                            self.reconnects == self.disconnects + 1,
                            OneDisconnectPerOutage,
                            "{} reconnects after {} disconnects",
                            self.reconnects,
                            self.disconnects
                        );
                        self.up_since = Some(now);
                    }
                    if reason == Reason::Start
                        || reason == Reason::Adopted
                        || (reason == Reason::ReconnectRequested && from == StateKind::Failed)
                    {
                        self.fresh_outage(now);
                    }
                    if reason == Reason::Adopted {
                        // The application's link: open without an `Open`.
                        ensure!(
                            self,
                            input,
                            self.open_link.is_none()
                                && matches!(input, Input::Adopt { generation: g } if *g == generation),
                            SingleLink,
                            "adopted link {generation} while {:?} is open, for input {input:?}",
                            self.open_link
                        );
                        self.open_link = Some(generation);
                        self.last_open = Some(generation);
                        opened = Some((generation, 0));
                    }
                    if reason == Reason::LinkResumed {
                        // The transport's own reconnect is the attempt the
                        // wait was for: it counts.
                        self.next_attempt = self.next_attempt.saturating_add(1);
                    }
                    if to == StateKind::Failed {
                        pending_gave_up = true;
                    }
                    if to.is_shutting_down() {
                        self.shut_down = true;
                    }
                    self.kind = to;
                }
                Output::GaveUp {
                    cause,
                    attempts,
                    detail,
                } => {
                    ensure!(
                        self,
                        input,
                        pending_gave_up,
                        GaveUpConsistent,
                        "GaveUp({cause}) without a transition into failed"
                    );
                    ensure!(
                        self,
                        input,
                        detail == input.detail()
                            && (!self.outage_known || attempts == self.next_attempt - 1),
                        GaveUpConsistent,
                        "GaveUp({cause}) with attempts {attempts} and detail {detail:?}, expected {} and {:?}",
                        self.next_attempt - 1,
                        input.detail()
                    );
                    pending_gave_up = false;
                    gave_up = Some(cause);
                    match cause {
                        FailCause::RetriesExhausted => ensure!(
                            self,
                            input,
                            cfg.max_attempts() == Some(self.next_attempt - 1),
                            GaveUpConsistent,
                            "retries exhausted after {} attempts with max_attempts {:?}",
                            self.next_attempt - 1,
                            cfg.max_attempts()
                        ),
                        FailCause::DeadlineExhausted => ensure!(
                            self,
                            input,
                            cfg.max_elapsed().is_some(),
                            GaveUpConsistent,
                            "deadline exhausted without max_elapsed"
                        ),
                        FailCause::Permanent => {}
                    }
                }
                Output::Restore { generation } => {
                    let resumed_without_session = matches!(
                        input,
                        Input::LinkResumed { generation: g, session_present: false } if *g == generation
                    );
                    ensure!(
                        self,
                        input,
                        resumed_without_session
                            && self.kind == StateKind::Connected
                            && self.open_link == Some(generation)
                            && i > 0
                            && matches!(
                                outputs[i - 1],
                                Output::StateChanged {
                                    reason: Reason::LinkResumed,
                                    ..
                                }
                            ),
                        StateChangesConsistent,
                        "Restore({generation}) for input {input:?}: {outputs:?}"
                    );
                }
                Output::LivenessLost { generation } => {
                    ensure!(
                        self,
                        input,
                        cfg.liveness_timeout().is_some(),
                        LivenessLostConsistent,
                        "LivenessLost({generation}) without a liveness timeout"
                    );
                    ensure!(
                        self,
                        input,
                        self.kind.is_link_up() && self.open_link == Some(generation),
                        LivenessLostConsistent,
                        "LivenessLost({generation}) in state {} with open link {:?}",
                        self.kind,
                        self.open_link
                    );
                    // Two silent checks, half a timeout apart, after the link came up.
                    let h = cfg.liveness_timeout().unwrap_or_default();
                    let up_for = self
                        .up_since
                        .map(|since| now.saturating_duration_since(since));
                    ensure!(
                        self,
                        input,
                        up_for.is_none_or(|up| up >= 2 * half_ms(h)),
                        LivenessLostConsistent,
                        "LivenessLost({generation}) after the link was up for only {up_for:?} (timeout {h:?})"
                    );
                    ensure!(
                        self,
                        input,
                        outputs.get(i + 1)
                            == Some(&Output::Close {
                                generation,
                                reason: Reason::LivenessLost
                            }),
                        LivenessLostConsistent,
                        "LivenessLost({generation}) not followed by its Close: {outputs:?}"
                    );
                }
            }
        }
        ensure!(
            self,
            input,
            !pending_gave_up,
            GaveUpConsistent,
            "transition into failed without GaveUp: {outputs:?}"
        );
        ensure!(
            self,
            input,
            disconnects_here <= 1 && reconnects_here <= 1,
            OneDisconnectPerOutage,
            "{disconnects_here} disconnects and {reconnects_here} reconnects in one step: {outputs:?}"
        );

        // ---- the outputs lead to the machine's actual state ------------
        let state = machine.state();
        ensure!(
            self,
            input,
            self.kind == machine.kind(),
            StateChangesConsistent,
            "the outputs lead to {} but the machine is {}",
            self.kind,
            machine.kind()
        );
        ensure!(
            self,
            input,
            self.generation == machine.generation(),
            GenerationsIncrease,
            "the outputs imply generation {} but the machine has {}",
            self.generation,
            machine.generation()
        );
        ensure!(
            self,
            input,
            self.open_link == state.live_link(),
            SingleLink,
            "the outputs left link {:?} open but the state's live link is {:?}",
            self.open_link,
            state.live_link()
        );
        ensure!(
            self,
            input,
            self.open_link.is_none_or(|g| g == self.generation),
            GenerationsIncrease,
            "open link {:?} is not the current generation {}",
            self.open_link,
            self.generation
        );
        match state {
            State::Connecting { attempt, .. } => ensure!(
                self,
                input,
                attempt.saturating_add(1) == self.next_attempt,
                AttemptCounting,
                "connecting as attempt {attempt}, but the last Open was attempt {}",
                self.next_attempt - 1
            ),
            State::Connected(link) | State::Blocked { link, .. } => ensure!(
                self,
                input,
                link.attempt.saturating_add(1) == self.next_attempt,
                AttemptCounting,
                "link up as attempt {}, but the outage made {} attempts",
                link.attempt,
                self.next_attempt - 1
            ),
            State::BackingOff {
                attempt,
                until,
                lingering,
                probe,
            } => {
                ensure!(
                    self,
                    input,
                    probe.is_none() || lingering.is_none(),
                    SingleLink,
                    "probe {probe:?} while link {lingering:?} lingers"
                );
                ensure!(
                    self,
                    input,
                    *attempt == self.next_attempt,
                    AttemptCounting,
                    "backing off before attempt {attempt}, expected {}",
                    self.next_attempt
                );
                ensure!(
                    self,
                    input,
                    cfg.max_attempts().is_none_or(|max| *attempt <= max),
                    AttemptCounting,
                    "backing off before attempt {attempt} beyond max_attempts {:?}",
                    cfg.max_attempts()
                );
                if changes > 0 {
                    // Entered in this step (the last change led here).
                    let wait = until.saturating_duration_since(now);
                    let cap = cfg.backoff().max();
                    match (lingering, cfg.resume_grace()) {
                        (Some(_), Some(grace)) => ensure!(
                            self,
                            input,
                            // max_elapsed may cut the grace before a first attempt.
                            (wait >= grace || cfg.max_elapsed().is_some())
                                && wait <= cap.max(grace),
                            BackoffWithinBounds,
                            "wait {wait:?} with a lingering link outside [{grace:?}, {:?}]",
                            cap.max(grace)
                        ),
                        (Some(g), None) => ensure!(
                            self,
                            input,
                            false,
                            BackoffWithinBounds,
                            "link {g} lingers without a resume grace"
                        ),
                        // A probe in flight: `until` is when the next one starts.
                        (None, _) => match (probe, cfg.probe_interval()) {
                            (Some(p), Some(interval)) => ensure!(
                                self,
                                input,
                                wait <= interval,
                                BackoffWithinBounds,
                                "probe {p}: the next probe in {wait:?}, the interval is {interval:?}"
                            ),
                            _ => ensure!(
                                self,
                                input,
                                wait <= cap,
                                BackoffWithinBounds,
                                "wait {wait:?} exceeds the cap {cap:?}"
                            ),
                        },
                    }
                    if let (true, Some(max), Some(started)) =
                        (self.outage_known, cfg.max_elapsed(), self.outage_started)
                    {
                        let planned = until.saturating_duration_since(started);
                        ensure!(
                            self,
                            input,
                            planned < max + Duration::from_millis(1),
                            BackoffWithinBounds,
                            "attempt {attempt} planned {planned:?} into the outage, max_elapsed is {max:?}"
                        );
                    }
                }
            }
            State::Idle | State::Closing { .. } | State::Closed | State::Failed { .. } => {}
        }

        // ---- losses lead to attempts; permanent failures give up -------
        let genuine_loss = !stale
            && match input {
                Input::LinkLost { .. } => matches!(
                    before_kind,
                    StateKind::Connecting | StateKind::Connected | StateKind::Blocked
                ),
                Input::AttemptFailed { .. } => before_kind == StateKind::Connecting,
                _ => false,
            };
        if genuine_loss {
            ensure!(
                self,
                input,
                first_change == Some(before_kind),
                LossLeadsToAttempt,
                "a loss of the current link in {before_kind} was ignored: {outputs:?}"
            );
        }
        if genuine_loss || loss_transition {
            ensure!(
                self,
                input,
                opened.is_some() || machine.kind() == StateKind::BackingOff || gave_up.is_some(),
                LossLeadsToAttempt,
                "a loss led to neither an attempt nor a backoff nor giving up: {outputs:?}, state {:?}",
                machine.state()
            );
        }
        let permanent = genuine_loss
            && matches!(
                input,
                Input::LinkLost {
                    kind: ErrorKind::Permanent,
                    ..
                } | Input::AttemptFailed {
                    kind: ErrorKind::Permanent,
                    ..
                }
            );
        if permanent && self.outage_known {
            self.permanent_failures += 1;
            let n = self.permanent_failures;
            let retries = cfg.permanent_retries();
            if n > retries {
                ensure!(
                    self,
                    input,
                    gave_up == Some(FailCause::Permanent),
                    PermanentGivesUp,
                    "permanent failure #{n} with permanent_retries = {retries} did not give up: {outputs:?}"
                );
            } else {
                ensure!(
                    self,
                    input,
                    gave_up != Some(FailCause::Permanent),
                    PermanentGivesUp,
                    "gave up at permanent failure #{n} although {retries} are retried"
                );
            }
        }
        if !permanent {
            ensure!(
                self,
                input,
                gave_up != Some(FailCause::Permanent),
                PermanentGivesUp,
                "gave up as permanent without a permanent failure"
            );
        }
        if let Some((reason, to)) = stable_loss {
            let lingers = reason == Reason::LinkLost && cfg.resume_grace().is_some();
            if cfg.immediate_first_retry() && !lingers && gave_up.is_none() {
                ensure!(
                    self,
                    input,
                    to == StateKind::Connecting && opened.is_some_and(|(_, attempt)| attempt == 1),
                    ImmediateFirstRetry,
                    "a stable link was lost but attempt 1 was not opened at once: {outputs:?}"
                );
            }
        }

        // ---- a wait after a failed try only once the round is over ------
        if let State::BackingOff {
            until,
            lingering: None,
            probe: None,
            ..
        } = machine.state()
            && tried_in_step
            && self.outage_known
            && *until > now
        {
            let n = cfg.endpoints();
            let mut covered: Vec<u32> = self.failed_tries.iter().copied().collect();
            covered.sort_unstable();
            covered.dedup();
            ensure!(
                self,
                input,
                covered.len() == n,
                EndpointRounds,
                "a wait begins while an endpoint of the round is untried (failed tries {:?})",
                self.failed_tries
            );
        }

        // ---- timers ------------------------------------------------------
        let timeout = machine.poll_timeout();
        ensure!(
            self,
            input,
            timeout.is_none_or(|t| t > drained_at),
            TimerContract,
            "poll_timeout {timeout:?} is due although poll(now) was drained"
        );
        let must_have_timer = match machine.kind() {
            StateKind::Connecting => Some(cfg.connect_timeout().is_some()),
            StateKind::BackingOff | StateKind::Closing => Some(true),
            StateKind::Idle | StateKind::Closed | StateKind::Failed => Some(false),
            StateKind::Connected => Some(cfg.liveness_timeout().is_some()),
            StateKind::Blocked => None,
        };
        ensure!(
            self,
            input,
            must_have_timer.is_none_or(|m| m == timeout.is_some()),
            TimerContract,
            "state {} has timer {timeout:?}",
            machine.kind()
        );

        // ---- counters ------------------------------------------------------
        let stats = machine.stats();
        ensure!(
            self,
            input,
            stats.opens.wrapping_sub(self.stats.opens) == opens
                && stats.closes.wrapping_sub(self.stats.closes) == closes
                && stats.probes.wrapping_sub(self.stats.probes) == probes
                && stats.stale_inputs.wrapping_sub(self.stats.stale_inputs) == u64::from(stale),
            StatsConsistent,
            "stats {stats:?} after {:?}: {opens} opens, {closes} closes, {probes} probes, stale {stale}",
            self.stats
        );

        self.stats = stats;
        self.timeout = timeout;
        self.state = state.clone();
        Ok(())
    }
}
