//! Cross-shard routing: which shard owns what, and the one enum of every message shards send
//! each other.
//!
//! # Where each table lives
//!
//! - **Sessions** live on their *home* shard, the one whose socket accepted the QUIC connection.
//!   Their output, their subscriptions and registrations (as lists for cleanup), and the calls
//!   they make as callers live there too.
//! - **The client directory** ([`crate::clients::ClientTable`]) is partitioned by node id: node
//!   `n` is admitted, replaced and removed by shard [`owner_of`]`(n)`. A CONNECT costs one
//!   round trip to the owner; no other message consults it.
//! - **Subscriptions** are indexed twice on every shard: its own sessions' patterns, and the
//!   patterns other shards have at least one subscriber for (replicated when a shard's count for
//!   a pattern goes from 0 to 1 and back). A PUBLISH is matched on the publisher's shard, and
//!   crosses only to the shards that have a matching subscriber, once per shard however many
//!   of its sessions match.
//! - **Registrations** are replicated to every shard, so the caller's shard picks the provider
//!   itself: a CALL crosses at most once to the provider's shard, and its REPLY at most once
//!   back. The provider's home shard keeps the registration's expiry and tells the others when
//!   it goes.
//! - **Pending calls** live on the caller's shard, which holds the deadline. The `call_id` a
//!   provider sees is a [`CallToken`] that names that shard, so a REPLY finds it in O(1).
//!
//! Messages between two shards are delivered in order (the driver's channels are FIFO per
//! pair). That is what makes PING a barrier: once every other shard has answered a
//! [`ShardMsg::Barrier`], every replication message sent before it has been applied.

use std::ops::Range;
use std::sync::Arc;

use crate::ids::{LinkKey, NodeId, RealmId, SessionKey, ShardId};
use crate::mesh::interest::Change;
use crate::mesh::links::LinkFacts;
use crate::wire::{LinkReason, Outcome, Raw, Reason};

/// The shard that owns `node` among `shards` shards.
///
/// A fixed function of the id's bytes (a splitmix-style mix of its four words), the same on
/// every build and CPU: never a per-process seed, and not ahash, whose output depends on the
/// CPU features it is compiled for.
pub fn owner_of(node: &NodeId, shards: u16) -> ShardId {
    debug_assert!(shards > 0, "a gateway has at least one shard");
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in node.0.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = mix(h ^ u64::from_le_bytes(word));
    }
    // Lemire's multiply-shift maps the hash onto 0..shards without a division.
    ShardId(((u128::from(h) * u128::from(shards.max(1))) >> 64) as u16)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `call_id` a provider receives: the caller's shard and the pending call's slot there.
///
/// Layout: shard (8 bits) | slot generation (32 bits) | slot index (24 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallToken(pub u64);

/// The most shards a gateway can have (the width of a [`CallToken`]'s shard field).
pub const MAX_SHARDS: u16 = 256;
/// The most calls one shard can hold pending (the width of a [`CallToken`]'s index field).
pub const MAX_PENDING_PER_SHARD: usize = 1 << 24;

impl CallToken {
    pub fn new(shard: ShardId, index: u32, generation: u32) -> CallToken {
        debug_assert!(shard.0 < MAX_SHARDS && (index as usize) < MAX_PENDING_PER_SHARD);
        CallToken(
            (u64::from(shard.0) << 56)
                | (u64::from(generation) << 24)
                | u64::from(index & 0xff_ffff),
        )
    }

    pub fn shard(self) -> ShardId {
        ShardId((self.0 >> 56) as u16)
    }

    pub fn index(self) -> u32 {
        (self.0 & 0xff_ffff) as u32
    }

    pub fn generation(self) -> u32 {
        (self.0 >> 24) as u32
    }
}

/// Why the gateway itself failed a call (REPLY `error.code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    ProcedureNotFound,
    Timeout,
    ProviderGone,
    Overloaded,
    InvalidCall,
    DuplicateCallId,
}

