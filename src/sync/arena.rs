//! [`Arena`]: one contiguous buffer that byte strings are copied into, in order, by one writer at
//! a time, and read back as one slice spanning several of them, without a lock.
//!
//! Why: a topic ring's reader hands its batch to the socket in one vectored write, and a batch
//! of k frames held as k separate `Bytes` is k `IoSlice`s; the kernel walks and copies each.
//! With each chunk's frames also copied into one arena at publish (one small `memcpy` under the
//! sequencer), a run of consecutive frames is one slice however many it holds.
//! `benches/writev.rs` measures the system call with many small slices against one.
//!
//! The same write-once discipline as [`AppendOnly`](super::AppendOnly), with variable-sized
//! entries: bytes below the end of the last published entry are written once and never again;
//! the writer writes only past it. Soundness does not rest on the callers: `push` claims the
//! writer's side with an atomic flag (a second writer at the same time panics instead of
//! racing), and `get` checks its range against the published count, so no safe call reads a
//! byte that is not written. Under loom each entry's bytes are one tracked cell
//! ([`SlotAccess`]), so a read not ordered after the write it reads fails a model.

// The unsafe blocks below are this module's reason to exist; each carries its `// SAFETY:`.
#![allow(unsafe_code)]

use std::ops::Range;
use std::ptr::NonNull;

use super::{AtomicBool, AtomicUsize, Ordering, SlotAccess};

/// Up to `N` byte strings, written once each, in order, by one writer at a time, into one buffer
/// of a capacity fixed at creation; the first [`len`](Arena::len) entries are readable, any run
/// of consecutive ones as one slice, by anyone, without a lock.
pub(crate) struct Arena<const N: usize> {
    /// The buffer, `capacity` bytes allocated by a `Vec<u8>` (which `Drop` gives back). Bytes
    /// below the end of entry `filled - 1` are written and never written again; bytes past it
    /// are touched only by the writer holding `writing`. Held as a raw pointer, never as a
    /// `&mut`, so writing past the published bytes does not alias a reader's slice.
    buf: NonNull<u8>,
    /// The buffer's capacity.
    capacity: usize,
    /// Where each entry ends in `buf`: stored by the writer before `filled` counts the entry.
    ends: [AtomicUsize; N],
    /// Loom's record of each entry's bytes (zero-sized outside loom).
    access: [SlotAccess; N],
    /// How many entries are written: stored with `Release` after each write.
    filled: AtomicUsize,
    /// Held by the writer for the length of one `push`.
    writing: AtomicBool,
}

// SAFETY: the buffer is plain bytes owned by the arena (freed in `Drop`); a shared `Arena` hands
// out `&[u8]` of written bytes only, which no one writes again, and every write is made by the
// one writer holding `writing`, to bytes no reader can see yet (see `push`).
unsafe impl<const N: usize> Send for Arena<N> {}
// SAFETY: as for `Send`.
unsafe impl<const N: usize> Sync for Arena<N> {}

