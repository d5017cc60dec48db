//! Property tests of the reconnect machine (issue 2, item 8).
//!
//! A small reference model (phase, generation, attempt, now; firezone's
//! layout, see STYLE.md section 5) runs beside the real [`Machine`] over
//! random sequences of inputs: stale and future generations, duplicate
//! reports, shutdown at any point, `ReconnectNow`, blocked/unblocked,
//! activity, and random time jumps, including jumps onto the exact timer
//! deadline (`poll_timeout()`) and one millisecond either side of it, under
//! random valid configurations. After every step the model's predictions
//! (state, generation, attempt counter, next timer, and the exact
//! `Open`/`Close`/`GaveUp`/`LivenessLost` actions) must match, and the
//! invariant checker (`redial::unstable::invariants`) must pass.
//!
//! The model draws its jitter from the crate's own `BackoffState` (seeded
//! like the machine): the backoff formulas are checked on their own by the
//! plain tests at the end of this file, the model checks *when* the machine
//! draws, resets and combines delays.
//!
//! `PROPTEST_CASES` overrides the number of cases (default 1,000).

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use redial::backoff::{Backoff, BackoffState, Jitter};
use redial::machine::{
    Config, ConfigBuilder, ErrorKind, FailCause, Generation, Input, Machine, Output, ProbeOutcome,
    Reason, RetryBudget, State, StateKind,
};
use redial::unstable::invariants::Checker;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

// ---- configurations -----------------------------------------------------

/// A valid configuration in plain numbers (milliseconds).
#[derive(Debug, Clone)]
struct Params {
    initial_ms: u64,
    multiplier: f64,
    max_ms: u64,
    jitter: Jitter,
    immediate_first_retry: bool,
    /// The retry budget: burst, refill in ms.
    budget: Option<(u32, u64)>,
    max_attempts: Option<u32>,
    max_elapsed_ms: Option<u64>,
    stable_ms: u64,
    /// `None`: no connect timeout.
    connect_ms: Option<u64>,
    liveness_ms: Option<u64>,
    blocked_ms: Option<u64>,
    close_ms: u64,
    grace_ms: Option<u64>,
    permanent_retries: u32,
    probe_ms: Option<u64>,
    endpoints: u32,
    first_generation: u64,
    seed: u64,
}

impl Params {
    fn config(&self) -> Config {
        let backoff = Backoff::builder()
            .initial(ms(self.initial_ms))
            .multiplier(self.multiplier)
            .max(ms(self.max_ms))
            .jitter(self.jitter)
            .build()
            .expect("generated policies are valid");
        let builder = match self.connect_ms {
            Some(t) => Config::builder().connect_timeout(ms(t)),
            None => Config::builder().no_connect_timeout(),
        };
        builder
            .backoff(backoff)
            .immediate_first_retry(self.immediate_first_retry)
            .opt(
                self.budget.map(|(burst, refill_ms)| RetryBudget {
                    burst,
                    refill: ms(refill_ms),
                }),
                ConfigBuilder::retry_budget,
                ConfigBuilder::no_retry_budget,
            )
            .opt(
                self.max_attempts,
                ConfigBuilder::max_attempts,
                ConfigBuilder::no_max_attempts,
            )
            .opt(
                self.max_elapsed_ms.map(ms),
                ConfigBuilder::max_elapsed,
                ConfigBuilder::no_max_elapsed,
            )
            .stable_period(ms(self.stable_ms))
            .first_generation(Generation(self.first_generation))
            .opt(
                self.liveness_ms.map(ms),
                ConfigBuilder::liveness_timeout,
                ConfigBuilder::no_liveness_timeout,
            )
            .opt(
                self.blocked_ms.map(ms),
                ConfigBuilder::blocked_timeout,
                ConfigBuilder::no_blocked_timeout,
            )
            .close_timeout(ms(self.close_ms))
            .opt(
                self.grace_ms.map(ms),
                ConfigBuilder::resume_grace,
                ConfigBuilder::no_resume_grace,
            )
            .permanent_retries(self.permanent_retries)
            .opt(
                self.probe_ms.map(ms),
                ConfigBuilder::probe_interval,
                ConfigBuilder::no_probe_interval,
            )
            .endpoints(self.endpoints as usize)
            .seed(self.seed)
            .build()
            .expect("generated configurations are valid")
    }
}

/// Sets an optional setting through its plain setter or its `no_*` one.
trait SetOpt: Sized {
    fn opt<T>(self, value: Option<T>, set: fn(Self, T) -> Self, unset: fn(Self) -> Self) -> Self {
        match value {
            Some(v) => set(self, v),
            None => unset(self),
        }
    }
}

impl SetOpt for ConfigBuilder {}

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        2 => Just(Jitter::None),
        1 => Just(Jitter::Full),
        1 => Just(Jitter::Equal),
        1 => Just(Jitter::Decorrelated),
        1 => (0.0..=1.0f64).prop_map(|fraction| Jitter::Proportional { fraction }),
    ]
}

fn multiplier() -> impl Strategy<Value = f64> {
    prop_oneof![Just(1.0), Just(1.6), Just(2.0), 1.0..4.0f64]
}

fn policy() -> impl Strategy<Value = (u64, f64, u64, Jitter)> {
    (1..=2_000u64, multiplier(), 1..=64u64, jitter())
        .prop_map(|(initial, m, factor, j)| (initial, m, initial * factor, j))
}

