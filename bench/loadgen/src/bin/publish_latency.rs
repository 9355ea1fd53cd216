//! `publish_latency`: POST latency of the hub server (BENCH-CONTRACT section 2) while it fans
//! out to many subscribers (issue 18: p99 under 5 ms at 1,000 POSTs/s with 10,000 subscribers).
//!
//! It opens `--subscribers` raw HTTP/1.1 streams on one topic, or spread over `--topics` (each
//! read and discarded as fast as it comes, events counted), then publishes `--rate` events a second over `--connections`
//! kept-alive connections, each sending its requests one after the other on a fixed schedule
//! (request i of connection k is due at `(i * C + k) / rate` seconds). Latency is measured from
//! the request's due time to the end of its response, so a server that falls behind is charged
//! for the wait (no coordinated omission); the service time (from the actual send) is reported
//! too. One JSON line on stdout; progress on stderr. Run it in its own process: 10,000 clients
//! and the server together need more descriptors than one process may have.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

const HELP: &str = "\
publish_latency: POST /publish latency of the hub server under fan-out

USAGE: publish_latency [FLAGS]

  --addr HOST:PORT      the hub server                                  [127.0.0.1:8080]
  --subscribers N       streams on the topic, all reading               [10000]
  --topic NAME          the topic                                       [bench]
  --topics T            spread over T topics NAME0..NAME{T-1}: subscriber
                        i reads topic i mod T, POSTs go round-robin    [1]
  --rate R              POSTs per second, in total                      [1000]
  --connections C       kept-alive publishing connections               [4]
  --payload P           bytes of each event's data                      [64]
  --warmup S            seconds published before measuring              [3]
  --duration S          measured seconds                                [20]
  --publisher-nice N    nice value of the POSTing threads: they stand for
                        publishers on other machines, so the load
                        generator's own readers should not delay them    [0]
  --token TOKEN         `Authorization: Bearer TOKEN` on each POST      []
  --threads N           tokio worker threads                            [2]
  --concurrency N       streams being set up at once                    [256]
  --setup-timeout S     longest wait for every stream                   [120]
  -h, --help            this text
";

#[derive(Debug, Clone)]
struct Args {
    addr: SocketAddr,
    subscribers: usize,
    topic: String,
    topics: usize,
    rate: f64,
    connections: usize,
    payload: usize,
    warmup: Duration,
    duration: Duration,
    token: Option<String>,
    publisher_nice: i32,
    threads: usize,
    concurrency: usize,
    setup_timeout: Duration,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut a = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        subscribers: 10_000,
        topic: "bench".into(),
        topics: 1,
        rate: 1000.0,
        connections: 4,
        payload: 64,
        warmup: Duration::from_secs(3),
        duration: Duration::from_secs(20),
        token: None,
        publisher_nice: 0,
        threads: 2,
        concurrency: 256,
        setup_timeout: Duration::from_secs(120),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag}: bad value {value:?}");
        let secs = |v: &str| v.parse::<f64>().map(Duration::from_secs_f64);
        match flag.as_str() {
            "--addr" => a.addr = value.parse().map_err(|_| format!("{flag}: {value:?}"))?,
            "--subscribers" => a.subscribers = value.parse().map_err(bad)?,
            "--topic" => a.topic = value,
            "--topics" => a.topics = value.parse::<usize>().map_err(bad)?.max(1),
            "--rate" => a.rate = value.parse().map_err(|_| format!("{flag}: {value:?}"))?,
            "--connections" => a.connections = value.parse::<usize>().map_err(bad)?.max(1),
            "--payload" => a.payload = value.parse().map_err(bad)?,
            "--warmup" => a.warmup = secs(&value).map_err(|_| format!("{flag}: {value:?}"))?,
            "--duration" => a.duration = secs(&value).map_err(|_| format!("{flag}: {value:?}"))?,
            "--token" => a.token = Some(value),
            "--publisher-nice" => a.publisher_nice = value.parse().map_err(bad)?,
            "--threads" => a.threads = value.parse::<usize>().map_err(bad)?.max(1),
            "--concurrency" => a.concurrency = value.parse::<usize>().map_err(bad)?.max(1),
            "--setup-timeout" => {
                a.setup_timeout = secs(&value).map_err(|_| format!("{flag}: {value:?}"))?
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Some(a))
}

