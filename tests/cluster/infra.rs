//! The three-node RabbitMQ cluster of `.ci/rabbit-cluster.sh` (nodes
//! 127.0.0.1:5681..5683), proved with plain lapin, no redial engine: the
//! nodes answer and form one cluster, a quorum queue keeps its confirmed
//! messages when the node they went through stops, and a killed node
//! restarts and rejoins.
//!
//! Each test holds the cluster exclusively (they stop nodes or count
//! connections) and restores every node when it ends, however it ends.
#![cfg(feature = "amqp")]

use crate::support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use support::amqp::unique;
use support::cluster::{RabbitCluster, rabbit_cluster};

/// Bound on any single AMQP operation.
const OP: Duration = Duration::from_secs(15);

/// Runs a blocking cluster helper (it runs `rabbitmqctl`) without stalling
/// the runtime's other worker, which drives the AMQP connections.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn connect(uri: &str) -> Result<Connection, String> {
    let props =
        ConnectionProperties::default().with_connection_name(unique("cluster-infra").into());
    match tokio::time::timeout(OP, Connection::connect(uri, props)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(format!("connect to {uri}: {e}")),
        Err(_) => Err(format!("connect to {uri}: no answer within {OP:?}")),
    }
}

async fn channel(conn: &Connection) -> Channel {
    tokio::time::timeout(OP, conn.create_channel())
        .await
        .expect("channel.open answered")
        .expect("a channel")
}

/// Declares a durable quorum queue.
async fn declare_quorum(ch: &Channel, queue: &str) {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let args = support::amqp::quorum_args();
    tokio::time::timeout(OP, ch.queue_declare(queue.into(), options, args))
        .await
        .expect("queue.declare answered")
        .expect("a quorum queue");
}

/// Publishes `count` persistent messages `m0..` with publisher confirms and
/// asserts every one is acked.
async fn publish_confirmed(ch: &Channel, queue: &str, count: usize) {
    tokio::time::timeout(OP, ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select answered")
        .expect("confirm mode");
    let mut confirms = Vec::with_capacity(count);
    for i in 0..count {
        let confirm = tokio::time::timeout(
            OP,
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            ),
        )
        .await
        .expect("basic.publish sent")
        .expect("basic.publish");
        confirms.push(confirm);
    }
    for (i, confirm) in confirms.into_iter().enumerate() {
        let confirmation = tokio::time::timeout(OP, confirm)
            .await
            .unwrap_or_else(|_| panic!("no confirm for m{i} within {OP:?}"))
            .expect("a confirm");
        assert!(
            confirmation.is_ack(),
            "m{i} was not acked: {confirmation:?}"
        );
    }
}

