//! The committed benchmark report is what `scripts/bench_report.py` makes of the raw results
//! committed beside it: the figures the README quotes can be traced to those files. The machine
//! and the commit it names come from those files too, never from the machine that runs the
//! script, so the report made again on any machine is the same.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/bench_report.py` on the raw results in `dir` with the parameters of the
/// committed run.
fn report(dir: &Path, elapsed: &str, command: &str) -> Output {
    Command::new("python3")
        .current_dir(root())
        .arg("scripts/bench_report.py")
        .arg("--dir")
        .arg(dir)
        .args([
            "--runs",
            "3",
            "--duration",
            "10",
            "--gateway-cpu",
            "0",
            "--load-cpu",
            "1",
        ])
        .args(["--churn-cycles", "100000", "--churn-rate", "1000"])
        .args([
            "--idle-clients",
            "5000",
            "--pubsub-rate",
            "150000",
            "--pubsub-tick",
            "1",
            "--fixed-payload",
            "1350",
            "--mesh-rate",
            "5000",
        ])
        .args(["--elapsed", elapsed, "--command", command])
        .output()
        .expect("python3 runs")
}

/// The report `report` printed; panics with the script's error if it failed.
fn made(out: Output) -> String {
    assert!(
        out.status.success(),
        "bench_report.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the report is UTF-8")
}

/// The rest of the report's line that starts with `prefix`.
fn line<'a>(report: &'a str, prefix: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("the report has a line starting with {prefix:?}"))
}

