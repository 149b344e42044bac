//! `PeerTable`: the admitted peer links of a gateway, one per peer `node_name`, bounded by
//! `--max-peers` as an LRU (PROTOCOL.md 9.3 steps 5 and 6). Shard 0 owns it (9.10).
//!
//! Admitting a link either keeps it alone, resolves it against an admitted link to the same
//! peer ([`resolve`]), or evicts the least recently used link to make room. Every link it
//! displaces is handed back, so that the caller closes it and fails its calls.

use std::time::Duration;

use crate::ids::Time;
use crate::lru::{Displaced, PeerLru};

use super::links::{resolve, Closed, LinkFacts, Resolution};
use crate::wire::Member;

/// One admitted link, as the peer table holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted<L> {
    pub link: L,
    pub facts: LinkFacts,
    /// The peer's advertised `HOST:PORT`, passed on in PEER_MEMBERS.
    pub addr: Box<[u8]>,
}

/// What admitting a link did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission<L> {
    /// The link is admitted; `evicted` is the least recently used link it displaced to stay
    /// under `--max-peers` (close it `peer_evicted`).
    Admitted { evicted: Option<(Box<[u8]>, L)> },
    /// The link is admitted in place of the old link to the same peer (close the old one with
    /// the reason given).
    Replaced { old: L, reason: Closed },
    /// The old link to the same peer stays: close this one with the reason given.
    Refused { reason: Closed },
}

/// The admitted links, least recently used first out.
pub struct PeerTable<L> {
    links: PeerLru<Box<[u8]>, Admitted<L>>,
}

impl<L: Clone + PartialEq> PeerTable<L> {
    /// A table of at most `max_peers` links (at least 1).
    pub fn new(max_peers: usize) -> PeerTable<L> {
        PeerTable {
            links: PeerLru::new(max_peers),
        }
    }

    /// Admits `link` to the peer called `name`, which advertises `addr`.
    pub fn admit(&mut self, name: &[u8], link: L, facts: LinkFacts, addr: &[u8]) -> Admission<L> {
        let addr: Box<[u8]> = addr.into();
        if let Some(old) = self.links.get(name) {
            return match resolve(&old.facts, &facts) {
                Resolution::KeepOld(reason) => Admission::Refused { reason },
                Resolution::KeepNew(reason) => {
                    let old = old.link.clone();
                    let admitted = Admitted { link, facts, addr };
                    self.links.insert(name.into(), admitted);
                    Admission::Replaced { old, reason }
                }
            };
        }
        match self
            .links
            .insert(name.into(), Admitted { link, facts, addr })
        {
            Displaced::Evicted(name, old) => Admission::Admitted {
                evicted: Some((name, old.link)),
            },
            Displaced::Nothing | Displaced::Replaced(_) => Admission::Admitted { evicted: None },
        }
    }

    /// A data frame crossed the link: it becomes the most recently used.
    pub fn touch(&mut self, name: &[u8]) {
        self.links.touch(name);
    }

    /// The link is lost: it leaves the table if it is still the one admitted for `name` (a
    /// replaced link's loss must not remove its successor).
    pub fn lost(&mut self, name: &[u8], link: &L) -> bool {
        if self.links.get(name).is_some_and(|a| a.link == *link) {
            self.links.remove(name);
            true
        } else {
            false
        }
    }

    pub fn get(&self, name: &[u8]) -> Option<&Admitted<L>> {
        self.links.get(name)
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Admitted<L>)> {
        self.links.iter().map(|(k, v)| (&**k, v))
    }

    /// What PEER_MEMBERS to send once `new` is admitted (9.4): the new peer gets every other
    /// member (even none); unless the link came from gossip, every other member gets the new
    /// peer alone. Returns the members for the new peer and the links to tell of it.
    pub fn introductions(&self, new: &[u8], gossip: bool) -> (Vec<Member<'_>>, Vec<L>) {
        let others = || self.iter().filter(move |(name, _)| *name != new);
        let members = others()
            .map(|(name, a)| Member {
                node_name: name,
                node_id: a.facts.node_id,
                addr: &a.addr,
            })
            .collect();
        let tell = if gossip {
            Vec::new()
        } else {
            others().map(|(_, a)| a.link.clone()).collect()
        };
        (members, tell)
    }
}

