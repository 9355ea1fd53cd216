//! The epoll floor: what fan-out costs when nothing stands between the encoded bytes and the
//! sockets. One thread runs an edge-triggered epoll loop (mio) over every socket; no task, no
//! queue per connection, no allocation per event per socket.
//!
//! - The publisher thread (the same schedule as every other peer) encodes each event once, into
//!   its topic's hand-off buffer, and wakes the loop once per tick.
//! - The loop appends the tick's bytes to the topic's log: one contiguous buffer of the bytes
//!   some subscriber has not written yet. A subscriber is an offset into its topic's log.
//! - Per wake-up, each subscriber with bytes pending gets one `write` of everything from its
//!   offset to the log's end (a second only when the first was partial, to reach `WouldBlock`
//!   and so be sure of the next edge); a socket that would block waits for its `EPOLLOUT`.
//! - A subscriber more than `--capacity` events behind is disconnected (ssehub's default
//!   policy); the log keeps bytes back to its slowest remaining subscriber only.
//!
//! `--workers` is accepted for the contract's sake; the loop is always one thread.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use ssehub_bench_peers::{publisher_ticks, topic_param, Config, Gate};

const HELP: &str =
    "floor_epoll: each event encoded once, one epoll loop, one write per socket per wake-up

  --send-buffer BYTES     SO_SNDBUF of each connection               [kernel's autotuning]
  (--workers is accepted; the event loop is one thread)
";

/// The listening socket's token.
const LISTENER: Token = Token(usize::MAX - 1);
/// The publisher's wake-up.
const WAKER: Token = Token(usize::MAX - 2);
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Bytes dropped from a log's front only once this many are dead (and at least half of it).
const COMPACT_AT: usize = 64 * 1024;

/// One topic's events of the ticks the loop has not taken yet.
#[derive(Debug, Default)]
struct Batch {
    /// The encoded events, back to back.
    bytes: Vec<u8>,
    /// Where each event starts in `bytes`.
    starts: Vec<usize>,
}

/// What the publisher hands to the loop.
#[derive(Debug)]
struct Handoff {
    /// One batch per topic.
    batches: Vec<Batch>,
    /// Topics with a non-empty batch, each once.
    dirty: Vec<usize>,
}

/// One topic, as the loop sees it.
#[derive(Debug, Default)]
struct Log {
    /// Encoded events; `bytes[0]` is the stream's byte `base`.
    bytes: Vec<u8>,
    /// Stream offset of `bytes[0]`.
    base: u64,
    /// Stream offsets of the events' starts, back to the one the slowest subscriber is in.
    starts: VecDeque<u64>,
    /// Keys of the subscribers.
    subscribers: Vec<usize>,
}

impl Log {
    /// The stream offset one past the last byte.
    fn end(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    /// The bytes from stream offset `pos` on.
    fn from(&self, pos: u64) -> &[u8] {
        let skip = usize::try_from(pos - self.base).unwrap_or(usize::MAX);
        self.bytes.get(skip..).unwrap_or(&[])
    }

    /// Events not completely written to a subscriber at `pos`.
    fn behind(&self, pos: u64) -> usize {
        if pos >= self.end() {
            return 0;
        }
        let started_before = self.starts.partition_point(|&start| start < pos);
        let whole = self.starts.len() - started_before;
        // The last event that started before `pos` ends where the next starts (or at the end):
        // if that is past `pos`, it is half written and counts too.
        let ends = self.starts.get(started_before).copied().unwrap_or(self.end());
        whole + usize::from(started_before > 0 && ends > pos)
    }

    /// Appends a tick's batch.
    fn append(&mut self, batch: &mut Batch) {
        let end = self.end();
        self.starts.extend(batch.starts.drain(..).map(|start| end + start as u64));
        self.bytes.extend_from_slice(&batch.bytes);
        batch.bytes.clear();
    }

    /// Forgets what lies before stream offset `keep` (no subscriber needs it).
    fn trim(&mut self, keep: u64) {
        let end = self.end();
        // An event goes once its last byte is before `keep`.
        while !self.starts.is_empty() && self.starts.get(1).copied().unwrap_or(end) <= keep {
            self.starts.pop_front();
        }
        let dead = usize::try_from(keep - self.base).unwrap_or(0).min(self.bytes.len());
        if dead == self.bytes.len() {
            self.bytes.clear();
            self.base = keep;
        } else if dead >= COMPACT_AT && dead * 2 >= self.bytes.len() {
            self.bytes.drain(..dead);
            self.base += dead as u64;
        }
    }
}

/// Where a connection is.
#[derive(Debug)]
enum Phase {
    /// Reading the request head.
    Head(Vec<u8>),
    /// Streaming a topic.
    Stream {
        /// Its topic.
        topic: usize,
        /// Its index in the topic's `subscribers`.
        slot: usize,
        /// Stream offset of the next byte to write.
        pos: u64,
        /// The last write would have blocked: wait for `EPOLLOUT`.
        blocked: bool,
    },
}

/// One accepted socket.
#[derive(Debug)]
struct Connection {
    /// The socket.
    socket: TcpStream,
    /// What it is doing.
    phase: Phase,
}

/// The loop's state.
#[derive(Debug)]
struct Floor {
    /// Connections by key (the token); `None` is a free key.
    connections: Vec<Option<Connection>>,
    /// Free keys.
    free: Vec<usize>,
    /// Topics.
    logs: Vec<Log>,
    /// Per-client bound, in events.
    capacity: usize,
    /// `SO_SNDBUF` of each connection, if fixed.
    send_buffer: Option<usize>,
}

/// What one flush did.
#[derive(Debug, PartialEq, Eq)]
enum Flushed {
    /// The connection is still open.
    Open,
    /// The socket failed or was closed by the peer.
    Failed,
}

/// Writes what `log` holds for a subscriber at `*pos`: one `write`, more only after a partial
/// one (until `WouldBlock`, which guarantees the next writable edge).
fn flush(socket: &mut TcpStream, log: &Log, pos: &mut u64, blocked: &mut bool) -> Flushed {
    while *pos < log.end() {
        match socket.write(log.from(*pos)) {
            Ok(0) => return Flushed::Failed,
            Ok(n) => *pos += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *blocked = true;
                return Flushed::Open;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Flushed::Failed,
        }
    }
    Flushed::Open
}

impl Floor {
    /// Closes connection `key`, taking it out of its topic.
    fn close(&mut self, key: usize) {
        let Some(connection) = self.connections.get_mut(key).and_then(Option::take) else {
            return;
        };
        self.free.push(key);
        if let Phase::Stream { topic, slot, .. } = connection.phase {
            let subscribers = &mut self.logs[topic].subscribers;
            subscribers.swap_remove(slot);
            if let Some(&moved) = subscribers.get(slot) {
                if let Some(Some(Connection { phase: Phase::Stream { slot: s, .. }, .. })) =
                    self.connections.get_mut(moved)
                {
                    *s = slot;
                }
            }
        }
        // Dropping the socket deregisters and closes it.
    }

    /// Accepts every pending connection; `false` when accepting failed for another reason
    /// than an empty queue (then the loop retries shortly).
    fn accept(&mut self, listener: &TcpListener, poll: &Poll) -> bool {
        loop {
            let mut socket = match listener.accept() {
                Ok((socket, _)) => socket,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            let _ = socket.set_nodelay(true);
            if let Some(bytes) = self.send_buffer {
                let _ = socket2::SockRef::from(&socket).set_send_buffer_size(bytes);
            }
            let key = self.free.pop().unwrap_or(self.connections.len());
            if poll.registry().register(&mut socket, Token(key), Interest::READABLE).is_err() {
                self.free.push(key);
                continue;
            }
            let connection = Connection { socket, phase: Phase::Head(Vec::with_capacity(512)) };
            if key == self.connections.len() {
                self.connections.push(Some(connection));
            } else {
                self.connections[key] = Some(connection);
            }
        }
    }

    /// The socket `key` is readable: the request head, or (streaming) a close or ignored bytes.
    fn readable(&mut self, key: usize, gate: &Gate, poll: &Poll) {
        let Some(Some(connection)) = self.connections.get_mut(key) else { return };
        let mut chunk = [0u8; 1024];
        let mut closed = false;
        loop {
            match connection.socket.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    if let Phase::Head(head) = &mut connection.phase {
                        if head.len() + n > MAX_HEAD {
                            closed = true;
                            break;
                        }
                        head.extend_from_slice(&chunk[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            return self.close(key);
        }
        let Phase::Head(head) = &connection.phase else { return };
        if !head.windows(4).any(|w| w == b"\r\n\r\n") {
            return;
        }
        let target = request_target(head);
        let path = target.as_deref().map(|t| t.split('?').next().unwrap_or(""));
        if path == Some("/start") {
            gate.open();
            let _ = connection.socket.write_all(&answer("200 OK", "started\n"));
            return self.close(key);
        }
        let topic = target
            .as_deref()
            .and_then(topic_param)
            .and_then(|t| t.strip_prefix('t'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < self.logs.len());
        let (Some("/events"), Some(topic)) = (path, topic) else {
            let _ = connection.socket.write_all(&answer("404 Not Found", "not found\n"));
            return self.close(key);
        };
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
                     connection: close\r\n\r\n";
        // A fresh socket's buffer takes the head whole; a partial write here means trouble.
        let registered = poll.registry().reregister(
            &mut connection.socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        );
        if !matches!(connection.socket.write(head), Ok(n) if n == head.len()) || registered.is_err()
        {
            return self.close(key);
        }
        let log = &mut self.logs[topic];
        connection.phase =
            Phase::Stream { topic, slot: log.subscribers.len(), pos: log.end(), blocked: false };
        log.subscribers.push(key);
    }

    /// Writes a tick's new bytes to every subscriber of `topic`, drops those too far behind,
    /// and trims the log to the slowest one left.
    fn fan_out(&mut self, topic: usize) {
        let mut keep = self.logs[topic].end();
        let mut i = 0;
        while i < self.logs[topic].subscribers.len() {
            let key = self.logs[topic].subscribers[i];
            let log = &self.logs[topic];
            let Some(Some(Connection { socket, phase: Phase::Stream { pos, blocked, .. } })) =
                self.connections.get_mut(key)
            else {
                // Not reachable: keys in a topic are streaming connections.
                self.logs[topic].subscribers.swap_remove(i);
                continue;
            };
            let failed = !*blocked && flush(socket, log, pos, blocked) == Flushed::Failed;
            if failed || log.behind(*pos) > self.capacity {
                // `close` moves the last subscriber into slot `i`: look at `i` again.
                self.close(key);
                continue;
            }
            keep = keep.min(*pos);
            i += 1;
        }
        self.logs[topic].trim(keep);
    }

    /// The socket `key` can take bytes again.
    fn writable(&mut self, key: usize) {
        let Some(Some(Connection { socket, phase: Phase::Stream { topic, pos, blocked, .. } })) =
            self.connections.get_mut(key)
        else {
            return;
        };
        *blocked = false;
        if flush(socket, &self.logs[*topic], pos, blocked) == Flushed::Failed {
            self.close(key);
        }
    }
}

/// The target of a `GET` request head.
fn request_target(head: &[u8]) -> Option<String> {
    let line = head.split(|&b| b == b'\r').next()?;
    let mut parts = std::str::from_utf8(line).ok()?.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) => Some(target.to_string()),
        _ => None,
    }
}

/// A short plain answer that closes the connection.
fn answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_args(HELP);
    config.arm_exit_after();
    let mut poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let gate = Arc::new(Gate::default());
    if config.autostart {
        gate.open();
    }
    let handoff = Arc::new(Mutex::new(Handoff {
        batches: (0..config.topics).map(|_| Batch::default()).collect(),
        dirty: Vec::new(),
    }));
    {
        let (config, gate, handoff, waker) =
            (config.clone(), gate.clone(), handoff.clone(), waker.clone());
        thread::Builder::new().name("publisher".into()).spawn(move || {
            publisher_ticks(
                &config,
                &gate,
                |topic, seq, data| {
                    let mut handoff = handoff.lock().unwrap_or_else(|e| e.into_inner());
                    let Handoff { batches, dirty } = &mut *handoff;
                    let batch = &mut batches[topic];
                    if batch.starts.is_empty() {
                        dirty.push(topic);
                    }
                    batch.starts.push(batch.bytes.len());
                    // Encoded once, straight into the bytes every subscriber will write.
                    let _ = write!(batch.bytes, "event: tick\nid: {seq}\ndata: {data}\n\n");
                    true
                },
                || {
                    let _ = waker.wake();
                },
            )
        })?;
    }

    let mut listener = TcpListener::bind(config.addr)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("floor_epoll: listening on {}", listener.local_addr()?);
    let mut floor = Floor {
        connections: Vec::new(),
        free: Vec::new(),
        logs: (0..config.topics).map(|_| Log::default()).collect(),
        capacity: config.capacity,
        send_buffer: config.send_buffer,
    };
    let mut events = Events::with_capacity(1024);
    let (mut ready, mut dirty) = (Vec::new(), Vec::new());
    let mut accept_failed = false;
    loop {
        let timeout = accept_failed.then(|| Duration::from_millis(10));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        let mut tick = false;
        if accept_failed {
            accept_failed = !floor.accept(&listener, &poll);
        }
        for event in &events {
            match event.token() {
                LISTENER => accept_failed = !floor.accept(&listener, &poll),
                WAKER => tick = true,
                Token(key) => {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        floor.readable(key, &gate, &poll);
                    }
                    if event.is_writable() {
                        ready.push(key);
                    }
                }
            }
        }
        if tick {
            {
                let mut handoff = handoff.lock().unwrap_or_else(|e| e.into_inner());
                let Handoff { batches, dirty: pending } = &mut *handoff;
                for &topic in pending.iter() {
                    floor.logs[topic].append(&mut batches[topic]);
                }
                std::mem::swap(pending, &mut dirty);
            }
            for &topic in &dirty {
                floor.fan_out(topic);
            }
            dirty.clear();
        }
        // Sockets that drained: what they still owe, now that the tick's bytes are in.
        for key in ready.drain(..) {
            floor.writable(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(events: &[&str]) -> Batch {
        let mut batch = Batch::default();
        for event in events {
            batch.starts.push(batch.bytes.len());
            batch.bytes.extend_from_slice(event.as_bytes());
        }
        batch
    }

    #[test]
    fn behind_counts_events_not_fully_written() {
        let mut log = Log::default();
        log.append(&mut batch(&["aaaa", "bb", "cccccc"]));
        assert_eq!(log.end(), 12);
        assert_eq!(log.behind(0), 3);
        assert_eq!(log.behind(1), 3, "inside the first event");
        assert_eq!(log.behind(4), 2);
        assert_eq!(log.behind(7), 1);
        assert_eq!(log.behind(12), 0);
        assert_eq!(log.from(6), b"cccccc");
    }

    #[test]
    fn trim_keeps_what_the_slowest_needs() {
        let mut log = Log::default();
        log.append(&mut batch(&["aaaa", "bb", "cccccc"]));
        log.trim(5);
        // The event at 4..6 is half written: its start stays, so it still counts.
        assert_eq!(log.behind(5), 2);
        assert_eq!(log.from(5), b"bcccccc");
        log.append(&mut batch(&["dd"]));
        assert_eq!(log.behind(5), 3);
        assert_eq!(log.from(12), b"dd");
        log.trim(log.end());
        assert_eq!(log.behind(log.end()), 0);
        assert!(log.bytes.is_empty());
        assert_eq!(log.base, 14);
        log.append(&mut batch(&["ee"]));
        assert_eq!(log.from(14), b"ee");
        assert_eq!(log.behind(14), 1);
    }
}
