//! Shared by `http_axum.rs` and `http_hyper.rs`: servers on 127.0.0.1:0, a raw HTTP/1.1 client
//! and a minimal HTTP/2 (h2c prior knowledge) client over `TcpStream`, both feeding
//! `ssehub::parse::Parser`, and the scenarios both adapters must pass. Every wait is bounded.
//!
//! Each test file uses its own subset of the helpers, hence the module-wide allowance.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use http::request::Parts;
use ssehub::parse::{ParsedEvent, Parser};
use ssehub::resolve::{cookie, query_params, Credentials};
use ssehub::{
    Cors, Endpoint, Event, HistoryLimits, Hub, PathTopic, QueryTopics, Rejection, Resolver,
    SessionLimits, Subscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The longest any single wait may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Which adapter serves the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// `ssehub::axum::events` on `/events` and `/api/{kind}/{id}/sse`, under `axum::serve`.
    Axum,
    /// `ssehub::hyper::serve`: every path.
    Hyper,
}

/// How long a test server lets a connection's writes stall before closing it.
pub const SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// Serves `endpoint` on a fresh port, with a short write timeout.
pub async fn spawn<R: Resolver>(server: Server, endpoint: Endpoint<R>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    match server {
        Server::Axum => {
            let app = axum::Router::new()
                .route("/events", ssehub::axum::events(endpoint.clone()))
                .route("/api/{kind}/{id}/sse", ssehub::axum::events(endpoint));
            let listener = ssehub::axum::listener(listener, SEND_TIMEOUT);
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        Server::Hyper => {
            let endpoint = endpoint.with_write_timeout(Some(SEND_TIMEOUT));
            tokio::spawn(ssehub::hyper::serve(listener, endpoint));
        }
    }
    addr
}

/// Waits until `condition` holds, or fails the test.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An HTTP/1.1 response being read: its head, then its body (decoded from chunks if chunked),
/// fed to an SSE parser.
#[derive(Debug)]
pub struct Client {
    /// The connection.
    stream: TcpStream,
    /// The status code.
    pub status: u16,
    /// The response headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// How the body is framed.
    framing: Framing,
    /// Body bytes decoded but not yet taken.
    body: Vec<u8>,
    /// The SSE parser.
    parser: Parser,
    /// Events parsed but not yet taken.
    events: Vec<ParsedEvent>,
    /// Socket reads made for the body.
    pub reads: usize,
    /// Whether the body (or the connection) has ended.
    pub ended: bool,
}

/// How an HTTP/1.1 body is delimited.
#[derive(Debug)]
enum Framing {
    /// `content-length`: bytes still to come.
    Length(usize),
    /// `transfer-encoding: chunked`.
    Chunked(Chunks),
    /// Until the connection closes.
    Close,
}

/// An incremental decoder of `transfer-encoding: chunked`.
#[derive(Debug, Default)]
struct Chunks {
    /// The size line read so far.
    line: Vec<u8>,
    /// Data bytes left in the current chunk.
    data: usize,
    /// Bytes of the CRLF after a chunk's data still to skip.
    crlf: usize,
    /// The last chunk was seen.
    done: bool,
}

impl Chunks {
    /// Decodes `input`, appending data to `out`.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() && !self.done {
            if self.data > 0 {
                let n = self.data.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.data -= n;
                input = &input[n..];
                if self.data == 0 {
                    self.crlf = 2;
                }
            } else if self.crlf > 0 {
                self.crlf -= 1;
                input = &input[1..];
            } else {
                let byte = input[0];
                input = &input[1..];
                if byte != b'\n' {
                    self.line.push(byte);
                    continue;
                }
                let line = String::from_utf8_lossy(&self.line).to_string();
                self.line.clear();
                let size = line.trim().split(';').next().unwrap_or("").trim().to_string();
                let size = usize::from_str_radix(&size, 16).expect("a chunk size");
                if size == 0 {
                    self.done = true;
                } else {
                    self.data = size;
                }
            }
        }
    }
}

/// A raw request on a new connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Client {
    let stream = TcpStream::connect(addr).await.expect("connect");
    send(stream, method, target, headers).await
}

/// A client that sends its request (`headers`: extra lines, each ending in CRLF) and never
/// reads. Its receive buffer is fixed at 4 KiB, so its window closes quickly, as over a
/// network, and the server's writes to it stall.
pub async fn stalled(addr: SocketAddr, target: &str, headers: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nhost: t\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// `GET target`.
pub async fn get(addr: SocketAddr, target: &str) -> Client {
    request(addr, "GET", target, &[]).await
}

/// Sends a request on `stream` and reads the response head.
pub async fn send(
    mut stream: TcpStream,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Client {
    let mut head = format!("{method} {target} HTTP/1.1\r\nhost: test\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("send the request");
    let mut buf = Vec::new();
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0; 4096];
        let n = within(stream.read(&mut chunk)).await.expect("read the head");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let framing = if status == 204 || status == 304 {
        Framing::Length(0)
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        Framing::Chunked(Chunks::default())
    } else if let Some(len) = header("content-length") {
        Framing::Length(len.parse().expect("a content length"))
    } else {
        Framing::Close
    };
    let mut client = Client {
        stream,
        status,
        headers,
        framing,
        body: Vec::new(),
        parser: Parser::new(),
        events: Vec::new(),
        reads: 0,
        ended: false,
    };
    let rest = buf[end + 4..].to_vec();
    client.take(&rest);
    client
}

/// Runs `future` with the test timeout.
async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future).await.expect("timed out")
}

