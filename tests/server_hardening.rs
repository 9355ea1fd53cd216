//! Hostile input, faults and storms against the native listener (and, where the code path is
//! shared, the hyper adapter), over real loopback TCP. Each test is one row of
//! `docs/reliability.md`. Every wait is bounded; counts are per hub, per endpoint and per test
//! runtime, so these tests can run in parallel (the process-wide fd and RSS checks live in
//! `server_churn.rs`, one test per binary).

#[path = "support/http.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use ssehub::parse::{ParsedEvent, Parser};
use ssehub::server::Server;
use ssehub::{
    Endpoint, Event, EventError, HistoryLimits, Hub, Pacing, Producer, PublishError, QueryTopics,
    Rejection, Resolver, SlowPolicy, Subscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

async fn start<R: Resolver>(server: Server<R>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    addr
}

fn history_hub() -> Hub {
    Hub::builder()
        .with_heartbeat(None)
        .with_history(Some(HistoryLimits::new()))
        .with_epoch(0xabc)
        .build()
}

/// Waits until `check` holds, or fails the test.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Tasks alive on this test's runtime.
fn tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// A raw HTTP/1.1 exchange: the response head, then the body as it comes.
struct Client {
    socket: TcpStream,
    status: u16,
    head: String,
    parser: Parser,
    pending: Vec<ParsedEvent>,
    raw: Vec<u8>,
}

impl Client {
    /// Sends `request` as it is (any bytes) on `socket` and reads the response head.
    async fn over(mut socket: TcpStream, request: &[u8]) -> Client {
        socket.write_all(request).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match tokio::time::timeout(WAIT, socket.read(&mut byte)).await.expect("a head") {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        Client { socket, status, head, parser: Parser::new(), pending: Vec::new(), raw: Vec::new() }
    }

    async fn send(addr: SocketAddr, request: &[u8]) -> Client {
        Client::over(TcpStream::connect(addr).await.unwrap(), request).await
    }

    async fn get(addr: SocketAddr, target: &str, headers: &str) -> Client {
        let request = format!("GET {target} HTTP/1.1\r\nhost: t\r\n{headers}\r\n");
        Client::send(addr, request.as_bytes()).await
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Reads more of the body; `false` at its end.
    async fn read_more(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        match tokio::time::timeout(WAIT, self.socket.read(&mut buf)).await.expect("data in time") {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                self.parser.feed(&buf[..n], &mut self.pending).unwrap();
                true
            }
        }
    }

    async fn event(&mut self) -> ParsedEvent {
        while self.pending.is_empty() {
            assert!(self.read_more().await, "the stream ended early");
        }
        self.pending.remove(0)
    }

    /// The rest of the body, until the server closes.
    async fn body(&mut self) -> String {
        while self.read_more().await {}
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs and requests

/// `Last-Event-ID` of 10 KB, with NUL or control bytes, invalid UTF-8, a non-canonical number,
/// from another epoch, from the future: a `reset` with the reason, the id never echoed, and the
/// live stream starts. With both the header and `lastEventId`, the header wins.
#[tokio::test]
async fn hostile_last_event_ids_reset_without_echo_and_the_stream_goes_live() {
    let hub = history_hub();
    for n in 1..=3 {
        hub.publish("t", Event::new(format!("old {n}"))).unwrap();
    }
    let server = Server::new(Endpoint::new(hub.clone())).with_head_limits(64 * 1024, WAIT);
    let addr = start(server).await;
    let long = "7".repeat(10 * 1024);
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        ("10 KB header".into(), format!("last-event-id: {long}\r\n").into_bytes(), "malformed"),
        ("NUL in the query".into(), b"?lastEventId=x%00SECRET1".to_vec(), "malformed"),
        ("control bytes in the query".into(), b"?lastEventId=%01%1bSECRET2".to_vec(), "malformed"),
        (
            "invalid UTF-8 header".into(),
            b"last-event-id: \xff\xfeSECRET3\r\n".to_vec(),
            "unknown-id",
        ),
        ("invalid UTF-8 query".into(), b"?lastEventId=%ff%feSECRET4".to_vec(), "unknown-id"),
        ("leading zero".into(), b"?lastEventId=abc-01".to_vec(), "unknown-id"),
        ("upper-case epoch".into(), b"?lastEventId=ABC-1".to_vec(), "unknown-id"),
        ("signed number".into(), b"?lastEventId=abc-%2B1".to_vec(), "unknown-id"),
        ("another epoch".into(), b"?lastEventId=abd-1".to_vec(), "other-epoch"),
        ("the future".into(), b"?lastEventId=abc-999999".to_vec(), "malformed"),
        (
            "header wins over query".into(),
            b"?lastEventId=abc-1|last-event-id: abd-2\r\n".to_vec(),
            "other-epoch",
        ),
    ];
    for (n, (name, input, reason)) in cases.into_iter().enumerate() {
        // A case is either a query suffix (starting with `?`), a header line, or both (`|`).
        let (query, header) = match input.iter().position(|&b| b == b'|') {
            Some(bar) => (input[..bar].to_vec(), input[bar + 1..].to_vec()),
            None if input.starts_with(b"?") => (input, Vec::new()),
            None => (Vec::new(), input),
        };
        let mut request = b"GET /".to_vec();
        if query.is_empty() {
            request.extend_from_slice(b"?topic=t");
        } else {
            request.extend_from_slice(&query);
            request.extend_from_slice(b"&topic=t");
        }
        request.extend_from_slice(b" HTTP/1.1\r\nhost: t\r\n");
        request.extend_from_slice(&header);
        request.extend_from_slice(b"\r\n");
        let mut client = Client::send(addr, &request).await;
        assert_eq!(client.status, 200, "{name}: {}", client.head);
        let reset = client.event().await;
        assert_eq!(reset.event, "reset", "{name}");
        assert_eq!(reset.data, format!("{{\"reason\":\"{reason}\"}}"), "{name}");
        assert!(reset.id.is_empty(), "{name}: a reset must not move the resume point");
        until("subscribed", || hub.topic_subscriber_count("t") == 1).await;
        let live = format!("live {n}");
        hub.publish("t", Event::new(live.clone())).unwrap();
        assert_eq!(client.event().await.data, live, "{name}");
        let raw = String::from_utf8_lossy(&client.raw).into_owned();
        assert!(!raw.contains("SECRET") && !raw.contains("7777777777"), "{name}: echoed: {raw}");
        drop(client);
        until("unsubscribed", || hub.topic_subscriber_count("t") == 0).await;
    }
}

/// A raw NUL or control byte in the header is refused by the HTTP parser (400), and a head over
/// the listener's limit is 431 naming the limit; neither subscribes.
#[tokio::test]
async fn last_event_id_headers_the_http_parser_refuses() {
    let hub = history_hub();
    let addr = start(Server::new(Endpoint::new(hub.clone()))).await;
    for header in [&b"last-event-id: a\0b\r\n"[..], b"last-event-id: a\x01b\r\n"] {
        let mut request = b"GET /?topic=t HTTP/1.1\r\nhost: t\r\n".to_vec();
        request.extend_from_slice(header);
        request.extend_from_slice(b"\r\n");
        let mut client = Client::send(addr, &request).await;
        assert_eq!(client.status, 400, "{}", client.head);
        assert!(!client.body().await.contains("a\0b"));
    }
    let long = format!("last-event-id: {}\r\n", "7".repeat(10 * 1024));
    let mut client = Client::get(addr, "/?topic=t", &long).await;
    assert_eq!(client.status, 431, "{}", client.head);
    assert!(client.body().await.contains("8192"));
    assert_eq!(hub.subscriber_count(), 0);
}

/// Too many topics, a topic over the limit, control or invisible characters in a name, a 10 KB
/// pathological glob: 400 (or 431 for a head over the listener's limit) naming the limit.
#[tokio::test]
async fn hostile_topic_requests_are_refused_naming_the_limit() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let roomy = Server::new(Endpoint::new(hub.clone())).with_head_limits(512 * 1024, WAIT);
    let addr = start(roomy).await;
    let many: String = (0..5_000).map(|n| format!("topic={n}&")).collect();
    let too_many: String = (0..10_000).map(|n| format!("topic={n}&")).collect();
    let glob = format!("{}b", "a*".repeat(5 * 1024));
    let cases = [
        (format!("/?{many}"), "5000 topics and patterns, over the limit of 64"),
        (format!("/?topic={}", "x".repeat(300)), "over the limit of 256"),
        ("/?topic=a%01b".to_string(), "control character"),
        ("/?topic=a%E2%80%8Bb".to_string(), "invisible character"),
        ("/?topic=a%E2%80%AEb".to_string(), "invisible character"),
        (format!("/?pattern={glob}"), "10241 bytes, over the limit of 256"),
    ];
    for (target, reason) in cases {
        let mut client = Client::get(addr, &target, "").await;
        assert_eq!(client.status, 400, "{}", client.head);
        let body = client.body().await;
        assert!(body.contains(reason), "{reason:?} not in {body:?}");
        assert!(body.len() < 200, "the input is not echoed whole: {} bytes", body.len());
    }
    // 10,000 topics make a request target longer than any URI the listener takes...
    let mut client = Client::get(addr, &format!("/?{too_many}"), "").await;
    assert_eq!(client.status, 414, "{}", client.head);
    assert!(client.body().await.contains("limit of 65534 bytes"));
    // ...and with the listener's default head limit, do not even fit in a request head.
    let strict = start(Server::new(Endpoint::new(hub.clone()))).await;
    let mut client = Client::get(strict, &format!("/?{too_many}"), "").await;
    assert_eq!(client.status, 431);
    assert!(client.body().await.contains("limit of 8192 bytes"));
    // A pathological glob within the limit is accepted, and matching it stays linear (timed in
    // `topic::tests::pathological_pattern_is_fast_and_right`).
    let within = format!("{}b", "a*".repeat(127));
    let mut client = Client::get(addr, &format!("/?pattern={within}"), "").await;
    assert_eq!(client.status, 200);
    until("subscribed", || hub.subscriber_count() == 1).await;
    hub.publish(&"a".repeat(256), Event::new("no match")).unwrap();
    hub.publish(&format!("{}b", "a".repeat(200)), Event::new("match")).unwrap();
    assert_eq!(client.event().await.data, "match");
    drop(client);
    until("unsubscribed", || hub.subscriber_count() == 0).await;
}

/// Slowloris: clients sending their heads a byte at a time are closed at the header-read
/// timeout, unanswered and unsubscribed, and no task is left behind.
#[tokio::test]
async fn slowloris_is_cut_at_the_head_timeout_leaving_no_task() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let server =
        Server::new(Endpoint::new(hub.clone())).with_head_limits(8192, Duration::from_millis(300));
    let addr = start(server).await;
    let baseline = tasks();
    let drips: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let mut socket = TcpStream::connect(addr).await.unwrap();
                let request = b"GET /?topic=t HTTP/1.1\r\nhost: t\r\nx-slow: ";
                let mut sent = 0usize;
                for byte in request.iter().chain(std::iter::repeat(&b'x')).take(400) {
                    if socket.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let mut rest = Vec::new();
                let read = tokio::time::timeout(WAIT, socket.read_to_end(&mut rest)).await;
                assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed unanswered: {rest:?}");
                sent
            })
        })
        .collect();
    for drip in drips {
        let sent = drip.await.unwrap();
        // The head timeout (0.3 s) cuts the drip (400 bytes, one per 20 ms) long before its
        // end: the server's close makes the client's writes fail.
        assert!(sent < 400, "the whole drip was accepted: not cut at the head timeout");
    }
    until("no task left", || tasks() == baseline).await;
    assert_eq!(hub.subscriber_count(), 0);
}

