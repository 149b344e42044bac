//! PROTOCOL.md sections 3 and 5, rule by rule, on a simulated multi-shard gateway.

mod sim;

use std::time::Duration;

use meshgate_shard::metrics::{CallOutcome, DropReason};
use meshgate_shard::wire::{Message, Ping, Reason};
use meshgate_shard::{NodeId, StreamEnd};
use sim::{node, node_owned_by, seeds, ClientId, SeedGuard, Sim, REALM};

fn each_seed(count: u64, test: impl Fn(u64)) {
    for seed in seeds(0, count) {
        let _guard = SeedGuard(seed);
        test(seed);
    }
}

// ------------------------------------------------------------------------------ session

#[test]
fn connect_is_answered_with_pong_carrying_the_gateway_node_id() {
    each_seed(4, |seed| {
        let mut sim = Sim::new(2, seed);
        let c = sim.connect(1, node(1));
        match &sim.messages(c)[0] {
            Message::Pong(p) => {
                assert_eq!(p.timestamp, 0);
                assert_eq!(p.node_id, Some(NodeId([0xee; 32])));
                assert!(p.server_time > 0);
            }
            other => panic!("expected PONG, got {other:?}"),
        }
        assert_eq!(sim.shards[1].metrics().clients, 1);
    });
}

#[test]
fn a_frame_before_connect_is_a_protocol_error() {
    let mut sim = Sim::new(2, 0);
    let c = sim.open_session(0, node(1));
    sim.send(c, &Message::Ping(Ping::new(1)));
    sim.drive();
    assert_eq!(sim.clients[c].closed, Some(Reason::ProtocolError));
    assert_eq!(sim.disconnect_reason(c).as_deref(), Some("protocol_error"));
}

#[test]
fn no_connect_in_time_closes_with_connect_timeout() {
    let mut sim = Sim::new(2, 0);
    let c = sim.open_session(0, node(1));
    sim.advance(Duration::from_secs(9));
    assert_eq!(sim.clients[c].closed, None);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.clients[c].closed, Some(Reason::ConnectTimeout));
    assert_eq!(sim.disconnect_reason(c).as_deref(), Some("connect_timeout"));
}

#[test]
fn a_realm_not_served_is_refused_with_realm_mismatch() {
    let mut sim = Sim::new(2, 0);
    for realm in ["not.served", "Invalid Realm", ""] {
        let c = sim.open(0, node(1), realm, None);
        sim.drive();
        assert_eq!(
            sim.clients[c].closed,
            Some(Reason::RealmMismatch),
            "{realm:?}"
        );
        assert_eq!(sim.disconnect_reason(c).as_deref(), Some("realm_mismatch"));
    }
    assert_eq!(sim.total(|c| c.refused_of(Reason::RealmMismatch)), 3);
}

#[test]
fn a_realm_with_tokens_refuses_a_missing_or_wrong_token() {
    let mut sim = Sim::new(2, 0);
    let missing = sim.open(0, node(1), "secure", None);
    let wrong = sim.open(1, node(2), "secure", Some("guess"));
    let right = sim.open(1, node(3), "secure", Some("s3cret"));
    sim.drive();
    assert_eq!(sim.clients[missing].closed, Some(Reason::Unauthorized));
    assert_eq!(sim.clients[wrong].closed, Some(Reason::Unauthorized));
    assert_eq!(sim.clients[right].closed, None);
    assert_eq!(sim.pongs(right), 1);
}

#[test]
fn an_oversize_frame_is_refused_with_frame_too_large() {
    let mut sim = Sim::with(1, 0, |c| c.limits.max_frame = 256);
    let c = sim.connect(0, node(1));
    sim.publish(c, "big.topic", &[7u8; 300]);
    sim.drive();
    assert_eq!(sim.clients[c].closed, Some(Reason::FrameTooLarge));
    assert_eq!(sim.disconnect_reason(c).as_deref(), Some("frame_too_large"));
}

#[test]
fn a_client_disconnect_ends_the_session_with_code_normal() {
    let mut sim = Sim::new(2, 0);
    let c = sim.connect(0, node(1));
    let d = meshgate_shard::wire::Disconnect {
        reason: b"normal",
        message: None,
    };
    sim.send(c, &Message::Disconnect(d));
    sim.drive();
    assert_eq!(sim.clients[c].closed, Some(Reason::Normal));
    assert_eq!(sim.shards[0].metrics().clients, 0);
}

#[test]
fn frames_pipelined_behind_connect_are_handled_after_admission() {
    each_seed(8, |seed| {
        let mut sim = Sim::new(3, seed);
        let sub = sim.open(2, node_owned_by(0, 3, 10), REALM, None);
        sim.subscribe(sub, &["a.b"]);
        sim.ping(sub, 77);
        sim.drive();
        assert_eq!(sim.pong_timestamps(sub), vec![0, 77]);
        let publisher = sim.connect(1, node(2));
        sim.publish(publisher, "a.b", b"x");
        sim.drive();
        assert_eq!(sim.publishes(sub).len(), 1);
    });
}

/// A caller on shard 0 and a provider of `svc.echo` on shard 1, one call in flight with a
/// deadline no test waits for.
fn call_in_flight(sim: &mut Sim) -> (usize, usize, u64) {
    let (caller, providers) = rpc(sim, 0, &[1]);
    sim.call(caller, "svc.echo", 7, Some(60_000));
    sim.drive();
    let token = sim.calls(providers[0])[0].1;
    (caller, providers[0], token)
}

