//! `HubBuilder` and the hub's configuration.

use std::time::Duration;

use crate::engine::history::HistoryLimits;
use crate::engine::queue::SlowPolicy;
use crate::engine::state::{StateConfig, StateLimits};
use crate::hub::Hub;
use crate::services::sessions::SessionLimits;

/// The hub's settings; see [`HubBuilder`] for what each one means.
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
    /// Heartbeat interval; `None` for no heartbeats.
    pub(crate) heartbeat: Option<Duration>,
    /// Longest topic name or pattern, in bytes.
    pub(crate) max_topic_len: usize,
    /// Most topics plus patterns in one subscription.
    pub(crate) max_topics_per_subscription: usize,
    /// Most live subscriptions.
    pub(crate) max_subscribers: usize,
    /// Largest encoded event, in bytes.
    pub(crate) max_event_bytes: usize,
    /// Whether subscriptions start with a `connected` event by default.
    pub(crate) connected_event: bool,
    /// Whether lag is also signalled in-band with a `lagged` event.
    pub(crate) lag_event: bool,
    /// Replay history per topic; `None` for none (and no hub-assigned ids).
    pub(crate) history: Option<HistoryLimits>,
    /// Most events one reconnect replays.
    pub(crate) max_replay: usize,
    /// Most distinct rate tier intervals at once.
    pub(crate) max_intervals: usize,
    /// Compression of streams that ask for it; `None` for none.
    pub(crate) compression: Option<crate::Compression>,
    /// This hub's epoch, part of every id it assigns.
    pub(crate) epoch: u64,
    /// The `retry:` hint each subscription starts with: a base and a random extra up to a
    /// jitter, so reconnecting clients spread out.
    pub(crate) retry: Option<(Duration, Duration)>,
    /// Resumable sessions; `None` for none.
    pub(crate) sessions: Option<SessionLimits>,
    /// Whether subscribing to and leaving a topic publishes `join`/`leave` on `presence:TOPIC`.
    pub(crate) presence: bool,
    /// Which topics keep their latest event per key, within what.
    pub(crate) state: StateConfig,
}

impl Config {
    /// The engine's settings and the services'.
    pub(crate) fn split(self) -> (crate::engine::Config, super::Services) {
        let engine = crate::engine::Config {
            capacity: self.capacity,
            policy: self.policy,
            max_batch_frames: self.max_batch_frames,
            max_batch_bytes: self.max_batch_bytes,
            max_topic_len: self.max_topic_len,
            max_topics_per_subscription: self.max_topics_per_subscription,
            max_subscribers: self.max_subscribers,
            max_event_bytes: self.max_event_bytes,
            lag_event: self.lag_event,
            history: self.history,
            max_replay: self.max_replay,
            max_intervals: self.max_intervals,
            framing: self.compression.map(|c| c.framing),
            epoch: self.epoch,
            state: self.state,
        };
        let services = super::Services {
            connected_event: self.connected_event,
            retry: self.retry,
            sessions: self.sessions,
            presence: self.presence,
        };
        (engine, services)
    }
}

/// A new epoch per process start: milliseconds since the UNIX epoch.
fn default_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            capacity: 1024,
            policy: SlowPolicy::Disconnect,
            max_batch_frames: 64,
            max_batch_bytes: 64 * 1024,
            heartbeat: Some(Duration::from_secs(15)),
            max_topic_len: 256,
            max_topics_per_subscription: 64,
            max_subscribers: usize::MAX,
            max_event_bytes: 1024 * 1024,
            connected_event: false,
            lag_event: true,
            history: None,
            max_replay: 1000,
            max_intervals: 16,
            compression: Some(crate::Compression::new()),
            epoch: default_epoch(),
            retry: None,
            sessions: None,
            presence: false,
            state: StateConfig::default(),
        }
    }
}

/// Configures and builds a [`Hub`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ssehub::{Hub, SlowPolicy};
///
/// let hub = Hub::builder()
///     .with_capacity(256)
///     .with_slow_policy(SlowPolicy::DropOldest)
///     .with_heartbeat(Some(Duration::from_secs(10)))
///     .with_max_batch(32, 32 * 1024)
///     .build();
/// # drop(hub);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct HubBuilder {
    /// The settings so far.
    config: Config,
}

