//! Topology replay, consumers across reconnects, stale acks, and the
//! publishing errors that must not cost the connection.
#![cfg(feature = "amqp")]

use crate::support;

use std::time::Duration;

use redial::amqp::lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions,
};
use redial::amqp::lapin::types::{AMQPValue, FieldTable};
use redial::amqp::lapin::{BasicProperties, ExchangeKind};
use redial::amqp::{
    AckError, AmqpConfig, AmqpError, AmqpMessage, AmqpTransport, Consumer, Delivery, Heartbeat,
    ReplayPolicy,
};
use redial::machine::{ErrorKind, Generation, StateKind};
use redial::outbox::{OutboxConfig, PublishError, Publisher};
use redial::runtime::{Classify, Engine, Event, Handle};

use support::amqp as a;
use support::brokers;

fn config(uri: String) -> AmqpConfig {
    AmqpConfig::new(uri)
        .connection_name(a::unique("topology-conn"))
        .heartbeat(Heartbeat::secs(5))
        .connect_timeout(Duration::from_secs(3))
}

/// The engine for `config`: a link stable after 1 s.
fn engine_config(config: &AmqpConfig) -> redial::machine::ConfigBuilder {
    config.engine_config().stable_period(Duration::from_secs(1))
}

/// Publishes directly (not through redial or the proxy).
async fn publish_direct(ch: &redial::amqp::lapin::Channel, exchange: &str, key: &str, body: &str) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.recv())
        .await
        .expect("a delivery within 10 s")
        .expect("the consumer is open")
}

