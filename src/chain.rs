//! An error's `source()` chain on one line, for logs.
//!
//! Every error of the crate describes its own layer only and hands the
//! layer below out as `source()` (Rust API guidelines, C-GOOD-ERR), so a
//! plain `{error}` prints one layer: log lines print the whole chain.

use std::error::Error;
use std::fmt;

/// Displays an error and its sources, separated by `: ` (as anyhow's
/// `{:#}` does).
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(source) = next {
            write!(f, ": {source}")?;
            next = source.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::sync::Arc;

    use super::Chain;
    use crate::machine::FailCause;
    use crate::outbox::{DeliveryError, PublishError};

    /// The first layer of `error`'s chain whose message repeats the
    /// message of its source, as (layer, source) messages.
    fn first_repeat(error: &(dyn Error + 'static)) -> Option<(String, String)> {
        let mut current = error;
        while let Some(source) = current.source() {
            let (upper, lower) = (current.to_string(), source.to_string());
            if !lower.is_empty() && upper.contains(&lower) {
                return Some((upper, lower));
            }
            current = source;
        }
        None
    }

    /// Checks that `error` repeats no source, that it has (or lacks) one,
    /// and that [`Chain`] prints each layer once.
    fn check(error: &(dyn Error + 'static), has_source: bool) {
        assert_eq!(first_repeat(error), None, "{error:?}");
        assert_eq!(error.source().is_some(), has_source, "{error:?}");
        let mut messages = vec![error.to_string()];
        let mut next = error.source();
        while let Some(source) = next {
            messages.push(source.to_string());
            next = source.source();
        }
        assert_eq!(Chain(error).to_string(), messages.join(": "));
    }

    fn io() -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused by 127.0.0.1",
        )
    }

    #[test]
    fn the_helper_catches_a_repeated_source() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Repeats(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Layered(#[source] std::io::Error);
        assert_eq!(
            first_repeat(&Repeats(io())),
            Some((
                "outer: refused by 127.0.0.1".into(),
                "refused by 127.0.0.1".into()
            ))
        );
        assert_eq!(first_repeat(&Layered(io())), None);
    }

    #[test]
    fn outbox_errors_do_not_repeat_their_sources() {
        let gave_up = PublishError::GaveUp {
            cause: FailCause::Permanent,
            error: Some(Arc::new(io())),
        };
        check(&gave_up, true);
        assert_eq!(
            Chain(&gave_up).to_string(),
            "the engine gave up reconnecting (permanent error): refused by 127.0.0.1"
        );
        let plain = [
            PublishError::GaveUp {
                cause: FailCause::RetriesExhausted,
                error: None,
            },
            PublishError::Nacked,
            PublishError::Rejected("NOT_FOUND".into()),
            PublishError::Timeout,
        ];
        for error in &plain {
            check(error, false);
        }
        check(&DeliveryError::LinkLost, false);
        check(
            &DeliveryError::ChannelClosed {
                code: 404,
                text: "NOT_FOUND".into(),
            },
            false,
        );
    }

    #[test]
    fn runtime_errors_do_not_repeat_their_sources() {
        use crate::runtime::{ConnectTimedOut, EngineError, FirstConnectError};
        check(&EngineError::ShuttingDown, false);
        check(
            &FirstConnectError::<std::io::Error>::Failed(Arc::new(io())),
            true,
        );
        check(
            &FirstConnectError::<std::io::Error>::TimedOut(ConnectTimedOut {
                after: std::time::Duration::from_secs(1),
            }),
            false,
        );
        check(
            &crate::testing::MemoryError {
                kind: crate::machine::ErrorKind::Transient,
            },
            false,
        );
    }

    #[cfg(feature = "amqp")]
    #[test]
    fn amqp_errors_do_not_repeat_their_sources() {
        use crate::amqp::{AckError, AmqpError, ReplayError, ReplayPolicy};
        // lapin's and rumqttc's own errors repeat their sources ("IO error:
        // {e}"): the values below use kinds without one, to test our layers.
        let lapin = || {
            lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                lapin::ConnectionState::Closed,
            ))
        };
        let with_source = [
            AmqpError::Connection(lapin()),
            AmqpError::Channel(lapin()),
            AmqpError::Topology {
                index: 2,
                entry: "queue q".into(),
                source: lapin(),
                permanent: false,
            },
            AmqpError::Tls {
                host: "broker".into(),
                source: Arc::new(io()),
            },
            AmqpError::Config(crate::amqp::AmqpConfigError::NoEndpoints),
        ];
        for error in &with_source {
            check(error, true);
        }
        let without = [
            AmqpError::InvalidUri {
                uri: "amqp://u:***@h".into(),
                reason: "bad port".into(),
            },
            AmqpError::AccessRefused {
                user: "guest".into(),
                mechanism: lapin::uri::SASLMechanism::Plain,
                text: "ACCESS_REFUSED - Login was refused".into(),
            },
            AmqpError::NotAllowed {
                vhost: "missing".into(),
                text: "NOT_ALLOWED - vhost missing not found".into(),
            },
            AmqpError::NoSuchEndpoint {
                endpoint: 3,
                endpoints: 1,
            },
        ];
        for error in &without {
            check(error, false);
        }
        check(&AckError::Failed(lapin()), true);
        check(&AckError::Unusable, false);
        let replay = ReplayError {
            generation: crate::machine::Generation(4),
            index: 1,
            entry: "queue q".into(),
            error: lapin(),
            policy: ReplayPolicy::Skip,
        };
        check(&replay, true);
        // An `Error`: it goes where any error goes.
        let boxed: Box<dyn Error + Send + Sync> = Box::new(replay);
        assert!(boxed.source().is_some());
        assert!(boxed.to_string().contains("entry 1 (queue q)"), "{boxed}");
    }

    #[cfg(feature = "mqtt")]
    #[test]
    fn mqtt_errors_do_not_repeat_their_sources() {
        use crate::mqtt::{LinkPublishError, MqttError, SubscribeError};
        use rumqttc::ConnectionError;
        check(&MqttError::Connect(ConnectionError::NetworkTimeout), true);
        check(&MqttError::Tls(ConnectionError::FlushTimeout), true);
        check(
            &MqttError::Refused {
                code: rumqttc::ConnectReturnCode::NotAuthorized,
            },
            false,
        );
        check(&MqttError::LostDuringRestore, false);
        check(&LinkPublishError::LinkLost, false);
        check(&LinkPublishError::TooLarge { size: 2, max: 1 }, false);
        check(&SubscribeError::InvalidFilter("a/#/b".into()), false);
    }
}
