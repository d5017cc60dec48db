//! The adapter's errors, each one saying whether retrying can help.

use rumqttc::{ConnectReturnCode, ConnectionError, StateError};

use crate::machine::ErrorKind;
use crate::runtime::Classify;

/// Why opening a link failed.
///
/// Each message describes this layer only; rumqttc's error is the
/// [`source`](std::error::Error::source), so that a report prints it once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqttError {
    /// The broker answered CONNECT with a refusal.
    #[error("the broker refused the connection: {code:?}")]
    Refused {
        /// The CONNACK return code.
        code: ConnectReturnCode,
    },
    /// TLS could not be set up (bad CA or client certificate, the server's
    /// certificate did not verify, an invalid server name).
    #[error("TLS setup failed")]
    Tls(#[source] ConnectionError),
    /// TCP, I/O, a timeout or a protocol error while connecting.
    #[error("connecting to the broker failed")]
    Connect(#[source] ConnectionError),
    /// The broker refused to restore some recorded subscriptions (SUBACK
    /// failure); the link was not handed out.
    #[error("the broker refused to restore subscriptions {filters:?}")]
    RestoreRefused {
        /// The refused filters.
        filters: Vec<String>,
    },
    /// The link died before the subscription restore finished.
    #[error("the link died while restoring subscriptions")]
    LostDuringRestore,
    /// The engine asked for a broker the configuration does not have: its
    /// `Config::endpoints` is larger than the broker list (permanent; the
    /// engine built by [`crate::mqtt::MqttConfig::engine_config`] matches).
    #[error("no broker {endpoint}: the configuration has {endpoints}")]
    NoSuchEndpoint {
        /// The index asked for.
        endpoint: usize,
        /// How many the configuration has.
        endpoints: usize,
    },
}

impl MqttError {
    pub(crate) fn from_connect(error: ConnectionError) -> Self {
        match error {
            ConnectionError::ConnectionRefused(code) => MqttError::Refused { code },
            e if is_tls_config_error(&e) => MqttError::Tls(e),
            e => MqttError::Connect(e),
        }
    }

    /// The CONNACK return code, when the broker refused.
    pub fn refusal(&self) -> Option<ConnectReturnCode> {
        match self {
            MqttError::Refused { code } => Some(*code),
            _ => None,
        }
    }
}

impl Classify for MqttError {
    fn kind(&self) -> ErrorKind {
        match self {
            // Only "server unavailable" may heal by itself; a wrong protocol
            // level, a rejected client id, bad credentials or a missing
            // authorisation need a human (S38).
            MqttError::Refused { code } => match code {
                ConnectReturnCode::ServiceUnavailable => ErrorKind::Transient,
                _ => ErrorKind::Permanent,
            },
            MqttError::Tls(_) | MqttError::NoSuchEndpoint { .. } => ErrorKind::Permanent,
            // S18: a failed restore is surfaced (AttemptFailed) and retried.
            MqttError::Connect(_)
            | MqttError::RestoreRefused { .. }
            | MqttError::LostDuringRestore => ErrorKind::Transient,
        }
    }
}

/// TLS failures that are configuration errors; a TLS read or write that
/// failed on a dying socket stays transient.
fn is_tls_config_error(error: &ConnectionError) -> bool {
    use rumqttc::TlsError;
    match error {
        ConnectionError::Tls(tls) => match tls {
            TlsError::Io(io) => io_is_tls_verification(io),
            TlsError::TLS(_)
            | TlsError::Addr(_)
            | TlsError::DNSName(_)
            | TlsError::WebPki(_)
            | TlsError::NoValidCertInChain
            | TlsError::NoValidClientCertInChain
            | TlsError::NoValidKeyInChain => true,
            #[allow(unreachable_patterns)]
            _ => false,
        },
        ConnectionError::Io(io) => io_is_tls_verification(io),
        _ => false,
    }
}

/// tokio-rustls reports handshake failures as an `io::Error` wrapping the
/// rustls error.
fn io_is_tls_verification(io: &std::io::Error) -> bool {
    use rumqttc::tokio_rustls::rustls::Error as Rustls;
    io.get_ref()
        .and_then(|inner| inner.downcast_ref::<Rustls>())
        .is_some_and(|e| {
            matches!(
                e,
                Rustls::InvalidCertificate(_)
                    | Rustls::NoCertificatesPresented
                    | Rustls::UnsupportedNameType
                    | Rustls::AlertReceived(_)
                    | Rustls::PeerIncompatible(_)
            )
        })
}

/// How a link died, for the report to the engine (always transient: a
/// link that once worked may work again).
pub(crate) fn link_error_kind(_error: &ConnectionError) -> ErrorKind {
    ErrorKind::Transient
}

/// Whether a link error means the peer went silent (for logs).
pub(crate) fn is_ping_timeout(error: &ConnectionError) -> bool {
    matches!(error, ConnectionError::MqttState(StateError::AwaitPingResp))
}

/// Why a subscribe or unsubscribe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// Not a valid MQTT topic filter.
    #[error("invalid topic filter {0:?}")]
    InvalidFilter(String),
    /// The broker answered SUBACK with a failure for this filter; it was
    /// removed from the recorded set.
    #[error("the broker refused the subscription to {filter:?}")]
    Refused {
        /// The refused filter.
        filter: String,
    },
}

/// Why [`MqttLink::publish`](crate::mqtt::MqttLink::publish) could not hand
/// a publish to its link.
///
/// Not [`crate::outbox::PublishError`], the outcome of a publish through
/// the outbox: this is one link's raw hand-off, which the outbox translates
/// (`LinkLost` is replayed on the next link, the others end the publish as
/// [`crate::outbox::PublishError::Rejected`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkPublishError {
    /// The link is dead or closed: publish again on the next link.
    #[error("the link is lost")]
    LinkLost,
    /// Not a valid topic name (empty, or with wildcards).
    #[error("invalid topic {0:?}")]
    InvalidTopic(String),
    /// The PUBLISH packet would exceed the configured maximum packet size.
    #[error("publish of {size} bytes exceeds the maximum packet size {max}")]
    TooLarge {
        /// The packet's size.
        size: usize,
        /// The limit.
        max: usize,
    },
}
