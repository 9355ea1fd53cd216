//! Last-Event-ID replay: exactly the missed events, in order, then live ones; a `reset` when
//! that cannot be exact.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ssehub::parse::{ParsedEvent, Parser};
use ssehub::{Event, HistoryLimits, Hub, Subscribe, Subscription};

fn history_hub(limits: HistoryLimits) -> Hub {
    Hub::builder().with_heartbeat(None).with_history(Some(limits)).with_epoch(0xe0).build()
}

/// Parses everything queued for `sub` with the crate's own parser.
fn events(sub: &mut Subscription) -> Vec<ParsedEvent> {
    let mut parser = Parser::new();
    let mut out = Vec::new();
    while let Ok(Some(batch)) = sub.try_recv() {
        parser.feed(&batch.into_bytes(), &mut out).expect("well-formed stream");
    }
    out
}

fn reset_reason(events: &[ParsedEvent]) -> Option<String> {
    events.iter().find(|e| e.event == "reset").map(|e| e.data.clone())
}

#[test]
fn a_reconnect_gets_exactly_the_missed_events_across_topics() {
    let hub = history_hub(HistoryLimits::new());
    let mut sub = hub.subscribe(Subscribe::new().with_topic("a").with_pattern("b:*")).unwrap();
    hub.publish("a", Event::new("a1")).unwrap();
    hub.publish("b:1", Event::new("b1")).unwrap();
    let seen = events(&mut sub);
    assert_eq!(seen.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["e0-1", "e0-2"]);
    drop(sub);
    // Missed while away, on both topics, plus one topic the client never received.
    hub.publish("b:2", Event::new("b2")).unwrap();
    hub.publish("c", Event::new("c1")).unwrap();
    hub.publish("a", Event::new("a2")).unwrap();
    let mut back = hub
        .subscribe(Subscribe::new().with_topic("a").with_pattern("b:*").with_last_event_id("e0-2"))
        .unwrap();
    hub.publish("a", Event::new("a3")).unwrap();
    let got: Vec<(String, String)> =
        events(&mut back).into_iter().map(|e| (e.id, e.data)).collect();
    assert_eq!(
        got,
        [("e0-3".into(), "b2".into()), ("e0-5".into(), "a2".into()), ("e0-6".into(), "a3".into())]
    );
}

#[test]
fn publisher_ids_resume_too() {
    let hub = history_hub(HistoryLimits::new());
    for n in 1..=5 {
        hub.publish("t", Event::new(format!("d{n}")).with_id(format!("p{n}"))).unwrap();
    }
    let mut sub = hub.subscribe(Subscribe::from("t").with_last_event_id("p3")).unwrap();
    let got: Vec<String> = events(&mut sub).into_iter().map(|e| e.id).collect();
    assert_eq!(got, ["p4", "p5"]);
}

#[test]
fn an_up_to_date_client_gets_nothing_replayed() {
    let hub = history_hub(HistoryLimits::new());
    let id = hub.publish("t", Event::new("x")).unwrap().id().map(str::to_string).unwrap();
    let mut sub = hub.subscribe(Subscribe::from("t").with_last_event_id(id)).unwrap();
    assert!(events(&mut sub).is_empty());
}

#[test]
fn ids_that_cannot_resume_exactly_get_a_reset_and_then_live_events() {
    let hub = history_hub(HistoryLimits::new().with_max_events(3));
    for n in 0..5 {
        hub.publish("t", Event::new(n.to_string())).unwrap();
    }
    let cases = [
        ("nope", "unknown-id"),
        ("e0-99", "malformed"),
        (&"9".repeat(10_000) as &str, "malformed"),
        ("e0-1\u{0}", "malformed"),
        ("e1-2", "other-epoch"),
        ("e0-1", "too-old"),
    ];
    for (id, reason) in cases {
        let mut sub = hub.subscribe(Subscribe::from("t").with_last_event_id(id)).unwrap();
        hub.publish("t", Event::new("live")).unwrap();
        let got = events(&mut sub);
        assert_eq!(reset_reason(&got), Some(format!("{{\"reason\":\"{reason}\"}}")), "{id:.20}");
        // The reset carries no id (it must not move the resume point); the live event follows.
        assert_eq!(got[0].id, "");
        assert_eq!(got.last().map(|e| e.data.as_str()), Some("live"));
    }
}

