//! One peer's interest in one realm, as the receiving gateway holds it (PROTOCOL.md 9.6):
//! the patterns the peer's sessions subscribe to and, per procedure, how many live providers
//! it has. A snapshot (SYNC `begin`, INTEREST frames, SYNC `end`) builds a fresh table that
//! replaces the old one at `end`; INTEREST frames outside a snapshot are increments.
//!
//! The table reports every change of what is in effect as a [`Change`], so that the shard can
//! keep its matching index and its copies on other shards in step.

use ahash::{AHashMap, AHashSet};

use super::digest::InterestDigest;

/// The single pattern a table collapses to when it would hold too many.
pub const EVERYTHING: &[u8] = b"**";

/// A change of the interest in effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    PatternAdded(Box<[u8]>),
    PatternRemoved(Box<[u8]>),
    /// The procedure's provider count is now `count` (0: the peer has none).
    Procedure {
        name: Box<[u8]>,
        count: u32,
    },
}

/// The outcome of comparing a digest the peer sent with the table's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestCheck {
    Match,
    /// The tables differ: ask the peer for a snapshot (SYNC `request`).
    Mismatch,
    /// The table is collapsed to `**` (or a snapshot is being built): no check.
    Skipped,
}

#[derive(Clone, Debug, Default)]
struct Table {
    patterns: AHashSet<Box<[u8]>>,
    procedures: AHashMap<Box<[u8]>, u32>,
    digest: InterestDigest,
    /// Collapsed to `**`: pattern increments are ignored until a snapshot ends with fewer.
    collapsed: bool,
}

impl Table {
    /// Adds a pattern, or collapses the table to `**` if it would hold more than `limit`;
    /// what changes is appended to `changes`.
    fn add_pattern(&mut self, pattern: &[u8], limit: usize, changes: &mut Vec<Change>) {
        if self.collapsed || self.patterns.contains(pattern) {
            return;
        }
        if self.patterns.len() < limit {
            self.digest.toggle_pattern(pattern);
            self.patterns.insert(pattern.into());
            changes.push(Change::PatternAdded(pattern.into()));
            return;
        }
        changes.extend(self.patterns.drain().map(Change::PatternRemoved));
        self.patterns.insert(EVERYTHING.into());
        changes.push(Change::PatternAdded(EVERYTHING.into()));
        self.collapsed = true;
    }

    fn remove_pattern(&mut self, pattern: &[u8], changes: &mut Vec<Change>) {
        if !self.collapsed && self.patterns.remove(pattern) {
            self.digest.toggle_pattern(pattern);
            changes.push(Change::PatternRemoved(pattern.into()));
        }
    }

    fn set_procedure(&mut self, name: &[u8], count: u32, changes: &mut Vec<Change>) {
        let old = if count == 0 {
            self.procedures.remove(name).unwrap_or(0)
        } else {
            self.procedures.insert(name.into(), count).unwrap_or(0)
        };
        if old != count {
            self.digest.set_procedure(name, old, count);
            changes.push(Change::Procedure {
                name: name.into(),
                count,
            });
        }
    }
}

/// A peer's interest in one realm.
#[derive(Clone, Debug)]
pub struct RemoteInterest {
    current: Table,
    /// The table a snapshot in progress builds.
    building: Option<Table>,
    /// `--max-advertised-patterns`.
    limit: usize,
}

impl RemoteInterest {
    /// An empty table that holds at most `limit` distinct patterns before collapsing.
    pub fn new(limit: usize) -> RemoteInterest {
        RemoteInterest {
            current: Table::default(),
            building: None,
            limit: limit.max(1),
        }
    }

    /// SYNC `begin`: a fresh table is built from here; a snapshot already in progress is
    /// dropped.
    pub fn begin(&mut self) {
        self.building = Some(Table::default());
    }

