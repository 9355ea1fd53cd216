//! Rate tiers: a topic's events at a pace, per key at most one per interval, always the latest.
//!
//! A tier is a derived ring: every subscriber of one topic at one interval reads the same
//! [`Derived`] ring, so what a tier delivers is chosen and stored once, whatever its number of
//! readers. A publish to a topic with tiers keeps its frame (the `Bytes` the pipeline encoded,
//! a refcount) as its key's pending value in each of the topic's tiers, replacing the one
//! before (events without a key share one value per topic). Every `interval`, one hub-wide
//! timer ticks the interval's [`Tier`]: under the sequencer, each derived ring of the interval
//! gets its pending values appended in publish order (a trailing flush: the last value of a
//! burst always goes out at the end of its interval), and the tier's mark moves to the
//! sequencer's value. Tiers nobody reads do not exist: a derived ring is made by its first
//! reader and goes with its last, and an interval with no derived ring is not ticked.
//!
//! Ids stay intact (the frames are the publishes' own), so a resume is exact: a tick appends
//! its values in sequence order across all topics of the interval and readers take nothing past
//! the mark, so a client that saw id `n` has seen, as of `n`, the latest value of every key of
//! its topics. A tier's readers read up to its mark instead of the engine's watermark (the
//! frames a tick appends carry the sequence numbers of their publishes, already below the
//! watermark); their own queue's frames (targeted sends, broadcasts) wait for the same mark,
//! so they reach the stream with the next tick, in order.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use crate::engine::idmap::IdMap;
use crate::engine::queue::{FrameKeys, Queue};
use crate::engine::reader::{Readers, Slot};
use crate::engine::ring::Ring;
use crate::engine::stats::FanOut;
use crate::engine::{append, count, Engine, Pace};
use crate::error::IntervalError;
use crate::sync::{arc_swap, lock, rank, Arc, ArcSwap, AtomicU64, Mutex, Ordering, SharedStr};

/// The shortest interval a tier may have: below it, ticks would cost more than they save.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The longest interval a tier may have: a subscriber's own frames wait up to one interval.
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// The pace a subscription asks for with `interval`: zero for every event as it comes, else a
/// whole number of milliseconds from [`MIN_INTERVAL`] to [`MAX_INTERVAL`].
pub(crate) fn checked_pace(interval: Duration) -> Result<Pace, IntervalError> {
    if interval.is_zero() {
        return Ok(None);
    }
    let whole = interval.subsec_nanos() % 1_000_000 == 0;
    if !whole || interval < MIN_INTERVAL || interval > MAX_INTERVAL {
        return Err(IntervalError::OutOfRange { interval });
    }
    Ok(Some(interval))
}

/// Every derived ring of one interval, and the mark their readers read up to.
#[derive(Debug)]
pub(crate) struct Tier {
    /// The pace, read by the hub's clock (there is none under loom).
    #[cfg_attr(ssehub_loom, allow(dead_code))]
    pub(crate) interval: Duration,
    /// The sequencer's value at the end of the last tick (stored with `Release` under the
    /// sequencer once every derived ring of the interval has its values): nothing past it is
    /// taken from the tier's rings or its readers' queues.
    mark: AtomicU64,
    /// The topics read at this interval. Swapped under the registry's writer lock.
    pub(crate) derived: ArcSwap<Vec<Arc<Derived>>>,
    /// Queues whose readers found frames of their own past the mark: woken by the next tick
    /// (a push woke them once already; polling again before the mark moves would spin).
    waiting: Mutex<Vec<Arc<Queue>>, rank::TierWaiting>,
}

impl Tier {
    /// An interval with no derived ring yet. Its mark starts at 0: its rings are empty until
    /// its first tick, and its readers' own frames wait for that tick.
    pub(crate) fn new(interval: Duration) -> Tier {
        Tier {
            interval,
            mark: AtomicU64::new(0),
            derived: arc_swap(Vec::new()),
            waiting: Mutex::new(Vec::new()),
        }
    }

