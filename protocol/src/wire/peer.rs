//! The frames of a peer link between two gateways of a mesh (PROTOCOL.md 9.2 and 9.11),
//! borrowed from the frame they were decoded from, and their decoding (their encoding is in
//! `peer_encode.rs`).
//!
//! A peer link carries the five peer types (PEER_HELLO, PEER_AUTH, PEER_MEMBERS, INTEREST,
//! SYNC), PING, PONG and DISCONNECT as section 4 has them, and its own forms of PUBLISH, CALL,
//! REPLY and CANCEL ([`LinkPublish`], [`LinkCall`], [`LinkReply`], [`LinkCancel`]): these
//! carry the realm and the origin a hop needs, and an integer `call_id`, where a client's carry
//! none or any. The client path ([`Message`](super::Message)) is not changed by any of this.

use std::fmt;

use super::message::{
    decode_disconnect, decode_ping, decode_pong, malformed, required, CallFields, Fields,
    PublishFields, ReplyFields,
};
use super::msgpack::{ReadError, Reader};
use super::{Disconnect, FrameType, Outcome, Ping, Pong, Publish, Raw, Strings, WireError};
use crate::ids::NodeId;

/// The peer protocol's `version` in PEER_HELLO. Another value is refused `config_mismatch`
/// (9.3), not as a protocol error, so the decoder keeps whatever it gets.
pub const PEER_VERSION: &[u8] = b"1";

/// Bytes a peer link's payload may hold beyond `--max-frame`: room for the fields a hop adds
/// (`realm`, `publisher`, `caller`), 9.2.
pub const LINK_HEADROOM: u32 = 4 * 1024;

/// The payload limit of a peer link's frame reader, for a gateway's `--max-frame`.
pub fn link_max_frame(max_frame: u32) -> u32 {
    max_frame.saturating_add(LINK_HEADROOM)
}

/// The two streams of a peer link (9.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkStream {
    /// Stream 0: PEER_HELLO, PEER_AUTH, PEER_MEMBERS, INTEREST, SYNC, PING, PONG, DISCONNECT.
    Control,
    /// Stream 4: PUBLISH, CALL, REPLY, CANCEL.
    Data,
}

impl LinkStream {
    /// The stream a frame of type `frame_type` belongs to: [`WireError::UnknownType`] for a
    /// type of no section, [`WireError::NotOnLink`] for a client-only one.
    ///
    /// The one exception of 9.2 is not this function's: the dialer's first frame on the data
    /// stream is a PING, answered by one PONG there. The link's state knows when that is.
    pub fn of(frame_type: u8) -> Result<LinkStream, WireError> {
        match FrameType::from_u8(frame_type) {
            None => Err(WireError::UnknownType(frame_type)),
            Some(ty) => ty.link_stream().ok_or(WireError::NotOnLink(frame_type)),
        }
    }

    /// Checks that a frame of type `frame_type` may arrive on this stream: as [`of`], and
    /// [`WireError::WrongStream`] for a frame of the other stream.
    ///
    /// [`of`]: LinkStream::of
    pub fn check(self, frame_type: u8) -> Result<(), WireError> {
        if LinkStream::of(frame_type)? == self {
            Ok(())
        } else {
            Err(WireError::WrongStream(frame_type))
        }
    }
}

impl FrameType {
    /// The stream of a peer link this type travels on, `None` for a client-only type.
    pub fn link_stream(self) -> Option<LinkStream> {
        match self {
            FrameType::PeerHello
            | FrameType::PeerAuth
            | FrameType::PeerMembers
            | FrameType::Interest
            | FrameType::Sync
            | FrameType::Ping
            | FrameType::Pong
            | FrameType::Disconnect => Some(LinkStream::Control),
            FrameType::Publish | FrameType::Call | FrameType::Reply | FrameType::Cancel => {
                Some(LinkStream::Data)
            }
            FrameType::Connect
            | FrameType::Error
            | FrameType::Subscribe
            | FrameType::Unsubscribe
            | FrameType::Register
            | FrameType::Unregister => None,
        }
    }
}

