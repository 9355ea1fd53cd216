//! The axum 0.8 adapter: an [`Endpoint`] as a route, and a [`Subscription`] as a response.
//!
//! Each wake-up of a stream becomes one body chunk ([`Batch::into_bytes`]): a burst is one
//! write, not one per event. Works over HTTP/1.1 and HTTP/2 (what `axum::serve` speaks).
//!
//! # Examples
//!
//! ```no_run
//! use ssehub::{Endpoint, Event, Hub};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::new();
//! let app = axum::Router::new().route("/events", ssehub::axum::events(Endpoint::new(hub.clone())));
//! // Clients: `new EventSource("/events?topic=news")`; publishers: anywhere.
//! hub.publish("news", Event::new("hello"))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`Batch::into_bytes`]: crate::Batch::into_bytes

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ::axum::body::Body;
use ::axum::extract::Request;
use ::axum::response::{IntoResponse, Response};
use ::axum::routing::{any, MethodRouter};
use ::axum::serve::Listener;
use bytes::Bytes;
use http_body::Frame;
use tokio::net::{TcpListener, TcpStream};

use super::accept::{accept, Backoff};
use super::endpoint::{stream, Endpoint, Events, Reply};
use super::resolve::Resolver;
use super::write_timeout::WriteTimeout;
use crate::error::EndReason;
use crate::hub::subscription::Subscription;

/// A route serving `endpoint`: give it to [`Router::route`](::axum::Router::route). It takes
/// every method, so it can answer CORS preflights and 405 itself (see [`Endpoint`]).
///
/// # Examples
///
/// ```
/// use axum::Router;
/// use ssehub::{Endpoint, Hub, PathTopic};
///
/// let hub = Hub::new();
/// let devices = Endpoint::new(hub.clone())
///     .with_resolver(PathTopic::new("/api/device/{id}/sse", "device:{id}").with_wildcard("all"));
/// let app: Router = Router::new()
///     .route("/events", ssehub::axum::events(Endpoint::new(hub)))
///     .route("/api/device/{id}/sse", ssehub::axum::events(devices));
/// # drop(app);
/// ```
pub fn events<R, S>(endpoint: Endpoint<R>) -> MethodRouter<S>
where
    R: Resolver,
    S: Clone + Send + Sync + 'static,
{
    any(move |request: Request| {
        let endpoint = endpoint.clone();
        async move {
            // A GET's body is empty; it is dropped here, before the stream starts.
            let (parts, _) = request.into_parts();
            endpoint.answer(&parts).await.map(body)
        }
    })
}

/// `listener` for `axum::serve`, closing connections whose writes make no progress for
/// `write_timeout` (their clients stopped reading; see
/// [`Endpoint::with_write_timeout`](crate::Endpoint::with_write_timeout) for why a server of
/// streams needs this), and setting `TCP_NODELAY` so events are not held back. A connection
/// reset before it was accepted is skipped at once; other accept errors (such as running out
/// of file descriptors) pause it for 5 ms, doubling while they last up to a second, as in
/// every ssehub front.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use ssehub::{Endpoint, Hub};
///
/// # #[tokio::main]
/// # async fn main() -> std::io::Result<()> {
/// let app = axum::Router::new().route("/events", ssehub::axum::events(Endpoint::new(Hub::new())));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// axum::serve(ssehub::axum::listener(listener, Duration::from_secs(30)), app).await
/// # }
/// ```
pub fn listener(
    listener: TcpListener,
    write_timeout: Duration,
) -> impl Listener<Addr = SocketAddr> {
    Guarded { listener, write_timeout, backoff: Backoff::default() }
}

/// A listener whose connections have a write timeout.
#[derive(Debug)]
struct Guarded {
    /// Where connections come from.
    listener: TcpListener,
    /// How long a connection's writes may make no progress.
    write_timeout: Duration,
    /// The pause after accept errors.
    backoff: Backoff,
}

impl Listener for Guarded {
    type Io = WriteTimeout<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        let (socket, addr) = accept(&self.listener, &mut self.backoff).await;
        (WriteTimeout::new(socket, Some(self.write_timeout)), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A [`Subscription`] as an axum response: 200, `content-type: text/event-stream`,
/// `cache-control: no-cache`, `x-accel-buffering: no`, one chunk per batch. For handlers that
/// subscribe themselves instead of through an [`Endpoint`] (which adds resolvers, limits and
/// CORS).
///
/// # Examples
///
/// ```
/// use axum::extract::State;
/// use axum::http::StatusCode;
/// use axum::routing::get;
/// use axum::Router;
/// use ssehub::axum::EventStream;
/// use ssehub::Hub;
///
/// async fn news(State(hub): State<Hub>) -> Result<EventStream, StatusCode> {
///     hub.subscribe("news").map(EventStream).map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
/// }
///
/// let app: Router = Router::new().route("/news", get(news)).with_state(Hub::new());
/// # drop(app);
/// ```
#[derive(Debug)]
pub struct EventStream(pub Subscription);

impl IntoResponse for EventStream {
    fn into_response(self) -> Response {
        stream(Events::new(self.0)).map(body)
    }
}

/// The axum body for an endpoint's reply.
fn body(reply: Reply) -> Body {
    match reply {
        Reply::Stream(events) => Body::new(Chunks(events)),
        Reply::Text(text) => Body::from(text),
        Reply::Empty => Body::empty(),
    }
}

/// A subscription as an [`http_body::Body`] of one [`Bytes`] per batch.
struct Chunks(Events);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = EndReason;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, EndReason>>> {
        self.get_mut()
            .0
            .poll_body(cx)
            .map(|batch| batch.map(|batch| batch.map(|batch| Frame::data(batch.into_bytes()))))
    }
}
