//! On-demand producers: a task per topic that runs while the topic has subscribers.
//!
//! A producer is registered for a topic or a pattern. When a topic it covers gains its first
//! subscriber, the hub spawns the producer for that topic on the Tokio runtime it was registered
//! from; when the last subscriber leaves (after an optional linger), the producer's future is
//! dropped. A producer may also end by itself (a stop condition). Its error is published to the
//! topic as an `error` event and a panic is caught and reported the same way; neither affects the
//! hub or other producers. A callback runs whenever a producer stops.
//!
//! Membership changes are reported to the producer table after the registry's lock is released,
//! so two changes can arrive out of order; each report therefore reads the topic's current
//! subscriber count under the lock of the instance bookkeeping ([`Lifecycle`], free of any
//! runtime so the loom models in `src/tests/loom_producer.rs` run it) and reconciles to it. The
//! last report to take that lock sees the final count, so a producer never runs twice for one
//! topic and never stays stopped (unless it stopped itself) while the topic has subscribers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;

use crate::engine::registry::Registry;
use crate::error::{ProducerError, PublishError};
use crate::frame::Event;
use crate::hub::{Published, Shared};
use crate::sync::{lock, rank, Arc, Mutex, PlainArc, SharedStr};
use crate::topic::Pattern;

/// Why a producer stopped, as told to its stop callback.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// Its topic has had no subscriber for the linger time.
    Idle,
    /// Its future returned `Ok(())`: it stopped by itself.
    Finished,
    /// Its future returned an error (also published as an `error` event).
    Failed(String),
    /// It panicked (also published as an `error` event, and counted).
    Panicked,
    /// The hub shut down (also when its future returned `Ok(())` after the hub closed, as one
    /// whose publish failed at shutdown does).
    Shutdown,
}

/// The boxed future a producer returns.
type ProducerFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// A type-erased producer function.
type StartFn = dyn Fn(ProducerContext) -> ProducerFuture + Send + Sync;
/// A type-erased stop callback.
type StopFn = dyn Fn(&str, &StopReason) + Send + Sync;

/// An on-demand producer: what runs, for which topics, and how it stops.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ssehub::{Event, Hub, Producer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = Hub::builder().with_heartbeat(None).build();
/// hub.add_producer(
///     Producer::new("clock:*", |ctx| async move {
///         let mut tick = tokio::time::interval(Duration::from_millis(10));
///         loop {
///             tick.tick().await;
///             if ctx.publish(Event::new("tick")).is_err() {
///                 return Ok::<(), std::io::Error>(());
///             }
///         }
///     })
///     .with_linger(Duration::from_millis(50)),
/// )?;
/// let mut sub = hub.subscribe("clock:utc")?;
/// assert!(sub.recv().await.is_some()); // the producer started with the first subscriber
/// # Ok(())
/// # }
/// ```
pub struct Producer {
    /// The topics it serves: a topic name or a pattern, checked by `Hub::add_producer`.
    target: String,
    /// Starts one instance for a topic.
    start: PlainArc<StartFn>,
    /// How long an idle topic keeps its producer.
    linger: Duration,
    /// Called when an instance stops.
    on_stop: Option<PlainArc<StopFn>>,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("target", &self.target)
            .field("linger", &self.linger)
            .finish()
    }
}

impl Producer {
    /// A producer for the topics `target` matches (a topic name or a glob pattern). `start` is
    /// called with a [`ProducerContext`] each time a topic it covers gains its first
    /// subscriber; the future it returns runs until the topic is idle, the hub shuts down, or it
    /// returns.
    ///
    /// `target` is checked by [`Hub::add_producer`](crate::Hub::add_producer).
    ///
    /// # Examples
    ///
    /// ```
    /// let producer = ssehub::Producer::new("device:*", |_ctx| async { Ok::<(), String>(()) });
    /// # drop(producer);
    /// ```
    #[must_use]
    pub fn new<F, Fut, E>(target: &str, start: F) -> Producer
    where
        F: Fn(ProducerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + 'static,
    {
        let target = target.to_string();
        let start: PlainArc<StartFn> = PlainArc::new(move |ctx| {
            let fut = start(ctx);
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) }) as ProducerFuture
        });
        Producer { target, start, linger: Duration::ZERO, on_stop: None }
    }

    /// How long a topic with no subscriber keeps its producer running (zero by default), so a
    /// client that reconnects quickly finds it still warm.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = ssehub::Producer::new("t", |_| async { Ok::<(), String>(()) })
    ///     .with_linger(Duration::from_secs(5));
    /// # drop(p);
    /// ```
    #[must_use]
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// A callback run each time an instance stops, with its topic and why.
    ///
    /// # Examples
    ///
    /// ```
    /// let p = ssehub::Producer::new("t", |_| async { Ok::<(), String>(()) })
    ///     .with_on_stop(|topic, reason| eprintln!("{topic}: producer stopped ({reason:?})"));
    /// # drop(p);
    /// ```
    #[must_use]
    pub fn with_on_stop(
        mut self,
        on_stop: impl Fn(&str, &StopReason) + Send + Sync + 'static,
    ) -> Self {
        self.on_stop = Some(PlainArc::new(on_stop));
        self
    }
}

