//! The SSE client over real TLS on loopback: a rustls server with a certificate made at test
//! time, serving the hub through its axum adapter over HTTP/2 or HTTP/1.1 (whichever ALPN
//! chose), and servers that refuse or stall.

#[path = "support/tls.rs"]
mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use ssehub::client::{Backoff, ClientError, ClientEvent, EventSource, Events};
use ssehub::{Endpoint, Event, Hub};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A TLS server on loopback.
struct TlsServer {
    /// `https://127.0.0.1:PORT`.
    base: String,
    /// Its certificate, for the client to trust.
    certificate_pem: String,
    /// The protocol ALPN chose on each connection it accepted (`None`: no ALPN).
    protocols: Arc<Mutex<Vec<Option<String>>>>,
}

/// Serves `hub` at `/events` over TLS, offering `alpn` (in order of preference).
async fn tls_server(hub: Hub, alpn: &[&str]) -> TlsServer {
    let certificate = tls::Certificate::new();
    let acceptor = TlsAcceptor::from(Arc::new(certificate.server_config(alpn)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let router = axum::Router::new().route("/events", ssehub::axum::events(Endpoint::new(hub)));
    let protocols = Arc::new(Mutex::new(Vec::new()));
    let seen = protocols.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, router, seen) = (acceptor.clone(), router.clone(), seen.clone());
            tokio::spawn(async move {
                // A handshake the client refuses ends here; the test looks at the client side.
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let protocol = tls
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                seen.lock().unwrap().push(protocol);
                let service = hyper::service::service_fn(move |request| {
                    let mut router = router.clone();
                    tower_service::Service::call(&mut router, request)
                });
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service).await;
            });
        }
    });
    TlsServer { base: format!("https://{addr}"), certificate_pem: certificate.cert_pem, protocols }
}

fn quick() -> Backoff {
    Backoff::new(Duration::from_millis(10), Duration::from_millis(200), 0.0)
}

/// The next item, within a bounded time.
async fn next(events: &mut Events) -> Result<ClientEvent, ClientError> {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an item in time")
        .expect("stream open")
}

/// Waits (bounded) until `hub` has `n` subscribers.
async fn subscribers(hub: &Hub, n: usize) {
    for _ in 0..500 {
        if hub.stats().subscribers == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the hub never had {n} subscribers");
}

/// Connects through `server` trusting its certificate, and checks three events arrive in
/// order; returns the protocols the server saw.
async fn stream_three_events(alpn: &[&str]) -> Vec<Option<String>> {
    let hub = Hub::builder().with_heartbeat(None).build();
    let server = tls_server(hub.clone(), alpn).await;
    let mut events = EventSource::new(&format!("{}/events?topic=t", server.base))
        .unwrap()
        .with_root_certificate(server.certificate_pem.as_bytes())
        .unwrap()
        .with_backoff(quick())
        .with_max_retries(Some(0))
        .connect()
        .unwrap();
    assert_eq!(next(&mut events).await, Ok(ClientEvent::Open));
    subscribers(&hub, 1).await;
    for n in 1..=3 {
        hub.publish("t", Event::new(format!("tick {n}")).with_id(n.to_string())).unwrap();
    }
    for n in 1..=3 {
        match next(&mut events).await {
            Ok(ClientEvent::Message(event)) => {
                assert_eq!(
                    (event.id.as_str(), event.data.as_str()),
                    (&*n.to_string(), &*format!("tick {n}"))
                );
            }
            other => panic!("expected event {n}, got {other:?}"),
        }
    }
    let protocols = server.protocols.lock().unwrap().clone();
    protocols
}

#[tokio::test]
async fn https_streams_over_http2_when_the_server_offers_it() {
    assert_eq!(stream_three_events(&["h2", "http/1.1"]).await, vec![Some("h2".to_string())]);
}

#[tokio::test]
async fn https_streams_over_http1_when_the_server_speaks_only_that() {
    assert_eq!(stream_three_events(&["http/1.1"]).await, vec![Some("http/1.1".to_string())]);
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_with_the_reason() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let server = tls_server(hub.clone(), &["h2", "http/1.1"]).await;
    // Mozilla's roots only: the self-signed certificate is not among them.
    let mut events = EventSource::new(&format!("{}/events?topic=t", server.base))
        .unwrap()
        .with_backoff(quick())
        .with_max_retries(Some(0))
        .connect()
        .unwrap();
    match next(&mut events).await {
        Err(ClientError::GaveUp { attempts: 1, last }) => {
            assert!(last.contains("UnknownIssuer"), "the reason names the issuer: {last}");
        }
        other => panic!("expected to give up on the certificate, got {other:?}"),
    }
    assert_eq!(hub.stats().subscribers, 0, "no stream was opened");
}

#[tokio::test]
async fn a_server_that_never_answers_fails_the_attempt_at_the_connect_timeout() {
    // Accepts TCP and reads, but never answers: a TLS handshake that never completes.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let started = tokio::time::Instant::now();
    let mut events = EventSource::new(&format!("https://{addr}/events?topic=t"))
        .unwrap()
        .with_connect_timeout(Duration::from_millis(300))
        .with_max_retries(Some(0))
        .connect()
        .unwrap();
    match next(&mut events).await {
        Err(ClientError::GaveUp { attempts: 1, last }) => {
            assert_eq!(last, "no response head in time");
        }
        other => panic!("expected the attempt to time out, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "the deadline bounded the wait");
}
