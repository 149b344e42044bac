//! `meshgate-cli stalls`: how long the machine keeps a thread that never sleeps from running.
//!
//! One thread per core of `--cores`, pinned there, reads the monotonic clock in a tight loop for
//! `--duration` and records each gap between two reads of at least `--min-gap`: time in which
//! the thread did not run although it never gave its core up (the hypervisor running something
//! else, interrupts, the kernel's own work). The benchmark report gives these beside its
//! latencies: a call in flight while its core stalls for 5 ms waits at least that long, whatever
//! the gateway does. The steal time the kernel accounts to each core over the same window
//! (`/proc/stat`) is reported too; a machine that does not account it reads 0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use super::cpu;
use super::report::{round, Summary};
use crate::args::parse_duration;

/// The gaps counted apart, besides all those of at least `--min-gap`.
const LONG: Duration = Duration::from_millis(1);
const VERY_LONG: Duration = Duration::from_millis(5);

#[derive(Args, Debug, Clone)]
pub struct StallsArgs {
    /// The cores to watch, one busy thread on each, at the same time (as the benchmark keeps
    /// both of its cores busy).
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub cores: Vec<usize>,
    /// How long each thread watches.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The shortest gap between two reads of the clock that counts as a stall.
    #[arg(long, default_value = "100us", value_parser = parse_duration)]
    pub min_gap: Duration,
    /// Print the summary as one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The stalls one thread saw.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Gaps {
    /// Gaps of at least `--min-gap`, of at least 1 ms and of at least 5 ms.
    count: u64,
    long: u64,
    very_long: u64,
    longest: Duration,
    /// The time the gaps add up to.
    lost: Duration,
}

impl Gaps {
    /// Counts one gap of at least `--min-gap`.
    fn add(&mut self, gap: Duration) {
        self.count += 1;
        self.long += u64::from(gap >= LONG);
        self.very_long += u64::from(gap >= VERY_LONG);
        self.longest = self.longest.max(gap);
        self.lost += gap;
    }

    fn merge(&mut self, other: &Gaps) {
        self.count += other.count;
        self.long += other.long;
        self.very_long += other.very_long;
        self.longest = self.longest.max(other.longest);
        self.lost += other.lost;
    }

    /// The figures, the lost time as a percentage of `window` of watching.
    fn json(&self, window: Duration) -> Value {
        json!({
            "gaps": self.count,
            "gaps_over_1ms": self.long,
            "gaps_over_5ms": self.very_long,
            "longest_gap_ms": round(self.longest.as_secs_f64() * 1e3, 2),
            "lost_percent": round(percent(self.lost, window), 2),
        })
    }
}

/// What the threads show while they run: the longest gap and the gaps of 1 ms or more so far.
#[derive(Default)]
struct Live {
    longest_ns: AtomicU64,
    long: AtomicU64,
}

pub fn run(a: &StallsArgs) -> Result<(), String> {
    if a.cores.is_empty() {
        return Err("--cores needs at least one core".into());
    }
    if a.duration.is_zero() || a.min_gap.is_zero() {
        return Err("--duration and --min-gap must be more than 0".into());
    }
    for (i, &core) in a.cores.iter().enumerate() {
        if a.cores[..i].contains(&core) {
            return Err(format!("--cores names core {core} twice"));
        }
        cpu::allowed(core)?;
    }
    let live = Arc::new(Live::default());
    let steal_before = read_steal(&a.cores);
    let started = Instant::now();
    let mut threads = Vec::with_capacity(a.cores.len());
    for &core in &a.cores {
        let (live, duration, min_gap) = (live.clone(), a.duration, a.min_gap);
        let thread = std::thread::Builder::new()
            .name(format!("stalls-{core}"))
            .spawn(move || {
                cpu::pin(core)?;
                Ok(watch(duration, min_gap, &live))
            })
            .map_err(|e| format!("cannot start the thread for core {core}: {e}"))?;
        threads.push(thread);
    }
    show_progress(&live, started, a.duration, &threads);
    let mut per_core = Vec::with_capacity(threads.len());
    for thread in threads {
        let gaps: Result<Gaps, String> = thread.join().map_err(|_| "a watching thread failed")?;
        per_core.push(gaps?);
    }
    let steal = steal_before.zip(read_steal(&a.cores));

    let mut all = Gaps::default();
    let mut cores = serde_json::Map::new();
    for (i, (gaps, &core)) in per_core.iter().zip(&a.cores).enumerate() {
        all.merge(gaps);
        let mut c = gaps.json(a.duration);
        if let Some((before, after)) = &steal {
            let stolen = after[i].saturating_sub(before[i]);
            c["steal_percent"] = round(percent(stolen, a.duration), 2).into();
        }
        cores.insert(core.to_string(), c);
    }
    let watched = a.duration * a.cores.len() as u32;
    let mut s = Summary::new(
        "stalls",
        format!(
            "stalls of busy threads on cores {:?}, gaps of {} µs or more",
            a.cores,
            a.min_gap.as_micros()
        ),
    );
    s.set("duration_s", a.duration.as_secs_f64())
        .set("min_gap_us", a.min_gap.as_micros() as u64);
    if let Value::Object(fields) = all.json(watched) {
        for (k, v) in fields {
            s.set(&k, v);
        }
    }
    if let Some((before, after)) = &steal {
        let stolen: Duration = after
            .iter()
            .zip(before)
            .map(|(a, b)| a.saturating_sub(*b))
            .sum();
        s.set("steal_percent", round(percent(stolen, watched), 2));
    }
    s.set("cores", Value::Object(cores));
    s.print(a.json)
}

