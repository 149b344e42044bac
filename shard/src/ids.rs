//! Identifiers and time, as newtypes so that no bare integer crosses a module boundary.

use std::ops::{Add, Sub};
use std::time::Duration;

pub use meshgate_protocol::NodeId;

/// The index of a shard, `0..shards`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl ShardId {
    /// The shard as an index into per-shard arrays.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A realm served by the gateway: its index in the configured realm list, the same on every
/// shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RealmId(pub u16);

/// A driver's own timer kept in the shard's wheel: the driver picks the value (a connection's
/// index, say), and gets it back from [`crate::Shard::poll_driver_timer`] when the timer fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DriverToken(pub u64);

/// A point on the driver's monotonic clock, in milliseconds since an arbitrary origin.
///
/// The shard never reads a clock: every input carries the time it happened at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Time(u64);

impl Time {
    /// The origin of the clock.
    pub const ZERO: Time = Time(0);

    /// A time `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Time {
        Time(ms)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The time elapsed since `earlier`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(ms))
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, earlier: Time) -> Duration {
        self.saturating_since(earlier)
    }
}

/// Declares a generation-checked slab key type (see [`crate::genslab::GenSlab`]).
macro_rules! slab_key {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name {
            index: u32,
            generation: u32,
        }

        impl $crate::genslab::SlabKey for $name {
            fn new(index: u32, generation: u32) -> Self {
                $name { index, generation }
            }
            fn index(self) -> u32 {
                self.index
            }
            fn generation(self) -> u32 {
                self.generation
            }
        }

        impl $name {
            /// The slot index, dense from 0: drivers may index their own arrays with it.
            pub fn index(self) -> usize {
                self.index as usize
            }

            /// Packs the key into 64 bits (generation high, index low).
            pub fn to_u64(self) -> u64 {
                (u64::from(self.generation) << 32) | u64::from(self.index)
            }

            /// The inverse of [`Self::to_u64`].
            pub fn from_u64(v: u64) -> Self {
                $name { index: v as u32, generation: (v >> 32) as u32 }
            }
        }
    };
}
pub(crate) use slab_key;

slab_key!(
    /// A session on its home shard. Stale keys (of an ended session) never find a new one.
    SessionKey
);

/// A session anywhere in the gateway: its home shard and its key there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionRef {
    pub shard: ShardId,
    pub key: SessionKey,
}

slab_key!(
    /// A peer link on the shard that holds its connection. Stale keys never find a new one.
    LinkKey
);

/// A peer link anywhere in the gateway: the shard that holds its connection and its key there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkRef {
    pub shard: ShardId,
    pub key: LinkKey,
}
