//! The fan-out core: who receives what, the one sequenced publish pipeline, replay, and the
//! external clock a backplane numbers events by.
//!
//! The path of one event through these files: [`pipeline`] numbers it under the sequencer and
//! hands its frame to the topic found in the [`registry`] (copy-on-write maps keyed through
//! [`idmap`]), which appends it once to the topic's [`ring`] (and its [`history`]); a
//! subscriber's [`reader`] takes it from the ring, merged in sequence order with its own
//! [`queue`], as a [`batch`]; [`stats`] counts it once per publish. This module imports nothing
//! outside the engine but `frame`, `topic`, `error` and `sync` (`.ci/layers` checks it).
//!
//! The engine knows topics, frames and sequence numbers. It knows nothing of HTTP, of brokers,
//! nor of the optional services (sessions, producers, presence, heartbeat): the hub (`Shared`
//! in `src/hub/shared.rs`) wraps an `Engine` and calls those services around the engine's
//! operations, which report what they changed (the topics a subscribe or an unsubscribe
//! touched, the subscribers a publish dropped as slow). A backplane reaches the engine through
//! one door only, the hub's: the [`ExternalClock`] (which numbers events when a broker does)
//! and a [`ReplaySource`] (which fetches what a resume needs from elsewhere).

pub(crate) mod batch;
pub(crate) mod class;
pub(crate) mod external;
pub(crate) mod history;
pub(crate) mod idmap;
mod pipeline;
pub(crate) mod queue;
pub(crate) mod reader;
pub(crate) mod registry;
mod resolve;
pub(crate) mod ring;
pub(crate) mod state;
pub(crate) mod stats;
pub(crate) mod tier;
mod update;

use std::collections::HashSet;

use bytes::Bytes;

pub(crate) use external::{Attached, ExternalClock, Fetched, ReplaySource};
pub(crate) use pipeline::{append, count, fan_out, Entry, Number, Numbered, Sequenced};
pub(crate) use resolve::{Replay, Start};
// The loom registry models deliver through the real step.
#[cfg(all(test, ssehub_loom))]
pub(crate) use pipeline::deliver_to_topic;

use crate::engine::history::HistoryLimits;
use crate::engine::history::ResetReason;
use crate::engine::queue::{Queue, SlowPolicy};
pub(crate) use crate::engine::registry::Pace;
use crate::engine::registry::{Refused, Registry, Removed, Slot, TopicState};
use crate::engine::state::{StateConfig, StateTopics};
use crate::engine::stats::{Counters, Stats};
use crate::error::EndReason;
use crate::error::{IntervalError, SubscribeError, TopicError};
use crate::frame::compress::Codec;
use crate::sync::{lock, rank, Arc, AtomicBool, AtomicU64, Mutex, Ordering, SharedStr};
use crate::topic::{validate_topic, Pattern};

/// The engine's settings (the hub's builder fills them in with the services' own).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Default per-subscriber queue bound, in frames.
    pub(crate) capacity: usize,
    /// Default slow-client policy.
    pub(crate) policy: SlowPolicy,
    /// Most frames one poll of a subscription hands over.
    pub(crate) max_batch_frames: usize,
    /// About the most bytes one poll hands over (a single larger frame still goes alone).
    pub(crate) max_batch_bytes: usize,
    /// Longest topic name or pattern, in bytes.
    pub(crate) max_topic_len: usize,
    /// Most topics plus patterns in one subscription.
    pub(crate) max_topics_per_subscription: usize,
    /// Most live subscriptions.
    pub(crate) max_subscribers: usize,
    /// Largest encoded event, in bytes.
    pub(crate) max_event_bytes: usize,
    /// Whether lag is also signalled in-band with a `lagged` event.
    pub(crate) lag_event: bool,
    /// Replay history per topic; `None` for none (and no engine-assigned ids).
    pub(crate) history: Option<HistoryLimits>,
    /// Most events one reconnect replays.
    pub(crate) max_replay: usize,
    /// This engine's epoch, part of every id it assigns.
    pub(crate) epoch: u64,
    /// Which topics keep their latest event per key, within what.
    pub(crate) state: StateConfig,
    /// Most distinct rate tier intervals at once.
    pub(crate) max_intervals: usize,
    /// Compression settings: `None`, no stream is compressed.
    pub(crate) framing: Option<class::Framing>,
}

/// What a publish did.
///
/// # Examples
///
/// ```
/// let hub = ssehub::Hub::new();
/// let published = hub.publish("nobody-listens", ssehub::Event::new("x"))?;
/// assert_eq!(published.receivers(), 0);
/// assert_eq!(published.id(), None);
/// # Ok::<(), ssehub::PublishError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Subscribers the frame was queued for.
    receivers: usize,
    /// The event's id on the wire, given or assigned.
    id: Option<String>,
}

