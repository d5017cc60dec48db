//! An engine built but not started: the first link's identity exists
//! before anything runs, so the application can bind callbacks to it, open
//! the first link itself and hand it over (docs/spec.md, 12, *Adoption*).

use std::sync::Arc;

use tracing::Instrument;

use crate::chain::Chain;
use crate::machine::{Generation, Machine};
use crate::runtime::Engine;
use crate::runtime::driver::{Channels, ConnectTimedOut, Driver};
use crate::runtime::events::{Event, EventStream};
use crate::runtime::handle::{Handle, LinkReporter};
use crate::runtime::transport::{Classify, OpenContext, Transport};

/// Why [`Prepared::connect_once`] returned no engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirstConnectError<E: std::error::Error + 'static> {
    /// The transport could not open the first link (shared with the
    /// `AttemptFailed` event of the first attempt).
    #[error("the first connect failed")]
    Failed(#[source] Arc<E>),
    /// The first link took longer than the configured connect timeout.
    #[error(transparent)]
    TimedOut(ConnectTimedOut),
}

/// An engine that exists but does not run yet: see [`Engine::prepare`].
/// Dropping it drops the engine; nothing was started.
///
/// # Examples
///
/// A client's `connect()` that fails to its caller instead of retrying,
/// and retries once it has connected ([`Prepared::connect_once`]):
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use futures::StreamExt;
/// use redial::machine::{Config, ErrorKind};
/// use redial::runtime::{Engine, Event, FirstConnectError};
/// use redial::testing::{MemoryTransport, Plan};
///
/// let transport = MemoryTransport::new();
/// transport.control().plan([Plan::Fail(ErrorKind::Transient)]);
///
/// // The broker refuses: the error goes to the caller, nothing keeps running.
/// let refused = Engine::prepare(Config::default(), transport.clone())
///     .connect_once()
///     .await;
/// assert!(matches!(refused, Err(FirstConnectError::Failed(_))));
///
/// // Called again, it connects; the engine then supervises the link.
/// let prepared = Engine::prepare(Config::default(), transport);
/// let mut events = prepared.events(); // from the very first event
/// let first = prepared.generation();
/// let engine = prepared.connect_once().await?;
/// assert_eq!(engine.handle().wait_connected(Duration::from_secs(1)).await?, first);
/// // The first link's open is not an attempt of the engine: attempt 0.
/// let started = events.next().await;
/// assert!(matches!(started, Some(Ok(Event::AttemptStarted { attempt: 0, .. }))));
/// engine.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct Prepared<T: Transport> {
    machine: Machine,
    transport: T,
    handle: Handle,
    channels: Channels<T::Link>,
    name: Option<Arc<str>>,
}

