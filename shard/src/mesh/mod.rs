//! The gateway mesh's rules (PROTOCOL.md section 9) that need no link, socket or clock: pure
//! functions and small types the shard's peer-link handling is built from.
//!
//! - [`advertise`]: what a gateway advertises for one realm: merged increments, snapshots,
//!   collapse to `**` and back (9.6).
//! - [`calls`]: the calls in flight on a link, both ways, by link-scoped id (9.8, 9.10).
//! - [`choice`]: local first, then peers by count, each tried once; which error when none (9.8).
//! - [`counters`]: what each link carried, by frame type and in bytes, each way (9.11).
//! - [`digest`]: the interest digest a gateway sends with SYNC `digest` and checks (9.6).
//! - [`gossip`]: whom to dial and when: seeds, gossip, backoff, forgetting (9.4).
//! - [`handshake`]: one link's handshake as a state machine: HELLO, proofs, AUTH, timeout (9.3).
//! - [`hello`]: the checks of a peer's HELLO, and the realms two gateways share (9.3, 9.9).
//! - [`interest`]: one peer's interest in one realm: snapshots, increments, collapse (9.6).
//! - [`links`]: which of two admitted links to one peer both ends keep (9.3).
//! - [`peers`]: the admitted links, one per peer, bounded as an LRU, and the redial schedule
//!   (9.3, 9.4).
//! - [`proof`]: the HMAC proof of the cluster token and the realms' auth digests (9.3, 9.9).
//! - [`wrr`]: the weighted choice among peers that advertise a procedure (9.8).

pub mod advertise;
pub mod calls;
pub mod choice;
pub mod counters;
pub mod digest;
pub mod gossip;
pub mod handshake;
pub mod hello;
pub mod interest;
pub mod links;
pub mod peers;
pub mod proof;
pub mod wrr;
