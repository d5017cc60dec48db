//! AMQP 0.9.1 adapter on lapin 4 (feature `amqp`).
//!
//! [`AmqpTransport`] implements [`Transport`]: the engine owns reconnection
//! and lapin's own auto-recovery stays off (it rejects every pending
//! confirm on recovery and replays nothing redial can see). Each link is a
//! fresh lapin connection with three channels: topology, publishing
//! (confirms always on) and consuming.
//!
//! * **Death.** A link reports its own death, with its generation, from
//!   three places: the socket (lapin's I/O thread reads a reset or EOF
//!   through redial's probed stream, see below), lapin's connection events
//!   (a broker `connection.close`, lapin's missed-heartbeat error), and the
//!   link's watchdog.
//! * **Liveness.** lapin 4 opens its socket through its runtime kit's
//!   reactor; redial passes a kit whose TCP stream counts inbound bytes
//!   (TLS sits on top of it). Every read is reported as activity to the
//!   engine's liveness watchdog, and the link's own watchdog checks the
//!   negotiated heartbeat H every H/2: a silent link is declared dead
//!   between H and 1.5 x H after its last inbound frame (lapin alone
//!   waits for more than 2 x H). Heartbeats are sent by lapin's I/O thread
//!   and its heartbeat task, never by an application thread.
//! * **Flow control.** `connection.blocked` / `unblocked` become the
//!   engine's Blocked state (the engine's blocked timeout retires a link
//!   blocked too long); lapin writes nothing while blocked, so publishers
//!   wait: backpressure.
//! * **Topology** is a log keyed by identity (re-declaring replaces an
//!   entry in place), replayed in order and pipelined inside `open`, before
//!   the link is handed to publishers ([`topology`](crate::amqp::Queue)).
//!   `connect_timeout` bounds the handshake and each replay answer, not the
//!   whole replay.
//! * **Consumers** get a per-consumer prefetch ([`DEFAULT_PREFETCH`]), so a
//!   slow consumer holds a bounded number of deliveries.
//! * **Errors.** `ACCESS_REFUSED`, `NOT_ALLOWED` (unknown vhost) and TLS
//!   failures are permanent ([`AmqpError`]): the engine gives up at once
//!   unless its configuration allows permanent retries.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use redial::amqp::{AmqpConfig, AmqpTransport, Heartbeat};
//! use redial::runtime::Engine;
//!
//! let config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .connection_name("billing")
//!     .heartbeat(Heartbeat::secs(10));
//! let transport = AmqpTransport::new(config.clone())?;
//! let q = transport.declare_queue("jobs", Default::default(), Default::default()).await?;
//! let engine = Engine::spawn(config.engine_config().build()?, transport.clone());
//! # let _ = (q, engine); Ok(()) }
//! ```

mod config;
mod consume;
mod error;
mod frame_guard;
mod link;
mod probe;
mod publish;
mod reach;
mod topology;

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use lapin::ExchangeKind;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use tokio::sync::{broadcast, mpsc};

pub use config::{
    AmqpConfig, AmqpConfigError, DEFAULT_FRAME_MAX, DEFAULT_PREFETCH, EnvError, Heartbeat,
    REPLAY_ALLOWANCE, ReplayPolicy, negotiate_heartbeat,
};
pub use consume::{Consumer, Delivery};
pub use error::{AckError, AmqpError, codes};
pub use link::AmqpLink;
pub use publish::AmqpMessage;
pub use topology::{Queue, QueueRef};

/// The lapin crate redial was built with (its option and property types
/// appear in this module's API).
pub use lapin;

use crate::machine::{Generation, ProbeOutcome};
use crate::runtime::{OpenContext, Transport};
use link::Role;
use topology::{Entry, Log};

/// A topology entry that failed on replay, as reported by
/// [`AmqpTransport::replay_errors`]. The broker's answer is its
/// [`source`](std::error::Error::source).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "topology replay failed on link {generation} at entry {index} ({entry}); policy {policy:?}"
)]
#[non_exhaustive]
pub struct ReplayError {
    /// The link it failed on.
    pub generation: Generation,
    /// The entry's position in the log.
    pub index: usize,
    /// What the entry declares.
    pub entry: String,
    /// The broker's answer.
    #[source]
    pub error: lapin::Error,
    /// What the replay did about it.
    pub policy: ReplayPolicy,
}

