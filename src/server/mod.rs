//! The native SSE listener (feature `server`): ssehub's own accept loop.
//!
//! It reads the request head with `httparse` (size limit, header-read timeout, 400/404/405/431
//! for bad requests), asks the same [`Endpoint`] as the axum and hyper adapters (resolver,
//! limits, CORS), answers the SSE response head, and then owns the socket: no HTTP library state
//! stays behind. Each connection's task waits for its subscription's next batch and writes it
//! with one vectored write (one `IoSlice` per shared frame, up to the hub's batch cap), so a
//! burst costs one system call, and it watches the socket for the peer closing. Requests for
//! other paths go to an optional fallback (an axum `Router`, served by hyper on the same
//! connection, one request at a time, kept alive and pipelined, each body read within a
//! deadline and a size limit) or get 404; the listener reads every request head itself, so a
//! stream request after fallback requests on one connection is still served here.
//!
//! The body of a stream is delimited by closing the connection (no chunked encoding, so no
//! per-write framing); the response carries `connection: close`.
//!
//! Before a connection costs a task or a request read, two optional admission checks run in the
//! accept loop: an accept rate limit ([`Server::with_accept_rate`], 503) and a cap on
//! connections per client address ([`Server::with_max_connections_per_ip`], 429), both
//! answered with `Retry-After`, so a reconnect storm or a flood from one address is turned away
//! cheaply. A request target over 65,534 bytes is 414; a head over the limit is 431.

mod admission;
#[cfg(feature = "axum")]
mod fallback;
#[cfg(feature = "rustls")]
mod h2;
mod listen;
mod request;
#[cfg(feature = "axum")]
mod rewind;
#[cfg(feature = "rustls")]
mod tls;

#[cfg(feature = "rustls")]
pub use crate::error::TlsError;
pub use listen::{listen, DEFAULT_BACKLOG};
#[cfg(feature = "rustls")]
pub use tls::TlsConfig;

use crate::sync::PlainArc as StdArc;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Buf;
use http::header::{CONNECTION, CONTENT_LENGTH};
use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::adapters::accept::{accept, Backoff};
use crate::adapters::endpoint::{Events, Reply};
use crate::adapters::resolve::Resolver;
use crate::adapters::Endpoint;
use crate::engine::batch::Batch;
use crate::engine::stats::{Sample, StreamEnd};
use crate::error::EndReason;
use crate::sync::Arc;
use admission::{Bucket, IpSlot, PerIp, Rate};
use request::{read_head, BodyLimits, Head, HeadError, HeadLimits};

#[cfg_attr(
    not(feature = "axum"),
    allow(dead_code, reason = "the fallback (feature `axum`) reads it")
)]
/// A request the listener read the head of and hands to the fallback.
#[derive(Debug)]
pub(crate) struct Exchange<IO> {
    /// The connection.
    pub(crate) socket: IO,
    /// The head, and every byte read after it.
    pub(crate) head: Head,
    /// The body's limits.
    pub(crate) body: BodyLimits,
}

/// The connection after a fallback request, when it may serve another: the socket and the
/// bytes already read past the request (the start of a pipelined next request).
pub(crate) type Kept<IO> = Option<(IO, Vec<u8>)>;

/// A type-erased fallback: serves one request the listener did not take, and hands the
/// connection back if it may serve another. One per kind of connection (plain TCP, TLS), so
/// each is compiled for its IO and the plaintext one reads the socket directly.
type Fallback<IO = TcpStream> = StdArc<
    dyn Fn(Exchange<IO>) -> std::pin::Pin<Box<dyn Future<Output = Kept<IO>> + Send>> + Send + Sync,
>;

/// A connection the listener reads requests from and writes answers to: a TCP socket, or a
/// TLS stream over one.
pub(crate) trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket underneath (for its address and socket options).
    fn tcp(&self) -> &TcpStream;
}

impl Conn for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

