//! Models of the shared per-topic rings through the engine (`Shared`): publishers appending
//! and waking parked readers, racing readers that drain, park, merge several rings in sequence
//! order, and fall behind.

use std::future::poll_fn;
use std::task::Poll;

use loom::thread;

use super::{block_on, Outcomes};
use crate::hub::{Config, Shared, Subscribe};
use crate::queue::{EndReason, SlowPolicy};
use crate::subscription::Subscription;
use crate::sync::Arc;
use crate::Event;

/// Engine state with bounds of `capacity` frames under `policy`, no timer, no lag event.
fn shared(capacity: usize, policy: SlowPolicy) -> Arc<Shared> {
    let config =
        Config { capacity, policy, heartbeat: None, lag_event: false, ..Config::default() };
    Arc::new(Shared::new(config))
}

/// Publishes `data` to `topic`.
fn publish(shared: &Arc<Shared>, topic: &str, data: &str) {
    Shared::publish(shared, topic, Event::new(data)).expect("open");
}

/// The data of a frame (`data: x\n\n` is `x`).
fn data(frame: &[u8]) -> String {
    let text = std::str::from_utf8(frame).expect("UTF-8");
    text.trim_end().trim_start_matches("data: ").to_string()
}

/// Waits (parking between polls) until `count` frames have arrived or the stream ends; the
/// frames' data, in order, and the end reason if it ended.
fn wait_for(sub: &mut Subscription, count: usize) -> (Vec<String>, Option<EndReason>) {
    let mut seen = Vec::new();
    let ended = block_on(poll_fn(|cx| loop {
        match sub.poll_batch(Some(cx)) {
            Poll::Ready(Some(batch)) => {
                seen.extend(batch.frames().iter().map(|f| data(f)));
                if seen.len() >= count {
                    return Poll::Ready(None);
                }
            }
            Poll::Ready(None) => return Poll::Ready(sub.end_reason()),
            Poll::Pending => return Poll::Pending,
        }
    }));
    (seen, ended)
}

/// A reader of two topics parked in `block_on` while a publisher sends e1 to one and e2 to the
/// other: it is woken (a lost wake-up is a deadlock loom reports) and gets both, in publish
/// order, although they come from two rings it drains one after the other.
#[test]
fn loom_ring_two_rings_merge_in_publish_order_without_lost_wakeups() {
    loom::model(|| {
        let shared = shared(4, SlowPolicy::Disconnect);
        let mut sub =
            Shared::subscribe(&shared, Subscribe::new().with_topics(["a", "b"])).expect("open");
        let s = shared.clone();
        let publisher = thread::spawn(move || {
            publish(&s, "b", "e1");
            publish(&s, "a", "e2");
        });
        let (seen, ended) = wait_for(&mut sub, 2);
        publisher.join().unwrap();
        assert_eq!((seen, ended), (vec!["e1".to_string(), "e2".to_string()], None));
    });
}

/// A pattern reader parked on the rings it has while a publish creates a topic its pattern
/// matches (a ring it never parked on): it is still woken and gets the event.
#[test]
fn loom_ring_a_new_matching_topic_wakes_a_parked_pattern_reader() {
    loom::model(|| {
        let shared = shared(4, SlowPolicy::Disconnect);
        let mut sub =
            Shared::subscribe(&shared, Subscribe::new().with_pattern("p:*")).expect("open");
        let s = shared.clone();
        let publisher = thread::spawn(move || publish(&s, "p:1", "e1"));
        let (seen, ended) = wait_for(&mut sub, 1);
        publisher.join().unwrap();
        assert_eq!((seen, ended), (vec!["e1".to_string()], None));
    });
}