prop_compose! {
    fn params()(
        (initial_ms, multiplier, max_ms, jitter) in policy(),
        immediate_first_retry in any::<bool>(),
        budget in prop::option::weighted(0.7, (1..=4u32, 1..=5_000u64)),
        max_attempts in prop::option::weighted(0.4, 1..=8u32),
        max_elapsed in prop::option::weighted(0.3, (any::<bool>(), 1..=120_000u64, 1..=3u64)),
        stable_ms in 1..=20_000u64,
        connect_ms in prop::option::weighted(0.9, 1..=20_000u64),
        liveness_ms in prop::option::weighted(0.6, 2..=20_000u64),
        blocked in prop::option::weighted(0.4, 0..=40_000u64),
        close_ms in 1..=10_000u64,
        grace_ms in prop::option::weighted(0.4, 1..=10_000u64),
        permanent_retries in prop_oneof![3 => Just(0u32), 1 => 1..=3u32],
        probe_ms in prop::option::weighted(0.4, 1..=3_000u64),
        endpoints in prop_oneof![2 => Just(1u32), 2 => 2..=4u32],
        first_generation in prop_oneof![3 => Just(1u64), 1 => 2..=(1u64 << 52)],
        seed in any::<u64>(),
    ) -> Params {
        // The blocked timeout must be at least twice the liveness timeout.
        // Multiples of the first delay hit the max_elapsed boundary exactly
        // when the delays do not grow and are not jittered.
        let max_elapsed_ms = max_elapsed.map(|(multiple, ms, k)| if multiple { k * initial_ms } else { ms });
        let blocked_ms = blocked.map(|b| liveness_ms.map_or(b.max(1), |h| 2 * h + b));
        Params {
            initial_ms, multiplier, max_ms, jitter, immediate_first_retry, budget, max_attempts,
            max_elapsed_ms, stable_ms, connect_ms, liveness_ms, blocked_ms, close_ms,
            grace_ms, permanent_retries, probe_ms, endpoints, first_generation, seed,
        }
    }
}

// ---- the reference model ------------------------------------------------

/// The spec's SHUFFLE (docs/spec.md, 12.1), written from the spec.
fn shuffle(n: u32, seed: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n).collect();
    let mut rng = redial::unstable::SplitMix64::new(seed ^ 0x656E_6470_6F69_6E74);
    for i in (1..n as usize).rev() {
        let j = rng.uniform_inclusive(0, i as u64) as usize;
        order.swap(i, j);
    }
    order
}

/// Which generation an input names, relative to the current one when applied
/// (so that shrinking, which deletes steps, keeps the intent).
#[derive(Debug, Clone, Copy)]
enum GenRef {
    Current,
    Older(u64),
    Newer(u64),
}

impl GenRef {
    fn resolve(self, current: u64) -> Generation {
        Generation(match self {
            GenRef::Current => current,
            GenRef::Older(k) => current.saturating_sub(k),
            GenRef::Newer(k) => current + k,
        })
    }
}

/// One step of a test case.
#[derive(Debug, Clone)]
enum Step {
    Start,
    /// The application hands over its own first link.
    Adopt(GenRef),
    Succeeded(GenRef),
    Failed(GenRef, ErrorKind, Option<u32>),
    Lost(GenRef, ErrorKind, Option<u32>),
    /// With the session kept (true) or not.
    Resumed(GenRef, bool),
    Activity(GenRef),
    Blocked(GenRef),
    Unblocked(GenRef),
    /// The answer to the latest probe sent, or (`back` > 0) an older one.
    Probed {
        back: u64,
        outcome: ProbeOutcome,
    },
    ReconnectNow,
    Shutdown,
    CloseCompleted,
    /// `Timeout` at the current instant (usually spurious).
    Timeout,
    /// Time passes, then `Timeout`.
    Tick {
        ms: u64,
    },
    /// Jump to the next timer deadline plus `offset` ms (-1, 0, 1), then `Timeout`.
    ToDeadline {
        offset: i8,
    },
    /// While a link is up, jump to the end of its stable period plus
    /// `offset` ms (-1, 0, 1), then `Timeout`: probes that boundary.
    ToStable {
        offset: i8,
    },
}

/// The liveness watchdog: checked every half timeout, dead after two silent checks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Live {
    next: u64,
    missed: u8,
    seen: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Idle,
    Connecting {
        attempt: u32,
        deadline: Option<u64>,
    },
    /// Connected; `blocked` is `Some(deadline)` while flow-blocked.
    Up {
        attempt: u32,
        since: u64,
        live: Option<Live>,
        blocked: Option<Option<u64>>,
    },
    BackingOff {
        attempt: u32,
        until: u64,
        lingering: bool,
        /// The unanswered probe.
        probe: Option<u64>,
    },
    Closing {
        deadline: u64,
    },
    Closed,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outage {
    started: u64,
    attempts: u32,
    permanent: u32,
}

/// The outputs, without the generation `StateChanged` carries (the
/// invariant checker verifies that one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// From, to, reason, detail.
    Changed(StateKind, StateKind, Reason, Option<u32>),
    /// Generation, attempt, endpoint.
    Open(u64, u32, u32),
    Close(u64, Reason),
    Restore(u64),
    /// Cause, attempts, detail.
    GaveUp(FailCause, u32, Option<u32>),
    LivenessLost(u64),
    /// Probe number, endpoint.
    Probe(u64, u32),
}

#[derive(Debug, Clone)]
struct Model {
    p: Params,
    config: Config,
    now: u64,
    phase: Phase,
    generation: u64,
    outage: Option<Outage>,
    backoff: BackoffState,
    /// Immediate retries left and since when the next is earned (`None`:
    /// never spent, full).
    tokens: Option<(u32, u64)>,
    /// Probes sent so far (the last one's number).
    probes: u64,
    /// A probe answered `Unsupported`: no more probes.
    unsupported: bool,
    /// The endpoints in try order, the position of the current one, and
    /// how many of the round are untried (docs/spec.md, 12.1).
    order: Vec<u32>,
    cursor: usize,
    untried: u32,
    /// The detail of the input being handled.
    detail: Option<u32>,
    /// The actions predicted for the last step.
    acts: Vec<Act>,
}