/// PEER_HELLO: who a gateway is, what it serves, and (from the acceptor) its proof (9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerHello<'a> {
    /// [`PEER_VERSION`] from a gateway of this protocol.
    pub version: &'a [u8],
    /// The node_id the gateway gives in its CONNECT answers.
    pub node_id: NodeId,
    pub node_name: &'a [u8],
    /// Milliseconds since the Unix epoch at the gateway's start-up: larger is newer.
    pub incarnation: u64,
    /// Random per link: the other side's proof covers it.
    pub nonce: &'a [u8; 32],
    /// `HOST:PORT`, the address peers are told to dial (not parsed here).
    pub advertise: &'a [u8],
    /// The realms served, each with its auth digest (9.9).
    pub realms: Entries<'a, RealmDigest<'a>>,
    /// The gateway's `--max-frame`. Another value than one's own is `config_mismatch`.
    pub max_frame: u64,
    /// Sent by the dialer only. The acceptor needs it: its absence there is a protocol error,
    /// which the decoder cannot tell (it does not know who sent the frame).
    pub dial: Option<Dial>,
    /// Sent by the acceptor only. Its absence is `unauthorized`, not a protocol error (9.3).
    pub proof: Option<&'a [u8; 32]>,
}

/// The dialer's fields of PEER_HELLO, both present or both absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dial {
    /// Wire key `dial_seq`: the dialer's dials since its start-up (9.3, newest dial wins).
    pub seq: u64,
    /// Whether the dial was made because of gossip (9.4).
    pub gossip: bool,
}

/// PEER_AUTH: the dialer's proof (9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAuth<'a> {
    pub proof: &'a [u8; 32],
}

/// PEER_MEMBERS: the gateways the sender has an admitted link to (9.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerMembers<'a> {
    pub members: Entries<'a, Member<'a>>,
}

/// INTEREST: changes of the sender's local interest in one realm (9.6). An absent list and an
/// empty one are the same; an empty one is left out when encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest<'a> {
    pub realm: &'a [u8],
    /// Patterns added (wire key `sub_add`).
    pub sub_add: Strings<'a>,
    /// Patterns removed (wire key `sub_del`).
    pub sub_del: Strings<'a>,
    /// Procedures and their absolute number of live local providers, 0 for none.
    pub procs: Entries<'a, ProcCount<'a>>,
}

/// SYNC: the frame around an interest snapshot, or the digest check (9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncMsg<'a> {
    pub realm: &'a [u8],
    pub phase: SyncPhase,
}

/// SYNC `phase`, with the `digest` that only the phase `digest` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncPhase {
    /// A snapshot starts: the receiver builds a fresh table.
    Begin,
    /// The snapshot is whole: it replaces the receiver's table.
    End,
    /// The digest of what the sender has advertised.
    Digest(u64),
    /// The receiver's table differs: send a snapshot.
    Request,
}

impl SyncPhase {
    /// The string sent in `phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncPhase::Begin => "begin",
            SyncPhase::End => "end",
            SyncPhase::Digest(_) => "digest",
            SyncPhase::Request => "request",
        }
    }
}

/// PUBLISH on a link: what a client published, with the realm and the publishing client's
/// node_id (9.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkPublish<'a> {
    pub realm: &'a [u8],
    pub publisher: NodeId,
    pub topic: &'a [u8],
    pub payload: &'a [u8],
    pub qos: Option<u64>,
    pub retain: Option<bool>,
    /// Exactly 16 bytes when present.
    pub message_id: Option<&'a [u8]>,
}

/// CALL on a link, forwarded by the caller's gateway (9.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkCall<'a> {
    pub realm: &'a [u8],
    pub procedure: &'a [u8],
    /// `nil` when the key is absent, as for a client's CALL.
    pub args: Raw<'a>,
    /// Chosen by the caller's gateway, unique among its calls in flight on the link.
    pub call_id: u64,
    /// Wire key `timeout`: the caller's remaining time in milliseconds, at least 1.
    pub timeout_ms: u64,
    /// The calling client's node_id.
    pub caller: NodeId,
}

