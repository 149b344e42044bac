//! `bench caller-death`: callers leave with calls in flight.
//!
//! A provider registers a procedure whose handler never answers. Callers put `--calls` calls
//! each in flight to it, with a deadline (`--call-timeout`) far past the measurement, and
//! the gateway's `meshgate_pending_calls` is read until it holds them all. Then every caller
//! disconnects at once, and the metrics are read every 10 ms: a gateway that drops a caller's
//! calls when the caller goes is back to its baseline of pending calls within a few
//! milliseconds, not after the calls' deadline. The provider counts the CANCELs it gets
//! (`caller_gone`), each of which stops a handler.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use meshgate_client::ProcedureError;
use serde_json::{Map, Value};
use tokio::task::JoinSet;

use super::metrics::{scrape, Scrape};
use super::report::{note, round, Summary};
use super::rpc::close_all;
use super::{connect, run_tag, Common};
use crate::args::parse_duration;

/// How often the metrics are read after the callers leave.
const POLL: Duration = Duration::from_millis(10);
/// How long the calls may take to show in the gateway's gauge, and the gauge to come back.
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Args, Debug, Clone)]
pub struct CallerDeathArgs {
    #[command(flatten)]
    pub common: Common,
    /// Caller sessions.
    #[arg(long, default_value_t = 4)]
    pub callers: usize,
    /// Calls each caller puts in flight.
    #[arg(long, default_value_t = 1000)]
    pub calls: usize,
    /// Deadline of each call: far past the measurement, so that only the callers' leaving
    /// can end the calls in time.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub call_timeout: Duration,
}

/// Counts the handlers stopped before they answered: each is dropped by a CANCEL.
struct Stopped(Arc<AtomicU64>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

pub async fn run(a: &CallerDeathArgs) -> Result<Summary, String> {
    if a.callers == 0 || a.calls == 0 {
        return Err("--callers and --calls must be at least 1".into());
    }
    let metrics = &a.common.metrics;
    let base = a.common.client_config()?;
    let procedure = format!("bench.{}.sink", run_tag());
    let stopped = Arc::new(AtomicU64::new(0));
    let provider = connect(&base).await.map_err(|e| format!("provider: {e}"))?;
    let counter = stopped.clone();
    provider
        .register(&procedure, move |_args| {
            let guard = Stopped(counter.clone());
            async move {
                let _guard = guard;
                std::future::pending::<Result<Vec<u8>, ProcedureError>>().await
            }
        })
        .await
        .map_err(|e| format!("provider: {e}"))?;
    let baseline = scrape(metrics).await?;
    let total = (a.callers * a.calls) as u64;
    note(&format!(
        "caller-death: {} callers x {} calls in flight to a provider that never answers",
        a.callers, a.calls
    ));

    let mut callers = Vec::with_capacity(a.callers);
    let mut calls = JoinSet::new();
    for _ in 0..a.callers {
        let c = connect(&base).await.map_err(|e| format!("caller: {e}"))?;
        for _ in 0..a.calls {
            let (c, procedure, timeout) = (c.clone(), procedure.clone(), a.call_timeout);
            calls.spawn(async move { c.call_with_timeout(&procedure, &[0xc0], timeout).await });
        }
        callers.push(c);
    }
    let pending = |s: &Scrape| s.value("meshgate_pending_calls");
    let expected = pending(&baseline) + total;
    let waited = Instant::now();
    let before = loop {
        let s = scrape(metrics).await?;
        if pending(&s) >= expected {
            break s;
        }
        if waited.elapsed() > PATIENCE {
            return Err(format!(
                "the gateway holds {} pending calls, not the {expected} expected, after {}",
                pending(&s),
                humantime::format_duration(PATIENCE)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The callers leave, all at once.
    let left = Instant::now();
    let closing = tokio::spawn(close_all(callers));
    let (after, back_after) = loop {
        let s = scrape(metrics).await?;
        if pending(&s) <= pending(&baseline) {
            break (s, Some(left.elapsed()));
        }
        if left.elapsed() > PATIENCE {
            break (s, None);
        }
        tokio::time::sleep(POLL).await;
    };
    let _ = closing.await;
    tokio::time::sleep_until((left + Duration::from_secs(1)).into()).await;
    let after_1s = scrape(metrics).await?;
    let mut failed = 0u64;
    while let Some(call) = calls.join_next().await {
        if !matches!(call, Ok(Ok(_))) {
            failed += 1;
        }
    }
    // The CANCELs may still be on their way to the provider.
    let waited = Instant::now();
    while stopped.load(Ordering::Relaxed) < total && waited.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    close_all([provider]).await;

    let caller_gone = "meshgate_calls_total{outcome=\"caller_gone\"}";
    let mut pending_calls = Map::new();
    pending_calls.insert("baseline".into(), pending(&baseline).into());
    pending_calls.insert("before".into(), pending(&before).into());
    pending_calls.insert("after".into(), pending(&after).into());
    pending_calls.insert("after_1s".into(), pending(&after_1s).into());
    let mut memory = Map::new();
    memory.insert("baseline".into(), baseline.resident().into());
    memory.insert("before".into(), before.resident().into());
    memory.insert("after".into(), after.resident().into());
    memory.insert("after_1s".into(), after_1s.resident().into());
    let mut s = Summary::new(
        "caller-death",
        format!(
            "caller-death: {} callers x {} calls in flight, then gone",
            a.callers, a.calls
        ),
    );
    s.set("callers", a.callers)
        .set("calls_in_flight", total)
        .set("call_timeout_s", a.call_timeout.as_secs_f64())
        .set("pending_calls", Value::Object(pending_calls))
        .set("memory_bytes", Value::Object(memory))
        .set(
            "back_to_baseline_ms",
            back_after.map_or(Value::Null, |d| round(d.as_secs_f64() * 1e3, 1).into()),
        )
        .set(
            "back_before_timeout",
            back_after.is_some_and(|d| d < a.call_timeout),
        )
        .set(
            "caller_gone",
            after_1s
                .value(caller_gone)
                .saturating_sub(baseline.value(caller_gone)),
        )
        .set("provider_cancelled", stopped.load(Ordering::Relaxed))
        .set("calls_failed_at_callers", failed);
    Ok(s)
}