/// Reads the clock in a loop for `duration`, recording the gaps of at least `min_gap`.
fn watch(duration: Duration, min_gap: Duration, live: &Live) -> Gaps {
    let mut gaps = Gaps::default();
    let start = Instant::now();
    let end = start + duration;
    let mut last = start;
    while last < end {
        let now = Instant::now();
        let gap = now.duration_since(last);
        if gap >= min_gap {
            gaps.add(gap);
            live.longest_ns
                .fetch_max(gap.as_nanos() as u64, Ordering::Relaxed);
            if gap >= LONG {
                live.long.fetch_add(1, Ordering::Relaxed);
            }
        }
        last = now;
    }
    gaps
}

/// One line a second on stderr until the threads are done.
fn show_progress<T>(
    live: &Live,
    started: Instant,
    duration: Duration,
    threads: &[std::thread::JoinHandle<T>],
) {
    let mut next = started + Duration::from_secs(1);
    while !threads.iter().all(|t| t.is_finished()) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
            continue;
        }
        next += Duration::from_secs(1);
        eprintln!(
            "{:>6.1}s of {}s  longest gap {:.2} ms  gaps of 1 ms or more {}",
            now.duration_since(started).as_secs_f64(),
            duration.as_secs(),
            live.longest_ns.load(Ordering::Relaxed) as f64 / 1e6,
            live.long.load(Ordering::Relaxed)
        );
    }
}

fn percent(part: Duration, whole: Duration) -> f64 {
    100.0 * part.as_secs_f64() / whole.as_secs_f64().max(1e-9)
}

/// The steal time of each core so far, from `/proc/stat`; `None` where it cannot be read.
fn read_steal(cores: &[usize]) -> Option<Vec<Duration>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
    cores
        .iter()
        .map(|&core| {
            let t = steal_ticks(&stat, core)?;
            Some(Duration::from_secs_f64(t as f64 / ticks as f64))
        })
        .collect()
}

/// Core `core`'s steal time in clock ticks, from the text of `/proc/stat`: the eighth figure of
/// its `cpuN` line.
fn steal_ticks(stat: &str, core: usize) -> Option<u64> {
    let name = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_counted_by_length_and_add_up_to_the_time_lost() {
        let mut g = Gaps::default();
        for us in [100, 999, 1_000, 4_999, 5_000, 12_000] {
            g.add(Duration::from_micros(us));
        }
        assert_eq!(g.count, 6);
        assert_eq!(g.long, 4);
        assert_eq!(g.very_long, 2);
        assert_eq!(g.longest, Duration::from_millis(12));
        assert_eq!(g.lost, Duration::from_micros(24_098));
        let v = g.json(Duration::from_secs(1));
        assert_eq!(v["gaps_over_1ms"], 4);
        assert_eq!(v["longest_gap_ms"], 12.0);
        assert_eq!(v["lost_percent"], 2.41);

        let mut all = Gaps::default();
        all.merge(&g);
        all.merge(&Gaps {
            count: 1,
            long: 1,
            very_long: 1,
            longest: Duration::from_millis(20),
            lost: Duration::from_millis(20),
        });
        assert_eq!((all.count, all.long, all.very_long), (7, 5, 3));
        assert_eq!(all.longest, Duration::from_millis(20));
    }

    #[test]
    fn steal_is_the_eighth_figure_of_the_cores_line() {
        let stat = "cpu  10 0 5 900 1 0 2 33 0 0\n\
                    cpu0 5 0 2 450 1 0 1 7 0 0\n\
                    cpu1 5 0 3 450 0 0 1 26 0 0\n\
                    cpu10 1 0 1 1 0 0 0 99 0 0\n\
                    intr 12345\n";
        assert_eq!(steal_ticks(stat, 0), Some(7));
        assert_eq!(steal_ticks(stat, 1), Some(26));
        assert_eq!(steal_ticks(stat, 10), Some(99));
        assert_eq!(steal_ticks(stat, 2), None);
        assert_eq!(steal_ticks("cpu0 1 2 3\n", 0), None);
    }

    #[test]
    fn a_watch_of_a_short_window_ends_and_counts_only_gaps_over_the_minimum() {
        let live = Live::default();
        let g = watch(Duration::from_millis(20), Duration::from_secs(3600), &live);
        assert_eq!(g, Gaps::default());
        assert_eq!(live.long.load(Ordering::Relaxed), 0);
    }
}
