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
//! # Readers take no lock
//!
//! Entries live in chunks of [`CHUNK`] write-once slots ([`AppendOnly`]): the publisher writes
//! an entry's slot, then stores the ring's tail with `Release`. A reader loads the tail with
//! `Acquire`, then the snapshot of the chunk list (an [`ArcSwapOption`], loaded without a
//! lock), and reads only slots below that tail, which are written and never written again. Its
//! batch, when the entries lie in one chunk, is a [`Run`]: the chunk's `Arc` and a range, so
//! the publisher goes on writing the chunk's later slots without copying anything. The list is
//! swapped whole: a new list every [`CHUNK`] publishes (a chunk appended), and trimming (whole
//! chunks from the front) by `rcu`. A trimmed chunk is freed when the last batch holding it is
//! dropped, so no reader ever reads a freed slot. The publisher takes no lock either: publishes
//! to a ring are serialised by the engine's sequencer; should two ever write one chunk at once,
//! the slots' claim makes the second panic rather than race on a slot. `join` and `clear` run
//! under the registry's writer lock, not the sequencer: they only update atomics and swap the
//! list, never slots or the tail. The one lock left is the parked list's (see below), taken to
//! park, to leave and to wake.
//!
//! An idle ring holds no chunk (its list is empty, which allocates nothing); the publisher
//! allocates a chunk when it writes its first slot, so at most one chunk is ahead of need; an
//! idle subscriber costs its cursor.
//!
//! Slow-client policies become cursor arithmetic:
//!
//! - `DropOldest`: a reader more than its capacity behind skips ahead when it drains and reports
//!   the skipped count as lag.
//! - `Disconnect`: a reader more than its capacity behind is dropped. The publisher finds it at
//!   the very publish that overflowed it without looking at every reader on every publish: the
//!   ring keeps `check_at`, the earliest position at which any `Disconnect` reader can overflow
//!   (cursors only move forward, so none can overflow before it). When the tail reaches it, the
//!   publisher scans the readers once, drops those over their bound, trims entries everyone has
//!   read, and computes the next `check_at`. Scans also come at least every `max(readers, 16)`
//!   publishes, so trimming keeps a quiet topic's log short; amortised, a publish reads about
//!   one cursor.
//!
//! A reader whose cursor fell below the oldest chunk still held is treated like one more than
//! its bound behind: it skips to the oldest entry (`DropOldest`) or is overflowed
//! (`Disconnect`).
//!
//! `Conflate` subscribers do not read rings: replacing a queued frame by key needs a queue of
//! their own, so they keep the per-subscriber queue (`queue.rs`).
//!
//! Parked readers register in the ring's `parked` list, with their wakers, in the order they
//! parked; a publish takes the list and wakes each of them once, in that order, after the
//! engine's watermark says the event is complete (see `Engine::sequenced` in `pipeline.rs`).
//! The waker is kept in the list (not in the reader's queue, where its poll registers it too,
//! for pushes) so a wake touches the list and the reader's task, not the reader's queue: at
//! 10,000 parked readers each line of a reader's it touches is a cache miss. A reader's
//! `parked` flag keeps it in the list at most once (parking again replaces its waker if the
//! new one wakes another task); the list's allocation is reused from publish to publish.
//! The list's lock is what makes a reader's second look sound (see [`Ring::park`]). Waking in
//! park order keeps each reader's place from one event to the next (the order they drained in),
//! so a reader's latency does not depend on where a hash put it.

use std::task::Waker;

use bytes::Bytes;

use crate::engine::idmap::IdMap;
use crate::engine::queue::{Limits, Queue, SlowPolicy};
use crate::sync::{
    lock, rank, AppendOnly, Arc, ArcSwapOption, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering,
};

/// Scans come at least this often (in publishes), so a quiet topic's log stays short.
const MIN_SCAN_INTERVAL: u64 = 16;

/// One subscriber reading one topic's ring: what the ring needs of it (its id, its bound and
/// policy, and its queue, which a scan closes as slow), with
/// nothing that leads back to its rings.
///
/// Its bound is copied in, so a lock-free look (the cursor, the bound) reads the member and not
/// the queue's bound: at 10,000 subscribers every line a look touches is a cache miss.
/// (Aligning it to a cache line measured worse: its refcounts, which a park and a wake
/// touch, then sit on a line of their own.)
#[derive(Debug)]
pub(crate) struct Member {
    /// The subscriber's id.
    pub(crate) id: u64,
    /// The subscriber's queue.
    pub(crate) queue: Arc<Queue>,
    /// The position of the next entry to read. Set at registration, then moved by the
    /// subscriber's looks and by a disconnect taking its entries in, both with a
    /// compare-and-swap (`Member::claim`, `reader.rs`); read by the publisher's scans and by
    /// [`Ring::waiting`]'s callers.
    pub(crate) cursor: AtomicU64,
    /// In the ring's current parked list, so parking again only checks its waker. Read and
    /// written only under the ring's `parked` lock.
    parked: AtomicBool,
    /// Where in that list, while `parked`. Read and written only under the ring's `parked`
    /// lock.
    parked_at: AtomicUsize,
    /// Left the ring: not listed again, not woken, and dropped from the list by the next wake
    /// or compaction.
    left: AtomicBool,
    /// The queue's bound and policy (which never change), kept here so neither a look nor a
    /// scan reads the queue for them.
    bound: Bound,
}