impl CallError {
    pub fn code(self) -> &'static str {
        match self {
            CallError::ProcedureNotFound => "procedure_not_found",
            CallError::Timeout => "timeout",
            CallError::ProviderGone => "provider_gone",
            CallError::Overloaded => "overloaded",
            CallError::InvalidCall => "invalid_call",
            CallError::DuplicateCallId => "duplicate_call_id",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            CallError::ProcedureNotFound => "no live provider of this procedure",
            CallError::Timeout => "the call's deadline passed",
            CallError::ProviderGone => "the provider's session ended",
            CallError::Overloaded => "too many calls in flight, or the provider is not reading",
            CallError::InvalidCall => "invalid procedure name or call_id",
            CallError::DuplicateCallId => "this call_id is already in flight",
        }
    }
}

/// What the gateway refused in a frame other than a CALL (ERROR `code`); the session goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// A PUBLISH's topic is not valid.
    InvalidTopic,
    /// A SUBSCRIBE or UNSUBSCRIBE pattern is not valid.
    InvalidPattern,
    /// A SUBSCRIBE would take the session over `--max-subscriptions`.
    TooManySubscriptions,
    /// A REGISTER_PROCEDURE or UNREGISTER_PROCEDURE name is not valid.
    InvalidProcedure,
    /// A REGISTER_PROCEDURE would take the session over `--max-registrations`.
    TooManyRegistrations,
}

impl ErrorCode {
    /// The string sent in ERROR `code`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::InvalidPattern => "invalid_pattern",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::InvalidProcedure => "invalid_procedure",
            ErrorCode::TooManyRegistrations => "too_many_registrations",
        }
    }

    /// The ERROR `message` sent with the code.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::InvalidTopic => "not a valid topic",
            ErrorCode::InvalidPattern => "not a valid pattern",
            ErrorCode::TooManySubscriptions => "the session holds --max-subscriptions patterns",
            ErrorCode::InvalidProcedure => "not a valid procedure name",
            ErrorCode::TooManyRegistrations => "the session holds --max-registrations procedures",
        }
    }
}

/// Why a provider is told to stop working on a call (CANCEL `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    CallerGone,
    Timeout,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::CallerGone => "caller_gone",
            CancelReason::Timeout => "timeout",
        }
    }
}

/// A provider's answer, carried back to the caller's shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedOutcome {
    /// The encoded MessagePack `result`.
    Result(Box<[u8]>),
    Error {
        code: Box<[u8]>,
        message: Option<Box<[u8]>>,
    },
}

impl OwnedOutcome {
    /// A copy of a REPLY's outcome, to cross to another shard.
    pub fn from_wire(outcome: Outcome<'_>) -> OwnedOutcome {
        match outcome {
            Outcome::Result(raw) => OwnedOutcome::Result(raw.0.into()),
            Outcome::Error { code, message } => OwnedOutcome::Error {
                code: code.into(),
                message: message.map(Into::into),
            },
        }
    }

    /// The outcome as the REPLY to the caller carries it.
    pub fn as_wire(&self) -> Outcome<'_> {
        match self {
            OwnedOutcome::Result(raw) => Outcome::Result(Raw(raw)),
            OwnedOutcome::Error { code, message } => Outcome::Error {
                code,
                message: message.as_deref(),
            },
        }
    }
}

