//! The runtime: a thread-safe [`Handle`], a tokio driver, and the
//! [`Transport`] trait adapters implement.
//!
//! ```no_run
//! # async fn demo<T: redial::runtime::Transport>(transport: T) {
//! use redial::machine::Config;
//! use redial::runtime::Engine;
//!
//! let engine = Engine::spawn(Config::builder().build().unwrap(), transport);
//! let handle = engine.handle();
//! // From any thread, e.g. an SDK callback:
//! let generation = handle.generation();
//! handle.report_lost(generation, redial::machine::ErrorKind::Transient);
//! engine.shutdown().await;
//! # }
//! ```
//!
//! A client's `connect()`: every event from the first, and the first link
//! or an error (never a wait that hangs on an engine that gave up).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), redial::runtime::WaitError> {
//! use std::time::Duration;
//! use futures::StreamExt;
//! use redial::machine::{Config, StateKind};
//! use redial::runtime::{Engine, Event};
//! use redial::testing::MemoryTransport;
//!
//! let prepared = Engine::prepare(Config::default(), MemoryTransport::new());
//! let mut events = prepared.events(); // before the start: nothing is missed
//! let engine = prepared.start();
//! let generation = engine.handle().wait_connected(Duration::from_secs(30)).await?;
//! let first = events.next().await.unwrap();
//! assert!(matches!(first, Ok(Event::StateChanged { from: StateKind::Idle, .. })));
//! println!("connected on link {generation}");
//! engine.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod driver;
mod events;
mod handle;
mod histogram;
pub(crate) mod metrics;
mod owner;
mod prepared;
pub(crate) mod shared;
mod step;
mod transport;

#[cfg(all(test, loom))]
mod loom_tests;

#[cfg(all(test, not(loom)))]
mod footprint;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use driver::{ConnectTimedOut, CurrentLink};
pub use events::{Event, EventStream, Lagged, SharedError};
pub use handle::{EngineError, Handle, LinkReporter, Snapshot, Stats, WaitError};
pub use histogram::{BUCKET_BOUNDS_MS, BUCKETS, Histogram};
pub use prepared::{FirstConnectError, Prepared};
pub use shared::{LinkEvent, Report};
pub use transport::{Classify, DEFAULT_PROBE_INTERVAL, OpenContext, Transport};

use crate::machine::{Config, Machine};
use handle::{DriverCounters, Inner};
pub(crate) use owner::Owner;
use shared::Shared;

/// A running engine: the driver task, its handle, and the current link.
///
/// The engine runs until [`Engine::shutdown`] (or [`Handle::shutdown`])
/// or until its last owner is dropped: the `Engine` and every
/// [`crate::outbox::Publisher`] made with [`crate::outbox::Publisher::new`]
/// own it; handles only observe. Dropping the last owner asks the driver
/// to shut down gracefully in the background.
///
/// # Examples
///
/// An engine over the in-memory transport (an adapter's transport takes its
/// place in an application): it connects, a link dies, and it opens the
/// next one. Time is tokio's paused clock, so the backoff costs no real time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), redial::runtime::WaitError> {
/// use std::time::Duration;
/// use redial::machine::Config;
/// use redial::runtime::Engine;
/// use redial::testing::MemoryTransport;
///
/// let transport = MemoryTransport::new();
/// let control = transport.control(); // the test's remote control
/// let engine = Engine::spawn(Config::default(), transport);
/// let handle = engine.handle();
/// let first = handle.wait_connected(Duration::from_secs(30)).await?;
///
/// control.sever(); // the link's socket fails and reports its loss
/// let mut snapshots = handle.watch();
/// // Copied out: a held borrow of the watch would block the driver.
/// let replaced = *snapshots
///     .wait_for(|s| s.state.is_link_up() && s.generation > first)
///     .await
///     .expect("the engine is running");
/// assert_eq!(replaced.generation, first.next());
/// assert_eq!(control.max_open_links(), 1); // never two links at once
///
/// engine.shutdown().await;
/// assert_eq!(control.open_links(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Engine<T: Transport> {
    owner: Owner,
    links: watch::Receiver<Option<CurrentLink<T::Link>>>,
    task: JoinHandle<()>,
}

