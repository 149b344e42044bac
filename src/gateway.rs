//! `meshgate serve`: checks the machine, binds the sockets, starts one pinned executor per
//! shard and the health endpoint, and stops them all in order on SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glommio::{LocalExecutorBuilder, Placement};
use meshgate_shard::{Config, GatewayCounts, Limits, NodeId, RealmConfig, Shard, ShardId, Time};

use crate::cli::ServeArgs;
use crate::driver::ShardStart;
use crate::endpoint::PEER_ALPN;
use crate::health::{HealthSource, ShardReport};
use crate::mailbox::{Body, Envelope, Shared};
use crate::tls::Identity;

/// io_uring registered-buffer memory per executor. The gateway does no file IO, and glommio's
/// socket operations fall back to the heap when this pool is exhausted, so a small pool does.
const IO_MEMORY: usize = 256 << 10;
/// io_uring submission queue entries per ring.
const RING_DEPTH: usize = 128;
/// Locked memory one executor needs: glommio registers its buffer pool with each of its three
/// rings (3 × `IO_MEMORY` = 768 KiB), plus the rings themselves, with headroom.
const MEMLOCK_PER_SHARD: u64 = 1 << 20;

/// Why the gateway could not start: one line for the operator, with the fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    /// Flags that cannot work together, refused as clap refuses a bad value (exit status 2).
    #[error("{0}")]
    Usage(String),
    #[error("certificate: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(
        "io_uring is not available ({0}); meshgate's executors need it: use Linux 5.8 or later, and inside a container allow the io_uring_setup/io_uring_enter/io_uring_register syscalls (seccomp profile) or run with --security-opt seccomp=unconfined"
    )]
    IoUring(std::io::Error),
    #[error(
        "the locked-memory limit is {have} KiB, but {shards} shards need about {need} KiB: raise it (ulimit -l {need}, or LimitMEMLOCK= in a systemd unit) or run fewer --shards"
    )]
    MemLock { have: u64, need: u64, shards: u16 },
    #[error("cannot bind UDP {addr}: {source}")]
    BindUdp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind the health endpoint on TCP {addr}: {source}")]
    BindHealth {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("shard {shard} failed to start: {message}")]
    Shard { shard: u16, message: String },
}

