//! Slow-client policies: a subscriber that cannot keep up never blocks the publisher or the
//! others, and never holds more than its bound.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::Stream;
use ssehub::{Batch, ConflateKey, EndReason, Event, Hub, SlowPolicy, Subscribe, Subscription};

fn hub() -> Hub {
    Hub::builder().with_heartbeat(None).build()
}

/// Every frame queued for `sub`, as text.
fn drain(sub: &mut Subscription) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(batch)) = sub.try_recv() {
        out.extend(frames(batch));
    }
    out
}

fn frames(batch: Batch) -> Vec<String> {
    batch.into_iter().map(|b| String::from_utf8(b.to_vec()).expect("utf-8 frames")).collect()
}

fn data(n: usize) -> Event {
    Event::new(n.to_string()).with_id(n.to_string())
}

#[test]
fn disconnect_drops_the_slow_client_and_spares_the_others() {
    let hub = hub();
    let mut slow = hub.subscribe(Subscribe::from("t").with_capacity(4)).unwrap();
    let mut fast = hub.subscribe(Subscribe::from("t").with_capacity(4)).unwrap();
    for n in 0..100 {
        hub.publish("t", data(n)).unwrap();
        // The fast client keeps up; the slow one never reads.
        assert_eq!(drain(&mut fast), vec![format!("id: {n}\ndata: {n}\n\n")]);
    }
    // The slow client's queue was freed when it overflowed (at the fifth event), and its
    // stream ends without handing over the stale frames.
    assert_eq!(slow.queued(), 0);
    assert!(matches!(slow.try_recv(), Err(EndReason::Slow)));
    assert_eq!(slow.end_reason(), Some(EndReason::Slow));
    let stats = hub.stats();
    assert_eq!(stats.slow_disconnects, 1);
    assert_eq!(stats.frames_delivered, 100 + 4);
    // It left the registry at once, before its owner dropped the stream (a writer blocked on a
    // full socket may not poll for a long time).
    assert_eq!(hub.subscriber_count(), 1);
    assert_eq!(hub.topic_subscriber_count("t"), 1);
    assert_eq!(hub.publish("t", data(100)).unwrap().receivers(), 1);
    drop(slow);
    assert_eq!(hub.subscriber_count(), 1);
}

#[test]
fn drop_oldest_keeps_the_newest_and_reports_the_lag() {
    let hub = hub();
    let mut sub = hub
        .subscribe(Subscribe::from("t").with_capacity(3).with_slow_policy(SlowPolicy::DropOldest))
        .unwrap();
    for n in 0..10 {
        hub.publish("t", data(n)).unwrap();
    }
    assert_eq!(sub.queued(), 3);
    let batch = sub.try_recv().unwrap().expect("a batch");
    assert_eq!(batch.lagged(), 7);
    assert_eq!(
        frames(batch),
        vec![
            "event: lagged\ndata: 7\n\n".to_string(),
            "id: 7\ndata: 7\n\n".to_string(),
            "id: 8\ndata: 8\n\n".to_string(),
            "id: 9\ndata: 9\n\n".to_string(),
        ]
    );
    let stats = hub.stats();
    assert_eq!(stats.frames_dropped, 7);
    assert_eq!(stats.slow_disconnects, 0);
    // The lag is reported once.
    hub.publish("t", data(10)).unwrap();
    let batch = sub.try_recv().unwrap().expect("a batch");
    assert_eq!(batch.lagged(), 0);
    assert_eq!(frames(batch), vec!["id: 10\ndata: 10\n\n".to_string()]);
}

#[test]
fn lag_event_can_be_turned_off() {
    let hub = Hub::builder().with_heartbeat(None).with_lag_event(false).build();
    let mut sub = hub
        .subscribe(Subscribe::from("t").with_capacity(1).with_slow_policy(SlowPolicy::DropOldest))
        .unwrap();
    hub.publish("t", data(1)).unwrap();
    hub.publish("t", data(2)).unwrap();
    let batch = sub.try_recv().unwrap().expect("a batch");
    assert_eq!(batch.lagged(), 1);
    assert_eq!(frames(batch), vec!["id: 2\ndata: 2\n\n".to_string()]);
}

#[test]
fn conflate_by_topic_keeps_the_latest_per_topic_in_order() {
    let hub = hub();
    let policy = SlowPolicy::Conflate { key: ConflateKey::Topic };
    let mut sub = hub
        .subscribe(
            Subscribe::new().with_pattern("price:*").with_slow_policy(policy).with_capacity(8),
        )
        .unwrap();
    hub.publish("price:A", Event::new("a1").with_id("1")).unwrap();
    hub.publish("price:B", Event::new("b1").with_id("2")).unwrap();
    hub.publish("price:A", Event::new("a2").with_id("3")).unwrap();
    hub.publish("price:C", Event::new("c1").with_id("4")).unwrap();
    hub.publish("price:A", Event::new("a3").with_id("5")).unwrap();
    // Replaced frames are removed and the newest appended, so ids stay increasing.
    assert_eq!(
        drain(&mut sub),
        vec!["id: 2\ndata: b1\n\n", "id: 4\ndata: c1\n\n", "id: 5\ndata: a3\n\n"]
    );
    let stats = hub.stats();
    assert_eq!(stats.frames_conflated, 2);
    assert_eq!(stats.frames_dropped, 0);
}

