//! A reconnecting Server-Sent Events client (feature `client`).
//!
//! [`EventSource`] connects to an `http://` or `https://` URL and yields the parsed events as a
//! [`Stream`].
//! Like a browser's `EventSource` it reconnects by itself after a dropped connection, a network
//! error or a retryable status (408, 429, 500, 502, 503, 504), waiting the server's `retry:`
//! time (or its own backoff), growing the wait exponentially while attempts keep failing, with
//! random jitter, and sending `Last-Event-ID`. As the WHATWG spec says, it stops for good on 204
//! No Content, on any other non-200 status and on a response that is not `text/event-stream`,
//! with a typed error. A line or an event larger than the configured caps is an error, not an
//! allocation without end.
//!
//! HTTPS is built in: rustls (with the `ring` provider) verifies the server against Mozilla's
//! root certificates ([`webpki-roots`](https://docs.rs/webpki-roots)), or the system's store
//! with [`EventSource::with_native_roots`], plus any certificate given with
//! [`EventSource::with_root_certificate`] (a private CA, a self-signed server). ALPN offers `h2`
//! and `http/1.1`: a server that speaks HTTP/2 gets one, so many streams to one host share a
//! connection. Plain `http://` URLs use HTTP/1.1.
//!
//! Compressed streams are decoded as they arrive: the client asks for `zstd` and `gzip`
//! (`Accept-Encoding: zstd, gzip`; [`EventSource::with_compression`] turns that off) and
//! decodes whichever the server answers with (a zstd stream of many frames, gzip members with
//! or without their trailer), in pieces of at most 64 KiB, so the parser's caps bound what a
//! small compressed body can make it hold.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use http::header::{
    HeaderName, HeaderValue, ACCEPT, ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING,
    CONTENT_TYPE, RETRY_AFTER,
};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;

use crate::parse::{ParseError, ParsedEvent, Parser};

mod decode;
use crate::sync::PlainArc;
use decode::Decoder;

/// The HTTP client every attempt of one [`EventSource`] uses.
type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Why an [`EventSource`] stopped (or could not start).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not an absolute `http://` or `https://` URL.
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// A certificate given to [`EventSource::with_root_certificate`] is not valid PEM, or no
    /// root certificate could be loaded from the system's store.
    #[error("tls: {0}")]
    Tls(String),
    /// A header name or value is invalid.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    /// The server answered 204 No Content: it asks the client not to reconnect.
    #[error("server answered 204 No Content")]
    NoContent,
    /// The server answered a status that is not retried.
    #[error("server answered status {0}")]
    Status(u16),
    /// The response is not `text/event-stream`.
    #[error("response content type is {0:?}, not text/event-stream")]
    ContentType(String),
    /// The response's `Content-Encoding` is one the client does not decode (it decodes
    /// `zstd` and `gzip`).
    #[error("response content encoding {0:?} is not zstd, gzip or identity")]
    ContentEncoding(String),
    /// The compressed body is not valid in its coding (or decodes to more than the caps
    /// allow one piece at a time: it is decoded in pieces of at most 64 KiB).
    #[error("body does not decode: {0}")]
    Decode(String),
    /// The stream broke the caps (a line or an event too large).
    #[error("stream rejected: {0}")]
    Parse(#[from] ParseError),
    /// Reconnecting failed this many times in a row (see [`EventSource::with_max_retries`]).
    #[error("gave up after {attempts} failed attempts: {last}")]
    GaveUp {
        /// Consecutive failed attempts.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// `connect` was called outside a Tokio runtime.
    #[error("the client needs a Tokio runtime")]
    NoRuntime,
}

/// What an [`Events`] stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A connection was established (the first, or a reconnection).
    Open,
    /// An event arrived.
    Message(ParsedEvent),
    /// The connection was lost; the client reconnects after `delay`.
    Reconnecting {
        /// How long it waits first.
        delay: Duration,
        /// Why the connection was lost.
        reason: String,
        /// The `Last-Event-ID` it will send.
        last_event_id: String,
    },
}

