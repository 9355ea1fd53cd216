//! The `Hub`: publish, broadcast, targeted sends, subscribe, shutdown.

mod builder;
mod change;
mod door;
mod subscribe;
pub(crate) mod subscription;

pub(crate) use builder::Config;
pub use builder::HubBuilder;
pub use change::SubscriptionChange;
pub use subscribe::Subscribe;

mod shared;

pub use crate::engine::Published;
pub(crate) use shared::{json_string, lag_frame, Services, Shared};

use std::fmt;

use crate::engine::stats::Stats;
use crate::error::EndReason;
use crate::error::{PublishError, SubscribeError, UpdateError};
use crate::frame::Event;
use crate::hub::subscription::{SubscriberId, Subscription};
use crate::services::heartbeat::Heartbeat;
use crate::sync::{Arc, Ordering};

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
    /// Everything, shared with subscriptions (and reached by a backplane through the door
    /// in `door.rs`).
    pub(crate) shared: Arc<Shared>,
}

/// How [`Hub::shutdown_paced`] spreads the end of the streams.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let pacing = ssehub::Pacing::new()
///     .with_batch(500)
///     .with_interval(Duration::from_millis(100))
///     .with_retry(Duration::from_secs(1), Duration::from_secs(10));
/// # let _ = pacing;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Pacing {
    /// Streams ended together.
    pub(crate) batch: usize,
    /// Pause between batches.
    pub(crate) interval: std::time::Duration,
    /// Base of the final `retry:` hint.
    pub(crate) retry: std::time::Duration,
    /// Most random extra added to it, per stream.
    pub(crate) jitter: std::time::Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            batch: 500,
            interval: std::time::Duration::from_millis(100),
            retry: std::time::Duration::from_secs(1),
            jitter: std::time::Duration::from_secs(5),
        }
    }
}

impl Pacing {
    /// 500 streams every 100 ms, each told to retry after 1 s plus up to 5 s.
    ///
    /// # Examples
    ///
    /// ```
    /// let pacing = ssehub::Pacing::new();
    /// # let _ = pacing;
    /// ```
    pub fn new() -> Self {
        Pacing::default()
    }

    /// Streams ended together (at least 1).
    ///
    /// # Examples
    ///
    /// ```
    /// let pacing = ssehub::Pacing::new().with_batch(100);
    /// # let _ = pacing;
    /// ```
    pub fn with_batch(mut self, streams: usize) -> Self {
        self.batch = streams.max(1);
        self
    }

    /// Pause between batches.
    ///
    /// # Examples
    ///
    /// ```
    /// let pacing = ssehub::Pacing::new().with_interval(std::time::Duration::from_millis(50));
    /// # let _ = pacing;
    /// ```
    pub fn with_interval(mut self, interval: std::time::Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The final `retry:` hint: `base` plus a random extra of up to `jitter` per stream.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let pacing = ssehub::Pacing::new().with_retry(Duration::from_secs(2), Duration::from_secs(8));
    /// # let _ = pacing;
    /// ```
    pub fn with_retry(mut self, base: std::time::Duration, jitter: std::time::Duration) -> Self {
        self.retry = base;
        self.jitter = jitter;
        self
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("subscribers", &self.shared.engine.registry.subscribers().len())
            .field("topics", &self.shared.engine.registry.topic_count())
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
        let shared = Arc::new(Shared::new(config));
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
        Shared::subscribe(&self.shared, request.into())
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
        Shared::publish(&self.shared, topic, event)
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
        Shared::broadcast(&self.shared, event)
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
        Shared::send_to_many(&self.shared, ids, event)
    }

    /// Registers an on-demand producer (see [`Producer`](crate::Producer)): from now on, each
    /// topic it covers runs one instance of it while the topic has subscribers. Call it from
    /// within a Tokio runtime; instances run there.
    ///
    /// # Errors
    ///
    /// [`ProducerError::NoRuntime`](crate::ProducerError::NoRuntime) outside a runtime,
    /// [`ProducerError::Target`](crate::ProducerError::Target) for an invalid topic or pattern,
    /// [`ProducerError::Closed`](crate::ProducerError::Closed) after shutdown.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hub = ssehub::Hub::new();
    /// hub.add_producer(ssehub::Producer::new("feed", |ctx| async move {
    ///     ctx.publish(ssehub::Event::new("first")).map(drop).map_err(|e| e.to_string())
    /// }))?;
    /// let mut sub = hub.subscribe("feed")?;
    /// assert_eq!(sub.recv().await.map(|b| b.into_bytes()), Some("data: first\n\n".into()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn add_producer(&self, producer: crate::Producer) -> Result<(), crate::ProducerError> {
        Shared::add_producer(&self.shared, producer)
    }

