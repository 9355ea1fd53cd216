//! The bounded per-subscriber queue and the slow-client policies.
//!
//! Publishers push shared frames (a refcount, never a copy); the subscriber's stream drains
//! everything queued in one go. The queue is a `VecDeque` behind a per-subscriber mutex: the
//! critical section is a push or an O(batch) drain, contended only when the consumer drains while
//! a publisher pushes, and it keeps memory proportional to what is queued (a preallocated ring of
//! `capacity` slots would cost every idle connection its full bound). The consumer's waker is
//! taken by the first push after it parked, so a burst wakes it once.

use std::collections::VecDeque;
use std::task::Waker;

use bytes::Bytes;

use std::cell::OnceCell;

use crate::sync::{lock, Mutex, SharedStr};

/// What a subscriber's queue does when it is full.
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
    /// The subscriber is dropped: its queue is freed, its stream ends with
    /// [`EndReason::Slow`], and the drop is counted. A client that reconnects with its
    /// `Last-Event-ID` can resume from history. The default.
    #[default]
    Disconnect,
    /// The oldest queued frame makes room for the new one; the number of frames lost is
    /// reported on the next batch ([`Batch::lagged`](crate::Batch::lagged)).
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
/// frames. Plain queues hold 32-byte `Bytes` entries and nothing else: at 10,000 subscribers
/// the entries written per publish are most of the fan-out's memory traffic.
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
    /// Queued frames, oldest first.
    entries: VecDeque<Bytes>,
    /// One mark per entry, once any entry needed one.
    marks: Option<VecDeque<Mark>>,
    /// Whether the front entry is a heartbeat (heartbeats only enter an empty queue).
    heartbeat_front: bool,
    /// The parked consumer, if any.
    waker: Option<Waker>,
    /// Set when the queue is closed; the consumer drains what is left, then ends.
    ended: Option<EndReason>,
    /// Frames evicted since the consumer last drained.
    lagged: u64,
    /// Whether anything was pushed since the last heartbeat tick.
    active: bool,
}

/// A bounded multi-producer, single-consumer queue of shared frames.
#[derive(Debug)]
pub(crate) struct Queue {
    /// Everything, under one short lock.
    inner: Mutex<Inner>,
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
    /// Frames lost to eviction before these.
    pub(crate) lagged: u64,
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
                lagged: 0,
                active: false,
            }),
            capacity: capacity.max(1),
            policy,
        }
    }

    /// Pushes a frame, applying the slow-client policy when full.
    pub(crate) fn push(&self, bytes: &Bytes, keys: &FrameKeys) -> Pushed {
        self.push_kind(bytes, keys, Kind::Event)
    }

    /// Pushes a targeted frame (see [`Kind::Targeted`]).
    pub(crate) fn push_targeted(&self, bytes: &Bytes, keys: &FrameKeys) -> Pushed {
        self.push_kind(bytes, keys, Kind::Targeted)
    }

    /// Pushes a frame of `kind`, applying the slow-client policy when full.
    fn push_kind(&self, bytes: &Bytes, keys: &FrameKeys, kind: Kind) -> Pushed {
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
            inner.push_back(bytes.clone(), mark);
            (outcome, inner.waker.take())
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        outcome
    }

    /// Queues a heartbeat if nothing was pushed since the last tick and the queue is empty, so
    /// it never displaces an event or delays one. Returns whether it was queued.
    pub(crate) fn push_heartbeat(&self, bytes: &Bytes) -> bool {
        let waker = {
            let mut inner = lock(&self.inner);
            if inner.ended.is_some() {
                return false;
            }
            if std::mem::replace(&mut inner.active, false) || !inner.entries.is_empty() {
                return false;
            }
            inner.push_back(bytes.clone(), None);
            inner.heartbeat_front = true;
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Closes the queue: the consumer ends after draining what is queued (or at once when
    /// `discard` is set). A `last` frame, if given, is queued beyond the bound. Returns `false`
    /// if it was already closed.
    pub(crate) fn close(&self, reason: EndReason, last: Option<&Bytes>, discard: bool) -> bool {
        let mut inner = lock(&self.inner);
        if inner.ended.is_some() {
            return false;
        }
        if let Some(bytes) = last {
            inner.push_back(bytes.clone(), None);
        }
        self.end_locked(inner, reason, discard) == Pushed::Disconnected
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
        Some(entries.into_iter().zip(marks).filter(|(_, m)| m.targeted).map(|(b, _)| b).collect())
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
            return Ok(Drained { frames: Vec::new(), lagged: std::mem::take(&mut inner.lagged) });
        }
        let mut count = 0;
        let mut bytes = 0;
        for entry in inner.entries.iter().take(max_frames.max(1)) {
            if count > 0 && bytes + entry.len() > max_bytes {
                break;
            }
            bytes += entry.len();
            count += 1;
        }
        let frames: Vec<Bytes> = inner.entries.drain(..count).collect();
        if let Some(marks) = &mut inner.marks {
            marks.drain(..count);
        }
        inner.heartbeat_front = false;
        // Give back memory after a burst, with hysteresis so a steady flow does not reallocate.
        let capacity = inner.entries.capacity();
        if inner.entries.is_empty() && capacity > 128 && count < capacity / 8 {
            inner.entries.shrink_to(count.max(16));
        }
        Ok(Drained { frames, lagged: std::mem::take(&mut inner.lagged) })
    }

    /// The number of queued frames.
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }
}

impl Inner {
    /// Appends a frame, with its mark if it has one (starting the marks if needed).
    fn push_back(&mut self, bytes: Bytes, mark: Option<Mark>) {
        if mark.is_some() && self.marks.is_none() {
            self.marks = Some(std::iter::repeat_n(Mark::default(), self.entries.len()).collect());
        }
        self.entries.push_back(bytes);
        if let Some(marks) = &mut self.marks {
            marks.push_back(mark.unwrap_or_default());
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
