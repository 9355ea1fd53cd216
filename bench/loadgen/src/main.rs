//! `loadgen`: the load generator for servers of BENCH-CONTRACT section 1 (ssehub's
//! `bench_server` and the peers in `bench/peers`).
//!
//! It opens N raw HTTP/1.1 connections (client i on topic `t{i % T}`), waits until every one has
//! its `200` and headers, hits `GET /start`, warms up, then measures for a fixed window:
//! deliveries per second, latency from publish to receipt (the first token of each `data:` line
//! is the publish time in ns), gaps in each client's id sequence, disconnects. `--slow K` adds K
//! clients that never read; after the window they drain their sockets to see whether the server
//! dropped them. Given `--server-pid`, it reads the server's CPU time and memory from `/proc`,
//! and its own CPU time, so a saturated load generator is reported rather than mistaken for a
//! slow server. One JSON line per run on stdout; progress on stderr.
//!
//! `--publish-path PATH` feeds the server over HTTP instead (the hub server, nginx + nchan): no
//! `GET /start`; once every client is established, `--publish-connections` kept-alive connections
//! POST `--rate` events a second (see `publish.rs`), each event's data carrying its publish time
//! and its sequence number within its topic, which then counts gaps in place of the `id:`s.
//!
//! `--connect-only --hold S` is the connect storm: open N connections as fast as the connect
//! concurrency allows, report the time, hold them idle S seconds, report the server's RSS per
//! idle connection, close.

mod procfs;
mod publish;
mod stream;
mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::stream::{parse_head, Decoder, Frame, Head};
use crate::tls::Conn;

const HELP: &str = "\
loadgen: load generator for BENCH-CONTRACT section 1 servers