/// REPLY on a link, to the `call_id` of a [`LinkCall`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkReply<'a> {
    pub call_id: u64,
    pub outcome: Outcome<'a>,
}

/// CANCEL on a link, from the caller's gateway (9.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkCancel<'a> {
    pub call_id: u64,
    /// `caller_gone` or `timeout`, passed on to the provider as received.
    pub reason: &'a [u8],
}

/// Any frame a peer link carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerMessage<'a> {
    Hello(PeerHello<'a>),
    Auth(PeerAuth<'a>),
    Members(PeerMembers<'a>),
    Interest(Interest<'a>),
    Sync(SyncMsg<'a>),
    Ping(Ping),
    /// Never with `node_id` on a link.
    Pong(Pong),
    Disconnect(Disconnect<'a>),
    Publish(LinkPublish<'a>),
    Call(LinkCall<'a>),
    Reply(LinkReply<'a>),
    Cancel(LinkCancel<'a>),
}

impl<'a> PeerMessage<'a> {
    /// The frame type this message travels as.
    pub fn frame_type(&self) -> FrameType {
        match self {
            PeerMessage::Hello(_) => FrameType::PeerHello,
            PeerMessage::Auth(_) => FrameType::PeerAuth,
            PeerMessage::Members(_) => FrameType::PeerMembers,
            PeerMessage::Interest(_) => FrameType::Interest,
            PeerMessage::Sync(_) => FrameType::Sync,
            PeerMessage::Ping(_) => FrameType::Ping,
            PeerMessage::Pong(_) => FrameType::Pong,
            PeerMessage::Disconnect(_) => FrameType::Disconnect,
            PeerMessage::Publish(_) => FrameType::Publish,
            PeerMessage::Call(_) => FrameType::Call,
            PeerMessage::Reply(_) => FrameType::Reply,
            PeerMessage::Cancel(_) => FrameType::Cancel,
        }
    }

    /// The stream of the link this message travels on.
    pub fn stream(&self) -> LinkStream {
        match self {
            PeerMessage::Publish(_)
            | PeerMessage::Call(_)
            | PeerMessage::Reply(_)
            | PeerMessage::Cancel(_) => LinkStream::Data,
            _ => LinkStream::Control,
        }
    }

    /// Decodes the payload of a frame of type `frame_type` received on a peer link.
    ///
    /// As [`Message::decode`](super::Message::decode): one map, bin or str for keys and
    /// strings, any integer form, unknown keys skipped. A client-only type is
    /// [`WireError::NotOnLink`]; which stream the frame came on is [`LinkStream::check`]'s.
    pub fn decode(frame_type: u8, payload: &'a [u8]) -> Result<PeerMessage<'a>, WireError> {
        let Some(ty) = FrameType::from_u8(frame_type) else {
            return Err(WireError::UnknownType(frame_type));
        };
        if ty.link_stream().is_none() {
            return Err(WireError::NotOnLink(frame_type));
        }
        let f = &mut Fields::open(payload)?;
        Ok(match ty {
            FrameType::PeerHello => PeerMessage::Hello(decode_hello(f)?),
            FrameType::PeerAuth => PeerMessage::Auth(decode_auth(f)?),
            FrameType::PeerMembers => PeerMessage::Members(PeerMembers {
                members: decode_one(f, "members", |f| f.entries("members"))?,
            }),
            FrameType::Interest => PeerMessage::Interest(decode_interest(f)?),
            FrameType::Sync => PeerMessage::Sync(decode_sync(f)?),
            FrameType::Ping => PeerMessage::Ping(decode_ping(f)?),
            FrameType::Pong => PeerMessage::Pong(decode_link_pong(f)?),
            FrameType::Disconnect => PeerMessage::Disconnect(decode_disconnect(f)?),
            FrameType::Publish => PeerMessage::Publish(decode_publish(f)?),
            FrameType::Call => PeerMessage::Call(decode_call(f)?),
            FrameType::Reply => PeerMessage::Reply(decode_reply(f)?),
            FrameType::Cancel => PeerMessage::Cancel(decode_cancel(f)?),
            FrameType::Connect
            | FrameType::Error
            | FrameType::Subscribe
            | FrameType::Unsubscribe
            | FrameType::Register
            | FrameType::Unregister => {
                debug_assert!(false, "client-only types are refused above");
                return Err(WireError::NotOnLink(frame_type));
            }
        })
    }
}

impl<'a> LinkPublish<'a> {
    /// The PUBLISH a gateway sends on a link for its client's `publish` (9.7): the fields the
    /// client sent, with the realm and the client's node_id.
    pub fn forwarded(realm: &'a [u8], publisher: NodeId, publish: &Publish<'a>) -> LinkPublish<'a> {
        LinkPublish {
            realm,
            publisher,
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            message_id: publish.message_id,
        }
    }

    /// The PUBLISH the receiving gateway delivers to its sessions (9.7): the fields as
    /// received, with `publisher`.
    pub fn delivery(&self) -> Publish<'a> {
        Publish {
            topic: self.topic,
            payload: self.payload,
            qos: self.qos,
            retain: self.retain,
            message_id: self.message_id,
            publisher: Some(self.publisher),
        }
    }
}

/// An entry of a list a peer frame carries: PEER_HELLO `realms`, PEER_MEMBERS `members`,
/// INTEREST `procs`.
pub trait Entry<'a>: Copy + PartialEq + fmt::Debug {
    /// Whether the list is a map, each entry a key and its value, rather than an array.
    const IN_MAP: bool;

    /// Reads one entry (its key and value, in a map), checking it.
    fn read(r: &mut Reader<'a>) -> Result<Self, WireError>;

    /// Appends the entry (its key and value, in a map), keys and strings as bin.
    fn write(&self, out: &mut Vec<u8>);
}

/// A list of entries: either still encoded as received, or a slice given by the sender.
/// Compared by content, in order. Keys repeated in a map are kept as received; what a
/// repeated realm or procedure means is the receiver's to decide.
#[derive(Clone, Copy, Debug)]
pub enum Entries<'a, T> {
    /// A MessagePack map or array of `len` entries, checked when decoded.
    Encoded { raw: &'a [u8], len: u32 },
    /// Entries given by the sender, for encoding.
    List(&'a [T]),
}

impl<'a, T: Entry<'a>> Entries<'a, T> {
    pub fn len(&self) -> usize {
        match self {
            Entries::Encoded { len, .. } => *len as usize,
            Entries::List(list) => list.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries, in order.
    ///
    /// For [`Entries::Encoded`], at most `len` of them; the iteration stops early at an entry
    /// that does not read (which a decoded value never holds).
    pub fn iter(&self) -> impl Iterator<Item = T> + 'a {
        match *self {
            Entries::List(list) => EntriesIter::List(list.iter()),
            Entries::Encoded { raw, len } => {
                let mut r = Reader::new(raw);
                let head = if T::IN_MAP {
                    r.read_map_len()
                } else {
                    r.read_array_len()
                };
                let left = head.map_or(0, |n| n.min(len));
                EntriesIter::Encoded { r, left }
            }
        }
    }
}

impl<T> Default for Entries<'_, T> {
    fn default() -> Self {
        Entries::List(&[])
    }
}

impl<'a, T: Entry<'a>> PartialEq for Entries<'a, T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}
impl<'a, T: Entry<'a>> Eq for Entries<'a, T> {}

enum EntriesIter<'a, T> {
    List(std::slice::Iter<'a, T>),
    Encoded { r: Reader<'a>, left: u32 },
}

impl<'a, T: Entry<'a>> Iterator for EntriesIter<'a, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match self {
            EntriesIter::List(list) => list.next().copied(),
            EntriesIter::Encoded { r, left } => {
                *left = left.checked_sub(1)?;
                let entry = T::read(r).ok();
                if entry.is_none() {
                    *left = 0;
                }
                entry
            }
        }
    }
}

/// A realm a gateway serves and its auth digest (9.9): one entry of PEER_HELLO `realms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RealmDigest<'a> {
    pub realm: &'a [u8],
    /// `None` (empty bin on the wire) for a realm without tokens.
    pub digest: Option<&'a [u8; 32]>,
}

impl<'a> RealmDigest<'a> {
    /// The digest as the wire carries it: empty for a realm without tokens.
    pub fn digest_bytes(&self) -> &'a [u8] {
        self.digest.map_or(&[], |d| &d[..])
    }
}

impl<'a> Entry<'a> for RealmDigest<'a> {
    const IN_MAP: bool = true;

    fn read(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let realm = r.read_bytes().map_err(bad("realms"))?;
        let digest = match r.read_bytes().map_err(bad("realms"))? {
            [] => None,
            d => Some(d.try_into().map_err(|_| WireError::BadField("realms"))?),
        };
        Ok(RealmDigest { realm, digest })
    }

    fn write(&self, out: &mut Vec<u8>) {
        super::msgpack::write_bin(out, self.realm);
        super::msgpack::write_bin(out, self.digest_bytes());
    }
}

/// A gateway of the mesh: one entry of PEER_MEMBERS `members`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    pub node_name: &'a [u8],
    pub node_id: NodeId,
    /// Its advertised `HOST:PORT` (wire key `addr`).
    pub addr: &'a [u8],
}

impl<'a> Entry<'a> for Member<'a> {
    const IN_MAP: bool = false;

    fn read(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let raw = r.skip().map_err(malformed)?;
        let mut f = Fields::open(raw).map_err(|_| WireError::BadField("members"))?;
        let (mut node_name, mut node_id, mut addr) = (None, None, None);
        while let Some(key) = f.next_key()? {
            match key {
                b"node_name" => node_name = Some(f.bytes("node_name")?),
                b"node_id" => node_id = Some(f.node_id("node_id")?),
                b"addr" => addr = Some(f.bytes("addr")?),
                _ => f.skip()?,
            }
        }
        Ok(Member {
            node_name: required(node_name, "node_name")?,
            node_id: required(node_id, "node_id")?,
            addr: required(addr, "addr")?,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        super::peer_encode::write_member(self, out);
    }
}

/// A procedure and its number of live local providers: one entry of INTEREST `procs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcCount<'a> {
    pub procedure: &'a [u8],
    /// At most `u32::MAX`, the width the interest digest gives it (9.6).
    pub count: u32,
}

impl<'a> Entry<'a> for ProcCount<'a> {
    const IN_MAP: bool = true;

    fn read(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let procedure = r.read_bytes().map_err(bad("procs"))?;
        let count = r.read_uint().map_err(bad("procs"))?;
        let count = u32::try_from(count).map_err(|_| WireError::BadField("procs"))?;
        Ok(ProcCount { procedure, count })
    }

    fn write(&self, out: &mut Vec<u8>) {
        super::msgpack::write_bin(out, self.procedure);
        super::msgpack::write_uint(out, u64::from(self.count));
    }
}

/// A read error of field `name`'s value: the wrong type is [`WireError::BadField`].
fn bad(name: &'static str) -> impl Fn(ReadError) -> WireError {
    move |e| match e {
        ReadError::WrongType => WireError::BadField(name),
        e => malformed(e),
    }
}

impl<'a> Fields<'a> {
    /// A list of entries, each checked, kept encoded.
    fn entries<T: Entry<'a>>(&mut self, name: &'static str) -> Result<Entries<'a, T>, WireError> {
        let start = self.r.rest();
        let head = if T::IN_MAP {
            Reader::read_map_len
        } else {
            Reader::read_array_len
        };
        let len = self.value(name, head)?;
        for _ in 0..len {
            T::read(&mut self.r)?;
        }
        let raw = &start[..start.len() - self.r.rest().len()];
        Ok(Entries::Encoded { raw, len })
    }

    /// A link's `call_id`: an integer of at most 64 bits, not negative (9.8).
    fn link_call_id(&mut self) -> Result<u64, WireError> {
        self.uint("call_id")
    }
}