/// The AMQP transport: give a clone to [`crate::runtime::Engine::spawn`]
/// and keep one to declare topology and consume.
///
/// # Examples
///
/// A queue, a consumer and a publisher that all survive reconnects (needs
/// a broker on 127.0.0.1:5672):
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use redial::amqp::{AmqpConfig, AmqpMessage, AmqpTransport};
/// use redial::outbox::{OutboxConfig, Publisher};
/// use redial::runtime::Engine;
///
/// let config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f");
/// let transport = AmqpTransport::new(config.clone())?;
/// // Recorded, and declared again on every new link before publishes flow.
/// let queue = transport.declare_queue("jobs", Default::default(), Default::default()).await?;
/// let mut consumer = transport.consume(&queue, "", Default::default(), Default::default()).await?;
///
/// let engine = Engine::spawn(config.engine_config().build()?, transport.clone());
/// engine.handle().wait_connected(Duration::from_secs(10)).await?;
/// let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
/// let receipt = publisher.publish(AmqpMessage::new("", "jobs", &b"job 1"[..]).persistent()).await;
/// receipt.await?; // the broker's confirm
///
/// if let Some(delivery) = consumer.recv().await {
///     println!("{:?} on link {}", delivery.data(), delivery.generation());
///     delivery.ack().await?;
/// }
/// publisher.shutdown(Duration::from_secs(5)).await;
/// engine.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct AmqpTransport {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) config: AmqpConfig,
    /// One per endpoint, in the configuration's order.
    pub(crate) uris: Vec<AMQPUri>,
    /// The log; held across a replay and across every live declaration so
    /// that the two never interleave.
    pub(crate) topology: tokio::sync::Mutex<Log>,
    /// The link `open` last returned (cleared when it is closed).
    pub(crate) current: Mutex<Option<AmqpLink>>,
    pub(crate) replay_errors: broadcast::Sender<ReplayError>,
    /// Negotiated heartbeat of the last link, in seconds, plus one (0: none yet).
    pub(crate) negotiated_heartbeat: AtomicU32,
    /// Prefix of the `message_id` of every publish.
    pub(crate) message_id_prefix: String,
}

