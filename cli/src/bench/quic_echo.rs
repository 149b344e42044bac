//! `meshgate-cli quic-echo`: the machine's QUIC ceiling, the baseline of the benchmark report.
//!
//! A bare echo server on quiche (one thread pinned to `--server-cpu`: one socket, batched
//! receives, every stream's bytes written back, GSO) and the lean engine's raw sessions as
//! clients (pinned to `--client-cpu`), each keeping `--in-flight` requests of `--payload`
//! bytes outstanding on one stream: the round trips per second one core of QUIC can serve
//! when requests share packets, with nothing of meshgate but the load engine. A gateway call
//! is two such hops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Args;
use meshgate_client::random_node_id;

use super::cpu;
use super::lean::{Engine, Spin, Target, Udp, MAX_UDP_PAYLOAD};
use super::report::{per_second, round, Summary};
use crate::args::parse_duration;

/// The echo's ALPN, in quiche's wire form.
const ALPN: &[u8] = b"\x04echo";
/// Length of the connection ids the server gives.
const CID_LEN: usize = 16;
/// How long the handshakes may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug, Clone)]
pub struct QuicEchoArgs {
    /// Client connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// Bytes per request (and per answer).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// How long the round trips are counted.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Round trips before the count starts, not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// The core the server's thread is pinned to.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// The core the clients' thread is pinned to.
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// Print the summary as one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How the clients wait for answers, as the load engine of `bench` (the server sleeps
    /// whenever its socket is empty, as the gateway does).
    #[command(flatten)]
    pub spin: Spin,
}

pub fn run(a: &QuicEchoArgs) -> Result<(), String> {
    if a.connections == 0 || a.in_flight == 0 || a.payload == 0 {
        return Err("--connections, --in-flight and --payload must be at least 1".into());
    }
    let identity = Identity::generate()?;
    let udp = Udp::bind("127.0.0.1:0".parse().expect("an address"))?;
    let server = udp.local();
    let config = identity.server_config()?;
    cpu::allowed(a.server_cpu)?;
    cpu::allowed(a.client_cpu)?;
    cpu::pin(a.client_cpu)?;
    let stop = Arc::new(AtomicBool::new(false));
    let server_cpu = a.server_cpu;
    let (pinned_tx, pinned) = mpsc::sync_channel(1);
    let echo = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("quic-echo-server".into())
            .spawn(move || {
                // A server left on the clients' core would measure the wrong ceiling.
                let pin = cpu::pin(server_cpu);
                let ok = pin.is_ok();
                let _ = pinned_tx.send(pin);
                if !ok {
                    return Duration::ZERO;
                }
                let started = cpu::thread();
                serve(udp, config, &stop);
                cpu::thread().saturating_sub(started)
            })
            .map_err(|e| format!("cannot start the server's thread: {e}"))?
    };
    let pin: Result<(), String> = pinned
        .recv()
        .unwrap_or_else(|_| Err("the echo server failed".into()));
    if let Err(e) = pin {
        let _ = echo.join();
        return Err(e);
    }
    let outcome = clients(a, server);
    stop.store(true, Ordering::Relaxed);
    let server_cpu_time = echo.join().map_err(|_| "the echo server failed")?;
    let (round_trips, client_cpu_time, client_spun) = outcome?;

    let window = a.duration.as_secs_f64();
    let mut s = Summary::new(
        "quic-echo",
        format!(
            "quic echo: {} connections x {} in flight, {}-byte requests",
            a.connections, a.in_flight, a.payload
        ),
    );
    s.set("connections", a.connections)
        .set("in_flight", a.in_flight)
        .set("payload_bytes", a.payload)
        .set("duration_s", window)
        .set("round_trips", round_trips)
        .set("round_trips_per_s", per_second(round_trips, a.duration))
        .set(
            "client_cpu_busy",
            round(client_cpu_time.as_secs_f64() / window, 3),
        )
        .set(
            "client_cpu_spinning",
            round(client_spun.as_secs_f64() / window, 3),
        )
        // The server's thread ran through the set-up and the warm-up too: its whole time.
        .set("server_cpu_s", round(server_cpu_time.as_secs_f64(), 3));
    s.print(a.json)
}

