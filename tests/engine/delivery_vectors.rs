//! Replays every delivery conformance vector under `docs/vectors/delivery/`
//! against the sans-IO outbox (`docs/delivery.md`, "Conformance vectors").
//!
//! Each step runs one operation at `at_ms` (milliseconds since the vector's
//! time zero), checks its direct answer (`expect`), the outcomes it produced
//! (`resolved`, exactly and in order; absent means none), the counters it
//! lists (`counters`, only the keys given), the snapshot of the outbox
//! after the step (`state`, when the step has one) and the core's
//! invariants. Run with `--nocapture` to see how many vectors ran.
//!
//! `REDIAL_BLESS_DELIVERY=1` rewrites every step's `state` with the snapshot
//! this core produces (every other check still runs). Review what it wrote
//! against `docs/delivery.md` before committing it: the snapshot is the
//! spec's, not merely the code's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redial::machine::{FailCause, Generation};
use redial::outbox::{
    MessageId, OutboxConfig, OutboxStats, OverflowPolicy, PublishError, SubmitOptions,
};
use redial::unstable::{ChannelClosed, Gate, OutboxCore, Submit};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    name: String,
    #[serde(default)]
    scenario: Option<String>,
    description: String,
    config: VConfig,
    steps: Vec<Step>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VConfig {
    max_messages: Option<usize>,
    max_bytes: Option<usize>,
    max_in_flight: Option<usize>,
    overflow: Option<VPolicy>,
    default_ttl_ms: Option<u64>,
    /// Absent: the default (60 s); `null`: off.
    #[serde(default, deserialize_with = "present")]
    publish_timeout_ms: Option<Option<u64>>,
}

/// A key that is present, possibly `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

#[derive(Deserialize, Clone, Copy)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum VPolicy {
    Wait { deadline_ms: Option<u64> },
    RejectNew,
    DropOldest,
}

impl VPolicy {
    fn get(self) -> OverflowPolicy {
        match self {
            VPolicy::Wait { deadline_ms } => OverflowPolicy::Wait {
                deadline: deadline_ms.map(Duration::from_millis),
            },
            VPolicy::RejectNew => OverflowPolicy::RejectNew,
            VPolicy::DropOldest => OverflowPolicy::DropOldest,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    at_ms: u64,
    op: Op,
    #[serde(default)]
    expect: Option<Value>,
    #[serde(default)]
    resolved: Vec<VResolved>,
    #[serde(default)]
    counters: BTreeMap<String, u64>,
    #[serde(default)]
    state: Option<VState>,
}

/// The outbox after a step (`docs/delivery.md` section 12). Every key is
/// required in a snapshot.
#[derive(Deserialize, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct VState {
    gate: String,
    queued: Vec<u64>,
    in_flight: Vec<(u64, u64)>,
    suspects: Vec<u64>,
    #[serde(deserialize_with = "present")]
    timeout_ms: Option<Option<u64>>,
    stats: BTreeMap<String, u64>,
}

/// The counters a snapshot leaves out: they follow from the others
/// (`failed` is the sum of the reasons, the rest are list lengths).
const DERIVED: [&str; 4] = ["failed", "queued", "in_flight", "pending"];

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Op {
    Submit {
        message: String,
        ttl_ms: Option<u64>,
        size: Option<usize>,
        overflow: Option<VPolicy>,
        publish_timeout_ms: Option<u64>,
    },
    ChannelClosed {
        generation: u64,
        id: u64,
        reason: String,
    },
    SetBlocked {
        blocked: bool,
    },
    ConfirmOverdue {
        timeout_ms: u64,
    },
    ConfirmDeadline {
        timeout_ms: u64,
    },
    NextToSend {
        generation: u64,
    },
    Confirmed {
        generation: u64,
        id: u64,
    },
    Failed {
        generation: u64,
        id: u64,
        error: String,
    },
    Requeue {
        generation: u64,
        id: u64,
    },
    LinkLost {
        generation: u64,
    },
    Expire,
    Cancel {
        id: u64,
    },
    GiveUp {
        cause: String,
    },
    Resume,
    Close,
    Shutdown,
}

#[derive(Deserialize, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct VResolved {
    id: u64,
    message: String,
    outcome: String,
    #[serde(default)]
    generation: Option<u64>,
    /// The reason of a `rejected` outcome (compared when given).
    #[serde(default)]
    reason: Option<String>,
}

