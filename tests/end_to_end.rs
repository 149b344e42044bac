//! End-to-end tests of the `meshgate` binary: each test starts the real gateway with 2 shards
//! on loopback, and drives it with the client library and with raw frames over QUIC, one test
//! per client-observable rule of PROTOCOL.md sections 3 to 8.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use meshgate_client::{CallError, Client, ClientConfig, ClientError, ProcedureError};
use meshgate_shard::wire::{FrameType, Message, Reason};
use meshgate_shard::NodeId;
use support::*;

// =========================================================================================
// 3. Session
// =========================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_answered_with_pong_carrying_the_gateway_node_id_and_server_time() {
    let gw = Gateway::start(&[]);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut raw = Raw::open(gw.addr).await.expect("handshake");
        let before = unix_ms();
        raw.write(&connect_frame(REALM, random_node(), None)).await;
        let answer = raw.expect(FrameType::Pong).await;
        let after = unix_ms();
        let Message::Pong(pong) = answer.msg() else {
            unreachable!()
        };
        assert_eq!(pong.timestamp, 0, "the CONNECT answer's timestamp");
        assert!(
            before.saturating_sub(1000) <= pong.server_time && pong.server_time <= after + 1000,
            "server_time {} is not the wall clock ({before}..{after})",
            pong.server_time
        );
        // `node_id` as bin 8 of exactly 32 bytes, its key as bin too.
        let mut node_field = vec![0xc4, 7];
        node_field.extend_from_slice(b"node_id");
        node_field.extend_from_slice(&[0xc4, 32]);
        assert!(
            answer
                .payload
                .windows(node_field.len())
                .any(|w| w == node_field),
            "node_id is not bin of 32 bytes in {:02x?}",
            answer.payload
        );
        ids.push(pong.node_id.expect("node_id"));
    }
    assert_eq!(ids[0], ids[1], "both answers carry the gateway's own id");
    assert_ne!(ids[0], NodeId([0; 32]));
}