/// The report with its generation time left out.
fn without_date(report: &str) -> String {
    report
        .lines()
        .filter(|line| !line.starts_with("- **Date:**"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A copy of the committed raw results (`json/`) in a directory of its own, removed on drop.
struct RawCopy {
    dir: PathBuf,
}

impl RawCopy {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "meshgate-bench-report-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("json")).expect("a temporary directory");
        for entry in std::fs::read_dir(root().join("docs/bench/json")).expect("docs/bench/json") {
            let from = entry.expect("a raw result").path();
            let to = dir
                .join("json")
                .join(from.file_name().expect("a file name"));
            std::fs::copy(&from, to).expect("the raw result is copied");
        }
        RawCopy { dir }
    }

    fn json(&self, file: &str) -> PathBuf {
        self.dir.join("json").join(file)
    }
}

impl Drop for RawCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_committed_report_is_regenerated_from_its_raw_results() {
    let committed = std::fs::read_to_string(root().join("docs/bench/report.md"))
        .expect("docs/bench/report.md is committed");
    let (command, took) = line(&committed, "- **Reproduce:** `")
        .split_once("` (took ")
        .expect("the reproduce line gives the command and the time it took");
    let elapsed = took.trim_end_matches(" s).");

    let made = made(report(Path::new("docs/bench"), elapsed, command));
    assert_eq!(without_date(&made), without_date(&committed));
    for figure in [
        "770,384",
        "209,028",
        "263,653",
        "1.12 µs",
        "4.66 µs",
        "0.15 ms",
        "0.85 ms",
        "0.70 ms",
        "2,719,902",
        "0.56",
        "gateway 86 %, load generator 87 %",
        "763,518 – 788,487",
        "1.14 µs",
        "13 % of its core",
        "12 % of its core",
        "0.17 / 0.19",
        "19.22",
        "1,605,861",
        "0.54 µs",
        "86 % / 74 %",
        "385,192",
        "2.42 µs",
        "2.45 µs",
        "0.61 ms",
        "1.25 ms",
        "15.0 KiB",
        "7,098",
        "107.30 µs",
        "139.60 µs",
        "76 %",
        "600,000",
        "2,592,000",
        "648,000",
        "2,594,834",
        "0.10 µs",
        "0.20 µs",
        "1.45 µs",
        "0.17 µs",
        "0.16 µs – 0.18 µs",
        "0.19 µs – 0.23 µs",
        "26 %",
        "43 %",
        "+0.2 %",
        "0.14 ms",
        "0.16 ms",
        "2.33 ms",
        "2.89 ms",
        "14.99 µs",
        "22.45 ms",
        "377,724",
        "0.25 ms",
        "1.27 µs",
        "1.00 µs",
        "20.33 µs",
        "13.50 µs",
        "23.00 µs",
        "-2.67 µs",
        "-6.00 µs – +2.67 µs",
        "-9.50 µs",
        "2.10 / 2.09, 0.83",
        "2.26 / 2.26, 0.71",
        "17%, 12%",
        "0.26 ms",
        "3.10 ms",
        "5.1 MiB",
        "11.7 ms",
        "59,999/s with 0 losses",
        "0.58 ms",
        "2.24 ms",
        "1.00 ms",
        "1.79 ms",
        "0.09 ms",
        "0.63 ms",
        "The load generator slept between datagrams",
    ] {
        assert!(made.contains(figure), "the report gives {figure}");
    }
}

#[test]
fn the_machine_and_commit_come_from_the_raw_results_not_from_the_running_machine() {
    let raw = RawCopy::new("machine");
    std::fs::write(
        raw.json("machine.json"),
        r#"{"cpu_model": "Imaginary CPU 9000", "cores": 64, "memory_gib": 512,
            "kernel": "Linux 0.0.0-not-this-one"}"#,
    )
    .expect("machine.json is written");
    std::fs::write(raw.json("commit.txt"), "feedfacecafe\n").expect("commit.txt is written");

    let made = made(report(&raw.dir, "1", "scripts/bench.sh"));
    assert_eq!(
        line(&made, "- **Machine:** "),
        "64 × Imaginary CPU 9000, 512 GiB memory, Linux 0.0.0-not-this-one"
    );
    assert_eq!(line(&made, "- **Commit:** "), "`feedfacecafe`");
}

#[test]
fn raw_results_without_their_machine_are_refused_with_one_line() {
    let raw = RawCopy::new("no-machine");
    std::fs::remove_file(raw.json("machine.json")).expect("machine.json is in the copy");

    let out = report(&raw.dir, "1", "scripts/bench.sh");
    assert!(!out.status.success(), "a report with no machine is refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("machine.json"),
        "it names the file: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no partial report");
}

/// Appends `fields` to the JSON object in `path` (a key given twice counts as its last value).
fn append_fields(path: &Path, fields: &str) {
    let text = std::fs::read_to_string(path).expect("a raw result");
    let body = text.trim_end().strip_suffix('}').expect("a JSON object");
    std::fs::write(path, format!("{body}, {fields}}}")).expect("the raw result is written");
}

#[test]
fn the_gateways_datagram_and_turn_counts_give_figures_per_call_and_per_delivery() {
    let raw = RawCopy::new("datagrams");
    for r in 1..=3 {
        append_fields(
            &raw.json(&format!("rpc-{r}.json")),
            r#""gateway_calls": 1000, "gateway_datagrams_received": 180,
               "gateway_datagrams_sent": 200, "gateway_turns": 60"#,
        );
        append_fields(
            &raw.json(&format!("pubsub-fixed-{r}.json")),
            r#""gateway_deliveries": 12000, "gateway_datagrams_received": 300,
               "gateway_datagrams_sent": 1000, "gateway_turns": 40"#,
        );
        // As raw results made before the gateway counted datagrams.
        append_fields(
            &raw.json(&format!("pubsub-burst-{r}.json")),
            r#""gateway_datagrams_received": null, "gateway_datagrams_sent": null"#,
        );
    }

    let made = made(report(&raw.dir, "1", "scripts/bench.sh"));
    assert_eq!(
        line(
            &made,
            "| gateway UDP datagrams per call, received / sent | "
        ),
        "0.18 / 0.20 | 0.18 – 0.18 (3 runs) / 0.20 – 0.20 (3 runs) |"
    );
    assert_eq!(
        line(&made, "| calls per turn of the gateway's loop | "),
        "16.67 | 16.67 – 16.67 (3 runs) |"
    );
    assert_eq!(
        line(
            &made,
            "| gateway UDP datagrams per delivery, received / sent (pub/sub in bursts, fixed 1,350 B) | "
        ),
        "0.03 / 0.08 | 0.03 – 0.03 (3 runs) / 0.08 – 0.08 (3 runs) |"
    );
    // Raw results without the counts give no such rows.
    assert!(!made.contains("(pub/sub in bursts) |"), "no counts, no row");
    assert!(
        made.contains("meshgate_shard_turns_total"),
        "the rows are explained"
    );
}

#[test]
fn the_machines_own_stalls_are_reported_before_and_after_the_runs_when_measured() {
    let raw = RawCopy::new("stalls");
    let stalls = |longest: f64, long: u64, lost: f64, steal: &str| {
        format!(
            r#"{{"scenario": "stalls", "duration_s": 10.0, "min_gap_us": 100, "gaps": 300,
                "gaps_over_1ms": {long}, "gaps_over_5ms": 4, "longest_gap_ms": {longest},
                "lost_percent": {lost}{steal}, "cores": {{"1": {{}}, "0": {{}}}}}}"#
        )
    };
    std::fs::write(
        raw.json("stalls-before.json"),
        stalls(
            12.5,
            31,
            2.1,
            r#", "waited_percent": 0.7, "steal_percent": 1.05"#,
        ),
    )
    .expect("stalls-before.json is written");
    std::fs::write(raw.json("stalls-after.json"), stalls(7.25, 1200, 0.4, ""))
        .expect("stalls-after.json is written");

    let with_stalls = made(report(&raw.dir, "1", "scripts/bench.sh"));
    for (row, cells) in [
        (
            "the machine's own stalls",
            "before the runs | after the runs |",
        ),
        ("longest gap", "12.50 ms | 7.25 ms |"),
        (
            "gaps of 1 ms or more (of 5 ms or more)",
            "31 (4) | 1,200 (4) |",
        ),
        ("time lost in gaps of 100 µs or more", "2.10 % | 0.40 % |"),
        // A machine whose kernel gave no such figures says so.
        (
            "of which waiting for the core while another thread ran (`schedstat`)",
            "0.70 % | n/a |",
        ),
        (
            "of which stolen by the hypervisor (steal, `/proc/stat`)",
            "1.05 % | n/a |",
        ),
    ] {
        assert_eq!(line(&with_stalls, &format!("| {row} | ")), cells, "{row}");
    }
    assert!(
        with_stalls
            .contains("stalled a busy thread for up to 12.50 ms, and for 2.10 % of the time"),
        "the latencies are put beside the worst of the two"
    );
    assert!(
        with_stalls.contains("on each of cores 0 and 1, both at once, for 10 s"),
        "the cores are the ones measured"
    );

    // Raw results made before the stalls were measured give neither.
    let before = RawCopy::new("no-stalls");
    for file in ["stalls-before.json", "stalls-after.json"] {
        let _ = std::fs::remove_file(before.json(file));
    }
    let plain = made(report(&before.dir, "1", "scripts/bench.sh"));
    assert!(!plain.contains("own stalls"), "no stalls, no table");
}

