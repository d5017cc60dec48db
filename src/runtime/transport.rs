//! What an adapter implements: open a link, close a link.
//!
//! The trait uses return-position `impl Future + Send` (stable since Rust
//! 1.75) rather than `async-trait`: no boxing per call, and implementors can
//! still write `async fn`. The futures are `'static` so that the driver can
//! run an open as its own task and abort it when the machine retires the
//! link (connect timeout, shutdown) without borrowing the transport.

use std::future::Future;

use crate::machine::{ErrorKind, Generation, ProbeOutcome, Reason};
use crate::runtime::handle::LinkReporter;

/// The probe interval the AMQP and MQTT adapters use by default: the
/// engine is back within about this long after the broker returns, and a
/// down broker sees one refused TCP connect per interval per engine.
pub const DEFAULT_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// An error that says whether retrying can help.
pub trait Classify {
    /// Transient errors are retried with backoff; permanent ones (bad
    /// credentials, an unknown vhost, a TLS verification failure) stop the
    /// engine unless the configuration allows a few retries.
    fn kind(&self) -> ErrorKind;
}

/// The classification of a bare I/O error, so that a transport over a
/// plain socket can use `std::io::Error` as its `Transport::Error`.
///
/// Permanent only where the same open would fail the same way every time:
/// * `PermissionDenied`: the OS refused (a privileged port, a file or a
///   socket the process may not use).
/// * `InvalidInput`: a bad address or argument in the configuration.
/// * `InvalidData`: the peer answered something unparsable; TLS stacks
///   (rustls, native-tls) report a failed certificate verification this
///   way, and a plain-text client on a TLS port ends here too.
/// * `Unsupported`: the platform or peer cannot do what was asked.
///
/// Everything else is transient, including kinds this list does not know
/// (`ErrorKind` grows): the network failing (`ConnectionRefused`,
/// `ConnectionReset`, `ConnectionAborted`, `NotConnected`, `BrokenPipe`,
/// `TimedOut`, `UnexpectedEof`, `HostUnreachable`, `NetworkUnreachable`,
/// `NetworkDown`), the call being cut short (`WouldBlock`, `Interrupted`),
/// local resources that free up (`AddrInUse`, `AddrNotAvailable`: usually
/// no free ephemeral port; `OutOfMemory`, `ResourceBusy`), `NotFound` (a
/// Unix socket whose broker has not created it yet) and `Other`. A wrong
/// "transient" costs retries on the backoff schedule; a wrong "permanent"
/// stops the engine until a human restarts it, so transient is the default.
///
/// `io::Error` has an inherent `kind()` too: call this one as
/// `Classify::kind(&error)` outside generic code.
impl Classify for std::io::Error {
    fn kind(&self) -> ErrorKind {
        io_kind(self.kind())
    }
}

/// [`Classify`] for an [`std::io::ErrorKind`] (see the impl for `io::Error`).
fn io_kind(kind: std::io::ErrorKind) -> ErrorKind {
    use std::io::ErrorKind as Io;
    match kind {
        Io::PermissionDenied | Io::InvalidInput | Io::InvalidData | Io::Unsupported => {
            ErrorKind::Permanent
        }
        _ => ErrorKind::Transient,
    }
}

/// Everything an adapter needs to open one link.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OpenContext {
    /// The link's generation; every report about the link must carry it
    /// (the reporter does so for you).
    pub generation: Generation,
    /// The attempt number within the current outage (0 for the first link
    /// of [`crate::runtime::Prepared::connect_once`], which is not an
    /// attempt of the engine).
    pub attempt: u32,
    /// Which endpoint to open the link to: an index below
    /// [`crate::machine::Config::endpoints`] into the transport's endpoint
    /// list, chosen by the machine (always 0 with one endpoint).
    pub endpoint: usize,
    /// Reports the link's death, inbound activity and flow control from any
    /// thread. Keep a clone in the link's I/O task and callbacks.
    pub reporter: LinkReporter,
}

