//! The heartbeat is one thread per hub, and it stops with the hub. One test per binary, since
//! it counts the process's threads.

use std::time::Duration;

use ssehub::Hub;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

#[test]
fn the_heartbeat_thread_starts_with_the_hub_and_stops_with_it() {
    let before = threads();
    let hub = Hub::builder().with_heartbeat(Some(Duration::from_millis(5))).build();
    assert_eq!(threads(), before + 1);
    let subs: Vec<_> = (0..1000).map(|i| hub.subscribe(format!("t{i}")).unwrap()).collect();
    // One timer however many subscribers.
    assert_eq!(threads(), before + 1);
    hub.shutdown();
    assert_eq!(threads(), before);
    drop(subs);
    // Without shutdown, dropping every handle stops it too.
    let hub = Hub::builder().with_heartbeat(Some(Duration::from_millis(5))).build();
    assert_eq!(threads(), before + 1);
    drop(hub);
    assert_eq!(threads(), before);
    // And no thread at all without heartbeats.
    let _hub = Hub::builder().with_heartbeat(None).build();
    assert_eq!(threads(), before);
}
