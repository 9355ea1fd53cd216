//! Backplanes (features `redis`, `nats`): several hub nodes behind a load balancer, sharing one
//! broker, so that a publish on any node reaches the subscribers of every node and a client
//! resumes exactly on whichever node it lands.
//!
//! A [`Backplane`] joins a [`Hub`] to a broker. [`Backplane::publish`] writes the event to the
//! broker, which numbers it in its shared history (a Redis Stream, a JetStream stream) and fans
//! it out; every node, the publisher's included, receives it from its broker subscription and
//! delivers it into its local hub under that number: encoded once per node, with the id
//! `{epoch:x}-{sequence}` that means the same event on every node, in the broker's order.
//!
//! Each node mirrors recent events in its hub's history (the hub's
//! [`HistoryLimits`](crate::HistoryLimits)). A client resuming with `Last-Event-ID` is served
//! from the mirror when it reaches back far enough and from the broker's history otherwise;
//! where neither can be exact it gets the same `event: reset` as on a single node. Serve a
//! node's hub through an [`Endpoint`](crate::Endpoint) (or the native listener) and resumes go
//! through the backplane by themselves; elsewhere call [`Backplane::subscribe`].
//!
//! See `docs/scaling.md` for what is guaranteed and how to run several nodes.
//!
//! # Examples
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ssehub::backplane::{Backplane, Redis};
//! use ssehub::{Event, HistoryLimits, Hub};
//!
//! let hub = Hub::builder().with_history(Some(HistoryLimits::new())).build();
//! let node = Backplane::connect(&hub, Redis::new("redis://127.0.0.1:6379")).await?;
//! let mut sub = node.subscribe("news").await?;
//! let published = node.publish("news", Event::new("on every node")).await?;
//! let id = published.id().expect("a backplane event always has an id");
//! let batch = sub.recv().await.expect("the event, back from the broker");
//! assert!(std::str::from_utf8(&batch.into_bytes())?.contains(&format!("id: {id}\n")));
//! # Ok(())
//! # }
//! ```

mod broker;
mod codec;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;
mod supervisor;
mod window;

use std::fmt;
use std::time::Duration;

use crate::engine::external::Fetch;
use crate::engine::{Attached, Numbered, ReplaySource};
use crate::error::{EventError, SubscribeError, TopicError};
use crate::frame::Event;
use crate::hub::subscription::Subscription;
use crate::hub::{Hub, Published, Shared, Subscribe};
use crate::sync::{lock, rank, Arc, AtomicBool, AtomicU64, Mutex, Ordering, PlainArc, PlainWeak};
use crate::topic::{validate_topic, Pattern};

use broker::{Broker, Connect, Link, Outgoing, Position};
use supervisor::Backoff;

#[cfg(feature = "nats")]
pub use nats::Nats;
#[cfg(feature = "redis")]
pub use redis::Redis;

