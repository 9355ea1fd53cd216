//! The routes beside `/events`: publishing, disconnecting, stats, metrics and the demo page.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use ssehub::resolve::{query_params, QueryTopics, Rejection, Resolver};
use ssehub::{
    Endpoint, Event, Hub, Pattern, PublishError, Subscribe, SubscriptionChange, UpdateError,
};

use crate::auth::{Auth, Denied, Grant};
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
    /// The JWT keys and revocations, with `--jwt-secret` or `--jwt-public-key`.
    pub(crate) auth: Option<Arc<Auth>>,
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
    /// The key whose latest value this event becomes in the topic's keyed state.
    key: Option<String>,
}

/// One line of a batch (`POST /publish`, `content-type: application/x-ndjson`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    /// The topic to publish to.
    topic: String,
    /// The event's data; line breaks become one `data:` line each.
    data: String,
    /// The event's id; without it the hub assigns one.
    id: Option<String>,
    /// The event's name (`event:` field).
    event: Option<String>,
    /// The reconnect delay to hint, in milliseconds.
    retry: Option<u64>,
    /// The key whose latest value this event becomes in the topic's keyed state.
    key: Option<String>,
}

/// The longest topic name the hub takes (`HubBuilder::with_max_topic_len`'s default, which the
/// server keeps): a batch is checked against it before any of it is published.
const MAX_TOPIC_LEN: usize = 256;

/// The content type of a batch, and of its answer.
const NDJSON: &str = "application/x-ndjson";

/// A request's publish rights, checked from its head before its body is read (the publish
/// token, or with JWT on the token's publish claim): an extractor that runs ahead of the body
/// extractor, so a client without a valid token gets 401 at once instead of the server waiting
/// for (and reading) its body.
#[derive(Debug)]
struct Authorized(PublishRights);

impl FromRequestParts<App> for Authorized {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Refusal> {
        app.publish_rights(&parts.headers, parts.uri.query()).map(Authorized)
    }
}

/// The SSE endpoint, and every other route.
pub(crate) fn router(app: App) -> (Endpoint<Subscribers>, Router) {
    // The crate's adapter: topics and patterns from the query (checked against the token's
    // claim with JWT on), resume from `Last-Event-ID` (or `lastEventId`), limits, and the
    // stream itself.
    let mut endpoint = Endpoint::new(app.hub.clone())
        .with_resolver(Subscribers { auth: app.auth.clone() })
        .with_compression(app.config.compress);
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
        .route("/revoke", post(revoke))
        .route("/send", post(send))
        .route("/subscription", post(change_subscription))
        .route("/stats", get(stats_json))
        .route("/metrics", get(metrics))
        .route("/demo/market", get(market_snapshot))
        // The listener reads every body within `--max-body` and `--body-timeout` (413, 408);
        // axum's own 2 MB default would refuse a larger `--max-body` with a second limit.
        .layer(DefaultBodyLimit::disable());
    (endpoint, routes.with_state(app))
}

/// A static asset. `no-cache` so a rebuilt server serves its new page at once.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body)
        .into_response()
}

/// `POST /publish?topic=NAME`, or a batch (`content-type: application/x-ndjson`).
async fn publish(
    Authorized(rights): Authorized,
    State(app): State<App>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let batch = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(NDJSON));
    if batch {
        return publish_batch(&app, &rights, query.as_deref(), &body).await;
    }
    let topic = topic_param(query.as_deref())?;
    rights.check(&topic)?;
    let body: PublishBody = serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))?;
    let event = with_key(event(body.data, body.id, body.event, body.retry), body.key);
    match app.publisher.publish(&topic, event).await {
        Ok((id, receivers)) => {
            Ok(json(StatusCode::OK, &serde_json::json!({ "id": id, "receivers": receivers })))
        }
        Err(Refused::Unavailable(reason)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, reason)),
        Err(Refused::Invalid(reason)) => Err(error(StatusCode::BAD_REQUEST, reason)),
    }
}