/// How long to wait before reconnecting.
///
/// The first wait is the server's `retry:` time if it sent one, else `initial`; each further
/// failure in a row doubles it, up to `max`; a random extra of up to `jitter` times the wait is
/// added, so many clients do not come back at the same moment.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let backoff = ssehub::client::Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 0.5);
/// # let _ = backoff;
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First wait when the server gave none.
    initial: Duration,
    /// Longest wait.
    max: Duration,
    /// Random extra, as a fraction of the wait (0 to 1).
    jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_secs(3), max: Duration::from_secs(60), jitter: 0.5 }
    }
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max`, with up to `jitter` (0 to 1) of the
    /// wait added at random.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let quick = ssehub::client::Backoff::new(Duration::from_millis(10), Duration::from_secs(1), 0.0);
    /// # let _ = quick;
    /// ```
    #[must_use]
    pub fn new(initial: Duration, max: Duration, jitter: f64) -> Backoff {
        Backoff { initial, max, jitter: jitter.clamp(0.0, 1.0) }
    }

    /// The wait before attempt number `failures` (1 for the first retry), given the server's
    /// reconnection time in ms, and a random number in [0, 1).
    fn delay(&self, server: Option<u64>, failures: u32, random: f64) -> Duration {
        let base = server.map_or(self.initial, Duration::from_millis);
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        let wait = base.saturating_mul(factor).min(self.max.max(base));
        wait + wait.mul_f64(self.jitter * random)
    }
}

/// A configured SSE connection; [`EventSource::connect`] starts it.
///
/// # Examples
///
/// ```no_run
/// use futures_util::StreamExt;
/// use ssehub::client::{ClientEvent, EventSource};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut events = EventSource::new("http://127.0.0.1:8080/events?topic=news")?
///     .with_header("authorization", "Bearer s3cret")?
///     .connect()?;
/// while let Some(item) = events.next().await {
///     match item? {
///         ClientEvent::Message(event) => println!("{}: {}", event.event, event.data),
///         ClientEvent::Reconnecting { delay, reason, .. } => eprintln!("lost ({reason}), retry in {delay:?}"),
///         _ => {}
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct EventSource {
    /// Where to connect.
    url: Uri,
    /// Extra request headers.
    headers: HeaderMap,
    /// Reconnection waits.
    backoff: Backoff,
    /// Parser caps: longest line, largest event.
    limits: (usize, usize),
    /// The `Last-Event-ID` of the first request.
    last_event_id: Option<String>,
    /// Consecutive failures before giving up; `None` for never.
    max_retries: Option<u32>,
    /// Longest silence on an open connection before it is considered dead.
    idle_timeout: Option<Duration>,
    /// Longest wait from connecting until the response head (TCP, TLS handshake, request).
    connect_timeout: Duration,
    /// Where trust in a server's certificate comes from.
    roots: Roots,
    /// Whether to ask for compressed streams.
    compression: bool,
}

/// The certificates an [`EventSource`] trusts for `https://`.
#[derive(Debug, Clone, Default)]
struct Roots {
    /// The system's store instead of the built-in Mozilla roots.
    native: bool,
    /// Certificates trusted besides those.
    extra: Vec<CertificateDer<'static>>,
}

impl EventSource {
    /// A source for `url` (absolute, `http://` or `https://`).
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidUrl`] for anything else.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ssehub::client::EventSource::new("http://127.0.0.1:8080/events").is_ok());
    /// assert!(ssehub::client::EventSource::new("https://feeds.example/events").is_ok());
    /// assert!(ssehub::client::EventSource::new("not a url").is_err());
    /// ```
    pub fn new(url: &str) -> Result<EventSource, ClientError> {
        let url: Uri = url.parse().map_err(|_| ClientError::InvalidUrl(url.to_string()))?;
        let scheme_ok = matches!(url.scheme_str(), Some("http" | "https"));
        if !scheme_ok || url.authority().is_none() {
            return Err(ClientError::InvalidUrl(url.to_string()));
        }
        Ok(EventSource {
            url,
            headers: HeaderMap::new(),
            backoff: Backoff::default(),
            limits: (1 << 20, 8 << 20),
            last_event_id: None,
            max_retries: None,
            idle_timeout: None,
            compression: true,
            connect_timeout: Duration::from_secs(10),
            roots: Roots::default(),
        })
    }

