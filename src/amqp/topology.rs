//! Topology as a recorded log, replayed in order on every new link.
//!
//! Every declaration made through redial is recorded under its identity
//! (an exchange or queue by name, a binding by its ends, key and
//! arguments, a consumer by handle); on each new link `open` replays the
//! log, in order, before it returns (so before the outbox flushes). Rules
//! that keep the log bounded by the distinct topology and the replay right:
//! * re-declaring replaces the entry in its slot (it stays before what
//!   depends on it);
//! * a server-named queue (declared with an empty name) is one identity per
//!   `declare_queue` call and gets a new name on every link; the bindings
//!   and consumers recorded after it name it by its [`Queue`] handle, which
//!   the replay updates before it runs them;
//! * a delete removes the entity's declaration and everything that names it
//!   (bindings, consumers); an unbind removes the binding. Either is kept
//!   as an entry only while it has not reached the broker (issued while no
//!   link was up), until a replay applies it. A delete of a server-named
//!   queue is never kept: its name is meaningless on the next link;
//! * cancelling a consumer removes it.

use std::collections::{HashMap, HashSet};
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

/// A thing declared on the broker: what deletes remove and bindings name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Entity {
    Exchange(String),
    Queue(QueueKey),
}

/// A queue's identity: its name, or for a server-named queue its handle
/// (its name changes on every link).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum QueueKey {
    Named(String),
    Server(u64),
}

impl QueueRef {
    fn key(&self) -> QueueKey {
        match self {
            QueueRef::Named(n) => QueueKey::Named(n.clone()),
            QueueRef::Recorded(q) => q.key(),
        }
    }
}

impl Queue {
    fn key(&self) -> QueueKey {
        if self.server_named {
            QueueKey::Server(self.id)
        } else {
            QueueKey::Named(self.name())
        }
    }
}

/// A binding's identity (AMQP tells bindings apart by their arguments too).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Binding {
    to: Entity,
    source: String,
    routing_key: String,
    /// The arguments' debug form: `FieldTable` is a `BTreeMap` (stable
    /// order) but holds floats, so it is neither `Eq` nor `Hash`.
    args: String,
}

impl Binding {
    fn new(to: Entity, source: &str, routing_key: &str, args: &FieldTable) -> Self {
        let args = if args.inner().is_empty() {
            String::new()
        } else {
            format!("{args:?}")
        };
        Self {
            to,
            source: source.to_owned(),
            routing_key: routing_key.to_owned(),
            args,
        }
    }
}

/// An entry's identity: recording an entry replaces the one with its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Declare(Entity),
    /// A delete that has not reached the broker yet.
    Delete(Entity),
    Bind(Binding),
    /// An unbind that has not reached the broker yet.
    Unbind(Binding),
    Qos {
        global: bool,
    },
    Consume(u64),
}

impl Entry {
    pub(crate) fn key(&self) -> Key {
        match self {
            Entry::ExchangeDeclare { name, .. } => Key::Declare(Entity::Exchange(name.clone())),
            Entry::ExchangeDelete { name, .. } => Key::Delete(Entity::Exchange(name.clone())),
            Entry::ExchangeBind {
                destination,
                source,
                routing_key,
                args,
            }
            | Entry::ExchangeUnbind {
                destination,
                source,
                routing_key,
                args,
            } => self.binding_key(Binding::new(
                Entity::Exchange(destination.clone()),
                source,
                routing_key,
                args,
            )),
            Entry::QueueDeclare { queue, .. } => Key::Declare(Entity::Queue(queue.key())),
            Entry::QueueDelete { queue, .. } => Key::Delete(Entity::Queue(queue.key())),
            Entry::QueueBind {
                queue,
                exchange,
                routing_key,
                args,
            }
            | Entry::QueueUnbind {
                queue,
                exchange,
                routing_key,
                args,
            } => self.binding_key(Binding::new(
                Entity::Queue(queue.key()),
                exchange,
                routing_key,
                args,
            )),
            Entry::Qos { global, .. } => Key::Qos { global: *global },
            Entry::Consume { id, .. } => Key::Consume(*id),
        }
    }

    /// A bind's or an unbind's key: the same binding either way.
    fn binding_key(&self, binding: Binding) -> Key {
        match self {
            Entry::ExchangeUnbind { .. } | Entry::QueueUnbind { .. } => Key::Unbind(binding),
            _ => Key::Bind(binding),
        }
    }

