//! What a peer link's frames do (PROTOCOL.md 9.2 to 9.6), on the link's shard: the handshake
//! and the admission that follows it, PEER_MEMBERS, INTEREST and SYNC, PING and PONG with the
//! barriers they carry. Data frames go on to [`super::pubsub`] and [`super::calls`].

use crate::ids::{LinkKey, RealmId, SessionKey, ShardId};
use crate::mesh::handshake::{Outcome, Peer};
use crate::mesh::interest::RemoteInterest;
use crate::metrics::LinkResult;
use crate::names::{is_valid_pattern, is_valid_topic};
use crate::router::{LinkPeer, OwnedMember, ShardMsg};
use crate::wire::{
    LinkReason, LinkStream, Member, PeerMembers, PeerMessage, Ping, Pong, Reason, SyncPhase,
};

use super::barrier::PingAnswer;
use super::link::{count_sent, LinkState, SentPing};
use super::Shard;

impl Shard {
    pub(super) fn on_link_frame(&mut self, key: LinkKey, stream: LinkStream, msg: PeerMessage<'_>) {
        let Some(link) = self.link_mut(key) else {
            return;
        };
        if let PeerMessage::Disconnect(d) = msg {
            let reason = LinkReason::from_wire(d.reason);
            if link.state == LinkState::Handshake
                && link.dial.is_some()
                && !link.hello_seen
                && reason == Some(LinkReason::DuplicateLink)
            {
                // Refused before the acceptor said who it is: the dial met this gateway.
                link.found_self = true;
            }
            link.reason = reason.or(link.reason);
            self.link_gone(key, None);
            return;
        }
        if link.state == LinkState::Handshake {
            self.on_handshake_frame(key, msg);
            return;
        }
        match (stream, msg) {
            (LinkStream::Data, PeerMessage::Ping(p))
                if !link.data_opened && link.dial.is_none() =>
            {
                link.data_opened = true;
                let pong = Pong {
                    timestamp: p.timestamp,
                    server_time: 0,
                    node_id: None,
                };
                self.link_write_to(key, LinkStream::Data, &PeerMessage::Pong(pong));
            }
            (LinkStream::Data, PeerMessage::Pong(_))
                if !link.data_opened && link.dial.is_some() =>
            {
                link.data_opened = true;
            }
            (LinkStream::Data, _) if !link.data_opened && link.dial.is_none() => {
                let message = "the data stream must open with PING";
                self.close_link(key, Reason::ProtocolError.into(), message);
            }
            (LinkStream::Data, PeerMessage::Ping(_) | PeerMessage::Pong(_)) => {
                let message = "PING and PONG open the data stream only once";
                self.close_link(key, Reason::ProtocolError.into(), message);
            }
            (_, PeerMessage::Hello(_) | PeerMessage::Auth(_)) => {
                let message = "the handshake is over";
                self.close_link(key, Reason::ProtocolError.into(), message);
            }
            (_, PeerMessage::Members(m)) => {
                let members = m.members.iter().map(|m| OwnedMember::from(&m)).collect();
                self.send(ShardId(0), ShardMsg::Learned { members });
            }
            (_, PeerMessage::Interest(i)) => self.on_peer_interest(key, i),
            (_, PeerMessage::Sync(s)) => self.on_link_sync(key, s.realm, s.phase),
            (_, PeerMessage::Ping(p)) => self.on_link_ping(key, p.timestamp),
            (_, PeerMessage::Pong(p)) => self.on_link_pong(key, p.timestamp),
            (_, PeerMessage::Publish(p)) => {
                self.link_used(key);
                self.on_link_publish(key, p);
            }
            (_, PeerMessage::Call(c)) => {
                self.link_used(key);
                self.on_link_call(key, c);
            }
            (_, PeerMessage::Reply(r)) => {
                self.link_used(key);
                self.on_link_reply(key, r);
            }
            (_, PeerMessage::Cancel(c)) => {
                self.link_used(key);
                self.on_link_cancel(key, c.call_id, c.reason);
            }
            (_, PeerMessage::Disconnect(_)) => {}
        }
    }

    pub(super) fn on_handshake_frame(&mut self, key: LinkKey, msg: PeerMessage<'_>) {
        let now = self.now;
        let Some(m) = self.mesh.as_mut() else { return };
        let identity = &m.config.identity;
        let Some(link) = m.links.get_mut(key) else {
            return;
        };
        if matches!(msg, PeerMessage::Hello(_)) {
            link.hello_seen = true;
        }
        let Some(handshake) = link.handshake.as_mut() else {
            return;
        };
        let mut out = std::mem::take(&mut link.control_out.buf);
        let start = out.len();
        let outcome = handshake.handle_frame(identity, &msg, now, &mut out);
        count_sent(&mut link.counters, &out[start..]);
        link.control_out.buf = out;
        match outcome {
            Outcome::Pending => self.mark_link_ready(key),
            Outcome::Refused(reason) => self.close_link(key, reason, "refused in the handshake"),
            Outcome::Admitted(peer) => self.handshake_done(key, peer),
        }
    }

