//! `Shared`: the hub behind every `Hub` handle and `Subscription`: the engine plus the optional
//! services (sessions, producers, presence, heartbeat), called around the engine's operations.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::{Pacing, Subscribe, SubscriptionChange};
use crate::engine::history::ResetReason;
use crate::engine::queue::FrameKeys;
use crate::engine::registry::Slot;
use crate::engine::stats::{FanOut, Stats};
use crate::engine::tier::{checked_pace, Tier};
use crate::engine::{
    Engine, Entry, Number, Published, Replay, ReplaySource, Sequenced, Snapshot, Start, Taken,
};
use crate::error::EndReason;
use crate::error::ProducerError;
use crate::error::{PublishError, SubscribeError, UpdateError};
use crate::frame::Event;
use crate::hub::subscription::{SubscriberId, Subscription};
use crate::services::clients::{self, Clients, ConnectedClient};
use crate::services::expiry::Expiries;
use crate::services::frame_clock::FrameClock;
use crate::services::heartbeat::Heartbeat;
use crate::services::producers::{Producer, Producers};
use crate::services::sessions::{Lookup, Refused, SessionLimits, Sessions};
use crate::services::tier_clock::TierClock;
use crate::sync::{
    rank, Arc, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering, PlainArc, SharedStr,
};
use crate::topic::validate_topic;

/// The services' settings (the engine's are in [`crate::engine::Config`]).
#[derive(Debug, Clone)]
pub(crate) struct Services {
    /// Whether subscriptions start with a `connected` event by default.
    pub(crate) connected_event: bool,
    /// The `retry:` hint each subscription starts with: a base and a random extra up to a
    /// jitter, so reconnecting clients spread out.
    pub(crate) retry: Option<(Duration, Duration)>,
    /// Resumable sessions; `None` for none.
    pub(crate) sessions: Option<SessionLimits>,
    /// Whether subscribing to and leaving a topic publishes `join`/`leave` on `presence:TOPIC`.
    pub(crate) presence: bool,
}

/// The hub behind every `Hub` handle and `Subscription`.
pub(crate) struct Shared {
    /// The fan-out core.
    pub(crate) engine: Engine,
    /// The services' settings.
    services: Services,
    /// Resumable sessions.
    sessions: Sessions,
    /// Subscriptions by client id.
    clients: Clients,
    /// On-demand producers.
    pub(crate) producers: Producers,
    /// Live `Hub` handles; the last one to go shuts the hub down.
    pub(crate) handles: AtomicUsize,
    /// State of the `retry:` jitter generator.
    jitter: AtomicU64,
    /// The heartbeat timer.
    pub(crate) heartbeat: Heartbeat,
    /// The rate tiers' timer.
    pub(crate) tier_clock: TierClock,
    /// The thread that ends quiet stream classes' compression frames.
    pub(crate) frame_clock: FrameClock,
    /// Subscriptions that end at a set time, and the one thread that ends them.
    pub(crate) expiries: Expiries,
    /// Set while something outside (a backplane) holds the engine's external clock.
    pub(super) claimed: AtomicBool,
    /// Where a resume the engine's history cannot serve is fetched from, registered by
    /// whatever holds the external clock.
    pub(super) source: Mutex<Option<PlainArc<dyn ReplaySource>>, rank::ReplaySource>,
}

/// A subscription's session, when sessions are on and one could be opened.
#[derive(Debug)]
struct Session {
    /// Its id.
    id: SharedStr,
    /// Its token (new or presented).
    token: String,
    /// Targeted frames missed while away, handed over first.
    missed: Vec<Bytes>,
}

/// What a subscription asks for once its session (if any) is open: the session's topics and
/// patterns when it resumes one, the request's otherwise.
struct Wanted {
    /// Exact topic names, unchecked.
    topics: Vec<String>,
    /// Patterns, unchecked.
    patterns: Vec<String>,
    /// The interval, unchecked: the session's when a live change set it, the request's
    /// otherwise.
    interval: Duration,
}

impl Shared {
    /// Builds the hub's state (the heartbeat is started by the caller).
    pub(crate) fn new(config: super::Config) -> Shared {
        let (engine, services) = config.split();
        Shared {
            engine: Engine::new(engine),
            services,
            sessions: Sessions::default(),
            clients: Clients::default(),
            producers: Producers::default(),
            handles: AtomicUsize::new(1),
            jitter: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            heartbeat: Heartbeat::default(),
            tier_clock: TierClock::default(),
            frame_clock: FrameClock::default(),
            expiries: Expiries::default(),
            claimed: AtomicBool::new(false),
            source: Mutex::new(None),
        }
    }