impl Model {
    fn new(p: Params) -> Self {
        let config = p.config();
        let backoff = BackoffState::new(config.backoff(), p.seed);
        let order = shuffle(p.endpoints, p.seed);
        let untried = p.endpoints;
        Self {
            detail: None,
            generation: config.first_generation().0,
            p,
            config,
            now: 0,
            phase: Phase::Idle,
            outage: None,
            backoff,
            tokens: None,
            probes: 0,
            unsupported: false,
            order,
            cursor: 0,
            untried,
            acts: Vec::new(),
        }
    }

    fn endpoint(&self) -> u32 {
        self.order[self.cursor]
    }

    /// A failed try: next endpoint; true while the round has one untried.
    fn advance(&mut self) -> bool {
        self.cursor = (self.cursor + 1) % self.order.len();
        self.untried -= 1;
        if self.untried == 0 {
            self.untried = self.p.endpoints;
            return false;
        }
        true
    }

    fn kind(&self) -> StateKind {
        kind_of(&self.phase)
    }

    fn attempts(&self) -> u32 {
        self.outage.map_or(0, |o| o.attempts)
    }

    /// The next timer, in ms since the start.
    fn deadline(&self) -> Option<u64> {
        match self.phase {
            Phase::Connecting { deadline, .. } => deadline,
            Phase::Closing { deadline } => Some(deadline),
            Phase::BackingOff { until, .. } => Some(until),
            Phase::Up { live, blocked, .. } => match (live.map(|l| l.next), blocked.flatten()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            Phase::Idle | Phase::Closed | Phase::Failed => None,
        }
    }

    /// One step: the input, then every timer that is due (the drain of `poll`).
    fn step(&mut self, step: &Step) {
        self.acts.clear();
        let current = self.generation;
        let g = |r: &GenRef| r.resolve(current);
        let jump = |now: u64, mark: u64, offset: i8| {
            now.max(mark.saturating_add_signed(i64::from(offset)))
        };
        let input = match step {
            Step::Start => Input::Start,
            Step::Adopt(r) => Input::Adopt { generation: g(r) },
            Step::Succeeded(r) => Input::AttemptSucceeded { generation: g(r) },
            Step::Failed(r, kind, detail) => Input::AttemptFailed {
                generation: g(r),
                kind: *kind,
                detail: *detail,
            },
            Step::Lost(r, kind, detail) => Input::LinkLost {
                generation: g(r),
                kind: *kind,
                detail: *detail,
            },
            Step::Resumed(r, session_present) => Input::LinkResumed {
                generation: g(r),
                session_present: *session_present,
            },
            Step::Activity(r) => Input::Activity { generation: g(r) },
            Step::Blocked(r) => Input::Blocked { generation: g(r) },
            Step::Unblocked(r) => Input::Unblocked { generation: g(r) },
            Step::Probed { back, outcome } => Input::Probed {
                probe: self.probes.saturating_sub(*back),
                outcome: *outcome,
            },
            Step::ReconnectNow => Input::ReconnectNow,
            Step::Shutdown => Input::Shutdown,
            Step::CloseCompleted => Input::CloseCompleted,
            Step::Timeout => Input::Timeout,
            Step::Tick { ms } => {
                self.now += ms;
                Input::Timeout
            }
            Step::ToDeadline { offset } => {
                if let Some(d) = self.deadline() {
                    self.now = jump(self.now, d, *offset);
                }
                Input::Timeout
            }
            Step::ToStable { offset } => {
                if let Phase::Up { since, .. } = self.phase {
                    self.now = jump(self.now, since + self.p.stable_ms, *offset);
                }
                Input::Timeout
            }
        };
        self.handle(input);
        while self.deadline().is_some_and(|d| d <= self.now) {
            self.timeout();
        }
    }

    /// The one place the phase changes; predicts the `StateChanged`.
    fn set(&mut self, next: Phase, reason: Reason) {
        let detail = match reason {
            Reason::AttemptFailed | Reason::LinkLost => self.detail,
            _ => None,
        };
        self.acts
            .push(Act::Changed(self.kind(), kind_of(&next), reason, detail));
        self.phase = next;
    }

    fn handle(&mut self, input: Input) {
        if input.generation().is_some_and(|g| g.0 != self.generation) {
            return; // stale: nothing at all
        }
        self.detail = input.detail();
        self.dispatch(input);
        self.detail = None;
    }

    fn dispatch(&mut self, input: Input) {
        let now = self.now;
        match (input, self.phase.clone()) {
            (
                Input::Probed { probe, outcome },
                Phase::BackingOff {
                    attempt,
                    until,
                    lingering,
                    probe: Some(unanswered),
                },
            ) if probe == unanswered => match outcome {
                ProbeOutcome::Unreachable if self.advance() => self.probe_or_open(attempt),
                ProbeOutcome::Unreachable => {
                    self.phase = Phase::BackingOff {
                        attempt,
                        until,
                        lingering,
                        probe: None,
                    };
                }
                ProbeOutcome::Reachable => self.open(Reason::BackoffElapsed),
                ProbeOutcome::Unsupported => {
                    self.unsupported = true;
                    self.open(Reason::BackoffElapsed);
                }
                _ => panic!("a probe outcome the model does not know: {outcome:?}"),
            },
            (Input::Start, Phase::Idle) => {
                self.new_outage();
                self.open(Reason::Start);
            }
            (Input::Adopt { .. }, Phase::Idle) => {
                self.new_outage();
                let up = self.fresh_link(0);
                self.set(up, Reason::Adopted);
            }
            (Input::AttemptSucceeded { .. }, Phase::Connecting { attempt, .. }) => {
                let up = self.fresh_link(attempt);
                self.set(up, Reason::AttemptSucceeded);
            }
            (Input::AttemptFailed { kind, .. }, Phase::Connecting { .. }) => {
                self.attempt_failed(kind, Reason::AttemptFailed);
            }
            (Input::LinkLost { kind, .. }, Phase::Connecting { .. }) => {
                self.attempt_failed(kind, Reason::LinkLost);
            }
            (Input::LinkLost { kind, .. }, Phase::Up { since, .. }) => {
                self.link_down(since, kind, Reason::LinkLost);
            }
            (
                Input::LinkResumed {
                    session_present, ..
                },
                Phase::BackingOff {
                    lingering: true, ..
                },
            ) => {
                // The transport's own reconnect counts as an attempt.
                let outage = self.outage.as_mut().expect("an outage");
                outage.attempts += 1;
                let attempt = outage.attempts;
                let up = self.fresh_link(attempt);
                self.set(up, Reason::LinkResumed);
                if !session_present {
                    self.acts.push(Act::Restore(self.generation));
                }
            }
            (Input::Activity { .. }, Phase::Up { live: Some(_), .. }) => {
                // Only the watchdog notes it: no state change.
                if let Phase::Up {
                    live: Some(live), ..
                } = &mut self.phase
                {
                    live.seen = true;
                }
            }
            (
                Input::Blocked { .. },
                Phase::Up {
                    attempt,
                    since,
                    live,
                    blocked: None,
                },
            ) => {
                let deadline = self.p.blocked_ms.map(|b| now + b);
                let blocked = Phase::Up {
                    attempt,
                    since,
                    live,
                    blocked: Some(deadline),
                };
                self.set(blocked, Reason::Blocked);
            }
            (
                Input::Unblocked { .. },
                Phase::Up {
                    attempt,
                    since,
                    live,
                    blocked: Some(_),
                },
            ) => {
                let up = Phase::Up {
                    attempt,
                    since,
                    live,
                    blocked: None,
                };
                self.set(up, Reason::Unblocked);
            }
            (Input::ReconnectNow, Phase::Up { .. }) => {
                self.close(Reason::ReconnectRequested);
                self.new_outage();
                self.open(Reason::ReconnectRequested);
            }
            (Input::ReconnectNow, Phase::BackingOff { lingering, .. }) => {
                if lingering {
                    self.close(Reason::ReconnectRequested);
                }
                self.open(Reason::ReconnectRequested);
            }
            (Input::ReconnectNow, Phase::Failed) => {
                self.new_outage();
                self.open(Reason::ReconnectRequested);
            }
            (Input::Shutdown, Phase::Closing { .. } | Phase::Closed) => {}
            (
                Input::Shutdown,
                Phase::Connecting { .. }
                | Phase::Up { .. }
                | Phase::BackingOff {
                    lingering: true, ..
                },
            ) => {
                self.close(Reason::Shutdown);
                let closing = Phase::Closing {
                    deadline: now + self.p.close_ms,
                };
                self.set(closing, Reason::Shutdown);
            }
            (Input::Shutdown, _) => self.set(Phase::Closed, Reason::Shutdown),
            (Input::CloseCompleted, Phase::Closing { .. }) => {
                self.set(Phase::Closed, Reason::CloseCompleted);
            }
            _ => {} // ignored in this state (timers are handled by `step`)
        }
    }

    fn timeout(&mut self) {
        let now = self.now;
        match self.phase.clone() {
            Phase::Connecting { .. } => {
                self.attempt_failed(ErrorKind::Transient, Reason::ConnectTimeout);
            }
            Phase::Up {
                attempt,
                since,
                mut live,
                blocked,
            } => {
                let dead = match (&mut live, self.p.liveness_ms) {
                    (Some(l), Some(h)) => {
                        let mut dead = false;
                        while l.next <= now && !dead {
                            if l.seen {
                                l.missed = 0;
                                l.seen = false;
                            } else {
                                l.missed += 1;
                            }
                            l.next += h / 2;
                            dead = l.missed >= 2;
                        }
                        dead
                    }
                    _ => false,
                };
                if dead {
                    self.acts.push(Act::LivenessLost(self.generation));
                    self.link_down(since, ErrorKind::Transient, Reason::LivenessLost);
                } else if blocked.flatten().is_some_and(|d| d <= now) {
                    self.link_down(since, ErrorKind::Transient, Reason::BlockedTooLong);
                } else {
                    // Only the watchdog moved: no state change.
                    self.phase = Phase::Up {
                        attempt,
                        since,
                        live,
                        blocked,
                    };
                }
            }
            Phase::BackingOff {
                attempt,
                lingering,
                probe,
                ..
            } => {
                if !lingering && self.p.probe_ms.is_some() && !self.unsupported {
                    if probe.is_some() {
                        self.advance(); // unanswered: unreachable
                    }
                    return self.probe_or_open(attempt);
                }
                if lingering {
                    self.close(Reason::BackoffElapsed);
                }
                self.open(Reason::BackoffElapsed);
            }
            Phase::Closing { .. } => self.set(Phase::Closed, Reason::CloseTimeout),
            Phase::Idle | Phase::Closed | Phase::Failed => unreachable!("no timer"),
        }
    }

    fn probe_or_open(&mut self, attempt: u32) {
        let now = self.now;
        let interval = self.p.probe_ms.expect("probing");
        let started = self.outage.expect("an outage").started;
        let no_room = self
            .p
            .max_elapsed_ms
            .is_some_and(|max| now - started + interval > max);
        if no_room {
            return self.open(Reason::BackoffElapsed);
        }
        self.probes += 1;
        self.phase = Phase::BackingOff {
            attempt,
            until: now + interval,
            lingering: false,
            probe: Some(self.probes),
        };
        self.acts.push(Act::Probe(self.probes, self.endpoint()));
    }

    fn fresh_link(&self, attempt: u32) -> Phase {
        let live = self.p.liveness_ms.map(|h| Live {
            next: self.now + h / 2,
            missed: 0,
            seen: false,
        });
        Phase::Up {
            attempt,
            since: self.now,
            live,
            blocked: None,
        }
    }

    fn new_outage(&mut self) {
        self.outage = Some(Outage {
            started: self.now,
            attempts: 0,
            permanent: 0,
        });
        self.backoff.reset(self.config.backoff());
        self.untried = self.p.endpoints;
    }

    fn open(&mut self, reason: Reason) {
        let outage = self.outage.as_mut().expect("an outage");
        outage.attempts += 1;
        let attempt = outage.attempts;
        let deadline = self.p.connect_ms.map(|t| self.now + t);
        self.set(Phase::Connecting { attempt, deadline }, reason);
        self.acts
            .push(Act::Open(self.generation, attempt, self.endpoint()));
    }

    fn close(&mut self, reason: Reason) {
        self.acts.push(Act::Close(self.generation, reason));
        self.generation += 1;
    }

    fn give_up(&mut self, lingering: bool, cause: FailCause, reason: Reason) {
        if lingering {
            self.close(reason);
        }
        self.set(Phase::Failed, Reason::GaveUp);
        let attempts = self.attempts();
        self.acts.push(Act::GaveUp(cause, attempts, self.detail));
    }

    /// Counts a permanent failure; true when it must end the outage.
    fn permanent_gives_up(&mut self, kind: ErrorKind) -> bool {
        if kind != ErrorKind::Permanent {
            return false;
        }
        let outage = self.outage.as_mut().expect("an outage");
        outage.permanent += 1;
        outage.permanent > self.p.permanent_retries
    }

    fn attempt_failed(&mut self, kind: ErrorKind, reason: Reason) {
        self.close(reason);
        if self.permanent_gives_up(kind) {
            self.give_up(false, FailCause::Permanent, reason);
        } else {
            let in_round = self.advance();
            self.schedule(reason, false, false, in_round);
        }
    }

    /// An up link went down. A link that stayed up for the stable period
    /// starts a fresh outage; only a link that reported its own loss may
    /// linger for a resume.
    fn link_down(&mut self, since: u64, kind: ErrorKind, reason: Reason) {
        let stable = self.now - since >= self.p.stable_ms;
        if stable {
            self.new_outage();
        }
        if self.permanent_gives_up(kind) {
            self.close(reason);
            return self.give_up(false, FailCause::Permanent, reason);
        }
        let lingering = reason == Reason::LinkLost && self.p.grace_ms.is_some();
        let mut in_round = false;
        if !lingering {
            self.close(reason);
            in_round = !stable && self.advance();
        }
        self.schedule(reason, lingering, true, in_round);
    }

    /// One immediate retry from the budget, if it has one.
    fn take_token(&mut self) -> bool {
        let Some((burst, refill)) = self.p.budget else {
            return false;
        };
        let (tokens, since) = match self.tokens {
            None => (burst, self.now),
            Some((tokens, since)) => {
                let earned = (self.now - since) / refill;
                if u64::from(tokens) + earned >= u64::from(burst) {
                    (burst, self.now)
                } else {
                    (tokens + earned as u32, since + earned * refill)
                }
            }
        };
        self.tokens = Some((tokens.saturating_sub(1), since));
        tokens > 0
    }

    fn schedule(&mut self, reason: Reason, lingering: bool, link_was_up: bool, in_round: bool) {
        let outage = self.outage.expect("an outage");
        if self
            .p
            .max_attempts
            .is_some_and(|max| outage.attempts >= max)
        {
            return self.give_up(lingering, FailCause::RetriesExhausted, reason);
        }
        let in_time = self
            .p
            .max_elapsed_ms
            .is_none_or(|max| self.now - outage.started <= max);
        if in_round && !lingering && in_time {
            if let Phase::Connecting { .. } = self.phase {
                let wait = Phase::BackingOff {
                    attempt: outage.attempts + 1,
                    until: self.now,
                    lingering: false,
                    probe: None,
                };
                self.set(wait, reason);
                return self.open(Reason::BackoffElapsed);
            }
            return self.open(reason);
        }
        let first = outage.attempts == 0 && self.p.immediate_first_retry;
        if first && !lingering {
            return self.open(reason);
        }
        let proven = self.p.immediate_first_retry
            && !lingering
            && link_was_up
            && outage.attempts > 0
            && self
                .p
                .max_elapsed_ms
                .is_none_or(|max| self.now - outage.started <= max)
            && self.take_token();
        if proven {
            return self.open(reason);
        }
        let mut wait = if first {
            0
        } else {
            self.backoff.next_delay_ms(self.config.backoff())
        };
        if lingering {
            wait = wait.max(self.p.grace_ms.unwrap_or(0));
        }
        let elapsed = self.now - outage.started;
        if let Some(max) = self.p.max_elapsed_ms
            && elapsed + wait > max
        {
            if outage.attempts > 0 {
                return self.give_up(lingering, FailCause::DeadlineExhausted, reason);
            }
            // Every outage gets at least one attempt.
            wait = max.saturating_sub(elapsed);
        }
        let attempt = outage.attempts + 1;
        let until = self.now + wait;
        self.set(
            Phase::BackingOff {
                attempt,
                until,
                lingering,
                probe: None,
            },
            reason,
        );
    }
}

fn kind_of(phase: &Phase) -> StateKind {
    match phase {
        Phase::Idle => StateKind::Idle,
        Phase::Connecting { .. } => StateKind::Connecting,
        Phase::Up { blocked: None, .. } => StateKind::Connected,
        Phase::Up {
            blocked: Some(_), ..
        } => StateKind::Blocked,
        Phase::BackingOff { .. } => StateKind::BackingOff,
        Phase::Closing { .. } => StateKind::Closing,
        Phase::Closed => StateKind::Closed,
        Phase::Failed => StateKind::Failed,
    }
}

struct ModelMachine;

fn gen_ref() -> impl Strategy<Value = GenRef> {
    prop_oneof![
        8 => Just(GenRef::Current),
        2 => (1..=3u64).prop_map(GenRef::Older),
        1 => (1..=2u64).prop_map(GenRef::Newer),
    ]
}

fn error_kind() -> impl Strategy<Value = ErrorKind> {
    prop_oneof![4 => Just(ErrorKind::Transient), 1 => Just(ErrorKind::Permanent)]
}

fn tick() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..=50u64,
        4 => 0..=3_000u64,
        2 => 0..=60_000u64,
        1 => Just(1_000_000u64),
    ]
}

