//! Observing a link's socket from below lapin.
//!
//! lapin 4 is generic over an `async_rs` runtime kit and opens its socket
//! through the kit's reactor (`Reactor::tcp_connect_addr`), TLS included
//! (the TLS layer wraps the reactor's stream). [`ProbeKit`] is the tokio kit
//! with one change: its TCP stream is a [`Probed`] stream that
//! * reports every read of inbound bytes as activity (liveness), with the
//!   time of the last one kept for the link's own heartbeat watchdog;
//! * reports a read or write error, or EOF, as the link's death at once
//!   (a reset socket is noticed by lapin's I/O thread, which reads it first);
//! * can be killed: every later read and write fails and the I/O thread is
//!   woken, so that lapin tears the connection down without waiting for a
//!   close handshake a dead peer will never answer;
//! * on a plaintext link, writes through a [`FrameGuard`]: nothing goes out
//!   on a channel after its `channel.close-ok`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_rs::traits::{Executor, Reactor, RuntimeKit};
use async_rs::util::Task;
use futures::Stream;
use futures::io::{AsyncRead, AsyncWrite};
use futures::task::AtomicWaker;

use crate::amqp::frame_guard::FrameGuard;
use crate::machine::ErrorKind;
use crate::runtime::LinkReporter;

/// The shared state of one link's socket.
#[derive(Debug)]
pub(crate) struct Probe {
    reporter: LinkReporter,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last inbound bytes.
    last_read_ms: AtomicU64,
    killed: AtomicBool,
    /// Set when we close the link ourselves: its end is not a loss.
    closing: AtomicBool,
    lost: AtomicBool,
    /// Whether the socket carries plaintext AMQP frames (no TLS): then its
    /// writes go through a [`FrameGuard`].
    plaintext: AtomicBool,
    /// Set by the connector when the TLS handshake failed (a permanent error).
    tls_failure: std::sync::Mutex<Option<Arc<std::io::Error>>>,
    read_waker: AtomicWaker,
    write_waker: AtomicWaker,
    kill_notify: tokio::sync::Notify,
}

impl Probe {
    pub(crate) fn new(reporter: LinkReporter) -> Arc<Self> {
        Arc::new(Self {
            reporter,
            epoch: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            killed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            plaintext: AtomicBool::new(false),
            tls_failure: std::sync::Mutex::new(None),
            read_waker: AtomicWaker::new(),
            write_waker: AtomicWaker::new(),
            kill_notify: tokio::sync::Notify::new(),
        })
    }

    pub(crate) fn reporter(&self) -> &LinkReporter {
        &self.reporter
    }

    fn read_seen(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_read_ms.store(ms, Ordering::Relaxed);
        self.reporter.activity();
    }

    /// Time since the last inbound bytes (or since the probe was built).
    pub(crate) fn silence(&self) -> Duration {
        let last = Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Reports the link lost, once, unless we are closing it ourselves.
    pub(crate) fn lost(&self, kind: ErrorKind, why: &dyn std::fmt::Display) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        if !self.lost.swap(true, Ordering::AcqRel) {
            tracing::info!(generation = self.reporter.generation().0, %why, "amqp link lost");
            self.reporter.lost(kind);
        }
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Marks the link as being closed by us: its end is not reported.
    pub(crate) fn set_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Makes every later socket operation fail and wakes lapin's I/O thread.
    pub(crate) fn kill(&self) {
        if !self.killed.swap(true, Ordering::AcqRel) {
            self.read_waker.wake();
            self.write_waker.wake();
            self.kill_notify.notify_waiters();
        }
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// The link's socket carries plaintext frames (set before connecting).
    pub(crate) fn set_plaintext(&self, yes: bool) {
        self.plaintext.store(yes, Ordering::Release);
    }

    pub(crate) fn set_tls_failure(&self, error: std::io::Error) {
        *self.tls_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(error));
    }

    pub(crate) fn tls_failure(&self) -> Option<Arc<std::io::Error>> {
        self.tls_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn killed(&self) {
        let notified = self.kill_notify.notified();
        if self.is_killed() {
            return;
        }
        notified.await;
    }
}

fn killed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "link killed by redial")
}

/// A TCP stream that tells its [`Probe`] about reads, errors and EOF.
#[derive(Debug)]
pub(crate) struct Probed<S> {
    inner: S,
    probe: Arc<Probe>,
    guard: Option<Guarded>,
}

