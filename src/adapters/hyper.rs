//! The hyper 1 adapter: an [`Endpoint`] as a hyper service, a body whose data is a whole
//! [`Batch`], and a ready accept loop.
//!
//! [`Body`] yields one [`Batch`] per wake-up; hyper writes it with one vectored write (one
//! `IoSlice` per frame, no copy into a buffer). [`serve`] speaks HTTP/1.1 and HTTP/2 (h2c with
//! prior knowledge) on one port.
//!
//! # Examples
//!
//! ```no_run
//! use ssehub::{Endpoint, Event, Hub};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::new();
//! hub.publish("news", Event::new("hello"))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // Every path is the stream: `GET /?topic=news`.
//! ssehub::hyper::serve(listener, Endpoint::new(hub)).await;
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ::hyper::server::conn::{http1, http2};
use ::hyper::service::Service;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use super::accept::{accept, Backoff};
use super::endpoint::{stream, Endpoint, Events, Reply};
use super::resolve::Resolver;
use super::write_timeout::WriteTimeout;
use crate::engine::batch::Batch;
use crate::error::EndReason;
use crate::hub::subscription::Subscription;
use crate::sync::Arc;

/// A response body: a live stream, one [`Batch`] per frame of the body, or a fixed body (an
/// endpoint's short plain-text refusal, or `Body::from(bytes)` for other routes).
///
/// The stream ends when the subscription does; when the subscriber was dropped as slow it fails
/// with [`EndReason::Slow`] instead, and hyper aborts the connection.
///
/// # Examples
///
/// ```
/// use http_body::Body as _;
/// use ssehub::hyper::Body;
///
/// let hub = ssehub::Hub::new();
/// let body = Body::new(hub.subscribe("news")?);
/// assert!(!body.is_end_stream());
/// # Ok::<(), ssehub::SubscribeError>(())
/// ```
#[derive(Debug)]
pub struct Body {
    /// What the body carries.
    kind: Kind,
}

/// What a [`Body`] carries.
#[derive(Debug)]
enum Kind {
    /// A live stream.
    Events(Events),
    /// A fixed body, until it is taken.
    Text(Option<Bytes>),
}

impl Body {
    /// Streams `subscription`.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let body = ssehub::hyper::Body::new(hub.subscribe("news")?);
    /// # drop(body);
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    #[must_use]
    pub fn new(subscription: Subscription) -> Body {
        Body { kind: Kind::Events(Events::new(subscription)) }
    }

    /// The body for an endpoint's reply.
    fn from_reply(reply: Reply) -> Body {
        let kind = match reply {
            Reply::Stream(events) => Kind::Events(events),
            Reply::Text(text) => Kind::Text(Some(text)),
            Reply::Empty => Kind::Text(None),
        };
        Body { kind }
    }
}

/// A fixed body, for the other routes of a service that also streams (a response body has one
/// type per service, and this one's data is a [`Batch`]).
///
/// # Examples
///
/// ```
/// use http_body::Body as _;
///
/// let body = ssehub::hyper::Body::from(bytes::Bytes::from_static(b"not found"));
/// assert_eq!(body.size_hint().exact(), Some(9));
/// ```
impl From<Bytes> for Body {
    fn from(text: Bytes) -> Self {
        Body::from_reply(Reply::Text(text))
    }
}

/// A fixed body (see [`From<Bytes>`](#impl-From%3CBytes%3E-for-Body)).
///
/// # Examples
///
/// ```
/// let body = ssehub::hyper::Body::from("started\n");
/// # drop(body);
/// ```
impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Body::from(Bytes::from_static(text.as_bytes()))
    }
}

/// A fixed body (see [`From<Bytes>`](#impl-From%3CBytes%3E-for-Body)).
///
/// # Examples
///
/// ```
/// let body = ssehub::hyper::Body::from(format!("{} subscribers", 3));
/// # drop(body);
/// ```
impl From<String> for Body {
    fn from(text: String) -> Self {
        Body::from(Bytes::from(text))
    }
}

impl http_body::Body for Body {
    type Data = Batch;
    type Error = EndReason;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Batch>, EndReason>>> {
        match &mut self.get_mut().kind {
            Kind::Events(events) => events.poll_body(cx).map(|b| b.map(|b| b.map(Frame::data))),
            Kind::Text(text) => Poll::Ready(
                text.take()
                    .filter(|t| !t.is_empty())
                    .map(|t| Ok(Frame::data(Batch::new(vec![t], 0)))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.kind, Kind::Text(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Events(_) => SizeHint::default(),
            Kind::Text(text) => SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64)),
        }
    }
}

/// A [`Subscription`] as a response: 200, `content-type: text/event-stream`,
/// `cache-control: no-cache`, `x-accel-buffering: no`. For services that subscribe themselves
/// instead of through an [`Endpoint`] (which adds resolvers, limits and CORS).
///
/// # Examples
///
/// ```
/// let hub = ssehub::Hub::new();
/// let response = ssehub::hyper::response(hub.subscribe("news")?);
/// assert_eq!(response.headers()["content-type"], "text/event-stream");
/// # Ok::<(), ssehub::SubscribeError>(())
/// ```
#[must_use]
pub fn response(subscription: Subscription) -> Response<Body> {
    stream(Events::new(subscription)).map(Body::from_reply)
}

/// An endpoint answers requests as a hyper service; the request body is not read.
///
/// # Examples
///
/// Serving one connection with hyper-util's `auto::Builder` ([`serve`] does the same with
/// hyper's own HTTP/1.1 and HTTP/2 builders, telling them apart without reading the socket):
///
/// ```no_run
/// use hyper_util::rt::{TokioExecutor, TokioIo};
/// use hyper_util::server::conn::auto::Builder;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let endpoint = ssehub::Endpoint::new(ssehub::Hub::new());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let (socket, _) = listener.accept().await?;
/// Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(socket), endpoint).await?;
/// # Ok(())
/// # }
/// ```
impl<R: Resolver, B> Service<Request<B>> for Endpoint<R> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        let endpoint = self.clone();
        // A GET's body is empty; it is dropped here, before the stream starts.
        let (parts, _) = request.into_parts();
        Box::pin(async move { Ok(endpoint.answer(&parts).await.map(Body::from_reply)) })
    }
}

