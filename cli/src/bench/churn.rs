//! `bench churn`: sessions that come and go, watching the gateway's memory and gauges.
//!
//! Each cycle is a whole session life: connect, subscribe to a topic of its own, register a
//! procedure of its own, call it (the gateway routes the call back to the same session), and
//! disconnect. Cycles start at `--rate` per second, at most `--concurrency` at a time, for
//! `--duration` or `--cycles`. The gateway's metrics are read every `--sample-every`, once
//! more when the first 10% of the cycles are done, and at the end, once its gauges have
//! settled: a gateway that frees everything a session held is back to 0 sessions,
//! subscriptions, registrations and pending calls, and its memory levels off after the first
//! cycles instead of growing with each.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Args;
use meshgate_client::{Client, ClientConfig, ProcedureError, Subscription};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::chart::{self, Sample};
use super::metrics::{scrape, MetricsUrl, Scrape};
use super::report::{counts, note, per_second, Latency, Progress, Summary};
use super::{call_error_kind, client_error_kind, connect, run_tag, Common};
use crate::args::parse_duration;

/// The gauges that must be back to 0 once every session is gone.
pub const GAUGES: [&str; 4] = [
    "meshgate_clients",
    "meshgate_subscriptions",
    "meshgate_registrations",
    "meshgate_pending_calls",
];

#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,
    /// Cycles started per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Run this many cycles instead of running for --duration.
    #[arg(long)]
    pub cycles: Option<u64>,
    /// Cycles running at once, at most.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Time between two readings of the gateway's metrics.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// Write a chart of resident memory and live sessions over time to this SVG file.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// Write the metrics readings to this CSV file.
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,
    /// How long to wait at the end for the gateway's gauges to reach 0.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub settle: Duration,
}

/// What the cycles share.
struct Shared {
    base: ClientConfig,
    tag: String,
    start: Instant,
    metrics: MetricsUrl,
    progress: Arc<Progress>,
    done: AtomicU64,
    /// Cycles after which the 10% reading is taken.
    tenth: u64,
    errors: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<Latency>,
    samples: Mutex<Vec<Sample>>,
    tenth_sample: Mutex<Option<Sample>>,
}

impl Shared {
    fn sample(&self, scrape: &Scrape) -> Sample {
        Sample {
            t: self.start.elapsed().as_secs_f64(),
            resident: scrape.resident(),
            clients: scrape.value("meshgate_clients"),
            done: self.done.load(Ordering::Relaxed),
        }
    }

    fn push(&self, sample: Sample) {
        lock(&self.samples).push(sample);
    }
}

