//! The routes beside `/events`: publishing, disconnecting, stats, metrics and the demo page.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use ssehub::{Endpoint, Event, Hub};

use crate::config::Config;
use crate::market::Market;
use crate::publisher::{Publisher, Refused};
use crate::stats::{self, Rates};

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct App {
    /// The engine.
    pub(crate) hub: Hub,
    /// Where publishes go.
    pub(crate) publisher: Publisher,
    /// Settings.
    pub(crate) config: Arc<Config>,
    /// Counter samples for the rates in the stats.
    pub(crate) rates: Arc<Rates>,
    /// The demo market, with `--demo`.
    pub(crate) market: Option<Arc<Mutex<Market>>>,
}

/// The body of `POST /publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    /// The event's data; line breaks become one `data:` line each.
    data: String,
    /// The event's id; without it the hub assigns one.
    id: Option<String>,
    /// The event's name (`event:` field).
    event: Option<String>,
    /// The reconnect delay to hint, in milliseconds.
    retry: Option<u64>,
}

/// The SSE endpoint, and every other route.
pub(crate) fn router(app: App) -> (Endpoint, Router) {
    // The crate's adapter: topics and patterns from the query, resume from `Last-Event-ID` (or
    // `lastEventId`), limits, and the stream itself.
    let mut endpoint = Endpoint::new(app.hub.clone());
    if let Some(max) = app.config.max_connections {
        endpoint = endpoint.with_max_connections(max);
    }
    let routes = Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", include_str!("assets/index.html")) }),
        )
        .route(
            "/app.js",
            get(|| async {
                asset("text/javascript; charset=utf-8", include_str!("assets/app.js"))
            }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("assets/style.css")) }),
        )
        .route("/publish", post(publish))
        .route("/disconnect", post(disconnect))
        .route("/stats", get(stats_json))
        .route("/metrics", get(metrics))
        .route("/demo/market", get(market_snapshot));
    (endpoint, routes.with_state(app))
}

/// A static asset. `no-cache` so a rebuilt server serves its new page at once.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body)
        .into_response()
}

/// `POST /publish?topic=NAME`.
async fn publish(
    State(app): State<App>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    app.authorize(&headers)?;
    let topic = topic_param(query.as_deref())?;
    let body: PublishBody = serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))?;
    let mut event = Event::new(body.data);
    if let Some(id) = body.id {
        event = event.with_id(id);
    }
    if let Some(name) = body.event {
        event = event.with_event(name);
    }
    if let Some(ms) = body.retry {
        event = event.with_retry(Duration::from_millis(ms));
    }
    match app.publisher.publish(&topic, event).await {
        Ok((id, receivers)) => {
            Ok(json(StatusCode::OK, &serde_json::json!({ "id": id, "receivers": receivers })))
        }
        Err(Refused::Unavailable(reason)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, reason)),
        Err(Refused::Invalid(reason)) => Err(error(StatusCode::BAD_REQUEST, reason)),
    }
}

/// `POST /disconnect?topic=NAME`.
async fn disconnect(
    State(app): State<App>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    if !app.config.allow_disconnect {
        return Err(error(
            StatusCode::FORBIDDEN,
            "disconnect is disabled; start the server with --allow-disconnect",
        ));
    }
    app.authorize(&headers)?;
    let topic = topic_param(query.as_deref())?;
    let ended = app.hub.disconnect_topic(&topic);
    Ok(json(StatusCode::OK, &serde_json::json!({ "disconnected": ended })))
}

/// `GET /stats`.
async fn stats_json(State(app): State<App>) -> Response {
    #[allow(unused_mut)]
    let mut stats = stats::json(&app.hub, &app.rates, app.config.stats_top, app.market.is_some());
    #[cfg(any(feature = "redis", feature = "nats"))]
    if let (Publisher::Shared(node), Some(object)) = (&app.publisher, stats.as_object_mut()) {
        let state = node.state();
        let backplane = serde_json::json!({
            "connected": state.connected,
            "reconnects": state.reconnects,
            "position": state.position,
            "broker_position": state.broker_position,
            "lag": state.lag,
            "published": state.published,
            "publish_errors": state.publish_errors,
            "received": state.received,
            "skipped": state.skipped,
            "gaps": state.gaps,
            "fetches": state.fetches,
        });
        object.insert("backplane".to_string(), backplane);
    }
    json(StatusCode::OK, &stats)
}

/// `GET /metrics`: the Prometheus exporter's rendering (see `stats::prometheus`).
async fn metrics(State(app): State<App>) -> Response {
    #[allow(unused_mut)]
    let mut backplane = None;
    #[cfg(any(feature = "redis", feature = "nats"))]
    if let Publisher::Shared(node) = &app.publisher {
        let state = node.state();
        backplane = Some(stats::Backplane {
            connected: state.connected,
            lag: state.lag,
            reconnects: state.reconnects,
            gaps: state.gaps,
            publish_errors: state.publish_errors,
        });
    }
    match stats::prometheus(&app.hub, &app.rates, app.config.stats_top, backplane) {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
            .into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the metrics recorder is not this server's")
            .into_response(),
    }
}

/// `GET /demo/market`: every symbol with its recent prices, so the page starts full.
async fn market_snapshot(State(app): State<App>) -> Response {
    match &app.market {
        Some(market) => {
            let snapshot = market.lock().unwrap_or_else(|e| e.into_inner()).snapshot();
            json(StatusCode::OK, &snapshot)
        }
        None => error(StatusCode::NOT_FOUND, "no demo feed; start the server with --demo")
            .into_response(),
    }
}

impl App {
    /// Checks the bearer token, when one is configured.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(token) = &self.config.publish_token else { return Ok(()) };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            // The scheme is case-insensitive (RFC 9110, section 11.1).
            .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token));
        if given.is_some_and(|given| same(given.as_bytes(), token.as_bytes())) {
            return Ok(());
        }
        Err(error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"))
    }
}

/// Compares in time independent of where the first difference is, so the token cannot be
/// guessed byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The one `topic` query parameter.
fn topic_param(query: Option<&str>) -> Result<String, Refusal> {
    let mut topics = query_pairs(query.unwrap_or("")).filter(|(k, _)| k == "topic").map(|(_, v)| v);
    match (topics.next(), topics.next()) {
        (Some(topic), None) => Ok(topic),
        (None, _) => Err(error(StatusCode::BAD_REQUEST, "missing query parameter: topic")),
        (Some(_), Some(_)) => Err(error(StatusCode::BAD_REQUEST, "give exactly one topic")),
    }
}

/// A JSON response.
fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

/// A refused request: answered with its status and `{"error": reason}`.
#[derive(Debug)]
struct Refusal {
    /// The status.
    status: StatusCode,
    /// Why, for the client.
    reason: String,
}

/// A refusal with this status and reason.
fn error(status: StatusCode, reason: impl Into<String>) -> Refusal {
    Refusal { status, reason: reason.into() }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = json(self.status, &serde_json::json!({ "error": self.reason }));
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Decodes `application/x-www-form-urlencoded` pairs (`+` is a space, `%XX` a byte; invalid
/// escapes are kept as they are, invalid UTF-8 is replaced).
fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key), decode(value))
    })
}

/// Percent-decodes one query component.
fn decode(component: &str) -> String {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
