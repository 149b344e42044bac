//! The choice of a provider for a CALL in a mesh (PROTOCOL.md 9.8): local first, then the
//! peers that advertise the procedure, weighted by their provider counts, each peer tried at
//! most once per call; and which error the caller gets when nothing is left.

use super::wrr::SmoothWrr;

/// The local side of a choice: what the shard's own registry offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    /// No live local provider.
    None,
    /// A live local provider under its output bound was picked.
    Ready,
    /// The local pick is over its output bound (5.5).
    OverBound,
}

/// A peer link that may take the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<L> {
    pub link: L,
    /// Live providers the peer advertises for the procedure (0: not a candidate).
    pub providers: u32,
    /// The link is over `--max-peer-output`: skipped.
    pub over_bound: bool,
}

/// Where the call goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice<L> {
    /// To the local provider picked.
    Local,
    /// Forwarded on this link.
    Link(L),
    /// Nowhere: REPLY error `overloaded` (a provider or link was skipped for its bound, or a
    /// link answered `overloaded`) or else `procedure_not_found`.
    Fail { overloaded: bool },
}

/// One call's way through the candidates: the links tried, and whether a bound was in the way.
#[derive(Clone, Debug)]
pub struct Attempt<L> {
    tried: Vec<L>,
    overloaded: bool,
}

impl<L> Default for Attempt<L> {
    fn default() -> Self {
        Attempt {
            tried: Vec::new(),
            overloaded: false,
        }
    }
}

impl<L: Copy + PartialEq> Attempt<L> {
    /// The first choice for a call.
    pub fn first(
        &mut self,
        local: Local,
        candidates: &[Candidate<L>],
        wrr: &mut SmoothWrr,
    ) -> Choice<L> {
        match local {
            // A live local provider under its bound: the call never leaves the gateway.
            Local::Ready => Choice::Local,
            Local::OverBound => {
                self.overloaded = true;
                self.next(candidates, wrr)
            }
            Local::None => self.next(candidates, wrr),
        }
    }

    /// The link tried last answered `procedure_not_found` or (`overloaded`) `overloaded`:
    /// no provider received the call. The next candidate, or the caller's error.
    pub fn refused(
        &mut self,
        overloaded: bool,
        candidates: &[Candidate<L>],
        wrr: &mut SmoothWrr,
    ) -> Choice<L> {
        self.overloaded |= overloaded;
        self.next(candidates, wrr)
    }

    fn next(&mut self, candidates: &[Candidate<L>], wrr: &mut SmoothWrr) -> Choice<L> {
        let tried = &self.tried;
        let fresh = |c: &Candidate<L>| c.providers > 0 && !tried.contains(&c.link);
        if candidates.iter().any(|c| fresh(c) && c.over_bound) {
            self.overloaded = true;
        }
        let weights = candidates.iter().map(|c| {
            if fresh(c) && !c.over_bound {
                c.providers
            } else {
                0
            }
        });
        match wrr.pick(weights) {
            Some(i) => {
                let link = candidates[i].link;
                self.tried.push(link);
                Choice::Link(link)
            }
            None => Choice::Fail {
                overloaded: self.overloaded,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(link: u8, providers: u32, over_bound: bool) -> Candidate<u8> {
        Candidate {
            link,
            providers,
            over_bound,
        }
    }

    #[test]
    fn a_ready_local_provider_keeps_the_call_on_the_gateway() {
        let mut wrr = SmoothWrr::default();
        let choice = Attempt::default().first(Local::Ready, &[c(1, 9, false)], &mut wrr);
        assert_eq!(choice, Choice::Local);
    }

    #[test]
    fn a_local_provider_over_its_bound_sends_the_call_to_a_peer_or_fails_overloaded() {
        let mut wrr = SmoothWrr::default();
        let mut a = Attempt::default();
        assert_eq!(
            a.first(Local::OverBound, &[c(1, 1, false)], &mut wrr),
            Choice::Link(1)
        );
        let mut a = Attempt::<u8>::default();
        assert_eq!(
            a.first(Local::OverBound, &[], &mut wrr),
            Choice::Fail { overloaded: true }
        );
    }

    #[test]
    fn without_candidates_the_call_fails_not_found_or_overloaded_if_a_link_was_over_its_bound() {
        let mut wrr = SmoothWrr::default();
        let none = [c(1, 0, false)];
        assert_eq!(
            Attempt::default().first(Local::None, &none, &mut wrr),
            Choice::Fail { overloaded: false }
        );
        let full = [c(1, 2, true)];
        assert_eq!(
            Attempt::default().first(Local::None, &full, &mut wrr),
            Choice::Fail { overloaded: true }
        );
    }

    #[test]
    fn each_link_is_tried_at_most_once_and_the_last_refusal_decides_the_error() {
        let mut wrr = SmoothWrr::default();
        let links = [c(1, 1, false), c(2, 1, false)];
        let mut a = Attempt::default();
        let first = a.first(Local::None, &links, &mut wrr);
        let second = a.refused(false, &links, &mut wrr);
        assert_ne!(first, second);
        assert!(matches!(second, Choice::Link(_)));
        assert_eq!(
            a.refused(false, &links, &mut wrr),
            Choice::Fail { overloaded: false }
        );
        let mut a = Attempt::default();
        a.first(Local::None, &links, &mut wrr);
        a.refused(true, &links, &mut wrr);
        assert_eq!(
            a.refused(false, &links, &mut wrr),
            Choice::Fail { overloaded: true },
            "a link answered overloaded"
        );
    }

    #[test]
    fn calls_from_one_session_reach_each_peer_in_proportion_to_its_count() {
        let mut wrr = SmoothWrr::default();
        let links = [c(1, 1, false), c(2, 3, false)];
        let mut counts = [0u32; 3];
        for _ in 0..400 {
            if let Choice::Link(l) = Attempt::default().first(Local::None, &links, &mut wrr) {
                counts[usize::from(l)] += 1;
            }
        }
        assert_eq!((counts[1], counts[2]), (100, 300));
    }
}
