//! `bench pubsub`: publishers publish, every subscriber gets every message.
//!
//! Each message carries, in its first 20 bytes, the time it was published (nanoseconds since
//! the run started, on this process's monotonic clock), its publisher and its sequence
//! number; the rest of `--payload` is filler. Subscribers time each delivery from it, and
//! check the order per publisher. Subscribers read with [`Overflow::Wait`]: the client never
//! drops a delivery itself, so every loss is one the gateway made (a subscriber over
//! `--max-output`). After the publishers stop, the subscribers wait for the last deliveries
//! (at most `--drain`); losses are the deliveries expected (every message published, warmup
//! included, times the subscribers) minus those received.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use meshgate_client::{Client, Overflow, Subscription};
use serde_json::Value;
use tokio::task::JoinSet;

use super::lean::{Datagrams, Spin};
use super::report::{note, per_second, Latency, Progress, Summary};
use super::rpc::close_all;
use super::{connect, run_tag, Common, Engine};
use crate::args::parse_duration;

mod lean;

/// Bytes of the header every message carries: time, publisher, sequence number.
const HEADER: usize = 20;
/// Publishes between two yields of an unpaced publisher, so that one worker thread is shared.
const BURST: u64 = 64;

#[derive(Args, Debug, Clone)]
pub struct PubsubArgs {
    #[command(flatten)]
    pub common: Common,
    /// Publisher sessions.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscriber sessions; each gets every message.
    #[arg(long, default_value_t = 4)]
    pub subscribers: usize,
    /// What the subscribers subscribe to: the one topic all publish to (exact), or a pattern
    /// with `*` matching each publisher's own topic (wildcard).
    #[arg(long, value_enum, default_value = "exact")]
    pub pattern: PatternKind,
    /// Bytes of each message (at least 20, its header).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Messages per second in all, shared among the publishers; without it they publish as
    /// fast as their sessions take messages.
    #[arg(long)]
    pub rate: Option<f64>,
    /// With --rate: publishers publish the messages due in each tick of this length together,
    /// at its start, as a publisher flushing its buffer on a timer does (0: each message when
    /// it is due).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub tick: Duration,
    /// How long the subscribers may take to receive the last messages after publishing stops.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Spread the publishers over these gateways, round-robin (comma-separated; default:
    /// --server): with the gateways of a mesh, messages cross peer links.
    #[arg(long, value_delimiter = ',')]
    pub publisher_servers: Vec<SocketAddr>,
    /// Spread the subscribers over these gateways, round-robin (default: --server). The run
    /// starts once every subscription is in effect across the mesh.
    #[arg(long, value_delimiter = ',')]
    pub subscriber_servers: Vec<SocketAddr>,
    /// What makes the load.
    #[arg(long, value_enum, default_value_t = Engine::Lean)]
    pub engine: Engine,
    #[command(flatten)]
    pub datagrams: Datagrams,
    #[command(flatten)]
    pub spin: Spin,
    /// The gateway's process id: its CPU time over the measured window is reported, per
    /// delivery (from /proc; lean engine).
    #[arg(long, value_name = "PID")]
    pub gateway_pid: Option<u32>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternKind {
    /// `bench.TAG.data`, the topic every publisher uses.
    Exact,
    /// `bench.TAG.*.data`, publishers using `bench.TAG.pN.data`.
    Wildcard,
}

impl PatternKind {
    fn name(self) -> &'static str {
        match self {
            PatternKind::Exact => "exact",
            PatternKind::Wildcard => "wildcard",
        }
    }
}

/// What one publisher did.
struct Published {
    total: u64,
    in_window: u64,
}

/// What one subscriber received.
#[derive(Default)]
struct Received {
    total: u64,
    in_window: u64,
    out_of_order: u64,
    latency: Latency,
}

