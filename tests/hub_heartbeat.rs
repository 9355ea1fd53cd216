//! Heartbeats: one hub-wide timer, a shared comment frame, never in the way of events.

use std::time::{Duration, Instant};

use ssehub::{Event, Hub, SlowPolicy, Subscribe, Subscription};

/// Waits (bounded) until `sub` has a batch.
fn next_batch(sub: &mut Subscription) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(batch) = sub.try_recv().expect("stream open") {
            return batch.into_bytes().to_vec();
        }
        assert!(Instant::now() < deadline, "no batch within 10 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn idle_subscribers_get_a_shared_keep_alive_comment() {
    let hub = Hub::builder().with_heartbeat(Some(Duration::from_millis(20))).build();
    let mut a = hub.subscribe("a").unwrap();
    let mut b = hub.subscribe("b").unwrap();
    assert_eq!(next_batch(&mut a), b": keep-alive\n");
    assert_eq!(next_batch(&mut b), b": keep-alive\n");
    assert!(hub.stats().heartbeats >= 2);
}

/// Waits until `control`, an idle subscriber, has been handed `ticks` keep-alive comments, one
/// at a time: a tick queues one only into an empty queue, and ticks run one after another on
/// one thread, so `ticks` of them mean at least `ticks - 1` whole ticks ran after this call
/// began (one may have been under way). Evidence that the timer ran, for assertions about what
/// it did not do elsewhere.
fn wait_for_ticks(control: &mut Subscription, ticks: usize) {
    for _ in 0..ticks {
        assert_eq!(next_batch(control), b": keep-alive\n", "the control got something else");
    }
}

#[test]
fn a_heartbeat_never_displaces_or_evicts_an_event() {
    let hub = Hub::builder().with_heartbeat(Some(Duration::from_millis(5))).build();
    let sub = hub
        .subscribe(Subscribe::from("t").with_capacity(1).with_slow_policy(SlowPolicy::DropOldest))
        .unwrap();
    let mut control = hub.subscribe("control").unwrap();
    hub.publish("t", Event::new("kept")).unwrap();
    // Ticks pass while the one slot is taken by an event: each one that reached the control
    // also visited `sub` (a tick walks every subscriber).
    wait_for_ticks(&mut control, 3);
    let mut sub = sub;
    assert_eq!(next_batch(&mut sub), b"data: kept\n\n");
    let stats = hub.stats();
    assert_eq!(stats.frames_dropped, 0);
    assert!(stats.heartbeats >= 3, "{stats:?}");
}

#[test]
fn an_event_displaces_a_queued_heartbeat_without_loss() {
    let hub = Hub::builder().with_heartbeat(Some(Duration::from_millis(5))).build();
    let mut sub = hub.subscribe(Subscribe::from("t").with_capacity(1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sub.queued() == 0 {
        assert!(Instant::now() < deadline, "no heartbeat within 10 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    // What fills the queue is a heartbeat (nothing else was sent).
    assert!(hub.stats().heartbeats >= 1);
    // The queue (bound 1) holds a heartbeat; an event must not count as overflow.
    hub.publish("t", Event::new("event")).unwrap();
    assert_eq!(next_batch(&mut sub), b"data: event\n\n");
    let stats = hub.stats();
    assert_eq!((stats.slow_disconnects, stats.frames_dropped), (0, 0));
}

#[test]
fn no_heartbeats_when_disabled() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let mut sub = hub.subscribe("t").unwrap();
    // A control hub ticking every 5 ms: once its idle subscriber got three keep-alives, the
    // disabled hub has had time for several ticks of the same interval.
    let control_hub = Hub::builder().with_heartbeat(Some(Duration::from_millis(5))).build();
    let mut control = control_hub.subscribe("t").unwrap();
    wait_for_ticks(&mut control, 3);
    assert!(sub.try_recv().unwrap().is_none());
    assert_eq!(hub.stats().heartbeats, 0);
}
