//! The native listener's fallback over real loopback TCP: kept-alive and pipelined requests, a
//! stream request after them served by the listener itself, `Connection: close` and HTTP/1.0,
//! and the body's deadline and size limit (issue 18). Every wait is bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::{get, post};
use ssehub::server::Server;
use ssehub::{Endpoint, Event, Hub, QueryTopics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

fn hub() -> Hub {
    Hub::builder().with_heartbeat(None).build()
}

/// A listener for `/events` with a router echoing `POST /echo` bodies, and the endpoint.
async fn start(
    hub: &Hub,
    change: impl FnOnce(Server<QueryTopics>) -> Server<QueryTopics>,
) -> (SocketAddr, Endpoint) {
    let app = axum::Router::new()
        .route("/echo", post(|body: Bytes| async move { body }))
        .route("/health", get(|| async { "ok" }));
    let endpoint = Endpoint::new(hub.clone());
    let server = change(Server::new(endpoint.clone()).with_path("/events").with_fallback(app));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    (addr, endpoint)
}

/// One response read off a kept connection: its head (lower-cased) and its body.
struct Response {
    head: String,
    body: Vec<u8>,
}

/// Reads exactly one response (its `content-length` body), leaving the connection's later
/// bytes unread; `buffered` holds bytes read past it.
async fn response(socket: &mut TcpStream, buffered: &mut Vec<u8>) -> Response {
    let deadline = Instant::now() + WAIT;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffered[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buffered.len() >= end + 4 + length {
                let body = buffered[end + 4..end + 4 + length].to_vec();
                buffered.drain(..end + 4 + length);
                return Response { head, body };
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, socket.read(&mut chunk))
            .await
            .expect("a response within the wait")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {:?}", String::from_utf8_lossy(buffered));
        buffered.extend_from_slice(&chunk[..n]);
    }
}

/// Waits for the server to close the connection (end of file, or a reset after it).
async fn closed(socket: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, socket.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the server kept the connection open");
}

fn post_echo(body: &str, extra: &str) -> String {
    format!("POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n{extra}\r\n{body}", body.len())
}

#[tokio::test]
async fn one_connection_serves_many_requests_in_turn() {
    let hub = hub();
    let (addr, _) = start(&hub, |s| s).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let mut buffered = Vec::new();
    for n in 0..20 {
        let body = format!("event {n}");
        socket.write_all(post_echo(&body, "").as_bytes()).await.unwrap();
        let answer = response(&mut socket, &mut buffered).await;
        assert!(answer.head.starts_with("http/1.1 200"), "{}", answer.head);
        assert!(!answer.head.contains("connection: close"), "{}", answer.head);
        assert_eq!(answer.body, body.as_bytes());
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let hub = hub();
    let (addr, _) = start(&hub, |s| s).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let all: String = (0..10).map(|n| post_echo(&format!("body {n}"), "")).collect();
    // One write: the requests arrive together, most in the listener's first read.
    socket.write_all(all.as_bytes()).await.unwrap();
    let mut buffered = Vec::new();
    for n in 0..10 {
        let answer = response(&mut socket, &mut buffered).await;
        assert!(answer.head.starts_with("http/1.1 200"), "{}", answer.head);
        assert_eq!(answer.body, format!("body {n}").as_bytes());
    }
}

#[tokio::test]
async fn a_stream_request_after_publishes_on_the_same_connection_is_served_natively() {
    let hub = hub();
    let (addr, endpoint) = start(&hub, |s| s).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    // Two requests and the stream request pipelined behind them, in one write.
    let all = format!(
        "{}{}GET /events?topic=t HTTP/1.1\r\nhost: t\r\n\r\n",
        post_echo("a", ""),
        post_echo("b", "")
    );
    socket.write_all(all.as_bytes()).await.unwrap();
    let mut buffered = Vec::new();
    assert_eq!(response(&mut socket, &mut buffered).await.body, b"a");
    assert_eq!(response(&mut socket, &mut buffered).await.body, b"b");
    // The native listener's stream head: `connection: close`, no content length, and the
    // endpoint counts the stream (hyper and the router know nothing of `/events`).
    let deadline = Instant::now() + WAIT;
    while !buffered.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(Instant::now() < deadline, "no stream head");
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, socket.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0);
        buffered.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buffered).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    while hub.topic_subscriber_count("t") == 0 {
        assert!(Instant::now() < deadline, "the stream never subscribed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(endpoint.connection_count(), 1);
    hub.publish("t", Event::new("live")).unwrap();
    let end = buffered.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut body = buffered[end..].to_vec();
    while !body.ends_with(b"data: live\n\n") {
        assert!(Instant::now() < deadline, "no event: {:?}", String::from_utf8_lossy(&body));
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, socket.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0);
        body.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn connection_close_and_http_1_0_end_the_connection_after_the_response() {
    let hub = hub();
    let (addr, _) = start(&hub, |s| s).await;
    for request in [
        post_echo("x", "connection: close\r\n"),
        post_echo("x", "connection: keep-alive, close\r\n"),
        "POST /echo HTTP/1.0\r\ncontent-length: 1\r\n\r\nx".to_string(),
        "GET /health HTTP/1.0\r\n\r\n".to_string(),
    ] {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        // A second request behind it must not be answered.
        socket.write_all(format!("{request}{}", post_echo("y", "")).as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, socket.read_to_end(&mut out)).await.expect("closed").unwrap();
        let out = String::from_utf8_lossy(&out).to_ascii_lowercase();
        assert_eq!(out.matches("http/1.").count(), 1, "{request:?}: {out}");
        assert!(out.starts_with("http/1.") && out.contains(" 200 ok"), "{request:?}: {out}");
    }
}

#[tokio::test]
async fn an_idle_kept_connection_is_closed_at_the_head_timeout() {
    let hub = hub();
    let (addr, _) = start(&hub, |s| s.with_head_limits(8192, Duration::from_millis(300))).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(post_echo("x", "").as_bytes()).await.unwrap();
    let mut buffered = Vec::new();
    assert_eq!(response(&mut socket, &mut buffered).await.body, b"x");
    let start = Instant::now();
    closed(&mut socket).await;
    // Kept for the next request until the head timeout, then closed.
    assert!(start.elapsed() >= Duration::from_millis(250), "closed at once, not kept");
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// The defect: `Content-Length: 1000` and half a body held the connection until the
/// client left. Now it gets 408 at the body deadline and the connection closes.
#[tokio::test]
async fn a_stalled_body_gets_408_at_the_deadline_and_the_connection_closes() {
    let hub = hub();
    let (addr, _) =
        start(&hub, |s| s.with_body_limits(1024 * 1024, Duration::from_millis(500))).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let head = "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\n";
    socket.write_all(format!("{head}{}", "x".repeat(500)).as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut buffered = Vec::new();
    let answer = response(&mut socket, &mut buffered).await;
    assert!(answer.head.starts_with("http/1.1 408"), "{}", answer.head);
    assert!(answer.head.contains("connection: close"), "{}", answer.head);
    assert!(started.elapsed() >= Duration::from_millis(400), "answered before the deadline");
    closed(&mut socket).await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let hub = hub();
    let (addr, _) = start(&hub, |s| s.with_body_limits(100, Duration::from_secs(5))).await;
    // Announced: refused before any of it is sent.
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let head = "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 101\r\n\r\n";
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut buffered = Vec::new();
    let answer = response(&mut socket, &mut buffered).await;
    assert!(answer.head.starts_with("http/1.1 413"), "{}", answer.head);
    closed(&mut socket).await;
    // Chunked: cut once it grows past the limit.
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let head = "POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunk = format!("40\r\n{}\r\n", "y".repeat(64));
    socket.write_all(format!("{head}{chunk}{chunk}").as_bytes()).await.unwrap();
    let mut buffered = Vec::new();
    let answer = response(&mut socket, &mut buffered).await;
    assert!(answer.head.starts_with("http/1.1 413"), "{}", answer.head);
    closed(&mut socket).await;
    // At the limit: served, and the connection is kept.
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let body = "z".repeat(100);
    socket.write_all(post_echo(&body, "").as_bytes()).await.unwrap();
    let mut buffered = Vec::new();
    assert_eq!(response(&mut socket, &mut buffered).await.body, body.as_bytes());
    socket.write_all(post_echo("again", "").as_bytes()).await.unwrap();
    assert_eq!(response(&mut socket, &mut buffered).await.body, b"again");
}

/// A route that does not read its body is answered; the connection stays usable only if the
/// body was read (drained) in full, and closes otherwise, never mixing the body into the next
/// request.
#[tokio::test]
async fn an_unread_body_never_becomes_the_next_request() {
    let hub = hub();
    let (addr, _) = start(&hub, |s| s).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let smuggled = "GET /nope HTTP/1.1\r\nhost: t\r\n\r\n";
    let request = format!(
        "GET /health HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    socket.write_all(format!("{request}{}", post_echo("after", "")).as_bytes()).await.unwrap();
    let mut buffered = Vec::new();
    let first = response(&mut socket, &mut buffered).await;
    assert!(first.head.starts_with("http/1.1 200"), "{}", first.head);
    assert_eq!(first.body, b"ok");
    if first.head.contains("connection: close") {
        closed(&mut socket).await;
    } else {
        let next = response(&mut socket, &mut buffered).await;
        assert!(next.head.starts_with("http/1.1 200"), "the body was taken as a request");
        assert_eq!(next.body, b"after");
    }
}

/// With a runtime of its own for the fallback, requests are served there (the handler sees
/// that runtime), and a stream asked for afterwards on the same connection comes back to the
/// listener's runtime and is served natively.
#[tokio::test]
async fn a_fallback_runtime_serves_the_requests_and_hands_the_stream_back() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || runtime.block_on(stopped));
    let publish_runtime = handle.id();
    let hub = hub();
    let app = axum::Router::new().route(
        "/where",
        post(move || async move {
            let here = tokio::runtime::Handle::current().id();
            if here == publish_runtime {
                "fallback runtime"
            } else {
                "listener runtime"
            }
        }),
    );
    let endpoint = Endpoint::new(hub.clone());
    let server = Server::new(endpoint.clone())
        .with_path("/events")
        .with_fallback(app)
        .with_fallback_runtime(handle);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let ask = "POST /where HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n";
    socket.write_all(format!("{ask}{ask}").as_bytes()).await.unwrap();
    let mut buffered = Vec::new();
    for _ in 0..2 {
        assert_eq!(response(&mut socket, &mut buffered).await.body, b"fallback runtime");
    }
    socket.write_all(b"GET /events?topic=t HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
    let deadline = Instant::now() + WAIT;
    while hub.topic_subscriber_count("t") == 0 {
        assert!(Instant::now() < deadline, "the stream never subscribed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(endpoint.connection_count(), 1);
    // The fallback's runtime stops: the stream, on the listener's runtime, goes on.
    stop.send(()).unwrap();
    thread.join().unwrap().unwrap();
    hub.publish("t", Event::new("still here")).unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(b"data: still here\n\n") {
        assert!(Instant::now() < deadline, "{:?}", String::from_utf8_lossy(&seen));
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, socket.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "the stream ended with the fallback's runtime");
        seen.extend_from_slice(&chunk[..n]);
    }
}
