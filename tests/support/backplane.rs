//! Scenarios every backplane must pass, against a real broker: hub nodes on their own loopback
//! ports (the native listener), real SSE clients over TCP. Shared by `backplane_redis.rs` and
//! `backplane_nats.rs`. Every wait is bounded.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use ssehub::backplane::{Backplane, BackplaneError, BrokerConfig};
use ssehub::client::{ClientEvent, EventSource};
use ssehub::parse::ParsedEvent;
use ssehub::{Endpoint, Event, HistoryLimits, Hub, Published, Subscribe};
use tokio::net::TcpListener;

use crate::brokers::{Broker, Kind};
use crate::http::{eventually, get, request, Client};

/// Makes a broker configuration: the broker's URL, a namespace (so scenarios sharing a broker
/// do not share history), and how many events the broker keeps.
pub type Config = fn(&str, &str, usize) -> BrokerConfig;

/// The longest a scenario waits for anything.
const TIMEOUT: Duration = Duration::from_secs(20);

/// One hub node: a hub, its backplane and its listener.
pub struct Node {
    /// The hub.
    pub hub: Hub,
    /// Its backplane.
    pub backplane: Backplane,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The listener's task.
    server: tokio::task::JoinHandle<()>,
}

impl Node {
    /// A node on a fresh loopback port, mirroring `mirror` events per topic.
    pub async fn start(config: BrokerConfig, mirror: usize) -> Node {
        let hub = Hub::builder()
            .with_history(Some(HistoryLimits::new().with_max_events(mirror)))
            .with_heartbeat(None)
            .build();
        let backplane = tokio::time::timeout(TIMEOUT, Backplane::connect(&hub, config))
            .await
            .expect("connect in time")
            .expect("connect to the broker");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = ssehub::server::Server::new(Endpoint::new(hub.clone())).with_path("/events");
        let server = tokio::spawn(server.serve(listener));
        Node { hub, backplane, addr, server }
    }

    /// Kills the node: stops accepting, leaves the broker, ends every stream.
    pub fn kill(self) {
        self.server.abort();
        self.backplane.shutdown();
        self.hub.shutdown();
    }

    /// Publishes through this node, or fails the test: the event's id.
    pub async fn publish(&self, topic: &str, data: &str) -> String {
        id(&self.backplane.publish(topic, Event::new(data)).await.expect("publish"))
    }
}

/// The id of an event the broker acknowledged, which it always has; no subscriber has the
/// event when the publish returns, so none is counted.
pub fn id(published: &Published) -> String {
    assert_eq!(published.receivers(), 0, "receivers are counted as the event arrives");
    published.id().expect("a backplane event has an id").to_string()
}

/// The sequence number in an id `{epoch:x}-{seq}`.
fn seq(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|s| s.parse().ok()).expect("a backplane id")
}

/// `(id, data)` of each event.
fn pairs(events: &[ParsedEvent]) -> Vec<(String, String)> {
    events.iter().map(|e| (e.id.clone(), e.data.clone())).collect()
}

/// An SSE request for `topics` on `node`, optionally resuming.
async fn open(node: &Node, topics: &str, last: Option<&str>) -> Client {
    let target = format!("/events?{topics}");
    let client = match last {
        Some(last) => request(node.addr, "GET", &target, &[("last-event-id", last)]).await,
        None => get(node.addr, &target).await,
    };
    assert_eq!(client.status, 200, "{:?}", client.headers);
    client
}

