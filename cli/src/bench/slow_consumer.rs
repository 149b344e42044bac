//! `bench slow-consumer`: a subscriber that stops reading while publishers go on.
//!
//! The slow subscriber subscribes, then reads nothing: once its client has buffered a QUIC
//! receive window of data (`--slow-window`, by default the client library's 8 MiB), flow
//! control stops the gateway's sends, and the gateway's queue to it grows to `--max-output`,
//! past which its PUBLISH frames are dropped and, after `--slow-consumer-timeout`, it is
//! disconnected with `slow_consumer`. (The traffic must be over that window for the gateway
//! to see anything.) `--readers` other subscribers read normally all along. The gateway's
//! metrics are read every `--sample-every`; its memory counts as bounded when its peak growth
//! stays within 4 × `--max-output` + 16 MiB (room for the QUIC buffers and the allocator).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use meshgate_client::{Client, ClientConfig, Overflow, Subscription};
use serde_json::{Map, Value};
use tokio::task::JoinSet;

use super::chart::{self, Sample};
use super::metrics::{scrape, Scrape};
use super::report::{note, per_second, round, Progress, Summary};
use super::rpc::close_all;
use super::{connect, run_tag, Common};
use crate::args::parse_duration;

/// Room beyond the output bounds for QUIC buffers and allocator slack.
const SLACK: u64 = 16 << 20;
const DROPPED: &str = "meshgate_dropped_total{reason=\"slow_consumer\"}";
const CLOSED: &str = "meshgate_sessions_closed_total{reason=\"slow_consumer\"}";

#[derive(Args, Debug, Clone)]
pub struct SlowConsumerArgs {
    #[command(flatten)]
    pub common: Common,
    /// Publisher sessions.
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Subscribers that read normally next to the slow one.
    #[arg(long, default_value_t = 1)]
    pub readers: usize,
    /// Bytes of each message.
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    /// Messages per second in all; without it the publishers go as fast as they can.
    #[arg(long)]
    pub rate: Option<f64>,
    /// The slow subscriber's QUIC receive window, in bytes: what the gateway can send it
    /// before flow control stops the sends and its queue there starts to grow.
    #[arg(long, default_value_t = ClientConfig::default().receive_window)]
    pub slow_window: u32,
    /// The gateway's --max-output, to compare its memory growth with.
    #[arg(long, default_value_t = 4_194_304)]
    pub max_output: u64,
    /// Time between two readings of the gateway's metrics.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// Write a chart of resident memory and live sessions over time to this SVG file.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// Write the metrics readings to this CSV file.
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,
}

