//! The health and metrics endpoint (PROTOCOL.md section 8): a small HTTP/1.1 server on its own
//! thread, away from the shard cores. The thread serves every connection at once: non-blocking
//! sockets multiplexed with poll(2), each connection with its own buffer and deadline, so that an
//! idle or slow client delays no other's answer. Its bounds ([`Limits`]) close what goes past
//! them, and each such drop is counted in `meshgate_health_dropped_total{reason}`. `/metrics`
//! asks every shard for a report and renders the Prometheus text format, gateway-wide and per
//! shard; with the gateway mesh, `/peers` and the per-peer metrics (PROTOCOL.md 9.11) are made
//! from the same reports: every shard's links and shard 0's peer table.

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_shard::mesh::counters::{LinkCounters, LINK_FRAMES};
use meshgate_shard::metrics::{reason_index, CallOutcome, DropReason, LinkResult, Metrics};
use meshgate_shard::wire::Reason;
use meshgate_shard::{LinkReport, LinkState, PeerTableReport};
use slab::Slab;

/// What one shard reports for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ShardReport {
    pub shard: u16,
    pub metrics: Metrics,
    /// Connections in the QUIC handshake or waiting for CONNECT.
    pub handshakes: u64,
    /// Peer links of this shard that are up.
    pub peers: u64,
    /// New connections refused at the QUIC level (over `--max-handshakes`).
    pub refused_handshakes: u64,
    /// This shard's peer links.
    pub links: Vec<LinkReport>,
    /// Shard 0's peer table and dial schedule (`None` on other shards, or without the mesh).
    pub peer_table: Option<PeerTableReport>,
    /// Per peer name, what this shard's links to it carried, ended links included.
    pub peer_counters: Vec<(Box<[u8]>, LinkCounters)>,
    /// Added to a shard `Time` gives wall-clock milliseconds since the Unix epoch.
    pub wall_clock_offset_ms: i64,
    /// What the shard's loop did with its socket.
    pub io: IoCounts,
    /// CPU time the shard's thread has used since it started (user and system).
    pub cpu_time: Duration,
}

/// What a shard's loop did with its socket since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounts {
    /// UDP datagrams read from the socket.
    pub datagrams_received: u64,
    /// UDP datagrams the kernel took to send, each segment of a GSO message counted.
    pub datagrams_sent: u64,
    /// Datagrams received for a connection of another shard, and passed to it.
    pub datagrams_forwarded: u64,
    /// Turns of the loop: each reads the socket, handles the inbox and the timers, and sends.
    pub turns: u64,
    /// Time the idle loop spent polling the socket and the inbox before sleeping (`--spin`).
    pub spun: Duration,
}

/// Reads one figure off a shard's report.
type Figure<'a> = dyn Fn(&ShardReport) -> u64 + 'a;
type Getter = Box<Figure<'static>>;

/// Where the endpoint gets its answers.
pub trait HealthSource: Send + Sync + 'static {
    /// Whether every shard is serving.
    fn ready(&self) -> bool;
    fn shards(&self) -> usize;
    /// The gateway's `--node-name`; `None` without the mesh.
    fn node_name(&self) -> Option<&str>;
    /// One report per shard that answered in time.
    fn reports(&self) -> Vec<ShardReport>;
}

/// The bounds of the endpoint (the `--health-*` flags).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once. A new one beyond it closes the oldest connection that has not
    /// sent a whole request yet.
    pub max_connections: usize,
    /// Time from accept to the last byte of the response; a connection still open then is
    /// closed, whatever it is doing.
    pub request_timeout: Duration,
    /// Bytes of a request head; a longer one is answered 431 and closed.
    pub max_request: usize,
}

/// Connections the kernel completes and queues for the endpoint to accept. Larger than the
/// usual 128, so that a burst of connections between two turns of the endpoint does not leave
/// a prober's SYN unanswered (and retried a second later).
const BACKLOG: i32 = 1024;

/// Binds the endpoint; the caller reports a bind error (port in use) and exits.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As std's `TcpListener::bind`: a restarted gateway binds while old connections linger.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Serves requests until `stop` is set. Each connection gets one response and is closed.
pub fn serve(
    listener: TcpListener,
    source: Arc<dyn HealthSource>,
    stop: Arc<AtomicBool>,
    limits: Limits,
) {
    if let Err(e) = listener.set_nonblocking(true) {
        log::error!("health endpoint: {e}");
        return;
    }
    let mut server = Server {
        listener,
        source,
        limits,
        started: Instant::now(),
        connections: Slab::new(),
        dropped: DropCounts::default(),
        accept_paused_until: None,
        fds: Vec::new(),
        keys: Vec::new(),
    };
    while !stop.load(Ordering::Relaxed) {
        server.turn();
    }
}

/// The longest the thread waits in poll(2), so that the stop flag is seen a few times a second.
const STOP_CHECK: Duration = Duration::from_millis(250);
/// How long accepting stops after an accept error (out of file descriptors), so that the
/// thread neither spins on the listener nor stops serving the connections it holds.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Header lines parsed; a request with more is answered as one too large.
const MAX_HEADERS: usize = 32;
const TEXT: &str = "text/plain; charset=utf-8";

/// The endpoint's state, owned by its thread.
struct Server {
    listener: TcpListener,
    source: Arc<dyn HealthSource>,
    limits: Limits,
    started: Instant,
    connections: Slab<Connection>,
    dropped: DropCounts,
    /// Set after an accept error: the listener is not polled until then.
    accept_paused_until: Option<Instant>,
    /// The poll(2) set of a turn: the listener, then one entry per connection, whose slab key
    /// is at the same place in `keys`. Kept to reuse their allocations.
    fds: Vec<libc::pollfd>,
    keys: Vec<usize>,
}

