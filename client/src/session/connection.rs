//! One connection after another: the handshake and CONNECT, the reader and writer tasks of
//! a session, and the supervisor that reconnects with backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_protocol::wire::{Connect, FrameReader, Message, Ping, Reason};
use meshgate_protocol::NodeId;

use super::{lock, lossy, ConnectionState, Link, ReadContext, Shared};
use crate::config::ClientConfig;
use crate::error::ClientError;

/// How long a closing client waits for the gateway to close the connection after DISCONNECT.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Frames from the gateway may exceed `max_frame` by what the gateway adds (the publisher).
const RECEIVE_SLACK: u32 = 64 * 1024;

/// A connection whose session the gateway admitted.
pub(crate) struct Established {
    pub(super) conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Holds any bytes that followed the gateway's answer.
    reader: FrameReader,
    pub(super) server: NodeId,
}

/// The QUIC handshake, the control stream, CONNECT, and the gateway's answer.
pub(super) async fn establish(
    config: &ClientConfig,
    endpoint: &quinn::Endpoint,
    quic: &quinn::ClientConfig,
) -> Result<Established, ClientError> {
    let attempt = async {
        let conn = endpoint
            .connect_with(quic.clone(), config.server, &config.server_name)?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut frame = Vec::new();
        Message::Connect(Connect {
            version: b"1.0",
            node_id: config.node_id,
            realm: config.realm.as_bytes(),
            capabilities: None,
            token: config.token.as_deref().map(str::as_bytes),
        })
        .encode(&mut frame);
        if send.write_all(&frame).await.is_err() {
            return Err(refusal(&conn));
        }
        let mut reader = FrameReader::new(config.max_frame.saturating_add(RECEIVE_SLACK));
        loop {
            let mut server = None;
            loop {
                let frame = reader
                    .next_frame()
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                let Some(frame) = frame else { break };
                match Message::decode(frame.frame_type, frame.payload) {
                    Ok(Message::Pong(p)) => {
                        server = Some(p.node_id.ok_or_else(|| {
                            ClientError::Protocol("the answer to CONNECT has no node_id".into())
                        })?);
                        break;
                    }
                    Ok(Message::Disconnect(d)) => {
                        return Err(ClientError::Refused {
                            reason: Reason::from_wire(d.reason).unwrap_or(Reason::ProtocolError),
                            message: d.message.map(lossy).unwrap_or_default(),
                        })
                    }
                    Ok(_) => {}
                    Err(e) => return Err(ClientError::Protocol(e.to_string())),
                }
            }
            if let Some(server) = server {
                return Ok(Established {
                    conn,
                    send,
                    recv,
                    reader,
                    server,
                });
            }
            match recv.read_chunk(usize::MAX, true).await {
                // A bad header is reported by `next_frame`, after the frames before it.
                Ok(Some(chunk)) => {
                    let _ = reader.push(&chunk.bytes);
                }
                Ok(None) | Err(_) => return Err(refusal(&conn)),
            }
        }
    };
    tokio::time::timeout(config.connect_timeout, attempt)
        .await
        .unwrap_or(Err(ClientError::Timeout))
}

/// Why the gateway ended a connection before answering CONNECT.
fn refusal(conn: &quinn::Connection) -> ClientError {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            match Reason::from_close_code(close.error_code.into_inner()) {
                Some(reason) => ClientError::Refused {
                    reason,
                    message: lossy(&close.reason),
                },
                None => quinn::ConnectionError::ApplicationClosed(close).into(),
            }
        }
        Some(e) => e.into(),
        None => {
            ClientError::Protocol("the gateway ended the stream before answering CONNECT".into())
        }
    }
}

/// How the reader task ended.
struct ReadEnd {
    /// The reason of a DISCONNECT received.
    disconnect: Option<Reason>,
    /// The gateway broke the protocol.
    protocol: Option<String>,
}

/// Reads the control stream until it ends, dispatching every frame.
async fn read_loop(
    shared: Arc<Shared>,
    mut recv: quinn::RecvStream,
    mut reader: FrameReader,
) -> ReadEnd {
    let mut ctx = ReadContext::default();
    let protocol = loop {
        let frame = match reader.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => match recv.read_chunk(usize::MAX, true).await {
                // A bad header is reported by `next_frame`, after the frames before it.
                Ok(Some(chunk)) => {
                    let _ = reader.push(&chunk.bytes);
                    continue;
                }
                Ok(None) | Err(_) => break None,
            },
            Err(e) => break Some(e.to_string()),
        };
        match Message::decode(frame.frame_type, frame.payload) {
            Ok(msg) => shared.dispatch(msg, &mut ctx),
            Err(e) => break Some(e.to_string()),
        }
        for (tx, delivery) in ctx.blocked.drain(..) {
            // A subscription dropped meanwhile takes nothing more.
            let _ = tx.send(delivery).await;
        }
    };
    ReadEnd {
        disconnect: ctx.disconnect,
        protocol,
    }
}

