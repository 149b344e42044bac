//! Shard 0's part of the mesh (PROTOCOL.md 9.3, 9.4, 9.10): the peer table with its LRU and
//! duplicate resolution, the members it introduces, and the dial schedule.

use std::time::Duration;

use ahash::AHashMap;

use crate::ids::{LinkKey, LinkRef, ShardId, Time};
use crate::mesh::digest::fnv1a32;
use crate::mesh::gossip::{DialSchedule, Origin};
use crate::mesh::links::Closed;
use crate::mesh::peers::{Admission, PeerTable};
use crate::router::{Admitted, LinkEnding, LinkPeer, OwnedMember, ShardMsg};
use crate::wheel::TimerKey;
use crate::wire::{LinkReason, Reason};

use super::{Shard, Timer};

/// How long a gateway leaves alone a peer it evicted, or that evicted it (9.3 step 6).
const EVICTION_HOLD: Duration = Duration::from_secs(30);
/// How soon a `--peer` seed is dialed again after its link is lost.
const REDIAL_AFTER_LOSS: Duration = Duration::from_secs(1);

/// The peer table and the dial schedule, on shard 0.
pub(super) struct Peering {
    pub(super) table: PeerTable<LinkRef>,
    pub(super) schedule: DialSchedule,
    /// Dials since start-up: each dial's `dial_seq`.
    dial_seq: u64,
    pub(super) timer: Option<(TimerKey, Time)>,
    /// Names not dialed until the time given (evicted by or evicting this gateway).
    held_off: AHashMap<Box<[u8]>, Time>,
}

impl Peering {
    pub(super) fn new(max_peers: usize, seeds: &[Box<str>], now: Time) -> Peering {
        let mut schedule = DialSchedule::default();
        for seed in seeds {
            schedule.seed(seed, now);
        }
        Peering {
            table: PeerTable::new(max_peers),
            schedule,
            dial_seq: 0,
            timer: None,
            held_off: AHashMap::new(),
        }
    }

    fn held_off(&mut self, name: &[u8], now: Time) -> bool {
        match self.held_off.get(name) {
            Some(&until) if until > now => true,
            Some(_) => {
                self.held_off.remove(name);
                false
            }
            None => false,
        }
    }
}

impl Closed {
    fn reason(self) -> LinkReason {
        match self {
            Closed::Replaced => LinkReason::Session(Reason::Replaced),
            Closed::DuplicateLink => LinkReason::DuplicateLink,
            Closed::NameConflict => LinkReason::NameConflict,
        }
    }
}

impl Shard {
    fn peering(&mut self) -> Option<&mut Peering> {
        self.mesh.as_mut()?.peering.as_mut()
    }

    /// A link's shard asks to admit its link.
    pub(super) fn on_admit_link(&mut self, from: ShardId, link: LinkKey, peer: LinkPeer) {
        let now = self.now;
        let this = LinkRef {
            shard: from,
            key: link,
        };
        let Some(p) = self.peering() else { return };
        let admission = p
            .table
            .admit(&peer.node_name, this, peer.facts.clone(), &peer.addr);
        // The link the new one displaces, if any: at most one (9.3 steps 5 and 6).
        let mut displaced = None;
        match admission {
            Admission::Refused { reason } => {
                let reason = reason.reason();
                if let Some(addr) = &peer.dialed {
                    // Another link to the peer is admitted: no dial while it lasts.
                    p.schedule.admitted(addr, &peer.node_name);
                }
                let close = ShardMsg::CloseLink {
                    link,
                    reason,
                    then: None,
                };
                self.send(from, close);
                return;
            }
            Admission::Replaced { old, reason } => displaced = Some((old, reason.reason())),
            Admission::Admitted {
                evicted: Some((name, old)),
            } => {
                p.schedule.lost(&name, now, EVICTION_HOLD);
                p.held_off.insert(name, now + EVICTION_HOLD);
                displaced = Some((old, LinkReason::PeerEvicted));
                self.counters.peers_evicted += 1;
            }
            Admission::Admitted { evicted: None } => {}
        }
        let Some(p) = self.peering() else { return };
        if let Some(addr) = &peer.dialed {
            p.schedule.admitted(addr, &peer.node_name);
        }
        let (members, tell) = p.table.introductions(&peer.node_name, peer.gossip);
        let members: Vec<OwnedMember> = members.iter().map(OwnedMember::from).collect();
        match displaced {
            // The new link's shard learns of its admission from the old link's shard, once
            // that one has closed the old link.
            Some((old, reason)) => {
                let then = Admitted {
                    shard: from,
                    link,
                    members,
                };
                let close = ShardMsg::CloseLink {
                    link: old.key,
                    reason,
                    then: Some(Box::new(then)),
                };
                self.send(old.shard, close);
            }
            None => self.send(from, ShardMsg::LinkAdmitted { link, members }),
        }
        let new = OwnedMember {
            node_name: peer.node_name.clone(),
            node_id: peer.facts.node_id,
            addr: peer.addr.clone(),
        };
        for other in tell {
            let msg = ShardMsg::Introduce {
                link: other.key,
                members: vec![new.clone()],
            };
            self.send(other.shard, msg);
        }
        self.arm_dials();
    }