/// Every message one shard sends another. Session keys name a session on the shard the field
/// says (`session` on the receiver unless noted).
#[derive(Clone, Debug)]
pub enum ShardMsg {
    /// To the node's owner: admit `node` for the sender's session `session`.
    Admit {
        realm: RealmId,
        node: NodeId,
        session: SessionKey,
    },
    /// From the owner: the session may go on.
    Admitted { session: SessionKey },
    /// From the owner: the session is refused.
    Refused { session: SessionKey, reason: Reason },
    /// From the owner: end the session (it was replaced).
    Kick { session: SessionKey, reason: Reason },
    /// To the node's owner: the sender's session `session` of `node` ended.
    Leave {
        realm: RealmId,
        node: NodeId,
        session: SessionKey,
    },
    /// The sender now has (`add`) or no longer has subscribers of `pattern`.
    Interest {
        realm: RealmId,
        pattern: Box<[u8]>,
        add: bool,
    },
    /// The sender's session `session` now provides (`add`) or no longer provides `procedure`.
    Provider {
        realm: RealmId,
        procedure: Box<[u8]>,
        session: SessionKey,
        add: bool,
    },
    /// The sender's session `session`, a provider, ended: drop its registrations and fail the
    /// calls sent to it.
    ProviderGone { session: SessionKey },
    /// Answer with [`ShardMsg::BarrierAck`]; `session` is the sender's.
    Barrier { session: SessionKey, seq: u32 },
    /// Every message the receiver sent before this has been applied by the sender.
    BarrierAck { session: SessionKey, seq: u32 },
    /// A PUBLISH to deliver to the receiver's matching sessions: the encoded frame, publisher
    /// included, and where its topic lies in it.
    Publish {
        realm: RealmId,
        frame: Arc<[u8]>,
        topic: Range<u32>,
    },
    /// A CALL for the receiver's session `provider`: the encoded frame, `call_id` = `token`.
    Call {
        token: CallToken,
        provider: SessionKey,
        frame: Box<[u8]>,
    },
    /// The receiver's call `token` could not be delivered.
    CallFailed { token: CallToken, error: CallError },
    /// The answer to the receiver's call `token`, from the sender's session `provider`.
    Reply {
        token: CallToken,
        provider: SessionKey,
        outcome: OwnedOutcome,
    },
    /// Tell the receiver's session `provider` to stop working on `token`.
    Cancel {
        token: CallToken,
        provider: SessionKey,
        reason: CancelReason,
    },

    // ---- The gateway mesh (PROTOCOL.md 9.10). `link` names a link on the shard that holds
    // it: the receiver for messages to a link's shard, the sender for its broadcasts. ----
    /// To shard 0: admit the sender's link, whose handshake succeeded.
    AdmitLink { link: LinkKey, peer: Box<LinkPeer> },
    /// From shard 0: the link is admitted; send the peer these members.
    LinkAdmitted {
        link: LinkKey,
        members: Vec<OwnedMember>,
    },
    /// From shard 0: close the link (refused, replaced or evicted). `then` is the link
    /// admitted in its place: its shard is told only once this one is closed, so that no two
    /// links to one peer, nor more than `--max-peers` links, are ever admitted at once.
    CloseLink {
        link: LinkKey,
        reason: LinkReason,
        then: Option<Box<Admitted>>,
    },
    /// From shard 0: send PEER_MEMBERS with these members on the link.
    Introduce {
        link: LinkKey,
        members: Vec<OwnedMember>,
    },
    /// From shard 0 to a link's shard: dial `addr`.
    Dial {
        addr: Box<str>,
        seq: u64,
        gossip: bool,
    },
    /// To shard 0: the sender's link ended.
    LinkEnded { link: LinkKey, end: Box<LinkEnding> },
    /// To shard 0: members a peer listed in PEER_MEMBERS.
    Learned { members: Vec<OwnedMember> },
    /// To shard 0: data frames crossed these peers' links since the last report.
    PeersUsed { names: Vec<Box<[u8]>> },
    /// The sender's link is up, sharing these realms: send it data.
    LinkUp { link: LinkKey, realms: Vec<RealmId> },
    /// The sender's link is lost: forget its interest and fail what went to it.
    LinkDown { link: LinkKey },
    /// The interest the sender's link's peer advertises changed.
    LinkInterest {
        link: LinkKey,
        realm: RealmId,
        changes: Vec<Change>,
    },
    /// The sender's link went over (or back under) `--max-peer-output`.
    LinkBound { link: LinkKey, over: bool },
    /// A PUBLISH for the receiver's link, encoded as a link frame.
    LinkPublish { link: LinkKey, frame: Arc<[u8]> },
    /// A CALL for the receiver's link, encoded as a link frame whose `call_id` is `token`.
    LinkCall {
        link: LinkKey,
        token: CallToken,
        frame: Box<[u8]>,
    },
    /// Send CANCEL for the sender's call `token` on the receiver's link.
    LinkCancel {
        link: LinkKey,
        token: CallToken,
        reason: CancelReason,
    },
    /// The answer the sender's link got to the receiver's call `token`.
    LinkReply {
        token: CallToken,
        link: LinkKey,
        outcome: OwnedOutcome,
    },
    /// Answer with [`ShardMsg::LinkBarrierAck`]; `link` is the sender's.
    LinkBarrier { link: LinkKey, seq: u32 },
    /// Every message the receiver sent before the barrier has been applied by the sender.
    LinkBarrierAck { link: LinkKey, seq: u32 },
    /// PING every up link and answer with [`ShardMsg::MeshBarrierAck`] once each answered;
    /// `session` is the sender's.
    MeshBarrier { session: SessionKey, seq: u32 },
    /// Every up link of the sender answered a PING sent after the barrier arrived.
    MeshBarrierAck { session: SessionKey, seq: u32 },
}