#[test]
fn a_fin_between_frames_ends_the_session_as_normal_after_the_frames_before_it() {
    each_seed(8, |seed| {
        let mut sim = Sim::new(2, seed);
        let sub = sim.connect(1, node(2));
        sim.subscribe(sub, &["last.words"]);
        sim.sync(sub);
        let c = sim.connect(0, node(1));
        sim.register(c, "svc.gone", None);
        sim.publish(c, "last.words", b"bye");
        sim.end_stream(c, StreamEnd::Finished);
        sim.drive();
        assert_eq!(sim.clients[c].closed, Some(Reason::Normal));
        assert_eq!(sim.disconnect_reason(c), None, "no DISCONNECT after FIN");
        assert_eq!(
            sim.publishes(sub).len(),
            1,
            "the frame before FIN was handled"
        );
        sim.call(sub, "svc.gone", 1, Some(60_000));
        sim.drive();
        assert_eq!(
            sim.replies(sub),
            vec![(1, Err("procedure_not_found".into()))]
        );
        assert_eq!(sim.shards[0].metrics().clients, 0);
        assert_eq!(sim.counts().clients.get(), 1);
    });
}

#[test]
fn a_fin_inside_a_frame_is_a_protocol_error() {
    each_seed(4, |seed| {
        let mut sim = Sim::new(2, seed);
        let c = sim.connect(0, node(1));
        let mut ping = Vec::new();
        Message::Ping(Ping::new(5)).encode(&mut ping);
        sim.send_bytes(c, &ping[..ping.len() - 1]);
        sim.end_stream(c, StreamEnd::Finished);
        sim.drive();
        assert_eq!(sim.clients[c].closed, Some(Reason::ProtocolError));
        assert_eq!(sim.disconnect_reason(c).as_deref(), Some("protocol_error"));
    });
}

#[test]
fn a_fin_right_after_connect_ends_the_session_once_it_is_admitted() {
    each_seed(8, |seed| {
        let mut sim = Sim::new(3, seed);
        let c = sim.open(2, node_owned_by(0, 3, 0), REALM, None);
        sim.end_stream(c, StreamEnd::Finished);
        sim.drive();
        assert_eq!(sim.pongs(c), 1, "CONNECT was answered");
        assert_eq!(sim.clients[c].closed, Some(Reason::Normal));
        assert_eq!(sim.counts().clients.get(), 0, "its directory entry is gone");
        assert_eq!(sim.counts().handshakes.get(), 0);
    });
}

#[test]
fn a_provider_that_resets_or_stops_its_stream_fails_its_calls_with_provider_gone_at_once() {
    for end in [
        StreamEnd::Reset,
        StreamEnd::StopSending,
        StreamEnd::Finished,
    ] {
        each_seed(4, |seed| {
            let mut sim = Sim::new(2, seed);
            let (caller, provider, _) = call_in_flight(&mut sim);
            sim.end_stream(provider, end);
            sim.drive();
            assert_eq!(
                sim.clients[provider].closed,
                Some(Reason::Normal),
                "{end:?}"
            );
            assert_eq!(sim.replies(caller), vec![(7, Err("provider_gone".into()))]);
            sim.call(caller, "svc.echo", 8, Some(60_000));
            sim.drive();
            assert_eq!(
                sim.replies(caller)[1],
                (8, Err("procedure_not_found".into()))
            );
        });
    }
}

#[test]
fn a_caller_that_resets_or_stops_its_stream_has_its_calls_cancelled_with_caller_gone() {
    for end in [StreamEnd::Reset, StreamEnd::StopSending] {
        each_seed(4, |seed| {
            let mut sim = Sim::new(2, seed);
            let (caller, provider, token) = call_in_flight(&mut sim);
            sim.end_stream(caller, end);
            sim.drive();
            assert_eq!(sim.cancels(provider), vec![(token, "caller_gone".into())]);
            assert_eq!(sim.shards[0].metrics().pending_calls, 0, "{end:?}");
        });
    }
}

// ------------------------------------------------------------------------------ client table

#[test]
fn clients_beyond_max_clients_are_refused_and_others_are_undisturbed() {
    each_seed(4, |seed| {
        let mut sim = Sim::with(2, seed, |c| c.limits.max_clients = 2);
        let a = sim.connect(0, node_owned_by(0, 2, 0));
        let b = sim.connect(1, node_owned_by(1, 2, 0));
        let extra = sim.open(1, node_owned_by(0, 2, 1000), REALM, None);
        sim.drive();
        assert_eq!(sim.clients[extra].closed, Some(Reason::MaxClientsReached));
        assert_eq!(
            sim.disconnect_reason(extra).as_deref(),
            Some("max_clients_reached")
        );
        assert_eq!(sim.total(|c| c.refused_of(Reason::MaxClientsReached)), 1);
        sim.sync(a);
        sim.sync(b);
        assert_eq!(sim.clients[a].closed, None);
        assert_eq!(sim.clients[b].closed, None);
    });
}