impl Client {
    /// The value of response header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Takes raw bytes from the socket through the body framing.
    fn take(&mut self, input: &[u8]) {
        let start = self.body.len();
        match &mut self.framing {
            Framing::Length(left) => {
                let n = (*left).min(input.len());
                self.body.extend_from_slice(&input[..n]);
                *left -= n;
                self.ended |= *left == 0;
            }
            Framing::Chunked(chunks) => {
                chunks.feed(input, &mut self.body);
                self.ended |= chunks.done;
            }
            Framing::Close => self.body.extend_from_slice(input),
        }
        let fresh = self.body[start..].to_vec();
        self.parser.feed(&fresh, &mut self.events).expect("a valid event stream");
    }

    /// One read from the socket; false at the end of the body or connection.
    async fn read_more(&mut self) -> bool {
        if self.ended {
            return false;
        }
        let mut chunk = vec![0; 64 * 1024];
        let n = within(self.stream.read(&mut chunk)).await.unwrap_or(0);
        self.reads += 1;
        if n == 0 {
            self.ended = true;
            return false;
        }
        self.take(&chunk[..n]);
        true
    }

    /// The whole body as text (for refusals).
    pub async fn text(&mut self) -> String {
        while self.read_more().await {}
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// The next event, or fails the test.
    pub async fn next(&mut self) -> ParsedEvent {
        self.events(1).await.remove(0)
    }

    /// The next `n` events, or fails the test.
    pub async fn events(&mut self, n: usize) -> Vec<ParsedEvent> {
        while self.events.len() < n {
            assert!(self.read_more().await, "stream ended after {:?}", self.events);
        }
        self.events.drain(..n).collect()
    }

    /// The body bytes received so far, undecoded SSE (comments included).
    pub fn raw(&self) -> &[u8] {
        &self.body
    }

    /// Reads until the body or the connection ends; returns the events that came first.
    pub async fn until_end(&mut self) -> Vec<ParsedEvent> {
        while self.read_more().await {}
        std::mem::take(&mut self.events)
    }
}

/// A minimal HTTP/2 client with prior knowledge: one GET on stream 1, `:status` read from the
/// static table, DATA fed to the SSE parser. It announces large windows so flow control never
/// needs a `WINDOW_UPDATE` in a test.
#[derive(Debug)]
pub struct H2 {
    /// The connection.
    stream: TcpStream,
    /// Frame bytes not yet parsed.
    buf: Vec<u8>,
    /// The response status, once the HEADERS frame came.
    pub status: Option<u16>,
    /// The SSE parser.
    parser: Parser,
    /// Events parsed but not yet taken.
    events: Vec<ParsedEvent>,
}

/// Frame types used.
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;

/// One frame: its header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small frame").to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Opens an h2c connection and sends `GET path`.
pub async fn h2_get(addr: SocketAddr, path: &str) -> H2 {
    h2_get_split(addr, path, 0).await
}

/// `h2_get`, the first `split` bytes of the connection sent alone, 50 ms before the rest (a
/// preface cut in two segments).
pub async fn h2_get_split(addr: SocketAddr, path: &str, split: usize) -> H2 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let window: u32 = 1 << 24;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // ENABLE_PUSH = 0, INITIAL_WINDOW_SIZE = 16 MiB.
    let mut settings = vec![0, 2, 0, 0, 0, 0, 0, 4];
    settings.extend_from_slice(&window.to_be_bytes());
    out.extend(frame(SETTINGS, 0, 0, &settings));
    out.extend(frame(WINDOW_UPDATE, 0, 0, &(window - 65_535).to_be_bytes()));
    // :method GET, :scheme http (static table), :path and :authority as literals without
    // indexing on static names 4 and 1, without Huffman coding.
    let mut block = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).expect("a short path")];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 4]);
    block.extend_from_slice(b"test");
    out.extend(frame(HEADERS, 0x1 | 0x4, 1, &block));
    stream.write_all(&out[..split]).await.expect("send the start of the h2 request");
    if split > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stream.write_all(&out[split..]).await.expect("send the h2 request");
    let mut client =
        H2 { stream, buf: Vec::new(), status: None, parser: Parser::new(), events: Vec::new() };
    while client.status.is_none() {
        client.read_frames().await;
    }
    client
}