/// Waits for the engine to be connected on a link newer than `after`.
async fn reconnected(handle: &Handle, after: Generation) -> Generation {
    let mut watch = handle.watch();
    let snapshot = tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|s| s.state == StateKind::Connected && s.generation > after),
    )
    .await
    .expect("reconnected within 10 s")
    .expect("the engine runs");
    snapshot.generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_named_queue_with_binding_and_consumer_survives_a_sever() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    let exchange = a::unique("topology-x");
    let direct = a::direct().await;
    let pub_ch = direct.create_channel().await.unwrap();
    let proxy = support::chaos::start(a::broker_addr()).await.unwrap();
    let config = config(a::proxied_uri(proxy.addr()));
    let transport = AmqpTransport::new(config.clone()).unwrap();
    // Recorded before any link exists: replayed in order by the first open.
    transport
        .declare_exchange(
            &exchange,
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let queue = transport
        .declare_queue(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    transport
        .bind_queue(&queue, &exchange, "k", FieldTable::default())
        .await
        .unwrap();
    transport.qos(10, false).await.unwrap();
    let mut consumer = transport
        .consume(&queue, "", Default::default(), FieldTable::default())
        .await
        .unwrap();
    let engine = Engine::spawn(engine_config(&config).build().unwrap(), transport.clone());
    let handle = engine.handle();
    handle.wait_for(StateKind::Connected).await;
    let first_name = queue.name();
    assert!(first_name.starts_with("amq.gen-"), "{first_name}");

    publish_direct(&pub_ch, &exchange, "k", "before").await;
    let d1 = next(&mut consumer).await;
    assert_eq!(d1.data(), b"before");
    assert_eq!(d1.generation(), Generation(1));
    d1.ack().await.unwrap();

    proxy.sever();
    let g = reconnected(&handle, Generation(1)).await;
    let second_name = queue.name();
    assert_ne!(first_name, second_name, "a new server-named queue");
    publish_direct(&pub_ch, &exchange, "k", "after").await;
    let d2 = next(&mut consumer).await;
    assert_eq!(d2.data(), b"after");
    assert_eq!(d2.generation(), g);
    d2.ack().await.unwrap();
    println!(
        "topology: server-named queue {first_name} -> {second_name}, binding and consumer replayed on link {g}, {} log entries",
        transport.topology_len().await
    );

    engine.shutdown().await;
    let _ = pub_ch
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_of_a_delivery_from_before_a_sever_is_a_typed_error_and_the_channel_stays_open() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    let queue_name = a::unique("olddelivery");
    let direct = a::direct().await;
    a::declare_queue(&direct, &queue_name).await;
    let pub_ch = direct.create_channel().await.unwrap();
    let proxy = support::chaos::start(a::broker_addr()).await.unwrap();
    let config = config(a::proxied_uri(proxy.addr()));
    let transport = AmqpTransport::new(config.clone()).unwrap();
    let engine = Engine::spawn(engine_config(&config).build().unwrap(), transport.clone());
    let handle = engine.handle();
    handle.wait_for(StateKind::Connected).await;
    let mut consumer = transport
        .consume(
            queue_name.as_str(),
            "",
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    publish_direct(&pub_ch, "", &queue_name, "m1").await;
    let old = next(&mut consumer).await;
    assert_eq!(old.data(), b"m1");
    assert_eq!(old.generation(), Generation(1));
    assert!(old.is_current());

    proxy.sever();
    let g = reconnected(&handle, Generation(1)).await;
    // The broker requeued m1 (its channel died unacknowledged) and delivers
    // it again on the new link.
    let again = next(&mut consumer).await;
    assert_eq!(again.data(), b"m1");
    assert!(again.redelivered());
    assert_eq!(again.generation(), g);

    // The old delivery's ack is refused before anything is sent.
    let stale = old.ack().await;
    assert!(
        matches!(
            stale,
            Err(AckError::Stale {
                delivery: Generation(1),
                ..
            })
        ),
        "{stale:?}"
    );
    assert!(matches!(old.nack(true).await, Err(AckError::Stale { .. })));
    // The new channel is still open: the redelivery and a new message are
    // acknowledged normally, on the same link.
    again.ack().await.unwrap();
    publish_direct(&pub_ch, "", &queue_name, "m2").await;
    let m2 = next(&mut consumer).await;
    assert_eq!(m2.data(), b"m2");
    assert_eq!(m2.generation(), g);
    m2.ack().await.unwrap();
    assert_eq!(handle.generation(), g, "no reconnect");
    // Nothing left unacknowledged: the queue is empty and still consumed.
    let q = pub_ch
        .queue_declare(
            queue_name.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    println!(
        "old delivery: stale ack -> {stale:?}; queue after: {} messages, {} consumers",
        q.message_count(),
        q.consumer_count()
    );
    assert_eq!(q.consumer_count(), 1);
    consumer.cancel().await;
    engine.shutdown().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let q = pub_ch
        .queue_declare(
            queue_name.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0, "every message was acknowledged once");
    a::delete_queue(&direct, &queue_name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_nacked_and_rejected_publishes_are_typed_and_keep_the_connection() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    let queue_name = a::unique("publish-errors");
    let config = config(a::BROKER_URI.to_owned());
    let transport = AmqpTransport::new(config.clone()).unwrap();
    // A queue that refuses publishes beyond one message: the broker nacks.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    transport
        .declare_queue(&queue_name, QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let engine = Engine::spawn(engine_config(&config).build().unwrap(), transport.clone());
    let handle = engine.handle();
    handle.wait_for(StateKind::Connected).await;
    let publisher = Publisher::new(&engine, transport.clone(), OutboxConfig::default());

    // Mandatory and routed nowhere: Unroutable.
    let unroutable = publisher
        .publish(
            AmqpMessage::new("amq.direct", &a::unique("no-route"), b"x".to_vec()).mandatory(true),
        )
        .await
        .await;
    assert!(
        matches!(unroutable, Err(PublishError::Unroutable)),
        "{unroutable:?}"
    );
    // Not mandatory: confirmed (and dropped by the broker).
    let dropped = publisher
        .publish(AmqpMessage::new(
            "amq.direct",
            &a::unique("no-route"),
            b"x".to_vec(),
        ))
        .await
        .await;
    assert!(dropped.is_ok(), "{dropped:?}");
    // The first message fills the queue, the second is nacked.
    let first = publisher
        .publish(AmqpMessage::new("", &queue_name, b"1".to_vec()))
        .await
        .await;
    assert!(first.is_ok(), "{first:?}");
    let nacked = publisher
        .publish(AmqpMessage::new("", &queue_name, b"2".to_vec()))
        .await
        .await;
    assert!(matches!(nacked, Err(PublishError::Nacked)), "{nacked:?}");
    // A missing exchange: the broker closes the publishing channel (404).
    // The message fails as Rejected; the channel is reopened, not the link.
    let missing = a::unique("missing-x");
    let rejected = publisher
        .publish(AmqpMessage::new(&missing, "k", b"x".to_vec()))
        .await
        .await;
    assert!(
        matches!(&rejected, Err(PublishError::Rejected(text)) if text.contains(&missing)),
        "{rejected:?}"
    );
    let after = publisher
        .publish(AmqpMessage::new("amq.direct", "nobody", b"x".to_vec()))
        .await
        .await;
    assert!(after.is_ok(), "{after:?}");
    // A declaration the broker refuses is a typed channel error, not recorded.
    let conflict = transport
        .declare_queue(
            &queue_name,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(
        matches!(&conflict, Err(e @ AmqpError::Channel(_)) if e.reply_code() == Some(406)),
        "{conflict:?}"
    );
    let stats = handle.stats();
    println!(
        "publish errors: unroutable {unroutable:?}, nacked {nacked:?}, rejected {rejected:?}, conflict {conflict:?}; \
         engine attempts {}, outages {}",
        stats.attempts, stats.outages
    );
    assert_eq!(stats.attempts, 1, "no reconnect");
    assert_eq!(stats.outages, 0);
    assert_eq!(handle.generation(), Generation(1));
    let _ = transport
        .delete_queue(queue_name.as_str(), Default::default())
        .await;
    publisher.shutdown(Duration::from_secs(5)).await;
}

/// A log whose replay fails: a queue recorded as non-durable while the
/// broker already has it durable (PRECONDITION_FAILED on redeclaration).
async fn conflicting(
    policy: ReplayPolicy,
) -> (AmqpTransport, Engine<AmqpTransport>, String, String) {
    let queue_name = a::unique("replay-conflict");
    let after_name = a::unique("replay-after");
    let direct = a::direct().await;
    let ch = direct.create_channel().await.unwrap();
    ch.queue_declare(
        queue_name.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let config = config(a::BROKER_URI.to_owned()).replay_policy(policy);
    let backoff = redial::backoff::Backoff::builder()
        .initial(Duration::from_millis(100))
        .multiplier(2.0)
        .max(Duration::from_millis(200))
        .jitter(redial::backoff::Jitter::None)
        .build()
        .unwrap();
    let transport = AmqpTransport::new(config.clone()).unwrap();
    // No link yet: both are recorded without being applied.
    transport
        .declare_queue(
            &queue_name,
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    transport
        .declare_queue(
            &after_name,
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let engine = Engine::spawn(
        engine_config(&config).backoff(backoff).build().unwrap(),
        transport.clone(),
    );
    let _ = direct.close(200, "done".into()).await;
    (transport, engine, queue_name, after_name)
}

async fn cleanup(names: &[&str]) {
    let direct = a::direct().await;
    for n in names {
        a::delete_queue(&direct, n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_error_policy_skip_fail_retry() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    // Skip: the link comes up, the error is reported, later entries applied.
    let (transport, engine, q, after) = conflicting(ReplayPolicy::Skip).await;
    let mut errors = transport.replay_errors();
    let handle = engine.handle();
    tokio::time::timeout(
        Duration::from_secs(10),
        handle.wait_for(StateKind::Connected),
    )
    .await
    .unwrap();
    let reported = errors.try_recv().expect("the skipped entry was reported");
    assert_eq!(reported.index, 0);
    assert_eq!(reported.policy, ReplayPolicy::Skip);
    let direct = a::direct().await;
    let ch = direct.create_channel().await.unwrap();
    ch.queue_declare(
        after.as_str().into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("the entry after the failed one was replayed");
    println!(
        "replay policy skip: {} -> {}",
        reported.entry, reported.error
    );
    engine.shutdown().await;
    cleanup(&[&q, &after]).await;

    // Fail: the engine gives up with a permanent topology error.
    let (_transport, engine, q, after) = conflicting(ReplayPolicy::Fail).await;
    let handle = engine.handle();
    let mut events = handle.events();
    let failed = tokio::time::timeout(Duration::from_secs(10), handle.wait_for(StateKind::Failed))
        .await
        .unwrap();
    let error = loop {
        if let Event::AttemptFailed { error, .. } = events.recv().await.unwrap().unwrap() {
            break error;
        }
    };
    let error = error.downcast_ref::<AmqpError>().unwrap().clone();
    println!("replay policy fail: {error} ({:?})", failed.failure);
    assert!(
        matches!(
            error,
            AmqpError::Topology {
                index: 0,
                permanent: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.kind(), ErrorKind::Permanent);
    assert_eq!(handle.stats().attempts, 1);
    engine.shutdown().await;
    cleanup(&[&q, &after]).await;

    // Retry: transient, the engine keeps trying (with backoff).
    let (_transport, engine, q, after) = conflicting(ReplayPolicy::Retry).await;
    let handle = engine.handle();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let attempts = handle.stats().attempts;
    println!(
        "replay policy retry: {attempts} attempts in 1.2 s, state {}",
        handle.state()
    );
    assert!(attempts >= 3, "{attempts}");
    assert_ne!(handle.state(), StateKind::Failed);
    engine.shutdown().await;
    cleanup(&[&q, &after]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_error_reopens_the_consumer_channel_not_the_connection() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    let queue_name = a::unique("channel-error");
    let direct = a::direct().await;
    a::declare_queue(&direct, &queue_name).await;
    let pub_ch = direct.create_channel().await.unwrap();
    let config = config(a::BROKER_URI.to_owned());
    let transport = AmqpTransport::new(config.clone()).unwrap();
    let engine = Engine::spawn(engine_config(&config).build().unwrap(), transport.clone());
    let handle = engine.handle();
    handle.wait_for(StateKind::Connected).await;
    let mut consumer = transport
        .consume(
            queue_name.as_str(),
            "",
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish_direct(&pub_ch, "", &queue_name, "m1").await;
    let m1 = next(&mut consumer).await;

    // Consuming a queue that does not exist: the broker closes the consumer
    // channel (404). A typed error, nothing recorded, same connection.
    let missing = transport
        .consume(
            a::unique("no-such-queue"),
            "",
            Default::default(),
            FieldTable::default(),
        )
        .await;
    assert!(
        matches!(&missing, Err(e @ AmqpError::Channel(_)) if e.reply_code() == Some(404)),
        "{missing:?}"
    );
    // m1's channel is gone: its ack is stale; the broker redelivers it to
    // the consumer restarted on a new channel of the same link.
    let again = next(&mut consumer).await;
    assert_eq!(again.data(), b"m1");
    assert_eq!(again.generation(), Generation(1));
    assert!(matches!(m1.ack().await, Err(AckError::Stale { .. })));
    again.ack().await.unwrap();
    publish_direct(&pub_ch, "", &queue_name, "m2").await;
    let m2 = next(&mut consumer).await;
    assert_eq!(m2.data(), b"m2");
    m2.ack().await.unwrap();
    let stats = handle.stats();
    println!(
        "channel error: {missing:?}; consumer restarted on the same link, attempts {}, outages {}",
        stats.attempts, stats.outages
    );
    assert_eq!(stats.attempts, 1);
    assert_eq!(stats.outages, 0);
    engine.shutdown().await;
    a::delete_queue(&direct, &queue_name).await;
}
