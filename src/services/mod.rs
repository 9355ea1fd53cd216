//! The optional services the hub runs around the engine: resumable sessions, the index of
//! client ids, on-demand producers, the hub-wide heartbeat, the rate tiers' clock and the expiry index (presence is a few lines of the
//! hub's own, in `hub/shared.rs`). The engine calls none of them: the hub calls them around engine
//! operations, with what those operations report (the topics a subscribe touched, the
//! subscribers a publish dropped).

pub(crate) mod clients;
pub(crate) mod expiry;
pub(crate) mod frame_clock;
pub(crate) mod heartbeat;
pub(crate) mod producers;
pub(crate) mod sessions;
pub(crate) mod tier_clock;

/// Stops a service's thread held in `handle` (unparks it, so it sees the hub closed) and waits
/// for it, unless called from that thread itself (its last `Hub` handle dropped there). The
/// heartbeat, the tier clock and the expiry thread only work briefly and park, so each ends
/// promptly; a panic in one is not the caller's to report.
#[cfg(not(ssehub_loom))]
pub(crate) fn stop_thread<R: crate::sync::Rank>(
    handle: &crate::sync::Mutex<Option<std::thread::JoinHandle<()>>, R>,
) {
    let Some(handle) = crate::sync::lock(handle).take() else {
        return;
    };
    handle.thread().unpark();
    if handle.thread().id() != std::thread::current().id() {
        let _ = handle.join();
    }
}
