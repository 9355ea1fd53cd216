//! Churn, soak and the 10,000-client reconnect storm, checked against the process's own figures
//! in `/proc` (open fds, RSS, threads) as well as the hub's and the runtime's counts. The
//! process-wide figures are why these live in their own test binary, with one non-ignored test.
//!
//! The heavy runs are `#[ignore]`d and driven by `.ci/soak`:
//!
//! ```sh
//! cargo test --release --all-features --test server_churn -- --ignored --nocapture --test-threads=1
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ssehub::parse::Parser;
use ssehub::server::{listen, Server, DEFAULT_BACKLOG};
use ssehub::{Endpoint, Event, HistoryLimits, Hub, SlowPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(20);

/// What "the process's footprint" means here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Figures {
    subscribers: usize,
    topics: usize,
    connections: usize,
    tasks: usize,
    fds: usize,
    threads: usize,
    rss_kib: u64,
}

impl Figures {
    fn take(hub: &Hub, endpoint: &Endpoint) -> Figures {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let stats = hub.stats();
        Figures {
            subscribers: stats.subscribers,
            topics: stats.topics,
            connections: endpoint.connection_count(),
            tasks: tokio::runtime::Handle::current().metrics().num_alive_tasks(),
            fds: std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0),
            threads: field("Threads:") as usize,
            rss_kib: field("VmRSS:"),
        }
    }

    /// Everything but RSS equal; RSS within `rss_slack_kib` of the baseline.
    fn settled(&self, baseline: &Figures, rss_slack_kib: u64) -> bool {
        let counts =
            |f: &Figures| (f.subscribers, f.topics, f.connections, f.tasks, f.fds, f.threads);
        counts(self) == counts(baseline)
            && self.rss_kib <= baseline.rss_kib.saturating_add(rss_slack_kib)
    }
}

/// Opens a stream on `topic`, reads its head and its first event, then goes away: with RST when
/// `reset`, else with FIN. Returns `false` if the server closed the stream first (under this
/// load, the hub may drop a connection whose task fell behind as slow, which is its contract).
async fn visit(addr: SocketAddr, target: String, reset: bool) -> bool {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nhost: t\r\n\r\n");
    socket.write_all(request.as_bytes()).await.expect("request");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // The head, then at least one frame of the body.
    while !(seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.ends_with(b"\n\n")) {
        match tokio::time::timeout(WAIT, socket.read(&mut buf)).await.expect("in time") {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            Ok(_) | Err(_) if seen.starts_with(b"HTTP/1.1 200") => return false,
            other => {
                panic!("closed before the head ({other:?}): {}", String::from_utf8_lossy(&seen))
            }
        }
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&seen));
    if reset {
        socket.set_zero_linger().expect("linger");
    }
    true
}

/// A client that sends its request and never reads (small receive buffer, so it stalls fast).
async fn stall(addr: SocketAddr, target: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("buffer");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {target} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes())
        .await
        .expect("request");
    stream
}

/// The shape of one churn run.
struct Churn {
    rounds: usize,
    per_round: usize,
    /// Most clients connected at once (each costs two fds in this process).
    wave: usize,
    /// Clients per round that never read.
    stalled: usize,
    /// Allowed RSS growth over the warm-up baseline.
    rss_slack_kib: u64,
}