#[test]
fn max_clients_holds_for_the_whole_gateway_whichever_shards_own_the_nodes() {
    each_seed(8, |seed| {
        // Every node is owned by shard 0 of 4: a limit split among the owners would admit one.
        let mut sim = Sim::with(4, seed, |c| c.limits.max_clients = 3);
        let nodes: Vec<NodeId> = (0..5).map(|i| node_owned_by(0, 4, i * 100)).collect();
        let admitted: Vec<usize> = (0..3)
            .map(|i| sim.connect(i as u16 + 1, nodes[i]))
            .collect();
        let extra = sim.open(2, nodes[3], REALM, None);
        sim.drive();
        assert_eq!(sim.clients[extra].closed, Some(Reason::MaxClientsReached));
        sim.drop_connection(admitted[0]);
        sim.drive();
        let again = sim.connect(3, nodes[4]);
        assert_eq!(sim.clients[again].closed, None);
        assert_eq!(sim.counts().clients.get(), 3);
        assert_eq!(sim.total(|c| c.refused_of(Reason::MaxClientsReached)), 1);
    });
}

#[test]
fn random_arrivals_are_refused_only_while_the_gateway_holds_max_clients() {
    each_seed(16, |seed| {
        let shards = 1 + (seed % 4) as u16;
        let max = 5;
        let mut sim = Sim::with(shards, seed, |c| c.limits.max_clients = max);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut live: Vec<usize> = Vec::new();
        for i in 0..200u32 {
            if !live.is_empty() && rng.u8(..3) == 0 {
                let c = live.swap_remove(rng.usize(..live.len()));
                sim.drop_connection(c);
                sim.drive();
                continue;
            }
            let c = sim.open(rng.u16(..shards), node(1_000 + i), REALM, None);
            sim.drive();
            let held = live.len();
            match sim.clients[c].closed {
                None => live.push(c),
                Some(reason) => {
                    assert_eq!(reason, Reason::MaxClientsReached);
                    assert_eq!(held, max, "refused while the gateway held {held}");
                }
            }
            assert!(live.len() <= max);
            let active: u64 = sim.shards.iter().map(|s| s.metrics().clients).sum();
            assert_eq!(active as usize, live.len());
        }
    });
}

#[test]
fn a_replacing_connect_is_admitted_when_full_and_the_old_session_is_replaced() {
    each_seed(8, |seed| {
        let mut sim = Sim::with(2, seed, |c| c.limits.max_clients = 2);
        let n = node_owned_by(0, 2, 0);
        let old = sim.connect(0, n);
        let _other = sim.connect(1, node_owned_by(1, 2, 0));
        sim.subscribe(old, &["news.**"]);
        sim.register(old, "svc.echo", None);
        sim.sync(old);
        let new = sim.connect(1, n);
        assert_eq!(sim.clients[old].closed, Some(Reason::Replaced));
        assert_eq!(sim.disconnect_reason(old).as_deref(), Some("replaced"));
        assert_eq!(sim.clients[new].closed, None);
        // The old session's state is gone.
        for s in &sim.shards {
            assert_eq!(s.occupancy().local_subscriptions, 0);
            assert_eq!(s.occupancy().registrations, 0);
        }
        // The replacement holds the node's slot: it can leave and come back.
        sim.drop_connection(new);
        sim.drive();
        let again = sim.connect(0, n);
        assert_eq!(sim.clients[again].closed, None);
        assert_eq!(
            sim.shards
                .iter()
                .map(|s| s.metrics().directory)
                .sum::<u64>(),
            2
        );
    });
}

// ------------------------------------------------------------------------------ pub/sub

#[test]
fn a_publish_reaches_each_matching_subscriber_once_across_shards_with_overlapping_wildcards() {
    each_seed(16, |seed| {
        let mut sim = Sim::new(3, seed);
        let s0 = sim.connect(0, node(10));
        let s1 = sim.connect(1, node(11));
        let s2 = sim.connect(2, node(12));
        let s3 = sim.connect(2, node(13));
        let s4 = sim.connect(0, node(14));
        let publisher = sim.connect(1, node(20));
        sim.subscribe(s0, &["sensor.*.room1", "sensor.**", "sensor.temp.room1"]);
        sim.subscribe(s1, &["sensor.temp.room1"]);
        sim.subscribe(s2, &["sensor.temp.*", "**"]);
        sim.subscribe(s3, &["sensor.humidity.*", "sensor.*"]);
        sim.subscribe(s4, &["**.room1", "sensor.temp.**"]);
        sim.subscribe(publisher, &["sensor.**"]);
        for c in [s0, s1, s2, s3, s4, publisher] {
            sim.sync(c);
        }
        sim.publish(publisher, "sensor.temp.room1", b"21.5");
        sim.drive();
        for c in [s0, s1, s2, s4] {
            let got = sim.publishes(c);
            assert_eq!(got.len(), 1, "client {c}: {got:?}");
            assert_eq!(got[0].0, "sensor.temp.room1");
            assert_eq!(got[0].1, b"21.5");
            assert_eq!(got[0].2, Some(node(20)));
        }
        assert!(sim.publishes(s3).is_empty());
        assert!(
            sim.publishes(publisher).is_empty(),
            "the publisher is not served its own message"
        );
        assert_eq!(sim.total(|c| c.deliveries), 4);
        assert_eq!(sim.total(|c| c.publishes), 1);
    });
}

#[test]
fn a_publish_crosses_only_to_shards_with_a_matching_subscriber() {
    let mut sim = Sim::new(4, 0);
    let sub = sim.connect(2, node(1));
    let publisher = sim.connect(0, node(2));
    sim.subscribe(sub, &["only.here"]);
    sim.sync(sub);
    let before: Vec<u64> = sim
        .shards
        .iter()
        .map(|s| s.counters().shard_messages_in)
        .collect();
    sim.publish(publisher, "only.here", b"1");
    sim.publish(publisher, "nobody.listens", b"2");
    sim.drive();
    let after: Vec<u64> = sim
        .shards
        .iter()
        .map(|s| s.counters().shard_messages_in)
        .collect();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, vec![0, 0, 1, 0]);
    assert_eq!(sim.publishes(sub).len(), 1);
}

