//! Encoding of the messages of PROTOCOL.md section 4: each appends a whole frame, header and
//! payload, to a caller's buffer.

use std::ops::Range;

use super::message::{
    Call, CallIdRef, Cancel, Connect, Disconnect, ErrorMsg, FrameType, Message, Outcome, Ping,
    Pong, Publish, Raw, Register, Reply, Strings, Subscribe, Unregister, Unsubscribe,
};
use super::msgpack;
use super::{FrameHeader, HEADER_LEN};

impl Message<'_> {
    /// Appends the whole frame (header and payload) to `out`.
    ///
    /// Keys and strings are written as bin, integers in their smallest form, and an optional
    /// field that is `None` is left out. [`Raw`] values are copied as they are, so they must
    /// hold one well-formed MessagePack value.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = begin_frame(out, self.frame_type());
        match self {
            Message::Connect(m) => encode_connect(m, out),
            Message::Disconnect(m) => encode_disconnect(m, out),
            Message::Ping(m) => encode_ping(m, out),
            Message::Pong(m) => encode_pong(m, out),
            Message::Error(m) => encode_error(m, out),
            Message::Publish(m) => {
                encode_publish(m, out);
            }
            Message::Subscribe(m) => encode_subscribe(m, out),
            Message::Unsubscribe(m) => encode_unsubscribe(m, out),
            Message::Call(m) => encode_call(m, out),
            Message::Reply(m) => encode_reply(m, out),
            Message::Register(m) => encode_register(m, out),
            Message::Unregister(m) => encode_unregister(m, out),
            Message::Cancel(m) => encode_cancel(m, out),
        }
        end_frame(out, start);
    }
}

impl Publish<'_> {
    /// Appends the whole frame, as [`Message::encode`] does, and returns where the topic's
    /// bytes lie in `out`: a shard that forwards the encoded frame can read the topic from it
    /// without decoding.
    pub fn encode_locating_topic(&self, out: &mut Vec<u8>) -> Range<usize> {
        let start = begin_frame(out, FrameType::Publish);
        let topic = encode_publish(self, out);
        end_frame(out, start);
        topic
    }
}

/// Appends a header with a zero length and returns where the frame starts.
pub(super) fn begin_frame(out: &mut Vec<u8>, ty: FrameType) -> usize {
    let start = out.len();
    out.extend_from_slice(
        &FrameHeader {
            frame_type: ty as u8,
            payload_len: 0,
        }
        .to_bytes(),
    );
    start
}

