//! Peer links (PROTOCOL.md 9.2 to 9.5) on the shard that holds their connection: the link and
//! its states, its two streams' bytes in and frames out, keep-alive, the output bound, and
//! everything that happens at once when a link is lost. What each frame does is in
//! [`super::linkframes`].

use std::collections::VecDeque;
use std::time::Duration;

use ahash::AHashSet;

use crate::ids::{LinkKey, RealmId, SessionKey, ShardId, Time};
use crate::mesh::counters::LinkCounters;
use crate::mesh::handshake::{Handshake, Peer};
use crate::mesh::interest::{Change, RemoteInterest};
use crate::metrics::LinkResult;
use crate::pending::Caller;
use crate::router::{CallError, CancelReason, LinkEnding, ShardMsg};
use crate::wire::{
    link_max_frame, Dial, Disconnect, FrameHeader, FrameReader, FrameType, LinkReason, LinkStream,
    PeerMessage, Reason, HEADER_LEN,
};

use super::barrier::Barrier;
use super::session::OutBuf;
use super::Shard;

/// How long a dial may take, QUIC handshake, link handshake and admission together (9.4).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a link stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Dialed: waiting for the QUIC handshake.
    Dialing,
    /// Exchanging PEER_HELLO and PEER_AUTH.
    Handshake,
    /// The handshake succeeded: waiting for shard 0 to admit it.
    Admitting,
    /// Admitted: waiting for the peer's snapshots.
    Syncing,
    /// Up: data frames may be sent.
    Up,
    /// Closed by this gateway: its last output is flushed, then the connection is closed.
    Closing,
}

impl LinkState {
    pub fn is_admitted(self) -> bool {
        matches!(self, LinkState::Syncing | LinkState::Up)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Dialing | LinkState::Handshake | LinkState::Admitting => "connecting",
            LinkState::Syncing => "syncing",
            LinkState::Up => "up",
            LinkState::Closing => "closing",
        }
    }
}

/// A PING this gateway sent on a link's control stream, and the mesh barriers waiting for its
/// PONG.
pub(super) struct SentPing {
    pub(super) timestamp: u64,
    pub(super) at: Time,
    pub(super) waiters: Vec<(ShardId, SessionKey, u32)>,
}

/// One peer link.
pub(super) struct Link {
    pub(super) state: LinkState,
    /// On the dialer's side: the dial.
    pub(super) dial: Option<Dial>,
    pub(super) dialed: Option<Box<str>>,
    pub(super) handshake: Option<Handshake>,
    /// Once the handshake succeeded.
    pub(super) peer: Option<Peer>,
    pub(super) shared: Vec<RealmId>,
    pub(super) control_in: FrameReader,
    pub(super) data_in: FrameReader,
    pub(super) control_out: OutBuf,
    pub(super) data_out: OutBuf,
    /// The data stream's opening PING was seen (acceptor) or its PONG (dialer).
    pub(super) data_opened: bool,
    pub(super) interest: Vec<(RealmId, RemoteInterest)>,
    /// Shared realms whose snapshot from the peer has not ended yet.
    pub(super) awaiting_end: Vec<RealmId>,
    /// Tokens of calls forwarded on the link and not answered.
    pub(super) out_calls: AHashSet<u64>,
    pub(super) counters: LinkCounters,
    pub(super) barrier: Barrier,
    pub(super) pings: VecDeque<SentPing>,
    /// INTEREST or SYNC frames went out since the last PING: a mesh barrier needs a new one.
    pub(super) interest_since_ping: bool,
    pub(super) next_ping: u64,
    pub(super) last_keepalive: Time,
    pub(super) rtt_ms: Option<u64>,
    /// A data frame crossed since the last report to shard 0.
    pub(super) used: bool,
    /// Since when the data output has been over `--max-peer-output`.
    pub(super) over_since: Option<Time>,
    /// Since when the data output has been slow: from going over `--max-peer-output` until
    /// it drains to half of it (dipping under the bound and filling up again does not end it).
    pub(super) slow_since: Option<Time>,
    /// When the data output last went from its bound to under it.
    pub(super) left_bound: Time,
    /// When the link entered its state.
    pub(super) since: Time,
    /// When a link that is not yet admitted gives up.
    pub(super) deadline: Time,
    pub(super) queued: bool,
    pub(super) admission_asked: bool,
    /// The reason it was closed with, sent or received.
    pub(super) reason: Option<LinkReason>,
    /// A dial that met this gateway itself.
    pub(super) found_self: bool,
    /// The peer's HELLO was read.
    pub(super) hello_seen: bool,
    /// The link was up at some point.
    pub(super) was_up: bool,
}

