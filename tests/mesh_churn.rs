//! End-to-end tests of the gateway mesh under churn (PROTOCOL.md 9.3 to 9.5, 9.8): real
//! `meshgate` processes killed and restarted, a link evicted under `--max-peers`, a link cut and
//! healed by a relay in the middle, and `scripts/mesh.sh`. These are what only real processes
//! show: a SIGKILLed gateway says nothing to its peers, a restarted one comes back on the same
//! ports with a new incarnation, and a cut link dies by its QUIC idle timeout on both ends.
//!
//! Every outcome is decided by the gateways' own timers: links get `--peer-idle-timeout 2s`
//! and calls a deadline of a minute, so a call that fails `provider_gone` failed because its
//! link was lost, however slow the machine. Waits poll `/health`, `/peers` and `/metrics` with
//! a deadline; the only fixed wait is the window in which something must *not* happen.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_shard::wire::FrameType;
use support::*;

/// The QUIC idle timeout of every link here: a link that hears nothing for this long is lost.
const LINK_IDLE: &str = "2s";
/// The timeout of every call here, in ms: far beyond [`LINK_IDLE`] and any stall of a busy
/// machine, so that a call ends by its link, never by its deadline.
const CALL_TIMEOUT_MS: u64 = 60_000;

/// The flags of a mesh gateway called `name`, with the token file `tokens`, the short link
/// idle timeout, and `more`.
fn mesh(name: &str, tokens: &Path, more: &[&str]) -> Vec<String> {
    mesh_idle(name, tokens, LINK_IDLE, more)
}

/// [`mesh`] with the link idle timeout `idle`.
fn mesh_idle(name: &str, tokens: &Path, idle: &str, more: &[&str]) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--node-name",
        name,
        "--cluster-token-file",
        tokens.to_str().expect("a UTF-8 path"),
        "--peer-idle-timeout",
        idle,
    ]
    .map(str::to_owned)
    .into();
    flags.extend(more.iter().map(|s| s.to_string()));
    flags
}

fn start(flags: &[String]) -> Gateway {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Gateway::start(&flags)
}

/// A raw session that keeps its connection alive (the test may leave it quiet for longer than
/// QUIC's default idle timeout).
async fn session(gw: &Gateway) -> Raw {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(1)));
    Raw::connect_with(gw.addr, REALM, random_node(), None, transport).await
}

/// Sends CALL `id` of `procedure` with the long [`CALL_TIMEOUT_MS`].
async fn call(caller: &mut Raw, procedure: &str, id: u64) {
    let frame = call_frame(procedure, &[0x2a], Some(&Id::U(id)), Some(CALL_TIMEOUT_MS));
    caller.write(&frame).await;
}

/// The next frame within [`MESH_PATIENCE`], which must be a REPLY.
async fn reply_within_mesh_patience(caller: &mut Raw) -> Replied {
    match caller.next_within(MESH_PATIENCE).await {
        Ok(Some(frame)) => frame.reply(),
        Ok(None) => panic!("the caller's session ended"),
        Err(_) => panic!("no REPLY within {MESH_PATIENCE:?}"),
    }
}

/// A call from `caller` that `provider` answers: the provider gets it and replies, and the
/// caller gets the result.
async fn call_answered(caller: &mut Raw, provider: &mut Raw, procedure: &str, id: u64) {
    call(caller, procedure, id).await;
    let called = provider.expect(FrameType::Call).await.call();
    assert_eq!(called.procedure, procedure);
    provider
        .write(&reply_frame(&called.call_id.expect("a call_id"), &[0xc3]))
        .await;
    let replied = caller.expect(FrameType::Reply).await.reply();
    assert_eq!(
        (replied.call_id, replied.outcome),
        (Some(Id::U(id)), Ok(vec![0xc3]))
    );
}

