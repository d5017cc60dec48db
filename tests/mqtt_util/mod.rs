//! Helpers shared by the MQTT broker tests (declared once in a test binary's `main.rs`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redial::machine::{ConfigBuilder, Generation};
use redial::mqtt::rumqttc::{self, AsyncClient, Event as MqttEvent, MqttOptions, Packet};
use redial::mqtt::{Messages, MqttConfig, MqttMessage, MqttTransport, QoS};
use redial::outbox::{OutboxConfig, Publisher, Receipt};
use redial::runtime::{Engine, Event};
use tokio::task::JoinHandle;

use crate::support::mosquitto::Mosquitto;

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The local broker's address.
pub fn local_broker() -> SocketAddr {
    "127.0.0.1:1883".parse().unwrap()
}

/// A message whose payload is its id.
/// (payload id, confirmed on generation or the error, when it resolved).
pub type Outcome = (u64, Result<Generation, String>, Instant);

/// Resolves `receipt` on its own task and records its outcome.
pub fn track(outcomes: &Arc<Mutex<Vec<Outcome>>>, id: u64, receipt: Receipt) -> JoinHandle<()> {
    let outcomes = outcomes.clone();
    tokio::spawn(async move {
        let r = receipt
            .await
            .map(|c| c.generation)
            .map_err(|e| e.to_string());
        outcomes.lock().unwrap().push((id, r, Instant::now()));
    })
}

/// Publishes QoS 1 messages 1, 2, 3... to a topic at a steady rate until
/// stopped (or `limit` messages), recording every outcome.
pub struct Steady {
    pub outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<(u64, Vec<JoinHandle<()>>)>,
}

impl Steady {
    pub fn start(
        publisher: Publisher<MqttTransport>,
        topic: &str,
        every: Duration,
        limit: u64,
    ) -> Self {
        let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let outcomes = outcomes.clone();
            let stop = stop.clone();
            let topic = topic.to_owned();
            async move {
                let mut tick = tokio::time::interval(every);
                let mut waiters = Vec::new();
                let mut id = 0u64;
                while !stop.load(Ordering::Relaxed) && id < limit {
                    tick.tick().await;
                    id += 1;
                    let receipt = publisher
                        .publish(message(&topic, id, QoS::AtLeastOnce))
                        .await;
                    waiters.push(track(&outcomes, id, receipt));
                }
                (id, waiters)
            }
        });
        Self {
            outcomes,
            stop,
            task,
        }
    }

    /// Every outcome so far.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// Stops, waits until every receipt resolved (30 s each at most) and
    /// returns (messages published, their outcomes).
    pub async fn finish(self) -> (u64, Vec<Outcome>) {
        self.stop.store(true, Ordering::Relaxed);
        let (published, waiters) = self.task.await.unwrap();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(30), w)
                .await
                .expect("every receipt resolves")
                .unwrap();
        }
        let outcomes = self.outcomes.lock().unwrap().clone();
        (published, outcomes)
    }
}

pub fn message(topic: &str, id: u64, qos: QoS) -> MqttMessage {
    MqttMessage::new(topic, qos, id.to_string())
}

/// A plain rumqttc subscriber connected straight to the broker (not
/// through the proxy): the independent witness of what reached it.
pub struct Witness {
    received: Arc<Mutex<HashMap<u64, u32>>>,
    errors: Arc<AtomicU64>,
    client: AsyncClient,
    task: JoinHandle<()>,
}

