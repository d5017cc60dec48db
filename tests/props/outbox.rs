//! Property tests: the sans-IO outbox against a deliberately naive reference
//! model (a flat list of messages, everything recomputed by scanning).
//!
//! Random submits (all overflow policies, sizes, TTLs, publish timeouts),
//! sends, confirms and failures naming the right, an older or a newer
//! generation, out-of-order "multiple" confirms, requeues, channel closes
//! (culprit alone or suspects isolated), link losses, expiries, blocked
//! periods and confirm-deadline checks, cancels, give-ups, closes and
//! shutdowns. After every step: the same outcomes in the same
//! order, the same counters, the accounting invariant, no success without a
//! confirm of that generation, each message resolved once, and per-link
//! writes in ascending id order (submission order, replays first).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use redial::machine::{FailCause, Generation};
use redial::outbox::{
    MessageId, OutboxConfig, OverflowPolicy, PublishError, PublishErrorKind, SubmitOptions,
};
use redial::unstable::{ChannelClosed, OutboxCore, Submit};

// ---- the reference model --------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MState {
    Queued,
    InFlight(u64),
    Done,
}

#[derive(Debug, Clone)]
struct MMsg {
    size: usize,
    deadline: Option<u64>,
    timeout: Option<u64>,
    state: MState,
    sends: u32,
    suspect: bool,
    /// Unblocked time of the last write.
    written: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MGate {
    Open,
    GaveUp,
    Closed,
}

/// An outcome as the model writes it: `Ok(generation)` or the error kind.
type MOutcome = Result<u64, PublishErrorKind>;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct MCounters {
    submitted: u64,
    confirmed: u64,
    failed: BTreeMap<PublishErrorKind, u64>,
    expired: u64,
    dropped: u64,
    replayed: u64,
    requeued: u64,
    stale: u64,
    channel_closes: u64,
}

struct Model {
    max_messages: usize,
    max_bytes: usize,
    window: usize,
    policy: OverflowPolicy,
    default_ttl: Option<u64>,
    publish_timeout: Option<u64>,
    blocked_since: Option<u64>,
    blocked_total: u64,
    msgs: BTreeMap<u64, MMsg>,
    next_id: u64,
    gate: MGate,
    retired: u64,
    now: u64,
    c: MCounters,
    out: Vec<(u64, MOutcome)>,
}

impl Model {
    fn pending(&self) -> impl Iterator<Item = (&u64, &MMsg)> {
        self.msgs.iter().filter(|(_, m)| m.state != MState::Done)
    }
    fn queued_ids(&self) -> Vec<u64> {
        self.msgs
            .iter()
            .filter(|(_, m)| m.state == MState::Queued)
            .map(|(id, _)| *id)
            .collect()
    }
    fn in_flight(&self) -> usize {
        self.pending()
            .filter(|(_, m)| matches!(m.state, MState::InFlight(_)))
            .count()
    }
    fn bytes(&self) -> usize {
        self.pending().map(|(_, m)| m.size).sum()
    }
    fn fits(&self, count: usize, bytes: usize, size: usize) -> bool {
        count < self.max_messages && bytes.saturating_add(size) <= self.max_bytes
    }

    fn resolve(&mut self, id: u64, outcome: MOutcome) {
        let m = self.msgs.get_mut(&id).expect("known id");
        assert_ne!(m.state, MState::Done);
        m.state = MState::Done;
        match outcome {
            Ok(_) => self.c.confirmed += 1,
            Err(PublishErrorKind::Expired) => self.c.expired += 1,
            Err(PublishErrorKind::Dropped) => self.c.dropped += 1,
            Err(k) => *self.c.failed.entry(k).or_default() += 1,
        }
        self.out.push((id, outcome));
    }

    fn new_id(
        &mut self,
        size: usize,
        deadline: Option<u64>,
        timeout: Option<u64>,
        state: MState,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.c.submitted += 1;
        self.msgs.insert(
            id,
            MMsg {
                size,
                deadline,
                timeout,
                state,
                sends: 0,
                suspect: false,
                written: 0,
            },
        );
        id
    }