/// When to dial a peer again after `failures` failed dials in a row (PROTOCOL.md 9.4): 1 s,
/// doubling, at most 30 s, times `1 + jitter` where `jitter` is drawn in [-0.2, 0.2].
pub fn redial_at(now: Time, failures: u32, jitter: f64) -> Time {
    let base_ms = 1_000u64.saturating_mul(1u64 << failures.min(5)).min(30_000);
    let jitter = jitter.clamp(-0.2, 0.2);
    let ms = (base_ms as f64 * (1.0 + jitter)).round() as u64;
    now + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    fn facts(incarnation: u64, dialer: &str, dial_seq: u64) -> LinkFacts {
        LinkFacts {
            incarnation,
            node_id: NodeId([incarnation as u8; 32]),
            dialer: dialer.as_bytes().into(),
            dial_seq,
        }
    }

    #[test]
    fn the_table_never_holds_more_than_max_peers_and_evicts_the_least_recently_used() {
        let mut t = PeerTable::new(2);
        assert_eq!(
            t.admit(b"a", 1, facts(1, "me", 1), b"h:1"),
            Admission::Admitted { evicted: None }
        );
        assert_eq!(
            t.admit(b"b", 2, facts(1, "me", 2), b"h:1"),
            Admission::Admitted { evicted: None }
        );
        t.touch(b"a");
        assert_eq!(
            t.admit(b"c", 3, facts(1, "me", 3), b"h:1"),
            Admission::Admitted {
                evicted: Some((b"b"[..].into(), 2))
            }
        );
        assert_eq!(t.len(), 2);
        assert!(t.get(b"a").is_some() && t.get(b"c").is_some());
    }

    #[test]
    fn a_second_link_to_a_peer_is_resolved_and_never_evicts_another_peer() {
        let mut t = PeerTable::new(1);
        t.admit(b"a", 1, facts(5, "a", 1), b"h:1");
        assert_eq!(
            t.admit(b"a", 2, facts(6, "a", 1), b"h:1"),
            Admission::Replaced {
                old: 1,
                reason: Closed::Replaced
            }
        );
        assert_eq!(
            t.admit(b"a", 3, facts(6, "a", 0), b"h:1"),
            Admission::Refused {
                reason: Closed::DuplicateLink
            }
        );
        assert_eq!(t.get(b"a").map(|a| a.link), Some(2));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_replaced_links_loss_leaves_its_successor() {
        let mut t = PeerTable::new(4);
        t.admit(b"a", 1, facts(5, "a", 1), b"h:1");
        t.admit(b"a", 2, facts(6, "a", 1), b"h:1");
        assert!(!t.lost(b"a", &1));
        assert_eq!(t.get(b"a").map(|a| a.link), Some(2));
        assert!(t.lost(b"a", &2));
        assert!(t.is_empty());
    }

    #[test]
    fn a_new_peer_learns_every_other_member_and_they_learn_of_it_unless_it_came_by_gossip() {
        let mut t = PeerTable::new(8);
        t.admit(b"a", 1, facts(1, "me", 1), b"a:1");
        t.admit(b"b", 2, facts(1, "me", 2), b"b:1");
        let (members, tell) = t.introductions(b"b", false);
        let names: Vec<&[u8]> = members.iter().map(|m| m.node_name).collect();
        assert_eq!(names, [&b"a"[..]]);
        assert_eq!(members[0].addr, b"a:1");
        assert_eq!(tell, [1]);
        let (_, tell) = t.introductions(b"b", true);
        assert!(tell.is_empty());
        let mut alone = PeerTable::new(8);
        alone.admit(b"a", 1, facts(1, "me", 1), b"a:1");
        assert!(
            alone.introductions(b"a", false).0.is_empty(),
            "an empty list all the same"
        );
    }

    #[test]
    fn redials_back_off_from_one_second_doubling_to_thirty_with_jitter() {
        let t0 = Time::from_millis(0);
        let delays: Vec<u64> = (0..8).map(|f| redial_at(t0, f, 0.0).as_millis()).collect();
        assert_eq!(
            delays,
            [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(redial_at(t0, 0, 0.2).as_millis(), 1_200);
        assert_eq!(redial_at(t0, 9, -0.5).as_millis(), 24_000);
    }
}
