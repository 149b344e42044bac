//! One shard's thread: a glommio executor pinned to its core, running a loop that owns the
//! core's UDP socket, its QUIC [`Endpoint`] and its [`Shard`].
//!
//! # One turn
//!
//! Read the clock once; receive datagram batches (`recvmmsg`) until the socket is empty or a
//! budget is spent, routing each datagram through the endpoint and feeding the control
//! stream's bytes to the shard as it comes; drain a budget of the inbox
//! (messages from other shards, datagrams forwarded to this shard, requests from the main
//! thread); fire the due timers of the shard's wheel, QUIC timers included; hand the shard's
//! output to the streams; read the clock again and send every packet quiche has ready
//! (`sendmmsg`, many per call); move the shard's outbox to the other shards' channels; then
//! sleep. quiche is given those two times (the patched `recv_at` and `send_at`) rather than
//! reading the clock for every packet it receives and every `send` call.
//!
//! # Delayed acknowledgements
//!
//! A packet that brings a session's or a peer link's connection nothing to answer this turn (a
//! CALL whose reply comes from another session later, a REPLY the link brings back) is not
//! acknowledged by a packet of its own at once: the ACK waits, [`ACK_DELAY`] at most, for output
//! that carries it, unless a second packet came meanwhile. At moderate rates, where each call
//! travels alone, that spares a packet each way per call, on each connection the call crosses.
//!
//! # Sleeping and waking
//!
//! The turn reads on while datagrams keep arriving: a client's burst sent over several system
//! calls, or the datagrams of several clients answering the last turn together, is handled in
//! one turn, so that the shard's answers share packets rather than leave in many small ones.
//!
//! An idle shard first polls its socket and inbox for a while (`--spin`), so that the next
//! datagram is read at once rather than after a wake-up, which costs both the sender and the
//! shard. It polls only while its idle spells are short: once one lasts past the spin, the
//! next starts with sleep, until a short one shows traffic again. The time spent polling is
//! counted apart (`meshgate_shard_spin_seconds_total`).
//!
//! A shard sleeps until the earliest of: its socket becomes readable, the next deadline of its
//! wheel, or its doorbell's eventfd is written (see [`crate::mailbox`]): one `ppoll` on the
//! socket and the eventfd, with the deadline as its timeout. Before sleeping a shard arms its
//! doorbell and checks its inbox once more. A busy shard has no doorbell armed, so waking it
//! costs the sender nothing. An idle gateway therefore uses no CPU, and a message to an idle
//! shard is handled at once.
//!
//! # Peer links
//!
//! With the gateway mesh, some connections carry peer links instead of sessions: accepted
//! ones with ALPN `meshgate-peer`, and those the shard dials. [`links`] drives them the same
//! way: their two streams' bytes to the shard, its output back, its closes and its dials.

mod links;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use glommio::net::UdpSocket;
use meshgate_shard::metrics::DropReason;
use meshgate_shard::wire::LinkStream;
use meshgate_shard::{Event, LinkState, SessionKey, Shard, ShardId, StreamEnd, Time};

use crate::endpoint::{Arrival, Conn, ConnHandle, Endpoint, Header, Read, Route, Write};
use crate::health::{IoCounts, ShardReport};
use crate::mailbox::{Body, Envelope, Mailbox, Shared};
use crate::net::{BatchRx, BatchTx, BATCH};

/// Datagrams handled per turn before other work gets its turn (eight full batches), however
/// many more keep arriving.
const RX_DATAGRAMS_PER_TURN: usize = 8 * BATCH;
/// Queued datagrams past which the batch is sent once a connection's packets are all in it:
/// the first connections' packets leave while the turn makes the others', and a connection's
/// run of packets is never cut in two by a send.
const TX_SEND_AT: usize = 32;
/// Inbox messages handled per turn.
const INBOX_PER_TURN: usize = 1024;
/// New connections accepted per turn. A connection's first flight (key exchange, signature)
/// is the costliest thing a shard does; beyond this many in one turn, the Initials wait for
/// the next turns, so that a burst of new clients does not hold up the packets of the
/// sessions already connected.
const ACCEPTS_PER_TURN: usize = 8;
/// Initials that wait for a later turn, at most; beyond, they are dropped and their clients
/// send them again.
const DEFERRED_INITIALS: usize = 1024;
/// How long a stopping shard waits for its connections to close.
const STOP_GRACE: Duration = Duration::from_millis(1500);
/// How long a session's or link's connection may hold the acknowledgement of packets that
/// brought it nothing to answer, waiting for output to carry it (a reply, a delivery): well
/// under the peer's allowance for a delayed ACK (quiche's `max_ack_delay`, 25 ms).
const ACK_DELAY: Duration = Duration::from_millis(2);
/// Received packets after which a session's or link's connection acknowledges at once, output
/// or not (RFC 9000 13.2.2: at least every second ack-eliciting packet).
const ACK_EVERY: u8 = 2;
/// How long a session the shard ended may take to send its last output (its DISCONNECT)
/// before its connection is closed anyway: a client that reads nothing is closed all the same.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A connection not heard from for this long hands back the spare capacity of its empty
/// buffers (quiche's stream, recovery and connection ID lists, and the shard's output buffer
/// of its session or link), which its last burst grew: an idle session then costs only what
/// it holds.
const SHRINK_AFTER: Duration = Duration::from_secs(1);