/// `rounds` rounds of `per_round` connects and disconnects (half FIN, half RST) plus `stalled`
/// clients that never read (on a topic getting 16 MB/s, so they are dropped as slow), while a
/// publisher publishes 4,000 1 KiB events a second to ten shared topics;
/// each client also has a topic of its own, so topics come and go. Returns the baseline after a
/// warm-up round and the figures once everything settled.
async fn churn(shape: Churn) -> (Figures, Figures, Duration, u64) {
    let hub = Hub::builder()
        .with_heartbeat(Some(Duration::from_millis(200)))
        // The stalled clients overflow it in a quarter of a second of the flood topic, while a
        // visit whose connection task is slow to be scheduled (2,000 clients and the server
        // share two worker threads) has over half a second of room. Larger queues make the
        // peak (and so the RSS the allocator keeps afterwards) grow with the wave.
        .with_capacity(256)
        .with_slow_policy(SlowPolicy::Disconnect)
        .build();
    let endpoint = Endpoint::new(hub.clone());
    // The shipped listener, whose default backlog holds a whole wave of connects at once (a
    // short queue overflows, and an overflowed accept queue resets connections the client
    // believes open).
    let listener = listen("127.0.0.1:0".parse().expect("addr"), DEFAULT_BACKLOG).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let server = Server::new(endpoint.clone()).with_write_timeout(Duration::from_millis(500));
    let serving = tokio::spawn(server.serve(listener));
    let running = Arc::new(AtomicBool::new(true));
    let publisher = {
        let (hub, running) = (hub.clone(), running.clone());
        tokio::spawn(async move {
            let payload = "p".repeat(1024);
            // The stalled clients' topic: heavy enough to fill their socket buffers quickly, so
            // the hub drops them as slow within a round.
            let flood = "f".repeat(16 * 1024);
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while running.load(Ordering::Relaxed) {
                tick.tick().await;
                let _ = hub.publish("flood", Event::new(flood.clone()));
                for _ in 0..4 {
                    n += 1;
                    let _ = hub.publish(&format!("t{}", n % 10), Event::new(payload.clone()));
                }
            }
            n
        })
    };
    let round = |index: usize| {
        let endpoint = endpoint.clone();
        let hub = hub.clone();
        let shape = (shape.per_round, shape.wave, shape.stalled);
        async move {
            let (per_round, wave, stalled) = shape;
            let mut stalls = Vec::with_capacity(stalled);
            for s in 0..stalled {
                stalls.push(stall(addr, &format!("/?topic=flood&topic=s{s}")).await);
            }
            let mut started = 0;
            let mut cut = 0;
            while started < per_round {
                let batch = wave.min(per_round - started);
                let visits: Vec<_> = (started..started + batch)
                    .map(|c| {
                        let target = format!("/?topic=t{}&topic=own{index}x{c}", c % 10);
                        tokio::spawn(visit(addr, target, c % 2 == 0))
                    })
                    .collect();
                for visit in visits {
                    let served = tokio::time::timeout(WAIT, visit)
                        .await
                        .expect("a visit in time")
                        .expect("visit");
                    cut += usize::from(!served);
                }
                started += batch;
            }
            drop(stalls);
            let deadline = Instant::now() + WAIT;
            while hub.subscriber_count() > 0 || endpoint.connection_count() > 0 {
                assert!(Instant::now() < deadline, "round {index} did not drain");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cut
        }
    };
    let mut cut = round(0).await;
    let baseline = settle(&hub, &endpoint, None, 0).await;
    let start = Instant::now();
    for index in 1..=shape.rounds {
        cut += round(index).await;
        if index % 10 == 0 {
            // RSS along the way: a leak grows with the rounds, allocator retention plateaus.
            println!("after round {index}: VmRSS {} KiB", Figures::take(&hub, &endpoint).rss_kib);
        }
    }
    let took = start.elapsed();
    let after = settle(&hub, &endpoint, Some(&baseline), shape.rss_slack_kib).await;
    running.store(false, Ordering::Relaxed);
    let published = publisher.await.expect("publisher");
    serving.abort();
    let stats = hub.stats();
    println!(
        "{} slow disconnects ({cut} visits cut before their first event), {} frames delivered",
        stats.slow_disconnects, stats.frames_delivered
    );
    (baseline, after, took, published)
}

/// Waits for the figures to settle (to `baseline` when given) and returns them.
async fn settle(
    hub: &Hub,
    endpoint: &Endpoint,
    baseline: Option<&Figures>,
    rss_slack_kib: u64,
) -> Figures {
    let deadline = Instant::now() + WAIT;
    let mut last = Figures::take(hub, endpoint);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Figures::take(hub, endpoint);
        let done = match baseline {
            Some(baseline) => now.settled(baseline, rss_slack_kib),
            // Stable between two looks, no subscriber left.
            None => now.subscribers == 0 && now.settled(&last, u64::MAX),
        };
        if done {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "figures did not return to the baseline:\n  baseline {baseline:?}\n  now      {now:?}"
        );
        last = now;
    }
}

