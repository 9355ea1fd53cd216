//! The reader: what a subscriber takes from its topics' rings and its own queue, merged in
//! sequence order up to the engine's watermark, then parking and the second look.
//!
//! A subscriber is a `Slot`: its id, its `Queue` and its feeds, one `Feed` per ring it
//! reads. Ownership points one way: the slot owns its feeds; a feed holds the ring, the topic's
//! set of readers and the subscriber's `Member` (its cursor); a member holds the subscriber's
//! id and queue, which is all a ring or a publisher's scan needs of it; nothing a ring holds
//! leads back to a slot, so no cycle needs breaking by hand.
//!
//! The feeds are a copy-on-write snapshot (`ArcSwap`): the registry's writers swap in a new
//! list when the subscriber gains or loses a topic, and a poll loads it without a lock. A
//! subscriber's stream keeps its feed between polls while it has exactly one ([`View`]), and
//! loads the list again only when the queue's feeds version moved (the writers bump it after
//! each swap): at 10,000 subscribers every allocation a poll follows is a cache miss.
//!
//! # One poll, step by step
//!
//! 1. **Look** (`look`). A subscriber of one ring whose queue is empty and open takes from
//!    the ring without the queue's lock (`look_lock_free`): it loads the watermark
//!    (`Acquire`), then the queue's "empty" flag (`Queue::looks_empty`; why that order makes
//!    it sound is on `Queue::empty`), reads the ring up to the watermark and moves its cursor
//!    with a compare-and-swap (`Member::claim`). Otherwise, or when that finds nothing, the
//!    look takes the queue's lock and holds it while it reads each ring and merges them with
//!    the queue's own entries (`look_locked`): by sequence number, a ring entry first on a tie
//!    (a close's final frame carries the last number, so it comes last), nothing past the
//!    watermark, and entries of its own queue past the watermark mean a publish is still in
//!    progress (`retry`: poll again rather than park on a wake that may be spent). A look that
//!    finds nothing registers the waker in the queue under that same lock, so a push either
//!    came before the look (and is seen) or finds the waker.
//! 2. **Park** (`next_batch`). With a waker and nothing found, the reader loads its feeds
//!    again (a pattern may have added a ring since: the registry's writer adds the feed, then
//!    parks the reader in the new ring with the waker its queue holds, if any; so a reader
//!    whose waker was registered before that is parked there by the writer, and one
//!    registered after sees the new feed in this load; a reader that kept its one feed loads
//!    the feeds version instead, and goes this general way if it moved) and parks in every
//!    ring, with its waker, under each ring's `parked` lock (a publish wakes the waker listed
//!    there, not the queue's).
//! 3. **Second look.** It reads its rings once more: a publish between the first look and the
//!    parking would otherwise go unnoticed. For one ring and an empty queue this is the
//!    lock-free look again, and when it finds nothing the poll is done: its own queue needs no
//!    second look (the waker is registered, so a push from now on wakes it).
//!
//! # Locks a poll takes
//!
//! A ring's read takes no lock (`ring.rs`: write-once slots below a tail loaded with
//! `Acquire`, the chunk list an `ArcSwapOption` snapshot), so what a poll locks is its own
//! queue's lock and, to park, each ring's `parked` lock:
//!
//! - **One ring, own queue empty, found data**: none at all. The feeds version (or the feeds
//!   snapshot, an `ArcSwap`), the watermark, the "empty" flag, the ring's tail and chunk list,
//!   and the cursor's compare-and-swap are atomics; the batch is a run of the ring's chunk.
//! - **One ring, own queue empty, found nothing, parks**: the lock-free look, then the queue's
//!   lock once (a locked look that registers the waker), the ring's `parked` lock once, then the
//!   lock-free second look (the queue's lock once more only if that finds the queue no longer
//!   empty, or the reader overflowed).
//! - **Several rings, or entries of its own queued**: the queue's lock, held across the ring
//!   reads and the merge; when that finds nothing and the caller waits, each ring's `parked`
//!   lock, then the same locked look again.
//! - **No rings (a conflating subscriber)**: the queue's lock (a plain drain).
//!
//! The queue's lock and a ring's `parked` lock are never held together: a look releases the
//! queue's lock before it parks, `Slot::close_absorbing` leaves the rings (their `parked`
//! locks) before it takes the queue's, and a publish wakes the wakers it took from the
//! `parked` list after releasing that lock (the ranks in `src/sync/mod.rs` check this in debug
//! builds).
//!
//! # Who moves a cursor
//!
//! The subscriber's own looks, and `Slot::close_absorbing` (`Hub::disconnect`), which takes
//! what the rings still hold for the subscriber into its queue under the queue's lock. Both
//! move it with a compare-and-swap from the position they read at, so a lock-free look racing
//! that close hands over each entry exactly once: whichever claims the range first keeps it,
//! and the other looks again.

use std::task::Waker;

use bytes::Bytes;

use crate::engine::class::{ClassView, Item, Start};
use crate::engine::idmap::IdMap;
use crate::engine::queue::{Limits, Locked, Queue, SlowPolicy};
use crate::engine::ring::{Member, Ring, Run, Taken};
use crate::engine::tier::Tier;
use crate::error::EndReason;
use crate::frame::compress::Codec;
use crate::sync::{Arc, ArcSwap, ArcSwapOption, Guard, Ordering, SharedStr};

/// The subscribers that read a topic's ring, with their cursors: the set a publish counts and
/// scans. Shared by the topic and by each of its readers' feeds, so a subscriber that ends can
/// take itself off under the sequencer.
pub(crate) type Readers = ArcSwap<IdMap<Arc<Member>>>;

/// One ring a subscriber reads, with its place in it.
#[derive(Debug, Clone)]
pub(crate) struct Feed {
    /// The topic's ring.
    pub(crate) ring: Arc<Ring>,
    /// The topic's readers (which a subscriber that ends leaves at once).
    pub(crate) readers: Arc<Readers>,
    /// The subscriber's cursor in the ring.
    pub(crate) member: Arc<Member>,
    /// The rate tier whose derived ring this is (`None`: the topic's own ring). Its readers
    /// read up to the tier's mark instead of the watermark (see `tier.rs`).
    pub(crate) tier: Option<Arc<Tier>>,
}