/// Everything a shard's thread starts with.
pub struct ShardStart {
    pub shard: Shard,
    pub socket: socket2::Socket,
    pub quic: quiche::Config,
    pub inbox: Receiver<Envelope>,
    pub shared: Arc<Shared>,
    /// `--max-handshakes`, counted for the whole gateway.
    pub max_handshakes: usize,
    /// The larger of `--max-udp-payload` and `--pmtud-max`: the largest datagram sent or taken.
    pub max_udp_payload: usize,
    /// `--pmtud-max`: 0, or the largest UDP payload path MTU discovery probes for.
    pub pmtud_max: usize,
    /// `--idle-timeout`: a connection that has not been heard from for this long is dropped.
    pub idle_timeout: Duration,
    /// `--spin`: how long an idle shard polls before it sleeps.
    pub spin: Duration,
    /// quiche's configuration of dials to peers; `None` without the gateway mesh.
    pub dial_quic: Option<quiche::Config>,
    /// `--peer-idle-timeout`: the idle timeout of a peer link's connection.
    pub peer_idle_timeout: Duration,
    /// The clock origin the shard's `Time` counts from.
    pub origin: Instant,
    /// Told once the loop runs.
    pub ready: std::sync::mpsc::Sender<ShardId>,
}

/// Runs a shard until it is told to stop and its connections are closed.
pub async fn run(start: ShardStart) {
    let Some((mut d, mut io)) = Driver::start(start) else {
        return;
    };
    loop {
        let now = Now::read(d.origin);
        let socket_busy = d.receive(now, &mut io);
        let backlog = d.drain_inbox(now, &mut io.tx);
        d.fire_timers(now);
        d.pump_output(now);
        d.flush(now, &mut io).await;
        d.io_counts = IoCounts {
            datagrams_received: io.rx.datagrams(),
            datagrams_sent: io.tx.datagrams(),
            datagrams_forwarded: d.forwarded,
            turns: d.io_counts.turns + 1,
            spun: io.spin.spun,
        };
        if d.is_done(now) {
            break;
        }
        if socket_busy || backlog {
            glommio::yield_if_needed().await;
        } else {
            io.sleep(&d.mailbox, d.deadline());
        }
    }
    log::debug!("shard {} stopped", d.id.0);
}

/// The turn's time, read once at its start: as an instant, for the deadlines kept as
/// instants, and as the shard's [`Time`].
#[derive(Clone, Copy)]
struct Now {
    at: Instant,
    time: Time,
}

impl Now {
    fn read(origin: Instant) -> Now {
        let at = Instant::now();
        Now {
            at,
            time: time_since(origin, at),
        }
    }
}

/// Milliseconds from `origin` to `at`, rounded up so that a timer never fires early.
fn time_since(origin: Instant, at: Instant) -> Time {
    let d = at.saturating_duration_since(origin);
    Time::from_millis(d.as_millis() as u64 + u64::from(!d.subsec_nanos().is_multiple_of(1_000_000)))
}

/// The CPU time the calling thread has used so far (user and system); zero where the clock
/// cannot be read. A report is made on the shard's own thread, so this is the shard's.
fn thread_cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write for the call's duration.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The shard's socket and its batches.
struct Io {
    socket: Rc<UdpSocket>,
    fd: RawFd,
    rx: BatchRx,
    tx: BatchTx,
    /// `--pmtud-max`: the largest UDP payload a connection that fills its packets probes for.
    pmtud_max: usize,
    /// The time the packets being made are sent at: read once when the turn starts sending,
    /// and again after a wait for room in the socket.
    sending_at: Instant,
    /// How the shard polls while idle.
    spin: Spin,
}

