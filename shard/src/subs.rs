//! `SubscriptionIndex`: patterns with `*` and `**`, per realm, answering "who matches this
//! topic" with each subscriber once.
//!
//! Each realm has a trie over pattern segments. A node stands for a pattern prefix; it has a
//! child per literal segment, at most one `*` child and at most one `**` child, and holds the
//! subscribers whose pattern ends there. Matching a topic runs the trie as an automaton: a set of
//! active nodes, advanced once per topic segment, in which each node appears at most once. A `**`
//! node stays active on every segment, and entering a node also enters its `**` child, since
//! `**` may match no segment at all. The work is thus bounded by (topic segments × nodes
//! matching a prefix), however many `**` the patterns hold.

use std::cell::Cell;

use ahash::AHashMap;
use slab::Slab;

use crate::ids::RealmId;
use crate::names::{segments, ANY_SEGMENTS, ONE_SEGMENT};

/// Maps (realm, pattern) to subscribers of type `K`.
///
/// Patterns are expected to be valid ([`crate::names::is_valid_pattern`]); other bytes are split
/// on `.` all the same, and never cause a panic. Topics given to [`Self::matches`] may be any
/// bytes: they match as [`crate::names::pattern_matches`] says.
pub struct SubscriptionIndex<K> {
    /// The root node of each realm's trie, by realm id; `None` for a realm without patterns.
    roots: Vec<Option<usize>>,
    /// Every node of every realm. A node is removed as soon as it has no subscriber and no
    /// child, so an index whose subscriptions are all removed holds no node.
    nodes: Slab<Node<K>>,
    /// (pattern, subscriber) pairs.
    pairs: usize,
    /// Stamps the nodes entered during one step of [`Self::matches`], so that a node enters the
    /// active set once per step.
    step: Cell<u64>,
    /// The active sets of [`Self::matches`], kept between calls so that matching does not
    /// allocate once they have grown to size.
    active: Cell<Vec<usize>>,
    next: Cell<Vec<usize>>,
    /// The nodes from a root to the end of a pattern, kept between removals.
    path: Vec<usize>,
    /// The last match made by walking the trie, until the index changes.
    last: Cell<LastMatch<K>>,
}

/// Topics longer than this are not remembered by [`LastMatch`].
const LAST_TOPIC_MAX: usize = 256;
/// Matches with more subscribers than this are not remembered by [`LastMatch`]: copying them
/// for the next call would cost as much as the walk it saves.
const LAST_FOUND_MAX: usize = 64;

/// The topic [`SubscriptionIndex::matches`] last walked the trie for, and the subscribers it
/// found, kept until a subscription is added or removed: a publisher that publishes to one
/// topic again and again (a sensor, a stream of events) is answered without the walk.
struct LastMatch<K> {
    /// `None`: nothing remembered.
    realm: Option<RealmId>,
    topic: Vec<u8>,
    found: Vec<K>,
}

impl<K> Default for LastMatch<K> {
    fn default() -> Self {
        LastMatch {
            realm: None,
            topic: Vec::new(),
            found: Vec::new(),
        }
    }
}

struct Node<K> {
    literal: AHashMap<Box<[u8]>, usize>,
    one: Option<usize>,
    any: Option<usize>,
    /// Whether the edge into this node is `**`: the node then stays active on any segment.
    is_any: bool,
    /// Sorted, without duplicates.
    subscribers: Vec<K>,
    /// The last step of [`SubscriptionIndex::matches`] that entered this node.
    entered: Cell<u64>,
}

impl<K> Node<K> {
    fn new(is_any: bool) -> Self {
        Node {
            literal: AHashMap::new(),
            one: None,
            any: None,
            is_any,
            subscribers: Vec::new(),
            entered: Cell::new(0),
        }
    }

    fn is_unused(&self) -> bool {
        self.subscribers.is_empty()
            && self.literal.is_empty()
            && self.one.is_none()
            && self.any.is_none()
    }

    fn child(&self, segment: &[u8]) -> Option<usize> {
        match segment {
            ONE_SEGMENT => self.one,
            ANY_SEGMENTS => self.any,
            _ => self.literal.get(segment).copied(),
        }
    }
}

