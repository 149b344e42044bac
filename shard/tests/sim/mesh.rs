//! A deterministic simulator of a gateway mesh: several gateways of several shards each (each a
//! [`Sim`]), joined by simulated peer links that play the driver's part of PROTOCOL.md 9.2:
//! dials, the QUIC handshake, two ordered streams per link that interleave at random, closes
//! that carry their code, and links cut, healed and gateways killed and restarted. One virtual
//! clock drives every gateway; every choice is drawn from one seeded RNG.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use meshgate_shard::config::MeshConfig;
use meshgate_shard::ids::LinkKey;
use meshgate_shard::mesh::handshake::Identity;
use meshgate_shard::mesh::hello::RealmAuth;
use meshgate_shard::mesh::proof::realm_digest;
use meshgate_shard::wire::{FrameReader, FrameType, LinkStream, Message, Ping};
use meshgate_shard::{Config, LinkEnd, LinkReport, LinkState, NodeId, Time};

use super::{ClientId, Sim, REALM};

/// The cluster token every simulated gateway shares.
pub const CLUSTER_TOKEN: &[u8] = b"cluster-token";

/// How long a dial to an address where no gateway answers takes to fail.
pub const DIAL_FAILS_AFTER: Duration = Duration::from_secs(3);

const STREAMS: [LinkStream; 2] = [LinkStream::Control, LinkStream::Data];

/// The name of gateway `i`.
pub fn name(i: usize) -> String {
    format!("gw-{i}")
}

/// The address gateway `i` advertises and is dialed at.
pub fn addr(i: usize) -> String {
    format!("gw-{i}:1")
}

/// How to build one gateway, kept to restart it.
#[derive(Clone)]
pub struct GatewaySpec {
    pub shards: u16,
    /// `--peer` addresses.
    pub seeds: Vec<String>,
    /// Adjusts each shard's config (limits, realms) before the mesh identity is made from it.
    pub config: Rc<dyn Fn(&mut Config)>,
    /// Adjusts the mesh settings.
    pub mesh: Rc<dyn Fn(&mut MeshConfig)>,
}

impl GatewaySpec {
    pub fn new(shards: u16) -> GatewaySpec {
        GatewaySpec {
            shards,
            seeds: Vec::new(),
            config: Rc::new(|_| {}),
            mesh: Rc::new(|_| {}),
        }
    }

    /// Gives the gateways `peers` as `--peer`.
    pub fn peers(mut self, peers: &[usize]) -> GatewaySpec {
        self.seeds = peers.iter().map(|&p| addr(p)).collect();
        self
    }

    pub fn config(mut self, f: impl Fn(&mut Config) + 'static) -> GatewaySpec {
        self.config = Rc::new(f);
        self
    }

    pub fn mesh(mut self, f: impl Fn(&mut MeshConfig) + 'static) -> GatewaySpec {
        self.mesh = Rc::new(f);
        self
    }
}

/// One end of a simulated peer link: a link on a shard of a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct End {
    pub gw: usize,
    pub shard: usize,
    pub link: LinkKey,
}

/// A peer link's connection: `ends[0]` dialed, `ends[1]` accepted.
struct Wire {
    ends: [End; 2],
    /// Bytes in flight from `ends[i]` to the other end: control stream, data stream.
    flight: [[VecDeque<u8>; 2]; 2],
    /// `ends[i]` closed the connection with this code; the other end learns of it once the
    /// control bytes sent before the close have arrived.
    closed_by: [Option<u64>; 2],
}

impl Wire {
    fn end_of(&self, end: End) -> Option<usize> {
        self.ends.iter().position(|&e| e == end)
    }

    fn open(&self, i: usize) -> bool {
        self.closed_by[i].is_none()
    }

    fn joins(&self, a: usize, b: usize) -> bool {
        let (x, y) = (self.ends[0].gw, self.ends[1].gw);
        (x, y) == (a, b) || (x, y) == (b, a)
    }
}

