//! Embedding path (b) of `docs/embedding.md`: an SDK that reconnects
//! underneath and calls back from its own threads (as the AWS IoT device
//! SDK of the seeds does with `on_connection_interrupted` and
//! `on_connection_resumed`).
//!
//! ```sh
//! cargo run --example embed_callback_sdk
//! ```
//!
//! The SDK is simulated with plain `std::thread`s (module `sdk`). The
//! adapter maps its callbacks onto the engine's reports, each bound to the
//! generation of the connection it came from, and the engine runs with a
//! resume grace, so that:
//!
//! 1. a blip the SDK repairs by itself (interrupted, then resumed within the
//!    grace) costs no new connection, even though the interrupt arrives
//!    from eight SDK threads at once (S05, S06);
//! 2. an outage the SDK cannot repair within the grace makes the engine
//!    replace the connection, once; the interrupt that tearing down the old
//!    connection fires is dropped as stale (S08);
//! 3. callbacks of the old connection that come even later change nothing.

use std::sync::Arc;
use std::time::Duration;

use redial::backoff::{Backoff, Jitter};
use redial::machine::{Config, ErrorKind, Generation, StateKind};
use redial::runtime::{Classify, Engine, Handle, OpenContext, Report, Transport};
use tokio::sync::oneshot;
use tokio::time::timeout;

/// A stand-in for a vendor SDK: blocking connect, callbacks from its threads.
mod sdk {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, Weak};
    use std::thread;

    /// A callback the application registers.
    pub type Callback = Arc<dyn Fn() + Send + Sync>;

    /// The simulated broker and network.
    #[derive(Default)]
    pub struct Network {
        down: AtomicBool,
        connects: AtomicU64,
        connections: Mutex<Vec<Weak<Connection>>>,
    }

    /// Why `connect` failed.
    #[derive(Debug)]
    pub struct Refused;

    /// One SDK connection; the SDK repairs it underneath when it can.
    pub struct Connection {
        pub id: u64,
        on_interrupted: Callback,
        on_resumed: Callback,
        open: AtomicBool,
    }

    impl Network {
        /// Connections made so far.
        pub fn connects(&self) -> u64 {
            self.connects.load(Ordering::Acquire)
        }

        pub fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::Release);
        }

        fn open_connections(&self) -> Vec<Arc<Connection>> {
            let list = self.connections.lock().unwrap();
            list.iter()
                .filter_map(Weak::upgrade)
                .filter(|c| c.open.load(Ordering::Acquire))
                .collect()
        }

        /// The network blips: every open connection's interrupt callback
        /// fires from `threads` SDK threads at once (duplicates).
        pub fn interrupt(&self, threads: usize) {
            for connection in self.open_connections() {
                let fired: Vec<_> = (0..threads)
                    .map(|_| {
                        let callback = connection.on_interrupted.clone();
                        thread::spawn(move || callback())
                    })
                    .collect();
                fired.into_iter().for_each(|t| t.join().unwrap());
            }
        }

        /// The SDK's own reconnect succeeded: resume callbacks fire.
        pub fn resume(&self) {
            for connection in self.open_connections() {
                let callback = connection.on_resumed.clone();
                thread::spawn(move || callback()).join().unwrap();
            }
        }
    }

    impl Connection {
        /// Connects (blocking, as such SDKs do).
        pub fn connect(
            network: &Network,
            on_interrupted: Callback,
            on_resumed: Callback,
        ) -> Result<Arc<Connection>, Refused> {
            if network.down.load(Ordering::Acquire) {
                return Err(Refused);
            }
            let id = network.connects.fetch_add(1, Ordering::AcqRel) + 1;
            let connection = Arc::new(Connection {
                id,
                on_interrupted,
                on_resumed,
                open: AtomicBool::new(true),
            });
            network
                .connections
                .lock()
                .unwrap()
                .push(Arc::downgrade(&connection));
            Ok(connection)
        }

        /// Disconnects. Like the seeds' SDK, tearing a connection down fires
        /// its interrupt callback from an SDK thread (UNEXPECTED_HANGUP).
        pub fn disconnect(&self) -> Option<thread::JoinHandle<()>> {
            if !self.open.swap(false, Ordering::AcqRel) {
                return None;
            }
            let callback = self.on_interrupted.clone();
            Some(thread::spawn(move || callback()))
        }

        /// Fires this connection's callbacks again, however late.
        pub fn fire_late_callbacks(&self) {
            (self.on_interrupted)();
            (self.on_resumed)();
        }
    }
}

// ---- the adapter ------------------------------------------------------

/// Opens SDK connections; each is one link of the engine.
struct SdkTransport {
    network: Arc<sdk::Network>,
}

#[derive(Debug)]
struct SdkError;

impl std::fmt::Display for SdkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the SDK could not connect")
    }
}

