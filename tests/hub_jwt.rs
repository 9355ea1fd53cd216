//! JWT on the hub server, black-box: the compiled server started with `--jwt-secret` (HS256)
//! or `--jwt-public-key` (RS256, ES256, several for rotation), driven over real TCP with
//! tokens signed here. The keys are test-only ones in `tests/keys/`.

#[path = "support/hub_process.rs"]
mod hub_process;

use std::time::{SystemTime, UNIX_EPOCH};

use hub_process::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// The HS256 secret (32 bytes or more, as the server asks).
const SECRET: &str = "test-only-secret-0123456789abcdef";

/// A test key file's path.
fn key_file(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims for `sub`, valid for an hour, with ssehub's rights.
fn claims(sub: &str, subscribe: &[&str], publish: &[&str]) -> Value {
    json!({"sub": sub, "exp": now() + 3600, "iat": now(),
           "ssehub": {"subscribe": subscribe, "publish": publish}})
}

fn hs256(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes()))
        .unwrap()
}

/// Signs with a test private key: `rsa-a`, `rsa-b` (RS256) or `ec` (ES256).
fn signed(key: &str, claims: &Value) -> String {
    let pem = std::fs::read(key_file(&format!("test-only-{key}.key.pem"))).unwrap();
    let (alg, key) = if key.starts_with("rsa") {
        (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem).unwrap())
    } else {
        (Algorithm::ES256, EncodingKey::from_ec_pem(&pem).unwrap())
    };
    encode(&Header::new(alg), claims, &key).unwrap()
}

/// A token with `alg: none` and no signature.
fn unsigned(claims: &Value) -> String {
    let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", base64_url(claims.to_string().as_bytes()))
}

/// Unpadded base64url.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The status of `GET /events?...` with `headers`.
fn subscribe_status(addr: std::net::SocketAddr, query: &str, headers: &[(&str, &str)]) -> u16 {
    let target = format!("/events?{query}");
    let mut stream = Stream::open(addr, &target, headers);
    if stream.status == 200 {
        assert_eq!(stream.next().map(|e| e.event), Some("connected".into()));
    }
    stream.status
}

/// Publishes `data` with a token allowed to publish anywhere, asserting success.
fn publish_as_ops(addr: std::net::SocketAddr, topic: &str, data: &str) {
    let ops = bearer(&hs256(&claims("ops", &[], &["*"])));
    let body = json!({ "data": data }).to_string();
    let target = format!("/publish?topic={topic}");
    let response = request(addr, "POST", &target, &[("Authorization", &ops)], &body);
    assert_eq!(response.status, 200, "{}", response.body);
}

/// Publishes with `headers`; returns the response.
fn publish_with(addr: std::net::SocketAddr, topic: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "POST", &format!("/publish?topic={topic}"), headers, r#"{"data":"x"}"#)
}

#[test]
fn hs256_subscribe_needs_a_valid_token_and_topics_inside_its_claim() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let addr = server.addr;
    let ann = hs256(&claims("ann", &["news", "price:*"], &[]));
    let auth = bearer(&ann);

    let refused = request(addr, "GET", "/events?topic=news", &[], "");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    assert_eq!(subscribe_status(addr, "topic=news", &[("Authorization", &auth)]), 200);
    assert_eq!(subscribe_status(addr, "topic=price:BTC", &[("Authorization", &auth)]), 200);
    assert_eq!(subscribe_status(addr, "pattern=price:*", &[("Authorization", &auth)]), 200);
    assert_eq!(subscribe_status(addr, "pattern=price:BTC-*", &[("Authorization", &auth)]), 200);
    let cookie = format!("theme=dark; ssehub_token={ann}");
    assert_eq!(subscribe_status(addr, "topic=news", &[("Cookie", &cookie)]), 200);

    // Outside the claim: 403, also when one topic of several is.
    assert_eq!(subscribe_status(addr, "topic=alerts", &[("Authorization", &auth)]), 403);
    assert_eq!(subscribe_status(addr, "topic=news&topic=alerts", &[("Authorization", &auth)]), 403);
    assert_eq!(subscribe_status(addr, "pattern=pri*", &[("Authorization", &auth)]), 403);
    assert_eq!(subscribe_status(addr, "pattern=*", &[("Authorization", &auth)]), 403);
    // A resume goes the same way.
    let resume = [("Authorization", auth.as_str()), ("Last-Event-ID", "1")];
    assert_eq!(subscribe_status(addr, "topic=alerts", &resume), 403);
    assert_eq!(subscribe_status(addr, "topic=news", &resume), 200);
    assert_eq!(subscribe_status(addr, "topic=news&lastEventId=1", &[]), 401);

    // Not valid: 401.
    let wrong_secret = encode(
        &Header::new(Algorithm::HS256),
        &claims("ann", &["news"], &[]),
        &EncodingKey::from_secret(b"another-secret-0123456789abcdefgh"),
    )
    .unwrap();
    let expired =
        hs256(&json!({"sub": "ann", "exp": now() - 10, "ssehub": {"subscribe": ["news"]}}));
    let no_sub = hs256(&json!({"exp": now() + 60, "ssehub": {"subscribe": ["news"]}}));
    let string_exp =
        hs256(&json!({"sub": "ann", "exp": "never", "ssehub": {"subscribe": ["news"]}}));
    let none = unsigned(&claims("ann", &["news"], &[]));
    for token in [wrong_secret, expired, no_sub, string_exp, none, "garbage".to_string()] {
        let status = subscribe_status(addr, "topic=news", &[("Authorization", &bearer(&token))]);
        assert_eq!(status, 401, "{token}");
    }
    // Query tokens are off unless enabled.
    assert_eq!(subscribe_status(addr, &format!("topic=news&access_token={ann}"), &[]), 401);

    // Mercure's claim layout.
    let mercure =
        hs256(&json!({"sub": "bob", "exp": now() + 60, "mercure": {"subscribe": ["news"]}}));
    assert_eq!(subscribe_status(addr, "topic=news", &[("Authorization", &bearer(&mercure))]), 200);
    assert_eq!(
        subscribe_status(addr, "topic=alerts", &[("Authorization", &bearer(&mercure))]),
        403
    );
}

