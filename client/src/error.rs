//! The errors of the client's API: one enum per boundary.

use meshgate_protocol::wire::Reason;

/// Why an operation of the client, or the session itself, failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway refused the session: it answered CONNECT with DISCONNECT, or closed the
    /// connection with the application code of a reason.
    #[error("the gateway refused the session: {} ({message})", reason.as_str())]
    Refused {
        /// The reason the gateway gave.
        reason: Reason,
        /// The gateway's explanation, possibly empty.
        message: String,
    },
    /// The session is over for good: the gateway ended it with `reason` and the client does
    /// not reconnect, or the client was closed (`normal`).
    #[error("the session is closed ({})", reason.as_str())]
    Closed {
        /// Why the session ended.
        reason: Reason,
    },
    /// The connection was lost while the operation waited. With
    /// [`reconnect`](crate::ClientConfig::reconnect) set, the client is connecting again and
    /// later operations may succeed.
    #[error("the connection to the gateway was lost")]
    Disconnected,
    /// The QUIC connection could not be started (bad address, no endpoint).
    #[error("cannot start a QUIC connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC connection failed during the handshake or later.
    #[error("QUIC connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A local socket or file could not be used.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS configuration is unusable (no trust anchor, unreadable certificate file).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The gateway sent bytes that break the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The gateway did not answer in time (the handshake, or a PING).
    #[error("the gateway did not answer in time")]
    Timeout,
    /// The gateway answered the request with an ERROR frame (an invalid pattern, too many
    /// subscriptions or registrations, an invalid procedure name).
    #[error("the gateway refused the request: {0}")]
    Server(ServerError),
    /// The frame would be larger than the gateway accepts
    /// ([`max_frame`](crate::ClientConfig::max_frame)); nothing was sent.
    #[error("a frame of {len} payload bytes is over the maximum of {max}")]
    FrameTooLarge {
        /// The payload length the frame would have had.
        len: usize,
        /// The configured maximum.
        max: u32,
    },
}

/// An ERROR frame from the gateway: a request it refused while the session goes on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}{}", subject.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
pub struct ServerError {
    /// The error code, such as `invalid_pattern` or `too_many_subscriptions`.
    pub code: String,
    /// The gateway's explanation.
    pub message: String,
    /// The type byte of the frame the error answers (0x10 PUBLISH, 0x11 SUBSCRIBE, ...).
    pub frame_type: u8,
    /// The topic, pattern or procedure the error is about, when the gateway named one.
    pub subject: Option<String>,
}

/// Why a call returned no result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The gateway or the provider answered with an error: the gateway's codes are
    /// `procedure_not_found`, `timeout`, `provider_gone`, `overloaded`, `invalid_call` and
    /// `duplicate_call_id`; a provider sends codes of its own.
    #[error("call failed: {code}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Remote {
        /// The error code.
        code: String,
        /// The explanation, empty when none was sent.
        message: String,
    },
    /// No reply arrived within the call's timeout.
    #[error("no reply within the call's timeout")]
    Timeout,
    /// The connection was lost after the call was sent; its outcome is unknown.
    #[error("the connection was lost before the reply arrived")]
    Disconnected,
    /// The arguments are not exactly one MessagePack value; nothing was sent.
    #[error("the arguments are not exactly one MessagePack value")]
    InvalidArgs,
    /// The call could not be sent (the session is closed, or the frame is too large).
    #[error(transparent)]
    Client(ClientError),
}

impl CallError {
    /// The error code of a [`CallError::Remote`], if this is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            CallError::Remote { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<ClientError> for CallError {
    fn from(e: ClientError) -> CallError {
        match e {
            ClientError::Disconnected => CallError::Disconnected,
            ClientError::Timeout => CallError::Timeout,
            e => CallError::Client(e),
        }
    }
}

/// The error a procedure's handler returns: sent to the caller as the REPLY's `error`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProcedureError {
    /// The error code the caller sees in [`CallError::Remote`].
    pub code: String,
    /// The explanation the caller sees.
    pub message: String,
}

impl ProcedureError {
    /// An error with this code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ProcedureError {
        ProcedureError {
            code: code.into(),
            message: message.into(),
        }
    }
}
