//! The load scenarios of `meshgate-cli bench`, each run as a process against a real gateway
//! (`meshgate serve --shards 2` on ports the kernel picks), with its `--json` summary checked.
//! What is asserted is behaviour (no errors, no losses, gauges back to 0, refusals counted),
//! never a rate or a latency.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::{wait_for_exit, Gateway};

#[path = "../../tests/support/mod.rs"]
mod support;

/// How long a gateway may take to start, and a scenario to run.
const PATIENCE: Duration = Duration::from_secs(30);

/// Runs the load scenarios against a test gateway.
trait Bench {
    /// Runs `meshgate-cli bench SCENARIO ARGS --json` against this gateway; its JSON summary.
    fn bench(&self, scenario: &str, args: &[&str]) -> Value;
    /// The same, with the load generator sending to `server` (a relay to this gateway).
    fn bench_via(&self, server: SocketAddr, scenario: &str, args: &[&str]) -> Value;
}

impl Bench for Gateway {
    fn bench(&self, scenario: &str, args: &[&str]) -> Value {
        self.bench_via(self.addr, scenario, args)
    }

    fn bench_via(&self, server: SocketAddr, scenario: &str, args: &[&str]) -> Value {
        let metrics = format!("http://{}/metrics", self.health);
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshgate-cli"))
            .args(["bench", scenario])
            .args(args)
            .args(["--server", &server.to_string(), "--insecure"])
            .args(["--metrics", &metrics, "--json"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("meshgate-cli bench starts");
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let Some(status) = wait_for_exit(&mut child, PATIENCE) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bench {scenario} ran past {PATIENCE:?}; its stderr:\n{}",
                err.join().unwrap()
            );
        };
        let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
        assert!(
            status.success(),
            "bench {scenario} failed ({status}):\n{stderr}\ngateway log:\n{}",
            self.log()
        );
        eprintln!("bench {scenario}: {stdout}");
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("bench {scenario} printed no JSON summary ({e}): {stdout:?}\n{stderr}")
        })
    }
}

fn u(v: &Value, path: &str) -> u64 {
    let mut at = v;
    for key in path.split('/') {
        at = &at[key];
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("{path} is not a count in {v}"))
}

#[test]
fn rpc_makes_calls_without_errors_unpaced_and_paced_on_either_engine() {
    let gateway = Gateway::start(&[]);
    let pid = gateway.pid().to_string();
    for engine in ["lean", "library"] {
        let s = gateway.bench(
            "rpc",
            &[
                "--engine",
                engine,
                "--duration",
                "2s",
                "--warmup",
                "300ms",
                "--callers",
                "2",
                "--in-flight",
                "4",
                "--providers",
                "2",
            ],
        );
        assert!(u(&s, "calls") > 0, "{engine}: {s}");
        assert_eq!(u(&s, "errors"), 0, "{engine}: {s}");
        assert_eq!(u(&s, "latency_us/count"), u(&s, "calls"), "{engine}: {s}");
        assert!(s["latency_us"]["p99"].as_f64().is_some(), "{engine}: {s}");

        let mut args = vec![
            "--engine",
            engine,
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--callers",
            "2",
            "--rate",
            "1000",
        ];
        if engine == "lean" {
            args.extend(["--gateway-pid", pid.as_str()]);
        }
        let s = gateway.bench("rpc", &args);
        assert!(u(&s, "calls") > 0, "{engine}: {s}");
        assert_eq!(u(&s, "errors"), 0, "{engine}: {s}");
        assert_eq!(s["rate_target"], 1000.0, "{engine}: {s}");
        if engine == "lean" {
            // Both sides' CPU over the window, per call (/proc counts in ticks: maybe 0).
            for key in [
                "load_cpu_per_call_us",
                "gateway_cpu_per_call_us",
                "gateway_cpu_busy",
            ] {
                assert!(s[key].as_f64().is_some_and(|x| x >= 0.0), "{key}: {s}");
            }
            // Paced, the engine is idle between calls: it polls (--spin, 200 us by
            // default) before each sleep, and says how much of the window that took.
            let spinning = s["load_cpu_spinning"].as_f64().expect("load_cpu_spinning");
            assert!(spinning > 0.0 && spinning < 1.0, "{s}");
            args.extend(["--spin", "0s"]);
            let s = gateway.bench("rpc", &args);
            assert_eq!(u(&s, "errors"), 0, "--spin 0s: {s}");
            assert_eq!(
                s["load_cpu_spinning"], 0.0,
                "--spin 0s polls not at all: {s}"
            );
        }
    }
}

