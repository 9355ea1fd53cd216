//! Reading and checking one request head with `httparse`, within size and time limits.

use std::borrow::Cow;
use std::time::Duration;

use http::request::Parts;
use http::{Method, Request, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most headers a request may have.
const MAX_HEADERS: usize = 64;

/// Longest request target (path and query) taken: the longest `http::Uri` holds. A longer one
/// is 414, not a 400 that would not say why.
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// The limits on a request head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    /// Largest head (request line plus headers), in bytes.
    pub(crate) max_bytes: usize,
    /// Longest wait for the complete head.
    pub(crate) timeout: Duration,
}

#[cfg_attr(
    not(feature = "axum"),
    allow(dead_code, reason = "the fallback (feature `axum`) reads it")
)]
/// The limits on a request body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    /// Largest body, in bytes.
    pub(crate) max_bytes: u64,
    /// Longest wait for the whole body, from the end of the head.
    pub(crate) timeout: Duration,
}

/// Why a head was not accepted.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The connection closed, failed or timed out before a complete head: nothing to answer.
    Gone,
    /// A refusal to send before closing.
    Refuse(StatusCode, Cow<'static, str>),
}

#[cfg_attr(
    not(feature = "axum"),
    allow(dead_code, reason = "the fallback (feature `axum`) reads it")
)]
/// A parsed head and every byte read so far (the head and anything after it).
#[derive(Debug)]
pub(crate) struct Head {
    /// The request, for the resolver.
    pub(crate) parts: Parts,
    /// The raw bytes read, so a fallback server can re-read the request from the start.
    pub(crate) raw: Vec<u8>,
    /// The head's length in `raw`; what follows is the body and perhaps pipelined requests.
    pub(crate) len: usize,
}

#[cfg_attr(
    not(feature = "axum"),
    allow(dead_code, reason = "the fallback (feature `axum`) reads it")
)]
/// How long a request body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyLength {
    /// `Content-Length` (0 without one).
    Known(u64),
    /// Chunked, or a `Content-Length` that does not parse or is given twice differently.
    Unknown,
}

#[cfg_attr(
    not(feature = "axum"),
    allow(dead_code, reason = "the fallback (feature `axum`) reads it")
)]
/// The body's length, as the head announces it.
pub(crate) fn body_length(parts: &Parts) -> BodyLength {
    if parts.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return BodyLength::Unknown;
    }
    let mut length = None;
    for value in parts.headers.get_all(http::header::CONTENT_LENGTH) {
        let parsed = std::str::from_utf8(value.as_bytes())
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok());
        match (parsed, length) {
            (None, _) => return BodyLength::Unknown,
            (Some(n), Some(seen)) if n != seen => return BodyLength::Unknown,
            (Some(n), _) => length = Some(n),
        }
    }
    BodyLength::Known(length.unwrap_or(0))
}

#[cfg_attr(
    not(feature = "axum"),
    allow(dead_code, reason = "the fallback (feature `axum`) reads it")
)]
/// Whether the client asks to close the connection after this request: `Connection: close`,
/// or HTTP/1.0 (whose keep-alive extension is not offered).
pub(crate) fn wants_close(parts: &Parts) -> bool {
    parts.version == Version::HTTP_10
        || parts.headers.get_all(http::header::CONNECTION).iter().any(|value| {
            value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
        })
}

/// Whether a request announces a body (a stream request must not: it would be left unread).
pub(crate) fn has_body(parts: &Parts) -> bool {
    parts.headers.contains_key(http::header::TRANSFER_ENCODING)
        || parts
            .headers
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().iter().any(|&b| b != b'0'))
}

