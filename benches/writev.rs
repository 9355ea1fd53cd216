//! One vectored write of a batch: k small frames as k `IoSlice`s against the same bytes as one.
//!
//! A subscriber's batch of k frames used to reach the socket as k `IoSlice`s in one `writev`;
//! a ring chunk that keeps its frames in one contiguous buffer hands a one-topic batch over as
//! one slice. This measures what that saves in the system call alone, on this machine: a
//! loopback TCP connection (`TCP_NODELAY`, as the listener sets), drained by another thread
//! as fast as it can read, and a writer that sends `k` frames of 60 to 200 bytes (sizes cycle,
//! about 130 on average, like the benchmark contract's 128-byte payloads) per batch:
//!
//! - `slices`: one `write_vectored` of `k` `IoSlice`s, one per frame;
//! - `one`: one `write_vectored` of one `IoSlice` over the same bytes, contiguous.
//!
//! Criterion reports the time per batch. A short write (the socket's buffer full) is finished
//! with more writes, as a writer would, so both sides always send the whole batch.
//!
//! Run: `cargo bench --bench writev -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// Frames per batch.
const BATCHES: [usize; 3] = [1, 8, 64];

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

/// A loopback connection whose far end a thread reads until it closes.
struct Sink {
    /// The writer's end.
    stream: TcpStream,
    /// The thread draining the other end; it ends when `stream` is dropped.
    drain: JoinHandle<u64>,
}

impl Sink {
    /// Connects on an ephemeral loopback port and starts draining.
    fn new() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let stream = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let (mut far, _) = listener.accept().expect("accept");
        let drain = std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            // Bounded: it ends at the writer's close (0) or an error.
            while let Ok(n @ 1..) = far.read(&mut buf) {
                total += n as u64;
            }
            total
        });
        Sink { stream, drain }
    }

    /// Writes every byte of `slices`, finishing a short write with more writes.
    fn write_all(&mut self, slices: &mut [IoSlice<'_>]) {
        let mut slices = slices;
        while !slices.is_empty() {
            let n = self.stream.write_vectored(slices).expect("write");
            IoSlice::advance_slices(&mut slices, n);
        }
    }

    /// Closes the connection and returns what the far end read.
    fn close(self) -> u64 {
        drop(self.stream);
        self.drain.join().expect("the drain thread")
    }
}

fn writev(c: &mut Criterion) {
    let mut group = c.benchmark_group("writev");
    for k in BATCHES {
        let frames = frames(k);
        let joined: Vec<u8> = frames.concat();
        let each: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
        let mut sink = Sink::new();
        group.bench_with_input(BenchmarkId::new("slices", k), &k, |b, _| {
            // A writer's array of slices, filled per batch, as the listener's is.
            let mut slices = [IoSlice::new(&[]); 64];
            b.iter(|| {
                slices[..k].copy_from_slice(&each);
                sink.write_all(black_box(&mut slices[..k]));
            });
        });
        group.bench_with_input(BenchmarkId::new("one", k), &k, |b, _| {
            b.iter(|| {
                let mut slices = [IoSlice::new(&joined)];
                sink.write_all(black_box(&mut slices));
            });
        });
        let read = sink.close();
        assert_eq!(read % joined.len() as u64, 0, "the far end read whole batches");
    }
    group.finish();
}

criterion_group!(benches, writev);
criterion_main!(benches);
