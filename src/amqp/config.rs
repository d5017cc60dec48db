//! The AMQP adapter's configuration, its heartbeat rule, and the engine
//! configuration it recommends.

use std::fmt;
use std::num::NonZeroU16;
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};

use crate::backoff::{Backoff, Jitter};
use crate::machine::{Config, ConfigError};
use crate::redact::{self, Redacted};

/// The heartbeat redial proposes to the broker in `connection.tune-ok`.
///
/// The negotiation rule ([S29](crate#scenario-ids-and-failure-reports)), applied by lapin during the handshake and
/// spelled out by [`negotiate_heartbeat`]:
///
/// | client proposal | server proposal | negotiated |
/// |-----------------|-----------------|------------|
/// | a > 0           | b > 0           | min(a, b)  |
/// | 0               | b > 0           | b          |
/// | a > 0           | 0               | a          |
/// | 0               | 0               | disabled   |
///
/// So heartbeats are off only when both sides ask for it; the default is
/// [`Heartbeat::DEFAULT`] (20 s), and proposing 0 takes an explicit
/// [`Heartbeat::Disabled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Propose this many seconds.
    Enabled(NonZeroU16),
    /// Propose 0: heartbeats are disabled only if the broker proposes 0 too.
    Disabled,
}

impl Heartbeat {
    /// The default proposal: 20 s (half-open links detected within 30 s).
    pub const DEFAULT: Heartbeat = Heartbeat::Enabled(NonZeroU16::new(20).expect("non-zero"));

    /// A proposal of `secs` seconds; `0` is [`Heartbeat::Disabled`].
    pub fn secs(secs: u16) -> Self {
        NonZeroU16::new(secs).map_or(Heartbeat::Disabled, Heartbeat::Enabled)
    }

    /// The value sent to the broker (0 when disabled).
    pub fn proposal(self) -> u16 {
        match self {
            Heartbeat::Enabled(s) => s.get(),
            Heartbeat::Disabled => 0,
        }
    }

    /// The proposal as a duration (`None` when disabled).
    pub fn as_duration(self) -> Option<Duration> {
        match self {
            Heartbeat::Enabled(s) => Some(Duration::from_secs(u64::from(s.get()))),
            Heartbeat::Disabled => None,
        }
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat::DEFAULT
    }
}

/// The negotiated heartbeat timeout in seconds (0: disabled) for a client
/// and a server proposal: both non-zero, the smaller; one zero, the other;
/// both zero, disabled. This is the rule lapin applies in `connection.tune`.
pub fn negotiate_heartbeat(client: u16, server: u16) -> u16 {
    match (client, server) {
        (0, s) => s,
        (c, 0) => c,
        (c, s) => c.min(s),
    }
}

/// The frame size redial proposes by default: 128 KiB, RabbitMQ's default.
///
/// lapin sizes its socket buffers from the proposal when it connects; with
/// no proposal it grows them after the handshake, zero-filling 8 MiB on the
/// recovery path (26 ms measured in a debug build).
pub const DEFAULT_FRAME_MAX: u32 = 131_072;

/// The default per-consumer prefetch: as many as a consumer stream buffers
/// by default, so the broker never has more deliveries in flight to a
/// consumer than its stream can take (lapin's own queue stays empty).
pub const DEFAULT_PREFETCH: u16 = 256;

/// What [`AmqpConfig::engine_config`] adds to the connect timeout so that
/// the engine's backstop leaves the topology replay room (10 min: over
/// half a million entries at the rate measured on a loaded development
/// machine, see docs/amqp.md).
pub const REPLAY_ALLOWANCE: Duration = Duration::from_secs(600);

/// What to do when replaying one topology entry fails on a new link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplayPolicy {
    /// Fail the open with a transient error: the engine backs off and tries
    /// a new link (the default: a broker that lost a definition usually
    /// gets it back, e.g. a node that is still starting).
    #[default]
    Retry,
    /// Log it, report it on [`crate::amqp::AmqpTransport::replay_errors`],
    /// reopen the channel and go on with the next entry.
    Skip,
    /// Fail the open with a permanent error: the engine gives up (unless
    /// its configuration allows permanent retries).
    Fail,
}