impl Link {
    fn new(max_frame: u32, dialed: Option<(Box<str>, Dial)>, now: Time) -> Link {
        let link_frame = link_max_frame(max_frame);
        let (dialed, dial) = match dialed {
            Some((addr, dial)) => (Some(addr), Some(dial)),
            None => (None, None),
        };
        Link {
            state: LinkState::Dialing,
            dial,
            dialed,
            handshake: None,
            peer: None,
            shared: Vec::new(),
            control_in: FrameReader::new(link_frame),
            data_in: FrameReader::new(link_frame),
            control_out: OutBuf::default(),
            data_out: OutBuf::default(),
            data_opened: false,
            interest: Vec::new(),
            awaiting_end: Vec::new(),
            out_calls: AHashSet::new(),
            counters: LinkCounters::default(),
            barrier: Barrier::default(),
            pings: VecDeque::new(),
            interest_since_ping: false,
            next_ping: 1,
            last_keepalive: now,
            rtt_ms: None,
            used: false,
            over_since: None,
            slow_since: None,
            left_bound: now,
            since: now,
            deadline: now + DIAL_TIMEOUT,
            queued: false,
            admission_asked: false,
            reason: None,
            found_self: false,
            hello_seen: false,
            was_up: false,
        }
    }

    pub(super) fn name(&self) -> Option<&[u8]> {
        self.peer.as_ref().map(|p| &*p.node_name)
    }

    pub(super) fn output(&self, stream: LinkStream) -> &[u8] {
        match stream {
            LinkStream::Control => self.control_out.bytes(),
            LinkStream::Data => self.data_out.bytes(),
        }
    }

    fn out_mut(&mut self, stream: LinkStream) -> &mut OutBuf {
        match stream {
            LinkStream::Control => &mut self.control_out,
            LinkStream::Data => &mut self.data_out,
        }
    }

    pub(super) fn interest_mut(&mut self, realm: RealmId) -> Option<&mut RemoteInterest> {
        self.interest
            .iter_mut()
            .find(|(r, _)| *r == realm)
            .map(|(_, i)| i)
    }

    /// Entries in the peer's tables, all realms: (patterns, procedures).
    pub(super) fn remote_entries(&self) -> (usize, usize) {
        self.interest.iter().fold((0, 0), |(p, q), (_, i)| {
            let (a, b) = i.len();
            (p + a, q + b)
        })
    }
}

/// Counts every frame in `bytes` (whole frames, as just encoded) as sent on the link.
pub(super) fn count_sent(counters: &mut LinkCounters, bytes: &[u8]) {
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER_LEN) {
        let header: &[u8; HEADER_LEN] = header.try_into().expect("a slice of HEADER_LEN");
        let Ok(h) = FrameHeader::parse(header, u32::MAX) else {
            return;
        };
        if let Some(ty) = FrameType::from_u8(h.frame_type) {
            counters.sent(ty, h.frame_len());
        }
        at += h.frame_len();
    }
}

impl Shard {
    pub(super) fn mesh_on(&self) -> bool {
        self.mesh.is_some()
    }

    // ---------------------------------------------------------------------------------------
    // Opening
    // ---------------------------------------------------------------------------------------

    /// A dial shard 0 asked for: the link waits for the driver's connection.
    pub(super) fn on_dial(&mut self, addr: Box<str>, seq: u64, gossip: bool) {
        let max_frame = self.config.limits.max_frame;
        let now = self.now;
        let Some(m) = self.mesh.as_mut() else { return };
        let link = Link::new(max_frame, Some((addr.clone(), Dial { seq, gossip })), now);
        let key = m.links.insert(link);
        m.dials
            .push_back(crate::shard::DialRequest { link: key, addr });
    }

