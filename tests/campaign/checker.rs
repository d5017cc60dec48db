//! The checker: holds a recorded [`Run`] to the campaign's rules, per
//! message id, against what the independent witness saw at the broker.
//! It never looks at the broker or the clock itself.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use redial::backoff::{Backoff, Jitter};
use redial::machine::{Reason, StateKind};
use redial::outbox::PublishErrorKind;
use redial::runtime::Event;

use super::record::{Applied, Ended, Kind, Run};
use super::schedule::Fault;

/// A rule of the campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// A message reported confirmed is not at the broker.
    ConfirmedMissing,
    /// A message reported refused (or never written) is at the broker.
    RefusedAccepted,
    /// A valid message was refused.
    ValidRefused,
    /// A deliberately bad message was confirmed, or refused for another reason.
    BadNotRefused,
    /// Confirmed messages of one link reached the broker out of id order.
    OrderInversion,
    /// More duplicates at the broker than the outbox replayed.
    UnexplainedDuplicates,
    /// A `message_id` was not `{prefix}-{outbox id}`.
    UnstableMessageId,
    /// A receipt was still pending at the end.
    Unresolved,
    /// A publish resolved after its deadline (its publish timeout).
    PastDeadline,
    /// More connection attempts than the backoff schedule allows.
    TooManyAttempts,
    /// A fault that must not cost the link did (channel error, alarm,
    /// slow consumer), or a poison message cost more than one link.
    LinkLostToQuietFault,
    /// A link was lost in quiet time (no fault window explains it).
    LinkLostWithoutFault,
    /// The engine was not connected at the end of the quiet tail.
    NotRecovered,
    /// The outbox held more than `max_messages`.
    OutboxOverCapacity,
    /// The consumer stream held more than its bound.
    ConsumerOverBound,
    /// A confirmed message never reached the redial consumer.
    ConsumerMissed,
    /// The harness itself failed (the verdict means nothing).
    Harness,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::ConfirmedMissing => "confirmed-missing",
            Rule::RefusedAccepted => "refused-accepted",
            Rule::ValidRefused => "valid-refused",
            Rule::BadNotRefused => "bad-not-refused",
            Rule::OrderInversion => "order-inversion",
            Rule::UnexplainedDuplicates => "unexplained-duplicates",
            Rule::UnstableMessageId => "unstable-message-id",
            Rule::Unresolved => "unresolved",
            Rule::PastDeadline => "past-deadline",
            Rule::TooManyAttempts => "too-many-attempts",
            Rule::LinkLostToQuietFault => "link-lost-to-quiet-fault",
            Rule::LinkLostWithoutFault => "link-lost-without-fault",
            Rule::NotRecovered => "not-recovered",
            Rule::OutboxOverCapacity => "outbox-over-capacity",
            Rule::ConsumerOverBound => "consumer-over-bound",
            Rule::ConsumerMissed => "consumer-missed",
            Rule::Harness => "harness",
        })
    }
}

/// One broken rule, with the evidence.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// What was seen (ids, counts, windows).
    pub detail: String,
}

/// Counts the checker computes on the way (printed per seed).
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Outcomes by name.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Deliveries at the witness beyond the first, per id.
    pub duplicates: u64,
    /// Connection attempts made.
    pub attempts: u64,
    /// The bound they were held to (`None`: the jitter has no minimum delay).
    pub attempt_bound: Option<u64>,
    /// Link losses.
    pub losses: u64,
    /// Per window: what it visibly did (losses charged, Blocked seen).
    pub windows: Vec<String>,
}

/// The checker's verdict on one run.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// The figures.
    pub figures: Figures,
    /// Every broken rule.
    pub violations: Vec<Violation>,
}

/// At most this many ids are listed per violation.
const SHOW: usize = 8;

fn ids(v: &[u64]) -> String {
    let shown: Vec<String> = v.iter().take(SHOW).map(u64::to_string).collect();
    if v.len() > SHOW {
        format!("{} (+{} more)", shown.join(","), v.len() - SHOW)
    } else {
        shown.join(",")
    }
}

