//! The one sequenced publish pipeline: every publish, broadcast, targeted send and every event
//! numbered elsewhere (a broker's) takes its number, is encoded once and is delivered here,
//! under the sequencer, so sequence order is delivery order for every subscriber.

use std::time::Instant;

use bytes::Bytes;

use super::{Engine, Published};
use crate::engine::history::format_id;
use crate::engine::idmap::IdMap;
use crate::engine::queue::{FrameKeys, Pushed};
use crate::engine::reader::Readers;
use crate::engine::registry::{Slot, TopicState};
use crate::engine::ring::Ring;
use crate::engine::stats::FanOut;
use crate::error::EndReason;
use crate::error::{EventError, PublishError};
use crate::frame::Event;
use crate::sync::{lock, Arc};

/// Where an event's sequence number comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Number {
    /// The engine's next one (none while an external clock is attached: the clock's owner
    /// numbers the shared events, and a local one would collide with them).
    Next,
    /// Number `n` of the attached external clock (see [`super::ExternalClock`]): skipped if
    /// already delivered, and a number past the next one is a gap.
    Given(u64),
}

/// How an event's number fitted the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Numbered {
    /// Next in order.
    InOrder,
    /// Numbers before it were missed: every stream was ended after the last number delivered
    /// (its client resumes exactly, from wherever the missed events are), then it was taken.
    AfterGap,
    /// Already delivered (or before the external clock's coverage): skipped.
    Duplicate,
}

/// What one pass through the pipeline did.
#[derive(Debug)]
pub(crate) struct Sequenced {
    /// Receivers and id.
    pub(crate) published: Published,
    /// How its number fitted.
    pub(crate) numbered: Numbered,
    /// Subscribers the publish dropped as slow: the caller takes them out of the registry
    /// (and tells the services), now that the sequencer is released.
    pub(crate) slow: Vec<u64>,
}

/// One event as a deliver step sees it, under the sequencer.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// The event, with its id on the wire.
    pub(crate) event: &'a Event,
    /// Its frame, encoded once.
    pub(crate) frame: &'a Bytes,
    /// Whether it is kept for replay: not while an external clock numbers the shared events
    /// and this one is local (it has no number of its own).
    pub(crate) replayable: bool,
    /// The publisher's own id, to find it by on a resume (`None` for an id the engine or the
    /// external clock assigned: those are parsed, not looked up).
    pub(crate) own_id: Option<&'a str>,
}

/// Whether an event's id is the publisher's own (kept in history, to find it by) or was
/// assigned from its number (parsed on a resume, never looked up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnId {
    /// The publisher's own id, or none.
    Kept,
    /// Assigned by the engine or the external clock.
    Assigned,
}

/// An event checked before the sequencer is taken.
struct Prepared {
    /// Normalised and validated.
    event: Event,
    /// Its frame, when its id is already final (the publisher's own, or none).
    frame: Option<Bytes>,
}

