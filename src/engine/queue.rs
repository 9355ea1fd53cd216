//! The bounded per-subscriber queue and the slow-client policies.
//!
//! Topic events reach most subscribers through their topics' shared rings (`ring.rs`); this
//! queue holds what is one subscriber's own: broadcasts, targeted sends, heartbeats, the final
//! frame of a shutdown, and, for a subscriber whose policy is `Conflate`, its topic events too
//! (replacing a queued frame by key needs a queue of its own). Every entry carries its sequence
//! number, so the reader (`reader.rs`) can merge the queue with the rings in publish order.
//!
//! The queue is a `VecDeque` behind a per-subscriber mutex: the critical section is a push or
//! an O(batch) drain, and memory stays proportional to what is queued (a preallocated ring of
//! `capacity` slots would cost every idle connection its full bound). The consumer's waker is
//! taken by the first push after it parked, so a burst wakes it once. Releasing the lock
//! records whether the queue is empty and open in an atomic flag ([`Queue::looks_empty`]), so
//! a reader of one ring with nothing of its own skips this lock altogether.

use std::collections::VecDeque;
use std::task::Waker;

use bytes::Bytes;

use std::cell::OnceCell;

use crate::error::EndReason;
use crate::sync::{lock, rank, AtomicBool, AtomicU64, Mutex, MutexGuard, Ordering, SharedStr};

/// What happens to a subscriber that falls more than its bound behind.
///
/// # Examples
///
/// ```
/// use ssehub::{ConflateKey, SlowPolicy, Subscribe};
///
/// let market = Subscribe::new()
///     .with_pattern("price:*")
///     .with_slow_policy(SlowPolicy::Conflate { key: ConflateKey::Topic })
///     .with_capacity(64);
/// # let _ = market;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowPolicy {
    /// The subscriber is dropped at the publish that puts it over its bound: what it had
    /// waiting is let go, its stream ends with [`EndReason::Slow`], it leaves the hub, and the
    /// drop is counted. A client that reconnects with its `Last-Event-ID` can resume from
    /// history. The default.
    #[default]
    Disconnect,
    /// The oldest frames are skipped so that at most the bound is left; the number lost is
    /// reported on the next batch ([`Batch::lagged`](crate::Batch::lagged)) and counted then.
    DropOldest,
    /// A queued frame with the same key is replaced by the newer one (the old one is removed
    /// and the new one appended, so ids stay in order), so a slow client gets the latest value
    /// per key. Frames without a key queue normally; when the queue is full of distinct keys the
    /// oldest frame makes room, as with [`SlowPolicy::DropOldest`].
    Conflate {
        /// Which property of an event is its key.
        key: ConflateKey,
    },
}

/// Where [`SlowPolicy::Conflate`] takes an event's key from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConflateKey {
    /// The topic the event was published to: the latest event per topic (broadcasts and
    /// targeted sends have no topic and are never conflated).
    Topic,
    /// The event's `event` name (events without one are never conflated).
    EventName,
    /// The key set with [`Event::with_key`](crate::Event::with_key) (events without one are never
    /// conflated).
    Explicit,
}

/// The keys one published frame can be conflated under. The shared strings are built at most
/// once per publish, on the first conflating subscriber, so a publish allocates nothing per
/// subscriber and nothing at all when no subscriber conflates.
#[derive(Debug, Default)]
pub(crate) struct FrameKeys<'a> {
    /// The topic, for [`ConflateKey::Topic`].
    pub(crate) topic: Option<&'a SharedStr>,
    /// The event name, for [`ConflateKey::EventName`].
    pub(crate) event: Option<&'a str>,
    /// The explicit key, for [`ConflateKey::Explicit`].
    pub(crate) explicit: Option<&'a str>,
    /// `event` as a shared string, once needed.
    event_shared: OnceCell<SharedStr>,
    /// `explicit` as a shared string, once needed.
    explicit_shared: OnceCell<SharedStr>,
}

