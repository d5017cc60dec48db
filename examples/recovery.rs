//! Recovery side by side: redial with its default configuration next to
//! plain lapin and plain rumqttc, through the project's chaos TCP proxy, in
//! the three standard scenarios of issue 11.
//!
//! ```sh
//! cargo run --release --all-features --example recovery
//! cargo run --release --all-features --example recovery -- --runs 1 --scenario b --client lapin
//! ```
//!
//! Options: `--runs N` (default 3), `--scenario a|b|c|all` (default all),
//! `--client redial-amqp|redial-mqtt|lapin|rumqttc|all` (default all). The
//! runs are interleaved (run 1 of every scenario and client, then run 2,
//! ...) so that every client meets the same machine conditions. It prints
//! one line per run, then markdown tables of medians (min–max) per scenario
//! and client, with the load average (`/proc/loadavg`) at the start and the
//! end. It exits non-zero only when the harness itself fails (a broker
//! missing, the witness losing its link, a client that never makes its
//! first connection before any fault); a client doing badly is a result.
//!
//! # The scenarios
//!
//! Times are from the publisher's start. The publisher sends ids 0..N-1 at
//! a fixed rate (id k is due at k / rate) and catches up when late: a call
//! that blocks delays the ids behind it, which then go out back to back.
//!
//! | scenario | N, rate | fault (the chaos proxy, `tests/support/chaos.rs`) |
//! |---|---|---|
//! | A sever storm | 5,000 at 500/s | TCP reset of every proxied connection at 1.5, 3.0, 4.5, 6.0, 7.5 s (the broker stays up) |
//! | B half-open | 3,000 at 300/s | blackhole from 2.0 to 22.0 s: nothing forwarded either way, sockets stay open, new connections accepted but never forwarded, not even after it lifts (`ChaosProxy::blackhole_swallowing`) |
//! | C outage | 2,000 at 200/s | from 2.0 to 12.0 s every connection is reset, and every new one at once (broker unreachable), then restored |
//!
//! # The clients
//!
//! Each uses its defaults, except the heartbeat / keep-alive, set to 5 s:
//!
//! * **redial-amqp**: `AmqpConfig::new(uri).heartbeat(Heartbeat::secs(5))`,
//!   `Engine::spawn(config.engine_config().build()?, transport)` and a `Publisher`
//!   with `OutboxConfig::default()`, as the quick starts do. A publish's
//!   outcome is its receipt: a broker confirm or a typed error.
//! * **redial-mqtt**: `MqttConfig::new(..).keep_alive(5 s)`,
//!   `config.engine_config().build()?`, the default outbox; QoS 1.
//! * **lapin** (plain, the version redial builds on): lapin 4 has built-in
//!   connection recovery, so it is used: `ConnectionProperties::default()
//!   .enable_auto_recover()` (its default schedule then: 16 TCP retries,
//!   exponential from 1 s, no jitter), `heartbeat=5` in the URI, publisher
//!   confirms on, and the publishing loop of lapin's own
//!   `reconnect_semi_automatic` example: publish, await the confirm, and
//!   on an error `channel.wait_for_recovery(error)`, then the next message
//!   (one message at a time: 500/s is well within one confirm round trip).
//!   A publish error, a confirm error or a nack counts as failed; failed
//!   messages are not retried (neither lapin nor its example does).
//! * **rumqttc** (plain): `AsyncClient::new(options, 10)` with keep-alive
//!   5 s (its README's example), QoS 1, the `EventLoop` polled in a loop
//!   that polls again at once after an error: the README says it reconnects
//!   "by just continuing the `eventloop.poll()` loop" and suggests no delay.
//!   rumqttc gives no per-publish outcome. The harness maps PUBACKs to ids
//!   through the `Outgoing::Publish(pkid)` events (they come in publish
//!   order) and, at each error, reads the packets rumqttc keeps for the next
//!   session (`EventLoop::pending`, public): with a clean session (the
//!   default) rumqttc drops them at the next CONNACK without telling the
//!   application. Those count as "no outcome", not as failed.
//!
//! # What is measured
//!
//! * **failed**: publishes the client reported as failed (by kind in the
//!   per-run lines).
//! * **no outcome**: neither confirmed nor reported failed when the run
//!   ends (rumqttc's silent drops, a publisher stuck in a call that never
//!   returns, ...).
//! * **lost**: confirmed by the client, never seen by the witness.
//! * **A**, per sever: **reconnect**, from the sever to the client's next
//!   successful connection (redial: state `Connected`; lapin: its
//!   `Event::Connected` or its status back to `Connected`; rumqttc: a
//!   CONNACK); **first confirm**, from the sever to the first confirm after
//!   the next connection the proxy accepted; **recovered**, whether the
//!   client reconnected and had a confirm before the next sever (the last
//!   sever: within 1.5 s). The per-run line also says how many severs found
//!   no connection open.
//! * **B**: **declared dead**, from 2.0 s to the client's first sign that
//!   it knows (redial: `LivenessLost` or leaving `Connected`; lapin: its
//!   status leaving `Connected`, polled every 5 ms, since lapin emits no
//!   `Event::Error` when it starts a recovery, or else its `Event::Error`
//!   or a failed publish; rumqttc: `poll()` returning an error);
//!   **attempts**, TCP connections the proxy accepted (and swallowed) during the
//!   blackhole; **back** and **first confirm**, from 22.0 s to the next
//!   successful connection and to the first confirm.
//! * **C**: **attempts**, TCP connections made during the outage (the
//!   proxy's `refused()` delta plus any it accepted); **back** and **first
//!   confirm**, from 12.0 s.
//! * B and C count every TCP connection, so redial's reachability probes
//!   are in **attempts**; "engine" counts, among them, the full connection
//!   attempts redial's engine reported (`Event::AttemptStarted`).
//!
//! A run ends once every publish has an outcome (for the raw clients: or
//! none came for 20 s), the client is connected again after the last fault
//! (or 30 s passed), and at least 3 s after the last fault; at the latest
//! 75 s after that. Then the witness gets up to 10 s to see every confirmed
//! id.
//!
//! # The witness
//!
//! AMQP: a fanout exchange per run, declared on a direct (not proxied)
//! connection to 127.0.0.1:5672, with a queue bound to it that a plain lapin
//! consumer (auto-ack) on that direct connection counts; both AMQP clients
//! publish to the exchange through the proxy. MQTT: a private Mosquitto per
//! run (`Mosquitto::deep_queue()`: the system broker drops what it queues
//! for a slow subscriber), which the proxy forwards to and a plain rumqttc
//! subscriber (QoS 1, direct) counts. Payloads are the ids in decimal.
//! Everything connects to loopback only.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redial::amqp::lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use redial::amqp::lapin::types::FieldTable;
use redial::amqp::lapin::{
    self, BasicProperties, Confirmation, ConnectionProperties, ExchangeKind,
};
use redial::amqp::{AmqpConfig, AmqpMessage, AmqpTransport, Heartbeat};
use redial::machine::StateKind;
use redial::mqtt::rumqttc::{self, AsyncClient, MqttOptions, Outgoing, Packet, Request};
use redial::mqtt::{MqttConfig, MqttMessage, MqttTransport, QoS};
use redial::outbox::{OutboxConfig, Publisher};
use redial::runtime::{Event, Handle};
use support::chaos::ChaosProxy;
use support::mosquitto::Mosquitto;
use tokio::task::JoinHandle;