    /// The engine's settings.
    pub(crate) fn config(&self) -> &crate::engine::Config {
        &self.engine.config
    }

    /// The last sequence number whose publish is complete.
    pub(crate) fn watermark(&self) -> u64 {
        self.engine.watermark()
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_closed(&self) -> bool {
        self.engine.is_closed()
    }

    /// See [`Hub::subscribe`](super::Hub::subscribe).
    pub(crate) fn subscribe(
        this: &Arc<Self>,
        request: Subscribe,
    ) -> Result<Subscription, SubscribeError> {
        Shared::subscribe_with(this, request, None)
    }

    /// Subscribes; a resume whose first events were fetched from the replay source starts
    /// with `fetched`.
    pub(super) fn subscribe_with(
        this: &Arc<Self>,
        request: Subscribe,
        fetched: Option<Replay>,
    ) -> Result<Subscription, SubscribeError> {
        if this.is_closed() {
            return Err(SubscribeError::Closed);
        }
        // Check the request before touching any session, so a bad request changes nothing.
        this.engine.checked_names(&request.topics, &request.patterns)?;
        checked_pace(request.interval)?;
        clients::check(request.client.as_deref(), &request.metadata)?;
        let slot =
            this.engine.new_slot(request.capacity, request.policy, request.principal.as_deref());
        let (mut session, wanted) = this.open_session(&request, &slot)?;
        let names = this
            .engine
            .checked_names(&wanted.topics, &wanted.patterns)
            .inspect_err(|_| this.leave_session(session.as_ref(), slot.id))?;
        let pace = checked_pace(wanted.interval)
            .map_err(SubscribeError::from)
            .inspect_err(|_| this.leave_session(session.as_ref(), slot.id))?;
        let presence_topics =
            if this.services.presence { names.topics.clone() } else { Vec::new() };
        let start = match (&request.last_event_id, fetched) {
            (None, _) => Start::Live,
            (Some(_), Some(replay)) => Start::Fetched(replay),
            (Some(last), None) => Start::After(last),
        };
        let snapshot = if request.snapshot { Snapshot::Take } else { Snapshot::Skip };
        let joined = this
            .engine
            .join(&slot, names, pace, start, snapshot, request.encoding.codec())
            .inspect_err(|_| this.leave_session(session.as_ref(), slot.id))?;
        if pace.is_some() {
            TierClock::start(this);
        }
        if slot.class.load().is_some() {
            if let Some(framing) = this.engine.config.framing {
                FrameClock::start(this, framing.frame_time / 2);
            }
        }
        let mut pending = this.opening_frames(&request, slot.id, session.as_mut(), joined.replay);
        if let Some(taken) = joined.snapshot {
            snapshot_frames(&mut pending, taken);
        }
        Shared::joined(this, &slot, &joined.topics, &presence_topics);
        if let Some(client) = &request.client {
            this.watch_client(client, &request.metadata, &slot);
        }
        if let Some(at) = request.expiry {
            Shared::watch_expiry(this, &slot, at);
        }
        let session_id = session.map(|session| session.id);
        Ok(Subscription::new(this.clone(), slot, pending, session_id))
    }

    /// Enters a registered subscription in the expiry index, so the hub's expiry thread ends
    /// it at `at` (at once if `at` has passed).
    fn watch_expiry(this: &Arc<Self>, slot: &Arc<Slot>, at: SystemTime) {
        let earliest = this.expiries.insert(slot.id, at);
        // Every way out of the registry closes the queue before leaving the index, so a
        // subscriber that left between its registration and this insert is seen closed here.
        if slot.queue.is_closed() {
            this.expiries.remove(slot.id);
            return;
        }
        if earliest || !this.expiries.running() {
            Expiries::wake(this);
        }
        if !this.expiries.running() {
            // No thread could be started: end it now rather than let it outlive its expiry.
            this.expiries.remove(slot.id);
            Shared::end_finally(this, slot, EndReason::Expired);
        }
    }

    /// Enters a registered subscription in the index of client ids.
    fn watch_client(&self, client: &str, metadata: &BTreeMap<String, String>, slot: &Arc<Slot>) {
        self.clients.insert(client, metadata.clone(), slot);
        // Every way out of the registry closes the queue before leaving the index (see
        // `watch_expiry`), so one that left before this insert is seen closed here.
        if slot.queue.is_closed() {
            self.clients.remove(slot.id);
        }
    }

    /// Ends subscriber `id`'s stream because its expiry came; called by the expiry thread.
    #[cfg_attr(ssehub_loom, allow(dead_code))]
    pub(crate) fn expire(this: &Arc<Self>, id: u64) {
        let slot = this.engine.registry.subscribers().get(id).cloned();
        if let Some(slot) = slot {
            Shared::end_finally(this, &slot, EndReason::Expired);
        }
    }

    /// See [`Hub::revoke`](super::Hub::revoke).
    pub(crate) fn revoke(this: &Arc<Self>, principal: &str) -> usize {
        let mut slots = Vec::new();
        this.engine.registry.subscribers().for_each(|slot| {
            if slot.principal.as_deref() == Some(principal) {
                slots.push(slot.clone());
            }
        });
        slots.iter().filter(|slot| Shared::end_finally(this, slot, EndReason::Revoked)).count()
    }

    /// Ends a stream with a final frame naming `reason` (`event: expired` or `event: revoked`,
    /// data `{"reason":"..."}`, no `id:` line, so it never moves a resume point) and a jittered
    /// `retry:` from the hub's retry settings (1 s plus up to 5 s without them), so its client
    /// comes back with a fresh credential at its own time. Returns whether it was live.
    fn end_finally(this: &Arc<Self>, slot: &Arc<Slot>, reason: EndReason) -> bool {
        let name = match reason {
            EndReason::Revoked => "revoked",
            _ => "expired",
        };
        let pacing = Pacing::default();
        let (base, jitter) = this.services.retry.unwrap_or((pacing.retry, pacing.jitter));
        let frame = Event::new(format!("{{\"reason\":\"{name}\"}}"))
            .with_event(name)
            .with_retry(base + this.jitter(jitter))
            .encode()
            .ok();
        let closed = this.engine.end(slot, reason, frame.as_ref());
        Shared::remove(this, slot.id);
        closed
    }

    /// Opens (or resumes) the subscription's session when sessions are on; returns it and what
    /// the subscription then asks for.
    fn open_session(
        &self,
        request: &Subscribe,
        slot: &Arc<Slot>,
    ) -> Result<(Option<Session>, Wanted), SubscribeError> {
        let asked = || Wanted {
            topics: request.topics.clone(),
            patterns: request.patterns.clone(),
            interval: request.interval,
        };
        let Some(limits) = &self.services.sessions else {
            return Ok((None, asked()));
        };
        match self.sessions.open(limits, request, slot, Instant::now()) {
            Ok(Some(opened)) => {
                let wanted = Wanted {
                    topics: opened.topics,
                    patterns: opened.patterns,
                    interval: opened.interval.unwrap_or(request.interval),
                };
                let session = Session { id: opened.id, token: opened.token, missed: opened.missed };
                Ok((Some(session), wanted))
            }
            Ok(None) => Ok((None, asked())),
            Err(Refused::Hijack) => {
                self.engine.counters.hijack();
                Err(SubscribeError::SessionRefused)
            }
            Err(Refused::Full) => Err(SubscribeError::SessionsFull { max: limits.max_sessions() }),
        }
    }

    /// A subscription that was refused leaves the session it opened.
    fn leave_session(&self, session: Option<&Session>, slot_id: u64) {
        if let Some(session) = session {
            self.sessions.detach(&session.id, slot_id, Instant::now());
        }
    }

    /// The frames a subscription starts with: the `connected` event and/or `retry:` hint, the
    /// session's missed targeted sends, then the replay (or the `reset` frame).
    fn opening_frames(
        &self,
        request: &Subscribe,
        id: u64,
        session: Option<&mut Session>,
        replay: Option<Result<Vec<Bytes>, ResetReason>>,
    ) -> VecDeque<Bytes> {
        let mut pending = VecDeque::new();
        let connected = request.connected_event.unwrap_or(self.services.connected_event);
        if connected || self.services.retry.is_some() || session.is_some() {
            let ids = session.as_ref().map(|s| (&*s.id, s.token.as_str()));
            pending.push_back(self.first_frame(id, connected || session.is_some(), ids, request));
        }
        if let Some(session) = session {
            pending.extend(std::mem::take(&mut session.missed));
        }
        match replay {
            Some(Ok(replay)) => pending.extend(replay),
            Some(Err(reason)) => pending.push_back(reset_frame(reason)),
            None => {}
        }
        pending
    }

    /// Tells the services about a subscriber that joined `topics`: sizes, producers, presence.
    fn joined(
        this: &Arc<Self>,
        slot: &Slot,
        topics: &[Arc<crate::engine::registry::TopicState>],
        named: &[SharedStr],
    ) {
        if this.producers.any() {
            for topic in topics {
                Producers::reconcile(this, &topic.name);
            }
        }
        this.engine.report_sizes();
        if this.services.presence {
            Shared::presence(this, slot, named, "join");
        }
    }

    /// See [`Hub::add_producer`](super::Hub::add_producer).
    pub(crate) fn add_producer(this: &Arc<Self>, producer: Producer) -> Result<(), ProducerError> {
        if this.is_closed() {
            return Err(ProducerError::Closed);
        }
        this.producers.add(producer, this.engine.config.max_topic_len)?;
        // Topics that already have subscribers get their instance now.
        for (topic, _) in this.engine.registry.topic_counts() {
            Producers::reconcile(this, &SharedStr::from(topic));
        }
        Ok(())
    }

    /// See [`Hub::publish`](super::Hub::publish).
    pub(crate) fn publish(
        this: &Arc<Self>,
        topic: &str,
        event: Event,
    ) -> Result<Published, PublishError> {
        if this.is_closed() {
            return Err(PublishError::Closed(Box::new(event)));
        }
        validate_topic(topic, this.engine.config.max_topic_len)?;
        Shared::sequenced(this, Number::Next, Some(event), |entry| {
            this.engine.deliver_to_named(topic, entry)
        })
        .map(|sequenced| sequenced.published)
    }

    /// See [`Hub::broadcast`](super::Hub::broadcast).
    pub(crate) fn broadcast(this: &Arc<Self>, event: Event) -> Result<Published, PublishError> {
        if this.is_closed() {
            return Err(PublishError::Closed(Box::new(event)));
        }
        Shared::sequenced(this, Number::Next, Some(event), |entry| {
            let subscribers = this.engine.registry.subscribers();
            let keys = FrameKeys::new(None, entry.event.event(), entry.event.key());
            let mut fan = FanOut::default();
            crate::engine::fan_out(&mut fan, &subscribers, entry.seq, entry.frame, &keys);
            fan
        })
        .map(|sequenced| sequenced.published)
    }

    /// See [`Hub::send_to_many`](super::Hub::send_to_many).
    pub(crate) fn send_to_many(
        this: &Arc<Self>,
        ids: &[SubscriberId],
        event: Event,
    ) -> Result<Published, PublishError> {
        if this.is_closed() {
            return Err(PublishError::Closed(Box::new(event)));
        }
        Shared::sequenced(this, Number::Next, Some(event), |entry| {
            let subscribers = this.engine.registry.subscribers();
            let keys = FrameKeys::new(None, entry.event.event(), entry.event.key());
            let mut fan = FanOut::default();
            let mut done = HashSet::with_capacity(ids.len());
            for id in ids {
                if !done.insert(*id) {
                    continue;
                }
                if let Some(slot) = subscribers.get(id.as_u64()) {
                    let pushed = slot.queue.push_targeted(entry.seq, entry.frame, &keys);
                    crate::engine::count(&mut fan, pushed, Some(slot.id));
                }
            }
            fan
        })
        .map(|sequenced| sequenced.published)
    }

    /// See [`Hub::send_to_session`](super::Hub::send_to_session).
    pub(crate) fn send_to_session(
        this: &Arc<Self>,
        session: &str,
        event: Event,
    ) -> Result<Published, PublishError> {
        if this.is_closed() {
            return Err(PublishError::Closed(Box::new(event)));
        }
        let limits = this.services.sessions;
        Shared::sequenced(this, Number::Next, Some(event), |entry| {
            let mut fan = FanOut::default();
            let Some(limits) = &limits else { return fan };
            let keys = FrameKeys::new(None, entry.event.event(), entry.event.key());
            let sent = this.sessions.send(limits, session, entry.seq, entry.frame, &keys);
            if let Some((pushed, slot)) = sent {
                crate::engine::count(&mut fan, pushed, slot);
            }
            fan
        })
        .map(|sequenced| sequenced.published)
    }

    /// See [`Hub::send_to_matching`](super::Hub::send_to_matching).
    pub(crate) fn send_to_matching(
        this: &Arc<Self>,
        glob: &str,
        event: Event,
    ) -> Result<Published, PublishError> {
        if this.is_closed() {
            return Err(PublishError::Closed(Box::new(event)));
        }
        let glob = clients::pattern(glob).map_err(PublishError::ClientPattern)?;
        Shared::sequenced(this, Number::Next, Some(event), |entry| {
            let keys = FrameKeys::new(None, entry.event.event(), entry.event.key());
            let mut fan = FanOut::default();
            // The frame was encoded once by the pipeline; each match gets a reference to it.
            this.clients.for_matching(&glob, |slot| {
                let pushed = slot.queue.push_targeted(entry.seq, entry.frame, &keys);
                crate::engine::count(&mut fan, pushed, Some(slot.id));
            });
            fan
        })
        .map(|sequenced| sequenced.published)
    }

    /// See [`Hub::update_subscription`](super::Hub::update_subscription).
    pub(crate) fn update_subscription(
        this: &Arc<Self>,
        id: SubscriberId,
        change: &SubscriptionChange,
    ) -> Result<(), UpdateError> {
        if this.is_closed() {
            return Err(UpdateError::Closed);
        }
        let slot = this.engine.registry.subscribers().get(id.as_u64()).cloned();
        let slot = slot.ok_or(UpdateError::Ended)?;
        Shared::update_slot(this, &slot, change)
    }

    /// See [`Hub::update_session`](super::Hub::update_session).
    pub(crate) fn update_session(
        this: &Arc<Self>,
        token: &str,
        principal: Option<&str>,
        change: &SubscriptionChange,
    ) -> Result<SubscriberId, UpdateError> {
        if this.is_closed() {
            return Err(UpdateError::Closed);
        }
        let limits = this.services.sessions.as_ref().ok_or(UpdateError::UnknownSession)?;
        let (_, slot) = match this.sessions.live(limits, token, principal, Instant::now()) {
            Ok(live) => live,
            Err(Lookup::Unknown) => return Err(UpdateError::UnknownSession),
            Err(Lookup::Away) => return Err(UpdateError::Ended),
            Err(Lookup::Hijack) => {
                this.engine.counters.hijack();
                return Err(UpdateError::SessionRefused);
            }
        };
        Shared::update_slot(this, &slot, change)?;
        Ok(SubscriberId(slot.id))
    }

    /// Changes what `slot` receives, then tells the services: producers, presence, sizes.
    fn update_slot(
        this: &Arc<Self>,
        slot: &Arc<Slot>,
        change: &SubscriptionChange,
    ) -> Result<(), UpdateError> {
        if slot.queue.is_closed() {
            return Err(UpdateError::Ended);
        }
        if slot.class.load().is_some() {
            return Err(UpdateError::Compressed);
        }
        let add = this.engine.checked_names(&change.add_topics, &change.add_patterns)?;
        let remove = this.engine.checked_names(&change.remove_topics, &change.remove_patterns)?;
        let pace = change.interval.map(checked_pace).transpose().map_err(UpdateError::Interval)?;
        let changed = this
            .engine
            .update(slot, add, remove, pace, || this.sessions.record_change(slot.id, change))?
            .ok_or(UpdateError::Ended)?;
        if pace.flatten().is_some() {
            TierClock::start(this);
        }
        if this.producers.any() {
            for topic in changed.joined.iter().map(|t| &t.name).chain(&changed.left) {
                Producers::reconcile(this, topic);
            }
        }
        if this.services.presence {
            let gone: Vec<SharedStr> = changed
                .named_before
                .iter()
                .filter(|t| !changed.named_after.contains(t))
                .cloned()
                .collect();
            let new: Vec<SharedStr> = changed
                .named_after
                .iter()
                .filter(|t| !changed.named_before.contains(t))
                .cloned()
                .collect();
            Shared::presence(this, slot, &gone, "leave");
            Shared::presence(this, slot, &new, "join");
        }
        Ok(())
    }

    /// See [`Hub::clients`](super::Hub::clients).
    pub(crate) fn clients(&self) -> Vec<ConnectedClient> {
        self.clients.list()
    }

    /// Runs one event through the engine's pipeline, then takes the subscribers it dropped as
    /// slow out of the registry, telling the services.
    pub(super) fn sequenced(
        this: &Arc<Self>,
        number: Number,
        event: Option<Event>,
        deliver: impl FnOnce(&Entry<'_>) -> FanOut,
    ) -> Result<Sequenced, PublishError> {
        let sequenced = this.engine.sequenced(number, event, deliver)?;
        // A subscriber dropped as slow leaves the registry now, not when its connection gets
        // around to dropping the subscription: a writer blocked on a full socket may not poll
        // its stream for a long time. Only on this rare path does a publish take the registry's
        // writer lock, and only after the sequencer is released.
        for id in &sequenced.slow {
            #[cfg(feature = "tracing")]
            tracing::info!(target: "ssehub", subscriber = id, reason = "slow", "subscriber dropped");
            Shared::remove(this, *id);
        }
        Ok(sequenced)
    }

    /// One tick of a rate tier (see `Engine::tick`), then the subscribers it dropped as slow
    /// leave the registry, as after a publish.
    #[cfg_attr(ssehub_loom, allow(dead_code))]
    pub(crate) fn tick(this: &Arc<Self>, tier: &Tier) {
        for id in this.engine.tick(tier) {
            Shared::remove(this, id);
        }
    }

    /// Publishes a presence event (`join` or `leave`) for each of `topics` to its
    /// `presence:TOPIC` channel. Presence channels have no presence of their own.
    pub(crate) fn presence(this: &Arc<Self>, slot: &Slot, topics: &[SharedStr], kind: &str) {
        for topic in topics.iter().filter(|t| !t.starts_with("presence:")) {
            let principal =
                slot.principal.as_deref().map_or_else(|| "null".to_string(), json_string);
            let data = format!(
                "{{\"subscriber\":{},\"principal\":{principal},\"subscribers\":{}}}",
                slot.id,
                this.engine.registry.topic(topic).map_or(0, |t| t.subscribers.load().len())
            );
            // Only fails after shutdown or for a name too long with the prefix: no one to tell.
            let event = Event::new(data).with_event(kind);
            let _ = Shared::publish(this, &format!("presence:{topic}"), event);
        }
    }

    /// The first frame of a subscription: the `connected` event and/or the `retry:` hint. No
    /// `id:` line, so it never moves a client's resume point. The event's data: the
    /// subscriber's `id`; with a session, its token as `session` (what `POST /subscription`
    /// and a resume present; also as `token`, its earlier name) and its id as `session_id`
    /// (what [`Hub::send_to_session`](super::Hub::send_to_session) takes); the request's
    /// `client` id and `metadata`, when it has them.
    fn first_frame(
        &self,
        id: u64,
        connected: bool,
        session: Option<(&str, &str)>,
        request: &Subscribe,
    ) -> Bytes {
        let mut event = if connected {
            Event::new(connected_data(id, session, request)).with_event("connected")
        } else {
            Event::default()
        };
        if let Some((base, jitter)) = self.services.retry {
            event = event.with_retry(base + self.jitter(jitter));
        }
        event.encode().unwrap_or_default()
    }

    /// A random duration up to `max` (xorshift: spreading clients out needs no cryptography).
    pub(crate) fn jitter(&self, max: Duration) -> Duration {
        let mut x = self.jitter.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Relaxed: a lost update only repeats a random number.
        self.jitter.store(x, Ordering::Relaxed);
        let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(if ms == 0 { 0 } else { x % (ms + 1) })
    }

    /// A snapshot of the statistics.
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.engine.stats();
        stats.sessions = self.sessions.len();
        stats
    }

    /// Unregisters a subscription being dropped.
    pub(crate) fn unsubscribe(this: &Arc<Self>, slot: &Slot, session: Option<&SharedStr>) {
        slot.queue.close_discarding(EndReason::Dropped);
        if let Some(session) = session {
            this.sessions.detach(session, slot.id, Instant::now());
        }
        Shared::remove(this, slot.id);
    }

    /// Takes subscriber `id` out of the registry (once: later calls do nothing), then reports
    /// what that changed: sizes, presence, producers.
    pub(crate) fn remove(this: &Arc<Self>, id: u64) {
        this.expiries.remove(id);
        this.clients.remove(id);
        let Some(removed) = this.engine.remove(id) else {
            return;
        };
        if this.producers.any() {
            for topic in &removed.left {
                Producers::reconcile(this, topic);
            }
        }
        if this.services.presence {
            Shared::presence(this, &removed.slot, &removed.named, "leave");
        }
    }

    /// Ages out sessions and history; called by the heartbeat thread.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        if let Some(limits) = &self.services.sessions {
            self.sessions.sweep(limits, now);
        }
        self.engine.sweep(now);
    }

    /// Ends one subscriber's stream with `reason` after the frames published before this call
    /// (taken out of its rings into its queue) and takes it out of the registry at once;
    /// returns whether it was live.
    pub(crate) fn end(this: &Arc<Self>, slot: &Arc<Slot>, reason: EndReason) -> bool {
        let closed = this.engine.end(slot, reason, None);
        Shared::remove(this, slot.id);
        closed
    }

    /// Shuts down; returns whether this call started the shutdown. Streams still open (a paced
    /// shutdown that was cancelled) are ended by every call.
    pub(crate) fn shutdown(&self, last: Option<&Bytes>) -> bool {
        let first = self.engine.shutdown(last);
        self.producers.stop_all();
        self.heartbeat.stop();
        self.tier_clock.stop();
        self.frame_clock.stop();
        self.expiries.stop();
        first
    }

    /// Shuts down in paced batches; returns whether this call did it.
    pub(crate) async fn shutdown_paced(&self, pacing: &Pacing) -> bool {
        let Some(closing) = self.engine.start_closing() else {
            return false;
        };
        // Closed to new subscribers and publishes at once; streams end batch by batch.
        self.producers.stop_all();
        self.heartbeat.stop();
        self.tier_clock.stop();
        self.frame_clock.stop();
        self.expiries.stop();
        let mut batches = closing.slots.chunks(pacing.batch.max(1)).peekable();
        while let Some(batch) = batches.next() {
            for slot in batch {
                // Each stream its own jittered `retry:`, so its client comes back at its own time.
                let retry = pacing.retry + self.jitter(pacing.jitter);
                let frame = Event::default().with_retry(retry).encode().ok();
                closing.end(slot, frame.as_ref());
            }
            if batches.peek().is_some() {
                tokio::time::sleep(pacing.interval).await;
            }
        }
        true
    }
}

