//! The wire codec against PROTOCOL.md sections 2 and 4: golden bytes, round trips of every
//! message through a frame reader fed in pieces, and the error each kind of bad input gets.

use meshgate_protocol::wire::msgpack::Reader;
use meshgate_protocol::wire::*;
use meshgate_protocol::NodeId;
use proptest::collection::vec;
use proptest::option::of as opt;
use proptest::prelude::*;

mod common;
use common::*;

const MAX_FRAME: u32 = 1 << 20;

fn encoded(msg: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    msg.encode(&mut out);
    out
}

fn decode(ty: FrameType, payload: &[u8]) -> Result<Message<'_>, WireError> {
    Message::decode(ty as u8, payload)
}

// ---------------------------------------------------------------------------------------------
// Golden bytes and layout

#[test]
fn ping_encodes_to_the_golden_bytes() {
    let bytes = encoded(&Message::Ping(Ping::new(1_700_000_000_000)));
    let golden = [
        0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x15, 0x81, 0xc4, 0x09, 0x74, 0x69, 0x6d, 0x65,
        0x73, 0x74, 0x61, 0x6d, 0x70, 0xcf, 0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00,
    ];
    assert_eq!(bytes, golden);
}

#[test]
fn a_ping_with_mesh_writes_it_after_the_timestamp_and_reads_back() {
    let ping = Message::Ping(Ping {
        timestamp: 7,
        mesh: true,
    });
    let bytes = encoded(&ping);
    assert_eq!(keys_of(&bytes), ["timestamp", "mesh"]);
    assert_eq!(decode(FrameType::Ping, &bytes[8..]), Ok(ping));
    // `mesh` false or nil is a plain PING.
    for value in [0xc2u8, 0xc0] {
        let mut payload = vec![0x82, 0xc4, 9];
        payload.extend_from_slice(b"timestamp");
        payload.extend_from_slice(&[0x07, 0xc4, 4]);
        payload.extend_from_slice(b"mesh");
        payload.push(value);
        assert_eq!(
            decode(FrameType::Ping, &payload),
            Ok(Message::Ping(Ping::new(7)))
        );
    }
}

#[test]
fn subscribe_encodes_to_the_golden_bytes_with_qos_before_topics() {
    let topics: &[&[u8]] = &[b"sensor.*.room1"];
    let msg = Message::Subscribe(Subscribe {
        qos: Some(0),
        topics: Strings::List(topics),
    });
    let mut golden = vec![
        0x01, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x82, 0xc4, 0x03, 0x71, 0x6f, 0x73, 0x00,
        0xc4, 0x06, 0x74, 0x6f, 0x70, 0x69, 0x63, 0x73, 0x91, 0xc4, 0x0e,
    ];
    golden.extend_from_slice(b"sensor.*.room1");
    assert_eq!(encoded(&msg), golden);
}

/// The keys of an encoded frame's map, in order, checking that each is bin.
fn keys_of(frame: &[u8]) -> Vec<String> {
    let mut r = Reader::new(split(frame).1);
    let n = r.read_map_len().unwrap();
    let mut keys = Vec::new();
    for _ in 0..n {
        assert!(
            matches!(r.peek_marker().unwrap(), rmp::Marker::Bin8),
            "key not bin"
        );
        keys.push(String::from_utf8(r.read_bytes().unwrap().to_vec()).unwrap());
        r.skip().unwrap();
    }
    assert!(r.is_empty());
    keys
}