#[cfg(feature = "rustls")]
impl Conn for tls::Tls {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// The TLS side of a listener: the configuration, and the fallback as TLS connections reach it.
#[cfg(feature = "rustls")]
#[derive(Clone, Default)]
struct TlsSide {
    /// The configuration; `None`: plaintext.
    config: Option<TlsConfig>,
    /// The fallback for HTTP/1.1 over TLS.
    fallback: Option<Fallback<tls::Tls>>,
    /// The fallback's router, for HTTP/2 (hyper serves the whole connection).
    #[cfg(feature = "axum")]
    router: Option<::axum::Router>,
}

/// ssehub's own SSE listener: serves an [`Endpoint`] at one path, owning each socket after the
/// request.
///
/// # Examples
///
/// ```
/// use ssehub::server::Server;
/// use ssehub::{Endpoint, Event, Hub};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = Hub::builder().with_heartbeat(None).build();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// tokio::spawn(Server::new(Endpoint::new(hub.clone())).with_path("/events").serve(listener));
///
/// let mut client = tokio::net::TcpStream::connect(addr).await?;
/// client.write_all(b"GET /events?topic=news HTTP/1.1\r\nhost: x\r\n\r\n").await?;
/// let mut buf = vec![0; 4096];
/// let n = client.read(&mut buf).await?;
/// assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
/// while hub.topic_subscriber_count("news") == 0 {
///     tokio::task::yield_now().await;
/// }
/// hub.publish("news", Event::new("hello"))?;
/// let n = client.read(&mut buf).await?;
/// assert_eq!(&buf[..n], b"data: hello\n\n");
/// # Ok(())
/// # }
/// ```
pub struct Server<R> {
    /// Everything a connection needs, shared.
    inner: StdArc<Inner<R>>,
}

/// The listener's settings.
struct Inner<R> {
    /// The SSE endpoint.
    endpoint: Endpoint<R>,
    /// The path the endpoint is served at; `None` for every path.
    path: Option<String>,
    /// Request head limits.
    head: HeadLimits,
    /// Request body limits (fallback requests; a stream request has no body).
    body: BodyLimits,
    /// Longest a write may stay blocked before the peer is considered gone.
    write_timeout: Duration,
    /// `SO_SNDBUF` of each stream's socket; `None` leaves the kernel's autotuning.
    send_buffer: Option<usize>,
    /// Where other paths go.
    fallback: Option<Fallback>,
    /// The runtime fallback requests are served on; `None`: the listener's.
    fallback_runtime: Option<tokio::runtime::Handle>,
    /// The accept rate limit, if any.
    accept_rate: Option<Rate>,
    /// Most connections open at once from one client address, if limited.
    max_per_ip: Option<usize>,
    /// Connections open per client address (kept only while `max_per_ip` is set).
    per_ip: Arc<PerIp>,
    /// TLS, if served.
    #[cfg(feature = "rustls")]
    tls: TlsSide,
}

impl<R> Clone for Server<R> {
    fn clone(&self) -> Self {
        Server { inner: self.inner.clone() }
    }
}

impl<R> fmt::Debug for Server<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Server");
        debug
            .field("endpoint", &self.inner.endpoint)
            .field("path", &self.inner.path)
            .field("head", &self.inner.head)
            .field("body", &self.inner.body)
            .field("write_timeout", &self.inner.write_timeout)
            .field("send_buffer", &self.inner.send_buffer)
            .field("fallback", &self.inner.fallback.is_some())
            .field("fallback_runtime", &self.inner.fallback_runtime.is_some())
            .field("accept_rate", &self.inner.accept_rate)
            .field("max_per_ip", &self.inner.max_per_ip)
            .field("addresses", &self.inner.per_ip.addresses());
        #[cfg(feature = "rustls")]
        debug.field("tls", &self.inner.tls.config);
        debug.finish()
    }
}

impl<R: Resolver> Server<R> {
    /// A listener for `endpoint` at every path, with 8 KiB request heads read within 10 s, and a
    /// 30 s write timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = ssehub::server::Server::new(ssehub::Endpoint::new(ssehub::Hub::new()));
    /// # drop(server);
    /// ```
    #[must_use]
    pub fn new(endpoint: Endpoint<R>) -> Self {
        Server {
            inner: StdArc::new(Inner {
                endpoint,
                path: None,
                head: HeadLimits { max_bytes: 8 * 1024, timeout: Duration::from_secs(10) },
                body: BodyLimits { max_bytes: 1024 * 1024, timeout: Duration::from_secs(10) },
                write_timeout: Duration::from_secs(30),
                send_buffer: None,
                fallback: None,
                fallback_runtime: None,
                accept_rate: None,
                max_per_ip: None,
                per_ip: Arc::new(PerIp::default()),
                #[cfg(feature = "rustls")]
                tls: TlsSide::default(),
            }),
        }
    }

    /// Serves the endpoint only at `path` (other paths: the fallback, or 404).
    ///
    /// # Examples
    ///
    /// ```
    /// let server = ssehub::server::Server::new(ssehub::Endpoint::new(ssehub::Hub::new())).with_path("/events");
    /// # drop(server);
    /// ```
    #[must_use]
    pub fn with_path(self, path: impl Into<String>) -> Self {
        self.map(|inner| inner.path = Some(path.into()))
    }

    /// The largest request head accepted (431 beyond) and the longest wait for it (the
    /// connection is closed after it, which also ends a slowloris client).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let server = ssehub::server::Server::new(ssehub::Endpoint::new(ssehub::Hub::new()))
    ///     .with_head_limits(4096, Duration::from_secs(5));
    /// # drop(server);
    /// ```
    #[must_use]
    pub fn with_head_limits(self, max_bytes: usize, timeout: Duration) -> Self {
        self.map(|inner| inner.head = HeadLimits { max_bytes: max_bytes.max(64), timeout })
    }