    fn refuse(&mut self, size: usize, kind: PublishErrorKind) -> u64 {
        let id = self.new_id(size, None, None, MState::Queued);
        self.resolve(id, Err(kind));
        id
    }

    /// Time to live (queued only) and publish timeout (any pending), in
    /// time order, a time to live first on a tie.
    fn expire(&mut self, now: u64) {
        self.now = self.now.max(now);
        let mut due: Vec<(u64, u8, u64)> = Vec::new();
        for (id, m) in self.pending() {
            if m.state == MState::Queued
                && let Some(d) = m.deadline.filter(|d| *d <= self.now)
            {
                due.push((d, 0, *id));
            }
            if let Some(t) = m.timeout.filter(|t| *t <= self.now) {
                due.push((t, 1, *id));
            }
        }
        due.sort();
        for (_, kind, id) in due {
            if self.msgs[&id].state == MState::Done {
                continue;
            }
            let outcome = if kind == 0 {
                PublishErrorKind::Expired
            } else {
                PublishErrorKind::Timeout
            };
            self.resolve(id, Err(outcome));
        }
    }

    fn active(&self) -> u64 {
        let blocked_now = self.blocked_since.map_or(0, |b| self.now - b);
        self.now - self.blocked_total - blocked_now
    }

    fn set_blocked(&mut self, now: u64, blocked: bool) {
        self.expire(now);
        match (self.blocked_since, blocked) {
            (None, true) => self.blocked_since = Some(self.now),
            (Some(b), false) => {
                self.blocked_total += self.now - b;
                self.blocked_since = None;
            }
            _ => {}
        }
    }

    fn confirm_overdue(&mut self, now: u64, timeout: u64) -> Option<u64> {
        self.expire(now);
        let active = self.active();
        self.pending()
            .filter_map(|(id, m)| match m.state {
                MState::InFlight(g) => Some((m.written, *id, g)),
                _ => None,
            })
            .min()
            .filter(|(w, _, _)| active - w >= timeout)
            .map(|(_, _, g)| g)
    }

    fn channel_closed(&mut self, generation: u64, id: u64) -> Option<bool> {
        let applies = self
            .msgs
            .get(&id)
            .is_some_and(|m| m.state == MState::InFlight(generation));
        if !applies {
            self.c.stale += 1;
            return None;
        }
        let on_link: Vec<u64> = self
            .pending()
            .filter(|(_, m)| m.state == MState::InFlight(generation))
            .map(|(id, _)| *id)
            .collect();
        if on_link.len() == 1 {
            self.resolve(id, Err(PublishErrorKind::Rejected));
            return Some(true);
        }
        self.c.channel_closes += 1;
        for id in on_link {
            if self.msgs[&id].state == MState::Done {
                continue;
            }
            self.msgs.get_mut(&id).unwrap().suspect = true;
            self.put_back(id);
        }
        Some(false)
    }

    /// `None`: full under `Wait` (nothing counted).
    fn submit(
        &mut self,
        now: u64,
        ttl: Option<u64>,
        size: usize,
        policy: Option<OverflowPolicy>,
        timeout: Option<u64>,
    ) -> Option<u64> {
        self.expire(now);
        let refusal = match self.gate {
            MGate::Open => None,
            MGate::GaveUp => Some(PublishErrorKind::GaveUp),
            MGate::Closed => Some(PublishErrorKind::ShutDown),
        };
        if refusal.is_none() && !self.fits(self.pending().count(), self.bytes(), size) {
            match policy.unwrap_or(self.policy) {
                OverflowPolicy::Wait { .. } if size <= self.max_bytes => return None,
                OverflowPolicy::DropOldest => {
                    // Drop the oldest queued until it fits, or nothing if it never would.
                    let mut count = self.pending().count();
                    let mut bytes = self.bytes();
                    let mut victims = Vec::new();
                    for id in self.queued_ids() {
                        if self.fits(count, bytes, size) {
                            break;
                        }
                        count -= 1;
                        bytes -= self.msgs[&id].size;
                        victims.push(id);
                    }
                    if !self.fits(count, bytes, size) {
                        return Some(self.refuse(size, PublishErrorKind::Overflow));
                    }
                    for id in victims {
                        self.resolve(id, Err(PublishErrorKind::Dropped));
                    }
                }
                _ => return Some(self.refuse(size, PublishErrorKind::Overflow)),
            }
        }
        if let Some(kind) = refusal {
            return Some(self.refuse(size, kind));
        }
        let deadline = ttl.or(self.default_ttl).map(|t| self.now + t);
        let timeout = timeout.or(self.publish_timeout).map(|t| self.now + t);
        let id = self.new_id(size, deadline, timeout, MState::Queued);
        self.expire(self.now);
        Some(id)
    }

