//! Admission and the end of a session (PROTOCOL.md 3): CONNECT, the round trip to the node's
//! owner in the client directory, refusals, replacement, and the removal at once of
//! everything an ended session owned.

use crate::clients::Admission;
use crate::ids::{NodeId, RealmId, SessionKey, SessionRef};
use crate::router::{owner_of, ShardMsg};
use crate::wire::{Disconnect, FrameReader, Message, Pong, Reason};

use super::barrier::Barrier;
use super::session::State;
use super::{Event, Shard};

impl Shard {
    /// CONNECT: checks the realm and its token here, then asks the node's owner to admit.
    pub(super) fn on_connect(
        &mut self,
        key: SessionKey,
        realm: &[u8],
        node: NodeId,
        token: Option<&[u8]>,
    ) {
        let Some(realm_id) = self.config.realm(realm) else {
            self.refuse(key, Reason::RealmMismatch);
            return;
        };
        let tokens = &self.config.realms[usize::from(realm_id.0)].tokens;
        if !tokens.is_empty()
            && !token.is_some_and(|t| tokens.iter().any(|accepted| constant_time_eq(accepted, t)))
        {
            self.refuse(key, Reason::Unauthorized);
            return;
        }
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.state = State::Admitting;
        s.realm = realm_id;
        s.node = node;
        s.in_directory = true;
        let owner = owner_of(&node, self.config.shards);
        let admit = ShardMsg::Admit {
            realm: realm_id,
            node,
            session: key,
        };
        self.send(owner, admit);
    }

    /// On the node's owner: admits, replaces or refuses `session`.
    pub(super) fn admit(&mut self, realm: RealmId, node: NodeId, session: SessionRef) {
        let replacing = self.clients.find(realm, node).is_some();
        let limit = self.config.limits.max_clients;
        if !replacing && !self.config.counts.clients.try_take(limit) {
            let refused = ShardMsg::Refused {
                session: session.key,
                reason: Reason::MaxClientsReached,
            };
            self.send(session.shard, refused);
            return;
        }
        let reply = match self.clients.admit(realm, node, session) {
            Ok(Admission::Admitted(_)) => ShardMsg::Admitted {
                session: session.key,
            },
            Ok(Admission::Replaced { old, .. }) => {
                let kick = ShardMsg::Kick {
                    session: old.key,
                    reason: Reason::Replaced,
                };
                self.send(old.shard, kick);
                ShardMsg::Admitted {
                    session: session.key,
                }
            }
            Err(_) => {
                // Not reached: the table's own capacity is unbounded. Give back what was taken.
                self.config.counts.clients.give_back();
                ShardMsg::Refused {
                    session: session.key,
                    reason: Reason::MaxClientsReached,
                }
            }
        };
        self.send(session.shard, reply);
    }

    /// From the owner: the session is admitted; it gets its PONG and its frames are handled.
    pub(super) fn on_admitted(&mut self, key: SessionKey) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.state != State::Admitting {
            return;
        }
        s.state = State::Active;
        if let Some(timer) = s.timer.take() {
            self.wheel.cancel(timer);
        }
        self.connecting -= 1;
        self.config.counts.handshakes.give_back();
        self.active += 1;
        let pong = Pong {
            timestamp: 0,
            server_time: self.server_time(),
            node_id: Some(self.config.node_id),
        };
        self.write(key, &Message::Pong(pong));
        self.process_frames(key);
    }

    /// From the owner: the session is refused.
    pub(super) fn on_refused(&mut self, key: SessionKey, reason: Reason) {
        if let Some(s) = self.sessions.get_mut(key) {
            if s.state == State::Admitting {
                s.in_directory = false;
                self.refuse(key, reason);
            }
        }
    }

    /// From the owner: another session connected with this session's node id.
    pub(super) fn on_kicked(&mut self, key: SessionKey, reason: Reason) {
        if let Some(s) = self.sessions.get_mut(key) {
            s.in_directory = false;
            let message = "another session connected with this node id";
            self.close(key, reason, message);
        }
    }

    /// On the node's owner: `session` of `node` ended.
    pub(super) fn on_left(&mut self, realm: RealmId, node: NodeId, session: SessionRef) {
        if self.clients.leave(realm, node, session).is_some() {
            self.config.counts.clients.give_back();
        }
    }

    /// The session sent no CONNECT, or was not admitted, in time.
    pub(super) fn on_connect_timeout(&mut self, key: SessionKey) {
        if let Some(s) = self.sessions.get_mut(key) {
            s.timer = None;
            if matches!(s.state, State::AwaitingConnect | State::Admitting) {
                self.close(key, Reason::ConnectTimeout, "no CONNECT in time");
            }
        }
    }

    fn refuse(&mut self, key: SessionKey, reason: Reason) {
        self.counters.refused(reason);
        self.events.push_back(Event::Refused { reason });
        let message = match reason {
            Reason::RealmMismatch => "this realm is not served here",
            Reason::Unauthorized => "missing or wrong token",
            Reason::MaxClientsReached => "the gateway's client table is full",
            _ => "refused",
        };
        self.close(key, reason, message);
    }

    /// Ends a session: sends DISCONNECT (unless the client left of its own accord), removes
    /// everything it owned and asks the driver to close the connection.
    pub(super) fn close(&mut self, key: SessionKey, reason: Reason, message: &str) {
        match self.sessions.get(key) {
            Some(s) if s.state != State::Closing => {}
            _ => return,
        }
        if reason != Reason::Normal {
            let frame = Disconnect {
                reason: reason.as_str().as_bytes(),
                message: Some(message.as_bytes()),
            };
            self.write(key, &Message::Disconnect(frame));
        }
        if reason == Reason::SlowConsumer {
            self.events.push_back(Event::SlowConsumerEvicted);
        }
        self.end(key, reason);
        self.closes.push_back((key, reason));
        self.mark_ready(key);
    }

    /// Removes everything a session owned, at once: subscriptions, registrations, calls in
    /// flight as caller and as provider, its directory entry. Its output stays until the driver
    /// closes the connection.
    pub(super) fn end(&mut self, key: SessionKey, reason: Reason) {
        let me = self.id();
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let prior = std::mem::replace(&mut s.state, State::Closing);
        let realm = s.realm;
        let node = s.node;
        let in_directory = std::mem::take(&mut s.in_directory);
        let provider = s.provider;
        let patterns = std::mem::take(&mut s.patterns);
        let procedures = std::mem::take(&mut s.procedures);
        s.reader = FrameReader::default();
        s.barrier = Barrier::default();
        if let Some(timer) = s.timer.take() {
            self.wheel.cancel(timer);
        }
        match prior {
            State::Active => self.active -= 1,
            State::AwaitingConnect | State::Admitting => {
                self.connecting -= 1;
                self.config.counts.handshakes.give_back();
            }
            State::Closing => {}
        }
        self.counters.closed(reason);

        self.unsubscribe_all(key, realm, patterns);
        drop(procedures);
        if provider {
            self.broadcast(ShardMsg::ProviderGone { session: key });
            self.provider_gone(SessionRef { shard: me, key });
        }
        self.caller_gone(key);

        if in_directory {
            let owner = owner_of(&node, self.config.shards);
            let leave = ShardMsg::Leave {
                realm,
                node,
                session: key,
            };
            self.send(owner, leave);
        }
    }
}

/// Compares two secrets in time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
