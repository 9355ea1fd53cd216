//! Models of rate tiers through the hub (`Shared`): the real tick (`Shared::tick`, which the
//! clock thread calls; there is no clock thread under loom) racing a reader of two topics at
//! the tier's interval, and a reader whose own frame waits for the tick.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use loom::thread;

use super::{block_on, Outcomes};
use crate::engine::queue::SlowPolicy;
use crate::hub::subscription::Subscription;
use crate::hub::{Config, Shared, Subscribe};
use crate::sync::Arc;
use crate::Event;

/// Engine state with no timer and no lag event.
fn shared() -> Arc<Shared> {
    let config = Config {
        capacity: 8,
        policy: SlowPolicy::Disconnect,
        heartbeat: None,
        lag_event: false,
        ..Config::default()
    };
    Arc::new(Shared::new(config))
}

/// The data of a frame (`data: x\n\n` is `x`).
fn data(frame: &[u8]) -> String {
    let text = std::str::from_utf8(frame).expect("UTF-8");
    text.trim_end().trim_start_matches("data: ").to_string()
}

/// Everything the subscription hands over without waiting.
fn drain(sub: &mut Subscription) -> Vec<String> {
    let mut seen = Vec::new();
    while let Poll::Ready(Some(batch)) = sub.poll_batch(None) {
        seen.extend(batch.frames().iter().map(|f| data(f)));
    }
    seen
}

/// A reader of topics a and b at one interval, polling while a tick appends a's value to its
/// derived ring, then b's: it sees the tick whole or not at all (the tier's mark moves after
/// both), so it never takes b's value (published second) before a's. A reader that read up to
/// the watermark instead could take b's ring's new entry after finding a's still empty.
#[test]
fn loom_tier_a_reader_of_two_topics_sees_a_tick_whole() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let shared = shared();
        let pace = Duration::from_millis(10);
        let subscribe = Subscribe::new().with_topics(["a", "b"]).with_interval(pace);
        let mut sub = Shared::subscribe(&shared, subscribe).expect("open");
        Shared::publish(&shared, "a", Event::new("a1")).expect("open");
        Shared::publish(&shared, "b", Event::new("b1")).expect("open");
        let tier = shared.engine.registry.tiers()[0].clone();
        let s = shared.clone();
        let ticker = thread::spawn(move || Shared::tick(&s, &tier));
        let early = drain(&mut sub);
        ticker.join().unwrap();
        let mut seen = early.clone();
        seen.extend(drain(&mut sub));
        assert_eq!(seen, ["a1", "b1"], "one order across the tier's rings");
        assert!(early.is_empty() || early == ["a1", "b1"], "half a tick: {early:?}");
        OUTCOMES.record(if early.is_empty() { "after the tick" } else { "during the tick" });
    });
    OUTCOMES.assert_reached(&["after the tick", "during the tick"]);
}

/// A reader at an interval, parked with a targeted frame of its own waiting for the mark (sent
/// after the tier's last tick) and nothing for its ring: the next tick, which appends nothing
/// to its ring and so wakes nobody parked there, wakes it through the tier's waiting list (a
/// lost wake-up is a deadlock loom reports), and it gets its frame.
#[test]
fn loom_tier_an_own_frame_waits_for_the_tick_and_the_tick_wakes_it() {
    loom::model(|| {
        let shared = shared();
        let subscribe = Subscribe::new().with_topic("a").with_interval(Duration::from_millis(10));
        let mut sub = Shared::subscribe(&shared, subscribe).expect("open");
        let id = sub.id();
        Shared::send_to_many(&shared, &[id], Event::new("own")).expect("open");
        let tier = shared.engine.registry.tiers()[0].clone();
        let s = shared.clone();
        let ticker = thread::spawn(move || Shared::tick(&s, &tier));
        let mut seen = Vec::new();
        block_on(poll_fn(|cx| loop {
            match sub.poll_batch(Some(cx)) {
                Poll::Ready(Some(batch)) => {
                    seen.extend(batch.frames().iter().map(|f| data(f)));
                    return Poll::Ready(());
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }));
        ticker.join().unwrap();
        assert_eq!(seen, ["own"]);
    });
}
