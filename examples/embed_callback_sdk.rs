//! Embedding path (b) of `docs/embedding.md` ("Embedding a callback SDK"):
//! a client over an SDK that reconnects underneath and calls back from its
//! own threads, as the CRT-based AWS IoT device SDKs do with
//! `on_connection_interrupted(error)` and `on_connection_resumed(session_present)`,
//! callbacks they take when the connection object is built.
//!
//! ```sh
//! cargo run --example embed_callback_sdk
//! ```
//!
//! The SDK is simulated with plain `std::thread`s (module `sdk`). The
//! client (module-level `Client`) shows, in order:
//!
//! 1. **connect once**: the client's `connect()` builds the first SDK
//!    connection itself, its callbacks bound to the engine's first link
//!    (`Prepared::reporter`), and hands it over (`Prepared::adopt`); a
//!    refused first connect is returned to the caller and never retried;
//! 2. **build-time callbacks**: every later SDK connection is built inside
//!    `Transport::open`, its callbacks capturing that link's reporter;
//! 3. a blip the SDK repairs by itself (interrupted from eight SDK threads,
//!    then resumed within the resume grace) costs no new connection;
//! 4. a resume **without its session** keeps the link and makes the engine
//!    call `Transport::restore`, which subscribes again; the interrupt's
//!    error reaches the engine's observers;
//! 5. an outage longer than the grace makes the engine replace the
//!    connection, once; callbacks of the old connection, however late,
//!    change nothing;
//! 6. **epochs**: `recover_connection()` rebuilds the engine with
//!    `first_generation(old.generation().next())`; the SDK client's
//!    connection-lost hook, which names a connection only by a number and
//!    is routed to whichever engine is current, then delivers the old
//!    engine's queued interrupts to the new engine: every one is stale.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redial::backoff::{Backoff, Jitter};
use redial::machine::{Config, ErrorKind, Generation, Reason, StateKind};
use redial::runtime::{
    Classify, Engine, Event, Handle, LinkReporter, OpenContext, Report, Transport,
};
use tokio::sync::oneshot;
use tokio::time::timeout;

