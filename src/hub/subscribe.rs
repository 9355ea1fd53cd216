//! `Subscribe`: what a new subscription asks for.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::engine::queue::SlowPolicy;

/// A subscription request: topics, patterns and per-subscriber settings.
///
/// `&str`, `String` and arrays of `&str` convert into a request for those topics, so the common
/// case is `hub.subscribe("news")` or `hub.subscribe(["a", "b"])`.
///
/// # Examples
///
/// ```
/// use ssehub::{Hub, SlowPolicy, Subscribe};
///
/// let hub = Hub::new();
/// let sub = hub.subscribe(
///     Subscribe::new()
///         .with_topic("news")
///         .with_pattern("price:*")
///         .with_slow_policy(SlowPolicy::DropOldest)
///         .with_capacity(128),
/// )?;
/// assert_eq!(hub.topic_subscriber_count("news"), 1);
/// # drop(sub);
/// # Ok::<(), ssehub::SubscribeError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Subscribe {
    /// Exact topic names.
    pub(crate) topics: Vec<String>,
    /// Glob patterns.
    pub(crate) patterns: Vec<String>,
    /// Overrides the hub's slow-client policy.
    pub(crate) policy: Option<SlowPolicy>,
    /// Overrides the hub's queue bound.
    pub(crate) capacity: Option<usize>,
    /// Overrides the hub's `connected` event setting.
    pub(crate) connected_event: Option<bool>,
    /// The client's `Last-Event-ID`, to resume from.
    pub(crate) last_event_id: Option<String>,
    /// Who the client is, as the application authenticated it.
    pub(crate) principal: Option<String>,
    /// A session resume token.
    pub(crate) session_token: Option<String>,
    /// When the stream ends with `event: expired`.
    pub(crate) expiry: Option<SystemTime>,
    /// The application's id for this subscription, for sends by pattern.
    pub(crate) client: Option<String>,
    /// String metadata that goes with the client id.
    pub(crate) metadata: BTreeMap<String, String>,
    /// Whether the stream starts with a snapshot of its topics' keyed state.
    pub(crate) snapshot: bool,
    /// The rate tier's interval; zero for every event as it comes.
    pub(crate) interval: std::time::Duration,
    /// The content coding asked for.
    pub(crate) encoding: crate::Encoding,
}

impl Subscribe {
    /// A request for nothing yet: such a subscriber still receives broadcasts and targeted
    /// sends.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let sub = hub.subscribe(ssehub::Subscribe::new())?;
    /// hub.broadcast(ssehub::Event::new("to everyone"))?;
    /// assert_eq!(sub.queued(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new() -> Self {
        Subscribe::default()
    }

    /// Adds an exact topic.
    ///
    /// # Examples
    ///
    /// ```
    /// let request = ssehub::Subscribe::new().with_topic("a").with_topic("b");
    /// # drop(request);
    /// ```
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Adds several exact topics.
    ///
    /// # Examples
    ///
    /// ```
    /// let request = ssehub::Subscribe::new().with_topics(["a", "b"]);
    /// # drop(request);
    /// ```
    pub fn with_topics<I, T>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }

    /// Adds a glob pattern (see [`Pattern`](crate::Pattern)): every topic it matches, now or
    /// later, is received.
    ///
    /// # Examples
    ///
    /// ```
    /// let request = ssehub::Subscribe::new().with_pattern("fleet:*:temp");
    /// # drop(request);
    /// ```
    pub fn with_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.patterns.push(pattern.into());
        self
    }

    /// This subscriber's slow-client policy.
    ///
    /// # Examples
    ///
    /// ```
    /// let request = ssehub::Subscribe::from("t").with_slow_policy(ssehub::SlowPolicy::DropOldest);
    /// # drop(request);
    /// ```
    pub fn with_slow_policy(mut self, policy: SlowPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// This subscriber's queue bound, in frames (at least 1).
    ///
    /// # Examples
    ///
    /// ```
    /// let request = ssehub::Subscribe::from("t").with_capacity(8);
    /// # drop(request);
    /// ```
    pub fn with_capacity(mut self, frames: usize) -> Self {
        self.capacity = Some(frames.max(1));
        self
    }

    /// Whether this subscription starts with a `connected` event.
    ///
    /// # Examples
    ///
    /// ```
    /// let request = ssehub::Subscribe::from("t").with_connected_event(true);
    /// # drop(request);
    /// ```
    pub fn with_connected_event(mut self, enabled: bool) -> Self {
        self.connected_event = Some(enabled);
        self
    }
}