    /// How long a write may stay blocked (a peer that vanished without closing, or a zero TCP
    /// window) before the connection is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let server = ssehub::server::Server::new(ssehub::Endpoint::new(ssehub::Hub::new()))
    ///     .with_write_timeout(Duration::from_secs(10));
    /// # drop(server);
    /// ```
    #[must_use]
    pub fn with_write_timeout(self, timeout: Duration) -> Self {
        self.map(|inner| inner.write_timeout = timeout)
    }

    /// Fixes each stream's kernel send buffer (`SO_SNDBUF`) at `bytes`, instead of leaving it
    /// to the kernel's autotuning. Off by default.
    ///
    /// Events a client has not taken wait in two places: its queue in the hub, which the
    /// slow-client policy bounds, and the socket's send buffer, which the kernel grows as it sees
    /// fit (on Linux up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default, per connection).
    /// While the kernel takes a stalled client's writes, the hub cannot see that it is stalled:
    /// every event still costs a write to it, its data costs kernel memory, and the policy acts
    /// only once that buffer is full. A small fixed buffer (tens of KiB are ample for a feed of
    /// small events) bounds both, so a stalled client stops being written to within a few
    /// dozen events and is then dropped by the hub's bound or the
    /// [write timeout](Self::with_write_timeout). The cost: one connection's throughput is
    /// capped near `bytes` per round trip, which matters for a large replay over a
    /// long-distance link. Linux doubles the value for its bookkeeping and caps it at
    /// `net.core.wmem_max`; a value the kernel refuses leaves the socket as it was.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = ssehub::server::Server::new(ssehub::Endpoint::new(ssehub::Hub::new()))
    ///     .with_send_buffer(32 * 1024);
    /// # drop(server);
    /// ```
    #[must_use]
    pub fn with_send_buffer(self, bytes: usize) -> Self {
        self.map(|inner| inner.send_buffer = Some(bytes))
    }

    /// Accepts at most `per_second` connections a second on average, and at most `burst` at once
    /// after a quiet spell (a token bucket); beyond, a connection is answered at once with 503
    /// and the endpoint's [`Retry-After`](Endpoint::with_retry_after), without reading its
    /// request or asking the resolver. Off by default.
    ///
    /// This bounds the work a reconnect storm (thousands of clients in the same second) or a
    /// connection flood can start at once; clients that are turned away retry later. Values
    /// below one are taken as one.
    ///
    /// # Examples
    ///
    /// ```
    /// // 500 new connections a second, bursts of up to 1,000.
    /// let server = ssehub::server::Server::new(ssehub::Endpoint::new(ssehub::Hub::new()))
    ///     .with_accept_rate(500, 1_000);
    /// # drop(server);
    /// ```
    #[must_use]
    pub fn with_accept_rate(self, per_second: u32, burst: u32) -> Self {
        let rate =
            Rate { per_second: f64::from(per_second.max(1)), burst: f64::from(burst.max(1)) };
        self.map(|inner| inner.accept_rate = Some(rate))
    }

    /// At most `count` connections open at once from one client IP address (streams, requests
    /// being read, and fallback requests alike); beyond, a connection is answered at once with
    /// 429 and the endpoint's [`Retry-After`](Endpoint::with_retry_after). Off by default.
    ///
    /// Clients behind one proxy or NAT share an address: set the cap with that in mind. Values
    /// below one are taken as one.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = ssehub::server::Server::new(ssehub::Endpoint::new(ssehub::Hub::new()))
    ///     .with_max_connections_per_ip(64);
    /// # drop(server);
    /// ```
    #[must_use]
    pub fn with_max_connections_per_ip(self, count: usize) -> Self {
        self.map(|inner| inner.max_per_ip = Some(count.max(1)))
    }

    /// The largest request body a [fallback](Self::with_fallback) request may have, and the
    /// longest wait for all of it after its head. Defaults: 1 MiB, 10 s.
    ///
    /// A `Content-Length` over `max_bytes` is answered 413 before anything of the body is read;
    /// a body that grows past it (chunked) is cut and answered 413; one that has not fully
    /// arrived `timeout` after its head is answered 408. Each closes the connection (the rest of
    /// the body is not read), so a client that announces a body and stalls holds a connection
    /// for at most `timeout`, not until it leaves.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// // Publishes of up to 64 KiB, sent within 5 s.
    /// let server = ssehub::server::Server::new(ssehub::Endpoint::new(ssehub::Hub::new()))
    ///     .with_body_limits(64 * 1024, Duration::from_secs(5));
    /// # drop(server);
    /// ```
    #[must_use]
    pub fn with_body_limits(self, max_bytes: u64, timeout: Duration) -> Self {
        self.map(|inner| inner.body = BodyLimits { max_bytes, timeout })
    }

