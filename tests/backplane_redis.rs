//! The Redis backplane against a real `redis-server` started by the test (skipped with a
//! message when it is not installed, a failure under `CI`). Scenarios: `support/backplane.rs`.
#![cfg(feature = "redis")]

#[path = "support/backplane.rs"]
mod backplane;
#[path = "support/brokers.rs"]
mod brokers;
#[path = "support/http.rs"]
mod http;

use std::time::Duration;

use brokers::Kind;
use ssehub::backplane::{BrokerConfig, Redis};

/// A Redis backplane in namespace `ns`, keeping `max` events per topic.
fn settings(url: &str, ns: &str, max: usize) -> Redis {
    Redis::new(url)
        .with_prefix(ns)
        .with_max_events(max)
        .with_timeout(Duration::from_secs(2))
        .with_backoff(Duration::from_millis(20), Duration::from_millis(500))
}

/// See [`settings`].
fn config(url: &str, ns: &str, max: usize) -> BrokerConfig {
    settings(url, ns, max).into()
}

/// See [`settings`]; a publish window of two.
fn small_window(url: &str, ns: &str, max: usize) -> BrokerConfig {
    settings(url, ns, max).with_max_in_flight(2).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_in_one_order() {
    backplane::three_nodes_one_order(Kind::Redis, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_client_resumes_exactly() {
    backplane::moved_client_resumes_exactly(Kind::Redis, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_acknowledged() {
    backplane::broker_restart(Kind::Redis, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_with_its_data_ends_no_stream() {
    let recovered =
        backplane::broker_restart_without_a_storm(Kind::Redis, config, Duration::from_millis(300))
            .await;
    assert!(recovered > 0, "the nodes rejoined behind Redis and recovered the range");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_clients_resume_elsewhere() {
    backplane::node_killed(Kind::Redis, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_without_its_data_resets_old_ids() {
    backplane::broker_loses_data(Kind::Redis, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_while_the_broker_is_down_is_503() {
    backplane::resume_needs_the_broker(Kind::Redis, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_without_a_broker() {
    backplane::refusals(Kind::Redis, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_away_then_back_reconnects_with_backoff() {
    backplane::reconnects_with_backoff(Kind::Redis, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backplane_per_hub() {
    backplane::one_backplane_per_hub(Kind::Redis, config).await;
}

/// Kills both nodes' Redis subscriptions (as Redis drops a subscriber over its output buffer
/// limit): events published before they rejoin are missed.
async fn lose_subscriptions(url: &str) {
    let client = ::redis::Client::open(url).expect("a client");
    let mut admin = client.get_multiplexed_async_connection().await.expect("connect");
    let killed: i64 = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .expect("client kill");
    assert_eq!(killed, 2, "both nodes' subscriptions");
}

/// An SSE client of `topic=t` on `node` that reconnects (resuming) by itself, quickly.
fn reconnecting(node: &backplane::Node) -> ssehub::client::Events {
    ssehub::client::EventSource::new(&format!("http://{}/events?topic=t", node.addr))
        .expect("a url")
        .with_backoff(ssehub::client::Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
            0.2,
        ))
        .connect()
        .expect("connect")
}

/// The ids of the next `n` messages of `events` (failing the test on a stall), and how many
/// times the stream was (re)opened meanwhile.
async fn messages(events: &mut ssehub::client::Events, n: usize) -> (Vec<String>, usize) {
    use futures_util::StreamExt;
    use ssehub::client::ClientEvent;
    let (mut got, mut opened) = (Vec::new(), 0);
    while got.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(20), events.next()).await;
        match next {
            Ok(Some(Ok(ClientEvent::Message(event)))) => got.push(event.id),
            Ok(Some(Ok(ClientEvent::Open))) => opened += 1,
            Ok(Some(_)) => {}
            _ => panic!("stream stalled after {} of {n} events", got.len()),
        }
    }
    (got, opened)
}

/// A node's subscription lost while others publish: when it rejoins, Redis still has the
/// range it missed, so the node delivers it from Redis's history and ends no stream; its
/// client gets every event exactly once, in order, on the connection it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_subscription_range_is_recovered() {
    let broker = brokers::Broker::start(Kind::Redis);
    let url = broker.url();
    let a = backplane::Node::start(config(&url, "gap", 10_000), 1000).await;
    let b = backplane::Node::start(config(&url, "gap", 10_000), 1000).await;
    let mut events = reconnecting(&b);
    http::eventually("subscribed", || b.hub.topic_subscriber_count("t") == 1).await;
    let mut published = Vec::new();
    for i in 0..10 {
        published.push(a.publish("t", &format!("g{i}")).await);
    }
    lose_subscriptions(&url).await;
    // Publish through the reconnect pause until B has recovered a range (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut i = 10;
    while b.backplane.state().ranges_recovered == 0 {
        assert!(tokio::time::Instant::now() < deadline, "B never recovered a range");
        published.push(a.publish("t", &format!("g{i}")).await);
        i += 1;
    }
    for _ in 0..5 {
        published.push(a.publish("t", &format!("g{i}")).await);
        i += 1;
    }
    let (got, opened) = messages(&mut events, published.len()).await;
    assert_eq!(got, published, "every event exactly once, in order");
    let state = b.backplane.state();
    assert!(state.reconnects >= 1);
    assert!(state.events_recovered >= 1, "{state:?}");
    assert_eq!(state.gaps, 0, "no stream ended: {state:?}");
    assert_eq!(opened, 1, "the client never reconnected");
}

/// A node's subscription lost while others publish more than Redis keeps: the range cannot
/// be recovered, so the node ends its streams, and its client resumes from Redis's history of
/// its topic with every event exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_subscription_trimmed_range_ends_streams() {
    let broker = brokers::Broker::start(Kind::Redis);
    let url = broker.url();
    let a = backplane::Node::start(config(&url, "trim", 30), 1000).await;
    let b = backplane::Node::start(config(&url, "trim", 30), 1000).await;
    let mut events = reconnecting(&b);
    http::eventually("subscribed", || b.hub.topic_subscriber_count("t") == 1).await;
    let mut published = Vec::new();
    for i in 0..5 {
        published.push(a.publish("t", &format!("g{i}")).await);
    }
    lose_subscriptions(&url).await;
    // While B is away, another topic outgrows what Redis keeps of it.
    let flood = (0..100).map(|i| a.backplane.publish("flood", ssehub::Event::new(format!("{i}"))));
    for published in futures_util::future::join_all(flood).await {
        published.expect("publish");
    }
    for i in 5..8 {
        published.push(a.publish("t", &format!("g{i}")).await);
    }
    http::eventually("B ended its streams", || b.backplane.state().gaps >= 1).await;
    for i in 8..11 {
        published.push(a.publish("t", &format!("g{i}")).await);
    }
    let (got, opened) = messages(&mut events, published.len()).await;
    assert_eq!(got, published, "every event exactly once, in order");
    assert_eq!(b.backplane.state().ranges_recovered, 0);
    assert!(opened >= 2, "the client reconnected: opened {opened} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_go_in_batches() {
    backplane::concurrent_publishes_go_in_batches(Kind::Redis, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_publish_window_refuses_at_once() {
    backplane::a_full_window_refuses_at_once(Kind::Redis, small_window).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_all_goes_in_round_trips_and_stops_at_a_failure() {
    backplane::publish_all_in_round_trips(Kind::Redis, config).await;
}
