//! The `Shard`: everything one core of the gateway serves, as a deterministic state machine.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::clients::{Admission, ClientTable};
use crate::config::Config;
use crate::genslab::{GenSlab, SlabKey};
use crate::ids::{NodeId, RealmId, SessionKey, SessionRef, ShardId, Time};
use crate::metrics::{CallOutcome, Counters, DropReason, Metrics};
use crate::names::{is_valid_pattern, is_valid_topic};
use crate::pending::{CallKey, OwnedCallId, PendingCalls};
use crate::registry::{Registered, Registry, Removed};
use crate::router::{owner_of, CallError, CallToken, CancelReason, OwnedOutcome, ShardMsg};
use crate::subs::SubscriptionIndex;
use crate::wheel::{CallWheel, TimerKey};
use crate::wire::{
    Call, CallIdRef, Cancel, Disconnect, ErrorMsg, FrameReader, FrameType, Message, Outcome, Ping,
    Pong, Publish, Raw, Reason, Register, Reply, Strings,
};

/// One core's share of the gateway: its sessions, its part of the client directory, the
/// subscription and procedure indexes, its pending calls and its timer wheel.
///
/// # Driving a shard
///
/// The driver owns the sockets, the QUIC connections, the clock and the channels to other
/// shards. It feeds the shard *inputs*, each stamped with the time, and drains its *outputs*
/// until they return `None`. One turn of the driver's loop:
///
/// 1. Read the clock once: `now`.
/// 2. Feed what arrived: [`Shard::handle_session_open`] when a connection is ready for its
///    control stream, [`Shard::handle_stream_data`] with the bytes read from it,
///    [`Shard::handle_session_closed`] when a connection is gone.
/// 3. Feed messages from other shards: [`Shard::handle_shard_message`].
/// 4. Fire due timers: [`Shard::handle_timeout`], then [`Shard::poll_driver_timer`] for the
///    driver's own timers kept in the shard's wheel ([`Shard::schedule`]).
/// 5. Drain outputs: [`Shard::poll_ready`] names a session with bytes to send
///    ([`Shard::output`], then [`Shard::consume_output`] with what the stream took);
///    [`Shard::poll_close`] names a session to close after its output is flushed, with the
///    application close code of its reason; [`Shard::outbox`] holds the messages for each other
///    shard, to be moved to its channel in order (leave what does not fit: the shard bounds it).
/// 6. Sleep until [`Shard::next_deadline`] or until woken by a packet or a message.
///
/// [`Shard::poll_event`] reports what deserves a log line.
pub struct Shard {
    config: Config,
    sessions: GenSlab<SessionKey, Session>,
    /// Sessions past admission.
    active: usize,
    /// Sessions waiting for CONNECT or for its admission.
    connecting: usize,
    clients: ClientTable,
    local_subs: SubscriptionIndex<SessionKey>,
    remote_subs: SubscriptionIndex<ShardId>,
    registry: Registry,
    pending: PendingCalls,
    wheel: CallWheel<Timer>,
    outbox: Vec<VecDeque<ShardMsg>>,
    ready: VecDeque<SessionKey>,
    closes: VecDeque<(SessionKey, Reason)>,
    driver_timers: VecDeque<u64>,
    events: VecDeque<Event>,
    counters: Counters,
    scratch: Scratch,
    /// The time of the latest input.
    now: Time,
}

/// How a client ended its side of the control stream (PROTOCOL.md 3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// FIN: every byte before it is handled first.
    Finished,
    /// RESET_STREAM: what was not read is lost.
    Reset,
    /// STOP_SENDING: the client reads nothing more.
    StopSending,
}

/// Something that deserves a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A client was refused admission.
    Refused { reason: Reason },
    /// The periodic prune removed expired registrations.
    Pruned { removed: usize },
    /// A session was ended for staying over its output bound.
    SlowConsumerEvicted,
}

/// Buffers reused by every turn, so that the hot paths allocate nothing.
#[derive(Default)]
struct Scratch {
    sessions: Vec<SessionKey>,
    shards: Vec<ShardId>,
    calls: Vec<CallKey>,
    removed: Vec<Removed>,
    frame: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
enum Timer {
    /// No CONNECT (or no admission) in time.
    Connect(SessionKey),
    /// The session's output has been over its bound since the timer was set.
    SlowConsumer(SessionKey),
    /// A pending call's deadline.
    Call(CallKey),
    /// The periodic removal of expired registrations.
    Prune,
    /// A timer of the driver's.
    Driver(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitingConnect,
    /// CONNECT sent to the node's owner; frames after it wait in the reader.
    Admitting,
    Active,
    /// Ended: only its last output is left, until the driver reports the connection closed.
    Closing,
}

struct Session {
    state: State,
    realm: RealmId,
    node: NodeId,
    reader: FrameReader,
    out: OutBuf,
    /// The connect timeout before admission; the slow-consumer timer after.
    timer: Option<TimerKey>,
    /// Whether the node's owner may hold a directory entry for this session.
    in_directory: bool,
    /// Whether the session ever registered a procedure: its end is then told to every shard.
    provider: bool,
    /// Whether the session is in the `ready` queue.
    queued: bool,
    /// The client finished its side of the control stream: the session ends once the frames
    /// before the end are handled.
    finished: bool,
    patterns: Vec<Box<[u8]>>,
    procedures: Vec<Box<[u8]>>,
    barrier: Barrier,
}

/// PING as a barrier: a PONG waits until every other shard has applied the replication
/// messages the session caused before its PING.
#[derive(Default)]
struct Barrier {
    /// Replication messages were sent since the last barrier.
    dirty: bool,
    /// The last barrier sequence number sent.
    sent: u32,
    /// Barriers sent and the acknowledgements each still waits for, oldest first.
    outstanding: VecDeque<(u32, u16)>,
    /// PINGs waiting: their timestamp and the barrier they wait for.
    pongs: VecDeque<(u64, u32)>,
}

/// The patterns of one frame refused for one reason: the first, and how many.
#[derive(Default)]
struct Refusals<'a> {
    first: Option<&'a [u8]>,
    count: usize,
}

impl<'a> Refusals<'a> {
    fn add(&mut self, pattern: &'a [u8]) {
        self.first.get_or_insert(pattern);
        self.count += 1;
    }
}

/// Bytes queued to a session: appended at the end, consumed from `start`.
#[derive(Default)]
struct OutBuf {
    buf: Vec<u8>,
    start: usize,
}

/// Output capacity above which a drained buffer is released, so idle sessions stay small.
const OUT_KEEP_CAPACITY: usize = 16 * 1024;

impl OutBuf {
    fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > OUT_KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        } else if self.start > self.buf.len() / 2 && self.start > 4096 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// What a session's tables hold, for leak checks: every count is zero on an idle gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub sessions: usize,
    pub directory: usize,
    pub local_subscriptions: usize,
    pub remote_subscriptions: usize,
    pub registrations: usize,
    /// Calls, their id index, callers and providers indexed.
    pub pending: [usize; 4],
    /// Timers besides the shard's own periodic prune.
    pub timers: usize,
    pub outbox: usize,
    pub ready: usize,
    pub closes: usize,
    pub output_bytes: usize,
}