#[test]
fn every_message_writes_its_keys_as_bin_in_the_documented_order() {
    let node = NodeId([7; 32]);
    let topics: &[&[u8]] = &[b"a"];
    let cases: Vec<(Message<'_>, &[&str])> = vec![
        (
            Message::Connect(Connect {
                version: b"1.0",
                node_id: node,
                realm: b"r",
                capabilities: Some(Raw(&NIL)),
                token: Some(b"t"),
            }),
            &["version", "node_id", "realm_id", "capabilities", "token"],
        ),
        (
            Message::Disconnect(Disconnect {
                reason: b"normal",
                message: Some(b"bye"),
            }),
            &["reason", "message"],
        ),
        (Message::Ping(Ping::new(1)), &["timestamp"]),
        (
            Message::Pong(Pong {
                timestamp: 1,
                server_time: 2,
                node_id: Some(node),
            }),
            &["timestamp", "server_time", "node_id"],
        ),
        (
            Message::Error(ErrorMsg {
                code: b"c",
                message: b"m",
                frame_type: 0x11,
                topic: Some(b"t"),
                procedure: Some(b"p"),
            }),
            &["code", "message", "type", "topic", "procedure"],
        ),
        (
            Message::Publish(Publish {
                topic: b"t",
                payload: b"p",
                qos: Some(1),
                retain: Some(true),
                message_id: Some(&[1; 16]),
                publisher: Some(node),
            }),
            &[
                "topic",
                "payload",
                "qos",
                "retain",
                "message_id",
                "publisher",
            ],
        ),
        (
            Message::Subscribe(Subscribe {
                qos: Some(1),
                topics: Strings::List(topics),
            }),
            &["qos", "topics"],
        ),
        (
            Message::Unsubscribe(Unsubscribe {
                topics: Strings::List(topics),
            }),
            &["topics"],
        ),
        (
            Message::Call(Call {
                procedure: b"p",
                args: Raw(&NIL),
                call_id: Some(CallIdRef::Uint(1)),
                timeout_ms: Some(5),
            }),
            &["procedure", "args", "call_id", "timeout"],
        ),
        (
            Message::Reply(Reply {
                call_id: Some(CallIdRef::Bytes(b"x")),
                outcome: Outcome::Result(Raw(&NIL)),
            }),
            &["call_id", "result"],
        ),
        (
            Message::Reply(Reply {
                call_id: None,
                outcome: Outcome::Error {
                    code: b"timeout",
                    message: None,
                },
            }),
            &["error"],
        ),
        (
            Message::Register(Register {
                procedure: b"p",
                ttl_s: Some(3),
            }),
            &["procedure", "ttl"],
        ),
        (
            Message::Unregister(Unregister { procedure: b"p" }),
            &["procedure"],
        ),
        (
            Message::Cancel(Cancel {
                call_id: CallIdRef::Int(-3),
                reason: b"timeout",
            }),
            &["call_id", "reason"],
        ),
    ];
    for (msg, want) in cases {
        assert_eq!(keys_of(&encoded(&msg)), want, "{msg:?}");
    }
}

#[test]
fn optional_fields_that_are_none_are_left_out() {
    let msg = Message::Publish(Publish {
        topic: b"t",
        payload: b"p",
        qos: None,
        retain: None,
        message_id: None,
        publisher: None,
    });
    assert_eq!(keys_of(&encoded(&msg)), ["topic", "payload"]);
    let msg = Message::Call(Call {
        procedure: b"p",
        args: Raw(&NIL),
        call_id: None,
        timeout_ms: None,
    });
    assert_eq!(keys_of(&encoded(&msg)), ["procedure", "args"]);
}

#[test]
fn encode_appends_after_what_the_buffer_already_holds() {
    let mut out = vec![0xaa; 3];
    Message::Ping(Ping::new(5)).encode(&mut out);
    assert_eq!(&out[..3], &[0xaa; 3]);
    assert_eq!(&out[3..], encoded(&Message::Ping(Ping::new(5))));
}

#[test]
fn encode_locating_topic_returns_the_topics_bytes_in_the_same_frame_as_encode() {
    let publish = Publish {
        topic: b"sensor.temp.room1",
        payload: &[9; 300],
        qos: Some(0),
        retain: None,
        message_id: Some(&[3; 16]),
        publisher: Some(NodeId([1; 32])),
    };
    let mut out = vec![0x55; 7];
    let range = publish.encode_locating_topic(&mut out);
    assert_eq!(&out[range], b"sensor.temp.room1");
    assert_eq!(&out[7..], encoded(&Message::Publish(publish)));
}

// ---------------------------------------------------------------------------------------------
// Accepted input

#[test]
fn str_keys_and_values_are_accepted_the_same_as_bin() {
    let payload = map(&[(str_(b"timestamp"), uint(42))]);
    assert_eq!(
        decode(FrameType::Ping, &payload),
        Ok(Message::Ping(Ping::new(42)))
    );

    let payload = map(&[
        (str_(b"procedure"), str_(b"svc.echo")),
        (str_(b"call_id"), str_(b"abc")),
        (str_(b"args"), array(&[uint(1)])),
    ]);
    let want = Call {
        procedure: b"svc.echo",
        args: Raw(&[0x91, 0x01]),
        call_id: Some(CallIdRef::Bytes(b"abc")),
        timeout_ms: None,
    };
    assert_eq!(decode(FrameType::Call, &payload), Ok(Message::Call(want)));

    let node = [4u8; 32];
    let payload = map(&[
        (str_(b"version"), str_(b"1.0")),
        (str_(b"node_id"), str_(&node)),
        (str_(b"realm_id"), str_(b"macula.default")),
        (str_(b"capabilities"), str_(b"")),
    ]);
    let want = Connect {
        version: b"1.0",
        node_id: NodeId(node),
        realm: b"macula.default",
        capabilities: Some(Raw(&[0xa0])),
        token: None,
    };
    assert_eq!(
        decode(FrameType::Connect, &payload),
        Ok(Message::Connect(want))
    );
}