impl Witness {
    /// Connects straight to `broker`, subscribes to `topic` at QoS 1 and
    /// waits for the SUBACK.
    ///
    /// Only a private broker with a deep queue will do: one that drops
    /// messages queued for a slow subscriber (the system Mosquitto keeps
    /// the default `max_queued_messages 1000`) would make the witness
    /// count the broker's drops as redial's losses.
    pub async fn start(broker: &Mosquitto, topic: &str) -> Witness {
        assert!(
            broker.is_deep_queue(),
            "a delivery witness needs a broker that never drops (Mosquitto::deep_queue)"
        );
        let addr = broker.addr();
        let mut options = MqttOptions::new(unique("witness"), addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "witness: no SUBACK");
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
                Ok(Ok(MqttEvent::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                other => panic!("witness could not subscribe: {other:?}"),
            }
        }
        let received = Arc::new(Mutex::new(HashMap::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let received = received.clone();
            let errors = errors.clone();
            async move {
                // Bounded: a witness that keeps failing stops counting.
                while errors.load(Ordering::Relaxed) < 50 {
                    match eventloop.poll().await {
                        Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                            if let Some(id) = std::str::from_utf8(&p.payload)
                                .ok()
                                .and_then(|s| s.parse::<u64>().ok())
                            {
                                *received.lock().unwrap().entry(id).or_default() += 1;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        });
        Witness {
            received,
            errors,
            client,
            task,
        }
    }

    /// Distinct ids received.
    pub fn unique(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Deliveries, duplicates included.
    pub fn total(&self) -> u64 {
        self.received
            .lock()
            .unwrap()
            .values()
            .map(|&n| u64::from(n))
            .sum()
    }

    /// Whether `id` arrived.
    pub fn has(&self, id: u64) -> bool {
        self.received.lock().unwrap().contains_key(&id)
    }

    /// The ids received.
    pub fn ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.received.lock().unwrap().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Times the witness's own connection failed (must stay 0 for its
    /// counts to mean anything).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Waits until `n` distinct ids arrived (or `timeout`); returns the count.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while self.unique() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.unique()
    }

    /// Disconnects.
    pub async fn stop(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.task.abort();
    }
}

/// Every engine event with the time it was seen.
#[derive(Clone, Default)]
pub struct EventLog {
    events: Arc<Mutex<Vec<(Instant, Event)>>>,
}

impl EventLog {
    /// Records `engine`'s events from now on.
    pub fn attach(engine: &Engine<MqttTransport>) -> EventLog {
        let log = EventLog::default();
        let mut rx = engine.handle().events();
        let events = log.events.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Some(Ok(e)) => events.lock().unwrap().push((Instant::now(), e)),
                    Some(Err(_lagged)) => {}
                    None => break,
                }
            }
        });
        log
    }

    /// The events so far.
    pub fn events(&self) -> Vec<(Instant, Event)> {
        self.events.lock().unwrap().clone()
    }

    /// When each attempt started.
    pub fn attempt_times(&self) -> Vec<Instant> {
        self.events()
            .into_iter()
            .filter_map(|(t, e)| matches!(e, Event::AttemptStarted { .. }).then_some(t))
            .collect()
    }
}

/// A redial MQTT client: engine, transport, outbox publisher and messages.
pub struct Client {
    pub engine: Engine<MqttTransport>,
    pub transport: MqttTransport,
    pub publisher: Publisher<MqttTransport>,
    pub messages: Messages,
    pub log: EventLog,
}

impl Client {
    /// Builds and starts a client (subscriptions made with `before` are
    /// recorded before the engine starts).
    pub fn start(config: MqttConfig, engine: ConfigBuilder, outbox: OutboxConfig) -> Client {
        let transport = MqttTransport::new(config).unwrap();
        let messages = transport.messages().unwrap();
        let engine = Engine::spawn(engine.build().unwrap(), transport.clone());
        let log = EventLog::attach(&engine);
        let publisher = Publisher::new(&engine, transport.clone(), outbox);
        Client {
            engine,
            transport,
            publisher,
            messages,
            log,
        }
    }

    /// Waits until the engine is connected (or panics after `timeout`).
    pub async fn connected(&self, timeout: Duration) {
        let handle = self.engine.handle();
        tokio::time::timeout(
            timeout,
            handle.wait_for(redial::machine::StateKind::Connected),
        )
        .await
        .expect("engine did not connect in time");
    }

    /// Shuts everything down.
    pub async fn stop(self) {
        self.publisher.shutdown(Duration::from_secs(2)).await;
        self.engine.shutdown().await;
    }
}

