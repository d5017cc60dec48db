//! The default prefetch bounds what a slow consumer holds: the broker never
//! has more unacked deliveries out to it than the prefetch.
#![cfg(feature = "amqp")]

use crate::support;

use std::time::{Duration, Instant};

use redial::amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use redial::amqp::lapin::types::FieldTable;
use redial::amqp::lapin::{BasicProperties, Connection};
use redial::amqp::{AmqpConfig, AmqpTransport, Consumer, DEFAULT_PREFETCH, Delivery};
use redial::machine::StateKind;
use redial::runtime::Engine;

use support::amqp as a;
use support::brokers;

/// The queue's ready (not yet delivered) message count.
async fn ready(conn: &Connection, queue: &str) -> u32 {
    a::ready(conn, queue).await.expect("the queue exists")
}

async fn next(consumer: &mut Consumer, within: Duration) -> Option<Delivery> {
    tokio::time::timeout(within, consumer.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_acks_nothing_holds_at_most_the_default_prefetch() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    const MESSAGES: u32 = 2_000;
    let prefetch = u32::from(DEFAULT_PREFETCH);
    let queue = a::unique("prefetch");
    let direct = a::direct().await;
    a::declare_queue(&direct, &queue).await;
    let ch = direct.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..MESSAGES {
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    ch.wait_for_confirms().await.unwrap();
    assert_eq!(ready(&direct, &queue).await, MESSAGES);

    // The default configuration: the default is what is tested.
    let config = AmqpConfig::new(a::BROKER_URI).connection_name(a::unique("prefetch-conn"));
    let transport = AmqpTransport::new(config.clone()).unwrap();
    let engine = Engine::spawn(config.engine_config().build().unwrap(), transport.clone());
    engine.handle().wait_for(StateKind::Connected).await;
    let mut consumer = transport
        .consume(
            queue.as_str(),
            "",
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // The broker sends the prefetch's worth...
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(&direct, &queue).await > MESSAGES - prefetch {
        assert!(
            Instant::now() < deadline,
            "the broker delivered the prefetch"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut held = Vec::new();
    for _ in 0..prefetch {
        held.push(
            next(&mut consumer, Duration::from_secs(10))
                .await
                .expect("a delivery of the prefetch"),
        );
    }
    // ...and not one more while none is acked (without a prefetch it
    // pushes the whole queue at once).
    let extra = next(&mut consumer, Duration::from_secs(1)).await;
    let unacked = MESSAGES - ready(&direct, &queue).await;
    if let Some(list) =
        a::rabbitmqctl(&["list_consumers", "--silent", "queue_name", "prefetch_count"])
    {
        let line = list.lines().find(|l| l.starts_with(&queue));
        println!("prefetch: rabbitmqctl list_consumers: {line:?}");
    }
    println!(
        "prefetch: {MESSAGES} queued, consumer acks nothing: {} held, {unacked} unacked at the broker",
        held.len() + usize::from(extra.is_some())
    );
    assert!(extra.is_none(), "a delivery beyond the prefetch");
    assert_eq!(unacked, prefetch);

    // Acking one lets exactly one more in.
    held.remove(0).ack().await.unwrap();
    let more = next(&mut consumer, Duration::from_secs(10)).await;
    assert!(more.is_some(), "a delivery after an ack");
    assert_eq!(MESSAGES - ready(&direct, &queue).await, prefetch + 1);

    consumer.cancel().await;
    engine.shutdown().await;
    a::delete_queue(&direct, &queue).await;
}