/// A stand-in for a vendor SDK: blocking connect, callbacks from its threads.
mod sdk {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, Weak};
    use std::thread;

    /// The callbacks a connection takes when it is built.
    #[derive(Clone)]
    pub struct Callbacks {
        /// The connection was lost; the SDK reconnects underneath. The
        /// argument is the SDK's error code.
        pub on_interrupted: Arc<dyn Fn(i32) + Send + Sync>,
        /// The SDK's own reconnect succeeded; the argument is
        /// `session_present` (false: the broker forgot the subscriptions).
        pub on_resumed: Arc<dyn Fn(bool) + Send + Sync>,
    }

    /// The SDK client's connection-lost hook, registered once per SDK
    /// client: it names the connection by the tag it was built with.
    pub type Hook = Arc<dyn Fn(u64) + Send + Sync>;

    /// The error code of a reset connection (ECONNRESET).
    pub const CONNECTION_RESET: i32 = 104;

    /// The simulated broker and network.
    #[derive(Default)]
    pub struct Network {
        down: AtomicBool,
        connect_calls: AtomicU64,
        connects: AtomicU64,
        graceful_closes: AtomicU64,
        quick_closes: AtomicU64,
        connections: Mutex<Vec<Weak<Connection>>>,
        hook: Mutex<Option<Hook>>,
        /// The hook's events, waiting for the SDK's event thread.
        queued: Mutex<Vec<u64>>,
    }

    /// Why `connect` failed.
    #[derive(Debug)]
    pub struct Refused;

    /// One SDK connection; the SDK repairs it underneath when it can.
    pub struct Connection {
        pub id: u64,
        tag: u64,
        callbacks: Callbacks,
        open: AtomicBool,
        /// What the broker's session holds for this connection.
        subscriptions: Mutex<Vec<String>>,
        network: Weak<Network>,
    }

    impl Network {
        /// `connect` calls so far, refused ones included.
        pub fn connect_calls(&self) -> u64 {
            self.connect_calls.load(Ordering::Acquire)
        }

        /// Connections made so far.
        pub fn connects(&self) -> u64 {
            self.connects.load(Ordering::Acquire)
        }

        /// Connections closed with `disconnect(graceful)`: (graceful, quick).
        pub fn closes(&self) -> (u64, u64) {
            (
                self.graceful_closes.load(Ordering::Acquire),
                self.quick_closes.load(Ordering::Acquire),
            )
        }

        pub fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::Release);
        }

        /// Registers the SDK client's connection-lost hook.
        pub fn set_hook(&self, hook: Hook) {
            *self.hook.lock().unwrap() = Some(hook);
        }

        fn open_connections(&self) -> Vec<Arc<Connection>> {
            let list = self.connections.lock().unwrap();
            list.iter()
                .filter_map(Weak::upgrade)
                .filter(|c| c.open.load(Ordering::Acquire))
                .collect()
        }

        /// The network blips: every open connection's interrupt callback
        /// fires from `threads` SDK threads at once (duplicates), and the
        /// hook's event is queued for the SDK's event thread.
        pub fn interrupt(&self, threads: usize) {
            for connection in self.open_connections() {
                self.queued.lock().unwrap().push(connection.tag);
                let fired: Vec<_> = (0..threads)
                    .map(|_| {
                        let callback = connection.callbacks.on_interrupted.clone();
                        thread::spawn(move || callback(CONNECTION_RESET))
                    })
                    .collect();
                fired.into_iter().for_each(|t| t.join().unwrap());
            }
        }

        /// The SDK's own reconnect succeeded. Without a session, the broker
        /// kept no subscriptions for the connection.
        pub fn resume(&self, session_present: bool) {
            for connection in self.open_connections() {
                if !session_present {
                    connection.subscriptions.lock().unwrap().clear();
                }
                let callback = connection.callbacks.on_resumed.clone();
                thread::spawn(move || callback(session_present))
                    .join()
                    .unwrap();
            }
        }

        /// The SDK's event thread, stuck until now, delivers the hook's
        /// queued events in order; returns how many.
        pub fn deliver_queued_hook_events(&self) -> usize {
            let events = std::mem::take(&mut *self.queued.lock().unwrap());
            let hook = self.hook.lock().unwrap().clone();
            let count = events.len();
            if let Some(hook) = hook {
                thread::spawn(move || events.into_iter().for_each(|tag| hook(tag)))
                    .join()
                    .unwrap();
            }
            count
        }
    }

    impl Connection {
        /// Connects (blocking, as such SDKs do). The callbacks are given
        /// here, once; `tag` is the application's name for the connection.
        pub fn connect(
            network: &Arc<Network>,
            tag: u64,
            callbacks: Callbacks,
        ) -> Result<Arc<Connection>, Refused> {
            network.connect_calls.fetch_add(1, Ordering::AcqRel);
            if network.down.load(Ordering::Acquire) {
                return Err(Refused);
            }
            let id = network.connects.fetch_add(1, Ordering::AcqRel) + 1;
            let connection = Arc::new(Connection {
                id,
                tag,
                callbacks,
                open: AtomicBool::new(true),
                subscriptions: Mutex::new(Vec::new()),
                network: Arc::downgrade(network),
            });
            network
                .connections
                .lock()
                .unwrap()
                .push(Arc::downgrade(&connection));
            Ok(connection)
        }

        /// Subscribes (blocking).
        pub fn subscribe(&self, topic: &str) {
            self.subscriptions.lock().unwrap().push(topic.to_owned());
        }

        /// What the broker's session holds for this connection.
        pub fn subscriptions(&self) -> Vec<String> {
            self.subscriptions.lock().unwrap().clone()
        }

        /// Disconnects, gracefully (tells the broker) or not. Like the
        /// SDK of failure report 003, tearing a connection down fires its interrupt
        /// callback from an SDK thread (UNEXPECTED_HANGUP), and the hook's.
        pub fn disconnect(&self, graceful: bool) -> Option<thread::JoinHandle<()>> {
            if !self.open.swap(false, Ordering::AcqRel) {
                return None;
            }
            if let Some(network) = self.network.upgrade() {
                let counter = if graceful {
                    &network.graceful_closes
                } else {
                    &network.quick_closes
                };
                counter.fetch_add(1, Ordering::AcqRel);
                network.queued.lock().unwrap().push(self.tag);
            }
            let callback = self.callbacks.on_interrupted.clone();
            Some(thread::spawn(move || callback(CONNECTION_RESET)))
        }

        /// The application's name for the connection, given to `connect`.
        pub fn tag(&self) -> u64 {
            self.tag
        }

        /// Fires this connection's callbacks again, however late.
        pub fn fire_late_callbacks(&self) {
            (self.callbacks.on_interrupted)(CONNECTION_RESET);
            (self.callbacks.on_resumed)(true);
        }
    }
}

