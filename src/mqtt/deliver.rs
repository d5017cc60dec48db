//! Publishing through the outbox: `impl Deliver for MqttTransport`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::mqtt::error::LinkPublishError;
use crate::mqtt::link::MqttLink;
use crate::mqtt::message::{MqttConfirm, MqttMessage};
use crate::mqtt::transport::MqttTransport;
use crate::outbox::{Deliver, DeliveryError, MessageId};

/// The outbox's view of one publish: [`MqttConfirm`] with the outbox's
/// error type. `Ok` on PUBACK (QoS 1) or PUBCOMP (QoS 2); for QoS 0, once
/// the PUBLISH was written and flushed to the socket (MQTT has no confirm
/// for it). `Err(LinkLost)` when the link died first: the outbox replays it.
#[derive(Debug)]
pub struct DeliverConfirm(MqttConfirm);

impl Future for DeliverConfirm {
    type Output = Result<(), DeliveryError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map_err(to_delivery))
    }
}

fn to_delivery(error: LinkPublishError) -> DeliveryError {
    match error {
        LinkPublishError::LinkLost => DeliveryError::LinkLost,
        other => DeliveryError::Rejected(other.to_string()),
    }
}

impl Deliver for MqttTransport {
    type Message = MqttMessage;
    type Confirm = DeliverConfirm;

    /// Hands the message to the link's event loop, in order. MQTT 3.1.1
    /// has no message properties, so `id` is not carried on the wire: put
    /// an id in the payload if consumers must deduplicate replays.
    async fn send(
        &self,
        link: &MqttLink,
        message: &MqttMessage,
        _id: MessageId,
    ) -> Result<DeliverConfirm, DeliveryError> {
        link.publish(message)
            .await
            .map(DeliverConfirm)
            .map_err(to_delivery)
    }

    /// The keep-alive: the broker answers a ping within it, so a confirm
    /// later than the outbox's multiple of it means a stuck link.
    fn heartbeat(&self, _link: &MqttLink) -> Option<Duration> {
        let keep_alive = self.config().keep_alive;
        (!keep_alive.is_zero()).then_some(keep_alive)
    }

    fn size_of(message: &MqttMessage) -> usize {
        message.topic().len() + message.payload().len()
    }
}