/// An [`AmqpConfig`] that cannot work, rejected by
/// [`crate::amqp::AmqpTransport::new`] (as [`crate::amqp::AmqpError::Config`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpConfigError {
    /// TLS settings with a plain `amqp://` URI: the link would silently
    /// connect without TLS.
    #[error("TLS settings need an amqps:// URI; amqp:// would connect in plain text")]
    TlsWithoutAmqps,
    /// The consumer buffer is larger than a tokio channel can hold.
    #[error("consumer_buffer must be at most {max}, got {got}")]
    ConsumerBuffer {
        /// The rejected size.
        got: usize,
        /// The largest accepted size.
        max: usize,
    },
    /// A duration or the backoff, as the engine validates it.
    #[error(transparent)]
    Engine(#[from] ConfigError),
    /// A cluster configuration without any URI.
    #[error("no endpoint: a cluster needs at least one URI")]
    NoEndpoints,
    /// The endpoints of one engine must share the scheme, the credentials
    /// and the vhost: they are nodes of one cluster, and failing over must
    /// not change who the client is or what it sees.
    #[error(
        "endpoint {index} differs from endpoint 0 in its {what}; the URIs of one cluster share scheme, credentials and vhost"
    )]
    MixedEndpoints {
        /// The endpoint's position in the list.
        index: usize,
        /// What differs: `scheme`, `credentials` or `vhost`.
        what: &'static str,
    },
}

/// Everything the AMQP adapter needs; see the environment variables in
/// [`AmqpConfig::from_env`].
///
/// Its `Debug` output shows `***` in place of the URI's password and the
/// TLS client identity.
#[derive(Clone)]
pub struct AmqpConfig {
    /// The endpoints, at least one once validated.
    pub(crate) uris: Vec<String>,
    pub(crate) connection_name: Option<String>,
    pub(crate) heartbeat: Heartbeat,
    pub(crate) tls: OwnedTLSConfig,
    pub(crate) frame_max: Option<u32>,
    pub(crate) channel_max: Option<u16>,
    pub(crate) connect_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) blocked_timeout: Option<Duration>,
    pub(crate) backoff: Backoff,
    pub(crate) stable_period: Duration,
    pub(crate) replay_policy: ReplayPolicy,
    pub(crate) consumer_buffer: usize,
    pub(crate) prefetch: u16,
    pub(crate) message_id_prefix: Option<String>,
    pub(crate) probe_interval: Option<Duration>,
}

impl AmqpConfig {
    /// A configuration for `uri` (`amqp://user:pass@host:port/vhost`, or
    /// `amqps://` for TLS), with the defaults: heartbeat 20 s, connect
    /// timeout 10 s, graceful close 1 s, no blocked timeout, the engine's
    /// default backoff, replay policy [`ReplayPolicy::Retry`]. The URI's
    /// `heartbeat`, `frame_max` and `channel_max` query parameters are
    /// replaced by this configuration's values.
    pub fn new(uri: impl Into<String>) -> Self {
        Self::cluster([uri.into()])
    }

