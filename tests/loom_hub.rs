#![cfg(ssehub_loom)]
//! Loom models of the public API (`--cfg ssehub_loom`): `Hub`, `Subscription::try_recv` and
//! `recv`, and dropping subscriptions, racing each other.
//!
//! ```text
//! RUSTFLAGS="--cfg ssehub_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test 'loom_*'
//! ```
//!
//! The hub's `Arc`s, locks, atomics and copy-on-write cells are loom's under this cfg, so a slot
//! or a hub that is never released fails a model as a leak. Hubs are built without a heartbeat
//! (no timer thread under loom). Models that tell cases apart check that loom reached each one
//! ([`Outcomes`]). Shutdown walks every subscription in the registry's map of subscribers,
//! which is ordered under this cfg (a hash map's order changes with its seed from one execution
//! to the next, and loom needs every execution of a model to make the same choices), so models
//! may shut down a hub with several subscriptions.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Mutex as StdMutex;
use std::task::{Context, Poll, Wake, Waker};

use loom::thread;
use ssehub::{
    EndReason, Event, HistoryLimits, Hub, HubBuilder, PublishError, SessionLimits, SlowPolicy,
    StateLimits, Subscribe, SubscribeError, Subscription, SubscriptionChange,
};

/// A hub with queues of `capacity` frames, `Disconnect` for slow clients, and no heartbeat.
fn hub(capacity: usize) -> Hub {
    Hub::builder()
        .with_heartbeat(None)
        .with_capacity(capacity)
        .with_slow_policy(SlowPolicy::Disconnect)
        .build()
}

/// A hub keeping keyed state, with queues of 4 frames and no heartbeat.
fn state_hub() -> HubBuilder {
    Hub::builder().with_heartbeat(None).with_capacity(4).with_state(Some(StateLimits::new()))
}

/// Publishes `data` to `topic` on a hub that is not shut down; how many received it.
fn publish(hub: &Hub, topic: &str, data: &str) -> usize {
    hub.publish(topic, Event::new(data)).expect("the hub is open").receivers()
}

/// Everything the subscription hands over until it would wait, as the data of each frame, and
/// why its stream ended if it did.
fn received(sub: &mut Subscription) -> (Vec<String>, Option<EndReason>) {
    let mut seen = Vec::new();
    loop {
        match sub.try_recv() {
            Ok(Some(batch)) => seen.extend(batch.frames().iter().map(|f| data(f.as_ref()))),
            Ok(None) => return (seen, None),
            Err(reason) => return (seen, Some(reason)),
        }
    }
}

/// One frame, as its data (`e1`), or as `name:data` for a named event (`reset:...`), so an
/// unexpected control event shows up in a sequence instead of passing for data.
fn data(frame: &[u8]) -> String {
    let text = std::str::from_utf8(frame).expect("frames are UTF-8");
    let field = |name: &str| text.lines().find_map(|line| line.strip_prefix(name));
    match (field("event: "), field("data: ")) {
        (None, Some(data)) => data.to_string(),
        (Some(event), data) => format!("{event}:{}", data.unwrap_or_default()),
        (None, None) => panic!("not an event: {text:?}"),
    }
}

/// `xs` is a suffix of `of`.
fn is_suffix(xs: &[String], of: &[&str]) -> bool {
    xs.len() <= of.len() && xs.iter().zip(&of[of.len() - xs.len()..]).all(|(x, o)| x == o)
}

/// Nothing registered: no subscriber, no topic, in every view of the hub.
fn assert_empty(hub: &Hub) {
    assert_eq!(hub.subscriber_count(), 0);
    assert_eq!(hub.topics(), Vec::<(String, usize)>::new());
    let stats = hub.stats();
    assert_eq!((stats.subscribers, stats.topics), (0, 0));
}

/// Which outcomes a model reached over all its executions, so it can assert that loom explored
/// every case its assertions tell apart (a model that never reaches a case proves nothing
/// about it).
struct Outcomes(StdMutex<BTreeSet<String>>);