/// The local RabbitMQ, direct (the witness) and as the proxy's upstream.
const AMQP_BROKER: &str = "127.0.0.1:5672";
const AMQP_DIRECT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// How long a client may take for its first connection (before any fault).
const FIRST_CONNECT: Duration = Duration::from_secs(20);
/// A raw client whose outcomes stop changing for this long is done.
const QUIET: Duration = Duration::from_secs(20);
/// The heartbeat / keep-alive every client uses.
const HEARTBEAT_SECS: u16 = 5;

// ---------------------------------------------------------------------------
// Scenarios and clients.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    A,
    B,
    C,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::A, Scenario::B, Scenario::C];

    fn messages(self) -> u64 {
        match self {
            Scenario::A => 5_000,
            Scenario::B => 3_000,
            Scenario::C => 2_000,
        }
    }

    fn rate(self) -> u64 {
        match self {
            Scenario::A => 500,
            Scenario::B => 300,
            Scenario::C => 200,
        }
    }

    /// When the last fault ends (the last sever, the lift, the restore).
    fn fault_end(self) -> Duration {
        match self {
            Scenario::A => Duration::from_millis(7_500),
            Scenario::B => Duration::from_secs(22),
            Scenario::C => Duration::from_secs(12),
        }
    }

    /// When the first fault starts (B and C).
    fn fault_start(self) -> Duration {
        match self {
            Scenario::A => Duration::from_millis(1_500),
            Scenario::B | Scenario::C => Duration::from_secs(2),
        }
    }

    fn publish_time(self) -> Duration {
        Duration::from_nanos(self.messages() * 1_000_000_000 / self.rate())
    }

    fn letter(self) -> &'static str {
        match self {
            Scenario::A => "A",
            Scenario::B => "B",
            Scenario::C => "C",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Scenario::A => {
                "A sever storm: 5,000 at 500/s, every connection reset at 1.5, 3.0, 4.5, 6.0, 7.5 s"
            }
            Scenario::B => {
                "B half-open: 3,000 at 300/s, blackhole from 2.0 to 22.0 s (new connections swallowed)"
            }
            Scenario::C => {
                "C outage: 2,000 at 200/s, every connection reset and refused from 2.0 to 12.0 s"
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ClientKind {
    RedialAmqp,
    RedialMqtt,
    Lapin,
    Rumqttc,
}

impl ClientKind {
    const ALL: [ClientKind; 4] = [
        ClientKind::RedialAmqp,
        ClientKind::RedialMqtt,
        ClientKind::Lapin,
        ClientKind::Rumqttc,
    ];

    fn name(self) -> &'static str {
        match self {
            ClientKind::RedialAmqp => "redial-amqp",
            ClientKind::RedialMqtt => "redial-mqtt",
            ClientKind::Lapin => "lapin",
            ClientKind::Rumqttc => "rumqttc",
        }
    }

    fn is_amqp(self) -> bool {
        matches!(self, ClientKind::RedialAmqp | ClientKind::Lapin)
    }

    /// Whether the client promises an outcome for every publish (redial):
    /// then the run waits for all of them, else it also stops when nothing
    /// changed for [`QUIET`].
    fn resolves_everything(self) -> bool {
        matches!(self, ClientKind::RedialAmqp | ClientKind::RedialMqtt)
    }
}

// ---------------------------------------------------------------------------
// What a run records.

#[derive(Debug, Clone)]
enum Outcome {
    Confirmed(Instant),
    Failed(String),
    /// Dropped by the client without telling the application (rumqttc).
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    /// The client has a working connection again.
    Up,
    /// The client knows its connection is dead.
    Down,
}

struct RecInner {
    frozen: bool,
    outcomes: HashMap<u64, Outcome>,
    /// Publish calls that returned.
    published: u64,
    events: Vec<(Instant, Ev)>,
    /// The first reasons given for a `Down` (for the per-run line).
    down_reasons: Vec<(Instant, String)>,
    /// When an outcome or a publish last came.
    progress: Instant,
    /// A second outcome for the same id (should not happen).
    second_outcomes: u64,
    /// Errors from the client's own loop (rumqttc's `poll()`).
    loop_errors: u64,
    /// When the client started a full connection attempt, where it says so
    /// (redial's `AttemptStarted`; its reachability probes are not attempts).
    attempts: Vec<Instant>,
    notes: Vec<String>,
}

/// What one client did during a run, shared by its tasks.
#[derive(Clone)]
struct Rec(Arc<Mutex<RecInner>>);

impl Rec {
    fn new() -> Self {
        Rec(Arc::new(Mutex::new(RecInner {
            frozen: false,
            outcomes: HashMap::new(),
            published: 0,
            events: Vec::new(),
            down_reasons: Vec::new(),
            progress: Instant::now(),
            second_outcomes: 0,
            loop_errors: 0,
            attempts: Vec::new(),
            notes: Vec::new(),
        })))
    }

    fn with<R>(&self, f: impl FnOnce(&mut RecInner) -> R) -> Option<R> {
        let mut inner = self.0.lock().unwrap();
        (!inner.frozen).then(|| f(&mut inner))
    }

    fn outcome(&self, id: u64, outcome: Outcome) {
        self.with(|r| match r.outcomes.entry(id) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(outcome);
                r.progress = Instant::now();
            }
            std::collections::hash_map::Entry::Occupied(_) => r.second_outcomes += 1,
        });
    }

    fn confirmed(&self, id: u64) {
        self.outcome(id, Outcome::Confirmed(Instant::now()));
    }

    fn failed(&self, id: u64, why: &str) {
        self.outcome(id, Outcome::Failed(why.to_owned()));
    }

    fn published(&self) {
        self.with(|r| {
            r.published += 1;
            r.progress = Instant::now();
        });
    }

    fn up(&self) {
        self.with(|r| r.events.push((Instant::now(), Ev::Up)));
    }

    fn down(&self, why: impl FnOnce() -> String) {
        self.with(|r| {
            let now = Instant::now();
            r.events.push((now, Ev::Down));
            if r.down_reasons.len() < 16 {
                r.down_reasons.push((now, why()));
            }
        });
    }

    fn attempt(&self) {
        self.with(|r| r.attempts.push(Instant::now()));
    }

    fn loop_error(&self) {
        self.with(|r| r.loop_errors += 1);
    }

    fn note(&self, note: String) {
        self.with(|r| r.notes.push(note));
    }

    /// Stops recording: what the client does while it is shut down is not
    /// part of the run.
    fn freeze(&self) {
        self.0.lock().unwrap().frozen = true;
    }

    fn read<R>(&self, f: impl FnOnce(&RecInner) -> R) -> R {
        f(&self.0.lock().unwrap())
    }
}

