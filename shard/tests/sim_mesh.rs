//! PROTOCOL.md section 9, one MUST at a time, on simulated meshes of multi-shard gateways.

mod sim;

use std::time::Duration;

use meshgate_shard::metrics::{CallOutcome, DropReason, LinkResult};
use meshgate_shard::wire::{
    Entries, FrameType, Interest, LinkCall, LinkStream, Message, PeerMessage, Ping, Raw, Reason,
    Strings, SyncMsg, SyncPhase,
};
use meshgate_shard::NodeId;
use sim::mesh::{name, GatewaySpec, MeshSim};
use sim::{node, seeds, ClientId, SeedGuard, REALM};

fn each_seed(count: u64, test: impl Fn(u64)) {
    for seed in seeds(0, count) {
        let _guard = SeedGuard(seed);
        test(seed);
    }
}

/// `n` gateways of `shards` shards, every one but gateway 0 given only gateway 0 as `--peer`.
fn specs(n: usize, shards: u16) -> Vec<GatewaySpec> {
    (0..n)
        .map(|i| {
            let spec = GatewaySpec::new(shards);
            if i == 0 {
                spec
            } else {
                spec.peers(&[0])
            }
        })
        .collect()
}

/// The gateways of `specs`, once every one has an up link to every other.
fn full_mesh_of(seed: u64, specs: Vec<GatewaySpec>) -> MeshSim {
    let n = specs.len();
    let mut mesh = MeshSim::new(seed, specs);
    mesh.advance(Duration::from_secs(5));
    for gw in 0..n {
        assert_eq!(
            mesh.up_peers(gw).len(),
            n - 1,
            "gateway {gw} in a full mesh"
        );
    }
    mesh
}

fn full_mesh(seed: u64, n: usize, shards: u16) -> MeshSim {
    full_mesh_of(seed, specs(n, shards))
}

/// A shard of a gateway of `shards` shards, drawn from the seed and `salt`.
fn shard_of(seed: u64, salt: u64, shards: u16) -> u16 {
    (fastrand::Rng::with_seed(seed ^ salt.wrapping_mul(0x9e37)).u64(..) % u64::from(shards)) as u16
}

/// Payloads a subscriber got from `publisher`, in order.
fn payloads_from(mesh: &MeshSim, gw: usize, c: ClientId, publisher: NodeId) -> Vec<Vec<u8>> {
    mesh.gw_ref(gw)
        .publishes(c)
        .into_iter()
        .filter(|(_, _, p)| *p == Some(publisher))
        .map(|(_, payload, _)| payload)
        .collect()
}

/// A REPLY's `result`: MessagePack of the integer `n` (under 128).
fn ok(n: u8) -> Vec<u8> {
    vec![n]
}

/// No gateway ever holds two admitted links to one peer (9.3 step 5).
fn one_admitted_link_per_peer(mesh: &MeshSim) {
    for gw in 0..mesh.gws.len() {
        if mesh.gws[gw].is_none() {
            continue;
        }
        let mut names: Vec<Box<[u8]>> = mesh
            .links(gw)
            .into_iter()
            .filter(|l| l.state.is_admitted())
            .filter_map(|l| l.node_name)
            .collect();
        let admitted = names.len();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            admitted,
            "two admitted links to one peer on {gw}"
        );
    }
}

// ------------------------------------------------------------------------------ 9.4 members

#[test]
fn three_gateways_given_only_one_seed_form_a_full_mesh() {
    each_seed(12, |seed| {
        let mut mesh = MeshSim::seeded(seed, 3, 2);
        mesh.advance_with(Duration::from_secs(5), &mut one_admitted_link_per_peer);
        for gw in 0..3 {
            let others: Vec<String> = (0..3).filter(|&o| o != gw).map(name).collect();
            assert_eq!(mesh.up_peers(gw), others, "gateway {gw}");
            let table = mesh.gw_ref(gw).shards[0].peer_table().expect("shard 0");
            assert_eq!(table.members.len(), 2);
        }
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            assert_eq!(mesh.connections(a, b), 1, "one link between {a} and {b}");
        }
        // Nothing flaps afterwards.
        mesh.advance(Duration::from_secs(60));
        for gw in 0..3 {
            assert_eq!(mesh.up_peers(gw).len(), 2);
        }
        mesh.assert_counters_agree();
    });
}

#[test]
fn two_gateways_that_met_by_gossip_link_again_after_their_link_is_lost() {
    each_seed(8, |seed| {
        let mut mesh = full_mesh(seed, 3, 2);
        mesh.cut(1, 2);
        mesh.heal(1, 2);
        mesh.advance(Duration::from_secs(5));
        for gw in 0..3 {
            assert_eq!(mesh.up_peers(gw).len(), 2, "gateway {gw}");
        }
        // A longer cut: dials fail meanwhile, and succeed once it heals.
        mesh.cut(1, 2);
        mesh.advance(Duration::from_secs(4));
        mesh.heal(1, 2);
        mesh.advance(Duration::from_secs(40));
        for gw in 0..3 {
            assert_eq!(mesh.up_peers(gw).len(), 2, "gateway {gw}");
        }
    });
}

/// PROTOCOL.md 9.11: the per-peer counters are counters: what a lost link carried stays
/// counted once the peer is linked again.
#[test]
fn the_per_peer_counters_keep_what_a_lost_link_carried() {
    each_seed(4, |seed| {
        let mut mesh = full_mesh(seed, 2, 2);
        let counted = |mesh: &MeshSim, gw: usize| -> u64 {
            let peer = sim::mesh::name(1 - gw);
            mesh.gw_ref(gw)
                .shards
                .iter()
                .flat_map(|s| s.peer_counters())
                .filter(|(name, _)| **name == *peer.as_bytes())
                .map(|(_, c)| c.frames_of(FrameType::Ping).0)
                .sum()
        };
        mesh.advance(Duration::from_secs(20));
        let before = [counted(&mesh, 0), counted(&mesh, 1)];
        assert!(
            before.iter().all(|&n| n > 0),
            "keep-alive PINGs: {before:?}"
        );
        mesh.cut(0, 1);
        mesh.advance(Duration::from_secs(20));
        mesh.heal(0, 1);
        mesh.advance(Duration::from_secs(40));
        assert_eq!(mesh.up_peers(0).len(), 1, "linked again");
        for (gw, before) in before.into_iter().enumerate() {
            let now = counted(&mesh, gw);
            let link = mesh.link(gw, 1 - gw).expect("the new link");
            let on_new_link = link.counters.frames_of(FrameType::Ping).0;
            assert!(
                now >= on_new_link + before,
                "gateway {gw}: {now} counted, {on_new_link} on the new link, {before} before"
            );
        }
    });
}

#[test]
fn two_gateways_dialing_each_other_at_once_keep_the_same_single_link() {
    each_seed(24, |seed| {
        let specs = vec![
            GatewaySpec::new(2).peers(&[1]),
            GatewaySpec::new(3).peers(&[0]),
        ];
        let mut mesh = MeshSim::new(seed, specs);
        mesh.advance_with(Duration::from_secs(5), &mut one_admitted_link_per_peer);
        assert_eq!(mesh.up_peers(0), [name(1)]);
        assert_eq!(mesh.up_peers(1), [name(0)]);
        assert_eq!(mesh.connections(0, 1), 1);
        let (a, b) = (mesh.up_links(0), mesh.up_links(1));
        assert_ne!(
            a[0].dialed.is_some(),
            b[0].dialed.is_some(),
            "the link one end dialed is the link the other accepted"
        );
        mesh.advance(Duration::from_secs(60));
        assert_eq!(mesh.connections(0, 1), 1);
        assert_eq!((mesh.admitted(0), mesh.admitted(1)), (1, 1));
        mesh.assert_counters_agree();
    });
}

// ------------------------------------------------------------------------------ 9.7 publish

#[test]
fn each_publish_reaches_every_matching_session_of_the_mesh_exactly_once_in_order() {
    each_seed(12, |seed| {
        let mut mesh = full_mesh(seed, 3, 2);
        let s = |salt| shard_of(seed, salt, 2);
        let s1 = mesh.connect(1, s(1), node(11));
        mesh.gw(1).subscribe(s1, &["a.*", "a.b"]);
        let s2 = mesh.connect(2, s(2), node(12));
        mesh.gw(2).subscribe(s2, &["**"]);
        let s3 = mesh.connect(2, s(3), node(13));
        mesh.gw(2).subscribe(s3, &["a.b", "a.**", "*.b"]);
        let p = mesh.connect(0, s(4), node(10));
        mesh.gw(0).subscribe(p, &["**"]);
        let q = mesh.connect(1, s(5), node(14));
        for (gw, c) in [(1, s1), (2, s2), (2, s3), (0, p)] {
            mesh.mesh_sync(gw, c);
        }
        for i in 0..20u8 {
            let topic = if i % 2 == 0 { "a.b" } else { "a.c" };
            mesh.gw(0).publish(p, topic, &[i]);
            if i % 3 == 0 {
                mesh.step();
            }
        }
        for i in 0..10u8 {
            mesh.gw(1).publish(q, "a.b", &[100 + i]);
        }
        mesh.drive();
        let from_p: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i]).collect();
        let from_q: Vec<Vec<u8>> = (0..10u8).map(|i| vec![100 + i]).collect();
        for (gw, c) in [(1, s1), (2, s2), (2, s3)] {
            assert_eq!(payloads_from(&mesh, gw, c, node(10)), from_p, "{gw}/{c}");
            assert_eq!(payloads_from(&mesh, gw, c, node(14)), from_q, "{gw}/{c}");
            assert_eq!(mesh.gw_ref(gw).publishes(c).len(), 30);
        }
        assert_eq!(payloads_from(&mesh, 0, p, node(10)), Vec::<Vec<u8>>::new());
        assert_eq!(payloads_from(&mesh, 0, p, node(14)), from_q);
        mesh.assert_counters_agree();
    });
}

