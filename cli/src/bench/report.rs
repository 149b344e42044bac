//! What a scenario shows: the progress line on stderr while it runs, latency histograms, and
//! the summary at the end (a table, or one JSON object with `--json`).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Map, Value};

use super::cpu::GatewayCpu;

/// The largest latency a histogram holds: longer ones are recorded as this.
const LATENCY_CAP_NS: u64 = 3_600_000_000_000;

/// Latencies in nanoseconds, to 3 significant digits.
#[derive(Clone, Debug)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            // 1 ns to 1 h at 3 significant digits are valid bounds.
            hist: Histogram::new_with_bounds(1, LATENCY_CAP_NS, 3)
                .expect("1 ns to 1 h at 3 significant digits are valid histogram bounds"),
        }
    }

    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.hist.saturating_record(ns.clamp(1, LATENCY_CAP_NS));
    }

    /// Adds the latencies of `other`, a histogram with the same bounds.
    pub fn merge(&mut self, other: &Latency) {
        // Two histograms with the same bounds always add up.
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Count, percentiles, max and mean, in microseconds.
    pub fn summary_us(&self) -> Value {
        let us = |ns: u64| round(ns as f64 / 1_000.0, 1);
        let mut m = Map::new();
        m.insert("count".into(), self.count().into());
        if self.count() > 0 {
            for (name, q) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)] {
                m.insert(name.into(), us(self.hist.value_at_percentile(q)).into());
            }
            m.insert("max".into(), us(self.hist.max()).into());
            m.insert("mean".into(), round(self.hist.mean() / 1_000.0, 1).into());
        }
        Value::Object(m)
    }
}

/// Rounds to `decimals` places, for figures meant to be read.
pub fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// A rate per second over `elapsed`, to 0.1.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        round(count as f64 / secs, 1)
    } else {
        0.0
    }
}

/// Counts by name (error codes, refusal reasons), in name order.
pub fn counts(map: &BTreeMap<String, u64>) -> Value {
    Value::Object(map.iter().map(|(k, v)| (k.clone(), (*v).into())).collect())
}

// -----------------------------------------------------------------------------------------
// Progress
// -----------------------------------------------------------------------------------------

/// Live counters of a running scenario, shown on stderr about once a second.
#[derive(Debug)]
pub struct Progress {
    names: Vec<&'static str>,
    counts: Vec<AtomicU64>,
    errors: AtomicU64,
    start: Instant,
    warmup: Duration,
}

