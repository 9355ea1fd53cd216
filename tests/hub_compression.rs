//! Compressed streams through the hub's API: every subscriber's bytes, decoded with the
//! reference decoders, are exactly its identity stream, whatever it joined, skipped or was sent
//! on its own; and the class's blocks are shared, not made per subscriber.

use std::io::Read as _;

use bytes::Bytes;
use ssehub::{Encoding, Event, Hub, SlowPolicy, Subscribe, Subscription};

/// Everything `sub` has ready, as bytes.
fn drain(sub: &mut Subscription) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(batch)) = sub.try_recv() {
        out.extend_from_slice(&batch.into_bytes());
    }
    out
}

/// `stream` decoded in `encoding` with the reference decoders (zstd's, flate2's raw inflate
/// after the gzip header; the gzip stream has no trailer).
fn decode(encoding: Encoding, stream: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if stream.is_empty() {
        return out;
    }
    match encoding {
        Encoding::Zstd => {
            // A stream cut mid-frame is what a connection closed mid-frame leaves; a test
            // ends the frame for the decoder as a leaving subscriber would.
            let mut bytes = stream.to_vec();
            bytes.extend_from_slice(&[1, 0, 0]);
            let mut decoder = zstd::stream::read::Decoder::new(&bytes[..]).expect("decoder");
            if decoder.read_to_end(&mut out).is_err() {
                // Ended exactly at a frame's end: the extra block is a stray; decode without.
                out.clear();
                let mut decoder = zstd::stream::read::Decoder::new(stream).expect("decoder");
                decoder.read_to_end(&mut out).expect("a valid zstd stream");
            }
        }
        Encoding::Gzip => {
            assert_eq!(&stream[..3], &[0x1f, 0x8b, 8], "a gzip header");
            let input = &stream[10..];
            let mut inflate = flate2::Decompress::new(false);
            loop {
                out.reserve(64 * 1024);
                let at = usize::try_from(inflate.total_in()).unwrap();
                inflate
                    .decompress_vec(&input[at..], &mut out, flate2::FlushDecompress::Sync)
                    .expect("a valid deflate stream");
                if usize::try_from(inflate.total_in()).unwrap() == input.len()
                    && out.len() < out.capacity()
                {
                    break;
                }
            }
        }
        _ => out.extend_from_slice(stream),
    }
    out
}

fn price(i: usize) -> Event {
    Event::new(format!("{{\"symbol\":\"S{}\",\"price\":{}.{}}}", i % 7, 100 + i % 13, i % 100))
        .with_event("price")
}

#[test]
fn a_compressed_stream_decodes_to_the_identity_stream_for_every_way_in() {
    for encoding in [Encoding::Zstd, Encoding::Gzip] {
        let hub = Hub::builder()
            .with_heartbeat(None)
            .with_compression(Some(ssehub::Compression::new().with_frame_events(8)))
            .build();
        let request = || Subscribe::new().with_pattern("p:*").with_topic("q");
        let mut identity = hub.subscribe(request()).expect("identity");
        let mut early = hub.subscribe(request().with_encoding(encoding)).expect("early");
        assert_eq!(early.encoding(), encoding);
        let mut early_bytes = Vec::new();
        let mut late = None;
        let mut late_identity = None;
        let mut identity_bytes = Vec::new();
        for i in 0..50 {
            let topic = if i % 3 == 0 { "q".to_string() } else { format!("p:{}", i % 5) };
            hub.publish(&topic, price(i)).expect("publish");
            if i == 13 {
                // Joins mid-frame: solo blocks until the frame ends.
                late = Some(hub.subscribe(request().with_encoding(encoding)).expect("late"));
                late_identity = Some(hub.subscribe(request()).expect("late identity"));
            }
            if i == 20 {
                // A frame of its own, mid-frame.
                hub.send_to(early.id(), Event::new("just for you").with_event("own"))
                    .expect("send");
                hub.send_to(identity.id(), Event::new("just for you").with_event("own"))
                    .expect("send");
            }
            if i % 4 == 0 {
                early_bytes.extend(drain(&mut early));
                identity_bytes.extend(drain(&mut identity));
            }
        }
        early_bytes.extend(drain(&mut early));
        identity_bytes.extend(drain(&mut identity));
        assert_eq!(decode(encoding, &early_bytes), identity_bytes, "{encoding:?}: early");
        assert!(
            early_bytes.len() * 4 < identity_bytes.len() * 3,
            "{encoding:?} compresses: {} of {}",
            early_bytes.len(),
            identity_bytes.len()
        );
        let late_bytes = drain(late.as_mut().unwrap());
        let late_identity = drain(late_identity.as_mut().unwrap());
        assert_eq!(decode(encoding, &late_bytes), late_identity, "{encoding:?}: late");
    }
}