    /// The entities whose delete removes this entry.
    fn dependencies(&self, key: &Key) -> Vec<Entity> {
        match (key, self) {
            (Key::Bind(b) | Key::Unbind(b), _) => {
                vec![b.to.clone(), Entity::Exchange(b.source.clone())]
            }
            (_, Entry::Consume { queue, .. }) => vec![Entity::Queue(queue.key())],
            _ => Vec::new(),
        }
    }

    /// Whether the broker names this queue anew on every link.
    pub(crate) fn declares_server_named_queue(&self) -> bool {
        matches!(self, Entry::QueueDeclare { queue, .. } if queue.server_named)
    }
}

fn is_server_named(entity: &Entity) -> bool {
    matches!(entity, Entity::Queue(QueueKey::Server(_)))
}

/// The log itself: one entry per key, in the order the keys were first
/// recorded (a re-declaration keeps its slot, so it still comes before
/// what depends on it). Its size is bounded by the distinct topology.
#[derive(Debug, Default)]
pub(crate) struct Log {
    /// Removed entries leave a hole until the next compaction.
    slots: Vec<Option<(Key, Entry)>>,
    index: HashMap<Key, usize>,
    /// Entity -> the keys of the bindings and consumers that name it.
    dependents: HashMap<Entity, HashSet<Key>>,
    next_id: u64,
}

impl Log {
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The entries, in replay order.
    pub(crate) fn entries(&self) -> Vec<Entry> {
        self.slots
            .iter()
            .flatten()
            .map(|(_, e)| e.clone())
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Records `entry`; `applied`: it reached the broker on a live link.
    ///
    /// A declaration, binding, QoS or consumer replaces the entry with its
    /// key in place, or is appended. A delete (unbind) removes the entity
    /// (binding) and, for a delete, everything that names it; it is kept
    /// only while it has not reached the broker ([`Log::forget`] drops it
    /// once a replay applied it), and never for a server-named queue,
    /// whose name dies with its link.
    pub(crate) fn record(&mut self, entry: Entry, applied: bool) {
        let key = entry.key();
        match &key {
            Key::Delete(entity) => {
                self.remove_entity(entity);
                if applied || is_server_named(entity) {
                    self.remove(&key);
                    return;
                }
            }
            Key::Unbind(binding) => {
                self.remove(&Key::Bind(binding.clone()));
                if applied || is_server_named(&binding.to) {
                    self.remove(&key);
                    return;
                }
            }
            // Bound again: the pending unbind is moot.
            Key::Bind(binding) => {
                self.remove(&Key::Unbind(binding.clone()));
            }
            // A pending delete stays before the new declaration: the
            // broker may still hold the old one, with other arguments.
            Key::Declare(_) | Key::Qos { .. } | Key::Consume(_) => {}
        }
        self.insert(key, entry);
    }

    /// Drops pending deletes and unbinds a replay applied.
    pub(crate) fn forget(&mut self, applied: &[Key]) {
        for key in applied {
            if matches!(key, Key::Delete(_) | Key::Unbind(_)) {
                self.remove(key);
            }
        }
    }

    /// Removes a consumer; returns it when it was there.
    pub(crate) fn remove_consumer(&mut self, id: u64) -> Option<Entry> {
        self.remove(&Key::Consume(id))
    }

    fn insert(&mut self, key: Key, entry: Entry) {
        if let Some(&at) = self.index.get(&key) {
            self.slots[at] = Some((key, entry));
            return;
        }
        for entity in entry.dependencies(&key) {
            self.dependents
                .entry(entity)
                .or_default()
                .insert(key.clone());
        }
        self.index.insert(key.clone(), self.slots.len());
        self.slots.push(Some((key, entry)));
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let at = self.index.remove(key)?;
        let (key, entry) = self.slots[at].take()?;
        for entity in entry.dependencies(&key) {
            if let Some(set) = self.dependents.get_mut(&entity) {
                set.remove(&key);
                if set.is_empty() {
                    self.dependents.remove(&entity);
                }
            }
        }
        self.compact();
        Some(entry)
    }

    /// Removes an entity's declaration and everything that names it.
    fn remove_entity(&mut self, entity: &Entity) {
        self.remove(&Key::Declare(entity.clone()));
        for key in self.dependents.remove(entity).unwrap_or_default() {
            self.remove(&key);
        }
    }

    /// Closes the holes once they outnumber the entries.
    fn compact(&mut self) {
        let holes = self.slots.len() - self.index.len();
        if holes < 64 || holes < self.index.len() {
            return;
        }
        self.slots.retain(Option::is_some);
        for (at, slot) in self.slots.iter().enumerate() {
            if let Some((key, _)) = slot {
                self.index.insert(key.clone(), at);
            }
        }
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
        log.entries().iter().map(|e| e.to_string()).collect()
    }

    /// Recorded while no link is up.
    fn rec(log: &mut Log, entry: Entry) {
        log.record(entry, false);
    }

    fn declare(name: &Queue) -> Entry {
        Entry::QueueDeclare {
            queue: name.clone(),
            options: QueueDeclareOptions::default(),
            args: FieldTable::default(),
        }
    }

    fn bind(queue: impl Into<QueueRef>, exchange: &str, key: &str) -> Entry {
        Entry::QueueBind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: key.into(),
            args: FieldTable::default(),
        }
    }

