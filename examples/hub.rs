//! The hub server: an SSE hub with a publish API, stats, metrics and a live demo page.
//!
//! ```sh
//! cargo run --release --example hub -- --demo      # then open http://127.0.0.1:8080/
//! cargo run --release --example hub -- --help      # every flag and environment variable
//! ```
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /events?topic=A&topic=B&pattern=P` | the stream; `Last-Event-ID` (header, or `lastEventId` query parameter) resumes |
//! | `POST /publish?topic=NAME` | body `{"data": string, "id"?: string, "event"?: string, "retry"?: integer}` (unknown fields are refused); `200 {"id": ..., "receivers": N}`, `400 {"error": ...}`, `401` without the `--publish-token` |
//! | `POST /disconnect?topic=NAME` | ends the topic's streams: `200 {"disconnected": N}`; `403` unless `--allow-disconnect` |
//! | `GET /stats`, `GET /metrics` | JSON stats, Prometheus text |
//! | `GET /` | the live demo page; `GET /demo/market` is its snapshot (`404` without `--demo`) |
//!
//! Several nodes behind a load balancer share one broker with `--redis redis://HOST:PORT` or
//! `--nats nats://HOST:PORT` (build with `--features redis` or `--features nats`): publishes go
//! through the broker to every node, and a client resumes on any node (see `docs/scaling.md`).
//!
//! One port: `/events` is served by ssehub's native listener (`ssehub::server`), which owns each
//! stream's socket after the request and writes every batch with one vectored write; every other
//! route is an axum router the listener hands the connection to.
//!
//! The wire format (ids exactly as published, `: keep-alive` heartbeats, a `connected` event
//! with no `id:`) is the engine's; this file only wires HTTP to it.

// The crate root is `examples/hub.rs`, so modules are looked up beside it: point at `hub/`.
#[path = "hub/config.rs"]
mod config;
#[path = "hub/market.rs"]
mod market;
#[path = "hub/stats.rs"]
mod stats;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use ssehub::server::Server;
use ssehub::{Endpoint, Event, HistoryLimits, Hub, Pacing, PublishError};

use crate::config::{Command, Config};
use crate::market::Market;
use crate::stats::Rates;

/// How long shutdown may take once signalled before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where publishes go: this hub, or every node through the broker.
#[derive(Debug, Clone)]
pub enum Publisher {
    /// This node only.
    Local(Hub),
    /// Every node, through the backplane.
    #[cfg(any(feature = "redis", feature = "nats"))]
    Shared(ssehub::backplane::Backplane),
}

/// Why a publish was refused: a client's mistake, or the server's state.
#[derive(Debug)]
pub enum Refused {
    /// The request was wrong.
    Invalid(String),
    /// The hub is shutting down or the broker is away.
    Unavailable(String),
}

impl Publisher {
    /// Publishes; returns the id and, on a single node, the receivers.
    pub async fn publish(
        &self,
        topic: &str,
        event: Event,
    ) -> Result<(Option<String>, Option<usize>), Refused> {
        match self {
            Publisher::Local(hub) => match hub.publish(topic, event) {
                Ok(published) => {
                    Ok((published.id().map(str::to_string), Some(published.receivers())))
                }
                Err(PublishError::Closed(_)) => {
                    Err(Refused::Unavailable("the hub is shutting down".into()))
                }
                Err(e) => Err(Refused::Invalid(e.to_string())),
            },
            #[cfg(any(feature = "redis", feature = "nats"))]
            Publisher::Shared(backplane) => {
                use ssehub::backplane::BackplaneError;
                match backplane.publish(topic, event).await {
                    // Receivers are counted on each node as the event arrives, not here.
                    Ok(published) => Ok((published.id().map(str::to_string), None)),
                    Err(e @ (BackplaneError::Topic(_) | BackplaneError::Event(_))) => {
                        Err(Refused::Invalid(e.to_string()))
                    }
                    Err(e) => Err(Refused::Unavailable(e.to_string())),
                }
            }
        }
    }
}

