//! The client's API: [`Client`], [`Subscription`] and [`ServerErrors`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use meshgate_protocol::wire::{FrameType, Message, Publish};
use meshgate_protocol::NodeId;
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::ClientConfig;
use crate::error::{CallError, ClientError, ProcedureError, ServerError};
use crate::session::{self, ConnectionState, Delivery, Handler, Shared};

/// A session with a meshgate gateway.
///
/// Cheap to clone: clones share the session. The session is closed by [`Client::close`], or
/// when the last clone is dropped (without waiting for the gateway then).
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

/// Closes the session when the last [`Client`] clone goes.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.begin_close();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.shared().config.server)
            .field("realm", &self.shared().config.realm)
            .field("node_id", &self.shared().config.node_id)
            .field("state", &self.state())
            .finish()
    }
}

impl Client {
    /// Connects to the gateway: the QUIC handshake, the control stream, CONNECT, and the
    /// gateway's answer.
    ///
    /// Fails with [`ClientError::Refused`] when the gateway refuses the session (a realm it
    /// does not serve, a wrong token, a full client table), [`ClientError::Timeout`] after
    /// [`connect_timeout`](ClientConfig::connect_timeout), or the QUIC or TLS error.
    /// Must be called within a Tokio runtime, which then runs the client's tasks.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let (shared, established) = Shared::connect(config).await?;
        tokio::spawn(session::supervise(shared.clone(), established));
        Ok(Client {
            handle: Arc::new(Handle { shared }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// This client's node id.
    pub fn node_id(&self) -> NodeId {
        self.shared().config.node_id
    }

    /// The gateway's node id, from its answer to the latest CONNECT; `None` while not
    /// connected.
    pub fn server_id(&self) -> Option<NodeId> {
        match self.state() {
            ConnectionState::Connected { server, .. } => Some(server),
            _ => None,
        }
    }

    /// Where the session stands now.
    pub fn state(&self) -> ConnectionState {
        self.shared().state.borrow().clone()
    }

    /// A receiver of the session's state, to wait for a change (a reconnection, the end).
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.shared().state.subscribe()
    }

    /// Publishes `payload` to `topic`: every other session of the realm with a matching
    /// subscription gets it once.
    ///
    /// Returns once the frame is queued (many are written to the stream at a time); waits
    /// while [`max_queued_bytes`](ClientConfig::max_queued_bytes) are queued. An invalid
    /// topic is reported by the gateway on [`Client::errors`]. While reconnecting, the frame
    /// waits for the next session; frames still queued when a connection is lost are dropped.
    pub async fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), ClientError> {
        let publish = Publish::new(topic.as_bytes(), payload);
        self.shared().send(&Message::Publish(publish)).await
    }

    /// Subscribes to `patterns` (`*` matches one segment, `**` any number) and returns once
    /// the gateway has the subscription in effect.
    ///
    /// Fails with [`ClientError::Server`] when the gateway refuses a pattern
    /// (`invalid_pattern`, `too_many_subscriptions`); the patterns it took are then released.
    pub async fn subscribe<I, S>(&self, patterns: I) -> Result<Subscription, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let texts: Vec<Box<str>> = patterns
            .into_iter()
            .map(|p| p.into().into_boxed_str())
            .collect();
        let (tx, rx) = mpsc::channel(self.shared().config.subscription_capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let pong = self.shared().expect_pong(true);
        let id = self
            .shared()
            .add_subscription(texts.clone(), tx, dropped.clone())?;
        let mut subscription = Subscription {
            shared: self.shared().clone(),
            id: Some(id),
            patterns: texts,
            rx,
            dropped,
        };
        let errors = self.shared().await_pong(pong).await?;
        let refused: Vec<ServerError> = errors
            .into_iter()
            .filter(|e| {
                e.frame_type == FrameType::Subscribe as u8
                    && e.subject
                        .as_deref()
                        .is_some_and(|s| subscription.patterns.iter().any(|p| **p == *s))
            })
            .collect();
        if let Some(first) = refused.first().cloned() {
            subscription.release(&refused);
            return Err(ClientError::Server(first));
        }
        Ok(subscription)
    }

    /// Registers `procedure` with `handler`, and returns once the gateway routes calls to
    /// this client. Registering a procedure again replaces its handler.
    ///
    /// The handler gets the call's arguments as MessagePack bytes and returns its result as
    /// MessagePack bytes, or a [`ProcedureError`] that the caller receives as
    /// [`CallError::Remote`]. Each call runs in a task of its own; a call the gateway
    /// cancels (its caller left, or its deadline passed) is aborted. The registration is
    /// refreshed before its [`registration_ttl`](ClientConfig::registration_ttl) runs out, and
    /// restored after a reconnection.
    ///
    /// Fails with [`ClientError::Server`] for `invalid_procedure` or `too_many_registrations`.
    pub async fn register<F, Fut>(&self, procedure: &str, handler: F) -> Result<(), ClientError>
    where
        F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, ProcedureError>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |args| Box::pin(handler(args)));
        let pong = self.shared().expect_pong(true);
        self.shared().add_procedure(procedure, handler)?;
        let errors = self.shared().await_pong(pong).await?;
        let refusal = errors.into_iter().find(|e| {
            e.frame_type == FrameType::Register as u8 && e.subject.as_deref() == Some(procedure)
        });
        if let Some(refusal) = refusal {
            // The gateway holds no registration to remove.
            let _ = self.shared().remove_procedure(procedure);
            return Err(ClientError::Server(refusal));
        }
        Ok(())
    }

    /// Unregisters `procedure` and returns once the gateway no longer routes calls to this
    /// client for it. Calls already running go on. A procedure not registered is a no-op.
    pub async fn unregister(&self, procedure: &str) -> Result<(), ClientError> {
        if self.shared().remove_procedure(procedure)? {
            self.flush().await?;
        }
        Ok(())
    }

    /// Calls `procedure` with `args` (exactly one MessagePack value) and returns its result
    /// (MessagePack), within [`call_timeout`](ClientConfig::call_timeout).
    pub async fn call(&self, procedure: &str, args: &[u8]) -> Result<Vec<u8>, CallError> {
        let timeout = self.shared().config.call_timeout;
        self.call_with_timeout(procedure, args, timeout).await
    }

    /// Calls `procedure` with `args`, waiting at most `timeout` for the reply. The gateway is
    /// given a deadline a little later (a tenth more, at least 50 ms more; it caps it at its
    /// `--max-call-timeout`), so that a call without a reply in time ends here as
    /// [`CallError::Timeout`], and the gateway cancels the provider's work soon after.
    ///
    /// Any number of calls may be in flight at once. Fails with [`CallError::Remote`] for an
    /// error from the gateway or the provider, [`CallError::Timeout`] when no reply came in
    /// time, and [`CallError::Disconnected`] when the connection was lost meanwhile.
    pub async fn call_with_timeout(
        &self,
        procedure: &str,
        args: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        self.shared().call(procedure, args, timeout).await
    }

    /// Sends PING and returns the time until its PONG, within
    /// [`request_timeout`](ClientConfig::request_timeout).
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        self.shared().barrier().await?;
        Ok(start.elapsed())
    }

    /// Waits until the gateway has handled everything this client sent before: every
    /// subscribe, unsubscribe, register and unregister is then in effect on the whole gateway.
    /// The same round trip as [`Client::ping`].
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.shared().barrier().await
    }

    /// As [`Client::flush`], across a gateway mesh (PING with `mesh` true): once it returns,
    /// every gateway of the mesh linked to this one has this client's subscriptions and
    /// registrations in effect, so a publish or call made anywhere in the mesh sees them.
    /// A gateway without a mesh answers it as a plain PING.
    pub async fn flush_mesh(&self) -> Result<(), ClientError> {
        self.shared().mesh_barrier().await
    }

    /// A receiver of the ERROR frames the gateway sends from now on, such as `invalid_topic`
    /// for a publish. (Subscribe and register report theirs as their own error too.)
    pub fn errors(&self) -> ServerErrors {
        ServerErrors {
            rx: self.shared().errors.subscribe(),
        }
    }

    /// Ends the session: sends what is queued, then DISCONNECT `normal`, and waits (at most
    /// [`request_timeout`](ClientConfig::request_timeout)) for the gateway to close the
    /// connection. Requests still waiting fail with [`ClientError::Closed`]; subscriptions
    /// end. Closing a closed client does nothing.
    pub async fn close(&self) -> Result<(), ClientError> {
        let shared = self.shared();
        let mut state = shared.state.subscribe();
        shared.begin_close();
        let closed = state.wait_for(|s| matches!(s, ConnectionState::Closed { .. }));
        if tokio::time::timeout(shared.config.request_timeout, closed)
            .await
            .is_err()
        {
            shared.force_close();
        }
        Ok(())
    }
}

