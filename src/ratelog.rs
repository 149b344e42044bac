//! Log lines that a flood would repeat, at most once a second per shard and kind, with the
//! count of what was left out.

use std::cell::RefCell;
use std::thread::LocalKey;
use std::time::{Duration, Instant};

use meshgate_shard::wire::Reason;
use meshgate_shard::ShardId;

const EVERY: Duration = Duration::from_secs(1);

/// When a kind of line was last logged, and how many were left out since.
#[derive(Default)]
struct Limiter {
    last: Option<Instant>,
    skipped: u64,
}

thread_local! {
    static REFUSED: RefCell<Limiter> = RefCell::new(Limiter::default());
    static EVICTED: RefCell<Limiter> = RefCell::new(Limiter::default());
}

/// Calls `log` with the number of lines left out, unless a line of this kind was logged less
/// than a second ago.
fn limited(kind: &'static LocalKey<RefCell<Limiter>>, log: impl FnOnce(u64)) {
    kind.with(|cell| {
        let mut state = cell.borrow_mut();
        let now = Instant::now();
        match state.last {
            Some(last) if now.duration_since(last) < EVERY => state.skipped += 1,
            _ => {
                log(std::mem::take(&mut state.skipped));
                state.last = Some(now);
            }
        }
    });
}

fn more(skipped: u64, what: &str) -> String {
    if skipped > 0 {
        format!("; {skipped} more {what} not shown")
    } else {
        String::new()
    }
}

/// A client refused admission.
pub fn refused(shard: ShardId, reason: Reason) {
    limited(&REFUSED, |skipped| {
        log::info!(
            "shard {}: refused a client ({}){}",
            shard.0,
            reason.as_str(),
            more(skipped, "refusals")
        );
    });
}

/// A slow consumer was disconnected.
pub fn evicted(shard: ShardId) {
    limited(&EVICTED, |skipped| {
        log::info!(
            "shard {}: evicted a slow consumer (at --max-output, without draining to half of it, for --slow-consumer-timeout){}",
            shard.0,
            more(skipped, "evictions")
        );
    });
}
