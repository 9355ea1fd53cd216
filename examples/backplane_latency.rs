//! The backplanes' cost per event and cross-node latency, beside a single node's.
//!
//! ```sh
//! cargo run --release --features redis,nats --example backplane_latency -- --events 20000
//! ```
//!
//! It starts `redis-server` and `nats-server -js` itself on free loopback ports (temporary data
//! directories, killed at the end; a missing one is skipped), then for each setup:
//!
//! - **latency**: one event per millisecond published on node A, received by a subscriber on
//!   node B (on a single node: the same hub); the time from the publish call to the frame in
//!   B's subscription, p50 and p99.
//! - **cost**: as many events as fast as 32 concurrent publishers can, until node B has them
//!   all: wall time per event, and CPU time per event of this process (both nodes, publishers
//!   and subscriber) and of the broker.
//!
//! Numbers from one run on one machine; compare the ratios, not the absolute values.

use std::time::{Duration, Instant};

use ssehub::{Event, HistoryLimits, Hub, Subscription};

/// Publishers in the cost phase.
const PUBLISHERS: usize = 32;

#[tokio::main]
async fn main() {
    let mut events = 20_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--events", Some(n)) => events = n,
            _ => {
                eprintln!("usage: backplane_latency [--events N]");
                std::process::exit(2);
            }
        }
    }
    let latency_events = (events / 10).clamp(100, 5000);
    println!("{events} events for cost, {latency_events} (1 per ms) for latency\n");
    println!(
        "| setup | p50 latency | p99 latency | wall per event | node CPU per event | broker CPU per event |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    let base = Instant::now();

    let hub = hub();
    let single = Setup::Single(hub.clone());
    let latency = latency(&single, &hub, latency_events, base).await;
    let cost = cost(&single, &hub, events, base, None).await;
    row("single node", &latency, &cost);
    hub.shutdown();

    #[cfg(feature = "redis")]
    if let Some(broker) = Broker::start("redis-server") {
        let url = format!("redis://127.0.0.1:{}", broker.port);
        let config = || ssehub::backplane::Redis::new(&url).with_max_events(1000);
        run("Redis backplane", config, &broker, events, latency_events, base).await;
    }
    #[cfg(feature = "nats")]
    if let Some(broker) = Broker::start("nats-server") {
        let url = format!("nats://127.0.0.1:{}", broker.port);
        let config = || ssehub::backplane::Nats::new(&url).with_max_events(100_000);
        run("NATS backplane", config, &broker, events, latency_events, base).await;
    }
}

/// A hub as the nodes use it.
fn hub() -> Hub {
    Hub::builder()
        .with_history(Some(HistoryLimits::new()))
        .with_heartbeat(None)
        .with_capacity(1 << 20)
        .build()
}

/// Two nodes on `broker`: publish on A, receive on B.
#[cfg(any(feature = "redis", feature = "nats"))]
async fn run<C: Into<ssehub::backplane::BrokerConfig>>(
    name: &str,
    config: impl Fn() -> C,
    broker: &Broker,
    events: usize,
    latency_events: usize,
    base: Instant,
) {
    let (a, b) = (hub(), hub());
    let connect = |hub: Hub, config: C| async move {
        ssehub::backplane::Backplane::connect(&hub, config).await.expect("connect")
    };
    let node_a = connect(a.clone(), config()).await;
    let node_b = connect(b.clone(), config()).await;
    let setup = Setup::Shared(node_a.clone());
    let latency = latency(&setup, &b, latency_events, base).await;
    let cost = cost(&setup, &b, events, base, Some(broker.pid())).await;
    row(name, &latency, &cost);
    drop((node_a, node_b));
    a.shutdown();
    b.shutdown();
}

/// Where events are published.
#[derive(Clone)]
enum Setup {
    /// `Hub::publish` on the receiving hub.
    Single(Hub),
    /// `Backplane::publish` on node A.
    #[cfg(any(feature = "redis", feature = "nats"))]
    Shared(ssehub::backplane::Backplane),
}

impl Setup {
    /// Publishes one event whose data is the send time.
    async fn publish(&self, topic: &str, base: Instant) {
        let data = base.elapsed().as_nanos().to_string();
        match self {
            Setup::Single(hub) => drop(hub.publish(topic, Event::new(data)).expect("publish")),
            #[cfg(any(feature = "redis", feature = "nats"))]
            Setup::Shared(node) => {
                drop(node.publish(topic, Event::new(data)).await.expect("publish"))
            }
        }
    }
}