impl Feed {
    /// How far this feed may be read: the engine's `watermark`, or its tier's mark.
    fn upto(&self, watermark: &impl Fn() -> u64) -> u64 {
        match &self.tier {
            Some(tier) => tier.mark(),
            None => watermark(),
        }
    }
}

/// How far a look at `feeds` (and the queue beside them) may go: the lowest of their limits
/// (every feed of a subscription has the same pace but for the moment a live change swaps
/// them), and the tier that sets it, if one does.
fn horizon<'a>(feeds: &'a [Feed], watermark: &impl Fn() -> u64) -> (u64, Option<&'a Arc<Tier>>) {
    // Each tier's mark loaded once: a tier's mark never passes the watermark (both are the
    // sequencer's value once it is free), so the lowest mark bounds everything.
    let mut lowest: Option<(u64, &Arc<Tier>)> = None;
    for tier in feeds.iter().filter_map(|f| f.tier.as_ref()) {
        if lowest.is_some_and(|(_, seen)| Arc::ptr_eq(seen, tier)) {
            continue;
        }
        let mark = tier.mark();
        if lowest.is_none_or(|(low, _)| mark < low) {
            lowest = Some((mark, tier));
        }
    }
    match lowest {
        Some((mark, tier)) => (mark, Some(tier)),
        None => (watermark(), None),
    }
}

/// One subscriber, as publishers and its own stream see it.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The subscriber's id.
    pub(crate) id: u64,
    /// Its bounded queue (shared with its members, which wake it and close it as slow).
    pub(crate) queue: Arc<Queue>,
    /// Who it is, if the application said.
    pub(crate) principal: Option<SharedStr>,
    /// The rings of the topics it receives (empty for a conflating subscriber, which gets
    /// topic events in its queue). Swapped by the registry's writers (under their lock) and by
    /// [`Slot::close_absorbing`]; loaded, never locked, by the subscriber's polls.
    pub(crate) feeds: ArcSwap<Vec<Feed>>,
    /// Its stream class, when its stream is compressed (`class.rs`): set once by the
    /// registry when it joins the class, read when its stream starts.
    pub(crate) class: ArcSwapOption<Joined>,
}

/// How a subscriber joined its stream class.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Joined {
    /// The encoding.
    pub(crate) codec: Codec,
    /// The level of its solo blocks.
    pub(crate) level: i32,
    /// Where in the class's frames it starts.
    pub(crate) start: Start,
}

/// What the consumer took in one poll.
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
    /// A compressed stream's take instead of `frames` (`class.rs` turns it into bytes).
    pub(crate) items: Vec<Item>,
}

impl Drained {
    /// Whether no frame was taken.
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.run.is_none() && self.items.is_empty()
    }

    /// Whether the poll has nothing to report: no frame and no loss.
    fn is_nothing(&self) -> bool {
        self.is_empty() && self.lagged == 0
    }
}

/// Why a poll stopped the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The stream has ended and everything it may still hand over was handed over.
    Ended(EndReason),
    /// The subscriber fell more than its bound behind a ring and its policy is `Disconnect`:
    /// the queue is now closed as slow.
    Overflowed,
}

impl Slot {
    /// A subscriber with this id, queue and principal, on no topic yet.
    pub(crate) fn new(id: u64, queue: Queue, principal: Option<SharedStr>) -> Slot {
        Slot {
            id,
            queue: Arc::new(queue),
            principal,
            feeds: crate::sync::arc_swap(Vec::new()),
            class: ArcSwapOption::empty(),
        }
    }

    /// Whether it takes topic events from rings (every policy but `Conflate`).
    pub(crate) fn reads_rings(&self) -> bool {
        !matches!(self.queue.policy(), SlowPolicy::Conflate { .. })
    }

    /// Frames waiting in its rings (each capped at its bound).
    pub(crate) fn ring_waiting(&self) -> usize {
        let capacity = self.queue.capacity();
        self.feeds.load().iter().map(|f| f.ring.waiting(f.member.cursor(), capacity)).sum()
    }

    /// Its current feeds (a snapshot).
    pub(crate) fn feeds(&self) -> Guard<Vec<Feed>> {
        self.feeds.load()
    }

    /// Starts reading `feed`. Called by the registry's writers, under their lock.
    pub(crate) fn add_feed(&self, feed: Feed) {
        self.feeds.rcu(|feeds| {
            let mut feeds = Vec::clone(feeds);
            feeds.push(feed.clone());
            feeds
        });
        self.queue.feeds_changed();
    }

    /// Stops reading `ring`: takes its feed out and leaves the ring's parked list. Called by
    /// the registry's writers, under their lock.
    pub(crate) fn remove_feed(&self, ring: &Arc<Ring>) {
        let reads = |f: &Feed| Arc::ptr_eq(&f.ring, ring);
        let before =
            self.feeds.rcu(|feeds| feeds.iter().filter(|f| !reads(f)).cloned().collect::<Vec<_>>());
        self.queue.feeds_changed();
        for feed in before.iter().filter(|f| reads(f)) {
            ring.leave(&feed.member);
        }
    }

    /// Ends the subscriber's stream with `reason` after what its rings hold for it up to
    /// sequence number `upto`: it leaves its topics' readers and rings, those entries move
    /// into its queue (merged with its own entries), and the queue is closed, so the stream
    /// hands over exactly what was published up to `upto` and ends without reading a ring
    /// again. Called under the sequencer, with `upto` its value (so every publish is wholly
    /// before and taken along, or wholly after and no longer counts it). Returns `false` if
    /// the queue was already closed. `last`, if given, is handed over after all of it (at
    /// `upto`, so no watermark holds it back), beyond the bound.
    pub(crate) fn close_absorbing(
        &self,
        reason: EndReason,
        upto: u64,
        last: Option<&Bytes>,
    ) -> bool {
        let feeds = self.feeds.rcu(|_| Vec::new());
        self.queue.feeds_changed();
        for feed in feeds.iter() {
            feed.readers.rcu(|set| set.remove(self.id));
            feed.ring.leave(&feed.member);
        }
        let locked = self.queue.lock();
        if locked.ended().is_some() {
            return false;
        }
        let mut pending: Vec<(u64, Bytes)> = Vec::new();
        for feed in feeds.iter() {
            absorb(feed, upto, &mut pending);
        }
        pending.sort_by_key(|(seq, _)| *seq);
        locked.close_absorbing(reason, pending, last.map(|frame| (upto, frame.clone())));
        true
    }
}