    /// A configuration for the nodes of one cluster, one URI each, sharing
    /// scheme, credentials and vhost (otherwise
    /// [`AmqpConfigError::MixedEndpoints`]). The engine shuffles them once
    /// (so a fleet spreads over the nodes), returns to the node of a lost
    /// link first, and tries the next node at once when one fails: a dead
    /// node costs one refused connect, not a backoff wait (docs/clusters.md).
    /// Otherwise as [`AmqpConfig::new`].
    pub fn cluster<I, S>(uris: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            uris: uris.into_iter().map(Into::into).collect(),
            connection_name: None,
            heartbeat: Heartbeat::DEFAULT,
            tls: OwnedTLSConfig::default(),
            frame_max: Some(DEFAULT_FRAME_MAX),
            channel_max: None,
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(1),
            blocked_timeout: None,
            backoff: Backoff::default(),
            stable_period: Duration::from_secs(10),
            replay_policy: ReplayPolicy::Retry,
            consumer_buffer: 256,
            prefetch: DEFAULT_PREFETCH,
            message_id_prefix: None,
            probe_interval: Some(crate::runtime::DEFAULT_PROBE_INTERVAL),
        }
    }

    /// How often the broker is probed once a backoff wait is over (default
    /// 500 ms; `None`: attempts on the backoff schedule alone). A probe is a
    /// TCP connect and the AMQP protocol header, answered by the broker's
    /// `connection.start`; the attempt is made as soon as one is answered,
    /// so the engine is back within one interval of the broker's return
    /// without a full handshake per check.
    pub fn probe_interval(mut self, interval: Option<Duration>) -> Self {
        self.probe_interval = interval;
        self
    }

    /// The connection name shown by the broker (`rabbitmqctl list_connections name`).
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }
    /// The heartbeat proposal (default 20 s).
    pub fn heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }
    /// TLS options for `amqps://`: a CA chain in PEM, a client identity.
    /// With an `amqp://` URI they are a configuration error
    /// ([`AmqpConfigError::TlsWithoutAmqps`]), never silently ignored.
    pub fn tls(mut self, tls: OwnedTLSConfig) -> Self {
        self.tls = tls;
        self
    }
    /// The largest frame redial proposes (default [`DEFAULT_FRAME_MAX`],
    /// RabbitMQ's own default; the smaller of the two proposals wins).
    pub fn frame_max(mut self, bytes: u32) -> Self {
        self.frame_max = Some(bytes);
        self
    }
    /// The most channels redial proposes (default: the broker's).
    pub fn channel_max(mut self, channels: u16) -> Self {
        self.channel_max = Some(channels);
        self
    }
    /// How long the handshake (TCP, TLS, AMQP, channels) may take, and how
    /// long the topology replay may wait for each answer (default 10 s).
    /// The replay as a whole has no fixed deadline (see
    /// [`AmqpConfig::engine_config`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// How long closing a link waits for the broker's `close-ok` before the
    /// socket is dropped (default 1 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }
    /// Replace a link the broker keeps blocked longer than this (default: never).
    pub fn blocked_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.blocked_timeout = timeout;
        self
    }
    /// The engine's backoff policy (used by [`AmqpConfig::engine_config`]).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    /// How long a link must stay up before the backoff resets (default 10 s).
    pub fn stable_period(mut self, period: Duration) -> Self {
        self.stable_period = period;
        self
    }
    /// What a failed topology replay does (default [`ReplayPolicy::Retry`]).
    pub fn replay_policy(mut self, policy: ReplayPolicy) -> Self {
        self.replay_policy = policy;
        self
    }
    /// How many deliveries a consumer stream buffers (default 256).
    pub fn consumer_buffer(mut self, deliveries: usize) -> Self {
        self.consumer_buffer = deliveries.max(1);
        self
    }
    /// The per-consumer prefetch set on every consumer channel (default
    /// [`DEFAULT_PREFETCH`]; `0`: unlimited, the broker then pushes a whole
    /// backlog into memory under a slow consumer). [`crate::amqp::AmqpTransport::qos`]
    /// overrides it for the consumers started after it.
    pub fn prefetch(mut self, deliveries: u16) -> Self {
        self.prefetch = deliveries;
        self
    }

    /// The prefix of the `message_id` redial sets on every publish
    /// (`{prefix}-{outbox id}`; default: random per transport, so that two
    /// processes never collide).
    pub fn message_id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.message_id_prefix = Some(prefix.into());
        self
    }

    /// The first endpoint's URI (empty when the list is).
    pub fn uri(&self) -> &str {
        self.uris.first().map_or("", String::as_str)
    }
    /// Every endpoint's URI, in the order given (the engine's
    /// [`crate::runtime::OpenContext::endpoint`] indexes this list).
    pub fn uris(&self) -> &[String] {
        &self.uris
    }
    /// The heartbeat proposal.
    pub fn heartbeat_proposal(&self) -> Heartbeat {
        self.heartbeat
    }
    /// The replay policy.
    pub fn policy(&self) -> ReplayPolicy {
        self.replay_policy
    }

    /// The engine configuration recommended for this AMQP configuration:
    /// * `liveness_timeout` = the heartbeat proposal, an upper bound of the
    ///   negotiated timeout H (the negotiated value is never larger when
    ///   redial proposes one). Any inbound byte counts as activity, so the
    ///   engine declares a silent link dead between H and 1.5 x H after the
    ///   last inbound frame. When the broker negotiates a smaller H, the
    ///   link's own watchdog applies the same bound to the negotiated value
    ///   (see [`crate::amqp`]); use [`AmqpConfig::engine_config_for`] to
    ///   build the engine from a known negotiated value instead. With
    ///   [`Heartbeat::Disabled`] the engine watchdog is off (an idle link
    ///   then sends nothing; the link's watchdog still follows a broker
    ///   that imposes heartbeats).
    /// * `connect_timeout` = the configured one plus [`REPLAY_ALLOWANCE`]:
    ///   the adapter bounds the handshake and each replay answer itself, so
    ///   the engine's timeout is only a backstop that a large topology
    ///   replay cannot run into. An engine configured by hand needs the
    ///   same room.
    /// * `blocked_timeout`, `stable_period` and the backoff as configured;
    ///   the first retry after a stable link is immediate.
    ///
    /// # Errors
    /// The engine's own validation, e.g. a blocked timeout below twice the
    /// liveness timeout ([S29](crate#scenario-ids-and-failure-reports), the rule of report 001).
    pub fn engine_config(&self) -> Result<Config, ConfigError> {
        self.engine_config_for(self.heartbeat.as_duration())
    }

    /// Checks what the engine configuration does not: TLS settings need
    /// `amqps://`, the consumer buffer fits a channel; and every duration
    /// and the backoff, as the engine would.
    pub(crate) fn check(&self, uris: &[AMQPUri]) -> Result<(), AmqpConfigError> {
        let Some(first) = uris.first() else {
            return Err(AmqpConfigError::NoEndpoints);
        };
        for (index, uri) in uris.iter().enumerate().skip(1) {
            let what = if uri.scheme != first.scheme {
                "scheme"
            } else if uri.authority.userinfo != first.authority.userinfo {
                "credentials"
            } else if uri.vhost != first.vhost {
                "vhost"
            } else {
                continue;
            };
            return Err(AmqpConfigError::MixedEndpoints { index, what });
        }
        if first.scheme == AMQPScheme::AMQP && self.tls != OwnedTLSConfig::default() {
            return Err(AmqpConfigError::TlsWithoutAmqps);
        }
        let max = tokio::sync::Semaphore::MAX_PERMITS;
        if self.consumer_buffer > max {
            return Err(AmqpConfigError::ConsumerBuffer {
                got: self.consumer_buffer,
                max,
            });
        }
        // Without a liveness timeout: the blocked-vs-heartbeat rule is
        // `engine_config`'s to report, against the heartbeat in use.
        self.engine_config_for(None)?;
        Ok(())
    }

    /// [`AmqpConfig::engine_config`] with the liveness timeout set to a
    /// known negotiated heartbeat timeout (`None`: disabled).
    ///
    /// # Errors
    /// As [`AmqpConfig::engine_config`].
    pub fn engine_config_for(&self, heartbeat: Option<Duration>) -> Result<Config, ConfigError> {
        Config::builder()
            .backoff(self.backoff.clone())
            .connect_timeout(self.connect_timeout.saturating_add(REPLAY_ALLOWANCE))
            .liveness_timeout(heartbeat)
            .blocked_timeout(self.blocked_timeout)
            .stable_period(self.stable_period)
            .probe_interval(self.probe_interval)
            .endpoints(self.uris.len().max(1))
            .close_timeout(
                self.close_timeout
                    .saturating_mul(2)
                    .max(Duration::from_secs(1)),
            )
            .build()
    }

    /// A configuration read from the environment, for deployments that tune
    /// these per site (as the operators in the failure reports did):
    ///
    /// | variable | meaning | default |
    /// |----------|---------|---------|
    /// | `REDIAL_AMQP_URI` | broker URI (`amqp://` or `amqps://`) | `amqp://127.0.0.1:5672/%2f` |
    /// | `REDIAL_AMQP_HEARTBEAT` | heartbeat proposal in seconds; `0` proposes none | `20` |
    /// | `REDIAL_AMQP_CONNECTION_NAME` | connection name | none |
    /// | `REDIAL_AMQP_CONNECT_TIMEOUT` | handshake timeout, and per replay answer | `10s` |
    /// | `REDIAL_BLOCKED_TIMEOUT` | replace a link blocked this long; `0` or `off`: never | off |
    /// | `REDIAL_BACKOFF_INITIAL` | first backoff delay | `1s` |
    /// | `REDIAL_BACKOFF_MAX` | backoff cap | `60s` |
    /// | `REDIAL_BACKOFF_MULTIPLIER` | growth per step | `2` |
    /// | `REDIAL_BACKOFF_JITTER` | proportional jitter fraction in `[0, 1]` | `0.5` |
    /// | `REDIAL_STABLE_PERIOD` | uptime after which the backoff resets | `10s` |
    ///
    /// Durations are a number with a unit (`250ms`, `5s`, `2m`); a bare
    /// number is seconds. Unset variables keep the defaults.
    ///
    /// # Errors
    /// [`EnvError`] names the variable that does not parse or validate.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`AmqpConfig::from_env`] over any lookup (testable without touching
    /// the process environment).
    ///
    /// # Errors
    /// As [`AmqpConfig::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let get = |name: &'static str| lookup(name).filter(|v| !v.trim().is_empty());
        let uri = get("REDIAL_AMQP_URI").unwrap_or_else(|| "amqp://127.0.0.1:5672/%2f".into());
        let mut config = AmqpConfig::new(uri);
        if let Some(v) = get("REDIAL_AMQP_HEARTBEAT") {
            let secs: u16 = v
                .trim()
                .parse()
                .map_err(|_| EnvError::new("REDIAL_AMQP_HEARTBEAT", &v, "seconds, 0..=65535"))?;
            config.heartbeat = Heartbeat::secs(secs);
        }
        if let Some(v) = get("REDIAL_AMQP_CONNECTION_NAME") {
            config.connection_name = Some(v);
        }
        if let Some(v) = get("REDIAL_AMQP_CONNECT_TIMEOUT") {
            config.connect_timeout = duration("REDIAL_AMQP_CONNECT_TIMEOUT", &v)?;
        }
        if let Some(v) = get("REDIAL_BLOCKED_TIMEOUT") {
            let t = v.trim();
            config.blocked_timeout = if t == "0" || t.eq_ignore_ascii_case("off") {
                None
            } else {
                Some(duration("REDIAL_BLOCKED_TIMEOUT", &v)?)
            };
        }
        if let Some(v) = get("REDIAL_STABLE_PERIOD") {
            config.stable_period = duration("REDIAL_STABLE_PERIOD", &v)?;
        }
        let defaults = Backoff::default();
        let initial = get("REDIAL_BACKOFF_INITIAL")
            .map(|v| duration("REDIAL_BACKOFF_INITIAL", &v))
            .transpose()?
            .unwrap_or(defaults.initial());
        let max = get("REDIAL_BACKOFF_MAX")
            .map(|v| duration("REDIAL_BACKOFF_MAX", &v))
            .transpose()?
            .unwrap_or(defaults.max());
        let multiplier = get("REDIAL_BACKOFF_MULTIPLIER")
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|_| EnvError::new("REDIAL_BACKOFF_MULTIPLIER", &v, "a number >= 1"))
            })
            .transpose()?
            .unwrap_or(defaults.multiplier());
        let jitter = get("REDIAL_BACKOFF_JITTER")
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .map(|fraction| Jitter::Proportional { fraction })
                    .map_err(|_| EnvError::new("REDIAL_BACKOFF_JITTER", &v, "a fraction in [0, 1]"))
            })
            .transpose()?
            .unwrap_or(defaults.jitter());
        config.backoff = Backoff::new(initial, multiplier, max, jitter).map_err(|e| EnvError {
            variable: "REDIAL_BACKOFF_*",
            value: String::new(),
            expected: e.to_string(),
        })?;
        // Reject what the engine would reject, naming the variables.
        config.engine_config().map_err(|e| EnvError {
            variable: "REDIAL_*",
            value: String::new(),
            expected: e.to_string(),
        })?;
        Ok(config)
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let identity = self.tls.identity.as_ref().map(|id| match id {
            OwnedIdentity::PKCS12 { .. } => ("PKCS12", Redacted),
            OwnedIdentity::PKCS8 { .. } => ("PKCS8", Redacted),
        });
        f.debug_struct("AmqpConfig")
            .field(
                "uris",
                &self.uris.iter().map(|u| redact::uri(u)).collect::<Vec<_>>(),
            )
            .field("connection_name", &self.connection_name)
            .field("heartbeat", &self.heartbeat)
            .field("tls_identity", &identity)
            .field("tls_cert_chain", &self.tls.cert_chain)
            .field("frame_max", &self.frame_max)
            .field("channel_max", &self.channel_max)
            .field("connect_timeout", &self.connect_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("blocked_timeout", &self.blocked_timeout)
            .field("backoff", &self.backoff)
            .field("stable_period", &self.stable_period)
            .field("replay_policy", &self.replay_policy)
            .field("consumer_buffer", &self.consumer_buffer)
            .field("message_id_prefix", &self.message_id_prefix)
            .finish()
    }
}