#[test]
fn topics_given_as_str_or_bin_compare_equal_to_the_same_list() {
    let payload = map(&[(str_(b"topics"), array(&[str_(b"a.*"), bin(b"b.**")]))]);
    let Ok(Message::Unsubscribe(u)) = decode(FrameType::Unsubscribe, &payload) else {
        panic!("not an UNSUBSCRIBE");
    };
    let want: &[&[u8]] = &[b"a.*", b"b.**"];
    assert_eq!(u.topics, Strings::List(want));
    assert_eq!(u.topics.len(), 2);
    assert_eq!(u.topics.iter().collect::<Vec<_>>(), want);
}

#[test]
fn integers_are_accepted_in_any_messagepack_form() {
    // 5 as u64, as i8 and as i32; a u32.
    for value in [
        vec![0xcf, 0, 0, 0, 0, 0, 0, 0, 5],
        vec![0xd0, 5],
        vec![0xd2, 0, 0, 0, 5],
        vec![0xce, 0, 0, 0, 5],
    ] {
        let payload = fields(&[("timestamp", value.clone())]);
        assert_eq!(
            decode(FrameType::Ping, &payload),
            Ok(Message::Ping(Ping::new(5)))
        );
    }
}

#[test]
fn unknown_keys_of_any_type_are_ignored() {
    let payload = map(&[
        (
            bin(b"extra"),
            map(&[(uint(1), array(&[NIL.to_vec(), sint(-5)]))]),
        ),
        (bin(b"timestamp"), uint(9)),
        (uint(7), bin(b"int key")),
        (array(&[uint(1)]), NIL.to_vec()),
        (str_(b"timestampx"), str_(b"not a number")),
        (bin(b""), vec![0xcb, 0, 0, 0, 0, 0, 0, 0, 0]),
    ]);
    assert_eq!(
        decode(FrameType::Ping, &payload),
        Ok(Message::Ping(Ping::new(9)))
    );
}

#[test]
fn call_without_args_or_call_id_decodes_with_nil_args_and_no_call_id() {
    let payload = fields(&[("procedure", bin(b"svc.x"))]);
    let want = Call {
        procedure: b"svc.x",
        args: Raw(&NIL),
        call_id: None,
        timeout_ms: None,
    };
    assert_eq!(decode(FrameType::Call, &payload), Ok(Message::Call(want)));
}

#[test]
fn call_id_is_kept_as_an_integer_or_as_bytes_of_any_length() {
    let long = [b'x'; 200];
    for (value, want) in [
        (uint(12), CallIdRef::Uint(12)),
        (
            vec![0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe],
            CallIdRef::Int(-2),
        ),
        (vec![0xd1, 0, 7], CallIdRef::Uint(7)),
        (bin(&long), CallIdRef::Bytes(&long)),
        (str_(b"id-1"), CallIdRef::Bytes(b"id-1")),
    ] {
        let payload = fields(&[("procedure", bin(b"p")), ("call_id", value)]);
        let Ok(Message::Call(call)) = decode(FrameType::Call, &payload) else {
            panic!("not a CALL");
        };
        assert_eq!(call.call_id, Some(want));
    }
}

#[test]
fn reply_takes_an_error_map_whose_message_is_optional() {
    let payload = fields(&[
        ("call_id", uint(1)),
        (
            "error",
            map(&[(str_(b"code"), str_(b"timeout")), (bin(b"other"), uint(3))]),
        ),
    ]);
    let want = Reply {
        call_id: Some(CallIdRef::Uint(1)),
        outcome: Outcome::Error {
            code: b"timeout",
            message: None,
        },
    };
    assert_eq!(decode(FrameType::Reply, &payload), Ok(Message::Reply(want)));
}

// ---------------------------------------------------------------------------------------------
// Refused input

