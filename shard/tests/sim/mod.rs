//! A deterministic simulator of a whole gateway: N shards, a virtual clock, in-memory links
//! between shards with bounded capacity, and clients that speak frames. Interleavings are drawn
//! from a seeded RNG; a test that fails prints its seed (`MESHGATE_SEED=<seed>` replays it).

#![allow(dead_code)]

pub mod mesh;

use std::collections::VecDeque;
use std::time::Duration;

use meshgate_shard::router::ShardMsg;
use meshgate_shard::wire::{
    CallIdRef, Connect, FrameReader, Message, Outcome, Ping, Publish, Raw, Reason, Register, Reply,
    Strings, Subscribe, Unregister, Unsubscribe,
};
use meshgate_shard::{
    Config, GatewayCounts, Limits, NodeId, Occupancy, RealmConfig, SessionKey, Shard, ShardId,
    StreamEnd, Time,
};

/// A client of the simulated gateway.
pub struct Client {
    pub shard: ShardId,
    pub session: SessionKey,
    pub node: NodeId,
    reader: FrameReader,
    /// Frames received, as (type, payload), oldest first.
    pub frames: Vec<(u8, Vec<u8>)>,
    /// The reason the gateway closed the connection with, once it did.
    pub closed: Option<Reason>,
    /// Whether the client reads its output (a slow consumer does not).
    pub reading: bool,
}

pub type ClientId = usize;

pub struct Sim {
    pub shards: Vec<Shard>,
    /// In-flight messages, `links[from][to]`, FIFO.
    links: Vec<Vec<VecDeque<ShardMsg>>>,
    pub link_capacity: usize,
    pub now: Time,
    rng: fastrand::Rng,
    pub seed: u64,
    pub clients: Vec<Client>,
    by_session: std::collections::HashMap<(usize, SessionKey), ClientId>,
    /// Split every frame a client sends into random pieces.
    pub split_sends: bool,
    /// Shard messages stay in their channels (a stalled gateway) while set.
    pub hold_messages: bool,
}

/// Prints the seed of a simulation when the test panics.
pub struct SeedGuard(pub u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simulation failed with seed {} (replay with MESHGATE_SEED={})",
                self.0, self.0
            );
        }
    }
}

/// The seeds a test runs with: `MESHGATE_SEED` alone if set, else `count` seeds from `base`.
pub fn seeds(base: u64, count: u64) -> Vec<u64> {
    match std::env::var("MESHGATE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => vec![seed],
        None => (base..base + count).collect(),
    }
}

pub fn node(i: u32) -> NodeId {
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&i.to_le_bytes());
    id[31] = 0x5a;
    NodeId(id)
}

/// A node id whose owner (by `owner_of`) is `shard` among `shards`.
pub fn node_owned_by(shard: u16, shards: u16, from: u32) -> NodeId {
    (from..)
        .map(node)
        .find(|n| meshgate_shard::router::owner_of(n, shards).0 == shard)
        .unwrap()
}

pub const REALM: &str = "macula.default";

impl Sim {
    pub fn new(shards: u16, seed: u64) -> Sim {
        Sim::with(shards, seed, |_| {})
    }

    /// A gateway whose config is first adjusted by `tune`.
    pub fn with(shards: u16, seed: u64, tune: impl Fn(&mut Config)) -> Sim {
        Sim::starting_at(Time::from_millis(1_000_000), shards, seed, tune)
    }

