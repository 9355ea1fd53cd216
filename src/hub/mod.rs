//! The `Hub`: publish, broadcast, targeted sends, subscribe, shutdown.

mod builder;
mod subscribe;

pub(crate) use builder::Config;
pub use builder::HubBuilder;
pub use subscribe::Subscribe;

use std::collections::HashSet;
use std::fmt;

use bytes::Bytes;

use crate::error::{PublishError, SubscribeError};
use crate::frame::{Event, Frame};
use crate::heartbeat::Heartbeat;
use crate::history::{format_id, parse_id, Parsed, ResetReason, MAX_LAST_EVENT_ID};
use crate::idmap::IdMap;
use crate::queue::{EndReason, FrameKeys, Pushed, Queue};
use crate::registry::{Refused, Registry, Slot, TopicState};
use crate::stats::{Counters, FanOut, Stats};
use crate::subscription::{SubscriberId, Subscription};
use crate::sync::{lock, Arc, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering, SharedStr};
use crate::topic::{validate_topic, Pattern};

/// The broadcast engine: a cheap, cloneable handle.
///
/// Every event is validated, normalised and encoded once into a shared frame, then queued for
/// each receiver as a reference count: no copy and no allocation per subscriber, and no lock on
/// the registry. Publishes pass one at a time through the hub's sequencer, so every subscriber
/// sees every event in one order (the order of the ids the hub assigns), which is what lets one
/// `Last-Event-ID` resume a subscription to many topics exactly.
///
/// When the last `Hub` handle is dropped the hub shuts down, as if [`Hub::shutdown`] was called.
///
/// # Examples
///
/// ```
/// use ssehub::{Event, Hub};
///
/// let hub = Hub::new();
/// let mut prices = hub.subscribe(ssehub::Subscribe::new().with_pattern("price:*"))?;
/// let delivered = hub.publish("price:BTC", Event::new("64000.5").with_event("tick"))?;
/// assert_eq!(delivered.receivers(), 1);
/// let batch = prices.try_recv()?.expect("one frame");
/// assert_eq!(batch.frames()[0].as_ref(), b"event: tick\ndata: 64000.5\n\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Hub {
    /// Everything, shared with subscriptions.
    shared: Arc<Shared>,
}

/// The state behind every `Hub` handle and `Subscription`.
pub(crate) struct Shared {
    /// Settings.
    pub(crate) config: Config,
    /// Who receives what.
    pub(crate) registry: Registry,
    /// Statistics.
    pub(crate) counters: Counters,
    /// Set once by shutdown.
    closed: AtomicBool,
    /// Live `Hub` handles; the last one to go shuts the hub down.
    handles: AtomicUsize,
    /// The next subscriber id.
    next_id: AtomicU64,
    /// The last sequence number issued. Every publish, broadcast and targeted send holds it
    /// while it assigns a number, appends to history and queues the frame, so sequence order is
    /// delivery order for every subscriber; a subscription that resumes holds it while it
    /// registers and reads history, so nothing falls between replay and live events.
    sequencer: Mutex<u64>,
    /// State of the `retry:` jitter generator.
    jitter: AtomicU64,
    /// The heartbeat timer.
    pub(crate) heartbeat: Heartbeat,
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
    /// How many subscribers the frame was queued for.
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

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("subscribers", &self.shared.registry.subscribers().len())
            .field("topics", &self.shared.registry.topic_count())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Clone for Hub {
    fn clone(&self) -> Self {
        // Relaxed: the count only decides who shuts down last; the Arc orders the rest.
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Hub { shared: self.shared.clone() }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // AcqRel: the last handle must see every other handle's work before shutting down.
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.shutdown(None);
        }
    }
}

impl Hub {
    /// A hub with the default settings (see [`HubBuilder::new`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// assert_eq!(hub.subscriber_count(), 0);
    /// ```
    #[must_use]
    pub fn new() -> Hub {
        HubBuilder::new().build()
    }

    /// A builder for a hub with other settings.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_capacity(64).build();
    /// # drop(hub);
    /// ```
    pub fn builder() -> HubBuilder {
        HubBuilder::new()
    }

    /// Builds the shared state and starts the heartbeat.
    pub(crate) fn from_config(config: Config) -> Hub {
        let heartbeat = config.heartbeat;
        let shared = Arc::new(Shared {
            config,
            registry: Registry::new(),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            handles: AtomicUsize::new(1),
            next_id: AtomicU64::new(1),
            sequencer: Mutex::new(0),
            jitter: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            heartbeat: Heartbeat::default(),
        });
        if let Some(interval) = heartbeat {
            Heartbeat::start(&shared, interval);
        }
        Hub { shared }
    }