    fn next_to_send(&mut self, now: u64, generation: u64) -> Option<u64> {
        self.expire(now);
        if generation <= self.retired || self.in_flight() >= self.window {
            return None;
        }
        let id = *self.queued_ids().first()?;
        // A suspect goes alone: nothing else in flight on its link, and
        // nothing after it until it is answered.
        let on_link: Vec<&MMsg> = self
            .pending()
            .filter(|(_, m)| m.state == MState::InFlight(generation))
            .map(|(_, m)| m)
            .collect();
        if on_link.iter().any(|m| m.suspect) || (self.msgs[&id].suspect && !on_link.is_empty()) {
            return None;
        }
        let active = self.active();
        let m = self.msgs.get_mut(&id).unwrap();
        m.written = active;
        m.state = MState::InFlight(generation);
        m.sends += 1;
        if m.sends > 1 {
            self.c.replayed += 1;
        }
        Some(id)
    }

    fn answer(&mut self, generation: u64, id: u64, outcome: Option<MOutcome>) -> bool {
        let applies = self
            .msgs
            .get(&id)
            .is_some_and(|m| m.state == MState::InFlight(generation));
        if !applies {
            self.c.stale += 1;
            return false;
        }
        match outcome {
            Some(o) => self.resolve(id, o),
            None => self.put_back(id),
        }
        true
    }

    fn put_back(&mut self, id: u64) {
        self.c.requeued += 1;
        self.msgs.get_mut(&id).unwrap().state = MState::Queued;
        let due = self.msgs[&id].deadline.is_some_and(|d| d <= self.now);
        if due {
            self.resolve(id, Err(PublishErrorKind::Expired));
        }
    }

    fn link_lost(&mut self, generation: u64) {
        self.retired = self.retired.max(generation);
        let lost: Vec<u64> = self
            .msgs
            .iter()
            .filter(|(_, m)| matches!(m.state, MState::InFlight(g) if g <= generation))
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.put_back(id);
        }
    }

    fn cancel(&mut self, id: u64) -> bool {
        if self
            .msgs
            .get(&id)
            .is_some_and(|m| m.state == MState::Queued)
        {
            self.resolve(id, Err(PublishErrorKind::Cancelled));
            true
        } else {
            false
        }
    }

    fn resolve_all(&mut self, kind: PublishErrorKind) {
        let ids: Vec<u64> = self.pending().map(|(id, _)| *id).collect();
        for id in ids {
            self.resolve(id, Err(kind));
        }
    }
}

// ---- operations -----------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Submit {
        ttl: Option<u16>,
        size: u8,
        policy: Option<u8>,
        timeout: Option<u16>,
    },
    Advance(u16),
    Send,
    SendOnRetired,
    /// `delta` 0 names the message's own generation, others a wrong one.
    Confirm {
        pick: u8,
        delta: i8,
    },
    /// Confirms every in-flight message up to the picked one, newest first
    /// (an AMQP multiple ack, expanded out of order).
    ConfirmUpTo {
        pick: u8,
    },
    Fail {
        pick: u8,
        delta: i8,
        kind: u8,
    },
    Requeue {
        pick: u8,
        delta: i8,
    },
    ChannelClosed {
        pick: u8,
        delta: i8,
    },
    SetBlocked(bool),
    ConfirmOverdue(u16),
    LinkLost,
    Expire,
    Cancel {
        pick: u8,
    },
    GiveUp,
    Resume,
    Close,
    Shutdown,
}