/// Decodes `payload`, expecting `want`, and checks that it is a protocol error.
#[track_caller]
fn assert_refused(ty: FrameType, payload: &[u8], want: WireError) {
    let got = decode(ty, payload);
    assert_eq!(got, Err(want.clone()), "payload {payload:02x?}");
    assert_eq!(want.reason(), Reason::ProtocolError);
}

#[test]
fn a_missing_required_field_is_named_in_missing_field() {
    assert_refused(
        FrameType::Ping,
        &fields(&[]),
        WireError::MissingField("timestamp"),
    );
    assert_refused(
        FrameType::Connect,
        &fields(&[("version", bin(b"1.0")), ("node_id", bin(&[0; 32]))]),
        WireError::MissingField("realm_id"),
    );
    assert_refused(
        FrameType::Subscribe,
        &fields(&[("qos", uint(0))]),
        WireError::MissingField("topics"),
    );
    assert_refused(
        FrameType::Cancel,
        &fields(&[("reason", bin(b"t"))]),
        WireError::MissingField("call_id"),
    );
    assert_refused(
        FrameType::Reply,
        &fields(&[("error", fields(&[("message", bin(b"m"))]))]),
        WireError::MissingField("code"),
    );
}

#[test]
fn a_value_of_the_wrong_type_is_named_in_bad_field() {
    assert_refused(
        FrameType::Ping,
        &fields(&[("timestamp", bin(b"1"))]),
        WireError::BadField("timestamp"),
    );
    assert_refused(
        FrameType::Ping,
        &fields(&[("timestamp", sint(-1))]),
        WireError::BadField("timestamp"),
    );
    assert_refused(
        FrameType::Publish,
        &fields(&[
            ("topic", bin(b"t")),
            ("payload", bin(b"")),
            ("retain", uint(1)),
        ]),
        WireError::BadField("retain"),
    );
    assert_refused(
        FrameType::Call,
        &fields(&[("procedure", bin(b"p")), ("call_id", NIL.to_vec())]),
        WireError::BadField("call_id"),
    );
    assert_refused(
        FrameType::Subscribe,
        &fields(&[("topics", bin(b"a"))]),
        WireError::BadField("topics"),
    );
    assert_refused(
        FrameType::Subscribe,
        &fields(&[("topics", array(&[bin(b"a"), uint(1)]))]),
        WireError::BadField("topics"),
    );
    assert_refused(
        FrameType::Reply,
        &fields(&[("error", bin(b"e"))]),
        WireError::BadField("error"),
    );
}

#[test]
fn node_id_and_message_id_must_have_their_exact_length() {
    let connect = |node: &[u8]| {
        fields(&[
            ("version", bin(b"1.0")),
            ("node_id", bin(node)),
            ("realm_id", bin(b"r")),
        ])
    };
    assert!(decode(FrameType::Connect, &connect(&[0; 32])).is_ok());
    assert_refused(
        FrameType::Connect,
        &connect(&[0; 31]),
        WireError::BadField("node_id"),
    );
    assert_refused(
        FrameType::Connect,
        &connect(&[0; 33]),
        WireError::BadField("node_id"),
    );
    let publish = |id: &[u8]| {
        fields(&[
            ("topic", bin(b"t")),
            ("payload", bin(b"")),
            ("message_id", bin(id)),
        ])
    };
    assert!(decode(FrameType::Publish, &publish(&[0; 16])).is_ok());
    assert_refused(
        FrameType::Publish,
        &publish(&[0; 15]),
        WireError::BadField("message_id"),
    );
}

#[test]
fn a_reply_needs_exactly_one_of_result_and_error() {
    let error = fields(&[("code", bin(b"c"))]);
    assert_refused(
        FrameType::Reply,
        &fields(&[("call_id", uint(1))]),
        WireError::BadField("result"),
    );
    assert_refused(
        FrameType::Reply,
        &fields(&[("result", NIL.to_vec()), ("error", error)]),
        WireError::BadField("result"),
    );
}

#[test]
fn bytes_after_the_map_are_malformed() {
    let mut payload = fields(&[("timestamp", uint(1))]);
    payload.push(0xc0);
    assert!(matches!(
        decode(FrameType::Ping, &payload),
        Err(WireError::Malformed(_))
    ));
    assert_eq!(WireError::Malformed("").reason(), Reason::ProtocolError);
}