USAGE: loadgen [FLAGS]

  --addr HOST:PORT      server                                          [127.0.0.1:8090]
  --clients N           fast clients, client i on topic t{i % T}        [1000]
  --topics T            topics                                          [1]
  --rate R              the server's --rate (for the expected rate)     [0 = unknown]
  --payload P           the server's --payload (recorded)               [0 = unknown]
  --warmup S            seconds after /start before measuring           [2]
  --duration S          measured seconds                                [10]
  --slow K              extra clients that connect and never read       [0]
  --slow-rcvbuf BYTES   SO_RCVBUF of the slow clients, set before connect
                        (fixes their window, as on a real network; on
                        loopback an unread socket's buffer keeps growing) [0 = kernel's]
  --no-start            do not GET /start (server runs with --autostart)
  --events-path PATH    the stream's path, {topic} replaced by t{i % T}
                                                        [/events?topic={topic}]
  --publish-path PATH   feed the server over HTTP: POST to PATH ({topic}
                        replaced) at --rate events/s in total, topics
                        round-robin, instead of GET /start; data is
                        \"<ns> <seq> xxx..\" (--payload bytes), and gaps
                        are counted on <seq> (e.g. /publish?topic={topic})
  --publish-body FORM   json ({\"data\":..}, the hub server) or raw (nchan) [json]
  --publish-connections C
                        kept-alive publishing connections, one thread
                        each, event j on connection j % C; with C > 1 a
                        topic's events arrive in no defined order, so
                        reordering is reported but not a failure      [1]
  --publisher-nice N    nice value of the publishing threads            [0]
  --server-pid PID      read the server's CPU and memory from /proc
  --threads N           tokio worker threads                            [1]
  --concurrency C       connections being set up at once                [256]
  --read-buf BYTES      read buffer per client                          [16384]
  --setup-timeout S     longest wait for all clients to be established  [60]
  --wait-server S       longest wait for the server to accept           [15]
  --drain S             how long slow clients drain to detect a drop    [3]
  --connect-only        connect storm: connect, hold, close (no /start)
  --hold S              seconds to hold idle connections                [10]
  --tls-ca FILE         connect over TLS (ALPN http/1.1), trusting the PEM
                        certificate in FILE (the server's, self-signed)   [plain TCP]
  --accept-encoding C   ask for the stream in coding C (zstd, gzip): sent as
                        Accept-Encoding, the body decoded per connection  [identity]
  --label TEXT          server name, recorded                           []
  --scenario TEXT       scenario name, recorded                         []
  --round N             round number, recorded                          [0]
  --print-free-port     print a free TCP port on 127.0.0.1 and exit
  -h, --help            this text
";

/// The command line.
#[derive(Debug, Clone)]
struct Args {
    addr: SocketAddr,
    clients: usize,
    topics: usize,
    rate: f64,
    payload: usize,
    warmup: Duration,
    duration: Duration,
    slow: usize,
    slow_rcvbuf: u32,
    start: bool,
    server_pid: Option<u32>,
    threads: usize,
    concurrency: usize,
    read_buf: usize,
    setup_timeout: Duration,
    wait_server: Duration,
    drain: Duration,
    connect_only: bool,
    hold: Duration,
    label: String,
    accept_encoding: Option<String>,
    tls: Option<tls::Connector>,
    scenario: String,
    round: u64,
    events_path: String,
    publish_path: Option<String>,
    publish_body: publish::Body,
    publish_connections: usize,
    publisher_nice: i32,
}

/// What `main` should do.
enum Command {
    Run(Box<Args>),
    FreePort,
    Help,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut a = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 8090)),
        clients: 1000,
        topics: 1,
        rate: 0.0,
        payload: 0,
        warmup: Duration::from_secs(2),
        duration: Duration::from_secs(10),
        slow: 0,
        slow_rcvbuf: 0,
        start: true,
        server_pid: None,
        threads: 1,
        concurrency: 256,
        read_buf: 16 * 1024,
        setup_timeout: Duration::from_secs(60),
        wait_server: Duration::from_secs(15),
        drain: Duration::from_secs(3),
        connect_only: false,
        hold: Duration::from_secs(10),
        label: String::new(),
        accept_encoding: None,
        tls: None,
        scenario: String::new(),
        round: 0,
        events_path: "/events?topic={topic}".into(),
        publish_path: None,
        publish_body: publish::Body::Json,
        publish_connections: 1,
        publisher_nice: 0,
    };
    fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse().map_err(|_| format!("{flag}: cannot parse {v:?}"))
    }
    fn secs(flag: &str, v: Option<String>) -> Result<Duration, String> {
        let s: f64 = num(flag, v)?;
        Duration::try_from_secs_f64(s).map_err(|_| format!("{flag}: bad duration"))
    }
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--print-free-port" => return Ok(Command::FreePort),
            "--addr" => a.addr = num(&flag, it.next())?,
            "--clients" => a.clients = num(&flag, it.next())?,
            "--topics" => a.topics = num(&flag, it.next())?,
            "--rate" => a.rate = num(&flag, it.next())?,
            "--payload" => a.payload = num(&flag, it.next())?,
            "--warmup" => a.warmup = secs(&flag, it.next())?,
            "--duration" => a.duration = secs(&flag, it.next())?,
            "--slow" => a.slow = num(&flag, it.next())?,
            "--slow-rcvbuf" => a.slow_rcvbuf = num(&flag, it.next())?,
            "--no-start" => a.start = false,
            "--server-pid" => a.server_pid = Some(num(&flag, it.next())?),
            "--threads" => a.threads = num(&flag, it.next())?,
            "--concurrency" => a.concurrency = num(&flag, it.next())?,
            "--read-buf" => a.read_buf = num(&flag, it.next())?,
            "--setup-timeout" => a.setup_timeout = secs(&flag, it.next())?,
            "--wait-server" => a.wait_server = secs(&flag, it.next())?,
            "--drain" => a.drain = secs(&flag, it.next())?,
            "--connect-only" => a.connect_only = true,
            "--hold" => a.hold = secs(&flag, it.next())?,
            "--label" => a.label = it.next().ok_or("--label needs a value")?,
            "--accept-encoding" => {
                a.accept_encoding =
                    Some(it.next().ok_or("--accept-encoding needs a value")?.to_ascii_lowercase())
            }
            "--tls-ca" => {
                let file = it.next().ok_or("--tls-ca needs a file")?;
                a.tls = Some(tls::Connector::trusting(&file)?);
            }
            "--scenario" => a.scenario = it.next().ok_or("--scenario needs a value")?,
            "--round" => a.round = num(&flag, it.next())?,
            "--events-path" => a.events_path = it.next().ok_or("--events-path needs a value")?,
            "--publish-path" => {
                a.publish_path = Some(it.next().ok_or("--publish-path needs a value")?)
            }
            "--publish-body" => {
                a.publish_body = match it.next().as_deref() {
                    Some("json") => publish::Body::Json,
                    Some("raw") => publish::Body::Raw,
                    _ => return Err("--publish-body is json or raw".into()),
                }
            }
            "--publish-connections" => a.publish_connections = num(&flag, it.next())?,
            "--publisher-nice" => a.publisher_nice = num(&flag, it.next())?,
            other => return Err(format!("unknown flag {other:?} (see --help)")),
        }
    }
    if a.topics == 0 || a.threads == 0 || a.concurrency == 0 || a.read_buf < 1024 {
        return Err("--topics, --threads, --concurrency must be >= 1, --read-buf >= 1024".into());
    }
    if a.publish_path.is_some() {
        if a.rate <= 0.0 {
            return Err("--publish-path needs --rate".into());
        }
        if a.publish_connections == 0 {
            return Err("--publish-connections must be at least 1".into());
        }
        a.start = false;
    }
    if a.connect_only {
        a.start = false;
    }
    Ok(Command::Run(Box::new(a)))
}