impl HubBuilder {
    /// The defaults: queues of 1,024 frames, `SlowPolicy::Disconnect`, batches of at most 64
    /// frames or 64 KiB, a heartbeat every 15 s, topic names up to 256 bytes, 64 topics and
    /// patterns per subscription, no subscriber limit, events up to 1 MiB encoded, no
    /// `connected` event, `lagged` events on.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::HubBuilder::new().build();
    /// # drop(hub);
    /// ```
    pub fn new() -> Self {
        HubBuilder::default()
    }

    /// The default bound of each subscriber's queue, in frames (at least 1). A subscription may
    /// ask for its own with [`Subscribe::with_capacity`](crate::Subscribe::with_capacity).
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_capacity(16).build();
    /// # drop(hub);
    /// ```
    pub fn with_capacity(mut self, frames: usize) -> Self {
        self.config.capacity = frames.max(1);
        self
    }

    /// The default slow-client policy.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_slow_policy(ssehub::SlowPolicy::DropOldest).build();
    /// # drop(hub);
    /// ```
    pub fn with_slow_policy(mut self, policy: SlowPolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// The batch cap: one poll of a subscription hands over at most `frames` frames and, past
    /// the first frame, at most `bytes` bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_max_batch(16, 16 * 1024).build();
    /// # drop(hub);
    /// ```
    pub fn with_max_batch(mut self, frames: usize, bytes: usize) -> Self {
        self.config.max_batch_frames = frames.max(1);
        self.config.max_batch_bytes = bytes;
        self
    }

    /// The heartbeat interval, or `None` for none. One hub-wide timer thread queues a shared
    /// `: keep-alive` comment to every subscriber that received nothing during the interval.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_heartbeat(None).build();
    /// # drop(hub);
    /// ```
    pub fn with_heartbeat(mut self, interval: Option<std::time::Duration>) -> Self {
        self.config.heartbeat = interval.filter(|d| !d.is_zero());
        self
    }

    /// The longest topic name or pattern accepted, in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_max_topic_len(64).build();
    /// assert!(hub.subscribe("x".repeat(65).as_str()).is_err());
    /// ```
    pub fn with_max_topic_len(mut self, bytes: usize) -> Self {
        self.config.max_topic_len = bytes;
        self
    }

    /// The most topics plus patterns one subscription may name.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_max_topics_per_subscription(2).build();
    /// assert!(hub.subscribe(["a", "b", "c"]).is_err());
    /// ```
    pub fn with_max_topics_per_subscription(mut self, count: usize) -> Self {
        self.config.max_topics_per_subscription = count;
        self
    }

    /// The most distinct rate tier intervals live at once (default 16): each is ticked by the
    /// hub's clock whatever its number of subscribers, so a client may not make the hub tick
    /// at a thousand different paces. A subscription or live change asking for one more is
    /// refused with [`IntervalError::TooMany`](crate::IntervalError::TooMany); intervals in
    /// use are always accepted.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use ssehub::Subscribe;
    ///
    /// let hub = ssehub::Hub::builder().with_max_intervals(1).build();
    /// let at = |ms| Subscribe::new().with_topic("t").with_interval(Duration::from_millis(ms));
    /// let _quarter = hub.subscribe(at(250))?;
    /// let _also = hub.subscribe(at(250))?;
    /// assert!(hub.subscribe(at(1000)).is_err());
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    pub fn with_max_intervals(mut self, count: usize) -> Self {
        self.config.max_intervals = count;
        self
    }

    /// Compression for the streams that ask for it ([`Subscribe::with_encoding`], or an
    /// `Endpoint` with compression on), with these settings (the default), or none with
    /// `None` (every stream is sent identity). Each event is compressed once per stream class
    /// (the subscriptions with the same topics, patterns and encoding), never per subscriber.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Encoding, Hub, Subscribe};
    /// let hub = Hub::builder().with_compression(None).build();
    /// let sub = hub.subscribe(Subscribe::from("t").with_encoding(Encoding::Gzip))?;
    /// assert_eq!(sub.encoding(), Encoding::Identity);
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    ///
    /// [`Subscribe::with_encoding`]: crate::Subscribe::with_encoding
    pub fn with_compression(mut self, settings: Option<crate::Compression>) -> Self {
        self.config.compression = settings;
        self
    }

    /// The most live subscriptions; more are refused with `SubscribeError::Full`.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_max_subscribers(1).build();
    /// let _first = hub.subscribe("a")?;
    /// assert!(hub.subscribe("a").is_err());
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    pub fn with_max_subscribers(mut self, count: usize) -> Self {
        self.config.max_subscribers = count;
        self
    }

    /// The largest encoded event accepted, in bytes; larger ones are refused with
    /// `EventError::TooLarge`.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_max_event_bytes(16).build();
    /// assert!(hub.publish("t", ssehub::Event::new("x".repeat(100))).is_err());
    /// ```
    pub fn with_max_event_bytes(mut self, bytes: usize) -> Self {
        self.config.max_event_bytes = bytes;
        self
    }

    /// Whether subscriptions start with a `connected` event (`event: connected`, data
    /// `{"id":N}`, no `id:` line so it never moves a client's resume point). A subscription may
    /// override it.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_connected_event(true).build();
    /// let mut sub = hub.subscribe("t")?;
    /// let first = sub.try_recv()?.expect("the connected event");
    /// let expected = format!("event: connected\ndata: {{\"id\":{}}}\n\n", sub.id());
    /// assert_eq!(first.frames()[0].as_ref(), expected.as_bytes());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_connected_event(mut self, enabled: bool) -> Self {
        self.config.connected_event = enabled;
        self
    }

