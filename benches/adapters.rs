//! The adapters against the raw clients, in one run, against the local
//! brokers (RabbitMQ on 127.0.0.1:5672, Mosquitto on 127.0.0.1:1883), and
//! recovery through the chaos proxy.
//!
//! ```sh
//! cargo bench --features amqp,mqtt --bench adapters
//! REDIAL_BENCH_MESSAGES=2000 REDIAL_BENCH_ROUNDS=1 cargo bench --features amqp,mqtt --bench adapters   # quick
//! REDIAL_BENCH_ONLY=consume cargo bench --features amqp,mqtt --bench adapters   # some sections only
//! ```
//!
//! `REDIAL_BENCH_MESSAGES` (default 20,000) and `REDIAL_BENCH_ROUNDS`
//! (default 5) size every section; `REDIAL_BENCH_ONLY`, a comma-separated
//! list of `publish`, `consume` and `recovery`, runs only those (unset:
//! all).
//!
//! **Overhead.** Each round publishes the same messages through the raw
//! client and through redial, alternately, so both see the same machine
//! load. Both keep the same number of publishes awaiting their confirm
//! (the window) and await the confirms in a separate task, in order, so
//! that a message's latency is the time from the publish call to its
//! confirm in both cases:
//!
//! * AMQP: plain lapin with `confirm.select` versus redial's
//!   [`Publisher`] over [`AmqpTransport`] (a queue on the default
//!   exchange, 100-byte transient messages, window 256);
//! * MQTT: plain rumqttc at QoS 1, with the PUBACK of each packet id
//!   matched to its publish (what a caller needs to know a message
//!   arrived), versus redial's [`Publisher`] over [`MqttTransport`]
//!   (window 100, rumqttc's in-flight limit in both).
//!
//! Then the same one message at a time (window 1) for the latency alone.
//!
//! **Consume.** Each round runs the raw consumer then redial's, each on its
//! own fresh, uniquely named queue or topic, and prints both rates and
//! their ratio, then the medians over the rounds:
//!
//! * AMQP consume with acks: a queue filled with N 100-byte messages by
//!   plain lapin with confirms (untimed), then consumed with manual acks
//!   and a per-consumer prefetch of 256 on both sides (redial's default
//!   [`DEFAULT_PREFETCH`]): plain lapin (`basic.qos`, `basic.consume`, one
//!   awaited `basic.ack` per delivery) versus redial's
//!   [`Consumer`](redial::amqp::Consumer) ([`AmqpTransport::consume`] on a
//!   connected engine, one awaited
//!   [`Delivery::ack`](redial::amqp::Delivery::ack) per delivery). Timed
//!   from the consume call to the N-th ack; the queue is deleted after.
//! * MQTT QoS 1 subscribe: a plain rumqttc publisher sends N 100-byte QoS 1
//!   messages to a fresh topic the subscriber under test subscribed to
//!   first (SUBACK received). The publisher is paced end to end: at most
//!   200 messages published and not yet received, well under Mosquitto's
//!   `max_queued_messages` (1000), so the broker drops nothing. Both
//!   subscribers use manual acks, as redial's links do: plain rumqttc
//!   (`AsyncClient` + `EventLoop`, each `Incoming::Publish` acked from the
//!   polling loop with `try_ack`) versus redial's
//!   [`Messages`](redial::mqtt::Messages) stream
//!   ([`MqttTransport::subscribe`], then
//!   [`Messages::recv`](redial::mqtt::Messages::recv), which acks each
//!   message as the application takes it). Timed from the first message
//!   received to the N-th. Each round also says how often the publisher
//!   waited for the pace window (often: the subscriber is the bottleneck;
//!   never: the publisher is).
//!
//! Every wait is bounded (30 s plus 1 ms per message); a consumer that
//! got fewer than N by then is reported with what it got.
//!
//! **Recovery** (through the chaos proxy, one message at a time while it
//! happens):
//!
//! * sever: the proxy resets the link while the broker stays up; the time
//!   from the reset to the first confirm after it, against the time a raw
//!   client takes to open a fresh connection through the same proxy (the
//!   limit: the first retry is immediate);
//! * refused then restored: the proxy refuses connections for 2.5 s after
//!   the reset; the time from the restore to the first confirm, against
//!   the backoff schedule's next attempt (1 s, x2, no jitter: attempts at
//!   0, 1 and 3 s) plus that same connection time;
//! * half-open: the proxy stops forwarding but keeps the sockets open; the
//!   time until the engine leaves `Connected`, against the bound of 1.5 x
//!   the heartbeat (AMQP) or keep-alive (MQTT).
//!
//! Without a broker the bench says so and measures nothing.

// A publish is an async call that yields the confirm, itself a future: the
// window needs both, so that shape is the point here.
#![allow(clippy::async_yields_async)]

