//! The production primitives: std, plus `arc-swap` for the copy-on-write snapshots.

pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
pub(crate) use std::sync::Arc;

/// The mutex the ranked [`Mutex`](super::Mutex) wraps.
pub(crate) mod platform {
    pub(crate) use std::sync::{Mutex, MutexGuard};
}

/// A copy-on-write cell: readers `load` a snapshot without locking, writers `rcu` a new one.
pub(crate) type ArcSwap<T> = arc_swap::ArcSwap<T>;

/// Builds a cell holding `value`.
pub(crate) fn arc_swap<T>(value: T) -> ArcSwap<T> {
    arc_swap::ArcSwap::from_pointee(value)
}

/// A copy-on-write cell that may be empty: an empty one allocates nothing.
pub(crate) type ArcSwapOption<T> = arc_swap::ArcSwapOption<T>;

/// Loom's record of one write-once slot's accesses: nothing outside loom.
#[derive(Debug)]
pub(crate) struct SlotAccess;

impl SlotAccess {
    /// Nothing recorded yet.
    pub(crate) fn new() -> SlotAccess {
        SlotAccess
    }

    /// A read of the slot (checked only under loom).
    #[inline(always)]
    pub(crate) fn read(&self) {}

    /// A write (or the drop) of the slot (checked only under loom).
    #[inline(always)]
    pub(crate) fn write(&self) {}
}

/// An immutable shared string (topic names, conflation keys). Plain data with no concurrency of
/// its own, so it stays std's `Arc` under loom too.
pub(crate) type SharedStr = std::sync::Arc<str>;

/// A snapshot loaded from an [`ArcSwap`], held for the duration of one operation.
pub(crate) type Guard<T> = arc_swap::Guard<Arc<T>>;

/// An `Arc` for shared immutable values with no concurrency of their own (callbacks, settings):
/// std's even under loom, which need not explore them.
pub(crate) type PlainArc<T> = std::sync::Arc<T>;

/// A weak reference to a [`PlainArc`] (a backplane's handles on its node and broker, which must
/// not keep them alive).
#[allow(dead_code)]
pub(crate) type PlainWeak<T> = std::sync::Weak<T>;