/// Why a backplane operation failed.
///
/// A publish that returns an error was not acknowledged by the broker: it was either not
/// stored, or (when the connection broke after the broker stored it) stored without this node
/// learning so. It is never reported as a success and then lost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackplaneError {
    /// The broker cannot be reached, or refused the operation.
    #[error("broker unavailable: {0}")]
    Unavailable(#[source] BrokerError),
    /// The broker did not answer in time.
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    /// The broker answered something this crate does not understand.
    #[error("unexpected answer from the broker")]
    Protocol,
    /// The topic name is invalid.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// The event cannot be encoded within the hub's limits.
    #[error("invalid event: {0}")]
    Event(#[from] EventError),
    /// The hub keeps no history: a node needs it to mirror the broker's recent events.
    #[error("hub has no history; enable it with HubBuilder::with_history")]
    NoHistory,
    /// The hub was already joined to a broker.
    #[error("hub already has a backplane")]
    AlreadyAttached,
    /// The backplane or its hub was shut down.
    #[error("backplane is shut down")]
    Closed,
    /// The node's publish window is full: publishes arrive faster than the broker takes them
    /// (see `Redis::with_max_in_flight` and `Nats::with_max_in_flight`). Nothing was
    /// published; retry later.
    #[error("too many publishes waiting for the broker; retry later")]
    Busy,
    /// An earlier event of the same [`Backplane::publish_all`] call failed, so this one was
    /// not sent: nothing after a failed event of a batch is sent.
    #[error("not sent: an earlier event of the batch failed")]
    Aborted,
}

/// An error reported by the broker's client library.
///
/// # Examples
///
/// ```
/// use ssehub::backplane::BrokerError;
/// let error = BrokerError::from(std::io::Error::other("connection refused"));
/// assert_eq!(error.to_string(), "connection refused");
/// ```
#[derive(Debug)]
pub struct BrokerError(Box<dyn std::error::Error + Send + Sync>);

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BrokerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<std::io::Error> for BrokerError {
    fn from(error: std::io::Error) -> Self {
        BrokerError(Box::new(error))
    }
}

impl BrokerError {
    /// Wraps a client library's error.
    pub(crate) fn wrap(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        BrokerError(Box::new(error))
    }
}

/// A backplane's state, for stats pages and alerts.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let hub = ssehub::Hub::builder().with_history(Some(ssehub::HistoryLimits::new())).build();
/// let node = ssehub::backplane::Backplane::connect(&hub, ssehub::backplane::Redis::new("redis://127.0.0.1")).await?;
/// let state = node.state();
/// if !state.connected || state.lag > 1000 {
///     eprintln!("backplane behind: {state:?}");
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BackplaneState {
    /// Whether the node's broker subscription is up.
    pub connected: bool,
    /// Times the subscription was lost and made again.
    pub reconnects: u64,
    /// The last sequence number delivered on this node.
    pub position: u64,
    /// The broker's last sequence number, as this node last learned it (its own publishes and
    /// a poll every second).
    pub broker_position: u64,
    /// `broker_position - position`: events the broker has that this node has not delivered.
    pub lag: u64,
    /// Events this node published and the broker acknowledged.
    pub published: u64,
    /// Publishes that failed (not acknowledged).
    pub publish_errors: u64,
    /// Round trips this node's publishes took to the broker: concurrent publishes go in one
    /// batch, so `published / publish_batches` is the mean batch.
    pub publish_batches: u64,
    /// Publishes refused at once because the node's publish window was full
    /// ([`BackplaneError::Busy`]).
    pub publish_busy: u64,
    /// Events received from the broker and delivered here.
    pub received: u64,
    /// Events received that could not be decoded or delivered here (counted, skipped).
    pub skipped: u64,
    /// Times events were missed and could not be recovered (a reconnect behind a broker that
    /// no longer has the missed range, a new epoch, a lost message): local streams were ended
    /// so their clients resume from the broker's history.
    pub gaps: u64,
    /// Times the subscription came back behind the broker, in the same history, and the
    /// missed range was fetched from the broker's history and delivered in order: no stream
    /// ended.
    pub ranges_recovered: u64,
    /// Events delivered that way, over every recovered range.
    pub events_recovered: u64,
    /// Resumes served from the broker's history because the local mirror did not reach back.
    pub fetches: u64,
}

/// Counters behind [`BackplaneState`].
#[derive(Debug, Default)]
struct Counters {
    /// See [`BackplaneState::connected`].
    connected: AtomicBool,
    /// See [`BackplaneState::reconnects`].
    reconnects: AtomicU64,
    /// See [`BackplaneState::broker_position`].
    broker_position: AtomicU64,
    /// See [`BackplaneState::published`].
    published: AtomicU64,
    /// See [`BackplaneState::publish_errors`].
    publish_errors: AtomicU64,
    /// See [`BackplaneState::publish_busy`].
    publish_busy: AtomicU64,
    /// See [`BackplaneState::received`].
    received: AtomicU64,
    /// See [`BackplaneState::skipped`].
    skipped: AtomicU64,
    /// See [`BackplaneState::gaps`].
    gaps: AtomicU64,
    /// See [`BackplaneState::fetches`].
    fetches: AtomicU64,
    /// See [`BackplaneState::ranges_recovered`].
    ranges_recovered: AtomicU64,
    /// See [`BackplaneState::events_recovered`].
    events_recovered: AtomicU64,
}

impl Counters {
    /// Adds one. Relaxed: statistics, read with no ordering expectations.
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the subscription's connection going up or down; a loss while the node is not
    /// `closing` counts as a reconnect (the loop will make it again).
    fn link(&self, up: bool, closing: bool) {
        // Relaxed: a status flag.
        let was = self.connected.swap(up, Ordering::Relaxed);
        if was && !up && !closing {
            Counters::bump(&self.reconnects);
        }
    }

    /// See [`BackplaneState::connected`].
    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// See [`BackplaneState::reconnects`].
    fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Raises the broker position seen.
    fn saw(&self, seq: u64) {
        self.broker_position.fetch_max(seq, Ordering::Relaxed);
    }

    /// Publishes the connection state to the `metrics` facade.
    fn report(&self, shared: &Shared) {
        #[cfg(feature = "metrics")]
        {
            let position = shared.external_position();
            let broker = self.broker_position.load(Ordering::Relaxed);
            let connected = self.connected.load(Ordering::Relaxed);
            metrics::gauge!("ssehub_backplane_connected").set(if connected { 1.0 } else { 0.0 });
            metrics::gauge!("ssehub_backplane_lag").set(broker.saturating_sub(position) as f64);
            metrics::counter!("ssehub_backplane_reconnects_total")
                .absolute(self.reconnects.load(Ordering::Relaxed));
            metrics::counter!("ssehub_backplane_gaps_total")
                .absolute(self.gaps.load(Ordering::Relaxed));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = shared;
    }
}

/// Settings shared by every broker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Common {
    /// How long one broker operation may take.
    pub(crate) timeout: Duration,
    /// How long a resume waits for this node to catch up with a client that was ahead of it.
    pub(crate) catch_up: Duration,
    /// The pauses between reconnect attempts.
    pub(crate) backoff: Backoff,
    /// Most publishes waiting behind the batch on the wire (see [`window`]).
    pub(crate) max_in_flight: usize,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            timeout: Duration::from_secs(5),
            catch_up: Duration::from_secs(2),
            backoff: Backoff::default(),
            max_in_flight: 4096,
        }
    }
}

