//! Helpers of the end-to-end tests: a real `meshgate` process per test ([`Gateway`]), its
//! health endpoint and metrics over a plain TCP HTTP GET, clients of the client library, and a
//! raw QUIC client ([`Raw`]) that writes arbitrary bytes on the control stream and reads frames.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshgate_client::{Client, ClientConfig, Tls};
use meshgate_shard::wire::{
    Call, CallIdRef, Connect, FrameReader, FrameType, Message, Outcome, Ping, Publish,
    Raw as RawValue, Reason, Register, Reply, Strings, Subscribe, Unregister, Unsubscribe,
};
use meshgate_shard::NodeId;

/// Shards of every gateway the tests start.
pub const SHARDS: u16 = 2;
/// The realm a gateway serves when given no `--realm`.
pub const REALM: &str = "macula.default";
/// How long a test waits for something the gateway should do promptly.
pub const PATIENCE: Duration = Duration::from_secs(5);

// -----------------------------------------------------------------------------------------
// The gateway process
// -----------------------------------------------------------------------------------------

/// A `meshgate serve --shards 2` process on loopback. It listens on ports the kernel picks
/// (`127.0.0.1:0`, read back from its start-up line), so tests run in parallel without port
/// clashes. Killed when dropped; its log (stderr) is kept and printed if the test fails.
pub struct Gateway {
    child: Option<Child>,
    /// The QUIC (UDP) address.
    pub addr: SocketAddr,
    /// The health endpoint (TCP) address.
    pub health: SocketAddr,
    log: Arc<Mutex<String>>,
    /// The thread that copies the gateway's stderr into `log`; it ends at the stream's end.
    log_reader: Option<std::thread::JoinHandle<()>>,
}

/// How a gateway process that had to stop on its own ended.
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: String,
}

/// The gateway binary, `meshgate`. The root package's tests get it from Cargo. The tests of
/// `meshgate-cli` (which share this module) find it beside their own binary, in the same
/// target directory, where `cargo test --workspace` builds it too; `MESHGATE_BIN` names
/// another one.
pub fn gateway_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MESHGATE_BIN") {
        return bin.into();
    }
    if let Some(bin) = option_env!("CARGO_BIN_EXE_meshgate") {
        return bin.into();
    }
    let Some(tools) = option_env!("CARGO_BIN_EXE_meshgate-cli") else {
        panic!("tests/support serves the tests of meshgate and of meshgate-cli only");
    };
    let bin = Path::new(tools).with_file_name(format!("meshgate{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "no gateway binary at {}: run `cargo test --workspace`, or `cargo build -p meshgate` \
         first, or set MESHGATE_BIN",
        bin.display()
    );
    bin
}

