//! Publishing through the outbox: `impl Deliver for AmqpTransport`.
//!
//! * Publisher confirms are always on (the publishing channel is opened
//!   with `confirm.select`); a confirm future resolves with the broker's
//!   `basic.ack`, a `basic.nack` ([`DeliveryError::Nacked`]) or a mandatory
//!   return ([`DeliveryError::Unroutable`]).
//! * Every message carries a stable `message_id`: `{prefix}-{outbox id}`,
//!   the same on every replay (unless the message sets its own).
//! * A channel-level error (the broker closed the publishing channel, say
//!   over a publish to a missing exchange) reopens the channel, never the
//!   connection, and is never reported as a lost link: the message that
//!   caused it fails with [`DeliveryError::Rejected`] (recognised by the
//!   exchange named in the broker's reply, or after
//!   [`CHANNEL_ERROR_RETRIES`] channel errors in a row), and the others
//!   caught in the same close are published again on the new channel.

use std::sync::Arc;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};

use crate::amqp::AmqpTransport;
use crate::amqp::error::is_connection_error;
use crate::amqp::link::{AmqpLink, Role};
use crate::outbox::{Deliver, DeliveryError, MessageId};

/// How many times one message is published again after channel errors
/// before it fails with [`DeliveryError::Rejected`].
pub const CHANNEL_ERROR_RETRIES: u32 = 3;

/// One message to publish.
#[derive(Debug, Clone)]
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

/// A message published on a link, ready to be published again.
struct Published {
    link: AmqpLink,
    message: AmqpMessage,
}

impl Published {
    async fn publish(&self) -> Result<PublisherConfirm, DeliveryError> {
        let m = &self.message;
        let options = BasicPublishOptions {
            mandatory: m.mandatory,
            immediate: false,
        };
        // One retry: a channel the broker closed is reopened by `channel`.
        for _ in 0..2 {
            let channel = self
                .link
                .inner
                .channel(Role::Publish)
                .await
                .map_err(|_| DeliveryError::LinkLost)?;
            match channel
                .basic_publish(
                    m.exchange.as_str().into(),
                    m.routing_key.as_str().into(),
                    options,
                    &m.payload,
                    m.properties.clone(),
                )
                .await
            {
                Ok(confirm) => return Ok(confirm),
                Err(e) if is_connection_error(&e) || !self.link.is_alive() => {
                    return Err(DeliveryError::LinkLost);
                }
                Err(e) => {
                    tracing::debug!(generation = self.link.generation().0, %e, "publish on a closed channel, reopening");
                }
            }
        }
        Err(DeliveryError::LinkLost)
    }

    /// The broker's answer, publishing again after channel errors.
    async fn confirmed(self, mut confirm: PublisherConfirm) -> Result<(), DeliveryError> {
        let mut channel_errors = 0;
        loop {
            match confirm.await {
                Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => return Ok(()),
                Ok(Confirmation::Ack(Some(_))) => return Err(DeliveryError::Unroutable),
                Ok(Confirmation::Nack(Some(_))) => return Err(DeliveryError::Unroutable),
                Ok(Confirmation::Nack(None)) => return Err(DeliveryError::Nacked),
                Err(e) if is_connection_error(&e) || !self.link.is_alive() => {
                    return Err(DeliveryError::LinkLost);
                }
                Err(e) => {
                    channel_errors += 1;
                    let text = e.to_string();
                    let named = !self.message.exchange.is_empty()
                        && text.contains(&format!("'{}'", self.message.exchange));
                    if named || channel_errors >= CHANNEL_ERROR_RETRIES {
                        return Err(DeliveryError::Rejected(text));
                    }
                    tracing::debug!(generation = self.link.generation().0, %e, "channel error under a publish, publishing again");
                    confirm = self.publish().await?;
                }
            }
        }
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
        let published = Published {
            link: link.clone(),
            message,
        };
        async move {
            let confirm = published.publish().await?;
            let confirm: Self::Confirm = Box::pin(published.confirmed(confirm));
            Ok(confirm)
        }
    }

    fn size_of(message: &AmqpMessage) -> usize {
        message.payload.len()
    }
}
