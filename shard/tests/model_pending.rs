//! `PendingCalls` checked against a simple model: random sequences of calls made, completed,
//! moved to another provider, and ended with their caller or their provider, then every
//! observable answer compared with a map of the calls in flight.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use meshgate_shard::ids::ShardId;
use meshgate_shard::pending::{CallKey, Caller, OwnedCallId, PendingCalls, Provider, Refused};
use meshgate_shard::wheel::TimerKey;
use meshgate_shard::wire::CallIdRef;
use meshgate_shard::{SessionKey, SessionRef};
use proptest::prelude::*;

const CALLERS: u8 = 4;
const PROVIDERS: u8 = 3;
/// Ids of every form a call may have: integers, negative integers, and bytes kept inline (the
/// shortest and the longest) or on the heap; and byte ids that differ only by a trailing zero or
/// by their length, where the form changes.
const IDS: u8 = 12;

fn call_id(i: u8) -> OwnedCallId {
    let bytes = |b: &[u8]| OwnedCallId::from_wire(CallIdRef::Bytes(b)).unwrap();
    match i {
        0 | 1 => OwnedCallId::Uint(u64::from(i)),
        2 => OwnedCallId::Int(-2),
        3 => bytes(&[3]),
        4 => bytes(&[4; 22]),
        5 => bytes(&[5; 23]),
        6 => bytes(&[6; 64]),
        7 => bytes(&[]),
        8 => bytes(&[0]),
        9 => bytes(&[0, 0]),
        10 => bytes(&[0; 22]),
        _ => bytes(&[0; 23]),
    }
}

fn caller(c: u8) -> Caller {
    Caller::Session(SessionKey::from_u64(u64::from(c)))
}

fn provider(p: u8) -> Provider {
    Provider::Session(SessionRef {
        shard: ShardId(0),
        key: SessionKey::from_u64(100 + u64::from(p)),
    })
}

#[derive(Clone, Debug)]
enum Op {
    Call {
        caller: u8,
        id: u8,
        provider: u8,
    },
    /// Completes the n-th call in flight (modulo their number).
    Complete(usize),
    /// Sends the n-th call in flight to another provider.
    Move(usize, u8),
    CallerGone(u8),
    ProviderGone(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..CALLERS, 0..IDS, 0..PROVIDERS)
            .prop_map(|(caller, id, provider)| Op::Call { caller, id, provider }),
        3 => any::<usize>().prop_map(Op::Complete),
        1 => (any::<usize>(), 0..PROVIDERS).prop_map(|(n, p)| Op::Move(n, p)),
        1 => (0..CALLERS).prop_map(Op::CallerGone),
        1 => (0..PROVIDERS).prop_map(Op::ProviderGone),
    ]
}

/// The calls in flight: (caller, id) to (key, provider).
type Model = BTreeMap<(u8, u8), (CallKey, u8)>;

/// Removes the calls of `keys` (as a caller's or provider's end does), checks that they are
/// exactly the model's calls that `matches`, and adds their keys to `dead`.
fn end_calls(
    pending: &mut PendingCalls,
    model: &mut Model,
    keys: Vec<CallKey>,
    matches: impl Fn(u8, u8) -> bool,
    dead: &mut Vec<CallKey>,
) -> Result<(), TestCaseError> {
    let found: BTreeSet<CallKey> = keys.iter().copied().collect();
    prop_assert_eq!(found.len(), keys.len(), "a call listed twice");
    let expected: BTreeSet<CallKey> = model
        .iter()
        .filter(|(&(c, _), &(_, p))| matches(c, p))
        .map(|(_, &(key, _))| key)
        .collect();
    prop_assert_eq!(&found, &expected);
    for key in keys {
        prop_assert!(pending.remove(key).is_some());
        dead.push(key);
    }
    model.retain(|&(c, _), &mut (_, p)| !matches(c, p));
    Ok(())
}

/// Every answer the table gives about its calls, against the model's; `dead` are the keys of
/// calls that ended, which find nothing, even once their slots hold new calls.
fn check(pending: &PendingCalls, model: &Model, dead: &[CallKey]) -> Result<(), TestCaseError> {
    for &key in dead {
        prop_assert!(pending.get(key).is_none());
    }
    for c in 0..CALLERS {
        for i in 0..IDS {
            let expected = model.get(&(c, i)).map(|&(key, _)| key);
            prop_assert_eq!(pending.by_id(caller(c), &call_id(i)), expected);
            prop_assert_eq!(
                pending.check(caller(c), call_id(i)).is_err(),
                expected.is_some()
            );
        }
    }
    for (&(c, i), &(key, p)) in model {
        let call = pending
            .get(key)
            .expect("a call in flight is found by its key");
        prop_assert_eq!(call.caller, caller(c));
        prop_assert_eq!(&call.call_id, &call_id(i));
        prop_assert_eq!(call.provider, provider(p));
    }
    let callers: BTreeSet<u8> = model.keys().map(|&(c, _)| c).collect();
    let providers: BTreeSet<u8> = model.values().map(|&(_, p)| p).collect();
    prop_assert_eq!(
        pending.index_sizes(),
        [model.len(), model.len(), callers.len(), providers.len()]
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn pending_calls_match_a_map_of_the_calls_in_flight(
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let mut pending = PendingCalls::new();
        let mut model = Model::new();
        let mut dead = Vec::new();
        for op in ops {
            match op {
                Op::Call { caller: c, id, provider: p } => {
                    let checked = pending.check(caller(c), call_id(id));
                    match model.entry((c, id)) {
                        Entry::Occupied(_) => {
                            prop_assert_eq!(checked.err(), Some(Refused::Duplicate));
                        }
                        Entry::Vacant(slot) => {
                            let call = checked.expect("an id not in flight is free");
                            let predicted = pending.vacant_key();
                            let key = pending.insert(call, provider(p), TimerKey::from_u64(0));
                            prop_assert_eq!(key, predicted);
                            slot.insert((key, p));
                        }
                    }
                }
                Op::Complete(n) if !model.is_empty() => {
                    let (&(c, id), &(key, p)) = model.iter().nth(n % model.len()).unwrap();
                    let call = pending.remove(key).expect("a call in flight");
                    prop_assert_eq!(call.caller, caller(c));
                    prop_assert_eq!(&call.call_id, &call_id(id));
                    prop_assert_eq!(call.provider, provider(p));
                    model.remove(&(c, id));
                    prop_assert!(pending.remove(key).is_none());
                    dead.push(key);
                }
                Op::Move(n, p) if !model.is_empty() => {
                    let len = model.len();
                    let entry = model.values_mut().nth(n % len).unwrap();
                    pending.set_provider(entry.0, provider(p));
                    entry.1 = p;
                }
                Op::Complete(_) | Op::Move(..) => {}
                Op::CallerGone(c) => {
                    let mut keys = Vec::new();
                    pending.of_caller(caller(c), &mut keys);
                    end_calls(&mut pending, &mut model, keys, |mc, _| mc == c, &mut dead)?;
                }
                Op::ProviderGone(p) => {
                    let mut keys = Vec::new();
                    pending.of_provider(provider(p), &mut keys);
                    end_calls(&mut pending, &mut model, keys, |_, mp| mp == p, &mut dead)?;
                }
            }
            check(&pending, &model, &dead)?;
        }
    }
}
