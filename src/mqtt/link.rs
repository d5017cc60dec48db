//! One link: one rumqttc event loop, polled by its own task until its first
//! error, and a forwarder task that hands requests to it in order.
//!
//! rumqttc tells which packet id a request got only through the events its
//! event loop yields (`Outgoing::Publish(pkid)`, `Outgoing::Subscribe(pkid)`),
//! in the order it took the requests. The forwarder is the only task that
//! sends requests, and it queues each request's waiter before sending it,
//! so the n-th outgoing event always belongs to the n-th queued waiter.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::machine::Generation;
use crate::mqtt::error::{LinkPublishError, is_ping_timeout, link_error_kind};
use crate::mqtt::inbound::{Ack, Counters, InboundError, InboundTx, Item};
use crate::mqtt::message::{Message, MqttConfirm, MqttMessage};
use crate::runtime::LinkReporter;

/// A request for the forwarder.
enum Cmd {
    Publish {
        publish: Publish,
        done: oneshot::Sender<()>,
    },
    Subscribe {
        filters: Vec<SubscribeFilter>,
        done: oneshot::Sender<Vec<SubscribeReasonCode>>,
    },
    Unsubscribe {
        filter: String,
        done: oneshot::Sender<()>,
    },
}

struct PubWaiter {
    qos: QoS,
    done: oneshot::Sender<()>,
}

/// Everything waiting for the broker, by stage. Dropping a sender resolves
/// its receiver with "link lost".
#[derive(Default)]
struct Waiters {
    dead: bool,
    /// Handed to rumqttc, packet id not known yet (in order).
    publishes: VecDeque<PubWaiter>,
    /// A publish rumqttc holds back because its packet id is still in use.
    collided: Option<(u16, PubWaiter)>,
    /// Sent, waiting for PUBACK / PUBCOMP.
    inflight: HashMap<u16, PubWaiter>,
    subscribes: VecDeque<oneshot::Sender<Vec<SubscribeReasonCode>>>,
    suback: HashMap<u16, oneshot::Sender<Vec<SubscribeReasonCode>>>,
    unsubscribes: VecDeque<oneshot::Sender<()>>,
    unsuback: HashMap<u16, oneshot::Sender<()>>,
}

impl Waiters {
    fn kill(&mut self) {
        *self = Waiters {
            dead: true,
            ..Waiters::default()
        };
    }
}

/// What the link's tasks share.
struct Shared {
    generation: Generation,
    reporter: LinkReporter,
    waiters: Mutex<Waiters>,
    inbound: InboundTx,
    /// To this link's acknowledger: acks for what the application took.
    acks: mpsc::UnboundedSender<Ack>,
    /// Larger deliveries go to the application as `InboundError::TooLarge`.
    max_packet_size: usize,
    /// Set by `close`: the event loop's end is ours, not a link loss.
    closing: AtomicBool,
}

impl Shared {
    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Acks and SUBACKs (deliveries go through `deliver`).
    fn incoming(&self, packet: Packet) {
        match packet {
            Packet::PubAck(ack) => self.confirm(ack.pkid, QoS::AtLeastOnce),
            Packet::PubComp(comp) => self.confirm(comp.pkid, QoS::ExactlyOnce),
            Packet::SubAck(ack) => {
                if let Some(done) = self.waiters().suback.remove(&ack.pkid) {
                    let _ = done.send(ack.return_codes);
                }
            }
            Packet::UnsubAck(ack) => {
                if let Some(done) = self.waiters().unsuback.remove(&ack.pkid) {
                    let _ = done.send(());
                }
            }
            _ => {}
        }
    }

    /// Hands a delivery to the application's buffer; waits (and so stops
    /// reading the socket) while the buffer is full of QoS 1/2 messages.
    /// Returns whether it waited.
    async fn deliver(&self, publish: Publish) -> bool {
        let ack = (publish.qos != QoS::AtMostOnce).then(|| {
            let ack = Ack {
                qos: publish.qos,
                pkid: publish.pkid,
            };
            (self.acks.clone(), ack)
        });
        // Read whole (rumqttc's own limit is the protocol's), measured here:
        // a size check in rumqttc would kill the link, and the broker would
        // send the same message again on every new link.
        let size = publish.size();
        let delivery = if size > self.max_packet_size {
            tracing::warn!(
                generation = self.generation.0,
                topic = %publish.topic,
                pkid = publish.pkid,
                size,
                "inbound message larger than max_packet_size: discarded"
            );
            Err(InboundError::TooLarge {
                generation: self.generation,
                topic: publish.topic,
                pkid: publish.pkid,
                qos: publish.qos,
                size,
                max: self.max_packet_size,
            })
        } else {
            Ok(Message {
                generation: self.generation,
                publish,
            })
        };
        self.inbound
            .push(Item {
                generation: self.generation,
                delivery,
                ack,
            })
            .await
    }

