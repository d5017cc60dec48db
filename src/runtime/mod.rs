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

mod driver;
mod events;
mod handle;
pub(crate) mod shared;
mod step;
mod transport;

#[cfg(all(test, loom))]
mod loom_tests;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use driver::{ConnectTimedOut, CurrentLink};
pub use events::{Event, SharedError};
pub use handle::{EngineError, Handle, LinkReporter, Snapshot, Stats};
pub use shared::{LinkEvent, Report};
pub use transport::{Classify, DEFAULT_PROBE_INTERVAL, OpenContext, Transport};

use crate::machine::{Config, Machine};
use handle::{DriverCounters, Inner};
use shared::Shared;

/// A running engine: the driver task, its handle, and the current link.
#[derive(Debug)]
pub struct Engine<T: Transport> {
    handle: Handle,
    links: watch::Receiver<Option<CurrentLink<T::Link>>>,
    task: JoinHandle<()>,
}

impl<T: Transport> Engine<T> {
    /// Spawns the driver on the current tokio runtime and starts connecting.
    ///
    /// # Panics
    /// When called outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn(config: Config, transport: T) -> Self {
        Self::start(config, transport, |_| ())
    }

    /// Like [`Engine::spawn`], and also returns a subscription to the
    /// engine's events taken before the driver starts, so that not even the
    /// first attempt's events can be missed.
    ///
    /// # Panics
    /// When called outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn_with_events(
        config: Config,
        transport: T,
    ) -> (Self, tokio::sync::broadcast::Receiver<Event>) {
        let mut events = None;
        let engine = Self::start(config, transport, |handle| {
            events = Some(handle.events());
        });
        (
            engine,
            events.expect("subscribed before the driver started"),
        )
    }

    /// Builds the engine, lets `before` see its handle, then starts the driver.
    fn start(config: Config, transport: T, before: impl FnOnce(&Handle)) -> Self {
        let machine = Machine::new(config);
        let driver::Channels {
            snapshot_tx,
            snapshot_rx,
            links_tx,
        } = driver::channels::<T::Link>();
        let links = links_tx.subscribe();
        let inner = Arc::new(Inner {
            shared: Shared::new(machine.generation(), machine.kind()),
            snapshot: snapshot_rx,
            events: std::sync::OnceLock::new(),
            counters: DriverCounters::default(),
        });
        let handle = Handle {
            inner: inner.clone(),
        };
        before(&handle);
        let driver = driver::Driver::new(machine, transport, inner, snapshot_tx, links_tx);
        let task = tokio::spawn(tracing::Instrument::instrument(
            driver.run(),
            tracing::info_span!("redial"),
        ));
        Self {
            handle,
            links,
            task,
        }
    }

    /// A clone of the handle.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The current link (`None` while there is none), for publishers.
    pub fn links(&self) -> watch::Receiver<Option<CurrentLink<T::Link>>> {
        self.links.clone()
    }

    /// Shuts down gracefully and waits for the driver task to end.
    pub async fn shutdown(mut self) {
        self.handle.shutdown().await;
        let _ = (&mut self.task).await;
    }

    /// Whether the driver task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl<T: Transport> Drop for Engine<T> {
    /// Dropping the engine asks the driver to shut down gracefully in the
    /// background (handles keep working until it has); call
    /// [`Engine::shutdown`] to wait for it.
    fn drop(&mut self) {
        if !self.task.is_finished() {
            self.handle.inner.shared.command(false, true);
        }
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
            .expect("an event after the subscription");
        assert!(matches!(event, Event::StateChanged { .. }), "{event:?}");

        let (with_events, mut early) = Engine::spawn_with_events(
            Config::builder().seed(2).build().unwrap(),
            MemoryTransport::new(),
        );
        let first = early.recv().await.expect("the first event is kept");
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
}