impl std::error::Error for SdkError {}

impl Classify for SdkError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Transient
    }
}

impl Transport for SdkTransport {
    type Link = Arc<sdk::Connection>;
    type Error = SdkError;

    fn open(
        &self,
        ctx: OpenContext,
    ) -> impl Future<Output = Result<Self::Link, SdkError>> + Send + 'static {
        let network = self.network.clone();
        // Both callbacks report about *this* connection's generation,
        // whenever and from whichever SDK thread they fire.
        let (lost, resumed) = (ctx.reporter.clone(), ctx.reporter);
        let on_interrupted: sdk::Callback = Arc::new(move || {
            lost.lost(ErrorKind::Transient);
        });
        let on_resumed: sdk::Callback = Arc::new(move || {
            resumed.resumed();
        });
        async move {
            // The SDK's connect blocks: run it on a thread of its own. If the
            // driver gives up on this open (connect timeout, shutdown), the
            // receiver is gone and the connection made anyway is dropped.
            let (tx, rx) = oneshot::channel();
            std::thread::spawn(move || {
                let result = sdk::Connection::connect(&network, on_interrupted, on_resumed);
                if let Err(Ok(orphan)) = tx.send(result) {
                    orphan.disconnect();
                }
            });
            match rx.await {
                Ok(Ok(connection)) => Ok(connection),
                _ => Err(SdkError),
            }
        }
    }

    fn close(&self, link: Self::Link) -> impl Future<Output = ()> + Send + 'static {
        // Its hang-up callback fires from an SDK thread: stale by now.
        let hangup = link.disconnect();
        async move {
            if let Some(thread) = hangup {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
        }
    }
}

// ---- the demo ---------------------------------------------------------

const PATIENCE: Duration = Duration::from_secs(10);
/// Longer than the SDK usually needs to repair a connection by itself.
const GRACE: Duration = Duration::from_millis(500);

async fn wait_until(handle: &Handle, what: &str, done: impl Fn(StateKind, Generation) -> bool) {
    let mut watch = handle.watch();
    timeout(PATIENCE, watch.wait_for(|s| done(s.state, s.generation)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("engine running");
}

#[tokio::main]
async fn main() {
    let network = Arc::new(sdk::Network::default());
    let config = Config::builder()
        .backoff(
            Backoff::new(
                Duration::from_millis(20),
                2.0,
                Duration::from_millis(200),
                Jitter::Full,
            )
            .expect("valid backoff"),
        )
        .resume_grace(Some(GRACE))
        .liveness_timeout(None)
        .build()
        .expect("valid config");
    let engine = Engine::spawn(
        config,
        SdkTransport {
            network: network.clone(),
        },
    );
    let handle = engine.handle();
    wait_until(&handle, "the first connection", |s, _| {
        s == StateKind::Connected
    })
    .await;
    let first = handle.generation();
    let old = engine.links().borrow().clone().expect("a link").link;
    println!("SDK connection {} is link {first}", old.id);

    // 1. A blip the SDK repairs: eight interrupt callbacks, then a resume.
    network.interrupt(8);
    // The engine waits out the grace with the link kept (backing off).
    wait_until(&handle, "the grace", |s, _| s == StateKind::BackingOff).await;
    network.resume();
    wait_until(&handle, "the resume", |s, g| {
        s == StateKind::Connected && g == first
    })
    .await;
    assert_eq!(
        network.connects(),
        1,
        "a resumed link needs no new connection"
    );
    println!("blip: 8 interrupts then a resume, still link {first}, 1 SDK connection");

    // 2. An outage longer than the grace: the engine replaces the connection.
    network.set_down(true);
    network.interrupt(8);
    wait_until(&handle, "the first retry", |s, g| {
        s != StateKind::Connected && g > first
    })
    .await;
    network.set_down(false);
    wait_until(&handle, "the new connection", |s, g| {
        s == StateKind::Connected && g > first
    })
    .await;
    let second = handle.generation();
    let new = engine.links().borrow().clone().expect("a link").link;
    println!(
        "outage: link {first} (SDK connection {}) replaced by link {second} (SDK connection {})",
        old.id, new.id
    );

    // 3. The old connection's callbacks, however late, change nothing.
    old.fire_late_callbacks();
    assert_eq!(
        handle.report_lost(first, ErrorKind::Transient),
        Report::Stale
    );
    assert_eq!(handle.generation(), second);
    assert!(handle.is_connected());

    engine.shutdown().await;
    let stats = handle.stats();
    println!(
        "shut down: {} SDK connects, {} engine attempts, {} outages, {} stale reports dropped, {} coalesced",
        network.connects(),
        stats.attempts,
        stats.outages,
        stats.stale_reports,
        stats.coalesced_reports
    );
}
