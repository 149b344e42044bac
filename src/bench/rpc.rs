//! `bench rpc`: callers keep calls in flight to echo providers.
//!
//! Each caller session runs `--in-flight` slots; a slot calls, waits for the reply, and calls
//! again at once, or, with `--rate`, at its next turn of a fixed schedule (the total rate
//! shared evenly among the slots). Under `--rate` a call's latency is counted from the time
//! it was due, not from when it went out, so that a gateway that falls behind shows in the
//! latency instead of lowering the rate unseen.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use meshgate_client::{Client, ConnectionState, ProcedureError};
use serde_json::Value;
use tokio::task::JoinSet;

use super::report::{counts, note, per_second, Latency, Progress, Summary};
use super::{call_error_kind, connect, msgpack_bin, run_tag, Common};
use crate::cli::parse_duration;

#[derive(Args, Debug, Clone)]
pub struct RpcArgs {
    #[command(flatten)]
    pub common: Common,
    /// Caller sessions.
    #[arg(long, default_value_t = 4)]
    pub callers: usize,
    /// Provider sessions of the echo procedure; calls go round-robin among them.
    #[arg(long, default_value_t = 1)]
    pub providers: usize,
    /// Calls in flight per caller.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// Bytes of each call's argument (one MessagePack bin value, echoed back).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Calls per second in all, on a fixed schedule; without it each slot calls again as soon
    /// as its reply is in.
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long a call waits for its reply.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub call_timeout: Duration,
}

/// What one slot counted in the measured window.
#[derive(Default)]
struct SlotResult {
    ok: u64,
    errors: BTreeMap<String, u64>,
    latency: Latency,
}

/// The shared plan of the slots.
struct Plan {
    procedure: String,
    args: Vec<u8>,
    timeout: Duration,
    measure_from: Instant,
    end: Instant,
    progress: Arc<Progress>,
}

pub async fn run(a: &RpcArgs) -> Result<Summary, String> {
    if a.callers == 0 || a.providers == 0 || a.in_flight == 0 {
        return Err("--callers, --providers and --in-flight must be at least 1".into());
    }
    if a.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be a positive number of calls per second".into());
    }
    let base = a.common.client_config()?;
    let procedure = format!("bench.{}.echo", run_tag());
    let mut providers = Vec::with_capacity(a.providers);
    for _ in 0..a.providers {
        let p = connect(&base).await.map_err(|e| format!("provider: {e}"))?;
        p.register(
            &procedure,
            |args| async move { Ok::<_, ProcedureError>(args) },
        )
        .await
        .map_err(|e| format!("provider: {e}"))?;
        providers.push(p);
    }
    let mut callers = Vec::with_capacity(a.callers);
    for _ in 0..a.callers {
        callers.push(connect(&base).await.map_err(|e| format!("caller: {e}"))?);
    }
    note(&format!(
        "rpc: {} callers x {} in flight, {} providers, {}-byte payload, {} warmup + {} measured",
        a.callers,
        a.in_flight,
        a.providers,
        a.payload,
        humantime::format_duration(a.common.warmup),
        humantime::format_duration(a.common.duration),
    ));

    let start = Instant::now();
    let measure_from = start + a.common.warmup;
    let progress = Progress::new(&["calls"], a.common.warmup);
    let plan = Arc::new(Plan {
        procedure,
        args: msgpack_bin(a.payload),
        timeout: a.call_timeout,
        measure_from,
        end: measure_from + a.common.duration,
        progress: progress.clone(),
    });
    let slots = a.callers * a.in_flight;
    let period = a.rate.map(|r| Duration::from_secs_f64(slots as f64 / r));
    let line = progress.show();
    let mut tasks = JoinSet::new();
    for (c, caller) in callers.iter().enumerate() {
        for s in 0..a.in_flight {
            let index = c * a.in_flight + s;
            // Slots take their turns spread evenly over one period.
            let schedule = period.map(|p| (start + p.mul_f64(index as f64 / slots as f64), p));
            tasks.spawn(slot(caller.clone(), plan.clone(), schedule));
        }
    }
    let mut total = SlotResult::default();
    while let Some(done) = tasks.join_next().await {
        let r = done.map_err(|e| format!("a caller task failed: {e}"))?;
        total.ok += r.ok;
        for (code, n) in r.errors {
            *total.errors.entry(code).or_default() += n;
        }
        total.latency.merge(&r.latency);
    }
    drop(line);
    close_all(callers.into_iter().chain(providers)).await;

    let errors: u64 = total.errors.values().sum();
    let mut s = Summary::new(
        "rpc",
        format!(
            "rpc: {} callers x {} in flight, {} providers, {}-byte payload{}",
            a.callers,
            a.in_flight,
            a.providers,
            a.payload,
            a.rate
                .map(|r| format!(", paced at {r} calls/s"))
                .unwrap_or_default()
        ),
    );
    s.set("callers", a.callers)
        .set("providers", a.providers)
        .set("in_flight", a.in_flight)
        .set("payload_bytes", a.payload)
        .set("rate_target", a.rate.map_or(Value::Null, Value::from))
        .set("duration_s", a.common.duration.as_secs_f64())
        .set("calls", total.ok)
        .set("calls_per_s", per_second(total.ok, a.common.duration))
        .set("errors", errors)
        .set("errors_by_code", counts(&total.errors))
        .set("latency_us", total.latency.summary_us());
    Ok(s)
}

/// One call slot: calls until the end of the run, counting what falls in the measured window.
async fn slot(
    client: Client,
    plan: Arc<Plan>,
    schedule: Option<(Instant, Duration)>,
) -> SlotResult {
    let mut result = SlotResult::default();
    let mut due = schedule.map(|(first, _)| first);
    loop {
        let sent = match due {
            Some(t) => {
                if t >= plan.end {
                    break;
                }
                tokio::time::sleep_until(t.into()).await;
                t
            }
            None => Instant::now(),
        };
        if sent >= plan.end {
            break;
        }
        let outcome = client
            .call_with_timeout(&plan.procedure, &plan.args, plan.timeout)
            .await;
        let measured = sent >= plan.measure_from;
        match outcome {
            Ok(reply) if reply == plan.args => {
                plan.progress.add(0, 1);
                if measured {
                    result.ok += 1;
                    result.latency.record(sent.elapsed());
                }
            }
            outcome => {
                plan.progress.error();
                let kind = match &outcome {
                    Ok(_) => "wrong_result".to_owned(),
                    Err(e) => call_error_kind(e),
                };
                if measured {
                    *result.errors.entry(kind).or_default() += 1;
                }
                if matches!(client.state(), ConnectionState::Closed { .. }) {
                    // The session is over: every later call would fail at once.
                    break;
                }
            }
        }
        if let (Some(t), Some((_, period))) = (due.as_mut(), schedule) {
            *t += period;
        }
    }
    result
}

/// Closes sessions, all at once.
pub async fn close_all(clients: impl IntoIterator<Item = Client>) {
    let mut closing = JoinSet::new();
    for c in clients {
        closing.spawn(async move { c.close().await });
    }
    while closing.join_next().await.is_some() {}
}