impl Subscribe {
    /// Resumes after the event with this id (a reconnecting client's `Last-Event-ID`): the
    /// subscription first gets exactly the events of its topics published after it, in order,
    /// then live events, with no gap and no duplicate. When that cannot be exact (unknown or
    /// malformed id, another epoch, events already evicted, more than the replay limit), it gets
    /// one `event: reset` frame with data `{"reason":"..."}` (see
    /// [`ResetReason`](crate::ResetReason)) and then live events.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Event, Hub, HistoryLimits, Subscribe};
    ///
    /// let hub = Hub::builder().with_history(Some(HistoryLimits::new())).build();
    /// let first = hub.publish("t", Event::new("1"))?.id().unwrap_or_default().to_string();
    /// hub.publish("t", Event::new("2"))?;
    /// let mut sub = hub.subscribe(Subscribe::from("t").with_last_event_id(first))?;
    /// let replayed = sub.try_recv()?.expect("the missed event");
    /// assert_eq!(replayed.len(), 1);
    /// assert!(replayed.frames()[0].ends_with(b"data: 2\n\n"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_last_event_id(mut self, id: impl Into<String>) -> Self {
        self.last_event_id = Some(id.into());
        self
    }
}

impl Subscribe {
    /// Who the client is (as the application's authentication decided). Sessions are bound to
    /// it, and presence events name it.
    ///
    /// # Examples
    ///
    /// ```
    /// let request = ssehub::Subscribe::from("t").with_principal("user-42");
    /// # drop(request);
    /// ```
    pub fn with_principal(mut self, principal: impl Into<String>) -> Self {
        self.principal = Some(principal.into());
        self
    }

    /// Resumes the session this token was issued for (see
    /// [`HubBuilder::with_sessions`](crate::HubBuilder::with_sessions)).
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Event, Hub, SessionLimits, Subscribe};
    ///
    /// let hub = Hub::builder().with_sessions(Some(SessionLimits::new())).build();
    /// let mut first = hub.subscribe(Subscribe::from("room").with_principal("ann"))?;
    /// let connected = first.try_recv()?.expect("the connected event").into_bytes();
    /// let text = std::str::from_utf8(&connected)?;
    /// let token = text.split("\"token\":\"").nth(1).and_then(|t| t.split('"').next()).unwrap_or("");
    /// let session = first.session_id().unwrap_or_default().to_string();
    /// drop(first);
    ///
    /// hub.send_to_session(&session, Event::new("while you were away"))?;
    /// let mut back = hub.subscribe(Subscribe::new().with_principal("ann").with_session_token(token))?;
    /// assert_eq!(back.session_id(), Some(session.as_str()));
    /// let frames = back.try_recv()?.expect("connected, then the missed send");
    /// assert_eq!(frames.frames()[1].as_ref(), b"data: while you were away\n\n");
    /// assert_eq!(hub.topic_subscriber_count("room"), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(token.into());
        self
    }
}