#[test]
fn a_publish_sends_one_frame_per_link_with_interest_and_none_to_other_links() {
    each_seed(8, |seed| {
        let mut mesh = full_mesh(seed, 3, 3);
        let s = |salt| shard_of(seed, salt, 3);
        // Gateway 1: three sessions, many patterns matching `t.x`.
        for (i, patterns) in [&["t.*", "t.x"][..], &["t.x"], &["*.x", "t.**"]]
            .iter()
            .enumerate()
        {
            let c = mesh.connect(1, i as u16, node(20 + i as u32));
            mesh.gw(1).subscribe(c, patterns);
            mesh.mesh_sync(1, c);
        }
        // Gateway 2: interest elsewhere only.
        let other = mesh.connect(2, s(1), node(30));
        mesh.gw(2).subscribe(other, &["u.*"]);
        mesh.mesh_sync(2, other);
        let p = mesh.connect(0, s(2), node(10));
        let before = (
            mesh.sent(0, 1, FrameType::Publish),
            mesh.sent(0, 2, FrameType::Publish),
        );
        assert_eq!(before, (0, 0));
        for i in 0..15u8 {
            mesh.gw(0).publish(p, "t.x", &[i]);
        }
        mesh.drive();
        assert_eq!(mesh.sent(0, 1, FrameType::Publish), 15);
        assert_eq!(mesh.received(1, 0, FrameType::Publish), 15);
        assert_eq!(mesh.sent(0, 2, FrameType::Publish), 0, "no interest there");
        for i in 0..5u8 {
            mesh.gw(0).publish(p, "u.v", &[i]);
        }
        mesh.drive();
        assert_eq!(mesh.sent(0, 1, FrameType::Publish), 15);
        assert_eq!(mesh.sent(0, 2, FrameType::Publish), 5);
        assert_eq!(mesh.gw_ref(2).publishes(other).len(), 5);
        assert_eq!(mesh.total(1, |c| c.deliveries), 45);
        mesh.assert_counters_agree();
    });
}

#[test]
fn no_publish_received_on_a_link_is_ever_sent_on_a_link() {
    each_seed(8, |seed| {
        let mut mesh = full_mesh(seed, 3, 2);
        let s = |salt| shard_of(seed, salt, 2);
        let mut publishers = Vec::new();
        for gw in 0..3 {
            let sub = mesh.connect(gw, s(gw as u64), node(40 + gw as u32));
            mesh.gw(gw).subscribe(sub, &["**"]);
            mesh.mesh_sync(gw, sub);
            publishers.push(mesh.connect(gw, s(10 + gw as u64), node(50 + gw as u32)));
        }
        let counts = [7u64, 3, 0];
        for (gw, &n) in counts.iter().enumerate() {
            for i in 0..n {
                mesh.gw(gw).publish(publishers[gw], "x.y", &[i as u8]);
            }
        }
        mesh.drive();
        for (gw, &n) in counts.iter().enumerate() {
            // Each of its own publishes once to each of the 2 peers; nothing relayed.
            assert_eq!(mesh.sent_by(gw, FrameType::Publish), 2 * n, "gateway {gw}");
        }
        mesh.assert_counters_agree();
    });
}

// ------------------------------------------------------------------------------ 9.8 calls

/// Sets up providers of `svc` on gateways (gw, how many) and syncs them.
fn providers(mesh: &mut MeshSim, seed: u64, counts: &[(usize, usize)]) -> Vec<(usize, ClientId)> {
    let mut out = Vec::new();
    let mut n = 0;
    for &(gw, count) in counts {
        for _ in 0..count {
            n += 1;
            let shards = mesh.gw_ref(gw).shards.len() as u16;
            let c = mesh.connect(gw, shard_of(seed, 100 + n, shards), node(200 + n as u32));
            mesh.gw(gw).register(c, "svc", None);
            mesh.mesh_sync(gw, c);
            out.push((gw, c));
        }
    }
    out
}

/// Every provider answers every CALL it got with `ok`.
fn answer_all(mesh: &mut MeshSim, providers: &[(usize, ClientId)]) {
    for &(gw, c) in providers {
        for (_, id, _) in mesh.gw_ref(gw).calls(c) {
            mesh.gw(gw).reply(c, id, &ok(1));
        }
    }
    mesh.drive();
}

/// Calls for procedures no gateway provides fail `procedure_not_found` and leave nothing
/// behind: the weighted choice's state lives with the peers' advertisements, not with the
/// names callers ask for.
#[test]
fn calls_for_procedures_nobody_provides_leave_no_table_entry() {
    each_seed(2, |seed| {
        let mut mesh = full_mesh(seed, 2, 2);
        let c = mesh.connect(0, shard_of(seed, 1, 2), node(30));
        for i in 0..100u64 {
            mesh.gw(0).call(c, &format!("nobody.{i}"), i, Some(5_000));
        }
        mesh.drive();
        let replies = mesh.gw_ref(0).replies(c);
        assert_eq!(replies.len(), 100);
        assert!(replies
            .iter()
            .all(|(_, r)| r.as_ref().err().map(String::as_str) == Some("procedure_not_found")));
        for s in &mesh.gw_ref(0).shards {
            assert_eq!(s.occupancy().mesh_view[1..], [0, 0]);
        }
    });
}

#[test]
fn a_call_with_a_live_local_provider_never_leaves_the_gateway() {
    each_seed(8, |seed| {
        let mut mesh = full_mesh(seed, 3, 2);
        let provs = providers(&mut mesh, seed, &[(0, 1), (1, 2), (2, 1)]);
        let caller = mesh.connect(0, shard_of(seed, 1, 2), node(10));
        for i in 0..10 {
            mesh.gw(0).call(caller, "svc", i, Some(60_000));
        }
        mesh.drive();
        assert_eq!(mesh.gw_ref(0).calls(provs[0].1).len(), 10);
        assert_eq!(mesh.sent_by(0, FrameType::Call), 0);
        answer_all(&mut mesh, &provs);
        let replies = mesh.gw_ref(0).replies(caller);
        assert_eq!(replies.len(), 10);
        assert!(replies.iter().all(|(_, r)| r == &Ok(ok(1))));
    });
}

#[test]
fn calls_from_one_session_reach_each_peer_in_proportion_to_its_providers() {
    each_seed(8, |seed| {
        let mut mesh = full_mesh(seed, 3, 2);
        let provs = providers(&mut mesh, seed, &[(1, 2), (2, 1)]);
        let caller = mesh.connect(0, shard_of(seed, 1, 2), node(10));
        for i in 0..30 {
            mesh.gw(0).call(caller, "svc", i, Some(60_000));
        }
        mesh.drive();
        let (to_1, to_2) = (
            mesh.sent(0, 1, FrameType::Call),
            mesh.sent(0, 2, FrameType::Call),
        );
        assert!(
            to_1.abs_diff(20) <= 1 && to_2.abs_diff(10) <= 1,
            "{to_1} / {to_2}"
        );
        assert_eq!(to_1 + to_2, 30);
        answer_all(&mut mesh, &provs);
        let replies = mesh.gw_ref(0).replies(caller);
        assert_eq!(replies.len(), 30);
        assert!(replies.iter().all(|(_, r)| r == &Ok(ok(1))));
        // meshgate_calls_total counts on the caller's gateway only.
        assert_eq!(mesh.total(0, |c| c.calls_of(CallOutcome::Ok)), 30);
        for gw in [1, 2] {
            assert_eq!(mesh.total(gw, |c| c.calls.iter().sum()), 0);
        }
        mesh.assert_counters_agree();
    });
}

#[test]
fn a_caller_timeout_cancels_the_call_across_the_link_with_timeout() {
    each_seed(8, |seed| {
        let mut mesh = full_mesh(seed, 2, 2);
        let provs = providers(&mut mesh, seed, &[(1, 1)]);
        let caller = mesh.connect(0, shard_of(seed, 1, 2), node(10));
        // The CALL takes 200 ms to cross: the peer's deadline is 200 ms after the caller's.
        mesh.hold(0, 1);
        mesh.gw(0).call(caller, "svc", 7, Some(500));
        mesh.advance(Duration::from_millis(200));
        mesh.release(0, 1);
        mesh.drive();
        let (gw, p) = provs[0];
        let got = mesh.gw_ref(gw).calls(p);
        assert_eq!(got.len(), 1);
        mesh.advance(Duration::from_millis(300));
        assert_eq!(
            mesh.gw_ref(0).replies(caller),
            vec![(7, Err("timeout".into()))]
        );
        assert_eq!(mesh.sent(0, 1, FrameType::Cancel), 1);
        assert_eq!(
            mesh.gw_ref(gw).cancels(p),
            vec![(got[0].1, "timeout".into())]
        );
        mesh.advance(Duration::from_secs(1));
        assert_eq!(
            mesh.sent(1, 0, FrameType::Reply),
            0,
            "the peer dropped the call"
        );
        assert_eq!(mesh.gw_ref(gw).cancels(p).len(), 1);
        assert_eq!(mesh.gw_ref(0).replies(caller).len(), 1);
    });
}

