//! A property test of keyed state and snapshots: random sequences of keyed (and keyless)
//! publishes to three topics, with subscriptions that ask for a snapshot opened between them
//! (exact topics or a pattern), run against the hub and against a model of the documented
//! contract: a snapshot is the latest value of every key of every matched topic (at most
//! `MAX_KEYS` per topic, the key updated longest ago evicted first), in publish order, then
//! every later event of the matched topics once, in order.

use std::collections::BTreeMap;

use proptest::prelude::*;
use ssehub::{Event, Hub, Pattern, StateLimits, Subscribe, Subscription};

const TOPICS: [&str; 3] = ["p:0", "p:1", "q"];
/// Keys per topic: small, so random sequences evict.
const MAX_KEYS: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    /// Publish to `TOPICS[topic]` with key `k{key}`, or none.
    Publish { topic: usize, key: Option<u8> },
    /// Subscribe with a snapshot to `p:*`, or to these topics.
    Subscribe { pattern: bool, topics: Vec<usize> },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..TOPICS.len(), proptest::option::of(0..4u8))
            .prop_map(|(topic, key)| Op::Publish { topic, key }),
        1 => (any::<bool>(), proptest::sample::subsequence(vec![0, 1, 2], 1..=3))
            .prop_map(|(pattern, topics)| Op::Subscribe { pattern, topics }),
    ]
}

/// One published event, as the model knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Published {
    topic: usize,
    key: Option<u8>,
    /// Its id and data: its index in the sequence.
    n: usize,
}

/// The model's state of one topic: key to event, and the order keys were last written in.
#[derive(Debug, Default, Clone)]
struct TopicState {
    values: Vec<Published>,
}

impl TopicState {
    fn put(&mut self, event: Published) {
        self.values.retain(|v| v.key != event.key);
        self.values.push(event);
        while self.values.len() > MAX_KEYS {
            self.values.remove(0);
        }
    }
}

/// What a subscription receives per the contract.
#[derive(Debug, Default)]
struct Expected {
    snapshot: Vec<usize>,
    live: Vec<usize>,
}

fn matches(pattern: bool, topics: &[usize], topic: usize) -> bool {
    if pattern {
        Pattern::new("p:*").is_ok_and(|p| p.matches(TOPICS[topic]))
    } else {
        topics.contains(&topic)
    }
}

/// The frames of a subscription until it would wait: `(snapshot, live)` as event numbers,
/// checking the two snapshot frames.
fn drain(sub: &mut Subscription) -> (Vec<usize>, Vec<usize>) {
    let mut frames = Vec::new();
    while let Ok(Some(batch)) = sub.try_recv() {
        frames.extend(batch.frames().iter().map(|f| String::from_utf8(f.to_vec()).unwrap()));
    }
    let number = |frame: &String| -> usize {
        let id = frame.strip_prefix("id: ").and_then(|r| r.split('\n').next()).unwrap();
        let data = frame.split("data: ").nth(1).and_then(|r| r.split('\n').next()).unwrap();
        assert_eq!(id, data, "ids intact");
        id.parse().unwrap()
    };
    assert!(frames[0].starts_with("event: snapshot\ndata: {\"state\":\"begin\",\"events\":"));
    let end = frames.iter().position(|f| f == "event: snapshot\ndata: {\"state\":\"end\"}\n\n");
    let end = end.expect("the end frame");
    let snapshot = frames[1..end].iter().map(number).collect();
    let live = frames[end + 1..].iter().map(number).collect();
    (snapshot, live)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_snapshot_then_live_is_the_latest_value_per_key_then_every_later_event_once(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        let hub = Hub::builder()
            .with_heartbeat(None)
            .with_capacity(1024)
            .with_state(Some(StateLimits::new().with_max_keys(MAX_KEYS)))
            .build();
        let mut state: Vec<TopicState> = vec![TopicState::default(); TOPICS.len()];
        let mut subs: Vec<(Subscription, bool, Vec<usize>, Expected)> = Vec::new();
        let mut published: Vec<Published> = Vec::new();
        for op in ops {
            match op {
                Op::Publish { topic, key } => {
                    let n = published.len();
                    let mut event = Event::new(n.to_string()).with_id(n.to_string());
                    if let Some(key) = key {
                        event = event.with_key(format!("k{key}"));
                    }
                    hub.publish(TOPICS[topic], event).unwrap();
                    let event = Published { topic, key, n };
                    for (_, pattern, topics, expected) in &mut subs {
                        if matches(*pattern, topics, topic) {
                            expected.live.push(n);
                        }
                    }
                    state[topic].put(event.clone());
                    published.push(event);
                }
                Op::Subscribe { pattern, topics } => {
                    let request = if pattern {
                        Subscribe::new().with_pattern("p:*")
                    } else {
                        Subscribe::new().with_topics(topics.iter().map(|t| TOPICS[*t]))
                    };
                    let sub = hub.subscribe(request.with_snapshot()).unwrap();
                    let mut snapshot: Vec<usize> = (0..TOPICS.len())
                        .filter(|t| matches(pattern, &topics, *t))
                        .flat_map(|t| state[t].values.iter().map(|v| v.n))
                        .collect();
                    snapshot.sort_unstable();
                    subs.push((sub, pattern, topics, Expected { snapshot, live: Vec::new() }));
                }
            }
        }
        for (mut sub, pattern, topics, expected) in subs {
            let (snapshot, live) = drain(&mut sub);
            prop_assert_eq!(&snapshot, &expected.snapshot);
            prop_assert_eq!(&live, &expected.live);
            // Folding the stream per key gives the latest value of every key the publish
            // sequence left (evicted keys aside), and no event arrives twice.
            let mut seen = snapshot.clone();
            seen.extend(&live);
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), seen.len(), "a duplicate");
            let mut folded: BTreeMap<(usize, Option<u8>), usize> = BTreeMap::new();
            for n in &seen {
                let event = &published[*n];
                folded.insert((event.topic, event.key), *n);
            }
            for (topic, kept) in state.iter().enumerate() {
                if !matches(pattern, &topics, topic) {
                    continue;
                }
                for value in &kept.values {
                    prop_assert_eq!(folded.get(&(topic, value.key)), Some(&value.n));
                }
            }
        }
    }
}
