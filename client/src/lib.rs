//! The Rust client of meshgate.
//!
//! A [`Client`] holds one session with a meshgate gateway (or any gateway speaking the Macula
//! v0 protocol): one QUIC connection (quinn, rustls with ring, ALPN `macula`) and, on it, the
//! one bidirectional control stream that carries every frame. With it a service publishes to
//! topics, subscribes to topic patterns, registers procedures and calls the procedures of
//! other services of its realm.
//!
//! Frames are queued and written many at a time by one writer task, and read by one reader
//! task that routes deliveries, replies and incoming calls; so publishes and calls can be
//! pipelined without limit but [`max_queued_bytes`](ClientConfig::max_queued_bytes). A PING
//! goes out when the connection is idle. When the connection is lost, the client connects
//! again with backoff and restores its subscriptions and registrations (unless
//! [`reconnect`](ClientConfig::reconnect) is off); requests in flight then fail with
//! [`CallError::Disconnected`] or [`ClientError::Disconnected`].
//!
//! Arguments and results of calls are MessagePack values, passed as their encoded bytes.
//!
//! # Example
//!
//! ```no_run
//! use meshgate_client::{Client, ClientConfig, ProcedureError, Tls};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ClientConfig {
//!     // The gateway's certificate is self-signed unless it was given one.
//!     tls: Tls::Insecure,
//!     ..ClientConfig::default()
//! };
//! let client = Client::connect(config).await?;
//! println!("connected to gateway {:?}", client.server_id());
//!
//! let mut readings = client.subscribe(["sensor.*.room1"]).await?;
//! client.publish("sensor.temp.room1", b"21.5").await?;
//!
//! // The MessagePack value 42 in, and the same value out.
//! client.register("demo.echo", |args| async move { Ok::<_, ProcedureError>(args) }).await?;
//! let result = client.call("demo.echo", &[0x2a]).await?;
//! assert_eq!(result, [0x2a]);
//!
//! println!("round trip: {:?}", client.ping().await?);
//! if let Some(delivery) = readings.try_next() {
//!     println!("{}: {:?}", delivery.topic, delivery.payload);
//! }
//! client.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! A runnable version is `examples/quickstart.rs`.

#![warn(missing_docs)]

mod client;
mod config;
mod error;
mod session;
mod tls;

pub use client::{Client, ServerErrors, Subscription};
pub use config::{random_node_id, Backoff, ClientConfig, Overflow, Tls};
pub use error::{CallError, ClientError, ProcedureError, ServerError};
pub use meshgate_protocol::wire::Reason;
pub use meshgate_protocol::NodeId;
pub use session::{ConnectionState, Delivery};
pub use tls::{quic_client_config, ALPN};
