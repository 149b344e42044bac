//! The lean load engine: many sessions on one thread, one UDP socket and quiche, with no task,
//! channel or allocation per message, so that the load generator costs less per call than the
//! gateway it measures.
//!
//! One turn: wait for the socket (or the earliest QUIC timer, or the caller's deadline), read
//! every waiting datagram in batches (`recvmmsg`, GRO), hand each connection's packets to
//! quiche, read each session's control stream and hand its frames to the scenario, which
//! answers by appending frames to the session's output; then write each session's output to
//! its stream in one piece, and send each connection's packets, equal-sized runs of them as one
//! GSO datagram. A session's frames of one turn therefore share packets, as the gateway's do.
//!
//! An idle turn polls the socket for a while (`--spin`) before it sleeps, so that while the
//! load flows the engine neither sleeps nor makes the gateway wake it.
//!
//! Sessions are told apart by the connection id the engine gives each: its first four bytes
//! are the session's index.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use meshgate_client::random_node_id;
use meshgate_protocol::wire::{Connect, FrameReader, Message, Ping, Pong, Reason};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};

/// The ALPN of the Macula v0 gateway protocol, in quiche's wire form.
pub const ALPN: &[u8] = b"\x06macula";
/// Length of the connection ids the engine gives its connections.
const CID_LEN: usize = 16;
/// The largest UDP payload sent without path MTU discovery unless told otherwise, as the
/// gateway's default.
pub const MAX_UDP_PAYLOAD: usize = 1350;
/// The largest UDP payload the sessions probe for by default, as the gateway's `--pmtud-max`.
pub const PMTUD_MAX: usize = 8952;
/// QUIC's smallest datagram, which every path carries: the packets of a session with path MTU
/// discovery until a probe proves more.
const MIN_UDP_PAYLOAD: usize = 1200;
/// Probes of one size sent before that size is taken to be too large (as the gateway).
const PMTUD_PROBES: u8 = 3;
/// Bytes of one GSO datagram at most: its segments must fit in one UDP datagram.
const GSO_MAX_BYTES: usize = 65_000;
/// Bytes per receive slot: room for a GRO batch of full-size datagrams.
const RX_SLOT: usize = 64 * 1024;
/// The send buffer: one GSO datagram's worth, and room for the largest single packet.
const TX_BYTES: usize = 64 * 1024;
/// The control stream: the first bidirectional stream a client opens.
const CONTROL: u64 = 0;
/// How long an ACK may wait for output to carry it (the gateway allows 25 ms).
const ACK_DELAY: Duration = Duration::from_millis(2);
/// Received packets after which a connection acknowledges at once.
const ACK_EVERY: u8 = 2;
/// Frames from the gateway may exceed the client's `max_frame` by what the gateway adds.
const MAX_FRAME: u32 = 1 << 20;

/// How sessions reach the gateway and trust its certificate.
pub struct Target<'a> {
    pub server: SocketAddr,
    pub server_name: &'a str,
    pub insecure: bool,
    pub ca: Option<&'a Path>,
    pub realm: &'a str,
    pub token: Option<&'a str>,
    /// The largest UDP payload the sessions send without path MTU discovery.
    pub max_udp_payload: usize,
    /// The largest UDP payload the sessions probe for; 0: no path MTU discovery.
    pub pmtud_max: usize,
}

impl<'a> Target<'a> {
    /// `server`, reached with the connection flags of the command line.
    pub fn new(c: &'a crate::args::Connection, server: SocketAddr) -> Target<'a> {
        Target {
            server,
            server_name: &c.server_name,
            insecure: c.insecure,
            ca: c.ca.as_deref(),
            realm: &c.realm,
            token: c.token.as_deref(),
            max_udp_payload: MAX_UDP_PAYLOAD,
            pmtud_max: PMTUD_MAX,
        }
    }
}

/// The datagram size of the engine's sessions: a flag of the scenarios that run on it.
#[derive(clap::Args, Debug, Clone)]
pub struct Datagrams {
    /// The largest UDP payload the lean engine's sessions send with path MTU discovery off
    /// (as the gateway's --max-udp-payload; what a connection carries is the smaller of the
    /// two sides'). They take datagrams of up to this or --pmtud-max, whichever is larger.
    #[arg(long, value_name = "BYTES", default_value_t = MAX_UDP_PAYLOAD as u16,
          value_parser = clap::value_parser!(u16).range(1200..=16383))]
    pub max_udp_payload: u16,
    /// The largest UDP payload the lean engine's sessions probe for (path MTU discovery, as
    /// the gateway's --pmtud-max), or 0 for none.
    #[arg(long, value_name = "BYTES", default_value_t = PMTUD_MAX as u16,
          value_parser = crate::args::parse_pmtud_max)]
    pub pmtud_max: u16,
}

