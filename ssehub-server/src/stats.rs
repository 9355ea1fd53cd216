//! `GET /stats` (JSON, from `Hub::stats()`) and `GET /metrics` (Prometheus text, rendered by
//! `metrics-exporter-prometheus` from what the library records), plus the rates the server
//! computes by sampling the counters.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use serde_json::{json, Value};
use ssehub::{Hub, Stats};

/// How far back rates look: long enough to smooth bursts, short enough to feel live.
const WINDOW: Duration = Duration::from_secs(3);

/// How often the sampler reads the counters.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Counter samples, for rates.
#[derive(Debug)]
pub struct Rates {
    /// When the server started.
    started: Instant,
    /// (when, events published, frames delivered), oldest first, spanning about `WINDOW`.
    samples: Mutex<VecDeque<(Instant, u64, u64)>>,
}

/// Rates per second over the last window.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerSecond {
    /// Events published per second.
    pub events: f64,
    /// Frames delivered per second.
    pub frames: f64,
}

impl Rates {
    /// No samples yet.
    pub fn new() -> Rates {
        Rates { started: Instant::now(), samples: Mutex::new(VecDeque::new()) }
    }

    /// Records the counters now.
    pub fn sample(&self, stats: &Stats) {
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((now, stats.events_published, stats.frames_delivered));
        while samples.len() > 2 && now.duration_since(samples[1].0) >= WINDOW {
            samples.pop_front();
        }
    }

    /// The rates between the oldest sample and `stats` (read now).
    pub fn per_second(&self, stats: &Stats) -> PerSecond {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&(at, events, frames)) = samples.front() else { return PerSecond::default() };
        let elapsed = at.elapsed().as_secs_f64();
        if elapsed < 0.2 {
            return PerSecond::default();
        }
        PerSecond {
            events: stats.events_published.saturating_sub(events) as f64 / elapsed,
            frames: stats.frames_delivered.saturating_sub(frames) as f64 / elapsed,
        }
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The `top` topics with the most subscribers, most first (then by name).
pub fn top_topics(hub: &Hub, top: usize) -> Vec<(String, usize)> {
    let mut topics = hub.topics();
    topics.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    topics.truncate(top);
    topics
}

/// The JSON of `GET /stats`.
pub fn json(hub: &Hub, rates: &Rates, top: usize, demo: bool) -> Value {
    let stats = hub.stats();
    let rate = rates.per_second(&stats);
    let topics: Vec<Value> = top_topics(hub, top)
        .into_iter()
        .map(|(topic, subscribers)| json!({ "topic": topic, "subscribers": subscribers }))
        .collect();
    json!({
        "subscribers": stats.subscribers,
        "topics": stats.topics,
        "events_published": stats.events_published,
        "frames_delivered": stats.frames_delivered,
        "frames_dropped": stats.frames_dropped,
        "frames_conflated": stats.frames_conflated,
        "slow_disconnects": stats.slow_disconnects,
        "heartbeats": stats.heartbeats,
        "state_evictions": stats.state_evictions,
        "snapshots": stats.snapshots,
        "state_topics_dropped": stats.state_topics_dropped,
        "events_per_second": round2(rate.events),
        "frames_per_second": round2(rate.frames),
        "uptime_seconds": round2(rates.uptime().as_secs_f64()),
        "demo": demo,
        "top_topics": topics,
    })
}

/// Bucket bounds of `ssehub_delivery_latency_seconds`: 50 µs to 10 s.
const LATENCY_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds of `ssehub_write_batch_frames` (the hub's batch cap is 64 by default).
const FRAME_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Bucket bounds of `ssehub_write_batch_bytes`: 64 B to 1 MiB.
const BYTE_BUCKETS: [f64; 9] =
    [64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262_144.0, 524_288.0, 1_048_576.0];

/// How often histogram samples are folded into their buckets: they wait in a buffer until
/// then (8 bytes each), so this bounds that buffer, whatever the scrape interval.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The process's Prometheus recorder, once installed (`None`: another recorder was installed
/// first, by an application embedding the server).
static EXPORTER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process; later calls do nothing), describes
/// every metric, and starts its upkeep thread. Call it before the hub is built: the hub
/// registers its histograms when it is built.
pub fn install_exporter() {
    EXPORTER.get_or_init(|| {
        let handle = buckets()
            .map_err(|e| e.to_string())
            .and_then(|builder| builder.install_recorder().map_err(|e| e.to_string()));
        match handle {
            Ok(handle) => {
                describe();
                let upkeep = handle.clone();
                // A thread, like the recorder, for the process: not tied to one runtime.
                let spawned = std::thread::Builder::new()
                    .name("ssehub-metrics-upkeep".into())
                    .spawn(move || loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    });
                if let Err(error) = spawned {
                    // Scrapes still fold the samples in; only the buffer between them grows.
                    eprintln!("no metrics upkeep thread: {error}");
                }
                Some(handle)
            }
            Err(error) => {
                eprintln!("GET /metrics is off: cannot install the Prometheus recorder: {error}");
                None
            }
        }
    });
}

/// The exporter's settings: true histograms (with `_bucket` series) for the hub's histograms.
fn buckets() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("ssehub_delivery_latency_seconds".into()),
            &LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full("ssehub_write_batch_frames".into()), &FRAME_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("ssehub_write_batch_bytes".into()), &BYTE_BUCKETS)
}

