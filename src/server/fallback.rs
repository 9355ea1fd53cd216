//! Serving one request of another path through an axum `Router`, with hyper, on the listener's
//! connection, and handing the connection back for its next request.
//!
//! hyper serves exactly one request per call, over an IO ([`Rewind`]) that gives it the request
//! head and its body and nothing more: the listener, not hyper, reads every head, so a
//! kept-alive connection's next request, perhaps the stream, comes back to the listener. The
//! response is written with keep-alive on (no `connection: close`); once it is answered, the
//! connection is shut down gracefully (keep-alive disabled after the head went out), hyper
//! finishes writing and hands the socket back without closing it. Pipelined requests wait in
//! the listener's buffer or the kernel's, never in hyper's.
//!
//! Every body is read within a deadline and a size limit: a `Content-Length` over the limit is
//! 413 before anything is read; a body that stalls past the deadline is 408, one that grows past
//! the limit (chunked) 413, both with `connection: close`.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONNECTION;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Sleep;

use super::request::{self, BodyLength, BodyLimits, Head};
use super::rewind::Rewind;
use super::{Conn, Exchange, Kept};
use crate::sync::{Arc, AtomicUsize, Ordering};

/// How long a closing connection's unread input is drained (so closing does not reset it and
/// lose the response just written), and how much of it at most.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes drained from a closing connection.
const LINGER_BYTES: usize = 1 << 20;

/// Why a body was cut: no cut yet, too slow, or too large.
const CUT_NONE: usize = 0;
/// The body did not arrive within the deadline.
const CUT_TIMEOUT: usize = 1;
/// The body grew past the limit.
const CUT_TOO_LARGE: usize = 2;

/// Serves one request with `router`; returns the connection if it may serve another.
pub(crate) async fn serve<IO: Conn>(router: ::axum::Router, exchange: Exchange<IO>) -> Kept<IO> {
    let Exchange { mut socket, head, body } = exchange;
    let Head { parts, mut raw, len } = head;
    let length = request::body_length(&parts);
    if let BodyLength::Known(bytes) = length {
        if bytes > body.max_bytes {
            let reason = format!("request body over the limit of {} bytes", body.max_bytes);
            let headers = http::HeaderMap::new();
            let _ = super::write_plain(
                &mut socket,
                StatusCode::PAYLOAD_TOO_LARGE,
                &headers,
                reason.as_bytes(),
            )
            .await;
            linger(socket).await;
            return None;
        }
    }
    // A body of unknown length (chunked) cannot be told from what follows it without decoding
    // it, so such a request is the connection's last: hyper reads it all and closes.
    let reusable = !request::wants_close(&parts) && matches!(length, BodyLength::Known(_));
    let (io, leftover) = match length {
        BodyLength::Known(bytes) => {
            let end = len.saturating_add(usize::try_from(bytes).unwrap_or(usize::MAX));
            let leftover = if raw.len() > end { raw.split_off(end) } else { Vec::new() };
            let in_buffer = (raw.len() - len) as u64;
            (Rewind::new(raw, socket, Some(bytes - in_buffer)), leftover)
        }
        BodyLength::Unknown => (Rewind::new(raw, socket, None), Vec::new()),
    };
    let (answered, answer) = oneshot::channel();
    let service = OneRequest { router, body, answered: std::cell::Cell::new(Some(answered)) };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(reusable).header_read_timeout(None);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let (result, close) = drive(conn, answer).await;
    let Ok(parts) = result else { return None };
    let (socket, unread_body) = parts.io.into_inner().into_parts();
    if !reusable || close || unread_body {
        linger(socket).await;
        return None;
    }
    // hyper was given no byte past the request, so this is empty unless it kept some unparsed.
    let mut next = parts.read_buf.to_vec();
    next.extend_from_slice(&leftover);
    Some((socket, next))
}

/// The connection with its IO handed back, and whether the response asked to close.
type Served<IO> =
    hyper::server::conn::http1::Parts<hyper_util::rt::TokioIo<Rewind<IO>>, OneRequest>;