/// Writes through a [`FrameGuard`]. A write that filtered `input` bytes
/// into `out` reports them written only once `out` is on the socket; until
/// then it answers `Pending`, and lapin offers the same bytes again (its
/// send buffer only grows at the end), which are not filtered twice.
#[derive(Debug, Default)]
struct Guarded {
    guard: FrameGuard,
    input: usize,
    out: Vec<u8>,
    written: usize,
}

impl<S: AsyncWrite + Unpin> Probed<S> {
    /// Writes what the guard let through; `Ready` once all of it is out.
    fn poll_guarded(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let Some(g) = self.guard.as_mut() else {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        // lapin offers at least the bytes it was told are pending.
        debug_assert!(buf.len() >= g.input);
        if g.input == 0 {
            g.out.clear();
            g.written = 0;
            g.guard.filter(buf, &mut g.out);
            g.input = buf.len();
        }
        while g.written < g.out.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &g.out[g.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => g.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(std::mem::take(&mut g.input)))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Probed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.probe.is_killed() {
            return Poll::Ready(Err(killed_error()));
        }
        self.probe.read_waker.register(cx.waker());
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(0)) if !buf.is_empty() => {
                this.probe
                    .lost(ErrorKind::Transient, &"the broker closed the socket");
                Poll::Ready(Ok(0))
            }
            Poll::Ready(Ok(n)) => {
                this.probe.read_seen();
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => {
                this.probe.lost(ErrorKind::Transient, &e);
                Poll::Ready(Err(e))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Probed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.probe.is_killed() {
            return Poll::Ready(Err(killed_error()));
        }
        self.probe.write_waker.register(cx.waker());
        let this = &mut *self;
        let res = this.poll_guarded(cx, buf);
        if let Poll::Ready(Err(e)) = &res {
            this.probe.lost(ErrorKind::Transient, e);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.probe.is_killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// The tokio runtime kit whose TCP streams are [`Probed`].
#[derive(Debug, Clone)]
pub(crate) struct ProbeKit {
    inner: async_rs::Tokio,
    probe: Arc<Probe>,
}

impl ProbeKit {
    /// Binds to the current tokio runtime.
    pub(crate) fn new(probe: Arc<Probe>) -> Self {
        Self {
            inner: async_rs::Tokio::current(),
            probe,
        }
    }
}

impl RuntimeKit for ProbeKit {}

impl Executor for ProbeKit {
    type Task<T: Send + 'static> = <async_rs::Tokio as Executor>::Task<T>;

    fn block_on<T, F: Future<Output = T>>(&self, f: F) -> T {
        self.inner.block_on(f)
    }

    fn spawn<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
        &self,
        f: F,
    ) -> Task<Self::Task<T>> {
        self.inner.spawn(f)
    }

    fn spawn_blocking<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
        &self,
        f: F,
    ) -> Task<Self::Task<T>> {
        self.inner.spawn_blocking(f)
    }
}

#[cfg(unix)]
use std::os::fd::{AsFd as AsSysHandle, AsRawFd as AsRawSysHandle};
#[cfg(windows)]
use std::os::windows::io::{AsRawSocket as AsRawSysHandle, AsSocket as AsSysHandle};

impl Reactor for ProbeKit {
    type TcpStream = Probed<<async_rs::Tokio as Reactor>::TcpStream>;
    type Sleep = <async_rs::Tokio as Reactor>::Sleep;

    // `async_rs`'s own bound names a private trait, implied by these two.
    fn register<H: Read + Write + AsSysHandle + AsRawSysHandle + Send + 'static>(
        &self,
        socket: H,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static> {
        self.inner.register(socket)
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.inner.sleep(dur)
    }

    fn interval(&self, dur: Duration) -> impl Stream<Item = Instant> + Send + 'static {
        self.inner.interval(dur)
    }

    fn tcp_connect_addr(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send + 'static {
        let connect = self.inner.tcp_connect_addr(addr);
        let probe = self.probe.clone();
        async move {
            // An aborted open kills the probe: stop connecting at once
            // rather than leave lapin's thread waiting for a SYN answer.
            let killed = probe.clone();
            let inner = tokio::select! {
                r = connect => r?,
                () = killed.killed() => return Err(killed_error()),
            };
            let guard = probe
                .plaintext
                .load(Ordering::Acquire)
                .then(Guarded::default);
            Ok(Probed {
                inner,
                probe,
                guard,
            })
        }
    }
}