/// What a running producer instance gets: its topic, a way to publish to it, and a signal to
/// stop.
pub struct ProducerContext {
    /// The topic this instance serves.
    topic: SharedStr,
    /// The hub (not a `Hub` handle, so a running producer does not keep a hub from shutting
    /// down when its last handle is dropped).
    shared: Arc<Shared>,
    /// Becomes `true` when the instance must stop.
    stop: watch::Receiver<bool>,
}

impl fmt::Debug for ProducerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProducerContext").field("topic", &self.topic).finish()
    }
}

impl ProducerContext {
    /// The topic this instance serves.
    ///
    /// # Examples
    ///
    /// ```
    /// let p = ssehub::Producer::new("t", |ctx| async move {
    ///     assert_eq!(ctx.topic(), "t");
    ///     Ok::<(), String>(())
    /// });
    /// # drop(p);
    /// ```
    #[must_use]
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes an event to this instance's topic.
    ///
    /// # Errors
    ///
    /// As [`Hub::publish`](crate::Hub::publish); `PublishError::Closed` once the hub shut down.
    ///
    /// # Examples
    ///
    /// ```
    /// let p = ssehub::Producer::new("t", |ctx| async move {
    ///     ctx.publish(ssehub::Event::new("hello")).map(drop).map_err(|e| e.to_string())
    /// });
    /// # drop(p);
    /// ```
    pub fn publish(&self, event: Event) -> Result<Published, PublishError> {
        Shared::publish(&self.shared, &self.topic, event)
    }

    /// Resolves when this instance must stop (its future is also dropped then, so awaiting this
    /// is only needed for work that must finish cleanly).
    ///
    /// # Examples
    ///
    /// ```
    /// let p = ssehub::Producer::new("t", |mut ctx| async move {
    ///     ctx.stopped().await;
    ///     Ok::<(), String>(())
    /// });
    /// # drop(p);
    /// ```
    pub async fn stopped(&mut self) {
        // An error means the sender is gone, which also means stop.
        let _ = self.stop.wait_for(|stop| *stop).await;
    }
}

/// The producer table's map of instances. Hashed normally; ordered under loom, which needs
/// every execution of a model to walk it (`stop_all`) in the same order.
#[cfg(not(ssehub_loom))]
type Map<K, V> = std::collections::HashMap<K, V>;
/// See the other [`Map`].
#[cfg(ssehub_loom)]
type Map<K, V> = std::collections::BTreeMap<K, V>;

/// What the runtime keeps for one instance: how to tell it to stop, and what a successor waits
/// on until its future is gone. Tokio's watch channels in the hub ([`Signals`]); a loom model
/// brings its own, so the instance bookkeeping ([`Lifecycle`]) runs under loom unchanged.
pub(crate) trait InstanceHandle {
    /// Resolves (in the runtime's way) once the instance's future has been dropped.
    type Gone;
    /// Tells the instance to stop.
    fn stop(&self);
    /// What a successor waits on before it starts.
    fn gone(&self) -> Self::Gone;
}

/// A topic's membership as a report reads it, under the lifecycle's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Membership {
    /// The topic's current subscriber count.
    pub(crate) count: usize,
    /// Whether the hub has shut down (no new instance then).
    pub(crate) closed: bool,
}

/// How a topic's producer is configured, as far as its lifecycle cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Linger {
    /// The instance stops as soon as the topic is idle.
    None,
    /// The instance stops when a linger timer runs out with the topic still idle.
    Timer,
}

