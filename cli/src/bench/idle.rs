//! `bench idle`: the gateway's memory per idle session.
//!
//! Reads the gateway's resident memory, connects `--clients` sessions that then do nothing
//! (but the client's keep-alive PING), waits `--settle`, and reads it again: the difference
//! divided by the sessions admitted is the memory an idle session costs the gateway. Then
//! the sessions leave and the memory is read a third time.
//!
//! The client library gives every session a QUIC endpoint, and so a UDP socket, of its own
//! (it has no way to share one endpoint among sessions): this process needs a file descriptor
//! per session, and its open-file limit is raised to the hard limit at start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::metrics::scrape;
use super::report::{counts, note, per_second, round, Latency, Progress, Summary};
use super::rpc::close_all;
use super::{client_error_kind, connect, open_file_limit, Common};
use crate::args::parse_duration;

/// File descriptors kept for everything but the sessions' sockets.
const SPARE_FILES: u64 = 64;

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Idle sessions to connect.
    #[arg(long, default_value_t = 5000)]
    pub clients: usize,
    /// Sessions being connected at once, at most (keep it under the gateway's
    /// --max-handshakes).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long to wait after the last session connected before reading the memory.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
}

pub async fn run(a: &IdleArgs) -> Result<Summary, String> {
    if a.clients == 0 || a.concurrency == 0 {
        return Err("--clients and --concurrency must be at least 1".into());
    }
    let files = open_file_limit();
    if (a.clients as u64).saturating_add(SPARE_FILES) > files {
        return Err(format!(
            "{} sessions need as many UDP sockets, over this process's open-file limit of {files} \
             (raise it with `ulimit -n`)",
            a.clients
        ));
    }
    let base = a.common.client_config()?;
    let before = scrape(&a.common.metrics).await?;
    note(&format!(
        "idle: connecting {} sessions, {} at a time",
        a.clients, a.concurrency
    ));
    let progress = Progress::new(&["connected"], Duration::ZERO);
    let line = progress.show();
    let permits = Arc::new(Semaphore::new(a.concurrency));
    let mut connecting = JoinSet::new();
    let started = Instant::now();
    for _ in 0..a.clients {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (base, progress) = (base.clone(), progress.clone());
        connecting.spawn(async move {
            let began = Instant::now();
            let outcome = connect(&base).await;
            drop(permit);
            match &outcome {
                Ok(_) => progress.add(0, 1),
                Err(_) => progress.error(),
            }
            (outcome, began.elapsed())
        });
    }
    let mut clients = Vec::with_capacity(a.clients);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut latency = Latency::new();
    while let Some(done) = connecting.join_next().await {
        let (outcome, took) = done.map_err(|e| format!("a connecting task failed: {e}"))?;
        match outcome {
            Ok(c) => {
                latency.record(took);
                clients.push(c);
            }
            Err(e) => *errors.entry(client_error_kind(&e)).or_default() += 1,
        }
    }
    let connect_time = started.elapsed();
    drop(line);
    tokio::time::sleep(a.settle).await;
    let during = scrape(&a.common.metrics).await?;
    let admitted = clients.len();
    close_all(clients).await;
    tokio::time::sleep(a.settle).await;
    let after = scrape(&a.common.metrics).await?;

    let growth = during.resident().saturating_sub(before.resident());
    let per_session = if admitted > 0 {
        round(growth as f64 / admitted as f64, 0)
    } else {
        0.0
    };
    let mut memory = Map::new();
    memory.insert("before".into(), before.resident().into());
    memory.insert("with_sessions".into(), during.resident().into());
    memory.insert("after_close".into(), after.resident().into());
    let mut gauge = Map::new();
    gauge.insert("before".into(), before.value("meshgate_clients").into());
    gauge.insert(
        "with_sessions".into(),
        during.value("meshgate_clients").into(),
    );
    gauge.insert("after_close".into(), after.value("meshgate_clients").into());
    let mut s = Summary::new("idle", format!("idle: {} sessions", a.clients));
    s.set("clients", a.clients)
        .set("connected", admitted)
        .set("connects_per_s", per_second(admitted as u64, connect_time))
        .set("connect_latency_us", latency.summary_us())
        .set("errors", errors.values().sum::<u64>())
        .set("errors_by_kind", counts(&errors))
        .set("memory_bytes", Value::Object(memory))
        .set("gateway_clients", Value::Object(gauge))
        .set("bytes_per_idle_session", per_session);
    Ok(s)
}
