//! TLS against a private Mosquitto with a throwaway CA (made with the
//! `openssl` command): the right CA connects and publishes; a server
//! certificate that does not verify is a permanent, typed error after one
//! attempt (S38), not an endless retry.
#![cfg(feature = "mqtt")]

use crate::mqtt_util;
use crate::support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mqtt_util::{Client, message, unique};
use redial::machine::{FailCause, StateKind};
use redial::mqtt::{MqttConfig, MqttError, QoS, TlsConfiguration};
use redial::outbox::OutboxConfig;
use support::brokers::require;
use support::mosquitto::{Auth, Mosquitto};

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A CA and a server certificate for 127.0.0.1, and an unrelated CA.
fn make_certs(dir: &Path) -> bool {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = |name: &str| {
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        let key = format!("{name}.key");
        let crt = format!("{name}.crt");
        let subj = format!("/CN=redial test {name}");
        args.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
        openssl(dir, &args)
    };
    if !ca("ca") || !ca("other") {
        return false;
    }
    let _ = std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    );
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr)
        && openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        )
}

/// A scratch directory removed on drop, even when the test panics.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tls(ca: Vec<u8>) -> TlsConfiguration {
    TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connects_with_the_right_ca_and_fails_permanently_without() {
    if !require(
        "mosquitto (the binary, for a private broker)",
        support::mosquitto::binary_available(),
    ) {
        return;
    }
    let scratch = Scratch(std::env::temp_dir().join(unique("redial-tls")));
    let dir = scratch.0.clone();
    std::fs::create_dir_all(&dir).unwrap();
    if !make_certs(&dir) {
        eprintln!("SKIPPED: the openssl command could not make test certificates");
        return;
    }
    let extra = format!(
        "certfile {}\nkeyfile {}\n",
        dir.join("server.crt").display(),
        dir.join("server.key").display()
    );
    let broker = Mosquitto::start_with(Auth::Anonymous, None, &extra).expect("private mosquitto");
    let port = broker.addr().port();
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    let other = std::fs::read(dir.join("other.crt")).unwrap();

    let good = MqttConfig::new("127.0.0.1", port, unique("tls")).tls(tls(ca));
    let c = Client::start(good.clone(), good.engine_config(), OutboxConfig::default());
    c.connected(Duration::from_secs(10)).await;
    c.publisher
        .publish(message("redial/tls", 1, QoS::AtLeastOnce))
        .await
        .await
        .expect("confirmed over TLS");
    c.stop().await;

    let bad = MqttConfig::new("127.0.0.1", port, unique("tls-bad")).tls(tls(other));
    let c = Client::start(bad.clone(), bad.engine_config(), OutboxConfig::default());
    let mut events = c.engine.handle().events();
    let error = mqtt_util::gave_up(&mut events, Duration::from_secs(10)).await;
    let snapshot = c.engine.handle().snapshot();
    assert_eq!(snapshot.state, StateKind::Failed);
    println!(
        "tls: wrong CA -> {:?} after {} attempt(s): {error}",
        snapshot.failure,
        c.engine.handle().stats().attempts
    );
    assert_eq!(snapshot.failure, Some(FailCause::Permanent));
    assert_eq!(c.engine.handle().stats().attempts, 1);
    assert!(
        matches!(error.downcast_ref::<MqttError>(), Some(MqttError::Tls(_))),
        "{error:?}"
    );
    c.stop().await;
    drop(broker);
    drop(scratch);
}
