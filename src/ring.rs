//! The per-topic shared log that every reading subscriber of a topic takes its frames from.
//!
//! A publish appends one entry (a sequence number and a refcount of the frame) to the topic's
//! ring, whatever the number of subscribers; each subscriber keeps only a cursor into it, a
//! position it advances when it drains. So the publisher's work per event is O(1) plus a wake
//! for each subscriber actually parked, and the memory a burst costs is one entry per event per
//! topic rather than one per event per subscriber: at 10,000 subscribers the per-subscriber
//! queue design wrote (and later read back) 10,000 queue entries per event, most of them cache
//! misses, which is what kept fan-out several times slower than `tokio::sync::broadcast`.
//!
//! Slow-client policies become cursor arithmetic:
//!
//! - `DropOldest`: a reader more than its capacity behind skips ahead when it drains and reports
//!   the skipped count as lag.
//! - `Disconnect`: a reader more than its capacity behind is dropped. The publisher finds it at
//!   the very publish that overflowed it without looking at every reader on every publish: the
//!   log keeps `check_at`, the earliest position at which any `Disconnect` reader can overflow
//!   (cursors only move forward, so none can overflow before it). When the tail reaches it, the
//!   publisher scans the readers once, drops those over their bound, trims entries everyone has
//!   read, and computes the next `check_at`. Scans also come at least every `max(readers, 16)`
//!   publishes, so trimming keeps a quiet topic's log short; amortised, a publish reads about
//!   one cursor.
//!
//! `Conflate` subscribers do not read rings: replacing a queued frame by key needs a queue of
//! their own, so they keep the per-subscriber queue (`queue.rs`).
//!
//! Parked readers register in the ring's `parked` list, in the order they parked; a publish takes
//! the list and wakes each of them once, in that order, after the hub's watermark says the event
//! is complete (see `Shared::sequenced`). A reader's `parked` flag keeps it in the list at most
//! once; the list's allocation is reused from publish to publish.
//! Waking in park order keeps each reader's place from one event to the next (the order they
//! drained in), so a reader's latency does not depend on where a hash put it.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::idmap::IdMap;
use crate::queue::{Queue, SlowPolicy};
use crate::sync::{lock, Arc, AtomicBool, AtomicU64, Mutex, Ordering};

/// Scans come at least this often (in publishes), so a quiet topic's log stays short.
const MIN_SCAN_INTERVAL: u64 = 16;

/// One subscriber reading one topic's ring: what the ring needs of it (its id, its bound and
/// policy, and its queue, whose waker a publish wakes and which a scan closes as slow), with
/// nothing that leads back to its rings.
#[derive(Debug)]
pub(crate) struct Member {
    /// The subscriber's id.
    pub(crate) id: u64,
    /// The subscriber's queue.
    pub(crate) queue: Arc<Queue>,
    /// The position of the next entry to read. Set at registration, then moved by the
    /// subscriber's looks and by a disconnect taking its entries in, both with a
    /// compare-and-swap (`Member::claim`, `reader.rs`); read by the publisher's scans and by
    /// `queued()`.
    pub(crate) cursor: AtomicU64,
    /// In the ring's current parked list, so parking again has nothing to do. Read and
    /// written only under the ring's `parked` lock.
    parked: AtomicBool,
    /// Left the ring: not listed again, not woken, and dropped from the list by the next wake
    /// or compaction.
    left: AtomicBool,
}

impl Member {
    /// The subscriber's bound.
    fn capacity(&self) -> u64 {
        self.queue.capacity() as u64
    }

    /// Whether the subscriber is dropped (rather than skipped ahead) when it falls behind.
    fn disconnects(&self) -> bool {
        self.queue.policy() == SlowPolicy::Disconnect
    }
}

/// Entries per chunk of the log.
pub(crate) const CHUNK: usize = 64;