#[test]
fn messages_of_one_publisher_arrive_in_order() {
    each_seed(8, |seed| {
        let mut sim = Sim::new(2, seed);
        let near = sim.connect(0, node(1));
        let far = sim.connect(1, node(2));
        let publisher = sim.connect(0, node(3));
        sim.subscribe(near, &["seq.*"]);
        sim.subscribe(far, &["seq.*"]);
        sim.sync(near);
        sim.sync(far);
        for i in 0u32..200 {
            sim.publish(publisher, "seq.n", &i.to_be_bytes());
            if i % 7 == 0 {
                for _ in 0..3 {
                    sim.step();
                }
            }
        }
        sim.drive();
        for c in [near, far] {
            let got: Vec<u32> = sim
                .publishes(c)
                .iter()
                .map(|(_, p, _)| u32::from_be_bytes(p[..4].try_into().unwrap()))
                .collect();
            assert_eq!(got, (0..200).collect::<Vec<_>>());
        }
    });
}

#[test]
fn realms_are_isolated() {
    each_seed(4, |seed| {
        let mut sim = Sim::new(2, seed);
        let other = sim.open(1, node(1), "other.realm", None);
        sim.drive();
        sim.subscribe(other, &["**"]);
        sim.register(other, "svc.x", None);
        sim.sync(other);
        let default = sim.connect(0, node(2));
        sim.publish(default, "svc.x", b"hello");
        sim.call(default, "svc.x", 1, None);
        sim.drive();
        assert!(sim.publishes(other).is_empty());
        assert!(sim.calls(other).is_empty());
        assert_eq!(
            sim.replies(default),
            vec![(1, Err("procedure_not_found".into()))]
        );
        // The same node id may be connected in two realms at once.
        let twin = sim.open(0, node(1), REALM, None);
        sim.drive();
        assert_eq!(sim.clients[twin].closed, None);
        assert_eq!(sim.clients[other].closed, None);
    });
}

#[test]
fn ping_answers_only_once_subscriptions_are_in_effect_on_every_shard() {
    each_seed(32, |seed| {
        let mut sim = Sim::new(4, seed);
        let sub = sim.connect(0, node(1));
        let publishers: Vec<usize> = (1..4)
            .map(|s| sim.connect(s, node(10 + u32::from(s))))
            .collect();
        sim.subscribe(sub, &["fast.path"]);
        // A PING with `mesh` on a gateway with no peer link is the same barrier.
        let mesh = seed % 2 == 1;
        sim.send(
            sub,
            &Message::Ping(Ping {
                timestamp: 99,
                mesh,
            }),
        );
        // Step only until the PONG is out, then publish from every other shard at once.
        while !sim.pong_timestamps(sub).contains(&99) {
            assert!(
                sim.step() || !sim.pong_timestamps(sub).is_empty(),
                "PONG never came"
            );
        }
        for &p in &publishers {
            sim.publish(p, "fast.path", b"!");
        }
        sim.drive();
        assert_eq!(sim.publishes(sub).len(), 3);
    });
}

#[test]
fn an_invalid_topic_or_pattern_gets_an_error_and_the_session_goes_on() {
    let mut sim = Sim::new(2, 0);
    let c = sim.connect(0, node(1));
    sim.publish(c, "bad..topic", b"x");
    sim.publish(c, "wild.*", b"x");
    sim.subscribe(c, &["ok.*", "bad..pattern", ""]);
    sim.drive();
    let errors = sim.errors(c);
    assert_eq!(
        errors,
        vec![
            ("invalid_topic".into(), "bad..topic".into()),
            ("invalid_topic".into(), "wild.*".into()),
            ("invalid_pattern".into(), "bad..pattern".into()),
        ],
        "one ERROR per code per SUBSCRIBE frame"
    );
    assert_eq!(sim.clients[c].closed, None);
    assert_eq!(sim.shards[0].metrics().subscriptions, 1);
}

#[test]
fn subscribing_twice_is_a_no_op_and_unsubscribing_an_unknown_pattern_too() {
    let mut sim = Sim::new(2, 0);
    let c = sim.connect(0, node(1));
    let p = sim.connect(1, node(2));
    sim.subscribe(c, &["a.*", "a.*"]);
    sim.subscribe(c, &["a.*"]);
    sim.unsubscribe(c, &["never.subscribed"]);
    sim.sync(c);
    assert_eq!(sim.shards[0].metrics().subscriptions, 1);
    sim.publish(p, "a.b", b"1");
    sim.drive();
    assert_eq!(sim.publishes(c).len(), 1);
    sim.unsubscribe(c, &["a.*"]);
    sim.sync(c);
    sim.publish(p, "a.b", b"2");
    sim.drive();
    assert_eq!(sim.publishes(c).len(), 1);
    assert!(sim.errors(c).is_empty());
}

#[test]
fn subscriptions_beyond_the_limit_get_too_many_subscriptions() {
    let mut sim = Sim::with(2, 0, |c| c.limits.max_subscriptions = 3);
    let c = sim.connect(0, node(1));
    sim.subscribe(c, &["a", "b", "c", "d", "a", "e", "f"]);
    sim.drive();
    assert_eq!(
        sim.errors(c),
        vec![("too_many_subscriptions".into(), "d".into())]
    );
    assert_eq!(sim.shards[0].metrics().subscriptions, 3);
    sim.unsubscribe(c, &["a"]);
    sim.subscribe(c, &["d"]);
    sim.drive();
    assert_eq!(sim.errors(c).len(), 1);
    assert_eq!(sim.shards[0].metrics().subscriptions, 3);
}

