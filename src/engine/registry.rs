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

use crate::engine::class::{Class, ClassKey, Framing};
use crate::engine::history::{History, HistoryLimits};
use crate::engine::idmap::IdMap;
use crate::engine::reader::{Feed, Joined, Readers};
use crate::engine::ring::{Member, Ring};
use crate::engine::state::State;
use crate::engine::tier::{Derived, Tier};
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
    /// The rate tiers someone reads the topic at (see `tier.rs`): a publish keeps its frame
    /// as its key's pending value in each. Swapped under the writer lock.
    pub(crate) tiers: ArcSwap<Vec<Arc<Derived>>>,
    /// The stream classes that receive the topic (see `class.rs`): a publish feeds its frame
    /// to each. Swapped under the writer lock.
    pub(crate) classes: ArcSwap<Vec<Arc<Class>>>,
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
    /// Its rate tier's interval (`None`: every event as it comes).
    pace: Pace,
    /// Its stream class, when its stream is compressed.
    class: Option<Arc<Class>>,
}

/// Writer-side record of a stream class.
#[derive(Debug)]
struct ClassEntry {
    /// The class.
    class: Arc<Class>,
    /// The topics it is on.
    topics: Set<SharedStr>,
    /// Its registered members.
    members: usize,
}

/// A subscription's pace: `None` for every event as it comes, or a rate tier's interval.
pub(crate) type Pace = Option<std::time::Duration>;

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
    /// The live rate tiers, by interval.
    tiers: Map<std::time::Duration, Arc<Tier>>,
    /// The live stream classes.
    classes: Map<ClassKey, ClassEntry>,
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
    /// At the limit of distinct rate tier intervals, and its interval is a new one.
    Intervals,
}

