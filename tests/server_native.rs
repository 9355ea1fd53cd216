//! The native listener over real TCP: requests, refusals, streaming, peer close, fallback.

#[path = "support/http.rs"]
mod support;

use std::time::Duration;

use ssehub::parse::Parser;
use ssehub::server::Server;
use ssehub::{Endpoint, Event, Hub, SlowPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

async fn start(server: Server<ssehub::QueryTopics>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    addr
}

fn hub() -> Hub {
    Hub::builder().with_heartbeat(None).build()
}

/// Sends `request` and reads until the server closes; returns everything.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, client.read_to_end(&mut out)).await.expect("server closes").unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens a stream and returns the socket after the response head.
async fn open(addr: std::net::SocketAddr, target: &str) -> (TcpStream, String) {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(format!("GET {target} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, client.read_exact(&mut byte)).await.expect("a head").unwrap();
        head.push(byte[0]);
    }
    (client, String::from_utf8(head).unwrap())
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn streams_events_with_sse_headers_and_frees_the_slot_on_close() {
    let hub = hub();
    let addr = start(Server::new(Endpoint::new(hub.clone())).with_path("/events")).await;
    let (mut client, head) = open(addr, "/events?topic=news").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    for header in
        ["content-type: text/event-stream", "cache-control: no-cache", "x-accel-buffering: no"]
    {
        assert!(lower.contains(header), "{header} missing in {head}");
    }
    until("subscribed", || hub.topic_subscriber_count("news") == 1).await;
    for n in 0..100 {
        hub.publish("news", Event::new(format!("é {n}")).with_id(n.to_string())).unwrap();
    }
    let mut parser = Parser::new();
    let mut events = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut reads = 0;
    while events.len() < 100 {
        let n = tokio::time::timeout(WAIT, client.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0);
        reads += 1;
        parser.feed(&buf[..n], &mut events).unwrap();
    }
    assert_eq!(events[99].data, "é 99");
    assert!(reads < 100, "a burst arrives in batches, not one write per event ({reads} reads)");
    drop(client);
    until("unsubscribed after the peer closed", || hub.subscriber_count() == 0).await;
}

#[tokio::test]
async fn bad_requests_get_clear_statuses() {
    let addr = start(Server::new(Endpoint::new(hub())).with_path("/events")).await;
    let cases: [(&[u8], &str); 5] = [
        (b"GET /elsewhere HTTP/1.1\r\nhost: t\r\n\r\n", "HTTP/1.1 404"),
        (b"NOT HTTP AT ALL\r\n\r\n", "HTTP/1.1 400"),
        (b"POST /events?topic=a HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n", "HTTP/1.1 405"),
        (
            b"GET /events?topic=a HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\n\r\nabc",
            "HTTP/1.1 400",
        ),
        (b"GET /events?topic=bad%0Aname HTTP/1.1\r\nhost: t\r\n\r\n", "HTTP/1.1 400"),
    ];
    for (request, status) in cases {
        let answer = exchange(addr, request).await;
        assert!(answer.starts_with(status), "{:?} -> {answer}", String::from_utf8_lossy(request));
    }
    let big = format!(
        "GET /events?topic=a HTTP/1.1\r\nhost: t\r\nx-junk: {}\r\n\r\n",
        "x".repeat(10_000)
    );
    assert!(exchange(addr, big.as_bytes()).await.starts_with("HTTP/1.1 431"));
}

#[tokio::test]
async fn a_slow_header_sender_is_cut_off_at_the_timeout() {
    let hub = hub();
    let server =
        Server::new(Endpoint::new(hub.clone())).with_head_limits(8192, Duration::from_millis(200));
    let addr = start(server).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"GET /events?topic=a HTTP/1.1\r\n").await.unwrap();
    let mut out = Vec::new();
    // The server closes without answering; nothing was subscribed.
    let n = tokio::time::timeout(WAIT, client.read_to_end(&mut out))
        .await
        .expect("closed by the server")
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(hub.subscriber_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_dropped_while_others_get_everything() {
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_capacity(64)
        .with_slow_policy(SlowPolicy::Disconnect)
        .build();
    let addr = start(Server::new(Endpoint::new(hub.clone()))).await;
    let (_stalled, _) = open(addr, "/?topic=t").await;
    let (mut reader, _) = open(addr, "/?topic=t").await;
    until("both subscribed", || hub.topic_subscriber_count("t") == 2).await;
    let payload = "x".repeat(1000);
    let reading = tokio::spawn(async move {
        let mut parser = Parser::new();
        let mut events = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while events.len() < 20_000 {
            let n = tokio::time::timeout(WAIT, reader.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "the reader's stream ended early");
            parser.feed(&buf[..n], &mut events).unwrap();
        }
        (events, reader)
    });
    // Paced in bursts of 32 a millisecond, so a reader that keeps up stays within its bound.
    for n in 0..20_000 {
        hub.publish("t", Event::new(payload.clone()).with_id(n.to_string())).unwrap();
        if n % 32 == 31 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let (events, _reader) = reading.await.unwrap();
    assert!(events.iter().enumerate().all(|(n, e)| e.id == n.to_string()));
    assert_eq!(hub.stats().slow_disconnects, 1);
    // The stalled client left the registry when it was dropped; the reader is still there.
    assert_eq!(hub.topic_subscriber_count("t"), 1);
}

#[tokio::test]
async fn hub_shutdown_ends_the_stream_cleanly() {
    let hub = hub();
    let addr = start(Server::new(Endpoint::new(hub.clone()))).await;
    let (mut client, _) = open(addr, "/?topic=t").await;
    until("subscribed", || hub.subscriber_count() == 1).await;
    hub.shutdown_with(Event::new("bye")).unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, client.read_to_end(&mut rest)).await.expect("closed").unwrap();
    assert_eq!(rest, b"data: bye\n\n");
}

#[tokio::test]
async fn other_paths_can_go_to_an_axum_router_on_the_same_port() {
    let hub = hub();
    let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
    let addr =
        start(Server::new(Endpoint::new(hub.clone())).with_path("/events").with_fallback(app))
            .await;
    let answer =
        exchange(addr, b"GET /health HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    let missing =
        exchange(addr, b"GET /nope HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let (_client, head) = open(addr, "/events?topic=t").await;
    assert!(head.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_kept_alive_client_gets_its_stream_from_the_listener_after_a_fallback_request() {
    let hub = hub();
    let app = axum::Router::new().route("/page", axum::routing::get(|| async { "page" }));
    let addr =
        start(Server::new(Endpoint::new(hub.clone())).with_path("/events").with_fallback(app))
            .await;
    // A browser asks for the page on a keep-alive connection...
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /page HTTP/1.1\r\nhost: t\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\npage") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(WAIT, client.read_exact(&mut byte)).await.expect("the page").unwrap();
        answer.push(byte[0]);
    }
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(!answer.contains("connection: close"), "{answer}");
    // ...and reuses it for the stream, which the listener serves (its head, its count).
    client.write_all(b"GET /events?topic=t HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, client.read_exact(&mut byte)).await.expect("a head").unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream") && head.contains("connection: close"), "{head}");
    until("subscribed", || hub.topic_subscriber_count("t") == 1).await;
}

/// With `with_send_buffer`, a client that stops reading stops taking writes once its small
/// kernel buffers are full, so the hub's bounds act on it after tens of KiB. Left to its
/// autotuning, Linux lets a loopback send buffer grow to megabytes, which would swallow the
/// whole 1 MiB published here before a write ever blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_send_buffer_stops_writes_to_a_stalled_client_within_kibibytes() {
    // Bounds this test never reaches from the hub's side: only the blocked write can end it.
    let hub = Hub::builder().with_heartbeat(None).with_capacity(100_000).build();
    let endpoint = Endpoint::new(hub.clone());
    let server = Server::new(endpoint.clone())
        .with_send_buffer(8 * 1024)
        .with_write_timeout(Duration::from_millis(300));
    let addr = start(server).await;
    let _stalled = support::stalled(addr, "/?topic=t", "").await;
    until("subscribed", || hub.topic_subscriber_count("t") == 1).await;
    let payload = "s".repeat(1000);
    let mut published = 0usize;
    // Paced at about 500 KB/s: the 300 ms deadline then lets at most ~150 KB more through.
    while endpoint.connection_count() > 0 {
        assert!(
            published < 1024 * 1024,
            "1 MiB published and the stalled client's writes never blocked"
        );
        hub.publish("t", Event::new(payload.clone())).unwrap();
        published += payload.len();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(hub.stats().slow_disconnects, 0, "the blocked write ended it, not the policy");
    until("unsubscribed", || hub.topic_subscriber_count("t") == 0).await;
}

#[tokio::test]
async fn snapshot_1_starts_the_stream_with_the_keyed_state_then_live() {
    let hub =
        Hub::builder().with_heartbeat(None).with_state(Some(ssehub::StateLimits::new())).build();
    hub.publish("p:a", Event::new("a-old").with_key("k").with_id("1")).unwrap();
    hub.publish("p:b", Event::new("b").with_key("k").with_id("2")).unwrap();
    hub.publish("p:a", Event::new("a-new").with_key("k").with_id("3")).unwrap();
    hub.publish("q", Event::new("not matched").with_id("4")).unwrap();
    let addr = start(Server::new(Endpoint::new(hub.clone())).with_path("/events")).await;
    let (mut client, head) = open(addr, "/events?pattern=p:*&snapshot=1").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    until("subscribed", || hub.subscriber_count() == 1).await;
    // A topic the pattern matches, created after the subscribe, arrives live.
    hub.publish("p:c", Event::new("c").with_id("5")).unwrap();
    let expected = "event: snapshot\ndata: {\"state\":\"begin\",\"events\":2}\n\n\
                    id: 2\ndata: b\n\nid: 3\ndata: a-new\n\n\
                    event: snapshot\ndata: {\"state\":\"end\"}\n\nid: 5\ndata: c\n\n";
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while got.len() < expected.len() {
        let n = tokio::time::timeout(WAIT, client.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the stream ended after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), expected);
    let (_, refused) = open(addr, "/events?pattern=p:*&snapshot=2").await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
}