// =========================================================================================
// scripts/scaling_report.py
// =========================================================================================

/// A shard-count run of `scripts/scaling.sh`, as it writes them: `shards` load generators
/// answering `rate` calls/s each, on cores marked `shared` or not.
fn scaling_run(shards: u64, run: u64, rate: f64, shared: bool) -> String {
    let load = format!(
        r#"{{"scenario": "rpc", "callers": 16, "in_flight": 16, "providers": 4,
            "payload_bytes": 64, "duration_s": 10.0, "calls": {calls}, "calls_per_s": {rate},
            "errors": 0, "load_cpu_busy": 0.9, "load_cpu_spinning": 0.1,
            "gateway_cpu_busy": {busy}}}"#,
        calls = rate * 10.0,
        busy = 0.95 * shards as f64,
    );
    let loads = vec![load; shards as usize].join(", ");
    let cores: Vec<String> = (0..shards).map(|c| c.to_string()).collect();
    let load_cores: Vec<String> = (shards..2 * shards).map(|c| c.to_string()).collect();
    format!(
        r#"{{"shards": {shards}, "run": {run}, "gateway_cores": [{}], "load_cores": [{}],
            "cores_shared": {shared}, "sessions_per_shard": [{}], "shard_busy": [{}],
            "shard_messages_per_call": {messages}, "datagrams_forwarded": 0,
            "loads": [{loads}]}}"#,
        cores.join(", "),
        load_cores.join(", "),
        vec!["20"; shards as usize].join(", "),
        vec!["0.95"; shards as usize].join(", "),
        messages = if shards == 1 { 0.0 } else { 1.5 },
    )
}

/// The scaling report of the given runs: (shards, run, calls/s per load generator, shared).
fn scaling_report(name: &str, runs: &[(u64, u64, f64, bool)]) -> String {
    let raw = RawCopy::new(name);
    for &(shards, run, rate, shared) in runs {
        std::fs::write(
            raw.json(&format!("scaling-{shards}-{run}.json")),
            scaling_run(shards, run, rate, shared),
        )
        .expect("a raw result");
    }
    made(
        Command::new("python3")
            .current_dir(root())
            .arg("scripts/scaling_report.py")
            .arg("--dir")
            .arg(&raw.dir)
            .args(["--elapsed", "100", "--command", "scripts/scaling.sh"])
            .output()
            .expect("python3 runs"),
    )
}

