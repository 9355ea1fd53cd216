//! The embedding the README recommends, over real loopback TCP: the native listener in front,
//! an application's own axum `Router` as its fallback. The app's JSON route and its POST route
//! (which publishes) answer through the listener, the SSE path streams natively, all on one
//! port and one kept-alive connection; a 1 MiB event goes through whole. Every wait is bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use ssehub::server::Server;
use ssehub::{Endpoint, Event, Hub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

/// The application: `GET /api/status` answers JSON, `POST /api/news` publishes its body to the
/// topic `news` (202), as an app mounting ssehub would write them.
fn app(hub: Hub) -> Router {
    Router::new()
        .route(
            "/api/status",
            get(|State(hub): State<Hub>| async move {
                let status =
                    serde_json::json!({ "news_subscribers": hub.topic_subscriber_count("news") });
                ([(header::CONTENT_TYPE, "application/json")], status.to_string())
            }),
        )
        .route(
            "/api/news",
            post(|State(hub): State<Hub>, body: String| async move {
                match hub.publish("news", Event::new(body)) {
                    Ok(_) => StatusCode::ACCEPTED,
                    Err(_) => StatusCode::BAD_REQUEST,
                }
            }),
        )
        .with_state(hub)
}

/// The listener on a free port: `/events` native, the rest to `app`; and the endpoint.
async fn start(hub: &Hub) -> (SocketAddr, Endpoint) {
    let endpoint = Endpoint::new(hub.clone());
    let server = Server::new(endpoint.clone())
        .with_path("/events")
        .with_body_limits(2 * 1024 * 1024, WAIT)
        .with_fallback(app(hub.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    (addr, endpoint)
}

/// One response off a kept connection: its head (lower-cased) and its `content-length` body;
/// bytes read past it stay in `buffered`.
async fn response(socket: &mut TcpStream, buffered: &mut Vec<u8>) -> (String, Vec<u8>) {
    let deadline = Instant::now() + WAIT;
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
                return (head, body);
            }
        }
        read_more(socket, buffered, deadline).await;
    }
}

/// Reads what the server sent next into `buffered`, failing at `deadline` or on a close.
async fn read_more(socket: &mut TcpStream, buffered: &mut Vec<u8>, deadline: Instant) {
    let mut chunk = [0u8; 64 * 1024];
    let left = deadline.saturating_duration_since(Instant::now());
    let n = tokio::time::timeout(left, socket.read(&mut chunk))
        .await
        .unwrap_or_else(|_| panic!("nothing more within the wait: {:?}", tail(buffered)))
        .unwrap();
    assert!(n > 0, "the server closed the connection: {:?}", tail(buffered));
    buffered.extend_from_slice(&chunk[..n]);
}

fn tail(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(300)..]).into_owned()
}

fn post_news(body: &str) -> String {
    format!("POST /api/news HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}", body.len())
}

#[tokio::test]
async fn app_routes_and_the_native_stream_share_one_port_and_one_kept_alive_connection() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let (addr, endpoint) = start(&hub).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let mut buffered = Vec::new();

    socket.write_all(b"GET /api/status HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
    let (head, body) = response(&mut socket, &mut buffered).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["news_subscribers"], 0);

    // The POST route with a body, then the stream, pipelined on the same connection.
    let ask = format!("{}GET /events?topic=news HTTP/1.1\r\nhost: t\r\n\r\n", post_news("first"));
    socket.write_all(ask.as_bytes()).await.unwrap();
    let (head, _) = response(&mut socket, &mut buffered).await;
    assert!(head.starts_with("http/1.1 202"), "{head}");
    let deadline = Instant::now() + WAIT;
    while !buffered.windows(4).any(|w| w == b"\r\n\r\n") {
        read_more(&mut socket, &mut buffered, deadline).await;
    }
    let head = String::from_utf8_lossy(&buffered).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    // The stream is the listener's own (counted by its endpoint), not the router's.
    assert_eq!(endpoint.connection_count(), 1);

    // Another client publishes through the app's POST route; the stream gets it.
    let mut publisher = TcpStream::connect(addr).await.unwrap();
    publisher.write_all(post_news("second").as_bytes()).await.unwrap();
    let (head, _) = response(&mut publisher, &mut Vec::new()).await;
    assert!(head.starts_with("http/1.1 202"), "{head}");
    while !buffered.ends_with(b"data: second\n\n") {
        read_more(&mut socket, &mut buffered, deadline).await;
    }
    // The JSON route sees the stream's subscription.
    publisher.write_all(b"GET /api/status HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
    let (_, body) = response(&mut publisher, &mut Vec::new()).await;
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["news_subscribers"], 1);
}

#[tokio::test]
async fn a_one_mebibyte_event_posted_to_the_app_streams_whole() {
    let hub = Hub::builder().with_heartbeat(None).with_max_event_bytes(2 * 1024 * 1024).build();
    let (addr, _) = start(&hub).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /events?topic=news HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
    let deadline = Instant::now() + WAIT;
    while hub.topic_subscriber_count("news") == 0 {
        assert!(Instant::now() < deadline, "the stream never subscribed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let big = "x".repeat(1024 * 1024);
    let mut publisher = TcpStream::connect(addr).await.unwrap();
    publisher.write_all(post_news(&big).as_bytes()).await.unwrap();
    let (head, _) = response(&mut publisher, &mut Vec::new()).await;
    assert!(head.starts_with("http/1.1 202"), "{head}");
    let expected = format!("data: {big}\n\n");
    let mut seen = Vec::new();
    while !seen.ends_with(expected.as_bytes()) {
        assert!(seen.len() < 4 * expected.len(), "more than the event arrived");
        read_more(&mut stream, &mut seen, deadline).await;
    }
}
