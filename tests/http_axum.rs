//! The axum adapter over real TCP: raw HTTP/1.1 and h2c clients, responses parsed with
//! `ssehub::parse`. The scenarios live in `support/http.rs`, shared with the other adapter.

#[path = "support/http.rs"]
mod support;

adapter_scenarios!(support::Server::Axum);
