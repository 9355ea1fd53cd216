//! The one door a backplane has into a hub: claim the engine's external clock, attach it at an
//! epoch, publish events with its numbers through the one pipeline, register a replay source,
//! and resume subscriptions through it. Beyond the public `Hub` API, `src/backplane/` calls
//! nothing else of the hub or the engine but `Published::new` and `history::format_id` (to
//! answer its own publish), and nothing here names a broker.
//!
//! Without a backplane feature nothing calls these methods. No feature `cfg` may name the
//! brokers outside `src/backplane/`, so this module is `allow(dead_code)` in every build: the
//! engine and the hub run the same code paths either way, with the clock never attached.
#![allow(dead_code)]

use std::time::Duration;

use super::{Hub, Shared, Subscribe};
use crate::engine::history::{parse_id, Parsed, ResetReason};
use crate::engine::{Attached, Fetched, Number, Numbered, Replay, ReplaySource};
use crate::error::SubscribeError;
use crate::frame::Event;
use crate::hub::subscription::Subscription;
use crate::sync::{lock, Arc, Ordering, PlainArc};
use crate::topic::{validate_topic, Pattern};

impl Shared {
    /// Claims the external clock for one owner; false if another holds it.
    pub(crate) fn claim_clock(&self) -> bool {
        // AcqRel: one claimant wins, and sees what a released claim left.
        !self.claimed.swap(true, Ordering::AcqRel)
    }

    /// Gives the clock back (a backplane that failed to connect): the replay source is
    /// forgotten and the engine numbers its events itself again.
    pub(crate) fn release_clock(&self) {
        *lock(&self.source) = None;
        self.engine.detach();
        // Release pairs with the next claimant's AcqRel swap: it sees the clock detached.
        self.claimed.store(false, Ordering::Release);
    }

    /// (Re)attaches the clock at its number `upto` in `epoch` (see [`Attached`]).
    pub(crate) fn attach_clock(&self, epoch: u64, upto: u64) -> Attached {
        self.engine.attach(epoch, upto)
    }

    /// The clock's epoch while it is attached.
    pub(crate) fn external_epoch(&self) -> Option<u64> {
        let clock = &self.engine.clock;
        clock.is_attached().then(|| clock.epoch())
    }

    /// The clock's number of the last event this hub took.
    pub(crate) fn external_position(&self) -> u64 {
        self.engine.external_position()
    }

    /// Registers where resumes the hub's history cannot serve are fetched from.
    pub(crate) fn set_replay_source(&self, source: PlainArc<dyn ReplaySource>) {
        *lock(&self.source) = Some(source);
    }

    /// Delivers event number `n` of the clock to `topic`'s subscribers, through the same
    /// pipeline as a local publish: a duplicate is skipped, a gap ends every stream first.
    /// `None` for an event this hub cannot deliver (`event` is `None` for a payload it could
    /// not read; or the topic or event is over its limits): its number is used up all the same.
    pub(crate) fn publish_given(
        this: &Arc<Self>,
        topic: &str,
        n: u64,
        event: Option<Event>,
    ) -> Option<Numbered> {
        let topic_ok = validate_topic(topic, this.engine.config.max_topic_len).is_ok();
        let deliverable = event.filter(|_| topic_ok);
        let undeliverable = deliverable.is_none();
        let sequenced = Shared::sequenced(this, Number::Given(n), deliverable, |entry| {
            this.engine.deliver_to_named(topic, entry)
        })
        .ok()?;
        match sequenced.numbered {
            Numbered::Duplicate => Some(Numbered::Duplicate),
            _ if undeliverable => None,
            numbered => Some(numbered),
        }
    }

    /// Subscribes, resuming a `Last-Event-ID` the clock numbered (on any node) from the
    /// replay source when the hub's own history does not reach back far enough. Without a
    /// replay source (or without a resume), the same as [`Shared::subscribe`].
    pub(crate) async fn subscribe_resuming(
        this: &Arc<Self>,
        request: Subscribe,
    ) -> Result<Subscription, SubscribeError> {
        let source = lock(&this.source).clone();
        let Some((source, catch_up)) = source.and_then(|s| s.catch_up().map(|c| (s, c))) else {
            return Shared::subscribe(this, request);
        };
        let Some((epoch, after)) = this.resume_point(&request, catch_up).await else {
            return Shared::subscribe(this, request);
        };
        let Some(patterns) = this.valid_patterns(&request) else {
            // Invalid: the hub refuses the request with the right error.
            return Shared::subscribe(this, request);
        };
        let engine = &this.engine;
        if engine.covers(engine.clock.to_local(after), &request.topics, &patterns) {
            return Shared::subscribe(this, request);
        }
        let max = engine.config.max_replay;
        let fetched = source.fetch(after, &request.topics, &patterns, max).await?;
        let replay = this.replay(epoch, fetched);
        Shared::subscribe_with(this, request, Some(replay))
    }