    /// Subscribes to topics and patterns.
    ///
    /// Topics are checked (non-empty, at most the hub's length limit, no control or invisible
    /// characters, no `*`), as are patterns; duplicates are ignored.
    ///
    /// # Errors
    ///
    /// [`SubscribeError::Closed`] after shutdown, [`SubscribeError::Topic`] for an invalid name,
    /// [`SubscribeError::TooManyTopics`] and [`SubscribeError::Full`] at the hub's limits.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let sub = hub.subscribe(["news", "alerts"])?;
    /// assert_eq!(hub.subscriber_count(), 1);
    /// drop(sub);
    /// assert_eq!(hub.subscriber_count(), 0);
    /// assert!(hub.subscribe("bad\nname").is_err());
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    pub fn subscribe(&self, request: impl Into<Subscribe>) -> Result<Subscription, SubscribeError> {
        let request = request.into();
        let shared = &self.shared;
        let config = &shared.config;
        if shared.is_closed() {
            return Err(SubscribeError::Closed);
        }
        let count = request.topics.len() + request.patterns.len();
        if count > config.max_topics_per_subscription {
            return Err(SubscribeError::TooManyTopics {
                count,
                max: config.max_topics_per_subscription,
            });
        }
        let mut seen = HashSet::new();
        let mut topics: Vec<SharedStr> = Vec::with_capacity(request.topics.len());
        for name in &request.topics {
            validate_topic(name, config.max_topic_len).map_err(|error| topic_error(name, error))?;
            if seen.insert(name.as_str()) {
                topics.push(name.as_str().into());
            }
        }
        let mut seen = HashSet::new();
        let mut patterns = Vec::with_capacity(request.patterns.len());
        for source in &request.patterns {
            let pattern = Pattern::with_max_len(source, config.max_topic_len)
                .map_err(|error| topic_error(source, error))?;
            if seen.insert(source.as_str()) {
                patterns.push(pattern);
            }
        }
        // Relaxed: ids only need to be unique.
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let capacity = request.capacity.unwrap_or(config.capacity);
        let policy = request.policy.unwrap_or(config.policy);
        let slot = Arc::new(Slot { id, queue: Queue::new(capacity, policy) });
        let refused = |refused| match refused {
            Refused::Closed => SubscribeError::Closed,
            Refused::Full => SubscribeError::Full { max: config.max_subscribers },
        };
        let mut first = Vec::new();
        let connected = request.connected_event.unwrap_or(config.connected_event);
        if connected || config.retry.is_some() {
            first.push(shared.first_frame(id, connected));
        }
        match &request.last_event_id {
            None => {
                shared
                    .registry
                    .subscribe(&slot, topics, patterns, config.max_subscribers)
                    .map_err(refused)?;
            }
            Some(last) => {
                // Registering and reading history under the sequencer: every event is either
                // in the history read here (published before) or queued live (after), never
                // both, never neither.
                let sequencer = lock(&shared.sequencer);
                let received = shared
                    .registry
                    .subscribe(&slot, topics, patterns, config.max_subscribers)
                    .map_err(refused)?;
                match shared.resolve(last, *sequencer, &received) {
                    Ok(replay) => first.extend(replay),
                    Err(reason) => first.push(reset_frame(reason)),
                }
            }
        }
        shared.report_sizes();
        Ok(Subscription::new(shared.clone(), slot, first.into()))
    }

