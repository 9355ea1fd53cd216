//! The hub server's publish API at scale (issue 18), against the compiled server over real TCP:
//! kept-alive and pipelined publishes, a stream after them on the same connection, the body's
//! deadline and size limit, the token checked before the body, and NDJSON batches (all or
//! nothing). Every wait is bounded.

#[path = "support/hub_process.rs"]
mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{read_head, Server, Stream, WAIT};

/// A connection kept across requests.
struct Conn {
    reader: BufReader<TcpStream>,
}

/// A response read off a kept connection (its `content-length` body).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        Conn { reader: BufReader::new(stream) }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("send");
    }

    fn read(&mut self) -> Answer {
        let (status, headers) = read_head(&mut self.reader);
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().expect("a length"));
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("the body");
        Answer { status, headers, body: String::from_utf8(body).expect("UTF-8") }
    }

    /// Waits for the server to close the connection.
    fn closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the server kept the connection open: {e}"),
        }
    }
}

/// A `POST` with `content-type` and `body`, keeping the connection.
fn post(target: &str, content_type: &str, extra: &str, body: &str) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nhost: t\r\ncontent-type: {content_type}\r\n\
         content-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

fn publish(topic: &str, data: &str) -> String {
    post(
        &format!("/publish?topic={topic}"),
        "application/json",
        "",
        &json!({"data": data}).to_string(),
    )
}

fn batch(lines: &[Value]) -> String {
    let body: String = lines.iter().map(|line| format!("{line}\n")).collect();
    post("/publish", "application/x-ndjson", "", &body)
}

#[test]
fn publishes_share_one_kept_alive_connection_then_its_stream() {
    let server = Server::start(&[]);
    let mut stream = Stream::connected(server.addr, "/events?topic=t", &[]);
    let mut conn = Conn::open(server.addr);
    let mut ids = Vec::new();
    for n in 0..50 {
        conn.write(publish("t", &format!("one {n}")).as_bytes());
        let answer = conn.read();
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_ne!(answer.header("connection"), Some("close"));
        ids.push(answer.json()["id"].as_str().expect("an id").to_string());
    }
    // Pipelined: twenty publishes in one write, answered in order.
    let all: String = (0..20).map(|n| publish("t", &format!("two {n}"))).collect();
    conn.write(all.as_bytes());
    for _ in 0..20 {
        let answer = conn.read();
        assert_eq!(answer.status, 200, "{}", answer.body);
        ids.push(answer.json()["id"].as_str().expect("an id").to_string());
    }
    for (n, id) in ids.iter().enumerate() {
        let event = stream.next_message().expect("every publish delivered");
        assert_eq!(&event.id, id);
        let want = if n < 50 { format!("one {n}") } else { format!("two {}", n - 50) };
        assert_eq!(event.data, want);
    }
    // The same connection asks for a stream: the hub's native listener serves it.
    conn.write(b"GET /events?topic=u HTTP/1.1\r\nhost: t\r\n\r\n");
    let (status, headers) = read_head(&mut conn.reader);
    assert_eq!(status, 200);
    assert!(headers.iter().any(|(n, v)| n == "content-type" && v == "text/event-stream"));
    let mut live = Stream {
        reader: conn.reader,
        status,
        headers,
        chunked: support::Chunked { raw: true, ..Default::default() },
        parser: ssehub::parse::Parser::new(),
        events: Default::default(),
        raw: Vec::new(),
    };
    assert_eq!(live.next().expect("connected").event, "connected");
    let id = support::publish(server.addr, "u", &json!({"data": "to the reused connection"}));
    let event = live.next_message().expect("the event");
    assert_eq!((event.id.as_str(), event.data.as_str()), (id.as_str(), "to the reused connection"));
}

/// The defect: a `Content-Length: 1000` publish with half its body held the connection
/// until the client left. Now: 408 at `--body-timeout`, and the connection closes.
#[test]
fn a_stalled_publish_body_gets_408_and_the_connection_closes() {
    let server = Server::start(&["--body-timeout", "1"]);
    let mut conn = Conn::open(server.addr);
    let head = "POST /publish?topic=t HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
                content-length: 1000\r\n\r\n";
    conn.write(format!("{head}{}", "x".repeat(500)).as_bytes());
    let started = Instant::now();
    let answer = conn.read();
    assert_eq!(answer.status, 408, "{}", answer.body);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(started.elapsed() >= Duration::from_millis(800), "before the deadline");
    assert!(started.elapsed() < Duration::from_secs(5), "long after the deadline");
    conn.closed();
}

#[test]
fn a_publish_over_max_body_gets_413() {
    let server = Server::start(&["--max-body", "100"]);
    let mut conn = Conn::open(server.addr);
    let data = "d".repeat(200);
    conn.write(publish("t", &data).as_bytes());
    let answer = conn.read();
    assert_eq!(answer.status, 413, "{}", answer.body);
    conn.closed();
    let mut conn = Conn::open(server.addr);
    conn.write(publish("t", "small").as_bytes());
    assert_eq!(conn.read().status, 200);
}

