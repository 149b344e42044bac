//! End-to-end tests of how a session ends (PROTOCOL.md 3.5): by a QUIC close from the client,
//! by the client finishing, resetting or stopping its control stream, and by the idle timeout
//! of a client that vanished. Each test runs the real gateway with 2 shards and a background
//! load beside it ([`Load`]: sessions calling an echo provider on the same gateway), so that
//! a session's end is handled while the shards are busy with others; the load's own calls must
//! all succeed. The tests assert outcomes (which REPLY, which CANCEL, which close code, which
//! gauge values) and never how long something took, except the one bound of the idle-timeout
//! test, whose comment says why it is not timing luck.

mod support;

use std::time::Duration;

use meshgate_shard::wire::{FrameType, Message, Reason};
use support::*;

/// Sessions of the background load beside each test.
const LOAD_CALLERS: usize = 20;

/// The deadline of the test's calls: far beyond any QUIC draining period (three PTOs,
/// milliseconds on loopback, a few seconds at most behind the slow relay of [`FAR_ONE_WAY`])
/// and beyond every wait of these tests ([`PATIENCE`]). So a call is never answered `timeout`
/// within a test, a gateway that let the call run to its deadline cannot pass, and the error
/// asserted is the one the session's end produced.
const LONG_CALL_MS: u64 = 30_000;

/// Sends CALL `procedure` with the long deadline.
async fn call_long(raw: &mut Raw, procedure: &str, id: &Id) {
    raw.write(&call_frame(
        procedure,
        &[0xc0],
        Some(id),
        Some(LONG_CALL_MS),
    ))
    .await;
}

/// The next frame, which must be of type `ty`; `what` says what it is for the failure message.
async fn next_of(raw: &mut Raw, ty: FrameType, what: &str) -> Frame {
    match raw.next_within(PATIENCE).await {
        Err(_) => panic!(
            "no {ty:?} ({what}) within {PATIENCE:?}; the call's deadline is {LONG_CALL_MS} ms \
             away, so the gateway still holds it"
        ),
        Ok(None) => panic!(
            "the stream ended before the {ty:?} ({what}); close: {:?}",
            raw.conn.close_reason()
        ),
        Ok(Some(frame)) => {
            assert_eq!(
                frame.ty,
                ty as u8,
                "expected {ty:?} ({what}), got {:?}",
                frame.msg()
            );
            frame
        }
    }
}

/// With the load paused (its calls all answered), checks the gateway-wide gauges: the load's
/// share plus the test's `clients` sessions and `registrations` registrations, and `pending`
/// calls in flight. Then the load goes on.
async fn assert_gauges(gw: &Gateway, load: &Load, clients: u64, registrations: u64, pending: u64) {
    load.pause().await;
    gw.wait_metric("meshgate_pending_calls", |n| n == pending)
        .await;
    gw.wait_metric("meshgate_clients", |n| n == load.sessions() + clients)
        .await;
    gw.wait_metric("meshgate_registrations", |n| {
        n == load.registrations() + registrations
    })
    .await;
    load.resume();
}

/// Checks that a CALL of `procedure` finds no provider any more. The caller may sit on
/// another shard than the session that ended, and each shard keeps its own copy of the
/// registrations, updated by a message: a CALL that races that message is routed to the
/// ended session and answered `provider_gone` at once, which is right too. What must never
/// happen is a CALL held by a dead provider (no answer before its 30 s deadline) or a
/// registration that stays: every answer comes at once, and `procedure_not_found` comes.
async fn assert_not_found(caller: &mut Raw, procedure: &str, id: Id) {
    for _ in 0..50 {
        call_long(caller, procedure, &id).await;
        let reply = next_of(caller, FrameType::Reply, "a CALL after the session's end")
            .await
            .reply();
        assert_eq!(reply.call_id, Some(id.clone()));
        match reply.outcome {
            Err(e) if e == "procedure_not_found" => return,
            Err(e) if e == "provider_gone" => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("a CALL after the session's end was answered {other:?}"),
        }
    }
    panic!("the ended session's registration is still routed to after 50 calls");
}