/// Receives messages until one whose payload is `payload` arrives.
pub async fn recv_payload(
    messages: &mut Messages,
    payload: &str,
    timeout: Duration,
) -> Option<redial::mqtt::Message> {
    tokio::time::timeout(timeout, async {
        loop {
            let Ok(m) = messages.recv().await? else {
                continue;
            };
            if m.payload() == payload.as_bytes() {
                return Some(m);
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Keeps clippy quiet about the unused re-export in some test binaries.
pub fn _touch(_: rumqttc::QoS) {}

/// A scripted MQTT 3.1.1 broker for answers Mosquitto will not give: it
/// answers CONNECT with `connack_code`, SUBSCRIBE with `suback_code` for
/// every filter, PINGREQ with PINGRESP, and counts connections.
pub struct FakeBroker {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FakeBroker {
    /// Starts on a free loopback port.
    pub async fn start(connack_code: u8, suback_code: u8) -> FakeBroker {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    loop {
                        let mut first = [0u8; 1];
                        if s.read_exact(&mut first).await.is_err() {
                            return;
                        }
                        let (mut len, mut shift) = (0usize, 0);
                        loop {
                            let mut b = [0u8; 1];
                            if s.read_exact(&mut b).await.is_err() {
                                return;
                            }
                            len |= usize::from(b[0] & 0x7f) << shift;
                            shift += 7;
                            if b[0] & 0x80 == 0 {
                                break;
                            }
                        }
                        let mut body = vec![0u8; len];
                        if s.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let reply: Vec<u8> = match first[0] >> 4 {
                            1 => vec![0x20, 0x02, 0x00, connack_code],
                            8 => {
                                // Count the filters: (len16, bytes, qos) after the pkid.
                                let mut n = 0;
                                let mut i = 2;
                                while i + 2 <= body.len() {
                                    let l = usize::from(body[i]) << 8 | usize::from(body[i + 1]);
                                    i += 2 + l + 1;
                                    n += 1;
                                }
                                let mut r = vec![0x90, 2 + n as u8, body[0], body[1]];
                                r.extend(std::iter::repeat_n(suback_code, n));
                                r
                            }
                            12 => vec![0xD0, 0x00],
                            14 => return,
                            _ => continue,
                        };
                        if s.write_all(&reply).await.is_err() {
                            return;
                        }
                        if first[0] >> 4 == 1 && connack_code != 0 {
                            return;
                        }
                    }
                });
            }
        });
        FakeBroker {
            addr,
            connections,
            task,
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes one QoS 1 message straight to the broker with a plain rumqttc
/// client (connect, publish, PUBACK, disconnect).
pub async fn publish_direct(addr: SocketAddr, topic: &str, payload: &str) {
    let options = MqttOptions::new(unique("direct"), addr.ip().to_string(), addr.port());
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::PubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("direct publisher: {e}"),
            }
        }
    })
    .await
    .expect("PUBACK");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
}

/// Removes a persistent session from the broker (connect clean, leave).
pub async fn forget_session(addr: SocketAddr, client_id: &str) {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let _ = tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
}

/// Waits for the engine's `GaveUp` event and returns the transport error
/// it carries (the snapshot says `Failed` a moment before the event is sent).
pub async fn gave_up(
    events: &mut redial::runtime::EventStream,
    timeout: Duration,
) -> redial::runtime::SharedError {
    tokio::time::timeout(timeout, async {
        loop {
            match events.recv().await {
                Some(Ok(Event::GaveUp { error, .. })) => {
                    break error.expect("the cause is surfaced");
                }
                Some(Ok(_) | Err(_)) => {}
                None => panic!("events ended: the engine is gone"),
            }
        }
    })
    .await
    .expect("the engine gave up")
}

/// Publishes `count` messages of `size` bytes (the id, zero-padded to 8
/// digits, then padding) to `topic` with a plain rumqttc client straight to
/// the broker, and returns once every PUBACK arrived (QoS 1) or every
/// PUBLISH was written (QoS 0).
pub async fn publish_many(
    addr: SocketAddr,
    topic: &str,
    ids: std::ops::Range<u64>,
    size: usize,
    qos: QoS,
) {
    let mut options = MqttOptions::new(unique("bulk"), addr.ip().to_string(), addr.port());
    options.set_inflight(100);
    options.set_max_packet_size(size + 1024, size + 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let count = ids.end - ids.start;
    let topic = topic.to_string();
    let sender = tokio::spawn(async move {
        for id in ids {
            client
                .publish(topic.clone(), qos, false, padded(id, size))
                .await
                .unwrap();
        }
        client
    });
    let mut done = 0;
    tokio::time::timeout(Duration::from_secs(120), async {
        while done < count {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => done += 1,
                Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Publish(_)))
                    if qos == QoS::AtMostOnce =>
                {
                    done += 1
                }
                Ok(_) => {}
                Err(e) => panic!("bulk publisher: {e}"),
            }
        }
    })
    .await
    .expect("bulk publisher finished");
    let client = sender.await.unwrap();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
}

/// A payload of `size` bytes starting with `id` as 8 digits.
pub fn padded(id: u64, size: usize) -> Vec<u8> {
    let mut p = format!("{id:08}").into_bytes();
    p.resize(size.max(8), b'.');
    p
}

/// The id at the start of a [`padded`] payload.
pub fn id_of(payload: &[u8]) -> u64 {
    std::str::from_utf8(&payload[..8.min(payload.len())])
        .unwrap()
        .parse()
        .unwrap()
}

/// This process's resident set size in KiB (Linux; 0 elsewhere).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
