//! `SubscriptionIndex` and `Registry` checked against simple models: random sequences of
//! operations, then every observable answer compared with the model's.

use std::collections::BTreeSet;

use meshgate_shard::names::pattern_matches;
use meshgate_shard::registry::{Registered, Registry, Removed};
use meshgate_shard::subs::SubscriptionIndex;
use meshgate_shard::{RealmId, SessionKey, SessionRef, ShardId, Time};
use proptest::prelude::*;

use counting::allocations;

mod counting;

// ---- subscriptions

const REALMS: u16 = 2;
const SUBSCRIBERS: u8 = 6;

fn pattern() -> impl Strategy<Value = Vec<u8>> + Clone {
    let segment = prop::sample::select(vec!["a", "b", "c", "*", "**"]);
    prop::collection::vec(segment, 1..=4).prop_map(|s| s.join(".").into_bytes())
}

fn topic() -> impl Strategy<Value = Vec<u8>> {
    let segment = prop::sample::select(vec!["a", "b", "c", "d"]);
    prop::collection::vec(segment, 1..=6).prop_map(|s| s.join(".").into_bytes())
}

#[derive(Clone, Debug)]
enum SubOp {
    Subscribe {
        realm: u16,
        pattern: Vec<u8>,
        who: u8,
    },
    Unsubscribe {
        realm: u16,
        pattern: Vec<u8>,
        who: u8,
    },
}

fn sub_op() -> impl Strategy<Value = SubOp> {
    let args = (0..REALMS, pattern(), 0..SUBSCRIBERS);
    prop_oneof![
        3 => args.clone().prop_map(|(realm, pattern, who)| SubOp::Subscribe { realm, pattern, who }),
        2 => args.prop_map(|(realm, pattern, who)| SubOp::Unsubscribe { realm, pattern, who }),
    ]
}

/// (realm, pattern, subscriber) triples.
type SubModel = BTreeSet<(u16, Vec<u8>, u8)>;

fn model_matches(model: &SubModel, realm: u16, topic: &[u8]) -> Vec<u8> {
    let who: BTreeSet<u8> = model
        .iter()
        .filter(|(r, p, _)| *r == realm && pattern_matches(p, topic))
        .map(|&(_, _, who)| who)
        .collect();
    who.into_iter().collect()
}

fn apply_sub(index: &mut SubscriptionIndex<u8>, model: &mut SubModel, op: &SubOp) {
    match op {
        SubOp::Subscribe {
            realm,
            pattern,
            who,
        } => {
            let added = model.insert((*realm, pattern.clone(), *who));
            assert_eq!(
                index.insert(RealmId(*realm), pattern, *who),
                added,
                "{op:?}"
            );
        }
        SubOp::Unsubscribe {
            realm,
            pattern,
            who,
        } => {
            let removed = model.remove(&(*realm, pattern.clone(), *who));
            assert_eq!(
                index.remove(RealmId(*realm), pattern, *who),
                removed,
                "{op:?}"
            );
        }
    }
}