/// A dial a shard asked for, waiting for its QUIC handshake.
struct Dialing {
    from: End,
    addr: String,
}

/// Something that happens at a set time.
enum Timed {
    DialFailed(End),
}

/// What one step of the simulation can do.
#[derive(Clone, Copy)]
enum Action {
    /// A step of gateway `g` of its own: a shard message, or session output.
    Gateway(usize),
    /// The QUIC handshake of the dial at this index in `dials`.
    Connect(usize),
    /// A piece of what end `from` of wire `w` sent on stream `s` arrives: (w, from, s).
    Deliver(usize, usize, usize),
    /// The close end `from` of wire `w` made arrives at the other end: (w, from).
    CloseArrives(usize, usize),
}

pub struct MeshSim {
    /// The gateways; `None` while killed.
    pub gws: Vec<Option<Sim>>,
    pub specs: Vec<GatewaySpec>,
    /// Starts of each gateway (1 for the first run).
    pub starts: Vec<u64>,
    wires: Vec<Option<Wire>>,
    by_end: HashMap<End, usize>,
    dials: Vec<Dialing>,
    timed: Vec<(Time, Timed)>,
    /// Gateway pairs whose connections fail (smaller index first).
    cut: HashSet<(usize, usize)>,
    /// (from, to): nothing gateway `from` sends arrives at `to` until released.
    held: HashSet<(usize, usize)>,
    pub now: Time,
    rng: fastrand::Rng,
    pub seed: u64,
    /// Frames every link has sent, by frame type, over the whole run.
    pub frames_sent: HashMap<u8, u64>,
    /// The frames of each link's streams, as taken from its shard, to tally them.
    readers: HashMap<(End, usize), FrameReader>,
    /// Bytes one stream may have in flight (the transport's flow control window): output
    /// beyond it waits in the shard.
    pub window: usize,
    /// Links whose output did not all fit in the window: retried at every step.
    unsent: BTreeSet<End>,
    /// The types of the control frames each gateway sent each other gateway, in order.
    pub control_log: HashMap<(usize, usize), Vec<u8>>,
    /// Every connection a shard closed: (its gateway, the peer's gateway, the close code).
    pub closes: Vec<(usize, usize, u64)>,
    /// The weight of a gateway's own step (a shard message, session output) against 8 for a
    /// link's delivery or a dial, drawn per seed: some runs have slow shards, some slow links.
    pub gateway_weight: u32,
}

impl MeshSim {
    /// The gateways of `specs`, started at once; nothing is driven yet.
    pub fn new(seed: u64, specs: Vec<GatewaySpec>) -> MeshSim {
        let n = specs.len();
        let mut mesh = MeshSim {
            gws: (0..n).map(|_| None).collect(),
            specs,
            starts: vec![0; n],
            wires: Vec::new(),
            by_end: HashMap::new(),
            dials: Vec::new(),
            timed: Vec::new(),
            cut: HashSet::new(),
            held: HashSet::new(),
            now: Time::from_millis(1_000_000),
            rng: fastrand::Rng::with_seed(seed),
            seed,
            frames_sent: HashMap::new(),
            readers: HashMap::new(),
            window: usize::MAX,
            unsent: BTreeSet::new(),
            control_log: HashMap::new(),
            closes: Vec::new(),
            gateway_weight: 8,
        };
        mesh.gateway_weight = [1, 8, 8, 32, 128][mesh.rng.usize(..5)];
        for i in 0..n {
            mesh.start(i);
        }
        mesh
    }

    /// `n` gateways of `shards` shards, every other one given gateway 0 as `--peer`.
    pub fn seeded(seed: u64, n: usize, shards: u16) -> MeshSim {
        let specs = (0..n)
            .map(|i| {
                let spec = GatewaySpec::new(shards);
                if i == 0 {
                    spec
                } else {
                    spec.peers(&[0])
                }
            })
            .collect();
        MeshSim::new(seed, specs)
    }