    fn exchange(name: &str) -> Entry {
        Entry::ExchangeDeclare {
            name: name.into(),
            kind: ExchangeKind::Direct,
            options: ExchangeDeclareOptions::default(),
            args: FieldTable::default(),
        }
    }

    fn delete_queue(queue: impl Into<QueueRef>) -> Entry {
        Entry::QueueDelete {
            queue: queue.into(),
            options: QueueDeleteOptions::default(),
        }
    }

    #[test]
    fn deletes_drop_declarations_and_dependents_but_stay_recorded() {
        let mut log = Log::default();
        rec(
            &mut log,
            Entry::ExchangeDeclare {
                name: "x".into(),
                kind: ExchangeKind::Topic,
                options: ExchangeDeclareOptions::default(),
                args: FieldTable::default(),
            },
        );
        let q = queue(&mut log, "q");
        rec(
            &mut log,
            Entry::QueueDeclare {
                queue: q.clone(),
                options: QueueDeclareOptions::default(),
                args: FieldTable::default(),
            },
        );
        rec(
            &mut log,
            Entry::QueueBind {
                queue: (&q).into(),
                exchange: "x".into(),
                routing_key: "k".into(),
                args: FieldTable::default(),
            },
        );
        assert_eq!(log.len(), 3);
        rec(
            &mut log,
            Entry::QueueDelete {
                queue: "q".into(),
                options: QueueDeleteOptions::default(),
            },
        );
        assert_eq!(
            names(&log),
            vec![
                "exchange.declare \"x\" (Topic)".to_owned(),
                "queue.delete \"q\"".to_owned()
            ]
        );
        rec(
            &mut log,
            Entry::ExchangeDelete {
                name: "x".into(),
                options: ExchangeDeleteOptions::default(),
            },
        );
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
        rec(
            &mut log,
            Entry::Qos {
                prefetch_count: 10,
                global: false,
            },
        );
        let q = queue(&mut log, "");
        rec(
            &mut log,
            Entry::QueueDeclare {
                queue: q.clone(),
                options: QueueDeclareOptions::default(),
                args: FieldTable::default(),
            },
        );
        rec(
            &mut log,
            Entry::QueueBind {
                queue: (&q).into(),
                exchange: "amq.direct".into(),
                routing_key: "k".into(),
                args: FieldTable::default(),
            },
        );
        rec(
            &mut log,
            Entry::Qos {
                prefetch_count: 50,
                global: false,
            },
        );
        assert!(matches!(
            log.entries()[0],
            Entry::Qos {
                prefetch_count: 50,
                ..
            }
        ));
        rec(
            &mut log,
            Entry::QueueDelete {
                queue: (&q).into(),
                options: QueueDeleteOptions::default(),
            },
        );
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn unbind_replaces_bind() {
        let mut log = Log::default();
        rec(
            &mut log,
            Entry::QueueBind {
                queue: "q".into(),
                exchange: "x".into(),
                routing_key: "k".into(),
                args: FieldTable::default(),
            },
        );
        rec(
            &mut log,
            Entry::QueueUnbind {
                queue: "q".into(),
                exchange: "x".into(),
                routing_key: "k".into(),
                args: FieldTable::default(),
            },
        );
        assert_eq!(
            names(&log),
            vec!["queue.unbind \"q\" <- \"x\" (\"k\")".to_owned()]
        );
    }

    #[test]
    fn redeclaring_replaces_in_place_and_keeps_dependency_order() {
        let mut log = Log::default();
        rec(&mut log, exchange("x"));
        for round in 0..1000 {
            let q = queue(&mut log, "q");
            log.record(declare(&q), round % 2 == 0);
            // By handle or by name: the same binding.
            if round % 2 == 0 {
                rec(&mut log, bind(&q, "x", "k"));
            } else {
                rec(&mut log, bind("q", "x", "k"));
            }
            rec(&mut log, exchange("x"));
        }
        assert_eq!(
            names(&log),
            vec![
                "exchange.declare \"x\" (Direct)",
                "queue.declare \"q\"",
                "queue.bind \"q\" <- \"x\" (\"k\")"
            ]
        );
        // Arguments tell bindings apart.
        let mut args = FieldTable::default();
        args.insert(
            "x-match".into(),
            lapin::types::AMQPValue::LongString("all".into()),
        );
        rec(
            &mut log,
            Entry::QueueBind {
                queue: "q".into(),
                exchange: "x".into(),
                routing_key: "k".into(),
                args,
            },
        );
        assert_eq!(log.len(), 4);
    }

    #[test]
    fn applied_deletes_leave_nothing_and_pending_ones_go_once_replayed() {
        let mut log = Log::default();
        rec(&mut log, exchange("x"));
        let q = queue(&mut log, "q");
        rec(&mut log, declare(&q));
        rec(&mut log, bind(&q, "x", "k"));
        rec(&mut log, bind(&q, "amq.direct", "k"));
        log.record(delete_queue(&q), true);
        assert_eq!(names(&log), vec!["exchange.declare \"x\" (Direct)"]);
        // An exchange delete drops the bindings that use it, either end.
        rec(&mut log, declare(&q));
        rec(&mut log, bind(&q, "x", "k"));
        rec(&mut log, bind(&q, "amq.direct", "k"));
        log.record(
            Entry::ExchangeDelete {
                name: "x".into(),
                options: ExchangeDeleteOptions::default(),
            },
            true,
        );
        assert_eq!(
            names(&log),
            vec![
                "queue.declare \"q\"",
                "queue.bind \"q\" <- \"amq.direct\" (\"k\")"
            ]
        );
        // Offline: the delete stays, before a later re-declaration, until
        // a replay applied it.
        rec(&mut log, delete_queue("q"));
        rec(&mut log, declare(&q));
        assert_eq!(
            names(&log),
            vec!["queue.delete \"q\"", "queue.declare \"q\""]
        );
        let applied: Vec<Key> = log.entries().iter().map(Entry::key).collect();
        log.forget(&applied);
        assert_eq!(names(&log), vec!["queue.declare \"q\""]);
    }

    #[test]
    fn server_named_queues_are_one_identity_per_handle() {
        let mut log = Log::default();
        let a = queue(&mut log, "");
        let b = queue(&mut log, "");
        rec(&mut log, declare(&a));
        rec(&mut log, declare(&b));
        rec(&mut log, bind(&a, "amq.direct", "k"));
        rec(&mut log, bind(&b, "amq.direct", "k"));
        rec(&mut log, bind(&a, "amq.direct", "k"));
        assert_eq!(log.len(), 4);
        rec(&mut log, delete_queue(&a));
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn many_distinct_entries_and_deletes_stay_consistent_through_compaction() {
        let mut log = Log::default();
        let queues: Vec<Queue> = (0..5000)
            .map(|i| queue(&mut log, &format!("q{i}")))
            .collect();
        for q in &queues {
            rec(&mut log, declare(q));
            rec(&mut log, bind(q, "amq.direct", &q.name()));
        }
        assert_eq!(log.len(), 10_000);
        for q in queues.iter().filter(|q| q.id % 3 != 0) {
            log.record(delete_queue(q), true);
        }
        let kept: Vec<&Queue> = queues.iter().filter(|q| q.id % 3 == 0).collect();
        let expected: Vec<String> = kept
            .iter()
            .flat_map(|q| {
                [
                    format!("queue.declare {:?}", q.name()),
                    format!(
                        "queue.bind {:?} <- \"amq.direct\" ({:?})",
                        q.name(),
                        q.name()
                    ),
                ]
            })
            .collect();
        assert_eq!(names(&log), expected);
        // Re-declaring after compaction still finds the slot.
        rec(&mut log, declare(kept[0]));
        assert_eq!(names(&log), expected);
    }
}