/// A body or an odd `Transfer-Encoding` on a GET is refused with 400 before the resolver runs;
/// the body is never read as a request.
#[tokio::test]
async fn a_get_with_a_body_or_transfer_encoding_is_refused() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let resolved = Arc::new(AtomicUsize::new(0));
    let seen = resolved.clone();
    let endpoint = Endpoint::new(hub.clone()).with_resolver(move |parts: &Parts| {
        seen.fetch_add(1, Ordering::SeqCst);
        QueryTopics::new().parse(parts)
    });
    let addr = start(Server::new(endpoint)).await;
    let requests: [&[u8]; 5] = [
        b"GET /?topic=t HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /?topic=t HTTP/1.1\r\nhost: t\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        b"GET /?topic=t HTTP/1.1\r\nhost: t\r\ntransfer-encoding: identity\r\n\r\n",
        b"GET /?topic=t HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello",
        b"GET /?topic=t HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\ncontent-length: 7\r\n\r\n",
    ];
    for request in requests {
        let mut client = Client::send(addr, request).await;
        assert_eq!(client.status, 400, "{:?}: {}", String::from_utf8_lossy(request), client.head);
        assert!(client.body().await.contains("request body is not accepted"));
    }
    assert_eq!(resolved.load(Ordering::SeqCst), 0);
    assert_eq!(hub.subscriber_count(), 0);
}

