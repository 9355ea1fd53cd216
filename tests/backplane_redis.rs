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

/// A node's subscription lost while others publish (Redis drops it, as it drops a subscriber
/// over its output buffer limit): the node notices the gap when it rejoins, ends its streams,
/// and its clients resume from Redis's history with every event exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_subscription_gap_is_replayed() {
    use futures_util::StreamExt;
    use ssehub::client::{ClientEvent, EventSource};

    let broker = brokers::Broker::start(Kind::Redis);
    let url = broker.url();
    let a = backplane::Node::start(config(&url, "gap", 10_000), 1000).await;
    let b = backplane::Node::start(config(&url, "gap", 10_000), 1000).await;
    let source = EventSource::new(&format!("http://{}/events?topic=t", b.addr))
        .expect("a url")
        .with_backoff(ssehub::client::Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
            0.2,
        ));
    let mut events = source.connect().expect("connect");
    http::eventually("subscribed", || b.hub.topic_subscriber_count("t") == 1).await;
    let mut published = Vec::new();
    for i in 0..10 {
        published.push(a.publish("t", &format!("g{i}")).await);
    }
    let client = ::redis::Client::open(url.as_str()).expect("a client");
    let mut admin = client.get_multiplexed_async_connection().await.expect("connect");
    let killed: i64 = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .expect("client kill");
    assert_eq!(killed, 2, "both nodes' subscriptions");
    // Publish through the reconnect pause until B has noticed a gap (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut i = 10;
    while b.backplane.state().gaps == 0 {
        assert!(tokio::time::Instant::now() < deadline, "B never noticed the gap");
        published.push(a.publish("t", &format!("g{i}")).await);
        i += 1;
    }
    for _ in 0..5 {
        published.push(a.publish("t", &format!("g{i}")).await);
        i += 1;
    }
    let mut got = Vec::new();
    while got.len() < published.len() {
        let next = tokio::time::timeout(Duration::from_secs(20), events.next()).await;
        match next {
            Ok(Some(Ok(ClientEvent::Message(event)))) => got.push(event.id),
            Ok(Some(_)) => {}
            _ => panic!("stream stalled after {} of {} events", got.len(), published.len()),
        }
    }
    assert_eq!(got, published, "every event exactly once, in order");
    assert!(b.backplane.state().reconnects >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_go_in_batches() {
    backplane::concurrent_publishes_go_in_batches(Kind::Redis, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_publish_window_refuses_at_once() {
    backplane::a_full_window_refuses_at_once(Kind::Redis, small_window).await;
}
