//! With the `tracing` feature, the native listener logs a stream dropped as slow, a resolver
//! panic and a refusal at accept (target `ssehub`), besides counting them. One test in its own
//! binary, with its collector installed process-wide: a thread-scoped collector (`set_default`)
//! raced the other tests' threads registering the same log call sites, which could cache them
//! as disabled for the whole process and lose a line.

#[path = "support/http.rs"]
mod http;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::http::request::Parts;
use ssehub::server::Server;
use ssehub::{Endpoint, Event, Hub, QueryTopics, Resolver};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(10);

/// Collects the `ssehub` log lines (level, then each field).
#[derive(Default, Clone)]
struct Capture(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for Capture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() == "ssehub"
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

async fn start<R: Resolver>(server: Server<R>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener));
    addr
}

/// Waits until `check` holds, or fails the test.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn drops_panics_and_refusals_are_logged() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(capture.clone()).expect("the only collector");
    let hub = Hub::builder().with_heartbeat(None).with_capacity(8).build();
    let endpoint = Endpoint::new(hub.clone()).with_resolver(|parts: &Parts| {
        if parts.uri.query().is_some_and(|q| q.contains("boom")) {
            panic!("a bug in the application's resolver");
        }
        QueryTopics::new().parse(parts)
    });
    let server = Server::new(endpoint)
        .with_max_connections_per_ip(2)
        .with_write_timeout(Duration::from_millis(300));
    let addr = start(server).await;
    let _stalled = http::stalled(addr, "/?topic=t", "").await;
    until("subscribed", || hub.subscriber_count() == 1).await;
    let payload = "x".repeat(64 * 1024);
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.stats().slow_disconnects == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never dropped as slow");
        hub.publish("t", Event::new(payload.clone())).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut failed = http::get(addr, "/?topic=t&boom").await;
    assert_eq!(failed.status, 500);
    failed.text().await;
    let _one = http::get(addr, "/?topic=t").await;
    let _two = http::get(addr, "/?topic=t").await;
    let three = http::get(addr, "/?topic=t").await;
    assert_eq!(three.status, 429);
    let logged = || capture.0.lock().unwrap().join("\n");
    // Dropped as slow by the hub while its task waited on the full socket, which the write
    // deadline then closes: logged with whichever the connection saw first.
    until("the slow drop logged", || {
        let logged = logged();
        logged.contains("reason=\"slow\"") || logged.contains("reason=\"write-deadline\"")
    })
    .await;
    let logged = logged();
    assert!(logged.contains("ERROR message=request resolver panicked"), "{logged}");
    assert!(logged.contains("per-address cap: refused with 429"), "{logged}");
}