impl Shard {
    /// A shard with no sessions. `now` starts its timer wheel.
    pub fn new(config: Config, now: Time) -> Shard {
        let shards = config.shards.max(1);
        let mut wheel = CallWheel::new(now);
        wheel.insert(now + config.limits.prune_interval, Timer::Prune);
        Shard {
            sessions: GenSlab::new(),
            active: 0,
            connecting: 0,
            // Bounded by the gateway-wide count of `--max-clients`, taken on admission.
            clients: ClientTable::new(usize::MAX),
            local_subs: SubscriptionIndex::new(),
            remote_subs: SubscriptionIndex::new(),
            registry: Registry::new(),
            pending: PendingCalls::new(),
            wheel,
            outbox: (0..shards).map(|_| VecDeque::new()).collect(),
            ready: VecDeque::new(),
            closes: VecDeque::new(),
            driver_timers: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            scratch: Scratch::default(),
            now,
            config,
        }
    }

    pub fn id(&self) -> ShardId {
        self.config.shard
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    // ---------------------------------------------------------------------------------------
    // Inputs
    // ---------------------------------------------------------------------------------------

    /// A connection finished its handshake and will carry a session: returns the session's key.
    /// The session must send CONNECT within the connect timeout.
    pub fn handle_session_open(&mut self, now: Time) -> SessionKey {
        self.now = self.now.max(now);
        let key = self.sessions.vacant_key();
        let timer = self.wheel.insert(
            now + self.config.limits.connect_timeout,
            Timer::Connect(key),
        );
        let inserted = self.sessions.insert(Session {
            state: State::AwaitingConnect,
            realm: RealmId(0),
            node: NodeId([0; 32]),
            reader: FrameReader::new(self.config.limits.max_frame),
            out: OutBuf::default(),
            timer: Some(timer),
            in_directory: false,
            provider: false,
            queued: false,
            finished: false,
            patterns: Vec::new(),
            procedures: Vec::new(),
            barrier: Barrier::default(),
        });
        debug_assert_eq!(inserted, key, "vacant_key predicts the insert");
        self.connecting += 1;
        self.config.counts.handshakes.take();
        key
    }

    /// Bytes read from a session's control stream.
    pub fn handle_stream_data(&mut self, now: Time, key: SessionKey, data: &[u8]) {
        self.now = self.now.max(now);
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.state == State::Closing {
            return;
        }
        if let Err(e) = s.reader.push(data) {
            self.close(now, key, e.reason(), &e.to_string());
            return;
        }
        self.process_frames(now, key);
    }

    /// The client ended its side of the control stream: the session ends, as DISCONNECT
    /// `normal` when the stream stopped between frames and as a protocol error when it cut one.
    /// After FIN the frames sent before it are handled first, once the session is admitted.
    pub fn handle_stream_end(&mut self, now: Time, key: SessionKey, end: StreamEnd) {
        self.now = self.now.max(now);
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.finished = true;
        match end {
            StreamEnd::Finished => self.process_frames(now, key),
            StreamEnd::Reset | StreamEnd::StopSending => self.end_stream(now, key),
        }
    }

    /// The session's connection is gone (closed by either side, or idle): everything the
    /// session owned is removed, and its key becomes stale.
    pub fn handle_session_closed(&mut self, now: Time, key: SessionKey) {
        self.now = self.now.max(now);
        if let Some(s) = self.sessions.get(key) {
            if s.state != State::Closing {
                self.end(now, key, Reason::Normal);
            }
            self.sessions.remove(key);
        }
    }

    /// A message from shard `from` (which may be this shard).
    pub fn handle_shard_message(&mut self, now: Time, from: ShardId, msg: ShardMsg) {
        self.now = self.now.max(now);
        self.counters.shard_messages_in += 1;
        match msg {
            ShardMsg::Admit {
                realm,
                node,
                session,
            } => self.admit(now, from, realm, node, session),
            ShardMsg::Admitted { session } => self.on_admitted(now, session),
            ShardMsg::Refused { session, reason } => {
                if let Some(s) = self.sessions.get_mut(session) {
                    if s.state == State::Admitting {
                        s.in_directory = false;
                        self.refuse(now, session, reason);
                    }
                }
            }
            ShardMsg::Kick { session, reason } => {
                if let Some(s) = self.sessions.get_mut(session) {
                    s.in_directory = false;
                    self.close(
                        now,
                        session,
                        reason,
                        "another session connected with this node id",
                    );
                }
            }
            ShardMsg::Leave {
                realm,
                node,
                session,
            } => {
                let session = SessionRef {
                    shard: from,
                    key: session,
                };
                if self.clients.leave(realm, node, session).is_some() {
                    self.config.counts.clients.give_back();
                }
            }
            ShardMsg::Interest {
                realm,
                pattern,
                add,
            } => {
                if add {
                    self.remote_subs.insert(realm, &pattern, from);
                } else {
                    self.remote_subs.remove(realm, &pattern, from);
                }
            }
            ShardMsg::Provider {
                realm,
                procedure,
                session,
                add,
            } => {
                let provider = SessionRef {
                    shard: from,
                    key: session,
                };
                if add {
                    self.registry.register(realm, &procedure, provider, None);
                } else {
                    self.registry.unregister(realm, &procedure, provider);
                }
            }
            ShardMsg::ProviderGone { session } => {
                self.provider_gone(
                    now,
                    SessionRef {
                        shard: from,
                        key: session,
                    },
                );
            }
            ShardMsg::Barrier { session, seq } => {
                self.send(now, from, ShardMsg::BarrierAck { session, seq });
            }
            ShardMsg::BarrierAck { session, seq } => self.on_barrier_ack(now, session, seq),
            ShardMsg::Publish {
                realm,
                frame,
                topic,
            } => {
                let range = topic.start as usize..topic.end as usize;
                if let Some(topic) = frame.get(range) {
                    self.deliver(realm, topic, &frame, None);
                }
            }
            ShardMsg::Call {
                token,
                provider,
                frame,
            } => {
                let error = match self.sessions.get_mut(provider) {
                    Some(s) if s.state == State::Active => {
                        if s.out.len() >= self.config.limits.max_output {
                            Some(CallError::Overloaded)
                        } else {
                            s.out.buf.extend_from_slice(&frame);
                            self.mark_ready(provider);
                            None
                        }
                    }
                    _ => Some(CallError::ProviderGone),
                };
                if let Some(error) = error {
                    self.send(now, token.shard(), ShardMsg::CallFailed { token, error });
                }
            }
            ShardMsg::CallFailed { token, error } => {
                if let Some(call) = self.pending.find(token.index(), token.generation()) {
                    self.fail_call(call, error);
                }
            }
            ShardMsg::Reply {
                token,
                provider,
                outcome,
            } => {
                let outcome = match &outcome {
                    OwnedOutcome::Result(raw) => Outcome::Result(Raw(raw)),
                    OwnedOutcome::Error { code, message } => Outcome::Error {
                        code,
                        message: message.as_deref(),
                    },
                };
                self.complete_call(
                    token,
                    SessionRef {
                        shard: from,
                        key: provider,
                    },
                    outcome,
                );
            }
            ShardMsg::Cancel {
                token,
                provider,
                reason,
            } => self.cancel_at_provider(provider, token, reason),
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = self.now.max(now);
        while let Some((_, timer)) = self.wheel.poll_expired(now) {
            match timer {
                Timer::Connect(key) => {
                    if let Some(s) = self.sessions.get_mut(key) {
                        s.timer = None;
                        if matches!(s.state, State::AwaitingConnect | State::Admitting) {
                            self.close(now, key, Reason::ConnectTimeout, "no CONNECT in time");
                        }
                    }
                }
                Timer::SlowConsumer(key) => {
                    if let Some(s) = self.sessions.get_mut(key) {
                        s.timer = None;
                        if s.state == State::Active && s.out.len() >= self.config.limits.max_output
                        {
                            self.close(
                                now,
                                key,
                                Reason::SlowConsumer,
                                "output over its bound for too long",
                            );
                        }
                    }
                }
                Timer::Call(call) => {
                    if let Some(c) = self.pending.remove(call) {
                        self.counters.call(CallOutcome::Timeout);
                        self.reply_error(c.caller, Some(c.call_id.as_wire()), CallError::Timeout);
                        let token = self.token(call);
                        self.cancel_provider(now, c.provider, token, CancelReason::Timeout);
                    }
                }
                Timer::Prune => {
                    self.prune(now);
                    self.wheel
                        .insert(now + self.config.limits.prune_interval, Timer::Prune);
                }
                Timer::Driver(token) => self.driver_timers.push_back(token),
            }
        }
    }

    /// Ends every session with DISCONNECT `shutting_down`.
    pub fn shutdown(&mut self, now: Time) {
        self.now = self.now.max(now);
        let keys: Vec<SessionKey> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(now, key, Reason::ShuttingDown, "the gateway is stopping");
        }
    }

    /// Adds a driver timer that fires at `at`; [`Shard::poll_driver_timer`] returns `token`.
    pub fn schedule(&mut self, at: Time, token: u64) -> TimerKey {
        self.wheel.insert(at, Timer::Driver(token))
    }

    /// Moves a driver timer; false if it already fired or was removed.
    pub fn reschedule(&mut self, key: TimerKey, at: Time) -> bool {
        self.wheel.reset(key, at)
    }

    /// Removes a driver timer.
    pub fn unschedule(&mut self, key: TimerKey) {
        self.wheel.cancel(key);
    }

    // ---------------------------------------------------------------------------------------
    // Outputs
    // ---------------------------------------------------------------------------------------

    /// A session with bytes to send (or a close to flush); each session is named once until it
    /// gets new output.
    pub fn poll_ready(&mut self) -> Option<SessionKey> {
        while let Some(key) = self.ready.pop_front() {
            if let Some(s) = self.sessions.get_mut(key) {
                s.queued = false;
                return Some(key);
            }
        }
        None
    }

    /// The bytes queued to a session.
    pub fn output(&self, key: SessionKey) -> &[u8] {
        self.sessions.get(key).map_or(&[], |s| s.out.bytes())
    }

    /// `n` bytes of [`Shard::output`] were handed to the session's stream.
    pub fn consume_output(&mut self, key: SessionKey, n: usize) {
        let max_output = self.config.limits.max_output;
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.out.consume(n);
        if s.state == State::Active && s.out.len() < max_output {
            if let Some(timer) = s.timer.take() {
                self.wheel.cancel(timer);
            }
            if s.reader.has_frame() {
                // Frames held back while the output was over its bound.
                self.process_frames(self.now, key);
            }
        }
    }

    /// Whether the driver should read more of the session's control stream now. Not while
    /// its output is over the bound (PROTOCOL.md 5.5), nor while frames wait for admission or
    /// for the output to drain: the bytes then wait in the transport, whose flow control holds
    /// the client back.
    pub fn wants_input(&self, key: SessionKey) -> bool {
        self.sessions.get(key).is_some_and(|s| {
            matches!(s.state, State::AwaitingConnect | State::Active)
                && s.out.len() < self.config.limits.max_output
                && !s.reader.has_frame()
        })
    }

    /// Counts a drop the driver made at one of its limits.
    pub fn count_drop(&mut self, reason: DropReason) {
        self.counters.drop(reason);
    }

    /// A session to close once its output is flushed, and why (its close code is
    /// [`Reason::close_code`]).
    pub fn poll_close(&mut self) -> Option<(SessionKey, Reason)> {
        self.closes.pop_front()
    }

    /// Messages waiting for shard `to`, oldest first. The driver moves them to the channel and
    /// leaves in place what the channel cannot take yet.
    pub fn outbox(&mut self, to: ShardId) -> &mut VecDeque<ShardMsg> {
        &mut self.outbox[to.index()]
    }

    /// A driver timer that fired.
    pub fn poll_driver_timer(&mut self) -> Option<u64> {
        self.driver_timers.pop_front()
    }

    /// Something to log.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Shard::handle_timeout`] next has work (never later than the earliest timer).
    pub fn next_deadline(&self) -> Option<Time> {
        self.wheel.next_deadline()
    }

    pub fn metrics(&self) -> Metrics {
        Metrics {
            clients: self.active as u64,
            awaiting_connect: self.connecting as u64,
            directory: self.clients.len() as u64,
            subscriptions: self.local_subs.len() as u64,
            registrations: self
                .sessions
                .iter()
                .map(|(_, s)| s.procedures.len() as u64)
                .sum(),
            pending_calls: self.pending.len() as u64,
            output_bytes: self.sessions.iter().map(|(_, s)| s.out.len() as u64).sum(),
            timers: self.wheel.len() as u64,
            counters: self.counters.clone(),
        }
    }

    /// Sessions waiting for CONNECT or for its admission (they count as handshakes).
    pub fn connecting(&self) -> usize {
        self.connecting
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// What every table holds, for leak checks.
    pub fn occupancy(&self) -> Occupancy {
        Occupancy {
            sessions: self.sessions.len(),
            directory: self.clients.len(),
            local_subscriptions: self.local_subs.len(),
            remote_subscriptions: self.remote_subs.len(),
            registrations: self.registry.len(),
            pending: self.pending.index_sizes(),
            timers: self.wheel.len().saturating_sub(1),
            outbox: self.outbox.iter().map(VecDeque::len).sum(),
            ready: self.ready.len(),
            closes: self.closes.len(),
            output_bytes: self.sessions.iter().map(|(_, s)| s.out.len()).sum(),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Sessions
    // ---------------------------------------------------------------------------------------

    /// Decodes and handles the frames buffered for a session, while it is in a state to take
    /// them (an admitting session keeps them until it is admitted).
    fn process_frames(&mut self, now: Time, key: SessionKey) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let mut reader = std::mem::take(&mut s.reader);
        // While the session's output is over its bound, no further frame is handled: what the
        // client sends cannot grow its own output (PONG, ERROR, REPLY) without bound.
        let max_output = self.config.limits.max_output;
        while let Some(State::AwaitingConnect | State::Active) = self
            .sessions
            .get(key)
            .filter(|s| s.out.len() < max_output)
            .map(|s| s.state)
        {
            let frame = match reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.close(now, key, e.reason(), &e.to_string());
                    break;
                }
            };
            match Message::decode(frame.frame_type, frame.payload) {
                Ok(msg) => self.handle_message(now, key, msg),
                Err(e) => {
                    self.close(now, key, e.reason(), &e.to_string());
                    break;
                }
            }
        }
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.state == State::Closing {
            return;
        }
        s.reader = reader;
        if s.finished && s.state != State::Admitting && !s.reader.has_frame() {
            self.end_stream(now, key);
        }
    }

    /// Ends a session whose client ended its control stream.
    fn end_stream(&mut self, now: Time, key: SessionKey) {
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        if s.reader.is_mid_frame() {
            let message = "the control stream ended inside a frame";
            self.close(now, key, Reason::ProtocolError, message);
        } else {
            self.close(now, key, Reason::Normal, "");
        }
    }

    fn handle_message(&mut self, now: Time, key: SessionKey, msg: Message<'_>) {
        let Some(state) = self.sessions.get(key).map(|s| s.state) else {
            return;
        };
        if state == State::AwaitingConnect {
            match msg {
                Message::Connect(c) => self.on_connect(now, key, c.realm, c.node_id, c.token),
                _ => self.close(
                    now,
                    key,
                    Reason::ProtocolError,
                    "the first frame must be CONNECT",
                ),
            }
            return;
        }
        match msg {
            Message::Ping(Ping { timestamp }) => self.on_ping(now, key, timestamp),
            Message::Pong(_) => {}
            Message::Disconnect(_) => self.close(now, key, Reason::Normal, ""),
            Message::Publish(p) => self.on_publish(key, p),
            Message::Subscribe(s) => self.on_subscribe(now, key, s.topics),
            Message::Unsubscribe(u) => self.on_unsubscribe(now, key, u.topics),
            Message::Register(r) => self.on_register(now, key, r),
            Message::Unregister(u) => self.on_unregister(now, key, u.procedure),
            Message::Call(c) => self.on_call(now, key, c),
            Message::Reply(r) => self.on_reply(now, key, r),
            Message::Connect(_) => {
                self.close(now, key, Reason::ProtocolError, "CONNECT sent twice")
            }
            Message::Error(_) | Message::Cancel(_) => self.close(
                now,
                key,
                Reason::ProtocolError,
                "ERROR and CANCEL travel from server to client only",
            ),
        }
    }

    fn on_connect(
        &mut self,
        now: Time,
        key: SessionKey,
        realm: &[u8],
        node: NodeId,
        token: Option<&[u8]>,
    ) {
        let Some(realm_id) = self.config.realm(realm) else {
            self.refuse(now, key, Reason::RealmMismatch);
            return;
        };
        let tokens = &self.config.realms[usize::from(realm_id.0)].tokens;
        if !tokens.is_empty()
            && !token.is_some_and(|t| tokens.iter().any(|accepted| constant_time_eq(accepted, t)))
        {
            self.refuse(now, key, Reason::Unauthorized);
            return;
        }
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.state = State::Admitting;
        s.realm = realm_id;
        s.node = node;
        s.in_directory = true;
        let owner = owner_of(&node, self.config.shards);
        self.send(
            now,
            owner,
            ShardMsg::Admit {
                realm: realm_id,
                node,
                session: key,
            },
        );
    }

    /// On the node's owner: admits, replaces or refuses.
    fn admit(
        &mut self,
        now: Time,
        from: ShardId,
        realm: RealmId,
        node: NodeId,
        session: SessionKey,
    ) {
        let replacing = self.clients.find(realm, node).is_some();
        let limit = self.config.limits.max_clients;
        if !replacing && !self.config.counts.clients.try_take(limit) {
            let refused = ShardMsg::Refused {
                session,
                reason: Reason::MaxClientsReached,
            };
            self.send(now, from, refused);
            return;
        }
        let reply = match self.clients.admit(
            realm,
            node,
            SessionRef {
                shard: from,
                key: session,
            },
        ) {
            Ok(Admission::Admitted(_)) => ShardMsg::Admitted { session },
            Ok(Admission::Replaced { old, .. }) => {
                self.send(
                    now,
                    old.shard,
                    ShardMsg::Kick {
                        session: old.key,
                        reason: Reason::Replaced,
                    },
                );
                ShardMsg::Admitted { session }
            }
            Err(_) => {
                // Not reached: the table's own capacity is unbounded. Give back what was taken.
                self.config.counts.clients.give_back();
                ShardMsg::Refused {
                    session,
                    reason: Reason::MaxClientsReached,
                }
            }
        };
        self.send(now, from, reply);
    }

    fn on_admitted(&mut self, now: Time, key: SessionKey) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.state != State::Admitting {
            return;
        }
        s.state = State::Active;
        if let Some(timer) = s.timer.take() {
            self.wheel.cancel(timer);
        }
        self.connecting -= 1;
        self.config.counts.handshakes.give_back();
        self.active += 1;
        let pong = Pong {
            timestamp: 0,
            server_time: self.wall_clock(now),
            node_id: Some(self.config.node_id),
        };
        self.write(key, &Message::Pong(pong));
        self.process_frames(now, key);
    }

