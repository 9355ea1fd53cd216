//! Models of the per-subscriber queue: push, drain and close, wake-ups, the slow-client policies
//! and heartbeats; and of the reader's lock-free look at one ring (`reader.rs`) racing a send
//! into the queue, a publish and a disconnect.

use std::future::poll_fn;
use std::task::Poll;

use bytes::Bytes;
use loom::thread;

use super::{assert_released, block_on, flag_waker, frame, labels, Outcomes};
use crate::engine::queue::{FrameKeys, Limits, Pushed, Queue, SlowPolicy};
use crate::error::EndReason;
use crate::sync::Arc;

/// Pushes each frame in turn; the outcomes, in the same order.
fn push_all(queue: &Queue, frames: &[Bytes]) -> Vec<Pushed> {
    let keys = FrameKeys::default();
    // Each pusher's own order is all a queue keeps; the sequence numbers only matter to
    // merges with rings, which these models have none of.
    frames.iter().map(|f| queue.push(0, f, &keys)).collect()
}

/// Drains everything left: the labels and the lag reported with them, then why it ended (`None`
/// if it is still open).
fn drain_rest(queue: &Queue) -> (Vec<String>, u64, Option<EndReason>) {
    let mut seen = Vec::new();
    let mut lagged = 0;
    loop {
        match queue.drain(Limits::ALL, None) {
            Ok(drained) if drained.frames.is_empty() => {
                return (seen, lagged + drained.lagged, None);
            }
            Ok(drained) => {
                lagged += drained.lagged;
                seen.extend(labels(&drained.frames));
            }
            Err(reason) => return (seen, lagged, Some(reason)),
        }
    }
}

/// How many of `outcomes` are `which`.
fn count(outcomes: &[Pushed], which: Pushed) -> usize {
    outcomes.iter().filter(|&&o| o == which).count()
}

/// A consumer parked in `block_on` while two producers push: it sees each frame at most once, in
/// each producer's order, and what it sees plus the lag it is told about is exactly what was
/// pushed. `block_on` parks until woken, so a lost wake-up is a deadlock loom reports.
#[test]
fn loom_queue_drain_vs_two_pushers_sees_each_frame_once_in_order() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let queue = Arc::new(Queue::new(2, SlowPolicy::DropOldest));
        let (a1, ta1) = frame("a1");
        let (a2, ta2) = frame("a2");
        let (b1, tb1) = frame("b1");

        let q = queue.clone();
        let pa = thread::spawn(move || push_all(&q, &[a1, a2]));
        let q = queue.clone();
        let pb = thread::spawn(move || push_all(&q, &[b1]));

        let mut seen: Vec<String> = Vec::new();
        let mut lagged = 0;
        block_on(poll_fn(|cx| loop {
            match queue.drain(Limits::ALL, Some(cx.waker())) {
                Ok(drained) => {
                    lagged += drained.lagged;
                    let empty = drained.frames.is_empty();
                    seen.extend(labels(&drained.frames));
                    if seen.len() as u64 + lagged == 3 {
                        return Poll::Ready(());
                    }
                    if empty {
                        return Poll::Pending;
                    }
                }
                Err(reason) => panic!("the queue ended: {reason:?}"),
            }
        }));

        let outcomes: Vec<Pushed> =
            pa.join().unwrap().into_iter().chain(pb.join().unwrap()).collect();
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "a frame was handed over twice: {seen:?}");
        let a: Vec<&String> = seen.iter().filter(|l| l.starts_with('a')).collect();
        assert!(a == ["a1", "a2"] || a.len() < 2, "producer a reordered: {seen:?}");
        assert_eq!(count(&outcomes, Pushed::Evicted) as u64, lagged, "{outcomes:?} {seen:?}");
        assert_eq!(count(&outcomes, Pushed::Disconnected), 0);
        assert_eq!(drain_rest(&queue), (vec![], 0, None));
        drop(queue);
        assert_released(&[&ta1, &ta2, &tb1]);
        OUTCOMES.record(format!("{} lagged {lagged}", seen.join(",")));
    });
    OUTCOMES.assert_reached(&[
        "a1,a2,b1 lagged 0",
        "a1,b1,a2 lagged 0",
        "b1,a1,a2 lagged 0",
        "a2,b1 lagged 1",
    ]);
}

