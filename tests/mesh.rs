//! End-to-end tests of the gateway mesh (PROTOCOL.md section 9): real `meshgate` processes with
//! 2 shards each on loopback, linked by `--peer`, driven with raw sessions. The simulator owns
//! the mesh's semantics; these tests cover what the driver adds: the peer ALPN, dials from a
//! shard's socket, both streams of a link, closes, `/peers`, `/health` and the metrics.
//!
//! Every wait is on a condition the gateways reach (a link up, a counter moved), polled with a
//! deadline of [`MESH_PATIENCE`]; a mesh PING is the barrier before traffic crosses a link.

mod support;

use std::path::Path;
use std::time::Duration;

use meshgate_shard::wire::FrameType;
use support::*;

/// The flags of a mesh gateway called `name`, with the token file `tokens`, and `more`.
fn mesh(name: &str, tokens: &Path, more: &[&str]) -> Vec<String> {
    let mut flags = vec![
        "--node-name".to_owned(),
        name.to_owned(),
        "--cluster-token-file".to_owned(),
        tokens.to_str().expect("a UTF-8 path").to_owned(),
    ];
    flags.extend(more.iter().map(|s| s.to_string()));
    flags
}

fn start(flags: &[String]) -> Gateway {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Gateway::start(&flags)
}

/// `/health`'s `peers` and `known`.
async fn peers_and_known(gw: &Gateway) -> (u64, u64) {
    let (status, body) = gw.get("/health").await;
    assert_eq!(status, 200, "{body}");
    (health_number(&body, "peers"), health_number(&body, "known"))
}