/// Reads `count` frames from `sub`; returns each one's latency (now minus the send time in its
/// data), in arrival order.
async fn receive(mut sub: Subscription, count: usize, base: Instant) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    while latencies.len() < count {
        let Ok(Some(batch)) = tokio::time::timeout(Duration::from_secs(30), sub.recv()).await
        else {
            panic!("only {} of {count} events arrived", latencies.len());
        };
        let now = base.elapsed();
        for frame in batch.frames() {
            let text = std::str::from_utf8(frame).unwrap_or("");
            let sent = text.split("data: ").nth(1).and_then(|d| d.trim().parse::<u128>().ok());
            if let Some(sent) = sent {
                let sent = Duration::from_nanos(u64::try_from(sent).unwrap_or(u64::MAX));
                latencies.push(now.saturating_sub(sent));
            }
        }
    }
    latencies
}

/// p50 and p99 of one event per millisecond.
async fn latency(
    setup: &Setup,
    receiver: &Hub,
    count: usize,
    base: Instant,
) -> (Duration, Duration) {
    let sub = receiver.subscribe("latency").expect("subscribe");
    let reader = tokio::spawn(receive(sub, count, base));
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for _ in 0..count {
        tick.tick().await;
        setup.publish("latency", base).await;
    }
    let mut latencies = reader.await.expect("reader");
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    (at(0.50), at(0.99))
}

/// Wall and CPU time per event at full speed.
struct Cost {
    /// Wall time per event.
    wall: Duration,
    /// This process's CPU time per event.
    node_cpu: Duration,
    /// The broker's CPU time per event.
    broker_cpu: Option<Duration>,
}

/// Publishes `count` events from 32 publishers until `receiver` has them all.
async fn cost(
    setup: &Setup,
    receiver: &Hub,
    count: usize,
    base: Instant,
    broker: Option<u32>,
) -> Cost {
    let sub = receiver.subscribe("cost").expect("subscribe");
    let reader = tokio::spawn(receive(sub, count, base));
    let (cpu0, broker0) = (cpu(None), broker.map(|pid| cpu(Some(pid))));
    let start = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let setup = setup.clone();
        let share = count / PUBLISHERS + usize::from(p < count % PUBLISHERS);
        publishers.push(tokio::spawn(async move {
            for _ in 0..share {
                setup.publish("cost", base).await;
            }
        }));
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    reader.await.expect("reader");
    let wall = start.elapsed();
    let per = |d: Duration| d / u32::try_from(count).unwrap_or(u32::MAX);
    Cost {
        wall: per(wall),
        node_cpu: per(cpu(None).saturating_sub(cpu0)),
        broker_cpu: broker.zip(broker0).map(|(pid, b0)| per(cpu(Some(pid)).saturating_sub(b0))),
    }
}

/// User plus system CPU time of a process (this one for `None`), from `/proc` (Linux; zero
/// elsewhere), in clock ticks of 10 ms.
fn cpu(pid: Option<u32>) -> Duration {
    let path = pid.map_or_else(|| "/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after its closing paren.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Prints one table row.
fn row(name: &str, (p50, p99): &(Duration, Duration), cost: &Cost) {
    let broker = cost.broker_cpu.map_or("-".to_string(), |d| format!("{:.1} µs", micros(d)));
    println!(
        "| {name} | {:.0} µs | {:.0} µs | {:.1} µs | {:.1} µs | {broker} |",
        micros(*p50),
        micros(*p99),
        micros(cost.wall),
        micros(cost.node_cpu),
    );
}

/// A duration in microseconds.
fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A broker process started here.
#[cfg(any(feature = "redis", feature = "nats"))]
struct Broker {
    /// The process.
    child: std::process::Child,
    /// Its port.
    port: u16,
    /// Its data directory.
    dir: std::path::PathBuf,
}

#[cfg(any(feature = "redis", feature = "nats"))]
impl Broker {
    /// Starts `binary` on a free loopback port, or says it is missing.
    fn start(binary: &str) -> Option<Broker> {
        use std::process::{Command, Stdio};
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let dir = std::env::temp_dir().join(format!("ssehub-bench-{binary}-{port}"));
        std::fs::create_dir_all(&dir).ok()?;
        let (port_s, dir_s) = (port.to_string(), dir.to_string_lossy().to_string());
        let args: Vec<&str> = match binary {
            "redis-server" => {
                vec!["--port", &port_s, "--bind", "127.0.0.1", "--dir", &dir_s, "--save", ""]
            }
            _ => vec!["-a", "127.0.0.1", "-p", &port_s, "-js", "-sd", &dir_s],
        };
        let child = match Command::new(binary)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(_) => {
                println!("({binary} is not installed: skipped)");
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        Some(Broker { child, port, dir })
    }

    /// The process id.
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

#[cfg(any(feature = "redis", feature = "nats"))]
impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