/// Runs hyper's connection until the one request is answered and written. Once the service has
/// answered (its head is then encoded, within the same poll), keep-alive is turned off, so
/// hyper ends after the response instead of waiting for a next request; it does not close.
async fn drive<IO: Conn>(
    mut conn: hyper::server::conn::http1::Connection<
        hyper_util::rt::TokioIo<Rewind<IO>>,
        OneRequest,
    >,
    mut answer: oneshot::Receiver<bool>,
) -> (hyper::Result<Served<IO>>, bool) {
    let mut close = None;
    let done = poll_fn(|cx| {
        if close.is_none() {
            if let Poll::Ready(asked) = Pin::new(&mut answer).poll(cx) {
                // A dropped sender: the service failed; do not reuse.
                close = Some(asked.unwrap_or(true));
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
        conn.poll_without_shutdown(cx)
    })
    .await;
    let result = done.map(|()| conn.into_parts());
    (result, close.unwrap_or(true))
}

/// Shuts the socket's write side and drains what the client still sends for a moment, so the
/// kernel does not answer unread input with a reset that could destroy the response.
async fn linger<IO: Conn>(mut socket: IO) {
    let _ = socket.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// hyper's service for one request: the router, with the body guarded by the limits; reports
/// (once) that it answered, and whether the response closes the connection.
pub(crate) struct OneRequest {
    /// The application.
    router: ::axum::Router,
    /// The body's limits.
    body: BodyLimits,
    /// Told when the response is ready: `true` if it closes the connection.
    answered: std::cell::Cell<Option<oneshot::Sender<bool>>>,
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for OneRequest {
    type Response = Response<::axum::body::Body>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, request: Request<hyper::body::Incoming>) -> Self::Future {
        let answered = self.answered.take();
        let routed = route(self.router.clone(), request, self.body);
        Box::pin(async move {
            let (response, close) = routed.await;
            if let Some(answered) = answered {
                let _ = answered.send(close);
            }
            Ok(response)
        })
    }
}

/// Answers `request` with `router`, its body guarded by `limits`; also tells whether the
/// response closes the connection (HTTP/1.1: the caller's business).
pub(crate) fn route(
    mut router: ::axum::Router,
    request: Request<hyper::body::Incoming>,
    limits: BodyLimits,
) -> impl Future<Output = (Response<::axum::body::Body>, bool)> + Send + 'static {
    let cut = Arc::new(AtomicUsize::new(CUT_NONE));
    let guarded = request.map(|body| {
        ::axum::body::Body::new(Guarded {
            inner: body,
            read: 0,
            limits,
            deadline: Box::pin(tokio::time::sleep(limits.timeout)),
            cut: cut.clone(),
        })
    });
    async move {
        let Ok(mut response) = tower_service::Service::call(&mut router, guarded).await;
        // However the application answered a cut body (most answer 400 to a body error),
        // the client learns why, and the connection closes: the rest of the body is unread.
        let status = match cut.load(Ordering::SeqCst) {
            CUT_TIMEOUT => Some((StatusCode::REQUEST_TIMEOUT, "request body not received in time")),
            CUT_TOO_LARGE => Some((StatusCode::PAYLOAD_TOO_LARGE, "request body over the limit")),
            _ => None,
        };
        if let Some((status, reason)) = status {
            response = Response::new(::axum::body::Body::from(reason));
            *response.status_mut() = status;
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let close = response
            .headers()
            .get_all(CONNECTION)
            .iter()
            .any(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
        (response, close)
    }
}

/// A request body read within the limits: past the deadline or the size, it fails and records
/// why in `cut`.
struct Guarded {
    /// hyper's body.
    inner: hyper::body::Incoming,
    /// Bytes read so far.
    read: u64,
    /// The limits.
    limits: BodyLimits,
    /// When the whole body must have arrived.
    deadline: Pin<Box<Sleep>>,
    /// Why the body was cut, for the service to answer.
    cut: Arc<AtomicUsize>,
}

/// A body cut at the deadline or the size limit.
#[derive(Debug, thiserror::Error)]
enum Cut {
    /// Too slow.
    #[error("request body not received within {0:?}")]
    Timeout(Duration),
    /// Too large.
    #[error("request body over the limit of {0} bytes")]
    TooLarge(u64),
    /// hyper's error (the client went away, or sent a malformed body).
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if this.read > this.limits.max_bytes {
                        this.cut.store(CUT_TOO_LARGE, Ordering::SeqCst);
                        return Poll::Ready(Some(Err(Cut::TooLarge(this.limits.max_bytes))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.cut.store(CUT_TIMEOUT, Ordering::SeqCst);
                    Poll::Ready(Some(Err(Cut::Timeout(this.limits.timeout))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
