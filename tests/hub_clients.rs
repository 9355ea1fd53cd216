//! Client ids on the hub server, black-box over real TCP: `client=ID` on `GET /events` (or the
//! token's, with JWT on), the `connected` event carrying it with the session token, and
//! `POST /send?client=GLOB` reaching exactly the streams whose id matches.

#[path = "support/hub_process.rs"]
mod hub_process;

use std::time::{SystemTime, UNIX_EPOCH};

use hub_process::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// The HS256 secret (32 bytes or more, as the server asks).
const SECRET: &str = "test-only-secret-0123456789abcdef";

fn hs256(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes()))
        .unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Opens a stream and returns it with its `connected` event's data.
fn open(addr: std::net::SocketAddr, target: &str, headers: &[(&str, &str)]) -> (Stream, Value) {
    let mut stream = Stream::open(addr, target, headers);
    assert_eq!(stream.status, 200, "GET {target}");
    let connected = stream.next().expect("the connected event");
    assert_eq!((connected.event.as_str(), connected.id.as_str()), ("connected", ""));
    let data = serde_json::from_str(&connected.data).expect("JSON data");
    (stream, data)
}

/// `POST /send?client=GLOB` with `headers`.
fn send_to(
    addr: std::net::SocketAddr,
    glob: &str,
    data: &str,
    headers: &[(&str, &str)],
) -> Response {
    let body = json!({ "data": data, "event": "direct" }).to_string();
    request(addr, "POST", &format!("/send?client={glob}"), headers, &body)
}

#[test]
fn sends_by_pattern_reach_exactly_the_streams_whose_client_id_matches() {
    let server = Server::start(&["--heartbeat", "0"]);
    let addr = server.addr;
    let (mut abc, data) = open(addr, "/events?topic=t&client=execution%3Aabc123", &[]);
    assert_eq!(data["client"], "execution:abc123");
    assert!(data["id"].is_u64(), "{data}");
    // Sessions are on by default: the token is the `session`.
    let token = data["session"].as_str().expect("a session token");
    assert_eq!(token.len(), 32, "{data}");
    assert_eq!(data["token"], token);
    assert!(data.get("metadata").is_none(), "{data}");
    let (mut def, _) = open(addr, "/events?topic=t&client=execution:def456", &[]);
    let (mut ann, _) = open(addr, "/events?topic=t&client=user:ann", &[]);
    let (mut anonymous, data) = open(addr, "/events?topic=t", &[]);
    assert!(data.get("client").is_none(), "{data}");

    let sent = send_to(addr, "execution:*", "step 2", &[]);
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(sent.json()["receivers"], 2);
    let sent = send_to(addr, "user:ann", "hello ann", &[]);
    assert_eq!(sent.json()["receivers"], 1);
    assert_eq!(send_to(addr, "nobody:*", "lost", &[]).json()["receivers"], 0);
    publish(addr, "t", &json!({ "data": "marker" }));

    // Every stream gets events in the hub's one order: what a stream receives before the
    // marker is exactly the sends that matched it.
    let received = |stream: &mut Stream| -> Vec<(String, String)> {
        let mut seen = Vec::new();
        loop {
            let event = stream.next_message().expect("an event before the marker");
            if event.data == "marker" {
                return seen;
            }
            seen.push((event.event, event.data));
        }
    };
    let step = vec![("direct".to_string(), "step 2".to_string())];
    assert_eq!(received(&mut abc), step);
    assert_eq!(received(&mut def), step);
    assert_eq!(received(&mut ann), vec![("direct".to_string(), "hello ann".to_string())]);
    assert_eq!(received(&mut anonymous), Vec::new());
}

