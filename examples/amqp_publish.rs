//! Publishes N messages with publisher confirms to a local RabbitMQ through
//! redial, surviving broker restarts, and prints every state change.
//!
//! ```text
//! cargo run --example amqp_publish --features amqp -- [COUNT] [RATE_PER_S]
//! ```
//!
//! Defaults: 200 messages at 50/s to `amqp://guest:guest@127.0.0.1:5672/%2f`
//! (or `REDIAL_AMQP_URI`; see `AmqpConfig::from_env` for the other
//! variables). Restart the broker meanwhile (`rabbitmqctl stop_app;
//! rabbitmqctl start_app`): the engine reconnects, the outbox replays what
//! was not confirmed, and the example ends once every message has an
//! outcome (or after `REDIAL_EXAMPLE_DEADLINE` seconds, default 120),
//! exiting non-zero if any publish failed.

use std::time::{Duration, Instant};

use redial::amqp::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use redial::amqp::lapin::types::FieldTable;
use redial::amqp::{AmqpConfig, AmqpMessage, AmqpTransport};
use redial::outbox::{OutboxConfig, Publisher};
use redial::runtime::{Engine, Event};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let rate: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(50)
        .max(1);
    let deadline = std::env::var("REDIAL_EXAMPLE_DEADLINE")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(120), Duration::from_secs);

    let config = AmqpConfig::from_env()?
        .connection_name("redial-example-amqp-publish")
        .connect_timeout(Duration::from_secs(5));
    let transport = AmqpTransport::new(config.clone())?;
    let queue = format!("redial.example.{}", std::process::id());
    // Recorded: declared again on every new link, before anything is published.
    transport
        .declare_queue(
            &queue,
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let engine = Engine::spawn(config.engine_config().build()?, transport.clone());
    let mut events = engine.handle().events();
    tokio::spawn(async move {
        let started = Instant::now();
        while let Some(Ok(event)) = events.recv().await {
            let t = started.elapsed().as_secs_f64();
            match event {
                Event::StateChanged {
                    from,
                    to,
                    generation,
                    lost,
                    reason,
                    ..
                } => match lost {
                    // The link the change took down, not the next one's.
                    Some(lost) => {
                        println!("[{t:7.3}s] state {from} -> {to} (link {lost} down, {reason:?})")
                    }
                    None => {
                        println!("[{t:7.3}s] state {from} -> {to} (link {generation}, {reason:?})")
                    }
                },
                Event::AttemptFailed {
                    generation, error, ..
                } => println!("[{t:7.3}s] attempt for link {generation} failed: {error}"),
                Event::LivenessLost { generation } => {
                    println!("[{t:7.3}s] link {generation}: no inbound traffic, replacing it")
                }
                Event::GaveUp { cause, error, .. } => {
                    println!("[{t:7.3}s] gave up: {cause} ({error:?})")
                }
                _ => {}
            }
        }
    });

    // The defaults: 10,000 messages, callers wait for room when it is full.
    let publisher = Publisher::new(&engine, transport.clone(), OutboxConfig::default());

    let started = Instant::now();
    let mut receipts = Vec::with_capacity(count as usize);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for n in 0..count {
        tick.tick().await;
        let message = AmqpMessage::new("", &queue, format!("message {n}").into_bytes())
            .mandatory(true)
            .persistent();
        receipts.push(publisher.publish(message).await);
    }
    let outcomes = tokio::time::timeout(deadline, futures::future::join_all(receipts)).await;
    let (mut confirmed, mut failed) = (0u64, 0u64);
    match outcomes {
        Ok(outcomes) => {
            for outcome in outcomes {
                match outcome {
                    Ok(_) => confirmed += 1,
                    Err(e) => {
                        failed += 1;
                        eprintln!("publish failed: {e}");
                    }
                }
            }
        }
        Err(_) => eprintln!("gave up waiting after {deadline:?}"),
    }
    let stats = publisher.stats();
    println!(
        "published {count} in {:.1}s: {confirmed} confirmed, {failed} failed, {} replayed, engine: {:?}",
        started.elapsed().as_secs_f64(),
        stats.replayed,
        engine.handle().stats(),
    );
    let _ = transport
        .delete_queue(queue.as_str(), QueueDeleteOptions::default())
        .await;
    publisher.shutdown(Duration::from_secs(5)).await;
    engine.shutdown().await;
    if confirmed == count {
        Ok(())
    } else {
        Err(format!(
            "{} of {count} publishes were not confirmed",
            count - confirmed
        )
        .into())
    }
}