    /// Also trusts the certificates in `pem` (one or more `CERTIFICATE` blocks) for `https://`:
    /// a private certificate authority, or a self-signed server's own certificate.
    ///
    /// # Errors
    ///
    /// [`ClientError::Tls`] when `pem` holds no certificate or a malformed one.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let pem = std::fs::read("internal-ca.pem")?;
    /// let source = ssehub::client::EventSource::new("https://feeds.internal/events")?
    ///     .with_root_certificate(&pem)?;
    /// # drop(source);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_root_certificate(mut self, pem: &[u8]) -> Result<Self, ClientError> {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Tls(format!("invalid PEM certificate: {e}")))?;
        if certificates.is_empty() {
            return Err(ClientError::Tls("no CERTIFICATE block in the PEM".into()));
        }
        self.roots.extra.extend(certificates);
        Ok(self)
    }

    /// Trusts the operating system's root certificates instead of the built-in Mozilla roots
    /// (read once, when [`connect`](Self::connect) is called), for machines whose
    /// administrators add their own authorities there.
    ///
    /// # Examples
    ///
    /// ```
    /// let source = ssehub::client::EventSource::new("https://feeds.example/events")?.with_native_roots();
    /// # drop(source);
    /// # Ok::<(), ssehub::client::ClientError>(())
    /// ```
    #[must_use]
    pub fn with_native_roots(mut self) -> Self {
        self.roots.native = true;
        self
    }

    /// The longest wait from starting a connection until the server's response head arrives:
    /// the TCP connection, the TLS handshake and the request together (10 s by default). A
    /// server that accepts the connection and never answers counts as a failed attempt.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let source = ssehub::client::EventSource::new("http://127.0.0.1/events")?
    ///     .with_connect_timeout(Duration::from_secs(3));
    /// # drop(source);
    /// # Ok::<(), ssehub::client::ClientError>(())
    /// ```
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Adds a request header (sent on every attempt).
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidHeader`] for an invalid name or value.
    ///
    /// # Examples
    ///
    /// ```
    /// let source = ssehub::client::EventSource::new("http://127.0.0.1/events")?
    ///     .with_header("x-api-key", "k")?;
    /// # drop(source);
    /// # Ok::<(), ssehub::client::ClientError>(())
    /// ```
    pub fn with_header(mut self, name: &str, value: &str) -> Result<Self, ClientError> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ClientError::InvalidHeader(name.to_string()))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| ClientError::InvalidHeader(name.to_string()))?;
        self.headers.append(name, value);
        Ok(self)
    }

    /// How long to wait before reconnecting (see [`Backoff`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use ssehub::client::{Backoff, EventSource};
    /// let source = EventSource::new("http://127.0.0.1/events")?
    ///     .with_backoff(Backoff::new(Duration::from_millis(100), Duration::from_secs(10), 0.3));
    /// # drop(source);
    /// # Ok::<(), ssehub::client::ClientError>(())
    /// ```
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest line and the largest event accepted, in bytes (1 MiB and 8 MiB by default).
    ///
    /// # Examples
    ///
    /// ```
    /// let source = ssehub::client::EventSource::new("http://127.0.0.1/events")?.with_limits(4096, 65536);
    /// # drop(source);
    /// # Ok::<(), ssehub::client::ClientError>(())
    /// ```
    #[must_use]
    pub fn with_limits(mut self, max_line: usize, max_event: usize) -> Self {
        self.limits = (max_line, max_event);
        self
    }

    /// Resumes after this event id on the first request.
    ///
    /// # Examples
    ///
    /// ```
    /// let source = ssehub::client::EventSource::new("http://127.0.0.1/events")?.with_last_event_id("41");
    /// # drop(source);
    /// # Ok::<(), ssehub::client::ClientError>(())
    /// ```
    #[must_use]
    pub fn with_last_event_id(mut self, id: impl Into<String>) -> Self {
        self.last_event_id = Some(id.into());
        self
    }

    /// Gives up after this many failed attempts in a row (`None`, the default: never).
    ///
    /// # Examples
    ///
    /// ```
    /// let source = ssehub::client::EventSource::new("http://127.0.0.1/events")?.with_max_retries(Some(5));
    /// # drop(source);
    /// # Ok::<(), ssehub::client::ClientError>(())
    /// ```
    #[must_use]
    pub fn with_max_retries(mut self, attempts: Option<u32>) -> Self {
        self.max_retries = attempts;
        self
    }

    /// Whether to ask the server for a compressed stream (`Accept-Encoding: zstd, gzip`, the
    /// default) or not (`Accept-Encoding: identity`). Either way a response in `zstd` or
    /// `gzip` is decoded; an `Accept-Encoding` given with [`EventSource::with_header`] is sent
    /// instead.
    ///
    /// # Examples
    ///
    /// ```
    /// let source = ssehub::client::EventSource::new("http://127.0.0.1/events")?
    ///     .with_compression(false);
    /// # drop(source);
    /// # Ok::<(), ssehub::client::ClientError>(())
    /// ```
    #[must_use]
    pub fn with_compression(mut self, enabled: bool) -> Self {
        self.compression = enabled;
        self
    }

    /// Treats an open connection that delivers nothing (not even a heartbeat) for this long as
    /// dead and reconnects (`None`, the default: wait for the server or the network).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let source = ssehub::client::EventSource::new("http://127.0.0.1/events")?
    ///     .with_idle_timeout(Some(Duration::from_secs(45)));
    /// # drop(source);
    /// # Ok::<(), ssehub::client::ClientError>(())
    /// ```
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Starts connecting on the current Tokio runtime; the returned stream yields what arrives.
    /// Dropping it closes the connection.
    ///
    /// # Errors
    ///
    /// [`ClientError::NoRuntime`] outside a Tokio runtime; [`ClientError::Tls`] when
    /// [`with_native_roots`](Self::with_native_roots) was asked for and the system's store
    /// has no usable certificate.
    ///
    /// # Examples
    ///
    /// ```
    /// let source = ssehub::client::EventSource::new("http://127.0.0.1:9/events")?;
    /// assert_eq!(source.connect().err(), Some(ssehub::client::ClientError::NoRuntime));
    /// # Ok::<(), ssehub::client::ClientError>(())
    /// ```
    pub fn connect(self) -> Result<Events, ClientError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let client = self.http_client()?;
        // A small buffer: a slow consumer stops the reading, and TCP pushes back on the server.
        let (tx, rx) = mpsc::channel(64);
        let task = handle.spawn(self.run(client, tx));
        Ok(Events { rx, task })
    }

    /// The connection loop: connect, read, reconnect, until told to stop or the consumer leaves.
    async fn run(self, client: HttpClient, tx: mpsc::Sender<Result<ClientEvent, ClientError>>) {
        let mut parser = Parser::with_limits(self.limits.0, self.limits.1);
        let mut last_event_id = self.last_event_id.clone().unwrap_or_default();
        let mut failures = 0u32;
        let mut random = Jitter::new();
        loop {
            let (reason, retry_after) =
                match self.attempt(&client, &mut parser, &last_event_id, &tx).await {
                    Attempt::Stop => return,
                    Attempt::Lost { reason, opened, retry_after } => {
                        if opened {
                            failures = 0;
                        }
                        (reason, retry_after)
                    }
                };
            if !parser.last_event_id().is_empty() {
                last_event_id = parser.last_event_id().to_string();
            }
            failures += 1;
            if self.max_retries.is_some_and(|max| failures > max) {
                let _ =
                    tx.send(Err(ClientError::GaveUp { attempts: failures, last: reason })).await;
                return;
            }
            let delay = retry_after.unwrap_or_else(|| {
                self.backoff.delay(parser.reconnection_time(), failures, random.next())
            });
            let notice =
                ClientEvent::Reconnecting { delay, reason, last_event_id: last_event_id.clone() };
            if tx.send(Ok(notice)).await.is_err() {
                return;
            }
            tokio::time::sleep(delay).await;
            parser.reset();
        }
    }

    /// The HTTP client of every attempt: TCP with `TCP_NODELAY`, and for `https://` rustls
    /// with ALPN `h2` then `http/1.1`.
    fn http_client(&self) -> Result<HttpClient, ClientError> {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(self.connect_timeout));
        tcp.set_nodelay(true);
        // The TLS layer above decides the scheme.
        tcp.enforce_http(false);
        let tls = rustls::ClientConfig::builder_with_provider(PlainArc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(self.roots.store()?)
        .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        Ok(Client::builder(TokioExecutor::new()).build(connector))
    }

    /// One connection, from request to end of stream.
    async fn attempt(
        &self,
        client: &HttpClient,
        parser: &mut Parser,
        last_event_id: &str,
        tx: &mpsc::Sender<Result<ClientEvent, ClientError>>,
    ) -> Attempt {
        let mut request = Request::get(self.url.clone()).body(Empty::new()).unwrap_or_default();
        let headers = request.headers_mut();
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let asked = if self.compression { "zstd, gzip" } else { "identity" };
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static(asked));
        for name in self.headers.keys() {
            headers.remove(name);
        }
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        if !last_event_id.is_empty() {
            if let Ok(value) = HeaderValue::from_str(last_event_id) {
                headers.insert("last-event-id", value);
            }
        }
        let response =
            match tokio::time::timeout(self.connect_timeout, client.request(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => return Attempt::lost(connect_error(&error), false, None),
                Err(_) => return Attempt::lost("no response head in time".into(), false, None),
            };
        let status = response.status();
        let stop = |error| async move {
            let _ = tx.send(Err(error)).await;
            Attempt::Stop
        };
        if status == StatusCode::NO_CONTENT {
            return stop(ClientError::NoContent).await;
        }
        if status != StatusCode::OK {
            let retryable = matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504);
            if !retryable {
                return stop(ClientError::Status(status.as_u16())).await;
            }
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Attempt::lost(format!("status {}", status.as_u16()), false, retry_after);
        }
        let content_type =
            response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("text/event-stream") {
            return stop(ClientError::ContentType(content_type.to_string())).await;
        }
        let encoding = response.headers().get(CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?"));
        let mut decoder = match Decoder::for_encoding(encoding) {
            Ok(decoder) => decoder,
            Err(error) => return stop(error).await,
        };
        if tx.send(Ok(ClientEvent::Open)).await.is_err() {
            return Attempt::Stop;
        }
        let mut body = response.into_body();
        let mut events = Vec::new();
        let mut piece = Vec::new();
        loop {
            let next = match self.idle_timeout {
                Some(limit) => match tokio::time::timeout(limit, body.frame()).await {
                    Ok(next) => next,
                    Err(_) => return Attempt::lost("idle timeout".into(), true, None),
                },
                None => body.frame().await,
            };
            let chunk = match next {
                None => return Attempt::lost("end of stream".into(), true, None),
                Some(Err(error)) => return Attempt::lost(format!("read: {error}"), true, None),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
            };
            if decoder.is_identity() {
                if let Some(stop_now) = feed(parser, &chunk, &mut events, tx).await {
                    return stop_now;
                }
                continue;
            }
            let mut at = 0;
            loop {
                let more = match decoder.next_piece(&chunk, &mut at, &mut piece) {
                    Ok(more) => more,
                    Err(error) => return stop(error).await,
                };
                if let Some(stop_now) = feed(parser, &piece, &mut events, tx).await {
                    return stop_now;
                }
                if !more {
                    break;
                }
            }
        }
    }
}

