//! The `ssehub` server's `GET /metrics`, rendered by the Prometheus exporter: valid text
//! exposition, the hub's histograms as true histograms, and streams ended by reason.

#[path = "support/hub_process.rs"]
mod hub_process;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hub_process::*;

/// One metric family of a scrape.
#[derive(Debug, Default)]
struct Family {
    /// `counter`, `gauge`, `histogram`, ...
    kind: String,
    /// Its help text.
    help: String,
    /// Every sample: (series name, labels, value).
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parses the text exposition format 0.0.4 strictly: every sample belongs to a family whose
/// `# HELP` and `# TYPE` came before it; a histogram's samples are its `_bucket`, `_sum` and
/// `_count`. Panics on anything else.
fn parse(text: &str) -> HashMap<String, Family> {
    let mut families: HashMap<String, Family> = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("a HELP with text");
            families.entry(name.to_string()).or_default().help = help.to_string();
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("a TYPE with a kind");
            assert!(["counter", "gauge", "histogram", "summary"].contains(&kind), "{line}");
            families.entry(name.to_string()).or_default().kind = kind.to_string();
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("a series and a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            value => value.parse().unwrap_or_else(|_| panic!("a number in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').expect("closed labels")),
            None => (series, ""),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && name.starts_with("ssehub_"),
            "{line:?}"
        );
        let labels: BTreeMap<String, String> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').expect("label=value");
                let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                (key.to_string(), value.expect("a quoted label value").to_string())
            })
            .collect();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| families.get(*base).is_some_and(|f| f.kind == "histogram"))
            .unwrap_or(name);
        let entry = families.get_mut(family).unwrap_or_else(|| panic!("{name}: no TYPE before"));
        assert!(!entry.kind.is_empty() && !entry.help.is_empty(), "{family}: no HELP or TYPE");
        entry.samples.push((name.to_string(), labels, value));
    }
    families
}

/// Checks `name` is a histogram with rising `le` bounds, cumulative counts, a `+Inf` bucket
/// equal to `_count`, and a `_sum`; returns its count.
fn histogram(families: &HashMap<String, Family>, name: &str) -> f64 {
    let family = families.get(name).unwrap_or_else(|| panic!("no {name} in {families:?}"));
    assert_eq!(family.kind, "histogram", "{name}");
    let series = |suffix: &str| {
        let full = format!("{name}{suffix}");
        family.samples.iter().filter(move |(n, _, _)| *n == full)
    };
    let mut last = (f64::NEG_INFINITY, 0.0);
    for (_, labels, count) in series("_bucket") {
        let le = match labels["le"].as_str() {
            "+Inf" => f64::INFINITY,
            le => le.parse::<f64>().expect("a bound"),
        };
        assert!(le > last.0 && *count >= last.1, "{name}: buckets out of order");
        last = (le, *count);
    }
    assert_eq!(last.0, f64::INFINITY, "{name}: no +Inf bucket");
    let count: Vec<f64> = series("_count").map(|s| s.2).collect();
    assert_eq!(count, [last.1], "{name}: _count is the +Inf bucket");
    assert_eq!(series("_sum").count(), 1, "{name}: one _sum");
    last.1
}

/// The value of the one sample `series` with `labels` (`("", "")` for none).
fn value(families: &HashMap<String, Family>, series: &str, label: (&str, &str)) -> Option<f64> {
    families.values().flat_map(|f| &f.samples).find_map(|(name, labels, value)| {
        let matches = label.0.is_empty() || labels.get(label.0).is_some_and(|v| v == label.1);
        (name == series && matches).then_some(*value)
    })
}

fn scrape(server: &Server) -> HashMap<String, Family> {
    let response = get(server.addr, "/metrics");
    assert_eq!(response.status, 200);
    assert!(response
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    parse(&response.body)
}

#[test]
fn metrics_are_prometheus_text_with_histograms_and_ended_streams_by_reason() {
    let server = Server::start(&["--heartbeat", "0"]);
    let mut stream = Stream::connected(server.addr, "/events?topic=news", &[]);
    let mut closing = Stream::connected(server.addr, "/events?topic=news", &[]);
    let resetting = Stream::connected(server.addr, "/events?topic=news", &[]);
    for n in 0..3 {
        publish(server.addr, "news", &serde_json::json!({ "data": format!("item {n}") }));
    }
    for _ in 0..3 {
        stream.next_message().expect("an event");
        closing.next_message().expect("an event");
    }
    // Two clients go away: one having read everything (a FIN), one with events unread (the
    // kernel answers further writes with a reset).
    drop(closing);
    drop(resetting);
    let deadline = Instant::now() + WAIT;
    let families = loop {
        let families = scrape(&server);
        let gone = value(&families, "ssehub_streams_ended_total", ("reason", "client_gone"));
        if gone == Some(2.0) {
            break families;
        }
        assert!(Instant::now() < deadline, "no client_gone stream counted: {gone:?}");
        std::thread::sleep(Duration::from_millis(20));
    };

    // Each of the 3 streams was written its connected event and 3 events; the 9 events'
    // batches (at most one per event and stream) each record a latency.
    let latency = histogram(&families, "ssehub_delivery_latency_seconds");
    assert!((3.0..=9.0).contains(&latency), "{latency} latency samples");
    let batches = histogram(&families, "ssehub_write_batch_frames");
    assert!(batches >= latency + 3.0, "{batches} batches: the connected events are batches too");
    assert_eq!(histogram(&families, "ssehub_write_batch_bytes"), batches);
    for (series, expected) in [
        ("ssehub_subscribers", 1.0),
        ("ssehub_topics", 1.0),
        ("ssehub_events_published_total", 3.0),
        ("ssehub_frames_delivered_total", 9.0),
        ("ssehub_frames_dropped_total", 0.0),
        ("ssehub_frames_conflated_total", 0.0),
        ("ssehub_slow_disconnects_total", 0.0),
        ("ssehub_heartbeats_total", 0.0),
    ] {
        assert_eq!(value(&families, series, ("", "")), Some(expected), "{series}");
    }
    assert_eq!(value(&families, "ssehub_topic_subscribers", ("topic", "news")), Some(1.0));
    for gauge in ["ssehub_events_per_second", "ssehub_frames_per_second", "ssehub_uptime_seconds"] {
        assert!(value(&families, gauge, ("", "")).is_some_and(|x| x >= 0.0), "{gauge}");
    }
    assert_eq!(families["ssehub_streams_ended_total"].kind, "counter");
    assert!(families["ssehub_delivery_latency_seconds"].help.starts_with("From publish to"));
}
