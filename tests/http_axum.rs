//! The axum adapter over real TCP: raw HTTP/1.1 and h2c clients, responses parsed with
//! `ssehub::parse`. The scenarios live in `support/http.rs`, shared with the other adapter.

#[path = "support/http.rs"]
mod support;

use support::Server;

const SERVER: Server = Server::Axum;

#[tokio::test]
async fn headers_and_events() {
    support::headers_and_events(SERVER).await;
}

#[tokio::test]
async fn burst_in_few_reads() {
    support::burst_in_few_reads(SERVER).await;
}

#[tokio::test]
async fn resolver_rejects_with_401_and_403() {
    support::resolver_rejects(SERVER).await;
}

#[tokio::test]
async fn bad_topics_are_400() {
    support::bad_topics_are_400(SERVER).await;
}

#[tokio::test]
async fn connection_limit_is_503_and_frees_on_close() {
    support::connection_limit(SERVER).await;
}

#[tokio::test]
async fn hub_full_and_closed_are_503() {
    support::hub_full_and_closed(SERVER).await;
}

#[tokio::test]
async fn other_methods_are_405() {
    support::other_methods_are_405(SERVER).await;
}

#[tokio::test]
async fn cors_preflight_and_origins() {
    support::cors(SERVER).await;
}

#[tokio::test]
async fn last_event_id_header_wins_over_query() {
    support::last_event_id(SERVER).await;
}

#[tokio::test]
async fn oversized_last_event_id_resets() {
    support::oversized_last_event_id_resets(SERVER).await;
}

#[tokio::test]
async fn stalled_client_is_dropped_others_get_everything() {
    support::stalled_client_is_dropped(SERVER).await;
}

#[tokio::test]
async fn http2_prior_knowledge() {
    support::http2(SERVER).await;
}

#[tokio::test]
async fn path_topic_maps_path_and_query() {
    support::path_topic(SERVER).await;
}

#[tokio::test]
async fn session_refused_is_403() {
    support::session_refused_is_403(SERVER).await;
}

#[tokio::test]
async fn shutdown_ends_streams() {
    support::shutdown_ends_streams(SERVER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_under_concurrent_publishing_has_no_gap_or_duplicate() {
    support::replay_under_concurrent_publishing(SERVER).await;
}

#[tokio::test]
async fn heartbeats_on_idle_stream() {
    support::heartbeats_on_idle_stream(SERVER).await;
}