/// Writes queued frames, many per stream write, and sends PING when idle and the
/// registrations' refresh when due. Returns the stream once DISCONNECT is written by a
/// closing client.
async fn write_loop(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
) -> Result<quinn::SendStream, quinn::WriteError> {
    let keep_alive = shared.config.keep_alive;
    let refresh_every = (shared.config.registration_ttl / 3).max(Duration::from_millis(100));
    let mut batch = Vec::new();
    let mut last_sent = Instant::now();
    let mut next_refresh = last_sent + refresh_every;
    loop {
        if Instant::now() >= next_refresh {
            shared.refresh_registrations();
            next_refresh = Instant::now() + refresh_every;
        }
        let closing = {
            let mut out = lock(&shared.out);
            std::mem::swap(&mut out.buf, &mut batch);
            out.link == Link::Closing
        };
        if !batch.is_empty() {
            send.write_all(&batch).await?;
            batch.clear();
            last_sent = Instant::now();
            shared.out_drained.notify_waiters();
            continue;
        }
        if closing {
            return Ok(send);
        }
        let wake = (last_sent + keep_alive).min(next_refresh);
        tokio::select! {
            () = shared.out_ready.notified() => {}
            () = tokio::time::sleep_until(wake.into()) => {
                if last_sent.elapsed() >= keep_alive {
                    let ping = Message::Ping(Ping::new(shared.next_id()));
                    let _ = shared.send_now(&ping);
                }
            }
        }
    }
}

/// Runs the client's connections, one after another, until the session is over for good.
pub(crate) async fn supervise(shared: Arc<Shared>, first: Established) {
    let mut est = first;
    let mut session = 1u64;
    loop {
        shared.state.send_replace(ConnectionState::Connected {
            session,
            server: est.server,
        });
        let conn = est.conn;
        *lock(&shared.conn) = Some(conn.clone());
        let mut reader = tokio::spawn(read_loop(shared.clone(), est.recv, est.reader));
        let mut writer = tokio::spawn(write_loop(shared.clone(), est.send));
        let ended = tokio::select! {
            ended = &mut reader => ended.ok(),
            written = &mut writer => match written {
                Ok(Ok(mut send)) => {
                    // DISCONNECT is written: the gateway closes the connection.
                    let _ = send.finish();
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
                    conn.close(quinn::VarInt::from_u32(0), Reason::Normal.as_str().as_bytes());
                    reader.abort();
                    shared.finish(Some(Reason::Normal));
                    return;
                }
                // The stream failed: the reader says why, once the connection is gone.
                _ => tokio::time::timeout(CLOSE_GRACE, &mut reader).await.ok().and_then(Result::ok),
            },
        };
        reader.abort();
        writer.abort();
        let ended = ended.unwrap_or(ReadEnd {
            disconnect: None,
            protocol: None,
        });
        let mut reason = ended.disconnect.or_else(|| match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(close)) => {
                Reason::from_close_code(close.error_code.into_inner())
            }
            _ => None,
        });
        if let Some(message) = &ended.protocol {
            reason = Some(Reason::ProtocolError);
            let code = quinn::VarInt::from_u64(Reason::ProtocolError.close_code());
            conn.close(
                code.unwrap_or(quinn::VarInt::from_u32(1)),
                message.as_bytes(),
            );
        } else {
            conn.close(quinn::VarInt::from_u32(0), b"");
        }
        if shared.closing.load(Ordering::Acquire) {
            shared.finish(Some(Reason::Normal));
            return;
        }
        if !shared.config.reconnect || reason == Some(Reason::Replaced) {
            shared.finish(reason);
            return;
        }
        shared.lose();
        match reconnect(&shared).await {
            Some(next) => est = next,
            None => return,
        }
        session += 1;
    }
}

/// Connects again with backoff; `None` when the session is over (closed, or refused for a
/// reason that retrying does not cure).
async fn reconnect(shared: &Arc<Shared>) -> Option<Established> {
    let mut attempt = 0u32;
    loop {
        shared
            .state
            .send_replace(ConnectionState::Reconnecting { attempt });
        let try_once = async {
            tokio::time::sleep(shared.config.backoff.delay(attempt)).await;
            establish(&shared.config, &shared.endpoint, &shared.quic).await
        };
        let outcome = tokio::select! {
            outcome = try_once => Some(outcome),
            () = shared.close_requested.notified() => None,
        };
        if shared.closing.load(Ordering::Acquire) {
            shared.finish(Some(Reason::Normal));
            return None;
        }
        match outcome {
            Some(Ok(est)) => {
                shared.replay();
                return Some(est);
            }
            Some(Err(ClientError::Refused { reason, .. })) if !transient(reason) => {
                shared.finish(Some(reason));
                return None;
            }
            _ => {}
        }
        attempt = attempt.saturating_add(1);
    }
}

/// Refusals that may not happen again on a later attempt.
fn transient(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::MaxClientsReached | Reason::ShuttingDown | Reason::ConnectTimeout
    )
}
