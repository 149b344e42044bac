//! `CallWheel`, `PeerLru` and `ClientTable` checked against simple models: random sequences of
//! operations, then every observable answer compared with the model's.

use std::collections::HashMap;

use meshgate_shard::clients::{Admission, ClientEntry, ClientKey, ClientTable, Refusal};
use meshgate_shard::lru::{Displaced, PeerLru};
use meshgate_shard::wheel::{CallWheel, TimerKey};
use meshgate_shard::{NodeId, RealmId, SessionKey, SessionRef, ShardId, Time};
use proptest::prelude::*;

use counting::allocations;

mod counting;

// ---- call wheel

/// The wheel's span: 6 levels of 64 slots of 1 ms.
const SPAN: u64 = 1 << 36;

/// A distance in ms from the clock: mostly near, sometimes on a level boundary, sometimes beyond
/// the wheel's span or at the end of time.
fn delay() -> impl Strategy<Value = u64> {
    let boundaries: Vec<u64> = (1..=6u32)
        .flat_map(|level| {
            let edge = 1u64 << (6 * level);
            [edge - 1, edge, edge + 1]
        })
        .collect();
    prop_oneof![
        4 => 0..70u64,
        3 => 0..5_000u64,
        2 => 0..400_000u64,
        1 => 0..(4 * SPAN),
        1 => prop::sample::select(boundaries),
        1 => Just(u64::MAX),
    ]
}

/// How far a poll moves the clock: mostly a little, sometimes over a whole span.
fn advance() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..70u64,
        3 => 0..5_000u64,
        1 => 0..(2 * SPAN),
        1 => Just(3 * SPAN + 17),
    ]
}

#[derive(Clone, Debug)]
enum WheelOp {
    /// A timer `delay` ms after the clock.
    Insert(u64),
    /// A timer `back` ms before the clock.
    InsertPast(u64),
    /// Cancel the n-th key ever issued (live or stale).
    Cancel(usize),
    /// Reset the n-th key ever issued to `delay` ms after the clock.
    Reset(usize, u64),
    /// Poll until `None` at `advance` ms after the clock.
    Poll(u64),
    /// Poll until `None` at `back` ms before the clock.
    PollBackwards(u64),
}

fn wheel_op() -> impl Strategy<Value = WheelOp> {
    prop_oneof![
        5 => delay().prop_map(WheelOp::Insert),
        1 => (0..1_000u64).prop_map(WheelOp::InsertPast),
        2 => any::<usize>().prop_map(WheelOp::Cancel),
        2 => (any::<usize>(), delay()).prop_map(|(n, d)| WheelOp::Reset(n, d)),
        4 => advance().prop_map(WheelOp::Poll),
        1 => (0..1_000u64).prop_map(WheelOp::PollBackwards),
    ]
}

/// The model: each pending timer's deadline, and the wheel's clock (the latest poll).
struct WheelModel {
    clock: u64,
    pending: HashMap<TimerKey, (u64, u32)>,
    issued: Vec<TimerKey>,
}

impl WheelModel {
    fn insert(&mut self, wheel: &mut CallWheel<u32>, deadline: u64) -> Result<(), TestCaseError> {
        let id = self.issued.len() as u32;
        let key = wheel.insert(Time::from_millis(deadline), id);
        prop_assert!(!self.issued.contains(&key), "{key:?} was issued before");
        self.pending.insert(key, (deadline, id));
        self.issued.push(key);
        Ok(())
    }

    fn drain(&mut self, wheel: &mut CallWheel<u32>, now: u64) -> Result<(), TestCaseError> {
        self.clock = self.clock.max(now);
        while let Some((key, id)) = wheel.poll_expired(Time::from_millis(now)) {
            let fired = self.pending.remove(&key);
            prop_assert!(fired.is_some(), "{key:?} fired but was not pending");
            let (deadline, model_id) = fired.unwrap_or_default();
            prop_assert_eq!(id, model_id);
            // A poll back in time does not move the clock, and fires what is due by the clock.
            prop_assert!(
                deadline <= self.clock,
                "{key:?} fired at {}, before its deadline {deadline}",
                self.clock
            );
        }
        let overdue = self
            .pending
            .values()
            .filter(|&&(deadline, _)| deadline <= self.clock);
        prop_assert_eq!(
            overdue.count(),
            0,
            "a due timer did not fire at {}",
            self.clock
        );
        if let Some(next) = wheel.next_deadline() {
            prop_assert!(
                next.as_millis() > self.clock,
                "after a drain, the next deadline is ahead"
            );
        }
        Ok(())
    }