// ---------------------------------------------------------------------------
// Faults and pacing.

#[derive(Debug, Default)]
struct Faults {
    /// A: when each sever happened and how many connections it found open.
    severs: Vec<(Instant, usize)>,
    /// B and C: when the fault started and ended.
    start: Option<Instant>,
    end: Option<Instant>,
    /// C: the proxy's refusal count at the start and at the end.
    refused: (usize, usize),
}

async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(at.into()).await;
}

async fn play_faults(scenario: Scenario, proxy: Arc<ChaosProxy>, t0: Instant) -> Faults {
    let mut f = Faults::default();
    match scenario {
        Scenario::A => {
            for i in 1..=5u64 {
                sleep_until(t0 + Duration::from_millis(1_500 * i)).await;
                let open = proxy.open_connections();
                f.severs.push((Instant::now(), open));
                proxy.sever();
            }
        }
        Scenario::B => {
            sleep_until(t0 + scenario.fault_start()).await;
            f.start = Some(Instant::now());
            // Connections made in the blackhole stay dead after it lifts,
            // as in a partition that lost their SYNs.
            proxy.blackhole_swallowing(true);
            sleep_until(t0 + scenario.fault_end()).await;
            proxy.blackhole_swallowing(false);
            f.end = Some(Instant::now());
        }
        Scenario::C => {
            sleep_until(t0 + scenario.fault_start()).await;
            f.refused.0 = proxy.refused();
            f.start = Some(Instant::now());
            proxy.refuse(true);
            proxy.sever();
            sleep_until(t0 + scenario.fault_end()).await;
            proxy.refuse(false);
            f.end = Some(Instant::now());
            f.refused.1 = proxy.refused();
        }
    }
    f
}

/// Waits until id `id` is due (at once when it is late).
async fn pace(t0: Instant, rate: u64, id: u64) {
    let due = t0 + Duration::from_nanos(id * 1_000_000_000 / rate);
    if Instant::now() < due {
        sleep_until(due).await;
    }
}

#[derive(Debug, Clone, Copy)]
enum End {
    /// Every publish had an outcome.
    AllKnown,
    /// Nothing changed for [`QUIET`] (raw clients only).
    Quiet,
    /// The last deadline.
    Deadline,
}

async fn drain(rec: &Rec, scenario: Scenario, t0: Instant, quiet: Option<Duration>) -> End {
    let fault_end = t0 + scenario.fault_end();
    let earliest = t0
        + scenario
            .publish_time()
            .max(scenario.fault_end() + Duration::from_secs(3));
    let latest = earliest + Duration::from_secs(75);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        if now >= latest {
            return End::Deadline;
        }
        if now < earliest {
            continue;
        }
        let (known, progress, back) = rec.read(|r| {
            (
                r.outcomes.len() as u64 >= scenario.messages(),
                r.progress,
                r.events
                    .iter()
                    .any(|(t, e)| *e == Ev::Up && *t >= fault_end),
            )
        });
        if !back && now < fault_end + Duration::from_secs(30) {
            continue;
        }
        if known {
            return End::AllKnown;
        }
        if let Some(q) = quiet
            && now.duration_since(progress) >= q
        {
            return End::Quiet;
        }
    }
}

/// One run of one client: the scenario, the proxy in front of the broker,
/// where to publish, and the record.
struct Cx {
    scenario: Scenario,
    client: ClientKind,
    proxy: Arc<ChaosProxy>,
    rec: Rec,
    /// AMQP: the exchange both AMQP clients publish to.
    exchange: String,
    /// MQTT: the topic both MQTT clients publish to.
    topic: String,
    /// Unique to this run (client ids).
    tag: String,
}

/// What [`Cx::drive`] saw.
struct Driven {
    t0: Instant,
    faults: Faults,
    end: End,
}

impl Cx {
    /// Starts the faults and the publisher at the same t0, then waits for
    /// the run to end and freezes the record.
    async fn drive(&self, start: impl FnOnce(Instant) -> JoinHandle<()>) -> Result<Driven, String> {
        let t0 = Instant::now() + Duration::from_millis(100);
        let faults = tokio::spawn(play_faults(self.scenario, self.proxy.clone(), t0));
        let publisher = start(t0);
        let quiet = (!self.client.resolves_everything()).then_some(QUIET);
        let end = drain(&self.rec, self.scenario, t0, quiet).await;
        self.rec.freeze();
        publisher.abort();
        let faults = faults
            .await
            .map_err(|e| format!("the fault player failed: {e}"))?;
        Ok(Driven { t0, faults, end })
    }
}

// ---------------------------------------------------------------------------
// redial.

/// Records redial's engine events as `Up` / `Down`.
fn watch_redial(handle: &Handle, rec: Rec) -> JoinHandle<()> {
    let mut events = handle.events();
    tokio::spawn(async move {
        let live = |s: StateKind| matches!(s, StateKind::Connected | StateKind::Blocked);
        loop {
            match events.recv().await {
                Some(Ok(Event::StateChanged { from, to, .. })) => {
                    if to == StateKind::Connected && !live(from) {
                        rec.up();
                    } else if live(from) && !live(to) {
                        rec.down(|| format!("{from} -> {to}"));
                    }
                }
                Some(Ok(Event::LivenessLost { .. })) => rec.down(|| "liveness lost".into()),
                Some(Ok(Event::AttemptStarted { .. })) => rec.attempt(),
                Some(Ok(_) | Err(_)) => {}
                None => break,
            }
        }
    })
}

async fn redial_connected(handle: &Handle, what: &str) -> Result<(), String> {
    tokio::time::timeout(FIRST_CONNECT, handle.wait_for(StateKind::Connected))
        .await
        .map(|_| ())
        .map_err(|_| format!("{what}: no first connection within {FIRST_CONNECT:?}"))
}

/// Publishes ids through a redial publisher; each receipt is awaited on its
/// own task.
fn redial_publisher<T, F>(
    publisher: Publisher<T>,
    rec: Rec,
    scenario: Scenario,
    message: F,
) -> impl FnOnce(Instant) -> JoinHandle<()>
where
    T: redial::outbox::Deliver + Send + Sync + 'static,
    T::Message: Send,
    F: Fn(u64) -> T::Message + Send + 'static,
{
    move |t0| {
        tokio::spawn(async move {
            for id in 0..scenario.messages() {
                pace(t0, scenario.rate(), id).await;
                let receipt = publisher.publish(message(id)).await;
                rec.published();
                let rec = rec.clone();
                tokio::spawn(async move {
                    match receipt.await {
                        Ok(_) => rec.confirmed(id),
                        Err(e) => rec.failed(id, e.kind().as_str()),
                    }
                });
            }
        })
    }
}

