//! `Debug` never prints a secret: passwords, client keys, PKCS#12 identities
//! and their passwords show as `***`, in `{:?}` and in `{:#?}`.

use std::fmt::Debug;

/// Formats `value` both ways; no secret appears (whitespace ignored, so a
/// pretty-printed byte list is caught too) and `***` does.
#[allow(dead_code)]
fn assert_redacted(value: &impl Debug, secrets: &[String]) {
    for out in [format!("{value:?}"), format!("{value:#?}")] {
        let squeezed: String = out.chars().filter(|c| !c.is_whitespace()).collect();
        for secret in secrets {
            let secret: String = secret.chars().filter(|c| !c.is_whitespace()).collect();
            assert!(!squeezed.contains(&secret), "{secret} leaked in {out}");
        }
        assert!(out.contains("***"), "no redaction marker in {out}");
    }
}

/// How `Debug` prints a byte vector (the leak to look for).
#[allow(dead_code)]
fn bytes(b: &[u8]) -> String {
    format!("{b:?}")
}

#[cfg(feature = "amqp")]
mod amqp {
    use super::{assert_redacted, bytes};
    use redial::amqp::lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
    use redial::amqp::{AmqpConfig, AmqpTransport};

    const URI: &str = "amqps://svc:hunter2-pw@127.0.0.1:5671/%2f";

    fn pkcs12() -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: Some(OwnedIdentity::PKCS12 {
                der: b"PKCS12-BLOB".to_vec(),
                password: "p12-unlock".into(),
            }),
            cert_chain: None,
        }
    }

    fn pkcs8() -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: Some(OwnedIdentity::PKCS8 {
                pem: b"CERT".to_vec(),
                key: b"PRIVATE-KEY".to_vec(),
            }),
            cert_chain: None,
        }
    }

    fn secrets() -> Vec<String> {
        vec![
            "hunter2-pw".into(),
            "p12-unlock".into(),
            bytes(b"PKCS12-BLOB"),
            bytes(b"PRIVATE-KEY"),
        ]
    }

    #[test]
    fn amqp_config_hides_the_password_and_the_identity() {
        for tls in [pkcs12(), pkcs8()] {
            let config = AmqpConfig::new(URI).tls(tls);
            assert_redacted(&config, &secrets());
            let out = format!("{config:?}");
            assert!(out.contains("svc:***@127.0.0.1:5671"), "{out}");
        }
        // A URI that does not parse is redacted as well.
        assert_redacted(&AmqpConfig::new("amqp://u:hunter2-pw@"), &secrets());
    }

    /// The transport printed the password twice: the URI string and the
    /// parsed `AMQPUri`.
    #[test]
    fn amqp_transport_hides_the_password_and_the_identity() {
        for tls in [pkcs12(), pkcs8()] {
            let transport = AmqpTransport::new(AmqpConfig::new(URI).tls(tls)).unwrap();
            assert_redacted(&transport, &secrets());
        }
    }
}

#[cfg(feature = "mqtt")]
mod mqtt {
    use std::sync::Arc;

    use super::{assert_redacted, bytes};
    use redial::mqtt::rumqttc::tokio_rustls::rustls::{ClientConfig, RootCertStore};
    use redial::mqtt::{MqttConfig, MqttTransport, TlsConfiguration};

    fn config(tls: TlsConfiguration) -> MqttConfig {
        MqttConfig::new("127.0.0.1", 8883, "secrets")
            .credentials("svc", "hunter2-pw")
            .tls(tls)
    }

    fn simple() -> TlsConfiguration {
        TlsConfiguration::Simple {
            ca: b"CA".to_vec(),
            alpn: None,
            client_auth: Some((b"CERT".to_vec(), b"PRIVATE-KEY".to_vec())),
        }
    }

    fn secrets() -> Vec<String> {
        vec!["hunter2-pw".into(), bytes(b"PRIVATE-KEY")]
    }

    #[test]
    fn mqtt_config_hides_the_password_and_the_client_key() {
        let c = config(simple());
        assert_redacted(&c, &secrets());
        assert!(format!("{c:?}").contains("\"svc\""), "the user name stays");
        let rustls = ClientConfig::builder()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        assert_redacted(
            &config(TlsConfiguration::Rustls(Arc::new(rustls))),
            &secrets(),
        );
    }

    /// The transport prints no credentials at all; its config redacts them.
    #[test]
    fn mqtt_transport_hides_the_password_and_the_client_key() {
        let transport = MqttTransport::new(config(simple())).unwrap();
        for out in [format!("{transport:?}"), format!("{transport:#?}")] {
            assert!(!out.contains("hunter2-pw"), "{out}");
        }
        assert_redacted(transport.config(), &secrets());
    }
}
