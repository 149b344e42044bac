//! PING as a barrier (PROTOCOL.md 5.2): the PONG to a session's PING waits until every other
//! shard has applied the replication messages (interest, registrations) the session caused
//! before it. Shard-to-shard channels are FIFO, so once every other shard has answered a
//! [`ShardMsg::Barrier`] sent after those messages, they are in effect everywhere.

use std::collections::VecDeque;

use crate::ids::{SessionKey, ShardId};
use crate::router::ShardMsg;
use crate::wire::{Message, Pong};

use super::session::State;
use super::Shard;

/// A session's (or a peer link's) barriers in flight and the PINGs that wait for them.
#[derive(Default)]
pub(super) struct Barrier {
    /// Replication messages were sent since the last barrier.
    pub(super) dirty: bool,
    /// The last barrier sequence number sent.
    sent: u32,
    /// Barriers sent and the acknowledgements each still waits for, oldest first.
    outstanding: VecDeque<(u32, u16)>,
    /// PINGs waiting: their timestamp, the barrier they wait for, and whether they wait for
    /// the mesh after it.
    pongs: VecDeque<(u64, u32, bool)>,
    /// PINGs past the shards' barrier, in order: their timestamp, and the mesh barrier (its
    /// sequence number and the shards yet to answer) each waits for; `None` for one that
    /// waits only for the PINGs before it.
    mesh: VecDeque<(u64, Option<(u32, u16)>)>,
    /// The last mesh barrier sequence number sent.
    mesh_sent: u32,
}

/// What a PING asks of the shard.
pub(super) enum PingAnswer {
    /// Nothing to wait for: PONG at once.
    Now,
    /// Send barrier `seq` to every other shard; the PONG waits for their acknowledgements.
    SendBarrier(u32),
    /// The PONG waits behind an earlier PING's barrier.
    Wait,
}

impl Barrier {
    /// PINGs waiting for their PONG.
    pub(super) fn waiting(&self) -> usize {
        self.pongs.len() + self.mesh.len()
    }

    /// A PING with `timestamp`, with `others` shards to wait for; `mesh` if it waits for the
    /// mesh too.
    pub(super) fn ping(&mut self, timestamp: u64, others: u16, mesh: bool) -> PingAnswer {
        if others == 0 {
            // A gateway of one shard: nothing to wait for, now or before.
            self.dirty = false;
            return PingAnswer::Now;
        }
        if !self.dirty && self.pongs.is_empty() {
            return PingAnswer::Now;
        }
        if self.dirty {
            self.dirty = false;
            self.sent += 1;
            self.outstanding.push_back((self.sent, others));
            self.pongs.push_back((timestamp, self.sent, mesh));
            PingAnswer::SendBarrier(self.sent)
        } else {
            self.pongs.push_back((timestamp, self.sent, mesh));
            PingAnswer::Wait
        }
    }

    /// One shard acknowledged barrier `seq`: the latest barrier now complete, if any.
    pub(super) fn ack(&mut self, seq: u32) -> Option<u32> {
        if let Some(entry) = self.outstanding.iter_mut().find(|(s, _)| *s == seq) {
            entry.1 = entry.1.saturating_sub(1);
        }
        let mut done = None;
        while let Some(&(seq, 0)) = self.outstanding.front() {
            self.outstanding.pop_front();
            done = Some(seq);
        }
        done
    }

    /// The next PING whose barrier is complete once `done` is: its timestamp, and whether it
    /// waits for the mesh too.
    pub(super) fn next_pong(&mut self, done: u32) -> Option<(u64, bool)> {
        let &(timestamp, needs, mesh) = self.pongs.front()?;
        if needs > done {
            return None;
        }
        self.pongs.pop_front();
        Some((timestamp, mesh))
    }

    /// A PING past the shards' barrier: the PONG to send now, or (for one that waits for
    /// the mesh, or behind one) `None`; `Some(seq)` in the second place is a mesh barrier to
    /// send to `shards` shards.
    fn past_shards(
        &mut self,
        timestamp: u64,
        mesh: bool,
        shards: u16,
    ) -> (Option<u64>, Option<u32>) {
        if !mesh && self.mesh.is_empty() {
            return (Some(timestamp), None);
        }
        if !mesh {
            self.mesh.push_back((timestamp, None));
            return (None, None);
        }
        self.mesh_sent += 1;
        self.mesh
            .push_back((timestamp, Some((self.mesh_sent, shards))));
        (None, Some(self.mesh_sent))
    }

    /// One shard answered mesh barrier `seq`: the PONGs now due, in order.
    fn mesh_ack(&mut self, seq: u32, due: &mut Vec<u64>) {
        for (_, wait) in &mut self.mesh {
            if let Some((s, left)) = wait {
                if *s == seq {
                    *left = left.saturating_sub(1);
                }
            }
        }
        while let Some(&(timestamp, wait)) = self.mesh.front() {
            if wait.is_some_and(|(_, left)| left > 0) {
                break;
            }
            self.mesh.pop_front();
            due.push(timestamp);
        }
    }
}

