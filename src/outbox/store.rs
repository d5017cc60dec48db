//! Where the outbox keeps its pending messages: each one in place for its
//! whole life, found by id in O(1), and the queue's order kept on the side.
//!
//! Ids are assigned in submission order and a message that goes back for
//! replay has a smaller id than every message never written, so the queue
//! is "replays in id order, then the never-written ones in id order". The
//! never-written ones sit in a deque in the order they came (removals in the
//! middle are skipped when they reach the front); replays, which are rare,
//! in an ordered set. A `BTreeMap` of whole messages, as before, moved them
//! around on every insert and cost an allocation per node split.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::machine::Generation;
use crate::outbox::core::MessageId;

/// Hashes an id with one multiplication: ids are distinct and dense, so
/// nothing stronger is needed (and none of them come from outside).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A pending message, and the link it is in flight on (`None`: queued).
#[derive(Debug)]
pub(crate) struct Slot<E> {
    pub(crate) entry: E,
    pub(crate) in_flight: Option<Generation>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Store<E> {
    slots: HashMap<MessageId, Slot<E>, BuildHasherDefault<IdHasher>>,
    /// Queued, never written, in id order; may hold ids no longer queued.
    /// Its front is always queued (see [`Store::clean_front`]).
    fresh: VecDeque<MessageId>,
    /// Queued again after a write, in id order.
    replays: BTreeSet<MessageId>,
    queued: usize,
    in_flight: usize,
}

impl<E> Default for Store<E> {
    fn default() -> Self {
        Self {
            slots: HashMap::default(),
            fresh: VecDeque::new(),
            replays: BTreeSet::new(),
            queued: 0,
            in_flight: 0,
        }
    }
}

impl<E> Store<E> {
    pub(crate) fn queued_len(&self) -> usize {
        self.queued
    }

    pub(crate) fn in_flight_len(&self) -> usize {
        self.in_flight
    }

    pub(crate) fn get(&self, id: MessageId) -> Option<&Slot<E>> {
        self.slots.get(&id)
    }

    /// A message queued, or back to the queue after a write.
    fn is_queued(&self, id: MessageId) -> bool {
        self.slots.get(&id).is_some_and(|s| s.in_flight.is_none())
    }

    /// Queues a new message; `id` is larger than every id so far.
    pub(crate) fn push_new(&mut self, id: MessageId, entry: E) {
        self.slots.insert(
            id,
            Slot {
                entry,
                in_flight: None,
            },
        );
        self.fresh.push_back(id);
        self.queued += 1;
    }

    /// Queues a message that was in flight (for replay, before every
    /// message never written).
    pub(crate) fn requeue(&mut self, id: MessageId, entry: E) {
        self.slots.insert(
            id,
            Slot {
                entry,
                in_flight: None,
            },
        );
        self.replays.insert(id);
        self.queued += 1;
    }

    /// The first queued message.
    pub(crate) fn first_queued(&self) -> Option<(MessageId, &E)> {
        let id = self
            .replays
            .first()
            .copied()
            .or_else(|| self.fresh.front().copied())?;
        self.slots.get(&id).map(|s| (id, &s.entry))
    }

    /// The queued messages, in queue order.
    pub(crate) fn queued(&self) -> impl Iterator<Item = (MessageId, &E)> {
        self.replays
            .iter()
            .chain(self.fresh.iter().filter(|id| self.is_queued(**id)))
            .filter_map(|id| self.slots.get(id).map(|s| (*id, &s.entry)))
    }

    /// Marks the first queued message in flight on `generation`.
    pub(crate) fn send_first(&mut self, generation: Generation) -> Option<(MessageId, &mut E)> {
        let id = match self.replays.pop_first() {
            Some(id) => id,
            None => {
                let id = self.fresh.pop_front()?;
                self.clean_front();
                id
            }
        };
        let slot = self.slots.get_mut(&id)?;
        slot.in_flight = Some(generation);
        self.queued -= 1;
        self.in_flight += 1;
        Some((id, &mut slot.entry))
    }

    /// Removes a queued message.
    pub(crate) fn remove_queued(&mut self, id: MessageId) -> Option<E> {
        if !self.is_queued(id) {
            return None;
        }
        let slot = self.slots.remove(&id)?;
        self.queued -= 1;
        if !self.replays.remove(&id) {
            self.clean_front();
        }
        Some(slot.entry)
    }

