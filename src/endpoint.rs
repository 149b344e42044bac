//! One shard's QUIC endpoint: its quiche connections, the connection-ID maps that find them,
//! and every call into quiche.
//!
//! The driver hands a received datagram's [`Header`] to [`Endpoint::route`], which says what to
//! do with it as data (a [`Route`], after quinn-proto's `Endpoint::handle` and its
//! `DatagramEvent`): hand it to a connection of this shard, forward it to the shard its
//! connection ID names, accept a new connection, refuse one, and so on. The decision itself is
//! [`route`], a pure function tested below without sockets. Everything else quiche does for the
//! driver goes through the methods of [`Endpoint`] and [`Conn`], where quiche's "nothing more"
//! (`Error::Done`) becomes `None`.
//!
//! A connection carries a client's session (ALPN `macula`) or a peer link of the gateway mesh
//! (ALPN `meshgate-peer`): accepted, or dialed by the shard ([`Endpoint::connect`]). A dial's
//! connection IDs name its shard as an accepted connection's do, and mark it as a dial's, so
//! that the acceptor's Initials find the shard that dialed whichever socket they reach.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use arrayvec::ArrayVec;
use meshgate_shard::ids::LinkKey;
use meshgate_shard::metrics::DropReason;
use meshgate_shard::wheel::TimerKey;
use meshgate_shard::wire::{LinkReason, LinkStream, Reason};
use meshgate_shard::{DriverToken, GatewayCounts, LinkEnd, SessionKey, ShardId, Time};
use slab::Slab;

/// Length of the connection IDs the gateway chooses; see [`shard_of`] for the shard they name.
pub const CID_LEN: usize = 16;
type Cid = [u8; CID_LEN];
/// Connection IDs a connection holds at once: its first one, and those issued to replace the
/// ones the client retires (a client moving to a new address switches to a fresh one).
const MAX_CIDS: usize = 4;
/// The one bidirectional stream a client opens; a peer link's control stream too.
const CONTROL_STREAM: u64 = 0;
/// A peer link's data stream, the dialer's second bidirectional stream.
const DATA_STREAM: u64 = 4;
/// The ALPN of peer links (PROTOCOL.md 9.2).
pub const PEER_ALPN: &[u8] = b"meshgate-peer";
/// The smallest datagram that may carry a client's Initial (RFC 9000 14.1).
const MIN_INITIAL_DATAGRAM: usize = 1200;
/// How many times path MTU discovery sends a probe of one size before it takes that size to
/// be more than the path carries (RFC 8899's MAX_PROBES).
const PMTUD_PROBES: u8 = 3;

/// A connection of an [`Endpoint`]: its slot and the slot's generation, so that a handle that
/// outlives its connection never finds the one that reuses the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnHandle {
    index: u32,
    generation: u32,
}

impl ConnHandle {
    /// The token the shard's timer wheel carries for this connection's timer: the one place
    /// where a handle crosses into the core, and comes back by [`ConnHandle::from_token`].
    pub fn token(self) -> DriverToken {
        DriverToken(u64::from(self.index) << 32 | u64::from(self.generation))
    }

    pub fn from_token(token: DriverToken) -> ConnHandle {
        ConnHandle {
            index: (token.0 >> 32) as u32,
            generation: token.0 as u32,
        }
    }
}

/// The first packet header of a received datagram, as routing reads it.
pub struct Header {
    hdr: quiche::Header<'static>,
    /// The length of the whole datagram.
    len: usize,
}

impl Header {
    /// The header of `datagram`'s first packet; `None` when it is no QUIC packet.
    pub fn parse(datagram: &mut [u8]) -> Option<Header> {
        let len = datagram.len();
        let hdr = quiche::Header::from_slice(datagram, CID_LEN).ok()?;
        Some(Header { hdr, len })
    }

    fn is_initial(&self) -> bool {
        self.hdr.ty == quiche::Type::Initial
    }

    fn dcid(&self) -> &[u8] {
        &self.hdr.dcid
    }

    /// Writes into `out` the Version Negotiation packet that answers this header; returns its
    /// length.
    pub fn negotiate_version(&self, out: &mut [u8]) -> Option<usize> {
        quiche::negotiate_version(&self.hdr.scid, &self.hdr.dcid, out).ok()
    }

    /// Writes into `out` the Initial that refuses the connection this header opens; returns
    /// its length (see [`crate::refuse`]).
    pub fn refusal(&self, out: &mut [u8]) -> Option<usize> {
        crate::refuse::connection_refused(&self.hdr, out)
    }
}

/// What the shard knows of a datagram beyond its header.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// Another shard forwarded it here: it is never forwarded again.
    pub forwarded: bool,
    /// Connections the turn may still accept.
    pub accepts_left: usize,
    /// The shard is stopping and accepts no connection.
    pub stopping: bool,
}

/// What to do with a received datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Hand it to this connection of the shard.
    Ours(ConnHandle),
    /// Post it to the shard that owns its connection, the one its connection ID names.
    Forward(ShardId),
    /// An Initial over the turn's accept budget: keep it for a later turn.
    Defer,
    /// An Initial that opens a connection: a unit of the gateway's handshake count is taken
    /// for it; [`Endpoint::accept`] makes the connection.
    Accept,
    /// An Initial over the gateway's handshake limit: answer with CONNECTION_REFUSED.
    Refuse,
    /// An Initial in a version quiche does not speak: answer with Version Negotiation.
    NegotiateVersion,
    /// Drop it.
    Drop(Discard),
}

impl Route {
    /// Whether the datagram took one of the turn's accepts: every Initial past the accept
    /// budget's check does, whether or not a connection follows.
    pub fn spends_accept(self) -> bool {
        matches!(
            self,
            Route::Accept
                | Route::Refuse
                | Route::NegotiateVersion
                | Route::Drop(Discard::Stopping)
        )
    }
}

/// Why a datagram is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// An Initial in a datagram under 1,200 bytes (RFC 9000 14.1): a client pads every
    /// datagram with an Initial to that size, and a shorter one is discarded, which also keeps
    /// the answer to an unvalidated address small.
    ShortInitial,
    /// A packet for no connection of this shard nor of another.
    Stray,
    /// An Initial while the shard is stopping.
    Stopping,
}

impl Discard {
    /// The counter of `/metrics` the drop is counted in, if any: drops at a limit are,
    /// stray packets are not.
    pub fn counted(self) -> Option<DropReason> {
        match self {
            Discard::ShortInitial => Some(DropReason::ShortInitial),
            Discard::Stray | Discard::Stopping => None,
        }
    }
}

