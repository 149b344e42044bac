//! Publish and subscribe (PROTOCOL.md 5.2): a session's patterns, delivery to this shard's
//! subscribers, and the interest other shards have, so that a PUBLISH crosses only to the
//! shards with a matching subscriber, once per shard.

use std::ops::Range;
use std::sync::Arc;

use crate::ids::{LinkKey, NodeId, RealmId, SessionKey, ShardId};
use crate::metrics::DropReason;
use crate::names::{is_valid_pattern, is_valid_topic};
use crate::router::{ErrorCode, ShardMsg};
use crate::wire::{FrameType, LinkPublish, PeerMessage, Publish, Strings};

use super::outbox::Shedding;
use super::Shard;

/// The patterns of one frame refused for one reason: the first, and how many.
#[derive(Default)]
struct Refusals<'a> {
    first: Option<&'a [u8]>,
    count: usize,
}

impl<'a> Refusals<'a> {
    fn add(&mut self, pattern: &'a [u8]) {
        self.first.get_or_insert(pattern);
        self.count += 1;
    }
}

impl Shard {
    pub(super) fn on_publish(&mut self, key: SessionKey, p: Publish<'_>) {
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        let (realm, node) = (s.realm, s.node);
        if !is_valid_topic(p.topic) {
            let code = ErrorCode::InvalidTopic;
            self.send_error(key, code, FrameType::Publish, Some(p.topic), None);
            return;
        }
        self.counters.publishes += 1;
        let mut frame = std::mem::take(&mut self.scratch.frame);
        frame.clear();
        let topic_range = Publish {
            publisher: Some(node),
            ..p
        }
        .encode_locating_topic(&mut frame);
        self.deliver(realm, p.topic, &frame, Some(key));
        self.publish_to_shards(realm, p.topic, &frame, topic_range);
        self.scratch.frame = frame;
        if self.mesh_on() {
            self.publish_to_links(realm, node, &p);
        }
    }

    /// Sends an encoded PUBLISH to the other shards with a matching subscriber, once each;
    /// returns how many.
    fn publish_to_shards(
        &mut self,
        realm: RealmId,
        topic: &[u8],
        frame: &[u8],
        topic_range: Range<usize>,
    ) -> usize {
        let mut shards = std::mem::take(&mut self.scratch.shards);
        shards.clear();
        self.remote_subs.matches(realm, topic, &mut shards);
        if !shards.is_empty() {
            let shared: Arc<[u8]> = Arc::from(frame);
            let topic = topic_range.start as u32..topic_range.end as u32;
            for &to in &shards {
                let msg = ShardMsg::Publish {
                    realm,
                    frame: shared.clone(),
                    topic: topic.clone(),
                };
                if !self.queue_to(to, msg, Shedding::IfBacklogged) {
                    self.counters.drop(DropReason::ShardBacklog);
                }
            }
        }
        let n = shards.len();
        self.scratch.shards = shards;
        n
    }

    /// A client's PUBLISH, once to each up link whose peer has a matching pattern (9.7).
    fn publish_to_links(&mut self, realm: RealmId, publisher: NodeId, p: &Publish<'_>) {
        let Some(m) = self.mesh.as_ref() else { return };
        if m.up.is_empty() {
            return;
        }
        let mut links = Vec::new();
        m.subs.matches(realm, p.topic, &mut links);
        links.retain(|l| m.up.get(l).is_some_and(|v| v.realms.contains(&realm)));
        if links.is_empty() {
            return;
        }
        let name = &self.config.realms[usize::from(realm.0)].name;
        let mut frame = Vec::new();
        PeerMessage::Publish(LinkPublish::forwarded(name, publisher, p)).encode(&mut frame);
        let frame: Arc<[u8]> = frame.into();
        for link in links {
            if link.shard == self.id() {
                self.on_link_publish_out(link.key, &frame);
            } else {
                let msg = ShardMsg::LinkPublish {
                    link: link.key,
                    frame: frame.clone(),
                };
                if !self.queue_to(link.shard, msg, Shedding::IfBacklogged) {
                    self.counters.drop(DropReason::ShardBacklog);
                }
            }
        }
    }

