//! Keyed state: the latest event per key of each topic, which a subscription that asks for a
//! snapshot receives before its live events.
//!
//! The values are the frames the pipeline already encoded (one `Bytes` refcount each), so a
//! snapshot to a thousand subscribers encodes nothing. They are written under the engine's
//! sequencer (by the publish that delivers the event) and read under it (by a subscribe that
//! registers at the same point), so every event is either in a snapshot or delivered live to
//! that subscription, never both and never neither; the lock is never contended on the publish
//! path.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::engine::registry::TopicState;
use crate::engine::Engine;
use crate::sync::{lock, SharedStr};
use crate::topic::Pattern;

/// The default of [`HubBuilder::with_max_state_topics`](crate::HubBuilder::with_max_state_topics):
/// more than the instruments of any one market, far fewer than a topic per order id makes in
/// a day.
pub(crate) const MAX_STATE_TOPICS: usize = 100_000;

/// How much keyed state each topic keeps: the latest event of at most `max_keys` keys, at most
/// `max_bytes` of encoded frames and keys. Past either bound the key updated longest ago is evicted
/// (and counted in [`Stats::state_evictions`](crate::Stats::state_evictions)).
///
/// An event's key is [`Event::with_key`](crate::Event::with_key); events without one share one
/// slot, so a topic that never uses keys keeps its latest event. State is off by default; turn
/// it on with [`HubBuilder::with_state`](crate::HubBuilder::with_state) (and per topic with
/// [`HubBuilder::with_topic_state`](crate::HubBuilder::with_topic_state)). How many topics hold
/// state is bounded hub-wide, by
/// [`HubBuilder::with_max_state_topics`](crate::HubBuilder::with_max_state_topics).
///
/// # Examples
///
/// ```
/// use ssehub::StateLimits;
///
/// let limits = StateLimits::new().with_max_keys(1_000).with_max_bytes(256 * 1024);
/// assert_eq!(limits.max_keys(), 1_000);
/// assert_eq!(limits.max_bytes(), 256 * 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct StateLimits {
    /// Most keys kept per topic.
    max_keys: usize,
    /// Most encoded bytes kept per topic.
    max_bytes: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits { max_keys: 10_000, max_bytes: 4 * 1024 * 1024 }
    }
}

impl StateLimits {
    /// 10,000 keys and 4 MiB per topic.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::StateLimits::new().max_keys(), 10_000);
    /// ```
    pub fn new() -> Self {
        StateLimits::default()
    }

    /// Most keys kept per topic (0 keeps nothing).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::StateLimits::new().with_max_keys(5).max_keys(), 5);
    /// ```
    pub fn with_max_keys(mut self, keys: usize) -> Self {
        self.max_keys = keys;
        self
    }

    /// Most bytes (encoded frames and their keys) kept per topic. The latest event is kept
    /// even when it alone is larger.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::StateLimits::new().with_max_bytes(64).max_bytes(), 64);
    /// ```
    pub fn with_max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Most keys kept per topic.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ssehub::StateLimits::new().max_keys() > 0);
    /// ```
    #[must_use]
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Most encoded bytes kept per topic.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ssehub::StateLimits::new().max_bytes() > 0);
    /// ```
    #[must_use]
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

/// The state settings of a hub: the limits for every topic, overrides for the topics that
/// match a pattern (the first matching one wins), and the bound on the topics holding state.
#[derive(Debug, Clone)]
pub(crate) struct StateConfig {
    /// The limits of a topic no override matches; `None`: such topics keep no state.
    pub(crate) default: Option<StateLimits>,
    /// Per-topic overrides, in the order they were given.
    pub(crate) topics: Vec<(Pattern, StateLimits)>,
    /// Most topics holding state; past it, the state of the topic published to longest ago
    /// that nobody receives is dropped (see [`Engine::state_added`]).
    pub(crate) max_topics: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { default: None, topics: Vec::new(), max_topics: MAX_STATE_TOPICS }
    }
}

impl StateConfig {
    /// Whether any topic keeps state.
    pub(crate) fn is_on(&self) -> bool {
        self.default.is_some() || !self.topics.is_empty()
    }

    /// The limits `topic` keeps its state within, if it keeps any. Looked up once per topic,
    /// when its state is first written.
    pub(crate) fn limits_for(&self, topic: &str) -> Option<StateLimits> {
        self.topics
            .iter()
            .find(|(pattern, _)| pattern.matches(topic))
            .map(|(_, limits)| *limits)
            .or(self.default)
            .filter(|limits| limits.max_keys > 0)
    }
}

/// One kept value.
#[derive(Debug)]
struct Value {
    /// Its key (`None`: the events published without one), shared with [`State::keys`].
    key: Option<SharedStr>,
    /// Its frame, as the pipeline encoded it.
    frame: Bytes,
}