impl<T: Transport> Engine<T> {
    /// Spawns the driver on the current tokio runtime and starts connecting.
    ///
    /// # Panics
    /// When called outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn(config: Config, transport: T) -> Self {
        Self::prepare(config, transport).start()
    }

    /// Builds the engine without starting it: its handle, the first link's
    /// generation and reporter exist, so the application can subscribe to
    /// events, open the first link itself and hand it over
    /// ([`Prepared::adopt`]), connect once without retries
    /// ([`Prepared::connect_once`]), or just [`Prepared::start`].
    pub fn prepare(config: Config, transport: T) -> Prepared<T> {
        let machine = Machine::new(config);
        let channels = driver::channels::<T::Link>(machine.generation());
        let inner = Arc::new(Inner {
            shared: Shared::new(machine.generation(), machine.kind()),
            owners: std::sync::atomic::AtomicUsize::new(1),
            snapshot: channels.snapshot_rx.clone(),
            events: std::sync::OnceLock::new(),
            counters: DriverCounters::default(),
            loss_error: std::sync::Mutex::new(None),
            failure_error: std::sync::Mutex::new(None),
            name: std::sync::OnceLock::new(),
        });
        Prepared::new(machine, transport, Handle { inner }, channels)
    }

    /// Connects once, without retries, and returns the engine supervising
    /// that link; the first failure (or the connect timeout) is returned
    /// to the caller and nothing keeps running. Shorthand for
    /// [`Engine::prepare`] then [`Prepared::connect_once`].
    ///
    /// # Errors
    /// The transport's error, or [`FirstConnectError::TimedOut`].
    pub async fn connect_once(
        config: Config,
        transport: T,
    ) -> Result<Self, FirstConnectError<T::Error>> {
        Self::prepare(config, transport).connect_once().await
    }

    /// A clone of the handle.
    pub fn handle(&self) -> Handle {
        self.owner.handle().clone()
    }

    /// A claim that keeps the engine running (for publishers).
    pub(crate) fn owner(&self) -> Owner {
        self.owner.clone()
    }

    /// The current link (`None` while there is none), for publishers.
    pub fn links(&self) -> watch::Receiver<Option<CurrentLink<T::Link>>> {
        self.links.clone()
    }

    /// Shuts down gracefully, whatever other owners remain (publishers'
    /// messages not yet confirmed resolve with `ShutDown`), and waits for
    /// the driver task to end.
    pub async fn shutdown(mut self) {
        self.owner.handle().shutdown().await;
        let _ = (&mut self.task).await;
    }

    /// Whether the driver task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::machine::StateKind;
    use crate::testing::MemoryTransport;

    /// An engine nobody subscribes to carries no event ring; the first
    /// subscriber makes it, and events flow from then on.
    #[tokio::test(start_paused = true)]
    async fn the_event_ring_is_made_by_the_first_subscriber() {
        let config = Config::builder().seed(1).build().unwrap();
        let transport = MemoryTransport::new();
        let control = transport.control();
        let engine = Engine::spawn(config, transport);
        let handle = engine.handle();
        handle.wait_for(StateKind::Connected).await;
        assert!(
            handle.inner.events.get().is_none(),
            "no subscriber, no ring"
        );

        let mut events = handle.events();
        assert!(handle.inner.events.get().is_some());
        control.sever();
        let event = events
            .recv()
            .await
            .expect("an event after the subscription")
            .expect("no lag");
        assert!(matches!(event, Event::StateChanged { .. }), "{event:?}");

        let prepared = Engine::prepare(
            Config::builder().seed(2).build().unwrap(),
            MemoryTransport::new(),
        );
        let mut early = prepared.events();
        let with_events = prepared.start();
        let first = early
            .recv()
            .await
            .expect("the first event is kept")
            .expect("no lag");
        assert!(
            matches!(
                first,
                Event::StateChanged {
                    to: StateKind::Connecting,
                    ..
                }
            ),
            "{first:?}"
        );
        with_events.shutdown().await;
        engine.shutdown().await;
    }

    /// The error on the next state change caused by a link's loss.
    async fn next_loss_error(events: &mut EventStream) -> Option<SharedError> {
        loop {
            if let Event::StateChanged {
                reason: crate::machine::Reason::LinkLost,
                error,
                ..
            } = events.recv().await.expect("events flow").expect("no lag")
            {
                return error;
            }
        }
    }

    /// A loss reported with its error reaches observers on the loss's own
    /// state change; a loss without one carries none.
    #[tokio::test(start_paused = true)]
    async fn the_error_of_a_loss_reaches_its_state_change() {
        let config = Config::builder().seed(3).build().unwrap();
        let prepared = Engine::prepare(config, MemoryTransport::new());
        let mut events = prepared.handle().events();
        let engine = prepared.start();
        let handle = engine.handle();
        let first = handle.wait_for(StateKind::Connected).await.generation;

        let error: SharedError = Arc::new(std::io::Error::other("reset by peer"));
        handle.report_lost_because(first, crate::machine::ErrorKind::Transient, error);
        let carried = next_loss_error(&mut events).await;
        assert_eq!(
            carried.map(|e| e.to_string()).as_deref(),
            Some("reset by peer")
        );

        let second = loop {
            let snapshot = handle.wait_for(StateKind::Connected).await;
            if snapshot.generation != first {
                break snapshot.generation;
            }
            tokio::task::yield_now().await;
        };
        handle.report_lost(second, crate::machine::ErrorKind::Transient);
        let carried = next_loss_error(&mut events).await;
        assert!(carried.is_none(), "{carried:?}");
        engine.shutdown().await;
    }
}