    /// The clock's epoch and number a resume starts after, when the replay source may be
    /// needed: the
    /// request's id is one the clock numbered in its current epoch, and this hub reached it
    /// (waiting up to `catch_up` for a client that moved from a node slightly ahead, rather
    /// than answer with a reset).
    async fn resume_point(&self, request: &Subscribe, catch_up: Duration) -> Option<(u64, u64)> {
        let last = request.last_event_id.as_deref()?;
        let epoch = self.external_epoch()?;
        // Malformed, another epoch, not an id the clock issues: the hub's own answer.
        let Parsed::Ours(after) = parse_id(last, epoch) else { return None };
        let deadline = tokio::time::Instant::now() + catch_up;
        while self.external_position() < after && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (self.external_position() >= after).then_some((epoch, after))
    }

    /// The request's patterns, if its names are all within the hub's limits (what the hub
    /// would refuse is refused by it, before any fetch).
    fn valid_patterns(&self, request: &Subscribe) -> Option<Vec<Pattern>> {
        let config = &self.engine.config;
        let count = request.topics.len() + request.patterns.len();
        let valid = |t: &String| validate_topic(t, config.max_topic_len).is_ok();
        if count > config.max_topics_per_subscription || !request.topics.iter().all(valid) {
            return None;
        }
        let patterns =
            request.patterns.iter().map(|p| Pattern::with_max_len(p, config.max_topic_len));
        patterns.collect::<Result<Vec<_>, _>>().ok()
    }

    /// A fetch for a resume point in `epoch` as the engine replays it: frames encoded as the
    /// pipeline encodes events with a given number, numbered as the engine numbers them; a
    /// reset if the source's history is another epoch's (the clock moved on during the fetch,
    /// or the source lost its data).
    fn replay(&self, epoch: u64, fetched: Fetched) -> Replay {
        let engine = &self.engine;
        let upto = engine.clock.to_local(fetched.upto);
        let mut replay = Replay { frames: Vec::new(), upto, reset: fetched.reset };
        if fetched.epoch != epoch {
            replay.reset = Some(ResetReason::OtherEpoch);
        } else if fetched.events.len() > engine.config.max_replay {
            replay.reset = Some(ResetReason::TooMany);
        } else {
            for (n, event) in fetched.events {
                // An event this hub cannot deliver is skipped here as it is live.
                if let Ok(frame) = engine.encode_external(epoch, n, event) {
                    replay.frames.push((engine.clock.to_local(n), frame));
                }
            }
        }
        replay
    }
}

impl Hub {
    /// Subscribes, resuming through the replay source when one is registered (see
    /// [`Shared::subscribe_resuming`]): the path the adapters take.
    pub(crate) async fn subscribe_resuming(
        &self,
        request: Subscribe,
    ) -> Result<Subscription, SubscribeError> {
        Shared::subscribe_resuming(&self.shared, request).await
    }
}

#[cfg(all(test, not(ssehub_loom)))]
mod tests {
    use crate::engine::{Fetched, Numbered, ReplaySource};
    use crate::hub::Shared;
    use crate::sync::{lock, PlainArc};
    use crate::{EndReason, Event, HistoryLimits, Hub};

    /// A hub with history, its external clock attached at number 0 of epoch 7.
    fn attached() -> Hub {
        let hub = Hub::builder().with_history(Some(HistoryLimits::new())).build();
        hub.shared.attach_clock(7, 0);
        hub
    }

