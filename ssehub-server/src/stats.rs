//! `GET /stats` (JSON) and `GET /metrics` (Prometheus text), both rendered from
//! `Hub::stats()`, plus the rates the server computes by sampling it.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
        "events_per_second": round2(rate.events),
        "frames_per_second": round2(rate.frames),
        "uptime_seconds": round2(rates.uptime().as_secs_f64()),
        "demo": demo,
        "top_topics": topics,
    })
}

/// The text of `GET /metrics`, in the Prometheus text exposition format 0.0.4.
pub fn prometheus(hub: &Hub, rates: &Rates, top: usize) -> String {
    let stats = hub.stats();
    let rate = rates.per_second(&stats);
    let mut out = String::with_capacity(2048);
    let gauges: [(&str, &str, f64); 5] = [
        ("ssehub_subscribers", "Live subscriptions (open streams).", stats.subscribers as f64),
        ("ssehub_topics", "Topics with at least one subscriber.", stats.topics as f64),
        ("ssehub_events_per_second", "Events published per second, recent.", rate.events),
        ("ssehub_frames_per_second", "Frames delivered per second, recent.", rate.frames),
        (
            "ssehub_uptime_seconds",
            "Seconds since the server started.",
            rates.uptime().as_secs_f64(),
        ),
    ];
    for (name, help, value) in gauges {
        metric(&mut out, name, help, "gauge", &[(None, value)]);
    }
    let counters: [(&str, &str, u64); 6] = [
        (
            "ssehub_events_published_total",
            "Events accepted for publishing.",
            stats.events_published,
        ),
        ("ssehub_frames_delivered_total", "Frames queued to subscribers.", stats.frames_delivered),
        ("ssehub_frames_dropped_total", "Frames lost by full queues.", stats.frames_dropped),
        ("ssehub_frames_conflated_total", "Frames replaced by newer ones.", stats.frames_conflated),
        (
            "ssehub_slow_disconnects_total",
            "Subscribers ended for being slow.",
            stats.slow_disconnects,
        ),
        ("ssehub_heartbeats_total", "Keep-alive comments sent.", stats.heartbeats),
    ];
    for (name, help, value) in counters {
        metric(&mut out, name, help, "counter", &[(None, value as f64)]);
    }
    let topics: Vec<(Option<String>, f64)> = top_topics(hub, top)
        .into_iter()
        .map(|(topic, n)| (Some(format!("topic=\"{}\"", escape_label(&topic))), n as f64))
        .collect();
    metric(
        &mut out,
        "ssehub_topic_subscribers",
        "Subscribers per topic, for the topics with the most.",
        "gauge",
        &topics,
    );
    out
}

/// Writes one metric family.
fn metric(out: &mut String, name: &str, help: &str, kind: &str, samples: &[(Option<String>, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        match labels {
            Some(labels) => {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
            None => {
                let _ = writeln!(out, "{name} {value}");
            }
        }
    }
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Two decimals are plenty for a dashboard.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