/// Setting up, warming up: frames are checked for gaps but not counted.
const SETUP: u8 = 0;
/// Inside the measured window.
const MEASURING: u8 = 1;
/// After the window: clients stop.
const DONE: u8 = 2;
/// After the window, fed over HTTP: clients still read (and fill holes) but do not count.
const GRACE: u8 = 3;

static PHASE: AtomicU8 = AtomicU8::new(SETUP);

/// How long clients fed over HTTP keep reading after the window, so events still in flight fill
/// their holes rather than count as lost.
const PUBLISH_GRACE: Duration = Duration::from_secs(2);

/// Counters shared by every client task (updated once per read, not per frame).
#[derive(Default)]
struct Counters {
    established: AtomicU64,
    failed: AtomicU64,
    bad_responses: AtomicU64,
    deliveries: AtomicU64,
    bytes: AtomicU64,
    frames_total: AtomicU64,
    gaps: AtomicU64,
    gap_clients: AtomicU64,
    reordered: AtomicU64,
    no_stamp: AtomicU64,
    disconnects: AtomicU64,
    protocol_errors: AtomicU64,
    slow_dropped: AtomicU64,
    slow_open: AtomicU64,
}

static COUNTERS: std::sync::LazyLock<Counters> = std::sync::LazyLock::new(Counters::default);

/// One latency histogram per worker thread (uncontended locks), merged at the end.
static HISTOGRAMS: Mutex<Vec<Arc<Mutex<Histogram<u64>>>>> = Mutex::new(Vec::new());

/// Time from connect to the end of the response head, per established client, in µs.
static SETUP_TIMES: Mutex<Option<Histogram<u64>>> = Mutex::new(None);

fn record_setup(took: Duration) {
    let mut setup = SETUP_TIMES.lock().expect("not poisoned");
    let h = setup.get_or_insert_with(|| {
        Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
    });
    h.saturating_record(took.as_micros().max(1) as u64);
}

/// `{p50, p99, max}` of the setup times, in ms.
fn setup_summary() -> Value {
    let setup = SETUP_TIMES.lock().expect("not poisoned");
    match setup.as_ref() {
        Some(h) => json!({
            "p50": round3(h.value_at_quantile(0.5) as f64 / 1000.0),
            "p99": round3(h.value_at_quantile(0.99) as f64 / 1000.0),
            "max": round3(h.max() as f64 / 1000.0),
        }),
        None => Value::Null,
    }
}

thread_local! {
    static HISTOGRAM: Arc<Mutex<Histogram<u64>>> = {
        // 1 ns to 10 min, 3 significant digits.
        let h = Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid bounds");
        let h = Arc::new(Mutex::new(h));
        HISTOGRAMS.lock().expect("not poisoned").push(h.clone());
        h
    };
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Connects (with `SO_RCVBUF` set to `rcvbuf` first, unless 0), sends the request for `path`
/// and reads the response head; returns the stream, the head and a buffer holding what followed
/// the head.
async fn open(
    addr: SocketAddr,
    tls: Option<&tls::Connector>,
    path: &str,
    rcvbuf: u32,
    accept_encoding: Option<&str>,
) -> Result<(Conn, Head, Vec<u8>), String> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    if rcvbuf > 0 {
        // Before connect, so the window scale is chosen for it; it also stops the kernel's
        // receive-buffer autotuning for this socket.
        socket.set_recv_buffer_size(rcvbuf).map_err(|e| format!("SO_RCVBUF: {e}"))?;
    }
    let stream = socket.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut stream = tls::Connector::wrap(tls, stream).await?;
    let coding = accept_encoding.map(|c| format!("Accept-Encoding: {c}\r\n")).unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\n{coding}\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    stream.flush().await.map_err(|e| format!("write: {e}"))?;
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err("response head too long".into());
        }
        let n = stream.read(&mut buf[filled..]).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the response head".into());
        }
        filled += n;
        if let Some((head, start)) = parse_head(&buf[..filled])? {
            buf.copy_within(start..filled, 0);
            buf.truncate(filled - start);
            return Ok((stream, head, buf));
        }
    }
}

