//! Nothing leaks: after thousands of random connect / subscribe / register / call / disconnect
//! cycles across shards, every table of every shard is empty again.

mod sim;

use std::time::Duration;

use meshgate_shard::metrics::CallOutcome;
use meshgate_shard::wire::{Disconnect, Message, Reason};
use meshgate_shard::StreamEnd;
use sim::{node, seeds, SeedGuard, Sim, REALM};

const PATTERNS: [&str; 8] = ["a", "a.b", "a.*", "a.**", "**", "*.b", "b.c.d", "b.**"];
const TOPICS: [&str; 6] = ["a", "a.b", "a.b.c", "b", "b.c.d", "x.b"];
const PROCEDURES: [&str; 4] = ["p.one", "p.two", "p.three", "p.four"];

fn run(seed: u64, shards: u16, ops: usize) {
    let _guard = SeedGuard(seed);
    let mut sim = Sim::with(shards, seed, |c| {
        c.limits.max_output = 4_096;
        c.limits.max_clients = 12;
        c.limits.max_subscriptions = 6;
        c.limits.max_registrations = 3;
        c.limits.max_pending_calls = 40;
        c.limits.call_timeout = Duration::from_millis(300);
        c.limits.slow_consumer_timeout = Duration::from_millis(500);
        c.limits.prune_interval = Duration::from_secs(1);
        c.limits.service_ttl = Duration::from_secs(3);
    });
    sim.link_capacity = 8;
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x1eaf);
    let mut live: Vec<usize> = Vec::new();
    for _ in 0..ops {
        live.retain(|&c| sim.clients[c].closed.is_none());
        let pick = |rng: &mut fastrand::Rng, live: &[usize]| {
            (!live.is_empty()).then(|| live[rng.usize(..live.len())])
        };
        match rng.u32(..100) {
            0..=11 => {
                let shard = rng.u16(..shards);
                let realm = if rng.u8(..8) == 0 {
                    "other.realm"
                } else {
                    REALM
                };
                let c = sim.open(shard, node(rng.u32(..96)), realm, None);
                live.push(c);
            }
            12..=14 => {
                // A session that never sends CONNECT.
                let c = sim.open_session(rng.u16(..shards), node(1000));
                live.push(c);
            }
            15..=26 => {
                if let Some(c) = pick(&mut rng, &live) {
                    let n = rng.usize(1..3);
                    let patterns: Vec<&str> = (0..n)
                        .map(|_| PATTERNS[rng.usize(..PATTERNS.len())])
                        .collect();
                    sim.subscribe(c, &patterns);
                }
            }
            27..=31 => {
                if let Some(c) = pick(&mut rng, &live) {
                    sim.unsubscribe(c, &[PATTERNS[rng.usize(..PATTERNS.len())]]);
                }
            }
            32..=39 => {
                if let Some(c) = pick(&mut rng, &live) {
                    let ttl = if rng.bool() {
                        Some(rng.u64(1..5))
                    } else {
                        None
                    };
                    sim.register(c, PROCEDURES[rng.usize(..PROCEDURES.len())], ttl);
                }
            }
            40..=42 => {
                if let Some(c) = pick(&mut rng, &live) {
                    sim.unregister(c, PROCEDURES[rng.usize(..PROCEDURES.len())]);
                }
            }
            43..=57 => {
                if let Some(c) = pick(&mut rng, &live) {
                    let timeout = if rng.bool() {
                        Some(rng.u64(1..500))
                    } else {
                        None
                    };
                    sim.call(
                        c,
                        PROCEDURES[rng.usize(..PROCEDURES.len())],
                        rng.u64(..16),
                        timeout,
                    );
                }
            }
            58..=67 => {
                // A provider answers one of the calls it received (maybe late, maybe twice).
                if let Some(c) = pick(&mut rng, &live) {
                    let calls = sim.calls(c);
                    if !calls.is_empty() {
                        let id = calls[rng.usize(..calls.len())].1;
                        sim.reply(c, id, &[0x2a]);
                    }
                }
            }
            68..=77 => {
                if let Some(c) = pick(&mut rng, &live) {
                    let payload = vec![0u8; rng.usize(..300)];
                    sim.publish(c, TOPICS[rng.usize(..TOPICS.len())], &payload);
                }
            }
            78..=81 => {
                if let Some(c) = pick(&mut rng, &live) {
                    sim.send(
                        c,
                        &Message::Disconnect(Disconnect {
                            reason: b"normal",
                            message: None,
                        }),
                    );
                }
            }
            82..=83 => {
                if let Some(c) = pick(&mut rng, &live) {
                    sim.drop_connection(c);
                }
            }
            84..=85 => {
                if let Some(c) = pick(&mut rng, &live) {
                    let end = [
                        StreamEnd::Finished,
                        StreamEnd::Reset,
                        StreamEnd::StopSending,
                    ];
                    sim.end_stream(c, end[rng.usize(..end.len())]);
                }
            }
            86..=88 => {
                if let Some(c) = pick(&mut rng, &live) {
                    sim.clients[c].reading = !sim.clients[c].reading;
                }
            }
            89..=91 => {
                if let Some(c) = pick(&mut rng, &live) {
                    // Garbage: the session ends with a protocol error.
                    sim.send_bytes(c, &[0x01, 0x10, 0, 0, 0, 0, 0, 2, 0xc1, 0xc1]);
                }
            }
            92..=95 => sim.advance(Duration::from_millis(rng.u64(1..400))),
            _ => {
                for _ in 0..rng.usize(1..20) {
                    sim.step();
                }
            }
        }
        if rng.u8(..4) == 0 {
            sim.drive();
        }
    }
    sim.assert_empty_once_all_leave();
    let delivered = sim.total(|c| c.deliveries);
    let answered = sim.total(|c| c.calls.iter().sum());
    assert!(
        delivered > 0 && answered > 0,
        "the run exercised delivery ({delivered}) and calls ({answered})"
    );
    for outcome in [
        CallOutcome::Ok,
        CallOutcome::Timeout,
        CallOutcome::CallerGone,
        CallOutcome::ProcedureNotFound,
    ] {
        assert!(
            sim.total(|c| c.calls_of(outcome)) > 0,
            "the run exercised {outcome:?}"
        );
    }
    assert!(
        sim.total(|c| c.refused_of(Reason::MaxClientsReached)) > 0,
        "the run filled the client table"
    );
    assert!(
        sim.total(|c| c.sessions_closed[6]) > 0,
        "the run replaced sessions"
    );
}

#[test]
fn every_table_is_empty_after_thousands_of_random_cycles_on_three_shards() {
    for seed in seeds(100, 6) {
        run(seed, 3, 4_000);
    }
}

#[test]
fn every_table_is_empty_after_thousands_of_random_cycles_on_one_shard() {
    for seed in seeds(200, 3) {
        run(seed, 1, 4_000);
    }
}