#[test]
fn a_slow_consumer_loses_publishes_over_its_bound_and_is_disconnected_after_the_timeout() {
    let mut sim = Sim::with(2, 0, |c| {
        c.limits.max_output = 2_000;
        c.limits.slow_consumer_timeout = Duration::from_secs(10);
    });
    let slow = sim.connect(1, node(1));
    let fine = sim.connect(1, node(3));
    let publisher = sim.connect(0, node(2));
    sim.subscribe(slow, &["feed"]);
    sim.subscribe(fine, &["feed"]);
    sim.sync(slow);
    sim.sync(fine);
    sim.clients[slow].reading = false;
    for _ in 0..100 {
        sim.publish(publisher, "feed", &[0u8; 100]);
    }
    sim.drive();
    assert_eq!(
        sim.publishes(fine).len(),
        100,
        "other subscribers lose nothing"
    );
    let dropped = sim.total(|c| c.dropped_of(DropReason::SlowConsumer));
    assert!(dropped > 50, "dropped {dropped}");
    let queued = sim.shards[1].metrics().output_bytes as usize;
    assert!(queued <= 2_000 + 200, "output bounded: {queued}");
    sim.advance(Duration::from_secs(9));
    assert_eq!(sim.clients[slow].closed, None);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.clients[slow].closed, Some(Reason::SlowConsumer));
    assert_eq!(sim.clients[fine].closed, None);
}

/// A gateway with a 2,000-byte `--max-output` and a 10 s timeout, a publisher on shard 0 and,
/// on the last shard, a subscriber to `feed` that stopped reading, 30 messages of 100 bytes
/// over its bound.
fn a_subscriber_over_its_bound(shards: u16, seed: u64) -> (Sim, ClientId, ClientId) {
    let mut sim = Sim::with(shards, seed, |c| {
        c.limits.max_output = 2_000;
        c.limits.slow_consumer_timeout = Duration::from_secs(10);
    });
    let slow = sim.connect(shards - 1, node(1));
    let publisher = sim.connect(0, node(2));
    sim.subscribe(slow, &["feed"]);
    sim.sync(slow);
    sim.clients[slow].reading = false;
    publish_feed(&mut sim, publisher, 30);
    (sim, slow, publisher)
}

fn publish_feed(sim: &mut Sim, publisher: ClientId, n: usize) {
    for _ in 0..n {
        sim.publish(publisher, "feed", &[0u8; 100]);
    }
    sim.drive();
}

#[test]
fn a_consumer_that_takes_a_little_at_a_time_stays_slow_and_is_disconnected() {
    each_seed(4, |seed| {
        let (mut sim, slow, publisher) = a_subscriber_over_its_bound(2, seed);
        // Every half second it takes 300 bytes, under its bound but never down to half of
        // it, and new messages fill it up again at once.
        for _ in 0..19 {
            sim.advance(Duration::from_millis(500));
            sim.read(slow, 300);
            publish_feed(&mut sim, publisher, 5);
            assert_eq!(sim.clients[slow].closed, None, "seed {seed}");
        }
        sim.advance(Duration::from_secs(1));
        assert_eq!(
            sim.clients[slow].closed,
            Some(Reason::SlowConsumer),
            "seed {seed}"
        );
        assert!(!sim.publishes(slow).is_empty(), "it got what it read");
    });
}

#[test]
fn a_consumer_that_drains_to_half_its_bound_starts_its_timeout_again() {
    let (mut sim, slow, publisher) = a_subscriber_over_its_bound(1, 0);
    sim.advance(Duration::from_secs(6));
    // Down to half its bound: caught up, though it reads nothing more.
    let queued = sim.shards[0].metrics().output_bytes as usize;
    sim.read(slow, queued - 1_000);
    publish_feed(&mut sim, publisher, 30);
    // Over its bound again since just now: the timeout counts from here.
    sim.advance(Duration::from_secs(9));
    assert_eq!(sim.clients[slow].closed, None);
    sim.advance(Duration::from_secs(2));
    assert_eq!(sim.clients[slow].closed, Some(Reason::SlowConsumer));
}

#[test]
fn a_consumer_that_stays_under_its_bound_after_a_spill_is_not_disconnected() {
    let (mut sim, slow, publisher) = a_subscriber_over_its_bound(1, 0);
    // Under its bound but above half of it, and kept there: the traffic goes on at the
    // rate the client reads, and nothing more is dropped.
    let queued = |sim: &Sim| sim.shards[0].metrics().output_bytes as usize;
    let dropped = sim.total(|c| c.dropped_of(DropReason::SlowConsumer));
    for _ in 0..22 {
        let excess = queued(&sim) - 1_500;
        sim.read(slow, excess);
        sim.advance(Duration::from_millis(500));
        publish_feed(&mut sim, publisher, 2);
        assert!(queued(&sim) < 2_000, "{} bytes queued", queued(&sim));
        assert_eq!(sim.clients[slow].closed, None);
    }
    assert_eq!(
        sim.total(|c| c.dropped_of(DropReason::SlowConsumer)),
        dropped
    );
    // It never drained to half its bound: its spell goes on, checked every quarter of the
    // timeout (the first check at 10 s, the next at 12.5 s). A spill between two checks,
    // even one read at once, ends it at the next.
    publish_feed(&mut sim, publisher, 10);
    let excess = queued(&sim) - 1_500;
    sim.read(slow, excess);
    sim.advance(Duration::from_millis(1_400));
    assert_eq!(sim.clients[slow].closed, None);
    sim.advance(Duration::from_millis(200));
    assert_eq!(sim.clients[slow].closed, Some(Reason::SlowConsumer));
}