impl Outcomes {
    /// No outcome yet.
    const fn new() -> Self {
        Outcomes(StdMutex::new(BTreeSet::new()))
    }

    /// Records one execution's outcome.
    fn record(&self, outcome: String) {
        self.0.lock().unwrap().insert(outcome);
    }

    /// Asserts that every one of `expected` was reached.
    fn assert_reached(&self, expected: &[&str]) {
        let reached = self.0.lock().unwrap();
        for outcome in expected {
            assert!(reached.contains(*outcome), "never reached {outcome:?}: {reached:?}");
        }
    }
}

/// The waker of [`block_on`]: unparks the blocked thread through a loom `Notify`.
struct Unpark(loom::sync::Notify);

impl Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.notify();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.notify();
    }
}

/// Drives `future` on the current loom thread, parking until its waker is woken (what
/// `loom::future::block_on` does, without loom's `futures` feature). A wake-up that never comes
/// is a deadlock, which loom reports.
fn block_on<F: Future>(future: F) -> F::Output {
    let unpark = std::sync::Arc::new(Unpark(loom::sync::Notify::new()));
    let waker = Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        unpark.0.wait();
    }
}

/// A publisher sends e1 then e2 while a client subscribes: the client gets a suffix of
/// [e1, e2], the receiver counts agree with what it got, and dropping it empties the hub.
#[test]
fn loom_hub_publish_vs_subscribe() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = hub(2);
        let h = hub.clone();
        let subscriber = thread::spawn(move || h.subscribe("t").expect("open"));
        let n1 = publish(&hub, "t", "e1");
        let n2 = publish(&hub, "t", "e2");
        let mut sub = subscriber.join().unwrap();

        let (seen, ended) = received(&mut sub);
        assert_eq!(ended, None);
        assert!(is_suffix(&seen, &["e1", "e2"]), "{seen:?}");
        assert_eq!((n1, n2), (usize::from(seen.len() == 2), usize::from(!seen.is_empty())));
        assert_eq!(hub.stats().frames_delivered, (n1 + n2) as u64);
        OUTCOMES.record(seen.join(","));
        drop(sub);
        assert_empty(&hub);
    });
    OUTCOMES.assert_reached(&["", "e2", "e1,e2"]);
}

/// A client drops its subscription while a publisher sends to its topic: afterwards the hub is
/// empty, later publishes reach nobody, and the counters agree with what the publish reported.
#[test]
fn loom_hub_publish_vs_drop_of_subscription() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = hub(2);
        let sub = hub.subscribe("t").expect("open");
        let dropper = thread::spawn(move || drop(sub));
        let n = publish(&hub, "t", "e1");
        dropper.join().unwrap();

        assert!(n <= 1);
        assert_empty(&hub);
        assert_eq!(hub.topic_subscriber_count("t"), 0);
        assert_eq!(publish(&hub, "t", "e2"), 0);
        assert_eq!(hub.stats().frames_delivered, n as u64);
        OUTCOMES.record(n.to_string());
    });
    OUTCOMES.assert_reached(&["0", "1"]);
}

/// Shutdown racing a publish and a subscribe. Afterwards publish and subscribe return `Closed`;
/// a subscription that was granted ends with `Shutdown` after exactly the frames accepted for
/// it; dropping it empties the hub.
#[test]
fn loom_hub_shutdown_vs_publish_vs_subscribe() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = hub(2);
        let h = hub.clone();
        let closer = thread::spawn(move || h.shutdown());
        let h = hub.clone();
        let publisher = thread::spawn(move || {
            h.publish("t", Event::new("e1"))
                .map(|p| p.receivers())
                .map_err(|e| matches!(e, PublishError::Closed(_)))
        });
        let subscribed = hub.subscribe("t");
        closer.join().unwrap();
        let published = publisher.join().unwrap();

        assert!(hub.is_closed());
        assert!(matches!(hub.publish("t", Event::new("late")), Err(PublishError::Closed(_))));
        assert_eq!(hub.subscribe("t").unwrap_err(), SubscribeError::Closed);
        assert!(matches!(published, Ok(0 | 1) | Err(true)), "{published:?}");
        let outcome = match subscribed {
            Ok(mut sub) => {
                let (seen, ended) = received(&mut sub);
                assert_eq!(ended, Some(EndReason::Shutdown));
                let expected: &[&str] = if published == Ok(1) { &["e1"] } else { &[] };
                assert_eq!(seen, expected);
                assert_eq!(sub.end_reason(), Some(EndReason::Shutdown));
                assert!(block_on(sub.recv()).is_none(), "an ended stream yields nothing");
                drop(sub);
                format!("subscribed, got {seen:?}")
            }
            Err(e) => {
                assert_eq!(e, SubscribeError::Closed);
                assert_ne!(published, Ok(1));
                "refused".to_string()
            }
        };
        assert_empty(&hub);
        OUTCOMES.record(outcome);
    });
    OUTCOMES.assert_reached(&["refused", "subscribed, got []", "subscribed, got [\"e1\"]"]);
}