    /// Publishes an event to every subscriber of `topic` (by name or by pattern).
    ///
    /// The event is normalised (CR and CRLF in data become LF) and encoded once. A subscriber
    /// whose queue is full is handled by its [`SlowPolicy`](crate::SlowPolicy); it never blocks
    /// the publish or the other subscribers.
    ///
    /// # Errors
    ///
    /// [`PublishError::Closed`] (with the event) after shutdown, [`PublishError::Topic`] for an
    /// invalid topic, [`PublishError::Event`] for an event that cannot be encoded or is over the
    /// size limit. Nothing is delivered when an error is returned.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let sub = hub.subscribe("news")?;
    /// hub.publish("news", ssehub::Event::new("line 1\r\nline 2"))?;
    /// assert!(hub.publish("news", ssehub::Event::new("x").with_id("a\nb")).is_err());
    /// assert_eq!(sub.queued(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn publish(&self, topic: &str, event: Event) -> Result<Published, PublishError> {
        let shared = &*self.shared;
        if shared.is_closed() {
            return Err(PublishError::Closed(Box::new(event)));
        }
        validate_topic(topic, shared.config.max_topic_len)?;
        let history = shared.config.history;
        shared.sequenced(event, |seq, event, frame| {
            let Some(state) = shared.registry.topic_for_publish(topic, history.is_some()) else {
                return FanOut::default();
            };
            if let Some(limits) = &history {
                let given = event.id().filter(|_| !shared.assigns_ids_to(event));
                lock(&state.history).append(seq, given, frame, std::time::Instant::now(), limits);
            }
            let subscribers = state.subscribers.load();
            let keys = FrameKeys::new(Some(&state.name), event.event(), event.key());
            fan_out(&subscribers, frame, &keys)
        })
    }

    /// Publishes an event to every subscriber of the hub.
    ///
    /// # Errors
    ///
    /// As [`Hub::publish`], without the topic check.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let (_a, _b) = (hub.subscribe("a")?, hub.subscribe("b")?);
    /// assert_eq!(hub.broadcast(ssehub::Event::new("maintenance at noon"))?.receivers(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn broadcast(&self, event: Event) -> Result<Published, PublishError> {
        let shared = &*self.shared;
        if shared.is_closed() {
            return Err(PublishError::Closed(Box::new(event)));
        }
        shared.sequenced(event, |_, event, frame| {
            let subscribers = shared.registry.subscribers();
            let keys = FrameKeys::new(None, event.event(), event.key());
            fan_out(&subscribers, frame, &keys)
        })
    }

    /// Sends an event to one subscriber.
    ///
    /// # Errors
    ///
    /// As [`Hub::broadcast`]. An unknown id is not an error: `receivers()` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let sub = hub.subscribe("t")?;
    /// assert_eq!(hub.send_to(sub.id(), ssehub::Event::new("hi"))?.receivers(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_to(&self, id: SubscriberId, event: Event) -> Result<Published, PublishError> {
        self.send_to_many(&[id], event)
    }

    /// Sends an event to each of the given subscribers (once each, even if listed twice).
    ///
    /// # Errors
    ///
    /// As [`Hub::broadcast`]. Unknown ids are skipped.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let (a, b, c) = (hub.subscribe("t")?, hub.subscribe("t")?, hub.subscribe("t")?);
    /// let sent = hub.send_to_many(&[a.id(), c.id(), a.id()], ssehub::Event::new("x"))?;
    /// assert_eq!(sent.receivers(), 2);
    /// assert_eq!(b.queued(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_to_many(
        &self,
        ids: &[SubscriberId],
        event: Event,
    ) -> Result<Published, PublishError> {
        let shared = &*self.shared;
        if shared.is_closed() {
            return Err(PublishError::Closed(Box::new(event)));
        }
        shared.sequenced(event, |_, event, frame| {
            let subscribers = shared.registry.subscribers();
            let keys = FrameKeys::new(None, event.event(), event.key());
            let mut fan = FanOut::default();
            let mut done = HashSet::with_capacity(ids.len());
            for id in ids {
                if !done.insert(*id) {
                    continue;
                }
                if let Some(slot) = subscribers.get(id.0) {
                    count(&mut fan, slot.queue.push(frame, &keys));
                }
            }
            fan
        })
    }

    /// Ends one subscriber's stream (after what is already queued), as an application decision;
    /// its [`EndReason`] is [`EndReason::Disconnected`]. Returns whether it was live.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{EndReason, Hub};
    /// let hub = Hub::new();
    /// let mut sub = hub.subscribe("t")?;
    /// assert!(hub.disconnect(sub.id()));
    /// assert!(matches!(sub.try_recv(), Err(EndReason::Disconnected)));
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    pub fn disconnect(&self, id: SubscriberId) -> bool {
        match self.shared.registry.subscribers().get(id.0) {
            Some(slot) => slot.queue.close(EndReason::Disconnected, None, false),
            None => false,
        }
    }

    /// Ends the streams of every current subscriber of `topic` (by name or pattern), as
    /// [`Hub::disconnect`] does for one. Returns how many were ended.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let (_a, _b) = (hub.subscribe("t")?, hub.subscribe("u")?);
    /// assert_eq!(hub.disconnect_topic("t"), 1);
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    pub fn disconnect_topic(&self, topic: &str) -> usize {
        let Some(state) = self.shared.registry.topic(topic) else {
            return 0;
        };
        let mut ended = 0;
        state.subscribers.load().for_each(|slot| {
            if slot.queue.close(EndReason::Disconnected, None, false) {
                ended += 1;
            }
        });
        ended
    }

    /// Shuts the hub down: new subscribes and publishes fail with `Closed`, every stream ends
    /// after the frames already queued for it, and the heartbeat thread stops. Idempotent.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// hub.shutdown();
    /// hub.shutdown();
    /// assert!(hub.is_closed());
    /// assert!(hub.publish("t", ssehub::Event::new("x")).is_err());
    /// ```
    pub fn shutdown(&self) {
        self.shared.shutdown(None);
    }

    /// Shuts the hub down like [`Hub::shutdown`], queueing `last` to every stream first (beyond
    /// its bound), for example a `retry:` hint or a goodbye event.
    ///
    /// # Errors
    ///
    /// [`PublishError::Event`] if `last` cannot be encoded (the hub is not shut down then), and
    /// [`PublishError::Closed`] if it was already shut down.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let hub = ssehub::Hub::new();
    /// let mut sub = hub.subscribe("t")?;
    /// hub.shutdown_with(ssehub::Event::new("bye").with_retry(Duration::from_secs(5)))?;
    /// let last = sub.try_recv()?.expect("the goodbye frame");
    /// assert_eq!(last.frames()[0].as_ref(), b"retry: 5000\ndata: bye\n\n");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown_with(&self, last: Event) -> Result<(), PublishError> {
        let last = last.normalized();
        let frame = last.encode()?;
        if self.shared.shutdown(Some(frame.as_bytes())) {
            Ok(())
        } else {
            Err(PublishError::Closed(Box::new(last)))
        }
    }

    /// Whether the hub was shut down.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!ssehub::Hub::new().is_closed());
    /// ```
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// A snapshot of the hub's sizes and counters.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::Hub::new().stats().subscribers, 0);
    /// ```
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Number of live subscriptions.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let _s = hub.subscribe("t")?;
    /// assert_eq!(hub.subscriber_count(), 1);
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    #[must_use]
    pub fn subscriber_count(&self) -> usize {
        self.shared.registry.subscribers().len()
    }

    /// Number of subscribers receiving `topic` (by name or pattern); 0 for a topic that does not
    /// exist.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let _s = hub.subscribe(ssehub::Subscribe::new().with_topic("a:1").with_pattern("a:*"))?;
    /// assert_eq!(hub.topic_subscriber_count("a:1"), 1);
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    #[must_use]
    pub fn topic_subscriber_count(&self, topic: &str) -> usize {
        self.shared.registry.topic(topic).map_or(0, |t| t.subscribers.load().len())
    }

    /// Every live topic with its subscriber count (allocates; for stats pages, not hot paths).
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let _s = hub.subscribe("t")?;
    /// assert_eq!(hub.topics(), vec![("t".to_string(), 1)]);
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    #[must_use]
    pub fn topics(&self) -> Vec<(String, usize)> {
        self.shared.registry.topic_counts()
    }
}