impl Subscribe {
    /// Ends the stream at `at`, a wall-clock time (a credential's expiry: a JWT's `exp` is
    /// seconds since the UNIX epoch), with a final frame `event: expired`, data
    /// `{"reason":"expired"}` and a `retry:` of the hub's retry hint plus its jitter (1 s plus
    /// up to 5 s when the hub has none), so the client reconnects with a fresh credential, at
    /// its own moment. The frame has no `id:` line, so it never moves the client's resume
    /// point; it comes after everything published before the expiry, and the stream's
    /// [`EndReason`](crate::EndReason) is `Expired`. A time already past ends the stream at
    /// once (after its opening frames).
    ///
    /// The hub keeps one index of expiries and one thread that sleeps until the earliest (at
    /// most a second at a time): no timer per subscription. It is a `SystemTime`, not an
    /// `Instant`, because the credential's expiry is judged by the wall clock everywhere else
    /// too: a stepped system clock moves this hub's deadline with everyone else's.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use ssehub::{EndReason, Hub, Subscribe};
    ///
    /// let hub = Hub::new();
    /// let soon = SystemTime::now() + Duration::from_millis(50);
    /// let mut sub = hub.subscribe(Subscribe::from("t").with_expiry(soon))?;
    /// std::thread::sleep(Duration::from_millis(100));
    /// # let deadline = std::time::Instant::now() + Duration::from_secs(10);
    /// # while sub.queued() == 0 && std::time::Instant::now() < deadline {
    /// #     std::thread::sleep(Duration::from_millis(10));
    /// # }
    /// let last = sub.try_recv()?.expect("the expired frame").into_bytes();
    /// let text = std::str::from_utf8(&last)?;
    /// assert!(text.starts_with("event: expired\nretry: "));
    /// assert!(text.ends_with("data: {\"reason\":\"expired\"}\n\n"));
    /// assert!(matches!(sub.try_recv(), Err(EndReason::Expired)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_expiry(mut self, at: SystemTime) -> Self {
        self.expiry = Some(at);
        self
    }
}

