//! One AMQP link: a lapin connection, its three channels, its tasks.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use lapin::options::{
    BasicCancelOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeBindOptions,
    ExchangeUnbindOptions, QueueBindOptions,
};
use lapin::tcp::AsyncTcpStream;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::amqp::consume::{ConsumeState, ForwardEnd, forward};
use crate::amqp::error::{AmqpError, is_connection_error, is_refusal};
use crate::amqp::probe::{Probe, ProbeKit};
use crate::amqp::topology::{Entry, Key, Log};
use crate::amqp::{ReplayError, ReplayPolicy, Shared};
use crate::machine::{ErrorKind, Generation};
use crate::runtime::OpenContext;

/// An open AMQP link: what the engine hands to publishers.
#[derive(Debug, Clone)]
pub struct AmqpLink {
    pub(crate) inner: Arc<LinkInner>,
}

/// Which of the link's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Topology,
    Publish,
    Consume,
}

#[derive(Debug)]
pub(crate) struct LinkInner {
    pub(crate) generation: Generation,
    /// The endpoint (an index into the configuration's URIs).
    pub(crate) endpoint: usize,
    pub(crate) connection: Connection,
    pub(crate) probe: Arc<Probe>,
    pub(crate) heartbeat: Option<Duration>,
    /// The default per-consumer prefetch of the consumer channel (0: none).
    prefetch: u16,
    topology: tokio::sync::Mutex<Channel>,
    publish: tokio::sync::Mutex<Channel>,
    consume: tokio::sync::Mutex<Channel>,
    pub(crate) consume_state: Arc<ConsumeState>,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Consumer id -> (its tag on this link, its forwarder).
    consumers: Mutex<HashMap<u64, (String, AbortHandle)>>,
}

impl AmqpLink {
    /// The link's generation.
    pub fn generation(&self) -> Generation {
        self.inner.generation
    }

    /// The endpoint the link is connected to: an index into
    /// [`crate::amqp::AmqpConfig::uris`].
    pub fn endpoint(&self) -> usize {
        self.inner.endpoint
    }

    /// The negotiated heartbeat timeout (`None`: disabled).
    pub fn heartbeat(&self) -> Option<Duration> {
        self.inner.heartbeat
    }

    /// Whether the link is still usable (not reported lost, not closed).
    pub fn is_alive(&self) -> bool {
        self.inner.is_alive()
    }

    /// The lapin connection (an escape hatch: channels opened on it are not
    /// recorded or replayed).
    pub fn connection(&self) -> &Connection {
        &self.inner.connection
    }

    /// The link's publishing channel (confirms on), reopened if the broker
    /// closed it.
    ///
    /// # Errors
    /// [`AmqpError::Connection`] when the link is gone.
    pub async fn publish_channel(&self) -> Result<Channel, AmqpError> {
        self.inner.channel(Role::Publish).await
    }
}

impl LinkInner {
    pub(crate) fn is_alive(&self) -> bool {
        !self.probe.is_lost() && !self.probe.is_killed() && self.connection.status().connected()
    }

    fn slot(&self, role: Role) -> &tokio::sync::Mutex<Channel> {
        match role {
            Role::Topology => &self.topology,
            Role::Publish => &self.publish,
            Role::Consume => &self.consume,
        }
    }

    /// The channel for `role`, reopened if the broker closed it (a channel
    /// error reopens the channel, never the connection). A channel whose
    /// close has begun is not `connected`: it is replaced by a new channel
    /// (lapin gives it a new id), never written to again.
    pub(crate) async fn channel(&self, role: Role) -> Result<Channel, AmqpError> {
        self.channel_or_reopen(role)
            .await
            .map(|(channel, _)| channel)
    }

