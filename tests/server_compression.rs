//! Compressed streams over real TCP through every front (the native listener, the hyper and
//! axum adapters): `Accept-Encoding` negotiation, `Content-Encoding` and `Vary`, and bytes that
//! the reference decoders (zstd's, flate2's inflate) turn into exactly what an identity client
//! of the same topics received, for a subscriber that was there from the start and for one that
//! joined mid-frame.

use std::net::SocketAddr;
use std::time::Duration;

use ssehub::server::Server;
use ssehub::{Compression, Encoding, Endpoint, Event, Hub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum Front {
    Native,
    Hyper,
    Axum,
}

async fn spawn(front: Front, endpoint: Endpoint) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    match front {
        Front::Native => {
            tokio::spawn(Server::new(endpoint).with_path("/events").serve(listener));
        }
        Front::Hyper => {
            tokio::spawn(ssehub::hyper::serve(listener, endpoint));
        }
        Front::Axum => {
            let app = axum::Router::new().route("/events", ssehub::axum::events(endpoint));
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
    }
    addr
}

/// A raw HTTP/1.1 stream: the head, then the body (de-chunked when chunked).
struct Stream {
    socket: TcpStream,
    head: String,
    chunked: bool,
    /// Bytes read past the head, not yet de-chunked.
    raw: Vec<u8>,
    /// The body so far.
    body: Vec<u8>,
}

impl Stream {
    async fn open(addr: SocketAddr, accept: Option<&str>) -> Stream {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        let accept = accept.map(|a| format!("accept-encoding: {a}\r\n")).unwrap_or_default();
        let request =
            format!("GET /events?pattern=p:*&topic=q HTTP/1.1\r\nhost: t\r\n{accept}\r\n");
        socket.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let at = loop {
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
                .await
                .expect("a head")
                .expect("read");
            assert!(n > 0, "closed before the head");
            raw.extend_from_slice(&buf[..n]);
        };
        let head =
            String::from_utf8(raw[..at + 4].to_vec()).expect("ascii head").to_ascii_lowercase();
        let raw = raw[at + 4..].to_vec();
        let chunked = head.contains("transfer-encoding: chunked");
        let mut stream = Stream { socket, head, chunked, raw, body: Vec::new() };
        stream.dechunk();
        stream
    }

    fn dechunk(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        loop {
            let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") else { return };
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.raw[..line]).unwrap().trim(), 16)
                    .unwrap();
            if self.raw.len() < line + 2 + size + 2 {
                return;
            }
            self.body.extend_from_slice(&self.raw[line + 2..line + 2 + size]);
            self.raw.drain(..line + 2 + size + 2);
        }
    }

    /// Reads until `done` says the body so far is enough.
    async fn until(&mut self, mut done: impl FnMut(&[u8]) -> bool) {
        let mut buf = vec![0u8; 65536];
        while !done(&self.body) {
            let n = tokio::time::timeout(WAIT, self.socket.read(&mut buf))
                .await
                .expect("more body")
                .expect("read");
            assert!(n > 0, "closed early");
            self.raw.extend_from_slice(&buf[..n]);
            self.dechunk();
        }
    }
}

/// What `body` decodes to so far, or `None` when it does not decode (yet: a block cut by a
/// read). A zstd stream read mid-frame is ended for the decoder as a leaving subscriber ends it.
fn decode(encoding: Encoding, body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    match encoding {
        Encoding::Zstd => {
            for ending in [&[1u8, 0, 0][..], &[]] {
                let bytes = [body, ending].concat();
                out.clear();
                if zstd::stream::read::Decoder::new(&bytes[..]).ok()?.read_to_end(&mut out).is_ok()
                {
                    return Some(out);
                }
            }
            None
        }
        Encoding::Gzip => {
            if body.len() < 10 {
                return None;
            }
            assert_eq!(&body[..3], &[0x1f, 0x8b, 8]);
            let input = &body[10..];
            let mut inflate = flate2::Decompress::new(false);
            loop {
                out.reserve(65536);
                let at = usize::try_from(inflate.total_in()).ok()?;
                inflate
                    .decompress_vec(&input[at..], &mut out, flate2::FlushDecompress::Sync)
                    .ok()?;
                if usize::try_from(inflate.total_in()).ok()? == input.len()
                    && out.len() < out.capacity()
                {
                    return Some(out);
                }
            }
        }
        _ => Some(body.to_vec()),
    }
}

