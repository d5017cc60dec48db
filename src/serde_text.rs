//! Settings that config files spell as text (`"20s"`, `"skip"`) or as a
//! number, parsed by the setting's `FromStr`.

use std::fmt::Display;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, de::Error};

/// A string or a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Text {
    String(String),
    Integer(u64),
}

/// An optional setting parsed by its `FromStr` (`null`: unset).
pub(crate) fn parsed<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let text = match Option::<Text>::deserialize(d)? {
        None => return Ok(None),
        Some(Text::String(s)) => s,
        Some(Text::Integer(n)) => n.to_string(),
    };
    text.parse()
        .map(Some)
        .map_err(|e| D::Error::custom(format!("{text:?}: expected {e}")))
}