    /// Like [`Self::channel`], and whether the channel had to be reopened
    /// (one lock: the publish path asks this for every message).
    pub(crate) async fn channel_or_reopen(&self, role: Role) -> Result<(Channel, bool), AmqpError> {
        let mut slot = self.slot(role).lock().await;
        if slot.status().connected() {
            return Ok((slot.clone(), false));
        }
        if !self.is_alive() {
            return Err(AmqpError::Connection(
                lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed).into(),
            ));
        }
        let channel = open_channel(&self.connection, role, self.prefetch)
            .await
            .map_err(AmqpError::Connection)?;
        tracing::info!(
            generation = self.generation.0,
            ?role,
            "amqp channel reopened"
        );
        if role == Role::Consume {
            self.consume_state.epoch.fetch_add(1, Ordering::AcqRel);
        }
        *slot = channel.clone();
        Ok((channel, true))
    }

    /// Closes channel number `id` if it is still the one for `role`, so
    /// that the next use opens a fresh one (the same path as a broker's
    /// channel close).
    pub(crate) async fn retire_channel(&self, role: Role, id: u16) {
        let slot = self.slot(role).lock().await;
        if slot.id() != id || !slot.status().connected() {
            return;
        }
        tracing::info!(
            generation = self.generation.0,
            ?role,
            channel = id,
            "amqp channel retired after a nack"
        );
        let _ = slot.close(200, "redial: retired after a nack".into()).await;
    }

    /// Whether the channel for `role` is open.
    pub(crate) async fn channel_open(&self, role: Role) -> bool {
        self.slot(role).lock().await.status().connected()
    }

    fn add_task(&self, task: AbortHandle) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    fn abort_tasks(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        for (_, (_, t)) in self
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            t.abort();
        }
    }
}

async fn open_channel(
    connection: &Connection,
    role: Role,
    prefetch: u16,
) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    if role == Role::Publish {
        // Publisher confirms are always on.
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    if role == Role::Consume && prefetch > 0 {
        // Per consumer, for the consumers started after it: the broker
        // never has more than `prefetch` unacked deliveries in flight to
        // one consumer, so lapin's unbounded queue stays bounded. A
        // recorded QoS entry, replayed after it, overrides it.
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await?;
    }
    Ok(channel)
}

/// Kills what an aborted or failed open had built.
struct OpenGuard {
    probe: Arc<Probe>,
    tasks: Vec<AbortHandle>,
    armed: bool,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.armed {
            self.probe.set_closing();
            self.probe.kill();
            for t in &self.tasks {
                t.abort();
            }
        }
    }
}