    /// A link ended: the peer table forgets it, and the dial schedule learns how it went.
    pub(super) fn on_link_ended(&mut self, from: ShardId, link: LinkKey, end: &LinkEnding) {
        let now = self.now;
        let jitter = self.rng.f64() * 0.4 - 0.2;
        let this = LinkRef {
            shard: from,
            key: link,
        };
        let Some(p) = self.peering() else { return };
        let member = end
            .name
            .as_deref()
            .is_some_and(|name| p.table.lost(name, &this));
        let evicted = end.reason == Some(LinkReason::PeerEvicted);
        if evicted {
            if let Some(name) = &end.name {
                p.held_off.insert(name.clone(), now + EVICTION_HOLD);
            }
        }
        if end.found_self {
            if let Some(addr) = &end.dialed {
                p.schedule.is_self(addr);
            }
        } else if member {
            let delay = if evicted {
                EVICTION_HOLD
            } else {
                REDIAL_AFTER_LOSS
            };
            if let Some(name) = &end.name {
                p.schedule.lost(name, now, delay);
            }
        } else if let Some(addr) = &end.dialed {
            let linked = end
                .name
                .as_deref()
                .filter(|name| p.table.get(name).is_some());
            match linked {
                // Refused because a link to that peer is already admitted.
                Some(name) => p.schedule.admitted(addr, name),
                None if evicted => {
                    p.schedule
                        .lost(end.name.as_deref().unwrap_or_default(), now, EVICTION_HOLD)
                }
                None => p.schedule.failed(addr, now, jitter),
            }
        }
        self.arm_dials();
    }

    /// Members a peer listed: each unknown one is dialed after a random delay under 1 s.
    pub(super) fn on_learned(&mut self, members: &[OwnedMember]) {
        let now = self.now;
        let own = match self.mesh.as_ref() {
            Some(m) => m.config.identity.node_name.clone(),
            None => return,
        };
        for member in members {
            let delay = Duration::from_millis(self.rng.u64(0..1000));
            let Some(p) = self.peering() else { return };
            let Ok(addr) = std::str::from_utf8(&member.addr) else {
                continue;
            };
            if p.held_off(&member.node_name, now) {
                continue;
            }
            let is_member = p.table.get(&member.node_name).is_some();
            p.schedule
                .learn(&member.node_name, addr, &own, is_member, now, delay);
        }
        self.arm_dials();
    }

    /// Data frames crossed these peers' links: they become the most recently used.
    pub(super) fn on_peers_used(&mut self, names: &[Box<[u8]>]) {
        if let Some(p) = self.peering() {
            for name in names {
                p.table.touch(name);
            }
        }
    }

    /// The dial timer fired: every address due is dialed, by the shard its link belongs to.
    pub(super) fn on_dial_timer(&mut self) {
        let now = self.now;
        let shards = u32::from(self.config.shards.max(1));
        let Some(p) = self.peering() else { return };
        p.timer = None;
        let mut due = Vec::new();
        p.schedule.due(now, &mut due);
        let mut dials = Vec::new();
        for addr in due {
            p.dial_seq += 1;
            let gossip = p.schedule.origin(&addr) == Some(Origin::Gossip);
            let to = ShardId((fnv1a32(addr.as_bytes()) % shards) as u16);
            dials.push((
                to,
                ShardMsg::Dial {
                    addr,
                    seq: p.dial_seq,
                    gossip,
                },
            ));
        }
        for (to, msg) in dials {
            self.send(to, msg);
        }
        self.arm_dials();
    }

    /// Sets the dial timer to the schedule's next deadline.
    pub(super) fn arm_dials(&mut self) {
        let Some(m) = self.mesh.as_mut() else { return };
        let Some(p) = m.peering.as_mut() else { return };
        let next = p.schedule.next_deadline();
        match (p.timer, next) {
            (Some((_, at)), Some(next)) if at == next => {}
            (timer, next) => {
                if let Some((key, _)) = timer {
                    self.wheel.cancel(key);
                }
                p.timer = next.map(|at| (self.wheel.insert(at, Timer::Dials), at));
            }
        }
    }
}
