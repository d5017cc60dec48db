//! The outbox's settings: limits, policies, deadlines, per-message options.

use std::time::Duration;

use crate::env::{EnvError, Vars};

/// What a full outbox does with a new message.
///
/// With the `serde` feature: `{"policy": "wait", "deadline": "5s"}`,
/// `{"policy": "reject_new"}`, `{"policy": "drop_oldest"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)
)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// Backpressure: the caller waits for room, at most `deadline` (`None`:
    /// until the publish timeout, or as long as it takes without one), then
    /// gets [`crate::outbox::PublishError::Overflow`]. The core answers
    /// the outbox core's `Submit::Full`; the async publisher does the waiting.
    /// The default, with no deadline of its own: an outage slows publishers
    /// down instead of failing their publishes.
    Wait {
        /// The longest wait (a deadline beyond the clock's range never comes).
        #[cfg_attr(
            feature = "serde",
            serde(default, with = "crate::serde_duration::option")
        )]
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
///
/// With the `serde` feature: `"from_heartbeat"`, `"off"`, or a duration
/// such as `"30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(into = "String", try_from = "String"))]
#[non_exhaustive]
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

impl std::str::FromStr for ConfirmTimeout {
    type Err = &'static str;
    /// `from_heartbeat`, `off`, or a duration in `humantime` form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "from_heartbeat" | "heartbeat" => Ok(Self::FromHeartbeat),
            v if v.eq_ignore_ascii_case("off") => Ok(Self::Off),
            v => crate::env::parse_duration(v)
                .map(Self::After)
                .ok_or(CONFIRM_TIMEOUT),
        }
    }
}

