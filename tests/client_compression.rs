//! The SSE client reading compressed streams from a real HTTP server on loopback (axum), the
//! way a compress-once server sends them: each event its own flushed block, decoded and
//! handed over before the next block is even sent.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use ssehub::client::{Backoff, ClientError, ClientEvent, EventSource, Events};
use tokio::sync::mpsc;

/// What the route saw and the sender of its body.
struct Route {
    /// The request's `Accept-Encoding`.
    asked: Arc<Mutex<Option<String>>>,
    /// Feeds the response body.
    body: mpsc::UnboundedReceiver<Bytes>,
}

/// Serves one streaming response with `Content-Encoding: coding` whose body is what the test
/// sends on the returned channel; returns the URL, what the request asked and the sender.
async fn serve(
    coding: &'static str,
) -> (String, Arc<Mutex<Option<String>>>, mpsc::UnboundedSender<Bytes>) {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let route = Arc::new(Mutex::new(Some(Route { asked: Arc::new(Mutex::new(None)), body: rx })));
    let asked = route.lock().unwrap().as_ref().unwrap().asked.clone();
    let app = Router::new().route(
        "/events",
        get(move |headers: HeaderMap| {
            let route = route.clone();
            async move {
                let Some(Route { asked, body }) = route.lock().unwrap().take() else {
                    return (axum::http::StatusCode::NO_CONTENT, "once").into_response();
                };
                let value =
                    headers.get(header::ACCEPT_ENCODING).map(|v| v.to_str().unwrap().to_string());
                *asked.lock().unwrap() = value;
                let stream = tokio_stream(body);
                let mut response = Body::from_stream(stream).into_response();
                let h = response.headers_mut();
                h.insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
                if !coding.is_empty() {
                    h.insert(header::CONTENT_ENCODING, coding.parse().unwrap());
                }
                response
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/events"), asked, tx)
}

fn tokio_stream(
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(Ok)))
}

fn connect(url: &str) -> Events {
    EventSource::new(url)
        .expect("url")
        .with_backoff(Backoff::new(Duration::from_millis(10), Duration::from_millis(100), 0.0))
        .with_max_retries(Some(0))
        .connect()
        .expect("runtime")
}

async fn next(events: &mut Events) -> Result<ClientEvent, ClientError> {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an item in time")
        .expect("stream open")
}

async fn data(events: &mut Events) -> String {
    match next(events).await {
        Ok(ClientEvent::Message(event)) => event.data,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn frame(i: usize) -> Vec<u8> {
    format!("event: price\nid: {i}\ndata: {{\"symbol\":\"BTC\",\"price\":{}}}\n\n", 64000 + i)
        .into_bytes()
}

/// zstd's streaming compressor, one call's output per event.
struct Zstd(zstd::stream::raw::Encoder<'static>);

impl Zstd {
    fn new() -> Zstd {
        Zstd(zstd::stream::raw::Encoder::new(3).expect("zstd"))
    }

    /// `input` compressed and flushed; with `end`, the frame ended after it.
    fn block(&mut self, input: &[u8], end: bool) -> Bytes {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let mut out = vec![0u8; 4096];
        let mut pos = 0;
        let mut inb = InBuffer::around(input);
        while inb.pos < input.len() {
            let mut outb = OutBuffer::around_pos(&mut out[..], pos);
            self.0.run(&mut inb, &mut outb).expect("run");
            pos = outb.pos();
        }
        let mut outb = OutBuffer::around_pos(&mut out[..], pos);
        if end {
            while self.0.finish(&mut outb, true).expect("finish") > 0 {}
            pos = outb.pos();
            self.0.reinit().expect("next frame");
        } else {
            while self.0.flush(&mut outb).expect("flush") > 0 {}
            pos = outb.pos();
        }
        out.truncate(pos);
        Bytes::from(out)
    }
}

#[tokio::test]
async fn a_zstd_stream_of_several_frames_is_decoded_event_by_event() {
    let (url, asked, tx) = serve("zstd").await;
    let mut events = connect(&url);
    assert_eq!(next(&mut events).await, Ok(ClientEvent::Open));
    assert_eq!(asked.lock().unwrap().as_deref(), Some("zstd, gzip"));
    let mut zstd = Zstd::new();
    for i in 0..12 {
        // A frame ends every fifth event, as a compress-once class's frames do.
        tx.send(zstd.block(&frame(i), i % 5 == 4)).expect("body open");
        // Each event is handed over before the next block exists: nothing waits for more.
        assert_eq!(
            data(&mut events).await,
            format!("{{\"symbol\":\"BTC\",\"price\":{}}}", 64000 + i)
        );
    }
}

#[tokio::test]
async fn a_gzip_stream_without_a_trailer_is_decoded_event_by_event() {
    let (url, asked, tx) = serve("gzip").await;
    let mut events = connect(&url);
    assert_eq!(next(&mut events).await, Ok(ClientEvent::Open));
    assert_eq!(asked.lock().unwrap().as_deref(), Some("zstd, gzip"));
    let mut deflate = flate2::Compress::new(flate2::Compression::new(6), false);
    tx.send(Bytes::from_static(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])).expect("body open");
    for i in 0..12 {
        let mut out = Vec::with_capacity(4096);
        let flush =
            if i % 5 == 4 { flate2::FlushCompress::Full } else { flate2::FlushCompress::Sync };
        deflate.compress_vec(&frame(i), &mut out, flush).expect("deflate");
        tx.send(Bytes::from(out)).expect("body open");
        assert_eq!(
            data(&mut events).await,
            format!("{{\"symbol\":\"BTC\",\"price\":{}}}", 64000 + i)
        );
    }
    // The server goes away without a trailer, as an SSE stream ends: a lost connection.
    drop(tx);
    match next(&mut events).await {
        Ok(ClientEvent::Reconnecting { .. }) | Err(ClientError::GaveUp { .. }) => {}
        other => panic!("expected the end of the stream, got {other:?}"),
    }
}

#[tokio::test]
async fn compression_off_asks_for_identity_and_a_whole_gzip_member_still_decodes() {
    let (url, asked, tx) = serve("gzip").await;
    let mut events =
        EventSource::new(&url).expect("url").with_compression(false).connect().expect("rt");
    assert_eq!(next(&mut events).await, Ok(ClientEvent::Open));
    assert_eq!(asked.lock().unwrap().as_deref(), Some("identity"));
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gzip.write_all(&[frame(1), frame(2)].concat()).expect("write");
    tx.send(Bytes::from(gzip.finish().expect("finish"))).expect("body open");
    assert!(data(&mut events).await.contains("64001"));
    assert!(data(&mut events).await.contains("64002"));
}

#[tokio::test]
async fn an_unknown_coding_and_a_corrupt_body_are_typed_errors() {
    let (url, _, _tx) = serve("br").await;
    let mut events = connect(&url);
    assert_eq!(next(&mut events).await, Err(ClientError::ContentEncoding("br".into())));

    let (url, _, tx) = serve("zstd").await;
    let mut events = connect(&url);
    assert_eq!(next(&mut events).await, Ok(ClientEvent::Open));
    tx.send(Bytes::from_static(b"this is not a zstd frame at all")).expect("body open");
    assert!(matches!(next(&mut events).await, Err(ClientError::Decode(_))));
}