/// A batch: every line checked first (400 naming the first bad line, nothing published), then
/// published in order; answered with one `{"id": ...}` per line, in the same order.
async fn publish_batch(
    app: &App,
    rights: &PublishRights,
    query: Option<&str>,
    body: &[u8],
) -> Result<Response, Refusal> {
    if query_pairs(query.unwrap_or("")).any(|(k, _)| k == "topic") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "a batch names each event's topic on its line; no topic query parameter",
        ));
    }
    let events = parse_batch(body).map_err(|reason| error(StatusCode::BAD_REQUEST, reason))?;
    // Every line's topic against the token's claim before anything is published: all or
    // nothing, as for bad input.
    for (index, (topic, _)) in events.iter().enumerate() {
        rights.check(topic).map_err(|refusal| Refusal {
            reason: format!("line {}: {}", index + 1, refusal.reason),
            ..refusal
        })?;
    }
    let total = events.len();
    let ids = app.publisher.publish_batch(events).await.map_err(|stopped| {
        let reason = match stopped.why {
            Refused::Invalid(reason) | Refused::Unavailable(reason) => reason,
        };
        let published = stopped.lines.iter().filter(|line| line.is_ok()).count();
        let lines = stopped
            .lines
            .into_iter()
            .map(|line| match line {
                Ok(id) => serde_json::json!({ "id": id }),
                Err(why) => serde_json::json!({ "error": why }),
            })
            .collect();
        // Only the hub shutting down or the broker failing can stop a checked batch midway.
        Refusal {
            lines: Some(lines),
            ..error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{reason}; {published} of {total} events were published"),
            )
        }
    })?;
    let mut out = String::with_capacity(ids.len() * 16);
    for id in ids {
        out.push_str(&serde_json::json!({ "id": id }).to_string());
        out.push('\n');
    }
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, NDJSON)], out).into_response())
}

/// Parses and checks every line of a batch; the first bad line's number and why, otherwise.
/// Blank lines are skipped (a trailing newline, a `\r\n` line end).
fn parse_batch(body: &[u8]) -> Result<Vec<(String, Event)>, String> {
    let mut events = Vec::new();
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad = |reason: String| format!("line {number}: {reason}");
        let line: BatchLine =
            serde_json::from_slice(line).map_err(|e| bad(format!("invalid event: {e}")))?;
        check_topic(&line.topic).map_err(|e| bad(format!("invalid topic: {e}")))?;
        let event = with_key(event(line.data, line.id, line.event, line.retry), line.key);
        event.validate().map_err(|e| bad(format!("invalid event: {e}")))?;
        events.push((line.topic, event));
    }
    if events.is_empty() {
        return Err("an empty batch: one JSON event per line".into());
    }
    Ok(events)
}

/// Checks a topic name as the hub will: a valid name without `*`, within the length limit.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.contains('*') {
        return Err("'*' is for patterns, not topic names".into());
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!("{} bytes, over the limit of {MAX_TOPIC_LEN}", topic.len()));
    }
    Pattern::new(topic).map(drop).map_err(|e| e.to_string())
}

/// The event a publish describes.
fn event(data: String, id: Option<String>, name: Option<String>, retry: Option<u64>) -> Event {
    let mut event = Event::new(data);
    if let Some(id) = id {
        event = event.with_id(id);
    }
    if let Some(name) = name {
        event = event.with_event(name);
    }
    if let Some(ms) = retry {
        event = event.with_retry(Duration::from_millis(ms));
    }
    event
}