#[test]
fn a_consumer_under_its_bound_at_the_timeout_but_at_it_in_the_last_quarter_is_disconnected() {
    let (mut sim, slow, _) = a_subscriber_over_its_bound(1, 0);
    sim.advance(Duration::from_secs(8));
    // Just under its bound, two seconds before the timeout, and nothing more to read.
    let queued = sim.shards[0].metrics().output_bytes as usize;
    sim.read(slow, queued - 1_900);
    sim.advance(Duration::from_millis(1_900));
    assert_eq!(sim.clients[slow].closed, None);
    sim.advance(Duration::from_millis(200));
    assert_eq!(sim.clients[slow].closed, Some(Reason::SlowConsumer));
}

#[test]
fn a_client_that_does_not_read_cannot_grow_its_own_output_past_the_bound() {
    each_seed(4, |seed| {
        let max_output = 2_000;
        let mut sim = Sim::with(2, seed, |c| c.limits.max_output = max_output);
        let c = sim.connect(0, node(1));
        sim.clients[c].reading = false;
        // Each frame asks for an answer: PONG, ERROR, REPLY procedure_not_found.
        for i in 0..3_000u64 {
            match i % 3 {
                0 => sim.ping(c, i),
                1 => sim.subscribe(c, &["bad..pattern", "", "x..y"]),
                _ => sim.call(c, "nobody.home", i, Some(60_000)),
            }
        }
        sim.drive();
        let queued = sim.shards[0].metrics().output_bytes as usize;
        // The bound is checked before each frame: at most one answer goes past it.
        assert!(
            queued < max_output + 200,
            "{queued} bytes queued to a client that reads nothing (bound {max_output})"
        );
        // Nothing was lost: once the client reads, every frame is answered, in order.
        sim.clients[c].reading = true;
        sim.drive();
        let pongs = sim.pong_timestamps(c);
        assert_eq!(pongs.len(), 1 + 1_000);
        assert!(pongs[1..].windows(2).all(|w| w[0] < w[1]));
        assert_eq!(sim.errors(c).len(), 1_000, "one ERROR per SUBSCRIBE frame");
        assert_eq!(sim.replies(c).len(), 1_000);
        assert_eq!(sim.clients[c].closed, None);
    });
}

#[test]
fn a_consumer_that_catches_up_before_the_timeout_stays() {
    let mut sim = Sim::with(1, 0, |c| c.limits.max_output = 2_000);
    let slow = sim.connect(0, node(1));
    let publisher = sim.connect(0, node(2));
    sim.subscribe(slow, &["feed"]);
    sim.sync(slow);
    sim.clients[slow].reading = false;
    for _ in 0..50 {
        sim.publish(publisher, "feed", &[0u8; 100]);
    }
    sim.drive();
    sim.advance(Duration::from_secs(5));
    sim.clients[slow].reading = true;
    sim.ping(slow, 1);
    sim.drive();
    sim.advance(Duration::from_secs(20));
    assert_eq!(sim.clients[slow].closed, None);
    assert!(!sim.publishes(slow).is_empty());
}

// ------------------------------------------------------------------------------ calls

/// A caller and providers on given shards, all synced.
fn rpc(sim: &mut Sim, caller_shard: u16, provider_shards: &[u16]) -> (usize, Vec<usize>) {
    let caller = sim.connect(caller_shard, node(100));
    let providers: Vec<usize> = provider_shards
        .iter()
        .enumerate()
        .map(|(i, &s)| sim.connect(s, node(200 + i as u32)))
        .collect();
    for &p in &providers {
        sim.register(p, "svc.echo", None);
        sim.sync(p);
    }
    (caller, providers)
}

#[test]
fn a_call_is_answered_across_shards_with_the_callers_call_id() {
    each_seed(8, |seed| {
        let mut sim = Sim::new(2, seed);
        let (caller, providers) = rpc(&mut sim, 0, &[1]);
        sim.call(caller, "svc.echo", 4242, Some(3000));
        sim.drive();
        let calls = sim.calls(providers[0]);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "svc.echo");
        assert_eq!(calls[0].2, Some(3000));
        sim.reply(providers[0], calls[0].1, &[0x91, 0x2a]);
        sim.drive();
        assert_eq!(sim.replies(caller), vec![(4242, Ok(vec![0x91, 0x2a]))]);
        assert_eq!(sim.total(|c| c.calls_of(CallOutcome::Ok)), 1);
        assert!(sim.shards.iter().all(|s| s.metrics().pending_calls == 0));
    });
}

#[test]
fn calls_rotate_round_robin_over_live_providers() {
    each_seed(4, |seed| {
        let mut sim = Sim::new(3, seed);
        let (caller, providers) = rpc(&mut sim, 0, &[0, 1, 2]);
        for i in 0..9 {
            sim.call(caller, "svc.echo", i, None);
        }
        sim.drive();
        for &p in &providers {
            assert_eq!(sim.calls(p).len(), 3, "each provider gets a third");
        }
    });
}