impl Member {
    /// The subscriber's bound.
    fn capacity(&self) -> u64 {
        self.bound.capacity as u64
    }

    /// Whether the subscriber is dropped (rather than skipped ahead) when it falls behind.
    fn disconnects(&self) -> bool {
        self.bound.policy == SlowPolicy::Disconnect
    }

    /// The subscriber's bound and policy, as a take applies them.
    pub(crate) fn bound(&self) -> Bound {
        self.bound
    }
}

/// Entries per chunk of the log. Two under loom, so a model crosses a chunk boundary in a few
/// publishes.
#[cfg(not(ssehub_loom))]
pub(crate) const CHUNK: usize = 64;
/// Entries per chunk of the log. Two under loom, so a model crosses a chunk boundary in a few
/// publishes.
#[cfg(ssehub_loom)]
pub(crate) const CHUNK: usize = 2;

/// [`CHUNK`] consecutive positions of the log, written once each by the publisher. Readers take
/// a reference to a chunk and a range in it as their batch (one refcount for the whole batch
/// instead of one per frame); the publisher goes on writing the chunk's later slots meanwhile,
/// which the batch never looks at.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// The position of its first slot.
    base: u64,
    /// Each entry's sequence number, stored before its frame; read only for written frames,
    /// so the frame's publication orders it.
    seqs: [AtomicU64; CHUNK],
    /// Each entry's frame (a stream class's ring: its compressed block).
    frames: AppendOnly<Bytes, CHUNK>,
    /// A stream class's ring only: bit `i` set when entry `i`'s block ends a compression
    /// frame. Written before the entry's frame is pushed, so the push publishes it.
    ends: AtomicU64,
    /// A stream class's ring only: what each block stands for (see [`Side`]), pushed before
    /// the entry's frame, so the frame's push publishes it.
    sides: Option<Box<AppendOnly<Side, CHUNK>>>,
}

/// What a stream class's ring keeps beside each compressed block (`class.rs`): the event's
/// frame, for whoever cannot take the block (a subscriber outside the frame's context, a
/// disconnect handing entries over), and the event compressed alone, made by the first such
/// subscriber and shared by the rest.
#[derive(Debug)]
pub(crate) struct Side {
    /// The event's frame; empty for an entry that only ends a frame.
    pub(crate) identity: Bytes,
    /// The frame compressed on its own, once somebody needed it.
    pub(crate) solo: ArcSwapOption<Bytes>,
}

impl Side {
    /// The side of an entry whose event is `identity`.
    pub(crate) fn new(identity: Bytes) -> Side {
        Side { identity, solo: ArcSwapOption::empty() }
    }
}

/// A class ring's entry, as a class reader takes it.
#[derive(Debug)]
pub(crate) struct ClassEntry<'a> {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// The block, in the class's compression frame.
    pub(crate) block: &'a Bytes,
    /// The event's frame and its solo block.
    pub(crate) side: &'a Side,
    /// Whether the block ends the frame.
    pub(crate) ends: bool,
}

/// What a class ring's push adds beside the block.
#[derive(Debug)]
pub(crate) struct Extra {
    /// The event and its solo block.
    pub(crate) side: Side,
    /// Whether the block ends the compression frame.
    pub(crate) ends: bool,
}

impl Chunk {
    /// A chunk starting at position `base`, holding `frame` (sequence number `seq`) there,
    /// with `extra` when the ring is a class's (which makes it keep sides).
    fn starting(base: u64, seq: u64, frame: &Bytes, extra: &mut Option<Extra>) -> Chunk {
        let chunk = Chunk {
            base,
            seqs: std::array::from_fn(|_| AtomicU64::new(0)),
            frames: AppendOnly::new(),
            ends: AtomicU64::new(0),
            sides: extra.is_some().then(|| Box::new(AppendOnly::new())),
        };
        let _ = chunk.append(base, seq, frame, extra);
        chunk
    }

    /// One past its last position.
    fn end(&self) -> u64 {
        self.base + CHUNK as u64
    }

    /// Writes the entry at position `at` if that is this chunk's next free slot; otherwise
    /// (full, or `at` elsewhere) returns `false`. Publisher only.
    fn append(&self, at: u64, seq: u64, frame: &Bytes, extra: &mut Option<Extra>) -> bool {
        let next = self.base + self.frames.len() as u64;
        if at != next || at >= self.end() {
            return false;
        }
        let i = (at - self.base) as usize;
        // Relaxed: the frame's push below publishes it (Release).
        self.seqs[i].store(seq, Ordering::Relaxed);
        if let (Some(sides), Some(Extra { side, ends })) = (&self.sides, extra.take()) {
            if ends {
                // Relaxed: published by the frame's push, like the sequence number.
                self.ends.fetch_or(1u64 << i, Ordering::Relaxed);
            }
            if sides.push(side).is_err() {
                return false;
            }
        }
        self.frames.push(frame.clone()).is_ok()
    }

