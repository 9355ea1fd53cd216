//! `Shared`: the state behind every `Hub` handle and `Subscription`, and the operations on it.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use super::{Config, Pacing, Published, Subscribe};
use crate::error::{PublishError, SubscribeError, TopicError};
use crate::frame::{Event, Frame};
use crate::heartbeat::Heartbeat;
use crate::history::{format_id, parse_id, Parsed, ResetReason, MAX_LAST_EVENT_ID};
use crate::idmap::IdMap;
use crate::producer::{Producer, ProducerError, Producers};
use crate::queue::{EndReason, FrameKeys, Pushed, Queue};
use crate::registry::{Refused, Registry, Slot, TopicState};
use crate::session::{Hijack, Sessions};
use crate::stats::{Counters, FanOut, Stats};
use crate::subscription::{SubscriberId, Subscription};
use crate::sync::{lock, Arc, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering, SharedStr};
use crate::topic::{validate_topic, Pattern};

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
    /// Resumable sessions.
    sessions: Sessions,
    /// On-demand producers.
    pub(crate) producers: Producers,
    /// Live `Hub` handles; the last one to go shuts the hub down.
    pub(crate) handles: AtomicUsize,
    /// The next subscriber id.
    next_id: AtomicU64,
    /// The last sequence number issued. Every publish, broadcast and targeted send holds it
    /// while it assigns a number, appends to history and queues the frame, so sequence order is
    /// delivery order for every subscriber; a subscription that resumes holds it while it
    /// registers and reads history, so nothing falls between replay and live events.
    pub(crate) sequencer: Mutex<u64>,
    /// The last sequence number whose publish is complete (every entry written), stored under
    /// the sequencer. A subscriber merging several sources (rings, its queue) takes nothing
    /// past it, or an entry still on its way to one source could be overtaken by a later one
    /// already in another.
    watermark: AtomicU64,
    /// State of the `retry:` jitter generator.
    jitter: AtomicU64,
    /// The heartbeat timer.
    pub(crate) heartbeat: Heartbeat,
    // --- backplane hook (see src/backplane/hook.rs) ---
    /// Set while a backplane feeds this hub: sequence numbers, ids and the epoch then come from
    /// the broker.
    #[cfg(any(feature = "redis", feature = "nats"))]
    pub(crate) remote: crate::backplane::Remote,
}

impl Shared {
    /// The last sequence number whose publish is complete.
    pub(crate) fn watermark(&self) -> u64 {
        // Acquire pairs with the Release in `sequenced`.
        self.watermark.load(Ordering::Acquire)
    }

    /// Whether shutdown has begun. Acquire pairs with the Release in `shutdown`.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Builds the shared state (the heartbeat is started by the caller).
    pub(crate) fn new(config: Config) -> Shared {
        Shared {
            config,
            registry: Registry::new(),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            sessions: Sessions::default(),
            producers: Producers::default(),
            handles: AtomicUsize::new(1),
            next_id: AtomicU64::new(1),
            sequencer: Mutex::new(0),
            watermark: AtomicU64::new(0),
            jitter: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            heartbeat: Heartbeat::default(),
            #[cfg(any(feature = "redis", feature = "nats"))]
            remote: crate::backplane::Remote::default(),
        }
    }