    /// The last sequence number whose tick is complete.
    pub(crate) fn mark(&self) -> u64 {
        // Acquire pairs with the Release in `complete`: a reader that sees the mark sees every
        // value the tick appended below it and every push made before it.
        self.mark.load(Ordering::Acquire)
    }

    /// Records that the tick at sequence number `seq` is complete; under the sequencer.
    pub(crate) fn complete(&self, seq: u64) {
        // Release pairs with the Acquire in `mark()`.
        self.mark.store(seq, Ordering::Release);
    }

    /// Asks the next tick to wake `queue`'s reader, whose own frames wait past the mark.
    /// Called under the queue's lock (rank `Queue` < `TierWaiting`).
    pub(crate) fn wake_at_tick(&self, queue: &Arc<Queue>) {
        let mut waiting = lock(&self.waiting);
        if !waiting.iter().any(|q| Arc::ptr_eq(q, queue)) {
            waiting.push(queue.clone());
        }
    }

    /// Takes the queues to wake after a tick.
    pub(crate) fn take_waiting(&self) -> Vec<Arc<Queue>> {
        std::mem::take(&mut *lock(&self.waiting))
    }
}

/// One topic read at one interval: its derived ring, its readers and the values pending for
/// the next tick.
#[derive(Debug)]
pub(crate) struct Derived {
    /// The interval it is read at (its [`Tier`] is the registry's, by interval: the tier lists
    /// its derived rings, so a ring holding its tier would make a cycle).
    pub(crate) interval: Duration,
    /// The topic's name (the conflation key of `ConflateKey::Topic` for pushed subscribers).
    pub(crate) topic: SharedStr,
    /// What the ticks appended.
    pub(crate) ring: Arc<Ring>,
    /// Who reads the ring, with their cursors.
    pub(crate) readers: Arc<Readers>,
    /// The conflating subscribers at this interval, whose queues a tick pushes into.
    pub(crate) pushed: ArcSwap<IdMap<Arc<Slot>>>,
    /// The latest value of each key since the last tick. Written by publishes, taken by ticks,
    /// both under the sequencer, so never contended.
    pending: Mutex<Pending, rank::Pending>,
}

/// One pending value, as a tick hands it over: the latest event of its key since the last tick.
#[derive(Debug)]
pub(crate) struct Value {
    /// Its publish's sequence number.
    pub(crate) seq: u64,
    /// Its frame, as the publish encoded it.
    pub(crate) frame: Bytes,
    /// Its key, if it had one.
    pub(crate) key: Option<SharedStr>,
    /// Its `event` name, if it had one.
    pub(crate) event: Option<SharedStr>,
}

/// A key's latest event since the last tick, as kept (its key is the map's).
#[derive(Debug, Clone)]
struct Latest {
    /// Its publish's sequence number.
    seq: u64,
    /// Its frame, as the publish encoded it.
    frame: Bytes,
    /// Its `event` name, kept only while the tier has conflating subscribers.
    event: Option<SharedStr>,
}

impl Latest {
    /// This value as a tick hands it over, under `key`.
    fn value(self, key: Option<SharedStr>) -> Value {
        Value { seq: self.seq, frame: self.frame, key, event: self.event }
    }
}

/// The values waiting for the next tick, and the readers that joined since the last one.
#[derive(Debug, Default)]
struct Pending {
    /// The latest value of events without a key.
    keyless: Option<Latest>,
    /// The latest value per key.
    keyed: HashMap<SharedStr, Latest>,
    /// Subscribers that joined since the last tick, each with the highest sequence number
    /// pending when it joined: the values it must not get from the next tick (published before
    /// it started; a snapshot or a replay already gave them, or it started after them).
    joiners: Vec<(u64, u64)>,
}

impl Pending {
    /// The highest sequence number pending, 0 for none.
    fn last_seq(&self) -> u64 {
        let keyed = self.keyed.values().map(|v| v.seq).max().unwrap_or(0);
        self.keyless.as_ref().map_or(0, |v| v.seq).max(keyed)
    }

