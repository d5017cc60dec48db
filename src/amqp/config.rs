//! The AMQP adapter's configuration, its heartbeat rule, and the engine
//! configuration it recommends.

use std::fmt;
use std::num::NonZeroU16;
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};

pub use crate::env::EnvError;
use crate::env::Vars;
use crate::machine::{Config, ConfigBuilder, ConfigError};
use crate::redact::{self, Redacted};

#[cfg(feature = "serde")]
mod raw;

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
#[non_exhaustive]
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

impl std::str::FromStr for Heartbeat {
    type Err = &'static str;
    /// Seconds (`20`) or a whole-second duration (`20s`, `1m`); `0` or
    /// `off` is [`Heartbeat::Disabled`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if crate::env::is_off(s) {
            return Ok(Heartbeat::Disabled);
        }
        let d = crate::env::parse_duration(s).ok_or(HEARTBEAT)?;
        if d.subsec_nanos() != 0 {
            return Err(HEARTBEAT);
        }
        let secs = u16::try_from(d.as_secs()).map_err(|_| HEARTBEAT)?;
        Ok(Heartbeat::secs(secs))
    }
}

impl fmt::Display for Heartbeat {
    /// `20s`, or `off`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Heartbeat::Enabled(s) => write!(f, "{s}s"),
            Heartbeat::Disabled => f.write_str("off"),
        }
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
#[non_exhaustive]
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

impl std::str::FromStr for ReplayPolicy {
    type Err = &'static str;
    /// `retry`, `skip` or `fail`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "retry" => Ok(Self::Retry),
            "skip" => Ok(Self::Skip),
            "fail" => Ok(Self::Fail),
            _ => Err("retry, skip or fail"),
        }
    }
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
    /// The endpoints of one engine must share the scheme, the credentials,
    /// the vhost and the negotiated parameters in their query: they are
    /// nodes of one cluster, and failing over must not change who the
    /// client is, what it sees or how it detects a dead link.
    #[error(
        "endpoint {index} differs from endpoint 0 in its {what}; the URIs of one cluster share scheme, credentials, vhost and query parameters"
    )]
    MixedEndpoints {
        /// The endpoint's position in the list.
        index: usize,
        /// What differs: `scheme`, `credentials`, `vhost`, `heartbeat`,
        /// `frame_max` or `channel_max`.
        what: &'static str,
    },
    /// A URI that does not parse (as [`AmqpConfig::validate`] reports it;
    /// [`crate::amqp::AmqpTransport::new`] reports
    /// [`crate::amqp::AmqpError::InvalidUri`]).
    #[error("endpoint {index}: invalid AMQP URI: {reason}")]
    InvalidUri {
        /// The endpoint's position in the list.
        index: usize,
        /// The parser's message (it has no error type).
        reason: String,
    },
    /// A URI query parameter (`?heartbeat=30`) contradicts the matching
    /// setter: which one was meant is unknowable, so neither is picked.
    #[error(
        "endpoint {index}: the URI's {parameter}={in_uri} contradicts the configured {parameter} {configured}"
    )]
    UriConflict {
        /// The endpoint's position in the list.
        index: usize,
        /// `heartbeat`, `frame_max` or `channel_max`.
        parameter: &'static str,
        /// The URI's value.
        in_uri: u64,
        /// The setter's value.
        configured: u64,
    },
}