fn check_sub_counts(index: &SubscriptionIndex<u8>, model: &SubModel) {
    assert_eq!(index.len(), model.len());
    for (realm, pattern, _) in model {
        let expected = model
            .iter()
            .filter(|(r, p, _)| r == realm && p == pattern)
            .count();
        assert_eq!(index.subscribers_of(RealmId(*realm), pattern), expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matches_agrees_with_the_reference_matcher(
        ops in prop::collection::vec(sub_op(), 0..60),
        topics in prop::collection::vec((0..REALMS, topic()), 1..20),
    ) {
        let mut index = SubscriptionIndex::new();
        let mut model = SubModel::new();
        for op in &ops {
            apply_sub(&mut index, &mut model, op);
        }
        check_sub_counts(&index, &model);
        let mut out = Vec::new();
        for (realm, topic) in &topics {
            out.clear();
            index.matches(RealmId(*realm), topic, &mut out);
            let mut got = out.clone();
            got.sort_unstable();
            got.dedup();
            prop_assert_eq!(got.len(), out.len(), "a subscriber came twice: {:?}", out);
            prop_assert_eq!(got, model_matches(&model, *realm, topic), "topic {:?}",
                String::from_utf8_lossy(topic));
        }
    }

    #[test]
    fn matches_agree_with_the_reference_matcher_after_every_change(
        ops in prop::collection::vec(sub_op(), 0..60),
        topics in prop::collection::vec((0..REALMS, topic()), 1..4),
    ) {
        // A few topics matched again and again between changes: the index's memory of its
        // last match must never outlive a change.
        let mut index = SubscriptionIndex::new();
        let mut model = SubModel::new();
        let mut out = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            apply_sub(&mut index, &mut model, op);
            for (realm, topic) in [&topics[i % topics.len()], &topics[0]] {
                out.clear();
                index.matches(RealmId(*realm), topic, &mut out);
                prop_assert_eq!(&out, &model_matches(&model, *realm, topic), "topic {:?}",
                    String::from_utf8_lossy(topic));
            }
        }
    }

    #[test]
    fn removing_every_subscription_leaves_no_node(
        ops in prop::collection::vec(sub_op(), 0..60),
    ) {
        let mut index = SubscriptionIndex::new();
        let mut model = SubModel::new();
        for op in &ops {
            apply_sub(&mut index, &mut model, op);
        }
        for (realm, pattern, who) in std::mem::take(&mut model) {
            prop_assert!(index.remove(RealmId(realm), &pattern, who));
        }
        prop_assert_eq!(index.len(), 0);
        prop_assert_eq!(index.node_count(), 0);
        let mut out = Vec::new();
        index.matches(RealmId(0), b"a", &mut out);
        prop_assert!(out.is_empty());
    }
}

#[test]
fn matching_allocates_nothing_once_warm() {
    let realm = RealmId(0);
    let mut index = SubscriptionIndex::new();
    for i in 0..100u32 {
        index.insert(realm, format!("sensor.{i}.room1").as_bytes(), i);
        index.insert(realm, format!("sensor.{i}.*").as_bytes(), i + 1000);
    }
    index.insert(realm, b"sensor.**", 7);
    index.insert(realm, b"**.room1", 8);
    index.insert(realm, b"**", 8);
    let topics: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("sensor.{i}.room1").into_bytes())
        .chain([b"a.b.c.d".to_vec()])
        .collect();
    let mut out = Vec::with_capacity(64);
    for topic in &topics {
        out.clear();
        index.matches(realm, topic, &mut out);
    }
    for topic in &topics {
        out.clear();
        let before = allocations();
        index.matches(realm, topic, &mut out);
        assert_eq!(
            allocations(),
            before,
            "matching {:?} allocated",
            String::from_utf8_lossy(topic)
        );
    }
    out.clear();
    index.matches(realm, b"sensor.42.room1", &mut out);
    assert_eq!(out, [7, 8, 42, 1042]);
}

// ---- registry

const PROVIDERS: u64 = 5;

fn session(n: u64) -> SessionRef {
    SessionRef {
        shard: ShardId((n % 2) as u16),
        key: SessionKey::from_u64(n),
    }
}

#[derive(Clone, Debug)]
enum RegOp {
    Register {
        realm: u16,
        procedure: u8,
        provider: u64,
        expires: Option<u64>,
    },
    Unregister {
        realm: u16,
        procedure: u8,
        provider: u64,
    },
    RemoveProvider {
        provider: u64,
    },
    Prune {
        now: u64,
    },
    Pick {
        realm: u16,
        procedure: u8,
    },
}

fn reg_op() -> impl Strategy<Value = RegOp> {
    let key = (0..REALMS, 0..4u8, 0..PROVIDERS);
    prop_oneof![
        4 => (key.clone(), prop::option::weighted(0.8, 0..100u64)).prop_map(
            |((realm, procedure, provider), expires)| RegOp::Register { realm, procedure, provider, expires },
        ),
        2 => key.prop_map(|(realm, procedure, provider)| RegOp::Unregister { realm, procedure, provider }),
        1 => (0..PROVIDERS).prop_map(|provider| RegOp::RemoveProvider { provider }),
        1 => (0..110u64).prop_map(|now| RegOp::Prune { now }),
        3 => (0..REALMS, 0..4u8).prop_map(|(realm, procedure)| RegOp::Pick { realm, procedure }),
    ]
}

fn name(procedure: u8) -> Vec<u8> {
    format!("svc.p{procedure}").into_bytes()
}

#[derive(Clone, Debug, PartialEq)]
struct RegEntry {
    realm: u16,
    procedure: u8,
    provider: u64,
    expires: Option<u64>,
}

impl RegEntry {
    fn removed(&self) -> Removed {
        Removed {
            realm: RealmId(self.realm),
            procedure: name(self.procedure).into(),
            provider: session(self.provider),
        }
    }
}

/// Sorted, so that two lists of removals compare whatever their order.
fn sorted(mut removed: Vec<Removed>) -> Vec<(u16, Box<[u8]>, SessionRef)> {
    removed.sort_by(|a, b| {
        (a.realm, &a.procedure, a.provider).cmp(&(b.realm, &b.procedure, b.provider))
    });
    removed
        .into_iter()
        .map(|r| (r.realm.0, r.procedure, r.provider))
        .collect()
}