#[test]
fn bad_client_ids_and_sends_get_400() {
    let server = Server::start(&["--heartbeat", "0"]);
    let addr = server.addr;
    let long = "x".repeat(257);
    for target in ["/events?client=job%3A*", &format!("/events?client={long}"), "/events?client="] {
        let stream = Stream::open(addr, target, &[]);
        assert_eq!(stream.status, 400, "{target}");
    }
    let twice = Stream::open(addr, "/events?client=a&client=b", &[]);
    assert_eq!(twice.status, 400);
    for (target, body) in [
        ("/send", r#"{"data":"x"}"#),
        ("/send?client=a&client=b", r#"{"data":"x"}"#),
        ("/send?client=", r#"{"data":"x"}"#),
        ("/send?client=a", "not json"),
        ("/send?client=a", r#"{"data":"x","id":"a\nb"}"#),
    ] {
        let response = request(addr, "POST", target, &[], body);
        assert_eq!(response.status, 400, "{target} {body}: {}", response.body);
        assert!(response.json()["error"].is_string());
    }
}

#[test]
fn send_needs_the_publish_token_when_one_is_set() {
    let server = Server::start(&["--heartbeat", "0", "--publish-token", "s3cret"]);
    let addr = server.addr;
    let (mut job, _) = open(addr, "/events?client=job:1", &[]);
    assert_eq!(send_to(addr, "job:*", "x", &[]).status, 401);
    let wrong = send_to(addr, "job:*", "x", &[("Authorization", "Bearer nope")]);
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
    let right = send_to(addr, "job:*", "ok", &[("Authorization", "Bearer s3cret")]);
    assert_eq!((right.status, right.json()["receivers"].as_u64()), (200, Some(1)));
    let event = job.next_message().expect("the send");
    assert_eq!((event.event.as_str(), event.data.as_str()), ("direct", "ok"));
}

#[test]
fn with_jwt_the_token_names_the_client_and_send_needs_publish_rights() {
    let server = Server::start(&["--heartbeat", "0", "--jwt-secret", SECRET]);
    let addr = server.addr;
    let exp = now() + 3600;
    let ann = hs256(&json!({"sub": "ann", "exp": exp, "ssehub": {"subscribe": ["t"]}}));
    let ann = format!("Bearer {ann}");
    let (mut by_sub, data) = open(addr, "/events?topic=t", &[("Authorization", &ann)]);
    assert_eq!(data["client"], "ann");
    assert!(data.get("metadata").is_none(), "{data}");
    // The same id in the query is fine; another one is refused.
    let (_same, _) = open(addr, "/events?topic=t&client=ann", &[("Authorization", &ann)]);
    let other = Stream::open(addr, "/events?topic=t&client=bob", &[("Authorization", &ann)]);
    assert_eq!(other.status, 403);

    let job = hs256(&json!({"sub": "svc", "exp": exp, "ssehub": {
        "subscribe": ["t"], "client": "execution:abc123",
        "metadata": {"region": "eu", "quote": "a\"b\nc"}}}));
    let job = format!("Bearer {job}");
    let (mut by_claim, data) = open(addr, "/events?topic=t", &[("Authorization", &job)]);
    assert_eq!(data["client"], "execution:abc123");
    assert_eq!(data["metadata"], json!({"region": "eu", "quote": "a\"b\nc"}));

    let reader = hs256(&json!({"sub": "r", "exp": exp, "ssehub": {"subscribe": ["*"]}}));
    let ops = hs256(&json!({"sub": "ops", "exp": exp, "ssehub": {"publish": ["*"]}}));
    assert_eq!(send_to(addr, "execution:*", "x", &[]).status, 401);
    let refused =
        send_to(addr, "execution:*", "x", &[("Authorization", &format!("Bearer {reader}"))]);
    assert_eq!(refused.status, 403, "{}", refused.body);
    let ops = format!("Bearer {ops}");
    let sent = send_to(addr, "execution:*", "to the job", &[("Authorization", &ops)]);
    assert_eq!((sent.status, sent.json()["receivers"].as_u64()), (200, Some(1)));
    let sent = send_to(addr, "ann", "to ann", &[("Authorization", &ops)]);
    assert_eq!(sent.json()["receivers"], 2, "both of ann's streams");
    assert_eq!(by_claim.next_message().map(|e| e.data), Some("to the job".into()));
    assert_eq!(by_sub.next_message().map(|e| e.data), Some("to ann".into()));
}

#[test]
fn sessions_can_be_turned_off() {
    let server = Server::start(&["--heartbeat", "0", "--sessions=false"]);
    let (_stream, data) = open(server.addr, "/events?topic=t&client=a", &[]);
    assert!(data.get("session").is_none(), "{data}");
    assert_eq!(data["client"], "a");
}