fn report(name: &str, baseline: &Figures, after: &Figures, took: Duration, published: u64) {
    println!("{name}: {took:.1?}, {published} events published");
    println!("  {:<12} {:>10} {:>10}", "", "baseline", "after");
    let rows = [
        ("subscribers", baseline.subscribers as u64, after.subscribers as u64),
        ("topics", baseline.topics as u64, after.topics as u64),
        ("connections", baseline.connections as u64, after.connections as u64),
        ("tasks", baseline.tasks as u64, after.tasks as u64),
        ("open fds", baseline.fds as u64, after.fds as u64),
        ("threads", baseline.threads as u64, after.threads as u64),
        ("VmRSS KiB", baseline.rss_kib, after.rss_kib),
    ];
    for (what, before, now) in rows {
        println!("  {what:<12} {before:>10} {now:>10}");
    }
}

/// Churn, scaled for CI: 5 rounds of 400 connects and disconnects plus 20 stalled clients each,
/// while publishing; subscribers, topics, connections, tasks, fds and threads return exactly to
/// the warm-up baseline, RSS to within 16 MiB of it.
#[test]
fn churn_returns_to_the_baseline() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let shape =
        Churn { rounds: 5, per_round: 400, wave: 200, stalled: 20, rss_slack_kib: 16 * 1024 };
    let (baseline, after, took, published) = runtime.block_on(churn(shape));
    report("churn", &baseline, &after, took, published);
}

/// The soak of `docs/reliability.md`: 50 rounds of 5,000 connects and disconnects (2,000 at
/// once), 50 stalled clients a round, 4,000 events a second; prints baseline and after.
#[test]
#[ignore = "a few minutes; run by .ci/soak in release"]
fn churn_soak() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let shape =
        Churn { rounds: 50, per_round: 5_000, wave: 2_000, stalled: 50, rss_slack_kib: 32 * 1024 };
    let (baseline, after, took, published) = runtime.block_on(churn(shape));
    report("soak", &baseline, &after, took, published);
}

/// The environment variable that makes `storm_server` serve instead of returning.
const STORM_CHILD: &str = "SSEHUB_STORM_CHILD";
/// Events in history before the storm; clients resume from ids spread over them.
const STORM_BEFORE: u64 = 200;
/// Events published during the storm.
const STORM_LIVE: u64 = 50;

/// The server half of `storm_10k`, run in a child process (a 10,000-client storm needs 20,000
/// sockets, past one process's fd limit). Without `SSEHUB_STORM_CHILD` it does nothing.
///
/// It prints `ADDR <addr>`, then reads commands on stdin: `live` publishes the live events,
/// `end` publishes `end`; it exits at end of input.
#[test]
#[ignore = "the child process of storm_10k"]
fn storm_server() {
    if std::env::var_os(STORM_CHILD).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let hub = Hub::builder()
            .with_heartbeat(None)
            .with_history(Some(HistoryLimits::new().with_max_events(10_000)))
            .with_max_replay(1_000)
            .build();
        for n in 1..=STORM_BEFORE {
            hub.publish("t", Event::new(n.to_string()).with_id(n.to_string())).expect("publish");
        }
        // The listener the `ssehub` server binds, with its default backlog: the storm is what
        // a restarted server meets.
        let listener =
            listen("127.0.0.1:0".parse().expect("addr"), DEFAULT_BACKLOG).expect("listen");
        println!("ADDR {}", listener.local_addr().expect("addr"));
        tokio::spawn(Server::new(Endpoint::new(hub.clone())).serve(listener));
        let commands = tokio::task::spawn_blocking(move || {
            for line in std::io::stdin().lines() {
                match line.as_deref() {
                    Ok("live") => {
                        for n in STORM_BEFORE + 1..=STORM_BEFORE + STORM_LIVE {
                            let _ =
                                hub.publish("t", Event::new(n.to_string()).with_id(n.to_string()));
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    Ok("end") => {
                        let _ = hub.publish("t", Event::new("end"));
                    }
                    _ => return,
                }
            }
        });
        let _ = commands.await;
    });
}

