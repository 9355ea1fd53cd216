//! Counters and the `Stats` snapshot; with the `metrics` feature, the same numbers through the
//! `metrics` facade.
//!
//! Counters are bumped once per publish (with the publish's totals), not once per delivery, and
//! each sits on its own cache line so publishers on different cores do not share one.

#[cfg(feature = "metrics")]
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

#[cfg(any(feature = "server", feature = "axum", feature = "hyper"))]
use crate::error::EndReason;
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
    /// history still holds events, and, with keyed state on, those whose state holds values.
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
    /// Keys evicted from a topic's keyed state at its bound (see
    /// [`StateLimits`](crate::StateLimits)).
    pub state_evictions: u64,
    /// Subscriptions that started with a snapshot of the keyed state.
    pub snapshots: u64,
    /// Ticks of rate tiers (see [`Subscribe::with_interval`](crate::Subscribe::with_interval))
    /// that delivered at least one value.
    pub tier_ticks: u64,
    /// Deliveries rate tiers saved: for each value a newer one of its key replaced before its
    /// tick, one per subscriber of the tier.
    pub tier_saved: u64,
    /// Topics whose keyed state was dropped, nobody receiving them, at the hub's bound on the
    /// topics holding state (see
    /// [`HubBuilder::with_max_state_topics`](crate::HubBuilder::with_max_state_topics)).
    pub state_topics_dropped: u64,
}