impl Member {
    /// Moves the cursor from `from` to `to` unless someone moved it since the caller read
    /// `from`; returns whether it did. The subscriber's looks and [`Slot::close_absorbing`]
    /// both claim their entries this way, so each entry goes to exactly one of them.
    pub(crate) fn claim(&self, from: u64, to: u64) -> bool {
        // Release on success: pairs with the Acquire of a publisher's scan, which must see the
        // reader as having read up to `to`. Relaxed on failure: the caller reads the cursor
        // again (Acquire) before it looks again.
        self.cursor.compare_exchange(from, to, Ordering::Release, Ordering::Relaxed).is_ok()
    }
}

/// What a subscriber's stream keeps between polls so that a poll of a one-ring subscriber
/// goes straight to its ring: its queue, and that ring's feed while it is the only one. At
/// 10,000 subscribers whatever a poll touches of a subscriber is a cache miss, and loading the
/// slot's feeds touches three allocations (the slot, the snapshot's `Arc`, its `Vec`'s buffer)
/// before the member; this copy is in the stream itself. It stays valid while the queue's
/// feeds version ([`Queue::feeds_version`]) does not move.
#[derive(Debug)]
pub(crate) struct View {
    /// The subscriber's queue (the slot's).
    queue: Arc<Queue>,
    /// Whether it reads rings at all (every policy but `Conflate`).
    reads_rings: bool,
    /// The feeds version `lone` was taken at; `u64::MAX` before the first poll.
    version: u64,
    /// The one feed, when the subscriber has exactly one.
    lone: Option<Feed>,
    /// Where its compressed stream stands in its class's frames, when it is compressed.
    pub(crate) class: Option<ClassView>,
}

impl View {
    /// The view of `slot`'s stream; loads its feeds at the first poll.
    pub(crate) fn new(slot: &Slot) -> View {
        View {
            queue: slot.queue.clone(),
            reads_rings: slot.reads_rings(),
            version: u64::MAX,
            lone: None,
            class: slot
                .class
                .load()
                .as_ref()
                .map(|joined| ClassView::new(joined.codec, joined.level, joined.start)),
        }
    }

    /// Brings the copy of the one feed up to date with `slot`'s feeds, if they changed.
    fn refresh(&mut self, slot: &Slot) {
        // The version first, then the list: the list is at least as new as the version, so a
        // change after this load moves the version again and the next poll reloads.
        let version = self.queue.feeds_version();
        if version == self.version {
            return;
        }
        self.version = version;
        self.lone = match slot.feeds().as_slice() {
            [feed] => Some(feed.clone()),
            _ => None,
        };
    }
}

/// The next batch of `slot`'s stream: its rings' entries and its queue's, merged in sequence
/// order, never past the watermark `watermark()` returns (the last publish that is complete),
/// within `limits`. With a `waker` and nothing ready, parks and looks a second time (see the
/// module docs); the waker is then woken by the next publish to any of its rings, push to its
/// queue or close. `view` is the stream's copy of what it reads (see [`View`]).
pub(crate) fn next_batch(
    slot: &Slot,
    view: &mut View,
    watermark: impl Fn() -> u64,
    limits: Limits,
    waker: Option<&Waker>,
) -> Result<Drained, Stop> {
    if view.class.is_some() {
        return next_compressed(slot, view, &watermark, limits, waker);
    }
    if !view.reads_rings {
        return match view.queue.drain(limits, waker) {
            Ok(popped) => {
                Ok(Drained { frames: popped.frames, lagged: popped.lagged, ..Drained::default() })
            }
            Err(reason) => Err(Stop::Ended(reason)),
        };
    }
    view.refresh(slot);
    if let Some(feed) = &view.lone {
        if let Some(drained) =
            next_from_lone(&view.queue, feed, view.version, &watermark, limits, waker)?
        {
            return Ok(drained);
        }
    }
    next_from_feeds(slot, &watermark, limits, waker)
}

/// [`next_batch`] for a subscriber with one feed, `feed`, as of feeds version `version`:
/// the lock-free look, then (nothing found) the locked look that registers the waker, parking
/// in the ring and a lock-free second look. `None` when the feeds changed before it parked:
/// the caller then goes the general way, which loads them.
fn next_from_lone(
    queue: &Arc<Queue>,
    feed: &Feed,
    version: u64,
    watermark: &impl Fn() -> u64,
    limits: Limits,
    waker: Option<&Waker>,
) -> Result<Option<Drained>, Stop> {
    if let Quick::Took(drained) = look_lock_free(queue, feed, watermark, limits) {
        return Ok(Some(drained));
    }
    let drained = look_locked(queue, std::slice::from_ref(feed), watermark, limits, waker)?;
    let Some(waker) = waker else {
        return Ok(Some(drained));
    };
    if !drained.is_nothing() {
        return Ok(Some(drained));
    }
    if drained.retry {
        waker.wake_by_ref();
        return Ok(Some(drained));
    }
    // The look registered the waker; the version is loaded after it, as the general way loads
    // the feeds after it: a feed added before the waker was registered moved the version
    // first (this load sees it), one added after finds the waker and parks the reader in the
    // new ring with it.
    if queue.feeds_version() != version {
        return Ok(None);
    }
    feed.ring.park(&feed.member, waker);
    // The second look: the ring only. The queue needs none: the waker is registered, so a
    // push from its look on wakes it.
    match look_lock_free(queue, feed, watermark, limits) {
        Quick::Took(drained) => Ok(Some(drained)),
        Quick::Nothing => Ok(Some(Drained::default())),
        Quick::Locked => {
            let second =
                look_locked(queue, std::slice::from_ref(feed), watermark, limits, Some(waker))?;
            if second.retry {
                waker.wake_by_ref();
            }
            Ok(Some(second))
        }
    }
}