impl StartError {
    /// The process's exit status: 2 for flags refused (as for clap's own errors), 1 otherwise.
    pub fn exit_status(&self) -> i32 {
        match self {
            StartError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Runs the gateway until a signal stops it.
pub fn serve(args: ServeArgs) -> Result<(), StartError> {
    let mesh_flags = crate::mesh::check(&args).map_err(StartError::Usage)?;
    // The cores this process may run on (respecting taskset and cgroup cpusets); shard i is
    // pinned to the i-th of them.
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .filter(|ids: &Vec<usize>| !ids.is_empty())
        .unwrap_or_else(|| {
            (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
        });
    let shards = args.shards.unwrap_or(
        u16::try_from(cores.len())
            .unwrap_or(u16::MAX)
            .min(meshgate_shard::router::MAX_SHARDS),
    );
    let spin = spin_of(args.spin, shards, cores.len());
    if spin != args.spin {
        log::info!(
            "{shards} shards on {} cores share them: no shard polls while idle (--spin 0s)",
            cores.len()
        );
    }
    let realms = realms(&args)?;
    let limits = Limits {
        max_clients: args.max_clients,
        max_frame: args.max_frame,
        max_subscriptions: args.max_subscriptions,
        max_registrations: args.max_registrations,
        max_waiting_pings: args.max_waiting_pings,
        max_pending_calls: args.max_pending_calls,
        max_output: args.max_output,
        max_shard_backlog: args.max_shard_backlog,
        call_timeout: args.call_timeout,
        max_call_timeout: args.max_call_timeout,
        service_ttl: args.service_ttl,
        prune_interval: args.prune_interval,
        slow_consumer_timeout: args.slow_consumer_timeout,
        connect_timeout: args.connect_timeout,
    };
    let mut node = [0u8; 32];
    getrandom::getrandom(&mut node)
        .map_err(|e| StartError::Config(format!("no randomness: {e}")))?;
    let counts = Arc::new(GatewayCounts::default());
    let configs = (0..shards)
        .map(|i| {
            let mut seed = [0u8; 8];
            getrandom::getrandom(&mut seed)?;
            Ok(Config {
                shard: ShardId(i),
                shards,
                node_id: NodeId(node),
                realms: realms.clone(),
                limits: limits.clone(),
                wall_clock_offset_ms: 0,
                counts: counts.clone(),
                mesh: None,
                seed: u64::from_ne_bytes(seed),
            })
        })
        .collect::<Result<Vec<Config>, getrandom::Error>>()
        .map_err(|e| StartError::Config(format!("no randomness: {e}")))?;
    if let Some(c) = configs.first() {
        c.validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
    } else {
        return Err(StartError::Config("--shards must be at least 1".into()));
    }
    if args.max_inbox == 0 {
        return Err(StartError::Config("--max-inbox must be at least 1".into()));
    }
    if args.max_handshakes == 0 {
        return Err(StartError::Config(
            "--max-handshakes must be at least 1".into(),
        ));
    }

    check_io_uring()?;
    let need = MEMLOCK_PER_SHARD * u64::from(shards);
    let have = crate::net::memlock_limit();
    if have < need {
        return Err(StartError::MemLock {
            have: have / 1024,
            need: need / 1024,
            shards,
        });
    }

    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => crate::tls::load(cert, key)?,
        _ => crate::tls::self_signed()?,
    };

    // Every socket is bound before any executor runs, so the SO_REUSEPORT group is complete.
    let mut sockets = Vec::with_capacity(usize::from(shards));
    let fragment = args.pmtud_max == 0;
    let first =
        crate::net::reuseport_udp(args.listen, fragment).map_err(|source| StartError::BindUdp {
            addr: args.listen,
            source,
        })?;
    let addr = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(args.listen);
    sockets.push(first);
    for _ in 1..shards {
        sockets.push(
            crate::net::reuseport_udp(addr, fragment)
                .map_err(|source| StartError::BindUdp { addr, source })?,
        );
    }
    if let Err(why) = crate::net::steer(&sockets, addr) {
        log::warn!(
            "datagrams are not steered to their shard by connection ID ({why}): connections \
             are spread over the shards by a hash of their addresses, and the datagrams of a \
             client that changes address reach its shard through another"
        );
    }
    let health =
        crate::health::bind(args.health_listen).map_err(|source| StartError::BindHealth {
            addr: args.health_listen,
            source,
        })?;
    let health_addr = health.local_addr().unwrap_or(args.health_listen);

    let advertise = crate::mesh::advertise(&args, addr);
    let node_name = mesh_flags.as_ref().map(|f| f.node_name.clone());
    let mesh = mesh_flags.map(|flags| {
        crate::mesh::config(
            flags,
            &args,
            NodeId(node),
            &realms,
            &advertise,
            wall_clock_ms(),
        )
    });

    let signals = block_stop_signals();
    let origin = Instant::now();
    let wall_offset = wall_clock_ms() as i64;
    let (shared, inboxes) = Shared::new(usize::from(shards), args.max_inbox).map_err(|e| {
        StartError::Config(format!("cannot make the shards' doorbells (eventfd): {e}"))
    })?;
    let mut handles = Vec::new();
    let mut readies = Vec::new();
    for ((mut config, socket), inbox) in configs.into_iter().zip(sockets).zip(inboxes) {
        let id = config.shard;
        config.wall_clock_offset_ms = wall_offset;
        config.mesh = mesh.clone();
        let quic = quic_config(&identity, &args)?;
        // quiche takes a configuration per connection made: a second one for the dials.
        let dial_quic = match &mesh {
            Some(_) => Some(dial_config(&identity, &args)?),
            None => None,
        };
        let shard = Shard::new(config, Time::ZERO);
        let (ready, ready_rx) = std::sync::mpsc::channel();
        readies.push(ready_rx);
        let start = ShardStart {
            shard,
            socket,
            quic,
            inbox,
            shared: shared.clone(),
            max_handshakes: args.max_handshakes,
            max_udp_payload: args.largest_udp_payload().into(),
            pmtud_max: args.pmtud_max.into(),
            idle_timeout: args.idle_timeout,
            spin,
            dial_quic,
            peer_idle_timeout: args.peer_idle_timeout,
            origin,
            ready,
        };
        let cpu = cores[usize::from(id.0) % cores.len()];
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("meshgate-shard-{}", id.0))
            .io_memory(IO_MEMORY)
            .ring_depth(RING_DEPTH)
            .spawn(move || crate::driver::run(start))
            .map_err(|e| StartError::Shard {
                shard: id.0,
                message: e.to_string(),
            })?;
        handles.push(handle);
    }
    for (i, ready) in readies.iter().enumerate() {
        if ready.recv_timeout(Duration::from_secs(10)).is_err() {
            let message = match handles.remove(i).join() {
                Err(e) => e.to_string(),
                Ok(()) => "stopped before serving".into(),
            };
            return Err(StartError::Shard {
                shard: i as u16,
                message,
            });
        }
    }

    let ready = Arc::new(AtomicBool::new(true));
    let stop_health = Arc::new(AtomicBool::new(false));
    let source = Arc::new(Reports {
        shared: shared.clone(),
        shards,
        ready: ready.clone(),
        node_name: node_name.clone(),
    });
    let health_limits = crate::health::Limits {
        max_connections: args.health_max_connections,
        request_timeout: args.health_request_timeout,
        max_request: args.health_max_request,
    };
    let health_thread = {
        let stop = stop_health.clone();
        std::thread::Builder::new()
            .name("meshgate-health".into())
            .spawn(move || crate::health::serve(health, source, stop, health_limits))
            .map_err(|e| StartError::Config(format!("cannot start the health thread: {e}")))?
    };

    let realm_names: Vec<String> = realms
        .iter()
        .map(|r| {
            let name = String::from_utf8_lossy(&r.name).into_owned();
            if r.tokens.is_empty() {
                name
            } else {
                format!("{name} (token)")
            }
        })
        .collect();
    let (alpn, mesh_line) = match &node_name {
        Some(name) => (
            "macula, meshgate-peer",
            format!(
                ", mesh node {name} advertised at {advertise}, peers [{}]",
                args.peers.join(", ")
            ),
        ),
        None => ("macula", String::new()),
    };
    log::info!(
        "meshgate listening on quic://{addr} (ALPN {alpn}), {shards} shards, realms [{}], health http://{health_addr}, certificate sha256 {}{}{mesh_line}",
        realm_names.join(", "),
        identity.fingerprint,
        if identity.self_signed { " (self-signed)" } else { "" }
    );

    let signal = wait_stop_signal(&signals);
    log::info!("signal {signal}: stopping");
    ready.store(false, Ordering::Relaxed);
    for i in 0..shards {
        let mut envelope = Envelope {
            from: ShardId(i),
            body: Body::Shutdown,
        };
        let deadline = Instant::now() + Duration::from_millis(200);
        while let Err(back) = shared.post(ShardId(i), envelope) {
            if Instant::now() >= deadline {
                break;
            }
            envelope = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for handle in handles {
        let _ = handle.join();
    }
    stop_health.store(true, Ordering::Relaxed);
    let _ = health_thread.join();
    drop(identity);
    log::info!("stopped");
    Ok(())
}

fn realms(args: &ServeArgs) -> Result<Vec<RealmConfig>, StartError> {
    if args.realms.is_empty() {
        return Ok(vec![RealmConfig {
            name: b"macula.default".to_vec().into(),
            tokens: Vec::new(),
        }]);
    }
    args.realms
        .iter()
        .map(|r| {
            let tokens = match &r.token_file {
                None => Vec::new(),
                Some(path) => {
                    let tokens = crate::mesh::token_lines(path).map_err(|e| {
                        StartError::Config(format!(
                            "realm {}: cannot read token file {}: {e}",
                            r.name,
                            path.display()
                        ))
                    })?;
                    if tokens.is_empty() {
                        return Err(StartError::Config(format!(
                            "realm {}: token file {} holds no token",
                            r.name,
                            path.display()
                        )));
                    }
                    tokens
                }
            };
            Ok(RealmConfig {
                name: r.name.as_bytes().to_vec().into(),
                tokens,
            })
        })
        .collect()
}

/// quiche's configuration of the connections a shard accepts: ALPN `macula`, and with
/// `--node-name` `meshgate-peer` too, whose connections get `--peer-idle-timeout` (and, with
/// `--peer-ca`, must present a certificate that chains to it).
fn quic_config(identity: &Identity, args: &ServeArgs) -> Result<quiche::Config, StartError> {
    let mut tls = tls_context(args)?;
    if args.node_name.is_some() {
        if let Some(ca) = &args.peer_ca {
            tls.set_ca_file(ca).map_err(|e| {
                StartError::Config(format!(
                    "--peer-ca {}: not a PEM CA file ({e})",
                    ca.display()
                ))
            })?;
        }
        let peer_idle_ms = millis(args.peer_idle_timeout);
        let verify_peers = args.peer_ca.is_some();
        // ALPN is settled in the TLS handshake, after quiche took this configuration: the
        // peer link's settings are made when the ClientHello shows which ALPN wins.
        tls.set_select_certificate_callback(move |hello| {
            use boring::ssl::{ExtensionType, SslVerifyMode};
            use foreign_types_shared::ForeignTypeRef;
            let offered =
                hello.get_extension(ExtensionType::APPLICATION_LAYER_PROTOCOL_NEGOTIATION);
            if crate::tls::chosen_alpn(offered.unwrap_or_default(), &SERVER_ALPNS)
                != Some(PEER_ALPN)
            {
                return Ok(());
            }
            // SAFETY: the connection the callback is called for, which nothing else touches
            // during the call; the calls below only set its verify mode and its transport
            // parameters.
            let ssl = unsafe { boring::ssl::SslRef::from_ptr_mut(hello.ssl().as_ptr()) };
            let _ = <quiche::Connection>::set_max_idle_timeout_in_handshake(ssl, peer_idle_ms);
            if verify_peers {
                ssl.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
            }
            Ok(())
        });
    }
    let mut c = base_config(tls, identity, args)?;
    let alpns: &[&[u8]] = if args.node_name.is_some() {
        &SERVER_ALPNS
    } else {
        &SERVER_ALPNS[..1]
    };
    c.set_application_protos(alpns).map_err(bad)?;
    c.set_max_idle_timeout(millis(args.idle_timeout));
    // A client opens one stream; a dialing peer two (0 and 4).
    c.set_initial_max_stream_data_bidi_remote(4 << 20);
    c.set_initial_max_stream_data_bidi_local(4 << 20);
    c.set_initial_max_streams_bidi(4);
    Ok(c)
}

/// quiche's configuration of a shard's dials to peers: ALPN `meshgate-peer`, the gateway's own
/// certificate (for an acceptor with `--peer-ca`), and the acceptor's certificate checked
/// against `--peer-ca` if given (any is accepted otherwise: the proof authenticates the peer).
fn dial_config(identity: &Identity, args: &ServeArgs) -> Result<quiche::Config, StartError> {
    let mut c = base_config(tls_context(args)?, identity, args)?;
    c.set_application_protos(&[PEER_ALPN]).map_err(bad)?;
    c.set_max_idle_timeout(millis(args.peer_idle_timeout));
    match &args.peer_ca {
        Some(ca) => {
            let path = ca
                .to_str()
                .ok_or_else(|| StartError::Config("--peer-ca path is not UTF-8".into()))?;
            c.load_verify_locations_from_file(path).map_err(|e| {
                StartError::Config(format!("--peer-ca {path}: not a PEM CA file ({e})"))
            })?;
            c.verify_peer(true);
        }
        None => c.verify_peer(false),
    }
    // The dialer opens streams 0 and 4; the acceptor opens none.
    c.set_initial_max_stream_data_bidi_local(4 << 20);
    c.set_initial_max_stream_data_bidi_remote(0);
    c.set_initial_max_streams_bidi(0);
    Ok(c)
}

/// The ALPNs the gateway accepts, `macula` first; `meshgate-peer` only with `--node-name`.
const SERVER_ALPNS: [&[u8]; 2] = [b"macula", PEER_ALPN];

/// `--spin` as the shards use it: none where shards share cores (more shards than cores), as a
/// polling shard would hold the core its neighbour needs.
fn spin_of(spin: Duration, shards: u16, cores: usize) -> Duration {
    if usize::from(shards) > cores {
        Duration::ZERO
    } else {
        spin
    }
}

fn bad(e: quiche::Error) -> StartError {
    StartError::Config(format!("QUIC configuration: {e}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A TLS context whose connections free their handshake configuration once it is over.
fn tls_context(args: &ServeArgs) -> Result<boring::ssl::SslContextBuilder, StartError> {
    let mut tls = boring::ssl::SslContextBuilder::new(boring::ssl::SslMethod::tls())
        .map_err(|e| StartError::Config(format!("TLS context: {e}")))?;
    tls.set_curves_list(&args.tls_groups).map_err(|_| {
        StartError::Config(format!(
            "--tls-groups {}: not a colon-separated list of TLS groups BoringSSL knows \
             (such as X25519, P-256, P-384, X25519MLKEM768)",
            args.tls_groups
        ))
    })?;
    // No client of the gateway resumes a session: a ticket would cost each handshake its
    // encryption and each connection the ticket's bytes until they are acknowledged.
    tls.set_options(boring::ssl::SslOptions::NO_TICKET);
    // Each connection's TLS state keeps a copy of its configuration (certificate chain,
    // ciphers, ALPN, transport parameters) that nothing reads once the handshake is over:
    // asked at the handshake's start, BoringSSL frees it at the end.
    tls.set_info_callback(|ssl, mode, _| {
        if mode == boring::ssl::SslInfoCallbackMode::HANDSHAKE_START {
            use foreign_types_shared::ForeignTypeRef;
            // SAFETY: `ssl` is the live connection the callback is called for; the call only
            // sets a flag on it.
            unsafe { boring_sys::SSL_set_shed_handshake_config(ssl.as_ptr(), 1) };
        }
    });
    Ok(tls)
}

/// What every connection of the gateway shares: the certificate, the packet sizes and the
/// connection's flow control; no unidirectional streams.
fn base_config(
    tls: boring::ssl::SslContextBuilder,
    identity: &Identity,
    args: &ServeArgs,
) -> Result<quiche::Config, StartError> {
    let mut c =
        quiche::Config::with_boring_ssl_ctx_builder(quiche::PROTOCOL_VERSION, tls).map_err(bad)?;
    let cert = identity
        .cert
        .to_str()
        .ok_or_else(|| StartError::Config("certificate path is not UTF-8".into()))?;
    let key = identity
        .key
        .to_str()
        .ok_or_else(|| StartError::Config("key path is not UTF-8".into()))?;
    c.load_cert_chain_from_pem_file(cert).map_err(|e| {
        StartError::Config(format!(
            "certificate {cert}: not a valid PEM certificate chain ({e})"
        ))
    })?;
    c.load_priv_key_from_pem_file(key)
        .map_err(|e| StartError::Config(format!("key {key}: not a valid PEM private key ({e})")))?;
    // With path MTU discovery (--pmtud-max), every datagram leaves with Don't Fragment (RFC
    // 9000, section 14), so a connection sends QUIC's minimum, which every path carries, until
    // a probe proves more; it starts probing in the driver once it fills a packet.
    c.set_max_recv_udp_payload_size(args.largest_udp_payload().into());
    c.set_max_send_udp_payload_size(args.unprobed_udp_payload().into());
    c.set_initial_max_data(8 << 20);
    c.set_initial_max_stream_data_uni(0);
    c.set_initial_max_streams_uni(0);
    c.set_disable_active_migration(false);
    Ok(c)
}

/// Whether the kernel lets this process make an io_uring.
fn check_io_uring() -> Result<(), StartError> {
    // SAFETY: io_uring_params is plain data; the syscall only reads and writes it.
    let mut params: [u8; 120] = [0; 120];
    // SAFETY: a valid pointer to a zeroed io_uring_params-sized buffer.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(StartError::IoUring(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a descriptor the syscall just returned.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Blocks SIGINT and SIGTERM in this thread and the executors it starts, so that only the main
/// thread takes them, with `sigwait`.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; the calls take valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_stop_signal(set: &libc::sigset_t) -> i32 {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: valid pointers to a signal set and an int.
        if unsafe { libc::sigwait(set, &mut sig) } == 0 {
            return sig;
        }
    }
}

/// The health endpoint's view of the shards: it asks each for a report.
struct Reports {
    shared: Arc<Shared>,
    shards: u16,
    ready: Arc<AtomicBool>,
    node_name: Option<String>,
}

impl HealthSource for Reports {
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn shards(&self) -> usize {
        usize::from(self.shards)
    }

    fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    fn reports(&self) -> Vec<ShardReport> {
        let (tx, rx) = std::sync::mpsc::sync_channel(usize::from(self.shards));
        let mut asked = 0;
        for i in 0..self.shards {
            let envelope = Envelope {
                from: ShardId(i),
                body: Body::Report(tx.clone()),
            };
            if self.shared.post(ShardId(i), envelope).is_ok() {
                asked += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut reports = Vec::with_capacity(asked);
        while reports.len() < asked {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(r) => reports.push(r),
                Err(_) => break,
            }
        }
        reports.sort_by_key(|r| r.shard);
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_poll_while_each_has_a_core_of_its_own_and_not_when_they_share() {
        let spin = Duration::from_micros(50);
        assert_eq!(spin_of(spin, 1, 2), spin);
        assert_eq!(spin_of(spin, 2, 2), spin);
        assert_eq!(spin_of(spin, 3, 2), Duration::ZERO);
        assert_eq!(spin_of(Duration::ZERO, 1, 2), Duration::ZERO);
    }
}
