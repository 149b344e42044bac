//! Whom a gateway dials (PROTOCOL.md 9.4): its `--peer` seeds, for as long as it runs, and the
//! gateways it learns of from PEER_MEMBERS, each after a random delay, retried with backoff
//! and forgotten after 3 failed dials. Shard 0 keeps this schedule beside the peer table.

use ahash::AHashMap;
use std::time::Duration;

use crate::ids::Time;

use super::peers::redial_at;

/// Why an address is dialed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A `--peer` seed: dialed again for as long as the gateway runs.
    Seed,
    /// Learned from a peer's PEER_MEMBERS: forgotten after [`GOSSIP_ATTEMPTS`] failed dials.
    Gossip,
}

/// Failed dials after which a gossip-learned address is forgotten.
pub const GOSSIP_ATTEMPTS: u32 = 3;

#[derive(Clone, Debug)]
struct Dial {
    origin: Origin,
    /// The peer's name, once known (always for gossip; after the first HELLO for a seed).
    name: Option<Box<[u8]>>,
    failures: u32,
    /// When to dial next; `None` while a link to the peer found there is admitted, or while a
    /// dial is in progress.
    next_at: Option<Time>,
}

/// The dial schedule: addresses to dial, and when.
#[derive(Clone, Debug, Default)]
pub struct DialSchedule {
    dials: AHashMap<Box<str>, Dial>,
}

impl DialSchedule {
    /// A `--peer` address, dialed at once.
    pub fn seed(&mut self, addr: &str, now: Time) {
        self.dials.insert(
            addr.into(),
            Dial {
                origin: Origin::Seed,
                name: None,
                failures: 0,
                next_at: Some(now),
            },
        );
    }

    /// A gateway listed in a received PEER_MEMBERS. It is dialed after `delay` (drawn in
    /// 0..1 s) unless it is this gateway, already a member (`is_member`), or already dialed.
    /// Returns whether it was added.
    pub fn learn(
        &mut self,
        name: &[u8],
        addr: &str,
        own_name: &[u8],
        is_member: bool,
        now: Time,
        delay: Duration,
    ) -> bool {
        let dialed = self.dials.contains_key(addr)
            || self.dials.values().any(|d| d.name.as_deref() == Some(name));
        if name == own_name || is_member || dialed {
            return false;
        }
        self.dials.insert(
            addr.into(),
            Dial {
                origin: Origin::Gossip,
                name: Some(name.into()),
                failures: 0,
                next_at: Some(now + delay.min(Duration::from_secs(1))),
            },
        );
        true
    }

    /// The addresses due at `now`, in address order, each marked as being dialed (not
    /// returned again until it fails or its link is lost). The order is fixed so that the dials
    /// (and their `dial_seq`) do not depend on the map's per-process hash seed.
    pub fn due(&mut self, now: Time, out: &mut Vec<Box<str>>) {
        let start = out.len();
        for (addr, dial) in &mut self.dials {
            if dial.next_at.is_some_and(|at| at <= now) {
                dial.next_at = None;
                out.push(addr.clone());
            }
        }
        out[start..].sort_unstable();
    }

    /// When the schedule next has an address due.
    pub fn next_deadline(&self) -> Option<Time> {
        self.dials.values().filter_map(|d| d.next_at).min()
    }

    /// A dial to `addr` failed (no link admitted within 10 s, or a refusal): it is retried with
    /// backoff (`jitter` drawn in [-0.2, 0.2]), or forgotten if it was learned by gossip and
    /// failed [`GOSSIP_ATTEMPTS`] times.
    pub fn failed(&mut self, addr: &str, now: Time, jitter: f64) {
        let Some(dial) = self.dials.get_mut(addr) else {
            return;
        };
        dial.failures += 1;
        if dial.origin == Origin::Gossip && dial.failures >= GOSSIP_ATTEMPTS {
            self.dials.remove(addr);
            return;
        }
        dial.next_at = Some(redial_at(now, dial.failures - 1, jitter));
    }

    /// The address turned out to be this gateway (a self-link): never dialed again.
    pub fn is_self(&mut self, addr: &str) {
        self.dials.remove(addr);
    }

    /// A link to `name`, dialed at `addr`, is admitted: no dial while it lasts.
    pub fn admitted(&mut self, addr: &str, name: &[u8]) {
        if let Some(dial) = self.dials.get_mut(addr) {
            dial.name = Some(name.into());
            dial.failures = 0;
            dial.next_at = None;
        }
    }

    /// The link to `name` is lost: the address at which it was found is dialed again after
    /// `delay` (30 s after an eviction, 9.3). A lost link is not a failed dial: a gossip address
    /// too is forgotten only after [`GOSSIP_ATTEMPTS`] failed dials from here (9.4).
    pub fn lost(&mut self, name: &[u8], now: Time, delay: Duration) {
        for d in self.dials.values_mut() {
            if d.name.as_deref() == Some(name) {
                d.next_at = Some(now + delay);
            }
        }
    }

