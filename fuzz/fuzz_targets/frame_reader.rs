//! Feeds arbitrary bytes to a `FrameReader` in pieces and decodes every frame.
//!
//! Input: one byte choosing the maximum frame size, one byte seeding the piece sizes, then the
//! byte stream. Checked for every input:
//! - the stream read in pieces gives the same frames and the same error as read in one push;
//! - the reader fails only with `BadVersion` or `FrameTooLarge`, and the decoder never with
//!   `FrameTooLarge`; no frame is over the maximum;
//! - a frame that decodes re-encodes to a frame of the same type that decodes to an equal
//!   message and encodes to the same bytes again (encoding is canonical);
//! - `Publish::encode_locating_topic` writes the same frame and points at the topic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_fuzz::read_back;
use meshgate_protocol::wire::{FrameReader, Message, Reason, WireError, HEADER_LEN};

/// What a reader made of a stream: its frames in order, then the error that stopped it.
#[derive(Debug, PartialEq)]
struct Read {
    frames: Vec<(u8, Vec<u8>)>,
    error: Option<WireError>,
}

/// Takes every frame the reader has ready; records its error if it has failed.
fn drain(reader: &mut FrameReader, read: &mut Read) {
    loop {
        match reader.next_frame() {
            Ok(Some(f)) => read.frames.push((f.frame_type, f.payload.to_vec())),
            Ok(None) => return,
            Err(e) => {
                read.error = Some(e);
                return;
            }
        }
    }
}

/// Reads `stream` pushed in pieces of the sizes `sizes` yields.
fn read(stream: &[u8], max_frame: u32, mut sizes: impl FnMut() -> usize) -> Read {
    let mut reader = FrameReader::new(max_frame);
    let mut read = Read {
        frames: Vec::new(),
        error: None,
    };
    let mut rest = stream;
    while !rest.is_empty() && read.error.is_none() {
        let (piece, tail) = rest.split_at(sizes().clamp(1, rest.len()));
        rest = tail;
        let pushed = reader.push(piece);
        drain(&mut reader, &mut read);
        if let Err(e) = pushed {
            assert_eq!(
                read.error.as_ref(),
                Some(&e),
                "next_frame after a failed push"
            );
            assert_eq!(reader.push(&[]), Err(e), "a failed reader recovered");
        }
    }
    if read.error.is_none() {
        let framed: usize = read.frames.iter().map(|(_, p)| HEADER_LEN + p.len()).sum();
        assert_eq!(framed + reader.buffered(), stream.len(), "bytes lost");
    }
    read
}

fn encoded(msg: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    msg.encode(&mut out);
    out
}

fn check_round_trip(frame_type: u8, payload: &[u8]) {
    let msg = match Message::decode(frame_type, payload) {
        Ok(msg) => msg,
        Err(e) => {
            assert_ne!(e.reason(), Reason::FrameTooLarge, "decoder gave {e:?}");
            return;
        }
    };
    assert_eq!(msg.frame_type() as u8, frame_type);
    let bytes = encoded(&msg);
    let (again_type, again_payload) = read_back(&bytes);
    assert_eq!(again_type, frame_type);
    let again = Message::decode(again_type, &again_payload).expect("re-encoded frame refused");
    assert_eq!(again, msg);
    assert_eq!(encoded(&again), bytes, "encoding is not canonical");
    if let Message::Publish(publish) = msg {
        let mut out = vec![0xee; 3];
        let topic = publish.encode_locating_topic(&mut out);
        assert_eq!(&out[3..], &bytes[..]);
        assert_eq!(&out[topic], publish.topic);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[max_choice, seed], stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_frame = match max_choice % 4 {
        0 => u32::from(max_choice / 4),
        1 => 256,
        2 => 4096,
        _ => 1 << 20,
    };

    // Piece sizes from a xorshift seeded by the input: mostly small, sometimes large.
    let mut state = u32::from(seed) << 8 | (stream.len() as u32 & 0xff) | 1;
    let pieces = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        if state & 3 == 0 {
            (state >> 8) as usize % 512
        } else {
            (state >> 8) as usize % 16
        }
    };
    let in_pieces = read(stream, max_frame, pieces);
    let whole = read(stream, max_frame, || usize::MAX);
    assert_eq!(in_pieces, whole, "pieces and one push disagree");

    if let Some(e) = &whole.error {
        assert!(
            matches!(
                e,
                WireError::BadVersion(_) | WireError::FrameTooLarge { .. }
            ),
            "reader gave {e:?}"
        );
    }
    for (frame_type, payload) in &whole.frames {
        assert!(payload.len() <= max_frame as usize);
        check_round_trip(*frame_type, payload);
    }
});