pub async fn run(a: &SlowConsumerArgs) -> Result<Summary, String> {
    if a.publishers == 0 {
        return Err("--publishers must be at least 1".into());
    }
    if a.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be a positive number of messages per second".into());
    }
    if a.slow_window == 0 {
        return Err("--slow-window must be at least 1 byte".into());
    }
    if a.sample_every.is_zero() {
        return Err("--sample-every must be more than 0".into());
    }
    let metrics = &a.common.metrics;
    let base = a.common.client_config()?;
    let topic = format!("bench.{}.slow", run_tag());
    let baseline = scrape(metrics).await?;

    // The slow subscriber: a buffer of one delivery, and a client that waits for room.
    let slow_config = ClientConfig {
        subscription_capacity: 1,
        subscription_overflow: Overflow::Wait,
        receive_window: a.slow_window,
        ..base.clone()
    };
    let slow = connect(&slow_config)
        .await
        .map_err(|e| format!("slow subscriber: {e}"))?;
    let slow_sub = slow
        .subscribe([topic.clone()])
        .await
        .map_err(|e| format!("subscribe {topic}: {e}"))?;
    let progress = Progress::new(&["published", "read"], Duration::ZERO);
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::with_capacity(a.readers);
    let mut reading = JoinSet::new();
    for _ in 0..a.readers {
        let c = connect(&base).await.map_err(|e| format!("reader: {e}"))?;
        let sub = c
            .subscribe([topic.clone()])
            .await
            .map_err(|e| format!("subscribe {topic}: {e}"))?;
        reading.spawn(read(sub, progress.clone(), stop.clone()));
        readers.push(c);
    }
    let mut publishers = Vec::with_capacity(a.publishers);
    for _ in 0..a.publishers {
        publishers.push(
            connect(&base)
                .await
                .map_err(|e| format!("publisher: {e}"))?,
        );
    }
    note(&format!(
        "slow-consumer: {} publishers of {}-byte messages ({}), 1 subscriber that reads nothing, {} that read, for {}",
        a.publishers,
        a.payload,
        a.rate.map_or("unpaced".to_owned(), |r| format!("{r} messages/s")),
        a.readers,
        humantime::format_duration(a.common.duration)
    ));

    let start = Instant::now();
    let end = start + a.common.duration;
    let line = progress.show();
    let per_publisher = a.rate.map(|r| r / a.publishers as f64);
    let mut publishing = JoinSet::new();
    for p in &publishers {
        publishing.spawn(publish(
            p.clone(),
            topic.clone(),
            a.payload,
            per_publisher,
            end,
            progress.clone(),
        ));
    }
    let mut samples = vec![sample(&baseline, 0.0, 0)];
    let mut peak_output = 0u64;
    let mut disconnected_after: Option<Duration> = None;
    let mut tick = tokio::time::interval(a.sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    while Instant::now() < end {
        tick.tick().await;
        let Ok(s) = scrape(metrics).await else {
            continue;
        };
        let t = start.elapsed();
        samples.push(sample(&s, t.as_secs_f64(), progress.count(0)));
        peak_output = peak_output.max(s.value("meshgate_output_bytes"));
        if disconnected_after.is_none() && s.value(CLOSED) > baseline.value(CLOSED) {
            disconnected_after = Some(t);
        }
    }
    let mut publish_error = None;
    while let Some(done) = publishing.join_next().await {
        if let Err(e) = done.map_err(|e| e.to_string()).and_then(|r| r) {
            publish_error.get_or_insert(e);
        }
    }
    // The readers get every message: wait while the last ones keep coming.
    let expected = progress.count(0) * a.readers as u64;
    let mut last = (progress.count(1), Instant::now());
    while progress.count(1) < expected && last.1.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if progress.count(1) != last.0 {
            last = (progress.count(1), Instant::now());
        }
    }
    stop.store(true, Ordering::Release);
    drop(line);
    let last = scrape(metrics).await?;
    if disconnected_after.is_none() && last.value(CLOSED) > baseline.value(CLOSED) {
        disconnected_after = Some(start.elapsed());
    }
    samples.push(sample(
        &last,
        start.elapsed().as_secs_f64(),
        progress.count(0),
    ));
    // The slow subscriber's client waits for room in its buffer: letting go of the
    // subscription frees it to see the end of its session.
    drop(slow_sub);
    reading.abort_all();
    close_all(publishers.into_iter().chain(readers).chain([slow])).await;
    if let Some(e) = publish_error {
        return Err(format!("a publisher failed: {e}"));
    }

    let title = format!(
        "meshgate slow consumer: {} publishers, {}-byte messages",
        a.publishers, a.payload
    );
    if let Some(path) = &a.svg {
        std::fs::write(path, chart::svg(&samples, &title))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &a.csv {
        std::fs::write(path, chart::csv(&samples, "published"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let peak = samples.iter().map(|s| s.resident).max().unwrap_or(0);
    let growth = peak.saturating_sub(baseline.resident());
    let published = progress.count(0);
    let mut memory = Map::new();
    memory.insert("baseline".into(), baseline.resident().into());
    memory.insert("peak".into(), peak.into());
    memory.insert("end".into(), last.resident().into());
    let mut s = Summary::new(
        "slow-consumer",
        title.trim_start_matches("meshgate ").to_owned(),
    );
    s.set("publishers", a.publishers)
        .set("readers", a.readers)
        .set("payload_bytes", a.payload)
        .set("duration_s", a.common.duration.as_secs_f64())
        .set("published", published)
        .set("published_per_s", per_second(published, a.common.duration))
        .set("read_by_readers", progress.count(1))
        .set("reader_losses", expected.saturating_sub(progress.count(1)))
        .set("memory_bytes", Value::Object(memory))
        .set("peak_growth_bytes", growth)
        .set("max_output_bytes", a.max_output)
        .set(
            "growth_over_max_output",
            round(growth as f64 / a.max_output.max(1) as f64, 2),
        )
        .set(
            "bounded",
            growth <= a.max_output.saturating_mul(4).saturating_add(SLACK),
        )
        .set("peak_output_bytes", peak_output)
        .set(
            "dropped_slow_consumer",
            last.value(DROPPED).saturating_sub(baseline.value(DROPPED)),
        )
        .set("disconnected", disconnected_after.is_some())
        .set(
            "disconnected_after_s",
            disconnected_after.map_or(Value::Null, |d| round(d.as_secs_f64(), 2).into()),
        );
    Ok(s)
}

fn sample(s: &Scrape, t: f64, done: u64) -> Sample {
    Sample {
        t,
        resident: s.resident(),
        clients: s.value("meshgate_clients"),
        done,
    }
}

/// Publishes until `end`, paced at `rate` messages per second if given.
async fn publish(
    client: Client,
    topic: String,
    payload: usize,
    rate: Option<f64>,
    end: Instant,
    progress: Arc<Progress>,
) -> Result<(), String> {
    let message = vec![0x2au8; payload];
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        if let Some(rate) = rate {
            if sent >= (start.elapsed().as_secs_f64() * rate) as u64 {
                let next = start + Duration::from_secs_f64((sent + 1) as f64 / rate);
                tokio::time::sleep_until(next.into()).await;
                continue;
            }
        } else if sent % 64 == 63 {
            tokio::task::yield_now().await;
        }
        if Instant::now() >= end {
            // Everything published is routed once the gateway answers a PING sent after it.
            return client.flush().await.map_err(|e| e.to_string());
        }
        client
            .publish(&topic, &message)
            .await
            .map_err(|e| e.to_string())?;
        sent += 1;
        progress.add(0, 1);
    }
}

/// Reads deliveries until told to stop.
async fn read(mut sub: Subscription, progress: Arc<Progress>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        match sub.next().await {
            Some(_) => progress.add(1, 1),
            None => break,
        }
    }
}