/// Three nodes on one broker: events published concurrently on each arrive at a client on every
/// node, in the same order everywhere, none lost, none doubled.
pub async fn three_nodes_one_order(kind: Kind, config: Config) {
    let broker = Broker::start(kind);
    let url = broker.url();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(config(&url, "order", 10_000), 1000).await);
    }
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(open(node, "topic=t&topic=u", None).await);
    }
    for node in &nodes {
        eventually("clients subscribed", || node.hub.topic_subscriber_count("u") == 1).await;
    }
    const EACH: usize = 40;
    let mut publishers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let backplane = node.backplane.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let topic = if i % 2 == 0 { "t" } else { "u" };
                backplane.publish(topic, Event::new(format!("{n}-{i}"))).await.expect("publish");
            }
        }));
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let mut seen = Vec::new();
    for client in &mut clients {
        seen.push(pairs(&client.events(3 * EACH).await));
    }
    assert_eq!(seen[0], seen[1], "node 0 and node 1 disagree on the order");
    assert_eq!(seen[0], seen[2], "node 0 and node 2 disagree on the order");
    let ids: Vec<u64> = seen[0].iter().map(|(id, _)| seq(id)).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing: {ids:?}");
    let data: HashSet<&str> = seen[0].iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(data.len(), 3 * EACH, "an event lost or doubled");
    for n in 0..3 {
        let mine: Vec<usize> = seen[0]
            .iter()
            .filter_map(|(_, d)| d.strip_prefix(&format!("{n}-")).and_then(|i| i.parse().ok()))
            .collect();
        assert_eq!(mine, (0..EACH).collect::<Vec<_>>(), "node {n}'s events out of order");
    }
    for node in &nodes {
        let state = node.backplane.state();
        assert!(state.connected);
        assert_eq!(state.published, EACH as u64);
        eventually("every event received", || node.backplane.state().received >= 3 * EACH as u64)
            .await;
        assert_eq!(node.backplane.state().lag, 0);
    }
    drop(broker);
}

/// A client moved to another node resumes exactly from its `Last-Event-ID`: from that node's
/// mirror, and on a node started after the events, from the broker's history; beyond the
/// broker's history, a `too-old` reset.
pub async fn moved_client_resumes_exactly(kind: Kind, config: Config) {
    let broker = Broker::start(kind);
    let url = broker.url();
    let a = Node::start(config(&url, "move", 10_000), 1000).await;
    let b = Node::start(config(&url, "move", 10_000), 1000).await;
    let mut client = open(&a, "topic=t", None).await;
    eventually("subscribed", || a.hub.topic_subscriber_count("t") == 1).await;
    for i in 1..=10 {
        b.publish("t", &format!("e{i}")).await;
    }
    let first = pairs(&client.events(10).await);
    drop(client);
    for i in 11..=20 {
        a.publish("t", &format!("e{i}")).await;
    }
    // On B, from its mirror.
    let mut moved = open(&b, "topic=t", Some(&first[9].0)).await;
    let replayed = pairs(&moved.events(10).await);
    let expected: Vec<String> = (11..=20).map(|i| format!("e{i}")).collect();
    assert_eq!(replayed.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), expected);
    let e21 = b.publish("t", "e21").await;
    assert_eq!(moved.events(1).await[0].id, e21);
    assert_eq!(b.backplane.state().fetches, 0, "B's mirror reached back");

    // On a node that was not there: from the broker.
    let c = Node::start(config(&url, "move", 10_000), 1000).await;
    let mut late = open(&c, "topic=t", Some(&first[4].0)).await;
    let replayed = pairs(&late.events(16).await);
    let expected: Vec<String> = (6..=21).map(|i| format!("e{i}")).collect();
    assert_eq!(replayed.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), expected);
    assert_eq!(replayed[15].0, e21, "ids mean the same on every node");
    a.publish("t", "e22").await;
    assert_eq!(late.events(1).await[0].data, "e22");
    assert_eq!(c.backplane.state().fetches, 1);

    // A pattern resumes from the broker too.
    let request = Subscribe::new().with_pattern("t*").with_last_event_id(first[6].0.clone());
    let mut sub = c.backplane.subscribe(request).await.expect("subscribe");
    let batch = tokio::time::timeout(TIMEOUT, sub.recv()).await.expect("in time").expect("frames");
    let text = String::from_utf8_lossy(&batch.into_bytes()).to_string();
    assert!(text.contains("data: e8\n") && text.contains("data: e22\n"), "{text}");
    assert!(!text.contains("data: e7\n"), "{text}");
    assert_eq!(c.backplane.state().fetches, 2);

    // Beyond the broker's history: a reset, on any node.
    let small = Node::start(config(&url, "small", 5), 5).await;
    let first_old = small.publish("old", "o0").await;
    for i in 1..300 {
        small.publish("old", &format!("o{i}")).await;
    }
    let fresh = Node::start(config(&url, "small", 5), 5).await;
    for node in [&small, &fresh] {
        let mut stale = open(node, "topic=old", Some(&first_old)).await;
        let reset = stale.events(1).await;
        assert_eq!(reset[0].event, "reset");
        assert!(reset[0].data.contains("too-old"), "{:?}", reset[0]);
    }
    drop(broker);
}