impl Datagrams {
    /// `server`, reached with the connection flags of the command line and this datagram size.
    pub fn target<'a>(&self, c: &'a crate::args::Connection, server: SocketAddr) -> Target<'a> {
        Target {
            max_udp_payload: self.max_udp_payload.into(),
            pmtud_max: self.pmtud_max.into(),
            ..Target::new(c, server)
        }
    }
}

/// How the engine waits for datagrams: a flag of the scenarios that run on it.
#[derive(clap::Args, Debug, Clone)]
pub struct Spin {
    /// How long the lean engine polls its socket for datagrams before it sleeps (0s: it
    /// sleeps at once). A sleeping engine must be woken for the next datagram, and the
    /// gateway's send pays for the wake-up: polling keeps both out of the measurement while
    /// the load flows. The time spent polling is reported apart (load_cpu_spinning) and left
    /// out of the load generator's CPU per call.
    #[arg(long, value_name = "DURATION", default_value = "200us",
          value_parser = crate::args::parse_duration)]
    pub spin: Duration,
}

/// A session's state as the engine sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The QUIC handshake, then CONNECT waiting for the gateway's PONG.
    Connecting,
    Up,
    /// The gateway's DISCONNECT, or the connection closed.
    Over,
}

/// One session: its connection, the frames read from it and the frames it has yet to send.
pub struct Session {
    quic: quiche::Connection,
    reader: FrameReader,
    /// Frames not yet taken by the control stream.
    out: Vec<u8>,
    /// How much of `out` the stream has taken.
    written: usize,
    phase: Phase,
    /// Why the session ended, when the gateway said.
    ended: Option<String>,
    /// Packets received since the connection last sent, and when their ACK is due at the
    /// latest: an ACK waits for output to carry it, as in any QUIC stack that delays them.
    unacked: u8,
    ack_by: Option<Instant>,
    /// The connection has something to send this turn beyond a delayed ACK.
    send_now: bool,
}

impl Session {
    /// Whether the gateway admitted the session (answered its CONNECT) and it is not over.
    pub fn is_up(&self) -> bool {
        self.phase == Phase::Up
    }

    /// Why the session is over, or `None` while it is not.
    pub fn ended(&self) -> Option<&str> {
        match self.phase {
            Phase::Over => Some(self.ended.as_deref().unwrap_or("connection_closed")),
            _ => None,
        }
    }

    /// Frames waiting to be sent, in bytes.
    pub fn queued(&self) -> usize {
        self.out.len() - self.written
    }

    /// Queues a message; it goes out at the end of the turn.
    pub fn send(&mut self, msg: &Message<'_>) {
        self.out().send(msg);
    }

    /// Queues bytes on a stream opened raw.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// The session's output.
    pub fn out(&mut self) -> Out<'_> {
        Out(&mut self.out)
    }
}

/// A session's output, as a scenario sees it while it handles one of the session's frames.
pub struct Out<'a>(&'a mut Vec<u8>);

impl Out<'_> {
    /// Queues a message; it goes out at the end of the turn.
    pub fn send(&mut self, msg: &Message<'_>) {
        msg.encode(self.0);
    }
}