/// The first of `count` consecutive ports, free on 127.0.0.1 for UDP and TCP now.
pub fn consecutive_free_ports(count: u16) -> u16 {
    for _ in 0..100 {
        let draw = u16::from_le_bytes([random_node().0[0], random_node().0[1]]);
        let base = 20_000 + draw % 10_000;
        let free = (base..base + count).all(|port| {
            std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no {count} consecutive free ports in 100 draws");
}

/// Waits at most `limit` for a process to exit.
pub fn wait_for_exit(child: &mut std::process::Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `meshgate` with `args` to its end (at most 10 s): for start-up errors.
pub fn run_to_exit(args: &[&str]) -> Exited {
    let mut child = Command::new(gateway_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshgate starts");
    let Some(status) = wait_for_exit(&mut child, Duration::from_secs(10)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("meshgate {args:?} was still running after 10 s");
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .expect("stderr is UTF-8");
    Exited { status, stderr }
}

impl Gateway {
    /// Starts a gateway with 2 shards and `flags`, and waits until `/ready` answers 200.
    pub fn start(flags: &[&str]) -> Gateway {
        Gateway::start_with_shards(SHARDS, flags)
    }

    /// Starts a gateway with `shards` shards and `flags`, and waits until `/ready` answers
    /// 200. The helpers that find a shard's sessions ([`Gateway::clients_per_shard`],
    /// [`Gateway::raw_on_shard`], [`nodes_owned_by`]) assume [`SHARDS`]; use them only with
    /// [`Gateway::start`].
    pub fn start_with_shards(shards: u16, flags: &[&str]) -> Gateway {
        Gateway::spawn(shards, "127.0.0.1:0", "127.0.0.1:0", flags)
    }

    /// Starts a gateway with 2 shards and `flags` on the addresses `addr` (QUIC) and `health`,
    /// e.g. those of a gateway that was killed, to restart it.
    pub fn start_at(addr: SocketAddr, health: SocketAddr, flags: &[&str]) -> Gateway {
        Gateway::spawn(SHARDS, &addr.to_string(), &health.to_string(), flags)
    }

    fn spawn(shards: u16, listen: &str, health_listen: &str, flags: &[&str]) -> Gateway {
        let shards = shards.to_string();
        let mut child = Command::new(gateway_bin())
            .args(["serve", "--shards", &shards, "--listen", listen])
            .args(["--health-listen", health_listen])
            .args(flags)
            // The start-up line (which holds the addresses) is logged at info level;
            // MESHGATE_TEST_LOG asks for more, e.g. `debug`.
            .env(
                "RUST_LOG",
                std::env::var("MESHGATE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("meshgate starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        let log_reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addrs) = listening_addresses(&line) {
                        let _ = tx.send(addrs);
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        };
        let (addr, health) = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "the gateway did not log its addresses; its log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        let gateway = Gateway {
            child: Some(child),
            addr,
            health,
            log,
            log_reader: Some(log_reader),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            match http_get(health, "/ready") {
                Ok((200, _)) => break,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                other => panic!("/ready did not answer 200: {other:?}"),
            }
        }
        gateway
    }

    /// What the gateway logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle`.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the log never held {needle:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: kill has no memory preconditions; the pid is our own child's, not yet reaped.
        let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Kills the process with SIGKILL (it gets no chance to close anything) and reaps it. Its
    /// log stays readable, and is printed if the test fails while the `Gateway` lives.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped")
    }

    /// Waits at most `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.finish_log().await;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// After the gateway exited: waits, at most [`PATIENCE`], until everything it wrote to
    /// stderr is in the log (the reader thread has met the stream's end).
    async fn finish_log(&mut self) {
        let Some(reader) = self.log_reader.take() else {
            return;
        };
        let deadline = Instant::now() + PATIENCE;
        while !reader.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `GET path` on the health endpoint: the status code and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let (addr, path) = (self.health, path.to_owned());
        tokio::task::spawn_blocking(move || http_get(addr, &path))
            .await
            .expect("the GET task")
            .expect("the health endpoint answers")
    }

    /// `/metrics`, parsed.
    pub async fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "/metrics: {body}");
        Metrics::parse(&body)
    }

    /// One series of `/metrics` now, e.g. `meshgate_clients{shard="0"}`.
    pub async fn metric(&self, series: &str) -> u64 {
        self.metrics().await.get(series)
    }

    /// Polls `series` until `done` holds for its value, and returns it.
    pub async fn wait_metric(&self, series: &str, done: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.metric(series).await;
            if done(value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{series} is still {value} after {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The sessions each shard holds.
    pub async fn clients_per_shard(&self) -> [u64; 2] {
        let m = self.metrics().await;
        [
            m.get("meshgate_clients{shard=\"0\"}"),
            m.get("meshgate_clients{shard=\"1\"}"),
        ]
    }

    /// A client-library config for this gateway: any certificate, no reconnection.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            tls: Tls::Insecure,
            reconnect: false,
            ..ClientConfig::new(self.addr)
        }
    }

    /// A connected client of the client library, with a random node id.
    pub async fn client(&self) -> Client {
        Client::connect(self.client_config())
            .await
            .expect("the client connects")
    }

    /// A connected client whose session lives on shard `shard` (the kernel spreads connections
    /// over the shards' sockets by their addresses, so clients are opened until one lands
    /// there). The test must not open or close other sessions meanwhile.
    pub async fn client_on_shard(&self, shard: u16) -> Client {
        for _ in 0..64 {
            let before = self.clients_per_shard().await;
            let client = self.client().await;
            let after = self.clients_per_shard().await;
            if let Some(landed) = landed(before, after) {
                if landed == shard {
                    return client;
                }
                client.close().await.expect("close");
                self.wait_clients(before).await;
            }
        }
        panic!("no client landed on shard {shard} in 64 tries");
    }

    /// A raw session (CONNECT answered) in the default realm with a random node id.
    pub async fn raw(&self) -> Raw {
        Raw::connect(self.addr, REALM, random_node()).await
    }

    /// A raw session on shard `shard`; see [`Gateway::client_on_shard`].
    pub async fn raw_on_shard(&self, shard: u16) -> Raw {
        for _ in 0..64 {
            let before = self.clients_per_shard().await;
            let mut raw = self.raw().await;
            let after = self.clients_per_shard().await;
            if let Some(landed) = landed(before, after) {
                if landed == shard {
                    return raw;
                }
                raw.leave().await;
                self.wait_clients(before).await;
            }
        }
        panic!("no raw session landed on shard {shard} in 64 tries");
    }

    /// A raw session that reaches the gateway through a new relay holding each datagram for
    /// `delay` each way ([`Relay::start_delayed`]), the relay, and the shard the session landed
    /// on (the kernel picks it by the relay's address, which stays the same). The test must not
    /// open or close other sessions meanwhile.
    pub async fn raw_via_relay(&self, delay: Duration) -> (Raw, Relay, u16) {
        for _ in 0..8 {
            let before = self.clients_per_shard().await;
            let relay = Relay::start_delayed(self.addr, delay).await;
            let mut raw = Raw::connect(relay.addr, REALM, random_node()).await;
            let after = self.clients_per_shard().await;
            if let Some(landed) = landed(before, after) {
                return (raw, relay, landed);
            }
            raw.leave().await;
            relay.cut().await;
            self.wait_clients(before).await;
        }
        panic!("no session through a relay was seen landing on a shard in 8 tries");
    }

    async fn wait_clients(&self, want: [u64; 2]) {
        let deadline = Instant::now() + PATIENCE;
        while self.clients_per_shard().await != want {
            assert!(
                Instant::now() < deadline,
                "sessions did not go back to {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The shard whose session count rose by one, the other staying.
fn landed(before: [u64; 2], after: [u64; 2]) -> Option<u16> {
    match (
        after[0].checked_sub(before[0]),
        after[1].checked_sub(before[1]),
    ) {
        (Some(1), Some(0)) => Some(0),
        (Some(0), Some(1)) => Some(1),
        _ => None,
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- gateway log ----\n{}---- end ----", self.log());
        }
    }
}

/// The QUIC and health addresses of the start-up line: `... quic://A (ALPN ..., health http://B, ...`.
fn listening_addresses(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let quic = line.split("quic://").nth(1)?.split_whitespace().next()?;
    let health = line.split("health http://").nth(1)?.split(',').next()?;
    Some((quic.parse().ok()?, health.trim().parse().ok()?))
}

/// A plain HTTP/1.1 GET over TCP: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_write_timeout(Some(PATIENCE))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {response:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// A `/metrics` page: each series (name and labels, as rendered) and its value.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub text: String,
    pub series: BTreeMap<String, u64>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect();
        Metrics {
            text: text.to_owned(),
            series,
        }
    }

    /// The value of a series; panics if the page lacks it.
    pub fn get(&self, series: &str) -> u64 {
        match self.series.get(series) {
            Some(&v) => v,
            None => panic!("/metrics has no series {series}:\n{}", self.text),
        }
    }
}

// -----------------------------------------------------------------------------------------
// The gateway mesh
// -----------------------------------------------------------------------------------------

/// How long a test waits for something of the mesh: a link to come up, a dial to fail.
pub const MESH_PATIENCE: Duration = Duration::from_secs(30);

/// A file in a private directory of this test process, holding `text` (a cluster token file).
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshgate-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("a temporary file");
    path
}

/// One object of `/peers`: each key and its JSON value as written (strings keep their quotes).
#[derive(Clone, Debug)]
pub struct Peer(pub BTreeMap<String, String>);

impl Peer {
    /// A string field, unquoted; `None` for null or absent.
    pub fn str(&self, key: &str) -> Option<String> {
        let v = self.0.get(key)?;
        v.strip_prefix('"')?.strip_suffix('"').map(str::to_owned)
    }

    /// Any field as written, e.g. `true`, `3`, `["macula.default"]`.
    pub fn raw(&self, key: &str) -> &str {
        self.0.get(key).map_or("", String::as_str)
    }

    pub fn name(&self) -> Option<String> {
        self.str("node_name")
    }

    pub fn state(&self) -> String {
        self.str("state").unwrap_or_default()
    }
}

/// Splits `text` at the commas that are outside strings and brackets.
fn top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut in_str, mut escaped, mut start) =
        (Vec::new(), 0, false, false, 0);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_str => escaped = true,
            '"' => in_str = !in_str,
            '[' | '{' if !in_str => depth += 1,
            ']' | '}' if !in_str => depth -= 1,
            ',' if !in_str && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < text.len() {
        parts.push(&text[start..]);
    }
    parts
}

/// A `/peers` body: an array of flat objects.
pub fn parse_peers(body: &str) -> Vec<Peer> {
    let inner = body
        .trim()
        .strip_prefix('[')
        .and_then(|b| b.strip_suffix(']'))
        .unwrap_or_else(|| panic!("/peers is not an array: {body}"));
    top_level(inner)
        .into_iter()
        .map(|object| {
            let fields = object
                .trim()
                .strip_prefix('{')
                .and_then(|o| o.strip_suffix('}'))
                .unwrap_or_else(|| panic!("not an object: {object}"));
            let map = top_level(fields)
                .into_iter()
                .map(|field| {
                    let (key, value) = field.split_once(':').expect("key:value");
                    (
                        key.trim().trim_matches('"').to_owned(),
                        value.trim().to_owned(),
                    )
                })
                .collect();
            Peer(map)
        })
        .collect()
}

/// A number field of a `/health` body.
pub fn health_number(body: &str, key: &str) -> u64 {
    let needle = format!("\"{key}\":");
    let at = body
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key} in {body}"))
        + needle.len();
    let digits: String = body[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {body}"))
}

impl Gateway {
    /// `GET /peers`, parsed.
    pub async fn peers(&self) -> Vec<Peer> {
        let (status, body) = self.get("/peers").await;
        assert_eq!(status, 200, "/peers: {body}");
        parse_peers(&body)
    }

    /// Polls `/peers` until `done` holds for it (at most [`MESH_PATIENCE`]), and returns it.
    pub async fn wait_peers(&self, what: &str, done: impl Fn(&[Peer]) -> bool) -> Vec<Peer> {
        let deadline = Instant::now() + MESH_PATIENCE;
        loop {
            let peers = self.peers().await;
            if done(&peers) {
                return peers;
            }
            assert!(
                Instant::now() < deadline,
                "/peers never showed {what} in {MESH_PATIENCE:?}: {peers:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/peers` shows the gateway `name` up.
    pub async fn wait_up(&self, name: &str) -> Peer {
        let peers = self
            .wait_peers(&format!("{name} up"), |peers| {
                peers
                    .iter()
                    .any(|p| p.name().as_deref() == Some(name) && p.state() == "up")
            })
            .await;
        peers
            .into_iter()
            .find(|p| p.name().as_deref() == Some(name))
            .expect("found above")
    }

    /// Polls `series` until `done` holds for its value (at most [`MESH_PATIENCE`]).
    pub async fn wait_mesh_metric(&self, series: &str, done: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + MESH_PATIENCE;
        loop {
            let value = self
                .metrics()
                .await
                .series
                .get(series)
                .copied()
                .unwrap_or(0);
            if done(value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{series} is still {value} after {MESH_PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// -----------------------------------------------------------------------------------------
// Node ids
// -----------------------------------------------------------------------------------------

/// A random node id.
pub fn random_node() -> NodeId {
    meshgate_client::random_node_id()
}

/// The `i`th of a family of node ids, the family chosen at random per call of
/// [`node_family`] so that tests do not share ids.
fn node(family: u64, i: u32) -> NodeId {
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&i.to_le_bytes());
    id[8..16].copy_from_slice(&family.to_le_bytes());
    id[31] = 0x5a;
    NodeId(id)
}

/// `count` distinct node ids whose owner shard (`meshgate_shard::router::owner_of`) is `shard`.
pub fn nodes_owned_by(shard: u16, count: usize) -> Vec<NodeId> {
    let family = u64::from_le_bytes(random_node().0[..8].try_into().unwrap());
    (0..)
        .map(|i| node(family, i))
        .filter(|n| meshgate_shard::router::owner_of(n, SHARDS).0 == shard)
        .take(count)
        .collect()
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// -----------------------------------------------------------------------------------------
// The raw client
// -----------------------------------------------------------------------------------------

/// A frame received, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub ty: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The decoded message; panics if the gateway sent something undecodable.
    pub fn msg(&self) -> Message<'_> {
        Message::decode(self.ty, &self.payload)
            .unwrap_or_else(|e| panic!("the gateway sent an undecodable frame {self:?}: {e}"))
    }
}

/// One QUIC connection (ALPN `macula`, any certificate accepted) with its control stream,
/// writing whatever bytes a test gives and reading frames with the shard crate's
/// [`FrameReader`].
pub struct Raw {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    reader: FrameReader,
    /// The node id sent in CONNECT, if any.
    pub node_id: NodeId,
    next_ping: u64,
}

/// The QUIC client configuration of raw connections: `transport` tunes flow control.
pub fn raw_quic_config(transport: quinn::TransportConfig) -> quinn::ClientConfig {
    meshgate_client::quic_client_config(&Tls::Insecure, transport).expect("a QUIC TLS config")
}

/// A CONNECT frame.
pub fn connect_frame(realm: &str, node: NodeId, token: Option<&str>) -> Vec<u8> {
    encode(&Message::Connect(Connect {
        version: b"1.0",
        node_id: node,
        realm: realm.as_bytes(),
        capabilities: None,
        token: token.map(str::as_bytes),
    }))
}

/// A message's whole frame.
pub fn encode(msg: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    msg.encode(&mut out);
    out
}

/// A frame with any header bytes and payload.
pub fn frame_bytes(version: u8, ty: u8, flags: u8, reserved: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![version, ty, flags, reserved];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

impl Raw {
    /// The QUIC handshake and the control stream opened; nothing written yet (the gateway
    /// sees the stream with its first byte).
    pub async fn open(addr: SocketAddr) -> Result<Raw, quinn::ConnectionError> {
        Raw::open_with(addr, quinn::TransportConfig::default()).await
    }

    pub async fn open_with(
        addr: SocketAddr,
        transport: quinn::TransportConfig,
    ) -> Result<Raw, quinn::ConnectionError> {
        let endpoint =
            quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("a client UDP socket");
        let connecting = endpoint
            .connect_with(raw_quic_config(transport), addr, "localhost")
            .expect("a connection starts");
        let conn = tokio::time::timeout(PATIENCE, connecting)
            .await
            .expect("the handshake ends in time")?;
        let (send, recv) = conn.open_bi().await?;
        Ok(Raw {
            endpoint,
            conn,
            send,
            recv,
            reader: FrameReader::new(64 << 20),
            node_id: NodeId([0; 32]),
            next_ping: 1,
        })
    }

    /// Opens, sends CONNECT and checks that PONG answers it.
    pub async fn connect(addr: SocketAddr, realm: &str, node: NodeId) -> Raw {
        Raw::connect_with(addr, realm, node, None, quinn::TransportConfig::default()).await
    }

    pub async fn connect_with(
        addr: SocketAddr,
        realm: &str,
        node: NodeId,
        token: Option<&str>,
        transport: quinn::TransportConfig,
    ) -> Raw {
        let mut raw = Raw::open_with(addr, transport)
            .await
            .expect("QUIC handshake");
        raw.node_id = node;
        raw.write(&connect_frame(realm, node, token)).await;
        let answer = raw.next().await.expect("an answer to CONNECT");
        match answer.msg() {
            Message::Pong(p) => assert!(p.node_id.is_some(), "PONG without node_id"),
            other => panic!("CONNECT was answered with {other:?}"),
        }
        raw
    }

    /// Writes bytes to the control stream.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("write");
    }

    /// Writes one message.
    pub async fn send_msg(&mut self, msg: &Message<'_>) {
        let bytes = encode(msg);
        self.write(&bytes).await;
    }

    /// The next frame, `None` once the stream or the connection ended; panics after
    /// [`PATIENCE`] without one.
    pub async fn next(&mut self) -> Option<Frame> {
        match self.next_within(PATIENCE).await {
            Ok(frame) => frame,
            Err(_) => panic!("no frame within {PATIENCE:?}"),
        }
    }

    /// The next frame within `limit`: `Err` if none came in time, `Ok(None)` once the stream
    /// or the connection ended.
    pub async fn next_within(
        &mut self,
        limit: Duration,
    ) -> Result<Option<Frame>, tokio::time::error::Elapsed> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(f) = self
                .reader
                .next_frame()
                .expect("the gateway's frames are valid")
            {
                return Ok(Some(Frame {
                    ty: f.frame_type,
                    payload: f.payload.to_vec(),
                }));
            }
            match tokio::time::timeout_at(deadline, self.recv.read_chunk(usize::MAX, true)).await? {
                Ok(Some(chunk)) => self
                    .reader
                    .push(&chunk.bytes)
                    .expect("the gateway's frame headers are valid"),
                Ok(None) | Err(_) => return Ok(None),
            }
        }
    }

    /// Sends PING and reads up to its PONG; returns the frames that came before it.
    pub async fn ping(&mut self) -> Vec<Frame> {
        let ts = self.next_ping;
        self.next_ping += 1;
        self.send_msg(&Message::Ping(Ping::new(ts))).await;
        let mut before = Vec::new();
        loop {
            let frame = self.next().await.expect("PONG before the stream ends");
            if let Message::Pong(p) = frame.msg() {
                if p.timestamp == ts {
                    return before;
                }
            }
            before.push(frame);
        }
    }

    /// Sends PING with `mesh` true (PROTOCOL.md 9.6) and reads up to its PONG: once it comes,
    /// the session's earlier SUBSCRIBE and REGISTER_PROCEDURE are in effect on every gateway
    /// of the mesh whose link was up. Returns the frames that came before it.
    pub async fn mesh_ping(&mut self) -> Vec<Frame> {
        let ts = self.next_ping;
        self.next_ping += 1;
        let ping = Ping {
            timestamp: ts,
            mesh: true,
        };
        self.send_msg(&Message::Ping(ping)).await;
        let mut before = Vec::new();
        loop {
            let frame = self.next().await.expect("PONG before the stream ends");
            if let Message::Pong(p) = frame.msg() {
                if p.timestamp == ts {
                    return before;
                }
            }
            before.push(frame);
        }
    }

    /// Reads frames up to DISCONNECT, checks its reason, then checks that the connection is
    /// closed with the reason's application code. Returns the frames before DISCONNECT.
    pub async fn expect_disconnect(&mut self, reason: Reason) -> Vec<Frame> {
        let mut before = Vec::new();
        loop {
            let Some(frame) = self.next().await else {
                panic!(
                    "the stream ended without DISCONNECT {} (close: {:?}; frames: {before:?})",
                    reason.as_str(),
                    self.conn.close_reason()
                );
            };
            if let Message::Disconnect(d) = frame.msg() {
                assert_eq!(
                    String::from_utf8_lossy(d.reason),
                    reason.as_str(),
                    "DISCONNECT reason (message {:?})",
                    d.message.map(String::from_utf8_lossy)
                );
                break;
            }
            before.push(frame);
        }
        self.expect_closed(reason).await;
        before
    }

    /// Waits for the connection to close and checks that the gateway closed it with the
    /// application error code of `reason`.
    pub async fn expect_closed(&self, reason: Reason) {
        let error = tokio::time::timeout(PATIENCE, self.conn.closed())
            .await
            .unwrap_or_else(|_| panic!("the connection is still open ({})", reason.as_str()));
        match error {
            quinn::ConnectionError::ApplicationClosed(close) => assert_eq!(
                close.error_code.into_inner(),
                reason.close_code(),
                "close code (reason phrase {:?})",
                String::from_utf8_lossy(&close.reason)
            ),
            other => panic!(
                "expected application close {:#x} ({}), got {other:?}",
                reason.close_code(),
                reason.as_str()
            ),
        }
    }

    /// Leaves: DISCONNECT `normal`, then waits for the gateway to close the connection.
    pub async fn leave(&mut self) {
        let bye = encode(&Message::Disconnect(meshgate_shard::wire::Disconnect {
            reason: b"normal",
            message: None,
        }));
        self.write(&bye).await;
        let _ = tokio::time::timeout(PATIENCE, self.conn.closed()).await;
    }

    /// Moves the connection to a new local UDP socket (a new port), as a NAT rebinding does.
    pub fn rebind(&self) -> SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a new UDP socket");
        let addr = socket.local_addr().expect("bound");
        self.endpoint.rebind(socket).expect("rebind");
        addr
    }
}

// -----------------------------------------------------------------------------------------
// Frames and what they carry, owned
// -----------------------------------------------------------------------------------------

/// A `call_id`, owned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Id {
    U(u64),
    I(i64),
    B(Vec<u8>),
}

impl Id {
    pub fn of(id: CallIdRef<'_>) -> Id {
        match id {
            CallIdRef::Uint(n) => Id::U(n),
            CallIdRef::Int(n) => Id::I(n),
            CallIdRef::Bytes(b) => Id::B(b.to_vec()),
        }
    }

    pub fn wire(&self) -> CallIdRef<'_> {
        match self {
            Id::U(n) => CallIdRef::Uint(*n),
            Id::I(n) => CallIdRef::Int(*n),
            Id::B(b) => CallIdRef::Bytes(b),
        }
    }
}

pub fn publish_frame(topic: &str, payload: &[u8]) -> Vec<u8> {
    encode(&Message::Publish(Publish::new(topic.as_bytes(), payload)))
}

pub fn subscribe_frame(patterns: &[&str]) -> Vec<u8> {
    let list: Vec<&[u8]> = patterns.iter().map(|p| p.as_bytes()).collect();
    encode(&Message::Subscribe(Subscribe {
        topics: Strings::List(&list),
        qos: None,
    }))
}

pub fn unsubscribe_frame(patterns: &[&str]) -> Vec<u8> {
    let list: Vec<&[u8]> = patterns.iter().map(|p| p.as_bytes()).collect();
    encode(&Message::Unsubscribe(Unsubscribe {
        topics: Strings::List(&list),
    }))
}

pub fn register_frame(procedure: &str, ttl_s: Option<u64>) -> Vec<u8> {
    encode(&Message::Register(Register {
        procedure: procedure.as_bytes(),
        ttl_s,
    }))
}

pub fn unregister_frame(procedure: &str) -> Vec<u8> {
    encode(&Message::Unregister(Unregister {
        procedure: procedure.as_bytes(),
    }))
}

pub fn call_frame(
    procedure: &str,
    args: &[u8],
    call_id: Option<&Id>,
    timeout_ms: Option<u64>,
) -> Vec<u8> {
    encode(&Message::Call(Call {
        procedure: procedure.as_bytes(),
        args: RawValue(args),
        call_id: call_id.map(Id::wire),
        timeout_ms,
    }))
}

pub fn reply_frame(call_id: &Id, result: &[u8]) -> Vec<u8> {
    encode(&Message::Reply(Reply {
        call_id: Some(call_id.wire()),
        outcome: Outcome::Result(RawValue(result)),
    }))
}

pub fn reply_error_frame(call_id: &Id, code: &str, message: &str) -> Vec<u8> {
    encode(&Message::Reply(Reply {
        call_id: Some(call_id.wire()),
        outcome: Outcome::Error {
            code: code.as_bytes(),
            message: Some(message.as_bytes()),
        },
    }))
}

/// A PUBLISH received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub topic: String,
    pub payload: Vec<u8>,
    pub publisher: Option<NodeId>,
}

/// A CALL received by a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Called {
    pub procedure: String,
    pub args: Vec<u8>,
    pub call_id: Option<Id>,
    pub timeout_ms: Option<u64>,
}

/// A REPLY received by a caller: the result, or the error code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replied {
    pub call_id: Option<Id>,
    pub outcome: Result<Vec<u8>, String>,
}