/// Every counter of section 11, in that order, spelled as in the vectors.
fn counters(s: &OutboxStats) -> Vec<(&'static str, u64)> {
    Vec::from([
        ("submitted", s.submitted),
        ("confirmed", s.confirmed),
        ("failed", s.failed.total()),
        ("failed_nacked", s.failed.nacked),
        ("failed_unroutable", s.failed.unroutable),
        ("failed_rejected", s.failed.rejected),
        ("failed_overflow", s.failed.overflow),
        ("failed_cancelled", s.failed.cancelled),
        ("failed_shut_down", s.failed.shut_down),
        ("failed_gave_up", s.failed.gave_up),
        ("failed_timeout", s.failed.timeout),
        ("channel_closes", s.channel_closes),
        ("expired", s.expired),
        ("dropped", s.dropped),
        ("replayed", s.replayed),
        ("requeued", s.requeued),
        ("stale_reports", s.stale_reports),
        ("queued", s.queued),
        ("in_flight", s.in_flight),
        ("pending", s.pending()),
        ("pending_bytes", s.pending_bytes),
    ])
}

/// The snapshot of section 12, from the core's public accessors.
fn snapshot(core: &OutboxCore<String>, t0: Instant) -> VState {
    let stats = core.stats();
    // Ids are 1, 2, ... in submission order, one per submitted message.
    let ids = || (1..=stats.submitted).map(MessageId);
    VState {
        gate: match core.gate() {
            Gate::Open => "open",
            Gate::GaveUp { .. } => "gave_up",
            Gate::Closed => "closed",
        }
        .into(),
        queued: ids()
            .filter(|id| core.is_queued(*id))
            .map(|id| id.0)
            .collect(),
        in_flight: ids()
            .filter_map(|id| core.in_flight_generation(id).map(|g| (id.0, g.0)))
            .collect(),
        suspects: ids()
            .filter(|id| core.is_suspect(*id))
            .map(|id| id.0)
            .collect(),
        timeout_ms: Some(
            core.poll_timeout()
                .map(|t| t.duration_since(t0).as_millis() as u64),
        ),
        stats: counters(&stats)
            .into_iter()
            .filter(|(k, v)| *v != 0 && !DERIVED.contains(k))
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

fn list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    let items: Vec<String> = items.iter().map(f).collect();
    format!("[{}]", items.join(", "))
}

/// A snapshot as the committed vectors spell it: one line, keys in the
/// order of section 12, counters in the order of section 11.
fn format_state(s: &VState) -> String {
    let timeout = match s.timeout_ms.flatten() {
        Some(t) => t.to_string(),
        None => "null".into(),
    };
    let stats: Vec<String> = counters(&OutboxStats::default())
        .into_iter()
        .filter_map(|(k, _)| s.stats.get(k).map(|v| format!("\"{k}\": {v}")))
        .collect();
    format!(
        "{{\"gate\": \"{}\", \"queued\": {}, \"in_flight\": {}, \"suspects\": {}, \"timeout_ms\": {timeout}, \"stats\": {{{}}}}}",
        s.gate,
        list(&s.queued, u64::to_string),
        list(&s.in_flight, |(id, g)| format!("[{id}, {g}]")),
        list(&s.suspects, u64::to_string),
        stats.join(", "),
    )
}

/// Where a step's snapshot starts in the committed layout.
const STATE_LINE: &str = ",\n     \"state\": ";

/// The byte spans of the step objects (from `{` to its `}`) in a vector's text.
fn step_spans(text: &str) -> Result<Vec<(usize, usize)>, String> {
    let key = "\n  \"steps\": [";
    let start = text.find(key).ok_or("no steps line to bless")? + key.len();
    let (mut spans, mut depth, mut open) = (Vec::new(), 0usize, 0);
    let (mut in_str, mut esc) = (false, false);
    for (i, b) in text.bytes().enumerate().skip(start) {
        if in_str {
            match b {
                _ if esc => esc = false,
                b'\\' => esc = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                if depth == 0 {
                    open = i;
                }
                depth += 1;
            }
            b'}' | b']' if depth == 0 => return Ok(spans),
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    spans.push((open, i));
                }
            }
            _ => {}
        }
    }
    Err("unterminated steps".into())
}