fn apply_reg(registry: &mut Registry, model: &mut Vec<RegEntry>, op: &RegOp) {
    let same = |e: &RegEntry, realm: u16, procedure: u8, provider: u64| {
        e.realm == realm && e.procedure == procedure && e.provider == provider
    };
    match *op {
        RegOp::Register {
            realm,
            procedure,
            provider,
            expires,
        } => {
            let time = expires.map(Time::from_millis);
            let got = registry.register(RealmId(realm), &name(procedure), session(provider), time);
            match model
                .iter_mut()
                .find(|e| same(e, realm, procedure, provider))
            {
                Some(entry) => {
                    entry.expires = expires;
                    assert_eq!(got, Registered::Refreshed, "{op:?}");
                }
                None => {
                    model.push(RegEntry {
                        realm,
                        procedure,
                        provider,
                        expires,
                    });
                    assert_eq!(got, Registered::New, "{op:?}");
                }
            }
        }
        RegOp::Unregister {
            realm,
            procedure,
            provider,
        } => {
            let before = model.len();
            model.retain(|e| !same(e, realm, procedure, provider));
            let got = registry.unregister(RealmId(realm), &name(procedure), session(provider));
            assert_eq!(got, model.len() < before, "{op:?}");
        }
        RegOp::RemoveProvider { provider } => {
            let (gone, kept) = model.drain(..).partition(|e| e.provider == provider);
            *model = kept;
            let gone: Vec<RegEntry> = gone;
            let mut out = Vec::new();
            registry.remove_provider(session(provider), &mut out);
            assert_eq!(
                sorted(out),
                sorted(gone.iter().map(RegEntry::removed).collect()),
                "{op:?}"
            );
        }
        RegOp::Prune { now } => {
            let (gone, kept) = model
                .drain(..)
                .partition(|e| e.expires.is_some_and(|t| t <= now));
            *model = kept;
            let gone: Vec<RegEntry> = gone;
            let mut out = Vec::new();
            registry.prune(Time::from_millis(now), &mut out);
            assert_eq!(
                sorted(out),
                sorted(gone.iter().map(RegEntry::removed).collect()),
                "{op:?}"
            );
        }
        RegOp::Pick { realm, procedure } => {
            let got = registry.pick(RealmId(realm), &name(procedure));
            let providers: Vec<SessionRef> = model
                .iter()
                .filter(|e| e.realm == realm && e.procedure == procedure)
                .map(|e| session(e.provider))
                .collect();
            match got {
                Some(provider) => assert!(providers.contains(&provider), "{op:?}"),
                None => assert!(providers.is_empty(), "{op:?}"),
            }
        }
    }
}

fn check_reg_counts(registry: &Registry, model: &[RegEntry]) {
    assert_eq!(registry.len(), model.len());
    for provider in 0..PROVIDERS {
        let expected = model.iter().filter(|e| e.provider == provider).count();
        assert_eq!(registry.count_of(session(provider)), expected);
    }
    let procedures: BTreeSet<(u16, u8)> = model.iter().map(|e| (e.realm, e.procedure)).collect();
    assert_eq!(registry.procedure_count(), procedures.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn registry_agrees_with_a_list_of_registrations(ops in prop::collection::vec(reg_op(), 0..80)) {
        let mut registry = Registry::new();
        let mut model = Vec::new();
        for op in &ops {
            apply_reg(&mut registry, &mut model, op);
            check_reg_counts(&registry, &model);
        }
        for provider in 0..PROVIDERS {
            registry.remove_provider(session(provider), &mut Vec::new());
        }
        prop_assert!(registry.is_empty());
        prop_assert_eq!(registry.procedure_count(), 0);
    }

    #[test]
    fn pick_gives_every_provider_its_turn(
        n in 1..8u64,
        rounds in 1..5usize,
        skip in 0..8usize,
        removed in 0..8u64,
    ) {
        let realm = RealmId(1);
        let mut registry = Registry::new();
        for p in 0..n {
            registry.register(realm, b"svc", session(p), None);
        }
        // Start anywhere in the rotation.
        for _ in 0..skip {
            registry.pick(realm, b"svc");
        }
        let mut counts = vec![0usize; n as usize];
        for _ in 0..rounds * n as usize {
            let picked = registry.pick(realm, b"svc").unwrap();
            counts[picked.key.to_u64() as usize] += 1;
        }
        prop_assert!(counts.iter().all(|&c| c == rounds), "{:?}", counts);

        // After one provider goes, the rotation goes on where it was, skipping it, and the
        // others still share the picks evenly.
        let removed = removed % n;
        let next = skip as u64 % n;
        let expected = if next != removed { Some(next) } else if n > 1 { Some((next + 1) % n) } else { None };
        registry.unregister(realm, b"svc", session(removed));
        prop_assert_eq!(registry.pick(realm, b"svc").map(|s| s.key.to_u64()), expected);
        let left = n as usize - 1;
        let mut counts = vec![0usize; n as usize];
        counts[expected.unwrap_or(removed) as usize] = usize::from(expected.is_some());
        for _ in 1..rounds * left {
            let picked = registry.pick(realm, b"svc").unwrap();
            counts[picked.key.to_u64() as usize] += 1;
        }
        prop_assert_eq!(counts[removed as usize], 0);
        let others = counts.iter().enumerate().filter(|&(p, _)| p as u64 != removed);
        prop_assert!(others.clone().all(|(_, &c)| c == rounds), "{:?}", counts);
    }
}