/// [`next_batch`] the general way: the feeds loaded from the slot, each ring looked at, parked
/// in and looked at again.
fn next_from_feeds(
    slot: &Slot,
    watermark: &impl Fn() -> u64,
    limits: Limits,
    waker: Option<&Waker>,
) -> Result<Drained, Stop> {
    let drained = look(slot, &slot.feeds(), watermark, limits, waker)?;
    let Some(waker) = waker else {
        return Ok(drained);
    };
    if !drained.is_nothing() {
        return Ok(drained);
    }
    if drained.retry {
        waker.wake_by_ref();
        return Ok(drained);
    }
    // The look registered the waker; the feeds are loaded after it (see the module docs).
    let feeds = slot.feeds();
    for feed in feeds.iter() {
        feed.ring.park(&feed.member, waker);
    }
    let second = look(slot, &feeds, watermark, limits, Some(waker))?;
    if second.retry {
        waker.wake_by_ref();
    }
    Ok(second)
}

/// One look at `feeds` and the queue: lock-free when it can be and finds something, otherwise
/// under the queue's lock, which registers `waker` when nothing is ready.
fn look(
    slot: &Slot,
    feeds: &[Feed],
    watermark: &impl Fn() -> u64,
    limits: Limits,
    waker: Option<&Waker>,
) -> Result<Drained, Stop> {
    if let [feed] = feeds {
        if let Quick::Took(drained) = look_lock_free(&slot.queue, feed, watermark, limits) {
            return Ok(drained);
        }
    }
    look_locked(&slot.queue, feeds, watermark, limits, waker)
}

/// What a lock-free look found.
#[derive(Debug)]
enum Quick {
    /// Frames (or a skip) it claimed.
    Took(Drained),
    /// The queue looked empty and open and the ring held nothing up to the watermark.
    Nothing,
    /// It does not apply (something of its own queued, or closed), the subscriber overflowed,
    /// or its claim lost to a close taking the entries in: look under the queue's lock.
    Locked,
}

/// The look of a reader of one ring with nothing of its own queued: reads the ring without the
/// queue's lock.
fn look_lock_free(
    queue: &Queue,
    feed: &Feed,
    watermark: &impl Fn() -> u64,
    limits: Limits,
) -> Quick {
    // The watermark (or the tier's mark) first, then the flag: see `Queue::empty`.
    let upto = feed.upto(watermark);
    if !queue.looks_empty() {
        return Quick::Locked;
    }
    let cursor = feed.member.cursor();
    let mut drained = Drained::default();
    let (taken, run) = take_run(feed, cursor, upto, limits, &mut drained.frames);
    // Overflowed: the locked look closes the queue as slow.
    if taken.overflowed {
        return Quick::Locked;
    }
    if taken.count == 0 && taken.skipped == 0 {
        return Quick::Nothing;
    }
    if !feed.member.claim(cursor, taken.from + taken.count as u64) {
        return Quick::Locked;
    }
    if taken.count > 0 {
        queue.note_taken();
    }
    drained.run = run;
    // An empty queue has no lag of its own: a drain takes its lag with its last entry.
    drained.skipped = taken.skipped;
    drained.lagged = taken.skipped;
    Quick::Took(drained)
}

/// The look under the queue's lock: everything ready in `feeds` and the queue, merged, up to
/// the `watermark` (a tier's mark for a tier's feeds; once closed, up to where the close
/// said), then the waker registered if nothing was.
fn look_locked(
    queue: &Arc<Queue>,
    feeds: &[Feed],
    watermark: &impl Fn() -> u64,
    limits: Limits,
    waker: Option<&Waker>,
) -> Result<Drained, Stop> {
    // Before the lock, as the lock-free look loads it before the flag.
    let (watermark, tier) = horizon(feeds, watermark);
    let mut locked = queue.lock();
    // Once closed, the close fixed how far the rings go (the watermark read before this lock
    // may predate it); while open, the watermark does.
    let upto = if locked.ended().is_some() { locked.rings_upto() } else { watermark };
    // Closed and discarded, or its entries taken in: the rings hold nothing more for it.
    let feeds = if locked.rings_upto() == 0 { &[] } else { feeds };
    if locked.heartbeat_waiting() && feeds.iter().any(|f| f.ring.tail() > f.member.cursor()) {
        locked.drop_heartbeat();
    }
    let ready = locked.ready(watermark);
    let taken = match feeds {
        [] => Ok(take_own(&mut locked, ready, limits)),
        [feed] if ready == 0 => take_one(feed, queue, upto, limits),
        _ => take_merged(&mut locked, feeds, upto, ready, limits),
    };
    let Ok(mut drained) = taken else {
        locked.close_as_slow();
        return Err(Stop::Overflowed);
    };
    drained.lagged = locked.take_lagged() + drained.skipped;
    if drained.is_nothing() {
        if let Some(reason) = locked.ended() {
            if locked.len() == 0 {
                return Err(Stop::Ended(reason));
            }
        }
        // An entry past the watermark belongs to a publish still in progress: its wake may
        // already have been spent on this poll, so ask to be polled again. Past a tier's
        // mark it waits for the next tick, which wakes the queue (asking now would spin).
        let waiting = locked.len() > ready;
        match tier {
            Some(tier) if waiting => tier.wake_at_tick(queue),
            _ => drained.retry = waiting,
        }
        if let Some(waker) = waker {
            locked.register(waker);
        }
    }
    Ok(drained)
}

/// The subscriber overflowed a ring (`Disconnect`, more than its bound behind).
#[derive(Debug)]
struct Overflowed;

/// Takes the first `ready` entries of the queue alone, within `limits`.
fn take_own(locked: &mut Locked<'_>, ready: usize, limits: Limits) -> Drained {
    let count = locked.batch_len(ready, limits);
    Drained { frames: locked.pop_many(count), ..Drained::default() }
}

