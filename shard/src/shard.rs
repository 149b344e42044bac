//! The `Shard`: everything one core of the gateway serves, as a deterministic state machine.
//!
//! This file is the contract: the type, the order in which a driver calls it, and its inputs
//! (`handle_*`) and outputs (`poll_*`). Each feature lives in a module of its own:
//!
//! - [`session`]: a session's state, its frames in and its output out (one rule queues output
//!   and starts the slow-consumer timer);
//! - [`admission`]: CONNECT, the directory round trip to the node's owner, and a session's end;
//! - [`pubsub`]: PUBLISH, SUBSCRIBE, UNSUBSCRIBE and the interest other shards have;
//! - [`procedures`]: REGISTER_PROCEDURE, UNREGISTER_PROCEDURE and the expiry of registrations;
//! - [`calls`]: CALL, REPLY and CANCEL, on the caller's and on the provider's shard;
//! - [`barrier`]: PING as a barrier behind the replication messages a session caused;
//! - [`outbox`]: the one way to queue a message for another shard;
//! - [`link`]: peer links of the gateway mesh: their streams, output, keep-alive, loss;
//! - [`linkframes`]: what a link's frames do: handshake, admission, members, interest, PING;
//! - [`peering`]: shard 0's peer table and dial schedule;
//! - [`meshview`]: what every shard knows of the mesh, and the interest it advertises.

mod admission;
mod barrier;
mod calls;
mod link;
mod linkframes;
mod meshview;
mod outbox;
mod peering;
mod procedures;
mod pubsub;
mod session;

use std::collections::VecDeque;

use crate::clients::ClientTable;
use crate::config::Config;
use crate::genslab::GenSlab;
use crate::ids::{DriverToken, LinkKey, NodeId, SessionKey, SessionRef, ShardId, Time};
use crate::mesh::counters::LinkCounters;
use crate::metrics::{Counters, DropReason, Metrics};
use crate::pending::{CallKey, PendingCalls};
use crate::registry::{Registry, Removed};
use crate::router::{Admitted, ShardMsg};
use crate::subs::SubscriptionIndex;
use crate::wheel::{CallWheel, TimerKey};
use crate::wire::{LinkReason, LinkStream, Reason};

pub use link::LinkState;
use meshview::MeshState;
use outbox::Outbox;
use session::{Session, State};

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
///
/// # Time
///
/// The shard has one notion of now: the latest time any input carried. Every `handle_*`
/// advances it first, and everything the input causes happens at it. An input stamped earlier
/// than one already seen is taken as happening at the later time: the shard's time never goes
/// back.
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
    outbox: Outbox,
    ready: VecDeque<SessionKey>,
    closes: VecDeque<(SessionKey, Reason)>,
    driver_timers: VecDeque<DriverToken>,
    events: VecDeque<Event>,
    counters: Counters,
    scratch: Scratch,
    /// The time of the latest input: the shard's now.
    now: Time,
    /// The gateway mesh, with `--node-name`.
    mesh: Option<Box<MeshState>>,
    rng: fastrand::Rng,
}

/// A dial the shard asks the driver for: a QUIC connection with ALPN `meshgate-peer` to
/// `addr`, reported with [`Shard::handle_link_connected`] or [`Shard::handle_link_closed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialRequest {
    pub link: LinkKey,
    pub addr: Box<str>,
}

/// How a peer link's connection ended, as the driver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// A dial got no QUIC handshake.
    DialFailed,
    /// The connection closed: by the peer with this application close code, or without one
    /// (a transport error, the idle timeout, or the close the shard asked for).
    Closed { code: Option<u64> },
}

/// One peer link, for `/peers` and the per-peer metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkReport {
    /// The peer's name, once its HELLO was read.
    pub node_name: Option<Box<[u8]>>,
    pub node_id: Option<NodeId>,
    /// The peer's advertised address.
    pub addr: Option<Box<[u8]>>,
    /// The address dialed, for a dialed link.
    pub dialed: Option<Box<str>>,
    pub state: LinkState,
    /// When it entered its state.
    pub since: Time,
    pub rtt_ms: Option<u64>,
    /// Entries in the peer's interest tables, all realms.
    pub patterns: usize,
    pub procedures: usize,
    pub shared_realms: Vec<Box<[u8]>>,
    pub unshared_realms: Vec<Box<[u8]>>,
    pub counters: LinkCounters,
    /// Bytes queued to its data stream (what `--max-peer-output` bounds).
    pub output_bytes: usize,
    /// Calls forwarded on it, and calls received on it, in flight.
    pub calls_out: usize,
    pub calls_in: usize,
}