/// A run of up to [`CHUNK`] consecutive entries. Readers take a reference to a chunk and a
/// range in it as their batch (one refcount for the whole batch instead of one per frame);
/// the publisher appends to the last chunk in place when no reader holds it, and copies it
/// first when one does (at most `CHUNK - 1` refcounts per publish, never per subscriber).
#[derive(Debug, Clone, Default)]
pub(crate) struct Chunk {
    /// Each entry's sequence number.
    seqs: Vec<u64>,
    /// Each entry's frame.
    pub(crate) frames: Vec<Bytes>,
}

/// A reader's batch straight out of one chunk: `frames[start..end]`.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    /// The chunk.
    pub(crate) chunk: Arc<Chunk>,
    /// The first frame.
    pub(crate) start: usize,
    /// One past the last frame.
    pub(crate) end: usize,
}

impl Run {
    /// The frames.
    pub(crate) fn frames(&self) -> &[Bytes] {
        &self.chunk.frames[self.start..self.end]
    }
}

/// The log under its lock.
#[derive(Debug)]
struct Log {
    /// The entries, in chunks: every chunk but the last holds [`CHUNK`] entries.
    chunks: VecDeque<Arc<Chunk>>,
    /// The position of the first entry of `chunks[0]`: the oldest entry still readable.
    first: u64,
    /// The position the next entry gets.
    tail: u64,
    /// The fewest entries kept: the largest bound of any reader (up to `CHUNK - 1` more are
    /// kept, since chunks go whole).
    capacity: usize,
    /// When the tail reaches this position, the publisher scans the readers.
    check_at: u64,
}

impl Log {
    /// The position the next entry gets.
    fn tail(&self) -> u64 {
        self.tail
    }

    /// The number of entries held.
    fn len(&self) -> usize {
        usize::try_from(self.tail - self.first).unwrap_or(usize::MAX)
    }

    /// The entry at index `i` (0 is the oldest held).
    fn entry(&self, i: usize) -> (u64, &Bytes) {
        let chunk = &self.chunks[i / CHUNK];
        (chunk.seqs[i % CHUNK], &chunk.frames[i % CHUNK])
    }

    /// Drops whole chunks from the front while they lie before position `keep_from`; returns
    /// them so they are released outside the lock.
    fn drop_before(&mut self, keep_from: u64) -> Vec<Arc<Chunk>> {
        let mut dropped = Vec::new();
        while self.chunks.len() > 1 && self.first + CHUNK as u64 <= keep_from {
            dropped.extend(self.chunks.pop_front());
            self.first += CHUNK as u64;
        }
        if self.chunks.len() == 1 && self.tail <= keep_from && self.tail % CHUNK as u64 == 0 {
            // The last chunk is full and read by everyone: it can go too.
            dropped.extend(self.chunks.pop_front());
            self.first = self.tail;
        }
        dropped
    }
}

/// What a scan found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Readers over their bound whose policy is `Disconnect`.
    pub(crate) slow: Vec<Arc<Member>>,
}

/// What one reader took from a ring.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Taken {
    /// Entries handed over.
    pub(crate) count: usize,
    /// Entries skipped because the reader was more than its bound behind (`DropOldest`).
    pub(crate) skipped: u64,
    /// The reader fell more than its bound behind and its policy is `Disconnect`.
    pub(crate) overflowed: bool,
    /// The position the reader read from (after any skip).
    pub(crate) from: u64,
}

/// A topic's shared log.
#[derive(Debug)]
pub(crate) struct Ring {
    /// The entries.
    log: Mutex<Log>,
    /// The tail position, mirrored for lock-free "anything new?" checks.
    tail: AtomicU64,
    /// Readers waiting for the next entry.
    parked: Mutex<Parked>,
}

/// The readers waiting for a ring's next entry.
#[derive(Debug, Default)]
struct Parked {
    /// In the order they parked; some may have left since.
    list: Vec<Arc<Member>>,
    /// The list the last wake took, emptied and given back for its allocation.
    spare: Vec<Arc<Member>>,
    /// How many in `list` left (an upper bound): when they are half of it, it is compacted,
    /// so a quiet topic's churn does not grow it.
    left: usize,
}