/// Two publishers race on a capacity-1 `Disconnect` subscriber whose queue is full: exactly one
/// slow disconnect, neither publish counts a receiver, the stream ends `Slow` with its queue
/// already freed, and dropping it empties the hub.
#[test]
fn loom_hub_slow_client_removal_racing_publish() {
    loom::model(|| {
        let hub = hub(1);
        let mut sub = hub.subscribe("t").expect("open");
        assert_eq!(publish(&hub, "t", "e0"), 1);

        let h = hub.clone();
        let other = thread::spawn(move || publish(&h, "t", "e1"));
        let n2 = publish(&hub, "t", "e2");
        let n1 = other.join().unwrap();

        assert_eq!((n1, n2), (0, 0));
        let stats = hub.stats();
        assert_eq!(stats.slow_disconnects, 1);
        assert_eq!(stats.frames_delivered, 1);
        assert_eq!(sub.queued(), 0, "the slow close frees the queue at once");
        assert_eq!(received(&mut sub), (vec![], Some(EndReason::Slow)));
        // Taken out of the registry by the publish that dropped it, before the application
        // drops the stream.
        assert_eq!(hub.subscriber_count(), 0);
        drop(sub);
        assert_empty(&hub);
    });
}

/// A publish that finds a capacity-1 queue full racing the subscriber's own drop: the publish
/// never counts it as a receiver, it is closed at most once as slow, and the hub ends empty.
#[test]
fn loom_hub_slow_close_vs_own_drop() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = hub(1);
        let sub = hub.subscribe("t").expect("open");
        assert_eq!(publish(&hub, "t", "e0"), 1);

        let dropper = thread::spawn(move || drop(sub));
        let n = publish(&hub, "t", "e1");
        dropper.join().unwrap();

        assert_eq!(n, 0);
        let stats = hub.stats();
        assert!(stats.slow_disconnects <= 1);
        assert_eq!(stats.frames_delivered, 1);
        assert_empty(&hub);
        OUTCOMES.record(format!("slow {}", stats.slow_disconnects));
    });
    OUTCOMES.assert_reached(&["slow 0", "slow 1"]);
}

/// `send_to` racing the drop of its target: it reaches the target at most once, the hub ends
/// empty, and a later `send_to` the same id reaches nobody.
#[test]
fn loom_hub_send_to_vs_target_drop() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = hub(2);
        let sub = hub.subscribe("t").expect("open");
        let id = sub.id();
        let dropper = thread::spawn(move || drop(sub));
        let n = hub.send_to(id, Event::new("e1")).expect("open").receivers();
        dropper.join().unwrap();

        assert!(n <= 1);
        assert_empty(&hub);
        assert_eq!(hub.send_to(id, Event::new("e2")).expect("open").receivers(), 0);
        assert_eq!(hub.stats().frames_delivered, n as u64);
        OUTCOMES.record(n.to_string());
    });
    OUTCOMES.assert_reached(&["0", "1"]);
}

