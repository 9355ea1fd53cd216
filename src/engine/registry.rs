//! The copy-on-write registry: which subscribers receive which topic.
//!
//! Readers (every publish) `load` snapshots and never lock: the topic map is a persistent hash
//! map (`imbl`), each topic's subscriber set and the set of all subscribers are [`IdMap`]s.
//! Writers (subscribe, unsubscribe, a publish that creates a topic) serialise on one mutex that
//! also guards the bookkeeping readers never need (which topics and patterns each subscriber
//! asked for, how many of them put it on each topic), and publish new snapshots with `rcu`.
//! Each write copies O(log n) trie nodes, so n subscribes to one topic cost O(n log n), not
//! O(n²).
//!
//! A subscriber is on a topic's set at most once, however many of its topics and patterns match
//! the topic, so it receives each event once. Patterns are matched against a topic when either
//! first appears, never per publish.

use crate::engine::history::{History, HistoryLimits};
use crate::engine::idmap::IdMap;
use crate::engine::reader::{Feed, Readers};
use crate::engine::ring::{Member, Ring};
use crate::engine::state::State;
use crate::engine::Names;
use crate::sync::{arc_swap, lock, rank, Arc, ArcSwap, Guard, Mutex, SharedStr};

/// A subscriber, as the registry holds it: defined with the reader that reads for it.
pub(crate) use crate::engine::reader::Slot;
use crate::topic::Pattern;

/// One topic, as publishers see it.
#[derive(Debug)]
pub(crate) struct TopicState {
    /// The topic's name (also the conflation key of `ConflateKey::Topic`).
    pub(crate) name: SharedStr,
    /// Everyone who receives this topic's events.
    pub(crate) subscribers: ArcSwap<IdMap<Arc<Slot>>>,
    /// Those who read the topic's ring (all but the conflating ones), with their cursors.
    /// Shared with each reader's feed, so a subscriber that ends can leave it at once.
    pub(crate) readers: Arc<Readers>,
    /// Those who get each event pushed into their queue (the conflating ones).
    pub(crate) pushed: ArcSwap<IdMap<Arc<Slot>>>,
    /// The shared log the readers take events from.
    pub(crate) ring: Arc<Ring>,
    /// The replay ring. Written and read only under the hub's sequencer, so its lock is never
    /// contended on the publish path.
    pub(crate) history: Mutex<History, rank::History>,
    /// The latest event per key. Like the history, written and read only under the sequencer
    /// (a publish, a subscribe that takes a snapshot).
    pub(crate) state: Mutex<State, rank::State>,
}

impl TopicState {
    /// Whether the topic remembers nothing (no history, no keyed state), so it may go once
    /// nobody receives it.
    fn remembers_nothing(&self) -> bool {
        lock(&self.history).is_empty() && lock(&self.state).is_empty()
    }
}

/// The read side of the topic map.
#[cfg(not(ssehub_loom))]
pub(crate) type TopicMap = imbl::HashMap<SharedStr, Arc<TopicState>>;
/// The read side of the topic map, ordered under loom: see [`Map`].
#[cfg(ssehub_loom)]
pub(crate) type TopicMap = imbl::OrdMap<SharedStr, Arc<TopicState>>;

/// The writers' maps. Hashed normally; ordered under loom, which replays each execution's
/// choices and needs every execution to make the same ones: a hash map's order changes with
/// its random seed, so walking two entries that each take a loom lock (shutdown closing two
/// subscribers) would differ from one execution to the next.
#[cfg(not(ssehub_loom))]
type Map<K, V> = std::collections::HashMap<K, V>;
/// See the other [`Map`].
#[cfg(ssehub_loom)]
type Map<K, V> = std::collections::BTreeMap<K, V>;
/// The writers' sets, ordered under loom like [`Map`].
#[cfg(not(ssehub_loom))]
type Set<T> = std::collections::HashSet<T>;
/// See the other [`Set`].
#[cfg(ssehub_loom)]
type Set<T> = std::collections::BTreeSet<T>;

/// Writer-side record of a topic.
#[derive(Debug)]
struct TopicEntry {
    /// The published state.
    state: Arc<TopicState>,
    /// Subscriber id to the number of its topics and patterns that match this topic.
    members: Map<u64, u32>,
    /// The patterns that match this topic.
    patterns: Vec<Box<str>>,
}