/// An async resolver that panics after an await.
struct Boom;

impl Resolver for Boom {
    async fn resolve(&self, request: &Parts) -> Result<Subscribe, Rejection> {
        tokio::task::yield_now().await;
        if request.uri.query().is_some_and(|q| q.contains("boom")) {
            panic!("a bug in the application's resolver");
        }
        QueryTopics::new().parse(request)
    }
}

/// A resolver that panics (in a closure, or in an async resolver after an await) fails that
/// request with 500, is counted, and the hub and the other clients carry on; the same through
/// the hyper adapter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_resolver_fails_only_its_request() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let closure = Endpoint::new(hub.clone()).with_resolver(|parts: &Parts| {
        if parts.uri.query().is_some_and(|q| q.contains("boom")) {
            panic!("a bug in the application's resolver");
        }
        QueryTopics::new().parse(parts)
    });
    let native_closure = start(Server::new(closure)).await;
    let native_async = start(Server::new(Endpoint::new(hub.clone()).with_resolver(Boom))).await;
    let hyper_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hyper = hyper_listener.local_addr().unwrap();
    tokio::spawn(ssehub::hyper::serve(
        hyper_listener,
        Endpoint::new(hub.clone()).with_resolver(Boom),
    ));

    let mut bystander = Client::get(native_closure, "/?topic=t", "").await;
    assert_eq!(bystander.status, 200);
    until("subscribed", || hub.subscriber_count() == 1).await;
    for (n, addr) in [native_closure, native_async, hyper].into_iter().enumerate() {
        let mut failed = Client::get(addr, "/?topic=t&boom", "connection: close\r\n").await;
        assert_eq!(failed.status, 500, "{}", failed.head);
        assert_eq!(failed.body().await, "internal error");
        assert_eq!(hub.stats().resolver_panics, n as u64 + 1);
        let mut fine = Client::get(addr, "/?topic=t", "").await;
        assert_eq!(fine.status, 200, "the server still serves after a panic");
        until("subscribed", || hub.subscriber_count() == 2).await;
        hub.publish("t", Event::new(format!("after {n}"))).unwrap();
        assert_eq!(bystander.event().await.data, format!("after {n}"));
        if addr != hyper {
            // (hyper frames the body in chunks, which this raw client does not decode)
            assert_eq!(fine.event().await.data, format!("after {n}"));
        }
        drop(fine);
        until("unsubscribed", || hub.subscriber_count() == 1).await;
    }
}