/// The hub's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// The writers' histograms and the publish times they read (feature `metrics`).
    #[cfg(feature = "metrics")]
    writes: Writes,
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
    /// See [`Stats::state_evictions`].
    state_evictions: CachePadded<AtomicU64>,
    /// See [`Stats::snapshots`].
    snapshots: CachePadded<AtomicU64>,
    /// See [`Stats::tier_ticks`].
    tier_ticks: CachePadded<AtomicU64>,
    /// See [`Stats::tier_saved`].
    tier_saved: CachePadded<AtomicU64>,
    /// See [`Stats::state_topics_dropped`].
    state_topics_dropped: CachePadded<AtomicU64>,
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
    /// Subscribers of rate tiers the event is pending for (receivers, delivered at a tick).
    pub(crate) tiered: u64,
    /// Deliveries a rate tier saved: the subscribers of each tier where this event replaced a
    /// pending value.
    pub(crate) tier_saved: u64,
    /// Subscribers closed as slow.
    pub(crate) slow: u64,
    /// Their ids, to take them out of the registry once the publish is done (allocates only
    /// when a subscriber was dropped).
    pub(crate) slow_ids: Vec<u64>,
    /// The ring the event went into, whose parked readers are woken once the publish is
    /// complete.
    pub(crate) ring: Option<crate::sync::Arc<crate::engine::ring::Ring>>,
    /// The stream classes' rings the event went into, woken likewise.
    pub(crate) classes: Vec<crate::sync::Arc<crate::engine::ring::Ring>>,
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
        add(&self.tier_saved, fan.tier_saved);
        #[cfg(feature = "metrics")]
        {
            metrics::counter!("ssehub_events_published_total").increment(1);
            if fan.tier_saved > 0 {
                metrics::counter!("ssehub_tier_saved_total").increment(fan.tier_saved);
            }
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

    /// Records one tick of a rate tier and what its fan-out did (its deliveries are frames
    /// delivered; it publishes no event).
    pub(crate) fn ticked(&self, fan: &FanOut) {
        add(&self.tier_ticks, 1);
        add(&self.frames_delivered, fan.delivered);
        add(&self.frames_dropped, fan.dropped);
        add(&self.frames_conflated, fan.conflated);
        add(&self.slow_disconnects, fan.slow);
        #[cfg(feature = "metrics")]
        {
            metrics::counter!("ssehub_tier_ticks_total").increment(1);
            metrics::counter!("ssehub_frames_delivered_total").increment(fan.delivered);
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

    /// Records `n` keys evicted from a topic's keyed state.
    pub(crate) fn state_evicted(&self, n: u64) {
        add(&self.state_evictions, n);
        #[cfg(feature = "metrics")]
        if n > 0 {
            metrics::counter!("ssehub_state_evictions_total").increment(n);
        }
    }

    /// Records a topic whose keyed state was dropped at the hub's bound.
    pub(crate) fn state_topic_dropped(&self) {
        add(&self.state_topics_dropped, 1);
        #[cfg(feature = "metrics")]
        metrics::counter!("ssehub_state_topics_dropped_total").increment(1);
    }

    /// Records a subscription that started with a snapshot.
    pub(crate) fn snapshot_taken(&self) {
        add(&self.snapshots, 1);
        #[cfg(feature = "metrics")]
        metrics::counter!("ssehub_snapshots_total").increment(1);
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

    /// The time now, for the publish-to-write latency; `None` (and no clock read) when the hub
    /// was built with no recorder installed.
    #[cfg(feature = "metrics")]
    pub(crate) fn clock(&self) -> Option<Instant> {
        self.writes.recording.then(Instant::now)
    }

    /// Notes that event `seq` entered the pipeline at `at`, for the publish-to-write latency.
    #[cfg(feature = "metrics")]
    pub(crate) fn stamp(&self, seq: u64, at: Instant) {
        self.writes.stamps.stamp(seq, at);
    }

    /// Records a batch whose write (of everything in it) has just completed.
    #[cfg(any(feature = "server", feature = "axum", feature = "hyper"))]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn written(&self, sample: &Sample) {
        #[cfg(feature = "metrics")]
        {
            let writes = &self.writes;
            if !writes.recording {
                return;
            }
            writes.frames.record(sample.frames as f64);
            writes.bytes.record(sample.bytes as f64);
            if let Some(age) = sample.first_seq.and_then(|seq| writes.stamps.age(seq)) {
                writes.latency.record(age.as_secs_f64());
            }
        }
    }

    /// Reports how far behind the slowest subscriber is (see [`SLOWEST_LAG`]).
    #[cfg(feature = "metrics")]
    pub(crate) fn slowest_lag(&self, events: usize) {
        self.writes.lag.set(events as f64);
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
            state_evictions: self.state_evictions.load(Ordering::Relaxed),
            snapshots: self.snapshots.load(Ordering::Relaxed),
            tier_ticks: self.tier_ticks.load(Ordering::Relaxed),
            tier_saved: self.tier_saved.load(Ordering::Relaxed),
            state_topics_dropped: self.state_topics_dropped.load(Ordering::Relaxed),
        }
    }
}

/// Histogram of the publish-to-write latency, in seconds: from the moment an event entered the
/// publish pipeline (`Hub::publish` and its kin, before validation and the sequencer) until a
/// listener's write of the batch holding it completed (the last byte handed to the kernel).
/// One sample per batch, for its oldest event: the worst any event of that write waited.
#[cfg(feature = "metrics")]
pub(crate) const LATENCY: &str = "ssehub_delivery_latency_seconds";
/// Histogram of frames per write.
#[cfg(feature = "metrics")]
pub(crate) const BATCH_FRAMES: &str = "ssehub_write_batch_frames";
/// Histogram of bytes per write.
#[cfg(feature = "metrics")]
pub(crate) const BATCH_BYTES: &str = "ssehub_write_batch_bytes";
/// Gauge of the slowest subscriber's backlog, in events, sampled on the heartbeat tick.
#[cfg(feature = "metrics")]
pub(crate) const SLOWEST_LAG: &str = "ssehub_slowest_subscriber_lag_events";
/// Counter of streams ended, labelled by `reason` (see [`StreamEnd::label`]).
#[cfg(feature = "metrics")]
pub(crate) const STREAMS_ENDED: &str = "ssehub_streams_ended_total";

/// Why a stream (an HTTP response carrying a subscription) ended, as its writer saw it.
#[cfg(any(feature = "server", feature = "axum", feature = "hyper"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// The hub ended the subscription.
    Hub(EndReason),
    /// The peer closed the connection or a write to it failed.
    ClientGone,
    /// A write stayed blocked past the write timeout (the native listener's; the adapters'
    /// connections end under hyper, and count as `ClientGone`).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    WriteDeadline,
    /// The client sent more than an SSE client ever sends after its request (the native
    /// listener's check).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    UnexpectedInput,
}

#[cfg(any(feature = "server", feature = "axum", feature = "hyper"))]
impl StreamEnd {
    /// The value of the `reason` label. One arm per reason: a new [`EndReason`] fails to
    /// compile here until it has its label.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn label(self) -> &'static str {
        match self {
            StreamEnd::Hub(EndReason::Slow) => "slow",
            StreamEnd::Hub(EndReason::Shutdown) => "shutdown",
            StreamEnd::Hub(EndReason::Disconnected) => "disconnected",
            StreamEnd::Hub(EndReason::Dropped) => "dropped",
            StreamEnd::Hub(EndReason::Expired) => "expired",
            StreamEnd::Hub(EndReason::Revoked) => "revoked",
            StreamEnd::ClientGone => "client_gone",
            StreamEnd::WriteDeadline => "write_deadline",
            StreamEnd::UnexpectedInput => "unexpected_input",
        }
    }

    /// Counts a stream ended this way. Once per stream, at its end: the key is looked up in
    /// the recorder here, which is fine off the delivery path.
    #[cfg_attr(not(feature = "metrics"), allow(clippy::unused_self))]
    pub(crate) fn count(self) {
        #[cfg(feature = "metrics")]
        metrics::counter!(STREAMS_ENDED, "reason" => self.label()).increment(1);
    }
}

