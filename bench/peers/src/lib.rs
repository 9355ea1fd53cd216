//! What the peers share with ssehub's `examples/bench_server.rs`: the flags of BENCH-CONTRACT
//! section 1, the start gate, the event payload and the publisher's schedule. They are kept the
//! same as the example's on purpose, so that only the fan-out differs between servers.

use std::net::SocketAddr;
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The command line of a peer.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Events per second, over all topics.
    pub rate: f64,
    /// Number of topics (`t0` .. `t{T-1}`).
    pub topics: usize,
    /// Bytes in each `data:` line.
    pub payload: usize,
    /// Publish without waiting for `/start`.
    pub autostart: bool,
    /// Tokio worker threads.
    pub workers: usize,
    /// Per-client bound, in events (broadcast ring or per-connection queue).
    pub capacity: usize,
    /// Exit after this long, if set (a safety net for scripts).
    pub exit_after: Option<Duration>,
    /// `--mode`, for peers that have modes.
    pub mode: Option<String>,
    /// `--send-buffer`: `SO_SNDBUF` of each connection, for peers that set it.
    pub send_buffer: Option<usize>,
}

/// The smallest payload: 19 digits of nanoseconds, a space, one byte of padding.
pub const MIN_PAYLOAD: usize = 21;

/// The flags every peer takes.
pub const FLAGS: &str = "\
  --addr HOST:PORT        where it listens                           [127.0.0.1:8090]
  --rate R                events per second in total (fractions ok)  [1000]
  --topics T              topics t0 .. t{T-1}, published round-robin [1]
  --payload P             bytes in each data: line (at least 21)     [128]
  --autostart             publish from the start, not after GET /start
  --workers N             tokio worker threads                       [1]
  --capacity N            per-client bound, in events                [4096]
  --exit-after SECS       exit by itself after SECS
  -h, --help              this text
";

impl Config {
    /// Parses the flags; `Ok(None)` for `--help`.
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
        let mut config = Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8090)),
            rate: 1000.0,
            topics: 1,
            payload: 128,
            autostart: false,
            workers: 1,
            capacity: 4096,
            exit_after: None,
            mode: None,
            send_buffer: None,
        };
        fn parse<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, String> {
            let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
            value.parse().map_err(|_| format!("{flag}: cannot parse {value:?}"))
        }
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "-h" | "--help" => return Ok(None),
                "--addr" => config.addr = parse(&flag, args.next())?,
                "--rate" => config.rate = parse(&flag, args.next())?,
                "--topics" => config.topics = parse(&flag, args.next())?,
                "--payload" => config.payload = parse(&flag, args.next())?,
                "--autostart" => config.autostart = true,
                "--workers" => config.workers = parse(&flag, args.next())?,
                "--capacity" => config.capacity = parse(&flag, args.next())?,
                "--exit-after" => {
                    let secs: f64 = parse(&flag, args.next())?;
                    config.exit_after = Some(
                        Duration::try_from_secs_f64(secs).map_err(|_| "--exit-after: bad value")?,
                    );
                }
                "--mode" => config.mode = Some(parse(&flag, args.next())?),
                "--send-buffer" => config.send_buffer = Some(parse(&flag, args.next())?),
                other => return Err(format!("unknown flag {other:?} (see --help)")),
            }
        }
        if !(config.rate.is_finite() && config.rate > 0.0) {
            return Err("--rate must be positive".into());
        }
        if config.topics == 0 || config.workers == 0 || config.capacity == 0 {
            return Err("--topics, --workers and --capacity must be at least 1".into());
        }
        if config.payload < MIN_PAYLOAD {
            return Err(format!("--payload must be at least {MIN_PAYLOAD}"));
        }
        Ok(Some(config))
    }

    /// Parses the process's arguments, printing `help` or an error and exiting when needed.
    pub fn from_args(help: &str) -> Config {
        match Config::parse(std::env::args().skip(1)) {
            Ok(Some(config)) => config,
            Ok(None) => {
                print!("{help}{FLAGS}");
                std::process::exit(0);
            }
            Err(message) => {
                eprintln!("{message}");
                std::process::exit(2);
            }
        }
    }

    /// The topic names.
    pub fn topic_names(&self) -> Vec<String> {
        (0..self.topics).map(|t| format!("t{t}")).collect()
    }

    /// Arms `--exit-after`: a thread that ends the process once it has passed.
    pub fn arm_exit_after(&self) {
        if let Some(after) = self.exit_after {
            thread::spawn(move || {
                thread::sleep(after);
                std::process::exit(0);
            });
        }
    }

    /// The tokio runtime of `--workers` threads; also arms `--exit-after`.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        self.arm_exit_after();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.workers)
            .enable_all()
            .build()
    }
}

