//! Streams that end at a wall-clock time: one hub-wide index and one thread, no timer per
//! connection.
//!
//! A subscription made with [`Subscribe::with_expiry`](crate::Subscribe::with_expiry) is
//! entered in the [`Index`] (ordered by expiry time, then subscriber id). One thread per hub,
//! started by the first such subscription, sleeps until the earliest expiry (at most
//! [`MAX_SLEEP`] at a time), takes every entry that is due and ends those streams with their
//! final `event: expired` frame. A subscription that ends otherwise leaves the index when it
//! leaves the registry, so the index holds live subscriptions only.
//!
//! Expiries are `SystemTime`s, not `Instant`s: they come from credentials (a JWT's `exp` is
//! seconds since the UNIX epoch) that every other verifier judges by the wall clock. Converting
//! to an `Instant` at subscribe time would freeze the offset, so a stepped clock (NTP) would make
//! the hub end a stream at a different moment than the one the token names. The thread wakes at
//! least every [`MAX_SLEEP`], so a clock stepped forward is noticed within that.

// Under loom there is no thread: only the index's insert and remove are called there.
#![cfg_attr(ssehub_loom, allow(dead_code))]

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use crate::sync::{lock, rank, AtomicUsize, Mutex, Ordering};

/// The longest the thread sleeps between looks at the clock, whatever the next expiry.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Subscriptions by expiry time.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// `(expiry, subscriber id)`, earliest first; the id keeps equal times apart.
    by_time: BTreeSet<(SystemTime, u64)>,
    /// Each indexed subscriber's expiry, so leaving costs O(log n), not a scan.
    by_id: HashMap<u64, SystemTime>,
}

impl Index {
    /// Enters (or moves) subscriber `id` at `at`; returns whether it is now the earliest, so
    /// the thread must be woken to sleep less.
    pub(crate) fn insert(&mut self, id: u64, at: SystemTime) -> bool {
        if let Some(old) = self.by_id.insert(id, at) {
            self.by_time.remove(&(old, id));
        }
        self.by_time.insert((at, id));
        self.by_time.first() == Some(&(at, id))
    }

    /// Takes subscriber `id` out; returns whether it was in.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        match self.by_id.remove(&id) {
            Some(at) => self.by_time.remove(&(at, id)),
            None => false,
        }
    }

    /// Takes out every subscriber due at `now` (expiry at or before it), earliest first.
    pub(crate) fn take_due(&mut self, now: SystemTime) -> Vec<u64> {
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.by_time.first() {
            if at > now {
                break;
            }
            self.by_time.pop_first();
            self.by_id.remove(&id);
            due.push(id);
        }
        due
    }

    /// The earliest expiry, if any.
    pub(crate) fn next(&self) -> Option<SystemTime> {
        self.by_time.first().map(|&(at, _)| at)
    }

    /// How many subscribers are indexed.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// The hub's expiry index and its thread.
#[derive(Debug, Default)]
pub(crate) struct Expiries {
    /// The index.
    index: Mutex<Index, rank::Expiries>,
    /// How many subscribers the index holds, so a hub that never uses expiries takes no lock
    /// when a subscriber leaves.
    len: AtomicUsize,
    /// The running thread, if started.
    #[cfg(not(ssehub_loom))]
    thread: Mutex<Option<std::thread::JoinHandle<()>>, rank::ExpiryThread>,
}

impl Expiries {
    /// Enters subscriber `id` at `at`; returns whether the thread must be woken (it is now the
    /// earliest).
    pub(crate) fn insert(&self, id: u64, at: SystemTime) -> bool {
        let mut index = lock(&self.index);
        let earliest = index.insert(id, at);
        // Relaxed: only a hint for `remove`'s shortcut; the entry itself is under the lock. A
        // remove that reads a stale 0 belongs to a subscriber inserted after the remove's
        // caller closed its queue, which `Shared` checks after inserting.
        self.len.store(index.len(), Ordering::Relaxed);
        earliest
    }

    /// Takes subscriber `id` out, if it is in.
    pub(crate) fn remove(&self, id: u64) {
        // Relaxed: see `insert`.
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut index = lock(&self.index);
        if index.remove(id) {
            self.len.store(index.len(), Ordering::Relaxed);
        }
    }