/// Writes the length of the payload appended since `begin_frame` into its header.
pub(super) fn end_frame(out: &mut [u8], start: usize) {
    let payload_len = out.len() - start - HEADER_LEN;
    // Frames are built from fields held in memory and capped far below 4 GiB by `--max-frame`
    // on the way in; a larger one is a caller's error.
    debug_assert!(
        u32::try_from(payload_len).is_ok(),
        "frame payload over u32::MAX"
    );
    let len = u32::try_from(payload_len).unwrap_or(u32::MAX);
    out[start + 4..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

/// The number of optional fields present, for a map header.
pub(super) fn present(fields: &[bool]) -> u32 {
    fields.iter().map(|&p| u32::from(p)).sum()
}

pub(super) fn key(out: &mut Vec<u8>, name: &str) {
    msgpack::write_bin(out, name.as_bytes());
}

pub(super) fn put_bytes(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    key(out, name);
    msgpack::write_bin(out, value);
}

pub(super) fn put_uint(out: &mut Vec<u8>, name: &str, value: u64) {
    key(out, name);
    msgpack::write_uint(out, value);
}

pub(super) fn put_raw(out: &mut Vec<u8>, name: &str, value: Raw<'_>) {
    key(out, name);
    out.extend_from_slice(value.0);
}

fn put_call_id(out: &mut Vec<u8>, name: &str, value: CallIdRef<'_>) {
    key(out, name);
    match value {
        CallIdRef::Uint(n) => msgpack::write_uint(out, n),
        CallIdRef::Int(n) => msgpack::write_sint(out, n),
        CallIdRef::Bytes(b) => msgpack::write_bin(out, b),
    }
}

pub(super) fn put_strings(out: &mut Vec<u8>, name: &str, value: Strings<'_>) {
    key(out, name);
    let len = value.iter().count();
    debug_assert!(u32::try_from(len).is_ok(), "more than u32::MAX strings");
    msgpack::write_array_len(out, u32::try_from(len).unwrap_or(u32::MAX));
    for s in value.iter() {
        msgpack::write_bin(out, s);
    }
}

fn encode_connect(m: &Connect<'_>, out: &mut Vec<u8>) {
    msgpack::write_map_len(
        out,
        3 + present(&[m.capabilities.is_some(), m.token.is_some()]),
    );
    put_bytes(out, "version", m.version);
    put_bytes(out, "node_id", &m.node_id.0);
    put_bytes(out, "realm_id", m.realm);
    if let Some(capabilities) = m.capabilities {
        put_raw(out, "capabilities", capabilities);
    }
    if let Some(token) = m.token {
        put_bytes(out, "token", token);
    }
}

pub(super) fn encode_disconnect(m: &Disconnect<'_>, out: &mut Vec<u8>) {
    msgpack::write_map_len(out, 1 + present(&[m.message.is_some()]));
    put_bytes(out, "reason", m.reason);
    if let Some(message) = m.message {
        put_bytes(out, "message", message);
    }
}

pub(super) fn encode_ping(m: &Ping, out: &mut Vec<u8>) {
    msgpack::write_map_len(out, 1 + present(&[m.mesh]));
    put_uint(out, "timestamp", m.timestamp);
    if m.mesh {
        key(out, "mesh");
        msgpack::write_bool(out, true);
    }
}

pub(super) fn encode_pong(m: &Pong, out: &mut Vec<u8>) {
    msgpack::write_map_len(out, 2 + present(&[m.node_id.is_some()]));
    put_uint(out, "timestamp", m.timestamp);
    put_uint(out, "server_time", m.server_time);
    if let Some(node_id) = m.node_id {
        put_bytes(out, "node_id", &node_id.0);
    }
}

fn encode_error(m: &ErrorMsg<'_>, out: &mut Vec<u8>) {
    msgpack::write_map_len(
        out,
        3 + present(&[m.topic.is_some(), m.procedure.is_some()]),
    );
    put_bytes(out, "code", m.code);
    put_bytes(out, "message", m.message);
    put_uint(out, "type", m.frame_type);
    if let Some(topic) = m.topic {
        put_bytes(out, "topic", topic);
    }
    if let Some(procedure) = m.procedure {
        put_bytes(out, "procedure", procedure);
    }
}

/// Appends a PUBLISH payload and returns where the topic's bytes lie in `out`.
fn encode_publish(m: &Publish<'_>, out: &mut Vec<u8>) -> Range<usize> {
    msgpack::write_map_len(out, publish_len(m));
    put_publish(m, out)
}

/// The number of entries of a PUBLISH's map.
pub(super) fn publish_len(m: &Publish<'_>) -> u32 {
    let optional = [
        m.qos.is_some(),
        m.retain.is_some(),
        m.message_id.is_some(),
        m.publisher.is_some(),
    ];
    2 + present(&optional)
}

/// Appends the entries of a PUBLISH's map and returns where the topic's bytes lie in `out`.
pub(super) fn put_publish(m: &Publish<'_>, out: &mut Vec<u8>) -> Range<usize> {
    put_bytes(out, "topic", m.topic);
    let topic = out.len() - m.topic.len()..out.len();
    put_bytes(out, "payload", m.payload);
    if let Some(qos) = m.qos {
        put_uint(out, "qos", qos);
    }
    if let Some(retain) = m.retain {
        key(out, "retain");
        msgpack::write_bool(out, retain);
    }
    if let Some(message_id) = m.message_id {
        put_bytes(out, "message_id", message_id);
    }
    if let Some(publisher) = m.publisher {
        put_bytes(out, "publisher", &publisher.0);
    }
    topic
}

fn encode_subscribe(m: &Subscribe<'_>, out: &mut Vec<u8>) {
    msgpack::write_map_len(out, 1 + present(&[m.qos.is_some()]));
    if let Some(qos) = m.qos {
        put_uint(out, "qos", qos);
    }
    put_strings(out, "topics", m.topics);
}

fn encode_unsubscribe(m: &Unsubscribe<'_>, out: &mut Vec<u8>) {
    msgpack::write_map_len(out, 1);
    put_strings(out, "topics", m.topics);
}

fn encode_call(m: &Call<'_>, out: &mut Vec<u8>) {
    msgpack::write_map_len(out, call_len(m));
    put_call(m, out);
}

/// The number of entries of a CALL's map.
pub(super) fn call_len(m: &Call<'_>) -> u32 {
    2 + present(&[m.call_id.is_some(), m.timeout_ms.is_some()])
}

/// Appends the entries of a CALL's map.
pub(super) fn put_call(m: &Call<'_>, out: &mut Vec<u8>) {
    put_bytes(out, "procedure", m.procedure);
    put_raw(out, "args", m.args);
    if let Some(call_id) = m.call_id {
        put_call_id(out, "call_id", call_id);
    }
    if let Some(timeout_ms) = m.timeout_ms {
        put_uint(out, "timeout", timeout_ms);
    }
}

pub(super) fn encode_reply(m: &Reply<'_>, out: &mut Vec<u8>) {
    msgpack::write_map_len(out, 1 + present(&[m.call_id.is_some()]));
    if let Some(call_id) = m.call_id {
        put_call_id(out, "call_id", call_id);
    }
    match m.outcome {
        Outcome::Result(result) => put_raw(out, "result", result),
        Outcome::Error { code, message } => {
            key(out, "error");
            msgpack::write_map_len(out, 1 + present(&[message.is_some()]));
            put_bytes(out, "code", code);
            if let Some(message) = message {
                put_bytes(out, "message", message);
            }
        }
    }
}

fn encode_register(m: &Register<'_>, out: &mut Vec<u8>) {
    msgpack::write_map_len(out, 1 + present(&[m.ttl_s.is_some()]));
    put_bytes(out, "procedure", m.procedure);
    if let Some(ttl_s) = m.ttl_s {
        put_uint(out, "ttl", ttl_s);
    }
}

fn encode_unregister(m: &Unregister<'_>, out: &mut Vec<u8>) {
    msgpack::write_map_len(out, 1);
    put_bytes(out, "procedure", m.procedure);
}

pub(super) fn encode_cancel(m: &Cancel<'_>, out: &mut Vec<u8>) {
    msgpack::write_map_len(out, 2);
    put_call_id(out, "call_id", m.call_id);
    put_bytes(out, "reason", m.reason);
}