#[test]
fn the_scaling_report_gives_the_efficiency_per_shard_of_the_median_rates() {
    // 1 shard: 100,000 calls/s (median of 90,000, 100,000, 110,000); 2 shards: 2 x 90,000;
    // 4 shards: 4 x 87,000 (the median of 86,000, 87,000, 88,000).
    let mut runs = Vec::new();
    for (run, (one, two, four)) in [(90e3, 90e3, 87e3), (100e3, 88e3, 86e3), (110e3, 95e3, 88e3)]
        .into_iter()
        .enumerate()
    {
        let run = run as u64 + 1;
        runs.extend([
            (1, run, one, false),
            (2, run, two, false),
            (4, run, four, false),
        ]);
    }
    let report = scaling_report("scaling-met", &runs);
    assert!(
        report.contains("| 2 | 180,000 | 176,000 – 190,000 (3 runs) | 90,000 | 90 % |"),
        "{report}"
    );
    assert!(
        report.contains("| 20 – 20 | 1.50 | 0 | 80 % | 0 |"),
        "{report}"
    );
    assert!(report.contains("| 4 | 348,000 | "), "{report}");
    assert!(
        report.contains(
            "| efficiency per shard at the largest shard count ≥ 85 % | 87 % at 4 shards | met |"
        ),
        "{report}"
    );

    // 4 shards at 4 x 80,000: 80 %, not met.
    let runs: Vec<_> = runs
        .into_iter()
        .map(|(n, r, rate, s)| (n, r, if n == 4 { 80e3 } else { rate }, s))
        .collect();
    let report = scaling_report("scaling-not-met", &runs);
    assert!(
        report.contains("| 80 % at 4 shards | **not met** |"),
        "{report}"
    );

    // Processes that shared a core at 4 shards: no efficiency there, and no verdict.
    let runs: Vec<_> = runs
        .into_iter()
        .map(|(n, r, rate, _)| (n, r, rate, n == 4))
        .collect();
    let report = scaling_report("scaling-shared", &runs);
    assert!(report.contains("| 4 | 320,000 | "), "{report}");
    assert!(report.contains("n/a (processes share cores)"), "{report}");
    assert!(report.contains("| n/a | n/a |"), "{report}");
}

#[test]
fn a_handshake_rate_the_load_generator_set_is_judged_by_the_gateways_cpu_per_connection() {
    let raw = RawCopy::new("handshakes");
    let cases = [
        // The load generator's core saturated first (240 µs × 4,000/s: 96 % busy), the
        // gateway's 60 %: one shard makes 10^6 / 150 connections/s.
        (
            r#""connections_per_s": 4000.0, "gateway_cpu_per_connection_us": 150.0,
               "gateway_cpu_busy": 0.6, "load_cpu_per_connection_us": 240.0"#,
            "4,000 made, the load generator's core saturated first (240.00 µs per connection); \
             at the gateway's 150.00 µs each, a saturated shard makes 6,667 | ≥ 5,000 | met |",
        ),
        // The same, with a gateway too slow for 5,000/s even on a saturated core.
        (
            r#""connections_per_s": 3600.0, "gateway_cpu_per_connection_us": 250.0,
               "gateway_cpu_busy": 0.9, "load_cpu_per_connection_us": 270.0"#,
            "3,600 made, the load generator's core saturated first (270.00 µs per connection); \
             at the gateway's 250.00 µs each, a saturated shard makes 4,000 | ≥ 5,000 | **not met** |",
        ),
        // The gateway's core saturated first: the rate made is the shard's.
        (
            r#""connections_per_s": 4500.0, "gateway_cpu_per_connection_us": 215.0,
               "gateway_cpu_busy": 0.97, "load_cpu_per_connection_us": 180.0"#,
            "4,500 (215.00 µs of gateway CPU each) | ≥ 5,000 | **not met** |",
        ),
    ];
    for (fields, row) in cases {
        // A key given again replaces the first (Python's json keeps the last).
        append_fields(&raw.json("handshake.json"), fields);
        let made = made(report(&raw.dir, "1", "scripts/bench.sh"));
        assert_eq!(line(&made, "| new connections/s per shard | "), row);
    }
}

