//! A property test of rate tiers: random sequences of keyed and keyless publishes to two
//! topics, with pauses that let the tiers' clock tick between them, read by subscribers at two
//! intervals (one topic, and a pattern over both). For any sequence, what a tier delivers for
//! each key (each topic for keyless events) is a subsequence of what was published for it,
//! ending with its last value, in one order (ids rising), and never more than one value per
//! key per tick.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use ssehub::{Event, Hub, Subscribe, Subscription};

const TOPICS: [&str; 2] = ["t:a", "t:b"];

#[derive(Debug, Clone)]
enum Op {
    /// Publish to `TOPICS[topic]` with key `k{key}`, or none.
    Publish { topic: usize, key: Option<u8> },
    /// Let the clock tick (or not) before the next publish.
    Pause { millis: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..TOPICS.len(), proptest::option::of(0..3u8))
            .prop_map(|(topic, key)| Op::Publish { topic, key }),
        1 => (0..25u64).prop_map(|millis| Op::Pause { millis }),
    ]
}

/// The conflation key of an event: its topic and key.
type Key = (usize, Option<u8>);

/// Reads `sub` until `last` (per key: the last data published) has arrived, or 5 s pass;
/// returns the data received, in order.
fn read_until(
    rt: &tokio::runtime::Runtime,
    sub: &mut Subscription,
    last: &[String],
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got: Vec<String> = Vec::new();
    while !last.iter().all(|l| got.contains(l)) && Instant::now() < deadline {
        let batch = rt
            .block_on(async { tokio::time::timeout(Duration::from_millis(200), sub.recv()).await });
        let Ok(Some(batch)) = batch else { continue };
        for frame in batch.frames() {
            let text = std::str::from_utf8(frame).expect("UTF-8");
            if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                got.push(data.to_string());
            }
        }
    }
    got
}

/// Checks one tier subscriber's output against what was published to the topics it reads.
fn check(got: &[String], published: &[(Key, String)], topics: &[usize], ticks: u64) {
    let mut by_key: BTreeMap<Key, Vec<&String>> = BTreeMap::new();
    for (key, data) in published.iter().filter(|((t, _), _)| topics.contains(t)) {
        by_key.entry(*key).or_default().push(data);
    }
    let key_of = |data: &String| published.iter().find(|(_, d)| d == data).map(|(k, _)| *k);
    let mut out: BTreeMap<Key, Vec<&String>> = BTreeMap::new();
    for data in got {
        let key = key_of(data).unwrap_or_else(|| panic!("{data} was never published"));
        out.entry(key).or_default().push(data);
    }
    // One order: the data are publish indexes.
    let order: Vec<usize> = got.iter().map(|d| d.parse().expect("an index")).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order: {order:?}");
    for (key, values) in &by_key {
        let delivered = out.get(key).cloned().unwrap_or_default();
        let mut at = values.iter();
        for value in &delivered {
            assert!(at.any(|v| v == value), "{key:?}: {value} not in order in {values:?}");
        }
        assert_eq!(delivered.last(), values.last(), "{key:?}: the last value, trailing");
        assert!(
            delivered.len() as u64 <= ticks,
            "{key:?}: {} values in {ticks} ticks",
            delivered.len()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn a_tier_delivers_per_key_a_subsequence_ending_with_the_last_value(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("rt");
        let hub = Hub::builder().with_heartbeat(None).with_capacity(10_000).build();
        let every = |ms| Duration::from_millis(ms);
        let mut one = hub
            .subscribe(Subscribe::new().with_topic(TOPICS[0]).with_interval(every(10)))
            .expect("subscribe");
        let mut both = hub
            .subscribe(Subscribe::new().with_pattern("t:*").with_interval(every(20)))
            .expect("subscribe");
        let mut published: Vec<(Key, String)> = Vec::new();
        for op in ops {
            match op {
                Op::Publish { topic, key } => {
                    let data = published.len().to_string();
                    let mut event = Event::new(data.clone());
                    if let Some(key) = key {
                        event = event.with_key(format!("k{key}"));
                    }
                    hub.publish(TOPICS[topic], event).expect("publish");
                    published.push(((topic, key), data));
                }
                Op::Pause { millis } => std::thread::sleep(every(millis)),
            }
        }
        let last = |topics: &[usize]| -> Vec<String> {
            let mut last: BTreeMap<Key, String> = BTreeMap::new();
            for (key, data) in published.iter().filter(|((t, _), _)| topics.contains(t)) {
                last.insert(*key, data.clone());
            }
            last.into_values().collect()
        };
        let got_one = read_until(&rt, &mut one, &last(&[0]));
        let got_both = read_until(&rt, &mut both, &last(&[0, 1]));
        let ticks = hub.stats().tier_ticks;
        check(&got_one, &published, &[0], ticks);
        check(&got_both, &published, &[0, 1], ticks);
    }
}
