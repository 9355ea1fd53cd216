//! What a rate tier costs the hub, in process, against its number of subscribers: the
//! publishing thread's CPU per publish and the tier clock thread's CPU per tick, with 0, 1,
//! 1,000 and 10,000 subscribers of one topic at 250 ms (never polled: this measures the hub's
//! side, not the writes). 40 keys, 100-byte events, published for 2 s at full speed.
//!
//! ```sh
//! cargo build --release --example tier_cost && target/release/examples/tier_cost
//! ```

use std::time::{Duration, Instant};

use ssehub::{Event, Hub, Subscribe};

fn main() {
    let keys: Vec<String> = (0..40).map(|k| format!("k{k}")).collect();
    for subscribers in [0usize, 1, 1_000, 10_000] {
        let hub = Hub::builder().with_heartbeat(None).build();
        let every = Duration::from_millis(250);
        // A subscriber at another interval keeps the clock running when the topic has none.
        let _clock = hub.subscribe(Subscribe::new().with_topic("other").with_interval(every));
        let subs: Vec<_> = (0..subscribers)
            .map(|_| hub.subscribe(Subscribe::new().with_topic("t").with_interval(every)))
            .collect::<Result<_, _>>()
            .expect("subscribe");
        let ticks_before = hub.stats().tier_ticks;
        let clock_before = tier_thread_cpu();
        let before = cpu_seconds("/proc/thread-self/schedstat");
        let started = Instant::now();
        let mut published = 0usize;
        while started.elapsed() < Duration::from_secs(2) {
            for _ in 0..1000 {
                let event = Event::new("x".repeat(100)).with_key(keys[published % 40].as_str());
                hub.publish("t", event).expect("publish");
                published += 1;
            }
        }
        let publish_ns =
            (cpu_seconds("/proc/thread-self/schedstat") - before) * 1e9 / published as f64;
        let ticks = hub.stats().tier_ticks - ticks_before;
        let tick_us = (tier_thread_cpu() - clock_before) * 1e6 / ticks.max(1) as f64;
        let stats = hub.stats();
        println!(
            "subscribers={subscribers} ns_per_publish={publish_ns:.0} ticks={ticks} \
             us_per_tick={tick_us:.1} delivered={} saved={}",
            stats.frames_delivered, stats.tier_saved
        );
        drop(subs);
    }
}

/// Seconds on a CPU of the thread whose `schedstat` file is at `path` (its first field, in
/// nanoseconds: finer than `stat`'s 10 ms clock ticks, which a tick's work is far below).
fn cpu_seconds(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else { return 0.0 };
    let nanos: f64 = stat.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0.0);
    nanos / 1e9
}

/// CPU seconds of the hub's tier clock thread (`ssehub-tiers`), 0 before it starts.
fn tier_thread_cpu() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "ssehub-tiers" {
            return cpu_seconds(&task.path().join("schedstat").to_string_lossy());
        }
    }
    0.0
}