impl Shared {
    /// Whether shutdown has begun. Acquire pairs with the Release in `shutdown`.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the hub assigns this event its id (history on, none given).
    fn assigns_ids_to(&self, event: &Event) -> bool {
        self.config.history.is_some() && event.id().is_none()
    }

    /// Runs one publish through the sequencer: normalises and encodes the event (with an
    /// assigned id if the hub assigns one), then calls `deliver` with the sequence number, the
    /// event and its frame, all under the sequencer so deliveries happen in sequence order.
    fn sequenced(
        &self,
        event: Event,
        deliver: impl FnOnce(u64, &Event, &Bytes) -> FanOut,
    ) -> Result<Published, PublishError> {
        let max = self.config.max_event_bytes;
        let mut event = event.normalized();
        // Validate (and, with the publisher's own id, encode) before taking the sequencer, so
        // a refused event costs no sequence number and holds no lock.
        event.validate()?;
        let assigned = self.assigns_ids_to(&event);
        let preencoded = if assigned { None } else { Some(event.encode_limited(max)?) };
        let mut sequencer = lock(&self.sequencer);
        let seq = *sequencer + 1;
        let frame = match preencoded {
            Some(frame) => frame,
            None => {
                event.id = Some(format_id(self.config.epoch, seq));
                event.encode_limited(max)?
            }
        };
        *sequencer = seq;
        let fan = deliver(seq, &event, frame.as_bytes());
        drop(sequencer);
        self.counters.published(fan);
        Ok(Published {
            receivers: usize::try_from(fan.delivered).unwrap_or(usize::MAX),
            id: event.id,
        })
    }