/// Reads (basic.get, auto-ack) `queue` through `uri` until `count` distinct
/// payloads arrived or `limit` passed, riding out the errors of a queue
/// whose leader moves (a new channel, or connection, after each).
async fn drain(uri: &str, queue: &str, count: usize, limit: Duration) -> BTreeSet<String> {
    let deadline = Instant::now() + limit;
    let mut got = BTreeSet::new();
    let mut conn: Option<Connection> = None;
    let mut ch: Option<Channel> = None;
    let mut errors = Vec::new();
    while got.len() < count && Instant::now() < deadline {
        if conn.as_ref().is_none_or(|c| !c.status().connected()) {
            ch = None;
            match connect(uri).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    errors.push(e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        if ch.as_ref().is_none_or(|c| !c.status().connected()) {
            let c = conn.as_ref().expect("a connection");
            match tokio::time::timeout(OP, c.create_channel()).await {
                Ok(Ok(c)) => ch = Some(c),
                other => {
                    errors.push(format!("channel.open: {other:?}"));
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let c = ch.as_ref().expect("a channel");
        match tokio::time::timeout(
            OP,
            c.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        {
            Ok(Ok(Some(msg))) => {
                got.insert(String::from_utf8_lossy(&msg.delivery.data).into_owned());
            }
            Ok(Ok(None)) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => {
                errors.push(format!("basic.get: {other:?}"));
                ch = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    if !errors.is_empty() {
        println!(
            "drain through {uri}: {} transient errors, first: {}",
            errors.len(),
            errors[0]
        );
    }
    if let Some(conn) = conn {
        let _ = tokio::time::timeout(OP, conn.close(200, "done".into())).await;
    }
    got
}

async fn delete_queue(uri: &str, queue: &str) {
    let conn = connect(uri).await.expect("a connection for cleanup");
    let ch = channel(&conn).await;
    tokio::time::timeout(
        OP,
        ch.queue_delete(queue.into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("queue.delete answered")
    .expect("queue.delete");
    let _ = tokio::time::timeout(OP, conn.close(200, "done".into())).await;
}

fn expected(count: usize) -> BTreeSet<String> {
    (0..count).map(|i| format!("m{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_nodes_serve_amqp_and_form_one_cluster() {
    let Some(cluster) = blocking(rabbit_cluster) else {
        return;
    };
    // The connection counts below need the cluster to itself.
    let cluster = blocking(|| cluster.exclusive());
    let started = Instant::now();
    let all = RabbitCluster::all_node_names();
    for n in cluster.nodes() {
        assert_eq!(
            blocking(|| cluster.members(n)),
            all,
            "members seen by node {n}"
        );
        assert_eq!(
            blocking(|| cluster.running_nodes(n)),
            all,
            "running nodes seen by node {n}"
        );
    }

    // Each node answers AMQP, and counts the connection as its own.
    let mut conns = Vec::new();
    for n in cluster.nodes() {
        let conn = connect(&cluster.uri(n)).await.unwrap();
        let ch = channel(&conn).await;
        let options = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = tokio::time::timeout(
            OP,
            ch.queue_declare("".into(), options, FieldTable::default()),
        )
        .await
        .expect("queue.declare answered")
        .expect("a server-named queue");
        assert!(!queue.name().as_str().is_empty());
        conns.push(conn);
    }
    for n in cluster.nodes() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = blocking(|| cluster.connections(n));
        while seen != 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            seen = blocking(|| cluster.connections(n));
        }
        assert_eq!(seen, 1, "client connections on node {n}");
    }
    for conn in conns {
        tokio::time::timeout(OP, conn.close(200, "done".into()))
            .await
            .expect("connection.close answered")
            .expect("connection.close");
    }
    for n in cluster.nodes() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while blocking(|| cluster.connections(n)) != 0 {
            assert!(
                Instant::now() < deadline,
                "node {n} still lists a connection after close"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!("cluster infra: 3 nodes checked in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_quorum_messages_stay_readable_when_their_node_stops() {
    const MESSAGES: usize = 100;
    let Some(cluster) = blocking(rabbit_cluster) else {
        return;
    };
    let cluster = blocking(|| cluster.exclusive());
    let started = Instant::now();
    let queue = unique("cluster-quorum");

    let conn = connect(&cluster.uri(1)).await.unwrap();
    let ch = channel(&conn).await;
    declare_quorum(&ch, &queue).await;
    publish_confirmed(&ch, &queue, MESSAGES).await;
    blocking(|| cluster.await_quorum(&queue, 3, Duration::from_secs(30)));
    let published = started.elapsed();

    let stopping = Instant::now();
    blocking(|| cluster.stop_app(1));
    assert!(!cluster.is_serving(1));
    // Node 1's clients were disconnected.
    let deadline = Instant::now() + Duration::from_secs(10);
    while conn.status().connected() {
        assert!(
            Instant::now() < deadline,
            "the connection to node 1 survived stop_app"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let got = drain(&cluster.uri(2), &queue, MESSAGES, Duration::from_secs(60)).await;
    let failover_read = stopping.elapsed();
    assert_eq!(
        got,
        expected(MESSAGES),
        "the confirmed messages, read through node 2"
    );

    blocking(|| cluster.start_app(1));
    blocking(|| cluster.await_quorum(&queue, 3, Duration::from_secs(60)));
    delete_queue(&cluster.uri(1), &queue).await;
    println!(
        "cluster infra: {MESSAGES} confirmed in {published:?}; stop_app 1 and all read through node 2 in \
         {failover_read:?}; whole test {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_restarts_and_rejoins_the_cluster() {
    const MESSAGES: usize = 10;
    let Some(cluster) = blocking(rabbit_cluster) else {
        return;
    };
    let cluster = blocking(|| cluster.exclusive());
    let started = Instant::now();
    let all = RabbitCluster::all_node_names();
    let queue = unique("cluster-kill");
    {
        let conn = connect(&cluster.uri(1)).await.unwrap();
        let ch = channel(&conn).await;
        declare_quorum(&ch, &queue).await;
        publish_confirmed(&ch, &queue, MESSAGES).await;
        let _ = tokio::time::timeout(OP, conn.close(200, "done".into())).await;
    }
    blocking(|| cluster.await_quorum(&queue, 3, Duration::from_secs(30)));

    let before = blocking(|| cluster.pid(3)).expect("node 3 runs");
    let killing = Instant::now();
    let dead = blocking(|| cluster.kill(3));
    assert_eq!(dead, before, "kill hit node 3's VM");
    assert_eq!(blocking(|| cluster.pid(3)), None, "node 3's VM is gone");
    // The survivors notice at once (the distribution link closed), and
    // still count it as a member; the queue keeps a leader.
    let deadline = Instant::now() + Duration::from_secs(15);
    while blocking(|| cluster.running_nodes(1)).contains(&"c3@localhost".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "node 1 still lists node 3 as running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(blocking(|| cluster.members(1)), all);
    blocking(|| cluster.await_quorum(&queue, 2, Duration::from_secs(30)));

    let restarting = Instant::now();
    blocking(|| cluster.restart(3));
    let restart = restarting.elapsed();
    let after = blocking(|| cluster.pid(3)).expect("node 3 runs again");
    assert_ne!(after, dead, "a new VM");
    assert_eq!(blocking(|| cluster.running_nodes(1)), all);
    assert_eq!(
        blocking(|| cluster.members(3)),
        all,
        "node 3 kept its membership"
    );
    blocking(|| cluster.await_quorum(&queue, 3, Duration::from_secs(60)));

    // Node 3 serves the cluster's queue again.
    let got = drain(&cluster.uri(3), &queue, MESSAGES, Duration::from_secs(30)).await;
    assert_eq!(got, expected(MESSAGES), "the messages, read through node 3");
    delete_queue(&cluster.uri(3), &queue).await;
    println!(
        "cluster infra: kill -9 of node 3 to rejoined in {:?} (restart {restart:?}); whole test {:?}",
        killing.elapsed(),
        started.elapsed()
    );
}