async fn run_redial_amqp(cx: &Cx) -> Result<Driven, String> {
    let uri = format!("amqp://guest:guest@{}/%2f", cx.proxy.addr());
    let config = AmqpConfig::new(uri).heartbeat(Heartbeat::secs(HEARTBEAT_SECS));
    let transport =
        AmqpTransport::new(config.clone()).map_err(|e| format!("redial-amqp: transport: {e}"))?;
    let engine_config = config
        .engine_config()
        .build()
        .map_err(|e| format!("redial-amqp: engine config: {e}"))?;
    let exchange = cx.exchange.clone();
    run_redial(cx, "redial-amqp", engine_config, transport, move |id| {
        AmqpMessage::new(&exchange, "", id.to_string().into_bytes())
    })
    .await
}

async fn run_redial_mqtt(cx: &Cx) -> Result<Driven, String> {
    let config = MqttConfig::new(
        "127.0.0.1",
        cx.proxy.addr().port(),
        format!("redial-{}", cx.tag),
    )
    .keep_alive(Duration::from_secs(u64::from(HEARTBEAT_SECS)));
    let transport =
        MqttTransport::new(config.clone()).map_err(|e| format!("redial-mqtt: transport: {e}"))?;
    let engine_config = config
        .engine_config()
        .build()
        .map_err(|e| format!("redial-mqtt: engine config: {e}"))?;
    let topic = cx.topic.clone();
    run_redial(cx, "redial-mqtt", engine_config, transport, move |id| {
        MqttMessage::new(&topic, QoS::AtLeastOnce, id.to_string())
    })
    .await
}

/// One run of a redial client, as the quick starts build it: the engine,
/// the default outbox, the scenario's publishes, then a shutdown.
async fn run_redial<T, F>(
    cx: &Cx,
    what: &str,
    engine_config: redial::machine::Config,
    transport: T,
    message: F,
) -> Result<Driven, String>
where
    T: redial::runtime::Transport + redial::outbox::Deliver + Clone,
    T::Message: Send,
    F: Fn(u64) -> T::Message + Send + 'static,
{
    let engine = redial::runtime::Engine::spawn(engine_config, transport.clone());
    let handle = engine.handle();
    let watcher = watch_redial(&handle, cx.rec.clone());
    redial_connected(&handle, what).await?;
    cx.rec.up();
    let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
    let driven = cx
        .drive(redial_publisher(
            publisher.clone(),
            cx.rec.clone(),
            cx.scenario,
            message,
        ))
        .await?;
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        publisher.shutdown(Duration::from_secs(1)),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), engine.shutdown()).await;
    watcher.abort();
    Ok(driven)
}

// ---------------------------------------------------------------------------
// Plain lapin, with its built-in connection recovery.

async fn run_lapin(cx: &Cx) -> Result<Driven, String> {
    let uri = format!(
        "amqp://guest:guest@{}/%2f?heartbeat={HEARTBEAT_SECS}",
        cx.proxy.addr()
    );
    let properties = ConnectionProperties::default().enable_auto_recover();
    let conn = tokio::time::timeout(FIRST_CONNECT, lapin::Connection::connect(&uri, properties))
        .await
        .map_err(|_| format!("lapin: no first connection within {FIRST_CONNECT:?}"))?
        .map_err(|e| format!("lapin: first connection: {e}"))?;
    let events = {
        let rec = cx.rec.clone();
        let mut stream = conn.events_listener();
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                match event {
                    lapin::Event::Connected => rec.up(),
                    lapin::Event::Error(e) => rec.down(|| format!("Event::Error: {e}")),
                    _ => {}
                }
            }
        })
    };
    // lapin tells the application nothing when it starts recovering (no
    // `Event::Error` then): its public status shows when it declared the
    // link dead.
    let status = {
        let rec = cx.rec.clone();
        let status = conn.status().clone();
        tokio::spawn(async move {
            let mut was = status.connected();
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let now = status.connected();
                if now != was {
                    if now {
                        rec.up();
                    } else {
                        let reconnecting = status.reconnecting();
                        rec.down(|| format!("status: connected -> reconnecting {reconnecting}"));
                    }
                    was = now;
                }
            }
        })
    };
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| format!("lapin: channel: {e}"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| format!("lapin: confirm.select: {e}"))?;
    cx.rec.up();
    let rec = cx.rec.clone();
    let exchange = cx.exchange.clone();
    let scenario = cx.scenario;
    let driven = cx
        .drive(move |t0| {
            tokio::spawn(async move {
                let n = scenario.messages();
                for id in 0..n {
                    pace(t0, scenario.rate(), id).await;
                    let payload = id.to_string();
                    // lapin's reconnect_semi_automatic example: publish, wait
                    // for the confirm; on an error, wait for the recovery.
                    let result = match channel
                        .basic_publish(
                            exchange.as_str().into(),
                            "".into(),
                            BasicPublishOptions::default(),
                            payload.as_bytes(),
                            BasicProperties::default(),
                        )
                        .await
                    {
                        Ok(confirm) => {
                            rec.published();
                            confirm.await.map_err(|e| ("confirm error", e))
                        }
                        Err(e) => {
                            rec.published();
                            Err(("publish error", e))
                        }
                    };
                    match result {
                        Ok(Confirmation::Ack(_)) => rec.confirmed(id),
                        Ok(Confirmation::Nack(_)) => rec.failed(id, "nack"),
                        Ok(Confirmation::NotRequested) => rec.failed(id, "not confirmed"),
                        Err((kind, e)) => {
                            rec.failed(id, kind);
                            rec.down(|| format!("{kind}: {e}"));
                            if let Err(e) = channel.wait_for_recovery(e).await {
                                rec.note(format!("gave up at id {id}: {e}"));
                                for rest in id + 1..n {
                                    rec.failed(rest, "publisher stopped");
                                }
                                return;
                            }
                        }
                    }
                }
            })
        })
        .await?;
    events.abort();
    status.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "done".into())).await;
    Ok(driven)
}

// ---------------------------------------------------------------------------
// Plain rumqttc.

/// Maps rumqttc's packet ids back to the harness's ids.
///
/// The publisher hands ids over in order; rumqttc takes them from its
/// request channel in order and emits `Outgoing::Publish(pkid)` for each as
/// it writes it, so the n-th such event is the n-th id, skipping the ids
/// that rumqttc moved to `EventLoop::pending` straight from its channel at
/// an error (never written). With a clean session rumqttc clears `pending`
/// at the next CONNACK: those ids are dropped.
#[derive(Default)]
struct PkidBook {
    /// The next id to be written.
    next: u64,
    /// Ids taken off the channel at an error without being written.
    skip: BTreeSet<u64>,
    by_pkid: HashMap<u16, u64>,
    /// The ids in `pending` at the last error.
    held: Vec<u64>,
}