/// How an idle shard waits: polling for `--spin` at most, while its idle spells are short.
#[derive(Clone, Copy, Debug)]
struct Spin {
    /// `--spin`: the longest an idle spell polls before the shard sleeps.
    limit: Duration,
    /// Whether the next idle spell starts polling: the last one was shorter than `limit`.
    next: bool,
    /// Time spent polling, so far.
    spun: Duration,
}

impl Spin {
    fn new(limit: Duration) -> Spin {
        Spin {
            limit,
            next: true,
            spun: Duration::ZERO,
        }
    }

    /// How long the idle spell that starts now polls before the shard sleeps.
    fn budget(&self) -> Duration {
        if self.next {
            self.limit
        } else {
            Duration::ZERO
        }
    }

    /// The idle spell ended after `idle`, `polled` of it polling.
    fn ended(&mut self, idle: Duration, polled: Duration) {
        self.spun += polled;
        self.next = idle < self.limit;
    }
}

impl Io {
    /// Receives a batch of datagrams into `rx`; returns how many.
    fn recv_batch(&mut self, id: ShardId) -> usize {
        match self.rx.recv(self.fd) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("shard {}: recvmmsg: {e}", id.0);
                0
            }
        }
    }

    /// Sends every queued datagram; when the socket is full, waits for room by sending one
    /// through glommio (which parks until the socket is writable).
    async fn flush(&mut self) {
        loop {
            match self.tx.flush(self.fd) {
                Ok(true) => return,
                Ok(false) => {
                    let Some((packet, to)) = self.tx.first() else {
                        return;
                    };
                    let packet = packet.to_vec();
                    let _ = self.socket.send_to(&packet, to).await;
                    self.tx.drop_front(1);
                    self.sending_at = Instant::now();
                }
                Err(e) => {
                    log::warn!("sendmmsg: {e}");
                    return;
                }
            }
        }
    }

    /// Writes every packet a connection has ready into the batch, sending full batches.
    async fn send_ready(&mut self, c: &mut Conn) {
        loop {
            if self.tx.is_full() {
                self.flush().await;
            }
            match c.send(self.tx.next_slot(), self.sending_at, self.pmtud_max) {
                Ok(Some((len, to))) => self.tx.commit(len, to),
                Ok(None) if self.tx.len() >= TX_SEND_AT => return self.flush().await,
                Ok(None) => return,
                Err(e) => {
                    log::debug!("quiche send: {e}");
                    return;
                }
            }
        }
    }

    /// Waits until a datagram arrives, the inbox has a message or `deadline` passes: polling
    /// first, for `--spin` at most, if the last idle spell was shorter than that; then asleep.
    fn sleep(&mut self, mailbox: &Mailbox, deadline: Option<Instant>) {
        let start = Instant::now();
        let budget = self.spin.budget();
        let mut polled = Duration::ZERO;
        if !budget.is_zero() {
            let until = deadline.map_or(start + budget, |at| at.min(start + budget));
            let woken = self.poll_until(mailbox, until);
            polled = start.elapsed();
            if woken {
                self.spin.ended(polled, polled);
                return;
            }
        }
        self.wait(mailbox, deadline);
        self.spin.ended(start.elapsed(), polled);
    }

    /// Polls the socket and the inbox until either has something (true) or `until` passes.
    fn poll_until(&self, mailbox: &Mailbox, until: Instant) -> bool {
        let mut fd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd for the call's duration; a zero timeout returns at once.
            if unsafe { libc::poll(&mut fd, 1, 0) } > 0 || !mailbox.is_empty() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
        }
    }

    /// Sleeps until a datagram arrives, the doorbell rings or `deadline` passes: one `ppoll`
    /// on the socket and the doorbell's eventfd. The shard's loop is its executor's only task,
    /// so blocking the thread here holds nothing else up, and a sleep costs one system call
    /// (and a wake-up).
    fn wait(&mut self, mailbox: &Mailbox, deadline: Option<Instant>) {
        if mailbox.arm_bell() {
            mailbox.disarm_bell(false);
            return;
        }
        let mut fds = [
            libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: mailbox.bell_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // The clock is read here to convert the deadline, so that the time the turn took does
        // not delay the wake-up.
        let timeout = deadline.map(|at| {
            let wait = at.saturating_duration_since(Instant::now());
            libc::timespec {
                tv_sec: wait.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32),
            }
        });
        let timeout_ptr = timeout
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `fds` is a valid array of two pollfd for the call's duration, `timeout_ptr`
        // is null or points to `timeout`, which outlives the call, and no signal mask is given.
        // An error (EINTR) is a wake-up like any other: the loop looks again.
        unsafe { libc::ppoll(fds.as_mut_ptr(), 2, timeout_ptr, std::ptr::null()) };
        mailbox.disarm_bell(fds[1].revents != 0);
    }
}

