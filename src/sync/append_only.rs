//! [`AppendOnly`]: a fixed run of write-once slots, filled in order by one writer at a time and
//! read without a lock by any number of readers.
//!
//! This is the one place the crate writes through an `UnsafeCell` shared with other threads.
//! Why it is worth it: a topic ring's readers used to lock the ring to copy out their entries
//! (and the publisher copied the last chunk whenever a reader's batch held it); with write-once
//! slots a reader takes a shared slice of what was written, under no lock, and the publisher
//! never copies. `benches/fanout.rs` measured the ring before and after, alternately on one
//! machine: about 7% and 10% less time per delivery at 100 and 10,000 subscribers, the same at
//! one (`docs/benchmarks.md`, "Lock-free ring readers"); the loom models in `src/tests/loom_ring.rs` run every access below
//! through loom's cell tracking ([`SlotAccess`]), so a read that is not ordered after its slot's
//! write fails a model.
//!
//! Soundness does not rest on the callers: `push` claims the writer's side with an atomic flag
//! (a second writer at the same time panics instead of racing), and `get` checks its range
//! against the published count, so no safe call reads an unwritten slot.

// The unsafe blocks below are this module's reason to exist; each carries its `// SAFETY:`.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::ops::Range;

use super::{AtomicBool, AtomicUsize, Ordering, SlotAccess};

/// `N` slots of `T`, written once each, in order, by one writer at a time; the first
/// [`len`](AppendOnly::len) are readable as a slice by anyone, without a lock.
pub(crate) struct AppendOnly<T, const N: usize> {
    /// The values. Slots below `filled` hold one and are never written again; slots at or above
    /// it are touched only by the writer holding `writing`.
    values: [UnsafeCell<MaybeUninit<T>>; N],
    /// Loom's record of each slot's accesses (zero-sized outside loom).
    access: [SlotAccess; N],
    /// How many slots hold a value: stored with `Release` after each write.
    filled: AtomicUsize,
    /// Held by the writer for the length of one `push`.
    writing: AtomicBool,
}

// SAFETY: a shared `AppendOnly` hands out `&T` to written slots on any thread (so `T: Sync`)
// and takes values in on one thread that are dropped on another (so `T: Send`); every write is
// made by the one writer holding `writing`, to a slot no reader can see yet (see `push`).
unsafe impl<T: Send + Sync, const N: usize> Sync for AppendOnly<T, N> {}

impl<T, const N: usize> AppendOnly<T, N> {
    /// No slot written.
    pub(crate) fn new() -> Self {
        AppendOnly {
            values: std::array::from_fn(|_| UnsafeCell::new(MaybeUninit::uninit())),
            access: std::array::from_fn(|_| SlotAccess::new()),
            filled: AtomicUsize::new(0),
            writing: AtomicBool::new(false),
        }
    }

    /// How many slots are written (and readable).
    pub(crate) fn len(&self) -> usize {
        // Acquire pairs with the Release in `push`: the slots counted are visible.
        self.filled.load(Ordering::Acquire)
    }

    /// Writes `value` into the next slot and returns its index, or hands it back when all `N`
    /// are written.
    ///
    /// # Panics
    ///
    /// If another `push` on the same slots runs at the same time: callers serialise their
    /// writers (the ring's publisher holds the hub's sequencer), and this makes a broken
    /// caller panic rather than race.
    pub(crate) fn push(&self, value: T) -> Result<usize, T> {
        // Acquire pairs with the Release that ends the previous push, on whatever thread it
        // ran: this writer sees its count and its slot.
        let busy = self.writing.swap(true, Ordering::Acquire);
        assert!(!busy, "two writers pushed to the same write-once slots at once");
        // Relaxed: only writers store `filled`, and the claim above orders them.
        let index = self.filled.load(Ordering::Relaxed);
        if index == N {
            self.writing.store(false, Ordering::Release);
            return Err(value);
        }
        debug_assert!(index < N);
        self.access[index].write();
        // SAFETY: the slot is at `filled`, so no reader may look at it (`get` only reads below
        // `filled`), the claim makes this the only writer, and it holds no value (`filled`
        // moves past each slot once, right after its one write).
        unsafe { (*self.values[index].get()).write(value) };
        // Release: a reader that loads the new count sees the value written above.
        self.filled.store(index + 1, Ordering::Release);
        // Release: the next writer's Acquire sees this push.
        self.writing.store(false, Ordering::Release);
        Ok(index)
    }

    /// The written slots `range`, as a slice.
    ///
    /// # Panics
    ///
    /// If `range` reaches past the written slots.
    pub(crate) fn get(&self, range: Range<usize>) -> &[T] {
        let filled = self.len();
        assert!(
            range.start <= range.end && range.end <= filled,
            "read of slots {range:?} with {filled} written"
        );
        for access in &self.access[range.clone()] {
            access.read();
        }
        let values = &self.values[range];
        // SAFETY: `UnsafeCell<MaybeUninit<T>>` has the layout of `T` (both wrappers are
        // `repr(transparent)`), so the slice of cells is a slice of `T`s. Every slot in it is
        // below `filled`: written, and the write happens before this read (the Acquire in
        // `len` pairs with the Release after it). No slot below `filled` is written again, and
        // the values are dropped only through `&mut self`, so they stay as they are for the
        // borrow's lifetime.
        unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<T>(), values.len()) }
    }
}

impl<T, const N: usize> Drop for AppendOnly<T, N> {
    fn drop(&mut self) {
        // Acquire: `&mut self` already orders every push before this (the last owner's
        // `Arc` drop synchronises); the ordering only spells that out.
        let filled = self.filled.load(Ordering::Acquire);
        for (value, access) in self.values.iter_mut().zip(&self.access).take(filled) {
            access.write();
            // SAFETY: the slot is below `filled`, so it holds a value, and `&mut self` means
            // no slice of it is still borrowed; it is dropped once, here.
            unsafe { value.get_mut().assume_init_drop() };
        }
    }
}

impl<T, const N: usize> std::fmt::Debug for AppendOnly<T, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendOnly").field("len", &self.len()).field("capacity", &N).finish()
    }
}

#[cfg(all(test, not(ssehub_loom)))]
mod tests {
    use super::*;
    use crate::sync::Arc;

    #[test]
    fn written_slots_read_back_in_order_and_a_full_run_hands_the_value_back() {
        let slots: AppendOnly<String, 3> = AppendOnly::new();
        assert_eq!(slots.push("a".into()), Ok(0));
        assert_eq!(slots.push("b".into()), Ok(1));
        assert_eq!(slots.get(0..2), ["a", "b"]);
        assert_eq!(slots.push("c".into()), Ok(2));
        assert_eq!(slots.push("d".into()), Err("d".to_string()));
        assert_eq!(slots.get(1..3), ["b", "c"]);
        assert_eq!(slots.len(), 3);
    }

    #[test]
    #[should_panic(expected = "read of slots 0..2 with 1 written")]
    fn a_read_past_the_written_slots_panics() {
        let slots: AppendOnly<u8, 4> = AppendOnly::new();
        slots.push(1).unwrap();
        let _ = slots.get(0..2);
    }

    #[test]
    fn written_values_are_dropped_with_the_slots_and_unwritten_ones_are_not_touched() {
        let token = Arc::new(());
        let slots: AppendOnly<Arc<()>, 4> = AppendOnly::new();
        slots.push(token.clone()).unwrap();
        slots.push(token.clone()).unwrap();
        assert_eq!(Arc::strong_count(&token), 3);
        drop(slots);
        assert_eq!(Arc::strong_count(&token), 1);
    }
}