impl Published {
    /// What a publish did: `receivers` subscribers got it, under `id`.
    pub(crate) fn new(receivers: usize, id: Option<String>) -> Published {
        Published { receivers, id }
    }

    /// How many subscribers the frame was queued for: the subscribers of the topic when the
    /// publish took its snapshot, less those it found too slow to keep (a subscriber being
    /// dropped at that very moment may still be counted).
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let _a = hub.subscribe("t")?;
    /// assert_eq!(hub.publish("t", ssehub::Event::new("x"))?.receivers(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn receivers(&self) -> usize {
        self.receivers
    }

    /// The event's id as sent to clients: the publisher's, or the one the hub assigned (with
    /// history on); `None` for an event without one.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let published = hub.publish("t", ssehub::Event::new("x").with_id("7"))?;
    /// assert_eq!(published.id(), Some("7"));
    /// # Ok::<(), ssehub::PublishError>(())
    /// ```
    #[must_use]
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

/// Checked names of a subscription: de-duplicated topics and patterns.
#[derive(Debug, Default)]
pub(crate) struct Names {
    /// Exact topics.
    pub(crate) topics: Vec<SharedStr>,
    /// Glob patterns.
    pub(crate) patterns: Vec<Pattern>,
}

/// Whether a new subscription starts with a snapshot of its topics' keyed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Snapshot {
    /// Live events only (or the replay of a resume).
    Skip,
    /// The latest event of every key of every topic it receives first; a resume that cannot
    /// be exact gets it instead of a `reset`.
    Take,
}

/// The keyed state a subscription starts with.
#[derive(Debug)]
pub(crate) struct Taken {
    /// The latest event of every key of its topics, in publish order.
    pub(crate) frames: Vec<Bytes>,
    /// Why it replaces a resume, if it does.
    pub(crate) reason: Option<ResetReason>,
}

/// What registering a subscriber did.
#[derive(Debug)]
pub(crate) struct Joined {
    /// The topics it now receives (those a producer or presence may care about).
    pub(crate) topics: Vec<Arc<TopicState>>,
    /// For a resume: the frames it gets before live ones, or why that cannot be exact (`None`
    /// also when a snapshot replaced it).
    pub(crate) replay: Option<Result<Vec<Bytes>, ResetReason>>,
    /// For a subscription that asked for one (and did not resume exactly): its snapshot.
    pub(crate) snapshot: Option<Taken>,
}

/// The fan-out core's state.
pub(crate) struct Engine {
    /// Settings.
    pub(crate) config: Config,
    /// Who receives what.
    pub(crate) registry: Registry,
    /// Statistics.
    pub(crate) counters: Counters,
    /// Set once by shutdown.
    closed: AtomicBool,
    /// The next subscriber id.
    next_id: AtomicU64,
    /// The last sequence number issued. Every publish, broadcast and targeted send holds it
    /// while it takes a number, appends to history and queues the frame, so sequence order is
    /// delivery order for every subscriber; a subscription that resumes holds it while it
    /// registers and reads history, so nothing falls between replay and live events.
    pub(crate) sequencer: Mutex<u64, rank::Sequencer>,
    /// The last sequence number whose publish is complete (every entry written), stored under
    /// the sequencer. A subscriber merging several sources (rings, its queue) takes nothing
    /// past it, or an entry still on its way to one source could be overtaken by a later one
    /// already in another.
    watermark: AtomicU64,
    /// Numbers from elsewhere (a broker), while something outside attached it.
    pub(crate) clock: ExternalClock,
    /// The topics holding keyed state, for the hub-wide bound; taken only under the sequencer.
    pub(crate) state_topics: Mutex<StateTopics, rank::StateTopics>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("subscribers", &self.registry.subscribers().len())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with no subscriber, no topic and no external clock.
    pub(crate) fn new(config: Config) -> Engine {
        let registry = Registry::new().with_max_intervals(config.max_intervals);
        Engine {
            config,
            registry,
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            sequencer: Mutex::new(0),
            watermark: AtomicU64::new(0),
            clock: ExternalClock::default(),
            state_topics: Mutex::new(StateTopics::default()),
        }
    }

    /// The last sequence number whose publish is complete.
    pub(crate) fn watermark(&self) -> u64 {
        // Acquire pairs with the Release in `complete`.
        self.watermark.load(Ordering::Acquire)
    }

    /// Records that every publish up to `seq` is complete (see `watermark`); called under the
    /// sequencer after the publish's entries are written, before its readers are woken.
    pub(crate) fn complete(&self, seq: u64) {
        // Release pairs with the Acquire in `watermark()`.
        self.watermark.store(seq, Ordering::Release);
    }

