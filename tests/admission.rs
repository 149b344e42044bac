//! End-to-end tests of PROTOCOL.md 5.5: `--max-clients` bounds the sessions of the whole
//! gateway, whatever the number of shards: a new node is refused only while the gateway holds
//! `--max-clients` sessions, whichever shards its sessions and node ids belong to.
//!
//! The node ids are random, fresh in every round. A gateway that split the table into
//! per-shard shares (`N / S` each, the remainder to the first shards) and counted each session
//! against one shard's share (its node id's owner, or the shard its connection landed on, which
//! the kernel picks by a hash of the client's port) would pass a round only if the N ids fell
//! exactly into the shares, and then only if the id admitted after a leave fell on the
//! leaver's shard (probability 1/S). The chance p that one round catches such a split:
//!
//! | shards | N | shares    | ids fit the shares       | round misses the split      | p     |
//! |--------|---|-----------|--------------------------|-----------------------------|-------|
//! | 2      | 3 | 2, 1      | C(3,2) / 2^3 = 3/8       | 3/8 × 1/2 = 3/16            | 0.81  |
//! | 2      | 5 | 3, 2      | C(5,3) / 2^5 = 10/32     | 10/32 × 1/2 = 5/32          | 0.84  |
//! | 4      | 3 | 1, 1, 1, 0| 3! / 4^3 = 6/64         | 6/64 × 1/4 = 3/128          | 0.98  |
//! | 4      | 5 | 2, 1, 1, 1| 5!/2! / 4^5 = 60/1024   | 60/1024 × 1/4 = 15/1024     | 0.985 |
//!
//! (Counting only the first N admissions, p is 5/8, 11/16, 29/32 and 241/256.) With
//! [`ROUNDS`] = 5 rounds per test, a split survives a test with probability at most
//! (3/16)^5 ≈ 2.3e-4, and survives all four tests with probability below 1e-20.
//!
//! Each test runs with sessions making calls beside it, as a gateway in use would.

mod support;

use meshgate_shard::router::owner_of;
use meshgate_shard::wire::Reason;
use meshgate_shard::NodeId;
use support::*;

/// Rounds of fresh random node ids per gateway.
const ROUNDS: usize = 5;
/// Sessions making calls beside each test (they hold places of the table too).
const LOAD_CALLERS: usize = 8;

const REFUSED: &str = "meshgate_clients_refused_total{reason=\"max_clients_reached\"}";

/// The owner shards of the sessions' node ids, for failure messages.
fn owners(nodes: &[NodeId], shards: u16) -> Vec<u16> {
    nodes.iter().map(|n| owner_of(n, shards).0).collect()
}

/// Connects `node`, which must be admitted; `context` tells the failure message where.
async fn admit(gw: &Gateway, node: NodeId, context: impl FnOnce() -> String) -> Raw {
    match Raw::try_connect(gw.addr, REALM, node).await {
        Answer::Admitted(raw) => raw,
        Answer::Refused(_, reason) => panic!("{}: refused with {reason}", context()),
    }
}

/// Connects `node`, which must be refused with DISCONNECT `max_clients_reached` and its close
/// code.
async fn refuse(gw: &Gateway, node: NodeId, context: &str) {
    match Raw::try_connect(gw.addr, REALM, node).await {
        Answer::Admitted(_) => panic!("{context}: a new node was admitted"),
        Answer::Refused(raw, reason) => {
            assert_eq!(reason, Reason::MaxClientsReached.as_str(), "{context}");
            raw.expect_closed(Reason::MaxClientsReached).await;
        }
    }
}

/// Every admitted session is undisturbed: PING is answered with nothing before it.
async fn all_undisturbed(admitted: &mut [Raw]) {
    for raw in admitted {
        assert!(
            raw.ping().await.is_empty(),
            "an admitted session is disturbed"
        );
    }
}