    /// Takes out every subscriber due at `now`, and the next expiry after them.
    pub(crate) fn take_due(&self, now: SystemTime) -> (Vec<u64>, Option<SystemTime>) {
        let mut index = lock(&self.index);
        let due = index.take_due(now);
        // Relaxed: see `insert`.
        self.len.store(index.len(), Ordering::Relaxed);
        (due, index.next())
    }
}

#[cfg(not(ssehub_loom))]
impl Expiries {
    /// Starts the thread for `shared` unless it runs already, or wakes it so it looks at the
    /// clock and the index again. It holds only a weak reference, so it never keeps a hub
    /// alive, and exits at shutdown.
    pub(crate) fn wake(shared: &crate::sync::Arc<crate::hub::Shared>) {
        let mut thread = lock(&shared.expiries.thread);
        if let Some(handle) = thread.as_ref() {
            handle.thread().unpark();
            return;
        }
        if shared.is_closed() {
            return;
        }
        let weak = crate::sync::Arc::downgrade(shared);
        let spawned =
            std::thread::Builder::new().name("ssehub-expiry".into()).spawn(move || run(&weak));
        // Without a thread, streams would outlive their expiry: the subscription that asked
        // for one is ended by the caller instead (see `Shared::watch_expiry`).
        if let Ok(handle) = spawned {
            *thread = Some(handle);
        }
    }

    /// Whether the thread runs.
    pub(crate) fn running(&self) -> bool {
        lock(&self.thread).is_some()
    }

    /// Stops the thread and waits for it, unless called from it.
    pub(crate) fn stop(&self) {
        super::stop_thread(&self.thread);
    }
}

/// The thread's loop: end what is due, sleep until the next expiry (at most [`MAX_SLEEP`]).
#[cfg(not(ssehub_loom))]
fn run(weak: &crate::sync::PlainWeak<crate::hub::Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        if shared.is_closed() {
            return;
        }
        let (due, next) = shared.expiries.take_due(SystemTime::now());
        for id in due {
            crate::hub::Shared::expire(&shared, id);
        }
        drop(shared);
        // A clock stepped back makes `duration_since` fail: look again after the longest sleep.
        let wait = next
            .map_or(MAX_SLEEP, |at| at.duration_since(SystemTime::now()).unwrap_or(MAX_SLEEP))
            .min(MAX_SLEEP);
        std::thread::park_timeout(wait);
    }
}

#[cfg(ssehub_loom)]
impl Expiries {
    /// No thread under loom.
    pub(crate) fn wake(_shared: &crate::sync::Arc<crate::hub::Shared>) {}

    /// No thread under loom.
    pub(crate) fn running(&self) -> bool {
        false
    }

    /// No thread under loom.
    pub(crate) fn stop(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn takes_what_is_due_earliest_first_and_nothing_later() {
        let mut index = Index::default();
        assert!(index.insert(1, at(30)));
        assert!(index.insert(2, at(10)), "earlier: the thread must wake");
        assert!(!index.insert(3, at(20)));
        assert!(!index.insert(4, at(10)), "same time, later id");
        assert_eq!(index.take_due(at(9)), Vec::<u64>::new());
        assert_eq!(index.take_due(at(20)), vec![2, 4, 3]);
        assert_eq!(index.next(), Some(at(30)));
        assert_eq!(index.len(), 1);
        assert_eq!(index.take_due(at(100)), vec![1]);
        assert_eq!(index.next(), None);
    }

    #[test]
    fn a_subscriber_that_leaves_is_never_due() {
        let mut index = Index::default();
        index.insert(1, at(10));
        index.insert(2, at(10));
        assert!(index.remove(1));
        assert!(!index.remove(1), "once");
        assert_eq!(index.take_due(at(10)), vec![2]);
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn moving_an_expiry_keeps_one_entry() {
        let mut index = Index::default();
        index.insert(1, at(10));
        index.insert(1, at(50));
        assert_eq!(index.len(), 1);
        assert_eq!(index.take_due(at(20)), Vec::<u64>::new());
        assert_eq!(index.take_due(at(50)), vec![1]);
    }

    #[test]
    fn the_hint_counts_what_the_index_holds() {
        let expiries = Expiries::default();
        expiries.insert(1, at(10));
        expiries.insert(2, at(20));
        expiries.remove(1);
        assert_eq!(expiries.len.load(Ordering::Relaxed), 1);
        let (due, next) = expiries.take_due(at(20));
        assert_eq!((due, next), (vec![2], None));
        assert_eq!(expiries.len.load(Ordering::Relaxed), 0);
    }
}
