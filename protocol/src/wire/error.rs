//! Wire errors and the DISCONNECT reasons of PROTOCOL.md section 6, with those peer links add
//! (9.11).

/// Why a session ends, as sent in DISCONNECT `reason` and as the QUIC application close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Normal,
    ProtocolError,
    FrameTooLarge,
    RealmMismatch,
    Unauthorized,
    MaxClientsReached,
    Replaced,
    SlowConsumer,
    ConnectTimeout,
    ShuttingDown,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::Normal,
        Reason::ProtocolError,
        Reason::FrameTooLarge,
        Reason::RealmMismatch,
        Reason::Unauthorized,
        Reason::MaxClientsReached,
        Reason::Replaced,
        Reason::SlowConsumer,
        Reason::ConnectTimeout,
        Reason::ShuttingDown,
    ];

    /// The string sent in DISCONNECT `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Normal => "normal",
            Reason::ProtocolError => "protocol_error",
            Reason::FrameTooLarge => "frame_too_large",
            Reason::RealmMismatch => "realm_mismatch",
            Reason::Unauthorized => "unauthorized",
            Reason::MaxClientsReached => "max_clients_reached",
            Reason::Replaced => "replaced",
            Reason::SlowConsumer => "slow_consumer",
            Reason::ConnectTimeout => "connect_timeout",
            Reason::ShuttingDown => "shutting_down",
        }
    }

    /// The QUIC application error code the server closes the connection with.
    pub fn close_code(self) -> u64 {
        match self {
            Reason::Normal => 0x00,
            Reason::ProtocolError => 0x01,
            Reason::FrameTooLarge => 0x02,
            Reason::RealmMismatch => 0x03,
            Reason::Unauthorized => 0x04,
            Reason::MaxClientsReached => 0x05,
            Reason::Replaced => 0x06,
            Reason::SlowConsumer => 0x07,
            Reason::ConnectTimeout => 0x08,
            Reason::ShuttingDown => 0x09,
        }
    }

    /// The reason named by a DISCONNECT `reason` string.
    pub fn from_wire(s: &[u8]) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str().as_bytes() == s)
    }

    /// The reason of a QUIC application close code.
    pub fn from_close_code(code: u64) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.close_code() == code)
    }
}

/// Why a peer link ends (9.11): a reason of section 6, or one of the four that peer links add.
///
/// Kept apart from [`Reason`], whose [`Reason::ALL`] indexes the client sessions' counters: a
/// client session never ends with one of the four.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkReason {
    /// A reason of section 6 (those that close peer links: `normal`, `protocol_error`,
    /// `frame_too_large`, `unauthorized`, `replaced`, `slow_consumer`, `connect_timeout`,
    /// `shutting_down`).
    Session(Reason),
    /// `duplicate_link`: another link to the same peer was kept (9.3), or a self-link.
    DuplicateLink,
    /// `peer_evicted`: closed to make room under `--max-peers`.
    PeerEvicted,
    /// `name_conflict`: two live gateways use one `node_name`.
    NameConflict,
    /// `config_mismatch`: the peer's protocol `version` or `--max-frame` differs.
    ConfigMismatch,
}

impl LinkReason {
    /// The reasons peer links add to those of section 6.
    pub const ADDED: [LinkReason; 4] = [
        LinkReason::DuplicateLink,
        LinkReason::PeerEvicted,
        LinkReason::NameConflict,
        LinkReason::ConfigMismatch,
    ];

    /// The string sent in DISCONNECT `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkReason::Session(r) => r.as_str(),
            LinkReason::DuplicateLink => "duplicate_link",
            LinkReason::PeerEvicted => "peer_evicted",
            LinkReason::NameConflict => "name_conflict",
            LinkReason::ConfigMismatch => "config_mismatch",
        }
    }

    /// The QUIC application error code the link is closed with.
    pub fn close_code(self) -> u64 {
        match self {
            LinkReason::Session(r) => r.close_code(),
            LinkReason::DuplicateLink => 0x0a,
            LinkReason::PeerEvicted => 0x0b,
            LinkReason::NameConflict => 0x0c,
            LinkReason::ConfigMismatch => 0x0d,
        }
    }

    /// The reason named by a DISCONNECT `reason` string, of section 6 or of 9.11.
    pub fn from_wire(s: &[u8]) -> Option<LinkReason> {
        Reason::from_wire(s)
            .map(LinkReason::Session)
            .or_else(|| Self::ADDED.into_iter().find(|r| r.as_str().as_bytes() == s))
    }

    /// The reason of a QUIC application close code, of section 6 or of 9.11.
    pub fn from_close_code(code: u64) -> Option<LinkReason> {
        Reason::from_close_code(code)
            .map(LinkReason::Session)
            .or_else(|| Self::ADDED.into_iter().find(|r| r.close_code() == code))
    }
}

impl From<Reason> for LinkReason {
    fn from(reason: Reason) -> LinkReason {
        LinkReason::Session(reason)
    }
}

/// What is wrong with bytes received from a peer. Every variant but
/// [`WireError::FrameTooLarge`] is a `protocol_error`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The header's payload length is over the maximum frame size.
    #[error("frame of {len} bytes is over the maximum of {max}")]
    FrameTooLarge { len: u32, max: u32 },
    /// The header's version byte is not 0x01.
    #[error("unsupported frame version {0:#04x}")]
    BadVersion(u8),
    /// The header's type byte names no message of section 4.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// The payload is not one well-formed MessagePack value, or has bytes after it.
    #[error("payload is not valid MessagePack: {0}")]
    Malformed(&'static str),
    /// The payload is valid MessagePack but not a map.
    #[error("payload is not a map")]
    NotAMap,
    /// A required key is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A key holds a value of the wrong type, or out of its range.
    #[error("field `{0}` has the wrong type or value")]
    BadField(&'static str),
    /// A type of section 4 that a peer link does not carry (CONNECT, SUBSCRIBE, UNSUBSCRIBE,
    /// REGISTER_PROCEDURE, UNREGISTER_PROCEDURE, ERROR), received on one (9.2).
    #[error("frame type {0:#04x} is not carried on a peer link")]
    NotOnLink(u8),
    /// A peer-link frame on the other stream of its link: a data frame on the control stream,
    /// or a control frame on the data stream (9.2).
    #[error("frame type {0:#04x} on the wrong stream of a peer link")]
    WrongStream(u8),
}

impl WireError {
    /// The DISCONNECT reason this error calls for.
    pub fn reason(&self) -> Reason {
        match self {
            WireError::FrameTooLarge { .. } => Reason::FrameTooLarge,
            _ => Reason::ProtocolError,
        }
    }
}
