//! End-to-end abuse tests: what a hostile client sends must not grow the gateway's memory
//! without bound or earn it an answer larger than the rules allow. The rules themselves are
//! the core's and are tested in the simulator (`shard/tests/sim_protocol.rs`); these tests
//! cover what only the driver and real sockets can break.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_shard::wire::{Message, Ping};
use support::*;

/// Frames that each ask for an answer (PONG, ERROR, REPLY `procedure_not_found`), `count` of
/// each kind, interleaved.
fn answer_seeking_frames(count: u32) -> Vec<u8> {
    let bad = subscribe_frame(&["bad..pattern", "", "x..y"]);
    let mut bytes = Vec::new();
    for i in 0..count {
        bytes.extend(encode(&Message::Ping(Ping::new(u64::from(i)))));
        bytes.extend(&bad);
        bytes.extend(call_frame(
            "nobody.home",
            &[0xc0],
            Some(&Id::U(u64::from(i))),
            Some(60_000),
        ));
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_cannot_make_its_output_grow_past_the_bound() {
    let max_output: u64 = 256 * 1024;
    let gw = Gateway::start(&[
        "--max-output",
        &max_output.to_string(),
        "--slow-consumer-timeout",
        "120s",
    ]);
    let load = Load::start(&gw, 4).await;
    let flooder = gw.raw().await;
    let rss_before = gw.metric("meshgate_resident_memory_bytes").await;
    // About 12 MiB of frames, each asking for an answer of about its own size: a gateway that
    // went on reading would queue several times that. The client never reads.
    let flood = answer_seeking_frames(120_000);
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let written = written.clone();
        let mut send = flooder.send;
        tokio::spawn(async move {
            for chunk in flood.chunks(64 * 1024) {
                if send.write_all(chunk).await.is_err() {
                    break;
                }
                written.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            send
        })
    };
    // The gateway stops reading once the answers fill the bound; QUIC flow control then stops
    // the writer. Wait until the writer makes no progress for a while.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = written.load(Ordering::Relaxed);
        if now == last || writer.is_finished() {
            break;
        }
        last = now;
    }
    let queued = gw.metric("meshgate_output_bytes").await;
    let rss_after = gw.metric("meshgate_resident_memory_bytes").await;
    eprintln!(
        "flood: {} bytes taken in, {queued} bytes queued, resident memory {} -> {} bytes",
        written.load(Ordering::Relaxed),
        rss_before,
        rss_after
    );
    assert!(
        queued <= max_output + 4096,
        "{queued} bytes queued to a client that reads nothing (bound {max_output})"
    );
    assert!(
        !writer.is_finished(),
        "the whole flood ({} bytes) was taken in: nothing held the client back",
        written.load(Ordering::Relaxed)
    );
    // What the connection may hold besides the bound: the client's stream window of unread
    // input (4 MiB), what quiche keeps for the client's receive window, and allocator slack.
    let grown = rss_after.saturating_sub(rss_before);
    assert!(
        grown < 32 << 20,
        "resident memory grew {grown} bytes for one client that reads nothing"
    );
    // The gateway goes on serving others.
    let mut other = gw.raw().await;
    assert!(other.ping().await.is_empty());
    writer.abort();
    flooder.conn.close(0u32.into(), b"");
    load.finish().await;
}

/// A long-header Initial packet of version 1 with random connection IDs, padded with zeros to
/// `len` bytes: its header parses, its payload does not decrypt.
fn initial_datagram(len: usize) -> Vec<u8> {
    let mut d = vec![0xc3, 0, 0, 0, 1, 8];
    d.extend(random_node().0[..8].iter());
    d.push(8);
    d.extend(random_node().0[..8].iter());
    d.push(0); // no token
    let rest = len - d.len() - 2;
    d.extend([0x40 | (rest >> 8) as u8, rest as u8]);
    d.resize(len, 0);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_in_a_datagram_under_1200_bytes_is_dropped_and_counted() {
    let gw = Gateway::start(&[]);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    for len in [504, 1199] {
        socket
            .send_to(&initial_datagram(len), gw.addr)
            .expect("sent");
    }
    gw.wait_metric("meshgate_dropped_total{reason=\"short_initial\"}", |n| {
        n == 2
    })
    .await;
    // A datagram of the full size is not a short one (it is dropped later, undecryptable).
    socket
        .send_to(&initial_datagram(1200), gw.addr)
        .expect("sent");
    let mut raw = gw.raw().await;
    assert!(raw.ping().await.is_empty());
    assert_eq!(
        gw.metric("meshgate_dropped_total{reason=\"short_initial\"}")
            .await,
        2
    );
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout set");
    let mut buf = [0u8; 2048];
    assert!(
        socket.recv_from(&mut buf).is_err(),
        "the gateway answered a short or undecryptable Initial"
    );
}

/// Forwards a client's first datagram to the gateway and drops every later one, so that the
/// client's address is never validated; counts the bytes each way.
struct OneWayRelay {
    addr: SocketAddr,
    sent: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl OneWayRelay {
    fn start(gateway: SocketAddr) -> OneWayRelay {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout set");
        let addr = socket.local_addr().expect("bound");
        let (sent, received) = (Arc::default(), Arc::<AtomicUsize>::default());
        let stop = Arc::new(AtomicBool::new(false));
        let relay = OneWayRelay {
            addr,
            sent: Arc::clone(&sent),
            received: Arc::clone(&received),
            stop: Arc::clone(&stop),
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            let mut forwarded = false;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if from == gateway {
                    received.fetch_add(n, Ordering::Relaxed);
                } else if !forwarded {
                    forwarded = true;
                    sent.fetch_add(n, Ordering::Relaxed);
                    let _ = socket.send_to(&buf[..n], gateway);
                }
            }
        });
        relay
    }
}

impl Drop for OneWayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unvalidated_address_gets_at_most_three_times_what_it_sent() {
    let gw = Gateway::start(&[]);
    let relay = OneWayRelay::start(gw.addr);
    let endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("a client socket");
    let connecting = endpoint
        .connect_with(
            raw_quic_config(quinn::TransportConfig::default()),
            relay.addr,
            "localhost",
        )
        .expect("a connection starts");
    let attempt = tokio::spawn(connecting);
    // Long enough for the gateway's first flight and its retransmissions (several PTOs).
    tokio::time::sleep(Duration::from_secs(3)).await;
    attempt.abort();
    let sent = relay.sent.load(Ordering::Relaxed);
    let received = relay.received.load(Ordering::Relaxed);
    eprintln!("unvalidated address: sent {sent} bytes, got {received} back");
    assert!(sent >= 1200, "the client's Initial was {sent} bytes");
    assert!(received > 0, "the gateway answered the genuine Initial");
    assert!(
        received <= 3 * sent,
        "{received} bytes sent to an address that sent {sent} (over 3x)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscribe_far_over_max_subscriptions_is_answered_with_one_error() {
    // The shape measured before the fix: at the defaults, one SUBSCRIBE of 100,000 patterns
    // from a client that reads nothing was answered with one ERROR per pattern (162 MiB).
    let gw = Gateway::start(&[]);
    let mut raw = gw.raw().await;
    let rss_before = gw.metric("meshgate_resident_memory_bytes").await;
    let patterns: Vec<String> = (0..100_000).map(|i| format!("p.{i}")).collect();
    let list: Vec<&str> = patterns.iter().map(String::as_str).collect();
    raw.write(&subscribe_frame(&list)).await;
    let errors = raw.ping().await;
    let queued_rss = gw.metric("meshgate_resident_memory_bytes").await;
    eprintln!(
        "100,000 patterns: {} frames before the PONG, resident memory {rss_before} -> {queued_rss}",
        errors.len()
    );
    assert_eq!(errors.len(), 1, "one ERROR for the frame");
    let error = errors[0].error();
    assert_eq!(error.code, "too_many_subscriptions");
    assert_eq!(
        error.subject.as_deref(),
        Some("p.1000"),
        "the first refused"
    );
    assert_eq!(gw.metric("meshgate_subscriptions").await, 1_000);
}