    /// An INTEREST frame: into the snapshot being built, or an increment of the table in
    /// effect. Changes of the table in effect are appended to `changes`.
    pub fn apply<'a>(
        &mut self,
        sub_add: impl IntoIterator<Item = &'a [u8]>,
        sub_del: impl IntoIterator<Item = &'a [u8]>,
        procs: impl IntoIterator<Item = (&'a [u8], u32)>,
        changes: &mut Vec<Change>,
    ) {
        // What a snapshot in progress builds is not in effect yet: its changes are dropped
        // here and reported, as a whole, at `end`.
        let mut unseen = Vec::new();
        let (table, changes) = match &mut self.building {
            Some(table) => (table, &mut unseen),
            None => (&mut self.current, changes),
        };
        for p in sub_add {
            table.add_pattern(p, self.limit, changes);
        }
        for p in sub_del {
            table.remove_pattern(p, changes);
        }
        for (name, count) in procs {
            table.set_procedure(name, count, changes);
        }
    }

    /// SYNC `end`: the table built since `begin` replaces the one in effect (no merge).
    /// Ignored without a `begin`.
    pub fn end(&mut self, changes: &mut Vec<Change>) {
        let Some(new) = self.building.take() else {
            return;
        };
        let old = std::mem::replace(&mut self.current, new);
        diff(&old, &self.current, changes);
    }

    /// The link is lost: everything goes.
    pub fn clear(&mut self, changes: &mut Vec<Change>) {
        self.building = None;
        let old = std::mem::take(&mut self.current);
        diff(&old, &self.current, changes);
    }

    /// SYNC `digest`: compares the peer's digest with the table in effect.
    pub fn check(&self, digest: u64) -> DigestCheck {
        if self.current.collapsed || self.building.is_some() {
            DigestCheck::Skipped
        } else if self.current.digest.value() == digest {
            DigestCheck::Match
        } else {
            DigestCheck::Mismatch
        }
    }

    /// The patterns in effect.
    pub fn patterns(&self) -> impl Iterator<Item = &[u8]> {
        self.current.patterns.iter().map(|p| &**p)
    }

    /// The peer's live providers of `procedure`, 0 if none.
    pub fn providers(&self, procedure: &[u8]) -> u32 {
        self.current.procedures.get(procedure).copied().unwrap_or(0)
    }

    pub fn is_collapsed(&self) -> bool {
        self.current.collapsed
    }

    pub fn is_empty(&self) -> bool {
        self.current.patterns.is_empty() && self.current.procedures.is_empty()
    }

    /// Entries in effect: (patterns, procedures).
    pub fn len(&self) -> (usize, usize) {
        (self.current.patterns.len(), self.current.procedures.len())
    }
}