/// A drain that found nothing registered its waker; the push that follows must wake it, and a
/// drain that found a frame registered nothing. The consumer re-polls once with a second waker,
/// as an executor moving the task would: the push must wake the latest one.
#[test]
fn loom_queue_push_wakes_the_waker_of_an_empty_drain() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, SlowPolicy::Disconnect));
        let (x, tx) = frame("x");
        let q = queue.clone();
        let pusher = thread::spawn(move || push_all(&q, &[x]));

        let (flag1, waker1) = flag_waker();
        let (flag2, waker2) = flag_waker();
        let mut seen = labels(&queue.drain(Limits::ALL, Some(&waker1)).unwrap().frames);
        let mut last = &flag1;
        if seen.is_empty() {
            seen = labels(&queue.drain(Limits::ALL, Some(&waker2)).unwrap().frames);
            last = &flag2;
        }
        assert_eq!(pusher.join().unwrap(), [Pushed::Queued]);

        OUTCOMES.record(match (seen.is_empty(), std::ptr::eq(last, &flag1)) {
            (true, _) => "woken",
            (false, true) => "found at once",
            (false, false) => "found on the second drain",
        });
        if seen.is_empty() {
            // Both drains came before the push: it must have woken the latest waker.
            assert!(flag2.woken(), "lost wake-up");
            assert!(!flag1.woken(), "woke a replaced waker");
            assert_eq!(drain_rest(&queue), (vec!["x".to_string()], 0, None));
        } else {
            assert_eq!(seen, ["x"]);
            assert!(!last.woken(), "woken though the drain found a frame");
        }
        drop(queue);
        assert_released(&[&tx]);
    });
    OUTCOMES.assert_reached(&["woken", "found at once", "found on the second drain"]);
}

/// Close wakes a parked consumer too, and the consumer then ends with the close's reason.
#[test]
fn loom_queue_close_wakes_a_parked_consumer() {
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, SlowPolicy::Disconnect));
        let q = queue.clone();
        let closer = thread::spawn(move || q.close_after(EndReason::Shutdown, 0, None));

        let (flag, waker) = flag_waker();
        let first = queue.drain(Limits::ALL, Some(&waker));
        assert!(closer.join().unwrap());
        match first {
            Ok(drained) => {
                assert!(drained.frames.is_empty());
                assert!(flag.woken(), "lost wake-up on close");
            }
            Err(reason) => {
                assert_eq!(reason, EndReason::Shutdown);
                assert!(!flag.woken());
            }
        }
        assert_eq!(drain_rest(&queue), (vec![], 0, Some(EndReason::Shutdown)));
    });
}

/// A close with a goodbye frame racing two pushes: the pushes that returned `Queued` are
/// delivered, in order, before the goodbye; after the close nothing enters (`Closed` from then
/// on), and the stream ends after the goodbye.
#[test]
fn loom_queue_close_racing_push_admits_nothing_after() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let queue = Arc::new(Queue::new(2, SlowPolicy::Disconnect));
        let (x1, tx1) = frame("x1");
        let (x2, tx2) = frame("x2");
        let (bye, tbye) = frame("bye");

        let q = queue.clone();
        let pusher = thread::spawn(move || push_all(&q, &[x1, x2]));
        assert!(queue.close_after(EndReason::Shutdown, 0, Some(&bye)));
        drop(bye);
        let outcomes = pusher.join().unwrap();

        let queued = count(&outcomes, Pushed::Queued);
        assert_eq!(queued + count(&outcomes, Pushed::Closed), 2, "{outcomes:?}");
        assert!(
            outcomes[..queued].iter().all(|&o| o == Pushed::Queued),
            "a push was accepted after one was refused: {outcomes:?}"
        );
        let mut expected: Vec<String> =
            ["x1", "x2"][..queued].iter().map(|s| s.to_string()).collect();
        expected.push("bye".into());
        assert_eq!(drain_rest(&queue), (expected, 0, Some(EndReason::Shutdown)));
        drop(queue);
        assert_released(&[&tx1, &tx2, &tbye]);
        OUTCOMES.record(format!("queued {queued}"));
    });
    OUTCOMES.assert_reached(&["queued 0", "queued 1", "queued 2"]);
}

