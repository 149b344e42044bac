//! What every shard knows of the mesh (PROTOCOL.md 9.6, 9.10): the up links and the interest
//! their peers advertise, copied from the links' shards; and the gateway's own interest, which
//! each shard advertises to the peers of its links.

use std::collections::VecDeque;
use std::sync::Arc;

use ahash::AHashMap;

use crate::config::MeshConfig;
use crate::genslab::GenSlab;
use crate::ids::{LinkKey, LinkRef, RealmId, SessionKey, ShardId, Time};
use crate::lru::PeerLru;
use crate::mesh::advertise::{Advertised, Snapshot, Update};
use crate::mesh::counters::LinkCounters;
use crate::mesh::interest::Change;
use crate::mesh::wrr::SmoothWrr;
use crate::pending::Provider;
use crate::router::{CallError, ShardMsg};
use crate::subs::SubscriptionIndex;
use crate::wire::{Entries, Interest, PeerMessage, ProcCount, Strings, SyncMsg, SyncPhase};

use super::link::{Link, LinkState};
use super::peering::Peering;
use super::{DialRequest, Shard, Timer};

/// The period of the mesh's timers: link deadlines, keep-alives, digests.
pub(super) const MESH_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Patterns per INTEREST frame of a snapshot, so that a large table fits the frame limit.
const SNAPSHOT_CHUNK: usize = 512;
/// Peers whose ended links' counts a shard keeps, at least (4 × `--max-peers` if more).
const ENDED_COUNTS: usize = 64;

/// An up link as every shard sees it.
pub(super) struct ViewLink {
    pub(super) realms: Vec<RealmId>,
    /// Over `--max-peer-output`: no CALL goes there.
    pub(super) over: bool,
}

/// The links whose peers advertise providers of one procedure: each with its count, and the
/// weighted round-robin among them (9.8). It goes with the last link.
#[derive(Default)]
pub(super) struct RemoteProviders {
    pub(super) links: Vec<(LinkRef, u32)>,
    pub(super) wrr: SmoothWrr,
}

/// The mesh state of one shard.
pub(super) struct MeshState {
    pub(super) config: Arc<MeshConfig>,
    /// This shard's links.
    pub(super) links: GenSlab<LinkKey, Link>,
    pub(super) link_ready: VecDeque<LinkKey>,
    pub(super) link_closes: VecDeque<(LinkKey, crate::wire::LinkReason)>,
    pub(super) dials: VecDeque<DialRequest>,
    /// Shard 0 only.
    pub(super) peering: Option<Peering>,
    /// Every up link of the gateway.
    pub(super) up: AHashMap<LinkRef, ViewLink>,
    /// The patterns each link's peer advertises.
    pub(super) subs: SubscriptionIndex<LinkRef>,
    /// Per (realm, procedure): the links whose peers advertise providers, and how many.
    /// By realm id, then by name (looked up without a copy of the name).
    pub(super) procs: Vec<AHashMap<Box<[u8]>, RemoteProviders>>,
    /// The gateway's own interest per realm, as advertised.
    pub(super) advertised: Vec<Advertised>,
    pub(super) advertise_dirty: bool,
    /// Mesh barriers of other shards' sessions (or this one's) waiting for this shard's
    /// links: how many PONGs each still waits for.
    pub(super) waits: AHashMap<(ShardId, SessionKey, u32), usize>,
    pub(super) next_digest: Time,
    /// When the links were last checked ([`Shard::link_tick`]).
    pub(super) last_tick: Time,
    /// Per peer name, the counts of this shard's links to it that ended, so that the per-peer
    /// counters only grow when a link is replaced or lost. Bounded (least recently updated
    /// out first).
    pub(super) ended_counts: PeerLru<Box<[u8]>, LinkCounters>,
}

impl MeshState {
    pub(super) fn new(
        config: Arc<MeshConfig>,
        shard: ShardId,
        realms: usize,
        now: Time,
    ) -> MeshState {
        let peering =
            (shard == ShardId(0)).then(|| Peering::new(config.max_peers, &config.seeds, now));
        let limit = config.max_advertised_patterns;
        let max_peers = config.max_peers;
        MeshState {
            next_digest: now + config.interest_refresh,
            last_tick: now,
            config,
            links: GenSlab::new(),
            link_ready: VecDeque::new(),
            link_closes: VecDeque::new(),
            dials: VecDeque::new(),
            peering,
            up: AHashMap::new(),
            subs: SubscriptionIndex::new(),
            procs: (0..realms).map(|_| AHashMap::new()).collect(),
            advertised: (0..realms).map(|_| Advertised::new(limit)).collect(),
            advertise_dirty: false,
            waits: AHashMap::new(),
            ended_counts: PeerLru::new(ENDED_COUNTS.max(4 * max_peers)),
        }
    }
}