/// Why a live change was refused (nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unchanged {
    /// It would ask for this many topics and patterns, over the limit.
    TooManyTopics(usize),
    /// Its new interval is a new one and the hub is at its limit of intervals.
    Intervals,
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
    /// The live rate tiers, for the hub's tier clock (a copy of the writers' map).
    tiers: ArcSwap<Vec<Arc<Tier>>>,
    /// Most distinct intervals at once (each is ticked by the hub's clock).
    max_intervals: usize,
    /// The live stream classes, for the hub's frame clock (a copy of the writers' map).
    classes: ArcSwap<Vec<Arc<Class>>>,
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
            tiers: arc_swap(Vec::new()),
            max_intervals: usize::MAX,
            classes: arc_swap(Vec::new()),
            writer: Mutex::new(Writer::default()),
        }
    }

    /// This registry, allowing at most `max` distinct rate tier intervals at once.
    pub(crate) fn with_max_intervals(mut self, max: usize) -> Registry {
        self.max_intervals = max;
        self
    }

    /// Whether `pace` is refused: a new interval when `max_intervals` are live.
    fn over_intervals(&self, writer: &Writer, pace: Pace) -> bool {
        pace.is_some_and(|i| {
            !writer.tiers.contains_key(&i) && writer.tiers.len() >= self.max_intervals
        })
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
        pace: Pace,
        class: Option<(ClassKey, Framing)>,
        max_subscribers: usize,
    ) -> Result<Vec<Arc<TopicState>>, Refused> {
        let mut writer = lock(&self.writer);
        if writer.closed {
            return Err(Refused::Closed);
        }
        if writer.subscribers.len() >= max_subscribers {
            return Err(Refused::Full);
        }
        if self.over_intervals(&writer, pace) {
            return Err(Refused::Intervals);
        }
        let id = slot.id;
        writer.subscribers.insert(
            id,
            SubscriberEntry {
                slot: slot.clone(),
                topics: topics.clone(),
                patterns: patterns.iter().map(|p| Box::from(p.as_str())).collect(),
                pace,
                class: None,
            },
        );
        if let Some((key, framing)) = class.filter(|_| pace.is_none() && slot.reads_rings()) {
            self.join_class(&mut writer, slot, key, framing);
        }
        self.subscribers.rcu(|all| all.insert(id, slot.clone()));
        let mut received: Set<SharedStr> = Set::new();
        for topic in &topics {
            self.ensure_topic(&mut writer, topic);
            self.add_member(&mut writer, topic, slot);
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
                self.add_member(&mut writer, topic, slot);
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
        if let Some(class) = &entry.class {
            self.leave_class(&mut writer, &entry.slot, class);
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
            tiers: arc_swap(Vec::new()),
            classes: arc_swap(Vec::new()),
        });
        let mut members = Map::new();
        let mut patterns = Vec::new();
        let Writer { patterns: live, subscribers, tiers, classes, .. } = writer;
        for (source, pattern) in live.iter_mut() {
            if !pattern.pattern.matches(name) {
                continue;
            }
            pattern.topics.insert(name.clone());
            patterns.push(source.clone());
            for id in &pattern.subscribers {
                let count = members.entry(*id).or_insert(0u32);
                if *count == 0 {
                    match subscribers.get(id) {
                        Some(sub) if sub.class.is_some() => {
                            if let Some(class) = &sub.class {
                                attach_class(classes, &state, &sub.slot, class);
                            }
                        }
                        Some(sub) => self.attach(tiers, &state, &sub.slot, sub.pace),
                        None => {}
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
    fn add_member(&self, writer: &mut Writer, topic: &SharedStr, slot: &Arc<Slot>) {
        let sub = writer.subscribers.get(&slot.id);
        let (pace, class) = (sub.and_then(|e| e.pace), sub.and_then(|e| e.class.clone()));
        let Writer { topics, tiers, classes, .. } = writer;
        let Some(entry) = topics.get_mut(topic) else {
            return;
        };
        let count = entry.members.entry(slot.id).or_insert(0);
        if *count == 0 {
            match &class {
                Some(class) => attach_class(classes, &entry.state, slot, class),
                None => self.attach(tiers, &entry.state, slot, pace),
            }
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
        let state = entry.state.clone();
        self.detach(&mut writer.tiers, &state, id);
        let Some(entry) = writer.topics.get(topic) else {
            return;
        };
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
        for class in entry.state.classes.load().iter() {
            if let Some(c) = writer.classes.get_mut(&class.key) {
                c.topics.remove(topic);
            }
        }
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

impl Registry {
    /// Puts `slot` on `state` at `pace`: on its ring (starting at the tail), or its derived
    /// ring at that pace, or the push list of either, and on its subscriber set. Called with
    /// the writer lock held (`tiers` is the writer's), and under the sequencer when `pace` is
    /// a tier's (the values pending in the tier are the subscriber's only from its start).
    fn attach(
        &self,
        tiers: &mut Map<std::time::Duration, Arc<Tier>>,
        state: &Arc<TopicState>,
        slot: &Arc<Slot>,
        pace: Pace,
    ) {
        if slot.queue.is_closed() {
            // Ended, waiting for its owner to drop it (a pattern matched a new topic meanwhile):
            // nothing more to receive.
        } else if let Some(interval) = pace {
            let (derived, tier) = self.derived(tiers, state, interval);
            attach_to(slot, &derived.ring, &derived.readers, &derived.pushed, Some(&tier));
            derived.joined(slot.id);
        } else {
            attach_to(slot, &state.ring, &state.readers, &state.pushed, None);
        }
        state.subscribers.rcu(|set| set.insert(slot.id, slot.clone()));
    }

    /// `state`'s derived ring at `interval` and its tier, made when nobody reads the topic
    /// (the tier: any topic) at that interval yet.
    fn derived(
        &self,
        tiers: &mut Map<std::time::Duration, Arc<Tier>>,
        state: &Arc<TopicState>,
        interval: std::time::Duration,
    ) -> (Arc<Derived>, Arc<Tier>) {
        let tier = match tiers.get(&interval) {
            Some(tier) => tier.clone(),
            None => {
                let tier = Arc::new(Tier::new(interval));
                tiers.insert(interval, tier.clone());
                self.tiers.store(Arc::new(tiers.values().cloned().collect()));
                tier
            }
        };
        if let Some(found) = state.tiers.load().iter().find(|d| d.interval == interval) {
            return (found.clone(), tier);
        }
        let derived = Arc::new(Derived::new(interval, state.name.clone()));
        state.tiers.rcu(|list| with(list, &derived));
        tier.derived.rcu(|list| with(list, &derived));
        (derived, tier)
    }

    /// Takes subscriber `id` off `state` (its ring or the derived ring it reads, or a push
    /// list) and drops a derived ring nobody reads any more. Called with the writer lock held.
    fn detach(&self, tiers: &mut Map<std::time::Duration, Arc<Tier>>, state: &TopicState, id: u64) {
        let slot = state.subscribers.load().get(id).cloned();
        state.subscribers.rcu(|set| set.remove(id));
        let Some(slot) = slot else {
            return;
        };
        detach_from(&slot, &state.ring, &state.readers, &state.pushed);
        for derived in state.tiers.load().iter() {
            detach_from(&slot, &derived.ring, &derived.readers, &derived.pushed);
            if derived.is_unread() {
                self.drop_derived(tiers, state, derived);
            }
        }
    }

    /// Forgets a derived ring nobody reads, and its tier when it was the tier's last.
    fn drop_derived(
        &self,
        tiers: &mut Map<std::time::Duration, Arc<Tier>>,
        state: &TopicState,
        derived: &Arc<Derived>,
    ) {
        state.tiers.rcu(|list| without(list, derived));
        let Some(tier) = tiers.get(&derived.interval) else { return };
        tier.derived.rcu(|list| without(list, derived));
        if tier.derived.load().is_empty() {
            tiers.remove(&derived.interval);
            self.tiers.store(Arc::new(tiers.values().cloned().collect()));
        }
    }

    /// The live rate tiers (lock-free snapshot), for the hub's tier clock.
    // Under loom there is no clock thread: only the models call it.
    #[cfg_attr(all(ssehub_loom, not(test)), allow(dead_code))]
    pub(crate) fn tiers(&self) -> Guard<Vec<Arc<Tier>>> {
        self.tiers.load()
    }
}

impl Registry {
    /// Puts `slot` in the class of `key` (made if it is new and the hub is under its limit of
    /// classes; otherwise its stream is not compressed) at the ring's tail. Under the writer
    /// lock, before the subscriber is attached to its topics.
    fn join_class(&self, writer: &mut Writer, slot: &Arc<Slot>, key: ClassKey, framing: Framing) {
        let full = writer.classes.len() >= framing.max_classes;
        let class = match writer.classes.get_mut(&key) {
            Some(entry) => {
                entry.members += 1;
                entry.class.clone()
            }
            None if full => return,
            None => {
                let class = Arc::new(Class::new(key.clone(), framing));
                let entry = ClassEntry { class: class.clone(), topics: Set::new(), members: 1 };
                writer.classes.insert(key, entry);
                self.publish_classes(writer);
                class
            }
        };
        let (cursor, start) = class.join(slot.queue.capacity());
        let member = Arc::new(Member::new(slot.id, slot.queue.clone(), cursor));
        slot.add_feed(Feed {
            ring: class.ring.clone(),
            readers: class.readers.clone(),
            member: member.clone(),
            tier: None,
        });
        class.readers.rcu(|set| set.insert(slot.id, member.clone()));
        let joined = Joined { codec: class.codec(), level: class.level, start };
        slot.class.rcu(|_| Some(Arc::new(joined)));
        if let Some(entry) = writer.subscribers.get_mut(&slot.id) {
            entry.class = Some(class);
        }
    }

    /// Takes `slot` out of `class`; the last member out ends the class: its topics forget it
    /// and its ring lets go of its entries. Under the writer lock.
    fn leave_class(&self, writer: &mut Writer, slot: &Arc<Slot>, class: &Arc<Class>) {
        if class.readers.load().get(slot.id).is_some() {
            class.readers.rcu(|set| set.remove(slot.id));
        }
        if slot.feeds().iter().any(|f| Arc::ptr_eq(&f.ring, &class.ring)) {
            slot.remove_feed(&class.ring);
        }
        let Some(entry) = writer.classes.get_mut(&class.key) else {
            return;
        };
        entry.members = entry.members.saturating_sub(1);
        if entry.members > 0 || !Arc::ptr_eq(&entry.class, class) {
            return;
        }
        let Some(entry) = writer.classes.remove(&class.key) else {
            return;
        };
        for topic in &entry.topics {
            if let Some(t) = writer.topics.get(topic) {
                t.state.classes.rcu(|list| without(list, class));
            }
        }
        class.ring.clear();
        self.publish_classes(writer);
    }

    /// Publishes the list of live classes for the frame clock.
    fn publish_classes(&self, writer: &Writer) {
        let list: Vec<Arc<Class>> = writer.classes.values().map(|e| e.class.clone()).collect();
        self.classes.store(Arc::new(list));
    }

    /// The live stream classes (lock-free snapshot), for the hub's frame clock.
    // Under loom there is no frame clock thread to call it.
    #[cfg_attr(ssehub_loom, allow(dead_code))]
    pub(crate) fn classes(&self) -> Guard<Vec<Arc<Class>>> {
        self.classes.load()
    }
}

/// Puts `slot`, a member of `class`, on `state`'s subscribers, and the class on the topic if it
/// is not there yet. Under the writer lock.
fn attach_class(
    classes: &mut Map<ClassKey, ClassEntry>,
    state: &Arc<TopicState>,
    slot: &Arc<Slot>,
    class: &Arc<Class>,
) {
    if !slot.queue.is_closed() && !state.classes.load().iter().any(|c| Arc::ptr_eq(c, class)) {
        state.classes.rcu(|list| with(list, class));
        if let Some(entry) = classes.get_mut(&class.key) {
            entry.topics.insert(state.name.clone());
        }
    }
    state.subscribers.rcu(|set| set.insert(slot.id, slot.clone()));
}

/// `list` with `item` added.
fn with<T>(list: &[Arc<T>], item: &Arc<T>) -> Vec<Arc<T>> {
    let mut list = list.to_vec();
    list.push(item.clone());
    list
}

/// `list` without `item`.
fn without<T>(list: &[Arc<T>], item: &Arc<T>) -> Vec<Arc<T>> {
    list.iter().filter(|i| !Arc::ptr_eq(i, item)).cloned().collect()
}

/// Puts `slot` on `ring` (at its tail) and its `readers`, or on `pushed` if it conflates.
fn attach_to(
    slot: &Arc<Slot>,
    ring: &Arc<Ring>,
    readers: &Arc<Readers>,
    pushed: &ArcSwap<IdMap<Arc<Slot>>>,
    tier: Option<&Arc<Tier>>,
) {
    if !slot.reads_rings() {
        pushed.rcu(|set| set.insert(slot.id, slot.clone()));
        return;
    }
    let cursor = ring.join(slot.queue.capacity());
    let member = Arc::new(Member::new(slot.id, slot.queue.clone(), cursor));
    let feed = Feed {
        ring: ring.clone(),
        readers: readers.clone(),
        member: member.clone(),
        tier: tier.cloned(),
    };
    slot.add_feed(feed);
    readers.rcu(|set| set.insert(slot.id, member.clone()));
    // A subscriber parked on its other rings is not parked on this one yet (a pattern just
    // matched a new topic): park it here with the waker it registered, rather than wake it to
    // come and park itself (a new topic matched by 10,000 pattern subscribers would wake
    // 10,000 tasks that find nothing, each parking again on all its rings). One that has no
    // waker registered is not parked: it registers one before it loads its feeds (see
    // `reader.rs`), and that load sees this feed, added before.
    if let Some(waker) = slot.queue.registered_waker() {
        ring.park(&member, &waker);
    }
}

/// Takes `slot` off `ring` and its `readers`, or off `pushed`, if it is there; a ring nobody
/// reads any more lets go of its entries.
fn detach_from(
    slot: &Slot,
    ring: &Arc<Ring>,
    readers: &Readers,
    pushed: &ArcSwap<IdMap<Arc<Slot>>>,
) {
    if !slot.reads_rings() {
        if pushed.load().get(slot.id).is_some() {
            pushed.rcu(|set| set.remove(slot.id));
        }
        return;
    }
    if readers.load().get(slot.id).is_some() {
        readers.rcu(|set| set.remove(slot.id));
    }
    // Also when it already left the readers (a live change took its entries first).
    if slot.feeds().iter().any(|f| Arc::ptr_eq(&f.ring, ring)) {
        slot.remove_feed(ring);
    }
    if readers.load().is_empty() {
        ring.clear();
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
    /// With `pace`, every topic it receives moves to the ring of that pace (`change_pace`).
    /// Called under the sequencer, so the change sits between two publishes. `Ok(None)` when
    /// the subscriber is not registered (it ended); `Err` when it would ask for more than `max`
    /// topics and patterns afterwards, or for a new interval past the limit (nothing changes
    /// then).
    pub(crate) fn update(
        &self,
        slot: &Arc<Slot>,
        add: Names,
        remove: Names,
        pace: Option<Pace>,
        max: usize,
    ) -> Result<Option<Changed>, Unchanged> {
        let mut writer = lock(&self.writer);
        let Some(entry) = writer.subscribers.get(&slot.id) else {
            return Ok(None);
        };
        let count = planned_count(entry, &add, &remove);
        if count > max {
            return Err(Unchanged::TooManyTopics(count));
        }
        if pace.is_some_and(|pace| pace != entry.pace && self.over_intervals(&writer, pace)) {
            return Err(Unchanged::Intervals);
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
        if let Some(pace) = pace {
            self.change_pace(&mut writer, slot, pace);
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
        if last {
            if let Some(entry) = writer.topics.get(topic) {
                hand_over(&entry.state, slot);
            }
        }
        self.remove_member(writer, topic, slot.id);
    }

    /// Moves `slot` to `pace` on every topic it receives: what it was owed where it read (the
    /// ring's entries and, in a tier, the values pending for the next tick) moves into its
    /// queue, and it reads on from the tail of the ring of its new pace. Under the sequencer.
    fn change_pace(&self, writer: &mut Writer, slot: &Arc<Slot>, pace: Pace) {
        let Some(entry) = writer.subscribers.get_mut(&slot.id) else { return };
        if entry.pace == pace {
            return;
        }
        entry.pace = pace;
        let topics: Vec<SharedStr> = received(writer, slot.id).into_iter().collect();
        for topic in topics {
            let Some(state) = writer.topics.get(&topic).map(|e| e.state.clone()) else { continue };
            hand_over(&state, slot);
            self.detach(&mut writer.tiers, &state, slot.id);
            self.attach(&mut writer.tiers, &state, slot, pace);
        }
    }

    /// Makes `slot` name `topic` (if it did not).
    fn take_topic(&self, writer: &mut Writer, slot: &Arc<Slot>, topic: SharedStr) {
        let Some(entry) = writer.subscribers.get_mut(&slot.id) else { return };
        if entry.topics.contains(&topic) {
            return;
        }
        entry.topics.push(topic.clone());
        self.ensure_topic(writer, &topic);
        self.add_member(writer, &topic, slot);
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
            self.add_member(writer, topic, slot);
        }
        new
    }
}

/// What `slot` was owed on `state` (the entries the ring it reads still holds for it and, if
/// it reads the topic at a tier, the tier's values pending for it) moves into its queue before
/// it stops reading there while its stream goes on (a live change). Under the sequencer and
/// the writer lock.
fn hand_over(state: &TopicState, slot: &Arc<Slot>) {
    let tiers = state.tiers.load();
    let derived = tiers.iter().find(|d| {
        d.readers.load().get(slot.id).is_some() || d.pushed.load().get(slot.id).is_some()
    });
    let pending = derived.map(|d| d.pending_for(slot.id)).unwrap_or_default();
    let ring = derived.map_or(&state.ring, |d| &d.ring);
    if slot.reads_rings() {
        slot.leave_feed_absorbing(ring, pending);
    } else {
        slot.absorb_pending(pending);
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