impl<'a> FrameKeys<'a> {
    /// Keys for a frame published to `topic` (if any) from an event with these fields.
    pub(crate) fn new(
        topic: Option<&'a SharedStr>,
        event: Option<&'a str>,
        explicit: Option<&'a str>,
    ) -> Self {
        FrameKeys { topic, event, explicit, ..FrameKeys::default() }
    }

    /// The key a subscriber with `kind` conflates under.
    fn pick(&self, kind: ConflateKey) -> Option<SharedStr> {
        match kind {
            ConflateKey::Topic => self.topic.cloned(),
            ConflateKey::EventName => {
                self.event.map(|e| self.event_shared.get_or_init(|| e.into()).clone())
            }
            ConflateKey::Explicit => {
                self.explicit.map(|e| self.explicit_shared.get_or_init(|| e.into()).clone())
            }
        }
    }
}

/// What the queue knows about a frame beyond its bytes, kept only by queues that need it (a
/// conflating subscriber's, or one that received a targeted send), in a deque parallel to the
/// frames, so a plain queue's entries stay a sequence number and a `Bytes`.
#[derive(Debug, Clone, Default)]
struct Mark {
    /// The conflation key.
    key: Option<SharedStr>,
    /// A targeted send (a resumed session takes these over from the old connection).
    targeted: bool,
}

/// The kinds of queued frames that are treated differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A topic event or a broadcast: replayable from history.
    Event,
    /// A targeted send.
    Targeted,
}

/// What a push did, for the publisher's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued.
    Queued,
    /// Queued in place of an older frame with the same key.
    Conflated,
    /// Queued after evicting the oldest frame (lag).
    Evicted,
    /// The queue was full and the subscriber is now closed as slow.
    Disconnected,
    /// The subscriber was already closed; nothing queued.
    Closed,
}

/// The queue's state under its lock. `repr(C)`, in this order: what a subscriber's park and a
/// publisher's wake touch (the waker, the entries' length, `ended`, `heartbeat_front`) comes
/// first, next to the lock's word (see [`Queue`]).
#[derive(Debug)]
#[repr(C)]
struct Inner {
    /// The parked consumer, if any.
    waker: Option<Waker>,
    /// Queued `(sequence number, frame)`, oldest first. Heartbeats carry 0 (they go before
    /// anything), the final frame of a close carries the hub's sequence number at the close.
    entries: VecDeque<(u64, Bytes)>,
    /// Set when the queue is closed; the consumer drains what is left, then ends.
    ended: Option<EndReason>,
    /// Whether the front entry is a heartbeat (heartbeats only enter an empty queue).
    heartbeat_front: bool,
    /// The last sequence number the subscriber may still take from its rings: `u64::MAX`
    /// while open, the hub's sequence number at a close that lets queued frames out, 0 after
    /// one that discards them (or took the rings' entries in).
    rings_upto: u64,
    /// Frames evicted since the consumer last drained.
    lagged: u64,
    /// One mark per entry, once any entry needed one.
    marks: Option<VecDeque<Mark>>,
}

/// What a close does with what the subscriber has not taken yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rest {
    /// The consumer takes what is queued (and what its rings hold up to `rings_upto`) first.
    HandOver,
    /// Everything queued is let go and the rings are not read again.
    Discard,
}