    fn confirm(&self, pkid: u16, qos: QoS) {
        let mut w = self.waiters();
        if w.inflight.get(&pkid).is_some_and(|p| p.qos == qos) {
            let waiter = w.inflight.remove(&pkid).expect("checked above");
            let _ = waiter.done.send(());
        }
    }

    fn outgoing(&self, event: Outgoing) {
        let mut w = self.waiters();
        match event {
            Outgoing::Publish(pkid) => {
                let waiter = match w.collided.take() {
                    Some((held, waiter)) if held == pkid => Some(waiter),
                    other => {
                        w.collided = other;
                        w.publishes.pop_front()
                    }
                };
                let Some(waiter) = waiter else {
                    tracing::warn!(
                        generation = self.generation.0,
                        pkid,
                        "publish without a waiter"
                    );
                    return;
                };
                if pkid == 0 {
                    // QoS 0: written and flushed; nothing more will come.
                    let _ = waiter.done.send(());
                } else {
                    w.inflight.insert(pkid, waiter);
                }
            }
            Outgoing::AwaitAck(pkid) => {
                if let Some(waiter) = w.publishes.pop_front() {
                    w.collided = Some((pkid, waiter));
                }
            }
            Outgoing::Subscribe(pkid) => {
                if let Some(done) = w.subscribes.pop_front() {
                    w.suback.insert(pkid, done);
                }
            }
            Outgoing::Unsubscribe(pkid) => {
                if let Some(done) = w.unsubscribes.pop_front() {
                    w.unsuback.insert(pkid, done);
                }
            }
            _ => {}
        }
    }
}

/// An open MQTT link (one generation). Cheap to clone.
#[derive(Clone)]
pub struct MqttLink {
    pub(crate) inner: Arc<LinkInner>,
}

pub(crate) struct LinkInner {
    shared: Arc<Shared>,
    session_present: bool,
    endpoint: usize,
    cmds: mpsc::Sender<Cmd>,
    client: AsyncClient,
    max_packet_size: usize,
    disconnect_timeout: Duration,
    tasks: Mutex<Tasks>,
}

#[derive(Default)]
struct Tasks {
    poll: Option<JoinHandle<()>>,
    others: Vec<JoinHandle<()>>,
}

impl Drop for LinkInner {
    fn drop(&mut self) {
        // A link dropped without `close` (an open the driver aborted) must
        // not leave an event loop running: the broker would keep the session.
        let tasks = self.tasks.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(poll) = &tasks.poll {
            poll.abort();
        }
        for t in &tasks.others {
            t.abort();
        }
    }
}

impl fmt::Debug for MqttLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttLink")
            .field("generation", &self.generation())
            .field("session_present", &self.session_present())
            .field("alive", &self.is_alive())
            .finish()
    }
}

/// Counts the sessions (CONNACK received, socket not closed yet) of one
/// transport.
#[derive(Debug, Default)]
pub(crate) struct SessionCounter {
    pub(crate) opened: AtomicU64,
    pub(crate) live: AtomicU64,
    pub(crate) max_live: AtomicU64,
    /// Links rumqttc ended for a missing PINGRESP.
    pub(crate) ping_timeouts: AtomicU64,
}

/// One live session; dropped with the event loop it was made for.
pub(crate) struct SessionGuard(Arc<SessionCounter>);

