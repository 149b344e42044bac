//! Typed messages of PROTOCOL.md section 4, borrowed from the frame they were decoded from, and
//! their decoding (their encoding is in `encode.rs`).

use rmp::Marker;

use super::msgpack::{Int, ReadError, Reader};
use super::WireError;
use crate::ids::NodeId;

/// The frame type byte of each message: those of section 4, then the peer-link types of
/// section 9.11, which [`Message::decode`] refuses as unknown (only a peer link carries them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Connect = 0x01,
    Disconnect = 0x02,
    Ping = 0x03,
    Pong = 0x04,
    Error = 0x05,
    Publish = 0x10,
    Subscribe = 0x11,
    Unsubscribe = 0x12,
    Call = 0x20,
    Reply = 0x21,
    Register = 0x26,
    Unregister = 0x27,
    Cancel = 0x28,
    PeerHello = 0x29,
    PeerAuth = 0x2a,
    PeerMembers = 0x2b,
    Interest = 0x2c,
    Sync = 0x2d,
}

impl FrameType {
    pub fn from_u8(b: u8) -> Option<FrameType> {
        Some(match b {
            0x01 => FrameType::Connect,
            0x02 => FrameType::Disconnect,
            0x03 => FrameType::Ping,
            0x04 => FrameType::Pong,
            0x05 => FrameType::Error,
            0x10 => FrameType::Publish,
            0x11 => FrameType::Subscribe,
            0x12 => FrameType::Unsubscribe,
            0x20 => FrameType::Call,
            0x21 => FrameType::Reply,
            0x26 => FrameType::Register,
            0x27 => FrameType::Unregister,
            0x28 => FrameType::Cancel,
            0x29 => FrameType::PeerHello,
            0x2a => FrameType::PeerAuth,
            0x2b => FrameType::PeerMembers,
            0x2c => FrameType::Interest,
            0x2d => FrameType::Sync,
            _ => return None,
        })
    }

    /// Whether only a peer link carries this type (0x29 to 0x2D, section 9.11).
    pub fn is_peer_only(self) -> bool {
        matches!(
            self,
            FrameType::PeerHello
                | FrameType::PeerAuth
                | FrameType::PeerMembers
                | FrameType::Interest
                | FrameType::Sync
        )
    }

    /// The frame's name as PROTOCOL.md writes it (`PUBLISH`, `PEER_HELLO`), as in the `type`
    /// label of the peer frame counters (9.11).
    pub fn name(self) -> &'static str {
        match self {
            FrameType::Connect => "CONNECT",
            FrameType::Disconnect => "DISCONNECT",
            FrameType::Ping => "PING",
            FrameType::Pong => "PONG",
            FrameType::Error => "ERROR",
            FrameType::Publish => "PUBLISH",
            FrameType::Subscribe => "SUBSCRIBE",
            FrameType::Unsubscribe => "UNSUBSCRIBE",
            FrameType::Call => "CALL",
            FrameType::Reply => "REPLY",
            FrameType::Register => "REGISTER_PROCEDURE",
            FrameType::Unregister => "UNREGISTER_PROCEDURE",
            FrameType::Cancel => "CANCEL",
            FrameType::PeerHello => "PEER_HELLO",
            FrameType::PeerAuth => "PEER_AUTH",
            FrameType::PeerMembers => "PEER_MEMBERS",
            FrameType::Interest => "INTEREST",
            FrameType::Sync => "SYNC",
        }
    }
}

/// One complete MessagePack value, kept as its encoded bytes (CALL `args`, REPLY `result`,
/// CONNECT `capabilities`): the gateway forwards it without looking inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raw<'a>(pub &'a [u8]);

/// A list of strings (SUBSCRIBE and UNSUBSCRIBE `topics`): either still encoded as received,
/// or a slice given by the sender. Compared by content.
#[derive(Clone, Copy, Debug)]
pub enum Strings<'a> {
    /// A MessagePack array of `len` bin/str values, validated when decoded.
    Encoded { raw: &'a [u8], len: u32 },
    /// Strings given by the sender, for encoding.
    List(&'a [&'a [u8]]),
}

