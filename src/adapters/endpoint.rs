//! `Endpoint`: one SSE route, shared by the axum and hyper adapters. It checks the method, CORS,
//! the resolver's decision and the limits, subscribes, and hands the adapter either a
//! subscription to stream or a short plain-text refusal. It does no fan-out.

use std::fmt;
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use http::header::{
    HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ALLOW, CACHE_CONTROL,
    CONTENT_ENCODING, CONTENT_TYPE, ORIGIN, RETRY_AFTER, VARY, WWW_AUTHENTICATE,
};
use http::request::Parts;
use http::{Method, Response, StatusCode};

use super::encoding::{negotiate, NotAcceptable};
use super::resolve::{
    interval_requested, last_event_id, snapshot_requested, QueryTopics, Rejection, Resolver,
};
use crate::engine::batch::Batch;
use crate::engine::stats::{Sample, StreamEnd};
use crate::error::EndReason;
use crate::error::{SubscribeError, TopicError};
use crate::hub::subscription::Subscription;
use crate::hub::{Hub, Subscribe};
use crate::sync::{Arc, AtomicUsize, Ordering};

/// `x-accel-buffering: no` tells nginx not to buffer the stream.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// One SSE route: a [`Hub`], a [`Resolver`] deciding what each request subscribes to, limits and
/// optional CORS. Serve it with [`ssehub::axum::events`](crate::axum::events) or as a hyper
/// service ([`ssehub::hyper`](crate::hyper)).
///
/// For each request, in this order:
///
/// | check | answer when it fails |
/// | --- | --- |
/// | with CORS on, an `Origin` header names an allowed origin | 403 |
/// | a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`, CORS on) | 204, the preflight answer |
/// | the method is `GET` | 405 with `Allow` |
/// | the [`Resolver`] accepts it | its [`Rejection`]: 400, 401 (with `www-authenticate: Bearer`), 403 or 404 |
/// | the [`Resolver`] returns without panicking | 500; the panic is counted in [`Stats::resolver_panics`](crate::Stats::resolver_panics), and nothing else is affected |
/// | at most [`with_max_topics`](Endpoint::with_max_topics) topics and patterns, each at most [`with_max_topic_len`](Endpoint::with_max_topic_len) bytes | 400 |
/// | fewer than [`with_max_connections`](Endpoint::with_max_connections) streams open | 503 with `Retry-After` |
/// | [`Hub::subscribe`]: [`SubscribeError::Topic`], [`TooManyTopics`](SubscribeError::TooManyTopics), [`Client`](SubscribeError::Client) | 400 |
/// | [`SubscribeError::Full`], [`SessionsFull`](SubscribeError::SessionsFull), [`Closed`](SubscribeError::Closed) | 503 with `Retry-After` |
/// | [`SubscribeError::SessionRefused`] | 403 |
///
/// Refusals have a short `text/plain` body saying why, which never contains a credential.
/// Too many topics is a 400, not a 413: the request has no content, only a query.
///
/// A stream answers 200 with `content-type: text/event-stream`, `cache-control: no-cache` and
/// `x-accel-buffering: no` (so nginx does not buffer it). Its resume point is the
/// `Last-Event-ID` header, else the `lastEventId` query parameter, else whatever the resolver
/// set (see [`last_event_id`](crate::resolve::last_event_id)); `snapshot=1` starts it with a
/// snapshot of its topics' keyed state (see
/// [`snapshot_requested`](crate::resolve::snapshot_requested)); `interval=250ms` reads them at
/// a rate tier's pace (see [`interval_requested`](crate::resolve::interval_requested)). The stream ends cleanly when the
/// subscription ends (shutdown, [`Hub::disconnect`]); a subscriber dropped as slow
/// ([`EndReason::Slow`]) has its connection aborted instead, since a client that does not read
/// would not read a clean ending either: at once while the server still polls the body, else
/// when the [write timeout](Endpoint::with_write_timeout) finds the socket stuck. A client that
/// goes away frees its subscription and its connection slot.
///
/// `Endpoint` is a cheap handle (clones share the hub, the resolver and the connection count);
/// configure it before cloning.
///
/// # Examples
///
/// ```
/// use ssehub::{Cors, Endpoint, Hub, QueryTopics};
///
/// let endpoint = Endpoint::new(Hub::new())
///     .with_resolver(QueryTopics::new().with_patterns(false))
///     .with_max_topics(8)
///     .with_max_connections(10_000)
///     .with_cors(Cors::origins(["https://app.example.com"]).with_credentials(true));
/// assert_eq!(endpoint.connection_count(), 0);
/// ```
pub struct Endpoint<R = QueryTopics> {
    /// The hub streams come from.
    hub: Hub,
    /// Decides what each request subscribes to.
    resolver: Arc<R>,
    /// The limits checked before subscribing.
    limits: Limits,
    /// Cross-origin settings; `None` answers no preflight and adds no header.
    cors: Option<Arc<Cors>>,
    /// Streams open through this endpoint and its clones.
    open: Arc<AtomicUsize>,
    /// Whether streams are compressed for clients that ask (`Accept-Encoding`).
    compression: bool,
}