/// A UDP socket for quiche connections, with its batches: `recvmmsg` with GRO in, runs of
/// equal-sized packets as one GSO datagram out.
pub struct Udp {
    socket: UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
    rx: Box<[u8]>,
    meta: Vec<RecvMeta>,
    /// One GSO datagram's segments, written in place: never cleared nor zeroed between them.
    tx: Box<[u8]>,
    /// The largest datagram received so far, in bytes.
    largest_received: usize,
    /// The largest UDP payload a connection that fills its packets probes for; 0: none.
    pmtud_max: usize,
}

impl Udp {
    /// A socket bound to `addr`.
    pub fn bind(addr: SocketAddr) -> Result<Udp, String> {
        let socket = UdpSocket::bind(addr).map_err(|e| format!("cannot bind UDP {addr}: {e}"))?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))
            .map_err(|e| format!("cannot set up the UDP socket: {e}"))?;
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), 4 << 20);
        let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), 4 << 20);
        let local = socket
            .local_addr()
            .map_err(|e| format!("the UDP socket has no address: {e}"))?;
        Ok(Udp {
            local,
            rx: vec![0u8; RX_SLOT * BATCH_SIZE].into_boxed_slice(),
            meta: vec![RecvMeta::default(); BATCH_SIZE],
            largest_received: 0,
            pmtud_max: 0,
            tx: vec![0u8; TX_BYTES].into_boxed_slice(),
            socket,
            state,
        })
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Waits until the socket is readable or `at` passes (`None`: a second at most), to the
    /// microsecond.
    pub fn wait(&self, at: Option<Instant>) {
        let d = at.map_or(Duration::from_secs(1), |at| {
            at.saturating_duration_since(Instant::now())
        });
        let timeout = libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
        };
        let mut fd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd and a valid timespec for the duration of the call.
        unsafe { libc::ppoll(&mut fd, 1, &timeout, std::ptr::null()) };
    }

    /// Whether a datagram waits to be read (a poll that does not wait).
    pub fn readable(&self) -> bool {
        let mut fd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a zero timeout returns at once.
        unsafe { libc::poll(&mut fd, 1, 0) > 0 }
    }

    /// Reads every waiting datagram and hands it, with its sender, to `on_datagram`; true
    /// when any came.
    pub fn receive(&mut self, mut on_datagram: impl FnMut(&mut [u8], quiche::RecvInfo)) -> bool {
        let mut any = false;
        loop {
            let mut slots = self.rx.chunks_mut(RX_SLOT);
            let mut bufs: [IoSliceMut<'_>; BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(slots.next().expect("a slot per entry")));
            let n = match self
                .state
                .recv(UdpSockRef::from(&self.socket), &mut bufs, &mut self.meta)
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return any,
            };
            any |= n > 0;
            for (meta, buf) in self.meta[..n].iter().zip(bufs.iter_mut()) {
                let info = quiche::RecvInfo {
                    from: meta.addr,
                    to: self.local,
                };
                for datagram in buf[..meta.len].chunks_mut(meta.stride.max(1)) {
                    self.largest_received = self.largest_received.max(datagram.len());
                    on_datagram(datagram, info);
                }
            }
            if n < BATCH_SIZE {
                return any;
            }
        }
    }

    /// The largest datagram received so far, in bytes.
    pub fn largest_received(&self) -> usize {
        self.largest_received
    }

    /// Sends what a connection has ready at `at`: each run of equal-sized packets as one GSO
    /// datagram.
    pub fn send(&mut self, quic: &mut quiche::Connection, at: Instant) {
        let max_segments = self.state.max_gso_segments().clamp(1, 32);
        let tx = &mut self.tx;
        let mut more = true;
        while more {
            let (mut used, mut segment, mut count, mut to) = (0, 0, 0, None);
            // The segments of one GSO datagram fit in one UDP datagram.
            while count < max_segments && (count + 1) * segment <= GSO_MAX_BYTES {
                // After the first packet, no larger one: GSO cuts every segment to its size.
                let room = if count == 0 {
                    quic.max_send_udp_payload_size().min(TX_BYTES)
                } else {
                    segment
                };
                let Ok((len, info)) = quic.send_at(&mut tx[used..used + room], at) else {
                    more = false;
                    break;
                };
                used += len;
                // A full packet: this connection gains from larger ones (as the gateway's
                // `Conn::send`).
                if len >= room && room >= MIN_UDP_PAYLOAD && self.pmtud_max > len {
                    quic.start_pmtud(self.pmtud_max, PMTUD_PROBES);
                }
                to = Some(info.to);
                count += 1;
                if count == 1 {
                    segment = len;
                } else if len != segment {
                    // A shorter packet ends the run: only GSO's last segment may be short.
                    break;
                }
            }
            let Some(destination) = to else {
                return;
            };
            let transmit = Transmit {
                destination,
                ecn: None,
                contents: &tx[..used],
                segment_size: (count > 1).then_some(segment),
                src_ip: None,
            };
            // A full socket buffer loses the datagrams; QUIC sends them again.
            let _ = self.state.send(UdpSockRef::from(&self.socket), &transmit);
        }
    }
}