/// A reader with a bound of one drains while a publisher sends e1 and e2: it either keeps up
/// (gets both) or falls more than one behind and is dropped as slow, found by the publisher's
/// scan or by its own drain, whichever comes first; never both, never a gap, and the slow
/// disconnect is counted exactly when it happened.
#[test]
fn loom_ring_scan_vs_drain_drops_only_a_reader_that_fell_behind() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let shared = shared(1, SlowPolicy::Disconnect);
        let mut sub = Shared::subscribe(&shared, Subscribe::from("t")).expect("open");
        let s = shared.clone();
        let publisher = thread::spawn(move || {
            publish(&s, "t", "e1");
            publish(&s, "t", "e2");
        });
        let mut seen = Vec::new();
        let mut ended = None;
        for _ in 0..2 {
            match sub.try_recv() {
                Ok(Some(batch)) => seen.extend(batch.frames().iter().map(|f| data(f))),
                Ok(None) => {}
                Err(reason) => {
                    ended = Some(reason);
                    break;
                }
            }
        }
        publisher.join().unwrap();
        if ended.is_none() {
            loop {
                match sub.try_recv() {
                    Ok(Some(batch)) => seen.extend(batch.frames().iter().map(|f| data(f))),
                    Ok(None) => break,
                    Err(reason) => {
                        ended = Some(reason);
                        break;
                    }
                }
            }
        }
        let slow = shared.stats().slow_disconnects;
        match ended {
            None => {
                assert_eq!(seen, ["e1", "e2"]);
                assert_eq!(slow, 0);
                OUTCOMES.record("kept up");
            }
            Some(EndReason::Slow) => {
                assert!(seen.is_empty() || seen == ["e1"], "{seen:?}");
                assert_eq!(slow, 1);
                OUTCOMES.record("dropped");
            }
            Some(other) => panic!("ended as {other:?}"),
        }
        drop(sub);
        assert_eq!(shared.stats().subscribers, 0);
    });
    OUTCOMES.assert_reached(&["kept up", "dropped"]);
}

/// Two publishers each send one event to a topic while its reader drains and parks between
/// them: whichever takes the parked list first, the other's take either finds the reader
/// listed again or came before the reader's park, whose lock then shows the reader that event.
/// It gets both and never hangs (this model caught a lock-free "already parked" shortcut).
#[test]
fn loom_ring_a_reader_parks_again_between_two_racing_wakes() {
    loom::model(|| {
        let shared = shared(4, SlowPolicy::Disconnect);
        let mut sub = Shared::subscribe(&shared, Subscribe::from("t")).expect("open");
        let (s1, s2) = (shared.clone(), shared.clone());
        let first = thread::spawn(move || publish(&s1, "t", "e1"));
        let second = thread::spawn(move || publish(&s2, "t", "e2"));
        let (mut seen, ended) = wait_for(&mut sub, 2);
        first.join().unwrap();
        second.join().unwrap();
        seen.sort();
        assert_eq!((seen, ended), (vec!["e1".to_string(), "e2".to_string()], None));
    });
}

/// A parked reader leaves its topic while a publish wakes the parked list: the reader that
/// stays is woken and gets the event, and the one that left is gone from the topic's counts.
#[test]
fn loom_ring_a_leaver_racing_a_wake_leaves_the_others_woken() {
    loom::model(|| {
        let shared = shared(4, SlowPolicy::Disconnect);
        let mut stays = Shared::subscribe(&shared, Subscribe::from("t")).expect("open");
        let mut leaves = Shared::subscribe(&shared, Subscribe::from("t")).expect("open");
        // Park the leaver: its first poll finds nothing and lists it.
        assert!(block_on(poll_fn(|cx| Poll::Ready(leaves.poll_batch(Some(cx)).is_pending()))));
        let leaver = thread::spawn(move || drop(leaves));
        let s = shared.clone();
        let publisher = thread::spawn(move || publish(&s, "t", "e1"));
        let (seen, ended) = wait_for(&mut stays, 1);
        leaver.join().unwrap();
        publisher.join().unwrap();
        assert_eq!((seen, ended), (vec!["e1".to_string()], None));
        assert_eq!(shared.stats().subscribers, 1);
    });
}
