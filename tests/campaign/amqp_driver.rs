//! The AMQP driver: RabbitMQ through the chaos proxy, a fanout exchange
//! feeding two queues, one read by an independent plain lapin consumer
//! (the witness, connected straight to the broker) and one by a redial
//! consumer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use redial::amqp::lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
};
use redial::amqp::lapin::types::FieldTable;
use redial::amqp::lapin::{Connection, ExchangeKind};
use redial::amqp::{
    AckError, AmqpConfig, AmqpMessage, AmqpTransport, Consumer, Delivery, Heartbeat,
};
use redial::outbox::{OutboxConfig, Publisher};
use redial::runtime::Engine;

use super::alarm::{self, Alarm};
use super::harness::{self, Drive, Inbound, Special};
use super::record::{Bounds, Kind, Run, SharedWitness, WitnessLog, parse_payload, payload};
use super::schedule::{Fault, Schedule};
use super::{Settings, run_tag};
use crate::support::amqp as a;
use crate::support::chaos;

impl Inbound for Consumer {
    type Item = Delivery;

    fn next(&mut self) -> impl std::future::Future<Output = Option<Delivery>> + Send {
        self.recv()
    }

    fn buffered(&self) -> usize {
        self.len()
    }

    fn payload(item: &Delivery) -> &[u8] {
        item.data()
    }

