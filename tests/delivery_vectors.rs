//! Replays every delivery conformance vector under `docs/vectors/delivery/`
//! against the sans-IO outbox (`docs/delivery.md`, "Conformance vectors").
//!
//! Each step runs one operation at `at_ms` (milliseconds since the vector's
//! time zero), checks its direct answer (`expect`), the outcomes it produced
//! (`resolved`, exactly and in order; absent means none), the counters it
//! lists (`counters`, only the keys given) and the core's invariants.
//! Run with `--nocapture` to see how many vectors ran.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redial::machine::{FailCause, Generation};
use redial::outbox::{
    ChannelClosed, MessageId, OutboxConfig, OutboxCore, OutboxStats, OverflowPolicy, PublishError,
    Submit, SubmitOptions,
};
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
}

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

fn counters(s: &OutboxStats) -> BTreeMap<&'static str, u64> {
    BTreeMap::from([
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

fn cause(name: &str) -> Result<FailCause, String> {
    match name {
        "retries_exhausted" => Ok(FailCause::RetriesExhausted),
        "deadline_exhausted" => Ok(FailCause::DeadlineExhausted),
        "permanent" => Ok(FailCause::Permanent),
        other => Err(format!("unknown cause {other}")),
    }
}

fn run_file(path: &Path) -> Result<usize, String> {
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
    b = b.default_ttl(v.config.default_ttl_ms.map(Duration::from_millis));
    if let Some(t) = v.config.publish_timeout_ms {
        b = b.publish_timeout(t.map(Duration::from_millis));
    }
    let config = b.build().map_err(|e| format!("config: {e}"))?;
    let mut core: OutboxCore<String> = OutboxCore::new(config);
    let t0 = Instant::now();
    let mut last_at = 0;
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
            match have.get(key.as_str()) {
                Some(v) if v == want => {}
                Some(v) => return Err(format!("step {i}: counter {key} = {v}, expected {want}")),
                None => return Err(format!("step {i}: unknown counter {key}")),
            }
        }
        core.check_invariants()
            .map_err(|e| format!("step {i}: {e}"))?;
    }
    Ok(v.steps.len())
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
    let mut failures = Vec::new();
    let mut steps = 0;
    for file in &files {
        match run_file(file) {
            Ok(n) => steps += n,
            Err(e) => failures.push(format!("{}: {e}", file.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        files.len() >= 8,
        "expected the delivery vectors, found {}",
        files.len()
    );
    println!("ran {} delivery vectors ({steps} steps)", files.len());
}
