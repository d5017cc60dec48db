//! Delivered messages on their way to the application: one bounded buffer
//! for the transport's whole life, each QoS 1/2 message acknowledged to the
//! broker only when the application takes it.
//!
//! A QoS 1/2 delivery still buffered when a later link resumed its session
//! is dropped when it reaches the front: it can no longer be acknowledged,
//! and the broker must send it again on the resumed session (MQTT 3.1.1
//! section 4.4), where it is queued behind. Without this, a slow reader's
//! stale deliveries fill the buffer, the new link stops reading, and its
//! keep-alive fails (found by the fault campaign, slow consumer after a
//! blackhole).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use rumqttc::QoS;
use tokio::sync::mpsc;

use crate::machine::Generation;
use crate::mqtt::message::Message;

/// A delivery the application gets as an error instead of a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InboundError {
    /// The broker delivered a PUBLISH larger than
    /// [`MqttConfig::max_packet_size`](crate::mqtt::MqttConfig::max_packet_size).
    /// Its payload was discarded; a QoS 1/2 one is acknowledged when this
    /// error is taken, so the broker does not deliver it again.
    #[error(
        "message on {topic:?} (packet id {pkid}, QoS {qos:?}) of {size} bytes exceeds the maximum packet size {max}; discarded"
    )]
    TooLarge {
        /// The link it arrived on.
        generation: Generation,
        /// Its topic.
        topic: String,
        /// Its packet id (0 for QoS 0).
        pkid: u16,
        /// Its QoS.
        qos: QoS,
        /// The PUBLISH packet's size in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// QoS 0 messages arrived while the buffer was full and were dropped
    /// (QoS 0 is at most once; QoS 1/2 messages are never dropped).
    #[error("{count} QoS 0 messages dropped: the inbound buffer was full")]
    Dropped {
        /// How many since the last report.
        count: u64,
    },
}

/// What a QoS 1/2 delivery needs acknowledged, on the link it arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ack {
    pub(crate) qos: QoS,
    pub(crate) pkid: u16,
}

/// One delivery in the buffer.
pub(crate) struct Item {
    /// The link it arrived on.
    pub(crate) generation: Generation,
    pub(crate) delivery: Result<Message, InboundError>,
    /// The link's acknowledger and what to acknowledge (QoS 1/2 only).
    pub(crate) ack: Option<(mpsc::UnboundedSender<Ack>, Ack)>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: AtomicU64,
    pub(crate) taken: AtomicU64,
    pub(crate) max_buffered: AtomicU64,
    pub(crate) too_large: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) superseded: AtomicU64,
    /// Acknowledgements handed to a live link's event loop.
    pub(crate) acked: AtomicU64,
    /// Dropped QoS 0 messages not yet reported to the application.
    unreported: AtomicU64,
    sessions: Mutex<Sessions>,
}

/// Which links share the broker's session (links are numbered by generation).
#[derive(Debug, Default, Clone, Copy)]
struct Sessions {
    /// The link that began the current session (CONNACK without
    /// `session_present`).
    began: u64,
    /// The latest link that resumed it (CONNACK with `session_present`).
    resumed: u64,
}

impl Counters {
    /// Whether the broker must send this delivery again: a QoS 1/2 one
    /// (unacknowledged while buffered) from a link of the current session
    /// older than the latest link that resumed it.
    fn superseded(&self, item: &Item) -> bool {
        if item.ack.is_none() {
            return false;
        }
        let s = *self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        (s.began..s.resumed).contains(&item.generation.0)
    }
}

/// The links' side of the buffer.
#[derive(Clone)]
pub(crate) struct InboundTx {
    tx: mpsc::Sender<Item>,
    pub(crate) counters: Arc<Counters>,
}

impl InboundTx {
    /// A link is up, before it reads anything: whether the broker resumed
    /// the session (CONNACK `session_present`).
    pub(crate) fn link_up(&self, generation: Generation, session_present: bool) {
        let mut s = self
            .counters
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if session_present {
            s.resumed = s.resumed.max(generation.0);
        } else {
            *s = Sessions {
                began: generation.0,
                resumed: 0,
            };
        }
    }