#[allow(dead_code)]
#[path = "../tests/support/chaos.rs"]
mod chaos;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redial::amqp::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use redial::amqp::lapin::types::FieldTable;
use redial::amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
use redial::amqp::{AmqpConfig, AmqpMessage, AmqpTransport, DEFAULT_PREFETCH, Heartbeat};
use redial::backoff::{Backoff, Jitter};
use redial::machine::{Generation, StateKind};
use redial::mqtt::rumqttc::{self, AsyncClient, Event as MqttEvent, MqttOptions, Outgoing, Packet};
use redial::mqtt::{MqttConfig, MqttMessage, MqttTransport, QoS};
use redial::outbox::{OutboxConfig, Publisher};
use redial::runtime::{Engine, Event, Handle};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use tokio::sync::{Semaphore, mpsc, oneshot};

const AMQP_ADDR: &str = "127.0.0.1:5672";
const MQTT_ADDR: &str = "127.0.0.1:1883";
const PAYLOAD: usize = 100;
const AMQP_WINDOW: usize = 256;
const MQTT_WINDOW: usize = 100;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("redial.bench.{prefix}.{}.{nanos}", std::process::id())
}

/// Whether `REDIAL_BENCH_ONLY` (a comma-separated list of `publish`,
/// `consume`, `recovery`; unset: all) selects `section`.
fn selected(section: &str) -> bool {
    match std::env::var("REDIAL_BENCH_ONLY") {
        Ok(only) if !only.trim().is_empty() => only.split(',').any(|s| s.trim() == section),
        _ => true,
    }
}

fn reachable(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .is_ok_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

// ---- measuring ------------------------------------------------------------

/// One timed run: messages per second and latency percentiles.
#[derive(Debug, Clone, Copy)]
struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn median_d(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Publishes `n` messages with at most `window` awaiting their confirm.
/// `send(i)` publishes message `i` and returns its confirm, which a
/// separate task awaits in order (confirms come back in order).
async fn windowed<S, SF, C>(n: usize, window: usize, mut send: S) -> Run
where
    S: FnMut(usize) -> SF,
    SF: Future<Output = C>,
    C: Future<Output = bool> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(window));
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, C)>();
    let waiter = {
        let permits = permits.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            let mut failed = 0usize;
            while let Some((sent, confirm)) = rx.recv().await {
                if !confirm.await {
                    failed += 1;
                }
                latencies.push(sent.elapsed());
                permits.add_permits(1);
            }
            (latencies, failed)
        })
    };
    let start = Instant::now();
    for i in 0..n {
        permits.acquire().await.expect("semaphore").forget();
        let sent = Instant::now();
        let confirm = send(i).await;
        let _ = tx.send((sent, confirm));
    }
    drop(tx);
    let (mut latencies, failed) = waiter.await.expect("confirm task");
    let elapsed = start.elapsed();
    assert_eq!(failed, 0, "{failed} publishes were not confirmed");
    latencies.sort();
    Run {
        rate: n as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    }
}

/// Medians over rounds of the raw client and of redial, and their ratio.
fn report(what: &str, raw: &[Run], redial: &[Run]) {
    let rate = |runs: &[Run]| median(runs.iter().map(|r| r.rate).collect());
    let p =
        |runs: &[Run], f: fn(&Run) -> Duration| median_d(&runs.iter().map(f).collect::<Vec<_>>());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what}: raw {:.0} msg/s (p50 {:.2} ms, p99 {:.2} ms) | redial {:.0} msg/s (p50 {:.2} ms, p99 {:.2} ms) | \
         throughput ratio {:.3}, p50 ratio {:.2}, p99 ratio {:.2} (medians of {} rounds)",
        rate(raw),
        ms(p(raw, |r| r.p50)),
        ms(p(raw, |r| r.p99)),
        rate(redial),
        ms(p(redial, |r| r.p50)),
        ms(p(redial, |r| r.p99)),
        rate(redial) / rate(raw),
        ms(p(redial, |r| r.p50)) / ms(p(raw, |r| r.p50)),
        ms(p(redial, |r| r.p99)) / ms(p(raw, |r| r.p99)),
        raw.len()
    );
}

// ---- AMQP -------------------------------------------------------------------

fn amqp_uri(addr: &str) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

async fn amqp_raw(queue: &str, n: usize, window: usize) -> Run {
    let conn = Connection::connect(&amqp_uri(AMQP_ADDR), ConnectionProperties::default())
        .await
        .expect("a lapin connection");
    let ch = conn.create_channel().await.expect("a channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let payload = vec![7u8; PAYLOAD];
    let run = windowed(n, window, |_| {
        let ch = ch.clone();
        let payload = payload.clone();
        async move {
            let confirm = ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &payload,
                    BasicProperties::default(),
                )
                .await
                .expect("basic.publish");
            async move { confirm.await.is_ok() }
        }
    })
    .await;
    let _ = conn.close(200, "done".into()).await;
    run
}