impl Value {
    /// What it counts against the byte bound: its frame and its key (a long key on a short
    /// event must not slip past the bound).
    fn size(&self) -> usize {
        self.frame.len() + self.key.as_ref().map_or(0, |key| key.len())
    }
}

/// A value's place in publish order: its sequence number, then the order it was written in
/// (an event a node publishes while an external clock is attached reuses the last number).
type Order = (u64, u64);

/// One topic's keyed state.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The limits, looked up once, when the first event of the topic is delivered (`Some(None)`:
    /// this topic keeps nothing).
    limits: Option<Option<StateLimits>>,
    /// Every value by its place in publish order: the first is the one updated longest ago.
    values: BTreeMap<Order, Value>,
    /// Each key's place in `values`. Looked up by `&str`, so updating a key already kept
    /// allocates nothing for the key.
    keys: HashMap<SharedStr, Order>,
    /// The place of the value of the events without a key.
    keyless: Option<Order>,
    /// Bytes held: the frames and the keys.
    bytes: usize,
    /// Values written, for [`Order`]'s tie-break.
    written: u64,
}

impl State {
    /// Whether nothing is kept.
    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The sequence number of the latest value kept, if any.
    fn latest(&self) -> Option<u64> {
        self.values.last_key_value().map(|((seq, _), _)| *seq)
    }

    /// Drops every value; the limits stay, as the topic's settings have not changed.
    fn clear(&mut self) {
        self.values.clear();
        self.keys.clear();
        self.keyless = None;
        self.bytes = 0;
    }

    /// The limits this topic keeps its state within (`None`: it keeps none), looked up with
    /// `lookup` the first time only.
    pub(crate) fn limits(
        &mut self,
        lookup: impl FnOnce() -> Option<StateLimits>,
    ) -> Option<StateLimits> {
        *self.limits.get_or_insert_with(lookup)
    }

    /// Keeps `frame` (event `seq`) as `key`'s latest value, within `limits`; returns how many
    /// keys were evicted to make room.
    pub(crate) fn put(
        &mut self,
        key: Option<&str>,
        seq: u64,
        frame: &Bytes,
        limits: StateLimits,
    ) -> u64 {
        self.written += 1;
        let order = (seq, self.written);
        let place = match key {
            None => self.keyless.replace(order),
            Some(key) => match self.keys.get_mut(key) {
                Some(place) => Some(std::mem::replace(place, order)),
                None => {
                    self.keys.insert(SharedStr::from(key), order);
                    None
                }
            },
        };
        let old = place.and_then(|place| self.values.remove(&place));
        let key = match (old, key) {
            (Some(old), _) => {
                self.bytes -= old.size();
                old.key
            }
            (None, None) => None,
            // Just inserted above: the map's copy is shared, not allocated again.
            (None, Some(key)) => self.keys.get_key_value(key).map(|(shared, _)| shared.clone()),
        };
        let value = Value { key, frame: frame.clone() };
        self.bytes += value.size();
        self.values.insert(order, value);
        self.evict(limits)
    }

    /// Evicts the values updated longest ago until `limits` hold; the latest value stays even
    /// when it alone is over the byte bound. Returns how many were evicted.
    fn evict(&mut self, limits: StateLimits) -> u64 {
        let mut evicted = 0;
        while self.values.len() > 1
            && (self.values.len() > limits.max_keys || self.bytes > limits.max_bytes)
        {
            let Some((_, oldest)) = self.values.pop_first() else {
                break;
            };
            self.bytes -= oldest.size();
            match &oldest.key {
                Some(key) => {
                    self.keys.remove(&**key);
                }
                None => self.keyless = None,
            }
            evicted += 1;
        }
        evicted
    }

    /// Adds every kept value to `out` as `(sequence number, frame)`, in publish order.
    pub(crate) fn snapshot_into(&self, out: &mut Vec<(Order, Bytes)>) {
        out.extend(self.values.iter().map(|(order, value)| (*order, value.frame.clone())));
    }
}

/// The topics holding keyed state, oldest first, for the hub-wide bound
/// ([`StateConfig::max_topics`]). Written only under the sequencer, like the states.
///
/// A topic's place is the sequence number it had when it was entered, which a later publish to
/// it leaves stale (so that a publish costs nothing here): [`Engine::state_added`] corrects a
/// stale place when it meets it at the front. Every place is at most the topic's true latest
/// number, so a front entry whose place is current is the topic published to longest ago.
#[derive(Debug, Default)]
pub(crate) struct StateTopics {
    /// Topic names by place: (sequence number, entries made before, as the tie-break).
    order: BTreeMap<Order, SharedStr>,
    /// Entries made, for the tie-break.
    entered: u64,
}

/// How many entries of [`StateTopics`] one new topic's state may look at.
const LOOKS_PER_TOPIC: usize = 64;