/// A CALL's `call_id`: opaque to the gateway, echoed as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallIdRef<'a> {
    /// A non-negative integer.
    Uint(u64),
    /// A negative integer.
    Int(i64),
    /// Bytes (bin, or str accepted as bytes), at most [`MAX_CALL_ID_LEN`].
    Bytes(&'a [u8]),
}

/// The longest `call_id` accepted, in bytes.
pub const MAX_CALL_ID_LEN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connect<'a> {
    pub version: &'a [u8],
    pub node_id: NodeId,
    pub realm: &'a [u8],
    pub capabilities: Option<Raw<'a>>,
    pub token: Option<&'a [u8]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disconnect<'a> {
    pub reason: &'a [u8],
    pub message: Option<&'a [u8]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping {
    pub timestamp: u64,
    /// (extension, PROTOCOL.md 9.6) Answer only once the session's earlier changes are in
    /// effect on every gateway of the mesh. Written only when true.
    pub mesh: bool,
}

impl Ping {
    /// A PING as clients send it without `mesh`.
    pub fn new(timestamp: u64) -> Ping {
        Ping {
            timestamp,
            mesh: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pong {
    pub timestamp: u64,
    pub server_time: u64,
    pub node_id: Option<NodeId>,
}

/// ERROR (extension): a refused request that leaves the session open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorMsg<'a> {
    pub code: &'a [u8],
    pub message: &'a [u8],
    /// The type byte of the frame this error answers (wire key `type`).
    pub frame_type: u64,
    pub topic: Option<&'a [u8]>,
    pub procedure: Option<&'a [u8]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    pub topic: &'a [u8],
    pub payload: &'a [u8],
    pub qos: Option<u64>,
    pub retain: Option<bool>,
    /// Exactly 16 bytes when present.
    pub message_id: Option<&'a [u8]>,
    /// Set by the server on delivery.
    pub publisher: Option<NodeId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub topics: Strings<'a>,
    pub qos: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    pub topics: Strings<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call<'a> {
    pub procedure: &'a [u8],
    /// `nil` when the key is absent.
    pub args: Raw<'a>,
    /// `None` when absent: the gateway answers such a CALL with `invalid_call`, so the
    /// decoder accepts it (and a `call_id` over [`MAX_CALL_ID_LEN`]) rather than failing.
    pub call_id: Option<CallIdRef<'a>>,
    /// Wire key `timeout`, in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// A REPLY's outcome: exactly one of `result` and `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    Result(Raw<'a>),
    Error {
        code: &'a [u8],
        message: Option<&'a [u8]>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply<'a> {
    /// `None` when absent (the answer to a CALL that had none).
    pub call_id: Option<CallIdRef<'a>>,
    pub outcome: Outcome<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Register<'a> {
    pub procedure: &'a [u8],
    /// Wire key `ttl`, in seconds.
    pub ttl_s: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unregister<'a> {
    pub procedure: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancel<'a> {
    pub call_id: CallIdRef<'a>,
    pub reason: &'a [u8],
}

/// Any message of section 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Connect(Connect<'a>),
    Disconnect(Disconnect<'a>),
    Ping(Ping),
    Pong(Pong),
    Error(ErrorMsg<'a>),
    Publish(Publish<'a>),
    Subscribe(Subscribe<'a>),
    Unsubscribe(Unsubscribe<'a>),
    Call(Call<'a>),
    Reply(Reply<'a>),
    Register(Register<'a>),
    Unregister(Unregister<'a>),
    Cancel(Cancel<'a>),
}

impl<'a> Message<'a> {
    /// The frame type this message travels as.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Message::Connect(_) => FrameType::Connect,
            Message::Disconnect(_) => FrameType::Disconnect,
            Message::Ping(_) => FrameType::Ping,
            Message::Pong(_) => FrameType::Pong,
            Message::Error(_) => FrameType::Error,
            Message::Publish(_) => FrameType::Publish,
            Message::Subscribe(_) => FrameType::Subscribe,
            Message::Unsubscribe(_) => FrameType::Unsubscribe,
            Message::Call(_) => FrameType::Call,
            Message::Reply(_) => FrameType::Reply,
            Message::Register(_) => FrameType::Register,
            Message::Unregister(_) => FrameType::Unregister,
            Message::Cancel(_) => FrameType::Cancel,
        }
    }

    /// Decodes the payload of a frame of type `frame_type`.
    ///
    /// The payload must be exactly one map. Keys and string values may be bin or str, integers
    /// any MessagePack integer form, and keys the message does not know are skipped whatever
    /// their value. The peer-link types (0x29 to 0x2D) are unknown here: a `macula`
    /// connection never carries them (9.2).
    pub fn decode(frame_type: u8, payload: &'a [u8]) -> Result<Message<'a>, WireError> {
        let Some(ty) = FrameType::from_u8(frame_type).filter(|ty| !ty.is_peer_only()) else {
            return Err(WireError::UnknownType(frame_type));
        };
        let mut f = Fields::open(payload)?;
        Ok(match ty {
            FrameType::Connect => Message::Connect(decode_connect(&mut f)?),
            FrameType::Disconnect => Message::Disconnect(decode_disconnect(&mut f)?),
            FrameType::Ping => Message::Ping(decode_ping(&mut f)?),
            FrameType::Pong => Message::Pong(decode_pong(&mut f)?),
            FrameType::Error => Message::Error(decode_error(&mut f)?),
            FrameType::Publish => Message::Publish(decode_publish(&mut f)?),
            FrameType::Subscribe => Message::Subscribe(decode_subscribe(&mut f)?),
            FrameType::Unsubscribe => Message::Unsubscribe(decode_unsubscribe(&mut f)?),
            FrameType::Call => Message::Call(decode_call(&mut f)?),
            FrameType::Reply => Message::Reply(decode_reply(&mut f)?),
            FrameType::Register => Message::Register(decode_register(&mut f)?),
            FrameType::Unregister => Message::Unregister(decode_unregister(&mut f)?),
            FrameType::Cancel => Message::Cancel(decode_cancel(&mut f)?),
            FrameType::PeerHello
            | FrameType::PeerAuth
            | FrameType::PeerMembers
            | FrameType::Interest
            | FrameType::Sync => {
                debug_assert!(false, "peer-only types are refused above");
                return Err(WireError::UnknownType(frame_type));
            }
        })
    }
}

impl<'a> Publish<'a> {
    /// A PUBLISH of `payload` to `topic` as a client sends it: no QoS, retain flag, message id
    /// or publisher.
    pub fn new(topic: &'a [u8], payload: &'a [u8]) -> Publish<'a> {
        Publish {
            topic,
            payload,
            qos: None,
            retain: None,
            message_id: None,
            publisher: None,
        }
    }
}

impl<'a> Strings<'a> {
    pub fn len(&self) -> usize {
        match self {
            Strings::Encoded { len, .. } => *len as usize,
            Strings::List(list) => list.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The strings, in order.
    ///
    /// For [`Strings::Encoded`], at most `len` strings; the iteration stops early at anything
    /// in `raw` that is not bin or str (which a decoded value never holds).
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        match *self {
            Strings::List(list) => StringsIter::List(list.iter()),
            Strings::Encoded { raw, len } => {
                let mut r = Reader::new(raw);
                let left = r.read_array_len().map_or(0, |n| n.min(len));
                StringsIter::Encoded { r, left }
            }
        }
    }
}

impl PartialEq for Strings<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}
impl Eq for Strings<'_> {}

enum StringsIter<'a> {
    List(std::slice::Iter<'a, &'a [u8]>),
    Encoded { r: Reader<'a>, left: u32 },
}

impl<'a> Iterator for StringsIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            StringsIter::List(list) => list.next().copied(),
            StringsIter::Encoded { r, left } => {
                *left = left.checked_sub(1)?;
                let s = r.read_bytes().ok();
                if s.is_none() {
                    *left = 0;
                }
                s
            }
        }
    }
}

/// The encoding of `nil`: CALL `args` when the key is absent.
pub(super) const NIL: &[u8] = &[0xc0];

/// The entries of a payload's map, read one key at a time.
pub(super) struct Fields<'a> {
    pub(super) r: Reader<'a>,
    left: u32,
}

impl<'a> Fields<'a> {
    /// Opens the map that must make up the whole of `payload`.
    pub(super) fn open(payload: &'a [u8]) -> Result<Fields<'a>, WireError> {
        let mut r = Reader::new(payload);
        match r.read_map_len() {
            Ok(left) => Ok(Fields { r, left }),
            Err(ReadError::WrongType) => {
                let mut whole = Reader::new(payload);
                whole.skip().map_err(malformed)?;
                if whole.is_empty() {
                    Err(WireError::NotAMap)
                } else {
                    Err(WireError::Malformed("bytes after the payload's value"))
                }
            }
            Err(e) => Err(malformed(e)),
        }
    }

    /// The next key, or `None` after the last entry, once it is checked that nothing follows
    /// the map. A key that is neither bin nor str is skipped and reads as empty, which names no
    /// field.
    pub(super) fn next_key(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        let Some(left) = self.left.checked_sub(1) else {
            if !self.r.is_empty() {
                return Err(WireError::Malformed("bytes after the payload's map"));
            }
            return Ok(None);
        };
        self.left = left;
        match self.r.read_bytes() {
            Ok(key) => Ok(Some(key)),
            Err(ReadError::WrongType) => {
                self.r.skip().map_err(malformed)?;
                Ok(Some(&[]))
            }
            Err(e) => Err(malformed(e)),
        }
    }

    /// An optional field's value: `nil` counts as absent, as some Macula v0 peers send it for
    /// an unset field.
    pub(super) fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, WireError>,
    ) -> Result<Option<T>, WireError> {
        if self.r.peek_marker().map_err(malformed)? == Marker::Null {
            self.skip()?;
            return Ok(None);
        }
        read(self).map(Some)
    }

    /// Skips the value of a key the message does not know.
    pub(super) fn skip(&mut self) -> Result<(), WireError> {
        self.r.skip().map(drop).map_err(malformed)
    }

    pub(super) fn value<T>(
        &mut self,
        name: &'static str,
        read: impl FnOnce(&mut Reader<'a>) -> Result<T, ReadError>,
    ) -> Result<T, WireError> {
        read(&mut self.r).map_err(|e| match e {
            ReadError::WrongType => WireError::BadField(name),
            e => malformed(e),
        })
    }

    pub(super) fn bytes(&mut self, name: &'static str) -> Result<&'a [u8], WireError> {
        self.value(name, Reader::read_bytes)
    }

    pub(super) fn uint(&mut self, name: &'static str) -> Result<u64, WireError> {
        self.value(name, Reader::read_uint)
    }

    pub(super) fn bool(&mut self, name: &'static str) -> Result<bool, WireError> {
        self.value(name, Reader::read_bool)
    }

    pub(super) fn raw(&mut self) -> Result<Raw<'a>, WireError> {
        self.r.skip().map(Raw).map_err(malformed)
    }

    /// Bytes of exactly `N` bytes.
    pub(super) fn fixed<const N: usize>(
        &mut self,
        name: &'static str,
    ) -> Result<&'a [u8; N], WireError> {
        let bytes = self.bytes(name)?;
        bytes.try_into().map_err(|_| WireError::BadField(name))
    }

    pub(super) fn node_id(&mut self, name: &'static str) -> Result<NodeId, WireError> {
        self.fixed::<32>(name).map(|id| NodeId(*id))
    }

    /// A `call_id`: an integer, or bin/str of any length.
    pub(super) fn call_id(&mut self, name: &'static str) -> Result<CallIdRef<'a>, WireError> {
        match self.r.peek_marker().map_err(malformed)? {
            Marker::Bin8
            | Marker::Bin16
            | Marker::Bin32
            | Marker::FixStr(_)
            | Marker::Str8
            | Marker::Str16
            | Marker::Str32 => self.bytes(name).map(CallIdRef::Bytes),
            _ => self.value(name, Reader::read_int).map(|n| match n {
                Int::Uint(n) => CallIdRef::Uint(n),
                Int::Neg(n) => CallIdRef::Int(n),
            }),
        }
    }

    /// An array of bin/str, each checked, kept encoded.
    pub(super) fn strings(&mut self, name: &'static str) -> Result<Strings<'a>, WireError> {
        let start = self.r.rest();
        let len = self.value(name, Reader::read_array_len)?;
        for _ in 0..len {
            self.bytes(name)?;
        }
        let raw = &start[..start.len() - self.r.rest().len()];
        Ok(Strings::Encoded { raw, len })
    }

    /// REPLY `error`: a map with `code` and an optional `message`.
    fn reply_error(&mut self) -> Result<Outcome<'a>, WireError> {
        let raw = self.raw()?;
        let mut f = Fields::open(raw.0).map_err(|_| WireError::BadField("error"))?;
        let (mut code, mut message) = (None, None);
        while let Some(key) = f.next_key()? {
            match key {
                b"code" => code = Some(f.bytes("code")?),
                b"message" => message = f.optional(|f| f.bytes("message"))?,
                _ => f.skip()?,
            }
        }
        Ok(Outcome::Error {
            code: required(code, "code")?,
            message,
        })
    }
}

pub(super) fn malformed(e: ReadError) -> WireError {
    WireError::Malformed(match e {
        ReadError::Truncated => "truncated value",
        ReadError::WrongType => "value of an unexpected type",
        ReadError::Reserved => "reserved marker 0xc1",
        ReadError::TooDeep => "values nested too deep",
    })
}

pub(super) fn required<T>(value: Option<T>, name: &'static str) -> Result<T, WireError> {
    value.ok_or(WireError::MissingField(name))
}

fn decode_connect<'a>(f: &mut Fields<'a>) -> Result<Connect<'a>, WireError> {
    let (mut version, mut node_id, mut realm, mut capabilities, mut token) =
        (None, None, None, None, None);
    while let Some(key) = f.next_key()? {
        match key {
            b"version" => version = Some(f.bytes("version")?),
            b"node_id" => node_id = Some(f.node_id("node_id")?),
            b"realm_id" => realm = Some(f.bytes("realm_id")?),
            b"capabilities" => capabilities = Some(f.raw()?),
            b"token" => token = f.optional(|f| f.bytes("token"))?,
            _ => f.skip()?,
        }
    }
    Ok(Connect {
        version: required(version, "version")?,
        node_id: required(node_id, "node_id")?,
        realm: required(realm, "realm_id")?,
        capabilities,
        token,
    })
}

pub(super) fn decode_disconnect<'a>(f: &mut Fields<'a>) -> Result<Disconnect<'a>, WireError> {
    let (mut reason, mut message) = (None, None);
    while let Some(key) = f.next_key()? {
        match key {
            b"reason" => reason = Some(f.bytes("reason")?),
            b"message" => message = f.optional(|f| f.bytes("message"))?,
            _ => f.skip()?,
        }
    }
    Ok(Disconnect {
        reason: required(reason, "reason")?,
        message,
    })
}

pub(super) fn decode_ping(f: &mut Fields<'_>) -> Result<Ping, WireError> {
    let (mut timestamp, mut mesh) = (None, None);
    while let Some(key) = f.next_key()? {
        match key {
            b"timestamp" => timestamp = Some(f.uint("timestamp")?),
            b"mesh" => mesh = f.optional(|f| f.bool("mesh"))?,
            _ => f.skip()?,
        }
    }
    Ok(Ping {
        timestamp: required(timestamp, "timestamp")?,
        mesh: mesh.unwrap_or(false),
    })
}

pub(super) fn decode_pong(f: &mut Fields<'_>) -> Result<Pong, WireError> {
    let (mut timestamp, mut server_time, mut node_id) = (None, None, None);
    while let Some(key) = f.next_key()? {
        match key {
            b"timestamp" => timestamp = Some(f.uint("timestamp")?),
            b"server_time" => server_time = Some(f.uint("server_time")?),
            b"node_id" => node_id = f.optional(|f| f.node_id("node_id"))?,
            _ => f.skip()?,
        }
    }
    Ok(Pong {
        timestamp: required(timestamp, "timestamp")?,
        server_time: required(server_time, "server_time")?,
        node_id,
    })
}

fn decode_error<'a>(f: &mut Fields<'a>) -> Result<ErrorMsg<'a>, WireError> {
    let (mut code, mut message, mut frame_type, mut topic, mut procedure) =
        (None, None, None, None, None);
    while let Some(key) = f.next_key()? {
        match key {
            b"code" => code = Some(f.bytes("code")?),
            b"message" => message = Some(f.bytes("message")?),
            b"type" => frame_type = Some(f.uint("type")?),
            b"topic" => topic = f.optional(|f| f.bytes("topic"))?,
            b"procedure" => procedure = f.optional(|f| f.bytes("procedure"))?,
            _ => f.skip()?,
        }
    }
    Ok(ErrorMsg {
        code: required(code, "code")?,
        message: required(message, "message")?,
        frame_type: required(frame_type, "type")?,
        topic,
        procedure,
    })
}

fn decode_publish<'a>(f: &mut Fields<'a>) -> Result<Publish<'a>, WireError> {
    let mut publish = PublishFields::default();
    while let Some(key) = f.next_key()? {
        publish.read(key, f)?;
    }
    publish.finish()
}