/// The shard a destination connection ID names: its first four bytes, big-endian, modulo the
/// shard count (the rule the kernel applies too, see `net::steer_by_connection_id`, so that a
/// datagram reaches the socket of the shard that will take it). Four bytes, not one, so that a
/// client's random first connection ID picks every shard about as often, whatever the count.
/// `None` for a connection ID too short to name one.
pub fn shard_of(dcid: &[u8], shards: u16) -> Option<ShardId> {
    let word = u32::from_be_bytes(dcid.get(..4)?.try_into().ok()?);
    Some(ShardId((word % u32::from(shards.max(1))) as u16))
}

/// Where a datagram goes, from its header, the connection of this shard its destination
/// connection ID names (`known`), and the shard's circumstances. `take_handshake` takes a unit
/// of the gateway's handshake count; it is called only for an Initial the shard would
/// otherwise accept.
pub fn route(
    hdr: &Header,
    known: Option<ConnHandle>,
    here: ShardId,
    shards: u16,
    arrival: Arrival,
    take_handshake: impl FnOnce() -> bool,
) -> Route {
    // An acceptor pads only the datagrams of its Initials that ask for an acknowledgement: a
    // short one that answers a dial is not dropped.
    let answers_dial = is_dial_cid(hdr.dcid());
    if hdr.is_initial() && hdr.len < MIN_INITIAL_DATAGRAM && !answers_dial {
        return Route::Drop(Discard::ShortInitial);
    }
    if let Some(conn) = known {
        return Route::Ours(conn);
    }
    if !hdr.is_initial() || answers_dial {
        // A connection ID the gateway chose names its shard. Any other of its length names one
        // too: while the kernel steers by connection ID it reached that shard already and is
        // dropped here; under the kernel's hash it is forwarded once and dropped there.
        let dcid = hdr.dcid();
        if dcid.len() == CID_LEN && !arrival.forwarded {
            if let Some(owner) = shard_of(dcid, shards).filter(|&owner| owner != here) {
                return Route::Forward(owner);
            }
        }
        return Route::Drop(Discard::Stray);
    }
    if arrival.accepts_left == 0 {
        return Route::Defer;
    }
    if arrival.stopping {
        return Route::Drop(Discard::Stopping);
    }
    if !quiche::version_is_supported(hdr.hdr.version) {
        return Route::NegotiateVersion;
    }
    if !take_handshake() {
        return Route::Refuse;
    }
    Route::Accept
}

/// quiche failed a call on a connection.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct QuicError(quiche::Error);

/// What reading a stream gave.
#[derive(Debug)]
pub enum Read {
    /// `len` bytes, the stream's last if `fin`.
    Data { len: usize, fin: bool },
    /// The other side reset the stream.
    Reset,
    /// quiche failed to read it.
    Failed(QuicError),
}

/// What writing to a stream did.
#[derive(Debug)]
pub enum Write {
    /// The stream took this many bytes (maybe fewer than offered: the rest waits for room).
    Sent(usize),
    /// The stream cannot carry output: the other side never opened it, or asked the gateway
    /// to stop sending on it.
    Unsendable,
    /// quiche failed; the connection is closed.
    Failed(QuicError),
}

/// A connection: quiche's state, the connection IDs that find it, and the driver's
/// bookkeeping.
pub struct Conn {
    /// Boxed: a quiche connection is several KiB, and the slab's spare capacity and the
    /// copies its growth makes would otherwise be in those units.
    q: Box<quiche::Connection>,
    /// The generation of the slot this connection holds (see [`ConnHandle`]).
    generation: u32,
    /// The connection IDs the gateway issued that are still in use; the first is the one the
    /// connection was accepted with.
    scids: ArrayVec<Cid, MAX_CIDS>,
    /// The connection ID the client chose for its first packets.
    odcid: Vec<u8>,
    session: Option<SessionKey>,
    /// The peer link on the connection, from its handshake's end (accepted) or its dial until
    /// it is detached.
    link: Option<LinkKey>,
    /// The shard dialed the connection: the client side of a peer link.
    dialed: bool,
    /// A dialed connection's QUIC handshake ended, and the shard was told.
    connected: bool,
    /// Holds a unit of the gateway's handshake count: accepted, no session or link yet.
    handshaking: bool,
    /// The shard took no more input when a stream was last read.
    pub input_paused: bool,
    /// When a packet from the client was last processed: the idle timeout counts from here,
    /// whatever the gateway sends meanwhile.
    pub heard: Time,
    /// The connection's timer in the shard's wheel.
    pub timer: Option<TimerKey>,
    /// The shard ended the session or the link: close once its last output (of the control
    /// stream) is sent, or at the instant given, whichever comes first.
    pub close_after_flush: Option<(Close, Instant)>,
    /// In the driver's list of connections to flush.
    pub dirty: bool,
    /// Output is waiting for stream capacity.
    pub blocked: bool,
    /// Packets received since the connection last sent, and when it must send their ACK at
    /// the latest (see the driver's delayed acknowledgements).
    pub unacked: u8,
    pub ack_by: Option<Time>,
    /// The connection's empty buffers were shrunk since a packet was last heard.
    pub shrunk: bool,
}

/// How the gateway closes a connection: the application close code of the reason it ended
/// its session or link with, and the reason as the close's phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    pub code: u64,
    pub reason: &'static str,
}

impl From<Reason> for Close {
    fn from(r: Reason) -> Close {
        Close {
            code: r.close_code(),
            reason: r.as_str(),
        }
    }
}

impl From<LinkReason> for Close {
    fn from(r: LinkReason) -> Close {
        Close {
            code: r.close_code(),
            reason: r.as_str(),
        }
    }
}

/// The stream id of one of a peer link's streams.
fn link_stream_id(stream: LinkStream) -> u64 {
    match stream {
        LinkStream::Control => CONTROL_STREAM,
        LinkStream::Data => DATA_STREAM,
    }
}

impl Conn {
    /// The session on the connection, from its handshake's end until it is detached.
    pub fn session(&self) -> Option<SessionKey> {
        self.session
    }

    /// The peer link on the connection, until it is detached.
    pub fn link(&self) -> Option<LinkKey> {
        self.link
    }

