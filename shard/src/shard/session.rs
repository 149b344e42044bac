//! Sessions: their state, the frames read from them and the output queued to them.
//!
//! Output has one rule, [`Shard::mark_ready`]: a session that got output is queued for the
//! driver once, and its slow spell starts when the output reaches `--max-output`
//! ([`Shard::on_slow_consumer_timeout`]).
//! Every frame reaches a session through [`Shard::write`] (frames never dropped) or
//! [`Shard::queue_output`] (frames already encoded), and both end with that rule.

use std::time::Duration;

use crate::ids::{NodeId, RealmId, SessionKey, Time};
use crate::router::{CallError, ErrorCode};
use crate::wheel::TimerKey;
use crate::wire::{
    CallIdRef, ErrorMsg, FrameReader, FrameType, Message, Outcome, Ping, Reason, Reply,
};

use super::barrier::Barrier;
use super::{Shard, StreamEnd, Timer};

/// Where a session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    AwaitingConnect,
    /// CONNECT sent to the node's owner; frames after it wait in the reader.
    Admitting,
    Active,
    /// Ended: only its last output is left, until the driver reports the connection closed.
    Closing,
}

/// A session on its home shard.
pub(super) struct Session {
    pub(super) state: State,
    pub(super) realm: RealmId,
    pub(super) node: NodeId,
    pub(super) reader: FrameReader,
    pub(super) out: OutBuf,
    /// The connect timeout before admission; the slow-consumer timer after.
    pub(super) timer: Option<TimerKey>,
    /// When the output last went from its bound to under it.
    pub(super) left_bound: Time,
    /// Where the window of the slow spell's next check starts: the last quarter of the
    /// timeout for the first, the check before for the next ones.
    pub(super) watch_from: Time,
    /// Whether the node's owner may hold a directory entry for this session.
    pub(super) in_directory: bool,
    /// Whether the session ever registered a procedure: its end is then told to every shard.
    pub(super) provider: bool,
    /// Whether the session is in the `ready` queue.
    pub(super) queued: bool,
    /// The client finished its side of the control stream: the session ends once the frames
    /// before the end are handled.
    pub(super) finished: bool,
    pub(super) patterns: Vec<Box<[u8]>>,
    pub(super) procedures: Vec<Box<[u8]>>,
    pub(super) barrier: Barrier,
}

/// Bytes queued to a session: appended at the end, consumed from `start`. A drained buffer
/// keeps its capacity, so that a busy session does not grow it again for every burst; the
/// driver releases it once the session has gone quiet ([`OutBuf::shrink`]).
#[derive(Default)]
pub(super) struct OutBuf {
    pub(super) buf: Vec<u8>,
    start: usize,
}

impl OutBuf {
    pub(super) fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.len() / 2 && self.start > 4096 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Releases the capacity of a drained buffer (a buffer still holding bytes keeps it).
    pub(super) fn shrink(&mut self) {
        if self.len() == 0 {
            self.buf = Vec::new();
            self.start = 0;
        }
    }
}

impl Shard {
    /// A new session, waiting for CONNECT until the connect timeout.
    pub(super) fn open_session(&mut self) -> SessionKey {
        let key = self.sessions.vacant_key();
        let timer = self.wheel.insert(
            self.now + self.config.limits.connect_timeout,
            Timer::Connect(key),
        );
        let inserted = self.sessions.insert(Session {
            state: State::AwaitingConnect,
            realm: RealmId(0),
            node: NodeId([0; 32]),
            reader: FrameReader::new(self.config.limits.max_frame),
            out: OutBuf::default(),
            timer: Some(timer),
            left_bound: Time::ZERO,
            watch_from: Time::ZERO,
            in_directory: false,
            provider: false,
            queued: false,
            finished: false,
            patterns: Vec::new(),
            procedures: Vec::new(),
            barrier: Barrier::default(),
        });
        debug_assert_eq!(inserted, key, "vacant_key predicts the insert");
        self.connecting += 1;
        self.config.counts.handshakes.take();
        key
    }

