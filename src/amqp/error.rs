//! The AMQP adapter's typed errors and their classification.

use crate::machine::{ErrorKind, Generation};
use crate::runtime::Classify;

/// AMQP reply codes redial looks at.
pub mod codes {
    /// `connection.close` after a normal shutdown.
    pub const REPLY_SUCCESS: u16 = 200;
    /// The broker closed the connection (`rabbitmqctl close_connection`, a node stopping).
    pub const CONNECTION_FORCED: u16 = 320;
    /// Bad credentials, or no permission on a resource.
    pub const ACCESS_REFUSED: u16 = 403;
    /// The entity does not exist.
    pub const NOT_FOUND: u16 = 404;
    /// Exclusive use of an entity held by another connection.
    pub const RESOURCE_LOCKED: u16 = 405;
    /// A redeclaration with different arguments, an unknown delivery tag.
    pub const PRECONDITION_FAILED: u16 = 406;
    /// Unknown vhost, or no access to it.
    pub const NOT_ALLOWED: u16 = 530;
}

/// Why opening a link, or an operation on it, failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// The URI does not parse (permanent).
    #[error("invalid AMQP URI: {0}")]
    InvalidUri(String),
    /// The configuration cannot work (permanent).
    #[error("invalid AMQP configuration: {0}")]
    Config(#[from] crate::amqp::AmqpConfigError),
    /// The broker refused the credentials: `ACCESS_REFUSED` (403) (permanent).
    #[error("access refused by the broker: {0}")]
    AccessRefused(String),
    /// The vhost is unknown or not allowed: `NOT_ALLOWED` (530) (permanent).
    #[error("vhost not allowed: {0}")]
    NotAllowed(String),
    /// The TLS handshake failed: a certificate, a protocol mismatch (permanent).
    #[error("TLS failure: {0}")]
    Tls(String),
    /// The connection failed or was lost (transient).
    #[error("AMQP connection failed: {0}")]
    Connection(#[source] lapin::Error),
    /// Replaying a topology entry failed on a new link; `permanent` follows
    /// the replay policy ([`crate::amqp::ReplayPolicy`]).
    #[error("topology replay failed at entry {index} ({entry}): {source}")]
    Topology {
        /// The entry's position in the log.
        index: usize,
        /// What the entry declares.
        entry: String,
        /// The broker's answer.
        #[source]
        source: lapin::Error,
        /// Whether retrying can help (policy `Fail`: no).
        permanent: bool,
    },
    /// The broker closed a channel over an operation (a soft error): the
    /// connection stays up and the channel is reopened.
    #[error("channel error: {0}")]
    Channel(#[source] lapin::Error),
    /// The engine asked for an endpoint the configuration does not have:
    /// its `Config::endpoints` is larger than the URI list (permanent; the
    /// engine built by [`crate::amqp::AmqpConfig::engine_config`] matches).
    #[error("no endpoint {endpoint}: the configuration has {endpoints}")]
    NoSuchEndpoint {
        /// The index asked for.
        endpoint: usize,
        /// How many the configuration has.
        endpoints: usize,
    },
}

impl AmqpError {
    /// The broker's reply code, when the broker gave one.
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            AmqpError::AccessRefused(_) => Some(codes::ACCESS_REFUSED),
            AmqpError::NotAllowed(_) => Some(codes::NOT_ALLOWED),
            AmqpError::Connection(e) | AmqpError::Channel(e) => reply_code(e),
            AmqpError::Topology { source, .. } => reply_code(source),
            _ => None,
        }
    }

    /// Classifies an error from opening a connection.
    pub(crate) fn from_connect(error: lapin::Error) -> Self {
        match error.kind() {
            lapin::ErrorKind::ProtocolError(e) => match e.get_id() {
                codes::ACCESS_REFUSED => AmqpError::AccessRefused(e.get_message().to_string()),
                codes::NOT_ALLOWED => AmqpError::NotAllowed(e.get_message().to_string()),
                _ => AmqpError::Connection(error),
            },
            lapin::ErrorKind::AuthProviderError(message) => {
                AmqpError::AccessRefused(message.clone())
            }
            _ => AmqpError::Connection(error),
        }
    }
}

impl Classify for AmqpError {
    fn kind(&self) -> ErrorKind {
        match self {
            AmqpError::InvalidUri(_)
            | AmqpError::Config(_)
            | AmqpError::AccessRefused(_)
            | AmqpError::NotAllowed(_)
            | AmqpError::NoSuchEndpoint { .. }
            | AmqpError::Tls(_) => ErrorKind::Permanent,
            AmqpError::Topology { permanent, .. } if *permanent => ErrorKind::Permanent,
            AmqpError::Connection(e) => match e.kind() {
                lapin::ErrorKind::InvalidProtocolVersion(_) => ErrorKind::Permanent,
                _ => ErrorKind::Transient,
            },
            _ => ErrorKind::Transient,
        }
    }
}

/// The reply code carried by a lapin error, if any.
pub(crate) fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

/// Whether a lapin error says the whole connection is gone (as opposed to
/// one channel closed by the broker).
pub(crate) fn is_connection_error(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(_) => error.is_amqp_hard_error(),
        lapin::ErrorKind::InvalidChannelState(..) | lapin::ErrorKind::InvalidChannel(_) => false,
        _ => true,
    }
}

/// Why acknowledging a delivery failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The delivery came on an older link (or an older channel of this
    /// link): its delivery tag means nothing on the current channel, so
    /// nothing was sent. The broker redelivers the message.
    #[error(
        "stale delivery: received on link {delivery} (channel epoch {delivery_epoch}), the link is now {current}"
    )]
    Stale {
        /// The delivery's link.
        delivery: Generation,
        /// The delivery's channel epoch on that link.
        delivery_epoch: u64,
        /// The current link.
        current: Generation,
    },
    /// The delivery was already acknowledged, or its channel is gone.
    #[error("the delivery was already acknowledged or its channel is closed")]
    Unusable,
    /// The broker or the connection failed while acknowledging.
    #[error("acknowledging failed: {0}")]
    Failed(#[source] lapin::Error),
}