/// Opens link `ctx.generation`: connect, channels, topology replay.
pub(crate) async fn open(shared: Arc<Shared>, ctx: OpenContext) -> Result<AmqpLink, AmqpError> {
    let generation = ctx.generation;
    let probe = Probe::new(ctx.reporter.clone());
    let mut guard = OpenGuard {
        probe: probe.clone(),
        tasks: Vec::new(),
        armed: true,
    };
    let config = &shared.config;
    let uri = shared
        .uris
        .get(ctx.endpoint)
        .cloned()
        .ok_or(AmqpError::NoSuchEndpoint {
            endpoint: ctx.endpoint,
            endpoints: shared.uris.len(),
        })?;
    // Frame-level guard on the socket, where it carries frames (not TLS).
    probe.set_plaintext(uri.scheme == AMQPScheme::AMQP);
    let mut properties = ConnectionProperties::default();
    if let Some(name) = &config.connection_name {
        properties = properties.with_connection_name(name.as_str().into());
    }
    let runtime = async_rs::Runtime::new(ProbeKit::new(probe.clone()));
    let tls = config.tls.clone();
    let tls_probe = probe.clone();
    let connector = async move |uri: AMQPUri, runtime: async_rs::Runtime<ProbeKit>| {
        let addrs = runtime.to_socket_addrs((uri.authority.host.clone(), uri.authority.port));
        let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
        match uri.scheme {
            AMQPScheme::AMQP => Ok(stream),
            AMQPScheme::AMQPS => match stream.into_tls(&uri.authority.host, tls.as_ref()).await {
                Ok(stream) => Ok(stream),
                Err(e) => {
                    // A reset or EOF mid-handshake is the network; anything
                    // else (bad certificate, not TLS at all) will not heal.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::BrokenPipe
                    ) {
                        // Kept whole for `AmqpError::Tls`; lapin's copy is
                        // replaced by it below.
                        let kind = e.kind();
                        tls_probe.set_tls_failure(e);
                        return Err(lapin::Error::from(std::io::Error::from(kind)));
                    }
                    Err(lapin::Error::from(e))
                }
            },
        }
    };
    // The connect timeout bounds the handshake (TCP, TLS, AMQP, channels);
    // the replay below has its own, per-answer budget.
    let handshake_deadline = tokio::time::Instant::now() + config.connect_timeout;
    // What a refusal names (user, vhost, host): the connector takes `uri`.
    let target = uri.clone();
    let connection = tokio::time::timeout_at(
        handshake_deadline,
        Connection::connector(uri, runtime, connector, properties),
    )
    .await
    .map_err(|_| timed_out("AMQP handshake", config.connect_timeout))?
    .map_err(|e| match probe.tls_failure() {
        Some(source) => AmqpError::Tls {
            host: target.authority.host.clone(),
            source,
        },
        None => AmqpError::from_connect(e, &target),
    })?;

    // Connection-level events: errors, blocked, unblocked. lapin only sends
    // events while someone listens, so listen before anything else.
    let events = connection.events_listener();
    // The link's tasks log in the link's span (docs/observability.md).
    let monitor = tokio::spawn(monitor(events, probe.clone()).in_current_span());
    guard.tasks.push(monitor.abort_handle());
    if !connection.status().connected() {
        return Err(AmqpError::Connection(
            lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed).into(),
        ));
    }

    let negotiated = connection.configuration().heartbeat();
    let heartbeat = (negotiated > 0).then(|| Duration::from_secs(u64::from(negotiated)));
    shared
        .negotiated_heartbeat
        .store(u32::from(negotiated) + 1, Ordering::Relaxed);
    if heartbeat.is_none() {
        tracing::warn!(
            generation = generation.0,
            "heartbeats are disabled on this link: an idle half-open link goes unnoticed"
        );
    }

    // Three round trips at once rather than in a row: recovery time.
    let (topology, publish, consume) = tokio::time::timeout_at(handshake_deadline, async {
        futures::try_join!(
            open_channel(&connection, Role::Topology, 0),
            open_channel(&connection, Role::Publish, 0),
            open_channel(&connection, Role::Consume, config.prefetch),
        )
    })
    .await
    .map_err(|_| timed_out("opening the channels", config.connect_timeout))?
    .map_err(|e| AmqpError::from_connect(e, &target))?;
    let link = AmqpLink {
        inner: Arc::new(LinkInner {
            generation,
            endpoint: ctx.endpoint,
            connection,
            probe: probe.clone(),
            heartbeat,
            prefetch: config.prefetch,
            topology: tokio::sync::Mutex::new(topology),
            publish: tokio::sync::Mutex::new(publish),
            consume: tokio::sync::Mutex::new(consume),
            consume_state: Arc::new(ConsumeState {
                probe: probe.clone(),
                epoch: std::sync::atomic::AtomicU64::new(0),
            }),
            tasks: Mutex::new(Vec::new()),
            consumers: Mutex::new(HashMap::new()),
        }),
    };

    // The link's own watchdog on the negotiated heartbeat: dead between H
    // and 1.5 x H after the last inbound byte, whatever the engine's
    // liveness timeout (lapin alone waits for 2 x H, checked every H/2).
    if let Some(h) = heartbeat {
        let task = tokio::spawn(watchdog(probe.clone(), h).in_current_span());
        guard.tasks.push(task.abort_handle());
    }

    // Replay the topology, in order, and publish the link as current while
    // holding the log: no declaration can slip between the two.
    {
        let mut log = shared.topology.lock().await;
        replay(&shared, &link, &mut log).await?;
        *shared.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(link.clone());
    }

    for t in guard.tasks.drain(..) {
        link.inner.add_task(t);
    }
    guard.armed = false;
    tracing::info!(
        generation = generation.0,
        attempt = ctx.attempt,
        heartbeat_s = negotiated,
        "amqp link open"
    );
    Ok(link)
}

/// Turns lapin's connection events into reports.
async fn monitor(mut events: impl futures::Stream<Item = lapin::Event> + Unpin, probe: Arc<Probe>) {
    while let Some(event) = events.next().await {
        match event {
            lapin::Event::Error(e) => {
                if is_connection_error(&e) {
                    let kind = if is_refusal(&e) {
                        ErrorKind::Permanent
                    } else {
                        ErrorKind::Transient
                    };
                    probe.lost(kind, &e);
                } else {
                    // A channel closed by the broker: reopened on next use.
                    tracing::info!(generation = probe.reporter().generation().0, %e, "amqp channel closed by the broker");
                }
            }
            lapin::Event::ConnectionBlocked(reason) => {
                tracing::warn!(generation = probe.reporter().generation().0, %reason, "broker blocked the connection");
                probe.reporter().blocked();
            }
            lapin::Event::ConnectionUnblocked => {
                tracing::info!(
                    generation = probe.reporter().generation().0,
                    "broker unblocked the connection"
                );
                probe.reporter().unblocked();
            }
            _ => {}
        }
    }
}