#[test]
fn conflate_by_event_name_and_by_explicit_key() {
    let hub = hub();
    let by_name = SlowPolicy::Conflate { key: ConflateKey::EventName };
    let by_key = SlowPolicy::Conflate { key: ConflateKey::Explicit };
    let mut named = hub.subscribe(Subscribe::from("m").with_slow_policy(by_name)).unwrap();
    let mut keyed = hub.subscribe(Subscribe::from("m").with_slow_policy(by_key)).unwrap();
    hub.publish("m", Event::new("1").with_event("bid").with_key("X")).unwrap();
    hub.publish("m", Event::new("2").with_event("ask").with_key("X")).unwrap();
    hub.publish("m", Event::new("3").with_event("bid").with_key("Y")).unwrap();
    hub.publish("m", Event::new("4")).unwrap();
    hub.publish("m", Event::new("5")).unwrap();
    assert_eq!(
        drain(&mut named),
        vec!["event: ask\ndata: 2\n\n", "event: bid\ndata: 3\n\n", "data: 4\n\n", "data: 5\n\n"]
    );
    assert_eq!(
        drain(&mut keyed),
        vec!["event: ask\ndata: 2\n\n", "event: bid\ndata: 3\n\n", "data: 4\n\n", "data: 5\n\n"]
    );
}

#[test]
fn conflate_with_a_full_queue_of_distinct_keys_drops_the_oldest() {
    let hub = hub();
    let policy = SlowPolicy::Conflate { key: ConflateKey::Topic };
    let mut sub = hub
        .subscribe(Subscribe::new().with_pattern("k:*").with_slow_policy(policy).with_capacity(2))
        .unwrap();
    for topic in ["k:1", "k:2", "k:3"] {
        hub.publish(topic, Event::new(topic)).unwrap();
    }
    let batch = sub.try_recv().unwrap().expect("a batch");
    assert_eq!(batch.lagged(), 1);
    assert_eq!(frames(batch)[1..], ["data: k:2\n\n", "data: k:3\n\n"]);
}

#[test]
fn a_subscriber_that_never_reads_holds_at_most_its_bound() {
    let hub = hub();
    let mut stuck = hub
        .subscribe(Subscribe::from("t").with_capacity(16).with_slow_policy(SlowPolicy::DropOldest))
        .unwrap();
    let mut reader = hub.subscribe("t").unwrap();
    for n in 0..10_000 {
        hub.publish("t", data(n)).unwrap();
        assert!(stuck.queued() <= 16);
        if n % 100 == 99 {
            assert_eq!(drain(&mut reader).len(), 100);
        }
    }
    assert_eq!(stuck.queued(), 16);
    // The loss is counted when the stream learns of it: its next batch reports the lag and
    // hands over the newest 16.
    let batch = stuck.try_recv().unwrap().expect("a batch");
    assert_eq!(batch.lagged(), 10_000 - 16);
    assert_eq!(batch.len(), 1 + 16);
    assert_eq!(hub.stats().frames_dropped, 10_000 - 16);
}

/// A waker that counts its wakes, so a test can tell a parked consumer was woken.
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn publish_never_waits_for_a_parked_consumer() {
    // A consumer parked on an empty queue (polled with a real waker until it returned
    // `Pending`), and a publisher on another thread: the publisher runs to completion although
    // the consumer is never polled in between, and the consumer's waker fires.
    let hub = hub();
    let mut sub = hub
        .subscribe(Subscribe::from("t").with_capacity(8).with_slow_policy(SlowPolicy::DropOldest))
        .unwrap();
    let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut sub).poll_next(&mut cx).is_pending(), "nothing was published yet");
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0);

    let (done, finished) = mpsc::channel();
    let publisher = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            for n in 0..1000 {
                hub.publish("t", data(n)).unwrap();
            }
            done.send(()).unwrap();
        })
    };
    // A publish that waited for the parked consumer would never finish: fail, do not hang.
    finished
        .recv_timeout(Duration::from_secs(10))
        .expect("the publisher did not finish while the consumer was parked");
    publisher.join().unwrap();
    assert!(wakes.0.load(Ordering::SeqCst) >= 1, "the parked consumer was never woken");
    assert_eq!(sub.queued(), 8);

    // Woken, it finds the newest eight and the lag.
    let Poll::Ready(Some(batch)) = Pin::new(&mut sub).poll_next(&mut cx) else {
        panic!("woken but nothing to take");
    };
    assert_eq!(batch.lagged(), 1000 - 8);
    let got = frames(batch);
    assert_eq!(got.len(), 1 + 8);
    assert_eq!(got[1], "id: 992\ndata: 992\n\n");
    assert_eq!(got[8], "id: 999\ndata: 999\n\n");
}
