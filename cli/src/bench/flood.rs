//! `bench flood`: more new sessions than the gateway admits.
//!
//! `--probes` sessions connect first and ping the gateway every `--ping-every`, timed for
//! `--warmup` before the flood and all through it. Then `--clients` new sessions try to
//! connect, `--concurrency` at a time (for at most `--duration`): those the gateway admits
//! stay connected until the end, so that its client table fills and the rest are refused
//! with `max_clients_reached`. A gateway that sheds the flood cheaply keeps the probes'
//! latency close to what it was before.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use meshgate_client::{Client, ClientConfig};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;

use super::metrics::scrape;
use super::report::{counts, note, per_second, Latency, Progress, Summary};
use super::rpc::close_all;
use super::{client_error_kind, connect, open_file_limit, Common};
use crate::args::parse_duration;

#[derive(Args, Debug, Clone)]
pub struct FloodArgs {
    #[command(flatten)]
    pub common: Common,
    /// New sessions that try to connect: more than the gateway's --max-clients.
    #[arg(long, default_value_t = 2000)]
    pub clients: usize,
    /// Connection attempts at once, at most.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Sessions connected before the flood whose pings are timed.
    #[arg(long, default_value_t = 4)]
    pub probes: usize,
    /// Time between two pings of a probe.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub ping_every: Duration,
}

/// Which histogram a probe's pings go to.
struct Phase {
    during: AtomicBool,
    stop: AtomicBool,
}

#[derive(Default)]
struct Pings {
    before: Latency,
    during: Latency,
    errors: u64,
}

