//! `PendingCalls`: the calls a shard's sessions have in flight as callers, indexed by caller
//! (for a caller's exit), by provider (for a provider's exit) and by the caller's `call_id`
//! (to refuse duplicates), so that a session's end finds its calls without a scan.

use ahash::{AHashMap, RandomState};
use hashbrown::HashTable;

use crate::genslab::{GenSlab, SlabKey};
use crate::ids::{slab_key, LinkKey, LinkRef, SessionKey, SessionRef, Time};
use crate::mesh::choice::Attempt;
use crate::wheel::TimerKey;
use crate::wire::{CallIdRef, MAX_CALL_ID_LEN};

/// Who made a call: a session of this shard, or a peer gateway over one of this shard's
/// links (the call's `call_id` is then the link-scoped one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    Session(SessionKey),
    Link(LinkKey),
}

/// Where a call went: a provider session (on any shard), or a peer gateway over a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    Session(SessionRef),
    Link(LinkRef),
}

/// What a call forwarded across the mesh keeps, to try the next peer when one answers that
/// none of its providers took it (PROTOCOL.md 9.8).
#[derive(Debug)]
pub struct Relay {
    pub procedure: Box<[u8]>,
    /// The encoded `args`.
    pub args: Box<[u8]>,
    /// When the caller's deadline passes.
    pub deadline_at: Time,
    pub attempt: Attempt<LinkRef>,
}

slab_key!(
    /// A pending call on the caller's shard.
    CallKey
);

/// Bytes of a `call_id` kept inside the call's entry; longer ids (up to [`MAX_CALL_ID_LEN`])
/// are kept on the heap. 22 bytes hold a UUID or a 20-byte digest, and keep the id 24 bytes
/// long, so that the table's entries, moved and compared on every call, stay small.
const INLINE_ID_LEN: usize = 22;

/// A caller's `call_id`, kept to be echoed in its REPLY.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OwnedCallId {
    Uint(u64),
    Int(i64),
    Bytes(CallIdBytes),
}

/// A `call_id` of bytes, at most [`MAX_CALL_ID_LEN`] of them: inline up to [`INLINE_ID_LEN`],
/// on the heap beyond. One length has one form, and the unused inline bytes are zero, so that
/// the derived comparison and hash are those of the bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CallIdBytes(IdBytes);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum IdBytes {
    Inline { len: u8, bytes: [u8; INLINE_ID_LEN] },
    Heap(Box<[u8]>),
}

impl CallIdBytes {
    /// `None` when `b` is longer than [`MAX_CALL_ID_LEN`].
    fn new(b: &[u8]) -> Option<CallIdBytes> {
        Some(CallIdBytes(match b.len() {
            len @ 0..=INLINE_ID_LEN => {
                let mut bytes = [0; INLINE_ID_LEN];
                bytes[..len].copy_from_slice(b);
                IdBytes::Inline {
                    len: len as u8,
                    bytes,
                }
            }
            ..=MAX_CALL_ID_LEN => IdBytes::Heap(b.into()),
            _ => return None,
        }))
    }

    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            IdBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IdBytes::Heap(b) => b,
        }
    }
}

impl OwnedCallId {
    /// `None` when the id is longer than [`MAX_CALL_ID_LEN`].
    pub fn from_wire(id: CallIdRef<'_>) -> Option<OwnedCallId> {
        Some(match id {
            CallIdRef::Uint(v) => OwnedCallId::Uint(v),
            CallIdRef::Int(v) => OwnedCallId::Int(v),
            CallIdRef::Bytes(b) => OwnedCallId::Bytes(CallIdBytes::new(b)?),
        })
    }

    pub fn as_wire(&self) -> CallIdRef<'_> {
        match self {
            OwnedCallId::Uint(v) => CallIdRef::Uint(*v),
            OwnedCallId::Int(v) => CallIdRef::Int(*v),
            OwnedCallId::Bytes(b) => CallIdRef::Bytes(b.as_slice()),
        }
    }
}