/// One client connection: its request as it comes, then its response as it goes.
struct Connection {
    stream: TcpStream,
    /// When it is closed, served or not.
    deadline: Instant,
    /// The request read so far while [`Phase::Reading`], the response while [`Phase::Writing`].
    buf: Vec<u8>,
    phase: Phase,
}

enum Phase {
    /// The request head is not whole yet.
    Reading,
    /// `sent` bytes of the response are written.
    Writing { sent: usize },
}

/// Why the endpoint closed a connection without serving it: the `reason` label of
/// `meshgate_health_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dropped {
    /// Closed to make room for a new connection over [`Limits::max_connections`] (or, when every
    /// open connection was being answered, the new connection itself).
    MaxConnections,
    /// Its request head was longer than [`Limits::max_request`]; answered 431.
    RequestTooLarge,
    /// Still open at its deadline ([`Limits::request_timeout`]).
    Timeout,
}

impl Dropped {
    const ALL: [Dropped; 3] = [
        Dropped::MaxConnections,
        Dropped::RequestTooLarge,
        Dropped::Timeout,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Dropped::MaxConnections => "max_connections",
            Dropped::RequestTooLarge => "request_too_large",
            Dropped::Timeout => "timeout",
        }
    }
}

/// Connections dropped since start, by [`Dropped`].
#[derive(Debug, Default)]
struct DropCounts([u64; Dropped::ALL.len()]);

impl DropCounts {
    fn count(&mut self, reason: Dropped) {
        self.0[reason as usize] += 1;
        log::debug!(
            "health endpoint: dropped a connection ({})",
            reason.as_str()
        );
    }

    fn of(&self, reason: Dropped) -> u64 {
        self.0[reason as usize]
    }
}

impl Server {
    /// One turn: close the connections past their deadline, wait until a socket is ready or
    /// the next deadline comes, serve the ready connections, then accept the new ones.
    fn turn(&mut self) {
        let now = Instant::now();
        self.expire(now);
        let mut wait = STOP_CHECK;
        if let Some(until) = self.accept_paused_until {
            if now >= until {
                self.accept_paused_until = None;
            } else {
                wait = wait.min(until - now);
            }
        }
        self.fds.clear();
        self.keys.clear();
        self.fds.push(libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: if self.accept_paused_until.is_none() {
                libc::POLLIN
            } else {
                0
            },
            revents: 0,
        });
        for (key, connection) in &self.connections {
            let events = match connection.phase {
                Phase::Reading => libc::POLLIN,
                Phase::Writing { .. } => libc::POLLOUT,
            };
            self.fds.push(libc::pollfd {
                fd: connection.stream.as_raw_fd(),
                events,
                revents: 0,
            });
            self.keys.push(key);
            wait = wait.min(connection.deadline.saturating_duration_since(now));
        }
        // Rounded up: poll's timeout is in whole milliseconds, and a deadline less than one
        // away must not make a busy loop of polls that return at once.
        let timeout_ms = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        // SAFETY: `fds` is an array of `fds.len()` valid pollfds for the duration of the call.
        let ready = unsafe {
            libc::poll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
        if ready <= 0 {
            // Nothing ready, or a signal (EINTR): the next turn closes what is due.
            return;
        }
        // Connections first: accepting may close one to make room, and its slab key may then be
        // reused by a new connection.
        for i in 1..self.fds.len() {
            if self.fds[i].revents != 0 {
                self.drive(self.keys[i - 1]);
            }
        }
        if self.fds[0].revents != 0 {
            self.accept(Instant::now());
        }
    }

    /// Closes every connection whose deadline has come.
    fn expire(&mut self, now: Instant) {
        let dropped = &mut self.dropped;
        self.connections.retain(|_, connection| {
            let open = connection.deadline > now;
            if !open {
                dropped.count(Dropped::Timeout);
            }
            open
        });
    }

    /// Accepts the connections waiting, at most `max_connections` a turn so that a flood of
    /// them does not keep the thread from serving the ones it holds.
    fn accept(&mut self, now: Instant) {
        for _ in 0..self.limits.max_connections {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream, now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    log::warn!("health endpoint: accept failed, pausing accepts for 100 ms: {e}");
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
            }
        }
    }

    /// Holds a new connection. At `max_connections`, the new one takes the place of the oldest
    /// that has not sent a whole request (every connection has the same timeout, so the oldest
    /// is the one with the earliest deadline): a prober that comes after a crowd of idle
    /// connections is served, and the crowd cannot keep it out.
    fn admit(&mut self, stream: TcpStream, now: Instant) {
        if let Err(e) = stream.set_nonblocking(true) {
            log::debug!("health endpoint: {e}");
            return;
        }
        if self.connections.len() >= self.limits.max_connections {
            self.dropped.count(Dropped::MaxConnections);
            let oldest = self
                .connections
                .iter()
                .filter(|(_, c)| matches!(c.phase, Phase::Reading))
                .min_by_key(|(_, c)| c.deadline)
                .map(|(key, _)| key);
            match oldest {
                Some(key) => drop(self.connections.remove(key)),
                // Every connection held is being answered: the new one is closed instead.
                None => return,
            }
        }
        self.connections.insert(Connection {
            stream,
            deadline: now + self.limits.request_timeout,
            buf: Vec::new(),
            phase: Phase::Reading,
        });
    }

    /// Reads what a ready connection sent and answers once its request is whole, or writes
    /// what the socket takes of its response. Closes it once the response is written, or when
    /// its client left.
    fn drive(&mut self, key: usize) {
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        if let Phase::Reading = connection.phase {
            let Ok(closed) = connection.read(self.limits.max_request) else {
                self.connections.remove(key);
                return;
            };
            let response = match parse_request(&connection.buf, self.limits.max_request) {
                Request::Partial if closed => {
                    self.connections.remove(key);
                    return;
                }
                Request::Partial => return,
                Request::Complete { method, path } => {
                    let (status, content_type, body) =
                        route(method, path, &*self.source, self.started, &self.dropped);
                    response(status, content_type, &body, method != "HEAD")
                }
                Request::TooLarge => {
                    self.dropped.count(Dropped::RequestTooLarge);
                    response(
                        "431 Request Header Fields Too Large",
                        TEXT,
                        "Request header too large\n",
                        true,
                    )
                }
                Request::Malformed => response("400 Bad Request", TEXT, "Bad request\n", true),
            };
            connection.buf = response;
            connection.phase = Phase::Writing { sent: 0 };
        }
        match connection.write() {
            Ok(false) => {}
            Ok(true) | Err(_) => drop(self.connections.remove(key)),
        }
    }
}

