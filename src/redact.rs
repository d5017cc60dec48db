//! `Debug` helpers that keep secrets (passwords, keys) out of logs.

use std::fmt;

/// Formats as `***` in place of a secret.
pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `uri` with the password of its user info replaced by `***`.
///
/// Works on the raw text, so an unparsable URI is redacted too; the last
/// `@` ends the user info, so a password holding a raw `@` stays hidden.
#[cfg(feature = "amqp")]
pub(crate) fn uri(uri: &str) -> String {
    let start = uri.find("://").map_or(0, |i| i + 3);
    let Some(at) = uri[start..].rfind('@').map(|i| start + i) else {
        return uri.to_owned();
    };
    match uri[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &uri[..start + colon], &uri[at..]),
        None => uri.to_owned(),
    }
}

#[cfg(all(test, feature = "amqp"))]
mod tests {
    #[test]
    fn uri_passwords_are_hidden() {
        assert_eq!(
            super::uri("amqp://user:s3cr@t@host:5672/%2f"),
            "amqp://user:***@host:5672/%2f"
        );
        assert_eq!(super::uri("amqps://host:5671/v"), "amqps://host:5671/v");
        assert_eq!(super::uri("amqp://user@host"), "amqp://user@host");
        assert_eq!(super::uri("u:pw@host"), "u:***@host");
    }
}
