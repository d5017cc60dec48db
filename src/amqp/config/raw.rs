//! The plain shape an [`AmqpConfig`] deserializes from, checked by
//! [`AmqpConfig::validate`] on the way in.

use std::time::Duration;

use serde::Deserialize;

use super::{AmqpConfig, AmqpConfigError, Heartbeat, ReplayPolicy};
use crate::serde_text::parsed;

/// Every key optional except an endpoint (`uri` or `uris`); durations in
/// `humantime` form; the heartbeat as seconds or a duration (`"off"`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAmqpConfig {
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    uris: Vec<String>,
    #[serde(default)]
    connection_name: Option<String>,
    #[serde(default, deserialize_with = "parsed")]
    heartbeat: Option<Heartbeat>,
    #[serde(default)]
    frame_max: Option<u32>,
    #[serde(default)]
    channel_max: Option<u16>,
    #[serde(default, with = "crate::serde_duration::option")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "crate::serde_duration::option")]
    close_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "parsed")]
    replay_policy: Option<ReplayPolicy>,
    #[serde(default)]
    consumer_buffer: Option<usize>,
    #[serde(default)]
    prefetch: Option<u16>,
    #[serde(default)]
    message_id_prefix: Option<String>,
}

impl TryFrom<RawAmqpConfig> for AmqpConfig {
    type Error = AmqpConfigError;

    fn try_from(raw: RawAmqpConfig) -> Result<Self, AmqpConfigError> {
        let mut c = AmqpConfig::cluster(raw.uri.into_iter().chain(raw.uris));
        c.connection_name = raw.connection_name;
        c.heartbeat = raw.heartbeat;
        c.frame_max = raw.frame_max;
        c.channel_max = raw.channel_max;
        c.connect_timeout = raw.connect_timeout.unwrap_or(c.connect_timeout);
        c.close_timeout = raw.close_timeout.unwrap_or(c.close_timeout);
        c.replay_policy = raw.replay_policy.unwrap_or(c.replay_policy);
        if let Some(n) = raw.consumer_buffer {
            c = c.consumer_buffer(n);
        }
        c.prefetch = raw.prefetch.unwrap_or(c.prefetch);
        c.message_id_prefix = raw.message_id_prefix;
        c.validate()?;
        Ok(c)
    }
}