    pub(super) fn link_accepted(&mut self, nonce: [u8; 32]) -> Option<LinkKey> {
        let max_frame = self.config.limits.max_frame;
        let now = self.now;
        let m = self.mesh.as_mut()?;
        let mut link = Link::new(max_frame, None, now);
        link.state = LinkState::Handshake;
        link.handshake = Some(Handshake::accept(nonce, now));
        Some(m.links.insert(link))
    }

    pub(super) fn link_connected(&mut self, key: LinkKey, nonce: [u8; 32]) {
        let now = self.now;
        let Some(m) = self.mesh.as_mut() else { return };
        let identity = &m.config.identity;
        let Some(link) = m.links.get_mut(key) else {
            return;
        };
        let (LinkState::Dialing, Some(dial)) = (link.state, link.dial) else {
            return;
        };
        let mut out = std::mem::take(&mut link.control_out.buf);
        let start = out.len();
        link.handshake = Some(Handshake::dial(identity, nonce, dial, now, &mut out));
        count_sent(&mut link.counters, &out[start..]);
        link.control_out.buf = out;
        link.state = LinkState::Handshake;
        link.since = now;
        self.mark_link_ready(key);
    }

    // ---------------------------------------------------------------------------------------
    // Input
    // ---------------------------------------------------------------------------------------

    pub(super) fn link_data(&mut self, key: LinkKey, stream: LinkStream, data: &[u8]) {
        let Some(link) = self.link_mut(key) else {
            return;
        };
        if matches!(link.state, LinkState::Closing | LinkState::Dialing) {
            return;
        }
        let pushed = match stream {
            LinkStream::Control => link.control_in.push(data),
            LinkStream::Data => link.data_in.push(data),
        };
        if let Err(e) = pushed {
            self.close_link(key, e.reason().into(), &e.to_string());
            return;
        }
        self.process_link(key);
    }

    /// Whether the driver should read more of a link's stream now: not while frames wait for
    /// admission (the bytes then wait in the transport).
    pub(super) fn link_wants_input(&self, key: LinkKey, stream: LinkStream) -> bool {
        self.link(key).is_some_and(|l| match stream {
            LinkStream::Control => !l.control_in.has_frame(),
            LinkStream::Data => !l.data_in.has_frame(),
        } && l.state != LinkState::Closing)
    }