/// A message of one required field, read by `read`.
fn decode_one<'a, T>(
    f: &mut Fields<'a>,
    name: &'static str,
    mut read: impl FnMut(&mut Fields<'a>) -> Result<T, WireError>,
) -> Result<T, WireError> {
    let mut value = None;
    while let Some(key) = f.next_key()? {
        if key == name.as_bytes() {
            value = Some(read(f)?);
        } else {
            f.skip()?;
        }
    }
    required(value, name)
}

fn decode_hello<'a>(f: &mut Fields<'a>) -> Result<PeerHello<'a>, WireError> {
    let (mut version, mut node_id, mut node_name, mut incarnation, mut nonce) =
        (None, None, None, None, None);
    let (mut advertise, mut realms, mut max_frame, mut dial_seq, mut gossip, mut proof) =
        (None, None, None, None, None, None);
    while let Some(key) = f.next_key()? {
        match key {
            b"version" => version = Some(f.bytes("version")?),
            b"node_id" => node_id = Some(f.node_id("node_id")?),
            b"node_name" => node_name = Some(f.bytes("node_name")?),
            b"incarnation" => incarnation = Some(f.uint("incarnation")?),
            b"nonce" => nonce = Some(f.fixed::<32>("nonce")?),
            b"advertise" => advertise = Some(f.bytes("advertise")?),
            b"realms" => realms = Some(f.entries("realms")?),
            b"max_frame" => max_frame = Some(f.uint("max_frame")?),
            b"dial_seq" => dial_seq = f.optional(|f| f.uint("dial_seq"))?,
            b"gossip" => gossip = f.optional(|f| f.bool("gossip"))?,
            b"proof" => proof = f.optional(|f| f.fixed::<32>("proof"))?,
            _ => f.skip()?,
        }
    }
    let dial = match (dial_seq, gossip) {
        (Some(seq), Some(gossip)) => Some(Dial { seq, gossip }),
        (None, None) => None,
        (Some(_), None) => return Err(WireError::MissingField("gossip")),
        (None, Some(_)) => return Err(WireError::MissingField("dial_seq")),
    };
    Ok(PeerHello {
        version: required(version, "version")?,
        node_id: required(node_id, "node_id")?,
        node_name: required(node_name, "node_name")?,
        incarnation: required(incarnation, "incarnation")?,
        nonce: required(nonce, "nonce")?,
        advertise: required(advertise, "advertise")?,
        realms: required(realms, "realms")?,
        max_frame: required(max_frame, "max_frame")?,
        dial,
        proof,
    })
}