    /// The frames a resuming subscription gets first: the events after `last` on the topics it
    /// receives, oldest first, or why that cannot be exact. Called under the sequencer, with
    /// `current` the last sequence number issued.
    fn resolve(
        &self,
        last: &str,
        current: u64,
        topics: &[Arc<TopicState>],
    ) -> Result<Vec<Bytes>, ResetReason> {
        if last.len() > MAX_LAST_EVENT_ID || last.chars().any(char::is_control) {
            return Err(ResetReason::Malformed);
        }
        let unknown = if self.config.history.is_some() {
            ResetReason::UnknownId
        } else {
            ResetReason::NoHistory
        };
        let resume = match parse_id(last, self.config.epoch) {
            Parsed::Ours(seq) if seq > current => return Err(ResetReason::Malformed),
            Parsed::Ours(seq) => seq,
            Parsed::OtherEpoch => return Err(ResetReason::OtherEpoch),
            Parsed::Foreign => {
                topics.iter().filter_map(|t| lock(&t.history).find(last)).max().ok_or(unknown)?
            }
        };
        if resume == current {
            return Ok(Vec::new());
        }
        if self.config.history.is_none() {
            return Err(ResetReason::NoHistory);
        }
        if resume < self.registry.floor() {
            return Err(ResetReason::TooOld);
        }
        let max = self.config.max_replay;
        let mut missed: Vec<(u64, Bytes)> = Vec::new();
        for topic in topics {
            let history = lock(&topic.history);
            if resume < history.evicted_upto() {
                return Err(ResetReason::TooOld);
            }
            missed.extend(history.after(resume, max).map(|e| (e.seq, e.frame.clone())));
            if missed.len() > max {
                return Err(ResetReason::TooMany);
            }
        }
        missed.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(missed.into_iter().map(|(_, frame)| frame).collect())
    }

    /// The first frame of a subscription: the `connected` event and/or the `retry:` hint.
    fn first_frame(&self, id: u64, connected: bool) -> Bytes {
        let mut event = if connected {
            Event::new(format!("{{\"id\":{id}}}")).with_event("connected")
        } else {
            Event::default()
        };
        if let Some((base, jitter)) = self.config.retry {
            event = event.with_retry(base + self.jitter(jitter));
        }
        event.encode().map(Frame::into_bytes).unwrap_or_default()
    }

    /// A random duration up to `max` (xorshift: spreading clients out needs no cryptography).
    pub(crate) fn jitter(&self, max: std::time::Duration) -> std::time::Duration {
        let mut x = self.jitter.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Relaxed: a lost update only repeats a random number.
        self.jitter.store(x, Ordering::Relaxed);
        let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        std::time::Duration::from_millis(if ms == 0 { 0 } else { x % (ms + 1) })
    }

    /// A snapshot of the statistics.
    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot(self.registry.subscribers().len(), self.registry.topic_count())
    }

    /// Updates the size gauges.
    fn report_sizes(&self) {
        self.counters.sizes(self.registry.subscribers().len(), self.registry.topic_count());
    }

    /// Unregisters a subscription being dropped.
    pub(crate) fn unsubscribe(&self, slot: &Slot) {
        slot.queue.close(EndReason::Dropped, None, true);
        self.registry.unsubscribe(slot.id);
        self.report_sizes();
    }

    /// Shuts down once; returns whether this call did it.
    pub(crate) fn shutdown(&self, last: Option<&Bytes>) -> bool {
        // AcqRel: publishers that see `closed` must also see everything before it.
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        for slot in self.registry.close() {
            slot.queue.close(EndReason::Shutdown, last, false);
        }
        self.heartbeat.stop();
        true
    }
}

/// Queues `bytes` for every subscriber in `subscribers`.
fn fan_out(subscribers: &IdMap<Arc<Slot>>, bytes: &Bytes, keys: &FrameKeys<'_>) -> FanOut {
    let mut fan = FanOut::default();
    subscribers.for_each(|slot| count(&mut fan, slot.queue.push(bytes, keys)));
    fan
}

/// Adds one push's outcome to the fan-out totals.
fn count(fan: &mut FanOut, pushed: Pushed) {
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
        Pushed::Disconnected => fan.slow += 1,
        Pushed::Closed => {}
    }
}

/// Truncates a refused name for the error, so a hostile 10 KB name is not echoed whole.
fn topic_error(name: &str, error: crate::error::TopicError) -> SubscribeError {
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    SubscribeError::Topic { name: name[..end].to_string(), error }
}

/// The `reset` frame: the client must resync; no `id:` line.
fn reset_frame(reason: ResetReason) -> Bytes {
    Bytes::from(format!("event: reset\ndata: {{\"reason\":\"{reason}\"}}\n\n"))
}

/// The in-band lag signal: how many frames were lost, no `id:` line.
pub(crate) fn lag_frame(lost: u64) -> Bytes {
    Frame::from_encoded(Bytes::from(format!("event: lagged\ndata: {lost}\n\n"))).into_bytes()
}
