//! Loom models of the engine's internals (`--cfg ssehub_loom`).
//!
//! ```text
//! RUSTFLAGS="--cfg ssehub_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom_
//! ```
//!
//! Each model runs two to four threads over the real queue, registry, copy-on-write cells,
//! heartbeat tick and producer lifecycle (their `Arc`, `Mutex`, atomics and `ArcSwap` come from
//! loom through `crate::sync`). Frames carry a loom `Arc` ([`frame`]), so a frame the engine forgets to
//! release fails the model as a leak, and a model can assert the moment every copy is gone.
//! Assertions are on sequences of labels, not only on counts, and each model that tells cases
//! apart checks afterwards that loom reached every one of them ([`Outcomes`]), so a model cannot
//! pass by never exploring the interleaving it is about.
//!
//! A lost wake-up shows as loom's `deadlock` panic in a model that parks in [`block_on`];
//! loom then aborts the test binary while unwinding the other threads, so read the first panic.
//!
//! loom needs every execution of a model to make the same choices, so no model may let the
//! engine walk a hash map or set holding more than one entry when loom operations happen per
//! entry: `RandomState` changes the order from one execution to the next. The registry's maps
//! are ordered under this cfg (`Map`, `Set` and `TopicMap` in `src/engine/registry.rs`), so
//! shutdown closing two subscribers, or a pattern matching a topic for two of them, is
//! replayable; so is the producer lifecycle's map of instances (`src/services/producers.rs`).

mod loom_heartbeat;
mod loom_idmap;
mod loom_producer;
mod loom_queue;
mod loom_registry;
mod loom_ring;
mod loom_tier;

use std::collections::BTreeSet;
use std::future::Future;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;

use crate::sync::{Arc, AtomicBool, Ordering};

/// A frame's owner: the label's bytes, and a loom `Arc` that lives as long as any copy of it.
struct Tracked {
    /// What the frame reads as.
    label: &'static str,
    /// Dropped with the last copy of the frame.
    _alive: Arc<()>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        self.label.as_bytes()
    }
}

/// A frame reading `label`, and its liveness token: `Arc::strong_count(&token) == 1` once every
/// copy of the frame has been dropped.
fn frame(label: &'static str) -> (Bytes, Arc<()>) {
    let alive = Arc::new(());
    let bytes = Bytes::from_owner(Tracked { label, _alive: alive.clone() });
    (bytes, alive)
}

/// Asserts that no copy of the frames behind `tokens` is left anywhere.
fn assert_released(tokens: &[&Arc<()>]) {
    for (i, token) in tokens.iter().enumerate() {
        assert_eq!(Arc::strong_count(token), 1, "frame #{i} is still held");
    }
}

/// The labels of `frames`, in order.
fn labels(frames: &[Bytes]) -> Vec<String> {
    frames.iter().map(|f| String::from_utf8(f.to_vec()).expect("labels are UTF-8")).collect()
}

/// Which outcomes a model reached over all its executions, so it can assert that loom explored
/// every case its assertions tell apart (a model that never reaches a case proves nothing
/// about it). A std mutex: it outlives the executions.
struct Outcomes(std::sync::Mutex<BTreeSet<String>>);

impl Outcomes {
    /// No outcome yet.
    const fn new() -> Self {
        Outcomes(std::sync::Mutex::new(BTreeSet::new()))
    }

    /// Records one execution's outcome.
    fn record(&self, outcome: impl Into<String>) {
        self.0.lock().unwrap().insert(outcome.into());
    }

    /// Asserts that every one of `expected` was reached.
    fn assert_reached(&self, expected: &[&str]) {
        let reached = self.0.lock().unwrap();
        for outcome in expected {
            assert!(reached.contains(*outcome), "never reached {outcome:?}: {reached:?}");
        }
    }
}

/// A waker that records being woken in a loom atomic, so a model can assert that a registered
/// waker was (or was not) woken.
struct Flag {
    /// Set by `wake`.
    woken: AtomicBool,
}

impl Wake for Flag {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        // SeqCst: the model reads it after joining the waking thread; any ordering would do.
        self.woken.store(true, Ordering::SeqCst);
    }
}

/// A fresh flag and a waker that sets it. `std::task::Wake` wants std's `Arc`; the flag inside is
/// loom's.
fn flag_waker() -> (std::sync::Arc<Flag>, Waker) {
    let flag = std::sync::Arc::new(Flag { woken: AtomicBool::new(false) });
    (flag.clone(), Waker::from(flag))
}

impl Flag {
    /// Whether the waker was woken.
    fn woken(&self) -> bool {
        self.woken.load(Ordering::SeqCst)
    }
}

/// The waker of [`block_on`]: unparks the blocked thread through a loom `Notify`.
struct Unpark(loom::sync::Notify);

impl Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.notify();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.notify();
    }
}

/// Drives `future` to completion on the current loom thread, parking between polls until its
/// waker is woken (`loom::future::block_on` without loom's `futures` feature). A wake-up that
/// never comes is a deadlock, which loom reports.
fn block_on<F: Future>(future: F) -> F::Output {
    let unpark = std::sync::Arc::new(Unpark(loom::sync::Notify::new()));
    let waker = Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        unpark.0.wait();
    }
}