/// `event` with its key, if it has one.
fn with_key(event: Event, key: Option<String>) -> Event {
    match key {
        Some(key) => event.with_key(key),
        None => event,
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
    // The token first (401), from the head alone, before anything else is looked at.
    let rights = app.publish_rights(&headers, query.as_deref())?;
    let topic = topic_param(query.as_deref())?;
    rights.check(&topic)?;
    let ended = app.hub.disconnect_topic(&topic);
    Ok(json(StatusCode::OK, &serde_json::json!({ "disconnected": ended })))
}

/// `POST /revoke?sub=PRINCIPAL`: ends the principal's streams (and, with JWT on, refuses its
/// tokens issued until now). Needs the publish token or a token with publish rights.
async fn revoke(
    State(app): State<App>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let rights = app.publish_rights(&headers, query.as_deref())?;
    if let PublishRights::Grant(grant) = &rights {
        if !grant.publishes() {
            return Err(error(StatusCode::FORBIDDEN, "revoking needs publish rights"));
        }
    }
    let mut subs = query_pairs(query.as_deref().unwrap_or("")).filter(|(k, _)| k == "sub");
    let sub = match (subs.next(), subs.next()) {
        (Some((_, sub)), None) if !sub.is_empty() => sub,
        _ => return Err(error(StatusCode::BAD_REQUEST, "give exactly one sub")),
    };
    if let Some(auth) = &app.auth {
        auth.revoke(&sub);
    }
    let ended = app.hub.revoke(&sub);
    Ok(json(StatusCode::OK, &serde_json::json!({ "revoked": ended })))
}

/// `POST /send?client=GLOB`, body as `/publish`: to every live stream on this node whose
/// client id matches the glob. Needs the publish token or a token with publish rights, checked
/// from the head before the body is read.
async fn send(
    Authorized(rights): Authorized,
    State(app): State<App>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    if let PublishRights::Grant(grant) = &rights {
        if !grant.publishes() {
            return Err(error(StatusCode::FORBIDDEN, "sending needs publish rights"));
        }
    }
    let mut globs = query_pairs(query.as_deref().unwrap_or("")).filter(|(k, _)| k == "client");
    let glob = match (globs.next(), globs.next()) {
        (Some((_, glob)), None) => glob,
        _ => return Err(error(StatusCode::BAD_REQUEST, "give exactly one client")),
    };
    let body: PublishBody = serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))?;
    let event = event(body.data, body.id, body.event, body.retry);
    match app.hub.send_to_matching(&glob, event) {
        Ok(sent) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "id": sent.id(), "receivers": sent.receivers() }),
        )),
        Err(PublishError::Closed(_)) => {
            Err(error(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down"))
        }
        Err(e) => Err(error(StatusCode::BAD_REQUEST, e.to_string())),
    }
}

/// The body of `POST /subscription`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
    /// What to add.
    #[serde(default)]
    add: Names,
    /// What to take off.
    #[serde(default)]
    remove: Names,
    /// The new pace: `"250ms"`, `"1s"`, `"0"` for every event (absent: unchanged).
    #[serde(default)]
    interval: Option<String>,
}

/// Topics and patterns, in a `POST /subscription` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Names {
    /// Exact topics.
    #[serde(default)]
    topics: Vec<String>,
    /// Glob patterns.
    #[serde(default)]
    patterns: Vec<String>,
}

