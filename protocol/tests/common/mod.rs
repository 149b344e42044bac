//! Helpers the wire test suites share: payloads built by hand, reading frames in pieces, and
//! the strategies of arbitrary bytes, integers and MessagePack values.

#![allow(dead_code)]

use meshgate_protocol::wire::msgpack::{self, Reader};
use meshgate_protocol::wire::{FrameHeader, FrameReader, Outcome, Raw, HEADER_LEN};
use proptest::collection::vec;
use proptest::option::of as opt;
use proptest::prelude::*;

pub fn bin(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    msgpack::write_bin(&mut out, b);
    out
}

pub fn str_(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_str_len(&mut out, b.len() as u32).unwrap();
    out.extend_from_slice(b);
    out
}

pub fn uint(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    msgpack::write_uint(&mut out, n);
    out
}

pub fn sint(n: i64) -> Vec<u8> {
    let mut out = Vec::new();
    msgpack::write_sint(&mut out, n);
    out
}

pub fn array(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    msgpack::write_array_len(&mut out, items.len() as u32);
    items.iter().for_each(|i| out.extend_from_slice(i));
    out
}

/// A map of already encoded keys and values.
pub fn map(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    msgpack::write_map_len(&mut out, entries.len() as u32);
    for (k, v) in entries {
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    out
}

/// A map with bin keys.
pub fn fields(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    map(&entries
        .iter()
        .map(|(k, v)| (bin(k.as_bytes()), v.clone()))
        .collect::<Vec<_>>())
}

pub const NIL: [u8; 1] = [0xc0];

pub fn frame(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = FrameHeader {
        frame_type: ty,
        payload_len: payload.len() as u32,
    }
    .to_bytes()
    .to_vec();
    out.extend_from_slice(payload);
    out
}

/// The type byte and payload of one encoded frame.
pub fn split(frame: &[u8]) -> (u8, &[u8]) {
    (frame[1], &frame[HEADER_LEN..])
}

pub fn drain(reader: &mut FrameReader) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while let Some(f) = reader.next_frame().unwrap() {
        frames.push((f.frame_type, f.payload.to_vec()));
    }
    frames
}

/// Pushes `stream` in pieces of the given sizes (cycled), draining frames after each push.
pub fn read_in_pieces(stream: &[u8], sizes: &[usize], max_frame: u32) -> Vec<(u8, Vec<u8>)> {
    let mut reader = FrameReader::new(max_frame);
    let mut frames = Vec::new();
    let mut rest = stream;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        reader.push(piece).unwrap();
        frames.extend(drain(&mut reader));
    }
    assert_eq!(reader.buffered(), 0);
    frames
}

/// The entries of a payload's map, each as its encoded key and value.
pub fn entries(payload: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut r = Reader::new(payload);
    let n = r.read_map_len().unwrap();
    (0..n)
        .map(|_| (r.skip().unwrap().to_vec(), r.skip().unwrap().to_vec()))
        .collect()
}

#[derive(Clone, Debug)]
pub enum OwnedOutcome {
    Result(Vec<u8>),
    Error {
        code: Vec<u8>,
        message: Option<Vec<u8>>,
    },
}

/// Byte strings, mostly short, sometimes long enough for bin16.
pub fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![8 => vec(any::<u8>(), 0..40), 1 => vec(any::<u8>(), 250..700)]
}

pub fn int() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..200, any::<u64>(), (0u32..32).prop_map(|s| 1u64 << s)]
}

/// One well-formed MessagePack value of any type, nested a few levels.
pub fn raw_value() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(NIL.to_vec()),
        any::<bool>().prop_map(|b| vec![if b { 0xc3 } else { 0xc2 }]),
        any::<u64>().prop_map(uint),
        any::<i64>().prop_map(sint),
        any::<f64>().prop_map(|f| {
            let mut out = Vec::new();
            rmp::encode::write_f64(&mut out, f).unwrap();
            out
        }),
        bytes().prop_map(|b| bin(&b)),
        bytes().prop_map(|b| str_(&b)),
        (any::<i8>(), vec(any::<u8>(), 0..20)).prop_map(|(ty, data)| {
            let mut out = Vec::new();
            rmp::encode::write_ext_meta(&mut out, data.len() as u32, ty).unwrap();
            out.extend_from_slice(&data);
            out
        }),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(|items| array(&items)),
            vec((inner.clone(), inner), 0..4).prop_map(|entries| map(&entries)),
        ]
    })
}

impl OwnedOutcome {
    pub fn as_outcome(&self) -> Outcome<'_> {
        match self {
            OwnedOutcome::Result(r) => Outcome::Result(Raw(r)),
            OwnedOutcome::Error { code, message } => Outcome::Error {
                code,
                message: message.as_deref(),
            },
        }
    }
}

/// A REPLY's outcome: a result of any value, or an error with an optional message.
pub fn outcome() -> impl Strategy<Value = OwnedOutcome> {
    prop_oneof![
        raw_value().prop_map(OwnedOutcome::Result),
        (bytes(), opt(bytes())).prop_map(|(code, message)| OwnedOutcome::Error { code, message }),
    ]
}

/// Entries no message knows, to put into a map: a key that names no field (bin, an integer or
/// nil), a value of any type, and where the entry goes.
pub fn unknown_entries() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>, prop::sample::Index)>> {
    let key = prop_oneof![
        bytes().prop_map(|k| {
            let mut key = b"x-".to_vec();
            key.extend(k);
            bin(&key)
        }),
        int().prop_map(uint),
        Just(NIL.to_vec()),
    ];
    vec((key, raw_value(), any::<prop::sample::Index>()), 1..4)
}

/// A payload's map with `extra` entries inserted where each says.
pub fn with_entries(
    payload: &[u8],
    extra: Vec<(Vec<u8>, Vec<u8>, prop::sample::Index)>,
) -> Vec<u8> {
    let mut all = entries(payload);
    for (k, v, at) in extra {
        let at = at.index(all.len() + 1);
        all.insert(at, (k, v));
    }
    map(&all)
}

/// Rewrites every bin of a payload as str, keys and values, at any depth, except the values
/// of `args`, `result` and `capabilities`, which are carried as they are.
pub fn with_str_strings(payload: &[u8]) -> Vec<u8> {
    fn rewrite(r: &mut Reader<'_>, out: &mut Vec<u8>) {
        if let Ok(b) = r.read_bytes() {
            out.extend_from_slice(&str_(b));
        } else if let Ok(n) = r.read_map_len() {
            msgpack::write_map_len(out, n);
            for _ in 0..n {
                let key = r.clone().read_bytes();
                rewrite(r, out);
                match key {
                    Ok(b"args" | b"result" | b"capabilities") => {
                        out.extend_from_slice(r.skip().unwrap())
                    }
                    _ => rewrite(r, out),
                }
            }
        } else if let Ok(n) = r.read_array_len() {
            msgpack::write_array_len(out, n);
            for _ in 0..n {
                rewrite(r, out);
            }
        } else {
            out.extend_from_slice(r.skip().unwrap());
        }
    }
    let mut r = Reader::new(payload);
    let mut out = Vec::new();
    rewrite(&mut r, &mut out);
    assert!(r.is_empty());
    out
}