    /// Takes every pending value, in publish order.
    fn take(&mut self) -> Vec<Value> {
        let keyless = self.keyless.take().map(|latest| latest.value(None));
        let keyed = self.keyed.drain().map(|(key, latest)| latest.value(Some(key)));
        let mut values: Vec<Value> = keyless.into_iter().chain(keyed).collect();
        values.sort_unstable_by_key(|v| v.seq);
        values
    }
}

/// What a tick takes from one derived ring.
#[derive(Debug, Default)]
pub(crate) struct Flushed {
    /// The values, in publish order.
    pub(crate) values: Vec<Value>,
    /// The subscribers that joined since the last tick (by id), with the last sequence
    /// number they skip.
    pub(crate) joiners: Vec<(u64, u64)>,
}

impl Derived {
    /// `topic` read at `interval`, with no reader yet.
    pub(crate) fn new(interval: Duration, topic: SharedStr) -> Derived {
        Derived {
            interval,
            topic,
            ring: Arc::new(Ring::new()),
            readers: Arc::new(arc_swap(IdMap::new())),
            pushed: arc_swap(IdMap::new()),
            pending: Mutex::new(Pending::default()),
        }
    }

    /// Keeps event `seq` as its key's value for the next tick; returns whether it replaced one
    /// (an event this tier's readers will never get). Under the sequencer.
    pub(crate) fn put(
        &self,
        seq: u64,
        frame: &Bytes,
        key: Option<&str>,
        event: Option<&str>,
    ) -> bool {
        // The event name is kept only for conflating readers, the rare case: most publishes
        // allocate nothing here (a key's string once per tick, when the key is new to it).
        let event = if self.pushed.load().is_empty() { None } else { event.map(SharedStr::from) };
        let mut pending = lock(&self.pending);
        let latest = Latest { seq, frame: frame.clone(), event };
        let Some(key) = key else {
            return pending.keyless.replace(latest).is_some();
        };
        if let Some(kept) = pending.keyed.get_mut(key) {
            *kept = latest;
            return true;
        }
        pending.keyed.insert(SharedStr::from(key), latest);
        false
    }

    /// Takes the pending values and joiners for a tick. Under the sequencer.
    pub(crate) fn flush(&self) -> Flushed {
        let mut pending = lock(&self.pending);
        Flushed { values: pending.take(), joiners: std::mem::take(&mut pending.joiners) }
    }

    /// Records that subscriber `id` starts receiving now: the values pending now are not its
    /// to get. Under the sequencer.
    pub(crate) fn joined(&self, id: u64) {
        let mut pending = lock(&self.pending);
        let last = pending.last_seq();
        if last > 0 {
            pending.joiners.push((id, last));
        }
    }

    /// The pending values subscriber `id` would get from the next tick, in publish order: for
    /// a subscriber that stops receiving this tier while its stream goes on (a live change),
    /// so it misses none of them. Under the sequencer.
    pub(crate) fn pending_for(&self, id: u64) -> Vec<(u64, Bytes)> {
        let pending = lock(&self.pending);
        let skip = pending.joiners.iter().find(|(j, _)| *j == id).map_or(0, |(_, last)| *last);
        let mut owed: Vec<(u64, Bytes)> = pending
            .keyless
            .iter()
            .chain(pending.keyed.values())
            .filter(|latest| latest.seq > skip)
            .map(|latest| (latest.seq, latest.frame.clone()))
            .collect();
        owed.sort_unstable_by_key(|(seq, _)| *seq);
        owed
    }

    /// Whether nobody reads it any more.
    pub(crate) fn is_unread(&self) -> bool {
        self.readers.load().is_empty() && self.pushed.load().is_empty()
    }
}