#[test]
fn a_payload_that_is_not_a_map_is_refused() {
    assert_refused(FrameType::Ping, &array(&[uint(1)]), WireError::NotAMap);
    assert_refused(FrameType::Ping, &NIL, WireError::NotAMap);
    for bad in [
        &[][..],
        &[0xc1],
        &[0x81, 0xc4],
        &[0x92, 0x01],
        &[0xc0, 0xc0],
    ] {
        assert!(
            matches!(decode(FrameType::Ping, bad), Err(WireError::Malformed(_))),
            "{bad:02x?}"
        );
    }
}

#[test]
fn an_unknown_frame_type_is_refused() {
    let payload = fields(&[("timestamp", uint(1))]);
    assert_eq!(
        Message::decode(0x06, &payload),
        Err(WireError::UnknownType(0x06))
    );
    assert_eq!(WireError::UnknownType(0x06).reason(), Reason::ProtocolError);
}

// ---------------------------------------------------------------------------------------------
// The frame reader

fn ping_frame(ts: u64) -> Vec<u8> {
    encoded(&Message::Ping(Ping::new(ts)))
}

#[test]
fn a_frame_split_across_many_pushes_is_reassembled() {
    let bytes = encoded(&Message::Publish(Publish {
        topic: b"a.b",
        payload: &[7; 1000],
        qos: None,
        retain: Some(false),
        message_id: None,
        publisher: None,
    }));
    let mut reader = FrameReader::new(MAX_FRAME);
    for (i, b) in bytes.iter().enumerate() {
        assert_eq!(reader.next_frame(), Ok(None), "a frame before byte {i}");
        reader.push(std::slice::from_ref(b)).unwrap();
    }
    let frames = drain(&mut reader);
    assert_eq!(frames, [(0x10, bytes[HEADER_LEN..].to_vec())]);
    assert_eq!(reader.buffered(), 0);
}

#[test]
fn many_frames_in_one_push_come_out_in_order() {
    let stream: Vec<u8> = (0..500).flat_map(ping_frame).collect();
    let mut reader = FrameReader::new(MAX_FRAME);
    reader.push(&stream).unwrap();
    let frames = drain(&mut reader);
    assert_eq!(frames.len(), 500);
    for (i, (ty, payload)) in frames.iter().enumerate() {
        assert_eq!(
            Message::decode(*ty, payload),
            Ok(Message::Ping(Ping::new(i as u64)))
        );
    }
    assert_eq!(reader.buffered(), 0);
}

#[test]
fn an_empty_payload_is_a_frame_of_its_own() {
    let mut reader = FrameReader::new(MAX_FRAME);
    reader.push(&frame(0x03, &[])).unwrap();
    assert_eq!(
        reader.next_frame(),
        Ok(Some(RawFrame {
            frame_type: 0x03,
            payload: &[]
        }))
    );
    assert_eq!(reader.next_frame(), Ok(None));
}

#[test]
fn an_oversize_header_is_refused_before_its_payload_is_buffered() {
    let max = 1000;
    let mut stream = ping_frame(1);
    let good = stream.len();
    stream.extend_from_slice(
        &FrameHeader {
            frame_type: 0x10,
            payload_len: max + 1,
        }
        .to_bytes(),
    );
    stream.extend_from_slice(&[0; 5000]);
    let mut reader = FrameReader::new(max);
    let err = reader.push(&stream).unwrap_err();
    assert_eq!(err, WireError::FrameTooLarge { len: max + 1, max });
    assert_eq!(err.reason(), Reason::FrameTooLarge);
    assert!(
        reader.buffered() <= good + HEADER_LEN,
        "buffered {}",
        reader.buffered()
    );

    // The whole frame before the bad header still comes out, then the error, for good.
    assert_eq!(
        reader.next_frame().unwrap().map(|f| f.frame_type),
        Some(0x03)
    );
    assert_eq!(reader.next_frame(), Err(err.clone()));
    assert_eq!(reader.next_frame(), Err(err.clone()));
    assert_eq!(reader.push(&ping_frame(2)), Err(err));
}

#[test]
fn a_header_at_the_maximum_length_is_accepted() {
    let mut reader = FrameReader::new(4);
    reader.push(&frame(0x03, &[0x80, 0, 0, 0])).unwrap();
    assert!(reader.next_frame().unwrap().is_some());
}

#[test]
fn a_bad_version_fails_the_reader_as_a_protocol_error() {
    let mut bytes = ping_frame(1);
    bytes[0] = 0x02;
    let mut reader = FrameReader::new(MAX_FRAME);
    reader.push(&bytes[..4]).unwrap();
    let err = reader.push(&bytes[4..]).unwrap_err();
    assert_eq!(err, WireError::BadVersion(0x02));
    assert_eq!(err.reason(), Reason::ProtocolError);
    assert!(reader.buffered() <= HEADER_LEN);
    assert_eq!(reader.next_frame(), Err(err));
}

