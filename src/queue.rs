//! The bounded per-subscriber queue and the slow-client policies.
//!
//! Topic events reach most subscribers through their topics' shared rings (`ring.rs`); this
//! queue holds what is one subscriber's own: broadcasts, targeted sends, heartbeats, the final
//! frame of a shutdown, and, for a subscriber whose policy is `Conflate`, its topic events too
//! (replacing a queued frame by key needs a queue of its own). Every entry carries its sequence
//! number, so a drain can merge the queue with the rings in publish order.
//!
//! The queue is a `VecDeque` behind a per-subscriber mutex: the critical section is a push or
//! an O(batch) drain, and memory stays proportional to what is queued (a preallocated ring of
//! `capacity` slots would cost every idle connection its full bound). The consumer's waker is
//! taken by the first push after it parked, so a burst wakes it once.

use std::collections::VecDeque;
use std::task::Waker;

use bytes::Bytes;

use std::cell::OnceCell;

use crate::ring::{Bound, Feed, Limits, Run, Taken};
use crate::sync::{lock, rank, Mutex, SharedStr};

/// What happens to a subscriber that falls more than its bound behind.
///
/// # Examples
///
/// ```
/// use ssehub::{ConflateKey, SlowPolicy, Subscribe};
///
/// let market = Subscribe::new()
///     .with_pattern("price:*")
///     .with_policy(SlowPolicy::Conflate { key: ConflateKey::Topic })
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

/// Why a subscription's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndReason {
    /// The subscriber could not keep up and its policy is [`SlowPolicy::Disconnect`].
    #[error("subscriber was too slow")]
    Slow,
    /// The hub was shut down.
    #[error("hub shut down")]
    Shutdown,
    /// The application ended it (for example through
    /// [`Hub::disconnect`](crate::Hub::disconnect)).
    #[error("subscriber was disconnected")]
    Disconnected,
    /// The subscription was dropped.
    #[error("subscription was dropped")]
    Dropped,
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

/// The queue's state under its lock.
#[derive(Debug)]
struct Inner {
    /// Queued `(sequence number, frame)`, oldest first. Heartbeats carry 0 (they go before
    /// anything), the final frame of a close carries the hub's sequence number at the close.
    entries: VecDeque<(u64, Bytes)>,
    /// One mark per entry, once any entry needed one.
    marks: Option<VecDeque<Mark>>,
    /// Whether the front entry is a heartbeat (heartbeats only enter an empty queue).
    heartbeat_front: bool,
    /// The parked consumer, if any.
    waker: Option<Waker>,
    /// Set when the queue is closed; the consumer drains what is left, then ends.
    ended: Option<EndReason>,
    /// The last sequence number the subscriber may still take from its rings: `u64::MAX`
    /// while open, the hub's sequence number at a close that lets queued frames out, 0 after
    /// one that discards them.
    rings_upto: u64,
    /// Frames evicted since the consumer last drained.
    lagged: u64,
    /// Whether anything was pushed since the last heartbeat tick.
    active: bool,
}

/// A bounded multi-producer, single-consumer queue of shared frames.
#[derive(Debug)]
pub(crate) struct Queue {
    /// Everything, under one short lock.
    inner: Mutex<Inner, rank::Queue>,
    /// The most frames held at once.
    capacity: usize,
    /// What happens when full.
    policy: SlowPolicy,
}

/// What the consumer took in one drain.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    /// The frames, oldest first.
    pub(crate) frames: Vec<Bytes>,
    /// Frames lost to eviction before these (queue and rings).
    pub(crate) lagged: u64,
    /// Of `lagged`, the ring entries skipped (counted as dropped by the caller: no publish saw
    /// them go).
    pub(crate) skipped: u64,
    /// Nothing was ready but an entry of a publish still in progress is queued: poll again.
    pub(crate) retry: bool,
    /// The frames as one run of a ring's chunk instead of `frames` (then empty): the usual
    /// case of a one-topic subscriber, one refcount for the whole batch.
    pub(crate) run: Option<Run>,
}

impl Drained {
    /// Whether no frame was taken.
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.run.is_none()
    }
}