/// An address shard 0 dials, for `/peers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialReport {
    pub addr: Box<str>,
    /// The name of the gateway found there, once known.
    pub node_name: Option<Box<[u8]>>,
    /// When it is dialed next; `None` while a dial is under way or a link to it is admitted.
    pub next_at: Option<Time>,
}

/// The members shard 0 has admitted, for `/peers` and `/health`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerTableReport {
    pub members: Vec<Box<[u8]>>,
    pub dials: Vec<DialReport>,
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
    /// A peer serves a realm this gateway serves, with other tokens: it is not shared.
    UnsharedRealm { peer: Box<[u8]>, realm: Box<[u8]> },
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
    /// Timers besides the shard's own periodic prune (and, in a mesh, its tick and dials).
    pub timers: usize,
    pub outbox: usize,
    /// Peer links held by this shard.
    pub links: usize,
    /// Up links, patterns and procedure entries of peers, as this shard's copy holds them.
    pub mesh_view: [usize; 3],
    /// Members in shard 0's peer table.
    pub peers: usize,
    /// Mesh barriers waiting for this shard's links.
    pub mesh_waits: usize,
    pub ready: usize,
    pub closes: usize,
    pub output_bytes: usize,
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

/// Every deadline the shard keeps, in its one wheel.
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
    Driver(DriverToken),
    /// The mesh's once-a-second work: handshake deadlines, keep-alive, digests.
    MeshTick,
    /// Shard 0's dial schedule has an address due.
    Dials,
}

impl Shard {
    /// A shard with no sessions. `now` starts its clock and its timer wheel.
    pub fn new(config: Config, now: Time) -> Shard {
        let shards = config.shards.max(1);
        let mut wheel = CallWheel::new(now);
        wheel.insert(now + config.limits.prune_interval, Timer::Prune);
        let mesh = config.mesh.clone().map(|m| {
            wheel.insert(now + meshview::MESH_TICK, Timer::MeshTick);
            Box::new(MeshState::new(m, config.shard, config.realms.len(), now))
        });
        let mut shard = Shard {
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
            outbox: Outbox::new(shards, config.limits.max_shard_backlog),
            ready: VecDeque::new(),
            closes: VecDeque::new(),
            driver_timers: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            scratch: Scratch::default(),
            now,
            mesh,
            rng: fastrand::Rng::with_seed(config.seed),
            config,
        };
        shard.arm_dials();
        shard
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
        self.advance(now);
        self.open_session()
    }

    /// Bytes read from a session's control stream.
    pub fn handle_stream_data(&mut self, now: Time, key: SessionKey, data: &[u8]) {
        self.advance(now);
        self.read_stream(key, data);
    }

    /// The client ended its side of the control stream: the session ends, as DISCONNECT
    /// `normal` when the stream stopped between frames and as a protocol error when it cut one.
    /// After FIN the frames sent before it are handled first, once the session is admitted.
    pub fn handle_stream_end(&mut self, now: Time, key: SessionKey, end: StreamEnd) {
        self.advance(now);
        self.stream_ended(key, end);
    }

    /// The session's connection is gone (closed by either side, or idle): everything the
    /// session owned is removed, and its key becomes stale.
    pub fn handle_session_closed(&mut self, now: Time, key: SessionKey) {
        self.advance(now);
        self.connection_closed(key);
    }

    /// A message from shard `from` (which may be this shard).
    pub fn handle_shard_message(&mut self, now: Time, from: ShardId, msg: ShardMsg) {
        self.advance(now);
        self.on_shard_message(from, msg);
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        while let Some((_, timer)) = self.wheel.poll_expired(self.now) {
            match timer {
                Timer::Connect(key) => self.on_connect_timeout(key),
                Timer::SlowConsumer(key) => self.on_slow_consumer_timeout(key),
                Timer::Call(call) => self.on_call_timeout(call),
                Timer::Prune => self.on_prune_timer(),
                Timer::Driver(token) => self.driver_timers.push_back(token),
                Timer::MeshTick => self.on_mesh_tick(),
                Timer::Dials => self.on_dial_timer(),
            }
        }
    }