impl PkidBook {
    fn event(&mut self, event: rumqttc::Event, rec: &Rec) {
        match event {
            rumqttc::Event::Outgoing(Outgoing::Publish(pkid)) => {
                while self.skip.remove(&self.next) {
                    self.next += 1;
                }
                if self.by_pkid.insert(pkid, self.next).is_some() {
                    rec.note(format!("pkid {pkid} reused before its PUBACK"));
                }
                self.next += 1;
            }
            rumqttc::Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(id) = self.by_pkid.remove(&ack.pkid) {
                    rec.confirmed(id);
                }
            }
            rumqttc::Event::Incoming(Packet::ConnAck(connack)) => {
                rec.up();
                if connack.session_present {
                    rec.note("a CONNACK with a session: the id mapping may be off".into());
                } else {
                    for id in self.held.drain(..) {
                        rec.outcome(id, Outcome::Dropped);
                    }
                }
            }
            _ => {}
        }
    }

    /// After `poll()` failed: every written publish without a PUBACK is now
    /// in `pending` (rumqttc's `clean()`), with what was in the channel.
    fn after_error(&mut self, pending: &VecDeque<Request>) {
        self.by_pkid.clear();
        self.held = pending
            .iter()
            .filter_map(|r| match r {
                Request::Publish(p) => std::str::from_utf8(&p.payload).ok()?.parse().ok(),
                _ => None,
            })
            .collect();
        for &id in &self.held {
            if id >= self.next {
                self.skip.insert(id);
            }
        }
    }
}

async fn run_rumqttc(cx: &Cx) -> Result<Driven, String> {
    let mut options = MqttOptions::new(
        format!("rumqttc-{}", cx.tag),
        "127.0.0.1",
        cx.proxy.addr().port(),
    );
    options.set_keep_alive(Duration::from_secs(u64::from(HEARTBEAT_SECS)));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let poller = {
        let rec = cx.rec.clone();
        tokio::spawn(async move {
            let mut book = PkidBook::default();
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(event) => {
                        if matches!(event, rumqttc::Event::Incoming(Packet::ConnAck(_)))
                            && let Some(tx) = ready.take()
                        {
                            let _ = tx.send(());
                        }
                        book.event(event, &rec);
                    }
                    Err(e) => {
                        // README: polling again reconnects; no delay.
                        rec.loop_error();
                        rec.down(|| format!("poll: {e}"));
                        let buffered: Vec<_> = eventloop.state.events.drain(..).collect();
                        for event in buffered {
                            book.event(event, &rec);
                        }
                        book.after_error(&eventloop.pending);
                    }
                }
            }
        })
    };
    tokio::time::timeout(FIRST_CONNECT, ready_rx)
        .await
        .map_err(|_| format!("rumqttc: no first connection within {FIRST_CONNECT:?}"))?
        .map_err(|_| "rumqttc: the event loop ended".to_string())?;
    let rec = cx.rec.clone();
    let topic = cx.topic.clone();
    let scenario = cx.scenario;
    let publisher_client = client.clone();
    let driven = cx
        .drive(move |t0| {
            tokio::spawn(async move {
                for id in 0..scenario.messages() {
                    pace(t0, scenario.rate(), id).await;
                    let sent = publisher_client
                        .publish(topic.as_str(), QoS::AtLeastOnce, false, id.to_string())
                        .await;
                    rec.published();
                    if sent.is_err() {
                        rec.failed(id, "client error");
                    }
                }
            })
        })
        .await?;
    let _ = client.try_disconnect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    poller.abort();
    Ok(driven)
}

// ---------------------------------------------------------------------------
// Witnesses.

#[derive(Default)]
struct Seen {
    ids: Mutex<HashMap<u64, u32>>,
    errors: AtomicU64,
}

impl Seen {
    fn add(&self, payload: &[u8]) {
        if let Some(id) = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            *self.ids.lock().unwrap().entry(id).or_default() += 1;
        }
    }
}

enum WitnessLink {
    Amqp {
        conn: Box<lapin::Connection>,
        channel: lapin::Channel,
        queue: String,
        exchange: String,
    },
    Mqtt {
        client: AsyncClient,
    },
}

struct Witness {
    seen: Arc<Seen>,
    link: WitnessLink,
    task: JoinHandle<()>,
}

