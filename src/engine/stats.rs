//! Counters and the `Stats` snapshot; with the `metrics` feature, the same numbers through the
//! `metrics` facade.
//!
//! Counters are bumped once per publish (with the publish's totals), not once per delivery, and
//! each sits on its own cache line so publishers on different cores do not share one.

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, Ordering};

/// A snapshot of the hub's state and counters.
///
/// # Examples
///
/// ```
/// let hub = ssehub::Hub::new();
/// let _sub = hub.subscribe("news")?;
/// hub.publish("news", ssehub::Event::new("hello"))?;
/// let stats = hub.stats();
/// assert_eq!(stats.subscribers, 1);
/// assert_eq!(stats.topics, 1);
/// assert_eq!(stats.events_published, 1);
/// assert_eq!(stats.frames_delivered, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Live subscriptions.
    pub subscribers: usize,
    /// Live topics: those with at least one subscriber, and, with history on, those whose
    /// history still holds events.
    pub topics: usize,
    /// Events accepted by `publish`, `broadcast` and `send_to`.
    pub events_published: u64,
    /// Frames queued to subscribers (one per subscriber per event).
    pub frames_delivered: u64,
    /// Frames lost by `DropOldest` or `Conflate` subscribers whose queue was full.
    pub frames_dropped: u64,
    /// Frames replaced by a newer one with the same key (`Conflate`).
    pub frames_conflated: u64,
    /// Subscribers disconnected for being slow (`Disconnect`).
    pub slow_disconnects: u64,
    /// Heartbeat frames queued to idle subscribers.
    pub heartbeats: u64,
    /// Sessions remembered (live or waiting for their client).
    pub sessions: usize,
    /// Session tokens presented by another principal (refused).
    pub session_hijacks: u64,
    /// Producers (or their stop callbacks) that panicked.
    pub producer_panics: u64,
    /// Request resolvers that panicked (each such request was answered 500).
    pub resolver_panics: u64,
}

/// The hub's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// See [`Stats::events_published`].
    events_published: CachePadded<AtomicU64>,
    /// See [`Stats::frames_delivered`].
    frames_delivered: CachePadded<AtomicU64>,
    /// See [`Stats::frames_dropped`].
    frames_dropped: CachePadded<AtomicU64>,
    /// See [`Stats::frames_conflated`].
    frames_conflated: CachePadded<AtomicU64>,
    /// See [`Stats::slow_disconnects`].
    slow_disconnects: CachePadded<AtomicU64>,
    /// See [`Stats::heartbeats`].
    heartbeats: CachePadded<AtomicU64>,
    /// See [`Stats::session_hijacks`].
    session_hijacks: CachePadded<AtomicU64>,
    /// See [`Stats::producer_panics`].
    producer_panics: CachePadded<AtomicU64>,
    /// See [`Stats::resolver_panics`].
    resolver_panics: CachePadded<AtomicU64>,
}

/// What one fan-out did.
#[derive(Debug, Default)]
pub(crate) struct FanOut {
    /// Frames queued.
    pub(crate) delivered: u64,
    /// Frames evicted.
    pub(crate) dropped: u64,
    /// Frames replaced by a same-key frame.
    pub(crate) conflated: u64,
    /// Subscribers closed as slow.
    pub(crate) slow: u64,
    /// Their ids, to take them out of the registry once the publish is done (allocates only
    /// when a subscriber was dropped).
    pub(crate) slow_ids: Vec<u64>,
    /// The ring the event went into, whose parked readers are woken once the publish is
    /// complete.
    pub(crate) ring: Option<crate::sync::Arc<crate::engine::ring::Ring>>,
}

/// Adds `n` to a counter. Relaxed: these are statistics, read with no ordering expectations.
fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Counters {
    /// Records one accepted event and what its fan-out did.
    pub(crate) fn published(&self, fan: &FanOut) {
        add(&self.events_published, 1);
        add(&self.frames_delivered, fan.delivered);
        add(&self.frames_dropped, fan.dropped);
        add(&self.frames_conflated, fan.conflated);
        add(&self.slow_disconnects, fan.slow);
        #[cfg(feature = "metrics")]
        {
            metrics::counter!("ssehub_events_published_total").increment(1);
            metrics::counter!("ssehub_frames_delivered_total").increment(fan.delivered);
            if fan.dropped > 0 {
                metrics::counter!("ssehub_frames_dropped_total").increment(fan.dropped);
            }
            if fan.conflated > 0 {
                metrics::counter!("ssehub_frames_conflated_total").increment(fan.conflated);
            }
            if fan.slow > 0 {
                metrics::counter!("ssehub_slow_disconnects_total").increment(fan.slow);
            }
        }
    }

    /// Records `n` heartbeats queued.
    pub(crate) fn heartbeats(&self, n: u64) {
        add(&self.heartbeats, n);
        #[cfg(feature = "metrics")]
        metrics::counter!("ssehub_heartbeats_total").increment(n);
    }

    /// Records ring entries a subscriber's poll skipped (`DropOldest`, more than its bound
    /// behind).
    pub(crate) fn skipped(&self, skipped: u64) {
        add(&self.frames_dropped, skipped);
        #[cfg(feature = "metrics")]
        metrics::counter!("ssehub_frames_dropped_total").increment(skipped);
    }

    /// Records a subscriber that found itself more than its bound behind a ring when it polled
    /// (`Disconnect`) and was dropped as slow.
    pub(crate) fn overflowed(&self) {
        add(&self.slow_disconnects, 1);
        #[cfg(feature = "metrics")]
        metrics::counter!("ssehub_slow_disconnects_total").increment(1);
    }

    /// Records a refused session token.
    pub(crate) fn hijack(&self) {
        add(&self.session_hijacks, 1);
        #[cfg(feature = "metrics")]
        metrics::counter!("ssehub_session_hijacks_total").increment(1);
    }

    /// Records a producer panic.
    pub(crate) fn producer_panic(&self) {
        add(&self.producer_panics, 1);
        #[cfg(feature = "metrics")]
        metrics::counter!("ssehub_producer_panics_total").increment(1);
    }

    /// Records a resolver panic.
    #[cfg(any(feature = "axum", feature = "hyper", feature = "server"))]
    pub(crate) fn resolver_panic(&self) {
        add(&self.resolver_panics, 1);
        #[cfg(feature = "metrics")]
        metrics::counter!("ssehub_resolver_panics_total").increment(1);
    }

    /// Reports the registry's sizes as gauges.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn sizes(&self, subscribers: usize, topics: usize) {
        #[cfg(feature = "metrics")]
        {
            metrics::gauge!("ssehub_subscribers").set(subscribers as f64);
            metrics::gauge!("ssehub_topics").set(topics as f64);
        }
    }

    /// A snapshot of the counters, with the registry's sizes filled in by the caller.
    pub(crate) fn snapshot(&self, subscribers: usize, topics: usize) -> Stats {
        Stats {
            subscribers,
            topics,
            events_published: self.events_published.load(Ordering::Relaxed),
            frames_delivered: self.frames_delivered.load(Ordering::Relaxed),
            frames_dropped: self.frames_dropped.load(Ordering::Relaxed),
            frames_conflated: self.frames_conflated.load(Ordering::Relaxed),
            slow_disconnects: self.slow_disconnects.load(Ordering::Relaxed),
            heartbeats: self.heartbeats.load(Ordering::Relaxed),
            sessions: 0,
            session_hijacks: self.session_hijacks.load(Ordering::Relaxed),
            producer_panics: self.producer_panics.load(Ordering::Relaxed),
            resolver_panics: self.resolver_panics.load(Ordering::Relaxed),
        }
    }
}