#[test]
fn a_call_without_a_provider_fails_with_procedure_not_found() {
    let mut sim = Sim::new(2, 0);
    let caller = sim.connect(0, node(1));
    sim.call(caller, "nobody.home", 1, None);
    sim.drive();
    assert_eq!(
        sim.replies(caller),
        vec![(1, Err("procedure_not_found".into()))]
    );
}

#[test]
fn a_call_past_its_deadline_fails_with_timeout_and_the_provider_gets_cancel() {
    each_seed(4, |seed| {
        let mut sim = Sim::new(2, seed);
        let (caller, providers) = rpc(&mut sim, 0, &[1]);
        sim.call(caller, "svc.echo", 9, Some(100));
        sim.drive();
        sim.advance(Duration::from_millis(99));
        assert!(sim.replies(caller).is_empty());
        sim.advance(Duration::from_millis(2));
        assert_eq!(sim.replies(caller), vec![(9, Err("timeout".into()))]);
        let gateway_id = sim.calls(providers[0])[0].1;
        assert_eq!(
            sim.cancels(providers[0]),
            vec![(gateway_id, "timeout".into())]
        );
        // A REPLY after the deadline is discarded and counted.
        sim.reply(providers[0], gateway_id, &[0xc0]);
        sim.drive();
        assert_eq!(sim.replies(caller).len(), 1);
        assert_eq!(sim.total(|c| c.late_replies), 1);
        assert_eq!(sim.total(|c| c.calls_of(CallOutcome::Timeout)), 1);
    });
}

#[test]
fn the_default_deadline_is_the_call_timeout_and_a_long_one_is_capped() {
    let mut sim = Sim::with(1, 0, |c| {
        c.limits.call_timeout = Duration::from_secs(2);
        c.limits.max_call_timeout = Duration::from_secs(4);
    });
    let (caller, _) = rpc(&mut sim, 0, &[0]);
    sim.call(caller, "svc.echo", 1, None);
    sim.call(caller, "svc.echo", 2, Some(60_000));
    sim.drive();
    sim.advance(Duration::from_millis(2_001));
    assert_eq!(sim.replies(caller), vec![(1, Err("timeout".into()))]);
    sim.advance(Duration::from_millis(2_000));
    assert_eq!(sim.replies(caller).len(), 2);
}

#[test]
fn a_call_fails_with_provider_gone_when_the_provider_disconnects() {
    each_seed(8, |seed| {
        let mut sim = Sim::new(2, seed);
        let (caller, providers) = rpc(&mut sim, 0, &[1]);
        sim.call(caller, "svc.echo", 5, None);
        sim.drive();
        assert_eq!(sim.calls(providers[0]).len(), 1);
        sim.drop_connection(providers[0]);
        sim.drive();
        assert_eq!(sim.replies(caller), vec![(5, Err("provider_gone".into()))]);
        sim.call(caller, "svc.echo", 6, None);
        sim.drive();
        assert_eq!(
            sim.replies(caller)[1],
            (6, Err("procedure_not_found".into()))
        );
    });
}

#[test]
fn calls_over_max_pending_calls_fail_with_overloaded() {
    let mut sim = Sim::with(1, 0, |c| c.limits.max_pending_calls = 2);
    let (caller, _) = rpc(&mut sim, 0, &[0]);
    for i in 0..3 {
        sim.call(caller, "svc.echo", i, None);
    }
    sim.drive();
    assert_eq!(sim.replies(caller), vec![(2, Err("overloaded".into()))]);
    assert_eq!(sim.total(|c| c.calls_of(CallOutcome::Overloaded)), 1);
}

#[test]
fn a_call_to_a_provider_that_does_not_read_fails_fast_with_overloaded() {
    each_seed(4, |seed| {
        let mut sim = Sim::with(2, seed, |c| c.limits.max_output = 500);
        let (caller, providers) = rpc(&mut sim, 0, &[1]);
        sim.clients[providers[0]].reading = false;
        for i in 0..40 {
            sim.call(caller, "svc.echo", i, None);
            sim.drive();
        }
        let overloaded = sim
            .replies(caller)
            .iter()
            .filter(|(_, r)| *r == Err("overloaded".to_string()))
            .count();
        assert!(overloaded > 20, "{overloaded} overloaded");
    });
}

#[test]
fn a_call_id_in_flight_fails_with_duplicate_call_id() {
    let mut sim = Sim::new(2, 0);
    let (caller, providers) = rpc(&mut sim, 0, &[1]);
    sim.call(caller, "svc.echo", 7, None);
    sim.call(caller, "svc.echo", 7, None);
    sim.drive();
    assert_eq!(
        sim.replies(caller),
        vec![(7, Err("duplicate_call_id".into()))]
    );
    let id = sim.calls(providers[0])[0].1;
    sim.reply(providers[0], id, &[0x01]);
    sim.drive();
    sim.call(caller, "svc.echo", 7, None);
    sim.drive();
    assert_eq!(
        sim.calls(providers[0]).len(),
        2,
        "the id is free again once answered"
    );
}