    /// Entry `i` (written) as a class reader takes it. A chunk of a ring that is not a
    /// class's has no sides: `None`.
    pub(crate) fn class_entry(&self, i: usize) -> Option<ClassEntry<'_>> {
        let side = self.sides.as_ref()?.get(i..i + 1).first()?;
        Some(ClassEntry {
            seq: self.seq(i),
            block: self.frames.get(i..i + 1).first()?,
            side,
            // Relaxed: callers read only written entries (see `seq`).
            ends: self.ends.load(Ordering::Relaxed) & (1u64 << i) != 0,
        })
    }

    /// Whether entry `i` (written) ends a compression frame (a class's ring).
    pub(crate) fn ends_at(&self, i: usize) -> bool {
        // Relaxed: callers read only written entries (see `seq`).
        self.ends.load(Ordering::Relaxed) & (1u64 << i) != 0
    }

    /// The sequence number at slot `i` (written).
    fn seq(&self, i: usize) -> u64 {
        // Relaxed: callers read only written slots, which they learned of through an Acquire
        // (the ring's tail, or the frames' count) that the publisher's Release paired with.
        self.seqs[i].load(Ordering::Relaxed)
    }
}

/// A reader's batch straight out of one chunk: slots `start..end`.
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
        self.chunk.frames.get(self.start..self.end)
    }

    /// Whether its last entry ends a compression frame (a class ring's run).
    pub(crate) fn ends_frame(&self) -> bool {
        self.end > self.start && self.chunk.ends_at(self.end - 1)
    }

    /// The sequence number of its first frame (for the `metrics` feature's latency).
    #[cfg(all(feature = "metrics", any(feature = "server", feature = "axum", feature = "hyper")))]
    pub(crate) fn first_seq(&self) -> u64 {
        self.chunk.seq(self.start)
    }
}

/// The chunks readers may read, as one snapshot: swapped whole (a chunk appended every
/// [`CHUNK`] publishes, whole chunks trimmed from the front), never changed in place.
#[derive(Debug)]
struct Log {
    /// Consecutive chunks, oldest first; never empty (an empty log is no snapshot at all).
    chunks: Vec<Arc<Chunk>>,
}

impl Log {
    /// The position of the oldest entry still readable.
    fn first(&self) -> u64 {
        self.chunks.first().map_or(u64::MAX, |c| c.base)
    }

    /// The chunk holding position `at`, if the log still (or already) has it.
    fn chunk(&self, at: u64) -> Option<&Arc<Chunk>> {
        let index = at.checked_sub(self.first())? / CHUNK as u64;
        self.chunks.get(usize::try_from(index).ok()?)
    }

    /// Hands each chunk's share of positions `from..end` to `each`: the chunk, the slot of
    /// `from` (or 0) in it, and the frames.
    fn slices(&self, from: u64, end: u64, mut each: impl FnMut(&Arc<Chunk>, usize, &[Bytes])) {
        let mut at = from;
        while at < end {
            let Some(chunk) = self.chunk(at) else { break };
            let start = (at - chunk.base) as usize;
            let stop = (end.min(chunk.end()) - chunk.base) as usize;
            each(chunk, start, chunk.frames.get(start..stop));
            at += (stop - start) as u64;
        }
    }

    /// How many chunks from the front lie wholly before position `keep_from`.
    fn stale(&self, keep_from: u64) -> usize {
        self.chunks.iter().take_while(|c| c.end() <= keep_from).count()
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

/// A reader's bound: how far behind it may fall, and what happens when it falls further.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound {
    /// The most entries it may have waiting.
    pub(crate) capacity: usize,
    /// `DropOldest` skips ahead, `Disconnect` reports it overflowed.
    pub(crate) policy: SlowPolicy,
}

/// A topic's shared log.
///
/// Lock-free for readers: [`Ring::take`], [`Ring::take_run`], [`Ring::waiting`] and
/// [`Ring::tail`] load atomics and a snapshot and never wait. The publisher ([`Ring::push`],
/// [`Ring::scan`]) takes no lock either; membership changes ([`Ring::join`], [`Ring::clear`])
/// swap snapshots and update atomics. Only the parked list has a lock (see [`Ring::park`]).
#[derive(Debug)]
pub(crate) struct Ring {
    /// The readable chunks; `None` while the ring holds no entry, so an idle ring allocates
    /// nothing.
    log: ArcSwapOption<Log>,
    /// The position the next entry gets: stored with `Release` once the entry before it is
    /// written, so a reader that loads it with `Acquire` may read every position below.
    tail: AtomicU64,
    /// The first position a new chunk may start at after [`Ring::clear`] dropped every chunk
    /// (a publish that raced the clear may have written into the dropped last chunk).
    start: AtomicU64,
    /// The fewest entries kept: the largest bound of any reader (up to `CHUNK - 1` more are
    /// kept, since chunks go whole). Only grows.
    capacity: AtomicUsize,
    /// When the tail reaches this position, the publisher scans the readers.
    check_at: AtomicU64,
    /// Readers waiting for the next entry.
    parked: Mutex<Parked, rank::Parked>,
}

/// One parked reader: its member and the waker its poll registered. The waker is kept here,
/// not in the reader's queue, so a wake touches the list and the reader's task only: at 10,000
/// parked readers each line it touches of a reader is a cache miss on the publisher's core.
#[derive(Debug)]
struct Waiter {
    /// The reader.
    member: Arc<Member>,
    /// Its task's waker.
    waker: Waker,
}

/// The readers waiting for a ring's next entry.
#[derive(Debug, Default)]
struct Parked {
    /// In the order they parked; some may have left since.
    list: Vec<Waiter>,
    /// The list the last wake took, emptied and given back for its allocation.
    spare: Vec<Waiter>,
    /// How many in `list` left (an upper bound): when they are half of it, it is compacted,
    /// so a quiet topic's churn does not grow it.
    left: usize,
}

impl Parked {
    /// Takes the whole list (leaving `with` in its place), every member unlisted.
    fn take(&mut self, with: Vec<Waiter>) -> Vec<Waiter> {
        self.left = 0;
        for waiter in &self.list {
            waiter.member.parked.store(false, Ordering::Relaxed);
        }
        std::mem::replace(&mut self.list, with)
    }

