//! A real three-node RabbitMQ cluster (issue 14; `tests/support/cluster.rs`
//! starts it next to the system broker): engines that know all three nodes,
//! with the adapter's defaults, against a quorum queue.
//!
//! - `quorum_queue_keeps_every_confirmed_message_across_node_failures`:
//!   a publisher engine publishes at a steady rate and a consumer engine
//!   acks what it gets, both on the cluster, while the publisher's node is
//!   taken down three times, one at a time: `stop_app` twice, then a hard
//!   kill of the node's process; each node comes back before the next
//!   fault. Every publish resolves, none fails, every confirmed message
//!   reaches the consumer (duplicates only from replays and redeliveries),
//!   and each failover costs at most one attempt per node (no backoff wait
//!   while a node is untried). Beside it, a single-endpoint engine on the
//!   node that dies shows what the same death costs without a cluster list:
//!   the node's whole downtime. Both times are printed for
//!   docs/PERFORMANCE.md.
//! - `a_fleet_spreads_over_the_nodes`: 30 engines with the same list end up
//!   on every node (the shuffle), counted by the engines and by the broker.
#![cfg(feature = "amqp")]

use crate::support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redial::amqp::lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use redial::amqp::lapin::types::FieldTable;
use redial::amqp::{AmqpConfig, AmqpMessage, AmqpTransport};
use redial::machine::{Generation, StateKind};
use redial::outbox::{OutboxConfig, PublishError, Publisher};
use redial::runtime::Engine;
use support::amqp::{Receipts, Resolved, Timeline, quorum_args, unique};
use support::cluster::{RabbitCluster, rabbit_cluster};

/// How long a node stays down before it is brought back.
const DOWNTIME: Duration = Duration::from_secs(4);

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Runs a blocking cluster command off the runtime's workers.
async fn on_cluster<R: Send + 'static>(
    cluster: &'static RabbitCluster,
    f: impl FnOnce(&'static RabbitCluster) -> R + Send + 'static,
) -> R {
    tokio::task::spawn_blocking(move || f(cluster))
        .await
        .expect("cluster command")
}

/// An engine on `uris` that declares the quorum queue on every link, with
/// its publisher, receipts and timeline.
struct Producer {
    transport: AmqpTransport,
    engine: Engine<AmqpTransport>,
    publisher: Publisher<AmqpTransport>,
    receipts: Receipts,
    timeline: Timeline,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Producer {
    async fn start(config: AmqpConfig, queue: &str, every: Duration) -> Self {
        let transport = AmqpTransport::new(config.clone()).unwrap();
        transport
            .declare_queue(queue, durable(), quorum_args())
            .await
            .unwrap();
        let engine = Engine::spawn(config.engine_config().build().unwrap(), transport.clone());
        let timeline = Timeline::start(&engine.handle());
        tokio::time::timeout(
            Duration::from_secs(30),
            engine.handle().wait_for(StateKind::Connected),
        )
        .await
        .expect("connected to the cluster");
        let publisher = Publisher::new(&engine, transport.clone(), OutboxConfig::default());
        let receipts = Receipts::start();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let publisher = publisher.clone();
            let receipts = receipts.clone();
            let queue = queue.to_owned();
            let stop = stop.clone();
            async move {
                let mut tick = tokio::time::interval(every);
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    let m = AmqpMessage::new("", &queue, sent.to_be_bytes().to_vec());
                    let at = Instant::now();
                    receipts.push(at, publisher.publish(m).await);
                    sent += 1;
                }
                sent
            }
        });
        Self {
            transport,
            engine,
            publisher,
            receipts,
            timeline,
            stop,
            task,
        }
    }

    /// The first confirm after `since` on a generation after `generation`
    /// (panics with what the receipts say after a minute).
    async fn first_confirm_after(&self, since: Instant, generation: Generation) -> Instant {
        let found = tokio::time::timeout(
            Duration::from_secs(60),
            self.wait_confirm_after(since, generation),
        )
        .await;
        found.unwrap_or_else(|_| {
            let done = self.receipts.done_snapshot();
            let recent: Vec<String> = done
                .iter()
                .rev()
                .take(5)
                .map(|r| format!("{}: {:?}", r.id, r.outcome))
                .collect();
            panic!(
                "no confirm on a link after {generation} within 60 s; engine {:?}; {} resolved, the last: {recent:?}",
                self.engine.handle().snapshot(),
                done.len()
            )
        })
    }

    async fn wait_confirm_after(&self, since: Instant, generation: Generation) -> Instant {
        loop {
            let found = self
                .receipts
                .done_snapshot()
                .iter()
                .filter(|r| r.resolved > since)
                .filter(|r| r.outcome.as_ref().is_ok_and(|c| c.generation > generation))
                .map(|r| r.resolved)
                .min();
            if let Some(at) = found {
                return at;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops publishing; returns every publish's outcome.
    async fn finish(self) -> (AmqpTransport, Vec<Resolved>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = self.task.await.unwrap();
        let done = self
            .receipts
            .wait(sent as usize, Duration::from_secs(60))
            .await;
        assert_eq!(done.len() as u64, sent, "every publish resolved");
        self.publisher.shutdown(Duration::from_secs(2)).await;
        self.engine.shutdown().await;
        (self.transport, done)
    }
}

/// A consumer engine on the cluster that acks every delivery and counts
/// deliveries per `message_id`.
async fn consumer(
    uris: Vec<String>,
    queue: &str,
) -> (Engine<AmqpTransport>, Arc<Mutex<HashMap<String, u32>>>) {
    let config = AmqpConfig::cluster(uris).connection_name(unique("cluster-consumer"));
    let transport = AmqpTransport::new(config.clone()).unwrap();
    transport
        .declare_queue(queue, durable(), quorum_args())
        .await
        .unwrap();
    let mut deliveries = transport
        .consume(
            queue,
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let engine = Engine::spawn(config.engine_config().build().unwrap(), transport);
    let seen = Arc::new(Mutex::new(HashMap::new()));
    tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Some(d) = deliveries.next().await {
                let id = d.message_id().unwrap_or_default().to_owned();
                *seen.lock().unwrap().entry(id).or_default() += 1;
                // A delivery of a link that died is redelivered on the next.
                let _ = d.ack().await;
            }
        }
    });
    (engine, seen)
}

