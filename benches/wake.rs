//! One wake per event: ssehub and `tokio::sync::broadcast` the way a server uses them.
//!
//! `fanout.rs` drains 64 events per poll, which hides what a server pays most of the time: at a
//! steady rate each connection's task is woken for one event, takes it and parks again. Here
//! `SUBSCRIBERS` tokio tasks (10,000 by default) each loop on `recv().await`; a publisher thread
//! outside the runtime publishes one ~128-byte event every `1 / RATE` seconds, slowly enough
//! that every task has parked again before the next one (the report prints the frames each
//! wake-up took, which should be 1.00). The same is run with `tokio::sync::broadcast` (a
//! `Bytes` per event, formatted once, each receiver `recv`s it), on a multi-thread runtime with
//! one and with two worker threads.
//!
//! Measured: the process's CPU time (user + system, from `/proc/self/stat`) from the first
//! measured publish until every task has its last event, divided by the deliveries. That
//! covers the publisher's work, the wake-ups, the polls and the workers parking between events:
//! the whole cost of a delivery. A warm-up of `WARMUP` events comes first and is not counted.
//!
//! Run: `cargo bench --bench wake` (environment: `WAKE_SUBSCRIBERS`, `WAKE_RATE` events/s,
//! `WAKE_EVENTS`, `WAKE_ROUNDS`; the table goes to standard output).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ssehub::{Event, Hub};
use tokio::sync::broadcast;

/// Bytes in each event's `data:` line.
const PAYLOAD: usize = 128;
/// The one topic.
const TOPIC: &str = "ticks";
/// Events before the measurement, so every task has parked at least once.
const WARMUP: usize = 20;
/// How long a run may take before the bench gives up (a lost event would hang it otherwise).
const DEADLINE: Duration = Duration::from_secs(120);

/// A bench setting from the environment, or its default.
fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The process's CPU time so far (user + system), from `/proc/self/stat`, in clock ticks of
/// 10 ms; runs last seconds, so the resolution is well under 1%.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime), counted from 1 with the pid and name as 1 and 2.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// What one run measured.
struct Measured {
    /// CPU time per delivery.
    cpu_per_delivery: Duration,
    /// Frames each wake-up (each `recv` that returned) took after the warm-up, on average
    /// (the first measured batch may hold the warm-up's last frames too).
    frames_per_wake: f64,
}

/// One subscriber task's loop: receives until it has `expected` frames; returns the number of
/// `recv`s that returned after the warm-up. Counts once into `warm` when past the warm-up.
type Task = Pin<Box<dyn Future<Output = usize> + Send>>;

/// A contender: builds its tasks and publishes.
trait Contender {
    /// The subscriber tasks (created, not spawned), each ending after `expected` frames.
    fn tasks(&mut self, n: usize, expected: usize, warm: &Arc<AtomicUsize>) -> Vec<Task>;
    /// Publishes event number `seq`.
    fn publish(&self, seq: usize);
}

/// ssehub: one hub, one topic, one `Subscription` per task.
struct Ssehub {
    /// The hub.
    hub: Hub,
    /// The event data.
    payload: String,
}

