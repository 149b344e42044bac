//! A test gateway: quinn serves QUIC on the loopback with a self-signed certificate, and one
//! `meshgate_shard::Shard` does the rest, driven as the `Shard` documentation says.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshgate_client::{ClientConfig, Tls};
use meshgate_shard::wire::Reason;
use meshgate_shard::{Config, NodeId, Occupancy, RealmConfig, SessionKey, Shard, ShardId, Time};
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The gateway's node id.
pub const GATEWAY_ID: NodeId = NodeId([0xee; 32]);

/// A running test gateway; it stops when dropped.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// The certificate, PEM.
    pub cert_pem: String,
    inputs: mpsc::UnboundedSender<Input>,
    endpoint: quinn::Endpoint,
}

enum Input {
    Opened(quinn::Connection, quinn::SendStream, quinn::RecvStream),
    Data(SessionKey, bytes::Bytes),
    Closed(SessionKey),
    Shutdown(oneshot::Sender<()>),
    Inspect(Box<dyn FnOnce(&Shard) + Send>),
}

/// What a session's writer task is told.
enum Output {
    Bytes(Vec<u8>),
    Close(Reason),
}

impl TestGateway {
    /// A gateway serving `macula.default` with the default limits.
    pub async fn start() -> TestGateway {
        TestGateway::start_with(|_| {}).await
    }

    /// A gateway whose shard config is first adjusted by `tune`.
    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> TestGateway {
        let mut config = Config::new(ShardId(0), 1, GATEWAY_ID);
        config.realms.push(RealmConfig {
            name: b"secure".to_vec().into(),
            tokens: vec![b"s3cret".to_vec().into()],
        });
        tune(&mut config);
        config.validate().expect("a valid shard config");

        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a certificate");
        let cert_der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key)
            .expect("a usable certificate");
        tls.alpn_protocols = vec![b"macula".to_vec()];
        let crypto = QuicServerConfig::try_from(tls).expect("a QUIC TLS config");
        let server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(server_config, ([127, 0, 0, 1], 0).into())
            .expect("a UDP socket");
        let addr = endpoint.local_addr().expect("bound");

        let (inputs, rx) = mpsc::unbounded_channel();
        tokio::spawn(accept(endpoint.clone(), inputs.clone()));
        tokio::spawn(drive(Shard::new(config, Time::ZERO), rx, inputs.clone()));
        TestGateway {
            addr,
            cert_pem: cert.cert.pem(),
            inputs,
            endpoint,
        }
    }

    /// A client config for this gateway, trusting any certificate.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            tls: Tls::Insecure,
            reconnect: false,
            ..ClientConfig::new(self.addr)
        }
    }

    /// Ends every session with DISCONNECT `shutting_down`, as a stopping gateway does; the
    /// gateway goes on accepting connections.
    pub async fn kick_all(&self) {
        let (done, wait) = oneshot::channel();
        let _ = self.inputs.send(Input::Shutdown(done));
        let _ = wait.await;
    }

    /// What the shard's tables hold now.
    pub async fn occupancy(&self) -> Occupancy {
        self.inspect(Shard::occupancy).await
    }

    /// Runs `f` on the shard between two of its turns.
    pub async fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shard) -> T + Send + 'static,
    ) -> T {
        let (answer, wait) = oneshot::channel();
        let f = move |shard: &Shard| {
            let _ = answer.send(f(shard));
        };
        let _ = self.inputs.send(Input::Inspect(Box::new(f)));
        wait.await.expect("the gateway runs")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"test over");
    }
}

async fn accept(endpoint: quinn::Endpoint, inputs: mpsc::UnboundedSender<Input>) {
    while let Some(incoming) = endpoint.accept().await {
        let inputs = inputs.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            // The session opens when the client opens its control stream.
            if let Ok((send, recv)) = conn.accept_bi().await {
                let _ = inputs.send(Input::Opened(conn, send, recv));
            }
        });
    }
}

/// The shard's loop: one input (or a due timer) at a time, then every output drained.
async fn drive(
    mut shard: Shard,
    mut rx: mpsc::UnboundedReceiver<Input>,
    inputs: mpsc::UnboundedSender<Input>,
) {
    let origin = Instant::now();
    let mut writers: HashMap<SessionKey, mpsc::UnboundedSender<Output>> = HashMap::new();
    loop {
        let deadline = shard
            .next_deadline()
            .map_or(origin + Duration::from_secs(3600), |t| {
                origin + Duration::from_millis(t.as_millis())
            });
        let input = tokio::select! {
            input = rx.recv() => match input {
                Some(input) => Some(input),
                None => return,
            },
            () = tokio::time::sleep_until(deadline) => None,
        };
        let now = Time::from_millis(origin.elapsed().as_millis() as u64);
        match input {
            Some(Input::Opened(conn, send, recv)) => {
                let key = shard.handle_session_open(now);
                let (tx, outputs) = mpsc::unbounded_channel();
                writers.insert(key, tx);
                tokio::spawn(write(conn.clone(), send, outputs));
                tokio::spawn(read(key, conn, recv, inputs.clone()));
            }
            Some(Input::Data(key, bytes)) => shard.handle_stream_data(now, key, &bytes),
            Some(Input::Closed(key)) => {
                writers.remove(&key);
                shard.handle_session_closed(now, key);
            }
            Some(Input::Shutdown(done)) => {
                shard.shutdown(now);
                let _ = done.send(());
            }
            Some(Input::Inspect(f)) => f(&shard),
            None => {}
        }
        shard.handle_timeout(now);
        while shard.poll_driver_timer().is_some() {}
        while let Some(key) = shard.poll_ready() {
            flush(&mut shard, key, &writers);
        }
        while let Some((key, reason)) = shard.poll_close() {
            flush(&mut shard, key, &writers);
            if let Some(writer) = writers.get(&key) {
                let _ = writer.send(Output::Close(reason));
            }
        }
        while shard.poll_event().is_some() {}
    }
}

/// Hands a session's queued output to its writer task.
fn flush(
    shard: &mut Shard,
    key: SessionKey,
    writers: &HashMap<SessionKey, mpsc::UnboundedSender<Output>>,
) {
    let bytes = shard.output(key).to_vec();
    shard.consume_output(key, bytes.len());
    if let (false, Some(writer)) = (bytes.is_empty(), writers.get(&key)) {
        let _ = writer.send(Output::Bytes(bytes));
    }
}

async fn write(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut outputs: mpsc::UnboundedReceiver<Output>,
) {
    while let Some(output) = outputs.recv().await {
        match output {
            Output::Bytes(bytes) => {
                if send.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Output::Close(reason) => {
                // Let the client receive the last frames (DISCONNECT) before the close.
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                let code = quinn::VarInt::from_u64(reason.close_code()).expect("a small code");
                conn.close(code, reason.as_str().as_bytes());
                return;
            }
        }
    }
}

async fn read(
    key: SessionKey,
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    inputs: mpsc::UnboundedSender<Input>,
) {
    while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
        if inputs.send(Input::Data(key, chunk.bytes)).is_err() {
            return;
        }
    }
    conn.closed().await;
    let _ = inputs.send(Input::Closed(key));
}