/// One call in flight.
#[derive(Debug)]
pub struct PendingCall {
    pub caller: Caller,
    pub call_id: OwnedCallId,
    pub provider: Provider,
    pub deadline: TimerKey,
    /// Calls from a session that went to a peer gateway.
    pub relay: Option<Box<Relay>>,
    /// The call's hash in the table's index of ids, kept so that neither a removal nor the
    /// index's growth hashes the id again.
    id_hash: u64,
    by_caller: Links,
    by_provider: Links,
}

#[derive(Debug, Default, Clone, Copy)]
struct Links {
    prev: Option<CallKey>,
    next: Option<CallKey>,
}

/// A call checked against those in flight ([`PendingCalls::check`]), to be made pending
/// ([`PendingCalls::insert`]): its caller had no call in flight with its id.
#[derive(Debug)]
pub struct NewCall {
    caller: Caller,
    call_id: OwnedCallId,
    /// Its hash in the table's index of ids, computed once by the check.
    id_hash: u64,
}

impl NewCall {
    pub fn call_id(&self) -> &OwnedCallId {
        &self.call_id
    }
}

/// Why a call could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The caller has a call with this id in flight.
    Duplicate,
}

#[derive(Default)]
pub struct PendingCalls {
    calls: GenSlab<CallKey, PendingCall>,
    /// Every call by its caller and `call_id`. The table holds only the calls' keys, hashed by
    /// `id_hash()` and compared through their entries in `calls`: no id is copied into it, and
    /// each call keeps its hash, for its removal and the table's growth.
    by_id: HashTable<CallKey>,
    caller_heads: AHashMap<Caller, CallKey>,
    provider_heads: AHashMap<Provider, CallKey>,
    hasher: RandomState,
}