/// The smallest delay backoff step `step` (1-based) can draw, in ms
/// (`None`: zero, the jitter has no floor).
fn min_delay_ms(backoff: &Backoff, step: u32) -> Option<u64> {
    let base = backoff.base_ms(step);
    let ms = match backoff.jitter() {
        Jitter::None => base,
        Jitter::Equal => base / 2,
        Jitter::Full => 0,
        Jitter::Decorrelated => backoff.initial().as_millis() as u64,
        Jitter::Proportional { fraction } => (base as f64 * (1.0 - fraction)).floor() as u64,
        // A jitter this checker does not know: assume no floor.
        _ => 0,
    };
    (ms > 0).then_some(ms)
}

/// The most attempts one outage of length `outage` can hold: the immediate
/// first retry, then one per backoff delay that fits, each at its smallest
/// draw (a backoff that did not reset only waits longer), plus the attempt
/// that succeeds once the fault lifts. `None` when the delays have no floor.
pub fn attempts_in_outage(backoff: &Backoff, outage: Duration) -> Option<u64> {
    let budget = outage.as_millis() as u64;
    let mut spent = 0u64;
    let mut fits = 0u64;
    for step in 1..=100_000u32 {
        spent += min_delay_ms(backoff, step)?;
        if spent > budget {
            break;
        }
        fits += 1;
    }
    Some(1 + fits + 1)
}

/// Link losses: the engine left Connected or Blocked for anything else;
/// when, and why.
fn losses(run: &Run) -> Vec<(std::time::Instant, Reason)> {
    run.events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::StateChanged {
                from, to, reason, ..
            } if matches!(from, StateKind::Connected | StateKind::Blocked)
                && !matches!(
                    to,
                    StateKind::Connected
                        | StateKind::Blocked
                        | StateKind::Closing
                        | StateKind::Closed
                ) =>
            {
                Some((*t, *reason))
            }
            _ => None,
        })
        .collect()
}