/// Writes the paced mesh runs of `pairs` (forwarded m0, forwarded m1, local m0: µs per call)
/// as run `run`'s pairs, in place of the committed ones, the load generator polling for
/// `polled` of its core. Each run ends 1,000 calls: forwarding them m0 received 2,100
/// datagrams, sent 2,200 and turned 900 times (m1: 1,000, 1,000 and 700); with the calls local,
/// 2,400, 2,450 and 750.
fn paced_mesh_pairs(raw: &RawCopy, run: u64, polled: f64, pairs: &[(f64, f64, f64)]) {
    for (p, (m0, m1, local)) in pairs.iter().enumerate() {
        let summary = |m0: f64, m1: f64, counts: &str| {
            format!(
                r#"{{"gateway_cpu_s": [{}, {}], "gateway_calls": 1000,
                    "load_cpu_spinning": {polled}, {counts}}}"#,
                m0 / 1000.0,
                m1 / 1000.0
            )
        };
        let p = p + 1;
        std::fs::write(
            raw.json(&format!("mesh-rpc-paced-{run}-{p}.json")),
            summary(
                *m0,
                *m1,
                r#""gateway_datagrams_received": [2100, 1000],
                   "gateway_datagrams_sent": [2200, 1000], "gateway_turns": [900, 700]"#,
            ),
        )
        .expect("a paced run is written");
        std::fs::write(
            raw.json(&format!("mesh-rpc-local-{run}-{p}.json")),
            summary(
                *local,
                0.0,
                r#""gateway_datagrams_received": [2400, 0],
                   "gateway_datagrams_sent": [2450, 0], "gateway_turns": [750, 0]"#,
            ),
        )
        .expect("a local run is written");
    }
}

#[test]
fn forwarded_and_local_calls_are_compared_over_every_pair_and_within_each() {
    let raw = RawCopy::new("mesh-pairs");
    for entry in std::fs::read_dir(raw.dir.join("json")).expect("the copy") {
        let path = entry.expect("a raw result").path();
        let name = path.file_name().expect("a name").to_string_lossy();
        if name.starts_with("mesh-rpc-paced-") || name.starts_with("mesh-rpc-local-") {
            std::fs::remove_file(&path).expect("a committed paced run is removed");
        }
    }
    // The runs drift (run 2 costs more throughout); within each pair the forwarded call on
    // m0 costs 1 µs less than the local one but in two pairs: 1 µs more in one, 7 µs less in
    // another. Pairing the two sides' figures other than by run and pair (sorted, say) would
    // give other differences.
    paced_mesh_pairs(&raw, 1, 0.0, &[(20.0, 10.0, 21.0), (22.0, 10.0, 23.0)]);
    paced_mesh_pairs(&raw, 2, 0.0, &[(30.0, 10.0, 29.0), (28.0, 10.0, 35.0)]);
    paced_mesh_pairs(&raw, 3, 0.0, &[(24.0, 10.0, 25.0), (26.0, 10.0, 27.0)]);

    let pairs = made(report(&raw.dir, "1", "scripts/bench.sh"));
    assert_eq!(
        line(
            &pairs,
            "| CPU per forwarded call, each side ≤ a local call's (both at 5,000 calls/s on the same two gateways) | "
        ),
        "m0 25.00 µs, m1 10.00 µs | 26.00 µs | met |"
    );
    assert_eq!(
        line(&pairs, "| CPU per forwarded call at 5,000/s, m0 | "),
        "25.00 µs | 20.00 µs – 30.00 µs (6 runs) |"
    );
    assert_eq!(
        line(
            &pairs,
            "| a forwarded call's CPU on m0 less the local call's, pair by pair | "
        ),
        "-1.00 µs | -7.00 µs – +1.00 µs (6 runs) |"
    );
    assert_eq!(
        line(
            &pairs,
            "| a forwarded call's CPU on m1 less the local call's, pair by pair | "
        ),
        "-16.00 µs | -25.00 µs – -11.00 µs (6 runs) |"
    );
    for (side, figures) in [
        ("forwarded, m0", "2.10 / 2.20, 0.90"),
        ("forwarded, m1", "1.00 / 1.00, 0.70"),
        ("local, m0", "2.40 / 2.45, 0.75"),
    ] {
        assert_eq!(
            line(
                &pairs,
                &format!(
                    "| UDP datagrams received / sent and turns of the loop per call at 5,000/s, {side} | "
                ),
            ),
            format!("{figures} | |")
        );
    }

    assert!(
        pairs.contains("The load generator slept between datagrams in these runs"),
        "the report says the load generator did not poll: {pairs}"
    );

    // A forwarded call dearer on m0 than a local one is not met; a load generator that polled
    // is said to have.
    paced_mesh_pairs(&raw, 1, 0.25, &[(20.0, 10.0, 21.0), (22.0, 10.0, 23.0)]);
    paced_mesh_pairs(&raw, 2, 0.25, &[(30.0, 10.0, 22.0), (28.0, 10.0, 22.0)]);
    paced_mesh_pairs(&raw, 3, 0.25, &[(24.0, 10.0, 25.0), (26.0, 10.0, 27.0)]);
    let dearer = made(report(&raw.dir, "1", "scripts/bench.sh"));
    assert!(
        line(
            &dearer,
            "| CPU per forwarded call, each side ≤ a local call's "
        )
        .ends_with("| **not met** |"),
        "{dearer}"
    );
    assert!(
        dearer.contains(
            "The load generator polled its socket between datagrams in these runs (25 % of its \
             core, median)"
        ),
        "{dearer}"
    );
}