/// Takes from one ring alone (nothing of its own is ready): a run of one chunk when it can.
/// Under the queue's lock.
fn take_one(feed: &Feed, queue: &Queue, upto: u64, limits: Limits) -> Result<Drained, Overflowed> {
    let cursor = feed.member.cursor();
    let mut drained = Drained::default();
    let (taken, run) = take_run(feed, cursor, upto, limits, &mut drained.frames);
    if taken.overflowed {
        return Err(Overflowed);
    }
    if (taken.count > 0 || taken.skipped > 0) && !claim_locked(feed, cursor, &taken, taken.count) {
        return Ok(Drained { retry: true, ..Drained::default() });
    }
    if taken.count > 0 {
        queue.note_taken();
    }
    drained.run = run;
    drained.skipped = taken.skipped;
    Ok(drained)
}

/// One ring's candidates in a merge.
#[derive(Debug)]
struct Candidates {
    /// What the ring handed over, in sequence order.
    list: Vec<(u64, Bytes)>,
    /// How many of `list` went into the batch.
    head: usize,
    /// The cursor they were read at.
    cursor: u64,
    /// What the ring said about them.
    taken: Taken,
}

/// Takes from several rings and the first `ready` queued entries, merged by sequence number.
/// Under the queue's lock.
fn take_merged(
    locked: &mut Locked<'_>,
    feeds: &[Feed],
    upto: u64,
    ready: usize,
    limits: Limits,
) -> Result<Drained, Overflowed> {
    let queue = locked.queue();
    let mut drained = Drained::default();
    let mut rings = Vec::with_capacity(feeds.len());
    for feed in feeds {
        let cursor = feed.member.cursor();
        let mut list = Vec::new();
        let taken = take(feed, cursor, upto, limits, |seq, f| list.push((seq, f.clone())));
        if taken.overflowed {
            return Err(Overflowed);
        }
        drained.skipped += taken.skipped;
        rings.push(Candidates { list, head: 0, cursor, taken });
    }
    let from_queue = merge(&mut rings, locked, ready, limits, &mut drained.frames);
    let mut from_rings = 0;
    for (feed, ring) in feeds.iter().zip(&rings) {
        if (ring.head > 0 || ring.taken.skipped > 0)
            && !claim_locked(feed, ring.cursor, &ring.taken, ring.head)
        {
            return Ok(Drained { retry: true, ..Drained::default() });
        }
        from_rings += ring.head;
    }
    locked.skip(from_queue);
    if from_rings > 0 {
        queue.note_taken();
    }
    Ok(drained)
}

/// Fills `out` with the rings' candidates and the first `ready` queued entries in sequence
/// order (a ring entry first on a tie), within `limits`; advances each ring's `head` and
/// returns how many queued entries went in.
fn merge(
    rings: &mut [Candidates],
    locked: &Locked<'_>,
    ready: usize,
    limits: Limits,
    out: &mut Vec<Bytes>,
) -> usize {
    let mut from_queue = 0;
    let mut bytes = 0;
    loop {
        let ring = rings
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.list.get(r.head).map(|(seq, _)| (*seq, i)))
            .min();
        let queued = (from_queue < ready).then(|| locked.entry(from_queue).0);
        let source = match (ring, queued) {
            (Some((seq, _)), Some(q)) if q < seq => None,
            (Some((_, i)), _) => Some(i),
            (None, Some(_)) => None,
            (None, None) => break,
        };
        let frame = match source {
            Some(i) => &rings[i].list[rings[i].head].1,
            None => locked.entry(from_queue).1,
        };
        if !limits.fits(out.len(), bytes, frame.len()) {
            break;
        }
        bytes += frame.len();
        out.push(frame.clone());
        match source {
            Some(i) => rings[i].head += 1,
            None => from_queue += 1,
        }
    }
    from_queue
}

/// Claims, under the queue's lock, the `count` entries a look took from `feed` at `cursor`
/// (after any skip). It cannot fail: only the subscriber's own looks and
/// [`Slot::close_absorbing`] move a cursor, and that close holds the same lock. If it did
/// fail, the look hands nothing over and asks to be polled again.
fn claim_locked(feed: &Feed, cursor: u64, taken: &Taken, count: usize) -> bool {
    let claimed = feed.member.claim(cursor, taken.from + count as u64);
    debug_assert!(claimed, "a cursor moved under the queue's lock");
    claimed
}

/// [`next_batch`] for a compressed stream: its class's ring (while it reads it) and its own
/// queue. A stream inside the class's frames with nothing of its own queued takes a run of
/// blocks without a lock; anything else is taken under the queue's lock as [`Item`]s, which
/// the stream's [`ClassView`] turns into bytes.
fn next_compressed(
    slot: &Slot,
    view: &mut View,
    watermark: &impl Fn() -> u64,
    limits: Limits,
    waker: Option<&Waker>,
) -> Result<Drained, Stop> {
    view.refresh(slot);
    // Borrowed, not cloned: the class's ring and readers are shared by every member, and a
    // refcount per poll would bounce their cache lines between the cores.
    let feed = view.lone.as_ref();
    let blocks = view.class.as_ref().is_some_and(ClassView::takes_blocks);
    if let (Some(feed), true) = (feed, blocks) {
        if let Some(drained) = look_blocks(&view.queue, feed, watermark, limits) {
            return Ok(drained);
        }
    }
    let drained = look_class_locked(&view.queue, feed, watermark, limits, waker)?;
    let Some(waker) = waker else {
        return Ok(drained);
    };
    if !drained.is_nothing() || drained.retry {
        if drained.retry {
            waker.wake_by_ref();
        }
        return Ok(drained);
    }
    let Some(feed) = feed else {
        return Ok(drained);
    };
    if view.queue.feeds_version() != view.version {
        // Its feed went (a disconnect took its entries in): look again, at the queue.
        waker.wake_by_ref();
        return Ok(drained);
    }
    feed.ring.park(&feed.member, waker);
    let second = look_class_locked(&view.queue, Some(feed), watermark, limits, Some(waker))?;
    if second.retry {
        waker.wake_by_ref();
    }
    Ok(second)
}