impl Parked {
    /// Takes the whole list (leaving `with` in its place), every member unlisted.
    fn take(&mut self, with: Vec<Arc<Member>>) -> Vec<Arc<Member>> {
        self.left = 0;
        for member in &self.list {
            member.parked.store(false, Ordering::Relaxed);
        }
        std::mem::replace(&mut self.list, with)
    }
}

impl Ring {
    /// An empty ring; allocates nothing until the first entry.
    pub(crate) fn new() -> Ring {
        Ring {
            log: Mutex::new(Log {
                chunks: VecDeque::new(),
                first: 0,
                tail: 0,
                capacity: 1,
                check_at: MIN_SCAN_INTERVAL,
            }),
            tail: AtomicU64::new(0),
            parked: Mutex::new(Parked::default()),
        }
    }

    /// The tail position: readers whose cursor is here have read everything.
    pub(crate) fn tail(&self) -> u64 {
        // Acquire pairs with the Release in `push`: a reader that sees the new tail sees the
        // entry too (it reads entries under the log's lock anyway).
        self.tail.load(Ordering::Acquire)
    }

    /// Registers a reader with `capacity`: grows the log's bound to it, makes sure the next
    /// scan comes before the reader can overflow, and returns the position it starts at (the
    /// tail: it receives what is published from now on).
    pub(crate) fn join(&self, capacity: usize) -> u64 {
        let mut log = lock(&self.log);
        log.capacity = log.capacity.max(capacity);
        let tail = log.tail();
        log.check_at = log.check_at.min(tail + capacity as u64 + 1);
        tail
    }

    /// Forgets a reader that left: it no longer waits for a wake. Amortised O(1): it stays in
    /// the list until the next wake, or until leavers are half the list.
    pub(crate) fn leave(&self, member: &Member) {
        member.left.store(true, Ordering::Release);
        let mut parked = lock(&self.parked);
        if member.parked.load(Ordering::Relaxed) {
            parked.left += 1;
            if parked.left * 2 > parked.list.len() {
                parked.list.retain(|m| !m.left.load(Ordering::Acquire));
                parked.left = 0;
            }
        }
    }

    /// Drops every entry (the last reader left); positions keep counting.
    pub(crate) fn clear(&self) {
        let dropped = {
            let mut log = lock(&self.log);
            // `check_at` stays: a publish still holding a snapshot with the leavers scans them
            // at the same point as it would have, and a scan of nobody sets the next one.
            // Positions stay chunk-aligned: the next chunk starts at the next multiple.
            let aligned = log.tail().next_multiple_of(CHUNK as u64);
            log.first = aligned;
            log.tail = aligned;
            self.tail.store(aligned, Ordering::Release);
            std::mem::take(&mut log.chunks)
        };
        // Nobody reads the ring any more: members still listed have left (or were dropped as
        // slow and closed, which wakes them itself), and would keep their subscribers alive
        // until this topic's next publish.
        let listed = lock(&self.parked).take(Vec::new());
        // Frames and members are released outside the locks.
        drop(dropped);
        drop(listed);
    }

    /// Appends one entry, evicting the oldest when full. Returns whether the readers must be
    /// scanned now ([`Ring::scan`]). Called under the hub's sequencer only, so entries are in
    /// sequence order.
    pub(crate) fn push(&self, seq: u64, frame: &Bytes) -> bool {
        let evicted;
        let scan;
        {
            let mut log = lock(&self.log);
            if log.len() % CHUNK == 0 {
                log.chunks.push_back(Arc::new(Chunk {
                    seqs: Vec::with_capacity(CHUNK),
                    frames: Vec::with_capacity(CHUNK),
                }));
            }
            if let Some(last) = log.chunks.back_mut() {
                if Arc::get_mut(last).is_none() {
                    // A reader's batch holds it: copy it (the reader keeps the old one).
                    let copy = Chunk {
                        seqs: {
                            let mut v = Vec::with_capacity(CHUNK);
                            v.extend_from_slice(&last.seqs);
                            v
                        },
                        frames: {
                            let mut v = Vec::with_capacity(CHUNK);
                            v.extend_from_slice(&last.frames);
                            v
                        },
                    };
                    *last = Arc::new(copy);
                }
                if let Some(chunk) = Arc::get_mut(last) {
                    chunk.seqs.push(seq);
                    chunk.frames.push(frame.clone());
                }
            }
            log.tail += 1;
            // Keep at least `capacity` entries; older whole chunks go.
            let keep_from = log.tail.saturating_sub(log.capacity as u64);
            evicted = log.drop_before(keep_from);
            let tail = log.tail();
            scan = tail >= log.check_at;
            // Release: see `tail`.
            self.tail.store(tail, Ordering::Release);
        }
        drop(evicted);
        scan
    }

