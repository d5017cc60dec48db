//! `MqttTransport`: the redial transport over rumqttc, and the recorded
//! subscription set.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use rumqttc::{
    AsyncClient, ConnectionError, Event, Packet, QoS, SubscribeFilter, SubscribeReasonCode,
};

use crate::machine::ProbeOutcome;
use crate::mqtt::config::{MqttConfig, MqttConfigError, RestorePolicy};
use crate::mqtt::error::{MqttError, SubscribeError};
use crate::mqtt::inbound::{self, InboundTx, Messages};
use crate::mqtt::link::{LinkInner, LinkParams, MqttLink, SessionCounter, SessionGuard};
use crate::mqtt::reach;
use crate::runtime::{OpenContext, Transport};

/// Filters per SUBSCRIBE packet when restoring (keeps packets small).
const RESTORE_CHUNK: usize = 64;

/// What a subscribe call achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeOutcome {
    /// The broker granted the subscription at this QoS on the current link.
    Granted(QoS),
    /// No link is up (or it died before SUBACK): the filter is recorded and
    /// will be subscribed on the next link before it is handed out.
    Deferred,
}

#[derive(Debug, Clone)]
struct Entry {
    filter: String,
    qos: QoS,
    /// The broker's session holds it (SUBACK success since the session began).
    acked: bool,
}

#[derive(Default)]
struct Subscriptions {
    /// The recorded set, in subscription order.
    entries: Vec<Entry>,
    /// Unsubscribed filters a persistent session may still hold.
    pending_unsubs: Vec<String>,
    /// The link being restored or up; weak, so that an aborted open still
    /// drops (and stops) its link.
    current: Option<Weak<LinkInner>>,
}

impl Subscriptions {
    fn current(&self) -> Option<MqttLink> {
        self.current
            .as_ref()
            .and_then(Weak::upgrade)
            .map(|inner| MqttLink { inner })
    }

    fn is_current(&self, link: &MqttLink) -> bool {
        self.current
            .as_ref()
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&link.inner)))
    }

    fn mark_acked(&mut self, filter: &str, qos: QoS) {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.filter == filter && e.qos == qos)
        {
            e.acked = true;
        }
    }
}

/// Session counters of one transport (all its clones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TransportStats {
    /// Sessions established (successful CONNACKs).
    pub sessions_opened: u64,
    /// Sessions whose socket is still open.
    pub sessions_live: u64,
    /// The most sessions ever live at once: 1 when links never overlap.
    pub max_sessions_live: u64,
    /// Filters subscribed again by restores (not counting the application's
    /// own subscribe calls).
    pub filters_restored: u64,
    /// Deliveries received from the broker (all links, every QoS).
    pub messages_received: u64,
    /// Deliveries the application took from [`Messages`].
    pub messages_taken: u64,
    /// Deliveries waiting in [`Messages`] now.
    pub messages_buffered: u64,
    /// The most deliveries ever waiting in [`Messages`]: never more than
    /// [`MqttConfig::inbound_capacity`].
    pub max_messages_buffered: u64,
    /// Deliveries larger than `max_packet_size`, surfaced as
    /// [`InboundError::TooLarge`](crate::mqtt::InboundError::TooLarge).
    pub messages_too_large: u64,
    /// QoS 0 deliveries dropped because the buffer was full.
    pub messages_dropped: u64,
    /// QoS 1/2 deliveries dropped from the buffer because a later link
    /// resumed their session, on which the broker sends them again.
    pub messages_superseded: u64,
    /// Acknowledgements (PUBACK; QoS 2: PUBREC) of taken deliveries handed
    /// to their live link, in order, ahead of anything the link sends
    /// later. A delivery taken after its link died is not counted.
    pub messages_acked: u64,
    /// Links that ended because a PINGRESP did not come before the next
    /// ping (rumqttc's keep-alive check, the other liveness detector next
    /// to the engine's watchdog).
    pub ping_timeouts: u64,
}