/// Writer-side record of a pattern.
#[derive(Debug)]
struct PatternEntry {
    /// The compiled pattern.
    pattern: Pattern,
    /// Who subscribed to it.
    subscribers: Set<u64>,
    /// The existing topics it matches.
    topics: Set<SharedStr>,
}

/// Writer-side record of a subscriber.
#[derive(Debug)]
struct SubscriberEntry {
    /// Its slot.
    slot: Arc<Slot>,
    /// The topics it asked for (distinct).
    topics: Vec<SharedStr>,
    /// The patterns it asked for (distinct).
    patterns: Vec<Box<str>>,
}

/// Everything writers share, under one lock.
#[derive(Debug, Default)]
struct Writer {
    /// Set by shutdown: no more subscribers.
    closed: bool,
    /// Live topics.
    topics: Map<SharedStr, TopicEntry>,
    /// Live patterns, by source text.
    patterns: Map<Box<str>, PatternEntry>,
    /// Live subscribers.
    subscribers: Map<u64, SubscriberEntry>,
    /// The highest sequence number evicted from the history of a topic that no longer exists: a
    /// resume point below it may have missed events nobody can replay.
    floor: u64,
}

/// A subscriber taken out of the registry.
#[derive(Debug)]
pub(crate) struct Removed {
    /// Its slot.
    pub(crate) slot: Arc<Slot>,
    /// The topics it named.
    pub(crate) named: Vec<SharedStr>,
    /// Every topic it received (named or matched by its patterns).
    pub(crate) left: Vec<SharedStr>,
}

/// Why the registry refused a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Shut down.
    Closed,
    /// At the subscriber limit.
    Full,
}

/// The registry.
#[derive(Debug)]
pub(crate) struct Registry {
    /// Topic name to state.
    topics: ArcSwap<TopicMap>,
    /// Every subscriber, for broadcasts and targeted sends.
    subscribers: ArcSwap<IdMap<Arc<Slot>>>,
    /// Every live pattern, so a publish to a topic nobody named can tell cheaply whether a
    /// pattern wants it.
    patterns: ArcSwap<Vec<Pattern>>,
    /// The writers' lock and bookkeeping.
    writer: Mutex<Writer, rank::Writer>,
}

impl Registry {
    /// An empty registry.
    pub(crate) fn new() -> Registry {
        Registry {
            topics: arc_swap(TopicMap::new()),
            subscribers: arc_swap(IdMap::new()),
            patterns: arc_swap(Vec::new()),
            writer: Mutex::new(Writer::default()),
        }
    }

    /// The state of `topic` if it exists (lock-free).
    pub(crate) fn topic(&self, topic: &str) -> Option<Arc<TopicState>> {
        self.topics.load().get(topic).cloned()
    }

    /// The state a publish to `topic` goes through: the existing one (lock-free), or a new one
    /// when `keep` is set (history or keyed state is on, so the topic must remember the event) or a live
    /// pattern matches (the new topic holds the pattern's subscribers). `None` when nobody can
    /// receive the event and nothing needs to remember it.
    pub(crate) fn topic_for_publish(&self, topic: &str, keep: bool) -> Option<Arc<TopicState>> {
        if let Some(state) = self.topic(topic) {
            return Some(state);
        }
        if !keep && !self.patterns.load().iter().any(|p| p.matches(topic)) {
            return None;
        }
        let mut writer = lock(&self.writer);
        if writer.closed {
            return None;
        }
        let name: SharedStr = topic.into();
        let state = self.ensure_topic(&mut writer, &name);
        // A pattern subscriber may have left between the check and the lock.
        let empty = writer.topics.get(&name).is_some_and(|e| e.members.is_empty());
        if empty && !keep {
            self.remove_topic(&mut writer, &name);
            return None;
        }
        Some(state)
    }