    /// Serves requests for other paths with an axum `Router` (through hyper, on the same
    /// connection), so one port carries the stream and the rest of an application.
    ///
    /// Connections are kept alive and may pipeline: the listener reads every request head
    /// itself and hands hyper one request at a time (its head and body, nothing more), so a
    /// client's next request on the connection, perhaps the stream, comes back to the listener
    /// and is served natively. Between requests the connection waits at most the head timeout
    /// ([`with_head_limits`](Self::with_head_limits)). `Connection: close`, an HTTP/1.0
    /// request, a chunked body or a response with `connection: close` end the connection after
    /// that response. Bodies are read within [`with_body_limits`](Self::with_body_limits).
    ///
    /// # Examples
    ///
    /// ```
    /// use axum::routing::get;
    /// let app = axum::Router::new().route("/health", get(|| async { "ok" }));
    /// let server = ssehub::server::Server::new(ssehub::Endpoint::new(ssehub::Hub::new()))
    ///     .with_path("/events")
    ///     .with_fallback(app);
    /// # drop(server);
    /// ```
    #[cfg(feature = "axum")]
    #[must_use]
    pub fn with_fallback(self, router: ::axum::Router) -> Self {
        #[cfg(feature = "rustls")]
        let (tls_router, tls_fallback) = {
            let routed = router.clone();
            let fallback: Fallback<tls::Tls> =
                StdArc::new(move |exchange| Box::pin(fallback::serve(routed.clone(), exchange)));
            (router.clone(), fallback)
        };
        let fallback: Fallback =
            StdArc::new(move |exchange| Box::pin(fallback::serve(router.clone(), exchange)));
        self.map(|inner| {
            inner.fallback = Some(fallback);
            #[cfg(feature = "rustls")]
            {
                inner.tls.fallback = Some(tls_fallback);
                inner.tls.router = Some(tls_router);
            }
        })
    }