/// A CANCEL received by a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cancelled {
    pub call_id: Id,
    pub reason: String,
}

/// An ERROR received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: String,
    pub frame_type: u64,
    pub subject: Option<String>,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Frame {
    pub fn publish(&self) -> Delivered {
        match self.msg() {
            Message::Publish(p) => Delivered {
                topic: text(p.topic),
                payload: p.payload.to_vec(),
                publisher: p.publisher,
            },
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    pub fn call(&self) -> Called {
        match self.msg() {
            Message::Call(c) => Called {
                procedure: text(c.procedure),
                args: c.args.0.to_vec(),
                call_id: c.call_id.map(Id::of),
                timeout_ms: c.timeout_ms,
            },
            other => panic!("expected CALL, got {other:?}"),
        }
    }

    pub fn reply(&self) -> Replied {
        match self.msg() {
            Message::Reply(r) => Replied {
                call_id: r.call_id.map(Id::of),
                outcome: match r.outcome {
                    Outcome::Result(raw) => Ok(raw.0.to_vec()),
                    Outcome::Error { code, .. } => Err(text(code)),
                },
            },
            other => panic!("expected REPLY, got {other:?}"),
        }
    }

    pub fn cancel(&self) -> Cancelled {
        match self.msg() {
            Message::Cancel(c) => Cancelled {
                call_id: Id::of(c.call_id),
                reason: text(c.reason),
            },
            other => panic!("expected CANCEL, got {other:?}"),
        }
    }

    pub fn error(&self) -> Refused {
        match self.msg() {
            Message::Error(e) => Refused {
                code: text(e.code),
                frame_type: e.frame_type,
                subject: e.topic.or(e.procedure).map(text),
            },
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
}

impl Raw {
    /// SUBSCRIBE, then PING: returns once the patterns are in effect on every shard, with the
    /// frames (ERROR) that came meanwhile.
    pub async fn subscribe(&mut self, patterns: &[&str]) -> Vec<Frame> {
        self.write(&subscribe_frame(patterns)).await;
        self.ping().await
    }

    /// REGISTER_PROCEDURE, then PING.
    pub async fn register(&mut self, procedure: &str) -> Vec<Frame> {
        self.write(&register_frame(procedure, None)).await;
        self.ping().await
    }

    pub async fn publish(&mut self, topic: &str, payload: &[u8]) {
        self.write(&publish_frame(topic, payload)).await;
    }

    /// Sends CALL with `call_id` and no timeout.
    pub async fn call(&mut self, procedure: &str, args: &[u8], call_id: &Id) {
        self.write(&call_frame(procedure, args, Some(call_id), None))
            .await;
    }

    /// The next frame, which must be of type `ty`.
    pub async fn expect(&mut self, ty: FrameType) -> Frame {
        let frame = self
            .next()
            .await
            .unwrap_or_else(|| panic!("the stream ended before a {ty:?} frame"));
        assert_eq!(frame.ty, ty as u8, "expected {ty:?}, got {:?}", frame.msg());
        frame
    }
}

// -----------------------------------------------------------------------------------------
// Admission with an answer either way
// -----------------------------------------------------------------------------------------

/// How the gateway answered a CONNECT.
pub enum Answer {
    /// PONG: the session is open.
    Admitted(Raw),
    /// DISCONNECT with this reason; the connection is about to close.
    Refused(Raw, String),
}

impl Raw {
    /// Opens, sends CONNECT and returns the answer, PONG or DISCONNECT (anything else panics).
    pub async fn try_connect(addr: SocketAddr, realm: &str, node: NodeId) -> Answer {
        let mut raw = Raw::open(addr).await.expect("QUIC handshake");
        raw.node_id = node;
        raw.write(&connect_frame(realm, node, None)).await;
        let answer = raw.next().await.expect("an answer to CONNECT");
        match answer.msg() {
            Message::Pong(p) => {
                assert!(p.node_id.is_some(), "PONG without node_id");
                Answer::Admitted(raw)
            }
            Message::Disconnect(d) => {
                let reason = text(d.reason);
                Answer::Refused(raw, reason)
            }
            other => panic!("CONNECT was answered with {other:?}"),
        }
    }
}

// -----------------------------------------------------------------------------------------
// A UDP relay: a client that vanishes without a word, or one far away
// -----------------------------------------------------------------------------------------

/// Forwards UDP datagrams between clients and a gateway: a client connects to [`Relay::addr`]
/// and the gateway sees the relay's own socket. [`Relay::cut`] closes both sockets at once,
/// so the client vanishes for the gateway without a close, a reset or any other word, while
/// its QUIC connection object stays alive (dropping a quinn connection would close it).
/// [`Relay::start_delayed`] holds every datagram for a fixed time in each direction, so that
/// the client is far away for QUIC: a long round trip, hence long loss-detection timers and a
/// long draining period. Datagrams leave in the order they came, either way.
pub struct Relay {
    /// The address clients connect to.
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Datagrams of the client sent on to the gateway so far.
    to_gateway: tokio::sync::watch::Receiver<u64>,
    /// The largest datagram of the gateway's sent on to the client so far, in bytes.
    largest_to_client: Arc<std::sync::atomic::AtomicUsize>,
}

/// A datagram the relay holds, and when it is due to leave.
type Held = (tokio::time::Instant, Vec<u8>);

impl Relay {
    /// A relay to `to`, for one client, that forwards each datagram as soon as it comes.
    pub async fn start(to: SocketAddr) -> Relay {
        Relay::start_delayed(to, Duration::ZERO).await
    }

    /// A relay to `to`, for one client, that forwards each datagram `delay` after it came, in
    /// both directions.
    pub async fn start_delayed(to: SocketAddr, delay: Duration) -> Relay {
        let front = Arc::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("the relay's client-side socket"),
        );
        let back = Arc::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("the relay's gateway-side socket"),
        );
        let addr = front.local_addr().expect("bound");
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let (counted, to_gateway) = tokio::sync::watch::channel(0u64);
        let (up_tx, mut up_rx) = tokio::sync::mpsc::unbounded_channel::<Held>();
        let (down_tx, mut down_rx) = tokio::sync::mpsc::unbounded_channel::<Held>();
        let mut tasks = Vec::new();
        // Client to gateway: take in, then send on when due.
        tasks.push(tokio::spawn({
            let (front, client) = (front.clone(), client.clone());
            async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    if let Ok((n, from)) = front.recv_from(&mut buf).await {
                        *client.lock().unwrap() = Some(from);
                        let due = tokio::time::Instant::now() + delay;
                        if up_tx.send((due, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        }));
        tasks.push(tokio::spawn({
            let back = back.clone();
            async move {
                while let Some((due, datagram)) = up_rx.recv().await {
                    if !delay.is_zero() {
                        tokio::time::sleep_until(due).await;
                    }
                    let _ = back.send_to(&datagram, to).await;
                    counted.send_modify(|n| *n += 1);
                }
            }
        }));
        // Gateway to client.
        tasks.push(tokio::spawn({
            let back = back.clone();
            async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    if let Ok((n, from)) = back.recv_from(&mut buf).await {
                        let due = tokio::time::Instant::now() + delay;
                        if from == to && down_tx.send((due, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        }));
        let largest_to_client = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tasks.push(tokio::spawn({
            let largest = largest_to_client.clone();
            async move {
                while let Some((due, datagram)) = down_rx.recv().await {
                    if !delay.is_zero() {
                        tokio::time::sleep_until(due).await;
                    }
                    let to_client = *client.lock().unwrap();
                    if let Some(to_client) = to_client {
                        largest.fetch_max(datagram.len(), std::sync::atomic::Ordering::Relaxed);
                        let _ = front.send_to(&datagram, to_client).await;
                    }
                }
            }
        }));
        Relay {
            addr,
            tasks,
            to_gateway,
            largest_to_client,
        }
    }

    /// The largest datagram the gateway sent its client through the relay so far, in bytes.
    pub fn largest_to_client(&self) -> usize {
        self.largest_to_client
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the relay has sent on to the gateway at least `n` datagrams of its client
    /// (in the order the client sent them: the `n`th one is then in the gateway's socket).
    pub async fn wait_forwarded_to_gateway(&self, n: u64) {
        let mut counted = self.to_gateway.clone();
        let waited = tokio::time::timeout(PATIENCE, async {
            counted.wait_for(|&sent| sent >= n).await.is_ok()
        })
        .await;
        match waited {
            Ok(true) => {}
            Ok(false) => panic!("the relay stopped before forwarding {n} datagrams"),
            Err(_) => panic!(
                "the relay forwarded {} datagrams to the gateway, not {n}, in {PATIENCE:?}",
                *self.to_gateway.borrow()
            ),
        }
    }

    /// Closes both sockets: from now on nothing passes either way.
    pub async fn cut(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// A UDP relay that can be cut and healed, for a peer link: the gateway that sends to
/// [`Breaker::addr`] (a dialer given it as `--peer`) reaches the gateway given to
/// [`Breaker::connect`], which sees the relay's own socket as the dialer. [`Breaker::cut`]
/// drops every datagram either way, without a word to either end; [`Breaker::heal`] lets them
/// pass again through the same sockets, so that the dialer's `--peer` address stays good. It
/// is bound before it knows where to forward, so that the gateway behind it can be started
/// with `--advertise` set to the relay's address.
pub struct Breaker {
    /// The address the dialer is given.
    pub addr: SocketAddr,
    /// The gateway behind the relay, once known.
    to: Arc<std::sync::OnceLock<SocketAddr>>,
    /// Whether datagrams pass.
    open: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Breaker {
    /// A relay that forwards nothing until [`Breaker::connect`].
    pub async fn bind() -> Breaker {
        use std::sync::atomic::Ordering;
        let front = Arc::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("the relay's dialer-side socket"),
        );
        let back = Arc::new(
            tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("the relay's gateway-side socket"),
        );
        let addr = front.local_addr().expect("bound");
        let to = Arc::new(std::sync::OnceLock::<SocketAddr>::new());
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let dialer: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let forward = {
            let (front, back, to, open, dialer) = (
                front.clone(),
                back.clone(),
                to.clone(),
                open.clone(),
                dialer.clone(),
            );
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    let Ok((n, from)) = front.recv_from(&mut buf).await else {
                        continue;
                    };
                    *dialer.lock().unwrap() = Some(from);
                    if let (Some(&to), true) = (to.get(), open.load(Ordering::SeqCst)) {
                        let _ = back.send_to(&buf[..n], to).await;
                    }
                }
            })
        };
        let backward = {
            let (to, open) = (to.clone(), open.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    let Ok((n, from)) = back.recv_from(&mut buf).await else {
                        continue;
                    };
                    if to.get() != Some(&from) || !open.load(Ordering::SeqCst) {
                        continue;
                    }
                    let dialer = *dialer.lock().unwrap();
                    if let Some(dialer) = dialer {
                        let _ = front.send_to(&buf[..n], dialer).await;
                    }
                }
            })
        };
        Breaker {
            addr,
            to,
            open,
            tasks: vec![forward, backward],
        }
    }

    /// Forwards to `to` from now on.
    pub fn connect(&self, to: SocketAddr) {
        self.to.set(to).expect("connected once");
    }

    /// Drops every datagram, either way, from now on.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets datagrams pass again.
    pub fn heal(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Breaker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

// -----------------------------------------------------------------------------------------
// Background load
// -----------------------------------------------------------------------------------------

/// The procedure the load's echo provider serves.
pub const LOAD_PROCEDURE: &str = "load.echo";
/// The timeout of each of the load's calls (and the deadline the gateway is given): far beyond
/// any stall of a busy test machine, so that a failed load call means a gateway fault.
pub const LOAD_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause of each load session between two calls, which keeps the load from taking all
/// the CPU of a small machine.
const LOAD_PACE: Duration = Duration::from_millis(10);
/// The longest a load runs, even if no one stops it.
const LOAD_LIFETIME: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoadMode {
    Run,
    Pause,
    Stop,
}

struct LoadState {
    mode: LoadMode,
    /// Load sessions with a call in flight.
    busy: usize,
}

/// Sessions of the client library calling an echo provider of the same gateway one call
/// after another, beside a test, for at most [`LOAD_LIFETIME`]. Its sessions are all open
/// when [`Load::start`] returns and stay open until [`Load::finish`], so the session counts
/// that [`Gateway::raw_on_shard`] watches do not move meanwhile. [`Load::pause`] lets a test
/// read exact gauges: the load's own share is then [`Load::sessions`] sessions,
/// [`Load::registrations`] registrations and no call in flight.
pub struct Load {
    provider: Client,
    callers: usize,
    workers: Vec<tokio::task::JoinHandle<()>>,
    state: Arc<Mutex<LoadState>>,
    calls: Arc<std::sync::atomic::AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Load {
    /// Connects an echo provider of [`LOAD_PROCEDURE`] and `callers` calling sessions, and
    /// returns once every caller has had a call answered.
    pub async fn start(gw: &Gateway, callers: usize) -> Load {
        // Keep-alive well within any --idle-timeout the tests use, for while the load pauses.
        let config = || ClientConfig {
            keep_alive: Duration::from_millis(500),
            call_timeout: LOAD_CALL_TIMEOUT,
            ..gw.client_config()
        };
        let provider = Client::connect(config())
            .await
            .expect("the load's provider connects");
        provider
            .register(LOAD_PROCEDURE, |args| async move {
                Ok::<_, meshgate_client::ProcedureError>(args)
            })
            .await
            .expect("the load's provider registers");
        let state = Arc::new(Mutex::new(LoadState {
            mode: LoadMode::Run,
            busy: 0,
        }));
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut workers = Vec::with_capacity(callers);
        for index in 0..callers {
            let client = Client::connect(config())
                .await
                .expect("a load session connects");
            workers.push(tokio::spawn(load_worker(
                client,
                index as u64,
                state.clone(),
                calls.clone(),
                failures.clone(),
                started.clone(),
            )));
        }
        let load = Load {
            provider,
            callers,
            workers,
            state,
            calls,
            failures,
        };
        let deadline = Instant::now() + LOAD_CALL_TIMEOUT;
        while started.load(std::sync::atomic::Ordering::SeqCst) < callers {
            load.assert_no_failure();
            assert!(
                Instant::now() < deadline,
                "the load's callers had no call answered in {LOAD_CALL_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        load
    }

    /// The sessions the load holds (its callers and its provider).
    pub fn sessions(&self) -> u64 {
        self.callers as u64 + 1
    }

    /// The registrations the load holds.
    pub fn registrations(&self) -> u64 {
        1
    }

    /// Stops new calls and waits until every load call in flight is answered.
    pub async fn pause(&self) {
        self.state.lock().unwrap().mode = LoadMode::Pause;
        let deadline = Instant::now() + LOAD_CALL_TIMEOUT + PATIENCE;
        while self.state.lock().unwrap().busy > 0 {
            assert!(
                Instant::now() < deadline,
                "the load's calls in flight were not answered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Calls again after [`Load::pause`].
    pub fn resume(&self) {
        let mut state = self.state.lock().unwrap();
        if state.mode == LoadMode::Pause {
            state.mode = LoadMode::Run;
        }
    }

    /// Answered load calls so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Panics if a load call failed: the test beside it disturbed sessions it had no part in.
    pub fn assert_no_failure(&self) {
        let failures = self.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "{} load calls failed beside the test, first {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }

    /// Stops the load, closes its sessions, and checks that it ran and that none of its
    /// calls failed.
    pub async fn finish(mut self) {
        self.state.lock().unwrap().mode = LoadMode::Stop;
        for worker in std::mem::take(&mut self.workers) {
            tokio::time::timeout(LOAD_CALL_TIMEOUT + PATIENCE, worker)
                .await
                .expect("a load session stops")
                .expect("a load session ran to its end");
        }
        let _ = self.provider.close().await;
        self.assert_no_failure();
        assert!(
            self.calls() >= self.callers as u64,
            "the load made {} calls",
            self.calls()
        );
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.lock() {
            state.mode = LoadMode::Stop;
        }
    }
}

/// One load session: calls, checks the echo, pauses [`LOAD_PACE`], again.
async fn load_worker(
    client: Client,
    index: u64,
    state: Arc<Mutex<LoadState>>,
    calls: Arc<std::sync::atomic::AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    started: Arc<std::sync::atomic::AtomicUsize>,
) {
    let until = Instant::now() + LOAD_LIFETIME;
    let mut n: u64 = 0;
    while Instant::now() < until {
        let go = {
            let mut state = state.lock().unwrap();
            match state.mode {
                LoadMode::Stop => break,
                LoadMode::Pause => false,
                LoadMode::Run => {
                    state.busy += 1;
                    true
                }
            }
        };
        if !go {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        n += 1;
        // bin 8 of 16 bytes: the session and the call.
        let mut args = vec![0xc4, 16];
        args.extend_from_slice(&index.to_be_bytes());
        args.extend_from_slice(&n.to_be_bytes());
        let outcome = client.call(LOAD_PROCEDURE, &args).await;
        state.lock().unwrap().busy -= 1;
        match outcome {
            Ok(result) if result == args => {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n == 1 {
                    started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            Ok(result) => failures.lock().unwrap().push(format!(
                "load session {index}, call {n}: answered {result:02x?}"
            )),
            Err(e) => failures
                .lock()
                .unwrap()
                .push(format!("load session {index}, call {n}: {e:?}")),
        }
        tokio::time::sleep(LOAD_PACE).await;
    }
    let _ = client.close().await;
}
