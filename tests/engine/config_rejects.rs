//! Configuration that cannot work is a typed error when it is built, never a
//! panic later; and TLS settings never silently fall back to plain text.

use std::time::{Duration, Instant};

use redial::machine::{Config, Input, Machine, Output, StateKind};

/// The latest `Instant` the platform can represent from `base`.
fn latest_instant(base: Instant) -> Instant {
    let (mut ok, mut too_far) = (Duration::ZERO, Duration::MAX);
    while too_far - ok > Duration::from_nanos(1) {
        let mid = ok + (too_far - ok) / 2;
        if base.checked_add(mid).is_some() {
            ok = mid;
        } else {
            too_far = mid;
        }
    }
    base + ok
}

/// A caller's clock at the platform's limit: the machine's deadlines
/// saturate instead of overflowing (`Instant + Duration` panics).
#[test]
fn machine_deadlines_saturate_at_the_latest_instant() {
    let far = latest_instant(Instant::now());
    // Just before the limit: every deadline overflows, none is due yet.
    let t = far - Duration::from_millis(1);
    let config = Config::builder()
        .seed(1)
        .blocked_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let mut m = Machine::new(config);
    // At `far` every deadline is due, so polling never runs dry: stop at Open.
    let open = |m: &mut Machine, now: Instant| {
        (0..16).find_map(|_| match m.poll(now) {
            Some(Output::Open { generation, .. }) => Some(generation),
            _ => None,
        })
    };
    m.handle(t, Input::Start);
    let generation = open(&mut m, t).expect("the first attempt opens");
    assert_eq!(
        m.poll_timeout(),
        Some(far),
        "the connect deadline saturates"
    );
    m.handle(t, Input::AttemptSucceeded { generation });
    assert_eq!(m.poll_timeout(), Some(far), "the liveness check saturates");
    m.handle(t, Input::Blocked { generation });
    assert_eq!(m.kind(), StateKind::Blocked);
    assert_eq!(
        m.poll_timeout(),
        Some(far),
        "the blocked deadline saturates"
    );
    // At the limit the due checks run (liveness lost), the backoff wait
    // saturates, and the next attempt opens.
    m.handle(far, Input::Timeout);
    assert!(open(&mut m, far).is_some(), "a new attempt opens");
    m.handle(far, Input::Shutdown);
    assert_eq!(m.kind(), StateKind::Closing);
    assert_eq!(m.poll_timeout(), Some(far), "the close deadline saturates");
}

#[cfg(feature = "mqtt")]
mod mqtt {
    use std::time::Duration;

    use redial::machine::ConfigError;
    use redial::mqtt::{MqttConfig, MqttConfigError, MqttTransport};

    fn config() -> MqttConfig {
        MqttConfig::new("127.0.0.1", 1883, "config-rejects")
    }

    /// `connect_timeout(Duration::MAX)` used to validate, then panic in
    /// `engine_config` (`connect_timeout + 5 s`).
    #[test]
    fn huge_connect_timeout_is_rejected_not_a_panic() {
        let c = config().connect_timeout(Duration::MAX);
        assert_eq!(
            c.validate(),
            Err(MqttConfigError::ConnectTimeout(Duration::MAX))
        );
        assert!(MqttTransport::new(c.clone()).is_err());
        assert!(matches!(
            c.engine_config().build(),
            Err(ConfigError::TooLarge {
                field: "connect_timeout",
                ..
            })
        ));
        // The largest accepted value still makes a valid engine config.
        let top = config().connect_timeout(Duration::from_millis((1 << 30) - 5_000));
        assert_eq!(top.validate(), Ok(()));
        assert!(top.engine_config().build().is_ok());
        assert!(
            config()
                .connect_timeout(Duration::from_millis((1 << 30) - 4_999))
                .validate()
                .is_err()
        );
    }

    /// A failover group sets the engine's endpoint count; more brokers than
    /// the machine accepts are refused by `validate`.
    #[test]
    fn failover_brokers_are_counted_and_bounded() {
        let two = config().failover("127.0.0.1", 1884);
        assert_eq!(two.brokers().len(), 2);
        assert_eq!(two.engine_config().build().unwrap().endpoints(), 2);
        let many = (0..1024).fold(config(), |c, i| c.failover("127.0.0.1", 2000 + i));
        assert_eq!(many.validate(), Err(MqttConfigError::TooManyBrokers(1025)));
        assert!(MqttTransport::new(many).is_err());
    }

    /// A zero packet size refused every publish and every CONNACK.
    #[test]
    fn packet_size_must_fit_mqtt() {
        assert_eq!(
            config().max_packet_size(0).validate(),
            Err(MqttConfigError::MaxPacketSize(0))
        );
        assert_eq!(
            config().max_packet_size(usize::MAX).validate(),
            Err(MqttConfigError::MaxPacketSize(usize::MAX))
        );
        assert_eq!(config().max_packet_size(1).validate(), Ok(()));
        assert_eq!(config().max_packet_size(268_435_460).validate(), Ok(()));
    }