    /// Whether shutdown has begun. Acquire pairs with the AcqRel in `close_sequence`.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sets `closed` under the sequencer; returns whether this call set it, and the last
    /// sequence number accepted (no publish gets one after it).
    pub(crate) fn close_sequence(&self) -> (bool, u64) {
        let sequencer = lock(&self.sequencer);
        // AcqRel: publishers that see `closed` must also see everything before it.
        let first = !self.closed.swap(true, Ordering::AcqRel);
        (first, *sequencer)
    }

    /// A new subscriber's slot: a fresh id, its queue with `capacity` and `policy` (the
    /// engine's defaults where `None`).
    pub(crate) fn new_slot(
        &self,
        capacity: Option<usize>,
        policy: Option<SlowPolicy>,
        principal: Option<&str>,
    ) -> Arc<Slot> {
        // Relaxed: ids only need to be unique.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Queue::new(
            capacity.unwrap_or(self.config.capacity),
            policy.unwrap_or(self.config.policy),
        );
        Arc::new(Slot::new(id, queue, principal.map(SharedStr::from)))
    }

    /// Validates and de-duplicates topic names and patterns, within the per-subscription limit.
    pub(crate) fn checked_names(
        &self,
        topics: &[String],
        patterns: &[String],
    ) -> Result<Names, SubscribeError> {
        let config = &self.config;
        let count = topics.len() + patterns.len();
        if count > config.max_topics_per_subscription {
            return Err(SubscribeError::TooManyTopics {
                count,
                max: config.max_topics_per_subscription,
            });
        }
        let mut seen = HashSet::new();
        let mut names = Names::default();
        for name in topics {
            validate_topic(name, config.max_topic_len).map_err(|error| topic_error(name, error))?;
            if seen.insert(name.as_str()) {
                names.topics.push(name.as_str().into());
            }
        }
        let mut seen = HashSet::new();
        for source in patterns {
            let pattern = Pattern::with_max_len(source, config.max_topic_len)
                .map_err(|error| topic_error(source, error))?;
            if seen.insert(source.as_str()) {
                names.patterns.push(pattern);
            }
        }
        Ok(names)
    }

    /// Registers `slot` for `names`, starting as `start` says. A subscription to several topics
    /// (or a pattern, which may match several) must start on all of them at one point in the
    /// sequence, or an event on one topic could slip by while a later one on another arrives:
    /// registering under the sequencer makes the start atomic. One exact topic is a single
    /// snapshot swap, atomic by itself (at `pace` `None`; a rate tier's reader registers under
    /// the sequencer too). A resume registers and reads its replay under the
    /// sequencer, and so does a snapshot: every event is either in the replay or the snapshot
    /// (published before) or delivered live (after), never both, never neither.
    pub(crate) fn join(
        &self,
        slot: &Arc<Slot>,
        names: Names,
        pace: Pace,
        start: Start<'_>,
        snapshot: Snapshot,
        codec: Option<Codec>,
    ) -> Result<Joined, SubscribeError> {
        let max = self.config.max_subscribers;
        let class = codec.zip(self.config.framing).map(|(codec, framing)| {
            (class::ClassKey::new(codec, &names.topics, &names.patterns), framing)
        });
        let Names { topics, patterns } = names;
        // A tier's reader starts at a point in the sequence too: the values pending in the tier
        // are its only if published after that point.
        let atomic_start =
            topics.len() + patterns.len() > 1 || !patterns.is_empty() || pace.is_some();
        let joined = |topics| Joined { topics, replay: None, snapshot: None };
        match (&start, snapshot) {
            (Start::Live, Snapshot::Skip) if !atomic_start => {
                let registered =
                    self.registry.subscribe(slot, topics, patterns, pace, class.clone(), max);
                return registered.map(joined).map_err(|refused| self.refusal(refused));
            }
            (Start::Live, Snapshot::Skip) => {
                let _sequencer = lock(&self.sequencer);
                let registered =
                    self.registry.subscribe(slot, topics, patterns, pace, class.clone(), max);
                return registered.map(joined).map_err(|refused| self.refusal(refused));
            }
            _ => {}
        }
        let sequencer = lock(&self.sequencer);
        let registered = self.registry.subscribe(slot, topics, patterns, pace, class.clone(), max);
        let topics = registered.map_err(|refused| self.refusal(refused))?;
        let replay = match start {
            Start::Live => None,
            _ => Some(self.resolve_start(&start, *sequencer, &topics)),
        };
        let (replay, snapshot) = match (replay, snapshot) {
            (Some(Err(reason)), Snapshot::Take) => (None, Some(self.take(&topics, Some(reason)))),
            (None, Snapshot::Take) => (None, Some(self.take(&topics, None))),
            (replay, _) => (replay, None),
        };
        drop(sequencer);
        if snapshot.is_some() {
            self.counters.snapshot_taken();
        }
        Ok(Joined { topics, replay, snapshot })
    }

    /// The latest event of every key of `topics`, in publish order. Called under the
    /// sequencer, right after the subscriber registered: each event published before is in
    /// its topic's state (or replaced there by a later one), each one after reaches the
    /// subscriber live. The frames are the ones the publishes encoded: nothing is encoded here.
    fn take(&self, topics: &[Arc<TopicState>], reason: Option<ResetReason>) -> Taken {
        let mut values = Vec::new();
        for topic in topics {
            lock(&topic.state).snapshot_into(&mut values);
        }
        Taken { frames: state::merged(values), reason }
    }

    /// Takes subscriber `id` out of the registry (once: later calls do nothing) and updates
    /// the size gauges; returns what that changed (the topics it left), for the services.
    pub(crate) fn remove(&self, id: u64) -> Option<Removed> {
        let removed = self.registry.unsubscribe(id)?;
        self.report_sizes();
        Some(removed)
    }

    /// The error for a refused registration.
    fn refusal(&self, refused: Refused) -> SubscribeError {
        match refused {
            Refused::Closed => SubscribeError::Closed,
            Refused::Full => SubscribeError::Full { max: self.config.max_subscribers },
            Refused::Intervals => {
                SubscribeError::Interval(IntervalError::TooMany { max: self.config.max_intervals })
            }
        }
    }

    /// Ends one subscriber's stream with `reason` after the frames published before this call
    /// (taken out of its rings into its queue); returns whether it was live. Taking it out of
    /// the registry is the caller's. `last`, if given, is handed over after them: the stream's
    /// final frame (queued beyond the bound).
    pub(crate) fn end(&self, slot: &Arc<Slot>, reason: EndReason, last: Option<&Bytes>) -> bool {
        // Under the sequencer: every publish is wholly before (its frame is taken along) or
        // wholly after (it no longer counts this subscriber).
        let sequencer = lock(&self.sequencer);
        pipeline::end_held(slot, reason, *sequencer, last)
    }

    /// A snapshot of the counters with the registry's sizes.
    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot(self.registry.subscribers().len(), self.registry.topic_count())
    }

    /// Updates the size gauges.
    pub(crate) fn report_sizes(&self) {
        self.counters.sizes(self.registry.subscribers().len(), self.registry.topic_count());
    }

    /// Ages out history; called by the heartbeat thread.
    pub(crate) fn sweep(&self, now: std::time::Instant) {
        if let Some(limits) = &self.config.history {
            self.registry.sweep(now, limits);
        }
    }

    /// Shuts down at once: closed to new subscribes and publishes, every stream ended after
    /// the frames published before (and `last`, if this call started the shutdown). Returns
    /// whether this call started it. Streams still open (a paced shutdown that was cancelled)
    /// are ended by every call.
    pub(crate) fn shutdown(&self, last: Option<&Bytes>) -> bool {
        let (first, upto) = self.close_sequence();
        let last = if first { last } else { None };
        for slot in self.registry.close() {
            pipeline::end_at_shutdown(&slot, last, upto);
        }
        first
    }

    /// Starts a paced shutdown: closed to new subscribes and publishes; returns the streams to
    /// end (with [`Closing::end`]) and the last sequence number they get, or `None` if the
    /// engine was already shut down.
    pub(crate) fn start_closing(&self) -> Option<Closing> {
        let (first, upto) = self.close_sequence();
        first.then(|| Closing { slots: self.registry.close(), upto })
    }
}

