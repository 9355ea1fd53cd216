//! `POST /subscription?session=TOKEN` on the hub server, black-box over real TCP: a live change
//! racing publishes moves the stream at one point in the hub's order; the resolver (and with
//! JWT on, the token's claim and principal) decides on added topics, and a refusal changes
//! nothing.

#[path = "support/hub_process.rs"]
mod hub_process;
#[path = "support/seam.rs"]
mod seam;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hub_process::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use seam::{check_seam, seq};
use serde_json::{json, Value};

/// The HS256 secret (32 bytes or more, as the server asks).
const SECRET: &str = "test-only-secret-0123456789abcdef";

fn bearer(sub: &str, subscribe: &[&str], publish: &[&str]) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = json!({"sub": sub, "exp": exp,
        "ssehub": {"subscribe": subscribe, "publish": publish}});
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    format!("Bearer {}", encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap())
}

/// Opens a stream; returns it with its session token.
fn open(addr: std::net::SocketAddr, target: &str, headers: &[(&str, &str)]) -> (Stream, String) {
    let mut stream = Stream::open(addr, target, headers);
    assert_eq!(stream.status, 200, "GET {target}");
    let connected = stream.next().expect("the connected event");
    assert_eq!(connected.event, "connected");
    let data: Value = serde_json::from_str(&connected.data).unwrap();
    (stream, data["session"].as_str().expect("a session token").to_string())
}

