//! Log lines that a flood would repeat, at most once a second per shard and kind, with the
//! count of what was left out.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use meshgate_shard::wire::Reason;
use meshgate_shard::ShardId;

const EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static REFUSED: RefCell<(Option<Instant>, u64)> = const { RefCell::new((None, 0)) };
}

/// A client refused admission.
pub fn refused(shard: ShardId, reason: Reason) {
    REFUSED.with(|cell| {
        let mut state = cell.borrow_mut();
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < EVERY => state.1 += 1,
            _ => {
                let skipped = std::mem::take(&mut state.1);
                if skipped > 0 {
                    log::info!(
                        "shard {}: refused a client ({}); {skipped} more refusals not shown",
                        shard.0,
                        reason.as_str()
                    );
                } else {
                    log::info!("shard {}: refused a client ({})", shard.0, reason.as_str());
                }
                state.0 = Some(now);
            }
        }
    });
}