impl Engine {
    /// Runs one event through the sequencer: takes its number, encodes it once (with an id
    /// from the number, when the engine or the external clock assigns one), calls `deliver`
    /// with the entry, stores the watermark, releases the sequencer, wakes the readers and
    /// counts. `event` is `None` for a given number whose event cannot be delivered here (the
    /// number is used up all the same, so it does not look like a gap).
    ///
    /// A local event that is refused costs no number; an event with a given number that is
    /// refused uses its number up before the error is returned.
    pub(crate) fn sequenced(
        &self,
        number: Number,
        event: Option<Event>,
        deliver: impl FnOnce(&Entry<'_>) -> FanOut,
    ) -> Result<Sequenced, PublishError> {
        // The publish-to-write latency starts here, before validation and the sequencer's wait
        // (one clock read per publish; see `Counters::stamp`).
        #[cfg(feature = "metrics")]
        let entered = self.counters.clock();
        // Validate (and, with a final id, encode) before taking the sequencer, so a refused
        // local event costs no number and holds no lock.
        let prepared = event.map(|event| self.prepare(number, event));
        let prepared = match (number, prepared) {
            (Number::Next, Some(Err(error))) => return Err(error.into()),
            (_, prepared) => prepared,
        };
        let mut sequencer = lock(&self.sequencer);
        if self.is_closed() {
            // Shutdown took the sequencer to fix the last sequence number streams hand over:
            // an event after it would be counted and never delivered.
            let event = prepared.and_then(Result::ok).map(|p| p.event).unwrap_or_default();
            return Err(PublishError::Closed(Box::new(event)));
        }
        let previous = *sequencer;
        let Some((seq, numbered)) = self.take_number(&mut sequencer, number) else {
            return Ok(Sequenced::nothing(Numbered::Duplicate));
        };
        let (event, frame, own_id) = match prepared.map(|p| self.encode(p, number, seq)) {
            Some(Ok(encoded)) => encoded,
            // A refused local event costs no number; a given number is used up all the same.
            Some(Err(error)) if number == Number::Next => return Err(error.into()),
            Some(Err(error)) => {
                self.use_up(&mut sequencer, seq);
                return Err(error.into());
            }
            None => {
                self.use_up(&mut sequencer, seq);
                return Ok(Sequenced::nothing(numbered));
            }
        };
        *sequencer = seq;
        // Only an event with a number of its own can be found again by a resume.
        let replayable = seq > previous;
        // Before `deliver` puts the entry where a reader can see it. A local event on an
        // attached engine reuses the last number: it keeps that event's stamp.
        #[cfg(feature = "metrics")]
        if let Some(at) = entered.filter(|_| replayable) {
            self.counters.stamp(seq, at);
        }
        let own_id = event.id.as_deref().filter(|_| own_id == OwnId::Kept);
        let entry = Entry { seq, event: &event, frame: &frame, replayable, own_id };
        let mut fan = deliver(&entry);
        // A subscriber that sees this number sees every entry of this publish.
        self.complete(seq);
        drop(sequencer);
        self.settle(&mut fan);
        let receivers = usize::try_from(fan.delivered + fan.tiered).unwrap_or(usize::MAX);
        let published = Published::new(receivers, event.id);
        Ok(Sequenced { published, numbered, slow: std::mem::take(&mut fan.slow_ids) })
    }

    /// Encodes an event numbered `n` by the external clock in `epoch` as the pipeline does for
    /// [`Number::Given`] (the same checks, the same id), for a replay fetched from elsewhere.
    pub(crate) fn encode_external(
        &self,
        epoch: u64,
        n: u64,
        event: Event,
    ) -> Result<Bytes, EventError> {
        let Prepared { mut event, .. } = self.prepare(Number::Given(n), event)?;
        event.id = Some(format_id(epoch, n));
        event.encode_limited(self.config.max_event_bytes)
    }

    /// Normalises and validates `event`, and encodes it now when its id is final: the
    /// publisher's own (or none) for a local event the engine assigns no id to. An event with
    /// a given number always gets the external clock's id, under the sequencer.
    fn prepare(&self, number: Number, event: Event) -> Result<Prepared, EventError> {
        let event = event.normalized();
        event.validate()?;
        let assigned = match number {
            Number::Next => {
                self.config.history.is_some() && event.id().is_none() && !self.clock.is_attached()
            }
            Number::Given(_) => true,
        };
        let frame =
            if assigned { None } else { Some(event.encode_limited(self.config.max_event_bytes)?) };
        Ok(Prepared { event, frame })
    }

    /// The event and its frame, encoded once: now, with the id its number gives it, unless
    /// it was encoded before the sequencer was taken (its id was final).
    fn encode(
        &self,
        prepared: Result<Prepared, EventError>,
        number: Number,
        seq: u64,
    ) -> Result<(Event, Bytes, OwnId), EventError> {
        let Prepared { mut event, frame } = prepared?;
        if let Some(frame) = frame {
            return Ok((event, frame, OwnId::Kept));
        }
        event.id = Some(self.id_for(number, seq));
        let frame = event.encode_limited(self.config.max_event_bytes)?;
        Ok((event, frame, OwnId::Assigned))
    }

    /// Marks number `seq` taken with nothing delivered (the sequencer is held, `last` its
    /// value), so a later number does not look like a gap.
    fn use_up(&self, last: &mut u64, seq: u64) {
        *last = seq;
        self.complete(seq);
    }

    /// The id an event numbered `seq` gets: `{epoch:x}-{n}`, in the engine's epoch for its
    /// own numbers and in the external clock's, with the clock's number, for given ones.
    fn id_for(&self, number: Number, seq: u64) -> String {
        match number {
            Number::Next => format_id(self.config.epoch, seq),
            Number::Given(n) => format_id(self.clock.epoch(), n),
        }
    }

    /// The sequence number `number` takes, under the sequencer (`last` is its value), and how
    /// it fits; `None` for a duplicate. A gap ends every stream after `last` first and raises
    /// the clock's coverage floor: live streams cannot be told what they missed in-band
    /// without risking a duplicate; ended, their clients come back with their last id and get
    /// it replayed from wherever the clock's numbers are kept.
    fn take_number(&self, last: &mut u64, number: Number) -> Option<(u64, Numbered)> {
        match number {
            // Local events on an attached engine take no number: the clock's owner numbers the
            // shared ones.
            Number::Next => Some((*last + u64::from(!self.clock.is_attached()), Numbered::InOrder)),
            Number::Given(n) => {
                let seq = self.clock.to_local(n);
                if seq <= *last {
                    return None;
                }
                if seq > *last + 1 {
                    self.clock.raise_floor(seq - 1);
                    end_streams(self, *last);
                    return Some((seq, Numbered::AfterGap));
                }
                Some((seq, Numbered::InOrder))
            }
        }
    }

    /// Delivers `entry` to `topic`: appended to its history when replayable, kept as its key's
    /// latest value when the topic keeps state, then an entry in its ring and pushes to its
    /// conflating subscribers (see [`deliver_to_topic`]).
    pub(crate) fn deliver_to_named(&self, topic: &str, entry: &Entry<'_>) -> FanOut {
        let history = self.config.history.filter(|_| entry.replayable);
        let states = &self.config.state;
        // Only a topic that would keep this event needs to exist for it; the per-topic rules
        // are looked at only for a topic that does not exist yet.
        let keep = || history.is_some() || states.limits_for(topic).is_some();
        let found = match self.registry.topic(topic) {
            Some(found) => Some(found),
            None => self.registry.topic_for_publish(topic, keep()),
        };
        let Some(state) = found else {
            return FanOut::default();
        };
        if let Some(limits) = &history {
            lock(&state.history).append(
                entry.seq,
                entry.own_id,
                entry.frame,
                Instant::now(),
                limits,
            );
        }
        if states.is_on() {
            let mut values = lock(&state.state);
            if let Some(limits) = values.limits(|| states.limits_for(topic)) {
                let added = values.is_empty();
                let evicted = values.put(entry.event.key(), entry.seq, entry.frame, limits);
                drop(values);
                self.counters.state_evicted(evicted);
                if added {
                    self.state_added(&state, entry.seq);
                }
            }
        }
        deliver_to_topic(&state, entry.seq, entry.event, entry.frame)
    }

    /// What follows a publish once the watermark is stored and the sequencer released: the
    /// ring's parked readers are woken (only now may they take the entry) and the counters
    /// updated. The subscribers it dropped as slow are the caller's to take out of the
    /// registry.
    fn settle(&self, fan: &mut FanOut) {
        if let Some(ring) = fan.ring.take() {
            ring.wake_parked();
        }
        for ring in fan.classes.drain(..) {
            ring.wake_parked();
        }
        self.counters.published(fan);
    }
}

impl Sequenced {
    /// Nothing delivered: a duplicate, or a number used up with nothing to deliver.
    fn nothing(numbered: Numbered) -> Sequenced {
        Sequenced { published: Published::new(0, None), numbered, slow: Vec::new() }
    }
}

/// Delivers the frame of event `seq` to `state`'s subscribers: one entry in its ring (and a scan
/// for readers it put over their bound, when due), a push for each conflating subscriber.
/// Called under the sequencer; the caller stores the watermark, then wakes `fan.ring`'s parked
/// readers, then takes `fan.slow_ids` out of the registry.
pub(crate) fn deliver_to_topic(
    state: &TopicState,
    seq: u64,
    event: &Event,
    frame: &Bytes,
) -> FanOut {
    let mut fan = FanOut::default();
    if append(&state.ring, &state.readers, seq, frame, &mut fan) {
        fan.ring = Some(state.ring.clone());
    }
    let pushed = state.pushed.load();
    if !pushed.is_empty() {
        let keys = FrameKeys::new(Some(&state.name), event.event(), event.key());
        fan_out(&mut fan, &pushed, seq, frame, &keys);
    }
    for class in state.classes.load().iter() {
        class.deliver(seq, frame, &mut fan);
    }
    for derived in state.tiers.load().iter() {
        let receivers = (derived.readers.load().len() + derived.pushed.load().len()) as u64;
        fan.tiered += receivers;
        if derived.put(seq, frame, event.key(), event.event()) {
            fan.tier_saved += receivers;
        }
    }
    fan
}

/// Appends the frame of event `seq` to `ring` for its `readers` (nothing when it has none;
/// returns whether it had), with a scan for readers it put over their bound, when due: those
/// that disconnect are closed as slow, taken off the readers and listed in `fan.slow_ids`.
/// Under the sequencer.
pub(crate) fn append(
    ring: &Ring,
    readers: &Readers,
    seq: u64,
    frame: &Bytes,
    fan: &mut FanOut,
) -> bool {
    let members = readers.load();
    if members.is_empty() {
        return false;
    }
    fan.delivered += members.len() as u64;
    if ring.push(seq, frame) {
        let slow = ring.scan(&members).slow;
        for member in &slow {
            // It did not get this event, whoever closes it (its owner may be dropping it
            // right now).
            fan.delivered = fan.delivered.saturating_sub(1);
            if member.queue.close_discarding(EndReason::Slow) {
                fan.slow += 1;
                fan.slow_ids.push(member.id);
            }
        }
        if !slow.is_empty() {
            // Off the readers now, under the sequencer, so the next publish does not count
            // them; the registry forgets them once this one is done.
            readers.rcu(|set| slow.iter().fold((**set).clone(), |set, m| set.remove(m.id)));
        }
    }
    true
}

/// Queues the frame of event `seq` for every subscriber in `subscribers`.
pub(crate) fn fan_out(
    fan: &mut FanOut,
    subscribers: &IdMap<Arc<Slot>>,
    seq: u64,
    bytes: &Bytes,
    keys: &FrameKeys<'_>,
) {
    subscribers.for_each(|slot| count(fan, slot.queue.push(seq, bytes, keys), Some(slot.id)));
}

/// Adds one push's outcome to the fan-out totals.
pub(crate) fn count(fan: &mut FanOut, pushed: Pushed, slot: Option<u64>) {
    match pushed {
        Pushed::Queued => fan.delivered += 1,
        Pushed::Conflated => {
            fan.delivered += 1;
            fan.conflated += 1;
        }
        Pushed::Evicted => {
            fan.delivered += 1;
            fan.dropped += 1;
        }
        Pushed::Disconnected => {
            fan.slow += 1;
            fan.slow_ids.extend(slot);
        }
        Pushed::Closed => {}
    }
}

/// The part of ending a stream done under the sequencer (held by the caller, `upto` its
/// value): the subscriber leaves its topics' readers, what its rings hold for it up to `upto`
/// moves into its queue, and the queue is closed. Taking it out of the registry is the
/// caller's, once the sequencer is released. `last`, if given, is the stream's final frame.
/// Returns whether it was live.
pub(crate) fn end_held(
    slot: &Arc<Slot>,
    reason: EndReason,
    upto: u64,
    last: Option<&Bytes>,
) -> bool {
    slot.close_absorbing(reason, upto, last)
}

/// Ends every stream after what was published up to `upto` (under the sequencer, so nothing
/// published after a gap reaches them and moves their clients' resume point past it). They
/// leave their topics' readers at once and the registry when their owners drop them.
pub(crate) fn end_streams(engine: &Engine, upto: u64) {
    engine.registry.subscribers().for_each(|slot| {
        end_held(slot, EndReason::Disconnected, upto, None);
    });
}

/// Ends `slot`'s stream at shutdown: after what was published up to `upto`, then `last`.
pub(crate) fn end_at_shutdown(slot: &Slot, last: Option<&Bytes>, upto: u64) {
    slot.queue.close_after(EndReason::Shutdown, upto, last);
}