impl<K: Copy + Eq + std::hash::Hash + Ord> SubscriptionIndex<K> {
    pub fn new() -> Self {
        SubscriptionIndex {
            roots: Vec::new(),
            nodes: Slab::new(),
            pairs: 0,
            step: Cell::new(0),
            active: Cell::new(Vec::new()),
            next: Cell::new(Vec::new()),
            path: Vec::new(),
            last: Cell::new(LastMatch::default()),
        }
    }

    /// Adds `who` to `pattern`; false if it was there already.
    pub fn insert(&mut self, realm: RealmId, pattern: &[u8], who: K) -> bool {
        let slot = usize::from(realm.0);
        if self.roots.len() <= slot {
            self.roots.resize(slot + 1, None);
        }
        let mut node = match self.roots[slot] {
            Some(root) => root,
            None => {
                let root = self.nodes.insert(Node::new(false));
                self.roots[slot] = Some(root);
                root
            }
        };
        for segment in segments(pattern) {
            node = match self.nodes[node].child(segment) {
                Some(child) => child,
                None => {
                    let child = self.nodes.insert(Node::new(segment == ANY_SEGMENTS));
                    let parent = &mut self.nodes[node];
                    match segment {
                        ONE_SEGMENT => parent.one = Some(child),
                        ANY_SEGMENTS => parent.any = Some(child),
                        _ => {
                            parent.literal.insert(segment.into(), child);
                        }
                    }
                    child
                }
            };
        }
        let subscribers = &mut self.nodes[node].subscribers;
        match subscribers.binary_search(&who) {
            Ok(_) => false,
            Err(at) => {
                subscribers.insert(at, who);
                self.pairs += 1;
                self.last.get_mut().realm = None;
                true
            }
        }
    }

    /// Removes `who` from `pattern`; false if it was not there.
    pub fn remove(&mut self, realm: RealmId, pattern: &[u8], who: K) -> bool {
        let Some(root) = self.root(realm) else {
            return false;
        };
        self.path.clear();
        self.path.push(root);
        let mut node = root;
        for segment in segments(pattern) {
            match self.nodes[node].child(segment) {
                Some(child) => node = child,
                None => return false,
            }
            self.path.push(node);
        }
        let subscribers = &mut self.nodes[node].subscribers;
        match subscribers.binary_search(&who) {
            Ok(at) => {
                subscribers.remove(at);
            }
            Err(_) => return false,
        }
        self.pairs -= 1;
        self.last.get_mut().realm = None;
        self.prune_path(realm, pattern);
        true
    }

    /// Subscribers of exactly `pattern`.
    pub fn subscribers_of(&self, realm: RealmId, pattern: &[u8]) -> usize {
        let Some(mut node) = self.root(realm) else {
            return 0;
        };
        for segment in segments(pattern) {
            match self.nodes[node].child(segment) {
                Some(child) => node = child,
                None => return 0,
            }
        }
        self.nodes[node].subscribers.len()
    }

    /// Appends to `out` every subscriber with at least one pattern matching `topic`, each once.
    ///
    /// The appended subscribers are in ascending order. Apart from growing `out`, this
    /// allocates nothing in steady state: the sets of active nodes are kept between calls,
    /// and so is the last match ([`LastMatch`]), which answers the same topic again until a
    /// subscription is added or removed.
    pub fn matches(&self, realm: RealmId, topic: &[u8], out: &mut Vec<K>) {
        let mut last = self.last.take();
        if last.realm == Some(realm) && last.topic == topic {
            out.extend_from_slice(&last.found);
        } else {
            let start = out.len();
            self.walk(realm, topic, out);
            let found = &out[start..];
            last.realm = None;
            if topic.len() <= LAST_TOPIC_MAX && found.len() <= LAST_FOUND_MAX {
                last.topic.clear();
                last.topic.extend_from_slice(topic);
                last.found.clear();
                last.found.extend_from_slice(found);
                last.realm = Some(realm);
            }
        }
        self.last.set(last);
    }