    fn refuse(&mut self, now: Time, key: SessionKey, reason: Reason) {
        self.counters.refused(reason);
        self.events.push_back(Event::Refused { reason });
        let message = match reason {
            Reason::RealmMismatch => "this realm is not served here",
            Reason::Unauthorized => "missing or wrong token",
            Reason::MaxClientsReached => "the gateway's client table is full",
            _ => "refused",
        };
        self.close(now, key, reason, message);
    }

    /// Ends a session: sends DISCONNECT (unless the client left of its own accord), removes
    /// everything it owned and asks the driver to close the connection.
    fn close(&mut self, now: Time, key: SessionKey, reason: Reason, message: &str) {
        match self.sessions.get(key) {
            Some(s) if s.state != State::Closing => {}
            _ => return,
        }
        if reason != Reason::Normal {
            let frame = Disconnect {
                reason: reason.as_str().as_bytes(),
                message: Some(message.as_bytes()),
            };
            self.write(key, &Message::Disconnect(frame));
        }
        if reason == Reason::SlowConsumer {
            self.events.push_back(Event::SlowConsumerEvicted);
        }
        self.end(now, key, reason);
        self.closes.push_back((key, reason));
        self.mark_ready(key);
    }

    /// Removes everything a session owned, at once: subscriptions, registrations, calls in
    /// flight as caller and as provider, its directory entry. Its output stays until the driver
    /// closes the connection.
    fn end(&mut self, now: Time, key: SessionKey, reason: Reason) {
        let me = self.id();
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let prior = std::mem::replace(&mut s.state, State::Closing);
        let realm = s.realm;
        let node = s.node;
        let in_directory = std::mem::take(&mut s.in_directory);
        let provider = s.provider;
        let patterns = std::mem::take(&mut s.patterns);
        let procedures = std::mem::take(&mut s.procedures);
        s.reader = FrameReader::default();
        s.barrier = Barrier::default();
        if let Some(timer) = s.timer.take() {
            self.wheel.cancel(timer);
        }
        match prior {
            State::Active => self.active -= 1,
            State::AwaitingConnect | State::Admitting => {
                self.connecting -= 1;
                self.config.counts.handshakes.give_back();
            }
            State::Closing => {}
        }
        self.counters.closed(reason);

        for pattern in patterns {
            self.local_subs.remove(realm, &pattern, key);
            if self.local_subs.subscribers_of(realm, &pattern) == 0 {
                self.broadcast(ShardMsg::Interest {
                    realm,
                    pattern,
                    add: false,
                });
            }
        }
        drop(procedures);
        if provider {
            let this = SessionRef { shard: me, key };
            self.broadcast(ShardMsg::ProviderGone { session: key });
            self.provider_gone(now, this);
        }

        let mut calls = std::mem::take(&mut self.scratch.calls);
        calls.clear();
        self.pending.of_caller(key, &mut calls);
        for &call in &calls {
            if let Some(c) = self.pending.remove(call) {
                self.wheel.cancel(c.deadline);
                self.counters.call(CallOutcome::CallerGone);
                let token = self.token(call);
                self.cancel_provider(now, c.provider, token, CancelReason::CallerGone);
            }
        }
        self.scratch.calls = calls;

        if in_directory {
            let owner = owner_of(&node, self.config.shards);
            self.send(
                now,
                owner,
                ShardMsg::Leave {
                    realm,
                    node,
                    session: key,
                },
            );
        }
    }

