//! `SubscriptionIndex`: patterns with `*` and `**`, per realm, answering "who matches this
//! topic" with each subscriber once.

use crate::ids::RealmId;

/// Maps (realm, pattern) to subscribers of type `K`.
pub struct SubscriptionIndex<K> {
    _todo: std::marker::PhantomData<K>,
}

impl<K: Copy + Eq + std::hash::Hash + Ord> SubscriptionIndex<K> {
    pub fn new() -> Self {
        todo!()
    }

    /// Adds `who` to `pattern`; false if it was there already.
    pub fn insert(&mut self, realm: RealmId, pattern: &[u8], who: K) -> bool {
        let _ = (realm, pattern, who);
        todo!()
    }

    /// Removes `who` from `pattern`; false if it was not there.
    pub fn remove(&mut self, realm: RealmId, pattern: &[u8], who: K) -> bool {
        let _ = (realm, pattern, who);
        todo!()
    }

    /// Subscribers of exactly `pattern`.
    pub fn subscribers_of(&self, realm: RealmId, pattern: &[u8]) -> usize {
        let _ = (realm, pattern);
        todo!()
    }

    /// Appends to `out` every subscriber with at least one pattern matching `topic`, each once.
    pub fn matches(&self, realm: RealmId, topic: &[u8], out: &mut Vec<K>) {
        let _ = (realm, topic, out);
        todo!()
    }

    /// (pattern, subscriber) pairs held.
    pub fn len(&self) -> usize {
        todo!()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Copy + Eq + std::hash::Hash + Ord> Default for SubscriptionIndex<K> {
    fn default() -> Self {
        Self::new()
    }
}