    /// Checks every reader against its bound: `Disconnect` readers more than their bound
    /// behind are returned to be dropped; entries every remaining reader has read are trimmed;
    /// the next check is scheduled. Called by the publisher under the hub's sequencer.
    pub(crate) fn scan(&self, readers: &IdMap<Arc<Member>>) -> Scan {
        let mut scan = Scan::default();
        let trimmed;
        {
            let mut log = lock(&self.log);
            let tail = log.tail();
            let mut keep_from = tail;
            let mut check_at = tail + (readers.len() as u64).max(MIN_SCAN_INTERVAL);
            readers.for_each(|member| {
                // Acquire pairs with the Release in `advance`.
                let cursor = member.cursor.load(Ordering::Acquire);
                let capacity = member.capacity();
                if member.disconnects() {
                    if tail - cursor.min(tail) > capacity || cursor < log.first {
                        scan.slow.push(member.clone());
                        return;
                    }
                    check_at = check_at.min(cursor + capacity + 1);
                    keep_from = keep_from.min(cursor);
                } else {
                    // A lagging `DropOldest` reader will skip to `tail - capacity` anyway.
                    keep_from = keep_from.min(cursor.max(tail.saturating_sub(capacity)));
                }
            });
            log.check_at = check_at;
            trimmed = log.drop_before(keep_from);
        }
        drop(trimmed);
        scan
    }

