//! Publishing through the outbox: `impl Deliver for AmqpTransport`.
//!
//! * Publisher confirms are always on (the publishing channel is opened
//!   with `confirm.select`); a confirm future resolves with the broker's
//!   `basic.ack`, a `basic.nack` ([`DeliveryError::Nacked`]) or a mandatory
//!   return ([`DeliveryError::Unroutable`]).
//! * Every message carries a stable `message_id`: `{prefix}-{outbox id}`,
//!   the same on every replay (unless the message sets its own).
//! * This adapter translates, it never decides: a publish is written once
//!   per `send`. When the broker closes the publishing channel (say over a
//!   publish to a missing exchange), every message unconfirmed on it
//!   answers [`DeliveryError::ChannelClosed`] with the broker's reply code
//!   and text, and the outbox decides which one was at fault. A write that
//!   finds the channel closing or closed answers [`DeliveryError::NotWritten`]
//!   (and opens the new one without writing on it, so that the old
//!   channel's answers reach the outbox first). Neither costs the
//!   connection: the next write goes on a new channel (a new channel id). Only a connection error or a dead link is
//!   [`DeliveryError::LinkLost`].

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};

/// A channel's number on its connection.
type ChannelId = u16;

use crate::amqp::AmqpTransport;
use crate::amqp::error::{AmqpError, is_connection_error};
use crate::amqp::link::{AmqpLink, Role};
use crate::outbox::{Deliver, DeliveryError, MessageId};

/// One message to publish.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AmqpMessage {
    /// The exchange (`""`: the default exchange, routing by queue name).
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// The body (shared, so a replay copies nothing).
    pub payload: Arc<[u8]>,
    /// The properties; `message_id` is filled in by redial unless set.
    pub properties: BasicProperties,
    /// Ask the broker to return the message if no queue takes it; it then
    /// fails with [`DeliveryError::Unroutable`].
    pub mandatory: bool,
}

impl AmqpMessage {
    /// A message for `exchange` / `routing_key`, not mandatory, default properties.
    pub fn new(exchange: &str, routing_key: &str, payload: impl Into<Arc<[u8]>>) -> Self {
        Self {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            payload: payload.into(),
            properties: BasicProperties::default(),
            mandatory: false,
        }
    }

    /// Sets `mandatory`.
    pub fn mandatory(mut self, yes: bool) -> Self {
        self.mandatory = yes;
        self
    }

    /// Sets the properties.
    pub fn properties(mut self, properties: BasicProperties) -> Self {
        self.properties = properties;
        self
    }

    /// Marks the message persistent (delivery mode 2).
    pub fn persistent(mut self) -> Self {
        self.properties = self.properties.with_delivery_mode(2);
        self
    }
}

/// Writes `message` on `link`'s publishing channel, once.
async fn publish(
    link: &AmqpLink,
    message: &AmqpMessage,
) -> Result<(PublisherConfirm, ChannelId), DeliveryError> {
    let lost = |e: &lapin::Error| is_connection_error(e) || !link.is_alive();
    // The broker closed (or is closing) the last publishing channel: open a
    // new one (new id) for the next write, but do not write this message:
    // the old channel's confirms may still be on their way, and the outbox
    // must see them before anything goes out on the new channel (or a
    // message could overtake the ones the close sends back).
    let channel = match link.inner.channel_or_reopen(Role::Publish).await {
        Ok((_, true)) => return Err(DeliveryError::NotWritten),
        Ok((channel, false)) => channel,
        Err(AmqpError::Connection(e) | AmqpError::Channel(e)) if !lost(&e) => {
            return Err(DeliveryError::NotWritten);
        }
        Err(_) => return Err(DeliveryError::LinkLost),
    };
    let options = BasicPublishOptions {
        mandatory: message.mandatory,
        immediate: false,
    };
    channel
        .basic_publish(
            message.exchange.as_str().into(),
            message.routing_key.as_str().into(),
            options,
            &message.payload,
            message.properties.clone(),
        )
        .await
        .map(|confirm| (confirm, channel.id()))
        .map_err(|e| {
            if lost(&e) {
                DeliveryError::LinkLost
            } else {
                // lapin refuses to write on a channel that is not open.
                DeliveryError::NotWritten
            }
        })
}

/// The broker's answer to one publish, translated.
async fn confirmed(
    link: AmqpLink,
    channel: ChannelId,
    confirm: PublisherConfirm,
) -> Result<(), DeliveryError> {
    let answer = confirm.await;
    if matches!(answer, Ok(Confirmation::Nack(None))) {
        // A quorum queue nacks every publish of a channel that first
        // reached it while its leader was down (RabbitMQ 3.10), for as long
        // as the channel lives: the next message goes on a fresh channel.
        link.inner.retire_channel(Role::Publish, channel).await;
    }
    match answer {
        Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(()),
        Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_))) => {
            Err(DeliveryError::Unroutable)
        }
        Ok(Confirmation::Nack(None)) => Err(DeliveryError::Nacked),
        Err(e) if is_connection_error(&e) || !link.is_alive() => Err(DeliveryError::LinkLost),
        Err(e) => Err(match e.kind() {
            // The broker's channel.close: lapin fails every pending confirm
            // of the channel with it.
            lapin::ErrorKind::ProtocolError(amqp) => DeliveryError::ChannelClosed {
                code: amqp.get_id(),
                text: amqp.get_message().to_string(),
            },
            // The channel ended without a broker error: no one to blame.
            _ => DeliveryError::NotWritten,
        }),
    }
}

impl Deliver for AmqpTransport {
    type Message = AmqpMessage;
    type Confirm = futures::future::BoxFuture<'static, Result<(), DeliveryError>>;

    fn send(
        &self,
        link: &AmqpLink,
        message: &AmqpMessage,
        id: MessageId,
    ) -> impl Future<Output = Result<Self::Confirm, DeliveryError>> + Send {
        let mut message = message.clone();
        if message.properties.message_id().is_none() {
            message.properties = message
                .properties
                .with_message_id(format!("{}-{}", self.shared.message_id_prefix, id.0).into());
        }
        let link = link.clone();
        async move {
            let (confirm, channel) = publish(&link, &message).await?;
            let confirm: Self::Confirm = Box::pin(confirmed(link, channel, confirm));
            Ok(confirm)
        }
    }

    fn heartbeat(&self, link: &AmqpLink) -> Option<Duration> {
        link.heartbeat()
    }

    fn size_of(message: &AmqpMessage) -> usize {
        message.payload.len()
    }
}