/// One instance: running, lingering, stopping, or ended by itself.
#[derive(Debug)]
struct Running<H> {
    /// Distinguishes this instance from earlier ones on the same topic.
    generation: u64,
    /// The runtime's handle on it.
    handle: H,
    /// Set when it ended by itself: not restarted until the topic goes idle first.
    finished: bool,
    /// Set once it was told to stop; a new subscriber then starts a new instance, which waits
    /// for this one to be gone.
    stopping: bool,
    /// The linger timer running for it, if any (its number, so a stale timer does nothing).
    linger: Option<u64>,
}

/// The instances of every topic and the rules that start and stop them, free of any runtime:
/// the hub drives it from Tokio tasks, the loom models from loom threads
/// (`src/tests/loom_producer.rs`).
///
/// Membership changes are reported after the registry's lock is released, so two reports can
/// arrive out of order. Each report therefore reads the topic's membership *under this lock*
/// (the `membership` closure) and reconciles to it: the last report to take the lock reads the
/// count after every change, so a producer never runs twice for one topic and never stays
/// stopped (unless it stopped itself) while the topic has subscribers. A count read before the
/// lock could be older than one a later-locking report already acted on.
#[derive(Debug)]
pub(crate) struct Lifecycle<H> {
    /// The instances and the generation counter, under one lock: reports are rare and short.
    inner: Mutex<Instances<H>, rank::Producers>,
}

/// What [`Lifecycle`] guards.
#[derive(Debug)]
struct Instances<H> {
    /// Instances by topic.
    running: Map<SharedStr, Running<H>>,
    /// The next instance generation (and linger timer number).
    next: u64,
}

impl<H> Default for Lifecycle<H> {
    fn default() -> Self {
        Lifecycle { inner: Mutex::new(Instances { running: Map::new(), next: 0 }) }
    }
}

impl<H: InstanceHandle> Lifecycle<H> {
    /// Brings `topic`'s instance in line with its membership, read by `membership` under the
    /// lock. `start` is called (under the lock) with a new instance's generation and what it
    /// must wait for (its stopping predecessor), and returns the handle on it. Returns the
    /// number of a linger timer the caller must start, if any.
    pub(crate) fn reconcile(
        &self,
        topic: &SharedStr,
        linger: Linger,
        membership: impl FnOnce() -> Membership,
        start: impl FnOnce(u64, Option<H::Gone>) -> H,
    ) -> Option<u64> {
        let mut guard = lock(&self.inner);
        let Membership { count, closed } = membership();
        let table = &mut *guard;
        let entry = table.running.get_mut(topic);
        if count > 0 {
            if let Some(running) = entry {
                if !running.stopping {
                    // Running, lingering (a subscriber came back in time) or ended by itself.
                    running.linger = None;
                    return None;
                }
            }
            if closed {
                return None;
            }
            let previous = table.running.get(topic).map(|r| r.handle.gone());
            table.next += 1;
            let generation = table.next;
            let handle = start(generation, previous);
            let running =
                Running { generation, handle, finished: false, stopping: false, linger: None };
            table.running.insert(topic.clone(), running);
            return None;
        }
        let running = entry?;
        if running.finished {
            // Ended by itself and now idle: the next subscriber may start it again.
            table.running.remove(topic);
        } else if !running.stopping && running.linger.is_none() {
            match linger {
                Linger::None => {
                    running.stopping = true;
                    running.handle.stop();
                }
                Linger::Timer => {
                    table.next += 1;
                    running.linger = Some(table.next);
                    return running.linger;
                }
            }
        }
        None
    }

    /// Linger timer `timer` ran out: stop the instance if it is still the one lingering and
    /// its topic is still idle.
    pub(crate) fn linger_over(
        &self,
        topic: &SharedStr,
        timer: u64,
        membership: impl FnOnce() -> Membership,
    ) {
        let mut table = lock(&self.inner);
        let count = membership().count;
        if let Some(running) = table.running.get_mut(topic) {
            if running.linger == Some(timer) && count == 0 {
                running.linger = None;
                running.stopping = true;
                running.handle.stop();
            }
        }
    }

    /// Instance `generation` ended for `reason`: forget it, or remember that it ended by itself
    /// while its topic still has subscribers (so it is not restarted for them).
    pub(crate) fn ended(
        &self,
        topic: &SharedStr,
        generation: u64,
        reason: &StopReason,
        membership: impl FnOnce() -> Membership,
    ) {
        let by_itself =
            matches!(reason, StopReason::Finished | StopReason::Failed(_) | StopReason::Panicked);
        let mut guard = lock(&self.inner);
        let count = membership().count;
        let table = &mut *guard;
        if let Some(running) = table.running.get_mut(topic) {
            if running.generation == generation {
                if by_itself && count > 0 && !running.stopping {
                    running.finished = true;
                } else {
                    table.running.remove(topic);
                }
            }
        }
    }