struct Driver {
    id: ShardId,
    shard: Shard,
    endpoint: Endpoint,
    mailbox: Mailbox,
    idle_timeouts: IdleTimeouts,
    origin: Instant,
    /// Connections to flush at the end of the turn.
    dirty: Vec<ConnHandle>,
    /// Connections whose output waits for stream capacity.
    blocked: Vec<ConnHandle>,
    /// Peer links' connections whose input the shard did not take: read again each turn.
    paused_links: Vec<ConnHandle>,
    scratch: Box<[u8]>,
    stop_by: Option<Instant>,
    refused_handshakes: u64,
    /// The socket's counts as of the last turn's end, for the shard's report.
    io_counts: IoCounts,
    /// Datagrams this shard's socket received for a connection of another shard.
    forwarded: u64,
    /// Connections accepted in this turn.
    accepted: usize,
    /// Initials over this turn's accept budget, oldest first.
    deferred: VecDeque<(Box<[u8]>, SocketAddr)>,
}

/// `--idle-timeout` and `--peer-idle-timeout`.
#[derive(Clone, Copy)]
struct IdleTimeouts {
    session: Duration,
    peer: Duration,
}

impl IdleTimeouts {
    /// How long the connection may go unheard from before it is dropped.
    fn of(self, c: &Conn) -> Duration {
        if c.is_peer() {
            self.peer
        } else {
            self.session
        }
    }
}

impl Driver {
    /// Takes over the shard's socket, and tells the main thread that the loop runs.
    fn start(start: ShardStart) -> Option<(Driver, Io)> {
        let id = start.shard.id();
        // SAFETY: the descriptor comes from a socket this function owns from now on.
        let socket = Rc::new(unsafe { UdpSocket::from_raw_fd(start.socket.into_raw_fd()) });
        let local = match socket.local_addr() {
            Ok(a) => a,
            Err(e) => {
                log::error!("shard {}: socket has no address: {e}", id.0);
                return None;
            }
        };
        let shards = start.shard.config().shards;
        let counts = start.shard.config().counts.clone();
        let d = Driver {
            id,
            endpoint: Endpoint::new(
                id,
                shards,
                start.quic,
                start.dial_quic,
                local,
                counts,
                start.max_handshakes,
            ),
            mailbox: Mailbox::new(id, shards, start.inbox, start.shared),
            shard: start.shard,
            idle_timeouts: IdleTimeouts {
                session: start.idle_timeout,
                peer: start.peer_idle_timeout,
            },
            origin: start.origin,
            dirty: Vec::new(),
            blocked: Vec::new(),
            paused_links: Vec::new(),
            scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
            stop_by: None,
            refused_handshakes: 0,
            io_counts: IoCounts::default(),
            forwarded: 0,
            accepted: 0,
            deferred: VecDeque::new(),
        };
        let fd = socket.as_raw_fd();
        let io = Io {
            fd,
            socket,
            rx: BatchRx::new(fd, start.max_udp_payload),
            tx: BatchTx::new(start.max_udp_payload),
            pmtud_max: start.pmtud_max,
            sending_at: start.origin,
            spin: Spin::new(start.spin),
        };
        let _ = start.ready.send(id);
        Some((d, io))
    }

    /// Handles the Initials left over from earlier turns, then the datagrams that wait and those
    /// that arrive meanwhile, up to a budget; true when the budget ran out before the socket
    /// did.
    fn receive(&mut self, now: Now, io: &mut Io) -> bool {
        self.accepted = 0;
        while self.accepted < ACCEPTS_PER_TURN {
            let Some((mut data, from)) = self.deferred.pop_front() else {
                break;
            };
            self.on_datagram(now, &mut data, from, false, &mut io.tx);
        }
        // The budget counts datagrams, not buffers: with GRO one buffer carries up to 64. What
        // a batch holds beyond the budget waits in it for the next turn.
        let mut left = RX_DATAGRAMS_PER_TURN;
        while left > 0 {
            if let Some((datagram, from)) = io.rx.next() {
                self.on_datagram(now, datagram, from, false, &mut io.tx);
                left -= 1;
                continue;
            }
            // This turn's batch is handed out: read again, for what came meanwhile, until a
            // read finds the socket empty.
            if io.recv_batch(self.id) == 0 {
                return false;
            }
        }
        true
    }