/// Everything the AMQP adapter needs: the adapter's own settings only; the
/// engine's (backoff, stable period, blocked timeout, probes) are set on
/// the [`ConfigBuilder`] that [`AmqpConfig::engine_config`] returns.
///
/// Setters take plain values and return the configuration (it is its own
/// builder, checked by [`AmqpConfig::validate`] and when the transport is
/// built). With the `serde` feature it deserializes from an object (see
/// docs/configuration.md), checked by [`AmqpConfig::validate`]; the TLS
/// settings are set in code. [`AmqpConfig::apply_env`] reads
/// `{prefix}_AMQP_*` variables.
///
/// Its `Debug` output shows `***` in place of the URI's password and the
/// TLS client identity.
///
/// ```
/// use std::time::Duration;
/// use redial::amqp::{AmqpConfig, Heartbeat};
///
/// let config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10")
///     .connection_name("billing");
/// // The URI's heartbeat is the proposal; the engine's watchdog follows it.
/// assert_eq!(config.heartbeat_proposal(), Heartbeat::secs(10));
/// let engine = config
///     .engine_config()
///     .stable_period(Duration::from_secs(30))
///     .build()?;
/// assert_eq!(engine.liveness_timeout(), Some(Duration::from_secs(10)));
/// # Ok::<(), redial::machine::ConfigError>(())
/// ```
#[derive(Clone)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "raw::RawAmqpConfig"))]
pub struct AmqpConfig {
    /// The endpoints, at least one once validated.
    pub(crate) uris: Vec<String>,
    pub(crate) connection_name: Option<String>,
    /// Set explicitly (`None`: the URIs' `heartbeat`, else the default).
    pub(crate) heartbeat: Option<Heartbeat>,
    pub(crate) tls: OwnedTLSConfig,
    /// Set explicitly (`None`: the URIs' `frame_max`, else the default).
    pub(crate) frame_max: Option<u32>,
    /// Set explicitly (`None`: the URIs' `channel_max`, else the broker's).
    pub(crate) channel_max: Option<u16>,
    pub(crate) connect_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) replay_policy: ReplayPolicy,
    pub(crate) consumer_buffer: usize,
    pub(crate) prefetch: u16,
    pub(crate) message_id_prefix: Option<String>,
}

/// The URI `AmqpConfig::from_env` connects to without `{prefix}_AMQP_URI`.
const DEFAULT_URI: &str = "amqp://127.0.0.1:5672/%2f";