/// What a link's shard tells shard 0 of the peer at admission.
#[derive(Clone, Debug)]
pub struct LinkPeer {
    pub node_name: Box<[u8]>,
    pub facts: LinkFacts,
    /// The peer's advertised `HOST:PORT`.
    pub addr: Box<[u8]>,
    /// The address this gateway dialed, for a dialed link.
    pub dialed: Option<Box<str>>,
    /// The dialer's HELLO said the dial came from gossip.
    pub gossip: bool,
}

/// A link admitted by shard 0, to be told to its shard.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub shard: ShardId,
    pub link: LinkKey,
    pub members: Vec<OwnedMember>,
}

/// What a link's shard tells shard 0 of a link's end.
#[derive(Clone, Debug)]
pub struct LinkEnding {
    pub dialed: Option<Box<str>>,
    /// The peer's name, once its HELLO was read.
    pub name: Option<Box<[u8]>>,
    /// Shard 0 had been asked to admit the link.
    pub admission_asked: bool,
    /// The reason the link was closed with, sent or received.
    pub reason: Option<LinkReason>,
    /// The dial found this gateway itself (`duplicate_link` before the acceptor's HELLO).
    pub found_self: bool,
}

/// A member listed in PEER_MEMBERS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedMember {
    pub node_name: Box<[u8]>,
    pub node_id: NodeId,
    pub addr: Box<[u8]>,
}

impl From<&crate::wire::Member<'_>> for OwnedMember {
    fn from(m: &crate::wire::Member<'_>) -> OwnedMember {
        OwnedMember {
            node_name: m.node_name.into(),
            node_id: m.node_id,
            addr: m.addr.into(),
        }
    }
}

impl ShardMsg {
    /// Data messages may be shed when the link to their shard is backed up (the work fails
    /// with the protocol's error); all others carry state and are never dropped.
    pub fn is_data(&self) -> bool {
        matches!(
            self,
            ShardMsg::Publish { .. } | ShardMsg::Call { .. } | ShardMsg::LinkPublish { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_of_is_pinned_to_known_values() {
        let zero = NodeId([0; 32]);
        let ones = NodeId([0xff; 32]);
        let mut counting = [0u8; 32];
        for (i, b) in counting.iter_mut().enumerate() {
            *b = i as u8;
        }
        let counting = NodeId(counting);
        let got: Vec<u16> = [zero, ones, counting]
            .iter()
            .flat_map(|n| [owner_of(n, 2).0, owner_of(n, 16).0, owner_of(n, 256).0])
            .collect();
        assert_eq!(
            got, PINNED_OWNERS,
            "owner_of changed: nodes would move between shards"
        );
    }

    const PINNED_OWNERS: [u16; 9] = [1, 12, 199, 1, 11, 186, 1, 15, 249];

    #[test]
    fn owner_of_spreads_nodes_over_shards() {
        let mut counts = [0u32; 4];
        for i in 0u32..4000 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            counts[owner_of(&NodeId(id), 4).index()] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn call_token_round_trips_its_fields() {
        let t = CallToken::new(ShardId(200), 0xab_cdef, 0xdead_beef);
        assert_eq!(t.shard(), ShardId(200));
        assert_eq!(t.index(), 0xab_cdef);
        assert_eq!(t.generation(), 0xdead_beef);
    }
}