/// A MessagePack value, for payloads the codec would not write (str keys, extra keys).
enum V<'a> {
    Str(&'a str),
    Bin(&'a [u8]),
    Uint(u8),
    Map(Vec<(&'a str, V<'a>)>),
    Arr(Vec<V<'a>>),
}

impl V<'_> {
    /// Encoded with str (not bin) keys.
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.put(&mut out);
        out
    }

    fn put(&self, out: &mut Vec<u8>) {
        fn str(s: &str, out: &mut Vec<u8>) {
            assert!(s.len() < 32);
            out.push(0xa0 | s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        match self {
            V::Str(s) => str(s, out),
            V::Bin(b) => {
                out.extend_from_slice(&[0xc4, b.len() as u8]);
                out.extend_from_slice(b);
            }
            V::Uint(n) => {
                assert!(*n < 128);
                out.push(*n);
            }
            V::Map(entries) => {
                out.push(0x80 | entries.len() as u8);
                for (k, v) in entries {
                    str(k, out);
                    v.put(out);
                }
            }
            V::Arr(items) => {
                out.push(0x90 | items.len() as u8);
                for v in items {
                    v.put(out);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_strings_sent_as_str_are_accepted_as_well_as_bin() {
    let gw = Gateway::start(&[]);
    let node = random_node();
    let connect = V::Map(vec![
        ("version", V::Str("1.0")),
        ("node_id", V::Bin(&node.0)),
        ("realm_id", V::Str(REALM)),
    ]);
    let mut sub = Raw::open(gw.addr).await.expect("handshake");
    sub.write(&frame_bytes(1, 0x01, 0, 0, &connect.bytes()))
        .await;
    sub.expect(FrameType::Pong).await;
    let subscribe = V::Map(vec![("topics", V::Arr(vec![V::Str("str.topic")]))]);
    sub.write(&frame_bytes(1, 0x11, 0, 0, &subscribe.bytes()))
        .await;
    assert!(sub.ping().await.is_empty(), "no ERROR for a str pattern");

    let mut publisher = gw.raw().await;
    let publish = V::Map(vec![
        ("topic", V::Str("str.topic")),
        ("payload", V::Str("hello")),
    ]);
    publisher
        .write(&frame_bytes(1, 0x10, 0, 0, &publish.bytes()))
        .await;
    let got = sub.expect(FrameType::Publish).await;
    assert_eq!(
        got.publish(),
        Delivered {
            topic: "str.topic".into(),
            payload: b"hello".to_vec(),
            publisher: Some(publisher.node_id),
        }
    );
    // The server writes keys and strings as bin: the map's first key is bin 8.
    assert_eq!(
        got.payload[1], 0xc4,
        "a key sent as {:#04x}",
        got.payload[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_and_nonzero_flags_are_ignored() {
    let gw = Gateway::start(&[]);
    let node = random_node();
    let connect = V::Map(vec![
        ("version", V::Str("1.0")),
        ("node_id", V::Bin(&node.0)),
        ("realm_id", V::Str(REALM)),
        ("capabilities", V::Str("")),
        ("extra", V::Map(vec![("nested", V::Arr(vec![V::Uint(1)]))])),
    ]);
    let mut raw = Raw::open(gw.addr).await.expect("handshake");
    // Flags and reserved bytes set: ignored on receipt.
    raw.write(&frame_bytes(1, 0x01, 0xff, 0xff, &connect.bytes()))
        .await;
    raw.expect(FrameType::Pong).await;
    let ping = V::Map(vec![("timestamp", V::Uint(77)), ("what", V::Str("ever"))]);
    raw.write(&frame_bytes(1, 0x03, 0x80, 0x01, &ping.bytes()))
        .await;
    let pong = raw.expect(FrameType::Pong).await;
    let Message::Pong(p) = pong.msg() else {
        unreachable!()
    };
    assert_eq!(p.timestamp, 77, "PONG echoes the PING's timestamp");
    assert_eq!(p.node_id, None, "node_id only in the CONNECT answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_realm_not_served_gets_realm_mismatch_and_close_code_3() {
    let gw = Gateway::start(&[]);
    for realm in ["other.realm", "Not A Realm", ""] {
        let mut raw = Raw::open(gw.addr).await.expect("handshake");
        raw.write(&connect_frame(realm, random_node(), None)).await;
        raw.expect_disconnect(Reason::RealmMismatch).await;
    }
    let refused = gw
        .metric("meshgate_clients_refused_total{reason=\"realm_mismatch\"}")
        .await;
    assert_eq!(refused, 3);
    assert_eq!(gw.metric("meshgate_clients").await, 0);
}

fn token_file(tokens: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "meshgate-e2e-tokens-{}-{:x}",
        std::process::id(),
        u64::from_le_bytes(random_node().0[..8].try_into().unwrap())
    ));
    std::fs::write(&path, tokens).expect("token file");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_realm_refuses_a_missing_or_wrong_token_with_unauthorized() {
    let tokens = token_file("alpha-token\n");
    let gw = Gateway::start(&["--realm", &format!("secure:{}", tokens.display())]);
    for token in [None, Some("wrong-token"), Some("alpha-toke"), Some("")] {
        let mut raw = Raw::open(gw.addr).await.expect("handshake");
        raw.write(&connect_frame("secure", random_node(), token))
            .await;
        raw.expect_disconnect(Reason::Unauthorized).await;
    }
    assert_eq!(
        gw.metric("meshgate_clients_refused_total{reason=\"unauthorized\"}")
            .await,
        4
    );
    let _ = std::fs::remove_file(tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_realm_admits_each_of_its_tokens_and_a_realm_without_tokens_admits_anyone() {
    let tokens = token_file("first-token\n\n  second-token  \n");
    let gw = Gateway::start(&[
        "--realm",
        &format!("secure:{}", tokens.display()),
        "--realm",
        "open",
    ]);
    for token in ["first-token", "second-token"] {
        let mut raw = Raw::connect_with(
            gw.addr,
            "secure",
            random_node(),
            Some(token),
            quinn::TransportConfig::default(),
        )
        .await;
        assert!(raw.ping().await.is_empty());
    }
    let mut open = Raw::connect_with(
        gw.addr,
        "open",
        random_node(),
        Some("anything"),
        quinn::TransportConfig::default(),
    )
    .await;
    assert!(open.ping().await.is_empty());
    // The client library passes its token too.
    let client = Client::connect(ClientConfig {
        realm: "secure".into(),
        token: Some("second-token".into()),
        ..gw.client_config()
    })
    .await
    .expect("admitted with a right token");
    client.ping().await.expect("ping");
    let refused = Client::connect(ClientConfig {
        realm: "secure".into(),
        token: Some("nope".into()),
        ..gw.client_config()
    })
    .await
    .expect_err("refused with a wrong token");
    assert!(
        matches!(
            refused,
            ClientError::Refused {
                reason: Reason::Unauthorized,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(gw.metric("meshgate_clients").await, 4);
    let _ = std::fs::remove_file(tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_before_connect_is_a_protocol_error() {
    let gw = Gateway::start(&[]);
    let ping = encode(&Message::Ping(meshgate_shard::wire::Ping { timestamp: 1 }));
    let subscribe = subscribe_frame(&["a.b"]);
    for first in [ping, subscribe] {
        let mut raw = Raw::open(gw.addr).await.expect("handshake");
        raw.write(&first).await;
        raw.expect_disconnect(Reason::ProtocolError).await;
    }
    assert_eq!(gw.metric("meshgate_clients").await, 0);
}

/// Opens a session, sends `bad`, and expects DISCONNECT `reason` with its close code.
async fn expect_refusal_of(gw: &Gateway, bad: &[u8], reason: Reason) {
    let mut raw = gw.raw().await;
    raw.write(bad).await;
    raw.expect_disconnect(reason).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_frame_type_is_a_protocol_error() {
    let gw = Gateway::start(&[]);
    for ty in [0x00, 0x06, 0x13, 0x25, 0x29, 0x7f, 0xff] {
        expect_refusal_of(
            &gw,
            &frame_bytes(1, ty, 0, 0, &[0x80]),
            Reason::ProtocolError,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_payload_is_a_protocol_error() {
    let gw = Gateway::start(&[]);
    let payloads: [&[u8]; 6] = [
        &[],                 // no value at all
        &[0xc1],             // reserved marker
        &[0x81, 0xc4, 0x05], // truncated map
        &[0x2a],             // an integer, not a map
        &[0x80, 0x80],       // bytes after the map
        &[0x91, 0x01],       // an array, not a map
    ];
    for payload in payloads {
        expect_refusal_of(
            &gw,
            &frame_bytes(1, 0x03, 0, 0, payload),
            Reason::ProtocolError,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_required_key_or_a_wrong_value_type_is_a_protocol_error() {
    let gw = Gateway::start(&[]);
    let cases = [
        // PUBLISH without payload.
        (0x10, V::Map(vec![("topic", V::Str("a.b"))])),
        // PUBLISH with an integer topic.
        (
            0x10,
            V::Map(vec![("topic", V::Uint(3)), ("payload", V::Bin(b"x"))]),
        ),
        // SUBSCRIBE whose topics is a string, not a list.
        (0x11, V::Map(vec![("topics", V::Str("a.b"))])),
        // PING with a string timestamp.
        (0x03, V::Map(vec![("timestamp", V::Str("now"))])),
        // CALL without procedure.
        (0x20, V::Map(vec![("args", V::Uint(1))])),
    ];
    for (ty, payload) in cases {
        expect_refusal_of(
            &gw,
            &frame_bytes(1, ty, 0, 0, &payload.bytes()),
            Reason::ProtocolError,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_version_other_than_1_is_a_protocol_error() {
    let gw = Gateway::start(&[]);
    for version in [0x00, 0x02, 0xff] {
        expect_refusal_of(
            &gw,
            &frame_bytes(
                version,
                0x03,
                0,
                0,
                &[
                    0x81, 0xc4, 9, b't', b'i', b'm', b'e', b's', b't', b'a', b'm', b'p', 0x01,
                ],
            ),
            Reason::ProtocolError,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_over_max_frame_gets_frame_too_large_before_its_payload_is_sent() {
    let gw = Gateway::start(&["--max-frame", "1024"]);
    // A frame of exactly --max-frame payload bytes is taken.
    let publish = (0..1024)
        .map(|n| publish_frame("big.one", &vec![7u8; n]))
        .find(|f| f.len() == 8 + 1024)
        .expect("a PUBLISH of 1024 payload bytes");
    let mut raw = gw.raw().await;
    raw.write(&publish).await;
    assert!(raw.ping().await.is_empty(), "a frame at the limit is fine");
    // One byte more: only the header is written, and the gateway refuses it at once.
    raw.write(&[1, 0x10, 0, 0, 0, 0, 0x04, 0x01]).await;
    raw.expect_disconnect(Reason::FrameTooLarge).await;
    // Also before CONNECT.
    let mut raw = Raw::open(gw.addr).await.expect("handshake");
    raw.write(&[1, 0x01, 0, 0, 0xff, 0xff, 0xff, 0xff]).await;
    raw.expect_disconnect(Reason::FrameTooLarge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connect_within_the_connect_timeout_ends_the_connection_with_connect_timeout() {
    let gw = Gateway::start(&["--connect-timeout", "500ms"]);
    // A client that wrote part of a header: DISCONNECT on its stream, then the close.
    let mut partial = Raw::open(gw.addr).await.expect("handshake");
    partial.write(&[1, 0x01, 0]).await;
    // A client that wrote nothing: the close alone (its stream does not exist yet).
    let silent = Raw::open(gw.addr).await.expect("handshake");
    partial.expect_disconnect(Reason::ConnectTimeout).await;
    silent.expect_closed(Reason::ConnectTimeout).await;
    gw.wait_metric("meshgate_handshakes", |n| n == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_disconnect_is_answered_with_close_code_0() {
    let gw = Gateway::start(&[]);
    let mut raw = gw.raw().await;
    raw.write(&subscribe_frame(&["bye.now"])).await;
    raw.write(&encode(&Message::Disconnect(
        meshgate_shard::wire::Disconnect {
            reason: b"normal",
            message: Some(b"done"),
        },
    )))
    .await;
    raw.expect_closed(Reason::Normal).await;
    gw.wait_metric("meshgate_clients", |n| n == 0).await;
    assert_eq!(gw.metric("meshgate_subscriptions").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_with_a_connected_node_id_replaces_the_old_session() {
    let gw = Gateway::start(&[]);
    let node = random_node();
    let mut old = Raw::connect(gw.addr, REALM, node).await;
    old.subscribe(&["old.only"]).await;
    old.register("old.proc").await;
    assert_eq!(gw.metric("meshgate_subscriptions").await, 1);
    let mut new = Raw::connect(gw.addr, REALM, node).await;
    old.expect_disconnect(Reason::Replaced).await;
    assert!(new.ping().await.is_empty());
    // The old session's state went with it.
    gw.wait_metric("meshgate_clients", |n| n == 1).await;
    assert_eq!(gw.metric("meshgate_subscriptions").await, 0);
    assert_eq!(gw.metric("meshgate_registrations").await, 0);
    new.call("old.proc", &[0xc0], &Id::U(1)).await;
    assert_eq!(
        new.expect(FrameType::Reply).await.reply().outcome,
        Err("procedure_not_found".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_node_id_in_two_realms_holds_two_sessions() {
    let gw = Gateway::start(&["--realm", "alpha", "--realm", "beta"]);
    let node = random_node();
    let mut a = Raw::connect(gw.addr, "alpha", node).await;
    let mut b = Raw::connect(gw.addr, "beta", node).await;
    assert!(a.ping().await.is_empty(), "alpha's session is not replaced");
    assert!(b.ping().await.is_empty());
    assert_eq!(gw.metric("meshgate_clients").await, 2);
}

// =========================================================================================
// 1 and 2. Framing: reassembly and pipelining
// =========================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_written_one_byte_at_a_time_are_reassembled() {
    let gw = Gateway::start(&[]);
    let mut sub = gw.raw().await;
    sub.subscribe(&["split.topic"]).await;
    let mut raw = Raw::open(gw.addr).await.expect("handshake");
    let node = random_node();
    let mut bytes = connect_frame(REALM, node, None);
    bytes.extend(publish_frame("split.topic", b"in pieces"));
    for b in &bytes {
        raw.write(&[*b]).await;
        // Let each byte leave in a packet of its own.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    raw.expect(FrameType::Pong).await;
    let got = sub.expect(FrameType::Publish).await.publish();
    assert_eq!(got.payload, b"in pieces");
    assert_eq!(got.publisher, Some(node));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_frames_in_one_write_are_all_handled_in_order() {
    let gw = Gateway::start(&[]);
    let mut sub = gw.raw().await;
    sub.subscribe(&["burst.*"]).await;
    let mut raw = Raw::open(gw.addr).await.expect("handshake");
    let mut bytes = connect_frame(REALM, random_node(), None);
    for i in 0..200u64 {
        bytes.extend(encode(&Message::Ping(meshgate_shard::wire::Ping {
            timestamp: i,
        })));
        bytes.extend(publish_frame("burst.x", &i.to_be_bytes()));
    }
    raw.write(&bytes).await;
    raw.expect(FrameType::Pong).await;
    for i in 0..200u64 {
        let Message::Pong(p) = raw.expect(FrameType::Pong).await.msg() else {
            unreachable!()
        };
        assert_eq!(p.timestamp, i);
    }
    for i in 0..200u64 {
        let got = sub.expect(FrameType::Publish).await.publish();
        assert_eq!(got.payload, i.to_be_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_pipelined_on_one_connection_are_all_answered() {
    let gw = Gateway::start(&[]);
    let provider = gw.client_on_shard(1).await;
    provider
        .register(
            "pipe.echo",
            |args| async move { Ok::<_, ProcedureError>(args) },
        )
        .await
        .expect("register");
    let mut caller = gw.raw_on_shard(0).await;
    let mut bytes = Vec::new();
    for i in 0..300u16 {
        let args = [0xcd, (i >> 8) as u8, i as u8]; // uint 16
        bytes.extend(call_frame(
            "pipe.echo",
            &args,
            Some(&Id::B(format!("call-{i}").into_bytes())),
            Some(5000),
        ));
    }
    caller.write(&bytes).await;
    let mut answered = BTreeMap::new();
    for _ in 0..300 {
        let reply = caller.expect(FrameType::Reply).await.reply();
        let Some(Id::B(id)) = reply.call_id else {
            panic!("call_id not echoed: {reply:?}")
        };
        let id = String::from_utf8(id).unwrap();
        assert!(answered.insert(id, reply.outcome).is_none(), "two replies");
    }
    for i in 0..300u16 {
        let args = vec![0xcd, (i >> 8) as u8, i as u8];
        assert_eq!(answered[&format!("call-{i}")], Ok(args));
    }
    assert_eq!(gw.metric("meshgate_calls_total{outcome=\"ok\"}").await, 300);
}
