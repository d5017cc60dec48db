//! Fuzzes the sans-IO outbox: an arbitrary configuration and sequence of
//! core operations (submits under every overflow policy, sends, confirms and
//! failures naming any generation and any id, requeues, channel closes,
//! blocked periods, confirm-deadline checks, link losses, expiries,
//! cancels, give-ups, closes, shutdowns, raw timeouts up to `Duration::MAX`),
//! with after every step:
//! the core's own invariant check (accounting, bytes, capacity, window,
//! deadline index), each message resolved exactly once, success only after
//! an accepted confirm of that generation, and per-link writes in ascending
//! id order (except right after a replay on the same link).
#![no_main]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use redial::machine::{FailCause, Generation};
use redial::outbox::{ConfirmTimeout, MessageId, OutboxConfig, OverflowPolicy, PublishError, SubmitOptions};
use redial::unstable::{ChannelClosed, OutboxCore, Submit};

const MAX_OPS: usize = 1_024;

#[derive(Debug, Arbitrary)]
enum Policy {
    Wait,
    RejectNew,
    DropOldest,
}

impl Policy {
    fn get(&self) -> OverflowPolicy {
        match self {
            Policy::Wait => OverflowPolicy::Wait { deadline: None },
            Policy::RejectNew => OverflowPolicy::RejectNew,
            Policy::DropOldest => OverflowPolicy::DropOldest,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    Submit {
        ttl_ms: Option<u32>,
        size: Option<u32>,
        policy: Option<Policy>,
        timeout_ms: Option<u64>,
    },
    Advance(u32),
    Send,
    SendOn(u64),
    Confirm {
        generation: u64,
        id: u64,
    },
    ConfirmInFlight {
        pick: u16,
        older: bool,
    },
    Fail {
        generation: u64,
        id: u64,
        kind: u8,
    },
    Requeue {
        generation: u64,
        id: u64,
    },
    RequeueInFlight {
        pick: u16,
    },
    ChannelClosed {
        generation: u64,
        id: u64,
    },
    ChannelClosedInFlight {
        pick: u16,
    },
    SetBlocked(bool),
    ConfirmOverdue(u64),
    LinkLost,
    LinkLostAt(u64),
    Expire,
    Cancel(u64),
    GiveUp,
    Resume,
    Close,
    Shutdown,
}

#[derive(Debug, Arbitrary)]
struct Input {
    max_messages: u16,
    max_bytes: u32,
    max_in_flight: u8,
    policy: Policy,
    default_ttl_ms: Option<u32>,
    publish_timeout_ms: Option<u64>,
    confirm_timeout_ms: Option<u64>,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    // Any raw values: a typed error or a config, never a panic.
    let raw = OutboxConfig::builder()
        .max_messages(input.max_messages.into())
        .max_bytes(input.max_bytes as usize)
        .max_in_flight(input.max_in_flight.into())
        .overflow(input.policy.get());
    let raw = match input.default_ttl_ms {
        Some(t) => raw.default_ttl(Duration::from_millis(t.into())),
        None => raw.no_default_ttl(),
    };
    let raw = match input.publish_timeout_ms {
        Some(t) => raw.publish_timeout(Duration::from_millis(t)),
        None => raw.no_publish_timeout(),
    }
    .confirm_timeout(input.confirm_timeout_ms.map_or(ConfirmTimeout::Off, |t| {
        ConfirmTimeout::After(Duration::from_millis(t))
    }))
    .build();
    let config = match raw {
        Ok(c) => c,
        Err(_) => OutboxConfig::builder()
            .max_messages(usize::from(input.max_messages).max(1))
            .max_bytes((input.max_bytes as usize).max(1))
            .max_in_flight(usize::from(input.max_in_flight).max(1))
            .overflow(input.policy.get())
            .build()
            .expect("valid"),
    };
    let mut core: OutboxCore<u64> = OutboxCore::new(config);
    let t0 = Instant::now();
    let mut now = Duration::ZERO;
    let mut generation = 1u64;
    let mut accepted_confirms: HashSet<(u64, u64)> = HashSet::new();
    let mut resolved: HashSet<u64> = HashSet::new();
    let mut last_written: HashMap<u64, u64> = HashMap::new();
    let mut in_flight: Vec<(u64, u64)> = Vec::new();

    for op in input.ops.iter().take(MAX_OPS) {
        let at = t0 + now;
        match op {
            Op::Submit {
                ttl_ms,
                size,
                policy,
                timeout_ms,
            } => {
                let mut options = SubmitOptions::new();
                if let Some(t) = timeout_ms {
                    options = options.publish_timeout(Duration::from_millis(*t));
                }
                if let Some(t) = ttl_ms {
                    options = options.ttl(Duration::from_millis((*t).into()));
                }
                if let Some(s) = size {
                    options = options.size_bytes(*s as usize);
                }
                if let Some(p) = policy {
                    options = options.overflow(p.get());
                }
                // The payload is the id the message should get.
                let message = core.stats().submitted + 1;
                if let Submit::Full(m) = core.submit(at, message, options) {
                    assert_eq!(m, message, "a full outbox hands the message back");
                }
            }
            Op::Advance(ms) => now += Duration::from_millis((*ms).into()),
            Op::Send | Op::SendOn(_) => {
                // Links are sequential: only the current link, or a retired one.
                let g = match op {
                    Op::SendOn(g) => (*g).min(generation),
                    _ => generation,
                };
                if let Some((id, _)) = core.next_to_send(at, Generation(g)) {
                    assert!(g >= generation, "a lost link got a message");
                    let prev = last_written.insert(g, id.0).unwrap_or(0);
                    assert!(id.0 > prev, "link {g}: id {} after {prev}", id.0);
                    in_flight.push((g, id.0));
                }
            }
            Op::Confirm { generation: g, id } => {
                if core.confirmed(Generation(*g), MessageId(*id)) {
                    accepted_confirms.insert((*g, *id));
                }
            }
            Op::ConfirmInFlight { pick, older } => {
                if !in_flight.is_empty() {
                    let (g, id) = in_flight[usize::from(*pick) % in_flight.len()];
                    let g = if *older { g.saturating_sub(1) } else { g };
                    if core.confirmed(Generation(g), MessageId(id)) {
                        accepted_confirms.insert((g, id));
                    }
                }
            }
            Op::Fail {
                generation: g,
                id,
                kind,
            } => {
                let error = match kind % 3 {
                    0 => PublishError::Nacked,
                    1 => PublishError::Unroutable,
                    _ => PublishError::Rejected(String::new()),
                };
                core.failed(Generation(*g), MessageId(*id), error);
            }
            Op::Requeue { generation: g, id } => {
                if core.requeue(Generation(*g), MessageId(*id)) {
                    let last = last_written.entry(*g).or_default();
                    *last = (*last).min(id - 1);
                }
            }
            Op::RequeueInFlight { pick } => {
                if !in_flight.is_empty() {
                    let (g, id) = in_flight[usize::from(*pick) % in_flight.len()];
                    if core.requeue(Generation(g), MessageId(id)) {
                        let last = last_written.entry(g).or_default();
                        *last = (*last).min(id - 1);
                    }
                }
            }
            Op::ChannelClosed { generation: g, id } => {
                if let ChannelClosed::Requeued(_) =
                    core.channel_closed(Generation(*g), MessageId(*id), "closed")
                {
                    last_written.insert(*g, 0);
                }
            }
            Op::ChannelClosedInFlight { pick } => {
                if !in_flight.is_empty() {
                    let (g, id) = in_flight[usize::from(*pick) % in_flight.len()];
                    if let ChannelClosed::Requeued(_) =
                        core.channel_closed(Generation(g), MessageId(id), "closed")
                    {
                        last_written.insert(g, 0);
                    }
                }
            }
            Op::SetBlocked(blocked) => core.set_blocked(at, *blocked),
            Op::ConfirmOverdue(ms) => {
                let timeout = Duration::from_millis(*ms);
                let deadline = core.confirm_deadline(timeout);
                if let Some(g) = core.confirm_overdue(at, timeout) {
                    assert!(core.stats().in_flight > 0);
                    assert!(g.0 >= 1);
                    // Overdue now: the deadline the core announced has come.
                    if let Some(d) = deadline {
                        assert!(d <= at, "overdue before its deadline");
                    }
                }
            }
            Op::LinkLost => {
                core.link_lost(Generation(generation));
                generation = generation.saturating_add(1);
            }
            Op::LinkLostAt(g) => {
                core.link_lost(Generation(*g));
                generation = generation.max(g.saturating_add(1));
            }
            Op::Expire => {
                core.expire(at);
            }
            Op::Cancel(id) => {
                core.cancel(MessageId(*id));
            }
            Op::GiveUp => core.give_up(FailCause::Permanent, None),
            Op::Resume => core.resume(),
            Op::Close => core.close(),
            Op::Shutdown => core.shutdown(),
        }
        while let Some(r) = core.poll_resolved() {
            assert_eq!(r.message, r.id.0, "ids follow submission order");
            assert!(resolved.insert(r.id.0), "message {} resolved twice", r.id);
            if let Ok(c) = &r.outcome {
                assert_eq!(c.id, r.id);
                assert!(
                    accepted_confirms.contains(&(c.generation.0, r.id.0)),
                    "success without a confirm of generation {}",
                    c.generation
                );
            }
        }
        in_flight
            .retain(|(g, id)| core.in_flight_generation(MessageId(*id)) == Some(Generation(*g)));
        if let Err(e) = core.check_invariants() {
            panic!("{e}");
        }
    }
    assert_eq!(resolved.len() as u64, core.stats().resolved());
});
