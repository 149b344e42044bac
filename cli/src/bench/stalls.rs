//! `meshgate-cli stalls`: how long the machine keeps a thread that never sleeps from running.
//!
//! One thread per core of `--cores`, pinned there, reads the monotonic clock in a tight loop for
//! `--duration` and records each gap between two reads of at least `--min-gap`: time in which
//! the thread did not run although it never gave its core up. Beside the gaps it gives what the
//! kernel accounts for over the same window, per core: the time the thread waited while another
//! thread of this machine ran on its core (`/proc/thread-self/schedstat`), and the steal time,
//! in which the hypervisor ran something else (`/proc/stat`; a machine that does not account
//! it reads 0). What neither accounts for is interrupts and the kernel's own work.
//!
//! The benchmark report gives these beside its latencies: a call in flight while its core
//! stalls waits the stall out, whatever the gateway does. The longest gap is a floor under the
//! largest latency a run can be counted on to show, and the gaps bound a percentile when they
//! cover more of the time than the percentile leaves out.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use super::cpu;
use super::report::{round, Summary};
use crate::args::parse_duration;

/// The gaps counted apart, besides all those of at least `--min-gap`.
const LONG: Duration = Duration::from_millis(1);
const VERY_LONG: Duration = Duration::from_millis(5);
/// The longest watch `--duration` takes.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The threads' start: they wait, pinned, until every one of them is.
const WAIT: u8 = 0;
const GO: u8 = 1;
const ABORT: u8 = 2;

#[derive(Args, Debug, Clone)]
pub struct StallsArgs {
    /// The cores to watch, one busy thread on each, at the same time (as the benchmark keeps
    /// both of its cores busy).
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub cores: Vec<usize>,
    /// How long each thread watches.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The shortest gap between two reads of the clock that counts as a stall (1 µs at least).
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
    if a.duration.is_zero() || a.duration > MAX_DURATION {
        return Err("--duration must be more than 0 and at most 24h".into());
    }
    if a.min_gap < Duration::from_micros(1) {
        return Err("--min-gap must be 1us or more".into());
    }
    for (i, &core) in a.cores.iter().enumerate() {
        if a.cores[..i].contains(&core) {
            return Err(format!("--cores names core {core} twice"));
        }
        cpu::allowed(core)?;
    }
    let live = Arc::new(Live::default());
    let start = Arc::new(AtomicU8::new(WAIT));
    let (pinned_tx, pinned) = mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::with_capacity(a.cores.len());
    for &core in &a.cores {
        let (live, go, pinned_tx) = (live.clone(), start.clone(), pinned_tx.clone());
        let (duration, min_gap) = (a.duration, a.min_gap);
        let thread = std::thread::Builder::new()
            .name(format!("stalls-{core}"))
            .spawn(move || {
                let pin = cpu::pin(core);
                let ok = pin.is_ok();
                let _ = pinned_tx.send(pin);
                if !ok || !started(&go) {
                    return None;
                }
                let waited = run_delay();
                let gaps = watch(duration, min_gap, &live);
                let waited = waited
                    .zip(run_delay())
                    .map(|(before, after)| after.saturating_sub(before));
                Some((gaps, waited))
            });
        match thread {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                start.store(ABORT, Ordering::Release);
                return Err(format!("cannot start the thread for core {core}: {e}"));
            }
        }
    }
    // Every thread is pinned before any watches: a core that cannot be had fails the run now.
    for _ in 0..threads.len() {
        let pin = pinned
            .recv()
            .unwrap_or(Err("a watching thread failed".into()));
        if let Err(e) = pin {
            start.store(ABORT, Ordering::Release);
            return Err(e);
        }
    }
    let steal_before = read_steal(&a.cores);
    let started_at = Instant::now();
    start.store(GO, Ordering::Release);
    show_progress(&live, started_at, a.duration, &threads);
    let mut per_core = Vec::with_capacity(threads.len());
    for thread in threads {
        let watched = thread.join().map_err(|_| "a watching thread failed")?;
        per_core.push(watched.ok_or("a watching thread did not start")?);
    }
    // Steal is read around the whole run, thread starts and ends included.
    let span = started_at.elapsed();
    let steal = steal_before.zip(read_steal(&a.cores));

    let mut all = Gaps::default();
    let mut cores = serde_json::Map::new();
    let mut waited_all = Some(Duration::ZERO);
    for (i, ((gaps, waited), &core)) in per_core.iter().zip(&a.cores).enumerate() {
        all.merge(gaps);
        let mut c = gaps.json(a.duration);
        if let Some(waited) = waited {
            c["waited_percent"] = round(percent(*waited, a.duration), 2).into();
        }
        waited_all = waited_all.zip(*waited).map(|(all, w)| all + w);
        if let Some((before, after)) = &steal {
            let stolen = after[i].saturating_sub(before[i]);
            c["steal_percent"] = round(percent(stolen, span), 2).into();
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
    if let Some(waited) = waited_all {
        s.set("waited_percent", round(percent(waited, watched), 2));
    }
    if let Some((before, after)) = &steal {
        let stolen: Duration = after
            .iter()
            .zip(before)
            .map(|(a, b)| a.saturating_sub(*b))
            .sum();
        let spans = span * a.cores.len() as u32;
        s.set("steal_percent", round(percent(stolen, spans), 2));
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

/// One line a second on stderr until the threads are done. The thread sleeps between lines
/// (it shares the watched cores), and wakes at the end of the watch to see them done.
fn show_progress<T>(
    live: &Live,
    started: Instant,
    duration: Duration,
    threads: &[std::thread::JoinHandle<T>],
) {
    let end = started + duration;
    let mut next = started + Duration::from_secs(1);
    while !threads.iter().all(|t| t.is_finished()) {
        let now = Instant::now();
        if now < next {
            let wake = if now < end { next.min(end) } else { next };
            std::thread::sleep(wake - now);
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

/// Waits for the go (true) or the abort (false) of the run.
fn started(start: &AtomicU8) -> bool {
    loop {
        match start.load(Ordering::Acquire) {
            WAIT => std::thread::yield_now(),
            state => return state == GO,
        }
    }
}

/// How long the calling thread has waited so far for a core while runnable, from
/// `/proc/thread-self/schedstat` (its second figure, in nanoseconds); `None` where the kernel
/// does not give it.
fn run_delay() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    schedstat_wait(&stat)
}

/// The second figure of a `schedstat` line: nanoseconds spent waiting on a run queue.
fn schedstat_wait(stat: &str) -> Option<Duration> {
    let ns = stat.split_whitespace().nth(1)?.parse().ok()?;
    Some(Duration::from_nanos(ns))
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
    fn the_wait_for_a_core_is_the_second_figure_of_schedstat() {
        assert_eq!(
            schedstat_wait("123456 7890000 42\n"),
            Some(Duration::from_nanos(7_890_000))
        );
        assert_eq!(schedstat_wait("123456\n"), None);
        assert_eq!(schedstat_wait(""), None);
        // This kernel's own figure for this thread, if it gives one, reads as a duration.
        if let Ok(stat) = std::fs::read_to_string("/proc/thread-self/schedstat") {
            assert!(schedstat_wait(&stat).is_some(), "{stat:?}");
        }
    }

    #[test]
    fn a_watch_of_a_short_window_ends_and_counts_only_gaps_over_the_minimum() {
        let live = Live::default();
        let g = watch(Duration::from_millis(20), Duration::from_secs(3600), &live);
        assert_eq!(g, Gaps::default());
        assert_eq!(live.long.load(Ordering::Relaxed), 0);
    }
}