#[test]
fn a_caller_that_leaves_cancels_its_calls_across_the_link_with_caller_gone() {
    each_seed(8, |seed| {
        let mut mesh = full_mesh(seed, 2, 3);
        let provs = providers(&mut mesh, seed, &[(1, 1)]);
        let caller = mesh.connect(0, shard_of(seed, 1, 3), node(10));
        mesh.gw(0).call(caller, "svc", 7, Some(60_000));
        mesh.drive();
        let (gw, p) = provs[0];
        let got = mesh.gw_ref(gw).calls(p);
        assert_eq!(got.len(), 1);
        mesh.gw(0).drop_connection(caller);
        mesh.drive();
        assert_eq!(mesh.sent(0, 1, FrameType::Cancel), 1);
        assert_eq!(
            mesh.gw_ref(gw).cancels(p),
            vec![(got[0].1, "caller_gone".into())]
        );
        let late = mesh.total(1, |c| c.late_replies);
        mesh.gw(gw).reply(p, got[0].1, &ok(1));
        mesh.drive();
        assert_eq!(mesh.total(1, |c| c.late_replies), late + 1);
        assert_eq!(mesh.sent(1, 0, FrameType::Reply), 0);
    });
}

#[test]
fn a_lost_link_fails_its_calls_with_provider_gone_at_once() {
    each_seed(8, |seed| {
        let mut mesh = full_mesh(seed, 2, 2);
        let provs = providers(&mut mesh, seed, &[(1, 1)]);
        let caller = mesh.connect(0, shard_of(seed, 1, 2), node(10));
        mesh.gw(0).call(caller, "svc", 7, Some(60_000));
        mesh.drive();
        let (gw, p) = provs[0];
        let got = mesh.gw_ref(gw).calls(p);
        assert_eq!(got.len(), 1);
        let at = mesh.now;
        mesh.cut(0, 1);
        mesh.drive();
        assert_eq!(mesh.now, at);
        assert_eq!(
            mesh.gw_ref(0).replies(caller),
            vec![(7, Err("provider_gone".into()))]
        );
        assert_eq!(
            mesh.gw_ref(gw).cancels(p),
            vec![(got[0].1, "caller_gone".into())]
        );
        // A call while the link is down: no peer has the procedure.
        mesh.gw(0).call(caller, "svc", 8, Some(60_000));
        mesh.drive();
        assert_eq!(
            mesh.gw_ref(0).replies(caller)[1],
            (8, Err("procedure_not_found".into()))
        );
        mesh.heal(0, 1);
        mesh.advance(Duration::from_secs(5));
        assert_eq!(mesh.up_peers(0), [name(1)]);
        mesh.gw(0).call(caller, "svc", 9, Some(60_000));
        mesh.drive();
        assert_eq!(mesh.gw_ref(gw).calls(p).len(), 2);
    });
}

#[test]
fn a_remote_providers_end_fails_its_calls_with_provider_gone() {
    each_seed(8, |seed| {
        let mut mesh = full_mesh(seed, 2, 2);
        let provs = providers(&mut mesh, seed, &[(1, 1)]);
        let caller = mesh.connect(0, shard_of(seed, 1, 2), node(10));
        mesh.gw(0).call(caller, "svc", 7, Some(60_000));
        mesh.drive();
        let (gw, p) = provs[0];
        assert_eq!(mesh.gw_ref(gw).calls(p).len(), 1);
        mesh.gw(gw).drop_connection(p);
        mesh.drive();
        assert_eq!(
            mesh.gw_ref(0).replies(caller),
            vec![(7, Err("provider_gone".into()))]
        );
        assert_eq!(mesh.up_peers(0), [name(1)], "the link stays");
    });
}

#[test]
fn the_remote_gateways_deadline_answers_timeout_across_the_hop() {
    each_seed(8, |seed| {
        let mut specs = specs(2, 2);
        specs[1] = specs[1]
            .clone()
            .config(|c| c.limits.max_call_timeout = Duration::from_secs(1));
        let mut mesh = full_mesh_of(seed, specs);
        let provs = providers(&mut mesh, seed, &[(1, 1)]);
        let caller = mesh.connect(0, shard_of(seed, 1, 2), node(10));
        mesh.gw(0).call(caller, "svc", 7, Some(10_000));
        mesh.drive();
        let (gw, p) = provs[0];
        let got = mesh.gw_ref(gw).calls(p);
        assert_eq!(got.len(), 1);
        mesh.advance(Duration::from_millis(1_500));
        assert_eq!(
            mesh.gw_ref(0).replies(caller),
            vec![(7, Err("timeout".into()))]
        );
        assert_eq!(
            mesh.gw_ref(gw).cancels(p),
            vec![(got[0].1, "timeout".into())]
        );
        assert_eq!(mesh.sent(1, 0, FrameType::Reply), 1);
        assert_eq!(mesh.sent(0, 1, FrameType::Cancel), 0);
        mesh.gw(gw).reply(p, got[0].1, &ok(1));
        mesh.advance(Duration::from_secs(10));
        assert_eq!(mesh.gw_ref(0).replies(caller).len(), 1);
    });
}

#[test]
fn an_expired_registration_stops_drawing_calls_from_peers() {
    each_seed(4, |seed| {
        let mut specs = specs(2, 2);
        specs[1] = specs[1]
            .clone()
            .config(|c| c.limits.prune_interval = Duration::from_secs(1));
        let mut mesh = full_mesh_of(seed, specs);
        let p = mesh.connect(1, shard_of(seed, 1, 2), node(20));
        mesh.gw(1).register(p, "svc", Some(2));
        mesh.mesh_sync(1, p);
        let caller = mesh.connect(0, shard_of(seed, 2, 2), node(10));
        mesh.gw(0).call(caller, "svc", 1, Some(60_000));
        mesh.drive();
        assert_eq!(mesh.gw_ref(1).calls(p).len(), 1);
        mesh.advance(Duration::from_secs(3));
        mesh.gw(0).call(caller, "svc", 2, Some(60_000));
        mesh.drive();
        assert_eq!(mesh.sent(0, 1, FrameType::Call), 1);
        assert_eq!(
            mesh.gw_ref(0).replies(caller),
            vec![(2, Err("procedure_not_found".into()))]
        );
    });
}

// ------------------------------------------------------------------------------ 9.6 interest

fn interest_frame(add: &[&str]) -> Vec<u8> {
    let add: Vec<&[u8]> = add.iter().map(|p| p.as_bytes()).collect();
    let mut out = Vec::new();
    PeerMessage::Interest(Interest {
        realm: REALM.as_bytes(),
        sub_add: Strings::List(&add),
        sub_del: Strings::List(&[]),
        procs: Entries::List(&[]),
    })
    .encode(&mut out);
    out
}

fn sync_frame(phase: SyncPhase) -> Vec<u8> {
    let mut out = Vec::new();
    PeerMessage::Sync(SyncMsg {
        realm: REALM.as_bytes(),
        phase,
    })
    .encode(&mut out);
    out
}

#[test]
fn a_snapshot_replaces_the_peers_table_and_is_not_merged_with_it() {
    each_seed(8, |seed| {
        let mut mesh = full_mesh(seed, 2, 2);
        let sub = mesh.connect(1, shard_of(seed, 1, 2), node(20));
        mesh.gw(1).subscribe(sub, &["real.x", "real.y"]);
        mesh.mesh_sync(1, sub);
        assert_eq!(mesh.link(0, 1).unwrap().patterns, 2);
        // Gateway 1 (as the injected frames say) now advertises one other pattern only.
        let mut snapshot = sync_frame(SyncPhase::Begin);
        snapshot.extend(interest_frame(&["other.z"]));
        snapshot.extend(sync_frame(SyncPhase::End));
        mesh.inject(1, 0, LinkStream::Control, &snapshot);
        mesh.drive();
        assert_eq!(mesh.link(0, 1).unwrap().patterns, 1);
        let p = mesh.connect(0, shard_of(seed, 2, 2), node(10));
        mesh.gw(0).publish(p, "real.x", b"1");
        mesh.drive();
        assert_eq!(
            mesh.sent(0, 1, FrameType::Publish),
            0,
            "real.x was replaced"
        );
        mesh.gw(0).publish(p, "other.z", b"2");
        mesh.drive();
        assert_eq!(mesh.sent(0, 1, FrameType::Publish), 1);
        assert_eq!(mesh.total(1, |c| c.dropped_of(DropReason::NoInterest)), 1);
    });
}

#[test]
fn a_digest_mismatch_asks_for_a_snapshot_that_repairs_the_table() {
    each_seed(8, |seed| {
        let mut specs = specs(2, 2);
        for spec in &mut specs {
            *spec = spec
                .clone()
                .mesh(|m| m.interest_refresh = Duration::from_secs(5));
        }
        let mut mesh = full_mesh_of(seed, specs);
        let sub = mesh.connect(1, shard_of(seed, 1, 2), node(20));
        mesh.gw(1).subscribe(sub, &["real.x"]);
        mesh.mesh_sync(1, sub);
        mesh.advance(Duration::from_secs(6));
        assert_eq!(mesh.total(0, |c| c.peer_resyncs), 0, "the digests agree");
        mesh.inject(1, 0, LinkStream::Control, &interest_frame(&["ghost.y"]));
        mesh.drive();
        assert_eq!(mesh.link(0, 1).unwrap().patterns, 2);
        let p = mesh.connect(0, shard_of(seed, 2, 2), node(10));
        mesh.gw(0).publish(p, "ghost.y", b"1");
        mesh.drive();
        assert_eq!(mesh.sent(0, 1, FrameType::Publish), 1);
        mesh.advance(Duration::from_secs(6));
        assert_eq!(mesh.total(0, |c| c.peer_resyncs), 1);
        assert_eq!(mesh.link(0, 1).unwrap().counters.resyncs, 1);
        assert_eq!(mesh.link(0, 1).unwrap().patterns, 1, "ghost.y is gone");
        mesh.gw(0).publish(p, "ghost.y", b"2");
        mesh.gw(0).publish(p, "real.x", b"3");
        mesh.drive();
        assert_eq!(mesh.sent(0, 1, FrameType::Publish), 2);
        assert_eq!(mesh.gw_ref(1).publishes(sub).len(), 1);
        mesh.advance(Duration::from_secs(6));
        assert_eq!(
            mesh.total(0, |c| c.peer_resyncs),
            1,
            "the digests agree again"
        );
    });
}