/// Publishes on `topic` from `publisher` until `subscriber` gets one. A link seen up may still
/// be replaced by the one admission keeps when two gateways dialed each other (9.3), losing
/// what was on its way (9.5): delivery across a lost link is at-most-once.
async fn publish_until_delivered(publisher: &mut Raw, subscriber: &mut Raw, topic: &str) {
    for round in 0u8.. {
        assert!(round < 60, "no publish on {topic} was delivered");
        publisher.publish(topic, &[round]).await;
        match subscriber.next_within(Duration::from_millis(500)).await {
            Ok(Some(frame)) => {
                let got = frame.publish();
                assert_eq!(
                    (got.topic.as_str(), got.publisher),
                    (topic, Some(publisher.node_id))
                );
                return;
            }
            Ok(None) => panic!("the subscriber's session ended"),
            Err(_) => {}
        }
    }
}

/// Whether `/peers` shows the gateway `name` up.
fn is_up(peers: &[Peer], name: &str) -> bool {
    peers
        .iter()
        .any(|p| p.name().as_deref() == Some(name) && p.state() == "up")
}

/// Waits until each gateway (with its name) has every other one up.
async fn wait_full_mesh(gateways: &[(&Gateway, &str)]) {
    for (gw, own) in gateways {
        for (_, other) in gateways {
            if other != own {
                gw.wait_up(other).await;
            }
        }
    }
}

const LOST: &str = "meshgate_peer_links_total{result=\"lost\"}";

// =========================================================================================
// SIGKILL and restart
// =========================================================================================

