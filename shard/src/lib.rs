//! meshgate's per-core state machine, free of IO and of clocks.
//!
//! A [`Shard`] owns everything one CPU core of the gateway serves: its sessions, its share of
//! the client directory, the subscription and procedure indexes, its pending calls and one timer
//! wheel for all its deadlines. The driver (the `meshgate` crate) feeds it bytes, shard messages
//! and the time, and drains what it produces. Everything here is deterministic, so that the
//! whole gateway can be run in a simulator.

pub mod clients;
pub mod counts;
pub mod genslab;
pub mod ids;
pub mod lru;
pub mod mesh;
pub mod registry;
pub mod subs;
pub mod wheel;

// The protocol (codec, node ids, name rules) lives in its own crate, shared with the client
// library and the tools; its modules are re-exported so that `crate::wire` and `crate::names`
// read as before.
pub use meshgate_protocol::{names, wire};

pub use ids::{DriverToken, NodeId, RealmId, SessionKey, SessionRef, ShardId, Time};
pub mod config;
pub mod metrics;
pub mod pending;
pub mod router;
mod shard;

pub use config::{Config, Limits, RealmConfig};
pub use counts::GatewayCounts;
pub use shard::{
    DialReport, DialRequest, Event, LinkEnd, LinkReport, LinkState, Occupancy, PeerTableReport,
    Shard, StreamEnd,
};
