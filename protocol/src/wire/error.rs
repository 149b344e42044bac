//! Wire errors and the DISCONNECT reasons of PROTOCOL.md section 6.

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