    /// Handles a budget of the inbox; true when messages or deferred Initials are left for
    /// the next turn.
    fn drain_inbox(&mut self, now: Now, tx: &mut BatchTx) -> bool {
        for _ in 0..INBOX_PER_TURN {
            let Some(envelope) = self.mailbox.next() else {
                break;
            };
            self.on_envelope(now, envelope, tx);
        }
        !self.mailbox.is_empty() || !self.deferred.is_empty()
    }

    /// Fires the shard's due timers; a connection's is quiche's.
    fn fire_timers(&mut self, now: Now) {
        self.shard.handle_timeout(now.time);
        while let Some(token) = self.shard.poll_driver_timer() {
            let conn = ConnHandle::from_token(token);
            if let Some(c) = self.endpoint.get_mut(conn) {
                c.timer = None;
                c.on_timeout();
                self.mark_dirty(conn);
            }
        }
    }

    /// Sends what the turn produced: the connections' packets, then the shard's outbox; and
    /// logs the shard's events.
    async fn flush(&mut self, now: Now, io: &mut Io) {
        io.sending_at = Instant::now();
        self.flush_connections(now, io).await;
        io.flush().await;
        self.mailbox.flush_outbox(&mut self.shard);
        self.log_events();
    }

    /// Whether a stopping shard is done: every connection has sent its CONNECTION_CLOSE
    /// (nothing is left to say), or the grace period is over.
    fn is_done(&self, now: Now) -> bool {
        self.stop_by
            .is_some_and(|stop_by| self.endpoint.all_closes_sent() || now.at >= stop_by)
    }