/// Declares the link dead after `heartbeat` of inbound silence, checking
/// every half heartbeat (two missed checks: between H and 1.5 x H).
async fn watchdog(probe: Arc<Probe>, heartbeat: Duration) {
    let mut tick = tokio::time::interval(heartbeat / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let silence = probe.silence();
        if silence >= heartbeat {
            probe.lost(
                ErrorKind::Transient,
                &format_args!("no inbound frame for {silence:?} (heartbeat {heartbeat:?})"),
            );
            return;
        }
    }
}

/// How many topology entries a replay keeps in flight on the topology
/// channel: the broker answers a channel's methods in order, so a window
/// turns N round trips into about N / window, and bounds what lapin and
/// the broker buffer.
const REPLAY_WINDOW: usize = 256;

fn timed_out(what: &str, after: Duration) -> AmqpError {
    AmqpError::Connection(lapin::Error::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: no answer within {after:?}"),
    )))
}

/// Replays the whole log on `link`, in order, then forgets the pending
/// deletes and unbinds it applied.
///
/// Topology-channel entries are pipelined ([`REPLAY_WINDOW`] in flight);
/// a server-named queue's declaration waits for its answer (the entries
/// after it use the name), and consumer-channel entries (QoS, consumers)
/// run one at a time once everything before them was answered. No fixed
/// deadline: each answer must come within the connect timeout, so a
/// stalled broker fails the open while a large log takes the time it needs.
pub(crate) async fn replay(
    shared: &Arc<Shared>,
    link: &AmqpLink,
    log: &mut Log,
) -> Result<(), AmqpError> {
    let entries = log.entries();
    let started = std::time::Instant::now();
    let stall = shared.config.connect_timeout;
    let mut applied = Vec::new();
    let mut next = 0;
    while next < entries.len() {
        let entry = &entries[next];
        if !entry.on_consumer_channel() {
            next = pipeline(shared, link, &entries, next, &mut applied).await?;
            continue;
        }
        match tokio::time::timeout(stall, apply(shared, link, entry)).await {
            Err(_) => return Err(timed_out("topology replay", stall)),
            Ok(Err(error)) => handle_replay_error(shared, link, next, entry, error)?,
            Ok(Ok(())) => {}
        }
        next += 1;
    }
    log.forget(&applied);
    if !entries.is_empty() {
        tracing::debug!(
            generation = link.generation().0,
            entries = entries.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "topology replayed"
        );
    }
    Ok(())
}

/// Runs the topology-channel entries from `start` on, pipelined; returns
/// the index of the first entry it did not run (a consumer-channel entry,
/// the end, or the one after an entry whose error the policy skips).
async fn pipeline(
    shared: &Arc<Shared>,
    link: &AmqpLink,
    entries: &[Entry],
    start: usize,
    applied: &mut Vec<Key>,
) -> Result<usize, AmqpError> {
    let stall = shared.config.connect_timeout;
    let ch = link.inner.channel(Role::Topology).await?;
    let mut in_flight = FuturesOrdered::new();
    let mut next = start;
    let mut barrier = false;
    loop {
        if in_flight.is_empty() {
            barrier = false;
        }
        // Pushed in order, first polled in order: lapin queues a method's
        // frame on that first poll, so the broker sees the log's order.
        while !barrier
            && in_flight.len() < REPLAY_WINDOW
            && next < entries.len()
            && !entries[next].on_consumer_channel()
        {
            let entry = entries[next].clone();
            // The entries after it use the name the broker gives it.
            barrier = entry.declares_server_named_queue();
            let (shared, link, ch, index) = (shared.clone(), link.clone(), ch.clone(), next);
            in_flight.push_back(async move {
                let result = run(&shared, &link, &ch, &entry).await;
                (index, entry, result)
            });
            next += 1;
        }
        let answer = tokio::time::timeout(stall, in_flight.next())
            .await
            .map_err(|_| timed_out("topology replay", stall))?;
        let Some((index, entry, result)) = answer else {
            return Ok(next);
        };
        match result {
            Ok(()) => applied.push(entry.key()),
            Err(error) => {
                handle_replay_error(shared, link, index, &entry, error)?;
                // Skipped: the broker closed the channel, so nothing after
                // this entry ran; go on from the next one on a new channel.
                return Ok(index + 1);
            }
        }
    }
}