/// The close of a dropped subscription (discarding) racing a push: afterwards the queue holds
/// nothing and every frame is released before the queue itself goes, so no frame entered after
/// the close.
#[test]
fn loom_queue_discarding_close_racing_push_keeps_nothing() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let queue = Arc::new(Queue::new(2, SlowPolicy::Disconnect));
        let (x1, tx1) = frame("x1");
        let (x2, tx2) = frame("x2");

        let q = queue.clone();
        let pusher = thread::spawn(move || push_all(&q, &[x1, x2]));
        assert!(queue.close_discarding(EndReason::Dropped));
        let outcomes = pusher.join().unwrap();

        let queued = count(&outcomes, Pushed::Queued);
        assert!(outcomes[..queued].iter().all(|&o| o == Pushed::Queued), "{outcomes:?}");
        assert_eq!(queued + count(&outcomes, Pushed::Closed), 2, "{outcomes:?}");
        assert_eq!(queue.len(), 0);
        assert_released(&[&tx1, &tx2]);
        assert_eq!(drain_rest(&queue), (vec![], 0, Some(EndReason::Dropped)));
        OUTCOMES.record(format!("queued {queued}"));
    });
    OUTCOMES.assert_reached(&["queued 0", "queued 1", "queued 2"]);
}

/// `Disconnect`, capacity 1, a consumer that never reads, two publishers with three frames:
/// exactly one push is queued, exactly one closes the subscriber as slow, the rest find it
/// closed; nobody blocks, and the queue is freed at the moment of the slow close.
#[test]
fn loom_queue_disconnect_two_publishers_close_once() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, SlowPolicy::Disconnect));
        let (a1, ta1) = frame("a1");
        let (a2, ta2) = frame("a2");
        let (b1, tb1) = frame("b1");

        let q = queue.clone();
        let pa = thread::spawn(move || push_all(&q, &[a1, a2]));
        let q = queue.clone();
        let pb = thread::spawn(move || push_all(&q, &[b1]));
        let a = pa.join().unwrap();
        let b = pb.join().unwrap();

        let all: Vec<Pushed> = a.iter().chain(&b).copied().collect();
        assert_eq!(count(&all, Pushed::Queued), 1, "{a:?} {b:?}");
        assert_eq!(count(&all, Pushed::Disconnected), 1, "{a:?} {b:?}");
        assert_eq!(count(&all, Pushed::Closed), 1, "{a:?} {b:?}");
        // Producer a's second push cannot be the one queued: its first was earlier.
        assert_ne!(a[1], Pushed::Queued, "{a:?} {b:?}");
        assert_released(&[&ta1, &ta2, &tb1]);
        assert_eq!(drain_rest(&queue), (vec![], 0, Some(EndReason::Slow)));
        OUTCOMES.record(format!("{a:?} {b:?}"));
    });
    OUTCOMES.assert_reached(&[
        "[Queued, Disconnected] [Closed]",
        "[Queued, Closed] [Disconnected]",
        "[Disconnected, Closed] [Queued]",
    ]);
}

/// A push that finds the queue full (`Disconnect`) racing the subscriber's own drop: the
/// subscriber is closed exactly once, as slow or as dropped, and nothing is left queued.
#[test]
fn loom_queue_slow_close_vs_own_drop_closes_once() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, SlowPolicy::Disconnect));
        let (a0, ta0) = frame("a0");
        let (a1, ta1) = frame("a1");
        assert_eq!(push_all(&queue, &[a0]), [Pushed::Queued]);

        let q = queue.clone();
        let pusher = thread::spawn(move || push_all(&q, &[a1]));
        let dropped = queue.close_discarding(EndReason::Dropped);
        let pushed = pusher.join().unwrap()[0];

        match pushed {
            Pushed::Disconnected => {
                assert!(!dropped, "closed twice");
                assert_eq!(drain_rest(&queue), (vec![], 0, Some(EndReason::Slow)));
            }
            Pushed::Closed => {
                assert!(dropped);
                assert_eq!(drain_rest(&queue), (vec![], 0, Some(EndReason::Dropped)));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_released(&[&ta0, &ta1]);
        OUTCOMES.record(format!("{pushed:?}"));
    });
    OUTCOMES.assert_reached(&["Disconnected", "Closed"]);
}

/// `DropOldest`, capacity 1, two publishers, a consumer that reads only at the end: what it
/// gets plus the lag it is told about is exactly what was pushed, the lag equals the evictions,
/// and the survivor is the last push of one of the producers.
#[test]
fn loom_queue_drop_oldest_delivered_plus_lagged_is_exact() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, SlowPolicy::DropOldest));
        let (a1, ta1) = frame("a1");
        let (a2, ta2) = frame("a2");
        let (b1, tb1) = frame("b1");

        let q = queue.clone();
        let pa = thread::spawn(move || push_all(&q, &[a1, a2]));
        let q = queue.clone();
        let pb = thread::spawn(move || push_all(&q, &[b1]));
        let a = pa.join().unwrap();
        let b = pb.join().unwrap();

        let all: Vec<Pushed> = a.iter().chain(&b).copied().collect();
        assert_eq!(count(&all, Pushed::Queued), 1, "{all:?}");
        assert_eq!(count(&all, Pushed::Evicted), 2, "{all:?}");
        let (seen, lagged, ended) = drain_rest(&queue);
        assert_eq!(ended, None);
        assert_eq!(seen.len() as u64 + lagged, 3);
        assert_eq!(lagged, 2);
        assert!(seen == ["a2"] || seen == ["b1"], "{seen:?}");
        drop(queue);
        assert_released(&[&ta1, &ta2, &tb1]);
        OUTCOMES.record(seen.concat());
    });
    OUTCOMES.assert_reached(&["a2", "b1"]);
}