#[test]
fn past_max_advertised_patterns_a_gateway_advertises_everything_and_back_below_ninety_percent() {
    each_seed(8, |seed| {
        let mut specs = specs(2, 2);
        for spec in &mut specs {
            *spec = spec.clone().mesh(|m| m.max_advertised_patterns = 4);
        }
        let mut mesh = full_mesh_of(seed, specs);
        let sub = mesh.connect(0, shard_of(seed, 1, 2), node(10));
        mesh.gw(0).subscribe(sub, &["c.1", "c.2", "c.3", "c.4"]);
        mesh.mesh_sync(0, sub);
        assert_eq!(mesh.link(1, 0).unwrap().patterns, 4);
        let sub2 = mesh.connect(0, shard_of(seed, 2, 2), node(11));
        mesh.gw(0).subscribe(sub2, &["c.5"]);
        mesh.mesh_sync(0, sub2);
        assert_eq!(mesh.link(1, 0).unwrap().patterns, 1, "collapsed to **");
        let p = mesh.connect(1, shard_of(seed, 3, 2), node(20));
        mesh.gw(1).publish(p, "zzz", b"1");
        mesh.gw(1).publish(p, "c.3", b"2");
        mesh.drive();
        assert_eq!(mesh.sent(1, 0, FrameType::Publish), 2);
        assert_eq!(mesh.total(0, |c| c.dropped_of(DropReason::NoInterest)), 1);
        assert_eq!(
            mesh.gw_ref(0).publishes(sub).len(),
            1,
            "delivery stays exact"
        );
        assert_eq!(mesh.gw_ref(0).publishes(sub2).len(), 0);
        // 4 distinct patterns: still collapsed (not below 90 % of 4).
        mesh.gw(0).unsubscribe(sub2, &["c.5"]);
        mesh.mesh_sync(0, sub2);
        assert_eq!(mesh.link(1, 0).unwrap().patterns, 1);
        mesh.gw(0).unsubscribe(sub, &["c.4"]);
        mesh.mesh_sync(0, sub);
        assert_eq!(mesh.link(1, 0).unwrap().patterns, 3, "the exact set again");
        mesh.gw(1).publish(p, "zzz", b"3");
        mesh.drive();
        assert_eq!(mesh.sent(1, 0, FrameType::Publish), 2);
        mesh.assert_counters_agree();
    });
}

#[test]
fn a_receiver_collapses_a_peers_table_past_its_own_limit() {
    each_seed(4, |seed| {
        let mut specs = specs(2, 2);
        specs[0] = specs[0].clone().mesh(|m| m.max_advertised_patterns = 3);
        let mut mesh = full_mesh_of(seed, specs);
        let sub = mesh.connect(1, shard_of(seed, 1, 2), node(20));
        mesh.gw(1)
            .subscribe(sub, &["c.1", "c.2", "c.3", "c.4", "c.5"]);
        mesh.mesh_sync(1, sub);
        assert_eq!(mesh.link(0, 1).unwrap().patterns, 1, "collapsed to **");
        let p = mesh.connect(0, shard_of(seed, 2, 2), node(10));
        mesh.gw(0).publish(p, "zzz", b"1");
        mesh.gw(0).publish(p, "c.5", b"2");
        mesh.drive();
        assert_eq!(mesh.sent(0, 1, FrameType::Publish), 2);
        assert_eq!(mesh.gw_ref(1).publishes(sub).len(), 1);
    });
}

#[test]
fn a_mesh_ping_is_answered_only_once_the_peers_have_the_new_interest() {
    each_seed(16, |seed| {
        let mut mesh = full_mesh(seed, 3, 3);
        let sub = mesh.connect(1, shard_of(seed, 1, 3), node(20));
        let p = mesh.connect(0, shard_of(seed, 2, 3), node(10));
        let q = mesh.connect(2, shard_of(seed, 3, 3), node(30));
        mesh.gw(1).subscribe(sub, &["fresh.topic"]);
        mesh.mesh_ping(1, sub, 77);
        // Right after the PONG, a publish on another gateway reaches the subscriber.
        while !mesh.gw_ref(1).pong_timestamps(sub).contains(&77) {
            assert!(mesh.step(), "the mesh PING was answered");
        }
        mesh.gw(0).publish(p, "fresh.topic", b"1");
        mesh.gw(2).publish(q, "fresh.topic", b"2");
        mesh.drive();
        assert_eq!(mesh.gw_ref(1).publishes(sub).len(), 2);
    });
}

#[test]
fn a_mesh_ping_waits_for_a_peer_whose_link_is_slow() {
    each_seed(8, |seed| {
        let mut mesh = full_mesh(seed, 2, 2);
        let sub = mesh.connect(1, shard_of(seed, 1, 2), node(20));
        mesh.hold(1, 0);
        mesh.gw(1).subscribe(sub, &["fresh.topic"]);
        mesh.mesh_ping(1, sub, 77);
        mesh.gw(1).send(sub, &Message::Ping(Ping::new(78)));
        mesh.drive();
        assert!(!mesh.gw_ref(1).pong_timestamps(sub).contains(&77));
        assert!(
            !mesh.gw_ref(1).pong_timestamps(sub).contains(&78),
            "PONGs keep their order"
        );
        mesh.release(1, 0);
        while !mesh.gw_ref(1).pong_timestamps(sub).contains(&77) {
            assert!(mesh.step(), "the mesh PING was answered");
        }
        let p = mesh.connect(0, shard_of(seed, 2, 2), node(10));
        mesh.gw(0).publish(p, "fresh.topic", b"1");
        mesh.drive();
        assert_eq!(mesh.gw_ref(1).publishes(sub).len(), 1);
        assert_eq!(mesh.gw_ref(1).pong_timestamps(sub), [0, 77, 78]);
    });
}

/// A client's mesh PINGs cannot multiply a link's: while one PING is unanswered and no
/// INTEREST went out after it, later barriers wait for its PONG. And a session with
/// `MAX_WAITING_PINGS` PINGs waiting is not read further until they are answered.
#[test]
fn mesh_pings_share_a_link_ping_and_a_session_with_too_many_waiting_is_not_read() {
    each_seed(4, |seed| {
        let mut mesh = full_mesh(seed, 2, 2);
        let c = mesh.connect(1, shard_of(seed, 1, 2), node(20));
        mesh.drive();
        let pings_before = mesh.sent(1, 0, FrameType::Ping);
        mesh.hold(0, 1);
        for t in 1..=1100u64 {
            mesh.mesh_ping(1, c, t);
        }
        mesh.drive();
        let pings = mesh.sent(1, 0, FrameType::Ping) - pings_before;
        assert!(pings <= 2, "{pings} link PINGs for 1,100 mesh PINGs");
        let session = mesh.gw_ref(1).clients[c].session;
        let shard = usize::from(mesh.gw_ref(1).clients[c].shard.0);
        assert!(
            !mesh.gw_ref(1).shards[shard].wants_input(session),
            "1,100 PINGs waiting: the session is not read"
        );
        mesh.release(0, 1);
        mesh.drive();
        let pongs = mesh.gw_ref(1).pong_timestamps(c);
        let expected: Vec<u64> = (1..=1100).collect();
        assert_eq!(
            &pongs[pongs.len() - 1100..],
            &expected[..],
            "every PONG, in order"
        );
        assert!(mesh.gw_ref(1).shards[shard].wants_input(session));
    });
}

#[test]
fn a_mesh_ping_is_answered_when_a_link_it_waits_for_is_lost() {
    each_seed(4, |seed| {
        let mut mesh = full_mesh(seed, 3, 2);
        let sub = mesh.connect(1, shard_of(seed, 1, 2), node(20));
        mesh.hold(1, 0);
        mesh.gw(1).subscribe(sub, &["fresh.topic"]);
        mesh.mesh_ping(1, sub, 77);
        mesh.drive();
        assert!(!mesh.gw_ref(1).pong_timestamps(sub).contains(&77));
        mesh.cut(0, 1);
        mesh.drive();
        assert!(mesh.gw_ref(1).pong_timestamps(sub).contains(&77));
    });
}

// ------------------------------------------------------------------------------ 9.3 bound

