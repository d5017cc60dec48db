//! What an adapter implements so that the outbox can publish through its links.

use std::future::Future;
use std::time::Duration;

use crate::outbox::MessageId;
use crate::runtime::Transport;

/// Why a write or a confirm failed. An adapter translates what its client
/// library said into one of these; the outbox decides what follows.
///
/// `LinkLost` and `Timeout` send the message back for replay on the next
/// link (at least once); `Timeout` also reports the link as lost so that the
/// engine replaces it (a half-open link, [S22](crate#scenario-ids-and-failure-reports)). `ChannelClosed` and
/// `NotWritten` keep the link (see each). The others resolve the publish
/// with the matching [`crate::outbox::PublishError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The link died before the message was written or confirmed.
    #[error("the link was lost")]
    LinkLost,
    /// The broker refused the message (AMQP `basic.nack`).
    #[error("the broker nacked the message")]
    Nacked,
    /// The broker could not route the message (AMQP mandatory return).
    #[error("the broker could not route the message")]
    Unroutable,
    /// The broker refused the message permanently.
    #[error("the broker rejected the message: {0}")]
    Rejected(String),
    /// No answer within the adapter's operation timeout.
    #[error("the operation timed out")]
    Timeout,
    /// The broker closed the link's publishing channel (with an error)
    /// while this message was unconfirmed on it; the link itself is fine.
    /// Every message unconfirmed on that channel gets this answer. The
    /// outbox blames the message only when it was alone in flight
    /// (the outbox core's `channel_closed`).
    #[error("the broker closed the publishing channel: {code} {text}")]
    ChannelClosed {
        /// The broker's reply code (AMQP `channel.close`), 0 when none.
        code: u16,
        /// The broker's reply text.
        text: String,
    },
    /// The message was not written, or its channel ended without a broker
    /// error: it goes back to the queue without blame and the link is kept
    /// (the adapter writes the next message on a fresh channel).
    #[error("the message was not written (its channel was closing)")]
    NotWritten,
}

/// A [`Transport`] whose links can publish: what the AMQP and MQTT adapters
/// implement for [`crate::outbox::Publisher`].
///
/// Rules for implementors:
/// * `send` writes one message to the link and returns as soon as it is
///   written, with a future for the broker's answer; it must not wait for
///   that answer itself (the publisher awaits confirms concurrently, up to
///   its in-flight window). Without confirms (MQTT QoS 0), return a future
///   that is ready at once: the outbox then promises at most "written".
/// * The publisher calls `send` one message at a time, in order, so the
///   wire order is the submission order. `id` is stable across replays: put
///   it in the message (AMQP `message_id`, an MQTT v5 user property) so that
///   consumers can deduplicate.
/// * Both futures must be cancel-safe: the publisher drops them when the
///   link is replaced, and replays what was not confirmed.
/// * A confirm future of a dead link should end with `LinkLost`; one that
///   never ends is tolerated (the publisher's confirm timeout replaces the
///   link, and it drops the future with the link).
/// * Translate, do not decide: never write a message again, never count
///   retries, never guess a culprit from error text. A channel error is
///   `ChannelClosed` on every message it caught, never `LinkLost`; a
///   channel already closing is `NotWritten`. After either, write the next
///   message on a new channel and never on the closing one.
pub trait Deliver: Transport {
    /// A message as the adapter publishes it. `Sync` because the outbox
    /// keeps it for replay while a send borrows it.
    type Message: Send + Sync + 'static;
    /// The broker's answer to one message.
    type Confirm: Future<Output = Result<(), DeliveryError>> + Send + 'static;

    /// Writes `message` to `link`; see the trait docs.
    fn send(
        &self,
        link: &Self::Link,
        message: &Self::Message,
        id: MessageId,
    ) -> impl Future<Output = Result<Self::Confirm, DeliveryError>> + Send;

    /// How often the broker proves `link` alive (the negotiated heartbeat),
    /// for the default confirm timeout
    /// ([`crate::outbox::ConfirmTimeout::FromHeartbeat`]). Default: unknown.
    fn heartbeat(&self, link: &Self::Link) -> Option<Duration> {
        let _ = link;
        None
    }

    /// The size counted against the outbox's byte capacity (default 0:
    /// only the message count is bounded).
    fn size_of(message: &Self::Message) -> usize {
        let _ = message;
        0
    }
}