    /// The frames `sub` can take now, as text.
    fn frames(sub: &mut crate::Subscription) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Some(batch)) = sub.try_recv() {
            out.extend(batch.frames().iter().map(|f| String::from_utf8_lossy(f).into_owned()));
        }
        out
    }

    #[test]
    fn a_given_duplicate_is_skipped_and_a_gap_ends_the_streams_in_the_one_pipeline() {
        let hub = attached();
        let mut sub = hub.subscribe("t").expect("open");
        let given =
            |n, data: &str| Shared::publish_given(&hub.shared, "t", n, Some(Event::new(data)));
        assert_eq!(given(1, "one"), Some(Numbered::InOrder));
        assert_eq!(given(1, "one again"), Some(Numbered::Duplicate));
        assert_eq!(frames(&mut sub), vec!["id: 7-1\ndata: one\n\n".to_string()]);
        assert_eq!(hub.shared.external_position(), 1);

        // Number 2 was missed: the stream ends after 1, so its client resumes from the replay
        // source with id 7-1 and gets 2 from there; 3 is taken, and kept for later resumes.
        assert_eq!(given(3, "three"), Some(Numbered::AfterGap));
        assert!(frames(&mut sub).is_empty());
        assert!(matches!(sub.try_recv(), Err(EndReason::Disconnected)));
        assert_eq!(hub.shared.external_position(), 3);
        let resumed = hub.subscribe(crate::Subscribe::from("t").with_last_event_id("7-1"));
        let mut resumed = resumed.expect("open");
        let reset = frames(&mut resumed);
        assert_eq!(reset, vec!["event: reset\ndata: {\"reason\":\"too-old\"}\n\n".to_string()]);
        let mut after = hub.subscribe(crate::Subscribe::from("t").with_last_event_id("7-2"));
        assert_eq!(frames(after.as_mut().expect("open")), vec!["id: 7-3\ndata: three\n\n"]);
    }

    /// A replay source that holds events 1..=6 of epoch 7 and records what it was asked.
    struct Source {
        /// The `after` of every fetch.
        asked: crate::sync::Mutex<Vec<u64>, crate::sync::rank::ReplaySource>,
    }

    impl ReplaySource for Source {
        fn catch_up(&self) -> Option<std::time::Duration> {
            Some(std::time::Duration::ZERO)
        }

        fn fetch<'a>(
            &'a self,
            after: u64,
            _topics: &'a [String],
            _patterns: &'a [crate::topic::Pattern],
            _max: usize,
        ) -> crate::engine::external::Fetch<'a> {
            lock(&self.asked).push(after);
            let events = (after + 1..=6).map(|n| (n, Event::new(format!("e{n}")))).collect();
            Box::pin(async move { Ok(Fetched { epoch: 7, upto: 6, events, reset: None }) })
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_resume_below_the_coverage_floor_replays_from_the_source_then_the_mirror() {
        let hub = Hub::builder().with_history(Some(HistoryLimits::new())).build();
        // The node joins the clock's stream at 5: its mirror covers what comes after.
        hub.shared.attach_clock(7, 5);
        let source = PlainArc::new(Source { asked: crate::sync::Mutex::new(Vec::new()) });
        hub.shared.set_replay_source(source.clone());
        for n in 6..=7 {
            let given =
                Shared::publish_given(&hub.shared, "t", n, Some(Event::new(format!("e{n}"))));
            assert_eq!(given, Some(Numbered::InOrder));
        }
        let resume = |id: &str| crate::Subscribe::from("t").with_last_event_id(id);

        let mut covered = hub.subscribe_resuming(resume("7-6")).await.expect("open");
        assert_eq!(frames(&mut covered), vec!["id: 7-7\ndata: e7\n\n"]);
        assert!(lock(&source.asked).is_empty(), "the mirror covers 7-6: no fetch");

        let mut fetched = hub.subscribe_resuming(resume("7-3")).await.expect("open");
        let expected: Vec<String> = (4..=7).map(|n| format!("id: 7-{n}\ndata: e{n}\n\n")).collect();
        assert_eq!(frames(&mut fetched), expected, "fetched 4-6, then the mirror's 7, each once");
        assert_eq!(*lock(&source.asked), vec![3]);

        // Without the source, the same resume is "too old" for the mirror alone.
        let mut alone = hub.subscribe(resume("7-3")).expect("open");
        assert_eq!(frames(&mut alone), vec!["event: reset\ndata: {\"reason\":\"too-old\"}\n\n"]);
    }

    #[test]
    fn an_undeliverable_given_event_uses_its_number_up() {
        let hub = attached();
        let mut sub = hub.subscribe("t").expect("open");
        assert_eq!(Shared::publish_given(&hub.shared, "t", 1, None), None);
        assert_eq!(
            Shared::publish_given(&hub.shared, "bad\ntopic", 2, Some(Event::new("x"))),
            None
        );
        let next = Shared::publish_given(&hub.shared, "t", 3, Some(Event::new("three")));
        assert_eq!(next, Some(Numbered::InOrder));
        assert_eq!(frames(&mut sub), vec!["id: 7-3\ndata: three\n\n".to_string()]);
    }

    #[test]
    fn a_local_publish_on_an_attached_hub_takes_no_number() {
        let hub = attached();
        let mut sub = hub.subscribe("t").expect("open");
        let published = hub.publish("t", Event::new("local")).expect("open");
        assert_eq!((published.receivers(), published.id()), (1, None));
        assert_eq!(hub.shared.external_position(), 0);
        let next = Shared::publish_given(&hub.shared, "t", 1, Some(Event::new("shared")));
        assert_eq!(next, Some(Numbered::InOrder));
        let got = frames(&mut sub);
        assert_eq!(got, vec!["data: local\n\n", "id: 7-1\ndata: shared\n\n"]);
    }
}