/// A PUBLISH's fields, gathered one key at a time: the client's PUBLISH is made of them, and
/// the peer link's (`peer.rs`) of them and its own keys.
#[derive(Default)]
pub(super) struct PublishFields<'a> {
    topic: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    qos: Option<u64>,
    retain: Option<bool>,
    message_id: Option<&'a [u8]>,
    publisher: Option<NodeId>,
}

impl<'a> PublishFields<'a> {
    /// Reads the value of `key` if it is a PUBLISH field, and skips it otherwise.
    pub(super) fn read(&mut self, key: &[u8], f: &mut Fields<'a>) -> Result<(), WireError> {
        match key {
            b"topic" => self.topic = Some(f.bytes("topic")?),
            b"payload" => self.payload = Some(f.bytes("payload")?),
            b"qos" => self.qos = f.optional(|f| f.uint("qos"))?,
            b"retain" => self.retain = f.optional(|f| f.bool("retain"))?,
            b"message_id" => {
                self.message_id = f
                    .optional(|f| f.fixed::<16>("message_id"))?
                    .map(|id| &id[..])
            }
            b"publisher" => self.publisher = f.optional(|f| f.node_id("publisher"))?,
            _ => f.skip()?,
        }
        Ok(())
    }

    pub(super) fn finish(self) -> Result<Publish<'a>, WireError> {
        Ok(Publish {
            topic: required(self.topic, "topic")?,
            payload: required(self.payload, "payload")?,
            qos: self.qos,
            retain: self.retain,
            message_id: self.message_id,
            publisher: self.publisher,
        })
    }
}

