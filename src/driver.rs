//! One shard's thread: a glommio executor pinned to its core, running a loop that owns the
//! core's UDP socket, its quiche connections and its [`Shard`].
//!
//! # One turn
//!
//! Read the clock once; receive a budget of datagram batches (`recvmmsg`) and feed them to
//! quiche, and the control stream's bytes to the shard; drain a budget of the inbox (messages
//! from other shards, datagrams forwarded to this shard, requests from the main thread); fire
//! the due timers of the shard's wheel, QUIC timers included; hand the shard's output to the
//! streams; send every packet quiche has ready (`sendmmsg`, many per call); move the shard's
//! outbox to the other shards' channels; then sleep.
//!
//! # Sleeping and waking
//!
//! A shard sleeps until the earliest of: its socket becomes readable (a one-byte `MSG_PEEK`
//! through glommio's io_uring), the next deadline of its wheel (a glommio timer), or its
//! doorbell. The doorbell is an [`AtomicWaker`] per shard: before sleeping a shard registers
//! its waker and checks its inbox once more; a sender pushes to the bounded crossbeam channel
//! and then wakes the doorbell, which crosses threads through glommio's foreign-wake path.
//! A busy shard has no waker registered, so waking it costs the sender nothing. An idle
//! gateway therefore uses no CPU, and a message to an idle shard is handled at once.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use arrayvec::ArrayVec;
use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures_lite::future::poll_fn;
use glommio::net::UdpSocket;
use glommio::timer::Timer;
use meshgate_shard::metrics::DropReason;
use meshgate_shard::router::ShardMsg;
use meshgate_shard::wheel::TimerKey;
use meshgate_shard::wire::Reason;
use meshgate_shard::{Event, SessionKey, Shard, ShardId, StreamEnd, Time};
use slab::Slab;

use crate::health::ShardReport;
use crate::net::{BatchRx, BatchTx, BATCH};

/// Length of the connection IDs the gateway chooses; byte 0 is the owning shard.
pub const CID_LEN: usize = 16;
type Cid = [u8; CID_LEN];
/// Connection IDs a connection holds at once: its first one, and those issued to replace the
/// ones the client retires (a client moving to a new address switches to a fresh one).
const MAX_CIDS: usize = 4;

/// The one bidirectional stream a client opens.
const CONTROL_STREAM: u64 = 0;
/// Datagram batches received per turn before other work gets its turn.
const RX_BATCHES_PER_TURN: usize = 8;
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
/// The smallest datagram that may carry a client's Initial (RFC 9000 14.1).
const MIN_INITIAL_DATAGRAM: usize = 1200;
/// How long a stopping shard waits for its connections to close.
const STOP_GRACE: Duration = Duration::from_millis(1500);
/// How long a session the shard ended may take to send its last output (its DISCONNECT)
/// before its connection is closed anyway: a client that reads nothing is closed all the same.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What travels on a shard's inbox.
pub struct Envelope {
    pub from: ShardId,
    pub body: Body,
}

pub enum Body {
    /// A message of the shard protocol.
    Shard(ShardMsg),
    /// A datagram that reached another shard's socket but belongs to a connection here.
    Datagram { data: Box<[u8]>, from: SocketAddr },
    /// A request for this shard's metrics.
    Report(std::sync::mpsc::SyncSender<ShardReport>),
    /// End every session and stop.
    Shutdown,
}

/// The channels and doorbells of every shard, shared by all threads.
pub struct Shared {
    inboxes: Vec<Sender<Envelope>>,
    bells: Vec<AtomicWaker>,
}

impl Shared {
    /// Bounded inboxes of `capacity` messages, one per shard.
    pub fn new(shards: usize, capacity: usize) -> (Arc<Shared>, Vec<Receiver<Envelope>>) {
        let (inboxes, receivers) = (0..shards)
            .map(|_| crossbeam_channel::bounded(capacity))
            .unzip();
        let bells = (0..shards).map(|_| AtomicWaker::new()).collect();
        (Arc::new(Shared { inboxes, bells }), receivers)
    }

    /// Queues an envelope for shard `to` and wakes it; gives the envelope back when the inbox
    /// is full.
    pub fn post(&self, to: ShardId, envelope: Envelope) -> Result<(), Envelope> {
        self.try_push(to, envelope)?;
        self.wake(to);
        Ok(())
    }

