//! Models of the heartbeat through the engine: the real `heartbeat::tick` (over the registry's
//! snapshot of subscribers) racing a publish into the same queue. Under loom there is no timer
//! thread; the models call `tick` themselves.

use loom::thread;

use super::Outcomes;
use crate::engine::queue::SlowPolicy;
use crate::hub::subscription::Subscription;
use crate::hub::{Config, Shared, Subscribe};
use crate::services::heartbeat::tick;
use crate::sync::Arc;
use crate::Event;

/// Engine state with queues of `capacity` frames under `policy`, no timer and no lag event.
fn shared(capacity: usize, policy: SlowPolicy) -> Arc<Shared> {
    let config =
        Config { capacity, policy, heartbeat: None, lag_event: false, ..Config::default() };
    Arc::new(Shared::new(config))
}

/// Publishes `data` to `topic`; how many received it.
fn publish(shared: &Arc<Shared>, topic: &str, data: &str) -> usize {
    Shared::publish(shared, topic, Event::new(data)).expect("open").receivers()
}

/// Everything handed over until the subscription would wait, as text, and the lag reported.
fn received(sub: &mut Subscription) -> (Vec<String>, u64) {
    let mut seen = Vec::new();
    let mut lagged = 0;
    while let Some(batch) = sub.try_recv().expect("open") {
        lagged += batch.lagged();
        seen.extend(batch.frames().iter().map(|f| String::from_utf8(f.to_vec()).unwrap()));
    }
    (seen, lagged)
}

/// A tick racing a publish into a `Disconnect` queue of capacity 1: the event is always queued
/// (no slow disconnect, nothing dropped) and is all the client gets; a heartbeat queued first is
/// displaced, never the event.
#[test]
fn loom_heartbeat_tick_vs_publish_never_displaces_an_event() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let shared = shared(1, SlowPolicy::Disconnect);
        let mut sub = Shared::subscribe(&shared, Subscribe::from("t")).expect("open");
        let s = shared.clone();
        let ticker = thread::spawn(move || tick(&s));
        let n = publish(&shared, "t", "e1");
        let sent = ticker.join().unwrap();

        assert_eq!(n, 1);
        let stats = shared.stats();
        assert_eq!((stats.slow_disconnects, stats.frames_dropped), (0, 0));
        assert_eq!(stats.heartbeats, sent);
        assert_eq!(received(&mut sub), (vec!["data: e1\n\n".to_string()], 0));
        OUTCOMES.record(format!("sent {sent}"));
    });
    OUTCOMES.assert_reached(&["sent 0", "sent 1"]);
}

/// Ticks racing two publishes into a `DropOldest` queue of capacity 1: the second event evicts
/// the first, and that is the only loss reported (a displaced heartbeat is not lag); no
/// heartbeat is ever queued behind an event.
#[test]
fn loom_heartbeat_tick_vs_publish_never_counts_as_lag() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let shared = shared(1, SlowPolicy::DropOldest);
        let mut sub = Shared::subscribe(&shared, Subscribe::from("t")).expect("open");
        let s = shared.clone();
        let ticker = thread::spawn(move || tick(&s) + tick(&s));
        let n = (publish(&shared, "t", "e1"), publish(&shared, "t", "e2"));
        let sent = ticker.join().unwrap();

        assert_eq!(n, (1, 1));
        assert!(sent <= 1, "a heartbeat went in behind something: {sent}");
        assert_eq!(received(&mut sub), (vec!["data: e2\n\n".to_string()], 1));
        // Counted when the stream learnt of it.
        assert_eq!(shared.stats().frames_dropped, 1);
        OUTCOMES.record(format!("sent {sent}"));
    });
    OUTCOMES.assert_reached(&["sent 0", "sent 1"]);
}