/// The engine: its socket and its sessions.
pub struct Engine {
    udp: Udp,
    sessions: Vec<Session>,
    scratch: Box<[u8]>,
    /// Whether the last turn received anything: then the next one reads before it waits.
    busy: bool,
    /// Whether sessions may have output queued outside a turn: the next turn sends it first.
    touched: bool,
    /// How long an idle turn polls the socket before it sleeps.
    spin: Duration,
    /// Time spent polling an idle socket so far.
    spun: Duration,
}

impl Engine {
    /// An engine with no session yet, its socket bound to an ephemeral port of the family of
    /// `server`'s address, polling an idle socket as `spin` says.
    pub fn new(server: SocketAddr, spin: &Spin) -> Result<Engine, String> {
        let bind: SocketAddr = if server.is_ipv6() {
            "[::]:0".parse().expect("an address")
        } else {
            "0.0.0.0:0".parse().expect("an address")
        };
        Ok(Engine {
            udp: Udp::bind(bind)?,
            sessions: Vec::new(),
            scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
            busy: false,
            touched: false,
            spin: spin.spin,
            spun: Duration::ZERO,
        })
    }

    /// Session `i`, to queue messages on: they go out before the next turn waits.
    pub fn session(&mut self, i: usize) -> &mut Session {
        self.touched = true;
        &mut self.sessions[i]
    }

    /// The largest datagram the engine received so far, in bytes.
    pub fn largest_datagram_received(&self) -> usize {
        self.udp.largest_received()
    }

    /// Time the engine has spent polling an idle socket so far: CPU time that served no
    /// datagram.
    pub fn spun(&self) -> Duration {
        self.spun
    }

    pub fn sessions(&self) -> &[Session] {
        &self.sessions
    }

    /// Opens `n` sessions at once in `target`'s realm and waits, at most `timeout`, until the
    /// gateway has admitted all of them; returns their indexes.
    pub fn connect(
        &mut self,
        target: &Target<'_>,
        n: usize,
        timeout: Duration,
    ) -> Result<std::ops::Range<usize>, String> {
        let range = self.open(target, n, ALPN, false)?;
        let by = Instant::now() + timeout;
        while self.sessions[range.clone()]
            .iter()
            .any(|s| s.phase == Phase::Connecting)
        {
            if Instant::now() >= by {
                return Err(format!(
                    "sessions not admitted within {}",
                    humantime::format_duration(timeout)
                ));
            }
            self.turn(Some(by), |_, _, _| {});
        }
        if let Some(why) = self.sessions[range.clone()].iter().find_map(Session::ended) {
            return Err(format!("the gateway refused a session: {why}"));
        }
        Ok(range)
    }

    /// Opens `n` connections to `target.server` with ALPN `alpn` (quiche's wire form),
    /// without waiting for them; `raw`: their stream carries bytes, not Macula frames (and no
    /// CONNECT).
    pub fn open(
        &mut self,
        target: &Target<'_>,
        n: usize,
        alpn: &[u8],
        raw: bool,
    ) -> Result<std::ops::Range<usize>, String> {
        let mut config = quic_config(target, alpn)?;
        self.udp.pmtud_max = target.pmtud_max;
        let first = self.sessions.len();
        for i in first..first + n {
            let s = self.new_session(i, target, &mut config, raw)?;
            self.sessions.push(s);
        }
        self.touched = true;
        Ok(first..first + n)
    }