/// A client parked in `recv` is woken by a publish (no lost wake-up: `block_on` would deadlock)
/// and gets the frame.
#[test]
fn loom_hub_recv_is_woken_by_publish() {
    loom::model(|| {
        let hub = hub(2);
        let mut sub = hub.subscribe("t").expect("open");
        let h = hub.clone();
        let publisher = thread::spawn(move || publish(&h, "t", "e1"));
        let batch = block_on(sub.recv()).expect("a batch");
        assert_eq!(publisher.join().unwrap(), 1);

        let seen: Vec<String> = batch.frames().iter().map(|f| data(f.as_ref())).collect();
        assert_eq!(seen, ["e1"]);
        drop(sub);
        assert_empty(&hub);
    });
}

/// A client parked in `recv` is woken by shutdown and its stream ends.
#[test]
fn loom_hub_recv_is_ended_by_shutdown() {
    loom::model(|| {
        let hub = hub(2);
        let mut sub = hub.subscribe("t").expect("open");
        let h = hub.clone();
        let closer = thread::spawn(move || h.shutdown());
        assert!(block_on(sub.recv()).is_none());
        closer.join().unwrap();

        assert_eq!(sub.end_reason(), Some(EndReason::Shutdown));
        drop(sub);
        assert_empty(&hub);
    });
}

/// The last `Hub` handle is dropped by whichever of two threads finishes last, while the
/// subscription is read: a publish through a live handle is never refused, the hub shuts down
/// exactly once, after that frame, and once the subscription is dropped nothing is left (loom
/// fails the model on a leaked hub or slot).
#[test]
fn loom_hub_last_handle_drop_shuts_down_once() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = hub(2);
        let mut sub = hub.subscribe("t").expect("open");
        let h = hub.clone();
        let publisher = thread::spawn(move || publish(&h, "t", "e1"));
        drop(hub);
        let (early, early_end) = received(&mut sub);
        assert_eq!(publisher.join().unwrap(), 1);

        let (rest, ended) = received(&mut sub);
        assert_eq!([early.clone(), rest].concat(), ["e1"]);
        if early_end.is_some() {
            assert_eq!(early, ["e1"], "ended before the accepted frame");
            assert_eq!(early_end, Some(EndReason::Shutdown));
        }
        assert_eq!(ended, Some(EndReason::Shutdown));
        assert_eq!(sub.end_reason(), Some(EndReason::Shutdown));
        OUTCOMES.record(format!("{early:?} {early_end:?}"));
    });
    OUTCOMES.assert_reached(&["[] None", "[\"e1\"] None", "[\"e1\"] Some(Shutdown)"]);
}

/// A subscription dropped while the hub shuts down: it is closed once, and the hub ends empty.
#[test]
fn loom_hub_shutdown_vs_drop_of_subscription() {
    loom::model(|| {
        let hub = hub(2);
        let sub = hub.subscribe("t").expect("open");
        let h = hub.clone();
        let closer = thread::spawn(move || h.shutdown());
        drop(sub);
        closer.join().unwrap();

        assert!(hub.is_closed());
        assert_empty(&hub);
    });
}

/// Two publishers to one topic with two subscribers: each subscriber gets both events, and both
/// get them in the same order (publishes to a topic are sequenced).
#[test]
fn loom_hub_two_publishers_one_order_for_all() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = hub(2);
        let mut a = hub.subscribe("t").expect("open");
        let mut b = hub.subscribe("t").expect("open");
        let h = hub.clone();
        let other = thread::spawn(move || publish(&h, "t", "p1"));
        assert_eq!(publish(&hub, "t", "p2"), 2);
        assert_eq!(other.join().unwrap(), 2);

        let (seen_a, _) = received(&mut a);
        let (seen_b, _) = received(&mut b);
        assert_eq!(seen_a, seen_b, "subscribers disagree on the order");
        let mut sorted = seen_a.clone();
        sorted.sort();
        assert_eq!(sorted, ["p1", "p2"]);
        OUTCOMES.record(seen_a.join(","));
        drop((a, b));
        assert_empty(&hub);
    });
    OUTCOMES.assert_reached(&["p1,p2", "p2,p1"]);
}