impl ReferenceStateMachine for ModelMachine {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        params().prop_map(Model::new).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Step> {
        // Weights lean towards the inputs that matter in the current phase,
        // but every input stays possible everywhere.
        //        Start Succ Fail Lost Resu Acti Blck Unbl Reco Shut Clos Tout Tick Dead Stab Prob Adop
        let w = match state.phase {
            Phase::Idle => [10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 0, 1, 6],
            Phase::Connecting { .. } => [1, 10, 5, 4, 1, 1, 1, 1, 1, 1, 1, 1, 4, 4, 0, 1, 1],
            Phase::Up { .. } => [1, 2, 1, 6, 1, 4, 3, 3, 2, 1, 1, 1, 6, 5, 3, 1, 1],
            Phase::BackingOff {
                lingering, probe, ..
            } => {
                let resume = if lingering { 5 } else { 1 };
                let answer = if probe.is_some() { 8 } else { 1 };
                [1, 2, 1, 2, resume, 1, 1, 1, 2, 1, 1, 1, 3, 7, 0, answer, 1]
            }
            Phase::Closing { .. } => [1, 1, 1, 2, 1, 1, 1, 1, 2, 1, 4, 1, 2, 3, 0, 1, 1],
            Phase::Closed => [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1],
            Phase::Failed => [1, 1, 1, 2, 1, 1, 1, 1, 6, 1, 1, 1, 2, 1, 0, 1, 1],
        };
        let detail = || prop::option::weighted(0.5, 0..=3u32);
        let choices: [BoxedStrategy<Step>; 17] = [
            Just(Step::Start).boxed(),
            gen_ref().prop_map(Step::Succeeded).boxed(),
            (gen_ref(), error_kind(), detail())
                .prop_map(|(g, k, d)| Step::Failed(g, k, d))
                .boxed(),
            (gen_ref(), error_kind(), detail())
                .prop_map(|(g, k, d)| Step::Lost(g, k, d))
                .boxed(),
            (gen_ref(), prop::bool::weighted(0.7))
                .prop_map(|(g, session)| Step::Resumed(g, session))
                .boxed(),
            gen_ref().prop_map(Step::Activity).boxed(),
            gen_ref().prop_map(Step::Blocked).boxed(),
            gen_ref().prop_map(Step::Unblocked).boxed(),
            Just(Step::ReconnectNow).boxed(),
            Just(Step::Shutdown).boxed(),
            Just(Step::CloseCompleted).boxed(),
            Just(Step::Timeout).boxed(),
            tick().prop_map(|ms| Step::Tick { ms }).boxed(),
            (-1..=1i8)
                .prop_map(|offset| Step::ToDeadline { offset })
                .boxed(),
            (-1..=1i8)
                .prop_map(|offset| Step::ToStable { offset })
                .boxed(),
            (
                prop_oneof![6 => Just(0u64), 1 => 1..=2u64],
                prop_oneof![
                    4 => Just(ProbeOutcome::Unreachable),
                    3 => Just(ProbeOutcome::Reachable),
                    1 => Just(ProbeOutcome::Unsupported),
                ],
            )
                .prop_map(|(back, outcome)| Step::Probed { back, outcome })
                .boxed(),
            gen_ref().prop_map(Step::Adopt).boxed(),
        ];
        let weighted = w.into_iter().zip(choices).filter(|(w, _)| *w > 0).collect();
        prop::strategy::Union::new_weighted(weighted).boxed()
    }