/// Describes the library's metrics and the server's own.
fn describe() {
    ssehub::describe_metrics();
    describe_gauge!(RATE_EVENTS, "Events published per second over the last 3 s.");
    describe_gauge!(RATE_FRAMES, "Frames delivered per second over the last 3 s.");
    describe_gauge!(UPTIME, Unit::Seconds, "Seconds since the server started.");
    describe_counter!(PUBLISH_ERRORS, Unit::Count, "Publishes the broker did not acknowledge.");
    for (name, help) in [
        ("ssehub_backplane_published_total", "Publishes the broker acknowledged."),
        ("ssehub_backplane_publish_batches_total", "Broker round trips those publishes took."),
        ("ssehub_backplane_publish_busy_total", "Publishes refused with 503: window full."),
        ("ssehub_backplane_ranges_recovered_total", "Missed ranges refetched, streams kept."),
        ("ssehub_backplane_events_recovered_total", "Events delivered in recovered ranges."),
    ] {
        describe_counter!(name, Unit::Count, help);
    }
    // Counters appear at their first increment; these were on `/metrics` from the start
    // before the exporter, and a zero is worth showing (a dashboard's rate starts from it).
    for name in [
        "ssehub_events_published_total",
        "ssehub_frames_delivered_total",
        "ssehub_frames_dropped_total",
        "ssehub_frames_conflated_total",
        "ssehub_slow_disconnects_total",
        "ssehub_heartbeats_total",
        "ssehub_state_evictions_total",
        "ssehub_snapshots_total",
        "ssehub_state_topics_dropped_total",
    ] {
        counter!(name).increment(0);
    }
}

/// `ssehub_events_per_second`: a rate kept for dashboards that read it; Prometheus users take
/// `rate(ssehub_events_published_total[1m])`.
const RATE_EVENTS: &str = "ssehub_events_per_second";
/// `ssehub_frames_per_second`, likewise.
const RATE_FRAMES: &str = "ssehub_frames_per_second";
/// Time since start.
const UPTIME: &str = "ssehub_uptime_seconds";
/// Broker publishes not acknowledged.
const PUBLISH_ERRORS: &str = "ssehub_backplane_publish_errors_total";
/// Subscribers of each of the top topics.
const TOPIC_SUBSCRIBERS: &str = "ssehub_topic_subscribers";

/// The state a scrape reads from elsewhere than the hub: the broker link's, with a backplane.
#[derive(Debug, Clone, Copy)]
pub struct Backplane {
    /// Whether the broker subscription is up.
    pub connected: bool,
    /// Events the broker has that this node has not delivered.
    pub lag: u64,
    /// Broker subscriptions lost and made again.
    pub reconnects: u64,
    /// Times events were missed and streams ended to resume.
    pub gaps: u64,
    /// Publishes the broker did not acknowledge.
    pub publish_errors: u64,
    /// Publishes the broker acknowledged.
    pub published: u64,
    /// Round trips those publishes took (concurrent ones share one).
    pub publish_batches: u64,
    /// Publishes refused at once because the publish window was full (answered 503).
    pub publish_busy: u64,
    /// Missed ranges fetched from the broker's history after a reconnect, streams kept open.
    pub ranges_recovered: u64,
    /// Events delivered in those ranges.
    pub events_recovered: u64,
}

/// The text of `GET /metrics` (the Prometheus text exposition format 0.0.4), or `None` when
/// the recorder is not this server's. Values that are state rather than events are set now,
/// at the scrape: the hub's sizes, the rates, the uptime, the broker link's state; the
/// counters and histograms are the library's, recorded as things happen.
pub fn prometheus(
    hub: &Hub,
    rates: &Rates,
    top: usize,
    backplane: Option<Backplane>,
) -> Option<String> {
    let handle = EXPORTER.get()?.as_ref()?;
    let stats = hub.stats();
    let rate = rates.per_second(&stats);
    gauge!("ssehub_subscribers").set(stats.subscribers as f64);
    gauge!("ssehub_topics").set(stats.topics as f64);
    gauge!(RATE_EVENTS).set(rate.events);
    gauge!(RATE_FRAMES).set(rate.frames);
    gauge!(UPTIME).set(rates.uptime().as_secs_f64());
    if let Some(state) = backplane {
        gauge!("ssehub_backplane_connected").set(if state.connected { 1.0 } else { 0.0 });
        gauge!("ssehub_backplane_lag").set(state.lag as f64);
        counter!("ssehub_backplane_reconnects_total").absolute(state.reconnects);
        counter!("ssehub_backplane_gaps_total").absolute(state.gaps);
        counter!(PUBLISH_ERRORS).absolute(state.publish_errors);
        counter!("ssehub_backplane_published_total").absolute(state.published);
        counter!("ssehub_backplane_publish_batches_total").absolute(state.publish_batches);
        counter!("ssehub_backplane_publish_busy_total").absolute(state.publish_busy);
        counter!("ssehub_backplane_ranges_recovered_total").absolute(state.ranges_recovered);
        counter!("ssehub_backplane_events_recovered_total").absolute(state.events_recovered);
    }
    let mut text = handle.render();
    text.push_str(&top_topics_text(hub, top));
    Some(text)
}

/// `ssehub_topic_subscribers{topic}` for the `top` topics with the most subscribers, through
/// a recorder of its own made for this scrape: a topic that left the top since the last one
/// must not stay behind with its old count, as it would in the process's recorder.
fn top_topics_text(hub: &Hub, top: usize) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe_gauge!(
            TOPIC_SUBSCRIBERS,
            Unit::Count,
            "Subscribers per topic, for the topics with the most."
        );
        for (topic, subscribers) in top_topics(hub, top) {
            gauge!(TOPIC_SUBSCRIBERS, "topic" => topic).set(subscribers as f64);
        }
    });
    handle.render()
}

/// Two decimals are plenty for a dashboard.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
