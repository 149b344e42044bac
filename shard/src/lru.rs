//! `PeerLru`: a bounded least-recently-used map with O(1) touch, insert and remove. An insert
//! over capacity hands back what it evicted, so that the caller closes it.
//!
//! Entries live in a slab and form a doubly-linked recency list through slab indices; a hash map
//! finds a key's slab index.

use std::borrow::Borrow;
use std::hash::Hash;

use ahash::AHashMap;
use slab::Slab;

/// What an insert displaced.
#[derive(Debug, PartialEq, Eq)]
pub enum Displaced<K, V> {
    /// Nothing: the key is new and there was room.
    Nothing,
    /// The key was present: its old value, now replaced (the key is touched).
    Replaced(V),
    /// The table was full: the least recently used entry, now removed.
    Evicted(K, V),
}

/// A bounded map that evicts its least recently used entry to make room.
///
/// Invariant: `map` and the recency list hold the same entries, and every index stored in the
/// map, in `head`/`tail` or in a link names an occupied slab entry.
pub struct PeerLru<K, V> {
    map: AHashMap<K, usize>,
    nodes: Slab<Node<K, V>>,
    /// The most recently used entry.
    head: usize,
    /// The least recently used entry.
    tail: usize,
    capacity: usize,
}

struct Node<K, V> {
    key: K,
    value: V,
    /// Towards the most recently used end.
    prev: usize,
    /// Towards the least recently used end.
    next: usize,
}

/// The end of the recency list.
const NIL: usize = usize::MAX;

impl<K: Hash + Eq + Clone, V> PeerLru<K, V> {
    /// An empty map holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        PeerLru {
            map: AHashMap::new(),
            nodes: Slab::new(),
            head: NIL,
            tail: NIL,
            capacity: capacity.max(1),
        }
    }

    /// Inserts or replaces `key`, making it the most recently used.
    pub fn insert(&mut self, key: K, value: V) -> Displaced<K, V> {
        if let Some(&index) = self.map.get(&key) {
            let old = std::mem::replace(&mut self.nodes[index].value, value);
            self.touch_index(index);
            return Displaced::Replaced(old);
        }
        let mut displaced = Displaced::Nothing;
        if self.map.len() >= self.capacity {
            if let Some((k, v)) = self.pop_lru() {
                displaced = Displaced::Evicted(k, v);
            }
        }
        let index = self.nodes.insert(Node {
            key: key.clone(),
            value,
            prev: NIL,
            next: NIL,
        });
        self.push_front(index);
        self.map.insert(key, index);
        displaced
    }

    /// Marks `key` most recently used; false if absent.
    pub fn touch<Q>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.map.get(key) {
            Some(&index) => {
                self.touch_index(index);
                true
            }
            None => false,
        }
    }

    /// The value of `key`, without touching it.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let &index = self.map.get(key)?;
        self.nodes.get(index).map(|node| &node.value)
    }

    /// The value of `key`, mutable, without touching it.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let &index = self.map.get(key)?;
        self.nodes.get_mut(index).map(|node| &mut node.value)
    }

    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.contains_key(key)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let index = self.map.remove(key)?;
        self.unlink(index);
        Some(self.nodes.remove(index).value)
    }

    /// The least recently used entry: the next to be evicted.
    pub fn peek_lru(&self) -> Option<(&K, &V)> {
        self.nodes
            .get(self.tail)
            .map(|node| (&node.key, &node.value))
    }

    /// Removes and returns the least recently used entry.
    pub fn pop_lru(&mut self) -> Option<(K, V)> {
        if self.tail == NIL {
            return None;
        }
        let index = self.tail;
        self.unlink(index);
        let Node { key, value, .. } = self.nodes.remove(index);
        let removed = self.map.remove(&key);
        debug_assert_eq!(
            removed,
            Some(index),
            "the map and the recency list hold the same entries"
        );
        Some((key, value))
    }

    /// The entries from the most to the least recently used.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        let mut index = self.head;
        std::iter::from_fn(move || {
            let node = self.nodes.get(index)?;
            index = node.next;
            Some((&node.key, &node.value))
        })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn touch_index(&mut self, index: usize) {
        if self.head != index {
            self.unlink(index);
            self.push_front(index);
        }
    }

    /// Links an unlinked entry at the most recently used end.
    fn push_front(&mut self, index: usize) {
        let head = self.head;
        let node = &mut self.nodes[index];
        node.prev = NIL;
        node.next = head;
        match head {
            NIL => self.tail = index,
            head => self.nodes[head].prev = index,
        }
        self.head = index;
    }

    fn unlink(&mut self, index: usize) {
        let Node { prev, next, .. } = self.nodes[index];
        match prev {
            NIL => self.head = next,
            prev => self.nodes[prev].next = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.nodes[next].prev = prev,
        }
    }
}

impl<K, V> std::fmt::Debug for PeerLru<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLru")
            .field("len", &self.nodes.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(lru: &PeerLru<u32, &str>) -> Vec<u32> {
        lru.iter().map(|(&k, _)| k).collect()
    }

    #[test]
    fn insert_over_capacity_evicts_the_least_recently_used() {
        let mut lru = PeerLru::new(2);
        assert_eq!(lru.insert(1, "a"), Displaced::Nothing);
        assert_eq!(lru.insert(2, "b"), Displaced::Nothing);
        assert_eq!(lru.insert(3, "c"), Displaced::Evicted(1, "a"));
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.get(&1), None);
        assert_eq!(keys(&lru), [3, 2]);
    }

    #[test]
    fn touch_saves_an_entry_from_eviction() {
        let mut lru = PeerLru::new(2);
        lru.insert(1, "a");
        lru.insert(2, "b");
        assert!(lru.touch(&1));
        assert!(!lru.touch(&9));
        assert_eq!(lru.insert(3, "c"), Displaced::Evicted(2, "b"));
        assert_eq!(keys(&lru), [3, 1]);
    }

    #[test]
    fn get_does_not_touch() {
        let mut lru = PeerLru::new(2);
        lru.insert(1, "a");
        lru.insert(2, "b");
        assert_eq!(lru.get(&1), Some(&"a"));
        assert_eq!(lru.peek_lru(), Some((&1, &"a")));
    }

    #[test]
    fn insert_of_a_present_key_replaces_its_value_and_touches_it() {
        let mut lru = PeerLru::new(2);
        lru.insert(1, "a");
        lru.insert(2, "b");
        assert_eq!(lru.insert(1, "a2"), Displaced::Replaced("a"));
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.get(&1), Some(&"a2"));
        assert_eq!(lru.pop_lru(), Some((2, "b")));
    }

    #[test]
    fn remove_unlinks_from_any_position() {
        let mut lru = PeerLru::new(4);
        for (k, v) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
            lru.insert(k, v);
        }
        assert_eq!(lru.remove(&3), Some("c"));
        assert_eq!(lru.remove(&4), Some("d"));
        assert_eq!(lru.remove(&1), Some("a"));
        assert_eq!(lru.remove(&1), None);
        assert_eq!(keys(&lru), [2]);
        assert_eq!(lru.pop_lru(), Some((2, "b")));
        assert_eq!(lru.pop_lru(), None);
        assert!(lru.is_empty());
    }

    #[test]
    fn zero_capacity_holds_one_entry() {
        let mut lru = PeerLru::new(0);
        assert_eq!(lru.capacity(), 1);
        assert_eq!(lru.insert(1, "a"), Displaced::Nothing);
        assert_eq!(lru.insert(2, "b"), Displaced::Evicted(1, "a"));
    }
}
