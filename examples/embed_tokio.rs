//! Embedding path (a) of `docs/embedding.md`: a tokio client implements
//! [`Transport`] and lets the engine's driver run the reconnects.
//!
//! ```sh
//! cargo run --example embed_tokio
//! ```
//!
//! The adapter (`EchoTransport`, about 30 lines) speaks to a TCP echo
//! server that the example starts on `127.0.0.1:0`. The server then drops
//! every connection once, the link's reader reports the loss, and the
//! engine opens a new link; the old link's late report is dropped as stale.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use redial::backoff::{Backoff, Jitter};
use redial::machine::{Config, ErrorKind, Reason, StateKind};
use redial::runtime::{Engine, Handle, OpenContext, Report, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio::task::AbortHandle;
use tokio::time::timeout;

// ---- the adapter ------------------------------------------------------

/// Opens TCP links to one address.
struct EchoTransport {
    addr: SocketAddr,
}

/// One open link: its write half (for publishers) and its reader task.
#[derive(Clone)]
struct EchoLink {
    writer: Arc<Mutex<OwnedWriteHalf>>,
    reader: AbortHandle,
    /// Bytes the peer sent back, for the demo.
    echoed: watch::Receiver<usize>,
}

impl Transport for EchoTransport {
    type Link = EchoLink;
    // redial classifies a bare I/O error by its kind (a refused or
    // unreachable peer is transient; see `Classify for io::Error`).
    type Error = io::Error;

    fn open(
        &self,
        ctx: OpenContext,
    ) -> impl Future<Output = Result<EchoLink, io::Error>> + Send + 'static {
        let addr = self.addr;
        async move {
            // Cancel-safe: if the driver aborts here (connect timeout,
            // shutdown), the half-made socket is simply dropped.
            let stream = TcpStream::connect(addr).await?;
            let (mut read, write) = stream.into_split();
            let (echoed_tx, echoed) = watch::channel(0);
            let reporter = ctx.reporter;
            // No await after this spawn: once the reader runs, open returns.
            let reader = tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match read.read(&mut buf).await {
                        // Inbound bytes prove the link alive (the liveness watchdog).
                        Ok(n) if n > 0 => {
                            reporter.activity();
                            echoed_tx.send_modify(|total| *total += n);
                        }
                        // EOF or an error: the link reports its own death.
                        _ => return reporter.lost(ErrorKind::Transient),
                    }
                }
            });
            let writer = Arc::new(Mutex::new(write));
            let reader = reader.abort_handle();
            Ok(EchoLink {
                writer,
                reader,
                echoed,
            })
        }
    }

    fn close(&self, link: EchoLink, _reason: Reason) -> impl Future<Output = ()> + Send + 'static {
        // Stop the reader first: our own hang-up is not news to the engine.
        link.reader.abort();
        async move {
            let _ = link.writer.lock().await.shutdown().await;
        }
    }
}

// ---- the demo ---------------------------------------------------------

/// An echo server; sending on `kill` drops every open connection once.
async fn echo_server() -> io::Result<(SocketAddr, watch::Sender<u32>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (kill, _) = watch::channel(0u32);
    let killer = kill.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut killed = killer.subscribe();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    tokio::select! {
                        _ = killed.changed() => return,
                        read = socket.read(&mut buf) => match read {
                            Ok(n) if n > 0 => {
                                if socket.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            _ => return,
                        },
                    }
                }
            });
        }
    });
    Ok((addr, kill))
}

const PATIENCE: Duration = Duration::from_secs(10);

/// Waits until a link newer than `after` is up; returns it.
async fn connected_after(
    handle: &Handle,
    after: redial::machine::Generation,
) -> redial::machine::Generation {
    let mut watch = handle.watch();
    let snapshot = timeout(
        PATIENCE,
        watch.wait_for(|s| s.state == StateKind::Connected && s.generation > after),
    )
    .await
    .expect("connected in time")
    .expect("engine running");
    snapshot.generation
}

/// Publishes through the current link and waits for the echo.
async fn ping(engine: &Engine<EchoTransport>, message: &[u8]) {
    let current = engine.links().borrow().clone().expect("a link is up");
    let mut echoed = current.link.echoed.clone();
    let before = *echoed.borrow();
    current
        .link
        .writer
        .lock()
        .await
        .write_all(message)
        .await
        .expect("write");
    timeout(
        PATIENCE,
        echoed.wait_for(|total| *total >= before + message.len()),
    )
    .await
    .expect("echo in time")
    .expect("link reader running");
    println!(
        "link {}: sent {:?}, got it back",
        current.generation,
        String::from_utf8_lossy(message)
    );
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let (addr, kill) = echo_server().await?;
    let config = Config::builder()
        .backoff(
            Backoff::builder()
                .initial(Duration::from_millis(20))
                .multiplier(2.0)
                .max(Duration::from_millis(500))
                .jitter(Jitter::Full)
                .build()
                .expect("valid backoff"),
        )
        .connect_timeout(Duration::from_secs(2))
        // The echo protocol has no heartbeats; a real protocol sets this to
        // its heartbeat timeout and its reader calls `reporter.activity()`.
        .no_liveness_timeout()
        .build()
        .expect("valid config");
    let engine = Engine::spawn(config, EchoTransport { addr });
    let handle = engine.handle();

    let first = connected_after(&handle, redial::machine::Generation(0)).await;
    ping(&engine, b"hello").await;

    // The server drops the connection: the reader sees EOF and reports.
    kill.send_modify(|n| *n += 1);
    let second = connected_after(&handle, first).await;
    println!("link {first} lost, link {second} up");
    ping(&engine, b"hello again").await;

    // A late report from the first link changes nothing.
    assert_eq!(
        handle.report_lost(first, ErrorKind::Transient),
        Report::Stale
    );

    engine.shutdown().await;
    let stats = handle.stats();
    println!(
        "shut down: {} attempts, {} connects, {} outage(s), last recovery {:?}",
        stats.attempts, stats.connects, stats.outages, stats.last_recovery
    );
    assert_eq!((stats.attempts, stats.outages), (2, 1));
    Ok(())
}