/// A bounded multi-producer, single-consumer queue of shared frames.
///
/// `repr(C)`: at 10,000 subscribers every line a poll or a wake touches of a subscriber is a
/// cache miss, so the lock and what is used under it in a park come first, and what a
/// lock-free look reads (`empty`, `feeds_version`) next to each other after it. (Aligning it
/// to a cache line as well showed nothing measurable, for 64 bytes of padding a subscriber.)
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Queue {
    /// Everything, under one short lock.
    inner: Mutex<Inner, rank::Queue>,
    /// Set while nothing is queued and the queue is open, so a reader of one ring can take its
    /// ring's entries without this lock (`reader.rs`). Written only under the lock, by
    /// [`Locked`]'s drop, so it always matches the state the lock last released.
    ///
    /// Loads and stores are `Relaxed`: the ordering that makes the lock-free look sound is
    /// the hub's watermark's. Every push that can be merged with ring entries (an event, a
    /// broadcast, a targeted send) runs under the sequencer, so its store of `false` is
    /// sequenced before the `Release` store of the watermark that covers it; the reader loads
    /// the watermark with `Acquire` *before* it loads this flag, so it cannot read a `true`
    /// older than that push, and it takes no ring entry past the watermark. A push outside the
    /// sequencer (a heartbeat, a shutdown's last frame) can be missed by one lock-free look;
    /// the look under the lock that registers the waker sees it.
    empty: AtomicBool,
    /// Whether anything was pushed or taken since the last heartbeat tick. `Relaxed`: written
    /// under the lock by pushes and ticks, and without it by a lock-free take; a tick that
    /// misses a take only sends a keep-alive one tick early.
    active: AtomicBool,
    /// Bumped each time the subscriber's feeds (the rings it reads, in its `Slot`) change,
    /// after the new list is stored, so its stream can keep its one feed between polls and
    /// reload the list only when this moved (`reader::View`). Kept here rather than in the slot
    /// because a poll reads this cache line anyway (the `empty` flag): at 10,000 subscribers
    /// every line a poll touches is a cache miss. Release on the bump, Acquire on the load:
    /// a reader that sees the new version sees the new list.
    feeds_version: AtomicU64,
    /// The most frames held at once.
    capacity: usize,
    /// What happens when full.
    policy: SlowPolicy,
}

/// The queue's lock, held; releasing it updates [`Queue::empty`].
pub(crate) struct Locked<'a> {
    /// The queue.
    queue: &'a Queue,
    /// Its state.
    inner: MutexGuard<'a, Inner>,
}

impl std::fmt::Debug for Locked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locked").field("queued", &self.inner.entries.len()).finish()
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let empty = self.inner.entries.is_empty() && self.inner.ended.is_none();
        // Relaxed, still under the lock: see `Queue::empty`.
        self.queue.empty.store(empty, Ordering::Relaxed);
    }
}

impl Queue {
    /// An empty queue; allocates nothing until the first push.
    pub(crate) fn new(capacity: usize, policy: SlowPolicy) -> Queue {
        Queue {
            inner: Mutex::new(Inner {
                entries: VecDeque::new(),
                marks: None,
                heartbeat_front: false,
                waker: None,
                ended: None,
                rings_upto: u64::MAX,
                lagged: 0,
            }),
            empty: AtomicBool::new(true),
            active: AtomicBool::new(false),
            feeds_version: AtomicU64::new(0),
            capacity: capacity.max(1),
            policy,
        }
    }