impl StateTopics {
    /// Enters `name` at sequence number `seq`.
    fn enter(&mut self, name: SharedStr, seq: u64) {
        self.entered += 1;
        self.order.insert((seq, self.entered), name);
    }
}

impl Engine {
    /// `topic` started holding keyed state with event `seq`; past the hub's bound on the
    /// topics holding state, the state of the topic published to longest ago that nobody
    /// receives is dropped (and the topic with it, when nothing else keeps it), counted in
    /// `Stats::state_topics_dropped`. A topic somebody receives keeps its state and goes to
    /// the back, as if published to now, so the bound may stay exceeded by the topics being
    /// received until they are left and the next topic's state arrives. Called under the
    /// sequencer with no topic's state locked.
    pub(crate) fn state_added(&self, topic: &TopicState, seq: u64) {
        let mut topics = lock(&self.state_topics);
        topics.enter(topic.name.clone(), seq);
        // At most this many entries are looked at per new topic, so a publish never waits for
        // a walk of them all (every topic received, or many published to since they were
        // entered); what one leaves over the bound, the next ones take. A stale entry is
        // corrected once per publish to it at most, so the walk keeps up with the publishes.
        let mut budget = LOOKS_PER_TOPIC;
        while topics.order.len() > self.config.state.max_topics && budget > 0 {
            budget -= 1;
            let Some(((place, _), name)) = topics.order.pop_first() else { break };
            // Gone, or holding nothing: an entry left over, nothing to drop.
            let Some(found) = self.registry.topic(&name) else { continue };
            let mut state = lock(&found.state);
            let Some(latest) = state.latest() else { continue };
            if latest > place {
                drop(state);
                topics.enter(name, latest);
            } else if !found.subscribers.load().is_empty() {
                drop(state);
                topics.enter(name, seq);
                if place == seq {
                    // Entered by this call, after the new topic: so is every entry left in
                    // front, and each is received. Nothing more can go now.
                    break;
                }
            } else {
                state.clear();
                drop(state);
                self.counters.state_topic_dropped();
                self.registry.remove_if_idle(&name);
            }
        }
    }
}

/// The frames of a snapshot of several topics' states, merged in publish order.
pub(crate) fn merged(mut values: Vec<(Order, Bytes)>) -> Vec<Bytes> {
    // Stable, and each topic's values are already in order: ties across topics (a reused
    // number) keep the order the topics were read in.
    values.sort_by_key(|(order, _)| order.0);
    values.into_iter().map(|(_, frame)| frame).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    fn frames(state: &State) -> Vec<Bytes> {
        let mut out = Vec::new();
        state.snapshot_into(&mut out);
        merged(out)
    }

    #[test]
    fn keeps_the_latest_value_per_key_in_publish_order() {
        let mut state = State::default();
        let limits = StateLimits::new();
        state.put(Some("a"), 1, &frame("a1"), limits);
        state.put(Some("b"), 2, &frame("b2"), limits);
        state.put(Some("a"), 3, &frame("a3"), limits);
        state.put(None, 4, &frame("n4"), limits);
        state.put(None, 5, &frame("n5"), limits);
        assert_eq!(frames(&state), [frame("b2"), frame("a3"), frame("n5")]);
        assert_eq!(state.values.len(), 3);
    }

    #[test]
    fn evicts_the_key_updated_longest_ago_at_either_bound() {
        let mut state = State::default();
        let limits = StateLimits::new().with_max_keys(2).with_max_bytes(6);
        assert_eq!(state.put(Some("a"), 1, &frame("a1"), limits), 0);
        assert_eq!(state.put(Some("b"), 2, &frame("b2"), limits), 0);
        assert_eq!(state.put(Some("a"), 3, &frame("a3"), limits), 0);
        assert_eq!(state.put(Some("c"), 4, &frame("c4"), limits), 1);
        assert_eq!(frames(&state), [frame("a3"), frame("c4")]);
        // Bytes (frame and key): a value of 6 bytes evicts everything but itself.
        assert_eq!(state.put(Some("d"), 5, &frame("d5xyz"), limits), 2);
        assert_eq!(frames(&state), [frame("d5xyz")]);
        assert_eq!(state.bytes, 6);
    }

    #[test]
    fn the_keyless_value_is_evicted_and_written_again_like_a_key() {
        let mut state = State::default();
        let limits = StateLimits::new().with_max_keys(2);
        state.put(None, 1, &frame("n1"), limits);
        state.put(Some("a"), 2, &frame("a2"), limits);
        assert_eq!(state.put(Some("b"), 3, &frame("b3"), limits), 1);
        assert_eq!(state.keyless, None);
        assert_eq!(state.put(None, 4, &frame("n4"), limits), 1);
        assert_eq!(frames(&state), [frame("b3"), frame("n4")]);
        assert_eq!(state.keys.len(), 1);
        assert_eq!(state.bytes, 2 + 1 + 2);
    }
}