#[test]
fn max_peers_evicts_the_least_recently_used_link_and_fails_its_calls() {
    each_seed(8, |seed| {
        let mut specs = specs(4, 2);
        specs[0] = specs[0].clone().mesh(|m| m.max_peers = 2);
        let mut mesh = MeshSim::new(seed, specs);
        mesh.kill(3);
        // After every step: gateway 0's peer table and its shards' admitted links stay in
        // bounds.
        let mut check = |m: &MeshSim| {
            let table = m.gw_ref(0).shards[0].peer_table().expect("shard 0");
            assert!(table.members.len() <= 2, "more members than --max-peers");
            let admitted = m.admitted(0);
            assert!(admitted <= 2, "{admitted} admitted links, over --max-peers");
        };
        mesh.advance_with(Duration::from_secs(5), &mut check);
        assert_eq!(mesh.up_peers(0), [name(1), name(2)]);
        let provs = providers(&mut mesh, seed, &[(1, 1)]);
        let sub = mesh.connect(2, shard_of(seed, 1, 2), node(30));
        mesh.gw(2).subscribe(sub, &["news"]);
        mesh.mesh_sync(2, sub);
        let caller = mesh.connect(0, shard_of(seed, 2, 2), node(10));
        mesh.gw(0).call(caller, "svc", 7, Some(60_000));
        mesh.drive();
        assert_eq!(mesh.gw_ref(1).calls(provs[0].1).len(), 1);
        mesh.advance_with(Duration::from_secs(3), &mut check);
        mesh.gw(0).publish(caller, "news", b"1");
        mesh.advance_with(Duration::from_secs(2), &mut check);
        // Gateway 3 comes: gateway 0 evicts gateway 1, whose link was used longest ago.
        mesh.restart(3);
        mesh.advance_with(Duration::from_secs(5), &mut check);
        assert_eq!(mesh.up_peers(0), [name(2), name(3)]);
        assert_eq!(mesh.total(0, |c| c.peers_evicted), 1);
        assert_eq!(
            mesh.gw_ref(0).replies(caller),
            vec![(7, Err("provider_gone".into()))]
        );
        assert_eq!(mesh.gw_ref(1).cancels(provs[0].1).len(), 1);
        // Neither end dials the other for 30 s.
        mesh.advance_with(Duration::from_secs(20), &mut check);
        assert_eq!(mesh.up_peers(0), [name(2), name(3)]);
        assert_eq!(mesh.connections(0, 1), 0);
        assert_eq!(mesh.up_peers(1), [name(2), name(3)]);
    });
}

// ------------------------------------------------------------------------------ 9.9 realms

#[test]
fn a_realm_served_with_other_tokens_is_not_shared_and_no_frame_crosses() {
    each_seed(8, |seed| {
        let mut specs = specs(2, 2);
        specs[1] = specs[1].clone().config(|c| {
            let secure = c.realms.iter_mut().find(|r| &*r.name == b"secure");
            secure.expect("the simulator serves `secure`").tokens = vec![b"other"[..].into()];
        });
        let mut mesh = full_mesh_of(seed, specs);
        let link = mesh.link(0, 1).unwrap();
        assert!(!link.shared_realms.iter().any(|r| &**r == b"secure"));
        assert!(link.unshared_realms.iter().any(|r| &**r == b"secure"));
        assert!(link.shared_realms.iter().any(|r| &**r == REALM.as_bytes()));
        let s = |salt| shard_of(seed, salt, 2);
        let secure_sub = mesh.connect_to(0, s(1), node(10), "secure", Some("s3cret"));
        let plain_sub = mesh.connect(0, s(2), node(11));
        mesh.gw(0).subscribe(secure_sub, &["**"]);
        mesh.gw(0).subscribe(plain_sub, &["**"]);
        mesh.gw(0).register(secure_sub, "svc", None);
        mesh.mesh_sync(0, secure_sub);
        mesh.mesh_sync(0, plain_sub);
        let other_sub = mesh.connect_to(0, s(5), node(12), "other.realm", None);
        mesh.gw(0).subscribe(other_sub, &["**"]);
        mesh.mesh_sync(0, other_sub);
        let secure_pub = mesh.connect_to(1, s(3), node(20), "secure", Some("other"));
        let plain_pub = mesh.connect(1, s(4), node(21));
        let other_pub = mesh.connect_to(1, s(6), node(22), "other.realm", None);
        mesh.gw(1).publish(secure_pub, "x", b"1");
        mesh.gw(1).call(secure_pub, "svc", 1, Some(60_000));
        mesh.gw(1).publish(plain_pub, "x", b"2");
        mesh.gw(1).publish(other_pub, "x", b"3");
        mesh.drive();
        assert_eq!(mesh.gw_ref(0).publishes(secure_sub).len(), 0);
        assert_eq!(mesh.gw_ref(0).calls(secure_sub).len(), 0);
        // Each shared realm's frames reach that realm's sessions only.
        assert_eq!(
            payloads_from(&mesh, 0, plain_sub, node(21)),
            [b"2".to_vec()]
        );
        assert_eq!(mesh.gw_ref(0).publishes(plain_sub).len(), 1);
        assert_eq!(
            payloads_from(&mesh, 0, other_sub, node(22)),
            [b"3".to_vec()]
        );
        assert_eq!(mesh.gw_ref(0).publishes(other_sub).len(), 1);
        assert_eq!(
            mesh.gw_ref(1).replies(secure_pub),
            vec![(1, Err("procedure_not_found".into()))]
        );
        assert_eq!(mesh.sent(1, 0, FrameType::Publish), 2);
        assert_eq!(mesh.sent(1, 0, FrameType::Call), 0);
        mesh.assert_counters_agree();
    });
}

// ------------------------------------------------------------------------------ restarts

#[test]
fn a_restarted_gateway_replaces_its_old_links_and_the_mesh_forms_again() {
    each_seed(8, |seed| {
        let mut mesh = full_mesh(seed, 3, 2);
        mesh.restart(1);
        mesh.advance_with(Duration::from_secs(5), &mut one_admitted_link_per_peer);
        for gw in 0..3 {
            assert_eq!(mesh.up_peers(gw).len(), 2, "gateway {gw}");
        }
        let sub = mesh.connect(1, 0, node(20));
        mesh.gw(1).subscribe(sub, &["**"]);
        mesh.mesh_sync(1, sub);
        let p = mesh.connect(2, 1, node(30));
        mesh.gw(2).publish(p, "a", b"1");
        mesh.drive();
        assert_eq!(mesh.gw_ref(1).publishes(sub).len(), 1);
        mesh.assert_counters_agree();
    });
}

#[test]
fn a_seed_that_is_the_gateway_itself_is_not_dialed_again() {
    each_seed(4, |seed| {
        let mut specs = specs(2, 2);
        specs[0] = specs[0].clone().peers(&[0, 1]);
        let mut mesh = full_mesh_of(seed, specs);
        mesh.advance(Duration::from_secs(30));
        let table = mesh.gw_ref(0).shards[0].peer_table().unwrap();
        let addrs: Vec<&str> = table.dials.iter().map(|d| &*d.addr).collect();
        assert_eq!(addrs, [sim::mesh::addr(1)]);
        assert_eq!(mesh.up_peers(0), [name(1)]);
    });
}

// ------------------------------------------------------------------------------ 9.7 bound

/// Two gateways of two shards; gateway 0 bounds its peer output to 2,000 bytes, for
/// `timeout`.
fn a_mesh_with_a_2000_byte_peer_bound(seed: u64, timeout: Duration) -> MeshSim {
    let mut specs = specs(2, 2);
    specs[0] = specs[0]
        .clone()
        .config(move |c| c.limits.slow_consumer_timeout = timeout)
        .mesh(|m| m.max_peer_output = 2_000);
    full_mesh_of(seed, specs)
}

/// A subscriber to `t` on gateway 1, known across the mesh, and a client on gateway 0.
fn subscriber_on_1_publisher_on_0(mesh: &mut MeshSim, seed: u64) -> (ClientId, ClientId) {
    let sub = mesh.connect(1, shard_of(seed, 1, 2), node(20));
    mesh.gw(1).subscribe(sub, &["t"]);
    mesh.mesh_sync(1, sub);
    (sub, mesh.connect(0, shard_of(seed, 2, 2), node(10)))
}

#[test]
fn a_link_over_max_peer_output_drops_publishes_takes_no_calls_and_is_closed_slow_consumer() {
    each_seed(8, |seed| {
        let mut mesh = a_mesh_with_a_2000_byte_peer_bound(seed, Duration::from_secs(3));
        mesh.window = 1_000;
        let provs = providers(&mut mesh, seed, &[(1, 1)]);
        let (sub, p) = subscriber_on_1_publisher_on_0(&mut mesh, seed);
        // A call in flight before the link stalls: its REPLY still comes back.
        mesh.gw(0).call(p, "svc", 1, Some(60_000));
        mesh.drive();
        let (gw, provider) = provs[0];
        let first = mesh.gw_ref(gw).calls(provider)[0].1;
        // Gateway 1 reads nothing more from gateway 0.
        mesh.hold(0, 1);
        for i in 0..20u8 {
            mesh.gw(0).publish(p, "t", &[i; 300]);
            mesh.drive();
        }
        let dropped = mesh.total(0, |c| c.dropped_of(DropReason::PeerSlow));
        assert!(dropped > 0, "PUBLISH frames dropped while over the bound");
        let sent = mesh.sent(0, 1, FrameType::Publish);
        assert_eq!(sent + dropped, 20);
        assert!(mesh.link(0, 1).unwrap().output_bytes >= 2_000);
        mesh.gw(0).call(p, "svc", 2, Some(60_000));
        mesh.gw(gw).reply(provider, first, &ok(1));
        mesh.drive();
        assert_eq!(
            mesh.gw_ref(0).replies(p),
            vec![(2, Err("overloaded".into())), (1, Ok(ok(1)))],
            "no CALL goes to a link over its bound; REPLY frames come back"
        );
        mesh.advance(Duration::from_secs(4));
        assert_eq!(
            mesh.up_peers(0),
            Vec::<String>::new(),
            "closed slow_consumer"
        );
        mesh.release(0, 1);
        mesh.drive();
        // At most what the transport had taken, if it arrived before the close; the rest
        // was discarded with the link.
        let got = mesh.gw_ref(1).publishes(sub).len() as u64;
        assert!(got < sent, "{got} of {sent}");
        mesh.advance(Duration::from_secs(5));
        assert_eq!(mesh.up_peers(0), [name(1)]);
        mesh.gw(0).publish(p, "t", b"again");
        mesh.drive();
        assert_eq!(mesh.gw_ref(1).publishes(sub).last().unwrap().1, b"again");
    });
}

