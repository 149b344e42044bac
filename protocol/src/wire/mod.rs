//! The wire: Macula v0 framing (an 8-byte header and one MessagePack map), PROTOCOL.md
//! sections 2 and 4, and the frames of the gateway mesh's peer links (9.2, 9.11).
//!
//! Decoding borrows from the input: a decoded [`Message`] points into the frame's bytes and
//! allocates nothing. Encoding appends to a caller's buffer. Keys and strings are written as
//! MessagePack bin; both bin and str are accepted on receipt.

mod encode;
mod error;
mod frame;
mod message;
pub mod msgpack;
mod peer;
mod peer_encode;

pub use error::{LinkReason, Reason, WireError};
pub use frame::{FrameHeader, FrameReader, RawFrame, HEADER_LEN, VERSION};
pub use message::*;
pub use peer::*;
