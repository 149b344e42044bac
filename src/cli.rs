//! The command line: `meshgate serve` and its flags, each with its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "meshgate",
    version,
    about = "A thread-per-core gateway for a QUIC service mesh"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Runs the gateway.
    Serve(ServeArgs),
}

/// A realm to serve, `NAME` or `NAME:TOKEN_FILE` (one accepted token a line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealmArg {
    pub name: String,
    pub token_file: Option<PathBuf>,
}

impl std::str::FromStr for RealmArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, file) = match s.split_once(':') {
            Some((name, file)) if !file.is_empty() => (name, Some(PathBuf::from(file))),
            Some(_) => return Err(format!("realm {s:?}: empty token file after ':'")),
            None => (s, None),
        };
        if !meshgate_shard::names::is_valid_realm(name.as_bytes()) {
            return Err(format!(
                "invalid realm name {name:?}: lowercase letters, digits, '.', '-', '_', non-empty segments, at most 255 bytes"
            ));
        }
        Ok(RealmArg {
            name: name.to_owned(),
            token_file: file,
        })
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 250ms, 5s or 2m: {e}"))
}

/// Parses a duration as [`parse_duration`] does, refusing zero.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?}: must be more than zero")),
        d => Ok(d),
    }
}

/// QUIC's smallest datagram, which every path must carry (RFC 9000, section 14).
const MIN_UDP_PAYLOAD: u16 = 1200;

/// A `--pmtud-max`: 0 (discovery off) or a UDP payload of 1200 to 16383 bytes.
fn parse_pmtud_max(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(v) if v == 0 || (1200..=16383).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?}: must be 0 (no path MTU discovery) or 1200 to 16383 bytes"
        )),
    }
}

/// A `--node-name`: 1 to 64 bytes of lowercase letters, digits, '.', '-', '_' (PROTOCOL.md 9.1).
fn parse_node_name(s: &str) -> Result<String, String> {
    let valid = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b));
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a node name: 1 to 64 bytes of lowercase letters, digits, '.', '-', '_'"
        ))
    }
}

/// A `HOST:PORT` address (`--peer`, `--advertise`): a non-empty host (a name, an IPv4 address
/// or a bracketed IPv6 one) and a port.
fn parse_host_port(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not HOST:PORT");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || (host.contains(':') && !bracketed) || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    port.parse::<u16>().map_err(|_| bad())?;
    Ok(s.to_owned())
}

