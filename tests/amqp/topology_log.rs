//! The topology log against the real broker: keyed by identity (re-declaring
//! does not grow it), deletes remove, and a large distinct topology still
//! reconnects after a sever (its replay is not cut by the connect timeout).
#![cfg(feature = "amqp")]

use crate::support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use redial::amqp::lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use redial::amqp::lapin::types::{AMQPValue, FieldTable};
use redial::amqp::lapin::{BasicProperties, Channel, ExchangeKind};
use redial::amqp::{AmqpConfig, AmqpError, AmqpTransport, Heartbeat};
use redial::machine::{ErrorKind, Generation, StateKind};
use redial::runtime::{Engine, Event, Handle};

use support::amqp as a;
use support::brokers;

fn config(uri: String) -> AmqpConfig {
    AmqpConfig::new(uri)
        .connection_name(a::unique("topology-log-conn"))
        .heartbeat(Heartbeat::secs(5))
        .connect_timeout(Duration::from_secs(3))
}

/// The engine for `config`: a link stable after 1 s.
fn engine_config(config: &AmqpConfig) -> redial::machine::ConfigBuilder {
    config.engine_config().stable_period(Duration::from_secs(1))
}

/// Queues that the broker drops by itself if a test dies before its cleanup.
fn expiring() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(300_000));
    args
}

