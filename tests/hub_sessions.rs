//! Resumable sessions and presence.

use std::time::Duration;

use ssehub::parse::{ParsedEvent, Parser};
use ssehub::{Event, Hub, SessionLimits, Subscribe, SubscribeError, Subscription};

fn events(sub: &mut Subscription) -> Vec<ParsedEvent> {
    let mut parser = Parser::new();
    let mut out = Vec::new();
    while let Ok(Some(batch)) = sub.try_recv() {
        parser.feed(&batch.into_bytes(), &mut out).expect("well-formed stream");
    }
    out
}

fn field(json: &str, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).expect("connected data is JSON");
    v[name].as_str().map(str::to_string).unwrap_or_default()
}

fn session_hub(limits: SessionLimits) -> Hub {
    Hub::builder().with_heartbeat(None).with_sessions(Some(limits)).build()
}

/// Connects and returns the subscription, its session id and token.
fn connect(hub: &Hub, request: Subscribe) -> (Subscription, String, String) {
    let mut sub = hub.subscribe(request).unwrap();
    let connected = events(&mut sub).into_iter().next().expect("a connected event");
    assert_eq!(connected.event, "connected");
    assert_eq!(connected.id, "", "the connected event carries no id");
    // `session` is the token (what a resume and `POST /subscription` present, as the server
    // contract names it); `session_id` the id `send_to_session` takes.
    let (session, token) = (field(&connected.data, "session_id"), field(&connected.data, "token"));
    assert_eq!(sub.session_id(), Some(session.as_str()));
    assert_eq!(field(&connected.data, "session"), token);
    (sub, session, token)
}

#[test]
fn tokens_are_unguessable_and_unique() {
    let hub = session_hub(SessionLimits::new());
    let (_a, sa, ta) = connect(&hub, Subscribe::from("t"));
    let (_b, sb, tb) = connect(&hub, Subscribe::from("t"));
    assert_ne!(sa, sb);
    assert_ne!(ta, tb);
    assert_eq!(ta.len(), 32, "128 random bits in hex");
    assert!(ta.chars().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn a_resumed_session_gets_its_topics_and_missed_sends_back() {
    let hub = session_hub(SessionLimits::new().with_buffer(2));
    let (sub, session, token) =
        connect(&hub, Subscribe::new().with_topic("a").with_pattern("b:*").with_principal("ann"));
    drop(sub);
    for n in 1..=3 {
        hub.send_to_session(&session, Event::new(format!("dm{n}"))).unwrap();
    }
    let mut back =
        hub.subscribe(Subscribe::new().with_principal("ann").with_session_token(&token)).unwrap();
    assert_eq!(back.session_id(), Some(session.as_str()));
    hub.publish("a", Event::new("topic a")).unwrap();
    hub.publish("b:1", Event::new("pattern b")).unwrap();
    hub.send_to_session(&session, Event::new("live dm")).unwrap();
    let got: Vec<String> = events(&mut back).into_iter().map(|e| e.data).collect();
    // The buffer keeps the newest two while away; then the restored topics, then live sends.
    assert_eq!(got[1..], ["dm2", "dm3", "topic a", "pattern b", "live dm"]);
}

#[test]
fn a_token_from_another_principal_is_refused_and_counted() {
    let hub = session_hub(SessionLimits::new());
    let (_sub, _, token) = connect(&hub, Subscribe::from("t").with_principal("ann"));
    let err = hub
        .subscribe(Subscribe::from("t").with_principal("mallory").with_session_token(&token))
        .unwrap_err();
    assert_eq!(err, SubscribeError::SessionRefused);
    let err = hub.subscribe(Subscribe::from("t").with_session_token(&token)).unwrap_err();
    assert_eq!(err, SubscribeError::SessionRefused);
    assert_eq!(hub.stats().session_hijacks, 2);
}

#[test]
fn an_expired_or_unknown_token_gets_a_fresh_session() {
    let hub = session_hub(SessionLimits::new().with_ttl(Duration::from_millis(20)));
    let (sub, session, token) = connect(&hub, Subscribe::from("t"));
    drop(sub);
    std::thread::sleep(Duration::from_millis(60));
    let (_fresh, fresh_session, fresh_token) =
        connect(&hub, Subscribe::from("t").with_session_token(&token));
    assert_ne!(fresh_session, session);
    assert_ne!(fresh_token, token);
    let (_other, other_session, _) =
        connect(&hub, Subscribe::from("t").with_session_token("not-a-token"));
    assert_ne!(other_session, session);
    assert_eq!(hub.stats().session_hijacks, 0);
}

#[test]
fn resuming_while_the_old_connection_lives_hands_its_targeted_sends_over_once() {
    let hub = session_hub(SessionLimits::new());
    let (mut old, session, token) = connect(&hub, Subscribe::from("t"));
    hub.send_to_session(&session, Event::new("queued on the old connection")).unwrap();
    let (mut new, _, _) = {
        let mut sub = hub.subscribe(Subscribe::new().with_session_token(&token)).unwrap();
        let got = events(&mut sub);
        assert_eq!(got[1].data, "queued on the old connection");
        (sub, (), ())
    };
    // The old connection is ended and its queue emptied: the send went to exactly one.
    assert!(events(&mut old).is_empty());
    assert!(old.try_recv().is_err());
    hub.send_to_session(&session, Event::new("next")).unwrap();
    assert_eq!(events(&mut new).iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), ["next"]);
    drop(old);
    // Dropping the old connection does not detach the new one.
    hub.send_to_session(&session, Event::new("still live")).unwrap();
    assert_eq!(new.queued(), 1);
}

#[test]
fn presence_events_follow_joins_and_leaves() {
    let hub = Hub::builder().with_heartbeat(None).with_presence(true).build();
    let mut watcher = hub.subscribe("presence:room").unwrap();
    let ann = hub.subscribe(Subscribe::from("room").with_principal("ann")).unwrap();
    let bob = hub.subscribe(Subscribe::new().with_topic("room")).unwrap();
    assert_eq!(hub.topic_subscriber_count("room"), 2);
    drop(ann);
    let got = events(&mut watcher);
    let kinds: Vec<&str> = got.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["join", "join", "leave"]);
    let first: serde_json::Value = serde_json::from_str(&got[0].data).unwrap();
    assert_eq!(first["principal"], "ann");
    assert_eq!(first["subscribers"], 1);
    let second: serde_json::Value = serde_json::from_str(&got[1].data).unwrap();
    assert_eq!(second["principal"], serde_json::Value::Null);
    assert_eq!(second["subscribers"], 2);
    let left: serde_json::Value = serde_json::from_str(&got[2].data).unwrap();
    assert_eq!(left["subscribers"], 1);
    drop(bob);
}

