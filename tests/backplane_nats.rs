//! The NATS backplane against a real `nats-server -js` started by the test (skipped with a
//! message when it is not installed, a failure under `CI`). Scenarios: `support/backplane.rs`.
#![cfg(feature = "nats")]

#[path = "support/backplane.rs"]
mod backplane;
#[path = "support/brokers.rs"]
mod brokers;
#[path = "support/http.rs"]
mod http;

use std::time::Duration;

use brokers::Kind;
use ssehub::backplane::{BrokerConfig, Nats};

/// A NATS backplane on stream `NS` (subjects `ns.>`), keeping `max` events.
fn settings(url: &str, ns: &str, max: usize) -> Nats {
    Nats::new(url)
        .with_stream(&ns.to_uppercase(), ns)
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
    backplane::three_nodes_one_order(Kind::Nats, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_client_resumes_exactly() {
    backplane::moved_client_resumes_exactly(Kind::Nats, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_acknowledged() {
    backplane::broker_restart(Kind::Nats, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_with_its_data_ends_no_stream() {
    // JetStream keeps the stream on disk, and the client's ordered consumer resumes where it
    // left off by itself, so here the node rarely has a range to recover: no stream ends
    // either way.
    let down = Duration::from_millis(300);
    backplane::broker_restart_without_a_storm(Kind::Nats, config, down).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_clients_resume_elsewhere() {
    backplane::node_killed(Kind::Nats, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_without_its_data_resets_old_ids() {
    backplane::broker_loses_data(Kind::Nats, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_while_the_broker_is_down_is_503() {
    backplane::resume_needs_the_broker(Kind::Nats, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_without_a_broker() {
    backplane::refusals(Kind::Nats, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_away_then_back_reconnects_with_backoff() {
    backplane::reconnects_with_backoff(Kind::Nats, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backplane_per_hub() {
    backplane::one_backplane_per_hub(Kind::Nats, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_go_in_batches() {
    backplane::concurrent_publishes_go_in_batches(Kind::Nats, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_publish_window_refuses_at_once() {
    backplane::a_full_window_refuses_at_once(Kind::Nats, small_window).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_all_goes_in_round_trips_and_stops_at_a_failure() {
    backplane::publish_all_in_round_trips(Kind::Nats, config).await;
}
