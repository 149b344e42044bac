//! The health and metrics endpoint (PROTOCOL.md section 8): a small HTTP/1.1 server on its own
//! thread, away from the shard cores. `/metrics` asks every shard for a report and renders the
//! Prometheus text format, gateway-wide and per shard.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_shard::metrics::{CallOutcome, DropReason, Metrics};
use meshgate_shard::wire::Reason;

/// What one shard reports for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ShardReport {
    pub shard: u16,
    pub metrics: Metrics,
    /// Connections in the QUIC handshake or waiting for CONNECT.
    pub handshakes: u64,
    /// Mesh peer connections held.
    pub peers: u64,
    /// New connections refused at the QUIC level (over `--max-handshakes`).
    pub refused_handshakes: u64,
}

/// Reads one figure off a shard's report.
type Figure<'a> = dyn Fn(&ShardReport) -> u64 + 'a;
type Getter = Box<Figure<'static>>;

/// Where the endpoint gets its answers.
pub trait HealthSource: Send + Sync + 'static {
    /// Whether every shard is serving.
    fn ready(&self) -> bool;
    fn shards(&self) -> usize;
    /// One report per shard that answered in time.
    fn reports(&self) -> Vec<ShardReport>;
}

/// Binds the endpoint; the caller reports a bind error (port in use) and exits.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves requests until `stop` is set. Each connection gets one response and is closed.
pub fn serve(listener: TcpListener, source: Arc<dyn HealthSource>, stop: Arc<AtomicBool>) {
    let started = Instant::now();
    if let Err(e) = listener.set_nonblocking(true) {
        log::error!("health endpoint: {e}");
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, &*source, started) {
                    log::debug!("health endpoint: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_readable(&listener, 250),
            Err(e) => {
                log::warn!("health endpoint: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Waits up to `timeout_ms` for a connection, so that the stop flag is checked a few times a
/// second without spinning.
fn wait_readable(listener: &TcpListener, timeout_ms: i32) {
    use std::os::fd::AsRawFd;
    let mut fds = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fds, 1, timeout_ms) };
}

fn answer(
    mut stream: TcpStream,
    source: &dyn HealthSource,
    started: Instant,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let line = request
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let (status, content_type, body) = route(method, path, source, started);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if method != b"HEAD" {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

fn route(
    method: &[u8],
    path: &[u8],
    source: &dyn HealthSource,
    started: Instant,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != b"GET" && method != b"HEAD" {
        return (
            "405 Method Not Allowed",
            TEXT,
            "Method not allowed\n".into(),
        );
    }
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    match path {
        b"/health" => {
            let body = format!(
                "{{\"status\":\"healthy\",\"ready\":{},\"uptime\":{},\"shards\":{}}}",
                source.ready(),
                started.elapsed().as_secs(),
                source.shards()
            );
            ("200 OK", "application/json", body)
        }
        b"/ready" if source.ready() => ("200 OK", TEXT, "Ready".into()),
        b"/ready" => ("503 Service Unavailable", TEXT, "Not ready".into()),
        b"/live" => ("200 OK", TEXT, "Live".into()),
        b"/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(&source.reports(), resident_memory_bytes()),
        ),
        _ => ("404 Not Found", TEXT, "Not found\n".into()),
    }
}

/// The process's resident memory, from `/proc/self/statm`.
pub fn resident_memory_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Renders the Prometheus text format: each metric gateway-wide (no `shard` label) and per
/// shard (label `shard`).
pub fn render(reports: &[ShardReport], resident: u64) -> String {
    let mut out = String::with_capacity(8192);
    let gauge = |out: &mut String, name: &str, help: &str, f: &dyn Fn(&ShardReport) -> u64| {
        series(
            out,
            name,
            help,
            "gauge",
            reports,
            &[("", &|r: &ShardReport| f(r))],
        );
    };
    gauge(
        &mut out,
        "meshgate_clients",
        "Sessions past CONNECT.",
        &|r| r.metrics.clients,
    );
    gauge(
        &mut out,
        "meshgate_handshakes",
        "Connections in the handshake or waiting for CONNECT.",
        &|r| r.handshakes,
    );
    gauge(
        &mut out,
        "meshgate_subscriptions",
        "Session-pattern pairs.",
        &|r| r.metrics.subscriptions,
    );
    gauge(
        &mut out,
        "meshgate_registrations",
        "Session-procedure pairs.",
        &|r| r.metrics.registrations,
    );
    gauge(
        &mut out,
        "meshgate_pending_calls",
        "Calls in flight.",
        &|r| r.metrics.pending_calls,
    );
    gauge(&mut out, "meshgate_peers", "Mesh peer connections.", &|r| {
        r.peers
    });
    gauge(
        &mut out,
        "meshgate_output_bytes",
        "Bytes queued to sessions.",
        &|r| r.metrics.output_bytes,
    );

    let refused: Vec<(String, Getter)> = [
        Reason::RealmMismatch,
        Reason::Unauthorized,
        Reason::MaxClientsReached,
    ]
    .into_iter()
    .map(|reason| {
        let f: Getter = Box::new(move |r| r.metrics.counters.refused_of(reason));
        (format!("reason=\"{}\"", reason.as_str()), f)
    })
    .collect();
    labelled(
        &mut out,
        "meshgate_clients_refused_total",
        "Clients refused admission.",
        reports,
        &refused,
    );

    let closed: Vec<(String, Getter)> = Reason::ALL
        .into_iter()
        .enumerate()
        .map(|(i, reason)| {
            let f: Getter = Box::new(move |r| r.metrics.counters.sessions_closed[i]);
            (format!("reason=\"{}\"", reason.as_str()), f)
        })
        .collect();
    labelled(
        &mut out,
        "meshgate_sessions_closed_total",
        "Sessions ended, by reason.",
        reports,
        &closed,
    );

    let calls: Vec<(String, Getter)> = CallOutcome::ALL
        .into_iter()
        .map(|outcome| {
            let f: Getter = Box::new(move |r| r.metrics.counters.calls_of(outcome));
            (format!("outcome=\"{}\"", outcome.as_str()), f)
        })
        .collect();
    labelled(
        &mut out,
        "meshgate_calls_total",
        "Calls ended, by outcome.",
        reports,
        &calls,
    );

    let dropped: Vec<(String, Getter)> = DropReason::ALL
        .into_iter()
        .map(|reason| {
            let f: Getter = Box::new(move |r| r.metrics.counters.dropped_of(reason));
            (format!("reason=\"{}\"", reason.as_str()), f)
        })
        .collect();
    labelled(
        &mut out,
        "meshgate_dropped_total",
        "Messages not delivered, by reason.",
        reports,
        &dropped,
    );

    let counter = |out: &mut String, name: &str, help: &str, f: &dyn Fn(&ShardReport) -> u64| {
        series(
            out,
            name,
            help,
            "counter",
            reports,
            &[("", &|r: &ShardReport| f(r))],
        );
    };
    counter(
        &mut out,
        "meshgate_registrations_expired_total",
        "Registrations removed by expiry.",
        &|r| r.metrics.counters.registrations_expired,
    );
    counter(
        &mut out,
        "meshgate_late_replies_total",
        "REPLYs for calls no longer pending.",
        &|r| r.metrics.counters.late_replies,
    );
    counter(
        &mut out,
        "meshgate_publishes_total",
        "PUBLISH frames accepted.",
        &|r| r.metrics.counters.publishes,
    );
    counter(
        &mut out,
        "meshgate_deliveries_total",
        "PUBLISH frames delivered to subscribers.",
        &|r| r.metrics.counters.deliveries,
    );
    counter(
        &mut out,
        "meshgate_peers_evicted_total",
        "Mesh peer connections evicted.",
        &|r| r.metrics.counters.peers_evicted,
    );
    counter(
        &mut out,
        "meshgate_handshakes_refused_total",
        "Connections refused at the QUIC level.",
        &|r| r.refused_handshakes,
    );
    counter(
        &mut out,
        "meshgate_shard_messages_total",
        "Messages sent between shards.",
        &|r| r.metrics.counters.shard_messages_out,
    );

    let _ = writeln!(
        out,
        "# HELP meshgate_resident_memory_bytes Resident memory of the gateway process."
    );
    let _ = writeln!(out, "# TYPE meshgate_resident_memory_bytes gauge");
    let _ = writeln!(out, "meshgate_resident_memory_bytes {resident}");
    let _ = writeln!(out, "# HELP meshgate_shards Shards reporting.");
    let _ = writeln!(out, "# TYPE meshgate_shards gauge");
    let _ = writeln!(out, "meshgate_shards {}", reports.len());
    out
}

fn series(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    reports: &[ShardReport],
    labels: &[(&str, &Figure<'_>)],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (label, f) in labels {
        let total: u64 = reports.iter().map(f).sum();
        if label.is_empty() {
            let _ = writeln!(out, "{name} {total}");
        } else {
            let _ = writeln!(out, "{name}{{{label}}} {total}");
        }
        for r in reports {
            let sep = if label.is_empty() { "" } else { "," };
            let _ = writeln!(out, "{name}{{{label}{sep}shard=\"{}\"}} {}", r.shard, f(r));
        }
    }
}

fn labelled(
    out: &mut String,
    name: &str,
    help: &str,
    reports: &[ShardReport],
    labels: &[(String, Getter)],
) {
    let refs: Vec<(&str, &Figure<'_>)> = labels.iter().map(|(l, f)| (l.as_str(), &**f)).collect();
    series(out, name, help, "counter", reports, &refs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_rendered_gateway_wide_and_per_shard() {
        let mut a = ShardReport {
            shard: 0,
            ..Default::default()
        };
        a.metrics.clients = 3;
        a.metrics.counters.refused(Reason::MaxClientsReached);
        let mut b = ShardReport {
            shard: 1,
            ..Default::default()
        };
        b.metrics.clients = 4;
        let text = render(&[a, b], 1234);
        assert!(text.contains("\nmeshgate_clients 7\n"));
        assert!(text.contains("\nmeshgate_clients{shard=\"0\"} 3\n"));
        assert!(text.contains("\nmeshgate_clients{shard=\"1\"} 4\n"));
        assert!(text.contains("meshgate_clients_refused_total{reason=\"max_clients_reached\"} 1\n"));
        assert!(text.contains(
            "meshgate_clients_refused_total{reason=\"max_clients_reached\",shard=\"0\"} 1\n"
        ));
        assert!(text.contains("meshgate_calls_total{outcome=\"caller_gone\"} 0\n"));
        assert!(text.contains("meshgate_resident_memory_bytes 1234\n"));
        for name in [
            "meshgate_clients",
            "meshgate_clients_refused_total",
            "meshgate_handshakes",
            "meshgate_subscriptions",
            "meshgate_registrations",
            "meshgate_registrations_expired_total",
            "meshgate_pending_calls",
            "meshgate_calls_total",
            "meshgate_late_replies_total",
            "meshgate_publishes_total",
            "meshgate_deliveries_total",
            "meshgate_dropped_total",
            "meshgate_peers",
            "meshgate_peers_evicted_total",
            "meshgate_resident_memory_bytes",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }

    #[test]
    fn resident_memory_is_read_from_proc() {
        assert!(resident_memory_bytes() > 0);
    }
}