/// A count of 1 or more.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// UDP address to serve QUIC on.
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub listen: SocketAddr,
    /// Shards (cores) to run, one pinned thread each [default: all available CPUs].
    #[arg(long)]
    pub shards: Option<u16>,
    /// Certificate chain (PEM). Without --cert/--key a self-signed certificate is made at start.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// TLS key exchange groups the gateway accepts, in its order of preference (BoringSSL's
    /// names, colon-separated). The default leaves out the post-quantum hybrid
    /// X25519MLKEM768, whose ML-KEM work would add to every handshake's CPU; put it
    /// first to prefer it.
    #[arg(long, default_value = "X25519:P-256", value_name = "LIST")]
    pub tls_groups: String,
    /// A realm to serve, NAME or NAME:TOKEN_FILE; repeatable [default: macula.default].
    #[arg(long = "realm", value_name = "NAME[:TOKEN_FILE]")]
    pub realms: Vec<RealmArg>,
    /// TCP address of the health and metrics endpoint.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub health_listen: SocketAddr,
    /// Connections the health endpoint holds open at once; a new one beyond it closes the
    /// oldest that has not sent a whole request yet.
    #[arg(long, default_value_t = 256, value_parser = at_least_one())]
    pub health_max_connections: usize,
    /// Time a health endpoint connection may take from accept to the last byte of its
    /// response; one still open then is closed.
    #[arg(long, default_value = "2s", value_parser = parse_positive_duration)]
    pub health_request_timeout: Duration,
    /// Largest health endpoint request head, in bytes; a longer one is answered 431 and closed.
    #[arg(long, default_value_t = 8192, value_parser = at_least_one())]
    pub health_max_request: usize,
    /// Sessions in the whole gateway, whatever the number of shards.
    #[arg(long, default_value_t = 10_000)]
    pub max_clients: usize,
    /// Connections in the handshake or waiting for CONNECT in the whole gateway, beyond which
    /// new ones are refused.
    #[arg(long, default_value_t = 1_000)]
    pub max_handshakes: usize,
    /// Largest frame payload accepted, in bytes.
    #[arg(long, default_value_t = 1_048_576)]
    pub max_frame: u32,
    /// Patterns per session.
    #[arg(long, default_value_t = 1_000)]
    pub max_subscriptions: usize,
    /// Procedures per session.
    #[arg(long, default_value_t = 1_000)]
    pub max_registrations: usize,
    /// PINGs one session may have waiting for their PONG (behind its changes reaching every
    /// shard, or every gateway of the mesh); beyond, its input is not read until some are
    /// answered.
    #[arg(long, default_value_t = 1_024)]
    pub max_waiting_pings: usize,
    /// Calls in flight from the callers of one shard (each shard holds its callers' calls).
    #[arg(long = "max-pending-calls-per-shard", default_value_t = 100_000)]
    pub max_pending_calls: usize,
    /// Bytes queued to one session before PUBLISH frames to it are dropped.
    #[arg(long, default_value_t = 4_194_304)]
    pub max_output: usize,
    /// Messages queued from one shard to another before data messages are shed.
    #[arg(long, default_value_t = 65_536)]
    pub max_shard_backlog: usize,
    /// Messages a shard's inbox holds (from other shards, forwarded datagrams); beyond it the
    /// senders keep them in their own bounded outboxes.
    #[arg(long, default_value_t = 65_536)]
    pub max_inbox: usize,
    /// Deadline of a CALL that gives none.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub call_timeout: Duration,
    /// Cap on the deadline a CALL asks for.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub max_call_timeout: Duration,
    /// Lifetime of a registration after its last REGISTER_PROCEDURE (cap on its `ttl`).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub service_ttl: Duration,
    /// How often expired registrations are removed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub prune_interval: Duration,
    /// How long a session may be slow before it is disconnected: a slow spell runs from
    /// reaching --max-output until the output drains to half of it, and once it has lasted
    /// this long the session is disconnected if its output was at the bound within the last
    /// quarter of it (checked again every quarter). The same for a peer link's data stream
    /// against --max-peer-output, checked once a second.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub slow_consumer_timeout: Duration,
    /// The largest UDP payload the gateway sends with path MTU discovery off (--pmtud-max 0),
    /// in bytes (1200 to 16383); it takes datagrams of up to this or --pmtud-max, whichever is
    /// larger. 1350 fits almost every Internet path. With discovery off a client's own limit
    /// (its max_udp_payload_size) bounds what it is sent, and a datagram larger than its path
    /// carries is fragmented by the kernel.
    #[arg(long, value_name = "BYTES", default_value_t = 1350,
          value_parser = clap::value_parser!(u16).range(1200..=16383))]
    pub max_udp_payload: u16,
    /// Path MTU discovery (RFC 8899): the largest UDP payload a connection probes for, in
    /// bytes (1200 to 16383), or 0 to turn discovery off. With discovery on, no datagram is
    /// fragmented (Don't Fragment on all of them, as RFC 9000 asks), and a connection sends
    /// packets of 1,200 bytes, which every path carries, until a padded probe of a larger
    /// size is acknowledged. It starts probing when it first fills a packet (one that never
    /// does sends no probe), from this size (or the client's max_udp_payload_size, if
    /// smaller), and halves the gap between the largest size acknowledged and the smallest
    /// lost; a probe the path cannot carry is lost, not cut up. A path whose MTU shrinks
    /// after discovery is not detected. 8952 is a jumbo frame's payload (MTU 9000 less the
    /// IPv6 and UDP headers): a busy connection's data then takes a sixth as many packets as
    /// at 1350; a path of Ethernet frames settles at 1452 to 1472.
    #[arg(long, value_name = "BYTES", default_value_t = 8952, value_parser = parse_pmtud_max)]
    pub pmtud_max: u16,
    /// How long an idle shard polls its socket and inbox before it sleeps (0s: it sleeps at
    /// once). A datagram that comes while a shard polls is read at once; one that comes while it
    /// sleeps must wake it, which delays the answer and costs the sender's core too. A shard
    /// polls only while traffic flows: after an idle spell longer than this, the next one
    /// starts asleep. The time spent polling is CPU time that handles nothing, reported as
    /// meshgate_shard_spin_seconds_total; set 0s where shards share their cores with other
    /// busy processes (with more shards than cores, the shards share them, and none polls).
    #[arg(long, value_name = "DURATION", default_value = "50us", value_parser = parse_duration)]
    pub spin: Duration,
    /// How long a connection may wait before sending CONNECT.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// QUIC idle timeout: a connection not heard from for this long is dropped, whatever the
    /// gateway sent it meanwhile.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// This gateway's name in the gateway mesh, unique in the mesh; turns the mesh on. 1 to 64
    /// bytes of lowercase letters, digits, '.', '-', '_'. Needs --cluster-token-file.
    #[arg(long, value_name = "NAME", value_parser = parse_node_name)]
    pub node_name: Option<String>,
    /// A peer gateway to dial (a seed), and to dial again for as long as the gateway runs;
    /// repeatable. Needs --node-name.
    #[arg(long = "peer", value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub peers: Vec<String>,
    /// The address peers are told to dial (needs --node-name) [default: the listen address;
    /// with an unspecified listen address (0.0.0.0, ::), 127.0.0.1 with the listen port. The
    /// protocol has peers use the source IP they see instead; until meshgate does, set
    /// --advertise on a gateway that listens on all addresses and peers with other hosts].
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub advertise: Option<String>,
    /// The mesh's shared secret, one token a line: proofs are made with the first line and
    /// accepted if made with any line, so tokens can be rotated. Required with --node-name.
    #[arg(long, value_name = "FILE")]
    pub cluster_token_file: Option<PathBuf>,
    /// Peer links at once, at least 1; beyond, the least recently used link is evicted.
    #[arg(long, default_value_t = 1_000, value_parser = at_least_one())]
    pub max_peers: usize,
    /// QUIC idle timeout of a peer link; each side PINGs every quarter of it.
    #[arg(long, default_value = "15s", value_parser = parse_positive_duration)]
    pub peer_idle_timeout: Duration,
    /// Bytes written to a peer's data stream and not yet taken by it, beyond which PUBLISH
    /// frames to it are dropped and CALLs go elsewhere.
    #[arg(long, default_value_t = 67_108_864, value_parser = at_least_one())]
    pub max_peer_output: usize,
    /// Period of the interest digest check with each peer.
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration)]
    pub interest_refresh: Duration,
    /// Distinct patterns per realm advertised to or accepted from one peer before collapsing
    /// to `**`.
    #[arg(long, default_value_t = 10_000, value_parser = at_least_one())]
    pub max_advertised_patterns: usize,
    /// CA certificates (PEM) that peer certificates must chain to, both ways [default: any
    /// peer certificate is accepted, and the cluster token's proof authenticates the peer].
    #[arg(long, value_name = "FILE")]
    pub peer_ca: Option<PathBuf>,
}