// ---- the adapter ------------------------------------------------------

/// What the client subscribes to, on every connection.
const TOPICS: [&str; 2] = ["things/heater/state", "things/heater/events"];

#[derive(Debug)]
enum SdkError {
    Refused,
    Interrupted(i32),
}

impl std::fmt::Display for SdkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SdkError::Refused => f.write_str("the SDK could not connect"),
            SdkError::Interrupted(code) => write!(f, "connection interrupted (SDK error {code})"),
        }
    }
}

impl std::error::Error for SdkError {}

impl Classify for SdkError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Transient
    }
}

/// The callbacks of one SDK connection, bound to its link: whenever and
/// from whichever SDK thread they fire, they report about that link only.
fn callbacks(reporter: LinkReporter) -> sdk::Callbacks {
    let (lost, resumed) = (reporter.clone(), reporter);
    sdk::Callbacks {
        on_interrupted: Arc::new(move |code| {
            lost.lost_because(ErrorKind::Transient, Arc::new(SdkError::Interrupted(code)));
        }),
        on_resumed: Arc::new(move |session_present| {
            if session_present {
                resumed.resumed();
            } else {
                resumed.resumed_without_session();
            }
        }),
    }
}

/// Builds the SDK connection for the link `reporter` is bound to and
/// subscribes: the same code for the client's own first connect and for
/// the engine's opens. Cancel-safe: the SDK's blocking connect runs on a
/// thread of its own, and a connection made after the caller gave up is
/// disconnected.
async fn build_connection(
    network: Arc<sdk::Network>,
    reporter: LinkReporter,
) -> Result<Arc<sdk::Connection>, SdkError> {
    let tag = reporter.generation().0;
    let callbacks = callbacks(reporter);
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let result = sdk::Connection::connect(&network, tag, callbacks).inspect(|connection| {
            TOPICS.iter().for_each(|topic| connection.subscribe(topic));
        });
        if let Err(Ok(orphan)) = tx.send(result) {
            orphan.disconnect(false);
        }
    });
    match rx.await {
        Ok(Ok(connection)) => Ok(connection),
        _ => Err(SdkError::Refused),
    }
}

/// Opens SDK connections; each is one link of the engine.
struct SdkTransport {
    network: Arc<sdk::Network>,
}

impl Transport for SdkTransport {
    type Link = Arc<sdk::Connection>;
    type Error = SdkError;

    fn open(
        &self,
        ctx: OpenContext,
    ) -> impl Future<Output = Result<Self::Link, SdkError>> + Send + 'static {
        // The connection object is built here, with callbacks capturing
        // this link's reporter.
        build_connection(self.network.clone(), ctx.reporter)
    }

    fn close(&self, link: Self::Link, reason: Reason) -> impl Future<Output = ()> + Send + 'static {
        // A shutdown closes gracefully; any other reason means the link is
        // replaced or dead, and a quick close is enough. Its hang-up
        // callback fires from an SDK thread: stale by now.
        let hangup = link.disconnect(reason == Reason::Shutdown);
        async move {
            if let Some(thread) = hangup {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
        }
    }

    fn restore(
        &self,
        link: Self::Link,
    ) -> impl Future<Output = Result<(), SdkError>> + Send + 'static {
        // The link resumed without its session: subscribe again (the SDK's
        // subscribe blocks). An error here is reported as the link's loss.
        let subscribe = move || TOPICS.iter().for_each(|topic| link.subscribe(topic));
        let subscribed = tokio::task::spawn_blocking(subscribe);
        async move { subscribed.await.map_err(|_| SdkError::Refused) }
    }
}

// ---- the client -------------------------------------------------------

/// Longer than the SDK usually needs to repair a connection by itself.
const GRACE: Duration = Duration::from_millis(300);
const PATIENCE: Duration = Duration::from_secs(10);

/// Reproduces the SDK client's previous behaviour (docs/embedding.md,
/// "Reproducing an SDK's previous behaviour").
fn config(first_generation: Generation) -> Config {
    Config::builder()
        // Ride out the SDK's own reconnect: a lost link is kept this long.
        .resume_grace(GRACE)
        // When the grace is over, replace the connection at once.
        .immediate_first_retry(true)
        .backoff(
            Backoff::builder()
                .initial(Duration::from_millis(20))
                .multiplier(2.0)
                .max(Duration::from_millis(200))
                .jitter(Jitter::Full)
                .build()
                .expect("valid backoff"),
        )
        // The SDK enforces its own connect timeout and keep-alive.
        .no_connect_timeout()
        .no_liveness_timeout()
        .never_give_up()
        .first_generation(first_generation)
        .build()
        .expect("valid config")
}