/// Copies the committed natsbench results (`nats/run-N/`) into `raw`'s directory.
fn copy_nats_runs(raw: &RawCopy) {
    for run in std::fs::read_dir(root().join("docs/bench/nats")).expect("docs/bench/nats") {
        let from = run.expect("a natsbench run").path();
        let to = raw.dir.join("nats").join(from.file_name().expect("a name"));
        std::fs::create_dir_all(&to).expect("a run's directory");
        for file in std::fs::read_dir(&from).expect("a run's files") {
            let file = file.expect("a file").path();
            std::fs::copy(&file, to.join(file.file_name().expect("a name"))).expect("copied");
        }
    }
}

/// Runs `scripts/pubsub_burst_rate.py` on `raw`'s directory with `args`: the rate it printed,
/// what it said on standard error and the record it wrote.
fn burst_rate(raw: &RawCopy, args: &[&str]) -> (String, String, String) {
    let out = Command::new("python3")
        .current_dir(root())
        .arg("scripts/pubsub_burst_rate.py")
        .arg(&raw.dir)
        .arg("3")
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "pubsub_burst_rate.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = std::fs::read_to_string(raw.json("pubsub-burst-rate.json")).expect("recorded");
    (
        String::from_utf8(out.stdout).expect("UTF-8"),
        String::from_utf8(out.stderr).expect("UTF-8"),
        record,
    )
}

/// Writes nats-server's pub/sub result of run `run`: `delivered` messages/s to `subscribers`.
fn nats_pubsub_run(raw: &RawCopy, run: u64, delivered: f64, subscribers: u64) {
    let dir = raw.dir.join(format!("nats/run-{run}"));
    std::fs::create_dir_all(&dir).expect("a run's directory");
    std::fs::write(
        dir.join("ps-1to4.json"),
        format!(
            r#"{{"label": "ps-1to4", "subscribers": {subscribers},
                "delivered_msg_per_s": {delivered}, "usage": {{"server_cpu_pct": 50.0}}}}"#
        ),
    )
    .expect("a run is written");
}