impl Received {
    /// Counts a delivery, checks its order among its publisher's messages, and times it if it
    /// was published in the window from `measure_from` to `end`.
    fn note(
        &mut self,
        payload: &[u8],
        origin: Instant,
        measure_from: Instant,
        end: Instant,
        next_seq: &mut [u64],
    ) {
        let now = Instant::now();
        self.total += 1;
        let Some(header) = payload.get(..HEADER) else {
            return;
        };
        let word = |r: std::ops::Range<usize>| {
            header[r]
                .iter()
                .fold(0u64, |acc, b| acc << 8 | u64::from(*b))
        };
        let sent_ns = word(0..8);
        let publisher = word(8..12) as usize;
        let seq = word(12..20);
        if let Some(next) = next_seq.get_mut(publisher) {
            if seq < *next {
                self.out_of_order += 1;
            } else {
                *next = seq + 1;
            }
        }
        let sent = origin + Duration::from_nanos(sent_ns);
        if sent >= measure_from && sent < end {
            self.in_window += 1;
            self.latency.record(now.saturating_duration_since(sent));
        }
    }
}

/// What every task shares.
struct Plan {
    origin: Instant,
    measure_from: Instant,
    end: Instant,
    progress: Arc<Progress>,
    stop: AtomicBool,
    stopped: tokio::sync::Notify,
}

