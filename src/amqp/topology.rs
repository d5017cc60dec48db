//! Topology as a recorded log, replayed in order on every new link.
//!
//! Every declaration made through redial is appended to the log; on each
//! new link `open` replays the log, in order, before it returns (so before
//! the outbox flushes). Rules that keep the log short and the replay right:
//! * a server-named queue (declared with an empty name) gets a new name on
//!   every link; the bindings and consumers recorded after it name it by
//!   its [`Queue`] handle, which the replay updates before it runs them;
//! * a delete removes the entity's earlier declaration and everything that
//!   depends on it (bindings, consumers), and is kept as an entry itself
//!   (a delete is idempotent, and one issued while no link was up must
//!   still reach the broker). A delete of a server-named queue is not
//!   kept: its name is meaningless on the next link;
//! * an unbind removes the matching bind and is kept, for the same reason;
//! * cancelling a consumer removes it.

use std::fmt;
use std::sync::{Arc, RwLock};

use lapin::ExchangeKind;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;

use crate::amqp::consume::Sink;

/// A queue declared through redial. For a server-named queue the name
/// changes on every link; this handle always gives the current one.
#[derive(Debug, Clone)]
pub struct Queue {
    pub(crate) id: u64,
    pub(crate) name: Arc<RwLock<String>>,
    pub(crate) server_named: bool,
}

impl Queue {
    /// The queue's current name (empty for a server-named queue that has
    /// not been declared on any link yet).
    pub fn name(&self) -> String {
        self.name.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the broker names it (declared with an empty name).
    pub fn is_server_named(&self) -> bool {
        self.server_named
    }

    pub(crate) fn set_name(&self, name: &str) {
        *self.name.write().unwrap_or_else(|e| e.into_inner()) = name.to_owned();
    }
}

/// A queue named literally, or one recorded by redial (whose name the
/// replay resolves, for server-named queues).
#[derive(Debug, Clone)]
pub enum QueueRef {
    /// A literal name.
    Named(String),
    /// A queue declared through redial.
    Recorded(Queue),
}

impl QueueRef {
    pub(crate) fn resolve(&self) -> String {
        match self {
            QueueRef::Named(n) => n.clone(),
            QueueRef::Recorded(q) => q.name(),
        }
    }

    fn is(&self, other: &QueueRef) -> bool {
        match (self, other) {
            (QueueRef::Recorded(a), QueueRef::Recorded(b)) => a.id == b.id,
            (QueueRef::Recorded(q), QueueRef::Named(n))
            | (QueueRef::Named(n), QueueRef::Recorded(q)) => !q.server_named && q.name() == *n,
            (QueueRef::Named(a), QueueRef::Named(b)) => a == b,
        }
    }
}

impl From<&str> for QueueRef {
    fn from(name: &str) -> Self {
        QueueRef::Named(name.to_owned())
    }
}
impl From<String> for QueueRef {
    fn from(name: String) -> Self {
        QueueRef::Named(name)
    }
}
impl From<&Queue> for QueueRef {
    fn from(q: &Queue) -> Self {
        QueueRef::Recorded(q.clone())
    }
}
impl From<Queue> for QueueRef {
    fn from(q: Queue) -> Self {
        QueueRef::Recorded(q)
    }
}

impl fmt::Display for QueueRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueRef::Named(n) => write!(f, "{n:?}"),
            QueueRef::Recorded(q) if q.server_named => {
                write!(f, "server-named #{} (now {:?})", q.id, q.name())
            }
            QueueRef::Recorded(q) => write!(f, "{:?}", q.name()),
        }
    }
}