/// What a node shares with its broker task.
pub(crate) struct Node {
    /// The hub's state (not a `Hub` handle: the task must not keep the hub from shutting down).
    pub(crate) shared: Arc<Shared>,
    /// Counters.
    counters: Counters,
    /// Set by shutdown.
    closed: AtomicBool,
    /// Settings.
    pub(crate) common: Common,
}

impl Node {
    /// Delivers one event received from the broker.
    pub(crate) fn deliver(&self, topic: &str, seq: u64, payload: &[u8]) {
        self.counters.saw(seq);
        let event = codec::decode(payload).ok();
        match Shared::publish_given(&self.shared, topic, seq, event) {
            Some(Numbered::InOrder) => Counters::bump(&self.counters.received),
            Some(Numbered::AfterGap) => {
                Counters::bump(&self.counters.received);
                Counters::bump(&self.counters.gaps);
            }
            Some(Numbered::Duplicate) => {}
            None => Counters::bump(&self.counters.skipped),
        }
    }

    /// Counts a range of `events` recovered from the broker's history.
    pub(crate) fn recovered(&self, events: u64) {
        Counters::bump(&self.counters.ranges_recovered);
        // Relaxed: statistics.
        self.counters.events_recovered.fetch_add(events, Ordering::Relaxed);
    }

    /// Counts a message that is not an event this crate published.
    pub(crate) fn skip(&self) {
        Counters::bump(&self.counters.skipped);
    }

    /// (Re)joins the broker's stream at `upto` in `epoch`.
    pub(crate) fn rebase(&self, epoch: u64, upto: u64) {
        self.counters.saw(upto);
        if self.shared.attach_clock(epoch, upto) != Attached::Continuous {
            Counters::bump(&self.counters.gaps);
        }
    }

    /// Records the connection going up or down.
    pub(crate) fn set_connected(&self, connected: bool) {
        self.counters.link(connected, self.is_closed());
        self.counters.report(&self.shared);
    }

    /// Records the broker's position from a poll.
    pub(crate) fn saw(&self, seq: u64) {
        self.counters.saw(seq);
        self.counters.report(&self.shared);
    }

    /// The broker's number of the last event delivered here.
    pub(crate) fn position(&self) -> u64 {
        self.shared.external_position()
    }