    #[test]
    fn huge_disconnect_timeout_is_rejected() {
        assert_eq!(
            config().disconnect_timeout(Duration::MAX).validate(),
            Err(MqttConfigError::DisconnectTimeout(Duration::MAX))
        );
        assert_eq!(
            config().disconnect_timeout(Duration::ZERO).validate(),
            Ok(())
        );
    }
}

#[cfg(feature = "amqp")]
mod amqp {
    use std::time::Duration;

    use redial::amqp::lapin::tcp::OwnedTLSConfig;
    use redial::amqp::{AmqpConfig, AmqpConfigError, AmqpError, AmqpTransport};
    use redial::machine::{ConfigError, ErrorKind};
    use redial::runtime::Classify;

    fn config_error(config: AmqpConfig) -> AmqpConfigError {
        match AmqpTransport::new(config) {
            Err(AmqpError::Config(e)) => e,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    fn ca_only() -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: None,
            cert_chain: Some("-----BEGIN CERTIFICATE-----\n...".into()),
        }
    }

    /// Finding 8: TLS settings with `amqp://` connected in plain text,
    /// with no error and no warning.
    #[test]
    fn tls_settings_with_a_plain_uri_are_rejected() {
        let plain = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f").tls(ca_only());
        let e = config_error(plain);
        assert_eq!(e, AmqpConfigError::TlsWithoutAmqps);
        assert_eq!(AmqpError::from(e).kind(), ErrorKind::Permanent);
        // The same settings with amqps://, and amqp:// without TLS, are fine.
        let tls = AmqpConfig::new("amqps://guest:guest@127.0.0.1:5671/%2f").tls(ca_only());
        assert!(AmqpTransport::new(tls).is_ok());
        assert!(AmqpTransport::new(AmqpConfig::new("amqp://127.0.0.1:5672/%2f")).is_ok());
    }

    /// Durations are checked when the transport is built, not when a timer
    /// or the engine config first uses them.
    #[test]
    fn durations_are_checked_by_new() {
        let c = AmqpConfig::new("amqp://127.0.0.1").connect_timeout(Duration::MAX);
        assert!(matches!(
            config_error(c),
            AmqpConfigError::Engine(ConfigError::TooLarge {
                field: "connect_timeout",
                ..
            })
        ));
        let c = AmqpConfig::new("amqp://127.0.0.1").close_timeout(Duration::MAX);
        assert!(matches!(
            config_error(c),
            AmqpConfigError::Engine(ConfigError::TooLarge {
                field: "close_timeout",
                ..
            })
        ));
    }

    /// The nodes of one cluster share scheme, credentials and vhost; an
    /// empty list or more than the machine's limit is refused, not a panic.
    #[test]
    fn cluster_endpoints_are_checked_by_new() {
        let node = |port: u16| format!("amqp://app:pw@127.0.0.1:{port}/orders");
        let ok = AmqpConfig::cluster([node(5681), node(5682), node(5683)]);
        assert_eq!(ok.engine_config().build().unwrap().endpoints(), 3);
        assert!(AmqpTransport::new(ok).is_ok());
        assert_eq!(
            config_error(AmqpConfig::cluster(Vec::<String>::new())),
            AmqpConfigError::NoEndpoints
        );
        let cases = [
            ("amqps://app:pw@127.0.0.1:5682/orders", "scheme"),
            ("amqp://other:pw@127.0.0.1:5682/orders", "credentials"),
            ("amqp://app:pw@127.0.0.1:5682/billing", "vhost"),
        ];
        for (uri, what) in cases {
            assert_eq!(
                config_error(AmqpConfig::cluster([node(5681), uri.to_owned()])),
                AmqpConfigError::MixedEndpoints { index: 1, what }
            );
        }
        let too_many = AmqpConfig::cluster((0..1025).map(|_| node(5681)));
        assert!(matches!(
            config_error(too_many),
            AmqpConfigError::Engine(ConfigError::EndpointsOutOfRange { count: 1025, .. })
        ));
        assert!(matches!(
            AmqpTransport::new(AmqpConfig::cluster([node(5681), "not a uri".into()])),
            Err(AmqpError::InvalidUri { .. })
        ));
    }

    /// `consume` creates a tokio channel of this size, which panics above
    /// tokio's limit.
    #[test]
    fn consumer_buffer_must_fit_a_channel() {
        let c = AmqpConfig::new("amqp://127.0.0.1").consumer_buffer(usize::MAX);
        assert!(matches!(
            config_error(c),
            AmqpConfigError::ConsumerBuffer {
                got: usize::MAX,
                ..
            }
        ));
    }
}