/// Checks every rule.
pub fn check(run: &Run) -> Verdict {
    let mut v = Verdict::default();
    let mut out = |rule: Rule, detail: String| v.violations.push(Violation { rule, detail });

    // What the witness saw: first arrival position and count per id.
    let mut first: HashMap<u64, usize> = HashMap::new();
    let mut count: HashMap<u64, u64> = HashMap::new();
    for (pos, seq) in run.witness.arrivals.iter().enumerate() {
        first.entry(*seq).or_insert(pos);
        *count.entry(*seq).or_default() += 1;
    }
    let duplicates: u64 = count.values().map(|n| n - 1).sum();

    let mut outcomes = BTreeMap::new();
    let mut confirmed_missing = Vec::new();
    let mut refused_accepted = Vec::new();
    let mut valid_refused = Vec::new();
    let mut bad_not_refused = Vec::new();
    let mut unresolved = Vec::new();
    let mut late: Vec<(u64, Duration)> = Vec::new();
    let mut consumer_missed = Vec::new();
    let mut by_link: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for p in &run.publishes {
        let Some((at, ended)) = &p.ended else {
            *outcomes.entry("pending").or_default() += 1;
            unresolved.push(p.seq);
            continue;
        };
        *outcomes.entry(ended.name()).or_default() += 1;
        let seen = first.contains_key(&p.seq);
        if let Some(ttl) = p.ttl {
            let took = at.saturating_duration_since(p.submitted);
            if took > ttl + run.bounds.deadline_slack {
                late.push((p.seq, took));
            }
        }
        let never_written = matches!(
            ended,
            Ended::Failed {
                kind: PublishErrorKind::Overflow,
                ..
            }
        );
        if (ended.is_refusal() || never_written) && seen {
            refused_accepted.push(p.seq);
        }
        match (&p.kind, ended) {
            (Kind::Valid, Ended::Confirmed { generation }) => {
                if !seen {
                    confirmed_missing.push(p.seq);
                }
                if !run.consumer.seen.contains_key(&p.seq) {
                    consumer_missed.push(p.seq);
                }
                by_link.entry(*generation).or_default().push(p.seq);
            }
            (Kind::Valid, e) if e.is_refusal() => valid_refused.push(p.seq),
            (Kind::Bad { .. }, Ended::Confirmed { .. }) => bad_not_refused.push(p.seq),
            // Refused, but not with its own reason.
            (Kind::Bad { because }, Ended::Failed { kind, text })
                if ended.is_refusal()
                    && (*kind != PublishErrorKind::Rejected
                        || !text.contains(because.as_str())) =>
            {
                bad_not_refused.push(p.seq)
            }
            _ => {}
        }
    }

    if !confirmed_missing.is_empty() {
        out(
            Rule::ConfirmedMissing,
            format!(
                "{} confirmed, not at the broker: {}",
                confirmed_missing.len(),
                ids(&confirmed_missing)
            ),
        );
    }
    if !refused_accepted.is_empty() {
        out(
            Rule::RefusedAccepted,
            format!(
                "{} refused or never written, yet at the broker: {}",
                refused_accepted.len(),
                ids(&refused_accepted)
            ),
        );
    }
    // The first offender's outcome, as evidence.
    let first_of = |seqs: &[u64]| -> String {
        let Some(seq) = seqs.first() else {
            return String::new();
        };
        run.publishes
            .iter()
            .find(|p| p.seq == *seq)
            .and_then(|p| p.ended.as_ref())
            .map(|(_, e)| format!(" (first: {e:?})"))
            .unwrap_or_default()
    };
    if !valid_refused.is_empty() {
        out(
            Rule::ValidRefused,
            format!(
                "{} valid messages refused: {}{}",
                valid_refused.len(),
                ids(&valid_refused),
                first_of(&valid_refused)
            ),
        );
    }
    if !bad_not_refused.is_empty() {
        out(
            Rule::BadNotRefused,
            format!(
                "{} bad messages confirmed or refused for another reason: {}{}",
                bad_not_refused.len(),
                ids(&bad_not_refused),
                first_of(&bad_not_refused)
            ),
        );
    }

    // Per-link order: ids confirmed on one link first reached the broker in id order.
    let mut inversions = Vec::new();
    for (generation, seqs) in &by_link {
        let mut seqs = seqs.clone();
        seqs.sort_unstable();
        let mut last: Option<(u64, usize)> = None;
        for seq in seqs {
            let Some(&pos) = first.get(&seq) else {
                continue;
            };
            if let Some((prev, prev_pos)) = last
                && pos < prev_pos
            {
                inversions.push(format!("link {generation}: {seq} before {prev}"));
            }
            if last.is_none_or(|(_, p)| pos > p) {
                last = Some((seq, pos));
            }
        }
    }
    if !inversions.is_empty() {
        let shown: Vec<&str> = inversions.iter().take(SHOW).map(String::as_str).collect();
        out(
            Rule::OrderInversion,
            format!("{} inversions: {}", inversions.len(), shown.join("; ")),
        );
    }

    if duplicates > run.outbox.replayed {
        let dup_ids: Vec<u64> = {
            let mut d: Vec<u64> = count
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(s, _)| *s)
                .collect();
            d.sort_unstable();
            d
        };
        out(
            Rule::UnexplainedDuplicates,
            format!(
                "{duplicates} duplicate deliveries, {} replays: {}",
                run.outbox.replayed,
                ids(&dup_ids)
            ),
        );
    }
    if !run.witness.bad_message_ids.is_empty() {
        let shown: Vec<String> = run
            .witness
            .bad_message_ids
            .iter()
            .take(SHOW)
            .map(|(s, m)| format!("{s}:{m}"))
            .collect();
        out(Rule::UnstableMessageId, shown.join(", "));
    }
    if !unresolved.is_empty() {
        out(
            Rule::Unresolved,
            format!(
                "{} receipts pending at the end: {}",
                unresolved.len(),
                ids(&unresolved)
            ),
        );
    }
    if !late.is_empty() {
        let worst = late.iter().map(|(_, d)| *d).max().unwrap_or_default();
        let seqs: Vec<u64> = late.iter().map(|(s, _)| *s).collect();
        out(
            Rule::PastDeadline,
            format!(
                "{} resolved after ttl + {:?} (worst {:.1}s): {}",
                late.len(),
                run.bounds.deadline_slack,
                worst.as_secs_f64(),
                ids(&seqs)
            ),
        );
    }

    // Attempts: the first connect, plus per window what its outage allows.
    let backoff = run.bounds.backoff();
    let mut bound = Some(1u64);
    for a in run.applied.iter().filter(|a| a.skipped.is_none()) {
        let allows_loss = a.fault.takes_links_down() || a.fault == Fault::Poison;
        if allows_loss {
            let outage = a.end.saturating_duration_since(a.start) + run.bounds.window_slack;
            bound = bound
                .zip(attempts_in_outage(backoff, outage))
                .map(|(b, n)| b + n);
        }
    }
    if let Some(b) = bound
        && run.attempts > b
    {
        out(
            Rule::TooManyAttempts,
            format!("{} attempts, the schedule allows {b}", run.attempts),
        );
    }

    // Every link loss is charged to a window: one that takes links down
    // (any number), a poison message (at most one), or a fault that must
    // not cost the link (none); a loss in quiet time is charged to nothing.
    let lost = losses(run);
    let tail = run.bounds.loss_tail;
    let windows: Vec<_> = run.applied.iter().filter(|a| a.skipped.is_none()).collect();
    // A loss belongs to the latest window it falls in (with its tail):
    // gaps are at least 0.5 s, and a fault's own losses (including the
    // proxy's late CONNECT after a blackhole) come before the next window.
    let mut charged = vec![Vec::new(); windows.len()];
    let mut unexplained = Vec::new();
    let at = |t: &std::time::Instant| {
        format!(
            "{:.2}s",
            t.saturating_duration_since(run.started).as_secs_f64()
        )
    };
    for (t, reason) in &lost {
        let owner = (0..windows.len())
            .filter(|&i| *t >= windows[i].start && *t <= windows[i].end + tail)
            .max_by_key(|&i| windows[i].start);
        let what = format!("{} ({reason:?})", at(t));
        match owner {
            Some(i) => charged[i].push(what),
            None => unexplained.push(what),
        }
    }
    let blocked: Vec<std::time::Instant> = run
        .events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::StateChanged {
                to: StateKind::Blocked,
                ..
            } => Some(*t),
            _ => None,
        })
        .collect();
    let effects: Vec<String> = run
        .applied
        .iter()
        .map(|a| {
            if a.skipped.is_some() {
                return format!("{}: skipped", a.fault);
            }
            let i = windows
                .iter()
                .position(|w| std::ptr::eq(*w, a))
                .unwrap_or(0);
            let b = blocked.iter().any(|t| *t >= a.start && *t <= a.end + tail);
            format!(
                "{}: {}{} lost",
                a.fault,
                if b { "blocked, " } else { "" },
                charged[i].len()
            )
        })
        .collect();
    for (a, charged) in windows.iter().zip(charged) {
        let allowed = usize::from(a.fault == Fault::Poison);
        let n = charged.len();
        if !a.fault.takes_links_down() && n > allowed {
            out(
                Rule::LinkLostToQuietFault,
                format!(
                    "{} ({} to {}): {n} link losses (allowed {allowed}) at {}",
                    a.fault,
                    at(&a.start),
                    at(&a.end),
                    charged.join(", ")
                ),
            );
        }
    }
    if !unexplained.is_empty() {
        out(
            Rule::LinkLostWithoutFault,
            format!(
                "{} link losses in quiet time, at {}",
                unexplained.len(),
                unexplained.join(", ")
            ),
        );
    }
    if run.final_state != StateKind::Connected {
        out(
            Rule::NotRecovered,
            format!("{:?} at the end of the quiet tail", run.final_state),
        );
    }

    let over: Vec<u64> = run
        .samples
        .iter()
        .map(|s| s.outbox.pending())
        .filter(|p| *p > run.bounds.max_messages)
        .collect();
    if let Some(max) = over.iter().max() {
        out(
            Rule::OutboxOverCapacity,
            format!(
                "{} samples over max_messages {}, up to {max}",
                over.len(),
                run.bounds.max_messages
            ),
        );
    }
    if let Some((_, n)) = run
        .consumer
        .buffered
        .iter()
        .filter(|(_, n)| *n > run.bounds.consumer_buffer)
        .max_by_key(|(_, n)| *n)
    {
        out(
            Rule::ConsumerOverBound,
            format!(
                "the consumer stream held {n} messages, bound {}",
                run.bounds.consumer_buffer
            ),
        );
    }
    if !consumer_missed.is_empty() {
        out(
            Rule::ConsumerMissed,
            format!(
                "{} confirmed messages never reached the redial consumer: {}",
                consumer_missed.len(),
                ids(&consumer_missed)
            ),
        );
    }
    if run.witness.errors > 0 {
        out(
            Rule::Harness,
            format!(
                "the witness's own connection failed {} times",
                run.witness.errors
            ),
        );
    }
    for h in &run.harness {
        out(Rule::Harness, h.clone());
    }

    v.figures = Figures {
        outcomes,
        duplicates,
        attempts: run.attempts,
        attempt_bound: bound,
        losses: lost.len() as u64,
        windows: effects,
    };
    v
}