impl Connection {
    /// Reads what the client sent, until the socket has nothing more or the request holds
    /// `max_request` bytes. Returns whether the client closed its side.
    fn read(&mut self, max_request: usize) -> std::io::Result<bool> {
        let mut chunk = [0u8; 1024];
        while self.buf.len() < max_request {
            let room = chunk.len().min(max_request - self.buf.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => return Ok(true),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Writes what the socket takes of the response. Returns whether all of it is written.
    fn write(&mut self) -> std::io::Result<bool> {
        let Phase::Writing { sent } = &mut self.phase else {
            return Ok(false);
        };
        while *sent < self.buf.len() {
            match self.stream.write(&self.buf[*sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => *sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// What the bytes read so far on a connection hold.
#[derive(Debug, PartialEq, Eq)]
enum Request<'a> {
    /// Not yet a whole request head: read more.
    Partial,
    /// A whole request head.
    Complete { method: &'a str, path: &'a str },
    /// No whole head within `max_request` bytes, or more header lines than are parsed.
    TooLarge,
    /// Not an HTTP/1.x request.
    Malformed,
}

/// Parses the request head at the start of `buf` (what follows it is ignored).
fn parse_request(buf: &[u8], max_request: usize) -> Request<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max_request => Request::Complete {
            method: request.method.unwrap_or_default(),
            path: request.path.unwrap_or_default(),
        },
        Ok(httparse::Status::Complete(_)) => Request::TooLarge,
        Ok(httparse::Status::Partial) if buf.len() >= max_request => Request::TooLarge,
        Ok(httparse::Status::Partial) => Request::Partial,
        Err(httparse::Error::TooManyHeaders) => Request::TooLarge,
        Err(_) => Request::Malformed,
    }
}

/// A whole response: its head and, unless `with_body` is false (HEAD), its body.
fn response(status: &str, content_type: &str, body: &str, with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if with_body {
        out.push_str(body);
    }
    out.into_bytes()
}

/// The status, content type and body for a request. `/metrics` waits for the shards' reports
/// (at most the 1 s [`HealthSource::reports`] allows a shard that does not answer).
fn route(
    method: &str,
    path: &str,
    source: &dyn HealthSource,
    started: Instant,
    dropped: &DropCounts,
) -> (&'static str, &'static str, String) {
    if method != "GET" && method != "HEAD" {
        return (
            "405 Method Not Allowed",
            TEXT,
            "Method not allowed\n".into(),
        );
    }
    let path = path.split('?').next().unwrap_or_default();
    match path {
        "/health" => {
            let (node_name, peers, known) = match source.node_name() {
                Some(name) => {
                    let reports = source.reports();
                    let known = known(&reports);
                    (json_str(name.as_bytes()), up_peers(&known), known.len())
                }
                None => ("null".into(), 0, 0),
            };
            let body = format!(
                "{{\"status\":\"healthy\",\"ready\":{},\"uptime\":{},\"shards\":{},\"node_name\":{node_name},\"peers\":{peers},\"known\":{known}}}",
                source.ready(),
                started.elapsed().as_secs(),
                source.shards()
            );
            ("200 OK", "application/json", body)
        }
        "/peers" => {
            let body = match source.node_name() {
                Some(_) => render_peers(&source.reports()),
                None => "[]".into(),
            };
            ("200 OK", "application/json", body)
        }
        "/ready" if source.ready() => ("200 OK", TEXT, "Ready".into()),
        "/ready" => ("503 Service Unavailable", TEXT, "Not ready".into()),
        "/live" => ("200 OK", TEXT, "Live".into()),
        "/metrics" => {
            let mut text = render(&source.reports(), resident_memory_bytes());
            render_dropped(&mut text, dropped);
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text)
        }
        _ => ("404 Not Found", TEXT, "Not found\n".into()),
    }
}

/// Appends `meshgate_health_dropped_total{reason}`, gateway-wide only: the endpoint belongs to
/// no shard.
fn render_dropped(out: &mut String, dropped: &DropCounts) {
    const NAME: &str = "meshgate_health_dropped_total";
    let _ = writeln!(
        out,
        "# HELP {NAME} Health endpoint connections closed at a limit, by reason."
    );
    let _ = writeln!(out, "# TYPE {NAME} counter");
    for reason in Dropped::ALL {
        let _ = writeln!(
            out,
            "{NAME}{{reason=\"{}\"}} {}",
            reason.as_str(),
            dropped.of(reason)
        );
    }
}

/// The process's resident memory, from `/proc/self/statm`.
pub fn resident_memory_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// A figure of one shard's report.
type Field = fn(&ShardReport) -> u64;

/// A labelled counter: its name, its help and one figure per label.
type Family = (&'static str, &'static str, Vec<(String, Getter)>);

/// Gauges with one series gateway-wide and one per shard, in the order rendered.
const GAUGES: [(&str, &str, Field); 6] = [
    ("meshgate_clients", "Sessions past CONNECT.", |r| {
        r.metrics.clients
    }),
    (
        "meshgate_handshakes",
        "Connections in the handshake or waiting for CONNECT.",
        |r| r.handshakes,
    ),
    ("meshgate_subscriptions", "Session-pattern pairs.", |r| {
        r.metrics.subscriptions
    }),
    ("meshgate_registrations", "Session-procedure pairs.", |r| {
        r.metrics.registrations
    }),
    ("meshgate_pending_calls", "Calls in flight.", |r| {
        r.metrics.pending_calls
    }),
    ("meshgate_output_bytes", "Bytes queued to sessions.", |r| {
        r.metrics.output_bytes
    }),
];

/// Counters without labels, in the order rendered.
const COUNTERS: [(&str, &str, Field); 11] = [
    (
        "meshgate_registrations_expired_total",
        "Registrations removed by expiry.",
        |r| r.metrics.counters.registrations_expired,
    ),
    (
        "meshgate_late_replies_total",
        "REPLYs for calls no longer pending.",
        |r| r.metrics.counters.late_replies,
    ),
    (
        "meshgate_publishes_total",
        "PUBLISH frames accepted.",
        |r| r.metrics.counters.publishes,
    ),
    (
        "meshgate_deliveries_total",
        "PUBLISH frames delivered to subscribers.",
        |r| r.metrics.counters.deliveries,
    ),
    (
        "meshgate_peers_evicted_total",
        "Mesh peer connections evicted.",
        |r| r.metrics.counters.peers_evicted,
    ),
    (
        "meshgate_handshakes_refused_total",
        "Connections refused at the QUIC level.",
        |r| r.refused_handshakes,
    ),
    (
        "meshgate_shard_messages_total",
        "Messages sent between shards.",
        |r| r.metrics.counters.shard_messages_out,
    ),
    (
        "meshgate_udp_datagrams_received_total",
        "UDP datagrams read from the shards' sockets.",
        |r| r.io.datagrams_received,
    ),
    (
        "meshgate_udp_datagrams_sent_total",
        "UDP datagrams sent, each segment of a GSO message counted.",
        |r| r.io.datagrams_sent,
    ),
    (
        "meshgate_udp_datagrams_forwarded_total",
        "UDP datagrams a shard received for a connection of another shard and passed to it \
         (the kernel's steering by connection ID leaves none).",
        |r| r.io.datagrams_forwarded,
    ),
    (
        "meshgate_shard_turns_total",
        "Turns of the shards' loops (each reads the socket, handles timers and sends).",
        |r| r.io.turns,
    ),
];

/// The Prometheus text of every shard's report: each series gateway-wide and per shard.
pub fn render(reports: &[ShardReport], resident: u64) -> String {
    let mut out = String::with_capacity(8192);
    for (name, help, f) in GAUGES {
        series(&mut out, name, help, "gauge", reports, &[("", &f)]);
    }
    peers_gauge(&mut out, reports);
    let refusals = [
        Reason::RealmMismatch,
        Reason::Unauthorized,
        Reason::MaxClientsReached,
    ];
    let families: [Family; 5] = [
        (
            "meshgate_clients_refused_total",
            "Clients refused admission.",
            by_label(
                "reason",
                refusals.map(|x| {
                    (x.as_str(), move |r: &ShardReport| {
                        r.metrics.counters.refused_of(x)
                    })
                }),
            ),
        ),
        (
            "meshgate_sessions_closed_total",
            "Sessions ended, by reason.",
            by_label(
                "reason",
                Reason::ALL.map(|x| {
                    (x.as_str(), move |r: &ShardReport| {
                        r.metrics.counters.sessions_closed[reason_index(x)]
                    })
                }),
            ),
        ),
        (
            "meshgate_calls_total",
            "Calls ended, by outcome.",
            by_label(
                "outcome",
                CallOutcome::ALL.map(|x| {
                    (x.as_str(), move |r: &ShardReport| {
                        r.metrics.counters.calls_of(x)
                    })
                }),
            ),
        ),
        (
            "meshgate_dropped_total",
            "Messages not delivered, by reason.",
            by_label(
                "reason",
                DropReason::ALL.map(|x| {
                    (x.as_str(), move |r: &ShardReport| {
                        r.metrics.counters.dropped_of(x)
                    })
                }),
            ),
        ),
        (
            "meshgate_peer_links_total",
            "Peer links ended, by result, and links that came up.",
            by_label(
                "result",
                LinkResult::ALL.map(|x| {
                    (x.as_str(), move |r: &ShardReport| {
                        r.metrics.counters.link_results_of(x)
                    })
                }),
            ),
        ),
    ];
    for (name, help, labels) in &families {
        let refs: Vec<(&str, &Figure<'_>)> =
            labels.iter().map(|(l, f)| (l.as_str(), &**f)).collect();
        series(&mut out, name, help, "counter", reports, &refs);
    }
    for (name, help, f) in COUNTERS {
        series(&mut out, name, help, "counter", reports, &[("", &f)]);
    }
    cpu_seconds(&mut out, reports);
    render_peer_metrics(&mut out, reports);
    for (name, help, value) in [
        (
            "meshgate_resident_memory_bytes",
            "Resident memory of the gateway process.",
            resident,
        ),
        ("meshgate_shards", "Shards reporting.", reports.len() as u64),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    out
}

/// A gateway of the mesh that this one knows (PROTOCOL.md 9.4): a member, or an address it
/// dials whose gateway is not a member.
struct Known<'a> {
    name: Option<&'a [u8]>,
    addr: Option<&'a [u8]>,
    /// `connecting`, `syncing`, `up` or `backoff`.
    state: &'static str,
    dialed: bool,
    /// The link to it, if there is one.
    link: Option<&'a LinkReport>,
}

/// The gateways the mesh knows, from the shards' reports: shard 0's members with their
/// admitted links, then the addresses it dials that no member was found at.
fn known(reports: &[ShardReport]) -> Vec<Known<'_>> {
    let Some(table) = reports.iter().find_map(|r| r.peer_table.as_ref()) else {
        return Vec::new();
    };
    let links: Vec<&LinkReport> = reports.iter().flat_map(|r| &r.links).collect();
    // Of several links (one closing, one in its handshake), the admitted one, else any open.
    let best = |matches: &dyn Fn(&LinkReport) -> bool| {
        let of = || links.iter().copied().filter(|l| matches(l));
        of().find(|l| l.state.is_admitted())
            .or_else(|| of().find(|l| l.state != LinkState::Closing))
    };
    let mut known = Vec::new();
    for name in &table.members {
        let link = best(&|l| l.node_name.as_deref() == Some(&**name));
        known.push(Known {
            name: Some(name),
            addr: link.and_then(|l| l.addr.as_deref()),
            state: link.map_or("connecting", |l| state_name(l.state)),
            dialed: link.is_some_and(|l| l.dialed.is_some()),
            link,
        });
    }
    for dial in &table.dials {
        let member = dial
            .node_name
            .as_ref()
            .is_some_and(|n| table.members.contains(n));
        if member {
            continue;
        }
        let link = best(&|l| l.dialed.as_deref() == Some(&*dial.addr));
        known.push(Known {
            name: dial
                .node_name
                .as_deref()
                .or_else(|| link.and_then(|l| l.node_name.as_deref())),
            addr: Some(dial.addr.as_bytes()),
            state: if dial.next_at.is_some() {
                "backoff"
            } else {
                link.map_or("connecting", |l| state_name(l.state))
            },
            dialed: true,
            link,
        });
    }
    known
}

/// A link's state as `/peers` names it: a closing link's gateway is being dialed again, or
/// will be.
fn state_name(state: LinkState) -> &'static str {
    match state {
        LinkState::Closing => "connecting",
        s => s.as_str(),
    }
}

/// `/peers`: one JSON object per known gateway.
fn render_peers(reports: &[ShardReport]) -> String {
    let offset = reports.first().map_or(0, |r| r.wall_clock_offset_ms);
    let mut out = String::from("[");
    for (i, k) in known(reports).iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let opt_str = |v: Option<&[u8]>| v.map_or_else(|| "null".into(), json_str);
        let opt_num = |v: Option<u64>| v.map_or_else(|| "null".into(), |n| n.to_string());
        let link = k.link;
        let node_id = link.and_then(|l| l.node_id).map(|id| {
            let hex: String = id.0.iter().map(|b| format!("{b:02x}")).collect();
            json_str(hex.as_bytes())
        });
        let since = link.map(|l| {
            let ms = (l.since.as_millis() as i64).saturating_add(offset).max(0);
            ms as u64 / 1000
        });
        let realms = |names: Option<&Vec<Box<[u8]>>>| {
            let names: Vec<String> = names.into_iter().flatten().map(|n| json_str(n)).collect();
            format!("[{}]", names.join(","))
        };
        let _ = write!(
            out,
            "{{\"node_name\":{},\"node_id\":{},\"addr\":{},\"state\":\"{}\",\"dialed\":{},\"since\":{},\"rtt_ms\":{},\"patterns\":{},\"procedures\":{},\"shared_realms\":{},\"unshared_realms\":{}}}",
            opt_str(k.name),
            node_id.unwrap_or_else(|| "null".into()),
            opt_str(k.addr),
            k.state,
            k.dialed,
            opt_num(since),
            opt_num(link.and_then(|l| l.rtt_ms)),
            link.map_or(0, |l| l.patterns),
            link.map_or(0, |l| l.procedures),
            realms(link.map(|l| &l.shared_realms)),
            realms(link.map(|l| &l.unshared_realms)),
        );
    }
    out.push(']');
    out
}

/// The per-peer metrics of 9.11, label `peer` (the peer's node_name), gateway-wide: one series
/// per known gateway with a name, its figures those of its admitted link.
fn render_peer_metrics(out: &mut String, reports: &[ShardReport]) {
    let known = known(reports);
    let named: Vec<(String, Option<&LinkReport>)> = known
        .iter()
        .filter_map(|k| {
            Some((
                label_value(k.name?),
                k.link.filter(|l| l.state.is_admitted()),
            ))
        })
        .collect();
    let head = |out: &mut String, name: &str, help: &str, kind: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    head(
        out,
        "meshgate_peer_up",
        "Whether the link to a known gateway is up.",
        "gauge",
    );
    for (peer, link) in &named {
        let up = link.is_some_and(|l| l.state == LinkState::Up);
        let _ = writeln!(out, "meshgate_peer_up{{peer=\"{peer}\"}} {}", u8::from(up));
    }
    // Counters, per peer over every link to it (they only grow when a link is replaced).
    let totals = peer_totals(reports);
    for (name, help, sent) in [
        (
            "meshgate_peer_frames_sent_total",
            "Frames sent on a peer link, by type.",
            true,
        ),
        (
            "meshgate_peer_frames_received_total",
            "Frames received on a peer link, by type.",
            false,
        ),
    ] {
        head(out, name, help, "counter");
        for (peer, c) in &totals {
            let counts = if sent {
                &c.frames_sent
            } else {
                &c.frames_received
            };
            for (ty, n) in LINK_FRAMES.iter().zip(counts) {
                let _ = writeln!(out, "{name}{{peer=\"{peer}\",type=\"{}\"}} {n}", ty.name());
            }
        }
    }
    type Total = fn(&LinkCounters) -> u64;
    let counters: [(&str, &str, Total); 3] = [
        (
            "meshgate_peer_bytes_sent_total",
            "Bytes sent on a peer link.",
            |c| c.bytes_sent,
        ),
        (
            "meshgate_peer_bytes_received_total",
            "Bytes received on a peer link.",
            |c| c.bytes_received,
        ),
        (
            "meshgate_peer_resyncs_total",
            "Interest snapshots asked of a peer after a digest mismatch.",
            |c| c.resyncs,
        ),
    ];
    for (name, help, figure) in counters {
        head(out, name, help, "counter");
        for (peer, c) in &totals {
            let _ = writeln!(out, "{name}{{peer=\"{peer}\"}} {}", figure(c));
        }
    }
    type LinkFigure = fn(&LinkReport) -> String;
    let gauges: [(&str, &str, LinkFigure); 4] = [
        (
            "meshgate_peer_rtt_seconds",
            "Round-trip time of a peer link, from its PING and PONG.",
            |l| (l.rtt_ms.unwrap_or(0) as f64 / 1000.0).to_string(),
        ),
        (
            "meshgate_peer_output_bytes",
            "Bytes queued to a peer's data stream.",
            |l| l.output_bytes.to_string(),
        ),
        (
            "meshgate_peer_remote_patterns",
            "Patterns in a peer's interest tables, all realms.",
            |l| l.patterns.to_string(),
        ),
        (
            "meshgate_peer_remote_procedures",
            "Procedures in a peer's interest tables, all realms.",
            |l| l.procedures.to_string(),
        ),
    ];
    let admitted = || {
        named
            .iter()
            .filter_map(|(peer, link)| Some((peer, (*link)?)))
    };
    for (name, help, figure) in gauges {
        head(out, name, help, "gauge");
        for (peer, l) in admitted() {
            let _ = writeln!(out, "{name}{{peer=\"{peer}\"}} {}", figure(l));
        }
    }
    const PENDING: &str = "meshgate_peer_pending_calls";
    head(
        out,
        PENDING,
        "Calls in flight on a peer link: forwarded on it (out), received on it (in).",
        "gauge",
    );
    for (peer, l) in admitted() {
        for (direction, n) in [("out", l.calls_out), ("in", l.calls_in)] {
            let _ = writeln!(
                out,
                "{PENDING}{{peer=\"{peer}\",direction=\"{direction}\"}} {n}"
            );
        }
    }
}

/// Per peer (label value), what every shard's links to it carried, ended links included,
/// ordered by name.
fn peer_totals(reports: &[ShardReport]) -> Vec<(String, LinkCounters)> {
    let mut totals: std::collections::BTreeMap<String, LinkCounters> = Default::default();
    for (name, counts) in reports.iter().flat_map(|r| &r.peer_counters) {
        totals.entry(label_value(name)).or_default().add(counts);
    }
    totals.into_iter().collect()
}

/// Bytes as a JSON string (lossy UTF-8, escaped).
fn json_str(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Bytes as a Prometheus label value (lossy UTF-8, escaped).
fn label_value(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One series per label value: `key="value"` and its figure.
fn by_label<F: Fn(&ShardReport) -> u64 + 'static, const N: usize>(
    key: &str,
    values: [(&str, F); N],
) -> Vec<(String, Getter)> {
    values
        .into_iter()
        .map(|(value, f)| (format!("{key}=\"{value}\""), Box::new(f) as Getter))
        .collect()
}

/// `meshgate_peers`: up links. Gateway-wide, the members of shard 0's peer table whose link is
/// up: the shards answer at slightly different moments, and a sum of their own counts could
/// show an evicted link and its successor both up; the table never holds more than
/// `--max-peers`. Per shard, the shard's own up links.
fn peers_gauge(out: &mut String, reports: &[ShardReport]) {
    let name = "meshgate_peers";
    let _ = writeln!(out, "# HELP {name} Peer links that are up.");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {}", up_peers(&known(reports)));
    for r in reports {
        let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", r.shard, r.peers);
    }
}

/// Known gateways whose link is up.
fn up_peers(known: &[Known<'_>]) -> u64 {
    known.iter().filter(|k| k.state == "up").count() as u64
}

/// Reads a time off a shard's report.
type Seconds = fn(&ShardReport) -> Duration;

/// The shards' CPU time, gateway-wide and per shard, in seconds: how evenly the shards share
/// the work, and how busy each core is, without reading `/proc` per thread; and the part of it
/// spent polling while idle.
fn cpu_seconds(out: &mut String, reports: &[ShardReport]) {
    let figures: [(&str, &str, Seconds); 2] = [
        (
            "meshgate_shard_cpu_seconds_total",
            "CPU time of the shards' threads (user and system).",
            |r| r.cpu_time,
        ),
        (
            "meshgate_shard_spin_seconds_total",
            "Time the shards' threads spent polling while idle, before sleeping (--spin): part \
             of their CPU time that handled nothing.",
            |r| r.io.spun,
        ),
    ];
    for (name, help, f) in figures {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let total: Duration = reports.iter().map(f).sum();
        let _ = writeln!(out, "{name} {:.6}", total.as_secs_f64());
        for r in reports {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{}\"}} {:.6}",
                r.shard,
                f(r).as_secs_f64()
            );
        }
    }
}

fn series(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    reports: &[ShardReport],
    labels: &[(&str, &Figure<'_>)],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (label, f) in labels {
        let total: u64 = reports.iter().map(f).sum();
        if label.is_empty() {
            let _ = writeln!(out, "{name} {total}");
        } else {
            let _ = writeln!(out, "{name}{{{label}}} {total}");
        }
        for r in reports {
            let sep = if label.is_empty() { "" } else { "," };
            let _ = writeln!(out, "{name}{{{label}{sep}shard=\"{}\"}} {}", r.shard, f(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_rendered_gateway_wide_and_per_shard() {
        let mut a = ShardReport {
            shard: 0,
            ..Default::default()
        };
        a.metrics.clients = 3;
        a.metrics.counters.refused(Reason::MaxClientsReached);
        let mut b = ShardReport {
            shard: 1,
            ..Default::default()
        };
        b.metrics.clients = 4;
        b.cpu_time = Duration::from_micros(2_500_001);
        b.io.spun = Duration::from_micros(1_250_000);
        let text = render(&[a, b], 1234);
        assert!(text.contains("\nmeshgate_shard_cpu_seconds_total 2.500001\n"));
        assert!(text.contains("\nmeshgate_shard_cpu_seconds_total{shard=\"0\"} 0.000000\n"));
        assert!(text.contains("\nmeshgate_shard_cpu_seconds_total{shard=\"1\"} 2.500001\n"));
        assert!(text.contains("\nmeshgate_shard_spin_seconds_total 1.250000\n"));
        assert!(text.contains("\nmeshgate_shard_spin_seconds_total{shard=\"0\"} 0.000000\n"));
        assert!(text.contains("\nmeshgate_clients 7\n"));
        assert!(text.contains("\nmeshgate_clients{shard=\"0\"} 3\n"));
        assert!(text.contains("\nmeshgate_clients{shard=\"1\"} 4\n"));
        assert!(text.contains("meshgate_clients_refused_total{reason=\"max_clients_reached\"} 1\n"));
        assert!(text.contains(
            "meshgate_clients_refused_total{reason=\"max_clients_reached\",shard=\"0\"} 1\n"
        ));
        assert!(text.contains("meshgate_calls_total{outcome=\"caller_gone\"} 0\n"));
        assert!(text.contains("meshgate_resident_memory_bytes 1234\n"));
        for name in meshgate_shard::metrics::PROTOCOL_METRICS {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }

    fn link(name: &str, state: LinkState, dialed: Option<&str>) -> LinkReport {
        use meshgate_shard::mesh::counters::LinkCounters;
        LinkReport {
            node_name: Some(name.as_bytes().into()),
            node_id: Some(meshgate_shard::NodeId([0xab; 32])),
            addr: Some(b"10.0.0.2:9443"[..].into()),
            dialed: dialed.map(Into::into),
            state,
            since: meshgate_shard::Time::from_millis(2_500),
            rtt_ms: Some(12),
            patterns: 3,
            procedures: 1,
            shared_realms: vec![b"macula.default"[..].into()],
            unshared_realms: vec![b"secure"[..].into()],
            counters: LinkCounters::default(),
            output_bytes: 100,
            calls_out: 2,
            calls_in: 1,
        }
    }

    /// Shard 0 with member `gw-b` (linked from shard 1, up) and two dialed addresses: the one
    /// where `gw-b` was found, and one in backoff with no name yet.
    fn meshed() -> Vec<ShardReport> {
        use meshgate_shard::{DialReport, Time};
        let table = PeerTableReport {
            members: vec![b"gw-b"[..].into()],
            dials: vec![
                DialReport {
                    addr: "10.0.0.2:9443".into(),
                    node_name: Some(b"gw-b"[..].into()),
                    next_at: None,
                },
                DialReport {
                    addr: "10.0.0.9:9443".into(),
                    node_name: None,
                    next_at: Some(Time::from_millis(9_000)),
                },
            ],
        };
        let mut up = link("gw-b", LinkState::Up, Some("10.0.0.2:9443"));
        up.counters
            .sent(meshgate_shard::wire::FrameType::Publish, 40);
        up.counters.resyncs = 2;
        let closing = link("gw-b", LinkState::Closing, None);
        // An earlier link to gw-b, on shard 0, ended after one PUBLISH.
        let mut ended = meshgate_shard::mesh::counters::LinkCounters::default();
        ended.sent(meshgate_shard::wire::FrameType::Publish, 10);
        vec![
            ShardReport {
                shard: 0,
                peer_table: Some(table),
                links: vec![closing],
                peer_counters: vec![(b"gw-b".as_slice().into(), ended)],
                wall_clock_offset_ms: 1_000_000,
                ..Default::default()
            },
            ShardReport {
                shard: 1,
                peers: 1,
                peer_counters: vec![(b"gw-b".as_slice().into(), up.counters.clone())],
                links: vec![up],
                wall_clock_offset_ms: 1_000_000,
                ..Default::default()
            },
        ]
    }

    #[test]
    fn peers_lists_members_by_their_admitted_link_and_dialed_addresses_where_none_is() {
        let reports = meshed();
        assert_eq!(known(&reports).len(), 2);
        let body = render_peers(&reports);
        let id = "ab".repeat(32);
        assert_eq!(
            body,
            format!(
                "[{{\"node_name\":\"gw-b\",\"node_id\":\"{id}\",\"addr\":\"10.0.0.2:9443\",\"state\":\"up\",\"dialed\":true,\"since\":1002,\"rtt_ms\":12,\"patterns\":3,\"procedures\":1,\"shared_realms\":[\"macula.default\"],\"unshared_realms\":[\"secure\"]}},\
                 {{\"node_name\":null,\"node_id\":null,\"addr\":\"10.0.0.9:9443\",\"state\":\"backoff\",\"dialed\":true,\"since\":null,\"rtt_ms\":null,\"patterns\":0,\"procedures\":0,\"shared_realms\":[],\"unshared_realms\":[]}}]"
            )
        );
        assert_eq!(render_peers(&[ShardReport::default()]), "[]", "no mesh");
    }

    #[test]
    fn peer_metrics_are_labelled_by_peer_gauges_from_the_admitted_link_counters_over_every_link() {
        let text = render(&meshed(), 0);
        for line in [
            "meshgate_peers 1\n",
            "meshgate_peer_up{peer=\"gw-b\"} 1\n",
            "meshgate_peer_frames_sent_total{peer=\"gw-b\",type=\"PUBLISH\"} 2\n",
            "meshgate_peer_frames_received_total{peer=\"gw-b\",type=\"PEER_HELLO\"} 0\n",
            "meshgate_peer_bytes_sent_total{peer=\"gw-b\"} 50\n",
            "meshgate_peer_rtt_seconds{peer=\"gw-b\"} 0.012\n",
            "meshgate_peer_output_bytes{peer=\"gw-b\"} 100\n",
            "meshgate_peer_remote_patterns{peer=\"gw-b\"} 3\n",
            "meshgate_peer_remote_procedures{peer=\"gw-b\"} 1\n",
            "meshgate_peer_resyncs_total{peer=\"gw-b\"} 2\n",
            "meshgate_peer_pending_calls{peer=\"gw-b\",direction=\"out\"} 2\n",
            "meshgate_peer_pending_calls{peer=\"gw-b\",direction=\"in\"} 1\n",
            "meshgate_peer_links_total{result=\"dial_failed\"} 0\n",
            "meshgate_dropped_total{reason=\"peer_slow\"} 0\n",
            "meshgate_dropped_total{reason=\"no_interest\"} 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
        assert_eq!(
            text.matches("meshgate_peer_up{").count(),
            1,
            "the unnamed address has no series"
        );
    }

    #[test]
    fn names_from_peers_are_escaped_in_json_and_labels() {
        assert_eq!(json_str(b"a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert_eq!(label_value(b"a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }

    #[test]
    fn a_whole_request_head_gives_its_method_and_path() {
        let head = b"GET /health?verbose HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_request(head, 8192),
            Request::Complete {
                method: "GET",
                path: "/health?verbose"
            }
        );
        assert_eq!(
            parse_request(b"HEAD /live HTTP/1.0\r\n\r\ntrailing bytes", 8192),
            Request::Complete {
                method: "HEAD",
                path: "/live"
            }
        );
    }

    #[test]
    fn a_request_head_cut_short_asks_for_more_until_the_bound() {
        let head = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        for len in 0..head.len() {
            assert_eq!(parse_request(&head[..len], 8192), Request::Partial, "{len}");
        }
        assert_eq!(parse_request(&head[..20], 20), Request::TooLarge);
        assert_eq!(parse_request(head, head.len() - 1), Request::TooLarge);
    }

    #[test]
    fn too_many_header_lines_are_too_large_and_garbage_is_malformed() {
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&head, 8192), Request::TooLarge);
        assert_eq!(
            parse_request(b"\x16\x03\x01\x02\x00", 8192),
            Request::Malformed
        );
        assert_eq!(parse_request(b"GET /\r\n\r\n", 8192), Request::Malformed);
    }

    #[test]
    fn responses_keep_their_head_and_drop_the_body_for_head() {
        assert_eq!(
            response("200 OK", TEXT, "Live", true),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 4\r\nConnection: close\r\n\r\nLive"
        );
        assert!(response("200 OK", TEXT, "Live", false)
            .ends_with(b"Content-Length: 4\r\nConnection: close\r\n\r\n"));
    }

    #[test]
    fn drops_are_rendered_by_reason() {
        let mut dropped = DropCounts::default();
        dropped.count(Dropped::Timeout);
        dropped.count(Dropped::Timeout);
        dropped.count(Dropped::MaxConnections);
        let mut text = String::new();
        render_dropped(&mut text, &dropped);
        assert!(text.contains("# TYPE meshgate_health_dropped_total counter\n"));
        assert!(text.contains("meshgate_health_dropped_total{reason=\"max_connections\"} 1\n"));
        assert!(text.contains("meshgate_health_dropped_total{reason=\"request_too_large\"} 0\n"));
        assert!(text.contains("meshgate_health_dropped_total{reason=\"timeout\"} 2\n"));
    }

    #[test]
    fn resident_memory_is_read_from_proc() {
        assert!(resident_memory_bytes() > 0);
    }
}