impl ServeArgs {
    /// The largest UDP payload the gateway sends or takes: the bound of its datagram buffers
    /// and the max_udp_payload_size it tells clients.
    pub fn largest_udp_payload(&self) -> u16 {
        self.max_udp_payload.max(self.pmtud_max)
    }

    /// The largest UDP payload a connection sends before path MTU discovery has proved a
    /// larger one: QUIC's minimum (1200) with discovery on, whose datagrams are never
    /// fragmented, --max-udp-payload with it off.
    pub fn unprobed_udp_payload(&self) -> u16 {
        if self.pmtud_max > 0 {
            MIN_UDP_PAYLOAD
        } else {
            self.max_udp_payload
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_serve_flag_has_its_documented_default() {
        let cli = Cli::try_parse_from(["meshgate", "serve"]).unwrap();
        let Command::Serve(a) = cli.command;
        assert_eq!(a.listen, "127.0.0.1:9443".parse().unwrap());
        assert_eq!(a.health_listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            (
                a.health_max_connections,
                a.health_request_timeout,
                a.health_max_request
            ),
            (256, Duration::from_secs(2), 8192)
        );
        assert_eq!(
            (a.max_clients, a.max_handshakes, a.max_frame),
            (10_000, 1_000, 1_048_576)
        );
        assert_eq!(
            (
                a.max_subscriptions,
                a.max_registrations,
                a.max_pending_calls
            ),
            (1_000, 1_000, 100_000)
        );
        assert_eq!(a.max_output, 4_194_304);
        assert_eq!(a.max_waiting_pings, 1_024);
        assert_eq!(a.call_timeout, Duration::from_secs(5));
        assert_eq!(a.max_call_timeout, Duration::from_secs(60));
        assert_eq!(a.service_ttl, Duration::from_secs(300));
        assert_eq!(a.prune_interval, Duration::from_secs(60));
        assert_eq!(a.slow_consumer_timeout, Duration::from_secs(10));
        assert_eq!(a.idle_timeout, Duration::from_secs(60));
        assert_eq!((a.max_udp_payload, a.pmtud_max), (1350, 8952));
        assert_eq!(
            (a.largest_udp_payload(), a.unprobed_udp_payload()),
            (8952, 1200)
        );
        assert!(a.realms.is_empty() && a.cert.is_none() && a.shards.is_none());
        assert!(a.node_name.is_none() && a.peers.is_empty() && a.advertise.is_none());
        assert!(a.cluster_token_file.is_none() && a.peer_ca.is_none());
        assert_eq!(a.tls_groups, "X25519:P-256");
        assert_eq!(
            (a.max_peers, a.max_peer_output, a.max_advertised_patterns),
            (1_000, 64 << 20, 10_000)
        );
        assert_eq!(
            (a.peer_idle_timeout, a.interest_refresh),
            (Duration::from_secs(15), Duration::from_secs(60))
        );
    }

    #[test]
    fn the_udp_payload_is_1200_to_16383_bytes() {
        let parse = |v: &str| {
            Cli::try_parse_from(["meshgate", "serve", "--max-udp-payload", v]).map(|cli| {
                let Command::Serve(a) = cli.command;
                a.max_udp_payload
            })
        };
        assert_eq!(parse("1200").unwrap(), 1200);
        assert_eq!(parse("8952").unwrap(), 8952);
        assert_eq!(parse("16383").unwrap(), 16383);
        for bad in ["1199", "16384", "0", "jumbo"] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(e.contains("--max-udp-payload"), "{bad}: {e}");
        }
    }

    #[test]
    fn path_mtu_discovery_is_off_at_0_or_probes_up_to_1200_to_16383_bytes() {
        let parse = |v: &str| {
            Cli::try_parse_from(["meshgate", "serve", "--pmtud-max", v]).map(|cli| {
                let Command::Serve(a) = cli.command;
                (
                    a.pmtud_max,
                    a.largest_udp_payload(),
                    a.unprobed_udp_payload(),
                )
            })
        };
        assert_eq!(parse("0").unwrap(), (0, 1350, 1350));
        assert_eq!(parse("1200").unwrap(), (1200, 1350, 1200));
        assert_eq!(parse("16383").unwrap(), (16383, 16383, 1200));
        for bad in ["1", "1199", "16384", "65536", "jumbo"] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(
                e.contains("--pmtud-max") && e.contains("0 (no path MTU"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn node_names_are_1_to_64_bytes_of_the_realm_alphabet() {
        for good in ["a", "gw-1.eu_west", &"x".repeat(64)] {
            assert_eq!(parse_node_name(good).as_deref(), Ok(good));
        }
        for bad in ["", "Gw", "gw 1", "gw:1", "gw/1", "é", &"x".repeat(65)] {
            assert!(parse_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn peer_addresses_are_host_and_port() {
        for good in ["10.0.0.1:9443", "gw.example:1", "[::1]:9443"] {
            assert_eq!(parse_host_port(good).as_deref(), Ok(good));
        }
        for bad in ["10.0.0.1", ":9443", "gw:", "gw:99999", "::1:9443", "a b:1"] {
            assert!(parse_host_port(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_take_milliseconds_seconds_and_minutes() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn realms_take_an_optional_token_file_and_refuse_bad_names() {
        assert_eq!(
            "a.b".parse::<RealmArg>(),
            Ok(RealmArg {
                name: "a.b".into(),
                token_file: None
            })
        );
        let r: RealmArg = "secure:/etc/tokens".parse().unwrap();
        assert_eq!(r.token_file, Some(PathBuf::from("/etc/tokens")));
        assert!("Bad Realm".parse::<RealmArg>().is_err());
        assert!("a:".parse::<RealmArg>().is_err());
    }

    #[test]
    fn a_bad_flag_value_is_an_error_not_a_panic() {
        assert!(Cli::try_parse_from(["meshgate", "serve", "--call-timeout", "soon"]).is_err());
        assert!(Cli::try_parse_from(["meshgate", "serve", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["meshgate", "serve", "--cert", "a.pem"]).is_err());
        for (flag, value) in [
            ("--health-max-connections", "0"),
            ("--health-max-request", "0"),
            ("--health-request-timeout", "0s"),
            ("--max-peers", "0"),
            ("--node-name", "Not A Name"),
            ("--peer", "nowhere"),
        ] {
            assert!(Cli::try_parse_from(["meshgate", "serve", flag, value]).is_err());
        }
    }
}