/// The lock-free look of a compressed stream inside its class's frames with nothing of its
/// own queued: a run of one chunk's blocks, sent as they are. `None` when that does not apply
/// (something queued, a skip, an overflow, entries across two chunks, nothing there).
fn look_blocks(
    queue: &Queue,
    feed: &Feed,
    watermark: &impl Fn() -> u64,
    limits: Limits,
) -> Option<Drained> {
    // The watermark first, then the flag: see `Queue::empty`.
    let upto = watermark();
    if !queue.looks_empty() {
        return None;
    }
    let cursor = feed.member.cursor();
    let mut spill = Vec::new();
    let (taken, run) = take_run(feed, cursor, upto, limits, &mut spill);
    let run = run.filter(|_| !taken.overflowed && taken.skipped == 0 && taken.count > 0)?;
    if !feed.member.claim(cursor, taken.from + taken.count as u64) {
        return None;
    }
    queue.note_taken();
    Some(Drained { run: Some(run), ..Drained::default() })
}

/// The look of a compressed stream under its queue's lock: the class ring's entries (while it
/// reads it) and its own queue's, merged by sequence number (a ring entry first on a tie), up
/// to the watermark, as [`Item`]s; the waker registered when nothing is ready.
fn look_class_locked(
    queue: &Arc<Queue>,
    feed: Option<&Feed>,
    watermark: &impl Fn() -> u64,
    limits: Limits,
    waker: Option<&Waker>,
) -> Result<Drained, Stop> {
    let watermark = watermark();
    let mut locked = queue.lock();
    let upto = if locked.ended().is_some() { locked.rings_upto() } else { watermark };
    let feed = feed.filter(|_| locked.rings_upto() != 0);
    if locked.heartbeat_waiting() && feed.is_some_and(|f| f.ring.tail() > f.member.cursor()) {
        locked.drop_heartbeat();
    }
    let ready = locked.ready(watermark);
    let mut ring: Vec<(Arc<crate::engine::ring::Chunk>, usize)> = Vec::new();
    let taken = match feed {
        Some(feed) => {
            let cursor = feed.member.cursor();
            let bound = feed.member.bound();
            let taken = feed.ring.take_class(cursor, bound, upto, limits, |chunk, i| {
                ring.push((chunk.clone(), i));
            });
            if taken.overflowed {
                locked.close_as_slow();
                return Err(Stop::Overflowed);
            }
            Some((feed, cursor, taken))
        }
        None => None,
    };
    let mut drained = Drained::default();
    let (head, from_queue) = merge_items(&ring, &locked, ready, limits, &mut drained.items);
    if let Some((feed, cursor, taken)) = taken {
        if (head > 0 || taken.skipped > 0) && !claim_locked(feed, cursor, &taken, head) {
            return Ok(Drained { retry: true, ..Drained::default() });
        }
        drained.skipped = taken.skipped;
        if head > 0 {
            queue.note_taken();
        }
    }
    locked.skip(from_queue);
    drained.lagged = locked.take_lagged() + drained.skipped;
    if drained.is_nothing() {
        if let Some(reason) = locked.ended() {
            if locked.len() == 0 {
                return Err(Stop::Ended(reason));
            }
        }
        drained.retry = locked.len() > ready;
        if let Some(waker) = waker {
            locked.register(waker);
        }
    }
    Ok(drained)
}

