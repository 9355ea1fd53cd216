//! With the `metrics` feature, the hub's counters and gauges go through the `metrics` facade.
#![cfg(feature = "metrics")]

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use ssehub::{Event, Hub, SlowPolicy, Subscribe};

#[test]
fn counters_and_gauges_reach_the_recorder() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let hub = Hub::builder().with_heartbeat(None).build();
        let _a = hub.subscribe("t").unwrap();
        let _slow = hub
            .subscribe(
                Subscribe::from("t").with_capacity(1).with_slow_policy(SlowPolicy::Disconnect),
            )
            .unwrap();
        let mut lag = hub
            .subscribe(
                Subscribe::from("t").with_capacity(1).with_slow_policy(SlowPolicy::DropOldest),
            )
            .unwrap();
        hub.publish("t", Event::new("1")).unwrap();
        hub.publish("t", Event::new("2")).unwrap();
        // The lagging subscriber's loss is counted when its stream learns of it.
        assert_eq!(lag.try_recv().unwrap().map(|b| b.lagged()), Some(1));
    });
    let values: std::collections::HashMap<String, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key.key().name().to_string(), value))
        .collect();
    let counter = |name: &str| match values.get(name) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(counter("ssehub_events_published_total"), 2);
    // 3 + (the fast one, the lagging one) = 5
    assert_eq!(counter("ssehub_frames_delivered_total"), 5);
    assert_eq!(counter("ssehub_frames_dropped_total"), 1);
    assert_eq!(counter("ssehub_slow_disconnects_total"), 1);
    assert!(matches!(values.get("ssehub_subscribers"), Some(DebugValue::Gauge(_))));
    assert!(matches!(values.get("ssehub_topics"), Some(DebugValue::Gauge(_))));
}