struct Inner {
    config: MqttConfig,
    sessions: Arc<SessionCounter>,
    restored: AtomicU64,
    subs: Mutex<Subscriptions>,
    inbound: InboundTx,
    messages: Mutex<Option<Messages>>,
}

impl Inner {
    fn subs(&self) -> MutexGuard<'_, Subscriptions> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The MQTT transport: give a clone to [`crate::runtime::Engine::spawn`],
/// keep one to subscribe and to take the message stream.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use redial::mqtt::{MqttConfig, MqttTransport, QoS};
/// use redial::runtime::Engine;
///
/// let config = MqttConfig::new("127.0.0.1", 1883, "demo");
/// let transport = MqttTransport::new(config.clone())?;
/// let mut messages = transport.messages().expect("taken once");
/// transport.subscribe("sensors/#", QoS::AtLeastOnce).await?; // recorded
/// let engine = Engine::spawn(config.engine_config().build()?, transport.clone());
/// while let Some(delivery) = messages.recv().await {
///     match delivery {
///         Ok(m) => println!("{} on link {}: {:?}", m.topic(), m.generation, m.payload()),
///         Err(e) => eprintln!("{e}"), // e.g. a message larger than max_packet_size
///     }
/// }
/// # engine.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MqttTransport {
    inner: Arc<Inner>,
}

impl fmt::Debug for MqttTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttTransport")
            .field("client_id", &self.inner.config.client_id)
            .field("brokers", &self.inner.config.brokers)
            .finish_non_exhaustive()
    }
}