    /// The epoch of the broker's history this node delivers from; `None` before it first
    /// joined one.
    pub(crate) fn epoch(&self) -> Option<u64> {
        self.shared.external_epoch()
    }

    /// Where this node is in the broker's history; `None` before it first joined one.
    pub(crate) fn seen(&self) -> Option<Position> {
        self.epoch().map(|epoch| Position { epoch, seq: self.position() })
    }

    /// Whether the node or its hub was shut down.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.shared.is_closed()
    }
}

/// A node of a multi-node deployment: a [`Hub`] joined to a broker.
///
/// Cheap to clone. Dropping the last clone (or [`Backplane::shutdown`]) stops the node's
/// broker subscription; the hub goes on serving its local subscribers.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use ssehub::backplane::{Backplane, Nats, Redis};
/// use ssehub::{HistoryLimits, Hub};
///
/// let hub = Hub::builder().with_history(Some(HistoryLimits::new())).build();
/// let node = if let Ok(url) = std::env::var("REDIS_URL") {
///     Backplane::connect(&hub, Redis::new(&url)).await?
/// } else {
///     Backplane::connect(&hub, Nats::new("nats://127.0.0.1:4222")).await?
/// };
/// node.publish("news", ssehub::Event::new("hello, every node")).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Backplane {
    /// The node's state, shared with its broker task.
    node: PlainArc<Node>,
    /// The broker client.
    broker: PlainArc<dyn Broker>,
    /// Where publishes queue to go to the broker in batches.
    window: window::Window,
    /// The hub (a handle, so the hub lives as long as the backplane).
    hub: Hub,
    /// Stops the broker task when the last clone goes.
    stop: PlainArc<Stop>,
}

impl fmt::Debug for Backplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backplane").field("state", &self.state()).finish_non_exhaustive()
    }
}

/// Aborts the broker task when dropped.
struct Stop(Mutex<Option<tokio::task::JoinHandle<()>>, rank::BackplaneTask>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.0).take() {
            task.abort();
        }
    }
}

/// Which broker a node joins, and how: made from [`Redis`] or [`Nats`] with `into()`, so
/// [`Backplane::connect`] takes either.
///
/// # Examples
///
/// ```
/// use ssehub::backplane::{BrokerConfig, Redis};
/// let config: BrokerConfig = Redis::new("redis://127.0.0.1:6379").into();
/// # drop(config);
/// ```
#[derive(Debug, Clone)]
pub struct BrokerConfig(PlainArc<dyn Connect>);

#[cfg(feature = "redis")]
impl From<Redis> for BrokerConfig {
    fn from(redis: Redis) -> Self {
        BrokerConfig(PlainArc::new(redis))
    }
}

#[cfg(feature = "nats")]
impl From<Nats> for BrokerConfig {
    fn from(nats: Nats) -> Self {
        BrokerConfig(PlainArc::new(nats))
    }
}

