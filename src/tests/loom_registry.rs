//! Models of the copy-on-write registry: publishes that load snapshots and push, racing
//! subscribes and unsubscribes that swap new snapshots in under the writers' lock.

use bytes::Bytes;
use loom::thread;

use super::{assert_released, frame, labels, Outcomes};
use crate::engine::deliver_to_topic;
use crate::engine::queue::{Limits, Queue, SlowPolicy};
use crate::engine::reader::{next_batch, Stop, View};
use crate::engine::registry::{Registry, Slot};
use crate::error::EndReason;
use crate::sync::{Arc, AtomicBool, Ordering, SharedStr};
use crate::topic::Pattern;
use crate::Event;

/// A subscriber with a `Disconnect` queue of capacity 2 (a ring reader).
fn slot(id: u64) -> Arc<Slot> {
    Arc::new(Slot::new(id, Queue::new(2, SlowPolicy::Disconnect), None))
}

/// Subscribes `slot` to the topic `topic`.
fn subscribe(registry: &Registry, slot: &Arc<Slot>, topic: &str) {
    let topics: Vec<SharedStr> = vec![topic.into()];
    registry
        .subscribe(slot, topics, Vec::new(), None, None, usize::MAX)
        .expect("the registry is open");
}

/// Publishes `bytes` as event `seq` to `topic` through the engine's real delivery: the topic's
/// state as a publish without history finds it (lock-free, or created for a matching pattern),
/// then `deliver_to_topic` itself (one entry in the ring, the overflow scan when due, a push for
/// each conflating subscriber), then the wake of the ring's parked readers that follows the
/// sequencer's release. Returns how many receivers the delivery counted. (The hub holds its
/// sequencer around the delivery, which only orders concurrent publishers; each model here has
/// one, which numbers its events itself, and readers drain with no watermark.)
fn publish(registry: &Registry, topic: &str, seq: u64, bytes: &Bytes) -> usize {
    let Some(state) = registry.topic_for_publish(topic, false) else {
        return 0;
    };
    let mut fan = deliver_to_topic(&state, seq, &Event::new("model"), bytes);
    // Two events into bounds of two: nobody can overflow.
    assert!(fan.slow_ids.is_empty(), "a subscriber was dropped as slow");
    if let Some(ring) = fan.ring.take() {
        ring.wake_parked();
    }
    usize::try_from(fan.delivered).expect("a handful of receivers")
}

/// Unsubscribes the way a dropped `Subscription` does: close the queue (discarding), then
/// unregister.
fn unsubscribe(registry: &Registry, slot: &Slot) {
    slot.queue.close_discarding(EndReason::Dropped);
    registry.unsubscribe(slot.id);
}

/// Everything waiting for `slot` in its rings and queue, as labels; empty once it is closed.
fn received(slot: &Slot) -> Vec<String> {
    let drained = next_batch(slot, &mut View::new(slot), || u64::MAX, Limits::ALL, None);
    drained
        .map(|d| match &d.run {
            Some(run) => labels(run.frames()),
            None => labels(&d.frames),
        })
        .unwrap_or_default()
}

/// How many frames wait for `slot` (its rings and its queue).
fn waiting(slot: &Slot) -> usize {
    slot.queue.len() + slot.ring_waiting()
}

/// Why `slot`'s stream ended, once it has and nothing is left to hand over.
fn ended(slot: &Slot) -> Option<EndReason> {
    match next_batch(slot, &mut View::new(slot), || u64::MAX, Limits::ALL, None) {
        Err(Stop::Ended(reason)) => Some(reason),
        _ => None,
    }
}

/// The ids of every registered subscriber, in order.
fn all_ids(registry: &Registry) -> Vec<u64> {
    registry.subscribers().values().iter().map(|s| s.id).collect()
}

/// The ids of `topic`'s subscribers, in order; `None` when the topic does not exist.
fn topic_ids(registry: &Registry, topic: &str) -> Option<Vec<u64>> {
    registry.topic(topic).map(|t| t.subscribers.load().values().iter().map(|s| s.id).collect())
}

/// `xs` is a suffix of `of`.
fn is_suffix(xs: &[String], of: &[&str]) -> bool {
    xs.len() <= of.len() && xs.iter().zip(&of[of.len() - xs.len()..]).all(|(x, o)| x == o)
}