/// Where the SDK client's hook sends a connection's number: whichever
/// engine is current when the event is delivered. A bare number routed
/// this way is what makes epochs necessary.
#[derive(Default)]
struct CurrentEngine {
    handle: Mutex<Option<Handle>>,
    /// What each routed report became, for the demo.
    routed: Mutex<Vec<(u64, Report)>>,
}

impl CurrentEngine {
    fn interrupted(&self, tag: u64) {
        let handle = self.handle.lock().unwrap().clone();
        if let Some(handle) = handle {
            let report = handle.report_lost(Generation(tag), ErrorKind::Transient);
            self.routed.lock().unwrap().push((tag, report));
        }
    }
}

/// A broker client over the SDK.
struct Client {
    network: Arc<sdk::Network>,
    engine: Option<Engine<SdkTransport>>,
    current: Arc<CurrentEngine>,
}

impl Client {
    /// Connects once: the first failure is the caller's, with nothing left
    /// running; once connected, the engine reconnects.
    async fn connect(network: Arc<sdk::Network>) -> Result<Client, SdkError> {
        let current = Arc::new(CurrentEngine::default());
        let engine = start_engine(&network, &current, Generation(1)).await?;
        let route = current.clone();
        network.set_hook(Arc::new(move |tag| route.interrupted(tag)));
        Ok(Client {
            network,
            engine: Some(engine),
            current,
        })
    }

    fn handle(&self) -> Handle {
        self.engine.as_ref().expect("connected").handle()
    }

    fn connection(&self) -> Arc<sdk::Connection> {
        let engine = self.engine.as_ref().expect("connected");
        let link = engine.links().borrow().clone();
        link.expect("a link").link
    }

    /// Rebuilds the engine and its first connection. The new engine's
    /// generations continue after the old one's (an epoch), so a late
    /// report about any old link is stale at the new engine.
    async fn recover_connection(&mut self) -> Result<(), SdkError> {
        let old = self.engine.take().expect("connected");
        let old_handle = old.handle();
        // One session per client id: the old connection goes first.
        old.shutdown().await;
        let epoch = old_handle.generation().next();
        let engine = start_engine(&self.network, &self.current, epoch).await?;
        self.engine = Some(engine);
        Ok(())
    }

    async fn shutdown(mut self) {
        if let Some(engine) = self.engine.take() {
            engine.shutdown().await;
        }
    }
}

/// Builds an engine and adopts a first connection the client builds
/// itself, with callbacks bound to the engine's first link.
/// (`Engine::connect_once` does the same through `Transport::open`.)
async fn start_engine(
    network: &Arc<sdk::Network>,
    current: &CurrentEngine,
    first_generation: Generation,
) -> Result<Engine<SdkTransport>, SdkError> {
    let transport = SdkTransport {
        network: network.clone(),
    };
    let prepared = Engine::prepare(config(first_generation), transport);
    // On error `prepared` is dropped: nothing was started, nothing retries.
    let connection = build_connection(network.clone(), prepared.reporter()).await?;
    let engine = prepared.adopt(connection);
    *current.handle.lock().unwrap() = Some(engine.handle());
    Ok(engine)
}

// ---- the demo ---------------------------------------------------------