    /// Serves [fallback](Self::with_fallback) requests on `runtime` instead of the listener's
    /// own: a connection moves there once it sends a fallback request, and comes back if it
    /// then asks for the stream.
    ///
    /// With many streams, the listener's runtime is busy writing to them, and a request (a
    /// publish) waits in its run queue behind thousands of stream tasks; on a runtime of its
    /// own, a thread that is mostly idle, it is read, answered and written at once. The cost:
    /// two reactor registrations per connection that moves (none per request).
    ///
    /// # Examples
    ///
    /// ```
    /// // A thread of its own, running a single-threaded runtime for the publish API.
    /// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// let handle = runtime.handle().clone();
    /// std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));
    /// let server = ssehub::server::Server::new(ssehub::Endpoint::new(ssehub::Hub::new()))
    ///     .with_fallback_runtime(handle);
    /// # drop(server);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn with_fallback_runtime(self, runtime: tokio::runtime::Handle) -> Self {
        self.map(|inner| inner.fallback_runtime = Some(runtime))
    }

    /// Serves HTTPS with `tls`: every connection starts with a TLS handshake, which must end
    /// within the head timeout ([`with_head_limits`](Self::with_head_limits)); one that fails
    /// (bytes that are not TLS, a client refusing the certificate) or runs out of time closes
    /// the connection, counted as refused (`reason`: `tls_handshake`, `tls_handshake_timeout`).
    ///
    /// ALPN decides the rest. `h2`: the connection is served by hyper's HTTP/2 server, the
    /// endpoint's streams (each batch one `DATA` frame) and the
    /// [fallback](Self::with_fallback) alike, so a browser's `EventSource`s to one origin share
    /// one connection. `http/1.1` (or no ALPN): the listener's own request reading, fallback
    /// and stream, each batch handed to rustls as one vectored write and flushed. The
    /// [`TlsConfig`] is read at each accept, so a [reload](TlsConfig::reload) applies to the
    /// next connection.
    ///
    /// Over TLS, a connection the accept rate limit or the per-address cap turns away is closed
    /// without an answer (answering would cost the handshake the limit is there to spare), and
    /// fallback requests stay on the listener's runtime
    /// ([`with_fallback_runtime`](Self::with_fallback_runtime) moves plaintext connections only).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use ssehub::server::{Server, TlsConfig};
    /// use ssehub::{Endpoint, Hub};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tls = TlsConfig::from_pem_files("/etc/ssehub/cert.pem", "/etc/ssehub/key.pem")?;
    /// let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
    /// Server::new(Endpoint::new(Hub::new())).with_path("/events").with_tls(tls).serve(listener).await;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "rustls")]
    #[must_use]
    pub fn with_tls(self, tls: TlsConfig) -> Self {
        self.map(|inner| inner.tls.config = Some(tls))
    }

    /// Applies a settings change (settings are fixed once serving starts).
    fn map(self, change: impl FnOnce(&mut Inner<R>)) -> Self {
        match StdArc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                change(&mut inner);
                Server { inner: StdArc::new(inner) }
            }
            Err(shared) => {
                let mut inner = Inner {
                    endpoint: shared.endpoint.clone(),
                    path: shared.path.clone(),
                    head: shared.head,
                    body: shared.body,
                    write_timeout: shared.write_timeout,
                    send_buffer: shared.send_buffer,
                    fallback: shared.fallback.clone(),
                    fallback_runtime: shared.fallback_runtime.clone(),
                    accept_rate: shared.accept_rate,
                    max_per_ip: shared.max_per_ip,
                    per_ip: shared.per_ip.clone(),
                    #[cfg(feature = "rustls")]
                    tls: shared.tls.clone(),
                };
                change(&mut inner);
                Server { inner: StdArc::new(inner) }
            }
        }
    }

    /// Accepts connections until the future is dropped.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops accepting; connections already accepted run on until their
    /// stream ends (at the latest when the hub shuts down).
    ///
    /// # Examples
    ///
    /// See [`Server`].
    pub async fn serve(self, listener: TcpListener) {
        self.serve_with_shutdown(listener, std::future::pending()).await;
    }

    /// Accepts connections until `signal` resolves.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let server = ssehub::server::Server::new(ssehub::Endpoint::new(ssehub::Hub::new()));
    /// server.serve_with_shutdown(listener, async {}).await; // returns at once
    /// # Ok(())
    /// # }
    /// ```
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()>,
    ) {
        tokio::pin!(signal);
        let mut bucket = self.inner.accept_rate.map(Bucket::new);
        let mut backoff = Backoff::default();
        loop {
            let (socket, peer) = tokio::select! {
                accepted = accept(&listener, &mut backoff) => accepted,
                () = &mut signal => return,
            };
            let retry_after = self.inner.endpoint.retry_after();
            if bucket.as_mut().is_some_and(|bucket| !bucket.take(Instant::now())) {
                crate::adapters::log!(debug, %peer, "accept rate limit: refused with 503");
                refused("rate");
                self.refuse(
                    socket,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many new connections, retry later",
                    retry_after,
                );
                continue;
            }
            let slot = match self.inner.max_per_ip {
                None => None,
                Some(max) => match PerIp::take(&self.inner.per_ip, peer.ip(), max) {
                    Some(slot) => Some(slot),
                    None => {
                        crate::adapters::log!(
                            debug,
                            %peer,
                            "per-address cap: refused with 429"
                        );
                        refused("per_ip");
                        self.refuse(
                            socket,
                            StatusCode::TOO_MANY_REQUESTS,
                            "too many connections from this address, retry later",
                            retry_after,
                        );
                        continue;
                    }
                },
            };
            #[cfg(feature = "rustls")]
            if let Some(tls) = &self.inner.tls.config {
                tokio::spawn(self.clone().connection_tls(socket, slot, tls.current()));
                continue;
            }
            tokio::spawn(self.clone().connection(socket, slot));
        }
    }

    /// Turns a connection away at accept: answered with `status` on its own task, or, over
    /// TLS, closed at once.
    fn refuse(&self, socket: TcpStream, status: StatusCode, reason: &'static str, retry: u64) {
        #[cfg(feature = "rustls")]
        if self.inner.tls.config.is_some() {
            drop(socket);
            return;
        }
        tokio::spawn(admission::refuse(socket, status, reason, retry));
    }

    /// One TLS connection: the handshake, then HTTP/2 or the HTTP/1.1 requests and stream, as
    /// ALPN chose. `_slot` holds its place in the per-address count until it ends (an `async
    /// fn` keeps its arguments until it returns).
    #[cfg(feature = "rustls")]
    async fn connection_tls(
        self,
        socket: TcpStream,
        _slot: Option<IpSlot>,
        config: StdArc<rustls::ServerConfig>,
    ) {
        let inner = &self.inner;
        let Some(tls) = tls::handshake(socket, config, inner.head.timeout).await else {
            return;
        };
        if tls::is_h2(&tls) {
            let routes = h2::Routes {
                endpoint: inner.endpoint.clone(),
                path: inner.path.clone(),
                #[cfg(feature = "axum")]
                router: inner.tls.router.clone(),
                body: inner.body,
            };
            h2::serve(tls, routes, inner.write_timeout, inner.head.max_bytes).await;
            return;
        }
        let requests = Requests {
            path: inner.path.clone(),
            fallback: inner.tls.fallback.clone(),
            head: inner.head,
            body: inner.body,
        };
        // Boxed like the plaintext request phase: its buffers go before the stream starts.
        let Some((mut tls, head)) = Box::pin(requests.serve(tls)).await else { return };
        let Some(events) = Box::pin(self.respond(&mut tls, head)).await else { return };
        let _ = tls::stream(tls, events, inner.write_timeout).await;
    }

    /// One connection: the request, then the stream or a refusal. `slot` holds its place in
    /// the per-address count until it ends.
    ///
    /// The task's state is every idle connection's memory, so it is built by hand rather than
    /// as an `async fn` (which keeps its arguments twice): the request phase is boxed, with its
    /// buffers, the resolver's future and timers, and freed before the stream starts; what
    /// stays is the stream's own future.
    fn connection(
        self,
        socket: TcpStream,
        slot: Option<IpSlot>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let request = Box::pin(self.request(socket));
        async move {
            // Captured (moved into the task), so the place is held until the task ends.
            let _ = &slot;
            if let Some(stream) = request.await {
                // However it ends (the peer, the hub, or an I/O error), the connection closes;
                // the listener's own drops are logged where they happen.
                let _ = stream.await;
            }
        }
    }

    /// Reads and answers the connection's requests: fallback requests one after the other
    /// while the connection is kept alive, then a stream request or a refusal; for a stream,
    /// writes the response head and returns the stream's future.
    async fn request(
        self,
        socket: TcpStream,
    ) -> Option<impl Future<Output = io::Result<()>> + Send + 'static> {
        let inner = &self.inner;
        let requests = Requests {
            path: inner.path.clone(),
            fallback: inner.fallback.clone(),
            head: inner.head,
            body: inner.body,
        };
        let (mut socket, head) = match &inner.fallback_runtime {
            None => requests.serve(socket).await?,
            Some(runtime) => {
                // The connection moves to the fallback's runtime (its socket registered with
                // that runtime's reactor) for as long as it carries fallback requests; the
                // stream, if one is asked for, comes back to this one.
                let socket = socket.into_std().ok()?;
                let (socket, head) = runtime
                    .spawn(async move {
                        let (socket, head) =
                            requests.serve(TcpStream::from_std(socket).ok()?).await?;
                        Some((socket.into_std().ok()?, head))
                    })
                    .await
                    .ok()??;
                (TcpStream::from_std(socket).ok()?, head)
            }
        };
        let events = self.respond(&mut socket, head).await?;
        Some(stream(socket, events, inner.write_timeout))
    }

    /// Answers a request for the endpoint: for a stream, writes the response head and returns
    /// the events to stream; otherwise writes the refusal and closes.
    async fn respond<IO: Conn>(&self, socket: &mut IO, head: Head) -> Option<Events> {
        let inner = &self.inner;
        if request::has_body(&head.parts) {
            let reason = b"a request body is not accepted";
            let _ = write_plain(socket, StatusCode::BAD_REQUEST, &HeaderMap::new(), reason).await;
            return None;
        }
        let (parts, reply) = inner.endpoint.answer(&head.parts).await.into_parts();
        match reply {
            Reply::Stream(events) => {
                if let Some(bytes) = inner.send_buffer {
                    // Best effort, like `TCP_NODELAY`: a refused size leaves the kernel's
                    // default.
                    let _ = socket2::SockRef::from(socket.tcp()).set_send_buffer_size(bytes);
                }
                let mut head = response_head(StatusCode::OK, &parts.headers);
                head.extend_from_slice(b"\r\n");
                // A client that does not take even the head within the write timeout is gone;
                // dropping `events` unsubscribes it. The flush is a no-op on a TCP socket and
                // sends the record rustls holds on a TLS one.
                let written = async {
                    socket.write_all(&head).await?;
                    socket.flush().await
                };
                match tokio::time::timeout(inner.write_timeout, written).await {
                    Ok(Ok(())) => Some(events),
                    Ok(Err(_)) => None,
                    Err(_) => {
                        dropped(socket.tcp(), "write-deadline");
                        None
                    }
                }
            }
            Reply::Text(body) => {
                let _ = write_plain(socket, parts.status, &parts.headers, &body).await;
                None
            }
            Reply::Empty => {
                let _ = write_plain(socket, parts.status, &parts.headers, b"").await;
                None
            }
        }
    }
}