    /// Whether the connection is a peer link's: dialed, or accepted with ALPN `meshgate-peer`
    /// (known once its handshake ended).
    pub fn is_peer(&self) -> bool {
        self.dialed || self.q.application_proto() == PEER_ALPN
    }

    /// Whether the connection is closing or draining: no session lives on it any longer.
    pub fn is_closing(&self) -> bool {
        let q = &self.q;
        q.is_draining() || q.peer_error().is_some() || q.local_error().is_some() || q.is_closed()
    }

    pub fn is_closed(&self) -> bool {
        self.q.is_closed()
    }

    /// Whether the QUIC handshake has ended.
    pub fn is_established(&self) -> bool {
        self.q.is_established()
    }

    /// Whether the gateway has closed the connection (its CONNECTION_CLOSE is sent or queued),
    /// or it is gone.
    pub fn close_sent(&self) -> bool {
        self.q.local_error().is_some() || self.q.is_closed()
    }

    /// Closes the connection with an application (`app`) or transport error code.
    pub fn close(&mut self, app: bool, code: u64, reason: &[u8]) {
        // An error means the connection is closed already.
        let _ = self.q.close(app, code, reason);
    }

    /// When quiche's timer fires next.
    pub fn timeout(&self) -> Option<Instant> {
        self.q.timeout_instant()
    }

    /// Hands back the spare capacity of quiche's empty buffers (a quiet connection's).
    pub fn shrink_to_fit(&mut self) {
        self.q.shrink_to_fit();
        self.shrunk = true;
    }

    /// quiche's timer fired.
    pub fn on_timeout(&mut self) {
        self.q.on_timeout();
    }

    /// Whether the other side opened a stream a peer link has no use for (any but 0 and 4).
    pub fn has_foreign_link_stream(&self) -> bool {
        self.q
            .readable()
            .any(|id| id != CONTROL_STREAM && id != DATA_STREAM)
    }

    /// Whether one of a peer link's streams has bytes (or its end) to read.
    pub fn link_readable(&self, stream: LinkStream) -> bool {
        self.q.stream_readable(link_stream_id(stream))
    }

    /// Reads one of a peer link's streams into `buf`; `None` when nothing is left to read.
    pub fn read_link(&mut self, stream: LinkStream, buf: &mut [u8]) -> Option<Read> {
        self.read_stream(link_stream_id(stream), buf)
    }

    /// Writes `data` to one of a peer link's streams; `None` when the stream has no room.
    pub fn write_link(&mut self, stream: LinkStream, data: &[u8]) -> Option<Write> {
        self.write_stream(link_stream_id(stream), data)
    }

    /// The application close code the other side closed the connection with, if it did.
    pub fn peer_close_code(&self) -> Option<u64> {
        self.q
            .peer_error()
            .filter(|e| e.is_app)
            .map(|e| e.error_code)
    }

    /// Stops reading every stream but the control stream: a client opens no other.
    pub fn shut_other_streams(&mut self) {
        for stream in self.q.readable() {
            if stream != CONTROL_STREAM {
                let _ = self.q.stream_shutdown(stream, quiche::Shutdown::Read, 0);
            }
        }
    }

    /// Whether the control stream has bytes (or its end) to read.
    pub fn control_readable(&self) -> bool {
        self.q.stream_readable(CONTROL_STREAM)
    }

    /// Reads the control stream into `buf`; `None` when nothing is left to read.
    pub fn read_control(&mut self, buf: &mut [u8]) -> Option<Read> {
        self.read_stream(CONTROL_STREAM, buf)
    }

    fn read_stream(&mut self, id: u64, buf: &mut [u8]) -> Option<Read> {
        match self.q.stream_recv(id, buf) {
            Ok((len, fin)) => Some(Read::Data { len, fin }),
            Err(quiche::Error::Done) => None,
            Err(quiche::Error::StreamReset(_)) => Some(Read::Reset),
            Err(e) => Some(Read::Failed(QuicError(e))),
        }
    }

    /// Whether the client asked the gateway to stop sending on the control stream
    /// (STOP_SENDING).
    pub fn control_stopped(&mut self) -> bool {
        matches!(
            self.q.stream_capacity(CONTROL_STREAM),
            Err(quiche::Error::StreamStopped(_))
        )
    }

    /// Writes `data` to the control stream; `None` when the stream has no room.
    pub fn write_control(&mut self, data: &[u8]) -> Option<Write> {
        self.write_stream(CONTROL_STREAM, data)
    }

    fn write_stream(&mut self, id: u64, data: &[u8]) -> Option<Write> {
        match self.q.stream_send(id, data, false) {
            Ok(n) => Some(Write::Sent(n)),
            Err(quiche::Error::Done) => None,
            Err(quiche::Error::InvalidStreamState(_) | quiche::Error::StreamStopped(_)) => {
                Some(Write::Unsendable)
            }
            Err(e) => {
                self.close(false, 0x1, b"stream error");
                Some(Write::Failed(QuicError(e)))
            }
        }
    }

    /// Writes the connection's next packet, sent at `at`, into `out`: its length and
    /// destination, `None` when it has nothing to send. A failure closes the connection. A
    /// packet as large as the connection sends now, once the handshake is done, starts path MTU
    /// discovery up to `pmtud_max` (0: never): a connection with that much to send gains from
    /// larger packets, and one that never fills a packet (an idle session, a short-lived one)
    /// spends nothing on probes.
    pub fn send(
        &mut self,
        out: &mut [u8],
        at: Instant,
        pmtud_max: usize,
    ) -> Result<Option<(usize, SocketAddr)>, QuicError> {
        match self.q.send_at(out, at) {
            Ok((len, info)) => {
                if len >= MIN_INITIAL_DATAGRAM
                    && pmtud_max > len
                    && len >= self.q.max_send_udp_payload_size()
                    && self.q.start_pmtud(pmtud_max, PMTUD_PROBES)
                {
                    log::debug!("path MTU discovery from {len} bytes up to {pmtud_max}");
                }
                Ok(Some((len, info.to)))
            }
            Err(quiche::Error::Done) => Ok(None),
            Err(e) => {
                self.close(false, 0x1, b"internal error");
                Err(QuicError(e))
            }
        }
    }
}

