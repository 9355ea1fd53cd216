//! HTTP/2 over TLS (ALPN `h2`): the connection is served by hyper's HTTP/2 server, streams at
//! the listener's path through the endpoint as the hyper adapter serves them (each batch is one
//! `DATA` frame's payload, handed to h2 without a copy), every other path through the fallback
//! router with the same body limits as over HTTP/1.1.
//!
//! One connection carries many streams (a browser opens every `EventSource` of an origin on
//! it), so this path cannot own the socket the way the HTTP/1.1 path does: h2's framing and
//! flow control decide what is written when.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::server::conn::http2;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::request::BodyLimits;
use super::tls::Tls;
use crate::adapters::resolve::Resolver;
use crate::adapters::write_timeout::WriteTimeout;
use crate::adapters::Endpoint;
use crate::engine::batch::Batch;

/// Serves one HTTP/2 connection until the client closes it (or it fails); a write that makes
/// no progress for `write_timeout` ends it.
pub(crate) async fn serve<R: Resolver>(
    tls: Tls,
    routes: Routes<R>,
    write_timeout: Duration,
    max_head: usize,
) {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // Set here rather than left to hyper's default (200, "not part of its stability"):
        // the streams one client may hold open at once on a connection.
        .max_concurrent_streams(MAX_STREAMS)
        // The HTTP/1.1 head limit, applied to each request's header list.
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
        // A peer that vanished without a FIN holds an idle connection (no stream writing, so
        // no write timeout) until a ping goes unanswered.
        .keep_alive_interval(Some(PING_INTERVAL))
        .keep_alive_timeout(PING_TIMEOUT);
    let io = TokioIo::new(WriteTimeout::new(tls, Some(write_timeout)));
    // The connection's end is the client's business (a reset, a GOAWAY, a timed-out write).
    let _ = builder.serve_connection(io, routes).await;
}

/// Most streams (requests) open at once on one HTTP/2 connection.
const MAX_STREAMS: u32 = 256;
/// How often an HTTP/2 connection is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(60);
/// How long a ping may go unanswered before the connection is closed.
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// What an HTTP/2 request may reach: the endpoint at its path, the fallback elsewhere.
pub(crate) struct Routes<R> {
    /// The SSE endpoint.
    pub(crate) endpoint: Endpoint<R>,
    /// Its path; `None` for every path.
    pub(crate) path: Option<String>,
    /// The other paths' router, if any.
    #[cfg(feature = "axum")]
    pub(crate) router: Option<::axum::Router>,
    /// The limits on a fallback request's body.
    #[cfg_attr(not(feature = "axum"), allow(dead_code, reason = "only the fallback reads it"))]
    pub(crate) body: BodyLimits,
}

impl<R: Resolver> Service<Request<hyper::body::Incoming>> for Routes<R> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<hyper::body::Incoming>) -> Self::Future {
        if self.path.as_deref().is_none_or(|path| request.uri().path() == path) {
            let stream = self.endpoint.call(request);
            return Box::pin(async move {
                let Ok(response) = stream.await;
                Ok(response.map(Body::Stream))
            });
        }
        #[cfg(feature = "axum")]
        if let Some(router) = &self.router {
            let answer = super::fallback::route(router.clone(), request, self.body);
            return Box::pin(async move { Ok(answer.await.0.map(Body::Routed)) });
        }
        let mut response = Response::new(Body::Stream(crate::hyper::Body::from("not found")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        Box::pin(async move { Ok(response) })
    }
}

/// A response body over HTTP/2: a stream (or the endpoint's refusal), or the router's answer.
pub(crate) enum Body {
    /// The endpoint's answer.
    Stream(crate::hyper::Body),
    /// The fallback router's answer.
    #[cfg(feature = "axum")]
    Routed(::axum::body::Body),
}

/// Why a body failed: the stream ended as slow, or the router's body failed.
type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl HttpBody for Body {
    type Data = Batch;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Batch>, BodyError>>> {
        match self.get_mut() {
            Body::Stream(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::from),
            // A routed answer is small (a publish's id, the stats); one `Vec` per frame is its
            // cost for sharing the stream's data type.
            #[cfg(feature = "axum")]
            Body::Routed(body) => Pin::new(body).poll_frame(cx).map(|frame| {
                frame.map(|frame| {
                    frame
                        .map(|frame| frame.map_data(|bytes| Batch::new(vec![bytes], 0)))
                        .map_err(BodyError::from)
                })
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Stream(body) => body.is_end_stream(),
            #[cfg(feature = "axum")]
            Body::Routed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Stream(body) => body.size_hint(),
            #[cfg(feature = "axum")]
            Body::Routed(body) => body.size_hint(),
        }
    }
}