    fn try_push(&self, to: ShardId, envelope: Envelope) -> Result<(), Envelope> {
        match self.inboxes[to.index()].try_send(envelope) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) => Err(e),
        }
    }

    fn wake(&self, to: ShardId) {
        // Pairs with the fence between registering the waker and the last inbox check.
        fence(Ordering::SeqCst);
        self.bells[to.index()].wake();
    }
}

/// Everything a shard's thread starts with.
pub struct ShardStart {
    pub shard: Shard,
    pub socket: socket2::Socket,
    pub quic: quiche::Config,
    pub inbox: Receiver<Envelope>,
    pub shared: Arc<Shared>,
    /// `--max-handshakes`, counted for the whole gateway.
    pub max_handshakes: usize,
    /// `--idle-timeout`: a connection that has not been heard from for this long is dropped.
    pub idle_timeout: Duration,
    /// The clock origin the shard's `Time` counts from.
    pub origin: Instant,
    /// Told once the loop runs.
    pub ready: std::sync::mpsc::Sender<ShardId>,
}

struct Conn {
    /// Boxed: a quiche connection is several KiB, and the slab's spare capacity and the
    /// copies its growth makes would otherwise be in those units.
    q: Box<quiche::Connection>,
    /// The connection IDs the gateway issued that are still in use; the first is the one the
    /// connection was accepted with.
    scids: ArrayVec<Cid, MAX_CIDS>,
    /// The connection ID the client chose for its first packets.
    odcid: Vec<u8>,
    session: Option<SessionKey>,
    /// Holds a unit of the gateway's handshake count: accepted, no session yet.
    handshaking: bool,
    /// The shard took no more input when the control stream was last read.
    input_paused: bool,
    /// When a packet from the client was last processed: the idle timeout counts from here,
    /// whatever the gateway sends meanwhile.
    heard: Time,
    timer: Option<TimerKey>,
    /// The shard ended the session: close once its last output is sent, or at the instant
    /// given, whichever comes first.
    close_after_flush: Option<(Reason, Instant)>,
    /// In the `dirty` list.
    dirty: bool,
    /// Output is waiting for stream capacity.
    blocked: bool,
}

struct Driver {
    id: ShardId,
    shards: u16,
    shard: Shard,
    quic: quiche::Config,
    local: SocketAddr,
    conns: Slab<Conn>,
    by_cid: AHashMap<Cid, usize>,
    by_odcid: AHashMap<Vec<u8>, usize>,
    /// The connection of each session, indexed by `SessionKey::index`.
    by_session: Vec<Option<usize>>,
    handshakes: usize,
    max_handshakes: usize,
    idle_timeout: Duration,
    dirty: Vec<usize>,
    blocked: Vec<usize>,
    shared: Arc<Shared>,
    origin: Instant,
    scratch: Box<[u8]>,
    stop_by: Option<Instant>,
    refused_handshakes: u64,
    /// Connections accepted in this turn.
    accepted: usize,
    /// Initials over this turn's accept budget, oldest first.
    deferred: VecDeque<(Box<[u8]>, SocketAddr)>,
}

