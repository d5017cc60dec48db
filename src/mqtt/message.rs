//! Messages in both directions: what the application publishes, what the
//! broker delivers, and the future that says how a publish ended.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use rumqttc::{Publish, QoS};
use tokio::sync::oneshot;

use crate::machine::Generation;
use crate::mqtt::error::LinkPublishError;

/// A message to publish: topic, payload, QoS and retain flag.
///
/// Cloning is cheap (the payload is reference-counted), which matters
/// because the outbox may hand the same message to several links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttMessage {
    pub(crate) publish: Publish,
}

impl MqttMessage {
    /// A message for `topic` (not retained).
    pub fn new(topic: impl Into<String>, qos: QoS, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            publish: Publish::new(topic, qos, payload),
        }
    }

    /// Sets the retain flag.
    pub fn retain(mut self, retain: bool) -> Self {
        self.publish.retain = retain;
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.publish.topic
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.publish.payload
    }

    /// The QoS.
    pub fn qos(&self) -> QoS {
        self.publish.qos
    }

    /// The PUBLISH packet's size on the wire (with a packet id).
    pub fn packet_size(&self) -> usize {
        let mut p = self.publish.clone();
        p.pkid = 1;
        p.size()
    }
}

/// A message the broker delivered, tagged with the link that received it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The link (generation) it arrived on.
    pub generation: Generation,
    /// The PUBLISH packet as rumqttc decoded it (topic, payload, QoS,
    /// retain and dup flags).
    pub publish: Publish,
}

impl Message {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.publish.topic
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.publish.payload
    }
}

/// How one publish ended on its link: `Ok` on PUBACK (QoS 1), PUBCOMP
/// (QoS 2), or once written and flushed to the socket (QoS 0, which the
/// broker never confirms: `Ok` means "left this process", not "delivered");
/// `Err(LinkLost)` when the link died or closed first, in which case the
/// broker may or may not have the message and it must be published again
/// on the next link.
#[derive(Debug)]
pub struct MqttConfirm {
    pub(crate) rx: oneshot::Receiver<()>,
}

impl Future for MqttConfirm {
    type Output = Result<(), LinkPublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_err(|_| LinkPublishError::LinkLost))
    }
}