/// What a writer notes of a batch before writing it, to record once the write completes.
#[cfg(any(feature = "server", feature = "axum", feature = "hyper"))]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    /// Frames in the batch.
    #[cfg(feature = "metrics")]
    frames: usize,
    /// Bytes in the batch.
    #[cfg(feature = "metrics")]
    bytes: usize,
    /// The sequence number of its oldest event, when the batch knows it (a run of a topic's
    /// ring).
    #[cfg(feature = "metrics")]
    first_seq: Option<u64>,
}

#[cfg(any(feature = "server", feature = "axum", feature = "hyper"))]
impl Sample {
    /// Notes `batch`'s size and oldest event, before any of it is written. Costs a length sum
    /// the batch already keeps and one relaxed load.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn of(batch: &crate::engine::batch::Batch) -> Sample {
        #[cfg(feature = "metrics")]
        {
            use bytes::Buf;
            Sample { frames: batch.len(), bytes: batch.remaining(), first_seq: batch.first_seq() }
        }
        #[cfg(not(feature = "metrics"))]
        Sample {}
    }
}

/// Describes, to the installed `metrics` recorder, every metric the crate records: help text
/// and unit. Call it once after installing a recorder (an exporter then prints `# HELP`).
///
/// The metrics (all names begin with `ssehub_`):
///
/// | name | kind | what |
/// |---|---|---|
/// | `ssehub_events_published_total` | counter | events accepted by publish, broadcast and send_to |
/// | `ssehub_frames_delivered_total` | counter | frames queued to subscribers |
/// | `ssehub_frames_dropped_total` | counter | frames lost by full queues |
/// | `ssehub_frames_conflated_total` | counter | frames replaced by newer ones with their key |
/// | `ssehub_slow_disconnects_total` | counter | subscribers dropped for being slow |
/// | `ssehub_heartbeats_total` | counter | keep-alive comments queued |
/// | `ssehub_session_hijacks_total` | counter | session tokens presented by another principal |
/// | `ssehub_producer_panics_total` | counter | producers that panicked |
/// | `ssehub_resolver_panics_total` | counter | request resolvers that panicked |
/// | `ssehub_state_evictions_total` | counter | keys evicted from a topic's keyed state at its bound |
/// | `ssehub_snapshots_total` | counter | subscriptions that started with a snapshot of the keyed state |
/// | `ssehub_tier_ticks_total` | counter | ticks of rate tiers that delivered at least one value |
/// | `ssehub_tier_saved_total` | counter | deliveries rate tiers saved (a value replaced before its tick, once per subscriber of the tier) |
/// | `ssehub_state_topics_dropped_total` | counter | topics whose keyed state was dropped at the hub's bound on the topics holding state |
/// | `ssehub_connections_refused_total{reason}` | counter | connections refused at accept (`rate`, `per_ip`), or whose TLS handshake failed (`tls_handshake`) or did not finish within the head timeout (`tls_handshake_timeout`) |
/// | `ssehub_streams_ended_total{reason}` | counter | streams ended: `slow`, `shutdown`, `disconnected`, `dropped`, `expired` (the token's `exp`), `revoked` (`Hub::revoke`), `client_gone`, `write_deadline`, `unexpected_input` |
/// | `ssehub_subscribers` | gauge | live subscriptions |
/// | `ssehub_topics` | gauge | live topics |
/// | `ssehub_slowest_subscriber_lag_events` | gauge | events the slowest subscriber has yet to take, on the heartbeat tick |
/// | `ssehub_delivery_latency_seconds` | histogram | publish to completed write, per batch, for its oldest event |
/// | `ssehub_write_batch_frames` | histogram | frames per write |
/// | `ssehub_write_batch_bytes` | histogram | bytes per write |
/// | `ssehub_backplane_*` | gauges, counters | the broker link, with `redis` or `nats` |
///
/// The histograms and the lag gauge are registered when the hub is built: install the
/// recorder first (a hub built with none installed skips the clock reads they need). The latency is sampled for batches read straight from a topic's ring (a
/// subscriber to one topic, the usual case); batches put together from a queue (`Conflate`,
/// several topics, a replay) and batches whose oldest event is more than 4,096 publishes old
/// record their size but no latency. The native listener records at the completed write; the
/// axum and hyper adapters when the batch is handed to hyper, which writes it in the same
/// poll unless the socket is full.
///
/// # Examples
///
/// ```
/// let recorder = metrics_util::debugging::DebuggingRecorder::new();
/// metrics::with_local_recorder(&recorder, ssehub::describe_metrics);
/// ```
#[cfg(feature = "metrics")]
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    let counters: [(&'static str, &'static str); 16] = [
        ("ssehub_events_published_total", "Events accepted by publish, broadcast and send_to."),
        ("ssehub_frames_delivered_total", "Frames queued to subscribers."),
        ("ssehub_frames_dropped_total", "Frames lost by full queues."),
        ("ssehub_frames_conflated_total", "Frames replaced by newer ones with their key."),
        ("ssehub_slow_disconnects_total", "Subscribers dropped for being slow."),
        ("ssehub_heartbeats_total", "Keep-alive comments queued to idle subscribers."),
        ("ssehub_session_hijacks_total", "Session tokens presented by another principal."),
        ("ssehub_producer_panics_total", "Producers (or their stop callbacks) that panicked."),
        ("ssehub_resolver_panics_total", "Request resolvers that panicked (answered 500)."),
        ("ssehub_state_evictions_total", "Keys evicted from a topic's keyed state at its bound."),
        (
            "ssehub_snapshots_total",
            "Subscriptions that started with a snapshot of the keyed state.",
        ),
        ("ssehub_tier_ticks_total", "Ticks of rate tiers that delivered at least one value."),
        (
            "ssehub_tier_saved_total",
            "Deliveries rate tiers saved: values replaced before their tick, per subscriber.",
        ),
        (
            "ssehub_state_topics_dropped_total",
            "Topics whose keyed state was dropped at the hub's bound on topics holding state.",
        ),
        ("ssehub_connections_refused_total", "Connections refused at accept, by reason."),
        (STREAMS_ENDED, "Streams ended, by reason."),
    ];
    for (name, help) in counters {
        describe_counter!(name, Unit::Count, help);
    }
    describe_gauge!("ssehub_subscribers", Unit::Count, "Live subscriptions.");
    describe_gauge!("ssehub_topics", Unit::Count, "Live topics.");
    describe_gauge!(
        SLOWEST_LAG,
        Unit::Count,
        "Events the slowest subscriber has yet to take (each ring counted up to its bound), \
         sampled on the heartbeat tick."
    );
    describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "From publish to the completed write of the batch holding the event, per batch, for \
         its oldest event."
    );
    describe_histogram!(BATCH_FRAMES, Unit::Count, "Frames per write.");
    describe_histogram!(BATCH_BYTES, Unit::Bytes, "Bytes per write.");
    describe_gauge!("ssehub_backplane_connected", "1 while the broker subscription is up.");
    describe_gauge!(
        "ssehub_backplane_lag",
        Unit::Count,
        "Events the broker has that this node has not delivered."
    );
    describe_counter!(
        "ssehub_backplane_reconnects_total",
        Unit::Count,
        "Broker subscriptions lost and made again."
    );
    describe_counter!(
        "ssehub_backplane_gaps_total",
        Unit::Count,
        "Times events were missed and streams ended to resume."
    );
}

