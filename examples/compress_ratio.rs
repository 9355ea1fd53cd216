//! Wire bytes and compressor CPU per event for the ways an SSE feed can be compressed, on a
//! recorded stream or a generated telemetry feed: identity; one compressor per connection
//! (the ratio a per-client compressor gets, the ceiling compress-once is measured against);
//! compress-once frames of N events (one shared context, flushed after every event, a new
//! frame every N); one self-contained frame per event (what a subscriber gets until its first
//! frame boundary).
//!
//! ```sh
//! # the demo market feed, as a pattern subscriber of every symbol receives it:
//! ssehub --addr 127.0.0.1:8080 --demo --demo-rate 300 &
//! timeout 20 curl -sN 'http://127.0.0.1:8080/events?pattern=price:*' -o demo.sse
//! cargo run --release --example compress_ratio -- --capture demo.sse
//! # a telemetry-like feed (200 hosts' metrics as JSON), generated:
//! cargo run --release --example compress_ratio -- --telemetry 20000
//! ```

use std::time::Instant;

use flate2::{Compress, Compression, FlushCompress};
use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective as EndDirective;
use zstd::zstd_safe::{CCtx, CParameter, InBuffer, OutBuffer};

/// What one model cost over the whole feed.
struct Outcome {
    /// Wire bytes.
    bytes: usize,
    /// Compressor time per event.
    ns_per_event: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let frames = match args.get(1).map(String::as_str) {
        Some("--capture") => capture(args.get(2).expect("--capture FILE")),
        Some("--telemetry") => {
            telemetry(args.get(2).and_then(|n| n.parse().ok()).unwrap_or(20_000))
        }
        _ => {
            eprintln!("usage: compress_ratio --capture FILE | --telemetry EVENTS");
            std::process::exit(2);
        }
    };
    let identity: usize = frames.iter().map(Vec::len).sum();
    println!(
        "{} events, {} identity bytes ({:.0} per event)\n",
        frames.len(),
        identity,
        identity as f64 / frames.len() as f64
    );
    println!(
        "| model | level | frame | bytes/event | vs identity | vs per-connection | ns/event |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let row = |model: &str, level: i32, frame: &str, out: &Outcome, ceiling: Option<usize>| {
        println!(
            "| {model} | {level} | {frame} | {:.1} | {:.3}x | {} | {:.0} |",
            out.bytes as f64 / frames.len() as f64,
            out.bytes as f64 / identity as f64,
            ceiling.map_or("-".to_string(), |c| format!("{:.2}x", out.bytes as f64 / c as f64)),
            out.ns_per_event,
        );
    };
    for level in [1, 3, 6] {
        let per_connection = zstd_frames(&frames, level, usize::MAX);
        row("zstd per connection", level, "one", &per_connection, None);
        for n in [16, 32, 64, 128, 256, 1024] {
            let once = zstd_frames(&frames, level, n);
            row("zstd compress-once", level, &n.to_string(), &once, Some(per_connection.bytes));
        }
        row(
            "zstd per event",
            level,
            "1",
            &zstd_frames(&frames, level, 1),
            Some(per_connection.bytes),
        );
    }
    for level in [1, 6] {
        let per_connection = deflate_segments(&frames, level, usize::MAX);
        row("gzip per connection", level as i32, "one", &per_connection, None);
        for n in [16, 32, 64, 128, 256, 1024] {
            let once = deflate_segments(&frames, level, n);
            row(
                "gzip compress-once",
                level as i32,
                &n.to_string(),
                &once,
                Some(per_connection.bytes),
            );
        }
        let solo = deflate_segments(&frames, level, 1);
        row("gzip per event", level as i32, "1", &solo, Some(per_connection.bytes));
    }
}

/// The frames of a recorded SSE stream (split at blank lines), without its `connected` frame.
fn capture(path: &str) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).expect("read the capture");
    let mut frames = Vec::new();
    let mut start = 0;
    while let Some(at) = find(&bytes[start..], b"\n\n") {
        let frame = &bytes[start..start + at + 2];
        if !frame.starts_with(b"event: connected") {
            frames.push(frame.to_vec());
        }
        start += at + 2;
    }
    frames
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `count` frames of a telemetry feed: 200 hosts reporting CPU, memory, load and network
/// counters, with hub ids.
fn telemetry(count: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut rx = [0u64; 200];
    (0..count)
        .map(|i| {
            let host = (next() % 200) as usize;
            rx[host] += next() % 100_000;
            format!(
                "event: metrics\nid: 1a25293abcd-{}\ndata: {{\"host\":\"web-{host:03}.eu-west-1\",\
                 \"ts\":{},\"cpu\":{:.3},\"mem_used\":{},\"load1\":{:.2},\"rx_bytes\":{},\
                 \"status\":\"ok\"}}\n\n",
                1000 + i,
                1_796_681_740_268u64 + i as u64 * 5,
                (next() % 1000) as f64 / 1000.0,
                8_000_000_000u64 + next() % 1_000_000_000,
                (next() % 400) as f64 / 100.0,
                rx[host],
            )
            .into_bytes()
        })
        .collect()
}

/// One zstd context, flushed after every event; the frame ends every `n` events.
fn zstd_frames(frames: &[Vec<u8>], level: i32, n: usize) -> Outcome {
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(level)).expect("level");
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut bytes = 0;
    let start = Instant::now();
    for (i, frame) in frames.iter().enumerate() {
        let end = n != usize::MAX && (i + 1) % n == 0;
        let directive = if end { EndDirective::ZSTD_e_end } else { EndDirective::ZSTD_e_flush };
        out.clear();
        let mut input = InBuffer::around(frame);
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(64 * 1024);
            }
            let written = out.len();
            let left = {
                let mut output = OutBuffer::around_pos(&mut out, written);
                cctx.compress_stream2(&mut output, &mut input, directive).expect("compress")
            };
            if left == 0 && input.pos() == frame.len() {
                break;
            }
        }
        bytes += out.len();
    }
    Outcome { bytes, ns_per_event: start.elapsed().as_nanos() as f64 / frames.len() as f64 }
}

/// One raw deflate stream, sync-flushed after every event and full-flushed every `n` events
/// (a self-contained event, for `n == 1`, is a fresh stream each), plus the gzip header.
fn deflate_segments(frames: &[Vec<u8>], level: u32, n: usize) -> Outcome {
    let mut deflate = Compress::new(Compression::new(level), false);
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut bytes = 10;
    let start = Instant::now();
    for (i, frame) in frames.iter().enumerate() {
        if n == 1 {
            deflate.reset();
        }
        let full = n != usize::MAX && (i + 1) % n == 0;
        let flush = if full { FlushCompress::Full } else { FlushCompress::Sync };
        out.clear();
        let before = deflate.total_in();
        loop {
            out.reserve(frame.len() + 64);
            let done = (deflate.total_in() - before) as usize;
            deflate.compress_vec(&frame[done..], &mut out, flush).expect("deflate");
            if (deflate.total_in() - before) as usize == frame.len() && out.capacity() > out.len() {
                break;
            }
        }
        bytes += out.len();
    }
    Outcome { bytes, ns_per_event: start.elapsed().as_nanos() as f64 / frames.len() as f64 }
}
