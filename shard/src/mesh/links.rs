//! Which link to keep when a gateway holds two admitted links to one peer (PROTOCOL.md 9.3,
//! step 5). Both ends of the two links apply [`resolve`] to the same facts, so both keep the
//! same single link: two gateways that dial each other at the same moment end with one link.

use crate::ids::NodeId;

/// What a gateway knows of one admitted link to a peer, from the HELLOs exchanged on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    /// The peer's `incarnation` (ms since the Unix epoch at its start-up): larger is newer.
    pub incarnation: u64,
    /// The peer's `node_id` on this link.
    pub node_id: NodeId,
    /// The `node_name` of the gateway that dialed the link (this one or the peer).
    pub dialer: Box<[u8]>,
    /// The dialer's `dial_seq` for this link (its dials since start-up).
    pub dial_seq: u64,
}

/// Why the link not kept is closed: the DISCONNECT reason it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The peer restarted: its newer link replaces the old one.
    Replaced,
    /// Another link to the same peer was kept.
    DuplicateLink,
    /// Two live gateways use one `node_name`.
    NameConflict,
}

/// The outcome for an old link `L` and a new link `N` to the same peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Keep N; close L with the reason given.
    KeepNew(Closed),
    /// Keep L; close N with the reason given.
    KeepOld(Closed),
}

/// Picks one of two admitted links to the same peer, by the rule of PROTOCOL.md 9.3 step 5.
pub fn resolve(old: &LinkFacts, new: &LinkFacts) -> Resolution {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match new.incarnation.cmp(&old.incarnation) {
        Greater => Resolution::KeepNew(Closed::Replaced),
        Less if new.node_id != old.node_id => Resolution::KeepOld(Closed::NameConflict),
        Less => Resolution::KeepOld(Closed::DuplicateLink),
        Equal => {
            let new_wins = if new.dialer != old.dialer {
                // Both dialed at once: the link dialed by the smaller name stays.
                new.dialer < old.dialer
            } else {
                // The same dialer dialed again: the newest dial stays, so a stale link one side
                // has not yet seen die cannot lock out a reconnect.
                new.dial_seq > old.dial_seq
            };
            if new_wins {
                Resolution::KeepNew(Closed::DuplicateLink)
            } else {
                Resolution::KeepOld(Closed::DuplicateLink)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(incarnation: u64, id: u8, dialer: &str, dial_seq: u64) -> LinkFacts {
        LinkFacts {
            incarnation,
            node_id: NodeId([id; 32]),
            dialer: dialer.as_bytes().into(),
            dial_seq,
        }
    }

    #[test]
    fn a_restarted_peers_newer_link_replaces_the_old_one() {
        let old = link(100, 1, "b", 1);
        let new = link(200, 2, "b", 1);
        assert_eq!(resolve(&old, &new), Resolution::KeepNew(Closed::Replaced));
    }

    #[test]
    fn a_link_of_an_older_incarnation_is_a_name_conflict_or_a_past_runs_duplicate() {
        let old = link(200, 1, "a", 5);
        assert_eq!(
            resolve(&old, &link(100, 2, "a", 6)),
            Resolution::KeepOld(Closed::NameConflict)
        );
        assert_eq!(
            resolve(&old, &link(100, 1, "a", 6)),
            Resolution::KeepOld(Closed::DuplicateLink)
        );
    }

    #[test]
    fn two_gateways_dialing_each_other_at_once_keep_the_link_dialed_by_the_smaller_name() {
        // On gateway "a": L dialed by a, N dialed by b. On gateway "b", the same two links
        // arrive in the other order. Both keep the one "a" dialed.
        let by_a = link(7, 9, "a", 3);
        let by_b = link(7, 9, "b", 1);
        assert_eq!(
            resolve(&by_a, &by_b),
            Resolution::KeepOld(Closed::DuplicateLink)
        );
        assert_eq!(
            resolve(&by_b, &by_a),
            Resolution::KeepNew(Closed::DuplicateLink)
        );
    }

    #[test]
    fn of_two_dials_by_the_same_gateway_the_newest_is_kept_whichever_arrives_last() {
        let first = link(7, 9, "a", 3);
        let second = link(7, 9, "a", 4);
        assert_eq!(
            resolve(&first, &second),
            Resolution::KeepNew(Closed::DuplicateLink)
        );
        assert_eq!(
            resolve(&second, &first),
            Resolution::KeepOld(Closed::DuplicateLink)
        );
    }

    #[test]
    fn whichever_link_a_gateway_admitted_first_both_ends_keep_the_same_one() {
        // The kept link does not depend on the order of admission, which differs per end.
        let links = [
            link(7, 9, "a", 1),
            link(7, 9, "a", 2),
            link(7, 9, "b", 1),
            link(7, 9, "b", 8),
        ];
        for x in &links {
            for y in &links {
                if x == y {
                    continue;
                }
                let kept_xy = match resolve(x, y) {
                    Resolution::KeepNew(_) => y,
                    Resolution::KeepOld(_) => x,
                };
                let kept_yx = match resolve(y, x) {
                    Resolution::KeepNew(_) => x,
                    Resolution::KeepOld(_) => y,
                };
                assert_eq!(kept_xy, kept_yx, "{x:?} / {y:?}");
            }
        }
    }
}
