//! `bench handshake` on the lean engine ([`crate::bench::lean`]): `--concurrency` slots on
//! one thread and one socket, each connecting a session (QUIC handshake, TLS, CONNECT and the
//! gateway's answer), closing it as soon as it is admitted and connecting the next.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::cpu;
use super::super::lean::{Engine, Target, ALPN};
use super::super::report::{counts, per_second, round, Latency, Progress, Summary};
use super::HandshakeArgs;

/// How long a connection may take to be admitted before it counts as a timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(a: &HandshakeArgs, progress: Arc<Progress>) -> Result<Summary, String> {
    let c = &a.common.connection;
    let target = Target::new(c, c.server);
    let mut config = Engine::config(&target)?;
    let mut engine = Engine::new(c.server, &a.spin)?;
    let slots = engine.open(&target, a.concurrency, ALPN, false)?;
    let start = Instant::now();
    let mut began = vec![start; a.concurrency];
    let end = start + a.common.duration;
    let window = cpu::Window::start(a.gateway_pid, &a.common.metrics);
    let spun_before = engine.spun();
    let mut admitted = 0u64;
    let mut refusals: BTreeMap<String, u64> = BTreeMap::new();
    let mut latency = Latency::new();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        engine.turn(Some(end.min(now + Duration::from_millis(10))), |_, _, _| {});
        let now = Instant::now();
        for i in slots.clone() {
            let s = &engine.sessions()[i];
            let outcome = if s.is_up() {
                admitted += 1;
                latency.record(now.duration_since(began[i]));
                progress.add(0, 1);
                None
            } else if let Some(why) = s.ended() {
                Some(why.to_owned())
            } else if now.duration_since(began[i]) > CONNECT_TIMEOUT {
                Some("timeout".to_owned())
            } else {
                continue;
            };
            if let Some(kind) = outcome {
                progress.error();
                *refusals.entry(kind).or_default() += 1;
            }
            engine.reopen(i, &target, &mut config)?;
            began[i] = now;
        }
    }
    let (load_cpu, gateway_cpu) = window.spent(a.gateway_pid, &a.common.metrics);
    let spun = engine.spun().saturating_sub(spun_before);
    let elapsed = start.elapsed();
    engine.close(Duration::from_secs(1));

    let refused: u64 = refusals.values().sum();
    let per = |d: Duration| round(d.as_secs_f64() * 1e6 / admitted.max(1) as f64, 1);
    let mut s = Summary::new(
        "handshake",
        format!("handshake: {} at a time, lean engine", a.concurrency),
    );
    s.set("engine", "lean")
        .set("concurrency", a.concurrency)
        .set("hold", false)
        .set("elapsed_s", elapsed.as_secs_f64())
        .set("connections", admitted)
        .set("connections_per_s", per_second(admitted, elapsed))
        .set("held", 0)
        .set("refused", refused)
        .set("refusals_by_kind", counts(&refusals))
        .set("connect_latency_us", latency.summary_us())
        .set(
            "load_cpu_spinning",
            round(spun.as_secs_f64() / elapsed.as_secs_f64(), 3),
        )
        .set(
            "load_cpu_per_connection_us",
            per(load_cpu.saturating_sub(spun)),
        );
    if let Some(g) = gateway_cpu {
        let work = s.set_gateway_cpu(g, elapsed.as_secs_f64());
        s.set("gateway_cpu_per_connection_us", per(work));
    }
    Ok(s)
}