/// Parses `bytes` and sends the events; `Some` when the attempt is over (the receiver is
/// gone, or the input broke the parser's caps: then the events before the fault are sent, and
/// the error).
async fn feed(
    parser: &mut Parser,
    bytes: &[u8],
    events: &mut Vec<ParsedEvent>,
    tx: &mpsc::Sender<Result<ClientEvent, ClientError>>,
) -> Option<Attempt> {
    let parsed = parser.feed(bytes, events);
    for event in events.drain(..) {
        if tx.send(Ok(ClientEvent::Message(event))).await.is_err() {
            return Some(Attempt::Stop);
        }
    }
    match parsed {
        Ok(()) => None,
        Err(error) => {
            // Hostile or broken input: stop rather than grow or loop.
            let _ = tx.send(Err(ClientError::Parse(error))).await;
            Some(Attempt::Stop)
        }
    }
}

impl Roots {
    /// The trusted certificates.
    fn store(&self) -> Result<rustls::RootCertStore, ClientError> {
        let mut store = rustls::RootCertStore::empty();
        if self.native {
            let loaded = rustls_native_certs::load_native_certs();
            // A store with some unreadable entries is still the system's store; one with none
            // would fail every handshake, so that is reported at once.
            let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = loaded.errors.first().map_or_else(String::new, |e| format!(": {e}"));
                return Err(ClientError::Tls(format!(
                    "no root certificate in the system store{why}"
                )));
            }
        } else {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for certificate in &self.extra {
            store.add(certificate.clone()).map_err(|e| ClientError::Tls(e.to_string()))?;
        }
        Ok(store)
    }
}