    fn apply(mut state: Model, step: &Step) -> Model {
        state.step(step);
        state
    }
}

// ---- the system under test ----------------------------------------------

struct Sut {
    machine: Machine,
    checker: Checker,
    t0: Instant,
    now: Instant,
}

impl Sut {
    fn at(&self, t: Instant) -> u64 {
        u64::try_from((t - self.t0).as_millis()).expect("in range")
    }
}

struct MachineTest;

impl StateMachineTest for MachineTest {
    type SystemUnderTest = Sut;
    type Reference = ModelMachine;

    fn init_test(model: &Model) -> Sut {
        let machine = Machine::new(model.config.clone());
        let checker = Checker::new(&machine);
        let t0 = Instant::now();
        Sut {
            machine,
            checker,
            t0,
            now: t0,
        }
    }

    fn apply(mut sut: Sut, model: &Model, step: Step) -> Sut {
        let g = |r: GenRef| r.resolve(sut.machine.generation().0);
        let input = match step {
            Step::Start => Input::Start,
            Step::Adopt(r) => Input::Adopt { generation: g(r) },
            Step::Succeeded(r) => Input::AttemptSucceeded { generation: g(r) },
            Step::Failed(r, kind, detail) => Input::AttemptFailed {
                generation: g(r),
                kind,
                detail,
            },
            Step::Lost(r, kind, detail) => Input::LinkLost {
                generation: g(r),
                kind,
                detail,
            },
            Step::Resumed(r, session_present) => Input::LinkResumed {
                generation: g(r),
                session_present,
            },
            Step::Activity(r) => Input::Activity { generation: g(r) },
            Step::Blocked(r) => Input::Blocked { generation: g(r) },
            Step::Unblocked(r) => Input::Unblocked { generation: g(r) },
            Step::Probed { back, outcome } => Input::Probed {
                probe: sut.machine.stats().probes.saturating_sub(back),
                outcome,
            },
            Step::ReconnectNow => Input::ReconnectNow,
            Step::Shutdown => Input::Shutdown,
            Step::CloseCompleted => Input::CloseCompleted,
            Step::Timeout => Input::Timeout,
            Step::Tick { ms: d } => {
                sut.now += ms(d);
                Input::Timeout
            }
            Step::ToDeadline { offset } => {
                if let Some(t) = sut.machine.poll_timeout() {
                    let target = match offset {
                        -1 => t - ms(1),
                        0 => t,
                        _ => t + ms(1),
                    };
                    sut.now = sut.now.max(target);
                }
                Input::Timeout
            }
            Step::ToStable { offset } => {
                if let State::Connected(link) | State::Blocked { link, .. } = sut.machine.state() {
                    let end = link.since + sut.machine.config().stable_period();
                    let target = match offset {
                        -1 => end - ms(1),
                        0 => end,
                        _ => end + ms(1),
                    };
                    sut.now = sut.now.max(target);
                }
                Input::Timeout
            }
        };
        let outputs = match sut.checker.drive(&mut sut.machine, sut.now, input) {
            Ok(outputs) => outputs,
            Err(violation) => panic!("{violation}\nmachine: {:?}", sut.machine.state()),
        };
        let acts: Vec<Act> = outputs
            .iter()
            .map(|out| match *out {
                Output::Open {
                    generation,
                    attempt,
                    endpoint,
                    ..
                } => Act::Open(generation.0, attempt, endpoint),
                Output::Close {
                    generation, reason, ..
                } => Act::Close(generation.0, reason),
                Output::Restore { generation, .. } => Act::Restore(generation.0),
                Output::GaveUp {
                    cause,
                    attempts,
                    detail,
                    ..
                } => Act::GaveUp(cause, attempts, detail),
                Output::LivenessLost { generation, .. } => Act::LivenessLost(generation.0),
                Output::Probe {
                    probe, endpoint, ..
                } => Act::Probe(probe, endpoint),
                Output::StateChanged {
                    from,
                    to,
                    reason,
                    detail,
                    ..
                } => Act::Changed(from, to, reason, detail),
                _ => panic!("an output the model does not know: {out:?}"),
            })
            .collect();
        assert_eq!(
            acts, model.acts,
            "actions after {input:?}: machine (left) vs model (right); outputs {outputs:?}"
        );
        assert_eq!(sut.at(sut.now), model.now, "clock");
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        let m = &sut.machine;
        assert_eq!(
            m.kind(),
            model.kind(),
            "state: machine {:?}, model {:?}",
            m.state(),
            model.phase
        );
        assert_eq!(m.generation().0, model.generation, "generation");
        assert_eq!(m.attempts(), model.attempts(), "attempt counter");
        assert_eq!(
            m.poll_timeout().map(|t| sut.at(t)),
            model.deadline(),
            "next timer: machine {:?}, model {:?}",
            m.state(),
            model.phase
        );
        assert_eq!(m.is_reconnecting(), model.kind().is_reconnecting());
        assert_eq!(m.endpoint(), model.endpoint(), "endpoint");
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 20_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/machine_props.txt"
        )))),
        .. ProptestConfig::default()
    })]

    #[test]
    fn machine_matches_model(sequential 1..80 => MachineTest);
}