impl H2 {
    /// Reads from the socket and handles every complete frame.
    async fn read_frames(&mut self) {
        let mut chunk = vec![0; 64 * 1024];
        let n = within(self.stream.read(&mut chunk)).await.expect("read h2");
        assert!(n > 0, "h2 connection closed");
        self.buf.extend_from_slice(&chunk[..n]);
        while self.buf.len() >= 9 {
            let len = usize::from(self.buf[0]) << 16
                | usize::from(self.buf[1]) << 8
                | usize::from(self.buf[2]);
            if self.buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (self.buf[3], self.buf[4]);
            let stream = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]])
                & 0x7fff_ffff;
            let payload: Vec<u8> = self.buf.drain(..9 + len).skip(9).collect();
            match kind {
                SETTINGS if flags & 1 == 0 => {
                    self.stream.write_all(&frame(SETTINGS, 1, 0, &[])).await.expect("ack settings");
                }
                PING if flags & 1 == 0 => {
                    self.stream.write_all(&frame(PING, 1, 0, &payload)).await.expect("pong");
                }
                HEADERS if stream == 1 => {
                    // Static table entries 8..=14 are the common statuses; hyper indexes 200.
                    let statuses = [200, 204, 206, 304, 400, 404, 500];
                    let first = payload.first().copied().unwrap_or(0);
                    self.status = Some(match first {
                        0x88..=0x8e => statuses[usize::from(first - 0x88)],
                        _ => 0,
                    });
                }
                DATA if stream == 1 => {
                    let data = if flags & 0x8 != 0 {
                        let pad = usize::from(payload[0]);
                        &payload[1..payload.len() - pad]
                    } else {
                        &payload[..]
                    };
                    self.parser.feed(data, &mut self.events).expect("a valid event stream");
                }
                RST_STREAM | GOAWAY => panic!("h2 stream reset or connection closed"),
                _ => {}
            }
        }
    }

    /// The next `n` events, or fails the test.
    pub async fn events(&mut self, n: usize) -> Vec<ParsedEvent> {
        while self.events.len() < n {
            self.read_frames().await;
        }
        self.events.drain(..n).collect()
    }
}

/// A hub for tests: no heartbeat, so streams carry only what a test publishes.
fn quiet() -> ssehub::HubBuilder {
    Hub::builder().with_heartbeat(None)
}

// ---- scenarios -------------------------------------------------------------------------------

/// 200 with the SSE headers; events arrive and parse exactly, multi-line and unicode data too.
pub async fn headers_and_events(server: Server) {
    let hub = quiet().build();
    let addr = spawn(server, Endpoint::new(hub.clone())).await;
    let mut client = get(addr, "/events?topic=news&topic=a%3Ab").await;
    assert_eq!(client.status, 200);
    assert_eq!(client.header("content-type"), Some("text/event-stream"));
    assert_eq!(client.header("cache-control"), Some("no-cache"));
    assert_eq!(client.header("x-accel-buffering"), Some("no"));
    assert_eq!(hub.topic_subscriber_count("a:b"), 1);

    hub.publish(
        "news",
        Event::new("line one\nline two: ünïcødé ✓").with_event("tick").with_id("1"),
    )
    .expect("publish");
    hub.publish("a:b", Event::new(" leading space").with_id("2")).expect("publish");
    hub.publish("elsewhere", Event::new("not for this client")).expect("publish");
    hub.broadcast(Event::new("to all")).expect("broadcast");
    assert_eq!(
        client.events(3).await,
        [
            ParsedEvent::new("tick", "line one\nline two: ünïcødé ✓").with_id("1"),
            ParsedEvent::new("message", " leading space").with_id("2"),
            ParsedEvent::new("message", "to all").with_id("2"),
        ]
    );
}

/// A burst published at once arrives in a few reads, not one per event.
pub async fn burst_in_few_reads(server: Server) {
    let hub = quiet().build();
    let addr = spawn(server, Endpoint::new(hub.clone())).await;
    let mut client = get(addr, "/events?topic=burst").await;
    assert_eq!(client.status, 200);
    // No await between publishes: on this single-threaded runtime the server cannot run until
    // the whole burst is queued.
    for i in 0..128 {
        hub.publish("burst", Event::new(format!("event {i}")).with_id(i.to_string()))
            .expect("publish");
    }
    let events = client.events(128).await;
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.data, format!("event {i}"));
        assert_eq!(event.id, i.to_string());
    }
    assert!(client.reads <= 4, "128 events took {} reads", client.reads);
}