/// A producer whose start function panics before returning its future: its stream gets the
/// `error` event, the panic is counted, the hub carries on, and the next subscriber after the
/// topic went idle starts it again.
#[tokio::test]
async fn a_producer_panicking_at_start_is_contained_and_restarts_later() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    hub.add_producer(Producer::new("job", move |ctx| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("a bug in the application's producer");
        }
        async move {
            ctx.publish(Event::new("running")).map_err(|e| e.to_string())?;
            let mut ctx = ctx;
            ctx.stopped().await;
            Ok::<(), String>(())
        }
    }))
    .unwrap();
    let mut other = hub.subscribe("other").unwrap();
    let mut first = hub.subscribe("job").unwrap();
    let batch = tokio::time::timeout(WAIT, first.recv()).await.unwrap().expect("the error event");
    let text = String::from_utf8(batch.into_bytes().to_vec()).unwrap();
    assert!(text.contains("event: error") && text.contains("producer panicked"), "{text}");
    assert_eq!(hub.stats().producer_panics, 1);
    hub.publish("other", Event::new("still here")).unwrap();
    assert!(other.try_recv().unwrap().is_some());
    drop(first);
    until("the topic went idle", || hub.topic_subscriber_count("job") == 0).await;
    let mut second = hub.subscribe("job").unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let batch = tokio::time::timeout_at(deadline, second.recv()).await.unwrap().unwrap();
        if String::from_utf8_lossy(&batch.into_bytes()).contains("data: running") {
            break;
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Ids and names that would break the wire or could never resume are typed errors at publish;
/// history and queues are unchanged.
#[test]
fn bad_events_are_typed_errors_and_change_nothing() {
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_history(Some(HistoryLimits::new()))
        .with_max_event_bytes(1024)
        .build();
    let mut sub = hub.subscribe("t").unwrap();
    let kept = hub.publish("t", Event::new("kept")).unwrap().id().unwrap().to_string();
    assert!(sub.try_recv().unwrap().is_some());
    let cases = [
        (Event::new("x").with_event("a\r\nb"), EventError::LineBreakInEvent),
        (Event::new("x").with_id("a\nb"), EventError::LineBreakInId),
        (Event::new("x").with_id("a\0b"), EventError::NulInId),
        (Event::new("x").with_id("a\tb\u{1b}"), EventError::ControlInId),
        (Event::new("x").with_id("9".repeat(257)), EventError::IdTooLong { len: 257, max: 256 }),
    ];
    let big = Event::new("x".repeat(2000));
    assert!(matches!(
        hub.publish("t", big),
        Err(PublishError::Event(EventError::TooLarge { max: 1024, .. }))
    ));
    for (event, error) in cases {
        assert_eq!(hub.publish("t", event.clone()), Err(PublishError::Event(error.clone())));
        assert_eq!(hub.broadcast(event.clone()), Err(PublishError::Event(error.clone())));
        assert_eq!(hub.send_to(sub.id(), event), Err(PublishError::Event(error)));
    }
    assert!(sub.try_recv().unwrap().is_none(), "nothing was queued");
    assert_eq!(hub.stats().events_published, 1);
    // History holds only the event before: a resume from the start replays exactly it.
    let mut resumed = hub.subscribe(Subscribe::from("t").with_last_event_id("abc-0")).unwrap();
    let replay = String::from_utf8(resumed.try_recv().unwrap().unwrap().into_bytes().to_vec());
    assert!(replay.unwrap().contains("reset"), "another epoch's id resets");
    drop(resumed);
    let epoch = kept.split_once('-').unwrap().0;
    let mut resumed =
        hub.subscribe(Subscribe::from("t").with_last_event_id(format!("{epoch}-0"))).unwrap();
    let replay = String::from_utf8(resumed.try_recv().unwrap().unwrap().into_bytes().to_vec());
    assert_eq!(replay.unwrap(), format!("id: {kept}\ndata: kept\n\n"));
}

// ---------------------------------------------------------------------------------------------
// Faults and load

/// A peer that vanishes without a FIN, simulated on loopback by a client that stops reading and
/// keeps its socket open: once the socket buffers fill, the write deadline ends the connection
/// and its subscription, and the counts (subscribers, topics, connections, tasks) return to
/// their baseline. The hub's policy (`DropOldest`) never drops it, so the deadline alone acts.
#[tokio::test]
async fn a_peer_that_vanishes_is_removed_at_the_write_deadline() {
    let hub = Hub::builder()
        .with_heartbeat(Some(Duration::from_millis(50)))
        .with_slow_policy(SlowPolicy::DropOldest)
        .with_capacity(16)
        .build();
    let endpoint = Endpoint::new(hub.clone());
    let server = Server::new(endpoint.clone()).with_write_timeout(Duration::from_millis(300));
    let addr = start(server).await;
    let baseline = (tasks(), hub.stats().subscribers, hub.stats().topics);
    let _gone = support::stalled(addr, "/?topic=t", "").await;
    until("subscribed", || hub.subscriber_count() == 1).await;
    let payload = "x".repeat(64 * 1024);
    let deadline = tokio::time::Instant::now() + WAIT;
    while endpoint.connection_count() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the vanished peer was never removed");
        hub.publish("t", Event::new(payload.clone())).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until("counts back to baseline", || {
        (tasks(), hub.stats().subscribers, hub.stats().topics) == baseline
    })
    .await;
    assert_eq!(hub.stats().slow_disconnects, 0, "the write deadline acted, not the policy");
}

/// A reader whose window is zero while a burst is published, under `Disconnect`: its writer is
/// blocked on the full socket, the hub drops it as slow, and the listener closes the connection
/// at once (not at the write deadline, set to a minute here) while a reading client gets every
/// event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_reader_is_dropped_as_slow_at_once_and_the_others_get_everything() {
    let hub = Hub::builder().with_heartbeat(None).with_capacity(64).build();
    let endpoint = Endpoint::new(hub.clone());
    // A write deadline no run of this test reaches: a close can only come from the policy.
    let server = Server::new(endpoint.clone()).with_write_timeout(Duration::from_secs(3600));
    let addr = start(server).await;
    let _stuck = support::stalled(addr, "/?topic=t", "").await;
    let mut reader = Client::get(addr, "/?topic=t", "").await;
    until("both subscribed", || hub.subscriber_count() == 2).await;
    let payload = "z".repeat(16 * 1024);
    let started = tokio::time::Instant::now();
    let mut published = 0u64;
    let mut seen = 0u64;
    while endpoint.connection_count() > 1 || hub.stats().slow_disconnects == 0 {
        assert!(started.elapsed() < WAIT, "the stalled reader was never dropped");
        hub.publish("t", Event::new(payload.clone()).with_id(published.to_string())).unwrap();
        published += 1;
        // The reading client keeps up.
        while seen < published {
            let event = reader.event().await;
            assert_eq!(event.id, seen.to_string(), "the reader gets every event, in order");
            seen += 1;
        }
    }
    assert_eq!(hub.stats().slow_disconnects, 1);
    assert_eq!(hub.subscriber_count(), 1, "the reader is untouched");
}

