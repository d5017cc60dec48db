//! What a run records: every publish and its outcome, what the independent
//! witness saw at the broker, what the redial consumer got, the engine's
//! events, periodic samples and the windows as they were applied. Drivers
//! fill it in; the checker only reads it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use redial::backoff::Backoff;
use redial::machine::{Config, StateKind};
use redial::outbox::{OutboxStats, Outcome, PublishErrorKind, Receipt};
use redial::runtime::Event;
use tokio::sync::mpsc;

use super::schedule::{Fault, Schedule};

/// Why a message was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A message the broker must take.
    Valid,
    /// Sent on purpose where the broker must refuse it; the refusal must
    /// name `because` (e.g. the missing exchange).
    Bad {
        /// What the refusal must mention.
        because: String,
    },
}

/// How one publish ended, as the checker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Confirmed on link `generation`.
    Confirmed {
        /// The link.
        generation: u64,
    },
    /// A typed error.
    Failed {
        /// Which.
        kind: PublishErrorKind,
        /// Its text.
        text: String,
    },
}

impl Ended {
    fn of(outcome: &Outcome) -> Ended {
        match outcome {
            Ok(c) => Ended::Confirmed {
                generation: c.generation.0,
            },
            Err(e) => Ended::Failed {
                kind: e.kind(),
                text: e.to_string(),
            },
        }
    }

    /// A short name for counting.
    pub fn name(&self) -> &'static str {
        match self {
            Ended::Confirmed { .. } => "confirmed",
            Ended::Failed { kind, .. } => kind.as_str(),
        }
    }

    /// The broker said no (the message must not be at the broker).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Ended::Failed {
                kind: PublishErrorKind::Rejected
                    | PublishErrorKind::Nacked
                    | PublishErrorKind::Unroutable,
                ..
            }
        )
    }
}

/// One publish.
#[derive(Debug, Clone)]
pub struct Publish {
    /// The campaign's sequence number (in the payload) = the outbox id.
    pub seq: u64,
    /// Why it was sent.
    pub kind: Kind,
    /// When it was submitted.
    pub submitted: Instant,
    /// Its time to live, if any: it must resolve by `submitted + ttl`.
    pub ttl: Option<Duration>,
    /// How and when it ended (`None`: still pending).
    pub ended: Option<(Instant, Ended)>,
}

/// The publish log, shared by the publishing task and the resolver.
#[derive(Clone, Default)]
pub struct Publishes {
    inner: Arc<Mutex<Vec<Publish>>>,
}

impl Publishes {
    /// Records a submission and resolves it in the background.
    pub fn track(&self, resolver: &Resolver, publish: Publish, receipt: Receipt) {
        let index = {
            let mut v = self.inner.lock().unwrap();
            v.push(publish);
            v.len() - 1
        };
        let _ = resolver.tx.send((index, receipt));
    }

    /// A copy of the log.
    pub fn snapshot(&self) -> Vec<Publish> {
        self.inner.lock().unwrap().clone()
    }

    /// How many are still pending.
    pub fn pending(&self) -> usize {
        self.inner
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.ended.is_none())
            .count()
    }
}

/// Awaits receipts concurrently and stamps their outcomes.
pub struct Resolver {
    tx: mpsc::UnboundedSender<(usize, Receipt)>,
}

impl Resolver {
    /// Starts the resolving task for `log`.
    pub fn start(log: &Publishes) -> Resolver {
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Receipt)>();
        let log = log.clone();
        tokio::spawn(async move {
            let mut pending = FuturesUnordered::new();
            let mut open = true;
            loop {
                tokio::select! {
                    next = rx.recv(), if open => match next {
                        Some((index, receipt)) => pending.push(async move { (index, receipt.await) }),
                        None => open = false,
                    },
                    Some((index, outcome)) = pending.next(), if !pending.is_empty() => {
                        let ended = Ended::of(&outcome);
                        log.inner.lock().unwrap()[index].ended = Some((Instant::now(), ended));
                    }
                    else => break,
                }
            }
        });
        Resolver { tx }
    }
}

