//! `CallWheel`: the shard's one hierarchical timer wheel, holding every deadline of the shard.
//!
//! The wheel has six levels of 64 slots and a 1 ms tick: a slot of level `l` covers `64^l` ms,
//! so the wheel spans `2^36` ms (about 795 days). A pending timer sits in the level of the
//! highest 6-bit group in which its deadline differs from the wheel's clock, in the slot that
//! group names. When the clock reaches a slot of a higher level, the slot's timers move down to
//! finer levels ("cascade"), and a timer whose deadline has come moves to the expired list, which
//! [`CallWheel::poll_expired`] drains. A deadline beyond the span is parked at the edge of the
//! span, in the top level, and cascades again each time its slot comes round.
//!
//! Timers are nodes of one vector, linked into their slot's list by indices: insert, reset and
//! cancel are O(1) and allocate nothing once the vector has grown to the peak number of timers.
//! A 64-bit occupancy mask per level finds the next occupied slot in O(levels).

use std::fmt;

use crate::ids::{slab_key, Time};

slab_key!(
    /// A timer in a [`CallWheel`]; stale once the timer fired or was cancelled.
    TimerKey
);

const LEVELS: usize = 6;
const SLOT_BITS: usize = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// The wheel's span in ticks: a deadline further than this from the clock is parked at its edge.
const SPAN: u64 = 1 << (SLOT_BITS * LEVELS);
/// The list of expired timers, after the `LEVELS * SLOTS` slot lists.
const EXPIRED: u16 = (LEVELS * SLOTS) as u16;
const LISTS: usize = LEVELS * SLOTS + 1;
/// The `list` of a vacant node.
const VACANT: u16 = u16::MAX;
/// The end of a list.
const NIL: u32 = u32::MAX;

/// A hierarchical timer wheel with 1 ms ticks, slab-backed: O(1) insert and cancel.
///
/// Invariants: every timer whose node sits in a slot list has a deadline after `now`; every
/// index stored in a list head, tail or link names an occupied node.
pub struct CallWheel<T> {
    /// The wheel's clock, in ms.
    now: u64,
    nodes: Vec<Node<T>>,
    /// The first vacant node, the others linked through their `next`.
    free: u32,
    /// Head and tail of each slot's list (level-major), then of the expired list.
    lists: Box<[List; LISTS]>,
    /// Per level, bit `s` set when slot `s` holds a timer.
    occupied: [u64; LEVELS],
    /// Not later than any deadline in the expired list; meaningless while that list is empty.
    expired_floor: u64,
    len: usize,
}

struct Node<T> {
    deadline: u64,
    generation: u32,
    prev: u32,
    next: u32,
    /// The list the node is linked in, or [`VACANT`].
    list: u16,
    /// `Some` exactly when the node is occupied.
    value: Option<T>,
}

#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

const EMPTY: List = List {
    head: NIL,
    tail: NIL,
};

impl<T> CallWheel<T> {
    /// An empty wheel whose clock starts at `now`.
    pub fn new(now: Time) -> Self {
        Self::with_capacity(now, 0)
    }

    /// An empty wheel with room for `capacity` timers before it allocates.
    pub fn with_capacity(now: Time, capacity: usize) -> Self {
        CallWheel {
            now: now.as_millis(),
            nodes: Vec::with_capacity(capacity),
            free: NIL,
            lists: Box::new([EMPTY; LISTS]),
            occupied: [0; LEVELS],
            expired_floor: u64::MAX,
            len: 0,
        }
    }

    /// Adds a timer that expires at `deadline` (a deadline in the past expires at the next poll).
    pub fn insert(&mut self, deadline: Time, value: T) -> TimerKey {
        let deadline = deadline.as_millis();
        let index = match self.free {
            NIL => {
                let index = self.nodes.len();
                assert!(
                    index < NIL as usize,
                    "a wheel holds fewer than 2^32 - 1 timers"
                );
                self.nodes.push(Node {
                    deadline,
                    generation: 0,
                    prev: NIL,
                    next: NIL,
                    list: VACANT,
                    value: Some(value),
                });
                index as u32
            }
            index => {
                let node = &mut self.nodes[index as usize];
                self.free = node.next;
                node.deadline = deadline;
                node.value = Some(value);
                index
            }
        };
        self.len += 1;
        self.place(index);
        TimerKey {
            index,
            generation: self.nodes[index as usize].generation,
        }
    }