/// The broker killed and restarted mid-stream, under load: nodes reconnect by themselves;
/// publishes fail while it is away and are never reported then lost; a reconnecting client on
/// another node gets every acknowledged event exactly once, in order (live or replayed).
pub async fn broker_restart(kind: Kind, config: Config) {
    let mut broker = Broker::start(kind);
    let url = broker.url();
    let a = Node::start(config(&url, "restart", 10_000), 1000).await;
    let b = Node::start(config(&url, "restart", 10_000), 1000).await;
    let source = EventSource::new(&format!("http://{}/events?topic=t", b.addr))
        .expect("a url")
        .with_backoff(ssehub::client::Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(500),
            0.2,
        ));
    let mut events = source.connect().expect("connect");
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Ok(ClientEvent::Message(event)) = event {
                if sender.send(event).is_err() {
                    return;
                }
            }
        }
    });
    eventually("subscribed", || b.hub.topic_subscriber_count("t") == 1).await;
    let mut acknowledged = Vec::new();
    let mut attempted = HashSet::new();
    let mut failed = 0;
    for i in 0..150 {
        if i == 50 {
            broker.kill();
        }
        if i == 80 {
            broker.restart();
        }
        let data = format!("r{i}");
        attempted.insert(data.clone());
        match a.backplane.publish("t", Event::new(data.clone())).await {
            Ok(published) => acknowledged.push((id(&published), data)),
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(failed > 0, "the broker was down for 30 publishes");
    assert!(acknowledged.len() >= 50, "only {} acknowledged", acknowledged.len());
    // However slowly the publisher's connection came back, one more after the restart.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    for attempt in 0.. {
        assert!(tokio::time::Instant::now() < deadline, "no publish succeeded after the restart");
        let data = format!("after{attempt}");
        attempted.insert(data.clone());
        if let Ok(published) = a.backplane.publish("t", Event::new(data.clone())).await {
            acknowledged.push((id(&published), data));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in [&a, &b] {
        eventually("reconnected", || {
            let state = node.backplane.state();
            state.connected && state.reconnects >= 1
        })
        .await;
    }
    let last = acknowledged.last().map(|(id, _)| id.clone()).expect("some acknowledged");
    let mut got: Vec<ParsedEvent> = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while got.last().map(|e| e.id.as_str()) != Some(last.as_str()) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, received.recv()).await {
            Ok(Some(event)) => got.push(event),
            _ => panic!("the client did not get {last}; it got {:?}", pairs(&got)),
        }
    }
    reader.abort();
    assert!(got.iter().all(|e| e.event != "reset"), "no reset needed: {:?}", pairs(&got));
    let data: Vec<&str> = got.iter().map(|e| e.data.as_str()).collect();
    let distinct: HashSet<&str> = data.iter().copied().collect();
    assert_eq!(distinct.len(), data.len(), "an event doubled: {data:?}");
    assert!(data.iter().all(|d| attempted.contains(*d)));
    for (_, acked) in &acknowledged {
        assert!(distinct.contains(acked.as_str()), "acknowledged {acked} lost: {data:?}");
    }
    let ids: Vec<u64> = got.iter().map(|e| seq(&e.id)).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order: {ids:?}");
}

