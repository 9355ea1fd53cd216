//! One hub-wide heartbeat timer.
//!
//! A thread (not a task, so the hub needs no runtime and costs no timer per connection) wakes
//! every interval and queues one shared, pre-encoded `: keep-alive\n` comment to each subscriber
//! that received nothing since the previous tick and has nothing queued. A comment with no
//! blank line after it: some clients (httpx-sse 0.4) turn a lone blank line after an event with
//! an id into an empty event. A heartbeat is only queued into an empty queue and any event may
//! displace it, so it never evicts or delays an event.

use bytes::Bytes;

use crate::hub::Shared;
#[cfg(not(ssehub_loom))]
use crate::sync::lock;
use crate::sync::{rank, Mutex};

/// The heartbeat frame, shared by every subscriber.
pub(crate) static KEEP_ALIVE: &[u8] = b": keep-alive\n";

/// The timer thread's handle.
#[derive(Debug, Default)]
pub(crate) struct Heartbeat {
    /// The running thread, if any.
    #[cfg(not(ssehub_loom))]
    thread: Mutex<Option<std::thread::JoinHandle<()>>, rank::HeartbeatThread>,
    /// Unused under loom, where models call [`tick`] themselves.
    #[cfg(ssehub_loom)]
    #[allow(dead_code)]
    thread: Mutex<(), rank::HeartbeatThread>,
}

/// Queues a heartbeat to every idle subscriber; returns how many got one.
// Under loom there is no timer thread: only the models call it (and what it calls).
#[cfg_attr(all(ssehub_loom, not(test)), allow(dead_code))]
pub(crate) fn tick(shared: &Shared) -> u64 {
    let frame = Bytes::from_static(KEEP_ALIVE);
    let mut sent = 0;
    // The slowest subscriber's backlog, for the lag gauge: this tick already visits every
    // subscriber, so the gauge costs one queue length each per tick and nothing per delivery.
    #[cfg(feature = "metrics")]
    let mut slowest = 0;
    shared.engine.registry.subscribers().for_each(|slot| {
        // No lock: the feeds are a snapshot and each ring's tail an atomic. Read before the
        // queue's lock is taken, so that lock is held for the push alone.
        let waiting = slot.ring_waiting();
        #[cfg(feature = "metrics")]
        {
            slowest = slowest.max(waiting + slot.queue.len());
        }
        if slot.queue.push_heartbeat(&frame, waiting == 0) {
            sent += 1;
        }
    });
    shared.engine.counters.heartbeats(sent);
    #[cfg(feature = "metrics")]
    shared.engine.counters.slowest_lag(slowest);
    // Age out idle topics' history and expired sessions here, so neither outlives its TTL
    // without anyone touching it.
    shared.sweep();
    sent
}

#[cfg(not(ssehub_loom))]
impl Heartbeat {
    /// Starts the timer thread for `shared`. It holds only a weak reference, so it never keeps
    /// a hub alive, and exits at shutdown.
    pub(crate) fn start(shared: &crate::sync::Arc<Shared>, interval: std::time::Duration) {
        use std::time::Instant;
        let weak = crate::sync::Arc::downgrade(shared);
        let spawned =
            std::thread::Builder::new().name("ssehub-heartbeat".into()).spawn(move || {
                let mut next = Instant::now() + interval;
                loop {
                    let now = Instant::now();
                    if now < next {
                        std::thread::park_timeout(next - now);
                    }
                    let Some(shared) = weak.upgrade() else { return };
                    if shared.is_closed() {
                        return;
                    }
                    let now = Instant::now();
                    if now >= next {
                        tick(&shared);
                        // Skip missed ticks instead of bursting after a stall.
                        next = now + interval;
                    }
                }
            });
        // Without a thread the hub still works, only without heartbeats; nothing to unwind.
        if let Ok(handle) = spawned {
            *lock(&shared.heartbeat.thread) = Some(handle);
        }
    }

    /// Stops the thread and waits for it, unless called from it.
    pub(crate) fn stop(&self) {
        super::stop_thread(&self.thread);
    }
}

#[cfg(ssehub_loom)]
impl Heartbeat {
    /// No thread under loom.
    pub(crate) fn start(_shared: &crate::sync::Arc<Shared>, _interval: std::time::Duration) {}

    /// No thread under loom.
    pub(crate) fn stop(&self) {}
}