    /// The handshake succeeded: the dialer opens the data stream, and shard 0 is asked to
    /// admit the link.
    pub(super) fn handshake_done(&mut self, key: LinkKey, peer: Peer) {
        let now = self.now;
        let realms: Vec<RealmId> = peer
            .shared
            .iter()
            .filter_map(|name| self.config.realm(name))
            .collect();
        for name in &peer.unshared {
            self.events.push_back(crate::shard::Event::UnsharedRealm {
                peer: peer.node_name.clone(),
                realm: name.clone(),
            });
        }
        let limit = self
            .mesh
            .as_ref()
            .map_or(1, |m| m.config.max_advertised_patterns);
        let Some(link) = self.link_mut(key) else {
            return;
        };
        link.handshake = None;
        link.state = LinkState::Admitting;
        link.since = now;
        link.admission_asked = true;
        link.interest = realms
            .iter()
            .map(|&r| (r, RemoteInterest::new(limit)))
            .collect();
        link.shared = realms;
        let dialer = link.dial.is_some();
        let request = LinkPeer {
            node_name: peer.node_name.clone(),
            facts: peer.facts.clone(),
            addr: peer.advertise.clone(),
            dialed: link.dialed.clone(),
            gossip: peer.gossip,
        };
        link.peer = Some(peer);
        if dialer {
            // The data stream opens with a PING, right after PEER_AUTH (9.2).
            let ping = PeerMessage::Ping(Ping::new(0));
            self.link_write_to(key, LinkStream::Data, &ping);
        }
        let msg = ShardMsg::AdmitLink {
            link: key,
            peer: Box::new(request),
        };
        self.send(ShardId(0), msg);
    }

    /// Shard 0 admitted the link: PEER_MEMBERS, then a snapshot per shared realm.
    pub(super) fn on_link_admitted(&mut self, key: LinkKey, members: &[OwnedMember]) {
        let now = self.now;
        if self.link(key).map(|l| l.state) != Some(LinkState::Admitting) {
            return;
        }
        // The turn's changes go to the other links first: this one gets them in its
        // snapshots, and no increment ahead of them (9.3 step 7).
        self.flush_advertised();
        let Some(link) = self.link_mut(key) else {
            return;
        };
        link.state = LinkState::Syncing;
        link.since = now;
        link.awaiting_end = link.shared.clone();
        let realms = link.shared.clone();
        self.send_members(key, members);
        for realm in realms {
            self.send_snapshot(key, realm);
        }
        self.maybe_up(key);
        self.process_link(key);
    }

    pub(super) fn send_members(&mut self, key: LinkKey, members: &[OwnedMember]) {
        let list: Vec<Member<'_>> = members
            .iter()
            .map(|m| Member {
                node_name: &m.node_name,
                node_id: m.node_id,
                addr: &m.addr,
            })
            .collect();
        let msg = PeerMessage::Members(PeerMembers {
            members: crate::wire::Entries::List(&list),
        });
        self.link_write(key, &msg);
    }

    /// INTEREST from the peer: into the snapshot being built, or an increment.
    pub(super) fn on_peer_interest(&mut self, key: LinkKey, i: crate::wire::Interest<'_>) {
        let Some(realm) = self.shared_realm(key, i.realm) else {
            return;
        };
        let valid = i
            .sub_add
            .iter()
            .chain(i.sub_del.iter())
            .all(is_valid_pattern)
            && i.procs.iter().all(|p| is_valid_topic(p.procedure));
        if !valid {
            let message = "INTEREST with an invalid pattern or procedure";
            self.close_link(key, Reason::ProtocolError.into(), message);
            return;
        }
        let mut changes = Vec::new();
        let Some(interest) = self.link_mut(key).and_then(|l| l.interest_mut(realm)) else {
            return;
        };
        interest.apply(
            i.sub_add.iter(),
            i.sub_del.iter(),
            i.procs.iter().map(|p| (p.procedure, p.count)),
            &mut changes,
        );
        self.interest_changed(key, realm, changes);
    }

    /// SYNC from the peer.
    pub(super) fn on_link_sync(&mut self, key: LinkKey, realm: &[u8], phase: SyncPhase) {
        let Some(realm) = self.shared_realm(key, realm) else {
            return;
        };
        let mut changes = Vec::new();
        let Some(link) = self.link_mut(key) else {
            return;
        };
        match phase {
            SyncPhase::Begin => {
                if let Some(i) = link.interest_mut(realm) {
                    i.begin();
                }
            }
            SyncPhase::End => {
                if let Some(i) = link.interest_mut(realm) {
                    i.end(&mut changes);
                }
                link.awaiting_end.retain(|&r| r != realm);
                self.interest_changed(key, realm, changes);
                self.maybe_up(key);
            }
            SyncPhase::Digest(digest) => {
                use crate::mesh::interest::DigestCheck;
                let check = link
                    .interest_mut(realm)
                    .map_or(DigestCheck::Skipped, |i| i.check(digest));
                if check == DigestCheck::Mismatch {
                    self.counters.peer_resyncs += 1;
                    if let Some(l) = self.link_mut(key) {
                        l.counters.resyncs += 1;
                    }
                    let name = self.config.realms[usize::from(realm.0)].name.clone();
                    let msg = crate::wire::SyncMsg {
                        realm: &name,
                        phase: SyncPhase::Request,
                    };
                    self.link_write(key, &PeerMessage::Sync(msg));
                }
            }
            SyncPhase::Request => {
                self.flush_advertised();
                self.send_snapshot(key, realm);
            }
        }
    }