    /// See [`Hub::subscribe`](super::Hub::subscribe).
    pub(crate) fn subscribe(
        this: &Arc<Self>,
        request: Subscribe,
    ) -> Result<Subscription, SubscribeError> {
        let config = &this.config;
        if this.is_closed() {
            return Err(SubscribeError::Closed);
        }
        // Check the request before touching any session, so a bad request changes nothing.
        this.checked_names(&request.topics, &request.patterns)?;
        // Relaxed: ids only need to be unique.
        let id = this.next_id.fetch_add(1, Ordering::Relaxed);
        let capacity = request.capacity.unwrap_or(config.capacity);
        let policy = request.policy.unwrap_or(config.policy);
        let principal: Option<SharedStr> = request.principal.as_deref().map(SharedStr::from);
        let slot = Arc::new(Slot::new(id, Queue::new(capacity, policy), principal));
        let mut pending = Vec::new();
        let (mut topic_names, mut pattern_names) = (request.topics, request.patterns);
        let mut session = None;
        if let Some(limits) = &config.sessions {
            let opened = this.sessions.open(
                limits,
                request.session_token.as_deref(),
                request.principal.as_deref(),
                &topic_names,
                &pattern_names,
                &slot,
                Instant::now(),
            );
            match opened {
                Ok(opened) if !opened.id.is_empty() => {
                    topic_names = opened.topics;
                    pattern_names = opened.patterns;
                    session = Some((opened.id, opened.token, opened.missed));
                }
                Ok(_) => {}
                Err(Hijack) => {
                    this.counters.hijack();
                    return Err(SubscribeError::SessionRefused);
                }
            }
        }
        let detach = |session: &Option<(SharedStr, String, Vec<Bytes>)>| {
            if let Some((sid, _, _)) = session {
                this.sessions.detach(sid, id, Instant::now());
            }
        };
        let (topics, patterns) = match this.checked_names(&topic_names, &pattern_names) {
            Ok(names) => names,
            Err(error) => {
                detach(&session);
                return Err(error);
            }
        };
        let connected = request.connected_event.unwrap_or(config.connected_event);
        if connected || config.retry.is_some() || session.is_some() {
            let ids = session.as_ref().map(|(sid, token, _)| (&**sid, token.as_str()));
            pending.push(this.first_frame(id, connected || session.is_some(), ids));
        }
        if let Some((_, _, missed)) = &mut session {
            pending.append(missed);
        }
        let refused = |refused| match refused {
            Refused::Closed => SubscribeError::Closed,
            Refused::Full => SubscribeError::Full { max: config.max_subscribers },
        };
        let named: Vec<SharedStr> = if config.presence { topics.clone() } else { Vec::new() };
        // A subscription to several topics (or a pattern, which may match several) must start
        // on all of them at one point in the sequence, or an event on one topic could slip by
        // while a later one on another arrives: registering under the sequencer makes the
        // start atomic. One exact topic is a single snapshot swap, atomic by itself.
        let atomic_start = topics.len() + patterns.len() > 1 || !patterns.is_empty();
        let registered = match &request.last_event_id {
            None if !atomic_start => {
                this.registry.subscribe(&slot, topics, patterns, config.max_subscribers)
            }
            None => {
                let _sequencer = lock(&this.sequencer);
                this.registry.subscribe(&slot, topics, patterns, config.max_subscribers)
            }
            Some(last) => {
                // Registering and reading history under the sequencer: every event is either
                // in the history read here (published before) or queued live (after), never
                // both, never neither.
                let sequencer = lock(&this.sequencer);
                let registered =
                    this.registry.subscribe(&slot, topics, patterns, config.max_subscribers);
                if let Ok(received) = &registered {
                    // --- backplane hook: events fetched from the broker come first ---
                    #[cfg(any(feature = "redis", feature = "nats"))]
                    let resolved = match &request.prefix {
                        Some(prefix) => this.resolve_prefix(prefix, *sequencer, received),
                        None => this.resolve(last, *sequencer, received),
                    };
                    #[cfg(not(any(feature = "redis", feature = "nats")))]
                    let resolved = this.resolve(last, *sequencer, received);
                    match resolved {
                        Ok(replay) => pending.extend(replay),
                        Err(reason) => pending.push(reset_frame(reason)),
                    }
                }
                registered
            }
        };
        let received = match registered {
            Ok(received) => received,
            Err(refusal) => {
                detach(&session);
                return Err(refused(refusal));
            }
        };
        if this.producers.any() {
            for topic in &received {
                Producers::reconcile(this, &topic.name);
            }
        }
        this.report_sizes();
        if config.presence {
            Shared::presence(this, &slot, &named, "join");
        }
        let session_id = session.map(|(sid, _, _)| sid);
        Ok(Subscription::new(this.clone(), slot, VecDeque::from(pending), session_id))
    }