async fn connected_after(handle: &Handle, after: Generation, within: Duration) -> Generation {
    let mut watch = handle.watch();
    let snapshot = tokio::time::timeout(
        within,
        watch.wait_for(|s| s.state == StateKind::Connected && s.generation > after),
    )
    .await
    .unwrap_or_else(|_| panic!("connected on a link after {after} within {within:?}"))
    .expect("the engine runs");
    snapshot.generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_a_queue_and_its_binding_keeps_one_entry_each() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    const ROUNDS: usize = 200;
    let name = a::unique("redeclare");
    let config = config(a::BROKER_URI.to_owned());
    let transport = AmqpTransport::new(config.clone()).unwrap();
    // Offline (recorded only), then live (applied and recorded).
    for _ in 0..ROUNDS {
        transport
            .declare_queue(&name, QueueDeclareOptions::default(), expiring())
            .await
            .unwrap();
        transport
            .bind_queue(name.as_str(), "amq.direct", &name, FieldTable::default())
            .await
            .unwrap();
    }
    assert_eq!(transport.topology_len().await, 2, "offline");
    let engine = Engine::spawn(engine_config(&config).build().unwrap(), transport.clone());
    engine.handle().wait_for(StateKind::Connected).await;
    for _ in 0..ROUNDS {
        let q = transport
            .declare_queue(&name, QueueDeclareOptions::default(), expiring())
            .await
            .unwrap();
        transport
            .bind_queue(&q, "amq.direct", &name, FieldTable::default())
            .await
            .unwrap();
    }
    let len = transport.topology_len().await;
    println!("topology: {ROUNDS} + {ROUNDS} declare+bind pairs of one queue -> {len} entries");
    assert_eq!(len, 2, "live");
    transport
        .delete_queue(name.as_str(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(transport.topology_len().await, 0);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_remove_entities_and_their_bindings() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    let direct = a::direct().await;
    let exchange = a::unique("deletes-x");
    let queue = a::unique("deletes-q");
    let config = config(a::BROKER_URI.to_owned());
    let transport = AmqpTransport::new(config.clone()).unwrap();
    let engine = Engine::spawn(engine_config(&config).build().unwrap(), transport.clone());
    engine.handle().wait_for(StateKind::Connected).await;

    transport
        .declare_exchange(
            &exchange,
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let q = transport
        .declare_queue(&queue, QueueDeclareOptions::default(), expiring())
        .await
        .unwrap();
    for source in [exchange.as_str(), "amq.direct"] {
        transport
            .bind_queue(&q, source, "k", FieldTable::default())
            .await
            .unwrap();
    }
    assert_eq!(transport.topology_len().await, 4);
    // The exchange and its binding go; the queue and its other binding stay.
    transport
        .delete_exchange(&exchange, Default::default())
        .await
        .unwrap();
    assert_eq!(transport.topology_len().await, 2);
    // The queue and its binding go, and nothing is kept: both reached the broker.
    transport
        .delete_queue(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(transport.topology_len().await, 0);
    assert_eq!(
        a::ready(&direct, &queue).await,
        None,
        "deleted at the broker"
    );
    engine.shutdown().await;

    // Offline, a delete is kept until a replay has applied it.
    let offline = a::unique("deletes-offline");
    a::declare_queue(&direct, &offline).await;
    let transport = AmqpTransport::new(config.clone()).unwrap();
    transport
        .delete_queue(offline.as_str(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(transport.topology_len().await, 1, "pending");
    assert!(a::ready(&direct, &offline).await.is_some());
    let engine = Engine::spawn(engine_config(&config).build().unwrap(), transport.clone());
    engine.handle().wait_for(StateKind::Connected).await;
    assert_eq!(
        a::ready(&direct, &offline).await,
        None,
        "deleted by the replay"
    );
    assert_eq!(transport.topology_len().await, 0, "applied, then forgotten");
    engine.shutdown().await;
}

/// Deletes `names` on `ch`, pipelined (cleanup; errors ignored).
async fn delete_all(ch: &Channel, names: &[String]) {
    for chunk in names.chunks(256) {
        let mut pending: FuturesOrdered<_> = chunk
            .iter()
            .map(|n| ch.queue_delete(n.as_str().into(), QueueDeleteOptions::default()))
            .collect();
        while pending.next().await.is_some() {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_distinct_topology_reconnects_after_a_sever() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    // 5,000 queues + 5,000 bindings: the sequential replay of the old log
    // needed several times the 3 s connect timeout and never got through.
    const QUEUES: usize = 5_000;
    let prefix = a::unique("large");
    let names: Vec<String> = (0..QUEUES).map(|i| format!("{prefix}.{i}")).collect();
    let proxy = support::chaos::start(a::broker_addr()).await.unwrap();
    let config = config(a::proxied_uri(proxy.addr()));
    let transport = AmqpTransport::new(config.clone()).unwrap();
    for name in &names {
        transport
            .declare_queue(name, QueueDeclareOptions::default(), expiring())
            .await
            .unwrap();
        transport
            .bind_queue(name.as_str(), "amq.direct", name, FieldTable::default())
            .await
            .unwrap();
    }
    assert_eq!(transport.topology_len().await, 2 * QUEUES);

    let started = Instant::now();
    let engine = Engine::spawn(engine_config(&config).build().unwrap(), transport.clone());
    let handle = engine.handle();
    let first = connected_after(&handle, Generation(0), Duration::from_secs(120)).await;
    let first_open = started.elapsed();

    let severed = Instant::now();
    proxy.sever();
    let second = connected_after(&handle, first, Duration::from_secs(120)).await;
    let reopen = severed.elapsed();
    println!(
        "topology: {} entries ({QUEUES} queues + {QUEUES} bindings), connect timeout 3 s: \
         first open {first_open:?}, reconnected on link {second} {reopen:?} after the sever",
        2 * QUEUES
    );
    assert_eq!(transport.topology_len().await, 2 * QUEUES);

    // The last binding of the replay routes.
    let direct = a::direct().await;
    let ch = direct.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let last = names.last().unwrap();
    ch.basic_publish(
        "amq.direct".into(),
        last.as_str().into(),
        BasicPublishOptions::default(),
        b"routed",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    assert_eq!(a::ready(&direct, last).await, Some(1));

    engine.shutdown().await;
    delete_all(&ch, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_still_fails_after_the_connect_timeout() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    // The engine's own timeout is now a backstop (connect timeout + the
    // replay allowance): the adapter must bound the handshake itself.
    let proxy = support::chaos::start(a::broker_addr()).await.unwrap();
    proxy.blackhole(true);
    let config = config(a::proxied_uri(proxy.addr())).connect_timeout(Duration::from_secs(1));
    let transport = AmqpTransport::new(config.clone()).unwrap();
    let started = Instant::now();
    let engine = Engine::spawn(engine_config(&config).build().unwrap(), transport);
    let mut events = engine.handle().events();
    let error = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Event::AttemptFailed { error, kind, .. } = events.recv().await.unwrap().unwrap()
            {
                assert_eq!(kind, ErrorKind::Transient);
                break error;
            }
        }
    })
    .await
    .expect("the attempt failed within 20 s");
    let elapsed = started.elapsed();
    let error = error.downcast_ref::<AmqpError>().expect("an AmqpError");
    println!("blackholed handshake: {error} after {elapsed:?}");
    assert!(
        matches!(error, AmqpError::Connection(e) if e.to_string().contains("AMQP handshake")),
        "{error:?}"
    );
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    engine.shutdown().await;
}