    /// Stops every instance (hub shutdown).
    pub(crate) fn stop_all(&self) {
        for running in lock(&self.inner).running.values_mut() {
            running.stopping = true;
            running.handle.stop();
        }
    }

    /// The topics with an instance that is neither stopping nor ended by itself, and each
    /// one's generation (for the models).
    #[cfg(all(test, ssehub_loom))]
    pub(crate) fn running(&self) -> Vec<(SharedStr, u64)> {
        let table = lock(&self.inner);
        let live = table.running.iter().filter(|(_, r)| !r.stopping && !r.finished);
        live.map(|(topic, r)| (topic.clone(), r.generation)).collect()
    }
}

/// The hub's handle on an instance: its two watch channels.
#[derive(Debug)]
struct Signals {
    /// Tells the instance to stop.
    stop: watch::Sender<bool>,
    /// Becomes `true` once the instance's future has been dropped.
    done: watch::Receiver<bool>,
}

impl InstanceHandle for Signals {
    type Gone = watch::Receiver<bool>;

    fn stop(&self) {
        // No receiver left means the instance is gone already.
        let _ = self.stop.send(true);
    }

    fn gone(&self) -> watch::Receiver<bool> {
        self.done.clone()
    }
}

/// Every producer and every instance.
#[derive(Default)]
pub(crate) struct Producers {
    /// Registered producers; the first whose target matches a topic serves it. Only appended
    /// to, so the spec serving a topic never changes once one matches.
    specs: Mutex<Vec<Spec>, rank::ProducerSpecs>,
    /// The instances.
    lifecycle: Lifecycle<Signals>,
}

impl fmt::Debug for Producers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Producers")
    }
}

/// A registered producer with its compiled target and runtime.
struct Spec {
    /// Which topics it serves.
    target: Pattern,
    /// The producer.
    producer: Producer,
    /// The runtime it was registered from, where its instances run.
    handle: tokio::runtime::Handle,
}

/// `topic`'s membership now.
pub(crate) fn membership(shared: &Shared, topic: &str) -> Membership {
    Membership {
        count: subscriber_count(&shared.engine.registry, topic),
        closed: shared.is_closed(),
    }
}

/// How many subscribers `topic` has now (0 when it does not exist).
pub(crate) fn subscriber_count(registry: &Registry, topic: &str) -> usize {
    registry.topic(topic).map_or(0, |t| t.subscribers.load().len())
}

/// What the hub needs of a producer to run an instance of it.
struct Starter {
    /// The producer function.
    start: PlainArc<StartFn>,
    /// The stop callback.
    on_stop: Option<PlainArc<StopFn>>,
    /// Where it runs.
    handle: tokio::runtime::Handle,
    /// Its linger time.
    linger: Duration,
}

impl Producers {
    /// Whether any producer is registered (a cheap check before reconciling).
    pub(crate) fn any(&self) -> bool {
        !lock(&self.specs).is_empty()
    }

    /// Registers a producer from within a Tokio runtime.
    pub(crate) fn add(&self, producer: Producer, max_len: usize) -> Result<(), ProducerError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| ProducerError::NoRuntime)?;
        let target = Pattern::with_max_len(&producer.target, max_len)?;
        lock(&self.specs).push(Spec { target, producer, handle });
        Ok(())
    }

    /// What runs `topic`'s instances, if a producer serves it.
    fn starter(&self, topic: &str) -> Option<Starter> {
        let specs = lock(&self.specs);
        let spec = specs.iter().find(|s| s.target.matches(topic))?;
        Some(Starter {
            start: spec.producer.start.clone(),
            on_stop: spec.producer.on_stop.clone(),
            handle: spec.handle.clone(),
            linger: spec.producer.linger,
        })
    }

    /// Brings `topic`'s instance in line with its current subscriber count.
    pub(crate) fn reconcile(shared: &Arc<Shared>, topic: &SharedStr) {
        let Some(starter) = shared.producers.starter(topic) else {
            return;
        };
        let linger = if starter.linger.is_zero() { Linger::None } else { Linger::Timer };
        let spawn = |generation, previous| {
            let (stop, stop_rx) = watch::channel(false);
            let (done_tx, done) = watch::channel(false);
            let ctx = ProducerContext {
                topic: topic.clone(),
                shared: shared.clone(),
                stop: stop_rx.clone(),
            };
            let instance = Instance {
                shared: shared.clone(),
                topic: topic.clone(),
                generation,
                start: starter.start.clone(),
                ctx,
                on_stop: starter.on_stop.clone(),
                handle: starter.handle.clone(),
            };
            starter.handle.spawn(instance.supervise(previous, stop_rx, done_tx));
            Signals { stop, done }
        };
        let lifecycle = &shared.producers.lifecycle;
        let timer = lifecycle.reconcile(topic, linger, || membership(shared, topic), spawn);
        if let Some(timer) = timer {
            let (shared, topic) = (shared.clone(), topic.clone());
            starter.handle.spawn(async move {
                tokio::time::sleep(starter.linger).await;
                let lifecycle = &shared.producers.lifecycle;
                lifecycle.linger_over(&topic, timer, || membership(&shared, &topic));
            });
        }
    }

    /// Stops every instance (hub shutdown).
    pub(crate) fn stop_all(&self) {
        self.lifecycle.stop_all();
    }
}

