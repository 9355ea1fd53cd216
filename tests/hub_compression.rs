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