/// Joins the broker given on the command line, if any.
async fn join(hub: &Hub, config: &Config) -> Result<Publisher, Box<dyn std::error::Error>> {
    let Some(broker) = &config.broker else {
        return Ok(Publisher::Local(hub.clone()));
    };
    if config.history == 0 {
        return Err("a node needs replay history to mirror the broker's: --history above 0".into());
    }
    match broker {
        #[cfg(feature = "redis")]
        config::Broker::Redis(url) => {
            let redis = ssehub::backplane::Redis::new(url).with_max_events(config.history);
            let node = ssehub::backplane::Backplane::connect(hub, redis).await?;
            println!("backplane: joined Redis");
            Ok(Publisher::Shared(node))
        }
        #[cfg(feature = "nats")]
        config::Broker::Nats(url) => {
            let node =
                ssehub::backplane::Backplane::connect(hub, ssehub::backplane::Nats::new(url))
                    .await?;
            println!("backplane: joined NATS");
            Ok(Publisher::Shared(node))
        }
        #[allow(unreachable_patterns)]
        // The URL is not echoed: it may hold a password.
        _ => Err(
            "--redis and --nats need the example built with --features redis or --features nats"
                .into(),
        ),
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
struct App {
    /// The engine.
    hub: Hub,
    /// Where publishes go.
    publisher: Publisher,
    /// Settings.
    config: Arc<Config>,
    /// Counter samples for the rates in the stats.
    rates: Arc<Rates>,
    /// The demo market, with `--demo`.
    market: Option<Arc<Mutex<Market>>>,
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

#[tokio::main]
async fn main() {
    let command = Command::parse(std::env::args().skip(1), |var| std::env::var(var).ok());
    let config = match command {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            print!("{}", config::HELP);
            return;
        }
        Err(message) => {
            eprintln!("error: {message}\n\nTry `--help` for the flags.");
            std::process::exit(2);
        }
    };
    if let Err(error) = serve(config).await {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

/// Builds the hub from the settings.
fn build_hub(config: &Config) -> Hub {
    let history =
        (config.history > 0).then(|| HistoryLimits::new().with_max_events(config.history));
    Hub::builder()
        .with_history(history)
        .with_connected_event(true)
        .with_retry(Some((config.retry, config.retry_jitter)))
        .with_heartbeat(config.heartbeat)
        .build()
}

/// Runs the server until a signal, then shuts down gracefully.
async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    let hub = build_hub(&config);
    let publisher = join(&hub, &config).await?;
    let market = config.demo.then(|| Arc::new(Mutex::new(Market::new())));
    if let Some(market) = &market {
        tokio::spawn(market::run(publisher.clone(), hub.clone(), market.clone(), config.demo_rate));
    }
    let rates = Arc::new(Rates::new());
    tokio::spawn(sample(hub.clone(), rates.clone()));
    let app = App { hub: hub.clone(), publisher, config: Arc::new(config), rates, market };
    // At shutdown the streams end 500 at a time, 100 ms apart, each told to come back after
    // the base retry plus its own random extra: a restart does not bring every client back in
    // the same second.
    let pacing = Pacing::new()
        .with_batch(500)
        .with_interval(Duration::from_millis(100))
        .with_retry(app.config.retry, app.config.retry_jitter);
    let signal = signals()?;

    // Tests and scripts read this line to learn the port (`--addr 127.0.0.1:0` picks one).
    println!("ssehub hub listening on http://{}", listener.local_addr()?);
    if app.market.is_some() {
        println!("demo market: publishing to price:* at {} updates/s", app.config.demo_rate);
    }

    // `/events` is served by ssehub's native listener, which owns each stream's socket; every
    // other route goes to the axum router below, on the same port and connection.
    let send_buffer = app.config.send_buffer;
    let (endpoint, routes) = router(app);
    let mut server = Server::new(endpoint.clone()).with_path("/events").with_fallback(routes);
    if let Some(bytes) = send_buffer {
        server = server.with_send_buffer(bytes);
    }
    server
        .serve_with_shutdown(listener, async move {
            let name = signal.await;
            println!("{name}: shutting down");
            // New requests get 503 from here on; every stream gets its final retry hint and
            // ends, batch by batch.
            hub.shutdown_paced(&pacing).await;
        })
        .await;
    // The streams end by themselves after their last frame; give them a moment to flush.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while endpoint.connection_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if endpoint.connection_count() > 0 {
        println!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    println!("stopped");
    Ok(())
}

/// Listens for Ctrl-C (SIGINT) and SIGTERM from now on (so a signal that comes before the
/// server runs is not lost); the future resolves to the first signal's name.
fn signals() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}

/// Samples the counters for the rates, until the hub shuts down.
async fn sample(hub: Hub, rates: Arc<Rates>) {
    let mut interval = tokio::time::interval(stats::SAMPLE_EVERY);
    while !hub.is_closed() {
        interval.tick().await;
        rates.sample(&hub.stats());
    }
}

/// The SSE endpoint, and every other route.
fn router(app: App) -> (Endpoint, Router) {
    // The crate's adapter: topics and patterns from the query, resume from `Last-Event-ID` (or
    // `lastEventId`), limits, and the stream itself.
    let mut endpoint = Endpoint::new(app.hub.clone());
    if let Some(max) = app.config.max_connections {
        endpoint = endpoint.with_max_connections(max);
    }
    let routes = Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", include_str!("hub/index.html")) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", include_str!("hub/app.js")) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("hub/style.css")) }),
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

/// `GET /metrics`.
async fn metrics(State(app): State<App>) -> Response {
    #[allow(unused_mut)]
    let mut text = stats::prometheus(&app.hub, &app.rates, app.config.stats_top);
    #[cfg(any(feature = "redis", feature = "nats"))]
    if let Publisher::Shared(node) = &app.publisher {
        let state = node.state();
        for (name, kind, help, value) in [
            (
                "ssehub_backplane_connected",
                "gauge",
                "1 while the broker subscription is up.",
                u64::from(state.connected),
            ),
            (
                "ssehub_backplane_lag",
                "gauge",
                "Events the broker has that this node has not delivered.",
                state.lag,
            ),
            (
                "ssehub_backplane_reconnects_total",
                "counter",
                "Broker subscriptions lost and made again.",
                state.reconnects,
            ),
            (
                "ssehub_backplane_gaps_total",
                "counter",
                "Times events were missed and streams ended to resume.",
                state.gaps,
            ),
            (
                "ssehub_backplane_publish_errors_total",
                "counter",
                "Publishes the broker did not acknowledge.",
                state.publish_errors,
            ),
        ] {
            text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
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