/// The link from gateway 0 to gateway 1 with a 500-byte window, held, and 10 PUBLISH frames of
/// 300 bytes for it: over its bound. Returns the subscriber on 1 and the publisher on 0.
fn a_link_that_spilled(seed: u64, timeout: Duration) -> (MeshSim, ClientId, ClientId) {
    let mut mesh = a_mesh_with_a_2000_byte_peer_bound(seed, timeout);
    mesh.window = 500;
    let (sub, p) = subscriber_on_1_publisher_on_0(&mut mesh, seed);
    mesh.hold(0, 1);
    publish_300(&mut mesh, p, 10);
    (mesh, sub, p)
}

/// `n` PUBLISH frames of 300 bytes to `t` from client `p` of gateway 0.
fn publish_300(mesh: &mut MeshSim, p: ClientId, n: u8) {
    for i in 0..n {
        mesh.gw(0).publish(p, "t", &[i; 300]);
    }
    mesh.drive();
}

/// Gateway 1 takes one window of the link from 0: its output goes under its bound but not
/// down to half of it.
fn take_one_window_to_between_half_and_the_bound(mesh: &mut MeshSim, seed: u64) {
    mesh.deliver_all(0, 1);
    mesh.drive();
    let queued = mesh.link(0, 1).unwrap().output_bytes;
    assert!(
        queued > 1_000 && queued < 2_000,
        "{queued} bytes, seed {seed}"
    );
}

#[test]
fn a_link_that_stays_under_its_bound_after_a_spill_is_not_closed() {
    each_seed(4, |seed| {
        let (mut mesh, _, p) = a_link_that_spilled(seed, Duration::from_secs(3));
        let spilled = mesh.total(0, |c| c.dropped_of(DropReason::PeerSlow));
        assert!(spilled > 0, "seed {seed}");
        // One window taken: under its bound, above half of it, and no more traffic.
        take_one_window_to_between_half_and_the_bound(&mut mesh, seed);
        mesh.advance(Duration::from_secs(6));
        assert_eq!(mesh.up_peers(0), [name(1)], "seed {seed}");
        // It never drained to half its bound: its spell goes on, and the next spill ends it
        // at the next tick.
        publish_300(&mut mesh, p, 5);
        mesh.advance(Duration::from_millis(1_100));
        assert_eq!(mesh.up_peers(0), Vec::<String>::new(), "seed {seed}");
    });
}

#[test]
fn a_link_under_its_bound_at_the_timeout_but_over_it_in_the_last_quarter_is_closed() {
    each_seed(4, |seed| {
        // An 8 s timeout, whose last quarter (2 s) is longer than the tick the links are
        // checked at (1 s). The mesh's ticks fall on whole seconds from the spill: the one
        // that decides comes at 8 s, 1.5 s after the link went under its bound.
        let (mut mesh, _, p) = a_link_that_spilled(seed, Duration::from_secs(8));
        mesh.advance(Duration::from_millis(6_500));
        assert_eq!(mesh.up_peers(0), [name(1)], "seed {seed}");
        // Over its bound (again, if it had gone under), then one window taken.
        publish_300(&mut mesh, p, 3);
        assert!(
            mesh.link(0, 1).unwrap().output_bytes >= 2_000,
            "seed {seed}"
        );
        take_one_window_to_between_half_and_the_bound(&mut mesh, seed);
        mesh.advance(Duration::from_millis(1_400));
        assert_eq!(mesh.up_peers(0), [name(1)], "seed {seed}");
        mesh.advance(Duration::from_millis(200));
        assert_eq!(mesh.up_peers(0), Vec::<String>::new(), "seed {seed}");
    });
}

#[test]
fn a_link_that_takes_a_little_at_a_time_stays_slow_and_is_closed() {
    each_seed(4, |seed| {
        let (mut mesh, sub, p) = a_link_that_spilled(seed, Duration::from_secs(3));
        // Every half second gateway 1 takes one window's worth: the output dips under its
        // bound without draining to half of it, and new messages fill it up again.
        for i in 0..5u8 {
            mesh.advance(Duration::from_millis(500));
            mesh.deliver_all(0, 1);
            mesh.drive();
            assert!(mesh.link(0, 1).unwrap().output_bytes > 1_000, "seed {seed}");
            for _ in 0..3 {
                mesh.gw(0).publish(p, "t", &[i; 300]);
            }
            mesh.drive();
            assert_eq!(mesh.up_peers(0), [name(1)], "seed {seed}");
        }
        mesh.advance(Duration::from_secs(1));
        assert_eq!(mesh.up_peers(0), Vec::<String>::new(), "seed {seed}");
        assert!(
            !mesh.gw_ref(1).publishes(sub).is_empty(),
            "it got what it took"
        );
    });
}

#[test]
fn a_call_refused_by_one_peer_is_tried_on_the_next() {
    each_seed(8, |seed| {
        let mut mesh = full_mesh(seed, 3, 2);
        let b = providers(&mut mesh, seed, &[(1, 1)]);
        let caller = mesh.connect(0, shard_of(seed, 1, 2), node(10));
        // The CALL to gateway 1 waits on the way while its provider leaves and one comes on
        // gateway 2.
        mesh.hold(0, 1);
        mesh.gw(0).call(caller, "svc", 7, Some(60_000));
        mesh.drive();
        assert_eq!(mesh.sent(0, 1, FrameType::Call), 1);
        let c = mesh.connect(2, shard_of(seed, 2, 2), node(30));
        mesh.gw(2).register(c, "svc", None);
        mesh.gw(b[0].0).unregister(b[0].1, "svc");
        mesh.drive();
        mesh.release(0, 1);
        mesh.drive();
        assert_eq!(mesh.sent(1, 0, FrameType::Reply), 1, "procedure_not_found");
        assert_eq!(
            mesh.sent_by(1, FrameType::Call),
            0,
            "a CALL from a link is never relayed"
        );
        assert_eq!(mesh.sent(0, 2, FrameType::Call), 1, "tried next");
        let got = mesh.gw_ref(2).calls(c);
        assert_eq!(got.len(), 1);
        mesh.gw(2).reply(c, got[0].1, &ok(3));
        mesh.drive();
        assert_eq!(mesh.gw_ref(0).replies(caller), vec![(7, Ok(ok(3)))]);
        // With no candidate left, the caller gets the last refusal's error.
        mesh.gw(2).unregister(c, "svc");
        mesh.mesh_sync(2, c);
        mesh.gw(b[0].0).register(b[0].1, "svc", None);
        mesh.mesh_sync(b[0].0, b[0].1);
        mesh.hold(0, 1);
        mesh.gw(0).call(caller, "svc", 8, Some(60_000));
        mesh.drive();
        mesh.gw(b[0].0).unregister(b[0].1, "svc");
        mesh.drive();
        mesh.release(0, 1);
        mesh.drive();
        assert_eq!(
            mesh.gw_ref(0).replies(caller)[1],
            (8, Err("procedure_not_found".into()))
        );
    });
}

#[test]
fn a_snapshot_of_many_patterns_crosses_in_several_frames_and_agrees_with_the_digest() {
    each_seed(4, |seed| {
        let mut specs = specs(2, 2);
        for spec in &mut specs {
            *spec = spec
                .clone()
                .config(|c| c.limits.max_subscriptions = 2_000)
                .mesh(|m| m.interest_refresh = Duration::from_secs(5));
        }
        let mut mesh = full_mesh_of(seed, specs);
        let sub = mesh.connect(1, shard_of(seed, 1, 2), node(20));
        let patterns: Vec<String> = (0..1_200).map(|i| format!("many.{i}")).collect();
        let list: Vec<&str> = patterns.iter().map(String::as_str).collect();
        mesh.gw(1).subscribe(sub, &list);
        mesh.mesh_sync(1, sub);
        assert_eq!(mesh.link(0, 1).unwrap().patterns, 1_200);
        let interest_before = mesh.sent(1, 0, FrameType::Interest);
        mesh.cut(0, 1);
        mesh.heal(0, 1);
        mesh.advance(Duration::from_secs(5));
        let link = mesh.link(0, 1).expect("the link is up again");
        assert_eq!(link.patterns, 1_200);
        assert!(
            mesh.sent(1, 0, FrameType::Interest) >= 3,
            "{interest_before}"
        );
        mesh.advance(Duration::from_secs(12));
        assert_eq!(mesh.total(0, |c| c.peer_resyncs), 0);
        let p = mesh.connect(0, shard_of(seed, 2, 2), node(10));
        mesh.gw(0).publish(p, "many.1199", b"1");
        mesh.drive();
        assert_eq!(mesh.gw_ref(1).publishes(sub).len(), 1);
    });
}

// ------------------------------------------------------------------------------ 9.3 refusals