    /// When the shard must wake up at the latest: its wheel's next deadline, or the end of
    /// its stop grace.
    fn deadline(&self) -> Option<Instant> {
        let wheel = self
            .shard
            .next_deadline()
            .map(|t| self.origin + Duration::from_millis(t.as_millis()));
        match (wheel, self.stop_by) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn mark_dirty(&mut self, conn: ConnHandle) {
        if let Some(c) = self.endpoint.get_mut(conn) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(conn);
            }
        }
    }

    fn on_envelope(&mut self, now: Now, envelope: Envelope, tx: &mut BatchTx) {
        match envelope.body {
            Body::Shard(msg) => self
                .shard
                .handle_shard_message(now.time, envelope.from, msg),
            Body::Datagram { mut data, from } => self.on_datagram(now, &mut data, from, true, tx),
            Body::Report(reply) => {
                let metrics = self.shard.metrics();
                let links = self.shard.link_reports();
                let report = ShardReport {
                    shard: self.id.0,
                    handshakes: self.endpoint.handshakes() as u64 + metrics.awaiting_connect,
                    peers: links.iter().filter(|l| l.state == LinkState::Up).count() as u64,
                    refused_handshakes: self.refused_handshakes,
                    metrics,
                    links,
                    peer_table: self.shard.peer_table(),
                    peer_counters: self.shard.peer_counters(),
                    wall_clock_offset_ms: self.shard.config().wall_clock_offset_ms,
                    io: self.io_counts,
                    cpu_time: thread_cpu_time(),
                };
                let _ = reply.try_send(report);
            }
            Body::Resolved { link, addr } => self.dial_resolved(now.time, link, addr),
            Body::Shutdown => self.shutdown(now),
        }
    }

    /// Ends every session and peer link, closes the connections that have neither, and gives
    /// the others [`STOP_GRACE`] to close.
    fn shutdown(&mut self, now: Now) {
        if self.stop_by.is_some() {
            return;
        }
        self.stop_by = Some(now.at + STOP_GRACE);
        self.shard.shutdown(now.time);
        let idle: Vec<ConnHandle> = self
            .endpoint
            .iter()
            .filter(|(_, c)| c.session().is_none() && c.link().is_none())
            .map(|(conn, _)| conn)
            .collect();
        for conn in idle {
            if let Some(c) = self.endpoint.get_mut(conn) {
                c.close(false, 0x0, b"shutting down");
            }
            self.mark_dirty(conn);
        }
    }

    /// Routes a datagram (see [`Endpoint::route`]) and acts on the route.
    fn on_datagram(
        &mut self,
        now: Now,
        buf: &mut [u8],
        from: SocketAddr,
        forwarded: bool,
        tx: &mut BatchTx,
    ) {
        let Some(hdr) = Header::parse(buf) else {
            return;
        };
        let arrival = Arrival {
            forwarded,
            accepts_left: ACCEPTS_PER_TURN.saturating_sub(self.accepted),
            stopping: self.stop_by.is_some(),
        };
        let route = self.endpoint.route(&hdr, arrival);
        if route.spends_accept() {
            self.accepted += 1;
        }
        let conn = match route {
            Route::Ours(conn) => Some(conn),
            Route::Accept => self.endpoint.accept(now.time, &hdr, from),
            _ => {
                self.divert(route, &hdr, buf, from, tx);
                None
            }
        };
        if let Some(conn) = conn {
            self.on_packet(now, conn, buf, from);
        }
    }

    /// Acts on a route that takes the datagram to no connection of this shard: forwards it,
    /// keeps it for a later turn, answers it, or drops it.
    fn divert(
        &mut self,
        route: Route,
        hdr: &Header,
        buf: &[u8],
        from: SocketAddr,
        tx: &mut BatchTx,
    ) {
        match route {
            Route::Ours(_) | Route::Accept => {}
            Route::Forward(owner) => {
                if self.mailbox.forward(owner, buf, from) {
                    self.forwarded += 1;
                } else {
                    self.shard.count_drop(DropReason::InboxFull);
                }
            }
            Route::Defer => {
                if self.deferred.len() < DEFERRED_INITIALS {
                    self.deferred.push_back((buf.into(), from));
                } else {
                    self.shard.count_drop(DropReason::InitialBacklog);
                }
            }
            Route::Refuse => {
                self.refused_handshakes += 1;
                if let Some(len) = hdr.refusal(tx.next_slot()) {
                    tx.commit(len, from);
                }
            }
            Route::NegotiateVersion => {
                if !tx.is_full() {
                    if let Some(len) = hdr.negotiate_version(tx.next_slot()) {
                        tx.commit(len, from);
                    }
                }
            }
            Route::Drop(discard) => {
                if let Some(reason) = discard.counted() {
                    self.shard.count_drop(reason);
                }
            }
        }
    }

    /// Feeds a datagram to its connection; opens the connection's session when its handshake
    /// ends, and hands the session the control stream's bytes.
    fn on_packet(&mut self, now: Now, conn: ConnHandle, buf: &mut [u8], from: SocketAddr) {
        if !self.endpoint.recv(now.time, now.at, conn, buf, from) {
            return;
        }
        let now = now.time;
        if self.endpoint.needs_session(conn) {
            let key = self.shard.handle_session_open(now);
            self.endpoint.attach(conn, key);
        }
        self.open_link(now, conn);
        if let Some(c) = self.endpoint.get_mut(conn) {
            if let Some(key) = c.session() {
                c.shut_other_streams();
                self.read_control(now, conn, key);
            } else if let Some(link) = c.link() {
                self.read_link(now, conn, link);
            }
            if self.endpoint.get(conn).is_some_and(Conn::is_closing) {
                // A CONNECTION_CLOSE (or a fatal error) ends the session or the link at once:
                // a datagram read next in this very batch no longer finds it.
                self.detach(now, conn);
            }
        }
        self.owe_ack(now, conn);
    }

    /// After a packet: flushes the connection this turn, or, for an established session's or
    /// link's connection with nothing else to send, lets the ACK wait (see the module's
    /// documentation). Output written to it this turn flushes it anyway.
    fn owe_ack(&mut self, now: Time, conn: ConnHandle) {
        let Some(c) = self.endpoint.get_mut(conn) else {
            return;
        };
        c.unacked = c.unacked.saturating_add(1);
        let may_wait = (c.session().is_some() || c.link().is_some())
            && c.is_established()
            && !c.is_closing()
            && c.close_after_flush.is_none()
            && c.unacked < ACK_EVERY;
        if !may_wait {
            self.mark_dirty(conn);
            return;
        }
        if c.ack_by.is_none() && !c.dirty {
            c.ack_by = Some(now + ACK_DELAY);
            let idle_by = c.heard + self.idle_timeouts.of(c);
            self.rearm(conn, idle_by);
        }
    }

    /// Hands the control stream's bytes to the shard while it takes input. When it does not
    /// (the session's output is over its bound), the bytes stay in quiche, whose flow control
    /// then holds the client back; reading resumes once the output drains.
    fn read_control(&mut self, now: Time, conn: ConnHandle, key: SessionKey) {
        let Some(c) = self.endpoint.get_mut(conn) else {
            return;
        };
        c.input_paused = false;
        while c.control_readable() {
            if !self.shard.wants_input(key) {
                c.input_paused = true;
                break;
            }
            match c.read_control(&mut self.scratch) {
                Some(Read::Data { len, fin }) => {
                    self.shard
                        .handle_stream_data(now, key, &self.scratch[..len]);
                    if fin {
                        self.shard.handle_stream_end(now, key, StreamEnd::Finished);
                        break;
                    }
                }
                None => break,
                Some(Read::Reset) => {
                    self.shard.handle_stream_end(now, key, StreamEnd::Reset);
                    break;
                }
                Some(Read::Failed(e)) => {
                    log::debug!("shard {}: stream_recv: {e}", self.id.0);
                    break;
                }
            }
        }
        if c.control_stopped() {
            self.shard
                .handle_stream_end(now, key, StreamEnd::StopSending);
        }
    }

    /// Hands the shard's output to the streams, notes the sessions and links it ended and
    /// makes its dials, until it has nothing more (one output can cause another: a link lost
    /// answers the calls forwarded on it).
    fn pump_output(&mut self, now: Now) {
        let blocked = std::mem::take(&mut self.blocked);
        for conn in blocked {
            let Some(c) = self.endpoint.get_mut(conn) else {
                continue;
            };
            c.blocked = false;
            match (c.session(), c.link()) {
                (Some(key), _) => self.write_output(now.time, key),
                (None, Some(link)) => self.write_link(now.time, link),
                (None, None) => {}
            }
        }
        self.resume_links(now.time);
        loop {
            let mut more = false;
            while let Some(key) = self.shard.poll_ready() {
                self.write_output(now.time, key);
                more = true;
            }
            while let Some((key, reason)) = self.shard.poll_close() {
                more = true;
                match self.endpoint.conn_of(key) {
                    Some(conn) => {
                        if let Some(c) = self.endpoint.get_mut(conn) {
                            c.close_after_flush = Some((reason.into(), now.at + CLOSE_GRACE));
                        }
                        self.mark_dirty(conn);
                    }
                    None => self.shard.handle_session_closed(now.time, key),
                }
            }
            more |= self.pump_links(now);
            if !more {
                return;
            }
        }
    }

    fn write_output(&mut self, now: Time, key: SessionKey) {
        let Some(conn) = self.endpoint.conn_of(key) else {
            return;
        };
        self.send_output(key, conn);
        let paused = self.endpoint.get(conn).is_some_and(|c| c.input_paused);
        if paused && self.shard.wants_input(key) {
            self.read_control(now, conn, key);
        }
    }

    fn send_output(&mut self, key: SessionKey, conn: ConnHandle) {
        let Some(c) = self.endpoint.get_mut(conn) else {
            return;
        };
        let out = self.shard.output(key);
        if out.is_empty() {
            return;
        }
        let len = out.len();
        let blocked = match c.write_control(out) {
            Some(Write::Sent(n)) => {
                self.shard.consume_output(key, n);
                n < len
            }
            None => true,
            Some(Write::Unsendable) => {
                // The client has not opened its control stream (it wrote nothing), or asked
                // the gateway to stop sending on it, so the output (the DISCONNECT of a
                // session that ended) cannot be sent: drop it, and the close that follows
                // carries the reason's code.
                self.shard.consume_output(key, len);
                false
            }
            Some(Write::Failed(e)) => {
                log::debug!("shard {}: stream_send: {e}", self.id.0);
                false
            }
        };
        if blocked && !c.blocked {
            c.blocked = true;
            self.blocked.push(conn);
        }
        self.mark_dirty(conn);
    }

    /// Sends what every touched connection has ready, re-arms its timer, and removes the ones
    /// that closed.
    async fn flush_connections(&mut self, now: Now, io: &mut Io) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &conn in &dirty {
            self.flush_connection(now, conn, io).await;
        }
        // Keep the list's allocation for the next turn.
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    async fn flush_connection(&mut self, now: Now, conn: ConnHandle, io: &mut Io) {
        let Some(c) = self.endpoint.get_mut(conn) else {
            return;
        };
        c.dirty = false;
        io.send_ready(c).await;
        c.unacked = 0;
        c.ack_by = None;
        if let Some((close, close_by)) = c.close_after_flush {
            let drained = match (c.session(), c.link()) {
                (Some(key), _) => self.shard.output(key).is_empty(),
                (None, Some(link)) => self.shard.link_output(link, LinkStream::Control).is_empty(),
                (None, None) => true,
            };
            let late = now.at >= close_by;
            let stopped = self.stop_by.is_some_and(|s| now.at >= s);
            if (drained || late || stopped) && !c.is_closed() {
                c.close(true, close.code, close.reason.as_bytes());
                c.close_after_flush = None;
                io.send_ready(c).await;
            }
        }
        let idle_by = c.heard + self.idle_timeouts.of(c);
        if c.is_closed() || now.time >= idle_by {
            // Closed, or not heard from for the idle timeout: gone without a word.
            self.remove(now.time, conn);
            return;
        }
        if !c.shrunk && now.time >= c.heard + SHRINK_AFTER {
            c.shrink_to_fit();
            match (c.session(), c.link()) {
                (Some(key), _) => self.shard.shrink_output(key),
                (None, Some(link)) => self.shard.shrink_link_output(link),
                (None, None) => {}
            }
        }
        if (c.session().is_some() || c.link().is_some()) && c.is_closing() {
            // Closing: the session or link ends now, not when the draining period does.
            self.detach(now.time, conn);
        }
        self.endpoint.refresh_cids(conn);
        self.rearm(conn, idle_by);
    }

    /// Sets the connection's timer to the earliest of quiche's timer, its close grace, the ACK
    /// it owes, when its buffers shrink and its idle timeout.
    fn rearm(&mut self, conn: ConnHandle, idle_by: Time) {
        let Some(c) = self.endpoint.get_mut(conn) else {
            return;
        };
        let origin = self.origin;
        let quic_by = c.timeout().map(|at| time_since(origin, at));
        let close_by = c.close_after_flush.map(|(_, at)| time_since(origin, at));
        let shrink_by = (!c.shrunk).then(|| c.heard + SHRINK_AFTER);
        let at = [quic_by, close_by, c.ack_by, shrink_by]
            .into_iter()
            .flatten()
            .fold(idle_by, Time::min);
        match c.timer {
            Some(key) if self.shard.reschedule(key, at) => {}
            _ => c.timer = Some(self.shard.schedule(at, conn.token())),
        }
    }

    fn remove(&mut self, now: Time, conn: ConnHandle) {
        self.detach(now, conn);
        if let Some(timer) = self.endpoint.remove(conn) {
            self.shard.unschedule(timer);
        }
    }

    /// Ends the connection's session or peer link, if it still has one; the connection itself
    /// may stay for its draining period.
    fn detach(&mut self, now: Time, conn: ConnHandle) {
        if let Some(key) = self.endpoint.detach(conn) {
            self.shard.handle_session_closed(now, key);
        }
        if let Some((link, end)) = self.endpoint.detach_link(conn) {
            self.shard.handle_link_closed(now, link, end);
        }
    }

    fn log_events(&mut self) {
        while let Some(event) = self.shard.poll_event() {
            match event {
                Event::Pruned { removed } => log::info!(
                    "shard {}: removed {removed} expired registrations",
                    self.id.0
                ),
                Event::Refused { reason } => crate::ratelog::refused(self.id, reason),
                Event::SlowConsumerEvicted => crate::ratelog::evicted(self.id),
                Event::UnsharedRealm { peer, realm } => log::warn!(
                    "peer {} serves realm {} with other tokens: the realm is not shared with it",
                    String::from_utf8_lossy(&peer),
                    String::from_utf8_lossy(&realm)
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_micros(50);

    #[test]
    fn a_shard_polls_while_its_idle_spells_are_short_and_sleeps_at_once_after_a_long_one() {
        let mut spin = Spin::new(LIMIT);
        assert_eq!(spin.budget(), LIMIT, "the first idle spell polls");
        // A datagram came while polling: the next spell polls too.
        spin.ended(Duration::from_micros(20), Duration::from_micros(20));
        assert_eq!(spin.budget(), LIMIT);
        // Nothing came: the spell polled its whole budget, then slept.
        spin.ended(Duration::from_millis(3), LIMIT);
        assert_eq!(spin.budget(), Duration::ZERO, "the next one sleeps at once");
        // A sleep that a datagram soon ended shows traffic again.
        spin.ended(Duration::from_micros(10), Duration::ZERO);
        assert_eq!(spin.budget(), LIMIT);
        assert_eq!(
            spin.spun,
            Duration::from_micros(70),
            "only the polling is counted"
        );
    }

    #[test]
    fn with_no_spin_a_shard_never_polls() {
        let mut spin = Spin::new(Duration::ZERO);
        assert_eq!(spin.budget(), Duration::ZERO);
        spin.ended(Duration::from_nanos(1), Duration::ZERO);
        assert_eq!(spin.budget(), Duration::ZERO);
        assert_eq!(spin.spun, Duration::ZERO);
    }
}
