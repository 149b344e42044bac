//! `PeerLru`: a bounded least-recently-used map with O(1) touch, insert and remove. An insert
//! over capacity hands back what it evicted, so that the caller closes it.

use std::hash::Hash;

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

pub struct PeerLru<K, V> {
    _todo: std::marker::PhantomData<(K, V)>,
}

impl<K: Hash + Eq + Clone, V> PeerLru<K, V> {
    /// An empty map holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        let _ = capacity;
        todo!()
    }

    /// Inserts or replaces `key`, making it the most recently used.
    pub fn insert(&mut self, key: K, value: V) -> Displaced<K, V> {
        let _ = (key, value);
        todo!()
    }

    /// Marks `key` most recently used; false if absent.
    pub fn touch(&mut self, key: &K) -> bool {
        let _ = key;
        todo!()
    }

    /// The value of `key`, without touching it.
    pub fn get(&self, key: &K) -> Option<&V> {
        let _ = key;
        todo!()
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let _ = key;
        todo!()
    }

    /// Removes and returns the least recently used entry.
    pub fn pop_lru(&mut self) -> Option<(K, V)> {
        todo!()
    }

    pub fn len(&self) -> usize {
        todo!()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        todo!()
    }
}