/// What an [`Endpoint`] checks before subscribing.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Topics and patterns per request.
    max_topics: usize,
    /// Bytes per topic name or pattern.
    max_topic_len: usize,
    /// Streams open at once.
    max_connections: usize,
    /// The `Retry-After` sent with a 503, in seconds.
    retry_after: u64,
    /// How long a connection's writes may make no progress (see `with_write_timeout`).
    write_timeout: Option<Duration>,
}

impl<R> Clone for Endpoint<R> {
    fn clone(&self) -> Self {
        Endpoint {
            hub: self.hub.clone(),
            resolver: self.resolver.clone(),
            limits: self.limits,
            cors: self.cors.clone(),
            open: self.open.clone(),
            compression: self.compression,
        }
    }
}

impl<R> fmt::Debug for Endpoint<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("hub", &self.hub)
            .field("limits", &self.limits)
            .field("cors", &self.cors)
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

impl Endpoint<QueryTopics> {
    /// An endpoint for `hub` taking topics from the query ([`QueryTopics`]), with the hub's
    /// default limits (64 topics and patterns of at most 256 bytes), no connection limit,
    /// `Retry-After: 5` and no CORS.
    ///
    /// # Examples
    ///
    /// ```
    /// let endpoint = ssehub::Endpoint::new(ssehub::Hub::new());
    /// # drop(endpoint);
    /// ```
    #[must_use]
    pub fn new(hub: Hub) -> Self {
        Endpoint {
            hub,
            resolver: Arc::new(QueryTopics::new()),
            limits: Limits {
                max_topics: 64,
                max_topic_len: 256,
                max_connections: usize::MAX,
                retry_after: 5,
                write_timeout: Some(Duration::from_secs(30)),
            },
            cors: None,
            open: Arc::new(AtomicUsize::new(0)),
            compression: false,
        }
    }
}

impl<R: Resolver> Endpoint<R> {
    /// Decides subscriptions with `resolver` instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Endpoint, Hub, PathTopic};
    ///
    /// let endpoint = Endpoint::new(Hub::new())
    ///     .with_resolver(PathTopic::new("/feeds/{feed}", "feed:{feed}"));
    /// # drop(endpoint);
    /// ```
    #[must_use]
    pub fn with_resolver<S: Resolver>(self, resolver: S) -> Endpoint<S> {
        Endpoint {
            hub: self.hub,
            resolver: Arc::new(resolver),
            limits: self.limits,
            cors: self.cors,
            open: self.open,
            compression: self.compression,
        }
    }

    /// Compresses streams for clients that ask (`enabled`; off by default): `Accept-Encoding`
    /// chooses zstd, then gzip (by q-value, zstd on a tie), then identity; the stream is sent
    /// with its `Content-Encoding` and every answer with `Vary: Accept-Encoding`. A client
    /// that refuses identity (`identity;q=0`) and accepts neither gets `406`. Each event is
    /// compressed once per stream class (see [`Subscribe::with_encoding`]), and the hub may
    /// still answer in identity (compression off in its builder, a stream at an interval).
    ///
    /// # Examples
    ///
    /// ```
    /// let endpoint = ssehub::Endpoint::new(ssehub::Hub::new()).with_compression(true);
    /// # drop(endpoint);
    /// ```
    ///
    /// [`Subscribe::with_encoding`]: crate::Subscribe::with_encoding
    #[must_use]
    pub fn with_compression(mut self, enabled: bool) -> Self {
        self.compression = enabled;
        self
    }