impl Progress {
    /// Counters named `names` (a rate per second is shown for each), and the errors; the
    /// first `warmup` is marked as such.
    pub fn new(names: &[&'static str], warmup: Duration) -> Arc<Progress> {
        Arc::new(Progress {
            names: names.to_vec(),
            counts: names.iter().map(|_| AtomicU64::new(0)).collect(),
            errors: AtomicU64::new(0),
            start: Instant::now(),
            warmup,
        })
    }

    /// Adds `n` to counter `i`.
    pub fn add(&self, i: usize, n: u64) {
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self, i: usize) -> u64 {
        self.counts.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Starts the progress line; it stops, ending its line, when the returned guard goes.
    pub fn show(self: &Arc<Self>) -> ProgressLine {
        let progress = self.clone();
        let task = tokio::spawn(async move {
            let terminal = std::io::stderr().is_terminal();
            let mut last: Vec<u64> = progress.counts.iter().map(|_| 0).collect();
            let mut last_at = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = Instant::now();
                let dt = now.duration_since(last_at).as_secs_f64().max(1e-3);
                let elapsed = now.duration_since(progress.start);
                let mut line = format!("{:>6.1}s", elapsed.as_secs_f64());
                if last_at.duration_since(progress.start) < progress.warmup {
                    line.push_str(" (warmup)");
                }
                for (i, name) in progress.names.iter().enumerate() {
                    let n = progress.count(i);
                    let rate = (n - last[i]) as f64 / dt;
                    line.push_str(&format!("  {name} {}/s", thousands(rate.round() as u64)));
                    last[i] = n;
                }
                line.push_str(&format!("  errors {}", thousands(progress.errors())));
                last_at = now;
                let mut err = std::io::stderr().lock();
                let _ = if terminal {
                    write!(err, "\r\x1b[2K{line}")
                } else {
                    writeln!(err, "{line}")
                };
                let _ = err.flush();
            }
        });
        ProgressLine { task }
    }
}

/// The running progress line; dropping it stops the line.
pub struct ProgressLine {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.task.abort();
        if std::io::stderr().is_terminal() {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

/// A line on stderr about what the scenario is doing.
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "bench: {text}");
}

// -----------------------------------------------------------------------------------------
// Summary
// -----------------------------------------------------------------------------------------

/// The result of a scenario: named figures in order, nested one level or more.
#[derive(Debug)]
pub struct Summary {
    title: String,
    fields: Map<String, Value>,
}

impl Summary {
    /// A summary of `scenario`, headed by `title` in the table.
    pub fn new(scenario: &str, title: String) -> Summary {
        let mut fields = Map::new();
        fields.insert("scenario".into(), scenario.into());
        Summary { title, fields }
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Summary {
        self.fields.insert(key.to_owned(), value.into());
        self
    }

    /// The load generator's CPU time `cpu` over a measured window of `window_s` seconds, of
    /// which `spun` polling an idle socket: its share of the core (`load_cpu_busy`, polling
    /// included) and the polling's (`load_cpu_spinning`). Returns the CPU time that did work.
    pub fn set_load_cpu(&mut self, cpu: Duration, spun: Duration, window_s: f64) -> Duration {
        self.set_cpu("load", cpu, Some(spun), window_s)
    }

    /// The same of the gateway (`gateway_cpu_busy`, and `gateway_cpu_spinning` where its
    /// metrics gave the time its shards spent polling while idle).
    pub fn set_gateway_cpu(&mut self, g: GatewayCpu, window_s: f64) -> Duration {
        self.set_cpu("gateway", g.cpu, g.spun, window_s)
    }

    fn set_cpu(
        &mut self,
        side: &str,
        cpu: Duration,
        spun: Option<Duration>,
        window_s: f64,
    ) -> Duration {
        self.set(
            &format!("{side}_cpu_busy"),
            round(cpu.as_secs_f64() / window_s, 3),
        );
        let Some(spun) = spun else {
            return cpu;
        };
        self.set(
            &format!("{side}_cpu_spinning"),
            round(spun.as_secs_f64() / window_s, 3),
        );
        cpu.saturating_sub(spun)
    }

    /// Writes the summary to stdout.
    pub fn print(&self, json: bool) -> Result<(), String> {
        let text = if json {
            Value::Object(self.fields.clone()).to_string() + "\n"
        } else {
            self.table()
        };
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write the summary: {e}"))
    }

    /// The table: one figure a line, nested figures indented under their name.
    pub fn table(&self) -> String {
        let mut out = format!("{}\n", self.title);
        for (k, v) in &self.fields {
            if k != "scenario" {
                row(&mut out, 1, k, v);
            }
        }
        out
    }
}

fn row(out: &mut String, depth: usize, key: &str, value: &Value) {
    let indent = "  ".repeat(depth);
    match value {
        Value::Object(m) if m.is_empty() => {
            out.push_str(&format!(
                "{indent}{key:<w$} none\n",
                w = 28usize.saturating_sub(indent.len())
            ));
        }
        Value::Object(m) => {
            out.push_str(&format!("{indent}{key}\n"));
            for (k, v) in m {
                row(out, depth + 1, k, v);
            }
        }
        v => {
            out.push_str(&format!(
                "{indent}{key:<w$} {}\n",
                cell(v),
                w = 28usize.saturating_sub(indent.len())
            ));
        }
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => thousands(u),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => {
                let s = thousands(f.abs() as u64);
                if f < 0.0 {
                    format!("-{s}")
                } else {
                    s
                }
            }
            (None, Some(f)) => {
                let text = format!("{:.1}", f.abs());
                let (whole, frac) = text.split_once('.').unwrap_or((&text, "0"));
                let whole = whole.parse::<u64>().map_or(whole.to_owned(), thousands);
                let sign = if f < 0.0 { "-" } else { "" };
                format!("{sign}{whole}.{frac}")
            }
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(_) => v.to_string(),
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated_by_commas() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn latency_percentiles_are_in_microseconds() {
        let mut l = Latency::new();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary_us();
        assert_eq!(s["count"], 1000);
        let p50 = s["p50"].as_f64().unwrap();
        assert!((499.0..=501.0).contains(&p50), "{p50}");
        let max = s["max"].as_f64().unwrap();
        assert!((999.0..=1001.0).contains(&max), "{max}");
        assert!(Latency::new().summary_us().get("p50").is_none());
    }

    #[test]
    fn merged_histograms_hold_both_sets() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(3));
        a.merge(&b);
        assert_eq!(a.count(), 2);
    }

    #[test]
    fn the_table_nests_objects_and_formats_numbers() {
        let mut s = Summary::new("rpc", "rpc: test".into());
        s.set("calls", 1_234_567u64)
            .set("rate", 12_345.67)
            .set("ok", true)
            .set("errors_by_code", Value::Object(Map::new()));
        let mut lat = Map::new();
        lat.insert("p50".into(), 12.5.into());
        s.set("latency_us", Value::Object(lat));
        let table = s.table();
        assert!(table.starts_with("rpc: test\n"));
        assert!(table.contains("calls") && table.contains("1,234,567"));
        assert!(table.contains("12,345.7"));
        assert!(table.contains("yes"));
        assert!(table.contains("errors_by_code"));
        assert!(table.contains("    p50"));
        assert!(!table.contains("scenario"));
    }
}