    /// A provider ended (here or elsewhere): its registrations go, and the calls this shard's
    /// sessions sent it fail with `provider_gone`.
    fn provider_gone(&mut self, _now: Time, provider: SessionRef) {
        let mut removed = std::mem::take(&mut self.scratch.removed);
        removed.clear();
        self.registry.remove_provider(provider, &mut removed);
        removed.clear();
        self.scratch.removed = removed;
        let mut calls = std::mem::take(&mut self.scratch.calls);
        calls.clear();
        self.pending.of_provider(provider, &mut calls);
        for &call in &calls {
            self.fail_call(call, CallError::ProviderGone);
        }
        self.scratch.calls = calls;
    }

    // ---------------------------------------------------------------------------------------
    // PING as a barrier
    // ---------------------------------------------------------------------------------------

    fn on_ping(&mut self, now: Time, key: SessionKey, timestamp: u64) {
        let others = self.config.shards.saturating_sub(1);
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let b = &mut s.barrier;
        if !b.dirty && b.pongs.is_empty() {
            let pong = Pong {
                timestamp,
                server_time: self.wall_clock(now),
                node_id: None,
            };
            self.write(key, &Message::Pong(pong));
            return;
        }
        if b.dirty {
            b.dirty = false;
            b.sent += 1;
            b.outstanding.push_back((b.sent, others));
            let seq = b.sent;
            b.pongs.push_back((timestamp, seq));
            self.broadcast(ShardMsg::Barrier { session: key, seq });
        } else {
            b.pongs.push_back((timestamp, b.sent));
        }
    }

