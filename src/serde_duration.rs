//! Durations in `humantime` form (`"1m30s"`, `"250ms"`) for the configs'
//! serde support; a bare number is seconds.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de::Error};

/// One duration.
pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// One duration.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = Text::deserialize(d)?;
    text.duration()
        .ok_or_else(|| D::Error::custom(format!("{text}: expected {}", crate::env::DURATION)))
}

/// A string or a number, as a config file may spell a duration.
#[derive(Deserialize)]
#[serde(untagged)]
enum Text {
    String(String),
    Number(f64),
}

impl Text {
    fn duration(&self) -> Option<Duration> {
        match self {
            Text::String(s) => crate::env::parse_duration(s),
            Text::Number(n) => crate::env::parse_duration(&n.to_string()),
        }
    }
    fn is_off(&self) -> bool {
        matches!(self, Text::String(s) if crate::env::is_off(s))
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Text::String(s) => write!(f, "{s:?}"),
            Text::Number(n) => write!(f, "{n}"),
        }
    }
}

/// An optional duration: `null` or `"off"` is none.
pub(crate) mod option {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<Text>::deserialize(d)? else {
            return Ok(None);
        };
        if text.is_off() {
            return Ok(None);
        }
        text.duration().map(Some).ok_or_else(|| {
            D::Error::custom(format!(
                "{text}: expected {}",
                crate::env::OPTIONAL_DURATION
            ))
        })
    }
}