/// What reading a connection's requests needs: the stream's path, the fallback and the limits.
struct Requests<IO> {
    /// The path the endpoint is served at; `None` for every path.
    path: Option<String>,
    /// Where other paths go.
    fallback: Option<Fallback<IO>>,
    /// Request head limits.
    head: HeadLimits,
    /// Request body limits.
    body: BodyLimits,
}

impl<IO: Conn> Requests<IO> {
    /// Reads requests, handing each fallback request to the fallback while the connection is
    /// kept, until a request for the endpoint: returns it with the socket. `None` when the
    /// connection ended or was refused.
    async fn serve(self, mut socket: IO) -> Option<(IO, Head)> {
        let mut buffered = Vec::new();
        loop {
            let head = match read_head(&mut socket, buffered, self.head).await {
                Ok(head) => head,
                Err(HeadError::Gone) => return None,
                Err(HeadError::Refuse(status, reason)) => {
                    let _ = write_plain(&mut socket, status, &HeaderMap::new(), reason.as_bytes())
                        .await;
                    return None;
                }
            };
            if self.path.as_deref().is_none_or(|path| head.parts.uri.path() == path) {
                return Some((socket, head));
            }
            let Some(fallback) = &self.fallback else {
                let _ = write_plain(
                    &mut socket,
                    StatusCode::NOT_FOUND,
                    &HeaderMap::new(),
                    b"not found",
                )
                .await;
                return None;
            };
            (socket, buffered) = fallback(Exchange { socket, head, body: self.body }).await?;
        }
    }
}