impl<const N: usize> Arena<N> {
    /// An empty arena with room for `capacity` bytes.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let mut buf = std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(capacity));
        let capacity = buf.capacity();
        // A `Vec`'s pointer is never null (dangling when it allocated nothing).
        let ptr = NonNull::new(buf.as_mut_ptr()).unwrap_or(NonNull::dangling());
        Arena {
            buf: ptr,
            capacity,
            ends: std::array::from_fn(|_| AtomicUsize::new(0)),
            access: std::array::from_fn(|_| SlotAccess::new()),
            filled: AtomicUsize::new(0),
            writing: AtomicBool::new(false),
        }
    }

    /// How many entries are written (and readable).
    pub(crate) fn len(&self) -> usize {
        // Acquire pairs with the Release in `push`: the entries counted are visible.
        self.filled.load(Ordering::Acquire)
    }

    /// Copies `bytes` in as the next entry and returns its index, or `None` when all `N` are
    /// written or the room left is too small (nothing is written then).
    ///
    /// # Panics
    ///
    /// If another `push` on the same arena runs at the same time: callers serialise their
    /// writers (the ring's publisher holds the hub's sequencer), and this makes a broken
    /// caller panic rather than race.
    pub(crate) fn push(&self, bytes: &[u8]) -> Option<usize> {
        // Acquire pairs with the Release that ends the previous push, on whatever thread it
        // ran: this writer sees its count and its end.
        let busy = self.writing.swap(true, Ordering::Acquire);
        assert!(!busy, "two writers pushed to the same arena at once");
        // Relaxed, both: only writers store them, and the claim above orders them.
        let index = self.filled.load(Ordering::Relaxed);
        let start = index.checked_sub(1).map_or(0, |i| self.ends[i].load(Ordering::Relaxed));
        if index == N || self.capacity - start < bytes.len() {
            self.writing.store(false, Ordering::Release);
            return None;
        }
        let end = start + bytes.len();
        self.access[index].write();
        // SAFETY: `start..end` lies in the buffer (checked against the capacity above) and past
        // every published entry, so no reader may look at it (`get` only reads published
        // entries); the claim makes this the only writer, and `filled` moves past these bytes
        // right after this one write. `bytes` is another allocation (the caller's frame).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.buf.as_ptr().add(start),
                bytes.len(),
            );
        }
        // Relaxed: the Release on `filled` below publishes it with the bytes.
        self.ends[index].store(end, Ordering::Relaxed);
        // Release: a reader that loads the new count sees the bytes and the end written above.
        self.filled.store(index + 1, Ordering::Release);
        // Release: the next writer's Acquire sees this push.
        self.writing.store(false, Ordering::Release);
        Some(index)
    }

    /// The bytes of the written entries `range`, consecutive in the buffer, as one slice.
    ///
    /// # Panics
    ///
    /// If `range` reaches past the written entries.
    pub(crate) fn get(&self, range: Range<usize>) -> &[u8] {
        let filled = self.len();
        assert!(
            range.start <= range.end && range.end <= filled,
            "read of entries {range:?} with {filled} written"
        );
        if range.is_empty() {
            return &[];
        }
        // Relaxed: the Acquire in `len` pairs with the Release that published these ends.
        let start = range.start.checked_sub(1).map_or(0, |i| self.ends[i].load(Ordering::Relaxed));
        let end = self.ends[range.end - 1].load(Ordering::Relaxed);
        debug_assert!(start <= end && end <= self.capacity);
        for access in &self.access[range] {
            access.read();
        }
        // SAFETY: `start..end` are the bytes of published entries: in the buffer (each push
        // checked its end against the capacity), initialised by their one write, which happens
        // before this read (the Acquire in `len` pairs with the Release after it), and never
        // written again (the writer writes only past the last published entry). The buffer is
        // freed only through `&mut self`, so the bytes outlive the borrow.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().add(start), end - start) }
    }
}

impl<const N: usize> Drop for Arena<N> {
    fn drop(&mut self) {
        // Acquire: `&mut self` already orders every push before this (the last owner's `Arc`
        // drop synchronises); the ordering only spells that out.
        let filled = self.filled.load(Ordering::Acquire);
        for access in &self.access[..filled] {
            access.write();
        }
        // SAFETY: `buf` and `capacity` are those of the `Vec<u8>` `with_capacity` made and
        // never freed; a length of 0 drops no element (bytes need none), and `&mut self`
        // means no slice of the buffer is still borrowed.
        drop(unsafe { Vec::from_raw_parts(self.buf.as_ptr(), 0, self.capacity) });
    }
}

impl<const N: usize> std::fmt::Debug for Arena<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena").field("len", &self.len()).field("capacity", &self.capacity).finish()
    }
}

#[cfg(all(test, not(ssehub_loom)))]
mod tests {
    use super::*;

    #[test]
    fn consecutive_entries_read_back_as_one_slice_and_what_does_not_fit_is_refused() {
        let arena: Arena<4> = Arena::with_capacity(8);
        let room = arena.capacity;
        assert_eq!(arena.push(b"abc"), Some(0));
        assert_eq!(arena.push(b"de"), Some(1));
        assert_eq!(arena.get(0..2), b"abcde");
        assert_eq!(arena.get(1..2), b"de");
        assert_eq!(arena.get(1..1), b"");
        // Too big for the room left: refused, nothing written, the next small one still fits.
        assert_eq!(arena.push(&vec![b'x'; room]), None);
        assert_eq!(arena.push(b"f"), Some(2));
        assert_eq!(arena.get(0..3), b"abcdef");
        assert_eq!(arena.len(), 3);
        assert_eq!(arena.push(b""), Some(3));
        assert_eq!(arena.push(b"g"), None, "four entries at most");
    }

    #[test]
    #[should_panic(expected = "read of entries 0..2 with 1 written")]
    fn a_read_past_the_written_entries_panics() {
        let arena: Arena<4> = Arena::with_capacity(8);
        arena.push(b"a");
        let _ = arena.get(0..2);
    }

    #[test]
    fn an_arena_of_no_capacity_takes_only_empty_entries() {
        let arena: Arena<2> = Arena::with_capacity(0);
        assert_eq!(arena.push(b"a"), None);
        assert_eq!(arena.push(b""), Some(0));
        assert_eq!(arena.get(0..1), b"");
    }
}