/// `Hub::disconnect` racing a publish: the subscriber gets exactly the frame the publish
/// counted, then its stream ends `Disconnected`; it stays registered until dropped.
#[test]
fn loom_hub_disconnect_vs_publish() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = hub(2);
        let mut sub = hub.subscribe("t").expect("open");
        let (h, id) = (hub.clone(), sub.id());
        let closer = thread::spawn(move || h.disconnect(id));
        let n = publish(&hub, "t", "e1");
        assert!(closer.join().unwrap(), "the subscriber was live");

        let (seen, ended) = received(&mut sub);
        let expected: &[&str] = if n == 1 { &["e1"] } else { &[] };
        assert_eq!(seen, expected);
        assert_eq!(ended, Some(EndReason::Disconnected));
        assert!(!hub.disconnect(id), "closed twice");
        assert_eq!(publish(&hub, "t", "e2"), 0);
        OUTCOMES.record(n.to_string());
        drop(sub);
        assert_empty(&hub);
    });
    OUTCOMES.assert_reached(&["0", "1"]);
}

/// `DropOldest`, capacity 1, a publisher sending three events while the client reads: what the
/// client gets plus the lag its batches report is exactly three, what it gets is in publish
/// order, and the hub's dropped-frames counter equals the reported lag.
#[test]
fn loom_hub_drop_oldest_delivered_plus_lagged_is_exact() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = Hub::builder()
            .with_heartbeat(None)
            .with_capacity(1)
            .with_slow_policy(SlowPolicy::DropOldest)
            .with_lag_event(false)
            .build();
        let mut sub = hub.subscribe("t").expect("open");
        let h = hub.clone();
        let publisher = thread::spawn(move || {
            for data in ["e1", "e2", "e3"] {
                assert_eq!(publish(&h, "t", data), 1);
            }
        });
        let mut seen = Vec::new();
        let mut lagged = 0;
        let mut read = |sub: &mut Subscription| {
            while let Some(batch) = sub.try_recv().expect("open") {
                lagged += batch.lagged();
                seen.extend(batch.frames().iter().map(|f| data(f.as_ref())));
            }
        };
        read(&mut sub);
        publisher.join().unwrap();
        read(&mut sub);

        assert_eq!(seen.len() as u64 + lagged, 3, "{seen:?} lagged {lagged}");
        let mut ordered = seen.clone();
        ordered.sort();
        assert_eq!(seen, ordered, "out of order");
        assert_eq!(seen.last().map(String::as_str), Some("e3"));
        assert_eq!(hub.stats().frames_dropped, lagged);
        OUTCOMES.record(format!("{seen:?}"));
        drop(sub);
        assert_empty(&hub);
    });
    // Reading all three one by one needs more than two preemptions of the reader.
    OUTCOMES.assert_reached(&["[\"e3\"]", "[\"e1\", \"e3\"]", "[\"e2\", \"e3\"]"]);
}

/// The replay seam: a client resumes after e0 (subscribes with e0's id) while e1 and e2 are
/// published. Each of e1, e2 reaches it exactly once, in order, whether replayed from history
/// or queued live, and never a `reset`.
#[test]
fn loom_hub_resume_vs_publish_replay_seam() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = Hub::builder()
            .with_heartbeat(None)
            .with_capacity(2)
            .with_history(Some(HistoryLimits::new()))
            .with_epoch(1)
            .build();
        let e0 = hub.publish("t", Event::new("e0")).expect("open");
        let resume = e0.id().expect("the hub assigns ids").to_string();
        let h = hub.clone();
        let publisher = thread::spawn(move || (publish(&h, "t", "e1"), publish(&h, "t", "e2")));
        let mut sub = hub.subscribe(Subscribe::from("t").with_last_event_id(resume)).expect("open");
        let live = publisher.join().unwrap();

        let (seen, ended) = received(&mut sub);
        assert_eq!(ended, None);
        assert_eq!(seen, ["e1", "e2"], "live receivers {live:?}");
        OUTCOMES.record(format!("live {live:?}"));
        drop(sub);
        assert_eq!(hub.subscriber_count(), 0);
    });
    OUTCOMES.assert_reached(&["live (0, 0)", "live (0, 1)", "live (1, 1)"]);
}