/// A client's id bookkeeping.
struct Sequence {
    /// Whether the sequence number in the data counts (an HTTP publisher wrote it), not the id.
    by_data: bool,
    /// The last id seen; 0 before the first.
    last: u64,
    /// Whether the first id must be 1 (the client connected before `/start`).
    from_one: bool,
    /// Events this client is missing now (counted in `Counters::gaps`).
    missing: i64,
}

impl Sequence {
    /// Checks one frame's id; returns the change in events missed (negative when a late event
    /// fills a hole) and whether it came out of order.
    fn check(&mut self, frame: &Frame) -> (i64, bool) {
        let id = if self.by_data { frame.seq } else { frame.id };
        let Some(id) = id else { return (0, false) };
        let expected = self.last + 1;
        if id < expected && self.by_data {
            // Several publishing connections put one topic's events in no defined order: a
            // sequence number below the highest seen fills the hole counted when it was passed.
            return (-1, true);
        }
        let (missed, reordered) = if id == expected {
            (0, false)
        } else if id > expected {
            if self.last > 0 || self.from_one {
                ((id - expected) as i64, false)
            } else {
                (0, false)
            }
        } else {
            (0, true)
        };
        self.last = id;
        (missed, reordered)
    }
}

/// A client that reads everything and measures.
async fn fast_client(i: usize, args: Arc<Args>, gate: Arc<Semaphore>) {
    let c = &*COUNTERS;
    let path = args.events_path.replace("{topic}", &format!("t{}", i % args.topics));
    let permit = gate.acquire().await;
    let begun = Instant::now();
    let opened = tokio::time::timeout(
        args.setup_timeout,
        open(args.addr, args.tls.as_ref(), &path, 0, args.accept_encoding.as_deref()),
    )
    .await;
    drop(permit);
    let (mut stream, head, leftover) = match opened {
        Ok(Ok((stream, head, leftover))) if head.status == 200 && head.event_stream => {
            record_setup(begun.elapsed());
            (stream, head, leftover)
        }
        Ok(Ok((_, head, _))) => {
            if c.bad_responses.fetch_add(1, Relaxed) == 0 {
                eprintln!("loadgen: client {i}: unexpected response {head:?}");
            }
            c.failed.fetch_add(1, Relaxed);
            return;
        }
        Ok(Err(e)) => {
            if c.failed.fetch_add(1, Relaxed) == 0 {
                eprintln!("loadgen: client {i}: {e}");
            }
            return;
        }
        Err(_) => {
            c.failed.fetch_add(1, Relaxed);
            return;
        }
    };
    let Ok(mut decoder) = Decoder::new(head.chunked, head.encoding.as_deref()) else {
        if c.bad_responses.fetch_add(1, Relaxed) == 0 {
            eprintln!("loadgen: client {i}: a content coding it cannot read: {head:?}");
        }
        c.failed.fetch_add(1, Relaxed);
        return;
    };
    c.established.fetch_add(1, Relaxed);
    // Fed over HTTP, every client connected before the first POST.
    let by_data = args.publish_path.is_some();
    let mut seq = Sequence { by_data, last: 0, from_one: args.start || by_data, missing: 0 };
    let mut buf = leftover;
    let mut n = buf.len();
    buf.resize(args.read_buf.max(n), 0);
    loop {
        let phase = PHASE.load(Relaxed);
        if phase == DONE {
            return;
        }
        if n > 0 {
            let now = now_ns();
            let measuring = phase == MEASURING;
            let (mut frames, mut missed, mut reordered, mut no_stamp) = (0u64, 0i64, 0u64, 0u64);
            let fed = HISTOGRAM.with(|h| {
                let mut h = h.lock().expect("not poisoned");
                decoder.feed(&buf[..n], &mut |frame| {
                    frames += 1;
                    let (m, r) = seq.check(&frame);
                    missed += m;
                    reordered += u64::from(r);
                    if measuring {
                        match frame.stamp {
                            Some(stamp) => h.saturating_record(now.saturating_sub(stamp).max(1)),
                            None => no_stamp += 1,
                        }
                    }
                })
            });
            c.frames_total.fetch_add(frames, Relaxed);
            if measuring {
                c.deliveries.fetch_add(frames, Relaxed);
                c.bytes.fetch_add(n as u64, Relaxed);
                if no_stamp > 0 {
                    c.no_stamp.fetch_add(no_stamp, Relaxed);
                }
            }
            if missed != 0 {
                let before = seq.missing;
                seq.missing += missed;
                if missed > 0 {
                    c.gaps.fetch_add(missed.unsigned_abs(), Relaxed);
                } else {
                    c.gaps.fetch_sub(missed.unsigned_abs(), Relaxed);
                }
                if before == 0 && seq.missing > 0 {
                    c.gap_clients.fetch_add(1, Relaxed);
                } else if before > 0 && seq.missing == 0 {
                    c.gap_clients.fetch_sub(1, Relaxed);
                }
            }
            if reordered > 0 {
                c.reordered.fetch_add(reordered, Relaxed);
            }
            if let Err(e) = fed {
                if c.protocol_errors.fetch_add(1, Relaxed) == 0 {
                    eprintln!("loadgen: client {i}: {e}");
                }
                break;
            }
            if decoder.ended {
                break;
            }
        }
        n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
    }
    if PHASE.load(Relaxed) != DONE {
        c.disconnects.fetch_add(1, Relaxed);
    }
}