    /// At most `count` topics and patterns per request (the hub enforces its own limit too).
    ///
    /// # Examples
    ///
    /// ```
    /// let endpoint = ssehub::Endpoint::new(ssehub::Hub::new()).with_max_topics(4);
    /// # drop(endpoint);
    /// ```
    #[must_use]
    pub fn with_max_topics(mut self, count: usize) -> Self {
        self.limits.max_topics = count;
        self
    }

    /// At most `bytes` per topic name or pattern (the hub enforces its own limit too).
    ///
    /// # Examples
    ///
    /// ```
    /// let endpoint = ssehub::Endpoint::new(ssehub::Hub::new()).with_max_topic_len(64);
    /// # drop(endpoint);
    /// ```
    #[must_use]
    pub fn with_max_topic_len(mut self, bytes: usize) -> Self {
        self.limits.max_topic_len = bytes;
        self
    }

    /// At most `count` streams open at once through this endpoint and its clones; beyond,
    /// requests get 503. A slot frees when its client disconnects or its stream ends.
    ///
    /// # Examples
    ///
    /// ```
    /// let endpoint = ssehub::Endpoint::new(ssehub::Hub::new()).with_max_connections(10_000);
    /// # drop(endpoint);
    /// ```
    #[must_use]
    pub fn with_max_connections(mut self, count: usize) -> Self {
        self.limits.max_connections = count;
        self
    }

    /// The `Retry-After` sent with a 503, rounded up to whole seconds (5 by default).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let endpoint = ssehub::Endpoint::new(ssehub::Hub::new()).with_retry_after(Duration::from_secs(30));
    /// # drop(endpoint);
    /// ```
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        let whole = after.as_secs();
        self.limits.retry_after =
            if after.subsec_nanos() > 0 { whole.saturating_add(1) } else { whole };
        self
    }

    /// Closes a connection whose writes made no progress for `timeout` (30 seconds by default;
    /// `None` never does): its client stopped reading. Without it, such a connection would stay
    /// open until its client leaves, holding its subscription and its connection slot, because
    /// once the socket is full hyper stops polling the response body and never sees the hub end
    /// the subscription as slow. The time counts between two writes that progress (nginx's
    /// `write_timeout`), so a slow but steady client is never cut off.
    ///
    /// It takes effect where the endpoint sees the socket: in
    /// [`ssehub::hyper::serve`](crate::hyper::serve). Under `axum::serve`, wrap the listener with
    /// [`ssehub::axum::listener`](crate::axum::listener) instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let endpoint = ssehub::Endpoint::new(ssehub::Hub::new()).with_write_timeout(Some(Duration::from_secs(10)));
    /// # drop(endpoint);
    /// ```
    #[must_use]
    pub fn with_write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.write_timeout = timeout;
        self
    }

    /// Answers cross-origin requests as `cors` says.
    ///
    /// # Examples
    ///
    /// ```
    /// let endpoint = ssehub::Endpoint::new(ssehub::Hub::new()).with_cors(ssehub::Cors::any());
    /// # drop(endpoint);
    /// ```
    #[must_use]
    pub fn with_cors(mut self, cors: Cors) -> Self {
        self.cors = Some(Arc::new(cors));
        self
    }
}

impl<R> Endpoint<R> {
    /// The hub streams come from.
    ///
    /// # Examples
    ///
    /// ```
    /// let endpoint = ssehub::Endpoint::new(ssehub::Hub::new());
    /// endpoint.hub().publish("news", ssehub::Event::new("hello"))?;
    /// # Ok::<(), ssehub::PublishError>(())
    /// ```
    #[must_use]
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Streams open through this endpoint and its clones.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::Endpoint::new(ssehub::Hub::new()).connection_count(), 0);
    /// ```
    #[must_use]
    pub fn connection_count(&self) -> usize {
        // Relaxed: a gauge; nothing else is read on the strength of it.
        self.open.load(Ordering::Relaxed)
    }
}

impl<R: Resolver> Endpoint<R> {
    /// The `Retry-After` of a 503, in seconds (the native listener's refusals at accept use it
    /// too).
    #[cfg(feature = "server")]
    pub(crate) fn retry_after(&self) -> u64 {
        self.limits.retry_after
    }

    /// The write timeout of connections serving this endpoint.
    #[cfg(feature = "hyper")]
    pub(crate) fn write_timeout(&self) -> Option<Duration> {
        self.limits.write_timeout
    }