/// The writers' metrics, registered once with the recorder installed when the hub is built, so
/// a batch records through its handles without looking its keys up (a lookup takes a lock in
/// most recorders).
#[cfg(feature = "metrics")]
#[derive(Debug)]
// Without a writer (no listener or adapter feature) only the lag gauge and stamps are used.
#[cfg_attr(not(any(feature = "server", feature = "axum", feature = "hyper")), allow(dead_code))]
struct Writes {
    /// See [`LATENCY`].
    latency: metrics::Histogram,
    /// See [`BATCH_FRAMES`].
    frames: metrics::Histogram,
    /// See [`BATCH_BYTES`].
    bytes: metrics::Histogram,
    /// See [`SLOWEST_LAG`].
    lag: metrics::Gauge,
    /// When each recent event entered the pipeline.
    stamps: Stamps,
    /// Whether a recorder was installed when the hub was built. Without one the handles above
    /// do nothing, and the clock reads that feed them (one per publish, one per batch) are
    /// skipped too.
    recording: bool,
}

#[cfg(feature = "metrics")]
impl Default for Writes {
    fn default() -> Writes {
        Writes {
            latency: metrics::histogram!(LATENCY),
            frames: metrics::histogram!(BATCH_FRAMES),
            bytes: metrics::histogram!(BATCH_BYTES),
            lag: metrics::gauge!(SLOWEST_LAG),
            stamps: Stamps::default(),
            // The facade's stand-in when nothing is installed is its zero-sized no-op
            // recorder; every recorder that keeps metrics has state (a zero-sized one that
            // forwards to a static would lose the write histograms, and only those).
            recording: metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0),
        }
    }
}