/// A client subscribes with a snapshot while a publisher updates key `a` (e1 -> e2) and then
/// writes key `b` (e3): whatever the interleaving, the client gets the latest value of each key
/// as of the point it joined, between the two snapshot frames, then exactly the later events
/// live: each event once or superseded in the snapshot, never both, never neither.
#[test]
fn loom_hub_snapshot_vs_publish_seam() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = state_hub().build();
        hub.publish("t", Event::new("e1").with_key("a")).expect("open");
        let h = hub.clone();
        let publisher = thread::spawn(move || {
            let e2 = h.publish("t", Event::new("e2").with_key("a")).expect("open").receivers();
            let e3 = h.publish("t", Event::new("e3").with_key("b")).expect("open").receivers();
            (e2, e3)
        });
        let mut sub = hub.subscribe(Subscribe::from("t").with_snapshot()).expect("open");
        let live = publisher.join().unwrap();

        let (seen, ended) = received(&mut sub);
        assert_eq!(ended, None);
        let expected: &[&str] = match live {
            (1, 1) => &[
                "snapshot:{\"state\":\"begin\",\"events\":1}",
                "e1",
                "snapshot:{\"state\":\"end\"}",
                "e2",
                "e3",
            ],
            (0, 1) => &[
                "snapshot:{\"state\":\"begin\",\"events\":1}",
                "e2",
                "snapshot:{\"state\":\"end\"}",
                "e3",
            ],
            (0, 0) => &[
                "snapshot:{\"state\":\"begin\",\"events\":2}",
                "e2",
                "e3",
                "snapshot:{\"state\":\"end\"}",
            ],
            other => panic!("receivers {other:?}: {seen:?}"),
        };
        assert_eq!(seen, expected, "live receivers {live:?}");
        OUTCOMES.record(format!("live {live:?}"));
        drop(sub);
        assert_eq!(hub.subscriber_count(), 0);
    });
    OUTCOMES.assert_reached(&["live (0, 0)", "live (0, 1)", "live (1, 1)"]);
}

/// A pattern subscriber with a snapshot while a publisher writes a topic that does not exist
/// yet: the event is in the snapshot (the topic was there when it joined) or arrives live (the
/// pattern matched the topic when it appeared), exactly once.
#[test]
fn loom_hub_snapshot_vs_new_topic() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = state_hub().build();
        hub.publish("p:a", Event::new("a1")).expect("open");
        let h = hub.clone();
        let publisher = thread::spawn(move || publish(&h, "p:b", "b1"));
        let mut sub =
            hub.subscribe(Subscribe::new().with_pattern("p:*").with_snapshot()).expect("open");
        let live = publisher.join().unwrap();

        let (seen, ended) = received(&mut sub);
        assert_eq!(ended, None);
        let expected: &[&str] = match live {
            1 => &[
                "snapshot:{\"state\":\"begin\",\"events\":1}",
                "a1",
                "snapshot:{\"state\":\"end\"}",
                "b1",
            ],
            0 => &[
                "snapshot:{\"state\":\"begin\",\"events\":2}",
                "a1",
                "b1",
                "snapshot:{\"state\":\"end\"}",
            ],
            other => panic!("receivers {other}: {seen:?}"),
        };
        assert_eq!(seen, expected);
        OUTCOMES.record(format!("live {live}"));
        drop(sub);
        assert_eq!(hub.subscriber_count(), 0);
    });
    OUTCOMES.assert_reached(&["live 0", "live 1"]);
}