    /// A gateway started at `now`, whose config is first adjusted by `tune`.
    pub fn starting_at(now: Time, shards: u16, seed: u64, tune: impl Fn(&mut Config)) -> Sim {
        let counts = std::sync::Arc::new(GatewayCounts::default());
        let shard_list = (0..shards)
            .map(|i| {
                let mut config = Config::new(ShardId(i), shards, NodeId([0xee; 32]));
                config.counts = counts.clone();
                config.realms.push(RealmConfig {
                    name: b"other.realm".to_vec().into(),
                    tokens: vec![],
                });
                config.realms.push(RealmConfig {
                    name: b"secure".to_vec().into(),
                    tokens: vec![b"s3cret".to_vec().into()],
                });
                tune(&mut config);
                config.validate().expect("valid config");
                Shard::new(config, now)
            })
            .collect();
        Sim {
            shards: shard_list,
            links: (0..shards)
                .map(|_| (0..shards).map(|_| VecDeque::new()).collect())
                .collect(),
            link_capacity: 1024,
            now,
            rng: fastrand::Rng::with_seed(seed),
            seed,
            clients: Vec::new(),
            by_session: std::collections::HashMap::new(),
            split_sends: true,
            hold_messages: false,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.shards[0].config().limits
    }

    // ------------------------------------------------------------------ clients

    /// Opens a session on `shard` and sends CONNECT, without driving.
    pub fn open(&mut self, shard: u16, node: NodeId, realm: &str, token: Option<&str>) -> ClientId {
        let id = self.open_session(shard, node);
        let connect = Connect {
            version: b"1.0",
            node_id: node,
            realm: realm.as_bytes(),
            capabilities: None,
            token: token.map(str::as_bytes),
        };
        self.send(id, &Message::Connect(connect));
        id
    }

    /// Opens a session on `shard` (the QUIC handshake is done) and sends nothing.
    pub fn open_session(&mut self, shard: u16, node: NodeId) -> ClientId {
        let session = self.shards[usize::from(shard)].handle_session_open(self.now);
        self.clients.push(Client {
            shard: ShardId(shard),
            session,
            node,
            reader: FrameReader::new(u32::MAX),
            frames: Vec::new(),
            closed: None,
            reading: true,
        });
        let id = self.clients.len() - 1;
        self.by_session.insert((usize::from(shard), session), id);
        id
    }

    /// Opens a session, connects it to the default realm and drives until it is admitted.
    pub fn connect(&mut self, shard: u16, node: NodeId) -> ClientId {
        let id = self.open(shard, node, REALM, None);
        self.drive();
        assert!(
            self.clients[id].closed.is_none(),
            "client {id} refused: {:?}",
            self.clients[id].closed
        );
        assert!(self.pongs(id) >= 1, "client {id} not admitted");
        id
    }

    /// Sends one frame from a client, split into random pieces.
    pub fn send(&mut self, id: ClientId, msg: &Message<'_>) {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        self.send_bytes(id, &bytes);
    }

    pub fn send_bytes(&mut self, id: ClientId, bytes: &[u8]) {
        let c = &self.clients[id];
        if c.closed.is_some() {
            return;
        }
        let (shard, session) = (c.shard.index(), c.session);
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = if self.split_sends {
                self.rng.usize(1..=rest.len())
            } else {
                rest.len()
            };
            self.shards[shard].handle_stream_data(self.now, session, &rest[..n]);
            rest = &rest[n..];
        }
    }

    /// The client's connection goes away (QUIC close or idle timeout).
    pub fn drop_connection(&mut self, id: ClientId) {
        let c = &mut self.clients[id];
        if c.closed.is_none() {
            c.closed = Some(Reason::Normal);
            let (shard, session) = (c.shard.index(), c.session);
            self.by_session.remove(&(shard, session));
            self.shards[shard].handle_session_closed(self.now, session);
        }
    }

    /// The client ends its side of the control stream (FIN, RESET_STREAM or STOP_SENDING).
    pub fn end_stream(&mut self, id: ClientId, end: StreamEnd) {
        let c = &self.clients[id];
        if c.closed.is_none() {
            let (shard, session) = (c.shard.index(), c.session);
            self.shards[shard].handle_stream_end(self.now, session, end);
        }
    }

    /// The gateway-wide counts the shards share.
    pub fn counts(&self) -> &GatewayCounts {
        &self.shards[0].config().counts
    }

    pub fn subscribe(&mut self, id: ClientId, patterns: &[&str]) {
        let list: Vec<&[u8]> = patterns.iter().map(|p| p.as_bytes()).collect();
        self.send(
            id,
            &Message::Subscribe(Subscribe {
                topics: Strings::List(&list),
                qos: None,
            }),
        );
    }

    pub fn unsubscribe(&mut self, id: ClientId, patterns: &[&str]) {
        let list: Vec<&[u8]> = patterns.iter().map(|p| p.as_bytes()).collect();
        self.send(
            id,
            &Message::Unsubscribe(Unsubscribe {
                topics: Strings::List(&list),
            }),
        );
    }

