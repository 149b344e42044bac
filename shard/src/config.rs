//! What a shard is told at start: who it is, the realms served and every limit.

use std::sync::Arc;
use std::time::Duration;

use crate::counts::GatewayCounts;
use crate::ids::{NodeId, RealmId, ShardId};
use crate::mesh::handshake::Identity;
use crate::names::is_valid_realm;
use crate::router::{MAX_PENDING_PER_SHARD, MAX_SHARDS};

/// A realm served by the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealmConfig {
    pub name: Box<[u8]>,
    /// Tokens accepted in CONNECT; empty: any client is admitted.
    pub tokens: Vec<Box<[u8]>>,
}

/// Limits shared by every shard of a gateway. `max_clients` holds for the whole gateway (the
/// shards count against [`GatewayCounts`]); the others bound each shard or each session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Sessions in the whole gateway.
    pub max_clients: usize,
    /// Largest frame payload accepted, in bytes.
    pub max_frame: u32,
    /// Patterns per session.
    pub max_subscriptions: usize,
    /// Procedures per session.
    pub max_registrations: usize,
    /// PINGs one session may have waiting for their barrier before its input is not read.
    pub max_waiting_pings: usize,
    /// Calls in flight from the callers of one shard.
    pub max_pending_calls: usize,
    /// Bytes queued to one session before PUBLISH frames to it are dropped.
    pub max_output: usize,
    /// Messages queued to one other shard before data messages to it are shed.
    pub max_shard_backlog: usize,
    pub call_timeout: Duration,
    pub max_call_timeout: Duration,
    pub service_ttl: Duration,
    pub prune_interval: Duration,
    pub slow_consumer_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clients: 10_000,
            max_frame: 1 << 20,
            max_subscriptions: 1_000,
            max_registrations: 1_000,
            max_waiting_pings: 1_024,
            max_pending_calls: 100_000,
            max_output: 4 << 20,
            max_shard_backlog: 65_536,
            call_timeout: Duration::from_secs(5),
            max_call_timeout: Duration::from_secs(60),
            service_ttl: Duration::from_secs(300),
            prune_interval: Duration::from_secs(60),
            slow_consumer_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything a shard needs to know at start.
#[derive(Clone, Debug)]
pub struct Config {
    pub shard: ShardId,
    pub shards: u16,
    /// The gateway's own node id, sent in the CONNECT answer.
    pub node_id: NodeId,
    pub realms: Vec<RealmConfig>,
    pub limits: Limits,
    /// Added to the shard's monotonic time to give wall-clock milliseconds since the Unix epoch
    /// (PONG `server_time`).
    pub wall_clock_offset_ms: i64,
    /// The counts every shard of the gateway shares: give each shard's config the same one.
    pub counts: Arc<GatewayCounts>,
    /// The gateway mesh (PROTOCOL.md section 9); `None` without `--node-name`.
    pub mesh: Option<Arc<MeshConfig>>,
    /// Seeds the shard's random draws (dial jitter, gossip delays); any value will do.
    pub seed: u64,
}

/// The gateway mesh's settings (PROTOCOL.md 9.1), the same for every shard.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// What the gateway says of itself in PEER_HELLO, and the tokens its proofs use.
    pub identity: Identity,
    /// `--peer`: addresses dialed for as long as the gateway runs.
    pub seeds: Vec<Box<str>>,
    /// `--max-peers`: admitted links at most (LRU).
    pub max_peers: usize,
    /// `--peer-idle-timeout`: PING every quarter of it.
    pub peer_idle_timeout: Duration,
    /// `--max-peer-output`: bytes queued to one peer's data stream before PUBLISH frames to it
    /// are dropped and CALLs go elsewhere.
    pub max_peer_output: usize,
    /// `--interest-refresh`: period of the interest digest check.
    pub interest_refresh: Duration,
    /// `--max-advertised-patterns`: distinct patterns per realm before collapsing to `**`.
    pub max_advertised_patterns: usize,
}

impl MeshConfig {
    /// Settings with the defaults of 9.1 for `identity`.
    pub fn new(identity: Identity) -> MeshConfig {
        MeshConfig {
            identity,
            seeds: Vec::new(),
            max_peers: 1_000,
            peer_idle_timeout: Duration::from_secs(15),
            max_peer_output: 64 << 20,
            interest_refresh: Duration::from_secs(60),
            max_advertised_patterns: 10_000,
        }
    }
}