    /// Why `addr` is dialed, if it is.
    pub fn origin(&self, addr: &str) -> Option<Origin> {
        self.dials.get(addr).map(|d| d.origin)
    }

    /// Every address: its peer's name once known, and when it is dialed next (`None` while a
    /// dial is in progress or a link to it is admitted).
    pub fn entries(&self) -> impl Iterator<Item = (&str, Option<&[u8]>, Option<Time>)> {
        self.dials
            .iter()
            .map(|(addr, d)| (&**addr, d.name.as_deref(), d.next_at))
    }

    /// Gateways known by dial (besides the members), for `/health`'s `known`.
    pub fn len(&self) -> usize {
        self.dials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dials.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Time = Time::from_millis(10_000);

    fn due(s: &mut DialSchedule, at: u64) -> Vec<String> {
        let mut out = Vec::new();
        s.due(Time::from_millis(at), &mut out);
        let mut v: Vec<String> = out.iter().map(|a| a.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_seed_is_dialed_at_once_and_again_after_each_failure_forever() {
        let mut s = DialSchedule::default();
        s.seed("10.0.0.1:9443", T0);
        assert_eq!(due(&mut s, 10_000), ["10.0.0.1:9443"]);
        assert!(due(&mut s, 10_000).is_empty(), "not twice while dialing");
        let mut at = 10_000;
        for failures in 0..8 {
            s.failed("10.0.0.1:9443", Time::from_millis(at), 0.0);
            let wait = (1_000u64 << failures.min(5)).min(30_000);
            assert!(due(&mut s, at + wait - 1).is_empty());
            assert_eq!(due(&mut s, at + wait), ["10.0.0.1:9443"]);
            at += wait;
        }
    }

    #[test]
    fn a_gossiped_gateway_is_dialed_after_its_delay_and_forgotten_after_three_failures() {
        let mut s = DialSchedule::default();
        let learned = s.learn(b"c", "c:1", b"b", false, T0, Duration::from_millis(400));
        assert!(learned);
        assert!(due(&mut s, 10_399).is_empty());
        assert_eq!(due(&mut s, 10_400), ["c:1"]);
        s.failed("c:1", Time::from_millis(11_000), 0.0);
        assert_eq!(due(&mut s, 12_000), ["c:1"]);
        s.failed("c:1", Time::from_millis(12_000), 0.0);
        assert_eq!(due(&mut s, 14_000), ["c:1"]);
        s.failed("c:1", Time::from_millis(14_000), 0.0);
        assert!(s.is_empty(), "forgotten after 3 failed dials");
    }

    #[test]
    fn gossip_about_itself_a_member_or_a_gateway_already_dialed_is_ignored() {
        let mut s = DialSchedule::default();
        let d = Duration::ZERO;
        assert!(!s.learn(b"me", "me:1", b"me", false, T0, d));
        assert!(!s.learn(b"m", "m:1", b"me", true, T0, d));
        assert!(s.learn(b"x", "x:1", b"me", false, T0, d));
        assert!(
            !s.learn(b"x", "x:2", b"me", false, T0, d),
            "same name elsewhere"
        );
        assert!(!s.learn(b"y", "x:1", b"me", false, T0, d), "same address");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_lost_links_address_is_redialed_a_seed_forever_and_a_gossip_one_until_it_fails() {
        let mut s = DialSchedule::default();
        s.seed("a:1", T0);
        s.learn(b"c", "c:1", b"me", false, T0, Duration::ZERO);
        due(&mut s, 10_000);
        s.admitted("a:1", b"a");
        s.admitted("c:1", b"c");
        assert_eq!(s.next_deadline(), None, "nothing dialed while admitted");
        s.lost(b"a", T0, Duration::from_secs(30));
        s.lost(b"c", T0, Duration::from_secs(30));
        assert_eq!(s.len(), 2);
        assert!(due(&mut s, 39_999).is_empty());
        assert_eq!(due(&mut s, 40_000), ["a:1", "c:1"]);
        for at in [40_000, 41_000, 43_000] {
            s.failed("a:1", Time::from_millis(at), 0.0);
            s.failed("c:1", Time::from_millis(at), 0.0);
            due(&mut s, at + 10_000);
        }
        let left: Vec<&str> = s.entries().map(|(addr, _, _)| addr).collect();
        assert_eq!(
            left,
            ["a:1"],
            "the gossip address is forgotten after 3 failed dials"
        );
    }

    #[test]
    fn addresses_due_at_once_come_in_address_order() {
        let mut s = DialSchedule::default();
        for addr in ["c:1", "a:1", "d:1", "b:1"] {
            s.seed(addr, T0);
        }
        let mut out = vec!["kept".into()];
        s.due(T0, &mut out);
        let out: Vec<&str> = out.iter().map(|a| &**a).collect();
        assert_eq!(out, ["kept", "a:1", "b:1", "c:1", "d:1"]);
    }

    #[test]
    fn a_self_link_address_is_never_dialed_again() {
        let mut s = DialSchedule::default();
        s.seed("self:1", T0);
        due(&mut s, 10_000);
        s.is_self("self:1");
        assert!(s.is_empty());
    }
}
