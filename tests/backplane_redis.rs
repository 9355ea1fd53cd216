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
fn config(url: &str, ns: &str, max: usize) -> BrokerConfig {
    Redis::new(url)
        .with_prefix(ns)
        .with_max_len(max)
        .with_timeout(Duration::from_secs(2))
        .with_backoff(Duration::from_millis(20), Duration::from_millis(500))
        .into()
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
async fn refusals_without_a_broker() {
    backplane::refusals(Kind::Redis, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backplane_per_hub() {
    backplane::one_backplane_per_hub(Kind::Redis, config).await;
}