impl Shard {
    /// Sends a view message to every shard, this one included (handled here at once).
    pub(super) fn broadcast_view(&mut self, msg: ShardMsg) {
        self.broadcast(msg.clone());
        let me = self.id();
        self.on_shard_message(me, msg);
    }

    pub(super) fn on_link_up(&mut self, link: LinkRef, realms: Vec<RealmId>) {
        if let Some(m) = self.mesh.as_mut() {
            m.up.insert(
                link,
                ViewLink {
                    realms,
                    over: false,
                },
            );
        }
    }

    /// A link is lost: no PUBLISH or CALL goes there any more, and the calls this shard's
    /// sessions forwarded on it fail with `provider_gone` at once.
    pub(super) fn on_link_down(&mut self, link: LinkRef) {
        if let Some(m) = self.mesh.as_mut() {
            m.up.remove(&link);
        }
        let mut calls = std::mem::take(&mut self.scratch.calls);
        calls.clear();
        self.pending.of_provider(Provider::Link(link), &mut calls);
        for &call in &calls {
            self.fail_call(call, CallError::ProviderGone);
        }
        self.scratch.calls = calls;
    }

    pub(super) fn on_link_bound(&mut self, link: LinkRef, over: bool) {
        if let Some(v) = self.mesh.as_mut().and_then(|m| m.up.get_mut(&link)) {
            v.over = over;
        }
    }

