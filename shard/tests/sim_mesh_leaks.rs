//! Nothing leaks in a mesh: after thousands of random operations on three gateways of two and
//! three shards (sessions connecting, subscribing, registering, calling across and leaving,
//! links cut and healed, a gateway restarted, links evicted under a low `--max-peers`), once
//! every session has gone and every timeout has passed, every table of every shard of every
//! gateway is empty. Up links may stay, with nothing in them.

mod sim;

use std::time::Duration;

use meshgate_shard::metrics::CallOutcome;
use meshgate_shard::wire::{Disconnect, Message};
use meshgate_shard::{LinkState, Occupancy};
use sim::mesh::{GatewaySpec, MeshSim};
use sim::{node, seeds, SeedGuard, REALM};

const PATTERNS: [&str; 8] = ["a", "a.b", "a.*", "a.**", "**", "*.b", "b.c.d", "b.**"];
const TOPICS: [&str; 6] = ["a", "a.b", "a.b.c", "b", "b.c.d", "x.b"];
const PROCEDURES: [&str; 4] = ["p.one", "p.two", "p.three", "p.four"];

fn spec(shards: u16, peers: &[usize], max_peers: usize) -> GatewaySpec {
    GatewaySpec::new(shards)
        .peers(peers)
        .config(|c| {
            c.limits.max_output = 4_096;
            c.limits.max_clients = 12;
            c.limits.max_subscriptions = 6;
            c.limits.max_registrations = 3;
            c.limits.max_pending_calls = 40;
            c.limits.call_timeout = Duration::from_millis(300);
            c.limits.slow_consumer_timeout = Duration::from_millis(500);
            c.limits.prune_interval = Duration::from_secs(1);
            c.limits.service_ttl = Duration::from_secs(3);
        })
        .mesh(move |m| {
            m.max_peers = max_peers;
            m.interest_refresh = Duration::from_secs(5);
            m.max_advertised_patterns = 5;
            m.max_peer_output = 600;
        })
}