/// A client that never reads until told to drain, then reports whether the server dropped it.
async fn slow_client(
    i: usize,
    args: Arc<Args>,
    gate: Arc<Semaphore>,
    mut drain: watch::Receiver<bool>,
) {
    let c = &*COUNTERS;
    let path = args.events_path.replace("{topic}", &format!("t{}", i % args.topics));
    let permit = gate.acquire().await;
    let opened = tokio::time::timeout(
        args.setup_timeout,
        open(
            args.addr,
            args.tls.as_ref(),
            &path,
            args.slow_rcvbuf,
            args.accept_encoding.as_deref(),
        ),
    )
    .await;
    drop(permit);
    let (mut stream, head, leftover) = match opened {
        Ok(Ok((stream, head, leftover))) if head.status == 200 => (stream, head, leftover),
        _ => {
            c.failed.fetch_add(1, Relaxed);
            return;
        }
    };
    c.established.fetch_add(1, Relaxed);
    if drain.wait_for(|d| *d).await.is_err() {
        return;
    }
    // The server's close (or reset, or the end of a chunked body) sits behind whatever it had
    // queued in the socket: read it all. A dropped client reaches the end; a live one keeps
    // receiving until the deadline.
    let deadline = tokio::time::Instant::now() + args.drain;
    let Ok(mut decoder) = Decoder::new(head.chunked, head.encoding.as_deref()) else {
        c.slow_dropped.fetch_add(1, Relaxed);
        return;
    };
    if decoder.feed(&leftover, &mut |_| {}).is_err() || decoder.ended {
        c.slow_dropped.fetch_add(1, Relaxed);
        return;
    }
    drop(leftover);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let ended = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => decoder.feed(&buf[..n], &mut |_| {}).is_err() || decoder.ended,
            Err(_) => {
                c.slow_open.fetch_add(1, Relaxed);
                return;
            }
        };
        if ended {
            c.slow_dropped.fetch_add(1, Relaxed);
            return;
        }
    }
}