/// Clients that disconnect mid-frame or reset (RST) during a replay burst: no panic, the replay
/// stops, and subscriptions, connections and tasks return to their baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_during_a_replay_burst_leave_nothing_behind() {
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_history(Some(HistoryLimits::new().with_max_events(5000).with_max_bytes(16 << 20)))
        .with_max_replay(5000)
        .build();
    let first = hub.publish("t", Event::new("0")).unwrap().id().unwrap().to_string();
    let payload = "y".repeat(1000);
    for _ in 0..4000 {
        hub.publish("t", Event::new(payload.clone())).unwrap();
    }
    let endpoint = Endpoint::new(hub.clone());
    let addr = start(Server::new(endpoint.clone())).await;
    let baseline = tasks();
    for round in 0..20usize {
        let mut client =
            Client::get(addr, "/?topic=t", &format!("last-event-id: {first}\r\n")).await;
        assert_eq!(client.status, 200);
        // Read a little (often ending mid-frame), then go away: half with RST, half with FIN.
        for _ in 0..round % 4 {
            client.read_more().await;
        }
        if round % 2 == 0 {
            client.socket.set_zero_linger().unwrap();
        }
        drop(client);
    }
    until("every replay stopped and was freed", || {
        hub.subscriber_count() == 0 && endpoint.connection_count() == 0 && tasks() == baseline
    })
    .await;
    // The server is unharmed: a full replay still arrives whole.
    let mut client = Client::get(addr, "/?topic=t", &format!("last-event-id: {first}\r\n")).await;
    for _ in 0..4000 {
        assert_eq!(client.event().await.data.len(), 1000);
    }
}

