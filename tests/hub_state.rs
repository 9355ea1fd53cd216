//! Keyed state and snapshots through the hub server (`examples/hub.rs`) over real TCP: publish
//! with `"key"` (one event or an NDJSON batch), open `/events?…&snapshot=1`, and check the
//! frames on the wire. Every wait is bounded; only the processes started here are signalled.

#[path = "support/hub_process.rs"]
mod hub_process;

use std::collections::{BTreeMap, HashSet};
use std::thread;

use hub_process::*;
use serde_json::{json, Value};
use ssehub::parse::ParsedEvent;

/// Reads a snapshot: the `begin` frame's data, the events between it and `end`.
fn snapshot(stream: &mut Stream) -> (Value, Vec<ParsedEvent>) {
    let begin = stream.next_message().expect("the begin frame");
    assert_eq!(begin.event, "snapshot", "{begin:?}");
    assert_eq!(begin.id, "", "the begin frame carries no id");
    let begin: Value = serde_json::from_str(&begin.data).expect("JSON");
    assert_eq!(begin["state"], "begin");
    let mut events = Vec::new();
    loop {
        let event = stream.next().expect("the snapshot's events, then its end frame");
        if event.event == "snapshot" {
            assert_eq!(event.data, r#"{"state":"end"}"#);
            // The parser keeps the last id it saw: the end frame has none of its own.
            let before = events.last().map_or("", |e: &ParsedEvent| e.id.as_str());
            assert_eq!(event.id, before, "the end frame carries no id");
            break;
        }
        events.push(event);
    }
    let end = b"\n\nevent: snapshot\ndata: {\"state\":\"end\"}\n\n";
    assert!(stream.raw.windows(end.len()).any(|w| w == end), "the end frame, exactly");
    assert_eq!(begin["events"], events.len(), "the begin frame counts the events");
    (begin, events)
}

/// Publishes `data` to `topic` as the latest value of `key`; its id.
fn put(server: &Server, topic: &str, key: &str, data: &str) -> String {
    publish(server.addr, topic, &json!({ "data": data, "key": key }))
}

/// `(data, id)` of each event.
fn pairs(events: &[ParsedEvent]) -> Vec<(String, String)> {
    events.iter().map(|e| (e.data.clone(), e.id.clone())).collect()
}

/// The sequence number in a hub-assigned id (`{epoch:x}-{seq}`).
fn seq(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("id {id:?}"))
}

#[test]
fn a_snapshot_spans_patterns_in_publish_order_then_live_and_new_topics() {
    let server = Server::start(&["--heartbeat", "0"]);
    let btc1 = put(&server, "price:BTC", "last", "64000");
    let eth = put(&server, "price:ETH", "last", "3100");
    let bid = put(&server, "price:BTC", "bid", "63990");
    let btc2 = put(&server, "price:BTC", "last", "64010");
    let news = publish(server.addr, "news", &json!({ "data": "keyless 1" }));
    let news2 = publish(server.addr, "news", &json!({ "data": "keyless 2" }));
    put(&server, "other", "x", "not matched");

    let mut stream =
        Stream::connected(server.addr, "/events?pattern=price:*&topic=news&snapshot=1", &[]);
    let (begin, events) = snapshot(&mut stream);
    assert_eq!(begin.get("reason"), None, "{begin}");
    // The latest value of every key of every matched topic, in publish order, ids intact; a
    // topic without keys keeps its latest event.
    assert_eq!(
        pairs(&events),
        [
            ("3100".into(), eth),
            ("63990".into(), bid),
            ("64010".into(), btc2.clone()),
            ("keyless 2".into(), news2.clone()),
        ]
    );
    assert_ne!(btc1, btc2);
    assert_ne!(news, news2);

    // Then live, on an existing topic and on one created after the subscribe.
    let sol = put(&server, "price:SOL", "last", "140");
    let btc3 = put(&server, "price:BTC", "last", "64020");
    let live: Vec<ParsedEvent> = (0..2).map(|_| stream.next().expect("live")).collect();
    assert_eq!(pairs(&live), [("140".into(), sol.clone()), ("64020".into(), btc3)]);

    // A new subscriber sees the new topic in its snapshot too.
    let mut later = Stream::connected(server.addr, "/events?pattern=price:SOL&snapshot=1", &[]);
    assert_eq!(pairs(&snapshot(&mut later).1), [("140".into(), sol)]);
    let stats = get(server.addr, "/stats").json();
    assert_eq!(stats["snapshots"], 2, "{stats}");
    assert_eq!(stats["state_evictions"], 0, "{stats}");
}