/// Replays only what lives on the consumer channel (after it was reopened).
pub(crate) async fn replay_consumers(
    shared: &Arc<Shared>,
    link: &AmqpLink,
    log: &Log,
) -> Result<(), AmqpError> {
    for (index, entry) in log.entries().into_iter().enumerate() {
        if !entry.on_consumer_channel() {
            continue;
        }
        if let Err(error) = apply(shared, link, &entry).await {
            handle_replay_error(shared, link, index, &entry, error)?;
        }
    }
    Ok(())
}

fn handle_replay_error(
    shared: &Arc<Shared>,
    link: &AmqpLink,
    index: usize,
    entry: &Entry,
    error: lapin::Error,
) -> Result<(), AmqpError> {
    if is_connection_error(&error) || !link.is_alive() {
        return Err(AmqpError::Connection(error));
    }
    let policy = shared.config.replay_policy;
    tracing::warn!(generation = link.generation().0, index, %entry, %error, ?policy, "topology replay error");
    let _ = shared.replay_errors.send(ReplayError {
        generation: link.generation(),
        index,
        entry: entry.to_string(),
        error: error.clone(),
        policy,
    });
    match policy {
        // The failed channel is reopened lazily by the next entry.
        ReplayPolicy::Skip => Ok(()),
        ReplayPolicy::Retry | ReplayPolicy::Fail => Err(AmqpError::Topology {
            index,
            entry: entry.to_string(),
            source: error,
            permanent: policy == ReplayPolicy::Fail,
        }),
    }
}

fn channel_error(e: AmqpError) -> lapin::Error {
    match e {
        AmqpError::Connection(e) | AmqpError::Channel(e) => e,
        other => lapin::Error::from(std::io::Error::other(other.to_string())),
    }
}

/// Runs one entry on `link` (always waiting for the broker's answer).
pub(crate) async fn apply(
    shared: &Arc<Shared>,
    link: &AmqpLink,
    entry: &Entry,
) -> lapin::Result<()> {
    let role = if entry.on_consumer_channel() {
        Role::Consume
    } else {
        Role::Topology
    };
    let ch = link.inner.channel(role).await.map_err(channel_error)?;
    run(shared, link, &ch, entry).await
}

/// Runs one entry on `ch`, its role's channel of `link`.
async fn run(
    shared: &Arc<Shared>,
    link: &AmqpLink,
    ch: &Channel,
    entry: &Entry,
) -> lapin::Result<()> {
    let inner = &link.inner;
    match entry {
        Entry::ExchangeDeclare {
            name,
            kind,
            options,
            args,
        } => {
            let mut options = *options;
            options.nowait = false;
            ch.exchange_declare(name.as_str().into(), kind.clone(), options, args.clone())
                .await
        }
        Entry::ExchangeDelete { name, options } => {
            let mut options = *options;
            options.nowait = false;
            ch.exchange_delete(name.as_str().into(), options).await
        }
        Entry::ExchangeBind {
            destination,
            source,
            routing_key,
            args,
        } => {
            ch.exchange_bind(
                destination.as_str().into(),
                source.as_str().into(),
                routing_key.as_str().into(),
                ExchangeBindOptions::default(),
                args.clone(),
            )
            .await
        }
        Entry::ExchangeUnbind {
            destination,
            source,
            routing_key,
            args,
        } => {
            ch.exchange_unbind(
                destination.as_str().into(),
                source.as_str().into(),
                routing_key.as_str().into(),
                ExchangeUnbindOptions::default(),
                args.clone(),
            )
            .await
        }
        Entry::QueueDeclare {
            queue,
            options,
            args,
        } => {
            let mut options = *options;
            options.nowait = false;
            let requested = if queue.server_named {
                String::new()
            } else {
                queue.name()
            };
            let declared = ch
                .queue_declare(requested.as_str().into(), options, args.clone())
                .await?;
            if queue.server_named {
                tracing::debug!(generation = link.generation().0, name = %declared.name(), "server-named queue declared");
                queue.set_name(declared.name().as_str());
            }
            Ok(())
        }
        Entry::QueueDelete { queue, options } => {
            let mut options = *options;
            options.nowait = false;
            ch.queue_delete(queue.resolve().as_str().into(), options)
                .await
                .map(|_| ())
        }
        Entry::QueueBind {
            queue,
            exchange,
            routing_key,
            args,
        } => {
            ch.queue_bind(
                queue.resolve().as_str().into(),
                exchange.as_str().into(),
                routing_key.as_str().into(),
                QueueBindOptions::default(),
                args.clone(),
            )
            .await
        }
        Entry::QueueUnbind {
            queue,
            exchange,
            routing_key,
            args,
        } => {
            ch.queue_unbind(
                queue.resolve().as_str().into(),
                exchange.as_str().into(),
                routing_key.as_str().into(),
                args.clone(),
            )
            .await
        }
        Entry::Qos {
            prefetch_count,
            global,
        } => {
            ch.basic_qos(*prefetch_count, BasicQosOptions { global: *global })
                .await
        }
        Entry::Consume {
            id,
            queue,
            tag,
            options,
            args,
            sink,
        } => {
            let mut options = *options;
            options.nowait = false;
            let consumer = ch
                .basic_consume(
                    queue.resolve().as_str().into(),
                    tag.as_str().into(),
                    options,
                    args.clone(),
                )
                .await?;
            let epoch = inner.consume_state.epoch.load(Ordering::Acquire);
            let state = inner.consume_state.clone();
            let sink = sink.clone();
            let id = *id;
            let consumer_tag = consumer.tag().to_string();
            let generation = link.generation();
            let weak_shared = Arc::downgrade(shared);
            let weak_link = Arc::downgrade(&link.inner);
            let task = tokio::spawn(
                async move {
                    match forward(consumer, sink, generation, epoch, state).await {
                        ForwardEnd::ReceiverGone => {
                            if let Some(shared) = weak_shared.upgrade() {
                                shared.cancel_consumer(id).await;
                            }
                        }
                        ForwardEnd::ChannelEnded => {
                            // The connection is fine but the broker closed the
                            // consumer channel: reopen it and restart its consumers.
                            if let (Some(shared), Some(link)) =
                                (weak_shared.upgrade(), weak_link.upgrade())
                                && link.is_alive()
                            {
                                restart_consumers(shared, AmqpLink { inner: link }, epoch).await;
                            }
                        }
                    }
                }
                .in_current_span(),
            );
            inner
                .consumers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, (consumer_tag, task.abort_handle()));
            Ok(())
        }
    }
}

