//! S29, row by row: the heartbeat redial negotiates with a broker that
//! proposes a given value, checked against a minimal fake AMQP broker (the
//! real one always proposes its configured 60 s), plus the real broker.
#![cfg(feature = "amqp")]

use crate::support;

use std::time::Duration;

use redial::amqp::{AmqpConfig, AmqpTransport, Heartbeat, negotiate_heartbeat};
use redial::machine::StateKind;
use redial::runtime::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use support::brokers;

fn method_frame(channel: u16, class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&class.to_be_bytes());
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(args);
    let mut f = vec![1u8];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(&payload);
    f.push(0xCE);
    f
}

/// Reads one frame: (type, channel, payload).
async fn read_frame(s: &mut TcpStream) -> std::io::Result<(u8, u16, Vec<u8>)> {
    let mut header = [0u8; 7];
    s.read_exact(&mut header).await?;
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    let mut payload = vec![0u8; size + 1];
    s.read_exact(&mut payload).await?;
    payload.pop();
    Ok((
        header[0],
        u16::from_be_bytes([header[1], header[2]]),
        payload,
    ))
}

/// A broker that speaks just enough AMQP for lapin to open a connection and
/// redial's three channels, proposing `server_heartbeat` in `connection.tune`.
/// Sends back the heartbeat the client answered in `tune-ok`.
async fn fake_broker(server_heartbeat: u16) -> (std::net::SocketAddr, oneshot::Receiver<u16>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 8];
        s.read_exact(&mut header).await.unwrap();
        assert_eq!(&header, b"AMQP\x00\x00\x09\x01");
        // connection.start: 0-9, no server properties, PLAIN, en_US.
        let mut start = vec![0u8, 9];
        start.extend_from_slice(&0u32.to_be_bytes());
        start.extend_from_slice(&5u32.to_be_bytes());
        start.extend_from_slice(b"PLAIN");
        start.extend_from_slice(&5u32.to_be_bytes());
        start.extend_from_slice(b"en_US");
        s.write_all(&method_frame(0, 10, 10, &start)).await.unwrap();
        let mut tx = Some(tx);
        loop {
            let Ok((kind, channel, payload)) = read_frame(&mut s).await else {
                return;
            };
            if kind != 1 {
                continue; // heartbeats
            }
            let class = u16::from_be_bytes([payload[0], payload[1]]);
            let method = u16::from_be_bytes([payload[2], payload[3]]);
            let reply = match (class, method) {
                // start-ok -> tune(channel_max 2047, frame_max 131072, heartbeat)
                (10, 11) => {
                    let mut tune = Vec::new();
                    tune.extend_from_slice(&2047u16.to_be_bytes());
                    tune.extend_from_slice(&131_072u32.to_be_bytes());
                    tune.extend_from_slice(&server_heartbeat.to_be_bytes());
                    Some(method_frame(0, 10, 30, &tune))
                }
                // tune-ok: channel_max u16, frame_max u32, heartbeat u16.
                (10, 31) => {
                    let hb = u16::from_be_bytes([payload[10], payload[11]]);
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(hb);
                    }
                    None
                }
                (10, 40) => Some(method_frame(0, 10, 41, &[0])), // open-ok
                (10, 50) => Some(method_frame(0, 10, 51, &[])),  // close-ok
                (20, 10) => Some(method_frame(channel, 20, 11, &0u32.to_be_bytes())), // channel.open-ok
                (20, 40) => Some(method_frame(channel, 20, 41, &[])), // channel.close-ok
                (60, 10) => Some(method_frame(channel, 60, 11, &[])), // basic.qos-ok (prefetch)
                (85, 10) => Some(method_frame(channel, 85, 11, &[])), // confirm.select-ok
                _ => None,
            };
            if let Some(reply) = reply
                && s.write_all(&reply).await.is_err()
            {
                return;
            }
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn heartbeat_negotiation_table_against_a_fake_broker() {
    // (client proposal, server proposal, negotiated)
    let rows: [(u16, u16, u16); 6] = [
        (60, 60, 60),
        (300, 60, 60),
        (5, 60, 5),
        (0, 60, 60),
        (60, 0, 60),
        (0, 0, 0),
    ];
    for (client, server, expected) in rows {
        assert_eq!(
            negotiate_heartbeat(client, server),
            expected,
            "the documented rule"
        );
        let (addr, tune_ok) = fake_broker(server).await;
        let config = AmqpConfig::new(format!("amqp://guest:guest@{addr}/%2f"))
            .heartbeat(Heartbeat::secs(client))
            .connect_timeout(Duration::from_secs(3));
        let transport = AmqpTransport::new(config.clone()).unwrap();
        let engine = Engine::spawn(config.engine_config().build().unwrap(), transport.clone());
        let handle = engine.handle();
        tokio::time::timeout(
            Duration::from_secs(5),
            handle.wait_for(StateKind::Connected),
        )
        .await
        .expect("connected to the fake broker");
        let answered = tune_ok.await.unwrap();
        let negotiated = transport.negotiated_heartbeat().unwrap();
        let link = transport.current_link().unwrap();
        println!(
            "heartbeat: client {client:>3} server {server:>3} -> tune-ok {answered:>3}, negotiated {negotiated:?}"
        );
        assert_eq!(answered, expected, "tune-ok for ({client}, {server})");
        let expected_duration = (expected > 0).then(|| Duration::from_secs(u64::from(expected)));
        assert_eq!(negotiated, expected_duration);
        assert_eq!(link.heartbeat(), expected_duration);
        // The engine config for the negotiated value bounds detection at 1.5 H.
        assert_eq!(
            config
                .engine_config_for(link.heartbeat())
                .build()
                .unwrap()
                .liveness_timeout(),
            expected_duration
        );
        engine.shutdown().await;
    }
}