    /// Starts (or restarts) gateway `i`: a new node_id and a larger incarnation each time.
    fn start(&mut self, i: usize) {
        self.starts[i] += 1;
        let run = self.starts[i];
        let spec = self.specs[i].clone();
        let node_id = gateway_id(i, run);
        let incarnation = 1_700_000_000_000 + self.now.as_millis() + run;
        let gw_seed = self.seed ^ (0x9e37_79b9 * (i as u64 + 1)) ^ (run << 40);
        let mesh_config: RefCell<Option<Arc<MeshConfig>>> = RefCell::new(None);
        let sim = Sim::starting_at(self.now, spec.shards, gw_seed, |c| {
            c.node_id = node_id;
            c.seed = gw_seed.wrapping_add(u64::from(c.shard.0) * 0x1234_5678_9abc);
            (spec.config)(c);
            let mut cached = mesh_config.borrow_mut();
            let m = cached.get_or_insert_with(|| {
                let identity = Identity {
                    node_id,
                    node_name: name(i).into_bytes().into(),
                    incarnation,
                    advertise: addr(i).into_bytes().into(),
                    realms: c
                        .realms
                        .iter()
                        .map(|r| RealmAuth {
                            name: r.name.clone(),
                            digest: realm_digest(&r.name, &r.tokens),
                        })
                        .collect(),
                    max_frame: u64::from(c.limits.max_frame),
                    tokens: vec![CLUSTER_TOKEN.into()],
                };
                let mut m = MeshConfig::new(identity);
                m.seeds = spec.seeds.iter().map(|s| s.as_str().into()).collect();
                (spec.mesh)(&mut m);
                Arc::new(m)
            });
            c.mesh = Some(m.clone());
        });
        self.gws[i] = Some(sim);
    }

    pub fn gw(&mut self, i: usize) -> &mut Sim {
        self.gws[i].as_mut().expect("the gateway runs")
    }

    pub fn gw_ref(&self, i: usize) -> &Sim {
        self.gws[i].as_ref().expect("the gateway runs")
    }

