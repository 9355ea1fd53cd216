//! Engine features seen by real HTTP clients over TCP, through the native listener: heartbeats
//! on an idle stream, replay under concurrent publishing, sessions, producers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use http::request::Parts;
use ssehub::client::{Backoff, ClientEvent, EventSource};
use ssehub::parse::{ParsedEvent, Parser};
use ssehub::server::Server;
use ssehub::{
    Endpoint, Event, HistoryLimits, Hub, Producer, QueryTopics, Rejection, Resolver, SessionLimits,
    StopReason, Subscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

async fn start<R: Resolver>(endpoint: Endpoint<R>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Server::new(endpoint).serve(listener));
    addr
}

/// A raw HTTP/1.1 stream: the status line, then parsed events as they come.
struct RawStream {
    socket: TcpStream,
    parser: Parser,
    pending: Vec<ParsedEvent>,
    status: String,
    raw: Vec<u8>,
}

impl RawStream {
    async fn open(addr: std::net::SocketAddr, target: &str, headers: &str) -> RawStream {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(format!("GET {target} HTTP/1.1\r\nhost: t\r\n{headers}\r\n").as_bytes())
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match tokio::time::timeout(WAIT, socket.read(&mut byte)).await.unwrap() {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        let status = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
        RawStream { socket, parser: Parser::new(), pending: Vec::new(), status, raw: Vec::new() }
    }

    async fn event(&mut self) -> ParsedEvent {
        let mut buf = [0u8; 4096];
        while self.pending.is_empty() {
            let n = tokio::time::timeout(WAIT, self.socket.read(&mut buf))
                .await
                .expect("data in time")
                .unwrap();
            assert!(n > 0, "stream ended");
            self.raw.extend_from_slice(&buf[..n]);
            self.parser.feed(&buf[..n], &mut self.pending).unwrap();
        }
        self.pending.remove(0)
    }
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeat_comments() {
    let hub = Hub::builder().with_heartbeat(Some(Duration::from_millis(30))).build();
    let addr = start(Endpoint::new(hub.clone())).await;
    let mut stream = RawStream::open(addr, "/?topic=quiet", "").await;
    assert!(stream.status.starts_with("HTTP/1.1 200"));
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, stream.socket.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b": keep-alive\n");
    // And an event still comes through whole after heartbeats.
    hub.publish("quiet", Event::new("finally")).unwrap();
    assert_eq!(stream.event().await.data, "finally");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_over_http_has_no_gap_and_no_duplicate_while_publishing() {
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_capacity(100_000)
        .with_history(Some(
            HistoryLimits::new().with_max_events(100_000).with_max_bytes(usize::MAX),
        ))
        .with_max_replay(100_000)
        .build();
    let addr = start(Endpoint::new(hub.clone())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (hub, stop) = (hub.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            for n in 0..50_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let topic = if n % 2 == 0 { "a" } else { "b:1" };
                ids.push(
                    hub.publish(topic, Event::new(n.to_string()))
                        .unwrap()
                        .id()
                        .unwrap()
                        .to_string(),
                );
                if n % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            ids
        })
    };
    let url = format!("http://{addr}/?topic=a&pattern=b:*");
    let backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(20), 0.0);
    let mut events = EventSource::new(&url).unwrap().with_backoff(backoff).connect().unwrap();
    let mut received = Vec::new();
    let mut reconnects = 0;
    while received.len() < 20_000 {
        match tokio::time::timeout(WAIT, events.next()).await.unwrap().unwrap().unwrap() {
            ClientEvent::Message(event) => {
                received.push(event.id);
                // The server ends the streams now and then; the client comes back on its own.
                if received.len() % 2_000 == 0 {
                    hub.disconnect_topic("a");
                }
            }
            ClientEvent::Reconnecting { .. } => reconnects += 1,
            _ => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    let published = publisher.join().unwrap();
    assert!(reconnects >= 5, "only {reconnects} reconnects");
    let start = published.iter().position(|id| *id == received[0]).expect("first id was published");
    let expected = &published[start..start + received.len()];
    if let Some(at) = received.iter().zip(expected).position(|(got, want)| got != want) {
        let window = |v: &[String]| v[at.saturating_sub(2)..(at + 3).min(v.len())].to_vec();
        panic!("diverges at {at}: got {:?}, expected {:?}", window(&received), window(expected));
    }
}

/// Principal from `x-user`, session token from the `session` query parameter.
fn session_resolver(request: &Parts) -> Result<Subscribe, Rejection> {
    let user = request.headers.get("x-user").and_then(|v| v.to_str().ok());
    let user = user.ok_or_else(|| Rejection::Unauthorized("who are you?".into()))?;
    let mut subscribe = futures_util::FutureExt::now_or_never(QueryTopics::new().resolve(request))
        .unwrap_or_else(|| Err(Rejection::BadRequest("resolver pending".into())))?
        .with_principal(user);
    let query = ssehub::resolve::query_params(request);
    if let Some((_, token)) = query.iter().find(|(k, _)| k == "session") {
        subscribe = subscribe.with_session_token(token);
    }
    Ok(subscribe)
}

#[tokio::test]
async fn sessions_resume_over_http_and_a_hijack_gets_403() {
    let hub = Hub::builder().with_heartbeat(None).with_sessions(Some(SessionLimits::new())).build();
    let addr = start(Endpoint::new(hub.clone()).with_resolver(session_resolver)).await;
    let anonymous = RawStream::open(addr, "/?topic=room", "").await;
    assert!(anonymous.status.starts_with("HTTP/1.1 401"), "{}", anonymous.status);
    let mut first = RawStream::open(addr, "/?topic=room", "x-user: ann\r\n").await;
    let connected = first.event().await;
    assert_eq!(connected.event, "connected");
    let data: serde_json::Value = serde_json::from_str(&connected.data).unwrap();
    // `session` is the token a resume (or `POST /subscription`) presents; `session_id` is
    // what `send_to_session` takes.
    let (session, token) = (
        data["session_id"].as_str().unwrap().to_string(),
        data["token"].as_str().unwrap().to_string(),
    );
    assert_eq!(data["session"], token);
    drop(first);
    while hub.subscriber_count() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    hub.send_to_session(&session, Event::new("missed while away")).unwrap();
    let hijack = RawStream::open(addr, &format!("/?session={token}"), "x-user: mallory\r\n").await;
    assert!(hijack.status.starts_with("HTTP/1.1 403"), "{}", hijack.status);
    assert_eq!(hub.stats().session_hijacks, 1);
    // The owner resumes without naming its topic again: the session remembers it.
    let mut back = RawStream::open(addr, &format!("/?session={token}"), "x-user: ann\r\n").await;
    assert!(back.status.starts_with("HTTP/1.1 200"));
    assert_eq!(back.event().await.event, "connected");
    assert_eq!(back.event().await.data, "missed while away");
    hub.publish("room", Event::new("live")).unwrap();
    assert_eq!(back.event().await.data, "live");
    assert!(!String::from_utf8_lossy(&back.raw).contains("id: "), "server events carry no id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_starts_with_the_first_http_client_and_stops_with_the_last() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let stops = Arc::new(Mutex::new(Vec::new()));
    let log = stops.clone();
    hub.add_producer(
        Producer::new("clock:*", |ctx| async move {
            let mut n = 0u64;
            loop {
                n += 1;
                if let Err(error) = ctx.publish(Event::new(format!("{} {n}", ctx.topic()))) {
                    return Err::<(), String>(error.to_string());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .with_on_stop(move |topic, reason| {
            log.lock().unwrap().push((topic.to_string(), reason.clone()))
        }),
    )
    .unwrap();
    let addr = start(Endpoint::new(hub.clone())).await;
    let mut a = RawStream::open(addr, "/?topic=clock:utc", "").await;
    let mut b = RawStream::open(addr, "/?topic=clock:utc", "").await;
    assert!(a.event().await.data.starts_with("clock:utc "));
    assert!(b.event().await.data.starts_with("clock:utc "));
    drop(a);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(stops.lock().unwrap().is_empty(), "one client is still there");
    drop(b);
    for _ in 0..2000 {
        if !stops.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(*stops.lock().unwrap(), [("clock:utc".to_string(), StopReason::Idle)]);
}
