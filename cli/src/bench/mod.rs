//! `meshgate-cli bench`: load scenarios against a running gateway.
//!
//! Every scenario drives the gateway over real QUIC sessions of the client library, on a Tokio
//! runtime of its own (`--workers` threads, 1 by default, so that the load generator can be
//! pinned to one core with `taskset`). While it runs, a progress line on stderr gives the
//! elapsed time, the current rate and the errors, once a second; at the end a summary goes to
//! stdout, as a table or, with `--json`, as one JSON object. Latencies come from HDR
//! histograms. Scenarios that watch the gateway's memory or gauges read its Prometheus page
//! (`--metrics`) with a plain HTTP GET.
//!
//! The client library opens one QUIC endpoint, hence one UDP socket, per session: scenarios
//! with many sessions need as many file descriptors, so the open-file limit is raised to its
//! hard limit at start.

mod caller_death;
mod chart;
mod churn;
mod cpu;
mod flood;
mod handshake;
mod idle;
mod lean;
mod metrics;
mod pubsub;
pub mod quic_echo;
mod report;
mod rpc;
mod slow_consumer;
pub mod stalls;

use std::time::Duration;

use clap::{Args, Subcommand};
use meshgate_client::{random_node_id, CallError, Client, ClientConfig, ClientError};
use meshgate_protocol::wire::msgpack;

use crate::args::{parse_duration, Connection};
use metrics::MetricsUrl;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The load scenarios.
#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// Callers keep calls in flight to echo providers: calls/s, latency, errors by code.
    Rpc(rpc::RpcArgs),
    /// Publishers publish to subscribers: published/s, delivered/s, delivery latency, losses.
    Pubsub(pubsub::PubsubArgs),
    /// Cycles of connect, subscribe, register, call, disconnect, watching the gateway's memory
    /// and gauges; draws them as an SVG chart.
    Churn(churn::ChurnArgs),
    /// Callers with calls in flight to a provider that never answers leave: the gateway's
    /// pending calls and memory right before and right after.
    CallerDeath(caller_death::CallerDeathArgs),
    /// Idle sessions: the gateway's resident memory per session.
    Idle(idle::IdleArgs),
    /// More new sessions than the gateway admits: refusals, and the ping latency of sessions
    /// connected before, before and during the flood.
    Flood(flood::FloodArgs),
    /// A subscriber that stops reading while publishers go on: the gateway's memory stays
    /// bounded and the subscriber is disconnected as a slow consumer.
    SlowConsumer(slow_consumer::SlowConsumerArgs),
    /// New connections as fast as they can be made: connections/s and refusals.
    Handshake(handshake::HandshakeArgs),
}

impl Scenario {
    fn common(&self) -> &Common {
        match self {
            Scenario::Rpc(a) => &a.common,
            Scenario::Pubsub(a) => &a.common,
            Scenario::Churn(a) => &a.common,
            Scenario::CallerDeath(a) => &a.common,
            Scenario::Idle(a) => &a.common,
            Scenario::Flood(a) => &a.common,
            Scenario::SlowConsumer(a) => &a.common,
            Scenario::Handshake(a) => &a.common,
        }
    }
}

/// What makes the load (rpc, pubsub).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Every session on one thread, on quiche with batched UDP, frames of a turn sharing
    /// packets: a load generator that costs less than the gateway it measures.
    Lean,
    /// Sessions of the client library (meshgate-client, on quinn and Tokio), as an
    /// application would use it.
    Library,
}

/// Flags every scenario takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    #[command(flatten)]
    pub connection: Connection,
    /// The gateway's Prometheus page, read with a plain HTTP GET.
    #[arg(long, default_value = "http://127.0.0.1:8080/metrics")]
    pub metrics: MetricsUrl,
    /// How long the load is measured (scenarios that end on their own take it as a cap).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the measurement starts, not counted (rpc, pubsub; flood: the time the
    /// probes are timed before the flood).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Print the summary as one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Worker threads of the load generator's Tokio runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: u16,
}

impl Common {
    /// The configuration of a session: a fresh node id each time.
    fn client_config(&self) -> Result<ClientConfig, String> {
        Ok(ClientConfig {
            // A lost session is an error to count, not one to hide by reconnecting.
            reconnect: false,
            ..self.connection.client_config()?
        })
    }
}