    /// Whether a subscriber that lost frames (`DropOldest`, `Conflate`) gets an `event: lagged`
    /// frame with the number lost as data, before its next frames. On by default; the count is
    /// on [`Batch::lagged`](crate::Batch::lagged) either way.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_lag_event(false).build();
    /// # drop(hub);
    /// ```
    pub fn with_lag_event(mut self, enabled: bool) -> Self {
        self.config.lag_event = enabled;
        self
    }

    /// Keeps per-topic history for `Last-Event-ID` replay, within `limits` (or none with
    /// `None`, the default). With history on, the hub assigns an id to every event published
    /// without one: `{epoch:x}-{sequence}`, ordered across topics, so one `Last-Event-ID`
    /// resumes a multi-topic subscription.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Event, Hub, HistoryLimits};
    /// let hub = Hub::builder().with_history(Some(HistoryLimits::new())).with_epoch(0xab).build();
    /// let published = hub.publish("t", Event::new("x"))?;
    /// assert_eq!(published.id(), Some("ab-1"));
    /// # Ok::<(), ssehub::PublishError>(())
    /// ```
    pub fn with_history(mut self, limits: Option<HistoryLimits>) -> Self {
        self.config.history = limits;
        self
    }

    /// Keeps every topic's latest event per key (see [`Event::with_key`](crate::Event::with_key);
    /// the events without a key share one), within `limits` (or none with `None`, the
    /// default), for subscriptions that start with a snapshot
    /// ([`Subscribe::with_snapshot`](crate::Subscribe::with_snapshot)). A topic that keeps state
    /// stays when its last subscriber leaves.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Event, Hub, StateLimits, Subscribe};
    /// let hub = Hub::builder().with_state(Some(StateLimits::new())).build();
    /// hub.publish("price", Event::new("101").with_key("BTC"))?;
    /// hub.publish("price", Event::new("102").with_key("BTC"))?;
    /// hub.publish("price", Event::new("7").with_key("ETH"))?;
    /// let mut sub = hub.subscribe(Subscribe::from("price").with_snapshot())?;
    /// let batch = sub.try_recv()?.expect("the snapshot");
    /// // The begin frame, BTC's 102, ETH's 7, the end frame.
    /// assert_eq!(batch.frames()[1].as_ref(), b"data: 102\n\n");
    /// assert_eq!(batch.frames()[2].as_ref(), b"data: 7\n\n");
    /// assert_eq!(batch.len(), 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_state(mut self, limits: Option<StateLimits>) -> Self {
        self.config.state.default = limits;
        self
    }

    /// Keeps the state of the topics `pattern` matches within `limits`, whatever
    /// [`with_state`](Self::with_state) says (the first of these that matches a topic decides;
    /// `StateLimits::new().with_max_keys(0)` keeps none). A topic's limits are fixed when its
    /// first event is delivered.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Hub, Pattern, StateLimits};
    /// let hub = Hub::builder()
    ///     .with_topic_state(Pattern::new("book:*")?, StateLimits::new().with_max_keys(100))
    ///     .with_topic_state(Pattern::new("chat:*")?, StateLimits::new().with_max_keys(0))
    ///     .with_state(Some(StateLimits::new()))
    ///     .build();
    /// # drop(hub);
    /// # Ok::<(), ssehub::TopicError>(())
    /// ```
    pub fn with_topic_state(mut self, pattern: crate::Pattern, limits: StateLimits) -> Self {
        self.config.state.topics.push((pattern, limits));
        self
    }

    /// The most topics holding keyed state (100,000 by default). Past it, the topic published to
    /// longest ago that nobody receives loses its state (and goes, when no history keeps it),
    /// counted in [`Stats::state_topics_dropped`](crate::Stats::state_topics_dropped), so a
    /// server publishing to ever-new topics (one per order id) stays bounded. A topic someone
    /// receives (named or through a pattern) keeps its state: it counts as published to now,
    /// and the hub may hold more than `count` while more than `count` topics are received.
    /// 0 keeps state only on topics being received.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Event, Hub, StateLimits};
    /// let hub = Hub::builder()
    ///     .with_state(Some(StateLimits::new()))
    ///     .with_max_state_topics(2)
    ///     .build();
    /// for order in ["order:1", "order:2", "order:3"] {
    ///     hub.publish(order, Event::new("filled"))?;
    /// }
    /// // order:1 was published to longest ago: its state went.
    /// assert_eq!(hub.stats().state_topics_dropped, 1);
    /// assert_eq!(hub.stats().topics, 2);
    /// # Ok::<(), ssehub::PublishError>(())
    /// ```
    pub fn with_max_state_topics(mut self, count: usize) -> Self {
        self.config.state.max_topics = count;
        self
    }

    /// The most events one reconnect replays (1,000 by default); a client that missed more
    /// gets a `reset` event instead.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_max_replay(100).build();
    /// # drop(hub);
    /// ```
    pub fn with_max_replay(mut self, events: usize) -> Self {
        self.config.max_replay = events;
        self
    }

    /// The epoch in the ids this hub assigns (by default the start time in milliseconds, so a
    /// restarted hub recognises ids from its previous life and answers them with a `reset`).
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_epoch(7).build();
    /// # drop(hub);
    /// ```
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.config.epoch = epoch;
        self
    }

    /// Starts every subscription with a `retry:` hint of `base` plus a random extra of up to
    /// `jitter`, so clients that lose their connection together do not come back together.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let hub = ssehub::Hub::builder()
    ///     .with_retry(Some((Duration::from_secs(2), Duration::from_secs(3))))
    ///     .build();
    /// let mut sub = hub.subscribe("t")?;
    /// let first = sub.try_recv()?.expect("the retry hint").into_bytes();
    /// let ms: u64 = std::str::from_utf8(&first)?.trim_start_matches("retry: ").trim().parse()?;
    /// assert!((2000..=5000).contains(&ms));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_retry(mut self, retry: Option<(Duration, Duration)>) -> Self {
        self.config.retry = retry;
        self
    }

    /// Issues a resumable session to every subscription (`None`, the default, for none). The
    /// session's id and its unguessable resume token go out in the `connected` event
    /// (`{"id":N,"session":"…","token":"…"}`); a client that reconnects within the TTL with
    /// [`Subscribe::with_session_token`](crate::Subscribe::with_session_token) gets back its
    /// topics and patterns and the targeted sends
    /// ([`Hub::send_to_session`](crate::Hub::send_to_session)) it missed. A
    /// token presented by another principal is refused
    /// ([`SubscribeError::SessionRefused`](crate::SubscribeError::SessionRefused)) and counted;
    /// an expired or unknown one starts a fresh session.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_sessions(Some(ssehub::SessionLimits::new())).build();
    /// assert!(hub.subscribe("t")?.session_id().is_some());
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    pub fn with_sessions(mut self, limits: Option<SessionLimits>) -> Self {
        self.config.sessions = limits;
        self
    }

    /// Publishes presence: when a subscription names topic `T` (patterns do not count), a
    /// `join` event goes to topic `presence:T`, and a `leave` event when it ends, with data
    /// `{"subscriber":N,"principal":"…"|null,"subscribers":COUNT}`. Off by default. The current
    /// count is always available from
    /// [`Hub::topic_subscriber_count`](crate::Hub::topic_subscriber_count).
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().with_presence(true).build();
    /// let watcher = hub.subscribe("presence:room")?;
    /// let member = hub.subscribe("room")?;
    /// drop(member);
    /// assert_eq!(watcher.queued(), 2);
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    pub fn with_presence(mut self, enabled: bool) -> Self {
        self.config.presence = enabled;
        self
    }

    /// Builds the hub and, if heartbeats are on, starts its timer thread.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::builder().build();
    /// assert!(!hub.is_closed());
    /// ```
    pub fn build(self) -> Hub {
        Hub::from_config(self.config)
    }
}
