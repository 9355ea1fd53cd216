//! Churn: `n` subscribes then `n` unsubscribes (drops) on one topic.
//!
//! The registry publishes copy-on-write snapshots so a publish never locks. A naive snapshot
//! (one `Arc<Vec<_>>` copied on each change) makes `n` subscribes cost O(n²); ssehub's `IdMap`
//! copies one root-to-leaf path, so the cost per operation should stay flat as `n` grows. The
//! `naive_cow` contender is that naive set, inline here, holding bare `u64`s (its best case: a
//! real one would hold `Arc`s and pay a refcount per copied element). It only runs at the two
//! smaller sizes because it is quadratic.
//!
//! One iteration is the whole `n`-subscribe, `n`-drop cycle on a fresh hub (built outside the
//! measurement); `Throughput::Elements(2 * n)`, so criterion reports the time per operation.
//!
//! Run: `cargo bench --bench churn -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use ssehub::Hub;

/// The one topic.
const TOPIC: &str = "ticks";
/// Subscriber counts for ssehub.
const SIZES: [usize; 3] = [10_000, 30_000, 100_000];
/// Subscriber counts for the quadratic naive set.
const NAIVE_SIZES: [usize; 2] = [10_000, 30_000];

/// A copy-on-write set the way many hubs start: readers clone the `Arc` and iterate a snapshot,
/// writers copy the whole vector.
#[derive(Default)]
struct NaiveCow {
    /// The current snapshot.
    current: Mutex<Arc<Vec<u64>>>,
}

impl NaiveCow {
    /// Adds `id`, copying the whole set.
    fn insert(&self, id: u64) {
        let mut current = self.current.lock().expect("not poisoned");
        let mut next = Vec::with_capacity(current.len() + 1);
        next.extend_from_slice(&current);
        next.push(id);
        *current = Arc::new(next);
    }

    /// Removes `id`, copying the rest of the set.
    fn remove(&self, id: u64) {
        let mut current = self.current.lock().expect("not poisoned");
        let next: Vec<u64> = current.iter().copied().filter(|&x| x != id).collect();
        *current = Arc::new(next);
    }

    /// Number of ids.
    fn len(&self) -> usize {
        self.current.lock().expect("not poisoned").len()
    }
}

/// One ssehub cycle; returns its duration.
fn ssehub_cycle(n: usize) -> Duration {
    let hub = Hub::builder().with_heartbeat(None).build();
    let mut subs = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        subs.push(hub.subscribe(TOPIC).expect("subscribe"));
    }
    // Drops in subscribe order, like clients leaving in the order they came.
    subs.clear();
    let elapsed = start.elapsed();
    debug_assert_eq!(hub.subscriber_count(), 0);
    elapsed
}

/// One naive cycle; returns its duration.
fn naive_cycle(n: usize) -> Duration {
    let set = NaiveCow::default();
    let start = Instant::now();
    for id in 0..n as u64 {
        set.insert(id);
    }
    for id in 0..n as u64 {
        set.remove(id);
    }
    let elapsed = start.elapsed();
    black_box(set.len());
    elapsed
}

/// ssehub at every size, the naive set at the smaller ones.
fn churn(c: &mut Criterion) {
    // Sanity checks outside the measurement: both contenders do the work they claim.
    let hub = Hub::builder().with_heartbeat(None).build();
    let subs: Vec<_> = (0..1_000).map(|_| hub.subscribe(TOPIC).expect("subscribe")).collect();
    assert_eq!(hub.topic_subscriber_count(TOPIC), 1_000);
    drop(subs);
    assert_eq!(hub.subscriber_count(), 0);
    let set = NaiveCow::default();
    (0..1_000).for_each(|id| set.insert(id));
    assert_eq!(set.len(), 1_000);
    (0..1_000).for_each(|id| set.remove(id));
    assert_eq!(set.len(), 0);

    let mut group = c.benchmark_group("churn");
    // A cycle takes from milliseconds to about a second: flat sampling with few samples.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    for n in SIZES {
        group.throughput(Throughput::Elements(2 * n as u64));
        group.bench_function(BenchmarkId::new("ssehub", n), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| ssehub_cycle(n)).sum())
        });
        if NAIVE_SIZES.contains(&n) {
            group.bench_function(BenchmarkId::new("naive_cow", n), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| naive_cycle(n)).sum())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, churn);
criterion_main!(benches);