    async fn ack(item: Delivery) -> Result<(), String> {
        match item.ack().await {
            Ok(()) | Err(AckError::Stale { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Broker-side close and the memory alarm.
struct AmqpSpecial {
    connection_name: String,
}

impl Special for AmqpSpecial {
    fn hold(
        &self,
        fault: Fault,
        hold: Duration,
    ) -> BoxFuture<'_, Result<(Instant, Instant), String>> {
        Box::pin(async move {
            match fault {
                Fault::BrokerClose => {
                    let start = Instant::now();
                    let name = self.connection_name.clone();
                    let closed =
                        tokio::task::spawn_blocking(move || a::close_named_connections(&name))
                            .await
                            .unwrap_or(0);
                    if closed == 0 {
                        return Err(
                            "no connection closed (rabbitmqctl missing, or no link up)".to_owned()
                        );
                    }
                    Ok((start, Instant::now()))
                }
                Fault::MemoryAlarm => {
                    let raised = tokio::task::spawn_blocking(Alarm::raise)
                        .await
                        .map_err(|e| e.to_string())??;
                    let start = Instant::now();
                    tokio::time::sleep(hold).await;
                    // The guard restores the watermark when dropped (also on a panic).
                    let took = raised.took;
                    let _ = tokio::task::spawn_blocking(move || drop(raised)).await;
                    warn_if_slow(took);
                    Ok((start, Instant::now()))
                }
                other => Err(format!("{other} does not apply to AMQP")),
            }
        })
    }
}

/// `rabbitmqctl` takes about a second: worth knowing when reading a run.
fn warn_if_slow(took: Duration) {
    if took > Duration::from_secs(3) {
        eprintln!(
            "campaign: raising the memory alarm took {:.1}s",
            took.as_secs_f64()
        );
    }
}

/// A plain lapin consumer on `queue`, straight to the broker: what the
/// broker really holds, in queue order.
async fn witness(conn: &Connection, queue: &str, tag: &str) -> SharedWitness {
    let log: SharedWitness = Arc::new(Mutex::new(WitnessLog::default()));
    let out = log.clone();
    let (ch, mut deliveries) = a::plain_consumer(conn, queue).await;
    let tag = tag.to_owned();
    tokio::spawn(async move {
        let _ch = ch;
        while let Some(next) = deliveries.next().await {
            let Ok(d) = next else {
                log.lock().unwrap().errors += 1;
                break;
            };
            let mut w = log.lock().unwrap();
            match parse_payload(&tag, &d.data) {
                Some(seq) => {
                    w.arrivals.push(seq);
                    let id = d.properties.message_id().as_ref().map(|s| s.to_string());
                    if id.as_deref() != Some(&format!("{tag}-{seq}")) {
                        w.bad_message_ids.push((seq, id.unwrap_or_default()));
                    }
                }
                None => w.foreign += 1,
            }
        }
    });
    out
}

/// Runs one seed against RabbitMQ.
pub async fn run(schedule: Schedule, settings: Settings) -> Run {
    let tag = run_tag(&schedule);
    let exchange = format!("redial.campaign.{tag}.x");
    let witness_queue = format!("redial.campaign.{tag}.witness");
    let consumer_queue = format!("redial.campaign.{tag}.consumer");
    let connection_name = format!("redial-campaign-{tag}");
    let mut notes = Vec::new();
    if schedule.has_alarm()
        && !tokio::task::spawn_blocking(alarm::restore)
            .await
            .unwrap_or(false)
    {
        notes.push("rabbitmqctl does not answer: memory alarms are skipped".to_owned());
    }

    // Broker objects, made straight at the broker.
    let direct = a::direct().await;
    {
        let ch = direct.create_channel().await.expect("a channel");
        ch.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange.declare");
        let _ = ch.close(200, "done".into()).await;
    }
    a::declare_queue(&direct, &witness_queue).await;
    {
        let ch = direct.create_channel().await.expect("a channel");
        ch.queue_bind(
            witness_queue.as_str().into(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.bind");
        let _ = ch.close(200, "done".into()).await;
    }
    let witness = witness(&direct, &witness_queue, &tag).await;

    let proxy = chaos::start(a::broker_addr()).await.expect("a proxy");
    let config = AmqpConfig::new(a::proxied_uri(proxy.addr()))
        .connection_name(connection_name.clone())
        .heartbeat(Heartbeat::secs(settings.liveness.as_secs() as u16))
        .connect_timeout(settings.connect_timeout)
        .consumer_buffer(settings.consumer_buffer)
        .message_id_prefix(tag.clone());
    let transport = AmqpTransport::new(config.clone()).expect("a transport");
    // Recorded before the first link: replayed on every link.
    let queue = transport
        .declare_queue(&consumer_queue, Default::default(), FieldTable::default())
        .await
        .expect("declare the consumer queue");
    transport
        .bind_queue(&queue, &exchange, "", FieldTable::default())
        .await
        .expect("bind the consumer queue");
    transport.qos(settings.prefetch, false).await.expect("qos");
    let consumer = transport
        .consume(
            &queue,
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let engine_config = config
        .engine_config()
        .backoff(settings.backoff.clone())
        .stable_period(settings.stable_period)
        .build()
        .expect("a valid engine config");
    let prepared = Engine::prepare(engine_config.clone(), transport.clone());
    let events = prepared.events();
    let engine = prepared.start();
    let outbox = OutboxConfig::builder()
        .max_messages(settings.max_messages)
        .build()
        .expect("a valid outbox config");
    let publisher = Publisher::new(&engine, transport.clone(), outbox);

    let message = {
        let (tag, exchange) = (tag.clone(), exchange.clone());
        Box::new(move |seq: u64, bad: bool| {
            if bad {
                // Its own missing exchange, so its refusal names it.
                let missing = format!("{exchange}.missing.{seq}");
                let m = AmqpMessage::new(&missing, "", payload(&tag, seq));
                (m, Kind::Bad { because: missing })
            } else {
                let m = AmqpMessage::new(&exchange, "", payload(&tag, seq)).mandatory(true);
                (m, Kind::Valid)
            }
        })
    };
    let bounds = Bounds {
        engine: engine_config,
        max_messages: settings.max_messages as u64,
        consumer_buffer: settings.consumer_buffer,
        deadline_slack: settings.deadline_slack,
        window_slack: settings.window_slack,
        loss_tail: settings.loss_tail,
    };
    let run = harness::drive(Drive {
        schedule,
        tag,
        engine,
        events,
        publisher,
        proxy,
        inbound: consumer,
        witness,
        message,
        special: AmqpSpecial { connection_name },
        bounds,
        settings,
        notes,
    })
    .await;

    for q in [&witness_queue, &consumer_queue] {
        a::delete_queue(&direct, q).await;
    }
    if let Ok(ch) = direct.create_channel().await {
        let _ = ch
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
        let _ = ch.close(200, "done".into()).await;
    }
    let _ = direct.close(200, "done".into()).await;
    if run.schedule.has_alarm() {
        let _ = tokio::task::spawn_blocking(alarm::restore).await;
    }
    run
}