/// A way to open links to a broker.
///
/// Rules for implementors:
/// * `open` returns only when the link is ready for traffic (topology and
///   subscriptions restored). The driver enforces the connect timeout by
///   aborting the future, so it must be cancel-safe: drop what it built.
/// * The link reports its own death with `reporter.lost(kind)` and inbound
///   traffic with `reporter.activity()`; reports are cheap and never block.
/// * `close` releases everything of the link. The driver always closes the
///   old link before it opens the next one. The reason says how:
///   [`Reason::Shutdown`] is the user's graceful shutdown; any other reason
///   means the link is replaced or already dead, so a quick close is enough.
/// * An SDK whose connection object binds its callbacks when it is built
///   builds it inside `open`, with closures that capture `ctx.reporter`
///   (or `ctx.generation`): every report then names its own link.
///
/// # Examples
///
/// A transport of plain TCP connections (a real adapter adds the
/// protocol's handshake in `open`): the link's reader task feeds the
/// liveness watchdog and reports the link's death.
///
/// ```
/// use std::io;
/// use std::net::SocketAddr;
/// use redial::machine::{ErrorKind, Reason};
/// use redial::runtime::{OpenContext, Transport};
/// use tokio::io::AsyncReadExt;
/// use tokio::net::TcpStream;
/// use tokio::task::AbortHandle;
///
/// /// Opens TCP connections to one address.
/// struct Tcp {
///     addr: SocketAddr,
/// }
///
/// /// One open connection, owned by its reader task.
/// #[derive(Clone)]
/// struct TcpLink {
///     reader: AbortHandle,
/// }
///
/// impl Transport for Tcp {
///     type Link = TcpLink;
///     // redial classifies I/O errors by kind: refused or reset is
///     // transient, permission denied is permanent.
///     type Error = io::Error;
///
///     fn open(&self, ctx: OpenContext) -> impl Future<Output = io::Result<TcpLink>> + Send + 'static {
///         let addr = self.addr;
///         // Cancel-safe: a connect aborted by the timeout drops its socket.
///         async move {
///             let mut stream = TcpStream::connect(addr).await?;
///             let reader = tokio::spawn(async move {
///                 let mut buf = [0u8; 1024];
///                 while let Ok(1..) = stream.read(&mut buf).await {
///                     ctx.reporter.activity();
///                 }
///                 // EOF or an error: the link reports its own death.
///                 ctx.reporter.lost(ErrorKind::Transient);
///             });
///             Ok(TcpLink { reader: reader.abort_handle() })
///         }
///     }
///
///     fn close(&self, link: TcpLink, _reason: Reason) -> impl Future<Output = ()> + Send + 'static {
///         // Dropping the reader's stream closes the socket.
///         link.reader.abort();
///         std::future::ready(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use redial::machine::Config;
/// use redial::runtime::Engine;
/// use tokio::net::TcpListener;
///
/// let broker = TcpListener::bind("127.0.0.1:0").await?;
/// let engine = Engine::spawn(Config::default(), Tcp { addr: broker.local_addr()? });
/// let (mut peer, _) = broker.accept().await?;
/// engine.handle().wait_connected(Duration::from_secs(5)).await?;
/// engine.shutdown().await;
/// assert_eq!(peer.read(&mut [0u8; 8]).await?, 0); // the engine hung up
/// # Ok(())
/// # }
/// ```
pub trait Transport: Send + Sync + 'static {
    /// An open link. The driver keeps it until it closes it and shares a
    /// clone with publishers through [`crate::runtime::Engine::links`].
    type Link: Clone + Send + Sync + 'static;
    /// Why an open failed.
    type Error: std::error::Error + Classify + Send + Sync + 'static;

    /// Opens link `ctx.generation`.
    fn open(
        &self,
        ctx: OpenContext,
    ) -> impl Future<Output = Result<Self::Link, Self::Error>> + Send + 'static;

    /// Closes a link (gracefully when it still can), retired for `reason`.
    fn close(&self, link: Self::Link, reason: Reason) -> impl Future<Output = ()> + Send + 'static;

    /// Restores what the broker forgot when `link` resumed without its
    /// session (subscriptions, consumers; see
    /// [`crate::runtime::LinkReporter::resumed_without_session`]). An error
    /// is reported as the link's loss, and the link is replaced.
    ///
    /// The default restores nothing: a transport whose links never resume
    /// underneath has nothing to restore.
    fn restore(
        &self,
        link: Self::Link,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let _ = link;
        std::future::ready(Ok(()))
    }

    /// Checks whether an open to `endpoint` (as in [`OpenContext::endpoint`])
    /// would reach the broker now, at a fraction of
    /// an open's cost: a TCP connect and the protocol's first exchange, no
    /// session, no authentication. Answer `Unreachable` only when sure an
    /// open now would fail for want of the broker (refused, reset before it
    /// answered); when unsure, answer `Reachable`: a wrong `Reachable` costs
    /// one attempt on the backoff schedule, a wrong `Unreachable` holds
    /// recovery back. The driver drops the future when the probe's time is
    /// up, which counts as unreachable.
    ///
    /// The default answers `Unsupported`: the engine then never probes and
    /// makes its attempts on the backoff schedule alone.
    fn probe(&self, endpoint: usize) -> impl Future<Output = ProbeOutcome> + Send + 'static {
        let _ = endpoint;
        std::future::ready(ProbeOutcome::Unsupported)
    }

    /// Where `endpoint` (as in [`OpenContext::endpoint`]) is, for logs: the
    /// `peer` field of the link's span (docs/observability.md), such as
    /// `host:port`. Never credentials: the span reaches every log line.
    /// Asked at each attempt and probe, only when a subscriber records the
    /// span.
    ///
    /// The default names none: the span then carries only the index.
    fn peer(&self, endpoint: usize) -> Option<String> {
        let _ = endpoint;
        None
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::Classify;
    use crate::machine::ErrorKind;

    #[test]
    fn io_errors_classify_by_kind() {
        use io::ErrorKind as Io;
        let table = [
            (Io::ConnectionRefused, ErrorKind::Transient),
            (Io::ConnectionReset, ErrorKind::Transient),
            (Io::ConnectionAborted, ErrorKind::Transient),
            (Io::NotConnected, ErrorKind::Transient),
            (Io::BrokenPipe, ErrorKind::Transient),
            (Io::TimedOut, ErrorKind::Transient),
            (Io::UnexpectedEof, ErrorKind::Transient),
            (Io::WouldBlock, ErrorKind::Transient),
            (Io::Interrupted, ErrorKind::Transient),
            (Io::HostUnreachable, ErrorKind::Transient),
            (Io::NetworkUnreachable, ErrorKind::Transient),
            (Io::NetworkDown, ErrorKind::Transient),
            (Io::AddrInUse, ErrorKind::Transient),
            (Io::AddrNotAvailable, ErrorKind::Transient),
            (Io::OutOfMemory, ErrorKind::Transient),
            (Io::ResourceBusy, ErrorKind::Transient),
            (Io::NotFound, ErrorKind::Transient),
            (Io::Other, ErrorKind::Transient),
            (Io::PermissionDenied, ErrorKind::Permanent),
            (Io::InvalidInput, ErrorKind::Permanent),
            (Io::InvalidData, ErrorKind::Permanent),
            (Io::Unsupported, ErrorKind::Permanent),
        ];
        for (kind, expected) in table {
            assert_eq!(io::Error::from(kind).kind(), kind);
            assert_eq!(Classify::kind(&io::Error::from(kind)), expected, "{kind:?}");
            // A wrapped error (what a TLS stack returns) keeps its kind's class.
            let wrapped = io::Error::new(kind, "wrapped");
            assert_eq!(Classify::kind(&wrapped), expected, "{kind:?} wrapped");
        }
    }
}