fn decode_subscribe<'a>(f: &mut Fields<'a>) -> Result<Subscribe<'a>, WireError> {
    let (mut topics, mut qos) = (None, None);
    while let Some(key) = f.next_key()? {
        match key {
            b"topics" => topics = Some(f.strings("topics")?),
            b"qos" => qos = f.optional(|f| f.uint("qos"))?,
            _ => f.skip()?,
        }
    }
    Ok(Subscribe {
        topics: required(topics, "topics")?,
        qos,
    })
}

fn decode_unsubscribe<'a>(f: &mut Fields<'a>) -> Result<Unsubscribe<'a>, WireError> {
    let mut topics = None;
    while let Some(key) = f.next_key()? {
        match key {
            b"topics" => topics = Some(f.strings("topics")?),
            _ => f.skip()?,
        }
    }
    Ok(Unsubscribe {
        topics: required(topics, "topics")?,
    })
}

fn decode_call<'a>(f: &mut Fields<'a>) -> Result<Call<'a>, WireError> {
    let mut call = CallFields::default();
    while let Some(key) = f.next_key()? {
        call.read(key, f)?;
    }
    call.finish()
}

/// A CALL's fields, gathered one key at a time (shared with the peer link's CALL, as
/// [`PublishFields`] is).
#[derive(Default)]
pub(super) struct CallFields<'a> {
    procedure: Option<&'a [u8]>,
    args: Option<Raw<'a>>,
    call_id: Option<CallIdRef<'a>>,
    timeout_ms: Option<u64>,
}