#[test]
fn a_call_with_an_invalid_procedure_or_call_id_fails_with_invalid_call() {
    use meshgate_shard::wire::{Call, CallIdRef, Raw};
    let mut sim = Sim::new(1, 0);
    let caller = sim.connect(0, node(1));
    sim.call(caller, "bad..name", 1, None);
    let long = [7u8; 65];
    let too_long = Call {
        procedure: b"svc.x",
        args: Raw(&[0xc0]),
        call_id: Some(CallIdRef::Bytes(&long)),
        timeout_ms: None,
    };
    sim.send(caller, &Message::Call(too_long));
    let missing = Call {
        procedure: b"svc.x",
        args: Raw(&[0xc0]),
        call_id: None,
        timeout_ms: None,
    };
    sim.send(caller, &Message::Call(missing));
    sim.drive();
    let codes: Vec<String> = sim
        .messages(caller)
        .iter()
        .filter_map(|m| match m {
            Message::Reply(r) => match r.outcome {
                meshgate_shard::wire::Outcome::Error { code, .. } => {
                    Some(String::from_utf8_lossy(code).into_owned())
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(codes, vec!["invalid_call"; 3]);
    assert_eq!(sim.clients[caller].closed, None);
}

#[test]
fn a_callers_exit_drops_its_calls_and_cancels_them_at_the_provider() {
    each_seed(8, |seed| {
        let mut sim = Sim::new(2, seed);
        let (caller, providers) = rpc(&mut sim, 0, &[1]);
        for i in 0..3 {
            sim.call(caller, "svc.echo", i, None);
        }
        sim.drive();
        assert_eq!(sim.shards[0].metrics().pending_calls, 3);
        sim.drop_connection(caller);
        assert_eq!(
            sim.shards[0].metrics().pending_calls,
            0,
            "dropped at once, not at the deadline"
        );
        sim.drive();
        let cancels = sim.cancels(providers[0]);
        assert_eq!(cancels.len(), 3);
        assert!(cancels.iter().all(|(_, reason)| reason == "caller_gone"));
        assert_eq!(sim.total(|c| c.calls_of(CallOutcome::CallerGone)), 3);
        let id = sim.calls(providers[0])[0].1;
        sim.reply(providers[0], id, &[0xc0]);
        sim.drive();
        assert_eq!(sim.total(|c| c.late_replies), 1);
    });
}

#[test]
fn a_reply_for_an_unknown_call_id_is_discarded_and_counted() {
    let mut sim = Sim::new(2, 0);
    let p = sim.connect(1, node(1));
    sim.reply(p, 12345, &[0xc0]);
    sim.reply(p, u64::MAX, &[0xc0]);
    sim.drive();
    assert_eq!(sim.total(|c| c.late_replies), 2);
    assert_eq!(sim.clients[p].closed, None);
}

// ------------------------------------------------------------------------------ registrations

#[test]
fn a_registration_expires_after_its_ttl_unless_refreshed() {
    each_seed(4, |seed| {
        let mut sim = Sim::with(2, seed, |c| {
            c.limits.prune_interval = Duration::from_secs(60)
        });
        let caller = sim.connect(0, node(1));
        let p = sim.connect(1, node(2));
        sim.register(p, "svc.ttl", Some(10));
        sim.sync(p);
        sim.advance(Duration::from_secs(5));
        sim.register(p, "svc.ttl", Some(10));
        sim.sync(p);
        sim.advance(Duration::from_secs(9));
        sim.call(caller, "svc.ttl", 1, Some(50));
        sim.drive();
        assert_eq!(
            sim.calls(p).len(),
            1,
            "refreshed: still live 14 s after the first register"
        );
        // Expired at 15 s, removed by the next prune, at most a prune interval later.
        sim.advance(Duration::from_secs(62));
        sim.call(caller, "svc.ttl", 2, None);
        sim.drive();
        assert!(sim
            .replies(caller)
            .contains(&(2, Err("procedure_not_found".into()))));
        assert_eq!(sim.total(|c| c.registrations_expired), 1);
        assert!(sim.shards.iter().all(|s| s.occupancy().registrations == 0));
    });
}

#[test]
fn a_ttl_over_the_service_ttl_is_capped() {
    let mut sim = Sim::with(1, 0, |c| {
        c.limits.service_ttl = Duration::from_secs(30);
        c.limits.prune_interval = Duration::from_secs(5);
    });
    let p = sim.connect(0, node(2));
    sim.register(p, "svc.capped", Some(3600));
    sim.drive();
    sim.advance(Duration::from_secs(36));
    assert_eq!(sim.total(|c| c.registrations_expired), 1);
}

#[test]
fn unregister_removes_the_provider_at_once_on_every_shard() {
    each_seed(8, |seed| {
        let mut sim = Sim::new(3, seed);
        let (caller, providers) = rpc(&mut sim, 0, &[2]);
        sim.unregister(providers[0], "svc.echo");
        sim.sync(providers[0]);
        sim.call(caller, "svc.echo", 1, None);
        sim.drive();
        assert_eq!(
            sim.replies(caller),
            vec![(1, Err("procedure_not_found".into()))]
        );
        assert!(sim.shards.iter().all(|s| s.occupancy().registrations == 0));
    });
}

#[test]
fn registrations_beyond_the_limit_get_too_many_registrations() {
    let mut sim = Sim::with(1, 0, |c| c.limits.max_registrations = 2);
    let p = sim.connect(0, node(1));
    sim.register(p, "a", None);
    sim.register(p, "b", None);
    sim.register(p, "a", None);
    sim.register(p, "c", None);
    sim.register(p, "bad..name", None);
    sim.drive();
    assert_eq!(
        sim.errors(p),
        vec![
            ("too_many_registrations".into(), "c".into()),
            ("invalid_procedure".into(), "bad..name".into())
        ]
    );
    assert_eq!(sim.shards[0].metrics().registrations, 2);
}