#[test]
fn query_tokens_are_read_when_enabled() {
    let server = Server::start(&["--jwt-secret", SECRET, "--jwt-query-token"]);
    let ann = hs256(&claims("ann", &["news"], &[]));
    assert_eq!(subscribe_status(server.addr, &format!("topic=news&access_token={ann}"), &[]), 200);
    assert_eq!(subscribe_status(server.addr, "topic=news&access_token=garbage", &[]), 401);
}

#[test]
fn publishing_needs_publish_rights_for_the_topic_or_the_publish_token() {
    let server = Server::start(&["--jwt-secret", SECRET, "--publish-token", "admin-token"]);
    let addr = server.addr;
    let reader = bearer(&hs256(&claims("ann", &["chat:*"], &[])));
    let writer = bearer(&hs256(&claims("bot", &[], &["chat:*"])));
    let mut stream = Stream::connected(addr, "/events?topic=chat:1", &[("Authorization", &reader)]);

    assert_eq!(publish_with(addr, "chat:1", &[]).status, 401);
    assert_eq!(publish_with(addr, "chat:1", &[("Authorization", "Bearer wrong")]).status, 401);
    assert_eq!(publish_with(addr, "chat:1", &[("Authorization", &reader)]).status, 403);
    assert_eq!(publish_with(addr, "news", &[("Authorization", &writer)]).status, 403);
    let published = publish_with(addr, "chat:1", &[("Authorization", &writer)]);
    assert_eq!(published.status, 200, "{}", published.body);
    let admin = publish_with(addr, "anything", &[("Authorization", "Bearer admin-token")]);
    assert_eq!(admin.status, 200, "{}", admin.body);
    assert_eq!(stream.next_message().map(|e| e.data), Some("x".into()));
}

#[test]
fn rs256_and_es256_keys_verify_their_own_algorithm_and_rotate() {
    let keys = ["rsa-a", "rsa-b", "ec"].map(|k| key_file(&format!("test-only-{k}.pub.pem")));
    let server = Server::start(&[
        "--jwt-public-key",
        &keys[0],
        "--jwt-public-key",
        &keys[1],
        "--jwt-public-key",
        &keys[2],
    ]);
    let only_a = Server::start(&["--jwt-public-key", &keys[0]]);
    let ann = claims("ann", &["news"], &[]);
    for key in ["rsa-a", "rsa-b", "ec"] {
        let auth = bearer(&signed(key, &ann));
        assert_eq!(subscribe_status(server.addr, "topic=news", &[("Authorization", &auth)]), 200);
        assert_eq!(subscribe_status(server.addr, "topic=alerts", &[("Authorization", &auth)]), 403);
    }
    // Rotation: a server that dropped key b refuses its tokens.
    let by_a = bearer(&signed("rsa-a", &ann));
    let by_b = bearer(&signed("rsa-b", &ann));
    assert_eq!(subscribe_status(only_a.addr, "topic=news", &[("Authorization", &by_a)]), 200);
    assert_eq!(subscribe_status(only_a.addr, "topic=news", &[("Authorization", &by_b)]), 401);

    // HS256 signed with the public key's bytes (the HS/RS confusion), and alg: none.
    let public_pem = std::fs::read(&keys[0]).unwrap();
    let confused =
        encode(&Header::new(Algorithm::HS256), &ann, &EncodingKey::from_secret(&public_pem))
            .unwrap();
    for token in [confused, unsigned(&ann)] {
        let auth = bearer(&token);
        assert_eq!(subscribe_status(server.addr, "topic=news", &[("Authorization", &auth)]), 401);
    }
}