/// A frame counter of the link to `peer`.
fn frames(direction: &str, peer: &str, ty: &str) -> String {
    format!("meshgate_peer_frames_{direction}_total{{peer=\"{peer}\",type=\"{ty}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_link_and_carry_publishes_and_calls_across() {
    let tokens = temp_file("two-gateways", "first-token\nsecond-token\n");
    // Two sessions on A: the link to B does not count towards --max-clients.
    let a = start(&mesh("gw-a", &tokens, &["--max-clients", "2"]));
    let a_addr = a.addr.to_string();
    let b = start(&mesh("gw-b", &tokens, &["--peer", &a_addr]));

    let b_on_a = a.wait_up("gw-b").await;
    let a_on_b = b.wait_up("gw-a").await;
    assert_eq!(a_on_b.raw("dialed"), "true", "{a_on_b:?}");
    assert_eq!(b_on_a.raw("dialed"), "false", "{b_on_a:?}");
    assert_eq!(a_on_b.str("addr").as_deref(), Some(a_addr.as_str()));
    assert_eq!(b_on_a.str("addr"), Some(b.addr.to_string()));
    for p in [&a_on_b, &b_on_a] {
        assert_eq!(p.str("node_id").map(|id| id.len()), Some(64), "{p:?}");
        assert_eq!(p.raw("shared_realms"), "[\"macula.default\"]");
        assert_eq!(p.raw("unshared_realms"), "[]");
        let since: u64 = p.raw("since").parse().expect("since is a number");
        let now = unix_ms() / 1000;
        assert!(
            since <= now && now - since < 600,
            "since {since}, now {now}"
        );
    }
    assert_eq!(peers_and_known(&a).await, (1, 1));
    assert_eq!(peers_and_known(&b).await, (1, 1));
    assert_eq!(a.metric("meshgate_peers").await, 1);
    assert_eq!(a.metric("meshgate_peer_up{peer=\"gw-b\"}").await, 1);
    assert_eq!(
        b.metric("meshgate_peer_links_total{result=\"up\"}").await,
        1
    );

    // A subscriber on A gets a PUBLISH made on B, once its interest is in effect on B.
    let mut subscriber = a.raw().await;
    subscriber.write(&subscribe_frame(&["news.*"])).await;
    assert!(subscriber.mesh_ping().await.is_empty());
    let mut publisher = b.raw().await;
    publisher.publish("news.today", b"hello").await;
    let got = subscriber.expect(FrameType::Publish).await.publish();
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.publisher),
        ("news.today", &b"hello"[..], Some(publisher.node_id))
    );

    // A call made on B reaches a provider on A, and its reply comes back.
    let mut provider = a.raw().await;
    provider.write(&register_frame("svc.echo", None)).await;
    assert!(provider.mesh_ping().await.is_empty());
    publisher.call("svc.echo", &[0x2a], &Id::U(7)).await;
    let called = provider.expect(FrameType::Call).await.call();
    assert_eq!(
        (called.procedure.as_str(), &called.args[..]),
        ("svc.echo", &[0x2a][..])
    );
    let token = called.call_id.expect("a call_id");
    provider
        .write(&reply_frame(&token, &[0xa2, b'o', b'k']))
        .await;
    let replied = publisher.expect(FrameType::Reply).await.reply();
    assert_eq!(replied.call_id, Some(Id::U(7)));
    assert_eq!(replied.outcome, Ok(vec![0xa2, b'o', b'k']));

    // And the other way: a subscriber on B gets a PUBLISH made on A.
    publisher.write(&subscribe_frame(&["back.**"])).await;
    assert!(publisher.mesh_ping().await.is_empty());
    subscriber.publish("back.home", b"again").await;
    let got = publisher.expect(FrameType::Publish).await.publish();
    assert_eq!(got.payload, b"again");

    // Each data frame crossed the link once, and both ends counted it.
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    for (m, dir, peer, ty) in [
        (&mb, "sent", "gw-a", "PUBLISH"),
        (&mb, "sent", "gw-a", "CALL"),
        (&mb, "received", "gw-a", "REPLY"),
        (&mb, "received", "gw-a", "PUBLISH"),
        (&ma, "received", "gw-b", "PUBLISH"),
        (&ma, "received", "gw-b", "CALL"),
        (&ma, "sent", "gw-b", "REPLY"),
        (&ma, "sent", "gw-b", "PUBLISH"),
        (&ma, "received", "gw-b", "PEER_HELLO"),
        (&ma, "received", "gw-b", "PEER_AUTH"),
        (&mb, "sent", "gw-a", "PEER_AUTH"),
    ] {
        assert_eq!(
            m.get(&frames(dir, peer, ty)),
            1,
            "{dir} {ty} on {peer}'s link"
        );
    }
    assert_eq!(mb.get("meshgate_calls_total{outcome=\"ok\"}"), 1);
    assert_eq!(ma.get("meshgate_clients"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_given_by_host_name_is_resolved_and_linked() {
    let tokens = temp_file("host-name", "token\n");
    let a = start(&mesh("gw-a", &tokens, &[]));
    let by_name = format!("localhost:{}", a.addr.port());
    let b = start(&mesh("gw-b", &tokens, &["--peer", &by_name]));
    let a_on_b = b.wait_up("gw-a").await;
    assert_eq!(
        a_on_b.str("addr"),
        Some(a.addr.to_string()),
        "A's advertised address"
    );
    assert_eq!(
        peers_and_known(&b).await,
        (1, 1),
        "the seed is the member found there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_cluster_token_never_comes_up_and_both_count_it_unauthorized() {
    let a = start(&mesh("gw-a", &temp_file("token-a", "alpha\n"), &[]));
    let a_addr = a.addr.to_string();
    let b = start(&mesh(
        "gw-b",
        &temp_file("token-b", "beta\n"),
        &["--peer", &a_addr],
    ));
    let unauthorized = "meshgate_peer_links_total{result=\"unauthorized\"}";
    a.wait_mesh_metric(unauthorized, |n| n >= 1).await;
    b.wait_mesh_metric(unauthorized, |n| n >= 1).await;
    for gw in [&a, &b] {
        assert_eq!(
            gw.metric("meshgate_peer_links_total{result=\"up\"}").await,
            0
        );
        assert_eq!(gw.metric("meshgate_peers").await, 0);
    }
    assert!(a.peers().await.is_empty(), "no member on A");
    let dialed = b.peers().await;
    assert_eq!(dialed.len(), 1, "{dialed:?}");
    assert_eq!(dialed[0].str("addr").as_deref(), Some(a_addr.as_str()));
    assert_ne!(dialed[0].state(), "up");
    assert_eq!(peers_and_known(&b).await, (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_closes_its_links_at_once() {
    // The idle timeout is long: only the stopping gateway's close can end the link in time.
    let tokens = temp_file("stopping", "token\n");
    let slow = ["--peer-idle-timeout", "120s"];
    let a = start(&mesh("gw-a", &tokens, &slow));
    let a_addr = a.addr.to_string();
    let mut flags = mesh("gw-b", &tokens, &slow);
    flags.extend(["--peer".to_owned(), a_addr]);
    let mut b = start(&flags);
    a.wait_up("gw-b").await;
    b.signal(libc::SIGTERM);
    let status = b.wait_exit(Duration::from_secs(10)).await.expect("B stops");
    assert!(status.success(), "{status:?}");
    a.wait_metric("meshgate_peers", |n| n == 0).await;
    a.wait_metric("meshgate_peer_links_total{result=\"lost\"}", |n| n == 1)
        .await;
    assert!(a.peers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_peer_link_gets_the_peer_idle_timeout_not_the_client_one() {
    // A's client idle timeout is 1 s; its links' is 60 s, keep-alive every 15 s. The link
    // comes up, then carries nothing: it must outlive several client idle timeouts. (Were the
    // acceptor's QUIC idle timeout the client one, the link would be lost after 1 s of quiet.)
    let tokens = temp_file("idle", "token\n");
    let a = start(&mesh(
        "gw-a",
        &tokens,
        &["--idle-timeout", "1s", "--peer-idle-timeout", "60s"],
    ));
    let a_addr = a.addr.to_string();
    let b = start(&mesh(
        "gw-b",
        &tokens,
        &["--peer", &a_addr, "--peer-idle-timeout", "60s"],
    ));
    a.wait_up("gw-b").await;
    b.wait_up("gw-a").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    for gw in [&a, &b] {
        let m = gw.metrics().await;
        assert_eq!(m.get("meshgate_peer_links_total{result=\"lost\"}"), 0);
        assert_eq!(m.get("meshgate_peer_links_total{result=\"up\"}"), 1);
        assert_eq!(m.get("meshgate_peers"), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_given_one_seed_form_a_full_mesh() {
    let tokens = temp_file("three", "token\n");
    let a = start(&mesh("gw-a", &tokens, &[]));
    let seed = a.addr.to_string();
    let b = start(&mesh("gw-b", &tokens, &["--peer", &seed]));
    let c = start(&mesh("gw-c", &tokens, &["--peer", &seed]));
    for (gw, others) in [
        (&a, ["gw-b", "gw-c"]),
        (&b, ["gw-a", "gw-c"]),
        (&c, ["gw-a", "gw-b"]),
    ] {
        for other in others {
            gw.wait_up(other).await;
        }
    }
    // B and C may both have dialed: a link seen up may still be replaced by the one admission
    // keeps (9.3), and the gateway counts one peer up for that moment. The mesh settles with
    // every gateway counting both.
    for gw in [&a, &b, &c] {
        let deadline = std::time::Instant::now() + MESH_PATIENCE;
        let mut seen = peers_and_known(gw).await;
        while seen != (2, 2) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            seen = peers_and_known(gw).await;
        }
        assert_eq!(seen, (2, 2), "peers up and known, after {MESH_PATIENCE:?}");
    }
    // B and C found each other by gossip: a publish on C reaches B. Both may have dialed:
    // the link seen up may still be replaced by the one admission keeps (9.3), losing what
    // was on its way (9.5), so the publish is repeated until one arrives.
    let mut subscriber = b.raw().await;
    subscriber.write(&subscribe_frame(&["mesh.**"])).await;
    assert!(subscriber.mesh_ping().await.is_empty());
    let mut publisher = c.raw().await;
    for round in 0u8.. {
        assert!(round < 60, "no publish from C reached B");
        publisher.publish("mesh.wide", &[round]).await;
        match subscriber.next_within(Duration::from_millis(500)).await {
            Ok(Some(frame)) => {
                let got = frame.publish();
                assert_eq!(
                    (got.topic.as_str(), got.publisher),
                    ("mesh.wide", Some(publisher.node_id))
                );
                break;
            }
            Ok(None) => panic!("B's session ended"),
            Err(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_that_gets_no_quic_handshake_counts_dial_failed_and_backs_off() {
    // A UDP port that answers nothing, held for the test.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    let nowhere = silent.local_addr().expect("bound").to_string();
    let flags = mesh(
        "gw-b",
        &temp_file("dial-failed", "token\n"),
        &["--peer", &nowhere, "--peer-idle-timeout", "1s"],
    );
    let b = start(&flags);
    b.wait_mesh_metric("meshgate_peer_links_total{result=\"dial_failed\"}", |n| {
        n >= 1
    })
    .await;
    let peers = b.peers().await;
    assert_eq!(peers.len(), 1, "{peers:?}");
    let p = &peers[0];
    assert_eq!(p.str("addr").as_deref(), Some(nowhere.as_str()));
    assert_eq!((p.raw("node_name"), p.raw("dialed")), ("null", "true"));
    assert!(
        ["backoff", "connecting"].contains(&p.state().as_str()),
        "{p:?}"
    );
    assert_eq!(peers_and_known(&b).await, (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_node_name_offers_no_peer_alpn_and_dials_to_it_fail() {
    let plain = Gateway::start(&[]);
    let target = plain.addr.to_string();
    let flags = mesh(
        "gw-b",
        &temp_file("no-mesh", "token\n"),
        &["--peer", &target],
    );
    let b = start(&flags);
    b.wait_mesh_metric("meshgate_peer_links_total{result=\"dial_failed\"}", |n| {
        n >= 1
    })
    .await;
    let (status, body) = plain.get("/peers").await;
    assert_eq!((status, body.as_str()), (200, "[]"));
    let (_, health) = plain.get("/health").await;
    assert!(
        health.contains("\"node_name\":null,\"peers\":0,\"known\":0"),
        "{health}"
    );
    // Once B stops redialing, every refused handshake is gone from the plain gateway.
    drop(b);
    plain.wait_metric("meshgate_handshakes", |n| n == 0).await;
    assert_eq!(plain.metric("meshgate_clients").await, 0);
}

// =========================================================================================
// --peer-ca
// =========================================================================================

/// A certificate (PEM file) for `name` and its key, signed by `issuer` (certificate and
/// key) or by itself, a CA when `ca`.
struct Pem {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    x509: boring::x509::X509,
    pkey: boring::pkey::PKey<boring::pkey::Private>,
}

fn certificate(name: &str, issuer: Option<&Pem>, ca: bool) -> Pem {
    use boring::asn1::Asn1Time;
    use boring::bn::{BigNum, MsbOption};
    use boring::ec::{EcGroup, EcKey};
    use boring::hash::MessageDigest;
    use boring::nid::Nid;
    use boring::pkey::PKey;
    use boring::x509::extension::{BasicConstraints, KeyUsage};
    use boring::x509::{X509Builder, X509NameBuilder};

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let pkey = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut subject = X509NameBuilder::new().unwrap();
    subject.append_entry_by_nid(Nid::COMMONNAME, name).unwrap();
    let subject = subject.build();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&subject).unwrap();
    let issuer_name = issuer.map_or(&*subject, |i| i.x509.subject_name());
    b.set_issuer_name(issuer_name).unwrap();
    b.set_pubkey(&pkey).unwrap();
    let now = unix_ms() / 1000;
    let not_before = Asn1Time::from_unix((now - 3600) as libc::time_t).unwrap();
    let not_after = Asn1Time::from_unix((now + 86_400) as libc::time_t).unwrap();
    b.set_not_before(&not_before).unwrap();
    b.set_not_after(&not_after).unwrap();
    if ca {
        b.append_extension(&BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        let usage = KeyUsage::new().critical().key_cert_sign().build().unwrap();
        b.append_extension(&usage).unwrap();
    }
    let signer = issuer.map_or(&pkey, |i| &i.pkey);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    let x509 = b.build();
    let cert = temp_file(&format!("{name}.pem"), "");
    std::fs::write(&cert, x509.to_pem().unwrap()).unwrap();
    let key = temp_file(&format!("{name}.key"), "");
    std::fs::write(&key, pkey.private_key_to_pem_pkcs8().unwrap()).unwrap();
    Pem {
        cert,
        key,
        x509,
        pkey,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_peer_ca_only_gateways_whose_certificates_chain_to_it_link() {
    let ca = certificate("mesh-ca", None, true);
    let other_ca = certificate("other-ca", None, true);
    let [a_pem, b_pem] = ["gw-a-cert", "gw-b-cert"].map(|n| certificate(n, Some(&ca), false));
    let path = |p: &std::path::Path| p.to_str().expect("UTF-8").to_owned();
    let pki = |pem: &Pem, ca: &Pem| {
        vec![
            "--cert".to_owned(),
            path(&pem.cert),
            "--key".to_owned(),
            path(&pem.key),
            "--peer-ca".to_owned(),
            path(&ca.cert),
        ]
    };
    let tokens = temp_file("peer-ca", "token\n");
    let pki_a = pki(&a_pem, &ca);
    let a = start(&mesh(
        "gw-a",
        &tokens,
        &pki_a.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let a_addr = a.addr.to_string();

    // B's certificate chains to the CA, and A's does: linked.
    let mut flags = mesh("gw-b", &tokens, &["--peer", &a_addr]);
    flags.extend(pki(&b_pem, &ca));
    let b = start(&flags);
    b.wait_up("gw-a").await;
    a.wait_up("gw-b").await;

    // C trusts another CA: A's certificate does not chain to it, C's dial fails.
    let flags = mesh(
        "gw-c",
        &tokens,
        &["--peer", &a_addr, "--peer-ca", &path(&other_ca.cert)],
    );
    let c = start(&flags);
    c.wait_mesh_metric("meshgate_peer_links_total{result=\"dial_failed\"}", |n| {
        n >= 1
    })
    .await;

    // D trusts the CA but presents a self-signed certificate: A refuses it. D's side of the
    // QUIC handshake ends before A has checked it (TLS 1.3), so the dial is not counted as
    // failed (9.11): it shows in D's dial schedule, backing off.
    let flags = mesh(
        "gw-d",
        &tokens,
        &["--peer", &a_addr, "--peer-ca", &path(&ca.cert)],
    );
    let d = start(&flags);
    d.wait_peers("A's address backing off", |peers| {
        peers.len() == 1 && peers[0].state() == "backoff"
    })
    .await;
    for gw in [&c, &d] {
        assert_eq!(
            gw.metric("meshgate_peer_links_total{result=\"up\"}").await,
            0
        );
        assert_eq!(peers_and_known(gw).await, (0, 1));
    }
    assert_eq!(
        a.metric("meshgate_peer_links_total{result=\"up\"}").await,
        1
    );
    assert_eq!(peers_and_known(&a).await, (1, 1));
}

// =========================================================================================
// Start-up refusals (PROTOCOL.md 9.1)
// =========================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_flags_that_cannot_work_are_refused_with_one_line_and_status_2() {
    let tokens = temp_file("refusals", "token\n");
    let tokens = tokens.to_str().expect("UTF-8");
    let empty = temp_file("refusals-empty", "\n \n");
    let empty = empty.to_str().expect("UTF-8");
    let cases: [(&[&str], &str); 10] = [
        (&["--node-name", "a"], "--cluster-token-file"),
        (&["--peer", "127.0.0.1:9443"], "--node-name"),
        (&["--advertise", "127.0.0.1:9443"], "--node-name"),
        (&["--cluster-token-file", tokens], "--node-name"),
        (
            &["--node-name", "a", "--cluster-token-file", empty],
            "holds no token",
        ),
        (
            &[
                "--node-name",
                "a",
                "--cluster-token-file",
                "/nonexistent/meshgate/tokens",
            ],
            "/nonexistent/meshgate/tokens",
        ),
        (
            &["--node-name", "Gateway A", "--cluster-token-file", tokens],
            "node name",
        ),
        (
            &[
                "--node-name",
                &"x".repeat(65),
                "--cluster-token-file",
                tokens,
            ],
            "node name",
        ),
        (&["--max-peers", "0"], "--max-peers"),
        (
            &[
                "--node-name",
                "a",
                "--cluster-token-file",
                tokens,
                "--max-peers",
                "0",
            ],
            "--max-peers",
        ),
    ];
    for (flags, needle) in cases {
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
        ];
        args.extend(flags);
        let exited = run_to_exit(&args);
        assert_eq!(
            exited.status.code(),
            Some(2),
            "{flags:?}: {}",
            exited.stderr
        );
        let lines: Vec<&str> = exited.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{flags:?}: {:?}", exited.stderr);
        assert!(
            lines[0].contains(needle),
            "{flags:?}: {:?} lacks {needle:?}",
            lines[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_documents_every_mesh_flag() {
    let out = std::process::Command::new(gateway_bin())
        .args(["serve", "--help"])
        .output()
        .expect("meshgate runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--node-name",
        "--peer ",
        "--advertise",
        "--cluster-token-file",
        "--max-peers",
        "--peer-idle-timeout",
        "--max-peer-output",
        "--interest-refresh",
        "--max-advertised-patterns",
        "--peer-ca",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    assert!(help.contains("127.0.0.1 with the listen port"), "{help}");
}