#[test]
fn pubsub_delivers_every_message_to_every_subscriber_below_the_slow_consumer_bound() {
    let gateway = Gateway::start(&[]);
    let pid = gateway.pid().to_string();
    for (engine, pattern) in [
        ("lean", "exact"),
        ("lean", "wildcard"),
        ("library", "exact"),
        ("library", "wildcard"),
    ] {
        let mut args = vec![
            "--engine",
            engine,
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--publishers",
            "2",
            "--subscribers",
            "3",
            "--rate",
            "2000",
            "--pattern",
            pattern,
        ];
        if engine == "lean" {
            args.extend(["--gateway-pid", pid.as_str()]);
        }
        let s = gateway.bench("pubsub", &args);
        assert!(u(&s, "published") > 0, "{s}");
        assert_eq!(u(&s, "losses"), 0, "{s}");
        assert_eq!(u(&s, "out_of_order"), 0, "{s}");
        assert_eq!(
            u(&s, "received_deliveries"),
            3 * u(&s, "published_total"),
            "{s}"
        );
        assert!(u(&s, "latency_us/count") > 0, "{s}");
        if engine == "lean" {
            // No datagram over the --pmtud-max both sides probe for by default.
            let largest = u(&s, "largest_datagram_received");
            assert!(largest > 0 && largest <= 8952, "{s}");
            // Both sides' CPU over the window, per delivery (/proc counts in ticks: maybe 0).
            for key in ["load_cpu_per_delivery_us", "gateway_cpu_per_delivery_us"] {
                assert!(s[key].as_f64().is_some_and(|x| x >= 0.0), "{key}: {s}");
            }
        }
    }
}

#[test]
fn a_gateway_and_load_of_jumbo_datagrams_deliver_every_message_and_call() {
    // Bursts of 2,000 messages a tick fill datagrams of several kilobytes each way; a datagram
    // cut to a smaller buffer anywhere would fail authentication and lose its messages. No
    // discovery: both sides send jumbo datagrams from the start.
    let gateway = Gateway::start(&["--max-udp-payload", "8952", "--pmtud-max", "0"]);
    let s = gateway.bench(
        "pubsub",
        &[
            "--max-udp-payload",
            "8952",
            "--pmtud-max",
            "0",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--publishers",
            "1",
            "--subscribers",
            "2",
            "--rate",
            "20000",
            "--tick",
            "100ms",
        ],
    );
    assert!(u(&s, "published") > 0, "{s}");
    assert_eq!(u(&s, "losses"), 0, "{s}");
    assert_eq!(
        u(&s, "received_deliveries"),
        2 * u(&s, "published_total"),
        "{s}"
    );
    let largest = u(&s, "largest_datagram_received");
    assert!(
        largest > 1500 && largest <= 8952,
        "the gateway sent jumbo datagrams, none over the limit: {s}"
    );
    // The client library's sessions (their own, smaller limit) are served as well.
    let s = gateway.bench(
        "pubsub",
        &[
            "--engine",
            "library",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--rate",
            "2000",
        ],
    );
    assert_eq!(u(&s, "losses"), 0, "{s}");
    let s = gateway.bench(
        "rpc",
        &[
            "--max-udp-payload",
            "8952",
            "--pmtud-max",
            "0",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--callers",
            "2",
            "--in-flight",
            "64",
            "--payload",
            "1024",
        ],
    );
    assert!(u(&s, "calls") > 0, "{s}");
    assert_eq!(u(&s, "errors"), 0, "{s}");
    let largest = u(&s, "largest_datagram_received");
    assert!(largest > 1500 && largest <= 8952, "{s}");
}

/// A UDP relay to `to` for one client (the load generator's one socket) that drops every
/// datagram over `max` bytes, either way: a path narrower than the probes. It runs until the
/// test process ends.
fn narrow_path(to: SocketAddr, max: usize) -> SocketAddr {
    let front = UdpSocket::bind("127.0.0.1:0").expect("the relay's client side");
    let back = UdpSocket::bind("127.0.0.1:0").expect("the relay's gateway side");
    let addr = front.local_addr().expect("bound");
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let (front2, back2, client2) = (
        front.try_clone().unwrap(),
        back.try_clone().unwrap(),
        client.clone(),
    );
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = front2.recv_from(&mut buf) {
            *client2.lock().unwrap() = Some(from);
            if n <= max {
                let _ = back2.send_to(&buf[..n], to);
            }
        }
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = back.recv(&mut buf) {
            let to_client = *client.lock().unwrap();
            if let (true, Some(c)) = (n <= max, to_client) {
                let _ = front.send_to(&buf[..n], c);
            }
        }
    });
    addr
}

