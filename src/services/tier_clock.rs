//! The hub-wide clock of the rate tiers: one thread ticks every live interval.
//!
//! A thread (not a task, so the hub needs no runtime, and never a timer per connection) that
//! sleeps until the next interval is due and ticks it (`Engine::tick`, `engine/tier.rs`).
//! Ticks of an interval fall on multiples of it since the clock started, so every topic of one
//! interval ticks together (a subscription to several topics gets one batch per tick), and
//! the 250 ms and 1 s tiers tick together every fourth 250 ms tick. A tick that comes late (a stalled machine) is not repeated: the next one
//! is the next multiple after now. It is started by the first subscription with an interval and
//! woken by every later one (a new interval must be ticked from its first period on); with no
//! live interval it sleeps.

use std::time::Duration;

use crate::hub::Shared;
use crate::sync::{rank, Mutex};

/// How long the clock sleeps with no live interval before it looks again (a new interval also
/// wakes it at once).
#[cfg(not(ssehub_loom))]
const IDLE: Duration = Duration::from_secs(1);

/// The tier clock's thread handle.
#[derive(Debug, Default)]
pub(crate) struct TierClock {
    /// The running thread, if any.
    #[cfg(not(ssehub_loom))]
    thread: Mutex<Option<std::thread::JoinHandle<()>>, rank::TierThread>,
    /// Unused under loom, where models tick the engine themselves.
    #[cfg(ssehub_loom)]
    #[allow(dead_code)]
    thread: Mutex<(), rank::TierThread>,
}

/// The next multiple of `interval` since `epoch` after `now`.
#[cfg_attr(ssehub_loom, allow(dead_code))]
fn next_due(
    epoch: std::time::Instant,
    interval: Duration,
    now: std::time::Instant,
) -> std::time::Instant {
    let nanos = interval.as_nanos().max(1);
    let periods = now.saturating_duration_since(epoch).as_nanos() / nanos + 1;
    let offset = u64::try_from(nanos * periods).unwrap_or(u64::MAX);
    epoch + Duration::from_nanos(offset)
}

#[cfg(not(ssehub_loom))]
impl TierClock {
    /// Starts the clock for `shared`, or wakes it if it runs (a new interval may have
    /// appeared). The thread holds only a weak reference, so it never keeps a hub alive, and
    /// exits at shutdown.
    pub(crate) fn start(shared: &crate::sync::Arc<Shared>) {
        let mut thread = crate::sync::lock(&shared.tier_clock.thread);
        if let Some(handle) = thread.as_ref() {
            handle.thread().unpark();
            return;
        }
        let weak = crate::sync::Arc::downgrade(shared);
        let spawned =
            std::thread::Builder::new().name("ssehub-tiers".into()).spawn(move || run(&weak));
        // Without a thread the tiers would never tick: their streams would stay silent. The
        // spawn fails only when the process is out of threads; nothing better can be done
        // here than to retry at the next subscription with an interval.
        if let Ok(handle) = spawned {
            *thread = Some(handle);
        }
    }

    /// Stops the thread and waits for it, unless called from it.
    pub(crate) fn stop(&self) {
        super::stop_thread(&self.thread);
    }
}

/// The clock's loop: tick what is due, sleep until the next one is.
#[cfg(not(ssehub_loom))]
fn run(weak: &crate::sync::PlainWeak<Shared>) {
    use std::collections::HashMap;
    use std::time::Instant;
    let epoch = Instant::now();
    let mut due: HashMap<Duration, Instant> = HashMap::new();
    loop {
        let Some(shared) = weak.upgrade() else { return };
        if shared.is_closed() {
            return;
        }
        let tiers = shared.engine.registry.tiers().clone();
        let now = Instant::now();
        // Forget intervals nobody reads any more; a new one is first due at its next multiple.
        due.retain(|interval, _| tiers.iter().any(|t| t.interval == *interval));
        for tier in tiers.iter() {
            let at =
                *due.entry(tier.interval).or_insert_with(|| next_due(epoch, tier.interval, now));
            if at <= now {
                Shared::tick(&shared, tier);
                due.insert(tier.interval, next_due(epoch, tier.interval, Instant::now()));
            }
        }
        drop(shared);
        let now = Instant::now();
        let sleep = due.values().min().map_or(IDLE, |at| at.saturating_duration_since(now));
        if !sleep.is_zero() {
            std::thread::park_timeout(sleep);
        }
    }
}

#[cfg(ssehub_loom)]
impl TierClock {
    /// No thread under loom.
    pub(crate) fn start(_shared: &crate::sync::Arc<Shared>) {}

    /// No thread under loom.
    pub(crate) fn stop(&self) {}
}

#[cfg(all(test, not(ssehub_loom)))]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn ticks_fall_on_multiples_of_the_interval_after_now() {
        let epoch = Instant::now();
        let interval = Duration::from_millis(250);
        assert_eq!(next_due(epoch, interval, epoch), epoch + interval);
        let now = epoch + Duration::from_millis(600);
        assert_eq!(next_due(epoch, interval, now), epoch + Duration::from_millis(750));
        let exact = epoch + Duration::from_millis(750);
        assert_eq!(next_due(epoch, interval, exact), epoch + Duration::from_millis(1000));
    }
}