    fn on_barrier_ack(&mut self, now: Time, key: SessionKey, seq: u32) {
        let server_time = self.wall_clock(now);
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.state != State::Active {
            return;
        }
        let Session { barrier: b, .. } = s;
        if let Some(entry) = b.outstanding.iter_mut().find(|(s, _)| *s == seq) {
            entry.1 = entry.1.saturating_sub(1);
        }
        let mut done = None;
        while let Some(&(seq, 0)) = b.outstanding.front() {
            b.outstanding.pop_front();
            done = Some(seq);
        }
        let Some(done) = done else { return };
        while let Some(&(timestamp, needs)) = b.pongs.front() {
            if needs > done {
                break;
            }
            b.pongs.pop_front();
            Message::Pong(Pong {
                timestamp,
                server_time,
                node_id: None,
            })
            .encode(&mut s.out.buf);
        }
        self.mark_ready(key);
    }

    // ---------------------------------------------------------------------------------------
    // Publish and subscribe
    // ---------------------------------------------------------------------------------------

    fn on_publish(&mut self, key: SessionKey, p: Publish<'_>) {
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        let (realm, node) = (s.realm, s.node);
        if !is_valid_topic(p.topic) {
            self.send_error(
                key,
                "invalid_topic",
                "not a valid topic",
                FrameType::Publish,
                Some(p.topic),
                None,
            );
            return;
        }
        self.counters.publishes += 1;
        let mut frame = std::mem::take(&mut self.scratch.frame);
        frame.clear();
        let topic_range = Publish {
            publisher: Some(node),
            ..p
        }
        .encode_locating_topic(&mut frame);
        self.deliver(realm, p.topic, &frame, Some(key));

        let mut shards = std::mem::take(&mut self.scratch.shards);
        shards.clear();
        self.remote_subs.matches(realm, p.topic, &mut shards);
        if !shards.is_empty() {
            let shared: Arc<[u8]> = Arc::from(&frame[..]);
            let topic = topic_range.start as u32..topic_range.end as u32;
            for &to in &shards {
                let msg = ShardMsg::Publish {
                    realm,
                    frame: shared.clone(),
                    topic: topic.clone(),
                };
                if !self.send_data(to, msg) {
                    self.counters.drop(DropReason::ShardBacklog);
                }
            }
        }
        self.scratch.shards = shards;
        self.scratch.frame = frame;
    }