#[test]
fn path_mtu_discovery_sends_jumbo_datagrams_where_the_path_and_client_take_them_and_no_others() {
    // Both sides discover by default, once a connection fills a packet: on the loopback the
    // gateway's probe of --pmtud-max arrives.
    let gateway = Gateway::start(&[]);
    let burst = [
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--publishers",
        "1",
        "--subscribers",
        "2",
        "--rate",
        "20000",
        "--tick",
        "100ms",
    ];
    let delivered_all = |s: &Value| {
        assert!(u(s, "published") > 0, "{s}");
        assert_eq!(u(s, "losses"), 0, "{s}");
        assert_eq!(
            u(s, "received_deliveries"),
            2 * u(s, "published_total"),
            "{s}"
        );
    };
    let s = gateway.bench("pubsub", &burst);
    delivered_all(&s);
    assert_eq!(u(&s, "largest_datagram_received"), 8952, "{s}");
    // A client that takes 3,000 bytes at most is probed no further.
    let s = gateway.bench("pubsub", &[&burst[..], &["--pmtud-max", "3000"]].concat());
    delivered_all(&s);
    assert_eq!(u(&s, "largest_datagram_received"), 3000, "{s}");
    // A client without discovery tells the gateway its 1,350 bytes, and is sent no more.
    let s = gateway.bench("pubsub", &[&burst[..], &["--pmtud-max", "0"]].concat());
    delivered_all(&s);
    assert!(u(&s, "largest_datagram_received") <= 1350, "{s}");
    // A path that carries 1,400 bytes at most loses every larger probe, and nothing else: the
    // packets of the messages are never larger than a probe that came through, so every
    // message arrives. Bursts every 10 ms let the lost probes be found lost quickly, and the
    // search reaches a size over the 1,200 bytes sent before it within the run.
    let narrow = narrow_path(gateway.addr, 1400);
    let mut fast = burst.to_vec();
    fast[1] = "3s";
    fast[11] = "10ms";
    let s = gateway.bench_via(narrow, "pubsub", &fast);
    delivered_all(&s);
    let largest = u(&s, "largest_datagram_received");
    assert!(
        largest > 1200,
        "no probe larger than 1,200 bytes came through the narrow path: {s}"
    );
}

#[test]
fn a_publisher_paced_in_ticks_publishes_at_the_rate_and_loses_nothing() {
    let gateway = Gateway::start(&[]);
    for engine in ["lean", "library"] {
        let s = gateway.bench(
            "pubsub",
            &[
                "--engine",
                engine,
                "--duration",
                "1s",
                "--warmup",
                "200ms",
                "--subscribers",
                "2",
                "--rate",
                "5000",
                "--tick",
                "20ms",
            ],
        );
        assert_eq!(s["tick_us"], 20_000, "{engine}: {s}");
        // A burst of 100 at the start of each 20 ms tick: over 1.2 s, 6,000 at most.
        let total = u(&s, "published_total");
        assert!((5_000..=6_000).contains(&total), "{engine}: {s}");
        assert_eq!(u(&s, "losses"), 0, "{engine}: {s}");
        assert_eq!(u(&s, "received_deliveries"), 2 * total, "{engine}: {s}");
    }
}

