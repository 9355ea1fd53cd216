//! The `ssehub` binary joined to a real Redis: the broker link's counters on `/stats` and
//! `/metrics`, and a full publish window answered with 503 and `Retry-After` at once, never
//! queued. The broker and the server are processes started here, on loopback, killed by PID;
//! every wait is bounded. Without `redis-server` installed the test fails saying how to
//! install it (`.ci/run` does).
#![cfg(feature = "redis")]

#[path = "../../tests/support/brokers.rs"]
mod brokers;
#[path = "../../tests/support/hub_process.rs"]
mod hub_process;

use std::sync::mpsc;

use brokers::{Broker, Kind};
use hub_process::*;
use serde_json::json;

/// The binary joined to `broker`, with a publish window of `window`.
fn node(broker: &Broker, window: &str) -> Server {
    let mut command = clean_command(env!("CARGO_BIN_EXE_ssehub"));
    command.args(["--addr", "127.0.0.1:0", "--redis", &broker.url()]);
    command.args(["--broker-max-in-flight", window]);
    Server::from_command(command)
}

/// The value of the unlabelled sample `name` in a `/metrics` text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_nodes_broker_counters_are_on_stats_and_metrics() {
    let broker = Broker::start(Kind::Redis);
    let server = node(&broker, "4096");
    for n in 0..3 {
        publish(server.addr, "t", &json!({ "data": format!("e{n}") }));
    }
    let stats = get(server.addr, "/stats").json();
    let link = &stats["backplane"];
    assert_eq!(link["connected"], true, "{stats}");
    assert_eq!(link["published"], 3, "{stats}");
    assert!(link["publish_batches"].as_u64().is_some_and(|b| (1..=3).contains(&b)), "{stats}");
    for field in ["publish_busy", "ranges_recovered", "events_recovered", "gaps"] {
        assert_eq!(link[field], 0, "{field}: {stats}");
    }
    let metrics = get(server.addr, "/metrics").body;
    assert_eq!(sample(&metrics, "ssehub_backplane_connected"), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "ssehub_backplane_published_total"), Some(3.0), "{metrics}");
    for name in [
        "ssehub_backplane_publish_busy_total",
        "ssehub_backplane_ranges_recovered_total",
        "ssehub_backplane_events_recovered_total",
    ] {
        assert_eq!(sample(&metrics, name), Some(0.0), "{name}: {metrics}");
    }
}

#[test]
fn a_full_publish_window_answers_503_with_retry_after_at_once() {
    let broker = Broker::start(Kind::Redis);
    // At most two publishes admitted to wait; the batch on the wire holds what was admitted,
    // so no more than four are held at once.
    let server = node(&broker, "2");
    let held = 4;
    publish(server.addr, "t", &json!({ "data": "warm" }));
    // A frozen broker takes nothing: the window fills and stays full.
    broker.signal("STOP");
    let (done, results) = mpsc::channel();
    let posts = 12;
    let senders: Vec<_> = (0..posts)
        .map(|n| {
            let (addr, done) = (server.addr, done.clone());
            std::thread::spawn(move || {
                let body = json!({ "data": format!("p{n}") }).to_string();
                let response = post(addr, "/publish?topic=t", &body);
                let retry = response.header("retry-after").map(str::to_string);
                let _ = done.send((response.status, retry));
            })
        })
        .collect();
    // The refused ones answer while the broker is still frozen: nothing queues behind it.
    let mut answered = Vec::new();
    while answered.len() < posts - held {
        match results.recv_timeout(WAIT) {
            Ok(result) => answered.push(result),
            Err(_) => break,
        }
    }
    broker.signal("CONT");
    for sender in senders {
        sender.join().expect("a publisher thread");
    }
    answered.extend(results.try_iter());
    let busy: Vec<_> = answered.iter().filter(|(status, _)| *status == 503).collect();
    assert!(busy.len() >= posts - held, "{answered:?}");
    assert!(busy.iter().all(|(_, retry)| retry.as_deref() == Some("1")), "{answered:?}");
    let accepted = answered.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(busy.len() + accepted, posts, "every POST is 200 or 503: {answered:?}");
    let stats = get(server.addr, "/stats").json();
    assert_eq!(stats["backplane"]["publish_busy"], busy.len(), "{stats}");
    assert_eq!(stats["backplane"]["publish_errors"], 0, "the held ones went through: {stats}");
    assert_eq!(stats["backplane"]["published"], 1 + accepted, "{stats}");
    let metrics = get(server.addr, "/metrics").body;
    let counted = sample(&metrics, "ssehub_backplane_publish_busy_total");
    assert_eq!(counted, Some(busy.len() as f64), "{metrics}");
}

#[test]
fn an_ndjson_batch_goes_to_the_broker_in_a_few_round_trips() {
    let broker = Broker::start(Kind::Redis);
    let server = node(&broker, "4096");
    let lines = 600;
    let body: String = (0..lines)
        .map(|n| {
            format!("{}\n", json!({ "topic": format!("t{}", n % 3), "data": format!("e{n}") }))
        })
        .collect();
    let headers = [("content-type", "application/x-ndjson")];
    let response = request(server.addr, "POST", "/publish", &headers, &body);
    assert_eq!(response.status, 200, "{}", response.body);
    let ids: Vec<u64> = response
        .body
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line"))
        .map(|line| line["id"].as_str().and_then(|id| id.rsplit('-').next()?.parse().ok()))
        .map(|seq| seq.expect("an id {epoch}-{seq}"))
        .collect();
    assert_eq!(ids.len(), lines);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "numbered in the lines' order");
    let stats = get(server.addr, "/stats").json();
    let trips = stats["backplane"]["publish_batches"].as_u64().expect("publish_batches");
    // 256 events a round trip at most; one at a time would be 600.
    assert!((3..=8).contains(&trips), "{lines} lines took {trips} round trips: {stats}");
    assert_eq!(stats["backplane"]["published"], lines, "{stats}");
}