impl Backplane {
    /// Joins `hub` to a broker: subscribes to the broker's stream, learns its epoch and
    /// position, and from then on numbers the hub's replayable events by the broker's.
    /// Call it from within a Tokio runtime, before the hub serves clients.
    ///
    /// # Errors
    ///
    /// [`BackplaneError::NoHistory`] when the hub keeps no history,
    /// [`BackplaneError::AlreadyAttached`] for a hub already joined,
    /// [`BackplaneError::Unavailable`] or [`BackplaneError::Timeout`] when the broker cannot be
    /// reached.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ssehub::backplane::{Backplane, Redis};
    /// let hub = ssehub::Hub::builder().with_history(Some(ssehub::HistoryLimits::new())).build();
    /// let node = Backplane::connect(&hub, Redis::new("redis://127.0.0.1:6379")).await?;
    /// assert!(node.state().connected);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(
        hub: &Hub,
        broker: impl Into<BrokerConfig>,
    ) -> Result<Backplane, BackplaneError> {
        let BrokerConfig(target) = broker.into();
        let shared = &hub.shared;
        if shared.config().history.is_none() {
            return Err(BackplaneError::NoHistory);
        }
        if shared.is_closed() {
            return Err(BackplaneError::Closed);
        }
        if !shared.claim_clock() {
            return Err(BackplaneError::AlreadyAttached);
        }
        let node = PlainArc::new(Node {
            shared: shared.clone(),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            common: target.common(),
        });
        let opened = async {
            let broker = target.connect(Link::new()).await?;
            let live = supervisor::join(&node, &*broker).await?;
            Ok::<_, BackplaneError>((broker, live))
        };
        let (broker, live) = match opened.await {
            Ok(opened) => opened,
            Err(error) => {
                shared.release_clock();
                return Err(error);
            }
        };
        node.set_connected(true);
        let task = tokio::spawn(supervisor::run(node.clone(), broker.clone(), live));
        let window =
            window::Window::start(broker.clone(), node.common.max_in_flight, node.common.timeout);
        let backplane = Backplane {
            node,
            broker,
            window,
            hub: hub.clone(),
            stop: PlainArc::new(Stop(Mutex::new(Some(task)))),
        };
        shared.set_replay_source(PlainArc::new(WeakBackplane {
            node: PlainArc::downgrade(&backplane.node),
            broker: PlainArc::downgrade(&backplane.broker),
        }));
        Ok(backplane)
    }

    /// The hub this node delivers into.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let hub = ssehub::Hub::builder().with_history(Some(ssehub::HistoryLimits::new())).build();
    /// # let node = ssehub::backplane::Backplane::connect(&hub, ssehub::backplane::Redis::new("redis://127.0.0.1")).await?;
    /// let endpoint = ssehub::Endpoint::new(node.hub().clone());
    /// # drop(endpoint);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Publishes an event to `topic` on every node: returns once the broker has stored it in
    /// the shared history, with the id it has on every node ([`Published::id`]). Every node,
    /// this one included, delivers it when it comes back from the broker, with that id (an id
    /// set on the event is replaced); [`Published::receivers`] is 0, since no subscriber has it
    /// yet: each node counts its own as the event arrives ([`BackplaneState::received`]).
    ///
    /// Concurrent publishes on one node go to the broker together: while one batch is on the
    /// wire the next gathers, and each goes in one round trip (Redis: one script call and one
    /// message on the channel; NATS: the JetStream publishes sent back to back, their
    /// acknowledgements awaited together). A lone publish goes at once.
    ///
    /// # Errors
    ///
    /// [`BackplaneError::Topic`] and [`BackplaneError::Event`] for what the hub would refuse
    /// (nothing is sent); [`BackplaneError::Busy`] when the node's publish window is full
    /// (nothing is sent); [`BackplaneError::Unavailable`] and [`BackplaneError::Timeout`] when
    /// the broker did not acknowledge it (see [`BackplaneError`]); [`BackplaneError::Closed`]
    /// after shutdown.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while the event waits for its batch withdraws it; once its batch was
    /// sent, the event may be published without its id being reported.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let hub = ssehub::Hub::builder().with_history(Some(ssehub::HistoryLimits::new())).build();
    /// # let node = ssehub::backplane::Backplane::connect(&hub, ssehub::backplane::Redis::new("redis://127.0.0.1")).await?;
    /// let published = node.publish("price:BTC", ssehub::Event::new("64000.5").with_event("tick")).await?;
    /// println!("stored as {}", published.id().unwrap_or_default());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish(&self, topic: &str, event: Event) -> Result<Published, BackplaneError> {
        let outgoing = self.outgoing(topic, event)?;
        let answer = self.window.publish(outgoing).await;
        self.settled(answer)
    }

    /// Publishes `events` in order, each to its topic, in as few broker round trips as their
    /// size allows (up to 256 events or 512 KiB each): one answer per event, in the same order.
    ///
    /// Nothing is sent unless every event is valid and the publish window has room for all of
    /// them: an invalid event is answered with its error and every other one with
    /// [`BackplaneError::Aborted`]; a full window answers each with [`BackplaneError::Busy`].
    /// Once sent, an event that fails stops the rest: the later ones not yet on the wire are
    /// answered [`BackplaneError::Aborted`] and never sent, so what was published is the
    /// events before the failure (and, since one round trip may carry several events, any
    /// after it in that same round trip that the broker acknowledged: their answers say so).
    ///
    /// # Cancel safety
    ///
    /// As [`Backplane::publish`], for each event.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let hub = ssehub::Hub::builder().with_history(Some(ssehub::HistoryLimits::new())).build();
    /// # let node = ssehub::backplane::Backplane::connect(&hub, ssehub::backplane::Redis::new("redis://127.0.0.1")).await?;
    /// use ssehub::Event;
    /// let answers = node
    ///     .publish_all(vec![
    ///         ("price:BTC".to_string(), Event::new("64000.5")),
    ///         ("price:ETH".to_string(), Event::new("3100.2")),
    ///     ])
    ///     .await;
    /// for answer in answers {
    ///     println!("stored as {}", answer?.id().unwrap_or_default());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_all(
        &self,
        events: Vec<(String, Event)>,
    ) -> Vec<Result<Published, BackplaneError>> {
        let count = events.len();
        let mut outgoing = Vec::with_capacity(count);
        for (index, (topic, event)) in events.into_iter().enumerate() {
            match self.outgoing(&topic, event) {
                Ok(ready) => outgoing.push(ready),
                Err(error) => {
                    let mut answers: Vec<_> =
                        (0..count).map(|_| Err(BackplaneError::Aborted)).collect();
                    answers[index] = Err(error);
                    return answers;
                }
            }
        }
        let answers = self.window.publish_all(outgoing).await;
        answers.into_iter().map(|answer| self.settled(answer)).collect()
    }

    /// `event` for `topic`, checked against the hub's limits and encoded for the broker.
    fn outgoing(&self, topic: &str, event: Event) -> Result<Outgoing, BackplaneError> {
        if self.node.is_closed() {
            return Err(BackplaneError::Closed);
        }
        let config = self.node.shared.config();
        validate_topic(topic, config.max_topic_len)?;
        let mut event = event.normalized();
        event.validate()?;
        // Checked with the longest id a node may add, so no node refuses it for its size.
        event.id = Some(format!("{:x}-{}", u64::MAX, u64::MAX));
        event.encode_limited(config.max_event_bytes)?;
        event.id = None;
        Ok(Outgoing { topic: topic.to_string(), payload: codec::encode(&event) })
    }

    /// The broker's answer for one event, counted.
    fn settled(
        &self,
        answer: Result<Position, BackplaneError>,
    ) -> Result<Published, BackplaneError> {
        match answer {
            Ok(at) => {
                Counters::bump(&self.node.counters.published);
                self.node.counters.saw(at.seq);
                // Each node counts its own receivers as the event arrives from the broker.
                let receivers = 0;
                Ok(Published::new(
                    receivers,
                    Some(crate::engine::history::format_id(at.epoch, at.seq)),
                ))
            }
            Err(BackplaneError::Busy) => {
                Counters::bump(&self.node.counters.publish_busy);
                Err(BackplaneError::Busy)
            }
            // Never sent because of another event's failure: that one is counted.
            Err(BackplaneError::Aborted) => Err(BackplaneError::Aborted),
            Err(error) => {
                Counters::bump(&self.node.counters.publish_errors);
                Err(error)
            }
        }
    }

    /// Subscribes on this node like [`Hub::subscribe`], resuming a `Last-Event-ID` issued by
    /// any node: from the local mirror when it reaches back far enough, else from the broker's
    /// history, with the same `reset` semantics as a single hub. An [`Endpoint`] serving the
    /// node's hub resumes this way by itself.
    ///
    /// [`Endpoint`]: crate::Endpoint
    ///
    /// # Errors
    ///
    /// As [`Hub::subscribe`], and [`SubscribeError::Unavailable`] when the missed events must
    /// come from the broker and it cannot be reached (the client should retry, rather than
    /// resume with a gap).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future subscribes nothing.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let hub = ssehub::Hub::builder().with_history(Some(ssehub::HistoryLimits::new())).build();
    /// # let node = ssehub::backplane::Backplane::connect(&hub, ssehub::backplane::Redis::new("redis://127.0.0.1")).await?;
    /// let published = node.publish("t", ssehub::Event::new("missed")).await?;
    /// let id = published.id().unwrap_or_default().to_string();
    /// let resumed = node.subscribe(ssehub::Subscribe::from("t").with_last_event_id(id)).await?;
    /// # drop(resumed);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe(
        &self,
        request: impl Into<Subscribe>,
    ) -> Result<Subscription, SubscribeError> {
        self.hub.subscribe_resuming(request.into()).await
    }

    /// The node's connection state, position and lag.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let hub = ssehub::Hub::builder().with_history(Some(ssehub::HistoryLimits::new())).build();
    /// # let node = ssehub::backplane::Backplane::connect(&hub, ssehub::backplane::Redis::new("redis://127.0.0.1")).await?;
    /// println!("lag: {} events", node.state().lag);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn state(&self) -> BackplaneState {
        let counters = &self.node.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let position = self.node.position();
        let broker_position = load(&counters.broker_position).max(position);
        BackplaneState {
            connected: counters.is_connected(),
            reconnects: counters.reconnects(),
            position,
            broker_position,
            lag: broker_position - position,
            published: load(&counters.published),
            publish_errors: load(&counters.publish_errors),
            publish_batches: self.window.batches(),
            publish_busy: load(&counters.publish_busy),
            received: load(&counters.received),
            skipped: load(&counters.skipped),
            gaps: load(&counters.gaps),
            fetches: load(&counters.fetches),
            ranges_recovered: load(&counters.ranges_recovered),
            events_recovered: load(&counters.events_recovered),
        }
    }

    /// Stops the node's broker subscription (publishes fail with
    /// [`BackplaneError::Closed`] from now on). The hub is not shut down: its streams go on
    /// until the application shuts it down.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let hub = ssehub::Hub::builder().with_history(Some(ssehub::HistoryLimits::new())).build();
    /// # let node = ssehub::backplane::Backplane::connect(&hub, ssehub::backplane::Redis::new("redis://127.0.0.1")).await?;
    /// node.shutdown();
    /// assert!(node.publish("t", ssehub::Event::new("x")).await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn shutdown(&self) {
        self.node.closed.store(true, Ordering::Release);
        if let Some(task) = lock(&self.stop.0).take() {
            task.abort();
        }
        self.node.set_connected(false);
    }
}