impl AmqpTransport {
    /// A transport for `config`.
    ///
    /// # Errors
    /// [`AmqpError::InvalidUri`] when a URI does not parse;
    /// [`AmqpError::Config`] when the configuration cannot work (TLS
    /// settings with an `amqp://` URI, a duration out of range, endpoints
    /// of one cluster that differ in credentials or vhost, a URI query
    /// parameter that contradicts a setter).
    pub fn new(config: AmqpConfig) -> Result<Self, AmqpError> {
        let mut uris = config
            .uris
            .iter()
            .map(|uri| {
                uri.parse::<AMQPUri>()
                    .map_err(|reason| AmqpError::InvalidUri {
                        uri: crate::redact::uri(uri),
                        reason,
                    })
            })
            .collect::<Result<Vec<_>, AmqpError>>()?;
        // Sets the negotiated parameters (the URIs' own or the setters').
        config.check(&mut uris)?;
        let (replay_errors, _) = broadcast::channel(64);
        let message_id_prefix = config.message_id_prefix.clone().unwrap_or_else(|| {
            use std::hash::{BuildHasher, RandomState};
            format!("{:016x}", RandomState::new().hash_one(std::process::id()))
        });
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                uris,
                topology: tokio::sync::Mutex::new(Log::default()),
                current: Mutex::new(None),
                replay_errors,
                negotiated_heartbeat: AtomicU32::new(0),
                message_id_prefix,
            }),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &AmqpConfig {
        &self.shared.config
    }

    /// The prefix of every `message_id` this transport sets (`{prefix}-{id}`).
    pub fn message_id_prefix(&self) -> &str {
        &self.shared.message_id_prefix
    }

    /// The heartbeat negotiated on the last link (`Some(None)`: disabled;
    /// `None`: no link opened yet).
    pub fn negotiated_heartbeat(&self) -> Option<Option<Duration>> {
        match self.shared.negotiated_heartbeat.load(Ordering::Relaxed) {
            0 => None,
            1 => Some(None),
            n => Some(Some(Duration::from_secs(u64::from(n - 1)))),
        }
    }

    /// The link `open` last returned, while it is open.
    pub fn current_link(&self) -> Option<AmqpLink> {
        self.shared.current()
    }

    /// Topology entries that failed on replay, from now on.
    pub fn replay_errors(&self) -> broadcast::Receiver<ReplayError> {
        self.shared.replay_errors.subscribe()
    }

    /// How many entries the topology log holds: one per distinct exchange,
    /// queue, binding, QoS scope and consumer, plus the deletes and unbinds
    /// that have not reached the broker yet.
    pub async fn topology_len(&self) -> usize {
        self.shared.topology.lock().await.len()
    }

    /// Declares an exchange: recorded, and applied now if a link is up.
    ///
    /// Every topology method works the same way: `Ok` means recorded and,
    /// when a link is up, applied to it (a declaration that could not reach
    /// the broker because the link died is applied by the next link's
    /// replay, before any publish flows).
    ///
    /// # Errors
    /// [`AmqpError::Channel`] when the broker refused it (a soft error such
    /// as `PRECONDITION_FAILED`): nothing is recorded and the topology
    /// channel is reopened.
    pub async fn declare_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeDeclareOptions,
        args: FieldTable,
    ) -> Result<(), AmqpError> {
        self.shared
            .record(Entry::ExchangeDeclare {
                name: name.to_owned(),
                kind,
                options,
                args,
            })
            .await
    }

    /// Deletes an exchange (and forgets its declaration and bindings).
    ///
    /// # Errors
    /// As [`AmqpTransport::declare_exchange`].
    pub async fn delete_exchange(
        &self,
        name: &str,
        options: ExchangeDeleteOptions,
    ) -> Result<(), AmqpError> {
        self.shared
            .record(Entry::ExchangeDelete {
                name: name.to_owned(),
                options,
            })
            .await
    }

    /// Binds exchange `destination` to `source`.
    ///
    /// # Errors
    /// As [`AmqpTransport::declare_exchange`].
    pub async fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        args: FieldTable,
    ) -> Result<(), AmqpError> {
        self.shared
            .record(Entry::ExchangeBind {
                destination: destination.to_owned(),
                source: source.to_owned(),
                routing_key: routing_key.to_owned(),
                args,
            })
            .await
    }

    /// Unbinds exchange `destination` from `source`.
    ///
    /// # Errors
    /// As [`AmqpTransport::declare_exchange`].
    pub async fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        args: FieldTable,
    ) -> Result<(), AmqpError> {
        self.shared
            .record(Entry::ExchangeUnbind {
                destination: destination.to_owned(),
                source: source.to_owned(),
                routing_key: routing_key.to_owned(),
                args,
            })
            .await
    }

    /// Declares a queue; an empty `name` asks the broker to name it (anew on
    /// every link: the returned [`Queue`] always has the current name, and
    /// the bindings and consumers that use it follow).
    ///
    /// # Errors
    /// As [`AmqpTransport::declare_exchange`].
    pub async fn declare_queue(
        &self,
        name: &str,
        options: QueueDeclareOptions,
        args: FieldTable,
    ) -> Result<Queue, AmqpError> {
        let mut log = self.shared.topology.lock().await;
        let queue = Queue {
            id: log.next_id(),
            name: Arc::new(RwLock::new(name.to_owned())),
            server_named: name.is_empty(),
        };
        let entry = Entry::QueueDeclare {
            queue: queue.clone(),
            options,
            args,
        };
        self.shared.apply_and_record(&mut log, entry).await?;
        Ok(queue)
    }

    /// Deletes a queue (and forgets its declaration, bindings and consumers).
    ///
    /// # Errors
    /// As [`AmqpTransport::declare_exchange`].
    pub async fn delete_queue(
        &self,
        queue: impl Into<QueueRef>,
        options: QueueDeleteOptions,
    ) -> Result<(), AmqpError> {
        self.shared
            .record(Entry::QueueDelete {
                queue: queue.into(),
                options,
            })
            .await
    }

    /// Binds a queue to an exchange.
    ///
    /// # Errors
    /// As [`AmqpTransport::declare_exchange`].
    pub async fn bind_queue(
        &self,
        queue: impl Into<QueueRef>,
        exchange: &str,
        routing_key: &str,
        args: FieldTable,
    ) -> Result<(), AmqpError> {
        self.shared
            .record(Entry::QueueBind {
                queue: queue.into(),
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                args,
            })
            .await
    }

    /// Unbinds a queue from an exchange.
    ///
    /// # Errors
    /// As [`AmqpTransport::declare_exchange`].
    pub async fn unbind_queue(
        &self,
        queue: impl Into<QueueRef>,
        exchange: &str,
        routing_key: &str,
        args: FieldTable,
    ) -> Result<(), AmqpError> {
        self.shared
            .record(Entry::QueueUnbind {
                queue: queue.into(),
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                args,
            })
            .await
    }

    /// Sets the consumer channel's prefetch (`global`: per channel rather
    /// than per consumer). Applies to consumers started after it.
    ///
    /// # Errors
    /// As [`AmqpTransport::declare_exchange`].
    pub async fn qos(&self, prefetch_count: u16, global: bool) -> Result<(), AmqpError> {
        self.shared
            .record(Entry::Qos {
                prefetch_count,
                global,
            })
            .await
    }

    /// Starts a consumer that survives reconnects. An empty `tag` lets the
    /// broker name it (on every link).
    ///
    /// # Errors
    /// As [`AmqpTransport::declare_exchange`] (e.g. `NOT_FOUND` for a queue
    /// that does not exist).
    pub async fn consume(
        &self,
        queue: impl Into<QueueRef>,
        tag: &str,
        options: BasicConsumeOptions,
        args: FieldTable,
    ) -> Result<Consumer, AmqpError> {
        let (sink, rx) = mpsc::channel(self.shared.config.consumer_buffer);
        let mut log = self.shared.topology.lock().await;
        let id = log.next_id();
        let entry = Entry::Consume {
            id,
            queue: queue.into(),
            tag: tag.to_owned(),
            options,
            args,
            sink,
        };
        self.shared.apply_and_record(&mut log, entry).await?;
        Ok(Consumer {
            id,
            rx,
            shared: Arc::downgrade(&self.shared),
        })
    }
}