impl Engine {
    /// One tick of `tier`: under the sequencer, each of its derived rings gets the values
    /// pending since the last tick, in publish order (its conflating subscribers get them
    /// pushed, in publish order across all the tier's topics), and the tier's mark moves to
    /// the sequencer's value; then the readers are woken. Returns the subscribers it dropped as
    /// slow, for the caller to take out of the registry.
    pub(crate) fn tick(&self, tier: &Tier) -> Vec<u64> {
        let sequencer = lock(&self.sequencer);
        if self.is_closed() {
            return Vec::new();
        }
        let mut fan = FanOut::default();
        let mut woken = Vec::new();
        // For the conflating subscribers: each derived ring that has some, with its joiners,
        // and its values tagged with its place in that list, pushed in publish order below.
        let mut conflating = Vec::new();
        let mut pushes = Vec::new();
        for derived in tier.derived.load().iter() {
            let Flushed { values, joiners } = derived.flush();
            if values.is_empty() {
                continue;
            }
            skip_for_joiners(derived, &values, &joiners);
            for value in &values {
                append(&derived.ring, &derived.readers, value.seq, &value.frame, &mut fan);
            }
            woken.push(derived.ring.clone());
            if !derived.pushed.load().is_empty() {
                let at = conflating.len();
                pushes.extend(values.into_iter().map(|value| (value, at)));
                conflating.push((derived.clone(), joiners));
            }
        }
        pushes.sort_unstable_by_key(|(value, _)| value.seq);
        for (value, at) in &pushes {
            let (derived, joiners) = &conflating[*at];
            push_value(&mut fan, derived, value, joiners);
        }
        tier.complete(*sequencer);
        drop(sequencer);
        for ring in &woken {
            ring.wake_parked();
        }
        for queue in tier.take_waiting() {
            queue.wake();
        }
        if !woken.is_empty() {
            self.counters.ticked(&fan);
        }
        fan.slow_ids
    }
}

/// Moves the cursor of each reader that joined `derived` since the last tick past the
/// `values` published before it started (the first ones: they are in publish order), before
/// they are appended, so it never reads them. A reader that left since keeps its retired
/// cursor (the claim fails).
fn skip_for_joiners(derived: &Derived, values: &[Value], joiners: &[(u64, u64)]) {
    if joiners.is_empty() {
        return;
    }
    let tail = derived.ring.tail();
    let readers = derived.readers.load();
    for (id, last) in joiners {
        let skip = values.iter().take_while(|v| v.seq <= *last).count() as u64;
        if let (Some(member), true) = (readers.get(*id), skip > 0) {
            // It joined at the tail and nothing was appended since (only ticks append).
            member.claim(tail, tail + skip);
        }
    }
}

/// Pushes `value` of `derived` to the tier's conflating subscribers, but those that joined
/// after it was published.
fn push_value(fan: &mut FanOut, derived: &Derived, value: &Value, joiners: &[(u64, u64)]) {
    let keys = FrameKeys::new(Some(&derived.topic), value.event.as_deref(), value.key.as_deref());
    derived.pushed.load().for_each(|slot| {
        let joined_after = joiners.iter().any(|(id, last)| *id == slot.id && value.seq <= *last);
        if !joined_after {
            count(fan, slot.queue.push(value.seq, &value.frame, &keys), Some(slot.id));
        }
    });
}

#[cfg(all(test, not(ssehub_loom)))]
mod tests {
    use super::*;

    fn frame(n: u64) -> Bytes {
        Bytes::from(format!("data: {n}\n\n"))
    }

    #[test]
    fn a_flush_holds_the_latest_value_of_each_key_in_publish_order() {
        let derived = Derived::new(Duration::from_millis(250), "t".into());
        assert!(!derived.put(1, &frame(1), Some("a"), None));
        assert!(!derived.put(2, &frame(2), Some("b"), None));
        assert!(derived.put(3, &frame(3), Some("a"), None), "a's first value is replaced");
        assert!(!derived.put(4, &frame(4), None, None));
        assert!(derived.put(5, &frame(5), None, None));
        let seqs: Vec<u64> = derived.flush().values.iter().map(|v| v.seq).collect();
        assert_eq!(seqs, [2, 3, 5]);
        assert!(derived.flush().values.is_empty(), "a flush empties the pending values");
    }
}