/// Counts a connection refused at accept (`reason`: `rate` or `per_ip`).
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
fn refused(reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("ssehub_connections_refused_total", "reason" => reason).increment(1);
}

/// Writes a complete response with a body and closes.
async fn write_plain<IO: AsyncWrite + Unpin>(
    socket: &mut IO,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> io::Result<()> {
    let mut out = response_head(status, headers);
    out.extend_from_slice(format!("{CONTENT_LENGTH}: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    socket.write_all(&out).await?;
    socket.shutdown().await
}

/// The status line and headers, with `connection: close`, without the final CRLF.
fn response_head(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == CONNECTION || name == CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n");
    out
}

/// Most bytes a client may send after its request before it is disconnected (SSE clients send
/// nothing; anything more is a misbehaving or hostile peer).
const MAX_TRAILING_INPUT: usize = 4096;

/// Logs (with the `tracing` feature) a stream the listener ended: dropped as slow, or cut at
/// the write deadline. The peer's address is looked up here, on this rare path, rather than
/// kept in every connection's state.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
fn dropped(socket: &TcpStream, reason: &'static str) {
    #[cfg(feature = "tracing")]
    let peer = socket.peer_addr().ok();
    crate::adapters::log!(info, ?peer, reason, "stream dropped");
}

/// What a connection's task wakes up to do.
enum Step {
    /// Write the rest of a batch the socket refused (boxed: the step's storage is part of
    /// every connection's task, and this is the rare case), with what to record once it is
    /// written.
    Blocked(Box<(Batch, Sample)>),
    /// The hub dropped the subscriber as slow.
    Slow,
    /// The hub ended the subscription.
    Ended,
    /// The socket is readable (or failed): the peer closed, or sent something.
    Readable(io::Result<()>),
    /// A write failed.
    Failed(io::Error),
}

/// Streams `events` to the socket until the stream ends or the peer goes away.
///
/// This is the state every idle connection keeps, so nothing but the socket and the
/// subscription is held across an await: batches are written synchronously inside the poll
/// (the `IoSlice` array and the read probe live on the stack of that step, the batch too), and
/// only a write the socket refuses goes on in a boxed future, with its timer.
///
/// Every way out counts the stream's end by its reason (`ssehub_streams_ended_total`), and
/// every completed batch write records its size and latency (see [`Sample`]).
///
/// A plain function returning an `async move` block, not an `async fn`: an `async fn` keeps
/// its arguments twice in its state (as arguments and as the locals they are moved into).
#[allow(
    clippy::manual_async_fn,
    reason = "as an `async fn` the state measured 304 bytes instead of 176"
)]
fn stream(
    mut socket: TcpStream,
    mut events: Events,
    write_timeout: Duration,
) -> impl Future<Output = io::Result<()>> {
    async move {
        let mut trailing = 0usize;
        loop {
            // In a block, so nothing of the step outlives it into the blocked write's await.
            let blocked = {
                // The events first, and the socket's read readiness only when none are
                // waiting: a delivery then costs no readiness registration (a `readable()`
                // future in a `select!` would be created, registered and dropped again on
                // every batch), and the one waker slot `poll_read_ready` keeps per socket is
                // all an idle connection needs.
                let step = poll_fn(|cx| loop {
                    let step = match events.poll_batch(cx) {
                        Poll::Ready(Some(Ok(batch))) => {
                            let sample = Sample::of(&batch);
                            match write_now(&socket, batch) {
                                // Written: take the next batch, if any, in the same poll.
                                Ok(None) => {
                                    events.written(&sample);
                                    continue;
                                }
                                Ok(Some(rest)) => Step::Blocked(Box::new((rest, sample))),
                                Err(error) => Step::Failed(error),
                            }
                        }
                        Poll::Ready(Some(Err(_))) => Step::Slow,
                        Poll::Ready(None) => Step::Ended,
                        Poll::Pending => match socket.poll_read_ready(cx) {
                            Poll::Ready(ready) => Step::Readable(ready),
                            Poll::Pending => break Poll::Pending,
                        },
                    };
                    break Poll::Ready(step);
                })
                .await;
                match step {
                    Step::Blocked(rest) => {
                        let (rest, sample) = *rest;
                        Box::pin(write_blocked(&socket, rest, sample, &mut events, write_timeout))
                    }
                    // Dropped as slow: close without ceremony; its client reconnects and resumes.
                    Step::Slow => {
                        dropped(&socket, "slow");
                        events.end(StreamEnd::Hub(EndReason::Slow));
                        return Ok(());
                    }
                    Step::Failed(error) => {
                        events.end(StreamEnd::ClientGone);
                        return Err(error);
                    }
                    // Ended by the hub: a clean end of the body.
                    Step::Ended => {
                        let reason = events.end_reason();
                        events.end(StreamEnd::Hub(reason));
                        return socket.shutdown().await;
                    }
                    Step::Readable(ready) => match read_probe(&socket, ready, &mut trailing) {
                        Some(end) => {
                            let (end, result) = end;
                            events.end(end);
                            return result;
                        }
                        None => continue,
                    },
                }
            };
            let end = match blocked.await {
                Ok(true) => continue,
                Ok(false) => {
                    dropped(&socket, "slow");
                    (StreamEnd::Hub(EndReason::Slow), Ok(()))
                }
                Err(error) if error.kind() == io::ErrorKind::TimedOut => {
                    dropped(&socket, "write-deadline");
                    (StreamEnd::WriteDeadline, Err(error))
                }
                Err(error) => (StreamEnd::ClientGone, Err(error)),
            };
            events.end(end.0);
            return end.1;
        }
    }
}

/// What the socket's read readiness means for a stream: `None` to go on, or how it ends. An
/// SSE client sends nothing after its request, so readable means closed, failed, or
/// misbehaving.
fn read_probe(
    socket: &TcpStream,
    ready: io::Result<()>,
    trailing: &mut usize,
) -> Option<(StreamEnd, io::Result<()>)> {
    if let Err(error) = ready {
        return Some((StreamEnd::ClientGone, Err(error)));
    }
    match socket.try_read(&mut [0u8; 64]) {
        // The peer closed (FIN): end here; dropping `events` unsubscribes.
        Ok(0) => Some((StreamEnd::ClientGone, Ok(()))),
        Ok(n) => {
            *trailing += n;
            (*trailing > MAX_TRAILING_INPUT).then_some((StreamEnd::UnexpectedInput, Ok(())))
        }
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => None,
        Err(error) => Some((StreamEnd::ClientGone, Err(error))),
    }
}

/// Writes what the socket takes of `batch` now, with vectored writes (usually one); returns
/// the rest if the socket is full.
fn write_now(socket: &TcpStream, mut batch: Batch) -> io::Result<Option<Batch>> {
    while batch.has_remaining() {
        let mut slices = [IoSlice::new(&[]); 64];
        let count = batch.chunks_vectored(&mut slices);
        // One frame (each event going out alone, the latency case) goes with `write`, which
        // spares the kernel importing an iovec array for it.
        let written = if count == 1 {
            socket.try_write(&slices[0])
        } else {
            socket.try_write_vectored(&slices[..count])
        };
        match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => batch.advance(n),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(Some(batch)),
            Err(error) => return Err(error),
        }
    }
    Ok(None)
}