fn decode_auth<'a>(f: &mut Fields<'a>) -> Result<PeerAuth<'a>, WireError> {
    let proof = decode_one(f, "proof", |f| f.fixed::<32>("proof"))?;
    Ok(PeerAuth { proof })
}

fn decode_interest<'a>(f: &mut Fields<'a>) -> Result<Interest<'a>, WireError> {
    let (mut realm, mut sub_add, mut sub_del, mut procs) = (None, None, None, None);
    while let Some(key) = f.next_key()? {
        match key {
            b"realm" => realm = Some(f.bytes("realm")?),
            b"sub_add" => sub_add = f.optional(|f| f.strings("sub_add"))?,
            b"sub_del" => sub_del = f.optional(|f| f.strings("sub_del"))?,
            b"procs" => procs = f.optional(|f| f.entries("procs"))?,
            _ => f.skip()?,
        }
    }
    Ok(Interest {
        realm: required(realm, "realm")?,
        sub_add: sub_add.unwrap_or(Strings::List(&[])),
        sub_del: sub_del.unwrap_or(Strings::List(&[])),
        procs: procs.unwrap_or_default(),
    })
}

fn decode_sync<'a>(f: &mut Fields<'a>) -> Result<SyncMsg<'a>, WireError> {
    let (mut realm, mut phase, mut digest) = (None, None, None);
    while let Some(key) = f.next_key()? {
        match key {
            b"realm" => realm = Some(f.bytes("realm")?),
            b"phase" => phase = Some(f.bytes("phase")?),
            b"digest" => digest = f.optional(|f| f.uint("digest"))?,
            _ => f.skip()?,
        }
    }
    let realm = required(realm, "realm")?;
    let phase = match (required(phase, "phase")?, digest) {
        (b"digest", Some(digest)) => SyncPhase::Digest(digest),
        (b"digest", None) => return Err(WireError::MissingField("digest")),
        // Only the phase `digest` carries one: anything else is the sender's mistake.
        (_, Some(_)) => return Err(WireError::BadField("digest")),
        (b"begin", None) => SyncPhase::Begin,
        (b"end", None) => SyncPhase::End,
        (b"request", None) => SyncPhase::Request,
        (_, None) => return Err(WireError::BadField("phase")),
    };
    Ok(SyncMsg { realm, phase })
}