/// `POST /subscription?session=TOKEN` with `body` and `headers`.
fn change(
    addr: std::net::SocketAddr,
    token: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Response {
    let target = format!("/subscription?session={token}");
    request(addr, "POST", &target, headers, &body.to_string())
}

#[test]
fn a_change_racing_publishes_moves_the_stream_at_one_point_in_the_order() {
    let server = Server::start(&["--heartbeat", "0"]);
    let addr = server.addr;
    let (mut stream, token) = open(addr, "/events?topic=a", &[]);
    let published = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (published, stop) = (published.clone(), stop.clone());
        std::thread::spawn(move || {
            for n in 0..5_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let topic = if n % 2 == 0 { "a" } else { "b" };
                let id = publish(addr, topic, &json!({ "data": n.to_string() }));
                published.lock().unwrap().push((topic.to_string(), seq(&id)));
            }
        })
    };
    let wait_for = |count: usize| {
        let deadline = std::time::Instant::now() + WAIT;
        while published.lock().unwrap().len() < count {
            assert!(std::time::Instant::now() < deadline, "the publisher is stuck");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for(100);
    let began = published.lock().unwrap().last().map_or(0, |(_, s)| *s);
    let body = json!({"add": {"topics": ["b"]}, "remove": {"topics": ["a"]}});
    let answer = change(addr, &token, &body, &[]);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let returned = seq(&publish(addr, "c", &json!({ "data": "after" })));
    let so_far = published.lock().unwrap().len();
    wait_for(so_far + 100);
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    publish(addr, "b", &json!({ "data": "end" }));

    let mut received = Vec::new();
    loop {
        let event = stream.next_message().expect("events up to the marker");
        if event.data == "end" {
            break;
        }
        let topic = if event.data.parse::<u64>().unwrap() % 2 == 0 { "a" } else { "b" };
        received.push((topic.to_string(), seq(&event.id)));
    }
    let published = published.lock().unwrap().clone();
    check_seam(&received, &published, began, returned);
}

#[test]
fn bad_changes_get_400_and_unknown_sessions_404() {
    let server = Server::start(&["--heartbeat", "0"]);
    let addr = server.addr;
    let (_stream, token) = open(addr, "/events?topic=a", &[]);
    let cases = [
        (token.as_str(), "not json"),
        (token.as_str(), r#"{"add": {"topic": ["x"]}}"#),
        (token.as_str(), r#"{"add": {"topics": ["bad*name"]}}"#),
        ("", r#"{}"#),
    ];
    for (token, body) in cases {
        let target = format!("/subscription?session={token}");
        let response = request(addr, "POST", &target, &[], body);
        assert_eq!(response.status, 400, "{body}: {}", response.body);
    }
    let unknown = change(addr, "0123", &json!({"add": {"topics": ["b"]}}), &[]);
    assert_eq!(unknown.status, 404, "{}", unknown.body);
}

#[test]
fn with_jwt_added_topics_need_the_claim_and_the_session_its_principal() {
    let server = Server::start(&["--heartbeat", "0", "--jwt-secret", SECRET]);
    let addr = server.addr;
    let ann = bearer("ann", &["a", "b"], &[]);
    let ops = bearer("ops", &[], &["*"]);
    let (mut stream, token) = open(addr, "/events?topic=a", &[("Authorization", &ann)]);
    let add = |topic: &str| json!({"add": {"topics": [topic]}});

    assert_eq!(change(addr, &token, &add("b"), &[]).status, 401);
    let refused = change(addr, &token, &add("c"), &[("Authorization", &ann)]);
    assert_eq!(refused.status, 403, "{}", refused.body);
    let bob = bearer("bob", &["*"], &[]);
    let hijack = change(addr, &token, &add("b"), &[("Authorization", &bob)]);
    assert_eq!(hijack.status, 403, "{}", hijack.body);
    let added = change(addr, &token, &add("b"), &[("Authorization", &ann)]);
    assert_eq!(added.status, 200, "{}", added.body);

    // The refused and hijacked changes changed nothing: c is not received, b is.
    for (topic, data) in [("c", "on c"), ("b", "on b"), ("a", "on a")] {
        let body = json!({ "data": data }).to_string();
        let target = format!("/publish?topic={topic}");
        let answer = request(addr, "POST", &target, &[("Authorization", &ops)], &body);
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert_eq!(stream.next_message().map(|e| e.data), Some("on b".into()));
    assert_eq!(stream.next_message().map(|e| e.data), Some("on a".into()));
}

#[test]
fn the_interval_of_an_open_stream_changes_and_a_bad_one_is_400() {
    let server = Server::start(&["--heartbeat", "0"]);
    let addr = server.addr;
    let (mut stream, token) = open(addr, "/events?topic=px&interval=1s", &[]);
    for n in 0..5 {
        publish(addr, "px", &json!({ "data": format!("slow {n}"), "key": "k" }));
    }
    // The 1 s tier owes the stream its last value: the switch to every event hands it over.
    let to_live = change(addr, &token, &json!({ "interval": "0" }), &[]);
    assert_eq!(to_live.status, 200, "{}", to_live.body);
    for n in 0..3 {
        publish(addr, "px", &json!({ "data": format!("live {n}"), "key": "k" }));
    }
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("live 2") {
        got.push(stream.next().expect("an event").data);
    }
    // A tick may have sent an earlier value before the switch; the last one always comes.
    assert_eq!(got[got.len() - 4..], ["slow 4", "live 0", "live 1", "live 2"], "{got:?}");

    let to_tier = change(addr, &token, &json!({ "interval": "250ms" }), &[]);
    assert_eq!(to_tier.status, 200, "{}", to_tier.body);
    for n in 0..50 {
        publish(addr, "px", &json!({ "data": format!("tier {n}"), "key": "k" }));
    }
    publish(addr, "px", &json!({ "data": "end", "key": "k" }));
    let mut tiered = Vec::new();
    loop {
        let event = stream.next().expect("an event");
        if event.data == "end" {
            break;
        }
        tiered.push(event.data);
    }
    assert!(tiered.len() < 50, "conflated at 250 ms: {tiered:?}");

    for bad in
        [json!({ "interval": "soon" }), json!({ "interval": "5ms" }), json!({ "interval": 250 })]
    {
        let refused = change(addr, &token, &bad, &[]);
        assert_eq!(refused.status, 400, "{bad}: {}", refused.body);
    }
    let refused = Stream::open(addr, "/events?topic=px&interval=90s", &[]);
    assert_eq!(refused.status, 400);
}
