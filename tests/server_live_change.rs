//! Live changes of a subscription through the library's native listener over real TCP:
//! `Hub::update_subscription` racing a publisher, checked against the hub's one order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssehub::server::Server;
use ssehub::{Endpoint, Event, HistoryLimits, Hub, SessionLimits, SubscriptionChange, UpdateError};

#[path = "support/http.rs"]
mod http_support;
#[path = "support/seam.rs"]
mod seam;

use http_support::{get, Client};
use seam::{check_seam, seq};

const WAIT: Duration = Duration::from_secs(10);

/// Opens a stream on `target`, asserting 200.
async fn open(addr: SocketAddr, target: &str) -> Client {
    let client = get(addr, target).await;
    assert_eq!(client.status, 200, "{target}");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_racing_publishes_moves_the_stream_at_one_point_in_the_order() {
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_history(Some(HistoryLimits::new()))
        .with_capacity(100_000)
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Server::new(Endpoint::new(hub.clone())).with_path("/events").serve(listener));
    let mut client = open(addr, "/events?topic=a").await;
    let deadline = std::time::Instant::now() + WAIT;
    while hub.subscriber_count() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // A publisher alternating a and b, recording each event's place in the order.
    let published = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (hub, published, stop) = (hub.clone(), published.clone(), stop.clone());
        std::thread::spawn(move || {
            // Bounded: the test stops it long before.
            for n in 0..1_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let topic = if n % 2 == 0 { "a" } else { "b" };
                let sent = hub.publish(topic, Event::new(n.to_string())).unwrap();
                published.lock().unwrap().push((topic.to_string(), seq(sent.id().unwrap())));
            }
        })
    };
    let wait_for = |count: usize| {
        let published = published.clone();
        async move {
            let deadline = std::time::Instant::now() + WAIT;
            while published.lock().unwrap().len() < count {
                assert!(std::time::Instant::now() < deadline, "the publisher is stuck");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    wait_for(200).await;
    // The hub's first subscriber: ids count from 1.
    let subscriber = ssehub::SubscriberId::from_u64(1);
    let began = published.lock().unwrap().last().map_or(0, |(_, s)| *s);
    let change = SubscriptionChange::new().with_removed_topic("a").with_added_topic("b");
    hub.update_subscription(subscriber, change).unwrap();
    let returned = hub.publish("c", Event::new("after")).unwrap();
    let returned = seq(returned.id().unwrap());
    let so_far = published.lock().unwrap().len();
    wait_for(so_far + 200).await;
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    hub.publish("b", Event::new("end")).unwrap();

    let mut received = Vec::new();
    loop {
        let event = client.next().await;
        if event.data == "end" {
            break;
        }
        let topic = if event.data.parse::<u64>().unwrap() % 2 == 0 { "a" } else { "b" };
        received.push((topic.to_string(), seq(&event.id)));
    }
    let published = published.lock().unwrap().clone();
    eprintln!(
        "received {} of {} published, change between {began} and {returned}",
        received.len(),
        published.len()
    );
    check_seam(&received, &published, began, returned);
}

#[tokio::test]
async fn a_change_to_an_ended_or_unknown_subscription_is_refused() {
    let hub = Hub::builder().with_heartbeat(None).with_sessions(Some(SessionLimits::new())).build();
    let sub = hub.subscribe("a").unwrap();
    let id = sub.id();
    drop(sub);
    let change = SubscriptionChange::new().with_added_topic("b");
    assert_eq!(hub.update_subscription(id, change.clone()), Err(UpdateError::Ended));
    assert_eq!(hub.update_session("nope", None, change), Err(UpdateError::UnknownSession));
    let sub = hub.subscribe("a").unwrap();
    let bad = SubscriptionChange::new().with_added_topic("bad\nname");
    assert!(matches!(hub.update_subscription(sub.id(), bad), Err(UpdateError::Topic { .. })));
    assert_eq!(hub.topic_subscriber_count("a"), 1);

    // The limit counts what the subscription asks for after the change.
    let hub = Hub::builder().with_heartbeat(None).with_max_topics_per_subscription(2).build();
    let sub = hub.subscribe(["a", "b"]).unwrap();
    let swap = SubscriptionChange::new().with_removed_topic("a").with_added_topic("c");
    assert_eq!(hub.update_subscription(sub.id(), swap), Ok(()));
    let more = SubscriptionChange::new().with_added_pattern("d:*");
    assert_eq!(
        hub.update_subscription(sub.id(), more),
        Err(UpdateError::TooManyTopics { count: 3, max: 2 })
    );
    let topics: Vec<String> = hub.topics().into_iter().map(|(name, _)| name).collect();
    assert_eq!(topics.len(), 2, "{topics:?}");
    assert_eq!((hub.topic_subscriber_count("b"), hub.topic_subscriber_count("c")), (1, 1));
}
