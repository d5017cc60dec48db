//! The outbox's settings: limits, policies, deadlines, per-message options.

use std::time::Duration;

/// What a full outbox does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Backpressure: the caller waits for room, at most `deadline` (`None`:
    /// until the publish timeout, or as long as it takes without one), then
    /// gets [`crate::outbox::PublishError::Overflow`]. The core answers
    /// [`crate::outbox::Submit::Full`]; the async publisher does the waiting.
    /// The default, with no deadline of its own: an outage slows publishers
    /// down instead of failing their publishes.
    Wait {
        /// The longest wait (a deadline beyond the clock's range never comes).
        deadline: Option<Duration>,
    },
    /// The new message fails at once with `Overflow`.
    RejectNew,
    /// The oldest *queued* message fails with `Dropped` to make room
    /// (messages in flight are never dropped; when they alone fill the
    /// outbox, the new message fails with `Overflow`).
    DropOldest,
}

impl Default for OverflowPolicy {
    /// `Wait` until the publish timeout.
    fn default() -> Self {
        Self::Wait { deadline: None }
    }
}

/// How long a written message may wait for its broker confirm before its
/// link is treated as broken (replaced by the engine, the message replayed
/// on the next link). Time while the broker blocks publishing does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConfirmTimeout {
    /// Twice the link's heartbeat as the adapter reports it
    /// ([`crate::outbox::Deliver::heartbeat`]), at least
    /// [`ConfirmTimeout::FLOOR`]; [`ConfirmTimeout::FALLBACK`] when the
    /// adapter reports none. A link whose heartbeats arrive but whose
    /// confirms do not for two heartbeat periods is broken in a way the
    /// liveness check cannot see (a path that drops only publishes, a broker
    /// that never confirms). The default.
    #[default]
    FromHeartbeat,
    /// A fixed deadline.
    After(Duration),
    /// No deadline: a written message waits for its link's answer (or its
    /// publish timeout) however long it takes.
    Off,
}

impl ConfirmTimeout {
    /// The least automatic deadline: below it, a slow disk-bound confirm on
    /// a link with a short heartbeat would replace a healthy link.
    pub const FLOOR: Duration = Duration::from_secs(5);
    /// The automatic deadline without a heartbeat: twice the AMQP adapter's
    /// default heartbeat (20 s).
    pub const FALLBACK: Duration = Duration::from_secs(40);

    /// The deadline for a link whose heartbeat is `heartbeat` (`None`: unknown).
    pub fn resolve(self, heartbeat: Option<Duration>) -> Option<Duration> {
        match self {
            Self::FromHeartbeat => Some(
                heartbeat
                    .map_or(Self::FALLBACK, |h| h.saturating_mul(2))
                    .max(Self::FLOOR),
            ),
            Self::After(d) => Some(d),
            Self::Off => None,
        }
    }
}

/// Why an [`OutboxConfig`] cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxConfigError {
    /// A capacity or window of zero.
    #[error("{field} must be at least 1")]
    Zero {
        /// The offending setting.
        field: &'static str,
    },
    /// A timeout of zero (it would fail every publish at once).
    #[error("{field} must be longer than zero")]
    ZeroDuration {
        /// The offending setting.
        field: &'static str,
    },
}

/// The outbox's limits and defaults. Build one with [`OutboxConfig::builder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    pub(crate) max_messages: usize,
    pub(crate) max_bytes: usize,
    pub(crate) overflow: OverflowPolicy,
    pub(crate) max_in_flight: usize,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) publish_timeout: Option<Duration>,
    pub(crate) confirm_timeout: ConfirmTimeout,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_messages: 10_000,
            max_bytes: 64 << 20,
            overflow: OverflowPolicy::Wait { deadline: None },
            max_in_flight: 256,
            default_ttl: None,
            publish_timeout: Some(Self::DEFAULT_PUBLISH_TIMEOUT),
            confirm_timeout: ConfirmTimeout::FromHeartbeat,
        }
    }
}

impl OutboxConfig {
    /// The default publish timeout: every publish has its outcome within
    /// 60 s. An outage shorter than 60 s minus its detection time (about one
    /// heartbeat) and the reconnect's backoff loses no publish; a longer
    /// one resolves the publishes it holds with `Timeout`.
    pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(60);

    /// A builder holding the defaults: 10,000 messages, 64 MiB, `Wait`
    /// (until the publish timeout),
    /// 256 messages in flight, no time to live, a 60 s publish timeout, a
    /// confirm timeout from the link's heartbeat.
    pub fn builder() -> OutboxConfigBuilder {
        OutboxConfigBuilder {
            config: Self::default(),
        }
    }
    /// Most messages pending at once (queued plus in flight).
    pub fn max_messages(&self) -> usize {
        self.max_messages
    }
    /// Most bytes pending at once, as the messages' sizes say.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
    /// What a full outbox does with a new message.
    pub fn overflow(&self) -> OverflowPolicy {
        self.overflow
    }
    /// Most messages written to a link and not yet confirmed.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }
    /// The time to live of a message that does not set its own.
    pub fn default_ttl(&self) -> Option<Duration> {
        self.default_ttl
    }
    /// The longest a publish waits for its outcome, queued, written or
    /// awaiting its confirm (`None`: no bound).
    pub fn publish_timeout(&self) -> Option<Duration> {
        self.publish_timeout
    }
    /// How long a written message waits for its confirm before its link is
    /// treated as broken.
    pub fn confirm_timeout(&self) -> ConfirmTimeout {
        self.confirm_timeout
    }
}