/// What the gateway does after the client's `cause`: it sends at most a DISCONNECT `reason`
/// (required when `must_say` holds) and nothing else, ends the stream or the connection, and
/// closes the connection with the application code of `reason`.
async fn expect_end(raw: &mut Raw, reason: Reason, cause: &str, must_say: bool) {
    let mut said = false;
    loop {
        match raw.next_within(PATIENCE).await {
            Err(_) => panic!(
                "{PATIENCE:?} after {cause}, the gateway had neither ended the control stream \
                 nor closed the connection (close: {:?})",
                raw.conn.close_reason()
            ),
            Ok(None) => break,
            Ok(Some(frame)) => match frame.msg() {
                Message::Disconnect(d) if !said => {
                    assert_eq!(
                        String::from_utf8_lossy(d.reason),
                        reason.as_str(),
                        "the DISCONNECT after {cause} (message {:?})",
                        d.message.map(String::from_utf8_lossy)
                    );
                    said = true;
                }
                other => panic!("after {cause}, the gateway sent {other:?}"),
            },
        }
    }
    assert!(
        said || !must_say,
        "after {cause}, the stream ended without DISCONNECT {} (close: {:?})",
        reason.as_str(),
        raw.conn.close_reason()
    );
    raw.expect_closed(reason).await;
}

// =========================================================================================
// A QUIC close from the client
// =========================================================================================