    /// Closes session `i`'s connection (its CONNECTION_CLOSE goes out at once) and puts a new
    /// Macula session to `target` in its place, made with `config` (see [`Engine::config`]).
    pub fn reopen(
        &mut self,
        i: usize,
        target: &Target<'_>,
        config: &mut quiche::Config,
    ) -> Result<(), String> {
        let s = self.new_session(i, target, config, false)?;
        let mut old = std::mem::replace(&mut self.sessions[i], s);
        if !old.quic.is_closed() {
            let _ = old.quic.close(true, 0, b"");
            self.udp.send(&mut old.quic, Instant::now());
        }
        self.touched = true;
        Ok(())
    }

    /// The QUIC configuration of Macula sessions to `target`, for [`Engine::reopen`].
    pub fn config(target: &Target<'_>) -> Result<quiche::Config, String> {
        quic_config(target, ALPN)
    }

    /// A new connection whose connection id names slot `i`, its CONNECT queued unless `raw`.
    fn new_session(
        &self,
        i: usize,
        target: &Target<'_>,
        config: &mut quiche::Config,
        raw: bool,
    ) -> Result<Session, String> {
        let mut cid = [0u8; CID_LEN];
        cid[..4].copy_from_slice(&(i as u32).to_le_bytes());
        cid[4..].copy_from_slice(&random_node_id().0[..CID_LEN - 4]);
        let quic = quiche::connect(
            Some(target.server_name),
            &quiche::ConnectionId::from_ref(&cid),
            self.udp.local,
            target.server,
            config,
        )
        .map_err(|e| format!("cannot start a QUIC connection: {e}"))?;
        let mut s = Session {
            quic,
            reader: FrameReader::new(MAX_FRAME),
            out: Vec::new(),
            written: 0,
            phase: Phase::Connecting,
            ended: None,
            unacked: 0,
            ack_by: None,
            send_now: true,
        };
        if !raw {
            s.send(&Message::Connect(Connect {
                version: b"1.0",
                node_id: random_node_id(),
                realm: target.realm.as_bytes(),
                capabilities: None,
                token: target.token.map(str::as_bytes),
            }));
        }
        Ok(s)
    }

    /// Sends a PING from each of `sessions` and waits, at most `timeout`, for its PONG: once
    /// it is in, everything the session sent before is in effect (with `mesh`, on every
    /// gateway of the mesh).
    pub fn barrier(
        &mut self,
        sessions: std::ops::Range<usize>,
        mesh: bool,
        timeout: Duration,
    ) -> Result<(), String> {
        const MARK: u64 = u64::MAX - 1;
        let mut waiting = sessions.len();
        for i in sessions.clone() {
            self.session(i).send(&Message::Ping(Ping {
                timestamp: MARK,
                mesh,
            }));
        }
        let by = Instant::now() + timeout;
        while waiting > 0 {
            if Instant::now() >= by {
                return Err("the gateway did not answer PING in time".to_owned());
            }
            self.turn(Some(by), |i, msg, _| {
                if sessions.contains(&i) && matches!(msg, Message::Pong(p) if p.timestamp == MARK) {
                    waiting -= 1;
                }
            });
            if let Some(why) = self.sessions[sessions.clone()]
                .iter()
                .find_map(Session::ended)
            {
                return Err(format!("a session ended: {why}"));
            }
        }
        Ok(())
    }

    /// One turn (see the module's documentation). Waits for the socket no later than `until`
    /// (`None`: as long as the QUIC timers allow). `on_frame(session, message, output)` sees
    /// every message of an admitted session; what it appends to `output` is sent this turn.
    pub fn turn(
        &mut self,
        until: Option<Instant>,
        mut on_frame: impl FnMut(usize, Message<'_>, &mut Out<'_>),
    ) {
        self.poll(until);
        for (i, s) in self.sessions.iter_mut().enumerate() {
            read_frames(i, s, &mut self.scratch, &mut on_frame);
        }
        self.flush();
    }