impl MqttTransport {
    /// A transport for `config` (validated).
    pub fn new(config: MqttConfig) -> Result<Self, MqttConfigError> {
        config.validate()?;
        let (inbound, messages) = inbound::channel(config.inbound_capacity);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                sessions: Arc::default(),
                restored: AtomicU64::new(0),
                subs: Mutex::new(Subscriptions::default()),
                inbound,
                messages: Mutex::new(Some(messages)),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MqttConfig {
        &self.inner.config
    }

    /// Session counters.
    pub fn stats(&self) -> TransportStats {
        let s = &self.inner.sessions;
        let m = &self.inner.inbound.counters;
        TransportStats {
            sessions_opened: s.opened.load(Ordering::Acquire),
            sessions_live: s.live.load(Ordering::Acquire),
            max_sessions_live: s.max_live.load(Ordering::Acquire),
            filters_restored: self.inner.restored.load(Ordering::Acquire),
            messages_received: m.received.load(Ordering::Acquire),
            messages_taken: m.taken.load(Ordering::Acquire),
            messages_buffered: self.inner.inbound.buffered(),
            max_messages_buffered: m.max_buffered.load(Ordering::Acquire),
            messages_too_large: m.too_large.load(Ordering::Acquire),
            messages_dropped: m.dropped.load(Ordering::Acquire),
            messages_superseded: m.superseded.load(Ordering::Acquire),
            messages_acked: m.acked.load(Ordering::Acquire),
            ping_timeouts: s.ping_timeouts.load(Ordering::Acquire),
        }
    }

    /// The stream of delivered messages, across every link. It can be taken
    /// once; later calls return `None`. Until it is taken, deliveries wait
    /// in its buffer unacknowledged.
    pub fn messages(&self) -> Option<Messages> {
        self.inner
            .messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The recorded subscriptions, in order.
    pub fn subscriptions(&self) -> Vec<(String, QoS)> {
        self.inner
            .subs()
            .entries
            .iter()
            .map(|e| (e.filter.clone(), e.qos))
            .collect()
    }

    /// Records a subscription and, when a link is up, subscribes on it and
    /// waits for the SUBACK. Every later link subscribes it again (per the
    /// [`RestorePolicy`]) before it is handed out, so before the outbox
    /// flushes. A SUBACK failure removes it from the set and is returned.
    pub async fn subscribe(
        &self,
        filter: impl Into<String>,
        qos: QoS,
    ) -> Result<SubscribeOutcome, SubscribeError> {
        let filter = filter.into();
        if !rumqttc::valid_filter(&filter) {
            return Err(SubscribeError::InvalidFilter(filter));
        }
        let link = {
            let mut subs = self.inner.subs();
            subs.pending_unsubs.retain(|f| *f != filter);
            match subs.entries.iter_mut().find(|e| e.filter == filter) {
                Some(e) => {
                    e.qos = qos;
                    e.acked = false;
                }
                None => subs.entries.push(Entry {
                    filter: filter.clone(),
                    qos,
                    acked: false,
                }),
            }
            subs.current()
        };
        let Some(link) = link else {
            return Ok(SubscribeOutcome::Deferred);
        };
        let codes = link
            .subscribe_raw(vec![SubscribeFilter::new(filter.clone(), qos)])
            .await;
        let mut subs = self.inner.subs();
        match codes.as_deref() {
            Some([SubscribeReasonCode::Success(granted)]) => {
                subs.mark_acked(&filter, qos);
                Ok(SubscribeOutcome::Granted(*granted))
            }
            Some(_) => {
                subs.entries
                    .retain(|e| !(e.filter == filter && e.qos == qos));
                Err(SubscribeError::Refused { filter })
            }
            None => Ok(SubscribeOutcome::Deferred),
        }
    }

    /// Removes a subscription from the recorded set and, when a link is
    /// up, unsubscribes on it. With a persistent session, an unsubscribe
    /// the broker did not acknowledge is sent again on the next link.
    pub async fn unsubscribe(&self, filter: impl Into<String>) -> Result<(), SubscribeError> {
        let filter = filter.into();
        if !rumqttc::valid_filter(&filter) {
            return Err(SubscribeError::InvalidFilter(filter));
        }
        let link = {
            let mut subs = self.inner.subs();
            subs.entries.retain(|e| e.filter != filter);
            if !self.inner.config.clean_session && !subs.pending_unsubs.contains(&filter) {
                subs.pending_unsubs.push(filter.clone());
            }
            subs.current()
        };
        if let Some(link) = link
            && link.unsubscribe_raw(filter.clone()).await
        {
            self.inner.subs().pending_unsubs.retain(|f| *f != filter);
        }
        Ok(())
    }

    /// Makes `link` current and restores what its session lacks.
    async fn restore(&self, link: &MqttLink) -> Result<(), MqttError> {
        let session = link.session_present();
        let (subscribe, unsubscribe) = {
            let mut subs = self.inner.subs();
            subs.current = Some(Arc::downgrade(&link.inner));
            if !session {
                subs.pending_unsubs.clear();
                for e in &mut subs.entries {
                    e.acked = false;
                }
            }
            let all = !session || self.inner.config.restore == RestorePolicy::Always;
            let subscribe: Vec<_> = subs
                .entries
                .iter()
                .filter(|e| all || !e.acked)
                .map(|e| SubscribeFilter::new(e.filter.clone(), e.qos))
                .collect();
            (subscribe, subs.pending_unsubs.clone())
        };
        let result = self.restore_on(link, subscribe, unsubscribe).await;
        if result.is_err() {
            let mut subs = self.inner.subs();
            if subs.is_current(link) {
                subs.current = None;
            }
        }
        result
    }

    async fn restore_on(
        &self,
        link: &MqttLink,
        subscribe: Vec<SubscribeFilter>,
        unsubscribe: Vec<String>,
    ) -> Result<(), MqttError> {
        for filter in unsubscribe {
            if !link.unsubscribe_raw(filter.clone()).await {
                return Err(MqttError::LostDuringRestore);
            }
            self.inner.subs().pending_unsubs.retain(|f| *f != filter);
        }
        let mut refused = Vec::new();
        for chunk in subscribe.chunks(RESTORE_CHUNK) {
            let codes = link
                .subscribe_raw(chunk.to_vec())
                .await
                .ok_or(MqttError::LostDuringRestore)?;
            let mut subs = self.inner.subs();
            for (i, f) in chunk.iter().enumerate() {
                match codes.get(i) {
                    Some(SubscribeReasonCode::Success(_)) => {
                        self.inner.restored.fetch_add(1, Ordering::AcqRel);
                        subs.mark_acked(&f.path, f.qos);
                    }
                    _ => refused.push(f.path.clone()),
                }
            }
        }
        if refused.is_empty() {
            tracing::debug!(
                generation = link.generation().0,
                restored = subscribe.len(),
                "subscriptions restored"
            );
            Ok(())
        } else {
            Err(MqttError::RestoreRefused { filters: refused })
        }
    }
}

impl Transport for MqttTransport {
    type Link = MqttLink;
    type Error = MqttError;

    fn open(
        &self,
        ctx: OpenContext,
    ) -> impl Future<Output = Result<MqttLink, MqttError>> + Send + 'static {
        let this = self.clone();
        async move {
            let config = &this.inner.config;
            let (client, mut eventloop) =
                AsyncClient::new(config.mqtt_options(ctx.endpoint)?, config.request_capacity);
            eventloop.set_network_options(config.network_options());
            // The first poll connects; it is the only poll before the link's
            // task takes the event loop, so rumqttc never reconnects by itself.
            let connack = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => connack,
                Ok(Event::Incoming(other)) => {
                    return Err(MqttError::Connect(ConnectionError::NotConnAck(other)));
                }
                Ok(Event::Outgoing(_)) => {
                    return Err(MqttError::Connect(ConnectionError::RequestsDone));
                }
                Err(error) => return Err(MqttError::from_connect(error)),
            };
            let session = SessionGuard::new(this.inner.sessions.clone());
            if !config.keep_alive.is_zero() {
                // CONNECT carried the keep-alive; ping twice as often so an
                // idle healthy link never looks silent to the watchdog.
                eventloop
                    .mqtt_options
                    .set_keep_alive(config.ping_interval());
            }
            let link = MqttLink::start(
                client,
                eventloop,
                LinkParams {
                    reporter: ctx.reporter,
                    session_present: connack.session_present,
                    endpoint: ctx.endpoint,
                    inbound: this.inner.inbound.clone(),
                    max_packet_size: config.max_packet_size,
                    disconnect_timeout: config.disconnect_timeout,
                    queue: usize::from(config.max_inflight),
                    session,
                },
            );
            if let Err(error) = this.restore(&link).await {
                link.close().await;
                return Err(error);
            }
            Ok(link)
        }
    }

    fn close(
        &self,
        link: MqttLink,
        reason: crate::machine::Reason,
    ) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            tracing::debug!(?reason, "closing the MQTT client");
            {
                let mut subs = this.inner.subs();
                if subs.is_current(&link) {
                    subs.current = None;
                }
            }
            link.close().await;
        }
    }

    /// `host:port` of the broker (credentials are not part of it).
    fn peer(&self, endpoint: usize) -> Option<String> {
        let (host, port) = self.inner.config.brokers().get(endpoint)?;
        Some(format!("{host}:{port}"))
    }

    /// A TCP connect and a CONNECT every broker refuses, no session (see
    /// docs/mqtt.md).
    fn probe(&self, endpoint: usize) -> impl Future<Output = ProbeOutcome> + Send + 'static {
        let config = &self.inner.config;
        // A broker out of range: let the open report it.
        let probe = config
            .broker(endpoint)
            .ok()
            .map(|(host, port)| reach::probe(host.to_owned(), port, config.tls.is_some()));
        async move {
            match probe {
                Some(probe) => probe.await,
                None => ProbeOutcome::Reachable,
            }
        }
    }
}