async fn amqp_redial(queue: &str, n: usize, window: usize) -> Run {
    let config = AmqpConfig::new(amqp_uri(AMQP_ADDR)).connection_name("redial-bench");
    let transport = AmqpTransport::new(config.clone()).expect("transport");
    let engine = Engine::spawn(
        config.engine_config().build().expect("config"),
        transport.clone(),
    );
    engine.handle().wait_for(StateKind::Connected).await;
    let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
    let payload: Arc<[u8]> = vec![7u8; PAYLOAD].into();
    let run = windowed(n, window, |_| {
        let message = AmqpMessage::new("", queue, payload.clone());
        let publisher = publisher.clone();
        async move {
            let receipt = publisher.publish(message).await;
            async move { receipt.await.is_ok() }
        }
    })
    .await;
    publisher.shutdown(Duration::from_secs(5)).await;
    engine.shutdown().await;
    run
}

async fn amqp_queue(declare: bool, queue: &str) {
    let conn = Connection::connect(&amqp_uri(AMQP_ADDR), ConnectionProperties::default())
        .await
        .expect("a lapin connection");
    let ch = conn.create_channel().await.expect("a channel");
    if declare {
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
    } else {
        let _ = ch
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

async fn amqp_overhead(n: usize, rounds: usize) {
    let queue = unique("overhead");
    amqp_queue(true, &queue).await;
    // Warm both paths up (connections, the broker's queue process).
    amqp_raw(&queue, 500, AMQP_WINDOW).await;
    amqp_redial(&queue, 500, AMQP_WINDOW).await;
    for (window, n) in [(AMQP_WINDOW, n), (1, (n / 10).max(100))] {
        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            raw.push(amqp_raw(&queue, n, window).await);
            ours.push(amqp_redial(&queue, n, window).await);
        }
        report(
            &format!("AMQP confirms, {n} messages, window {window}"),
            &raw,
            &ours,
        );
    }
    amqp_queue(false, &queue).await;
}

// ---- MQTT -------------------------------------------------------------------

/// Matches PUBACKs to publishes: the n-th `Outgoing::Publish` is the n-th
/// publish call (one publishing task), and its PUBACK carries its packet id.
#[derive(Default)]
struct Acks {
    waiting: VecDeque<oneshot::Sender<()>>,
    by_pkid: HashMap<u16, oneshot::Sender<()>>,
}

async fn mqtt_raw(n: usize, window: usize) -> Run {
    let mut options = MqttOptions::new(unique("raw"), "127.0.0.1", 1883);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(MQTT_WINDOW as u16)
        .set_request_channel_capacity(64);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let acks = Arc::new(Mutex::new(Acks::default()));
    let (connected_tx, connected_rx) = oneshot::channel();
    let poller = {
        let acks = acks.clone();
        tokio::spawn(async move {
            let mut connected = Some(connected_tx);
            while let Ok(event) = eventloop.poll().await {
                match event {
                    MqttEvent::Incoming(Packet::ConnAck(_)) => {
                        if let Some(tx) = connected.take() {
                            let _ = tx.send(());
                        }
                    }
                    MqttEvent::Outgoing(Outgoing::Publish(pkid)) => {
                        let mut a = acks.lock().expect("acks");
                        if let Some(tx) = a.waiting.pop_front() {
                            a.by_pkid.insert(pkid, tx);
                        }
                    }
                    MqttEvent::Incoming(Packet::PubAck(ack)) => {
                        if let Some(tx) = acks.lock().expect("acks").by_pkid.remove(&ack.pkid) {
                            let _ = tx.send(());
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    connected_rx.await.expect("CONNACK");
    let topic = unique("t");
    let payload = vec![7u8; PAYLOAD];
    let run = windowed(n, window, |_| {
        let (tx, rx) = oneshot::channel();
        acks.lock().expect("acks").waiting.push_back(tx);
        let client = client.clone();
        let topic = topic.clone();
        let payload = payload.clone();
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
            async move { rx.await.is_ok() }
        }
    })
    .await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    run
}

async fn mqtt_redial(n: usize, window: usize) -> Run {
    let config = MqttConfig::new("127.0.0.1", 1883, unique("redial"));
    let transport = MqttTransport::new(config.clone()).expect("transport");
    let engine = Engine::spawn(
        config.engine_config().build().expect("config"),
        transport.clone(),
    );
    engine.handle().wait_for(StateKind::Connected).await;
    let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
    let topic = unique("t");
    let payload = vec![7u8; PAYLOAD];
    let run = windowed(n, window, |_| {
        let message = MqttMessage::new(topic.clone(), QoS::AtLeastOnce, payload.clone());
        let publisher = publisher.clone();
        async move {
            let receipt = publisher.publish(message).await;
            async move { receipt.await.is_ok() }
        }
    })
    .await;
    publisher.shutdown(Duration::from_secs(5)).await;
    engine.shutdown().await;
    run
}

async fn mqtt_overhead(n: usize, rounds: usize) {
    mqtt_raw(500, MQTT_WINDOW).await;
    mqtt_redial(500, MQTT_WINDOW).await;
    for (window, n) in [(MQTT_WINDOW, n), (1, (n / 10).max(100))] {
        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            raw.push(mqtt_raw(n, window).await);
            ours.push(mqtt_redial(n, window).await);
        }
        report(
            &format!("MQTT QoS 1, {n} messages, window {window}"),
            &raw,
            &ours,
        );
    }
}

// ---- consume ----------------------------------------------------------------

/// One timed consumer run: how many of the `n` messages it got before its
/// deadline, and at what rate.
#[derive(Debug, Clone, Copy)]
struct Consumed {
    n: usize,
    received: usize,
    rate: f64,
}

/// How long a consumer may take for `n` messages before the bench gives up
/// on it (and reports what it got).
fn consume_deadline(n: usize) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(30) + Duration::from_millis(n as u64)
}

/// Per round raw / redial / ratio, then the medians over the rounds.
fn report_consume(what: &str, raw: &[Consumed], redial: &[Consumed], note: &[String]) {
    let short = |c: &Consumed| {
        if c.received < c.n {
            format!(" (only {}/{} within the deadline)", c.received, c.n)
        } else {
            String::new()
        }
    };
    println!("{what}:");
    for (i, (r, o)) in raw.iter().zip(redial).enumerate() {
        println!(
            "  round {}: raw {:.0} msg/s{} | redial {:.0} msg/s{} | ratio {:.3}{}",
            i + 1,
            r.rate,
            short(r),
            o.rate,
            short(o),
            o.rate / r.rate,
            note.get(i).map(String::as_str).unwrap_or_default()
        );
    }
    let rate = |runs: &[Consumed]| median(runs.iter().map(|r| r.rate).collect());
    let ratios = median(
        raw.iter()
            .zip(redial)
            .map(|(r, o)| o.rate / r.rate)
            .collect(),
    );
    println!(
        "{what}: raw {:.0} msg/s | redial {:.0} msg/s | throughput ratio {:.3}, \
         per-round ratio {:.3} (medians of {} rounds)",
        rate(raw),
        rate(redial),
        rate(redial) / rate(raw),
        ratios,
        raw.len()
    );
}

/// The consumers' prefetch, the same on both sides (redial's default).
const CONSUME_PREFETCH: u16 = DEFAULT_PREFETCH;

/// Declares `queue` and fills it with `n` messages of `PAYLOAD` bytes,
/// published with confirms (untimed).
async fn amqp_fill(queue: &str, n: usize) {
    let conn = Connection::connect(&amqp_uri(AMQP_ADDR), ConnectionProperties::default())
        .await
        .expect("a lapin connection");
    let ch = conn.create_channel().await.expect("a channel");
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let payload = vec![7u8; PAYLOAD];
    for _ in 0..n {
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &payload,
            BasicProperties::default(),
        )
        .await
        .expect("basic.publish");
    }
    ch.wait_for_confirms().await.expect("confirms");
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let ready = ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .expect("queue.declare passive")
        .message_count();
    assert_eq!(ready as usize, n, "the queue holds the {n} messages");
    let _ = conn.close(200, "done".into()).await;
}

/// Plain lapin: `basic.qos`, `basic.consume` with manual acks, one
/// `basic.ack` per delivery, awaited. Timed from `basic.consume` to the
/// n-th ack.
async fn amqp_consume_raw(queue: &str, n: usize) -> Consumed {
    let conn = Connection::connect(&amqp_uri(AMQP_ADDR), ConnectionProperties::default())
        .await
        .expect("a lapin connection");
    let ch = conn.create_channel().await.expect("a channel");
    ch.basic_qos(CONSUME_PREFETCH, BasicQosOptions { global: false })
        .await
        .expect("basic.qos");
    let deadline = consume_deadline(n);
    let start = Instant::now();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let mut received = 0;
    while received < n {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("basic.ack");
                received += 1;
            }
            Ok(Some(Err(e))) => {
                println!("  raw consumer: {e}");
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let elapsed = start.elapsed();
    let _ = conn.close(200, "done".into()).await;
    Consumed {
        n,
        received,
        rate: received as f64 / elapsed.as_secs_f64(),
    }
}

/// redial: [`AmqpTransport::consume`] on a connected engine (prefetch set
/// through [`AmqpConfig::prefetch`]), [`Delivery::ack`](redial::amqp::Delivery::ack)
/// per delivery, awaited. Timed from the consume call to the n-th ack.
async fn amqp_consume_redial(queue: &str, n: usize) -> Consumed {
    let config = AmqpConfig::new(amqp_uri(AMQP_ADDR))
        .connection_name("redial-bench-consume")
        .prefetch(CONSUME_PREFETCH);
    let transport = AmqpTransport::new(config.clone()).expect("transport");
    let engine = Engine::spawn(
        config.engine_config().build().expect("config"),
        transport.clone(),
    );
    engine
        .handle()
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("connected");
    let deadline = consume_deadline(n);
    let start = Instant::now();
    let mut consumer = transport
        .consume(
            queue,
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut received = 0;
    while received < n {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Some(delivery)) => {
                delivery.ack().await.expect("ack");
                received += 1;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let elapsed = start.elapsed();
    consumer.cancel().await;
    engine.shutdown().await;
    Consumed {
        n,
        received,
        rate: received as f64 / elapsed.as_secs_f64(),
    }
}

/// A fresh queue of `n` messages for one side of one round, consumed, then
/// deleted.
async fn amqp_consume_once(redial: bool, n: usize) -> Consumed {
    let queue = unique(if redial {
        "consume.redial"
    } else {
        "consume.raw"
    });
    amqp_fill(&queue, n).await;
    let run = if redial {
        amqp_consume_redial(&queue, n).await
    } else {
        amqp_consume_raw(&queue, n).await
    };
    amqp_queue(false, &queue).await;
    run
}

async fn amqp_consume(n: usize, rounds: usize) {
    // Warm both paths up.
    amqp_consume_once(false, 500).await;
    amqp_consume_once(true, 500).await;
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        raw.push(amqp_consume_once(false, n).await);
        ours.push(amqp_consume_once(true, n).await);
    }
    report_consume(
        &format!(
            "AMQP consume with acks, {n} messages of {PAYLOAD} B, prefetch {CONSUME_PREFETCH}"
        ),
        &raw,
        &ours,
        &[],
    );
}

/// Messages published but not yet received, at most: well under Mosquitto's
/// `max_queued_messages` (1000), so that the broker drops nothing. (With
/// 500, Mosquitto 2.0.11 still logged "Outgoing messages are being dropped"
/// now and then; with 200 and 300 it never did.)
const MQTT_PACE: usize = 200;

/// A plain rumqttc publisher at QoS 1 (in-flight `MQTT_PACE`, so that it
/// is limited by the pace, not by its own PUBACKs), paced end to end: it
/// takes a permit of `window` per publish, the subscriber gives one back
/// per message received. Returns how many publishes had to wait for one.
struct PacedPublisher {
    client: AsyncClient,
    poller: tokio::task::JoinHandle<()>,
    publishing: tokio::task::JoinHandle<usize>,
    window: Arc<Semaphore>,
}

impl PacedPublisher {
    fn start(topic: &str, n: usize, window: Arc<Semaphore>) -> Self {
        let mut options = MqttOptions::new(unique("pub"), "127.0.0.1", 1883);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(MQTT_PACE as u16)
            .set_request_channel_capacity(64);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let poller = tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, MqttEvent::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        });
        let publishing = {
            let client = client.clone();
            let topic = topic.to_owned();
            let window = window.clone();
            tokio::spawn(async move {
                let payload = vec![7u8; PAYLOAD];
                let mut waited = 0;
                for _ in 0..n {
                    let permit = match window.try_acquire() {
                        Ok(permit) => permit,
                        Err(_) => {
                            waited += 1;
                            match window.acquire().await {
                                Ok(permit) => permit,
                                Err(_) => break,
                            }
                        }
                    };
                    permit.forget();
                    if client
                        .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                waited
            })
        };
        Self {
            client,
            poller,
            publishing,
            window,
        }
    }

    /// Once the subscriber has all it will get: how many publishes waited.
    async fn stop(self) -> usize {
        self.window.close();
        let waited = tokio::time::timeout(Duration::from_secs(5), self.publishing)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let _ = self.client.try_disconnect();
        let mut poller = self.poller;
        if tokio::time::timeout(Duration::from_secs(2), &mut poller)
            .await
            .is_err()
        {
            poller.abort();
        }
        waited
    }
}

/// What the subscriber under test counts: the first and the last arrival.
struct Tally {
    n: usize,
    received: usize,
    first: Option<Instant>,
    last: Option<Instant>,
    window: Arc<Semaphore>,
}

impl Tally {
    fn new(n: usize, window: Arc<Semaphore>) -> Self {
        Self {
            n,
            received: 0,
            first: None,
            last: None,
            window,
        }
    }

    fn one(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.received += 1;
        self.window.add_permits(1);
    }

    /// The rate from the first message to the last one received.
    fn done(&self) -> Consumed {
        let rate = match (self.first, self.last) {
            (Some(first), Some(last)) if self.received > 1 => {
                (self.received - 1) as f64 / (last - first).as_secs_f64()
            }
            _ => 0.0,
        };
        Consumed {
            n: self.n,
            received: self.received,
            rate,
        }
    }
}

/// Plain rumqttc, manual acks (as redial's links): subscribed at QoS 1
/// (SUBACK awaited) before the publisher starts; each `Incoming::Publish`
/// is counted and acknowledged from the polling loop (`try_ack`, which
/// never blocks the loop).
async fn mqtt_subscribe_raw(n: usize) -> (Consumed, usize) {
    let topic = unique("sub.raw");
    let mut options = MqttOptions::new(unique("sub-raw"), "127.0.0.1", 1883);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_manual_acks(true)
        .set_request_channel_capacity(64);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    client
        .subscribe(&topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let subscribed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("raw subscriber: {e}"),
            }
        }
    });
    subscribed.await.expect("SUBACK");

    let window = Arc::new(Semaphore::new(MQTT_PACE));
    let publisher = PacedPublisher::start(&topic, n, window.clone());
    let mut tally = Tally::new(n, window);
    let deadline = consume_deadline(n);
    while tally.received < n {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(MqttEvent::Incoming(Packet::Publish(publish)))) => {
                if publish.topic == topic {
                    tally.one();
                }
                if client.try_ack(&publish).is_err() {
                    let client = client.clone();
                    tokio::spawn(async move { client.ack(&publish).await });
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                println!("  raw subscriber: {e}");
                break;
            }
            Err(_) => break,
        }
    }
    let run = tally.done();
    let waited = publisher.stop().await;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, MqttEvent::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    (run, waited)
}

/// redial: [`MqttTransport::subscribe`] (recorded, restored on the link
/// before the engine reports `Connected`), then
/// [`Messages::recv`](redial::mqtt::Messages::recv) in the application's task, which acknowledges
/// each QoS 1 message as it is taken.
async fn mqtt_subscribe_redial(n: usize) -> (Consumed, usize) {
    let topic = unique("sub.redial");
    let config = MqttConfig::new("127.0.0.1", 1883, unique("sub-redial"));
    let transport = MqttTransport::new(config.clone()).expect("transport");
    let mut messages = transport.messages().expect("taken once");
    transport
        .subscribe(topic.clone(), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let engine = Engine::spawn(
        config.engine_config().build().expect("config"),
        transport.clone(),
    );
    engine
        .handle()
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("connected");

    let window = Arc::new(Semaphore::new(MQTT_PACE));
    let publisher = PacedPublisher::start(&topic, n, window.clone());
    let mut tally = Tally::new(n, window);
    let deadline = consume_deadline(n);
    while tally.received < n {
        match tokio::time::timeout_at(deadline, messages.recv()).await {
            Ok(Some(Ok(message))) => {
                if message.topic() == topic {
                    tally.one();
                }
            }
            Ok(Some(Err(e))) => println!("  redial subscriber: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    let run = tally.done();
    let waited = publisher.stop().await;
    engine.shutdown().await;
    (run, waited)
}

async fn mqtt_consume(n: usize, rounds: usize) {
    mqtt_subscribe_raw(500).await;
    mqtt_subscribe_redial(500).await;
    let (mut raw, mut ours, mut notes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (r, raw_waited) = mqtt_subscribe_raw(n).await;
        let (o, our_waited) = mqtt_subscribe_redial(n).await;
        raw.push(r);
        ours.push(o);
        notes.push(format!(
            " (publisher waited for the window: raw {:.0}%, redial {:.0}% of publishes)",
            raw_waited as f64 * 100.0 / n as f64,
            our_waited as f64 * 100.0 / n as f64
        ));
    }
    report_consume(
        &format!(
            "MQTT QoS 1 subscribe, {n} messages of {PAYLOAD} B, publisher paced to {MQTT_PACE} unreceived"
        ),
        &raw,
        &ours,
        &notes,
    );
}

// ---- recovery ---------------------------------------------------------------

/// When each publish was confirmed, and on which link.
type Confirms = Arc<Mutex<Vec<(Instant, Generation)>>>;

/// Publishes one message at a time until stopped, recording when each
/// publish was confirmed and on which link.
fn confirm_loop<F, Fut>(mut publish_one: F) -> (Confirms, tokio::task::JoinHandle<()>)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Option<Generation>> + Send,
{
    let confirms = Arc::new(Mutex::new(Vec::new()));
    let out = confirms.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Some(generation) = publish_one().await {
                confirms
                    .lock()
                    .expect("confirms")
                    .push((Instant::now(), generation));
            }
            // About 200 publishes a second: enough to see the first confirm.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (out, task)
}

/// The first confirm after `t` on a link newer than `old` (a confirm of
/// the old link that raced the reset does not count).
async fn first_confirm_after(
    confirms: &Mutex<Vec<(Instant, Generation)>>,
    t: Instant,
    old: Generation,
    limit: Duration,
) -> Option<Duration> {
    let deadline = Instant::now() + limit;
    loop {
        let first = confirms
            .lock()
            .expect("confirms")
            .iter()
            .find(|(c, g)| *c > t && *g > old)
            .map(|(c, _)| *c - t);
        if first.is_some() {
            return first;
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// When the engine next leaves `Connected` after `t`.
async fn left_connected(handle: &Handle, t: Instant, limit: Duration) -> Option<Duration> {
    let mut watch = handle.watch();
    let gone =
        tokio::time::timeout(limit, watch.wait_for(|s| s.state != StateKind::Connected)).await;
    gone.ok().map(|_| t.elapsed())
}

/// The start of the first attempt after `t`, from the engine's events.
async fn next_attempt(
    events: &mut redial::runtime::EventStream,
    t: Instant,
    limit: Duration,
) -> Option<Duration> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Ok(Event::AttemptStarted { .. }))) if Instant::now() > t => {
                return Some(t.elapsed());
            }
            Ok(Some(Ok(_) | Err(_))) => {}
            _ => return None,
        }
    }
}

/// What one kind of recovery measured, per repetition.
#[derive(Debug, Default)]
struct Recovery {
    connect: Vec<Duration>,
    sever: Vec<Duration>,
    restore: Vec<Duration>,
    restore_schedule: Vec<Duration>,
    half_open: Vec<Duration>,
}

impl Recovery {
    fn print(&self, what: &str, bound: Duration) {
        let ms = |v: &[Duration]| {
            if v.is_empty() {
                "n/a".to_string()
            } else {
                let all: Vec<String> = v
                    .iter()
                    .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
                    .collect();
                format!(
                    "{:.1} ms (runs: {})",
                    median_d(v).as_secs_f64() * 1e3,
                    all.join(", ")
                )
            }
        };
        println!("{what} recovery, medians over {} runs:", self.sever.len());
        println!(
            "  raw connect through the proxy (the limit): {}",
            ms(&self.connect)
        );
        println!(
            "  sever -> first confirm:                    {}",
            ms(&self.sever)
        );
        println!(
            "  restore -> next attempt (backoff schedule): {}",
            ms(&self.restore_schedule)
        );
        println!(
            "  restore -> first confirm:                  {}",
            ms(&self.restore)
        );
        println!(
            "  half-open -> detected:                     {} (bound {:.0} ms)",
            ms(&self.half_open),
            bound.as_secs_f64() * 1e3
        );
    }
}

fn recovery_backoff() -> Backoff {
    Backoff::builder()
        .initial(Duration::from_secs(1))
        .multiplier(2.0)
        .max(Duration::from_secs(60))
        .jitter(Jitter::None)
        .build()
        .expect("backoff")
}

async fn amqp_recovery(runs: usize) {
    let heartbeat = Duration::from_secs(2);
    let mut r = Recovery::default();
    let queue = unique("recovery");
    amqp_queue(true, &queue).await;
    for _ in 0..runs {
        let proxy = chaos::start(AMQP_ADDR.parse().expect("addr"))
            .await
            .expect("proxy");
        let uri = amqp_uri(&proxy.addr().to_string());
        // The limit: a fresh connection, channel and confirm.select through the proxy.
        let t = Instant::now();
        let conn = Connection::connect(&uri, ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        r.connect.push(t.elapsed());
        let _ = conn.close(200, "done".into()).await;

        let config = AmqpConfig::new(uri)
            .heartbeat(Heartbeat::secs(heartbeat.as_secs() as u16))
            .connect_timeout(Duration::from_secs(5));
        let transport = AmqpTransport::new(config.clone()).expect("transport");
        let engine_config = config
            .engine_config()
            .backoff(recovery_backoff())
            .stable_period(Duration::from_millis(500))
            .build()
            .expect("config");
        let engine = Engine::spawn(engine_config, transport.clone());
        let handle = engine.handle();
        let mut events = handle.events();
        handle.wait_for(StateKind::Connected).await;
        let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
        let (confirms, task) = {
            let publisher = publisher.clone();
            let queue = queue.clone();
            confirm_loop(move || {
                let publisher = publisher.clone();
                let message = AmqpMessage::new("", &queue, vec![7u8; PAYLOAD]);
                async move {
                    publisher
                        .publish(message)
                        .await
                        .await
                        .ok()
                        .map(|c| c.generation)
                }
            })
        };
        measure_recovery(&proxy, &handle, &mut events, &confirms, &mut r).await;
        task.abort();
        publisher.shutdown(Duration::from_secs(2)).await;
        engine.shutdown().await;
    }
    amqp_queue(false, &queue).await;
    r.print("AMQP", heartbeat.mul_f64(1.5));
}

async fn mqtt_recovery(runs: usize) {
    let keep_alive = Duration::from_secs(2);
    let mut r = Recovery::default();
    for _ in 0..runs {
        let proxy = chaos::start(MQTT_ADDR.parse().expect("addr"))
            .await
            .expect("proxy");
        let addr = proxy.addr();
        // The limit: a fresh rumqttc connection (CONNACK) through the proxy.
        let t = Instant::now();
        let mut options = MqttOptions::new(unique("limit"), addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 8);
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("raw MQTT connect through the proxy: {e}"),
            }
        }
        r.connect.push(t.elapsed());
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;

        let config = MqttConfig::new(addr.ip().to_string(), addr.port(), unique("recovery"))
            .keep_alive(keep_alive)
            .connect_timeout(Duration::from_secs(5));
        let transport = MqttTransport::new(config.clone()).expect("transport");
        let engine_config = config
            .engine_config()
            .backoff(recovery_backoff())
            .stable_period(Duration::from_millis(500))
            .build()
            .expect("config");
        let engine = Engine::spawn(engine_config, transport.clone());
        let handle = engine.handle();
        let mut events = handle.events();
        handle.wait_for(StateKind::Connected).await;
        let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
        let topic = unique("t");
        let (confirms, task) = {
            let publisher = publisher.clone();
            confirm_loop(move || {
                let publisher = publisher.clone();
                let message = MqttMessage::new(topic.clone(), QoS::AtLeastOnce, vec![7u8; PAYLOAD]);
                async move {
                    publisher
                        .publish(message)
                        .await
                        .await
                        .ok()
                        .map(|c| c.generation)
                }
            })
        };
        measure_recovery(&proxy, &handle, &mut events, &confirms, &mut r).await;
        task.abort();
        publisher.shutdown(Duration::from_secs(2)).await;
        engine.shutdown().await;
    }
    r.print("MQTT", keep_alive.mul_f64(1.5));
}

/// Sever, refuse-then-restore, and half-open, on one engine.
async fn measure_recovery(
    proxy: &chaos::ChaosProxy,
    handle: &Handle,
    events: &mut redial::runtime::EventStream,
    confirms: &Mutex<Vec<(Instant, Generation)>>,
    r: &mut Recovery,
) {
    let limit = Duration::from_secs(20);
    // Let the link be up longer than the stable period, and confirms flow.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. Sever while the broker stays up: the first retry is immediate.
    let old = handle.generation();
    let t = Instant::now();
    proxy.sever();
    if let Some(d) = first_confirm_after(confirms, t, old, limit).await {
        r.sever.push(d);
    }
    handle.wait_for(StateKind::Connected).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 2. Sever and refuse for 2.5 s: attempts at 0 and 1 s fail, the one
    // at 3 s is the first that can succeed.
    let old = handle.generation();
    proxy.refuse(true);
    proxy.sever();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    while let Some(Ok(_)) = events.try_recv() {}
    let t = Instant::now();
    proxy.refuse(false);
    let (attempt, confirm) = tokio::join!(
        next_attempt(events, t, limit),
        first_confirm_after(confirms, t, old, limit)
    );
    if let (Some(a), Some(c)) = (attempt, confirm) {
        r.restore_schedule.push(a);
        r.restore.push(c);
    }
    handle.wait_for(StateKind::Connected).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 3. Half-open: nothing flows, the sockets stay open.
    let t = Instant::now();
    proxy.blackhole(true);
    if let Some(d) = left_connected(handle, t, limit).await {
        r.half_open.push(d);
    }
    proxy.blackhole(false);
    handle.wait_for(StateKind::Connected).await;
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: nothing to do there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("adapters: run with `cargo bench --features amqp,mqtt --bench adapters`");
        return;
    }
    let n = env_number("REDIAL_BENCH_MESSAGES", 20_000);
    let rounds = env_number("REDIAL_BENCH_ROUNDS", 5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if reachable(AMQP_ADDR) {
            if selected("publish") {
                amqp_overhead(n, rounds).await;
            }
            if selected("consume") {
                amqp_consume(n, rounds).await;
            }
            if selected("recovery") {
                amqp_recovery(rounds).await;
            }
        } else {
            println!("AMQP: no broker on {AMQP_ADDR}, skipped");
        }
        if reachable(MQTT_ADDR) {
            if selected("publish") {
                mqtt_overhead(n, rounds).await;
            }
            if selected("consume") {
                mqtt_consume(n, rounds).await;
            }
            if selected("recovery") {
                mqtt_recovery(rounds).await;
            }
        } else {
            println!("MQTT: no broker on {MQTT_ADDR}, skipped");
        }
    });
}