    /// Ends every session and every peer link with DISCONNECT `shutting_down`.
    pub fn shutdown(&mut self, now: Time) {
        self.advance(now);
        let keys: Vec<SessionKey> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, Reason::ShuttingDown, "the gateway is stopping");
        }
        for key in self.link_keys() {
            let reason = LinkReason::Session(Reason::ShuttingDown);
            self.close_link(key, reason, "the gateway is stopping");
        }
    }

    // ---------------------------------------------------------------------------------------
    // Peer links (the gateway mesh, PROTOCOL.md section 9)
    // ---------------------------------------------------------------------------------------

    /// A connection with ALPN `meshgate-peer` was accepted and finished its QUIC handshake:
    /// returns the link's key (`None` without a mesh: the driver closes it). `nonce` must be
    /// 32 random bytes.
    pub fn handle_link_accepted(&mut self, now: Time, nonce: [u8; 32]) -> Option<LinkKey> {
        self.advance(now);
        self.link_accepted(nonce)
    }

    /// A dial of [`Shard::poll_dial`] finished its QUIC handshake: the link's PEER_HELLO is
    /// queued on its control stream. `nonce` must be 32 random bytes.
    pub fn handle_link_connected(&mut self, now: Time, link: LinkKey, nonce: [u8; 32]) {
        self.advance(now);
        self.link_connected(link, nonce);
    }

    /// Bytes read from one of a link's streams.
    pub fn handle_link_data(&mut self, now: Time, link: LinkKey, stream: LinkStream, data: &[u8]) {
        self.advance(now);
        self.link_data(link, stream, data);
    }

    /// The link's connection is gone (or its dial failed): everything a lost link causes
    /// happens, and its key becomes stale.
    pub fn handle_link_closed(&mut self, now: Time, link: LinkKey, end: LinkEnd) {
        self.advance(now);
        match end {
            LinkEnd::DialFailed => self.link_closed(link, None, true),
            LinkEnd::Closed { code } => self.link_closed(link, code, false),
        }
    }

    /// A dial to make.
    pub fn poll_dial(&mut self) -> Option<DialRequest> {
        self.mesh.as_mut()?.dials.pop_front()
    }

    /// A link with bytes to send on either stream; each link is named once until it gets new
    /// output.
    pub fn poll_link_ready(&mut self) -> Option<LinkKey> {
        self.poll_link()
    }

    /// The bytes queued to one of a link's streams.
    pub fn link_output(&self, link: LinkKey, stream: LinkStream) -> &[u8] {
        self.link(link).map_or(&[], |l| l.output(stream))
    }

    /// `n` bytes of [`Shard::link_output`] were handed to the stream.
    pub fn consume_link_output(&mut self, link: LinkKey, stream: LinkStream, n: usize) {
        self.link_consumed(link, stream, n);
    }

    /// Releases the spare capacity of a link's drained output buffers: for a link gone quiet
    /// (a busy one keeps it, so as not to grow it again for every burst).
    pub fn shrink_link_output(&mut self, link: LinkKey) {
        self.shrink_link_output_bufs(link);
    }

    /// Whether the driver should read more of a link's stream now (not while frames wait for
    /// the link's admission).
    pub fn wants_link_input(&self, link: LinkKey, stream: LinkStream) -> bool {
        self.link_wants_input(link, stream)
    }

    /// A link to close once its control output is flushed, and why (its close code is
    /// [`LinkReason::close_code`]). The driver then reports [`Shard::handle_link_closed`].
    pub fn poll_link_close(&mut self) -> Option<(LinkKey, LinkReason)> {
        self.mesh.as_mut()?.link_closes.pop_front()
    }

    /// This shard's links.
    pub fn link_reports(&self) -> Vec<LinkReport> {
        self.link_keys()
            .into_iter()
            .filter_map(|key| self.link_report(key))
            .collect()
    }

    /// Per peer name, the frames and bytes this shard's links to it carried, ended links
    /// included (the per-peer counters only grow).
    pub fn peer_counters(&self) -> Vec<(Box<[u8]>, LinkCounters)> {
        self.peer_counts()
    }

    /// Shard 0's peer table and dial schedule (`None` on other shards, or without a mesh).
    pub fn peer_table(&self) -> Option<PeerTableReport> {
        let p = self.mesh.as_ref()?.peering.as_ref()?;
        Some(PeerTableReport {
            members: p.table.iter().map(|(name, _)| name.into()).collect(),
            dials: p
                .schedule
                .entries()
                .map(|(addr, name, next_at)| DialReport {
                    addr: addr.into(),
                    node_name: name.map(Into::into),
                    next_at,
                })
                .collect(),
        })
    }

    /// Adds a driver timer that fires at `at`; [`Shard::poll_driver_timer`] returns `token`.
    pub fn schedule(&mut self, at: Time, token: DriverToken) -> TimerKey {
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

    /// `n` bytes of [`Shard::output`] were handed to the session's stream.
    pub fn consume_output(&mut self, key: SessionKey, n: usize) {
        self.output_consumed(key, n);
    }

    /// Releases the spare capacity of a session's drained output buffer: for a session gone
    /// quiet (a busy one keeps it, so as not to grow it again for every burst).
    pub fn shrink_output(&mut self, key: SessionKey) {
        self.shrink_session_output(key);
    }

    /// Counts a drop the driver made at one of its limits.
    pub fn count_drop(&mut self, reason: DropReason) {
        self.counters.drop(reason);
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

    /// Whether the driver should read more of the session's control stream now. Not while
    /// its output is over the bound (PROTOCOL.md 5.5), nor while frames wait for admission or
    /// for the output to drain, nor while it has `--max-waiting-pings` PINGs waiting for their
    /// barrier: the bytes then wait in the transport, whose flow control holds the client
    /// back.
    pub fn wants_input(&self, key: SessionKey) -> bool {
        self.sessions.get(key).is_some_and(|s| {
            matches!(s.state, State::AwaitingConnect | State::Active)
                && s.out.len() < self.config.limits.max_output
                && !s.reader.has_frame()
                && s.barrier.waiting() < self.config.limits.max_waiting_pings
        })
    }

    /// A session to close once its output is flushed, and why (its close code is
    /// [`Reason::close_code`]).
    pub fn poll_close(&mut self) -> Option<(SessionKey, Reason)> {
        self.closes.pop_front()
    }

    /// Messages waiting for shard `to`, oldest first. The driver moves them to the channel and
    /// leaves in place what the channel cannot take yet.
    pub fn outbox(&mut self, to: ShardId) -> &mut VecDeque<ShardMsg> {
        self.outbox.queue_mut(to)
    }

    /// A driver timer that fired.
    pub fn poll_driver_timer(&mut self) -> Option<DriverToken> {
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
            output_bytes: self.output_bytes() as u64,
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
            timers: self.wheel.len().saturating_sub(1) - self.mesh_timers(),
            outbox: self.outbox.len(),
            ready: self.ready.len(),
            closes: self.closes.len(),
            output_bytes: self.output_bytes(),
            links: self.mesh.as_ref().map_or(0, |m| m.links.len()),
            mesh_view: self.mesh.as_ref().map_or([0; 3], |m| {
                [
                    m.up.len(),
                    m.subs.len(),
                    m.procs.iter().map(|p| p.len()).sum(),
                ]
            }),
            peers: self
                .mesh
                .as_ref()
                .and_then(|m| m.peering.as_ref())
                .map_or(0, |p| p.table.len()),
            mesh_waits: self.mesh.as_ref().map_or(0, |m| m.waits.len()),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Dispatch
    // ---------------------------------------------------------------------------------------

    /// Moves the shard's now to `now`, unless it is already later.
    fn advance(&mut self, now: Time) {
        self.now = self.now.max(now);
    }

    /// A message from shard `from`, at the shard's now: one handler per variant.
    fn on_shard_message(&mut self, from: ShardId, msg: ShardMsg) {
        self.counters.shard_messages_in += 1;
        let sender = |key| SessionRef { shard: from, key };
        let link_of = |key| crate::ids::LinkRef { shard: from, key };
        match msg {
            ShardMsg::Admit {
                realm,
                node,
                session,
            } => self.admit(realm, node, sender(session)),
            ShardMsg::Admitted { session } => self.on_admitted(session),
            ShardMsg::Refused { session, reason } => self.on_refused(session, reason),
            ShardMsg::Kick { session, reason } => self.on_kicked(session, reason),
            ShardMsg::Leave {
                realm,
                node,
                session,
            } => self.on_left(realm, node, sender(session)),
            ShardMsg::Interest {
                realm,
                pattern,
                add,
            } => self.on_remote_interest(from, realm, &pattern, add),
            ShardMsg::Provider {
                realm,
                procedure,
                session,
                add,
            } => self.on_remote_provider(realm, &procedure, sender(session), add),
            ShardMsg::ProviderGone { session } => self.provider_gone(sender(session)),
            ShardMsg::Barrier { session, seq } => self.on_barrier(from, session, seq),
            ShardMsg::BarrierAck { session, seq } => self.on_barrier_ack(session, seq),
            ShardMsg::Publish {
                realm,
                frame,
                topic,
            } => self.on_remote_publish(realm, &frame, topic),
            ShardMsg::Call {
                token,
                provider,
                frame,
            } => self.on_forwarded_call(token, provider, &frame),
            ShardMsg::CallFailed { token, error } => self.on_call_failed(token, error),
            ShardMsg::Reply {
                token,
                provider,
                outcome,
            } => self.on_forwarded_reply(token, sender(provider), &outcome),
            ShardMsg::Cancel {
                token,
                provider,
                reason,
            } => self.cancel_at_provider(provider, token, reason),
            ShardMsg::AdmitLink { link, peer } => self.on_admit_link(from, link, *peer),
            ShardMsg::LinkAdmitted { link, members } => self.on_link_admitted(link, &members),
            ShardMsg::CloseLink { link, reason, then } => {
                self.close_link(link, reason, "");
                if let Some(admitted) = then {
                    let Admitted {
                        shard,
                        link,
                        members,
                    } = *admitted;
                    self.send(shard, ShardMsg::LinkAdmitted { link, members });
                }
            }
            ShardMsg::Introduce { link, members } => self.send_members(link, &members),
            ShardMsg::Dial { addr, seq, gossip } => self.on_dial(addr, seq, gossip),
            ShardMsg::LinkEnded { link, end } => self.on_link_ended(from, link, &end),
            ShardMsg::Learned { members } => self.on_learned(&members),
            ShardMsg::PeersUsed { names } => self.on_peers_used(&names),
            ShardMsg::LinkUp { link, realms } => self.on_link_up(link_of(link), realms),
            ShardMsg::LinkDown { link } => self.on_link_down(link_of(link)),
            ShardMsg::LinkInterest {
                link,
                realm,
                changes,
            } => self.on_link_interest(link_of(link), realm, &changes),
            ShardMsg::LinkBound { link, over } => self.on_link_bound(link_of(link), over),
            ShardMsg::LinkPublish { link, frame } => self.on_link_publish_out(link, &frame),
            ShardMsg::LinkCall { link, token, frame } => self.on_link_call_out(link, token, &frame),
            ShardMsg::LinkCancel {
                link,
                token,
                reason,
            } => self.on_link_cancel_out(link, token, reason),
            ShardMsg::LinkReply {
                token,
                link,
                outcome,
            } => self.on_link_reply_back(token, link_of(link), &outcome),
            ShardMsg::LinkBarrier { link, seq } => {
                self.send(from, ShardMsg::LinkBarrierAck { link, seq })
            }
            ShardMsg::LinkBarrierAck { link, seq } => self.on_link_barrier_ack(link, seq),
            ShardMsg::MeshBarrier { session, seq } => self.on_mesh_barrier(from, session, seq),
            ShardMsg::MeshBarrierAck { session, seq } => self.on_mesh_barrier_ack(session, seq),
        }
    }

    /// The shard's now as wall-clock milliseconds since the Unix epoch (PONG `server_time`).
    fn server_time(&self) -> u64 {
        (self.now.as_millis() as i64)
            .saturating_add(self.config.wall_clock_offset_ms)
            .max(0) as u64
    }
}
