//! The HTTP publisher of `loadgen --publish-path`: events POSTed to the server over kept-alive
//! connections on a fixed schedule, the way the hub server (BENCH-CONTRACT section 2) and
//! nginx + nchan are fed in production, instead of a publisher inside the server (`GET /start`).
//!
//! Event j (from 0) is due at `start + j / rate`, goes to topic `t{j % T}` and is sent on
//! connection `j % C`; each connection sends its requests one after the other (no pipelining), so
//! a server that answers a POST late holds back that connection's next ones, and several
//! connections keep the schedule when one is waiting (a topic's events may then arrive out of
//! order: the subscribers count holes, not order). The data of each event is `"<publish time, ns since the UNIX epoch> <sequence number within its topic,
//! from 1> xxx…"`, padded to `--payload` bytes. Each connection runs on a thread of its own with
//! blocking I/O (as `publish_latency` does), so the subscribers' runtime does not delay it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::stream::parse_head;

/// How an event goes in a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `{"data": "…"}`, `content-type: application/json` (the hub server).
    Json,
    /// The data itself, `content-type: text/plain` (nchan's publisher location).
    Raw,
}

/// What the publisher needs from the command line.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server.
    pub addr: SocketAddr,
    /// The request path, `{topic}` replaced by the topic's name.
    pub path: String,
    /// The body's form.
    pub body: Body,
    /// Events per second, in total.
    pub rate: f64,
    /// Topics `t0` .. `t{T-1}`.
    pub topics: usize,
    /// Kept-alive connections.
    pub connections: usize,
    /// Bytes of each event's data (at least what the stamp and sequence number take).
    pub payload: usize,
    /// Nice value of the publishing threads (0: unchanged).
    pub nice: i32,
}

