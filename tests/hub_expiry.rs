//! Streams that live only as long as their credential, over real TCP through the native
//! listener: an expiry ends a stream with `event: expired` and a jittered `retry:` at its time,
//! and `Hub::revoke` ends exactly one principal's streams.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use http::request::Parts;
use ssehub::parse::{ParsedEvent, Parser};
use ssehub::resolve::{query_params, QueryTopics, Rejection};
use ssehub::server::Server;
use ssehub::{EndReason, Endpoint, Event, Hub, Subscribe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(10);

/// The retry hint the hubs here give: 2 s plus up to 3 s.
const RETRY: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(3));

/// A resolver for tests: topics from the query, `user=NAME` as the principal, `ttl_ms=N` as an
/// expiry N ms from now.
fn resolve(request: &Parts) -> Result<Subscribe, Rejection> {
    let mut subscribe = QueryTopics::new().parse(request)?;
    for (key, value) in query_params(request) {
        match key.as_str() {
            "user" => subscribe = subscribe.with_principal(value),
            "ttl_ms" => {
                let ms = value.parse().map_err(|_| Rejection::BadRequest("ttl_ms".into()))?;
                subscribe = subscribe.with_expiry(SystemTime::now() + Duration::from_millis(ms));
            }
            _ => {}
        }
    }
    Ok(subscribe)
}

async fn start(hub: &Hub) -> SocketAddr {
    let endpoint = Endpoint::new(hub.clone()).with_resolver(resolve);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Server::new(endpoint).with_path("/events").serve(listener));
    addr
}

fn hub() -> Hub {
    Hub::builder().with_heartbeat(None).with_connected_event(true).with_retry(Some(RETRY)).build()
}

/// An open stream, parsed as it arrives.
struct Stream {
    socket: TcpStream,
    parser: Parser,
    events: Vec<ParsedEvent>,
    ended: bool,
}

impl Stream {
    async fn open(addr: SocketAddr, target: &str) -> Stream {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nhost: t\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tokio::time::timeout(WAIT, socket.read_exact(&mut byte)).await.unwrap().unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
        let mut stream = Stream { socket, parser: Parser::new(), events: Vec::new(), ended: false };
        let connected = stream.next().await.expect("the connected event");
        assert_eq!(connected.event, "connected");
        stream
    }

