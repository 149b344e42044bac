//! `CallWheel`: the shard's one hierarchical timer wheel, holding every deadline of the shard.

use crate::ids::{slab_key, Time};

slab_key!(
    /// A timer in a [`CallWheel`]; stale once the timer fired or was cancelled.
    TimerKey
);

/// A hierarchical timer wheel with 1 ms ticks, slab-backed: O(1) insert and cancel.
pub struct CallWheel<T> {
    _todo: std::marker::PhantomData<T>,
}

impl<T> CallWheel<T> {
    /// An empty wheel whose clock starts at `now`.
    pub fn new(now: Time) -> Self {
        let _ = now;
        todo!()
    }

    /// Adds a timer that expires at `deadline` (a deadline in the past expires at the next poll).
    pub fn insert(&mut self, deadline: Time, value: T) -> TimerKey {
        let _ = (deadline, value);
        todo!()
    }

    /// Removes a pending timer, returning its value; `None` if it already fired or was cancelled.
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let _ = key;
        todo!()
    }

    /// Moves a pending timer to a new deadline; false if the key is stale.
    pub fn reset(&mut self, key: TimerKey, deadline: Time) -> bool {
        let _ = (key, deadline);
        todo!()
    }

    /// The deadline of a pending timer.
    pub fn deadline(&self, key: TimerKey) -> Option<Time> {
        let _ = key;
        todo!()
    }

    /// Advances the wheel to `now` and returns one expired timer, until `None`.
    pub fn poll_expired(&mut self, now: Time) -> Option<(TimerKey, T)> {
        let _ = now;
        todo!()
    }

    /// The earliest time at which [`Self::poll_expired`] may have work: never later than the
    /// earliest deadline, possibly earlier (a far timer's cascade point). `None` when empty.
    pub fn next_deadline(&self) -> Option<Time> {
        todo!()
    }

    /// Pending timers.
    pub fn len(&self) -> usize {
        todo!()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
