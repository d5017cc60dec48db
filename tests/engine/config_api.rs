//! The configuration API: plain setters with `no_*` twins, `to_builder`
//! round trips, the backoff builder, environment overrides under a prefix
//! the caller chooses, serde input checked like the builders, MQTT URLs,
//! and query parameters in AMQP URIs.

use std::collections::HashMap;
use std::time::Duration;

use redial::backoff::{Backoff, BackoffState, Jitter};
use redial::machine::{Config, ConfigError, RetryBudget};
use redial::outbox::{ConfirmTimeout, OutboxConfig, OutboxConfigError, OverflowPolicy};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// A lookup over fixed variables (the process environment is left alone).
fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

fn draws(policy: &Backoff, seed: u64) -> Vec<u64> {
    let mut s = BackoffState::new(policy, seed);
    (0..12).map(|_| s.next_delay_ms(policy)).collect()
}

/// The builder gives the policy the four positional arguments gave:
/// durations truncated to whole milliseconds, the presets unchanged.
#[test]
fn backoff_builder_matches_the_positional_constructor() {
    let b = Backoff::builder()
        .initial(Duration::from_micros(250_900))
        .multiplier(1.7)
        .max(Duration::from_micros(30_000_999))
        .jitter(Jitter::Proportional { fraction: 0.2 })
        .build()
        .unwrap();
    assert_eq!(b.initial(), ms(250));
    assert_eq!(b.max(), ms(30_000));
    assert_eq!(b.multiplier(), 1.7);
    assert_eq!(b.jitter(), Jitter::Proportional { fraction: 0.2 });
    assert_eq!(b.base_ms(2), 425);
    let grpc = Backoff::builder()
        .initial(ms(1_000))
        .multiplier(1.6)
        .max(ms(120_000))
        .jitter(Jitter::Proportional { fraction: 0.2 })
        .build()
        .unwrap();
    assert_eq!(grpc, Backoff::grpc());
    assert_eq!(draws(&grpc, 9), draws(&Backoff::grpc(), 9));
    assert_eq!(Backoff::builder().build().unwrap(), Backoff::default());
    // A field left out keeps the default; a bad one is the same typed error.
    assert_eq!(
        Backoff::builder().max(ms(10)).build(),
        Err(ConfigError::CapBelowInitial {
            initial_ms: 1_000,
            max_ms: 10
        })
    );
    assert_eq!(
        Backoff::builder().initial(Duration::ZERO).build(),
        Err(ConfigError::Zero {
            field: "backoff.initial"
        })
    );
}

#[test]
fn to_builder_round_trips() {
    let config = Config::builder()
        .backoff(Backoff::aws_full_jitter())
        .retry_budget(RetryBudget {
            burst: 5,
            refill: ms(700),
        })
        .max_attempts(9)
        .max_elapsed(Duration::from_secs(300))
        .no_connect_timeout()
        .liveness_timeout(Duration::from_secs(15))
        .blocked_timeout(Duration::from_secs(45))
        .resume_grace(ms(1_500))
        .probe_interval(ms(250))
        .permanent_retries(2)
        .endpoints(3)
        .build()
        .unwrap();
    assert_eq!(config.to_builder().build(), Ok(config.clone()));
    // The seed is kept: the same jitter.
    assert_eq!(config.to_builder().build().unwrap().seed(), config.seed());
    // One change, the rest as it was; every optional setting turns off.
    let changed = config
        .to_builder()
        .no_retry_budget()
        .no_max_attempts()
        .no_max_elapsed()
        .no_liveness_timeout()
        .no_blocked_timeout()
        .no_resume_grace()
        .no_probe_interval()
        .build()
        .unwrap();
    assert_eq!(changed.retry_budget(), None);
    assert_eq!(changed.max_attempts(), None);
    assert_eq!(changed.max_elapsed(), None);
    assert_eq!(changed.liveness_timeout(), None);
    assert_eq!(changed.blocked_timeout(), None);
    assert_eq!(changed.resume_grace(), None);
    assert_eq!(changed.probe_interval(), None);
    assert_eq!(changed.backoff(), config.backoff());
    assert_eq!(changed.permanent_retries(), 2);

    let outbox = OutboxConfig::builder()
        .max_messages(7)
        .overflow(OverflowPolicy::DropOldest)
        .default_ttl(Duration::from_secs(5))
        .no_publish_timeout()
        .confirm_timeout(ConfirmTimeout::Off)
        .build()
        .unwrap();
    assert_eq!(outbox.to_builder().build(), Ok(outbox));
    let again = outbox.to_builder().no_default_ttl().build().unwrap();
    assert_eq!(again.default_ttl(), None);
    assert_eq!(again.max_messages(), 7);
    let backoff = Backoff::grpc();
    assert_eq!(backoff.to_builder().build(), Ok(backoff));
}