    fn check(&self, wheel: &CallWheel<u32>) -> Result<(), TestCaseError> {
        prop_assert_eq!(wheel.len(), self.pending.len());
        prop_assert_eq!(wheel.now(), Time::from_millis(self.clock));
        let earliest = self.pending.values().map(|&(deadline, _)| deadline).min();
        match (wheel.next_deadline(), earliest) {
            (None, None) => {}
            (Some(next), Some(earliest)) => prop_assert!(
                next.as_millis() <= earliest,
                "next deadline {next:?} is after the earliest, {earliest}"
            ),
            (next, earliest) => prop_assert!(false, "next {next:?}, earliest {earliest:?}"),
        }
        for key in &self.issued {
            let expected = self
                .pending
                .get(key)
                .map(|&(deadline, _)| Time::from_millis(deadline));
            prop_assert_eq!(wheel.deadline(*key), expected);
        }
        Ok(())
    }
}

fn run_wheel(start: u64, ops: Vec<WheelOp>) -> Result<(), TestCaseError> {
    let mut wheel = CallWheel::new(Time::from_millis(start));
    let mut model = WheelModel {
        clock: start,
        pending: HashMap::new(),
        issued: Vec::new(),
    };
    for op in ops {
        match op {
            WheelOp::Insert(delay) => {
                model.insert(&mut wheel, model.clock.saturating_add(delay))?;
            }
            WheelOp::InsertPast(back) => {
                model.insert(&mut wheel, model.clock.saturating_sub(back))?;
            }
            WheelOp::Cancel(n) if !model.issued.is_empty() => {
                let key = model.issued[n % model.issued.len()];
                let expected = model.pending.remove(&key).map(|(_, id)| id);
                prop_assert_eq!(wheel.cancel(key), expected);
            }
            WheelOp::Reset(n, delay) if !model.issued.is_empty() => {
                let key = model.issued[n % model.issued.len()];
                let deadline = model.clock.saturating_add(delay);
                let pending = model.pending.get_mut(&key);
                let expected = pending.is_some();
                if let Some(entry) = pending {
                    entry.0 = deadline;
                }
                prop_assert_eq!(wheel.reset(key, Time::from_millis(deadline)), expected);
            }
            WheelOp::Cancel(_) | WheelOp::Reset(..) => {}
            WheelOp::Poll(advance) => {
                model.drain(&mut wheel, model.clock.saturating_add(advance))?
            }
            WheelOp::PollBackwards(back) => {
                model.drain(&mut wheel, model.clock.saturating_sub(back))?;
            }
        }
        model.check(&wheel)?;
    }
    model.drain(&mut wheel, u64::MAX)?;
    prop_assert!(wheel.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn wheel_fires_every_timer_once_never_early_and_never_a_cancelled_one(
        start in prop_oneof![Just(0u64), 0..SPAN * 2, Just(SPAN - 5)],
        ops in prop::collection::vec(wheel_op(), 1..120),
    ) {
        run_wheel(start, ops)?;
    }

    #[test]
    fn a_driver_that_sleeps_until_next_deadline_fires_each_timer_on_time(
        start in 0..SPAN,
        // Not the end of time: a parked timer wakes the driver once per span on its way there.
        delays in prop::collection::vec(delay().prop_filter("near", |&d| d < 8 * SPAN), 1..60),
    ) {
        let mut wheel = CallWheel::new(Time::from_millis(start));
        for (id, delay) in delays.iter().enumerate() {
            wheel.insert(Time::from_millis(start.saturating_add(*delay)), id);
        }
        let mut fired = vec![false; delays.len()];
        let mut wakeups = 0u64;
        while let Some(next) = wheel.next_deadline() {
            wakeups += 1;
            prop_assert!(wakeups < 100_000, "the driver does not make progress");
            while let Some((_, id)) = wheel.poll_expired(next) {
                prop_assert_eq!(start.saturating_add(delays[id]), next.as_millis());
                prop_assert!(!fired[id]);
                fired[id] = true;
            }
        }
        prop_assert!(fired.iter().all(|&f| f));
    }
}

#[test]
fn a_warm_wheel_inserts_resets_cancels_and_fires_without_allocating() {
    let mut wheel = CallWheel::with_capacity(Time::ZERO, 1_024);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut keys: Vec<TimerKey> = Vec::with_capacity(1_024);
    let mut now = 0u64;
    let before = allocations();
    for _ in 0..20_000 {
        match rng.u8(0..4) {
            0 | 1 if keys.len() < 1_024 => {
                keys.push(wheel.insert(Time::from_millis(now + rng.u64(0..1_000_000)), ()))
            }
            2 if !keys.is_empty() => {
                let key = keys.swap_remove(rng.usize(0..keys.len()));
                wheel.cancel(key);
            }
            3 if !keys.is_empty() => {
                let key = keys[rng.usize(0..keys.len())];
                wheel.reset(key, Time::from_millis(now + rng.u64(0..SPAN * 2)));
            }
            _ => {
                now += rng.u64(0..50_000);
                while wheel.poll_expired(Time::from_millis(now)).is_some() {}
            }
        }
    }
    assert_eq!(allocations() - before, 0);
}

// ---- peer LRU

#[derive(Clone, Debug)]
enum LruOp {
    Insert(u8, u32),
    Touch(u8),
    Get(u8),
    Remove(u8),
    PopLru,
}

fn lru_op() -> impl Strategy<Value = LruOp> {
    let key = 0..12u8;
    prop_oneof![
        4 => (key.clone(), any::<u32>()).prop_map(|(k, v)| LruOp::Insert(k, v)),
        2 => key.clone().prop_map(LruOp::Touch),
        1 => key.clone().prop_map(LruOp::Get),
        1 => key.prop_map(LruOp::Remove),
        1 => Just(LruOp::PopLru),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn lru_matches_a_recency_ordered_vec(
        capacity in 1..8usize,
        ops in prop::collection::vec(lru_op(), 1..200),
    ) {
        let mut lru = PeerLru::new(capacity);
        // Least recently used first.
        let mut model: Vec<(u8, u32)> = Vec::new();
        for op in ops {
            match op {
                LruOp::Insert(k, v) => {
                    let expected = match model.iter().position(|&(mk, _)| mk == k) {
                        Some(i) => Displaced::Replaced(model.remove(i).1),
                        None if model.len() == capacity => {
                            let (ek, ev) = model.remove(0);
                            Displaced::Evicted(ek, ev)
                        }
                        None => Displaced::Nothing,
                    };
                    model.push((k, v));
                    prop_assert_eq!(lru.insert(k, v), expected);
                }
                LruOp::Touch(k) => {
                    let position = model.iter().position(|&(mk, _)| mk == k);
                    if let Some(i) = position {
                        let entry = model.remove(i);
                        model.push(entry);
                    }
                    prop_assert_eq!(lru.touch(&k), position.is_some());
                }
                LruOp::Get(k) => {
                    let expected = model.iter().find(|&&(mk, _)| mk == k).map(|(_, v)| v);
                    prop_assert_eq!(lru.get(&k), expected);
                }
                LruOp::Remove(k) => {
                    let position = model.iter().position(|&(mk, _)| mk == k);
                    let expected = position.map(|i| model.remove(i).1);
                    prop_assert_eq!(lru.remove(&k), expected);
                }
                LruOp::PopLru => {
                    let expected = (!model.is_empty()).then(|| model.remove(0));
                    prop_assert_eq!(lru.pop_lru(), expected);
                }
            }
            prop_assert_eq!(lru.len(), model.len());
            prop_assert!(lru.len() <= lru.capacity());
            let recency: Vec<(u8, u32)> = lru.iter().map(|(&k, &v)| (k, v)).collect();
            let expected: Vec<(u8, u32)> = model.iter().rev().copied().collect();
            prop_assert_eq!(recency, expected);
            prop_assert_eq!(lru.peek_lru().map(|(&k, &v)| (k, v)), model.first().copied());
        }
    }
}

// ---- client table

#[derive(Clone, Debug)]
enum ClientOp {
    Admit(u16, u8, u8),
    Leave(u16, u8, u8),
    /// Remove the n-th key ever issued (live or stale).
    Remove(usize),
}

fn client_op() -> impl Strategy<Value = ClientOp> {
    let realm = 0..2u16;
    let node = 0..6u8;
    let session = 0..4u8;
    prop_oneof![
        4 => (realm.clone(), node.clone(), session.clone())
            .prop_map(|(r, n, s)| ClientOp::Admit(r, n, s)),
        2 => (realm, node, session).prop_map(|(r, n, s)| ClientOp::Leave(r, n, s)),
        1 => any::<usize>().prop_map(ClientOp::Remove),
    ]
}

fn session(n: u8) -> SessionRef {
    SessionRef {
        shard: ShardId(u16::from(n % 2)),
        key: SessionKey::from_u64(u64::from(n)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_table_matches_a_map_of_nodes(
        capacity in 0..8usize,
        ops in prop::collection::vec(client_op(), 1..200),
    ) {
        let mut table = ClientTable::new(capacity);
        let mut model: HashMap<(RealmId, NodeId), (ClientKey, SessionRef)> = HashMap::new();
        let mut issued: Vec<ClientKey> = Vec::new();
        for op in ops {
            match op {
                ClientOp::Admit(r, n, s) => {
                    let (realm, node, session) = (RealmId(r), NodeId([n; 32]), session(s));
                    let outcome = table.admit(realm, node, session);
                    let full = model.len() == capacity;
                    match model.get_mut(&(realm, node)) {
                        Some((key, present)) => {
                            let old = std::mem::replace(present, session);
                            prop_assert_eq!(outcome, Ok(Admission::Replaced { key: *key, old }));
                        }
                        None if full => {
                            prop_assert_eq!(outcome, Err(Refusal::Full { capacity }));
                        }
                        None => {
                            let Ok(Admission::Admitted(key)) = outcome else {
                                return Err(TestCaseError::fail(format!("{outcome:?}")));
                            };
                            prop_assert!(!issued.contains(&key), "{key:?} was issued before");
                            issued.push(key);
                            model.insert((realm, node), (key, session));
                        }
                    }
                }
                ClientOp::Leave(r, n, s) => {
                    let (realm, node, session) = (RealmId(r), NodeId([n; 32]), session(s));
                    let expected = match model.get(&(realm, node)) {
                        Some(&(_, present)) if present == session => {
                            model.remove(&(realm, node));
                            Some(ClientEntry { realm, node, session })
                        }
                        _ => None,
                    };
                    prop_assert_eq!(table.leave(realm, node, session), expected);
                }
                ClientOp::Remove(i) if !issued.is_empty() => {
                    let key = issued[i % issued.len()];
                    let live = model.iter().find(|(_, &(k, _))| k == key).map(|(&id, &v)| (id, v));
                    let expected = live.map(|((realm, node), (_, session))| {
                        model.remove(&(realm, node));
                        ClientEntry { realm, node, session }
                    });
                    prop_assert_eq!(table.remove(key), expected);
                }
                ClientOp::Remove(_) => {}
            }
            prop_assert_eq!(table.len(), model.len());
            prop_assert!(table.len() <= capacity);
            for &key in &issued {
                let expected = model
                    .iter()
                    .find(|(_, &(k, _))| k == key)
                    .map(|(&(realm, node), &(_, session))| ClientEntry { realm, node, session });
                prop_assert_eq!(table.get(key).copied(), expected, "{:?}", key);
            }
            for (&(realm, node), &(key, _)) in &model {
                prop_assert_eq!(table.find(realm, node), Some(key));
            }
        }
    }
}