    /// Takes up to `max_frames` entries (and about `max_bytes`, at least one entry) at or after
    /// `cursor` with a sequence number up to `upto`, handing each to `sink`, and applying the
    /// reader's bound: a reader more than `capacity` behind skips ahead (`DropOldest`) or is
    /// reported overflowed (`Disconnect`, nothing taken). Does not move the cursor
    /// ([`Member::advance`] does).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn take(
        &self,
        cursor: u64,
        capacity: usize,
        policy: SlowPolicy,
        upto: u64,
        max_frames: usize,
        max_bytes: usize,
        mut sink: impl FnMut(u64, &Bytes),
    ) -> Taken {
        self.take_with(cursor, capacity, policy, upto, max_frames, max_bytes, |log, at, taken| {
            for i in at..at + taken.count {
                let (seq, frame) = log.entry(i);
                sink(seq, frame);
            }
        })
    }

    /// [`Ring::take`] for a subscriber's whole batch: a [`Run`] of one chunk when the entries
    /// lie in one (one refcount for the batch), otherwise the frames appended to `out`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn take_run(
        &self,
        cursor: u64,
        capacity: usize,
        policy: SlowPolicy,
        upto: u64,
        max_frames: usize,
        max_bytes: usize,
        out: &mut Vec<Bytes>,
    ) -> (Taken, Option<Run>) {
        let mut run = None;
        let taken = self.take_with(
            cursor,
            capacity,
            policy,
            upto,
            max_frames,
            max_bytes,
            |log, at, taken| {
                let (first, last) = (at / CHUNK, (at + taken.count - 1) / CHUNK);
                if first == last {
                    let start = at % CHUNK;
                    let chunk = log.chunks[first].clone();
                    run = Some(Run { chunk, start, end: start + taken.count });
                } else {
                    out.reserve(taken.count);
                    for i in at..at + taken.count {
                        out.push(log.entry(i).1.clone());
                    }
                }
            },
        );
        (taken, run)
    }

    /// Works out what a reader takes (see [`Ring::take`]), then has `copy` copy that run of
    /// entries (from index `at`, `taken.count` of them) with the log locked.
    #[allow(clippy::too_many_arguments)]
    fn take_with(
        &self,
        cursor: u64,
        capacity: usize,
        policy: SlowPolicy,
        upto: u64,
        max_frames: usize,
        max_bytes: usize,
        copy: impl FnOnce(&Log, usize, &Taken),
    ) -> Taken {
        let mut taken = Taken { from: cursor, ..Taken::default() };
        if self.tail() <= cursor {
            return taken;
        }
        let log = lock(&self.log);
        let tail = log.tail();
        let oldest = log.first.max(tail.saturating_sub(capacity as u64));
        let mut from = cursor;
        if from < oldest {
            if policy == SlowPolicy::Disconnect {
                taken.overflowed = true;
                return taken;
            }
            taken.skipped = oldest - from;
            from = oldest;
        }
        taken.from = from;
        let at = usize::try_from(from - log.first).unwrap_or(usize::MAX).min(log.len());
        let end = log.len().min(at.saturating_add(max_frames.max(1)));
        let mut bytes: usize = 0;
        for i in at..end {
            let (seq, frame) = log.entry(i);
            // Sequence numbers rise along the log: stop at the first one past `upto`.
            if seq > upto || (taken.count > 0 && bytes.saturating_add(frame.len()) > max_bytes) {
                break;
            }
            bytes += frame.len();
            taken.count += 1;
        }
        if taken.count > 0 {
            copy(&log, at, &taken);
        }
        taken
    }

    /// The number of entries a reader at `cursor` with `capacity` has waiting.
    pub(crate) fn waiting(&self, cursor: u64, capacity: usize) -> usize {
        usize::try_from(self.tail().saturating_sub(cursor).min(capacity as u64)).unwrap_or(0)
    }

    /// Registers `member` to be woken by the next publish to this ring.
    ///
    /// Always under the lock, even when the reader is listed already: that lock is what orders
    /// the caller's next drain after any take that missed it (the publish behind that take
    /// completed before it), so either the take wakes the reader or its drain sees the event.
    /// The caller has stored its waker (in its queue) before.
    pub(crate) fn park(&self, member: &Arc<Member>) {
        let mut parked = lock(&self.parked);
        // A reader that left is not listed again (`leave` sets the flag before its lock).
        if member.parked.load(Ordering::Relaxed) || member.left.load(Ordering::Acquire) {
            return;
        }
        member.parked.store(true, Ordering::Relaxed);
        parked.list.push(member.clone());
    }

    /// Wakes every parked reader (each once, in the order they parked) and forgets them.
    pub(crate) fn wake_parked(&self) {
        let mut list = {
            let mut parked = lock(&self.parked);
            if parked.list.is_empty() {
                return;
            }
            let spare = std::mem::take(&mut parked.spare);
            parked.take(spare)
        };
        for member in list.drain(..) {
            if !member.left.load(Ordering::Acquire) {
                member.queue.wake();
            }
        }
        let mut parked = lock(&self.parked);
        if parked.spare.capacity() < list.capacity() {
            parked.spare = list;
        }
    }

    /// The number of entries held (for tests).
    #[cfg(all(test, not(ssehub_loom)))]
    pub(crate) fn len(&self) -> usize {
        lock(&self.log).len()
    }
}

impl Member {
    /// Subscriber `id`, with `queue`, reading a ring from `cursor`.
    pub(crate) fn new(id: u64, queue: Arc<Queue>, cursor: u64) -> Member {
        Member {
            id,
            queue,
            cursor: AtomicU64::new(cursor),
            parked: AtomicBool::new(false),
            left: AtomicBool::new(false),
        }
    }