/// Finding: `REDIAL_*` existed for AMQP only, with a fixed prefix, and its
/// duration parser rejected `1m30s`.
#[test]
fn engine_settings_from_the_environment_under_a_chosen_prefix() {
    let env = vars(&[
        ("MYLIB_BACKOFF_INITIAL", "250ms"),
        ("MYLIB_BACKOFF_MAX", "1m30s"),
        ("MYLIB_BACKOFF_MULTIPLIER", "1.5"),
        ("MYLIB_BACKOFF_JITTER", "full"),
        ("MYLIB_STABLE_PERIOD", "1m30s"),
        ("MYLIB_LIVENESS_TIMEOUT", "30s"),
        ("MYLIB_BLOCKED_TIMEOUT", "2m"),
        ("MYLIB_CONNECT_TIMEOUT", "off"),
        ("MYLIB_MAX_ATTEMPTS", "12"),
        ("MYLIB_MAX_ELAPSED", "1h"),
        ("MYLIB_RETRY_BUDGET", "2/500ms"),
        ("MYLIB_RESUME_GRACE", "3s"),
        ("MYLIB_PROBE_INTERVAL", "750ms"),
        ("MYLIB_CLOSE_TIMEOUT", "2s"),
        ("MYLIB_PERMANENT_RETRIES", "1"),
        ("MYLIB_IMMEDIATE_FIRST_RETRY", "false"),
        ("MYLIB_SEED", "42"),
        // Another prefix is not read.
        ("REDIAL_STABLE_PERIOD", "1s"),
    ]);
    let c = Config::builder()
        .apply_env_with("MYLIB", env)
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(c.backoff().initial(), ms(250));
    assert_eq!(c.backoff().max(), Duration::from_secs(90));
    assert_eq!(c.backoff().multiplier(), 1.5);
    assert_eq!(c.backoff().jitter(), Jitter::Full);
    assert_eq!(c.stable_period(), Duration::from_secs(90));
    assert_eq!(c.liveness_timeout(), Some(Duration::from_secs(30)));
    assert_eq!(c.blocked_timeout(), Some(Duration::from_secs(120)));
    assert_eq!(c.connect_timeout(), None);
    assert_eq!(c.max_attempts(), Some(12));
    assert_eq!(c.max_elapsed(), Some(Duration::from_secs(3600)));
    assert_eq!(
        c.retry_budget(),
        Some(RetryBudget {
            burst: 2,
            refill: ms(500)
        })
    );
    assert_eq!(c.resume_grace(), Some(Duration::from_secs(3)));
    assert_eq!(c.probe_interval(), Some(ms(750)));
    assert_eq!(c.close_timeout(), Duration::from_secs(2));
    assert_eq!(c.permanent_retries(), 1);
    assert!(!c.immediate_first_retry());
    assert_eq!(c.seed(), 42);

    // The historical names are the default prefix's, and a proportional
    // jitter is still a bare fraction.
    let c = Config::builder()
        .apply_env_with(
            "REDIAL",
            vars(&[
                ("REDIAL_BACKOFF_JITTER", "0.2"),
                ("REDIAL_BLOCKED_TIMEOUT", "0"),
            ]),
        )
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(c.backoff().jitter(), Jitter::Proportional { fraction: 0.2 });
    assert_eq!(c.blocked_timeout(), None);
}