#[test]
fn churn_leaves_the_gauges_at_zero_and_draws_its_chart() {
    let gateway = Gateway::start(&[]);
    let dir = std::env::temp_dir().join(format!("meshgate-bench-churn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (svg, csv) = (dir.join("churn.svg"), dir.join("churn.csv"));
    let s = gateway.bench(
        "churn",
        &[
            "--cycles",
            "50",
            "--rate",
            "100",
            "--sample-every",
            "200ms",
            "--svg",
            svg.to_str().unwrap(),
            "--csv",
            csv.to_str().unwrap(),
        ],
    );
    assert_eq!(u(&s, "cycles"), 50, "{s}");
    assert_eq!(u(&s, "errors"), 0, "{s}");
    assert_eq!(s["gauges_zero"], true, "{s}");
    for gauge in ["clients", "subscriptions", "registrations", "pending_calls"] {
        assert_eq!(u(&s, &format!("end_gauges/{gauge}")), 0, "{s}");
    }
    for figure in ["start", "after_10pct", "peak", "end"] {
        assert!(u(&s, &format!("memory_bytes/{figure}")) > 0, "{s}");
    }
    let chart = std::fs::read_to_string(&svg).expect("the SVG file is written");
    assert!(chart.starts_with("<svg"), "{chart}");
    assert!(chart.contains("<polyline"), "{chart}");
    let samples = std::fs::read_to_string(&csv).expect("the CSV file is written");
    assert!(samples.starts_with("t_s,resident_bytes,clients,cycles\n"));
    assert_eq!(samples.lines().count() as u64, u(&s, "samples") + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn caller_death_brings_pending_calls_back_at_once() {
    let gateway = Gateway::start(&[]);
    let s = gateway.bench(
        "caller-death",
        &["--callers", "2", "--calls", "100", "--call-timeout", "30s"],
    );
    assert_eq!(u(&s, "calls_in_flight"), 200, "{s}");
    assert_eq!(u(&s, "pending_calls/before"), 200, "{s}");
    assert_eq!(u(&s, "pending_calls/after"), 0, "{s}");
    assert_eq!(s["back_before_timeout"], true, "{s}");
    assert_eq!(u(&s, "caller_gone"), 200, "{s}");
    assert_eq!(u(&s, "provider_cancelled"), 200, "{s}");
}

#[test]
fn flood_counts_the_sessions_refused_past_max_clients() {
    let gateway = Gateway::start(&["--max-clients", "10"]);
    let s = gateway.bench(
        "flood",
        &[
            "--clients",
            "40",
            "--probes",
            "2",
            "--concurrency",
            "8",
            "--warmup",
            "300ms",
        ],
    );
    assert_eq!(u(&s, "attempts"), 40, "{s}");
    assert_eq!(u(&s, "admitted"), 8, "{s}");
    assert_eq!(u(&s, "refused_max_clients"), 32, "{s}");
    assert_eq!(u(&s, "gateway_refused_max_clients"), 32, "{s}");
    assert_eq!(u(&s, "probe_ping_errors"), 0, "{s}");
    assert!(u(&s, "probe_ping_us/before_flood/count") > 0, "{s}");
}

#[test]
fn handshake_on_the_lean_engine_closes_every_session_it_made() {
    let gateway = Gateway::start(&[]);
    let pid = gateway.pid().to_string();
    let s = gateway.bench(
        "handshake",
        &[
            "--concurrency",
            "4",
            "--duration",
            "1s",
            "--gateway-pid",
            &pid,
        ],
    );
    assert_eq!(s["engine"], "lean", "{s}");
    assert!(u(&s, "connections") > 0, "{s}");
    assert_eq!(u(&s, "refused"), 0, "{s}");
    assert!(s["gateway_cpu_per_connection_us"].as_f64().is_some(), "{s}");
    // Each session was closed once admitted: the gateway holds none of them afterwards.
    let (status, body) = support::http_get(gateway.health, "/metrics").expect("/metrics");
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut clients = support::Metrics::parse(&body).get("meshgate_clients");
    while clients != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let (_, body) = support::http_get(gateway.health, "/metrics").expect("/metrics");
        clients = support::Metrics::parse(&body).get("meshgate_clients");
    }
    assert_eq!(clients, 0, "sessions left on the gateway");
}

#[test]
fn handshake_holding_sessions_stops_at_the_full_client_table() {
    let gateway = Gateway::start(&["--max-clients", "20"]);
    let s = gateway.bench(
        "handshake",
        &["--hold", "--concurrency", "4", "--duration", "10s"],
    );
    // Each shard admits its share of the table, and the run stops when the first one is
    // full: at most 20 sessions, and usually all of them.
    let connections = u(&s, "connections");
    assert!(connections > 0 && connections <= 20, "{s}");
    assert_eq!(u(&s, "held"), connections, "{s}");
    assert!(u(&s, "refusals_by_kind/max_clients_reached") > 0, "{s}");
}

#[test]
fn slow_consumer_is_disconnected_and_its_messages_dropped() {
    let gateway = Gateway::start(&["--max-output", "65536", "--slow-consumer-timeout", "500ms"]);
    let s = gateway.bench(
        "slow-consumer",
        &[
            "--duration",
            "4s",
            "--rate",
            "5000",
            "--payload",
            "4096",
            "--max-output",
            "65536",
            "--sample-every",
            "200ms",
            // A window the traffic fills within a few milliseconds, however slow the machine:
            // the gateway's queue to the slow subscriber then only grows.
            "--slow-window",
            "262144",
        ],
    );
    assert_eq!(s["disconnected"], true, "{s}");
    assert!(u(&s, "dropped_slow_consumer") > 0, "{s}");
    // Whether the readers keep up depends on the machine's speed: not asserted.
    assert!(u(&s, "read_by_readers") > 0, "{s}");
}

#[test]
fn idle_sessions_are_counted_by_the_gateway() {
    let gateway = Gateway::start(&[]);
    let s = gateway.bench("idle", &["--clients", "50", "--settle", "300ms"]);
    assert_eq!(u(&s, "connected"), 50, "{s}");
    assert_eq!(u(&s, "gateway_clients/with_sessions"), 50, "{s}");
    assert!(s["bytes_per_idle_session"].as_f64().is_some(), "{s}");
}

#[test]
fn the_sessions_of_one_load_generator_socket_spread_over_the_shards() {
    // The lean engine's sessions share one UDP socket: a hash of the addresses would put
    // every one on the same shard. The gateway steers each datagram by its connection ID, so
    // each session lands on the shard its first Initial's (random) connection ID
    // names: all 64 on one of the 2 shards has a chance of 2^-63.
    let gateway = Gateway::start(&[]);
    let s = gateway.bench(
        "rpc",
        &[
            "--engine",
            "lean",
            "--callers",
            "32",
            "--providers",
            "32",
            "--in-flight",
            "1",
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
        ],
    );
    assert_eq!(u(&s, "errors"), 0, "{s}");
    let closed_per_shard = || {
        let (_, text) = support::http_get(gateway.health, "/metrics").expect("/metrics");
        let mut per_shard = [0u64; 2];
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("meshgate_sessions_closed_total{") else {
                continue;
            };
            for (shard, n) in per_shard.iter_mut().enumerate() {
                if rest.contains(&format!("shard=\"{shard}\"}}")) {
                    *n += line
                        .rsplit(' ')
                        .next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                }
            }
        }
        per_shard
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut per_shard = closed_per_shard();
    while per_shard.iter().sum::<u64>() < 64 {
        assert!(
            std::time::Instant::now() < deadline,
            "64 sessions were not all seen to close: {per_shard:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
        per_shard = closed_per_shard();
    }
    assert_eq!(per_shard.iter().sum::<u64>(), 64, "{per_shard:?}");
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "every session of one socket landed on one shard: {per_shard:?}"
    );
    // Every datagram reached its connection's shard: none went through another.
    let (_, text) = support::http_get(gateway.health, "/metrics").expect("/metrics");
    let metrics = support::Metrics::parse(&text);
    assert_eq!(metrics.get("meshgate_udp_datagrams_forwarded_total"), 0);
    assert!(!gateway.log().contains("not steered"), "{}", gateway.log());
}

#[test]
fn quic_echo_measures_round_trips_of_a_bare_quiche_echo() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate-cli"))
        .args([
            "quic-echo",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--json",
        ])
        .args(["--connections", "2", "--in-flight", "4"])
        // Both threads on one core this process may run on: any machine has one.
        .args(["--server-cpu", &a_core(), "--client-cpu", &a_core()])
        .output()
        .expect("meshgate-cli quic-echo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "quic-echo failed: {stderr}");
    let s: Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    assert!(u(&s, "round_trips") > 0, "{s}");
    assert_eq!(u(&s, "connections"), 2, "{s}");
    assert!(
        s["round_trips_per_s"].as_f64().is_some_and(|r| r > 0.0),
        "{s}"
    );
}

/// The first core this process may run on, from /proc/self/status ("Cpus_allowed_list: 2,5-7").
fn a_core() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("the cores this process may run on");
    let first = list.trim().split([',', '-']).next().expect("a core");
    first.to_owned()
}

#[test]
fn stalls_watches_a_busy_thread_and_counts_its_gaps_by_length() {
    let core = a_core();
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate-cli"))
        .args(["stalls", "--cores", &core, "--duration", "300ms", "--json"])
        .output()
        .expect("meshgate-cli stalls runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stalls failed: {stderr}");
    let s: Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    let (gaps, long, very_long) = (
        u(&s, "gaps"),
        u(&s, "gaps_over_1ms"),
        u(&s, "gaps_over_5ms"),
    );
    assert!(very_long <= long && long <= gaps, "{s}");
    let lost = s["lost_percent"].as_f64().expect("the time lost");
    assert!((0.0..=100.0).contains(&lost), "{s}");
    let longest = s["longest_gap_ms"].as_f64().expect("the longest gap");
    assert_eq!(longest > 0.0, gaps > 0, "{s}");
    // The one core's own figures are the whole run's.
    assert_eq!(s["cores"][&core]["gaps"], s["gaps"], "{s}");

    for (args, says) in [
        (vec!["--cores", &core, "--cores", &core], "twice"),
        (vec!["--cores", "100000"], "not one this process may run on"),
        (vec!["--duration", "0s"], "more than 0"),
        (vec!["--duration", "25h"], "at most 24h"),
        (vec!["--min-gap", "100ns"], "1us or more"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_meshgate-cli"))
            .arg("stalls")
            .args(&args)
            .output()
            .expect("meshgate-cli stalls runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} is refused");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: no summary");
    }
}

#[test]
fn scripts_scaling_sh_runs_each_shard_count_and_reports_it() {
    // The script with this build's binaries (--bin) instead of a release build. On one core
    // for the gateway and the load alike, which any machine has: the run checks the script
    // and its report, which must then give no efficiency, not figures.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bins = support::temp_file("scaling", "").with_file_name("scaling-bin");
    std::fs::create_dir_all(&bins).expect("a temporary directory");
    let _ = std::fs::remove_file(bins.join("meshgate"));
    let _ = std::fs::remove_file(bins.join("meshgate-cli"));
    std::os::unix::fs::symlink(support::gateway_bin(), bins.join("meshgate")).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_meshgate-cli"),
        bins.join("meshgate-cli"),
    )
    .unwrap();
    let out_dir = bins.with_file_name("scaling-out");
    let port = support::consecutive_free_ports(2);
    let health = port + 1;
    let core = a_core();
    let out = Command::new("bash")
        .arg(root.join("scripts/scaling.sh"))
        .args([
            "--quick",
            "--shards",
            "1 2",
            "--callers",
            "4",
            "--in-flight",
            "2",
        ])
        .args([
            "--providers",
            "2",
            "--gateway-cores",
            &format!("{core},{core}"),
        ])
        .args(["--load-cores", &format!("{core},{core}")])
        .args([
            "--port",
            &port.to_string(),
            "--health-port",
            &health.to_string(),
        ])
        .arg("--bin")
        .arg(&bins)
        .arg("--out")
        .arg(&out_dir)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scaling.sh failed:\n{stderr}");
    assert!(stderr.contains("[2/2] 2 shard(s)"), "progress: {stderr}");
    let report = std::fs::read_to_string(out_dir.join("scaling.md")).expect("the report");
    for shards in [1u64, 2] {
        let raw = std::fs::read_to_string(out_dir.join(format!("json/scaling-{shards}-1.json")))
            .expect("the raw results");
        let run: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(
            run["loads"].as_array().unwrap().len() as u64,
            shards,
            "{run}"
        );
        for load in run["loads"].as_array().unwrap() {
            assert!(u(load, "calls") > 0, "{load}");
            assert_eq!(u(load, "errors"), 0, "{load}");
        }
        let sessions: u64 = run["sessions_per_shard"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        // Each load generator's 4 callers and 2 providers, on the gateway's shards.
        assert_eq!(sessions, 6 * shards, "{run}");
        assert_eq!(
            run["shard_busy"].as_array().unwrap().len() as u64,
            shards,
            "{run}"
        );
        assert!(run["shard_messages_per_call"].as_f64().is_some(), "{run}");
        assert_eq!(u(&run, "datagrams_forwarded"), 0, "{run}");
        assert!(
            report.contains(&format!("\n| {shards} | ")),
            "a row for {shards} shard(s):\n{report}"
        );
    }
    assert!(report.contains("n/a (processes share cores)"), "{report}");
    assert!(
        report.contains("| efficiency per shard at the largest shard count ≥ 85 % | n/a | n/a |"),
        "{report}"
    );
}
