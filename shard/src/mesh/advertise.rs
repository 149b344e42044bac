//! What a gateway advertises to its peers for one realm (PROTOCOL.md 9.6): its local interest
//! only — the distinct patterns its sessions subscribe to, and its live providers per
//! procedure — as a snapshot when a link comes up or asks, and as increments after.
//!
//! Changes made within one turn are merged before they are sent: an add and a remove of the
//! same pattern cancel out, and a procedure's last count wins. Past `--max-advertised-patterns`
//! the realm is advertised as the single pattern `**`, in a new snapshot, until the count falls
//! below 90 % of the limit, when a new snapshot gives the exact set again.

use ahash::{AHashMap, AHashSet};

use super::digest::InterestDigest;
use super::interest::EVERYTHING;

/// What to send peers after a turn's changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Nothing changed.
    Nothing,
    /// One INTEREST frame of increments.
    Increment {
        sub_add: Vec<Box<[u8]>>,
        sub_del: Vec<Box<[u8]>>,
        procs: Vec<(Box<[u8]>, u32)>,
    },
    /// The advertised set changed shape (collapsed to `**` or back): send a new snapshot
    /// ([`Advertised::snapshot`]).
    Snapshot,
}

/// The whole advertised state of a realm, for a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot<'a> {
    /// The patterns, or `**` alone when collapsed.
    pub patterns: Vec<&'a [u8]>,
    /// Every procedure with live local providers, and how many.
    pub procs: Vec<(&'a [u8], u32)>,
}

/// One realm's local interest and what of it is not yet advertised.
#[derive(Clone, Debug)]
pub struct Advertised {
    patterns: AHashSet<Box<[u8]>>,
    procedures: AHashMap<Box<[u8]>, u32>,
    limit: usize,
    /// `**` is advertised in place of the patterns.
    collapsed: bool,
    /// Changes since the last [`Advertised::take_update`]: pattern → added (true) or removed.
    pending_patterns: AHashMap<Box<[u8]>, bool>,
    pending_procedures: AHashMap<Box<[u8]>, u32>,
}

impl Advertised {
    /// Nothing advertised; at most `limit` distinct patterns before collapsing.
    pub fn new(limit: usize) -> Advertised {
        Advertised {
            patterns: AHashSet::new(),
            procedures: AHashMap::new(),
            limit: limit.max(1),
            collapsed: false,
            pending_patterns: AHashMap::new(),
            pending_procedures: AHashMap::new(),
        }
    }

    /// A pattern's count of local sessions went 0→1 (`present`) or 1→0.
    pub fn pattern(&mut self, pattern: &[u8], present: bool) {
        let changed = if present {
            self.patterns.insert(pattern.into())
        } else {
            self.patterns.remove(pattern)
        };
        if !changed {
            return;
        }
        match self.pending_patterns.get(pattern) {
            // An add and a remove within one turn cancel out.
            Some(&was) if was != present => {
                self.pending_patterns.remove(pattern);
            }
            _ => {
                self.pending_patterns.insert(pattern.into(), present);
            }
        }
    }

    /// A procedure now has `count` live local providers (0: none).
    pub fn procedure(&mut self, name: &[u8], count: u32) {
        let old = if count == 0 {
            self.procedures.remove(name)
        } else {
            self.procedures.insert(name.into(), count)
        };
        if old.unwrap_or(0) == count {
            return;
        }
        self.pending_procedures.insert(name.into(), count);
    }

    /// What the turn's changes call for; the pending changes are cleared.
    pub fn take_update(&mut self) -> Update {
        let collapse = if self.collapsed {
            self.patterns.len() * 10 >= self.limit * 9
        } else {
            self.patterns.len() > self.limit
        };
        let patterns = std::mem::take(&mut self.pending_patterns);
        let procs: Vec<(Box<[u8]>, u32)> = self.pending_procedures.drain().collect();
        if collapse != self.collapsed {
            self.collapsed = collapse;
            return Update::Snapshot;
        }
        let (mut sub_add, mut sub_del) = (Vec::new(), Vec::new());
        if !self.collapsed {
            for (p, added) in patterns {
                if added {
                    sub_add.push(p);
                } else {
                    sub_del.push(p);
                }
            }
        }
        if sub_add.is_empty() && sub_del.is_empty() && procs.is_empty() {
            return Update::Nothing;
        }
        Update::Increment {
            sub_add,
            sub_del,
            procs,
        }
    }