impl SessionGuard {
    pub(crate) fn new(counter: Arc<SessionCounter>) -> Self {
        counter.opened.fetch_add(1, Ordering::AcqRel);
        let live = counter.live.fetch_add(1, Ordering::AcqRel) + 1;
        counter.max_live.fetch_max(live, Ordering::AcqRel);
        Self(counter)
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) struct LinkParams {
    pub(crate) reporter: LinkReporter,
    pub(crate) session_present: bool,
    pub(crate) endpoint: usize,
    pub(crate) inbound: InboundTx,
    pub(crate) max_packet_size: usize,
    pub(crate) disconnect_timeout: Duration,
    pub(crate) queue: usize,
    pub(crate) session: SessionGuard,
}

impl MqttLink {
    /// Starts the link's tasks on an event loop that has just received a
    /// successful CONNACK.
    pub(crate) fn start(client: AsyncClient, eventloop: EventLoop, p: LinkParams) -> Self {
        let (acks, acks_rx) = mpsc::unbounded_channel();
        p.inbound
            .link_up(p.reporter.generation(), p.session_present);
        let shared = Arc::new(Shared {
            generation: p.reporter.generation(),
            reporter: p.reporter,
            waiters: Mutex::new(Waiters::default()),
            inbound: p.inbound,
            acks,
            max_packet_size: p.max_packet_size,
            closing: AtomicBool::new(false),
        });
        let (cmds, rx) = mpsc::channel(p.queue.max(1));
        // The link's tasks log in the link's span (docs/observability.md).
        let poll = tokio::spawn(run(shared.clone(), eventloop, p.session).in_current_span());
        let forwarder = tokio::spawn(forward(shared.clone(), client.clone(), rx).in_current_span());
        let announcer = tokio::spawn(announce(shared.reporter.clone()).in_current_span());
        let acknowledger = tokio::spawn(
            acknowledge(client.clone(), acks_rx, shared.inbound.counters.clone()).in_current_span(),
        );
        Self {
            inner: Arc::new(LinkInner {
                shared,
                session_present: p.session_present,
                endpoint: p.endpoint,
                cmds,
                client,
                max_packet_size: p.max_packet_size,
                disconnect_timeout: p.disconnect_timeout,
                tasks: Mutex::new(Tasks {
                    poll: Some(poll),
                    others: vec![forwarder, announcer, acknowledger],
                }),
            }),
        }
    }

    /// The link's generation.
    pub fn generation(&self) -> Generation {
        self.inner.shared.generation
    }

    /// The broker the link is connected to: an index into
    /// [`crate::mqtt::MqttConfig::brokers`].
    pub fn endpoint(&self) -> usize {
        self.inner.endpoint
    }

    /// Whether the broker resumed a stored session (CONNACK `session_present`).
    pub fn session_present(&self) -> bool {
        self.inner.session_present
    }

    /// Whether the event loop still runs (no error, not closed).
    pub fn is_alive(&self) -> bool {
        !self.inner.shared.waiters().dead
    }

    /// Publishes `message` on this link. Waits while the link's request
    /// queue is full; the returned future resolves as [`MqttConfirm`] says.
    ///
    /// This is the raw per-link call; applications publish through the
    /// outbox, which replays what a dead link did not confirm.
    pub async fn publish(&self, message: &MqttMessage) -> Result<MqttConfirm, LinkPublishError> {
        let publish = &message.publish;
        if !rumqttc::valid_topic(&publish.topic) {
            return Err(LinkPublishError::InvalidTopic(publish.topic.clone()));
        }
        let size = message.packet_size();
        if size > self.inner.max_packet_size {
            return Err(LinkPublishError::TooLarge {
                size,
                max: self.inner.max_packet_size,
            });
        }
        if !self.is_alive() {
            return Err(LinkPublishError::LinkLost);
        }
        let (done, rx) = oneshot::channel();
        self.inner
            .cmds
            .send(Cmd::Publish {
                publish: publish.clone(),
                done,
            })
            .await
            .map_err(|_| LinkPublishError::LinkLost)?;
        Ok(MqttConfirm { rx })
    }

