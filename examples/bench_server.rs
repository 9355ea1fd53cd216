//! The benchmark server of `../shared/BENCH-CONTRACT.md`, section 1: a hub publishing timestamped
//! `tick` events at a fixed rate, served over real sockets for the load generator in
//! `bench/loadgen` and the scenario runner `bench/run.sh`.
//!
//! ```sh
//! cargo run --release --example bench_server -- --listener axum --rate 1000 --payload 128
//! cargo run --release --example bench_server -- --help   # every flag
//! ```
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /events?topic=NAME` | `200`, `text/event-stream`, HTTP/1.1: the stream of topic `NAME` |
//! | `GET /start` | `200`: starts the publisher (idempotent): connecting is not in the window |
//!
//! Every event is `event: tick`, `id:` its sequence number within its topic (1, 2, 3, ...), and
//! one `data:` line of exactly `--payload` bytes: the publish time in nanoseconds since the UNIX
//! epoch, one space, then padding. Events are published through [`Hub::publish`] only, by one
//! thread on an absolute 1 ms schedule (each tick publishes what the rate owes so far, so a late
//! tick catches up instead of drifting), round-robin over topics `t0` .. `t{T-1}`.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::{Buf, Bytes};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use ssehub::{Batch, Endpoint, Event, Hub};
use tokio::net::TcpListener;

const HELP: &str = "\
bench_server: the benchmark server of BENCH-CONTRACT section 1

USAGE: cargo run --release --example bench_server -- [FLAGS]

  --addr HOST:PORT        where it listens                           [127.0.0.1:8090]
  --rate R                events per second in total (fractions ok)  [1000]
  --topics T              topics t0 .. t{T-1}, published round-robin [1]
  --payload P             bytes in each data: line (at least 21)     [128]
  --autostart             publish from the start, not after GET /start
  --compress              answer Accept-Encoding: zstd / gzip with a stream compressed once
                          per stream class (identity otherwise)
  --listener KIND         native | axum | hyper                      [native]
  --workers N             tokio worker threads                       [1]
  --capacity N            per-client queue bound, in frames          [4096]
  --send-buffer BYTES     SO_SNDBUF of each stream (native listener only;
                          Server::with_send_buffer)                  [kernel's autotuning]
  --tls-cert FILE         serve HTTPS (native listener only; ALPN h2 and http/1.1)
  --tls-key FILE          with this PEM certificate chain and key
  --exit-after SECS       exit by itself after SECS (a safety net for scripts)
  -h, --help              this text
";

/// Which front serves `/events` (and `/start`, on the same port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// ssehub's own accept loop, `ssehub::server::Server` (feature `server`); `/start` goes to
    /// its fallback router.
    Native,
    /// `ssehub::axum::events` in an axum router.
    Axum,
    /// The hyper adapter (`Endpoint` as a hyper service).
    Hyper,
}

/// The command line.
#[derive(Debug, Clone)]
struct Config {
    /// Where to listen.
    addr: SocketAddr,
    /// Events per second, over all topics.
    rate: f64,
    /// Number of topics.
    topics: usize,
    /// Bytes in each `data:` line.
    payload: usize,
    /// Publish without waiting for `/start`.
    autostart: bool,
    /// The front.
    listener: Listener,
    /// Tokio worker threads.
    workers: usize,
    /// Per-subscriber queue bound.
    capacity: usize,
    /// `SO_SNDBUF` of each stream, if fixed (native listener only).
    send_buffer: Option<usize>,
    /// Exit after this long, if set.
    exit_after: Option<Duration>,
    /// The PEM certificate chain and key to serve HTTPS with (native listener only).
    tls: Option<(String, String)>,
    /// Answer `Accept-Encoding: zstd` / `gzip` with a stream compressed once per stream class.
    compress: bool,
}

/// The smallest payload: 19 digits of nanoseconds (good until 2286), a space, one byte of padding.
const MIN_PAYLOAD: usize = 21;

impl Config {
    /// Parses the flags; `Ok(None)` for `--help`.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
        let mut config = Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8090)),
            rate: 1000.0,
            topics: 1,
            payload: 128,
            autostart: false,
            listener: Listener::Native,
            workers: 1,
            capacity: 4096,
            send_buffer: None,
            exit_after: None,
            tls: None,
            compress: false,
        };
        let mut tls = (None, None);
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "-h" | "--help" => return Ok(None),
                "--addr" => config.addr = parse(&flag, &value()?)?,
                "--rate" => config.rate = parse(&flag, &value()?)?,
                "--topics" => config.topics = parse(&flag, &value()?)?,
                "--payload" => config.payload = parse(&flag, &value()?)?,
                "--autostart" => config.autostart = true,
                "--compress" => config.compress = true,
                "--workers" => config.workers = parse(&flag, &value()?)?,
                "--capacity" => config.capacity = parse(&flag, &value()?)?,
                "--send-buffer" => config.send_buffer = Some(parse(&flag, &value()?)?),
                "--tls-cert" => tls.0 = Some(value()?),
                "--tls-key" => tls.1 = Some(value()?),
                "--exit-after" => {
                    config.exit_after = Some(Duration::from_secs_f64(parse(&flag, &value()?)?))
                }
                "--listener" => {
                    config.listener = match value()?.as_str() {
                        "native" => Listener::Native,
                        "axum" => Listener::Axum,
                        "hyper" => Listener::Hyper,
                        other => return Err(format!("unknown listener {other:?}")),
                    }
                }
                other => return Err(format!("unknown flag {other:?} (see --help)")),
            }
        }
        if !(config.rate.is_finite() && config.rate > 0.0) {
            return Err("--rate must be positive".into());
        }
        if config.topics == 0 || config.workers == 0 || config.capacity == 0 {
            return Err("--topics, --workers and --capacity must be at least 1".into());
        }
        config.tls = match tls {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        if config.tls.is_some() && config.listener != Listener::Native {
            return Err("--tls-cert is a setting of the native listener".into());
        }
        if config.send_buffer.is_some() && config.listener != Listener::Native {
            return Err("--send-buffer is a setting of the native listener".into());
        }
        if config.payload < MIN_PAYLOAD {
            return Err(format!(
                "--payload must be at least {MIN_PAYLOAD} (timestamp, space, pad)"
            ));
        }
        Ok(Some(config))
    }
}

/// One flag's value.
fn parse<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("{flag}: cannot parse {value:?}"))
}

/// Opened once by `/start` (or `--autostart`); the publisher waits on it.
#[derive(Debug, Default)]
struct Gate {
    /// Whether it is open.
    open: Mutex<bool>,
    /// Wakes the publisher.
    opened: Condvar,
}

impl Gate {
    /// Opens the gate; later calls do nothing.
    fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }

    /// Waits until the gate opens or `deadline` passes; returns whether it opened.
    fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            // Wake at least once a second so a deadline is honoured without a second timer.
            let mut wait = Duration::from_secs(1);
            if let Some(deadline) = deadline {
                match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => wait = wait.min(left),
                    _ => return false,
                }
            }
            open = self.opened.wait_timeout(open, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

/// Publishes `config.rate` events per second through the public `Hub` API until the hub shuts
/// down or `deadline` passes.
fn publish(hub: &Hub, config: &Config, gate: &Gate, deadline: Option<Instant>) {
    if !gate.wait(deadline) {
        return;
    }
    let names: Vec<String> = (0..config.topics).map(|t| format!("t{t}")).collect();
    let mut seq = vec![0u64; config.topics];
    let padding = "x".repeat(config.payload);
    let per_ms = config.rate / 1000.0;
    let start = Instant::now();
    let (mut tick, mut published, mut next_topic) = (0u64, 0u64, 0usize);
    loop {
        tick += 1;
        // An absolute schedule: tick k is due at start + k ms whatever the earlier ticks cost.
        let due_at = start + Duration::from_millis(tick);
        if let Some(wait) = due_at.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        // What the rate owes by this tick; the fraction carries over to the next one.
        let owed = (per_ms * tick as f64) as u64;
        while published < owed {
            let topic = next_topic;
            next_topic = (next_topic + 1) % config.topics;
            seq[topic] += 1;
            let event = Event::new(data(config.payload, &padding))
                .with_event("tick")
                .with_id(seq[topic].to_string());
            if hub.publish(&names[topic], event).is_err() {
                return;
            }
            published += 1;
        }
    }
}

/// A `data:` value of exactly `payload` bytes: the time now in ns since the UNIX epoch, a space,
/// then padding.
fn data(payload: usize, padding: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut data = String::with_capacity(payload);
    data.push_str(&now.to_string());
    data.push(' ');
    data.push_str(&padding[..payload - data.len()]);
    data
}

fn main() {
    let config = match Config::parse(std::env::args().skip(1)) {
        Ok(Some(config)) => config,
        Ok(None) => {
            print!("{HELP}");
            return;
        }
        Err(message) => {
            eprintln!("bench_server: {message}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(config) {
        eprintln!("bench_server: {error}");
        std::process::exit(1);
    }
}

/// Builds the hub, starts the publisher and serves until killed (or `--exit-after`).
fn run(config: Config) -> Result<(), Box<dyn Error>> {
    let deadline = config.exit_after.map(|after| Instant::now() + after);
    if let Some(after) = config.exit_after {
        // A safety net for scripts: the process ends even if whoever started it is gone.
        thread::spawn(move || {
            thread::sleep(after);
            std::process::exit(0);
        });
    }
    // With `SSEHUB_BENCH_METRICS=1`, the `ssehub` server's recorder (the Prometheus exporter,
    // upkept every second), installed before the hub is built, as the server does: for an A/B
    // of the metrics' cost with `run.sh --extra-server`.
    if std::env::var_os("SSEHUB_BENCH_METRICS").is_some_and(|v| v == "1") {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Prefix("ssehub_".into()),
                &[0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0],
            )?
            .install_recorder()?;
        ssehub::describe_metrics();
        thread::spawn(move || loop {
            thread::sleep(Duration::from_secs(1));
            handle.run_upkeep();
        });
    }
    // No heartbeats (they would be extra frames in the measurement), the default slow policy
    // (Disconnect), and a bound that absorbs scheduling hiccups at high rates.
    let hub = Hub::builder().with_heartbeat(None).with_capacity(config.capacity).build();
    let gate = Arc::new(Gate::default());
    if config.autostart {
        gate.open();
    }
    let publisher = {
        let (hub, config, gate) = (hub.clone(), config.clone(), gate.clone());
        thread::Builder::new()
            .name("publisher".into())
            .spawn(move || publish(&hub, &config, &gate, deadline))?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(config.addr).await?;
        eprintln!(
            "bench_server: {:?} listener on {}, {} ev/s over {} topic(s), {} B payload{}",
            config.listener,
            listener.local_addr()?,
            config.rate,
            config.topics,
            config.payload,
            if config.autostart { ", publishing" } else { ", waiting for GET /start" },
        );
        let endpoint = Endpoint::new(hub.clone()).with_compression(config.compress);
        match config.listener {
            Listener::Native => serve_native(listener, endpoint, gate, &config).await?,
            Listener::Axum => serve_axum(listener, endpoint, gate).await?,
            Listener::Hyper => serve_hyper(listener, endpoint, gate).await,
        }
        Ok::<_, Box<dyn Error>>(())
    })?;
    hub.shutdown();
    let _ = publisher.join();
    Ok(())
}

/// The `/start` route, as an axum router.
fn start_route(gate: Arc<Gate>) -> Router {
    Router::new().route(
        "/start",
        get(move || async move {
            gate.open();
            "started\n"
        }),
    )
}

/// `/events` through ssehub's native listener, which owns each stream's socket; `/start` (any
/// other path) goes to its fallback router on the same port.
async fn serve_native(
    listener: TcpListener,
    endpoint: Endpoint,
    gate: Arc<Gate>,
    config: &Config,
) -> Result<(), Box<dyn Error>> {
    let mut server =
        ssehub::server::Server::new(endpoint).with_path("/events").with_fallback(start_route(gate));
    if let Some(bytes) = config.send_buffer {
        server = server.with_send_buffer(bytes);
    }
    if let Some((cert, key)) = &config.tls {
        server = server.with_tls(ssehub::server::TlsConfig::from_pem_files(cert, key)?);
    }
    server.serve(listener).await;
    Ok(())
}

/// `/events` through `ssehub::axum::events` beside the `/start` route, with `TCP_NODELAY` as
/// the other fronts set it.
async fn serve_axum(
    listener: TcpListener,
    endpoint: Endpoint,
    gate: Arc<Gate>,
) -> std::io::Result<()> {
    let app = start_route(gate).route("/events", ssehub::axum::events(endpoint));
    let listener = listener.tap_io(|socket| {
        let _ = socket.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

/// `/events` through the hyper adapter (the `Endpoint` as a hyper service), with the accept loop
/// and connection settings of `ssehub::hyper::serve`, plus the `/start` route that `serve`
/// cannot add (it hands every path to the endpoint).
async fn serve_hyper(listener: TcpListener, endpoint: Endpoint, gate: Arc<Gate>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let (builder, endpoint, gate) = (builder.clone(), endpoint.clone(), gate.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (endpoint, gate) = (endpoint.clone(), gate.clone());
                async move {
                    let text = |status, text: &'static str| {
                        let body = Full::new(Chunk::Text(Bytes::from_static(text.as_bytes())));
                        let mut response = Response::new(Either::Right(body));
                        *response.status_mut() = status;
                        response
                    };
                    let response = match request.uri().path() {
                        "/events" => endpoint.call(request).await?.map(|body| {
                            Either::Left(body.map_frame(to_chunk as fn(Frame<Batch>) -> _))
                        }),
                        "/start" => {
                            gate.open();
                            text(StatusCode::OK, "started\n")
                        }
                        _ => text(StatusCode::NOT_FOUND, "not found\n"),
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            // A connection error concerns that client alone.
            let _ = builder.serve_connection(TokioIo::new(socket), service).await;
        });
    }
}

/// The data of the hyper front's bodies: the adapter's batches (kept whole, so hyper still
/// writes each one with one vectored write) or a short text.
#[derive(Debug)]
enum Chunk {
    /// A batch of frames from the stream.
    Batch(Batch),
    /// A plain answer.
    Text(Bytes),
}

fn to_chunk(frame: Frame<Batch>) -> Frame<Chunk> {
    frame.map_data(Chunk::Batch)
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        match self {
            Chunk::Batch(batch) => batch.remaining(),
            Chunk::Text(text) => text.remaining(),
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Chunk::Batch(batch) => batch.chunk(),
            Chunk::Text(text) => text.chunk(),
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        match self {
            Chunk::Batch(batch) => batch.chunks_vectored(dst),
            Chunk::Text(text) => text.chunks_vectored(dst),
        }
    }

    fn advance(&mut self, count: usize) {
        match self {
            Chunk::Batch(batch) => batch.advance(count),
            Chunk::Text(text) => text.advance(count),
        }
    }
}