    /// A turn of sessions opened `raw`: `on_bytes(session, bytes, output)` sees what each
    /// stream brought; what it appends to `output` is sent this turn.
    pub fn turn_raw(
        &mut self,
        until: Option<Instant>,
        mut on_bytes: impl FnMut(usize, &[u8], &mut Vec<u8>),
    ) {
        self.poll(until);
        for (i, s) in self.sessions.iter_mut().enumerate() {
            if s.phase == Phase::Connecting && s.quic.is_established() {
                s.phase = Phase::Up;
            }
            if s.quic.is_closed() {
                s.phase = Phase::Over;
            }
            while let Ok((n, _fin)) = s.quic.stream_recv(CONTROL, &mut self.scratch) {
                on_bytes(i, &self.scratch[..n], &mut s.out);
            }
        }
        self.flush();
    }

    /// Whether every session is up (raw: its handshake done).
    pub fn all_up(&self) -> bool {
        self.sessions.iter().all(|s| s.phase == Phase::Up)
    }

    /// The first part of a turn: sends what was queued outside turns, waits (unless the last
    /// turn was busy), reads the socket and fires the due QUIC timers.
    fn poll(&mut self, until: Option<Instant>) {
        if std::mem::take(&mut self.touched) {
            self.flush();
        }
        if !self.busy {
            let quic = self
                .sessions
                .iter()
                .flat_map(|s| [s.quic.timeout_instant(), s.ack_by])
                .flatten()
                .min();
            let at = match (until, quic) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if !self.spin_until_readable(at) {
                self.udp.wait(at);
            }
        }
        let sessions = &mut self.sessions;
        let now = Instant::now();
        self.busy = self.udp.receive(|datagram, info| {
            if let Some(s) = session_of(sessions, datagram) {
                let _ = s.quic.recv_at(datagram, info, now);
                s.unacked = s.unacked.saturating_add(1);
                s.ack_by.get_or_insert(now + ACK_DELAY);
            }
        });
        let now = Instant::now();
        for s in &mut self.sessions {
            if s.quic.timeout_instant().is_some_and(|at| at <= now) {
                s.quic.on_timeout();
                s.send_now = true;
            }
            s.send_now |= s.unacked >= ACK_EVERY
                || s.ack_by.is_some_and(|at| at <= now)
                || !s.quic.is_established()
                || s.quic.is_closed()
                || s.quic.is_draining();
        }
    }

    /// Polls the socket until a datagram waits (true), or `spin` or `at` passes (false).
    fn spin_until_readable(&mut self, at: Option<Instant>) -> bool {
        if self.spin.is_zero() {
            return false;
        }
        let start = Instant::now();
        let stop = at.map_or(start + self.spin, |at| at.min(start + self.spin));
        let readable = loop {
            if self.udp.readable() {
                break true;
            }
            if Instant::now() >= stop {
                break false;
            }
        };
        self.spun += start.elapsed();
        readable
    }

    /// Writes every session's output to its stream and sends every connection's packets.
    pub fn flush(&mut self) {
        let now = Instant::now();
        for s in &mut self.sessions {
            // The stream opens once the handshake is done and the gateway's limits are known.
            if s.queued() > 0 && s.quic.is_established() && !s.quic.is_closed() {
                match s.quic.stream_send(CONTROL, &s.out[s.written..], false) {
                    Ok(n) => {
                        s.written += n;
                        s.send_now = true;
                    }
                    Err(quiche::Error::Done) => {}
                    Err(_) => s.phase = Phase::Over,
                }
                if s.written == s.out.len() {
                    s.out.clear();
                    s.written = 0;
                }
            }
            if std::mem::take(&mut s.send_now) {
                self.udp.send(&mut s.quic, now);
                s.unacked = 0;
                s.ack_by = None;
            }
        }
    }

