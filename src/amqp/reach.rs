//! The AMQP reachability probe ([`crate::runtime::Transport::probe`]).
//!
//! Plaintext (`amqp://`): a TCP connect, the AMQP 0-9-1 protocol header,
//! and the broker's first bytes (`connection.start`, a method frame on
//! channel 0). Then the socket is dropped: no `start-ok`, so no
//! authentication and no session. RabbitMQ logs each probe as an accepted
//! connection the client "unexpectedly closed" (docs/amqp.md).
//!
//! TLS (`amqps://`): the TCP connect alone. A TLS handshake would cost the
//! broker what the probe is meant to save; the price is that a proxy that
//! accepts while the broker is down answers `Reachable`, which only brings
//! the next attempt back to the backoff schedule.

use std::future::Future;

use lapin::uri::{AMQPScheme, AMQPUri};

use crate::machine::ProbeOutcome;
use crate::reach::{self, Answer};

/// What a client opens an AMQP 0-9-1 connection with.
const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Probes the broker of `uri` (the host and port `open` connects to).
pub(crate) fn probe(uri: &AMQPUri) -> impl Future<Output = ProbeOutcome> + Send + 'static {
    let host = uri.authority.host.clone();
    let port = uri.authority.port;
    let tls = uri.scheme == AMQPScheme::AMQPS;
    async move {
        let mut stream = match reach::connect(&host, port).await {
            Ok(stream) => stream,
            Err(outcome) => return outcome,
        };
        if tls {
            return ProbeOutcome::Reachable;
        }
        // A frame header is 7 bytes: type, channel, payload size.
        let mut buf = [0u8; 7];
        match reach::exchange(&mut stream, PROTOCOL_HEADER, &mut buf).await {
            Answer::Bytes(n) => {
                tracing::debug!(
                    host,
                    port,
                    answer = what(&buf[..n]),
                    "amqp probe: reachable"
                );
                ProbeOutcome::Reachable
            }
            // An AMQP peer always answers the header (connection.start, or
            // its own header when it speaks another version): silence then
            // a close is not a broker.
            Answer::Closed | Answer::Refused => {
                tracing::debug!(host, port, "amqp probe: closed or reset before any byte");
                ProbeOutcome::Unreachable
            }
            Answer::Odd(e) => {
                tracing::debug!(host, port, %e, "amqp probe: unexpected error, assuming reachable");
                ProbeOutcome::Reachable
            }
        }
    }
}

/// Names the first bytes of an answer, for the log.
fn what(bytes: &[u8]) -> &'static str {
    match bytes {
        [1, 0, 0, ..] => "a method frame on channel 0 (connection.start)",
        [b'A', b'M', b'Q', b'P', ..] => "a protocol header (the broker speaks another version)",
        _ => "unexpected bytes",
    }
}
