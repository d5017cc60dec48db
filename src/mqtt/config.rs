//! What one MQTT client is: broker address, identity, session and timing.

use crate::mqtt::MqttError;

/// An endpoint index past the broker list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoSuchBroker {
    endpoint: usize,
    endpoints: usize,
}

impl From<NoSuchBroker> for MqttError {
    fn from(e: NoSuchBroker) -> Self {
        MqttError::NoSuchEndpoint {
            endpoint: e.endpoint,
            endpoints: e.endpoints,
        }
    }
}
use std::fmt;
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, NetworkOptions, QoS, TlsConfiguration, Transport};

use crate::backoff::MAX_DELAY_MS;
pub use crate::env::EnvError;
use crate::env::Vars;
use crate::machine::ConfigBuilder;
use crate::redact::Redacted;

/// What `{prefix}_MQTT_URL` must look like.
const URL: &str = "an mqtt:// or mqtts:// URL such as mqtt://user:pass@host:1883?client_id=id";

mod broker_url;
#[cfg(feature = "serde")]
mod raw;

/// What the engine's connect timeout adds to rumqttc's (subscription restore).
const ENGINE_CONNECT_SLACK: Duration = Duration::from_secs(5);

/// The largest MQTT 3.1.1 packet: a 268 435 455-byte remaining length plus
/// its fixed header.
const MAX_MQTT_PACKET: usize = 268_435_460;

/// The largest `connect_timeout`: the engine's timeout (this plus 5 s) must
/// stay within the engine's 2^30 ms limit.
const MAX_CONNECT_TIMEOUT: Duration =
    Duration::from_millis(MAX_DELAY_MS - ENGINE_CONNECT_SLACK.as_millis() as u64);

/// When the recorded subscriptions are sent again on a new link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RestorePolicy {
    /// When the broker kept no session for us (CONNACK `session_present =
    /// false`), every recorded filter is subscribed again; when it kept one,
    /// only the filters it never acknowledged (and pending unsubscribes) are
    /// sent, so nothing is subscribed twice. The default.
    #[default]
    WhenSessionAbsent,
    /// Every recorded filter is subscribed again on every link, whatever
    /// the broker kept (for brokers that lose sessions without saying so).
    Always,
}

impl std::str::FromStr for RestorePolicy {
    type Err = &'static str;
    /// `when_session_absent` or `always`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "when_session_absent" => Ok(Self::WhenSessionAbsent),
            "always" => Ok(Self::Always),
            _ => Err("when_session_absent or always"),
        }
    }
}

/// A configuration that cannot work, rejected by [`MqttConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MqttConfigError {
    /// MQTT keep-alive is a whole number of seconds.
    #[error("keep_alive must be 0 (off) or a whole number of seconds in 2..=65535, got {0:?}")]
    KeepAlive(Duration),
    /// A persistent session needs a client id to find it again.
    #[error("a persistent session (clean_session = false) needs a non-empty client id")]
    PersistentWithoutClientId,
    /// The in-flight window is at least one message.
    #[error("max_inflight must be at least 1")]
    ZeroInflight,
    /// More brokers than the engine can choose among.
    #[error("at most {max} brokers, got {0}", max = crate::machine::MAX_ENDPOINTS)]
    TooManyBrokers(usize),
    /// The rumqttc connection timeout is counted in whole seconds, and the
    /// engine's (this plus 5 s) is at most 2^30 ms.
    #[error("connect_timeout must be between 1 s and {MAX_CONNECT_TIMEOUT:?}, got {0:?}")]
    ConnectTimeout(Duration),
    /// A packet holds at least its fixed header and at most what MQTT 3.1.1
    /// can encode.
    #[error("max_packet_size must be within 1..={MAX_MQTT_PACKET} bytes, got {0}")]
    MaxPacketSize(usize),
    /// The disconnect timeout is at most 2^30 ms, like every engine timer.
    #[error("disconnect_timeout must be at most {MAX_DELAY_MS} ms, got {0:?}")]
    DisconnectTimeout(Duration),
    /// A last-will topic must be a valid topic name (no wildcards).
    #[error("invalid last-will topic {0:?}")]
    WillTopic(String),
    /// The inbound buffer holds at least one message.
    #[error("inbound_capacity must be at least 1")]
    ZeroInboundCapacity,
    /// A URL that does not parse.
    #[error("invalid MQTT URL")]
    InvalidUrl(#[source] ::url::ParseError),
    /// A URL that parses but is not a broker address redial takes.
    #[error("unsupported MQTT URL: {reason}")]
    UnsupportedUrl {
        /// What is wrong with it.
        reason: UrlProblem,
    },
    /// An `mqtts://` URL without TLS settings: the link would otherwise
    /// connect in plain text.
    #[error("an mqtts:// URL needs TLS settings (MqttConfig::tls)")]
    TlsRequired,
}