/// Checks the checker on two made-up runs: a clean one must pass, and one
/// that breaks every rule must be caught on every rule. Both campaign
/// entry points run it first, so a checker that can no longer fail is
/// noticed before any broker is touched.
pub fn self_check() -> Result<(), String> {
    use std::time::Instant;

    use redial::machine::{Config, Generation, Reason};
    use redial::outbox::OutboxStats;

    use super::record::{Bounds, ConsumerLog, Publish, Sample, WitnessLog};
    use super::schedule::{Adapter, Schedule};

    let t0 = Instant::now();
    let secs = |s: u64| t0 + Duration::from_secs(s);
    let publish = |seq: u64, kind: Kind, ended: Option<(u64, Ended)>| Publish {
        seq,
        kind,
        submitted: t0,
        ttl: Some(Duration::from_secs(4)),
        ended: ended.map(|(s, e)| (secs(s), e)),
    };
    let ok = |g: u64| Ended::Confirmed { generation: g };
    let failed = |kind: PublishErrorKind, text: &str| Ended::Failed {
        kind,
        text: text.to_owned(),
    };
    let bad = || Kind::Bad {
        because: "x.missing".to_owned(),
    };
    let run = |publishes: Vec<Publish>, arrivals: Vec<u64>| Run {
        schedule: Schedule {
            seed: 0,
            adapter: Adapter::Amqp,
            lead: Duration::ZERO,
            burst: 1,
            windows: Vec::new(),
        },
        tag: "self".to_owned(),
        started: t0,
        final_state: StateKind::Connected,
        bounds: Bounds {
            engine: Config::default(),
            max_messages: 10,
            consumer_buffer: 5,
            deadline_slack: Duration::from_secs(1),
            window_slack: Duration::from_millis(500),
            loss_tail: Duration::from_secs(1),
        },
        consumer: ConsumerLog {
            seen: arrivals.iter().map(|s| (*s, 1)).collect(),
            ..ConsumerLog::default()
        },
        publishes,
        witness: WitnessLog {
            arrivals,
            ..WitnessLog::default()
        },
        events: Vec::new(),
        samples: Vec::new(),
        applied: Vec::new(),
        attempts: 1,
        outbox: OutboxStats::default(),
        harness: Vec::new(),
        notes: Vec::new(),
    };

    let clean = run(
        vec![
            publish(1, Kind::Valid, Some((1, ok(1)))),
            publish(
                2,
                bad(),
                Some((1, failed(PublishErrorKind::Rejected, "NOT_FOUND x.missing"))),
            ),
            publish(3, Kind::Valid, Some((2, ok(1)))),
            publish(
                4,
                Kind::Valid,
                Some((4, failed(PublishErrorKind::Expired, "expired"))),
            ),
        ],
        vec![1, 3],
    );
    let v = check(&clean);
    if !v.violations.is_empty() {
        return Err(format!("a clean run was flagged: {:?}", v.violations));
    }

    let mut broken = run(
        vec![
            publish(1, Kind::Valid, Some((1, ok(1)))),
            publish(2, Kind::Valid, Some((1, ok(1)))),
            publish(3, Kind::Valid, Some((1, ok(1)))),
            publish(
                4,
                Kind::Valid,
                Some((1, failed(PublishErrorKind::Rejected, "channel error"))),
            ),
            publish(5, bad(), Some((1, ok(1)))),
            publish(6, Kind::Valid, None),
            publish(7, Kind::Valid, Some((10, ok(1)))),
        ],
        vec![2, 1, 1, 4, 7],
    );
    broken.consumer.seen.remove(&7);
    broken.consumer.buffered.push((t0, 6));
    broken
        .witness
        .bad_message_ids
        .push((1, "other-1".to_owned()));
    broken.witness.errors = 1;
    broken.attempts = 50;
    broken.samples.push(Sample {
        outbox: {
            // Non-exhaustive: built from the default.
            let mut stats = OutboxStats::default();
            stats.queued = 11;
            stats
        },
    });
    broken.final_state = StateKind::BackingOff;
    broken.applied.push(Applied {
        fault: Fault::ChannelErrors { every: 2 },
        start: t0,
        end: secs(2),
        skipped: None,
    });
    for at in [1, 5] {
        broken.events.push((
            secs(at),
            Event::StateChanged {
                from: StateKind::Connected,
                to: StateKind::BackingOff,
                generation: Generation(1),
                lost: Some(Generation(1)),
                reason: Reason::LinkLost,
                error: None,
            },
        ));
    }
    let caught: std::collections::BTreeSet<Rule> =
        check(&broken).violations.iter().map(|v| v.rule).collect();
    let every = [
        Rule::ConfirmedMissing,
        Rule::RefusedAccepted,
        Rule::ValidRefused,
        Rule::BadNotRefused,
        Rule::OrderInversion,
        Rule::UnexplainedDuplicates,
        Rule::UnstableMessageId,
        Rule::Unresolved,
        Rule::PastDeadline,
        Rule::TooManyAttempts,
        Rule::LinkLostToQuietFault,
        Rule::LinkLostWithoutFault,
        Rule::NotRecovered,
        Rule::OutboxOverCapacity,
        Rule::ConsumerOverBound,
        Rule::ConsumerMissed,
        Rule::Harness,
    ];
    let missed: Vec<String> = every
        .iter()
        .filter(|r| !caught.contains(r))
        .map(Rule::to_string)
        .collect();
    if !missed.is_empty() {
        return Err(format!(
            "rules not caught on a run that breaks them: {}",
            missed.join(", ")
        ));
    }
    // The attempt bound grows with the outage it is given.
    let backoff = Config::default().backoff().clone();
    let short = attempts_in_outage(&backoff, Duration::ZERO);
    let long = attempts_in_outage(&backoff, Duration::from_secs(10));
    if short != Some(2) || long.is_none_or(|l| l <= 2) {
        return Err(format!(
            "attempt bounds: {short:?} for no outage, {long:?} for 10 s"
        ));
    }
    Ok(())
}