/// A backplane as its hub remembers it, as the hub's replay source: weakly, so the hub does
/// not keep it alive.
#[derive(Clone)]
pub(crate) struct WeakBackplane {
    /// See [`Backplane::node`].
    node: PlainWeak<Node>,
    /// See [`Backplane::broker`].
    broker: PlainWeak<dyn Broker>,
}

impl ReplaySource for WeakBackplane {
    fn catch_up(&self) -> Option<Duration> {
        let node = self.node.upgrade()?;
        (self.broker.strong_count() > 0).then_some(node.common.catch_up)
    }

    fn fetch<'a>(
        &'a self,
        after: u64,
        topics: &'a [String],
        patterns: &'a [Pattern],
        max: usize,
    ) -> Fetch<'a> {
        Box::pin(async move {
            let (Some(node), Some(broker)) = (self.node.upgrade(), self.broker.upgrade()) else {
                return Err(SubscribeError::Unavailable);
            };
            Counters::bump(&node.counters.fetches);
            tokio::time::timeout(node.common.timeout, broker.fetch(after, topics, patterns, max))
                .await
                .unwrap_or(Err(BackplaneError::Timeout(node.common.timeout)))
                .map_err(|_| SubscribeError::Unavailable)
        })
    }
}

impl fmt::Debug for WeakBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WeakBackplane")
    }
}

/// `url` with any credentials (`user:password@`) hidden, for `Debug`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// A fresh random epoch for a broker that has none.
#[cfg(feature = "redis")]
pub(crate) fn fresh_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness, the clock still makes a new epoch differ from the last one.
    if getrandom::fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        return now.map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
    // Kept below 2^53 so brokers that hold numbers as doubles (Lua) keep it exact.
    u64::from_le_bytes(bytes) >> 11
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn debug_hides_credentials() {
        assert_eq!(redact("redis://:s3cret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("nats://user:pw@host:4222"), "nats://***@host:4222");
        assert_eq!(redact("redis://host:6379/a@b"), "redis://host:6379/a@b");
        assert_eq!(redact("no scheme"), "no scheme");
    }
}
