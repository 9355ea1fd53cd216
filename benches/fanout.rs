//! Fan-out: the same delivery work through ssehub, `tokio::sync::broadcast` and a hand-rolled hub.
//!
//! One round publishes `K` events of a ~128-byte payload to one topic and has each of `N`
//! receivers take every one of them, so a round is `N * K` deliveries and criterion reports the
//! time per delivery (`Throughput::Elements(N * K)`). Each round's delivery count is asserted
//! once before measuring, so the timed loop runs code known to deliver everything.
//!
//! - `ssehub`: `Hub::publish` (validate, normalise, encode once, push a refcount per
//!   subscriber), each subscription drains with `try_recv` until `Ok(None)`.
//! - `tokio_broadcast`: the frame formatted once per publish into `Bytes` (broadcast's best
//!   case), each receiver `try_recv`s `K` times.
//! - `handrolled`: a `Mutex<HashMap<id, mpsc::Sender<String>>>` hub that formats the frame per
//!   client and `try_send`s it into bounded channels, each receiver `try_recv`s `K` times.
//!
//! `publish_only` times `Hub::publish` alone (events built and receivers drained outside the
//! measurement): the publisher's cost per delivery.
//!
//! Run: `cargo bench --bench fanout -- --warm-up-time 1 --measurement-time 3`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use ssehub::{Event, Hub, Subscription};
use tokio::sync::{broadcast, mpsc};

/// Events published per round.
const K: usize = 64;
/// Queue / channel bound for every contender (at least `K`, so nothing is dropped).
const CAPACITY: usize = 2 * K;
/// Bytes in each event's `data:` line.
const PAYLOAD: usize = 128;
/// The one topic.
const TOPIC: &str = "ticks";
/// Subscriber counts for the comparison.
const FANOUT_N: [usize; 3] = [1, 100, 10_000];
/// Subscriber counts for the publish-only measurement.
const PUBLISH_N: [usize; 3] = [100, 1_000, 10_000];

/// The event data: `PAYLOAD` bytes, one line.
fn payload() -> String {
    "x".repeat(PAYLOAD)
}

/// The frame every contender puts on the wire (ssehub writes `event:` before `id:`; same bytes
/// otherwise, same length).
fn format_frame(seq: u64, data: &str) -> String {
    format!("id: {seq}\nevent: tick\ndata: {data}\n\n")
}

/// One `K`-event round through a contender; returns the number of frames the receivers took.
trait Round {
    /// Publishes `K` events and has every receiver take them all.
    fn round(&mut self) -> usize;
}

/// ssehub: one hub, `n` subscriptions to one topic.
struct Ssehub {
    /// The hub.
    hub: Hub,
    /// The receivers.
    subs: Vec<Subscription>,
    /// The event data.
    payload: String,
    /// The last event id.
    seq: u64,
}

impl Ssehub {
    fn new(n: usize) -> Self {
        let hub = Hub::builder().with_heartbeat(None).with_capacity(CAPACITY).build();
        let subs = (0..n).map(|_| hub.subscribe(TOPIC).expect("subscribe")).collect();
        Ssehub { hub, subs, payload: payload(), seq: 0 }
    }

    /// The next event, as a publisher builds it.
    fn next_event(&mut self) -> Event {
        self.seq += 1;
        Event::new(self.payload.clone()).with_event("tick").with_id(self.seq.to_string())
    }

    /// Every subscription takes everything queued; returns the frames taken.
    fn drain(&mut self) -> usize {
        let mut received = 0;
        for sub in &mut self.subs {
            while let Some(batch) = sub.try_recv().expect("subscription is live") {
                received += batch.len();
                black_box(batch);
            }
        }
        received
    }
}

impl Round for Ssehub {
    fn round(&mut self) -> usize {
        for _ in 0..K {
            let event = self.next_event();
            black_box(self.hub.publish(TOPIC, event).expect("publish"));
        }
        self.drain()
    }
}

/// `tokio::sync::broadcast`: one channel, `n` receivers, frames encoded once per publish.
struct TokioBroadcast {
    /// The sender.
    tx: broadcast::Sender<Bytes>,
    /// The receivers.
    rxs: Vec<broadcast::Receiver<Bytes>>,
    /// The event data.
    payload: String,
    /// The last event id.
    seq: u64,
}

