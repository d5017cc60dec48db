//! Environment overrides shared by every configuration: `{PREFIX}_{NAME}`
//! variables, with a prefix the embedding library chooses (`"REDIAL"` gives
//! the historical `REDIAL_*` names), durations in `humantime` form, and an
//! error that names the variable.
//!
//! Each configuration reads its own names through its `apply_env(prefix)`
//! (and `apply_env_with(prefix, lookup)` to read from anything but the
//! process environment); the names are listed in docs/configuration.md.
//! Unset or empty variables change nothing.

use std::str::FromStr;
use std::time::Duration;

/// An environment variable that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?}: expected {expected}")]
#[non_exhaustive]
pub struct EnvError {
    /// The variable, prefix included.
    pub variable: String,
    /// Its value.
    pub value: String,
    /// What was expected.
    pub expected: &'static str,
}

/// What a duration variable must look like.
pub(crate) const DURATION: &str = "a duration such as 250ms, 30s or 1m30s";
/// What an optional duration variable must look like.
pub(crate) const OPTIONAL_DURATION: &str = "a duration such as 250ms, 30s or 1m30s, or off";

/// A duration in `humantime` form (`250ms`, `1m30s`, `2h`), or what the
/// first `REDIAL_*` parser took: a bare number of seconds (`5`, `0.5`) or
/// a decimal with one unit (`1.5s`).
pub(crate) fn parse_duration(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(d) = humantime::parse_duration(v) {
        return Some(d);
    }
    let (number, scale) = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]
        .into_iter()
        .find_map(|(unit, scale)| v.strip_suffix(unit).map(|n| (n, scale)))
        .unwrap_or((v, 1.0));
    let n: f64 = number.trim().parse().ok()?;
    (n.is_finite() && n >= 0.0)
        .then(|| Duration::try_from_secs_f64(n * scale).ok())
        .flatten()
}

/// `off`, `none` or `0`: a setting turned off.
pub(crate) fn is_off(value: &str) -> bool {
    let v = value.trim();
    v == "0" || v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("none")
}

/// The variables under one prefix, read through one lookup.
pub(crate) struct Vars<'a> {
    prefix: &'a str,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Vars<'a> {
    pub(crate) fn new(prefix: &'a str, lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { prefix, lookup }
    }

    /// The variable's full name and its value, when set and not empty.
    pub(crate) fn get(&self, name: &str) -> Option<(String, String)> {
        let variable = if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}_{name}", self.prefix)
        };
        let value = (self.lookup)(&variable).filter(|v| !v.trim().is_empty())?;
        Some((variable, value))
    }

    /// A string setting, trimmed.
    #[cfg(any(feature = "amqp", feature = "mqtt"))]
    pub(crate) fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(|(_, v)| v.trim().to_owned())
    }

    /// Parses a variable with `parse`, naming `expected` when it fails.
    pub(crate) fn with<T>(
        &self,
        name: &str,
        expected: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, EnvError> {
        let Some((variable, value)) = self.get(name) else {
            return Ok(None);
        };
        match parse(value.trim()) {
            Some(v) => Ok(Some(v)),
            None => Err(EnvError {
                variable,
                value,
                expected,
            }),
        }
    }

    /// A value of any `FromStr` type.
    pub(crate) fn parse<T: FromStr>(
        &self,
        name: &str,
        expected: &'static str,
    ) -> Result<Option<T>, EnvError> {
        self.with(name, expected, |v| v.parse().ok())
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, EnvError> {
        self.with(name, "true or false", |v| {
            match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Some(true),
                "false" | "0" | "no" | "off" => Some(false),
                _ => None,
            }
        })
    }

    /// A duration.
    pub(crate) fn duration(&self, name: &str) -> Result<Option<Duration>, EnvError> {
        self.with(name, DURATION, parse_duration)
    }

    /// A duration or `off` (`Some(None)`).
    pub(crate) fn optional_duration(
        &self,
        name: &str,
    ) -> Result<Option<Option<Duration>>, EnvError> {
        self.with(name, OPTIONAL_DURATION, |v| {
            if is_off(v) {
                Some(None)
            } else {
                parse_duration(v).map(Some)
            }
        })
    }

    /// A number or `off` (`Some(None)`).
    pub(crate) fn optional_parse<T: FromStr>(
        &self,
        name: &str,
        expected: &'static str,
    ) -> Result<Option<Option<T>>, EnvError> {
        self.with(name, expected, |v| {
            if v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("none") {
                Some(None)
            } else {
                v.parse().ok().map(Some)
            }
        })
    }
}

/// The process environment, as a lookup.
pub(crate) fn process(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_humantime_form_and_bare_seconds() {
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 2h "), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.5m"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn errors_name_the_prefixed_variable() {
        let lookup = |name: &str| (name == "APP_X").then(|| "soon".to_owned());
        let vars = Vars::new("APP", &lookup);
        let e = vars.duration("X").unwrap_err();
        assert_eq!(e.variable, "APP_X");
        assert_eq!(e.value, "soon");
        assert_eq!(vars.duration("Y"), Ok(None));
    }
}