    /// Delivers an encoded PUBLISH to this shard's sessions that match `topic`, each once,
    /// except `publisher`.
    fn deliver(
        &mut self,
        realm: RealmId,
        topic: &[u8],
        frame: &[u8],
        publisher: Option<SessionKey>,
    ) {
        let mut targets = std::mem::take(&mut self.scratch.sessions);
        targets.clear();
        self.local_subs.matches(realm, topic, &mut targets);
        let limits = &self.config.limits;
        for &target in &targets {
            if Some(target) == publisher {
                continue;
            }
            let Some(s) = self.sessions.get_mut(target) else {
                continue;
            };
            if s.out.len() >= limits.max_output {
                self.counters.drop(DropReason::SlowConsumer);
                continue;
            }
            s.out.buf.extend_from_slice(frame);
            self.counters.deliveries += 1;
            if !s.queued {
                s.queued = true;
                self.ready.push_back(target);
            }
            if s.out.len() >= limits.max_output && s.timer.is_none() {
                let at = self.now + limits.slow_consumer_timeout;
                s.timer = Some(self.wheel.insert(at, Timer::SlowConsumer(target)));
            }
        }
        self.scratch.sessions = targets;
    }

    /// Adds each valid pattern. Refusals are answered with at most one ERROR per code per
    /// frame, naming the first pattern refused, so that one frame cannot ask for an answer
    /// per pattern.
    fn on_subscribe(&mut self, _now: Time, key: SessionKey, topics: Strings<'_>) {
        let max = self.config.limits.max_subscriptions;
        let mut invalid = Refusals::default();
        let mut over = Refusals::default();
        for pattern in topics.iter() {
            let Some(s) = self.sessions.get_mut(key) else {
                return;
            };
            let realm = s.realm;
            if !is_valid_pattern(pattern) {
                invalid.add(pattern);
                continue;
            }
            if s.patterns.len() >= max {
                if !s.patterns.iter().any(|p| **p == *pattern) {
                    over.add(pattern);
                }
                continue;
            }
            if !self.local_subs.insert(realm, pattern, key) {
                continue;
            }
            s.patterns.push(pattern.into());
            if self.local_subs.subscribers_of(realm, pattern) == 1 {
                self.announce_interest(key, realm, pattern, true);
            }
        }
        let answers = FrameType::Subscribe;
        self.send_refusals(
            key,
            &invalid,
            "invalid_pattern",
            "not a valid pattern",
            answers,
        );
        let full = "the session holds --max-subscriptions patterns";
        self.send_refusals(key, &over, "too_many_subscriptions", full, answers);
    }

    fn on_unsubscribe(&mut self, _now: Time, key: SessionKey, topics: Strings<'_>) {
        let mut invalid = Refusals::default();
        for pattern in topics.iter() {
            let Some(s) = self.sessions.get_mut(key) else {
                return;
            };
            let realm = s.realm;
            if !is_valid_pattern(pattern) {
                invalid.add(pattern);
                continue;
            }
            if !self.local_subs.remove(realm, pattern, key) {
                continue;
            }
            if let Some(i) = s.patterns.iter().position(|p| **p == *pattern) {
                s.patterns.swap_remove(i);
            }
            if self.local_subs.subscribers_of(realm, pattern) == 0 {
                self.announce_interest(key, realm, pattern, false);
            }
        }
        let answers = FrameType::Unsubscribe;
        self.send_refusals(
            key,
            &invalid,
            "invalid_pattern",
            "not a valid pattern",
            answers,
        );
    }

    /// One ERROR for the patterns of a frame refused with `code`, if any.
    fn send_refusals(
        &mut self,
        key: SessionKey,
        refused: &Refusals<'_>,
        code: &str,
        message: &str,
        answers: FrameType,
    ) {
        let Some(first) = refused.first else { return };
        if refused.count == 1 {
            self.send_error(key, code, message, answers, Some(first), None);
        } else {
            let message = format!(
                "{message} ({} patterns of the frame refused)",
                refused.count
            );
            self.send_error(key, code, &message, answers, Some(first), None);
        }
    }