    /// Sends one SUBSCRIBE and waits for its SUBACK; `None` if the link died.
    pub(crate) async fn subscribe_raw(
        &self,
        filters: Vec<SubscribeFilter>,
    ) -> Option<Vec<SubscribeReasonCode>> {
        let (done, rx) = oneshot::channel();
        self.inner
            .cmds
            .send(Cmd::Subscribe { filters, done })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Sends one UNSUBSCRIBE and waits for its UNSUBACK; `false` if the link died.
    pub(crate) async fn unsubscribe_raw(&self, filter: String) -> bool {
        let (done, rx) = oneshot::channel();
        if self
            .inner
            .cmds
            .send(Cmd::Unsubscribe { filter, done })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.is_ok()
    }

    /// Ends the link: a DISCONNECT if it is still alive (flushed within the
    /// disconnect timeout), then the event loop and the forwarder are
    /// aborted and awaited, so the socket is closed when this returns.
    /// Idempotent.
    pub(crate) async fn close(&self) {
        let inner = &self.inner;
        if inner.shared.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (poll, others) = {
            let mut t = inner.tasks.lock().unwrap_or_else(|e| e.into_inner());
            (t.poll.take(), std::mem::take(&mut t.others))
        };
        for t in &others {
            t.abort();
        }
        if let Some(mut poll) = poll {
            if self.is_alive() && inner.client.try_disconnect().is_ok() {
                if tokio::time::timeout(inner.disconnect_timeout, &mut poll)
                    .await
                    .is_err()
                {
                    poll.abort();
                    let _ = poll.await;
                }
            } else {
                poll.abort();
                let _ = poll.await;
            }
        }
        for t in others {
            let _ = t.await;
        }
        inner.shared.waiters().kill();
    }
}

/// Polls the event loop until its first error (or our DISCONNECT): rumqttc
/// would reconnect on the next poll, and that is the engine's decision.
async fn run(shared: Arc<Shared>, mut eventloop: EventLoop, session: SessionGuard) {
    let generation = shared.generation.0;
    let error: Option<ConnectionError> = loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(packet)) => {
                // Only inbound packets prove the link is alive.
                shared.reporter.activity();
                match packet {
                    Packet::Publish(publish) => {
                        if shared.deliver(publish).await {
                            // We stopped reading for the application, so a
                            // PINGRESP may wait unread in the socket: rumqttc
                            // would call the link dead at its next ping. The
                            // watchdog, which sees every packet we read,
                            // judges liveness.
                            eventloop.state.await_pingresp = false;
                        }
                    }
                    other => shared.incoming(other),
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break None,
            Ok(Event::Outgoing(event)) => shared.outgoing(event),
            Err(error) => break Some(error),
        }
    };
    shared.waiters().kill();
    if error.as_ref().is_some_and(is_ping_timeout) && !shared.closing.load(Ordering::Acquire) {
        session.0.ping_timeouts.fetch_add(1, Ordering::AcqRel);
    }
    // Close the socket before the engine hears of the loss, so that the
    // next link never overlaps this one at the broker.
    drop(eventloop);
    drop(session);
    if let Some(error) = error {
        if shared.closing.load(Ordering::Acquire) {
            return;
        }
        if is_ping_timeout(&error) {
            tracing::warn!(generation, "mqtt link silent: no PINGRESP");
        } else {
            tracing::info!(generation, %error, "mqtt link lost");
        }
        shared.reporter.lost(link_error_kind(&error));
    }
}

/// Hands requests to rumqttc in order, queueing each waiter first.
async fn forward(shared: Arc<Shared>, client: AsyncClient, mut rx: mpsc::Receiver<Cmd>) {
    while let Some(cmd) = rx.recv().await {
        let sent = match cmd {
            Cmd::Publish { publish, done } => {
                {
                    let mut w = shared.waiters();
                    if w.dead {
                        continue;
                    }
                    w.publishes.push_back(PubWaiter {
                        qos: publish.qos,
                        done,
                    });
                }
                client
                    .publish_bytes(publish.topic, publish.qos, publish.retain, publish.payload)
                    .await
                    .is_ok()
            }
            Cmd::Subscribe { filters, done } => {
                {
                    let mut w = shared.waiters();
                    if w.dead {
                        continue;
                    }
                    w.subscribes.push_back(done);
                }
                client.subscribe_many(filters).await.is_ok()
            }
            Cmd::Unsubscribe { filter, done } => {
                {
                    let mut w = shared.waiters();
                    if w.dead {
                        continue;
                    }
                    w.unsubscribes.push_back(done);
                }
                client.unsubscribe(filter).await.is_ok()
            }
        };
        if !sent {
            // The event loop is gone; its task fails every waiter.
            break;
        }
    }
}

/// Sends the acknowledgements of what the application took, in the order it
/// took them (rumqttc answers PUBREL with PUBCOMP by itself). Its own task:
/// rumqttc's request channel is drained by the event loop, which may be
/// waiting for room in the application's buffer.
async fn acknowledge(
    client: AsyncClient,
    mut acks: mpsc::UnboundedReceiver<Ack>,
    counters: Arc<Counters>,
) {
    while let Some(ack) = acks.recv().await {
        let mut publish = Publish::new("", ack.qos, Vec::new());
        publish.pkid = ack.pkid;
        if client.ack(&publish).await.is_err() {
            // The event loop is gone: the broker will deliver it again.
            break;
        }
        counters.acked.fetch_add(1, Ordering::AcqRel);
    }
}

/// Reports one inbound activity once the engine counts this link as up.
///
/// CONNACK and SUBACK arrive while the engine is still `Connecting`, where
/// activity is not counted; without this report the watchdog's first check
/// would see silence until the first PINGRESP, a whole keep-alive after
/// CONNACK, and could declare a healthy link dead.
async fn announce(reporter: LinkReporter) {
    let generation = reporter.generation();
    let mut watch = reporter.handle().watch();
    let up = watch
        .wait_for(|s| s.generation != generation || s.state.is_link_up())
        .await
        .map(|s| s.generation == generation && s.state.is_link_up());
    if matches!(up, Ok(true)) {
        reporter.activity();
    }
}