    /// Moves the cursor to `to` after the subscriber took entries up to there (the reader
    /// moves it with `Member::claim`, in `reader.rs`).
    #[cfg(all(test, not(ssehub_loom)))]
    pub(crate) fn advance(&self, to: u64) {
        // Release: a scan that reads this cursor must see the reader as having read up to it.
        self.cursor.store(to, Ordering::Release);
    }

    /// The reader's cursor.
    pub(crate) fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Acquire)
    }
}

#[cfg(all(test, not(ssehub_loom)))]
mod tests {
    use super::*;

    fn frame(n: u64) -> Bytes {
        Bytes::from(format!("data: {n}\n\n"))
    }

    fn reader(id: u64, capacity: usize, policy: SlowPolicy, ring: &Ring) -> Arc<Member> {
        let queue = Arc::new(Queue::new(capacity, policy));
        Arc::new(Member::new(id, queue, ring.join(capacity)))
    }

    fn take_all(ring: &Ring, member: &Member) -> (Vec<u64>, Taken) {
        let mut seqs = Vec::new();
        let (capacity, policy) = (member.capacity() as usize, member.queue.policy());
        let taken = ring
            .take(member.cursor(), capacity, policy, u64::MAX, 64, 1 << 20, |s, _| seqs.push(s));
        if !taken.overflowed {
            member.advance(taken.from + taken.count as u64);
        }
        (seqs, taken)
    }

    #[test]
    fn a_reader_takes_what_was_published_after_it_joined_and_only_up_to_the_watermark() {
        let ring = Ring::new();
        ring.push(1, &frame(1));
        let member = reader(1, 8, SlowPolicy::Disconnect, &ring);
        for seq in 2..=4 {
            ring.push(seq, &frame(seq));
        }
        let mut seqs = Vec::new();
        let taken =
            ring.take(member.cursor(), 8, SlowPolicy::Disconnect, 3, 64, 1 << 20, |s, _| {
                seqs.push(s)
            });
        assert_eq!((seqs, taken.count), (vec![2, 3], 2));
        member.advance(taken.from + 2);
        assert_eq!(take_all(&ring, &member).0, [4]);
        assert_eq!(take_all(&ring, &member).0, Vec::<u64>::new());
    }

    #[test]
    fn drop_oldest_skips_ahead_and_reports_the_skip() {
        let ring = Ring::new();
        let member = reader(1, 3, SlowPolicy::DropOldest, &ring);
        for seq in 1..=10 {
            ring.push(seq, &frame(seq));
        }
        let (seqs, taken) = take_all(&ring, &member);
        assert_eq!((seqs, taken.skipped), (vec![8, 9, 10], 7));
    }

    #[test]
    fn the_scan_finds_a_disconnect_reader_at_the_publish_that_overflows_it() {
        let ring = Ring::new();
        let stuck = reader(1, 4, SlowPolicy::Disconnect, &ring);
        let keeping_up = reader(2, 4, SlowPolicy::Disconnect, &ring);
        let readers = IdMap::new().insert(1, stuck.clone()).insert(2, keeping_up.clone());
        for seq in 1..=4 {
            assert!(!ring.push(seq, &frame(seq)), "no overflow possible before the fifth");
            take_all(&ring, &keeping_up);
        }
        assert!(ring.push(5, &frame(5)));
        let slow: Vec<u64> = ring.scan(&readers).slow.iter().map(|m| m.id).collect();
        assert_eq!(slow, [1]);
        assert!(take_all(&ring, &stuck).1.overflowed);
    }

    /// What a reader with a bound of 1,024 takes from `ring` at its cursor, as a batch.
    fn run_at(ring: &Ring, member: &Member, out: &mut Vec<Bytes>) -> (Taken, Option<Run>) {
        let policy = SlowPolicy::Disconnect;
        ring.take_run(member.cursor(), 1024, policy, u64::MAX, 64, 1 << 20, out)
    }