    /// Tells the other shards that this one now has (or no longer has) subscribers of
    /// `pattern`; the session's next PING waits until they have applied it.
    fn announce_interest(&mut self, key: SessionKey, realm: RealmId, pattern: &[u8], add: bool) {
        if self.config.shards < 2 {
            return;
        }
        if let Some(s) = self.sessions.get_mut(key) {
            s.barrier.dirty = true;
        }
        self.broadcast(ShardMsg::Interest {
            realm,
            pattern: pattern.into(),
            add,
        });
    }

    // ---------------------------------------------------------------------------------------
    // Registrations
    // ---------------------------------------------------------------------------------------

    fn on_register(&mut self, now: Time, key: SessionKey, r: Register<'_>) {
        let me = self.id();
        let limits = &self.config.limits;
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if !is_valid_topic(r.procedure) {
            self.send_error(
                key,
                "invalid_procedure",
                "not a valid procedure name",
                FrameType::Register,
                None,
                Some(r.procedure),
            );
            return;
        }
        let known = s.procedures.iter().any(|p| **p == *r.procedure);
        if !known && s.procedures.len() >= limits.max_registrations {
            self.send_error(
                key,
                "too_many_registrations",
                "the session holds --max-registrations procedures",
                FrameType::Register,
                None,
                Some(r.procedure),
            );
            return;
        }
        let ttl = match r.ttl_s {
            Some(secs) if secs > 0 => Duration::from_secs(secs).min(limits.service_ttl),
            _ => limits.service_ttl,
        };
        let realm = s.realm;
        let this = SessionRef { shard: me, key };
        if self
            .registry
            .register(realm, r.procedure, this, Some(now + ttl))
            == Registered::New
        {
            s.procedures.push(r.procedure.into());
            s.provider = true;
            if self.config.shards > 1 {
                s.barrier.dirty = true;
                self.broadcast(ShardMsg::Provider {
                    realm,
                    procedure: r.procedure.into(),
                    session: key,
                    add: true,
                });
            }
        }
    }

    fn on_unregister(&mut self, _now: Time, key: SessionKey, procedure: &[u8]) {
        let me = self.id();
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if !is_valid_topic(procedure) {
            self.send_error(
                key,
                "invalid_procedure",
                "not a valid procedure name",
                FrameType::Unregister,
                None,
                Some(procedure),
            );
            return;
        }
        let realm = s.realm;
        if !self
            .registry
            .unregister(realm, procedure, SessionRef { shard: me, key })
        {
            return;
        }
        if let Some(i) = s.procedures.iter().position(|p| **p == *procedure) {
            s.procedures.swap_remove(i);
        }
        if self.config.shards > 1 {
            s.barrier.dirty = true;
            self.broadcast(ShardMsg::Provider {
                realm,
                procedure: procedure.into(),
                session: key,
                add: false,
            });
        }
    }

    /// Removes the registrations of this shard's sessions that expired.
    fn prune(&mut self, now: Time) {
        let mut removed = std::mem::take(&mut self.scratch.removed);
        removed.clear();
        self.registry.prune(now, &mut removed);
        if !removed.is_empty() {
            self.events.push_back(Event::Pruned {
                removed: removed.len(),
            });
        }
        for r in removed.drain(..) {
            self.counters.registrations_expired += 1;
            if let Some(s) = self.sessions.get_mut(r.provider.key) {
                if let Some(i) = s.procedures.iter().position(|p| *p == r.procedure) {
                    s.procedures.swap_remove(i);
                }
            }
            self.broadcast(ShardMsg::Provider {
                realm: r.realm,
                procedure: r.procedure,
                session: r.provider.key,
                add: false,
            });
        }
        self.scratch.removed = removed;
    }

    // ---------------------------------------------------------------------------------------
    // Calls
    // ---------------------------------------------------------------------------------------

    fn on_call(&mut self, now: Time, key: SessionKey, c: Call<'_>) {
        let me = self.id();
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        let realm = s.realm;
        let Some(call_id) = c
            .call_id
            .and_then(OwnedCallId::from_wire)
            .filter(|_| is_valid_topic(c.procedure))
        else {
            self.counters.call(CallOutcome::InvalidCall);
            self.reply_error(key, c.call_id, CallError::InvalidCall);
            return;
        };
        let refusal = if self.pending.contains_id(key, &call_id) {
            Some(CallError::DuplicateCallId)
        } else if self.pending.len() >= self.config.limits.max_pending_calls {
            Some(CallError::Overloaded)
        } else {
            None
        };
        if let Some(error) = refusal {
            self.counters.call(error.into());
            self.reply_error(key, c.call_id, error);
            return;
        }
        let Some(provider) = self.registry.pick(realm, c.procedure) else {
            self.counters.call(CallOutcome::ProcedureNotFound);
            self.reply_error(key, c.call_id, CallError::ProcedureNotFound);
            return;
        };
        let max_output = self.config.limits.max_output;
        let busy = if provider.shard == me {
            self.sessions
                .get(provider.key)
                .is_none_or(|p| p.state != State::Active || p.out.len() >= max_output)
        } else {
            self.outbox[provider.shard.index()].len() >= self.config.limits.max_shard_backlog
        };
        if busy {
            self.counters.call(CallOutcome::Overloaded);
            self.reply_error(key, c.call_id, CallError::Overloaded);
            return;
        }
        let timeout = match c.timeout_ms {
            Some(ms) if ms > 0 => {
                Duration::from_millis(ms).min(self.config.limits.max_call_timeout)
            }
            _ => self.config.limits.call_timeout,
        };
        let call = self.pending.vacant_key();
        let deadline = self.wheel.insert(now + timeout, Timer::Call(call));
        if self
            .pending
            .insert(key, call_id, provider, deadline)
            .is_err()
        {
            // The duplicate check above ran on the same table an instant ago.
            debug_assert!(false, "duplicate call id after the check");
            self.wheel.cancel(deadline);
            return;
        }
        let token = self.token(call);
        let mut frame = std::mem::take(&mut self.scratch.frame);
        frame.clear();
        let forwarded = Call {
            procedure: c.procedure,
            args: c.args,
            call_id: Some(CallIdRef::Uint(token.0)),
            timeout_ms: Some(timeout.as_millis() as u64),
        };
        Message::Call(forwarded).encode(&mut frame);
        if provider.shard == me {
            if let Some(p) = self.sessions.get_mut(provider.key) {
                p.out.buf.extend_from_slice(&frame);
                self.mark_ready(provider.key);
            }
        } else {
            let msg = ShardMsg::Call {
                token,
                provider: provider.key,
                frame: frame.as_slice().into(),
            };
            self.outbox[provider.shard.index()].push_back(msg);
            self.counters.shard_messages_out += 1;
        }
        self.scratch.frame = frame;
    }