/// Why a connection could not be made, with the cause's chain (hyper's own message is only
/// "client error (Connect)"; the TLS reason, such as an unknown issuer, is below it).
fn connect_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("connect: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How one attempt ended.
enum Attempt {
    /// For good (an error was sent, or the consumer left).
    Stop,
    /// The connection is lost; reconnect.
    Lost {
        /// Why.
        reason: String,
        /// Whether it had been established (resets the failure count).
        opened: bool,
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
}

impl Attempt {
    /// A lost connection.
    fn lost(reason: String, opened: bool, retry_after: Option<Duration>) -> Attempt {
        Attempt::Lost { reason, opened, retry_after }
    }
}

/// A small random source for jitter (xorshift, seeded by the OS).
struct Jitter(u64);

impl Jitter {
    /// A generator with a random seed.
    fn new() -> Jitter {
        let mut seed = [0u8; 8];
        // A fixed seed only makes clients' jitter alike; it never breaks the client.
        let _ = getrandom::fill(&mut seed);
        Jitter(u64::from_le_bytes(seed) | 1)
    }

    /// A number in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The events of an [`EventSource`]: a [`Stream`] of [`ClientEvent`]s, ending after a
/// [`ClientError`].
pub struct Events {
    /// What the connection task sends.
    rx: mpsc::Receiver<Result<ClientEvent, ClientError>>,
    /// The connection task, aborted on drop.
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Stream for Events {
    type Item = Result<ClientEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_prefers_the_server_and_doubles_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 0.0);
        assert_eq!(b.delay(None, 1, 0.5), Duration::from_millis(100));
        assert_eq!(b.delay(Some(300), 1, 0.5), Duration::from_millis(300));
        assert_eq!(b.delay(None, 3, 0.5), Duration::from_millis(400));
        assert_eq!(b.delay(None, 30, 0.5), Duration::from_secs(1));
        let jittered = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 0.5);
        assert_eq!(jittered.delay(None, 1, 0.999), Duration::from_millis(100).mul_f64(1.4995));
    }

    #[test]
    fn only_http_and_https_urls() {
        assert!(EventSource::new("https://example.invalid/").is_ok());
        assert!(matches!(
            EventSource::new("ftp://example.invalid/"),
            Err(ClientError::InvalidUrl(_))
        ));
        assert!(matches!(EventSource::new("https:///path"), Err(ClientError::InvalidUrl(_))));
        assert!(matches!(EventSource::new("/relative"), Err(ClientError::InvalidUrl(_))));
        assert!(matches!(
            EventSource::new("http://127.0.0.1/").and_then(|s| s.with_header("bad header", "x")),
            Err(ClientError::InvalidHeader(_))
        ));
    }

    #[test]
    fn a_root_certificate_must_be_pem() {
        let source = || EventSource::new("https://example.invalid/").expect("valid url");
        assert!(matches!(source().with_root_certificate(b""), Err(ClientError::Tls(_))));
        let broken = b"-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n";
        assert!(matches!(source().with_root_certificate(broken), Err(ClientError::Tls(_))));
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::new();
        for _ in 0..1000 {
            let x = j.next();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