    /// A link's peer changed its interest in `realm`.
    pub(super) fn on_link_interest(&mut self, link: LinkRef, realm: RealmId, changes: &[Change]) {
        let Some(m) = self.mesh.as_mut() else { return };
        for change in changes {
            match change {
                Change::PatternAdded(p) => {
                    m.subs.insert(realm, p, link);
                }
                Change::PatternRemoved(p) => {
                    m.subs.remove(realm, p, link);
                }
                Change::Procedure { name, count } => {
                    let Some(procs) = m.procs.get_mut(usize::from(realm.0)) else {
                        continue;
                    };
                    let entry = procs.entry(name.clone()).or_default();
                    entry.links.retain(|(l, _)| *l != link);
                    if *count > 0 {
                        entry.links.push((link, *count));
                    }
                    if entry.links.is_empty() {
                        procs.remove(name);
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // The gateway's own interest
    // ---------------------------------------------------------------------------------------

    /// The gateway's count of sessions subscribed to `pattern` may have gone 0→1 or 1→0.
    pub(super) fn mesh_pattern(&mut self, realm: RealmId, pattern: &[u8]) {
        if self.mesh.is_none() {
            return;
        }
        let present = self.local_subs.subscribers_of(realm, pattern) > 0
            || self.remote_subs.subscribers_of(realm, pattern) > 0;
        let Some(m) = self.mesh.as_mut() else { return };
        if let Some(a) = m.advertised.get_mut(usize::from(realm.0)) {
            a.pattern(pattern, present);
            m.advertise_dirty = true;
        }
    }

    /// The gateway's count of live providers of `procedure` may have changed.
    pub(super) fn mesh_procedure(&mut self, realm: RealmId, procedure: &[u8]) {
        if self.mesh.is_none() {
            return;
        }
        let count = self.registry.providers_of(realm, procedure) as u32;
        let Some(m) = self.mesh.as_mut() else { return };
        if let Some(a) = m.advertised.get_mut(usize::from(realm.0)) {
            a.procedure(procedure, count);
            m.advertise_dirty = true;
        }
    }

    /// Sends the turn's changes of the gateway's interest to the peers of this shard's
    /// links: one INTEREST frame per realm and link, or a new snapshot.
    pub(super) fn flush_advertised(&mut self) {
        let Some(m) = self.mesh.as_mut() else { return };
        if !std::mem::take(&mut m.advertise_dirty) {
            return;
        }
        let updates: Vec<(RealmId, Update)> = m
            .advertised
            .iter_mut()
            .enumerate()
            .map(|(i, a)| (RealmId(i as u16), a.take_update()))
            .filter(|(_, u)| *u != Update::Nothing)
            .collect();
        for (realm, update) in updates {
            for key in self.links_sharing(realm) {
                match &update {
                    Update::Nothing => {}
                    Update::Snapshot => self.send_snapshot(key, realm),
                    Update::Increment {
                        sub_add,
                        sub_del,
                        procs,
                    } => {
                        let name = self.config.realms[usize::from(realm.0)].name.clone();
                        let add: Vec<&[u8]> = sub_add.iter().map(|p| &**p).collect();
                        let del: Vec<&[u8]> = sub_del.iter().map(|p| &**p).collect();
                        let procs: Vec<ProcCount<'_>> = procs
                            .iter()
                            .map(|(n, c)| ProcCount {
                                procedure: n,
                                count: *c,
                            })
                            .collect();
                        let msg = PeerMessage::Interest(Interest {
                            realm: &name,
                            sub_add: Strings::List(&add),
                            sub_del: Strings::List(&del),
                            procs: Entries::List(&procs),
                        });
                        self.link_write(key, &msg);
                    }
                }
            }
        }
    }

    /// This shard's admitted links that share `realm`.
    fn links_sharing(&self, realm: RealmId) -> Vec<LinkKey> {
        self.mesh
            .as_ref()
            .map(|m| {
                m.links
                    .iter()
                    .filter(|(_, l)| l.state.is_admitted() && l.shared.contains(&realm))
                    .map(|(k, _)| k)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// SYNC `begin`, INTEREST frames with the whole advertised state, SYNC `end`.
    pub(super) fn send_snapshot(&mut self, key: LinkKey, realm: RealmId) {
        let name = self.config.realms[usize::from(realm.0)].name.clone();
        let Some(m) = self.mesh.as_ref() else { return };
        let Some(a) = m.advertised.get(usize::from(realm.0)) else {
            return;
        };
        let Snapshot { patterns, procs } = a.snapshot();
        let mut frames = Vec::new();
        let sync = |phase| {
            PeerMessage::Sync(SyncMsg {
                realm: &name,
                phase,
            })
        };
        sync(SyncPhase::Begin).encode(&mut frames);
        let procs: Vec<ProcCount<'_>> = procs
            .into_iter()
            .map(|(n, c)| ProcCount {
                procedure: n,
                count: c,
            })
            .collect();
        let mut chunks = patterns.chunks(SNAPSHOT_CHUNK);
        let mut first = true;
        loop {
            let chunk = chunks.next();
            if chunk.is_none() && !first {
                break;
            }
            let procs: &[ProcCount<'_>] = if first { &procs } else { &[] };
            first = false;
            let msg = PeerMessage::Interest(Interest {
                realm: &name,
                sub_add: Strings::List(chunk.unwrap_or_default()),
                sub_del: Strings::List(&[]),
                procs: Entries::List(procs),
            });
            msg.encode(&mut frames);
        }
        sync(SyncPhase::End).encode(&mut frames);
        self.link_write_control(key, &frames);
    }

    /// SYNC `digest` of each shared realm on every admitted link of this shard, every
    /// `--interest-refresh`.
    pub(super) fn send_digests(&mut self) {
        let now = self.now;
        let Some(m) = self.mesh.as_mut() else { return };
        if now < m.next_digest {
            return;
        }
        m.next_digest = now + m.config.interest_refresh;
        self.flush_advertised();
        for realm in (0..self.config.realms.len()).map(|i| RealmId(i as u16)) {
            let Some(digest) = self
                .mesh
                .as_ref()
                .and_then(|m| m.advertised.get(usize::from(realm.0)))
                .map(|a| a.digest())
            else {
                continue;
            };
            let name = self.config.realms[usize::from(realm.0)].name.clone();
            for key in self.links_sharing(realm) {
                let msg = PeerMessage::Sync(SyncMsg {
                    realm: &name,
                    phase: SyncPhase::Digest(digest),
                });
                self.link_write(key, &msg);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Mesh barriers (PING `mesh`: true)
    // ---------------------------------------------------------------------------------------

    /// Shard `from`'s session asks: PING every up link of this shard after the interest it
    /// caused, and answer once each answered (or is lost).
    pub(super) fn on_mesh_barrier(&mut self, from: ShardId, session: SessionKey, seq: u32) {
        self.flush_advertised();
        let up: Vec<LinkKey> = self
            .mesh
            .as_ref()
            .map(|m| {
                m.links
                    .iter()
                    .filter(|(_, l)| l.state == LinkState::Up)
                    .map(|(k, _)| k)
                    .collect()
            })
            .unwrap_or_default();
        if up.is_empty() {
            self.send(from, ShardMsg::MeshBarrierAck { session, seq });
            return;
        }
        if let Some(m) = self.mesh.as_mut() {
            m.waits.insert((from, session, seq), up.len());
        }
        for key in up {
            self.ping_link(key, Some((from, session, seq)));
        }
    }

    /// One of the links a mesh barrier waits for answered, or is lost.
    pub(super) fn mesh_wait_done(&mut self, shard: ShardId, session: SessionKey, seq: u32) {
        let Some(m) = self.mesh.as_mut() else { return };
        let key = (shard, session, seq);
        let Some(left) = m.waits.get_mut(&key) else {
            return;
        };
        *left -= 1;
        if *left == 0 {
            m.waits.remove(&key);
            self.send(shard, ShardMsg::MeshBarrierAck { session, seq });
        }
    }

    /// The dial and refresh timers of the mesh, once a [`MESH_TICK`].
    pub(super) fn on_mesh_tick(&mut self) {
        self.link_tick();
        self.send_digests();
        let next = self.now + MESH_TICK;
        self.wheel.insert(next, Timer::MeshTick);
    }
}
