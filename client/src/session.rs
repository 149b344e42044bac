//! The state behind a [`Client`](crate::Client): the send queue, the requests waiting for an
//! answer, the subscriptions and procedures, and what is done with each frame received. The
//! `connection` module runs the connections themselves.
//!
//! Locks are taken in one order, and none is held across an await: `subs`, then `procs`, then
//! `pending`, then `out`; `running` is never held with another.

use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use meshgate_protocol::names::pattern_matches;
use meshgate_protocol::wire::msgpack::Reader;
use meshgate_protocol::wire::{
    Call, CallIdRef, Cancel, Disconnect, ErrorMsg, Message, Outcome, Ping, Pong, Publish, Raw,
    Reason, Register, Reply, Strings, Subscribe, Unregister, Unsubscribe, HEADER_LEN,
};
use meshgate_protocol::NodeId;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::task::AbortHandle;

use crate::config::{ClientConfig, Overflow};
use crate::error::{CallError, ClientError, ProcedureError, ServerError};

mod connection;

use connection::establish;
pub(crate) use connection::{supervise, Established};

/// What a registered procedure runs for each call: the arguments in, the result out, both
/// MessagePack.
pub(crate) type Handler = Arc<
    dyn Fn(Vec<u8>) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, ProcedureError>> + Send>>
        + Send
        + Sync,
>;

/// Where the client's session stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// A session is established.
    Connected {
        /// 1 for the first session, one more after each reconnection.
        session: u64,
        /// The gateway's node id, from its answer to CONNECT.
        server: NodeId,
    },
    /// The connection was lost and the client is connecting again.
    Reconnecting {
        /// Attempts made since the loss, starting at 0.
        attempt: u32,
    },
    /// The session is over for good.
    Closed {
        /// Why, when the gateway said so (`normal` after [`Client::close`](crate::Client::close));
        /// `None` when the connection was lost without one and the client does not reconnect.
        reason: Option<Reason>,
    },
}

/// A message received on a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The topic it was published to (invalid UTF-8 replaced by U+FFFD).
    pub topic: String,
    /// The published bytes.
    pub payload: Vec<u8>,
    /// The publisher's node id (all zero if the gateway left it out; meshgate always sets it).
    pub publisher: NodeId,
}

/// The least the gateway's deadline for a call exceeds the caller's own, so that a call
/// without a reply in time fails here with [`CallError::Timeout`] rather than racing the
/// gateway's `timeout` error.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);
/// Patterns per SUBSCRIBE frame when subscriptions are replayed.
const REPLAY_CHUNK: usize = 256;
/// ERROR frames kept for `errors()` receivers that fall behind.
const ERRORS_KEPT: usize = 256;

/// The state shared by a client's handles, its tasks and its subscriptions.
pub(crate) struct Shared {
    pub(crate) config: ClientConfig,
    quic: quinn::ClientConfig,
    endpoint: quinn::Endpoint,
    /// The current connection, so that a close can be forced.
    conn: Mutex<Option<quinn::Connection>>,
    out: Mutex<Outbox>,
    /// Wakes the writer: frames were queued.
    out_ready: Notify,
    /// Wakes senders waiting for room in the queue.
    out_drained: Notify,
    pending: Mutex<Pending>,
    subs: Mutex<Subs>,
    procs: Mutex<AHashMap<Box<[u8]>, Handler>>,
    /// Handlers running for calls received, by the gateway's call id.
    running: Mutex<AHashMap<OwnedCallId, AbortHandle>>,
    next_id: AtomicU64,
    pub(crate) state: watch::Sender<ConnectionState>,
    pub(crate) errors: broadcast::Sender<ServerError>,
    closing: AtomicBool,
    close_requested: Notify,
}

/// Frames queued for the writer, and whether a connection can take them.
struct Outbox {
    buf: Vec<u8>,
    link: Link,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// A session is established; the writer drains the queue.
    Up,
    /// Reconnecting: frames wait in the queue for the next session.
    Down,
    /// DISCONNECT is queued; nothing more is accepted.
    Closing,
    Closed(Option<Reason>),
}

