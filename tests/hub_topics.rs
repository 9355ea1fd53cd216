//! Topics, patterns, broadcasts and targeted sends.

use ssehub::{Event, Hub, PublishError, Subscribe, SubscribeError, Subscription, TopicError};

fn hub() -> Hub {
    Hub::builder().with_heartbeat(None).build()
}

fn drain(sub: &mut Subscription) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(batch)) = sub.try_recv() {
        out.extend(batch.into_iter().map(|b| String::from_utf8(b.to_vec()).unwrap()));
    }
    out
}

#[test]
fn topics_reach_only_their_subscribers() {
    let hub = hub();
    let mut a = hub.subscribe("a").unwrap();
    let mut ab = hub.subscribe(["a", "b"]).unwrap();
    hub.publish("a", Event::new("1")).unwrap();
    hub.publish("b", Event::new("2")).unwrap();
    hub.publish("c", Event::new("3")).unwrap();
    assert_eq!(drain(&mut a), ["data: 1\n\n"]);
    assert_eq!(drain(&mut ab), ["data: 1\n\n", "data: 2\n\n"]);
}

#[test]
fn patterns_match_existing_and_future_topics() {
    let hub = hub();
    let _existing = hub.subscribe("fleet:t1:temp").unwrap();
    let mut temps = hub.subscribe(Subscribe::new().with_pattern("fleet:*:temp")).unwrap();
    hub.publish("fleet:t1:temp", Event::new("20")).unwrap();
    // A topic nobody named yet: the pattern still receives it.
    hub.publish("fleet:t2:temp", Event::new("21")).unwrap();
    hub.publish("fleet:t2:speed", Event::new("90")).unwrap();
    assert_eq!(drain(&mut temps), ["data: 20\n\n", "data: 21\n\n"]);
    assert_eq!(hub.topic_subscriber_count("fleet:t2:temp"), 1);
    // A topic nobody receives is not kept.
    assert_eq!(hub.topic_subscriber_count("fleet:t2:speed"), 0);
    assert!(!hub.topics().iter().any(|(t, _)| t == "fleet:t2:speed"));
}

#[test]
fn overlapping_topics_and_patterns_deliver_once() {
    let hub = hub();
    let mut sub = hub
        .subscribe(
            Subscribe::new()
                .with_topic("price:BTC")
                .with_pattern("price:*")
                .with_pattern("*:BTC")
                .with_pattern("price:*"),
        )
        .unwrap();
    hub.publish("price:BTC", Event::new("1")).unwrap();
    hub.publish("price:ETH", Event::new("2")).unwrap();
    assert_eq!(drain(&mut sub), ["data: 1\n\n", "data: 2\n\n"]);
    assert_eq!(hub.topic_subscriber_count("price:BTC"), 1);
}

#[test]
fn leaving_removes_topics_and_patterns() {
    let hub = hub();
    let a = hub.subscribe(Subscribe::new().with_topic("x").with_pattern("y:*")).unwrap();
    let b = hub.subscribe(Subscribe::new().with_pattern("y:*")).unwrap();
    hub.publish("y:1", Event::new("1")).unwrap();
    assert_eq!(hub.stats().topics, 2);
    drop(a);
    assert_eq!(hub.topics(), vec![("y:1".to_string(), 1)]);
    drop(b);
    assert_eq!(hub.stats().topics, 0);
    assert_eq!(hub.subscriber_count(), 0);
    // With the pattern gone, publishing to a new matching topic creates nothing.
    assert_eq!(hub.publish("y:2", Event::new("2")).unwrap().receivers(), 0);
    assert_eq!(hub.stats().topics, 0);
}

#[test]
fn broadcast_reaches_everyone_once() {
    let hub = hub();
    let mut a = hub.subscribe(Subscribe::new().with_topic("a").with_pattern("*")).unwrap();
    let mut none = hub.subscribe(Subscribe::new()).unwrap();
    assert_eq!(hub.broadcast(Event::new("all")).unwrap().receivers(), 2);
    assert_eq!(drain(&mut a), ["data: all\n\n"]);
    assert_eq!(drain(&mut none), ["data: all\n\n"]);
}

#[test]
fn targeted_sends_reach_only_their_targets() {
    let hub = hub();
    let mut a = hub.subscribe("t").unwrap();
    let mut b = hub.subscribe("t").unwrap();
    let mut c = hub.subscribe("t").unwrap();
    hub.send_to(b.id(), Event::new("for b")).unwrap();
    hub.send_to_many(&[a.id(), c.id()], Event::new("for a and c")).unwrap();
    assert_eq!(drain(&mut a), ["data: for a and c\n\n"]);
    assert_eq!(drain(&mut b), ["data: for b\n\n"]);
    assert_eq!(drain(&mut c), ["data: for a and c\n\n"]);
    let gone = c.id();
    drop(c);
    assert_eq!(hub.send_to(gone, Event::new("x")).unwrap().receivers(), 0);
}