/// A publisher sends e1 then e2 to a topic while a subscriber is added (creating the topic): it
/// receives a suffix of [e1, e2] (no gap, no duplicate, no reordering), and the publisher's
/// counts say the same.
#[test]
fn loom_registry_publish_vs_subscribe_sees_a_suffix() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let registry = Arc::new(Registry::new());
        let a = slot(1);
        let (e1, te1) = frame("e1");
        let (e2, te2) = frame("e2");

        let (r, s) = (registry.clone(), a.clone());
        let subscriber = thread::spawn(move || subscribe(&r, &s, "t"));
        let n1 = publish(&registry, "t", 1, &e1);
        let n2 = publish(&registry, "t", 2, &e2);
        subscriber.join().unwrap();

        let got = received(&a);
        assert!(is_suffix(&got, &["e1", "e2"]), "{got:?}");
        assert_eq!((n1, n2), (usize::from(got.len() == 2), usize::from(!got.is_empty())));
        assert_eq!(topic_ids(&registry, "t"), Some(vec![1]));

        drop((e1, e2));
        drop(registry);
        assert_eq!(Arc::strong_count(&a), 1, "the registry still holds the slot");
        drop(a);
        assert_released(&[&te1, &te2]);
        OUTCOMES.record(got.join(","));
    });
    OUTCOMES.assert_reached(&["", "e2", "e1,e2"]);
}

/// A publisher sends e1, e2 while the only subscriber leaves: nothing stays queued for it once
/// the unsubscribe returned (and nothing enters later), its id is gone from every map, the topic
/// is gone, and every reference to the slot and the frames is dropped.
#[test]
fn loom_registry_publish_vs_unsubscribe_leaves_nothing() {
    loom::model(|| {
        let registry = Arc::new(Registry::new());
        let a = slot(1);
        subscribe(&registry, &a, "t");
        let (e1, te1) = frame("e1");
        let (e2, te2) = frame("e2");

        let (r, s) = (registry.clone(), a.clone());
        let leaver = thread::spawn(move || {
            unsubscribe(&r, &s);
            // Right after the unsubscribe returned, and again after the publisher is done.
            waiting(&s)
        });
        publish(&registry, "t", 1, &e1);
        publish(&registry, "t", 2, &e2);
        assert_eq!(leaver.join().unwrap(), 0);

        assert_eq!(waiting(&a), 0, "a frame reached the slot after the unsubscribe");
        assert_eq!(ended(&a), Some(EndReason::Dropped));
        assert_eq!(all_ids(&registry), Vec::<u64>::new());
        assert_eq!(topic_ids(&registry, "t"), None);
        assert_eq!(registry.topic_count(), 0);
        assert_eq!(Arc::strong_count(&a), 1, "a snapshot still holds the slot");
        drop((e1, e2));
        assert_released(&[&te1, &te2]);
    });
}

/// Two subscribes to one topic (which neither finds existing): both are present afterwards, on
/// the topic and in the map of all subscribers, and both receive the next publish.
#[test]
fn loom_registry_subscribe_vs_subscribe_keeps_both() {
    loom::model(|| {
        let registry = Arc::new(Registry::new());
        let a = slot(1);
        let b = slot(2);

        let (r, s) = (registry.clone(), a.clone());
        let first = thread::spawn(move || subscribe(&r, &s, "t"));
        subscribe(&registry, &b, "t");
        first.join().unwrap();

        assert_eq!(all_ids(&registry), [1, 2]);
        assert_eq!(topic_ids(&registry, "t"), Some(vec![1, 2]));
        assert_eq!(registry.topic_count(), 1);
        let (e, te) = frame("e");
        assert_eq!(publish(&registry, "t", 1, &e), 2);
        assert_eq!((received(&a), received(&b)), (vec!["e".into()], vec!["e".into()]));
        drop(e);
        // The topic's ring keeps what was read until a later publish trims it; the ring goes
        // with the registry's topic and its readers' feeds (nothing points back at a slot, so
        // no cycle keeps it).
        drop(registry);
        drop((a, b));
        assert_released(&[&te]);
    });
}