    /// Drops the members that left, and tells the others where they are now.
    fn compact(&mut self) {
        self.list.retain(|w| !w.member.left.load(Ordering::Acquire));
        for (at, waiter) in self.list.iter().enumerate() {
            waiter.member.parked_at.store(at, Ordering::Relaxed);
        }
        self.left = 0;
    }
}

impl Ring {
    /// An empty ring; allocates nothing until the first entry.
    pub(crate) fn new() -> Ring {
        Ring {
            log: ArcSwapOption::empty(),
            tail: AtomicU64::new(0),
            start: AtomicU64::new(0),
            capacity: AtomicUsize::new(1),
            check_at: AtomicU64::new(MIN_SCAN_INTERVAL),
            parked: Mutex::new(Parked::default()),
        }
    }

    /// The tail position: readers whose cursor is here have read everything.
    pub(crate) fn tail(&self) -> u64 {
        // Acquire pairs with the Release in `push`: a reader that sees the new tail sees the
        // entry (and the chunk list holding it) too.
        self.tail.load(Ordering::Acquire)
    }

    /// Registers a reader with `capacity`: grows the log's bound to it, makes sure the next
    /// scan comes before the reader can overflow, and returns the position it starts at (the
    /// tail: it receives what is published from now on).
    ///
    /// A publish that has not yet seen the new reader in the topic's readers (it loaded them
    /// before the registration) may trim and scan as if it were not there; only a one-topic
    /// subscribe, which is not ordered with concurrent publishes, meets such a publish.
    pub(crate) fn join(&self, capacity: usize) -> u64 {
        // Relaxed: the registration that follows publishes the reader (and this bound) to
        // publishers through the topic's readers snapshot.
        self.capacity.fetch_max(capacity, Ordering::Relaxed);
        // After a clear, positions up to `start` may belong to a dropped chunk: start past
        // them. Acquire on `start` pairs with the clear, which the registry's writer lock
        // orders before this join anyway.
        let cursor = self.tail().max(self.start.load(Ordering::Acquire));
        // Relaxed: see above; a scan that overwrote it without seeing this reader is repaired
        // by the reader's own drain (it finds itself overflowed) and by the next scan.
        self.check_at.fetch_min(cursor + capacity as u64 + 1, Ordering::Relaxed);
        cursor
    }

    /// Forgets a reader that left: it no longer waits for a wake. Amortised O(1): it stays in
    /// the list until the next wake, or until leavers are half the list.
    pub(crate) fn leave(&self, member: &Member) {
        member.left.store(true, Ordering::Release);
        let mut parked = lock(&self.parked);
        if member.parked.load(Ordering::Relaxed) {
            parked.left += 1;
            if parked.left * 2 > parked.list.len() {
                parked.compact();
            }
        }
    }

    /// Drops every entry (the last reader left); positions keep counting. Runs under the
    /// registry's writer lock, not the sequencer, so a publish may race it: it swaps the
    /// snapshot out rather than touching slots or the tail, and moves `start` past the
    /// dropped last chunk, into which that publish may still write.
    pub(crate) fn clear(&self) {
        let dropped = if self.log.load().is_some() {
            self.log.rcu(|log| {
                if let Some(log) = log {
                    let end = log.chunks.last().map_or(0, |c| c.end());
                    // AcqRel: see `join`.
                    self.start.fetch_max(end, Ordering::AcqRel);
                }
                None::<Arc<Log>>
            })
        } else {
            None
        };
        // `check_at` stays: a publish still holding a snapshot with the leavers scans them
        // at the same point as it would have, and a scan of nobody sets the next one.
        // Nobody reads the ring any more: members still listed have left (or were dropped as
        // slow and closed, which wakes them itself), and would keep their subscribers alive
        // until this topic's next publish.
        let listed = lock(&self.parked).take(Vec::new());
        // Frames and members are released outside the lock.
        drop(dropped);
        drop(listed);
    }

    /// Appends one entry, evicting the oldest when full. Returns whether the readers must be
    /// scanned now ([`Ring::scan`]). Called under the hub's sequencer only, so entries are in
    /// sequence order and there is one writer (a second one writing the same chunk at the same
    /// time would panic in the slots' claim, not race).
    pub(crate) fn push(&self, seq: u64, frame: &Bytes) -> bool {
        self.push_entry(seq, frame, None)
    }