// ---- backoff properties -------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/backoff_props.txt"
        )))),
        .. ProptestConfig::default()
    })]

    /// Every mode stays within [0, cap] and within its own formula's bounds.
    #[test]
    fn backoff_delays_within_bounds(
        (initial_ms, multiplier, max_ms, jitter) in policy(),
        seed in any::<u64>(),
        restarts in 0..3usize,
    ) {
        let policy = Backoff::builder().initial(ms(initial_ms)).multiplier(multiplier).max(ms(max_ms)).jitter(jitter).build().unwrap();
        let mut state = BackoffState::new(&policy, seed);
        for _ in 0..=restarts {
            state.reset(&policy);
            for step in 1..=40u32 {
                let base = policy.base_ms(step);
                let d = state.next_delay_ms(&policy);
                prop_assert!(d <= max_ms, "{jitter:?} step {step}: {d} > cap {max_ms}");
                prop_assert!(base <= max_ms);
                match jitter {
                    Jitter::None => prop_assert_eq!(d, base),
                    Jitter::Full => prop_assert!(d <= base),
                    Jitter::Equal => prop_assert!(d >= base / 2 && d <= base),
                    Jitter::Decorrelated => prop_assert!(d >= initial_ms),
                    Jitter::Proportional { fraction } => {
                        let spread = (base as f64 * fraction) as u64;
                        prop_assert!(d >= base - spread.min(base), "{d} below {base} - {spread}");
                        prop_assert!(d <= base + spread);
                    }
                    _ => unreachable!("the strategy draws only the jitters above"),
                }
            }
        }
    }
}

