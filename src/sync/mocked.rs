//! loom's instrumented primitives, and a stand-in for `arc_swap::ArcSwap`.
//!
//! arc-swap is not loom-aware, so under `--cfg ssehub_loom` the cell is a loom `Mutex<Arc<T>>`
//! with exactly the methods the engine calls. Its `rcu` runs the closure outside the lock and
//! retries when the pointer changed in between, as arc-swap's does, so loom explores the re-run
//! path and a closure that is not safe to re-run fails a model.

pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
pub(crate) use loom::sync::Arc;
use loom::sync::Mutex;

/// The mutex the ranked [`Mutex`](super::Mutex) wraps.
pub(crate) mod platform {
    pub(crate) use loom::sync::{Mutex, MutexGuard};
}

/// The loom stand-in for `arc_swap::ArcSwap`.
pub(crate) struct ArcSwap<T> {
    /// The current snapshot.
    cell: Mutex<Arc<T>>,
}

impl<T> std::fmt::Debug for ArcSwap<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArcSwap")
    }
}

/// Builds a cell holding `value`.
pub(crate) fn arc_swap<T>(value: T) -> ArcSwap<T> {
    ArcSwap { cell: Mutex::new(Arc::new(value)) }
}

impl<T> ArcSwap<T> {
    /// A snapshot of the current value.
    pub(crate) fn load(&self) -> Arc<T> {
        self.cell.lock().unwrap().clone()
    }

    /// Replaces the value.
    pub(crate) fn store(&self, value: Arc<T>) {
        *self.cell.lock().unwrap() = value;
    }

    /// Read-copy-update: computes the new value from the current one and swaps it in only if
    /// nobody swapped in between; otherwise runs `f` again on the newer value.
    pub(crate) fn rcu<R, F>(&self, mut f: F) -> Arc<T>
    where
        F: FnMut(&Arc<T>) -> R,
        R: Into<Arc<T>>,
    {
        let mut current = self.load();
        loop {
            let new: Arc<T> = f(&current).into();
            let mut cell = self.cell.lock().unwrap();
            if Arc::ptr_eq(&cell, &current) {
                let previous = std::mem::replace(&mut *cell, new);
                return previous;
            }
            current = cell.clone();
        }
    }
}

/// The loom stand-in for `arc_swap::ArcSwapOption`, like [`ArcSwap`]'s.
pub(crate) struct ArcSwapOption<T> {
    /// The current snapshot, if any.
    cell: Mutex<Option<Arc<T>>>,
}

impl<T> std::fmt::Debug for ArcSwapOption<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArcSwapOption")
    }
}

impl<T> ArcSwapOption<T> {
    /// An empty cell.
    pub(crate) fn empty() -> Self {
        ArcSwapOption { cell: Mutex::new(None) }
    }

    /// A snapshot of the current value.
    pub(crate) fn load(&self) -> Option<Arc<T>> {
        self.cell.lock().unwrap().clone()
    }

    /// Read-copy-update, as [`ArcSwap::rcu`]: `f` runs again on a value swapped in meanwhile.
    pub(crate) fn rcu<R, F>(&self, mut f: F) -> Option<Arc<T>>
    where
        F: FnMut(&Option<Arc<T>>) -> R,
        R: Into<Option<Arc<T>>>,
    {
        let same = |a: &Option<Arc<T>>, b: &Option<Arc<T>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let mut current = self.load();
        loop {
            let new: Option<Arc<T>> = f(&current).into();
            let mut cell = self.cell.lock().unwrap();
            if same(&cell, &current) {
                return std::mem::replace(&mut *cell, new);
            }
            current = cell.clone();
        }
    }
}

/// Loom's record of one write-once slot's accesses: a loom cell whose tracked reads and writes
/// stand for the slot's, so loom fails a model where a read is not ordered after the write.
#[derive(Debug)]
pub(crate) struct SlotAccess(loom::cell::UnsafeCell<()>);

impl SlotAccess {
    /// Nothing recorded yet.
    pub(crate) fn new() -> SlotAccess {
        SlotAccess(loom::cell::UnsafeCell::new(()))
    }

    /// A read of the slot.
    pub(crate) fn read(&self) {
        self.0.with(|_| ());
    }

    /// A write (or the drop) of the slot.
    pub(crate) fn write(&self) {
        self.0.with_mut(|_| ());
    }
}

/// An immutable shared string (topic names, conflation keys). Plain data with no concurrency of
/// its own, so it stays std's `Arc` under loom too.
pub(crate) type SharedStr = std::sync::Arc<str>;

/// A snapshot loaded from an [`ArcSwap`], held for the duration of one operation.
pub(crate) type Guard<T> = Arc<T>;

/// An `Arc` for shared immutable values with no concurrency of their own (callbacks, settings):
/// std's even under loom, which need not explore them.
pub(crate) type PlainArc<T> = std::sync::Arc<T>;

/// A weak reference to a [`PlainArc`] (a backplane's handles on its node and broker, which must
/// not keep them alive).
#[allow(dead_code)]
pub(crate) type PlainWeak<T> = std::sync::Weak<T>;