impl<T: Transport> std::fmt::Debug for Prepared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("machine", &self.machine)
            .field("handle", &self.handle)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Prepared<T> {
    pub(crate) fn new(
        machine: Machine,
        transport: T,
        handle: Handle,
        channels: Channels<T::Link>,
    ) -> Self {
        Self {
            machine,
            transport,
            handle,
            channels,
            name: None,
        }
    }

    /// Names the engine, for observers: the `engine` field of its spans and
    /// the `engine` label of its metrics (docs/observability.md), and
    /// [`Handle::name`] once it starts. Without a name the field is absent
    /// and the label empty. Its configuration is not involved: one
    /// [`crate::machine::Config`] can serve several named engines.
    ///
    /// The engine's span is made when it starts, as a child of the span
    /// current then: start it inside an application span to nest the
    /// engine's logs under it.
    #[must_use]
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The engine's span: named `redial`, with the `engine` field, a child
    /// of the caller's current span.
    fn span(&self) -> tracing::Span {
        tracing::info_span!("redial", engine = self.name.as_deref())
    }

    /// The engine's handle, usable before it starts (subscribe to
    /// [`Handle::events`] here to see every event from the first).
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The generation the first link gets: the configuration's
    /// [`first_generation`](crate::machine::Config::first_generation).
    pub fn generation(&self) -> Generation {
        self.machine.generation()
    }

    /// The endpoint the first link must go to (an index into the
    /// transport's list; 0 with one endpoint).
    pub fn endpoint(&self) -> usize {
        self.machine.endpoint() as usize
    }

    /// A reporter bound to the first link: what the callbacks of a
    /// connection the application builds itself capture.
    pub fn reporter(&self) -> LinkReporter {
        self.handle.reporter(self.generation())
    }

    /// The context the transport's `open` would get for the first link
    /// (attempt 0: it is not an attempt of the engine).
    pub fn open_context(&self) -> OpenContext {
        OpenContext {
            generation: self.generation(),
            attempt: 0,
            endpoint: self.endpoint(),
            reporter: self.reporter(),
        }
    }

    /// Starts the engine: it opens its first link and retries per the
    /// configuration.
    ///
    /// # Panics
    /// When called outside a tokio runtime, as `tokio::spawn` does.
    pub fn start(self) -> Engine<T> {
        let span = self.span();
        self.run(None, span)
    }

    /// Starts the engine on a link the application opened itself for
    /// [`Prepared::generation`] (with callbacks reporting through
    /// [`Prepared::reporter`]): the engine supervises it from now on and
    /// replaces it when it is lost, as if it had opened it.
    ///
    /// # Panics
    /// When called outside a tokio runtime, as `tokio::spawn` does.
    pub fn adopt(self, link: T::Link) -> Engine<T> {
        let span = self.span();
        self.run(Some(link), span)
    }

    /// Opens the first link once, through the transport, with the connect
    /// timeout, and adopts it: a client's `connect()` that must fail to its
    /// caller instead of retrying. On failure nothing was started and the
    /// error is returned; once connected, later losses are retried per the
    /// configuration.
    ///
    /// # Errors
    /// The transport's error, or [`FirstConnectError::TimedOut`].
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub async fn connect_once(self) -> Result<Engine<T>, FirstConnectError<T::Error>> {
        let ctx = self.open_context();
        let (generation, endpoint) = (ctx.generation, ctx.endpoint);
        let inner = &self.handle.inner;
        inner.emit(Event::AttemptStarted {
            generation,
            attempt: 0,
            endpoint,
        });
        let span = self.span();
        let link_span = span.in_scope(|| {
            crate::runtime::driver::link_span(&self.transport, generation, Some(0), Some(endpoint))
        });
        let open = link_span
            .in_scope(|| self.transport.open(ctx))
            .instrument(link_span);
        let opened = match self.machine.config().connect_timeout() {
            Some(after) => match tokio::time::timeout(after, open).await {
                Ok(opened) => opened,
                Err(_) => {
                    let timed_out = ConnectTimedOut { after };
                    inner.emit(Event::AttemptFailed {
                        generation,
                        attempt: 0,
                        endpoint,
                        kind: crate::machine::ErrorKind::Transient,
                        error: Arc::new(timed_out),
                    });
                    return Err(FirstConnectError::TimedOut(timed_out));
                }
            },
            None => open.await,
        };
        match opened {
            Ok(link) => Ok(self.run(Some(link), span)),
            Err(error) => {
                span.in_scope(
                    || tracing::warn!(error = %Chain(&error), "the first connect failed"),
                );
                let error = Arc::new(error);
                inner.emit(Event::AttemptFailed {
                    generation,
                    attempt: 0,
                    endpoint,
                    kind: error.kind(),
                    error: error.clone(),
                });
                Err(FirstConnectError::Failed(error))
            }
        }
    }

    fn run(self, adopted: Option<T::Link>, span: tracing::Span) -> Engine<T> {
        let Channels {
            snapshot_tx,
            snapshot_rx: _,
            links_tx,
        } = self.channels;
        let links = links_tx.subscribe();
        let inner = Arc::clone(&self.handle.inner);
        if let Some(name) = self.name {
            // Set once: `run` consumes the only `Prepared`.
            let _ = inner.name.set(name);
        }
        let driver = Driver::new(self.machine, self.transport, inner, snapshot_tx, links_tx);
        let task = tokio::spawn(driver.run(adopted).instrument(span));
        Engine {
            owner: crate::runtime::Owner::first(self.handle),
            links,
            task,
        }
    }

    /// Every event from the very first (the first `idle -> connecting`
    /// included), as a [`futures::Stream`]: subscribe here, then start.
    pub fn events(&self) -> EventStream {
        self.handle.events()
    }
}
