//! A snapshot of many keys to many clients connecting at once: the time each client waits for
//! the snapshot's end frame, and the CPU the serving process spends on it.
//!
//! ```sh
//! cargo run --release --example snapshot_load -- --keys 1000 --clients 1000
//! cargo run --release --example snapshot_load -- publish-cost 2000000
//! ```
//!
//! This process builds a hub with keyed state, publishes `--keys` events (one per key, a
//! `--payload`-byte `data:` line each, publisher ids) to one topic and serves `/events` with the
//! native listener on a loopback port. A child process (this example again, `client` mode)
//! opens `--clients` connections at once, each `GET /events?topic=snap&snapshot=1`, and reads
//! until the `{"state":"end"}` frame, checking that it got every key. It prints the time from
//! the start of the storm to each client's end frame (p50, p99, max); this process prints its
//! own CPU time over the storm (the hub and the listener: connections accepted, snapshots
//! taken, written). Numbers from one run on one machine.
//!
//! `snapshot_load publish-cost [EVENTS]` instead measures what keeping state adds to a publish:
//! `EVENTS` publishes round-robin over `--keys` keys of one topic (history on, no subscriber),
//! with state off and on, in CPU nanoseconds (of the publishing thread) per publish.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ssehub::{Endpoint, Event, Hub, StateLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

const END: &[u8] = b"event: snapshot\ndata: {\"state\":\"end\"}\n\n";

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("client") {
        let clients = args.get(1).and_then(|n| n.parse().ok()).ok_or("client N ADDR KEYS")?;
        let addr = args.get(2).ok_or("client N ADDR KEYS")?.clone();
        let keys = args.get(3).and_then(|n| n.parse().ok()).ok_or("client N ADDR KEYS")?;
        return client(clients, &addr, keys);
    }
    if args.first().map(String::as_str) == Some("publish-cost") {
        let events = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
        publish_cost(events, 1000);
        return Ok(());
    }
    let (mut keys, mut clients, mut payload) = (1000usize, 1000usize, 100usize);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.parse().ok());
        match (flag.as_str(), value) {
            ("--keys", Some(n)) => keys = n,
            ("--clients", Some(n)) => clients = n,
            ("--payload", Some(n)) => payload = n,
            _ => {
                return Err("usage: snapshot_load [--keys N] [--clients N] [--payload BYTES]".into())
            }
        }
    }
    serve(keys, clients, payload)
}

/// The hub, its listener, and the child that storms it.
fn serve(keys: usize, clients: usize, payload: usize) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_state(Some(StateLimits::new().with_max_keys(keys).with_max_bytes(usize::MAX)))
        .build();
    let padding = "x".repeat(payload);
    for key in 0..keys {
        let event = Event::new(padding.clone()).with_id(key.to_string());
        hub.publish("snap", event.with_key(format!("k{key}")))?;
    }
    let local: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let listener = runtime.block_on(async { ssehub::server::listen(local, 4096) })?;
    let addr = listener.local_addr()?;
    let server = ssehub::server::Server::new(Endpoint::new(hub.clone())).with_path("/events");
    runtime.spawn(server.serve(listener));
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_seconds("/proc/self/stat")?;
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["client", &clients.to_string(), &addr.to_string(), &keys.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no child stdout")?).read_line(&mut line)?;
    let wall = started.elapsed();
    let cpu = cpu_seconds("/proc/self/stat")? - before;
    child.wait()?;
    print!("keys={keys} clients={clients} payload={payload} {}", line);
    println!(
        "server: cpu_seconds={cpu:.3} cpu_per_client_us={:.0} wall_ms={} snapshots={}",
        cpu * 1e6 / clients as f64,
        wall.as_millis(),
        hub.stats().snapshots,
    );
    Ok(())
}

/// CPU nanoseconds per publish (this thread's, so other load on the machine does not count)
/// over `keys` keys, state off then on (best of three runs each).
fn publish_cost(events: usize, keys: usize) {
    let names: Vec<String> = (0..keys).map(|k| format!("k{k}")).collect();
    for state in [None, Some(StateLimits::new().with_max_keys(keys))] {
        let best = (0..3)
            .map(|_| {
                let hub = Hub::builder()
                    .with_heartbeat(None)
                    .with_history(Some(ssehub::HistoryLimits::new()))
                    .with_state(state)
                    .build();
                let before = cpu_seconds("/proc/thread-self/stat").unwrap_or(0.0);
                for i in 0..events {
                    let event = Event::new("x".repeat(100)).with_key(names[i % keys].as_str());
                    let _ = hub.publish("t", event);
                }
                let after = cpu_seconds("/proc/thread-self/stat").unwrap_or(0.0);
                (after - before) * 1e9 / events as f64
            })
            .fold(f64::INFINITY, f64::min);
        println!("state={} ns_per_publish={best:.0}", if state.is_some() { "on" } else { "off" });
    }
}

/// Opens `clients` streams at once and waits for each one's end frame; prints the times.
fn client(clients: usize, addr: &str, keys: usize) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let addr: std::net::SocketAddr = addr.parse()?;
    let times = runtime.block_on(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..clients).map(|_| tokio::spawn(one(addr, keys, start))).collect();
        let mut times = Vec::with_capacity(clients);
        for task in tasks {
            times.push(task.await??);
        }
        Ok::<_, Error>(times)
    })?;
    let mut times = times;
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!("to_end_frame_ms p50={:.1} p99={:.1} max={:.1}", at(0.5), at(0.99), at(1.0));
    Ok(())
}

/// One client: connect, ask for the snapshot, read until its end frame; the time since `start`.
async fn one(addr: std::net::SocketAddr, keys: usize, start: Instant) -> Result<Duration, Error> {
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket.write_all(b"GET /events?topic=snap&snapshot=1 HTTP/1.1\r\nhost: l\r\n\r\n").await?;
    let mut got = Vec::with_capacity(keys * 128);
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = start + Duration::from_secs(60);
    while !got.ends_with(END) {
        let n = tokio::time::timeout_at(deadline.into(), socket.read(&mut buf)).await??;
        if n == 0 {
            return Err("the stream ended before its end frame".into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    let elapsed = start.elapsed();
    let ids = got.windows(4).filter(|w| w == b"id: ").count();
    if ids != keys {
        return Err(format!("{ids} ids in the snapshot, not {keys}").into());
    }
    Ok(elapsed)
}

/// User plus system CPU time, in seconds, of this process (`/proc/self/stat`) or this thread
/// (`/proc/thread-self/stat`); Linux only.
fn cpu_seconds(path: &str) -> Result<f64, Error> {
    let stat = std::fs::read_to_string(path)?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').ok_or("no ) in /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).ok_or("stat field");
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; 100 ticks a
    // second on Linux (USER_HZ).
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}