/// Sessions making calls beside the tests of link loss, eviction and restarts.
const MESH_LOAD_CALLERS: usize = 4;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_fails_the_calls_forwarded_to_it_with_provider_gone_and_rejoins_when_restarted(
) {
    let tokens = temp_file("kill-restart", "token\n");
    let a = start(&mesh("gw-a", &tokens, &[]));
    let seed = a.addr.to_string();
    let b = start(&mesh("gw-b", &tokens, &["--peer", &seed]));
    a.wait_up("gw-b").await;
    let c_flags = mesh("gw-c", &tokens, &["--peer", &seed]);
    let mut c = start(&c_flags);
    wait_full_mesh(&[(&a, "gw-a"), (&b, "gw-b"), (&c, "gw-c")]).await;
    let old_c_id = a.wait_up("gw-c").await.str("node_id");
    // B, which loses C too, serves calls of its own all along.
    let load = Load::start(&b, MESH_LOAD_CALLERS).await;

    // A provider on C holds three calls made on A: they are in flight across A's link to C.
    let mut provider = session(&c).await;
    provider.write(&register_frame("svc.held", None)).await;
    assert!(provider.mesh_ping().await.is_empty());
    let mut caller = session(&a).await;
    for id in 1..=3 {
        call(&mut caller, "svc.held", id).await;
    }
    for _ in 1..=3 {
        let held = provider.expect(FrameType::Call).await.call();
        assert_eq!(held.procedure, "svc.held");
    }
    a.wait_mesh_metric(
        "meshgate_peer_pending_calls{peer=\"gw-c\",direction=\"out\"}",
        |n| n == 3,
    )
    .await;

    // C dies without a word: A learns it only when the link's idle timeout ends it, and then
    // fails each call forwarded over it with provider_gone, long before its deadline.
    let killed = c.kill();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed),
        Some(libc::SIGKILL)
    );
    let mut failed = Vec::new();
    for _ in 1..=3 {
        let replied = reply_within_mesh_patience(&mut caller).await;
        assert_eq!(
            replied.outcome,
            Err("provider_gone".to_owned()),
            "{replied:?}"
        );
        failed.push(replied.call_id.expect("a call_id"));
    }
    failed.sort_by_key(|id| match id {
        Id::U(n) => *n,
        other => panic!("not the caller's call_id: {other:?}"),
    });
    assert_eq!(failed, [Id::U(1), Id::U(2), Id::U(3)]);
    let m = a.metrics().await;
    assert_eq!(m.get("meshgate_calls_total{outcome=\"provider_gone\"}"), 3);
    assert_eq!(m.get("meshgate_calls_total{outcome=\"timeout\"}"), 0);
    assert_eq!(m.get(LOST), 1, "A lost its link to C, and only that one");
    assert!(!is_up(&a.peers().await, "gw-c"));
    b.wait_peers("gw-c not up", |peers| !is_up(peers, "gw-c"))
        .await;

    // C comes back on the same ports, with the same name and a new incarnation: it links to A
    // again (its seed), and B learns of it from A (or dials it from gossip) and links too.
    let c_flags: Vec<&str> = c_flags.iter().map(String::as_str).collect();
    let c2 = Gateway::start_at(c.addr, c.health, &c_flags);
    wait_full_mesh(&[(&a, "gw-a"), (&b, "gw-b"), (&c2, "gw-c")]).await;
    let new_c_id = a.wait_up("gw-c").await.str("node_id");
    assert_ne!(new_c_id, old_c_id, "the restarted C has a new node_id");
    for gw in [&a, &b, &c2] {
        let (_, health) = gw.get("/health").await;
        assert_eq!(
            (
                health_number(&health, "peers"),
                health_number(&health, "known")
            ),
            (2, 2),
            "{health}"
        );
    }

    // A call from A reaches a new provider on the restarted C.
    let mut provider = session(&c2).await;
    provider.write(&register_frame("svc.held", None)).await;
    assert!(provider.mesh_ping().await.is_empty());
    call_answered(&mut caller, &mut provider, "svc.held", 4).await;

    // And a publish from B reaches a subscriber on it.
    let mut subscriber = session(&c2).await;
    subscriber.write(&subscribe_frame(&["churn.**"])).await;
    assert!(subscriber.mesh_ping().await.is_empty());
    let mut publisher = session(&b).await;
    publish_until_delivered(&mut publisher, &mut subscriber, "churn.back").await;
    assert_eq!(
        a.metric("meshgate_calls_total{outcome=\"ok\"}").await,
        1,
        "the call to the new provider"
    );
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_before_its_old_link_times_out_replaces_it_and_its_calls_fail_at_once()
{
    // Links that live two minutes when quiet: only the restarted C's new link, of a larger
    // incarnation, can end the old one in time (9.3: `replaced`).
    let tokens = temp_file("restart-replaces", "token\n");
    let a = start(&mesh_idle("gw-a", &tokens, "120s", &[]));
    let seed = a.addr.to_string();
    let c_flags = mesh_idle("gw-c", &tokens, "120s", &["--peer", &seed]);
    let mut c = start(&c_flags);
    let old_c_id = a.wait_up("gw-c").await.str("node_id");
    c.wait_up("gw-a").await;

    let mut provider = session(&c).await;
    provider.write(&register_frame("svc.held", None)).await;
    assert!(provider.mesh_ping().await.is_empty());
    let mut caller = session(&a).await;
    for id in 1..=2 {
        call(&mut caller, "svc.held", id).await;
    }
    for _ in 1..=2 {
        provider.expect(FrameType::Call).await;
    }

    c.kill();
    let c_flags: Vec<&str> = c_flags.iter().map(String::as_str).collect();
    let c2 = Gateway::start_at(c.addr, c.health, &c_flags);
    for _ in 1..=2 {
        let replied = reply_within_mesh_patience(&mut caller).await;
        assert_eq!(
            replied.outcome,
            Err("provider_gone".to_owned()),
            "{replied:?}"
        );
    }
    let new_c = a
        .wait_peers("the restarted gw-c up", |peers| {
            peers.iter().any(|p| {
                p.name().as_deref() == Some("gw-c")
                    && p.state() == "up"
                    && p.str("node_id") != old_c_id
            })
        })
        .await;
    assert_eq!(new_c.len(), 1, "{new_c:?}");
    let m = a.metrics().await;
    assert_eq!(m.get("meshgate_peer_links_total{result=\"replaced\"}"), 1);
    assert_eq!(m.get(LOST), 0);
    assert_eq!(m.get("meshgate_peer_links_total{result=\"up\"}"), 2);
    assert_eq!(m.get("meshgate_calls_total{outcome=\"provider_gone\"}"), 2);
    assert_eq!(m.get("meshgate_peers"), 1);

    // The new C serves calls from A.
    c2.wait_up("gw-a").await;
    let mut provider = session(&c2).await;
    provider.write(&register_frame("svc.held", None)).await;
    assert!(provider.mesh_ping().await.is_empty());
    call_answered(&mut caller, &mut provider, "svc.held", 3).await;
}