/// Without the token, the server answers 401 from the head alone: it neither waits for nor
/// reads the announced body.
#[test]
fn the_token_is_checked_before_the_body_is_read() {
    let server = Server::start(&["--publish-token", "s3cret", "--body-timeout", "30"]);
    let mut conn = Conn::open(server.addr);
    let head = "POST /publish?topic=t HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
                content-length: 1000\r\n\r\n";
    conn.write(head.as_bytes());
    let started = Instant::now();
    let answer = conn.read();
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(started.elapsed() < Duration::from_secs(5), "waited for the body");
    // With the token, the publish goes through on a kept connection.
    let mut conn = Conn::open(server.addr);
    let body = json!({"data": "x"}).to_string();
    for _ in 0..3 {
        conn.write(
            post("/publish?topic=t", "application/json", "authorization: Bearer s3cret\r\n", &body)
                .as_bytes(),
        );
        assert_eq!(conn.read().status, 200);
    }
}

#[test]
fn a_batch_publishes_every_line_in_order_and_answers_one_id_per_line() {
    let server = Server::start(&[]);
    let mut a = Stream::connected(server.addr, "/events?topic=a", &[]);
    let mut b = Stream::connected(server.addr, "/events?topic=b", &[]);
    let mut conn = Conn::open(server.addr);
    conn.write(
        batch(&[
            json!({"topic": "a", "data": "a1", "id": "custom-1", "event": "tick"}),
            json!({"topic": "b", "data": "b1", "retry": 2500}),
            json!({"topic": "a", "data": "a2\nsecond line"}),
        ])
        .as_bytes(),
    );
    let answer = conn.read();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/x-ndjson"));
    let ids: Vec<String> = answer
        .body
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("one JSON object per line");
            value["id"].as_str().expect("an id").to_string()
        })
        .collect();
    assert_eq!(ids.len(), 3, "{}", answer.body);
    assert_eq!(ids[0], "custom-1");
    let first = a.next_message().expect("a1");
    assert_eq!(
        (first.id.as_str(), first.event.as_str(), first.data.as_str()),
        ("custom-1", "tick", "a1")
    );
    let second = b.next_message().expect("b1");
    assert_eq!((second.id.as_str(), second.data.as_str()), (ids[1].as_str(), "b1"));
    assert_eq!(second.retry, Some(2500));
    let third = a.next_message().expect("a2");
    assert_eq!((third.id.as_str(), third.data.as_str()), (ids[2].as_str(), "a2\nsecond line"));
    // The connection serves the next batch.
    conn.write(batch(&[json!({"topic": "b", "data": "b2"})]).as_bytes());
    assert_eq!(conn.read().status, 200);
    assert_eq!(b.next_message().expect("b2").data, "b2");
}

#[test]
fn a_bad_line_refuses_the_whole_batch_and_names_the_line() {
    let server = Server::start(&[]);
    let mut a = Stream::connected(server.addr, "/events?topic=a", &[]);
    let mut conn = Conn::open(server.addr);
    let good = json!({"topic": "a", "data": "never"});
    for (bad, reason) in [
        (json!({"topic": "a", "data": "x", "id": "two\nlines"}), "line 2: invalid event"),
        (json!({"topic": "a*", "data": "x"}), "line 2: invalid topic"),
        (json!({"topic": "", "data": "x"}), "line 2: invalid topic"),
        (json!({"topic": "a", "data": "x", "event": "a\rb"}), "line 2: invalid event"),
        (json!({"topic": "a", "data": "x", "key": 7}), "line 2: invalid event"),
        (json!({"topic": "a", "data": "x", "colour": "red"}), "line 2: invalid event"),
        (json!({"data": "x"}), "line 2: invalid event"),
    ] {
        conn.write(batch(&[good.clone(), bad.clone(), good.clone()]).as_bytes());
        let answer = conn.read();
        assert_eq!(answer.status, 400, "{bad}: {}", answer.body);
        let error = answer.json()["error"].as_str().expect("a reason").to_string();
        assert!(error.starts_with(reason), "{bad}: {error}");
    }
    // Not JSON at all, on line 3 (line 2 is blank and skipped).
    conn.write(
        post("/publish", "application/x-ndjson", "", &format!("{good}\n\nnot json\n")).as_bytes(),
    );
    let answer = conn.read();
    assert_eq!(answer.status, 400);
    assert!(answer.json()["error"].as_str().unwrap().starts_with("line 3: "), "{}", answer.body);
    conn.write(post("/publish", "application/x-ndjson", "", "\n").as_bytes());
    assert_eq!(conn.read().status, 400);
    conn.write(
        post("/publish?topic=a", "application/x-ndjson", "", &format!("{good}\n")).as_bytes(),
    );
    assert_eq!(conn.read().status, 400);
    // Nothing of the refused batches reached the subscriber: the next event is the marker.
    let id = support::publish(server.addr, "a", &json!({"data": "marker"}));
    let event = a.next_message().expect("the marker");
    assert_eq!((event.id.as_str(), event.data.as_str()), (id.as_str(), "marker"));
}
