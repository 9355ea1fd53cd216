//! A snapshot of many keys to many clients connecting at once: the time each client waits for
//! the snapshot's end frame, and the CPU the serving process spends on it.
//!
//! ```sh
//! cargo run --release --features server --example snapshot_load -- --keys 1000 --clients 1000
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
    let before = cpu_seconds()?;
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["client", &clients.to_string(), &addr.to_string(), &keys.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no child stdout")?).read_line(&mut line)?;
    let wall = started.elapsed();
    let cpu = cpu_seconds()? - before;
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

/// This process's user plus system CPU time, in seconds (Linux: `/proc/self/stat`).
fn cpu_seconds() -> Result<f64, Error> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').ok_or("no ) in /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).ok_or("stat field");
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; 100 ticks a
    // second on Linux (USER_HZ).
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}