/// Why a merged drain stopped the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The stream has ended and everything it may still hand over was handed over.
    Ended(EndReason),
    /// The subscriber fell more than its bound behind a ring and its policy is `Disconnect`:
    /// the queue is now closed as slow.
    Overflowed,
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
                active: false,
            }),
            capacity: capacity.max(1),
            policy,
        }
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

    /// Wakes the consumer if it is parked (a ring it reads has a new entry).
    pub(crate) fn wake(&self) {
        let waker = lock(&self.inner).waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Pushes a frame of `kind`, applying the slow-client policy when full.
    fn push_kind(&self, seq: u64, bytes: &Bytes, keys: &FrameKeys, kind: Kind) -> Pushed {
        let key = match self.policy {
            SlowPolicy::Conflate { key } => keys.pick(key),
            _ => None,
        };
        let (outcome, waker) = {
            let mut inner = lock(&self.inner);
            if inner.ended.is_some() {
                return Pushed::Closed;
            }
            inner.active = true;
            let mut outcome = Pushed::Queued;
            if let Some(key) = &key {
                let same = inner.marks.as_ref().and_then(|marks| {
                    marks.iter().rposition(|m| match &m.key {
                        Some(k) => SharedStr::ptr_eq(k, key) || **k == **key,
                        None => false,
                    })
                });
                if let Some(at) = same {
                    inner.remove(at);
                    outcome = Pushed::Conflated;
                }
            }
            if inner.entries.len() >= self.capacity {
                if inner.heartbeat_front {
                    inner.pop_front();
                } else if self.policy == SlowPolicy::Disconnect {
                    return self.end_locked(inner, EndReason::Slow, true);
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
            let mut inner = lock(&self.inner);
            if inner.ended.is_some() {
                return false;
            }
            if std::mem::replace(&mut inner.active, false) || !inner.entries.is_empty() {
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
    /// hold up to sequence number `upto` (or at once when `discard` is set). A `last` frame,
    /// if given, is queued beyond the bound, after those. Returns `false` if it was already
    /// closed.
    pub(crate) fn close(
        &self,
        reason: EndReason,
        last: Option<&Bytes>,
        discard: bool,
        upto: u64,
    ) -> bool {
        let mut inner = lock(&self.inner);
        if inner.ended.is_some() {
            return false;
        }
        inner.rings_upto = upto;
        if let Some(bytes) = last {
            inner.push_back(upto, bytes.clone(), None);
        }
        self.end_locked(inner, reason, discard) == Pushed::Disconnected
    }

    /// Closes the queue with `reason` after taking in `from_rings` (entries the subscriber had
    /// still to read from its rings, in sequence order), merged with its own entries by sequence
    /// number: the stream hands all of them over and ends without reading a ring again.
    /// Returns `false` if it was already closed.
    pub(crate) fn close_absorbing(&self, reason: EndReason, from_rings: Vec<(u64, Bytes)>) -> bool {
        let mut inner = lock(&self.inner);
        if inner.ended.is_some() {
            return false;
        }
        if !from_rings.is_empty() {
            let own = std::mem::take(&mut inner.entries);
            let mut marks = inner.marks.take().map(VecDeque::into_iter);
            let mut own = own.into_iter().peekable();
            let mut rings = from_rings.into_iter().peekable();
            let mut merged_marks = marks.as_ref().map(|_| VecDeque::new());
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
                if let Some(entry) = entry {
                    inner.entries.push_back(entry);
                }
                if let (Some(list), Some(mark)) = (&mut merged_marks, mark) {
                    list.push_back(mark);
                }
            }
            inner.marks = merged_marks;
            inner.heartbeat_front = false;
        }
        // Its rings are done with: it ends after what it holds now.
        inner.rings_upto = 0;
        self.end_locked(inner, reason, false);
        true
    }

    /// Whether the subscriber was dropped as slow; if not, `waker` is woken when anything
    /// happens to the queue (a close among it).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn dropped_as_slow(&self, waker: &Waker) -> bool {
        let mut inner = lock(&self.inner);
        if inner.ended == Some(EndReason::Slow) {
            return true;
        }
        match &inner.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => inner.waker = Some(waker.clone()),
        }
        false
    }

    /// Whether the queue is closed.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.inner).ended.is_some()
    }

    /// Closes the queue as [`EndReason::Disconnected`] and takes the targeted frames it still
    /// held, in order, for a session resuming on another connection. `None` if it was already
    /// closed (its frames then belong to nobody else).
    pub(crate) fn close_taking_targeted(&self) -> Option<Vec<Bytes>> {
        let mut inner = lock(&self.inner);
        if inner.ended.is_some() {
            return None;
        }
        let entries = std::mem::take(&mut inner.entries);
        let marks = inner.marks.take();
        inner.heartbeat_front = false;
        self.end_locked(inner, EndReason::Disconnected, true);
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

    /// Ends the queue with the lock held, then wakes the consumer after releasing it.
    fn end_locked(
        &self,
        mut inner: crate::sync::MutexGuard<'_, Inner>,
        reason: EndReason,
        discard: bool,
    ) -> Pushed {
        inner.ended = Some(reason);
        let dropped = if discard {
            inner.rings_upto = 0;
            inner.heartbeat_front = false;
            inner.marks = None;
            std::mem::take(&mut inner.entries)
        } else {
            VecDeque::new()
        };
        let waker = inner.waker.take();
        drop(inner);
        // Frames are released outside the lock.
        drop(dropped);
        if let Some(waker) = waker {
            waker.wake();
        }
        Pushed::Disconnected
    }

    /// Takes up to `max_frames` frames and about `max_bytes` bytes (at least one frame), or
    /// registers `waker` when the queue is empty and open. `Err(reason)` once it is closed and
    /// drained.
    pub(crate) fn drain(
        &self,
        max_frames: usize,
        max_bytes: usize,
        waker: Option<&Waker>,
    ) -> Result<Drained, EndReason> {
        let mut inner = lock(&self.inner);
        if inner.entries.is_empty() {
            if let Some(reason) = inner.ended {
                return Err(reason);
            }
            if let Some(waker) = waker {
                match &inner.waker {
                    Some(w) if w.will_wake(waker) => {}
                    _ => inner.waker = Some(waker.clone()),
                }
            }
            let lagged = std::mem::take(&mut inner.lagged);
            return Ok(Drained { lagged, ..Drained::default() });
        }
        let mut count = 0;
        let mut bytes = 0;
        for (_, entry) in inner.entries.iter().take(max_frames.max(1)) {
            if count > 0 && bytes + entry.len() > max_bytes {
                break;
            }
            bytes += entry.len();
            count += 1;
        }
        let frames: Vec<Bytes> = inner.entries.drain(..count).map(|(_, b)| b).collect();
        if let Some(marks) = &mut inner.marks {
            marks.drain(..count);
        }
        inner.heartbeat_front = false;
        // Give back memory after a burst, with hysteresis so a steady flow does not reallocate.
        let capacity = inner.entries.capacity();
        if inner.entries.is_empty() && capacity > 128 && count < capacity / 8 {
            inner.entries.shrink_to(count.max(16));
        }
        Ok(Drained { frames, lagged: std::mem::take(&mut inner.lagged), ..Drained::default() })
    }

    /// Takes the next batch for a subscriber that reads `feeds`: this queue's entries and the
    /// rings' entries merged in sequence order, up to `max_frames` frames and about `max_bytes`
    /// bytes (at least one frame), never past sequence number `watermark` (the last publish
    /// that is complete: an entry after it may still be missing from another source, and
    /// taking it would reorder). Registers `waker` when nothing is ready.
    pub(crate) fn drain_merged(
        &self,
        feeds: &[Feed],
        watermark: u64,
        max_frames: usize,
        max_bytes: usize,
        waker: Option<&Waker>,
    ) -> Result<Drained, Stop> {
        let max_frames = max_frames.max(1);
        let mut inner = lock(&self.inner);
        // Once closed, the close fixed how far the rings go (the watermark read before this
        // lock may predate it); while open, the watermark does.
        let upto = if inner.ended.is_some() { inner.rings_upto } else { watermark };
        // Closed and discarded (dropped as slow, or gone): the rings hold nothing for it.
        let feeds = if inner.rings_upto == 0 { &[] } else { feeds };
        if inner.heartbeat_front && feeds.iter().any(|f| f.ring.tail() > f.member.cursor()) {
            // An event is waiting: the keep-alive has no more work to do.
            inner.pop_front();
        }
        // A closed queue takes no more entries, so all of its own are complete; an open one's
        // past the watermark belong to a publish still in progress.
        let ready = if inner.ended.is_some() {
            inner.entries.len()
        } else {
            inner.entries.iter().take_while(|(seq, _)| *seq <= watermark).count()
        };
        let mut drained = Drained::default();
        let mut taken_rings = 0;
        let bound = Bound { capacity: self.capacity, policy: self.policy };
        let limits = Limits { upto, max_frames, max_bytes };
        if feeds.len() == 1 && ready == 0 {
            // The common case: one topic, nothing of its own; no merge.
            let feed = &feeds[0];
            let (taken, run) =
                feed.ring.take_run(feed.member.cursor(), bound, limits, &mut drained.frames);
            drained.run = run;
            if taken.overflowed {
                self.end_locked(inner, EndReason::Slow, true);
                return Err(Stop::Overflowed);
            }
            if taken.count > 0 || taken.skipped > 0 {
                feed.member.advance(taken.from + taken.count as u64);
            }
            drained.skipped = taken.skipped;
            taken_rings = taken.count;
        } else if !feeds.is_empty() {
            // Several sources: take each one's candidates, then merge by sequence number (the
            // ring first on a tie: a close's final frame carries the last sequence number).
            let mut lists: Vec<(Vec<(u64, Bytes)>, Taken)> = Vec::with_capacity(feeds.len());
            for feed in feeds {
                let mut list = Vec::new();
                let taken = feed.ring.take(feed.member.cursor(), bound, limits, |seq, frame| {
                    list.push((seq, frame.clone()))
                });
                if taken.overflowed {
                    self.end_locked(inner, EndReason::Slow, true);
                    return Err(Stop::Overflowed);
                }
                drained.skipped += taken.skipped;
                lists.push((list, taken));
            }
            let mut heads = vec![0usize; lists.len()];
            let mut from_queue = 0;
            let mut bytes = 0;
            while drained.frames.len() < max_frames {
                let mut best: Option<(u64, usize)> = None;
                for (i, (list, _)) in lists.iter().enumerate() {
                    if let Some((seq, _)) = list.get(heads[i]) {
                        if best.is_none_or(|(s, _)| *seq < s) {
                            best = Some((*seq, i));
                        }
                    }
                }
                let queued = (from_queue < ready).then(|| inner.entries[from_queue].0);
                let frame = match (best, queued) {
                    (Some((seq, i)), q) if q.is_none_or(|q| seq <= q) => {
                        let frame = &lists[i].0[heads[i]].1;
                        if !drained.frames.is_empty() && bytes + frame.len() > max_bytes {
                            break;
                        }
                        heads[i] += 1;
                        frame.clone()
                    }
                    (_, _) if queued.is_some() => {
                        let frame = &inner.entries[from_queue].1;
                        if !drained.frames.is_empty() && bytes + frame.len() > max_bytes {
                            break;
                        }
                        from_queue += 1;
                        frame.clone()
                    }
                    _ => break,
                };
                bytes += frame.len();
                drained.frames.push(frame);
            }
            for (feed, ((_, taken), head)) in feeds.iter().zip(lists.iter().zip(&heads)) {
                if *head > 0 || taken.skipped > 0 {
                    feed.member.advance(taken.from + *head as u64);
                }
                taken_rings += head;
            }
            inner.pop_many(from_queue);
        } else if ready > 0 {
            let mut bytes = 0;
            let mut count = 0;
            for (_, frame) in inner.entries.iter().take(ready.min(max_frames)) {
                if count > 0 && bytes + frame.len() > max_bytes {
                    break;
                }
                bytes += frame.len();
                count += 1;
            }
            drained.frames.extend(inner.entries.iter().take(count).map(|(_, b)| b.clone()));
            inner.pop_many(count);
        }
        if taken_rings > 0 {
            inner.active = true;
        }
        drained.lagged = std::mem::take(&mut inner.lagged) + drained.skipped;
        if drained.is_empty() && drained.lagged == 0 {
            if let Some(reason) = inner.ended {
                if inner.entries.is_empty() {
                    return Err(Stop::Ended(reason));
                }
            }
            // An entry past the watermark belongs to a publish still in progress: its wake may
            // already have been spent on this poll, so ask to be polled again.
            drained.retry = inner.entries.len() > ready;
            if let Some(waker) = waker {
                match &inner.waker {
                    Some(w) if w.will_wake(waker) => {}
                    _ => inner.waker = Some(waker.clone()),
                }
            }
        }
        Ok(drained)
    }

    /// The number of queued frames.
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).entries.len()
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

    /// Drops the `count` oldest frames (taken by a drain).
    fn pop_many(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        self.entries.drain(..count);
        if let Some(marks) = &mut self.marks {
            marks.drain(..count);
        }
        self.heartbeat_front = false;
    }

    /// Drops the oldest frame.
    fn pop_front(&mut self) {
        self.entries.pop_front();
        if let Some(marks) = &mut self.marks {
            marks.pop_front();
        }
        self.heartbeat_front = false;
    }

    /// Drops the frame at `at`.
    fn remove(&mut self, at: usize) {
        self.entries.remove(at);
        if let Some(marks) = &mut self.marks {
            marks.remove(at);
        }
        if at == 0 {
            self.heartbeat_front = false;
        }
    }
}