#[test]
fn a_resume_that_cannot_be_exact_gets_the_snapshot_instead_of_a_reset() {
    let server = Server::start(&["--heartbeat", "0", "--history", "2"]);
    let first = put(&server, "t", "a", "a1");
    put(&server, "t", "b", "b1");
    put(&server, "t", "a", "a2");
    let last = put(&server, "t", "c", "c1");
    // Without a snapshot, the evicted id gets a reset.
    let mut plain = Stream::open(server.addr, "/events?topic=t", &[("Last-Event-ID", &first)]);
    let reset = std::iter::from_fn(|| plain.next()).find(|e| e.event != "connected");
    assert_eq!(
        reset.map(|e| (e.event, e.data)),
        Some(("reset".into(), r#"{"reason":"too-old"}"#.into()))
    );

    let mut expected = vec!["b1", "a2", "c1"];
    let cases = [(first.as_str(), "too-old", "d1"), ("nobody's id", "unknown-id", "d2")];
    for (resume, reason, next) in cases {
        let headers = [("Last-Event-ID", resume)];
        let mut stream = Stream::connected(server.addr, "/events?topic=t&snapshot=1", &headers);
        let (begin, events) = snapshot(&mut stream);
        assert_eq!(begin["reason"], reason, "{begin}");
        let data: Vec<String> = events.iter().map(|e| e.data.clone()).collect();
        assert_eq!(data, expected, "{resume}");
        let live = put(&server, "t", "d", next);
        expected.retain(|d| !d.starts_with('d'));
        expected.push(next);
        assert_eq!(stream.next().map(|e| e.id), Some(live), "then live, nothing else");
    }

    // An exact resume gets its replay and no snapshot.
    let mut exact =
        Stream::connected(server.addr, "/events?topic=t&snapshot=1", &[("Last-Event-ID", &last)]);
    let replayed: Vec<(String, String)> =
        (0..2).map(|_| exact.next().map(|e| (e.event, e.data)).expect("the replay")).collect();
    assert_eq!(replayed, [("message".into(), "d1".into()), ("message".into(), "d2".into())]);
}

#[test]
fn keys_past_the_bound_are_evicted_oldest_first_and_counted() {
    let server = Server::start(&["--heartbeat", "0", "--state-keys", "3"]);
    for (key, data) in [("a", "1"), ("b", "2"), ("c", "3"), ("a", "4"), ("d", "5"), ("e", "6")] {
        put(&server, "t", key, data);
    }
    // a was updated after b and c, so b then c went: a=4, d=5, e=6 remain.
    let mut stream = Stream::connected(server.addr, "/events?topic=t&snapshot=1", &[]);
    let data: Vec<String> = snapshot(&mut stream).1.into_iter().map(|e| e.data).collect();
    assert_eq!(data, ["4", "5", "6"]);
    assert_eq!(get(server.addr, "/stats").json()["state_evictions"], 2);
    let metrics = get(server.addr, "/metrics").body;
    assert!(metrics.lines().any(|line| line == "ssehub_state_evictions_total 2"), "{metrics}");
}

#[test]
fn an_ndjson_batch_with_keys_sets_the_state_of_each_topic() {
    let server = Server::start(&["--heartbeat", "0"]);
    let lines = [
        json!({"topic": "book:x", "data": "bid 1", "key": "bid"}),
        json!({"topic": "book:y", "data": "ask 9", "key": "ask", "event": "quote"}),
        json!({"topic": "book:x", "data": "bid 2", "key": "bid"}),
        json!({"topic": "book:x", "data": "ask 3", "key": "ask", "id": "mine-1"}),
    ];
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let answer = request(
        server.addr,
        "POST",
        "/publish",
        &[("Content-Type", "application/x-ndjson")],
        &body,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let ids: Vec<String> = answer
        .body
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON")["id"].as_str().expect("id").into())
        .collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids[3], "mine-1");

    let mut stream = Stream::connected(server.addr, "/events?pattern=book:*&snapshot=1", &[]);
    let events = snapshot(&mut stream).1;
    let seen: Vec<(&str, &str, &str)> =
        events.iter().map(|e| (e.event.as_str(), e.data.as_str(), e.id.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("quote", "ask 9", ids[1].as_str()),
            ("message", "bid 2", ids[2].as_str()),
            ("message", "ask 3", "mine-1"),
        ]
    );
}

#[test]
fn snapshot_must_be_one_or_zero() {
    let server = Server::start(&["--heartbeat", "0"]);
    let response = get(server.addr, "/events?topic=t&snapshot=yes");
    assert_eq!(response.status, 400, "{}", response.body);
    // Off: no snapshot frames, the stream starts live.
    put(&server, "t", "k", "old");
    let mut stream = Stream::connected(server.addr, "/events?topic=t&snapshot=0", &[]);
    let live = put(&server, "t", "k", "new");
    assert_eq!(stream.next().map(|e| (e.data, e.id)), Some(("new".into(), live)));
}

/// Clients subscribe with a snapshot while a publisher updates ten keys without pause: each
/// gets the latest value of every key as of one point, then every later event once, in order.
#[test]
fn a_snapshot_racing_publishes_has_no_gap_and_no_duplicate() {
    let server = Server::start(&["--heartbeat", "0"]);
    let addr = server.addr;
    const KEYS: u64 = 10;
    const TOTAL: u64 = 600;
    for i in 0..KEYS {
        publish(addr, "feed", &json!({ "data": i.to_string(), "key": format!("k{}", i % KEYS) }));
    }
    let publisher = thread::spawn(move || {
        for i in KEYS..TOTAL {
            publish(
                addr,
                "feed",
                &json!({ "data": i.to_string(), "key": format!("k{}", i % KEYS) }),
            );
        }
    });
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(Stream::connected(addr, "/events?topic=feed&snapshot=1", &[]));
        thread::sleep(std::time::Duration::from_millis(5));
    }
    publisher.join().expect("the publisher");
    for mut client in clients {
        let (_, taken) = snapshot(&mut client);
        assert_eq!(taken.len() as u64, KEYS, "one value per key");
        let values: Vec<u64> = taken.iter().map(|e| e.data.parse().expect("a number")).collect();
        // The latest value of each key as of one point: the last ten published before it.
        let point = *values.last().expect("values");
        assert_eq!(values, ((point + 1 - KEYS)..=point).collect::<Vec<_>>());
        let mut ids: HashSet<String> = taken.iter().map(|e| e.id.clone()).collect();
        let mut next = point + 1;
        let mut last_seq = seq(&taken[taken.len() - 1].id);
        while next < TOTAL {
            let event = client.next().expect("every later event");
            assert_eq!(event.data, next.to_string(), "live continues right after the snapshot");
            assert!(ids.insert(event.id.clone()), "a duplicate id {}", event.id);
            assert_eq!(seq(&event.id), last_seq + 1, "no gap in the hub's numbers");
            last_seq += 1;
            next += 1;
        }
    }
    // Each key's latest value, once more, for a client that comes now.
    let mut late = Stream::connected(addr, "/events?topic=feed&snapshot=1", &[]);
    let latest: BTreeMap<String, String> = snapshot(&mut late)
        .1
        .into_iter()
        .map(|e| (format!("k{}", e.data.parse::<u64>().expect("n") % KEYS), e.data))
        .collect();
    assert_eq!(latest.len() as u64, KEYS);
    assert!(latest.values().all(|v| v.parse::<u64>().expect("n") >= TOTAL - KEYS));
}

/// The frames of a snapshot taken in-process, as their data, begin and end frames left out.
fn snapshot_data(hub: &ssehub::Hub, request: ssehub::Subscribe) -> Vec<String> {
    let mut sub = hub.subscribe(request.with_snapshot()).expect("open");
    let mut frames = Vec::new();
    while let Ok(Some(batch)) = sub.try_recv() {
        frames.extend(batch.frames().iter().map(|f| String::from_utf8(f.to_vec()).expect("UTF-8")));
    }
    assert!(frames.first().is_some_and(|f| f.starts_with("event: snapshot\n")), "{frames:?}");
    assert_eq!(
        frames.last().map(String::as_str),
        Some("event: snapshot\ndata: {\"state\":\"end\"}\n\n")
    );
    frames[1..frames.len() - 1]
        .iter()
        .map(|f| {
            f.strip_prefix("data: ").and_then(|d| d.strip_suffix("\n\n")).expect("data").into()
        })
        .collect()
}

#[test]
fn per_topic_settings_decide_what_each_topic_keeps_and_state_outlives_subscribers() {
    use ssehub::{Event, Hub, Pattern, StateLimits, Subscribe};
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_topic_state(
            Pattern::new("book:*").expect("a pattern"),
            StateLimits::new().with_max_keys(1),
        )
        .with_topic_state(
            Pattern::new("chat:*").expect("a pattern"),
            StateLimits::new().with_max_keys(0),
        )
        .with_state(Some(StateLimits::new().with_max_keys(2)))
        .build();
    for topic in ["book:x", "chat:y", "other"] {
        for key in ["a", "b", "c"] {
            hub.publish(topic, Event::new(format!("{topic} {key}")).with_key(key)).expect("open");
        }
    }
    assert_eq!(snapshot_data(&hub, Subscribe::from("book:x")), ["book:x c"]);
    assert_eq!(snapshot_data(&hub, Subscribe::from("chat:y")), Vec::<String>::new());
    assert_eq!(snapshot_data(&hub, Subscribe::from("other")), ["other b", "other c"]);
    // 2 evicted on book:x, 1 on other; chat:y keeps nothing, so it is not even a topic.
    assert_eq!(hub.stats().state_evictions, 3);
    let topics: Vec<String> = hub.topics().into_iter().map(|(t, _)| t).collect();
    assert!(topics.contains(&"book:x".to_string()) && topics.contains(&"other".to_string()));
    assert!(!topics.contains(&"chat:y".to_string()), "{topics:?}");
    assert_eq!(hub.stats().topics, 2, "the topics holding state stay with no subscriber");
}

#[test]
fn topics_past_the_state_bound_lose_their_state_published_to_longest_ago_first() {
    let server = Server::start(&["--heartbeat", "0", "--history", "0", "--state-topics", "2"]);
    // Without history an event has no id: `put` would want one.
    let events = [
        ("order:1", "filled 1"),
        ("order:2", "filled 2"),
        ("order:1", "cancelled 1"),
        ("order:3", "filled 3"),
    ];
    for (topic, data) in events {
        let body = json!({ "data": data, "key": "status" }).to_string();
        let response = post(server.addr, &format!("/publish?topic={topic}"), &body);
        assert_eq!(response.status, 200, "{}", response.body);
    }
    // order:1 was published to after order:2, so order:2 went; and with it the topic.
    let stats = get(server.addr, "/stats").json();
    assert_eq!(
        (stats["state_topics_dropped"].clone(), stats["topics"].clone()),
        (1.into(), 2.into())
    );
    let metrics = get(server.addr, "/metrics").body;
    assert!(metrics.lines().any(|l| l == "ssehub_state_topics_dropped_total 1"), "{metrics}");
    for (topic, expected) in
        [("order:1", vec!["cancelled 1"]), ("order:2", vec![]), ("order:3", vec!["filled 3"])]
    {
        let target = format!("/events?topic={topic}&snapshot=1");
        let mut stream = Stream::connected(server.addr, &target, &[]);
        let data: Vec<String> = snapshot(&mut stream).1.into_iter().map(|e| e.data).collect();
        assert_eq!(data, expected, "{topic}");
    }
}

/// A hub keeping state on at most `max` topics, with no history (so a topic without state or
/// subscribers goes).
fn bounded_hub(max: usize) -> ssehub::Hub {
    ssehub::Hub::builder()
        .with_heartbeat(None)
        .with_state(Some(ssehub::StateLimits::new()))
        .with_max_state_topics(max)
        .build()
}

#[test]
fn the_state_bound_holds_over_ever_new_topics_and_counts_what_it_drops() {
    use ssehub::{Event, Subscribe};
    let hub = bounded_hub(3);
    for n in 0..1_000 {
        let topic = format!("order:{n}");
        hub.publish(&topic, Event::new(format!("new {n}")).with_key("status")).expect("open");
        hub.publish(&topic, Event::new(format!("filled {n}")).with_key("status")).expect("open");
        assert!(hub.stats().topics <= 3, "after order:{n}: {}", hub.stats().topics);
    }
    assert_eq!(hub.stats().state_topics_dropped, 997);
    assert_eq!(snapshot_data(&hub, Subscribe::from("order:999")), ["filled 999"]);
    assert_eq!(snapshot_data(&hub, Subscribe::from("order:997")), ["filled 997"]);
    assert_eq!(snapshot_data(&hub, Subscribe::from("order:996")), Vec::<String>::new());
}

#[test]
fn a_received_topic_keeps_its_state_past_the_bound_until_it_is_left() {
    use ssehub::{Event, Subscribe};
    let hub = bounded_hub(1);
    let named = hub.subscribe("held").expect("open");
    let matched = hub.subscribe(Subscribe::new().with_pattern("book:*")).expect("open");
    hub.publish("held", Event::new("held 1").with_key("k")).expect("open");
    hub.publish("book:x", Event::new("book 1").with_key("k")).expect("open");
    for n in 0..10 {
        hub.publish(&format!("order:{n}"), Event::new("x").with_key("k")).expect("open");
    }
    // Each order's state went at once: the received topics were never the ones to go.
    assert_eq!(hub.stats().state_topics_dropped, 10);
    assert_eq!(snapshot_data(&hub, Subscribe::from("held")), ["held 1"]);
    assert_eq!(snapshot_data(&hub, Subscribe::from("book:x")), ["book 1"]);
    assert_eq!(snapshot_data(&hub, Subscribe::from("order:9")), Vec::<String>::new());
    // Left, they go too, the next time a topic's state arrives.
    drop((named, matched));
    hub.publish("order:new", Event::new("kept").with_key("k")).expect("open");
    assert_eq!(hub.stats().state_topics_dropped, 12);
    assert_eq!(snapshot_data(&hub, Subscribe::from("held")), Vec::<String>::new());
    assert_eq!(snapshot_data(&hub, Subscribe::from("book:x")), Vec::<String>::new());
    assert_eq!(snapshot_data(&hub, Subscribe::from("order:new")), ["kept"]);
}

#[test]
fn a_topic_whose_state_went_keeps_its_history() {
    use ssehub::{Event, HistoryLimits, Hub, StateLimits, Subscribe};
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_history(Some(HistoryLimits::new()))
        .with_state(Some(StateLimits::new()))
        .with_max_state_topics(1)
        .build();
    let first = hub.publish("a", Event::new("a1").with_key("k")).expect("open");
    hub.publish("a", Event::new("a2").with_key("k")).expect("open");
    hub.publish("b", Event::new("b1").with_key("k")).expect("open");
    assert_eq!(hub.stats().state_topics_dropped, 1);
    assert_eq!(hub.stats().topics, 2, "a stays for its history");
    // With history the frames carry ids: only how many the snapshot holds is compared.
    let snapshot_len = |topic: &str| {
        let mut sub = hub.subscribe(Subscribe::from(topic).with_snapshot()).expect("open");
        let batch = sub.try_recv().expect("open").expect("the snapshot");
        let frames: Vec<String> =
            batch.frames().iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
        assert!(frames.last().is_some_and(|f| f.contains("{\"state\":\"end\"}")), "{frames:?}");
        frames.len() - 2
    };
    assert_eq!(snapshot_len("a"), 0);
    // Its history still replays, and a new event gives it state again (b's goes then).
    let mut resumed = hub
        .subscribe(Subscribe::from("a").with_last_event_id(first.id().expect("an id")))
        .expect("open");
    let batch = resumed.try_recv().expect("open").expect("the replay");
    assert!(batch.frames().iter().any(|f| f.ends_with(b"data: a2\n\n")), "{batch:?}");
    hub.publish("a", Event::new("a3").with_key("k")).expect("open");
    assert_eq!(hub.stats().state_topics_dropped, 2);
    assert_eq!((snapshot_len("a"), snapshot_len("b")), (1, 0));
    drop(resumed);
}