/// Accepts connections on `listener` forever, serving each with `endpoint` over HTTP/1.1 or
/// HTTP/2 (h2c with prior knowledge), each on its own task; `TCP_NODELAY` is set so events are
/// not held back. HTTP/1.1 request heads must arrive within 30 seconds, and a connection whose
/// writes make no progress for the endpoint's
/// [write timeout](crate::Endpoint::with_write_timeout) is closed. A connection reset before it
/// was accepted is skipped at once; other accept errors (such as running out of file
/// descriptors) pause the loop for 5 ms, doubling while they last up to a second, as in every
/// ssehub front.
///
/// Every path and query is handed to the endpoint's resolver; route in the resolver (for
/// example [`PathTopic`](crate::PathTopic) answers 404 elsewhere) or put the endpoint behind a
/// router. Drop the future to stop accepting; open streams end when the hub shuts down.
///
/// # Cancel safety
///
/// Dropping the future stops accepting; connections already accepted run on.
///
/// # Examples
///
/// ```
/// use ssehub::{Endpoint, Event, Hub};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = Hub::new();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// tokio::spawn(ssehub::hyper::serve(listener, Endpoint::new(hub.clone())));
///
/// let mut client = tokio::net::TcpStream::connect(addr).await?;
/// client.write_all(b"GET /?topic=news HTTP/1.1\r\nhost: x\r\n\r\n").await?;
/// let mut head = [0; 1024];
/// let n = client.read(&mut head).await?;
/// assert!(head[..n].starts_with(b"HTTP/1.1 200 OK"));
/// hub.publish("news", Event::new("hello"))?;
/// # Ok(())
/// # }
/// ```
pub async fn serve<R: Resolver>(listener: TcpListener, endpoint: Endpoint<R>) {
    let write_timeout = endpoint.write_timeout();
    let builders = Arc::new(Builders::new());
    let mut backoff = Backoff::default();
    loop {
        let (socket, _) = accept(&listener, &mut backoff).await;
        let (builders, endpoint) = (builders.clone(), endpoint.clone());
        tokio::spawn(async move {
            // A client that sends nothing within the head timeout is dropped, as one that
            // stalls in its head is by hyper; a connection error concerns that client alone.
            let Ok(Ok(version)) = tokio::time::timeout(HEAD_TIMEOUT, sniff(&socket)).await else {
                return;
            };
            let io = TokioIo::new(WriteTimeout::new(socket, write_timeout));
            // Each connection runs in a task of its own exact size (an HTTP/1.1 connection
            // does not carry room for an HTTP/2 one); this one ends here.
            match version {
                Version::Http1 => {
                    let connection = builders.http1.serve_connection(io, endpoint);
                    tokio::spawn(async move { connection.await.ok() });
                }
                Version::Http2 => {
                    let connection = builders.http2.serve_connection(io, endpoint);
                    tokio::spawn(async move { connection.await.ok() });
                }
            }
        });
    }
}

/// How long a client may take to send its request head (the version sniff and hyper's own
/// HTTP/1.1 header read timeout).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// What an HTTP/2 client with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// The connection builders `serve` shares between its connections.
struct Builders {
    /// HTTP/1.1 connections.
    http1: http1::Builder,
    /// h2c connections.
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    /// hyper's defaults, with a timer (for the HTTP/1.1 header read timeout and HTTP/2 pings).
    fn new() -> Self {
        let mut http1 = http1::Builder::new();
        http1.timer(TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        Builders { http1, http2 }
    }
}

/// Which protocol `socket` speaks, from its first bytes, left unread for hyper.
///
/// hyper-util's `auto::Builder` reads them instead and hands them back through a rewinding
/// wrapper, so hyper's first read returns those 24 bytes alone and its next one regrows the
/// 8 KiB read buffer to 16 KiB, which every idle HTTP/1.1 stream then keeps: 8 KiB of the
/// 20 KiB such a stream cost (measured with `examples/idle_rss.rs`). Peeking leaves the buffer
/// at hyper's 8 KiB.
async fn sniff(socket: &TcpStream) -> io::Result<Version> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let n = socket.peek(&mut first).await?;
        if n == 0 || first[..n] != H2_PREFACE[..n] {
            // Not HTTP/2 (or closed at once: hyper's HTTP/1.1 side says so).
            return Ok(Version::Http1);
        }
        if n == H2_PREFACE.len() {
            return Ok(Version::Http2);
        }
        // Part of the preface arrived (a client sends it in one segment, so this is rare):
        // peek returns the same bytes at once until more arrive, so wait a little between
        // looks; the caller's deadline bounds the loop.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