/// Why a broker URL is not one redial takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlProblem {
    /// The scheme is neither `mqtt` nor `mqtts`.
    #[error("scheme {0:?} is neither mqtt nor mqtts")]
    Scheme(String),
    /// No host.
    #[error("no host")]
    NoHost,
    /// A path other than `/` (MQTT over TCP has none).
    #[error("a path ({0:?}); MQTT over TCP has none")]
    Path(String),
    /// A query parameter other than `client_id`.
    #[error("unknown query parameter {0:?}; only client_id is read")]
    Parameter(String),
}

/// How to reach and identify to one MQTT broker (MQTT 3.1.1).
///
/// Its `Debug` output shows `***` in place of the password and the TLS
/// client key (or PKCS#12 identity and its password).
///
/// ```
/// use std::time::Duration;
/// use redial::mqtt::MqttConfig;
///
/// let config = MqttConfig::new("127.0.0.1", 1883, "sensor-17")
///     .credentials("user", "secret")
///     .keep_alive(Duration::from_secs(5))
///     .clean_session(true);
/// // A redial configuration whose watchdog matches the keep-alive.
/// let engine = config.engine_config().build().unwrap();
/// assert_eq!(engine.liveness_timeout(), Some(Duration::from_secs(5)));
/// ```
///
/// Setters take plain values and return the configuration (it is its own
/// builder, checked by [`MqttConfig::validate`] and when the transport is
/// built); the engine's settings are set on the builder
/// [`MqttConfig::engine_config`] returns. [`MqttConfig::from_url`] reads an
/// `mqtt://` URL, [`MqttConfig::apply_env`] `{prefix}_MQTT_*` variables;
/// with the `serde` feature it deserializes from an object (see
/// docs/configuration.md), checked by [`MqttConfig::validate`]; TLS and the
/// last will are set in code.
#[derive(Clone)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "raw::RawMqttConfig"))]
pub struct MqttConfig {
    /// The brokers (host, port), at least one.
    pub(crate) brokers: Vec<(String, u16)>,
    pub(crate) client_id: String,
    pub(crate) credentials: Option<(String, String)>,
    pub(crate) tls: Option<TlsConfiguration>,
    pub(crate) keep_alive: Duration,
    pub(crate) clean_session: bool,
    pub(crate) last_will: Option<LastWill>,
    pub(crate) restore: RestorePolicy,
    pub(crate) max_inflight: u16,
    pub(crate) request_capacity: usize,
    pub(crate) max_packet_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) disconnect_timeout: Duration,
    pub(crate) inbound_capacity: usize,
    /// From an `mqtts://` URL: TLS settings must be given.
    pub(crate) tls_required: bool,
}