    /// [`Ring::push`] for a stream class's ring: `block` is what readers in the frame's
    /// context take, `extra` the event and whether the block ends the frame. A class ring
    /// gets only these pushes.
    pub(crate) fn push_class(&self, seq: u64, block: &Bytes, extra: Extra) -> bool {
        self.push_entry(seq, block, Some(extra))
    }

    /// See [`Ring::push`].
    fn push_entry(&self, seq: u64, frame: &Bytes, mut extra: Option<Extra>) -> bool {
        // Relaxed: only pushes store the tail, and the sequencer orders them.
        let at = self.tail.load(Ordering::Relaxed);
        // Keep at least `capacity` entries; older whole chunks go. Relaxed: see `join`.
        let capacity = self.capacity.load(Ordering::Relaxed) as u64;
        let log = self.log.load();
        let last = log.as_ref().and_then(|log| log.chunks.last());
        let tail = if last.is_some_and(|chunk| chunk.append(at, seq, frame, &mut extra)) {
            let tail = at + 1;
            // Release: readers that load this tail see the entry.
            self.tail.store(tail, Ordering::Release);
            // Most publishes trim nothing: decide that on the snapshot already loaded.
            let keep_from = tail.saturating_sub(capacity);
            if log.as_ref().is_some_and(|log| log.stale(keep_from) > 0) {
                drop(log);
                self.trim(keep_from);
            }
            tail
        } else {
            // The last chunk is full, or there is none (never was, trimmed, or cleared).
            // Acquire pairs with `clear`: a new chunk starts past the one it dropped.
            let base = at.max(self.start.load(Ordering::Acquire));
            let chunk = Arc::new(Chunk::starting(base, seq, frame, &mut extra));
            drop(log);
            // rcu, not store: a clear may swap the snapshot out meanwhile, and its chunks
            // must not come back.
            let previous = self.log.rcu(|log| {
                let mut chunks = Vec::with_capacity(log.as_ref().map_or(0, |l| l.chunks.len()) + 1);
                if let Some(log) = log {
                    chunks.extend(log.chunks.iter().cloned());
                }
                // Positions map to chunks by arithmetic from the first: they must be
                // consecutive (a clear empties the list, and a trim only cuts its front).
                debug_assert!(chunks.last().is_none_or(|c| c.end() == chunk.base));
                chunks.push(chunk.clone());
                Some(Arc::new(Log { chunks }))
            });
            drop(previous);
            let tail = base + 1;
            // Release: readers that load this tail see the entry and the snapshot holding it.
            self.tail.store(tail, Ordering::Release);
            self.trim(tail.saturating_sub(capacity));
            tail
        };
        // Relaxed: a scan due a little late is still a scan; see `join`.
        tail >= self.check_at.load(Ordering::Relaxed)
    }

    /// Drops whole chunks from the front while they lie before position `keep_from`.
    /// Publisher only; the chunks are freed once no reader's batch holds them.
    fn trim(&self, keep_from: u64) {
        if self.log.load().as_ref().is_none_or(|log| log.stale(keep_from) == 0) {
            return;
        }
        let previous = self.log.rcu(|log| {
            let log = log.as_ref()?;
            let stale = log.stale(keep_from);
            if stale == log.chunks.len() {
                return None;
            }
            Some(Arc::new(Log { chunks: log.chunks[stale..].to_vec() }))
        });
        // Frames go when their chunk's last holder lets go: here, or with a reader's batch.
        drop(previous);
    }