/// A configuration that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("shard count {0} is outside 1..={MAX_SHARDS}")]
    Shards(u16),
    #[error("shard {shard} does not exist among {shards}")]
    Shard { shard: u16, shards: u16 },
    #[error("no realm is served")]
    NoRealm,
    #[error("invalid realm name {0:?}: lowercase letters, digits, '.', '-', '_', non-empty segments, at most 255 bytes")]
    RealmName(String),
    #[error("realm {0:?} is listed twice")]
    DuplicateRealm(String),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("max-pending-calls-per-shard allows at most {MAX_PENDING_PER_SHARD}")]
    TooManyPendingCalls,
}

impl Config {
    /// A configuration with the default limits and the default realm `macula.default`.
    pub fn new(shard: ShardId, shards: u16, node_id: NodeId) -> Config {
        Config {
            shard,
            shards,
            node_id,
            realms: vec![RealmConfig {
                name: b"macula.default".to_vec().into(),
                tokens: Vec::new(),
            }],
            limits: Limits::default(),
            wall_clock_offset_ms: 0,
            counts: Arc::default(),
            mesh: None,
            seed: 0,
        }
    }

    /// Checks the configuration; the driver reports the error and exits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return Err(ConfigError::Shards(self.shards));
        }
        if self.shard.0 >= self.shards {
            return Err(ConfigError::Shard {
                shard: self.shard.0,
                shards: self.shards,
            });
        }
        if self.realms.is_empty() {
            return Err(ConfigError::NoRealm);
        }
        for (i, realm) in self.realms.iter().enumerate() {
            let name = String::from_utf8_lossy(&realm.name).into_owned();
            if !is_valid_realm(&realm.name) {
                return Err(ConfigError::RealmName(name));
            }
            if self.realms[..i].iter().any(|r| r.name == realm.name) {
                return Err(ConfigError::DuplicateRealm(name));
            }
        }
        let l = &self.limits;
        for (value, name) in [
            (l.max_clients, "max-clients"),
            (l.max_frame as usize, "max-frame"),
            (l.max_output, "max-output"),
            (l.max_shard_backlog, "max-shard-backlog"),
            (l.max_pending_calls, "max-pending-calls-per-shard"),
            (l.max_waiting_pings, "max-waiting-pings"),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.mesh.as_ref().is_some_and(|m| m.max_peer_output == 0) {
            return Err(ConfigError::Zero("max-peer-output"));
        }
        if l.max_pending_calls > MAX_PENDING_PER_SHARD {
            return Err(ConfigError::TooManyPendingCalls);
        }
        Ok(())
    }

    /// The id of the realm called `name`, if it is served.
    pub fn realm(&self, name: &[u8]) -> Option<RealmId> {
        self.realms
            .iter()
            .position(|r| &*r.name == name)
            .map(|i| RealmId(i as u16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_with_an_invalid_realm_is_refused() {
        let mut c = Config::new(ShardId(0), 1, NodeId([0; 32]));
        c.realms.push(RealmConfig {
            name: b"Bad Realm".to_vec().into(),
            tokens: Vec::new(),
        });
        assert!(matches!(c.validate(), Err(ConfigError::RealmName(_))));
    }

    #[test]
    fn a_zero_bound_is_refused_with_its_flag() {
        let mut c = Config::new(ShardId(0), 1, NodeId([0; 32]));
        c.limits.max_output = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "max-output must be at least 1"
        );
        let mut c = Config::new(ShardId(0), 1, NodeId([0; 32]));
        let mut mesh = MeshConfig::new(Identity {
            node_id: NodeId([0; 32]),
            node_name: b"gw".as_slice().into(),
            incarnation: 1,
            advertise: b"127.0.0.1:9443".as_slice().into(),
            realms: Vec::new(),
            max_frame: 1 << 20,
            tokens: Vec::new(),
        });
        mesh.max_peer_output = 0;
        c.mesh = Some(Arc::new(mesh));
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "max-peer-output must be at least 1"
        );
    }
}