#[test]
fn the_runs_in_bursts_publish_at_nats_servers_rate_per_subscriber_unless_given() {
    let raw = RawCopy::new("burst-rate");
    // nats-server not measured: the default, quietly.
    let (rate, said, record) = burst_rate(&raw, &[]);
    assert_eq!(rate, "300000\n");
    assert_eq!(said, "");
    assert!(record.contains(r#""basis": "default""#), "{record}");
    assert!(record.contains("nats-server was not measured"), "{record}");

    // To be matched, but without a result: the default, and a line saying why.
    let (rate, said, record) = burst_rate(&raw, &["--match-nats"]);
    assert_eq!(rate, "300000\n");
    assert!(
        said.contains("no run of nats-server's pub/sub gave a result"),
        "{said}"
    );
    assert!(record.contains(r#""basis": "default""#), "{record}");

    // With results: the median of its deliveries/s over its 4 subscribers, rounded down to
    // thousands. A run whose result has no usage (it failed) counts for nothing.
    for (run, delivered) in [(1, 2_418_477.5), (2, 2_440_398.7), (3, 2_298_182.7)] {
        nats_pubsub_run(&raw, run, delivered, 4);
    }
    let (rate, said, record) = burst_rate(&raw, &["--match-nats"]);
    assert_eq!(rate, "604000\n");
    assert_eq!(said, "");
    assert!(record.contains(r#""basis": "nats""#), "{record}");
    assert!(
        record.contains(r#""nats_delivered_per_s": 2418477.5"#),
        "{record}"
    );
    std::fs::write(
        raw.dir.join("nats/run-2/ps-1to4.json"),
        r#"{"label": "ps-1to4", "error": "the server did not start"}"#,
    )
    .expect("a failed run is written");
    let (rate, _, _) = burst_rate(&raw, &["--match-nats"]);
    assert_eq!(rate, "589000\n", "the median of runs 1 and 3 over 4");

    // Runs with different numbers of subscribers give no one rate per subscriber.
    nats_pubsub_run(&raw, 2, 1_200_000.0, 2);
    let (rate, said, _) = burst_rate(&raw, &["--match-nats"]);
    assert_eq!(rate, "300000\n");
    assert!(said.contains("different numbers of subscribers"), "{said}");

    // A rate given is kept, whatever nats-server did.
    let (rate, _, record) = burst_rate(&raw, &["--rate", "250000", "--match-nats"]);
    assert_eq!(rate, "250000\n");
    assert!(record.contains(r#""basis": "given""#), "{record}");
}

#[test]
fn the_report_gives_the_rate_of_the_runs_in_bursts_and_how_it_was_chosen() {
    let raw = RawCopy::new("burst-basis");
    copy_nats_runs(&raw);
    let rate_target = |rate: &str| {
        for r in 1..=3 {
            for kind in ["burst", "fixed"] {
                append_fields(
                    &raw.json(&format!("pubsub-{kind}-{r}.json")),
                    &format!(r#""rate_target": {rate}"#),
                );
            }
        }
    };
    // The rate is the runs' own; the record gives only its basis.
    rate_target("604000.0");
    std::fs::write(
        raw.json("pubsub-burst-rate.json"),
        r#"{"basis": "nats", "rate": 999000, "nats_delivered_per_s": 2418477.5, "subscribers": 4}"#,
    )
    .expect("the record is written");
    let matched = made(report(&raw.dir, "1", "scripts/bench.sh"));
    let basis = "nats-server's median delivery rate in this run (2,418,478/s) over its 4 \
                 subscribers, rounded down to thousands";
    line(
        &matched,
        &format!(
            "| gateway CPU per pub/sub delivery ≤ nats-server's (plain, 1 → 4; meshgate at \
             604,000/s in 1 ms bursts, {basis}, with the defaults: path MTU discovery up to \
             8,952 bytes) | "
        ),
    );
    assert!(
        matched.contains(&format!("at 604,000/s, {basis}. Gateway core")),
        "{matched}"
    );
    line(
        &matched,
        "| pub/sub deliveries/s (1 publisher at 604,000/s in 1 ms bursts, 4 subscribers, 64 B) | ",
    );
    assert!(!matched.contains("999,000"), "{matched}");

    // A rate given, or the default, is stated as such.
    std::fs::write(
        raw.json("pubsub-burst-rate.json"),
        r#"{"basis": "given", "rate": 604000}"#,
    )
    .expect("the record is written");
    let given = made(report(&raw.dir, "1", "scripts/bench.sh"));
    assert!(
        given.contains("at 604,000/s, the rate bench.sh was given. Gateway core"),
        "{given}"
    );
    std::fs::write(
        raw.json("pubsub-burst-rate.json"),
        r#"{"basis": "default", "rate": 300000, "reason": "nats-server was not measured"}"#,
    )
    .expect("the record is written");
    rate_target("300000.0");
    let default = made(report(&raw.dir, "1", "scripts/bench.sh"));
    assert!(
        default.contains("at 300,000/s, the default (nats-server was not measured). Gateway"),
        "{default}"
    );

    // Raw results made before the rate was recorded say nothing of how it was chosen.
    std::fs::remove_file(raw.json("pubsub-burst-rate.json")).expect("the record is removed");
    let before = made(report(&raw.dir, "1", "scripts/bench.sh"));
    assert!(before.contains("at 300,000/s. Gateway core"), "{before}");
}