/// A node killed mid-stream: its client resumes on another node, exactly.
pub async fn node_killed(kind: Kind, config: Config) {
    let broker = Broker::start(kind);
    let url = broker.url();
    let a = Node::start(config(&url, "kill", 10_000), 1000).await;
    let b = Node::start(config(&url, "kill", 10_000), 1000).await;
    let mut client = open(&a, "topic=t", None).await;
    eventually("subscribed", || a.hub.topic_subscriber_count("t") == 1).await;
    for i in 1..=5 {
        b.publish("t", &format!("k{i}")).await;
    }
    let before = pairs(&client.events(5).await);
    a.kill();
    let rest = client.until_end().await;
    assert!(rest.is_empty(), "nothing after the kill: {rest:?}");
    for i in 6..=10 {
        b.publish("t", &format!("k{i}")).await;
    }
    let mut resumed = open(&b, "topic=t", Some(&before[4].0)).await;
    let after = pairs(&resumed.events(5).await);
    let expected: Vec<String> = (6..=10).map(|i| format!("k{i}")).collect();
    assert_eq!(after.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), expected);
    assert!(seq(&after[0].0) > seq(&before[4].0));
    drop(broker);
}

/// The broker restarted without its data: nodes notice the new history, end their streams, and
/// a client resuming with an old id gets an `other-epoch` reset, then live events.
pub async fn broker_loses_data(kind: Kind, config: Config) {
    let mut broker = Broker::start(kind);
    let url = broker.url();
    let a = Node::start(config(&url, "lost", 10_000), 1000).await;
    let b = Node::start(config(&url, "lost", 10_000), 1000).await;
    let mut client = open(&b, "topic=t", None).await;
    eventually("subscribed", || b.hub.topic_subscriber_count("t") == 1).await;
    for i in 1..=3 {
        a.publish("t", &format!("old{i}")).await;
    }
    let old = pairs(&client.events(3).await);
    broker.kill();
    broker.wipe();
    broker.restart();
    // The new history starts when a node rejoins or a publish makes it.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let first_new = loop {
        assert!(tokio::time::Instant::now() < deadline, "no publish succeeded after the restart");
        if let Ok(published) = a.backplane.publish("t", Event::new("new1")).await {
            break id(&published);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let old_epoch = old[2].0.rsplit_once('-').map(|(e, _)| e.to_string());
    assert_ne!(first_new.rsplit_once('-').map(|(e, _)| e.to_string()), old_epoch);
    for node in [&a, &b] {
        eventually("rejoined the new history", || {
            let state = node.backplane.state();
            state.connected && state.gaps >= 1
        })
        .await;
    }
    eventually("B has the new history's first event", || {
        b.backplane.state().position >= seq(&first_new)
    })
    .await;
    eventually("B has the new history's first event", || {
        b.backplane.state().position >= seq(&first_new)
    })
    .await;
    let rest = client.until_end().await;
    assert!(rest.iter().all(|e| e.data != "old1"), "nothing old again: {rest:?}");
    let mut resumed = open(&b, "topic=t", Some(&old[2].0)).await;
    let reset = resumed.events(1).await;
    assert_eq!(reset[0].event, "reset");
    assert!(reset[0].data.contains("other-epoch"), "{:?}", reset[0]);
    let live = a.publish("t", "new2").await;
    let got = resumed.events(1).await;
    assert_eq!((got[0].id.as_str(), got[0].data.as_str()), (live.as_str(), "new2"));
}

/// Refusals that need no broker: a hub without history, an unreachable broker (promptly, and
/// leaving the hub as it was).
pub async fn refusals(kind: Kind, config: Config) {
    let scheme = match kind {
        Kind::Redis => "redis",
        Kind::Nats => "nats",
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("a port")
        .port();
    let url = format!("{scheme}://127.0.0.1:{port}");
    let refused = Backplane::connect(&Hub::new(), config(&url, "x", 10)).await;
    assert!(matches!(refused, Err(BackplaneError::NoHistory)), "{refused:?}");
    let hub = Hub::builder().with_history(Some(HistoryLimits::new())).build();
    // Bounded so a connect that never gives up fails the test instead of hanging it.
    let refused = tokio::time::timeout(TIMEOUT, Backplane::connect(&hub, config(&url, "x", 10)))
        .await
        .expect("connect gives up by itself");
    assert!(
        matches!(refused, Err(BackplaneError::Unavailable(_) | BackplaneError::Timeout(_))),
        "{refused:?}"
    );
    let published = hub.publish("t", Event::new("still a hub of its own")).expect("publish");
    assert!(published.id().is_some(), "the hub numbers its own events again");
}

/// A hub joins one backplane at most.
pub async fn one_backplane_per_hub(kind: Kind, config: Config) {
    let broker = Broker::start(kind);
    let node = Node::start(config(&broker.url(), "once", 10), 10).await;
    let again = Backplane::connect(&node.hub, config(&broker.url(), "once", 10)).await;
    assert!(matches!(again, Err(BackplaneError::AlreadyAttached)), "{again:?}");
    node.publish("t", "still joined").await;
}

/// A resume that needs the broker's history while the broker is down is refused with 503 (the
/// client retries), never served with a gap; once the broker is back it resumes exactly.
pub async fn resume_needs_the_broker(kind: Kind, config: Config) {
    let mut broker = Broker::start(kind);
    let url = broker.url();
    let a = Node::start(config(&url, "down", 10_000), 1000).await;
    let mut ids = Vec::new();
    for i in 1..=5 {
        ids.push(a.publish("t", &format!("d{i}")).await);
    }
    // C joined after the events: its mirror does not reach back to them.
    let c = Node::start(config(&url, "down", 10_000), 1000).await;
    broker.kill();
    let mut refused =
        request(c.addr, "GET", "/events?topic=t", &[("last-event-id", &ids[1])]).await;
    let status = refused.status;
    assert!(refused.header("retry-after").is_some());
    assert_eq!(status, 503, "{}", refused.text().await);
    broker.restart();
    eventually("C rejoined", || c.backplane.state().connected).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut resumed = loop {
        let client = request(c.addr, "GET", "/events?topic=t", &[("last-event-id", &ids[1])]).await;
        if client.status == 200 {
            break client;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {} after the restart",
            client.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let replayed = pairs(&resumed.events(3).await);
    assert_eq!(replayed.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), ids[2..].to_vec());
}

/// The broker killed, its port then answered by a listener that takes each connection and
/// closes it at once, then the broker back: the node reports itself disconnected throughout
/// and counts one loss, not one per attempt; it keeps trying without spinning (the pauses
/// themselves, doubling from the first to the longest, are asserted exactly by the
/// supervisor's unit tests, not timed here); once the broker is back it is connected again,
/// and as it missed nothing its clients' streams go on.
pub async fn reconnects_with_backoff(kind: Kind, config: Config) {
    let mut broker = Broker::start(kind);
    let url = broker.url();
    let a = Node::start(config(&url, "backoff", 100), 100).await;
    let mut client = open(&a, "topic=t", None).await;
    eventually("subscribed", || a.hub.topic_subscriber_count("t") == 1).await;
    a.publish("t", "before").await;
    assert_eq!(client.events(1).await[0].data, "before");
    broker.kill();
    let refuser = TcpListener::bind(("127.0.0.1", broker.port)).await.expect("the broker's port");
    eventually("the loss reported", || !a.backplane.state().connected).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(3500);
    let mut attempts = Vec::new();
    while let Ok(accepted) = tokio::time::timeout_at(deadline, refuser.accept()).await {
        attempts.push(tokio::time::Instant::now());
        drop(accepted.expect("accept"));
        let state = a.backplane.state();
        assert!(!state.connected, "connected to nothing: {state:?}");
        assert_eq!(state.reconnects, 1, "one loss, however many attempts: {state:?}");
    }
    drop(refuser);
    let pauses: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    let shown =
        format!("{} attempts, pauses {:?}", attempts.len(), &pauses[..pauses.len().min(12)]);
    // Retried, and paced: 20, 40, 80, 160, 320, then 500 ms (up to half again) allow about ten
    // attempts in 3.5 s; a loop that did not pause makes hundreds. A slow machine only lowers
    // the count, so this bound holds under any load.
    assert!((2..=16).contains(&attempts.len()), "{shown}");
    broker.restart();
    eventually("reconnected", || a.backplane.state().connected).await;
    let state = a.backplane.state();
    assert_eq!((state.reconnects, state.gaps), (1, 0), "nothing missed: {state:?}");
    eprintln!("{kind:?}: {shown}");
    a.publish("t", "after").await;
    assert_eq!(client.events(1).await[0].data, "after", "the same stream goes on");
}

/// Concurrent publishes on one node go to the broker in batches: far fewer round trips than
/// events, each caller gets its own id, and another node delivers every event once, in id
/// order, under the id its publisher was given.
pub async fn concurrent_publishes_go_in_batches(kind: Kind, config: Config) {
    let broker = Broker::start(kind);
    let url = broker.url();
    let a = Node::start(config(&url, "batch", 10_000), 1000).await;
    let b = Node::start(config(&url, "batch", 10_000), 1000).await;
    let mut client = open(&b, "topic=t&topic=u", None).await;
    eventually("client subscribed", || b.hub.topic_subscriber_count("u") == 1).await;
    const N: usize = 200;
    let publishes = (0..N).map(|i| {
        let backplane = a.backplane.clone();
        async move {
            let topic = if i % 2 == 0 { "t" } else { "u" };
            let published = backplane.publish(topic, Event::new(format!("e{i}"))).await;
            (id(&published.expect("publish")), format!("e{i}"))
        }
    });
    let mut expected: Vec<(String, String)> = futures_util::future::join_all(publishes).await;
    let state = a.backplane.state();
    assert_eq!(state.published, N as u64);
    assert!(
        state.publish_batches >= 1 && state.publish_batches <= (N / 4) as u64,
        "{N} concurrent publishes took {} round trips",
        state.publish_batches
    );
    expected.sort_by_key(|(id, _)| seq(id));
    let ids: HashSet<&str> = expected.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), N, "two publishes were given the same id");
    assert_eq!(pairs(&client.events(N).await), expected, "delivered as numbered, once each");
    drop(broker);
}

/// A node whose publish window is full refuses more publishes at once with `Busy` (counted),
/// publishes nothing of them, and delivers every publish it accepted.
pub async fn a_full_window_refuses_at_once(kind: Kind, small_window: Config) {
    let broker = Broker::start(kind);
    let url = broker.url();
    let node = Node::start(small_window(&url, "busy", 10_000), 1000).await;
    let mut client = open(&node, "topic=t", None).await;
    eventually("client subscribed", || node.hub.topic_subscriber_count("t") == 1).await;
    const N: usize = 100;
    let publishes = (0..N).map(|i| {
        let backplane = node.backplane.clone();
        async move { (i, backplane.publish("t", Event::new(format!("e{i}"))).await) }
    });
    let results = futures_util::future::join_all(publishes).await;
    let mut accepted = Vec::new();
    let mut busy = 0u64;
    for (i, result) in results {
        match result {
            Ok(published) => accepted.push((id(&published), format!("e{i}"))),
            Err(BackplaneError::Busy) => busy += 1,
            Err(other) => panic!("publish {i} failed: {other}"),
        }
    }
    assert!(busy > 0, "{N} concurrent publishes into a window of 2 were never refused");
    assert!(!accepted.is_empty(), "nothing was accepted");
    let state = node.backplane.state();
    assert_eq!((state.publish_busy, state.published), (busy, accepted.len() as u64));
    accepted.sort_by_key(|(id, _)| seq(id));
    assert_eq!(pairs(&client.events(accepted.len()).await), accepted);
    // Nothing refused was published: a marker after them is the next event.
    let marker = node.publish("t", "marker").await;
    let next = client.events(1).await;
    assert_eq!(pairs(&next), [(marker, "marker".to_string())]);
    drop(broker);
}

/// The events of `client` until every one of `ends` came (as data); fails the test when the
/// stream ends first.
async fn read_until(client: &mut Client, ends: &[&str]) -> Vec<ParsedEvent> {
    let mut got: Vec<ParsedEvent> = Vec::new();
    while !ends.iter().all(|end| got.iter().any(|e| e.data == *end)) {
        got.extend(client.events(1).await);
    }
    got
}

/// The broker killed (SIGKILL) and restarted with its data while two nodes publish steadily:
/// each node's subscription comes back behind the broker, and the node recovers the missed
/// range from the broker's history instead of ending its streams. One client per node, on one
/// TCP connection throughout (a stream that ended fails the test: these clients do not
/// reconnect), gets every event the broker stored exactly once, numbered without a hole, in
/// the same order on both nodes. The broker stays down for `down`. Returns the ranges the nodes
/// recovered.
pub async fn broker_restart_without_a_storm(kind: Kind, config: Config, down: Duration) -> u64 {
    let mut broker = Broker::start(kind);
    let url = broker.url();
    let a = Node::start(config(&url, "storm", 10_000), 1000).await;
    let b = Node::start(config(&url, "storm", 10_000), 1000).await;
    let mut readers = Vec::new();
    for node in [&a, &b] {
        let mut client = open(node, "topic=t&topic=u", None).await;
        eventually("subscribed", || node.hub.topic_subscriber_count("u") == 1).await;
        readers
            .push(tokio::spawn(async move { read_until(&mut client, &["end-0", "end-1"]).await }));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for (n, node) in [&a, &b].into_iter().enumerate() {
        let (backplane, stop, acked) = (node.backplane.clone(), stop.clone(), acked.clone());
        publishers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..3000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let topic = if i % 2 == 0 { "t" } else { "u" };
                if let Ok(published) =
                    backplane.publish(topic, Event::new(format!("{n}-{i}"))).await
                {
                    acknowledged.push(id(&published));
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acknowledged
        }));
    }
    // Steady publishing first (counted, not timed: a loaded machine publishes slower).
    let count = || acked.load(std::sync::atomic::Ordering::Relaxed);
    eventually("100 publishes before the kill", || count() >= 100).await;
    broker.kill();
    tokio::time::sleep(down).await;
    broker.restart();
    for node in [&a, &b] {
        eventually("reconnected", || {
            let state = node.backplane.state();
            state.connected && state.reconnects >= 1
        })
        .await;
    }
    // Publishing goes on across the rejoin, then for a while after it.
    let rejoined = count();
    eventually("50 publishes after the rejoin", || count() >= rejoined + 50).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for publisher in publishers {
        acknowledged.extend(publisher.await.expect("publisher"));
    }
    assert!(acknowledged.len() > 100, "only {} acknowledged", acknowledged.len());
    for (n, node) in [&a, &b].into_iter().enumerate() {
        let end = Event::new(format!("end-{n}"));
        node.backplane.publish("t", end).await.expect("publish after the restart");
    }
    let mut seen = Vec::new();
    for reader in readers {
        let got = tokio::time::timeout(TIMEOUT, reader).await.expect("in time");
        let got = got.expect("the stream never ended");
        assert!(got.iter().all(|e| e.event != "reset"), "no reset: {:?}", pairs(&got));
        seen.push(pairs(&got));
    }
    assert_eq!(seen[0], seen[1], "one order on both nodes");
    let seqs: Vec<u64> = seen[0].iter().map(|(id, _)| seq(id)).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every event the broker numbered, once, in order");
    let ids: HashSet<&str> = seen[0].iter().map(|(id, _)| id.as_str()).collect();
    for acked in &acknowledged {
        assert!(ids.contains(acked.as_str()), "acknowledged {acked} lost");
    }
    let mut recovered = 0;
    for node in [&a, &b] {
        let state = node.backplane.state();
        assert_eq!(state.gaps, 0, "no stream ended: {state:?}");
        assert!(state.events_recovered >= state.ranges_recovered, "{state:?}");
        recovered += state.ranges_recovered;
    }
    recovered
}