async fn max_clients_is_exact_for_the_whole_gateway(shards: u16, max: usize) {
    // The load's sessions (its callers and its provider) hold places too: the test's own
    // sessions get `max` more.
    let limit = max + LOAD_CALLERS + 1;
    let gw = Gateway::start_with_shards(shards, &["--max-clients", &limit.to_string()]);
    let load = Load::start(&gw, LOAD_CALLERS).await;
    assert_eq!(load.sessions() as usize, LOAD_CALLERS + 1);
    let busy = load.sessions();
    let full = busy + max as u64;
    let mut refusals = 0u64;
    for round in 0..ROUNDS {
        // Exactly `max` sessions are admitted, whichever shards their ids belong to.
        let mut admitted: Vec<Raw> = Vec::new();
        for i in 0..max {
            let node = random_node();
            let raw = admit(&gw, node, || {
                let mut nodes: Vec<NodeId> = admitted.iter().map(|r| r.node_id).collect();
                nodes.push(node);
                format!(
                    "round {round}: session {} of --max-clients {max} on {shards} shards \
                     (owner shards of the ids so far {:?})",
                    i + 1,
                    owners(&nodes, shards)
                )
            })
            .await;
            admitted.push(raw);
        }
        gw.wait_metric("meshgate_clients", |n| n == full).await;

        // The next are refused, and the admitted go on.
        for _ in 0..2 {
            refuse(&gw, random_node(), &format!("round {round}: full")).await;
            refusals += 1;
        }
        all_undisturbed(&mut admitted).await;
        let m = gw.metrics().await;
        assert_eq!(m.get("meshgate_clients"), full, "round {round}");
        assert_eq!(m.get(REFUSED), refusals, "round {round}: refusals counted");

        // A replacing CONNECT is admitted while full; the old session is replaced.
        let k = round % max;
        let node = admitted[k].node_id;
        let new = admit(&gw, node, || {
            format!("round {round}: a replacing CONNECT while full")
        })
        .await;
        let mut old = std::mem::replace(&mut admitted[k], new);
        old.expect_disconnect(Reason::Replaced).await;
        all_undisturbed(&mut admitted).await;
        gw.wait_metric("meshgate_clients", |n| n == full).await;
        assert_eq!(
            gw.metric(REFUSED).await,
            refusals,
            "round {round}: a replacement is no refusal"
        );

        // One leaves; once the gauge shows its place free, a new node takes it, and the
        // table is full again.
        let mut leaver = admitted.remove((k + 1) % max);
        leaver.leave().await;
        gw.wait_metric("meshgate_clients", |n| n == full - 1).await;
        let node = random_node();
        let raw = admit(&gw, node, || {
            format!(
                "round {round}: a new node (owner shard {}) after the node of owner shard {} \
                 left, with {} sessions of --max-clients {max} on {shards} shards",
                owner_of(&node, shards).0,
                owner_of(&leaver.node_id, shards).0,
                max - 1
            )
        })
        .await;
        admitted.push(raw);
        refuse(&gw, random_node(), &format!("round {round}: full again")).await;
        refusals += 1;
        all_undisturbed(&mut admitted).await;
        let m = gw.metrics().await;
        assert_eq!(m.get("meshgate_clients"), full, "round {round}");
        assert_eq!(m.get(REFUSED), refusals, "round {round}: refusals counted");

        // Everyone leaves before the next round.
        for raw in &mut admitted {
            raw.leave().await;
        }
        gw.wait_metric("meshgate_clients", |n| n == busy).await;
    }
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_3_admits_exactly_3_sessions_of_random_nodes_on_2_shards() {
    max_clients_is_exact_for_the_whole_gateway(2, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_5_admits_exactly_5_sessions_of_random_nodes_on_2_shards() {
    max_clients_is_exact_for_the_whole_gateway(2, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_3_admits_exactly_3_sessions_of_random_nodes_on_4_shards() {
    max_clients_is_exact_for_the_whole_gateway(4, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_5_admits_exactly_5_sessions_of_random_nodes_on_4_shards() {
    max_clients_is_exact_for_the_whole_gateway(4, 5).await;
}
