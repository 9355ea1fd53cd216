#![cfg(ssehub_loom)]
//! A loom model of a compressed stream's boundary handoff: a subscriber joining a stream class
//! while a publisher feeds the class across a compression frame's end. Whatever the
//! interleaving, the subscriber's bytes decode (with zstd's reference decoder) to exactly the
//! events published after it joined: it starts inside the shared frame only at a boundary, and
//! outside it (solo blocks) until the frame ends otherwise.
//!
//! ```text
//! RUSTFLAGS="--cfg ssehub_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_compression
//! ```

use std::io::Read as _;

use loom::thread;
use ssehub::{Compression, Encoding, Event, Hub, Subscribe};

/// `bytes` decoded as zstd, ended as a leaving subscriber ends an open frame.
fn decode(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return String::new();
    }
    for ending in [&[1u8, 0, 0][..], &[]] {
        let stream = [bytes, ending].concat();
        let mut out = Vec::new();
        let decoder = zstd::stream::read::Decoder::new(&stream[..]);
        if decoder.and_then(|mut d| d.read_to_end(&mut out)).is_ok() {
            return String::from_utf8(out).expect("utf-8");
        }
    }
    panic!("the stream does not decode: {bytes:?}");
}

#[test]
fn loom_compression_join_vs_publish_across_a_frame_end() {
    loom::model(|| {
        // Frames of two events: e1 opens one, e2 ends it, e3 opens the next.
        let hub = Hub::builder()
            .with_heartbeat(None)
            .with_compression(Some(Compression::new().with_frame_events(2)))
            .build();
        let _first = hub.subscribe(Subscribe::from("t").with_encoding(Encoding::Zstd)).unwrap();
        let publisher = {
            let hub = hub.clone();
            thread::spawn(move || {
                for data in ["e1", "e2", "e3"] {
                    hub.publish("t", Event::new(data)).unwrap();
                }
            })
        };
        let mut sub = hub.subscribe(Subscribe::from("t").with_encoding(Encoding::Zstd)).unwrap();
        let mut bytes = Vec::new();
        while let Ok(Some(batch)) = sub.try_recv() {
            bytes.extend_from_slice(&batch.into_bytes());
        }
        publisher.join().unwrap();
        while let Ok(Some(batch)) = sub.try_recv() {
            bytes.extend_from_slice(&batch.into_bytes());
        }
        let decoded = decode(&bytes);
        let suffixes = [
            "",
            "data: e3\n\n",
            "data: e2\n\ndata: e3\n\n",
            "data: e1\n\ndata: e2\n\ndata: e3\n\n",
        ];
        assert!(suffixes.contains(&decoded.as_str()), "{decoded:?}");
        drop(sub);
        hub.shutdown();
    });
}
