//! The hub server example (`examples/hub.rs`) over real TCP: the compiled example is started
//! on a port of its choosing, then driven with a small HTTP/1.1 client and the crate's own SSE
//! parser. Every wait is bounded; only the processes started here are signalled or killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use ssehub::parse::{ParsedEvent, Parser};

/// The longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(10);

// ---- the server process ----------------------------------------------------------------------

/// The example binary, built once per test run (a no-op when `cargo test` already built it).
fn binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // This test runs from `<target>/<profile>/deps/`; the example lands in
        // `<target>/<profile>/examples/`.
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("profile dir");
        let target_dir = profile_dir.parent().expect("target dir");
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--example", "hub", "--quiet"]).env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let mut child = build.spawn().expect("cargo build --example hub");
        let status = wait_bounded(&mut child, Duration::from_secs(900)).expect("build finished");
        assert!(status.success(), "cargo build --example hub failed");
        let binary =
            profile_dir.join("examples").join(format!("hub{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.exists(), "no example binary at {}", binary.display());
        binary
    })
}

/// The example, with none of the caller's `SSEHUB_*` settings: only the flags count.
fn hub_command() -> Command {
    let mut command = Command::new(binary());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SSEHUB_") {
            command.env_remove(name);
        }
    }
    command
}

/// Waits for `child` at most `limit`; kills it (by its handle, so only it) when it overstays.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A running hub server; killed when dropped (if still running).
struct Server {
    /// The process.
    child: Child,
    /// Where it listens.
    addr: SocketAddr,
    /// What it printed after its address, line by line.
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the example on `127.0.0.1:0` with `args`, and reads the port it printed.
    fn start(args: &[&str]) -> Server {
        let mut child = hub_command()
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the hub example");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the server printed no address within {WAIT:?}");
        });
        let addr = line.rsplit("http://").next().and_then(|a| a.parse().ok());
        let addr = addr.unwrap_or_else(|| panic!("no address in {line:?}"));
        Server { child, addr, lines: rx }
    }

    /// Everything it printed after its address, once it has exited (its stdout is closed).
    fn output(&self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            out.push(line);
        }
        out
    }

    /// Sends `signal` (e.g. `INT`) to this server's process only.
    #[cfg(unix)]
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

// ---- a small HTTP/1.1 client -------------------------------------------------------------------

/// A response read to its end.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// Opens a connection and sends one request.
fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream.set_write_timeout(Some(WAIT)).expect("write timeout");
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send request");
    stream
}

/// Reads the status line and headers.
fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status in {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            return (status, headers);
        }
        let (name, value) = line.split_once(':').expect("header");
        headers.push((name.to_string(), value.trim().to_string()));
    }
}

/// One request, read to the end of its response.
fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut reader = BufReader::new(send(addr, method, target, headers, body));
    let (status, response_headers) = read_head(&mut reader);
    let mut raw = Vec::new();
    reader.read_to_end(&mut raw).expect("body");
    let chunked = response_headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut decoder = Chunked::default();
        raw = decoder.feed(&raw);
    }
    Response {
        status,
        headers: response_headers,
        body: String::from_utf8(raw).expect("UTF-8 body"),
    }
}

fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &[], "")
}

fn post(addr: SocketAddr, target: &str, body: &str) -> Response {
    request(addr, "POST", target, &[], body)
}

/// Publishes and returns the event's id, asserting success.
fn publish(addr: SocketAddr, topic: &str, body: &Value) -> String {
    let response = post(addr, &format!("/publish?topic={topic}"), &body.to_string());
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()["id"].as_str().expect("an id").to_string()
}

/// An incremental decoder of `Transfer-Encoding: chunked`.
#[derive(Default)]
struct Chunked {
    /// The body is close-delimited (the native listener), not chunked: pass bytes through.
    raw: bool,
    /// Bytes not yet decoded.
    pending: Vec<u8>,
    /// Bytes left in the current chunk (plus its CRLF), once its size line was read.
    left: Option<usize>,
    /// Whether the last chunk was seen.
    done: bool,
}

impl Chunked {
    /// Decodes what it can of `input`; keeps the rest for the next call.
    fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        if self.raw {
            return input.to_vec();
        }
        self.pending.extend_from_slice(input);
        let mut out = Vec::new();
        loop {
            match self.left {
                None => {
                    let Some(end) = self.pending.windows(2).position(|w| w == b"\r\n") else {
                        break;
                    };
                    let line = String::from_utf8_lossy(&self.pending[..end]).to_string();
                    let size =
                        usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                            .unwrap_or_else(|_| panic!("chunk size line {line:?}"));
                    self.pending.drain(..end + 2);
                    if size == 0 {
                        self.done = true;
                        break;
                    }
                    self.left = Some(size + 2);
                }
                Some(left) => {
                    if self.pending.len() < left {
                        break;
                    }
                    out.extend_from_slice(&self.pending[..left - 2]);
                    self.pending.drain(..left);
                    self.left = None;
                }
            }
        }
        out
    }
}