impl Shard {
    /// Sends a replication message that session `key` caused to every other shard; the
    /// session's next PING waits until they have applied it. With one shard there is no one to
    /// tell.
    pub(super) fn replicate(&mut self, key: SessionKey, msg: ShardMsg) {
        if self.config.shards < 2 {
            return;
        }
        if let Some(s) = self.sessions.get_mut(key) {
            s.barrier.dirty = true;
        }
        self.broadcast(msg);
    }

    /// PING: answered once the session's earlier changes are in effect on every shard, and
    /// with `mesh` (in a mesh) on every peer of an up link too (9.6).
    pub(super) fn on_ping(&mut self, key: SessionKey, timestamp: u64, mesh: bool) {
        let others = self.config.shards.saturating_sub(1);
        let mesh = mesh && self.mesh_on();
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        match s.barrier.ping(timestamp, others, mesh) {
            PingAnswer::Now => self.ping_past_shards(key, timestamp, mesh),
            PingAnswer::SendBarrier(seq) => {
                self.broadcast(ShardMsg::Barrier { session: key, seq });
            }
            PingAnswer::Wait => {}
        }
    }

    /// A PING whose changes are in effect on every shard: PONG, or (with `mesh`) a mesh
    /// barrier to every shard first.
    fn ping_past_shards(&mut self, key: SessionKey, timestamp: u64, mesh: bool) {
        let me = self.id();
        let shards = self.config.shards;
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        match s.barrier.past_shards(timestamp, mesh, shards) {
            (Some(timestamp), _) => self.pong(key, timestamp),
            (None, Some(seq)) => {
                self.broadcast(ShardMsg::MeshBarrier { session: key, seq });
                self.on_mesh_barrier(me, key, seq);
            }
            (None, None) => {}
        }
    }

    fn pong(&mut self, key: SessionKey, timestamp: u64) {
        let pong = Pong {
            timestamp,
            server_time: self.server_time(),
            node_id: None,
        };
        self.write(key, &Message::Pong(pong));
    }

    /// A shard's links all answered the session's mesh barrier `seq`.
    pub(super) fn on_mesh_barrier_ack(&mut self, key: SessionKey, seq: u32) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.state != State::Active {
            return;
        }
        let mut due = Vec::new();
        s.barrier.mesh_ack(seq, &mut due);
        for timestamp in due {
            self.pong(key, timestamp);
        }
    }

    /// Another shard asks: every message this shard sent it before has been applied.
    pub(super) fn on_barrier(&mut self, from: ShardId, session: SessionKey, seq: u32) {
        self.send(from, ShardMsg::BarrierAck { session, seq });
    }

    pub(super) fn on_barrier_ack(&mut self, key: SessionKey, seq: u32) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.state != State::Active {
            return;
        }
        let Some(done) = s.barrier.ack(seq) else {
            return;
        };
        let mut ready = Vec::new();
        while let Some(pong) = s.barrier.next_pong(done) {
            ready.push(pong);
        }
        for (timestamp, mesh) in ready {
            self.ping_past_shards(key, timestamp, mesh);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_with_nothing_replicated_is_answered_at_once() {
        let mut b = Barrier::default();
        assert!(matches!(b.ping(7, 3, false), PingAnswer::Now));
    }

    #[test]
    fn with_no_other_shard_a_ping_is_answered_at_once_whatever_was_replicated() {
        let mut b = Barrier {
            dirty: true,
            ..Barrier::default()
        };
        assert!(matches!(b.ping(7, 0, false), PingAnswer::Now));
        assert!(matches!(b.ping(8, 0, true), PingAnswer::Now));
    }

    #[test]
    fn pings_wait_in_order_until_every_other_shard_acknowledged_their_barrier() {
        let mut b = Barrier {
            dirty: true,
            ..Barrier::default()
        };
        assert!(matches!(b.ping(1, 2, false), PingAnswer::SendBarrier(1)));
        // Nothing new replicated: the next PING waits behind the same barrier.
        assert!(matches!(b.ping(2, 2, false), PingAnswer::Wait));
        b.dirty = true;
        assert!(matches!(b.ping(3, 2, false), PingAnswer::SendBarrier(2)));

        assert_eq!(b.ack(1), None, "one of two shards acknowledged");
        assert_eq!(b.ack(2), None, "barrier 2 is not first");
        assert_eq!(b.ack(1), Some(1));
        assert_eq!(b.next_pong(1), Some((1, false)));
        assert_eq!(b.next_pong(1), Some((2, false)));
        assert_eq!(b.next_pong(1), None, "PING 3 waits for barrier 2");
        assert_eq!(b.ack(2), Some(2));
        assert_eq!(b.next_pong(2), Some((3, false)));
        assert!(matches!(b.ping(4, 2, false), PingAnswer::Now));
    }
}