/// Everything one instance's supervisor needs.
struct Instance {
    /// The hub.
    shared: Arc<Shared>,
    /// The topic served.
    topic: SharedStr,
    /// This instance's generation.
    generation: u64,
    /// The producer function.
    start: PlainArc<StartFn>,
    /// The context handed to it.
    ctx: ProducerContext,
    /// The stop callback.
    on_stop: Option<PlainArc<StopFn>>,
    /// Where it runs.
    handle: tokio::runtime::Handle,
}

impl Instance {
    /// Waits for the previous instance on the topic to be gone, runs this one as its own task
    /// until it ends or is told to stop, then reports how it ended.
    async fn supervise(
        self,
        previous: Option<watch::Receiver<bool>>,
        mut stop: watch::Receiver<bool>,
        done: watch::Sender<bool>,
    ) {
        if let Some(mut previous) = previous {
            // Never two instances at once: the old one's future is dropped first.
            let _ = previous.wait_for(|gone| *gone).await;
        }
        let Instance { shared, topic, generation, start, ctx, on_stop, handle } = self;
        // The producer function runs the application's code before any future exists: a panic
        // there must end this instance like a panic in its future, not unwind this supervisor
        // (which would leave the instance marked running, never restarted and never counted).
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| start(ctx)));
        let reason = match started {
            Err(_) => StopReason::Panicked,
            Ok(future) => {
                // The instance runs as its own task, so a panic in it is caught by the runtime
                // and seen here as a `JoinError` instead of unwinding through the hub.
                let mut task = handle.spawn(future);
                tokio::select! {
                    joined = &mut task => match joined {
                        // A producer that returns because its publish failed at shutdown races
                        // the stop signal: the hub's closing is still why it stopped.
                        Ok(Ok(())) if shared.is_closed() => StopReason::Shutdown,
                        Ok(Ok(())) => StopReason::Finished,
                        Ok(Err(error)) => StopReason::Failed(error),
                        Err(error) if error.is_panic() => StopReason::Panicked,
                        Err(_) => StopReason::Idle,
                    },
                    () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                        task.abort();
                        // Wait until the future is dropped before anyone starts a successor.
                        let _ = (&mut task).await;
                        if shared.is_closed() { StopReason::Shutdown } else { StopReason::Idle }
                    }
                }
            }
        };
        let _ = done.send(true);
        match &reason {
            StopReason::Failed(error) => report(&shared, &topic, error),
            StopReason::Panicked => {
                shared.engine.counters.producer_panic();
                report(&shared, &topic, "producer panicked");
            }
            _ => {}
        }
        let lifecycle = &shared.producers.lifecycle;
        lifecycle.ended(&topic, generation, &reason, || membership(&shared, &topic));
        if let Some(on_stop) = on_stop {
            // The callback is the application's code: contain a panic in it like a producer's.
            let call = std::panic::AssertUnwindSafe(|| on_stop(&topic, &reason));
            if std::panic::catch_unwind(call).is_err() {
                shared.engine.counters.producer_panic();
            }
        }
    }
}

/// Publishes a producer's failure to its topic as an `error` event.
fn report(shared: &Arc<Shared>, topic: &str, error: &str) {
    let data = format!("{{\"error\":{}}}", crate::hub::json_string(error));
    // After shutdown there is nobody left to tell.
    let _ = Shared::publish(shared, topic, Event::new(data).with_event("error"));
}