/// Slots in [`Stamps`] (a power of two): an event more publishes old than this has lost its
/// stamp.
#[cfg(feature = "metrics")]
const STAMP_SLOTS: usize = 4096;
/// `log2(STAMP_SLOTS)`.
#[cfg(feature = "metrics")]
const SLOT_BITS: u32 = STAMP_SLOTS.trailing_zeros();
/// Bits of a stamp holding the time, in microseconds since the hub was built (wrapping every
/// 12.7 days; ages are taken modulo that, so only an event older than it would be misread).
#[cfg(feature = "metrics")]
const TIME_BITS: u32 = 40;
/// The time bits of a stamp.
#[cfg(feature = "metrics")]
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// When each of the last [`STAMP_SLOTS`] events entered the pipeline: slot `seq % STAMP_SLOTS`
/// holds, in one word, the event's time and the rest of its sequence number (its tag), so a
/// reader sees either its event's stamp or one it can tell is not (a later event's, or none).
/// Written once per publish under the sequencer, read once per written batch; 32 KiB per hub.
#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Stamps {
    /// Time zero.
    origin: Instant,
    /// The stamps: tag in the high 24 bits, microseconds since `origin` in the low 40.
    slots: Box<[AtomicU64]>,
}

#[cfg(feature = "metrics")]
impl Default for Stamps {
    fn default() -> Stamps {
        Stamps {
            origin: Instant::now(),
            slots: (0..STAMP_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

#[cfg(feature = "metrics")]
impl Stamps {
    /// The slot and the tag of `seq`. The tag is never 0 for a real event (numbers start at 1
    /// and a slot's tag is `seq / STAMP_SLOTS + 1`), so an unwritten slot matches nothing.
    fn place(seq: u64) -> (usize, u64) {
        let slot = (seq as usize) & (STAMP_SLOTS - 1);
        let tag = ((seq >> SLOT_BITS) + 1) & ((1 << (64 - TIME_BITS)) - 1);
        (slot, tag)
    }

    /// Microseconds since `origin`, wrapped to the time bits.
    fn micros(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.origin).as_micros() as u64) & TIME_MASK
    }

    /// Stamps event `seq` with `at`.
    fn stamp(&self, seq: u64, at: Instant) {
        let (slot, tag) = Stamps::place(seq);
        // Relaxed: the word is self-describing (its tag says whose stamp it is), so a reader
        // that sees an older value misses one sample rather than misreading one. In practice
        // the ring's release of the entry, stored after this, orders it for the reader.
        self.slots[slot].store((tag << TIME_BITS) | self.micros(at), Ordering::Relaxed);
    }

    /// How long ago event `seq` entered the pipeline, if its stamp is still there.
    #[cfg_attr(not(any(feature = "server", feature = "axum", feature = "hyper")), allow(dead_code))]
    fn age(&self, seq: u64) -> Option<Duration> {
        let (slot, tag) = Stamps::place(seq);
        // Relaxed: see `stamp`.
        let word = self.slots[slot].load(Ordering::Relaxed);
        if word >> TIME_BITS != tag {
            return None;
        }
        let now = self.micros(Instant::now());
        Some(Duration::from_micros(now.wrapping_sub(word & TIME_MASK) & TIME_MASK))
    }
}

#[cfg(all(test, feature = "metrics", not(ssehub_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_read_back_only_for_its_own_event() {
        // Time zero a second ago, so a stamp can be 30 ms old.
        let origin = Instant::now() - Duration::from_secs(1);
        let stamps = Stamps { origin, ..Stamps::default() };
        assert_eq!(stamps.age(1), None, "nothing stamped yet");
        let at = Instant::now() - Duration::from_millis(30);
        stamps.stamp(7, at);
        let age = stamps.age(7).expect("its stamp");
        assert!(age >= Duration::from_millis(30) && age < Duration::from_secs(30), "{age:?}");
        // The same slot, a later event: the earlier one's stamp is gone, not misread.
        stamps.stamp(7 + STAMP_SLOTS as u64, Instant::now());
        assert_eq!(stamps.age(7), None);
        assert!(stamps.age(7 + STAMP_SLOTS as u64).is_some());
    }
}