/// [`Shared::restart_consumers`] behind a concrete boxed type: `apply`
/// spawns it and it runs `apply`, a cycle the compiler cannot prove `Send`
/// through opaque futures.
fn restart_consumers(
    shared: Arc<Shared>,
    link: AmqpLink,
    epoch: u64,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move { shared.restart_consumers(link, epoch).await })
}

/// Cancels consumer `id` on `link` (best effort: the link may be dying).
pub(crate) async fn cancel_on(link: &AmqpLink, id: u64) {
    let found = link
        .inner
        .consumers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    let Some((tag, task)) = found else {
        return;
    };
    if let Ok(ch) = link.inner.channel(Role::Consume).await {
        let _ = ch
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    task.abort();
}

/// Closes a link: gracefully when it still answers, then drops the socket.
pub(crate) async fn close(
    shared: &Arc<Shared>,
    link: AmqpLink,
    reason: crate::machine::Reason,
    timeout: Duration,
) {
    let inner = &link.inner;
    inner.probe.set_closing();
    {
        let mut current = shared.current.lock().unwrap_or_else(|e| e.into_inner());
        if current
            .as_ref()
            .is_some_and(|c| c.generation() == inner.generation)
        {
            *current = None;
        }
    }
    // No protocol close where it cannot be answered or even written: a
    // link the watchdog declared dead, or silent for a whole heartbeat
    // (S29), and lapin writes nothing while the broker blocks the connection.
    let dead = reason == crate::machine::Reason::LivenessLost;
    let silent = inner.heartbeat.is_some_and(|h| inner.probe.silence() >= h);
    let blocked = inner.connection.status().blocked();
    if inner.is_alive() && !dead && !silent && !blocked {
        let text = if reason == crate::machine::Reason::Shutdown {
            "redial: shutdown"
        } else {
            "redial: link replaced"
        };
        let closed = tokio::time::timeout(
            timeout,
            inner
                .connection
                .close(crate::amqp::error::codes::REPLY_SUCCESS, text.into()),
        )
        .await;
        if closed.is_err() {
            tracing::debug!(generation = inner.generation.0, "graceful close timed out");
        }
    }
    inner.probe.kill();
    inner.abort_tasks();
    tracing::debug!(generation = inner.generation.0, "amqp link closed");
}
