//! The hub server's process and a small HTTP/1.1 client, shared by the `hub_*` tests: the
//! compiled `hub` example (the same program as the `ssehub` binary) is started on a port of its
//! choosing and driven over real TCP. Every wait is bounded; only the processes started here are
//! signalled or killed.
#![allow(dead_code)] // Each test file uses its own part of the harness.
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
pub const WAIT: Duration = Duration::from_secs(10);

// ---- the server process ----------------------------------------------------------------------

/// The example binary, built once per test run (a no-op when `cargo test` already built it).
pub fn binary() -> &'static PathBuf {
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
pub fn hub_command() -> Command {
    clean_command(binary())
}

/// `program` (the example or the `ssehub` binary) with none of the caller's `SSEHUB_*`
/// settings: only the flags count.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SSEHUB_") {
            command.env_remove(name);
        }
    }
    command
}

/// Waits for `child` at most `limit`; kills it (by its handle, so only it) when it overstays.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
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
pub struct Server {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it printed after its address, line by line.
    pub lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the example on `127.0.0.1:0` with `args`, and reads the port it printed.
    pub fn start(args: &[&str]) -> Server {
        let mut command = hub_command();
        command.args(["--addr", "127.0.0.1:0"]).args(args);
        Server::from_command(command)
    }

    /// Starts the example like [`Server::start`], with `vars` set in its environment.
    pub fn start_with_env(args: &[&str], vars: &[(&str, &str)]) -> Server {
        let mut command = hub_command();
        command.args(["--addr", "127.0.0.1:0"]).args(args);
        command.envs(vars.iter().copied());
        Server::from_command(command)
    }

    /// Spawns `command` (the example with its flags) and reads the port it printed.
    pub fn from_command(mut command: Command) -> Server {
        let mut child = command
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
        // Lines before the address (joining a broker, say) are skipped; at most 20 of them.
        let deadline = Instant::now() + WAIT;
        let mut skipped = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                // `http://ADDR`, or `https://ADDR` with TLS.
                Ok(line) if line.contains(" listening on http") => line,
                Ok(line) if skipped.len() < 20 => {
                    skipped.push(line);
                    continue;
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the server printed no address within {WAIT:?}; it said {skipped:?}");
                }
            };
            match line.rsplit("://").next().and_then(|a| a.parse().ok()) {
                Some(addr) => break addr,
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("no address in {line:?}");
                }
            }
        };
        Server { child, addr, lines: rx }
    }

    /// Everything it printed after its address, once it has exited (its stdout is closed).
    pub fn output(&self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            out.push(line);
        }
        out
    }

    /// Sends `signal` (e.g. `INT`) to this server's process only.
    #[cfg(unix)]
    pub fn signal(&self, signal: &str) {
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
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// Opens a connection and sends one request.
pub fn send(
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
        // JSON unless the caller named the type.
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send request");
    stream
}

/// Reads the status line and headers.
pub fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
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
pub fn request(
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

pub fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &[], "")
}

pub fn post(addr: SocketAddr, target: &str, body: &str) -> Response {
    request(addr, "POST", target, &[], body)
}

/// Publishes and returns the event's id, asserting success.
pub fn publish(addr: SocketAddr, topic: &str, body: &Value) -> String {
    let response = post(addr, &format!("/publish?topic={topic}"), &body.to_string());
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()["id"].as_str().expect("an id").to_string()
}

/// An incremental decoder of `Transfer-Encoding: chunked`.
#[derive(Default)]
pub struct Chunked {
    /// The body is close-delimited (the native listener), not chunked: pass bytes through.
    pub raw: bool,
    /// Bytes not yet decoded.
    pub pending: Vec<u8>,
    /// Bytes left in the current chunk (plus its CRLF), once its size line was read.
    pub left: Option<usize>,
    /// Whether the last chunk was seen.
    pub done: bool,
}

impl Chunked {
    /// Decodes what it can of `input`; keeps the rest for the next call.
    pub fn feed(&mut self, input: &[u8]) -> Vec<u8> {
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
pub struct Stream {
    pub reader: BufReader<TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub chunked: Chunked,
    pub parser: Parser,
    /// Events parsed and not yet taken.
    pub events: std::collections::VecDeque<ParsedEvent>,
    /// Everything received, decoded, for checks on the raw wire (comments).
    pub raw: Vec<u8>,
}

impl Stream {
    pub fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Stream {
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
    pub fn connected(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Stream {
        let mut stream = Stream::open(addr, target, headers);
        assert_eq!(stream.status, 200, "GET {target}");
        let first = stream.next().expect("the connected event");
        assert_eq!(first.event, "connected");
        assert_eq!(first.id, "", "the connected event carries no id");
        stream
    }

    /// Reads more; `false` at the end of the stream.
    pub fn fill(&mut self) -> bool {
        if self.chunked.done {
            return false;
        }
        let mut buf = [0u8; 16 * 1024];
        let mut interrupted = 0;
        let n = loop {
            match self.reader.read(&mut buf) {
                Ok(n) => break n,
                // A signal landed in this thread (other tests signal their servers): read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted && interrupted < 100 => {
                    interrupted += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break 0,
                Err(e) => panic!("reading the stream: {e}"),
            }
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
    pub fn next(&mut self) -> Option<ParsedEvent> {
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
    pub fn next_message(&mut self) -> Option<ParsedEvent> {
        std::iter::from_fn(|| self.next()).find(|e| e.event != "connected")
    }

    /// Reads until the stream ends, returning the events on the way.
    pub fn until_end(&mut self) -> Vec<ParsedEvent> {
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