    /// The answer to one request.
    pub(crate) async fn answer(&self, request: &Parts) -> Response<Reply> {
        let origin = request.headers.get(ORIGIN);
        let allowed = match (self.cors.as_deref(), origin) {
            (Some(cors), Some(origin)) => match cors.allow(origin) {
                Some(allowed) => Some((cors, allowed)),
                None => return text(StatusCode::FORBIDDEN, "origin not allowed"),
            },
            _ => None,
        };
        let mut response = self.respond(request).await;
        if self.compression {
            response.headers_mut().append(VARY, HeaderValue::from_static("accept-encoding"));
        }
        if let Some((cors, allowed)) = allowed {
            let headers = response.headers_mut();
            if allowed != "*" {
                headers.append(VARY, HeaderValue::from_static("origin"));
            }
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
            if cors.credentials {
                headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            }
        }
        response
    }

    /// The answer before CORS headers.
    async fn respond(&self, request: &Parts) -> Response<Reply> {
        let preflight = request.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        if request.method == Method::OPTIONS && preflight && self.cors.is_some() {
            return self.preflight(request);
        }
        if request.method != Method::GET {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET opens a stream");
            let allow = if self.cors.is_some() { "GET, OPTIONS" } else { "GET" };
            response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
            return response;
        }
        let mut subscribe = match contained(|| self.resolver.resolve(request)).await {
            Some(Ok(subscribe)) => subscribe,
            Some(Err(rejection)) => return rejected(&rejection),
            None => {
                super::log!(error, path = request.uri.path(), "request resolver panicked");
                self.hub.resolver_panicked();
                return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            }
        };
        if let Some(id) = last_event_id(request) {
            subscribe = subscribe.with_last_event_id(id);
        }
        match snapshot_requested(request) {
            Ok(true) => subscribe = subscribe.with_snapshot(),
            Ok(false) => {}
            Err(rejection) => return rejected(&rejection),
        }
        match interval_requested(request) {
            Ok(Some(interval)) => subscribe = subscribe.with_interval(interval),
            Ok(None) => {}
            Err(rejection) => return rejected(&rejection),
        }
        if self.compression {
            match negotiate(&request.headers) {
                Ok(encoding) => subscribe = subscribe.with_encoding(encoding),
                Err(NotAcceptable) => {
                    return text(StatusCode::NOT_ACCEPTABLE, "no acceptable content coding");
                }
            }
        }
        if let Err(error) = self.limits.check(&subscribe) {
            return self.refused(&error);
        }
        let Some(permit) = Permit::take(&self.open, self.limits.max_connections) else {
            return self.busy("too many connections, retry later");
        };
        // A resume the hub's history cannot serve goes to its replay source (a backplane's
        // broker), when one is registered.
        match self.hub.subscribe_resuming(subscribe).await {
            Ok(subscription) => {
                stream(Events { subscription, _permit: Some(permit), counted: false })
            }
            Err(error) => self.refused(&error),
        }
    }

    /// The answer to a CORS preflight from an allowed origin (or none).
    fn preflight(&self, request: &Parts) -> Response<Reply> {
        let mut response = Response::new(Reply::Empty);
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET"));
        // Mirrored: the request headers of a GET open no more than the GET itself does.
        if let Some(asked) = request.headers.get(ACCESS_CONTROL_REQUEST_HEADERS) {
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            headers.append(VARY, HeaderValue::from_static("access-control-request-headers"));
        }
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_MAX_AGE));
        response
    }

    /// The answer to a refused subscribe.
    fn refused(&self, error: &SubscribeError) -> Response<Reply> {
        match error {
            SubscribeError::Topic { .. }
            | SubscribeError::TooManyTopics { .. }
            | SubscribeError::Client(_)
            | SubscribeError::Interval(_) => text(StatusCode::BAD_REQUEST, error.to_string()),
            SubscribeError::Full { .. } => self.busy("too many connections, retry later"),
            SubscribeError::SessionsFull { .. } => self.busy("too many sessions, retry later"),
            SubscribeError::Closed => self.busy("server is shutting down"),
            SubscribeError::Unavailable => self.busy("history unavailable, retry later"),
            SubscribeError::SessionRefused => {
                text(StatusCode::FORBIDDEN, "session belongs to another principal")
            }
        }
    }

    /// A 503 with `Retry-After`.
    fn busy(&self, reason: &'static str) -> Response<Reply> {
        let mut response = text(StatusCode::SERVICE_UNAVAILABLE, reason);
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(self.limits.retry_after));
        response
    }
}

