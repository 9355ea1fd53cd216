//! The native listener over real TLS on loopback (`Server::with_tls`): HTTP/2 by ALPN (many
//! streams and the fallback on one connection), HTTP/1.1 through rustls (stream and kept-alive
//! fallback), the crate's own client over both, certificate reload, and connections that
//! never complete a handshake or send no TLS at all.

#[path = "support/tls.rs"]
mod tls;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::routing::post;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ssehub::client::{Backoff, ClientError, ClientEvent, EventSource};
use ssehub::server::{Server, TlsConfig};
use ssehub::{Endpoint, Event, Hub};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(10);

/// A hub served over TLS at `/events`, with `POST /publish?topic=T` (body: the data) as the
/// fallback.
struct Served {
    hub: Hub,
    addr: SocketAddr,
    tls: TlsConfig,
}

/// Serves a new hub with `config`, request heads (and handshakes) due within `head_timeout`.
async fn serve(config: TlsConfig, head_timeout: Duration) -> Served {
    let hub = Hub::builder().with_heartbeat(None).build();
    async fn publish(State(hub): State<Hub>, RawQuery(query): RawQuery, body: String) -> String {
        let topic = query.as_deref().and_then(|q| q.strip_prefix("topic=")).unwrap_or("");
        match hub.publish(topic, Event::new(body)) {
            Ok(published) => format!("{}", published.receivers()),
            Err(error) => error.to_string(),
        }
    }
    let router = axum::Router::new().route("/publish", post(publish)).with_state(hub.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let server = Server::new(Endpoint::new(hub.clone()))
        .with_path("/events")
        .with_fallback(router)
        .with_head_limits(8 * 1024, head_timeout)
        .with_tls(config.clone());
    tokio::spawn(server.serve(listener));
    Served { hub, addr, tls: config }
}

/// Waits (bounded) until `hub` has `n` subscribers.
async fn subscribers(hub: &Hub, n: usize) {
    let deadline = Instant::now() + WAIT;
    while hub.stats().subscribers != n {
        assert!(Instant::now() < deadline, "the hub never had {n} subscribers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads from `io` until what was read contains `needle`; returns everything read.
async fn read_until(io: &mut (impl AsyncRead + Unpin), needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let n = io.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before {needle:?}; read {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read).await.expect("in time");
    String::from_utf8_lossy(&seen).into_owned()
}

/// The crate's client receives three events over `served`, trusting `certificate`.
async fn client_receives(served: &Served, certificate: &tls::Certificate) {
    let mut events = EventSource::new(&format!("https://{}/events?topic=t", served.addr))
        .unwrap()
        .with_root_certificate(certificate.cert_pem.as_bytes())
        .unwrap()
        .with_backoff(Backoff::new(Duration::from_millis(10), Duration::from_millis(100), 0.0))
        .with_max_retries(Some(0))
        .connect()
        .unwrap();
    async fn next(events: &mut ssehub::client::Events) -> Result<ClientEvent, ClientError> {
        let item = tokio::time::timeout(WAIT, events.next()).await;
        item.expect("an item in time").expect("stream open")
    }
    assert_eq!(next(&mut events).await, Ok(ClientEvent::Open));
    subscribers(&served.hub, 1).await;
    for n in 1..=3 {
        served.hub.publish("t", Event::new(format!("tick {n}")).with_id(n.to_string())).unwrap();
    }
    for n in 1..=3 {
        match next(&mut events).await {
            Ok(ClientEvent::Message(event)) => {
                assert_eq!((event.id, event.data), (n.to_string(), format!("tick {n}")));
            }
            other => panic!("expected event {n}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_crate_client_streams_over_http2() {
    let certificate = tls::Certificate::new();
    let served = serve(TlsConfig::new(certificate.server_config(&[])), WAIT).await;
    // The client offers h2 and http/1.1, as this connection does: the server picks h2.
    let probe = tls::connect(served.addr, &certificate, &["h2", "http/1.1"]).await.unwrap();
    assert_eq!(tls::alpn(&probe).as_deref(), Some("h2"));
    drop(probe);
    client_receives(&served, &certificate).await;
}

#[tokio::test]
async fn the_crate_client_streams_over_http1_through_rustls() {
    let certificate = tls::Certificate::new();
    let config = TlsConfig::new(certificate.server_config(&["http/1.1"]));
    let served = serve(config, WAIT).await;
    let probe = tls::connect(served.addr, &certificate, &["h2", "http/1.1"]).await.unwrap();
    assert_eq!(tls::alpn(&probe).as_deref(), Some("http/1.1"));
    drop(probe);
    client_receives(&served, &certificate).await;
}

#[tokio::test]
async fn twelve_streams_and_a_publish_share_one_http2_connection() {
    let certificate = tls::Certificate::new();
    let pem = TlsConfig::from_pem(certificate.cert_pem.as_bytes(), certificate.key_pem.as_bytes());
    let served = serve(pem.unwrap(), WAIT).await;
    let tls = tls::connect(served.addr, &certificate, &["h2"]).await.unwrap();
    assert_eq!(tls::alpn(&tls).as_deref(), Some("h2"));
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let mut bodies = Vec::new();
    for _ in 0..12 {
        let request = http::Request::get(format!("https://{}/events?topic=t", served.addr))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.clone().send_request(request).await.expect("a response");
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        bodies.push(response.into_body());
    }
    subscribers(&served.hub, 12).await;
    let request = http::Request::post(format!("https://{}/publish?topic=t", served.addr))
        .body(Full::new(Bytes::from_static(b"over h2")))
        .unwrap();
    let response = sender.clone().send_request(request).await.expect("a response");
    assert_eq!(response.status(), 200);
    let answer = response.into_body().collect().await.expect("the answer").to_bytes();
    assert_eq!(&answer[..], b"12", "every stream received the publish");
    for body in &mut bodies {
        let frame = tokio::time::timeout(WAIT, body.frame()).await.expect("in time");
        let data = frame.expect("a frame").expect("no error").into_data().expect("data");
        assert_eq!(&data[..], b"data: over h2\n\n");
    }
}

#[tokio::test]
async fn http1_over_tls_keeps_the_connection_from_a_publish_to_the_stream() {
    let certificate = tls::Certificate::new();
    let served = serve(TlsConfig::new(certificate.server_config(&["http/1.1"])), WAIT).await;
    let mut tls = tls::connect(served.addr, &certificate, &["http/1.1"]).await.unwrap();
    let publish = "POST /publish?topic=t HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nfirst";
    tls.write_all(publish.as_bytes()).await.unwrap();
    let answer = read_until(&mut tls, "\r\n\r\n0").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // The same connection, now the stream: served by the native path, through rustls.
    tls.write_all(b"GET /events?topic=t HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let head = read_until(&mut tls, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    subscribers(&served.hub, 1).await;
    served.hub.publish("t", Event::new("one")).unwrap();
    served.hub.publish("t", Event::new("two")).unwrap();
    let body = read_until(&mut tls, "data: two\n\n").await;
    assert!(body.ends_with("data: one\n\ndata: two\n\n"), "{body:?}");
    // The hub's end is a clean TLS close (close_notify, then EOF), not a reset.
    served.hub.shutdown();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, tls.read_to_end(&mut rest)).await.expect("in time");
    assert!(closed.is_ok(), "a clean close: {closed:?}");
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_to_new_connections_only() {
    let (old, new) = (tls::Certificate::new(), tls::Certificate::new());
    let config = TlsConfig::new(old.server_config(&["http/1.1"]));
    let served = serve(config, WAIT).await;
    let mut stream = tls::connect(served.addr, &old, &["http/1.1"]).await.unwrap();
    assert_eq!(tls::presented(&stream), old.der);
    stream.write_all(b"GET /events?topic=t HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    read_until(&mut stream, "\r\n\r\n").await;
    subscribers(&served.hub, 1).await;

    // A bad PEM keeps the configuration in use.
    assert!(served.tls.reload_from_pem(b"not a certificate", new.key_pem.as_bytes()).is_err());
    let again = tls::connect(served.addr, &old, &["http/1.1"]).await.unwrap();
    assert_eq!(tls::presented(&again), old.der);

    served.tls.reload_from_pem(new.cert_pem.as_bytes(), new.key_pem.as_bytes()).unwrap();
    let fresh = tls::connect(served.addr, &new, &["h2", "http/1.1"]).await.unwrap();
    assert_eq!(tls::presented(&fresh), new.der);
    assert_eq!(tls::alpn(&fresh).as_deref(), Some("h2"), "ALPN added to the reloaded config");
    assert!(tls::connect(served.addr, &old, &["http/1.1"]).await.is_err(), "old cert retired");
    // The stream opened before the reload goes on.
    served.hub.publish("t", Event::new("after reload")).unwrap();
    read_until(&mut stream, "data: after reload\n\n").await;
}

/// Whether the server closed `socket` (EOF or reset) within `WAIT`; reads and drops whatever
/// it sends first (a TLS alert).
async fn closed_by_server(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.is_ok()
}

#[tokio::test]
async fn bytes_that_are_not_tls_end_their_connection_and_disturb_no_other() {
    let certificate = tls::Certificate::new();
    let served = serve(TlsConfig::new(certificate.server_config(&["http/1.1"])), WAIT).await;
    let mut stream = tls::connect(served.addr, &certificate, &["http/1.1"]).await.unwrap();
    stream.write_all(b"GET /events?topic=t HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    read_until(&mut stream, "\r\n\r\n").await;
    subscribers(&served.hub, 1).await;
    let garbage: [&[u8]; 3] = [
        b"GET /events?topic=t HTTP/1.1\r\nhost: x\r\n\r\n",
        // A handshake record header followed by nonsense.
        &[0x16, 0x03, 0x01, 0x00, 0x10, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[0xff; 512],
    ];
    for bytes in garbage {
        let mut socket = TcpStream::connect(served.addr).await.unwrap();
        socket.write_all(bytes).await.unwrap();
        assert!(closed_by_server(&mut socket).await, "closed after {bytes:?}");
    }
    served.hub.publish("t", Event::new("still here")).unwrap();
    read_until(&mut stream, "data: still here\n\n").await;
    assert_eq!(served.hub.stats().subscribers, 1);
}

#[tokio::test]
async fn a_handshake_that_never_completes_is_closed_at_the_head_deadline() {
    let certificate = tls::Certificate::new();
    let deadline = Duration::from_millis(500);
    let served = serve(TlsConfig::new(certificate.server_config(&[])), deadline).await;
    // Silent, and half a record header: neither completes a handshake.
    for first in [&b""[..], &[0x16, 0x03][..]] {
        let started = Instant::now();
        let mut socket = TcpStream::connect(served.addr).await.unwrap();
        socket.write_all(first).await.unwrap();
        assert!(closed_by_server(&mut socket).await, "closed (sent {first:?})");
        let waited = started.elapsed();
        assert!(waited >= deadline - Duration::from_millis(50), "not before its deadline");
        assert!(waited < deadline * 6, "closed at its deadline, not later: {waited:?}");
    }
}