/// Publishes resolved as nacked that were submitted after `since`.
fn nacked_since(receipts: &Receipts, since: Instant) -> usize {
    receipts
        .done_snapshot()
        .iter()
        .filter(|r| r.submitted >= since && matches!(r.outcome, Err(PublishError::Nacked)))
        .count()
}

/// How a fault takes a node down and brings it back.
#[derive(Debug, Clone, Copy)]
enum Fault {
    StopApp,
    Kill,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_keeps_every_confirmed_message_across_node_failures() {
    let Some(cluster) = rabbit_cluster() else {
        return;
    };
    let _exclusive = on_cluster(cluster, |c| c.exclusive()).await;
    let queue = unique("redial-cluster-quorum");
    let uris = cluster.uris();

    let producer = Producer::start(
        AmqpConfig::cluster(uris.clone()).connection_name(unique("cluster-producer")),
        &queue,
        Duration::from_millis(10),
    )
    .await;
    let (consumer_engine, seen) = consumer(uris.clone(), &queue).await;
    let handle = producer.engine.handle();

    let mut failovers = Vec::new();
    let mut nacks_by_fault = Vec::new();
    let mut single = Vec::new();
    for fault in [Fault::StopApp, Fault::StopApp, Fault::Kill] {
        // Every member back in the queue before the next fault.
        let q = queue.clone();
        on_cluster(cluster, move |c| {
            c.await_quorum(&q, 3, Duration::from_secs(120))
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = handle.snapshot();
        assert_eq!(before.state, StateKind::Connected);
        let node = before.endpoint + 1;
        // Beside it: a single-endpoint engine on the same node.
        let lonely = Producer::start(
            AmqpConfig::new(cluster.uri(node)).connection_name(unique("cluster-single")),
            &queue,
            Duration::from_millis(50),
        )
        .await;
        let lonely_before = lonely.engine.handle().snapshot().generation;
        let attempts_before = handle.stats().attempts;

        let died = Instant::now();
        match fault {
            Fault::StopApp => on_cluster(cluster, move |c| c.stop_app(node)).await,
            Fault::Kill => {
                on_cluster(cluster, move |c| c.kill(node)).await;
            }
        }
        let after = *tokio::time::timeout(
            Duration::from_secs(60),
            handle
                .watch()
                .wait_for(|s| s.state == StateKind::Connected && s.generation > before.generation),
        )
        .await
        .expect("the producer failed over")
        .unwrap();
        assert_ne!(after.endpoint + 1, node, "{fault:?}: on another node");
        let lost = producer
            .timeline
            .first_out_of(StateKind::Connected, died)
            .map(|(t, _)| t)
            .expect("the link's loss was seen");
        let confirmed = producer.first_confirm_after(died, before.generation).await;
        let attempts = handle.stats().attempts - attempts_before;
        assert!(
            attempts <= 3,
            "{fault:?}: {attempts} attempts: more than one round of three nodes"
        );
        failovers.push((fault, confirmed - lost, confirmed - died, attempts));

        tokio::time::sleep(DOWNTIME).await;
        match fault {
            Fault::StopApp => on_cluster(cluster, move |c| c.start_app(node)).await,
            Fault::Kill => on_cluster(cluster, move |c| c.restart(node)).await,
        }
        let lonely_lost = lonely
            .timeline
            .first_out_of(StateKind::Connected, died)
            .map(|(t, _)| t)
            .expect("the single-endpoint engine lost its link");
        let lonely_confirmed = tokio::time::timeout(
            Duration::from_secs(60),
            lonely.first_confirm_after(died, lonely_before),
        )
        .await
        .expect("the single-endpoint engine came back with its node");
        single.push((fault, lonely_confirmed - lonely_lost));
        let (lonely_transport, lonely_done) = lonely.finish().await;
        check_delivered(&lonely_transport, &lonely_done, &seen).await;
        nacks_by_fault.push((fault, nacked_since(&producer.receipts, died)));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let (transport, done) = producer.finish().await;
    let (confirmed, nacked, duplicates) = check_delivered(&transport, &done, &seen).await;
    println!(
        "cluster: {} published, {confirmed} confirmed, 0 lost, {nacked} nacked (returned as errors), {duplicates} duplicate deliveries; nacks after each fault {nacks_by_fault:?}",
        done.len()
    );
    for (fault, nacks) in &nacks_by_fault {
        // Only what was in flight when a stuck channel nacked, not a stream.
        assert!(
            *nacks < 300,
            "{fault:?}: {nacks} nacks: a channel kept nacking"
        );
    }
    for (fault, from_loss, from_command, attempts) in &failovers {
        println!(
            "cluster failover after {fault:?}: loss to first confirm on another node {from_loss:?} ({from_command:?} from the command), {attempts} attempts"
        );
    }
    for (fault, took) in &single {
        println!(
            "single endpoint after {fault:?}: loss to first confirm {took:?} (node down {DOWNTIME:?} plus its restart)"
        );
    }
    consumer_engine.shutdown().await;
    let conn = redial::amqp::lapin::Connection::connect(
        &cluster.uri(1),
        redial::amqp::lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    support::amqp::delete_queue(&conn, &queue).await;
}

/// Every confirmed publish of `done` reached the consumer, and the only
/// failures are the broker's nacks; returns (confirmed, nacked, duplicate
/// deliveries seen so far).
async fn check_delivered(
    transport: &AmqpTransport,
    done: &[Resolved],
    seen: &Arc<Mutex<HashMap<String, u32>>>,
) -> (usize, usize, u64) {
    let failed: Vec<&Resolved> = done
        .iter()
        .filter(|r| !matches!(r.outcome, Ok(_) | Err(PublishError::Nacked)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} publishes failed otherwise than by a nack, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let nacked = done.iter().filter(|r| r.outcome.is_err()).count();
    let prefix = transport.message_id_prefix().to_owned();
    let expected: Vec<String> = done
        .iter()
        .filter(|r| r.outcome.is_ok())
        .map(|r| format!("{prefix}-{}", r.id))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = {
            let seen = seen.lock().unwrap();
            expected.iter().filter(|id| !seen.contains_key(*id)).count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} confirmed messages never reached the consumer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap();
    let duplicates = seen.values().map(|n| u64::from(n - 1)).sum();
    (expected.len(), nacked, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_spreads_over_the_nodes() {
    const ENGINES: usize = 30;
    let Some(cluster) = rabbit_cluster() else {
        return;
    };
    let _exclusive = on_cluster(cluster, |c| c.exclusive()).await;
    let name = unique("cluster-fleet");
    let mut engines = Vec::new();
    for _ in 0..ENGINES {
        let config = AmqpConfig::cluster(cluster.uris()).connection_name(name.clone());
        let transport = AmqpTransport::new(config.clone()).unwrap();
        engines.push(Engine::spawn(
            config.engine_config().build().unwrap(),
            transport,
        ));
    }
    let mut by_engine = [0usize; 3];
    for engine in &engines {
        tokio::time::timeout(
            Duration::from_secs(30),
            engine.handle().wait_for(StateKind::Connected),
        )
        .await
        .expect("connected to the cluster");
        by_engine[engine.handle().snapshot().endpoint] += 1;
        // One attempt each: every node is up.
        let started = engine.handle().stats().attempts;
        assert_eq!(started, 1);
    }
    let by_broker = on_cluster(cluster, |c| {
        [c.connections(1), c.connections(2), c.connections(3)]
    })
    .await;
    println!(
        "fleet of {ENGINES}: engines per node {by_engine:?}, connections per node (rabbitmqctl) {by_broker:?}"
    );
    assert!(by_engine.iter().all(|n| *n > 0), "{by_engine:?}");
    for n in 0..3 {
        assert!(
            by_broker[n] >= by_engine[n],
            "node {}: {by_broker:?} vs {by_engine:?}",
            n + 1
        );
    }
    for engine in engines {
        engine.shutdown().await;
    }
}
