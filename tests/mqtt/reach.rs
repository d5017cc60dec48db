//! The MQTT reachability probe (`Transport::probe`) against the real
//! Mosquitto (127.0.0.1:1883), straight and through the chaos proxy, and
//! against loopback peers that play a dead or silent broker.
//!
//! The probe is bounded by the tests with a generous timeout only so that a
//! hang fails instead of blocking; no test asserts how fast it answers.
#![cfg(feature = "mqtt")]

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use redial::machine::ProbeOutcome;
use redial::mqtt::{MqttConfig, MqttTransport, TlsConfiguration};
use redial::runtime::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::net::{dead_addr, wait_until};
use support::{brokers, chaos};

fn broker_addr() -> SocketAddr {
    brokers::MQTT_ADDR.parse().unwrap()
}

fn transport(config: MqttConfig) -> MqttTransport {
    MqttTransport::new(config).expect("a valid configuration")
}

fn config(addr: SocketAddr) -> MqttConfig {
    MqttConfig::new(addr.ip().to_string(), addr.port(), "redial-reach-test")
}

/// The probe's answer (failing, not hanging, if it never comes).
async fn probe(config: MqttConfig) -> ProbeOutcome {
    tokio::time::timeout(Duration::from_secs(10), transport(config).probe(0))
        .await
        .expect("the probe answers")
}

fn mqtt_available() -> bool {
    brokers::require("MQTT", brokers::mqtt_available())
}

/// Reads one whole MQTT packet (fixed header, remaining length, body).
async fn read_packet(s: &mut TcpStream) -> Vec<u8> {
    let mut packet = vec![s.read_u8().await.unwrap()];
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = s.read_u8().await.unwrap();
        packet.push(b);
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let at = packet.len();
    packet.resize(at + len, 0);
    s.read_exact(&mut packet[at..]).await.unwrap();
    packet
}

/// Plays a broker that reads the probe's CONNECT, then closes (cleanly, or
/// with a reset): returns the probe's answer and the packet it sent.
async fn against_a_peer_that_closes(reset: bool) -> (ProbeOutcome, Vec<u8>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let packet = read_packet(&mut s).await;
        if reset {
            s.set_zero_linger().unwrap();
        }
        packet
    });
    let outcome = probe(config(addr)).await;
    (outcome, peer.await.unwrap())
}

#[tokio::test]
async fn reachable_straight_to_the_broker() {
    if !mqtt_available() {
        return;
    }
    assert_eq!(probe(config(broker_addr())).await, ProbeOutcome::Reachable);
}

/// The probe's CONNECT: protocol "MQTT" at a level no broker supports,
/// clean session, no credentials, no will, an empty client id.
#[tokio::test]
async fn the_probe_sends_a_connect_at_an_unsupported_level() {
    let (_, connect) = against_a_peer_that_closes(false).await;
    assert_eq!(connect[0], 0x10, "CONNECT");
    assert_eq!(&connect[2..8], b"\0\x04MQTT");
    assert!(!matches!(connect[8] & 0x7f, 3..=5), "level {}", connect[8]);
    assert_eq!(connect[9], 0x02, "clean session, no will, no credentials");
    assert_eq!(&connect[12..], [0, 0], "an empty client id");
}

/// What the probe relies on: Mosquitto answers that CONNECT with CONNACK
/// 0x01 "unacceptable protocol level" and closes the connection.
#[tokio::test]
async fn mosquitto_refuses_the_probe_connect_with_connack_1() {
    if !mqtt_available() {
        return;
    }
    let (_, connect) = against_a_peer_that_closes(false).await;
    let mut s = TcpStream::connect(broker_addr()).await.unwrap();
    s.write_all(&connect).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("Mosquitto closes the connection")
        .unwrap();
    assert_eq!(answer, [0x20, 2, 0, 1]);
}

#[tokio::test]
async fn reachable_through_the_proxy_and_leaves_no_connection() {
    if !mqtt_available() {
        return;
    }
    let proxy = chaos::start(broker_addr()).await.unwrap();
    assert_eq!(probe(config(proxy.addr())).await, ProbeOutcome::Reachable);
    assert_eq!(proxy.accepted().len(), 1);
    wait_until("the probe's connection to close", || {
        proxy.open_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn unreachable_where_nothing_listens() {
    assert_eq!(probe(config(dead_addr())).await, ProbeOutcome::Unreachable);
}

/// The proxy accepts, then resets at once.
#[tokio::test]
async fn unreachable_through_a_refusing_proxy() {
    let proxy = chaos::start(broker_addr()).await.unwrap();
    proxy.refuse(true);
    assert_eq!(probe(config(proxy.addr())).await, ProbeOutcome::Unreachable);
    assert_eq!(proxy.refused(), 1);
}

/// The proxy accepts, finds its upstream dead and resets the client.
#[tokio::test]
async fn unreachable_through_a_proxy_whose_broker_is_down() {
    let proxy = chaos::start(dead_addr()).await.unwrap();
    assert_eq!(probe(config(proxy.addr())).await, ProbeOutcome::Unreachable);
}

/// A blackholed path accepts and never answers: the probe does not answer
/// either (the driver drops it when its time is up). Once the blackhole
/// lifts, a new probe is answered and neither leaves a connection behind.
#[tokio::test]
async fn no_answer_through_a_blackhole() {
    if !mqtt_available() {
        return;
    }
    let proxy = chaos::start(broker_addr()).await.unwrap();
    proxy.blackhole(true);
    let t = transport(config(proxy.addr()));
    let pending = tokio::time::timeout(Duration::from_millis(300), t.probe(0)).await;
    assert!(
        pending.is_err(),
        "answered through a blackhole: {pending:?}"
    );

    proxy.blackhole(false);
    assert_eq!(probe(config(proxy.addr())).await, ProbeOutcome::Reachable);
    wait_until("both probes' connections to close", || {
        proxy.open_connections() == 0
    })
    .await;
}

/// An MQTT 5 broker may refuse an unsupported level by closing without a
/// CONNACK: a clean close after our CONNECT is the broker's answer.
#[tokio::test]
async fn reachable_when_the_peer_closes_cleanly_after_the_connect() {
    let (outcome, _) = against_a_peer_that_closes(false).await;
    assert_eq!(outcome, ProbeOutcome::Reachable);
}

/// A reset before any byte is no answer.
#[tokio::test]
async fn unreachable_when_the_peer_resets() {
    let (outcome, _) = against_a_peer_that_closes(true).await;
    assert_eq!(outcome, ProbeOutcome::Unreachable);
}

/// TLS: the TCP connect alone, no handshake, not a byte sent.
#[tokio::test]
async fn tls_probes_with_a_tcp_connect_only() {
    let tls = || TlsConfiguration::Simple {
        ca: Vec::new(),
        alpn: None,
        client_auth: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    assert_eq!(
        probe(config(addr).tls(tls())).await,
        ProbeOutcome::Reachable
    );
    assert!(
        peer.await.unwrap().is_empty(),
        "the TLS probe sends nothing"
    );

    assert_eq!(
        probe(config(dead_addr()).tls(tls())).await,
        ProbeOutcome::Unreachable
    );
}