    #[test]
    fn a_chunk_held_by_a_batch_is_copied_before_an_append_and_the_batch_stays_intact() {
        let ring = Ring::new();
        let member = reader(1, 1024, SlowPolicy::Disconnect, &ring);
        ring.push(1, &frame(1));
        let mut out = Vec::new();
        let (taken, run) = run_at(&ring, &member, &mut out);
        let run = run.expect("one chunk");
        member.advance(taken.from + 1);
        ring.push(2, &frame(2));
        assert_eq!(run.frames(), [frame(1)], "the batch still sees only what it took");
        let (_, next) = run_at(&ring, &member, &mut out);
        assert_eq!(next.expect("one chunk").frames(), [frame(2)]);
    }

    #[test]
    fn a_batch_across_two_chunks_is_copied_out() {
        let ring = Ring::new();
        let member = reader(1, 1024, SlowPolicy::Disconnect, &ring);
        for seq in 1..=(CHUNK as u64 + 10) {
            ring.push(seq, &frame(seq));
        }
        member.advance(CHUNK as u64 - 5);
        let mut out = Vec::new();
        let (taken, run) = run_at(&ring, &member, &mut out);
        assert!(run.is_none());
        assert_eq!((taken.count, out.len()), (15, 15));
        assert_eq!(out[0], frame(CHUNK as u64 - 4));
    }

    #[test]
    fn scans_trim_what_every_reader_has_read() {
        let ring = Ring::new();
        let member = reader(1, 1024, SlowPolicy::Disconnect, &ring);
        let readers = IdMap::new().insert(1, member.clone());
        for seq in 1..=100 {
            if ring.push(seq, &frame(seq)) {
                assert!(ring.scan(&readers).slow.is_empty());
            }
            take_all(&ring, &member);
            // Whole chunks go: what is kept is the unread tail's chunk.
            assert!(ring.len() <= CHUNK + MIN_SCAN_INTERVAL as usize, "{} kept", ring.len());
        }
    }

    fn parked_ids(ring: &Ring) -> Vec<u64> {
        lock(&ring.parked).list.iter().map(|m| m.id).collect()
    }

    /// Readers 1 to `n` of `ring`, parked in that order when `park` says so.
    fn readers(ring: &Ring, n: u64, park: bool) -> Vec<Arc<Member>> {
        let readers: Vec<_> =
            (1..=n).map(|id| reader(id, 8, SlowPolicy::Disconnect, ring)).collect();
        if park {
            readers.iter().for_each(|r| ring.park(r));
        }
        readers
    }

    #[test]
    fn parked_readers_are_listed_once_in_park_order_and_relisted_after_a_wake() {
        let ring = Ring::new();
        let readers = readers(&ring, 3, false);
        for i in [2, 0, 1, 0, 2] {
            ring.park(&readers[i]);
        }
        assert_eq!(parked_ids(&ring), [3, 1, 2]);
        ring.wake_parked();
        assert!(parked_ids(&ring).is_empty());
        ring.park(&readers[1]);
        assert_eq!(parked_ids(&ring), [2]);
    }

    #[test]
    fn leavers_are_not_relisted_and_are_compacted_away_when_half_the_list() {
        let ring = Ring::new();
        let readers = readers(&ring, 10, true);
        for r in &readers[..5] {
            ring.leave(r);
        }
        // Five of ten left: not yet more than half, so they stay until a wake or compaction.
        assert_eq!(parked_ids(&ring).len(), 10);
        ring.leave(&readers[5]);
        assert_eq!(parked_ids(&ring), [7, 8, 9, 10]);
        ring.park(&readers[0]);
        assert_eq!(parked_ids(&ring), [7, 8, 9, 10]);
        // A wake forgets leavers still listed.
        ring.leave(&readers[6]);
        ring.wake_parked();
        assert!(parked_ids(&ring).is_empty());
    }

    #[test]
    fn clearing_a_ring_its_last_reader_left_forgets_the_listed_leavers() {
        let ring = Ring::new();
        let readers = readers(&ring, 4, true);
        ring.leave(&readers[0]);
        assert_eq!(parked_ids(&ring).len(), 4);
        ring.clear();
        assert!(parked_ids(&ring).is_empty());
        assert_eq!(Arc::strong_count(&readers[0]), 1);
    }
}