/// An open event stream, parsed with the crate's parser.
struct Stream {
    reader: BufReader<TcpStream>,
    status: u16,
    headers: Vec<(String, String)>,
    chunked: Chunked,
    parser: Parser,
    /// Events parsed and not yet taken.
    events: std::collections::VecDeque<ParsedEvent>,
    /// Everything received, decoded, for checks on the raw wire (comments).
    raw: Vec<u8>,
}

impl Stream {
    fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Stream {
        let mut reader = BufReader::new(send(addr, "GET", target, headers, ""));
        let (status, headers) = read_head(&mut reader);
        let chunked = headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked")
        });
        Stream {
            reader,
            status,
            headers,
            chunked: Chunked { raw: !chunked, ..Chunked::default() },
            parser: Parser::new(),
            events: Default::default(),
            raw: Vec::new(),
        }
    }

    /// Opens a stream and waits for its `connected` event, so the subscription is registered.
    fn connected(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Stream {
        let mut stream = Stream::open(addr, target, headers);
        assert_eq!(stream.status, 200, "GET {target}");
        let first = stream.next().expect("the connected event");
        assert_eq!(first.event, "connected");
        assert_eq!(first.id, "", "the connected event carries no id");
        stream
    }

    /// Reads more; `false` at the end of the stream.
    fn fill(&mut self) -> bool {
        if self.chunked.done {
            return false;
        }
        let mut buf = [0u8; 16 * 1024];
        let n = match self.reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("reading the stream: {e}"),
        };
        if n == 0 {
            return false;
        }
        let data = self.chunked.feed(&buf[..n]);
        self.raw.extend_from_slice(&data);
        let mut parsed = Vec::new();
        self.parser.feed(&data, &mut parsed).expect("a well-formed event stream");
        self.events.extend(parsed);
        true
    }

    /// The next event; `None` when the stream ended first. Bounded by the read timeout.
    fn next(&mut self) -> Option<ParsedEvent> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// The next event that is not the server's own (`connected`, `reset`...).
    fn next_message(&mut self) -> Option<ParsedEvent> {
        std::iter::from_fn(|| self.next()).find(|e| e.event != "connected")
    }

    /// Reads until the stream ends, returning the events on the way.
    fn until_end(&mut self) -> Vec<ParsedEvent> {
        let deadline = Instant::now() + WAIT;
        let mut events = Vec::new();
        while Instant::now() < deadline {
            match self.next() {
                Some(event) => events.push(event),
                None => return events,
            }
        }
        panic!("the stream did not end within {WAIT:?}");
    }
}

// ---- tests -------------------------------------------------------------------------------------

#[test]
fn a_published_event_reaches_the_stream_exactly() {
    let server = Server::start(&["--heartbeat", "0"]);
    let mut stream = Stream::connected(server.addr, "/events?topic=chat&pattern=room:*", &[]);
    assert_eq!(stream.status, 200);
    let content_type = stream.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    assert_eq!(content_type.map(|(_, v)| v.as_str()), Some("text/event-stream"));

    let data = "line one\nline two — déjà vu, naïve café 🎉🚀\n\n  indented after a blank line";
    let response = post(
        server.addr,
        "/publish?topic=chat",
        &serde_json::json!({ "data": data, "event": "note" }).to_string(),
    );
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let answer = response.json();
    assert_eq!(answer["receivers"], 1);
    let event = stream.next_message().expect("the published event");
    assert_eq!(event.event, "note");
    assert_eq!(event.data, data);
    assert_eq!(event.id, answer["id"].as_str().expect("a hub-assigned id"));

    // CRLF becomes LF; a publisher's id goes on the wire exactly; retry rides in the frame;
    // patterns match; data starting with a space keeps it.
    let id = publish(
        server.addr,
        "room:1",
        &serde_json::json!({ "data": " a\r\nb", "id": "my id 1", "retry": 1500 }),
    );
    assert_eq!(id, "my id 1");
    let event = stream.next_message().expect("the second event");
    assert_eq!(
        (event.event.as_str(), event.data.as_str(), event.id.as_str()),
        ("message", " a\nb", "my id 1")
    );
    assert_eq!(event.retry, Some(1500));
}