/// The streams a paced shutdown still has to end.
#[derive(Debug)]
pub(crate) struct Closing {
    /// Every subscriber the registry held when it closed.
    pub(crate) slots: Vec<Arc<Slot>>,
    /// The last sequence number accepted.
    upto: u64,
}

impl Closing {
    /// Ends `slot`'s stream after what was published up to the shutdown, then `last`.
    pub(crate) fn end(&self, slot: &Slot, last: Option<&Bytes>) {
        pipeline::end_at_shutdown(slot, last, self.upto);
    }
}

/// Truncates a refused name for the error, so a hostile 10 KB name is not echoed whole.
fn topic_error(name: &str, error: TopicError) -> SubscribeError {
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    SubscribeError::Topic { name: name[..end].to_string(), error }
}

impl Engine {
    /// Ends every stream class's compression frame that has been open for the frame time (the
    /// class went quiet), under the sequencer, and wakes the members: the frame clock's work.
    // Under loom there is no frame clock thread to call it.
    #[cfg_attr(ssehub_loom, allow(dead_code))]
    pub(crate) fn close_idle_frames(&self) {
        let classes = self.registry.classes().clone();
        if classes.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let sequencer = lock(&self.sequencer);
        let closed: Vec<&Arc<class::Class>> =
            classes.iter().filter(|class| class.close_if_idle(*sequencer, now)).collect();
        drop(sequencer);
        for class in closed {
            class.ring.wake_parked();
        }
    }
}