/// PONG as section 4 has it, without `node_id`: only a CONNECT answer carries one, and a link
/// has none (9.11).
fn decode_link_pong(f: &mut Fields<'_>) -> Result<Pong, WireError> {
    let pong = decode_pong(f)?;
    if pong.node_id.is_some() {
        return Err(WireError::BadField("node_id"));
    }
    Ok(pong)
}

fn decode_publish<'a>(f: &mut Fields<'a>) -> Result<LinkPublish<'a>, WireError> {
    let (mut realm, mut publish) = (None, PublishFields::default());
    while let Some(key) = f.next_key()? {
        match key {
            b"realm" => realm = Some(f.bytes("realm")?),
            _ => publish.read(key, f)?,
        }
    }
    let realm = required(realm, "realm")?;
    let p = publish.finish()?;
    Ok(LinkPublish {
        realm,
        publisher: required(p.publisher, "publisher")?,
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        message_id: p.message_id,
    })
}

fn decode_call<'a>(f: &mut Fields<'a>) -> Result<LinkCall<'a>, WireError> {
    let (mut realm, mut call_id, mut caller) = (None, None, None);
    let mut call = CallFields::default();
    while let Some(key) = f.next_key()? {
        match key {
            b"realm" => realm = Some(f.bytes("realm")?),
            b"call_id" => call_id = Some(f.link_call_id()?),
            b"caller" => caller = Some(f.node_id("caller")?),
            _ => call.read(key, f)?,
        }
    }
    let realm = required(realm, "realm")?;
    let c = call.finish()?;
    let timeout_ms = required(c.timeout_ms, "timeout")?;
    if timeout_ms == 0 {
        return Err(WireError::BadField("timeout"));
    }
    Ok(LinkCall {
        realm,
        procedure: c.procedure,
        args: c.args,
        call_id: required(call_id, "call_id")?,
        timeout_ms,
        caller: required(caller, "caller")?,
    })
}

fn decode_reply<'a>(f: &mut Fields<'a>) -> Result<LinkReply<'a>, WireError> {
    let (mut call_id, mut reply) = (None, ReplyFields::default());
    while let Some(key) = f.next_key()? {
        match key {
            b"call_id" => call_id = Some(f.link_call_id()?),
            _ => reply.read(key, f)?,
        }
    }
    let outcome = reply.finish()?.outcome;
    Ok(LinkReply {
        call_id: required(call_id, "call_id")?,
        outcome,
    })
}

fn decode_cancel<'a>(f: &mut Fields<'a>) -> Result<LinkCancel<'a>, WireError> {
    let (mut call_id, mut reason) = (None, None);
    while let Some(key) = f.next_key()? {
        match key {
            b"call_id" => call_id = Some(f.link_call_id()?),
            b"reason" => reason = Some(f.bytes("reason")?),
            _ => f.skip()?,
        }
    }
    Ok(LinkCancel {
        call_id: required(call_id, "call_id")?,
        reason: required(reason, "reason")?,
    })
}