/// Runs a scenario; the error is one line for the terminal.
pub fn run(args: BenchArgs) -> Result<(), String> {
    let common = args.scenario.common().clone();
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(common.workers))
        .thread_name("meshgate-bench")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the load generator's runtime: {e}"))?;
    let summary = runtime.block_on(async move {
        match &args.scenario {
            Scenario::Rpc(a) => rpc::run(a).await,
            Scenario::Pubsub(a) => pubsub::run(a).await,
            Scenario::Churn(a) => churn::run(a).await,
            Scenario::CallerDeath(a) => caller_death::run(a).await,
            Scenario::Idle(a) => idle::run(a).await,
            Scenario::Flood(a) => flood::run(a).await,
            Scenario::SlowConsumer(a) => slow_consumer::run(a).await,
            Scenario::Handshake(a) => handshake::run(a).await,
        }
    });
    // Sessions still closing in the background are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    summary?.print(common.json)
}

/// Connects one session with a fresh node id.
async fn connect(base: &ClientConfig) -> Result<Client, ClientError> {
    Client::connect(ClientConfig {
        node_id: random_node_id(),
        ..base.clone()
    })
    .await
}

/// A short random tag that keeps the topics and procedures of one run apart from those of
/// another run against the same gateway.
fn run_tag() -> String {
    random_node_id().0[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One MessagePack bin value of `len` bytes: the arguments of a benchmark call.
fn msgpack_bin(len: usize) -> Vec<u8> {
    let mut value = Vec::with_capacity(len + 5);
    msgpack::write_bin(&mut value, &vec![0x2a; len]);
    value
}

/// The name under which a failed session or request is counted: the gateway's reason or
/// code where there is one.
fn client_error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Refused { reason, .. } => reason.as_str().to_owned(),
        ClientError::Closed { reason } => format!("closed_{}", reason.as_str()),
        ClientError::Connection(quinn::ConnectionError::ConnectionClosed(close))
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            "connection_refused".to_owned()
        }
        ClientError::Connection(quinn::ConnectionError::TimedOut) | ClientError::Timeout => {
            "timeout".to_owned()
        }
        ClientError::Connection(_) => "quic_error".to_owned(),
        ClientError::Disconnected => "disconnected".to_owned(),
        ClientError::Server(e) => e.code.clone(),
        ClientError::Connect(_) | ClientError::Io(_) => "local_error".to_owned(),
        ClientError::Tls(_) => "tls_error".to_owned(),
        ClientError::Protocol(_) => "protocol_error".to_owned(),
        ClientError::FrameTooLarge { .. } => "frame_too_large".to_owned(),
    }
}

/// The name under which a failed call is counted: the error code of the REPLY, or what
/// happened locally.
fn call_error_kind(e: &CallError) -> String {
    match e {
        CallError::Remote { code, .. } => code.clone(),
        CallError::Timeout => "no_reply_in_time".to_owned(),
        CallError::Disconnected => "disconnected".to_owned(),
        CallError::InvalidArgs => "invalid_args".to_owned(),
        CallError::Client(e) => client_error_kind(e),
    }
}

/// Raises this process's soft limit of open files to its hard limit: each session holds a UDP
/// socket of its own.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The soft limit of open files, once raised.
fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        scenario: Scenario,
    }

    #[test]
    fn msgpack_bin_values_carry_their_length_in_the_smallest_header() {
        assert_eq!(msgpack_bin(3), [0xc4, 3, 0x2a, 0x2a, 0x2a]);
        assert_eq!(&msgpack_bin(300)[..3], &[0xc5, 0x01, 0x2c]);
        assert_eq!(msgpack_bin(300).len(), 303);
        assert_eq!(&msgpack_bin(70_000)[..5], &[0xc6, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn the_connection_flags_are_those_of_the_client_commands() {
        let cli = Cli::try_parse_from(["bench", "rpc"]).unwrap();
        assert!(!cli.scenario.common().connection.insecure);
        assert!(cli.scenario.common().client_config().is_err());
        let cli = Cli::try_parse_from(["bench", "rpc", "--insecure", "--realm", "r"]).unwrap();
        let config = cli.scenario.common().client_config().unwrap();
        assert!(!config.reconnect);
        assert_eq!(config.realm, "r");
    }

    #[test]
    fn common_flags_follow_the_scenario() {
        let cli = Cli::try_parse_from([
            "bench",
            "churn",
            "--duration",
            "2s",
            "--json",
            "--metrics",
            "http://127.0.0.1:9/m",
        ])
        .unwrap();
        let common = cli.scenario.common();
        assert_eq!(common.duration, Duration::from_secs(2));
        assert!(common.json);
        assert_eq!(common.workers, 1);
        assert!(Cli::try_parse_from(["bench", "rpc", "--workers", "0"]).is_err());
    }
}