/// A reconnect storm, scaled to one process: 1,000 clients reconnect at once, each with its own
/// `Last-Event-ID`, while events keep being published; every client gets every event after its
/// id exactly once, in order. Replays are bounded per client (`with_max_replay`) and run one at
/// a time under the hub's sequencer. The 10,000-client run is `server_churn::storm_10k`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_gets_every_event_after_each_id_exactly_once() {
    storm(1_000, 200, 50).await;
}

/// `clients` connect at once with ids spread over `before` published events, then `live` more are
/// published; each must receive exactly the events after its id.
async fn storm(clients: usize, before: u64, live: u64) {
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_history(Some(HistoryLimits::new().with_max_events(10_000)))
        .with_capacity(4096)
        .build();
    let ids: Vec<String> = (1..=before)
        .map(|n| hub.publish("t", Event::new(n.to_string())).unwrap().id().unwrap().to_string())
        .collect();
    let endpoint = Endpoint::new(hub.clone());
    let addr = start(Server::new(endpoint.clone())).await;
    let total = before + live;
    let mut readers = Vec::with_capacity(clients);
    for c in 0..clients {
        let from = (c as u64) % before;
        let id = ids[from as usize].clone();
        readers.push(tokio::spawn(async move {
            let mut client =
                Client::get(addr, "/?topic=t", &format!("last-event-id: {id}\r\n")).await;
            assert_eq!(client.status, 200);
            let mut expected = from + 2;
            while expected <= total {
                let event = client.event().await;
                assert_eq!(event.data, expected.to_string(), "client {c} resumed after {id}");
                expected += 1;
            }
            client
        }));
    }
    for n in before + 1..=total {
        hub.publish("t", Event::new(n.to_string())).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut done = Vec::with_capacity(clients);
    for reader in readers {
        done.push(tokio::time::timeout(WAIT * 6, reader).await.expect("in time").unwrap());
    }
    // Exactly once: nothing more arrives after the last event.
    hub.publish("t", Event::new("end")).unwrap();
    for client in &mut done {
        assert_eq!(client.event().await.data, "end");
    }
    assert_eq!(endpoint.connection_count(), clients);
    drop(done);
    until("every connection closed", || endpoint.connection_count() == 0).await;
}

/// A reconnect storm against the accept rate limit: clients turned away with 503 honour
/// `Retry-After` and come back, and in the end every client has every event after its own id
/// exactly once, in order, whether it got in at once or after a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_storm_retries_after_and_still_gets_everything_once() {
    const CLIENTS: usize = 300;
    let hub = Hub::builder().with_heartbeat(None).with_history(Some(HistoryLimits::new())).build();
    let ids: Vec<String> = (1..=100u64)
        .map(|n| hub.publish("t", Event::new(n.to_string())).unwrap().id().unwrap().to_string())
        .collect();
    let endpoint = Endpoint::new(hub.clone()).with_retry_after(Duration::from_secs(1));
    let addr = start(Server::new(endpoint.clone()).with_accept_rate(200, 100)).await;
    let refusals = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let from = (c % ids.len()) as u64;
            let id = ids[from as usize].clone();
            let refusals = refusals.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    let header = format!("last-event-id: {id}\r\n");
                    let mut client = Client::get(addr, "/?topic=t", &header).await;
                    if client.status == 503 {
                        refusals.fetch_add(1, Ordering::SeqCst);
                        let after: u64 = client.header("retry-after").unwrap().parse().unwrap();
                        tokio::time::sleep(Duration::from_secs(after)).await;
                        continue;
                    }
                    assert_eq!(client.status, 200);
                    let mut expected = from + 2;
                    loop {
                        let event = client.event().await;
                        if event.data == "end" {
                            return expected - 1;
                        }
                        assert_eq!(event.data, expected.to_string(), "client {c} after {id}");
                        expected += 1;
                    }
                }
                panic!("client {c} never got in");
            })
        })
        .collect();
    // Live events while clients come and go; the last ones only once everyone is in.
    let mut n = 100u64;
    while endpoint.connection_count() < CLIENTS {
        assert!(n < 1_000, "the storm never settled");
        n += 1;
        hub.publish("t", Event::new(n.to_string())).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub.publish("t", Event::new("end")).unwrap();
    for client in clients {
        let last = tokio::time::timeout(WAIT, client).await.expect("in time").unwrap();
        assert_eq!(last, n, "every event up to the last one");
    }
    assert!(refusals.load(Ordering::SeqCst) > 0, "the limit turned some clients away");
}