/// The QUIC connections of one shard, and the maps that find them: by a connection ID the
/// gateway issued, by the client's first connection ID (until the handshake ends), and by
/// session.
pub struct Endpoint {
    id: ShardId,
    shards: u16,
    quic: quiche::Config,
    /// The configuration of dials to peers; `None` without the gateway mesh.
    dial: Option<quiche::Config>,
    local: SocketAddr,
    conns: Slab<Conn>,
    /// The generation the next connection gets.
    generation: u32,
    by_cid: AHashMap<Cid, ConnHandle>,
    by_odcid: AHashMap<Vec<u8>, ConnHandle>,
    /// The connection of each session, indexed by `SessionKey::index`.
    by_session: Vec<Option<ConnHandle>>,
    /// The connection of each peer link, indexed by `LinkKey::index`.
    by_link: Vec<Option<ConnHandle>>,
    counts: Arc<GatewayCounts>,
    /// `--max-handshakes`, counted for the whole gateway in `counts`.
    max_handshakes: usize,
    /// Connections of this shard in their handshake.
    handshakes: usize,
}

impl Endpoint {
    pub fn new(
        id: ShardId,
        shards: u16,
        quic: quiche::Config,
        dial: Option<quiche::Config>,
        local: SocketAddr,
        counts: Arc<GatewayCounts>,
        max_handshakes: usize,
    ) -> Endpoint {
        Endpoint {
            id,
            shards,
            quic,
            dial,
            local,
            conns: Slab::new(),
            generation: 0,
            by_cid: AHashMap::new(),
            by_odcid: AHashMap::new(),
            by_session: Vec::new(),
            by_link: Vec::new(),
            counts,
            max_handshakes,
            handshakes: 0,
        }
    }

    /// Where a datagram goes (see [`route`]); takes a unit of the gateway's handshake count
    /// when it is [`Route::Accept`].
    pub fn route(&self, hdr: &Header, arrival: Arrival) -> Route {
        let known = self.lookup(hdr.dcid());
        route(hdr, known, self.id, self.shards, arrival, || {
            self.counts.handshakes.try_take(self.max_handshakes)
        })
    }

