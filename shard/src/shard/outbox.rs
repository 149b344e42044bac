//! The outbox: the one way a shard queues a message for another shard.
//!
//! Messages that carry state (admission, replication, barriers, call outcomes) are never
//! dropped. Data messages ([`ShardMsg::is_data`]: a PUBLISH, a forwarded CALL) are shed while
//! the link to their shard holds `--max-shard-backlog` messages, and the work fails with the
//! protocol's answer (a dropped delivery, an `overloaded` call).

use std::collections::VecDeque;

use crate::ids::ShardId;
use crate::router::ShardMsg;

use super::Shard;

/// Whether a message may be dropped when the link to its shard is backed up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shedding {
    /// A message that carries state: always queued.
    Never,
    /// A data message: dropped while the link holds `--max-shard-backlog` messages.
    IfBacklogged,
}

/// The messages waiting for each shard, oldest first, until the driver moves them to the
/// shard's channel.
pub(super) struct Outbox {
    queues: Vec<VecDeque<ShardMsg>>,
    max_backlog: usize,
}

impl Outbox {
    pub(super) fn new(shards: u16, max_backlog: usize) -> Outbox {
        Outbox {
            queues: (0..shards).map(|_| VecDeque::new()).collect(),
            max_backlog,
        }
    }

    /// Whether the link to `to` is backed up: data messages for it are shed.
    pub(super) fn is_backlogged(&self, to: ShardId) -> bool {
        self.queues[to.index()].len() >= self.max_backlog
    }

    pub(super) fn queue_mut(&mut self, to: ShardId) -> &mut VecDeque<ShardMsg> {
        &mut self.queues[to.index()]
    }

    /// Messages waiting, for every shard.
    pub(super) fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }
}

impl Shard {
    /// Queues `msg` for shard `to` (never this shard), unless `shedding` allows dropping it
    /// and the link is backed up. Returns whether it was queued.
    pub(super) fn queue_to(&mut self, to: ShardId, msg: ShardMsg, shedding: Shedding) -> bool {
        debug_assert_ne!(to, self.id(), "a shard handles its own messages at once");
        debug_assert_eq!(
            shedding == Shedding::IfBacklogged,
            msg.is_data(),
            "data messages, and only they, may be shed"
        );
        if shedding == Shedding::IfBacklogged && self.outbox.is_backlogged(to) {
            return false;
        }
        self.outbox.queue_mut(to).push_back(msg);
        self.counters.shard_messages_out += 1;
        true
    }

    /// Sends a message that is never shed; to this shard itself, it is handled at once.
    pub(super) fn send(&mut self, to: ShardId, msg: ShardMsg) {
        if to == self.id() {
            self.on_shard_message(to, msg);
        } else {
            self.queue_to(to, msg, Shedding::Never);
        }
    }

    /// Sends a message that is never shed to every other shard.
    pub(super) fn broadcast(&mut self, msg: ShardMsg) {
        let me = self.id();
        for to in (0..self.config.shards).map(ShardId) {
            if to != me {
                self.queue_to(to, msg.clone(), Shedding::Never);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_backlogged_once_it_holds_the_bound() {
        let mut outbox = Outbox::new(2, 2);
        let ack = ShardMsg::BarrierAck {
            session: crate::genslab::SlabKey::new(0, 0),
            seq: 1,
        };
        for _ in 0..2 {
            assert!(!outbox.is_backlogged(ShardId(1)));
            outbox.queue_mut(ShardId(1)).push_back(ack.clone());
        }
        assert!(outbox.is_backlogged(ShardId(1)));
        assert!(!outbox.is_backlogged(ShardId(0)));
        assert_eq!(outbox.len(), 2);
    }
}