    pub fn publish(&mut self, id: ClientId, topic: &str, payload: &[u8]) {
        let p = Publish::new(topic.as_bytes(), payload);
        self.send(id, &Message::Publish(p));
    }

    pub fn register(&mut self, id: ClientId, procedure: &str, ttl_s: Option<u64>) {
        self.send(
            id,
            &Message::Register(Register {
                procedure: procedure.as_bytes(),
                ttl_s,
            }),
        );
    }

    pub fn unregister(&mut self, id: ClientId, procedure: &str) {
        self.send(
            id,
            &Message::Unregister(Unregister {
                procedure: procedure.as_bytes(),
            }),
        );
    }

    pub fn call(&mut self, id: ClientId, procedure: &str, call_id: u64, timeout_ms: Option<u64>) {
        let call = meshgate_shard::wire::Call {
            procedure: procedure.as_bytes(),
            args: Raw(&[0x2a]),
            call_id: Some(CallIdRef::Uint(call_id)),
            timeout_ms,
        };
        self.send(id, &Message::Call(call));
    }

    /// The provider answers a CALL it received (by the gateway's call id) with `result` bytes
    /// (MessagePack of one value).
    pub fn reply(&mut self, id: ClientId, gateway_call_id: u64, result: &[u8]) {
        let reply = Reply {
            call_id: Some(CallIdRef::Uint(gateway_call_id)),
            outcome: Outcome::Result(Raw(result)),
        };
        self.send(id, &Message::Reply(reply));
    }

    pub fn ping(&mut self, id: ClientId, timestamp: u64) {
        self.send(id, &Message::Ping(Ping::new(timestamp)));
    }

    /// Sends PING and drives until its PONG arrives: afterwards every earlier change of the
    /// client is in effect on every shard.
    pub fn sync(&mut self, id: ClientId) {
        let stamp = 0x5eed_0000 + self.rng.u64(..1 << 20);
        self.ping(id, stamp);
        self.drive();
        assert!(
            self.pong_timestamps(id).contains(&stamp),
            "no PONG for a PING of client {id}"
        );
    }

    // ------------------------------------------------------------------ driving

    /// One random step; false when nothing is left to do.
    pub fn step(&mut self) -> bool {
        self.flush_outboxes();
        let busy_links: Vec<(usize, usize)> = (0..self.links.len())
            .flat_map(|f| (0..self.links.len()).map(move |t| (f, t)))
            .filter(|&(f, t)| !self.hold_messages && !self.links[f][t].is_empty())
            .collect();
        let choice = self.rng.usize(..=busy_links.len());
        if choice < busy_links.len() {
            let (from, to) = busy_links[choice];
            let msg = self.links[from][to].pop_front().expect("non-empty link");
            self.shards[to].handle_shard_message(self.now, ShardId(from as u16), msg);
            true
        } else {
            let drained = self.drain_outputs();
            drained || !busy_links.is_empty()
        }
    }

    /// Steps until nothing is left to do.
    pub fn drive(&mut self) {
        for _ in 0..10_000_000 {
            if !self.step() && self.quiet() {
                return;
            }
        }
        panic!("the simulation did not settle");
    }

    /// Whether a step can do anything: deliver a shard message (unless they are held), or
    /// move messages and output on.
    pub fn busy(&self) -> bool {
        if !self.hold_messages {
            return !self.quiet();
        }
        // (An outbox held back by a full channel would count as work it cannot do: the mesh
        // simulator's channels have room to spare.)
        self.shards.iter().any(|s| {
            let o = s.occupancy();
            o.ready > 0 || o.closes > 0 || o.outbox > 0
        })
    }

    /// Whether no shard message, session output or close is left to handle.
    pub fn quiet(&self) -> bool {
        self.links.iter().flatten().all(VecDeque::is_empty)
            && self.shards.iter().all(|s| {
                s.occupancy().outbox == 0 && s.occupancy().ready == 0 && s.occupancy().closes == 0
            })
    }