/// The rest of a batch the socket refused: waits for room and writes it, then records
/// `sample`. A write blocked for longer than `timeout` ends the connection. Resolves to `false`
/// when the hub dropped the subscriber as slow while the write was blocked: the connection
/// ends then, not at the deadline. The rare path: the caller boxes it, so its timer and state
/// do not size every connection's task.
async fn write_blocked(
    socket: &TcpStream,
    mut batch: Batch,
    sample: Sample,
    events: &mut Events,
    timeout: Duration,
) -> io::Result<bool> {
    loop {
        tokio::select! {
            ready = tokio::time::timeout(timeout, socket.writable()) => {
                ready.map_err(|_| io::ErrorKind::TimedOut)??;
            }
            () = poll_fn(|cx| events.poll_dropped_as_slow(cx)) => return Ok(false),
        }
        match write_now(socket, batch)? {
            None => {
                events.written(&sample);
                return Ok(true);
            }
            Some(rest) => batch = rest,
        }
    }
}

impl<R> Server<R> {
    /// The endpoint served (its [`connection_count`](Endpoint::connection_count) counts open
    /// streams).
    ///
    /// # Examples
    ///
    /// ```
    /// let server = ssehub::server::Server::new(ssehub::Endpoint::new(ssehub::Hub::new()));
    /// assert_eq!(server.endpoint().connection_count(), 0);
    /// ```
    pub fn endpoint(&self) -> &Endpoint<R> {
        &self.inner.endpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream's future is what every idle connection keeps (with the socket's registration
    /// and the subscription). It measured 608 bytes as an `async fn` that also wrote the head
    /// and kept the batch and the blocked write's state inline, 176 bytes since; the bound
    /// leaves room for the compiler, not for a buffer.
    #[test]
    fn an_idle_streams_state_stays_small() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let socket = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let hub = crate::Hub::new();
            let subscription = hub.subscribe(crate::Subscribe::new().with_topic("t")).unwrap();
            let future = stream(socket, Events::new(subscription), Duration::from_secs(1));
            let size = std::mem::size_of_val(&future);
            assert!(size <= 256, "an idle stream's future is {size} bytes");
        });
    }
}
