//! `summarize`: medians of loadgen JSON lines, as markdown tables.
//!
//! `summarize [--baseline LABEL] FILE.jsonl...` (default baseline `floor-epoll`). Scenarios
//! named `e-*` are saturation ladders: per server and round, the highest rate kept up with (at
//! least 95% of the expected deliveries, no loss), then the median over rounds. Records of kind
//! `connect` are connect storms. Everything else is one table row per scenario and server.

use std::collections::BTreeMap;

use serde_json::Value;

/// Median of the values (mean of the middle two for an even count); `None` when empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
}

/// A number at a `/`-separated path of a record.
fn get(record: &Value, path: &str) -> Option<f64> {
    let mut v = record;
    for key in path.split('/') {
        v = v.get(key)?;
    }
    match v {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        v => v.as_f64(),
    }
}

fn text(record: &Value, key: &str) -> String {
    record.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

/// A number for a table: millions as `1.234M`, whole numbers without decimals, others short.
fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 1e6 => format!("{:.3}M", v / 1e6),
        Some(v) if v.abs() >= 1000.0 || v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// Keeps first-seen order of keys.
#[derive(Default)]
struct Groups {
    order: Vec<(String, String)>,
    records: BTreeMap<(String, String), Vec<Value>>,
}

impl Groups {
    fn push(&mut self, key: (String, String), record: Value) {
        if !self.records.contains_key(&key) {
            self.order.push(key.clone());
        }
        self.records.entry(key).or_default().push(record);
    }

    fn median(&self, key: &(String, String), path: &str) -> Option<f64> {
        median(self.records.get(key)?.iter().filter_map(|r| get(r, path)).collect())
    }

    fn max(&self, key: &(String, String), path: &str) -> Option<f64> {
        self.records.get(key)?.iter().filter_map(|r| get(r, path)).reduce(f64::max)
    }
}

fn main() {
    let mut baseline = "floor-epoll".to_string();
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--baseline" => baseline = args.next().unwrap_or_default(),
            "-h" | "--help" => {
                println!("summarize [--baseline LABEL] FILE.jsonl...");
                return;
            }
            _ => files.push(arg),
        }
    }
    let mut runs = Groups::default();
    let mut ladders = Groups::default();
    let mut storms = Groups::default();
    let mut failed = Vec::new();
    for file in &files {
        let content = match std::fs::read_to_string(file) {
            Ok(content) => content,
            Err(e) => {
                eprintln!("summarize: {file}: {e}");
                std::process::exit(1);
            }
        };
        for line in content.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(record) = serde_json::from_str::<Value>(line) else {
                eprintln!("summarize: skipping a line that is not JSON");
                continue;
            };
            let key = (text(&record, "scenario"), text(&record, "label"));
            if record.get("ok") != Some(&Value::Bool(true)) && !key.0.starts_with("e-") {
                failed.push(format!(
                    "{} / {} round {}: {}",
                    key.0,
                    key.1,
                    get(&record, "round").unwrap_or(0.0),
                    text(&record, "error")
                ));
                continue;
            }
            match text(&record, "kind").as_str() {
                "connect" => storms.push(key, record),
                _ if key.0.starts_with("e-") => ladders.push(key, record),
                _ => runs.push(key, record),
            }
        }
    }

    if !runs.order.is_empty() {
        println!("## Runs (medians over rounds; gaps and disconnects: worst round)\n");
        println!(
            "| scenario | server | n | deliveries/s | keep-up | server CPU | ns/delivery | vs {baseline} | \
             p50 µs | p99 µs | p99.9 µs | p99 vs {baseline} | max µs | gaps | disc. | slow dropped | \
             peak RSS MiB | loadgen sat. |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for key in &runs.order {
            let base = (key.0.clone(), baseline.clone());
            let n = runs.records[key].len();
            let saturated = runs.records[key]
                .iter()
                .filter(|r| r.get("loadgen_saturated") == Some(&Value::Bool(true)))
                .count();
            let slow = runs.median(key, "slow").unwrap_or(0.0);
            println!(
                "| {} | {} | {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {saturated}/{n} |",
                key.0,
                key.1,
                fmt(runs.median(key, "deliveries_per_s")),
                fmt(runs.median(key, "keep_up")),
                fmt(runs.median(key, "server_cpu_util")),
                fmt(runs.median(key, "server_cpu_ns_per_delivery")),
                ratio(
                    runs.median(key, "server_cpu_ns_per_delivery"),
                    runs.median(&base, "server_cpu_ns_per_delivery")
                ),
                fmt(runs.median(key, "latency_us/p50")),
                fmt(runs.median(key, "latency_us/p99")),
                fmt(runs.median(key, "latency_us/p999")),
                ratio(runs.median(key, "latency_us/p99"), runs.median(&base, "latency_us/p99")),
                fmt(runs.median(key, "latency_us/max")),
                fmt(runs.max(key, "gaps")),
                fmt(runs.max(key, "disconnects")),
                if slow > 0.0 {
                    format!("{}/{}", fmt(runs.median(key, "slow_dropped")), fmt(Some(slow)))
                } else {
                    "-".into()
                },
                fmt(runs.median(key, "server_rss_peak_kb").map(|kb| kb / 1024.0)),
            );
        }
        println!();
    }

    if !ladders.order.is_empty() {
        println!("## Saturation (highest rate kept up with: >= 95% of expected, no loss)\n");
        println!(
            "| scenario | server | rounds | kept-up deliveries/s (median) | rate ev/s | p99 µs there | \
             ns/delivery there | vs {baseline} | any loadgen saturation |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        let mut best: BTreeMap<(String, String), f64> = BTreeMap::new();
        let mut rows = Vec::new();
        for key in &ladders.order {
            // Per round: the kept-up run with the highest rate.
            let mut per_round: BTreeMap<u64, &Value> = BTreeMap::new();
            for r in &ladders.records[key] {
                if r.get("kept_up") != Some(&Value::Bool(true)) {
                    continue;
                }
                let round = get(r, "round").unwrap_or(0.0) as u64;
                let better = per_round
                    .get(&round)
                    .is_none_or(|b| get(r, "rate").unwrap_or(0.0) > get(b, "rate").unwrap_or(0.0));
                if better {
                    per_round.insert(round, r);
                }
            }
            let tops: Vec<&Value> = per_round.values().copied().collect();
            let pick = |path: &str| median(tops.iter().filter_map(|r| get(r, path)).collect());
            let saturated = ladders.records[key]
                .iter()
                .any(|r| r.get("loadgen_saturated") == Some(&Value::Bool(true)));
            let delivered = pick("deliveries_per_s");
            if let Some(d) = delivered {
                best.insert(key.clone(), d);
            }
            rows.push((
                key.clone(),
                tops.len(),
                delivered,
                pick("rate"),
                pick("latency_us/p99"),
                pick("server_cpu_ns_per_delivery"),
                saturated,
            ));
        }
        for (key, rounds, delivered, rate, p99, ns, saturated) in rows {
            let base = best.get(&(key.0.clone(), baseline.clone())).copied();
            println!(
                "| {} | {} | {rounds} | {} | {} | {} | {} | {} | {saturated} |",
                key.0,
                key.1,
                fmt(delivered),
                fmt(rate),
                fmt(p99),
                fmt(ns),
                ratio(delivered, base)
            );
        }
        println!();
    }

    if !storms.order.is_empty() {
        println!("## Connect storms (medians)\n");
        println!(
            "| scenario | server | n | connections | connect s | connects/s | RSS before MiB | \
             RSS held MiB | bytes per idle connection | RSS after close MiB |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for key in &storms.order {
            let mib = |path| storms.median(key, path).map(|kb| kb / 1024.0);
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                key.0,
                key.1,
                storms.records[key].len(),
                fmt(storms.median(key, "established")),
                fmt(storms.median(key, "connect_s")),
                fmt(storms.median(key, "connects_per_s")),
                fmt(mib("server_rss_before_kb")),
                fmt(mib("server_rss_held_kb")),
                fmt(storms.median(key, "rss_per_conn_bytes")),
                fmt(mib("server_rss_closed_kb")),
            );
        }
        println!();
    }

    if !failed.is_empty() {
        println!("## Failed runs (not in the medians)\n");
        for f in failed {
            println!("- {f}");
        }
    }
}