/// What one connection measured.
struct Tally {
    /// From each request's due time to the end of its response, µs (falling behind is charged).
    from_due: Histogram<u64>,
    /// Requests answered 2xx.
    sent: u64,
    /// The first failure, if any (the connection stops at it).
    error: Option<String>,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The request for one event.
fn request(plan: &Plan, topic: usize, seq: u64) -> Vec<u8> {
    let mut data = format!("{} {} ", now_ns(), seq);
    while data.len() < plan.payload {
        data.push('x');
    }
    let (body, kind) = match plan.body {
        Body::Json => (json!({ "data": data }).to_string(), "application/json"),
        Body::Raw => (data, "text/plain"),
    };
    let path = plan.path.replace("{topic}", &format!("t{topic}"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n{body}",
        plan.addr,
        body.len()
    )
    .into_bytes()
}

/// Reads one response: `Ok(())` for a 2xx with its whole body (by `content-length`, or chunked).
fn response(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((head, start)) = parse_head(buf)? {
            if !(200..300).contains(&head.status) {
                return Err(format!("publish answered {}", head.status));
            }
            if let Some(end) = body_end(&buf[..start], &buf[start..], head.chunked)? {
                buf.drain(..start + end);
                return Ok(());
            }
        }
        if buf.len() > 1 << 20 {
            return Err("publish response over 1 MiB".into());
        }
        let n = socket.read(&mut chunk).map_err(|e| format!("publish read: {e}"))?;
        if n == 0 {
            return Err("publish connection closed mid-response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Where the body that starts `body` ends, when it is complete.
fn body_end(head: &[u8], body: &[u8], chunked: bool) -> Result<Option<usize>, String> {
    if chunked {
        // The whole body is read when the last chunk and its empty trailer have arrived.
        return Ok(memchr::memmem::find(body, b"0\r\n\r\n").map(|at| at + 5));
    }
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let length = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().map_err(|_| "bad content-length".to_string()))
        .transpose()?
        .unwrap_or(0);
    Ok((body.len() >= length).then_some(length))
}

/// One connection's share of the schedule, from `start` until `end`.
fn connection(plan: &Plan, index: usize, start: Instant, from: Instant, end: Instant) -> Tally {
    let mut tally = Tally {
        from_due: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
        sent: 0,
        error: None,
    };
    if plan.nice != 0 {
        // SAFETY: plain integer syscalls; on Linux PRIO_PROCESS with a thread id sets that
        // thread's nice value only.
        let status = unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, plan.nice)
        };
        if status != 0 {
            tally.error = Some(format!("--publisher-nice: {}", std::io::Error::last_os_error()));
            return tally;
        }
    }
    let mut socket = match TcpStream::connect(plan.addr) {
        Ok(socket) => socket,
        Err(e) => {
            tally.error = Some(format!("publish connect: {e}"));
            return tally;
        }
    };
    let _ = socket.set_nodelay(true);
    let _ = socket.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::with_capacity(4096);
    let (topics, connections) = (plan.topics as u64, plan.connections as u64);
    // Event j is topic j % T's event number j / T + 1; this connection sends j = index + n * C.
    for j in (index as u64..).step_by(connections as usize) {
        let due = start + Duration::from_secs_f64(j as f64 / plan.rate);
        if due >= end || Instant::now() >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let request = request(plan, (j % topics) as usize, j / topics + 1);
        let sent = socket.write_all(&request).map_err(|e| format!("publish write: {e}"));
        if let Err(e) = sent.and_then(|()| response(&mut socket, &mut buf)) {
            tally.error = Some(e);
            break;
        }
        tally.sent += 1;
        if due >= from {
            let took = Instant::now().saturating_duration_since(due);
            tally.from_due.saturating_record(took.as_micros().max(1) as u64);
        }
    }
    tally
}

/// The publishing threads, running.
pub struct Publisher {
    plan: Plan,
    threads: Vec<std::thread::JoinHandle<Tally>>,
    from: Instant,
    end: Instant,
}

impl Publisher {
    /// Starts publishing now; the requests due from `from` on are measured; none is sent after
    /// `end`.
    pub fn start(plan: Plan, from: Instant, end: Instant) -> Publisher {
        let start = Instant::now();
        let threads = (0..plan.connections)
            .map(|k| {
                let plan = plan.clone();
                std::thread::spawn(move || connection(&plan, k, start, from, end))
            })
            .collect();
        Publisher { plan, threads, from, end }
    }

    /// Waits for every connection (each stops at `end`, or 10 s after it when a response hangs)
    /// and returns the record's `http_publish` object.
    pub fn finish(self) -> Value {
        let mut from_due = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
        let (mut sent, mut errors) = (0u64, Vec::new());
        for thread in self.threads {
            match thread.join() {
                Ok(tally) => {
                    let _ = from_due.add(&tally.from_due);
                    sent += tally.sent;
                    errors.extend(tally.error);
                }
                Err(_) => errors.push("a publishing thread panicked".into()),
            }
        }
        let window = self.end.saturating_duration_since(self.from).as_secs_f64().max(1e-9);
        let ms = |us: u64| us as f64 / 1000.0;
        json!({
            "path": self.plan.path,
            "body": match self.plan.body { Body::Json => "json", Body::Raw => "raw" },
            "connections": self.plan.connections,
            "nice": self.plan.nice,
            "posts": sent,
            "posts_in_window": from_due.len(),
            "posts_per_s": (from_due.len() as f64 / window * 1000.0).round() / 1000.0,
            "latency_from_due_ms": {
                "p50": ms(from_due.value_at_quantile(0.50)),
                "p99": ms(from_due.value_at_quantile(0.99)),
                "max": ms(from_due.max()),
            },
            "error": errors.first(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_end_by_length_or_last_chunk() {
        let head = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(body_end(head, b"abc", false), Ok(None));
        assert_eq!(body_end(head, b"abcdeHTTP", false), Ok(Some(5)));
        let head = b"HTTP/1.1 202 Accepted\r\n\r\n";
        assert_eq!(body_end(head, b"", false), Ok(Some(0)));
        assert_eq!(body_end(b"", b"3\r\nabc\r\n", true), Ok(None));
        assert_eq!(body_end(b"", b"3\r\nabc\r\n0\r\n\r\nHTTP", true), Ok(Some(13)));
    }

    #[test]
    fn events_carry_stamp_and_sequence() {
        let plan = Plan {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            path: "/publish?topic={topic}".into(),
            body: Body::Json,
            rate: 1.0,
            topics: 1,
            connections: 1,
            payload: 64,
            nice: 0,
        };
        let text = String::from_utf8(request(&plan, 3, 7)).expect("ascii");
        assert!(text.starts_with("POST /publish?topic=t3 HTTP/1.1\r\n"), "{text}");
        let body = text.split("\r\n\r\n").nth(1).expect("a body");
        let value: Value = serde_json::from_str(body).expect("json");
        let data = value["data"].as_str().expect("data");
        assert_eq!(data.len(), 64);
        let mut tokens = data.split(' ');
        assert!(tokens.next().and_then(|t| t.parse::<u64>().ok()).is_some());
        assert_eq!(tokens.next(), Some("7"));
    }
}