    /// Closes every session's connection and waits, at most `timeout`, for the closes to go
    /// out.
    pub fn close(&mut self, timeout: Duration) {
        for s in &mut self.sessions {
            let _ = s.quic.close(true, 0, b"bench over");
            s.send_now = true;
        }
        let by = Instant::now() + timeout;
        while Instant::now() < by && self.sessions.iter().any(|s| !s.quic.is_closed()) {
            self.flush();
            if self
                .sessions
                .iter()
                .all(|s| s.quic.is_draining() || s.quic.is_closed())
            {
                break;
            }
            self.turn(Some(by), |_, _, _| {});
        }
    }
}

/// The session a datagram is for, by the connection id the engine gave it.
fn session_of<'a>(sessions: &'a mut [Session], datagram: &[u8]) -> Option<&'a mut Session> {
    let first = *datagram.first()?;
    // Short header: the connection id right after the first byte. Long header: after the
    // version and the id's length byte.
    let at = if first & 0x80 == 0 { 1 } else { 6 };
    let cid = datagram.get(at..at + CID_LEN)?;
    let i = u32::from_le_bytes(cid[..4].try_into().ok()?) as usize;
    let s = sessions.get_mut(i)?;
    (s.quic.source_id().as_ref() == cid).then_some(s)
}

/// Reads a session's control stream and hands its frames on; notes the gateway's answer to
/// CONNECT and its DISCONNECT.
fn read_frames(
    i: usize,
    s: &mut Session,
    scratch: &mut [u8],
    on_frame: &mut impl FnMut(usize, Message<'_>, &mut Out<'_>),
) {
    if s.phase == Phase::Over {
        return;
    }
    if s.quic.is_closed() || s.quic.is_draining() {
        if s.ended.is_none() {
            s.ended = s.quic.peer_error().map(|e| {
                Reason::from_close_code(e.error_code).map_or_else(
                    || format!("closed_{:#x}", e.error_code),
                    |r| r.as_str().into(),
                )
            });
        }
        s.phase = Phase::Over;
        return;
    }
    while let Ok((n, _fin)) = s.quic.stream_recv(CONTROL, scratch) {
        if s.reader.push(&scratch[..n]).is_err() {
            s.phase = Phase::Over;
            s.ended = Some("protocol_error".into());
            return;
        }
    }
    let mut out = Out(&mut s.out);
    while let Ok(Some(frame)) = s.reader.next_frame() {
        let Ok(msg) = Message::decode(frame.frame_type, frame.payload) else {
            continue;
        };
        match (s.phase, msg) {
            (Phase::Connecting, Message::Pong(_)) => s.phase = Phase::Up,
            (_, Message::Disconnect(d)) => {
                s.phase = Phase::Over;
                s.ended = Some(String::from_utf8_lossy(d.reason).into_owned());
            }
            (Phase::Up, Message::Ping(p)) => out.send(&Message::Pong(Pong {
                timestamp: p.timestamp,
                server_time: 0,
                node_id: None,
            })),
            (Phase::Up, msg) => on_frame(i, msg, &mut out),
            (Phase::Connecting | Phase::Over, _) => {}
        }
    }
}

/// quiche's configuration for `--insecure`: the gateway's certificate is taken as it is.
/// BoringSSL then builds and checks no chain for it: with verification merely turned off
/// (`verify_peer(false)`), it still checks each handshake's chain against the system's roots
/// (about 6 % of the load generator's time in `bench handshake`) and only ignores the result.
/// The handshake itself is whole: the gateway's CertificateVerify signature is still checked.
fn insecure_config() -> Result<quiche::Config, String> {
    let mut tls = boring::ssl::SslContextBuilder::new(boring::ssl::SslMethod::tls())
        .map_err(|e| format!("cannot make a TLS context: {e}"))?;
    tls.set_custom_verify_callback(boring::ssl::SslVerifyMode::NONE, |_| Ok(()));
    quiche::Config::with_boring_ssl_ctx_builder(quiche::PROTOCOL_VERSION, tls)
        .map_err(|e| format!("cannot make a QUIC configuration: {e}"))
}