impl TokioBroadcast {
    fn new(n: usize) -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        let rxs = (0..n).map(|_| tx.subscribe()).collect();
        TokioBroadcast { tx, rxs, payload: payload(), seq: 0 }
    }
}

impl Round for TokioBroadcast {
    fn round(&mut self) -> usize {
        for _ in 0..K {
            self.seq += 1;
            let frame = Bytes::from(format_frame(self.seq, &self.payload));
            black_box(self.tx.send(frame).expect("receivers exist"));
        }
        let mut received = 0;
        for rx in &mut self.rxs {
            for _ in 0..K {
                if let Ok(frame) = rx.try_recv() {
                    received += 1;
                    black_box(frame);
                }
            }
        }
        received
    }
}

/// The common hand-written hub: a locked map of bounded channels, a frame formatted per client.
struct Handrolled {
    /// Client id to its channel.
    clients: Mutex<HashMap<u64, mpsc::Sender<String>>>,
    /// The receivers.
    rxs: Vec<mpsc::Receiver<String>>,
    /// The event data.
    payload: String,
    /// The last event id.
    seq: u64,
}

impl Handrolled {
    fn new(n: usize) -> Self {
        let mut clients = HashMap::with_capacity(n);
        let mut rxs = Vec::with_capacity(n);
        for id in 0..n as u64 {
            let (tx, rx) = mpsc::channel(CAPACITY);
            clients.insert(id, tx);
            rxs.push(rx);
        }
        Handrolled { clients: Mutex::new(clients), rxs, payload: payload(), seq: 0 }
    }
}

impl Round for Handrolled {
    fn round(&mut self) -> usize {
        for _ in 0..K {
            self.seq += 1;
            let clients = self.clients.lock().expect("not poisoned");
            for tx in clients.values() {
                let frame = format_frame(self.seq, &self.payload);
                black_box(tx.try_send(frame).is_ok());
            }
        }
        let mut received = 0;
        for rx in &mut self.rxs {
            for _ in 0..K {
                if let Ok(frame) = rx.try_recv() {
                    received += 1;
                    black_box(frame);
                }
            }
        }
        received
    }
}

/// Benchmarks rounds of the contender `make(n)` builds; before the first measurement (and only
/// when this benchmark is selected), runs one round and checks every receiver took every event.
fn bench_rounds<R: Round>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    n: usize,
    make: impl Fn(usize) -> R,
) {
    let mut contender = None;
    group.bench_function(BenchmarkId::new(name, n), |b| {
        let contender = contender.get_or_insert_with(|| {
            let mut contender = make(n);
            assert_eq!(contender.round(), n * K, "{name} at N={n} lost deliveries");
            contender
        });
        b.iter(|| black_box(contender.round()))
    });
}

/// The three contenders at each `N`.
fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for n in FANOUT_N {
        group.throughput(Throughput::Elements((n * K) as u64));
        // A 10,000-subscriber round takes tens of milliseconds (the hand-rolled hub over 100):
        // fewer, longer samples keep the run within its time budget.
        group.sample_size(if n >= 10_000 { 10 } else { 50 });
        bench_rounds(&mut group, "ssehub", n, Ssehub::new);
        bench_rounds(&mut group, "tokio_broadcast", n, TokioBroadcast::new);
        bench_rounds(&mut group, "handrolled", n, Handrolled::new);
    }
    group.finish();
}

/// `Hub::publish` alone, per delivery.
fn publish_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_only");
    for n in PUBLISH_N {
        // One iteration is one publish: `n` deliveries.
        group.throughput(Throughput::Elements(n as u64));
        group.sample_size(if n >= 10_000 { 20 } else { 50 });
        let mut hub = None;
        let mut events = Vec::with_capacity(K);
        group.bench_function(BenchmarkId::new("ssehub", n), |b| {
            let hub = hub.get_or_insert_with(|| {
                let mut hub = Ssehub::new(n);
                assert_eq!(hub.round(), n * K, "ssehub at N={n} lost deliveries");
                hub
            });
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let chunk = left.min(K as u64);
                    events.extend((0..chunk).map(|_| hub.next_event()));
                    let start = Instant::now();
                    for event in events.drain(..) {
                        black_box(hub.hub.publish(TOPIC, event).expect("publish"));
                    }
                    elapsed += start.elapsed();
                    // Queues hold at most `K` frames before this drain, under their bound.
                    black_box(hub.drain());
                    left -= chunk;
                }
                elapsed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout, publish_only);
criterion_main!(benches);
