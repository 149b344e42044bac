//! CPU time of this process and of the gateway's, to report what each side spent over a
//! measured window.

use std::time::Duration;

use super::metrics::{scrape_blocking, MetricsUrl};

/// The gateway's series of the time its shards spent polling while idle (its `--spin`).
const SPIN_SERIES: &str = "meshgate_shard_spin_seconds_total";

/// CPU time (user and system) this process has used so far.
pub fn own() -> Duration {
    // SAFETY: rusage is plain data and getrusage only writes it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU time the calling thread has used so far.
pub fn thread() -> Duration {
    // SAFETY: timespec is plain data and clock_gettime only writes it.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time (user and system) process `pid` has used so far, from `/proc/PID/stat`; `None`
/// when it cannot be read.
pub fn of_process(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

/// Pins the calling thread to core `cpu`. A thread inherits the cores of the thread that
/// started it, so a thread started by a pinned one may still be pinned elsewhere: this asks
/// the kernel, which refuses a core outside the process's cpuset or offline. [`allowed`],
/// asked before any thread is pinned, is the stricter check of the process's affinity.
pub fn pin(cpu: usize) -> Result<(), String> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("cannot pin a thread to core {cpu}: no such core"));
    }
    // SAFETY: cpu_set_t is plain data; the calls only read and write the set passed, and
    // `cpu` is below CPU_SETSIZE.
    let status = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if status != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("cannot pin a thread to core {cpu}: {e}"));
    }
    Ok(())
}

/// Whether the calling thread may run on core `cpu`; the error names it. Asked before any
/// thread is pinned, that is whether the process may.
pub fn allowed(cpu: usize) -> Result<(), String> {
    let refused = || Err(format!("core {cpu} is not one this process may run on"));
    if cpu >= libc::CPU_SETSIZE as usize {
        return refused();
    }
    // SAFETY: cpu_set_t is plain data and sched_getaffinity only writes the set passed;
    // `cpu` is below CPU_SETSIZE.
    let allowed = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0
            && libc::CPU_ISSET(cpu, &set)
    };
    if allowed {
        Ok(())
    } else {
        refused()
    }
}

/// What the gateway's process spent over a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GatewayCpu {
    /// Its CPU time.
    pub cpu: Duration,
    /// The part of it its shards spent polling while idle; `None` when its metrics page did
    /// not say.
    pub spun: Option<Duration>,
}

/// CPU use of both sides over a window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    own: Duration,
    gateway: Option<Duration>,
    /// The gateway's polling time so far, in seconds, as its metrics page gave it.
    gateway_spun: Option<f64>,
}

impl Window {
    /// Starts a window now; the gateway's is process `gateway`, its metrics page at `metrics`.
    pub fn start(gateway: Option<u32>, metrics: &MetricsUrl) -> Window {
        let gateway = gateway.and_then(of_process);
        Window {
            own: own(),
            gateway_spun: gateway.and_then(|_| spun_so_far(metrics)),
            gateway,
        }
    }

    /// CPU time each side used since the window started: this process's, and the gateway's.
    pub fn spent(
        &self,
        gateway: Option<u32>,
        metrics: &MetricsUrl,
    ) -> (Duration, Option<GatewayCpu>) {
        let own = own().saturating_sub(self.own);
        let theirs = match (self.gateway, gateway.and_then(of_process)) {
            (Some(a), Some(b)) => Some(GatewayCpu {
                cpu: b.saturating_sub(a),
                spun: self.gateway_spun.and_then(|before| {
                    let after = spun_so_far(metrics)?;
                    Some(Duration::from_secs_f64((after - before).max(0.0)))
                }),
            }),
            _ => None,
        };
        (own, theirs)
    }
}

/// The time the gateway's shards have spent polling while idle so far, in seconds.
fn spun_so_far(metrics: &MetricsUrl) -> Option<f64> {
    scrape_blocking(metrics).ok()?.float(SPIN_SERIES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_its_own_cpu_time_from_proc_as_from_getrusage() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        let proc = of_process(std::process::id()).expect("/proc/self/stat");
        // /proc counts in clock ticks: the two agree to a few ticks.
        let diff = proc.abs_diff(own());
        assert!(
            diff < Duration::from_millis(50),
            "{proc:?} against {:?}",
            own()
        );
        assert!(of_process(u32::MAX).is_none());
    }

    #[test]
    fn a_core_this_process_runs_on_is_allowed_and_one_past_any_machine_is_not() {
        // SAFETY: sched_getcpu takes nothing and returns the core or -1.
        let current = unsafe { libc::sched_getcpu() };
        let current = usize::try_from(current).expect("the core this thread runs on");
        assert_eq!(allowed(current), Ok(()));
        let past = libc::CPU_SETSIZE as usize;
        assert_eq!(
            allowed(past),
            Err(format!("core {past} is not one this process may run on"))
        );
        assert!(pin(past).is_err());
    }

    #[test]
    fn a_thread_started_by_a_pinned_thread_can_be_pinned_to_another_core() {
        // SAFETY: sched_getcpu takes nothing and returns the core or -1.
        let here = usize::try_from(unsafe { libc::sched_getcpu() }).expect("a core");
        let other = (0..libc::CPU_SETSIZE as usize).find(|&c| c != here && allowed(c).is_ok());
        let Some(other) = other else {
            eprintln!("one core only: nothing to move a thread to; checked on this core alone");
            std::thread::spawn(move || pin(here).expect("pinned where it runs"))
                .join()
                .expect("the thread");
            return;
        };
        std::thread::spawn(move || {
            pin(here).expect("pinned to the core it runs on");
            // The child starts on `here` alone, and may still move to any core of the process.
            std::thread::spawn(move || {
                pin(other).expect("pinned to another core of the process");
                // SAFETY: as above.
                let now = unsafe { libc::sched_getcpu() };
                assert_eq!(
                    usize::try_from(now).ok(),
                    Some(other),
                    "it runs where pinned"
                );
            })
            .join()
            .expect("the child thread");
        })
        .join()
        .expect("the pinned thread");
    }
}