/// `POST /subscription?session=TOKEN`: changes what the session's open stream receives, from
/// the next event on, and at what pace (`"interval"`). The added names go through the `/events` resolver again, with this
/// request's credentials (with JWT on: a valid token, `401`, whose principal owns the session
/// and whose claim covers them, `403`); a refusal changes nothing.
async fn change_subscription(
    State(app): State<App>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let mut tokens = query_pairs(query.as_deref().unwrap_or("")).filter(|(k, _)| k == "session");
    let token = match (tokens.next(), tokens.next()) {
        (Some((_, token)), None) if !token.is_empty() => token,
        _ => return Err(error(StatusCode::BAD_REQUEST, "give exactly one session")),
    };
    let body: ChangeBody = serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))?;
    // The resolver decides on the added names as it would for a new stream asking for them:
    // the same checks, the same credentials, so a change can widen nothing a connect could
    // not.
    let mut target = String::from("/events?");
    for (key, names) in [("topic", &body.add.topics), ("pattern", &body.add.patterns)] {
        for name in names {
            target.push_str(&format!("{key}={}&", encode_component(name)));
        }
    }
    let mut asked = axum::http::Request::get(target.as_str())
        .body(())
        .map_err(|_| error(StatusCode::BAD_REQUEST, "a name that cannot be asked for"))?;
    *asked.headers_mut() = headers;
    let (parts, ()) = asked.into_parts();
    let resolver = Subscribers { auth: app.auth.clone() };
    let principal = match resolver.decide(&parts) {
        Ok(_) => {
            app.auth.as_ref().and_then(|auth| auth.grant(&parts.headers, None).ok()).map(|g| g.sub)
        }
        Err(rejection) => return Err(error(rejection.status(), rejection.reason().to_string())),
    };
    let change = change_of(body)?;
    match app.hub.update_session(&token, principal.as_deref(), change) {
        Ok(id) => Ok(json(StatusCode::OK, &serde_json::json!({ "subscriber": id.as_u64() }))),
        Err(e @ (UpdateError::UnknownSession | UpdateError::Ended)) => {
            Err(error(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e @ UpdateError::SessionRefused) => Err(error(StatusCode::FORBIDDEN, e.to_string())),
        Err(e @ UpdateError::Compressed) => Err(error(StatusCode::CONFLICT, e.to_string())),
        Err(UpdateError::Closed) => {
            Err(error(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down"))
        }
        Err(e) => Err(error(StatusCode::BAD_REQUEST, e.to_string())),
    }
}

/// The live change a `POST /subscription` body asks for; `400` for an interval that cannot be
/// read (one the hub refuses is its `400` later).
fn change_of(body: ChangeBody) -> Result<SubscriptionChange, Refusal> {
    let mut change = SubscriptionChange::new();
    for topic in body.add.topics {
        change = change.with_added_topic(topic);
    }
    for pattern in body.add.patterns {
        change = change.with_added_pattern(pattern);
    }
    for topic in body.remove.topics {
        change = change.with_removed_topic(topic);
    }
    for pattern in body.remove.patterns {
        change = change.with_removed_pattern(pattern);
    }
    if let Some(interval) = body.interval {
        let interval = ssehub::resolve::parse_interval(&interval)
            .map_err(|rejection| error(StatusCode::BAD_REQUEST, rejection.reason().to_string()))?;
        change = change.with_interval(interval);
    }
    Ok(change)
}

/// Percent-encodes a query component (every byte but the unreserved ones).
fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
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
            "publish_batches": state.publish_batches,
            "publish_busy": state.publish_busy,
            "received": state.received,
            "skipped": state.skipped,
            "gaps": state.gaps,
            "ranges_recovered": state.ranges_recovered,
            "events_recovered": state.events_recovered,
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
            published: state.published,
            publish_batches: state.publish_batches,
            publish_busy: state.publish_busy,
            ranges_recovered: state.ranges_recovered,
            events_recovered: state.events_recovered,
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

/// What a publishing request may do, decided from its head alone (so before its body is
/// read): everything (the `--publish-token`, or no token configured and JWT off), or what its
/// token's claim grants.
#[derive(Debug)]
pub(crate) enum PublishRights {
    /// Any topic.
    All,
    /// The topics of a verified token's publish claim.
    Grant(Grant),
}

impl PublishRights {
    /// Whether `topic` may be published to (or disconnected): 403 if not. Call it for every
    /// topic of a request (each line of a batch).
    pub(crate) fn check(&self, topic: &str) -> Result<(), Refusal> {
        match self {
            PublishRights::All => Ok(()),
            PublishRights::Grant(grant) if grant.may_publish(topic) => Ok(()),
            PublishRights::Grant(_) => {
                Err(error(StatusCode::FORBIDDEN, "the token may not publish to this topic"))
            }
        }
    }
}

impl App {
    /// The request's publish rights: the publish token, when one is configured and given,
    /// allows everything; with JWT on, a valid token's publish claim; with neither configured,
    /// everything. 401 otherwise.
    pub(crate) fn publish_rights(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<PublishRights, Refusal> {
        if let Some(token) = &self.config.publish_token {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                // The scheme is case-insensitive (RFC 9110, section 11.1).
                .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token));
            if given.is_some_and(|given| same(given.as_bytes(), token.as_bytes())) {
                return Ok(PublishRights::All);
            }
        }
        match &self.auth {
            Some(auth) => Ok(PublishRights::Grant(auth.grant(headers, query)?)),
            None if self.config.publish_token.is_none() => Ok(PublishRights::All),
            None => Err(error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")),
        }
    }
}

impl From<Denied> for Refusal {
    fn from(denied: Denied) -> Refusal {
        error(StatusCode::UNAUTHORIZED, denied.0)
    }
}

/// The `/events` resolver: topics and patterns from the query, and the client id from
/// `client=`; with JWT on, a valid token is required (401), every topic and pattern must be in
/// its subscribe claim (403), and the subscription carries the token's `sub` as its principal,
/// the token's client id (its `ssehub.client` claim, else `sub`; a `client=` naming another is
/// 403) and metadata, and ends at its `exp`.
#[derive(Debug, Clone)]
pub(crate) struct Subscribers {
    /// The keys, with JWT on.
    auth: Option<Arc<Auth>>,
}

impl Subscribers {
    /// What `request` subscribes to, or why not.
    fn decide(&self, request: &axum::http::request::Parts) -> Result<Subscribe, Rejection> {
        // Without JWT anyone may subscribe to anything, so a client may name itself too.
        let subscribe = QueryTopics::new().with_client_param(true).parse(request)?;
        let Some(auth) = &self.auth else { return Ok(subscribe) };
        let grant = auth.grant(&request.headers, request.uri.query()).map_err(rejection)?;
        for (key, value) in query_params(request) {
            // With JWT the token names the client: a `client=` asking for another id is
            // refused, or a token could receive the sends meant for someone else.
            if key == "client" && value != grant.client {
                return Err(Rejection::Forbidden("the token is for another client id".into()));
            }
            let allowed = match key.as_str() {
                "topic" => grant.may_subscribe_topic(&value),
                "pattern" => grant.may_subscribe_pattern(&value),
                _ => true,
            };
            if !allowed {
                return Err(Rejection::Forbidden(format!("the token may not subscribe to {key}")));
            }
        }
        let expiry = grant.expiry();
        let mut subscribe = subscribe.with_client(grant.client).with_principal(grant.sub);
        for (key, value) in grant.metadata {
            subscribe = subscribe.with_metadata(key, value);
        }
        Ok(match expiry {
            Some(at) => subscribe.with_expiry(at),
            None => subscribe,
        })
    }
}

impl Resolver for Subscribers {
    fn resolve(
        &self,
        request: &axum::http::request::Parts,
    ) -> impl std::future::Future<Output = Result<Subscribe, Rejection>> + Send {
        std::future::ready(self.decide(request))
    }
}

/// The resolver's answer for a refused token.
fn rejection(denied: Denied) -> Rejection {
    Rejection::Unauthorized(denied.0.into())
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
pub(crate) struct Refusal {
    /// The status.
    status: StatusCode,
    /// Why, for the client.
    reason: String,
    /// For a batch stopped midway: each line's `{"id": …}` or `{"error": …}`.
    lines: Option<Vec<serde_json::Value>>,
}

/// A refusal with this status and reason.
fn error(status: StatusCode, reason: impl Into<String>) -> Refusal {
    Refusal { status, reason: reason.into(), lines: None }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.reason });
        if let (Some(lines), Some(object)) = (self.lines, body.as_object_mut()) {
            object.insert("lines".to_string(), serde_json::Value::Array(lines));
        }
        let mut response = json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // A full publish window, a broker away or a shutdown: worth trying again shortly (on
        // another node, for a shutdown).
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Decodes `application/x-www-form-urlencoded` pairs (`+` is a space, `%XX` a byte; invalid
/// escapes are kept as they are, invalid UTF-8 is replaced).
pub(crate) fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
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
