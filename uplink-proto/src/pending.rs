//! The pending table: requests awaiting an answer, one sub-machine for every table of the sled and the
//! gateway sessions.
//!
//! Each entry has a key the table mints (increasing, never reused), an optional wire id it can be found by,
//! and a deadline (`now` + the table's timeout, or none). The table is kept in key order; because keys and
//! `now` only grow and the timeout is the table's own, key order is also deadline order, so the earliest
//! deadline is the first entry's and expiring is popping from the front: no second ordered index to keep in
//! step. [`PendingTable::poll_timeout`] gives the earliest deadline; [`PendingTable::pop_expired`] takes
//! what is due.

use alloc::collections::BTreeMap;
use alloc::collections::btree_map::Entry as MapEntry;
use alloc::string::String;
use core::time::Duration;

use crate::time::Instant;

/// A key the table can mint from a sequence number (the ids of [`crate::ids`] are).
pub(crate) trait Key: Copy + Ord {
    /// The key for the `n`-th request.
    fn from_seq(n: u64) -> Self;
}

/// One entry: its wire id (empty: not findable by one), its deadline, and the owner's value.
#[derive(Clone, Debug)]
pub(crate) struct Pending<V> {
    pub(crate) wire: String,
    pub(crate) deadline: Option<Instant>,
    pub(crate) value: V,
}

/// Requests awaiting an answer, keyed both ways and ordered by deadline. See the [module docs](self).
#[derive(Clone, Debug)]
pub(crate) struct PendingTable<K, V> {
    timeout: Option<Duration>,
    next: u64,
    entries: BTreeMap<K, Pending<V>>,
    by_wire: BTreeMap<String, K>,
}

impl<K: Key, V> PendingTable<K, V> {
    /// An empty table whose entries expire `timeout` after they are inserted (never, for `None`).
    pub(crate) fn new(timeout: Option<Duration>) -> Self {
        PendingTable { timeout, next: 0, entries: BTreeMap::new(), by_wire: BTreeMap::new() }
    }

    /// Entries pending.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Mints the next key. A key that is never inserted (a request refused at once) is simply skipped.
    pub(crate) fn mint(&mut self) -> K {
        let key = K::from_seq(self.next);
        self.next += 1;
        key
    }

    /// Inserts under `key`, which must be the key minted last, at `now`, which must not be before any earlier
    /// insertion's: both hold for callers that mint right before inserting and never move time backwards. A
    /// non-empty `wire` id must not be pending already ([`PendingTable::contains_wire`]).
    pub(crate) fn insert(&mut self, key: K, now: Instant, wire: String, value: V) {
        debug_assert!(self.entries.last_key_value().is_none_or(|(last, _)| *last < key), "keys are inserted in order");
        if !wire.is_empty() {
            self.by_wire.insert(wire.clone(), key);
        }
        let deadline = self.timeout.map(|t| now + t);
        self.entries.insert(key, Pending { wire, deadline, value });
    }

    /// Whether an entry with this wire id is pending.
    pub(crate) fn contains_wire(&self, wire: &str) -> bool {
        self.by_wire.contains_key(wire)
    }

    /// Whether an entry is pending under `key`.
    pub(crate) fn contains(&self, key: K) -> bool {
        self.entries.contains_key(&key)
    }

    /// The entry under `key`, to read.
    pub(crate) fn get(&self, key: K) -> Option<&Pending<V>> {
        self.entries.get(&key)
    }

    /// The entry under `key`.
    pub(crate) fn get_mut(&mut self, key: K) -> Option<&mut Pending<V>> {
        self.entries.get_mut(&key)
    }