/// Opened once by `/start` (or `--autostart`); the publisher waits on it.
#[derive(Debug, Default)]
pub struct Gate {
    /// Whether it is open.
    open: Mutex<bool>,
    /// Wakes the publisher.
    opened: Condvar,
}

impl Gate {
    /// Opens the gate; later calls do nothing.
    pub fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }

    /// Waits until the gate opens or `deadline` passes; returns whether it opened.
    pub fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
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

/// The publisher of `examples/bench_server.rs`: once the gate opens, on an absolute 1 ms
/// schedule, each tick publishes what `config.rate` owes so far, round-robin over topics, with
/// per-topic sequence numbers from 1. `publish(topic, seq, data)` returns `false` to stop.
pub fn publisher(config: &Config, gate: &Gate, publish: impl FnMut(usize, u64, String) -> bool) {
    publisher_ticks(config, gate, publish, || {});
}

/// [`publisher`], calling `tick_done` after each tick that published at least one event (the
/// same schedule, so a peer can hand a tick's events over at once).
pub fn publisher_ticks(
    config: &Config,
    gate: &Gate,
    mut publish: impl FnMut(usize, u64, String) -> bool,
    mut tick_done: impl FnMut(),
) {
    let deadline = config.exit_after.map(|after| Instant::now() + after);
    if !gate.wait(deadline) {
        return;
    }
    let mut seq = vec![0u64; config.topics];
    let padding = "x".repeat(config.payload);
    let per_ms = config.rate / 1000.0;
    let start = Instant::now();
    let (mut tick, mut published, mut next_topic) = (0u64, 0u64, 0usize);
    loop {
        tick += 1;
        let due_at = start + Duration::from_millis(tick);
        if let Some(wait) = due_at.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        let owed = (per_ms * tick as f64) as u64;
        if published >= owed {
            continue;
        }
        while published < owed {
            let topic = next_topic;
            next_topic = (next_topic + 1) % config.topics;
            seq[topic] += 1;
            if !publish(topic, seq[topic], data(config.payload, &padding)) {
                return;
            }
            published += 1;
        }
        tick_done();
    }
}

/// A `data:` value of exactly `payload` bytes: the time now in ns since the UNIX epoch, a space,
/// then padding.
pub fn data(payload: usize, padding: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut data = String::with_capacity(payload);
    data.push_str(&now.to_string());
    data.push(' ');
    data.push_str(&padding[..payload - data.len()]);
    data
}

/// The query parameter `topic` of a request target, if any (no percent-decoding: topic names
/// here are `t0`, `t1`, ...).
pub fn topic_param(target: &str) -> Option<&str> {
    let query = target.split_once('?')?.1;
    query.split('&').find_map(|pair| pair.strip_prefix("topic="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_exact() {
        let padding = "x".repeat(128);
        let d = data(128, &padding);
        assert_eq!(d.len(), 128);
        let (stamp, rest) = d.split_once(' ').expect("a space");
        assert!(stamp.parse::<u64>().is_ok());
        assert!(rest.bytes().all(|b| b == b'x'));
    }

    #[test]
    fn topics_from_targets() {
        assert_eq!(topic_param("/events?topic=t3"), Some("t3"));
        assert_eq!(topic_param("/events?x=1&topic=t0"), Some("t0"));
        assert_eq!(topic_param("/events"), None);
    }
}