#[test]
fn sessions_past_the_limit_are_refused_while_all_are_live() {
    let hub = session_hub(SessionLimits::new().with_max_sessions(2));
    let (a, _, _) = connect(&hub, Subscribe::from("t"));
    let (_b, _, _) = connect(&hub, Subscribe::from("t"));
    // Every path to a new session: none, an unknown token, another fresh connection.
    let refused = [
        hub.subscribe(Subscribe::from("t")).unwrap_err(),
        hub.subscribe(Subscribe::from("t").with_session_token("not-a-token")).unwrap_err(),
    ];
    assert_eq!(
        refused,
        [SubscribeError::SessionsFull { max: 2 }, SubscribeError::SessionsFull { max: 2 }]
    );
    assert_eq!(hub.stats().sessions, 2);
    assert_eq!(hub.stats().subscribers, 2, "a refused subscribe leaves no subscriber behind");
    // A disconnected session is forgotten to make room for a new one.
    drop(a);
    let (_c, _, _) = connect(&hub, Subscribe::from("t"));
    assert_eq!(hub.stats().sessions, 2);
    assert_eq!(
        hub.subscribe(Subscribe::from("t")).unwrap_err(),
        SubscribeError::SessionsFull { max: 2 }
    );
}

#[test]
fn an_expired_token_past_the_limit_does_not_grow_the_store() {
    let hub =
        session_hub(SessionLimits::new().with_max_sessions(2).with_ttl(Duration::from_millis(20)));
    let (a, _, token) = connect(&hub, Subscribe::from("t"));
    let (_b, _, _) = connect(&hub, Subscribe::from("t"));
    drop(a);
    std::thread::sleep(Duration::from_millis(60));
    // The expired session is forgotten and its place taken by the fresh one.
    let (_c, _, fresh) = connect(&hub, Subscribe::from("t").with_session_token(&token));
    assert_ne!(fresh, token);
    assert_eq!(hub.stats().sessions, 2);
    let err = hub.subscribe(Subscribe::from("t").with_session_token(&token)).unwrap_err();
    assert_eq!(err, SubscribeError::SessionsFull { max: 2 });
    assert_eq!(hub.stats().sessions, 2);
}

#[test]
fn a_resume_at_the_limit_takes_no_new_place() {
    let hub = session_hub(SessionLimits::new().with_max_sessions(1));
    let (_old, session, token) = connect(&hub, Subscribe::from("t"));
    // Resumed while its old connection still lives: the same session, no second one.
    let back = hub.subscribe(Subscribe::from("t").with_session_token(&token)).unwrap();
    assert_eq!(back.session_id(), Some(session.as_str()));
    assert_eq!(hub.stats().sessions, 1);
}