#[test]
fn members_of_a_class_get_the_same_blocks_and_others_are_other_classes() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let mut a = hub.subscribe(Subscribe::from("t").with_encoding(Encoding::Zstd)).unwrap();
    let mut b = hub.subscribe(Subscribe::from("t").with_encoding(Encoding::Zstd)).unwrap();
    let mut c = hub.subscribe(Subscribe::from("t").with_encoding(Encoding::Gzip)).unwrap();
    hub.publish("t", price(1)).unwrap();
    let (ba, bb) = (a.try_recv().unwrap().unwrap(), b.try_recv().unwrap().unwrap());
    // One block, the same allocation for both: compressed once.
    assert_eq!(ba.frames().len(), 1);
    assert_eq!(ba.frames()[0].as_ptr(), bb.frames()[0].as_ptr());
    let bc = c.try_recv().unwrap().unwrap().into_bytes();
    assert_eq!(&bc[..2], &[0x1f, 0x8b]);
}

#[test]
fn drop_oldest_skips_and_the_stream_still_decodes() {
    let hub = Hub::builder()
        .with_heartbeat(None)
        .with_compression(Some(ssehub::Compression::new().with_frame_events(16)))
        .build();
    let mut sub = hub
        .subscribe(
            Subscribe::from("t")
                .with_encoding(Encoding::Zstd)
                .with_capacity(4)
                .with_slow_policy(SlowPolicy::DropOldest),
        )
        .unwrap();
    let mut bytes = Vec::new();
    for i in 0..3 {
        hub.publish("t", price(i)).unwrap();
    }
    bytes.extend(drain(&mut sub));
    for i in 3..40 {
        hub.publish("t", price(i)).unwrap();
    }
    bytes.extend(drain(&mut sub));
    for i in 40..45 {
        hub.publish("t", price(i)).unwrap();
    }
    bytes.extend(drain(&mut sub));
    let text = String::from_utf8(decode(Encoding::Zstd, &bytes)).unwrap();
    assert!(text.contains("event: lagged"), "{text}");
    assert!(text.contains("\"price\":100.0}") && text.ends_with("\n\n"), "{text}");
    let _ = Bytes::new();
}

mod model {
    //! Random joins (exact topics, patterns, both; from the start, mid-frame, resuming from an
    //! id), publishes across topics, targeted sends, broadcasts, drains and disconnects: every
    //! compressed stream decodes, with the reference decoder, to exactly what an identity twin
    //! (the same request, made at the same point) received.

    use proptest::prelude::*;
    use ssehub::{Compression, Encoding, Event, HistoryLimits, Hub, Subscribe, Subscription};

    use super::{decode, drain};

    #[derive(Debug, Clone)]
    enum Op {
        Publish { topic: usize, size: usize },
        Join { request: usize, encoding: bool, resume: Option<usize> },
        Send { to: usize },
        Broadcast,
        Drain { who: usize },
        Disconnect { who: usize },
    }

    const TOPICS: [&str; 4] = ["a:1", "a:2", "b", "c"];