    /// Prunes every topic's history by age and removes the topics left with neither
    /// subscribers nor history.
    pub(crate) fn sweep(&self, now: std::time::Instant, limits: &HistoryLimits) {
        let mut writer = lock(&self.writer);
        let idle: Vec<SharedStr> = writer
            .topics
            .iter()
            .filter(|(_, entry)| {
                lock(&entry.state.history).prune(now, limits);
                entry.members.is_empty() && entry.state.remembers_nothing()
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in idle {
            self.remove_topic(&mut writer, &name);
        }
    }

    /// Removes `topic` if nobody receives it and it remembers nothing (its keyed state was
    /// just dropped).
    pub(crate) fn remove_if_idle(&self, topic: &SharedStr) {
        let mut writer = lock(&self.writer);
        let entry = writer.topics.get(topic);
        if entry.is_some_and(|e| e.members.is_empty() && e.state.remembers_nothing()) {
            self.remove_topic(&mut writer, topic);
        }
    }

    /// See [`Writer::floor`].
    pub(crate) fn floor(&self) -> u64 {
        lock(&self.writer).floor
    }

    /// Every subscriber (lock-free snapshot).
    pub(crate) fn subscribers(&self) -> Guard<IdMap<Arc<Slot>>> {
        self.subscribers.load()
    }

    /// Number of live topics.
    pub(crate) fn topic_count(&self) -> usize {
        self.topics.load().len()
    }

    /// Each topic and its subscriber count.
    pub(crate) fn topic_counts(&self) -> Vec<(String, usize)> {
        self.topics
            .load()
            .iter()
            .map(|(name, state)| (name.to_string(), state.subscribers.load().len()))
            .collect()
    }

    /// Registers `slot` on `topics` and `patterns` (both distinct); returns every topic it now
    /// receives (named or matched).
    pub(crate) fn subscribe(
        &self,
        slot: &Arc<Slot>,
        topics: Vec<SharedStr>,
        patterns: Vec<Pattern>,
        max_subscribers: usize,
    ) -> Result<Vec<Arc<TopicState>>, Refused> {
        let mut writer = lock(&self.writer);
        if writer.closed {
            return Err(Refused::Closed);
        }
        if writer.subscribers.len() >= max_subscribers {
            return Err(Refused::Full);
        }
        let id = slot.id;
        writer.subscribers.insert(
            id,
            SubscriberEntry {
                slot: slot.clone(),
                topics: topics.clone(),
                patterns: patterns.iter().map(|p| Box::from(p.as_str())).collect(),
            },
        );
        self.subscribers.rcu(|all| all.insert(id, slot.clone()));
        let mut received: Set<SharedStr> = Set::new();
        for topic in &topics {
            self.ensure_topic(&mut writer, topic);
            Self::add_member(&mut writer, topic, slot);
            received.insert(topic.clone());
        }
        let mut new_pattern = false;
        for pattern in patterns {
            let source: Box<str> = pattern.as_str().into();
            new_pattern |= Self::register_pattern(&mut writer, &source, pattern);
            let matched: Vec<SharedStr> = match writer.patterns.get_mut(&source) {
                Some(entry) => {
                    entry.subscribers.insert(id);
                    entry.topics.iter().cloned().collect()
                }
                None => Vec::new(),
            };
            for topic in &matched {
                Self::add_member(&mut writer, topic, slot);
                received.insert(topic.clone());
            }
        }
        if new_pattern {
            self.publish_patterns(&writer);
        }
        Ok(received.iter().filter_map(|t| writer.topics.get(t).map(|e| e.state.clone())).collect())
    }

    /// Removes subscriber `id` everywhere; what was removed, if it was registered (`None` if it
    /// was removed before: removal happens once).
    pub(crate) fn unsubscribe(&self, id: u64) -> Option<Removed> {
        let mut writer = lock(&self.writer);
        let entry = writer.subscribers.remove(&id)?;
        self.subscribers.rcu(|all| all.remove(id));
        let mut left: Vec<SharedStr> = entry.topics.clone();
        for topic in &entry.topics {
            self.remove_member(&mut writer, topic, id);
        }
        let mut dropped_pattern = false;
        for source in &entry.patterns {
            let (matched, now_empty) = match writer.patterns.get_mut(source) {
                Some(p) => {
                    p.subscribers.remove(&id);
                    (p.topics.iter().cloned().collect::<Vec<_>>(), p.subscribers.is_empty())
                }
                None => continue,
            };
            if now_empty {
                dropped_pattern = true;
                writer.patterns.remove(source);
                for topic in &matched {
                    if let Some(t) = writer.topics.get_mut(topic) {
                        t.patterns.retain(|p| p != source);
                    }
                }
            }
            for topic in &matched {
                self.remove_member(&mut writer, topic, id);
            }
            left.extend(matched);
        }
        if dropped_pattern {
            self.publish_patterns(&writer);
        }
        left.sort_unstable();
        left.dedup();
        Some(Removed { slot: entry.slot, named: entry.topics, left })
    }

    /// Refuses new subscribers from now on and returns every current slot.
    pub(crate) fn close(&self) -> Vec<Arc<Slot>> {
        let mut writer = lock(&self.writer);
        writer.closed = true;
        writer.subscribers.values().map(|e| e.slot.clone()).collect()
    }

    /// Returns the topic's state, creating it (and adding the subscribers of every pattern that
    /// matches it) if needed.
    fn ensure_topic(&self, writer: &mut Writer, name: &SharedStr) -> Arc<TopicState> {
        if let Some(entry) = writer.topics.get(name) {
            return entry.state.clone();
        }
        let state = Arc::new(TopicState {
            name: name.clone(),
            subscribers: arc_swap(IdMap::new()),
            readers: Arc::new(arc_swap(IdMap::new())),
            pushed: arc_swap(IdMap::new()),
            ring: Arc::new(Ring::new()),
            history: Mutex::new(History::default()),
            state: Mutex::new(State::default()),
        });
        let mut members = Map::new();
        let mut patterns = Vec::new();
        for (source, pattern) in writer.patterns.iter_mut() {
            if !pattern.pattern.matches(name) {
                continue;
            }
            pattern.topics.insert(name.clone());
            patterns.push(source.clone());
            for id in &pattern.subscribers {
                let count = members.entry(*id).or_insert(0u32);
                if *count == 0 {
                    if let Some(sub) = writer.subscribers.get(id) {
                        attach(&state, &sub.slot);
                    }
                }
                *count += 1;
            }
        }
        writer.topics.insert(name.clone(), TopicEntry { state: state.clone(), members, patterns });
        let (key, value) = (name.clone(), state.clone());
        self.topics.rcu(|map| map.update(key.clone(), value.clone()));
        state
    }

    /// Counts one more reason for `slot` to be on `topic`, adding it on the first.
    fn add_member(writer: &mut Writer, topic: &SharedStr, slot: &Arc<Slot>) {
        let Some(entry) = writer.topics.get_mut(topic) else {
            return;
        };
        let count = entry.members.entry(slot.id).or_insert(0);
        if *count == 0 {
            attach(&entry.state, slot);
        }
        *count += 1;
    }

    /// Counts one reason less for `id` to be on `topic`, removing it on the last, and the topic
    /// when nobody is left.
    fn remove_member(&self, writer: &mut Writer, topic: &SharedStr, id: u64) {
        let Some(entry) = writer.topics.get_mut(topic) else {
            return;
        };
        let Some(count) = entry.members.get_mut(&id) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        entry.members.remove(&id);
        detach(&entry.state, id);
        if entry.members.is_empty() && entry.state.remembers_nothing() {
            self.remove_topic(writer, topic);
        }
    }

    /// Drops a topic nobody receives.
    fn remove_topic(&self, writer: &mut Writer, topic: &SharedStr) {
        let Some(entry) = writer.topics.remove(topic) else {
            return;
        };
        writer.floor = writer.floor.max(lock(&entry.state.history).last_seq());
        for source in &entry.patterns {
            if let Some(p) = writer.patterns.get_mut(source) {
                p.topics.remove(topic);
            }
        }
        self.topics.rcu(|map| map.without(topic));
    }

    /// Publishes the list of live patterns for lock-free checks by publishers.
    fn publish_patterns(&self, writer: &Writer) {
        let list: Vec<Pattern> = writer.patterns.values().map(|p| p.pattern.clone()).collect();
        self.patterns.store(Arc::new(list));
    }
}

/// Puts `slot` on `state`: on its ring (starting at the tail) or its push list, and on its
/// subscriber set. Called with the writer lock held.
fn attach(state: &Arc<TopicState>, slot: &Arc<Slot>) {
    if slot.queue.is_closed() {
        // Ended, waiting for its owner to drop it (a pattern matched a new topic meanwhile):
        // nothing more to receive.
    } else if slot.reads_rings() {
        let cursor = state.ring.join(slot.queue.capacity());
        let member = Arc::new(Member::new(slot.id, slot.queue.clone(), cursor));
        let readers = state.readers.clone();
        slot.add_feed(Feed { ring: state.ring.clone(), readers, member: member.clone() });
        state.readers.rcu(|set| set.insert(slot.id, member.clone()));
        // A subscriber parked on its other rings is not parked on this one yet (a pattern
        // just matched a new topic): wake it, so its next poll parks here too.
        slot.queue.wake();
    } else {
        state.pushed.rcu(|set| set.insert(slot.id, slot.clone()));
    }
    state.subscribers.rcu(|set| set.insert(slot.id, slot.clone()));
}

/// Takes subscriber `id` off `state`. Called with the writer lock held.
fn detach(state: &TopicState, id: u64) {
    let slot = state.subscribers.load().get(id).cloned();
    state.subscribers.rcu(|set| set.remove(id));
    let Some(slot) = slot else {
        return;
    };
    if slot.reads_rings() {
        state.readers.rcu(|set| set.remove(id));
        slot.remove_feed(&state.ring);
        if state.readers.load().is_empty() {
            state.ring.clear();
        }
    } else {
        state.pushed.rcu(|set| set.remove(id));
    }
}

/// What a live change of a subscription did in the registry.
#[derive(Debug, Default)]
pub(crate) struct Changed {
    /// Topics it receives now and did not before.
    pub(crate) joined: Vec<Arc<TopicState>>,
    /// Topics it no longer receives.
    pub(crate) left: Vec<SharedStr>,
    /// Topics it named before the change.
    pub(crate) named_before: Vec<SharedStr>,
    /// Topics it names after the change.
    pub(crate) named_after: Vec<SharedStr>,
}

impl Registry {
    /// Changes what live subscriber `slot` receives: first takes `remove` off it (topics it
    /// named, patterns it asked for; names it did not ask for are ignored), then adds `add`
    /// (names it asked for already are ignored), so a name in both ends up subscribed. A topic
    /// it stops receiving hands the entries its ring still holds for it over to its queue
    /// (`Slot::leave_feed_absorbing`); one it starts receiving is read from the ring's tail.
    /// Called under the sequencer, so the change sits between two publishes. `Ok(None)` when
    /// the subscriber is not registered (it ended); `Err` with the count when it would ask for
    /// more than `max` topics and patterns afterwards (nothing changes then).
    pub(crate) fn update(
        &self,
        slot: &Arc<Slot>,
        add: Names,
        remove: Names,
        max: usize,
    ) -> Result<Option<Changed>, usize> {
        let mut writer = lock(&self.writer);
        let Some(entry) = writer.subscribers.get(&slot.id) else {
            return Ok(None);
        };
        let count = planned_count(entry, &add, &remove);
        if count > max {
            return Err(count);
        }
        let before = received(&writer, slot.id);
        let named_before = entry.topics.clone();
        for topic in &remove.topics {
            self.drop_topic(&mut writer, slot, topic);
        }
        let mut patterns_changed = false;
        for pattern in &remove.patterns {
            patterns_changed |= self.drop_pattern(&mut writer, slot, pattern.as_str());
        }
        for topic in add.topics {
            self.take_topic(&mut writer, slot, topic);
        }
        for pattern in add.patterns {
            patterns_changed |= self.take_pattern(&mut writer, slot, pattern);
        }
        if patterns_changed {
            self.publish_patterns(&writer);
        }
        let after = received(&writer, slot.id);
        let joined = after
            .iter()
            .filter(|t| !before.contains(*t))
            .filter_map(|t| writer.topics.get(t).map(|e| e.state.clone()))
            .collect();
        let left = before.into_iter().filter(|t| !after.contains(t)).collect();
        let named_after = writer.subscribers.get(&slot.id).map(|e| e.topics.clone());
        Ok(Some(Changed {
            joined,
            left,
            named_before,
            named_after: named_after.unwrap_or_default(),
        }))
    }

    /// Stops `slot` naming `topic` (if it did).
    fn drop_topic(&self, writer: &mut Writer, slot: &Arc<Slot>, topic: &SharedStr) {
        let Some(entry) = writer.subscribers.get_mut(&slot.id) else { return };
        let Some(at) = entry.topics.iter().position(|t| t == topic) else { return };
        entry.topics.remove(at);
        self.release(writer, slot, topic);
    }

    /// Stops `slot` asking for pattern `source` (if it did); returns whether the pattern is
    /// gone from the registry (nobody asks for it any more).
    fn drop_pattern(&self, writer: &mut Writer, slot: &Arc<Slot>, source: &str) -> bool {
        let Some(entry) = writer.subscribers.get_mut(&slot.id) else { return false };
        let Some(at) = entry.patterns.iter().position(|p| &**p == source) else { return false };
        entry.patterns.remove(at);
        let (matched, now_empty) = match writer.patterns.get_mut(source) {
            Some(p) => {
                p.subscribers.remove(&slot.id);
                (p.topics.iter().cloned().collect::<Vec<_>>(), p.subscribers.is_empty())
            }
            None => return false,
        };
        if now_empty {
            writer.patterns.remove(source);
            for topic in &matched {
                if let Some(t) = writer.topics.get_mut(topic) {
                    t.patterns.retain(|p| &**p != source);
                }
            }
        }
        for topic in &matched {
            self.release(writer, slot, topic);
        }
        now_empty
    }

    /// One reason less for `slot` to receive `topic`; on the last, the ring's entries it still
    /// holds for the subscriber move into its queue before it leaves the ring.
    fn release(&self, writer: &mut Writer, slot: &Arc<Slot>, topic: &SharedStr) {
        let last = writer
            .topics
            .get(topic)
            .is_some_and(|entry| entry.members.get(&slot.id).copied() == Some(1));
        if last && slot.reads_rings() {
            if let Some(entry) = writer.topics.get(topic) {
                slot.leave_feed_absorbing(&entry.state.ring);
            }
        }
        self.remove_member(writer, topic, slot.id);
    }

    /// Makes `slot` name `topic` (if it did not).
    fn take_topic(&self, writer: &mut Writer, slot: &Arc<Slot>, topic: SharedStr) {
        let Some(entry) = writer.subscribers.get_mut(&slot.id) else { return };
        if entry.topics.contains(&topic) {
            return;
        }
        entry.topics.push(topic.clone());
        self.ensure_topic(writer, &topic);
        Self::add_member(writer, &topic, slot);
    }

    /// Registers `pattern` (written `source`) with the topics it matches, if the registry does
    /// not have it yet; returns whether it was new.
    fn register_pattern(writer: &mut Writer, source: &str, pattern: Pattern) -> bool {
        if writer.patterns.contains_key(source) {
            return false;
        }
        let matched: Set<SharedStr> =
            writer.topics.keys().filter(|t| pattern.matches(t)).cloned().collect();
        for topic in &matched {
            if let Some(entry) = writer.topics.get_mut(topic) {
                entry.patterns.push(source.into());
            }
        }
        writer.patterns.insert(
            source.into(),
            PatternEntry { pattern, subscribers: Set::new(), topics: matched },
        );
        true
    }

    /// Makes `slot` ask for `pattern` (if it did not); returns whether the pattern is new to
    /// the registry.
    fn take_pattern(&self, writer: &mut Writer, slot: &Arc<Slot>, pattern: Pattern) -> bool {
        let source: Box<str> = pattern.as_str().into();
        let Some(entry) = writer.subscribers.get_mut(&slot.id) else { return false };
        if entry.patterns.contains(&source) {
            return false;
        }
        entry.patterns.push(source.clone());
        let new = Self::register_pattern(writer, &source, pattern);
        let matched: Vec<SharedStr> = match writer.patterns.get_mut(&source) {
            Some(entry) => {
                entry.subscribers.insert(slot.id);
                entry.topics.iter().cloned().collect()
            }
            None => Vec::new(),
        };
        for topic in &matched {
            Self::add_member(writer, topic, slot);
        }
        new
    }
}

/// How many topics and patterns `entry` asks for after removing `remove` and adding `add`.
fn planned_count(entry: &SubscriberEntry, add: &Names, remove: &Names) -> usize {
    let topics = entry
        .topics
        .iter()
        .filter(|t| !remove.topics.contains(t))
        .chain(add.topics.iter().filter(|t| !entry.topics.contains(t) || remove.topics.contains(t)))
        .count();
    let kept = |p: &str| !remove.patterns.iter().any(|r| r.as_str() == p);
    let patterns = entry.patterns.iter().filter(|p| kept(p)).count()
        + add
            .patterns
            .iter()
            .filter(|a| {
                let asked = entry.patterns.iter().any(|p| &**p == a.as_str());
                let removed = remove.patterns.iter().any(|r| r.as_str() == a.as_str());
                !asked || removed
            })
            .count();
    topics + patterns
}

/// Every topic subscriber `id` receives: those it names and those its patterns match.
fn received(writer: &Writer, id: u64) -> Set<SharedStr> {
    let Some(entry) = writer.subscribers.get(&id) else {
        return Set::new();
    };
    let mut topics: Set<SharedStr> = entry.topics.iter().cloned().collect();
    for source in &entry.patterns {
        if let Some(pattern) = writer.patterns.get(source) {
            topics.extend(pattern.topics.iter().cloned());
        }
    }
    topics
}