/// The reconnect storm at full size: 10,000 clients reconnect within about a second, each with
/// its own `Last-Event-ID`, against a server in a child process, while 50 events are published;
/// every client gets every event after its id exactly once, in order.
#[test]
#[ignore = "10,000 clients; run by .ci/soak in release"]
fn storm_10k() {
    const CLIENTS: usize = 10_000;
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "storm_server", "--ignored", "--nocapture", "--test-threads=1"])
        .env(STORM_CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the server process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr: SocketAddr = lines
        .by_ref()
        .take(50)
        // The harness prints `test storm_server ... ` on the same line first.
        .find_map(|line| line.ok()?.split("ADDR ").nth(1)?.trim().parse().ok())
        .expect("the child's address");
    let mut commands = child.stdin.take().expect("stdin");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        let started = Instant::now();
        let total = STORM_BEFORE + STORM_LIVE;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let from = (c as u64) % STORM_BEFORE + 1;
                tokio::spawn(async move {
                    let mut socket = TcpStream::connect(addr).await.expect("connect");
                    let request = format!(
                        "GET /?topic=t HTTP/1.1\r\nhost: t\r\nlast-event-id: {from}\r\n\r\n"
                    );
                    socket.write_all(request.as_bytes()).await.expect("request");
                    let mut parser = Parser::new();
                    let mut events = Vec::new();
                    let mut buf = vec![0u8; 8192];
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = tokio::time::timeout(WAIT * 3, socket.read(&mut buf))
                            .await
                            .expect("a head in time")
                            .expect("read");
                        assert!(n > 0, "closed before the head");
                        head.extend_from_slice(&buf[..n]);
                    }
                    let at = head.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
                    assert!(head.starts_with(b"HTTP/1.1 200"));
                    parser.feed(&head[at..], &mut events).expect("parse");
                    let mut expected = from + 1;
                    let mut seen = 0;
                    loop {
                        for event in events.drain(..) {
                            if event.data == "end" {
                                assert_eq!(expected, total + 1, "client resumed after {from}");
                                return;
                            }
                            assert_eq!(event.data, expected.to_string(), "after {from}");
                            expected += 1;
                            seen += 1;
                        }
                        let n = tokio::time::timeout(WAIT * 3, socket.read(&mut buf))
                            .await
                            .expect("events in time")
                            .expect("read");
                        assert!(n > 0, "closed after {seen} events");
                        parser.feed(&buf[..n], &mut events).expect("parse");
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        writeln!(commands, "live").expect("command");
        let connected_in = started.elapsed();
        // Give every client time to be subscribed before the end marker.
        tokio::time::sleep(Duration::from_secs(1)).await;
        writeln!(commands, "end").expect("command");
        let mut failures = 0;
        for client in clients {
            if client.await.is_err() {
                failures += 1;
            }
        }
        (failures, connected_in, started.elapsed())
    });
    drop(commands);
    // Only the child started here is stopped, by its handle.
    let _ = child.kill();
    let _ = child.wait();
    let (failures, connected_in, took) = result;
    println!("storm: {CLIENTS} clients started in {connected_in:.1?}, all done in {took:.1?}");
    assert_eq!(failures, 0, "{failures} clients missed or repeated an event");
}