impl PendingCalls {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The key the next [`Self::insert`] returns (so that the deadline timer, which
    /// names the call, can be made first).
    pub fn vacant_key(&self) -> CallKey {
        self.calls.vacant_key()
    }

    /// The call `caller` has in flight with `call_id`.
    pub fn by_id(&self, caller: Caller, call_id: &OwnedCallId) -> Option<CallKey> {
        let id = call_id.as_wire();
        self.find_id(id_hash(&self.hasher, caller, id), caller, id)
    }

    /// Checks that `caller` has no call in flight with `call_id`: the call, ready for
    /// [`Self::insert`], or why not.
    pub fn check(&self, caller: Caller, call_id: OwnedCallId) -> Result<NewCall, Refused> {
        let id = call_id.as_wire();
        let id_hash = id_hash(&self.hasher, caller, id);
        if self.find_id(id_hash, caller, id).is_some() {
            return Err(Refused::Duplicate);
        }
        Ok(NewCall {
            caller,
            call_id,
            id_hash,
        })
    }

    /// Makes a checked call pending: its key is [`Self::vacant_key`]'s. `new_call` comes from
    /// this table's [`Self::check`], with no insert since: the check is what keeps each id in
    /// flight once, and the hash it carries is this table's.
    pub fn insert(&mut self, new_call: NewCall, provider: Provider, deadline: TimerKey) -> CallKey {
        let NewCall {
            caller,
            call_id,
            id_hash,
        } = new_call;
        debug_assert!(
            self.find_id(id_hash, caller, call_id.as_wire()).is_none(),
            "a call id checked is still free"
        );
        let key = self.calls.vacant_key();
        let calls = &self.calls;
        self.by_id
            .insert_unique(id_hash, key, |&k| calls.get(k).map_or(0, |c| c.id_hash));
        let caller_next = self.caller_heads.insert(caller, key);
        let provider_next = self.provider_heads.insert(provider, key);
        let inserted = self.calls.insert(PendingCall {
            caller,
            call_id,
            provider,
            deadline,
            relay: None,
            id_hash,
            by_caller: Links {
                prev: None,
                next: caller_next,
            },
            by_provider: Links {
                prev: None,
                next: provider_next,
            },
        });
        debug_assert_eq!(inserted, key, "vacant_key predicts the insert");
        if let Some(next) = caller_next.and_then(|n| self.calls.get_mut(n)) {
            next.by_caller.prev = Some(key);
        }
        if let Some(next) = provider_next.and_then(|n| self.calls.get_mut(n)) {
            next.by_provider.prev = Some(key);
        }
        key
    }

    pub fn get(&self, key: CallKey) -> Option<&PendingCall> {
        self.calls.get(key)
    }

    /// Sets what a call forwarded across the mesh keeps. (The rest of a call changes only
    /// through this table, which indexes it by its caller, id and provider.)
    pub fn set_relay(&mut self, key: CallKey, relay: Box<Relay>) {
        if let Some(call) = self.calls.get_mut(key) {
            call.relay = Some(relay);
        }
    }

    /// Takes what a call forwarded across the mesh keeps, to be set again.
    pub fn take_relay(&mut self, key: CallKey) -> Option<Box<Relay>> {
        self.calls.get_mut(key)?.relay.take()
    }

    /// The call now goes to `provider` (a forwarded call tried on the next peer).
    pub fn set_provider(&mut self, key: CallKey, provider: Provider) {
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let (old, links) = (call.provider, call.by_provider);
        unlink(&mut self.calls, &mut self.provider_heads, old, links, |c| {
            &mut c.by_provider
        });
        let next = self.provider_heads.insert(provider, key);
        if let Some(call) = self.calls.get_mut(key) {
            call.provider = provider;
            call.by_provider = Links { prev: None, next };
        }
        if let Some(n) = next.and_then(|n| self.calls.get_mut(n)) {
            n.by_provider.prev = Some(key);
        }
    }

    /// The call of slot `index` and generation `generation`, as named by a call token.
    pub fn find(&self, index: u32, generation: u32) -> Option<CallKey> {
        let key = CallKey::new(index, generation);
        self.calls.contains(key).then_some(key)
    }

    pub fn remove(&mut self, key: CallKey) -> Option<PendingCall> {
        let call = self.calls.remove(key)?;
        if let Ok(entry) = self.by_id.find_entry(call.id_hash, |&k| k == key) {
            entry.remove();
        }
        unlink(
            &mut self.calls,
            &mut self.caller_heads,
            call.caller,
            call.by_caller,
            |c| &mut c.by_caller,
        );
        unlink(
            &mut self.calls,
            &mut self.provider_heads,
            call.provider,
            call.by_provider,
            |c| &mut c.by_provider,
        );
        Some(call)
    }

    /// Appends the keys of every call made by `caller` to `out`.
    pub fn of_caller(&self, caller: Caller, out: &mut Vec<CallKey>) {
        let mut at = self.caller_heads.get(&caller).copied();
        while let Some(key) = at {
            out.push(key);
            at = self.calls.get(key).and_then(|c| c.by_caller.next);
        }
    }

    /// Appends the keys of every call sent to `provider` to `out`.
    pub fn of_provider(&self, provider: Provider, out: &mut Vec<CallKey>) {
        let mut at = self.provider_heads.get(&provider).copied();
        while let Some(key) = at {
            out.push(key);
            at = self.calls.get(key).and_then(|c| c.by_provider.next);
        }
    }

    /// Sizes of the internal indexes (calls, ids, callers, providers), for leak checks.
    pub fn index_sizes(&self) -> [usize; 4] {
        [
            self.calls.len(),
            self.by_id.len(),
            self.caller_heads.len(),
            self.provider_heads.len(),
        ]
    }

    /// The call of `caller` with `id`, whose hash is `hash`.
    fn find_id(&self, hash: u64, caller: Caller, id: CallIdRef<'_>) -> Option<CallKey> {
        let calls = &self.calls;
        self.by_id
            .find(hash, |&k| is_call(calls, k, caller, id))
            .copied()
    }
}

/// The hash of a call in the index of ids.
fn id_hash(hasher: &RandomState, caller: Caller, id: CallIdRef<'_>) -> u64 {
    hasher.hash_one((caller, id))
}

/// Whether the call of `key` is `caller`'s call `id`.
fn is_call(
    calls: &GenSlab<CallKey, PendingCall>,
    key: CallKey,
    caller: Caller,
    id: CallIdRef<'_>,
) -> bool {
    calls
        .get(key)
        .is_some_and(|c| c.caller == caller && c.call_id.as_wire() == id)
}

/// Removes a call from one of its lists, given the links it had.
fn unlink<H: std::hash::Hash + Eq>(
    calls: &mut GenSlab<CallKey, PendingCall>,
    heads: &mut AHashMap<H, CallKey>,
    head_of: H,
    links: Links,
    field: fn(&mut PendingCall) -> &mut Links,
) {
    match links.prev.and_then(|p| calls.get_mut(p)) {
        Some(prev) => field(prev).next = links.next,
        None => match links.next {
            Some(next) => {
                heads.insert(head_of, next);
            }
            None => {
                heads.remove(&head_of);
            }
        },
    }
    if let Some(next) = links.next.and_then(|n| calls.get_mut(n)) {
        field(next).prev = links.prev;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ShardId;

    fn session(i: u32) -> Caller {
        Caller::Session(SessionKey::new(i, 0))
    }

    fn provider(i: u32) -> Provider {
        Provider::Session(SessionRef {
            shard: ShardId(1),
            key: SessionKey::new(i, 0),
        })
    }

    fn timer() -> TimerKey {
        TimerKey::new(0, 0)
    }

    /// Makes `caller`'s call `id` to `provider` pending, or says why not.
    fn add(
        p: &mut PendingCalls,
        caller: Caller,
        id: OwnedCallId,
        provider: Provider,
    ) -> Result<CallKey, Refused> {
        let call = p.check(caller, id)?;
        Ok(p.insert(call, provider, timer()))
    }

    #[test]
    fn a_callers_calls_are_found_by_caller_and_by_provider_until_removed() {
        let mut p = PendingCalls::new();
        let a = add(&mut p, session(1), OwnedCallId::Uint(1), provider(7)).unwrap();
        let b = add(&mut p, session(1), OwnedCallId::Uint(2), provider(8)).unwrap();
        let c = add(&mut p, session(2), OwnedCallId::Uint(1), provider(7)).unwrap();
        let mut out = Vec::new();
        p.of_caller(session(1), &mut out);
        out.sort();
        assert_eq!(out, {
            let mut v = vec![a, b];
            v.sort();
            v
        });
        out.clear();
        p.of_provider(provider(7), &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.contains(&a) && out.contains(&c));
        p.remove(a);
        out.clear();
        p.of_provider(provider(7), &mut out);
        assert_eq!(out, vec![c]);
        p.remove(b);
        p.remove(c);
        assert_eq!(p.index_sizes(), [0; 4]);
    }

    #[test]
    fn a_call_id_in_flight_is_refused_as_duplicate_until_it_completes() {
        let mut p = PendingCalls::new();
        let a = add(&mut p, session(1), OwnedCallId::Uint(1), provider(7)).unwrap();
        assert_eq!(
            add(&mut p, session(1), OwnedCallId::Uint(1), provider(8)),
            Err(Refused::Duplicate)
        );
        assert!(add(&mut p, session(2), OwnedCallId::Uint(1), provider(8)).is_ok());
        p.remove(a);
        assert!(add(&mut p, session(1), OwnedCallId::Uint(1), provider(8)).is_ok());
    }

    /// The id index holds keys only, and grows with the hashes the calls keep: every id stays
    /// found, whatever its form, across growth and removals.
    #[test]
    fn every_call_stays_found_by_its_id_as_the_index_grows_and_shrinks() {
        let id = |i: u64| match i % 4 {
            0 => OwnedCallId::Uint(i),
            1 => OwnedCallId::Int(-(i as i64)),
            2 => OwnedCallId::from_wire(CallIdRef::Bytes(&i.to_be_bytes())).unwrap(),
            // Longer than an entry holds inline.
            _ => OwnedCallId::from_wire(CallIdRef::Bytes(&[i.to_be_bytes(); 5].concat())).unwrap(),
        };
        let caller = |i: u64| session(i as u32 % 3);
        let mut p = PendingCalls::new();
        let keys: Vec<CallKey> = (0..3_000u64)
            .map(|i| add(&mut p, caller(i), id(i), provider(1)).unwrap())
            .collect();
        for (i, &key) in keys.iter().enumerate() {
            let i = i as u64;
            assert_eq!(p.by_id(caller(i), &id(i)), Some(key));
            assert_eq!(
                add(&mut p, caller(i), id(i), provider(2)),
                Err(Refused::Duplicate)
            );
            // The same id from another caller is another call.
            assert_eq!(p.by_id(caller(i + 1), &id(i)), None);
        }
        for (i, &key) in keys.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            let call = p.remove(key).unwrap();
            assert_eq!(call.call_id, id(i as u64));
        }
        for (i, &key) in keys.iter().enumerate() {
            let i = i as u64;
            let expected = (i % 2 == 1).then_some(key);
            assert_eq!(p.by_id(caller(i), &id(i)), expected);
        }
        for &key in keys.iter().skip(1).step_by(2) {
            p.remove(key);
        }
        assert_eq!(p.index_sizes(), [0; 4]);
    }

    #[test]
    fn a_byte_id_is_kept_whole_inline_or_on_the_heap_and_a_too_long_one_is_refused() {
        for len in [0, 1, INLINE_ID_LEN, INLINE_ID_LEN + 1, MAX_CALL_ID_LEN] {
            let bytes: Vec<u8> = (1..=len as u8).collect();
            let id = OwnedCallId::from_wire(CallIdRef::Bytes(&bytes)).unwrap();
            assert_eq!(id.as_wire(), CallIdRef::Bytes(&bytes), "{len} bytes");
            let inline = matches!(id, OwnedCallId::Bytes(CallIdBytes(IdBytes::Inline { .. })));
            assert_eq!(inline, len <= INLINE_ID_LEN, "{len} bytes");
        }
        let too_long = [7u8; MAX_CALL_ID_LEN + 1];
        assert_eq!(OwnedCallId::from_wire(CallIdRef::Bytes(&too_long)), None);
        // An id is equal to itself only: a shorter prefix, or the same bytes with a trailing
        // zero, is another id.
        let a = OwnedCallId::from_wire(CallIdRef::Bytes(b"ab")).unwrap();
        let b = OwnedCallId::from_wire(CallIdRef::Bytes(b"ab\0")).unwrap();
        assert_ne!(a, b);
        assert_eq!(std::mem::size_of::<OwnedCallId>(), 24);
    }

    #[test]
    fn a_call_moved_to_another_provider_is_found_under_it_only() {
        let mut p = PendingCalls::new();
        let a = add(&mut p, session(1), OwnedCallId::Uint(1), provider(7)).unwrap();
        let b = add(&mut p, session(1), OwnedCallId::Uint(2), provider(7)).unwrap();
        p.set_provider(a, provider(8));
        let mut out = Vec::new();
        p.of_provider(provider(7), &mut out);
        assert_eq!(out, vec![b]);
        out.clear();
        p.of_provider(provider(8), &mut out);
        assert_eq!(out, vec![a]);
        p.remove(a);
        p.remove(b);
        assert_eq!(p.index_sizes(), [0; 4]);
    }

    #[test]
    fn removing_from_the_middle_of_a_list_keeps_the_rest_reachable() {
        let mut p = PendingCalls::new();
        let keys: Vec<CallKey> = (0..5)
            .map(|i| {
                add(
                    &mut p,
                    session(1),
                    OwnedCallId::Uint(i),
                    provider(i as u32 % 2),
                )
                .unwrap()
            })
            .collect();
        p.remove(keys[2]);
        p.remove(keys[4]);
        let mut out = Vec::new();
        p.of_caller(session(1), &mut out);
        out.sort();
        assert_eq!(out, vec![keys[0], keys[1], keys[3]]);
        out.clear();
        p.of_provider(provider(0), &mut out);
        assert_eq!(out, vec![keys[0]]);
    }
}