/// A heartbeat tick racing an event into a `Disconnect` queue of capacity 1: the event is always
/// queued (never refused or turned into a slow close by the heartbeat) and is what the consumer
/// gets (a heartbeat queued first is displaced without counting as a loss).
#[test]
fn loom_queue_heartbeat_never_displaces_an_event() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, SlowPolicy::Disconnect));
        let (hb, thb) = frame("hb");
        let (e1, te1) = frame("e1");

        let q = queue.clone();
        let rings_idle = true;
        let ticker = thread::spawn(move || q.push_heartbeat(&hb, rings_idle));
        let pushed = push_all(&queue, &[e1]);
        let ticked = ticker.join().unwrap();

        assert_eq!(pushed, [Pushed::Queued]);
        assert_eq!(drain_rest(&queue), (vec!["e1".to_string()], 0, None));
        drop(queue);
        assert_released(&[&thb, &te1]);
        OUTCOMES.record(format!("ticked {ticked}"));
    });
    OUTCOMES.assert_reached(&["ticked true", "ticked false"]);
}

/// Ticks racing two events into a `DropOldest` queue of capacity 1: the second event evicts the
/// first (lag 1), a heartbeat evicted to make room is never counted as lag, and no heartbeat is
/// queued behind an event.
#[test]
fn loom_queue_heartbeat_never_counts_as_lag() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let queue = Arc::new(Queue::new(1, SlowPolicy::DropOldest));
        let (hb, thb) = frame("hb");
        let (e1, te1) = frame("e1");
        let (e2, te2) = frame("e2");

        let q = queue.clone();
        let rings_idle = true;
        let ticker = thread::spawn(move || {
            [q.push_heartbeat(&hb, rings_idle), q.push_heartbeat(&hb, rings_idle)]
        });
        let pushed = push_all(&queue, &[e1, e2]);
        let ticks = ticker.join().unwrap();

        assert_eq!(pushed, [Pushed::Queued, Pushed::Evicted]);
        // A heartbeat goes only into an empty queue after an idle tick: the second tick follows
        // either the first (which reset the idle flag or left a heartbeat) or an event.
        assert!(!ticks[1], "{ticks:?}");
        assert_eq!(drain_rest(&queue), (vec!["e2".to_string()], 1, None));
        drop(queue);
        assert_released(&[&thb, &te1, &te2]);
        OUTCOMES.record(format!("ticked {}", ticks[0]));
    });
    OUTCOMES.assert_reached(&["ticked true", "ticked false"]);
}

/// [`block_on`], yielding to the other threads before each poll that follows a wake: a poll
/// that finds an entry of a publish still in progress wakes itself to be polled again (it
/// spins until that publish completes), and loom needs the spinning thread to yield.
fn block_on_yielding<F: std::future::Future>(future: F) -> F::Output {
    let unpark = std::sync::Arc::new(super::Unpark(loom::sync::Notify::new()));
    let waker = std::task::Waker::from(unpark.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        unpark.0.wait();
        thread::yield_now();
    }
}

/// The data of an encoded frame (`data: x\n\n` is `x`).
fn data(frame: &[u8]) -> String {
    let text = std::str::from_utf8(frame).expect("UTF-8");
    text.trim_end().trim_start_matches("data: ").to_string()
}