    /// Checks every reader against its bound: `Disconnect` readers more than their bound
    /// behind are returned to be dropped; entries every remaining reader has read are trimmed;
    /// the next check is scheduled. Called by the publisher under the hub's sequencer.
    pub(crate) fn scan(&self, readers: &IdMap<Arc<Member>>) -> Scan {
        let mut scan = Scan::default();
        // Relaxed: the publisher stored it (see `push`).
        let tail = self.tail.load(Ordering::Relaxed);
        let first = self.log.load().as_ref().map_or(tail, |log| log.first());
        let seen = self.check_at.load(Ordering::Relaxed);
        let mut keep_from = tail;
        let mut check_at = tail + (readers.len() as u64).max(MIN_SCAN_INTERVAL);
        readers.for_each(|member| {
            // Acquire pairs with the Release of the reader's `Member::claim` (`reader.rs`).
            let cursor = member.cursor.load(Ordering::Acquire);
            let capacity = member.capacity();
            if member.disconnects() {
                if tail - cursor.min(tail) > capacity || cursor < first {
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
        // A join since `seen` lowered it for a reader this scan did not see: keep the lower.
        // Relaxed: see `join`.
        if self
            .check_at
            .compare_exchange(seen, check_at, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.check_at.fetch_min(check_at, Ordering::Relaxed);
        }
        self.trim(keep_from);
        scan
    }

    /// Takes up to `limits.frames` entries (and about `limits.bytes`, at least one entry) at
    /// or after `cursor` with a sequence number up to `upto` (the hub's watermark, or where a
    /// close stopped), handing each to `sink`, and applying the reader's `bound`: a reader
    /// more than its capacity behind skips ahead (`DropOldest`) or is reported overflowed
    /// (`Disconnect`, nothing taken). Does not move the cursor (the reader claims what it took
    /// with `Member::claim`, in `reader.rs`). Takes no lock.
    pub(crate) fn take(
        &self,
        cursor: u64,
        bound: Bound,
        upto: u64,
        limits: Limits,
        mut sink: impl FnMut(u64, &Bytes),
    ) -> Taken {
        self.take_with(cursor, bound, upto, limits, |log, taken| {
            log.slices(taken.from, taken.from + taken.count as u64, |chunk, start, frames| {
                match &chunk.sides {
                    // A class's ring: the events themselves (an entry that only ends a
                    // compression frame stands for none).
                    Some(sides) => {
                        let sides = sides.get(start..start + frames.len());
                        for (i, side) in sides.iter().enumerate() {
                            if !side.identity.is_empty() {
                                sink(chunk.seq(start + i), &side.identity);
                            }
                        }
                    }
                    None => {
                        for (i, frame) in frames.iter().enumerate() {
                            sink(chunk.seq(start + i), frame);
                        }
                    }
                }
            });
        })
    }

    /// [`Ring::take`] for a stream class's reader: each entry as its chunk and its slot in
    /// it ([`Chunk::class_entry`] reads it).
    pub(crate) fn take_class(
        &self,
        cursor: u64,
        bound: Bound,
        upto: u64,
        limits: Limits,
        mut sink: impl FnMut(&Arc<Chunk>, usize),
    ) -> Taken {
        self.take_with(cursor, bound, upto, limits, |log, taken| {
            log.slices(taken.from, taken.from + taken.count as u64, |chunk, start, frames| {
                for i in start..start + frames.len() {
                    sink(chunk, i);
                }
            });
        })
    }

    /// [`Ring::take`] for a subscriber's whole batch: a [`Run`] of one chunk when the entries
    /// lie in one (one refcount for the batch), otherwise the frames appended to `out`.
    pub(crate) fn take_run(
        &self,
        cursor: u64,
        bound: Bound,
        upto: u64,
        limits: Limits,
        out: &mut Vec<Bytes>,
    ) -> (Taken, Option<Run>) {
        let mut run = None;
        let taken = self.take_with(cursor, bound, upto, limits, |log, taken| {
            let end = taken.from + taken.count as u64;
            match log.chunk(taken.from) {
                Some(chunk) if end <= chunk.end() => {
                    let start = (taken.from - chunk.base) as usize;
                    run = Some(Run { chunk: chunk.clone(), start, end: start + taken.count });
                }
                _ => {
                    out.reserve(taken.count);
                    log.slices(taken.from, end, |_, _, frames| out.extend_from_slice(frames));
                }
            }
        });
        (taken, run)
    }

    /// Works out what a reader takes (see [`Ring::take`]), then has `copy` copy that run of
    /// entries (`taken.count` of them from position `taken.from`) out of the snapshot.
    fn take_with(
        &self,
        cursor: u64,
        bound: Bound,
        upto: u64,
        limits: Limits,
        copy: impl FnOnce(&Log, &Taken),
    ) -> Taken {
        let mut taken = Taken { from: cursor, ..Taken::default() };
        // The tail first, then the snapshot: every chunk below this tail was in the snapshot
        // before the tail was stored, so it is in this one unless trimmed since.
        let mut tail = self.tail();
        if tail <= cursor {
            return taken;
        }
        let log = self.log.load();
        let first = log.as_ref().map_or(u64::MAX, |log| log.first());
        if first >= tail {
            // A trim since the tail was loaded took every entry below it: the publisher
            // stored a later tail before trimming, so a second look finds at least that one.
            tail = self.tail();
        }
        // No snapshot: every entry below the tail was trimmed (or cleared).
        let first = first.min(tail);
        let oldest = first.max(tail.saturating_sub(bound.capacity as u64));
        let mut from = cursor;
        if from < oldest {
            if bound.policy == SlowPolicy::Disconnect {
                taken.overflowed = true;
                return taken;
            }
            taken.skipped = oldest - from;
            from = oldest;
        }
        taken.from = from;
        let Some(log) = log.as_ref() else {
            return taken;
        };
        let max_frames = u64::try_from(limits.frames.max(1)).unwrap_or(u64::MAX);
        let end = tail.min(from.saturating_add(max_frames));
        let mut bytes: usize = 0;
        let mut at = from;
        'chunks: while at < end {
            let Some(chunk) = log.chunk(at) else { break };
            let start = (at - chunk.base) as usize;
            let stop = (end.min(chunk.end()) - chunk.base) as usize;
            for (i, frame) in chunk.frames.get(start..stop).iter().enumerate() {
                // Sequence numbers rise along the log: stop at the first one past `upto`.
                if chunk.seq(start + i) > upto || !limits.fits(taken.count, bytes, frame.len()) {
                    break 'chunks;
                }
                bytes += frame.len();
                taken.count += 1;
            }
            at += (stop - start) as u64;
        }
        if taken.count > 0 {
            copy(log, &taken);
        }
        taken
    }

    /// The number of entries a reader at `cursor` with `capacity` has waiting.
    pub(crate) fn waiting(&self, cursor: u64, capacity: usize) -> usize {
        usize::try_from(self.tail().saturating_sub(cursor).min(capacity as u64)).unwrap_or(0)
    }

    /// Registers `member` to be woken, through `waker`, by the next publish to this ring (a
    /// reader listed already has its waker replaced if `waker` would not wake the same task).
    ///
    /// Always under the lock, even when the reader is listed already: that lock is what orders
    /// the caller's next drain after any take that missed it (the publish behind that take
    /// completed before it), so either the take wakes the reader or its drain sees the event.
    /// This is the one lock of the ring's on a reader's path, and it is taken only to park (the
    /// reader takes it with no other lock held: see `reader.rs`).
    pub(crate) fn park(&self, member: &Arc<Member>, waker: &Waker) {
        let mut parked = lock(&self.parked);
        // A reader that left is not listed again (`leave` sets the flag before its lock).
        if member.left.load(Ordering::Acquire) {
            return;
        }
        // Relaxed, both: written only under this lock.
        if member.parked.load(Ordering::Relaxed) {
            let at = member.parked_at.load(Ordering::Relaxed);
            if let Some(listed) = parked.list.get_mut(at) {
                debug_assert!(Arc::ptr_eq(&listed.member, member), "a listed reader's place");
                if !listed.waker.will_wake(waker) {
                    listed.waker = waker.clone();
                }
            }
            return;
        }
        member.parked.store(true, Ordering::Relaxed);
        member.parked_at.store(parked.list.len(), Ordering::Relaxed);
        parked.list.push(Waiter { member: member.clone(), waker: waker.clone() });
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
        for waiter in list.drain(..) {
            if !waiter.member.left.load(Ordering::Acquire) {
                waiter.waker.wake();
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
        let tail = self.tail();
        self.log.load().as_ref().map_or(0, |log| (tail - log.first().min(tail)) as usize)
    }

    /// The number of chunks held (for tests).
    #[cfg(all(test, not(ssehub_loom)))]
    fn chunks(&self) -> usize {
        self.log.load().as_ref().map_or(0, |log| log.chunks.len())
    }
}

impl Member {
    /// Subscriber `id`, with `queue`, reading a ring from `cursor`.
    pub(crate) fn new(id: u64, queue: Arc<Queue>, cursor: u64) -> Member {
        let bound = Bound { capacity: queue.capacity(), policy: queue.policy() };
        Member {
            bound,
            id,
            queue,
            cursor: AtomicU64::new(cursor),
            parked: AtomicBool::new(false),
            parked_at: AtomicUsize::new(0),
            left: AtomicBool::new(false),
        }
    }

    /// Moves the cursor to `to` after the subscriber took entries up to there (the reader
    /// moves it with `Member::claim`, in `reader.rs`).
    #[cfg(test)]
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

    /// 64 frames and 1 MiB at most.
    const LIMITS: Limits = Limits { frames: 64, bytes: 1 << 20 };

    fn take_all(ring: &Ring, member: &Member) -> (Vec<u64>, Taken) {
        let mut seqs = Vec::new();
        let taken =
            ring.take(member.cursor(), member.bound(), u64::MAX, LIMITS, |s, _| seqs.push(s));
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
        let taken = ring.take(member.cursor(), member.bound(), 3, LIMITS, |s, _| seqs.push(s));
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
    fn a_reader_below_the_oldest_chunk_skips_to_it_or_overflows_by_its_policy() {
        let ring = Ring::new();
        let dropping = reader(1, 4, SlowPolicy::DropOldest, &ring);
        let disconnecting = reader(2, 4, SlowPolicy::Disconnect, &ring);
        let total = 3 * CHUNK as u64 + 5;
        for seq in 1..=total {
            ring.push(seq, &frame(seq));
        }
        // Whole chunks before the last four entries went: what is held starts a chunk.
        assert_eq!(ring.len(), 5);
        let (seqs, taken) = take_all(&ring, &dropping);
        assert_eq!((seqs, taken.skipped), ((total - 3..=total).collect(), total - 4));
        let (seqs, taken) = take_all(&ring, &disconnecting);
        assert!(seqs.is_empty() && taken.overflowed && taken.count == 0);
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
        let bound = Bound { capacity: 1024, policy: SlowPolicy::Disconnect };
        ring.take_run(member.cursor(), bound, u64::MAX, LIMITS, out)
    }

    #[test]
    fn a_batch_holding_the_last_chunk_is_not_copied_when_the_publisher_appends_to_it() {
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
        let next = next.expect("one chunk");
        assert_eq!(next.frames(), [frame(2)]);
        assert!(Arc::ptr_eq(&run.chunk, &next.chunk), "the publisher wrote into the same chunk");
        assert!(out.is_empty());
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
        assert_eq!(out[14], frame(CHUNK as u64 + 10));
    }

    #[test]
    fn limits_stop_a_take_at_the_frame_count_and_at_the_byte_budget_but_take_one_at_least() {
        let ring = Ring::new();
        let member = reader(1, 1024, SlowPolicy::Disconnect, &ring);
        for seq in 1..=(2 * CHUNK as u64) {
            ring.push(seq, &frame(seq));
        }
        let mut seqs = Vec::new();
        let few = Limits { frames: 3, bytes: 1 << 20 };
        ring.take(member.cursor(), member.bound(), u64::MAX, few, |s, _| seqs.push(s));
        assert_eq!(seqs, [1, 2, 3]);
        seqs.clear();
        let tiny = Limits { frames: 64, bytes: 1 };
        ring.take(member.cursor(), member.bound(), u64::MAX, tiny, |s, _| seqs.push(s));
        assert_eq!(seqs, [1]);
        seqs.clear();
        let upto = CHUNK as u64 + 2;
        ring.take(member.cursor(), member.bound(), upto, Limits::ALL, |s, _| seqs.push(s));
        assert_eq!(seqs, (1..=CHUNK as u64 + 2).collect::<Vec<_>>());
    }

    #[test]
    fn a_trimmed_chunk_lives_on_in_the_batch_that_holds_it() {
        let ring = Ring::new();
        let member = reader(1, 1, SlowPolicy::DropOldest, &ring);
        ring.push(1, &frame(1));
        let (_, run) = run_at(&ring, &member, &mut Vec::new());
        let run = run.expect("one chunk");
        for seq in 2..=(3 * CHUNK as u64) {
            ring.push(seq, &frame(seq));
        }
        assert_eq!(ring.chunks(), 1, "the publisher trimmed the batch's chunk");
        assert_eq!(Arc::strong_count(&run.chunk), 1, "the batch alone holds it");
        assert_eq!(run.frames(), [frame(1)]);
    }

    #[test]
    fn an_idle_ring_holds_no_chunk_and_a_reader_joining_after_a_clear_misses_nothing() {
        let ring = Ring::new();
        assert_eq!(ring.chunks(), 0);
        let first = reader(1, 8, SlowPolicy::Disconnect, &ring);
        for seq in 1..=3 {
            ring.push(seq, &frame(seq));
        }
        take_all(&ring, &first);
        ring.leave(&first);
        ring.clear();
        assert_eq!((ring.chunks(), ring.len()), (0, 0));
        // Positions to the end of the dropped chunk are not reused (a publish racing the clear
        // may still write there): a reader joining now starts after them and sees no gap.
        let second = reader(2, 8, SlowPolicy::Disconnect, &ring);
        assert_eq!(second.cursor(), CHUNK as u64, "starts past the dropped chunk");
        ring.push(4, &frame(4));
        let (seqs, taken) = take_all(&ring, &second);
        assert_eq!((seqs, taken.skipped, taken.overflowed), (vec![4], 0, false));
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
        // Read to the end of a full chunk, the last one goes too: nothing is held.
        for seq in 101..=(2 * CHUNK as u64) {
            ring.push(seq, &frame(seq));
            take_all(&ring, &member);
        }
        ring.scan(&readers);
        assert_eq!(ring.chunks(), 0);
    }

    fn parked_ids(ring: &Ring) -> Vec<u64> {
        lock(&ring.parked).list.iter().map(|w| w.member.id).collect()
    }

    /// Readers 1 to `n` of `ring`, not parked.
    fn readers(ring: &Ring, n: u64) -> Vec<Arc<Member>> {
        (1..=n).map(|id| reader(id, 8, SlowPolicy::Disconnect, ring)).collect()
    }

    /// Readers 1 to `n` of `ring`, parked in that order.
    fn parked_readers(ring: &Ring, n: u64) -> Vec<Arc<Member>> {
        let readers = readers(ring, n);
        readers.iter().for_each(|r| ring.park(r, Waker::noop()));
        readers
    }

    #[test]
    fn parked_readers_are_listed_once_in_park_order_and_relisted_after_a_wake() {
        let ring = Ring::new();
        let readers = readers(&ring, 3);
        for i in [2, 0, 1, 0, 2] {
            ring.park(&readers[i], Waker::noop());
        }
        assert_eq!(parked_ids(&ring), [3, 1, 2]);
        ring.wake_parked();
        assert!(parked_ids(&ring).is_empty());
        ring.park(&readers[1], Waker::noop());
        assert_eq!(parked_ids(&ring), [2]);
    }

    #[test]
    fn leavers_are_not_relisted_and_are_compacted_away_when_half_the_list() {
        let ring = Ring::new();
        let readers = parked_readers(&ring, 10);
        for r in &readers[..5] {
            ring.leave(r);
        }
        // Five of ten left: not yet more than half, so they stay until a wake or compaction.
        assert_eq!(parked_ids(&ring).len(), 10);
        ring.leave(&readers[5]);
        assert_eq!(parked_ids(&ring), [7, 8, 9, 10]);
        ring.park(&readers[0], Waker::noop());
        assert_eq!(parked_ids(&ring), [7, 8, 9, 10]);
        // A wake forgets leavers still listed.
        ring.leave(&readers[6]);
        ring.wake_parked();
        assert!(parked_ids(&ring).is_empty());
    }

    #[test]
    fn clearing_a_ring_its_last_reader_left_forgets_the_listed_leavers() {
        let ring = Ring::new();
        let readers = parked_readers(&ring, 4);
        ring.leave(&readers[0]);
        assert_eq!(parked_ids(&ring).len(), 4);
        ring.clear();
        assert!(parked_ids(&ring).is_empty());
        assert_eq!(Arc::strong_count(&readers[0]), 1);
    }
}