    pub(super) fn read_stream(&mut self, key: SessionKey, data: &[u8]) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.state == State::Closing {
            return;
        }
        if let Err(e) = s.reader.push(data) {
            self.close(key, e.reason(), &e.to_string());
            return;
        }
        self.process_frames(key);
    }

    pub(super) fn stream_ended(&mut self, key: SessionKey, end: StreamEnd) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.finished = true;
        match end {
            StreamEnd::Finished => self.process_frames(key),
            StreamEnd::Reset | StreamEnd::StopSending => self.end_stream(key),
        }
    }

    pub(super) fn connection_closed(&mut self, key: SessionKey) {
        if let Some(s) = self.sessions.get(key) {
            if s.state != State::Closing {
                self.end(key, Reason::Normal);
            }
            self.sessions.remove(key);
        }
    }

    /// `n` bytes of the session's output were sent: once under its bound, the frames held
    /// back are handled; once down to half of it, the session has caught up, its slow spell
    /// is over and its slow-consumer timer stops (see [`Self::on_slow_consumer_timeout`]).
    pub(super) fn output_consumed(&mut self, key: SessionKey, n: usize) {
        let max_output = self.config.limits.max_output;
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let was_at_bound = s.out.len() >= max_output;
        s.out.consume(n);
        if s.state == State::Active && s.out.len() < max_output {
            if was_at_bound {
                s.left_bound = self.now;
            }
            if s.out.len() <= max_output / 2 {
                if let Some(timer) = s.timer.take() {
                    self.wheel.cancel(timer);
                }
            }
            if s.reader.has_frame() {
                // Frames held back while the output was over its bound.
                self.process_frames(key);
            }
        }
    }

    /// Releases the capacity of the session's output buffer if it is drained.
    pub(super) fn shrink_session_output(&mut self, key: SessionKey) {
        if let Some(s) = self.sessions.get_mut(key) {
            s.out.shrink();
        }
    }

    /// Bytes queued to this shard's sessions.
    pub(super) fn output_bytes(&self) -> usize {
        self.sessions.iter().map(|(_, s)| s.out.len()).sum()
    }

    /// Decodes and handles the frames buffered for a session, while it is in a state to take
    /// them (an admitting session keeps them until it is admitted).
    pub(super) fn process_frames(&mut self, key: SessionKey) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let mut reader = std::mem::take(&mut s.reader);
        // While the session's output is over its bound, no further frame is handled: what the
        // client sends cannot grow its own output (PONG, ERROR, REPLY) without bound.
        let max_output = self.config.limits.max_output;
        while let Some(State::AwaitingConnect | State::Active) = self
            .sessions
            .get(key)
            .filter(|s| s.out.len() < max_output)
            .map(|s| s.state)
        {
            let frame = match reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.close(key, e.reason(), &e.to_string());
                    break;
                }
            };
            match Message::decode(frame.frame_type, frame.payload) {
                Ok(msg) => self.handle_message(key, msg),
                Err(e) => {
                    self.close(key, e.reason(), &e.to_string());
                    break;
                }
            }
        }
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.state == State::Closing {
            return;
        }
        s.reader = reader;
        if s.finished && s.state != State::Admitting && !s.reader.has_frame() {
            self.end_stream(key);
        }
    }

    /// Ends a session whose client ended its control stream.
    fn end_stream(&mut self, key: SessionKey) {
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        if s.reader.is_mid_frame() {
            let message = "the control stream ended inside a frame";
            self.close(key, Reason::ProtocolError, message);
        } else {
            self.close(key, Reason::Normal, "");
        }
    }

    /// One frame from a session's client, to the feature it belongs to.
    fn handle_message(&mut self, key: SessionKey, msg: Message<'_>) {
        let Some(state) = self.sessions.get(key).map(|s| s.state) else {
            return;
        };
        if state == State::AwaitingConnect {
            match msg {
                Message::Connect(c) => self.on_connect(key, c.realm, c.node_id, c.token),
                _ => self.close(
                    key,
                    Reason::ProtocolError,
                    "the first frame must be CONNECT",
                ),
            }
            return;
        }
        match msg {
            Message::Ping(Ping { timestamp, mesh }) => self.on_ping(key, timestamp, mesh),
            Message::Pong(_) => {}
            Message::Disconnect(_) => self.close(key, Reason::Normal, ""),
            Message::Publish(p) => self.on_publish(key, p),
            Message::Subscribe(s) => self.on_subscribe(key, s.topics),
            Message::Unsubscribe(u) => self.on_unsubscribe(key, u.topics),
            Message::Register(r) => self.on_register(key, r),
            Message::Unregister(u) => self.on_unregister(key, u.procedure),
            Message::Call(c) => self.on_call(key, c),
            Message::Reply(r) => self.on_reply(key, r),
            Message::Connect(_) => self.close(key, Reason::ProtocolError, "CONNECT sent twice"),
            Message::Error(_) | Message::Cancel(_) => self.close(
                key,
                Reason::ProtocolError,
                "ERROR and CANCEL travel from server to client only",
            ),
        }
    }

    /// The session's slow spell, from reaching its bound until draining to half of it, has
    /// lasted the timeout: it is a slow consumer if its output is at its bound, or left it
    /// within the last quarter of the timeout (a client that takes a little at a time dips
    /// under its bound and is filled up again at once). One that has stayed under it is
    /// checked again a quarter of the timeout later, for what it did since this check.
    pub(super) fn on_slow_consumer_timeout(&mut self, key: SessionKey) {
        let limits = &self.config.limits;
        let quarter = limits.slow_consumer_timeout / 4;
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.timer = None;
        if s.state != State::Active {
            return;
        }
        if s.out.len() >= limits.max_output || s.left_bound >= s.watch_from {
            let message = "output over its bound for too long";
            self.close(key, Reason::SlowConsumer, message);
        } else {
            s.watch_from = self.now;
            let at = self.now + quarter.max(Duration::from_millis(1));
            s.timer = Some(self.wheel.insert(at, Timer::SlowConsumer(key)));
        }
    }

    // ---------------------------------------------------------------------------------------
    // Output
    // ---------------------------------------------------------------------------------------

    /// Appends a frame to a session's output. Used for frames that are never dropped (replies,
    /// errors, PONG, DISCONNECT, CANCEL).
    pub(super) fn write(&mut self, key: SessionKey, msg: &Message<'_>) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        msg.encode(&mut s.out.buf);
        self.mark_ready(key);
    }

    /// Appends frames already encoded (a PUBLISH, a forwarded CALL) to a session's output.
    /// Whether they may be dropped is the caller's rule.
    pub(super) fn queue_output(&mut self, key: SessionKey, frames: &[u8]) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.out.buf.extend_from_slice(frames);
        self.mark_ready(key);
    }

    /// Queues a session that got output for the driver, and starts its slow-consumer timer
    /// if the output is at its bound and no slow spell is on.
    pub(super) fn mark_ready(&mut self, key: SessionKey) {
        let limits = &self.config.limits;
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if !s.queued {
            s.queued = true;
            self.ready.push_back(key);
        }
        if s.state == State::Active && s.timer.is_none() && s.out.len() >= limits.max_output {
            let timeout = limits.slow_consumer_timeout;
            s.watch_from = self.now + (timeout - timeout / 4);
            let at = self.now + timeout;
            s.timer = Some(self.wheel.insert(at, Timer::SlowConsumer(key)));
        }
    }

    /// ERROR `code` with its message, answering a frame of type `answers`; the session goes on.
    pub(super) fn send_error(
        &mut self,
        key: SessionKey,
        code: ErrorCode,
        answers: FrameType,
        topic: Option<&[u8]>,
        procedure: Option<&[u8]>,
    ) {
        self.send_error_message(key, code, code.message(), answers, topic, procedure);
    }

    /// ERROR `code` with a message of the caller's.
    pub(super) fn send_error_message(
        &mut self,
        key: SessionKey,
        code: ErrorCode,
        message: &str,
        answers: FrameType,
        topic: Option<&[u8]>,
        procedure: Option<&[u8]>,
    ) {
        let error = ErrorMsg {
            code: code.as_str().as_bytes(),
            message: message.as_bytes(),
            frame_type: answers as u64,
            topic,
            procedure,
        };
        self.write(key, &Message::Error(error));
    }

    /// REPLY with the error the gateway itself made of a call.
    pub(super) fn reply_error(
        &mut self,
        key: SessionKey,
        call_id: Option<CallIdRef<'_>>,
        error: CallError,
    ) {
        let outcome = Outcome::Error {
            code: error.code().as_bytes(),
            message: Some(error.message().as_bytes()),
        };
        self.write(key, &Message::Reply(Reply { call_id, outcome }));
    }
}

#[cfg(test)]
mod tests {
    use super::OutBuf;

    #[test]
    fn a_drained_output_buffer_keeps_its_capacity_until_it_is_shrunk() {
        let mut out = OutBuf::default();
        out.buf.extend_from_slice(&[7; 40_000]);
        out.consume(30_000);
        assert_eq!(out.bytes(), &[7; 10_000][..]);
        out.shrink();
        assert_eq!(out.len(), 10_000, "a buffer holding bytes keeps them");
        out.consume(10_000);
        assert_eq!(out.len(), 0);
        assert!(out.buf.capacity() >= 40_000, "the next burst reuses it");
        out.shrink();
        assert_eq!(out.buf.capacity(), 0);
        out.buf.extend_from_slice(b"next");
        assert_eq!(out.bytes(), b"next");
    }
}