/// The same seed draws the same delays; the machine is deterministic too.
#[test]
fn same_seed_same_delays() {
    for jitter in [
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
        Jitter::Proportional { fraction: 0.5 },
    ] {
        let policy = Backoff::builder()
            .initial(ms(100))
            .multiplier(1.7)
            .max(ms(30_000))
            .jitter(jitter)
            .build()
            .unwrap();
        let draw = |seed| {
            let mut s = BackoffState::new(&policy, seed);
            (0..50)
                .map(|_| s.next_delay_ms(&policy))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42), "{jitter:?}");
        assert_ne!(
            draw(42),
            draw(43),
            "{jitter:?}: different seeds should differ"
        );
    }

    // Two machines with the same config and inputs emit the same outputs.
    let run = |seed| {
        let config = Config::builder()
            .seed(seed)
            .immediate_first_retry(false)
            .build()
            .unwrap();
        let mut m = Machine::new(config);
        let t0 = Instant::now();
        let mut now = t0;
        let mut trace = Vec::new();
        m.handle(now, Input::Start);
        for _ in 0..10 {
            while let Some(out) = m.poll(now) {
                trace.push(format!("{:?} {out:?}", now - t0));
            }
            let g = m.generation();
            m.handle(
                now,
                Input::AttemptFailed {
                    generation: g,
                    kind: ErrorKind::Transient,
                    detail: None,
                },
            );
            while let Some(out) = m.poll(now) {
                trace.push(format!("{:?} {out:?}", now - t0));
            }
            now = m.poll_timeout().unwrap();
        }
        trace
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}