#[test]
fn a_gateway_with_another_cluster_token_is_never_admitted() {
    each_seed(4, |seed| {
        let mut specs = specs(2, 2);
        specs[1] = specs[1].clone().mesh(|m| {
            m.identity.tokens = vec![b"wrong-token"[..].into()];
        });
        let mut mesh = MeshSim::new(seed, specs);
        mesh.advance(Duration::from_secs(20));
        assert!(mesh.up_peers(0).is_empty() && mesh.up_peers(1).is_empty());
        assert_eq!(mesh.connections(0, 1), 0);
        let unauthorized = |g| mesh.total(g, |c| c.link_results_of(LinkResult::Unauthorized));
        assert!(unauthorized(0) > 0 && unauthorized(1) > 0);
        assert!(mesh.gw_ref(0).shards[0]
            .peer_table()
            .unwrap()
            .members
            .is_empty());
    });
}

#[test]
fn a_link_that_never_finishes_its_handshake_is_closed_connect_timeout() {
    each_seed(4, |seed| {
        let specs = vec![GatewaySpec::new(2), GatewaySpec::new(2).peers(&[0])];
        let mut mesh = MeshSim::new(seed, specs);
        // Gateway 0 never hears the dialer's HELLO.
        mesh.hold(1, 0);
        let timeouts =
            |m: &MeshSim, g| m.total(g, |c| c.link_results_of(LinkResult::ConnectTimeout));
        mesh.advance(Duration::from_millis(9_900));
        assert_eq!(mesh.connections(0, 1), 1);
        assert_eq!((timeouts(&mesh, 0), timeouts(&mesh, 1)), (0, 0));
        mesh.advance(Duration::from_millis(1_100));
        assert_eq!((timeouts(&mesh, 0), timeouts(&mesh, 1)), (1, 1));
        assert!(mesh.up_peers(0).is_empty());
        mesh.release(1, 0);
        mesh.advance(Duration::from_secs(5));
        assert_eq!(mesh.up_peers(1), [name(0)]);
    });
}

// ------------------------------------------------------------------------------ under churn

#[test]
fn under_link_churn_every_call_gets_one_reply_and_no_publish_arrives_twice_or_out_of_order() {
    each_seed(6, |seed| churn(seed, [2, 2, 2]));
}

#[test]
fn under_churn_gateways_of_one_two_and_three_shards_keep_the_call_and_publish_rules() {
    each_seed(6, |seed| churn(seed, [1, 2, 3]));
}

/// Random calls, replies and publishes on three gateways while links are cut, healed and
/// stalled, and gateways' shards stall: every call gets exactly one REPLY, and no publish
/// arrives twice or out of order.
fn churn(seed: u64, shards: [u16; 3]) {
    let specs = (0..3)
        .map(|i| {
            let spec = GatewaySpec::new(shards[i]);
            if i == 0 {
                spec
            } else {
                spec.peers(&[0])
            }
        })
        .collect();
    let mut mesh = full_mesh_of(seed, specs);
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xc0ffee);
    let (mut callers, mut subs, mut pubs) = (Vec::new(), Vec::new(), Vec::new());
    for (gw, &count) in shards.iter().enumerate() {
        let s = |salt| shard_of(seed, salt, count);
        let base = 1_000 * (gw as u32 + 1);
        callers.push(mesh.connect(gw, s(base.into()), node(base)));
        let sub = mesh.connect(gw, s(u64::from(base) + 1), node(base + 1));
        mesh.gw(gw).subscribe(sub, &["**"]);
        mesh.mesh_sync(gw, sub);
        subs.push(sub);
        pubs.push(mesh.connect(gw, s(u64::from(base) + 2), node(base + 2)));
    }
    let provs = providers(&mut mesh, seed, &[(1, 1), (2, 2)]);
    let mut next_call = [0u64; 3];
    let mut next_pub = [0u16; 3];
    for _ in 0..1_500 {
        match rng.u32(..100) {
            0..=24 => {
                let gw = rng.usize(..3);
                next_call[gw] += 1;
                let timeout = rng.u64(100..3_000);
                mesh.gw(gw)
                    .call(callers[gw], "svc", next_call[gw], Some(timeout));
            }
            25..=44 => {
                let (gw, p) = provs[rng.usize(..provs.len())];
                let calls = mesh.gw_ref(gw).calls(p);
                if !calls.is_empty() {
                    let id = calls[rng.usize(..calls.len())].1;
                    mesh.gw(gw).reply(p, id, &ok(1));
                }
            }
            45..=69 => {
                let gw = rng.usize(..3);
                next_pub[gw] += 1;
                let payload = next_pub[gw].to_be_bytes();
                mesh.gw(gw).publish(pubs[gw], "t", &payload);
            }
            70..=71 => {
                let a = rng.usize(..3);
                mesh.cut(a, (a + 1 + rng.usize(..2)) % 3);
            }
            72..=75 => {
                let a = rng.usize(..3);
                mesh.heal(a, (a + 1 + rng.usize(..2)) % 3);
            }
            76 => {
                let a = rng.usize(..3);
                mesh.hold(a, (a + 1 + rng.usize(..2)) % 3);
            }
            77 => mesh.gw(rng.usize(..3)).hold_messages = true,
            78..=79 => {
                for a in 0..3 {
                    mesh.gw(a).hold_messages = false;
                    for b in 0..3 {
                        mesh.release(a, b);
                    }
                }
            }
            80..=89 => mesh.advance(Duration::from_millis(rng.u64(1..500))),
            _ => {
                for _ in 0..rng.usize(1..30) {
                    mesh.step();
                }
            }
        }
    }
    for a in 0..3 {
        mesh.gw(a).hold_messages = false;
        for b in 0..3 {
            mesh.heal(a, b);
            mesh.release(a, b);
        }
    }
    // Past every call's deadline, and every redial's backoff.
    mesh.advance(Duration::from_secs(40));
    for gw in 0..3 {
        let mut ids: Vec<u64> = mesh
            .gw_ref(gw)
            .replies(callers[gw])
            .iter()
            .map(|r| r.0)
            .collect();
        ids.sort_unstable();
        let issued: Vec<u64> = (1..=next_call[gw]).collect();
        assert_eq!(ids, issued, "gateway {gw}: one REPLY per CALL");
    }
    for (gw, &sub) in subs.iter().enumerate() {
        for (from, &count) in next_pub.iter().enumerate() {
            let publisher = node(1_000 * (from as u32 + 1) + 2);
            let seqs: Vec<u16> = payloads_from(&mesh, gw, sub, publisher)
                .iter()
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "gateway {gw} got gateway {from}'s publishes twice or out of order"
            );
            if from == gw {
                assert_eq!(seqs.len(), usize::from(count), "local delivery is whole");
            }
        }
    }
    // Seeds are dialed forever: every gateway is back with gateway 0. (Gateways 1 and 2 met
    // by gossip, and may have forgotten each other after 3 failed dials, 9.4.)
    assert_eq!(mesh.up_peers(0), [name(1), name(2)]);
}

#[test]
fn a_gateway_that_stops_closes_its_links_shutting_down_and_its_peers_fail_its_calls() {
    each_seed(4, |seed| {
        let mut mesh = full_mesh(seed, 3, 2);
        let provs = providers(&mut mesh, seed, &[(1, 1)]);
        let caller = mesh.connect(0, shard_of(seed, 1, 2), node(10));
        mesh.gw(0).call(caller, "svc", 7, Some(60_000));
        mesh.drive();
        assert_eq!(mesh.gw_ref(1).calls(provs[0].1).len(), 1);
        let now = mesh.now;
        for shard in &mut mesh.gw(1).shards {
            shard.shutdown(now);
        }
        mesh.drive();
        assert_eq!(
            mesh.gw_ref(0).replies(caller),
            vec![(7, Err("provider_gone".into()))]
        );
        assert_eq!(mesh.up_peers(0), [name(2)]);
        assert_eq!(mesh.up_peers(2), [name(0)]);
        assert_eq!((mesh.connections(0, 1), mesh.connections(1, 2)), (0, 0));
        assert_eq!(mesh.total(0, |c| c.link_results_of(LinkResult::Lost)), 1);
        mesh.kill(1);
        mesh.advance(Duration::from_secs(10));
        assert_eq!(mesh.up_peers(0), [name(2)]);
    });
}

#[test]
fn after_admission_the_members_come_first_then_the_snapshots_and_only_then_increments() {
    each_seed(4, |seed| {
        let specs = vec![GatewaySpec::new(1), GatewaySpec::new(1).peers(&[0])];
        let mut mesh = MeshSim::new(seed, specs);
        let sub = mesh.connect(0, 0, node(10));
        mesh.gw(0).subscribe(sub, &["old"]);
        mesh.drive();
        // Gateway 0 gets the dialer's PEER_AUTH in the same turn as a new SUBSCRIBE.
        mesh.hold(1, 0);
        mesh.advance(Duration::from_secs(1));
        mesh.deliver_all(1, 0);
        mesh.drive();
        assert_eq!(
            mesh.control_log.get(&(0, 1)).map(Vec::len),
            Some(1),
            "HELLO"
        );
        mesh.gw(0).subscribe(sub, &["new"]);
        mesh.deliver_all(1, 0);
        mesh.release(1, 0);
        mesh.drive();
        assert_eq!(mesh.up_peers(0), [name(1)]);
        let log = &mesh.control_log[&(0, 1)];
        let first_sync = log
            .iter()
            .position(|&t| t == FrameType::Sync as u8)
            .unwrap();
        let first_interest = log
            .iter()
            .position(|&t| t == FrameType::Interest as u8)
            .unwrap();
        assert_eq!(log[1], FrameType::PeerMembers as u8, "{log:?}");
        assert!(
            first_sync < first_interest,
            "an INTEREST before the snapshot: {log:?}"
        );
        assert_eq!(mesh.link(1, 0).unwrap().patterns, 2);
    });
}