    /// Sends an event to a session (see [`HubBuilder::with_sessions`]): to its connection
    /// while it has one, otherwise into its bounded buffer, handed over when the client resumes
    /// within the TTL.
    ///
    /// # Errors
    ///
    /// As [`Hub::broadcast`]. An unknown or expired session is not an error: `receivers()` is
    /// 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Event, Hub, SessionLimits};
    /// let hub = Hub::builder().with_sessions(Some(SessionLimits::new())).build();
    /// let sub = hub.subscribe("t")?;
    /// let session = sub.session_id().expect("sessions are on").to_string();
    /// assert_eq!(hub.send_to_session(&session, Event::new("for you"))?.receivers(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_to_session(&self, session: &str, event: Event) -> Result<Published, PublishError> {
        Shared::send_to_session(&self.shared, session, event)
    }

    /// Sends an event to every live subscription whose client id (see
    /// [`Subscribe::with_client`]) matches `glob`, a [`Pattern`](crate::Pattern) over ids
    /// (`execution:abc123` for one id, `execution:*` for all of them): once to each, in the
    /// hub's one order with every other event. The event is encoded once for all of them. The
    /// matching set is taken at the send: a subscription whose `subscribe` returned before the
    /// call receives it. Sends are not kept for replay and go to this node's subscriptions only
    /// (a backplane does not carry them); a session's buffer does not keep them either.
    ///
    /// The index is ordered by id, so a send visits only the ids that start with the glob's
    /// text before its first `*`, each checked in time linear in its length.
    ///
    /// # Errors
    ///
    /// As [`Hub::broadcast`], and [`PublishError::ClientPattern`] for an invalid glob (the
    /// rules of a pattern, at most 256 bytes). No match is not an error: `receivers()` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Event, Hub, Subscribe};
    ///
    /// let hub = Hub::new();
    /// let a = hub.subscribe(Subscribe::new().with_client("execution:a"))?;
    /// let b = hub.subscribe(Subscribe::new().with_client("execution:b"))?;
    /// let ann = hub.subscribe(Subscribe::from("news").with_client("user:ann"))?;
    /// assert_eq!(hub.send_to_matching("execution:*", Event::new("step 2"))?.receivers(), 2);
    /// assert_eq!(hub.send_to_matching("execution:b", Event::new("done"))?.receivers(), 1);
    /// assert_eq!((a.queued(), b.queued(), ann.queued()), (1, 2, 0));
    /// assert!(hub.send_to_matching("", Event::new("x")).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_to_matching(&self, glob: &str, event: Event) -> Result<Published, PublishError> {
        Shared::send_to_matching(&self.shared, glob, event)
    }

    /// Changes what an open subscription receives, from the next event on: topics and
    /// patterns are taken off, then added (see [`SubscriptionChange`]). The change sits at one
    /// point in the hub's order of events: every event published before this call returns
    /// was published either before it (delivered as the subscription stood, including on the
    /// topics it leaves: nothing already published to it is lost) or after it; an event
    /// published after the call returns reaches the stream if and only if its topic is
    /// subscribed after the change. An added topic starts with its next event (no replay).
    /// The subscription's session, if it has one, records the change, so a resume restores
    /// it.
    ///
    /// Access control is the caller's: the `ssehub` server asks its resolver again for the
    /// added names before calling this.
    ///
    /// # Errors
    ///
    /// [`UpdateError::Ended`] if the subscription is not live, [`UpdateError::Topic`] and
    /// [`UpdateError::TooManyTopics`] for a bad change, [`UpdateError::Closed`] after shutdown.
    /// Nothing changes when an error is returned.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Event, Hub, SubscriptionChange};
    ///
    /// let hub = Hub::new();
    /// let mut sub = hub.subscribe("price:BTC")?;
    /// hub.publish("price:BTC", Event::new("1"))?;
    /// let change = SubscriptionChange::new().with_removed_topic("price:BTC").with_added_topic("price:ETH");
    /// hub.update_subscription(sub.id(), change)?;
    /// hub.publish("price:BTC", Event::new("2"))?;
    /// hub.publish("price:ETH", Event::new("3"))?;
    /// let mut seen = Vec::new();
    /// while let Some(batch) = sub.try_recv()? {
    ///     seen.extend(batch.frames().iter().map(|f| f.clone()));
    /// }
    /// assert_eq!(seen, ["data: 1\n\n", "data: 3\n\n"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update_subscription(
        &self,
        id: SubscriberId,
        change: SubscriptionChange,
    ) -> Result<(), UpdateError> {
        Shared::update_subscription(&self.shared, id, &change)
    }

    /// [`Hub::update_subscription`] for the open stream of the session whose token is `token`
    /// (the `connected` event's `"session"`, see
    /// [`HubBuilder::with_sessions`](crate::HubBuilder::with_sessions)), presented by
    /// `principal`; returns the stream's subscriber id.
    ///
    /// # Errors
    ///
    /// As [`Hub::update_subscription`], and [`UpdateError::UnknownSession`] for a token no
    /// session has (or sessions off), [`UpdateError::SessionRefused`] when the session belongs
    /// to another principal (counted as a hijack attempt), [`UpdateError::Ended`] when the
    /// session has no open stream now.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Hub, SessionLimits, Subscribe, SubscriptionChange, UpdateError};
    ///
    /// let hub = Hub::builder().with_sessions(Some(SessionLimits::new())).build();
    /// let mut sub = hub.subscribe(Subscribe::from("a").with_principal("ann"))?;
    /// let connected = sub.try_recv()?.expect("the connected event").into_bytes();
    /// let text = std::str::from_utf8(&connected)?;
    /// let token = text.split("\"session\":\"").nth(1).and_then(|t| t.split('"').next()).unwrap_or("");
    /// let change = SubscriptionChange::new().with_added_topic("b");
    /// assert_eq!(hub.update_session(token, Some("ann"), change.clone())?, sub.id());
    /// assert_eq!(hub.topic_subscriber_count("b"), 1);
    /// assert_eq!(hub.update_session(token, Some("bob"), change), Err(UpdateError::SessionRefused));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update_session(
        &self,
        token: &str,
        principal: Option<&str>,
        change: SubscriptionChange,
    ) -> Result<SubscriberId, UpdateError> {
        Shared::update_session(&self.shared, token, principal, &change)
    }

    /// Every live subscription that has a client id, with its metadata, ordered by id (then
    /// by subscriber). It copies the index under its lock: for admin pages, not hot paths.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Hub, Subscribe};
    ///
    /// let hub = Hub::new();
    /// let _b = hub.subscribe(Subscribe::new().with_client("b").with_metadata("tab", "1"))?;
    /// let _a = hub.subscribe(Subscribe::new().with_client("a"))?;
    /// let _anonymous = hub.subscribe("t")?;
    /// let clients = hub.clients();
    /// let ids: Vec<&str> = clients.iter().map(|c| c.id()).collect();
    /// assert_eq!(ids, ["a", "b"]);
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    #[must_use]
    pub fn clients(&self) -> Vec<crate::ConnectedClient> {
        self.shared.clients()
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
        let slot = self.shared.engine.registry.subscribers().get(id.0).cloned();
        slot.is_some_and(|slot| Shared::end(&self.shared, &slot, EndReason::Disconnected))
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
        let Some(state) = self.shared.engine.registry.topic(topic) else {
            return 0;
        };
        let slots = state.subscribers.load().values();
        slots.iter().filter(|slot| Shared::end(&self.shared, slot, EndReason::Disconnected)).count()
    }

    /// Ends every stream of subscriptions made with this principal (see
    /// [`Subscribe::with_principal`]) at once, each after what was published before this call,
    /// with a final frame `event: revoked`, data `{"reason":"revoked"}` and a jittered
    /// `retry:` (as for [`Subscribe::with_expiry`]); their [`EndReason`] is
    /// [`EndReason::Revoked`]. Returns how many were ended. It walks every subscriber once.
    ///
    /// It does not stop the principal from subscribing again: refusing its credentials from
    /// now on is the application's (the `ssehub` server refuses tokens for the principal
    /// issued before the revocation).
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{EndReason, Hub, Subscribe};
    /// let hub = Hub::new();
    /// let mut ann = hub.subscribe(Subscribe::from("t").with_principal("ann"))?;
    /// let bob = hub.subscribe(Subscribe::from("t").with_principal("bob"))?;
    /// assert_eq!(hub.revoke("ann"), 1);
    /// let last = ann.try_recv()?.expect("the revoked frame").into_bytes();
    /// assert!(last.starts_with(b"event: revoked\nretry: "));
    /// assert!(matches!(ann.try_recv(), Err(EndReason::Revoked)));
    /// assert_eq!(hub.subscriber_count(), 1);
    /// # drop(bob);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn revoke(&self, principal: &str) -> usize {
        Shared::revoke(&self.shared, principal)
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
        if self.shared.shutdown(Some(&frame)) {
            Ok(())
        } else {
            Err(PublishError::Closed(Box::new(last)))
        }
    }

    /// Shuts the hub down gracefully, in paced batches: at once, new subscribes and publishes
    /// fail with `Closed` and producers and the heartbeat stop; then every `pacing.batch`
    /// streams, each gets a final `retry:` of `pacing.retry` plus its own random extra of up to
    /// `pacing.jitter` and ends after what was queued for it, one batch every
    /// `pacing.interval`. Thousands of clients thus reconnect (to another node, or to this one
    /// restarted) spread out instead of in the same second. Returns `false` if the hub was
    /// already shut down. It never waits for clients: streams end on their next poll.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes leaves the remaining streams open until they are
    /// dropped or [`Hub::shutdown`] is called (which then ends them at once).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use ssehub::{Hub, Pacing};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hub = Hub::new();
    /// let mut subs = (0..10).map(|_| hub.subscribe("t")).collect::<Result<Vec<_>, _>>()?;
    /// let pacing = Pacing::new().with_batch(4).with_interval(Duration::from_millis(1));
    /// assert!(hub.shutdown_paced(&pacing).await);
    /// for sub in &mut subs {
    ///     let last = sub.recv().await.expect("the final retry hint").into_bytes();
    ///     assert!(last.starts_with(b"retry: "));
    ///     assert!(sub.recv().await.is_none());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown_paced(&self, pacing: &Pacing) -> bool {
        self.shared.shutdown_paced(pacing).await
    }

    /// Counts a request resolver that panicked (the adapters catch it and answer 500).
    #[cfg(any(feature = "axum", feature = "hyper", feature = "server"))]
    pub(crate) fn resolver_panicked(&self) {
        self.shared.engine.counters.resolver_panic();
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
        self.shared.engine.registry.subscribers().len()
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
        self.shared.engine.registry.topic(topic).map_or(0, |t| t.subscribers.load().len())
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
        self.shared.engine.registry.topic_counts()
    }
}