/// `GET /start`; Ok when the server answered 200.
async fn start(addr: SocketAddr, tls: Option<&tls::Connector>) -> Result<(), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("/start: {e}"))?;
    let mut stream = tls::Connector::wrap(tls, stream).await?;
    let request = format!("GET /start HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("/start: {e}"))?;
    stream.flush().await.map_err(|e| format!("/start: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while parse_head(&buf)?.is_none() {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("/start: {e}"))?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Err("/start: no response head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    match parse_head(&buf)? {
        Some((head, _)) if head.status == 200 => Ok(()),
        Some((head, _)) => Err(format!("/start answered {}", head.status)),
        None => unreachable!("loop ends on a complete head"),
    }
}

/// Waits until the server accepts a connection (or its process is gone, or time is up).
async fn wait_for_server(args: &Args) -> Result<(), String> {
    let deadline = Instant::now() + args.wait_server;
    loop {
        if let Some(pid) = args.server_pid {
            if procfs::cpu(pid).is_none() {
                return Err(format!("server process {pid} is not running"));
            }
        }
        if TcpStream::connect(args.addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "server at {} did not accept within {:?}",
                args.addr, args.wait_server
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Spawns the clients and waits until each is established or failed; returns the handles, the
/// setup time and whether every client got through.
async fn connect_all(
    args: &Arc<Args>,
    drain: &watch::Receiver<bool>,
) -> (Vec<JoinHandle<()>>, Vec<JoinHandle<()>>, Duration) {
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let begun = Instant::now();
    let fast: Vec<_> = (0..args.clients)
        .map(|i| tokio::spawn(fast_client(i, args.clone(), gate.clone())))
        .collect();
    let slow: Vec<_> = (0..args.slow)
        .map(|i| tokio::spawn(slow_client(i, args.clone(), gate.clone(), drain.clone())))
        .collect();
    let total = (args.clients + args.slow) as u64;
    let deadline = begun + args.setup_timeout + Duration::from_secs(1);
    let mut last_report = Instant::now();
    loop {
        let (ok, failed) = (COUNTERS.established.load(Relaxed), COUNTERS.failed.load(Relaxed));
        if ok + failed >= total || Instant::now() >= deadline {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            eprintln!("loadgen: {ok}/{total} established, {failed} failed");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (fast, slow, begun.elapsed())
}

fn kb(memory: Option<procfs::Memory>) -> Value {
    memory.map_or(Value::Null, |m| json!(m.rss_kb))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The parameters every record carries.
fn parameters(args: &Args, kind: &str) -> serde_json::Map<String, Value> {
    let v = json!({
        "kind": kind,
        "label": args.label,
        "scenario": args.scenario,
        "round": args.round,
        "addr": args.addr.to_string(),
        "clients": args.clients,
        "slow": args.slow,
        "slow_rcvbuf": args.slow_rcvbuf,
        "topics": args.topics,
        "rate": args.rate,
        "payload": args.payload,
        "warmup_s": args.warmup.as_secs_f64(),
        "duration_s": args.duration.as_secs_f64(),
        "threads": args.threads,
        "accept_encoding": args.accept_encoding,
        "server_pid": args.server_pid,
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    });
    match v {
        Value::Object(map) => map,
        _ => unreachable!("an object literal"),
    }
}

/// The connect storm: connect, hold idle, close; RSS per idle connection.
async fn connect_storm(args: Arc<Args>) -> Result<Value, (String, Value)> {
    let mut out = parameters(&args, "connect");
    if let Err(e) = wait_for_server(&args).await {
        return Err((e, Value::Object(out)));
    }
    let pid = args.server_pid;
    let before = pid.and_then(procfs::memory);
    let cpu_before = pid.and_then(procfs::cpu);
    let (_, never) = watch::channel(false);
    let (fast, _, took) = connect_all(&args, &never).await;
    let cpu_after = pid.and_then(procfs::cpu);
    let connected = pid.and_then(procfs::memory);
    let established = COUNTERS.established.load(Relaxed);
    eprintln!("loadgen: {established} connections in {took:.2?}, holding {:?}", args.hold);
    tokio::time::sleep(args.hold).await;
    let held = pid.and_then(procfs::memory);
    PHASE.store(DONE, Relaxed);
    for handle in &fast {
        handle.abort();
    }
    for handle in fast {
        let _ = handle.await;
    }
    // Let the server notice the closes and free what it held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed = pid.and_then(procfs::memory);
    let per_conn = match (before, held) {
        (Some(b), Some(h)) if established > 0 => {
            json!(round3((h.rss_kb as f64 - b.rss_kb as f64) * 1024.0 / established as f64))
        }
        _ => Value::Null,
    };
    let c = &*COUNTERS;
    let extra = json!({
        "hold_s": args.hold.as_secs_f64(),
        "concurrency": args.concurrency,
        "established": established,
        "failed": c.failed.load(Relaxed),
        "bad_responses": c.bad_responses.load(Relaxed),
        "connect_s": round3(took.as_secs_f64()),
        "setup_ms": setup_summary(),
        "connects_per_s": round3(established as f64 / took.as_secs_f64().max(1e-9)),
        "server_cpu_connect_s": match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => json!(round3(b.saturating_sub(a).as_secs_f64())),
            _ => Value::Null,
        },
        "server_rss_before_kb": kb(before),
        "server_rss_connected_kb": kb(connected),
        "server_rss_held_kb": kb(held),
        "server_rss_closed_kb": kb(closed),
        "server_rss_peak_kb": closed.or(held).map_or(Value::Null, |m| json!(m.hwm_kb)),
        "rss_per_conn_bytes": per_conn,
        "server_alive_end": pid.map(|p| procfs::cpu(p).is_some()),
    });
    if let Value::Object(extra) = extra {
        out.extend(extra);
    }
    let total = (args.clients) as u64;
    let ok = established == total;
    out.insert("ok".into(), json!(ok));
    if ok {
        Ok(Value::Object(out))
    } else {
        Err((format!("{established}/{total} connections established"), Value::Object(out)))
    }
}

/// The measured run.
async fn measure(args: Arc<Args>) -> Result<Value, (String, Value)> {
    let mut out = parameters(&args, "run");
    if let Err(e) = wait_for_server(&args).await {
        return Err((e, Value::Object(out)));
    }
    let pid = args.server_pid;
    let mem_start = pid.and_then(procfs::memory);
    let (drain_tx, drain_rx) = watch::channel(false);
    let (fast, slow, took) = connect_all(&args, &drain_rx).await;
    let mem_connected = pid.and_then(procfs::memory);
    let c = &*COUNTERS;
    let total = (args.clients + args.slow) as u64;
    let established = c.established.load(Relaxed);
    eprintln!("loadgen: {established}/{total} established in {took:.2?}");
    let mut error = None;
    if established < total {
        error = Some(format!("{established}/{total} clients established"));
    } else if args.start {
        if let Err(e) = start(args.addr, args.tls.as_ref()).await {
            error = Some(e);
        }
    }
    let mut window = Duration::ZERO;
    let (mut server_cpu, mut own_cpu) = (None, Duration::ZERO);
    let mut mem_end = None;
    let mut publisher = None;
    if error.is_none() {
        if let Some(path) = &args.publish_path {
            let from = Instant::now() + args.warmup;
            publisher = Some(publish::Publisher::start(
                publish::Plan {
                    addr: args.addr,
                    path: path.clone(),
                    body: args.publish_body,
                    rate: args.rate,
                    topics: args.topics,
                    connections: args.publish_connections,
                    payload: args.payload,
                    nice: args.publisher_nice,
                },
                from,
                from + args.duration,
            ));
        }
        tokio::time::sleep(args.warmup).await;
        let cpu0 = pid.and_then(procfs::cpu);
        let own0 = procfs::own_cpu();
        let t0 = Instant::now();
        PHASE.store(MEASURING, Relaxed);
        tokio::time::sleep(args.duration).await;
        PHASE.store(if publisher.is_some() { GRACE } else { DONE }, Relaxed);
        window = t0.elapsed();
        let cpu1 = pid.and_then(procfs::cpu);
        own_cpu = procfs::own_cpu().saturating_sub(own0);
        server_cpu = cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a));
        mem_end = pid.and_then(procfs::memory);
        if publisher.is_some() {
            // The last POSTs of the window may still be on their way (on another connection
            // than a later one that arrived): a hole still open after this is a lost event or
            // one more than the grace late.
            tokio::time::sleep(PUBLISH_GRACE).await;
        }
    }
    PHASE.store(DONE, Relaxed);
    for handle in &fast {
        handle.abort();
    }
    for handle in fast {
        let _ = handle.await;
    }
    let http_publish = match publisher {
        Some(p) => tokio::task::spawn_blocking(move || p.finish()).await.unwrap_or(Value::Null),
        None => Value::Null,
    };
    let _ = drain_tx.send(true);
    let drain_wait = args.drain + Duration::from_secs(2);
    for handle in slow {
        let _ = tokio::time::timeout(drain_wait, handle).await;
    }

    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).expect("bounds");
    for h in HISTOGRAMS.lock().expect("not poisoned").iter() {
        let _ = latency.add(&*h.lock().expect("not poisoned"));
    }
    let us = |ns: u64| round3(ns as f64 / 1000.0);
    let deliveries = c.deliveries.load(Relaxed);
    let secs = window.as_secs_f64().max(1e-9);
    let per_s = deliveries as f64 / secs;
    let expected = args.rate * args.clients as f64 / args.topics as f64;
    let gaps = c.gaps.load(Relaxed);
    let disconnects = c.disconnects.load(Relaxed);
    let keep_up = if expected > 0.0 { Some(per_s / expected) } else { None };
    let kept_up = error.is_none()
        && keep_up.is_some_and(|k| k >= 0.95)
        && gaps == 0
        && disconnects == 0
        && (c.reordered.load(Relaxed) == 0 || args.publish_connections > 1);
    let own_util = own_cpu.as_secs_f64() / secs;
    let extra = json!({
        "established": established,
        "failed": c.failed.load(Relaxed),
        "bad_responses": c.bad_responses.load(Relaxed),
        "connect_s": round3(took.as_secs_f64()),
        "setup_ms": setup_summary(),
        "window_s": round3(window.as_secs_f64()),
        "deliveries": deliveries,
        "deliveries_per_s": round3(per_s),
        "expected_per_s": if expected > 0.0 { json!(round3(expected)) } else { Value::Null },
        "keep_up": keep_up.map(round3),
        "kept_up": kept_up,
        "rx_bytes_per_s": round3(c.bytes.load(Relaxed) as f64 / secs),
        "wire_bytes_per_delivery": if deliveries > 0 {
            json!(round3(c.bytes.load(Relaxed) as f64 / deliveries as f64))
        } else {
            Value::Null
        },
        "latency_us": {
            "count": latency.len(),
            "mean": round3(latency.mean() / 1000.0),
            "p50": us(latency.value_at_quantile(0.50)),
            "p90": us(latency.value_at_quantile(0.90)),
            "p99": us(latency.value_at_quantile(0.99)),
            "p999": us(latency.value_at_quantile(0.999)),
            "max": us(latency.max()),
        },
        "frames_total": c.frames_total.load(Relaxed),
        "gaps": gaps,
        "gap_clients": c.gap_clients.load(Relaxed),
        "reordered": c.reordered.load(Relaxed),
        "no_stamp": c.no_stamp.load(Relaxed),
        "disconnects": disconnects,
        "protocol_errors": c.protocol_errors.load(Relaxed),
        "slow_dropped": c.slow_dropped.load(Relaxed),
        "slow_open": c.slow_open.load(Relaxed),
        "server_cpu_s": server_cpu.map(|d| round3(d.as_secs_f64())),
        "server_cpu_util": server_cpu.map(|d| round3(d.as_secs_f64() / secs)),
        "server_cpu_ns_per_delivery": server_cpu
            .filter(|_| deliveries > 0)
            .map(|d| round3(d.as_secs_f64() * 1e9 / deliveries as f64)),
        "server_rss_start_kb": kb(mem_start),
        "server_rss_connected_kb": kb(mem_connected),
        "server_rss_end_kb": kb(mem_end),
        "server_rss_peak_kb": mem_end.or(mem_connected).map(|m| m.hwm_kb),
        "server_alive_end": pid.map(|p| procfs::cpu(p).is_some()),
        "loadgen_cpu_s": round3(own_cpu.as_secs_f64()),
        "loadgen_cpu_util": round3(own_util),
        "loadgen_saturated": own_util > 0.9,
        "http_publish": http_publish,
        "loadavg": procfs::loadavg(),
    });
    if let Value::Object(extra) = extra {
        out.extend(extra);
    }
    out.insert("ok".into(), json!(error.is_none()));
    match error {
        None => Ok(Value::Object(out)),
        Some(e) => Err((e, Value::Object(out))),
    }
}

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            print!("{HELP}");
            return;
        }
        Ok(Command::FreePort) => match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(l) => {
                println!("{}", l.local_addr().map(|a| a.port()).unwrap_or(0));
                return;
            }
            Err(e) => {
                eprintln!("loadgen: {e}");
                std::process::exit(1);
            }
        },
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadgen: runtime: {e}");
            std::process::exit(1);
        }
    };
    let args = Arc::new(*args);
    let result = runtime.block_on(async move {
        if args.connect_only {
            connect_storm(args).await
        } else {
            measure(args).await
        }
    });
    let code = match result {
        Ok(record) => {
            println!("{record}");
            0
        }
        Err((error, mut record)) => {
            record["error"] = json!(error);
            record["ok"] = json!(false);
            println!("{record}");
            eprintln!("loadgen: {error}");
            1
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: Option<u64>, seq: Option<u64>) -> Frame {
        Frame { id, stamp: Some(1), seq }
    }

    #[test]
    fn data_sequence_counts_holes_and_late_fills() {
        let mut s = Sequence { by_data: true, last: 0, from_one: true, missing: 0 };
        let steps: Vec<(i64, bool)> = [1, 3, 2, 6, 4, 5, 7]
            .into_iter()
            .map(|n| s.check(&frame(Some(999), Some(n))))
            .collect();
        let expected = vec![
            (0, false),
            (1, false),
            (-1, true),
            (2, false),
            (-1, true),
            (-1, true),
            (0, false),
        ];
        assert_eq!(steps, expected);
        assert_eq!(steps.iter().map(|s| s.0).sum::<i64>(), 0, "every hole filled");
        // A lost event stays counted.
        let mut s = Sequence { by_data: true, last: 0, from_one: true, missing: 0 };
        let lost: i64 = [1, 2, 4].into_iter().map(|n| s.check(&frame(None, Some(n))).0).sum();
        assert_eq!(lost, 1);
    }

    #[test]
    fn id_sequence_unchanged() {
        let mut s = Sequence { by_data: false, last: 0, from_one: true, missing: 0 };
        let steps: Vec<(i64, bool)> =
            [1, 3, 2].into_iter().map(|n| s.check(&frame(Some(n), Some(7)))).collect();
        assert_eq!(steps, vec![(0, false), (1, false), (0, true)]);
    }
}