impl<'a> CallFields<'a> {
    /// Reads the value of `key` if it is a CALL field, and skips it otherwise.
    pub(super) fn read(&mut self, key: &[u8], f: &mut Fields<'a>) -> Result<(), WireError> {
        match key {
            b"procedure" => self.procedure = Some(f.bytes("procedure")?),
            b"args" => self.args = Some(f.raw()?),
            b"call_id" => self.call_id = Some(f.call_id("call_id")?),
            b"timeout" => self.timeout_ms = f.optional(|f| f.uint("timeout"))?,
            _ => f.skip()?,
        }
        Ok(())
    }

    pub(super) fn finish(self) -> Result<Call<'a>, WireError> {
        Ok(Call {
            procedure: required(self.procedure, "procedure")?,
            args: self.args.unwrap_or(Raw(NIL)),
            call_id: self.call_id,
            timeout_ms: self.timeout_ms,
        })
    }
}

/// A REPLY's fields, gathered one key at a time (shared with the peer link's REPLY).
#[derive(Default)]
pub(super) struct ReplyFields<'a> {
    call_id: Option<CallIdRef<'a>>,
    result: Option<Raw<'a>>,
    error: Option<Outcome<'a>>,
}

impl<'a> ReplyFields<'a> {
    /// Reads the value of `key` if it is a REPLY field, and skips it otherwise.
    pub(super) fn read(&mut self, key: &[u8], f: &mut Fields<'a>) -> Result<(), WireError> {
        match key {
            b"call_id" => self.call_id = Some(f.call_id("call_id")?),
            b"result" => self.result = Some(f.raw()?),
            b"error" => self.error = Some(f.reply_error()?),
            _ => f.skip()?,
        }
        Ok(())
    }