impl Link {
    /// The error of an operation refused in this state, if any.
    fn refusal(self) -> Option<ClientError> {
        match self {
            Link::Up | Link::Down => None,
            Link::Closing => Some(ClientError::Closed {
                reason: Reason::Normal,
            }),
            Link::Closed(Some(reason)) => Some(ClientError::Closed { reason }),
            Link::Closed(None) => Some(ClientError::Disconnected),
        }
    }
}

impl Outbox {
    /// Appends one frame, unless its payload is over `max_frame`.
    fn push(&mut self, msg: &Message<'_>, max_frame: u32) -> Result<(), ClientError> {
        let start = self.buf.len();
        msg.encode(&mut self.buf);
        let len = self.buf.len() - start - HEADER_LEN;
        if len > max_frame as usize {
            self.buf.truncate(start);
            return Err(ClientError::FrameTooLarge {
                len,
                max: max_frame,
            });
        }
        Ok(())
    }
}

/// Requests waiting for their answer, by the id the client gave them.
#[derive(Default)]
struct Pending {
    calls: AHashMap<u64, oneshot::Sender<Result<Vec<u8>, CallError>>>,
    pings: AHashMap<u64, PingWaiter>,
}

struct PingWaiter {
    tx: oneshot::Sender<Result<Vec<ServerError>, ClientError>>,
    /// ERROR frames received while waiting, when the waiter collects them.
    errors: Option<Vec<ServerError>>,
}

/// A call to enter in `pending` in the same critical section that queues its frame.
struct Track(u64, oneshot::Sender<Result<Vec<u8>, CallError>>);

#[derive(Default)]
struct Subs {
    next_id: u64,
    entries: Vec<SubEntry>,
    /// How many subscriptions hold each pattern.
    held: AHashMap<Box<str>, usize>,
}

struct SubEntry {
    id: u64,
    /// The patterns, matched against each delivery's topic.
    texts: Vec<Box<str>>,
    tx: mpsc::Sender<Delivery>,
    dropped: Arc<AtomicU64>,
}

/// A delivery waiting for room in its subscription's buffer.
type Blocked = (mpsc::Sender<Delivery>, Delivery);

/// What the reader task carries from one frame to the next.
#[derive(Default)]
struct ReadContext {
    /// The reason of a DISCONNECT received.
    disconnect: Option<Reason>,
    /// Deliveries to wait with before the next frame.
    blocked: Vec<Blocked>,
}

/// A `call_id` received from the gateway, kept to answer and to match a CANCEL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum OwnedCallId {
    Uint(u64),
    Int(i64),
    Bytes(Box<[u8]>),
}

impl OwnedCallId {
    fn new(id: CallIdRef<'_>) -> OwnedCallId {
        match id {
            CallIdRef::Uint(n) => OwnedCallId::Uint(n),
            CallIdRef::Int(n) => OwnedCallId::Int(n),
            CallIdRef::Bytes(b) => OwnedCallId::Bytes(b.into()),
        }
    }

    fn as_wire(&self) -> CallIdRef<'_> {
        match self {
            OwnedCallId::Uint(n) => CallIdRef::Uint(*n),
            OwnedCallId::Int(n) => CallIdRef::Int(*n),
            OwnedCallId::Bytes(b) => CallIdRef::Bytes(b),
        }
    }
}