    /// Takes the queue's lock.
    pub(crate) fn lock(&self) -> Locked<'_> {
        Locked { queue: self, inner: lock(&self.inner) }
    }

    /// Whether nothing is queued and the queue is open, as of the last release of its lock
    /// that this thread can see (see [`Queue::empty`] for when that is recent enough).
    pub(crate) fn looks_empty(&self) -> bool {
        // Relaxed: see `Queue::empty`.
        self.empty.load(Ordering::Relaxed)
    }

    /// The version of the subscriber's feeds: how many times they changed.
    pub(crate) fn feeds_version(&self) -> u64 {
        // Acquire pairs with the Release in `feeds_changed`.
        self.feeds_version.load(Ordering::Acquire)
    }

    /// Records that the subscriber's feeds changed; called after the new list is stored.
    pub(crate) fn feeds_changed(&self) {
        // Release: a reader that loads the new version (Acquire) then loads the new list.
        self.feeds_version.fetch_add(1, Ordering::Release);
    }

    /// Records that the consumer took frames from its rings (the heartbeat stays away).
    pub(crate) fn note_taken(&self) {
        // Relaxed: see `Queue::active`.
        self.active.store(true, Ordering::Relaxed);
    }

    /// The most frames this subscriber may have waiting.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// What happens when it falls behind.
    pub(crate) fn policy(&self) -> SlowPolicy {
        self.policy
    }

    /// Pushes the frame of event `seq`, applying the slow-client policy when full.
    pub(crate) fn push(&self, seq: u64, bytes: &Bytes, keys: &FrameKeys) -> Pushed {
        self.push_kind(seq, bytes, keys, Kind::Event)
    }

    /// Pushes a targeted frame (see [`Kind::Targeted`]).
    pub(crate) fn push_targeted(&self, seq: u64, bytes: &Bytes, keys: &FrameKeys) -> Pushed {
        self.push_kind(seq, bytes, keys, Kind::Targeted)
    }

    /// Wakes the consumer if it is parked (a rate tier's tick moved the mark its own frames
    /// wait for; a ring's own publishes wake the waker listed in the ring, see `Ring::park`).
    pub(crate) fn wake(&self) {
        // The lock alone, not `Locked`: taking the waker changes neither the entries nor
        // `ended`, so the `empty` flag needs no store (which would pull in the line a reader's
        // lock-free look reads, from the publisher's core, once per parked reader).
        let waker = lock(&self.inner).waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The waker the consumer registered when it last found nothing (a copy; it stays
    /// registered), if any: a consumer parked now, or about to load its feeds and park.
    pub(crate) fn registered_waker(&self) -> Option<Waker> {
        // The lock alone, as `wake` takes it: nothing readers check changes.
        lock(&self.inner).waker.clone()
    }

    /// Pushes a frame of `kind`, applying the slow-client policy when full.
    fn push_kind(&self, seq: u64, bytes: &Bytes, keys: &FrameKeys, kind: Kind) -> Pushed {
        let key = match self.policy {
            SlowPolicy::Conflate { key } => keys.pick(key),
            _ => None,
        };
        let (outcome, waker) = {
            let mut locked = self.lock();
            let inner = &mut *locked.inner;
            if inner.ended.is_some() {
                return Pushed::Closed;
            }
            self.active.store(true, Ordering::Relaxed);
            let mut outcome = Pushed::Queued;
            if let Some(key) = &key {
                if inner.remove_key(key) {
                    outcome = Pushed::Conflated;
                }
            }
            if inner.entries.len() >= self.capacity {
                if inner.heartbeat_front {
                    inner.pop_front();
                } else if self.policy == SlowPolicy::Disconnect {
                    locked.end(EndReason::Slow, Rest::Discard);
                    return Pushed::Disconnected;
                } else {
                    inner.pop_front();
                    inner.lagged += 1;
                    outcome = Pushed::Evicted;
                }
            }
            let mark = (key.is_some() || kind == Kind::Targeted)
                .then(|| Mark { key, targeted: kind == Kind::Targeted });
            inner.push_back(seq, bytes.clone(), mark);
            (outcome, inner.waker.take())
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        outcome
    }

    /// Queues a heartbeat if nothing was pushed or taken since the last tick, the queue is
    /// empty and `rings_idle` (nothing waits in the subscriber's rings), so it never displaces
    /// an event or delays one. Returns whether it was queued.
    pub(crate) fn push_heartbeat(&self, bytes: &Bytes, rings_idle: bool) -> bool {
        let waker = {
            let mut locked = self.lock();
            let inner = &mut *locked.inner;
            if inner.ended.is_some() {
                return false;
            }
            // Relaxed: see `Queue::active`.
            if self.active.swap(false, Ordering::Relaxed) || !inner.entries.is_empty() {
                return false;
            }
            if !rings_idle {
                return false;
            }
            inner.push_back(0, bytes.clone(), None);
            inner.heartbeat_front = true;
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Closes the queue: the consumer ends after draining what is queued and what its rings
    /// hold up to sequence number `upto`, then `last`, if given (queued beyond the bound).
    /// Returns `false` if it was already closed.
    pub(crate) fn close_after(&self, reason: EndReason, upto: u64, last: Option<&Bytes>) -> bool {
        let mut locked = self.lock();
        if locked.inner.ended.is_some() {
            return false;
        }
        locked.inner.rings_upto = upto;
        if let Some(bytes) = last {
            locked.inner.push_back(upto, bytes.clone(), None);
        }
        locked.end(reason, Rest::HandOver);
        true
    }

    /// Closes the queue and lets go of everything it holds: the consumer ends at its next poll
    /// without reading its rings again. Returns `false` if it was already closed.
    pub(crate) fn close_discarding(&self, reason: EndReason) -> bool {
        let locked = self.lock();
        if locked.inner.ended.is_some() {
            return false;
        }
        locked.end(reason, Rest::Discard);
        true
    }

    /// Whether the subscriber was dropped as slow; if not, `waker` is woken when anything
    /// happens to the queue (a close among it).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn dropped_as_slow(&self, waker: &Waker) -> bool {
        let mut locked = self.lock();
        if locked.inner.ended == Some(EndReason::Slow) {
            return true;
        }
        locked.register(waker);
        false
    }

    /// Whether the queue is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().inner.ended.is_some()
    }

    /// Closes the queue as [`EndReason::Disconnected`] and takes the targeted frames it still
    /// held, in order, for a session resuming on another connection. `None` if it was already
    /// closed (its frames then belong to nobody else).
    pub(crate) fn close_taking_targeted(&self) -> Option<Vec<Bytes>> {
        let mut locked = self.lock();
        if locked.inner.ended.is_some() {
            return None;
        }
        let entries = std::mem::take(&mut locked.inner.entries);
        let marks = locked.inner.marks.take();
        locked.end(EndReason::Disconnected, Rest::Discard);
        let Some(marks) = marks else {
            return Some(Vec::new());
        };
        Some(
            entries
                .into_iter()
                .zip(marks)
                .filter(|(_, m)| m.targeted)
                .map(|((_, b), _)| b)
                .collect(),
        )
    }

    /// Takes up to `limits` frames (at least one), or registers `waker` when the queue is
    /// empty and open. `Err(reason)` once it is closed and drained. The whole read of a
    /// subscriber that reads no rings (a conflating one).
    pub(crate) fn drain(&self, limits: Limits, waker: Option<&Waker>) -> Result<Popped, EndReason> {
        let mut locked = self.lock();
        if locked.inner.entries.is_empty() {
            if let Some(reason) = locked.inner.ended {
                return Err(reason);
            }
            if let Some(waker) = waker {
                locked.register(waker);
            }
            return Ok(Popped { frames: Vec::new(), lagged: locked.take_lagged() });
        }
        let count = locked.batch_len(locked.len(), limits);
        let frames = locked.pop_many(count);
        Ok(Popped { frames, lagged: locked.take_lagged() })
    }

    /// The number of queued frames.
    pub(crate) fn len(&self) -> usize {
        self.lock().inner.entries.len()
    }
}

/// How much one drain may take: at most `frames` frames and about `bytes` bytes, at least one
/// frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The most frames.
    pub(crate) frames: usize,
    /// The most bytes, except that the first frame is always taken.
    pub(crate) bytes: usize,
}

impl Limits {
    /// No limit: everything that is ready.
    pub(crate) const ALL: Limits = Limits { frames: usize::MAX, bytes: usize::MAX };

    /// Whether a batch of `count` frames and `bytes` bytes has room for a frame of `len` bytes.
    pub(crate) fn fits(&self, count: usize, bytes: usize, len: usize) -> bool {
        count == 0 || (count < self.frames && bytes.saturating_add(len) <= self.bytes)
    }
}

/// What a drain of the queue alone took.
#[derive(Debug, Default)]
pub(crate) struct Popped {
    /// The frames, oldest first.
    pub(crate) frames: Vec<Bytes>,
    /// Frames lost to eviction before these.
    pub(crate) lagged: u64,
}

impl<'a> Locked<'a> {
    /// The queue.
    pub(crate) fn queue(&self) -> &'a Queue {
        self.queue
    }

    /// Why the queue was closed, if it was.
    pub(crate) fn ended(&self) -> Option<EndReason> {
        self.inner.ended
    }

    /// The last sequence number the subscriber may take from its rings (see
    /// [`Inner::rings_upto`]).
    pub(crate) fn rings_upto(&self) -> u64 {
        self.inner.rings_upto
    }

    /// The number of queued frames.
    pub(crate) fn len(&self) -> usize {
        self.inner.entries.len()
    }

    /// The `i`th queued entry (0 is the oldest).
    pub(crate) fn entry(&self, i: usize) -> (u64, &Bytes) {
        let (seq, frame) = &self.inner.entries[i];
        (*seq, frame)
    }

    /// How many of the oldest entries may be taken while the watermark is `watermark`: all of
    /// them once closed (a closed queue takes no more entries, so all are complete), those up
    /// to the watermark while open (one past it belongs to a publish still in progress).
    pub(crate) fn ready(&self, watermark: u64) -> usize {
        if self.inner.ended.is_some() {
            return self.inner.entries.len();
        }
        self.inner.entries.iter().take_while(|(seq, _)| *seq <= watermark).count()
    }

    /// How many of the first `ready` entries fit in one batch within `limits`.
    pub(crate) fn batch_len(&self, ready: usize, limits: Limits) -> usize {
        let mut bytes = 0;
        let mut count = 0;
        for (_, frame) in self.inner.entries.iter().take(ready) {
            if !limits.fits(count, bytes, frame.len()) {
                break;
            }
            bytes += frame.len();
            count += 1;
        }
        count
    }

    /// Drops a heartbeat waiting at the front (an event is waiting: the keep-alive has no more
    /// work to do).
    pub(crate) fn drop_heartbeat(&mut self) {
        if self.inner.heartbeat_front {
            self.inner.pop_front();
        }
    }

    /// Whether a heartbeat waits at the front.
    pub(crate) fn heartbeat_waiting(&self) -> bool {
        self.inner.heartbeat_front
    }

    /// Takes the `count` oldest frames.
    pub(crate) fn pop_many(&mut self, count: usize) -> Vec<Bytes> {
        let frames = self.inner.entries.drain(..count).map(|(_, b)| b).collect();
        self.inner.drop_marks(count);
        self.inner.shrink_after_drain(count);
        frames
    }

    /// Lets go of the `count` oldest frames (a merge took copies of them).
    pub(crate) fn skip(&mut self, count: usize) {
        self.inner.entries.drain(..count);
        self.inner.drop_marks(count);
        self.inner.shrink_after_drain(count);
    }

    /// The frames lost to eviction since the last call.
    pub(crate) fn take_lagged(&mut self) -> u64 {
        std::mem::take(&mut self.inner.lagged)
    }

    /// Registers `waker` to be woken by the next push, wake or close.
    pub(crate) fn register(&mut self, waker: &Waker) {
        match &self.inner.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => self.inner.waker = Some(waker.clone()),
        }
    }

    /// Closes the queue as slow, letting go of what it holds (the consumer found itself more
    /// than its bound behind a ring).
    pub(crate) fn close_as_slow(self) {
        self.end(EndReason::Slow, Rest::Discard);
    }

    /// Closes the queue with `reason` after merging in `from_rings` (entries the subscriber had
    /// still to read from its rings, in sequence order) by sequence number, a ring entry first
    /// on a tie: the stream hands all of them over, then `last` (a final frame, queued beyond
    /// the bound after everything else), and ends without reading a ring again. The caller has
    /// checked that it is open.
    pub(crate) fn close_absorbing(
        mut self,
        reason: EndReason,
        from_rings: Vec<(u64, Bytes)>,
        last: Option<(u64, Bytes)>,
    ) {
        if !from_rings.is_empty() {
            self.inner.absorb(from_rings);
        }
        if let Some((seq, bytes)) = last {
            self.inner.push_back(seq, bytes, None);
        }
        // Its rings are done with: it ends after what it holds now.
        self.inner.rings_upto = 0;
        self.end(reason, Rest::HandOver);
    }

    /// Ends the queue, then releases the lock, lets go of what `rest` discards and wakes the
    /// consumer, in that order (frames are released and the waker woken outside the lock).
    fn end(mut self, reason: EndReason, rest: Rest) {
        let inner = &mut *self.inner;
        inner.ended = Some(reason);
        let dropped = if rest == Rest::Discard {
            inner.rings_upto = 0;
            inner.heartbeat_front = false;
            inner.marks = None;
            std::mem::take(&mut inner.entries)
        } else {
            VecDeque::new()
        };
        let waker = inner.waker.take();
        drop(self);
        drop(dropped);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Inner {
    /// Appends a frame, with its mark if it has one (starting the marks if needed).
    fn push_back(&mut self, seq: u64, bytes: Bytes, mark: Option<Mark>) {
        if mark.is_some() && self.marks.is_none() {
            self.marks = Some(std::iter::repeat_n(Mark::default(), self.entries.len()).collect());
        }
        self.entries.push_back((seq, bytes));
        if let Some(marks) = &mut self.marks {
            marks.push_back(mark.unwrap_or_default());
        }
    }

    /// Removes the newest queued frame conflated under `key`; returns whether there was one.
    fn remove_key(&mut self, key: &SharedStr) -> bool {
        let same = self.marks.as_ref().and_then(|marks| {
            marks.iter().rposition(|m| match &m.key {
                Some(k) => SharedStr::ptr_eq(k, key) || **k == **key,
                None => false,
            })
        });
        let Some(at) = same else {
            return false;
        };
        self.entries.remove(at);
        if let Some(marks) = &mut self.marks {
            marks.remove(at);
        }
        if at == 0 {
            self.heartbeat_front = false;
        }
        true
    }

    /// Drops the marks of the `count` oldest frames, just taken.
    fn drop_marks(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        if let Some(marks) = &mut self.marks {
            marks.drain(..count);
        }
        self.heartbeat_front = false;
    }

    /// Gives back memory after a burst, with hysteresis so a steady flow does not reallocate.
    fn shrink_after_drain(&mut self, count: usize) {
        let capacity = self.entries.capacity();
        if self.entries.is_empty() && capacity > 128 && count < capacity / 8 {
            self.entries.shrink_to(count.max(16));
        }
    }

    /// Drops the oldest frame.
    fn pop_front(&mut self) {
        self.entries.pop_front();
        if let Some(marks) = &mut self.marks {
            marks.pop_front();
        }
        self.heartbeat_front = false;
    }

    /// Merges `from_rings` (in sequence order, unmarked) into the entries by sequence number,
    /// a ring entry first on a tie.
    fn absorb(&mut self, from_rings: Vec<(u64, Bytes)>) {
        let own = std::mem::take(&mut self.entries);
        let mut marks = self.marks.take().map(VecDeque::into_iter);
        let mut merged_marks = marks.as_ref().map(|_| VecDeque::new());
        let mut own = own.into_iter().peekable();
        let mut rings = from_rings.into_iter().peekable();
        loop {
            let take_ring = match (own.peek(), rings.peek()) {
                (Some((a, _)), Some((b, _))) => b <= a,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (None, None) => break,
            };
            let (entry, mark) = if take_ring {
                (rings.next(), Some(Mark::default()))
            } else {
                (own.next(), marks.as_mut().and_then(Iterator::next))
            };
            self.entries.extend(entry);
            if let (Some(list), Some(mark)) = (&mut merged_marks, mark) {
                list.push_back(mark);
            }
        }
        self.marks = merged_marks;
        self.heartbeat_front = false;
    }
}

impl Locked<'_> {
    /// Merges `from_ring` (entries a live change took out of a ring the subscriber stops
    /// reading, in sequence order) into the queue by sequence number, and counts `skipped`
    /// (entries its bound skipped there) as lag. Nothing if the queue is closed: its stream
    /// ends without them, as it would have without the change. Returns the parked consumer's
    /// waker, to be woken once the lock is released, when anything was added.
    pub(crate) fn absorb_open(
        &mut self,
        from_ring: Vec<(u64, Bytes)>,
        skipped: u64,
    ) -> Option<Waker> {
        if self.inner.ended.is_some() || (from_ring.is_empty() && skipped == 0) {
            return None;
        }
        self.inner.lagged += skipped;
        if !from_ring.is_empty() {
            self.inner.absorb(from_ring);
            // Relaxed: see `Queue::active`.
            self.queue.active.store(true, Ordering::Relaxed);
        }
        self.inner.waker.take()
    }
}