/// The accept rate limit answers 503 and the per-address cap 429, both with `Retry-After`; a
/// freed slot is usable again, and another address has its own cap.
#[tokio::test]
async fn accept_rate_and_per_address_caps_answer_with_retry_after() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let endpoint = Endpoint::new(hub.clone()).with_retry_after(Duration::from_secs(3));
    let limited = start(Server::new(endpoint.clone()).with_accept_rate(1, 5)).await;
    let mut statuses = Vec::new();
    let mut open = Vec::new();
    for _ in 0..12 {
        let client = Client::get(limited, "/?topic=t", "").await;
        statuses.push(client.status);
        if client.status == 503 {
            assert_eq!(client.header("retry-after"), Some("3"));
        }
        open.push(client);
    }
    let accepted = statuses.iter().filter(|&&s| s == 200).count();
    assert!((5..=7).contains(&accepted), "a burst of 5 (plus a refill or two): {statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 12 - accepted);
    drop(open);

    let capped = start(Server::new(endpoint.clone()).with_max_connections_per_ip(3)).await;
    let mut three = Vec::new();
    for _ in 0..3 {
        let client = Client::get(capped, "/?topic=t", "").await;
        assert_eq!(client.status, 200);
        three.push(client);
    }
    let mut fourth = Client::get(capped, "/?topic=t", "").await;
    assert_eq!(fourth.status, 429, "{}", fourth.head);
    assert_eq!(fourth.header("retry-after"), Some("3"));
    assert!(fourth.body().await.contains("too many connections from this address"));
    // 127.0.0.2 is loopback too, and a different address.
    let other = TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let other = Client::over(
        other.connect(capped).await.unwrap(),
        b"GET /?topic=t HTTP/1.1\r\nhost: t\r\n\r\n",
    )
    .await;
    assert_eq!(other.status, 200);
    three.pop();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let again = Client::get(capped, "/?topic=t", "").await;
        if again.status == 200 {
            break;
        }
        assert_eq!(again.status, 429);
        assert!(tokio::time::Instant::now() < deadline, "the freed slot never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Graceful shutdown with full queues: the listener stops accepting, `publish` returns
/// `Err(Closed)`, readers get everything queued and then the final `retry:`, stalled clients are
/// cut at the write deadline, streams end in paced batches, and no task is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_with_full_queues_flushes_and_leaks_nothing() {
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_capacity(256)
        .with_slow_policy(SlowPolicy::DropOldest)
        .build();
    let endpoint = Endpoint::new(hub.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let baseline = tasks();
    let server = Server::new(endpoint.clone()).with_write_timeout(Duration::from_millis(300));
    let serving = tokio::spawn(server.serve_with_shutdown(listener, async {
        let _ = stopped.await;
    }));
    let mut readers = Vec::new();
    for _ in 0..10 {
        let mut reader = Client::get(addr, "/?topic=t", "").await;
        readers.push(tokio::spawn(async move {
            let body = reader.body().await;
            (reader.pending, body)
        }));
    }
    let mut stalls = Vec::new();
    for _ in 0..10 {
        stalls.push(support::stalled(addr, "/?topic=t", "").await);
    }
    until("all subscribed", || hub.subscriber_count() == 20).await;
    let payload = "z".repeat(8 * 1024);
    for n in 0..200 {
        hub.publish("t", Event::new(payload.clone()).with_id(n.to_string())).unwrap();
    }
    stop.send(()).unwrap();
    serving.await.unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
    let pacing = Pacing::new()
        .with_batch(5)
        .with_interval(Duration::from_millis(20))
        .with_retry(Duration::from_secs(1), Duration::from_millis(500));
    let shutdown = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.shutdown_paced(&pacing).await })
    };
    until("closed", || hub.is_closed()).await;
    let closed = hub.publish("t", Event::new("late"));
    assert!(matches!(closed, Err(PublishError::Closed(_))), "{closed:?}");
    assert!(shutdown.await.unwrap());
    for reader in readers {
        let (events, body) = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
        let ids: Vec<String> = events.into_iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), 200, "every queued event is flushed");
        assert!(ids.iter().enumerate().all(|(n, id)| *id == n.to_string()));
        assert!(body.contains("retry: "), "the final retry hint");
    }
    until("stalled clients cut and every task gone", || {
        hub.subscriber_count() == 0 && endpoint.connection_count() == 0 && tasks() == baseline
    })
    .await;
    drop(stalls);
}