/// A provider on `provider_shard` holds a call of a caller on `caller_shard`, then closes its
/// QUIC connection without DISCONNECT. On loopback its connection's draining period is over
/// within milliseconds, so this cannot tell a session ended when the close arrived from one
/// ended when draining did; the far provider's test below can.
async fn a_provider_quic_close(provider_shard: u16, caller_shard: u16) {
    let gw = Gateway::start(&[]);
    let load = Load::start(&gw, LOAD_CALLERS).await;
    let mut provider = gw.raw_on_shard(provider_shard).await;
    provider.register("held.op").await;
    let mut caller = gw.raw_on_shard(caller_shard).await;
    let id = Id::B(b"held".to_vec());
    call_long(&mut caller, "held.op", &id).await;
    next_of(&mut provider, FrameType::Call, "the held call").await;
    assert_gauges(&gw, &load, 2, 1, 1).await;

    provider.conn.close(0u32.into(), b"");
    let reply = next_of(&mut caller, FrameType::Reply, "the held call")
        .await
        .reply();
    assert_eq!(
        reply,
        Replied {
            call_id: Some(id),
            outcome: Err("provider_gone".into())
        }
    );
    // Right after: the registration went with the session, no draining period later.
    assert_not_found(&mut caller, "held.op", Id::U(2)).await;
    assert!(caller.ping().await.is_empty(), "the caller goes on");
    assert_gauges(&gw, &load, 1, 0, 0).await;
    let m = gw.metrics().await;
    assert_eq!(m.get("meshgate_calls_total{outcome=\"provider_gone\"}"), 1);
    assert_eq!(
        m.get("meshgate_calls_total{outcome=\"procedure_not_found\"}"),
        1
    );
    assert_eq!(m.get("meshgate_calls_total{outcome=\"timeout\"}"), 0);
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_closing_its_quic_connection_with_a_call_held_on_another_shard_ends_its_session_at_once(
) {
    a_provider_quic_close(1, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_closing_its_quic_connection_with_a_call_held_on_its_callers_shard_ends_its_session_at_once(
) {
    a_provider_quic_close(0, 0).await;
}

/// A caller on `caller_shard` has a call in flight to a provider on `provider_shard`, then
/// closes its QUIC connection without DISCONNECT.
async fn a_caller_quic_close(provider_shard: u16, caller_shard: u16) {
    let gw = Gateway::start(&[]);
    let load = Load::start(&gw, LOAD_CALLERS).await;
    let mut provider = gw.raw_on_shard(provider_shard).await;
    provider.register("long.op").await;
    let mut caller = gw.raw_on_shard(caller_shard).await;
    call_long(&mut caller, "long.op", &Id::U(9)).await;
    let token = next_of(&mut provider, FrameType::Call, "the call in flight")
        .await
        .call()
        .call_id
        .expect("a server call_id");
    assert_gauges(&gw, &load, 2, 1, 1).await;

    caller.conn.close(0u32.into(), b"");
    let cancel = next_of(&mut provider, FrameType::Cancel, "the caller's call")
        .await
        .cancel();
    assert_eq!(
        cancel,
        Cancelled {
            call_id: token.clone(),
            reason: "caller_gone".into()
        }
    );
    assert_gauges(&gw, &load, 1, 1, 0).await;
    assert_eq!(
        gw.metric("meshgate_calls_total{outcome=\"caller_gone\"}")
            .await,
        1
    );
    // A REPLY after the CANCEL is discarded and counted; the provider goes on.
    provider.write(&reply_frame(&token, &[0x01])).await;
    gw.wait_metric("meshgate_late_replies_total", |n| n == 1)
        .await;
    assert!(provider.ping().await.is_empty(), "the provider goes on");
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_closing_its_quic_connection_with_a_call_in_flight_on_another_shard_gets_it_cancelled_with_caller_gone(
) {
    a_caller_quic_close(1, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_closing_its_quic_connection_with_a_call_in_flight_on_its_providers_shard_gets_it_cancelled_with_caller_gone(
) {
    a_caller_quic_close(1, 1).await;
}

/// The delay the relay adds each way between a far provider and the gateway: a round trip of
/// 300 ms, so the gateway's probe timeout (PTO) for that connection is a few hundred ms and its
/// draining period (three PTOs, RFC 9000 10.2) about a second or more, where on loopback it
/// is a few ms and over before anything can be observed. No assertion depends on it: it only
/// makes the draining period outlast the steps below, which take a few loopback round trips.
const FAR_ONE_WAY: Duration = Duration::from_millis(150);

/// A provider behind a slow relay holds a call of a caller on its own shard, then closes its
/// QUIC connection. A CALL that reaches the gateway after the close must find no provider,
/// although the closed connection drains for a second or more: PROTOCOL.md 3.5 ends the
/// session when the close arrives. A gateway that kept the session for the draining period
/// routes that CALL to the gone provider, and answers it `provider_gone` when draining ends.
///
/// The runtime has one thread, so that nothing of quinn's runs between two statements
/// without an `.await`: that is how the test knows which of the provider's datagrams carries
/// its close (see below).
#[tokio::test(flavor = "current_thread")]
async fn a_call_sent_after_a_far_providers_quic_close_reached_the_gateway_finds_no_provider_while_its_connection_drains(
) {
    let gw = Gateway::start(&[]);
    let load = Load::start(&gw, LOAD_CALLERS).await;
    let (mut provider, relay, shard) = gw.raw_via_relay(FAR_ONE_WAY).await;
    // The caller on the provider's shard: both use the same socket of the gateway.
    let mut caller = gw.raw_on_shard(shard).await;
    provider.register("far.op").await;
    let held = Id::U(1);
    call_long(&mut caller, "far.op", &held).await;
    next_of(&mut provider, FrameType::Call, "the held call").await;
    assert_gauges(&gw, &load, 2, 1, 1).await;

    // After `close`, quinn sends nothing but CONNECTION_CLOSE, and no datagram can be made
    // between these two statements (no `.await`, one thread): so the provider's datagram
    // number `sent + 1` is its close, and the relay sends its datagrams on in order.
    let sent = provider.conn.stats().udp_tx.datagrams;
    provider.conn.close(0u32.into(), b"");
    relay.wait_forwarded_to_gateway(sent + 1).await;
    // The close is now in the receive queue of the gateway's socket for the shard (on
    // loopback a datagram is queued at the receiver within the send). The caller's PING comes
    // into the same queue behind it, and the shard reads its socket in order: its PONG says
    // that the gateway has read the close. The CALL that follows is read later still. (The
    // PING is needed: the gateway handles every datagram of one read of its socket before it
    // ends the sessions whose connections closed in it, so a CALL read together with the
    // close still reached the provider, in 2 of 10 runs without the PING.)
    let mut replies: Vec<Replied> = caller.ping().await.iter().map(Frame::reply).collect();
    let late = Id::U(2);
    call_long(&mut caller, "far.op", &late).await;
    while replies.len() < 2 {
        let reply = next_of(&mut caller, FrameType::Reply, "the two calls")
            .await
            .reply();
        replies.push(reply);
    }
    // Read right after the answers: the session had already ended.
    let m = gw.metrics().await;
    let outcome_of = |id: &Id| {
        replies
            .iter()
            .find(|r| r.call_id.as_ref() == Some(id))
            .unwrap_or_else(|| panic!("no REPLY to {id:?} in {replies:?}"))
            .outcome
            .clone()
    };
    assert_eq!(
        outcome_of(&late),
        Err("procedure_not_found".into()),
        "a CALL read after the provider's close was routed to the closed session: the \
         session outlived the close's arrival (replies: {replies:?})"
    );
    assert_eq!(
        outcome_of(&held),
        Err("provider_gone".into()),
        "the held call (replies: {replies:?})"
    );
    assert_eq!(
        m.get("meshgate_clients"),
        load.sessions() + 1,
        "sessions when the answers came: the load's and the caller"
    );
    assert_eq!(m.get("meshgate_registrations"), load.registrations());
    assert!(caller.ping().await.is_empty(), "the caller goes on");
    assert_gauges(&gw, &load, 1, 0, 0).await;
    let m = gw.metrics().await;
    assert_eq!(m.get("meshgate_calls_total{outcome=\"provider_gone\"}"), 1);
    assert_eq!(
        m.get("meshgate_calls_total{outcome=\"procedure_not_found\"}"),
        1
    );
    assert_eq!(m.get("meshgate_calls_total{outcome=\"timeout\"}"), 0);
    load.finish().await;
    drop((provider, relay));
}

// =========================================================================================
// The control stream finished, reset or stopped by the client
// =========================================================================================

/// A session on shard 1 that registered `procedure`, and a session on shard 0 that will call
/// it; the gauges are checked with both.
async fn leaving_and_other(gw: &Gateway, load: &Load, procedure: &str) -> (Raw, Raw) {
    let other = gw.raw_on_shard(0).await;
    let mut leaving = gw.raw_on_shard(1).await;
    assert!(leaving.register(procedure).await.is_empty());
    assert_gauges(gw, load, 2, 1, 0).await;
    (leaving, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_finishing_its_control_stream_between_frames_ends_its_session_as_a_normal_disconnect(
) {
    let gw = Gateway::start(&[]);
    let load = Load::start(&gw, LOAD_CALLERS).await;
    let (mut leaving, mut other) = leaving_and_other(&gw, &load, "fin.op").await;
    other.subscribe(&["fin.last"]).await;
    // The frame just before the FIN is handled like any other.
    leaving.publish("fin.last", b"bye").await;
    leaving.send.finish().expect("FIN");
    expect_end(&mut leaving, Reason::Normal, "a FIN between frames", false).await;
    let got = next_of(&mut other, FrameType::Publish, "the PUBLISH before the FIN")
        .await
        .publish();
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice()),
        ("fin.last", &b"bye"[..])
    );
    assert_not_found(&mut other, "fin.op", Id::U(1)).await;
    assert_gauges(&gw, &load, 1, 0, 0).await;
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_finishing_its_control_stream_in_the_middle_of_a_frame_gets_a_protocol_error() {
    let gw = Gateway::start(&[]);
    let load = Load::start(&gw, LOAD_CALLERS).await;
    let frame = publish_frame("cut.topic", &[7; 32]);
    let mut other = gw.raw_on_shard(0).await;
    // Inside the header, right after it, inside the payload, one byte short.
    for cut in [3, 8, 20, frame.len() - 1] {
        let mut leaving = gw.raw_on_shard(1).await;
        assert!(leaving.register("cut.op").await.is_empty());
        leaving.write(&frame[..cut]).await;
        leaving.send.finish().expect("FIN");
        let cause = format!("a FIN after {cut} of a frame's {} bytes", frame.len());
        expect_end(&mut leaving, Reason::ProtocolError, &cause, true).await;
        assert_not_found(&mut other, "cut.op", Id::U(cut as u64)).await;
        assert_gauges(&gw, &load, 1, 0, 0).await;
    }
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resetting_its_control_stream_between_frames_ends_its_session_as_a_normal_disconnect(
) {
    let gw = Gateway::start(&[]);
    let load = Load::start(&gw, LOAD_CALLERS).await;
    // Its REGISTER is answered (PING), so the reset falls between frames.
    let (mut leaving, mut other) = leaving_and_other(&gw, &load, "reset.op").await;
    leaving.send.reset(0x11u32.into()).expect("RESET_STREAM");
    expect_end(&mut leaving, Reason::Normal, "a RESET_STREAM", false).await;
    assert_not_found(&mut other, "reset.op", Id::U(1)).await;
    assert_gauges(&gw, &load, 1, 0, 0).await;
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_stop_sending_on_its_control_stream_ends_its_session_as_a_normal_disconnect(
) {
    let gw = Gateway::start(&[]);
    let load = Load::start(&gw, LOAD_CALLERS).await;
    let (mut leaving, mut other) = leaving_and_other(&gw, &load, "stop.op").await;
    leaving.recv.stop(0x12u32.into()).expect("STOP_SENDING");
    // The gateway may not send on the stream any more: only the close code tells.
    leaving.expect_closed(Reason::Normal).await;
    assert_not_found(&mut other, "stop.op", Id::U(1)).await;
    assert_gauges(&gw, &load, 1, 0, 0).await;
    load.finish().await;
}

// =========================================================================================
// A client that vanishes: the idle timeout
// =========================================================================================

/// The gateway's idle timeout in the vanishing test.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// The deadline of the call the vanished provider holds: between one and two idle timeouts.
///
/// The gateway's own timers decide the outcome, not the test's clock. The last packet from
/// the client precedes the cut, and RFC 9000 10.1 restarts the idle timer only when a packet
/// is received or with the first ack-eliciting packet sent after one; the gateway's first
/// packets to the client after the cut (the REPLY and the CALL below) leave within
/// milliseconds of it. So a gateway that ends the session at its idle timeout does so about
/// 3 s after the cut and answers the held call `provider_gone`, 2 s before its deadline. A
/// gateway that let its later sends (the CANCEL at 1 s, retransmissions) restart the timer,
/// or that removed the session only at a second timeout, would still hold the session at
/// 5 s, and the call would end in `timeout`.
const HELD_CALL_MS: u64 = 5_000;

/// A raw session whose QUIC connection sends a PING every 500 ms.
async fn kept_alive(gw: &Gateway) -> Raw {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(500)));
    Raw::connect_with(gw.addr, REALM, random_node(), None, transport).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_with_calls_in_flight_is_removed_within_one_idle_timeout() {
    let gw = Gateway::start(&["--idle-timeout", "3s"]);
    let load = Load::start(&gw, LOAD_CALLERS).await;
    // The vanishing client reaches the gateway through a relay that will be cut.
    let relay = Relay::start(gw.addr).await;
    let mut vanishing = Raw::connect(relay.addr, REALM, random_node()).await;
    vanishing.register("vanish.op").await;
    // The others send QUIC PINGs, so that they outlive the idle timeout however long they
    // wait for the frames below.
    let mut back = kept_alive(&gw).await;
    back.register("vanish.back").await;
    let mut caller = kept_alive(&gw).await;
    // The vanishing client is a caller too: one of its calls will be answered after the
    // vanish, the other is held by its provider.
    call_long(&mut vanishing, "vanish.back", &Id::U(1)).await;
    call_long(&mut vanishing, "vanish.back", &Id::U(2)).await;
    let answered = next_of(
        &mut back,
        FrameType::Call,
        "the vanishing client's first call",
    )
    .await
    .call()
    .call_id
    .expect("a server call_id");
    let held = next_of(
        &mut back,
        FrameType::Call,
        "the vanishing client's second call",
    )
    .await
    .call()
    .call_id
    .expect("a server call_id");
    // And it is a provider holding a call.
    let long = Id::U(10);
    caller
        .write(&call_frame(
            "vanish.op",
            &[0xc0],
            Some(&long),
            Some(HELD_CALL_MS),
        ))
        .await;
    next_of(&mut vanishing, FrameType::Call, "the held call").await;
    assert_gauges(&gw, &load, 3, 2, 3).await;

    relay.cut().await;
    // Frames the gateway now sends the vanished client: a REPLY to its first call...
    back.write(&reply_frame(&answered, &[0x01])).await;
    // ...and a CALL whose deadline passes (it is well before the idle timeout), then its
    // CANCEL `timeout`.
    let short = Id::U(11);
    caller
        .write(&call_frame("vanish.op", &[0xc0], Some(&short), Some(1000)))
        .await;
    let mut replies = Vec::new();
    while replies.len() < 2 {
        match caller.next_within(Duration::from_secs(20)).await {
            Ok(Some(frame)) => replies.push(frame.reply()),
            other => panic!("the caller got {replies:?}, then {other:?}"),
        }
    }
    let outcome_of = |id: &Id| {
        replies
            .iter()
            .find(|r| r.call_id.as_ref() == Some(id))
            .unwrap_or_else(|| panic!("no REPLY to {id:?} in {replies:?}"))
            .clone()
    };
    assert_eq!(
        outcome_of(&short).outcome,
        Err("timeout".into()),
        "the short call ends at its deadline, before the idle timeout"
    );
    assert_eq!(
        outcome_of(&long).outcome,
        Err("provider_gone".into()),
        "the provider outlived its idle timeout of {IDLE_TIMEOUT:?}: its held call reached \
         its deadline of {HELD_CALL_MS} ms first"
    );
    // The call it held as a caller is cancelled for its provider.
    let cancel = next_of(
        &mut back,
        FrameType::Cancel,
        "the vanished caller's held call",
    )
    .await
    .cancel();
    assert_eq!(
        cancel,
        Cancelled {
            call_id: held,
            reason: "caller_gone".into()
        }
    );
    assert_gauges(&gw, &load, 2, 1, 0).await;
    let m = gw.metrics().await;
    assert_eq!(m.get("meshgate_calls_total{outcome=\"provider_gone\"}"), 1);
    assert_eq!(m.get("meshgate_calls_total{outcome=\"caller_gone\"}"), 1);
    assert_eq!(m.get("meshgate_calls_total{outcome=\"timeout\"}"), 1);
    load.finish().await;
    drop(vanishing);
}