/// Reads one request head, starting with `buffered` (bytes already read past the previous
/// request on this connection, if any).
pub(crate) async fn read_head<IO: AsyncRead + Unpin>(
    socket: &mut IO,
    buffered: Vec<u8>,
    limits: HeadLimits,
) -> Result<Head, HeadError> {
    let read = async {
        if let Some((parts, len)) = parse(&buffered)? {
            return Ok(Head { parts, raw: buffered, len });
        }
        // Small to start: most SSE requests are a few hundred bytes, and this buffer is freed
        // once the head is parsed, before the stream starts.
        let mut raw = buffered;
        raw.reserve(512);
        loop {
            if raw.len() >= limits.max_bytes {
                return Err(HeadError::Refuse(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!("request head over the limit of {} bytes", limits.max_bytes).into(),
                ));
            }
            let want = (limits.max_bytes - raw.len()).min(4096);
            raw.reserve(want);
            let start = raw.len();
            raw.resize(start + want, 0);
            let n = match socket.read(&mut raw[start..]).await {
                Ok(0) | Err(_) => return Err(HeadError::Gone),
                Ok(n) => n,
            };
            raw.truncate(start + n);
            if let Some((parts, len)) = parse(&raw)? {
                return Ok(Head { parts, raw, len });
            }
        }
    };
    tokio::time::timeout(limits.timeout, read).await.unwrap_or(Err(HeadError::Gone))
}

/// Parses a complete head and tells its length, `Ok(None)` if more bytes are needed.
fn parse(raw: &[u8]) -> Result<Option<(Parts, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let status = match request.parse(raw) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("more headers than the limit of {MAX_HEADERS}").into(),
            ));
        }
        Err(_) => {
            return Err(HeadError::Refuse(StatusCode::BAD_REQUEST, "malformed request".into()))
        }
    };
    let httparse::Status::Complete(len) = status else {
        return Ok(None);
    };
    let target = request.path.unwrap_or("/");
    if target.len() > MAX_TARGET {
        return Err(HeadError::Refuse(
            StatusCode::URI_TOO_LONG,
            format!("request target over the limit of {MAX_TARGET} bytes").into(),
        ));
    }
    let bad = |reason: &'static str| HeadError::Refuse(StatusCode::BAD_REQUEST, reason.into());
    let method = Method::from_bytes(request.method.unwrap_or("").as_bytes())
        .map_err(|_| bad("bad method"))?;
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut builder = Request::builder().method(method).uri(target).version(version);
    for header in request.headers.iter() {
        builder = builder.header(header.name, header.value);
    }
    let request = builder.body(()).map_err(|_| bad("malformed request"))?;
    let (parts, ()) = request.into_parts();
    Ok(Some((parts, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(raw: &[u8]) -> Option<StatusCode> {
        match parse(raw) {
            Err(HeadError::Refuse(status, _)) => Some(status),
            _ => None,
        }
    }

    #[test]
    fn parses_a_stream_request() {
        let raw = b"GET /events?topic=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\nGET /n";
        let (parts, len) = parse(raw).ok().flatten().expect("complete");
        assert_eq!(len, raw.len() - b"GET /n".len());
        assert_eq!(parts.uri.path(), "/events");
        assert_eq!(parts.uri.query(), Some("topic=a"));
        assert_eq!(parts.headers["last-event-id"], "7");
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert!(matches!(parse(b"GET /events HTTP/1.1\r\nHo"), Ok(None)));
    }

    #[test]
    fn bad_heads_are_refused_with_the_right_status() {
        assert_eq!(refused(b"GARBAGE\r\n\r\n"), Some(StatusCode::BAD_REQUEST));
        let many: String = (0..100).map(|i| format!("x-h{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(refused(raw.as_bytes()), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        let body = |raw: &[u8]| parse(raw).ok().flatten().map(|(parts, _)| has_body(&parts));
        assert_eq!(body(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), Some(false));
        assert_eq!(body(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"), Some(true));
        assert_eq!(body(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Some(true));
    }

    #[test]
    fn body_lengths_and_close_requests_are_read_from_the_head() {
        let head = |raw: &[u8]| parse(raw).ok().flatten().expect("complete").0;
        let length = |raw: &[u8]| body_length(&head(raw));
        assert_eq!(length(b"POST / HTTP/1.1\r\n\r\n"), BodyLength::Known(0));
        assert_eq!(length(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"), BodyLength::Known(12));
        let twice = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(length(twice), BodyLength::Known(3));
        let differ = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(length(differ), BodyLength::Unknown);
        assert_eq!(length(b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n"), BodyLength::Unknown);
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(length(chunked), BodyLength::Unknown);
        let close = |raw: &[u8]| wants_close(&head(raw));
        assert!(!close(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"));
        assert!(close(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n"));
        assert!(close(b"GET / HTTP/1.0\r\n\r\n"));
    }
}