    /// [`Self::matches`] by walking the trie.
    fn walk(&self, realm: RealmId, topic: &[u8], out: &mut Vec<K>) {
        let Some(root) = self.root(realm) else { return };
        let mut active = self.active.take();
        let mut next = self.next.take();
        active.clear();
        self.enter(root, self.next_step(), &mut active);
        for segment in segments(topic) {
            let step = self.next_step();
            next.clear();
            for &here in &active {
                let node = &self.nodes[here];
                if let Some(&child) = node.literal.get(segment) {
                    self.enter(child, step, &mut next);
                }
                if let Some(child) = node.one {
                    self.enter(child, step, &mut next);
                }
                if node.is_any {
                    self.enter(here, step, &mut next);
                }
            }
            std::mem::swap(&mut active, &mut next);
            if active.is_empty() {
                break;
            }
        }
        let start = out.len();
        let mut sources = 0;
        for &node in &active {
            let subscribers = &self.nodes[node].subscribers;
            if !subscribers.is_empty() {
                sources += 1;
                out.extend_from_slice(subscribers);
            }
        }
        if sources > 1 {
            dedup_tail(out, start);
        }
        self.active.set(active);
        self.next.set(next);
    }

    /// (pattern, subscriber) pairs held.
    pub fn len(&self) -> usize {
        self.pairs
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Trie nodes held, all realms together: 0 when the index is empty.
    #[doc(hidden)]
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn root(&self, realm: RealmId) -> Option<usize> {
        self.roots.get(usize::from(realm.0)).copied().flatten()
    }

    fn next_step(&self) -> u64 {
        let step = self.step.get() + 1;
        self.step.set(step);
        step
    }

    /// Adds `node` to `set` for `step`, with the `**` children that follow it, unless it is
    /// there already.
    fn enter(&self, mut node: usize, step: u64, set: &mut Vec<usize>) {
        loop {
            let n = &self.nodes[node];
            if n.entered.get() == step {
                return;
            }
            n.entered.set(step);
            set.push(node);
            match n.any {
                Some(any) => node = any,
                None => return,
            }
        }
    }

    /// Removes the nodes of `self.path` (the path of `pattern` from the root) that have become
    /// unused, from the end up.
    fn prune_path(&mut self, realm: RealmId, pattern: &[u8]) {
        // `path[i]` is reached from `path[i - 1]` by segment `i - 1`: walking the segments
        // from the last one pairs each node with the edge into it.
        let mut edges = segments(pattern).rev();
        for i in (1..self.path.len()).rev() {
            let node = self.path[i];
            if !self.nodes[node].is_unused() {
                return;
            }
            self.nodes.remove(node);
            let parent = &mut self.nodes[self.path[i - 1]];
            match edges.next() {
                Some(ONE_SEGMENT) => parent.one = None,
                Some(ANY_SEGMENTS) => parent.any = None,
                Some(literal) => {
                    parent.literal.remove(literal);
                }
                None => debug_assert!(false, "the path has one node per segment, plus the root"),
            }
        }
        let root = self.path[0];
        if self.nodes[root].is_unused() {
            self.nodes.remove(root);
            self.roots[usize::from(realm.0)] = None;
        }
    }
}

impl<K: Copy + Eq + std::hash::Hash + Ord> Default for SubscriptionIndex<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// Sorts `out[start..]` and removes its duplicates, leaving `out[..start]` as it was.
fn dedup_tail<K: Copy + Ord>(out: &mut Vec<K>, start: usize) {
    let tail = &mut out[start..];
    tail.sort_unstable();
    let mut kept = 0;
    for i in 0..tail.len() {
        if kept == 0 || tail[kept - 1] != tail[i] {
            tail[kept] = tail[i];
            kept += 1;
        }
    }
    out.truncate(start + kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_match_is_answered_again_only_while_the_index_is_unchanged() {
        let mut index = SubscriptionIndex::new();
        let (realm, other) = (RealmId(1), RealmId(2));
        index.insert(realm, b"a.*", 1u32);
        let matched = |index: &SubscriptionIndex<u32>, realm, topic: &[u8]| {
            let mut out = vec![99];
            index.matches(realm, topic, &mut out);
            out
        };
        assert_eq!(matched(&index, realm, b"a.b"), [99, 1]);
        assert_eq!(matched(&index, realm, b"a.b"), [99, 1], "remembered");
        assert_eq!(matched(&index, other, b"a.b"), [99], "another realm");
        assert_eq!(matched(&index, realm, b"a.c"), [99, 1]);
        index.insert(realm, b"a.c", 0);
        assert_eq!(
            matched(&index, realm, b"a.c"),
            [99, 0, 1],
            "an insert forgets"
        );
        assert!(index.remove(realm, b"a.*", 1));
        assert_eq!(matched(&index, realm, b"a.c"), [99, 0], "a removal forgets");
        assert!(!index.insert(realm, b"a.c", 0), "already there");
        assert_eq!(matched(&index, realm, b"a.c"), [99, 0]);
    }

    #[test]
    fn long_topics_and_large_matches_are_walked_every_time() {
        let mut index = SubscriptionIndex::new();
        let realm = RealmId(0);
        for who in 0..=LAST_FOUND_MAX as u32 {
            index.insert(realm, b"big", who);
        }
        let mut out = Vec::new();
        index.matches(realm, b"big", &mut out);
        assert_eq!(out.len(), LAST_FOUND_MAX + 1);
        assert!(index.last.take().realm.is_none(), "too many to remember");
        let long = vec![b'x'; LAST_TOPIC_MAX + 1];
        index.insert(realm, &long, 7);
        out.clear();
        index.matches(realm, &long, &mut out);
        assert_eq!(out, [7]);
        assert!(index.last.take().realm.is_none(), "too long to remember");
    }

    const R: RealmId = RealmId(0);

    fn matching(index: &SubscriptionIndex<u32>, realm: RealmId, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        index.matches(realm, topic.as_bytes(), &mut out);
        out.sort_unstable();
        out
    }

    #[test]
    fn inserting_twice_is_a_no_op() {
        let mut index = SubscriptionIndex::new();
        assert!(index.insert(R, b"a.b", 1u32));
        assert!(!index.insert(R, b"a.b", 1));
        assert_eq!(index.len(), 1);
        assert_eq!(index.subscribers_of(R, b"a.b"), 1);
    }

    #[test]
    fn removing_an_unknown_pattern_or_subscriber_is_a_no_op() {
        let mut index = SubscriptionIndex::new();
        assert!(!index.remove(R, b"a.b", 1u32));
        index.insert(R, b"a.b", 1);
        assert!(!index.remove(R, b"a.b", 2));
        assert!(!index.remove(R, b"a", 1));
        assert!(!index.remove(R, b"a.b.c", 1));
        assert!(!index.remove(RealmId(7), b"a.b", 1));
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn subscribers_of_counts_exactly_one_pattern() {
        let mut index = SubscriptionIndex::new();
        index.insert(R, b"a.*", 1u32);
        index.insert(R, b"a.*", 2);
        index.insert(R, b"a.b", 3);
        assert_eq!(index.subscribers_of(R, b"a.*"), 2);
        assert_eq!(index.subscribers_of(R, b"a.b"), 1);
        assert_eq!(index.subscribers_of(R, b"a"), 0);
        assert_eq!(index.subscribers_of(R, b"a.**"), 0);
        assert_eq!(index.subscribers_of(RealmId(1), b"a.*"), 0);
    }

    #[test]
    fn a_subscriber_matching_by_several_patterns_comes_once() {
        let mut index = SubscriptionIndex::new();
        for pattern in [
            "sensor.temp.room1",
            "sensor.*.room1",
            "sensor.**",
            "**",
            "**.room1",
        ] {
            index.insert(R, pattern.as_bytes(), 1u32);
        }
        index.insert(R, b"sensor.temp.*", 2);
        index.insert(R, b"sensor.humidity.*", 3);
        assert_eq!(matching(&index, R, "sensor.temp.room1"), [1, 2]);
    }

    #[test]
    fn matches_keeps_what_out_held_before() {
        let mut index = SubscriptionIndex::new();
        index.insert(R, b"a.*", 1u32);
        index.insert(R, b"a.b", 1);
        index.insert(R, b"a.b", 0);
        let mut out = vec![1, 5];
        index.matches(R, b"a.b", &mut out);
        assert_eq!(out, [1, 5, 0, 1]);
    }

    #[test]
    fn matches_appends_in_ascending_order() {
        let mut index = SubscriptionIndex::new();
        for who in [3u32, 1, 2] {
            index.insert(R, b"a.b", who);
        }
        let mut out = Vec::new();
        index.matches(R, b"a.b", &mut out);
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn double_star_matches_zero_or_more_segments() {
        let mut index = SubscriptionIndex::new();
        index.insert(R, b"sensor.**", 1u32);
        index.insert(R, b"**.room1", 2);
        index.insert(R, b"a.**.b", 3);
        index.insert(R, b"**", 4);
        index.insert(R, b"**.x.**.y.**", 5);
        assert_eq!(matching(&index, R, "sensor"), [1, 4]);
        assert_eq!(matching(&index, R, "sensor.temp"), [1, 4]);
        assert_eq!(matching(&index, R, "sensor.temp.room1"), [1, 2, 4]);
        assert_eq!(matching(&index, R, "room1"), [2, 4]);
        assert_eq!(matching(&index, R, "a.b"), [3, 4]);
        assert_eq!(matching(&index, R, "a.q.r.b"), [3, 4]);
        assert_eq!(matching(&index, R, "a.q.r.b.c"), [4]);
        assert_eq!(matching(&index, R, "x.y"), [4, 5]);
        assert_eq!(matching(&index, R, "q.x.q.q.y.q"), [4, 5]);
        assert_eq!(matching(&index, R, "y.x"), [4]);
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        let mut index = SubscriptionIndex::new();
        index.insert(R, b"sensor.*.room1", 1u32);
        index.insert(R, b"*", 2);
        assert_eq!(matching(&index, R, "sensor.temp.room1"), [1]);
        assert_eq!(matching(&index, R, "sensor.room1"), Vec::<u32>::new());
        assert_eq!(matching(&index, R, "x"), [2]);
    }

    #[test]
    fn realms_are_isolated() {
        let mut index = SubscriptionIndex::new();
        index.insert(RealmId(0), b"a", 1u32);
        index.insert(RealmId(3), b"a", 2);
        assert_eq!(matching(&index, RealmId(0), "a"), [1]);
        assert_eq!(matching(&index, RealmId(3), "a"), [2]);
        assert_eq!(matching(&index, RealmId(1), "a"), Vec::<u32>::new());
        assert_eq!(matching(&index, RealmId(9), "a"), Vec::<u32>::new());
    }

    #[test]
    fn topics_of_any_bytes_match_as_the_reference_matcher_says() {
        let patterns = ["a.*", "a.**", "*.*"];
        let mut index = SubscriptionIndex::new();
        for (who, pattern) in patterns.iter().enumerate() {
            index.insert(R, pattern.as_bytes(), who as u32);
        }
        for topic in ["", ".", "..", "a.", ".a", "*", "**", "a.*", "a.\u{ff}"] {
            let expected: Vec<u32> = (0..patterns.len() as u32)
                .filter(|&who| {
                    let pattern = patterns[who as usize].as_bytes();
                    crate::names::pattern_matches(pattern, topic.as_bytes())
                })
                .collect();
            assert_eq!(matching(&index, R, topic), expected, "{topic:?}");
        }
    }

    #[test]
    fn removing_every_subscription_frees_every_node() {
        let mut index = SubscriptionIndex::new();
        let patterns = ["a.b.c", "a.b", "a.*.c", "a.**", "**", "**.**.x", "b"];
        for (who, pattern) in patterns.iter().enumerate() {
            index.insert(RealmId(who as u16 % 2), pattern.as_bytes(), who as u32);
        }
        assert!(index.node_count() > 0);
        for (who, pattern) in patterns.iter().enumerate() {
            assert!(index.remove(RealmId(who as u16 % 2), pattern.as_bytes(), who as u32));
        }
        assert!(index.is_empty());
        assert_eq!(index.node_count(), 0);
    }

    #[test]
    fn removing_a_pattern_keeps_the_patterns_that_share_its_prefix() {
        let mut index = SubscriptionIndex::new();
        index.insert(R, b"a.b.c", 1u32);
        index.insert(R, b"a.b", 2);
        index.insert(R, b"a.**", 3);
        assert!(index.remove(R, b"a.b", 2));
        assert_eq!(matching(&index, R, "a.b.c"), [1, 3]);
        assert!(index.remove(R, b"a.b.c", 1));
        assert_eq!(matching(&index, R, "a.b"), [3]);
        assert_eq!(index.node_count(), 3);
    }

    #[test]
    fn many_double_stars_match_in_polynomial_time() {
        let mut index = SubscriptionIndex::new();
        let pattern = [&[&b"**."[..]; 300].concat()[..], b"x"].concat();
        index.insert(R, &pattern, 1u32);
        let topic = [&b"y."[..]; 500].concat();
        let mut out = Vec::new();
        index.matches(R, &topic[..topic.len() - 1], &mut out);
        assert!(out.is_empty());
        index.matches(R, &[&topic[..], b"x"].concat(), &mut out);
        assert_eq!(out, [1]);
    }
}
