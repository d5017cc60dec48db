//! The MQTT reachability probe ([`crate::runtime::Transport::probe`]).
//!
//! Plaintext: a TCP connect and a CONNECT whose protocol level no broker
//! supports. MQTT 3.1.1 (§3.1.2.2) makes the server answer CONNACK 0x01
//! "unacceptable protocol level" and disconnect, before any
//! authentication or session; Mosquitto 2.0 does exactly that. MQTT 5
//! (§3.1.2.2) only says the server *may* send a CONNACK and must close, so
//! a clean close (FIN) after our CONNECT also counts as the broker's answer;
//! only a reset, a refused connect or a DNS failure are `Unreachable`.
//!
//! TLS: the TCP connect alone (a TLS handshake costs the broker what the
//! probe is meant to save); a proxy that accepts while the broker is down
//! then answers `Reachable`, which only brings the next attempt back to the
//! backoff schedule.

use crate::machine::ProbeOutcome;
use crate::reach::{self, Answer};

/// An unsupported protocol level: not 3, 4 or 5, and without the 0x80 bit
/// some brokers read as "bridge".
const LEVEL: u8 = 0x7f;

/// CONNECT, MQTT 3.1.1 layout: protocol name "MQTT", level [`LEVEL`], clean
/// session, no keep-alive, an empty client id (so that, should a broker
/// ever accept it, it takes over nobody's session), no will, no credentials.
const CONNECT: [u8; 14] = [
    0x10, 12, // CONNECT, remaining length
    0, 4, b'M', b'Q', b'T', b'T', LEVEL, 0x02, 0, 0, // variable header
    0, 0, // client id ""
];

/// Probes `host:port`; `tls`: the TCP connect alone.
pub(crate) async fn probe(host: String, port: u16, tls: bool) -> ProbeOutcome {
    let mut stream = match reach::connect(&host, port).await {
        Ok(stream) => stream,
        Err(outcome) => return outcome,
    };
    if tls {
        return ProbeOutcome::Reachable;
    }
    // CONNACK: 0x20, 2, session present, return code.
    let mut buf = [0u8; 4];
    match reach::exchange(&mut stream, &CONNECT, &mut buf).await {
        Answer::Bytes(n) => {
            match &buf[..n] {
                [0x20, 2, _, code] => {
                    tracing::debug!(host, port, code, "mqtt probe: CONNACK, reachable");
                }
                other => {
                    tracing::debug!(host, port, ?other, "mqtt probe: answered, reachable");
                }
            }
            ProbeOutcome::Reachable
        }
        Answer::Closed => {
            tracing::debug!(host, port, "mqtt probe: closed without CONNACK, reachable");
            ProbeOutcome::Reachable
        }
        Answer::Refused => {
            tracing::debug!(host, port, "mqtt probe: reset before any byte");
            ProbeOutcome::Unreachable
        }
        Answer::Odd(e) => {
            tracing::debug!(host, port, %e, "mqtt probe: unexpected error, assuming reachable");
            ProbeOutcome::Reachable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packet is a well-formed CONNECT: its remaining length matches.
    #[test]
    fn connect_is_well_formed() {
        assert_eq!(usize::from(CONNECT[1]), CONNECT.len() - 2);
        assert_eq!(&CONNECT[2..8], b"\0\x04MQTT");
        assert!(!matches!(CONNECT[8] & 0x7f, 3..=5));
    }
}