    /// The next event, or `None` once the server closed the stream.
    async fn next(&mut self) -> Option<ParsedEvent> {
        let mut buf = [0u8; 4096];
        while self.events.is_empty() && !self.ended {
            let n = tokio::time::timeout(WAIT, self.socket.read(&mut buf))
                .await
                .expect("an event or the end within the wait")
                .unwrap();
            if n == 0 {
                self.ended = true;
            }
            self.parser.feed(&buf[..n], &mut self.events).unwrap();
        }
        (!self.events.is_empty()).then(|| self.events.remove(0))
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Checks the final frame: its name, data, a retry within the hub's hint and jitter, no id.
fn assert_final(event: &ParsedEvent, name: &str) {
    assert_eq!(event.event, name);
    assert_eq!(event.data, format!("{{\"reason\":\"{name}\"}}"));
    let retry = event.retry.expect("a retry hint");
    let (base, jitter) = (RETRY.0.as_millis() as u64, RETRY.1.as_millis() as u64);
    assert!((base..=base + jitter).contains(&retry), "retry {retry}");
}

#[tokio::test]
async fn a_stream_ends_at_its_expiry_with_the_expired_frame_and_a_jittered_retry() {
    let hub = hub();
    let addr = start(&hub).await;
    let opened = Instant::now();
    let mut stream = Stream::open(addr, "/events?topic=t&ttl_ms=600").await;
    let mut other = Stream::open(addr, "/events?topic=t").await;
    until("both subscribed", || hub.topic_subscriber_count("t") == 2).await;
    hub.publish("t", Event::new("before").with_id("e1")).unwrap();
    let event = stream.next().await.expect("the event published before the expiry");
    assert_eq!((event.data.as_str(), event.id.as_str()), ("before", "e1"));

    let last = stream.next().await.expect("the expired frame");
    assert!(opened.elapsed() >= Duration::from_millis(600), "ended before its expiry");
    assert_final(&last, "expired");
    assert_eq!(stream.parser.last_event_id(), "e1", "the final frame has no id");
    assert!(stream.next().await.is_none(), "the stream ends after it");
    until("the expired subscriber gone", || hub.topic_subscriber_count("t") == 1).await;

    // The stream without an expiry goes on.
    hub.publish("t", Event::new("after")).unwrap();
    assert_eq!(other.next().await.map(|e| e.data), Some("before".into()));
    assert_eq!(other.next().await.map(|e| e.data), Some("after".into()));
}

#[tokio::test]
async fn expiries_end_streams_in_their_own_order_with_their_own_retry() {
    let hub = hub();
    let addr = start(&hub).await;
    let mut late = Stream::open(addr, "/events?topic=t&ttl_ms=1500").await;
    let mut early = Stream::open(addr, "/events?topic=t&ttl_ms=300").await;
    until("both subscribed", || hub.topic_subscriber_count("t") == 2).await;
    assert_final(&early.next().await.expect("the early expiry"), "expired");
    // The later one is still live when the earlier one ended, and gets what comes next.
    hub.publish("t", Event::new("between")).unwrap();
    assert_eq!(late.next().await.map(|e| e.data), Some("between".into()));
    assert_final(&late.next().await.expect("the late expiry"), "expired");
    assert_eq!(hub.subscriber_count(), 0);
}

#[tokio::test]
async fn an_expiry_already_past_ends_the_stream_at_once() {
    let hub = hub();
    let mut sub = hub.subscribe(Subscribe::from("t").with_expiry(SystemTime::UNIX_EPOCH)).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut frames = Vec::new();
    loop {
        match sub.try_recv() {
            Ok(Some(batch)) => frames.extend(batch.frames().iter().cloned()),
            Ok(None) => {}
            Err(reason) => {
                assert_eq!(reason, EndReason::Expired);
                break;
            }
        }
        assert!(Instant::now() < deadline, "never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last = String::from_utf8_lossy(frames.last().expect("the final frame")).into_owned();
    assert!(last.starts_with("event: expired\nretry: "), "{last}");
}

#[tokio::test]
async fn revoke_ends_exactly_that_principals_streams() {
    let hub = hub();
    let addr = start(&hub).await;
    let mut ann = [
        Stream::open(addr, "/events?topic=t&user=ann").await,
        Stream::open(addr, "/events?topic=u&user=ann").await,
    ];
    let mut bob = Stream::open(addr, "/events?topic=t&user=bob").await;
    let mut anonymous = Stream::open(addr, "/events?topic=t").await;
    until("all subscribed", || hub.subscriber_count() == 4).await;
    hub.publish("t", Event::new("one")).unwrap();

    assert_eq!(hub.revoke("ann"), 2);
    assert_eq!(hub.revoke("nobody"), 0);
    for stream in &mut ann {
        let mut last = stream.next().await.expect("a frame");
        if last.data == "one" {
            last = stream.next().await.expect("the revoked frame");
        }
        assert_final(&last, "revoked");
        assert!(stream.next().await.is_none(), "the stream ends after it");
    }
    until("ann's subscriptions gone", || hub.subscriber_count() == 2).await;
    hub.publish("t", Event::new("two")).unwrap();
    for stream in [&mut bob, &mut anonymous] {
        assert_eq!(stream.next().await.map(|e| e.data), Some("one".into()));
        assert_eq!(stream.next().await.map(|e| e.data), Some("two".into()));
    }
    // A revoked principal may subscribe again (refusing its credentials is the application's).
    let _back = Stream::open(addr, "/events?topic=t&user=ann").await;
}