fn policy(p: u8) -> OverflowPolicy {
    match p % 3 {
        0 => OverflowPolicy::RejectNew,
        1 => OverflowPolicy::DropOldest,
        _ => OverflowPolicy::Wait { deadline: None },
    }
}

fn delta() -> impl Strategy<Value = i8> {
    prop_oneof![4 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (
            proptest::option::of(0u16..2000),
            0u8..20,
            proptest::option::weighted(0.2, any::<u8>()),
            proptest::option::weighted(0.2, 0u16..3000),
        )
            .prop_map(|(ttl, size, policy, timeout)| Op::Submit { ttl, size, policy, timeout }),
        4 => (0u16..1500).prop_map(Op::Advance),
        8 => Just(Op::Send),
        1 => Just(Op::SendOnRetired),
        6 => (any::<u8>(), delta()).prop_map(|(pick, delta)| Op::Confirm { pick, delta }),
        1 => any::<u8>().prop_map(|pick| Op::ConfirmUpTo { pick }),
        2 => (any::<u8>(), delta(), any::<u8>()).prop_map(|(pick, delta, kind)| Op::Fail { pick, delta, kind }),
        2 => (any::<u8>(), delta()).prop_map(|(pick, delta)| Op::Requeue { pick, delta }),
        3 => (any::<u8>(), delta()).prop_map(|(pick, delta)| Op::ChannelClosed { pick, delta }),
        1 => any::<bool>().prop_map(Op::SetBlocked),
        1 => (1u16..3000).prop_map(Op::ConfirmOverdue),
        2 => Just(Op::LinkLost),
        2 => Just(Op::Expire),
        1 => any::<u8>().prop_map(|pick| Op::Cancel { pick }),
        1 => Just(Op::GiveUp),
        1 => Just(Op::Resume),
        1 => Just(Op::Close),
        1 => Just(Op::Shutdown),
    ]
}

#[derive(Debug, Clone)]
struct Setup {
    max_messages: usize,
    max_bytes: usize,
    window: usize,
    policy: u8,
    default_ttl: Option<u16>,
    publish_timeout: Option<u16>,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1usize..8,
        prop_oneof![Just(1_000_000usize), 1usize..60],
        1usize..5,
        any::<u8>(),
        proptest::option::weighted(0.2, 0u16..3000),
        proptest::option::weighted(0.3, 1u16..5000),
    )
        .prop_map(
            |(max_messages, max_bytes, window, policy, default_ttl, publish_timeout)| Setup {
                max_messages,
                max_bytes,
                window,
                policy,
                default_ttl,
                publish_timeout,
            },
        )
}

// ---- the harness ----------------------------------------------------------

fn kind_of(e: &PublishError) -> PublishErrorKind {
    e.kind()
}

fn fail_error(k: u8) -> PublishError {
    match k % 3 {
        0 => PublishError::Nacked,
        1 => PublishError::Unroutable,
        _ => PublishError::Rejected("no".into()),
    }
}