impl TryFrom<String> for ConfirmTimeout {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ConfirmTimeout> for String {
    fn from(t: ConfirmTimeout) -> String {
        match t {
            ConfirmTimeout::FromHeartbeat => "from_heartbeat".into(),
            ConfirmTimeout::Off => "off".into(),
            ConfirmTimeout::After(d) => humantime::format_duration(d).to_string(),
        }
    }
}

/// What a confirm timeout must look like.
const CONFIRM_TIMEOUT: &str = "from_heartbeat, off, or a duration such as 30s";

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

/// The outbox's limits and defaults. Build one with [`OutboxConfig::builder`],
/// change one with [`OutboxConfig::to_builder`].
///
/// With the `serde` feature it (de)serializes as an
/// [`OutboxConfigBuilder`]: deserializing runs
/// [`OutboxConfigBuilder::build`], so an invalid configuration is an error
/// carrying the [`OutboxConfigError`]'s message.
///
/// # Examples
///
/// A small outbox that fails fast when full, instead of making callers
/// wait for room; a limit of zero is refused when built.
///
/// ```
/// use std::time::Duration;
/// use redial::outbox::{OutboxConfig, OutboxConfigError, OverflowPolicy};
///
/// let config = OutboxConfig::builder()
///     .max_messages(1_000)
///     .max_bytes(1 << 20)
///     .overflow(OverflowPolicy::RejectNew)
///     .publish_timeout(Duration::from_secs(10))
///     .build()?;
/// assert_eq!(config.max_messages(), 1_000);
/// assert_eq!(config.publish_timeout(), Some(Duration::from_secs(10)));
///
/// let refused = OutboxConfig::builder().max_messages(0).build();
/// assert!(matches!(refused, Err(OutboxConfigError::Zero { .. })));
/// # Ok::<(), OutboxConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(try_from = "OutboxConfigBuilder", into = "OutboxConfigBuilder")
)]
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
        Self::default().to_builder()
    }
    /// A builder holding this configuration's settings, to change some of
    /// them: `config.to_builder().build()` gives back an equal configuration.
    pub fn to_builder(&self) -> OutboxConfigBuilder {
        OutboxConfigBuilder {
            max_messages: self.max_messages,
            max_bytes: self.max_bytes,
            overflow: self.overflow,
            max_in_flight: self.max_in_flight,
            default_ttl: self.default_ttl,
            publish_timeout: self.publish_timeout,
            confirm_timeout: self.confirm_timeout,
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

/// Builds an [`OutboxConfig`]; setters take plain values, a setting that
/// can be off has a `no_*` setter.
///
/// With the `serde` feature it deserializes from an object holding any of
/// the setters' names (durations in `humantime` form, `null` or `"off"`
/// for a setting turned off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct OutboxConfigBuilder {
    max_messages: usize,
    max_bytes: usize,
    overflow: OverflowPolicy,
    max_in_flight: usize,
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_duration::option"))]
    default_ttl: Option<Duration>,
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_duration::option"))]
    publish_timeout: Option<Duration>,
    confirm_timeout: ConfirmTimeout,
}

impl Default for OutboxConfigBuilder {
    fn default() -> Self {
        OutboxConfig::builder()
    }
}

impl From<OutboxConfig> for OutboxConfigBuilder {
    fn from(config: OutboxConfig) -> Self {
        config.to_builder()
    }
}

impl TryFrom<OutboxConfigBuilder> for OutboxConfig {
    type Error = OutboxConfigError;
    fn try_from(builder: OutboxConfigBuilder) -> Result<Self, OutboxConfigError> {
        builder.build()
    }
}

impl OutboxConfigBuilder {
    /// Most messages pending at once (default 10,000).
    pub fn max_messages(mut self, n: usize) -> Self {
        self.max_messages = n;
        self
    }
    /// Most bytes pending at once (default 64 MiB). Sizes come from
    /// [`SubmitOptions::size_bytes`] (the publisher fills it in from the
    /// adapter's `Deliver::size_of`).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }
    /// The overflow policy (default `Wait` with no deadline of its own:
    /// a caller waits for room at most until its publish timeout).
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = policy;
        self
    }
    /// Most messages in flight (default 256).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }
    /// The time to live of a message that does not set its own (default none).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }
    /// Messages live until their outcome unless they set a time to live
    /// (the default).
    pub fn no_default_ttl(mut self) -> Self {
        self.default_ttl = None;
        self
    }
    /// The publish timeout (default 60 s).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = Some(timeout);
        self
    }
    /// No publish timeout: a publish may wait for its outcome as long as
    /// the engine keeps reconnecting.
    pub fn no_publish_timeout(mut self) -> Self {
        self.publish_timeout = None;
        self
    }
    /// The confirm timeout (default [`ConfirmTimeout::FromHeartbeat`]).
    pub fn confirm_timeout(mut self, timeout: ConfirmTimeout) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Overrides settings from the process environment, `{prefix}_OUTBOX_*`
    /// variables (listed in docs/configuration.md). Unset or empty variables
    /// change nothing; the values are checked by
    /// [`OutboxConfigBuilder::build`].
    ///
    /// # Errors
    /// [`EnvError`] names the variable that does not parse.
    pub fn apply_env(self, prefix: &str) -> Result<Self, EnvError> {
        self.apply_env_with(prefix, crate::env::process)
    }

    /// [`OutboxConfigBuilder::apply_env`] over any lookup.
    ///
    /// # Errors
    /// As [`OutboxConfigBuilder::apply_env`].
    pub fn apply_env_with(
        mut self,
        prefix: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, EnvError> {
        let vars = Vars::new(prefix, &lookup);
        for (name, slot) in [
            ("OUTBOX_MAX_MESSAGES", &mut self.max_messages),
            ("OUTBOX_MAX_BYTES", &mut self.max_bytes),
            ("OUTBOX_MAX_IN_FLIGHT", &mut self.max_in_flight),
        ] {
            if let Some(v) = vars.parse(name, "a whole number")? {
                *slot = v;
            }
        }
        if let Some(v) = vars.with("OUTBOX_OVERFLOW", OVERFLOW, parse_overflow)? {
            self.overflow = v;
        }
        for (name, slot) in [
            ("OUTBOX_DEFAULT_TTL", &mut self.default_ttl),
            ("OUTBOX_PUBLISH_TIMEOUT", &mut self.publish_timeout),
        ] {
            if let Some(v) = vars.optional_duration(name)? {
                *slot = v;
            }
        }
        if let Some(v) = vars.with("OUTBOX_CONFIRM_TIMEOUT", CONFIRM_TIMEOUT, |v| {
            v.parse().ok()
        })? {
            self.confirm_timeout = v;
        }
        Ok(self)
    }

    /// Checks the settings. Any duration is accepted except a zero timeout:
    /// a deadline beyond the clock's range never comes.
    ///
    /// # Errors
    /// [`OutboxConfigError`] naming the setting that cannot work.
    pub fn build(self) -> Result<OutboxConfig, OutboxConfigError> {
        for (field, v) in [
            ("max_messages", self.max_messages),
            ("max_bytes", self.max_bytes),
            ("max_in_flight", self.max_in_flight),
        ] {
            if v == 0 {
                return Err(OutboxConfigError::Zero { field });
            }
        }
        let confirm = match self.confirm_timeout {
            ConfirmTimeout::After(d) => Some(d),
            _ => None,
        };
        for (field, d) in [
            ("publish_timeout", self.publish_timeout),
            ("confirm_timeout", confirm),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(OutboxConfigError::ZeroDuration { field });
            }
        }
        Ok(OutboxConfig {
            max_messages: self.max_messages,
            max_bytes: self.max_bytes,
            overflow: self.overflow,
            max_in_flight: self.max_in_flight,
            default_ttl: self.default_ttl,
            publish_timeout: self.publish_timeout,
            confirm_timeout: self.confirm_timeout,
        })
    }
}

/// What `{prefix}_OUTBOX_OVERFLOW` must look like.
const OVERFLOW: &str = "wait, wait DURATION (such as wait 5s), reject_new or drop_oldest";

/// `wait`, `wait 5s`, `reject_new`, `drop_oldest`.
fn parse_overflow(v: &str) -> Option<OverflowPolicy> {
    match v {
        "wait" => Some(OverflowPolicy::Wait { deadline: None }),
        "reject_new" => Some(OverflowPolicy::RejectNew),
        "drop_oldest" => Some(OverflowPolicy::DropOldest),
        other => {
            let deadline = crate::env::parse_duration(other.strip_prefix("wait ")?)?;
            Some(OverflowPolicy::Wait {
                deadline: Some(deadline),
            })
        }
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
                .publish_timeout(Duration::ZERO)
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
            .publish_timeout(Duration::MAX)
            .default_ttl(Duration::MAX)
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