fn run(seed: u64, ops: usize, shards: [u16; 3]) {
    let _guard = SeedGuard(seed);
    let specs = vec![
        spec(shards[0], &[], 8),
        spec(shards[1], &[0], 8),
        spec(shards[2], &[0], 1),
    ];
    let mut mesh = MeshSim::new(seed, specs);
    mesh.window = 600;
    let gateways = mesh.gws.len();
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x1eaf);
    // Live sessions: (gateway, its start, client).
    let mut live: Vec<(usize, u64, usize)> = Vec::new();
    let mut restarts = 0;
    mesh.advance(Duration::from_secs(3));
    for _ in 0..ops {
        live.retain(|&(g, run, c)| {
            mesh.starts[g] == run && mesh.gw_ref(g).clients[c].closed.is_none()
        });
        let pick = |rng: &mut fastrand::Rng, live: &[(usize, u64, usize)]| {
            (!live.is_empty()).then(|| {
                let (g, _, c) = live[rng.usize(..live.len())];
                (g, c)
            })
        };
        match rng.u32(..100) {
            0..=11 => {
                let g = rng.usize(..gateways);
                let shard = rng.u16(..mesh.gw_ref(g).shards.len() as u16);
                let realm = if rng.u8(..8) == 0 {
                    "other.realm"
                } else {
                    REALM
                };
                let c = mesh.gw(g).open(shard, node(rng.u32(..48)), realm, None);
                live.push((g, mesh.starts[g], c));
            }
            12..=13 => {
                // A session that never sends CONNECT.
                let g = rng.usize(..gateways);
                let shard = rng.u16(..mesh.gw_ref(g).shards.len() as u16);
                let c = mesh.gw(g).open_session(shard, node(1000));
                live.push((g, mesh.starts[g], c));
            }
            14..=25 => {
                if let Some((g, c)) = pick(&mut rng, &live) {
                    let n = rng.usize(1..3);
                    let patterns: Vec<&str> = (0..n)
                        .map(|_| PATTERNS[rng.usize(..PATTERNS.len())])
                        .collect();
                    mesh.gw(g).subscribe(c, &patterns);
                }
            }
            26..=29 => {
                if let Some((g, c)) = pick(&mut rng, &live) {
                    mesh.gw(g)
                        .unsubscribe(c, &[PATTERNS[rng.usize(..PATTERNS.len())]]);
                }
            }
            30..=37 => {
                if let Some((g, c)) = pick(&mut rng, &live) {
                    let ttl = if rng.bool() {
                        Some(rng.u64(1..5))
                    } else {
                        None
                    };
                    mesh.gw(g)
                        .register(c, PROCEDURES[rng.usize(..PROCEDURES.len())], ttl);
                }
            }
            38..=40 => {
                if let Some((g, c)) = pick(&mut rng, &live) {
                    mesh.gw(g)
                        .unregister(c, PROCEDURES[rng.usize(..PROCEDURES.len())]);
                }
            }
            41..=54 => {
                if let Some((g, c)) = pick(&mut rng, &live) {
                    let timeout = if rng.bool() {
                        Some(rng.u64(1..500))
                    } else {
                        None
                    };
                    let procedure = PROCEDURES[rng.usize(..PROCEDURES.len())];
                    mesh.gw(g).call(c, procedure, rng.u64(..16), timeout);
                }
            }
            55..=64 => {
                // A provider answers one of the calls it received (maybe late, maybe twice).
                if let Some((g, c)) = pick(&mut rng, &live) {
                    let calls = mesh.gw_ref(g).calls(c);
                    if !calls.is_empty() {
                        let id = calls[rng.usize(..calls.len())].1;
                        mesh.gw(g).reply(c, id, &[0x2a]);
                    }
                }
            }
            65..=73 => {
                if let Some((g, c)) = pick(&mut rng, &live) {
                    let payload = vec![0u8; rng.usize(..300)];
                    mesh.gw(g)
                        .publish(c, TOPICS[rng.usize(..TOPICS.len())], &payload);
                }
            }
            74..=75 => {
                if let Some((g, c)) = pick(&mut rng, &live) {
                    mesh.mesh_ping(g, c, rng.u64(..1 << 20));
                }
            }
            76..=78 => {
                if let Some((g, c)) = pick(&mut rng, &live) {
                    let leave = Message::Disconnect(Disconnect {
                        reason: b"normal",
                        message: None,
                    });
                    mesh.gw(g).send(c, &leave);
                }
            }
            79..=80 => {
                if let Some((g, c)) = pick(&mut rng, &live) {
                    mesh.gw(g).drop_connection(c);
                }
            }
            81..=82 => {
                if let Some((g, c)) = pick(&mut rng, &live) {
                    let reading = &mut mesh.gw(g).clients[c].reading;
                    *reading = !*reading;
                }
            }
            83 => {
                let a = rng.usize(..gateways);
                let b = (a + 1 + rng.usize(..gateways - 1)) % gateways;
                mesh.cut(a, b);
            }
            84..=85 => {
                let a = rng.usize(..gateways);
                let b = (a + 1 + rng.usize(..gateways - 1)) % gateways;
                mesh.heal(a, b);
            }
            86 if rng.bool() => {
                // A stall one way, until the next release.
                let a = rng.usize(..gateways);
                let b = (a + 1 + rng.usize(..gateways - 1)) % gateways;
                mesh.hold(a, b);
            }
            86 if restarts < 2 && rng.u8(..8) == 0 => {
                restarts += 1;
                mesh.restart(rng.usize(..gateways));
            }
            87 if rng.bool() => mesh.gw(rng.usize(..gateways)).hold_messages = true,
            87 => {
                for a in 0..gateways {
                    mesh.gw(a).hold_messages = false;
                    for b in 0..gateways {
                        mesh.release(a, b);
                    }
                }
            }
            88..=93 => mesh.advance(Duration::from_millis(rng.u64(1..400))),
            94 => mesh.advance(Duration::from_secs(rng.u64(1..12))),
            _ => {
                for _ in 0..rng.usize(1..40) {
                    mesh.step();
                }
            }
        }
        if rng.u8(..4) == 0 {
            mesh.drive();
        }
    }
    mesh.drive();
    for a in 0..gateways {
        mesh.gw(a).hold_messages = false;
        for b in 0..gateways {
            mesh.heal(a, b);
            mesh.release(a, b);
        }
    }
    for g in 0..gateways {
        for c in 0..mesh.gw_ref(g).clients.len() {
            mesh.gw(g).clients[c].reading = true;
            mesh.gw(g).drop_connection(c);
        }
    }
    mesh.advance(Duration::from_secs(120));
    for g in 0..gateways {
        let up = mesh.up_links(g).len();
        for (i, shard) in mesh.gw_ref(g).shards.iter().enumerate() {
            let occupancy = shard.occupancy();
            let links_only = Occupancy {
                links: occupancy.links,
                mesh_view: [up, 0, 0],
                peers: if i == 0 { up } else { 0 },
                ..Occupancy::default()
            };
            assert_eq!(
                occupancy, links_only,
                "gateway {g} shard {i} holds state after every client left"
            );
            for link in shard.link_reports() {
                assert_eq!(link.state, LinkState::Up, "gateway {g} shard {i}");
                assert_eq!(
                    (
                        link.calls_out,
                        link.calls_in,
                        link.patterns,
                        link.procedures
                    ),
                    (0, 0, 0, 0),
                    "gateway {g} shard {i}: a link to {:?}",
                    link.node_name.as_deref().map(String::from_utf8_lossy)
                );
            }
        }
        let counts = &mesh.gw_ref(g).shards[0].config().counts;
        assert_eq!(
            (counts.clients.get(), counts.handshakes.get()),
            (0, 0),
            "gateway {g}: the counts of clients and handshakes after every client left"
        );
    }
    let total = |f: &dyn Fn(&meshgate_shard::metrics::Counters) -> u64| {
        (0..gateways).map(|g| mesh.total(g, f)).sum::<u64>()
    };
    assert!(
        total(&|c| c.deliveries) > 0 && total(&|c| c.calls_of(CallOutcome::Ok)) > 0,
        "the run exercised delivery and calls"
    );
    assert!(total(&|c| c.peers_evicted) > 0, "the run evicted links");
    use meshgate_shard::wire::FrameType;
    for ty in [
        FrameType::Publish,
        FrameType::Call,
        FrameType::Reply,
        FrameType::Cancel,
    ] {
        assert!(
            mesh.frames_sent_of(ty) > 0,
            "the run sent {ty:?} across links"
        );
    }
    // The mesh formed again: gateways 0 and 1 linked, gateway 2 holding its one link.
    assert!(mesh.up_peers(0).contains(&sim::mesh::name(1)));
    assert_eq!(mesh.up_peers(2).len(), 1);
}

#[test]
fn every_table_of_every_gateway_is_empty_after_random_mesh_churn() {
    for seed in seeds(300, 6) {
        run(seed, 3_000, [3, 2, 3]);
    }
}

#[test]
fn every_table_is_empty_after_random_mesh_churn_with_gateways_of_one_shard() {
    for seed in seeds(400, 4) {
        run(seed, 3_000, [1, 2, 1]);
    }
}
