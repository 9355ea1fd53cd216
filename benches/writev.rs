//! One vectored write of a batch: k small frames as k `IoSlice`s against the same bytes as one.
//!
//! A subscriber's batch of k frames used to reach the socket as k `IoSlice`s in one `writev`;
//! a ring chunk that keeps its frames in one contiguous buffer hands a one-topic batch over as
//! one slice. This measures what that saves in the system call alone, on this machine: a
//! loopback TCP connection (`TCP_NODELAY`, as the listener sets) and a writer that sends `k`
//! frames of 60 to 200 bytes (sizes cycle, about 130 on average, like the benchmark contract's
//! 128-byte payloads) per batch:
//!
//! - `slices`: one `write_vectored` of `k` `IoSlice`s, one per frame (`write` when `k` is 1,
//!   as the listener does);
//! - `one`: one `write` of the same bytes, contiguous.
//!
//! Only the writes are timed: the bench writes a few batches (well under the receive buffer, so
//! no write blocks), then reads them back on the same thread outside the measurement, so no
//! thread wake-up or scheduling on this small machine lands in the numbers. Criterion reports
//! the time per batch.
//!
//! Run: `cargo bench --bench writev -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// Frames per batch.
const BATCHES: [usize; 3] = [1, 8, 64];
/// The most batches written before they are read back: each small write is one segment, and
/// the receive buffer counts each segment's overhead, so a round stays well under it.
const ROUND_WRITES: u64 = 8;
/// The most bytes written before they are read back.
const ROUND_BYTES: u64 = 16 * 1024;

/// The frames of a batch of `k`: sizes cycle through 60 to 200 bytes.
fn frames(k: usize) -> Vec<Vec<u8>> {
    (0..k)
        .map(|i| {
            let len = 60 + (i * 37) % 141;
            let mut frame = vec![b'x'; len];
            frame[..6].copy_from_slice(b"data: ");
            frame[len - 2..].copy_from_slice(b"\n\n");
            frame
        })
        .collect()
}

/// Both ends of a loopback connection.
struct Pair {
    /// The writer's end.
    near: TcpStream,
    /// The end read back between rounds.
    far: TcpStream,
    /// The read-back buffer.
    buf: Vec<u8>,
}

impl Pair {
    /// Connects on an ephemeral loopback port.
    fn new() -> Pair {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let near = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        near.set_nodelay(true).expect("TCP_NODELAY");
        let (far, _) = listener.accept().expect("accept");
        Pair { near, far, buf: vec![0u8; 64 * 1024] }
    }

    /// Writes every byte of `slices` (one `write` for one slice), finishing a short write with
    /// more writes.
    fn write_all(&mut self, slices: &mut [IoSlice<'_>]) {
        let mut slices = slices;
        while !slices.is_empty() {
            let n = match slices {
                [one] => self.near.write(one),
                _ => self.near.write_vectored(slices),
            }
            .expect("write");
            IoSlice::advance_slices(&mut slices, n);
        }
    }

    /// Reads back `bytes` bytes (already sent: loopback delivers within the write).
    fn read_back(&mut self, mut bytes: u64) {
        while bytes > 0 {
            let want = self.buf.len().min(usize::try_from(bytes).unwrap_or(usize::MAX));
            let n = self.far.read(&mut self.buf[..want]).expect("read");
            assert!(n > 0, "the connection closed");
            bytes -= n as u64;
        }
    }

    /// Times `iters` calls of `write` (each writing a batch of `len` bytes), reading back
    /// between rounds outside the measurement.
    fn time(&mut self, iters: u64, len: u64, mut write: impl FnMut(&mut Pair)) -> Duration {
        let per_round = ROUND_WRITES.min(ROUND_BYTES / len).max(1);
        let mut elapsed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let round = left.min(per_round);
            let start = Instant::now();
            for _ in 0..round {
                write(self);
            }
            elapsed += start.elapsed();
            self.read_back(round * len);
            left -= round;
        }
        elapsed
    }
}

fn writev(c: &mut Criterion) {
    let mut group = c.benchmark_group("writev");
    for k in BATCHES {
        let frames = frames(k);
        let joined: Vec<u8> = frames.concat();
        let len = joined.len() as u64;
        let each: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
        let mut pair = Pair::new();
        group.bench_with_input(BenchmarkId::new("slices", k), &k, |b, _| {
            // A writer's array of slices, filled per batch, as the listener's is.
            let mut slices = [IoSlice::new(&[]); 64];
            b.iter_custom(|iters| {
                pair.time(iters, len, |pair| {
                    slices[..k].copy_from_slice(&each);
                    pair.write_all(black_box(&mut slices[..k]));
                })
            });
        });
        group.bench_with_input(BenchmarkId::new("one", k), &k, |b, _| {
            b.iter_custom(|iters| {
                pair.time(iters, len, |pair| {
                    let mut slices = [IoSlice::new(&joined)];
                    pair.write_all(black_box(&mut slices));
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, writev);
criterion_main!(benches);