    fn request(kind: usize) -> Subscribe {
        match kind % 4 {
            0 => Subscribe::from("b"),
            1 => Subscribe::new().with_pattern("a:*"),
            2 => Subscribe::new().with_pattern("a:*").with_topic("c"),
            _ => Subscribe::new().with_topics(["b", "c"]),
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..4usize, 1..300usize).prop_map(|(topic, size)| Op::Publish { topic, size }),
            2 => (0..4usize, any::<bool>(), proptest::option::of(0..40usize))
                .prop_map(|(request, encoding, resume)| Op::Join { request, encoding, resume }),
            1 => (0..8usize).prop_map(|to| Op::Send { to }),
            1 => Just(Op::Broadcast),
            2 => (0..8usize).prop_map(|who| Op::Drain { who }),
            1 => (0..8usize).prop_map(|who| Op::Disconnect { who }),
        ]
    }

    /// A compressed subscription, its identity twin, and what each has handed over so far.
    struct Pair {
        encoding: Encoding,
        compressed: Subscription,
        identity: Subscription,
        compressed_bytes: Vec<u8>,
        identity_bytes: Vec<u8>,
    }

    impl Pair {
        fn drain(&mut self) {
            self.compressed_bytes.extend(drain(&mut self.compressed));
            self.identity_bytes.extend(drain(&mut self.identity));
        }
    }

    fn payload(n: usize, size: usize) -> String {
        // JSON-ish, repetitive enough to compress, different per event.
        let mut data = format!("{{\"n\":{n},\"v\":\"");
        while data.len() < size {
            data.push_str(["alpha", "beta", "gamma", "delta"][data.len() % 4]);
        }
        data.push_str("\"}");
        data
    }

    fn run(ops: Vec<Op>) {
        let hub = Hub::builder()
            .with_heartbeat(None)
            .with_history(Some(HistoryLimits::new()))
            .with_compression(Some(Compression::new().with_frame_events(5)))
            .build();
        let mut pairs: Vec<Pair> = Vec::new();
        let mut ids: Vec<String> = Vec::new();
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Publish { topic, size } => {
                    let published =
                        hub.publish(TOPICS[topic], Event::new(payload(n, size))).unwrap();
                    ids.extend(published.id().map(str::to_string));
                }
                Op::Join { request: kind, encoding, resume } => {
                    let encoding = if encoding { Encoding::Zstd } else { Encoding::Gzip };
                    let mut made = request(kind);
                    if let Some(id) = resume.and_then(|i| ids.get(i)) {
                        made = made.with_last_event_id(id.clone());
                    }
                    let compressed = hub.subscribe(made.clone().with_encoding(encoding)).unwrap();
                    let identity = hub.subscribe(made).unwrap();
                    assert_eq!(compressed.encoding(), encoding);
                    pairs.push(Pair {
                        encoding,
                        compressed,
                        identity,
                        compressed_bytes: Vec::new(),
                        identity_bytes: Vec::new(),
                    });
                }
                Op::Send { to } => {
                    if let Some(pair) = pairs.get(to) {
                        // Its own id, so both twins get the same bytes (two sends take two numbers).
                        let own = Event::new(format!("for {to} at {n}"))
                            .with_event("own")
                            .with_id(format!("own-{n}"));
                        let _ = hub.send_to(pair.compressed.id(), own.clone());
                        let _ = hub.send_to(pair.identity.id(), own);
                    }
                }
                Op::Broadcast => {
                    let _ = hub.broadcast(Event::new(format!("everyone {n}")).with_event("all"));
                }
                Op::Drain { who } => {
                    if let Some(pair) = pairs.get_mut(who) {
                        pair.drain();
                    }
                }
                Op::Disconnect { who } => {
                    if let Some(pair) = pairs.get(who) {
                        hub.disconnect(pair.compressed.id());
                        hub.disconnect(pair.identity.id());
                    }
                }
            }
        }
        for (i, pair) in pairs.iter_mut().enumerate() {
            pair.drain();
            let decoded = decode(pair.encoding, &pair.compressed_bytes);
            if decoded != pair.identity_bytes {
                let at =
                    decoded.iter().zip(&pair.identity_bytes).take_while(|(a, b)| a == b).count();
                let around = |b: &[u8]| {
                    String::from_utf8_lossy(&b[at.saturating_sub(80)..(at + 80).min(b.len())])
                        .into_owned()
                };
                panic!(
                    "stream {i} ({:?}) differs at byte {at} of {}/{}:\n{}\n---\n{}",
                    pair.encoding,
                    decoded.len(),
                    pair.identity_bytes.len(),
                    around(&decoded),
                    around(&pair.identity_bytes)
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
        #[test]
        fn every_compressed_stream_decodes_to_its_identity_twin(ops in proptest::collection::vec(op(), 1..120)) {
            run(ops);
        }
    }
}