    /// A PUBLISH for one of this shard's links: dropped (counted) while the link is over
    /// `--max-peer-output`.
    pub(super) fn on_link_publish_out(&mut self, link: LinkKey, frame: &[u8]) {
        let up = self
            .link(link)
            .is_some_and(|l| l.state == super::link::LinkState::Up);
        if !up {
            return;
        }
        if self.link_over_bound(link) {
            self.counters.drop(DropReason::PeerSlow);
            return;
        }
        self.link_write_encoded(link, FrameType::Publish, frame);
    }

    /// A PUBLISH from a peer: delivered to this gateway's matching sessions, never to a link.
    pub(super) fn on_link_publish(&mut self, key: LinkKey, p: LinkPublish<'_>) {
        let Some(realm) = self.shared_realm(key, p.realm) else {
            return;
        };
        if !is_valid_topic(p.topic) {
            let message = "a PUBLISH with an invalid topic";
            self.close_link(key, crate::wire::Reason::ProtocolError.into(), message);
            return;
        }
        let mut frame = std::mem::take(&mut self.scratch.frame);
        frame.clear();
        let topic_range = p.delivery().encode_locating_topic(&mut frame);
        let local = self.deliver(realm, p.topic, &frame, None);
        let shards = self.publish_to_shards(realm, p.topic, &frame, topic_range);
        self.scratch.frame = frame;
        if local == 0 && shards == 0 {
            self.counters.drop(DropReason::NoInterest);
        }
    }

    /// A PUBLISH from another shard's session, for this shard's subscribers.
    pub(super) fn on_remote_publish(&mut self, realm: RealmId, frame: &[u8], topic: Range<u32>) {
        let range = topic.start as usize..topic.end as usize;
        if let Some(topic) = frame.get(range) {
            self.deliver(realm, topic, frame, None);
        }
    }

    /// Delivers an encoded PUBLISH to this shard's sessions that match `topic`, each once,
    /// except `publisher`. A subscriber over its output bound misses it (counted). Returns
    /// how many sessions matched.
    fn deliver(
        &mut self,
        realm: RealmId,
        topic: &[u8],
        frame: &[u8],
        publisher: Option<SessionKey>,
    ) -> usize {
        let mut targets = std::mem::take(&mut self.scratch.sessions);
        targets.clear();
        self.local_subs.matches(realm, topic, &mut targets);
        let max_output = self.config.limits.max_output;
        for &target in &targets {
            if Some(target) == publisher {
                continue;
            }
            let Some(s) = self.sessions.get(target) else {
                continue;
            };
            if s.out.len() >= max_output {
                self.counters.drop(DropReason::SlowConsumer);
                continue;
            }
            self.queue_output(target, frame);
            self.counters.deliveries += 1;
        }
        let n = targets.len();
        self.scratch.sessions = targets;
        n
    }

    /// Adds each valid pattern. Refusals are answered with at most one ERROR per code per
    /// frame, naming the first pattern refused, so that one frame cannot ask for an answer
    /// per pattern.
    pub(super) fn on_subscribe(&mut self, key: SessionKey, topics: Strings<'_>) {
        let mut invalid = Refusals::default();
        let mut over = Refusals::default();
        for pattern in topics.iter() {
            if !is_valid_pattern(pattern) {
                invalid.add(pattern);
            } else if !self.subscribe(key, pattern) {
                over.add(pattern);
            }
        }
        let answers = FrameType::Subscribe;
        self.send_refusals(key, &invalid, ErrorCode::InvalidPattern, answers);
        self.send_refusals(key, &over, ErrorCode::TooManySubscriptions, answers);
    }