#[test]
fn environment_errors_name_the_variable() {
    let bad = |name: &str, value: &str| {
        Config::builder()
            .apply_env_with("MYLIB", vars(&[(name, value)]))
            .unwrap_err()
    };
    let e = bad("MYLIB_STABLE_PERIOD", "soon");
    assert_eq!(e.variable, "MYLIB_STABLE_PERIOD");
    assert_eq!(e.value, "soon");
    assert!(e.to_string().contains("1m30s"), "{e}");
    assert_eq!(
        bad("MYLIB_RETRY_BUDGET", "3").variable,
        "MYLIB_RETRY_BUDGET"
    );
    assert_eq!(
        bad("MYLIB_BACKOFF_JITTER", "lots").variable,
        "MYLIB_BACKOFF_JITTER"
    );
    assert_eq!(bad("MYLIB_SEED", "-1").variable, "MYLIB_SEED");
    // A value that parses but cannot work is the builder's typed error.
    let config = Config::builder()
        .apply_env_with(
            "MYLIB",
            vars(&[
                ("MYLIB_LIVENESS_TIMEOUT", "60s"),
                ("MYLIB_BLOCKED_TIMEOUT", "1m30s"),
            ]),
        )
        .unwrap()
        .build();
    assert!(matches!(
        config,
        Err(ConfigError::BlockedTimeoutTooShort { .. })
    ));
}

#[test]
fn outbox_settings_from_the_environment() {
    let c = OutboxConfig::builder()
        .apply_env_with(
            "APP",
            vars(&[
                ("APP_OUTBOX_MAX_MESSAGES", "500"),
                ("APP_OUTBOX_MAX_BYTES", "1048576"),
                ("APP_OUTBOX_MAX_IN_FLIGHT", "16"),
                ("APP_OUTBOX_OVERFLOW", "wait 1m30s"),
                ("APP_OUTBOX_DEFAULT_TTL", "10m"),
                ("APP_OUTBOX_PUBLISH_TIMEOUT", "off"),
                ("APP_OUTBOX_CONFIRM_TIMEOUT", "45s"),
            ]),
        )
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(c.max_messages(), 500);
    assert_eq!(c.max_bytes(), 1 << 20);
    assert_eq!(c.max_in_flight(), 16);
    assert_eq!(
        c.overflow(),
        OverflowPolicy::Wait {
            deadline: Some(Duration::from_secs(90))
        }
    );
    assert_eq!(c.default_ttl(), Some(Duration::from_secs(600)));
    assert_eq!(c.publish_timeout(), None);
    assert_eq!(
        c.confirm_timeout(),
        ConfirmTimeout::After(Duration::from_secs(45))
    );
    let e = OutboxConfig::builder()
        .apply_env_with("APP", vars(&[("APP_OUTBOX_OVERFLOW", "drop_newest")]))
        .unwrap_err();
    assert_eq!(e.variable, "APP_OUTBOX_OVERFLOW");
    // Zero parses, and is the builder's typed error.
    let zero = OutboxConfig::builder()
        .apply_env_with("APP", vars(&[("APP_OUTBOX_MAX_IN_FLIGHT", "0")]))
        .unwrap()
        .build();
    assert_eq!(
        zero,
        Err(OutboxConfigError::Zero {
            field: "max_in_flight"
        })
    );
}

#[cfg(feature = "serde")]
mod serde {
    use super::*;
    use redial::machine::ConfigBuilder;
    use redial::outbox::OutboxConfigBuilder;

