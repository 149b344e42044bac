//! What a client is told before it connects.

use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshgate_protocol::NodeId;

/// How a client connects and behaves. [`ClientConfig::default`] targets a gateway on
/// `127.0.0.1:9443` in realm `macula.default` with a random node id, but trusts no
/// certificate: set [`tls`](ClientConfig::tls).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The gateway's UDP address. Default `127.0.0.1:9443`.
    pub server: SocketAddr,
    /// The name the gateway's certificate must carry (also sent as TLS SNI). Default
    /// `localhost`.
    pub server_name: String,
    /// The realm to join. Default `macula.default`.
    pub realm: String,
    /// This client's identity on the mesh. Default: 32 random bytes, new for every config.
    /// Connecting twice with one node id replaces the older session.
    pub node_id: NodeId,
    /// The token for a realm that requires one.
    pub token: Option<String>,
    /// Which server certificates are trusted.
    pub tls: Tls,
    /// A PING is sent when nothing was sent for this long. Default 20 s.
    pub keep_alive: Duration,
    /// The QUIC idle timeout. Default 60 s.
    pub idle_timeout: Duration,
    /// The longest the QUIC handshake and the CONNECT exchange may take. Default 10 s.
    pub connect_timeout: Duration,
    /// The timeout of [`Client::call`](crate::Client::call), also sent to the gateway as the
    /// call's deadline. Default 5 s.
    pub call_timeout: Duration,
    /// The timeout of requests answered by PONG: [`ping`](crate::Client::ping),
    /// [`flush`](crate::Client::flush), [`subscribe`](crate::Client::subscribe) and
    /// [`register`](crate::Client::register). Default 10 s.
    pub request_timeout: Duration,
    /// Connect again after the connection is lost (not after a refusal, nor after the session
    /// was replaced), and restore the subscriptions and registrations. Default true.
    pub reconnect: bool,
    /// The delays between reconnection attempts.
    pub backoff: Backoff,
    /// The lifetime asked for each registration (sent as `ttl`, capped by the gateway's
    /// `--service-ttl`); registrations are refreshed every third of it. Default 60 s.
    pub registration_ttl: Duration,
    /// Deliveries buffered per [`Subscription`](crate::Subscription). Default 65,536.
    pub subscription_capacity: usize,
    /// What happens to a delivery that finds its subscription's buffer full.
    pub subscription_overflow: Overflow,
    /// The largest frame payload the gateway accepts (its `--max-frame`). Default 1 MiB.
    pub max_frame: u32,
    /// Bytes queued for sending beyond which [`publish`](crate::Client::publish) and
    /// [`call`](crate::Client::call) wait. Default 8 MiB.
    pub max_queued_bytes: usize,
    /// The QUIC receive window of the stream the gateway's frames arrive on: bytes the gateway
    /// may send ahead of what the client has read (the connection's window is twice it).
    /// Large, so that a burst of deliveries does not wait for window updates; at least 1.
    /// Default 8 MiB.
    pub receive_window: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            server: SocketAddr::from((Ipv4Addr::LOCALHOST, 9443)),
            server_name: "localhost".to_owned(),
            realm: "macula.default".to_owned(),
            node_id: random_node_id(),
            token: None,
            tls: Tls::default(),
            keep_alive: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            reconnect: true,
            backoff: Backoff::default(),
            registration_ttl: Duration::from_secs(60),
            subscription_capacity: 65_536,
            subscription_overflow: Overflow::Drop,
            max_frame: 1 << 20,
            max_queued_bytes: 8 << 20,
            receive_window: 8 << 20,
        }
    }
}

impl ClientConfig {
    /// The default configuration for the gateway at `server`.
    pub fn new(server: SocketAddr) -> ClientConfig {
        ClientConfig {
            server,
            ..ClientConfig::default()
        }
    }
}

/// Which certificates the client trusts.
#[derive(Clone, Debug)]
pub enum Tls {
    /// Accept any certificate, as for a gateway that generated a self-signed one at start-up.
    /// The connection is encrypted but the gateway is not authenticated: for development.
    Insecure,
    /// Trust the certificates in this PEM file: a CA, or the gateway's own certificate.
    CaFile(PathBuf),
    /// Trust these root certificates. Empty (the default) trusts nothing, and connecting
    /// fails with [`ClientError::Tls`](crate::ClientError::Tls).
    Roots(Arc<rustls::RootCertStore>),
}

impl Default for Tls {
    fn default() -> Self {
        Tls::Roots(Arc::new(rustls::RootCertStore::empty()))
    }
}

/// What the client does with a delivery for a subscription whose buffer is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Drop it and count it in [`Subscription::dropped`](crate::Subscription::dropped); the
    /// rest of the session is not held up. The default.
    #[default]
    Drop,
    /// Stop reading from the gateway until the subscription has room: nothing is lost, and a
    /// reader too slow for the traffic becomes a slow consumer at the gateway, which then
    /// drops and counts. Everything else the gateway sends (replies, incoming calls) waits
    /// too, so a task that reads the subscription must not wait for a call's reply before
    /// reading on.
    Wait,
}

/// Exponential backoff between reconnection attempts: the first waits about `initial`, each
/// next one twice as long up to `max`, each drawn at random between half and all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first attempt. Default 100 ms.
    pub initial: Duration,
    /// The longest delay. Default 5 s.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0 for the first), with its jitter.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let full = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        full.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

/// 32 bytes from the operating system's random source, or, should it fail, from hashers
/// seeded by the standard library's per-process random keys.
pub fn random_node_id() -> NodeId {
    let mut id = [0u8; 32];
    if getrandom::fill(&mut id).is_err() {
        let state = std::collections::hash_map::RandomState::new();
        for (i, chunk) in id.chunks_mut(8).enumerate() {
            let mut h = state.build_hasher();
            h.write_usize(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    NodeId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_maximum_with_jitter() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let first = b.delay(0);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = b.delay(2);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(b.delay(30) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn a_receive_window_of_zero_is_refused_with_a_reason() {
        let config = ClientConfig {
            receive_window: 0,
            tls: Tls::Insecure,
            ..ClientConfig::default()
        };
        let e = crate::tls::quic_config(&config).expect_err("a zero window is refused");
        assert!(e.to_string().contains("receive window"), "{e}");
        let config = ClientConfig {
            receive_window: 1,
            tls: Tls::Insecure,
            ..ClientConfig::default()
        };
        assert!(crate::tls::quic_config(&config).is_ok());
    }

    #[test]
    fn default_configs_get_different_node_ids() {
        assert_ne!(
            ClientConfig::default().node_id,
            ClientConfig::default().node_id
        );
    }
}