fn run(setup: Setup, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let config = OutboxConfig::builder()
        .max_messages(setup.max_messages)
        .max_bytes(setup.max_bytes)
        .max_in_flight(setup.window)
        .overflow(policy(setup.policy));
    let config = match setup.default_ttl {
        Some(t) => config.default_ttl(Duration::from_millis(t.into())),
        None => config.no_default_ttl(),
    };
    let config = match setup.publish_timeout {
        Some(t) => config.publish_timeout(Duration::from_millis(t.into())),
        None => config.no_publish_timeout(),
    }
    .build()
    .unwrap();
    let mut core: OutboxCore<u64> = OutboxCore::new(config);
    let mut model = Model {
        max_messages: setup.max_messages,
        max_bytes: setup.max_bytes,
        window: setup.window,
        policy: policy(setup.policy),
        default_ttl: setup.default_ttl.map(u64::from),
        publish_timeout: setup.publish_timeout.map(u64::from),
        blocked_since: None,
        blocked_total: 0,
        msgs: BTreeMap::new(),
        next_id: 1,
        gate: MGate::Open,
        retired: 0,
        now: 0,
        c: MCounters::default(),
        out: Vec::new(),
    };
    let t0 = Instant::now();
    let mut now = 0u64;
    let mut generation = 1u64;
    // Confirms the harness sent that the core accepted: (generation, id).
    let mut confirms_sent: HashSet<(u64, u64)> = HashSet::new();
    let mut resolved_once: HashSet<u64> = HashSet::new();
    let mut last_sent_on: HashMap<u64, u64> = HashMap::new();
    let at = |ms: u64| t0 + Duration::from_millis(ms);

    for (step, op) in ops.into_iter().enumerate() {
        let in_flight: Vec<(u64, u64)> = model
            .msgs
            .iter()
            .filter_map(|(id, m)| match m.state {
                MState::InFlight(g) => Some((*id, g)),
                _ => None,
            })
            .collect();
        let pick = |p: u8| -> Option<(u64, u64)> {
            (!in_flight.is_empty()).then(|| in_flight[p as usize % in_flight.len()])
        };
        let shift = |g: u64, d: i8| g.saturating_add_signed(d.into()).max(1);
        match op.clone() {
            Op::Submit {
                ttl,
                size,
                policy: p,
                timeout,
            } => {
                let ttl = ttl.map(u64::from);
                let timeout = timeout.map(u64::from);
                let size = usize::from(size);
                let p = p.map(policy);
                let mut options = SubmitOptions::new().size_bytes(size);
                if let Some(t) = ttl {
                    options = options.ttl(Duration::from_millis(t));
                }
                if let Some(p) = p {
                    options = options.overflow(p);
                }
                if let Some(t) = timeout {
                    options = options.publish_timeout(Duration::from_millis(t));
                }
                let message = model.next_id;
                let expected = model.submit(now, ttl, size, p, timeout);
                let got = core.submit(at(now), message, options);
                match (expected, got) {
                    (None, Submit::Full(_)) => {}
                    (Some(id), Submit::Queued(got)) | (Some(id), Submit::Resolved(got)) => {
                        prop_assert_eq!(got, MessageId(id));
                        let done = model.msgs[&id].state == MState::Done;
                        let pending =
                            core.is_queued(got) || core.in_flight_generation(got).is_some();
                        prop_assert_eq!(done, !pending);
                    }
                    (e, g) => prop_assert!(false, "step {step}: submit expected {e:?}, got {g:?}"),
                }
            }
            Op::Advance(ms) => now += u64::from(ms),
            Op::Send => {
                let expected = model.next_to_send(now, generation);
                let got = core
                    .next_to_send(at(now), generation_of(generation))
                    .map(|(id, _)| id.0);
                prop_assert_eq!(got, expected, "step {}: next_to_send", step);
                if let Some(id) = got {
                    let prev = last_sent_on.insert(generation, id).unwrap_or(0);
                    prop_assert!(id > prev, "link {generation}: id {id} written after {prev}");
                }
            }
            Op::SendOnRetired => {
                let g = model.retired.max(1);
                let expected = model.next_to_send(now, g);
                let got = core
                    .next_to_send(at(now), generation_of(g))
                    .map(|(id, _)| id.0);
                prop_assert_eq!(got, expected);
                if g <= model.retired {
                    prop_assert!(got.is_none(), "a retired link gets nothing");
                }
            }
            Op::Confirm { pick: p, delta } => {
                let (id, g) = pick(p).unwrap_or((u64::from(p), generation));
                let g = shift(g, delta);
                let expected = model.answer(g, id, Some(Ok(g)));
                let got = core.confirmed(generation_of(g), MessageId(id));
                prop_assert_eq!(got, expected);
                if got {
                    confirms_sent.insert((g, id));
                }
            }
            Op::ConfirmUpTo { pick: p } => {
                if let Some((top, _)) = pick(p) {
                    for &(id, g) in in_flight.iter().rev().filter(|(id, _)| *id <= top) {
                        let expected = model.answer(g, id, Some(Ok(g)));
                        let got = core.confirmed(generation_of(g), MessageId(id));
                        prop_assert_eq!(got, expected);
                        if got {
                            confirms_sent.insert((g, id));
                        }
                    }
                }
            }
            Op::Fail {
                pick: p,
                delta,
                kind,
            } => {
                let (id, g) = pick(p).unwrap_or((u64::from(p), generation));
                let g = shift(g, delta);
                let error = fail_error(kind);
                let expected = model.answer(g, id, Some(Err(kind_of(&error))));
                prop_assert_eq!(
                    core.failed(generation_of(g), MessageId(id), error),
                    expected
                );
            }
            Op::Requeue { pick: p, delta } => {
                let (id, g) = pick(p).unwrap_or((u64::from(p), generation));
                let g = shift(g, delta);
                let expected = model.answer(g, id, None);
                prop_assert_eq!(core.requeue(generation_of(g), MessageId(id)), expected);
                if expected {
                    // A replay on the same (resumed) link starts over from this message.
                    let last = last_sent_on.entry(g).or_default();
                    *last = (*last).min(id - 1);
                }
            }
            Op::ChannelClosed { pick: p, delta } => {
                let (id, g) = pick(p).unwrap_or((u64::from(p), generation));
                let g = shift(g, delta);
                let expected = model.channel_closed(g, id);
                let got = core.channel_closed(generation_of(g), MessageId(id), "closed");
                match (expected, got) {
                    (None, ChannelClosed::Stale) | (Some(true), ChannelClosed::Rejected) => {}
                    (Some(false), ChannelClosed::Requeued(n)) => {
                        prop_assert!(n >= 2);
                        // Replays on the same link start over from the oldest.
                        let last = last_sent_on.entry(g).or_default();
                        *last = 0;
                    }
                    (e, got) => prop_assert!(false, "step {step}: channel_closed {e:?} vs {got:?}"),
                }
            }
            Op::SetBlocked(blocked) => {
                model.set_blocked(now, blocked);
                core.set_blocked(at(now), blocked);
            }
            Op::ConfirmOverdue(t) => {
                let t = u64::from(t);
                let expected = model.confirm_overdue(now, t);
                let got = core.confirm_overdue(at(now), Duration::from_millis(t));
                prop_assert_eq!(got.map(|g| g.0), expected, "step {}: overdue", step);
            }
            Op::LinkLost => {
                model.link_lost(generation);
                core.link_lost(generation_of(generation));
                generation += 1;
            }
            Op::Expire => {
                model.expire(now);
                core.expire(at(now));
            }
            Op::Cancel { pick: p } => {
                let queued = model.queued_ids();
                let id = if queued.is_empty() {
                    u64::from(p)
                } else {
                    queued[p as usize % queued.len()]
                };
                prop_assert_eq!(core.cancel(MessageId(id)), model.cancel(id));
            }
            Op::GiveUp => {
                if model.gate != MGate::Closed {
                    model.gate = MGate::GaveUp;
                    model.resolve_all(PublishErrorKind::GaveUp);
                }
                core.give_up(FailCause::RetriesExhausted, None);
            }
            Op::Resume => {
                if model.gate == MGate::GaveUp {
                    model.gate = MGate::Open;
                }
                core.resume();
            }
            Op::Close => {
                model.gate = MGate::Closed;
                core.close();
            }
            Op::Shutdown => {
                model.gate = MGate::Closed;
                model.resolve_all(PublishErrorKind::ShutDown);
                core.shutdown();
            }
        }

        // The same outcomes, in the same order.
        let got: Vec<(u64, MOutcome)> = std::iter::from_fn(|| core.poll_resolved())
            .map(|r| {
                assert_eq!(r.message, r.id.0, "the message comes back with its id");
                let o = match &r.outcome {
                    Ok(c) => {
                        assert_eq!(c.id, r.id);
                        Ok(c.generation.0)
                    }
                    Err(e) => Err(e.kind()),
                };
                (r.id.0, o)
            })
            .collect();
        let expected = std::mem::take(&mut model.out);
        prop_assert_eq!(&got, &expected, "step {}: {:?}", step, op);
        for (id, outcome) in &got {
            prop_assert!(resolved_once.insert(*id), "message {id} resolved twice");
            if let Ok(g) = outcome {
                prop_assert!(
                    confirms_sent.contains(&(*g, *id)),
                    "message {id} reported confirmed on {g} without a confirm of that generation"
                );
            }
        }

        // The same counters, and the invariant.
        let s = core.stats();
        prop_assert!(s.is_balanced(), "step {}: {:?}", step, s);
        prop_assert!(
            core.check_invariants().is_ok(),
            "{:?}",
            core.check_invariants()
        );
        let c = &model.c;
        let f = |k| c.failed.get(&k).copied().unwrap_or(0);
        prop_assert_eq!(
            (
                s.submitted,
                s.confirmed,
                s.expired,
                s.dropped,
                s.replayed,
                s.requeued,
                s.stale_reports
            ),
            (
                c.submitted,
                c.confirmed,
                c.expired,
                c.dropped,
                c.replayed,
                c.requeued,
                c.stale
            )
        );
        prop_assert_eq!(
            (
                s.failed.nacked,
                s.failed.unroutable,
                s.failed.rejected,
                s.failed.overflow,
                s.failed.cancelled,
                s.failed.shut_down,
                s.failed.gave_up,
                s.failed.timeout,
                s.channel_closes
            ),
            (
                f(PublishErrorKind::Nacked),
                f(PublishErrorKind::Unroutable),
                f(PublishErrorKind::Rejected),
                f(PublishErrorKind::Overflow),
                f(PublishErrorKind::Cancelled),
                f(PublishErrorKind::ShutDown),
                f(PublishErrorKind::GaveUp),
                f(PublishErrorKind::Timeout),
                c.channel_closes
            )
        );
        prop_assert_eq!(s.queued as usize, model.queued_ids().len());
        prop_assert_eq!(s.in_flight as usize, model.in_flight());
        prop_assert_eq!(s.pending_bytes as usize, model.bytes());
        prop_assert_eq!(
            core.poll_timeout().is_some(),
            model.pending().any(|(_, m)| {
                m.timeout.is_some() || (m.state == MState::Queued && m.deadline.is_some())
            })
        );
        for (id, m) in model.pending() {
            prop_assert_eq!(core.is_suspect(MessageId(*id)), m.suspect, "suspect {}", id);
        }
    }
    // Everything submitted and resolved was seen exactly once.
    prop_assert_eq!(
        resolved_once.len() as u64,
        core.stats().resolved(),
        "resolved outcomes drained"
    );
    Ok(())
}

