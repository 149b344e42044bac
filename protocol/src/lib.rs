//! The Macula v0 gateway protocol (PROTOCOL.md) as meshgate speaks it, shared by the gateway's
//! core (`meshgate-shard`), the client library (`meshgate-client`) and the command-line tools
//! (`meshgate-cli`):
//!
//! - [`wire`]: the codec, an 8-byte header and one MessagePack map per frame;
//! - [`NodeId`], the identifier the wire carries for a client;
//! - [`names`]: what a realm, a topic, a procedure and a pattern may be, and the reference
//!   matcher of a topic pattern against a topic.
//!
//! It does no IO and holds no state.

pub mod ids;
pub mod names;
pub mod wire;

pub use ids::NodeId;
