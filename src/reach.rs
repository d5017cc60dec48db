//! What the adapters' reachability probes share: a TCP connect and one
//! "hello, who is there?" exchange, with the rule that decides what an
//! answer proves.
//!
//! The rule: `Unreachable` only when we are sure nothing answered (a
//! refused or failed connect, a reset, a DNS failure); anything unexpected
//! is `Reachable`. A false `Reachable` costs one attempt on the backoff
//! schedule, a false `Unreachable` would hold recovery back.
//!
//! The probes own their socket: dropping one mid-way (the driver does when
//! the probe's time is up) closes it and leaves nothing behind (a name
//! lookup already handed to tokio's blocking pool finishes there, holding
//! no socket).

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::machine::ProbeOutcome;

/// Whether `e` proves that the peer (or the network on its behalf) said
/// no: refused, reset, unreachable, timed out. Anything else is a local
/// oddity that proves nothing about the broker.
fn refused(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | BrokenPipe
            | NotConnected
            | UnexpectedEof
            | TimedOut
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
            // No route for that address family, e.g. `localhost` resolving
            // to ::1 on a host without IPv6: the next address may do.
            | AddrNotAvailable
    )
}

/// Connects to `host:port`, trying each resolved address in turn as the
/// adapters' own connects do. `Err` carries the probe's answer when no
/// address accepted.
pub(crate) async fn connect(host: &str, port: u16) -> Result<TcpStream, ProbeOutcome> {
    let addrs = match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => addrs,
        Err(e) => {
            tracing::debug!(host, port, %e, "probe: name resolution failed");
            return Err(ProbeOutcome::Unreachable);
        }
    };
    // No address at all fails an open exactly as a DNS failure does.
    let mut outcome = ProbeOutcome::Unreachable;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) if refused(&e) => {
                tracing::debug!(%addr, %e, "probe: connect failed");
            }
            Err(e) => {
                tracing::debug!(%addr, %e, "probe: unexpected connect error, assuming reachable");
                outcome = ProbeOutcome::Reachable;
            }
        }
    }
    Err(outcome)
}

/// How the peer met our first bytes.
#[derive(Debug)]
pub(crate) enum Answer {
    /// It sent this many bytes (at the start of the buffer).
    Bytes(usize),
    /// It closed cleanly (FIN) without sending a byte.
    Closed,
    /// A reset or another sure refusal before any byte.
    Refused,
    /// An error that proves nothing (the caller assumes reachable).
    Odd(io::Error),
}

/// Sends `hello` and waits for the first bytes of the answer. Reads what
/// else has already arrived before returning, so that dropping the socket
/// sends a FIN rather than a reset for unread data.
pub(crate) async fn exchange(stream: &mut TcpStream, hello: &[u8], buf: &mut [u8]) -> Answer {
    let classify = |e: io::Error| {
        if refused(&e) {
            Answer::Refused
        } else {
            Answer::Odd(e)
        }
    };
    if let Err(e) = stream.write_all(hello).await {
        return classify(e);
    }
    let n = match stream.read(buf).await {
        Ok(0) => return Answer::Closed,
        Ok(n) => n,
        Err(e) => return classify(e),
    };
    // Bounded and without waiting: only what the kernel already holds.
    let mut rest = [0u8; 1024];
    for _ in 0..16 {
        match stream.try_read(&mut rest) {
            Ok(m) if m > 0 => {}
            _ => break,
        }
    }
    Answer::Bytes(n)
}
