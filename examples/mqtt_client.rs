//! Subscribes to a topic and publishes N QoS 1 messages to it through
//! redial against a local Mosquitto, surviving broker restarts, printing
//! every state change; ends by itself once all N came back on the
//! subscription.
//!
//! ```text
//! cargo run --example mqtt_client --features mqtt -- [COUNT] [HOST] [PORT]
//! ```
//!
//! Defaults: 20 messages, one every 250 ms, to 127.0.0.1:1883. Restart the
//! broker meanwhile (`systemctl restart mosquitto`, or kill it and start it
//! again): the engine reconnects with backoff, restores the subscription
//! before the outbox replays what was not confirmed, and the example goes
//! on. It gives up after `REDIAL_EXAMPLE_DEADLINE` seconds (default 120),
//! exiting non-zero if messages are missing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use redial::mqtt::{MqttConfig, MqttMessage, MqttTransport, QoS};
use redial::outbox::{OutboxConfig, Publisher};
use redial::runtime::{Engine, Event};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let host = args.next().unwrap_or_else(|| "127.0.0.1".to_string());
    let port: u16 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1883);
    let deadline = std::env::var("REDIAL_EXAMPLE_DEADLINE")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(120), Duration::from_secs);

    let client_id = format!("redial-example-{}", std::process::id());
    let topic = format!("redial/example/{}", std::process::id());
    let config = MqttConfig::new(host, port, client_id).keep_alive(Duration::from_secs(5));
    let transport = MqttTransport::new(config.clone())?;
    let mut messages = transport.messages().expect("taken once");
    // Recorded now, subscribed on every link before anything is published.
    transport.subscribe(&topic, QoS::AtLeastOnce).await?;

    let engine = Engine::spawn(config.engine_config().build()?, transport.clone());
    let started = Instant::now();
    let mut events = engine.handle().events();
    tokio::spawn(async move {
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

    let publisher = Publisher::new(&engine, transport.clone(), OutboxConfig::default());
    let sender = tokio::spawn({
        let publisher = publisher.clone();
        let topic = topic.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            for id in 1..=count {
                tick.tick().await;
                let receipt = publisher
                    .publish(MqttMessage::new(&topic, QoS::AtLeastOnce, id.to_string()))
                    .await;
                tokio::spawn(async move {
                    let outcome = receipt.await;
                    let t = started.elapsed().as_secs_f64();
                    match outcome {
                        Ok(c) => println!(
                            "[{t:7.3}s] message {id} confirmed (PUBACK) on link {}",
                            c.generation
                        ),
                        Err(e) => println!("[{t:7.3}s] message {id} failed: {e}"),
                    }
                });
            }
        }
    });

    let mut received = BTreeSet::new();
    let end = tokio::time::Instant::now() + deadline;
    while (received.len() as u64) < count {
        match tokio::time::timeout_at(end, messages.recv()).await {
            Ok(Some(Err(e))) => println!("not delivered: {e}"),
            Ok(Some(Ok(m))) => {
                if let Some(id) = std::str::from_utf8(m.payload())
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    let t = started.elapsed().as_secs_f64();
                    let again = if received.insert(id) { "" } else { " (again)" };
                    println!("[{t:7.3}s] received {id} on link {}{again}", m.generation);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    sender.abort();
    let stats = publisher.shutdown(Duration::from_secs(5)).await;
    engine.shutdown().await;
    println!(
        "received {}/{count} messages; outbox: {} confirmed, {} replayed; {:?}",
        received.len(),
        stats.confirmed,
        stats.replayed,
        started.elapsed()
    );
    if (received.len() as u64) < count {
        std::process::exit(1);
    }
    Ok(())
}
