//! The committed benchmark report is what `scripts/bench_report.py` makes of the raw results
//! committed beside it: the figures the README quotes can be traced to those files.

use std::path::Path;
use std::process::Command;

/// The report with its generation time left out.
fn without_date(report: &str) -> String {
    report
        .lines()
        .filter(|line| !line.starts_with("- **Date:**"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_committed_report_is_regenerated_from_its_raw_results() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(root.join("docs/bench/report.md"))
        .expect("docs/bench/report.md is committed");
    let line = |prefix: &str| {
        committed
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("the report has a line starting with {prefix:?}"))
            .to_owned()
    };
    let commit = line("- **Commit:** `").trim_end_matches('`').to_owned();
    let reproduce = line("- **Reproduce:** `");
    let (command, took) = reproduce
        .split_once("` (took ")
        .expect("the reproduce line gives the command and the time it took");
    let elapsed = took.trim_end_matches(" s).");

    let out = Command::new("python3")
        .current_dir(root)
        .args(["scripts/bench_report.py", "--dir", "docs/bench"])
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
        .args(["--idle-clients", "5000", "--pubsub-rate", "150000"])
        .args([
            "--elapsed",
            elapsed,
            "--command",
            command,
            "--commit",
            &commit,
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "bench_report.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = String::from_utf8(out.stdout).expect("the report is UTF-8");
    assert_eq!(without_date(&made), without_date(&committed));
    for figure in [
        "220,512", "0.96 ms", "600,005", "25.4 KiB", "+0.0 %", "247,028", "0.89",
    ] {
        assert!(made.contains(figure), "the report gives {figure}");
    }
}