/// S23: a fleet of 1,000 clients with the default policy spreads its first
/// delays over at least 0.8 * d0, and each client's attempts count up by one.
#[test]
fn fleet_spreads_first_delays() {
    let policy = Backoff::default();
    let d0 = policy.initial().as_millis() as u64;
    let firsts: Vec<u64> = (0..1_000u64)
        .map(|seed| BackoffState::new(&policy, seed).next_delay_ms(&policy))
        .collect();
    let spread = firsts.iter().max().unwrap() - firsts.iter().min().unwrap();
    assert!(
        spread * 10 >= 8 * d0,
        "first delays spread over {spread} ms only"
    );

    // The same through the machine: 1,000 clients lose a stable link at the
    // same instant; the immediate retry fails; the first backoff-delayed
    // attempt of each lands somewhere in a window of at least 0.8 * d0.
    let t0 = Instant::now();
    let mut second_attempts = Vec::new();
    for seed in 0..1_000u64 {
        let mut m = Machine::new(Config::builder().seed(seed).build().unwrap());
        let mut checker = Checker::new(&m);
        let mut step = |m: &mut Machine, now, input| checker.drive(m, now, input).unwrap();
        step(&mut m, t0, Input::Start);
        let g = m.generation();
        step(&mut m, t0, Input::AttemptSucceeded { generation: g });
        let lost_at = t0 + ms(15_000);
        let lost = Input::LinkLost {
            generation: g,
            kind: ErrorKind::Transient,
            detail: None,
        };
        let out = step(&mut m, lost_at, lost);
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Open { generation, attempt: 1, endpoint: 0, .. } if *generation == g.next()
        )));
        let failed = Input::AttemptFailed {
            generation: g.next(),
            kind: ErrorKind::Transient,
            detail: None,
        };
        step(&mut m, lost_at, failed);
        let at = m.poll_timeout().unwrap();
        let out = step(&mut m, at, Input::Timeout);
        assert!(matches!(out.last(), Some(Output::Open { attempt: 2, .. })));
        second_attempts.push(u64::try_from((at - lost_at).as_millis()).unwrap());
    }
    let spread = second_attempts.iter().max().unwrap() - second_attempts.iter().min().unwrap();
    assert!(
        spread * 10 >= 8 * d0,
        "attempts spread over {spread} ms only"
    );
}

/// Every outage gets at least one attempt: when the resume grace (or, with
/// `immediate_first_retry` off, the first delay) is longer than
/// `max_elapsed`, the wait is cut to the budget left instead of giving up.
#[test]
fn stable_loss_gets_an_attempt_before_the_deadline() {
    let config = Config::builder()
        .seed(1)
        .resume_grace(ms(30_000))
        .max_elapsed(ms(10_000))
        .build()
        .unwrap();
    let mut m = Machine::new(config);
    let mut checker = Checker::new(&m);
    let t0 = Instant::now();
    checker.drive(&mut m, t0, Input::Start).unwrap();
    let g = m.generation();
    checker
        .drive(&mut m, t0, Input::AttemptSucceeded { generation: g })
        .unwrap();
    let lost = Input::LinkLost {
        generation: g,
        kind: ErrorKind::Transient,
        detail: None,
    };
    let out = checker.drive(&mut m, t0 + ms(60_000), lost).unwrap();
    assert_ne!(
        m.kind(),
        StateKind::Failed,
        "gave up with no attempt at all: {out:?}"
    );
}
