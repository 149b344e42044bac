//! The health endpoint (PROTOCOL.md section 8) under clients that hold connections: idle and
//! byte-dribbling connections delay no other client's answer, a request over the size bound is
//! refused, a connection that sends nothing is closed at its deadline, and at the connection
//! bound a new prober is still served. Each drop is counted in
//! `meshgate_health_dropped_total{reason}`.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::*;

/// The reasons of `meshgate_health_dropped_total`.
const REASONS: [&str; 3] = ["max_connections", "request_too_large", "timeout"];

#[test]
fn health_answers_at_once_with_200_idle_connections_and_a_dribbling_client_open() {
    // Idle connections stay open for the whole test: the answer cannot come from their being
    // closed at their deadline.
    let gw = Gateway::start(&["--health-request-timeout", "60s"]);
    let idle: Vec<TcpStream> = (0..200).map(|_| open(gw.health)).collect();
    let dribbler = Dribbler::start(gw.health);
    std::thread::sleep(Duration::from_millis(300));

    // An endpoint that served one connection at a time would reach the prober only after
    // closing the idle ones before it, each at its 60 s deadline (the drop counters below show
    // none was closed). Half that deadline is therefore a bound no such endpoint can meet,
    // whatever the machine's speed, and a guard against a hang, not a measure of speed.
    let guard = Duration::from_secs(30);
    let asked = Instant::now();
    let (status, body) = get_within(gw.health, "/health", guard);
    eprintln!(
        "/health answered in {:?} with 200 idle connections and a dribbler",
        asked.elapsed()
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("{\"status\":\"healthy\",\"ready\":true,\"uptime\":")
            && body.ends_with(",\"shards\":2,\"node_name\":null,\"peers\":0,\"known\":0}"),
        "{body}"
    );
    assert_eq!(get_within(gw.health, "/live", guard), (200, "Live".into()));

    // Served beside them, not in their place: none was closed.
    let m = metrics(&gw);
    for reason in REASONS {
        assert_eq!(m.get(&dropped(reason)), 0, "{reason}");
    }
    assert!(!dribbler.stop(), "the dribbling client was closed");
    drop(idle);
}

#[test]
fn a_request_head_over_the_size_bound_gets_431_or_a_close_never_a_hang() {
    let gw = Gateway::start(&[]);
    let mut stream = open(gw.health);
    let mut request = b"GET /health HTTP/1.1\r\nX-Big: ".to_vec();
    request.resize(request.len() + 16 * 1024, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    // The endpoint may close before it has read it all, and then the write fails: a close is
    // one of the answers allowed.
    let _ = stream.write_all(&request);
    let answer = read_to_close(&mut stream, PATIENCE);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
        "{answer}"
    );

    let m = metrics(&gw);
    assert_eq!(m.get(&dropped("request_too_large")), 1);
    assert_eq!(http_get(gw.health, "/live").unwrap(), (200, "Live".into()));
}

#[test]
fn a_silent_and_a_dribbling_connection_are_closed_at_their_deadline() {
    let deadline = Duration::from_secs(1);
    let gw = Gateway::start(&["--health-request-timeout", "1s"]);
    let mut silent = open(gw.health);
    let dribbler = Dribbler::start(gw.health);

    assert_eq!(read_to_close(&mut silent, deadline + PATIENCE), b"");
    // The dribbler was accepted just after the silent one, so its deadline is just after.
    let waited = Instant::now();
    while !dribbler.closed() && waited.elapsed() < PATIENCE {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(dribbler.stop(), "the dribbling client is still open");

    let m = metrics(&gw);
    assert_eq!(m.get(&dropped("timeout")), 2);
    assert_eq!(m.get(&dropped("max_connections")), 0);
}

#[test]
fn at_the_connection_bound_a_new_prober_is_served_in_place_of_the_oldest_idle_connection() {
    let gw = Gateway::start(&[
        "--health-max-connections",
        "8",
        "--health-request-timeout",
        "60s",
    ]);
    // The endpoint accepts in the order the connections were made: these 8 are held before the
    // prober comes.
    let mut idle: Vec<TcpStream> = (0..8).map(|_| open(gw.health)).collect();

    let (status, body) = get_within(gw.health, "/health", PATIENCE);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        read_to_close(&mut idle[0], PATIENCE),
        b"",
        "the oldest is closed"
    );
    let newest = &mut idle[7];
    newest
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let still_open = newest.read(&mut [0; 16]);
    assert!(
        matches!(&still_open, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the newest idle connection was closed: {still_open:?}"
    );

    // One closed for the prober; /metrics itself comes with 7 held, under the bound.
    let m = metrics(&gw);
    assert_eq!(m.get(&dropped("max_connections")), 1);
    assert_eq!(m.get(&dropped("timeout")), 0);
}

// -----------------------------------------------------------------------------------------
// Helpers
// -----------------------------------------------------------------------------------------

/// The series of `meshgate_health_dropped_total` for `reason`.
fn dropped(reason: &str) -> String {
    format!("meshgate_health_dropped_total{{reason=\"{reason}\"}}")
}

fn metrics(gw: &Gateway) -> Metrics {
    let (status, body) = get_within(gw.health, "/metrics", PATIENCE);
    assert_eq!(status, 200, "{body}");
    Metrics::parse(&body)
}

/// A connection to the endpoint that has sent nothing.
fn open(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, PATIENCE).expect("the health endpoint accepts")
}

/// `GET path` on a new connection: the status and the body. Fails the test if the whole
/// answer has not come within `limit`.
fn get_within(addr: SocketAddr, path: &str, limit: Duration) -> (u16, String) {
    let mut stream = open(addr);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("the request is sent");
    let response = read_to_close(&mut stream, limit);
    let response = String::from_utf8(response).expect("a UTF-8 response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// Reads until the endpoint closes the connection (an end of stream or a reset), and returns
/// what came. Fails the test if it is still open after `limit`.
fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "still open after {limit:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return got,
        }
    }
}

/// A client on its own thread that sends a request head which never ends, one byte every
/// 100 ms, until the endpoint closes its connection or it is stopped.
struct Dribbler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<bool>,
}

impl Dribbler {
    fn start(addr: SocketAddr) -> Dribbler {
        let mut stream = open(addr);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            // The read timeout paces the bytes, and a read that returns tells of the close.
            stream
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            if stream
                .write_all(b"GET /health HTTP/1.1\r\nX-Slow: ")
                .is_err()
            {
                return true;
            }
            while !stopped.load(Ordering::Relaxed) {
                if stream.write_all(b"a").is_err() {
                    return true;
                }
                match stream.read(&mut [0; 64]) {
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    // An end of stream, a reset, or an answer to a request that never ended.
                    _ => return true,
                }
            }
            false
        });
        Dribbler { stop, thread }
    }

    /// Whether the endpoint has closed the connection.
    fn closed(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops sending; returns whether the endpoint had closed the connection.
    fn stop(self) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the dribbling thread")
    }
}