impl Contender for Ssehub {
    fn tasks(&mut self, n: usize, expected: usize, warm: &Arc<AtomicUsize>) -> Vec<Task> {
        (0..n)
            .map(|_| {
                let mut sub = self.hub.subscribe(TOPIC).expect("subscribe");
                let warm = warm.clone();
                Box::pin(async move {
                    let (mut frames, mut wakes): (usize, usize) = (0, 0);
                    while frames < expected {
                        let batch = sub.recv().await.expect("the stream stays open");
                        let before = frames;
                        frames += batch.len();
                        if before >= WARMUP {
                            wakes += 1;
                        } else if frames >= WARMUP {
                            warm.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    wakes
                }) as Task
            })
            .collect()
    }

    fn publish(&self, seq: usize) {
        let event = Event::new(self.payload.as_str()).with_event("tick").with_id(seq.to_string());
        self.hub.publish(TOPIC, event).expect("publish");
    }
}

/// `tokio::sync::broadcast`: the frame formatted once per event, one receiver per task.
struct Broadcast {
    /// The sender.
    tx: broadcast::Sender<Bytes>,
    /// The event data.
    payload: String,
}

impl Contender for Broadcast {
    fn tasks(&mut self, n: usize, expected: usize, warm: &Arc<AtomicUsize>) -> Vec<Task> {
        (0..n)
            .map(|_| {
                let mut rx = self.tx.subscribe();
                let warm = warm.clone();
                Box::pin(async move {
                    let mut frames: usize = 0;
                    while frames < expected {
                        let frame = rx.recv().await.expect("no lag at this rate");
                        std::hint::black_box(frame);
                        frames += 1;
                        if frames == WARMUP {
                            warm.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    frames - WARMUP
                }) as Task
            })
            .collect()
    }

    fn publish(&self, seq: usize) {
        let frame = format!("event: tick\nid: {seq}\ndata: {}\n\n", self.payload);
        self.tx.send(Bytes::from(frame)).expect("receivers are live");
    }
}

/// Publishes events `from..to` at `rate` per second, on an absolute schedule.
fn publish_steadily<C: Contender>(contender: &C, from: usize, to: usize, rate: usize) {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    for (i, seq) in (from..to).enumerate() {
        let due = start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        contender.publish(seq);
    }
}

/// One run of `contender` on a runtime with `threads` workers.
fn run<C: Contender + Send + Sync + 'static>(mut contender: C, threads: usize) -> Measured {
    let (n, rate, events) = (
        setting("WAKE_SUBSCRIBERS", 10_000),
        setting("WAKE_RATE", 100),
        setting("WAKE_EVENTS", 300),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    let warm = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = contender
        .tasks(n, WARMUP + events, &warm)
        .into_iter()
        .map(|task| runtime.spawn(task))
        .collect();
    let contender = Arc::new(contender);
    publish_steadily(&*contender, 0, WARMUP, rate);
    let started = Instant::now();
    while warm.load(Ordering::Relaxed) < n {
        assert!(started.elapsed() < DEADLINE, "warm-up did not complete");
        std::thread::sleep(Duration::from_millis(5));
    }
    let cpu_before = cpu_time();
    let publisher = {
        let contender = contender.clone();
        std::thread::spawn(move || publish_steadily(&*contender, WARMUP, WARMUP + events, rate))
    };
    let wakes: usize = runtime.block_on(async {
        let all = async {
            let mut wakes = 0;
            for handle in handles {
                wakes += handle.await.expect("task");
            }
            wakes
        };
        tokio::time::timeout(DEADLINE, all).await.expect("every task got every event")
    });
    let cpu = cpu_time() - cpu_before;
    publisher.join().expect("publisher");
    let deliveries = (n * events) as u32;
    Measured {
        cpu_per_delivery: cpu / deliveries,
        frames_per_wake: (n * events) as f64 / wakes as f64,
    }
}

fn main() {
    // For a profile of one side alone: `WAKE_ONLY=ssehub` or `WAKE_ONLY=broadcast`.
    match std::env::var("WAKE_ONLY").as_deref() {
        Ok("ssehub") => return only(|threads| run(Ssehub::new(), threads)),
        Ok("broadcast") => return only(|threads| run(Broadcast::new(), threads)),
        _ => {}
    }
    let rounds = setting("WAKE_ROUNDS", 3);
    println!(
        "one wake per event: {} subscriber tasks, {} events/s, {} events (after {WARMUP} warm-up), {rounds} rounds",
        setting("WAKE_SUBSCRIBERS", 10_000),
        setting("WAKE_RATE", 100),
        setting("WAKE_EVENTS", 300)
    );
    println!("| workers | round | ssehub CPU/delivery | broadcast CPU/delivery | ratio | ssehub frames/wake |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for threads in [1, 2] {
        for round in 1..=rounds {
            // Side by side in each round, alternating which goes first.
            let (ours, theirs) = if round % 2 == 1 {
                let ours = run(Ssehub::new(), threads);
                (ours, run(Broadcast::new(), threads))
            } else {
                let theirs = run(Broadcast::new(), threads);
                (run(Ssehub::new(), threads), theirs)
            };
            println!(
                "| {threads} | {round} | {:.0} ns | {:.0} ns | {:.2}x | {:.2} |",
                ours.cpu_per_delivery.as_nanos(),
                theirs.cpu_per_delivery.as_nanos(),
                ours.cpu_per_delivery.as_secs_f64() / theirs.cpu_per_delivery.as_secs_f64(),
                ours.frames_per_wake,
            );
        }
    }
}

/// Runs one contender once per worker count and prints its CPU per delivery.
fn only(run: impl Fn(usize) -> Measured) {
    for threads in [1, 2] {
        let measured = run(threads);
        println!(
            "{threads} workers: {:.0} ns CPU per delivery, {:.2} frames per wake",
            measured.cpu_per_delivery.as_nanos(),
            measured.frames_per_wake
        );
    }
}

impl Ssehub {
    /// A hub without heartbeats (they would add wake-ups of their own).
    fn new() -> Self {
        Ssehub { hub: Hub::builder().with_heartbeat(None).build(), payload: "x".repeat(PAYLOAD) }
    }
}

impl Broadcast {
    /// A channel with room for far more than the rate ever leaves unread.
    fn new() -> Self {
        Broadcast { tx: broadcast::channel(1024).0, payload: "x".repeat(PAYLOAD) }
    }
}
