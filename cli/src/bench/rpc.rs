//! `bench rpc`: callers keep calls in flight to echo providers.
//!
//! Without `--rate`, each caller session runs `--in-flight` slots; a slot calls, waits for
//! the reply and calls again at once: the most the gateway (and this process) can do.
//!
//! With `--rate`, the calls follow a fixed schedule instead, the total rate shared evenly
//! among the callers, each call sent whether or not earlier ones were answered, with at most
//! `--max-in-flight` in flight per caller. A call is timed from when it went out, or, when it went
//! out late because the caller was at its in-flight limit (with the client library, also
//! when it was behind its schedule), from when it was due: a gateway that falls behind shows
//! in the latency instead of quietly lowering the rate. The timer's own lateness is not
//! counted: the lean engine wakes when the next call is due, to the microsecond; the client
//! library's timer ticks once a millisecond.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use futures_util::stream::{FuturesUnordered, StreamExt};
use meshgate_client::{CallError, Client, ConnectionState, ProcedureError};
use serde_json::Value;
use tokio::task::JoinSet;

use super::lean::{Datagrams, Spin};
use super::report::{counts, note, per_second, Latency, Progress, Summary};
use super::{call_error_kind, connect, msgpack_bin, run_tag, Common, Engine};
use crate::args::parse_duration;

mod lean;

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
    /// Calls in flight per caller (without --rate).
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// With --rate: calls in flight per caller at most. The schedule sends calls in bursts
    /// (the timer ticks once a millisecond), so keep it well above rate × latency / callers.
    #[arg(long, default_value_t = 1000)]
    pub max_in_flight: usize,
    /// Bytes of each call's argument (one MessagePack bin value, echoed back).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Calls per second in all, on a fixed schedule whatever the replies do; without it each
    /// of the calls in flight is made again as soon as its reply is in.
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long a call waits for its reply.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub call_timeout: Duration,
    /// Connect the providers to this gateway instead of --server: with two gateways of a
    /// mesh, every call crosses a peer link. The run starts once the providers' registrations
    /// are in effect across the mesh.
    #[arg(long)]
    pub provider_server: Option<SocketAddr>,
    /// What makes the load.
    #[arg(long, value_enum, default_value_t = Engine::Lean)]
    pub engine: Engine,
    #[command(flatten)]
    pub datagrams: Datagrams,
    #[command(flatten)]
    pub spin: Spin,
    /// The gateway's process id: its CPU time over the measured window is reported, per call
    /// (from /proc; lean engine).
    #[arg(long, value_name = "PID")]
    pub gateway_pid: Option<u32>,
}

/// What the callers (or one slot) counted in the measured window.
#[derive(Default)]
struct Tally {
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
    if a.callers == 0 || a.providers == 0 || a.in_flight == 0 || a.max_in_flight == 0 {
        return Err(
            "--callers, --providers, --in-flight and --max-in-flight must be at least 1".into(),
        );
    }
    if a.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be a positive number of calls per second".into());
    }
    if a.engine == Engine::Lean {
        let progress = Progress::new(&["calls"], a.common.warmup);
        let _line = progress.show();
        return tokio::task::block_in_place(|| lean::run(a, progress));
    }
    if a.gateway_pid.is_some() {
        return Err("--gateway-pid needs the lean engine".into());
    }
    let base = a.common.client_config()?;
    let procedure = format!("bench.{}.echo", run_tag());
    let provider_config = meshgate_client::ClientConfig {
        server: a.provider_server.unwrap_or(base.server),
        ..base.clone()
    };
    let mut providers = Vec::with_capacity(a.providers);
    for _ in 0..a.providers {
        let p = connect(&provider_config)
            .await
            .map_err(|e| format!("provider: {e}"))?;
        p.register(
            &procedure,
            |args| async move { Ok::<_, ProcedureError>(args) },
        )
        .await
        .map_err(|e| format!("provider: {e}"))?;
        if a.provider_server.is_some() {
            p.flush_mesh()
                .await
                .map_err(|e| format!("provider: waiting for the mesh: {e}"))?;
        }
        providers.push(p);
    }
    let mut callers = Vec::with_capacity(a.callers);
    for _ in 0..a.callers {
        callers.push(connect(&base).await.map_err(|e| format!("caller: {e}"))?);
    }
    announce(a);

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
    let line = progress.show();
    let mut tasks = JoinSet::new();
    for caller in &callers {
        match a.rate {
            Some(rate) => {
                let per_caller = rate / a.callers as f64;
                tasks.spawn(paced(
                    caller.clone(),
                    plan.clone(),
                    per_caller,
                    a.max_in_flight,
                ));
            }
            None => {
                for _ in 0..a.in_flight {
                    tasks.spawn(slot(caller.clone(), plan.clone()));
                }
            }
        }
    }
    let mut total = Tally::default();
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

    Ok(summary(a, &total))
}