/// Finding: a URI's `?heartbeat=` was silently replaced by the default
/// proposal (20 s). It is now what redial proposes on the wire, and what
/// the engine's watchdog follows.
#[tokio::test]
async fn a_heartbeat_in_the_uri_is_proposed() {
    let (addr, tune_ok) = fake_broker(60).await;
    let config = AmqpConfig::new(format!("amqp://guest:guest@{addr}/%2f?heartbeat=7"))
        .connect_timeout(Duration::from_secs(3));
    let engine_config = config.engine_config().build().unwrap();
    assert_eq!(
        engine_config.liveness_timeout(),
        Some(Duration::from_secs(7))
    );
    let transport = AmqpTransport::new(config).unwrap();
    let engine = Engine::spawn(engine_config, transport.clone());
    tokio::time::timeout(
        Duration::from_secs(5),
        engine.handle().wait_for(StateKind::Connected),
    )
    .await
    .expect("connected to the fake broker");
    assert_eq!(tune_ok.await.unwrap(), 7, "tune-ok carries the URI's value");
    assert_eq!(
        transport.negotiated_heartbeat(),
        Some(Some(Duration::from_secs(7)))
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn real_broker_negotiates_the_smaller_heartbeat() {
    if !brokers::require("AMQP", brokers::amqp_available()) {
        return;
    }
    // The local broker proposes 60 s.
    for (client, expected) in [(Heartbeat::secs(5), 5), (Heartbeat::Disabled, 60)] {
        let config = AmqpConfig::new(support::amqp::BROKER_URI).heartbeat(client);
        let transport = AmqpTransport::new(config.clone()).unwrap();
        let engine = Engine::spawn(config.engine_config().build().unwrap(), transport.clone());
        engine.handle().wait_for(StateKind::Connected).await;
        assert_eq!(
            transport.negotiated_heartbeat(),
            Some(Some(Duration::from_secs(expected)))
        );
        engine.shutdown().await;
    }
}