impl AmqpConfig {
    /// A configuration for `uri` (`amqp://user:pass@host:port/vhost`, or
    /// `amqps://` for TLS), with the defaults: heartbeat 20 s, connect
    /// timeout 10 s, graceful close 1 s, replay policy
    /// [`ReplayPolicy::Retry`].
    ///
    /// The URI's `heartbeat`, `frame_max` and `channel_max` query
    /// parameters are respected: they are the proposals unless the
    /// matching setter says otherwise, and a setter that contradicts the
    /// URI is [`AmqpConfigError::UriConflict`], never a silent override.
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
            heartbeat: None,
            tls: OwnedTLSConfig::default(),
            frame_max: None,
            channel_max: None,
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(1),
            replay_policy: ReplayPolicy::Retry,
            consumer_buffer: 256,
            prefetch: DEFAULT_PREFETCH,
            message_id_prefix: None,
        }
    }

    /// The connection name shown by the broker (`rabbitmqctl list_connections name`).
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }
    /// The heartbeat proposal (default: the URI's `heartbeat`, else 20 s).
    pub fn heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = Some(heartbeat);
        self
    }
    /// TLS options for `amqps://`: a CA chain in PEM, a client identity.
    /// With an `amqp://` URI they are a configuration error
    /// ([`AmqpConfigError::TlsWithoutAmqps`]), never silently ignored.
    pub fn tls(mut self, tls: OwnedTLSConfig) -> Self {
        self.tls = tls;
        self
    }
    /// The largest frame redial proposes (default: the URI's `frame_max`,
    /// else [`DEFAULT_FRAME_MAX`], RabbitMQ's own default; the smaller of
    /// the two proposals wins).
    pub fn frame_max(mut self, bytes: u32) -> Self {
        self.frame_max = Some(bytes);
        self
    }
    /// The most channels redial proposes (default: the URI's
    /// `channel_max`, else the broker's).
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
    /// The heartbeat proposal: the one set, else the first URI's
    /// `heartbeat`, else [`Heartbeat::DEFAULT`].
    pub fn heartbeat_proposal(&self) -> Heartbeat {
        self.heartbeat
            .or_else(|| {
                let uri: AMQPUri = self.uri().parse().ok()?;
                uri.query.heartbeat.map(Heartbeat::secs)
            })
            .unwrap_or(Heartbeat::DEFAULT)
    }
    /// The replay policy.
    pub fn policy(&self) -> ReplayPolicy {
        self.replay_policy
    }

    /// The engine configuration recommended for this AMQP configuration, as
    /// a builder to set the engine's own settings on (backoff, stable
    /// period, blocked timeout; the same shape as
    /// [`MqttConfig::engine_config`](crate::mqtt::MqttConfig::engine_config)):
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
    /// * `probe_interval` = [`crate::runtime::DEFAULT_PROBE_INTERVAL`]: a
    ///   probe is a TCP connect and the AMQP protocol header, answered by
    ///   the broker's `connection.start`, so the engine is back within one
    ///   interval of the broker's return without a full handshake per check
    ///   (`no_probe_interval()` turns them off).
    /// * `endpoints` = the number of URIs; `close_timeout` = twice the
    ///   adapter's, at least 1 s.
    ///
    /// A blocked timeout set on the builder must be at least twice the
    /// liveness timeout (`build` checks it).
    pub fn engine_config(&self) -> ConfigBuilder {
        self.engine_config_for(self.heartbeat_proposal().as_duration())
    }

    /// [`AmqpConfig::engine_config`] with the liveness timeout set to a
    /// known negotiated heartbeat timeout (`None`: disabled).
    pub fn engine_config_for(&self, heartbeat: Option<Duration>) -> ConfigBuilder {
        let builder = Config::builder()
            .connect_timeout(self.connect_timeout.saturating_add(REPLAY_ALLOWANCE))
            .probe_interval(crate::runtime::DEFAULT_PROBE_INTERVAL)
            .endpoints(self.uris.len().max(1))
            .close_timeout(
                self.close_timeout
                    .saturating_mul(2)
                    .max(Duration::from_secs(1)),
            );
        match heartbeat {
            Some(h) => builder.liveness_timeout(h),
            None => builder.no_liveness_timeout(),
        }
    }

    /// Checks every setting without connecting: the URIs parse, agree with
    /// each other and with the setters, TLS settings have `amqps://`, and
    /// the engine configuration [`AmqpConfig::engine_config`] builds.
    /// [`crate::amqp::AmqpTransport::new`] runs the same checks.
    ///
    /// # Errors
    /// The [`AmqpConfigError`] of the first setting that cannot work.
    pub fn validate(&self) -> Result<(), AmqpConfigError> {
        let mut uris = self
            .uris
            .iter()
            .enumerate()
            .map(|(index, uri)| {
                uri.parse::<AMQPUri>()
                    .map_err(|reason| AmqpConfigError::InvalidUri { index, reason })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.check(&mut uris)
    }

    /// Sets the negotiated parameters on the parsed URIs (the URIs' own
    /// values unless a setter chose one, which they must not contradict),
    /// then checks what the engine configuration does not: TLS settings
    /// need `amqps://`, the consumer buffer fits a channel; and every
    /// duration, as the engine would.
    pub(crate) fn check(&self, uris: &mut [AMQPUri]) -> Result<(), AmqpConfigError> {
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
        let heartbeat = self.heartbeat.map(Heartbeat::proposal);
        let heartbeat = resolve(uris, "heartbeat", heartbeat, |q| &mut q.heartbeat)?
            .unwrap_or(Heartbeat::DEFAULT.proposal());
        let frame_max = resolve(uris, "frame_max", self.frame_max, |q| &mut q.frame_max)?
            .unwrap_or(DEFAULT_FRAME_MAX);
        let channel_max = resolve(uris, "channel_max", self.channel_max, |q| {
            &mut q.channel_max
        })?;
        for uri in uris.iter_mut() {
            uri.query.heartbeat = Some(heartbeat);
            uri.query.frame_max = Some(frame_max);
            uri.query.channel_max = channel_max;
        }
        let max = tokio::sync::Semaphore::MAX_PERMITS;
        if self.consumer_buffer > max {
            return Err(AmqpConfigError::ConsumerBuffer {
                got: self.consumer_buffer,
                max,
            });
        }
        self.engine_config().build()?;
        Ok(())
    }

    /// A configuration read from the environment with the prefix `REDIAL`
    /// (`REDIAL_AMQP_URI`, `REDIAL_AMQP_HEARTBEAT`, ...; see
    /// [`AmqpConfig::apply_env`]), connecting to
    /// `amqp://127.0.0.1:5672/%2f` when `REDIAL_AMQP_URI` is unset. The
    /// engine's variables (`REDIAL_BACKOFF_*`, `REDIAL_BLOCKED_TIMEOUT`,
    /// `REDIAL_STABLE_PERIOD`, ...) are read by
    /// [`ConfigBuilder::apply_env`]:
    /// `config.engine_config().apply_env("REDIAL")?.build()?`.
    ///
    /// # Errors
    /// [`EnvError`] names the variable that does not parse.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::new(DEFAULT_URI).apply_env("REDIAL")
    }

    /// Overrides settings from the process environment, `{prefix}_AMQP_*`
    /// variables, for deployments that tune these per site:
    ///
    /// | variable | meaning |
    /// |----------|---------|
    /// | `{prefix}_AMQP_URI` | broker URI (`amqp://` or `amqps://`), replacing the endpoints |
    /// | `{prefix}_AMQP_HEARTBEAT` | heartbeat proposal: seconds or a duration (`20`, `20s`); `0` or `off` proposes none |
    /// | `{prefix}_AMQP_CONNECTION_NAME` | connection name |
    /// | `{prefix}_AMQP_CONNECT_TIMEOUT` | handshake timeout, and per replay answer |
    /// | `{prefix}_AMQP_CLOSE_TIMEOUT` | graceful close |
    /// | `{prefix}_AMQP_FRAME_MAX` | frame size proposal, bytes |
    /// | `{prefix}_AMQP_CHANNEL_MAX` | channel count proposal |
    /// | `{prefix}_AMQP_PREFETCH` | per-consumer prefetch |
    /// | `{prefix}_AMQP_CONSUMER_BUFFER` | deliveries a consumer stream buffers |
    /// | `{prefix}_AMQP_REPLAY_POLICY` | `retry`, `skip` or `fail` |
    ///
    /// Durations are in `humantime` form (`250ms`, `1m30s`); a bare number
    /// is seconds. Unset or empty variables change nothing; the values are
    /// checked by [`AmqpConfig::validate`] and the transport.
    ///
    /// # Errors
    /// [`EnvError`] names the variable that does not parse.
    pub fn apply_env(self, prefix: &str) -> Result<Self, EnvError> {
        self.apply_env_with(prefix, crate::env::process)
    }

    /// [`AmqpConfig::apply_env`] over any lookup (testable without touching
    /// the process environment).
    ///
    /// # Errors
    /// As [`AmqpConfig::apply_env`].
    pub fn apply_env_with(
        mut self,
        prefix: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, EnvError> {
        let vars = Vars::new(prefix, &lookup);
        if let Some(uri) = vars.string("AMQP_URI") {
            self.uris = vec![uri];
        }
        if let Some(h) = vars.with("AMQP_HEARTBEAT", HEARTBEAT, |v| v.parse().ok())? {
            self.heartbeat = Some(h);
        }
        if let Some(name) = vars.string("AMQP_CONNECTION_NAME") {
            self.connection_name = Some(name);
        }
        if let Some(d) = vars.duration("AMQP_CONNECT_TIMEOUT")? {
            self.connect_timeout = d;
        }
        if let Some(d) = vars.duration("AMQP_CLOSE_TIMEOUT")? {
            self.close_timeout = d;
        }
        if let Some(v) = vars.parse("AMQP_FRAME_MAX", "a whole number of bytes")? {
            self.frame_max = Some(v);
        }
        if let Some(v) = vars.parse("AMQP_CHANNEL_MAX", "a whole number, 0..=65535")? {
            self.channel_max = Some(v);
        }
        if let Some(v) = vars.parse("AMQP_PREFETCH", "a whole number, 0..=65535")? {
            self.prefetch = v;
        }
        if let Some(v) = vars.parse::<usize>("AMQP_CONSUMER_BUFFER", "a whole number")? {
            self.consumer_buffer = v.max(1);
        }
        if let Some(v) = vars.with("AMQP_REPLAY_POLICY", "retry, skip or fail", |v| {
            v.parse().ok()
        })? {
            self.replay_policy = v;
        }
        Ok(self)
    }
}

/// What a heartbeat variable must look like.
const HEARTBEAT: &str = "seconds or a whole-second duration up to 65535s (20, 20s), or off";

/// The value of one negotiated parameter: the setter's, which no URI may
/// contradict; else the URIs', which must agree; else none.
fn resolve<T: Copy + PartialEq + Into<u64>>(
    uris: &mut [AMQPUri],
    parameter: &'static str,
    configured: Option<T>,
    field: impl Fn(&mut lapin::uri::AMQPQueryString) -> &mut Option<T>,
) -> Result<Option<T>, AmqpConfigError> {
    let in_uris: Vec<Option<T>> = uris.iter_mut().map(|u| *field(&mut u.query)).collect();
    if let Some(configured) = configured {
        let conflict = in_uris
            .iter()
            .enumerate()
            .find_map(|(index, v)| v.filter(|v| *v != configured).map(|v| (index, v)));
        return match conflict {
            Some((index, in_uri)) => Err(AmqpConfigError::UriConflict {
                index,
                parameter,
                in_uri: in_uri.into(),
                configured: configured.into(),
            }),
            None => Ok(Some(configured)),
        };
    }
    let first = in_uris.first().copied().flatten();
    match in_uris.iter().position(|v| *v != first) {
        Some(index) => Err(AmqpConfigError::MixedEndpoints {
            index,
            what: parameter,
        }),
        None => Ok(first),
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
            .field("replay_policy", &self.replay_policy)
            .field("consumer_buffer", &self.consumer_buffer)
            .field("message_id_prefix", &self.message_id_prefix)
            .finish()
    }
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
        let e = c.engine_config().build().unwrap();
        assert_eq!(e.liveness_timeout(), Some(Duration::from_secs(5)));
        assert_eq!(
            e.connect_timeout(),
            Some(Duration::from_secs(10) + REPLAY_ALLOWANCE)
        );
        assert_eq!(
            e.probe_interval(),
            Some(crate::runtime::DEFAULT_PROBE_INTERVAL)
        );
        let off = AmqpConfig::new("amqp://x").heartbeat(Heartbeat::Disabled);
        assert_eq!(
            off.engine_config().build().unwrap().liveness_timeout(),
            None
        );
        // 001's rule: a blocked timeout below 2 x H is rejected.
        let bad = AmqpConfig::new("amqp://x")
            .heartbeat(Heartbeat::secs(60))
            .engine_config()
            .blocked_timeout(Duration::from_secs(90))
            .build();
        assert!(matches!(
            bad,
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
    fn apply_env_reads_every_documented_variable() {
        let c = AmqpConfig::new("amqp://unused")
            .apply_env_with(
                "REDIAL",
                env(&[
                    ("REDIAL_AMQP_URI", "amqp://u:p@10.0.0.1:5673/v"),
                    ("REDIAL_AMQP_HEARTBEAT", "7"),
                    ("REDIAL_AMQP_CONNECTION_NAME", "svc"),
                    ("REDIAL_AMQP_CONNECT_TIMEOUT", "2500ms"),
                    ("REDIAL_AMQP_CLOSE_TIMEOUT", "1m30s"),
                    ("REDIAL_AMQP_FRAME_MAX", "65536"),
                    ("REDIAL_AMQP_CHANNEL_MAX", "64"),
                    ("REDIAL_AMQP_PREFETCH", "10"),
                    ("REDIAL_AMQP_CONSUMER_BUFFER", "32"),
                    ("REDIAL_AMQP_REPLAY_POLICY", "skip"),
                ]),
            )
            .unwrap();
        assert_eq!(c.uri(), "amqp://u:p@10.0.0.1:5673/v");
        assert_eq!(c.heartbeat_proposal(), Heartbeat::secs(7));
        assert_eq!(c.connection_name.as_deref(), Some("svc"));
        assert_eq!(c.connect_timeout, Duration::from_millis(2500));
        assert_eq!(c.close_timeout, Duration::from_secs(90));
        assert_eq!(c.frame_max, Some(65_536));
        assert_eq!(c.channel_max, Some(64));
        assert_eq!(c.prefetch, 10);
        assert_eq!(c.consumer_buffer, 32);
        assert_eq!(c.replay_policy, ReplayPolicy::Skip);
        let e = c.engine_config().build().unwrap();
        assert_eq!(e.liveness_timeout(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn apply_env_defaults_and_errors() {
        let c = AmqpConfig::new(DEFAULT_URI)
            .apply_env_with("REDIAL", env(&[]))
            .unwrap();
        assert_eq!(c.uri(), "amqp://127.0.0.1:5672/%2f");
        assert_eq!(c.heartbeat_proposal(), Heartbeat::DEFAULT);
        let with =
            |pairs: &[(&str, &str)]| AmqpConfig::new("amqp://x").apply_env_with("APP", env(pairs));
        assert_eq!(
            with(&[("APP_AMQP_HEARTBEAT", "0")])
                .unwrap()
                .heartbeat_proposal(),
            Heartbeat::Disabled
        );
        assert_eq!(
            with(&[("APP_AMQP_HEARTBEAT", "1m")])
                .unwrap()
                .heartbeat_proposal(),
            Heartbeat::secs(60)
        );
        let e = with(&[("APP_AMQP_HEARTBEAT", "soon")]).unwrap_err();
        assert_eq!(e.variable, "APP_AMQP_HEARTBEAT");
        let e = with(&[("APP_AMQP_HEARTBEAT", "1.5s")]).unwrap_err();
        assert_eq!(e.variable, "APP_AMQP_HEARTBEAT");
        let e = with(&[("APP_AMQP_CONNECT_TIMEOUT", "-1s")]).unwrap_err();
        assert_eq!(e.variable, "APP_AMQP_CONNECT_TIMEOUT");
        let e = with(&[("APP_AMQP_REPLAY_POLICY", "ignore")]).unwrap_err();
        assert_eq!(e.variable, "APP_AMQP_REPLAY_POLICY");
        // Another prefix's variables are not read.
        assert_eq!(
            with(&[("REDIAL_AMQP_HEARTBEAT", "0")])
                .unwrap()
                .heartbeat_proposal(),
            Heartbeat::DEFAULT
        );
    }

    fn checked(config: &AmqpConfig) -> Result<Vec<AMQPUri>, AmqpConfigError> {
        let mut uris: Vec<AMQPUri> = config.uris.iter().map(|u| u.parse().unwrap()).collect();
        config.check(&mut uris)?;
        Ok(uris)
    }

    /// Finding: `?heartbeat=` in a URI was silently replaced by the default.
    #[test]
    fn uri_parameters_are_respected_or_a_conflict() {
        let uri = "amqp://127.0.0.1/%2f?heartbeat=7&frame_max=8192&channel_max=9";
        let c = AmqpConfig::new(uri);
        assert_eq!(c.heartbeat_proposal(), Heartbeat::secs(7));
        let q = &checked(&c).unwrap()[0].query;
        assert_eq!(
            (q.heartbeat, q.frame_max, q.channel_max),
            (Some(7), Some(8192), Some(9))
        );
        // Agreeing with the URI is fine; contradicting it is an error.
        assert!(checked(&c.clone().heartbeat(Heartbeat::secs(7))).is_ok());
        assert_eq!(
            checked(&c.clone().heartbeat(Heartbeat::secs(30))).unwrap_err(),
            AmqpConfigError::UriConflict {
                index: 0,
                parameter: "heartbeat",
                in_uri: 7,
                configured: 30
            }
        );
        // Without query parameters, the setters and the defaults apply.
        let q =
            &checked(&AmqpConfig::new("amqp://h").heartbeat(Heartbeat::Disabled)).unwrap()[0].query;
        assert_eq!(
            (q.heartbeat, q.frame_max, q.channel_max),
            (Some(0), Some(DEFAULT_FRAME_MAX), None)
        );
        // The nodes of a cluster agree on them.
        let mixed = AmqpConfig::cluster(["amqp://a/%2f?heartbeat=7", "amqp://b/%2f"]);
        assert_eq!(
            checked(&mixed).unwrap_err(),
            AmqpConfigError::MixedEndpoints {
                index: 1,
                what: "heartbeat"
            }
        );
    }
}
