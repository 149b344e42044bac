//! The peer-link codec against PROTOCOL.md 9.2 and 9.11: golden bytes, round trips of every
//! peer frame through a frame reader fed in pieces, str accepted for bin, unknown keys skipped,
//! the error each missing or mistyped field gets, and which stream each frame belongs to.

use meshgate_protocol::wire::msgpack::Reader;
use meshgate_protocol::wire::*;
use meshgate_protocol::NodeId;
use proptest::collection::vec;
use proptest::option::of as opt;
use proptest::prelude::*;

mod common;
use common::*;

const MAX_FRAME: u32 = 1 << 20;

fn encoded(msg: &PeerMessage<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    msg.encode(&mut out);
    out
}

fn decode(ty: FrameType, payload: &[u8]) -> Result<PeerMessage<'_>, WireError> {
    PeerMessage::decode(ty as u8, payload)
}

/// Decodes `payload`, expecting `want`, and checks that it is a protocol error.
#[track_caller]
fn assert_refused(ty: FrameType, payload: &[u8], want: WireError) {
    assert_eq!(
        decode(ty, payload),
        Err(want.clone()),
        "payload {payload:02x?}"
    );
    assert_eq!(want.reason(), Reason::ProtocolError);
}

const NODE: NodeId = NodeId([7; 32]);
const NONCE: [u8; 32] = [9; 32];
const DIGEST: [u8; 32] = [3; 32];

/// The keys of PEER_HELLO, in the order they are written.
const HELLO_KEYS: &[&str] = &[
    "version",
    "node_id",
    "node_name",
    "incarnation",
    "nonce",
    "advertise",
    "realms",
    "max_frame",
    "dial_seq",
    "gossip",
    "proof",
];

