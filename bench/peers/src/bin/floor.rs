//! The floor: what fan-out costs with no engine at all. Each event is encoded once into a
//! `Bytes` and handed to every connection of its topic (a bounded tokio mpsc per connection,
//! `--capacity` events; a full queue disconnects the client, as ssehub's default policy does).
//! The request is parsed only as far as its first line; then the task owns the socket.
//!
//! `--mode write`: one `write_all` per event per socket. `--mode writev` (default): on each
//! wake-up, the connection's task takes everything queued (at most 64 frames or 64 KiB) and
//! writes it with one `write_vectored`.

use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use ssehub_bench_peers::{publisher, topic_param, Config, Gate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

const HELP: &str = "floor: each event encoded once and written to every socket, no engine

  --mode write|writev     one write per event, or one writev per wake-up [writev]
  --send-buffer BYTES     SO_SNDBUF of each connection               [kernel's autotuning]
";

/// Most frames, and about the most bytes, one vectored write takes.
const MAX_BATCH: usize = 64;
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// How each connection writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One `write_all` per event.
    Write,
    /// One `write_vectored` per wake-up.
    Writev,
}

/// One connection, as the publisher sees it.
#[derive(Debug)]
struct Subscriber {
    /// Its queue.
    queue: mpsc::Sender<Bytes>,
    /// Its task, aborted (closing the socket) when its queue is full.
    task: AbortHandle,
}

/// What connections share.
#[derive(Debug)]
struct State {
    /// Subscribers per topic.
    topics: Vec<Mutex<Vec<Subscriber>>>,
    /// Opened by `/start`.
    gate: Gate,
    /// Per-connection queue bound.
    capacity: usize,
    /// How connections write.
    mode: Mode,
    /// `SO_SNDBUF` of each connection, if fixed.
    send_buffer: Option<usize>,
}

/// Reads the request head (at most 8 KiB, within 10 s) and returns its target.
async fn request_target(socket: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut chunk).await.ok()?;
            if n == 0 || head.len() + n > 8 * 1024 {
                return None;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.ok()??;
    let line = head.split(|&b| b == b'\r').next()?;
    let mut parts = std::str::from_utf8(line).ok()?.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) => Some(target.to_string()),
        _ => None,
    }
}

/// Writes a short plain answer and closes.
async fn answer(mut socket: TcpStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

async fn connection(mut socket: TcpStream, state: Arc<State>, me: oneshot::Receiver<AbortHandle>) {
    let Some(target) = request_target(&mut socket).await else { return };
    let path = target.split('?').next().unwrap_or("");
    if path == "/start" {
        state.gate.open();
        return answer(socket, "200 OK", "started\n").await;
    }
    let topic = topic_param(&target)
        .and_then(|t| t.strip_prefix('t'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n < state.topics.len());
    let (true, Some(topic)) = (path == "/events", topic) else {
        return answer(socket, "404 Not Found", "not found\n").await;
    };
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
                connection: close\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let (queue, frames) = mpsc::channel(state.capacity);
    let Ok(task) = me.await else { return };
    state.topics[topic].lock().unwrap_or_else(|e| e.into_inner()).push(Subscriber { queue, task });
    let mode = state.mode;
    drop(state);
    let _ = match mode {
        Mode::Write => write_each(socket, frames).await,
        Mode::Writev => write_batches(socket, frames).await,
    };
}

/// One `write_all` per frame.
async fn write_each(mut socket: TcpStream, mut frames: mpsc::Receiver<Bytes>) -> io::Result<()> {
    while let Some(frame) = frames.recv().await {
        socket.write_all(&frame).await?;
    }
    Ok(())
}

/// Per wake-up, everything queued (capped) in one vectored write (more only if it was partial).
async fn write_batches(mut socket: TcpStream, mut frames: mpsc::Receiver<Bytes>) -> io::Result<()> {
    let mut batch: Vec<Bytes> = Vec::new();
    while let Some(first) = frames.recv().await {
        let mut bytes = first.len();
        batch.push(first);
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match frames.try_recv() {
                Ok(frame) => {
                    bytes += frame.len();
                    batch.push(frame);
                }
                Err(_) => break,
            }
        }
        write_all_vectored(&mut socket, &batch).await?;
        batch.clear();
    }
    Ok(())
}

/// Writes all of `frames` (at most `MAX_BATCH`) with as few vectored writes as the socket takes.
async fn write_all_vectored(socket: &mut TcpStream, frames: &[Bytes]) -> io::Result<()> {
    let (mut first, mut offset) = (0, 0);
    while first < frames.len() {
        let mut slices = [IoSlice::new(&[]); MAX_BATCH];
        let mut count = 0;
        for (slot, frame) in slices.iter_mut().zip(&frames[first..]) {
            *slot = IoSlice::new(if count == 0 { &frame[offset..] } else { frame });
            count += 1;
        }
        let mut written = socket.write_vectored(&slices[..count]).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let left = frames[first].len() - offset;
            if written >= left {
                written -= left;
                first += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_args(HELP);
    let mode = match config.mode.as_deref() {
        None | Some("writev") => Mode::Writev,
        Some("write") => Mode::Write,
        Some(other) => {
            eprintln!("floor: unknown --mode {other:?} (write or writev)");
            std::process::exit(2);
        }
    };
    let state = Arc::new(State {
        topics: (0..config.topics).map(|_| Mutex::new(Vec::new())).collect(),
        gate: Gate::default(),
        capacity: config.capacity,
        mode,
        send_buffer: config.send_buffer,
    });
    if config.autostart {
        state.gate.open();
    }
    {
        let (config, state) = (config.clone(), state.clone());
        thread::Builder::new().name("publisher".into()).spawn(move || {
            publisher(&config, &state.gate, |topic, seq, data| {
                // Encoded once; every subscriber gets a reference count.
                let frame = Bytes::from(format!("event: tick\nid: {seq}\ndata: {data}\n\n"));
                let mut subscribers = state.topics[topic].lock().unwrap_or_else(|e| e.into_inner());
                subscribers.retain(|s| match s.queue.try_send(frame.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        s.task.abort();
                        false
                    }
                    Err(TrySendError::Closed(_)) => false,
                });
                true
            })
        })?;
    }
    config.runtime()?.block_on(serve(&config, state))?;
    Ok(())
}

/// Accepts connections until the process ends.
async fn serve(config: &Config, state: Arc<State>) -> io::Result<()> {
    let listener = TcpListener::bind(config.addr).await?;
    eprintln!("floor ({:?}): listening on {}", state.mode, listener.local_addr()?);
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        if let Some(bytes) = state.send_buffer {
            let _ = socket2::SockRef::from(&socket).set_send_buffer_size(bytes);
        }
        let (tell, me) = oneshot::channel();
        let task = tokio::spawn(connection(socket, state.clone(), me));
        let _ = tell.send(task.abort_handle());
    }
}