    fn on_reply(&mut self, now: Time, key: SessionKey, r: Reply<'_>) {
        let me = self.id();
        let Some(CallIdRef::Uint(raw)) = r.call_id else {
            self.counters.late_replies += 1;
            return;
        };
        let token = CallToken(raw);
        let caller_shard = token.shard();
        if caller_shard.0 >= self.config.shards {
            self.counters.late_replies += 1;
            return;
        }
        if caller_shard == me {
            self.complete_call(token, SessionRef { shard: me, key }, r.outcome);
            return;
        }
        let outcome = match r.outcome {
            Outcome::Result(raw) => OwnedOutcome::Result(raw.0.into()),
            Outcome::Error { code, message } => OwnedOutcome::Error {
                code: code.into(),
                message: message.map(Into::into),
            },
        };
        self.send(
            now,
            caller_shard,
            ShardMsg::Reply {
                token,
                provider: key,
                outcome,
            },
        );
    }

    /// On the caller's shard: the provider answered.
    fn complete_call(&mut self, token: CallToken, provider: SessionRef, outcome: Outcome<'_>) {
        let call = self.pending.find(token.index(), token.generation());
        let Some(call) =
            call.filter(|&k| self.pending.get(k).is_some_and(|c| c.provider == provider))
        else {
            self.counters.late_replies += 1;
            return;
        };
        let Some(c) = self.pending.remove(call) else {
            return;
        };
        self.wheel.cancel(c.deadline);
        self.counters.call(CallOutcome::Ok);
        let reply = Reply {
            call_id: Some(c.call_id.as_wire()),
            outcome,
        };
        self.write(c.caller, &Message::Reply(reply));
    }

    /// On the caller's shard: the gateway fails a pending call.
    fn fail_call(&mut self, call: CallKey, error: CallError) {
        let Some(c) = self.pending.remove(call) else {
            return;
        };
        self.wheel.cancel(c.deadline);
        self.counters.call(error.into());
        self.reply_error(c.caller, Some(c.call_id.as_wire()), error);
    }

    /// Tells a provider, here or on its shard, to stop working on a call.
    fn cancel_provider(
        &mut self,
        now: Time,
        provider: SessionRef,
        token: CallToken,
        reason: CancelReason,
    ) {
        if provider.shard == self.id() {
            self.cancel_at_provider(provider.key, token, reason);
        } else {
            self.send(
                now,
                provider.shard,
                ShardMsg::Cancel {
                    token,
                    provider: provider.key,
                    reason,
                },
            );
        }
    }

    fn cancel_at_provider(&mut self, provider: SessionKey, token: CallToken, reason: CancelReason) {
        if self
            .sessions
            .get(provider)
            .is_some_and(|s| s.state == State::Active)
        {
            let cancel = Cancel {
                call_id: CallIdRef::Uint(token.0),
                reason: reason.as_str().as_bytes(),
            };
            self.write(provider, &Message::Cancel(cancel));
        }
    }

    fn token(&self, call: CallKey) -> CallToken {
        CallToken::new(self.id(), SlabKey::index(call), SlabKey::generation(call))
    }

    // ---------------------------------------------------------------------------------------
    // Output helpers
    // ---------------------------------------------------------------------------------------

    /// Appends a frame to a session's output. Used for frames that are never dropped (replies,
    /// errors, PONG, DISCONNECT, CANCEL).
    fn write(&mut self, key: SessionKey, msg: &Message<'_>) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        msg.encode(&mut s.out.buf);
        self.mark_ready(key);
    }

    /// Queues a session that got output for the driver, and starts its slow-consumer timer
    /// if the output just went over its bound.
    fn mark_ready(&mut self, key: SessionKey) {
        let limits = &self.config.limits;
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if !s.queued {
            s.queued = true;
            self.ready.push_back(key);
        }
        if s.state == State::Active && s.timer.is_none() && s.out.len() >= limits.max_output {
            let at = self.now + limits.slow_consumer_timeout;
            s.timer = Some(self.wheel.insert(at, Timer::SlowConsumer(key)));
        }
    }

    fn send_error(
        &mut self,
        key: SessionKey,
        code: &str,
        message: &str,
        answers: FrameType,
        topic: Option<&[u8]>,
        procedure: Option<&[u8]>,
    ) {
        let error = ErrorMsg {
            code: code.as_bytes(),
            message: message.as_bytes(),
            frame_type: answers as u64,
            topic,
            procedure,
        };
        self.write(key, &Message::Error(error));
    }

    fn reply_error(&mut self, key: SessionKey, call_id: Option<CallIdRef<'_>>, error: CallError) {
        let outcome = Outcome::Error {
            code: error.code().as_bytes(),
            message: Some(error.message().as_bytes()),
        };
        self.write(key, &Message::Reply(Reply { call_id, outcome }));
    }

    // ---------------------------------------------------------------------------------------
    // Shard messages
    // ---------------------------------------------------------------------------------------

    /// Sends a message that is never shed; to this shard itself, it is handled at once.
    fn send(&mut self, now: Time, to: ShardId, msg: ShardMsg) {
        if to == self.id() {
            self.handle_shard_message(now, to, msg);
        } else {
            self.outbox[to.index()].push_back(msg);
            self.counters.shard_messages_out += 1;
        }
    }

    /// Queues a data message to another shard unless its link is backed up.
    fn send_data(&mut self, to: ShardId, msg: ShardMsg) -> bool {
        let queue = &mut self.outbox[to.index()];
        if queue.len() >= self.config.limits.max_shard_backlog {
            return false;
        }
        queue.push_back(msg);
        self.counters.shard_messages_out += 1;
        true
    }

    /// Sends a replication message to every other shard.
    fn broadcast(&mut self, msg: ShardMsg) {
        let me = self.id();
        for to in 0..self.config.shards {
            if to != me.0 {
                self.outbox[usize::from(to)].push_back(msg.clone());
                self.counters.shard_messages_out += 1;
            }
        }
    }

    fn wall_clock(&self, now: Time) -> u64 {
        (now.as_millis() as i64)
            .saturating_add(self.config.wall_clock_offset_ms)
            .max(0) as u64
    }
}

/// Compares two secrets in time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