/// One message of each peer type and link form, every optional field set.
fn one_of_each() -> Vec<PeerMessage<'static>> {
    const REALMS: &[RealmDigest<'static>] = &[
        RealmDigest {
            realm: b"macula.default",
            digest: None,
        },
        RealmDigest {
            realm: b"secret",
            digest: Some(&DIGEST),
        },
    ];
    const MEMBERS: &[Member<'static>] = &[Member {
        node_name: b"gw-b",
        node_id: NodeId([2; 32]),
        addr: b"10.0.0.2:9443",
    }];
    const PATTERNS: &[&[u8]] = &[b"sensor.**", b"a.*.b"];
    const GONE: &[&[u8]] = &[b"old"];
    const PROCS: &[ProcCount<'static>] = &[ProcCount {
        procedure: b"svc.echo",
        count: 2,
    }];
    vec![
        PeerMessage::Hello(PeerHello {
            version: PEER_VERSION,
            node_id: NODE,
            node_name: b"gw-a",
            incarnation: 1_700_000_000_000,
            nonce: &NONCE,
            advertise: b"10.0.0.1:9443",
            realms: Entries::List(REALMS),
            max_frame: 1 << 20,
            dial: Some(Dial {
                seq: 3,
                gossip: true,
            }),
            proof: Some(&DIGEST),
        }),
        PeerMessage::Auth(PeerAuth { proof: &DIGEST }),
        PeerMessage::Members(PeerMembers {
            members: Entries::List(MEMBERS),
        }),
        PeerMessage::Interest(Interest {
            realm: b"macula.default",
            sub_add: Strings::List(PATTERNS),
            sub_del: Strings::List(GONE),
            procs: Entries::List(PROCS),
        }),
        PeerMessage::Sync(SyncMsg {
            realm: b"macula.default",
            phase: SyncPhase::Digest(u64::MAX),
        }),
        PeerMessage::Ping(Ping::new(5)),
        PeerMessage::Pong(Pong {
            timestamp: 5,
            server_time: 6,
            node_id: None,
        }),
        PeerMessage::Disconnect(Disconnect {
            reason: LinkReason::DuplicateLink.as_str().as_bytes(),
            message: Some(b"kept the other link"),
        }),
        PeerMessage::Publish(LinkPublish {
            realm: b"macula.default",
            publisher: NODE,
            topic: b"sensor.temp",
            payload: b"21.5",
            qos: Some(1),
            retain: Some(false),
            message_id: Some(&[4; 16]),
        }),
        PeerMessage::Call(LinkCall {
            realm: b"macula.default",
            procedure: b"svc.echo",
            args: Raw(&[0x91, 0x01]),
            call_id: 77,
            timeout_ms: 5_000,
            caller: NODE,
        }),
        PeerMessage::Reply(LinkReply {
            call_id: 77,
            outcome: Outcome::Error {
                code: b"procedure_not_found",
                message: Some(b"none"),
            },
        }),
        PeerMessage::Cancel(LinkCancel {
            call_id: 77,
            reason: b"caller_gone",
        }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Golden bytes and layout

#[test]
fn sync_digest_encodes_to_the_golden_bytes() {
    let bytes = encoded(&PeerMessage::Sync(SyncMsg {
        realm: b"r",
        phase: SyncPhase::Digest(0x0102),
    }));
    let mut golden = vec![0x01, 0x2d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x25, 0x83];
    golden.extend_from_slice(&[0xc4, 0x05]);
    golden.extend_from_slice(b"realm");
    golden.extend_from_slice(&[0xc4, 0x01, b'r', 0xc4, 0x05]);
    golden.extend_from_slice(b"phase");
    golden.extend_from_slice(&[0xc4, 0x06]);
    golden.extend_from_slice(b"digest");
    golden.extend_from_slice(&[0xc4, 0x06]);
    golden.extend_from_slice(b"digest");
    golden.extend_from_slice(&[0xcd, 0x01, 0x02]);
    assert_eq!(bytes, golden);
}

/// The keys of the map `r` is at, in order, checking that each is bin; the reader is left
/// after the map.
fn keys_of_map(r: &mut Reader<'_>) -> Vec<String> {
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
    keys
}

/// The keys of an encoded frame's map, in order, checking that each is bin.
fn keys_of(frame: &[u8]) -> Vec<String> {
    let mut r = Reader::new(split(frame).1);
    let keys = keys_of_map(&mut r);
    assert!(r.is_empty());
    keys
}

#[test]
fn every_peer_frame_writes_its_keys_as_bin_in_the_documented_order() {
    let want: &[&[&str]] = &[
        HELLO_KEYS,
        &["proof"],
        &["members"],
        &["realm", "sub_add", "sub_del", "procs"],
        &["realm", "phase", "digest"],
        &["timestamp"],
        &["timestamp", "server_time"],
        &["reason", "message"],
        &[
            "realm",
            "topic",
            "payload",
            "qos",
            "retain",
            "message_id",
            "publisher",
        ],
        &["realm", "procedure", "args", "call_id", "timeout", "caller"],
        &["call_id", "error"],
        &["call_id", "reason"],
    ];
    for (msg, want) in one_of_each().iter().zip(want) {
        assert_eq!(&keys_of(&encoded(msg)), want, "{msg:?}");
    }
}

#[test]
fn the_lists_of_a_peer_frame_hold_bin_keys_and_strings() {
    let msgs = one_of_each();
    // PEER_HELLO `realms`: {realm: digest}, both bin.
    let bytes = encoded(&msgs[0]);
    let (_, realms) = entries(split(&bytes).1)
        .into_iter()
        .find(|(k, _)| *k == bin(b"realms"))
        .unwrap();
    let mut r = Reader::new(&realms);
    assert_eq!(r.read_map_len(), Ok(2));
    while !r.is_empty() {
        let marker = r.peek_marker().unwrap();
        assert!(matches!(marker, rmp::Marker::Bin8), "{marker:?}");
        r.skip().unwrap();
    }
    // PEER_MEMBERS `members`: [{node_name, node_id, addr}].
    let bytes = encoded(&msgs[2]);
    let (_, members) = entries(split(&bytes).1).remove(0);
    let mut r = Reader::new(&members);
    assert_eq!(r.read_array_len(), Ok(1));
    assert_eq!(keys_of_map(&mut r), ["node_name", "node_id", "addr"]);
    assert!(r.is_empty());
}

#[test]
fn empty_interest_lists_and_absent_optional_fields_are_left_out() {
    let msg = PeerMessage::Interest(Interest {
        realm: b"r",
        sub_add: Strings::List(&[]),
        sub_del: Strings::List(&[]),
        procs: Entries::default(),
    });
    assert_eq!(keys_of(&encoded(&msg)), ["realm"]);
    let msg = PeerMessage::Sync(SyncMsg {
        realm: b"r",
        phase: SyncPhase::Begin,
    });
    assert_eq!(keys_of(&encoded(&msg)), ["realm", "phase"]);
    let PeerMessage::Hello(mut hello) = one_of_each()[0] else {
        unreachable!()
    };
    hello.dial = None;
    hello.proof = None;
    assert_eq!(keys_of(&encoded(&PeerMessage::Hello(hello))).len(), 8);
}

// ---------------------------------------------------------------------------------------------
// Streams, types and reasons

#[test]
fn each_frame_type_belongs_to_the_stream_of_9_2() {
    use FrameType::*;
    for ty in [
        PeerHello,
        PeerAuth,
        PeerMembers,
        Interest,
        Sync,
        Ping,
        Pong,
        Disconnect,
    ] {
        assert_eq!(LinkStream::of(ty as u8), Ok(LinkStream::Control), "{ty:?}");
        assert_eq!(LinkStream::Control.check(ty as u8), Ok(()));
        assert_eq!(
            LinkStream::Data.check(ty as u8),
            Err(WireError::WrongStream(ty as u8))
        );
    }
    for ty in [Publish, Call, Reply, Cancel] {
        assert_eq!(LinkStream::of(ty as u8), Ok(LinkStream::Data), "{ty:?}");
        assert_eq!(LinkStream::Data.check(ty as u8), Ok(()));
        assert_eq!(
            LinkStream::Control.check(ty as u8),
            Err(WireError::WrongStream(ty as u8))
        );
    }
    for msg in one_of_each() {
        assert_eq!(LinkStream::of(msg.frame_type() as u8), Ok(msg.stream()));
    }
    assert_eq!(WireError::WrongStream(0x10).reason(), Reason::ProtocolError);
}

#[test]
fn client_only_types_are_refused_on_a_link_whatever_the_stream() {
    use FrameType::*;
    let payload = fields(&[("timestamp", uint(1))]);
    for ty in [Connect, Error, Subscribe, Unsubscribe, Register, Unregister] {
        let want = Err(WireError::NotOnLink(ty as u8));
        assert_eq!(LinkStream::of(ty as u8), want);
        assert_eq!(
            LinkStream::Control
                .check(ty as u8)
                .map(|_| LinkStream::Control),
            want
        );
        assert_eq!(
            LinkStream::Data.check(ty as u8).map(|_| LinkStream::Data),
            want
        );
        assert_eq!(
            PeerMessage::decode(ty as u8, &payload),
            Err(WireError::NotOnLink(ty as u8))
        );
        // Not even a payload that is not a map is looked at.
        assert_eq!(
            PeerMessage::decode(ty as u8, &[0xc1]),
            Err(WireError::NotOnLink(ty as u8))
        );
    }
    assert_eq!(
        PeerMessage::decode(0x06, &payload),
        Err(WireError::UnknownType(0x06))
    );
    assert_eq!(LinkStream::of(0x2e), Err(WireError::UnknownType(0x2e)));
    assert_eq!(WireError::NotOnLink(0x01).reason(), Reason::ProtocolError);
}

#[test]
fn a_client_connection_refuses_every_peer_type_as_unknown() {
    for msg in one_of_each() {
        let ty = msg.frame_type();
        if !ty.is_peer_only() {
            continue;
        }
        let bytes = encoded(&msg);
        let (code, payload) = split(&bytes);
        assert_eq!(
            Message::decode(code, payload),
            Err(WireError::UnknownType(code))
        );
    }
    for code in 0x29..=0x2d {
        assert!(FrameType::from_u8(code).is_some_and(FrameType::is_peer_only));
    }
}

#[test]
fn frame_types_are_named_as_in_the_protocol() {
    assert_eq!(FrameType::PeerHello.name(), "PEER_HELLO");
    assert_eq!(FrameType::Interest.name(), "INTEREST");
    assert_eq!(FrameType::Register.name(), "REGISTER_PROCEDURE");
    assert_eq!(FrameType::Publish.name(), "PUBLISH");
}

#[test]
fn link_reasons_have_the_strings_and_codes_of_9_11_and_leave_reason_all_alone() {
    let added = [
        (LinkReason::DuplicateLink, "duplicate_link", 0x0a),
        (LinkReason::PeerEvicted, "peer_evicted", 0x0b),
        (LinkReason::NameConflict, "name_conflict", 0x0c),
        (LinkReason::ConfigMismatch, "config_mismatch", 0x0d),
    ];
    assert_eq!(LinkReason::ADDED, added.map(|(r, _, _)| r));
    for (reason, s, code) in added {
        assert_eq!(reason.as_str(), s);
        assert_eq!(reason.close_code(), code);
        assert_eq!(LinkReason::from_wire(s.as_bytes()), Some(reason));
        assert_eq!(LinkReason::from_close_code(code), Some(reason));
        assert_eq!(Reason::from_wire(s.as_bytes()), None);
        assert_eq!(Reason::from_close_code(code), None);
    }
    for reason in Reason::ALL {
        let link = LinkReason::from(reason);
        assert_eq!(link.as_str(), reason.as_str());
        assert_eq!(link.close_code(), reason.close_code());
        assert_eq!(
            LinkReason::from_wire(reason.as_str().as_bytes()),
            Some(link)
        );
        assert_eq!(LinkReason::from_close_code(reason.close_code()), Some(link));
    }
    assert_eq!(Reason::ALL.len(), 10);
    assert_eq!(LinkReason::from_wire(b"bogus"), None);
    assert_eq!(LinkReason::from_close_code(0x0e), None);
}

#[test]
fn a_link_reads_frames_up_to_max_frame_and_4_kib() {
    assert_eq!(LINK_HEADROOM, 4096);
    assert_eq!(link_max_frame(MAX_FRAME), MAX_FRAME + 4096);
    assert_eq!(link_max_frame(u32::MAX - 1), u32::MAX);
    let mut reader = FrameReader::new(link_max_frame(10));
    let header = FrameHeader {
        frame_type: 0x10,
        payload_len: 10 + 4096,
    };
    assert_eq!(reader.push(&header.to_bytes()), Ok(()));
    let mut reader = FrameReader::new(link_max_frame(10));
    let header = FrameHeader {
        frame_type: 0x10,
        payload_len: 10 + 4097,
    };
    assert!(reader.push(&header.to_bytes()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Accepted input

#[test]
fn a_link_publish_is_what_the_client_sent_with_realm_and_publisher() {
    let client = Publish {
        topic: b"t",
        payload: b"p",
        qos: None,
        retain: Some(true),
        message_id: None,
        publisher: None,
    };
    let link = LinkPublish::forwarded(b"r", NODE, &client);
    assert_eq!(link.realm, b"r");
    assert_eq!(
        link.delivery(),
        Publish {
            publisher: Some(NODE),
            ..client
        }
    );
    // The client decoder reads a link PUBLISH as the PUBLISH its receiver delivers.
    let bytes = encoded(&PeerMessage::Publish(link));
    let (ty, payload) = split(&bytes);
    assert_eq!(
        Message::decode(ty, payload),
        Ok(Message::Publish(link.delivery()))
    );
}

#[test]
fn str_keys_and_values_are_accepted_in_nested_lists() {
    let payload = map(&[(
        str_(b"members"),
        array(&[map(&[
            (str_(b"node_name"), str_(b"gw-b")),
            (str_(b"node_id"), str_(&[2; 32])),
            (str_(b"addr"), str_(b"h:1")),
            (str_(b"extra"), array(&[uint(1)])),
        ])]),
    )]);
    let want: &[Member<'_>] = &[Member {
        node_name: b"gw-b",
        node_id: NodeId([2; 32]),
        addr: b"h:1",
    }];
    assert_eq!(
        decode(FrameType::PeerMembers, &payload),
        Ok(PeerMessage::Members(PeerMembers {
            members: Entries::List(want)
        }))
    );
    let payload = map(&[
        (str_(b"realm"), str_(b"r")),
        (str_(b"procs"), map(&[(str_(b"p"), uint(0))])),
        (str_(b"sub_del"), array(&[str_(b"x.*")])),
    ]);
    let procs: &[ProcCount<'_>] = &[ProcCount {
        procedure: b"p",
        count: 0,
    }];
    let del: &[&[u8]] = &[b"x.*"];
    assert_eq!(
        decode(FrameType::Interest, &payload),
        Ok(PeerMessage::Interest(Interest {
            realm: b"r",
            sub_add: Strings::List(&[]),
            sub_del: Strings::List(del),
            procs: Entries::List(procs),
        }))
    );
}

#[test]
fn nil_in_an_optional_field_counts_as_absent() {
    let payload = fields(&[
        ("realm", bin(b"r")),
        ("sub_add", NIL.to_vec()),
        ("procs", NIL.to_vec()),
    ]);
    let Ok(PeerMessage::Interest(i)) = decode(FrameType::Interest, &payload) else {
        panic!("not an INTEREST");
    };
    assert!(i.sub_add.is_empty() && i.procs.is_empty());
    let bytes = encoded(&one_of_each()[0]);
    let mut all = entries(split(&bytes).1);
    for (k, v) in &mut all {
        if [bin(b"dial_seq"), bin(b"gossip"), bin(b"proof")].contains(k) {
            *v = NIL.to_vec();
        }
    }
    let payload = map(&all);
    let Ok(PeerMessage::Hello(hello)) = decode(FrameType::PeerHello, &payload) else {
        panic!("not a PEER_HELLO");
    };
    assert_eq!((hello.dial, hello.proof), (None, None));
}

#[test]
fn the_version_and_max_frame_of_a_hello_are_left_to_the_receiver() {
    let PeerMessage::Hello(mut hello) = one_of_each()[0] else {
        unreachable!()
    };
    hello.version = b"2";
    hello.max_frame = u64::MAX;
    let bytes = encoded(&PeerMessage::Hello(hello));
    let (ty, payload) = split(&bytes);
    assert_eq!(
        PeerMessage::decode(ty, payload),
        Ok(PeerMessage::Hello(hello))
    );
}

// ---------------------------------------------------------------------------------------------
// Refused input

/// The payload of `msg`'s frame with the entry of `key` removed, or its value replaced.
fn edited(msg: &PeerMessage<'_>, key: &str, value: Option<Vec<u8>>) -> Vec<u8> {
    let bytes = encoded(msg);
    let mut all = entries(split(&bytes).1);
    let at = all
        .iter()
        .position(|(k, _)| *k == bin(key.as_bytes()))
        .unwrap_or_else(|| panic!("{key} not in {msg:?}"));
    match value {
        Some(v) => all[at].1 = v,
        None => {
            all.remove(at);
        }
    }
    map(&all)
}

#[test]
fn every_missing_required_field_is_named_in_missing_field() {
    let required: &[&[&str]] = &[
        // All but `proof`, whose absence is the receiver's to judge (9.3).
        &HELLO_KEYS[..10],
        &["proof"],
        &["members"],
        &["realm"],
        &["realm", "phase", "digest"],
        &["timestamp"],
        &["timestamp", "server_time"],
        &["reason"],
        &["realm", "topic", "payload", "publisher"],
        &["realm", "procedure", "call_id", "timeout", "caller"],
        &["call_id"],
        &["call_id", "reason"],
    ];
    for (msg, keys) in one_of_each().iter().zip(required) {
        for key in *keys {
            assert_refused(
                msg.frame_type(),
                &edited(msg, key, None),
                WireError::MissingField(key),
            );
        }
    }
    // Inside a member.
    let member = fields(&[("node_name", bin(b"n")), ("addr", bin(b"a"))]);
    assert_refused(
        FrameType::PeerMembers,
        &fields(&[("members", array(&[member]))]),
        WireError::MissingField("node_id"),
    );
}

#[test]
fn every_field_of_the_wrong_type_is_named_in_bad_field() {
    let (text, int, flag, list) = (uint(1), bin(b"1"), uint(1), bin(b"l"));
    let typed: &[&[(&str, &Vec<u8>)]] = &[
        &[
            ("version", &text),
            ("node_id", &text),
            ("node_name", &text),
            ("incarnation", &int),
            ("nonce", &text),
            ("advertise", &text),
            ("realms", &list),
            ("max_frame", &int),
            ("dial_seq", &int),
            ("gossip", &flag),
            ("proof", &text),
        ],
        &[("proof", &text)],
        &[("members", &list)],
        &[
            ("realm", &text),
            ("sub_add", &list),
            ("sub_del", &list),
            ("procs", &list),
        ],
        &[("realm", &text), ("phase", &text), ("digest", &int)],
        &[("timestamp", &int)],
        &[("timestamp", &int), ("server_time", &int)],
        &[("reason", &text), ("message", &text)],
        &[
            ("realm", &text),
            ("topic", &text),
            ("payload", &text),
            ("qos", &int),
            ("retain", &flag),
            ("message_id", &text),
            ("publisher", &text),
        ],
        &[
            ("realm", &text),
            ("procedure", &text),
            ("call_id", &int),
            ("timeout", &int),
            ("caller", &text),
        ],
        &[("call_id", &int), ("error", &text)],
        &[("call_id", &int), ("reason", &text)],
    ];
    for (msg, keys) in one_of_each().iter().zip(typed) {
        for (key, value) in *keys {
            assert_refused(
                msg.frame_type(),
                &edited(msg, key, Some((*value).clone())),
                WireError::BadField(key),
            );
        }
    }
}

#[test]
fn ids_nonces_proofs_and_digests_must_have_their_exact_length() {
    let hello = one_of_each()[0];
    for key in ["node_id", "nonce", "proof"] {
        for len in [0, 31, 33] {
            assert_refused(
                FrameType::PeerHello,
                &edited(&hello, key, Some(bin(&vec![0; len]))),
                WireError::BadField(key),
            );
        }
    }
    let realms = map(&[(bin(b"r"), bin(&[0; 16]))]);
    assert_refused(
        FrameType::PeerHello,
        &edited(&hello, "realms", Some(realms)),
        WireError::BadField("realms"),
    );
    let realms = map(&[(uint(1), bin(&[]))]);
    assert_refused(
        FrameType::PeerHello,
        &edited(&hello, "realms", Some(realms)),
        WireError::BadField("realms"),
    );
    let members = array(&[bin(b"not a map")]);
    assert_refused(
        FrameType::PeerMembers,
        &fields(&[("members", members)]),
        WireError::BadField("members"),
    );
    let auth = fields(&[("proof", bin(&[1; 31]))]);
    assert_refused(FrameType::PeerAuth, &auth, WireError::BadField("proof"));
}

#[test]
fn a_procedure_count_must_be_an_integer_of_32_bits_at_most() {
    for bad in [sint(-1), uint(u64::from(u32::MAX) + 1), bin(b"1")] {
        let payload = fields(&[("realm", bin(b"r")), ("procs", map(&[(bin(b"p"), bad)]))]);
        assert_refused(FrameType::Interest, &payload, WireError::BadField("procs"));
    }
    let payload = fields(&[
        ("realm", bin(b"r")),
        ("procs", map(&[(bin(b"p"), uint(u64::from(u32::MAX)))])),
    ]);
    assert!(decode(FrameType::Interest, &payload).is_ok());
}

#[test]
fn a_dial_seq_without_gossip_or_gossip_without_dial_seq_is_refused() {
    let hello = one_of_each()[0];
    assert_refused(
        FrameType::PeerHello,
        &edited(&hello, "gossip", None),
        WireError::MissingField("gossip"),
    );
    assert_refused(
        FrameType::PeerHello,
        &edited(&hello, "dial_seq", None),
        WireError::MissingField("dial_seq"),
    );
}

#[test]
fn sync_takes_only_its_four_phases_and_a_digest_only_with_digest() {
    let sync = |phase: &[u8], digest: Option<u64>| {
        let mut entries = vec![("realm", bin(b"r")), ("phase", bin(phase))];
        entries.extend(digest.map(|d| ("digest", uint(d))));
        fields(&entries)
    };
    for (phase, want) in [
        (&b"begin"[..], SyncPhase::Begin),
        (b"end", SyncPhase::End),
        (b"request", SyncPhase::Request),
    ] {
        assert_eq!(
            decode(FrameType::Sync, &sync(phase, None)),
            Ok(PeerMessage::Sync(SyncMsg {
                realm: b"r",
                phase: want
            }))
        );
        assert_refused(
            FrameType::Sync,
            &sync(phase, Some(1)),
            WireError::BadField("digest"),
        );
    }
    assert_refused(
        FrameType::Sync,
        &sync(b"digest", None),
        WireError::MissingField("digest"),
    );
    assert_refused(
        FrameType::Sync,
        &sync(b"Begin", None),
        WireError::BadField("phase"),
    );
}

#[test]
fn a_call_on_a_link_without_timeout_or_with_timeout_0_is_refused() {
    let call = one_of_each()[9];
    assert_refused(
        FrameType::Call,
        &edited(&call, "timeout", None),
        WireError::MissingField("timeout"),
    );
    assert_refused(
        FrameType::Call,
        &edited(&call, "timeout", Some(NIL.to_vec())),
        WireError::MissingField("timeout"),
    );
    assert_refused(
        FrameType::Call,
        &edited(&call, "timeout", Some(uint(0))),
        WireError::BadField("timeout"),
    );
    let payload = edited(&call, "timeout", Some(uint(1)));
    let Ok(PeerMessage::Call(c)) = decode(FrameType::Call, &payload) else {
        panic!("not a CALL");
    };
    assert_eq!(c.timeout_ms, 1);
}

#[test]
fn a_call_id_that_is_not_a_non_negative_integer_is_refused_on_a_link() {
    let msgs = one_of_each();
    for msg in &msgs[9..] {
        for bad in [
            bin(b"7"),
            str_(b"7"),
            sint(-7),
            NIL.to_vec(),
            vec![0xcb, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert_refused(
                msg.frame_type(),
                &edited(msg, "call_id", Some(bad)),
                WireError::BadField("call_id"),
            );
        }
        // Any integer form of a u64 is taken.
        let wide = vec![0xd3, 0, 0, 0, 0, 0, 0, 0, 77];
        let payload = edited(msg, "call_id", Some(wide));
        assert_eq!(decode(msg.frame_type(), &payload).as_ref(), Ok(msg));
    }
}

#[test]
fn a_pong_on_a_link_carries_no_node_id() {
    let payload = fields(&[
        ("timestamp", uint(1)),
        ("server_time", uint(2)),
        ("node_id", bin(&[1; 32])),
    ]);
    assert_refused(FrameType::Pong, &payload, WireError::BadField("node_id"));
    assert!(Message::decode(FrameType::Pong as u8, &payload).is_ok());
}

#[test]
fn link_data_frames_need_their_link_fields_where_the_client_path_does_not() {
    // What a client may send is not enough on a link.
    let publish = fields(&[("topic", bin(b"t")), ("payload", bin(b""))]);
    assert!(Message::decode(0x10, &publish).is_ok());
    assert_refused(
        FrameType::Publish,
        &publish,
        WireError::MissingField("realm"),
    );
    let call = fields(&[("procedure", bin(b"p")), ("timeout", uint(5))]);
    assert!(Message::decode(0x20, &call).is_ok());
    assert_refused(FrameType::Call, &call, WireError::MissingField("realm"));
}

// ---------------------------------------------------------------------------------------------
// Arbitrary peer frames

/// A peer message that owns its bytes, from which a borrowed [`PeerMessage`] is made.
#[derive(Clone, Debug)]
enum Owned {
    Hello {
        version: Vec<u8>,
        node_id: [u8; 32],
        node_name: Vec<u8>,
        incarnation: u64,
        nonce: [u8; 32],
        advertise: Vec<u8>,
        realms: Vec<(Vec<u8>, Option<[u8; 32]>)>,
        max_frame: u64,
        dial: Option<Dial>,
        proof: Option<[u8; 32]>,
    },
    Auth([u8; 32]),
    Members(Vec<(Vec<u8>, [u8; 32], Vec<u8>)>),
    Interest {
        realm: Vec<u8>,
        sub_add: Vec<Vec<u8>>,
        sub_del: Vec<Vec<u8>>,
        procs: Vec<(Vec<u8>, u32)>,
    },
    Sync(Vec<u8>, SyncPhase),
    Ping(u64),
    Pong(u64, u64),
    Disconnect(Vec<u8>, Option<Vec<u8>>),
    Publish {
        realm: Vec<u8>,
        publisher: [u8; 32],
        topic: Vec<u8>,
        payload: Vec<u8>,
        qos: Option<u64>,
        retain: Option<bool>,
        message_id: Option<[u8; 16]>,
    },
    Call {
        realm: Vec<u8>,
        procedure: Vec<u8>,
        args: Vec<u8>,
        call_id: u64,
        timeout_ms: u64,
        caller: [u8; 32],
    },
    Reply(u64, OwnedOutcome),
    Cancel(u64, Vec<u8>),
}

impl Owned {
    fn with<R>(&self, f: impl FnOnce(&PeerMessage<'_>) -> R) -> R {
        let realms: Vec<RealmDigest<'_>>;
        let members: Vec<Member<'_>>;
        let (add, del): (Vec<&[u8]>, Vec<&[u8]>);
        let procs: Vec<ProcCount<'_>>;
        let msg = match self {
            Owned::Hello {
                version,
                node_id,
                node_name,
                incarnation,
                nonce,
                advertise,
                realms: owned,
                max_frame,
                dial,
                proof,
            } => {
                realms = owned
                    .iter()
                    .map(|(realm, digest)| RealmDigest {
                        realm,
                        digest: digest.as_ref(),
                    })
                    .collect();
                PeerMessage::Hello(PeerHello {
                    version,
                    node_id: NodeId(*node_id),
                    node_name,
                    incarnation: *incarnation,
                    nonce,
                    advertise,
                    realms: Entries::List(&realms),
                    max_frame: *max_frame,
                    dial: *dial,
                    proof: proof.as_ref(),
                })
            }
            Owned::Auth(proof) => PeerMessage::Auth(PeerAuth { proof }),
            Owned::Members(owned) => {
                members = owned
                    .iter()
                    .map(|(node_name, node_id, addr)| Member {
                        node_name,
                        node_id: NodeId(*node_id),
                        addr,
                    })
                    .collect();
                PeerMessage::Members(PeerMembers {
                    members: Entries::List(&members),
                })
            }
            Owned::Interest {
                realm,
                sub_add,
                sub_del,
                procs: owned,
            } => {
                add = sub_add.iter().map(|p| &p[..]).collect();
                del = sub_del.iter().map(|p| &p[..]).collect();
                procs = owned
                    .iter()
                    .map(|(procedure, count)| ProcCount {
                        procedure,
                        count: *count,
                    })
                    .collect();
                PeerMessage::Interest(Interest {
                    realm,
                    sub_add: Strings::List(&add),
                    sub_del: Strings::List(&del),
                    procs: Entries::List(&procs),
                })
            }
            Owned::Sync(realm, phase) => PeerMessage::Sync(SyncMsg {
                realm,
                phase: *phase,
            }),
            Owned::Ping(timestamp) => PeerMessage::Ping(Ping::new(*timestamp)),
            Owned::Pong(timestamp, server_time) => PeerMessage::Pong(Pong {
                timestamp: *timestamp,
                server_time: *server_time,
                node_id: None,
            }),
            Owned::Disconnect(reason, message) => PeerMessage::Disconnect(Disconnect {
                reason,
                message: message.as_deref(),
            }),
            Owned::Publish {
                realm,
                publisher,
                topic,
                payload,
                qos,
                retain,
                message_id,
            } => PeerMessage::Publish(LinkPublish {
                realm,
                publisher: NodeId(*publisher),
                topic,
                payload,
                qos: *qos,
                retain: *retain,
                message_id: message_id.as_ref().map(|m| &m[..]),
            }),
            Owned::Call {
                realm,
                procedure,
                args,
                call_id,
                timeout_ms,
                caller,
            } => PeerMessage::Call(LinkCall {
                realm,
                procedure,
                args: Raw(args),
                call_id: *call_id,
                timeout_ms: *timeout_ms,
                caller: NodeId(*caller),
            }),
            Owned::Reply(call_id, outcome) => PeerMessage::Reply(LinkReply {
                call_id: *call_id,
                outcome: outcome.as_outcome(),
            }),
            Owned::Cancel(call_id, reason) => PeerMessage::Cancel(LinkCancel {
                call_id: *call_id,
                reason,
            }),
        };
        f(&msg)
    }

    fn encoded(&self) -> Vec<u8> {
        self.with(encoded)
    }
}

fn id() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn sync_phase() -> impl Strategy<Value = SyncPhase> {
    prop_oneof![
        Just(SyncPhase::Begin),
        Just(SyncPhase::End),
        Just(SyncPhase::Request),
        int().prop_map(SyncPhase::Digest),
    ]
}

fn owned_hello() -> impl Strategy<Value = Owned> {
    (
        (bytes(), id(), bytes(), int(), id(), bytes()),
        vec((bytes(), opt(id())), 0..5),
        int(),
        opt((int(), any::<bool>()).prop_map(|(seq, gossip)| Dial { seq, gossip })),
        opt(id()),
    )
        .prop_map(
            |(
                (version, node_id, node_name, incarnation, nonce, advertise),
                realms,
                max_frame,
                dial,
                proof,
            )| {
                Owned::Hello {
                    version,
                    node_id,
                    node_name,
                    incarnation,
                    nonce,
                    advertise,
                    realms,
                    max_frame,
                    dial,
                    proof,
                }
            },
        )
}

fn owned_message() -> impl Strategy<Value = Owned> {
    prop_oneof![
        owned_hello(),
        id().prop_map(Owned::Auth),
        vec((bytes(), id(), bytes()), 0..5).prop_map(Owned::Members),
        (
            bytes(),
            vec(bytes(), 0..5),
            vec(bytes(), 0..5),
            vec((bytes(), any::<u32>()), 0..5)
        )
            .prop_map(|(realm, sub_add, sub_del, procs)| Owned::Interest {
                realm,
                sub_add,
                sub_del,
                procs
            }),
        (bytes(), sync_phase()).prop_map(|(realm, phase)| Owned::Sync(realm, phase)),
        int().prop_map(Owned::Ping),
        (int(), int()).prop_map(|(t, s)| Owned::Pong(t, s)),
        (bytes(), opt(bytes())).prop_map(|(r, m)| Owned::Disconnect(r, m)),
        (
            (bytes(), id(), bytes(), bytes()),
            opt(int()),
            opt(any::<bool>()),
            opt(any::<[u8; 16]>())
        )
            .prop_map(
                |((realm, publisher, topic, payload), qos, retain, message_id)| {
                    Owned::Publish {
                        realm,
                        publisher,
                        topic,
                        payload,
                        qos,
                        retain,
                        message_id,
                    }
                }
            ),
        (bytes(), bytes(), raw_value(), int(), 1..=u64::MAX, id()).prop_map(
            |(realm, procedure, args, call_id, timeout_ms, caller)| Owned::Call {
                realm,
                procedure,
                args,
                call_id,
                timeout_ms,
                caller,
            }
        ),
        (int(), outcome()).prop_map(|(id, o)| Owned::Reply(id, o)),
        (int(), bytes()).prop_map(|(id, r)| Owned::Cancel(id, r)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_peer_frame_round_trips_through_a_reader_fed_in_random_pieces(
        msgs in vec(owned_message(), 1..8),
        sizes in vec(1usize..64, 1..20),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(Owned::encoded).collect();
        let frames = read_in_pieces(&stream, &sizes, link_max_frame(MAX_FRAME));
        prop_assert_eq!(frames.len(), msgs.len());
        for (owned, (ty, payload)) in msgs.iter().zip(&frames) {
            owned.with(|msg| {
                assert_eq!(LinkStream::of(*ty), Ok(msg.stream()));
                let decoded = PeerMessage::decode(*ty, payload);
                assert_eq!(decoded.as_ref(), Ok(msg));
                // Encoding is canonical: the decoded message encodes to the same bytes.
                assert_eq!(encoded(&decoded.unwrap()), encoded(msg));
            });
        }
    }

    #[test]
    fn every_peer_frame_decodes_the_same_from_str_keys_and_strings(owned in owned_message()) {
        let bytes = owned.encoded();
        let (ty, payload) = split(&bytes);
        let as_str = with_str_strings(payload);
        owned.with(|msg| assert_eq!(PeerMessage::decode(ty, &as_str).as_ref(), Ok(msg)));
    }

    #[test]
    fn unknown_entries_anywhere_in_a_peer_frame_do_not_change_it(
        owned in owned_message(),
        extra in unknown_entries(),
    ) {
        let bytes = owned.encoded();
        let (ty, payload) = split(&bytes);
        let payload = with_entries(payload, extra);
        owned.with(|msg| assert_eq!(PeerMessage::decode(ty, &payload).as_ref(), Ok(msg)));
    }

    #[test]
    fn link_data_frames_read_by_the_client_decoder_are_their_client_forms(
        owned in owned_message(),
    ) {
        let bytes = owned.encoded();
        let (ty, payload) = split(&bytes);
        let client = Message::decode(ty, payload);
        owned.with(|msg| match *msg {
            PeerMessage::Publish(p) => assert_eq!(client, Ok(Message::Publish(p.delivery()))),
            PeerMessage::Call(c) => assert_eq!(
                client,
                Ok(Message::Call(Call {
                    procedure: c.procedure,
                    args: c.args,
                    call_id: Some(CallIdRef::Uint(c.call_id)),
                    timeout_ms: Some(c.timeout_ms),
                }))
            ),
            PeerMessage::Reply(r) => assert_eq!(
                client,
                Ok(Message::Reply(Reply {
                    call_id: Some(CallIdRef::Uint(r.call_id)),
                    outcome: r.outcome,
                }))
            ),
            PeerMessage::Cancel(c) => assert_eq!(
                client,
                Ok(Message::Cancel(Cancel {
                    call_id: CallIdRef::Uint(c.call_id),
                    reason: c.reason,
                }))
            ),
            PeerMessage::Ping(p) => assert_eq!(client, Ok(Message::Ping(p))),
            PeerMessage::Pong(p) => assert_eq!(client, Ok(Message::Pong(p))),
            PeerMessage::Disconnect(d) => assert_eq!(client, Ok(Message::Disconnect(d))),
            _ => assert_eq!(client, Err(WireError::UnknownType(ty))),
        });
    }

    #[test]
    fn corrupted_peer_frames_never_panic_and_what_decodes_round_trips(
        owned in owned_message(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        ty in prop_oneof![Just(None), (0u8..0x30).prop_map(Some)],
    ) {
        let bytes = owned.encoded();
        let (own_ty, payload) = split(&bytes);
        let ty = ty.unwrap_or(own_ty);
        let mut payload = payload.to_vec();
        for (at, b) in flips {
            let at = at.index(payload.len());
            payload[at] = b;
        }
        let payload = &payload[..cut.index(payload.len() + 1)];
        match PeerMessage::decode(ty, payload) {
            Ok(msg) => {
                prop_assert_eq!(LinkStream::of(ty), Ok(msg.stream()));
                let again = encoded(&msg);
                let (ty, payload) = split(&again);
                prop_assert_eq!(PeerMessage::decode(ty, payload), Ok(msg));
            }
            Err(e) => {
                prop_assert_eq!(e.reason(), Reason::ProtocolError);
                if let Err(stream) = LinkStream::of(ty) {
                    prop_assert_eq!(e, stream);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fuzz target's seeds

/// The seeds of `fuzz/fuzz_targets/peer_frames.rs`: behind its two parameter bytes (the
/// largest frame size, the stream), one encoded frame of each peer type and link form, and one
/// stream with all of them.
fn fuzz_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut all_control = vec![3, 0];
    let mut all_data = vec![3, 1];
    for msg in one_of_each() {
        let bytes = encoded(&msg);
        let stream = match msg.stream() {
            LinkStream::Control => 0,
            LinkStream::Data => 1,
        };
        let name = msg.frame_type().name().to_ascii_lowercase();
        let mut seed = vec![3, stream];
        seed.extend_from_slice(&bytes);
        seeds.push((name, seed));
        match msg.stream() {
            LinkStream::Control => all_control.extend_from_slice(&bytes),
            LinkStream::Data => all_data.extend_from_slice(&bytes),
        }
    }
    seeds.push(("all_control".into(), all_control));
    seeds.push(("all_data".into(), all_data));
    seeds
}

/// The seeds in `fuzz/seeds/peer_frames` are the encoder's output: run with
/// `MESHGATE_WRITE_SEEDS=1` to write them again after a change of the encoding.
#[test]
fn the_fuzz_seeds_are_what_the_encoder_writes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/peer_frames");
    let write = std::env::var_os("MESHGATE_WRITE_SEEDS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in fuzz_seeds() {
        let path = dir.join(&name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (MESHGATE_WRITE_SEEDS=1 writes it)", path.display())
        });
        assert_eq!(
            on_disk, bytes,
            "{name} (MESHGATE_WRITE_SEEDS=1 writes it again)"
        );
    }
}
