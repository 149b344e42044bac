//! The client against a test gateway (quinn on the server side, one `Shard` behind it).

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshgate_client::{
    CallError, Client, ClientConfig, ClientError, ConnectionState, Delivery, Overflow,
    ProcedureError, Reason, Tls,
};
use support::{TestGateway, GATEWAY_ID};

/// Runs a test body, failing it if it takes longer than a few seconds.
async fn within<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), body)
        .await
        .expect("the test took too long")
}

/// The next delivery, waiting at most a second.
async fn next(sub: &mut meshgate_client::Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(1), sub.next())
        .await
        .expect("a delivery in time")
        .expect("the subscription is open")
}

fn msgpack_str(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_str(&mut out, s).expect("writing to a Vec");
    out
}

fn msgpack_uint(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_uint(&mut out, n).expect("writing to a Vec");
    out
}

async fn connect(gateway: &TestGateway) -> Client {
    Client::connect(gateway.client_config())
        .await
        .expect("connected")
}

fn reconnecting(gateway: &TestGateway) -> ClientConfig {
    let mut config = gateway.client_config();
    config.reconnect = true;
    config.backoff.initial = Duration::from_millis(20);
    config.backoff.max = Duration::from_millis(200);
    config
}

/// Waits until the client is connected in its `session`-th session.
async fn wait_for_session(client: &Client, session: u64) {
    let mut state = client.watch_state();
    state
        .wait_for(|s| matches!(s, ConnectionState::Connected { session: n, .. } if *n == session))
        .await
        .expect("the client is alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_learns_the_gateways_node_id_and_ping_round_trips() {
    within(async {
        let gateway = TestGateway::start().await;
        let client = connect(&gateway).await;
        assert_eq!(client.server_id(), Some(GATEWAY_ID));
        assert!(matches!(
            client.state(),
            ConnectionState::Connected { session: 1, .. }
        ));
        let rtt = client.ping().await.expect("a PONG");
        assert!(rtt < Duration::from_secs(5));
        client.flush().await.expect("a PONG");
        client.close().await.expect("closed");
        assert_eq!(
            client.state(),
            ConnectionState::Closed {
                reason: Some(Reason::Normal)
            }
        );
    })
    .await;
}

/// PING with `mesh` true: a gateway without a mesh answers it as a plain PING (its mesh is
/// itself), after the client's subscription is in effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_mesh_returns_once_the_gateway_answered_and_subscriptions_are_in_effect() {
    within(async {
        let gateway = TestGateway::start().await;
        let subscriber = connect(&gateway).await;
        let publisher = connect(&gateway).await;
        let mut sub = subscriber
            .subscribe(["mesh.flush"])
            .await
            .expect("subscribed");
        subscriber.flush_mesh().await.expect("a PONG");
        publisher
            .publish("mesh.flush", b"1")
            .await
            .expect("published");
        assert_eq!(next(&mut sub).await.payload, b"1");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_holding_the_gateways_certificate_is_trusted() {
    within(async {
        let gateway = TestGateway::start().await;
        let path =
            std::env::temp_dir().join(format!("meshgate-client-test-{}.pem", std::process::id()));
        std::fs::write(&path, &gateway.cert_pem).expect("a temporary file");
        let config = ClientConfig {
            tls: Tls::CaFile(path.clone()),
            ..gateway.client_config()
        };
        let client = Client::connect(config).await;
        let _ = std::fs::remove_file(&path);
        let client = client.expect("the certificate is trusted");
        client.ping().await.expect("a PONG");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_trusts_no_certificate_fails_with_a_tls_error() {
    within(async {
        let gateway = TestGateway::start().await;
        let config = ClientConfig {
            tls: Tls::default(),
            ..gateway.client_config()
        };
        let err = Client::connect(config)
            .await
            .expect_err("nothing is trusted");
        assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realm_the_gateway_does_not_serve_is_refused_with_realm_mismatch() {
    within(async {
        let gateway = TestGateway::start().await;
        let config = ClientConfig {
            realm: "not.served".to_owned(),
            ..gateway.client_config()
        };
        match Client::connect(config).await {
            Err(ClientError::Refused { reason, .. }) => assert_eq!(reason, Reason::RealmMismatch),
            other => panic!("expected a refusal, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realm_with_tokens_admits_the_right_token_and_refuses_a_wrong_one() {
    within(async {
        let gateway = TestGateway::start().await;
        let config = |token: &str| ClientConfig {
            realm: "secure".to_owned(),
            token: Some(token.to_owned()),
            ..gateway.client_config()
        };
        let client = Client::connect(config("s3cret")).await.expect("admitted");
        client.ping().await.expect("a PONG");
        match Client::connect(config("wrong")).await {
            Err(ClientError::Refused { reason, .. }) => assert_eq!(reason, Reason::Unauthorized),
            other => panic!("expected a refusal, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_reaches_wildcard_subscribers_but_not_its_publisher() {
    within(async {
        let gateway = TestGateway::start().await;
        let publisher = connect(&gateway).await;
        let subscriber = connect(&gateway).await;
        let mut one = subscriber
            .subscribe(["sensor.*.room1"])
            .await
            .expect("subscribed");
        let mut any = subscriber
            .subscribe(["sensor.**"])
            .await
            .expect("subscribed");
        let mut own = publisher
            .subscribe(["sensor.**"])
            .await
            .expect("subscribed");

        publisher
            .publish("sensor.temp.room1", b"21.5")
            .await
            .expect("queued");
        publisher
            .publish("sensor.temp.room2", b"19.0")
            .await
            .expect("queued");

        let d = next(&mut one).await;
        assert_eq!(
            (d.topic.as_str(), &d.payload[..]),
            ("sensor.temp.room1", &b"21.5"[..])
        );
        assert_eq!(d.publisher, publisher.node_id());
        assert_eq!(next(&mut any).await.topic, "sensor.temp.room1");
        assert_eq!(next(&mut any).await.topic, "sensor.temp.room2");

        // Anything the gateway had sent before the PONG has been read by then.
        subscriber.flush().await.expect("a PONG");
        publisher.flush().await.expect("a PONG");
        assert_eq!(one.try_next(), None, "room2 does not match sensor.*.room1");
        assert_eq!(
            own.try_next(),
            None,
            "the publisher is not served its own message"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_is_unsubscribed_once_no_subscription_of_the_client_holds_it() {
    within(async {
        let gateway = TestGateway::start().await;
        let publisher = connect(&gateway).await;
        let subscriber = connect(&gateway).await;
        let first = subscriber
            .subscribe(["news.**", "weather"])
            .await
            .expect("subscribed");
        let mut second = subscriber.subscribe(["news.**"]).await.expect("subscribed");
        assert_eq!(gateway.occupancy().await.local_subscriptions, 2);

        drop(first);
        subscriber.flush().await.expect("a PONG");
        assert_eq!(
            gateway.occupancy().await.local_subscriptions,
            1,
            "weather is released, news.** is still held"
        );
        publisher.publish("news.today", b"1").await.expect("queued");
        assert_eq!(next(&mut second).await.payload, b"1");

        second.unsubscribe().await.expect("unsubscribed");
        assert_eq!(gateway.occupancy().await.local_subscriptions, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_fails_for_an_invalid_pattern_and_beyond_the_subscription_limit() {
    within(async {
        let gateway = TestGateway::start_with(|c| c.limits.max_subscriptions = 2).await;
        let client = connect(&gateway).await;
        match client.subscribe(["a..b"]).await {
            Err(ClientError::Server(e)) => assert_eq!(e.code, "invalid_pattern"),
            other => panic!("expected invalid_pattern, got {other:?}"),
        }
        let _held = client
            .subscribe(["a", "b"])
            .await
            .expect("within the limit");
        match client.subscribe(["c"]).await {
            Err(ClientError::Server(e)) => {
                assert_eq!(e.code, "too_many_subscriptions");
                assert_eq!(e.subject.as_deref(), Some("c"));
            }
            other => panic!("expected too_many_subscriptions, got {other:?}"),
        }
        client.ping().await.expect("the session goes on");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_topic_is_reported_on_the_errors_stream() {
    within(async {
        let gateway = TestGateway::start().await;
        let client = connect(&gateway).await;
        let mut errors = client.errors();
        client.publish("bad..topic", b"x").await.expect("queued");
        let e = errors.next().await.expect("an ERROR frame");
        assert_eq!(e.code, "invalid_topic");
        assert_eq!(e.frame_type, 0x10);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_reaches_the_registered_handler_and_returns_its_reply() {
    within(async {
        let gateway = TestGateway::start().await;
        let provider = connect(&gateway).await;
        let caller = connect(&gateway).await;
        provider
            .register("math.double", |args| async move {
                let mut r = &args[..];
                let n: u64 = rmp::decode::read_int(&mut r)
                    .map_err(|_| ProcedureError::new("bad_args", "not an integer"))?;
                Ok(msgpack_uint(n * 2))
            })
            .await
            .expect("registered");
        let result = caller
            .call("math.double", &msgpack_uint(21))
            .await
            .expect("a result");
        assert_eq!(result, msgpack_uint(42));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_errors_carry_the_gateways_and_the_providers_codes() {
    within(async {
        let gateway = TestGateway::start().await;
        let provider = connect(&gateway).await;
        let caller = connect(&gateway).await;

        let err = caller
            .call("nobody.home", &[0xc0])
            .await
            .expect_err("no provider");
        assert_eq!(err.code(), Some("procedure_not_found"), "{err:?}");

        provider
            .register("picky", |_| async {
                Err(ProcedureError::new("app.rejected", "not today"))
            })
            .await
            .expect("registered");
        match caller.call("picky", &msgpack_str("please")).await {
            Err(CallError::Remote { code, message }) => {
                assert_eq!(code, "app.rejected");
                assert_eq!(message, "not today");
            }
            other => panic!("expected the provider's error, got {other:?}"),
        }

        provider.unregister("picky").await.expect("unregistered");
        let err = caller
            .call("picky", &[0xc0])
            .await
            .expect_err("unregistered");
        assert_eq!(err.code(), Some("procedure_not_found"));

        let err = caller
            .call("picky", &[0x92, 0x01])
            .await
            .expect_err("a truncated array");
        assert!(matches!(err, CallError::InvalidArgs), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_times_out_locally_and_the_providers_handler_is_cancelled() {
    within(async {
        let gateway = TestGateway::start().await;
        let provider = connect(&gateway).await;
        let caller = connect(&gateway).await;
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let dropped_tx = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
        provider
            .register("slow", move |_| {
                let guard = DropSignal(dropped_tx.lock().expect("unpoisoned").take());
                async move {
                    let _guard = guard;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(vec![0xc0])
                }
            })
            .await
            .expect("registered");
        let err = caller
            .call_with_timeout("slow", &[0xc0], Duration::from_millis(200))
            .await
            .expect_err("no reply in time");
        assert!(matches!(err, CallError::Timeout), "{err:?}");
        tokio::time::timeout(Duration::from_secs(2), dropped_rx)
            .await
            .expect("the gateway's CANCEL aborts the handler")
            .expect("signalled");
    })
    .await;
}

/// Signals when dropped, as a handler's future is when its task is aborted.
struct DropSignal(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pipelined_calls_all_complete() {
    within(async {
        let gateway = TestGateway::start().await;
        let provider = connect(&gateway).await;
        let caller = connect(&gateway).await;
        provider
            .register("echo", |args| async move { Ok(args) })
            .await
            .expect("registered");
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..1_000u64 {
            let caller = caller.clone();
            calls.spawn(async move { (i, caller.call("echo", &msgpack_uint(i)).await) });
        }
        let mut done = 0;
        while let Some(joined) = calls.join_next().await {
            let (i, result) = joined.expect("the task ran");
            assert_eq!(result.expect("a reply"), msgpack_uint(i));
            done += 1;
        }
        assert_eq!(done, 1_000);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_publishes_queued_at_once_all_arrive_in_order() {
    within(async {
        let gateway = TestGateway::start().await;
        let publisher = connect(&gateway).await;
        let subscriber = connect(&gateway).await;
        let mut sub = subscriber.subscribe(["load.*"]).await.expect("subscribed");
        for i in 0..20_000u32 {
            publisher
                .publish("load.test", &i.to_be_bytes())
                .await
                .expect("queued");
        }
        for i in 0..20_000u32 {
            assert_eq!(next(&mut sub).await.payload, i.to_be_bytes());
        }
        assert_eq!(sub.dropped(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_gateway_drops_connections_the_client_reconnects_and_restores_its_state() {
    within(async {
        let gateway = TestGateway::start().await;
        let peer = Client::connect(reconnecting(&gateway))
            .await
            .expect("connected");
        let client = Client::connect(reconnecting(&gateway))
            .await
            .expect("connected");
        let mut sub = client.subscribe(["news.**"]).await.expect("subscribed");
        client
            .register("svc.echo", |args| async move { Ok(args) })
            .await
            .expect("registered");
        let stuck = Arc::new(AtomicBool::new(false));
        let entered = stuck.clone();
        client
            .register("svc.stuck", move |_| {
                entered.store(true, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(vec![0xc0])
                }
            })
            .await
            .expect("registered");
        let in_flight = {
            let peer = peer.clone();
            tokio::spawn(async move { peer.call("svc.stuck", &[0xc0]).await })
        };
        while !stuck.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        gateway.kick_all().await;

        let err = in_flight
            .await
            .expect("the task ran")
            .expect_err("the connection was lost");
        assert!(matches!(err, CallError::Disconnected), "{err:?}");
        wait_for_session(&client, 2).await;
        wait_for_session(&peer, 2).await;
        // The replayed SUBSCRIBE and REGISTER were queued before this PING.
        client.flush().await.expect("a PONG");
        peer.publish("news.today", b"back").await.expect("queued");
        assert_eq!(next(&mut sub).await.payload, b"back");
        let echoed = peer
            .call("svc.echo", &msgpack_str("hi"))
            .await
            .expect("a reply");
        assert_eq!(echoed, msgpack_str("hi"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_a_dropped_session_ends_with_the_gateways_reason() {
    within(async {
        let gateway = TestGateway::start().await;
        let client = connect(&gateway).await;
        let mut sub = client.subscribe(["x"]).await.expect("subscribed");
        gateway.kick_all().await;
        let mut state = client.watch_state();
        state
            .wait_for(|s| matches!(s, ConnectionState::Closed { .. }))
            .await
            .expect("alive");
        assert_eq!(
            client.state(),
            ConnectionState::Closed {
                reason: Some(Reason::ShuttingDown)
            }
        );
        assert_eq!(
            sub.next().await,
            None,
            "the subscription ends with the session"
        );
        match client.publish("x", b"late").await {
            Err(ClientError::Closed { reason }) => assert_eq!(reason, Reason::ShuttingDown),
            other => panic!("expected Closed, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_session_with_the_same_node_id_replaces_the_first_for_good() {
    within(async {
        let gateway = TestGateway::start().await;
        let first = Client::connect(reconnecting(&gateway))
            .await
            .expect("connected");
        let second = Client::connect(ClientConfig {
            node_id: first.node_id(),
            ..reconnecting(&gateway)
        })
        .await
        .expect("connected");
        let mut state = first.watch_state();
        state
            .wait_for(|s| matches!(s, ConnectionState::Closed { .. }))
            .await
            .expect("alive");
        assert_eq!(
            first.state(),
            ConnectionState::Closed {
                reason: Some(Reason::Replaced)
            }
        );
        second.ping().await.expect("the new session lives");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_close_operations_fail_with_closed_normal() {
    within(async {
        let gateway = TestGateway::start().await;
        let client = connect(&gateway).await;
        client.close().await.expect("closed");
        client.close().await.expect("closing twice does nothing");
        match client.ping().await {
            Err(ClientError::Closed { reason }) => assert_eq!(reason, Reason::Normal),
            other => panic!("expected Closed, got {other:?}"),
        }
        let err = client.call("any", &[0xc0]).await.expect_err("closed");
        assert!(
            matches!(err, CallError::Client(ClientError::Closed { .. })),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pings_hold_an_idle_connection_open_past_the_idle_timeout() {
    within(async {
        let gateway = TestGateway::start().await;
        let config = ClientConfig {
            idle_timeout: Duration::from_millis(600),
            keep_alive: Duration::from_millis(100),
            ..gateway.client_config()
        };
        let client = Client::connect(config).await.expect("connected");
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert!(matches!(
            client.state(),
            ConnectionState::Connected { session: 1, .. }
        ));
        client.ping().await.expect("still connected");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_refreshed_before_their_ttl_runs_out() {
    within(async {
        let gateway =
            TestGateway::start_with(|c| c.limits.prune_interval = Duration::from_millis(100)).await;
        let config = ClientConfig {
            registration_ttl: Duration::from_secs(1),
            ..gateway.client_config()
        };
        let provider = Client::connect(config).await.expect("connected");
        let caller = connect(&gateway).await;
        provider
            .register("svc.lasting", |args| async move { Ok(args) })
            .await
            .expect("registered");
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(gateway.occupancy().await.registrations, 1);
        caller
            .call("svc.lasting", &[0xc0])
            .await
            .expect("the registration outlived its ttl");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_over_the_frame_limit_is_refused_locally_and_the_session_goes_on() {
    within(async {
        let gateway = TestGateway::start().await;
        let client = connect(&gateway).await;
        let big = vec![0u8; 2 << 20];
        match client.publish("big", &big).await {
            Err(ClientError::FrameTooLarge { max, .. }) => assert_eq!(max, 1 << 20),
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        client.ping().await.expect("the session goes on");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subscription_buffer_drops_and_counts_deliveries_by_default() {
    within(async {
        let gateway = TestGateway::start().await;
        let publisher = connect(&gateway).await;
        let config = ClientConfig {
            subscription_capacity: 4,
            ..gateway.client_config()
        };
        let subscriber = Client::connect(config).await.expect("connected");
        let mut sub = subscriber.subscribe(["burst"]).await.expect("subscribed");
        for i in 0..100u8 {
            publisher.publish("burst", &[i]).await.expect("queued");
        }
        publisher.flush().await.expect("a PONG");
        // The gateway sent every delivery before this PONG.
        subscriber.flush().await.expect("a PONG");
        let mut received = Vec::new();
        while let Some(d) = sub.try_next() {
            received.push(d.payload[0]);
        }
        assert_eq!(received, [0, 1, 2, 3]);
        assert_eq!(sub.dropped(), 96);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_overflow_wait_a_slow_subscription_loses_nothing() {
    within(async {
        let gateway = TestGateway::start().await;
        let publisher = connect(&gateway).await;
        let config = ClientConfig {
            subscription_capacity: 4,
            subscription_overflow: Overflow::Wait,
            ..gateway.client_config()
        };
        let subscriber = Client::connect(config).await.expect("connected");
        let mut sub = subscriber.subscribe(["burst"]).await.expect("subscribed");
        for i in 0..1_000u16 {
            publisher
                .publish("burst", &i.to_be_bytes())
                .await
                .expect("queued");
        }
        for i in 0..1_000u16 {
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(next(&mut sub).await.payload, i.to_be_bytes());
        }
        assert_eq!(sub.dropped(), 0);
    })
    .await;
}