#[test]
fn a_gateway_answers_a_ping_on_a_link_only_once_every_shard_has_what_came_before_it() {
    each_seed(8, |seed| {
        let mut mesh = full_mesh(seed, 2, 3);
        let publishers: Vec<ClientId> = (0..3)
            .map(|shard| mesh.connect(0, shard, node(30 + u32::from(shard))))
            .collect();
        let sub = mesh.connect(1, shard_of(seed, 1, 3), node(20));
        mesh.gw(1).subscribe(sub, &["fresh.topic"]);
        mesh.mesh_ping(1, sub, 77);
        // Gateway 0's shards stall: the INTEREST reaches its link's shard only.
        mesh.gw(0).hold_messages = true;
        mesh.drive();
        assert!(!mesh.gw_ref(1).pong_timestamps(sub).contains(&77));
        mesh.gw(0).hold_messages = false;
        while !mesh.gw_ref(1).pong_timestamps(sub).contains(&77) {
            assert!(mesh.step(), "the mesh PING was answered");
        }
        for p in publishers {
            mesh.gw(0).publish(p, "fresh.topic", b"1");
        }
        mesh.drive();
        assert_eq!(mesh.gw_ref(1).publishes(sub).len(), 3);
    });
}

#[test]
fn mesh_pings_are_answered_between_gateways_of_one_shard() {
    each_seed(4, |seed| {
        let specs = vec![GatewaySpec::new(1), GatewaySpec::new(1).peers(&[0])];
        let mut mesh = full_mesh_of(seed, specs);
        let sub = mesh.connect(1, 0, node(20));
        mesh.gw(1).subscribe(sub, &["x"]);
        mesh.mesh_sync(1, sub);
        let p = mesh.connect(0, 0, node(10));
        mesh.gw(0).subscribe(p, &["y"]);
        mesh.mesh_sync(0, p);
        mesh.gw(0).publish(p, "x", b"1");
        mesh.gw(1).publish(sub, "y", b"2");
        mesh.drive();
        assert_eq!(mesh.gw_ref(1).publishes(sub).len(), 1);
        assert_eq!(mesh.gw_ref(0).publishes(p).len(), 1);
    });
}

#[test]
fn a_peer_call_that_reuses_a_call_id_still_in_flight_closes_the_link_protocol_error() {
    each_seed(4, |seed| {
        let mut mesh = full_mesh(seed, 2, 2);
        let provs = providers(&mut mesh, seed, &[(0, 1)]);
        let (gw, p) = provs[0];
        let mut frame = Vec::new();
        PeerMessage::Call(LinkCall {
            realm: REALM.as_bytes(),
            procedure: b"svc",
            args: Raw(&[0xc0]),
            call_id: 41,
            timeout_ms: 60_000,
            caller: NodeId([9; 32]),
        })
        .encode(&mut frame);
        mesh.inject(1, 0, LinkStream::Data, &frame);
        mesh.drive();
        assert_eq!(mesh.gw_ref(gw).calls(p).len(), 1, "the first CALL is taken");
        assert_eq!(mesh.connections(0, 1), 1);
        let closes = mesh.closes.len();
        mesh.inject(1, 0, LinkStream::Data, &frame);
        mesh.drive();
        assert_eq!(mesh.connections(0, 1), 0);
        let protocol_error = (0, 1, Reason::ProtocolError.close_code());
        assert!(mesh.closes[closes..].contains(&protocol_error));
        assert_eq!(
            mesh.gw_ref(gw).calls(p).len(),
            1,
            "the second CALL went to no provider"
        );
    });
}

#[test]
fn a_frame_on_the_wrong_stream_or_for_a_realm_not_shared_closes_the_link_protocol_error() {
    each_seed(4, |seed| {
        let mut specs = specs(2, 2);
        specs[1] = specs[1].clone().config(|c| {
            c.realms.push(meshgate_shard::RealmConfig {
                name: b"only.here"[..].into(),
                tokens: Vec::new(),
            })
        });
        let mut mesh = full_mesh_of(seed, specs);
        let bad_frames = [
            (LinkStream::Control, {
                let mut f = Vec::new();
                let p = meshgate_shard::wire::Publish::new(b"t", b"x");
                let node = NodeId([7; 32]);
                PeerMessage::Publish(meshgate_shard::wire::LinkPublish::forwarded(
                    REALM.as_bytes(),
                    node,
                    &p,
                ))
                .encode(&mut f);
                f
            }),
            (LinkStream::Control, {
                let mut f = Vec::new();
                PeerMessage::Sync(SyncMsg {
                    realm: b"only.here",
                    phase: SyncPhase::Request,
                })
                .encode(&mut f);
                f
            }),
        ];
        for (i, (stream, frame)) in bad_frames.into_iter().enumerate() {
            let closes = mesh.closes.len();
            mesh.inject(1, 0, stream, &frame);
            mesh.drive();
            assert_eq!(mesh.connections(0, 1), 0, "frame {i}");
            let protocol_error = (0, 1, Reason::ProtocolError.close_code());
            assert!(mesh.closes[closes..].contains(&protocol_error), "frame {i}");
            assert_eq!(
                mesh.control_log[&(0, 1)].last(),
                Some(&(FrameType::Disconnect as u8))
            );
            mesh.advance(Duration::from_secs(5));
            assert_eq!(
                mesh.up_peers(0),
                [name(1)],
                "frame {i}: the link comes back"
            );
        }
        let lost = mesh.total(1, |c| c.link_results_of(LinkResult::Lost));
        assert_eq!(lost, 2);
    });
}

#[test]
fn a_mesh_simulation_replays_exactly_from_its_seed() {
    // Gateway 3 dials three seeds at once; shards take turns on every choice.
    fn run(seed: u64) -> String {
        let specs = vec![
            GatewaySpec::new(2),
            GatewaySpec::new(3).peers(&[0]),
            GatewaySpec::new(2).peers(&[0]),
            GatewaySpec::new(3).peers(&[0, 1, 2]),
        ];
        let mut mesh = MeshSim::new(seed, specs);
        mesh.advance(Duration::from_secs(3));
        let sub = mesh.connect(1, 1, node(20));
        let patterns: Vec<String> = (0..40).map(|i| format!("p.{i}")).collect();
        let list: Vec<&str> = patterns.iter().map(String::as_str).collect();
        mesh.gw(1).subscribe(sub, &list);
        mesh.mesh_sync(1, sub);
        for (i, procedure) in ["x", "y", "z"].iter().enumerate() {
            for j in 0..2 {
                let p = mesh.connect(2, j, node(30 + 2 * i as u32 + u32::from(j)));
                mesh.gw(2).register(p, procedure, None);
                mesh.mesh_sync(2, p);
            }
        }
        let caller = mesh.connect(3, 2, node(40));
        for (i, procedure) in ["x", "y", "z", "x", "w"].iter().enumerate() {
            mesh.gw(3).call(caller, procedure, i as u64, Some(500));
            mesh.gw(3).publish(caller, &format!("p.{i}"), b"1");
        }
        mesh.cut(1, 3);
        mesh.advance(Duration::from_secs(2));
        mesh.heal(1, 3);
        mesh.advance(Duration::from_secs(40));
        let mut out = format!("{:?} {:?} {:?}", mesh.now, mesh.closes, mesh.gateway_weight);
        for gw in 0..4 {
            for c in &mesh.gw_ref(gw).clients {
                out += &format!(" {:?}", c.frames);
            }
        }
        for gw in 0..4 {
            for (i, shard) in mesh.gw_ref(gw).shards.iter().enumerate() {
                for l in shard.link_reports() {
                    let name = l.node_name.as_deref().map(String::from_utf8_lossy);
                    out += &format!(" {gw}/{i}:{name:?}:{:?}:{:?}", l.dialed, l.counters);
                }
            }
        }
        let mut log: Vec<_> = mesh.control_log.iter().collect();
        log.sort();
        out + &format!("{log:?}")
    }
    each_seed(4, |seed| assert_eq!(run(seed), run(seed)));
}

#[test]
fn a_seed_where_no_gateway_answers_is_dialed_forever_with_backoff() {
    each_seed(2, |seed| {
        let specs = vec![GatewaySpec::new(2).peers(&[9])];
        let mut mesh = MeshSim::new(seed, specs);
        mesh.advance(Duration::from_secs(60));
        // Dials at 0, 4, 9, 16 and 35 s (+/- jitter), each failing 3 s later.
        let failed = mesh.total(0, |c| c.link_results_of(LinkResult::DialFailed));
        assert!((4..=6).contains(&failed), "{failed} failed dials");
        let table = mesh.gw_ref(0).shards[0].peer_table().unwrap();
        assert_eq!(table.dials.len(), 1, "a seed is never forgotten");
    });
}

#[test]
fn a_gossip_learned_gateway_that_is_gone_is_forgotten_and_learned_again_when_it_returns() {
    each_seed(4, |seed| {
        let mut mesh = full_mesh(seed, 3, 2);
        mesh.kill(2);
        mesh.advance(Duration::from_secs(60));
        let table = mesh.gw_ref(1).shards[0].peer_table().unwrap();
        let addrs: Vec<&str> = table.dials.iter().map(|d| &*d.addr).collect();
        assert_eq!(
            addrs,
            [sim::mesh::addr(0)],
            "gateway 2 forgotten after 3 failed dials"
        );
        mesh.restart(2);
        mesh.advance(Duration::from_secs(5));
        for gw in 0..3 {
            assert_eq!(mesh.up_peers(gw).len(), 2, "gateway {gw}");
        }
    });
}