/// The vector's text with each step's `state` replaced by (or set to) the
/// given snapshot, the rest of the text untouched.
fn bless(text: &str, states: &[String]) -> Result<String, String> {
    let spans = step_spans(text)?;
    if spans.len() != states.len() {
        return Err(format!(
            "found {} steps to bless, ran {}",
            spans.len(),
            states.len()
        ));
    }
    let mut out = String::new();
    let mut last = 0;
    for ((open, close), state) in spans.into_iter().zip(states) {
        let body = &text[open..close];
        let body = body.find(STATE_LINE).map_or(body, |p| &body[..p]);
        if body.contains("\"state\"") {
            return Err("a state not on its own last line: bless by hand".into());
        }
        out.push_str(&text[last..open]);
        out.push_str(body);
        out.push_str(STATE_LINE);
        out.push_str(state);
        last = close;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

/// Compares a step's snapshot key by key.
fn compare_state(want: &VState, got: &VState) -> Result<(), String> {
    let differs = |key: &str, w: String, g: String| Err(format!("state.{key} = {g}, expected {w}"));
    if want.gate != got.gate {
        return differs("gate", want.gate.clone(), got.gate.clone());
    }
    let lists = [
        (
            "queued",
            format!("{:?}", want.queued),
            format!("{:?}", got.queued),
        ),
        (
            "in_flight",
            format!("{:?}", want.in_flight),
            format!("{:?}", got.in_flight),
        ),
        (
            "suspects",
            format!("{:?}", want.suspects),
            format!("{:?}", got.suspects),
        ),
    ];
    if let Some((key, w, g)) = lists.into_iter().find(|(_, w, g)| w != g) {
        return differs(key, w, g);
    }
    if want.timeout_ms != got.timeout_ms {
        let ms = |t: Option<Option<u64>>| t.flatten().map_or("null".into(), |t| t.to_string());
        return differs("timeout_ms", ms(want.timeout_ms), ms(got.timeout_ms));
    }
    let known: Vec<&str> = counters(&OutboxStats::default())
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for key in want.stats.keys() {
        if !known.contains(&key.as_str()) || DERIVED.contains(&key.as_str()) {
            return Err(format!("state.stats: unknown or derived counter {key}"));
        }
    }
    for key in known.into_iter().filter(|k| !DERIVED.contains(k)) {
        let w = want.stats.get(key).copied().unwrap_or(0);
        let g = got.stats.get(key).copied().unwrap_or(0);
        if w != g {
            return differs(&format!("stats.{key}"), w.to_string(), g.to_string());
        }
    }
    Ok(())
}

fn cause(name: &str) -> Result<FailCause, String> {
    match name {
        "retries_exhausted" => Ok(FailCause::RetriesExhausted),
        "deadline_exhausted" => Ok(FailCause::DeadlineExhausted),
        "permanent" => Ok(FailCause::Permanent),
        other => Err(format!("unknown cause {other}")),
    }
}

/// Replays one vector; returns its step count and how many steps had a
/// snapshot. With `bless`, rewrites the snapshots instead of comparing them.
fn run_file(path: &Path, bless_mode: bool) -> Result<(usize, usize), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let v: Vector =
        serde_json::from_str(&text).map_err(|e| format!("not a delivery vector: {e}"))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if v.name != stem {
        return Err(format!("name {:?} differs from the file name", v.name));
    }
    if v.description.is_empty() || v.scenario.as_deref() == Some("") {
        return Err("empty description or scenario".into());
    }
    let mut b = OutboxConfig::builder();
    if let Some(n) = v.config.max_messages {
        b = b.max_messages(n);
    }
    if let Some(n) = v.config.max_bytes {
        b = b.max_bytes(n);
    }
    if let Some(n) = v.config.max_in_flight {
        b = b.max_in_flight(n);
    }
    if let Some(p) = v.config.overflow {
        b = b.overflow(p.get());
    }
    b = match v.config.default_ttl_ms {
        Some(t) => b.default_ttl(Duration::from_millis(t)),
        None => b.no_default_ttl(),
    };
    // `null` turns the publish timeout off; absent keeps the default.
    match v.config.publish_timeout_ms {
        Some(Some(t)) => b = b.publish_timeout(Duration::from_millis(t)),
        Some(None) => b = b.no_publish_timeout(),
        None => {}
    }
    let config = b.build().map_err(|e| format!("config: {e}"))?;
    let mut core: OutboxCore<String> = OutboxCore::new(config);
    let t0 = Instant::now();
    let mut last_at = 0;
    let mut states = Vec::new();
    for (i, step) in v.steps.iter().enumerate() {
        let at_ms = step.at_ms;
        if at_ms < last_at {
            return Err(format!("step {i}: time goes back"));
        }
        last_at = at_ms;
        let now = t0 + Duration::from_millis(at_ms);
        let answer: Value = match &step.op {
            Op::Submit {
                message,
                ttl_ms,
                size,
                overflow,
                publish_timeout_ms,
            } => {
                let mut o = SubmitOptions::new();
                if let Some(t) = publish_timeout_ms {
                    o = o.publish_timeout(Duration::from_millis(*t));
                }
                if let Some(t) = ttl_ms {
                    o = o.ttl(Duration::from_millis(*t));
                }
                if let Some(s) = size {
                    o = o.size_bytes(*s);
                }
                if let Some(p) = overflow {
                    o = o.overflow(p.get());
                }
                match core.submit(now, message.clone(), o) {
                    Submit::Queued(id) => serde_json::json!({"result": "queued", "id": id.0}),
                    Submit::Resolved(id) => serde_json::json!({"result": "resolved", "id": id.0}),
                    Submit::Full(_) => serde_json::json!({"result": "full"}),
                }
            }
            Op::NextToSend { generation } => {
                let next = core
                    .next_to_send(now, Generation(*generation))
                    .map(|(id, m)| (id.0, m.clone()));
                match next {
                    Some((id, m)) => serde_json::json!({"id": id, "message": m}),
                    None => serde_json::json!({"id": null}),
                }
            }
            Op::Confirmed { generation, id } => {
                serde_json::json!({"applied": core.confirmed(Generation(*generation), MessageId(*id))})
            }
            Op::Failed {
                generation,
                id,
                error,
            } => {
                let error = match error.as_str() {
                    "nacked" => PublishError::Nacked,
                    "unroutable" => PublishError::Unroutable,
                    "rejected" => PublishError::Rejected("vector".into()),
                    other => return Err(format!("step {i}: unknown error {other}")),
                };
                serde_json::json!({"applied": core.failed(Generation(*generation), MessageId(*id), error)})
            }
            Op::Requeue { generation, id } => {
                serde_json::json!({"applied": core.requeue(Generation(*generation), MessageId(*id))})
            }
            Op::LinkLost { generation } => {
                serde_json::json!({"requeued": core.link_lost(Generation(*generation))})
            }
            Op::Expire => serde_json::json!({"expired": core.expire(now)}),
            Op::ChannelClosed {
                generation,
                id,
                reason,
            } => match core.channel_closed(Generation(*generation), MessageId(*id), reason) {
                ChannelClosed::Stale => serde_json::json!({"result": "stale"}),
                ChannelClosed::Rejected => serde_json::json!({"result": "rejected"}),
                ChannelClosed::Requeued(n) => {
                    serde_json::json!({"result": "requeued", "requeued": n})
                }
                other => return Err(format!("step {i}: unknown answer {other:?}")),
            },
            Op::SetBlocked { blocked } => {
                core.set_blocked(now, *blocked);
                Value::Null
            }
            Op::ConfirmOverdue { timeout_ms } => {
                let g = core.confirm_overdue(now, Duration::from_millis(*timeout_ms));
                serde_json::json!({"generation": g.map(|g| g.0)})
            }
            Op::ConfirmDeadline { timeout_ms } => {
                let at = core
                    .confirm_deadline(Duration::from_millis(*timeout_ms))
                    .map(|d| d.duration_since(t0).as_millis() as u64);
                serde_json::json!({"at_ms": at})
            }
            Op::Cancel { id } => serde_json::json!({"applied": core.cancel(MessageId(*id))}),
            Op::GiveUp { cause: c } => {
                core.give_up(cause(c)?, None);
                Value::Null
            }
            Op::Resume => {
                core.resume();
                Value::Null
            }
            Op::Close => {
                core.close();
                Value::Null
            }
            Op::Shutdown => {
                core.shutdown();
                Value::Null
            }
        };
        if let Some(expect) = &step.expect
            && expect != &answer
        {
            return Err(format!("step {i}: expected {expect}, got {answer}"));
        }
        let got: Vec<VResolved> = std::iter::from_fn(|| core.poll_resolved())
            .map(|r| {
                let (outcome, generation, reason) = match &r.outcome {
                    Ok(c) => ("confirmed".to_string(), Some(c.generation.0), None),
                    Err(PublishError::Rejected(why)) => {
                        ("rejected".to_string(), None, Some(why.clone()))
                    }
                    Err(e) => (e.kind().as_str().to_string(), None, None),
                };
                VResolved {
                    id: r.id.0,
                    message: r.message,
                    outcome,
                    generation,
                    reason,
                }
            })
            .collect();
        let got: Vec<VResolved> = got
            .into_iter()
            .zip(
                step.resolved
                    .iter()
                    .map(Some)
                    .chain(std::iter::repeat(None)),
            )
            .map(|(mut g, want)| {
                // A reason is compared only where the vector gives one.
                if want.is_none_or(|w| w.reason.is_none()) {
                    g.reason = None;
                }
                g
            })
            .collect();
        if got != step.resolved {
            return Err(format!(
                "step {i}: expected resolved {:?}, got {got:?}",
                step.resolved
            ));
        }
        let have = counters(&core.stats());
        for (key, want) in &step.counters {
            match have.iter().find(|(k, _)| k == key).map(|(_, v)| v) {
                Some(v) if v == want => {}
                Some(v) => return Err(format!("step {i}: counter {key} = {v}, expected {want}")),
                None => return Err(format!("step {i}: unknown counter {key}")),
            }
        }
        let snap = snapshot(&core, t0);
        if bless_mode {
            states.push(format_state(&snap));
        } else if let Some(want) = &step.state {
            compare_state(want, &snap).map_err(|e| format!("vector {}, step {i}: {e}", v.name))?;
        }
        core.check_invariants()
            .map_err(|e| format!("step {i}: {e}"))?;
    }
    if bless_mode {
        let blessed = bless(&text, &states)?;
        if blessed != text {
            std::fs::write(path, blessed).map_err(|e| format!("cannot write: {e}"))?;
        }
    }
    let with_state = v.steps.iter().filter(|s| s.state.is_some()).count();
    Ok((v.steps.len(), with_state))
}

#[test]
fn delivery_vectors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/vectors/delivery");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let bless_mode = std::env::var_os("REDIAL_BLESS_DELIVERY").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    let (mut steps, mut with_state) = (0, 0);
    for file in &files {
        match run_file(file, bless_mode) {
            Ok((n, s)) => {
                steps += n;
                with_state += s;
            }
            Err(e) => failures.push(format!("{}: {e}", file.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        files.len() >= 8,
        "expected the delivery vectors, found {}",
        files.len()
    );
    println!(
        "ran {} delivery vectors ({steps} steps, {with_state} with a state snapshot{})",
        files.len(),
        if bless_mode {
            "; snapshots blessed"
        } else {
            ""
        }
    );
}