/// One recorded declaration.
#[derive(Clone)]
pub(crate) enum Entry {
    ExchangeDeclare {
        name: String,
        kind: ExchangeKind,
        options: ExchangeDeclareOptions,
        args: FieldTable,
    },
    ExchangeDelete {
        name: String,
        options: ExchangeDeleteOptions,
    },
    ExchangeBind {
        destination: String,
        source: String,
        routing_key: String,
        args: FieldTable,
    },
    ExchangeUnbind {
        destination: String,
        source: String,
        routing_key: String,
        args: FieldTable,
    },
    QueueDeclare {
        queue: Queue,
        options: QueueDeclareOptions,
        args: FieldTable,
    },
    QueueDelete {
        queue: QueueRef,
        options: QueueDeleteOptions,
    },
    QueueBind {
        queue: QueueRef,
        exchange: String,
        routing_key: String,
        args: FieldTable,
    },
    QueueUnbind {
        queue: QueueRef,
        exchange: String,
        routing_key: String,
        args: FieldTable,
    },
    Qos {
        prefetch_count: u16,
        global: bool,
    },
    Consume {
        id: u64,
        queue: QueueRef,
        tag: String,
        options: BasicConsumeOptions,
        args: FieldTable,
        sink: Sink,
    },
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::ExchangeDeclare { name, kind, .. } => {
                write!(f, "exchange.declare {name:?} ({kind:?})")
            }
            Entry::ExchangeDelete { name, .. } => write!(f, "exchange.delete {name:?}"),
            Entry::ExchangeBind {
                destination,
                source,
                routing_key,
                ..
            } => write!(
                f,
                "exchange.bind {destination:?} <- {source:?} ({routing_key:?})"
            ),
            Entry::ExchangeUnbind {
                destination,
                source,
                routing_key,
                ..
            } => write!(
                f,
                "exchange.unbind {destination:?} <- {source:?} ({routing_key:?})"
            ),
            Entry::QueueDeclare { queue, .. } => {
                write!(f, "queue.declare {}", QueueRef::Recorded(queue.clone()))
            }
            Entry::QueueDelete { queue, .. } => write!(f, "queue.delete {queue}"),
            Entry::QueueBind {
                queue,
                exchange,
                routing_key,
                ..
            } => write!(f, "queue.bind {queue} <- {exchange:?} ({routing_key:?})"),
            Entry::QueueUnbind {
                queue,
                exchange,
                routing_key,
                ..
            } => write!(f, "queue.unbind {queue} <- {exchange:?} ({routing_key:?})"),
            Entry::Qos {
                prefetch_count,
                global,
            } => write!(f, "basic.qos prefetch={prefetch_count} global={global}"),
            Entry::Consume { queue, tag, .. } => {
                write!(f, "basic.consume {queue} tag={tag:?}")
            }
        }
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Entry {
    /// Whether this entry runs on the consumer channel (QoS is per channel).
    pub(crate) fn on_consumer_channel(&self) -> bool {
        matches!(self, Entry::Qos { .. } | Entry::Consume { .. })
    }
}

/// The log itself.
#[derive(Debug, Default)]
pub(crate) struct Log {
    entries: Vec<Entry>,
    next_id: u64,
}

