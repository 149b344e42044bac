//! `bench pubsub` on the lean engine ([`crate::bench::lean`]): publishers and subscribers are
//! sessions of one thread. Messages carry the same 20-byte header as with the client library
//! (publish time, publisher, sequence number). A subscriber reads whatever the gateway sends,
//! as fast as it comes: every loss is one the gateway made.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_protocol::wire::{Message, Publish, Strings, Subscribe};

use super::super::cpu;
use super::super::lean::Engine;
use super::super::report::{round, Progress, Summary};
use super::super::run_tag;
use super::{announce, summary, Pace, PatternKind, Published, PubsubArgs, Received, HEADER};

/// How long sessions may take to be admitted, and subscriptions to be in effect.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the closing sessions may take to say goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes a publisher may have queued and not yet taken by its stream: an unpaced publisher
/// publishes as fast as its connection takes messages, no faster.
const MAX_QUEUED: usize = 64 * 1024;

pub fn run(a: &PubsubArgs, progress: Arc<Progress>) -> Result<Summary, String> {
    let payload = a.payload.max(HEADER);
    let c = &a.common.connection;
    let target = |server| a.datagrams.target(c, server);
    let at = |servers: &[std::net::SocketAddr], i: usize| {
        servers
            .get(i % servers.len().max(1))
            .copied()
            .unwrap_or(c.server)
    };
    let tag = run_tag();
    let pattern = match a.pattern {
        PatternKind::Exact => format!("bench.{tag}.data"),
        PatternKind::Wildcard => format!("bench.{tag}.*.data"),
    };
    let topics: Vec<Vec<u8>> = (0..a.publishers)
        .map(|i| match a.pattern {
            PatternKind::Exact => format!("bench.{tag}.data").into_bytes(),
            PatternKind::Wildcard => format!("bench.{tag}.p{i}.data").into_bytes(),
        })
        .collect();
    let spread = !a.publisher_servers.is_empty() || !a.subscriber_servers.is_empty();

    let mut engine = Engine::new(c.server, &a.spin)?;
    let first_subscriber = 0;
    for i in 0..a.subscribers {
        let s = engine
            .connect(&target(at(&a.subscriber_servers, i)), 1, SETUP_TIMEOUT)
            .map_err(|e| format!("subscriber: {e}"))?;
        engine.session(s.start).send(&Message::Subscribe(Subscribe {
            topics: Strings::List(&[pattern.as_bytes()]),
            qos: None,
        }));
    }
    let subscribers = first_subscriber..a.subscribers;
    engine
        .barrier(subscribers.clone(), spread, SETUP_TIMEOUT)
        .map_err(|e| format!("subscriber: {e}"))?;
    let first_publisher = engine.sessions().len();
    for i in 0..a.publishers {
        engine
            .connect(&target(at(&a.publisher_servers, i)), 1, SETUP_TIMEOUT)
            .map_err(|e| format!("publisher: {e}"))?;
    }
    let publishers: Range<usize> = first_publisher..first_publisher + a.publishers;
    announce(a, &pattern, payload);

    let origin = Instant::now();
    let measure_from = origin + a.common.warmup;
    let end = measure_from + a.common.duration;
    let per_publisher = a.rate.map(|r| Pace {
        rate: r / a.publishers as f64,
        tick: a.tick,
    });
    let mut message = vec![0x2au8; payload];
    let mut published = vec![0u64; a.publishers];
    let mut published_in_window = 0u64;
    let mut received = Received::default();
    // Per subscriber, the next sequence number expected of each publisher.
    let mut next_seq = vec![vec![0u64; a.publishers]; a.subscribers];
    let mut window: Option<(cpu::Window, Duration)> = None;
    let mut spent = None;
    let mut next_due = end;
    let mut last_progress = (0u64, Instant::now());
    loop {
        let now = Instant::now();
        if window.is_none() && now >= measure_from {
            window = Some((
                cpu::Window::start(a.gateway_pid, &a.common.metrics),
                engine.spun(),
            ));
        }
        if now >= end {
            spent.get_or_insert_with(|| {
                window.map(|(w, spun)| {
                    (
                        w.spent(a.gateway_pid, &a.common.metrics),
                        engine.spun().saturating_sub(spun),
                    )
                })
            });
            // The deliveries still on their way: wait while they keep coming, at most
            // --drain, and a second without progress.
            let expected: u64 = published.iter().sum::<u64>() * a.subscribers as u64;
            if received.total != last_progress.0 {
                last_progress = (received.total, now);
            }
            if received.total >= expected
                || now >= end + a.drain
                || now.duration_since(last_progress.1) > Duration::from_secs(1)
            {
                break;
            }
        } else {
            next_due = end;
            for (p, session) in publishers.clone().enumerate() {
                let s = engine.session(session);
                let due = match per_publisher {
                    Some(pace) => {
                        let (due, next) = pace.due(now.duration_since(origin), published[p]);
                        next_due = next_due.min(origin + next);
                        due
                    }
                    None => u64::MAX,
                };
                let stamp = u64::try_from(now.duration_since(origin).as_nanos()).unwrap_or(0);
                message[..8].copy_from_slice(&stamp.to_be_bytes());
                message[8..12].copy_from_slice(&(p as u32).to_be_bytes());
                while published[p] < due && s.queued() < MAX_QUEUED {
                    message[12..20].copy_from_slice(&published[p].to_be_bytes());
                    s.send(&Message::Publish(Publish::new(&topics[p], &message)));
                    published[p] += 1;
                    if now >= measure_from {
                        published_in_window += 1;
                    }
                    progress.add(0, 1);
                }
            }
            if per_publisher.is_none() {
                next_due = now;
            }
        }
        if let Some(why) = engine.sessions().iter().find_map(|s| s.ended()) {
            return Err(format!("a session ended during the run: {why}"));
        }
        let until = if now < end {
            next_due
        } else {
            now + Duration::from_millis(50)
        };
        engine.turn(Some(until), |i, msg, _| {
            let Message::Publish(p) = msg else {
                return;
            };
            if !subscribers.contains(&i) {
                return;
            }
            let expected = &mut next_seq[i - first_subscriber];
            received.note(p.payload, origin, measure_from, end, expected);
            progress.add(1, 1);
        });
    }
    engine.close(CLOSE_TIMEOUT);

    let total: u64 = published.iter().sum();
    let mut s = summary(
        a,
        payload,
        &Published {
            total,
            in_window: published_in_window,
        },
        &received,
    );
    s.set(
        "largest_datagram_received",
        engine.largest_datagram_received(),
    );
    if let Some(((load_cpu, gateway_cpu), spun)) = spent.flatten() {
        let window = a.common.duration.as_secs_f64();
        let per = |d: Duration| round(d.as_secs_f64() * 1e6 / received.in_window.max(1) as f64, 3);
        let load_work = s.set_load_cpu(load_cpu, spun, window);
        s.set("load_cpu_per_delivery_us", per(load_work));
        if let Some(g) = gateway_cpu {
            let work = s.set_gateway_cpu(g, window);
            s.set("gateway_cpu_per_delivery_us", per(work));
        }
    }
    Ok(s)
}
