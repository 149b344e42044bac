//! Encoding of the peer-link frames (PROTOCOL.md 9.11): each appends a whole frame, header and
//! payload, to a caller's buffer, as `encode.rs` does for section 4.

use super::encode::{
    begin_frame, call_len, encode_cancel, encode_disconnect, encode_ping, encode_pong,
    encode_reply, end_frame, key, present, publish_len, put_bytes, put_call, put_publish,
    put_strings, put_uint,
};
use super::msgpack;
use super::peer::{
    Entries, Entry, Interest, LinkCall, LinkPublish, Member, PeerAuth, PeerHello, PeerMembers,
    PeerMessage, SyncMsg, SyncPhase,
};
use super::{Call, CallIdRef, Cancel, Reply};

impl PeerMessage<'_> {
    /// Appends the whole frame (header and payload) to `out`.
    ///
    /// As [`Message::encode`](super::Message::encode): keys and strings as bin, integers in
    /// their smallest form, optional fields that are `None` and INTEREST lists that are empty
    /// left out, [`Raw`](super::Raw) values copied as they are.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = begin_frame(out, self.frame_type());
        match self {
            PeerMessage::Hello(m) => encode_hello(m, out),
            PeerMessage::Auth(m) => encode_auth(m, out),
            PeerMessage::Members(m) => encode_members(m, out),
            PeerMessage::Interest(m) => encode_interest(m, out),
            PeerMessage::Sync(m) => encode_sync(m, out),
            PeerMessage::Ping(m) => encode_ping(m, out),
            PeerMessage::Pong(m) => {
                debug_assert!(m.node_id.is_none(), "a PONG on a link has no node_id");
                encode_pong(m, out);
            }
            PeerMessage::Disconnect(m) => encode_disconnect(m, out),
            PeerMessage::Publish(m) => encode_publish(m, out),
            PeerMessage::Call(m) => encode_call(m, out),
            PeerMessage::Reply(m) => encode_reply(
                &Reply {
                    call_id: Some(CallIdRef::Uint(m.call_id)),
                    outcome: m.outcome,
                },
                out,
            ),
            PeerMessage::Cancel(m) => encode_cancel(
                &Cancel {
                    call_id: CallIdRef::Uint(m.call_id),
                    reason: m.reason,
                },
                out,
            ),
        }
        end_frame(out, start);
    }
}

/// Appends a PEER_MEMBERS entry: the map `{node_name, node_id, addr}`.
pub(super) fn write_member(m: &Member<'_>, out: &mut Vec<u8>) {
    msgpack::write_map_len(out, 3);
    put_bytes(out, "node_name", m.node_name);
    put_bytes(out, "node_id", &m.node_id.0);
    put_bytes(out, "addr", m.addr);
}

fn put_entries<'a, T: Entry<'a>>(out: &mut Vec<u8>, name: &str, value: &Entries<'a, T>) {
    key(out, name);
    let len = value.iter().count();
    debug_assert!(u32::try_from(len).is_ok(), "more than u32::MAX entries");
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    if T::IN_MAP {
        msgpack::write_map_len(out, len);
    } else {
        msgpack::write_array_len(out, len);
    }
    for entry in value.iter() {
        entry.write(out);
    }
}

fn encode_hello(m: &PeerHello<'_>, out: &mut Vec<u8>) {
    msgpack::write_map_len(
        out,
        8 + 2 * present(&[m.dial.is_some()]) + present(&[m.proof.is_some()]),
    );
    put_bytes(out, "version", m.version);
    put_bytes(out, "node_id", &m.node_id.0);
    put_bytes(out, "node_name", m.node_name);
    put_uint(out, "incarnation", m.incarnation);
    put_bytes(out, "nonce", m.nonce);
    put_bytes(out, "advertise", m.advertise);
    put_entries(out, "realms", &m.realms);
    put_uint(out, "max_frame", m.max_frame);
    if let Some(dial) = m.dial {
        put_uint(out, "dial_seq", dial.seq);
        key(out, "gossip");
        msgpack::write_bool(out, dial.gossip);
    }
    if let Some(proof) = m.proof {
        put_bytes(out, "proof", proof);
    }
}

fn encode_auth(m: &PeerAuth<'_>, out: &mut Vec<u8>) {
    msgpack::write_map_len(out, 1);
    put_bytes(out, "proof", m.proof);
}

fn encode_members(m: &PeerMembers<'_>, out: &mut Vec<u8>) {
    msgpack::write_map_len(out, 1);
    put_entries(out, "members", &m.members);
}

fn encode_interest(m: &Interest<'_>, out: &mut Vec<u8>) {
    let lists = [
        !m.sub_add.is_empty(),
        !m.sub_del.is_empty(),
        !m.procs.is_empty(),
    ];
    msgpack::write_map_len(out, 1 + present(&lists));
    put_bytes(out, "realm", m.realm);
    if !m.sub_add.is_empty() {
        put_strings(out, "sub_add", m.sub_add);
    }
    if !m.sub_del.is_empty() {
        put_strings(out, "sub_del", m.sub_del);
    }
    if !m.procs.is_empty() {
        put_entries(out, "procs", &m.procs);
    }
}

fn encode_sync(m: &SyncMsg<'_>, out: &mut Vec<u8>) {
    let digest = match m.phase {
        SyncPhase::Digest(digest) => Some(digest),
        _ => None,
    };
    msgpack::write_map_len(out, 2 + present(&[digest.is_some()]));
    put_bytes(out, "realm", m.realm);
    put_bytes(out, "phase", m.phase.as_str().as_bytes());
    if let Some(digest) = digest {
        put_uint(out, "digest", digest);
    }
}

fn encode_publish(m: &LinkPublish<'_>, out: &mut Vec<u8>) {
    let delivery = m.delivery();
    msgpack::write_map_len(out, 1 + publish_len(&delivery));
    put_bytes(out, "realm", m.realm);
    put_publish(&delivery, out);
}

fn encode_call(m: &LinkCall<'_>, out: &mut Vec<u8>) {
    let call = Call {
        procedure: m.procedure,
        args: m.args,
        call_id: Some(CallIdRef::Uint(m.call_id)),
        timeout_ms: Some(m.timeout_ms),
    };
    msgpack::write_map_len(out, 2 + call_len(&call));
    put_bytes(out, "realm", m.realm);
    put_call(&call, out);
    put_bytes(out, "caller", &m.caller.0);
}