/// Builds an [`OutboxConfig`].
#[derive(Debug, Clone, Copy)]
pub struct OutboxConfigBuilder {
    config: OutboxConfig,
}

impl OutboxConfigBuilder {
    /// Most messages pending at once (default 10,000).
    pub fn max_messages(mut self, n: usize) -> Self {
        self.config.max_messages = n;
        self
    }
    /// Most bytes pending at once (default 64 MiB). Sizes come from
    /// [`SubmitOptions::size_bytes`] (the publisher fills it in from the
    /// adapter's `Deliver::size_of`).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.config.max_bytes = n;
        self
    }
    /// The overflow policy (default `Wait` with no deadline of its own:
    /// a caller waits for room at most until its publish timeout).
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.config.overflow = policy;
        self
    }
    /// Most messages in flight (default 256).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.config.max_in_flight = n;
        self
    }
    /// The default time to live (default none).
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.config.default_ttl = ttl;
        self
    }
    /// The publish timeout (default 60 s; `None` opts out: a publish may
    /// then wait for its outcome as long as the engine keeps reconnecting).
    pub fn publish_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.publish_timeout = timeout;
        self
    }
    /// The confirm timeout (default [`ConfirmTimeout::FromHeartbeat`]).
    pub fn confirm_timeout(mut self, timeout: ConfirmTimeout) -> Self {
        self.config.confirm_timeout = timeout;
        self
    }
    /// Checks the settings. Any duration is accepted except a zero timeout:
    /// a deadline beyond the clock's range never comes.
    pub fn build(self) -> Result<OutboxConfig, OutboxConfigError> {
        let c = self.config;
        for (field, v) in [
            ("max_messages", c.max_messages),
            ("max_bytes", c.max_bytes),
            ("max_in_flight", c.max_in_flight),
        ] {
            if v == 0 {
                return Err(OutboxConfigError::Zero { field });
            }
        }
        let confirm = match c.confirm_timeout {
            ConfirmTimeout::After(d) => Some(d),
            _ => None,
        };
        for (field, d) in [
            ("publish_timeout", c.publish_timeout),
            ("confirm_timeout", confirm),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(OutboxConfigError::ZeroDuration { field });
            }
        }
        Ok(c)
    }
}

/// Per-message settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SubmitOptions {
    /// Time to live from submission (`None`: the config's default).
    pub ttl: Option<Duration>,
    /// Size counted against the byte capacity (`None`: 0 in the core; the
    /// publisher asks the adapter's `Deliver::size_of`).
    pub size_bytes: Option<usize>,
    /// Overrides the config's overflow policy for this message.
    pub overflow: Option<OverflowPolicy>,
    /// Replaces the config's publish timeout for this message (from
    /// submission to its outcome).
    pub publish_timeout: Option<Duration>,
}

impl SubmitOptions {
    /// No time to live, no size, the config's overflow policy and publish timeout.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the time to live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// Sets the size.
    pub fn size_bytes(mut self, size: usize) -> Self {
        self.size_bytes = Some(size);
        self
    }
    /// Sets the overflow policy for this message.
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = Some(policy);
        self
    }
    /// Sets the publish timeout for this message.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = Some(timeout);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zero() {
        assert_eq!(
            OutboxConfig::builder().max_in_flight(0).build(),
            Err(OutboxConfigError::Zero {
                field: "max_in_flight"
            })
        );
        assert_eq!(
            OutboxConfig::builder()
                .publish_timeout(Some(Duration::ZERO))
                .build(),
            Err(OutboxConfigError::ZeroDuration {
                field: "publish_timeout"
            })
        );
        assert_eq!(
            OutboxConfig::builder()
                .confirm_timeout(ConfirmTimeout::After(Duration::ZERO))
                .build(),
            Err(OutboxConfigError::ZeroDuration {
                field: "confirm_timeout"
            })
        );
    }

    #[test]
    fn huge_durations_are_accepted() {
        let c = OutboxConfig::builder()
            .publish_timeout(Some(Duration::MAX))
            .default_ttl(Some(Duration::MAX))
            .confirm_timeout(ConfirmTimeout::After(Duration::MAX))
            .overflow(OverflowPolicy::Wait {
                deadline: Some(Duration::MAX),
            })
            .build();
        assert!(c.is_ok());
    }

    #[test]
    fn confirm_timeout_from_heartbeat() {
        let auto = ConfirmTimeout::FromHeartbeat;
        assert_eq!(
            auto.resolve(Some(Duration::from_secs(20))),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            auto.resolve(Some(Duration::from_secs(1))),
            Some(ConfirmTimeout::FLOOR)
        );
        assert_eq!(auto.resolve(None), Some(ConfirmTimeout::FALLBACK));
        assert_eq!(auto.resolve(Some(Duration::MAX)), Some(Duration::MAX));
        assert_eq!(
            ConfirmTimeout::Off.resolve(Some(Duration::from_secs(1))),
            None
        );
    }
}
