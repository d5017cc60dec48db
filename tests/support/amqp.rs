//! Helpers for the AMQP broker tests: unique names, a direct (unproxied)
//! verifying consumer, receipt bookkeeping and engine event timing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use redial::amqp::{AmqpConfig, AmqpTransport};
use redial::machine::{Generation, Reason, StateKind};
use redial::outbox::{Outcome, Receipt};
use redial::runtime::{Engine, Event, Handle};

/// The local broker, direct.
pub const BROKER_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker's address, for the chaos proxy.
pub fn broker_addr() -> SocketAddr {
    "127.0.0.1:5672".parse().expect("an address")
}

/// The URI of the broker through a proxy at `addr`.
pub fn proxied_uri(addr: SocketAddr) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

/// A name unique to this process and call (queues, connection names).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "redial.test.{prefix}.{}.{}.{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A direct connection to the broker (not through any proxy).
pub async fn direct() -> Connection {
    Connection::connect(
        BROKER_URI,
        ConnectionProperties::default().with_connection_name("redial-test-direct".into()),
    )
    .await
    .expect("a direct connection to the local broker")
}

/// Declares a plain (non-durable, non-exclusive) queue directly.
pub async fn declare_queue(conn: &Connection, name: &str) {
    let ch = conn.create_channel().await.expect("a channel");
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    let _ = ch.close(200, "done".into()).await;
}

/// Deletes a queue directly (cleanup; errors ignored).
pub async fn delete_queue(conn: &Connection, name: &str) {
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
        let _ = ch.close(200, "done".into()).await;
    }
}

/// What a verifying consumer saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Deliveries per `message_id`.
    pub by_id: HashMap<String, u32>,
    /// All deliveries.
    pub total: u64,
}

impl Seen {
    /// Distinct message ids.
    pub fn distinct(&self) -> usize {
        self.by_id.len()
    }
    /// Deliveries beyond the first of each id.
    pub fn duplicates(&self) -> u64 {
        self.total - self.by_id.len() as u64
    }
}

/// A plain auto-ack consumer of `queue` on its own channel of `conn`: an
/// independent witness of what the broker holds, in queue order. Keep the
/// channel alive as long as the consumer.
pub async fn plain_consumer(conn: &Connection, queue: &str) -> (lapin::Channel, lapin::Consumer) {
    let ch = conn.create_channel().await.expect("a channel");
    let consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    (ch, consumer)
}

/// Consumes `queue` on a direct connection (auto-ack), counting `message_id`s.
pub async fn collect(conn: &Connection, queue: &str) -> Arc<Mutex<Seen>> {
    let (ch, mut consumer) = plain_consumer(conn, queue).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    tokio::spawn(async move {
        let _ch = ch;
        while let Some(Ok(d)) = consumer.next().await {
            let id = d
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default();
            let mut s = seen.lock().unwrap();
            *s.by_id.entry(id).or_default() += 1;
            s.total += 1;
        }
    });
    out
}

/// Waits until `cond` holds on the collector, or `timeout` passes.
pub async fn wait_seen(
    seen: &Arc<Mutex<Seen>>,
    timeout: Duration,
    cond: impl Fn(&Seen) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond(&seen.lock().unwrap()) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One publish's history.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The outbox id.
    pub id: u64,
    /// When it was submitted.
    pub submitted: Instant,
    /// When its receipt resolved.
    pub resolved: Instant,
    /// How.
    pub outcome: Outcome,
}

/// Awaits receipts as they come and timestamps their outcomes.
#[derive(Clone)]
pub struct Receipts {
    tx: tokio::sync::mpsc::UnboundedSender<(Instant, Receipt)>,
    done: Arc<Mutex<Vec<Resolved>>>,
}