// =========================================================================================
// --max-peers 1
// =========================================================================================

/// The most up links a gateway ever showed while watched: in `/health` (`peers`, the sum of
/// each shard's up links) and in `/peers` (shard 0's members whose link is up).
#[derive(Clone, Copy, Debug, Default)]
struct UpLinks {
    health: u64,
    peers: u64,
    looks: u64,
}

/// Tells a watcher to stop when dropped, so that a test that fails leaves none behind.
struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Polls `/health` and `/peers` of the gateway at `health` every 2 ms until the [`Stop`] is
/// dropped, and returns what it saw.
fn watch_up_links(health: std::net::SocketAddr) -> (Stop, tokio::task::JoinHandle<UpLinks>) {
    let stop = Arc::new(AtomicBool::new(false));
    let watching = stop.clone();
    let watcher = tokio::task::spawn_blocking(move || {
        let stop = watching;
        let mut most = UpLinks::default();
        while !stop.load(Ordering::SeqCst) {
            let (status, body) = http_get(health, "/health").expect("/health answers");
            assert_eq!(status, 200, "{body}");
            most.health = most.health.max(health_number(&body, "peers"));
            let (status, body) = http_get(health, "/peers").expect("/peers answers");
            assert_eq!(status, 200, "{body}");
            let up = parse_peers(&body)
                .iter()
                .filter(|p| p.state() == "up")
                .count();
            most.peers = most.peers.max(up as u64);
            most.looks += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        most
    });
    (Stop(stop), watcher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_peers_1_a_new_link_evicts_the_old_one_whose_peer_stays_away() {
    let tokens = temp_file("evict", "token\n");
    let a = start(&mesh("gw-a", &tokens, &["--max-peers", "1"]));
    let seed = a.addr.to_string();
    let b = start(&mesh("gw-b", &tokens, &["--peer", &seed]));
    a.wait_up("gw-b").await;
    b.wait_up("gw-a").await;

    // From here on, A is watched: it never has more than one up link; it serves calls of its
    // own all along.
    let load = Load::start(&a, MESH_LOAD_CALLERS).await;
    let (stop, watcher) = watch_up_links(a.health);

    // C dials A: A admits it and evicts its least recently used link, B's, the only one.
    let c = start(&mesh("gw-c", &tokens, &["--peer", &seed]));
    a.wait_up("gw-c").await;
    c.wait_up("gw-a").await;
    a.wait_mesh_metric("meshgate_peers_evicted_total", |n| n == 1)
        .await;
    let evicted = "meshgate_peer_links_total{result=\"evicted\"}";
    a.wait_mesh_metric(evicted, |n| n == 1).await;
    b.wait_mesh_metric(evicted, |n| n == 1).await;

    // B was told peer_evicted: it leaves A alone for 30 s (a lost seed would be dialed again
    // after 1 s). For a few seconds, B's link to A is not up again, and A keeps C's.
    let window = Instant::now() + Duration::from_secs(4);
    while Instant::now() < window {
        let on_b = b.peers().await;
        assert!(!is_up(&on_b, "gw-a"), "B linked to A again: {on_b:?}");
        let on_a = a.peers().await;
        assert!(
            on_a.len() == 1 && is_up(&on_a, "gw-c"),
            "A's peers: {on_a:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_b = b.peers().await;
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    assert_eq!(
        (on_b[0].str("addr"), on_b[0].state()),
        (Some(seed.clone()), "backoff".to_owned()),
        "B holds off its seed"
    );
    drop(stop);
    let most = watcher.await.expect("the watcher ran");
    assert!(most.looks > 10, "A was looked at only {} times", most.looks);
    assert!(
        most.peers <= 1,
        "A's /peers showed {} up links with --max-peers 1",
        most.peers
    );
    assert!(
        most.health <= 1,
        "A's /health showed {} up links with --max-peers 1",
        most.health
    );
    let m = a.metrics().await;
    assert_eq!(m.get("meshgate_peers"), 1);
    assert_eq!(m.get("meshgate_peers_evicted_total"), 1);
    assert_eq!(
        m.get("meshgate_peer_links_total{result=\"up\"}"),
        2,
        "B's link, then C's; B did not come back"
    );
    assert_eq!(c.metric(evicted).await, 0);
    load.finish().await;
}

// =========================================================================================
// A link cut and healed
// =========================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_in_the_middle_is_lost_on_both_ends_and_comes_back_when_healed() {
    // B reaches A only through the relay: its seed is the relay, and A advertises the relay's
    // address, so that no one is told to dial A around it. A sees the relay as B.
    let tokens = temp_file("cut", "token\n");
    let relay = Breaker::bind().await;
    let via = relay.addr.to_string();
    let a = start(&mesh("gw-a", &tokens, &["--advertise", &via]));
    relay.connect(a.addr);
    let b = start(&mesh("gw-b", &tokens, &["--peer", &via]));
    a.wait_up("gw-b").await;
    let a_on_b = b.wait_up("gw-a").await;
    assert_eq!(a_on_b.str("addr"), Some(via.clone()));

    // A serves calls of its own all along.
    let load = Load::start(&a, MESH_LOAD_CALLERS).await;
    let mut provider = session(&a).await;
    provider.write(&register_frame("svc.far", None)).await;
    assert!(provider.mesh_ping().await.is_empty());
    let mut caller = session(&b).await;
    call_answered(&mut caller, &mut provider, "svc.far", 1).await;

    // Cut: neither end hears the other any more, and each loses the link by its idle timeout.
    relay.cut();
    for (gw, other) in [(&a, "gw-b"), (&b, "gw-a")] {
        gw.wait_mesh_metric(LOST, |n| n == 1).await;
        gw.wait_peers(&format!("{other} not up"), |peers| !is_up(peers, other))
            .await;
        assert_eq!(gw.metric("meshgate_peers").await, 0);
    }
    // The interest A advertised went with the link: a call on B finds no provider at all.
    call(&mut caller, "svc.far", 2).await;
    let replied = caller.expect(FrameType::Reply).await.reply();
    assert_eq!(
        (replied.call_id, replied.outcome),
        (Some(Id::U(2)), Err("procedure_not_found".to_owned()))
    );

    // Healed: B dials its seed again (backing off meanwhile), and the link comes back.
    relay.heal();
    b.wait_up("gw-a").await;
    a.wait_up("gw-b").await;
    // The provider's registration is in the new link's snapshot; once its mesh PING is
    // answered, it is in effect on every shard of B.
    assert!(provider.mesh_ping().await.is_empty());
    call_answered(&mut caller, &mut provider, "svc.far", 3).await;
    let m = b.metrics().await;
    assert_eq!(m.get("meshgate_calls_total{outcome=\"ok\"}"), 2);
    assert_eq!(
        m.get("meshgate_calls_total{outcome=\"procedure_not_found\"}"),
        1
    );
    assert_eq!(m.get("meshgate_peer_links_total{result=\"up\"}"), 2);
    load.finish().await;
}

// =========================================================================================
// scripts/mesh.sh
// =========================================================================================

/// The script's process, stopped with SIGTERM (which it passes on to its gateways) if the
/// test ends early.
struct Script(Option<std::process::Child>);

impl Script {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.0.take()?;
        // SAFETY: kill has no memory preconditions; the pid is our own child's, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = wait_for_exit(&mut child, Duration::from_secs(15));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_mesh_sh_starts_a_full_mesh_of_three_and_stops_it() {
    // The script, run with the test build of the gateway (MESHGATE_BIN) instead of building a
    // release one: everything else is as a user runs it.
    use std::io::BufRead;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mesh.sh");
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("bash runs");
    assert!(syntax.success(), "bash -n {}", script.display());

    let base = consecutive_free_ports(3);
    let health_base = consecutive_free_ports(3);
    let dir = temp_file("mesh-sh-dir", "").with_file_name("mesh-sh");
    let mut child = std::process::Command::new("bash")
        .arg(&script)
        .args(["--base-port", &base.to_string()])
        .args(["--health-base-port", &health_base.to_string()])
        .arg("--dir")
        .arg(&dir)
        .env("MESHGATE_BIN", gateway_bin())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the script starts");
    let stderr = child.stderr.take().expect("piped");
    let mut script = Script(Some(child));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut said = String::new();
    let deadline = Instant::now() + MESH_PATIENCE;
    while !said.contains("mesh: three gateways, a full mesh") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                said.push_str(&line);
                said.push('\n');
            }
            Err(_) => panic!("the script did not report a full mesh; it said:\n{said}"),
        }
    }

    let healths: Vec<std::net::SocketAddr> = (0..3)
        .map(|i| ([127, 0, 0, 1], health_base + i).into())
        .collect();
    for (i, (health, name)) in healths.iter().zip(["a", "b", "c"]).enumerate() {
        let (status, body) = http_get(*health, "/health").expect("/health answers");
        assert_eq!(status, 200);
        assert!(
            body.contains(&format!("\"node_name\":\"{name}\"")),
            "{body}"
        );
        assert_eq!(
            (health_number(&body, "peers"), health_number(&body, "known")),
            (2, 2),
            "{body}"
        );
        let (_, peers) = http_get(*health, "/peers").expect("/peers answers");
        let peers = parse_peers(&peers);
        let mut others: Vec<String> = peers.iter().filter_map(Peer::name).collect();
        others.sort();
        let want: Vec<String> = ["a", "b", "c"]
            .iter()
            .filter(|n| **n != name)
            .map(|n| n.to_string())
            .collect();
        assert_eq!(others, want, "gateway {i}'s peers: {peers:?}");
        assert!(peers.iter().all(|p| p.state() == "up"), "{peers:?}");
        let listens = format!("127.0.0.1:{}", base + i as u16);
        let on_others = (0..3).filter(|j| *j != i).any(|j| {
            let (_, body) = http_get(healths[j], "/peers").expect("/peers answers");
            parse_peers(&body).iter().any(|p| {
                p.name().as_deref() == Some(name) && p.str("addr") == Some(listens.clone())
            })
        });
        assert!(on_others, "no peer of {name} knows it at {listens}");
    }
    let token = std::fs::read_to_string(dir.join("cluster-token")).expect("the token file");
    assert_eq!(token.trim().len(), 64, "32 random bytes in hex: {token:?}");
    for name in ["a", "b", "c"] {
        assert!(dir.join(format!("{name}.log")).exists(), "{name}.log");
    }

    // SIGTERM to the script stops every gateway it started.
    script.stop().expect("the script stops within 15 s");
    let mut rest = String::new();
    while let Ok(line) = rx.recv_timeout(PATIENCE) {
        rest.push_str(&line);
        rest.push('\n');
    }
    assert!(
        rest.contains("mesh: stopped"),
        "the script's last words: {rest}"
    );
    for health in &healths {
        assert!(
            http_get(*health, "/health").is_err(),
            "a gateway still answers on {health}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// PROTOCOL.md 9.3: "The number of admitted links MUST never exceed `--max-peers`", and
/// `meshgate_peers` (and `/health`'s `peers`) counts up links. The new link is admitted only
/// once the evicted one is closed (shard 0 sends the admission through the evicted link's
/// shard), and `/health` counts the members of shard 0's peer table whose link is up, not a
/// sum of the shards' own counts, which they make at slightly different moments. Each of 24
/// gateways in turn evicts the previous one while `/health` and `/peers` are watched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_peers_1_health_never_shows_two_up_links_while_links_are_evicted() {
    let tokens = temp_file("evict-many", "token\n");
    let a = start(&mesh("gw-a", &tokens, &["--max-peers", "1"]));
    let seed = a.addr.to_string();
    let (stop, watcher) = watch_up_links(a.health);
    let mut previous = None;
    for i in 0..24 {
        let name = format!("gw-{i}");
        let next = start(&mesh(&name, &tokens, &["--peer", &seed]));
        a.wait_up(&name).await;
        a.wait_mesh_metric("meshgate_peers_evicted_total", |n| n == i)
            .await;
        previous = Some(next);
    }
    drop(previous);
    drop(stop);
    let most = watcher.await.expect("the watcher ran");
    assert_eq!(most.peers, 1, "{most:?}");
    assert_eq!(
        most.health, 1,
        "A showed 2 up links with --max-peers 1: {most:?}"
    );
}