    /// Hands one delivery to the application's buffer. When the buffer is
    /// full a QoS 0 delivery is dropped (and reported at the next take); a
    /// QoS 1/2 one waits for room: the caller stops reading the socket.
    /// Returns whether it waited.
    pub(crate) async fn push(&self, item: Item) -> bool {
        self.counters.received.fetch_add(1, Ordering::AcqRel);
        if matches!(item.delivery, Err(InboundError::TooLarge { .. })) {
            self.counters.too_large.fetch_add(1, Ordering::AcqRel);
        }
        let mut waited = false;
        let sent = match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(item)) if item.ack.is_none() => {
                self.counters.dropped.fetch_add(1, Ordering::AcqRel);
                self.counters.unreported.fetch_add(1, Ordering::AcqRel);
                tracing::debug!("inbound buffer full: QoS 0 message dropped");
                false
            }
            // Not acknowledged: the broker holds the rest of its window.
            Err(mpsc::error::TrySendError::Full(item)) => {
                waited = true;
                self.tx.send(item).await.is_ok()
            }
            // Nobody can take it any more; never acknowledged, so a
            // persistent session keeps it at the broker.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        };
        if sent {
            self.counters
                .max_buffered
                .fetch_max(self.buffered(), Ordering::AcqRel);
        }
        waited
    }

    /// Deliveries waiting for the application.
    pub(crate) fn buffered(&self) -> u64 {
        (self.tx.max_capacity() - self.tx.capacity()) as u64
    }
}

/// A buffer of `capacity` deliveries.
pub(crate) fn channel(capacity: usize) -> (InboundTx, Messages) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let counters = Arc::new(Counters::default());
    (
        InboundTx {
            tx,
            counters: counters.clone(),
        },
        Messages { rx, counters },
    )
}

/// The stream of delivered messages; it outlives every link.
///
/// It is a bounded buffer ([`MqttConfig::inbound_capacity`]). A QoS 1
/// delivery is acknowledged (PUBACK; QoS 2: PUBREC) only when the
/// application takes it from here, so a slow reader holds the broker back
/// through its in-flight window instead of growing memory, and a crash
/// loses nothing the broker was told it could forget. A message that is
/// never taken (buffered when the stream is dropped, or arriving after)
/// is never acknowledged: with a persistent session the broker delivers it
/// again on the next session. A message taken after its link died cannot be
/// acknowledged either, so with a persistent session it may come again
/// (compare `generation` and the payload's own id if that matters). Once a
/// later link has resumed the session, such a QoS 1/2 message is dropped
/// here instead of being handed over: the broker sends it again on that
/// link (counted in `TransportStats::messages_superseded`).
///
/// [`MqttConfig::inbound_capacity`]: crate::mqtt::MqttConfig::inbound_capacity
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::Receiver<Item>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Item")
            .field("delivery", &self.delivery)
            .field("ack", &self.ack.as_ref().map(|(_, a)| a))
            .finish()
    }
}

impl Messages {
    /// The next delivery: a message, or a typed error for one that could
    /// not be delivered. `None` once the transport and every link are gone.
    pub async fn recv(&mut self) -> Option<Result<Message, InboundError>> {
        if let Some(e) = self.dropped() {
            return Some(Err(e));
        }
        loop {
            let item = self.rx.recv().await?;
            if let Some(delivery) = self.take(item) {
                return Some(delivery);
            }
        }
    }

    /// The next delivery if one is waiting.
    pub fn try_recv(&mut self) -> Option<Result<Message, InboundError>> {
        if let Some(e) = self.dropped() {
            return Some(Err(e));
        }
        loop {
            let item = self.rx.try_recv().ok()?;
            if let Some(delivery) = self.take(item) {
                return Some(delivery);
            }
        }
    }

    /// Deliveries waiting in the buffer (at most
    /// [`MqttConfig::inbound_capacity`](crate::mqtt::MqttConfig::inbound_capacity)).
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no delivery is waiting in the buffer.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    fn dropped(&self) -> Option<InboundError> {
        let count = self.counters.unreported.swap(0, Ordering::AcqRel);
        (count > 0).then_some(InboundError::Dropped { count })
    }

    /// The application has it now: acknowledge it on its link (which
    /// ignores it if it died meanwhile). `None`: a superseded delivery,
    /// dropped (the broker sends it again on the resumed session).
    fn take(&self, item: Item) -> Option<Result<Message, InboundError>> {
        if self.counters.superseded(&item) {
            self.counters.superseded.fetch_add(1, Ordering::AcqRel);
            tracing::debug!(
                generation = item.generation.0,
                "buffered delivery of an old link dropped: the resumed session sends it again"
            );
            return None;
        }
        self.counters.taken.fetch_add(1, Ordering::AcqRel);
        if let Some((acks, ack)) = item.ack {
            let _ = acks.send(ack);
        }
        Some(item.delivery)
    }
}

impl futures::Stream for Messages {
    type Item = Result<Message, InboundError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(e) = self.dropped() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(item)) => {
                    if let Some(delivery) = self.take(item) {
                        return Poll::Ready(Some(delivery));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