/// Locks a mutex of figures; a panicked holder left them usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub async fn run(a: &ChurnArgs) -> Result<Summary, String> {
    if !(a.rate > 0.0 && a.rate.is_finite()) || a.concurrency == 0 {
        return Err("--rate must be positive and --concurrency at least 1".into());
    }
    if a.sample_every.is_zero() {
        return Err("--sample-every must be more than 0".into());
    }
    let planned = a
        .cycles
        .unwrap_or((a.rate * a.common.duration.as_secs_f64()).ceil() as u64);
    let first = scrape(&a.common.metrics).await?;
    let progress = Progress::new(&["cycles"], Duration::ZERO);
    let shared = Arc::new(Shared {
        base: a.common.client_config()?,
        tag: run_tag(),
        start: Instant::now(),
        metrics: a.common.metrics.clone(),
        progress: progress.clone(),
        done: AtomicU64::new(0),
        tenth: (planned / 10).max(1),
        errors: Mutex::new(BTreeMap::new()),
        latency: Mutex::new(Latency::new()),
        samples: Mutex::new(Vec::new()),
        tenth_sample: Mutex::new(None),
    });
    let start_sample = shared.sample(&first);
    shared.push(start_sample);
    note(&format!(
        "churn: {} at {} cycles/s, {} at a time, metrics every {}",
        match a.cycles {
            Some(n) => format!("{n} cycles"),
            None => format!("{}", humantime::format_duration(a.common.duration)),
        },
        a.rate,
        a.concurrency,
        humantime::format_duration(a.sample_every)
    ));

    let sampler = tokio::spawn(sample_every(shared.clone(), a.sample_every));
    let line = progress.show();
    let permits = Arc::new(Semaphore::new(a.concurrency));
    let limit = u32::try_from(a.concurrency).unwrap_or(u32::MAX);
    let deadline = shared.start + a.common.duration;
    let mut started = 0u64;
    loop {
        if a.cycles.is_some_and(|n| started >= n) {
            break;
        }
        let due = shared.start + Duration::from_secs_f64(started as f64 / a.rate);
        if a.cycles.is_none() && due >= deadline {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let sh = shared.clone();
        let i = started;
        tokio::spawn(async move {
            let began = Instant::now();
            let outcome = cycle(&sh, i).await;
            lock(&sh.latency).record(began.elapsed());
            match outcome {
                Ok(()) => sh.progress.add(0, 1),
                Err(stage) => {
                    sh.progress.error();
                    *lock(&sh.errors).entry(stage).or_default() += 1;
                }
            }
            let done = sh.done.fetch_add(1, Ordering::Relaxed) + 1;
            if done == sh.tenth {
                if let Ok(s) = scrape(&sh.metrics).await {
                    let sample = sh.sample(&s);
                    *lock(&sh.tenth_sample) = Some(sample);
                    sh.push(sample);
                }
            }
            drop(permit);
        });
        started += 1;
    }
    // Every cycle is over once all the permits are back.
    let _all = permits
        .acquire_many(limit)
        .await
        .map_err(|e| format!("the cycles' semaphore closed: {e}"))?;
    let cycles_elapsed = shared.start.elapsed();
    drop(line);

    // Sessions leave the gateway shortly after their close: wait for the gauges to settle.
    let settle_end = Instant::now() + a.settle;
    let last = loop {
        let s = scrape(&a.common.metrics).await?;
        if GAUGES.iter().all(|g| s.value(g) == 0) || Instant::now() >= settle_end {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    sampler.abort();
    let end_sample = shared.sample(&last);
    shared.push(end_sample);

    let mut samples = lock(&shared.samples).clone();
    samples.sort_by(|x, y| x.t.total_cmp(&y.t));
    let title = format!(
        "meshgate churn: {} cycles at {} cycles/s",
        shared.done.load(Ordering::Relaxed),
        a.rate
    );
    if let Some(path) = &a.svg {
        std::fs::write(path, chart::svg(&samples, &title))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &a.csv {
        std::fs::write(path, chart::csv(&samples, "cycles"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }

    let done = shared.done.load(Ordering::Relaxed);
    let errors = lock(&shared.errors).clone();
    let error_count: u64 = errors.values().sum();
    let tenth = *lock(&shared.tenth_sample);
    let mut memory = Map::new();
    memory.insert("start".into(), start_sample.resident.into());
    memory.insert(
        "after_10pct".into(),
        tenth.map_or(Value::Null, |s| s.resident.into()),
    );
    memory.insert(
        "peak".into(),
        samples.iter().map(|s| s.resident).max().unwrap_or(0).into(),
    );
    memory.insert("end".into(), end_sample.resident.into());
    let mut gauges = Map::new();
    for g in GAUGES {
        let name = g.trim_start_matches("meshgate_");
        gauges.insert(name.into(), last.value(g).into());
    }
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or(Value::Null, |p| p.display().to_string().into())
    };
    let mut s = Summary::new("churn", title.trim_start_matches("meshgate ").to_owned());
    s.set("rate_target", a.rate)
        .set("cycles", done)
        .set("cycles_ok", done - error_count.min(done))
        .set("cycles_per_s", per_second(done, cycles_elapsed))
        .set("errors", error_count)
        .set("errors_by_stage", counts(&errors))
        .set("cycle_latency_us", lock(&shared.latency).summary_us())
        .set("memory_bytes", Value::Object(memory))
        .set("end_gauges", Value::Object(gauges))
        .set("gauges_zero", GAUGES.iter().all(|g| last.value(g) == 0))
        .set("samples", samples.len())
        .set("svg", path(&a.svg))
        .set("csv", path(&a.csv));
    Ok(s)
}

/// Reads the metrics every `period` until aborted.
async fn sample_every(shared: Arc<Shared>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Ok(s) = scrape(&shared.metrics).await {
            shared.push(shared.sample(&s));
        }
    }
}

/// One session's life; the error names the stage that failed and why.
async fn cycle(sh: &Shared, i: u64) -> Result<(), String> {
    let client = connect(&sh.base)
        .await
        .map_err(|e| format!("connect: {}", client_error_kind(&e)))?;
    // The subscription is held until the session is closed: everything the session holds
    // goes with it, nothing is released first.
    let outcome = steps(&client, sh, i).await;
    let _ = client.close().await;
    outcome.map(drop)
}

async fn steps(client: &Client, sh: &Shared, i: u64) -> Result<Subscription, String> {
    let sub = client
        .subscribe([format!("bench.{}.churn.{i}", sh.tag)])
        .await
        .map_err(|e| format!("subscribe: {}", client_error_kind(&e)))?;
    let procedure = format!("bench.{}.churn.p{i}", sh.tag);
    client
        .register(
            &procedure,
            |args| async move { Ok::<_, ProcedureError>(args) },
        )
        .await
        .map_err(|e| format!("register: {}", client_error_kind(&e)))?;
    client
        .call(&procedure, &[0xc0])
        .await
        .map_err(|e| format!("call: {}", call_error_kind(&e)))?;
    Ok(sub)
}