    /// The realm a frame on the link names, if it is shared; otherwise the link is closed.
    pub(super) fn shared_realm(&mut self, key: LinkKey, realm: &[u8]) -> Option<RealmId> {
        let id = self.config.realm(realm);
        let shared = self
            .link(key)
            .is_some_and(|l| id.is_some_and(|id| l.shared.contains(&id)));
        if shared {
            id
        } else {
            let message = "a frame for a realm not shared on this link";
            self.close_link(key, Reason::ProtocolError.into(), message);
            None
        }
    }

    /// The link becomes up once the peer's snapshots have all ended.
    pub(super) fn maybe_up(&mut self, key: LinkKey) {
        let now = self.now;
        let Some(link) = self.link_mut(key) else {
            return;
        };
        if link.state != LinkState::Syncing || !link.awaiting_end.is_empty() {
            return;
        }
        link.state = LinkState::Up;
        link.was_up = true;
        link.since = now;
        let realms = link.shared.clone();
        let over = link.over_since.is_some();
        self.counters.link_result(LinkResult::Up);
        self.broadcast_view(ShardMsg::LinkUp { link: key, realms });
        if over {
            // Replies written while it synced took it over its bound: no CALL goes there.
            self.broadcast_view(ShardMsg::LinkBound { link: key, over });
        }
    }

    /// A PING on the control stream: answered once every frame received before it is in
    /// effect on every shard.
    pub(super) fn on_link_ping(&mut self, key: LinkKey, timestamp: u64) {
        let others = self.config.shards.saturating_sub(1);
        let Some(link) = self.link_mut(key) else {
            return;
        };
        match link.barrier.ping(timestamp, others, false) {
            PingAnswer::Now => self.link_pong(key, timestamp),
            PingAnswer::SendBarrier(seq) => {
                self.broadcast(ShardMsg::LinkBarrier { link: key, seq });
            }
            PingAnswer::Wait => {}
        }
    }

    pub(super) fn link_pong(&mut self, key: LinkKey, timestamp: u64) {
        let pong = Pong {
            timestamp,
            server_time: self.server_time(),
            node_id: None,
        };
        self.link_write(key, &PeerMessage::Pong(pong));
    }

    pub(super) fn on_link_barrier_ack(&mut self, key: LinkKey, seq: u32) {
        let Some(link) = self.link_mut(key) else {
            return;
        };
        let Some(done) = link.barrier.ack(seq) else {
            return;
        };
        let mut ready = Vec::new();
        while let Some((timestamp, _)) = link.barrier.next_pong(done) {
            ready.push(timestamp);
        }
        for timestamp in ready {
            self.link_pong(key, timestamp);
        }
    }

    /// Sends a PING on the control stream; `waiter`, a mesh barrier, waits for its PONG. A
    /// barrier joins the last PING still unanswered instead when no INTEREST or SYNC went out
    /// after it: its PONG says as much, and a client's PINGs cannot multiply the link's.
    pub(super) fn ping_link(&mut self, key: LinkKey, waiter: Option<(ShardId, SessionKey, u32)>) {
        let now = self.now;
        let Some(link) = self.link_mut(key) else {
            return;
        };
        if let (Some(w), false) = (waiter, link.interest_since_ping) {
            if let Some(last) = link.pings.back_mut() {
                last.waiters.push(w);
                return;
            }
        }
        link.interest_since_ping = false;
        let timestamp = link.next_ping;
        link.next_ping += 1;
        link.last_keepalive = now;
        link.pings.push_back(SentPing {
            timestamp,
            at: now,
            waiters: waiter.into_iter().collect(),
        });
        self.link_write(key, &PeerMessage::Ping(Ping::new(timestamp)));
    }

    pub(super) fn on_link_pong(&mut self, key: LinkKey, timestamp: u64) {
        let now = self.now;
        let Some(link) = self.link_mut(key) else {
            return;
        };
        let mut answered = Vec::new();
        while link.pings.front().is_some_and(|p| p.timestamp <= timestamp) {
            let Some(ping) = link.pings.pop_front() else {
                break;
            };
            if ping.timestamp == timestamp {
                link.rtt_ms = Some(now.saturating_since(ping.at).as_millis() as u64);
            }
            answered.extend(ping.waiters);
        }
        for (shard, session, seq) in answered {
            self.mesh_wait_done(shard, session, seq);
        }
    }
}