fn generation_of(g: u64) -> Generation {
    Generation(g)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn core_matches_the_reference_model(setup in setup(), ops in proptest::collection::vec(op(), 1..250)) {
        run(setup, ops)?;
    }
}

/// A replay keeps the original order even when the link dies mid-replay.
#[test]
fn order_survives_replays_and_mid_replay_failures() {
    let mut core: OutboxCore<u32> = OutboxCore::new(OutboxConfig::default());
    let t = Instant::now();
    for i in 1..=5 {
        core.submit(t, i, SubmitOptions::new());
    }
    let take = |core: &mut OutboxCore<u32>, g: u64, n: usize| -> Vec<u32> {
        (0..n)
            .filter_map(|_| core.next_to_send(t, Generation(g)).map(|(_, m)| *m))
            .collect()
    };
    assert_eq!(take(&mut core, 1, 3), [1, 2, 3]);
    core.link_lost(Generation(1));
    // Replay on link 2: 1 is written, 2's write fails, the link dies.
    assert_eq!(take(&mut core, 2, 2), [1, 2]);
    assert!(core.requeue(Generation(2), MessageId(2)));
    core.link_lost(Generation(2));
    assert_eq!(take(&mut core, 3, 5), [1, 2, 3, 4, 5]);
    core.check_invariants().unwrap();
}