#[test]
fn too_many_missed_events_is_a_reset() {
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_history(Some(HistoryLimits::new()))
        .with_epoch(0xe0)
        .with_max_replay(10)
        .build();
    for n in 0..20 {
        hub.publish("t", Event::new(n.to_string())).unwrap();
    }
    let mut ok = hub.subscribe(Subscribe::from("t").with_last_event_id("e0-10")).unwrap();
    assert_eq!(events(&mut ok).len(), 10);
    let mut over = hub.subscribe(Subscribe::from("t").with_last_event_id("e0-9")).unwrap();
    assert_eq!(reset_reason(&events(&mut over)).as_deref(), Some("{\"reason\":\"too-many\"}"));
}

#[test]
fn without_history_a_resume_is_a_reset() {
    let hub = Hub::builder().with_heartbeat(None).build();
    hub.publish("t", Event::new("x").with_id("1")).unwrap();
    let mut sub = hub.subscribe(Subscribe::from("t").with_last_event_id("1")).unwrap();
    assert_eq!(reset_reason(&events(&mut sub)).as_deref(), Some("{\"reason\":\"no-history\"}"));
}

#[test]
fn history_keeps_a_topic_until_it_ages_out() {
    let hub = Hub::builder()
        .with_heartbeat(Some(Duration::from_millis(10)))
        .with_history(Some(HistoryLimits::new().with_max_age(Some(Duration::from_millis(30)))))
        .build();
    hub.publish("lonely", Event::new("x")).unwrap();
    assert_eq!(hub.stats().topics, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hub.stats().topics > 0 {
        assert!(std::time::Instant::now() < deadline, "topic never aged out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn replay_under_concurrent_publishing_has_no_gap_and_no_duplicate() {
    // A publisher in a tight loop can hold the sequencer for many events before a resuming
    // subscriber gets it, so allow replaying all of them: this test is about exactness.
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_history(Some(
            HistoryLimits::new().with_max_events(200_000).with_max_bytes(usize::MAX),
        ))
        .with_max_replay(200_000)
        .build();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (hub, stop) = (hub.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut published = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                let topic = ["x", "y:1", "y:2"][(n % 3) as usize];
                let id = hub
                    .publish(topic, Event::new(format!("{topic}/{n}")))
                    .unwrap()
                    .id()
                    .unwrap()
                    .to_string();
                published.push(id);
                n += 1;
            }
            published
        })
    };
    let request = || Subscribe::new().with_topic("x").with_pattern("y:*").with_capacity(100_000);
    let mut received: Vec<String> = Vec::new();
    let mut sub = hub.subscribe(request()).unwrap();
    // Reconnect many times while the publisher runs, each time from the last id seen.
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(2));
        let got = events(&mut sub);
        assert_eq!(reset_reason(&got), None, "after {} events", received.len());
        received.extend(got.into_iter().map(|e| e.id));
        let last = received.last().cloned();
        drop(sub);
        sub = match last {
            Some(id) => hub.subscribe(request().with_last_event_id(id)).unwrap(),
            None => hub.subscribe(request()).unwrap(),
        };
    }
    stop.store(true, Ordering::Relaxed);
    let published = publisher.join().unwrap();
    received.extend(events(&mut sub).into_iter().map(|e| e.id));
    // The first subscription may have started after the first events; from there on, every
    // event exactly once, in order.
    let start =
        published.iter().position(|id| Some(id) == received.first()).expect("first id published");
    let expected = &published[start..];
    assert_eq!(received.len(), expected.len());
    if let Some(at) = received.iter().zip(expected).position(|(got, want)| got != want) {
        panic!(
            "diverges at {at}: got {:?}, expected {:?}",
            &received[at..at + 1],
            &expected[at..at + 1]
        );
    }
    let mut seen = HashMap::new();
    for id in &received {
        assert!(seen.insert(id.clone(), ()).is_none(), "duplicate {id}");
    }
}