/// What the independent witness saw at the broker, in arrival order.
#[derive(Debug, Default, Clone)]
pub struct WitnessLog {
    /// Sequence numbers in arrival order (duplicates included).
    pub arrivals: Vec<u64>,
    /// Deliveries whose AMQP `message_id` did not match `{prefix}-{seq}`.
    pub bad_message_ids: Vec<(u64, String)>,
    /// Deliveries that were not campaign messages (e.g. the poison).
    pub foreign: u64,
    /// Errors on the witness's own connection (its counts mean nothing
    /// unless this stays 0).
    pub errors: u64,
}

/// A witness log shared with the witness task.
pub type SharedWitness = Arc<Mutex<WitnessLog>>;

/// Parses a campaign payload `{run}:{seq}` (for `run`).
pub fn parse_payload(run: &str, payload: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(payload).ok()?;
    let (r, seq) = s.split_once(':')?;
    (r == run).then(|| seq.parse().ok()).flatten()
}

/// The payload of message `seq`.
pub fn payload(run: &str, seq: u64) -> Vec<u8> {
    format!("{run}:{seq}").into_bytes()
}

/// What the redial consumer got.
#[derive(Debug, Default, Clone)]
pub struct ConsumerLog {
    /// Distinct sequence numbers received, with counts.
    pub seen: HashMap<u64, u32>,
    /// Buffer samples taken at the end of each slow-consumer window:
    /// (when, messages waiting in the adapter's stream).
    pub buffered: Vec<(Instant, usize)>,
    /// Acks that failed for another reason than a stale delivery.
    pub ack_errors: Vec<String>,
}

/// A consumer log shared with the consumer task.
pub type SharedConsumer = Arc<Mutex<ConsumerLog>>;

/// One periodic sample.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The outbox's counters.
    pub outbox: OutboxStats,
}

/// A window as it was applied.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The fault.
    pub fault: Fault,
    /// When it started taking effect.
    pub start: Instant,
    /// When it was lifted.
    pub end: Instant,
    /// Why it was skipped, if it was (e.g. no `rabbitmqctl`).
    pub skipped: Option<String>,
}

/// The bounds the checker holds a run to, derived from its configuration.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// The engine configuration the adapter ran with.
    pub engine: Config,
    /// The outbox's `max_messages`.
    pub max_messages: u64,
    /// The most messages the consumer stream may hold.
    pub consumer_buffer: usize,
    /// How late a publish with a time to live may resolve past it
    /// (scheduling slack on a loaded machine).
    pub deadline_slack: Duration,
    /// Slack added to each window when bounding attempts.
    pub window_slack: Duration,
    /// How long after a window a link loss is still charged to it.
    pub loss_tail: Duration,
}

impl Bounds {
    /// The backoff policy.
    pub fn backoff(&self) -> &Backoff {
        self.engine.backoff()
    }
}

/// Everything one run recorded.
#[derive(Debug, Clone)]
pub struct Run {
    /// The schedule it ran.
    pub schedule: Schedule,
    /// The run's unique tag (payload prefix, names).
    pub tag: String,
    /// When the run's clock started (the engine was spawned).
    pub started: Instant,
    /// The engine's state when publishing stopped, after the quiet tail.
    pub final_state: StateKind,
    /// The bounds.
    pub bounds: Bounds,
    /// Every publish.
    pub publishes: Vec<Publish>,
    /// The witness.
    pub witness: WitnessLog,
    /// The redial consumer.
    pub consumer: ConsumerLog,
    /// Engine events with their times.
    pub events: Vec<(Instant, Event)>,
    /// Periodic samples.
    pub samples: Vec<Sample>,
    /// The windows as applied.
    pub applied: Vec<Applied>,
    /// Connection attempts the engine made.
    pub attempts: u64,
    /// The outbox's final counters.
    pub outbox: OutboxStats,
    /// Problems of the harness itself (not redial's): printed, and they
    /// fail the run, since its verdict would mean nothing.
    pub harness: Vec<String>,
    /// Notes for the report (skipped faults and the like).
    pub notes: Vec<String>,
}