    const ENGINE: &str = r#"{
        "backoff": {"initial": "250ms", "max": "1m30s", "jitter": {"mode": "full"}},
        "stable_period": "1m30s",
        "liveness_timeout": "30s",
        "blocked_timeout": "2m",
        "connect_timeout": null,
        "resume_grace": "off",
        "retry_budget": {"burst": 2, "refill": "500ms"},
        "max_attempts": 12,
        "seed": 7
    }"#;

    #[test]
    fn engine_config_from_json() {
        let c: Config = serde_json::from_str(ENGINE).unwrap();
        assert_eq!(c.backoff().initial(), ms(250));
        assert_eq!(c.backoff().max(), Duration::from_secs(90));
        assert_eq!(
            c.backoff().multiplier(),
            2.0,
            "a key left out keeps its default"
        );
        assert_eq!(c.backoff().jitter(), Jitter::Full);
        assert_eq!(c.stable_period(), Duration::from_secs(90));
        assert_eq!(c.liveness_timeout(), Some(Duration::from_secs(30)));
        assert_eq!(c.blocked_timeout(), Some(Duration::from_secs(120)));
        assert_eq!(c.connect_timeout(), None);
        assert_eq!(c.resume_grace(), None);
        assert_eq!(c.max_attempts(), Some(12));
        assert_eq!(c.seed(), 7);
        // Serialized and read back: the same configuration.
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), c);
        // `{}` is the defaults.
        let d: Config = serde_json::from_str(r#"{"seed": 1}"#).unwrap();
        assert_eq!(d, Config::builder().seed(1).build().unwrap());
    }

    #[test]
    fn an_invalid_engine_config_is_rejected_with_the_typed_error() {
        let bad = r#"{"liveness_timeout": "60s", "blocked_timeout": "1m30s"}"#;
        let typed = serde_json::from_str::<ConfigBuilder>(bad)
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(
            typed,
            ConfigError::BlockedTimeoutTooShort {
                blocked_ms: 90_000,
                min_ms: 120_000
            }
        );
        let e = serde_json::from_str::<Config>(bad).unwrap_err();
        assert!(e.to_string().contains(&typed.to_string()), "{e}");
        // A bad backoff, a bad duration and an unknown key are errors too.
        let e = serde_json::from_str::<Config>(r#"{"backoff": {"multiplier": 0.5}}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains(&ConfigError::MultiplierBelowOne { multiplier: 0.5 }.to_string()),
            "{e}"
        );
        assert!(serde_json::from_str::<Config>(r#"{"stable_period": "soon"}"#).is_err());
        assert!(serde_json::from_str::<Config>(r#"{"stable_periodd": "1s"}"#).is_err());
    }

    #[test]
    fn outbox_config_from_json() {
        let c: OutboxConfig = serde_json::from_str(
            r#"{
                "max_messages": 500,
                "overflow": {"policy": "wait", "deadline": "1m30s"},
                "default_ttl": "10m",
                "publish_timeout": null,
                "confirm_timeout": "from_heartbeat"
            }"#,
        )
        .unwrap();
        assert_eq!(c.max_messages(), 500);
        assert_eq!(
            c.overflow(),
            OverflowPolicy::Wait {
                deadline: Some(Duration::from_secs(90))
            }
        );
        assert_eq!(c.default_ttl(), Some(Duration::from_secs(600)));
        assert_eq!(c.publish_timeout(), None);
        assert_eq!(c.confirm_timeout(), ConfirmTimeout::FromHeartbeat);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<OutboxConfig>(&json).unwrap(), c);
        let bad = r#"{"max_in_flight": 0}"#;
        let typed = serde_json::from_str::<OutboxConfigBuilder>(bad)
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(
            typed,
            OutboxConfigError::Zero {
                field: "max_in_flight"
            }
        );
        let e = serde_json::from_str::<OutboxConfig>(bad).unwrap_err();
        assert!(e.to_string().contains(&typed.to_string()), "{e}");
    }
}

#[cfg(feature = "mqtt")]
mod mqtt {
    use std::time::Duration;

    use redial::mqtt::{MqttConfig, MqttConfigError, TlsConfiguration, UrlProblem};

    #[test]
    fn config_from_a_url() {
        let c =
            MqttConfig::from_url("mqtt://svc:s%40cret@10.0.0.7:1884?client_id=sensor-17").unwrap();
        assert_eq!(c.brokers(), &[("10.0.0.7".to_owned(), 1884)]);
        assert_eq!(c.client_id(), "sensor-17");
        assert_eq!(c.validate(), Ok(()));
        let debug = format!("{c:?}");
        assert!(
            debug.contains("svc") && !debug.contains("s@cret"),
            "{debug}"
        );
        // The defaults of `new`: the port, no credentials, an empty id.
        let d = MqttConfig::from_url("mqtt://broker").unwrap();
        assert_eq!(d.brokers(), &[("broker".to_owned(), 1883)]);
        assert_eq!(d.client_id(), "");
    }

    /// `mqtts://` never falls back to plain text: without TLS settings it
    /// does not validate.
    #[test]
    fn mqtts_needs_tls_settings() {
        let c = MqttConfig::from_url("mqtts://broker?client_id=c").unwrap();
        assert_eq!(c.brokers()[0].1, 8883);
        assert_eq!(c.validate(), Err(MqttConfigError::TlsRequired));
        assert!(redial::mqtt::MqttTransport::new(c.clone()).is_err());
        let tls = TlsConfiguration::Simple {
            ca: Vec::new(),
            alpn: None,
            client_auth: None,
        };
        assert_eq!(c.tls(tls).validate(), Ok(()));
    }

    #[test]
    fn bad_urls_are_typed_errors() {
        assert!(matches!(
            MqttConfig::from_url("not a url"),
            Err(MqttConfigError::InvalidUrl(_))
        ));
        let problem = |url: &str| match MqttConfig::from_url(url) {
            Err(MqttConfigError::UnsupportedUrl { reason }) => reason,
            other => panic!("{url}: {other:?}"),
        };
        assert_eq!(problem("amqp://broker"), UrlProblem::Scheme("amqp".into()));
        assert_eq!(
            problem("mqtt://broker/a/b"),
            UrlProblem::Path("/a/b".into())
        );
        assert_eq!(
            problem("mqtt://broker?clientid=x"),
            UrlProblem::Parameter("clientid".into())
        );
    }

    #[test]
    fn mqtt_settings_from_the_environment() {
        let env = super::vars(&[
            (
                "SVC_MQTT_URL",
                "mqtt://u:p@10.1.2.3:1999?client_id=from-url",
            ),
            ("SVC_MQTT_KEEP_ALIVE", "1m30s"),
            ("SVC_MQTT_CLEAN_SESSION", "false"),
            ("SVC_MQTT_MAX_INFLIGHT", "5"),
        ]);
        let c = MqttConfig::new("h", 1, "c")
            .apply_env_with("SVC", env)
            .unwrap();
        assert_eq!(c.brokers(), &[("10.1.2.3".to_owned(), 1999)]);
        assert_eq!(c.client_id(), "from-url");
        assert_eq!(c.validate(), Ok(()));
        let engine = c.engine_config().build().unwrap();
        assert_eq!(engine.liveness_timeout(), Some(Duration::from_secs(90)));
        let e = MqttConfig::new("h", 1, "c")
            .apply_env_with("SVC", super::vars(&[("SVC_MQTT_URL", "http://h")]))
            .unwrap_err();
        assert_eq!(e.variable, "SVC_MQTT_URL");
    }

    #[cfg(feature = "serde")]
    #[test]
    fn mqtt_config_from_json() {
        let c: MqttConfig = serde_json::from_str(
            r#"{"url": "mqtt://u:p@h:1884?client_id=c", "failover": ["mqtt://h2"],
                "keep_alive": "1m30s", "clean_session": false, "restore": "always"}"#,
        )
        .unwrap();
        assert_eq!(
            c.brokers(),
            &[("h".to_owned(), 1884), ("h2".to_owned(), 1883)]
        );
        assert_eq!(
            c.engine_config().build().unwrap().liveness_timeout(),
            Some(Duration::from_secs(90))
        );
        // A persistent session without a client id: the typed error's message.
        let e =
            serde_json::from_str::<MqttConfig>(r#"{"url": "mqtt://h", "clean_session": false}"#)
                .unwrap_err();
        assert!(
            e.to_string()
                .contains(&MqttConfigError::PersistentWithoutClientId.to_string()),
            "{e}"
        );
        assert!(
            serde_json::from_str::<MqttConfig>(r#"{"url": "mqtt://h", "keep_alive": "1.5s"}"#)
                .is_err()
        );
    }
}

#[cfg(feature = "amqp")]
mod amqp {
    use std::time::Duration;

    use redial::amqp::{AmqpConfig, AmqpConfigError, AmqpError, AmqpTransport, Heartbeat};

    /// Finding: `?heartbeat=` in a URI was silently overridden. It is the
    /// proposal unless a setter says otherwise, and a setter that
    /// contradicts it is a typed error (the wire is checked in
    /// tests/amqp_heartbeat.rs).
    #[test]
    fn a_heartbeat_in_the_uri_is_respected_or_a_conflict() {
        let uri = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=7";
        let c = AmqpConfig::new(uri);
        assert_eq!(c.heartbeat_proposal(), Heartbeat::secs(7));
        assert_eq!(
            c.engine_config().build().unwrap().liveness_timeout(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(c.validate(), Ok(()));
        assert!(AmqpTransport::new(c.clone().heartbeat(Heartbeat::secs(7))).is_ok());
        let conflict = AmqpConfigError::UriConflict {
            index: 0,
            parameter: "heartbeat",
            in_uri: 7,
            configured: 0,
        };
        let both = c.heartbeat(Heartbeat::Disabled);
        assert_eq!(both.validate(), Err(conflict.clone()));
        assert!(matches!(
            AmqpTransport::new(both),
            Err(AmqpError::Config(e)) if e == conflict
        ));
        // Without one in the URI, the setter or the default.
        let plain = AmqpConfig::new("amqp://127.0.0.1/%2f");
        assert_eq!(plain.heartbeat_proposal(), Heartbeat::DEFAULT);
        assert_eq!(
            plain.heartbeat(Heartbeat::secs(3)).heartbeat_proposal(),
            Heartbeat::secs(3)
        );
    }

    #[test]
    fn the_engine_settings_go_on_the_engine_builder() {
        let c = AmqpConfig::new("amqp://127.0.0.1/%2f").heartbeat(Heartbeat::secs(10));
        let engine = c
            .engine_config()
            .blocked_timeout(Duration::from_secs(20))
            .stable_period(Duration::from_secs(1))
            .build()
            .unwrap();
        assert_eq!(engine.liveness_timeout(), Some(Duration::from_secs(10)));
        assert_eq!(engine.blocked_timeout(), Some(Duration::from_secs(20)));
        assert_eq!(engine.stable_period(), Duration::from_secs(1));
        assert!(engine.probe_interval().is_some(), "the adapter probes");
    }

    #[test]
    fn amqp_settings_from_the_environment_under_a_chosen_prefix() {
        let env = super::vars(&[
            ("MYLIB_AMQP_URI", "amqp://u:p@10.0.0.1:5673/v"),
            ("MYLIB_AMQP_HEARTBEAT", "1m30s"),
            ("MYLIB_AMQP_CONNECT_TIMEOUT", "1m30s"),
        ]);
        let c = AmqpConfig::new("amqp://x")
            .apply_env_with("MYLIB", env)
            .unwrap();
        assert_eq!(c.uri(), "amqp://u:p@10.0.0.1:5673/v");
        assert_eq!(c.heartbeat_proposal(), Heartbeat::secs(90));
        assert_eq!(c.validate(), Ok(()));
    }

    #[cfg(feature = "serde")]
    #[test]
    fn amqp_config_from_json() {
        let c: AmqpConfig = serde_json::from_str(
            r#"{"uri": "amqp://u:p@h/%2f?heartbeat=7", "connection_name": "billing",
                "connect_timeout": "1m30s", "replay_policy": "skip", "prefetch": 10}"#,
        )
        .unwrap();
        assert_eq!(c.heartbeat_proposal(), Heartbeat::secs(7));
        assert_eq!(c.policy(), redial::amqp::ReplayPolicy::Skip);
        assert_eq!(
            c.engine_config().build().unwrap().connect_timeout(),
            Some(Duration::from_secs(90) + redial::amqp::REPLAY_ALLOWANCE)
        );
        // The same conflict as in code, by its message.
        let e = serde_json::from_str::<AmqpConfig>(
            r#"{"uri": "amqp://h/%2f?heartbeat=7", "heartbeat": "30s"}"#,
        )
        .unwrap_err();
        let typed = AmqpConfigError::UriConflict {
            index: 0,
            parameter: "heartbeat",
            in_uri: 7,
            configured: 30,
        };
        assert!(e.to_string().contains(&typed.to_string()), "{e}");
        let e = serde_json::from_str::<AmqpConfig>(r#"{"connection_name": "x"}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains(&AmqpConfigError::NoEndpoints.to_string()),
            "{e}"
        );
    }
}