    pub(super) fn finish(self) -> Result<Reply<'a>, WireError> {
        let outcome = match (self.result, self.error) {
            (Some(result), None) => Outcome::Result(result),
            (None, Some(error)) => error,
            _ => return Err(WireError::BadField("result")),
        };
        Ok(Reply {
            call_id: self.call_id,
            outcome,
        })
    }
}

fn decode_reply<'a>(f: &mut Fields<'a>) -> Result<Reply<'a>, WireError> {
    let mut reply = ReplyFields::default();
    while let Some(key) = f.next_key()? {
        reply.read(key, f)?;
    }
    reply.finish()
}

fn decode_register<'a>(f: &mut Fields<'a>) -> Result<Register<'a>, WireError> {
    let (mut procedure, mut ttl_s) = (None, None);
    while let Some(key) = f.next_key()? {
        match key {
            b"procedure" => procedure = Some(f.bytes("procedure")?),
            b"ttl" => ttl_s = f.optional(|f| f.uint("ttl"))?,
            _ => f.skip()?,
        }
    }
    Ok(Register {
        procedure: required(procedure, "procedure")?,
        ttl_s,
    })
}

fn decode_unregister<'a>(f: &mut Fields<'a>) -> Result<Unregister<'a>, WireError> {
    let mut procedure = None;
    while let Some(key) = f.next_key()? {
        match key {
            b"procedure" => procedure = Some(f.bytes("procedure")?),
            _ => f.skip()?,
        }
    }
    Ok(Unregister {
        procedure: required(procedure, "procedure")?,
    })
}

fn decode_cancel<'a>(f: &mut Fields<'a>) -> Result<Cancel<'a>, WireError> {
    let (mut call_id, mut reason) = (None, None);
    while let Some(key) = f.next_key()? {
        match key {
            b"call_id" => call_id = Some(f.call_id("call_id")?),
            b"reason" => reason = Some(f.bytes("reason")?),
            _ => f.skip()?,
        }
    }
    Ok(Cancel {
        call_id: required(call_id, "call_id")?,
        reason: required(reason, "reason")?,
    })
}