/// The figures both engines report.
fn summary(a: &RpcArgs, t: &Tally) -> Summary {
    let errors: u64 = t.errors.values().sum();
    let (slots_key, slots) = match a.rate {
        Some(_) => ("max_in_flight", a.max_in_flight),
        None => ("in_flight", a.in_flight),
    };
    let mut s = Summary::new("rpc", describe(a));
    let engine = a
        .engine
        .to_possible_value()
        .map(|v| v.get_name().to_owned());
    s.set("engine", engine.unwrap_or_default())
        .set("callers", a.callers)
        .set("providers", a.providers)
        .set(slots_key, slots)
        .set("payload_bytes", a.payload)
        .set("rate_target", a.rate.map_or(Value::Null, Value::from))
        .set("duration_s", a.common.duration.as_secs_f64())
        .set("calls", t.ok)
        .set("calls_per_s", per_second(t.ok, a.common.duration))
        .set("errors", errors)
        .set("errors_by_code", counts(&t.errors))
        .set("latency_us", t.latency.summary_us());
    s
}

/// Says on stderr what the run does, once its sessions are up.
fn announce(a: &RpcArgs) {
    note(&format!(
        "{}, {} warmup + {} measured",
        describe(a),
        humantime::format_duration(a.common.warmup),
        humantime::format_duration(a.common.duration),
    ));
}

/// What the run does, in a line.
fn describe(a: &RpcArgs) -> String {
    let load = match a.rate {
        Some(rate) => format!(
            "{} callers paced at {rate} calls/s in all (at most {} in flight each)",
            a.callers, a.max_in_flight
        ),
        None => format!("{} callers x {} in flight", a.callers, a.in_flight),
    };
    let across = match a.provider_server {
        Some(addr) => format!(" on {addr} (across the mesh)"),
        None => String::new(),
    };
    let engine = match a.engine {
        Engine::Lean => "lean engine",
        Engine::Library => "client library",
    };
    format!(
        "rpc: {load}, {} providers{across}, {}-byte payload, {engine}",
        a.providers, a.payload
    )
}

/// One call slot: calls until the end of the run, counting what falls in the measured window.
async fn slot(client: Client, plan: Arc<Plan>) -> Tally {
    let mut result = Tally::default();
    loop {
        let sent = Instant::now();
        if sent >= plan.end {
            break;
        }
        let outcome = client
            .call_with_timeout(&plan.procedure, &plan.args, plan.timeout)
            .await;
        plan.count(&mut result, sent, outcome);
        if matches!(client.state(), ConnectionState::Closed { .. }) {
            // The session is over: every later call would fail at once.
            break;
        }
    }
    result
}

/// One caller on a schedule of `rate` calls per second, with at most `max_in_flight` at once.
/// One task sends the calls and collects the replies, so a call costs no task of its own.
async fn paced(client: Client, plan: Arc<Plan>, rate: f64, max_in_flight: usize) -> Tally {
    let mut result = Tally::default();
    let mut in_flight = FuturesUnordered::new();
    let call = |sent: Instant| {
        let (client, plan) = (&client, &plan);
        async move {
            let outcome = client
                .call_with_timeout(&plan.procedure, &plan.args, plan.timeout)
                .await;
            (sent, outcome)
        }
    };
    let start = Instant::now();
    let mut issued = 0u64;
    // When the pacer last woke on time: calls due before it are timed from it.
    let mut woke = start;
    loop {
        let now = Instant::now();
        if now >= plan.end || matches!(client.state(), ConnectionState::Closed { .. }) {
            break;
        }
        let due = (now.duration_since(start).as_secs_f64() * rate) as u64;
        while issued < due && in_flight.len() < max_in_flight {
            let scheduled = start + Duration::from_secs_f64(issued as f64 / rate);
            issued += 1;
            in_flight.push(call(scheduled.max(woke)));
        }
        // At the in-flight limit, only a reply lets the next call go.
        let next =
            (issued >= due).then(|| start + Duration::from_secs_f64((issued + 1) as f64 / rate));
        tokio::select! {
            biased;
            Some((sent, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                plan.count(&mut result, sent, outcome);
            }
            () = sleep_until(next) => woke = Instant::now(),
        }
    }
    while let Some((sent, outcome)) = in_flight.next().await {
        plan.count(&mut result, sent, outcome);
    }
    result
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Plan {
    /// Counts one call's outcome, if it was sent in the measured window.
    fn count(&self, result: &mut Tally, sent: Instant, outcome: Result<Vec<u8>, CallError>) {
        let measured = sent >= self.measure_from;
        match outcome {
            Ok(reply) if reply == self.args => {
                self.progress.add(0, 1);
                if measured {
                    result.ok += 1;
                    result.latency.record(sent.elapsed());
                }
            }
            outcome => {
                self.progress.error();
                if measured {
                    let kind = match &outcome {
                        Ok(_) => "wrong_result".to_owned(),
                        Err(e) => call_error_kind(e),
                    };
                    *result.errors.entry(kind).or_default() += 1;
                }
            }
        }
    }
}

/// Closes sessions, all at once.
pub async fn close_all(clients: impl IntoIterator<Item = Client>) {
    let mut closing = JoinSet::new();
    for c in clients {
        closing.spawn(async move { c.close().await });
    }
    while closing.join_next().await.is_some() {}
}