    /// Moves time forward by `d`, firing timers on the way, and drives.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.drive();
            let next = self.shards.iter().filter_map(Shard::next_deadline).min();
            match next {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    for s in &mut self.shards {
                        s.handle_timeout(self.now);
                    }
                }
                _ => break,
            }
        }
        self.now = end;
        for s in &mut self.shards {
            s.handle_timeout(self.now);
        }
        self.drive();
    }

    fn flush_outboxes(&mut self) {
        for from in 0..self.shards.len() {
            for to in 0..self.shards.len() {
                let link = &mut self.links[from][to];
                let outbox = self.shards[from].outbox(ShardId(to as u16));
                while link.len() < self.link_capacity {
                    match outbox.pop_front() {
                        Some(m) => link.push_back(m),
                        None => break,
                    }
                }
            }
        }
    }

    /// Hands every shard's output to its clients; true if anything moved.
    fn drain_outputs(&mut self) -> bool {
        let mut moved = false;
        for shard in 0..self.shards.len() {
            let mut keys = Vec::new();
            while let Some(key) = self.shards[shard].poll_ready() {
                moved = true;
                keys.push(key);
            }
            // Like the driver, which retries a session it could not write to at every turn: a
            // client that starts reading again gets what waited for it.
            for c in &self.clients {
                let waiting = !self.shards[shard].output(c.session).is_empty();
                if c.shard.index() == shard && c.reading && c.closed.is_none() && waiting {
                    keys.push(c.session);
                }
            }
            for key in keys {
                let Some(id) = self.client_of(shard, key) else {
                    continue;
                };
                if !self.clients[id].reading {
                    continue;
                }
                if self.shards[shard].output(key).is_empty() {
                    continue;
                }
                moved = true;
                self.read(id, usize::MAX);
            }
            while let Some((key, reason)) = self.shards[shard].poll_close() {
                moved = true;
                if let Some(id) = self.client_of(shard, key) {
                    // The driver flushes what the session has left, then closes.
                    if self.clients[id].reading {
                        let bytes = self.shards[shard].output(key).to_vec();
                        let c = &mut self.clients[id];
                        c.reader.push(&bytes).expect("valid frames");
                        while let Some(frame) = c.reader.next_frame().expect("valid frames") {
                            c.frames.push((frame.frame_type, frame.payload.to_vec()));
                        }
                    }
                    self.clients[id].closed = Some(reason);
                    self.by_session.remove(&(shard, key));
                }
                self.shards[shard].handle_session_closed(self.now, key);
            }
        }
        moved
    }

    /// Moves up to `n` bytes of a client's output to it, as its transport would, whether or
    /// not the client is `reading`: a client on a slow link reads a little at a time.
    pub fn read(&mut self, id: ClientId, n: usize) {
        let c = &self.clients[id];
        let (shard, key) = (c.shard.index(), c.session);
        let output = self.shards[shard].output(key);
        let bytes = output[..n.min(output.len())].to_vec();
        self.shards[shard].consume_output(key, bytes.len());
        let c = &mut self.clients[id];
        c.reader
            .push(&bytes)
            .expect("the gateway sends valid frames");
        while let Some(frame) = c
            .reader
            .next_frame()
            .expect("the gateway sends valid frames")
        {
            Message::decode(frame.frame_type, frame.payload)
                .expect("the gateway sends decodable frames");
            c.frames.push((frame.frame_type, frame.payload.to_vec()));
        }
    }

    fn client_of(&self, shard: usize, key: SessionKey) -> Option<ClientId> {
        self.by_session.get(&(shard, key)).copied()
    }

    // ------------------------------------------------------------------ what clients saw

    pub fn messages(&self, id: ClientId) -> Vec<Message<'_>> {
        self.clients[id]
            .frames
            .iter()
            .map(|(t, p)| Message::decode(*t, p).expect("decodable"))
            .collect()
    }

    pub fn pongs(&self, id: ClientId) -> usize {
        self.messages(id)
            .iter()
            .filter(|m| matches!(m, Message::Pong(_)))
            .count()
    }

    pub fn pong_timestamps(&self, id: ClientId) -> Vec<u64> {
        self.messages(id)
            .iter()
            .filter_map(|m| match m {
                Message::Pong(p) => Some(p.timestamp),
                _ => None,
            })
            .collect()
    }

    /// PUBLISH frames received: (topic, payload, publisher).
    pub fn publishes(&self, id: ClientId) -> Vec<(String, Vec<u8>, Option<NodeId>)> {
        self.messages(id)
            .iter()
            .filter_map(|m| match m {
                Message::Publish(p) => Some((
                    String::from_utf8_lossy(p.topic).into_owned(),
                    p.payload.to_vec(),
                    p.publisher,
                )),
                _ => None,
            })
            .collect()
    }

    /// CALL frames received by a provider: (procedure, gateway call id, timeout ms).
    pub fn calls(&self, id: ClientId) -> Vec<(String, u64, Option<u64>)> {
        self.messages(id)
            .iter()
            .filter_map(|m| match m {
                Message::Call(c) => match c.call_id {
                    Some(CallIdRef::Uint(t)) => Some((
                        String::from_utf8_lossy(c.procedure).into_owned(),
                        t,
                        c.timeout_ms,
                    )),
                    _ => panic!("the gateway sends integer call ids"),
                },
                _ => None,
            })
            .collect()
    }

    /// REPLY frames received by a caller: (call id, Ok(result bytes) or Err(error code)).
    pub fn replies(&self, id: ClientId) -> Vec<(u64, Result<Vec<u8>, String>)> {
        self.messages(id)
            .iter()
            .filter_map(|m| match m {
                Message::Reply(r) => {
                    let call_id = match r.call_id {
                        Some(CallIdRef::Uint(v)) => v,
                        other => panic!("unexpected call id {other:?}"),
                    };
                    let outcome = match r.outcome {
                        Outcome::Result(raw) => Ok(raw.0.to_vec()),
                        Outcome::Error { code, .. } => {
                            Err(String::from_utf8_lossy(code).into_owned())
                        }
                    };
                    Some((call_id, outcome))
                }
                _ => None,
            })
            .collect()
    }

    /// CANCEL frames received by a provider: (gateway call id, reason).
    pub fn cancels(&self, id: ClientId) -> Vec<(u64, String)> {
        self.messages(id)
            .iter()
            .filter_map(|m| match m {
                Message::Cancel(c) => match c.call_id {
                    CallIdRef::Uint(t) => Some((t, String::from_utf8_lossy(c.reason).into_owned())),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// ERROR frames received: (code, topic or procedure).
    pub fn errors(&self, id: ClientId) -> Vec<(String, String)> {
        self.messages(id)
            .iter()
            .filter_map(|m| match m {
                Message::Error(e) => Some((
                    String::from_utf8_lossy(e.code).into_owned(),
                    String::from_utf8_lossy(e.topic.or(e.procedure).unwrap_or(b"")).into_owned(),
                )),
                _ => None,
            })
            .collect()
    }

    /// The DISCONNECT reason received, if any.
    pub fn disconnect_reason(&self, id: ClientId) -> Option<String> {
        self.messages(id).iter().find_map(|m| match m {
            Message::Disconnect(d) => Some(String::from_utf8_lossy(d.reason).into_owned()),
            _ => None,
        })
    }

    pub fn clear_frames(&mut self, id: ClientId) {
        self.clients[id].frames.clear();
    }

    /// Sum of a counter over all shards.
    pub fn total(&self, f: impl Fn(&meshgate_shard::metrics::Counters) -> u64) -> u64 {
        self.shards.iter().map(|s| f(s.counters())).sum()
    }

    /// Every client leaves (taking in what it was sent first), the clock runs on past every
    /// timeout, and then no shard may hold any state, nor the gateway count any client or
    /// handshake.
    pub fn assert_empty_once_all_leave(&mut self) {
        self.drive();
        for c in 0..self.clients.len() {
            self.clients[c].reading = true;
            self.drop_connection(c);
        }
        self.advance(Duration::from_secs(120));
        for (i, shard) in self.shards.iter().enumerate() {
            assert_eq!(
                shard.occupancy(),
                Occupancy::default(),
                "shard {i} holds state after every client left"
            );
            let m = shard.metrics();
            assert_eq!(
                (
                    m.clients,
                    m.awaiting_connect,
                    m.pending_calls,
                    m.subscriptions,
                    m.registrations
                ),
                (0, 0, 0, 0, 0),
                "shard {i}'s gauges after every client left"
            );
        }
        assert_eq!(
            (self.counts().clients.get(), self.counts().handshakes.get()),
            (0, 0),
            "the gateway-wide counts of clients and handshakes after every client left"
        );
    }
}
