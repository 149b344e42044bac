//! End-to-end tests of the `meshgate` binary: each test starts the real gateway with 2 shards
//! on loopback, and drives it with the client library and with raw frames over QUIC. The
//! simulator (`shard/tests/`) owns the protocol's semantics (pattern matching, realm isolation,
//! round-robin, ...); these tests cover what the driver, the sockets and the wire can break.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use meshgate_client::{CallError, Client, ClientConfig, ClientError, ProcedureError};
use meshgate_shard::metrics::PROTOCOL_METRICS;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_refused_client_sent_is_kept() {
    let gw = Gateway::start(&[]);
    let mut listener = gw.raw().await;
    listener.subscribe(&["kept.**"]).await;
    let mut raw = Raw::open(gw.addr).await.expect("handshake");
    let mut bytes = connect_frame("not.served", random_node(), None);
    bytes.extend(subscribe_frame(&["kept.x"]));
    bytes.extend(register_frame("kept.proc", None));
    bytes.extend(publish_frame("kept.x", b"leaked"));
    raw.write(&bytes).await;
    raw.expect_disconnect(Reason::RealmMismatch).await;
    let m = gw.metrics().await;
    assert_eq!(m.get("meshgate_subscriptions"), 1, "the listener's only");
    assert_eq!(m.get("meshgate_registrations"), 0);
    assert_eq!(m.get("meshgate_publishes_total"), 0);
    listener.call("kept.proc", &[0xc0], &Id::U(1)).await;
    assert_eq!(
        listener.expect(FrameType::Reply).await.reply().outcome,
        Err("procedure_not_found".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_session_ends_at_the_idle_timeout_and_a_pinging_one_does_not() {
    let gw = Gateway::start(&["--idle-timeout", "1s"]);
    let silent = gw.raw().await;
    let mut pinging = gw.raw().await;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        assert!(pinging.ping().await.is_empty());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let closed = tokio::time::timeout(PATIENCE, silent.conn.closed())
        .await
        .expect("the silent connection ended");
    assert!(
        matches!(closed, quinn::ConnectionError::TimedOut),
        "{closed:?}"
    );
    gw.wait_metric("meshgate_clients", |n| n == 1).await;
    assert!(pinging.ping().await.is_empty());
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
    let mut admitted = Vec::new();
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
        admitted.push(raw);
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
    let ping = encode(&Message::Ping(meshgate_shard::wire::Ping::new(1)));
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
        bytes.extend(encode(&Message::Ping(meshgate_shard::wire::Ping::new(i))));
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

/// A connection the gateway has not heard from for a second hands back the spare capacity of
/// its empty buffers; its session goes on as before, the buffers growing again with the next
/// burst (a large publish, delivered; a large call, answered), quiet after quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_go_on_working_after_their_quiet_connections_shrink_their_buffers() {
    let gw = Gateway::start(&[]);
    let provider = gw.client_on_shard(1).await;
    provider
        .register(
            "quiet.echo",
            |args| async move { Ok::<_, ProcedureError>(args) },
        )
        .await
        .expect("register");
    let mut sub = gw.raw_on_shard(0).await;
    sub.subscribe(&["quiet.*"]).await;
    let mut caller = gw.raw_on_shard(1).await;
    for round in 0..3u8 {
        let payload = vec![round; 100_000];
        caller.publish("quiet.big", &payload).await;
        assert_eq!(
            sub.expect(FrameType::Publish).await.publish().payload,
            payload
        );
        // The arguments as MessagePack bin 32.
        let mut args = vec![0xc6];
        args.extend((payload.len() as u32).to_be_bytes());
        args.extend(&payload);
        caller
            .call("quiet.echo", &args, &Id::B(vec![b'q', round]))
            .await;
        let reply = caller.expect(FrameType::Reply).await.reply();
        assert_eq!(reply.outcome, Ok(args), "round {round}");
        // Quiet for longer than the gateway waits before shrinking (1 s).
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

// =========================================================================================
// 5.1 and 5.2 Publish and subscribe
// =========================================================================================

/// Reads PUBLISH frames up to the first on `end`, which is not returned.
async fn deliveries_until(raw: &mut Raw, end: &str) -> Vec<Delivered> {
    let mut got = Vec::new();
    loop {
        let d = raw.expect(FrameType::Publish).await.publish();
        if d.topic == end {
            return got;
        }
        got.push(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_reaches_every_matching_session_on_both_shards_exactly_once_but_not_its_publisher(
) {
    let gw = Gateway::start(&[]);
    let mut subs = vec![
        gw.raw_on_shard(0).await,
        gw.raw_on_shard(0).await,
        gw.raw_on_shard(1).await,
        gw.raw_on_shard(1).await,
    ];
    let mut publisher = gw.raw_on_shard(0).await;
    assert_eq!(gw.clients_per_shard().await, [3, 2]);
    for sub in &mut subs {
        // Four patterns that all match: still one delivery each.
        let errors = sub
            .subscribe(&["news.today", "news.*", "news.**", "**"])
            .await;
        assert!(errors.is_empty(), "{errors:?}");
    }
    publisher.subscribe(&["news.**"]).await;
    for i in 0..20u8 {
        publisher.publish("news.today", &[i]).await;
    }
    publisher.publish("news.end", b"").await;
    for sub in &mut subs {
        let got = deliveries_until(sub, "news.end").await;
        let payloads: Vec<Vec<u8>> = got.iter().map(|d| d.payload.clone()).collect();
        assert_eq!(payloads, (0..20u8).map(|i| vec![i]).collect::<Vec<_>>());
        assert!(got
            .iter()
            .all(|d| d.topic == "news.today" && d.publisher == Some(publisher.node_id)));
    }
    // The publisher's first delivery is another session's publish, sent after its own.
    subs[2].publish("news.marker", b"m").await;
    let first = publisher.expect(FrameType::Publish).await.publish();
    assert_eq!(
        first.topic, "news.marker",
        "the publisher got its own {first:?}"
    );
    assert_eq!(first.publisher, Some(subs[2].node_id));
    for (i, sub) in subs.iter_mut().enumerate() {
        if i != 2 {
            assert_eq!(
                sub.expect(FrameType::Publish).await.publish().topic,
                "news.marker"
            );
        }
    }
    // Exactly once, counted: 21 publishes to 4 sessions, and the marker to 4.
    let m = gw.metrics().await;
    assert_eq!(m.get("meshgate_publishes_total"), 22);
    assert_eq!(m.get("meshgate_deliveries_total"), 21 * 4 + 4);
    // Both shards served sessions: each read datagrams, sent datagrams and turned its loop.
    for shard in ["0", "1"] {
        for name in [
            "meshgate_udp_datagrams_received_total",
            "meshgate_udp_datagrams_sent_total",
            "meshgate_shard_turns_total",
        ] {
            let n = m.get(&format!("{name}{{shard=\"{shard}\"}}"));
            assert!(n > 0, "{name} of shard {shard}: {n}");
        }
    }
    assert_eq!(
        m.get("meshgate_udp_datagrams_sent_total"),
        m.get("meshgate_udp_datagrams_sent_total{shard=\"0\"}")
            + m.get("meshgate_udp_datagrams_sent_total{shard=\"1\"}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_publisher_is_kept_for_a_thousand_messages_across_shards() {
    let gw = Gateway::start(&[]);
    let subscribers = [gw.client_on_shard(0).await, gw.client_on_shard(1).await];
    let publishers = [gw.client_on_shard(0).await, gw.client_on_shard(1).await];
    let mut subscriptions = Vec::new();
    for s in &subscribers {
        subscriptions.push(s.subscribe(["order.*"]).await.expect("subscribe"));
    }
    const N: u32 = 1000;
    let sends = publishers.iter().map(|p| {
        let p = p.clone();
        tokio::spawn(async move {
            for i in 0..N {
                p.publish("order.seq", &i.to_be_bytes())
                    .await
                    .expect("publish");
            }
        })
    });
    for send in sends.collect::<Vec<_>>() {
        send.await.expect("publisher task");
    }
    for subscription in &mut subscriptions {
        let mut next: BTreeMap<NodeId, u32> = BTreeMap::new();
        for _ in 0..2 * N {
            let d = tokio::time::timeout(PATIENCE, subscription.next())
                .await
                .expect("a delivery in time")
                .expect("the subscription is open");
            let seq = u32::from_be_bytes(d.payload[..].try_into().unwrap());
            let expected = next.entry(d.publisher).or_insert(0);
            assert_eq!(seq, *expected, "out of order from {:?}", d.publisher);
            *expected += 1;
        }
        assert_eq!(next.len(), 2, "both publishers delivered");
        assert!(next.values().all(|&n| n == N));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_deliveries_once_ping_is_answered() {
    let gw = Gateway::start(&[]);
    let mut sub = gw.raw_on_shard(1).await;
    let mut publisher = gw.raw_on_shard(0).await;
    sub.subscribe(&["gone.x", "stop"]).await;
    sub.write(&unsubscribe_frame(&["gone.x"])).await;
    assert!(sub.ping().await.is_empty());
    publisher.publish("gone.x", b"1").await;
    publisher.publish("stop", b"").await;
    assert!(deliveries_until(&mut sub, "stop").await.is_empty());
    assert_eq!(gw.metric("meshgate_subscriptions").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_a_barrier_for_subscribe_and_register_on_every_shard() {
    let gw = Gateway::start(&[]);
    let mut far = gw.raw_on_shard(1).await;
    let mut near = gw.raw_on_shard(0).await;
    for i in 0..20 {
        let topic = format!("barrier.{i}");
        assert!(far.subscribe(&[&topic]).await.is_empty());
        // At once, from the other shard.
        near.publish(&topic, b"").await;
        assert_eq!(far.expect(FrameType::Publish).await.publish().topic, topic);

        let procedure = format!("barrier.proc{i}");
        assert!(far.register(&procedure).await.is_empty());
        near.call(&procedure, &[0xc0], &Id::U(i)).await;
        assert_eq!(
            far.expect(FrameType::Call).await.call().procedure,
            procedure
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_topic_or_pattern_gets_an_error_and_the_session_goes_on() {
    let gw = Gateway::start(&[]);
    let mut raw = gw.raw().await;
    for topic in ["a..b", "", "a.*", "**", ".a", "a."] {
        raw.publish(topic, b"x").await;
        let error = raw.expect(FrameType::Error).await.error();
        assert_eq!(
            error,
            Refused {
                code: "invalid_topic".into(),
                frame_type: 0x10,
                subject: Some(topic.into()),
            }
        );
    }
    let long = "a".repeat(1025);
    raw.publish(&long, b"x").await;
    assert_eq!(
        raw.expect(FrameType::Error).await.error().code,
        "invalid_topic"
    );
    for pattern in ["a..b", "", ".x"] {
        let errors = raw.subscribe(&[pattern]).await;
        assert_eq!(errors.len(), 1, "{pattern:?}: {errors:?}");
        assert_eq!(
            errors[0].error(),
            Refused {
                code: "invalid_pattern".into(),
                frame_type: 0x11,
                subject: Some(pattern.into()),
            }
        );
    }
    assert!(raw.ping().await.is_empty(), "the session goes on");
    assert_eq!(gw.metric("meshgate_subscriptions").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_beyond_max_subscriptions_get_too_many_subscriptions() {
    let gw = Gateway::start(&["--max-subscriptions", "2"]);
    let mut raw = gw.raw().await;
    let errors = raw.subscribe(&["one", "two", "three"]).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].error(),
        Refused {
            code: "too_many_subscriptions".into(),
            frame_type: 0x11,
            subject: Some("three".into()),
        }
    );
    // A pattern already held is no new subscription.
    assert!(raw.subscribe(&["two"]).await.is_empty());
    assert_eq!(gw.metric("meshgate_subscriptions").await, 2);
}

// =========================================================================================
// 5.3 and 5.4 Calls
// =========================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_across_shards_is_answered_with_the_callers_call_id() {
    let gw = Gateway::start(&[]);
    let mut provider = gw.raw_on_shard(1).await;
    provider.register("math.echo").await;
    let mut caller = gw.raw_on_shard(0).await;
    let ids = [
        Id::B(b"req-1".to_vec()),
        Id::U(7),
        Id::U(u64::MAX),
        Id::I(-3),
        Id::B(vec![0xff; 64]),
    ];
    let args = [0x92, 0x01, 0xa1, b'x']; // [1, "x"]
    let mut tokens = Vec::new();
    for id in &ids {
        caller
            .write(&call_frame("math.echo", &args, Some(id), Some(5000)))
            .await;
        let called = provider.expect(FrameType::Call).await.call();
        assert_eq!(called.procedure, "math.echo");
        assert_eq!(called.args, args);
        assert_eq!(called.timeout_ms, Some(5000));
        let Some(token @ Id::U(_)) = called.call_id else {
            panic!("the provider gets a server-assigned integer call_id: {called:?}")
        };
        tokens.push(token.clone());
        provider
            .write(&reply_frame(&token, &[0xa2, b'o', b'k']))
            .await;
        let reply = caller.expect(FrameType::Reply).await.reply();
        assert_eq!(
            reply.call_id.as_ref(),
            Some(id),
            "the caller's call_id is echoed"
        );
        assert_eq!(reply.outcome, Ok(vec![0xa2, b'o', b'k']));
    }
    tokens.sort_by_key(|t| format!("{t:?}"));
    tokens.dedup();
    assert_eq!(tokens.len(), ids.len(), "one server call_id per call");
    // The client library's calls take the same way.
    let client = gw.client_on_shard(0).await;
    let mut reply = Box::pin(client.call("math.echo", &[0x2a]));
    let called = tokio::select! {
        frame = provider.expect(FrameType::Call) => frame.call(),
        r = &mut reply => panic!("answered before the provider saw it: {r:?}"),
    };
    provider
        .write(&reply_frame(called.call_id.as_ref().unwrap(), &called.args))
        .await;
    assert_eq!(reply.await.expect("result"), [0x2a]);
    assert_eq!(gw.metric("meshgate_calls_total{outcome=\"ok\"}").await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_error_reaches_the_caller() {
    let gw = Gateway::start(&[]);
    let provider = gw.client_on_shard(1).await;
    provider
        .register("fails.always", |_| async {
            Err::<Vec<u8>, _>(ProcedureError::new("bad_input", "no way"))
        })
        .await
        .expect("register");
    let caller = gw.client_on_shard(0).await;
    match caller.call("fails.always", &[0xc0]).await {
        Err(CallError::Remote { code, message }) => {
            assert_eq!((code.as_str(), message.as_str()), ("bad_input", "no way"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_provider_gets_procedure_not_found() {
    let gw = Gateway::start(&[]);
    let caller = gw.client().await;
    let error = caller
        .call("nobody.home", &[0xc0])
        .await
        .expect_err("no provider");
    assert_eq!(error.code(), Some("procedure_not_found"), "{error:?}");
    let mut raw = gw.raw().await;
    raw.call("nobody.home", &[0xc0], &Id::B(b"x1".to_vec()))
        .await;
    let reply = raw.expect(FrameType::Reply).await.reply();
    assert_eq!(reply.call_id, Some(Id::B(b"x1".to_vec())));
    assert_eq!(reply.outcome, Err("procedure_not_found".into()));
    assert_eq!(
        gw.metric("meshgate_calls_total{outcome=\"procedure_not_found\"}")
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregister_stops_calls_at_once() {
    let gw = Gateway::start(&[]);
    let mut provider = gw.raw_on_shard(1).await;
    let mut caller = gw.raw_on_shard(0).await;
    provider.register("brief.proc").await;
    assert_eq!(gw.metric("meshgate_registrations").await, 1);
    provider.write(&unregister_frame("brief.proc")).await;
    assert!(provider.ping().await.is_empty());
    caller.call("brief.proc", &[0xc0], &Id::U(1)).await;
    assert_eq!(
        caller.expect(FrameType::Reply).await.reply().outcome,
        Err("procedure_not_found".into())
    );
    assert_eq!(gw.metric("meshgate_registrations").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_gets_timeout_and_its_provider_cancel_timeout() {
    let gw = Gateway::start(&[]);
    let mut provider = gw.raw_on_shard(1).await;
    provider.register("slow.op").await;
    let mut caller = gw.raw_on_shard(0).await;
    let id = Id::B(b"t-1".to_vec());
    caller
        .write(&call_frame("slow.op", &[0xc0], Some(&id), Some(300)))
        .await;
    let called = provider.expect(FrameType::Call).await.call();
    assert_eq!(called.timeout_ms, Some(300));
    let token = called.call_id.expect("call_id");
    let reply = caller.expect(FrameType::Reply).await.reply();
    assert_eq!(
        reply,
        Replied {
            call_id: Some(id),
            outcome: Err("timeout".into())
        }
    );
    let cancel = provider.expect(FrameType::Cancel).await.cancel();
    assert_eq!(
        cancel,
        Cancelled {
            call_id: token.clone(),
            reason: "timeout".into()
        }
    );
    // A REPLY after the deadline is discarded, and counted.
    provider.write(&reply_frame(&token, &[0x01])).await;
    gw.wait_metric("meshgate_late_replies_total", |n| n == 1)
        .await;
    assert!(
        caller.ping().await.is_empty(),
        "the late REPLY reached the caller"
    );
    let m = gw.metrics().await;
    assert_eq!(m.get("meshgate_calls_total{outcome=\"timeout\"}"), 1);
    assert_eq!(m.get("meshgate_pending_calls"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_deadline_defaults_to_call_timeout_and_is_capped_at_max_call_timeout() {
    let gw = Gateway::start(&["--call-timeout", "200ms", "--max-call-timeout", "400ms"]);
    let mut provider = gw.raw_on_shard(1).await;
    provider.register("slow.op").await;
    let mut caller = gw.raw_on_shard(0).await;
    let cases = [
        (None, 200),
        (Some(0), 200),
        (Some(100), 100),
        (Some(60_000), 400),
    ];
    for (i, (asked, _)) in cases.iter().enumerate() {
        caller
            .write(&call_frame(
                "slow.op",
                &[0xc0],
                Some(&Id::U(i as u64)),
                *asked,
            ))
            .await;
    }
    let mut deadlines = Vec::new();
    for _ in cases {
        deadlines.push(provider.expect(FrameType::Call).await.call().timeout_ms);
    }
    let expected: Vec<Option<u64>> = cases.iter().map(|&(_, d)| Some(d)).collect();
    assert_eq!(
        deadlines, expected,
        "the deadlines forwarded to the provider"
    );
    let mut timed_out = Vec::new();
    for _ in cases {
        let reply = caller.expect(FrameType::Reply).await.reply();
        assert_eq!(reply.outcome, Err("timeout".into()));
        timed_out.push(reply.call_id.expect("call_id"));
    }
    // The 100 ms deadline first, the capped one last.
    assert_eq!((&timed_out[0], &timed_out[3]), (&Id::U(2), &Id::U(3)));
    timed_out.sort_by_key(|id| format!("{id:?}"));
    assert_eq!(timed_out, [Id::U(0), Id::U(1), Id::U(2), Id::U(3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_provider_leaves_gets_provider_gone() {
    let gw = Gateway::start(&[]);
    let mut provider = gw.raw_on_shard(1).await;
    provider.register("leaving.op").await;
    let mut caller = gw.raw_on_shard(0).await;
    let id = Id::B(b"pg".to_vec());
    caller.call("leaving.op", &[0xc0], &id).await;
    provider.expect(FrameType::Call).await;
    // The provider's connection goes without a word.
    provider.conn.close(0u32.into(), b"");
    let reply = caller.expect(FrameType::Reply).await.reply();
    assert_eq!(
        reply,
        Replied {
            call_id: Some(id),
            outcome: Err("provider_gone".into())
        }
    );
    let m = gw.metrics().await;
    assert_eq!(m.get("meshgate_calls_total{outcome=\"provider_gone\"}"), 1);
    assert_eq!(m.get("meshgate_pending_calls"), 0);
    // And its registration went with it.
    caller.call("leaving.op", &[0xc0], &Id::U(2)).await;
    assert_eq!(
        caller.expect(FrameType::Reply).await.reply().outcome,
        Err("procedure_not_found".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_id_still_in_flight_gets_duplicate_call_id() {
    let gw = Gateway::start(&[]);
    let mut provider = gw.raw_on_shard(1).await;
    provider.register("dup.op").await;
    let mut caller = gw.raw_on_shard(0).await;
    let id = Id::B(b"same".to_vec());
    caller.call("dup.op", &[0x01], &id).await;
    let first = provider.expect(FrameType::Call).await.call();
    caller.call("dup.op", &[0x02], &id).await;
    let reply = caller.expect(FrameType::Reply).await.reply();
    assert_eq!(
        reply,
        Replied {
            call_id: Some(id.clone()),
            outcome: Err("duplicate_call_id".into())
        }
    );
    // The first call is still served.
    provider
        .write(&reply_frame(first.call_id.as_ref().unwrap(), &[0x0a]))
        .await;
    assert_eq!(
        caller.expect(FrameType::Reply).await.reply(),
        Replied {
            call_id: Some(id.clone()),
            outcome: Ok(vec![0x0a])
        }
    );
    // Once answered, the id may be used again.
    caller.call("dup.op", &[0x03], &id).await;
    assert_eq!(provider.expect(FrameType::Call).await.call().args, [0x03]);
    // The same id from another caller is another call.
    let mut other = gw.raw_on_shard(0).await;
    other.call("dup.op", &[0x04], &id).await;
    assert_eq!(provider.expect(FrameType::Call).await.call().args, [0x04]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_with_a_call_in_flight_gets_it_cancelled_with_caller_gone() {
    let gw = Gateway::start(&[]);
    let mut provider = gw.raw_on_shard(1).await;
    provider.register("long.op").await;
    let mut caller = gw.raw_on_shard(0).await;
    caller.call("long.op", &[0xc0], &Id::U(9)).await;
    let token = provider
        .expect(FrameType::Call)
        .await
        .call()
        .call_id
        .unwrap();
    assert_eq!(gw.metric("meshgate_pending_calls").await, 1);
    caller.conn.close(0u32.into(), b"gone");
    let cancel = provider.expect(FrameType::Cancel).await.cancel();
    assert_eq!(
        cancel,
        Cancelled {
            call_id: token.clone(),
            reason: "caller_gone".into()
        }
    );
    // Dropped at once: no deadline waited for.
    let m = gw.metrics().await;
    assert_eq!(m.get("meshgate_pending_calls"), 0);
    assert_eq!(m.get("meshgate_calls_total{outcome=\"caller_gone\"}"), 1);
    provider.write(&reply_frame(&token, &[0x01])).await;
    gw.wait_metric("meshgate_late_replies_total", |n| n == 1)
        .await;
    assert!(provider.ping().await.is_empty(), "the session goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_for_an_unknown_call_id_is_discarded_and_counted() {
    let gw = Gateway::start(&[]);
    let mut provider = gw.raw().await;
    for id in [
        Id::U(123_456_789),
        Id::U(u64::MAX),
        Id::B(b"nope".to_vec()),
        Id::I(-1),
    ] {
        provider.write(&reply_frame(&id, &[0xc0])).await;
    }
    assert!(
        provider.ping().await.is_empty(),
        "no error, the session goes on"
    );
    // A REPLY whose id names another shard is counted there.
    gw.wait_metric("meshgate_late_replies_total", |n| n == 4)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_procedure_or_call_id_gets_invalid_call() {
    let gw = Gateway::start(&[]);
    let mut provider = gw.raw().await;
    provider.register("ok.proc").await;
    let mut caller = gw.raw().await;
    let long_id = Id::B(vec![7; 65]);
    let cases = [
        call_frame("a..b", &[0xc0], Some(&Id::U(1)), None),
        call_frame("a.*", &[0xc0], Some(&Id::U(2)), None),
        call_frame("ok.proc", &[0xc0], Some(&long_id), None),
    ];
    for (case, expected_id) in cases.iter().zip([Id::U(1), Id::U(2), long_id.clone()]) {
        caller.write(case).await;
        let reply = caller.expect(FrameType::Reply).await.reply();
        assert_eq!(
            reply,
            Replied {
                call_id: Some(expected_id),
                outcome: Err("invalid_call".into())
            }
        );
    }
    caller
        .write(&call_frame("ok.proc", &[0xc0], None, None))
        .await;
    let reply = caller.expect(FrameType::Reply).await.reply();
    assert_eq!(
        reply,
        Replied {
            call_id: None,
            outcome: Err("invalid_call".into())
        }
    );
    assert!(caller.ping().await.is_empty());
    assert!(
        provider.ping().await.is_empty(),
        "nothing reached the provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_max_pending_calls_get_overloaded() {
    // One call in flight from the callers of each shard.
    let gw = Gateway::start(&["--max-pending-calls-per-shard", "1"]);
    let mut provider = gw.raw_on_shard(1).await;
    provider.register("held.op").await;
    let mut caller = gw.raw_on_shard(0).await;
    caller.call("held.op", &[0xc0], &Id::U(1)).await;
    let held = provider.expect(FrameType::Call).await.call();
    caller.call("held.op", &[0xc0], &Id::U(2)).await;
    assert_eq!(
        caller.expect(FrameType::Reply).await.reply(),
        Replied {
            call_id: Some(Id::U(2)),
            outcome: Err("overloaded".into())
        }
    );
    provider
        .write(&reply_frame(held.call_id.as_ref().unwrap(), &[0x01]))
        .await;
    assert_eq!(
        caller.expect(FrameType::Reply).await.reply().outcome,
        Ok(vec![0x01])
    );
    assert_eq!(
        gw.metric("meshgate_calls_total{outcome=\"overloaded\"}")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_beyond_max_registrations_or_invalid_names_get_an_error() {
    let gw = Gateway::start(&["--max-registrations", "1"]);
    let mut provider = gw.raw().await;
    assert!(provider.register("first.proc").await.is_empty());
    assert!(
        provider.register("first.proc").await.is_empty(),
        "a refresh"
    );
    let errors = provider.register("second.proc").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].error(),
        Refused {
            code: "too_many_registrations".into(),
            frame_type: 0x26,
            subject: Some("second.proc".into()),
        }
    );
    for name in ["a..b", "a.*", "**", ""] {
        let errors = provider.register(name).await;
        assert_eq!(errors.len(), 1, "{name:?}: {errors:?}");
        assert_eq!(errors[0].error().code, "invalid_procedure");
    }
    assert_eq!(gw.metric("meshgate_registrations").await, 1);
}

// =========================================================================================
// 5.5 Limits and load
// =========================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_beyond_max_clients_gets_max_clients_reached_and_the_others_go_on() {
    // Four in the whole gateway, whichever shards own the node ids.
    let gw = Gateway::start(&["--max-clients", "4"]);
    let [zero, one] = [nodes_owned_by(0, 3), nodes_owned_by(1, 3)];
    let mut admitted = Vec::new();
    for node in [zero[0], zero[1], one[0], one[1]] {
        admitted.push(Raw::connect(gw.addr, REALM, node).await);
    }
    for node in [zero[2], one[2]] {
        let mut raw = Raw::open(gw.addr).await.expect("handshake");
        raw.write(&connect_frame(REALM, node, None)).await;
        raw.expect_disconnect(Reason::MaxClientsReached).await;
    }
    let refused = Client::connect(ClientConfig {
        node_id: zero[2],
        ..gw.client_config()
    })
    .await
    .expect_err("the table is full");
    assert!(
        matches!(
            refused,
            ClientError::Refused {
                reason: Reason::MaxClientsReached,
                ..
            }
        ),
        "{refused:?}"
    );
    for raw in &mut admitted {
        assert!(
            raw.ping().await.is_empty(),
            "an admitted session is disturbed"
        );
    }
    let m = gw.metrics().await;
    assert_eq!(m.get("meshgate_clients"), 4);
    assert_eq!(
        m.get("meshgate_clients_refused_total{reason=\"max_clients_reached\"}"),
        3
    );
    // A place freed is taken again.
    admitted.remove(0).leave().await;
    gw.wait_metric("meshgate_clients", |n| n == 3).await;
    Raw::connect(gw.addr, REALM, zero[2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacing_connect_is_admitted_when_the_client_table_is_full() {
    let gw = Gateway::start(&["--max-clients", "2"]);
    let (zero, one) = (nodes_owned_by(0, 1)[0], nodes_owned_by(1, 1)[0]);
    let mut old = Raw::connect(gw.addr, REALM, zero).await;
    let mut other = Raw::connect(gw.addr, REALM, one).await;
    let mut new = Raw::connect(gw.addr, REALM, zero).await;
    old.expect_disconnect(Reason::Replaced).await;
    assert!(new.ping().await.is_empty());
    assert!(other.ping().await.is_empty());
    gw.wait_metric("meshgate_clients", |n| n == 2).await;
    assert_eq!(
        gw.metric("meshgate_clients_refused_total{reason=\"max_clients_reached\"}")
            .await,
        0
    );
}

/// Whether a connection attempt was refused at the QUIC level with CONNECTION_REFUSED.
fn refused_at_quic_level(error: &quinn::ConnectionError) -> bool {
    matches!(
        error,
        quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_handshakes_are_refused_with_connection_refused() {
    // Four in the whole gateway; connections count until their CONNECT is admitted.
    let gw = Gateway::start(&["--max-handshakes", "4"]);
    // Sessions busy beside the test hold no handshake place once connected.
    let load = Load::start(&gw, 4).await;
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..4 {
        let raw = Raw::open(gw.addr).await;
        held.push(raw.unwrap_or_else(|e| panic!("connection {i} refused under the limit: {e:?}")));
    }
    assert_eq!(gw.metric("meshgate_handshakes").await, 4);
    for _ in 0..6 {
        let e = Raw::open(gw.addr).await.err().expect("a fifth is refused");
        assert!(refused_at_quic_level(&e), "{e:?}");
        refused += 1;
    }
    assert_eq!(
        gw.metric("meshgate_handshakes_refused_total").await,
        refused
    );
    // CONNECT turns one into a session and frees its place.
    let mut session = held.remove(0);
    session
        .write(&connect_frame(REALM, random_node(), None))
        .await;
    session.expect(FrameType::Pong).await;
    assert_eq!(gw.metric("meshgate_handshakes").await, 3);
    let _admitted = Raw::open(gw.addr)
        .await
        .expect("a connection is admitted after a CONNECT");
    assert_eq!(gw.metric("meshgate_handshakes").await, 4);
    assert!(session.ping().await.is_empty());
    load.finish().await;
}

/// A QUIC transport whose stream window is small, so that a reader that stops reading
/// stops the gateway's sending soon.
fn small_window() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(quinn::VarInt::from_u32(16 * 1024))
        .receive_window(quinn::VarInt::from_u32(32 * 1024));
    t
}

/// Publishes `count` PUBLISHes of 1 KiB on `flood.x`, numbered.
async fn flood(publisher: &mut Raw, count: u32) {
    let mut bytes = Vec::new();
    for i in 0..count {
        let mut payload = vec![0u8; 1024];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        bytes.extend(publish_frame("flood.x", &payload));
    }
    publisher.write(&bytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_disconnected_as_a_slow_consumer() {
    let gw = Gateway::start(&["--max-output", "65536", "--slow-consumer-timeout", "300ms"]);
    let mut slow = Raw::connect_with(gw.addr, REALM, random_node(), None, small_window()).await;
    slow.subscribe(&["flood.*"]).await;
    let mut publisher = gw.raw().await;
    // The subscriber reads nothing from now on.
    flood(&mut publisher, 400).await;
    gw.wait_metric("meshgate_dropped_total{reason=\"slow_consumer\"}", |n| {
        n > 0
    })
    .await;
    gw.wait_metric(
        "meshgate_sessions_closed_total{reason=\"slow_consumer\"}",
        |n| n == 1,
    )
    .await;
    // Reading again, it finds what was queued before the drops, then DISCONNECT.
    let before = slow.expect_disconnect(Reason::SlowConsumer).await;
    let seqs: Vec<u32> = before
        .iter()
        .map(|f| u32::from_be_bytes(f.publish().payload[..4].try_into().unwrap()))
        .collect();
    assert!(
        !seqs.is_empty() && seqs.len() < 400,
        "{} delivered",
        seqs.len()
    );
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert!(publisher.ping().await.is_empty(), "the publisher goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_again_is_closed_with_slow_consumer() {
    let gw = Gateway::start(&["--max-output", "65536", "--slow-consumer-timeout", "300ms"]);
    let mut slow = Raw::connect_with(gw.addr, REALM, random_node(), None, small_window()).await;
    slow.subscribe(&["flood.*"]).await;
    let mut publisher = gw.raw().await;
    flood(&mut publisher, 400).await;
    slow.expect_closed(Reason::SlowConsumer).await;
    gw.wait_metric("meshgate_clients", |n| n == 1).await;
    assert!(
        gw.metric("meshgate_dropped_total{reason=\"slow_consumer\"}")
            .await
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_caller_over_its_output_bound_is_not_dropped() {
    let gw = Gateway::start(&["--max-output", "65536"]);
    let provider = gw.client().await;
    // The provider answers only once the caller is over its bound.
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let held = release.clone();
    provider
        .register("echo.op", move |a| {
            let held = held.clone();
            async move {
                held.notified().await;
                Ok::<_, ProcedureError>(a)
            }
        })
        .await
        .expect("register");
    let mut caller = Raw::connect_with(gw.addr, REALM, random_node(), None, small_window()).await;
    caller.subscribe(&["flood.*"]).await;
    // Sent while under the bound: the gateway reads no frame of a session over it.
    caller
        .write(&call_frame(
            "echo.op",
            &[0x2a],
            Some(&Id::U(77)),
            Some(30_000),
        ))
        .await;
    gw.wait_metric("meshgate_pending_calls", |n| n == 1).await;
    let mut publisher = gw.raw().await;
    flood(&mut publisher, 400).await;
    let dropped = gw
        .wait_metric("meshgate_dropped_total{reason=\"slow_consumer\"}", |n| {
            n > 0
        })
        .await;
    release.notify_one();
    gw.wait_metric("meshgate_calls_total{outcome=\"ok\"}", |n| n == 1)
        .await;
    // Still over its bound: publishes to it are dropped meanwhile.
    flood(&mut publisher, 10).await;
    gw.wait_metric("meshgate_dropped_total{reason=\"slow_consumer\"}", |n| {
        n >= dropped + 10
    })
    .await;
    loop {
        let frame = caller
            .next()
            .await
            .expect("the REPLY before the stream ends");
        match frame.msg() {
            Message::Publish(_) => continue,
            Message::Reply(_) => {
                let reply = frame.reply();
                assert_eq!(
                    reply,
                    Replied {
                        call_id: Some(Id::U(77)),
                        outcome: Ok(vec![0x2a])
                    }
                );
                break;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_provider_over_its_output_bound_fails_fast_with_overloaded() {
    let gw = Gateway::start(&["--max-output", "65536"]);
    let mut provider = Raw::connect_with(gw.addr, REALM, random_node(), None, small_window()).await;
    provider.subscribe(&["flood.*"]).await;
    provider.register("stuck.op").await;
    let mut publisher = gw.raw().await;
    flood(&mut publisher, 400).await;
    gw.wait_metric("meshgate_dropped_total{reason=\"slow_consumer\"}", |n| {
        n > 0
    })
    .await;
    let mut caller = gw.raw().await;
    caller
        .write(&call_frame(
            "stuck.op",
            &[0xc0],
            Some(&Id::U(5)),
            Some(30_000),
        ))
        .await;
    let reply = caller.expect(FrameType::Reply).await.reply();
    assert_eq!(
        reply,
        Replied {
            call_id: Some(Id::U(5)),
            outcome: Err("overloaded".into())
        }
    );
    assert_eq!(
        gw.metric("meshgate_calls_total{outcome=\"overloaded\"}")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_expires_after_the_service_ttl_and_is_logged() {
    let gw = Gateway::start(&["--service-ttl", "1s", "--prune-interval", "500ms"]);
    // Caller and provider share a shard, so the prune is in effect for the caller as soon
    // as the shard counts it.
    let mut provider = gw.raw_on_shard(0).await;
    let mut caller = gw.raw_on_shard(0).await;
    provider.register("ttl.op").await;
    caller.call("ttl.op", &[0xc0], &Id::U(1)).await;
    let called = provider.expect(FrameType::Call).await.call();
    provider
        .write(&reply_frame(called.call_id.as_ref().unwrap(), &[0x01]))
        .await;
    assert_eq!(
        caller.expect(FrameType::Reply).await.reply().outcome,
        Ok(vec![0x01])
    );
    assert_eq!(gw.metric("meshgate_registrations").await, 1);

    gw.wait_metric("meshgate_registrations_expired_total", |n| n == 1)
        .await;
    caller.call("ttl.op", &[0xc0], &Id::U(2)).await;
    assert_eq!(
        caller.expect(FrameType::Reply).await.reply().outcome,
        Err("procedure_not_found".into())
    );
    assert_eq!(gw.metric("meshgate_registrations").await, 0);
    gw.wait_log("removed 1 expired registrations").await;
    assert!(
        provider.ping().await.is_empty(),
        "the provider's session goes on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_lives_its_ttl_capped_at_the_service_ttl() {
    // `ttl` 1 s under a 300 s --service-ttl, and `ttl` 3600 s under a 1 s one: both expire.
    for (flags, ttl) in [
        (&["--prune-interval", "200ms"][..], 1),
        (
            &["--service-ttl", "1s", "--prune-interval", "200ms"][..],
            3600,
        ),
    ] {
        let gw = Gateway::start(flags);
        let mut provider = gw.raw().await;
        provider.write(&register_frame("short.op", Some(ttl))).await;
        assert!(provider.ping().await.is_empty());
        assert_eq!(gw.metric("meshgate_registrations").await, 1);
        gw.wait_metric("meshgate_registrations_expired_total", |n| n == 1)
            .await;
        assert_eq!(gw.metric("meshgate_registrations").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_refreshed_within_its_ttl_does_not_expire() {
    let gw = Gateway::start(&["--service-ttl", "1s", "--prune-interval", "100ms"]);
    let mut provider = gw.raw_on_shard(0).await;
    let mut caller = gw.raw_on_shard(0).await;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1600) {
        provider.register("kept.op").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(gw.metric("meshgate_registrations_expired_total").await, 0);
    caller.call("kept.op", &[0xc0], &Id::U(1)).await;
    provider.expect(FrameType::Call).await;
}

// =========================================================================================
// Shutdown
// =========================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_disconnects_every_session_with_shutting_down_and_exits_0() {
    let mut gw = Gateway::start(&[]);
    let mut sessions = vec![gw.raw_on_shard(0).await, gw.raw_on_shard(1).await];
    sessions[0].subscribe(&["a.b"]).await;
    sessions[1].register("some.op").await;
    let client = gw.client().await;
    let mut state = client.watch_state();
    // A connection still waiting to send CONNECT is closed too.
    let waiting = Raw::open(gw.addr).await.expect("handshake");
    let waiting_with_stream = {
        let mut raw = Raw::open(gw.addr).await.expect("handshake");
        raw.write(&[1]).await;
        raw
    };
    let mut waiting_with_stream = waiting_with_stream;
    gw.wait_metric("meshgate_handshakes", |n| n == 2).await;
    gw.signal(libc::SIGTERM);
    for raw in &mut sessions {
        raw.expect_disconnect(Reason::ShuttingDown).await;
    }
    waiting_with_stream
        .expect_disconnect(Reason::ShuttingDown)
        .await;
    waiting.expect_closed(Reason::ShuttingDown).await;
    let ended = tokio::time::timeout(
        PATIENCE,
        state.wait_for(|s| matches!(s, meshgate_client::ConnectionState::Closed { .. })),
    )
    .await
    .expect("the client saw the end")
    .expect("state")
    .clone();
    assert_eq!(
        ended,
        meshgate_client::ConnectionState::Closed {
            reason: Some(Reason::ShuttingDown)
        }
    );
    let status = gw
        .wait_exit(Duration::from_secs(2))
        .await
        .expect("the gateway exits within 2 s");
    assert!(status.success(), "exit status {status:?}");
    let log = gw.log();
    assert!(
        log.contains("signal 15: stopping") && log.contains("stopped"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_an_idle_gateway_with_status_0() {
    let mut gw = Gateway::start(&[]);
    gw.signal(libc::SIGINT);
    let status = gw
        .wait_exit(Duration::from_secs(2))
        .await
        .expect("the gateway exits within 2 s");
    assert!(status.success(), "exit status {status:?}");
}

// =========================================================================================
// 8. Health and metrics
// =========================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_endpoint_answers_health_ready_live_and_404() {
    let gw = Gateway::start(&[]);
    let (status, body) = gw.get("/health").await;
    assert_eq!(status, 200);
    let body = body.trim();
    assert!(body.starts_with('{') && body.ends_with('}'), "{body}");
    let fields: BTreeMap<&str, &str> = body[1..body.len() - 1]
        .split(',')
        .filter_map(|kv| kv.split_once(':'))
        .map(|(k, v)| (k.trim().trim_matches('"'), v.trim()))
        .collect();
    assert_eq!(fields.get("status"), Some(&"\"healthy\""), "{body}");
    assert_eq!(fields.get("ready"), Some(&"true"), "{body}");
    assert_eq!(fields.get("shards"), Some(&"2"), "{body}");
    let uptime: u64 = fields
        .get("uptime")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("uptime in {body}"));
    assert!(uptime < 60);
    assert_eq!(gw.get("/ready").await, (200, "Ready".into()));
    assert_eq!(gw.get("/live").await, (200, "Live".into()));
    assert_eq!(gw.get("/nothing/here").await.0, 404);
    assert_eq!(gw.get("/").await.0, 404);
}

/// A gateway-wide series in seconds.
fn seconds(m: &Metrics, name: &str) -> f64 {
    let line = m
        .text
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name}"));
    line.rsplit_once(' ')
        .and_then(|(_, v)| v.parse().ok())
        .expect("seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_shard_polls_after_traffic_by_default_and_never_with_spin_0s() {
    for (flags, polls) in [(&[][..], true), (&["--spin", "0s"][..], false)] {
        // One shard: a core of its own on any machine (with more shards than cores, none
        // polls).
        let gw = Gateway::start_with_shards(1, flags);
        let mut raw = Raw::open(gw.addr).await.expect("handshake");
        raw.write(&connect_frame(REALM, random_node(), None)).await;
        raw.expect(FrameType::Pong).await;
        let m = gw.metrics().await;
        // The shard turned for the handshake and the CONNECT, then went idle: with a spin,
        // its first idle spell polls (50 µs at most, a microsecond at least: the figure has
        // six decimals).
        let spun = seconds(&m, "meshgate_shard_spin_seconds_total");
        assert_eq!(spun > 0.0, polls, "{flags:?}: {spun}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_has_every_metric_of_the_protocol_gateway_wide_and_per_shard() {
    let gw = Gateway::start(&[]);
    let m = gw.metrics().await;
    for name in PROTOCOL_METRICS {
        assert!(
            m.text.contains(&format!("# TYPE {name} ")),
            "no TYPE line for {name}"
        );
    }
    let gauges = [
        "meshgate_clients",
        "meshgate_handshakes",
        "meshgate_subscriptions",
        "meshgate_registrations",
        "meshgate_pending_calls",
        "meshgate_peers",
    ];
    let counters = [
        "meshgate_registrations_expired_total",
        "meshgate_late_replies_total",
        "meshgate_publishes_total",
        "meshgate_deliveries_total",
        "meshgate_peers_evicted_total",
        "meshgate_udp_datagrams_received_total",
        "meshgate_udp_datagrams_sent_total",
        "meshgate_shard_turns_total",
    ];
    for name in gauges.iter().chain(&counters) {
        m.get(name);
        m.get(&format!("{name}{{shard=\"0\"}}"));
        m.get(&format!("{name}{{shard=\"1\"}}"));
    }
    for name in gauges {
        assert!(m.text.contains(&format!("# TYPE {name} gauge")), "{name}");
    }
    for name in counters {
        assert!(m.text.contains(&format!("# TYPE {name} counter")), "{name}");
    }
    // Seconds, with a fraction: each gateway-wide and per shard.
    for name in [
        "meshgate_shard_cpu_seconds_total",
        "meshgate_shard_spin_seconds_total",
    ] {
        assert!(m.text.contains(&format!("# TYPE {name} counter")), "{name}");
        for series in [name.to_owned(), format!("{name}{{shard=\"1\"}}")] {
            let line = m
                .text
                .lines()
                .find(|l| l.starts_with(&format!("{series} ")));
            let value = line.and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok());
            assert!(value.is_some_and(|v| v >= 0.0), "{series}: {line:?}");
        }
    }
    let labelled = [
        (
            "meshgate_calls_total",
            "outcome",
            &[
                "ok",
                "procedure_not_found",
                "timeout",
                "provider_gone",
                "overloaded",
                "caller_gone",
            ][..],
        ),
        (
            "meshgate_clients_refused_total",
            "reason",
            &["realm_mismatch", "unauthorized", "max_clients_reached"][..],
        ),
        ("meshgate_dropped_total", "reason", &["slow_consumer"][..]),
    ];
    for (name, label, values) in labelled {
        for value in values {
            m.get(&format!("{name}{{{label}=\"{value}\"}}"));
            for shard in 0..2 {
                m.get(&format!("{name}{{{label}=\"{value}\",shard=\"{shard}\"}}"));
            }
        }
    }
    assert!(m.get("meshgate_resident_memory_bytes") > 1 << 20);
}

/// The gauges that must be back to 0 once every client left.
const GAUGES: [&str; 5] = [
    "meshgate_clients",
    "meshgate_subscriptions",
    "meshgate_registrations",
    "meshgate_pending_calls",
    "meshgate_handshakes",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gauge_returns_to_zero_after_every_client_leaves() {
    let gw = Gateway::start(&[]);
    let client = gw.client_on_shard(0).await;
    let _subscription = client
        .subscribe(["g.one", "g.two.*"])
        .await
        .expect("subscribe");
    client
        .register("g.echo", |a| async move { Ok::<_, ProcedureError>(a) })
        .await
        .expect("register");
    let mut provider = gw.raw_on_shard(1).await;
    provider.subscribe(&["g.**"]).await;
    provider.register("g.held").await;
    let mut caller = gw.raw_on_shard(0).await;
    caller.call("g.held", &[0xc0], &Id::U(1)).await;
    provider.expect(FrameType::Call).await;
    let handshake = Raw::open(gw.addr).await.expect("handshake");
    let m = gw.metrics().await;
    let busy: Vec<u64> = GAUGES.iter().map(|g| m.get(g)).collect();
    assert_eq!(busy, [3, 3, 2, 1, 1], "{GAUGES:?}");
    // Per shard, adding up.
    for g in GAUGES {
        assert_eq!(
            m.get(&format!("{g}{{shard=\"0\"}}")) + m.get(&format!("{g}{{shard=\"1\"}}")),
            m.get(g),
            "{g}"
        );
    }

    client.close().await.expect("close");
    provider.leave().await;
    caller.conn.close(0u32.into(), b"");
    handshake.conn.close(0u32.into(), b"");
    for g in GAUGES {
        for series in [
            g.to_string(),
            format!("{g}{{shard=\"0\"}}"),
            format!("{g}{{shard=\"1\"}}"),
        ] {
            gw.wait_metric(&series, |n| n == 0).await;
        }
    }
}

// =========================================================================================
// Start-up errors
// =========================================================================================

/// Checks that a gateway that could not start exited non-zero with one clear line on
/// stderr, holding `needle`, and no panic.
fn assert_one_line_failure(exited: &Exited, needle: &str) {
    assert!(!exited.status.success(), "status {:?}", exited.status);
    let lines: Vec<&str> = exited.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {:?}", exited.stderr);
    assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
    assert!(!exited.stderr.contains("panicked"), "{}", exited.stderr);
}

const LOOPBACK_ANY_PORT: [&str; 4] = ["--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_flag_value_is_one_line_on_stderr_and_a_failure_status() {
    for (args, needle) in [
        (&["--call-timeout", "soon"][..], "--call-timeout"),
        (&["--max-clients", "many"][..], "--max-clients"),
        (&["--listen", "nowhere"][..], "--listen"),
        (&["--realm", "Bad Realm"][..], "Bad Realm"),
        (&["--cert", "cert.pem"][..], "--key"),
        (&["--no-such-flag"][..], "--no-such-flag"),
    ] {
        let mut all = vec!["serve"];
        all.extend(args);
        let exited = run_to_exit(&all);
        assert_one_line_failure(&exited, needle);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_cert_file_is_one_line_on_stderr_and_a_failure_status() {
    let mut args = vec!["serve", "--shards", "2"];
    args.extend(LOOPBACK_ANY_PORT);
    args.extend([
        "--cert",
        "/nonexistent/meshgate/cert.pem",
        "--key",
        "/nonexistent/meshgate/key.pem",
    ]);
    let exited = run_to_exit(&args);
    assert_one_line_failure(&exited, "/nonexistent/meshgate/cert.pem");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_port_in_use_is_one_line_on_stderr_and_a_failure_status() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    let addr = taken.local_addr().unwrap().to_string();
    let exited = run_to_exit(&[
        "serve",
        "--shards",
        "2",
        "--listen",
        &addr,
        "--health-listen",
        "127.0.0.1:0",
    ]);
    assert_one_line_failure(&exited, &addr);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a TCP socket");
    let addr = taken.local_addr().unwrap().to_string();
    let exited = run_to_exit(&[
        "serve",
        "--shards",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--health-listen",
        &addr,
    ]);
    assert_one_line_failure(&exited, &addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tls_group_is_one_line_on_stderr_and_a_failure_status() {
    let exited = run_to_exit(&[
        "serve",
        "--shards",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--health-listen",
        "127.0.0.1:0",
        "--tls-groups",
        "X25519:NO-SUCH-GROUP",
    ]);
    assert_one_line_failure(&exited, "--tls-groups X25519:NO-SUCH-GROUP");
}

/// The post-quantum hybrid preferred, or only P-256 (which the client library offers second:
/// the gateway asks for it with a HelloRetryRequest): clients connect all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connect_whichever_key_exchange_groups_the_gateway_accepts() {
    for groups in ["X25519MLKEM768:X25519", "P-256"] {
        let gw = Gateway::start(&["--tls-groups", groups]);
        let mut raw = gw.raw().await;
        assert!(raw.ping().await.is_empty(), "--tls-groups {groups}");
    }
}

// =========================================================================================
// Connection migration
// =========================================================================================

/// Moves `mover` to a new UDP port and checks that its session works both ways with `peer`.
async fn move_and_check(mover: &mut Raw, peer: &mut Raw, round: u8) {
    let addr = mover.rebind();
    assert!(
        mover.ping().await.is_empty(),
        "PING after the move to {addr}"
    );
    mover.publish("to.peer", &[round]).await;
    let got = peer.expect(FrameType::Publish).await.publish();
    assert_eq!(
        (got.payload, got.publisher),
        (vec![round], Some(mover.node_id))
    );
    peer.publish("to.mover", &[round]).await;
    let got = mover.expect(FrameType::Publish).await.publish();
    assert_eq!(got.payload, [round], "a delivery to the new address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_a_move_of_its_client_to_a_new_udp_port() {
    // After a move the kernel may hand the client's packets to the other shard's socket,
    // which forwards them to their connection's shard by its connection id. Ten sessions
    // each move once: all ten miss that path with probability 2^-10.
    let gw = Gateway::start(&[]);
    let mut peer = gw.raw().await;
    peer.subscribe(&["to.peer"]).await;
    for round in 0..10u8 {
        let mut mover = gw.raw().await;
        mover.subscribe(&["to.mover"]).await;
        move_and_check(&mut mover, &mut peer, round).await;
        mover.leave().await;
    }
    gw.wait_metric("meshgate_clients", |n| n == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_repeated_moves_of_its_client_to_new_udp_ports() {
    let gw = Gateway::start(&[]);
    let mut mover = gw.raw().await;
    let mut peer = gw.raw().await;
    mover.subscribe(&["to.mover"]).await;
    peer.subscribe(&["to.peer"]).await;
    for round in 0..5u8 {
        move_and_check(&mut mover, &mut peer, round).await;
    }
    assert_eq!(gw.metric("meshgate_clients").await, 2, "no new session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_connection_that_fills_its_packets_is_probed_for_a_larger_path_mtu() {
    let gw = Gateway::start(&[]);
    let relay = Relay::start(gw.addr).await;
    let mut sub = Raw::connect(relay.addr, REALM, random_node()).await;
    sub.subscribe(&["probe.topic"]).await;
    for _ in 0..20 {
        sub.ping().await;
    }
    // Until a probe proves more, the gateway sends QUIC's minimum, 1,200 bytes (its datagrams
    // are never fragmented), and no answer here fills a packet: the connection has not started
    // discovery, so no probe came.
    assert!(
        relay.largest_to_client() <= 1200,
        "a datagram of {} bytes to an idle session",
        relay.largest_to_client()
    );
    // 64 messages of 1 KiB at once fill packets to the subscriber: the gateway starts
    // discovery and probes up to what the client takes (quinn's max_udp_payload_size).
    let mut publisher = gw.raw().await;
    for i in 0..64u8 {
        publisher.publish("probe.topic", &[i; 1024]).await;
    }
    for _ in 0..64 {
        sub.expect(FrameType::Publish).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while relay.largest_to_client() <= 1350 {
        assert!(
            std::time::Instant::now() < deadline,
            "no probe larger than 1,350 bytes came after the burst"
        );
        sub.ping().await;
    }
}