/// A publish to a new topic, at the bound on topics holding state, while a client subscribes
/// to the one topic that holds state: that state is kept (the client was there first, and the
/// new topic's goes instead) or dropped, and either way the client is on the live topic and
/// receives its next event; the topic is never removed from under it.
#[test]
fn loom_hub_state_bound_vs_subscribe() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = state_hub().with_max_state_topics(1).build();
        hub.publish("a", Event::new("a1").with_key("k")).expect("open");
        let h = hub.clone();
        let publisher = thread::spawn(move || publish(&h, "b", "b1"));
        let mut sub = hub.subscribe("a").expect("open");
        publisher.join().unwrap();

        // One state went: b's own (a was received when looked at, so b was the one published
        // to longest ago that nobody received; b then goes whole), or a's (b keeps its state).
        let stats = hub.stats();
        assert_eq!(stats.state_topics_dropped, 1);
        let went = match stats.topics {
            1 => "b",
            2 => "a",
            other => panic!("{other} topics"),
        };
        assert_eq!(publish(&hub, "a", "a2"), 1, "the subscriber is on the live topic");
        assert_eq!(received(&mut sub), (vec!["a2".to_string()], None));
        OUTCOMES.record(format!("{went} went"));
        drop(sub);
        assert_eq!(hub.subscriber_count(), 0);
    });
    OUTCOMES.assert_reached(&["a went", "b went"]);
}

/// A session resumed on a new connection while the old one still reads and targeted sends
/// arrive: the old connection gets a prefix of [dm1, dm2] and then ends `Disconnected`; the
/// resumed one gets exactly the rest (the old queue's undelivered frames handed over once, then
/// live ones): no send reaches both, none reaches neither.
#[test]
fn loom_hub_session_resume_vs_old_stream() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = Hub::builder()
            .with_heartbeat(None)
            .with_capacity(2)
            .with_sessions(Some(SessionLimits::new()))
            .build();
        let mut old = hub.subscribe(Subscribe::new()).expect("open");
        let (connected, _) = received(&mut old);
        let session = old.session_id().expect("a session").to_string();
        let token = connected
            .first()
            .and_then(|c| c.strip_prefix("connected:"))
            .and_then(|json| json.split("\"token\":\"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .expect("the connected event carries the token")
            .to_string();

        let h = hub.clone();
        let sender = thread::spawn(move || {
            for dm in ["dm1", "dm2"] {
                h.send_to_session(&session, Event::new(dm)).expect("open");
            }
        });
        let reader = thread::spawn(move || {
            let (early, _) = received(&mut old);
            (old, early)
        });
        let mut new = hub.subscribe(Subscribe::new().with_session_token(token)).expect("resumed");
        sender.join().unwrap();
        let (mut old, early) = reader.join().unwrap();

        let (late, ended) = received(&mut old);
        assert_eq!(ended, Some(EndReason::Disconnected), "the old stream must end");
        let (resumed, _) = received(&mut new);
        let resumed: Vec<String> =
            resumed.into_iter().filter(|f| !f.starts_with("connected:")).collect();
        let old_seen = [early, late].concat();
        assert_eq!([old_seen.clone(), resumed.clone()].concat(), ["dm1", "dm2"]);
        OUTCOMES.record(format!("old {old_seen:?} new {resumed:?}"));
        drop((old, new));
        assert_empty(&hub);
    });
    OUTCOMES.assert_reached(&[
        "old [] new [\"dm1\", \"dm2\"]",
        "old [\"dm1\"] new [\"dm2\"]",
        "old [\"dm1\", \"dm2\"] new []",
    ]);
}

/// Shutdown racing two publishes to a topic with two subscribers: both streams end `Shutdown`
/// after the same last event, which is the last publish accepted (each accepted publish counted
/// both, each refused one `Closed`), nothing lost and nothing after it; dropping them empties
/// the hub (loom fails the model on a leaked slot).
#[test]
fn loom_hub_shutdown_vs_publish_two_subscribers_end_alike() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = hub(2);
        let mut a = hub.subscribe("t").expect("open");
        let mut b = hub.subscribe("t").expect("open");
        let h = hub.clone();
        let closer = thread::spawn(move || h.shutdown());
        let mut accepted = Vec::new();
        for data in ["e1", "e2"] {
            match hub.publish("t", Event::new(data)) {
                Ok(published) => {
                    assert_eq!(published.receivers(), 2, "{data} missed a subscriber");
                    accepted.push(data.to_string());
                }
                Err(PublishError::Closed(_)) => {}
                Err(other) => panic!("{other:?}"),
            }
        }
        closer.join().unwrap();

        assert_eq!(received(&mut a), (accepted.clone(), Some(EndReason::Shutdown)));
        assert_eq!(received(&mut b), (accepted.clone(), Some(EndReason::Shutdown)));
        assert_eq!(hub.stats().frames_delivered, 2 * accepted.len() as u64);
        OUTCOMES.record(format!("{accepted:?}"));
        drop((a, b));
        assert_empty(&hub);
    });
    OUTCOMES.assert_reached(&["[]", "[\"e1\"]", "[\"e1\", \"e2\"]"]);
}

