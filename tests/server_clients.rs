//! Client ids through the library's native listener over real TCP: a resolver sets the id and
//! metadata, the `connected` event carries them, `Hub::clients` lists the live ones, and
//! `Hub::send_to_matching` reaches exactly the matching streams.

use std::net::SocketAddr;
use std::time::Duration;

use http::request::Parts;
use ssehub::parse::{ParsedEvent, Parser};
use ssehub::resolve::QueryTopics;
use ssehub::server::Server;
use ssehub::{Endpoint, Event, Hub, Rejection, SessionLimits, Subscribe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// An open stream and its parser.
struct Client {
    socket: TcpStream,
    parser: Parser,
    events: std::collections::VecDeque<ParsedEvent>,
}

impl Client {
    /// Opens `target`, asserting 200, and reads past the response head.
    async fn open(addr: SocketAddr, target: &str) -> Client {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nhost: t\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tokio::time::timeout(WAIT, socket.read_exact(&mut byte))
                .await
                .expect("a head")
                .unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&head));
        Client { socket, parser: Parser::new(), events: Default::default() }
    }

    /// The next event.
    async fn next(&mut self) -> ParsedEvent {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if let Some(event) = self.events.pop_front() {
                return event;
            }
            let read = tokio::time::timeout(WAIT, self.socket.read(&mut buf));
            let n = read.await.expect("an event in time").unwrap();
            assert!(n > 0, "the stream ended");
            let mut parsed = Vec::new();
            self.parser.feed(&buf[..n], &mut parsed).unwrap();
            self.events.extend(parsed);
        }
    }

    /// The `connected` event's data.
    async fn connected(&mut self) -> serde_json::Value {
        let event = self.next().await;
        assert_eq!((event.event.as_str(), event.id.as_str()), ("connected", ""));
        serde_json::from_str(&event.data).unwrap()
    }

    /// The data of every event up to the one whose data is `marker`.
    async fn before(&mut self, marker: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            if event.data == marker {
                return seen;
            }
            seen.push(event.data);
        }
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
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

    let mut a = Client::open(addr, "/events?topic=t&client=execution:a").await;
    let data = a.connected().await;
    assert_eq!(data["client"], "execution:a");
    assert_eq!(data["metadata"], serde_json::json!({"tab": "none"}));
    assert!(data["session"].is_string() && data["session_id"].is_string(), "{data}");
    let mut b = Client::open(addr, "/events?topic=t&client=execution:b").await;
    let mut ann = Client::open(addr, "/events?topic=t&client=user:ann").await;
    let mut nobody = Client::open(addr, "/events?topic=t").await;
    for client in [&mut b, &mut ann, &mut nobody] {
        client.connected().await;
    }
    until("four subscribers", || hub.subscriber_count() == 4).await;

    let clients = hub.clients();
    let ids: Vec<&str> = clients.iter().map(|c| c.id()).collect();
    assert_eq!(ids, ["execution:a", "execution:b", "user:ann"]);
    assert!(clients.iter().all(|c| c.metadata().get("tab").map(String::as_str) == Some("none")));

    assert_eq!(hub.send_to_matching("execution:*", Event::new("both")).unwrap().receivers(), 2);
    assert_eq!(hub.send_to_matching("*:ann", Event::new("ann")).unwrap().receivers(), 1);
    assert_eq!(hub.send_to_matching("execution:a", Event::new("a")).unwrap().receivers(), 1);
    hub.publish("t", Event::new("marker")).unwrap();
    assert_eq!(a.before("marker").await, ["both", "a"]);
    assert_eq!(b.before("marker").await, ["both"]);
    assert_eq!(ann.before("marker").await, ["ann"]);
    assert_eq!(nobody.before("marker").await, Vec::<String>::new());

    // A closed connection leaves the index: no longer listed, no longer sent to.
    drop(b);
    until("b gone", || hub.clients().len() == 2).await;
    assert_eq!(hub.send_to_matching("execution:*", Event::new("x")).unwrap().receivers(), 1);
}
