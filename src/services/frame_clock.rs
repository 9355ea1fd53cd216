//! The hub-wide clock of the compressed streams' frames: one thread ends each stream class's
//! compression frame once it has been open for the frame time with no event to end it, so a
//! quiet class's members (their own frames, a heartbeat) and new members reach a frame boundary
//! within the frame time. A thread, not a task (the hub needs no runtime), started by the first
//! compressed subscription; it looks at the classes every half frame time.

use std::time::Duration;

use crate::hub::Shared;
use crate::sync::{rank, Mutex};

/// The frame clock's thread handle.
#[derive(Debug, Default)]
pub(crate) struct FrameClock {
    /// The running thread, if any.
    #[cfg(not(ssehub_loom))]
    thread: Mutex<Option<std::thread::JoinHandle<()>>, rank::FrameThread>,
    /// Unused under loom, where there is no thread.
    #[cfg(ssehub_loom)]
    #[allow(dead_code)]
    thread: Mutex<(), rank::FrameThread>,
}

#[cfg(not(ssehub_loom))]
impl FrameClock {
    /// Starts the clock for `shared` (looking every `period`) unless it runs. The thread holds
    /// only a weak reference, so it never keeps a hub alive, and exits at shutdown.
    pub(crate) fn start(shared: &crate::sync::Arc<Shared>, period: Duration) {
        let mut thread = crate::sync::lock(&shared.frame_clock.thread);
        if thread.is_some() {
            return;
        }
        let weak = crate::sync::Arc::downgrade(shared);
        let spawned = std::thread::Builder::new()
            .name("ssehub-frames".into())
            .spawn(move || run(&weak, period));
        // Without the thread a quiet class's frame ends at its next event instead: members'
        // own frames wait for it. Retried at the next compressed subscription.
        if let Ok(handle) = spawned {
            *thread = Some(handle);
        }
    }

    /// Stops the thread and waits for it, unless called from it.
    pub(crate) fn stop(&self) {
        super::stop_thread(&self.thread);
    }
}

/// The clock's loop.
#[cfg(not(ssehub_loom))]
fn run(weak: &crate::sync::PlainWeak<Shared>, period: Duration) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        if shared.is_closed() {
            return;
        }
        shared.engine.close_idle_frames();
        drop(shared);
        std::thread::park_timeout(period);
    }
}

#[cfg(ssehub_loom)]
impl FrameClock {
    /// No thread under loom.
    pub(crate) fn start(_shared: &crate::sync::Arc<Shared>, _period: Duration) {}

    /// No thread under loom.
    pub(crate) fn stop(&self) {}
}