/// A broadcast racing a client that subscribes (C) and then another that leaves (B), with A
/// subscribed throughout: A gets it exactly once, C at most once, B is counted at most once,
/// the count the broadcast returns is exactly who it reached, and the hub ends empty.
///
/// It may reach neither B nor C although C subscribed before B left: the broadcast walks the
/// snapshot of subscribers it loaded before C registered, and B's drop closes its queue (so
/// the push finds it closed) before B leaves the map. Each of them alone is consistent (C was
/// not registered, B was already gone); the model records that case and requires the others.
#[test]
fn loom_hub_broadcast_vs_subscribe_and_unsubscribe() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = hub(2);
        let mut a = hub.subscribe("t").expect("open");
        let b = hub.subscribe("u").expect("open");
        let h = hub.clone();
        let churn = thread::spawn(move || {
            let c = h.subscribe("v").expect("open");
            drop(b);
            c
        });
        let n = hub.broadcast(Event::new("all")).expect("open").receivers();
        let mut c = churn.join().unwrap();

        assert_eq!(received(&mut a), (vec!["all".to_string()], None));
        let (seen_c, ended) = received(&mut c);
        assert_eq!(ended, None);
        assert!(seen_c.is_empty() || seen_c == ["all"], "{seen_c:?}");
        let c_got = seen_c.len();
        let b_counted = n.checked_sub(1 + c_got).expect("A and C are counted");
        assert!(b_counted <= 1, "{n}");
        assert_eq!(hub.stats().frames_delivered, n as u64);
        OUTCOMES.record(format!("b {b_counted} c {c_got}"));
        drop((a, c));
        assert_empty(&hub);
    });
    OUTCOMES.assert_reached(&["b 1 c 0", "b 1 c 1", "b 0 c 1"]);
}

/// A live change from topic `a` to topic `b` racing a publisher that sends a1, b1, a2, while
/// the subscriber reads: the change sits at one point in the order, so the stream gets b1
/// (before a1), a1 b1 (between a1 and b1), a1 (between b1 and a2) or a1 a2 (after a2), never
/// an `a` event published after the change (a read still holding the old feed included), a
/// duplicate or one out of order; what `a` had before the change is handed over even though
/// the stream leaves it; and dropping the subscription empties the hub.
#[test]
fn loom_hub_live_change_vs_publish() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let hub = hub(4);
        let mut sub = hub.subscribe("a").expect("open");
        let (h, id) = (hub.clone(), sub.id());
        let changer = thread::spawn(move || {
            let change = SubscriptionChange::new().with_removed_topic("a").with_added_topic("b");
            h.update_subscription(id, change).expect("the subscription is live");
        });
        let publisher = {
            let hub = hub.clone();
            thread::spawn(move || {
                publish(&hub, "a", "a1");
                publish(&hub, "b", "b1");
                publish(&hub, "a", "a2");
            })
        };
        let (mut seen, ended) = received(&mut sub);
        assert_eq!(ended, None);
        changer.join().unwrap();
        publisher.join().unwrap();
        let (rest, ended) = received(&mut sub);
        assert_eq!(ended, None);
        seen.extend(rest);
        let outcome = seen.join(",");
        assert!(["b1", "a1,b1", "a1", "a1,a2"].contains(&outcome.as_str()), "{outcome}");
        OUTCOMES.record(outcome);
        drop(sub);
        assert_empty(&hub);
    });
    OUTCOMES.assert_reached(&["b1", "a1,b1", "a1", "a1,a2"]);
}
