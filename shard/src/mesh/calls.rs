//! The calls in flight on one peer link, both ways (PROTOCOL.md 9.8 and 9.10): calls this
//! gateway forwarded, by the link-scoped `call_id` it chose, and calls it received, by the
//! peer's `call_id`. The link's shard owns them; losing the link hands every one back, so that
//! forwarded calls fail with `provider_gone` and received ones are cancelled at their provider.

use ahash::AHashMap;

/// A received CALL reused a `call_id` still in flight on the link: a protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("call_id {0} is still in flight on this link")]
pub struct DuplicateCallId(pub u64);

/// Calls in flight on one link: `O` for each forwarded call (where its caller is), `I` for
/// each received one (where its local call is).
#[derive(Clone, Debug)]
pub struct LinkCalls<O, I> {
    next_id: u64,
    out: AHashMap<u64, O>,
    inbound: AHashMap<u64, I>,
}

impl<O, I> Default for LinkCalls<O, I> {
    fn default() -> Self {
        LinkCalls {
            next_id: 1,
            out: AHashMap::new(),
            inbound: AHashMap::new(),
        }
    }
}

impl<O, I> LinkCalls<O, I> {
    /// A call forwarded on the link: the `call_id` to send, unique among the link's calls in
    /// flight (a 64-bit counter does not come round).
    pub fn forward(&mut self, call: O) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.out.insert(id, call);
        id
    }

    /// A forwarded call ends: its REPLY came back, or this gateway cancelled it (deadline,
    /// caller gone). `None` for an id no longer in flight (a late REPLY, to count).
    pub fn forwarded_done(&mut self, id: u64) -> Option<O> {
        self.out.remove(&id)
    }

    /// A CALL received on the link.
    pub fn receive(&mut self, id: u64, call: I) -> Result<(), DuplicateCallId> {
        match self.inbound.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => Err(DuplicateCallId(id)),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(call);
                Ok(())
            }
        }
    }

    /// A received call ends: its REPLY went back on the link, or the peer cancelled it.
    /// `None` for an id no longer in flight (a CANCEL for a call already answered is ignored).
    pub fn received_done(&mut self, id: u64) -> Option<I> {
        self.inbound.remove(&id)
    }

    /// The link is lost: every call in flight on it, forwarded and received.
    pub fn lose(&mut self) -> (Vec<O>, Vec<I>) {
        (
            self.out.drain().map(|(_, c)| c).collect(),
            self.inbound.drain().map(|(_, c)| c).collect(),
        )
    }

    /// Calls in flight: (forwarded, received).
    pub fn len(&self) -> (usize, usize) {
        (self.out.len(), self.inbound.len())
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty() && self.inbound.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_calls_get_distinct_ids_and_a_late_reply_finds_nothing() {
        let mut calls: LinkCalls<&str, ()> = LinkCalls::default();
        let a = calls.forward("a");
        let b = calls.forward("b");
        assert_ne!(a, b);
        assert_eq!(calls.forwarded_done(a), Some("a"));
        assert_eq!(calls.forwarded_done(a), None, "late");
        assert_eq!(calls.len(), (1, 0));
    }

    #[test]
    fn a_received_call_id_still_in_flight_is_refused_and_free_again_once_answered() {
        let mut calls: LinkCalls<(), u32> = LinkCalls::default();
        assert_eq!(calls.receive(7, 1), Ok(()));
        assert_eq!(calls.receive(7, 2), Err(DuplicateCallId(7)));
        assert_eq!(calls.received_done(7), Some(1));
        assert_eq!(calls.received_done(7), None, "a CANCEL after the REPLY");
        assert_eq!(calls.receive(7, 3), Ok(()));
    }

    #[test]
    fn losing_the_link_hands_back_every_call_and_leaves_nothing() {
        let mut calls: LinkCalls<u32, u32> = LinkCalls::default();
        calls.forward(1);
        calls.forward(2);
        calls.receive(9, 3).unwrap();
        let (mut out, inbound) = calls.lose();
        out.sort();
        assert_eq!((out, inbound), (vec![1, 2], vec![3]));
        assert!(calls.is_empty());
    }
}
