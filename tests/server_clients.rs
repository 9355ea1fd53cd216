//! Client ids through the library's native listener over real TCP: a resolver sets the id and
//! metadata, the `connected` event carries them, `Hub::clients` lists the live ones, and
//! `Hub::send_to_matching` reaches exactly the matching streams; a stream that needs a session
//! past the hub's session limit is refused as one past its subscriber limit is.

#[path = "support/http.rs"]
mod http_support;

use std::net::SocketAddr;

use http::request::Parts;
use http_support::{eventually, get, Client};
use ssehub::resolve::QueryTopics;
use ssehub::server::Server;
use ssehub::{Endpoint, Event, Hub, Rejection, SessionLimits, Subscribe};

/// Opens a stream on `target`, asserting 200.
async fn open(addr: SocketAddr, target: &str) -> Client {
    let client = get(addr, target).await;
    assert_eq!(client.status, 200, "{target}");
    client
}

/// The `connected` event's data.
async fn connected(client: &mut Client) -> serde_json::Value {
    let event = client.next().await;
    assert_eq!((event.event.as_str(), event.id.as_str()), ("connected", ""));
    serde_json::from_str(&event.data).unwrap()
}

/// The data of every event up to the one whose data is `marker`.
async fn before(client: &mut Client, marker: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let event = client.next().await;
        if event.data == marker {
            return seen;
        }
        seen.push(event.data);
    }
}

/// Topics and the client id from the query; metadata from an `x-tab` header.
fn resolve(request: &Parts) -> Result<Subscribe, Rejection> {
    let subscribe = QueryTopics::new().with_client_param(true).parse(request)?;
    Ok(match request.headers.get("x-tab").and_then(|v| v.to_str().ok()) {
        Some(tab) => subscribe.with_metadata("tab", tab),
        None => subscribe.with_metadata("tab", "none"),
    })
}

#[tokio::test]
async fn ids_reach_the_connected_event_and_sends_reach_exactly_the_matches() {
    let hub = Hub::builder().with_heartbeat(None).with_sessions(Some(SessionLimits::new())).build();
    let endpoint = Endpoint::new(hub.clone()).with_resolver(resolve);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Server::new(endpoint).with_path("/events").serve(listener));

    let mut a = open(addr, "/events?topic=t&client=execution:a").await;
    let data = connected(&mut a).await;
    assert_eq!(data["client"], "execution:a");
    assert_eq!(data["metadata"], serde_json::json!({"tab": "none"}));
    assert!(data["session"].is_string() && data["session_id"].is_string(), "{data}");
    let mut b = open(addr, "/events?topic=t&client=execution:b").await;
    let mut ann = open(addr, "/events?topic=t&client=user:ann").await;
    let mut nobody = open(addr, "/events?topic=t").await;
    for client in [&mut b, &mut ann, &mut nobody] {
        connected(client).await;
    }
    eventually("four subscribers", || hub.subscriber_count() == 4).await;

    let clients = hub.clients();
    let ids: Vec<&str> = clients.iter().map(|c| c.id()).collect();
    assert_eq!(ids, ["execution:a", "execution:b", "user:ann"]);
    assert!(clients.iter().all(|c| c.metadata().get("tab").map(String::as_str) == Some("none")));

    assert_eq!(hub.send_to_matching("execution:*", Event::new("both")).unwrap().receivers(), 2);
    assert_eq!(hub.send_to_matching("*:ann", Event::new("ann")).unwrap().receivers(), 1);
    assert_eq!(hub.send_to_matching("execution:a", Event::new("a")).unwrap().receivers(), 1);
    hub.publish("t", Event::new("marker")).unwrap();
    assert_eq!(before(&mut a, "marker").await, ["both", "a"]);
    assert_eq!(before(&mut b, "marker").await, ["both"]);
    assert_eq!(before(&mut ann, "marker").await, ["ann"]);
    assert_eq!(before(&mut nobody, "marker").await, Vec::<String>::new());

    // A closed connection leaves the index: no longer listed, no longer sent to.
    drop(b);
    eventually("b gone", || hub.clients().len() == 2).await;
    assert_eq!(hub.send_to_matching("execution:*", Event::new("x")).unwrap().receivers(), 1);
}

#[tokio::test]
async fn a_stream_past_the_session_limit_gets_a_503_while_all_sessions_are_live() {
    let limits = SessionLimits::new().with_max_sessions(2);
    let hub = Hub::builder().with_heartbeat(None).with_sessions(Some(limits)).build();
    let endpoint = Endpoint::new(hub.clone()).with_resolver(resolve);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Server::new(endpoint).with_path("/events").serve(listener));

    let mut a = open(addr, "/events?topic=t").await;
    let mut b = open(addr, "/events?topic=t").await;
    connected(&mut a).await;
    connected(&mut b).await;
    let refused = get(addr, "/events?topic=t").await;
    assert_eq!(refused.status, 503);
    assert!(refused.headers.iter().any(|(name, _)| name == "retry-after"));
    assert_eq!(hub.stats().sessions, 2);
    // A closed stream's session is the one forgotten to make room.
    drop(a);
    eventually("a detached", || hub.subscriber_count() == 1).await;
    let mut c = open(addr, "/events?topic=t").await;
    connected(&mut c).await;
    assert_eq!(hub.stats().sessions, 2);
}