async fn wait_until(handle: &Handle, what: &str, done: impl Fn(StateKind, Generation) -> bool) {
    let mut watch = handle.watch();
    timeout(PATIENCE, watch.wait_for(|s| done(s.state, s.generation)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("engine running");
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let waited = timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    waited
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::main]
async fn main() {
    let network = Arc::new(sdk::Network::default());

    // 1. Connect once: refused, returned to the caller, never retried.
    network.set_down(true);
    let refused = Client::connect(network.clone()).await;
    assert!(matches!(refused, Err(SdkError::Refused)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        network.connect_calls(),
        1,
        "a refused first connect is not retried"
    );
    println!("connect(): refused, the error went to the caller, 1 SDK connect call, no retry");

    network.set_down(false);
    let mut client = Client::connect(network.clone()).await.expect("connects");
    let handle = client.handle();
    wait_until(&handle, "the adopted link", |s, _| {
        s == StateKind::Connected
    })
    .await;
    let first = handle.generation();
    let old = client.connection();
    let stats = handle.stats();
    assert_eq!(
        (first, stats.attempts, stats.connects),
        (Generation(1), 0, 1)
    );
    println!(
        "connect(): SDK connection {} adopted as link {first} (attempt 0, {} engine attempts)",
        old.id, stats.attempts
    );

    // 3. A blip the SDK repairs: eight interrupt callbacks, then a resume.
    network.interrupt(8);
    // The engine waits out the grace with the link kept (backing off).
    wait_until(&handle, "the grace", |s, _| s == StateKind::BackingOff).await;
    network.resume(true);
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

    // 4. A resume without the session: the same link, restored.
    let mut events = handle.events();
    network.interrupt(1);
    wait_until(&handle, "the grace", |s, _| s == StateKind::BackingOff).await;
    let loss = loop {
        match events.recv().await.expect("events").expect("no lag") {
            Event::StateChanged {
                reason: Reason::LinkLost,
                error: Some(error),
                ..
            } => break error,
            _ => continue,
        }
    };
    network.resume(false);
    wait_until(&handle, "the resume", |s, g| {
        s == StateKind::Connected && g == first
    })
    .await;
    wait_for("the restore", || old.subscriptions().len() == TOPICS.len()).await;
    assert_eq!(network.connects(), 1);
    assert_eq!(handle.stats().resumes, 2);
    println!(
        "session lost: interrupted ({loss}), resumed without session, restore subscribed again to {:?} on link {first}",
        old.subscriptions()
    );

    // 5. An outage longer than the grace: the engine replaces the connection.
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
    let new = client.connection();
    // 2. Built in `Transport::open`, its callbacks bound to the new link.
    assert_eq!(new.tag(), second.0);
    assert_eq!(network.closes(), (0, 1), "a dead link is closed quickly");
    println!(
        "outage: link {first} (SDK connection {}) replaced by link {second} (SDK connection {}, built in Transport::open)",
        old.id, new.id
    );

    // The old connection's callbacks, however late, change nothing.
    old.fire_late_callbacks();
    assert_eq!(
        handle.report_lost(first, ErrorKind::Transient),
        Report::Stale
    );
    assert_eq!(handle.generation(), second);
    assert!(handle.is_connected());

    // 6. recover_connection(): a new engine, continuing the generations.
    client.recover_connection().await.expect("reconnects");
    assert_eq!(network.closes(), (1, 1), "a shutdown closes gracefully");
    let old_final = handle.generation();
    let recovered = client.handle();
    wait_until(&recovered, "the recovered link", |s, _| {
        s == StateKind::Connected
    })
    .await;
    let epoch = recovered.generation();
    assert_eq!(epoch, old_final.next());
    let before = recovered.stats();
    println!(
        "recover_connection(): old engine closed at generation {old_final}, new engine adopted SDK connection {} as link {epoch}",
        client.connection().id
    );

    // The SDK's event thread catches up: the hook's queued interrupts of the
    // old engine's links reach the new engine by their bare numbers.
    let delivered = network.deliver_queued_hook_events();
    let routed = client.current.routed.lock().unwrap().clone();
    assert_eq!(routed.len(), delivered);
    assert!(
        routed
            .iter()
            .all(|(tag, report)| *tag < epoch.0 && *report == Report::Stale)
    );
    let mut links: Vec<u64> = routed.iter().map(|(tag, _)| *tag).collect();
    links.dedup();
    let old_link_one = routed.iter().filter(|(tag, _)| *tag == first.0).count();
    assert_eq!(recovered.generation(), epoch);
    assert!(recovered.is_connected());
    assert_eq!(recovered.stats().attempts, before.attempts);
    assert_eq!(network.connects(), 3);
    println!(
        "late hook events: {delivered} interrupts of the old links {links:?} routed by number to the new engine, all stale; \
         without the epoch its first link would be generation 1, named by {old_link_one} of them"
    );

    let recovered_stats = recovered.stats();
    client.shutdown().await;
    let stats = handle.stats();
    println!(
        "shut down: {} SDK connect calls, old engine: {} attempts, {} resumes, {} outages, {} stale reports; new engine: {} stale reports",
        network.connect_calls(),
        stats.attempts,
        stats.resumes,
        stats.outages,
        stats.stale_reports,
        recovered_stats.stale_reports,
    );
}
