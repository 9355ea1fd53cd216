//! Issue 17 item 1's measurement: what a batch of `k` SSE frames costs the writer when it goes
//! to the kernel as `k` slices of one `writev`, as one slice of one `write` (the same bytes,
//! contiguous), or as `k` `write`s, over a loopback TCP connection whose other end a second
//! thread drains as fast as it can.
//!
//! `writev_slices [--frame BYTES] [--seconds S] [--rounds N] [--batches 1,4,16,64]` prints one
//! markdown row per batch size: the writer thread's CPU (from `/proc/thread-self/schedstat`) per
//! batch in each form, the median (best) over rounds, the forms taking turns (each round starts with a different one).

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// How a batch goes to the kernel.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// One `writev` of `k` slices.
    Slices,
    /// One `write` of the `k` frames, contiguous.
    OneSlice,
    /// `k` `write`s, one per frame.
    Writes,
}

/// The calling thread's CPU time so far, in ns (the first field of its schedstat).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Writes `frames` in `form` for about `seconds`; returns the writer's CPU ns per batch.
fn measure(
    socket: &mut TcpStream,
    frames: &[Vec<u8>],
    joined: &[u8],
    form: Form,
    seconds: f64,
) -> f64 {
    let slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let start = thread_cpu_ns();
    let mut batches = 0u64;
    while Instant::now() < until {
        // 64 batches between clock reads.
        for _ in 0..64 {
            let result = match form {
                Form::Slices => write_all_vectored(socket, &slices, joined.len()),
                Form::OneSlice => socket.write_all(joined),
                Form::Writes => frames.iter().try_for_each(|f| socket.write_all(f)),
            };
            if let Err(e) = result {
                eprintln!("writev_slices: write failed: {e}");
                std::process::exit(1);
            }
        }
        batches += 64;
    }
    (thread_cpu_ns() - start) as f64 / batches as f64
}

/// One `writev` of every slice; more only when the kernel took part of them.
fn write_all_vectored(
    socket: &mut TcpStream,
    slices: &[IoSlice<'_>],
    total: usize,
) -> std::io::Result<()> {
    let written = socket.write_vectored(slices)?;
    if written == total {
        return Ok(());
    }
    // Rare (a full send buffer): finish from a flat copy, which is outside the common path.
    let flat: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
    socket.write_all(&flat[written..])
}

/// "median (best)" of the samples, in ns.
fn summary(values: &mut [f64]) -> (f64, String) {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    (median, format!("{median:.0} ({:.0}) ns", values[0]))
}

fn main() -> std::io::Result<()> {
    let (mut frame_len, mut seconds, mut rounds) = (160usize, 1.0f64, 3usize);
    let mut sizes = vec![1usize, 4, 16, 64];
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        let bad = || -> ! {
            eprintln!("writev_slices: bad value {value:?} for {flag}");
            std::process::exit(2)
        };
        match flag.as_str() {
            "--frame" => frame_len = value.parse().unwrap_or_else(|_| bad()),
            "--seconds" => seconds = value.parse().unwrap_or_else(|_| bad()),
            "--rounds" => rounds = value.parse().unwrap_or_else(|_| bad()),
            "--batches" => {
                sizes = value.split(',').map(|n| n.parse().unwrap_or_else(|_| bad())).collect()
            }
            _ => {
                eprintln!("usage: writev_slices [--frame BYTES] [--seconds S] [--rounds N] [--batches 1,4,16,64]");
                std::process::exit(2);
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut writer = TcpStream::connect(listener.local_addr()?)?;
    writer.set_nodelay(true)?;
    let (mut reader, _) = listener.accept()?;
    thread::spawn(move || {
        let mut buffer = vec![0u8; 1 << 20];
        while matches!(reader.read(&mut buffer), Ok(n) if n > 0) {}
    });
    println!("| frames per batch | bytes | writev of k slices | one write, one slice | k writes | slices / one slice, median (best) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for &k in &sizes {
        let frames: Vec<Vec<u8>> = (0..k).map(|i| vec![b'a' + (i % 26) as u8; frame_len]).collect();
        let joined = frames.concat();
        let (mut slices, mut one, mut writes) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            // Each round starts with a different form, so no form always runs first.
            for turn in 0..3 {
                let (form, into) = match (round + turn) % 3 {
                    0 => (Form::Slices, &mut slices),
                    1 => (Form::OneSlice, &mut one),
                    _ => (Form::Writes, &mut writes),
                };
                into.push(measure(&mut writer, &frames, &joined, form, seconds));
            }
        }
        let ((s, s_text), (o, o_text)) = (summary(&mut slices), summary(&mut one));
        let (_, w_text) = summary(&mut writes);
        let best = slices[0] / one[0];
        println!(
            "| {k} | {} | {s_text} | {o_text} | {w_text} | {:.2}x ({best:.2}x) |",
            joined.len(),
            s / o
        );
    }
    Ok(())
}