    /// Removes a pending timer, returning its value; `None` if it already fired or was cancelled.
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        if !self.is_pending(key) {
            return None;
        }
        self.unlink(key.index);
        self.release(key.index)
    }

    /// Moves a pending timer to a new deadline; false if the key is stale.
    pub fn reset(&mut self, key: TimerKey, deadline: Time) -> bool {
        if !self.is_pending(key) {
            return false;
        }
        self.unlink(key.index);
        self.nodes[key.index as usize].deadline = deadline.as_millis();
        self.place(key.index);
        true
    }

    /// The deadline of a pending timer.
    pub fn deadline(&self, key: TimerKey) -> Option<Time> {
        if !self.is_pending(key) {
            return None;
        }
        Some(Time::from_millis(self.nodes[key.index as usize].deadline))
    }

    /// Advances the wheel to `now` and returns one expired timer, until `None`.
    ///
    /// A `now` earlier than the wheel's clock does not move it back: the call only drains timers
    /// that expired already.
    pub fn poll_expired(&mut self, now: Time) -> Option<(TimerKey, T)> {
        self.advance(now.as_millis());
        let index = self.lists[usize::from(EXPIRED)].head;
        if index == NIL {
            return None;
        }
        self.unlink(index);
        let generation = self.nodes[index as usize].generation;
        let value = self.release(index)?;
        Some((TimerKey { index, generation }, value))
    }

    /// The earliest time at which [`Self::poll_expired`] may have work: never later than the
    /// earliest deadline, possibly earlier (a far timer's cascade point). `None` when empty.
    pub fn next_deadline(&self) -> Option<Time> {
        if self.lists[usize::from(EXPIRED)].head != NIL {
            return Some(Time::from_millis(self.expired_floor));
        }
        self.next_slot().map(|(_, start)| Time::from_millis(start))
    }

    /// The wheel's clock: the latest time it was polled at, or its start.
    pub fn now(&self) -> Time {
        Time::from_millis(self.now)
    }

    /// Pending timers.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_pending(&self, key: TimerKey) -> bool {
        self.nodes
            .get(key.index as usize)
            .is_some_and(|node| node.list != VACANT && node.generation == key.generation)
    }

    /// Moves the clock to `to`, cascading every slot that starts at or before it.
    fn advance(&mut self, to: u64) {
        if to <= self.now {
            return;
        }
        if to - self.now >= SPAN {
            // Every slot starts within one span of the clock, so all of them are due: place each
            // timer afresh rather than stepping through the parked ones span by span.
            self.now = to;
            for list in 0..EXPIRED {
                self.cascade(list);
            }
            return;
        }
        while let Some((list, start)) = self.next_slot() {
            if start > to {
                break;
            }
            self.now = start;
            self.cascade(list);
        }
        self.now = to;
    }

    /// The first occupied slot after the clock and the time it starts at.
    ///
    /// Below the top level, a level's timers share with the clock every bit above that level and
    /// lie in a later slot, so the lowest occupied level holds the earliest slot. The top level
    /// is a ring: a slot at or behind the clock's is reached in the next turn.
    fn next_slot(&self) -> Option<(u16, u64)> {
        let level = self.occupied.iter().position(|&occupied| occupied != 0)?;
        let occupied = self.occupied[level];
        let shift = SLOT_BITS * level;
        let current = (self.now >> shift) & SLOT_MASK;
        // Search from the slot after the clock's: at the top level, the clock's own slot holds
        // timers a whole turn away; below it, that slot is empty.
        let after = (current + 1) & SLOT_MASK;
        let ahead = u64::from(occupied.rotate_right(after as u32).trailing_zeros());
        let slot = (after + ahead) & SLOT_MASK;
        let level_span = (SLOTS as u64) << shift;
        // No overflow: the start is at most the deadline of the timers in the slot.
        let mut start = (self.now & !(level_span - 1)) + (slot << shift);
        if start <= self.now {
            debug_assert_eq!(level, LEVELS - 1, "only the top level wraps around");
            start += level_span;
        }
        Some(((level * SLOTS) as u16 + slot as u16, start))
    }

    /// Empties `list` and places each of its timers again, relative to the current clock.
    fn cascade(&mut self, list: u16) {
        let List { head, .. } = std::mem::replace(&mut self.lists[usize::from(list)], EMPTY);
        self.occupied[usize::from(list) / SLOTS] &= !(1 << (usize::from(list) % SLOTS));
        let mut index = head;
        while index != NIL {
            let next = self.nodes[index as usize].next;
            self.place(index);
            index = next;
        }
    }

    /// Links an unlinked occupied node into the list its deadline calls for.
    fn place(&mut self, index: u32) {
        let deadline = self.nodes[index as usize].deadline;
        let list = if deadline <= self.now {
            if self.lists[usize::from(EXPIRED)].head == NIL {
                self.expired_floor = deadline;
            } else {
                self.expired_floor = self.expired_floor.min(deadline);
            }
            EXPIRED
        } else {
            slot_for(self.now, deadline)
        };
        let tail = self.lists[usize::from(list)].tail;
        let node = &mut self.nodes[index as usize];
        node.list = list;
        node.prev = tail;
        node.next = NIL;
        match tail {
            NIL => self.lists[usize::from(list)].head = index,
            tail => self.nodes[tail as usize].next = index,
        }
        self.lists[usize::from(list)].tail = index;
        if list != EXPIRED {
            self.occupied[usize::from(list) / SLOTS] |= 1 << (usize::from(list) % SLOTS);
        }
    }

    /// Unlinks an occupied node from its list.
    fn unlink(&mut self, index: u32) {
        let Node {
            prev, next, list, ..
        } = self.nodes[index as usize];
        match prev {
            NIL => self.lists[usize::from(list)].head = next,
            prev => self.nodes[prev as usize].next = next,
        }
        match next {
            NIL => self.lists[usize::from(list)].tail = prev,
            next => self.nodes[next as usize].prev = prev,
        }
        if list != EXPIRED && self.lists[usize::from(list)].head == NIL {
            self.occupied[usize::from(list) / SLOTS] &= !(1 << (usize::from(list) % SLOTS));
        }
    }

    /// Vacates an unlinked node, making its key stale, and returns its value.
    fn release(&mut self, index: u32) -> Option<T> {
        let node = &mut self.nodes[index as usize];
        debug_assert!(node.value.is_some(), "only occupied nodes are released");
        node.generation = node.generation.wrapping_add(1);
        node.list = VACANT;
        node.next = self.free;
        self.free = index;
        self.len -= 1;
        node.value.take()
    }
}

