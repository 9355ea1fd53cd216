//! Nothing is left behind: after shutdown and drops, no thread and no allocation of the hub's
//! remains. One test per binary, since it counts the whole process's threads and heap.

use std::time::Duration;

use ssehub::{Event, Hub, SlowPolicy, Subscribe};

// dhat counts live heap bytes for us, without an allocator of our own.
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn live_bytes() -> u64 {
    dhat::HeapStats::get().curr_bytes as u64
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

fn exercise() {
    let hub =
        Hub::builder().with_heartbeat(Some(Duration::from_millis(2))).with_capacity(8).build();
    let subs: Vec<_> = (0..100)
        .map(|i| {
            let request = Subscribe::new()
                .with_topic(format!("t{}", i % 10))
                .with_pattern(format!("p{}:*", i % 4))
                .with_slow_policy(if i % 2 == 0 {
                    SlowPolicy::Disconnect
                } else {
                    SlowPolicy::DropOldest
                });
            hub.subscribe(request).unwrap()
        })
        .collect();
    for n in 0..50 {
        hub.publish(&format!("t{}", n % 10), Event::new("x").with_id(n.to_string())).unwrap();
        hub.publish(&format!("p{}:{n}", n % 4), Event::new("y")).unwrap();
    }
    hub.broadcast(Event::new("all")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    hub.shutdown();
    drop(subs);
    drop(hub);
}

#[test]
fn no_thread_or_allocation_outlives_the_hub() {
    // Warm up once so lazily initialised runtime state (thread names, std's caches) exists
    // before the baseline is taken.
    let _profiler = dhat::Profiler::builder().testing().build();
    exercise();
    let threads_before = threads();
    let live_before = live_bytes();
    for _ in 0..5 {
        exercise();
    }
    assert_eq!(threads(), threads_before);
    let live_after = live_bytes();
    assert!(
        live_after <= live_before,
        "{} bytes still allocated after every hub was dropped",
        live_after - live_before
    );
}