impl Log {
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn entries(&self) -> Vec<Entry> {
        self.entries.clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Appends `entry`, compacting what it makes obsolete.
    pub(crate) fn record(&mut self, entry: Entry) {
        match &entry {
            Entry::ExchangeDelete { name, .. } => {
                self.entries.retain(|e| match e {
                    Entry::ExchangeDeclare { name: n, .. }
                    | Entry::ExchangeDelete { name: n, .. } => n != name,
                    Entry::ExchangeBind {
                        destination,
                        source,
                        ..
                    }
                    | Entry::ExchangeUnbind {
                        destination,
                        source,
                        ..
                    } => destination != name && source != name,
                    Entry::QueueBind { exchange, .. } | Entry::QueueUnbind { exchange, .. } => {
                        exchange != name
                    }
                    _ => true,
                });
            }
            Entry::QueueDelete { queue, .. } => {
                self.entries.retain(|e| match e {
                    Entry::QueueDeclare { queue: q, .. } => {
                        !queue.is(&QueueRef::Recorded(q.clone()))
                    }
                    Entry::QueueDelete { queue: q, .. }
                    | Entry::QueueBind { queue: q, .. }
                    | Entry::QueueUnbind { queue: q, .. }
                    | Entry::Consume { queue: q, .. } => !queue.is(q),
                    _ => true,
                });
                // A server-named queue's name dies with the link.
                if let QueueRef::Recorded(q) = queue
                    && q.server_named
                {
                    return;
                }
            }
            Entry::QueueUnbind {
                queue,
                exchange,
                routing_key,
                ..
            } => {
                self.entries.retain(|e| match e {
                    Entry::QueueBind {
                        queue: q,
                        exchange: x,
                        routing_key: k,
                        ..
                    }
                    | Entry::QueueUnbind {
                        queue: q,
                        exchange: x,
                        routing_key: k,
                        ..
                    } => !(queue.is(q) && x == exchange && k == routing_key),
                    _ => true,
                });
                if matches!(queue, QueueRef::Recorded(q) if q.server_named) {
                    return;
                }
            }
            Entry::ExchangeUnbind {
                destination,
                source,
                routing_key,
                ..
            } => {
                self.entries.retain(|e| match e {
                    Entry::ExchangeBind {
                        destination: d,
                        source: s,
                        routing_key: k,
                        ..
                    }
                    | Entry::ExchangeUnbind {
                        destination: d,
                        source: s,
                        routing_key: k,
                        ..
                    } => !(d == destination && s == source && k == routing_key),
                    _ => true,
                });
            }
            Entry::ExchangeDeclare { name, .. } => {
                // A redeclaration replaces the earlier one (and its delete).
                self.entries.retain(|e| {
                    !matches!(e, Entry::ExchangeDeclare { name: n, .. } | Entry::ExchangeDelete { name: n, .. } if n == name)
                });
            }
            Entry::QueueDeclare { queue, .. } if !queue.server_named => {
                let name = queue.name();
                self.entries.retain(|e| match e {
                    Entry::QueueDelete {
                        queue: QueueRef::Named(n),
                        ..
                    } => *n != name,
                    _ => true,
                });
            }
            Entry::Qos { global, .. } => {
                // Only the last QoS of a scope matters, but it must stay
                // before the consumers it applies to: keep the first slot.
                if let Some(slot) = self
                    .entries
                    .iter_mut()
                    .find(|e| matches!(e, Entry::Qos { global: g, .. } if g == global))
                {
                    *slot = entry;
                    return;
                }
            }
            _ => {}
        }
        self.entries.push(entry);
    }

    /// Removes a consumer; returns it when it was there.
    pub(crate) fn remove_consumer(&mut self, id: u64) -> Option<Entry> {
        let at = self
            .entries
            .iter()
            .position(|e| matches!(e, Entry::Consume { id: i, .. } if *i == id))?;
        Some(self.entries.remove(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(log: &mut Log, name: &str) -> Queue {
        Queue {
            id: log.next_id(),
            name: Arc::new(RwLock::new(name.to_owned())),
            server_named: name.is_empty(),
        }
    }

    fn names(log: &Log) -> Vec<String> {
        log.entries.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn deletes_drop_declarations_and_dependents_but_stay_recorded() {
        let mut log = Log::default();
        log.record(Entry::ExchangeDeclare {
            name: "x".into(),
            kind: ExchangeKind::Topic,
            options: ExchangeDeclareOptions::default(),
            args: FieldTable::default(),
        });
        let q = queue(&mut log, "q");
        log.record(Entry::QueueDeclare {
            queue: q.clone(),
            options: QueueDeclareOptions::default(),
            args: FieldTable::default(),
        });
        log.record(Entry::QueueBind {
            queue: (&q).into(),
            exchange: "x".into(),
            routing_key: "k".into(),
            args: FieldTable::default(),
        });
        assert_eq!(log.len(), 3);
        log.record(Entry::QueueDelete {
            queue: "q".into(),
            options: QueueDeleteOptions::default(),
        });
        assert_eq!(
            names(&log),
            vec![
                "exchange.declare \"x\" (Topic)".to_owned(),
                "queue.delete \"q\"".to_owned()
            ]
        );
        log.record(Entry::ExchangeDelete {
            name: "x".into(),
            options: ExchangeDeleteOptions::default(),
        });
        assert_eq!(
            names(&log),
            vec![
                "queue.delete \"q\"".to_owned(),
                "exchange.delete \"x\"".to_owned()
            ]
        );
    }

    #[test]
    fn server_named_queue_delete_is_not_kept_and_qos_keeps_its_slot() {
        let mut log = Log::default();
        log.record(Entry::Qos {
            prefetch_count: 10,
            global: false,
        });
        let q = queue(&mut log, "");
        log.record(Entry::QueueDeclare {
            queue: q.clone(),
            options: QueueDeclareOptions::default(),
            args: FieldTable::default(),
        });
        log.record(Entry::QueueBind {
            queue: (&q).into(),
            exchange: "amq.direct".into(),
            routing_key: "k".into(),
            args: FieldTable::default(),
        });
        log.record(Entry::Qos {
            prefetch_count: 50,
            global: false,
        });
        assert!(matches!(
            log.entries[0],
            Entry::Qos {
                prefetch_count: 50,
                ..
            }
        ));
        log.record(Entry::QueueDelete {
            queue: (&q).into(),
            options: QueueDeleteOptions::default(),
        });
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn unbind_replaces_bind() {
        let mut log = Log::default();
        log.record(Entry::QueueBind {
            queue: "q".into(),
            exchange: "x".into(),
            routing_key: "k".into(),
            args: FieldTable::default(),
        });
        log.record(Entry::QueueUnbind {
            queue: "q".into(),
            exchange: "x".into(),
            routing_key: "k".into(),
            args: FieldTable::default(),
        });
        assert_eq!(
            names(&log),
            vec!["queue.unbind \"q\" <- \"x\" (\"k\")".to_owned()]
        );
    }
}