/// The slot list for a deadline after `now`: the level of the highest 6-bit group in which the
/// two differ, and the slot that group of the deadline names. A deadline beyond the span is
/// parked at the span's last tick; one whose highest differing group is above the top level
/// (near a multiple of the span) goes to the top level, which wraps around.
fn slot_for(now: u64, deadline: u64) -> u16 {
    debug_assert!(deadline > now);
    let parked = deadline.min(now.saturating_add(SPAN - 1));
    let differing = (now ^ parked) | SLOT_MASK;
    let level = ((63 - differing.leading_zeros() as usize) / SLOT_BITS).min(LEVELS - 1);
    let slot = (parked >> (SLOT_BITS * level)) & SLOT_MASK;
    (level * SLOTS) as u16 + slot as u16
}

impl<T> fmt::Debug for CallWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallWheel")
            .field("now", &self.now())
            .field("len", &self.len)
            .field("next_deadline", &self.next_deadline())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    /// Polls at `now` until `None`, returning the values that fired.
    fn drain<T>(wheel: &mut CallWheel<T>, now: u64) -> Vec<T> {
        std::iter::from_fn(|| wheel.poll_expired(at(now)).map(|(_, value)| value)).collect()
    }

    #[test]
    fn timer_fires_at_its_deadline_and_not_before() {
        let mut wheel = CallWheel::new(at(1_000));
        let key = wheel.insert(at(1_250), "call");
        assert_eq!(wheel.deadline(key), Some(at(1_250)));
        for now in [1_000, 1_063, 1_064, 1_200, 1_249] {
            assert!(drain(&mut wheel, now).is_empty(), "fired early at {now}");
        }
        assert_eq!(wheel.poll_expired(at(1_250)), Some((key, "call")));
        assert!(wheel.is_empty());
        assert_eq!(wheel.deadline(key), None);
    }

    #[test]
    fn deadline_at_or_before_the_clock_fires_at_the_next_poll() {
        let mut wheel = CallWheel::new(at(500));
        wheel.insert(at(500), 1);
        wheel.insert(at(3), 2);
        assert_eq!(wheel.next_deadline(), Some(at(3)));
        assert_eq!(drain(&mut wheel, 500), vec![1, 2]);
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn a_late_poll_fires_every_timer_that_came_due() {
        let mut wheel = CallWheel::new(at(0));
        let deadlines = [
            1, 63, 64, 65, 4_095, 4_096, 262_143, 262_144, 900_000, 17_000_000,
        ];
        for deadline in deadlines {
            wheel.insert(at(deadline), deadline);
        }
        let mut fired = drain(&mut wheel, 20_000_000);
        fired.sort_unstable();
        assert_eq!(fired, deadlines);
    }

    #[test]
    fn timers_polled_tick_by_tick_fire_in_deadline_order() {
        let mut wheel = CallWheel::new(at(0));
        let deadlines = [70, 3, 4_100, 64, 65, 1, 4_095, 5_000];
        for deadline in deadlines {
            wheel.insert(at(deadline), deadline);
        }
        let mut fired = Vec::new();
        for now in 0..=5_000 {
            for value in drain(&mut wheel, now) {
                assert_eq!(value, now, "fired at {now}");
                fired.push(value);
            }
        }
        let mut sorted = deadlines.to_vec();
        sorted.sort_unstable();
        assert_eq!(fired, sorted);
    }

    #[test]
    fn cancelled_timer_never_fires() {
        let mut wheel = CallWheel::new(at(0));
        let kept = wheel.insert(at(100), "kept");
        let cancelled = wheel.insert(at(100), "cancelled");
        assert_eq!(wheel.cancel(cancelled), Some("cancelled"));
        assert_eq!(wheel.cancel(cancelled), None);
        assert_eq!(wheel.len(), 1);
        assert_eq!(drain(&mut wheel, 1_000), vec!["kept"]);
        assert_eq!(wheel.cancel(kept), None);
    }

    #[test]
    fn reset_moves_a_timer_later_and_earlier() {
        let mut wheel = CallWheel::new(at(0));
        let key = wheel.insert(at(100), ());
        assert!(wheel.reset(key, at(10_000)));
        assert!(drain(&mut wheel, 9_999).is_empty());
        assert!(wheel.reset(key, at(10_005)));
        assert!(drain(&mut wheel, 10_004).is_empty());
        assert!(wheel.reset(key, at(50)));
        assert_eq!(wheel.deadline(key), Some(at(50)));
        assert_eq!(wheel.poll_expired(at(10_004)), Some((key, ())));
        assert!(!wheel.reset(key, at(20_000)));
    }

    #[test]
    fn stale_key_does_not_touch_the_timer_that_reuses_its_slot() {
        let mut wheel = CallWheel::new(at(0));
        let old = wheel.insert(at(10), "old");
        assert_eq!(wheel.poll_expired(at(10)), Some((old, "old")));
        let new = wheel.insert(at(20), "new");
        assert_eq!(old.index(), new.index());
        assert_eq!(wheel.cancel(old), None);
        assert!(!wheel.reset(old, at(5)));
        assert_eq!(wheel.deadline(old), None);
        assert_eq!(wheel.deadline(new), Some(at(20)));
    }

    #[test]
    fn deadline_beyond_the_span_fires_after_cascading_again() {
        let mut wheel = CallWheel::new(at(7));
        let far = 3 * SPAN + 12_345;
        wheel.insert(at(far), "far");
        let mut now = 7;
        while now < far - 1 {
            let next = wheel
                .next_deadline()
                .expect("the timer is pending")
                .as_millis();
            assert!(next <= far);
            assert!(
                next > now,
                "a parked timer's cascade point is ahead of the clock"
            );
            now = next.min(far - 1);
            assert!(drain(&mut wheel, now).is_empty(), "fired early at {now}");
        }
        assert_eq!(drain(&mut wheel, far), vec!["far"]);
    }

    #[test]
    fn a_jump_over_the_whole_span_fires_what_came_due_and_keeps_the_rest() {
        let mut wheel = CallWheel::new(at(0));
        wheel.insert(at(5), 5);
        wheel.insert(at(2 * SPAN), 2 * SPAN);
        wheel.insert(at(10 * SPAN), 10 * SPAN);
        wheel.insert(at(u64::MAX), u64::MAX);
        assert_eq!(drain(&mut wheel, 3 * SPAN), vec![5, 2 * SPAN]);
        assert_eq!(wheel.len(), 2);
        assert!(wheel
            .next_deadline()
            .is_some_and(|next| next <= at(10 * SPAN)));
        assert_eq!(drain(&mut wheel, u64::MAX), vec![10 * SPAN, u64::MAX]);
    }

    #[test]
    fn next_deadline_is_never_later_than_the_earliest_deadline() {
        let mut wheel = CallWheel::new(at(100));
        assert_eq!(wheel.next_deadline(), None);
        wheel.insert(at(5_000), ());
        let next = wheel.next_deadline().expect("one timer");
        assert!(next > at(100) && next <= at(5_000));
        wheel.insert(at(150), ());
        let next = wheel.next_deadline().expect("two timers");
        assert!(
            next > at(100) && next <= at(150),
            "a cascade point at most: {next:?}"
        );
        wheel.insert(at(110), ());
        assert_eq!(wheel.next_deadline(), Some(at(110)), "level 0 is exact");
    }

    #[test]
    fn time_going_backwards_is_ignored() {
        let mut wheel = CallWheel::new(at(1_000));
        wheel.insert(at(1_100), "a");
        assert!(drain(&mut wheel, 10).is_empty());
        assert_eq!(wheel.now(), at(1_000));
        assert_eq!(drain(&mut wheel, 1_100), vec!["a"]);
        wheel.insert(at(1_050), "b");
        assert_eq!(drain(&mut wheel, 900), vec!["b"]);
        assert_eq!(wheel.now(), at(1_100));
    }

    #[test]
    fn crossing_the_span_boundary_near_the_clock_still_fires_on_time() {
        let mut wheel = CallWheel::new(at(SPAN - 3));
        wheel.insert(at(SPAN + 2), "across");
        assert!(wheel
            .next_deadline()
            .is_some_and(|next| next <= at(SPAN + 2)));
        assert!(drain(&mut wheel, SPAN + 1).is_empty());
        assert_eq!(drain(&mut wheel, SPAN + 2), vec!["across"]);
    }

    #[test]
    fn freed_nodes_are_reused() {
        let mut wheel = CallWheel::with_capacity(at(0), 4);
        for round in 0..100 {
            let keys: Vec<_> = (0..4)
                .map(|i| wheel.insert(at(round * 10 + i), ()))
                .collect();
            assert!(keys.iter().all(|key| key.index() < 4));
            for key in keys {
                assert_eq!(wheel.cancel(key), Some(()));
            }
        }
        assert_eq!(wheel.nodes.len(), 4);
    }
}