    /// Every entry, in key (and deadline) order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (K, &Pending<V>)> + '_ {
        self.entries.iter().map(|(k, p)| (*k, p))
    }

    /// Every entry's value, in key order, to change (not its wire id nor its deadline).
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.entries.values_mut().map(|p| &mut p.value)
    }

    /// Takes the entry under `key` out.
    pub(crate) fn remove(&mut self, key: K) -> Option<Pending<V>> {
        let pending = self.entries.remove(&key)?;
        if !pending.wire.is_empty() {
            self.by_wire.remove(&pending.wire);
        }
        Some(pending)
    }

    /// Takes out the entry with wire id `wire`, if `accept` agrees; one search of each map.
    pub(crate) fn take_by_wire_if(&mut self, wire: &str, accept: impl FnOnce(&V) -> bool) -> Option<(K, Pending<V>)> {
        let (id, key) = self.by_wire.remove_entry(wire)?;
        match self.entries.entry(key) {
            MapEntry::Occupied(entry) if accept(&entry.get().value) => Some((key, entry.remove())),
            _ => {
                self.by_wire.insert(id, key);
                None
            }
        }
    }

    /// The earliest deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.entries.values().next()?.deadline
    }

    /// Takes out the entry whose deadline is earliest, if it is due at `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(K, Pending<V>)> {
        let entry = self.entries.first_entry()?;
        if entry.get().deadline.is_none_or(|d| d > now) {
            return None;
        }
        let (key, pending) = entry.remove_entry();
        if !pending.wire.is_empty() {
            self.by_wire.remove(&pending.wire);
        }
        Some((key, pending))
    }

    /// Takes every entry out, in key order.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (K, Pending<V>)> + use<K, V> {
        self.by_wire.clear();
        core::mem::take(&mut self.entries).into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct K(u64);

    impl Key for K {
        fn from_seq(n: u64) -> K {
            K(n)
        }
    }

    fn table(timeout: Option<u64>) -> PendingTable<K, &'static str> {
        PendingTable::new(timeout.map(Duration::from_secs))
    }

    #[test]
    fn entries_are_found_both_ways_and_expire_in_order_at_their_deadlines() {
        let mut t = table(Some(10));
        let a = t.mint();
        t.insert(a, Instant::from_secs(0), "a".into(), "first");
        let skipped = t.mint();
        let b = t.mint();
        t.insert(b, Instant::from_secs(3), "b".into(), "second");
        let c = t.mint();
        t.insert(c, Instant::from_secs(3), String::new(), "unnamed");
        assert!(t.get_mut(skipped).is_none() && t.get_mut(a).is_some());
        assert!(t.contains_wire("a") && t.contains_wire("b") && !t.contains_wire(""));
        assert_eq!(t.poll_timeout(), Some(Instant::from_secs(10)));
        assert!(t.pop_expired(Instant::from_secs(9)).is_none());
        assert_eq!(t.pop_expired(Instant::from_secs(10)).map(|(k, p)| (k, p.value)), Some((a, "first")));
        assert!(!t.contains_wire("a"));
        assert_eq!(t.poll_timeout(), Some(Instant::from_secs(13)));
        let due: Vec<K> = core::iter::from_fn(|| t.pop_expired(Instant::from_secs(20))).map(|(k, _)| k).collect();
        assert_eq!(due, [b, c]);
        assert_eq!((t.len(), t.poll_timeout()), (0, None));
    }

    #[test]
    fn taking_by_wire_id_respects_the_owners_condition_and_keeps_both_maps_in_step() {
        let mut t = table(None);
        let a = t.mint();
        t.insert(a, Instant::ZERO, "a".into(), "x");
        assert!(t.take_by_wire_if("a", |v| *v == "y").is_none());
        assert!(t.contains_wire("a") && t.get_mut(a).is_some());
        assert!(t.take_by_wire_if("nope", |_| true).is_none());
        assert_eq!(t.take_by_wire_if("a", |v| *v == "x").map(|(k, _)| k), Some(a));
        assert!(!t.contains_wire("a") && t.get_mut(a).is_none());
        // Without a timeout nothing ever expires.
        let b = t.mint();
        t.insert(b, Instant::ZERO, "b".into(), "z");
        assert_eq!(t.poll_timeout(), None);
        assert!(t.pop_expired(Instant::from_secs(u64::MAX / 2_000_000)).is_none());
        assert_eq!(t.remove(b).map(|p| p.wire), Some("b".into()));
        assert!(!t.contains_wire("b"));
        let c = t.mint();
        t.insert(c, Instant::ZERO, "c".into(), "w");
        assert_eq!(t.drain().map(|(k, _)| k).collect::<Vec<_>>(), [c]);
        assert!(!t.contains_wire("c") && t.len() == 0);
    }
}
