//! Encoding: `Event::encode` against `format!` of the same frame, and `Event::normalized`.
//!
//! - `single_line_128B`: 128 bytes of data, `event: tick`, `id: 12345`.
//! - `multi_line_1KiB`: 16 lines of 63 bytes joined with LF (1,023 bytes of data), same fields.
//! - `format`: the frame a hand-written hub builds per client: `format!` for one line, and a
//!   `write!` per data line into a fresh `String` for many (what a loop over `str::lines` does).
//! - `normalized`: CRLF turned into LF on the 1 KiB data (the slow path, it allocates), and the
//!   same data already in LF (the fast path: one scan, no allocation).
//!
//! Run: `cargo bench --bench encode -- --warm-up-time 1 --measurement-time 3`.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use ssehub::Event;

/// Lines in the multi-line event.
const LINES: usize = 16;
/// Bytes per line, line break excluded (63 + LF = 64, so 16 lines are about 1 KiB).
const LINE: usize = 63;
/// The id every event carries.
const ID: &str = "12345";

/// `lines` lines of `LINE` bytes joined with `sep` (16 lines joined with LF: 1,023 bytes).
fn lines(lines: usize, sep: &str) -> String {
    (0..lines)
        .map(|i| char::from(b'a' + (i % 26) as u8).to_string().repeat(LINE))
        .collect::<Vec<_>>()
        .join(sep)
}

/// The benchmarked event: `data` with `event: tick` and an id.
fn event(data: &str) -> Event {
    Event::new(data).with_event("tick").with_id(ID)
}

/// The single-line frame with `format!`, field order as ssehub writes it.
fn format_single(id: &str, data: &str) -> String {
    format!("event: tick\nid: {id}\ndata: {data}\n\n")
}

/// The multi-line frame the way hand-written code builds it: one `data:` line per line.
fn format_multi(id: &str, data: &str) -> String {
    let mut out = String::new();
    let _ = write!(out, "event: tick\nid: {id}\n");
    for line in data.lines() {
        let _ = writeln!(out, "data: {line}");
    }
    out.push('\n');
    out
}

/// `encode` against `format!`, then `normalized`.
fn encode(c: &mut Criterion) {
    let single = "x".repeat(128);
    let multi = lines(LINES, "\n");
    let cases = [
        ("single_line_128B", single.as_str(), format_single as fn(&str, &str) -> String),
        ("multi_line_1KiB", multi.as_str(), format_multi),
    ];

    let mut group = c.benchmark_group("encode");
    for (name, data, format) in cases {
        let event = event(data);
        let frame = event.encode().expect("valid event");
        assert_eq!(frame.as_ref(), format(ID, data).as_bytes());
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(BenchmarkId::new("ssehub", name), |b| {
            b.iter(|| black_box(&event).encode())
        });
        group.bench_function(BenchmarkId::new("format", name), |b| {
            b.iter(|| format(black_box(ID), black_box(data)))
        });
    }
    group.finish();

    let crlf = lines(LINES, "\r\n");
    let lf = lines(LINES, "\n");
    assert_eq!(event(&crlf).normalized().data(), Some(lf.as_str()));
    let mut group = c.benchmark_group("normalized");
    for (name, data) in [("crlf_1KiB", &crlf), ("lf_1KiB", &lf)] {
        let event = event(data);
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_function(name, |b| {
            b.iter_batched(|| event.clone(), Event::normalized, BatchSize::SmallInput)
        });
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
