//! Criterion micro-benchmarks of the subscription index and the procedure registry.
//!
//! `cargo bench --bench subs -- --warm-up-time 1 --measurement-time 3`
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use meshgate_shard::registry::Registry;
use meshgate_shard::subs::SubscriptionIndex;
use meshgate_shard::{RealmId, SessionKey, SessionRef, ShardId, Time};

const REALM: RealmId = RealmId(0);

/// 10,000 subscriptions, one per session: 9,000 exact topics `sensor.<i>.room<j>`, 800
/// `sensor.<i>.*`, 150 `sensor.<i>.**`, 40 `*.<i>.room1` and 10 `**.room<j>`.
fn patterns() -> Vec<String> {
    let mut patterns = Vec::with_capacity(10_000);
    for i in 0..1000 {
        for j in 0..9 {
            patterns.push(format!("sensor.{i}.room{j}"));
        }
    }
    patterns.extend((0..800).map(|i| format!("sensor.{i}.*")));
    patterns.extend((0..150).map(|i| format!("sensor.{i}.**")));
    patterns.extend((0..40).map(|i| format!("*.{i}.room1")));
    patterns.extend((0..10).map(|j| format!("**.room{j}")));
    patterns
}

fn session_key(n: usize) -> SessionKey {
    SessionKey::from_u64(n as u64)
}

/// Published topics, each matched by a handful of the subscriptions above.
fn topics(count: usize) -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..count)
        .map(|_| format!("sensor.{}.room{}", rng.usize(0..1000), rng.usize(0..9)).into_bytes())
        .collect()
}

fn match_topic(c: &mut Criterion) {
    let mut index = SubscriptionIndex::new();
    for (n, pattern) in patterns().iter().enumerate() {
        index.insert(REALM, pattern.as_bytes(), session_key(n));
    }
    let topics = topics(1024);
    let mut out = Vec::with_capacity(64);
    let mut next = 0;
    c.bench_function("match_topic_10k_subscriptions", |b| {
        b.iter(|| {
            out.clear();
            index.matches(REALM, black_box(&topics[next % topics.len()]), &mut out);
            next += 1;
            black_box(out.len())
        })
    });
}

fn subscribe_unsubscribe(c: &mut Criterion) {
    let mut index = SubscriptionIndex::new();
    let patterns = patterns();
    for (n, pattern) in patterns.iter().enumerate() {
        index.insert(REALM, pattern.as_bytes(), session_key(n));
    }
    // A pattern of its own, so that every round creates and prunes its nodes.
    let extra = session_key(patterns.len());
    c.bench_function("subscribe_unsubscribe", |b| {
        b.iter(|| {
            index.insert(REALM, black_box(b"sensor.new.room.*"), extra);
            index.remove(REALM, black_box(b"sensor.new.room.*"), extra)
        })
    });
}

fn registry_pick(c: &mut Criterion) {
    let mut registry = Registry::new();
    let procedures: Vec<Vec<u8>> = (0..1000)
        .map(|p| format!("svc.procedure{p}").into_bytes())
        .collect();
    for (p, procedure) in procedures.iter().enumerate() {
        for n in 0..4 {
            let provider = SessionRef {
                shard: ShardId(n),
                key: session_key(p),
            };
            registry.register(REALM, procedure, provider, Some(Time::from_millis(300_000)));
        }
    }
    let mut next = 0;
    c.bench_function("registry_pick", |b| {
        b.iter(|| {
            next += 1;
            registry.pick(REALM, black_box(&procedures[next % procedures.len()]))
        })
    });
}

criterion_group!(benches, match_topic, subscribe_unsubscribe, registry_pick);
criterion_main!(benches);