#[test]
fn invalid_names_are_typed_errors() {
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_max_topic_len(8)
        .with_max_topics_per_subscription(2)
        .build();
    let err = hub.subscribe("way-too-long").unwrap_err();
    assert_eq!(
        err,
        SubscribeError::Topic {
            name: "way-too-long".into(),
            error: TopicError::TooLong { len: 12, max: 8 }
        }
    );
    assert!(matches!(
        hub.subscribe("a*"),
        Err(SubscribeError::Topic { error: TopicError::Wildcard, .. })
    ));
    assert!(matches!(
        hub.subscribe(Subscribe::new().with_pattern("")),
        Err(SubscribeError::Topic { error: TopicError::Empty, .. })
    ));
    assert!(matches!(
        hub.subscribe("a\u{202E}b"),
        Err(SubscribeError::Topic { error: TopicError::InvisibleChar, .. })
    ));
    assert_eq!(
        hub.subscribe(["a", "b", "c"]).unwrap_err(),
        SubscribeError::TooManyTopics { count: 3, max: 2 }
    );
    assert_eq!(
        hub.publish("a\0", Event::new("x")).unwrap_err(),
        PublishError::Topic(TopicError::ControlChar)
    );
    // A hostile name is not echoed whole.
    let long = "é".repeat(5000);
    match Hub::new().subscribe(long.as_str()) {
        Err(SubscribeError::Topic { name, .. }) => assert!(name.len() <= 64),
        other => panic!("expected a topic error, got {other:?}"),
    }
    assert_eq!(hub.subscriber_count(), 0);
}

#[test]
fn invalid_events_are_refused_before_anything_is_delivered() {
    let hub = Hub::builder().with_heartbeat(None).with_max_event_bytes(64).build();
    let mut sub = hub.subscribe("t").unwrap();
    for bad in [
        Event::new("x").with_event("a\nb"),
        Event::new("x").with_id("a\rb"),
        Event::new("x").with_id("a\0b"),
        Event::new("x".repeat(100)),
    ] {
        assert!(matches!(hub.publish("t", bad.clone()), Err(PublishError::Event(_))));
        assert!(matches!(hub.broadcast(bad.clone()), Err(PublishError::Event(_))));
        assert!(matches!(hub.send_to(sub.id(), bad), Err(PublishError::Event(_))));
    }
    assert!(drain(&mut sub).is_empty());
    assert_eq!(hub.stats().events_published, 0);
}

#[test]
fn data_line_breaks_are_normalised_at_publish() {
    let hub = hub();
    let mut sub = hub.subscribe("t").unwrap();
    hub.publish("t", Event::new("a\r\nb\rc\n")).unwrap();
    assert_eq!(drain(&mut sub), ["data: a\ndata: b\ndata: c\ndata:\n\n"]);
}

#[test]
fn every_receiver_shares_one_encoding() {
    let hub = hub();
    let mut a = hub.subscribe("t").unwrap();
    let mut b = hub.subscribe(Subscribe::new().with_pattern("*")).unwrap();
    hub.publish("t", Event::new("shared")).unwrap();
    let fa = a.try_recv().unwrap().unwrap().into_bytes();
    let fb = b.try_recv().unwrap().unwrap().into_bytes();
    assert_eq!(fa.as_ptr(), fb.as_ptr());
}

#[test]
fn many_publishers_to_one_topic_give_every_subscriber_one_order() {
    let hub = hub();
    let mut subs: Vec<_> = (0..4)
        .map(|_| hub.subscribe(Subscribe::from("t").with_capacity(10_000)).unwrap())
        .collect();
    let threads: Vec<_> = (0..4)
        .map(|p| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for n in 0..500 {
                    hub.publish("t", Event::new(format!("{p}-{n}"))).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let first = drain(&mut subs[0]);
    assert_eq!(first.len(), 2000);
    for sub in &mut subs[1..] {
        assert_eq!(drain(sub), first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_pattern_subscriber_wakes_for_a_topic_that_appears_later() {
    // The subscriber parks on the rings it has; the publish creates a topic its pattern
    // matches, with a ring it was never parked on.
    let hub = hub();
    let mut sub =
        hub.subscribe(Subscribe::new().with_topic("chat").with_pattern("room:*")).unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 3 {
            let batch = tokio::time::timeout(std::time::Duration::from_secs(10), sub.recv())
                .await
                .expect("woken within 10 s")
                .expect("live");
            got.extend(batch.into_iter().map(|b| String::from_utf8(b.to_vec()).unwrap()));
        }
        got
    });
    for (topic, data) in [("room:1", "1"), ("chat", "2"), ("room:2", "3")] {
        // Let the reader park before each publish.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        hub.publish(topic, Event::new(data)).unwrap();
    }
    assert_eq!(reader.await.unwrap(), ["data: 1\n\n", "data: 2\n\n", "data: 3\n\n"]);
}

#[test]
fn events_on_several_topics_arrive_in_publish_order() {
    let hub = hub();
    let mut sub =
        hub.subscribe(Subscribe::new().with_topics(["a", "b"]).with_pattern("c:*")).unwrap();
    let mut expected = Vec::new();
    for n in 0..300 {
        let topic = ["a", "b", "c:1", "c:2"][n % 4];
        hub.publish(topic, Event::new(n.to_string())).unwrap();
        if n % 7 == 0 {
            hub.broadcast(Event::new(format!("all {n}"))).unwrap();
            expected.push(format!("data: all {n}\n\n"));
        }
        if n % 11 == 0 {
            hub.send_to(sub.id(), Event::new(format!("you {n}"))).unwrap();
        }
        expected.insert(expected.len() - usize::from(n % 7 == 0), format!("data: {n}\n\n"));
        if n % 11 == 0 {
            expected.push(format!("data: you {n}\n\n"));
        }
        if n % 50 == 49 {
            let got = drain(&mut sub);
            assert_eq!(got, expected);
            expected.clear();
        }
    }
}