impl Witness {
    /// A fanout exchange and a bound queue, consumed on a direct connection.
    async fn amqp(exchange: &str) -> Result<Witness, String> {
        let e = |what: &str| {
            let what = what.to_owned();
            move |e: lapin::Error| format!("AMQP witness: {what}: {e}")
        };
        let conn = lapin::Connection::connect(
            AMQP_DIRECT_URI,
            ConnectionProperties::default().with_connection_name("redial-recovery-witness".into()),
        )
        .await
        .map_err(e("connect to 127.0.0.1:5672"))?;
        let channel = conn.create_channel().await.map_err(e("channel"))?;
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(e("exchange.declare"))?;
        let queue = format!("{exchange}.witness");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(e("queue.declare"))?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(e("queue.bind"))?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "witness".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(e("basic.consume"))?;
        let seen = Arc::new(Seen::default());
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Some(delivery) = consumer.next().await {
                    match delivery {
                        Ok(d) => seen.add(&d.data),
                        Err(_) => {
                            seen.errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
        });
        Ok(Witness {
            seen,
            link: WitnessLink::Amqp {
                conn: Box::new(conn),
                channel,
                queue,
                exchange: exchange.to_owned(),
            },
            task,
        })
    }

    /// A plain rumqttc subscriber (QoS 1) straight to the broker.
    async fn mqtt(broker: SocketAddr, topic: &str, tag: &str) -> Result<Witness, String> {
        let mut options = MqttOptions::new(
            format!("witness-{tag}"),
            broker.ip().to_string(),
            broker.port(),
        );
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .map_err(|e| format!("MQTT witness: subscribe: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, eventloop.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("MQTT witness: {e}")),
                Err(_) => return Err("MQTT witness: no SUBACK within 10 s".into()),
            }
        }
        let seen = Arc::new(Seen::default());
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                loop {
                    match eventloop.poll().await {
                        Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => seen.add(&p.payload),
                        Ok(_) => {}
                        Err(_) => {
                            seen.errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        });
        Ok(Witness {
            seen,
            link: WitnessLink::Mqtt { client },
            task,
        })
    }

    /// Waits until every id in `ids` was seen, or `timeout`.
    async fn wait_for(&self, ids: &[u64], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let all = {
                let seen = self.seen.ids.lock().unwrap();
                ids.iter().all(|id| seen.contains_key(id))
            };
            if all || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        match self.link {
            WitnessLink::Amqp {
                conn,
                channel,
                queue,
                exchange,
            } => {
                let cleanup = async {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                    let _ = conn.close(200, "done".into()).await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), cleanup).await;
            }
            WitnessLink::Mqtt { client } => {
                let _ = client.try_disconnect();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// One run, measured.

struct RunResult {
    scenario: Scenario,
    client: ClientKind,
    run: usize,
    published: u64,
    confirmed: u64,
    failed: u64,
    failed_kinds: BTreeMap<String, u64>,
    no_outcome: u64,
    dropped: u64,
    lost: u64,
    missing: u64,
    duplicates: u64,
    accepted: usize,
    loop_errors: u64,
    end: End,
    // A
    severs_without_link: usize,
    reconnects: Vec<Option<Duration>>,
    sever_confirms: Vec<Option<Duration>>,
    recovered: usize,
    // B and C
    dead: Option<Duration>,
    attempts: usize,
    /// redial: full connection attempts the engine started in the window.
    engine_attempts: Option<usize>,
    back: Option<Duration>,
    first_confirm: Option<Duration>,
    notes: Vec<String>,
    load: String,
}

fn measure(
    cx: &Cx,
    run: usize,
    d: &Driven,
    accepted: &[Instant],
    witness: &Witness,
    load: String,
) -> RunResult {
    let n = cx.scenario.messages();
    let seen = witness.seen.ids.lock().unwrap().clone();
    cx.rec.read(|r| {
        let mut confirms: Vec<Instant> = Vec::new();
        let (mut failed, mut dropped, mut lost) = (0, 0, 0);
        let mut failed_kinds = BTreeMap::new();
        for (id, outcome) in &r.outcomes {
            match outcome {
                Outcome::Confirmed(at) => {
                    confirms.push(*at);
                    if !seen.contains_key(id) {
                        lost += 1;
                    }
                }
                Outcome::Failed(why) => {
                    failed += 1;
                    *failed_kinds.entry(why.clone()).or_default() += 1;
                }
                Outcome::Dropped => dropped += 1,
            }
        }
        confirms.sort_unstable();
        let confirmed = confirms.len() as u64;
        let first_confirm_after = |t: Instant| {
            confirms
                .iter()
                .find(|c| **c >= t)
                .map(|c| c.duration_since(t))
        };
        let first_event_after = |kind: Ev, t: Instant| {
            r.events
                .iter()
                .filter(|(at, e)| *e == kind && *at >= t)
                .map(|(at, _)| *at)
                .min()
        };
        let first_accepted_after = |t: Instant| accepted.iter().filter(|a| **a >= t).min().copied();
        let accepted_between =
            |a: Instant, b: Instant| accepted.iter().filter(|t| **t >= a && **t < b).count();

        let mut result = RunResult {
            scenario: cx.scenario,
            client: cx.client,
            run,
            published: r.published,
            confirmed,
            failed,
            failed_kinds,
            no_outcome: n - confirmed - failed,
            dropped,
            lost,
            missing: (0..n).filter(|id| !seen.contains_key(id)).count() as u64,
            duplicates: seen.values().map(|c| u64::from(c.saturating_sub(1))).sum(),
            accepted: accepted.len(),
            loop_errors: r.loop_errors,
            end: d.end,
            severs_without_link: 0,
            reconnects: Vec::new(),
            sever_confirms: Vec::new(),
            recovered: 0,
            dead: None,
            attempts: 0,
            engine_attempts: None,
            back: None,
            first_confirm: None,
            notes: r.notes.clone(),
            load,
        };
        if r.published < n {
            result.notes.push(format!(
                "the publisher never got past id {} (a client call that did not return)",
                r.published
            ));
        }
        if r.second_outcomes > 0 {
            result
                .notes
                .push(format!("{} second outcomes ignored", r.second_outcomes));
        }
        match cx.scenario {
            Scenario::A => {
                let severs = &d.faults.severs;
                for (i, (at, open)) in severs.iter().enumerate() {
                    if *open == 0 {
                        result.severs_without_link += 1;
                    }
                    let next = severs
                        .get(i + 1)
                        .map_or(*at + Duration::from_millis(1_500), |s| s.0);
                    let up = first_event_after(Ev::Up, *at);
                    result.reconnects.push(up.map(|u| u.duration_since(*at)));
                    // A confirm on a new link needs a new connection first.
                    let confirm = first_accepted_after(*at)
                        .and_then(|a| confirms.iter().find(|c| **c >= a).copied());
                    result
                        .sever_confirms
                        .push(confirm.map(|c| c.duration_since(*at)));
                    if up.is_some_and(|u| u < next) && confirm.is_some_and(|c| c < next) {
                        result.recovered += 1;
                    }
                }
            }
            Scenario::B | Scenario::C => {
                let start = d.faults.start.unwrap_or(d.t0 + cx.scenario.fault_start());
                let end = d.faults.end.unwrap_or(d.t0 + cx.scenario.fault_end());
                result.dead = first_event_after(Ev::Down, start).map(|t| t.duration_since(start));
                result.attempts = accepted_between(start, end);
                if cx.scenario == Scenario::C {
                    result.attempts += d.faults.refused.1 - d.faults.refused.0;
                }
                if cx.client.resolves_everything() {
                    result.engine_attempts = Some(
                        r.attempts
                            .iter()
                            .filter(|t| **t >= start && **t < end)
                            .count(),
                    );
                }
                result.back = first_event_after(Ev::Up, end).map(|t| t.duration_since(end));
                result.first_confirm = first_confirm_after(end);
                let signs: Vec<String> = r
                    .down_reasons
                    .iter()
                    .filter(|(t, _)| *t >= start)
                    .take(2)
                    .map(|(t, why)| format!("{:.2} s: {why}", t.duration_since(d.t0).as_secs_f64()))
                    .collect();
                if !signs.is_empty() {
                    result
                        .notes
                        .push(format!("first signs of death at {}", signs.join(", then ")));
                }
            }
        }
        result
    })
}

async fn run_once(scenario: Scenario, client: ClientKind, run: usize) -> Result<RunResult, String> {
    let tag = format!(
        "{}-{}-{}-{}",
        std::process::id(),
        scenario.letter(),
        client.name(),
        run
    );
    let load = loadavg();
    let exchange = format!("redial.recovery.{tag}");
    let topic = format!("redial/recovery/{tag}");
    let mut broker = None;
    let (witness, upstream) = if client.is_amqp() {
        let upstream: SocketAddr = AMQP_BROKER.parse().expect("an address");
        (Witness::amqp(&exchange).await?, upstream)
    } else {
        let b = Mosquitto::deep_queue().map_err(|e| format!("private mosquitto: {e}"))?;
        let addr = b.addr();
        broker = Some(b);
        (Witness::mqtt(addr, &topic, &tag).await?, addr)
    };
    let proxy = Arc::new(
        support::chaos::start(upstream)
            .await
            .map_err(|e| format!("chaos proxy: {e}"))?,
    );
    let cx = Cx {
        scenario,
        client,
        proxy: proxy.clone(),
        rec: Rec::new(),
        exchange,
        topic,
        tag,
    };
    let driven = match client {
        ClientKind::RedialAmqp => run_redial_amqp(&cx).await,
        ClientKind::RedialMqtt => run_redial_mqtt(&cx).await,
        ClientKind::Lapin => run_lapin(&cx).await,
        ClientKind::Rumqttc => run_rumqttc(&cx).await,
    };
    let driven = match driven {
        Ok(d) => d,
        Err(e) => {
            witness.stop().await;
            return Err(e);
        }
    };
    let confirmed: Vec<u64> = cx.rec.read(|r| {
        r.outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Confirmed(_)))
            .map(|(id, _)| *id)
            .collect()
    });
    witness.wait_for(&confirmed, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let witness_errors = witness.seen.errors.load(Ordering::Relaxed);
    let result = measure(&cx, run, &driven, &proxy.accepted(), &witness, load);
    witness.stop().await;
    drop(cx);
    drop(proxy);
    drop(broker);
    if witness_errors > 0 {
        return Err(format!(
            "{} {} run {run}: the witness lost its link ({witness_errors} errors): its counts mean nothing",
            scenario.letter(),
            client.name()
        ));
    }
    Ok(result)
}

// ---------------------------------------------------------------------------
// Output.

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The version of `name` in Cargo.lock, as built.
fn locked_version(name: &str) -> String {
    let lock = include_str!("../Cargo.lock");
    let needle = format!("name = \"{name}\"\nversion = \"");
    lock.find(&needle)
        .and_then(|at| lock[at + needle.len()..].split('"').next())
        .unwrap_or("?")
        .to_owned()
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn fmt_dur(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn fmt_opt(d: Option<Duration>) -> String {
    d.map_or_else(|| "none".into(), fmt_dur)
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// "median (min–max)" of counts.
fn summary_counts(values: &[u64]) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let mut v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
    v.sort_by(f64::total_cmp);
    let m = median(&v);
    let m = if m.fract() == 0.0 {
        format!("{m:.0}")
    } else {
        format!("{m:.1}")
    };
    if v[0] == v[v.len() - 1] {
        m
    } else {
        format!("{m} ({:.0}–{:.0})", v[0], v[v.len() - 1])
    }
}

/// "median (min–max)" of durations, with how many were missing.
fn summary_durations(values: &[Option<Duration>]) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let mut v: Vec<Duration> = values.iter().flatten().copied().collect();
    let none = values.len() - v.len();
    if v.is_empty() {
        return format!("none ({none}×)");
    }
    v.sort_unstable();
    let secs: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
    let m = Duration::from_secs_f64(median(&secs));
    let mut s = if fmt_dur(v[0]) == fmt_dur(v[v.len() - 1]) {
        fmt_dur(m)
    } else {
        format!(
            "{} ({}–{})",
            fmt_dur(m),
            fmt_dur(v[0]),
            fmt_dur(v[v.len() - 1])
        )
    };
    if none > 0 {
        s.push_str(&format!(", {none}× none"));
    }
    s
}

fn engine_attempts(r: &RunResult) -> String {
    r.engine_attempts
        .map(|n| format!(" (of them full attempts by the engine: {n})"))
        .unwrap_or_default()
}

fn print_run(r: &RunResult) {
    let kinds: Vec<String> = r
        .failed_kinds
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let mut line = format!(
        "{} {:<11} run {}: published {}, confirmed {}, failed {}{}, no outcome {} (dropped silently {}), \
         lost {}, missing at witness {}, duplicates {}, connections accepted {}",
        r.scenario.letter(),
        r.client.name(),
        r.run,
        r.published,
        r.confirmed,
        r.failed,
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" [{}]", kinds.join(", "))
        },
        r.no_outcome,
        r.dropped,
        r.lost,
        r.missing,
        r.duplicates,
        r.accepted,
    );
    if r.loop_errors > 0 {
        line.push_str(&format!(", poll errors {}", r.loop_errors));
    }
    match r.scenario {
        Scenario::A => {
            let list = |v: &[Option<Duration>]| {
                v.iter().map(|d| fmt_opt(*d)).collect::<Vec<_>>().join(", ")
            };
            line.push_str(&format!(
                "; reconnect after each sever [{}]; first confirm [{}]; recovered before the next {}/{}; severs that found no connection {}",
                list(&r.reconnects),
                list(&r.sever_confirms),
                r.recovered,
                r.reconnects.len(),
                r.severs_without_link,
            ));
        }
        Scenario::B => line.push_str(&format!(
            "; declared dead after {}; connections accepted in the blackhole {}{}; back {} and first confirm {} after the lift",
            fmt_opt(r.dead),
            r.attempts,
            engine_attempts(r),
            fmt_opt(r.back),
            fmt_opt(r.first_confirm),
        )),
        Scenario::C => line.push_str(&format!(
            "; connection attempts in the outage {}{}; back {} and first confirm {} after the restore",
            r.attempts,
            engine_attempts(r),
            fmt_opt(r.back),
            fmt_opt(r.first_confirm),
        )),
    }
    line.push_str(&format!("; ended {:?}; load {}", r.end, r.load));
    if !r.notes.is_empty() {
        line.push_str(&format!("; notes: {}", r.notes.join("; ")));
    }
    println!("{line}");
}

fn print_tables(results: &[RunResult], runs: usize) {
    let scenarios: BTreeSet<Scenario> = results.iter().map(|r| r.scenario).collect();
    let clients: BTreeSet<ClientKind> = results.iter().map(|r| r.client).collect();
    println!();
    println!("## Medians (min–max) over {runs} run(s) per scenario and client");
    for s in scenarios {
        println!();
        println!("### {}", s.title());
        println!();
        match s {
            Scenario::A => {
                println!(
                    "| client | failed | no outcome | lost | reconnect after a sever | first confirm after a sever | severs recovered before the next |"
                );
                println!("|---|---|---|---|---|---|---|");
            }
            Scenario::B => {
                println!(
                    "| client | failed | no outcome | lost | declared dead after | connections accepted in the blackhole | back after the lift | first confirm after the lift |"
                );
                println!("|---|---|---|---|---|---|---|---|");
            }
            Scenario::C => {
                println!(
                    "| client | failed | no outcome | lost | connection attempts in the outage | back after the restore | first confirm after the restore |"
                );
                println!("|---|---|---|---|---|---|---|");
            }
        }
        for &c in &clients {
            let rs: Vec<&RunResult> = results
                .iter()
                .filter(|r| r.scenario == s && r.client == c)
                .collect();
            if rs.is_empty() {
                continue;
            }
            let counts = |f: fn(&RunResult) -> u64| {
                summary_counts(&rs.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            let durations = |f: fn(&RunResult) -> Option<Duration>| {
                summary_durations(&rs.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            let common = format!(
                "| {} | {} | {} | {} |",
                c.name(),
                counts(|r| r.failed),
                counts(|r| r.no_outcome),
                counts(|r| r.lost)
            );
            match s {
                Scenario::A => {
                    let reconnects: Vec<Option<Duration>> =
                        rs.iter().flat_map(|r| r.reconnects.clone()).collect();
                    let confirms: Vec<Option<Duration>> =
                        rs.iter().flat_map(|r| r.sever_confirms.clone()).collect();
                    let recovered: usize = rs.iter().map(|r| r.recovered).sum();
                    println!(
                        "{common} {} | {} | {recovered}/{} |",
                        summary_durations(&reconnects),
                        summary_durations(&confirms),
                        reconnects.len()
                    );
                }
                Scenario::B => println!(
                    "{common} {} | {}{} | {} | {} |",
                    durations(|r| r.dead),
                    counts(|r| r.attempts as u64),
                    engine_cell(&rs),
                    durations(|r| r.back),
                    durations(|r| r.first_confirm)
                ),
                Scenario::C => println!(
                    "{common} {}{} | {} | {} |",
                    counts(|r| r.attempts as u64),
                    engine_cell(&rs),
                    durations(|r| r.back),
                    durations(|r| r.first_confirm)
                ),
            }
        }
    }
    if scenarios_has(results, Scenario::A) {
        println!();
        println!(
            "A: reconnects and first confirms pooled over every sever of every run; recovered counts severs."
        );
    }
    if scenarios_has(results, Scenario::B) || scenarios_has(results, Scenario::C) {
        println!(
            "B, C: connection attempts are TCP connections the proxy saw (redial's reachability probes included); \
         \"engine\" counts redial's full connection attempts among them."
        );
    }
}

/// ", engine N" when the client counts its own full attempts (redial).
fn engine_cell(rs: &[&RunResult]) -> String {
    let n: Vec<u64> = rs
        .iter()
        .filter_map(|r| r.engine_attempts.map(|n| n as u64))
        .collect();
    if n.is_empty() {
        String::new()
    } else {
        format!(", engine {}", summary_counts(&n))
    }
}

fn scenarios_has(results: &[RunResult], s: Scenario) -> bool {
    results.iter().any(|r| r.scenario == s)
}

// ---------------------------------------------------------------------------
// Command line.

fn usage(error: &str) -> ! {
    eprintln!("recovery: {error}");
    eprintln!(
        "usage: recovery [--runs N] [--scenario a|b|c|all] [--client redial-amqp|redial-mqtt|lapin|rumqttc|all]"
    );
    std::process::exit(2);
}

struct Options {
    runs: usize,
    scenarios: Vec<Scenario>,
    clients: Vec<ClientKind>,
}

fn parse(args: impl Iterator<Item = String>) -> Options {
    let mut options = Options {
        runs: 3,
        scenarios: Scenario::ALL.to_vec(),
        clients: ClientKind::ALL.to_vec(),
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--runs" => {
                options.runs = value("--runs")
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| usage("--runs N, N >= 1"));
            }
            "--scenario" => {
                options.scenarios = match value("--scenario").to_ascii_lowercase().as_str() {
                    "a" => vec![Scenario::A],
                    "b" => vec![Scenario::B],
                    "c" => vec![Scenario::C],
                    "all" => Scenario::ALL.to_vec(),
                    other => usage(&format!("unknown scenario {other}")),
                }
            }
            "--client" => {
                let v = value("--client");
                options.clients = if v == "all" {
                    ClientKind::ALL.to_vec()
                } else {
                    vec![
                        ClientKind::ALL
                            .into_iter()
                            .find(|c| c.name() == v)
                            .unwrap_or_else(|| usage(&format!("unknown client {v}"))),
                    ]
                };
            }
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown option {other}")),
        }
    }
    options
}

#[tokio::main]
async fn main() {
    // `REDIAL_LOG=redial=debug,lapin=debug` (a tracing filter) prints logs to stderr.
    if let Ok(filter) = std::env::var("REDIAL_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let options = parse(std::env::args().skip(1));
    let amqp = options.clients.iter().any(|c| c.is_amqp());
    let mqtt = options.clients.iter().any(|c| !c.is_amqp());
    if amqp && !support::brokers::amqp_available() {
        eprintln!("recovery: RabbitMQ is not reachable on {AMQP_BROKER}");
        std::process::exit(2);
    }
    if mqtt && !support::mosquitto::binary_available() {
        eprintln!("recovery: the mosquitto binary is missing (a private broker per run)");
        std::process::exit(2);
    }

    let head =
        command_output("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".into());
    let dirty = command_output("git", &["status", "--porcelain", "--", "src"])
        .map_or(0, |s| s.lines().count());
    let started = command_output("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]).unwrap_or_default();
    let load_start = loadavg();
    println!("# Recovery side by side (examples/recovery.rs)");
    println!();
    println!(
        "{started}; {} core(s); load average at the start {load_start}; redial at {head}{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if dirty > 0 {
            format!(" with {dirty} uncommitted file(s) in src/")
        } else {
            String::new()
        }
    );
    println!(
        "clients: redial-amqp / redial-mqtt with the defaults (heartbeat / keep-alive 5 s, default outbox); \
         lapin {} with its built-in recovery (ConnectionProperties::enable_auto_recover, default backoff), \
         one publish at a time awaiting its confirm, wait_for_recovery after an error, failed messages not retried; \
         rumqttc {} polled again at once after an error (its README suggests no delay), QoS 1, clean session",
        locked_version("lapin"),
        locked_version("rumqttc")
    );
    println!(
        "runs: {}, scenarios: {}, clients: {}",
        options.runs,
        options
            .scenarios
            .iter()
            .map(|s| s.letter())
            .collect::<Vec<_>>()
            .join(" "),
        options
            .clients
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();

    let mut results = Vec::new();
    let mut harness_errors = Vec::new();
    for run in 1..=options.runs {
        for &scenario in &options.scenarios {
            for &client in &options.clients {
                match run_once(scenario, client, run).await {
                    Ok(r) => {
                        print_run(&r);
                        results.push(r);
                    }
                    Err(e) => {
                        println!(
                            "{} {:<11} run {run}: HARNESS ERROR: {e}",
                            scenario.letter(),
                            client.name()
                        );
                        harness_errors.push(e);
                    }
                }
                // Let the broker settle between runs.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    print_tables(&results, options.runs);
    println!();
    println!(
        "load average: start {load_start}, end {}; finished {}",
        loadavg(),
        command_output("date", &["-u", "+%H:%M:%S UTC"]).unwrap_or_default()
    );
    if !harness_errors.is_empty() {
        eprintln!("recovery: {} harness error(s)", harness_errors.len());
        std::process::exit(1);
    }
}