impl Limits {
    /// The endpoint's own limits on a request, reported as the hub reports its own.
    fn check(&self, subscribe: &Subscribe) -> Result<(), SubscribeError> {
        // Within the crate, so the adapters read the request's lists directly; no public
        // accessor exists for them yet.
        let count = subscribe.topics.len() + subscribe.patterns.len();
        if count > self.max_topics {
            return Err(SubscribeError::TooManyTopics { count, max: self.max_topics });
        }
        let names = subscribe.topics.iter().chain(&subscribe.patterns);
        if let Some(name) = names.into_iter().find(|name| name.len() > self.max_topic_len) {
            let mut end = 64.min(name.len());
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            return Err(SubscribeError::Topic {
                name: name[..end].to_string(),
                error: TopicError::TooLong { len: name.len(), max: self.max_topic_len },
            });
        }
        Ok(())
    }
}

/// Cross-origin settings for an [`Endpoint`]: which page origins may open streams, and whether
/// they may send cookies.
///
/// With CORS on, the endpoint answers preflight requests (`OPTIONS` with
/// `Access-Control-Request-Method`: 204 allowing `GET` and the headers asked for, cached for 10
/// minutes), adds `access-control-allow-origin` (and `access-control-allow-credentials: true`
/// when enabled) to every answer to an allowed origin, and refuses a request whose `Origin` is
/// not allowed with 403, before running the resolver. Requests without `Origin` (same-origin
/// `EventSource`s, service clients) pass.
///
/// Origins are compared as written in the `Origin` header, `scheme://host[:port]` with no
/// trailing slash, ignoring ASCII case.
///
/// # Examples
///
/// ```
/// use ssehub::{Cors, Endpoint, Hub};
///
/// // Pages on two sites may connect with `new EventSource(url, { withCredentials: true })`.
/// let cors = Cors::origins(["https://app.example.com", "https://admin.example.com"])
///     .with_credentials(true);
/// let endpoint = Endpoint::new(Hub::new()).with_cors(cors);
/// # drop(endpoint);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Cors {
    /// Allowed origins; `None` for any.
    origins: Option<Vec<String>>,
    /// Whether `access-control-allow-credentials: true` is sent.
    credentials: bool,
}

impl Cors {
    /// Any origin may connect (`access-control-allow-origin: *`, or the request's origin when
    /// credentials are allowed, since browsers refuse `*` with credentials).
    ///
    /// # Examples
    ///
    /// ```
    /// let cors = ssehub::Cors::any();
    /// # drop(cors);
    /// ```
    pub fn any() -> Self {
        Cors { origins: None, credentials: false }
    }

    /// Only these origins may connect.
    ///
    /// # Examples
    ///
    /// ```
    /// let cors = ssehub::Cors::origins(["https://app.example.com"]);
    /// # drop(cors);
    /// ```
    pub fn origins<I, S>(origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cors { origins: Some(origins.into_iter().map(Into::into).collect()), credentials: false }
    }

    /// Whether pages may send cookies (and read the stream) with credentials.
    ///
    /// # Examples
    ///
    /// ```
    /// let cors = ssehub::Cors::any().with_credentials(true);
    /// # drop(cors);
    /// ```
    pub fn with_credentials(mut self, enabled: bool) -> Self {
        self.credentials = enabled;
        self
    }

    /// The `access-control-allow-origin` value for `origin`, or `None` if it is not allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            None if self.credentials => Some(origin.clone()),
            None => Some(HeaderValue::from_static("*")),
            Some(origins) => origins
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
                .then(|| origin.clone()),
        }
    }
}

/// A slot among an endpoint's open streams, released on drop.
#[derive(Debug)]
struct Permit {
    /// The endpoint's count of open streams.
    open: Arc<AtomicUsize>,
}

impl Permit {
    /// A slot if fewer than `max` are taken.
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Permit> {
        // Relaxed: the count guards only itself; the compare-exchange keeps it from ever
        // exceeding `max`, since all updates of one atomic are totally ordered.
        let mut current = open.load(Ordering::Relaxed);
        loop {
            if current >= max {
                return None;
            }
            match open.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Permit { open: open.clone() }),
                Err(actual) => current = actual,
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Relaxed: see `take`.
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an adapter turns into its response body.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A live stream.
    Stream(Events),
    /// A plain-text refusal.
    Text(Bytes),
    /// No body (a preflight answer).
    Empty,
}

/// A subscription being streamed, with the connection slot it holds.
#[derive(Debug)]
pub(crate) struct Events {
    /// Where the frames come from.
    subscription: Subscription,
    /// Released when the body is dropped: when the stream ends or the client goes away.
    _permit: Option<Permit>,
    /// Whether its end has been counted (`ssehub_streams_ended_total`).
    counted: bool,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.end(StreamEnd::ClientGone);
    }
}