    fn alive(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.gws.len()).filter(|&i| self.gws[i].is_some())
    }

    // ------------------------------------------------------------------ clients

    /// Opens a session on a gateway's shard in the default realm and drives the mesh until it
    /// is admitted.
    pub fn connect(&mut self, gw: usize, shard: u16, node: NodeId) -> ClientId {
        self.connect_to(gw, shard, node, REALM, None)
    }

    pub fn connect_to(
        &mut self,
        gw: usize,
        shard: u16,
        node: NodeId,
        realm: &str,
        token: Option<&str>,
    ) -> ClientId {
        let c = self.gw(gw).open(shard, node, realm, token);
        self.drive();
        let sim = self.gw_ref(gw);
        assert!(
            sim.clients[c].closed.is_none() && sim.pongs(c) >= 1,
            "client {c} of gateway {gw} not admitted: {:?}",
            sim.clients[c].closed
        );
        c
    }

    /// Sends PING with `mesh` true.
    pub fn mesh_ping(&mut self, gw: usize, c: ClientId, timestamp: u64) {
        let ping = Ping {
            timestamp,
            mesh: true,
        };
        self.gw(gw).send(c, &Message::Ping(ping));
    }

    /// Sends PING with `mesh` true and drives until its PONG: afterwards the client's earlier
    /// changes are in effect on every gateway it has an up link to.
    pub fn mesh_sync(&mut self, gw: usize, c: ClientId) {
        let stamp = 0x3e5b_0000 + self.rng.u64(..1 << 20);
        self.mesh_ping(gw, c, stamp);
        self.drive();
        assert!(
            self.gw_ref(gw).pong_timestamps(c).contains(&stamp),
            "no PONG for a mesh PING of client {c} of gateway {gw}"
        );
    }

    // ------------------------------------------------------------------ faults

    /// The network between gateways `a` and `b` fails: their links end (both ends see the
    /// connection closed without a code) and dials between them fail until [`MeshSim::heal`].
    pub fn cut(&mut self, a: usize, b: usize) {
        self.cut.insert((a.min(b), a.max(b)));
        let ids: Vec<usize> = (0..self.wires.len())
            .filter(|&w| self.wires[w].as_ref().is_some_and(|x| x.joins(a, b)))
            .collect();
        for w in ids {
            self.drop_wire(w);
        }
    }

    pub fn heal(&mut self, a: usize, b: usize) {
        self.cut.remove(&(a.min(b), a.max(b)));
    }

    pub fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// What gateway `from` sends gateway `to` stays in flight (however long) until
    /// [`MeshSim::release`].
    pub fn hold(&mut self, from: usize, to: usize) {
        self.held.insert((from, to));
    }

    pub fn release(&mut self, from: usize, to: usize) {
        self.held.remove(&(from, to));
    }

    /// Gateway `i` dies: its shards and sessions vanish, its peers see their links closed
    /// without a code.
    pub fn kill(&mut self, i: usize) {
        let ids: Vec<usize> = (0..self.wires.len())
            .filter(|&w| {
                self.wires[w]
                    .as_ref()
                    .is_some_and(|x| x.ends.iter().any(|e| e.gw == i))
            })
            .collect();
        for w in ids {
            self.drop_wire(w);
        }
        self.dials.retain(|d| d.from.gw != i);
        self.unsent.retain(|e| e.gw != i);
        self.readers.retain(|(e, _), _| e.gw != i);
        self.timed.retain(|(_, t)| match t {
            Timed::DialFailed(e) => e.gw != i,
        });
        self.gws[i] = None;
    }

    /// Gateway `i` starts again, with a new node_id and a larger incarnation.
    pub fn restart(&mut self, i: usize) {
        if self.gws[i].is_some() {
            self.kill(i);
        }
        self.start(i);
    }

    /// Appends frames to what gateway `from` sends gateway `to` on one stream of the one link
    /// between them, as if `from` had sent them.
    pub fn inject(&mut self, from: usize, to: usize, stream: LinkStream, bytes: &[u8]) {
        let w = self.wire_between(from, to);
        let wire = self.wires[w].as_mut().expect("a wire");
        let i = usize::from(wire.ends[0].gw != from);
        wire.flight[i][stream_index(stream)].extend(bytes);
    }

    /// Hands everything in flight from gateway `from` to gateway `to` on their one link over
    /// at once, both streams, as one turn of `to`'s driver would, with no output taken
    /// between.
    pub fn deliver_all(&mut self, from: usize, to: usize) {
        let now = self.now;
        let w = self.wire_between(from, to);
        let wire = self.wires[w].as_mut().expect("a wire");
        let i = usize::from(wire.ends[0].gw != from);
        let end = wire.ends[1 - i];
        let flights: Vec<Vec<u8>> = wire.flight[i]
            .iter_mut()
            .map(|f| f.drain(..).collect())
            .collect();
        for (s, bytes) in flights.iter().enumerate() {
            if !bytes.is_empty() {
                self.shard(end)
                    .handle_link_data(now, end.link, STREAMS[s], bytes);
            }
        }
    }

    /// The one open connection between gateways `a` and `b`.
    fn wire_between(&self, a: usize, b: usize) -> usize {
        let ids = self.wires_between(a, b);
        assert_eq!(ids.len(), 1, "one connection between {a} and {b}");
        ids[0]
    }

    fn wires_between(&self, a: usize, b: usize) -> Vec<usize> {
        (0..self.wires.len())
            .filter(|&w| {
                self.wires[w]
                    .as_ref()
                    .is_some_and(|x| x.joins(a, b) && x.open(0) && x.open(1))
            })
            .collect()
    }

    /// Open connections between gateways `a` and `b`.
    pub fn connections(&self, a: usize, b: usize) -> usize {
        self.wires_between(a, b).len()
    }

    // ------------------------------------------------------------------ driving

    /// One random step; false when nothing is left to do.
    pub fn step(&mut self) -> bool {
        // The driver takes output between turns; a turn may hold several inputs.
        if self.rng.u8(..4) == 0 && self.harvest() {
            return true;
        }
        let mut actions = Vec::new();
        for g in self.alive() {
            if self.gw_ref(g).busy() {
                actions.push(Action::Gateway(g));
            }
        }
        actions.extend((0..self.dials.len()).map(Action::Connect));
        for (w, wire) in self.wires.iter().enumerate() {
            let Some(wire) = wire else { continue };
            for from in 0..2 {
                let to = 1 - from;
                if !wire.open(to) || self.held.contains(&(wire.ends[from].gw, wire.ends[to].gw)) {
                    continue;
                }
                let end = wire.ends[to];
                let shard = &self.gw_ref(end.gw).shards[end.shard];
                for (s, stream) in STREAMS.iter().enumerate() {
                    if !wire.flight[from][s].is_empty() && shard.wants_link_input(end.link, *stream)
                    {
                        actions.push(Action::Deliver(w, from, s));
                    }
                }
                if !wire.open(from) && wire.flight[from][0].is_empty() {
                    actions.push(Action::CloseArrives(w, from));
                }
            }
        }
        if actions.is_empty() {
            return self.harvest();
        }
        match self.pick(&actions) {
            Action::Gateway(g) => {
                self.gw(g).step();
            }
            Action::Connect(d) => {
                let dial = self.dials.swap_remove(d);
                self.connect_dial(dial);
            }
            Action::Deliver(w, from, s) => self.deliver(w, from, s),
            Action::CloseArrives(w, from) => {
                let wire = self.wires[w].take().expect("a wire");
                let code = wire.closed_by[from];
                let end = wire.ends[1 - from];
                self.by_end.remove(&end);
                self.forget(end);
                let now = self.now;
                self.shard(end)
                    .handle_link_closed(now, end.link, LinkEnd::Closed { code });
            }
        }
        true
    }

    /// A random action, a gateway's own step weighted by `gateway_weight`.
    fn pick(&mut self, actions: &[Action]) -> Action {
        let weight = |a: &Action| match a {
            Action::Gateway(_) => self.gateway_weight,
            _ => 8,
        };
        let total: u32 = actions.iter().map(weight).sum();
        let mut at = self.rng.u32(..total);
        for a in actions {
            if at < weight(a) {
                return *a;
            }
            at -= weight(a);
        }
        unreachable!("a weight under the total")
    }

    /// Steps until nothing is left to do.
    pub fn drive(&mut self) {
        self.drive_with(&mut |_| {});
    }

    /// Steps until nothing is left to do, calling `check` after each step.
    pub fn drive_with(&mut self, check: &mut dyn FnMut(&MeshSim)) {
        for _ in 0..20_000_000 {
            let moved = self.step();
            check(self);
            if !moved {
                return;
            }
        }
        panic!("the mesh did not settle");
    }

    /// Moves time forward by `d`, firing timers on the way, and drives.
    pub fn advance(&mut self, d: Duration) {
        self.advance_with(d, &mut |_| {});
    }

    /// As [`MeshSim::advance`], calling `check` after each step.
    pub fn advance_with(&mut self, d: Duration, check: &mut dyn FnMut(&MeshSim)) {
        let end = self.now + d;
        for _ in 0..10_000_000 {
            self.drive_with(check);
            let shards = self
                .gws
                .iter()
                .flatten()
                .flat_map(|g| g.shards.iter())
                .filter_map(|s| s.next_deadline());
            let next = shards.chain(self.timed.iter().map(|(at, _)| *at)).min();
            match next {
                Some(at) if at <= end => self.fire(at),
                _ => {
                    self.fire(end);
                    self.drive_with(check);
                    return;
                }
            }
        }
        panic!("time did not move on");
    }

    /// Sets the clock to `at` (unless it is later) and fires what is due.
    fn fire(&mut self, at: Time) {
        self.now = self.now.max(at);
        let now = self.now;
        for g in self.gws.iter_mut().flatten() {
            g.now = now;
            for s in &mut g.shards {
                s.handle_timeout(now);
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.timed)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.timed = later;
        for (_, event) in due {
            match event {
                Timed::DialFailed(end) => {
                    if self.gws[end.gw].is_some() {
                        self.shard(end)
                            .handle_link_closed(now, end.link, LinkEnd::DialFailed);
                    }
                }
            }
        }
    }

    fn shard(&mut self, end: End) -> &mut meshgate_shard::Shard {
        &mut self.gw(end.gw).shards[end.shard]
    }

    /// Takes what every shard has for the driver: dials, link output, link closes. Returns
    /// whether anything moved.
    fn harvest(&mut self) -> bool {
        let mut moved = false;
        // Like the driver, which retries a link it could not write all to at every turn.
        let unsent: Vec<End> = std::mem::take(&mut self.unsent).into_iter().collect();
        for end in unsent {
            if self.gws[end.gw].is_some() && self.by_end.contains_key(&end) {
                moved |= self.take_output(end, false);
            }
        }
        for g in 0..self.gws.len() {
            let Some(shards) = self.gws[g].as_ref().map(|s| s.shards.len()) else {
                continue;
            };
            for s in 0..shards {
                while let Some(req) = self.gw(g).shards[s].poll_dial() {
                    let from = End {
                        gw: g,
                        shard: s,
                        link: req.link,
                    };
                    let addr = req.addr.to_string();
                    self.dials.push(Dialing { from, addr });
                    moved = true;
                }
                while let Some(key) = self.gw(g).shards[s].poll_link_ready() {
                    let end = End {
                        gw: g,
                        shard: s,
                        link: key,
                    };
                    moved |= self.take_output(end, false);
                }
                while let Some((key, reason)) = self.gw(g).shards[s].poll_link_close() {
                    let end = End {
                        gw: g,
                        shard: s,
                        link: key,
                    };
                    self.close(end, reason.close_code());
                    moved = true;
                }
            }
        }
        moved
    }

    /// Moves a link's output on both streams into its connection, as much as the window
    /// takes (`all`: everything, as a close flushes it). Returns whether any byte moved.
    fn take_output(&mut self, end: End, all: bool) -> bool {
        let mut moved = false;
        let now = self.now;
        let wire = self.by_end.get(&end).copied();
        let shard = &mut self.gws[end.gw].as_mut().expect("alive").shards[end.shard];
        for (s, stream) in STREAMS.iter().enumerate() {
            let out = shard.link_output(end.link, *stream);
            if out.is_empty() {
                continue;
            }
            let Some(w) = wire else {
                panic!("output for link {end:?}, which has no connection ({now:?})");
            };
            let wire = self.wires[w].as_mut().expect("a wire");
            let i = wire.end_of(end).expect("an end of its wire");
            let peer = wire.ends[1 - i].gw;
            let room = if all {
                usize::MAX
            } else {
                self.window.saturating_sub(wire.flight[i][s].len())
            };
            let n = out.len().min(room);
            if n < out.len() {
                self.unsent.insert(end);
            }
            let bytes = out[..n].to_vec();
            shard.consume_link_output(end.link, *stream, n);
            let reader = self
                .readers
                .entry((end, s))
                .or_insert_with(|| FrameReader::new(u32::MAX));
            reader.push(&bytes).expect("a link sends valid frames");
            while let Some(frame) = reader.next_frame().expect("a link sends valid frames") {
                *self.frames_sent.entry(frame.frame_type).or_default() += 1;
                if *stream == LinkStream::Control {
                    let log = self.control_log.entry((end.gw, peer)).or_default();
                    log.push(frame.frame_type);
                }
            }
            moved |= n > 0;
            wire.flight[i][s].extend(bytes);
        }
        moved
    }

    /// The shard asked to close the link: its last control output goes out, it learns the
    /// connection is closed, and the peer learns the code once the bytes before it arrived.
    fn close(&mut self, end: End, code: u64) {
        let now = self.now;
        if let Some(d) = self.dials.iter().position(|d| d.from == end) {
            // Closed before its QUIC handshake finished.
            self.dials.swap_remove(d);
        }
        self.timed.retain(|(_, t)| match t {
            Timed::DialFailed(e) => *e != end,
        });
        self.take_output(end, true);
        self.forget(end);
        if let Some(w) = self.by_end.remove(&end) {
            let wire = self.wires[w].as_mut().expect("a wire");
            let i = wire.end_of(end).expect("an end of its wire");
            self.closes.push((end.gw, wire.ends[1 - i].gw, code));
            wire.closed_by[i] = Some(code);
            wire.flight[1 - i] = Default::default();
            if !wire.open(1 - i) {
                self.wires[w] = None;
            }
        }
        self.shard(end)
            .handle_link_closed(now, end.link, LinkEnd::Closed { code: None });
    }

    /// The connection is gone at once: both open ends see it closed without a code.
    fn drop_wire(&mut self, w: usize) {
        let now = self.now;
        let Some(wire) = self.wires[w].take() else {
            return;
        };
        for i in 0..2 {
            let end = wire.ends[i];
            if wire.open(i) && self.gws[end.gw].is_some() {
                self.by_end.remove(&end);
                self.forget(end);
                self.shard(end)
                    .handle_link_closed(now, end.link, LinkEnd::Closed { code: None });
            }
        }
    }

    /// Forgets what the simulator keeps of a closed link's end.
    fn forget(&mut self, end: End) {
        self.unsent.remove(&end);
        for s in 0..STREAMS.len() {
            self.readers.remove(&(end, s));
        }
    }

    /// A dial's QUIC handshake: to the gateway at the address, on a shard drawn at random; or
    /// it fails after a while.
    fn connect_dial(&mut self, dial: Dialing) {
        let now = self.now;
        let target = (0..self.gws.len()).find(|&i| addr(i) == dial.addr);
        let reachable = target.filter(|&t| {
            self.gws[t].is_some() && (t == dial.from.gw || !self.is_cut(t, dial.from.gw))
        });
        let accepted = reachable.and_then(|t| {
            let shard = self.rng.usize(..self.gw_ref(t).shards.len());
            let nonce = self.nonce();
            let key = self.gw(t).shards[shard].handle_link_accepted(now, nonce)?;
            Some(End {
                gw: t,
                shard,
                link: key,
            })
        });
        let Some(acceptor) = accepted else {
            self.timed
                .push((now + DIAL_FAILS_AFTER, Timed::DialFailed(dial.from)));
            return;
        };
        let w = self.wires.len();
        self.wires.push(Some(Wire {
            ends: [dial.from, acceptor],
            flight: Default::default(),
            closed_by: [None, None],
        }));
        self.by_end.insert(dial.from, w);
        self.by_end.insert(acceptor, w);
        let nonce = self.nonce();
        self.shard(dial.from)
            .handle_link_connected(now, dial.from.link, nonce);
    }

    /// Hands a random piece of the bytes in flight on one stream to the other end.
    fn deliver(&mut self, w: usize, from: usize, s: usize) {
        let now = self.now;
        let wire = self.wires[w].as_mut().expect("a wire");
        let queue = &mut wire.flight[from][s];
        let n = self.rng.usize(1..=queue.len());
        let bytes: Vec<u8> = queue.drain(..n).collect();
        let end = wire.ends[1 - from];
        self.shard(end)
            .handle_link_data(now, end.link, STREAMS[s], &bytes);
    }

    fn nonce(&mut self) -> [u8; 32] {
        let mut n = [0u8; 32];
        self.rng.fill(&mut n);
        n
    }

    // ------------------------------------------------------------------ what the mesh shows

    /// Every link of a gateway, all shards.
    pub fn links(&self, gw: usize) -> Vec<LinkReport> {
        self.gw_ref(gw)
            .shards
            .iter()
            .flat_map(|s| s.link_reports())
            .collect()
    }

    /// The gateway's up links.
    pub fn up_links(&self, gw: usize) -> Vec<LinkReport> {
        self.links(gw)
            .into_iter()
            .filter(|l| l.state == LinkState::Up)
            .collect()
    }

    /// Names of the peers a gateway has up links to, sorted.
    pub fn up_peers(&self, gw: usize) -> Vec<String> {
        let mut v: Vec<String> = self
            .up_links(gw)
            .iter()
            .map(|l| String::from_utf8_lossy(l.node_name.as_deref().unwrap_or_default()).into())
            .collect();
        v.sort();
        v
    }

    /// Links of a gateway admitted (syncing or up), all shards.
    pub fn admitted(&self, gw: usize) -> usize {
        self.links(gw)
            .iter()
            .filter(|l| l.state.is_admitted())
            .count()
    }

    /// The up link of gateway `gw` to gateway `peer`.
    pub fn link(&self, gw: usize, peer: usize) -> Option<LinkReport> {
        let peer = name(peer).into_bytes();
        self.up_links(gw)
            .into_iter()
            .find(|l| l.node_name.as_deref() == Some(&peer[..]))
    }

    /// Frames of `ty` sent by `gw` on its up link to `peer` (0 without one).
    pub fn sent(&self, gw: usize, peer: usize, ty: FrameType) -> u64 {
        self.link(gw, peer)
            .map_or(0, |l| l.counters.frames_of(ty).0)
    }

    /// Frames of `ty` received by `gw` on its up link from `peer` (0 without one).
    pub fn received(&self, gw: usize, peer: usize, ty: FrameType) -> u64 {
        self.link(gw, peer)
            .map_or(0, |l| l.counters.frames_of(ty).1)
    }

    /// Frames of `ty` sent by `gw` on all its links.
    pub fn sent_by(&self, gw: usize, ty: FrameType) -> u64 {
        self.links(gw)
            .iter()
            .map(|l| l.counters.frames_of(ty).0)
            .sum()
    }

    /// On a settled mesh, each up link's two ends agree: one end counted as sent exactly the
    /// frames and bytes the other counted as received (PROTOCOL.md 9.11: the counters are
    /// exact).
    pub fn assert_counters_agree(&self) {
        for a in self.alive() {
            for b in self.alive() {
                if a >= b {
                    continue;
                }
                let (Some(ab), Some(ba)) = (self.link(a, b), self.link(b, a)) else {
                    continue;
                };
                let (x, y) = (&ab.counters, &ba.counters);
                assert_eq!(
                    (x.frames_sent, x.bytes_sent),
                    (y.frames_received, y.bytes_received),
                    "what {a} sent {b}"
                );
                assert_eq!(
                    (y.frames_sent, y.bytes_sent),
                    (x.frames_received, x.bytes_received),
                    "what {b} sent {a}"
                );
            }
        }
    }

    /// Sum of a counter over every shard of a gateway.
    pub fn total(&self, gw: usize, f: impl Fn(&meshgate_shard::metrics::Counters) -> u64) -> u64 {
        self.gw_ref(gw).total(f)
    }
}

/// Frames of `ty` all links sent over the whole run.
impl MeshSim {
    pub fn frames_sent_of(&self, ty: FrameType) -> u64 {
        self.frames_sent.get(&(ty as u8)).copied().unwrap_or(0)
    }
}

fn stream_index(stream: LinkStream) -> usize {
    match stream {
        LinkStream::Control => 0,
        LinkStream::Data => 1,
    }
}

/// The node_id of gateway `i` in its `run`-th start.
pub fn gateway_id(i: usize, run: u64) -> NodeId {
    let mut id = [0xe0; 32];
    id[0] = i as u8;
    id[1] = run as u8;
    NodeId(id)
}
