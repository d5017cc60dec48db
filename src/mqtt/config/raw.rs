//! The plain shape an [`MqttConfig`] deserializes from, checked by
//! [`MqttConfig::validate`] on the way in.

use std::time::Duration;

use serde::Deserialize;

use super::{MqttConfig, MqttConfigError, RestorePolicy};
use crate::serde_text::parsed;

/// `url` is required; every other key is optional; durations in
/// `humantime` form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqttConfig {
    url: String,
    #[serde(default)]
    failover: Vec<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default, deserialize_with = "parsed")]
    keep_alive: Option<KeepAlive>,
    #[serde(default)]
    clean_session: Option<bool>,
    #[serde(default, deserialize_with = "parsed")]
    restore: Option<RestorePolicy>,
    #[serde(default)]
    max_inflight: Option<u16>,
    #[serde(default)]
    request_capacity: Option<usize>,
    #[serde(default)]
    max_packet_size: Option<usize>,
    #[serde(default, with = "crate::serde_duration::option")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "crate::serde_duration::option")]
    disconnect_timeout: Option<Duration>,
    #[serde(default)]
    inbound_capacity: Option<usize>,
}

impl TryFrom<RawMqttConfig> for MqttConfig {
    type Error = MqttConfigError;

    fn try_from(raw: RawMqttConfig) -> Result<Self, MqttConfigError> {
        let mut c = MqttConfig::from_url(&raw.url)?;
        for url in &raw.failover {
            let other = MqttConfig::from_url(url)?;
            c.brokers.extend(other.brokers);
        }
        if let Some(id) = raw.client_id {
            c.client_id = id;
        }
        if let Some(KeepAlive(k)) = raw.keep_alive {
            c.keep_alive = k;
        }
        c.clean_session = raw.clean_session.unwrap_or(c.clean_session);
        c.restore = raw.restore.unwrap_or(c.restore);
        c.max_inflight = raw.max_inflight.unwrap_or(c.max_inflight);
        if let Some(n) = raw.request_capacity {
            c = c.request_capacity(n);
        }
        c.max_packet_size = raw.max_packet_size.unwrap_or(c.max_packet_size);
        c.connect_timeout = raw.connect_timeout.unwrap_or(c.connect_timeout);
        c.disconnect_timeout = raw.disconnect_timeout.unwrap_or(c.disconnect_timeout);
        c.inbound_capacity = raw.inbound_capacity.unwrap_or(c.inbound_capacity);
        c.validate()?;
        Ok(c)
    }
}

/// A keep-alive: a duration, or `off` (zero).
struct KeepAlive(Duration);

impl std::str::FromStr for KeepAlive {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if crate::env::is_off(s) {
            return Ok(Self(Duration::ZERO));
        }
        crate::env::parse_duration(s)
            .map(Self)
            .ok_or(crate::env::OPTIONAL_DURATION)
    }
}
