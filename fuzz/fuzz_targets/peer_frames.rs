//! Feeds arbitrary bytes, as the stream of a peer link, to a `FrameReader` and decodes every
//! frame with `PeerMessage::decode`.
//!
//! Input: one byte choosing the maximum frame size (`--max-frame`, to which the link adds its
//! headroom), one byte choosing the stream (even: control, odd: data), then the byte stream.
//! Checked for every input:
//! - the reader fails only with `BadVersion` or `FrameTooLarge`, and the decoder never with
//!   `FrameTooLarge`; no frame is over the link's maximum;
//! - the stream check and the decoder agree: a type no link carries is refused by both with
//!   the same error, and a decoded message belongs to the stream `LinkStream::of` names;
//! - a frame that decodes re-encodes to a frame of the same type that decodes to an equal
//!   message and encodes to the same bytes again (encoding is canonical);
//! - a client connection refuses every peer-only type as unknown, and reads a link's data
//!   frame as its client form (a link frame is a client frame with more fields).

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_fuzz::read_back;
use meshgate_protocol::wire::{
    link_max_frame, Call, CallIdRef, Cancel, FrameReader, LinkStream, Message, PeerMessage, Reason,
    Reply, WireError,
};

fn encoded(msg: &PeerMessage<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    msg.encode(&mut out);
    out
}

/// What the client decoder must make of the payload of `msg`'s frame.
fn client_form<'a>(msg: &PeerMessage<'a>) -> Option<Message<'a>> {
    Some(match *msg {
        PeerMessage::Publish(p) => Message::Publish(p.delivery()),
        PeerMessage::Call(c) => Message::Call(Call {
            procedure: c.procedure,
            args: c.args,
            call_id: Some(CallIdRef::Uint(c.call_id)),
            timeout_ms: Some(c.timeout_ms),
        }),
        PeerMessage::Reply(r) => Message::Reply(Reply {
            call_id: Some(CallIdRef::Uint(r.call_id)),
            outcome: r.outcome,
        }),
        PeerMessage::Cancel(c) => Message::Cancel(Cancel {
            call_id: CallIdRef::Uint(c.call_id),
            reason: c.reason,
        }),
        PeerMessage::Ping(p) => Message::Ping(p),
        PeerMessage::Pong(p) => Message::Pong(p),
        PeerMessage::Disconnect(d) => Message::Disconnect(d),
        PeerMessage::Hello(_)
        | PeerMessage::Auth(_)
        | PeerMessage::Members(_)
        | PeerMessage::Interest(_)
        | PeerMessage::Sync(_) => return None,
    })
}

fn check_frame(stream: LinkStream, frame_type: u8, payload: &[u8]) {
    let belongs = LinkStream::of(frame_type);
    let on_stream = stream.check(frame_type);
    match &belongs {
        Ok(s) if *s == stream => assert_eq!(on_stream, Ok(())),
        Ok(_) => assert_eq!(on_stream, Err(WireError::WrongStream(frame_type))),
        Err(e) => assert_eq!(on_stream.as_ref(), Err(e)),
    }

    let msg = match PeerMessage::decode(frame_type, payload) {
        Ok(msg) => msg,
        Err(e) => {
            assert_eq!(e.reason(), Reason::ProtocolError, "decoder gave {e:?}");
            if let Err(refused) = belongs {
                assert_eq!(e, refused, "the decoder and LinkStream::of disagree");
            }
            return;
        }
    };
    assert_eq!(msg.frame_type() as u8, frame_type);
    assert_eq!(belongs, Ok(msg.stream()));

    let bytes = encoded(&msg);
    let (again_type, again_payload) = read_back(&bytes);
    assert_eq!(again_type, frame_type);
    let again = PeerMessage::decode(again_type, &again_payload).expect("re-encoded frame refused");
    assert_eq!(again, msg);
    assert_eq!(encoded(&again), bytes, "encoding is not canonical");

    let client = Message::decode(frame_type, payload);
    match client_form(&msg) {
        Some(form) => assert_eq!(client, Ok(form)),
        None => assert_eq!(client, Err(WireError::UnknownType(frame_type))),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[max_choice, stream_choice], stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_frame = link_max_frame(match max_choice % 4 {
        0 => u32::from(max_choice / 4),
        1 => 256,
        2 => 4096,
        _ => 1 << 20,
    });
    let on = if stream_choice % 2 == 0 {
        LinkStream::Control
    } else {
        LinkStream::Data
    };

    let mut reader = FrameReader::new(max_frame);
    if let Err(e) = reader.push(stream) {
        assert!(
            matches!(
                e,
                WireError::BadVersion(_) | WireError::FrameTooLarge { .. }
            ),
            "reader gave {e:?}"
        );
    }
    while let Ok(Some(frame)) = reader.next_frame() {
        assert!(frame.payload.len() <= max_frame as usize);
        check_frame(on, frame.frame_type, frame.payload);
    }
});
