//! The SSE client against real servers on loopback: the hub behind its axum adapter, and axum
//! routes that answer what real servers answer (204, 404, 503, HTML, hostile streams).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use ssehub::client::{Backoff, ClientError, ClientEvent, EventSource, Events};
use ssehub::parse::ParsedEvent;
use ssehub::{Endpoint, Event, HistoryLimits, Hub};

const SSE: [(header::HeaderName, &str); 1] = [(header::CONTENT_TYPE, "text/event-stream")];

/// Serves `app` on a free loopback port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
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

/// The next message, skipping connection notices.
async fn message(events: &mut Events) -> ParsedEvent {
    loop {
        if let ClientEvent::Message(event) = next(events).await.expect("no error") {
            return event;
        }
    }
}

#[tokio::test]
async fn reconnects_with_last_event_id_and_misses_nothing() {
    let hub = Hub::builder().with_heartbeat(None).with_history(Some(HistoryLimits::new())).build();
    let url =
        serve(Router::new().route("/events", ssehub::axum::events(Endpoint::new(hub.clone()))))
            .await;
    let mut events = EventSource::new(&format!("{url}/events?topic=t"))
        .unwrap()
        .with_backoff(quick())
        .connect()
        .unwrap();
    assert_eq!(next(&mut events).await, Ok(ClientEvent::Open));
    while hub.topic_subscriber_count("t") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = hub.publish("t", Event::new("one\ntwo")).unwrap().id().unwrap().to_string();
    let got = message(&mut events).await;
    assert_eq!((got.id.as_str(), got.data.as_str()), (first.as_str(), "one\ntwo"));
    // The server ends the stream; events published meanwhile come back on the reconnect.
    assert_eq!(hub.disconnect_topic("t"), 1);
    hub.publish("t", Event::new("while away 1")).unwrap();
    hub.publish("t", Event::new("while away 2")).unwrap();
    match next(&mut events).await {
        Ok(ClientEvent::Reconnecting { last_event_id, .. }) => assert_eq!(last_event_id, first),
        other => panic!("expected a reconnect, got {other:?}"),
    }
    assert_eq!(next(&mut events).await, Ok(ClientEvent::Open));
    assert_eq!(message(&mut events).await.data, "while away 1");
    assert_eq!(message(&mut events).await.data, "while away 2");
    hub.publish("t", Event::new("live")).unwrap();
    assert_eq!(message(&mut events).await.data, "live");
}

#[tokio::test]
async fn stops_on_204_and_on_non_retryable_statuses_and_wrong_types() {
    let app = Router::new()
        .route("/gone", get(|| async { StatusCode::NO_CONTENT }))
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route("/html", get(|| async { ([(header::CONTENT_TYPE, "text/html")], "<p>hi</p>") }));
    let url = serve(app).await;
    let cases = [
        ("/gone", ClientError::NoContent),
        ("/missing", ClientError::Status(404)),
        ("/html", ClientError::ContentType("text/html".into())),
    ];
    for (path, expected) in cases {
        let mut events = EventSource::new(&format!("{url}{path}"))
            .unwrap()
            .with_backoff(quick())
            .connect()
            .unwrap();
        assert_eq!(next(&mut events).await, Err(expected));
        let end = tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap();
        assert!(end.is_none(), "{path}: the stream ends after the error");
    }
}

#[tokio::test]
async fn retries_503_honouring_retry_after_then_gives_up_when_told() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().route(
        "/flaky",
        get(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "0")]).into_response()
                } else {
                    (SSE, "id: 7\ndata: finally\n\n").into_response()
                }
            }
        }),
    );
    let url = serve(app).await;
    let mut events =
        EventSource::new(&format!("{url}/flaky")).unwrap().with_backoff(quick()).connect().unwrap();
    for _ in 0..2 {
        match next(&mut events).await {
            Ok(ClientEvent::Reconnecting { delay, reason, .. }) => {
                assert_eq!((delay, reason.as_str()), (Duration::ZERO, "status 503"));
            }
            other => panic!("expected a reconnect, got {other:?}"),
        }
    }
    assert_eq!(message(&mut events).await.data, "finally");
    // The body ends; the next attempt sends the id it saw.
    match next(&mut events).await {
        Ok(ClientEvent::Reconnecting { last_event_id, .. }) => assert_eq!(last_event_id, "7"),
        other => panic!("expected a reconnect, got {other:?}"),
    }

    let down = serve(Router::new().route("/x", get(|| async { StatusCode::BAD_GATEWAY }))).await;
    let mut events = EventSource::new(&format!("{down}/x"))
        .unwrap()
        .with_backoff(quick())
        .with_max_retries(Some(2))
        .connect()
        .unwrap();
    let mut last = None;
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(10), events.next()).await {
        last = Some(item);
    }
    assert_eq!(last, Some(Err(ClientError::GaveUp { attempts: 3, last: "status 502".into() })));
}

#[tokio::test]
async fn the_server_retry_field_sets_the_wait() {
    let app = Router::new().route("/r", get(|| async { (SSE, "retry: 70\ndata: x\n\n") }));
    let url = serve(app).await;
    let mut events =
        EventSource::new(&format!("{url}/r")).unwrap().with_backoff(quick()).connect().unwrap();
    assert_eq!(message(&mut events).await.retry, Some(70));
    match next(&mut events).await {
        Ok(ClientEvent::Reconnecting { delay, .. }) => assert_eq!(delay, Duration::from_millis(70)),
        other => panic!("expected a reconnect, got {other:?}"),
    }
}

#[tokio::test]
async fn hostile_input_is_an_error_not_an_allocation() {
    let huge = format!("data: {}\n\n", "x".repeat(200_000));
    let app = Router::new().route("/huge", get(move || async move { (SSE, huge) }));
    let url = serve(app).await;
    let mut events = EventSource::new(&format!("{url}/huge"))
        .unwrap()
        .with_limits(4096, 65536)
        .with_backoff(quick())
        .connect()
        .unwrap();
    assert_eq!(next(&mut events).await, Ok(ClientEvent::Open));
    assert!(matches!(next(&mut events).await, Err(ClientError::Parse(_))));
}

#[tokio::test]
async fn connection_refused_is_retried() {
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut events = EventSource::new(&format!("http://127.0.0.1:{port}/events"))
        .unwrap()
        .with_backoff(quick())
        .with_max_retries(Some(1))
        .connect()
        .unwrap();
    match next(&mut events).await {
        Ok(ClientEvent::Reconnecting { reason, .. }) => {
            assert!(reason.starts_with("connect"), "{reason}")
        }
        other => panic!("expected a reconnect, got {other:?}"),
    }
    assert!(matches!(next(&mut events).await, Err(ClientError::GaveUp { attempts: 2, .. })));
}
