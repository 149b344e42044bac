//! Drives one shard (the sans-IO state machine, no sockets) with sessions whose streams carry
//! arbitrary bytes, as the driver does with a client's QUIC connections.
//!
//! Input: a sequence of operations, each an op byte and its arguments:
//! - open a session (at most 8 live);
//! - hand a session a piece of its stream: a length byte, then that many bytes;
//! - send a session a CONNECT to the default realm (so that inputs reach admitted sessions
//!   without spelling one out), as node `id`;
//! - end a session's stream (FIN, reset or STOP_SENDING), or close its connection;
//! - let a session stop or resume reading what the shard sends it;
//! - move the clock on by up to 2.55 s, firing the shard's timers.
//!
//! Checked for every input:
//! - the shard never panics, and everything it sends a session is valid frames that decode;
//! - once every session has closed and the clock has run on past every timeout, the shard
//!   holds no state (its occupancy is empty) and the gateway counts no client.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use meshgate_protocol::wire::{Connect, FrameReader, Message};
use meshgate_shard::{Config, NodeId, Occupancy, SessionKey, Shard, ShardId, StreamEnd, Time};

/// Live sessions at most.
const SESSIONS: usize = 8;

struct Session {
    key: SessionKey,
    reader: FrameReader,
    reading: bool,
}

struct Run {
    shard: Shard,
    now: Time,
    sessions: Vec<Session>,
}

impl Run {
    fn new() -> Run {
        let mut config = Config::new(ShardId(0), 1, NodeId([0xee; 32]));
        config.limits.max_clients = 6;
        config.limits.max_subscriptions = 4;
        config.limits.max_registrations = 4;
        config.limits.max_pending_calls = 16;
        config.limits.max_output = 2_048;
        config.limits.max_frame = 4_096;
        config.limits.call_timeout = Duration::from_millis(200);
        config.limits.slow_consumer_timeout = Duration::from_millis(400);
        config.limits.prune_interval = Duration::from_secs(1);
        config.limits.service_ttl = Duration::from_secs(5);
        config.limits.connect_timeout = Duration::from_secs(2);
        config.validate().expect("a valid config");
        let now = Time::from_millis(1_000_000);
        Run {
            shard: Shard::new(config, now),
            now,
            sessions: Vec::new(),
        }
    }

    /// Hands the shard's output to the sessions that read, and closes those it closes.
    fn settle(&mut self) {
        while self.shard.poll_ready().is_some() {}
        for s in &mut self.sessions {
            if s.reading {
                let out = self.shard.output(s.key).to_vec();
                self.shard.consume_output(s.key, out.len());
                take(&mut s.reader, &out);
            }
        }
        while let Some((key, _reason)) = self.shard.poll_close() {
            if let Some(i) = self.sessions.iter().position(|s| s.key == key) {
                let mut s = self.sessions.swap_remove(i);
                // The driver flushes what the session has left, then closes the connection.
                let out = self.shard.output(key).to_vec();
                take(&mut s.reader, &out);
            }
            self.shard.handle_session_closed(self.now, key);
        }
        while self.shard.poll_event().is_some() {}
        while self.shard.poll_driver_timer().is_some() {}
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) = self.shard.next_deadline().filter(|&at| at <= end) {
            self.now = self.now.max(at);
            self.shard.handle_timeout(self.now);
            self.settle();
        }
        self.now = end;
        self.shard.handle_timeout(self.now);
        self.settle();
    }
}

/// Reads frames the shard sent: each must be whole, valid and decodable.
fn take(reader: &mut FrameReader, bytes: &[u8]) {
    reader.push(bytes).expect("the shard sends valid frames");
    while let Some(frame) = reader.next_frame().expect("the shard sends valid frames") {
        Message::decode(frame.frame_type, frame.payload).expect("the shard sends decodable frames");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut run = Run::new();
    let mut input = data.iter().copied();
    while let Some(op) = input.next() {
        let pick = |run: &Run, b: Option<u8>| {
            let n = run.sessions.len();
            (n > 0).then(|| usize::from(b.unwrap_or(0)) % n)
        };
        match op % 8 {
            0 => {
                if run.sessions.len() < SESSIONS {
                    let key = run.shard.handle_session_open(run.now);
                    run.sessions.push(Session {
                        key,
                        reader: FrameReader::new(u32::MAX),
                        reading: true,
                    });
                }
            }
            // Stream bytes: two op values of the eight, so the likeliest operation.
            1 | 2 => {
                let target = pick(&run, input.next());
                let len = usize::from(input.next().unwrap_or(0));
                let bytes: Vec<u8> = input.by_ref().take(len).collect();
                if let Some(i) = target {
                    let key = run.sessions[i].key;
                    run.shard.handle_stream_data(run.now, key, &bytes);
                }
            }
            3 => {
                let target = pick(&run, input.next());
                let id = input.next().unwrap_or(0);
                if let Some(i) = target {
                    let mut frame = Vec::new();
                    Message::Connect(Connect {
                        version: b"1.0",
                        node_id: NodeId([id; 32]),
                        realm: b"macula.default",
                        capabilities: None,
                        token: None,
                    })
                    .encode(&mut frame);
                    let key = run.sessions[i].key;
                    run.shard.handle_stream_data(run.now, key, &frame);
                }
            }
            4 => {
                let target = pick(&run, input.next());
                let how = input.next().unwrap_or(0);
                if let Some(i) = target {
                    let key = run.sessions[i].key;
                    let end = [
                        StreamEnd::Finished,
                        StreamEnd::Reset,
                        StreamEnd::StopSending,
                    ];
                    run.shard
                        .handle_stream_end(run.now, key, end[usize::from(how) % end.len()]);
                }
            }
            5 => {
                if let Some(i) = pick(&run, input.next()) {
                    let s = run.sessions.swap_remove(i);
                    run.shard.handle_session_closed(run.now, s.key);
                }
            }
            6 => {
                if let Some(i) = pick(&run, input.next()) {
                    run.sessions[i].reading = !run.sessions[i].reading;
                }
            }
            _ => {
                let ms = u64::from(input.next().unwrap_or(0)) * 10;
                run.advance(Duration::from_millis(ms));
            }
        }
        run.settle();
    }

    for s in std::mem::take(&mut run.sessions) {
        run.shard.handle_session_closed(run.now, s.key);
    }
    run.advance(Duration::from_secs(120));
    assert_eq!(
        run.shard.occupancy(),
        Occupancy::default(),
        "the shard holds state after every session closed"
    );
    let counts = &run.shard.config().counts;
    assert_eq!(
        (counts.clients.get(), counts.handshakes.get()),
        (0, 0),
        "the gateway counts clients or handshakes after every session closed"
    );
});