/// A 1 MiB event (hyper's buffers start at 8 KiB) arrives whole, over HTTP/1.1 and h2c, and a
/// small one after it.
pub async fn one_mebibyte_event(server: Server) {
    let hub = quiet().with_max_event_bytes(2 * 1024 * 1024).build();
    let addr = spawn(server, Endpoint::new(hub.clone())).await;
    let mut h1 = get(addr, "/events?topic=big").await;
    let mut h2 = h2_get(addr, "/events?topic=big").await;
    assert_eq!((h1.status, h2.status), (200, Some(200)));
    eventually("both subscribers", || hub.topic_subscriber_count("big") == 2).await;
    // Just under the test parser's 1 MiB line limit, `data: ` included.
    let big = "x".repeat(1024 * 1024 - 16);
    hub.publish("big", Event::new(big.clone())).expect("publish");
    hub.publish("big", Event::new("after")).expect("publish");
    let expected = [ParsedEvent::new("message", big), ParsedEvent::new("message", "after")];
    assert_eq!(h1.events(2).await, expected);
    assert_eq!(h2.events(2).await, expected);
}

/// An h2c preface that arrives in two segments is still HTTP/2.
pub async fn h2c_preface_in_two_segments(server: Server) {
    let hub = quiet().build();
    let addr = spawn(server, Endpoint::new(hub.clone())).await;
    let mut client = h2_get_split(addr, "/events?topic=split", 10).await;
    assert_eq!(client.status, Some(200));
    eventually("the h2 subscriber", || hub.topic_subscriber_count("split") == 1).await;
    hub.publish("split", Event::new("whole")).expect("publish");
    assert_eq!(client.events(1).await, [ParsedEvent::new("message", "whole")]);
}