/// The messages published to a subscription's patterns, in the order the gateway sent them.
///
/// Read them with [`Subscription::next`] or as a [`futures_core::Stream`]. Deliveries wait in
/// a buffer of [`subscription_capacity`](ClientConfig::subscription_capacity);
/// [`subscription_overflow`](ClientConfig::subscription_overflow) says what happens when it is
/// full. Dropping the subscription (or [`Subscription::unsubscribe`]) releases its patterns:
/// UNSUBSCRIBE is sent for those that no other subscription of the client holds.
pub struct Subscription {
    shared: Arc<Shared>,
    /// `None` once released.
    id: Option<u64>,
    patterns: Vec<Box<str>>,
    rx: mpsc::Receiver<Delivery>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("patterns", &self.patterns)
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Subscription {
    /// The next delivery; `None` once the session is over for good.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// A delivery already received, if any, without waiting.
    pub fn try_next(&mut self) -> Option<Delivery> {
        self.rx.try_recv().ok()
    }

    /// The patterns subscribed to.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|p| &**p)
    }

    /// Deliveries dropped because this subscription's buffer
    /// ([`subscription_capacity`](ClientConfig::subscription_capacity)) was full, under
    /// [`Overflow::Drop`](crate::Overflow::Drop).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Releases the patterns and waits until the gateway stopped routing them to this client.
    pub async fn unsubscribe(mut self) -> Result<(), ClientError> {
        self.release(&[]);
        self.shared.barrier().await
    }

    fn release(&mut self, refused: &[ServerError]) {
        if let Some(id) = self.id.take() {
            self.shared.remove_subscription(id, refused);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.release(&[]);
    }
}

impl futures_core::Stream for Subscription {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.rx.poll_recv(cx)
    }
}

/// ERROR frames from the gateway, from [`Client::errors`].
#[derive(Debug)]
pub struct ServerErrors {
    rx: broadcast::Receiver<ServerError>,
}

impl ServerErrors {
    /// The next ERROR frame; `None` once the client is gone. Frames missed because this
    /// receiver fell more than 256 behind are skipped.
    pub async fn next(&mut self) -> Option<ServerError> {
        loop {
            match self.rx.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