/// quiche's client configuration: ALPN `alpn`, the trust asked for, one bidirectional
/// stream, large windows.
fn quic_config(target: &Target<'_>, alpn: &[u8]) -> Result<quiche::Config, String> {
    let mut c = if target.insecure {
        insecure_config()?
    } else {
        quiche::Config::new(quiche::PROTOCOL_VERSION)
            .map_err(|e| format!("cannot make a QUIC configuration: {e}"))?
    };
    c.set_application_protos_wire_format(alpn)
        .map_err(|e| format!("cannot set the ALPN: {e}"))?;
    match (target.insecure, target.ca) {
        (true, _) => {}
        (false, Some(ca)) => {
            let path = ca.to_str().ok_or("the CA file's path is not UTF-8")?;
            c.load_verify_locations_from_file(path)
                .map_err(|e| format!("cannot read the CA file {path}: {e}"))?;
            c.verify_peer(true);
        }
        (false, None) => {
            return Err(
                "the gateway's certificate cannot be checked: give --ca PEM_FILE, \
                        or --insecure for a gateway with a self-signed certificate"
                    .to_owned(),
            )
        }
    }
    // The gateway's default groups: no post-quantum key share to make for each handshake,
    // which the gateway would not pick (the load generator's CPU is not what is measured).
    c.set_curves_list("X25519:P-256")
        .map_err(|e| format!("cannot set the key exchange groups: {e}"))?;
    c.set_max_idle_timeout(30_000);
    // With path MTU discovery, as the gateway: the socket never fragments (quinn-udp sets
    // IP_PMTUDISC_PROBE), so packets are of QUIC's minimum until a probe proves more, and a
    // connection starts probing once it fills one (`Udp::send`).
    c.set_max_recv_udp_payload_size(target.max_udp_payload.max(target.pmtud_max));
    c.set_max_send_udp_payload_size(if target.pmtud_max > 0 {
        MIN_UDP_PAYLOAD
    } else {
        target.max_udp_payload
    });
    c.set_initial_max_data(16 << 20);
    c.set_initial_max_stream_data_bidi_local(8 << 20);
    c.set_initial_max_stream_data_bidi_remote(0);
    c.set_initial_max_streams_bidi(0);
    c.set_initial_max_stream_data_uni(0);
    c.set_initial_max_streams_uni(0);
    c.set_disable_active_migration(true);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(spin: Duration) -> (Engine, UdpSocket) {
        let engine = Engine::new("127.0.0.1:1".parse().unwrap(), &Spin { spin }).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        (engine, peer)
    }

    fn to(engine: &Engine) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], engine.udp.local().port()))
    }

    #[test]
    fn an_idle_engine_polls_its_whole_spin_then_gives_up_and_counts_the_time() {
        let spin = Duration::from_millis(20);
        let (mut e, _peer) = engine(spin);
        assert!(!e.spin_until_readable(None));
        assert!(e.spun() >= spin, "spun {:?}", e.spun());
        assert!(!e.spin_until_readable(None));
        assert!(e.spun() >= 2 * spin, "the time adds up: {:?}", e.spun());
    }

    #[test]
    fn polling_stops_at_once_for_a_waiting_datagram_and_at_the_deadline() {
        let (mut e, peer) = engine(Duration::from_secs(600));
        peer.send_to(b"x", to(&e)).unwrap();
        // Loopback delivers before send_to returns: the first poll sees it.
        assert!(e.spin_until_readable(None));
        assert!(e.spun() < Duration::from_secs(600));

        let (mut e, _peer) = engine(Duration::from_secs(600));
        let at = Instant::now() + Duration::from_millis(20);
        assert!(!e.spin_until_readable(Some(at)));
        assert!(Instant::now() >= at);
        assert!(e.spun() < Duration::from_secs(600));
    }

    #[test]
    fn with_no_spin_the_engine_does_not_poll() {
        let (mut e, peer) = engine(Duration::ZERO);
        peer.send_to(b"x", to(&e)).unwrap();
        assert!(
            !e.spin_until_readable(None),
            "it goes to sleep, which returns at once"
        );
        assert_eq!(e.spun(), Duration::ZERO);
    }
}