#[test]
fn a_stream_ends_at_its_tokens_exp_with_the_expired_frame_and_a_jittered_retry() {
    let server = Server::start(&["--jwt-secret", SECRET, "--retry", "1", "--retry-jitter", "1"]);
    let exp = now() + 2;
    let token = hs256(&json!({"sub": "ann", "exp": exp, "ssehub": {"subscribe": ["news"]}}));
    let mut stream =
        Stream::connected(server.addr, "/events?topic=news", &[("Authorization", &bearer(&token))]);
    let lasting = bearer(&hs256(&claims("bob", &["news"], &[])));
    let mut other =
        Stream::connected(server.addr, "/events?topic=news", &[("Authorization", &lasting)]);
    publish_as_ops(server.addr, "news", "before");
    let events = stream.until_end();
    assert!(now() >= exp, "ended before its token's exp");
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["before", r#"{"reason":"expired"}"#]);
    let last = events.last().unwrap();
    assert_eq!(last.event, "expired");
    assert!(last.retry.is_some_and(|ms| (1000..=2000).contains(&ms)), "{:?}", last.retry);
    assert_ne!(stream.parser.last_event_id(), "", "the event before it moved the resume point");
    assert_eq!(stream.parser.last_event_id(), events[0].id, "the expired frame has no id");

    publish_as_ops(server.addr, "news", "after");
    assert_eq!(other.next_message().map(|e| e.data), Some("before".into()));
    assert_eq!(other.next_message().map(|e| e.data), Some("after".into()));
}

#[test]
fn revoke_ends_that_principals_streams_and_refuses_its_earlier_tokens() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let addr = server.addr;
    let ann = bearer(&hs256(&claims("ann", &["news", "alerts"], &[])));
    let bob = bearer(&hs256(&claims("bob", &["news"], &[])));
    let admin = bearer(&hs256(&claims("ops", &[], &["*"])));
    let mut ann_streams = [
        Stream::connected(addr, "/events?topic=news", &[("Authorization", &ann)]),
        Stream::connected(addr, "/events?topic=alerts", &[("Authorization", &ann)]),
    ];
    let mut bob_stream = Stream::connected(addr, "/events?topic=news", &[("Authorization", &bob)]);

    assert_eq!(request(addr, "POST", "/revoke?sub=ann", &[], "").status, 401);
    let forbidden = request(addr, "POST", "/revoke?sub=ann", &[("Authorization", &bob)], "");
    assert_eq!(forbidden.status, 403);
    let revoked = request(addr, "POST", "/revoke?sub=ann", &[("Authorization", &admin)], "");
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(revoked.json()["revoked"], 2);

    for stream in &mut ann_streams {
        let events = stream.until_end();
        let last = events.last().expect("the revoked frame");
        assert_eq!(
            (last.event.as_str(), last.data.as_str()),
            ("revoked", r#"{"reason":"revoked"}"#)
        );
        assert!(last.retry.is_some());
    }
    publish_as_ops(addr, "news", "still here");
    assert_eq!(bob_stream.next_message().map(|e| e.data), Some("still here".into()));

    // The revoked token cannot come back; one issued after the revocation can.
    assert_eq!(subscribe_status(addr, "topic=news", &[("Authorization", &ann)]), 401);
    let fresh = json!({"sub": "ann", "exp": now() + 60, "iat": now() + 1,
                       "ssehub": {"subscribe": ["news"]}});
    let fresh = bearer(&hs256(&fresh));
    assert_eq!(subscribe_status(addr, "topic=news", &[("Authorization", &fresh)]), 200);
}

#[test]
fn without_jwt_subscribing_stays_open() {
    let server = Server::start(&[]);
    assert_eq!(subscribe_status(server.addr, "topic=news", &[]), 200);
    let response = request(server.addr, "POST", "/revoke?sub=ann", &[], "");
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["revoked"], 0);
}
