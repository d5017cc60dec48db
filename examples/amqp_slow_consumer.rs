//! Memory under a consumer that reads nothing, against a local RabbitMQ:
//! a plain publisher pushes a backlog into a queue, then a redial consumer
//! starts on it and holds its stream without reading it; prints the
//! process RSS before the consumer started and once the broker stopped
//! handing deliveries out, and what the broker still holds.
//!
//! ```text
//! cargo run --features amqp --example amqp_slow_consumer -- [PREFETCH] [MESSAGES] [BYTES]
//! ```
//! `PREFETCH` defaults to redial's default; `0` is "no prefetch" (what the
//! adapter did before it set one). Defaults: 40,000 messages of 1 KiB.

#[cfg(not(feature = "amqp"))]
fn main() {
    eprintln!("this example needs --features amqp");
}

#[cfg(feature = "amqp")]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use std::time::{Duration, Instant};

    use redial::amqp::lapin::options::{
        BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use redial::amqp::lapin::types::FieldTable;
    use redial::amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
    use redial::amqp::{AmqpConfig, AmqpTransport, DEFAULT_PREFETCH};
    use redial::machine::StateKind;
    use redial::runtime::Engine;

    const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let mut args = std::env::args().skip(1);
    let prefetch: u16 = args.next().map_or(Ok(DEFAULT_PREFETCH), |a| a.parse())?;
    let messages: u32 = args.next().map_or(Ok(40_000), |a| a.parse())?;
    let bytes: usize = args.next().map_or(Ok(1024), |a| a.parse())?;

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
    async fn ready(conn: &Connection, queue: &str) -> Result<u32, Box<dyn std::error::Error>> {
        let ch = conn.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = ch
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?;
        ch.close(200, "done".into()).await?;
        Ok(q.message_count())
    }

    let queue = format!("redial.example.slow-consumer.{}", std::process::id());
    let direct = Connection::connect(URI, ConnectionProperties::default()).await?;
    let ch = direct.create_channel().await?;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;

    let config = AmqpConfig::new(URI).prefetch(prefetch);
    let transport = AmqpTransport::new(config.clone())?;
    let engine = Engine::spawn(config.engine_config().build()?, transport.clone());
    engine.handle().wait_for(StateKind::Connected).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = vec![b'x'; bytes];
    for _ in 0..messages {
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await?;
    }
    ch.wait_for_confirms().await?;
    // Measured from here: the publisher's own buffers are already counted.
    let before = rss_kib();
    // Held, never read.
    let consumer = transport
        .consume(
            queue.as_str(),
            "",
            Default::default(),
            FieldTable::default(),
        )
        .await?;
    // Until the broker stops handing deliveries out (2 s without change).
    let mut last = (ready(&direct, &queue).await?, Instant::now());
    while last.1.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = ready(&direct, &queue).await?;
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let after = rss_kib();
    println!(
        "prefetch {prefetch}: {messages} x {bytes} B published, consumer reads nothing: \
         {} delivered to the client, {} still at the broker; RSS {before} KiB -> {after} KiB (+{} KiB)",
        messages - last.0,
        last.0,
        after.saturating_sub(before)
    );

    consumer.cancel().await;
    engine.shutdown().await;
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(())
}