/// A subscribe (A) racing an unsubscribe (B) on the same topic, where B's leaving may remove the
/// topic A is joining: afterwards A is present, B is gone everywhere and not resurrected, and
/// only A receives the next publish.
#[test]
fn loom_registry_subscribe_vs_unsubscribe_both_visible() {
    loom::model(|| {
        let registry = Arc::new(Registry::new());
        let a = slot(1);
        let b = slot(2);
        subscribe(&registry, &b, "t");

        let (r, s) = (registry.clone(), a.clone());
        let joiner = thread::spawn(move || subscribe(&r, &s, "t"));
        let removed = registry.unsubscribe(b.id);
        assert!(removed.is_some_and(|r| Arc::ptr_eq(&r.slot, &b) && r.left == ["t".into()]));
        joiner.join().unwrap();

        assert_eq!(all_ids(&registry), [1]);
        assert_eq!(topic_ids(&registry, "t"), Some(vec![1]));
        assert_eq!(Arc::strong_count(&b), 1, "B is still referenced");
        let (e, te) = frame("e");
        assert_eq!(publish(&registry, "t", 1, &e), 1);
        assert_eq!(received(&a), ["e"]);
        assert_eq!(received(&b), Vec::<String>::new());
        drop(e);
        drop(registry);
        drop(a);
        assert_released(&[&te]);
    });
}

/// A pattern subscribe racing a publish to a topic nobody named yet: if the subscribe had
/// returned before the publish began, the event is delivered; it is never delivered twice, and
/// the next publish (after both) is delivered through the topic the first one may have created.
#[test]
fn loom_registry_pattern_subscribe_vs_publish_to_new_topic() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let registry = Arc::new(Registry::new());
        let a = slot(1);
        let done = Arc::new(AtomicBool::new(false));
        let (e1, te1) = frame("e1");
        let (e2, te2) = frame("e2");

        let (r, s, d) = (registry.clone(), a.clone(), done.clone());
        let subscriber = thread::spawn(move || {
            let patterns = vec![Pattern::new("price:*").unwrap()];
            r.subscribe(&s, Vec::new(), patterns, None, None, usize::MAX).unwrap();
            // SeqCst: the publisher reads it before it starts; the flag only records "returned
            // before", the registry's own synchronisation must do the rest.
            d.store(true, Ordering::SeqCst);
        });
        let subscribed_before = done.load(Ordering::SeqCst);
        let n1 = publish(&registry, "price:x", 1, &e1);
        subscriber.join().unwrap();

        let got = received(&a);
        OUTCOMES.record(format!("before {subscribed_before}, got {got:?}"));
        assert_eq!(got.len(), n1);
        if subscribed_before {
            assert_eq!(got, ["e1"], "missed although subscribed first");
        }
        assert!(got.is_empty() || got == ["e1"], "{got:?}");
        if let Some(ids) = topic_ids(&registry, "price:x") {
            assert_eq!(ids, [1]);
        }
        assert_eq!(publish(&registry, "price:x", 2, &e2), 1);
        assert_eq!(received(&a), ["e2"]);
        assert_eq!(topic_ids(&registry, "price:x"), Some(vec![1]));

        assert!(registry.unsubscribe(a.id).is_some());
        assert_eq!(registry.topic_count(), 0);
        assert_eq!(Arc::strong_count(&a), 1);
        drop((e1, e2));
        assert_released(&[&te1, &te2]);
    });
    OUTCOMES.assert_reached(&[
        "before true, got [\"e1\"]",
        "before false, got [\"e1\"]",
        "before false, got []",
    ]);
}

/// The seam of a topic that is removed and created again: B, its only subscriber, leaves while A
/// joins and a publisher sends e1, e2, possibly through the removed topic's state. A still gets
/// a suffix of [e1, e2], B gets nothing after it left, and the topic ends with A alone.
#[test]
fn loom_registry_publish_across_topic_removal_and_recreation() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let registry = Arc::new(Registry::new());
        let a = slot(1);
        let b = slot(2);
        subscribe(&registry, &b, "t");
        let (e1, te1) = frame("e1");
        let (e2, te2) = frame("e2");

        let (r, s) = (registry.clone(), b.clone());
        let leaver = thread::spawn(move || unsubscribe(&r, &s));
        let (r, s) = (registry.clone(), a.clone());
        let joiner = thread::spawn(move || subscribe(&r, &s, "t"));
        publish(&registry, "t", 1, &e1);
        publish(&registry, "t", 2, &e2);
        leaver.join().unwrap();
        joiner.join().unwrap();

        let got = received(&a);
        assert!(is_suffix(&got, &["e1", "e2"]), "{got:?}");
        assert_eq!(ended(&b), Some(EndReason::Dropped));
        assert_eq!(all_ids(&registry), [1]);
        assert_eq!(topic_ids(&registry, "t"), Some(vec![1]));
        assert_eq!(Arc::strong_count(&b), 1);
        drop((e1, e2));
        drop(registry);
        drop(a);
        assert_released(&[&te1, &te2]);
        OUTCOMES.record(got.join(","));
    });
    OUTCOMES.assert_reached(&["", "e2", "e1,e2"]);
}