pub async fn run(a: &FloodArgs) -> Result<Summary, String> {
    if a.clients == 0 || a.concurrency == 0 {
        return Err("--clients and --concurrency must be at least 1".into());
    }
    let files = open_file_limit();
    if (a.clients + a.probes) as u64 + 64 > files {
        return Err(format!(
            "{} sessions need as many UDP sockets, over this process's open-file limit of {files}",
            a.clients + a.probes
        ));
    }
    let base = a.common.client_config()?;
    // The metrics are optional here: the refusals are counted by the sessions themselves.
    let metrics_before = scrape(&a.common.metrics).await.ok();
    let phase = Arc::new(Phase {
        during: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let probes = {
        let (base, phase, count, every) = (base.clone(), phase.clone(), a.probes, a.ping_every);
        std::thread::Builder::new()
            .name("meshgate-bench-probes".into())
            .spawn(move || probe_thread(base, count, every, phase, ready_tx))
            .map_err(|e| format!("cannot start the probes' thread: {e}"))?
    };
    ready
        .await
        .map_err(|_| "the probes' thread ended before connecting".to_owned())??;
    note(&format!(
        "flood: {} probes timed for {}, then {} new sessions, {} at a time",
        a.probes,
        humantime::format_duration(a.common.warmup),
        a.clients,
        a.concurrency
    ));
    tokio::time::sleep(a.common.warmup).await;

    phase.during.store(true, Ordering::Release);
    let progress = Progress::new(&["attempts"], Duration::ZERO);
    let line = progress.show();
    let admitted: Arc<Mutex<Vec<Client>>> = Arc::new(Mutex::new(Vec::new()));
    let permits = Arc::new(Semaphore::new(a.concurrency));
    let mut attempts = JoinSet::new();
    let started = Instant::now();
    let deadline = started + a.common.duration;
    for _ in 0..a.clients {
        if Instant::now() >= deadline {
            break;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (base, progress, admitted) = (base.clone(), progress.clone(), admitted.clone());
        attempts.spawn(async move {
            let began = Instant::now();
            let outcome = connect(&base).await;
            let took = began.elapsed();
            drop(permit);
            progress.add(0, 1);
            match outcome {
                Ok(c) => {
                    admitted.lock().await.push(c);
                    Ok(took)
                }
                Err(e) => {
                    progress.error();
                    Err((client_error_kind(&e), took))
                }
            }
        });
    }
    let mut refusals: BTreeMap<String, u64> = BTreeMap::new();
    let mut tried = 0u64;
    let mut admit_latency = Latency::new();
    let mut refuse_latency = Latency::new();
    while let Some(done) = attempts.join_next().await {
        tried += 1;
        match done.map_err(|e| format!("a connecting task failed: {e}"))? {
            Ok(took) => admit_latency.record(took),
            Err((kind, took)) => {
                refuse_latency.record(took);
                *refusals.entry(kind).or_default() += 1;
            }
        }
    }
    let flood_time = started.elapsed();
    drop(line);
    phase.stop.store(true, Ordering::Release);
    let pings = tokio::task::spawn_blocking(move || probes.join())
        .await
        .map_err(|e| format!("the probes' thread failed: {e}"))?
        .map_err(|_| "the probes' thread panicked".to_owned())?;
    let metrics_after = scrape(&a.common.metrics).await.ok();
    let admitted = std::mem::take(&mut *admitted.lock().await);
    let admitted_count = admitted.len();
    close_all(admitted).await;

    let refused_max = refusals.get("max_clients_reached").copied().unwrap_or(0);
    let mut latency = Map::new();
    latency.insert("before_flood".into(), pings.before.summary_us());
    latency.insert("during_flood".into(), pings.during.summary_us());
    let gateway_refused = match (&metrics_before, &metrics_after) {
        (Some(b), Some(a)) => {
            let key = "meshgate_clients_refused_total{reason=\"max_clients_reached\"}";
            Value::from(a.value(key).saturating_sub(b.value(key)))
        }
        _ => Value::Null,
    };
    let mut s = Summary::new(
        "flood",
        format!(
            "flood: {} new sessions against the client table, {} probes",
            a.clients, a.probes
        ),
    );
    s.set("attempts", tried)
        .set("attempts_per_s", per_second(tried, flood_time))
        .set("admitted", admitted_count)
        .set("refused_max_clients", refused_max)
        .set("failures_by_kind", counts(&refusals))
        .set("gateway_refused_max_clients", gateway_refused)
        .set("admit_latency_us", admit_latency.summary_us())
        .set("refusal_latency_us", refuse_latency.summary_us())
        .set("probe_ping_us", Value::Object(latency))
        .set("probe_ping_errors", pings.errors);
    Ok(s)
}

/// Runs the probes on a thread and runtime of their own, so that their pings time the
/// gateway rather than a worker busy with the flood's handshakes: connects them, says so on
/// `ready`, pings until told to stop, and closes them.
fn probe_thread(
    base: ClientConfig,
    count: usize,
    every: Duration,
    phase: Arc<Phase>,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
) -> Pings {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start the probes' runtime: {e}")));
            return Pings::default();
        }
    };
    runtime.block_on(async move {
        let mut probes = Vec::with_capacity(count);
        for _ in 0..count {
            match connect(&base).await {
                Ok(c) => probes.push(c),
                Err(e) => {
                    let _ = ready.send(Err(format!("probe: {e}")));
                    return Pings::default();
                }
            }
        }
        let _ = ready.send(Ok(()));
        let mut pinging = JoinSet::new();
        for p in &probes {
            pinging.spawn(ping(p.clone(), every, phase.clone()));
        }
        let mut pings = Pings::default();
        while let Some(done) = pinging.join_next().await {
            if let Ok(p) = done {
                pings.before.merge(&p.before);
                pings.during.merge(&p.during);
                pings.errors += p.errors;
            }
        }
        close_all(probes).await;
        pings
    })
}

/// Pings every `every` until told to stop, timing each round trip.
async fn ping(client: Client, every: Duration, phase: Arc<Phase>) -> Pings {
    let mut pings = Pings::default();
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !phase.stop.load(Ordering::Acquire) {
        tick.tick().await;
        let during = phase.during.load(Ordering::Acquire);
        match client.ping().await {
            Ok(rtt) if during => pings.during.record(rtt),
            Ok(rtt) => pings.before.record(rtt),
            Err(_) => pings.errors += 1,
        }
    }
    pings
}