    /// Validates and de-duplicates topic names and patterns, within the per-subscription limit.
    fn checked_names(
        &self,
        topics: &[String],
        patterns: &[String],
    ) -> Result<(Vec<SharedStr>, Vec<Pattern>), SubscribeError> {
        let config = &self.config;
        let count = topics.len() + patterns.len();
        if count > config.max_topics_per_subscription {
            return Err(SubscribeError::TooManyTopics {
                count,
                max: config.max_topics_per_subscription,
            });
        }
        let mut seen = HashSet::new();
        let mut checked_topics: Vec<SharedStr> = Vec::with_capacity(topics.len());
        for name in topics {
            validate_topic(name, config.max_topic_len).map_err(|error| topic_error(name, error))?;
            if seen.insert(name.as_str()) {
                checked_topics.push(name.as_str().into());
            }
        }
        let mut seen = HashSet::new();
        let mut checked_patterns = Vec::with_capacity(patterns.len());
        for source in patterns {
            let pattern = Pattern::with_max_len(source, config.max_topic_len)
                .map_err(|error| topic_error(source, error))?;
            if seen.insert(source.as_str()) {
                checked_patterns.push(pattern);
            }
        }
        Ok((checked_topics, checked_patterns))
    }

    /// See [`Hub::add_producer`](super::Hub::add_producer).
    pub(crate) fn add_producer(this: &Arc<Self>, producer: Producer) -> Result<(), ProducerError> {
        if this.is_closed() {
            return Err(ProducerError::Closed);
        }
        this.producers.add(producer, this.config.max_topic_len)?;
        // Topics that already have subscribers get their instance now.
        for (topic, _) in this.registry.topic_counts() {
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
        validate_topic(topic, this.config.max_topic_len)?;
        // With a backplane, history holds only the broker's events (see `external_ids`).
        let history = this.config.history.filter(|_| !this.external_ids());
        Shared::sequenced(this, event, |seq, event, frame| {
            let Some(state) = this.registry.topic_for_publish(topic, history.is_some()) else {
                return FanOut::default();
            };
            if let Some(limits) = &history {
                let given = event.id().filter(|_| !this.assigns_ids_to(event));
                lock(&state.history).append(seq, given, frame, Instant::now(), limits);
            }
            deliver_to_topic(&state, seq, event, frame)
        })
    }

    /// See [`Hub::broadcast`](super::Hub::broadcast).
    pub(crate) fn broadcast(this: &Arc<Self>, event: Event) -> Result<Published, PublishError> {
        if this.is_closed() {
            return Err(PublishError::Closed(Box::new(event)));
        }
        Shared::sequenced(this, event, |seq, event, frame| {
            let subscribers = this.registry.subscribers();
            let keys = FrameKeys::new(None, event.event(), event.key());
            let mut fan = FanOut::default();
            fan_out(&mut fan, &subscribers, seq, frame, &keys);
            fan
        })
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
        Shared::sequenced(this, event, |seq, event, frame| {
            let subscribers = this.registry.subscribers();
            let keys = FrameKeys::new(None, event.event(), event.key());
            let mut fan = FanOut::default();
            let mut done = HashSet::with_capacity(ids.len());
            for id in ids {
                if !done.insert(*id) {
                    continue;
                }
                if let Some(slot) = subscribers.get(id.as_u64()) {
                    count(&mut fan, slot.queue.push_targeted(seq, frame, &keys), Some(slot.id));
                }
            }
            fan
        })
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
        let Some(limits) = this.config.sessions else {
            return Shared::sequenced(this, event, |_, _, _| FanOut::default());
        };
        Shared::sequenced(this, event, |seq, event, frame| {
            let keys = FrameKeys::new(None, event.event(), event.key());
            let mut fan = FanOut::default();
            if let Some((pushed, slot)) = this.sessions.send(&limits, session, seq, frame, &keys) {
                count(&mut fan, pushed, slot);
            }
            fan
        })
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
                this.registry.topic(topic).map_or(0, |t| t.subscribers.load().len())
            );
            // Only fails after shutdown or for a name too long with the prefix: no one to tell.
            let event = Event::new(data).with_event(kind);
            let _ = Shared::publish(this, &format!("presence:{topic}"), event);
        }
    }

    /// Whether the hub assigns this event its id (history on, none given).
    fn assigns_ids_to(&self, event: &Event) -> bool {
        self.config.history.is_some() && event.id().is_none() && !self.external_ids()
    }

    // --- backplane hook ---
    /// Whether sequence numbers come from a broker: local publishes then take none (they would
    /// collide with the broker's), get no hub id and are not kept for replay.
    #[inline]
    pub(crate) fn external_ids(&self) -> bool {
        #[cfg(any(feature = "redis", feature = "nats"))]
        return self.remote.is_attached();
        #[cfg(not(any(feature = "redis", feature = "nats")))]
        false
    }

    /// The epoch ids are issued in: the broker's when a backplane feeds this hub.
    fn epoch(&self) -> u64 {
        #[cfg(any(feature = "redis", feature = "nats"))]
        if self.remote.is_attached() {
            return self.remote.epoch();
        }
        self.config.epoch
    }

    /// The hub's sequence number for the one in an id it issued (a broker's number is offset
    /// so the hub's numbers only grow).
    fn local_seq(&self, seq: u64) -> u64 {
        #[cfg(any(feature = "redis", feature = "nats"))]
        if self.remote.is_attached() {
            return self.remote.to_local(seq);
        }
        seq
    }

    /// The sequence number below which this hub may have missed events: a backplane's
    /// coverage starts where it (re)joined the broker's stream.
    fn coverage_floor(&self) -> u64 {
        #[cfg(any(feature = "redis", feature = "nats"))]
        return self.registry.floor().max(self.remote.floor());
        #[cfg(not(any(feature = "redis", feature = "nats")))]
        self.registry.floor()
    }
    // --- end of backplane hook ---

    /// Runs one publish through the sequencer: normalises and encodes the event (with an
    /// assigned id if the hub assigns one), then calls `deliver` with the sequence number, the
    /// event and its frame, all under the sequencer so deliveries happen in sequence order.
    fn sequenced(
        this: &Arc<Self>,
        event: Event,
        deliver: impl FnOnce(u64, &Event, &Bytes) -> FanOut,
    ) -> Result<Published, PublishError> {
        let max = this.config.max_event_bytes;
        let mut event = event.normalized();
        // Validate (and, with the publisher's own id, encode) before taking the sequencer, so
        // a refused event costs no sequence number and holds no lock.
        event.validate()?;
        let assigned = this.assigns_ids_to(&event);
        let preencoded = if assigned { None } else { Some(event.encode_limited(max)?) };
        let mut sequencer = lock(&this.sequencer);
        if this.is_closed() {
            // Shutdown took the sequencer to fix the last sequence number streams hand over:
            // an event after it would be counted and never delivered.
            return Err(PublishError::Closed(Box::new(event)));
        }
        // Local events on a backplane node take no number: the broker numbers the shared ones.
        let seq = *sequencer + u64::from(!this.external_ids());
        let frame = match preencoded {
            Some(frame) => frame,
            None => {
                event.id = Some(format_id(this.config.epoch, seq));
                event.encode_limited(max)?
            }
        };
        *sequencer = seq;
        let mut fan = deliver(seq, &event, frame.as_bytes());
        // A subscriber that sees this number sees every entry of this publish.
        this.complete(seq);
        drop(sequencer);
        Shared::after_publish(this, &mut fan);
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
        let resume = match parse_id(last, self.epoch()) {
            Parsed::Ours(seq) if self.local_seq(seq) > current => {
                return Err(ResetReason::Malformed)
            }
            Parsed::Ours(seq) => self.local_seq(seq),
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
        if resume < self.coverage_floor() {
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

    /// The first frame of a subscription: the `connected` event (with the session's id and
    /// token, if any) and/or the `retry:` hint. No `id:` line, so it never moves a client's
    /// resume point.
    fn first_frame(&self, id: u64, connected: bool, session: Option<(&str, &str)>) -> Bytes {
        let mut event = match (connected, session) {
            (true, Some((sid, token))) => Event::new(format!(
                "{{\"id\":{id},\"session\":{},\"token\":{}}}",
                json_string(sid),
                json_string(token)
            ))
            .with_event("connected"),
            (true, None) => Event::new(format!("{{\"id\":{id}}}")).with_event("connected"),
            (false, _) => Event::default(),
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
        let mut stats = self.stats_counters();
        stats.sessions = self.sessions.len();
        stats
    }

    /// The counters with the registry's sizes.
    fn stats_counters(&self) -> Stats {
        self.counters.snapshot(self.registry.subscribers().len(), self.registry.topic_count())
    }

    /// Updates the size gauges.
    fn report_sizes(&self) {
        self.counters.sizes(self.registry.subscribers().len(), self.registry.topic_count());
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
        let Some(removed) = this.registry.unsubscribe(id) else {
            return;
        };
        this.report_sizes();
        if this.producers.any() {
            for topic in &removed.left {
                Producers::reconcile(this, topic);
            }
        }
        if this.config.presence {
            Shared::presence(this, &removed.slot, &removed.named, "leave");
        }
    }

    /// Ages out sessions and history; called by the heartbeat thread.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        if let Some(limits) = &self.config.sessions {
            self.sessions.sweep(limits, now);
        }
        if let Some(limits) = &self.config.history {
            self.registry.sweep(now, limits);
        }
    }

    /// Sets `closed` under the sequencer; returns whether this call set it, and the last
    /// sequence number accepted (no publish gets one after it).
    fn close_sequence(&self) -> (bool, u64) {
        let sequencer = lock(&self.sequencer);
        // AcqRel: publishers that see `closed` must also see everything before it.
        let first = !self.closed.swap(true, Ordering::AcqRel);
        (first, *sequencer)
    }

    /// Ends one subscriber's stream with `reason` after the frames published before this call
    /// (taken out of its rings into its queue) and takes it out of the registry at once;
    /// returns whether it was live.
    pub(crate) fn end(this: &Arc<Self>, slot: &Arc<Slot>, reason: EndReason) -> bool {
        let closed = {
            // Under the sequencer: every publish is wholly before (its frame is taken along)
            // or wholly after (it no longer counts this subscriber).
            let sequencer = lock(&this.sequencer);
            Shared::end_held(slot, reason, *sequencer)
        };
        Shared::remove(this, slot.id);
        closed
    }

    /// The part of [`Shared::end`] done under the sequencer (held by the caller, `upto` its
    /// value): the subscriber leaves its topics' readers, what its rings hold for it up to
    /// `upto` moves into its queue, and the queue is closed. Taking it out of the registry is
    /// the caller's, once the sequencer is released.
    pub(crate) fn end_held(slot: &Arc<Slot>, reason: EndReason, upto: u64) -> bool {
        slot.close_absorbing(reason, upto)
    }

    /// What follows a publish once the watermark is stored and the sequencer released: the
    /// ring's parked readers are woken (only now may they take the entry), the counters
    /// updated, and subscribers it dropped as slow taken out of the registry.
    pub(crate) fn after_publish(this: &Arc<Self>, fan: &mut FanOut) {
        if let Some(ring) = fan.ring.take() {
            ring.wake_parked();
        }
        this.counters.published(fan);
        // A subscriber dropped as slow leaves the registry now, not when its connection gets
        // around to dropping the subscription: a writer blocked on a full socket may not poll
        // its stream for a long time. Only on this rare path does a publish take the registry's
        // writer lock, and only after the sequencer is released.
        for id in &fan.slow_ids {
            #[cfg(feature = "tracing")]
            tracing::info!(target: "ssehub", subscriber = id, reason = "slow", "subscriber dropped");
            Shared::remove(this, *id);
        }
    }

    /// Records that every publish up to `seq` is complete (see `watermark`); called under the
    /// sequencer after the publish's entries are written, before its readers are woken.
    pub(crate) fn complete(&self, seq: u64) {
        // Release pairs with the Acquire in `watermark()`.
        self.watermark.store(seq, Ordering::Release);
    }

    /// Shuts down; returns whether this call started the shutdown. Streams still open (a paced
    /// shutdown that was cancelled) are ended by every call.
    pub(crate) fn shutdown(&self, last: Option<&Bytes>) -> bool {
        let (first, upto) = self.close_sequence();
        let last = if first { last } else { None };
        for slot in self.registry.close() {
            slot.queue.close_after(EndReason::Shutdown, upto, last);
        }
        self.producers.stop_all();
        self.heartbeat.stop();
        first
    }

    /// Shuts down in paced batches; returns whether this call did it.
    pub(crate) async fn shutdown_paced(&self, pacing: &Pacing) -> bool {
        let (first, upto) = self.close_sequence();
        if !first {
            return false;
        }
        // Closed to new subscribers and publishes at once; streams end batch by batch.
        let slots = self.registry.close();
        self.producers.stop_all();
        self.heartbeat.stop();
        let mut batches = slots.chunks(pacing.batch.max(1)).peekable();
        while let Some(batch) = batches.next() {
            for slot in batch {
                // Each stream its own jittered `retry:`, so its client comes back at its own time.
                let retry = pacing.retry + self.jitter(pacing.jitter);
                let frame = Event::default().with_retry(retry).encode().map(Frame::into_bytes).ok();
                slot.queue.close_after(EndReason::Shutdown, upto, frame.as_ref());
            }
            if batches.peek().is_some() {
                tokio::time::sleep(pacing.interval).await;
            }
        }
        true
    }
}

/// Delivers the frame of event `seq` to `state`'s subscribers: one entry in its ring (and a scan
/// for readers it put over their bound, when due), a push for each conflating subscriber.
/// Called under the sequencer; the caller stores the watermark, then wakes `fan.ring`'s parked
/// readers, then takes `fan.slow_ids` out of the registry.
pub(crate) fn deliver_to_topic(
    state: &TopicState,
    seq: u64,
    event: &Event,
    frame: &Bytes,
) -> FanOut {
    let mut fan = FanOut::default();
    let readers = state.readers.load();
    if !readers.is_empty() {
        fan.delivered = readers.len() as u64;
        if state.ring.push(seq, frame) {
            let slow = state.ring.scan(&readers).slow;
            for member in &slow {
                // It did not get this event, whoever closes it (its owner may be dropping it
                // right now).
                fan.delivered = fan.delivered.saturating_sub(1);
                if member.queue.close_discarding(EndReason::Slow) {
                    fan.slow += 1;
                    fan.slow_ids.push(member.id);
                }
            }
            if !slow.is_empty() {
                // Off the readers now, under the sequencer, so the next publish does not count
                // them; the registry forgets them once this one is done.
                state
                    .readers
                    .rcu(|set| slow.iter().fold((**set).clone(), |set, m| set.remove(m.id)));
            }
        }
        fan.ring = Some(state.ring.clone());
    }
    let pushed = state.pushed.load();
    if !pushed.is_empty() {
        let keys = FrameKeys::new(Some(&state.name), event.event(), event.key());
        fan_out(&mut fan, &pushed, seq, frame, &keys);
    }
    fan
}

/// Queues the frame of event `seq` for every subscriber in `subscribers`.
fn fan_out(
    fan: &mut FanOut,
    subscribers: &IdMap<Arc<Slot>>,
    seq: u64,
    bytes: &Bytes,
    keys: &FrameKeys<'_>,
) {
    subscribers.for_each(|slot| count(fan, slot.queue.push(seq, bytes, keys), Some(slot.id)));
}

/// Adds one push's outcome to the fan-out totals.
fn count(fan: &mut FanOut, pushed: Pushed, slot: Option<u64>) {
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
        Pushed::Disconnected => {
            fan.slow += 1;
            fan.slow_ids.extend(slot);
        }
        Pushed::Closed => {}
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

/// The `reset` frame: the client must resync; no `id:` line.
fn reset_frame(reason: ResetReason) -> Bytes {
    Bytes::from(format!("event: reset\ndata: {{\"reason\":\"{reason}\"}}\n\n"))
}

/// The in-band lag signal: how many frames were lost, no `id:` line.
pub(crate) fn lag_frame(lost: u64) -> Bytes {
    Frame::from_encoded(Bytes::from(format!("event: lagged\ndata: {lost}\n\n"))).into_bytes()
}