/// A one-topic reader parked in `block_on` (so it takes the lock-free look whenever its queue
/// is empty) while one thread sends d1 to its queue and then publishes e2 to its topic: it
/// gets both, d1 first (sequence order across its queue and its ring), and is never left
/// parked (a lost wake-up is a deadlock loom reports; the loop yields only after a wake). The lock-free look reads the watermark
/// before the queue's "empty" flag; read the other way round, it can see the flag from before
/// d1 was pushed and the watermark after e2 was published, and hand over e2 first.
#[test]
fn loom_queue_lock_free_look_vs_send_and_publish_keeps_order_and_wakes() {
    use crate::hub::{Config, Shared, Subscribe};
    use crate::Event;

    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let config = Config {
            capacity: 4,
            policy: SlowPolicy::Disconnect,
            heartbeat: None,
            lag_event: false,
            ..Config::default()
        };
        let shared = Arc::new(Shared::new(config));
        let mut sub = Shared::subscribe(&shared, Subscribe::from("t")).expect("open");
        let id = sub.id();
        let s = shared.clone();
        let sender = thread::spawn(move || {
            Shared::send_to_many(&s, &[id], Event::new("d1")).expect("open");
            Shared::publish(&s, "t", Event::new("e2")).expect("open");
        });
        let mut batches: Vec<Vec<String>> = Vec::new();
        block_on_yielding(poll_fn(|cx| loop {
            match sub.poll_batch(Some(cx)) {
                Poll::Ready(Some(batch)) => {
                    batches.push(batch.frames().iter().map(|f| data(f)).collect());
                    if batches.iter().map(Vec::len).sum::<usize>() >= 2 {
                        return Poll::Ready(());
                    }
                }
                Poll::Ready(None) => panic!("ended: {:?}", sub.end_reason()),
                Poll::Pending => return Poll::Pending,
            }
        }));
        sender.join().unwrap();
        assert_eq!(batches.concat(), ["d1", "e2"], "{batches:?}");
        let shape: Vec<String> = batches.iter().map(|b| b.join(",")).collect();
        OUTCOMES.record(shape.join(" | "));
    });
    // "d1 | e2": e2 came through the lock-free look, after d1 emptied the queue.
    OUTCOMES.assert_reached(&["d1,e2", "d1 | e2"]);
}

/// A one-topic reader taking its lock-free look while `Hub::disconnect` (`Shared::end`) takes
/// what its ring holds into its queue and a publish follows the disconnect: it gets e1 exactly
/// once (from its ring or from its queue, whichever claimed it first), never e2 (published after
/// the disconnect), and then ends `Disconnected`.
#[test]
fn loom_queue_lock_free_look_vs_disconnect_hands_each_entry_over_once() {
    use crate::error::EndReason;
    use crate::hub::{Config, Shared, Subscribe};
    use crate::Event;

    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let config = Config {
            capacity: 4,
            policy: SlowPolicy::Disconnect,
            heartbeat: None,
            lag_event: false,
            ..Config::default()
        };
        let shared = Arc::new(Shared::new(config));
        let mut sub = Shared::subscribe(&shared, Subscribe::from("t")).expect("open");
        // Keeps the topic and its ring alive after `sub` leaves, so e2 lands in the ring `sub`
        // may still be looking at.
        let _other = Shared::subscribe(&shared, Subscribe::from("t")).expect("open");
        Shared::publish(&shared, "t", Event::new("e1")).expect("open");
        let slot =
            shared.engine.registry.subscribers().get(sub.id().as_u64()).cloned().expect("live");
        let s = shared.clone();
        let closer = thread::spawn(move || {
            assert!(Shared::end(&s, &slot, EndReason::Disconnected));
            // Whether the close took e1 into the queue (or the reader had claimed it); a take
            // from the queue in between reads as the latter, which only labels the outcome.
            let absorbed = slot.queue.len() == 1;
            // In the ring (for `_other`) after the disconnect: a look of `sub` that still
            // reads the ring must not take it.
            let _ = Shared::publish(&s, "t", Event::new("e2"));
            absorbed
        });
        let mut seen = Vec::new();
        // Racing the close: finds e1 in the ring or the queue, or nothing yet (it loaded its
        // feeds after the close emptied them, and looked at its queue before the close).
        let first = sub.try_recv().expect("not ended before the close");
        seen.extend(first.iter().flat_map(|b| b.frames().iter().map(|f| data(f))));
        let absorbed = closer.join().unwrap();
        let mut result = sub.try_recv();
        loop {
            match result {
                Ok(Some(batch)) => seen.extend(batch.frames().iter().map(|f| data(f))),
                Ok(None) => panic!("disconnected, yet not ended after {seen:?}"),
                Err(reason) => {
                    assert_eq!(reason, EndReason::Disconnected);
                    break;
                }
            }
            result = sub.try_recv();
        }
        assert_eq!(seen, ["e1"]);
        OUTCOMES.record(if absorbed { "absorbed" } else { "read first" });
    });
    OUTCOMES.assert_reached(&["read first", "absorbed"]);
}