    /// The whole advertised state, for a snapshot.
    pub fn snapshot(&self) -> Snapshot<'_> {
        let patterns = if self.collapsed {
            vec![EVERYTHING]
        } else {
            self.patterns.iter().map(|p| &**p).collect()
        };
        let procs = self.procedures.iter().map(|(n, &c)| (&**n, c)).collect();
        Snapshot { patterns, procs }
    }

    /// The digest of what is advertised (SYNC `digest`).
    pub fn digest(&self) -> u64 {
        let mut d = InterestDigest::EMPTY;
        let Snapshot { patterns, procs } = self.snapshot();
        for p in patterns {
            d.toggle_pattern(p);
        }
        for (name, count) in procs {
            d.set_procedure(name, 0, count);
        }
        d.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::interest::RemoteInterest;

    fn sorted(mut v: Vec<Box<[u8]>>) -> Vec<String> {
        v.sort();
        v.iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    #[test]
    fn changes_within_a_turn_are_merged_into_one_increment() {
        let mut a = Advertised::new(100);
        a.pattern(b"gone", true);
        assert!(matches!(a.take_update(), Update::Increment { .. }));
        a.pattern(b"flicker", true);
        a.pattern(b"flicker", false);
        a.pattern(b"new", true);
        a.pattern(b"gone", false);
        a.procedure(b"p", 1);
        a.procedure(b"p", 3);
        match a.take_update() {
            Update::Increment {
                sub_add,
                sub_del,
                procs,
            } => {
                assert_eq!(sorted(sub_add), ["new"]);
                assert_eq!(sorted(sub_del), ["gone"]);
                assert_eq!(procs, vec![(b"p"[..].into(), 3)]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.take_update(), Update::Nothing);
    }

    #[test]
    fn past_the_limit_the_realm_is_advertised_as_everything_until_under_ninety_percent() {
        let mut a = Advertised::new(10);
        for i in 0..10 {
            a.pattern(format!("p{i}").as_bytes(), true);
        }
        assert!(matches!(a.take_update(), Update::Increment { .. }));
        a.pattern(b"p10", true);
        assert_eq!(a.take_update(), Update::Snapshot);
        assert_eq!(a.snapshot().patterns, vec![EVERYTHING]);
        // Still collapsed at 9 (90 % of 10); pattern changes send nothing meanwhile.
        a.pattern(b"p10", false);
        a.pattern(b"p9", false);
        assert_eq!(a.take_update(), Update::Nothing);
        a.pattern(b"p8", false);
        assert_eq!(a.take_update(), Update::Snapshot);
        assert_eq!(a.snapshot().patterns.len(), 8);
    }

    #[test]
    fn a_peer_that_applies_the_snapshot_and_increments_agrees_with_the_digest() {
        let mut a = Advertised::new(100);
        let mut peer = RemoteInterest::new(100);
        a.pattern(b"x.*", true);
        a.procedure(b"svc", 2);
        a.take_update();
        let Snapshot { patterns, procs } = a.snapshot();
        peer.begin();
        peer.apply(patterns, [], procs, &mut Vec::new());
        peer.end(&mut Vec::new());
        a.pattern(b"y", true);
        a.pattern(b"x.*", false);
        a.procedure(b"svc", 0);
        if let Update::Increment {
            sub_add,
            sub_del,
            procs,
        } = a.take_update()
        {
            peer.apply(
                sub_add.iter().map(|p| &**p),
                sub_del.iter().map(|p| &**p),
                procs.iter().map(|(n, c)| (&**n, *c)),
                &mut Vec::new(),
            );
        }
        assert_eq!(
            peer.check(a.digest()),
            crate::mesh::interest::DigestCheck::Match
        );
    }
}