impl Plan {
    fn ns_since_origin(&self, t: Instant) -> u64 {
        u64::try_from(t.duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// When a paced publisher publishes: each message when it is due, or, with a tick, the
/// messages due in each tick together at its start.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Messages per second.
    pub rate: f64,
    pub tick: Duration,
}

impl Pace {
    /// How many messages are due `elapsed` after the start, and when, `published` having been
    /// published, the next ones are due (also since the start).
    pub fn due(&self, elapsed: Duration, published: u64) -> (u64, Duration) {
        let tick = u64::try_from(self.tick.as_nanos()).unwrap_or(u64::MAX);
        if tick == 0 {
            let due = (elapsed.as_secs_f64() * self.rate) as u64;
            let next = Duration::from_secs_f64((published.max(due) + 1) as f64 / self.rate);
            return (due, next);
        }
        let elapsed = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let tick_end =
            Duration::from_nanos((elapsed / tick).saturating_add(1).saturating_mul(tick));
        ((tick_end.as_secs_f64() * self.rate) as u64, tick_end)
    }
}

pub async fn run(a: &PubsubArgs) -> Result<Summary, String> {
    if a.publishers == 0 || a.subscribers == 0 {
        return Err("--publishers and --subscribers must be at least 1".into());
    }
    if a.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be a positive number of messages per second".into());
    }
    if a.engine == Engine::Lean {
        let progress = Progress::new(&["published", "delivered"], a.common.warmup);
        let _line = progress.show();
        return tokio::task::block_in_place(|| lean::run(a, progress));
    }
    if a.gateway_pid.is_some() {
        return Err("--gateway-pid needs the lean engine".into());
    }
    let payload = a.payload.max(HEADER);
    let base = a.common.client_config()?;
    let tag = run_tag();
    let pattern = match a.pattern {
        PatternKind::Exact => format!("bench.{tag}.data"),
        PatternKind::Wildcard => format!("bench.{tag}.*.data"),
    };
    let topic = |i: usize| match a.pattern {
        PatternKind::Exact => format!("bench.{tag}.data"),
        PatternKind::Wildcard => format!("bench.{tag}.p{i}.data"),
    };
    let sub_config = meshgate_client::ClientConfig {
        subscription_overflow: Overflow::Wait,
        subscription_capacity: 8192,
        ..base.clone()
    };
    let spread = !a.publisher_servers.is_empty() || !a.subscriber_servers.is_empty();
    let at = |servers: &[SocketAddr], i: usize, config: &meshgate_client::ClientConfig| {
        meshgate_client::ClientConfig {
            server: servers
                .get(i % servers.len().max(1))
                .copied()
                .unwrap_or(config.server),
            ..config.clone()
        }
    };
    let mut subscribers = Vec::with_capacity(a.subscribers);
    for i in 0..a.subscribers {
        let c = connect(&at(&a.subscriber_servers, i, &sub_config))
            .await
            .map_err(|e| format!("subscriber: {e}"))?;
        let sub = c
            .subscribe([pattern.clone()])
            .await
            .map_err(|e| format!("subscribe {pattern}: {e}"))?;
        subscribers.push((c, sub));
    }
    if spread {
        for (c, _) in &subscribers {
            c.flush_mesh()
                .await
                .map_err(|e| format!("subscriber: waiting for the mesh: {e}"))?;
        }
    }
    let mut publishers = Vec::with_capacity(a.publishers);
    for i in 0..a.publishers {
        publishers.push(
            connect(&at(&a.publisher_servers, i, &base))
                .await
                .map_err(|e| format!("publisher: {e}"))?,
        );
    }
    announce(a, &pattern, payload);

    let origin = Instant::now();
    let measure_from = origin + a.common.warmup;
    let progress = Progress::new(&["published", "delivered"], a.common.warmup);
    let plan = Arc::new(Plan {
        origin,
        measure_from,
        end: measure_from + a.common.duration,
        progress: progress.clone(),
        stop: AtomicBool::new(false),
        stopped: tokio::sync::Notify::new(),
    });
    let line = progress.show();
    let mut receiving = JoinSet::new();
    let mut subscriber_clients = Vec::with_capacity(a.subscribers);
    for (c, sub) in subscribers {
        subscriber_clients.push(c);
        receiving.spawn(receive(sub, plan.clone(), a.publishers));
    }
    let per_publisher = a.rate.map(|r| Pace {
        rate: r / a.publishers as f64,
        tick: a.tick,
    });
    let mut publishing = JoinSet::new();
    for (i, p) in publishers.iter().enumerate() {
        let topic = topic(i);
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        publishing.spawn(publish(
            p.clone(),
            topic,
            index,
            payload,
            per_publisher,
            plan.clone(),
        ));
    }
    let mut published = Published {
        total: 0,
        in_window: 0,
    };
    let mut publish_errors = Vec::new();
    while let Some(done) = publishing.join_next().await {
        match done.map_err(|e| format!("a publisher task failed: {e}"))? {
            Ok(p) => {
                published.total += p.total;
                published.in_window += p.in_window;
            }
            Err(e) => publish_errors.push(e),
        }
    }
    let expected = published.total * a.subscribers as u64;
    // The deliveries still on their way: wait while they keep coming, at most --drain.
    let drain_end = Instant::now() + a.drain;
    let mut last = (progress.count(1), Instant::now());
    while progress.count(1) < expected && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = progress.count(1);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    plan.stop.store(true, Ordering::Release);
    plan.stopped.notify_waiters();
    let mut received = Received::default();
    while let Some(done) = receiving.join_next().await {
        let r = done.map_err(|e| format!("a subscriber task failed: {e}"))?;
        received.total += r.total;
        received.in_window += r.in_window;
        received.out_of_order += r.out_of_order;
        received.latency.merge(&r.latency);
    }
    drop(line);
    close_all(publishers.into_iter().chain(subscriber_clients)).await;
    if let Some(e) = publish_errors.first() {
        return Err(format!("a publisher failed: {e}"));
    }

    Ok(summary(a, payload, &published, &received))
}

/// Says on stderr what the run does, once its sessions are up.
fn announce(a: &PubsubArgs, pattern: &str, payload: usize) {
    note(&format!(
        "pubsub: {} publishers, {} subscribers of {pattern}, {payload}-byte messages, {}, {} warmup + {} measured",
        a.publishers,
        a.subscribers,
        a.rate.map_or("unpaced".to_owned(), |r| paced(r, a.tick)),
        humantime::format_duration(a.common.warmup),
        humantime::format_duration(a.common.duration),
    ));
}

/// "paced at R messages/s", and how: each message when due, or in bursts of a tick.
fn paced(rate: f64, tick: Duration) -> String {
    if tick.is_zero() {
        format!("paced at {rate} messages/s")
    } else {
        format!(
            "paced at {rate} messages/s in bursts every {}",
            humantime::format_duration(tick)
        )
    }
}

/// The figures both engines report.
fn summary(a: &PubsubArgs, payload: usize, published: &Published, received: &Received) -> Summary {
    let expected = published.total * a.subscribers as u64;
    let losses = expected.saturating_sub(received.total);
    let engine = a
        .engine
        .to_possible_value()
        .map(|v| v.get_name().to_owned());
    let mut s = Summary::new(
        "pubsub",
        format!(
            "pubsub: {} publishers, {} subscribers ({} pattern), {payload}-byte messages{}, {}",
            a.publishers,
            a.subscribers,
            a.pattern.name(),
            a.rate
                .map(|r| format!(", {}", paced(r, a.tick)))
                .unwrap_or_default(),
            engine.as_deref().unwrap_or_default(),
        ),
    );
    s.set("engine", engine.unwrap_or_default())
        .set("publishers", a.publishers)
        .set("subscribers", a.subscribers)
        .set("pattern", a.pattern.name())
        .set("payload_bytes", payload)
        .set("rate_target", a.rate.map_or(Value::Null, Value::from))
        .set(
            "tick_us",
            a.rate
                .map_or(Value::Null, |_| Value::from(a.tick.as_micros() as u64)),
        )
        .set("duration_s", a.common.duration.as_secs_f64())
        .set("published", published.in_window)
        .set(
            "published_per_s",
            per_second(published.in_window, a.common.duration),
        )
        .set("delivered", received.in_window)
        .set(
            "delivered_per_s",
            per_second(received.in_window, a.common.duration),
        )
        .set("published_total", published.total)
        .set("expected_deliveries", expected)
        .set("received_deliveries", received.total)
        .set("losses", losses)
        .set("out_of_order", received.out_of_order)
        .set("latency_us", received.latency.summary_us());
    s
}

/// Publishes until the end of the run, paced if told to.
async fn publish(
    client: Client,
    topic: String,
    index: u32,
    payload: usize,
    pace: Option<Pace>,
    plan: Arc<Plan>,
) -> Result<Published, String> {
    let mut message = vec![0x2au8; payload];
    message[8..12].copy_from_slice(&index.to_be_bytes());
    let mut done = Published {
        total: 0,
        in_window: 0,
    };
    let start = Instant::now();
    loop {
        if let Some(pace) = pace {
            // The messages due by now go out together; then sleep until the next are due.
            let (due, next) = pace.due(start.elapsed(), done.total);
            if done.total >= due {
                tokio::time::sleep_until((start + next).into()).await;
                continue;
            }
        } else if done.total % BURST == BURST - 1 {
            tokio::task::yield_now().await;
        }
        let now = Instant::now();
        if now >= plan.end {
            break;
        }
        message[..8].copy_from_slice(&plan.ns_since_origin(now).to_be_bytes());
        message[12..20].copy_from_slice(&done.total.to_be_bytes());
        client
            .publish(&topic, &message)
            .await
            .map_err(|e| e.to_string())?;
        done.total += 1;
        if now >= plan.measure_from {
            done.in_window += 1;
        }
        plan.progress.add(0, 1);
    }
    // Everything published is routed once the gateway answers a PING sent after it.
    client.flush().await.map_err(|e| e.to_string())?;
    Ok(done)
}

/// Receives until told to stop, timing and checking each delivery.
async fn receive(mut sub: Subscription, plan: Arc<Plan>, publishers: usize) -> Received {
    let mut got = Received::default();
    let mut next_seq = vec![0u64; publishers];
    loop {
        let stopped = plan.stopped.notified();
        if plan.stop.load(Ordering::Acquire) {
            break;
        }
        let delivery = tokio::select! {
            d = sub.next() => d,
            () = stopped => break,
        };
        let Some(d) = delivery else { break };
        plan.progress.add(1, 1);
        got.note(
            &d.payload,
            plan.origin,
            plan.measure_from,
            plan.end,
            &mut next_seq,
        );
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_tick_each_message_is_due_at_its_own_time() {
        let pace = Pace {
            rate: 1000.0,
            tick: Duration::ZERO,
        };
        assert_eq!(
            pace.due(Duration::from_micros(2500), 0),
            (2, Duration::from_millis(3))
        );
        // Behind: the next is due once the late ones are out.
        assert_eq!(
            pace.due(Duration::from_micros(2500), 2),
            (2, Duration::from_millis(3))
        );
        assert_eq!(
            pace.due(Duration::from_micros(2500), 5),
            (2, Duration::from_millis(6))
        );
    }

    #[test]
    fn with_a_tick_the_messages_of_a_tick_are_due_at_its_start() {
        let pace = Pace {
            rate: 1000.0,
            tick: Duration::from_millis(10),
        };
        // From 0 to 10 ms: the ten messages of the first tick, the next due at 10 ms.
        assert_eq!(pace.due(Duration::ZERO, 0), (10, Duration::from_millis(10)));
        assert_eq!(
            pace.due(Duration::from_micros(9_999), 10),
            (10, Duration::from_millis(10))
        );
        assert_eq!(
            pace.due(Duration::from_millis(10), 10),
            (20, Duration::from_millis(20))
        );
        assert_eq!(
            pace.due(Duration::from_millis(35), 20),
            (40, Duration::from_millis(40))
        );
    }
}
