//! Rate tiers through the library's native listener over real TCP: `interval=` on
//! `GET /events`, a burst conflated per key with a trailing flush, one order across topics,
//! exact resumes, the seam with a snapshot, live switches between paces racing a publisher,
//! targeted sends, and the refusals. Every wait is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ssehub::parse::ParsedEvent;
use ssehub::server::Server;
use ssehub::{Endpoint, Event, HistoryLimits, Hub, StateLimits, SubscriberId, SubscriptionChange};

#[path = "support/http.rs"]
mod http_support;
use http_support::{get, Client};

/// The hub's sequence number in an id it assigned (`{epoch:x}-{seq}`).
fn seq(id: &str) -> u64 {
    id.rsplit_once('-').and_then(|(_, n)| n.parse().ok()).unwrap_or_else(|| panic!("id {id:?}"))
}

const WAIT: Duration = Duration::from_secs(10);

/// A hub with history and keyed state, served on a loopback port.
async fn serve() -> (Hub, SocketAddr) {
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_history(Some(HistoryLimits::new().with_max_events(100_000)))
        .with_state(Some(StateLimits::new()))
        .with_capacity(100_000)
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(Server::new(Endpoint::new(hub.clone())).with_path("/events").serve(listener));
    (hub, addr)
}

/// Opens a stream on `target`, asserting 200, and waits until the hub counts `subscribers`.
async fn open(hub: &Hub, addr: SocketAddr, target: &str, subscribers: usize) -> Client {
    let client = get(addr, target).await;
    assert_eq!(client.status, 200, "{target}");
    let deadline = Instant::now() + WAIT;
    while hub.subscriber_count() < subscribers {
        assert!(Instant::now() < deadline, "the subscription never registered");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    client
}

/// Reads events until one whose data is `marker` (excluded).
async fn until(client: &mut Client, marker: &str) -> Vec<ParsedEvent> {
    let mut events = Vec::new();
    loop {
        let event = client.next().await;
        if event.data == marker {
            return events;
        }
        events.push(event);
    }
}

/// What the publisher sent: per key, its values in order with their ids' sequence numbers.
type Sent = BTreeMap<String, Vec<(String, u64)>>;

/// Publishes `count` events to `topic` over `keys`, spread over about `over`, with hub ids;
/// records them per key.
async fn burst(hub: &Hub, topic: &str, keys: usize, count: usize, over: Duration, sent: &mut Sent) {
    let pause = over / u32::try_from(count).expect("small");
    for n in 0..count {
        // Not round robin: a key's updates bunch up and thin out, as a market's do.
        let key = format!("k{}", (n * 7 + n / 13) % keys);
        let data = format!("{topic}/{key}/{n}");
        let published =
            hub.publish(topic, Event::new(data.clone()).with_key(key.clone())).expect("publish");
        let id = seq(published.id().expect("a hub id"));
        sent.entry(key).or_default().push((data, id));
        if n % 10 == 9 {
            tokio::time::sleep(pause * 10).await;
        }
    }
}

/// The key of an event this file published (`topic/key/n`).
fn key_of(event: &ParsedEvent) -> String {
    let mut parts = event.data.splitn(3, '/');
    let topic = parts.next().unwrap_or_default();
    let key = parts.next().unwrap_or_default();
    format!("{topic}/{key}")
}

/// Checks a tier's output against what was sent, per key: a subsequence of the key's values,
/// ids intact, ending with its last value; and a resume from any event's id would end with
/// every key's last value.
/// Returns how many events arrived.
fn check_per_key(received: &[ParsedEvent], sent: &BTreeMap<String, Vec<(String, u64)>>) -> usize {
    check_prefixes(received, sent);
    let mut got: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for event in received {
        got.entry(key_of(event)).or_default().push((event.data.clone(), seq(&event.id)));
    }
    for (key, values) in sent {
        let out = got.get(key).unwrap_or_else(|| panic!("nothing for {key}"));
        let mut at = values.iter();
        for value in out {
            assert!(at.any(|v| v == value), "{key}: {value:?} out of order or not published");
        }
        assert_eq!(out.last(), values.last(), "{key}: the last value, by a trailing flush");
    }
    assert_eq!(got.len(), sent.len(), "only the keys published");
    received.len()
}

/// At every received event (sequence number `s`), every key's last value published up to `s`
/// has arrived, or a later value of the key exists (a resume from `s` replays it, and it
/// replaces the one that did not arrive): a client that resumes from any id it saw ends with
/// every key's latest value.
fn check_prefixes(received: &[ParsedEvent], sent: &Sent) {
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for event in received {
        let s = seq(&event.id);
        seen.insert(key_of(event), s);
        for (key, values) in sent {
            let due = values.iter().map(|(_, q)| *q).take_while(|q| *q <= s).last();
            let replaced = values.iter().any(|(_, q)| *q > s);
            if let (Some(due), false) = (due, replaced) {
                assert_eq!(
                    seen.get(key).copied(),
                    Some(due),
                    "at id {s}, {key}'s last value {due} never arrived: a resume from here loses it"
                );
            }
        }
    }
}

/// `sent` keyed as `key_of` keys received events: `topic/key`.
fn by_topic_key(topic: &str, sent: Sent) -> Sent {
    sent.into_iter().map(|(key, values)| (format!("{topic}/{key}"), values)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_events_a_second_arrives_as_the_latest_value_per_key_per_tick() {
    let (hub, addr) = serve().await;
    let mut tier = open(&hub, addr, "/events?topic=price&interval=250ms", 1).await;
    let mut live = open(&hub, addr, "/events?topic=price", 2).await;
    let mut sent = Sent::new();
    burst(&hub, "price", 8, 1000, Duration::from_secs(1), &mut sent).await;
    hub.publish("price", Event::new("end")).expect("publish");
    let sent = by_topic_key("price", sent);

    let received = until(&mut tier, "end").await;
    let delivered = check_per_key(&received, &sent);
    let ticks = hub.stats().tier_ticks;
    let mut per_key: BTreeMap<String, u64> = BTreeMap::new();
    for event in &received {
        *per_key.entry(key_of(event)).or_default() += 1;
    }
    for (key, count) in &per_key {
        assert!(*count <= ticks, "{key}: {count} events in {ticks} ticks: one per key per tick");
    }
    let seqs: Vec<u64> = received.iter().map(|e| seq(&e.id)).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "publish order across keys: {seqs:?}");
    assert_eq!(until(&mut live, "end").await.len(), 1000, "the real-time stream gets every event");
    eprintln!("the 250 ms tier delivered {delivered} of 1000 events in {ticks} ticks");
    assert!(delivered <= 8 * usize::try_from(ticks).expect("small"));
    let stats = hub.stats();
    assert!(stats.tier_saved >= 1000 - delivered as u64, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_at_an_interval_gets_every_topic_in_one_order_and_resumes_exactly() {
    let (hub, addr) = serve().await;
    let mut first = open(&hub, addr, "/events?pattern=fx:*&interval=50ms", 1).await;
    let mut sent = Sent::new();
    let mut all = Sent::new();
    for topic in ["fx:EUR", "fx:GBP", "fx:JPY"] {
        burst(&hub, topic, 3, 60, Duration::from_millis(100), &mut sent).await;
        all.extend(by_topic_key(topic, std::mem::take(&mut sent)));
    }
    hub.publish("fx:EUR", Event::new("half")).expect("publish");
    let before = until(&mut first, "half").await;
    let seqs: Vec<u64> = before.iter().map(|e| seq(&e.id)).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one order across topics: {seqs:?}");
    check_per_key(&before, &all);

    // Gone mid-way: resume from the last id it saw, after more publishes.
    let last = before.last().expect("events").id.clone();
    drop(first);
    let mut more = Sent::new();
    for topic in ["fx:GBP", "fx:EUR"] {
        burst(&hub, topic, 3, 30, Duration::from_millis(50), &mut sent).await;
        more.extend(by_topic_key(topic, std::mem::take(&mut sent)));
    }
    let target = format!("/events?pattern=fx:*&interval=50ms&lastEventId={last}");
    let mut again = open(&hub, addr, &target, 1).await;
    hub.publish("fx:EUR", Event::new("end")).expect("publish");
    let after: Vec<ParsedEvent> =
        until(&mut again, "end").await.into_iter().filter(|e| e.data != "half").collect();
    let last = seq(&last);
    assert!(after.iter().all(|e| seq(&e.id) > last), "nothing it saw again");
    // The replay then the tier: every value published while it was away, by the trailing
    // flush at least the last one of each key.
    check_per_key(&after, &more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_at_an_interval_meets_the_tier_without_a_duplicate() {
    let (hub, addr) = serve().await;
    // A reader already on the tier, so values wait in it when the second one subscribes.
    let mut early = open(&hub, addr, "/events?topic=book&interval=1s", 1).await;
    let v1 = hub.publish("book", Event::new("book/bid/1").with_key("bid")).expect("publish");
    let mut late = open(&hub, addr, "/events?topic=book&interval=1s&snapshot=1", 2).await;
    let v2 = hub.publish("book", Event::new("book/ask/2").with_key("ask")).expect("publish");
    hub.publish("book", Event::new("end")).expect("publish");

    let opening = late.events(3).await;
    assert_eq!(opening[0].event, "snapshot");
    assert_eq!(
        (opening[1].data.as_str(), opening[1].id.as_str()),
        ("book/bid/1", v1.id().unwrap())
    );
    assert_eq!(opening[2].event, "snapshot");
    let live: Vec<String> = until(&mut late, "end").await.into_iter().map(|e| e.data).collect();
    assert_eq!(live, ["book/ask/2"], "bid was in the snapshot: the tick does not send it again");
    let early: Vec<String> = until(&mut early, "end").await.into_iter().map(|e| e.id).collect();
    assert_eq!(early, [v1.id().unwrap(), v2.id().unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_switches_between_paces_race_a_publisher_without_a_gap_or_a_duplicate() {
    let (hub, addr) = serve().await;
    let mut client = open(&hub, addr, "/events?topic=t", 1).await;
    let subscriber = SubscriberId::from_u64(1);
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut sent = Sent::new();
            burst(&hub, "t", 5, 1500, Duration::from_millis(900), &mut sent).await;
            sent
        })
    };
    let switch = |interval| {
        let change = SubscriptionChange::new().with_interval(Duration::from_millis(interval));
        hub.update_subscription(subscriber, change).expect("a live change");
    };
    for interval in [250, 0, 100, 1000] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        switch(interval);
    }
    let sent = by_topic_key("t", publisher.await.expect("the publisher"));
    // Off the 1 s tier at once: its last values wait for a tick that is now not this
    // stream's, so the switch hands them over.
    switch(0);
    hub.publish("t", Event::new("end")).expect("publish");
    let received = until(&mut client, "end").await;
    let seqs: Vec<u64> = received.iter().map(|e| seq(&e.id)).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "no duplicate, one order: {seqs:?}");
    check_per_key(&received, &sent);
    eprintln!("{} of 1500 events through five switches", received.len());
    assert!(received.len() < 1500, "the tiers conflated some");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targeted_send_to_a_tier_reader_comes_with_the_next_tick_in_order() {
    let (hub, addr) = serve().await;
    let mut client = open(&hub, addr, "/events?topic=t&interval=100ms", 1).await;
    let a = hub.publish("t", Event::new("a1").with_key("a")).expect("publish");
    let sent = hub.send_to(SubscriberId::from_u64(1), Event::new("direct")).expect("send");
    hub.publish("t", Event::new("b0").with_key("b")).expect("publish");
    let b = hub.publish("t", Event::new("b1").with_key("b")).expect("publish");
    let events = client.events(3).await;
    let got: Vec<(&str, &str)> = events.iter().map(|e| (e.data.as_str(), e.id.as_str())).collect();
    // The send waits for the tick that brings what was published before it, and goes in its
    // place in the one order; `b0` was replaced by `b1` within the tick.
    let expected =
        [("a1", a.id().unwrap()), ("direct", sent.id().unwrap()), ("b1", b.id().unwrap())];
    assert_eq!(got, expected);
}

#[tokio::test]
async fn intervals_out_of_range_or_malformed_are_400_and_the_count_is_bounded() {
    let hub = Hub::builder().with_heartbeat(None).with_max_intervals(2).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(Server::new(Endpoint::new(hub.clone())).with_path("/events").serve(listener));
    for bad in ["5ms", "61s", "0.0005s", "soon", "-1s", "250"] {
        let mut client = get(addr, &format!("/events?topic=t&interval={bad}")).await;
        let status = client.status;
        assert_eq!(status, 400, "interval={bad}: {}", client.text().await);
    }
    let _a = open(&hub, addr, "/events?topic=t&interval=250ms", 1).await;
    let _b = open(&hub, addr, "/events?topic=t&interval=1s", 2).await;
    let _c = open(&hub, addr, "/events?topic=u&interval=1s", 3).await;
    let mut third = get(addr, "/events?topic=t&interval=500ms").await;
    let status = third.status;
    let text = third.text().await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("2 distinct intervals"), "{text}");
    let _zero = open(&hub, addr, "/events?topic=t&interval=0", 4).await;
}

/// The data of the frames `sub` hands over until it has `count` or `wait` passed.
async fn frames(sub: &mut ssehub::Subscription, count: usize, wait: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    while got.len() < count && Instant::now() < deadline {
        let Ok(Some(batch)) = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await
        else {
            continue;
        };
        for frame in batch.frames() {
            let text = String::from_utf8_lossy(frame).to_string();
            got.extend(text.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string));
        }
    }
    got
}

#[tokio::test]
async fn conflating_subscribers_at_an_interval_get_each_tick_in_publish_order_from_their_start() {
    use ssehub::{ConflateKey, SlowPolicy, Subscribe};
    let hub = Hub::builder().with_heartbeat(None).build();
    let conflating = || {
        Subscribe::new()
            .with_topics(["x", "y"])
            .with_interval(Duration::from_millis(50))
            .with_slow_policy(SlowPolicy::Conflate { key: ConflateKey::Explicit })
    };
    let mut first = hub.subscribe(conflating()).expect("subscribe");
    let publish = |topic: &str, key: &str, data: &str| {
        hub.publish(topic, Event::new(data).with_key(key)).expect("publish");
    };
    // The queue conflates by explicit key across topics: each topic has keys of its own here.
    publish("x", "xa", "x1");
    publish("y", "ya", "y1");
    publish("x", "xa", "x2");
    publish("y", "yb", "y2");
    // Pushed by the tick, the two topics' values merged in publish order; x1 was replaced.
    assert_eq!(frames(&mut first, 3, WAIT).await, ["y1", "x2", "y2"]);

    publish("x", "xa", "x3");
    let mut second = hub.subscribe(conflating()).expect("subscribe");
    publish("y", "ya", "y3");
    assert_eq!(frames(&mut first, 2, WAIT).await, ["x3", "y3"]);
    // x3 was published before it started: the tick does not push it there.
    assert_eq!(frames(&mut second, 1, WAIT).await, ["y3"]);
    let later = frames(&mut second, 1, Duration::from_millis(300)).await;
    assert!(later.is_empty(), "nothing else: {later:?}");
}
