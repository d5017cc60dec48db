//! The MQTT driver: a private Mosquitto with an unbounded queue per
//! subscriber (the system one drops messages to a slow subscriber, which
//! would make the witness lie), redial through the chaos proxy with a
//! persistent session subscribed to the topic it publishes to, and an
//! independent plain rumqttc subscriber straight to the broker as witness.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redial::mqtt::rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet};
use redial::mqtt::{InboundError, Message, Messages, MqttConfig, MqttMessage, MqttTransport, QoS};
use redial::outbox::{OutboxConfig, Publisher};
use redial::runtime::Engine;

use super::harness::{self, Drive, Inbound, Special};
use super::record::{Bounds, Kind, Run, SharedWitness, WitnessLog, parse_payload, payload};
use super::schedule::{Fault, Schedule};
use super::{Settings, run_tag};
use crate::support::chaos;
use crate::support::mosquitto::Mosquitto;

/// The largest packet the redial client accepts; the poison is twice that.
const MAX_PACKET: usize = 16 * 1024;

/// The adapter's inbound buffer (`MqttConfig::inbound_capacity`): what the
/// consumer stream is held to.
const INBOUND_CAPACITY: usize = 32;

type Delivery = Result<Message, InboundError>;

impl Inbound for Messages {
    type Item = Delivery;

    fn next(&mut self) -> impl std::future::Future<Output = Option<Delivery>> + Send {
        self.recv()
    }

    fn buffered(&self) -> usize {
        self.len()
    }

    /// A poison message (`TooLarge`) has no payload: it is taken, and so
    /// acknowledged, but counts as no sequence number.
    fn payload(item: &Delivery) -> &[u8] {
        item.as_ref().map_or(&[], |m| m.payload())
    }

    async fn ack(_item: Delivery) -> Result<(), String> {
        // The adapter acknowledges a delivery when it is taken.
        Ok(())
    }
}

/// The poison message.
struct MqttSpecial {
    broker: SocketAddr,
    topic: String,
}

impl Special for MqttSpecial {
    fn hold(
        &self,
        fault: Fault,
        hold: Duration,
    ) -> BoxFuture<'_, Result<(Instant, Instant), String>> {
        Box::pin(async move {
            if fault != Fault::Poison {
                return Err(format!("{fault} does not apply to MQTT"));
            }
            let start = Instant::now();
            publish_plain(self.broker, &self.topic, vec![b'p'; 2 * MAX_PACKET]).await?;
            tokio::time::sleep(hold).await;
            Ok((start, Instant::now()))
        })
    }
}

fn options(id: String, broker: SocketAddr) -> MqttOptions {
    let mut o = MqttOptions::new(id, broker.ip().to_string(), broker.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Publishes one QoS 1 message with a plain client, straight to the broker.
async fn publish_plain(broker: SocketAddr, topic: &str, body: Vec<u8>) -> Result<(), String> {
    let (client, mut events) = AsyncClient::new(
        options(format!("poison-{}", std::process::id()), broker),
        10,
    );
    client
        .publish(topic, QoS::AtLeastOnce, false, body)
        .await
        .map_err(|e| e.to_string())?;
    let acked = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(MqttEvent::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "no PUBACK for the poison".to_owned())?;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    acked
}

/// A plain rumqttc subscriber straight to the broker, QoS 1.
async fn witness(broker: SocketAddr, topic: &str, tag: &str) -> Result<SharedWitness, String> {
    let (client, mut events) = AsyncClient::new(options(format!("witness-{tag}"), broker), 1024);
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "the witness got no SUBACK".to_owned())??;
    let log: SharedWitness = Arc::new(Mutex::new(WitnessLog::default()));
    let out = log.clone();
    let tag = tag.to_owned();
    tokio::spawn(async move {
        let _client = client;
        loop {
            match events.poll().await {
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    let mut w = log.lock().unwrap();
                    match parse_payload(&tag, &p.payload) {
                        Some(seq) => w.arrivals.push(seq),
                        None => w.foreign += 1,
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    log.lock().unwrap().errors += 1;
                    break;
                }
            }
        }
    });
    Ok(out)
}

/// Runs one seed against a private Mosquitto.
pub async fn run(schedule: Schedule, settings: Settings) -> Result<Run, String> {
    let tag = run_tag(&schedule);
    let topic = format!("redial/campaign/{tag}");
    let broker = Mosquitto::deep_queue().map_err(|e| format!("private mosquitto: {e}"))?;
    let witness = witness(broker.addr(), &topic, &tag).await?;
    let proxy = chaos::start(broker.addr())
        .await
        .map_err(|e| e.to_string())?;
    let max_inflight = 32;
    let config = MqttConfig::new("127.0.0.1", proxy.addr().port(), format!("redial-{tag}"))
        .keep_alive(settings.liveness)
        .clean_session(false)
        .max_inflight(max_inflight)
        .max_packet_size(MAX_PACKET)
        .inbound_capacity(INBOUND_CAPACITY)
        .connect_timeout(settings.connect_timeout);
    let transport = MqttTransport::new(config.clone()).map_err(|e| e.to_string())?;
    let messages = transport.messages().ok_or("messages taken")?;
    transport
        .subscribe(topic.clone(), QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    let engine_config = config
        .engine_config()
        .backoff(settings.backoff.clone())
        .stable_period(settings.stable_period)
        .build()
        .map_err(|e| e.to_string())?;
    let prepared = Engine::prepare(engine_config.clone(), transport.clone());
    let events = prepared.events();
    let engine = prepared.start();
    let outbox = OutboxConfig::builder()
        .max_messages(settings.max_messages)
        .build()
        .map_err(|e| e.to_string())?;
    let publisher = Publisher::new(&engine, transport.clone(), outbox);
    let message = {
        let (tag, topic) = (tag.clone(), topic.clone());
        Box::new(move |seq: u64, _bad: bool| {
            let m = MqttMessage::new(topic.clone(), QoS::AtLeastOnce, payload(&tag, seq));
            (m, Kind::Valid)
        })
    };
    let bounds = Bounds {
        engine: engine_config,
        max_messages: settings.max_messages as u64,
        consumer_buffer: INBOUND_CAPACITY,
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
        inbound: messages,
        witness,
        message,
        special: MqttSpecial {
            broker: broker.addr(),
            topic,
        },
        bounds,
        settings,
        notes: Vec::new(),
    })
    .await;
    drop(broker);
    Ok(run)
}