/// Locks a mutex; a panic while it was held leaves tables that are still consistent (every
/// critical section here only inserts, removes or appends), so a poisoned lock is taken over.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `bytes` is exactly one MessagePack value.
pub(crate) fn is_one_value(bytes: &[u8]) -> bool {
    let mut r = Reader::new(bytes);
    r.skip().is_ok() && r.is_empty()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Shared {
    /// Connects: the QUIC handshake, the control stream, CONNECT and the gateway's answer.
    pub(crate) async fn connect(
        config: ClientConfig,
    ) -> Result<(Arc<Shared>, Established), ClientError> {
        let quic = crate::tls::quic_config(&config)?;
        let bind: std::net::SocketAddr = if config.server.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind)?;
        let est = establish(&config, &endpoint, &quic).await?;
        let (state, _) = watch::channel(ConnectionState::Connected {
            session: 1,
            server: est.server,
        });
        let shared = Arc::new(Shared {
            config,
            quic,
            endpoint,
            conn: Mutex::new(Some(est.conn.clone())),
            out: Mutex::new(Outbox {
                buf: Vec::new(),
                link: Link::Up,
            }),
            out_ready: Notify::new(),
            out_drained: Notify::new(),
            pending: Mutex::new(Pending::default()),
            subs: Mutex::new(Subs::default()),
            procs: Mutex::new(AHashMap::new()),
            running: Mutex::new(AHashMap::new()),
            next_id: AtomicU64::new(1),
            state,
            errors: broadcast::channel(ERRORS_KEPT).0,
            closing: AtomicBool::new(false),
            close_requested: Notify::new(),
        });
        Ok((shared, est))
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    // -------------------------------------------------------------------------------------
    // Sending
    // -------------------------------------------------------------------------------------

    /// Queues a frame, waiting while the queue is over `max_queued_bytes`.
    pub(crate) async fn send(&self, msg: &Message<'_>) -> Result<(), ClientError> {
        self.enqueue(msg, None).await
    }

    async fn enqueue(
        &self,
        msg: &Message<'_>,
        mut track: Option<Track>,
    ) -> Result<(), ClientError> {
        loop {
            if self.try_push(msg, &mut track)? {
                return Ok(());
            }
            let drained = self.out_drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.try_push(msg, &mut track)? {
                return Ok(());
            }
            drained.await;
        }
    }

    /// Queues the frame if the queue has room (true), entering `track` in `pending` at once.
    fn try_push(&self, msg: &Message<'_>, track: &mut Option<Track>) -> Result<bool, ClientError> {
        let mut pending = track.is_some().then(|| lock(&self.pending));
        let mut out = lock(&self.out);
        if let Some(e) = out.link.refusal() {
            return Err(e);
        }
        if out.buf.len() >= self.config.max_queued_bytes {
            return Ok(false);
        }
        out.push(msg, self.config.max_frame)?;
        if let (Some(p), Some(Track(id, tx))) = (pending.as_mut(), track.take()) {
            p.calls.insert(id, tx);
        }
        drop(out);
        drop(pending);
        self.out_ready.notify_one();
        Ok(true)
    }

    /// Queues a frame whatever the queue holds: answers and control frames, which are small and
    /// must not wait behind publishers.
    fn send_now(&self, msg: &Message<'_>) -> Result<(), ClientError> {
        let mut out = lock(&self.out);
        if let Some(e) = out.link.refusal() {
            return Err(e);
        }
        out.push(msg, self.config.max_frame)?;
        drop(out);
        self.out_ready.notify_one();
        Ok(())
    }

    // -------------------------------------------------------------------------------------
    // Requests
    // -------------------------------------------------------------------------------------

    /// Sends CALL and waits for its REPLY.
    pub(crate) async fn call(
        &self,
        procedure: &str,
        args: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        if !is_one_value(args) {
            return Err(CallError::InvalidArgs);
        }
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        let _forget = Forget {
            shared: self,
            id,
            call: true,
        };
        let gateway_deadline = timeout.saturating_add((timeout / 10).max(DEADLINE_MARGIN));
        let timeout_ms = u64::try_from(gateway_deadline.as_millis()).unwrap_or(u64::MAX);
        let msg = Message::Call(Call {
            procedure: procedure.as_bytes(),
            args: Raw(args),
            call_id: Some(CallIdRef::Uint(id)),
            timeout_ms: Some(timeout_ms),
        });
        let work = async {
            self.enqueue(&msg, Some(Track(id, tx))).await?;
            rx.await.unwrap_or(Err(CallError::Disconnected))
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    /// Sends PING and waits for its PONG: then everything sent before is in effect at the
    /// gateway.
    pub(crate) async fn barrier(&self) -> Result<(), ClientError> {
        let pong = self.expect_pong(false);
        self.await_pong(pong).await.map(drop)
    }

    /// As [`Shared::barrier`], across the gateway mesh: PING with `mesh` true.
    pub(crate) async fn mesh_barrier(&self) -> Result<(), ClientError> {
        let pong = self.expect_pong(false);
        self.await_ping(pong, true).await.map(drop)
    }

    /// Enters a PONG waiter ahead of the frames it follows; with `collect`, it gathers the
    /// ERROR frames received from now on, including those answering these frames.
    pub(crate) fn expect_pong(&self, collect: bool) -> PongWait<'_> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        let waiter = PingWaiter {
            tx,
            errors: collect.then(Vec::new),
        };
        lock(&self.pending).pings.insert(id, waiter);
        PongWait {
            rx,
            forget: Forget {
                shared: self,
                id,
                call: false,
            },
        }
    }

    /// Sends the PING of `pong` and waits for its PONG; returns the ERROR frames collected.
    pub(crate) async fn await_pong(
        &self,
        pong: PongWait<'_>,
    ) -> Result<Vec<ServerError>, ClientError> {
        self.await_ping(pong, false).await
    }

    async fn await_ping(
        &self,
        pong: PongWait<'_>,
        mesh: bool,
    ) -> Result<Vec<ServerError>, ClientError> {
        let work = async {
            let ping = Message::Ping(Ping {
                timestamp: pong.forget.id,
                mesh,
            });
            self.send(&ping).await?;
            pong.rx.await.unwrap_or(Err(ClientError::Disconnected))
        };
        tokio::time::timeout(self.config.request_timeout, work)
            .await
            .unwrap_or(Err(ClientError::Timeout))
    }

    // -------------------------------------------------------------------------------------
    // Subscriptions and registrations
    // -------------------------------------------------------------------------------------

    /// Enters a subscription and sends SUBSCRIBE for its patterns; returns its id.
    pub(crate) fn add_subscription(
        &self,
        texts: Vec<Box<str>>,
        tx: mpsc::Sender<Delivery>,
        dropped: Arc<AtomicU64>,
    ) -> Result<u64, ClientError> {
        let mut subs = lock(&self.subs);
        let list: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
        self.send_now(&Message::Subscribe(Subscribe {
            topics: Strings::List(&list),
            qos: None,
        }))?;
        let id = subs.next_id;
        subs.next_id += 1;
        for t in &texts {
            *subs.held.entry(t.clone()).or_default() += 1;
        }
        subs.entries.push(SubEntry {
            id,
            texts,
            tx,
            dropped,
        });
        Ok(id)
    }

    /// Removes a subscription, and sends UNSUBSCRIBE for the patterns no other subscription
    /// holds, except those in `refused` (the gateway never took them).
    pub(crate) fn remove_subscription(&self, id: u64, refused: &[ServerError]) {
        let mut subs = lock(&self.subs);
        let Some(i) = subs.entries.iter().position(|e| e.id == id) else {
            return;
        };
        let entry = subs.entries.swap_remove(i);
        let mut release: Vec<&[u8]> = Vec::new();
        for t in &entry.texts {
            let Some(count) = subs.held.get_mut(t) else {
                continue;
            };
            *count -= 1;
            if *count == 0 {
                subs.held.remove(t);
                if !refused.iter().any(|e| e.subject.as_deref() == Some(&**t)) {
                    release.push(t.as_bytes());
                }
            }
        }
        if !release.is_empty() {
            // A closed session holds no subscription to release.
            let _ = self.send_now(&Message::Unsubscribe(Unsubscribe {
                topics: Strings::List(&release),
            }));
        }
    }

    /// Enters (or replaces) a procedure's handler and sends REGISTER_PROCEDURE.
    pub(crate) fn add_procedure(
        &self,
        procedure: &str,
        handler: Handler,
    ) -> Result<(), ClientError> {
        let mut procs = lock(&self.procs);
        self.send_now(&Message::Register(Register {
            procedure: procedure.as_bytes(),
            ttl_s: Some(self.ttl_s()),
        }))?;
        procs.insert(procedure.as_bytes().into(), handler);
        Ok(())
    }

    /// Removes a procedure's handler and sends UNREGISTER_PROCEDURE; false if it was not
    /// registered.
    pub(crate) fn remove_procedure(&self, procedure: &str) -> Result<bool, ClientError> {
        let mut procs = lock(&self.procs);
        if procs.remove(procedure.as_bytes()).is_none() {
            return Ok(false);
        }
        self.send_now(&Message::Unregister(Unregister {
            procedure: procedure.as_bytes(),
        }))?;
        Ok(true)
    }

    fn ttl_s(&self) -> u64 {
        self.config.registration_ttl.as_secs().max(1)
    }

    /// Sends REGISTER_PROCEDURE again for every procedure, before its registration expires.
    fn refresh_registrations(&self) {
        let procs = lock(&self.procs);
        for procedure in procs.keys() {
            let _ = self.send_now(&Message::Register(Register {
                procedure,
                ttl_s: Some(self.ttl_s()),
            }));
        }
    }

    /// Puts SUBSCRIBE and REGISTER_PROCEDURE for everything held in front of the queue, for a
    /// new session, and opens the queue to the writer.
    fn replay(&self) {
        let subs = lock(&self.subs);
        let procs = lock(&self.procs);
        let mut out = lock(&self.out);
        let mut fresh = Vec::new();
        let patterns: Vec<&[u8]> = subs.held.keys().map(|k| k.as_bytes()).collect();
        for chunk in patterns.chunks(REPLAY_CHUNK) {
            Message::Subscribe(Subscribe {
                topics: Strings::List(chunk),
                qos: None,
            })
            .encode(&mut fresh);
        }
        for procedure in procs.keys() {
            Message::Register(Register {
                procedure,
                ttl_s: Some(self.ttl_s()),
            })
            .encode(&mut fresh);
        }
        fresh.extend_from_slice(&out.buf);
        out.buf = fresh;
        if out.link == Link::Down {
            out.link = Link::Up;
        }
    }

    // -------------------------------------------------------------------------------------
    // Closing
    // -------------------------------------------------------------------------------------

    /// Queues DISCONNECT `normal` after what is queued, and stops reconnecting.
    pub(crate) fn begin_close(&self) {
        self.closing.store(true, Ordering::Release);
        {
            let mut out = lock(&self.out);
            match out.link {
                Link::Up => {
                    let bye = Message::Disconnect(Disconnect {
                        reason: Reason::Normal.as_str().as_bytes(),
                        message: None,
                    });
                    // DISCONNECT is far below any frame limit.
                    let _ = out.push(&bye, u32::MAX);
                    out.link = Link::Closing;
                }
                Link::Down => out.link = Link::Closing,
                Link::Closing | Link::Closed(_) => {}
            }
        }
        self.close_requested.notify_one();
        self.out_ready.notify_one();
    }

    /// Closes the current connection at once, without waiting for the gateway.
    pub(crate) fn force_close(&self) {
        if let Some(conn) = lock(&self.conn).as_ref() {
            conn.close(
                quinn::VarInt::from_u32(0),
                Reason::Normal.as_str().as_bytes(),
            );
        }
        self.finish(Some(Reason::Normal));
    }

    /// The connection is lost and another follows: requests in flight fail, queued frames are
    /// dropped, running handlers are stopped.
    fn lose(&self) {
        {
            let mut pending = lock(&self.pending);
            let mut out = lock(&self.out);
            out.buf.clear();
            if out.link == Link::Up {
                out.link = Link::Down;
            }
            for (_, tx) in pending.calls.drain() {
                let _ = tx.send(Err(CallError::Disconnected));
            }
            for (_, w) in pending.pings.drain() {
                let _ = w.tx.send(Err(ClientError::Disconnected));
            }
        }
        *lock(&self.conn) = None;
        self.abort_handlers();
        self.out_drained.notify_waiters();
    }

    /// The session is over for good.
    fn finish(&self, reason: Option<Reason>) {
        {
            let mut pending = lock(&self.pending);
            let mut out = lock(&self.out);
            out.link = Link::Closed(reason);
            out.buf = Vec::new();
            let error = || match reason {
                Some(reason) => ClientError::Closed { reason },
                None => ClientError::Disconnected,
            };
            for (_, tx) in pending.calls.drain() {
                let _ = tx.send(Err(error().into()));
            }
            for (_, w) in pending.pings.drain() {
                let _ = w.tx.send(Err(error()));
            }
        }
        *lock(&self.conn) = None;
        lock(&self.subs).entries.clear();
        self.abort_handlers();
        self.state.send_replace(ConnectionState::Closed { reason });
        self.out_drained.notify_waiters();
    }

    fn abort_handlers(&self) {
        for (_, task) in lock(&self.running).drain() {
            task.abort();
        }
    }

    // -------------------------------------------------------------------------------------
    // Receiving
    // -------------------------------------------------------------------------------------

    fn dispatch(self: &Arc<Self>, msg: Message<'_>, ctx: &mut ReadContext) {
        match msg {
            Message::Publish(p) => self.deliver(&p, &mut ctx.blocked),
            Message::Reply(r) => self.on_reply(&r),
            Message::Pong(p) => self.on_pong(p.timestamp),
            Message::Call(c) => self.on_call(&c),
            Message::Cancel(c) => self.on_cancel(&c),
            Message::Error(e) => self.on_error(&e),
            Message::Ping(p) => {
                let pong = Pong {
                    timestamp: p.timestamp,
                    server_time: unix_ms(),
                    node_id: None,
                };
                let _ = self.send_now(&Message::Pong(pong));
            }
            Message::Disconnect(d) => {
                ctx.disconnect = Some(Reason::from_wire(d.reason).unwrap_or(Reason::ProtocolError));
            }
            // Frames that only clients send: nothing to do with them.
            Message::Connect(_)
            | Message::Subscribe(_)
            | Message::Unsubscribe(_)
            | Message::Register(_)
            | Message::Unregister(_) => {}
        }
    }

    /// Hands a PUBLISH to every subscription with a matching pattern. Under
    /// [`Overflow::Wait`], a delivery that finds its subscription's buffer full is left in
    /// `blocked`, for the reader to wait with.
    fn deliver(&self, p: &Publish<'_>, blocked: &mut Vec<Blocked>) {
        let subs = lock(&self.subs);
        let make = || Delivery {
            topic: lossy(p.topic),
            payload: p.payload.to_vec(),
            publisher: p.publisher.unwrap_or(NodeId([0; 32])),
        };
        let mut target: Option<&SubEntry> = None;
        let mut delivery = None;
        for entry in &subs.entries {
            if !entry
                .texts
                .iter()
                .any(|t| pattern_matches(t.as_bytes(), p.topic))
            {
                continue;
            }
            if let Some(previous) = target.replace(entry) {
                let d = delivery.get_or_insert_with(make).clone();
                self.offer(previous, d, blocked);
            }
        }
        if let Some(last) = target {
            self.offer(last, delivery.unwrap_or_else(make), blocked);
        }
    }

    fn offer(&self, entry: &SubEntry, delivery: Delivery, blocked: &mut Vec<Blocked>) {
        match entry.tx.try_send(delivery) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(delivery)) => {
                match self.config.subscription_overflow {
                    Overflow::Drop => {
                        entry.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Overflow::Wait => blocked.push((entry.tx.clone(), delivery)),
                }
            }
        }
    }

    fn on_reply(&self, r: &Reply<'_>) {
        let Some(CallIdRef::Uint(id)) = r.call_id else {
            return;
        };
        let Some(tx) = lock(&self.pending).calls.remove(&id) else {
            return;
        };
        let outcome = match r.outcome {
            Outcome::Result(raw) => Ok(raw.0.to_vec()),
            Outcome::Error { code, message } => Err(CallError::Remote {
                code: lossy(code),
                message: message.map(lossy).unwrap_or_default(),
            }),
        };
        let _ = tx.send(outcome);
    }

    fn on_pong(&self, timestamp: u64) {
        if let Some(w) = lock(&self.pending).pings.remove(&timestamp) {
            let _ = w.tx.send(Ok(w.errors.unwrap_or_default()));
        }
    }

    fn on_error(&self, e: &ErrorMsg<'_>) {
        let error = ServerError {
            code: lossy(e.code),
            message: lossy(e.message),
            frame_type: u8::try_from(e.frame_type).unwrap_or(0),
            subject: e.topic.or(e.procedure).map(lossy),
        };
        for w in lock(&self.pending).pings.values_mut() {
            if let Some(errors) = &mut w.errors {
                errors.push(error.clone());
            }
        }
        let _ = self.errors.send(error);
    }

    /// Runs the handler of a CALL received as a provider, in a task of its own.
    fn on_call(self: &Arc<Self>, c: &Call<'_>) {
        let Some(call_id) = c.call_id.map(OwnedCallId::new) else {
            return;
        };
        let handler = lock(&self.procs).get(c.procedure).cloned();
        let Some(handler) = handler else {
            let reply = Reply {
                call_id: Some(call_id.as_wire()),
                outcome: Outcome::Error {
                    code: b"procedure_not_found",
                    message: Some(b"this client does not provide the procedure"),
                },
            };
            let _ = self.send_now(&Message::Reply(reply));
            return;
        };
        let work = handler(c.args.0.to_vec());
        let shared = Arc::clone(self);
        let key = call_id.clone();
        // Held while spawning: the task, should it finish at once, finds its entry.
        let mut running = lock(&self.running);
        let task = tokio::spawn(async move {
            let outcome = work.await;
            shared.answer(key, outcome);
        });
        running.insert(call_id, task.abort_handle());
    }

    /// Sends the REPLY of a handler that finished, unless its call was cancelled meanwhile.
    fn answer(&self, call_id: OwnedCallId, outcome: Result<Vec<u8>, ProcedureError>) {
        if lock(&self.running).remove(&call_id).is_none() {
            return;
        }
        let error = |code: &'static str, message: &'static str| Outcome::Error {
            code: code.as_bytes(),
            message: Some(message.as_bytes()),
        };
        let outcome = match &outcome {
            Ok(result) if is_one_value(result) => Outcome::Result(Raw(result)),
            Ok(_) => error(
                "invalid_result",
                "the provider's result is not one MessagePack value",
            ),
            Err(e) => Outcome::Error {
                code: e.code.as_bytes(),
                message: Some(e.message.as_bytes()),
            },
        };
        let call_id = Some(call_id.as_wire());
        let reply = Message::Reply(Reply { call_id, outcome });
        if let Err(ClientError::FrameTooLarge { .. }) = self.send_now(&reply) {
            let outcome = error(
                "result_too_large",
                "the provider's result is over the frame limit",
            );
            let _ = self.send_now(&Message::Reply(Reply { call_id, outcome }));
        }
    }

    fn on_cancel(&self, c: &Cancel<'_>) {
        if let Some(task) = lock(&self.running).remove(&OwnedCallId::new(c.call_id)) {
            task.abort();
        }
    }
}

/// A PONG waiter entered by [`Shared::expect_pong`].
pub(crate) struct PongWait<'a> {
    rx: oneshot::Receiver<Result<Vec<ServerError>, ClientError>>,
    forget: Forget<'a>,
}

/// Removes a request from `pending` when its caller stops waiting (timeout, or the future
/// dropped), so that a late answer finds nothing.
struct Forget<'a> {
    shared: &'a Shared,
    id: u64,
    call: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut pending = lock(&self.shared.pending);
        if self.call {
            pending.calls.remove(&self.id);
        } else {
            pending.pings.remove(&self.id);
        }
    }
}