fn events_in(text: &[u8]) -> usize {
    text.windows(2).filter(|w| w == b"\n\n").count()
}

fn price(i: usize) -> Event {
    Event::new(format!("{{\"symbol\":\"S{}\",\"price\":{}.{:02}}}", i % 40, 100 + i % 13, i % 100))
        .with_event("price")
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..2000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn compressed_stream_is_the_identity_stream(front: Front, encoding: Encoding, accept: &str) {
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_compression(Some(Compression::new().with_frame_events(32)))
        .build();
    let addr = spawn(front, Endpoint::new(hub.clone()).with_compression(true)).await;
    let mut identity = Stream::open(addr, None).await;
    let mut compressed = Stream::open(addr, Some(accept)).await;
    assert!(
        compressed.head.contains(&format!("content-encoding: {}", encoding.as_str())),
        "{front:?}: {}",
        compressed.head
    );
    assert!(compressed.head.contains("vary: accept-encoding"), "{}", compressed.head);
    assert!(!identity.head.contains("content-encoding"), "{}", identity.head);
    eventually("both subscribed", || hub.topic_subscriber_count("q") == 2).await;
    for i in 0..100 {
        let topic = if i % 3 == 0 { "q".to_string() } else { format!("p:{}", i % 40) };
        hub.publish(&topic, price(i)).expect("publish");
    }
    // One more joins mid-frame (frames of 32 events): solo blocks until the frame ends.
    let mut late = Stream::open(addr, Some(accept)).await;
    let mut late_identity = Stream::open(addr, None).await;
    eventually("late ones subscribed", || hub.topic_subscriber_count("q") == 4).await;
    for i in 100..150 {
        let topic = if i % 3 == 0 { "q".to_string() } else { format!("p:{}", i % 40) };
        hub.publish(&topic, price(i)).expect("publish");
    }
    identity.until(|b| events_in(b) == 150).await;
    compressed.until(|b| decode(encoding, b).is_some_and(|d| events_in(&d) == 150)).await;
    assert_eq!(
        decode(encoding, &compressed.body).unwrap(),
        identity.body,
        "{front:?} {encoding:?}"
    );
    assert!(
        compressed.body.len() * 2 < identity.body.len(),
        "{front:?} {encoding:?}: {} of {}",
        compressed.body.len(),
        identity.body.len()
    );
    late_identity.until(|b| events_in(b) == 50).await;
    late.until(|b| decode(encoding, b).is_some_and(|d| events_in(&d) == 50)).await;
    assert_eq!(
        decode(encoding, &late.body).unwrap(),
        late_identity.body,
        "{front:?} {encoding:?}: late"
    );
}

#[tokio::test]
async fn native_listener_zstd() {
    compressed_stream_is_the_identity_stream(
        Front::Native,
        Encoding::Zstd,
        "gzip, deflate, br, zstd",
    )
    .await;
}

#[tokio::test]
async fn native_listener_gzip() {
    compressed_stream_is_the_identity_stream(Front::Native, Encoding::Gzip, "gzip;q=1, zstd;q=0.5")
        .await;
}

#[tokio::test]
async fn hyper_adapter_zstd_and_gzip() {
    compressed_stream_is_the_identity_stream(Front::Hyper, Encoding::Zstd, "zstd").await;
    compressed_stream_is_the_identity_stream(Front::Hyper, Encoding::Gzip, "gzip").await;
}

#[tokio::test]
async fn axum_adapter_zstd_and_gzip() {
    compressed_stream_is_the_identity_stream(Front::Axum, Encoding::Zstd, "zstd").await;
    compressed_stream_is_the_identity_stream(Front::Axum, Encoding::Gzip, "x-gzip").await;
}

#[tokio::test]
async fn identity_refused_and_nothing_else_accepted_is_406_and_compression_off_sends_identity() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let addr = spawn(Front::Native, Endpoint::new(hub.clone()).with_compression(true)).await;
    let refused = Stream::open(addr, Some("br, identity;q=0")).await;
    assert!(refused.head.starts_with("http/1.1 406"), "{}", refused.head);
    let off = spawn(Front::Native, Endpoint::new(hub.clone())).await;
    let plain = Stream::open(off, Some("zstd")).await;
    assert!(
        plain.head.starts_with("http/1.1 200") && !plain.head.contains("content-encoding"),
        "{}",
        plain.head
    );
}