    /// A new connection for the Initial `hdr` from `from`, after [`Route::Accept`]; when none
    /// can be made, the handshake unit taken for it is given back.
    pub fn accept(&mut self, now: Time, hdr: &Header, from: SocketAddr) -> Option<ConnHandle> {
        let Some(scid) = self.fresh_cid() else {
            self.counts.handshakes.give_back();
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
                self.counts.handshakes.give_back();
                return None;
            }
        };
        let conn = self.insert(now, q, scid, hdr.dcid().to_vec(), None);
        self.by_odcid.insert(hdr.dcid().to_vec(), conn);
        self.handshakes += 1;
        Some(conn)
    }

    /// Dials a peer at `to` for `link`, from the shard's socket; `None` when no connection can
    /// be made (no mesh, or quiche refused). The connection sends its first packets when next
    /// flushed.
    pub fn connect(&mut self, now: Time, to: SocketAddr, link: LinkKey) -> Option<ConnHandle> {
        let scid = self.dial_cid()?;
        let config = self.dial.as_mut()?;
        let cid = quiche::ConnectionId::from_ref(&scid);
        let q = match quiche::connect(None, &cid, self.local, to, config) {
            Ok(q) => Box::new(q),
            Err(e) => {
                log::debug!("shard {}: dial to {to} failed: {e}", self.id.0);
                return None;
            }
        };
        let conn = self.insert(now, q, scid, Vec::new(), Some(link));
        self.index_link(link, conn);
        Some(conn)
    }

    /// Holds a new connection: accepted (holding a handshake unit), or dialed for `link`.
    fn insert(
        &mut self,
        now: Time,
        q: Box<quiche::Connection>,
        scid: Cid,
        odcid: Vec<u8>,
        link: Option<LinkKey>,
    ) -> ConnHandle {
        let mut scids = ArrayVec::new();
        scids.push(scid);
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let dialed = link.is_some();
        let index = self.conns.insert(Conn {
            q,
            generation,
            scids,
            odcid,
            session: None,
            link,
            dialed,
            connected: false,
            handshaking: !dialed,
            input_paused: false,
            heard: now,
            timer: None,
            close_after_flush: None,
            dirty: false,
            blocked: false,
            unacked: 0,
            ack_by: None,
            shrunk: false,
        });
        let conn = ConnHandle {
            index: index as u32,
            generation,
        };
        self.by_cid.insert(scid, conn);
        conn
    }

    pub fn get(&self, conn: ConnHandle) -> Option<&Conn> {
        slot(&self.conns, conn)
    }

    pub fn get_mut(&mut self, conn: ConnHandle) -> Option<&mut Conn> {
        slot_mut(&mut self.conns, conn)
    }

    /// Every connection.
    pub fn iter(&self) -> impl Iterator<Item = (ConnHandle, &Conn)> {
        self.conns.iter().map(|(i, c)| {
            let handle = ConnHandle {
                index: i as u32,
                generation: c.generation,
            };
            (handle, c)
        })
    }

    /// The connection of a session.
    pub fn conn_of(&self, key: SessionKey) -> Option<ConnHandle> {
        let conn = (*self.by_session.get(key.index())?)?;
        (self.get(conn)?.session == Some(key)).then_some(conn)
    }

    /// The shard socket's address.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Connections of this shard in their handshake.
    pub fn handshakes(&self) -> usize {
        self.handshakes
    }

    /// Feeds a datagram that arrived by `at` (the turn's time) to a connection; a packet that
    /// is undecryptable or stray is dropped, and a fatal error closes the connection, which its
    /// next flush notices. Notes when the client was heard from. False when there is no such
    /// connection.
    pub fn recv(
        &mut self,
        now: Time,
        at: Instant,
        conn: ConnHandle,
        buf: &mut [u8],
        from: SocketAddr,
    ) -> bool {
        let to = self.local;
        let Some(c) = slot_mut(&mut self.conns, conn) else {
            return false;
        };
        if c.q.recv_at(buf, quiche::RecvInfo { from, to }, at).is_ok() {
            c.heard = now;
            c.shrunk = false;
        }
        true
    }

    /// Whether the accepted connection's handshake has ended with ALPN `macula`, and it has
    /// no session yet.
    pub fn needs_session(&self, conn: ConnHandle) -> bool {
        self.get(conn)
            .is_some_and(|c| c.handshaking && c.q.is_established() && !c.is_peer())
    }

    /// Whether the accepted connection's handshake has ended with ALPN `meshgate-peer`, and
    /// it has no link yet.
    pub fn needs_link(&self, conn: ConnHandle) -> bool {
        self.get(conn)
            .is_some_and(|c| c.handshaking && c.q.is_established() && c.is_peer())
    }

    /// The link of a dialed connection whose handshake has just ended (once: it is then
    /// marked connected).
    pub fn newly_connected(&mut self, conn: ConnHandle) -> Option<LinkKey> {
        let c = slot_mut(&mut self.conns, conn)?;
        if !c.dialed || c.connected || !c.q.is_established() {
            return None;
        }
        c.connected = true;
        c.link
    }

    /// Puts a session on a connection whose handshake ended: the session takes the
    /// connection's place in the gateway's handshake count until its CONNECT is admitted.
    pub fn attach(&mut self, conn: ConnHandle, key: SessionKey) {
        if !self.end_handshake(conn) {
            return;
        }
        if let Some(c) = slot_mut(&mut self.conns, conn) {
            c.session = Some(key);
        }
        if self.by_session.len() <= key.index() {
            self.by_session.resize(key.index() + 1, None);
        }
        self.by_session[key.index()] = Some(conn);
    }

    /// Puts a peer link on an accepted connection whose handshake ended: its handshake unit
    /// is given back (peer links do not count as clients).
    pub fn attach_link(&mut self, conn: ConnHandle, key: LinkKey) {
        if !self.end_handshake(conn) {
            return;
        }
        if let Some(c) = slot_mut(&mut self.conns, conn) {
            c.link = Some(key);
        }
        self.index_link(key, conn);
    }

    /// An accepted connection's handshake ended: it gives back its handshake unit and forgets
    /// the client's first connection ID. False when there is no such connection.
    fn end_handshake(&mut self, conn: ConnHandle) -> bool {
        let Some(c) = slot_mut(&mut self.conns, conn) else {
            return false;
        };
        if c.handshaking {
            self.counts.handshakes.give_back();
            self.handshakes = self.handshakes.saturating_sub(1);
            c.handshaking = false;
        }
        // The client switched to the gateway's connection ID when it first heard back, before
        // the handshake could end: its own is no longer needed to find this one.
        self.by_odcid.remove(&c.odcid);
        c.odcid = Vec::new();
        true
    }

    fn index_link(&mut self, key: LinkKey, conn: ConnHandle) {
        if self.by_link.len() <= key.index() {
            self.by_link.resize(key.index() + 1, None);
        }
        self.by_link[key.index()] = Some(conn);
    }

    /// Takes the connection's session, if it still has one; the connection itself may stay
    /// for its draining period.
    pub fn detach(&mut self, conn: ConnHandle) -> Option<SessionKey> {
        let key = slot_mut(&mut self.conns, conn)?.session.take()?;
        if let Some(slot) = self.by_session.get_mut(key.index()) {
            *slot = None;
        }
        Some(key)
    }

    /// Takes the connection's link, if it still has one, and how its connection ended as the
    /// shard is told: a dial that never finished its handshake failed; otherwise the
    /// connection closed, with the other side's application close code if it sent one.
    pub fn detach_link(&mut self, conn: ConnHandle) -> Option<(LinkKey, LinkEnd)> {
        let c = slot_mut(&mut self.conns, conn)?;
        let key = c.link.take()?;
        let end = if c.dialed && !c.connected {
            LinkEnd::DialFailed
        } else {
            LinkEnd::Closed {
                code: c.peer_close_code(),
            }
        };
        if let Some(slot) = self.by_link.get_mut(key.index()) {
            *slot = None;
        }
        Some((key, end))
    }

    /// The connection of a peer link.
    pub fn conn_of_link(&self, key: LinkKey) -> Option<ConnHandle> {
        let conn = (*self.by_link.get(key.index())?)?;
        (self.get(conn)?.link == Some(key)).then_some(conn)
    }

    /// Forgets a connection (detached first) and its connection IDs, and gives back its
    /// handshake unit if it holds one; returns its timer, to cancel.
    pub fn remove(&mut self, conn: ConnHandle) -> Option<TimerKey> {
        self.get(conn)?;
        let c = self.conns.try_remove(conn.index as usize)?;
        debug_assert!(
            c.session.is_none() && c.link.is_none(),
            "a connection is detached before it is removed"
        );
        for scid in &c.scids {
            self.by_cid.remove(scid);
        }
        self.by_odcid.remove(&c.odcid);
        if c.handshaking {
            self.handshakes = self.handshakes.saturating_sub(1);
            self.counts.handshakes.give_back();
        }
        c.timer
    }

    /// Whether every connection has sent its CONNECTION_CLOSE (or is gone).
    pub fn all_closes_sent(&self) -> bool {
        self.conns.iter().all(|(_, c)| c.close_sent())
    }

    /// Forgets the connection IDs the client retired and issues fresh ones while it can take
    /// more, so that a client can move to a new address again and again (each move uses an
    /// unused ID). Drains quiche's path events, which nothing else reads.
    pub fn refresh_cids(&mut self, conn: ConnHandle) {
        let Some(c) = slot_mut(&mut self.conns, conn) else {
            return;
        };
        while let Some(retired) = c.q.retired_scid_next() {
            if let Ok(cid) = Cid::try_from(retired.as_ref()) {
                self.by_cid.remove(&cid);
                c.scids.retain(|s| *s != cid);
            }
        }
        while c.q.path_event_next().is_some() {}
        loop {
            let Some(c) = self.get(conn) else { return };
            let open = c.q.is_established() && c.q.local_error().is_none();
            if !open || c.q.peer_error().is_some() || c.q.scids_left() == 0 || c.scids.is_full() {
                return;
            }
            let mut token = [0u8; 16];
            let Some(cid) = self.fresh_cid() else { return };
            if getrandom::getrandom(&mut token).is_err() {
                return;
            }
            let Some(c) = slot_mut(&mut self.conns, conn) else {
                return;
            };
            let cid_ref = quiche::ConnectionId::from_ref(&cid);
            if c.q
                .new_scid(&cid_ref, u128::from_ne_bytes(token), false)
                .is_err()
            {
                return;
            }
            c.scids.push(cid);
            self.by_cid.insert(cid, conn);
        }
    }

    /// The connection a destination connection ID names: one the gateway issued, or the one
    /// a client chose for its first packets.
    fn lookup(&self, dcid: &[u8]) -> Option<ConnHandle> {
        <&Cid>::try_from(dcid)
            .ok()
            .and_then(|c| self.by_cid.get(c))
            .or_else(|| self.by_odcid.get(dcid))
            .copied()
    }

    /// A new connection ID of this shard ([`shard_of`] names it), unused so far.
    fn fresh_cid(&self) -> Option<Cid> {
        let mut cid: Cid = [0; CID_LEN];
        getrandom::getrandom(&mut cid).ok()?;
        let first = naming(&cid, self.id, self.shards);
        cid[..4].copy_from_slice(&first);
        (!self.by_cid.contains_key(&cid)).then_some(cid)
    }

    /// A new connection ID for a dial of this shard: [`shard_of`] names the shard, and the
    /// second half marks it as a dial's ([`is_dial_cid`]).
    fn dial_cid(&self) -> Option<Cid> {
        let mut cid = self.fresh_cid()?;
        let mark = fnv1a64(&cid[..CID_LEN / 2]).to_be_bytes();
        cid[CID_LEN / 2..].copy_from_slice(&mark);
        (!self.by_cid.contains_key(&cid)).then_some(cid)
    }
}