/// An environment variable that does not parse or validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?}: expected {expected}")]
pub struct EnvError {
    /// The variable.
    pub variable: &'static str,
    /// Its value.
    pub value: String,
    /// What was expected.
    pub expected: String,
}

impl EnvError {
    fn new(variable: &'static str, value: &str, expected: &str) -> Self {
        Self {
            variable,
            value: value.to_owned(),
            expected: expected.to_owned(),
        }
    }
}

/// `250ms`, `5s`, `1.5s`, `2m`, or a bare number of seconds.
fn duration(variable: &'static str, value: &str) -> Result<Duration, EnvError> {
    let bad = || EnvError::new(variable, value, "a duration such as 250ms, 5s or 2m");
    let v = value.trim();
    let (number, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else {
        (v, 1.0)
    };
    let n: f64 = number.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    Duration::try_from_secs_f64(n * scale).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn heartbeat_negotiation_table() {
        // S29, row by row: (client, server) -> negotiated.
        assert_eq!(negotiate_heartbeat(60, 60), 60);
        assert_eq!(negotiate_heartbeat(300, 60), 60);
        assert_eq!(negotiate_heartbeat(5, 60), 5);
        assert_eq!(negotiate_heartbeat(0, 60), 60);
        assert_eq!(negotiate_heartbeat(60, 0), 60);
        assert_eq!(negotiate_heartbeat(0, 0), 0);
    }

    #[test]
    fn heartbeat_default_is_non_zero_and_disabling_is_explicit() {
        assert_eq!(Heartbeat::default().proposal(), 20);
        assert_eq!(
            AmqpConfig::new("amqp://x").heartbeat_proposal(),
            Heartbeat::DEFAULT
        );
        assert_eq!(Heartbeat::secs(0), Heartbeat::Disabled);
        assert_eq!(Heartbeat::Disabled.proposal(), 0);
        assert_eq!(
            Heartbeat::secs(5).as_duration(),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn engine_config_follows_the_heartbeat() {
        let c = AmqpConfig::new("amqp://x").heartbeat(Heartbeat::secs(5));
        let e = c.engine_config().unwrap();
        assert_eq!(e.liveness_timeout(), Some(Duration::from_secs(5)));
        assert_eq!(
            e.connect_timeout(),
            Some(Duration::from_secs(10) + REPLAY_ALLOWANCE)
        );
        let off = AmqpConfig::new("amqp://x").heartbeat(Heartbeat::Disabled);
        assert_eq!(off.engine_config().unwrap().liveness_timeout(), None);
        // 001's rule: a blocked timeout below 2 x H is rejected.
        let bad = AmqpConfig::new("amqp://x")
            .heartbeat(Heartbeat::secs(60))
            .blocked_timeout(Some(Duration::from_secs(90)));
        assert!(matches!(
            bad.engine_config(),
            Err(ConfigError::BlockedTimeoutTooShort { .. })
        ));
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn from_env_reads_every_documented_variable() {
        let c = AmqpConfig::from_lookup(env(&[
            ("REDIAL_AMQP_URI", "amqp://u:p@10.0.0.1:5673/v"),
            ("REDIAL_AMQP_HEARTBEAT", "7"),
            ("REDIAL_AMQP_CONNECTION_NAME", "svc"),
            ("REDIAL_AMQP_CONNECT_TIMEOUT", "2500ms"),
            ("REDIAL_BLOCKED_TIMEOUT", "1m"),
            ("REDIAL_BACKOFF_INITIAL", "0.5"),
            ("REDIAL_BACKOFF_MAX", "30s"),
            ("REDIAL_BACKOFF_MULTIPLIER", "1.5"),
            ("REDIAL_BACKOFF_JITTER", "0.2"),
            ("REDIAL_STABLE_PERIOD", "3s"),
        ]))
        .unwrap();
        assert_eq!(c.uri(), "amqp://u:p@10.0.0.1:5673/v");
        assert_eq!(c.heartbeat, Heartbeat::secs(7));
        assert_eq!(c.connection_name.as_deref(), Some("svc"));
        assert_eq!(c.connect_timeout, Duration::from_millis(2500));
        assert_eq!(c.blocked_timeout, Some(Duration::from_secs(60)));
        assert_eq!(c.backoff.initial(), Duration::from_millis(500));
        assert_eq!(c.backoff.max(), Duration::from_secs(30));
        assert_eq!(c.backoff.multiplier(), 1.5);
        assert_eq!(c.backoff.jitter(), Jitter::Proportional { fraction: 0.2 });
        assert_eq!(c.stable_period, Duration::from_secs(3));
        let e = c.engine_config().unwrap();
        assert_eq!(e.liveness_timeout(), Some(Duration::from_secs(7)));
        assert_eq!(e.blocked_timeout(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn from_env_defaults_and_errors() {
        let c = AmqpConfig::from_lookup(env(&[])).unwrap();
        assert_eq!(c.uri(), "amqp://127.0.0.1:5672/%2f");
        assert_eq!(c.heartbeat, Heartbeat::DEFAULT);
        assert_eq!(
            AmqpConfig::from_lookup(env(&[("REDIAL_AMQP_HEARTBEAT", "0")]))
                .unwrap()
                .heartbeat,
            Heartbeat::Disabled
        );
        let e = AmqpConfig::from_lookup(env(&[("REDIAL_AMQP_HEARTBEAT", "soon")])).unwrap_err();
        assert_eq!(e.variable, "REDIAL_AMQP_HEARTBEAT");
        let e = AmqpConfig::from_lookup(env(&[("REDIAL_BACKOFF_INITIAL", "-1s")])).unwrap_err();
        assert_eq!(e.variable, "REDIAL_BACKOFF_INITIAL");
        let e = AmqpConfig::from_lookup(env(&[("REDIAL_BLOCKED_TIMEOUT", "10s")])).unwrap_err();
        assert_eq!(e.variable, "REDIAL_*");
    }
}