    /// Removes message `id` if it is in flight on `generation`.
    pub(crate) fn take_in_flight(&mut self, id: MessageId, generation: Generation) -> Option<E> {
        match self.slots.entry(id) {
            Entry::Occupied(slot) if slot.get().in_flight == Some(generation) => {
                self.in_flight -= 1;
                Some(slot.remove().entry)
            }
            _ => None,
        }
    }

    /// Removes a message in flight, with its link.
    pub(crate) fn remove_in_flight(&mut self, id: MessageId) -> Option<(Generation, E)> {
        let generation = self.slots.get(&id)?.in_flight?;
        let slot = self.slots.remove(&id)?;
        self.in_flight -= 1;
        Some((generation, slot.entry))
    }

    /// The messages in flight, in id order.
    pub(crate) fn in_flight_ids(&self) -> Vec<(MessageId, Generation)> {
        let mut ids: Vec<_> = self
            .slots
            .iter()
            .filter_map(|(id, s)| s.in_flight.map(|g| (*id, g)))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Every pending message, in any order.
    pub(crate) fn all(&self) -> impl Iterator<Item = (MessageId, &Slot<E>)> {
        self.slots.iter().map(|(id, s)| (*id, s))
    }

    /// Removes every message, in id order.
    pub(crate) fn drain_sorted(&mut self) -> Vec<(MessageId, E)> {
        let mut all: Vec<_> = self.slots.drain().map(|(id, s)| (id, s.entry)).collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        self.fresh.clear();
        self.replays.clear();
        self.queued = 0;
        self.in_flight = 0;
        all
    }

    /// Drops ids no longer queued from the front of `fresh`, and compacts
    /// it when removals in the middle left it mostly stale.
    fn clean_front(&mut self) {
        while let Some(id) = self.fresh.front() {
            if self.is_queued(*id) {
                break;
            }
            self.fresh.pop_front();
        }
        if self.fresh.len() > 2 * self.queued + 64 {
            let slots = &self.slots;
            self.fresh
                .retain(|id| slots.get(id).is_some_and(|s| s.in_flight.is_none()));
        }
    }

    /// Internal consistency, for the core's invariant check.
    pub(crate) fn check(&self) -> Result<(), String> {
        let queued = self
            .slots
            .values()
            .filter(|s| s.in_flight.is_none())
            .count();
        if queued != self.queued || self.slots.len() - queued != self.in_flight {
            return Err("store counts out of sync".into());
        }
        if self.queued().count() != self.queued {
            return Err("store queue order out of sync".into());
        }
        if self.fresh.front().is_some_and(|id| !self.is_queued(*id)) {
            return Err("store queue front is stale".into());
        }
        if let (Some(r), Some(f)) = (self.replays.last(), self.fresh.front())
            && r >= f
        {
            return Err("a replay behind a message never written".into());
        }
        Ok(())
    }
}

/// `(time, id)` pairs pushed mostly in time order (publish timeouts: the
/// submission time plus a timeout that rarely changes): those in order go
/// to a deque, the rest to an ordered set. An entry whose message resolved
/// is dropped from the deque lazily, once it reaches the front, so that
/// removing the oldest costs no search; the front is always live.
#[derive(Debug)]
pub(crate) struct TimeIndex<T> {
    in_order: VecDeque<(T, MessageId)>,
    out_of_order: BTreeSet<(T, MessageId)>,
}

impl<T> Default for TimeIndex<T> {
    fn default() -> Self {
        Self {
            in_order: VecDeque::new(),
            out_of_order: BTreeSet::new(),
        }
    }
}

impl<T: Ord + Copy> TimeIndex<T> {
    pub(crate) fn insert(&mut self, at: T, id: MessageId) {
        if self.in_order.back().is_none_or(|(last, _)| *last <= at) {
            self.in_order.push_back((at, id));
        } else {
            self.out_of_order.insert((at, id));
        }
    }

    /// The earliest live entry.
    pub(crate) fn first(&self) -> Option<(T, MessageId)> {
        match (self.in_order.front(), self.out_of_order.first()) {
            (Some(a), Some(b)) => Some(*a.min(b)),
            (a, b) => a.or(b).copied(),
        }
    }