/// The first four bytes of a connection ID that names `shard` of `shards` ([`shard_of`]): the
/// random word of `cid`, moved by less than `shards` to one that does.
fn naming(cid: &Cid, shard: ShardId, shards: u16) -> [u8; 4] {
    let word = u32::from_be_bytes([cid[0], cid[1], cid[2], cid[3]]);
    let (n, id) = (u32::from(shards.max(1)), u32::from(shard.0));
    let mut base = word - word % n;
    if base.checked_add(id).is_none() {
        base -= n;
    }
    (base + id).to_be_bytes()
}

/// Whether a connection ID is one the gateway chose for a dial: its second half is FNV-1a-64 of
/// its first. A client's random connection ID passes with probability 2^-64, and one that does
/// is only forwarded to a shard that drops it as stray.
fn is_dial_cid(cid: &[u8]) -> bool {
    cid.len() == CID_LEN && cid[CID_LEN / 2..] == fnv1a64(&cid[..CID_LEN / 2]).to_be_bytes()
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The connection `conn` names, if it is still the one in its slot.
fn slot(conns: &Slab<Conn>, conn: ConnHandle) -> Option<&Conn> {
    conns
        .get(conn.index as usize)
        .filter(|c| c.generation == conn.generation)
}

fn slot_mut(conns: &mut Slab<Conn>, conn: ConnHandle) -> Option<&mut Conn> {
    conns
        .get_mut(conn.index as usize)
        .filter(|c| c.generation == conn.generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION_1: u32 = 1;
    const HERE: ShardId = ShardId(1);
    const SHARDS: u16 = 4;

    /// A long-header Initial in a datagram of `len` bytes.
    fn initial(version: u32, dcid: &[u8], len: usize) -> Header {
        let mut p = vec![0xc0];
        p.extend(version.to_be_bytes());
        p.push(dcid.len() as u8);
        p.extend(dcid);
        p.push(4);
        p.extend([0xaa, 0xbb, 0xcc, 0xdd]);
        p.push(0); // token length
        p.resize(len.max(p.len()), 0);
        p.truncate(len);
        Header::parse(&mut p).expect("an Initial header")
    }

    /// A short-header packet to `dcid`.
    fn short(dcid: &Cid) -> Header {
        let mut p = vec![0x40];
        p.extend(dcid);
        p.resize(64, 0);
        Header::parse(&mut p).expect("a short header")
    }

    /// A long-header Handshake packet to `dcid`.
    fn handshake(dcid: &[u8]) -> Header {
        let mut p = vec![0xe0];
        p.extend(VERSION_1.to_be_bytes());
        p.push(dcid.len() as u8);
        p.extend(dcid);
        p.push(0);
        p.resize(64, 0);
        Header::parse(&mut p).expect("a Handshake header")
    }

    /// A connection ID of `shard`, as [`Endpoint::fresh_cid`] makes them.
    fn cid_of(shard: u8) -> Cid {
        let mut cid = [7u8; CID_LEN];
        let first = naming(&cid, ShardId(u16::from(shard)), SHARDS);
        cid[..4].copy_from_slice(&first);
        cid
    }

    fn arrival() -> Arrival {
        Arrival {
            forwarded: false,
            accepts_left: 8,
            stopping: false,
        }
    }

    /// The route of a datagram that must not take a handshake unit.
    fn routed(hdr: &Header, known: Option<ConnHandle>, arrival: Arrival) -> Route {
        route(hdr, known, HERE, SHARDS, arrival, || {
            panic!("the handshake count is not asked for this datagram")
        })
    }

    /// The route of a new connection's Initial, with a handshake unit to take or not.
    fn decide(hdr: &Header, slot: bool) -> Route {
        route(hdr, None, HERE, SHARDS, arrival(), || slot)
    }

    #[test]
    fn a_packet_for_a_known_connection_is_ours() {
        let conn = ConnHandle {
            index: 3,
            generation: 1,
        };
        let known = Some(conn);
        let r = routed(&short(&cid_of(1)), known, arrival());
        assert_eq!(r, Route::Ours(conn));
        let r = routed(&initial(VERSION_1, b"odcid", 1200), known, arrival());
        assert_eq!(r, Route::Ours(conn), "a client repeating its Initial");
    }

    #[test]
    fn an_initial_under_1200_bytes_is_dropped_and_counted_even_for_a_known_connection() {
        let zero = ConnHandle {
            index: 0,
            generation: 1,
        };
        for known in [None, Some(zero)] {
            let r = routed(&initial(VERSION_1, b"odcid", 1199), known, arrival());
            assert_eq!(r, Route::Drop(Discard::ShortInitial));
        }
        assert_eq!(
            Discard::ShortInitial.counted(),
            Some(DropReason::ShortInitial)
        );
        assert!(!Route::Drop(Discard::ShortInitial).spends_accept());
    }

    #[test]
    fn a_connection_id_names_the_shard_it_was_made_for_whatever_the_shard_count() {
        for shards in [1u16, 2, 3, 48, 192, 256] {
            for first in [
                [0u8; 4],
                [0xff; 4],
                [0x12, 0x34, 0x56, 0x78],
                [0xff, 0xff, 0xff, 0],
            ] {
                for shard in [0, shards / 2, shards - 1] {
                    let mut cid = [9u8; CID_LEN];
                    cid[..4].copy_from_slice(&first);
                    let named = naming(&cid, ShardId(shard), shards);
                    cid[..4].copy_from_slice(&named);
                    assert_eq!(
                        shard_of(&cid, shards),
                        Some(ShardId(shard)),
                        "{shards}: {cid:?}"
                    );
                }
            }
        }
        assert_eq!(shard_of(&[1, 2, 3], 4), None, "too short to name one");
        // The rule itself, which the kernel's steering program applies too: the first four
        // bytes as a big-endian word, modulo the shard count.
        assert_eq!(
            shard_of(&[0x12, 0x34, 0x56, 0x78, 9], 48),
            Some(ShardId(24))
        );
        assert_eq!(shard_of(&[0xff; 4], 192), Some(ShardId(63)));
        assert_eq!(shard_of(&[0, 0, 1, 0], 3), Some(ShardId(1)));
    }

    #[test]
    fn an_unknown_connection_id_of_another_shard_is_forwarded_to_it() {
        let r = routed(&short(&cid_of(3)), None, arrival());
        assert_eq!(r, Route::Forward(ShardId(3)));
        let r = routed(&handshake(&cid_of(0)), None, arrival());
        assert_eq!(r, Route::Forward(ShardId(0)));
    }

    #[test]
    fn a_packet_no_shard_owns_is_dropped_uncounted() {
        let forwarded = Arrival {
            forwarded: true,
            ..arrival()
        };
        let stray = [
            // Names this shard, which does not know it.
            (short(&cid_of(1)), arrival()),
            // Forwarded once already.
            (short(&cid_of(3)), forwarded),
            // Not a connection ID the gateway chose.
            (handshake(b"eight..."), arrival()),
        ];
        for (hdr, arrival) in stray {
            let r = routed(&hdr, None, arrival);
            assert_eq!(r, Route::Drop(Discard::Stray));
            assert_eq!(Discard::Stray.counted(), None);
            assert!(!r.spends_accept());
        }
    }

    #[test]
    fn an_initial_past_the_accept_budget_is_deferred_without_taking_a_handshake() {
        let spent = Arrival {
            accepts_left: 0,
            stopping: true,
            ..arrival()
        };
        let r = routed(&initial(VERSION_1, b"odcid", 1200), None, spent);
        assert_eq!(r, Route::Defer);
        assert!(!r.spends_accept());
    }

    #[test]
    fn an_initial_to_a_stopping_shard_is_dropped_and_spends_an_accept() {
        let stopping = Arrival {
            stopping: true,
            ..arrival()
        };
        let r = routed(&initial(VERSION_1, b"odcid", 1200), None, stopping);
        assert_eq!(r, Route::Drop(Discard::Stopping));
        assert_eq!(Discard::Stopping.counted(), None);
        assert!(r.spends_accept());
    }

    #[test]
    fn an_initial_in_an_unknown_version_gets_version_negotiation() {
        let hdr = initial(0x1a2a_3a4a, b"odcid", 1200);
        let r = routed(&hdr, None, arrival());
        assert_eq!(r, Route::NegotiateVersion);
        assert!(r.spends_accept());
        let mut out = [0u8; 1500];
        let len = hdr
            .negotiate_version(&mut out)
            .expect("a Version Negotiation packet");
        assert_eq!(
            &out[1..5],
            &[0, 0, 0, 0],
            "version 0 marks Version Negotiation"
        );
        assert!(len > 5);
    }

    #[test]
    fn an_initial_over_the_handshake_limit_is_refused_and_one_under_it_accepted() {
        let hdr = initial(VERSION_1, b"odcid", 1200);
        let r = decide(&hdr, false);
        assert_eq!(r, Route::Refuse);
        assert!(r.spends_accept());
        let mut out = [0u8; 1500];
        assert!(hdr.refusal(&mut out).is_some());
        let r = decide(&hdr, true);
        assert_eq!(r, Route::Accept);
        assert!(r.spends_accept());
    }

    #[test]
    fn a_handle_survives_the_trip_through_the_timer_wheel() {
        let conn = ConnHandle {
            index: 12345,
            generation: u32::MAX,
        };
        assert_eq!(ConnHandle::from_token(conn.token()), conn);
    }

    /// An endpoint of a gateway that allows one handshake, and the connection it accepted
    /// for the Initial `hello`.
    fn one_accepted(hello: &Header) -> (Endpoint, Arc<GatewayCounts>, ConnHandle) {
        let counts = Arc::new(GatewayCounts::default());
        let quic = quiche::Config::new(quiche::PROTOCOL_VERSION).expect("a QUIC configuration");
        let local = "127.0.0.1:4433".parse().expect("an address");
        let mut ep = Endpoint::new(HERE, SHARDS, quic, None, local, counts.clone(), 1);
        assert_eq!(ep.route(hello, arrival()), Route::Accept);
        let from = "127.0.0.1:5555".parse().expect("an address");
        let conn = ep.accept(Time::ZERO, hello, from).expect("a connection");
        (ep, counts, conn)
    }

    #[test]
    fn an_accepted_connection_is_found_by_both_its_connection_ids_until_removed() {
        let hello = initial(VERSION_1, b"client-chosen", 1200);
        let (mut ep, counts, conn) = one_accepted(&hello);
        assert_eq!(counts.handshakes.get(), 1);
        assert_eq!(
            ep.route(&initial(VERSION_1, b"another", 1200), arrival()),
            Route::Refuse
        );
        assert_eq!(ep.handshakes(), 1);
        let issued = ep.get(conn).expect("the connection").scids[0];
        assert_eq!(shard_of(&issued, SHARDS), Some(HERE), "it names the shard");
        assert_eq!(ep.route(&hello, arrival()), Route::Ours(conn));
        assert_eq!(ep.route(&short(&issued), arrival()), Route::Ours(conn));

        assert_eq!(ep.remove(conn), None);
        assert_eq!(
            counts.handshakes.get(),
            0,
            "the handshake unit is given back"
        );
        assert_eq!(ep.handshakes(), 0);
        assert_eq!(
            ep.route(&short(&issued), arrival()),
            Route::Drop(Discard::Stray)
        );
        assert_eq!(ep.route(&hello, arrival()), Route::Accept);
    }

    #[test]
    fn a_handle_of_a_removed_connection_never_finds_the_one_in_its_slot() {
        let hello = initial(VERSION_1, b"first", 1200);
        let (mut ep, _, old) = one_accepted(&hello);
        ep.remove(old);
        let next = initial(VERSION_1, b"second", 1200);
        assert_eq!(ep.route(&next, arrival()), Route::Accept);
        let from = "127.0.0.1:5556".parse().expect("an address");
        let new = ep.accept(Time::ZERO, &next, from).expect("a connection");
        assert_ne!(new, old);
        assert!(ep.get(old).is_none() && ep.get_mut(old).is_none());
        assert_eq!(ep.remove(old), None);
        assert!(
            ep.get(new).is_some(),
            "removing by the stale handle left it"
        );
        assert_eq!(ConnHandle::from_token(new.token()), new);
    }

    /// A connection ID of a dial of `shard`, as [`Endpoint::dial_cid`] makes them.
    fn dial_cid_of(shard: u8) -> Cid {
        let mut cid = cid_of(shard);
        let mark = fnv1a64(&cid[..CID_LEN / 2]).to_be_bytes();
        cid[CID_LEN / 2..].copy_from_slice(&mark);
        cid
    }

    #[test]
    fn an_initial_answering_a_dial_of_another_shard_is_forwarded_to_it_even_when_short() {
        let cid = dial_cid_of(3);
        assert!(is_dial_cid(&cid) && !is_dial_cid(&cid_of(3)));
        let r = routed(&initial(VERSION_1, &cid, 200), None, arrival());
        assert_eq!(r, Route::Forward(ShardId(3)));
        assert!(!r.spends_accept());
        let forwarded = Arrival {
            forwarded: true,
            ..arrival()
        };
        let r = routed(&initial(VERSION_1, &cid, 1200), None, forwarded);
        assert_eq!(r, Route::Drop(Discard::Stray), "forwarded once already");
        let r = routed(&initial(VERSION_1, &dial_cid_of(1), 1200), None, arrival());
        assert_eq!(
            r,
            Route::Drop(Discard::Stray),
            "a dial of this shard's that is gone"
        );
        // A client's Initial to a connection ID that merely names a shard opens a connection.
        assert_eq!(
            decide(&initial(VERSION_1, &cid_of(3), 1200), true),
            Route::Accept
        );
    }

    #[test]
    fn a_dial_is_found_by_its_connection_id_and_fails_if_its_handshake_never_ended() {
        let counts = Arc::new(GatewayCounts::default());
        let quic = quiche::Config::new(quiche::PROTOCOL_VERSION).expect("a QUIC configuration");
        let mut dial = quiche::Config::new(quiche::PROTOCOL_VERSION).expect("a QUIC configuration");
        dial.set_application_protos(&[PEER_ALPN]).expect("ALPN");
        let local = "127.0.0.1:4433".parse().expect("an address");
        let mut ep = Endpoint::new(HERE, SHARDS, quic, Some(dial), local, counts.clone(), 1);
        let link = LinkKey::from_u64(5);
        let peer = "127.0.0.1:4434".parse().expect("an address");
        let conn = ep.connect(Time::ZERO, peer, link).expect("a dial");
        assert_eq!(counts.handshakes.get(), 0, "a dial takes no handshake unit");
        let scid = ep.get(conn).expect("the dial").scids[0];
        assert!(is_dial_cid(&scid) && shard_of(&scid, SHARDS) == Some(HERE));
        assert_eq!(ep.route(&short(&scid), arrival()), Route::Ours(conn));
        assert_eq!(
            ep.route(&initial(VERSION_1, &scid, 300), arrival()),
            Route::Ours(conn),
            "the acceptor's short Initial"
        );
        let c = ep.get(conn).expect("the dial");
        assert!(c.is_peer() && c.link() == Some(link) && !c.is_established());
        assert_eq!(ep.conn_of_link(link), Some(conn));
        assert_eq!(ep.newly_connected(conn), None);
        assert_eq!(ep.detach_link(conn), Some((link, LinkEnd::DialFailed)));
        assert_eq!(ep.conn_of_link(link), None);
        assert_eq!(ep.remove(conn), None);
        assert_eq!(counts.handshakes.get(), 0);
    }

    #[test]
    fn without_a_mesh_nothing_is_dialed() {
        let hello = initial(VERSION_1, b"client-chosen", 1200);
        let (mut ep, _, _) = one_accepted(&hello);
        let peer = "127.0.0.1:4434".parse().expect("an address");
        assert_eq!(ep.connect(Time::ZERO, peer, LinkKey::from_u64(1)), None);
    }

    /// PROTOCOL.md 9.1: connections in the handshake count towards `--max-handshakes` whatever
    /// their ALPN: the unit is taken at the Initial, before the ALPN is known, and a peer
    /// connection gives it back only once it carries a link.
    #[test]
    fn a_peer_connection_holds_its_handshake_unit_until_its_link_is_attached() {
        let (mut ep, counts, conn) = one_accepted(&initial(VERSION_1, b"peer-chosen", 1200));
        assert_eq!(counts.handshakes.get(), 1, "taken at the Initial");
        let hello = initial(VERSION_1, b"another-peer", 1200);
        assert_eq!(
            ep.route(&hello, arrival()),
            Route::Refuse,
            "--max-handshakes 1: the next one is refused"
        );
        ep.attach_link(conn, LinkKey::from_u64(3));
        assert_eq!(counts.handshakes.get(), 0);
        assert_eq!(ep.handshakes(), 0);
        assert_eq!(ep.detach(conn), None, "a link, not a session");
        let (link, _) = ep.detach_link(conn).expect("its link");
        assert_eq!(link, LinkKey::from_u64(3));
        assert_eq!(counts.handshakes.get(), 0, "no unit is given back twice");
    }

    #[test]
    fn a_session_takes_its_connections_handshake_unit_and_is_found_until_detached() {
        let (mut ep, counts, conn) = one_accepted(&initial(VERSION_1, b"client-chosen", 1200));
        let key = SessionKey::from_u64(7);
        ep.attach(conn, key);
        assert_eq!(counts.handshakes.get(), 0);
        assert_eq!(ep.handshakes(), 0);
        assert_eq!(ep.conn_of(key), Some(conn));
        assert_eq!(
            ep.conn_of(SessionKey::from_u64(7 | 1 << 32)),
            None,
            "a stale key"
        );
        assert_eq!(
            ep.lookup(b"client-chosen"),
            None,
            "the client's first connection ID is forgotten"
        );

        assert_eq!(ep.detach(conn), Some(key));
        assert_eq!(ep.detach(conn), None);
        assert_eq!(ep.conn_of(key), None);
        assert_eq!(ep.remove(conn), None);
        assert_eq!(counts.handshakes.get(), 0, "no unit is given back twice");
    }
}