#[test]
fn flags_and_reserved_bytes_are_ignored() {
    let mut bytes = ping_frame(3);
    bytes[2] = 0xff;
    bytes[3] = 0x7f;
    let mut reader = FrameReader::new(MAX_FRAME);
    reader.push(&bytes).unwrap();
    let f = reader.next_frame().unwrap().unwrap();
    assert_eq!(
        Message::decode(f.frame_type, f.payload),
        Ok(Message::Ping(Ping::new(3)))
    );
}

// ---------------------------------------------------------------------------------------------
// Arbitrary messages

#[derive(Clone, Debug)]
enum OwnedCallId {
    Uint(u64),
    Neg(i64),
    Bytes(Vec<u8>),
}

impl OwnedCallId {
    fn as_ref(&self) -> CallIdRef<'_> {
        match self {
            OwnedCallId::Uint(n) => CallIdRef::Uint(*n),
            OwnedCallId::Neg(n) => CallIdRef::Int(*n),
            OwnedCallId::Bytes(b) => CallIdRef::Bytes(b),
        }
    }
}

/// A message that owns its bytes, from which a borrowed [`Message`] is made.
#[derive(Clone, Debug)]
enum Owned {
    Connect {
        version: Vec<u8>,
        node_id: [u8; 32],
        realm: Vec<u8>,
        capabilities: Option<Vec<u8>>,
        token: Option<Vec<u8>>,
    },
    Disconnect {
        reason: Vec<u8>,
        message: Option<Vec<u8>>,
    },
    Ping(u64),
    Pong {
        timestamp: u64,
        server_time: u64,
        node_id: Option<[u8; 32]>,
    },
    Error {
        code: Vec<u8>,
        message: Vec<u8>,
        frame_type: u64,
        topic: Option<Vec<u8>>,
        procedure: Option<Vec<u8>>,
    },
    Publish {
        topic: Vec<u8>,
        payload: Vec<u8>,
        qos: Option<u64>,
        retain: Option<bool>,
        message_id: Option<[u8; 16]>,
        publisher: Option<[u8; 32]>,
    },
    Subscribe {
        topics: Vec<Vec<u8>>,
        qos: Option<u64>,
    },
    Unsubscribe {
        topics: Vec<Vec<u8>>,
    },
    Call {
        procedure: Vec<u8>,
        args: Vec<u8>,
        call_id: Option<OwnedCallId>,
        timeout_ms: Option<u64>,
    },
    Reply {
        call_id: Option<OwnedCallId>,
        outcome: OwnedOutcome,
    },
    Register {
        procedure: Vec<u8>,
        ttl_s: Option<u64>,
    },
    Unregister {
        procedure: Vec<u8>,
    },
    Cancel {
        call_id: OwnedCallId,
        reason: Vec<u8>,
    },
}

