//! The AMQP adapter's typed errors and their classification.

use std::sync::Arc;

use lapin::uri::AMQPUri;

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
///
/// Each message describes this layer only; the underlying error (lapin's,
/// the TLS stack's) is [`std::error::Error::source`], so that a report
/// (`anyhow`'s `{:#}`, `tracing`'s error fields) prints it once.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// A URI does not parse (permanent).
    #[error("invalid AMQP URI {uri}: {reason}")]
    InvalidUri {
        /// The URI, its password replaced by `***`.
        uri: String,
        /// What the parser said (it gives no more structure than text).
        reason: String,
    },
    /// The configuration cannot work (permanent).
    #[error("invalid AMQP configuration")]
    Config(#[from] crate::amqp::AmqpConfigError),
    /// The broker refused the credentials: `ACCESS_REFUSED` (403), or the
    /// client-side authentication failed before the broker answered
    /// (permanent).
    #[error("access refused to user {user:?} ({mechanism}): {text}")]
    AccessRefused {
        /// The user name the link authenticated as.
        user: String,
        /// The SASL mechanism it used.
        mechanism: lapin::uri::SASLMechanism,
        /// The broker's reply text (or the authentication's own message).
        text: String,
    },
    /// The vhost is unknown or not allowed: `NOT_ALLOWED` (530) (permanent).
    #[error("vhost {vhost:?} not allowed: {text}")]
    NotAllowed {
        /// The vhost the link asked for.
        vhost: String,
        /// The broker's reply text.
        text: String,
    },
    /// The TLS handshake failed: a certificate, a protocol mismatch
    /// (permanent). The TLS stack's error is the source, shared so that the
    /// error stays `Clone`.
    #[error("the TLS handshake with {host} failed")]
    Tls {
        /// The host the link connected to.
        host: String,
        /// What the TLS stack said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The connection failed or was lost (transient).
    #[error("the AMQP connection failed")]
    Connection(#[source] lapin::Error),
    /// Replaying a topology entry failed on a new link; `permanent` follows
    /// the replay policy ([`crate::amqp::ReplayPolicy`]).
    #[error("topology replay failed at entry {index} ({entry})")]
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
    #[error("the broker closed the channel")]
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
            AmqpError::AccessRefused { .. } => Some(codes::ACCESS_REFUSED),
            AmqpError::NotAllowed { .. } => Some(codes::NOT_ALLOWED),
            AmqpError::Connection(e) | AmqpError::Channel(e) => reply_code(e),
            AmqpError::Topology { source, .. } => reply_code(source),
            _ => None,
        }
    }

    /// Classifies an error from opening a connection to `uri`.
    pub(crate) fn from_connect(error: lapin::Error, uri: &AMQPUri) -> Self {
        let access_refused = |text: &str| AmqpError::AccessRefused {
            user: uri.authority.userinfo.username.clone(),
            mechanism: uri.query.auth_mechanism.unwrap_or_default(),
            text: text.to_owned(),
        };
        match error.kind() {
            lapin::ErrorKind::ProtocolError(e) => match e.get_id() {
                codes::ACCESS_REFUSED => access_refused(e.get_message().as_str()),
                codes::NOT_ALLOWED => AmqpError::NotAllowed {
                    vhost: uri.vhost.clone(),
                    text: e.get_message().to_string(),
                },
                _ => AmqpError::Connection(error),
            },
            lapin::ErrorKind::AuthProviderError(message) => access_refused(message),
            _ => AmqpError::Connection(error),
        }
    }
}

/// Whether a connection-level lapin error is a refusal that retrying
/// cannot heal (credentials, vhost): the monitor's view of
/// [`AmqpError::from_connect`] without building the error.
pub(crate) fn is_refusal(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => {
            matches!(e.get_id(), codes::ACCESS_REFUSED | codes::NOT_ALLOWED)
        }
        lapin::ErrorKind::AuthProviderError(_) => true,
        _ => false,
    }
}

impl Classify for AmqpError {
    fn kind(&self) -> ErrorKind {
        match self {
            AmqpError::InvalidUri { .. }
            | AmqpError::Config(_)
            | AmqpError::AccessRefused { .. }
            | AmqpError::NotAllowed { .. }
            | AmqpError::NoSuchEndpoint { .. }
            | AmqpError::Tls { .. } => ErrorKind::Permanent,
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
    #[error("acknowledging the delivery failed")]
    Failed(#[source] lapin::Error),
}