/// `publish_all` sends a batch in as few round trips as its size allows and answers each event
/// with its id, in order; an invalid event sends nothing; with the broker frozen, the first
/// round trip fails and no later event of the batch is ever sent.
pub async fn publish_all_in_round_trips(kind: Kind, config: Config) {
    let broker = Broker::start(kind);
    let url = broker.url();
    let node = Node::start(config(&url, "all", 10_000), 1000).await;
    let mut client = open(&node, "topic=t&topic=u", None).await;
    eventually("client subscribed", || node.hub.topic_subscriber_count("u") == 1).await;
    const N: usize = 600;
    let batch = |tag: &str| -> Vec<(String, Event)> {
        let topic = |i: usize| if i % 2 == 0 { "t" } else { "u" }.to_string();
        (0..N).map(|i| (topic(i), Event::new(format!("{tag}{i}")))).collect()
    };
    let before = node.backplane.state().publish_batches;
    let answers = node.backplane.publish_all(batch("e")).await;
    let ids: Vec<String> = answers.iter().map(|a| id(a.as_ref().expect("published"))).collect();
    assert!(ids.windows(2).all(|w| seq(&w[0]) < seq(&w[1])), "numbered in the batch's order");
    let trips = node.backplane.state().publish_batches - before;
    // At least 3 (256 events a round trip); a few more when the batching task takes the first
    // events before the rest are queued. One at a time would be 600.
    assert!((3..=8).contains(&trips), "{N} events took {trips} round trips");
    let expected: Vec<(String, String)> =
        ids.into_iter().zip((0..N).map(|i| format!("e{i}"))).collect();
    assert_eq!(pairs(&client.events(N).await), expected, "delivered in order, once each");

    let invalid = vec![("t".to_string(), Event::new("ok")), ("bad\ntopic".into(), Event::new("x"))];
    let answers = node.backplane.publish_all(invalid).await;
    assert!(matches!(answers[0], Err(BackplaneError::Aborted)), "{answers:?}");
    assert!(matches!(answers[1], Err(BackplaneError::Topic(_))), "{answers:?}");

    broker.signal("STOP");
    let answers = node.backplane.publish_all(batch("f")).await;
    broker.signal("CONT");
    // The first round trip times out (however many events it took); every later event of the
    // batch is aborted, never sent.
    let failed = answers.iter().take_while(|a| matches!(a, Err(BackplaneError::Timeout(_))));
    let failed = failed.count();
    assert!((1..=256).contains(&failed), "first answer: {:?}", answers.first());
    let rest = &answers[failed..];
    let sent = rest.iter().filter(|a| !matches!(a, Err(BackplaneError::Aborted))).count();
    assert_eq!(sent, 0, "{sent} events after the failed round trip were not aborted");
    // The round trip that timed out may still be stored once the broker runs again; nothing
    // after it was sent: after a marker, no later event of the batch ever arrives.
    let marker = node.publish("t", "marker").await;
    let got = read_until(&mut client, &["marker"]).await;
    let sent = |e: &&ParsedEvent| e.data.strip_prefix('f').and_then(|n| n.parse::<usize>().ok());
    let late: Vec<_> = got.iter().filter_map(|e| sent(&e)).filter(|&n| n >= failed).collect();
    assert!(late.is_empty(), "events after the failed round trip were published: {late:?}");
    assert_eq!(got.last().map(|e| e.id.as_str()), Some(marker.as_str()));
    assert_eq!(node.backplane.state().publish_errors, failed as u64, "aborted ones not counted");
    drop(broker);
}