impl Events {
    /// Ready once the hub has dropped the subscriber as slow, without taking anything from it:
    /// for a writer blocked on a full socket, which must not drain into a buffer of its own.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn poll_dropped_as_slow(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.subscription.poll_dropped_as_slow(cx)
    }

    /// A stream holding no connection slot.
    pub(crate) fn new(subscription: Subscription) -> Self {
        Events { subscription, _permit: None, counted: false }
    }

    /// Records a batch whose write has completed (see [`Sample`]).
    pub(crate) fn written(&self, sample: &Sample) {
        self.subscription.counters().written(sample);
    }

    /// Why the hub ended the stream (once `poll_batch` said it ended).
    pub(crate) fn end_reason(&self) -> EndReason {
        self.subscription.end_reason().unwrap_or(EndReason::Dropped)
    }

    /// Counts the stream as ended for `end`; only the first call counts, and a stream dropped
    /// before any counts as `client_gone` (its connection went away under it).
    pub(crate) fn end(&mut self, end: StreamEnd) {
        if !self.counted {
            self.counted = true;
            end.count();
        }
    }

    /// `poll_batch` for a body handed to hyper: each batch is recorded when it is handed over
    /// (hyper writes it in the same poll unless the socket is full), and the end is counted.
    #[cfg(any(feature = "axum", feature = "hyper"))]
    pub(crate) fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Batch, EndReason>>> {
        let polled = ready!(self.poll_batch(cx));
        match &polled {
            Some(Ok(batch)) => self.written(&Sample::of(batch)),
            Some(Err(reason)) => self.end(StreamEnd::Hub(*reason)),
            None => self.end(StreamEnd::Hub(self.end_reason())),
        }
        Poll::Ready(polled)
    }

    /// The next non-empty batch; `None` when the stream ended cleanly, `Err(EndReason::Slow)` when
    /// the subscriber was dropped as slow, so the adapter aborts the connection.
    pub(crate) fn poll_batch(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Batch, EndReason>>> {
        loop {
            match ready!(Pin::new(&mut self.subscription).poll_next(cx)) {
                Some(batch) if batch.is_empty() => continue,
                Some(batch) => return Poll::Ready(Some(Ok(batch))),
                None => {
                    return Poll::Ready(match self.subscription.end_reason() {
                        Some(EndReason::Slow) => Some(Err(EndReason::Slow)),
                        _ => None,
                    });
                }
            }
        }
    }
}

/// Runs `start` and the future it returns, `None` if either panics.
///
/// A resolver is the application's code, and a panic in it must fail that one request, not the
/// connection's task (which would reset the connection without an answer) or anything shared.
/// The closure form of [`Resolver`] runs the application's code in `start` itself, before any
/// future exists, hence both are guarded.
async fn contained<F: Future>(start: impl FnOnce() -> F) -> Option<F::Output> {
    let future = catch_unwind(AssertUnwindSafe(start)).ok()?;
    let mut future = std::pin::pin!(future);
    poll_fn(|cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
        Ok(Poll::Ready(output)) => Poll::Ready(Some(output)),
        Ok(Poll::Pending) => Poll::Pending,
        Err(_) => Poll::Ready(None),
    })
    .await
}

/// A 200 streaming `events`, with the SSE headers (and its `Content-Encoding` when the stream
/// is compressed).
pub(crate) fn stream(events: Events) -> Response<Reply> {
    let encoding = events.subscription.encoding();
    let mut response = Response::new(Reply::Stream(events));
    let headers = response.headers_mut();
    if encoding != crate::Encoding::Identity {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding.as_str()));
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    response
}

/// A plain-text answer.
fn text(status: StatusCode, reason: impl Into<String>) -> Response<Reply> {
    let mut response = Response::new(Reply::Text(Bytes::from(reason.into())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The answer to a resolver's rejection.
fn rejected(rejection: &Rejection) -> Response<Reply> {
    let mut response = text(rejection.status(), rejection.reason());
    if rejection.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}