impl Receipts {
    /// A resolver task.
    pub fn start() -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Receipt)>();
        let done = Arc::new(Mutex::new(Vec::new()));
        let out = done.clone();
        tokio::spawn(async move {
            let mut pending = futures::stream::FuturesUnordered::new();
            let mut open = true;
            loop {
                tokio::select! {
                    next = rx.recv(), if open => match next {
                        Some((submitted, receipt)) => pending.push(async move {
                            let id = receipt.id().0;
                            let outcome = receipt.await;
                            Resolved { id, submitted, resolved: Instant::now(), outcome }
                        }),
                        None => open = false,
                    },
                    Some(r) = pending.next(), if !pending.is_empty() => done.lock().unwrap().push(r),
                    else => break,
                }
            }
        });
        Self { tx, done: out }
    }

    /// Adds a receipt submitted at `submitted`.
    pub fn push(&self, submitted: Instant, receipt: Receipt) {
        let _ = self.tx.send((submitted, receipt));
    }

    /// Every receipt resolved so far.
    pub fn done_snapshot(&self) -> Vec<Resolved> {
        self.done.lock().unwrap().clone()
    }

    /// How many resolved so far.
    pub fn resolved(&self) -> usize {
        self.done.lock().unwrap().len()
    }

    /// Waits until `n` receipts resolved (or `timeout`), returns them all.
    pub async fn wait(&self, n: usize, timeout: Duration) -> Vec<Resolved> {
        let deadline = Instant::now() + timeout;
        while self.resolved() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.done.lock().unwrap().clone()
    }
}

/// Engine events with the time they were seen.
#[derive(Clone)]
pub struct Timeline {
    events: Arc<Mutex<Vec<(Instant, Event)>>>,
}

impl Timeline {
    /// Records `handle`'s events from now on.
    pub fn start(handle: &Handle) -> Self {
        let mut rx = handle.events();
        let events = Arc::new(Mutex::new(Vec::new()));
        let out = events.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Some(Ok(e)) => events.lock().unwrap().push((Instant::now(), e)),
                    Some(Err(_lagged)) => {}
                    None => break,
                }
            }
        });
        Self { events: out }
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<(Instant, Event)> {
        self.events.lock().unwrap().clone()
    }

    /// State changes so far: (time, from, to, generation, reason).
    pub fn transitions(&self) -> Vec<(Instant, StateKind, StateKind, Generation, Reason)> {
        super::events::transitions(&self.events())
    }

    /// The first state change into `to` at or after `since`.
    pub fn first_into(&self, to: StateKind, since: Instant) -> Option<(Instant, Generation)> {
        self.transitions()
            .into_iter()
            .find(|(t, _, k, _, _)| *k == to && *t >= since)
            .map(|(t, _, _, g, _)| (t, g))
    }

    /// The first state change out of `from` at or after `since`.
    pub fn first_out_of(&self, from: StateKind, since: Instant) -> Option<(Instant, Reason)> {
        self.transitions()
            .into_iter()
            .find(|(t, f, _, _, _)| *f == from && *t >= since)
            .map(|(t, _, _, _, r)| (t, r))
    }
}

/// A transport for `config` that declares `queue` on every link, its engine
/// (the adapter's engine configuration) and a timeline recording from its
/// first event.
pub async fn engine_on_queue(
    config: &AmqpConfig,
    engine_config: redial::machine::Config,
    queue: &str,
) -> (AmqpTransport, Engine<AmqpTransport>, Timeline) {
    let transport = AmqpTransport::new(config.clone()).unwrap();
    transport
        .declare_queue(queue, QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let engine = Engine::spawn(engine_config, transport.clone());
    let timeline = Timeline::start(&engine.handle());
    (transport, engine, timeline)
}

/// The arguments of a quorum queue (`x-queue-type: quorum`).
pub fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    args
}

/// Runs `rabbitmqctl` with `args` (`None` when it is missing or fails).
pub fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Closes, broker side, every connection whose client-provided name is
/// `name` (only ours: tests run in parallel). Returns how many.
pub fn close_named_connections(name: &str) -> usize {
    let Some(list) = rabbitmqctl(&["list_connections", "--silent", "pid", "client_properties"])
    else {
        return 0;
    };
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    let mut closed = 0;
    for line in list.lines().filter(|l| l.contains(&needle)) {
        let Some(pid) = line.split('\t').next() else {
            continue;
        };
        if rabbitmqctl(&[
            "close_connection",
            pid.trim(),
            "redial test: broker-side close",
        ])
        .is_some()
        {
            closed += 1;
        }
    }
    closed
}

/// Whether `queue` exists, and its ready message count (passive declare on
/// a throwaway channel: a missing queue closes it).
pub async fn ready(conn: &Connection, queue: &str) -> Option<u32> {
    let ch = conn.create_channel().await.expect("a channel");
    let declared = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()
        .map(|q| q.message_count());
    if declared.is_some() {
        let _ = ch.close(200, "done".into()).await;
    }
    declared
}