    pub(super) fn on_unsubscribe(&mut self, key: SessionKey, topics: Strings<'_>) {
        let mut invalid = Refusals::default();
        for pattern in topics.iter() {
            if is_valid_pattern(pattern) {
                self.unsubscribe(key, pattern);
            } else {
                invalid.add(pattern);
            }
        }
        let answers = FrameType::Unsubscribe;
        self.send_refusals(key, &invalid, ErrorCode::InvalidPattern, answers);
    }

    /// Adds a valid pattern to the session (a no-op if it holds it already). False if the
    /// session holds `--max-subscriptions` other patterns.
    fn subscribe(&mut self, key: SessionKey, pattern: &[u8]) -> bool {
        let max = self.config.limits.max_subscriptions;
        let Some(s) = self.sessions.get_mut(key) else {
            return true;
        };
        let realm = s.realm;
        if s.patterns.len() >= max {
            return s.patterns.iter().any(|p| **p == *pattern);
        }
        if self.local_subs.insert(realm, pattern, key) {
            s.patterns.push(pattern.into());
            if self.local_subs.subscribers_of(realm, pattern) == 1 {
                self.announce_interest(key, realm, pattern, true);
                self.mesh_pattern(realm, pattern);
            }
        }
        true
    }

    /// Removes a valid pattern from the session (a no-op if it does not hold it).
    fn unsubscribe(&mut self, key: SessionKey, pattern: &[u8]) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let realm = s.realm;
        if !self.local_subs.remove(realm, pattern, key) {
            return;
        }
        if let Some(i) = s.patterns.iter().position(|p| **p == *pattern) {
            s.patterns.swap_remove(i);
        }
        if self.local_subs.subscribers_of(realm, pattern) == 0 {
            self.announce_interest(key, realm, pattern, false);
            self.mesh_pattern(realm, pattern);
        }
    }

    /// Removes the patterns of an ended session, telling the other shards of each pattern
    /// this shard no longer has a subscriber of.
    pub(super) fn unsubscribe_all(
        &mut self,
        key: SessionKey,
        realm: RealmId,
        patterns: Vec<Box<[u8]>>,
    ) {
        for pattern in patterns {
            self.local_subs.remove(realm, &pattern, key);
            if self.local_subs.subscribers_of(realm, &pattern) == 0 {
                self.mesh_pattern(realm, &pattern);
                self.broadcast(ShardMsg::Interest {
                    realm,
                    pattern,
                    add: false,
                });
            }
        }
    }

    /// Shard `from` now has (or no longer has) subscribers of `pattern`.
    pub(super) fn on_remote_interest(
        &mut self,
        from: ShardId,
        realm: RealmId,
        pattern: &[u8],
        add: bool,
    ) {
        if add {
            self.remote_subs.insert(realm, pattern, from);
        } else {
            self.remote_subs.remove(realm, pattern, from);
        }
        self.mesh_pattern(realm, pattern);
    }

    /// One ERROR for the patterns of a frame refused with `code`, if any.
    fn send_refusals(
        &mut self,
        key: SessionKey,
        refused: &Refusals<'_>,
        code: ErrorCode,
        answers: FrameType,
    ) {
        let Some(first) = refused.first else { return };
        if refused.count == 1 {
            self.send_error(key, code, answers, Some(first), None);
        } else {
            let message = format!(
                "{} ({} patterns of the frame refused)",
                code.message(),
                refused.count
            );
            self.send_error_message(key, code, &message, answers, Some(first), None);
        }
    }

    /// Tells the other shards that this one now has (or no longer has) subscribers of
    /// `pattern`; the session's next PING waits until they have applied it.
    fn announce_interest(&mut self, key: SessionKey, realm: RealmId, pattern: &[u8], add: bool) {
        let msg = ShardMsg::Interest {
            realm,
            pattern: pattern.into(),
            add,
        };
        self.replicate(key, msg);
    }
}