    /// Handles the frames buffered on both streams while the link is in a state to take them.
    pub(super) fn process_link(&mut self, key: LinkKey) {
        loop {
            let Some(link) = self.link_mut(key) else {
                return;
            };
            let data_ok = link.state.is_admitted();
            let control_ok = matches!(
                link.state,
                LinkState::Handshake | LinkState::Syncing | LinkState::Up
            );
            let (stream, reader) = if control_ok && link.control_in.has_frame() {
                (LinkStream::Control, &mut link.control_in)
            } else if data_ok && link.data_in.has_frame() {
                (LinkStream::Data, &mut link.data_in)
            } else {
                return;
            };
            let mut reader = std::mem::replace(reader, FrameReader::new(0));
            let result = match reader.next_frame() {
                Ok(Some(frame)) => {
                    let len = frame.payload.len() + HEADER_LEN;
                    match PeerMessage::decode(frame.frame_type, frame.payload) {
                        Ok(msg) if msg.stream() == stream || is_opening_ping(&msg, stream) => {
                            if let Some(l) = self.link_mut(key) {
                                l.counters.received(msg.frame_type(), len);
                            }
                            self.on_link_frame(key, stream, msg);
                            Ok(())
                        }
                        Ok(msg) => Err((
                            LinkReason::Session(Reason::ProtocolError),
                            format!("{} on the wrong stream", msg.frame_type().name()),
                        )),
                        Err(e) => Err((e.reason().into(), e.to_string())),
                    }
                }
                Ok(None) => Ok(()),
                Err(e) => Err((e.reason().into(), e.to_string())),
            };
            match self.link_mut(key) {
                Some(link) if link.state != LinkState::Closing => match stream {
                    LinkStream::Control => link.control_in = reader,
                    LinkStream::Data => link.data_in = reader,
                },
                _ => return,
            }
            if let Err((reason, message)) = result {
                self.close_link(key, reason, &message);
                return;
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Output
    // ---------------------------------------------------------------------------------------

    /// Appends a frame to the link's stream (the message says which) and counts it.
    pub(super) fn link_write(&mut self, key: LinkKey, msg: &PeerMessage<'_>) {
        self.link_write_to(key, msg.stream(), msg);
    }

    /// Appends a frame to one of the link's streams and counts it.
    pub(super) fn link_write_to(
        &mut self,
        key: LinkKey,
        stream: LinkStream,
        msg: &PeerMessage<'_>,
    ) {
        let Some(link) = self.link_mut(key) else {
            return;
        };
        if link.state == LinkState::Closing {
            return;
        }
        if matches!(msg, PeerMessage::Interest(_) | PeerMessage::Sync(_)) {
            link.interest_since_ping = true;
        }
        let out = link.out_mut(stream);
        let start = out.buf.len();
        msg.encode(&mut out.buf);
        let len = out.buf.len() - start;
        link.counters.sent(msg.frame_type(), len);
        if msg.stream() == LinkStream::Data {
            link.used = true;
        }
        self.mark_link_ready(key);
        if stream == LinkStream::Data {
            self.check_link_bound(key);
        }
    }

    /// Appends encoded control frames to the link's control stream and counts them.
    pub(super) fn link_write_control(&mut self, key: LinkKey, frames: &[u8]) {
        let Some(link) = self.link_mut(key) else {
            return;
        };
        if link.state == LinkState::Closing {
            return;
        }
        link.control_out.buf.extend_from_slice(frames);
        link.interest_since_ping = true;
        count_sent(&mut link.counters, frames);
        self.mark_link_ready(key);
    }

    /// Appends an encoded data frame of type `ty` to the link's data stream.
    pub(super) fn link_write_encoded(&mut self, key: LinkKey, ty: FrameType, frame: &[u8]) {
        let Some(link) = self.link_mut(key) else {
            return;
        };
        if link.state == LinkState::Closing {
            return;
        }
        link.data_out.buf.extend_from_slice(frame);
        link.counters.sent(ty, frame.len());
        link.used = true;
        self.mark_link_ready(key);
        self.check_link_bound(key);
    }

    pub(super) fn mark_link_ready(&mut self, key: LinkKey) {
        let Some(m) = self.mesh.as_mut() else { return };
        if let Some(link) = m.links.get_mut(key) {
            if !link.queued {
                link.queued = true;
                m.link_ready.push_back(key);
            }
        }
    }

    pub(super) fn poll_link(&mut self) -> Option<LinkKey> {
        self.flush_advertised();
        let m = self.mesh.as_mut()?;
        while let Some(key) = m.link_ready.pop_front() {
            if let Some(link) = m.links.get_mut(key) {
                link.queued = false;
                return Some(key);
            }
        }
        None
    }

    pub(super) fn link_consumed(&mut self, key: LinkKey, stream: LinkStream, n: usize) {
        let Some(link) = self.link_mut(key) else {
            return;
        };
        link.out_mut(stream).consume(n);
        if stream == LinkStream::Data {
            self.check_link_bound(key);
        }
    }

    /// Releases the capacity of the link's drained output buffers.
    pub(super) fn shrink_link_output_bufs(&mut self, key: LinkKey) {
        if let Some(link) = self.link_mut(key) {
            link.control_out.shrink();
            link.data_out.shrink();
        }
    }

    /// Whether the link's data output is over `--max-peer-output`.
    pub(super) fn link_over_bound(&self, key: LinkKey) -> bool {
        let max = self
            .mesh
            .as_ref()
            .map_or(usize::MAX, |m| m.config.max_peer_output);
        self.link(key).is_some_and(|l| l.data_out.len() >= max)
    }

    /// Tells every shard when the link goes over its bound or back under it, and keeps the
    /// start of its slow spell.
    fn check_link_bound(&mut self, key: LinkKey) {
        let now = self.now;
        let over = self.link_over_bound(key);
        let half = self
            .mesh
            .as_ref()
            .map_or(usize::MAX, |m| m.config.max_peer_output / 2);
        let Some(link) = self.link_mut(key) else {
            return;
        };
        if over {
            link.slow_since.get_or_insert(now);
        } else if link.data_out.len() <= half {
            link.slow_since = None;
        }
        if over == link.over_since.is_some() {
            return;
        }
        if !over {
            link.left_bound = now;
        }
        link.over_since = over.then_some(now);
        if link.state == LinkState::Up {
            self.broadcast_view(ShardMsg::LinkBound { link: key, over });
        }
    }

    // ---------------------------------------------------------------------------------------
    // Ending
    // ---------------------------------------------------------------------------------------

    /// Closes a link: DISCONNECT on its control stream, then (by the driver) a QUIC close with
    /// the reason's code. Everything a lost link causes happens now.
    pub(super) fn close_link(&mut self, key: LinkKey, reason: LinkReason, message: &str) {
        let Some(link) = self.link_mut(key) else {
            return;
        };
        if link.state == LinkState::Closing {
            return;
        }
        if link.state != LinkState::Dialing {
            let d = Disconnect {
                reason: reason.as_str().as_bytes(),
                message: (!message.is_empty()).then_some(message.as_bytes()),
            };
            let mut out = std::mem::take(&mut link.control_out.buf);
            let start = out.len();
            crate::wire::Message::Disconnect(d).encode(&mut out);
            count_sent(&mut link.counters, &out[start..]);
            link.control_out.buf = out;
        }
        link.reason = Some(reason);
        self.link_gone(key, Some(reason));
    }

    /// The link is lost (closed by either side): its interest goes on every shard, its calls
    /// fail, its queued data is discarded, and shard 0 is told. With `close` the driver closes
    /// the connection with that reason once the control output is flushed; without, the peer
    /// closed it.
    pub(super) fn link_gone(&mut self, key: LinkKey, close: Option<LinkReason>) {
        let Some(m) = self.mesh.as_mut() else { return };
        let Some(link) = m.links.get_mut(key) else {
            return;
        };
        let was = link.state;
        link.state = LinkState::Closing;
        link.data_out = OutBuf::default();
        link.awaiting_end.clear();
        let mut changes = Vec::new();
        let mut cleared = Vec::new();
        for (realm, interest) in &mut link.interest {
            interest.clear(&mut changes);
            if !changes.is_empty() {
                cleared.push((*realm, std::mem::take(&mut changes)));
            }
        }
        link.interest.clear();
        link.out_calls.clear();
        let pings = std::mem::take(&mut link.pings);
        let result = link_result(link, was);
        let ending = LinkEnding {
            dialed: link.dialed.clone(),
            name: link.name().map(Into::into),
            admission_asked: link.admission_asked,
            reason: link.reason,
            found_self: link.found_self,
        };
        let close = close.unwrap_or(LinkReason::Session(Reason::Normal));
        m.link_closes.push_back((key, close));
        if let Some(name) = link.peer.as_ref().map(|p| p.node_name.clone()) {
            let counts = std::mem::take(&mut link.counters);
            match m.ended_counts.get_mut(&*name) {
                Some(total) => total.add(&counts),
                None => {
                    m.ended_counts.insert(name, counts);
                }
            }
        }
        if let Some(result) = result {
            self.counters.link_result(result);
        }
        for (realm, changes) in cleared {
            self.broadcast_view(ShardMsg::LinkInterest {
                link: key,
                realm,
                changes,
            });
        }
        if was.is_admitted() {
            self.broadcast_view(ShardMsg::LinkDown { link: key });
        }
        for ping in pings {
            for (shard, session, seq) in ping.waiters {
                self.mesh_wait_done(shard, session, seq);
            }
        }
        // Calls received on the link: dropped, their providers cancelled.
        let mut calls = std::mem::take(&mut self.scratch.calls);
        calls.clear();
        self.pending.of_caller(Caller::Link(key), &mut calls);
        for &call in &calls {
            if let Some(c) = self.pending.remove(call) {
                self.wheel.cancel(c.deadline);
                let token = self.token(call);
                self.cancel_provider(c.provider, token, CancelReason::CallerGone);
            }
        }
        self.scratch.calls = calls;
        let end = ShardMsg::LinkEnded {
            link: key,
            end: Box::new(ending),
        };
        self.send(ShardId(0), end);
    }

    /// The driver reports the link's connection gone.
    pub(super) fn link_closed(&mut self, key: LinkKey, code: Option<u64>, dial_failed: bool) {
        let Some(link) = self.link_mut(key) else {
            return;
        };
        if link.state != LinkState::Closing {
            if let Some(reason) = code.and_then(LinkReason::from_close_code) {
                link.reason = link.reason.or(Some(reason));
            }
            if dial_failed && link.state == LinkState::Dialing {
                link.reason = None;
            }
            self.link_gone(key, None);
        }
        if let Some(m) = self.mesh.as_mut() {
            m.links.remove(key);
            m.link_closes.retain(|(k, _)| *k != key);
        }
    }

    /// The once-a-second tick: handshake deadlines, keep-alive, the output bound's timer, and
    /// the report of used links to shard 0.
    pub(super) fn link_tick(&mut self) {
        let now = self.now;
        let Some(m) = self.mesh.as_mut() else { return };
        let keepalive = m.config.peer_idle_timeout / 4;
        let last_tick = std::mem::replace(&mut m.last_tick, now);
        let slow = self.config.limits.slow_consumer_timeout;
        let keys: Vec<LinkKey> = m.links.iter().map(|(k, _)| k).collect();
        let mut used = Vec::new();
        for key in keys {
            let Some(link) = self.link_mut(key) else {
                continue;
            };
            match link.state {
                LinkState::Dialing | LinkState::Handshake | LinkState::Admitting
                    if now >= link.deadline =>
                {
                    let reason = LinkReason::Session(Reason::ConnectTimeout);
                    self.close_link(key, reason, "no link admitted in time");
                }
                LinkState::Syncing | LinkState::Up => {
                    if std::mem::take(&mut link.used) {
                        if let Some(name) = link.name() {
                            used.push(name.into());
                        }
                    }
                    // As for a session: a slow spell that has lasted the timeout, and the
                    // output over its bound now, or gone under it since the last quarter of
                    // the timeout began or since the tick before, whichever is earlier.
                    let (spell_over, lately) = match link.slow_since {
                        Some(since) if now.saturating_since(since) >= slow => {
                            let from = (since + (slow - slow / 4)).min(last_tick);
                            (true, link.over_since.is_some() || link.left_bound >= from)
                        }
                        _ => (false, false),
                    };
                    if spell_over && lately {
                        let message = "data output over its bound for too long";
                        self.close_link(key, Reason::SlowConsumer.into(), message);
                    } else if now.saturating_since(link.last_keepalive) >= keepalive {
                        self.ping_link(key, None);
                    }
                }
                _ => {}
            }
        }
        if !used.is_empty() {
            self.send(ShardId(0), ShardMsg::PeersUsed { names: used });
        }
    }

    pub(super) fn link_used(&mut self, key: LinkKey) {
        if let Some(link) = self.link_mut(key) {
            link.used = true;
        }
    }

    pub(super) fn link(&self, key: LinkKey) -> Option<&Link> {
        self.mesh.as_ref()?.links.get(key)
    }

    pub(super) fn link_mut(&mut self, key: LinkKey) -> Option<&mut Link> {
        self.mesh.as_mut()?.links.get_mut(key)
    }

    /// A call forwarded on one of this shard's links failed before it left (the link is
    /// gone): the caller's shard gets `provider_gone`.
    pub(super) fn link_call_failed(&mut self, token: crate::router::CallToken) {
        let msg = ShardMsg::CallFailed {
            token,
            error: CallError::ProviderGone,
        };
        self.send(token.shard(), msg);
    }

    /// Interest changes of a link's peer: applied here and on every other shard.
    pub(super) fn interest_changed(&mut self, key: LinkKey, realm: RealmId, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        if let Some(link) = self.link_mut(key) {
            link.barrier.dirty = true;
        }
        self.broadcast_view(ShardMsg::LinkInterest {
            link: key,
            realm,
            changes,
        });
    }

    /// Every link's index, for reports.
    pub(super) fn link_keys(&self) -> Vec<LinkKey> {
        self.mesh
            .as_ref()
            .map(|m| m.links.iter().map(|(k, _)| k).collect())
            .unwrap_or_default()
    }

    /// Per peer name, what every link of this shard to it carried, ended links included: the
    /// per-peer counters of `/metrics`, which only grow.
    pub(super) fn peer_counts(&self) -> Vec<(Box<[u8]>, LinkCounters)> {
        let Some(m) = self.mesh.as_ref() else {
            return Vec::new();
        };
        let mut totals: Vec<(Box<[u8]>, LinkCounters)> = m
            .ended_counts
            .iter()
            .map(|(name, c)| (name.clone(), c.clone()))
            .collect();
        for (_, link) in m.links.iter() {
            let Some(name) = link.name() else { continue };
            match totals.iter_mut().find(|(n, _)| **n == *name) {
                Some((_, total)) => total.add(&link.counters),
                None => totals.push((name.into(), link.counters.clone())),
            }
        }
        totals
    }

    /// The mesh's own timers in the wheel: its tick, and shard 0's dial timer when armed.
    pub(super) fn mesh_timers(&self) -> usize {
        self.mesh.as_ref().map_or(0, |m| {
            1 + m
                .peering
                .as_ref()
                .map_or(0, |p| usize::from(p.timer.is_some()))
        })
    }

    pub(super) fn link_report(&self, key: LinkKey) -> Option<crate::shard::LinkReport> {
        let link = self.link(key)?;
        let (patterns, procedures) = link.remote_entries();
        let mut calls = Vec::new();
        self.pending.of_caller(Caller::Link(key), &mut calls);
        let realm_name = |r: &RealmId| self.config.realms[usize::from(r.0)].name.clone();
        Some(crate::shard::LinkReport {
            node_name: link.peer.as_ref().map(|p| p.node_name.clone()),
            node_id: link.peer.as_ref().map(|p| p.node_id),
            addr: link.peer.as_ref().map(|p| p.advertise.clone()),
            dialed: link.dialed.clone(),
            state: link.state,
            since: link.since,
            rtt_ms: link.rtt_ms,
            patterns,
            procedures,
            shared_realms: link.shared.iter().map(realm_name).collect(),
            unshared_realms: link
                .peer
                .as_ref()
                .map(|p| p.unshared.clone())
                .unwrap_or_default(),
            counters: link.counters.clone(),
            output_bytes: link.data_out.len(),
            calls_out: link.out_calls.len(),
            calls_in: calls.len(),
        })
    }
}

/// A PING or PONG received on the data stream, before it is open.
fn is_opening_ping(msg: &PeerMessage<'_>, stream: LinkStream) -> bool {
    stream == LinkStream::Data && matches!(msg, PeerMessage::Ping(_) | PeerMessage::Pong(_))
}

/// What `meshgate_peer_links_total{result}` counts for a link that ends (9.11).
fn link_result(link: &Link, was: LinkState) -> Option<LinkResult> {
    let reason = link.reason;
    if link.was_up {
        return Some(match reason {
            Some(LinkReason::Session(Reason::Replaced)) => LinkResult::Replaced,
            Some(LinkReason::PeerEvicted) => LinkResult::Evicted,
            _ => LinkResult::Lost,
        });
    }
    // A dial that got no QUIC handshake is `dial_failed` whoever gave up on it: the driver
    // (the QUIC handshake failed) or the link's own 10 s deadline (`connect_timeout`, sent to
    // no one since nothing was exchanged).
    if was == LinkState::Dialing && link.dial.is_some() {
        return Some(LinkResult::DialFailed);
    }
    if let Some(result) = reason.and_then(LinkResult::of_reason) {
        return Some(result);
    }
    was.is_admitted().then_some(LinkResult::Lost)
}