/// Runs a shard until it is told to stop and its connections are closed.
pub async fn run(start: ShardStart) {
    // SAFETY: the descriptor comes from a socket this function owns from now on.
    let socket = Rc::new(unsafe { UdpSocket::from_raw_fd(start.socket.into_raw_fd()) });
    let fd = socket.as_raw_fd();
    let local = match socket.local_addr() {
        Ok(a) => a,
        Err(e) => {
            log::error!("shard {}: socket has no address: {e}", start.shard.id().0);
            return;
        }
    };
    let id = start.shard.id();
    let mut d = Driver {
        id,
        shards: start.shard.config().shards,
        shard: start.shard,
        quic: start.quic,
        local,
        conns: Slab::new(),
        by_cid: AHashMap::new(),
        by_odcid: AHashMap::new(),
        by_session: Vec::new(),
        handshakes: 0,
        max_handshakes: start.max_handshakes,
        idle_timeout: start.idle_timeout,
        dirty: Vec::new(),
        blocked: Vec::new(),
        shared: start.shared,
        origin: start.origin,
        scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
        stop_by: None,
        refused_handshakes: 0,
        accepted: 0,
        deferred: VecDeque::new(),
    };
    let inbox = start.inbox;
    let _ = start.ready.send(id);

    let mut rx = BatchRx::new();
    let mut tx = BatchTx::new();
    let mut readable: Option<Pin<Box<dyn Future<Output = ()>>>> = None;

    loop {
        let now_instant = Instant::now();
        let now = d.time(now_instant);
        let mut more = false;

        // Initials left over from earlier turns, then new datagrams.
        d.accepted = 0;
        while d.accepted < ACCEPTS_PER_TURN {
            let Some((mut data, from)) = d.deferred.pop_front() else {
                break;
            };
            d.on_datagram(now, &mut data, from, false, &mut tx);
        }
        for turn in 0..RX_BATCHES_PER_TURN {
            let n = match rx.recv(fd) {
                Ok(n) => n,
                Err(e) => {
                    log::warn!("shard {}: recvmmsg: {e}", id.0);
                    0
                }
            };
            for i in 0..n {
                let (buf, from) = rx.get(i);
                if let Some(from) = from {
                    d.on_datagram(now, buf, from, false, &mut tx);
                }
            }
            if n < BATCH {
                break;
            }
            more |= turn + 1 == RX_BATCHES_PER_TURN;
        }

        // Inbox.
        for _ in 0..INBOX_PER_TURN {
            match inbox.try_recv() {
                Ok(envelope) => d.on_envelope(now, now_instant, envelope, &mut tx),
                Err(_) => break,
            }
        }
        more |= !inbox.is_empty() || !d.deferred.is_empty();

        // Timers, then everything they and the input produced.
        d.shard.handle_timeout(now);
        while let Some(meshgate_shard::DriverToken(token)) = d.shard.poll_driver_timer() {
            if let Some(c) = d.conns.get_mut(token as usize) {
                c.timer = None;
                c.q.on_timeout();
                d.mark_dirty(token as usize);
            }
        }
        d.pump_output(now);
        d.flush_connections(now, &socket, &mut tx).await;
        flush(&mut tx, &socket).await;
        d.flush_outbox();
        d.log_events();

        if let Some(stop_by) = d.stop_by {
            // Every connection has sent its CONNECTION_CLOSE: nothing is left to say.
            let all_closed = d
                .conns
                .iter()
                .all(|(_, c)| c.q.local_error().is_some() || c.q.is_closed());
            if all_closed || now_instant >= stop_by {
                break;
            }
        }
        if more {
            glommio::yield_if_needed().await;
            continue;
        }

        // Sleep until a datagram, a message or the next deadline.
        let deadline = d
            .shard
            .next_deadline()
            .map(|t| d.origin + Duration::from_millis(t.as_millis()));
        let deadline = match (deadline, d.stop_by) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut timer = deadline.map(|at| Timer::new(at.saturating_duration_since(Instant::now())));
        if readable.is_none() {
            let s = socket.clone();
            readable = Some(Box::pin(async move {
                let mut b = [0u8; 1];
                let _ = s.peek_from(&mut b).await;
            }));
        }
        let bell = &d.shared.bells[id.index()];
        poll_fn(|cx| {
            if let Some(r) = readable.as_mut() {
                if r.as_mut().poll(cx).is_ready() {
                    readable = None;
                    return Poll::Ready(());
                }
            }
            bell.register(cx.waker());
            fence(Ordering::SeqCst);
            if !inbox.is_empty() {
                return Poll::Ready(());
            }
            if let Some(t) = timer.as_mut() {
                if Pin::new(t).poll(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await;
        bell.take();
    }
    log::debug!("shard {} stopped", id.0);
}

/// Sends every queued datagram; when the socket is full, waits for room by sending one through
/// glommio (which parks until the socket is writable).
async fn flush(tx: &mut BatchTx, socket: &UdpSocket) {
    loop {
        match tx.flush(socket.as_raw_fd()) {
            Ok(true) => return,
            Ok(false) => {
                let Some((packet, to)) = tx.first() else {
                    return;
                };
                let packet = packet.to_vec();
                let _ = socket.send_to(&packet, to).await;
                tx.drop_front(1);
            }
            Err(e) => {
                log::warn!("sendmmsg: {e}");
                return;
            }
        }
    }
}

impl Driver {
    /// The shard's time of an instant: milliseconds since the origin, rounded up so that a
    /// timer never fires early.
    fn time(&self, at: Instant) -> Time {
        time_since(self.origin, at)
    }

    fn mark_dirty(&mut self, idx: usize) {
        if let Some(c) = self.conns.get_mut(idx) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(idx);
            }
        }
    }

    fn on_envelope(
        &mut self,
        now: Time,
        now_instant: Instant,
        envelope: Envelope,
        tx: &mut BatchTx,
    ) {
        match envelope.body {
            Body::Shard(msg) => self.shard.handle_shard_message(now, envelope.from, msg),
            Body::Datagram { mut data, from } => self.on_datagram(now, &mut data, from, true, tx),
            Body::Report(reply) => {
                let metrics = self.shard.metrics();
                let report = ShardReport {
                    shard: self.id.0,
                    handshakes: self.handshakes as u64 + metrics.awaiting_connect,
                    peers: 0,
                    refused_handshakes: self.refused_handshakes,
                    metrics,
                };
                let _ = reply.try_send(report);
            }
            Body::Shutdown => {
                if self.stop_by.is_none() {
                    self.stop_by = Some(now_instant + STOP_GRACE);
                    self.shard.shutdown(now);
                    let idle: Vec<usize> = self
                        .conns
                        .iter()
                        .filter(|(_, c)| c.session.is_none())
                        .map(|(i, _)| i)
                        .collect();
                    for idx in idle {
                        if let Some(c) = self.conns.get_mut(idx) {
                            let _ = c.q.close(false, 0x0, b"shutting down");
                        }
                        self.mark_dirty(idx);
                    }
                }
            }
        }
    }

    fn on_datagram(
        &mut self,
        now: Time,
        buf: &mut [u8],
        from: SocketAddr,
        forwarded: bool,
        tx: &mut BatchTx,
    ) {
        let Ok(hdr) = quiche::Header::from_slice(buf, CID_LEN) else {
            return;
        };
        if hdr.ty == quiche::Type::Initial && buf.len() < MIN_INITIAL_DATAGRAM {
            // RFC 9000 14.1: a client pads every datagram with an Initial to 1,200 bytes; a
            // shorter one is discarded, which also keeps the answer to an unvalidated address
            // small.
            self.shard.count_drop(DropReason::ShortInitial);
            return;
        }
        let dcid: &[u8] = &hdr.dcid;
        let known = <&Cid>::try_from(dcid)
            .ok()
            .and_then(|c| self.by_cid.get(c))
            .or_else(|| self.by_odcid.get(dcid));
        let idx = match known {
            Some(&idx) => idx,
            None => {
                if hdr.ty != quiche::Type::Initial {
                    // A connection ID the gateway chose names its shard in byte 0.
                    if dcid.len() == CID_LEN && !forwarded {
                        let owner = ShardId(u16::from(dcid[0]));
                        if owner != self.id && owner.0 < self.shards {
                            let body = Body::Datagram {
                                data: buf.into(),
                                from,
                            };
                            let envelope = Envelope {
                                from: self.id,
                                body,
                            };
                            if self.shared.post(owner, envelope).is_err() {
                                self.shard.count_drop(DropReason::InboxFull);
                            }
                        }
                    }
                    return;
                }
                if self.accepted >= ACCEPTS_PER_TURN {
                    if self.deferred.len() < DEFERRED_INITIALS {
                        self.deferred.push_back((buf.into(), from));
                    } else {
                        self.shard.count_drop(DropReason::InitialBacklog);
                    }
                    return;
                }
                self.accepted += 1;
                match self.accept(now, &hdr, from, tx) {
                    Some(idx) => idx,
                    None => return,
                }
            }
        };
        let local = self.local;
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        // Undecryptable or stray packets are dropped; a fatal error closes the connection,
        // which the flush that follows notices.
        if c.q.recv(buf, quiche::RecvInfo { from, to: local }).is_ok() {
            c.heard = now;
        }
        if c.handshaking && c.q.is_established() {
            // The session takes the connection's place in the gateway's handshake count until
            // its CONNECT is admitted.
            let key = self.shard.handle_session_open(now);
            self.shard.config().counts.handshakes.give_back();
            self.handshakes = self.handshakes.saturating_sub(1);
            c.handshaking = false;
            c.session = Some(key);
            if self.by_session.len() <= key.index() {
                self.by_session.resize(key.index() + 1, None);
            }
            self.by_session[key.index()] = Some(idx);
            // The client switched to the gateway's connection ID when it first heard back,
            // before the handshake could end: its own is no longer needed to find this one.
            self.by_odcid.remove(&c.odcid);
            c.odcid = Vec::new();
        }
        if let Some(key) = c.session {
            for stream in c.q.readable() {
                if stream != CONTROL_STREAM {
                    let _ = c.q.stream_shutdown(stream, quiche::Shutdown::Read, 0);
                }
            }
            self.read_control(now, idx, key);
            if self.conns.get(idx).is_some_and(|c| is_closing(&c.q)) {
                // A CONNECTION_CLOSE (or a fatal error) ends the session at once: a datagram
                // read next in this very batch no longer finds it.
                self.detach(now, idx);
            }
        }
        self.mark_dirty(idx);
    }

    /// Hands the control stream's bytes to the shard while it takes input. When it does not
    /// (the session's output is over its bound), the bytes stay in quiche, whose flow control
    /// then holds the client back; reading resumes once the output drains.
    fn read_control(&mut self, now: Time, idx: usize, key: SessionKey) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        c.input_paused = false;
        while c.q.stream_readable(CONTROL_STREAM) {
            if !self.shard.wants_input(key) {
                c.input_paused = true;
                break;
            }
            match c.q.stream_recv(CONTROL_STREAM, &mut self.scratch) {
                Ok((n, fin)) => {
                    self.shard.handle_stream_data(now, key, &self.scratch[..n]);
                    if fin {
                        self.shard.handle_stream_end(now, key, StreamEnd::Finished);
                        break;
                    }
                }
                Err(quiche::Error::Done) => break,
                Err(quiche::Error::StreamReset(_)) => {
                    self.shard.handle_stream_end(now, key, StreamEnd::Reset);
                    break;
                }
                Err(e) => {
                    log::debug!("shard {}: stream_recv: {e}", self.id.0);
                    break;
                }
            }
        }
        if let Err(quiche::Error::StreamStopped(_)) = c.q.stream_capacity(CONTROL_STREAM) {
            self.shard
                .handle_stream_end(now, key, StreamEnd::StopSending);
        }
    }

    /// A new connection, unless the shard is stopping or has too many handshakes.
    fn accept(
        &mut self,
        now: Time,
        hdr: &quiche::Header<'_>,
        from: SocketAddr,
        tx: &mut BatchTx,
    ) -> Option<usize> {
        if self.stop_by.is_some() {
            return None;
        }
        if !quiche::version_is_supported(hdr.version) {
            if !tx.is_full() {
                if let Ok(len) = quiche::negotiate_version(&hdr.scid, &hdr.dcid, tx.next_slot()) {
                    tx.commit(len, from);
                }
            }
            return None;
        }
        let counts = self.shard.config().counts.clone();
        if !counts.handshakes.try_take(self.max_handshakes) {
            self.refused_handshakes += 1;
            if let Some(len) = crate::refuse::connection_refused(hdr, tx.next_slot()) {
                tx.commit(len, from);
            }
            return None;
        }
        let Some(scid) = self.fresh_cid() else {
            counts.handshakes.give_back();
            return None;
        };
        let q = match quiche::accept(
            &quiche::ConnectionId::from_ref(&scid),
            None,
            self.local,
            from,
            &mut self.quic,
        ) {
            Ok(q) => Box::new(q),
            Err(e) => {
                log::debug!("shard {}: accept failed: {e}", self.id.0);
                counts.handshakes.give_back();
                return None;
            }
        };
        let mut scids = ArrayVec::new();
        scids.push(scid);
        let idx = self.conns.insert(Conn {
            q,
            scids,
            odcid: hdr.dcid.to_vec(),
            session: None,
            handshaking: true,
            input_paused: false,
            heard: now,
            timer: None,
            close_after_flush: None,
            dirty: false,
            blocked: false,
        });
        self.by_cid.insert(scid, idx);
        self.by_odcid.insert(hdr.dcid.to_vec(), idx);
        self.handshakes += 1;
        Some(idx)
    }

    /// Hands the shard's output to the streams, and notes the sessions it ended.
    fn pump_output(&mut self, now: Time) {
        let blocked = std::mem::take(&mut self.blocked);
        for idx in blocked {
            if let Some(key) = self.conns.get_mut(idx).and_then(|c| {
                c.blocked = false;
                c.session
            }) {
                self.write_output(now, key);
            }
        }
        while let Some(key) = self.shard.poll_ready() {
            self.write_output(now, key);
        }
        while let Some((key, reason)) = self.shard.poll_close() {
            match self.conn_of(key) {
                Some(idx) => {
                    self.conns[idx].close_after_flush =
                        Some((reason, Instant::now() + CLOSE_GRACE));
                    self.mark_dirty(idx);
                }
                None => self.shard.handle_session_closed(now, key),
            }
        }
    }

    fn conn_of(&self, key: SessionKey) -> Option<usize> {
        let idx = (*self.by_session.get(key.index())?)?;
        (self.conns.get(idx)?.session == Some(key)).then_some(idx)
    }

    fn write_output(&mut self, now: Time, key: SessionKey) {
        let Some(idx) = self.conn_of(key) else { return };
        self.send_output(key, idx);
        if self.conns[idx].input_paused && self.shard.wants_input(key) {
            self.read_control(now, idx, key);
        }
    }

    fn send_output(&mut self, key: SessionKey, idx: usize) {
        let c = &mut self.conns[idx];
        let out = self.shard.output(key);
        if out.is_empty() {
            return;
        }
        let len = out.len();
        match c.q.stream_send(CONTROL_STREAM, out, false) {
            Ok(n) => {
                self.shard.consume_output(key, n);
                if n < len && !c.blocked {
                    c.blocked = true;
                    self.blocked.push(idx);
                }
            }
            Err(quiche::Error::Done) => {
                if !c.blocked {
                    c.blocked = true;
                    self.blocked.push(idx);
                }
            }
            Err(quiche::Error::InvalidStreamState(_) | quiche::Error::StreamStopped(_)) => {
                // The client has not opened its control stream (it wrote nothing), or asked
                // the gateway to stop sending on it, so the output (the DISCONNECT of a session
                // that ended) cannot be sent: drop it, and the close that follows carries the
                // reason's code.
                self.shard.consume_output(key, len);
            }
            Err(e) => {
                log::debug!("shard {}: stream_send: {e}", self.id.0);
                let _ = c.q.close(false, 0x1, b"stream error");
            }
        }
        self.mark_dirty(idx);
    }

    /// Sends what every touched connection has ready, re-arms its timer, and removes the ones
    /// that closed.
    async fn flush_connections(&mut self, now: Time, socket: &UdpSocket, tx: &mut BatchTx) {
        let dirty = std::mem::take(&mut self.dirty);
        for &idx in &dirty {
            let Some(c) = self.conns.get_mut(idx) else {
                continue;
            };
            c.dirty = false;
            send_ready(&mut c.q, tx, socket).await;
            if let Some((reason, close_by)) = c.close_after_flush {
                let drained = c
                    .session
                    .is_none_or(|key| self.shard.output(key).is_empty());
                let c = &mut self.conns[idx];
                let late = Instant::now() >= close_by;
                if (drained || late || self.stop_by.is_some_and(|s| Instant::now() >= s))
                    && !c.q.is_closed()
                {
                    let _ =
                        c.q.close(true, reason.close_code(), reason.as_str().as_bytes());
                    c.close_after_flush = None;
                    send_ready(&mut c.q, tx, socket).await;
                }
            }
            let c = &mut self.conns[idx];
            let idle_by = c.heard + self.idle_timeout;
            if c.q.is_closed() || now >= idle_by {
                // Closed, or not heard from for the idle timeout: gone without a word.
                self.remove(now, idx);
                continue;
            }
            if c.session.is_some() && is_closing(&c.q) {
                // Closing: the session ends now, not when the draining period does.
                self.detach(now, idx);
            }
            self.refresh_cids(idx);
            let c = &mut self.conns[idx];
            let origin = self.origin;
            let quic_by = c.q.timeout_instant().map(|at| time_since(origin, at));
            let close_by = c.close_after_flush.map(|(_, at)| time_since(origin, at));
            let at = [quic_by, close_by]
                .into_iter()
                .flatten()
                .fold(idle_by, Time::min);
            match c.timer {
                Some(key) if self.shard.reschedule(key, at) => {}
                _ => {
                    let token = meshgate_shard::DriverToken(idx as u64);
                    c.timer = Some(self.shard.schedule(at, token));
                }
            }
        }
        // Keep the list's allocation for the next turn.
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn remove(&mut self, now: Time, idx: usize) {
        self.detach(now, idx);
        let c = self.conns.remove(idx);
        for scid in &c.scids {
            self.by_cid.remove(scid);
        }
        self.by_odcid.remove(&c.odcid);
        if let Some(key) = c.timer {
            self.shard.unschedule(key);
        }
        if c.handshaking {
            self.handshakes = self.handshakes.saturating_sub(1);
            self.shard.config().counts.handshakes.give_back();
        }
    }

    /// Ends the connection's session, if it still has one; the connection itself may stay
    /// for its draining period.
    fn detach(&mut self, now: Time, idx: usize) {
        let Some(key) = self.conns.get_mut(idx).and_then(|c| c.session.take()) else {
            return;
        };
        if let Some(slot) = self.by_session.get_mut(key.index()) {
            *slot = None;
        }
        self.shard.handle_session_closed(now, key);
    }

    /// A new connection ID of this shard (byte 0 names it), unused so far.
    fn fresh_cid(&self) -> Option<Cid> {
        let mut cid: Cid = [0; CID_LEN];
        getrandom::getrandom(&mut cid).ok()?;
        cid[0] = self.id.0 as u8;
        (!self.by_cid.contains_key(&cid)).then_some(cid)
    }

    /// Forgets the connection IDs the client retired and issues fresh ones while it can take
    /// more, so that a client can move to a new address again and again (each move uses an
    /// unused ID). Drains quiche's path events, which nothing else reads.
    fn refresh_cids(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        while let Some(retired) = c.q.retired_scid_next() {
            if let Ok(cid) = Cid::try_from(retired.as_ref()) {
                self.by_cid.remove(&cid);
                c.scids.retain(|s| *s != cid);
            }
        }
        while c.q.path_event_next().is_some() {}
        loop {
            let c = &self.conns[idx];
            let open = c.q.is_established() && c.q.local_error().is_none();
            if !open || c.q.peer_error().is_some() || c.q.scids_left() == 0 || c.scids.is_full() {
                return;
            }
            let mut token = [0u8; 16];
            let Some(cid) = self.fresh_cid() else { return };
            if getrandom::getrandom(&mut token).is_err() {
                return;
            }
            let c = &mut self.conns[idx];
            let cid_ref = quiche::ConnectionId::from_ref(&cid);
            if c.q
                .new_scid(&cid_ref, u128::from_ne_bytes(token), false)
                .is_err()
            {
                return;
            }
            c.scids.push(cid);
            self.by_cid.insert(cid, idx);
        }
    }

    /// Moves the shard's outbox to the other shards' inboxes, in order, leaving what does not
    /// fit for the next turn; wakes each shard that got something.
    fn flush_outbox(&mut self) {
        for to in 0..self.shards {
            let to = ShardId(to);
            if to == self.id {
                continue;
            }
            let mut sent = false;
            let outbox = self.shard.outbox(to);
            while let Some(msg) = outbox.pop_front() {
                match self.shared.try_push(
                    to,
                    Envelope {
                        from: self.id,
                        body: Body::Shard(msg),
                    },
                ) {
                    Ok(()) => sent = true,
                    Err(Envelope {
                        body: Body::Shard(msg),
                        ..
                    }) => {
                        outbox.push_front(msg);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if sent {
                self.shared.wake(to);
            }
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
            }
        }
    }
}

/// Whether the connection is closing or draining: no session lives on it any longer.
fn is_closing(q: &quiche::Connection) -> bool {
    q.is_draining() || q.peer_error().is_some() || q.local_error().is_some() || q.is_closed()
}

/// Milliseconds from `origin` to `at`, rounded up so that a timer never fires early.
fn time_since(origin: Instant, at: Instant) -> Time {
    let d = at.saturating_duration_since(origin);
    Time::from_millis(d.as_millis() as u64 + u64::from(!d.subsec_nanos().is_multiple_of(1_000_000)))
}

/// Writes every packet a connection has ready into the batch, sending full batches.
async fn send_ready(q: &mut quiche::Connection, tx: &mut BatchTx, socket: &UdpSocket) {
    loop {
        if tx.is_full() {
            flush(tx, socket).await;
        }
        match q.send(tx.next_slot()) {
            Ok((len, info)) => tx.commit(len, info.to),
            Err(quiche::Error::Done) => return,
            Err(e) => {
                log::debug!("quiche send: {e}");
                let _ = q.close(false, 0x1, b"internal error");
                return;
            }
        }
    }
}