impl Owned {
    /// Calls `f` with the message borrowed from `self`.
    fn with<R>(&self, f: impl FnOnce(&Message<'_>) -> R) -> R {
        let topic_refs: Vec<&[u8]> = match self {
            Owned::Subscribe { topics, .. } | Owned::Unsubscribe { topics } => {
                topics.iter().map(Vec::as_slice).collect()
            }
            _ => Vec::new(),
        };
        let msg = match self {
            Owned::Connect {
                version,
                node_id,
                realm,
                capabilities,
                token,
            } => Message::Connect(Connect {
                version,
                node_id: NodeId(*node_id),
                realm,
                capabilities: capabilities.as_deref().map(Raw),
                token: token.as_deref(),
            }),
            Owned::Disconnect { reason, message } => Message::Disconnect(Disconnect {
                reason,
                message: message.as_deref(),
            }),
            Owned::Ping(timestamp) => Message::Ping(Ping::new(*timestamp)),
            Owned::Pong {
                timestamp,
                server_time,
                node_id,
            } => Message::Pong(Pong {
                timestamp: *timestamp,
                server_time: *server_time,
                node_id: node_id.map(NodeId),
            }),
            Owned::Error {
                code,
                message,
                frame_type,
                topic,
                procedure,
            } => Message::Error(ErrorMsg {
                code,
                message,
                frame_type: *frame_type,
                topic: topic.as_deref(),
                procedure: procedure.as_deref(),
            }),
            Owned::Publish {
                topic,
                payload,
                qos,
                retain,
                message_id,
                publisher,
            } => Message::Publish(Publish {
                topic,
                payload,
                qos: *qos,
                retain: *retain,
                message_id: message_id.as_ref().map(|m| &m[..]),
                publisher: publisher.map(NodeId),
            }),
            Owned::Subscribe { qos, .. } => Message::Subscribe(Subscribe {
                topics: Strings::List(&topic_refs),
                qos: *qos,
            }),
            Owned::Unsubscribe { .. } => Message::Unsubscribe(Unsubscribe {
                topics: Strings::List(&topic_refs),
            }),
            Owned::Call {
                procedure,
                args,
                call_id,
                timeout_ms,
            } => Message::Call(Call {
                procedure,
                args: Raw(args),
                call_id: call_id.as_ref().map(OwnedCallId::as_ref),
                timeout_ms: *timeout_ms,
            }),
            Owned::Reply { call_id, outcome } => Message::Reply(Reply {
                call_id: call_id.as_ref().map(OwnedCallId::as_ref),
                outcome: outcome.as_outcome(),
            }),
            Owned::Register { procedure, ttl_s } => Message::Register(Register {
                procedure,
                ttl_s: *ttl_s,
            }),
            Owned::Unregister { procedure } => Message::Unregister(Unregister { procedure }),
            Owned::Cancel { call_id, reason } => Message::Cancel(Cancel {
                call_id: call_id.as_ref(),
                reason,
            }),
        };
        f(&msg)
    }

    fn encoded(&self) -> Vec<u8> {
        self.with(encoded)
    }
}

fn call_id() -> impl Strategy<Value = OwnedCallId> {
    prop_oneof![
        int().prop_map(OwnedCallId::Uint),
        (i64::MIN..0).prop_map(OwnedCallId::Neg),
        vec(any::<u8>(), 0..80).prop_map(OwnedCallId::Bytes),
    ]
}

fn owned_message() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (
            bytes(),
            any::<[u8; 32]>(),
            bytes(),
            opt(raw_value()),
            opt(bytes())
        )
            .prop_map(
                |(version, node_id, realm, capabilities, token)| Owned::Connect {
                    version,
                    node_id,
                    realm,
                    capabilities,
                    token
                }
            ),
        (bytes(), opt(bytes())).prop_map(|(reason, message)| Owned::Disconnect { reason, message }),
        int().prop_map(Owned::Ping),
        (int(), int(), opt(any::<[u8; 32]>())).prop_map(|(timestamp, server_time, node_id)| {
            Owned::Pong {
                timestamp,
                server_time,
                node_id,
            }
        }),
        (bytes(), bytes(), int(), opt(bytes()), opt(bytes())).prop_map(
            |(code, message, frame_type, topic, procedure)| Owned::Error {
                code,
                message,
                frame_type,
                topic,
                procedure
            }
        ),
        (
            bytes(),
            bytes(),
            opt(int()),
            opt(any::<bool>()),
            opt(any::<[u8; 16]>()),
            opt(any::<[u8; 32]>())
        )
            .prop_map(|(topic, payload, qos, retain, message_id, publisher)| {
                Owned::Publish {
                    topic,
                    payload,
                    qos,
                    retain,
                    message_id,
                    publisher,
                }
            }),
        (vec(bytes(), 0..6), opt(int())).prop_map(|(topics, qos)| Owned::Subscribe { topics, qos }),
        vec(bytes(), 0..6).prop_map(|topics| Owned::Unsubscribe { topics }),
        (bytes(), raw_value(), opt(call_id()), opt(int())).prop_map(
            |(procedure, args, call_id, timeout_ms)| Owned::Call {
                procedure,
                args,
                call_id,
                timeout_ms
            }
        ),
        (opt(call_id()), outcome())
            .prop_map(|(call_id, outcome)| Owned::Reply { call_id, outcome }),
        (bytes(), opt(int())).prop_map(|(procedure, ttl_s)| Owned::Register { procedure, ttl_s }),
        bytes().prop_map(|procedure| Owned::Unregister { procedure }),
        (call_id(), bytes()).prop_map(|(call_id, reason)| Owned::Cancel { call_id, reason }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips_through_a_reader_fed_in_random_pieces(
        msgs in vec(owned_message(), 1..8),
        sizes in vec(1usize..64, 1..20),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(Owned::encoded).collect();
        let frames = read_in_pieces(&stream, &sizes, MAX_FRAME);
        prop_assert_eq!(frames.len(), msgs.len());
        for (owned, (ty, payload)) in msgs.iter().zip(&frames) {
            owned.with(|msg| {
                let decoded = Message::decode(*ty, payload);
                assert_eq!(decoded.as_ref(), Ok(msg));
                // Encoding is canonical: the decoded message encodes to the same bytes.
                assert_eq!(encoded(&decoded.unwrap()), encoded(msg));
            });
        }
    }

    #[test]
    fn every_message_decodes_the_same_from_str_keys_and_values(owned in owned_message()) {
        let bytes = owned.encoded();
        let (ty, payload) = split(&bytes);
        let as_str = with_str_strings(payload);
        owned.with(|msg| assert_eq!(Message::decode(ty, &as_str).as_ref(), Ok(msg)));
    }

    #[test]
    fn unknown_entries_anywhere_in_the_map_do_not_change_the_message(
        owned in owned_message(),
        extra in unknown_entries(),
    ) {
        let bytes = owned.encoded();
        let (ty, payload) = split(&bytes);
        let payload = with_entries(payload, extra);
        owned.with(|msg| assert_eq!(Message::decode(ty, &payload).as_ref(), Ok(msg)));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_reader_or_the_decoder(
        stream in vec(any::<u8>(), 0..600),
        sizes in vec(1usize..40, 1..10),
        max_frame in prop_oneof![0u32..64, Just(MAX_FRAME)],
    ) {
        let mut reader = FrameReader::new(max_frame);
        let mut rest = &stream[..];
        'feed: for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at(size.min(rest.len()));
            rest = tail;
            if reader.push(piece).is_err() {
                break;
            }
            loop {
                match reader.next_frame() {
                    Ok(Some(f)) => {
                        prop_assert!(f.payload.len() <= max_frame as usize);
                        if let Ok(msg) = Message::decode(f.frame_type, f.payload) {
                            let again = encoded(&msg);
                            let (ty, payload) = split(&again);
                            prop_assert_eq!(Message::decode(ty, payload), Ok(msg));
                        }
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }

    #[test]
    fn corrupted_payloads_of_real_messages_never_panic_the_decoder(
        owned in owned_message(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = owned.encoded();
        let (ty, payload) = split(&bytes);
        let mut payload = payload.to_vec();
        for (at, b) in flips {
            let at = at.index(payload.len());
            payload[at] = b;
        }
        let payload = &payload[..cut.index(payload.len() + 1)];
        if let Ok(msg) = Message::decode(ty, payload) {
            let again = encoded(&msg);
            let (ty, payload) = split(&again);
            prop_assert_eq!(Message::decode(ty, payload), Ok(msg));
        }
    }

    #[test]
    fn a_header_over_the_maximum_is_refused_whatever_the_pieces(
        max in 0u32..10_000,
        over in 1u32..1_000_000,
        sizes in vec(1usize..3000, 1..10),
    ) {
        let len = max.saturating_add(over);
        let mut stream = FrameHeader { frame_type: 0x10, payload_len: len }.to_bytes().to_vec();
        stream.extend_from_slice(&[0u8; 20_000]);
        let mut reader = FrameReader::new(max);
        let mut rest = &stream[..];
        let mut failed = None;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at(size.min(rest.len()));
            rest = tail;
            if let Err(e) = reader.push(piece) {
                failed = Some(e);
                break;
            }
            prop_assert!(reader.buffered() < HEADER_LEN);
        }
        prop_assert_eq!(failed, Some(WireError::FrameTooLarge { len, max }));
        prop_assert_eq!(reader.buffered(), HEADER_LEN);
    }
}

#[test]
fn nil_in_an_optional_field_counts_as_absent() {
    // CONNECT {version: "1.0", node_id: <32 bytes>, realm_id: "r", token: nil}
    let mut payload = vec![0x84];
    for (k, v) in [
        (&b"version"[..], &b"1.0"[..]),
        (b"node_id", &[7u8; 32]),
        (b"realm_id", b"r"),
    ] {
        rmp::encode::write_bin(&mut payload, k).unwrap();
        rmp::encode::write_bin(&mut payload, v).unwrap();
    }
    rmp::encode::write_bin(&mut payload, b"token").unwrap();
    payload.push(0xc0);
    match Message::decode(0x01, &payload).unwrap() {
        Message::Connect(c) => assert_eq!(c.token, None),
        other => panic!("{other:?}"),
    }
}
