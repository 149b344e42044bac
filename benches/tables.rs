//! Criterion micro-benchmarks of the shard's tables: the call wheel, the client table, the
//! peer LRU and the pending calls, each measured at a realistic size.
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use meshgate_shard::clients::{Admission, ClientTable};
use meshgate_shard::lru::{Displaced, PeerLru};
use meshgate_shard::pending::{Caller, OwnedCallId, PendingCalls, Provider};
use meshgate_shard::wheel::{CallWheel, TimerKey};
use meshgate_shard::{NodeId, RealmId, SessionKey, SessionRef, ShardId, Time};

/// Pseudo-random delays, precomputed so that the generator stays out of the measurement.
fn delays(count: usize, max_ms: u64) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(42);
    (0..count).map(|_| rng.u64(1..=max_ms)).collect()
}

/// One insert and one cancel in a wheel holding a million timers spread over ten minutes.
fn wheel_insert_cancel(c: &mut Criterion) {
    const LIVE: usize = 1_000_000;
    let now = Time::from_millis(1_000_000);
    let mut wheel = CallWheel::with_capacity(now, LIVE + 1);
    for (i, delay) in delays(LIVE, 600_000).into_iter().enumerate() {
        wheel.insert(Time::from_millis(now.as_millis() + delay), i as u64);
    }
    let deadlines: Vec<Time> = delays(4_096, 600_000)
        .into_iter()
        .map(|delay| Time::from_millis(now.as_millis() + delay))
        .collect();
    let mut i = 0;
    c.bench_function("wheel_insert_cancel_1M_live", |b| {
        b.iter(|| {
            i = (i + 1) % deadlines.len();
            let key = wheel.insert(black_box(deadlines[i]), 7u64);
            black_box(wheel.cancel(key));
        })
    });
    assert_eq!(wheel.len(), LIVE);
}

/// Steady state of a wheel holding about ten thousand timers of up to 20 s: each iteration
/// inserts one timer, moves the clock 2 ms and fires what came due (cascades included).
fn wheel_insert_poll(c: &mut Criterion) {
    let mut now = 0u64;
    let mut wheel = CallWheel::with_capacity(Time::ZERO, 20_000);
    let delays = delays(4_096, 20_000);
    let mut i = 0;
    let mut step = |wheel: &mut CallWheel<u64>| {
        i = (i + 1) % delays.len();
        wheel.insert(Time::from_millis(now + delays[i]), now);
        now += 2;
        while let Some(fired) = wheel.poll_expired(Time::from_millis(now)) {
            black_box(fired);
        }
    };
    for _ in 0..40_000 {
        step(&mut wheel);
    }
    c.bench_function("wheel_insert_poll", |b| b.iter(|| step(&mut wheel)));
}

/// One admit and one remove in a client table holding ten thousand nodes.
fn client_table_admit_remove(c: &mut Criterion) {
    const LIVE: usize = 10_000;
    let node = |n: u64| {
        let mut id = [0x5a; 32];
        id[..8].copy_from_slice(&n.to_le_bytes());
        NodeId(id)
    };
    let session = |n: u64| SessionRef {
        shard: ShardId(0),
        key: SessionKey::from_u64(n),
    };
    let mut table = ClientTable::new(2 * LIVE);
    for n in 0..LIVE as u64 {
        table
            .admit(RealmId(0), node(n), session(n))
            .expect("below capacity");
    }
    let newcomer = node(u64::MAX);
    c.bench_function("client_table_admit_remove", |b| {
        b.iter(|| {
            let admission = table.admit(RealmId(0), black_box(newcomer), session(1));
            if let Ok(Admission::Admitted(key)) = admission {
                black_box(table.remove(key));
            }
        })
    });
    assert_eq!(table.len(), LIVE);
}

/// One insert into a full LRU of ten thousand peers, evicting the least recently used.
fn lru_insert_evict(c: &mut Criterion) {
    const CAPACITY: usize = 10_000;
    let mut lru = PeerLru::new(CAPACITY);
    let mut next = 0u64;
    for _ in 0..CAPACITY {
        lru.insert(next, next);
        next += 1;
    }
    c.bench_function("lru_insert_evict", |b| {
        b.iter(|| {
            let displaced = lru.insert(black_box(next), next);
            debug_assert!(matches!(displaced, Displaced::Evicted(..)));
            black_box(displaced);
            next += 1;
        })
    });
    assert_eq!(lru.len(), CAPACITY);
}

/// A call's life in the shape of `bench rpc`: 4 callers with 16 calls each in flight, 2
/// providers, ten thousand other calls pending. Each iteration makes a call pending, as a
/// CALL does (duplicate check, insert), and ends the oldest, as its REPLY does (found by its
/// token, removed).
fn pending_call_insert_complete(c: &mut Criterion) {
    let caller = |n: u64| Caller::Session(SessionKey::from_u64(n % 4));
    let provider = |n: u64| {
        Provider::Session(SessionRef {
            shard: ShardId(0),
            key: SessionKey::from_u64(100 + n % 2),
        })
    };
    let mut pending = PendingCalls::new();
    for n in 0..10_000u64 {
        let other = Caller::Session(SessionKey::from_u64(1_000 + n));
        let checked = pending
            .check(other, OwnedCallId::Uint(n))
            .expect("a fresh id");
        pending.insert(checked, provider(n), TimerKey::from_u64(0));
    }
    let mut in_flight = std::collections::VecDeque::new();
    let mut next = 0u64;
    let mut call = |pending: &mut PendingCalls, in_flight: &mut std::collections::VecDeque<_>| {
        let (who, id) = (caller(next), OwnedCallId::Uint(next));
        if let Ok(checked) = pending.check(who, id) {
            in_flight.push_back(pending.insert(checked, provider(next), TimerKey::from_u64(0)));
        }
        next += 1;
    };
    for _ in 0..64 {
        call(&mut pending, &mut in_flight);
    }
    c.bench_function("pending_call_insert_complete", |b| {
        b.iter(|| {
            call(&mut pending, &mut in_flight);
            let oldest = in_flight.pop_front().expect("64 in flight");
            let packed = black_box(oldest.to_u64());
            let found = pending
                .find(packed as u32, (packed >> 32) as u32)
                .expect("pending");
            black_box(pending.remove(found));
        })
    });
    assert_eq!(pending.len(), 10_064);
}

criterion_group!(
    benches,
    wheel_insert_cancel,
    wheel_insert_poll,
    client_table_admit_remove,
    lru_insert_evict,
    pending_call_insert_complete
);
criterion_main!(benches);
