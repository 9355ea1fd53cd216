//! User-space memory per idle SSE connection through each front, measured in one command.
//!
//! `cargo run --release --example idle_rss -- FRONT [CONNECTIONS]` (default 5,000; at most
//! 10,000). FRONT is one of:
//!
//! - `native`: the native listener (`ssehub::server::Server`);
//! - `fallback`: the native listener with an axum `Router` as its fallback (the embedding the
//!   README recommends);
//! - `hyper`: `ssehub::hyper::serve`;
//! - `axum`: `ssehub::axum::events` in a `Router` under `axum::serve`;
//! - `hyper-h1`: the endpoint through hyper's own `http1::Builder`, one setting at a time from
//!   the environment: `H1_WRITEV=0|1`, `H1_MAX_BUF=BYTES`, `H1_DATE=0|1`, `H1_HALF_CLOSE=0|1`
//!   (to measure what each costs).
//!
//! The server runs here; a child process (this binary again) opens the connections over
//! loopback, sends `GET /events?topic=idle`, reads each response head and holds them idle. The
//! server's `VmRSS` is read before and 2 s after the last head arrived, and the difference per
//! connection is printed (socket buffers are kernel memory and are not in it).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use ssehub::{Endpoint, Hub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let connections = match args.get(1) {
        Some(n) => n.parse::<usize>()?.min(10_000),
        None => 5_000,
    };
    match args.first().map(String::as_str) {
        Some("sizes") => {
            sizes();
            Ok(())
        }
        Some("client") => client(args.get(2).ok_or("client needs an address")?, connections),
        Some(front) => server(front, connections),
        None => Err("usage: idle_rss native|fallback|hyper|axum|hyper-h1 [CONNECTIONS]".into()),
    }
}

/// The server's `VmRSS` in KiB.
fn rss_kib() -> Result<u64, Error> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).ok_or("bad VmRSS")?.parse()?)
}

/// Serves `front`, has a child hold `connections` idle streams, prints the cost of each.
fn server(front: &str, connections: usize) -> Result<(), Error> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let hub = Hub::new();
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let endpoint = Endpoint::new(hub.clone());
    match front {
        "native" => {
            let server = ssehub::server::Server::new(endpoint).with_path("/events");
            runtime.spawn(server.serve(listener));
        }
        "fallback" => {
            let app = axum::Router::new().route("/health", get(|| async { "ok" }));
            let server =
                ssehub::server::Server::new(endpoint).with_path("/events").with_fallback(app);
            runtime.spawn(server.serve(listener));
        }
        "hyper" => {
            runtime.spawn(ssehub::hyper::serve(listener, endpoint));
        }
        "axum" => {
            let app = axum::Router::new().route("/events", ssehub::axum::events(endpoint));
            runtime.spawn(async move { axum::serve(listener, app).await });
        }
        "hyper-h1" => {
            runtime.spawn(serve_h1(listener, endpoint));
        }
        other => return Err(format!("unknown front {other}").into()),
    }
    // Let the runtime and allocator settle before the baseline.
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["client", &connections.to_string(), &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no child stdout")?).read_line(&mut line)?;
    let opened: usize = line.trim().parse().map_err(|_| format!("client said {line:?}"))?;
    std::thread::sleep(Duration::from_secs(2));
    let held = rss_kib()?;
    // Closing its stdin ends the child.
    drop(child.stdin.take());
    child.wait()?;
    let per_connection = (held.saturating_sub(before) * 1024) / opened.max(1) as u64;
    println!(
        "front={front} connections={opened} rss_before_kib={before} rss_held_kib={held} \
         bytes_per_connection={per_connection}"
    );
    drop(hub);
    Ok(())
}

/// The size of each connection future (what a task holds besides its buffers), with the task's
/// builder clone.
fn sizes() {
    let endpoint = Endpoint::new(Hub::new());
    let io = || TokioIo::new(tokio::io::duplex(64).0);
    let auto = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let h1 = hyper::server::conn::http1::Builder::new();
    let h2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    println!(
        "auto_connection={} auto_builder={} http1_connection={} http1_builder={} http2_connection={}",
        std::mem::size_of_val(&auto.serve_connection(io(), endpoint.clone())),
        std::mem::size_of_val(&auto),
        std::mem::size_of_val(&h1.serve_connection(io(), endpoint.clone())),
        std::mem::size_of_val(&h1),
        std::mem::size_of_val(&h2.serve_connection(io(), endpoint)),
    );
}

/// The endpoint through hyper's `http1::Builder` with the settings the environment names.
async fn serve_h1(listener: TcpListener, endpoint: Endpoint) {
    let flag = |name: &str| std::env::var(name).ok().map(|v| v == "1");
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new());
    if let Some(on) = flag("H1_WRITEV") {
        builder.writev(on);
    }
    if let Some(on) = flag("H1_DATE") {
        builder.auto_date_header(on);
    }
    if let Some(on) = flag("H1_HALF_CLOSE") {
        builder.half_close(on);
    }
    if let Some(max) = std::env::var("H1_MAX_BUF").ok().and_then(|v| v.parse().ok()) {
        builder.max_buf_size(max);
    }
    while let Ok((socket, _)) = listener.accept().await {
        let _ = socket.set_nodelay(true);
        let connection = builder.serve_connection(TokioIo::new(socket), endpoint.clone());
        tokio::spawn(connection);
    }
}

/// Opens `connections` streams to `addr`, prints how many answered 200, holds them until stdin
/// closes.
fn client(addr: &str, connections: usize) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut streams = Vec::with_capacity(connections);
        for _ in 0..connections {
            let mut stream = TcpStream::connect(addr).await?;
            stream
                .write_all(b"GET /events?topic=idle HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
                .await?;
            let mut head = [0; 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut head)).await??;
            if head[..n].starts_with(b"HTTP/1.1 200") {
                streams.push(stream);
            }
        }
        let mut out = std::io::stdout();
        writeln!(out, "{}", streams.len())?;
        out.flush()?;
        // Hold until the server closes our stdin.
        let mut rest = String::new();
        std::io::stdin().read_line(&mut rest)?;
        drop(streams);
        Ok(())
    })
}