impl MqttConfig {
    /// A client `client_id` for the broker at `host:port`, with the
    /// defaults: no credentials, plain TCP, 30 s keep-alive, clean session,
    /// no last will, 100 messages in flight, 1 MiB packets, 10 s connect
    /// timeout.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        Self {
            brokers: vec![(host.into(), port)],
            client_id: client_id.into(),
            credentials: None,
            tls: None,
            keep_alive: Duration::from_secs(30),
            clean_session: true,
            last_will: None,
            restore: RestorePolicy::default(),
            max_inflight: 100,
            request_capacity: 64,
            max_packet_size: 1 << 20,
            connect_timeout: Duration::from_secs(10),
            disconnect_timeout: Duration::from_millis(500),
            inbound_capacity: 100,
            tls_required: false,
        }
    }

    /// A client for the broker of an `mqtt://` or `mqtts://` URL:
    /// `mqtt://user:password@host:port?client_id=sensor-17`. The port
    /// defaults to 1883 (`mqtts`: 8883); credentials are percent-decoded;
    /// the client id is empty when the URL has none (the broker assigns
    /// one to a clean session). `mqtts://` needs TLS settings
    /// ([`MqttConfig::tls`]): without them [`MqttConfig::validate`] fails
    /// with [`MqttConfigError::TlsRequired`], never a plain-text link.
    /// Otherwise the defaults of [`MqttConfig::new`].
    ///
    /// ```
    /// use redial::mqtt::MqttConfig;
    ///
    /// let config = MqttConfig::from_url("mqtt://svc:s%40cret@10.0.0.7?client_id=sensor-17")?;
    /// assert_eq!(config.brokers(), &[("10.0.0.7".to_owned(), 1883)]);
    /// assert_eq!(config.client_id(), "sensor-17");
    /// # Ok::<(), redial::mqtt::MqttConfigError>(())
    /// ```
    ///
    /// # Errors
    /// [`MqttConfigError::InvalidUrl`] when it does not parse,
    /// [`MqttConfigError::UnsupportedUrl`] for another scheme, no host, a
    /// path, or an unknown query parameter.
    pub fn from_url(url: &str) -> Result<Self, MqttConfigError> {
        let parts = broker_url::parse(url)?;
        let mut config = Self::new(parts.host, parts.port, parts.client_id);
        config.credentials = parts.credentials;
        config.tls_required = parts.tls;
        Ok(config)
    }

    /// Adds a broker of the same failover group: the engine shuffles the
    /// brokers once (so a fleet spreads over them), returns to the broker
    /// of a lost link first, and tries the next one at once when one fails
    /// (docs/clusters.md). Subscriptions are restored on whichever broker a
    /// link reaches; a persistent session lives on one broker, so a
    /// failover starts a new one there (`session_present` false).
    pub fn failover(mut self, host: impl Into<String>, port: u16) -> Self {
        self.brokers.push((host.into(), port));
        self
    }

    /// The brokers, in the order given (the engine's
    /// [`crate::runtime::OpenContext::endpoint`] indexes this list).
    pub fn brokers(&self) -> &[(String, u16)] {
        &self.brokers
    }

    /// Username and password sent in CONNECT.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((username.into(), password.into()));
        self
    }

    /// Connect over TLS (rumqttc's configuration: a CA and optional client
    /// certificate, or a whole rustls `ClientConfig`).
    pub fn tls(mut self, tls: TlsConfiguration) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The MQTT keep-alive sent in CONNECT (whole seconds, at least 2, or
    /// zero to turn keep-alive off). Default 30 s.
    ///
    /// The adapter pings every half keep-alive after CONNACK, so that an
    /// idle healthy link always shows inbound traffic well inside the
    /// watchdog's window; see [`MqttConfig::engine_config`].
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// Clean session (default `true`): the broker forgets our session at
    /// every disconnect. With `false` the broker keeps subscriptions and
    /// queued messages across links (needs a client id).
    pub fn clean_session(mut self, clean: bool) -> Self {
        self.clean_session = clean;
        self
    }

    /// A last will the broker publishes when the link dies without a
    /// DISCONNECT (not when the engine closes a link it replaces, nor at
    /// shutdown: both send DISCONNECT).
    pub fn last_will(
        mut self,
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        qos: QoS,
        retain: bool,
    ) -> Self {
        self.last_will = Some(LastWill::new(topic, payload, qos, retain));
        self
    }

    /// When subscriptions are restored on a new link (default:
    /// [`RestorePolicy::WhenSessionAbsent`]).
    pub fn restore(mut self, policy: RestorePolicy) -> Self {
        self.restore = policy;
        self
    }

    /// QoS 1/2 publishes in flight on one link before rumqttc stops taking
    /// more (default 100); also the bound on duplicates after a link loss.
    pub fn max_inflight(mut self, inflight: u16) -> Self {
        self.max_inflight = inflight;
        self
    }

    /// Capacity of rumqttc's request channel (default 64).
    pub fn request_capacity(mut self, capacity: usize) -> Self {
        self.request_capacity = capacity.max(1);
        self
    }

    /// Largest packet sent or delivered (default 1 MiB). A publish larger
    /// than this is rejected before it reaches the wire: on the wire it
    /// would kill the link at every replay. A larger delivery from the
    /// broker is read, discarded and surfaced as
    /// [`InboundError::TooLarge`](crate::mqtt::InboundError::TooLarge).
    pub fn max_packet_size(mut self, bytes: usize) -> Self {
        self.max_packet_size = bytes;
        self
    }

    /// How long rumqttc may take for TCP, TLS and CONNACK, and for one
    /// flush (whole seconds, default 10 s). The engine's own connect
    /// timeout (see [`MqttConfig::engine_config`]) also bounds the whole open.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long `close` waits for a DISCONNECT to be flushed before it
    /// aborts the link's tasks anyway (default 500 ms).
    pub fn disconnect_timeout(mut self, timeout: Duration) -> Self {
        self.disconnect_timeout = timeout;
        self
    }

    /// Deliveries waiting for the application in
    /// [`Messages`](crate::mqtt::Messages) (default 100). QoS 1/2
    /// deliveries are acknowledged only when taken, so the broker stops at
    /// its own in-flight window (Mosquitto's `max_inflight_messages`,
    /// default 20) while the application is slow. Keep this at least that
    /// window: when the buffer is full the link stops reading the socket,
    /// and a link that reads nothing for a keep-alive is declared dead.
    /// QoS 0 deliveries that find it full are dropped and reported.
    pub fn inbound_capacity(mut self, capacity: usize) -> Self {
        self.inbound_capacity = capacity;
        self
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// The [`MqttConfigError`] of the first setting that cannot work.
    pub fn validate(&self) -> Result<(), MqttConfigError> {
        if self.tls_required && self.tls.is_none() {
            return Err(MqttConfigError::TlsRequired);
        }
        let k = self.keep_alive;
        if !k.is_zero() && (k.subsec_nanos() != 0 || k.as_secs() < 2 || k.as_secs() > 65_535) {
            return Err(MqttConfigError::KeepAlive(k));
        }
        if !self.clean_session && self.client_id.is_empty() {
            return Err(MqttConfigError::PersistentWithoutClientId);
        }
        if self.max_inflight == 0 {
            return Err(MqttConfigError::ZeroInflight);
        }
        if self.brokers.len() > crate::machine::MAX_ENDPOINTS {
            return Err(MqttConfigError::TooManyBrokers(self.brokers.len()));
        }
        if self.inbound_capacity == 0 {
            return Err(MqttConfigError::ZeroInboundCapacity);
        }
        if self.connect_timeout < Duration::from_secs(1)
            || self.connect_timeout > MAX_CONNECT_TIMEOUT
        {
            return Err(MqttConfigError::ConnectTimeout(self.connect_timeout));
        }
        if !(1..=MAX_MQTT_PACKET).contains(&self.max_packet_size) {
            return Err(MqttConfigError::MaxPacketSize(self.max_packet_size));
        }
        if self.disconnect_timeout > Duration::from_millis(MAX_DELAY_MS) {
            return Err(MqttConfigError::DisconnectTimeout(self.disconnect_timeout));
        }
        if let Some(will) = &self.last_will
            && !rumqttc::valid_topic(&will.topic)
        {
            return Err(MqttConfigError::WillTopic(will.topic.clone()));
        }
        Ok(())
    }

    /// The engine configuration recommended for this client, as a builder
    /// to set the engine's own settings on (backoff, stable period; the
    /// same shape as
    /// [`AmqpConfig::engine_config`](crate::amqp::AmqpConfig::engine_config)):
    ///
    /// * the liveness timeout is the keep-alive `K`. The watchdog checks
    ///   every `K/2` and declares the link dead after two silent checks in
    ///   a row, so a half-open link is declared dead between `K` and `1.5 K`
    ///   after the last inbound packet. The adapter pings every `K/2`, so a
    ///   healthy idle link is never silent for a whole `K`. (rumqttc itself
    ///   also fails the link when a ping is unanswered at the next one,
    ///   which usually comes first: within `K` of the last inbound packet.)
    ///   With keep-alive off there is no inbound traffic to watch, so the
    ///   watchdog is off too.
    /// * the connect timeout covers TCP, TLS, CONNACK and the subscription
    ///   restore: the rumqttc timeout plus one round of slack.
    /// * probes every [`crate::runtime::DEFAULT_PROBE_INTERVAL`] once a
    ///   backoff wait is over: a TCP connect and a CONNECT the broker must
    ///   refuse at once (see docs/mqtt.md); the attempt is made as soon as
    ///   one is answered (`no_probe_interval()` turns them off).
    /// * `endpoints` = the number of brokers.
    /// * permanent refusals (bad credentials, not authorised) are not
    ///   retried: the builder's default `permanent_retries(0)`.
    pub fn engine_config(&self) -> ConfigBuilder {
        let builder = ConfigBuilder::default()
            .probe_interval(crate::runtime::DEFAULT_PROBE_INTERVAL)
            .endpoints(self.brokers.len())
            // Saturating: an unvalidated huge timeout is `build`'s error.
            .connect_timeout(self.connect_timeout.saturating_add(ENGINE_CONNECT_SLACK));
        if self.keep_alive.is_zero() {
            builder.no_liveness_timeout()
        } else {
            builder.liveness_timeout(self.keep_alive)
        }
    }

    /// Overrides settings from the process environment, `{prefix}_MQTT_*`
    /// variables:
    ///
    /// | variable | meaning |
    /// |----------|---------|
    /// | `{prefix}_MQTT_URL` | `mqtt://` or `mqtts://` URL: replaces the brokers, and sets the credentials and client id it holds |
    /// | `{prefix}_MQTT_CLIENT_ID` | client id |
    /// | `{prefix}_MQTT_KEEP_ALIVE` | keep-alive, whole seconds (`30s`); `0` or `off` turns it off |
    /// | `{prefix}_MQTT_CLEAN_SESSION` | `true` or `false` |
    /// | `{prefix}_MQTT_CONNECT_TIMEOUT` | rumqttc's connection timeout |
    /// | `{prefix}_MQTT_DISCONNECT_TIMEOUT` | how long `close` waits for DISCONNECT |
    /// | `{prefix}_MQTT_MAX_INFLIGHT` | QoS 1/2 publishes in flight |
    /// | `{prefix}_MQTT_MAX_PACKET_SIZE` | largest packet, bytes |
    /// | `{prefix}_MQTT_INBOUND_CAPACITY` | deliveries buffered for the application |
    ///
    /// Durations are in `humantime` form (`250ms`, `1m30s`); a bare number
    /// is seconds. Unset or empty variables change nothing; the values are
    /// checked by [`MqttConfig::validate`].
    ///
    /// # Errors
    /// [`EnvError`] names the variable that does not parse (a bad URL
    /// included).
    pub fn apply_env(self, prefix: &str) -> Result<Self, EnvError> {
        self.apply_env_with(prefix, crate::env::process)
    }

    /// [`MqttConfig::apply_env`] over any lookup.
    ///
    /// # Errors
    /// As [`MqttConfig::apply_env`].
    pub fn apply_env_with(
        mut self,
        prefix: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, EnvError> {
        let vars = Vars::new(prefix, &lookup);
        if let Some(parts) = vars.with("MQTT_URL", URL, |v| broker_url::parse(v).ok())? {
            self.brokers = vec![(parts.host, parts.port)];
            self.credentials = parts.credentials;
            self.tls_required = parts.tls;
            if !parts.client_id.is_empty() {
                self.client_id = parts.client_id;
            }
        }
        if let Some(id) = vars.string("MQTT_CLIENT_ID") {
            self.client_id = id;
        }
        if let Some(v) = vars.optional_duration("MQTT_KEEP_ALIVE")? {
            self.keep_alive = v.unwrap_or(Duration::ZERO);
        }
        if let Some(v) = vars.bool("MQTT_CLEAN_SESSION")? {
            self.clean_session = v;
        }
        for (name, slot) in [
            ("MQTT_CONNECT_TIMEOUT", &mut self.connect_timeout),
            ("MQTT_DISCONNECT_TIMEOUT", &mut self.disconnect_timeout),
        ] {
            if let Some(v) = vars.duration(name)? {
                *slot = v;
            }
        }
        if let Some(v) = vars.parse("MQTT_MAX_INFLIGHT", "a whole number, 1..=65535")? {
            self.max_inflight = v;
        }
        for (name, slot) in [
            ("MQTT_MAX_PACKET_SIZE", &mut self.max_packet_size),
            ("MQTT_INBOUND_CAPACITY", &mut self.inbound_capacity),
        ] {
            if let Some(v) = vars.parse(name, "a whole number")? {
                *slot = v;
            }
        }
        Ok(self)
    }

    /// The ping interval the adapter uses after CONNACK.
    pub(crate) fn ping_interval(&self) -> Duration {
        // Whole seconds are not needed after CONNACK; rumqttc only asks >= 1 s.
        (self.keep_alive / 2).max(Duration::from_secs(1))
    }

    /// The broker of `endpoint`; out of range only for an engine configured
    /// by hand with more endpoints than brokers.
    pub(crate) fn broker(&self, endpoint: usize) -> Result<(&str, u16), NoSuchBroker> {
        let (host, port) = self.brokers.get(endpoint).ok_or(NoSuchBroker {
            endpoint,
            endpoints: self.brokers.len(),
        })?;
        Ok((host, *port))
    }

    /// The rumqttc options for one link to broker `endpoint`.
    pub(crate) fn mqtt_options(&self, endpoint: usize) -> Result<MqttOptions, NoSuchBroker> {
        let (host, port) = self.broker(endpoint)?;
        let mut o = MqttOptions::new(self.client_id.clone(), host, port);
        o.set_keep_alive(self.keep_alive)
            .set_clean_session(self.clean_session)
            .set_inflight(self.max_inflight)
            .set_request_channel_capacity(self.request_capacity)
            // Inbound packets are read whatever their size and measured by
            // the link: rumqttc's limit would kill the link at every
            // redelivery of one oversized message.
            .set_max_packet_size(MAX_MQTT_PACKET, self.max_packet_size)
            // Acknowledged when the application takes them (`Messages`).
            .set_manual_acks(true);
        if let Some((user, password)) = &self.credentials {
            o.set_credentials(user.clone(), password.clone());
        }
        if let Some(will) = &self.last_will {
            o.set_last_will(will.clone());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::Tls(tls.clone()));
        }
        Ok(o)
    }

    pub(crate) fn network_options(&self) -> NetworkOptions {
        let mut n = NetworkOptions::new();
        // Small publishes and acks must not wait for Nagle.
        n.set_tcp_nodelay(true);
        let secs = self.connect_timeout.as_secs_f64().ceil() as u64;
        n.set_connection_timeout(secs.max(1));
        n
    }
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credentials = self.credentials.as_ref().map(|(user, _)| (user, Redacted));
        f.debug_struct("MqttConfig")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("credentials", &credentials)
            .field("tls", &self.tls.as_ref().map(TlsDebug))
            .field("keep_alive", &self.keep_alive)
            .field("clean_session", &self.clean_session)
            .field("last_will", &self.last_will)
            .field("restore", &self.restore)
            .field("max_inflight", &self.max_inflight)
            .field("request_capacity", &self.request_capacity)
            .field("max_packet_size", &self.max_packet_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("disconnect_timeout", &self.disconnect_timeout)
            .field("inbound_capacity", &self.inbound_capacity)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

/// A TLS configuration's kind, with every client identity hidden.
struct TlsDebug<'a>(&'a TlsConfiguration);

impl fmt::Debug for TlsDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            TlsConfiguration::Simple {
                ca,
                alpn,
                client_auth,
            } => f
                .debug_struct("Simple")
                .field("ca_bytes", &ca.len())
                .field("alpn", alpn)
                .field("client_auth", &client_auth.as_ref().map(|_| Redacted))
                .finish(),
            TlsConfiguration::Rustls(_) => f.write_str("Rustls(***)"),
            // rumqttc's native-tls variants (SimpleNative holds a PKCS#12
            // identity and its password) exist when a dependent enables them.
            #[allow(unreachable_patterns)]
            _ => f.write_str("***"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let ok = MqttConfig::new("h", 1, "c");
        assert_eq!(ok.validate(), Ok(()));
        assert!(matches!(
            ok.clone()
                .keep_alive(Duration::from_millis(1500))
                .validate(),
            Err(MqttConfigError::KeepAlive(_))
        ));
        assert!(matches!(
            ok.clone().keep_alive(Duration::from_secs(1)).validate(),
            Err(MqttConfigError::KeepAlive(_))
        ));
        assert_eq!(ok.clone().keep_alive(Duration::ZERO).validate(), Ok(()));
        assert_eq!(
            ok.clone().inbound_capacity(0).validate(),
            Err(MqttConfigError::ZeroInboundCapacity)
        );
        assert_eq!(
            MqttConfig::new("h", 1, "").clean_session(false).validate(),
            Err(MqttConfigError::PersistentWithoutClientId)
        );
        assert!(matches!(
            ok.clone()
                .last_will("a/#", "x", QoS::AtMostOnce, false)
                .validate(),
            Err(MqttConfigError::WillTopic(_))
        ));
    }

    /// No silent downgrade: TLS settings always select the TLS transport
    /// (there is no scheme to contradict them).
    #[test]
    fn tls_settings_select_the_tls_transport() {
        let tls = TlsConfiguration::Simple {
            ca: Vec::new(),
            alpn: None,
            client_auth: None,
        };
        let with = MqttConfig::new("h", 1883, "c")
            .tls(tls)
            .mqtt_options(0)
            .unwrap();
        assert!(matches!(with.transport(), Transport::Tls(_)));
        let without = MqttConfig::new("h", 1883, "c").mqtt_options(0).unwrap();
        assert!(matches!(without.transport(), Transport::Tcp));
    }

    #[test]
    fn engine_config_matches_keep_alive() {
        let c = MqttConfig::new("h", 1, "c").keep_alive(Duration::from_secs(5));
        let e = c.engine_config().build().unwrap();
        assert_eq!(e.liveness_timeout(), Some(Duration::from_secs(5)));
        assert_eq!(e.permanent_retries(), 0);
        assert_eq!(c.ping_interval(), Duration::from_millis(2500));
        let off = MqttConfig::new("h", 1, "c").keep_alive(Duration::ZERO);
        assert_eq!(
            off.engine_config().build().unwrap().liveness_timeout(),
            None
        );
    }

    /// An engine configured by hand with more endpoints than brokers gets a
    /// permanent error for the missing one, never another broker.
    #[test]
    fn a_broker_out_of_range_is_a_permanent_error() {
        use crate::runtime::Classify;
        let c = MqttConfig::new("h", 1883, "c").failover("h2", 1884);
        assert!(c.mqtt_options(1).is_ok());
        let e = MqttError::from(c.mqtt_options(2).unwrap_err());
        assert!(matches!(
            e,
            MqttError::NoSuchEndpoint {
                endpoint: 2,
                endpoints: 2
            }
        ));
        assert_eq!(e.kind(), crate::machine::ErrorKind::Permanent);
    }
}