/// Redacted: the parsed URI is left out (the config shows it, password hidden).
impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("negotiated_heartbeat", &self.negotiated_heartbeat)
            .field("message_id_prefix", &self.message_id_prefix)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn current(&self) -> Option<AmqpLink> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(AmqpLink::is_alive)
    }

    async fn record(self: &Arc<Self>, entry: Entry) -> Result<(), AmqpError> {
        let mut log = self.topology.lock().await;
        self.apply_and_record(&mut log, entry).await
    }

    /// Applies `entry` to the current link (if any) and records it, unless
    /// the broker refused it.
    async fn apply_and_record(
        self: &Arc<Self>,
        log: &mut Log,
        entry: Entry,
    ) -> Result<(), AmqpError> {
        let mut applied = false;
        if let Some(link) = self.current() {
            let answer = tokio::time::timeout(
                self.config.connect_timeout,
                link::apply(self, &link, &entry),
            )
            .await;
            match answer {
                Ok(Ok(())) => applied = true,
                Ok(Err(e)) if !error::is_connection_error(&e) && link.is_alive() => {
                    return Err(AmqpError::Channel(e));
                }
                // The link died under it, or did not answer: the next
                // replay applies it.
                Ok(Err(_)) | Err(_) => {}
            }
        }
        log.record(entry, applied);
        Ok(())
    }

    pub(crate) async fn cancel_consumer(self: &Arc<Self>, id: u64) {
        let removed = self.topology.lock().await.remove_consumer(id);
        if removed.is_some()
            && let Some(link) = self.current()
        {
            link::cancel_on(&link, id).await;
        }
    }

    /// Reopens `link`'s consumer channel after the broker closed it and
    /// starts its consumers again (once per channel epoch).
    pub(crate) async fn restart_consumers(self: &Arc<Self>, link: AmqpLink, epoch: u64) {
        let log = self.topology.lock().await;
        if !link.is_alive() || link.inner.consume_state.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if link.inner.channel_open(Role::Consume).await {
            // The broker cancelled one consumer (its queue was deleted),
            // the channel is fine: nothing to restart.
            tracing::warn!(
                generation = link.generation().0,
                "a consumer was cancelled by the broker"
            );
            return;
        }
        if let Err(e) = link.inner.channel(Role::Consume).await {
            tracing::warn!(generation = link.generation().0, error = %crate::chain::Chain(&e), "consumer channel reopen failed");
            return;
        }
        if let Err(e) = link::replay_consumers(self, &link, &log).await {
            tracing::warn!(generation = link.generation().0, error = %crate::chain::Chain(&e), "consumer restart failed");
        }
    }
}

impl Transport for AmqpTransport {
    type Link = AmqpLink;
    type Error = AmqpError;

    fn open(
        &self,
        ctx: OpenContext,
    ) -> impl Future<Output = Result<AmqpLink, AmqpError>> + Send + 'static {
        link::open(self.shared.clone(), ctx)
    }

    fn close(
        &self,
        link: AmqpLink,
        reason: crate::machine::Reason,
    ) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            tracing::debug!(?reason, "closing the AMQP connection");
            let timeout = shared.config.close_timeout;
            link::close(&shared, link, reason, timeout).await;
        }
    }

    /// `host:port` of the endpoint's URI: never its user info.
    fn peer(&self, endpoint: usize) -> Option<String> {
        let uri = self.shared.uris.get(endpoint)?;
        Some(format!("{}:{}", uri.authority.host, uri.authority.port))
    }

    /// A TCP connect and the protocol header, no session (see docs/amqp.md).
    fn probe(&self, endpoint: usize) -> impl Future<Output = ProbeOutcome> + Send + 'static {
        // An endpoint out of range: let the open report it.
        let probe = self.shared.uris.get(endpoint).map(reach::probe);
        async move {
            match probe {
                Some(probe) => probe.await,
                None => ProbeOutcome::Reachable,
            }
        }
    }
}