/// Merges the class ring's entries (`ring`, in order) with the first `ready` queued entries by
/// sequence number (a ring entry first on a tie) into `out`, within `limits`; returns how many
/// of each went in.
fn merge_items(
    ring: &[(Arc<crate::engine::ring::Chunk>, usize)],
    locked: &Locked<'_>,
    ready: usize,
    limits: Limits,
    out: &mut Vec<Item>,
) -> (usize, usize) {
    let (mut head, mut from_queue, mut bytes) = (0, 0, 0);
    loop {
        let entry = ring.get(head).and_then(|(chunk, i)| Some((chunk, *i, chunk.class_entry(*i)?)));
        let queued = (from_queue < ready).then(|| locked.entry(from_queue));
        let from_ring = match (&entry, &queued) {
            (Some((_, _, e)), Some((seq, _))) => e.seq <= *seq,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let len = match (&entry, &queued) {
            (Some((_, _, e)), _) if from_ring => e.block.len(),
            (_, Some((_, frame))) => frame.len(),
            _ => 0,
        };
        if !limits.fits(out.len(), bytes, len) {
            break;
        }
        bytes += len;
        match (entry, queued) {
            (Some((chunk, index, _)), _) if from_ring => {
                out.push(Item::Class { chunk: chunk.clone(), index });
                head += 1;
            }
            (_, Some((_, frame))) => {
                out.push(Item::Own(frame.clone()));
                from_queue += 1;
            }
            _ => break,
        }
    }
    (head, from_queue)
}

/// Moves into `out` everything `feed`'s ring holds for the subscriber up to `upto`, claiming it
/// (a lock-free look racing this takes each entry or leaves it, never both).
fn absorb(feed: &Feed, upto: u64, out: &mut Vec<(u64, Bytes)>) {
    loop {
        let cursor = feed.member.cursor();
        let mut list = Vec::new();
        let taken = take(feed, cursor, upto, Limits::ALL, |seq, frame| {
            list.push((seq, frame.clone()));
        });
        // A reader over its bound (`Disconnect`) gets nothing more from the ring, as a look
        // would not.
        let to = if taken.overflowed { cursor } else { taken.from + taken.count as u64 };
        if feed.member.claim(cursor, to) {
            out.append(&mut list);
            return;
        }
    }
}

/// The ring's read for this subscriber: its entries from `cursor` up to `upto` within
/// `limits`, each handed to `sink`, under the subscriber's bound and policy.
fn take(
    feed: &Feed,
    cursor: u64,
    upto: u64,
    limits: Limits,
    sink: impl FnMut(u64, &Bytes),
) -> Taken {
    feed.ring.take(cursor, feed.member.bound(), upto, limits, sink)
}

/// [`take`] as a batch: a run of one chunk when it can be, the frames in `out` otherwise.
fn take_run(
    feed: &Feed,
    cursor: u64,
    upto: u64,
    limits: Limits,
    out: &mut Vec<Bytes>,
) -> (Taken, Option<Run>) {
    feed.ring.take_run(cursor, feed.member.bound(), upto, limits, out)
}

/// A feed of `ring` for subscriber `id` with `queue`, joining it at its tail, on a reader set
/// of its own (for tests that need no registry).
#[cfg(all(test, not(ssehub_loom)))]
pub(crate) fn lone_feed(id: u64, queue: &Arc<Queue>, ring: &Arc<Ring>) -> Feed {
    let member = Arc::new(Member::new(id, queue.clone(), ring.join(queue.capacity())));
    let readers = crate::sync::arc_swap(IdMap::new().insert(id, member.clone()));
    Feed { ring: ring.clone(), readers: Arc::new(readers), member, tier: None }
}

#[cfg(all(test, not(ssehub_loom)))]
mod tests {
    use super::*;
    use crate::engine::queue::FrameKeys;

    fn frame(n: u64) -> Bytes {
        Bytes::from(format!("data: {n}\n\n"))
    }

    /// Subscriber 1 reading `rings` with a bound of `capacity` under `policy`.
    fn subscriber(rings: &[&Arc<Ring>], capacity: usize, policy: SlowPolicy) -> Slot {
        let slot = Slot::new(1, Queue::new(capacity, policy), None);
        for ring in rings {
            slot.add_feed(lone_feed(1, &slot.queue, ring));
        }
        slot
    }

    /// Publishes event `seq` to `ring`.
    fn publish(ring: &Ring, seq: u64) {
        ring.push(seq, &frame(seq));
    }

    /// Sends event `seq` to the subscriber's own queue.
    fn send(slot: &Slot, seq: u64) {
        slot.queue.push_targeted(seq, &frame(seq), &FrameKeys::default());
    }

    /// The frames a poll with the watermark at `watermark` hands over, as the numbers they
    /// carry, and the loss it reports.
    fn poll(slot: &Slot, watermark: u64, limits: Limits) -> Result<(Vec<u64>, u64), Stop> {
        let drained = next_batch(slot, &mut View::new(slot), || watermark, limits, None)?;
        let frames = match &drained.run {
            Some(run) => run.frames().to_vec(),
            None => drained.frames.clone(),
        };
        let numbers = frames
            .iter()
            .map(|f| {
                let text = std::str::from_utf8(f).expect("UTF-8");
                text.trim_end().trim_start_matches("data: ").parse().expect("a number")
            })
            .collect();
        Ok((numbers, drained.lagged))
    }

    /// The numbers a batch carries.
    fn numbers(drained: &Drained) -> Vec<u64> {
        let frames = match &drained.run {
            Some(run) => run.frames().to_vec(),
            None => drained.frames.clone(),
        };
        frames
            .iter()
            .map(|f| {
                let text = std::str::from_utf8(f).expect("UTF-8");
                text.trim_end().trim_start_matches("data: ").parse().expect("a number")
            })
            .collect()
    }

    #[test]
    fn leaving_a_ring_hands_over_what_it_held_and_a_stale_view_gets_nothing_later() {
        let (a, b) = (Arc::new(Ring::new()), Arc::new(Ring::new()));
        let slot = subscriber(&[&a], 16, SlowPolicy::Disconnect);
        publish(&a, 1);
        // A poll that loaded its feeds before the change goes on with this one.
        let stale = slot.feeds()[0].clone();
        publish(&b, 2);
        // The change: b joined at its tail, a left.
        slot.add_feed(lone_feed(1, &slot.queue, &b));
        slot.leave_feed_absorbing(&a, Vec::new());
        publish(&a, 3);
        publish(&b, 4);
        let quick = look_lock_free(&slot.queue, &stale, &|| 4, Limits::ALL);
        assert!(matches!(quick, Quick::Locked), "the queue holds a's entry: {quick:?}");
        let locked =
            look_locked(&slot.queue, std::slice::from_ref(&stale), &|| 4, Limits::ALL, None);
        assert_eq!(numbers(&locked.expect("open")), [1], "a's entry, and nothing after the change");
        assert_eq!(poll(&slot, 4, Limits::ALL), Ok((vec![4], 0)));
        assert!(matches!(look_lock_free(&slot.queue, &stale, &|| 4, Limits::ALL), Quick::Nothing));
    }

    #[test]
    fn two_rings_and_the_queue_merge_in_sequence_order() {
        let (a, b) = (Arc::new(Ring::new()), Arc::new(Ring::new()));
        let slot = subscriber(&[&a, &b], 16, SlowPolicy::Disconnect);
        publish(&a, 1);
        send(&slot, 2);
        publish(&b, 3);
        publish(&a, 4);
        send(&slot, 5);
        publish(&b, 6);
        assert_eq!(poll(&slot, 6, Limits::ALL), Ok((vec![1, 2, 3, 4, 5, 6], 0)));
        assert_eq!(poll(&slot, 6, Limits::ALL), Ok((vec![], 0)));
    }

    #[test]
    fn a_merged_batch_stops_at_its_limits_and_the_next_one_goes_on_from_there() {
        let (a, b) = (Arc::new(Ring::new()), Arc::new(Ring::new()));
        let slot = subscriber(&[&a, &b], 16, SlowPolicy::Disconnect);
        for seq in 1..=6 {
            match seq % 3 {
                0 => send(&slot, seq),
                1 => publish(&a, seq),
                _ => publish(&b, seq),
            }
        }
        let two = Limits { frames: 2, bytes: usize::MAX };
        assert_eq!(poll(&slot, 6, two), Ok((vec![1, 2], 0)));
        assert_eq!(poll(&slot, 6, two), Ok((vec![3, 4], 0)));
        // Every frame is 9 bytes: 10 bytes hold one, and a batch always holds at least one.
        let one = Limits { frames: 64, bytes: 10 };
        assert_eq!(poll(&slot, 6, one), Ok((vec![5], 0)));
        assert_eq!(poll(&slot, 6, one), Ok((vec![6], 0)));
    }

    #[test]
    fn nothing_past_the_watermark_is_taken_and_a_queued_entry_past_it_asks_for_a_retry() {
        let a = Arc::new(Ring::new());
        let slot = subscriber(&[&a], 16, SlowPolicy::Disconnect);
        publish(&a, 1);
        publish(&a, 2);
        send(&slot, 3);
        publish(&a, 4);
        assert_eq!(poll(&slot, 1, Limits::ALL), Ok((vec![1], 0)));
        let drained =
            next_batch(&slot, &mut View::new(&slot), || 2, Limits::ALL, None).expect("open");
        assert_eq!(drained.run.map(|r| r.frames().len()), Some(1));
        let waiting =
            next_batch(&slot, &mut View::new(&slot), || 2, Limits::ALL, None).expect("open");
        assert!(waiting.is_nothing() && waiting.retry, "{waiting:?}");
        assert_eq!(poll(&slot, 4, Limits::ALL), Ok((vec![3, 4], 0)));
    }

    #[test]
    fn one_ring_and_an_empty_queue_hand_over_a_run_without_the_queue() {
        let a = Arc::new(Ring::new());
        let slot = subscriber(&[&a], 16, SlowPolicy::Disconnect);
        publish(&a, 1);
        publish(&a, 2);
        assert!(slot.queue.looks_empty());
        let drained =
            next_batch(&slot, &mut View::new(&slot), || 2, Limits::ALL, None).expect("open");
        assert!(drained.frames.is_empty());
        assert_eq!(drained.run.map(|r| r.frames().to_vec()), Some(vec![frame(1), frame(2)]));
        send(&slot, 3);
        assert!(!slot.queue.looks_empty(), "a push clears the flag");
        assert_eq!(poll(&slot, 3, Limits::ALL), Ok((vec![3], 0)));
        assert!(slot.queue.looks_empty(), "a drain that empties the queue sets it");
    }

    #[test]
    fn drop_oldest_skips_to_its_bound_and_reports_the_skip_as_lag() {
        let (a, b) = (Arc::new(Ring::new()), Arc::new(Ring::new()));
        let lone = subscriber(&[&a], 2, SlowPolicy::DropOldest);
        for seq in 1..=5 {
            publish(&a, seq);
        }
        assert_eq!(poll(&lone, 5, Limits::ALL), Ok((vec![4, 5], 3)));
        let merged = subscriber(&[&a, &b], 2, SlowPolicy::DropOldest);
        for seq in 6..=9 {
            publish(&a, seq);
        }
        publish(&b, 10);
        assert_eq!(poll(&merged, 10, Limits::ALL), Ok((vec![8, 9, 10], 2)));
    }

    #[test]
    fn a_disconnect_reader_over_its_bound_is_closed_as_slow() {
        let a = Arc::new(Ring::new());
        let slot = subscriber(&[&a], 2, SlowPolicy::Disconnect);
        for seq in 1..=3 {
            publish(&a, seq);
        }
        assert_eq!(poll(&slot, 3, Limits::ALL), Err(Stop::Overflowed));
        assert!(slot.queue.is_closed());
        assert_eq!(poll(&slot, 3, Limits::ALL), Err(Stop::Ended(EndReason::Slow)));
    }

    #[test]
    fn close_absorbing_hands_over_exactly_what_came_up_to_the_close() {
        let (a, b) = (Arc::new(Ring::new()), Arc::new(Ring::new()));
        let slot = subscriber(&[&a, &b], 16, SlowPolicy::Disconnect);
        publish(&b, 1);
        send(&slot, 2);
        publish(&a, 3);
        assert!(slot.close_absorbing(EndReason::Disconnected, 3, None));
        assert!(!slot.close_absorbing(EndReason::Disconnected, 3, None), "closes once");
        publish(&a, 4);
        assert!(slot.feeds().is_empty());
        assert_eq!(poll(&slot, 4, Limits::ALL), Ok((vec![1, 2, 3], 0)));
        assert_eq!(poll(&slot, 4, Limits::ALL), Err(Stop::Ended(EndReason::Disconnected)));
    }
}

impl Slot {
    /// Stops reading `ring` while the stream goes on (a live change dropped its topic): the
    /// feed leaves the slot's feeds, the topic's readers and the ring's parked list, and the
    /// entries the ring still holds for the subscriber move into its queue, merged with its
    /// own by sequence number, so the stream hands over everything published before the
    /// change and nothing after. Called under the sequencer (no entry can be appended
    /// meanwhile) and the registry's writer lock.
    ///
    /// The entries are claimed as a close claims them, by moving the cursor, here to
    /// `u64::MAX`: a poll still holding this feed in its view loses its claim (or finds
    /// nothing past the cursor) and looks again under the queue's lock, where the new feeds
    /// version sends it to the slot's new list. No later publish to the ring can reach it.
    pub(crate) fn leave_feed_absorbing(&self, ring: &Arc<Ring>, pending: Vec<(u64, Bytes)>) {
        let reads = |f: &Feed| Arc::ptr_eq(&f.ring, ring);
        let before =
            self.feeds.rcu(|feeds| feeds.iter().filter(|f| !reads(f)).cloned().collect::<Vec<_>>());
        self.queue.feeds_changed();
        let Some(feed) = before.iter().find(|f| reads(f)) else {
            return;
        };
        feed.readers.rcu(|set| set.remove(self.id));
        ring.leave(&feed.member);
        // Under the queue's lock, as a close: a look under that lock merges the ring's entries
        // with the queue's, so it sees them all in one place or the other, never half.
        let waker = {
            let mut locked = self.queue.lock();
            let (mut entries, skipped) = retire(feed);
            // A tier's pending values were published after every entry its ring holds.
            entries.extend(pending);
            locked.absorb_open(entries, skipped)
        };
        // Outside the lock, as a push wakes: the stream has entries to take.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Slot {
    /// Moves `pending` (a tier's values a conflating subscriber would have got at the next
    /// tick, in sequence order) into its queue, as a live change moves it off the tier.
    pub(crate) fn absorb_pending(&self, pending: Vec<(u64, Bytes)>) {
        let waker = self.queue.lock().absorb_open(pending, 0);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Claims everything `feed`'s ring holds for the subscriber and retires the cursor (see
/// [`Slot::leave_feed_absorbing`]); returns the entries and how many its bound skipped.
fn retire(feed: &Feed) -> (Vec<(u64, Bytes)>, u64) {
    loop {
        let cursor = feed.member.cursor();
        let mut list = Vec::new();
        let taken = take(feed, cursor, u64::MAX, Limits::ALL, |seq, frame| {
            list.push((seq, frame.clone()));
        });
        if taken.overflowed {
            list.clear();
        }
        if feed.member.claim(cursor, u64::MAX) {
            return (list, taken.skipped);
        }
    }
}