fn main() {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{HELP}");
            return;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{HELP}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(run(args)) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// Reads until the end of a response head; returns the head and what followed it.
async fn read_head(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(String, usize), String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            return Ok((head, end + 4));
        }
        let n = socket.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a response head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One subscriber: opens the stream, reports it ready, then reads and counts events (each ends
/// with a blank line) until told to stop.
async fn subscriber(
    args: Arc<Args>,
    topic: String,
    setup: Arc<Semaphore>,
    ready: tokio::sync::mpsc::Sender<Result<(), String>>,
    events: Arc<AtomicU64>,
    gone: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let permit = setup.acquire().await;
    let opened = async {
        let mut socket = TcpStream::connect(args.addr).await.map_err(|e| e.to_string())?;
        let request = format!("GET /events?topic={topic} HTTP/1.1\r\nhost: bench\r\n\r\n");
        socket.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let (head, _) = read_head(&mut socket, &mut buf).await?;
        if !head.starts_with("http/1.1 200") {
            return Err(format!("stream refused: {}", head.lines().next().unwrap_or("")));
        }
        Ok(socket)
    }
    .await;
    drop(permit);
    let mut socket = match opened {
        Ok(socket) => {
            let _ = ready.send(Ok(())).await;
            socket
        }
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return;
        }
    };
    drop(ready);
    let mut buf = vec![0u8; 4096];
    let mut last = 0u8;
    loop {
        tokio::select! {
            read = socket.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    gone.fetch_add(1, Relaxed);
                    return;
                }
                Ok(n) => {
                    let mut count = 0;
                    let mut previous = last;
                    for &b in &buf[..n] {
                        if b == b'\n' && previous == b'\n' {
                            count += 1;
                        }
                        previous = b;
                    }
                    last = previous;
                    events.fetch_add(count, Relaxed);
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// Reads one response on a blocking socket: `Ok(())` for a 200 with its whole body.
fn read_response(socket: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    use std::io::Read;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                return Err(format!("publish refused: {}", head.lines().next().unwrap_or("")));
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .ok_or("a response without content-length")?;
            if buf.len() >= end + 4 + length {
                buf.drain(..end + 4 + length);
                return Ok(());
            }
        }
        let n = socket.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed mid-response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One publishing connection on a thread of its own (blocking I/O, so neither this process's
/// runtime nor its timer wheel's millisecond ticks are in the measurement): its share of the
/// schedule, one request after the other.
fn publisher(
    args: Arc<Args>,
    index: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> Result<(Histogram<u64>, Histogram<u64>, u64), String> {
    if args.publisher_nice != 0 {
        // SAFETY: plain integer syscalls; on Linux PRIO_PROCESS with a thread id sets that
        // thread's nice value only.
        let status = unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, args.publisher_nice)
        };
        if status != 0 {
            return Err(format!("--publisher-nice: {}", std::io::Error::last_os_error()));
        }
    }
    use std::io::Write;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut service = latency.clone();
    let mut socket = std::net::TcpStream::connect(args.addr).map_err(|e| e.to_string())?;
    socket.set_nodelay(true).map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let data = "x".repeat(args.payload);
    let body = json!({ "data": data }).to_string();
    let auth = args.token.as_ref().map(|t| format!("authorization: Bearer {t}\r\n"));
    let auth = auth.unwrap_or_default();
    let requests: Vec<String> = (0..args.topics)
        .map(|t| {
            format!(
                "POST /publish?topic={} HTTP/1.1\r\nhost: bench\r\n\
                 content-type: application/json\r\n{auth}content-length: {}\r\n\r\n{body}",
                topic_name(&args, t),
                body.len()
            )
        })
        .collect();
    let interval = args.connections as f64 / args.rate;
    let offset = index as f64 / args.rate;
    let mut buf = Vec::with_capacity(4096);
    let mut sent = 0u64;
    for i in 0u64.. {
        let due = start + Duration::from_secs_f64(offset + i as f64 * interval);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let sent_at = Instant::now();
        let request = &requests[(i as usize * args.connections + index) % args.topics];
        socket.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        read_response(&mut socket, &mut buf)?;
        let done = Instant::now();
        sent += 1;
        if due >= measure_from {
            latency.saturating_record((done - due).as_micros().max(1) as u64);
            service.saturating_record((done - sent_at).as_micros().max(1) as u64);
        }
    }
    Ok((latency, service, sent))
}

/// The topic of subscriber (or POST) number `i`: the one topic, or `NAME{i mod T}`.
fn topic_name(args: &Args, i: usize) -> String {
    if args.topics == 1 {
        args.topic.clone()
    } else {
        format!("{}{}", args.topic, i % args.topics)
    }
}

fn summary(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": h.mean() / 1000.0,
    })
}

async fn run(args: Args) -> Result<String, String> {
    let args = Arc::new(args);
    let setup = Arc::new(Semaphore::new(args.concurrency));
    let events = Arc::new(AtomicU64::new(0));
    let gone = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop) = watch::channel(false);
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(1024);
    let began = Instant::now();
    for i in 0..args.subscribers {
        tokio::spawn(subscriber(
            args.clone(),
            topic_name(&args, i),
            setup.clone(),
            ready_tx.clone(),
            events.clone(),
            gone.clone(),
            stop.clone(),
        ));
    }
    drop(ready_tx);
    let deadline = Instant::now() + args.setup_timeout;
    let mut open = 0usize;
    while open < args.subscribers {
        let next = tokio::time::timeout_at(deadline.into(), ready.recv()).await;
        match next {
            Ok(Some(Ok(()))) => open += 1,
            Ok(Some(Err(e))) => return Err(format!("a subscriber failed: {e}")),
            Ok(None) => return Err("subscribers ended before all were open".into()),
            Err(_) => return Err(format!("only {open} streams open after the setup timeout")),
        }
    }
    eprintln!("{open} streams open in {:.1} s; publishing", began.elapsed().as_secs_f64());
    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let publishers: Vec<_> = (0..args.connections)
        .map(|k| {
            let args = args.clone();
            std::thread::spawn(move || publisher(args, k, start, measure_from, end))
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let events_at_measure = events.load(Relaxed);
    tokio::time::sleep_until(end.into()).await;
    let delivered = events.load(Relaxed) - events_at_measure;
    let results = tokio::task::spawn_blocking(move || {
        publishers
            .into_iter()
            .map(|p| p.join().map_err(|_| "a publisher panicked"))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| e.to_string())?;
    let alive = args.subscribers as u64 - gone.load(Relaxed);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut service = latency.clone();
    let mut sent = 0;
    for result in results {
        let (l, s, n) = result??;
        latency.add(l).expect("same bounds");
        service.add(s).expect("same bounds");
        sent += n;
    }
    let _ = stop_tx.send(true);
    let window = args.duration.as_secs_f64();
    Ok(json!({
        "subscribers": args.subscribers,
        "rate": args.rate,
        "topics": args.topics,
        "publisher_nice": args.publisher_nice,
        "connections": args.connections,
        "payload": args.payload,
        "duration_s": window,
        "posts_sent": sent,
        "latency_from_schedule": summary(&latency),
        "service_time": summary(&service),
        "subscribers_still_open": alive,
        "deliveries_per_s": delivered as f64 / window,
        "deliveries_expected_per_s": args.rate * args.subscribers as f64 / args.topics as f64,
    })
    .to_string())
}