/// Appends what changes from `old` to `new`.
fn diff(old: &Table, new: &Table, changes: &mut Vec<Change>) {
    for p in old.patterns.difference(&new.patterns) {
        changes.push(Change::PatternRemoved(p.clone()));
    }
    for p in new.patterns.difference(&old.patterns) {
        changes.push(Change::PatternAdded(p.clone()));
    }
    for (name, &count) in &old.procedures {
        if !new.procedures.contains_key(name) {
            changes.push(Change::Procedure {
                name: name.clone(),
                count: 0,
            });
        } else if new.procedures[name] != count {
            changes.push(Change::Procedure {
                name: name.clone(),
                count: new.procedures[name],
            });
        }
    }
    for (name, &count) in &new.procedures {
        if !old.procedures.contains_key(name) {
            changes.push(Change::Procedure {
                name: name.clone(),
                count,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(t: &RemoteInterest) -> Vec<String> {
        let mut v: Vec<String> = t
            .patterns()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        v.sort();
        v
    }

    fn add(t: &mut RemoteInterest, patterns: &[&str], procs: &[(&str, u32)]) -> Vec<Change> {
        let mut changes = Vec::new();
        t.apply(
            patterns.iter().map(|p| p.as_bytes()),
            [],
            procs.iter().map(|(n, c)| (n.as_bytes(), *c)),
            &mut changes,
        );
        changes
    }

    fn digest_of(patterns: &[&str], procs: &[(&str, u32)]) -> u64 {
        let mut d = InterestDigest::EMPTY;
        for p in patterns {
            d.toggle_pattern(p.as_bytes());
        }
        for (n, c) in procs {
            d.set_procedure(n.as_bytes(), 0, *c);
        }
        d.value()
    }

    #[test]
    fn a_snapshot_replaces_the_table_and_does_not_merge_with_it() {
        let mut t = RemoteInterest::new(100);
        add(&mut t, &["old.a", "kept"], &[("p.old", 2)]);
        t.begin();
        let during = add(&mut t, &["kept", "new.b"], &[("p.new", 1)]);
        assert!(
            during.is_empty(),
            "a snapshot is not in effect before its end"
        );
        assert_eq!(pats(&t), ["kept", "old.a"]);
        let mut changes = Vec::new();
        t.end(&mut changes);
        assert_eq!(pats(&t), ["kept", "new.b"]);
        assert_eq!((t.providers(b"p.old"), t.providers(b"p.new")), (0, 1));
        changes.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            changes,
            vec![
                Change::PatternAdded(b"new.b"[..].into()),
                Change::PatternRemoved(b"old.a"[..].into()),
                Change::Procedure {
                    name: b"p.new"[..].into(),
                    count: 1
                },
                Change::Procedure {
                    name: b"p.old"[..].into(),
                    count: 0
                },
            ]
        );
        assert_eq!(
            t.check(digest_of(&["kept", "new.b"], &[("p.new", 1)])),
            DigestCheck::Match
        );
    }

    #[test]
    fn increments_after_the_snapshot_apply_to_it_and_keep_the_digest() {
        let mut t = RemoteInterest::new(100);
        t.begin();
        add(&mut t, &["a"], &[("p", 3)]);
        t.end(&mut Vec::new());
        let mut changes = Vec::new();
        t.apply([&b"b"[..]], [&b"a"[..]], [(&b"p"[..], 0)], &mut changes);
        assert_eq!(pats(&t), ["b"]);
        assert_eq!(t.providers(b"p"), 0);
        assert_eq!(changes.len(), 3);
        assert_eq!(t.check(digest_of(&["b"], &[])), DigestCheck::Match);
        assert_eq!(t.check(digest_of(&["a"], &[])), DigestCheck::Mismatch);
    }

    #[test]
    fn past_the_pattern_limit_a_table_collapses_to_everything_until_a_smaller_snapshot() {
        let mut t = RemoteInterest::new(3);
        add(&mut t, &["a", "b", "c"], &[("p", 1)]);
        let changes = add(&mut t, &["d"], &[]);
        assert_eq!(pats(&t), ["**"]);
        assert!(t.is_collapsed());
        assert_eq!(
            changes
                .iter()
                .filter(|c| matches!(c, Change::PatternRemoved(_)))
                .count(),
            3
        );
        assert!(changes.contains(&Change::PatternAdded(b"**"[..].into())));
        // Pattern increments are ignored, procedure counts stay exact, no digest check.
        let ignored = add(&mut t, &["e"], &[("p", 2)]);
        assert_eq!(
            ignored,
            vec![Change::Procedure {
                name: b"p"[..].into(),
                count: 2
            }]
        );
        assert_eq!(t.check(12345), DigestCheck::Skipped);
        t.begin();
        add(&mut t, &["x"], &[]);
        t.end(&mut Vec::new());
        assert_eq!(pats(&t), ["x"]);
        assert!(!t.is_collapsed());
    }

    #[test]
    fn a_snapshot_over_the_limit_collapses_while_it_is_built() {
        let mut t = RemoteInterest::new(2);
        t.begin();
        add(&mut t, &["a", "b", "c"], &[]);
        t.end(&mut Vec::new());
        assert_eq!(pats(&t), ["**"]);
        assert!(t.is_collapsed());
    }

    #[test]
    fn a_lost_link_clears_everything_and_says_so() {
        let mut t = RemoteInterest::new(10);
        add(&mut t, &["a"], &[("p", 1)]);
        t.begin();
        let mut changes = Vec::new();
        t.clear(&mut changes);
        assert!(t.is_empty());
        assert_eq!(changes.len(), 2);
        assert_eq!(t.check(0), DigestCheck::Match);
    }
}
