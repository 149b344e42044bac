//! `GatewayCounts`: the few counts that hold for the whole gateway rather than one shard.
//!
//! Everything else a shard owns is its own; these two limits are promised for the gateway as a
//! whole (PROTOCOL.md 5.5), so every shard takes from and gives back to the same counters. They
//! are touched once when a connection or a node arrives and once when it goes, never per
//! message, so sharing them costs nothing on the hot paths.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Counters shared by every shard of one gateway. Each shard's [`Config`](crate::Config) holds
/// the same `Arc<GatewayCounts>`.
#[derive(Debug, Default)]
pub struct GatewayCounts {
    /// Nodes in the client directory, all shards together (`--max-clients`).
    pub clients: Counter,
    /// Connections in the handshake or waiting for CONNECT's admission (`--max-handshakes`).
    pub handshakes: Counter,
}

/// A count that many shards raise and lower.
#[derive(Debug, Default)]
pub struct Counter(AtomicUsize);

impl Counter {
    /// Raises the count by one unless it is already `limit` or more; true if it was raised.
    pub fn try_take(&self, limit: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Raises the count by one whatever its value.
    pub fn take(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// Lowers the count by one.
    pub fn give_back(&self) {
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        // Every give_back pairs with an earlier take by the same owner of the unit.
        debug_assert!(before > 0, "a count given back below zero");
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_takes_up_to_its_limit_and_again_after_a_give_back() {
        let c = Counter::default();
        assert!(c.try_take(2));
        assert!(c.try_take(2));
        assert!(!c.try_take(2));
        assert_eq!(c.get(), 2);
        c.give_back();
        assert!(c.try_take(2));
        c.take();
        assert_eq!(c.get(), 3);
    }

    #[test]
    fn threads_taking_at_once_never_pass_the_limit() {
        let c = std::sync::Arc::new(Counter::default());
        let taken: usize = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).filter(|_| c.try_take(1500)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(taken, 1500);
        assert_eq!(c.get(), 1500);
    }
}