/// The clients: connects, keeps the requests in flight, counts the round trips of the window,
/// the CPU time the clients' thread spent in it and the part of it spent polling an idle socket.
fn clients(a: &QuicEchoArgs, server: SocketAddr) -> Result<(u64, Duration, Duration), String> {
    let mut engine = Engine::new(server, &a.spin)?;
    let target = Target {
        server,
        server_name: "localhost",
        insecure: true,
        ca: None,
        realm: "",
        token: None,
        max_udp_payload: MAX_UDP_PAYLOAD,
        // As the echo server: fixed packets, which its small round trips never fill.
        pmtud_max: 0,
    };
    let sessions = engine.open(&target, a.connections, ALPN, true)?;
    let by = Instant::now() + SETUP_TIMEOUT;
    while !engine.all_up() {
        if Instant::now() >= by {
            return Err("the echo server's handshakes did not finish in time".into());
        }
        engine.turn_raw(Some(by), |_, _, _| {});
    }
    let request = vec![0x2a; a.payload];
    for i in sessions {
        for _ in 0..a.in_flight {
            engine.session(i).send_bytes(&request);
        }
    }
    // Bytes of an answer not yet whole, per connection.
    let mut partial = vec![0usize; a.connections];
    let measure_from = Instant::now() + a.warmup;
    let end = measure_from + a.duration;
    let mut counted = 0u64;
    let mut start_cpu = None;
    loop {
        let now = Instant::now();
        if start_cpu.is_none() && now >= measure_from {
            start_cpu = Some((counted, cpu::thread(), engine.spun()));
        }
        if now >= end {
            let (before, cpu_before, spun_before) =
                start_cpu.unwrap_or((0, Duration::ZERO, Duration::ZERO));
            return Ok((
                counted - before,
                cpu::thread().saturating_sub(cpu_before),
                engine.spun().saturating_sub(spun_before),
            ));
        }
        engine.turn_raw(Some(end), |i, bytes, out| {
            partial[i] += bytes.len();
            let whole = partial[i] / request.len();
            partial[i] %= request.len();
            counted += whole as u64;
            for _ in 0..whole {
                out.extend_from_slice(&request);
            }
        });
    }
}

/// The echo server's loop, until `stop`.
fn serve(mut udp: Udp, mut config: quiche::Config, stop: &AtomicBool) {
    let mut conns: Vec<quiche::Connection> = Vec::new();
    let mut ids: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut busy = false;
    while !stop.load(Ordering::Relaxed) {
        if !busy {
            let quic = conns.iter().filter_map(|c| c.timeout_instant()).min();
            let tick = Instant::now() + Duration::from_millis(100);
            udp.wait(Some(quic.map_or(tick, |q| q.min(tick))));
        }
        let local = udp.local();
        let arrived = Instant::now();
        busy = udp.receive(|datagram, info| {
            let Ok(hdr) = quiche::Header::from_slice(datagram, CID_LEN) else {
                return;
            };
            let i = match ids.get(hdr.dcid.as_ref()) {
                Some(&i) => i,
                None if hdr.ty == quiche::Type::Initial => {
                    let scid = random_node_id().0[..CID_LEN].to_vec();
                    let cid = quiche::ConnectionId::from_ref(&scid);
                    let Ok(conn) = quiche::accept(&cid, None, local, info.from, &mut config) else {
                        return;
                    };
                    conns.push(conn);
                    ids.insert(scid, conns.len() - 1);
                    ids.insert(hdr.dcid.to_vec(), conns.len() - 1);
                    conns.len() - 1
                }
                None => return,
            };
            let _ = conns[i].recv_at(datagram, info, arrived);
        });
        let now = Instant::now();
        for c in &mut conns {
            if c.timeout_instant().is_some_and(|at| at <= now) {
                c.on_timeout();
            }
            // The iterator owns its stream ids: the connection is free to read and write.
            for stream in c.readable() {
                while let Ok((n, _)) = c.stream_recv(stream, &mut buf) {
                    // The client's window holds far more than it keeps in flight.
                    let _ = c.stream_send(stream, &buf[..n], false);
                }
            }
            udp.send(c, now);
        }
    }
}

/// A throwaway self-signed certificate for the echo server, in files quiche can load.
struct Identity {
    cert: PathBuf,
    key: PathBuf,
}

impl Identity {
    fn generate() -> Result<Identity, String> {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .map_err(|e| format!("cannot make a certificate: {e}"))?;
        let dir = std::env::temp_dir();
        let tag = format!("meshgate-quic-echo-{}", std::process::id());
        let identity = Identity {
            cert: dir.join(format!("{tag}.crt")),
            key: dir.join(format!("{tag}.key")),
        };
        let write = |path: &PathBuf, text: String| {
            std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
        };
        write(&identity.cert, made.cert.pem())?;
        write(&identity.key, made.key_pair.serialize_pem())?;
        Ok(identity)
    }

    fn server_config(&self) -> Result<quiche::Config, String> {
        let bad = |e: quiche::Error| format!("cannot configure the echo server: {e}");
        let mut c = quiche::Config::new(quiche::PROTOCOL_VERSION).map_err(bad)?;
        let path = |p: &PathBuf| p.to_str().map(str::to_owned).ok_or("a path not UTF-8");
        c.load_cert_chain_from_pem_file(&path(&self.cert)?)
            .map_err(bad)?;
        c.load_priv_key_from_pem_file(&path(&self.key)?)
            .map_err(bad)?;
        c.set_application_protos_wire_format(ALPN).map_err(bad)?;
        c.set_max_idle_timeout(30_000);
        c.set_max_recv_udp_payload_size(1350);
        c.set_max_send_udp_payload_size(1350);
        c.set_initial_max_data(16 << 20);
        c.set_initial_max_stream_data_bidi_remote(8 << 20);
        c.set_initial_max_streams_bidi(1);
        c.set_initial_max_streams_uni(0);
        c.set_disable_active_migration(true);
        Ok(c)
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cert);
        let _ = std::fs::remove_file(&self.key);
    }
}
