//! `mqtt://user:password@host:port?client_id=id` and its `mqtts://` twin.

use super::{MqttConfigError, UrlProblem};

/// What a broker URL says.
pub(super) struct Parts {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) credentials: Option<(String, String)>,
    pub(super) client_id: String,
    /// `mqtts://`.
    pub(super) tls: bool,
}

pub(super) fn parse(text: &str) -> Result<Parts, MqttConfigError> {
    let url = url::Url::parse(text.trim()).map_err(MqttConfigError::InvalidUrl)?;
    let unsupported = |reason| MqttConfigError::UnsupportedUrl { reason };
    let (tls, default_port) = match url.scheme() {
        "mqtt" => (false, 1883),
        "mqtts" => (true, 8883),
        other => return Err(unsupported(UrlProblem::Scheme(other.to_owned()))),
    };
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err(unsupported(UrlProblem::NoHost)),
    };
    if !matches!(url.path(), "" | "/") {
        return Err(unsupported(UrlProblem::Path(url.path().to_owned())));
    }
    let mut client_id = String::new();
    for (name, value) in url.query_pairs() {
        if name != "client_id" {
            return Err(unsupported(UrlProblem::Parameter(name.into_owned())));
        }
        client_id = value.into_owned();
    }
    let credentials = (!url.username().is_empty() || url.password().is_some()).then(|| {
        (
            percent_decode(url.username()),
            percent_decode(url.password().unwrap_or("")),
        )
    });
    Ok(Parts {
        host,
        port: url.port().unwrap_or(default_port),
        credentials,
        client_id,
        tls,
    })
}

/// The URL's userinfo is kept percent-encoded; CONNECT carries it decoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url() {
        let p = parse("mqtts://svc:p%40ss%2Fw@broker.example:8884/?client_id=dev%201").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.tls),
            ("broker.example", 8884, true)
        );
        assert_eq!(p.credentials, Some(("svc".into(), "p@ss/w".into())));
        assert_eq!(p.client_id, "dev 1");
    }

    #[test]
    fn defaults_and_ipv6() {
        let p = parse("mqtt://[::1]").unwrap();
        assert_eq!((p.host.as_str(), p.port, p.tls), ("::1", 1883, false));
        assert_eq!(p.credentials, None);
        assert_eq!(p.client_id, "");
        assert_eq!(parse("mqtts://h").unwrap().port, 8883);
    }

    #[test]
    fn rejected() {
        let problem = |u| match parse(u) {
            Err(MqttConfigError::UnsupportedUrl { reason }) => reason,
            _ => panic!("{u} accepted"),
        };
        assert_eq!(problem("http://h"), UrlProblem::Scheme("http".into()));
        assert_eq!(problem("mqtt://h/topic"), UrlProblem::Path("/topic".into()));
        assert_eq!(
            problem("mqtt://h?keep_alive=5"),
            UrlProblem::Parameter("keep_alive".into())
        );
        assert!(matches!(
            parse("mqtt://h:99999"),
            Err(MqttConfigError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse("not a url"),
            Err(MqttConfigError::InvalidUrl(_))
        ));
    }
}