    /// Removes `(at, id)`, whose message is no longer live. `live` says
    /// whether an entry's message still has that time; `pending` bounds
    /// how many entries can be live.
    pub(crate) fn remove(
        &mut self,
        at: T,
        id: MessageId,
        pending: usize,
        live: impl Fn(&(T, MessageId)) -> bool,
    ) {
        if !self.out_of_order.is_empty() && self.out_of_order.remove(&(at, id)) {
            return;
        }
        // Usually the oldest goes first: known dead without asking `live`.
        if self.in_order.front() == Some(&(at, id)) {
            self.in_order.pop_front();
        }
        while let Some(front) = self.in_order.front() {
            if live(front) {
                break;
            }
            self.in_order.pop_front();
        }
        // Removals out of order left the deque mostly stale: compact.
        if self.in_order.len() > 2 * pending + 64 {
            self.in_order.retain(|e| live(e));
        }
    }

    pub(crate) fn clear(&mut self) {
        self.in_order.clear();
        self.out_of_order.clear();
    }

    /// The live entries, for the core's invariant check.
    pub(crate) fn live(&self, live: impl Fn(&(T, MessageId)) -> bool) -> BTreeSet<(T, MessageId)> {
        self.in_order
            .iter()
            .chain(&self.out_of_order)
            .filter(|e| live(e))
            .copied()
            .collect()
    }

    /// Whether the front is live and the deque in order.
    pub(crate) fn is_consistent(&self, live: impl Fn(&(T, MessageId)) -> bool) -> bool {
        self.in_order.front().is_none_or(&live)
            && self.out_of_order.iter().all(&live)
            && self.in_order.iter().is_sorted_by_key(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> MessageId {
        MessageId(n)
    }

    #[test]
    fn the_queue_is_replays_then_the_rest_in_id_order() {
        let mut store: Store<&str> = Store::default();
        for (n, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
            store.push_new(id(n as u64 + 1), name);
        }
        let g = Generation(1);
        assert_eq!(store.send_first(g).map(|(i, _)| i), Some(id(1)));
        assert_eq!(store.send_first(g).map(|(i, _)| i), Some(id(2)));
        // "c" leaves from the middle of the queue; "b" comes back.
        assert_eq!(store.remove_queued(id(3)), Some("c"));
        let b = store.take_in_flight(id(2), g).unwrap();
        store.requeue(id(2), b);
        let order: Vec<_> = store.queued().map(|(i, _)| i).collect();
        assert_eq!(order, [id(2), id(4)]);
        assert_eq!(store.first_queued().map(|(i, _)| i), Some(id(2)));
        assert_eq!(
            store.take_in_flight(id(1), Generation(2)),
            None,
            "wrong link"
        );
        assert_eq!((store.queued_len(), store.in_flight_len()), (2, 1));
        store.check().unwrap();
        let all: Vec<_> = store.drain_sorted().into_iter().map(|(i, _)| i).collect();
        assert_eq!(all, [id(1), id(2), id(4)]);
    }

    #[test]
    fn a_queue_emptied_from_the_middle_stays_small() {
        let mut store: Store<u64> = Store::default();
        for n in 1..=1000 {
            store.push_new(id(n), n);
        }
        // Everything but the first leaves from behind the front.
        for n in 2..=1000 {
            store.remove_queued(id(n));
        }
        assert!(store.fresh.len() <= 2 * store.queued_len() + 64 + 1);
        store.check().unwrap();
        assert_eq!(store.send_first(Generation(1)).map(|(i, _)| i), Some(id(1)));
        assert!(store.first_queued().is_none());
    }

    #[test]
    fn the_time_index_stays_exact_and_bounded_whatever_the_removal_order() {
        let mut index: TimeIndex<u64> = TimeIndex::default();
        let mut live: BTreeSet<(u64, MessageId)> = BTreeSet::new();
        // Mostly in order, one in twenty earlier than the last.
        for n in 0..2000u64 {
            let at = if n % 20 == 19 { n - 10 } else { n };
            index.insert(at, id(n));
            live.insert((at, id(n)));
        }
        // Remove every third, then the rest from the newest.
        let order: Vec<_> = live
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| i % 3 == 0)
            .map(|(_, e)| e)
            .chain(live.iter().rev().copied())
            .collect();
        for (at, i) in order {
            if !live.remove(&(at, i)) {
                continue;
            }
            index.remove(at, i, live.len(), |e| live.contains(e));
            assert_eq!(index.first(), live.first().copied());
            assert!(index.is_consistent(|e| live.contains(e)));
            assert!(index.in_order.len() <= 2 * live.len() + 64 + 1);
        }
        assert_eq!(index.first(), None);
    }
}
