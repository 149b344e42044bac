//! `bench handshake`: new connections as fast as they can be made.
//!
//! `--concurrency` workers each connect a new session (QUIC handshake, TLS, CONNECT and the
//! gateway's answer), over and over, for `--duration`. By default each session is closed
//! (in the background) as soon as it is admitted, so the figure is the rate of handshakes the
//! gateway sustains; with `--hold` the sessions stay, and the run ends at the first refusal,
//! once the gateway's client table is full. Each new session binds a UDP socket of its own
//! (the client library has one endpoint per session), which is part of the cost measured.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use meshgate_client::{Client, ClientConfig};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use super::report::{counts, note, per_second, Latency, Progress, Summary};
use super::rpc::close_all;
use super::{client_error_kind, connect, Common, Engine};

mod lean;

#[derive(Args, Debug, Clone)]
pub struct HandshakeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections being made at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Keep every session open and stop at the first refusal, instead of closing each once
    /// admitted.
    #[arg(long)]
    pub hold: bool,
    /// What makes the connections (--hold needs the client library).
    #[arg(long, value_enum, default_value_t = Engine::Lean)]
    pub engine: Engine,
    #[command(flatten)]
    pub spin: super::lean::Spin,
    /// The gateway's process id: its CPU time over the run is reported, per connection
    /// (from /proc; lean engine).
    #[arg(long, value_name = "PID")]
    pub gateway_pid: Option<u32>,
}

/// What one worker counted.
#[derive(Default)]
struct Made {
    admitted: u64,
    refusals: BTreeMap<String, u64>,
    latency: Latency,
}

/// What the workers share.
struct Plan {
    base: ClientConfig,
    end: Instant,
    hold: bool,
    stop: AtomicBool,
    held: Mutex<Vec<Client>>,
    progress: Arc<Progress>,
}

pub async fn run(a: &HandshakeArgs) -> Result<Summary, String> {
    if a.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let engine = if a.hold { Engine::Library } else { a.engine };
    if engine == Engine::Lean {
        note(&format!(
            "handshake: new sessions, {} at a time, for {}, each closed once admitted (lean engine)",
            a.concurrency,
            humantime::format_duration(a.common.duration),
        ));
        let progress = Progress::new(&["connections"], Duration::ZERO);
        let _line = progress.show();
        return tokio::task::block_in_place(|| lean::run(a, progress));
    }
    if a.gateway_pid.is_some() {
        return Err("--gateway-pid needs the lean engine (and no --hold)".into());
    }
    note(&format!(
        "handshake: new sessions, {} at a time, for {}{}",
        a.concurrency,
        humantime::format_duration(a.common.duration),
        if a.hold {
            ", held until the first refusal"
        } else {
            ", each closed once admitted"
        }
    ));
    let progress = Progress::new(&["connections"], Duration::ZERO);
    let start = Instant::now();
    let plan = Arc::new(Plan {
        base: a.common.client_config()?,
        end: start + a.common.duration,
        hold: a.hold,
        stop: AtomicBool::new(false),
        held: Mutex::new(Vec::new()),
        progress: progress.clone(),
    });
    let line = progress.show();
    let mut workers = JoinSet::new();
    for _ in 0..a.concurrency {
        workers.spawn(worker(plan.clone()));
    }
    let mut made = Made::default();
    while let Some(done) = workers.join_next().await {
        let m = done.map_err(|e| format!("a connecting task failed: {e}"))?;
        made.admitted += m.admitted;
        for (k, n) in m.refusals {
            *made.refusals.entry(k).or_default() += n;
        }
        made.latency.merge(&m.latency);
    }
    let elapsed = start.elapsed();
    drop(line);
    let held = std::mem::take(&mut *plan.held.lock().await);
    let held_count = held.len();
    close_all(held).await;

    let refused: u64 = made.refusals.values().sum();
    let mut s = Summary::new(
        "handshake",
        format!(
            "handshake: {} at a time{}",
            a.concurrency,
            if a.hold { ", held" } else { "" }
        ),
    );
    s.set("concurrency", a.concurrency)
        .set("hold", a.hold)
        .set("elapsed_s", elapsed.as_secs_f64())
        .set("connections", made.admitted)
        .set("connections_per_s", per_second(made.admitted, elapsed))
        .set("held", held_count)
        .set("refused", refused)
        .set("refusals_by_kind", counts(&made.refusals))
        .set("connect_latency_us", made.latency.summary_us());
    Ok(s)
}

/// Connects sessions one after another until the end, or a refusal when holding.
async fn worker(plan: Arc<Plan>) -> Made {
    let mut made = Made::default();
    let mut closing = JoinSet::new();
    while Instant::now() < plan.end && !plan.stop.load(Ordering::Acquire) {
        let began = Instant::now();
        match connect(&plan.base).await {
            Ok(client) => {
                made.latency.record(began.elapsed());
                made.admitted += 1;
                plan.progress.add(0, 1);
                if plan.hold {
                    plan.held.lock().await.push(client);
                } else {
                    closing.spawn(async move { client.close().await });
                    // Finished closes are reaped as they come, so the set stays small.
                    while closing.try_join_next().is_some() {}
                }
            }
            Err(e) => {
                plan.progress.error();
                *made.refusals.entry(client_error_kind(&e)).or_default() += 1;
                if plan.hold {
                    plan.stop.store(true, Ordering::Release);
                }
            }
        }
    }
    while closing.join_next().await.is_some() {}
    made
}
