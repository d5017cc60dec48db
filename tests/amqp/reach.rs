//! The AMQP reachability probe (`Transport::probe`) against the real
//! RabbitMQ (127.0.0.1:5672), straight and through the chaos proxy, and
//! against loopback peers that play a dead or odd broker.
//!
//! The probe is bounded by the tests with a generous timeout only so that a
//! hang fails instead of blocking; no test asserts how fast it answers.
#![cfg(feature = "amqp")]

use crate::support;

use std::time::Duration;

use redial::amqp::{AmqpConfig, AmqpTransport};
use redial::machine::ProbeOutcome;
use redial::runtime::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::amqp as a;
use support::net::{dead_addr, wait_until};
use support::{brokers, chaos};

const HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

fn transport(uri: &str) -> AmqpTransport {
    AmqpTransport::new(AmqpConfig::new(uri)).expect("a valid configuration")
}

/// The probe's answer (failing, not hanging, if it never comes).
async fn probe(uri: &str) -> ProbeOutcome {
    tokio::time::timeout(Duration::from_secs(10), transport(uri).probe(0))
        .await
        .expect("the probe answers")
}

/// A loopback port where nothing listens.
fn dead_port() -> u16 {
    dead_addr().port()
}

/// A listener on a free loopback port, and a URI of `scheme` naming it.
async fn fake_peer(scheme: &str) -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!(
        "{scheme}://127.0.0.1:{}/%2f",
        listener.local_addr().unwrap().port()
    );
    (listener, uri)
}

fn amqp_available() -> bool {
    brokers::require("AMQP", brokers::amqp_available())
}

#[tokio::test]
async fn reachable_straight_to_the_broker() {
    if !amqp_available() {
        return;
    }
    assert_eq!(probe(a::BROKER_URI).await, ProbeOutcome::Reachable);
}

/// What the probe relies on: RabbitMQ answers the protocol header with
/// `connection.start` (a method frame on channel 0, class 10, method 10)
/// before any authentication.
#[tokio::test]
async fn rabbitmq_answers_the_header_with_connection_start() {
    if !amqp_available() {
        return;
    }
    let mut s = tokio::net::TcpStream::connect(a::broker_addr())
        .await
        .unwrap();
    s.write_all(HEADER).await.unwrap();
    let mut frame = [0u8; 11];
    s.read_exact(&mut frame).await.unwrap();
    assert_eq!(frame[..3], [1, 0, 0], "a method frame on channel 0");
    assert_eq!(frame[7..], [0, 10, 0, 10], "connection.start");
}

#[tokio::test]
async fn reachable_through_the_proxy_and_leaves_no_connection() {
    if !amqp_available() {
        return;
    }
    let proxy = chaos::start(a::broker_addr()).await.unwrap();
    let uri = a::proxied_uri(proxy.addr());
    assert_eq!(probe(&uri).await, ProbeOutcome::Reachable);
    assert_eq!(proxy.accepted().len(), 1);
    // The probe dropped its socket: the proxy closes its broker side too.
    wait_until("the probe's connection to close", || {
        proxy.open_connections() == 0
    })
    .await;
}

#[tokio::test]
async fn unreachable_where_nothing_listens() {
    let uri = format!("amqp://guest:guest@127.0.0.1:{}/%2f", dead_port());
    assert_eq!(probe(&uri).await, ProbeOutcome::Unreachable);
}

/// The proxy accepts, then resets at once.
#[tokio::test]
async fn unreachable_through_a_refusing_proxy() {
    let proxy = chaos::start(a::broker_addr()).await.unwrap();
    proxy.refuse(true);
    assert_eq!(
        probe(&a::proxied_uri(proxy.addr())).await,
        ProbeOutcome::Unreachable
    );
    assert_eq!(proxy.refused(), 1);
}

/// The proxy accepts, finds its upstream dead and resets the client.
#[tokio::test]
async fn unreachable_through_a_proxy_whose_broker_is_down() {
    let upstream = format!("127.0.0.1:{}", dead_port()).parse().unwrap();
    let proxy = chaos::start(upstream).await.unwrap();
    assert_eq!(
        probe(&a::proxied_uri(proxy.addr())).await,
        ProbeOutcome::Unreachable
    );
}

/// A blackholed path accepts and never answers: the probe does not answer
/// either (the driver drops it when its time is up). Once the blackhole
/// lifts, a new probe is answered and neither leaves a connection behind.
#[tokio::test]
async fn no_answer_through_a_blackhole() {
    if !amqp_available() {
        return;
    }
    let proxy = chaos::start(a::broker_addr()).await.unwrap();
    proxy.blackhole(true);
    let uri = a::proxied_uri(proxy.addr());
    let t = transport(&uri);
    let pending = tokio::time::timeout(Duration::from_millis(300), t.probe(0)).await;
    assert!(
        pending.is_err(),
        "answered through a blackhole: {pending:?}"
    );

    proxy.blackhole(false);
    assert_eq!(probe(&uri).await, ProbeOutcome::Reachable);
    wait_until("both probes' connections to close", || {
        proxy.open_connections() == 0
    })
    .await;
}

/// A peer that takes the header and closes without a byte is no AMQP
/// broker (one always answers the header).
#[tokio::test]
async fn unreachable_when_the_peer_closes_without_answering() {
    let (listener, uri) = fake_peer("amqp").await;
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = [0u8; 8];
        s.read_exact(&mut got).await.unwrap();
        got
    });
    assert_eq!(probe(&uri).await, ProbeOutcome::Unreachable);
    assert_eq!(&peer.await.unwrap(), HEADER, "the probe sends the header");
}

/// A peer that answers with another protocol header (a broker of another
/// version) did answer.
#[tokio::test]
async fn reachable_when_the_peer_answers_anything() {
    let (listener, uri) = fake_peer("amqp").await;
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = [0u8; 8];
        s.read_exact(&mut got).await.unwrap();
        s.write_all(b"AMQP\x00\x00\x08\x00").await.unwrap();
        // Until the probe closes.
        let _ = s.read(&mut got).await;
    });
    assert_eq!(probe(&uri).await, ProbeOutcome::Reachable);
    peer.await.unwrap();
}

/// `amqps://`: the TCP connect alone, no TLS handshake, not a byte sent.
#[tokio::test]
async fn tls_probes_with_a_tcp_connect_only() {
    let (listener, uri) = fake_peer("amqps").await;
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    assert_eq!(probe(&uri).await, ProbeOutcome::Reachable);
    assert!(
        peer.await.unwrap().is_empty(),
        "the TLS probe sends nothing"
    );

    let dead = format!("amqps://127.0.0.1:{}/%2f", dead_port());
    assert_eq!(probe(&dead).await, ProbeOutcome::Unreachable);
}