/// A resolver using `Credentials`: 401 without a credential, 403 for a wrong one, 200 with a cookie
/// or (enabled) a query token; the reason is the body and no token is echoed.
pub async fn resolver_rejects(server: Server) {
    let hub = quiet().build();
    let endpoint = Endpoint::new(hub.clone()).with_resolver(|request: &Parts| {
        let credentials = Credentials::new().with_cookie("sid").with_query_token(true);
        let token = credentials
            .token(request)
            .ok_or_else(|| Rejection::Unauthorized("sign in first".into()))?;
        if token.as_str() != "s3cret" {
            return Err(Rejection::Forbidden("unknown session".into()));
        }
        Ok(QueryTopics::new().parse(request)?.with_principal("ann"))
    });
    let addr = spawn(server, endpoint).await;

    let mut anonymous = get(addr, "/events?topic=t").await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    assert_eq!(anonymous.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(anonymous.text().await, "sign in first");

    let mut wrong = request(addr, "GET", "/events?topic=t", &[("cookie", "sid=hunter2")]).await;
    assert_eq!(wrong.status, 403);
    let body = wrong.text().await;
    assert_eq!(body, "unknown session");
    assert!(!body.contains("hunter2"));

    let mut wrong_query = get(addr, "/events?topic=t&access_token=hunter2").await;
    assert_eq!(wrong_query.status, 403);
    assert!(!wrong_query.text().await.contains("hunter2"));

    let cookie = request(addr, "GET", "/events?topic=t", &[("cookie", "a=b; sid=s3cret")]).await;
    assert_eq!(cookie.status, 200);
    let query = get(addr, "/events?topic=t&access_token=s3cret").await;
    assert_eq!(query.status, 200);
    let bearer =
        request(addr, "GET", "/events?topic=t", &[("authorization", "Bearer s3cret")]).await;
    assert_eq!(bearer.status, 200);
    eventually("three subscribers", || hub.topic_subscriber_count("t") == 3).await;
}

/// Invalid topics, too many, too long, and patterns when they are off: 400 with a reason.
pub async fn bad_topics_are_400(server: Server) {
    let hub = quiet().build();
    let endpoint = Endpoint::new(hub.clone()).with_max_topics(2).with_max_topic_len(8);
    let addr = spawn(server, endpoint).await;
    for (target, reason) in [
        ("/events?topic=a%0Ab", "control character"),
        ("/events?topic=", "empty"),
        ("/events?topic=a*", "'*'"),
        ("/events?topic=a&topic=b&pattern=c:*", "over the limit of 2"),
        ("/events?topic=123456789", "over the limit of 8"),
        ("/events?pattern=%E2%80%8B", "invisible"),
    ] {
        let mut client = get(addr, target).await;
        assert_eq!(client.status, 400, "{target}");
        let body = client.text().await;
        assert!(body.contains(reason), "{target}: {body}");
    }
    let no_patterns =
        Endpoint::new(hub.clone()).with_resolver(QueryTopics::new().with_patterns(false));
    let addr = spawn(server, no_patterns).await;
    let mut client = get(addr, "/events?pattern=*").await;
    assert_eq!(client.status, 400);
    assert_eq!(client.text().await, "patterns are not allowed");
    assert_eq!(hub.subscriber_count(), 0);
}

/// The endpoint's connection limit answers 503 with `Retry-After`; a client closing its socket
/// frees its subscription and its slot.
pub async fn connection_limit(server: Server) {
    let hub = quiet().build();
    let endpoint = Endpoint::new(hub.clone()).with_max_connections(1);
    let addr = spawn(server, endpoint.clone()).await;
    let first = get(addr, "/events?topic=t").await;
    assert_eq!(first.status, 200);
    assert_eq!((hub.subscriber_count(), endpoint.connection_count()), (1, 1));

    let mut second = get(addr, "/events?topic=t").await;
    assert_eq!(second.status, 503);
    assert_eq!(second.header("retry-after"), Some("5"));
    assert_eq!(second.text().await, "too many connections, retry later");

    drop(first);
    eventually("the slot to free", || {
        hub.subscriber_count() == 0 && endpoint.connection_count() == 0
    })
    .await;
    let third = get(addr, "/events?topic=t").await;
    assert_eq!(third.status, 200);
    assert_eq!(hub.subscriber_count(), 1);
}

/// The hub's own subscriber limit is a 503 too, and so is a hub that was shut down.
pub async fn hub_full_and_closed(server: Server) {
    let hub = quiet().with_max_subscribers(1).build();
    let addr =
        spawn(server, Endpoint::new(hub.clone()).with_retry_after(Duration::from_millis(1500)))
            .await;
    let first = get(addr, "/events?topic=t").await;
    assert_eq!(first.status, 200);
    let second = get(addr, "/events?topic=t").await;
    assert_eq!(second.status, 503);
    assert_eq!(second.header("retry-after"), Some("2"));
    hub.shutdown();
    let mut after = get(addr, "/events?topic=t").await;
    assert_eq!(after.status, 503);
    assert_eq!(after.text().await, "server is shutting down");
}

/// Only GET opens a stream: 405 with `Allow`.
pub async fn other_methods_are_405(server: Server) {
    let hub = quiet().build();
    let addr = spawn(server, Endpoint::new(hub.clone())).await;
    let mut post = request(addr, "POST", "/events?topic=t", &[("content-length", "0")]).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET"));
    assert_eq!(post.text().await, "only GET opens a stream");
    let delete = request(addr, "DELETE", "/events?topic=t", &[]).await;
    assert_eq!(delete.status, 405);
    assert_eq!(hub.subscriber_count(), 0);
}

/// CORS: preflight answered, headers on the stream, other origins refused, `*` for any origin.
pub async fn cors(server: Server) {
    let hub = quiet().build();
    let endpoint = Endpoint::new(hub.clone())
        .with_cors(Cors::origins(["https://app.example"]).with_credentials(true));
    let addr = spawn(server, endpoint).await;

    let mut preflight = request(
        addr,
        "OPTIONS",
        "/events?topic=t",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "last-event-id, authorization"),
        ],
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(preflight.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(preflight.header("access-control-allow-methods"), Some("GET"));
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        Some("last-event-id, authorization")
    );
    assert_eq!(preflight.text().await, "");

    let stream =
        request(addr, "GET", "/events?topic=t", &[("origin", "https://app.example")]).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(stream.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(stream.header("vary"), Some("origin"));

    let mut evil =
        request(addr, "GET", "/events?topic=t", &[("origin", "https://evil.example")]).await;
    assert_eq!(evil.status, 403);
    assert_eq!(evil.header("access-control-allow-origin"), None);
    assert_eq!(evil.text().await, "origin not allowed");

    let same_origin = get(addr, "/events?topic=t").await;
    assert_eq!(same_origin.status, 200);
    assert_eq!(same_origin.header("access-control-allow-origin"), None);

    let put = request(addr, "PUT", "/events", &[("content-length", "0")]).await;
    assert_eq!(put.status, 405);
    assert_eq!(put.header("allow"), Some("GET, OPTIONS"));

    let any = spawn(server, Endpoint::new(hub.clone()).with_cors(Cors::any())).await;
    let open =
        request(any, "GET", "/events?topic=t", &[("origin", "https://anyone.example")]).await;
    assert_eq!(open.status, 200);
    assert_eq!(open.header("access-control-allow-origin"), Some("*"));
    assert_eq!(open.header("access-control-allow-credentials"), None);
}

/// Resuming: the `Last-Event-ID` header wins over `lastEventId`; the query parameter alone
/// resumes; both then get live events with no gap and no duplicate.
pub async fn last_event_id(server: Server) {
    let hub = quiet().with_history(Some(HistoryLimits::new())).build();
    let addr = spawn(server, Endpoint::new(hub.clone())).await;
    let ids: Vec<String> = (1..=3)
        .map(|i| {
            let published = hub.publish("t", Event::new(format!("e{i}"))).expect("publish");
            published.id().expect("an assigned id").to_string()
        })
        .collect();

    let target = format!("/events?topic=t&lastEventId={}", ids[1]);
    let mut header = request(addr, "GET", &target, &[("last-event-id", &ids[0])]).await;
    assert_eq!(header.status, 200);
    let replayed: Vec<String> = header.events(2).await.into_iter().map(|e| e.data).collect();
    assert_eq!(replayed, ["e2", "e3"]);

    let mut query = get(addr, &target).await;
    let replayed: Vec<String> = query.events(1).await.into_iter().map(|e| e.data).collect();
    assert_eq!(replayed, ["e3"]);

    let live = hub.publish("t", Event::new("e4")).expect("publish");
    for client in [&mut header, &mut query] {
        let event = client.events(1).await.remove(0);
        assert_eq!(event.data, "e4");
        assert_eq!(Some(event.id.as_str()), live.id());
    }
}

/// `snapshot=1`: the latest event of every key of every matched topic between the two
/// `snapshot` frames, then live; a bad value is a 400.
pub async fn snapshot(server: Server) {
    let hub = quiet().with_state(Some(ssehub::StateLimits::new())).build();
    let addr = spawn(server, Endpoint::new(hub.clone())).await;
    hub.publish("p:a", Event::new("old").with_key("k").with_id("1")).expect("publish");
    hub.publish("p:b", Event::new("b").with_key("k").with_id("2")).expect("publish");
    hub.publish("p:a", Event::new("new").with_key("k").with_id("3")).expect("publish");
    let mut client = get(addr, "/events?pattern=p:*&snapshot=1").await;
    assert_eq!(client.status, 200);
    let events = client.events(4).await;
    let seen: Vec<(&str, &str, &str)> =
        events.iter().map(|e| (e.event.as_str(), e.data.as_str(), e.id.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("snapshot", r#"{"state":"begin","events":2}"#, ""),
            ("message", "b", "2"),
            ("message", "new", "3"),
            // The parser keeps the last id: the end frame has none of its own.
            ("snapshot", r#"{"state":"end"}"#, "3"),
        ]
    );
    hub.publish("p:c", Event::new("live").with_id("4")).expect("publish");
    let live = client.events(1).await.remove(0);
    assert_eq!((live.data.as_str(), live.id.as_str()), ("live", "4"));
    assert_eq!(get(addr, "/events?topic=t&snapshot=maybe").await.status, 400);
}

/// A resume point over 256 bytes is passed to the hub, which answers with a `reset` event.
pub async fn oversized_last_event_id_resets(server: Server) {
    let hub = quiet().with_history(Some(HistoryLimits::new())).build();
    hub.publish("t", Event::new("old")).expect("publish");
    let addr = spawn(server, Endpoint::new(hub.clone())).await;
    let long = "9".repeat(2000);
    let mut client = request(addr, "GET", "/events?topic=t", &[("last-event-id", &long)]).await;
    assert_eq!(client.status, 200);
    let reset = client.events(1).await.remove(0);
    assert_eq!(reset.event, "reset");
    assert!(reset.data.contains("malformed"), "{}", reset.data);
    hub.publish("t", Event::new("new")).expect("publish");
    assert_eq!(client.events(1).await[0].data, "new");
}

/// A client that connects and never reads is dropped as slow by the hub, then its connection is
/// closed by the write timeout (freeing its subscription and slot), while another client on the
/// same topic receives every event, in order.
pub async fn stalled_client_is_dropped(server: Server) {
    let hub = quiet().with_capacity(8).build();
    let endpoint = Endpoint::new(hub.clone());
    let addr = spawn(server, endpoint.clone()).await;
    let mut reader = get(addr, "/events?topic=t").await;
    assert_eq!(reader.status, 200);

    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("a small receive buffer");
    let mut stalled = socket.connect(addr).await.expect("connect");
    stalled
        .write_all(b"GET /events?topic=t HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("send the request");
    eventually("two subscribers", || hub.subscriber_count() == 2).await;

    // In lockstep with the reader, so only the stalled client can fall behind.
    let payload = "x".repeat(16 * 1024);
    let mut sent = 0u64;
    let mut after_drop = 0;
    while after_drop < 20 {
        sent += 1;
        assert!(sent < 5_000, "the stalled client was never dropped");
        hub.publish("t", Event::new(payload.clone()).with_id(sent.to_string())).expect("publish");
        let event = reader.events(1).await.remove(0);
        assert_eq!(
            (event.id.as_str(), event.data.len()),
            (sent.to_string().as_str(), payload.len())
        );
        if hub.stats().slow_disconnects > 0 {
            after_drop += 1;
        }
    }
    assert_eq!(hub.stats().slow_disconnects, 1);
    eventually("the stalled connection to close", || {
        hub.subscriber_count() == 1 && endpoint.connection_count() == 1
    })
    .await;
    // The reader is unaffected.
    hub.publish("t", Event::new("after")).expect("publish");
    assert_eq!(reader.events(1).await[0].data, "after");

    // The server aborted the stalled connection: reading what was buffered ends in EOF or reset.
    let mut drained = vec![0; 256 * 1024];
    let closed = within(async {
        loop {
            match stalled.read(&mut drained).await {
                Ok(0) | Err(_) => break true,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed);
}

/// HTTP/2 with prior knowledge: a stream over h2c parses exactly.
pub async fn http2(server: Server) {
    let hub = quiet().build();
    let addr = spawn(server, Endpoint::new(hub.clone())).await;
    let mut client = h2_get(addr, "/events?topic=news").await;
    assert_eq!(client.status, Some(200));
    eventually("the h2 subscriber", || hub.subscriber_count() == 1).await;
    for i in 0..100 {
        hub.publish("news", Event::new(format!("h2 {i}\nü")).with_id(i.to_string()))
            .expect("publish");
    }
    let events = client.events(100).await;
    for (i, event) in events.into_iter().enumerate() {
        assert_eq!(event, ParsedEvent::new("message", format!("h2 {i}\nü")).with_id(i.to_string()));
    }
}

/// `PathTopic`: the path picks the topic, the wildcard word makes a pattern, `offset` resumes,
/// a `Last-Event-ID` header wins over `offset`.
pub async fn path_topic(server: Server) {
    let hub = quiet().with_history(Some(HistoryLimits::new())).build();
    let resolver = PathTopic::new("/api/{kind}/{id}/sse", "{kind}:{id}")
        .with_wildcard("all")
        .with_resume_param("offset");
    let addr = spawn(server, Endpoint::new(hub.clone()).with_resolver(resolver)).await;
    let first = hub.publish("device:1", Event::new("one").with_id("10")).expect("publish");
    assert_eq!(first.id(), Some("10"));
    hub.publish("device:2", Event::new("two").with_id("11")).expect("publish");

    let mut one = get(addr, "/api/device/1/sse").await;
    assert_eq!(one.status, 200);
    let mut all = get(addr, "/api/device/all/sse?offset=10").await;
    assert_eq!(all.status, 200);
    assert_eq!(all.events(1).await[0].data, "two");
    let mut header =
        request(addr, "GET", "/api/device/all/sse?offset=11", &[("last-event-id", "10")]).await;
    assert_eq!(header.events(1).await[0].data, "two");

    hub.publish("device:1", Event::new("three").with_id("12")).expect("publish");
    assert_eq!(one.events(1).await[0].data, "three");
    assert_eq!(all.events(1).await[0].data, "three");
    assert_eq!(header.events(1).await[0].data, "three");

    let mut injected = get(addr, "/api/device/1*/sse").await;
    assert_eq!(injected.status, 400);
    assert_eq!(injected.text().await, "'*' is not allowed in a topic");
}

/// A session token presented by another principal: 403, and the attempt is counted.
pub async fn session_refused_is_403(server: Server) {
    let hub = quiet().with_sessions(Some(SessionLimits::new())).build();
    let endpoint = Endpoint::new(hub.clone()).with_resolver(|request: &Parts| {
        let user = cookie(request, "user").ok_or_else(|| Rejection::Unauthorized("who?".into()))?;
        let mut subscribe = Subscribe::new().with_principal(user);
        for (key, value) in query_params(request) {
            match key.as_str() {
                "topic" => subscribe = subscribe.with_topic(value),
                "session" => subscribe = subscribe.with_session_token(value),
                _ => {}
            }
        }
        Ok(subscribe)
    });
    let addr = spawn(server, endpoint).await;
    let mut ann = request(addr, "GET", "/events?topic=room", &[("cookie", "user=ann")]).await;
    assert_eq!(ann.status, 200);
    let connected = ann.events(1).await.remove(0);
    assert_eq!(connected.event, "connected");
    let token = connected
        .data
        .split("\"token\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a resume token")
        .to_string();

    let target = format!("/events?session={token}");
    let mut bob = request(addr, "GET", &target, &[("cookie", "user=bob")]).await;
    assert_eq!(bob.status, 403);
    let body = bob.text().await;
    assert_eq!(body, "session belongs to another principal");
    assert!(!body.contains(&token));
    assert_eq!(hub.stats().session_hijacks, 1);
}

/// Shutting the hub down ends every stream cleanly (the chunked body is terminated).
pub async fn shutdown_ends_streams(server: Server) {
    let hub = quiet().build();
    let addr = spawn(server, Endpoint::new(hub.clone())).await;
    let mut client = get(addr, "/events?topic=t").await;
    assert_eq!(client.status, 200);
    hub.publish("t", Event::new("last words")).expect("publish");
    hub.shutdown();
    let events = client.until_end().await;
    assert_eq!(events, [ParsedEvent::new("message", "last words")]);
    assert!(client.ended);
}

/// Replay exactness over HTTP: a client that drops its connection every few events and comes
/// back with `Last-Event-ID` (as a browser would), while a publisher keeps publishing, receives
/// every event exactly once, in order. Needs a multi-threaded runtime.
pub async fn replay_under_concurrent_publishing(server: Server) {
    const TOTAL: u64 = 1_500;
    let hub = quiet().with_history(Some(HistoryLimits::new().with_max_events(10_000))).build();
    let addr = spawn(server, Endpoint::new(hub.clone())).await;
    let mut client = get(addr, "/events?topic=t").await;
    assert_eq!(client.status, 200);

    let publisher = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            for i in 0..TOTAL {
                hub.publish("t", Event::new(i.to_string())).expect("publish");
                if i % 16 == 0 {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        })
    };
    let mut received = Vec::new();
    let mut reconnects = 0;
    while received.last() != Some(&(TOTAL - 1)) {
        let event = client.events(1).await.remove(0);
        received.push(event.data.parse::<u64>().expect("a number"));
        // The id of the last event taken: events parsed from the same read but not taken yet
        // are lost with the connection, as in a browser that drops mid-chunk.
        let last = event.id;
        if received.len() % 97 == 0 {
            drop(client);
            client = request(addr, "GET", "/events?topic=t", &[("last-event-id", &last)]).await;
            assert_eq!(client.status, 200);
            reconnects += 1;
        }
    }
    publisher.join().expect("the publisher");
    assert!(reconnects >= 10, "only {reconnects} reconnects");
    let first_wrong = received.iter().zip(0..).position(|(got, want)| *got != want);
    assert_eq!(
        first_wrong,
        None,
        "around: {:?}",
        first_wrong.map(|i| &received[i.saturating_sub(3)..])
    );
    assert_eq!(received.len(), usize::try_from(TOTAL).expect("small"));
}

/// An idle stream carries the hub's heartbeat: one comment line, no event.
pub async fn heartbeats_on_idle_stream(server: Server) {
    let hub = Hub::builder().with_heartbeat(Some(Duration::from_millis(50))).build();
    let addr = spawn(server, Endpoint::new(hub.clone())).await;
    let mut client = get(addr, "/events?topic=quiet").await;
    assert_eq!(client.status, 200);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !client.raw().starts_with(b": keep-alive\n") {
        assert!(tokio::time::Instant::now() < deadline, "no heartbeat");
        assert!(client.read_more().await, "stream ended");
    }
    hub.publish("quiet", Event::new("finally")).expect("publish");
    assert_eq!(client.events(1).await[0].data, "finally");
}

/// The scenarios every adapter must pass, as `#[tokio::test]`s against `$server`; each adapter's
/// test file expands them once.
#[macro_export]
macro_rules! adapter_scenarios {
    ($server:expr) => {
        #[tokio::test]
        async fn headers_and_events() {
            support::headers_and_events($server).await;
        }

        #[tokio::test]
        async fn burst_in_few_reads() {
            support::burst_in_few_reads($server).await;
        }

        #[tokio::test]
        async fn one_mebibyte_event() {
            support::one_mebibyte_event($server).await;
        }

        #[tokio::test]
        async fn h2c_preface_in_two_segments() {
            support::h2c_preface_in_two_segments($server).await;
        }

        #[tokio::test]
        async fn resolver_rejects_with_401_and_403() {
            support::resolver_rejects($server).await;
        }

        #[tokio::test]
        async fn bad_topics_are_400() {
            support::bad_topics_are_400($server).await;
        }

        #[tokio::test]
        async fn connection_limit_is_503_and_frees_on_close() {
            support::connection_limit($server).await;
        }

        #[tokio::test]
        async fn hub_full_and_closed_are_503() {
            support::hub_full_and_closed($server).await;
        }

        #[tokio::test]
        async fn other_methods_are_405() {
            support::other_methods_are_405($server).await;
        }

        #[tokio::test]
        async fn cors_preflight_and_origins() {
            support::cors($server).await;
        }

        #[tokio::test]
        async fn last_event_id_header_wins_over_query() {
            support::last_event_id($server).await;
        }

        #[tokio::test]
        async fn snapshot_then_live() {
            support::snapshot($server).await;
        }

        #[tokio::test]
        async fn oversized_last_event_id_resets() {
            support::oversized_last_event_id_resets($server).await;
        }

        #[tokio::test]
        async fn stalled_client_is_dropped_others_get_everything() {
            support::stalled_client_is_dropped($server).await;
        }

        #[tokio::test]
        async fn http2_prior_knowledge() {
            support::http2($server).await;
        }

        #[tokio::test]
        async fn path_topic_maps_path_and_query() {
            support::path_topic($server).await;
        }

        #[tokio::test]
        async fn session_refused_is_403() {
            support::session_refused_is_403($server).await;
        }

        #[tokio::test]
        async fn shutdown_ends_streams() {
            support::shutdown_ends_streams($server).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn replay_under_concurrent_publishing_has_no_gap_or_duplicate() {
            support::replay_under_concurrent_publishing($server).await;
        }

        #[tokio::test]
        async fn heartbeats_on_idle_stream() {
            support::heartbeats_on_idle_stream($server).await;
        }
    };
}