#[test]
fn bad_publishes_get_400_with_a_reason() {
    let server = Server::start(&["--heartbeat", "0"]);
    let cases: [(&str, &str, &str); 12] = [
        ("/publish?topic=t", "not json", "invalid body"),
        ("/publish?topic=t", "{}", "missing field `data`"),
        ("/publish?topic=t", r#"{"data": 5}"#, "invalid type"),
        ("/publish?topic=t", r#"{"data": "x", "extra": 1}"#, "unknown field `extra`"),
        ("/publish?topic=t", r#"{"data": "x", "retry": -1}"#, "invalid value"),
        ("/publish?topic=t", r#"{"data": "x", "id": "a\nb"}"#, "line break"),
        ("/publish?topic=t", r#"{"data": "x", "id": "a\u0000b"}"#, "NUL"),
        ("/publish?topic=t", r#"{"data": "x", "event": "a\rb"}"#, "line break"),
        ("/publish", r#"{"data": "x"}"#, "missing query parameter: topic"),
        ("/publish?topic=", r#"{"data": "x"}"#, "empty"),
        ("/publish?topic=a*b", r#"{"data": "x"}"#, "'*'"),
        ("/publish?topic=a&topic=b", r#"{"data": "x"}"#, "exactly one topic"),
    ];
    for (target, body, reason) in cases {
        let response = post(server.addr, target, body);
        assert_eq!(response.status, 400, "{target} {body}: {}", response.body);
        let error = response.json()["error"].as_str().expect("an error string").to_string();
        assert!(error.contains(reason), "{target} {body}: {error:?} lacks {reason:?}");
    }
    assert_eq!(get(server.addr, "/publish?topic=t").status, 405);
    assert_eq!(get(server.addr, "/events?topic=a*b").status, 400);
    // Nothing refused was published.
    assert_eq!(get(server.addr, "/stats").json()["events_published"], 0);
}

#[test]
fn the_publish_token_is_required_when_set() {
    let server = Server::start(&["--heartbeat", "0", "--publish-token", "s3cret"]);
    let publish_as = |auth: &[(&str, &str)]| {
        request(server.addr, "POST", "/publish?topic=t", auth, r#"{"data": "x"}"#)
    };
    let none = publish_as(&[]);
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    for wrong in ["Bearer nope", "Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret"] {
        let response = publish_as(&[("Authorization", wrong)]);
        assert_eq!(response.status, 401, "{wrong}");
        assert!(!response.body.contains("s3cret"), "the token is never echoed");
    }
    // The scheme is case-insensitive.
    for right in ["Bearer s3cret", "bearer s3cret"] {
        let response = publish_as(&[("Authorization", right)]);
        assert_eq!(response.status, 200, "{right}: {}", response.body);
    }
    // Disconnect is off unless enabled, token or not.
    let auth = [("Authorization", "Bearer s3cret")];
    assert_eq!(request(server.addr, "POST", "/disconnect?topic=t", &auth, "").status, 403);

    // With it enabled, the token guards it too.
    let admin =
        Server::start(&["--heartbeat", "0", "--publish-token", "s3cret", "--allow-disconnect"]);
    assert_eq!(post(admin.addr, "/disconnect?topic=t", "").status, 401);
    let ended = request(admin.addr, "POST", "/disconnect?topic=t", &auth, "");
    assert_eq!((ended.status, ended.json()["disconnected"].as_u64()), (200, Some(0)));
}

#[test]
fn disconnect_then_resume_has_no_gap_and_no_duplicate_under_concurrent_publishing() {
    let server = Server::start(&["--heartbeat", "0", "--allow-disconnect"]);
    let addr = server.addr;
    let target = "/events?topic=feed&pattern=side:*";
    let mut stream = Stream::connected(addr, target, &[]);

    // A publisher keeps going through the disconnect, the gap and the replay, across two
    // topics of the subscription.
    const TOTAL: usize = 300;
    let publisher = thread::spawn(move || {
        for n in 0..TOTAL {
            let topic = if n % 3 == 0 { "side:x" } else { "feed" };
            publish(addr, topic, &serde_json::json!({ "data": n.to_string() }));
            thread::sleep(Duration::from_millis(3));
        }
    });

    let mut seen: Vec<usize> = Vec::new();
    let mut last_id = String::new();
    while seen.len() < 60 {
        let event = stream.next_message().expect("live events");
        seen.push(event.data.parse().expect("a number"));
        last_id = event.id;
    }
    let ended = post(addr, "/disconnect?topic=feed", "");
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(ended.json()["disconnected"], 1);
    for event in stream.until_end() {
        seen.push(event.data.parse().expect("a number"));
        last_id = event.id;
    }
    // Away for a while: events pile up in the history.
    thread::sleep(Duration::from_millis(150));

    let mut resumed = Stream::connected(addr, target, &[("Last-Event-ID", &last_id)]);
    while seen.len() < TOTAL {
        let event = resumed.next_message().expect("replayed and live events");
        assert_ne!(event.event, "reset", "{}", event.data);
        seen.push(event.data.parse().expect("a number"));
    }
    publisher.join().expect("publisher");
    assert_eq!(seen, (0..TOTAL).collect::<Vec<_>>(), "every event once, in order");

    // The query parameter resumes too (for clients that cannot set headers); a stale id that
    // we never issued gets a reset, never silence.
    let mut from_query = Stream::connected(addr, &format!("{target}&lastEventId={last_id}"), &[]);
    assert!(from_query.next_message().is_some_and(|e| e.event == "message"));
    let mut unknown = Stream::connected(addr, "/events?topic=feed&lastEventId=nonsense", &[]);
    let reset = unknown.next().expect("a reset event");
    assert_eq!((reset.event.as_str(), reset.id.as_str()), ("reset", ""));
}

#[test]
fn stats_and_metrics_describe_the_hub() {
    let server = Server::start(&["--heartbeat", "0"]);
    let mut stream = Stream::connected(server.addr, "/events?topic=news", &[]);
    for n in 0..3 {
        publish(server.addr, "news", &serde_json::json!({ "data": format!("item {n}") }));
    }
    for _ in 0..3 {
        stream.next_message().expect("an event");
    }

    let stats = get(server.addr, "/stats");
    assert_eq!(stats.status, 200);
    assert_eq!(stats.header("content-type"), Some("application/json"));
    let stats = stats.json();
    assert_eq!(stats["subscribers"], 1);
    assert_eq!(stats["events_published"], 3);
    assert_eq!(stats["frames_delivered"], 3);
    for key in ["topics", "frames_dropped", "slow_disconnects", "heartbeats"] {
        assert!(stats[key].is_u64(), "{key} in {stats}");
    }
    for key in ["events_per_second", "frames_per_second", "uptime_seconds"] {
        assert!(stats[key].as_f64().is_some_and(|x| x >= 0.0), "{key} in {stats}");
    }
    assert_eq!(stats["demo"], false);
    let top = stats["top_topics"].as_array().expect("top_topics");
    assert!(top.iter().any(|t| t["topic"] == "news" && t["subscribers"] == 1), "{stats}");

    let metrics = get(server.addr, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    let text = metrics.body;
    for line in [
        "ssehub_subscribers 1",
        "ssehub_events_published_total 3",
        "ssehub_frames_delivered_total 3",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
    }
    assert!(text.contains("ssehub_topic_subscribers{topic=\"news\"} 1"), "{text}");
    // Every sample is `name{labels} value`, in a family announced by HELP and TYPE.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        assert!(value.parse::<f64>().is_ok(), "{line:?}");
        let name = series.split('{').next().unwrap_or_default();
        assert!(name.starts_with("ssehub_"), "{line:?}");
        assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}");
        assert!(text.contains(&format!("# TYPE {name} ")), "no TYPE for {name}");
    }
}

#[test]
fn the_demo_page_and_feed_are_served() {
    let server = Server::start(&["--heartbeat", "0", "--demo", "--demo-rate", "50"]);
    let page = get(server.addr, "/");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").is_some_and(|t| t.starts_with("text/html")));
    assert!(page.body.contains("/app.js"));
    let script = get(server.addr, "/app.js");
    assert!(script.body.contains("new EventSource"));
    let style = get(server.addr, "/style.css");
    assert_eq!(style.status, 200);
    // Everything is served from here: no CDN, no web font, no remote image.
    for text in [&page.body, &script.body, &style.body] {
        for remote in ["src=\"http", "href=\"http", "url(http", "@import", "fetch(\"http"] {
            assert!(!text.contains(remote), "a remote resource: {remote}");
        }
    }

    // The snapshot names the last event it includes; a stream resuming from it replays the
    // ticks since (no reset).
    let deadline = Instant::now() + WAIT;
    let snapshot = loop {
        let snapshot = get(server.addr, "/demo/market");
        assert_eq!(snapshot.status, 200);
        let snapshot = snapshot.json();
        if snapshot["last_id"].is_string() {
            break snapshot;
        }
        assert!(Instant::now() < deadline, "no tick published");
        thread::sleep(Duration::from_millis(50));
    };
    let symbols = snapshot["symbols"].as_array().expect("symbols");
    assert!(symbols.len() >= 24, "{} symbols", symbols.len());
    assert!(symbols.iter().all(|s| s["recent"].as_array().is_some_and(|r| !r.is_empty())));
    let last_id = snapshot["last_id"].as_str().unwrap_or_default();

    let target = format!("/events?pattern=price:*&lastEventId={last_id}");
    let mut prices = Stream::connected(server.addr, &target, &[]);
    let event = prices.next_message().expect("a price");
    assert_eq!(event.event, "price");
    assert!(!event.id.is_empty());
    let quote: Value = serde_json::from_str(&event.data).expect("JSON data");
    assert!(quote["symbol"].is_string() && quote["price"].is_f64() && quote["change"].is_number());
    assert!(quote["time"].is_u64());
    assert_eq!(get(server.addr, "/stats").json()["demo"], true);

    // Without --demo the snapshot is a 404 (the page then shows its "no feed" state).
    let plain = Server::start(&["--heartbeat", "0"]);
    assert_eq!(get(plain.addr, "/demo/market").status, 404);
}

#[test]
fn idle_streams_get_keep_alive_comments() {
    let server = Server::start(&["--heartbeat", "0.2"]);
    let mut stream = Stream::connected(server.addr, "/events?topic=quiet", &[]);
    let deadline = Instant::now() + WAIT;
    while !stream.raw.windows(13).any(|w| w == b": keep-alive\n") {
        assert!(Instant::now() < deadline, "no heartbeat");
        assert!(stream.fill(), "the stream ended");
    }
    assert!(!String::from_utf8_lossy(&stream.raw).contains(": keep-alive\n\n"));
}

#[test]
fn the_connection_limit_answers_503() {
    let server = Server::start(&["--heartbeat", "0", "--max-connections", "1"]);
    let _first = Stream::connected(server.addr, "/events?topic=t", &[]);
    let second = get(server.addr, "/events?topic=t");
    assert_eq!(second.status, 503);
    assert!(second.header("retry-after").is_some());
}

#[test]
fn a_fixed_send_buffer_still_streams_every_event() {
    let server = Server::start(&["--heartbeat", "0", "--send-buffer", "16384"]);
    let mut stream = Stream::connected(server.addr, "/events?topic=t", &[]);
    assert_eq!(stream.status, 200);
    // 400 KB published before the client reads: more than its socket buffers hold, so the
    // stream waits on a full socket and goes on as it drains.
    let data = "b".repeat(4000);
    let ids: Vec<String> =
        (0..100).map(|_| publish(server.addr, "t", &serde_json::json!({ "data": data }))).collect();
    for id in ids {
        let event = stream.next_message().expect("every event");
        assert_eq!((event.id.as_str(), event.data.len()), (id.as_str(), data.len()));
    }
}

#[test]
fn help_and_bad_flags() {
    let help = hub_command().arg("--help").output().expect("--help");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in
        ["--addr", "--demo", "--heartbeat", "--allow-disconnect", "--publish-token", "SSEHUB_ADDR"]
    {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
    for args in [
        &["--bogus"][..],
        &["--heartbeat", "soon"],
        &["--addr"],
        &["--addr", "nowhere"],
        &["--send-buffer", "lots"],
    ] {
        let output = hub_command().args(args).output().expect("run");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty());
    }
    let output = hub_command().env("SSEHUB_HEARTBEAT", "-1").output().expect("run");
    assert_eq!(output.status.code(), Some(2));
}

#[cfg(unix)]
#[test]
fn sigint_and_sigterm_end_open_streams_and_exit() {
    for signal in ["INT", "TERM"] {
        let mut server =
            Server::start(&["--heartbeat", "0", "--retry", "2", "--retry-jitter", "1"]);
        let mut stream = Stream::connected(server.addr, "/events?topic=t", &[]);
        server.signal(signal);
        // The stream gets the final retry hint, then ends cleanly.
        stream.until_end();
        let hint = stream.parser.reconnection_time().expect("a retry hint");
        assert!((2000..=3000).contains(&hint), "{hint}");
        let raw = String::from_utf8_lossy(&stream.raw);
        assert_eq!(
            raw.matches("retry: ").count(),
            2,
            "the connect hint and the final one: {raw:?}"
        );
        let status = wait_bounded(&mut server.child, WAIT).expect("the server exited");
        assert!(status.success(), "SIG{signal}: {status}");
        // Every stream ended by itself: the server did not give up on one at its grace period.
        let output = server.output();
        assert_eq!(output.last().map(String::as_str), Some("stopped"), "{output:?}");
        assert!(!output.iter().any(|l| l.contains("still open")), "{output:?}");
    }
}