/// Adds a snapshot to a subscription's opening frames: the begin frame (with the reason it
/// replaces a resume, if it does), the latest event of every key, the end frame. The two
/// `snapshot` frames have no `id:` line, so they never move a client's resume point.
fn snapshot_frames(pending: &mut VecDeque<Bytes>, taken: Taken) {
    let reason = match taken.reason {
        Some(reason) => format!(",\"reason\":\"{reason}\""),
        None => String::new(),
    };
    let events = taken.frames.len();
    pending.push_back(Bytes::from(format!(
        "event: snapshot\ndata: {{\"state\":\"begin\",\"events\":{events}{reason}}}\n\n"
    )));
    pending.extend(taken.frames);
    pending.push_back(Bytes::from_static(b"event: snapshot\ndata: {\"state\":\"end\"}\n\n"));
}

/// The `reset` frame: the client must resync; no `id:` line.
fn reset_frame(reason: ResetReason) -> Bytes {
    Bytes::from(format!("event: reset\ndata: {{\"reason\":\"{reason}\"}}\n\n"))
}

/// The `connected` event's data (see `Shared::first_frame`).
fn connected_data(id: u64, session: Option<(&str, &str)>, request: &Subscribe) -> String {
    let mut data = format!("{{\"id\":{id}");
    if let Some((sid, token)) = session {
        let token = json_string(token);
        data.push_str(&format!(
            ",\"session\":{token},\"session_id\":{},\"token\":{token}",
            json_string(sid)
        ));
    }
    if let Some(client) = &request.client {
        data.push_str(&format!(",\"client\":{}", json_string(client)));
    }
    if !request.metadata.is_empty() {
        let entries: Vec<String> = request
            .metadata
            .iter()
            .map(|(key, value)| format!("{}:{}", json_string(key), json_string(value)))
            .collect();
        data.push_str(&format!(",\"metadata\":{{{}}}", entries.join(",")));
    }
    data.push('}');
    data
}

/// `s` as a JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The in-band lag signal: how many frames were lost, no `id:` line.
pub(crate) fn lag_frame(lost: u64) -> Bytes {
    Bytes::from(format!("event: lagged\ndata: {lost}\n\n"))
}
