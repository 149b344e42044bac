//! PING as a barrier (PROTOCOL.md 5.2): the PONG to a session's PING waits until every other
//! shard has applied the replication messages (interest, registrations) the session caused
//! before it. Shard-to-shard channels are FIFO, so once every other shard has answered a
//! [`ShardMsg::Barrier`] sent after those messages, they are in effect everywhere.

use std::collections::VecDeque;

use crate::ids::{SessionKey, ShardId};
use crate::router::ShardMsg;
use crate::wire::{Message, Pong};

use super::session::{Session, State};
use super::Shard;

/// A session's barriers in flight and the PINGs that wait for them.
#[derive(Default)]
pub(super) struct Barrier {
    /// Replication messages were sent since the last barrier.
    dirty: bool,
    /// The last barrier sequence number sent.
    sent: u32,
    /// Barriers sent and the acknowledgements each still waits for, oldest first.
    outstanding: VecDeque<(u32, u16)>,
    /// PINGs waiting: their timestamp and the barrier they wait for.
    pongs: VecDeque<(u64, u32)>,
}

/// What a PING asks of the shard.
enum PingAnswer {
    /// Nothing to wait for: PONG at once.
    Now,
    /// Send barrier `seq` to every other shard; the PONG waits for their acknowledgements.
    SendBarrier(u32),
    /// The PONG waits behind an earlier PING's barrier.
    Wait,
}

impl Barrier {
    /// A PING with `timestamp`, with `others` shards to wait for.
    fn ping(&mut self, timestamp: u64, others: u16) -> PingAnswer {
        if !self.dirty && self.pongs.is_empty() {
            return PingAnswer::Now;
        }
        if self.dirty {
            self.dirty = false;
            self.sent += 1;
            self.outstanding.push_back((self.sent, others));
            self.pongs.push_back((timestamp, self.sent));
            PingAnswer::SendBarrier(self.sent)
        } else {
            self.pongs.push_back((timestamp, self.sent));
            PingAnswer::Wait
        }
    }

    /// One shard acknowledged barrier `seq`: the latest barrier now complete, if any.
    fn ack(&mut self, seq: u32) -> Option<u32> {
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

    /// The timestamp of the next PING whose barrier is complete once `done` is.
    fn next_pong(&mut self, done: u32) -> Option<u64> {
        let &(timestamp, needs) = self.pongs.front()?;
        if needs > done {
            return None;
        }
        self.pongs.pop_front();
        Some(timestamp)
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

    pub(super) fn on_ping(&mut self, key: SessionKey, timestamp: u64) {
        let others = self.config.shards.saturating_sub(1);
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        match s.barrier.ping(timestamp, others) {
            PingAnswer::Now => {
                let pong = Pong {
                    timestamp,
                    server_time: self.server_time(),
                    node_id: None,
                };
                self.write(key, &Message::Pong(pong));
            }
            PingAnswer::SendBarrier(seq) => {
                self.broadcast(ShardMsg::Barrier { session: key, seq });
            }
            PingAnswer::Wait => {}
        }
    }

    /// Another shard asks: every message this shard sent it before has been applied.
    pub(super) fn on_barrier(&mut self, from: ShardId, session: SessionKey, seq: u32) {
        self.send(from, ShardMsg::BarrierAck { session, seq });
    }

    pub(super) fn on_barrier_ack(&mut self, key: SessionKey, seq: u32) {
        let server_time = self.server_time();
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.state != State::Active {
            return;
        }
        let Session { barrier, out, .. } = s;
        let Some(done) = barrier.ack(seq) else {
            return;
        };
        while let Some(timestamp) = barrier.next_pong(done) {
            let pong = Pong {
                timestamp,
                server_time,
                node_id: None,
            };
            Message::Pong(pong).encode(&mut out.buf);
        }
        self.mark_ready(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_with_nothing_replicated_is_answered_at_once() {
        let mut b = Barrier::default();
        assert!(matches!(b.ping(7, 3), PingAnswer::Now));
    }

    #[test]
    fn pings_wait_in_order_until_every_other_shard_acknowledged_their_barrier() {
        let mut b = Barrier {
            dirty: true,
            ..Barrier::default()
        };
        assert!(matches!(b.ping(1, 2), PingAnswer::SendBarrier(1)));
        // Nothing new replicated: the next PING waits behind the same barrier.
        assert!(matches!(b.ping(2, 2), PingAnswer::Wait));
        b.dirty = true;
        assert!(matches!(b.ping(3, 2), PingAnswer::SendBarrier(2)));

        assert_eq!(b.ack(1), None, "one of two shards acknowledged");
        assert_eq!(b.ack(2), None, "barrier 2 is not first");
        assert_eq!(b.ack(1), Some(1));
        assert_eq!(b.next_pong(1), Some(1));
        assert_eq!(b.next_pong(1), Some(2));
        assert_eq!(b.next_pong(1), None, "PING 3 waits for barrier 2");
        assert_eq!(b.ack(2), Some(2));
        assert_eq!(b.next_pong(2), Some(3));
        assert!(matches!(b.ping(4, 2), PingAnswer::Now));
    }
}