impl Subscribe {
    /// The application's id for this subscription (say `execution:abc123`): the `connected`
    /// event carries it (as `"client"`), [`Hub::send_to_matching`](crate::Hub::send_to_matching)
    /// sends to every live subscription whose id matches a glob, and
    /// [`Hub::clients`](crate::Hub::clients) lists them. Several subscriptions may share an id
    /// (a user's tabs). It follows the rules of a topic name: not empty, at most 256 bytes, no
    /// control or invisible character, no `*`; the subscribe fails with
    /// [`SubscribeError::Client`](crate::SubscribeError::Client) otherwise.
    ///
    /// Whoever sets it decides who receives the sends: an HTTP resolver takes it from a
    /// verified credential, or from the query only where clients are trusted.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Event, Hub, Subscribe};
    ///
    /// let hub = Hub::new();
    /// let job = hub.subscribe(Subscribe::new().with_client("execution:abc123"))?;
    /// let other = hub.subscribe(Subscribe::new().with_client("user:ann"))?;
    /// assert_eq!(hub.send_to_matching("execution:*", Event::new("done"))?.receivers(), 1);
    /// assert_eq!((job.queued(), other.queued()), (1, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_client(mut self, id: impl Into<String>) -> Self {
        self.client = Some(id.into());
        self
    }

    /// Adds one string entry of metadata (a later value for the same key replaces the earlier),
    /// carried with the client id: in the `connected` event (as `"metadata"`, a JSON object)
    /// and in [`Hub::clients`](crate::Hub::clients). At most 32 entries and 4,096 bytes of keys
    /// and values together, no empty key; the subscribe fails with
    /// [`SubscribeError::Client`](crate::SubscribeError::Client) otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Hub, Subscribe};
    ///
    /// let hub = Hub::new();
    /// let _sub = hub.subscribe(
    ///     Subscribe::new().with_client("execution:abc123").with_metadata("region", "eu"),
    /// )?;
    /// let clients = hub.clients();
    /// assert_eq!(clients[0].metadata().get("region").map(String::as_str), Some("eu"));
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Starts the stream with a snapshot of the keyed state of every topic it receives (named
    /// or matched by a pattern; see [`HubBuilder::with_state`](crate::HubBuilder::with_state)):
    /// a frame `event: snapshot` with data `{"state":"begin","events":N}`, the latest event of
    /// every key, in publish order, each with its id, a frame `event: snapshot` with data
    /// `{"state":"end"}` (neither has an `id:` line, so they never move a resume point), then
    /// live events, with no gap and no duplicate across the seam: the snapshot is taken at the
    /// very point of the sequence where the subscription starts receiving. A topic that appears
    /// later (a pattern matches it) arrives live.
    ///
    /// With [`with_last_event_id`](Self::with_last_event_id) the snapshot is only sent when the
    /// resume cannot be exact: instead of the `reset` frame, and its begin frame carries the
    /// reason (`{"state":"begin","events":N,"reason":"too-old"}`). An exact resume gets its
    /// replay and no snapshot.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Event, Hub, StateLimits, Subscribe};
    ///
    /// let hub = Hub::builder().with_state(Some(StateLimits::new())).build();
    /// hub.publish("price:BTC", Event::new("64000").with_key("last"))?;
    /// hub.publish("price:ETH", Event::new("3100").with_key("last"))?;
    /// let mut sub = hub.subscribe(Subscribe::new().with_pattern("price:*").with_snapshot())?;
    /// let batch = sub.try_recv()?.expect("the snapshot");
    /// let frames = batch.frames();
    /// assert_eq!(frames[0].as_ref(), b"event: snapshot\ndata: {\"state\":\"begin\",\"events\":2}\n\n");
    /// assert_eq!(frames[1].as_ref(), b"data: 64000\n\n");
    /// assert_eq!(frames[2].as_ref(), b"data: 3100\n\n");
    /// assert_eq!(frames[3].as_ref(), b"event: snapshot\ndata: {\"state\":\"end\"}\n\n");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_snapshot(mut self) -> Self {
        self.snapshot = true;
        self
    }

    /// Receives its topics at a pace: per key (per topic for events without a key) at most one
    /// event per `interval`, always the latest, and the last one of a burst at the end of its
    /// interval. Every subscriber of a topic at one interval reads the same derived stream,
    /// chosen and encoded once, on one hub-wide timer per interval (ticks fall on multiples of
    /// the interval since the hub started). Ids are the events' own, so a resume is exact; a
    /// resume replays every event it missed, then goes on at the pace. The subscription's own
    /// frames (targeted sends, broadcasts) go out with the next tick, in order. Zero (the
    /// default) is every event as it comes; otherwise a whole number of milliseconds from 10 ms
    /// to 60 s, or the subscribe fails with [`SubscribeError::Interval`]. A live change can
    /// switch it ([`SubscriptionChange::with_interval`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use ssehub::{Event, Hub, Subscribe};
    ///
    /// let hub = Hub::new();
    /// let mut sub = hub.subscribe(
    ///     Subscribe::new().with_topic("price:BTC").with_interval(Duration::from_millis(50)),
    /// )?;
    /// for price in ["64000", "64001", "64002"] {
    ///     hub.publish("price:BTC", Event::new(price))?;
    /// }
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    /// let batch = rt.block_on(sub.recv()).expect("the tick");
    /// // The burst's last value, once, at the end of the interval.
    /// assert_eq!(batch.frames().len(), 1);
    /// assert_eq!(batch.frames()[0].as_ref(), b"data: 64002\n\n");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// [`SubscribeError::Interval`]: crate::SubscribeError::Interval
    /// [`SubscriptionChange::with_interval`]: crate::SubscriptionChange::with_interval
    pub fn with_interval(mut self, interval: std::time::Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Asks for the stream in `encoding` (zstd or gzip; identity, the default, as it is):
    /// its batches are then the bytes of that coding, to be sent with its `Content-Encoding`.
    /// Each event is compressed once for every subscription with the same topics, patterns
    /// and encoding (a stream class), whose members share the compressed bytes. The hub
    /// answers in identity instead when compression is off
    /// ([`HubBuilder::with_compression`]), at its limit of classes, and for streams at an
    /// interval or that conflate; [`Subscription::encoding`] says which it is.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Encoding, Subscribe};
    /// let request = Subscribe::new().with_pattern("price:*").with_encoding(Encoding::Zstd);
    /// # drop(request);
    /// ```
    ///
    /// [`HubBuilder::with_compression`]: crate::HubBuilder::with_compression
    /// [`Subscription::encoding`]: crate::Subscription::encoding
    pub fn with_encoding(mut self, encoding: crate::Encoding) -> Self {
        self.encoding = encoding;
        self
    }
}

impl From<&str> for Subscribe {
    fn from(topic: &str) -> Self {
        Subscribe::new().with_topic(topic)
    }
}

impl From<String> for Subscribe {
    fn from(topic: String) -> Self {
        Subscribe::new().with_topic(topic)
    }
}

impl<const N: usize> From<[&str; N]> for Subscribe {
    fn from(topics: [&str; N]) -> Self {
        Subscribe::new().with_topics(topics)
    }
}

impl From<&[&str]> for Subscribe {
    fn from(topics: &[&str]) -> Self {
        Subscribe::new().with_topics(topics.iter().copied())
    }
}
