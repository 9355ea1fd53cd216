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

// ---- over real TCP, through the native listener, with a process-wide recorder ----------------

mod tcp {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Mutex, MutexGuard, OnceLock};
    use std::time::Duration;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use ssehub::server::Server;
    use ssehub::{Endpoint, Event, Hub, SlowPolicy};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    const WAIT: Duration = Duration::from_secs(10);

    /// The process's debugging recorder (the listener's tasks run on other threads, where a
    /// local recorder is not seen), and a lock: a snapshot drains what it reads, so the tests
    /// that use it take turns.
    fn recorder() -> (MutexGuard<'static, Snapshotter>, Seen) {
        static SNAPSHOTTER: OnceLock<Mutex<Snapshotter>> = OnceLock::new();
        let snapshotter = SNAPSHOTTER.get_or_init(|| {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            recorder.install().expect("the only recorder");
            Mutex::new(snapshotter)
        });
        let guard = snapshotter.lock().unwrap_or_else(|e| e.into_inner());
        // Whatever an earlier test left is drained here.
        let _ = guard.snapshot();
        (guard, Seen::default())
    }

    /// What the recorder has seen since the test began, accumulated across snapshots: counters
    /// summed, histogram samples appended, gauges' last value.
    #[derive(Debug, Default)]
    struct Seen {
        counters: HashMap<String, u64>,
        gauges: HashMap<String, f64>,
        histograms: HashMap<String, Vec<f64>>,
    }

    impl Seen {
        fn take(&mut self, snapshotter: &Snapshotter) {
            for (key, _, _, value) in snapshotter.snapshot().into_vec() {
                let key = key.key();
                let mut name = key.name().to_string();
                for label in key.labels() {
                    name.push_str(&format!("{{{}={}}}", label.key(), label.value()));
                }
                match value {
                    DebugValue::Counter(n) => *self.counters.entry(name).or_default() += n,
                    DebugValue::Gauge(x) => {
                        self.gauges.insert(name, x.into_inner());
                    }
                    DebugValue::Histogram(xs) => self
                        .histograms
                        .entry(name)
                        .or_default()
                        .extend(xs.into_iter().map(|x| x.into_inner())),
                }
            }
        }

        fn counter(&self, name: &str) -> u64 {
            self.counters.get(name).copied().unwrap_or(0)
        }

        fn histogram(&self, name: &str) -> &[f64] {
            self.histograms.get(name).map_or(&[], Vec::as_slice)
        }

        /// Takes snapshots until `check` holds (bounded).
        async fn until(
            &mut self,
            snapshotter: &Snapshotter,
            what: &str,
            check: impl Fn(&Seen) -> bool,
        ) {
            for _ in 0..2000 {
                self.take(snapshotter);
                if check(self) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("timed out waiting for {what}: {self:?}");
        }
    }

    /// Runs `test` with the recorder to itself, on a runtime of its own that is dropped (with
    /// every stream task, whose ends are counted then) before the next test may take a turn.
    fn with_recorder<F: std::future::Future<Output = ()>>(
        test: impl FnOnce(Snapshotter, Seen) -> F,
    ) {
        let (guard, seen) = recorder();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(test(guard.clone(), seen));
        drop(runtime);
        drop(guard);
    }

    /// Topics from the query; at `/expiring` the subscription expires 100 ms from now,
    /// elsewhere it belongs to the principal `ann`.
    fn principal_or_expiry(
        request: &http::request::Parts,
    ) -> Result<ssehub::Subscribe, ssehub::resolve::Rejection> {
        let subscribe = ssehub::QueryTopics::new().parse(request)?;
        Ok(if request.uri.path() == "/expiring" {
            subscribe.with_expiry(std::time::SystemTime::now() + Duration::from_millis(100))
        } else {
            subscribe.with_principal("ann")
        })
    }

    async fn start<R: ssehub::resolve::Resolver>(server: Server<R>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(server.serve(listener));
        addr
    }

    /// Opens a stream and reads its response head.
    async fn open(addr: SocketAddr, target: &str) -> TcpStream {
        let mut client = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nhost: t\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tokio::time::timeout(WAIT, client.read_exact(&mut byte)).await.unwrap().unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
        client
    }

    /// A client whose 4 KiB receive window closes at once, and that never reads.
    async fn stalled(addr: SocketAddr, target: &str) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nhost: t\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream
    }

    async fn subscribed(hub: &Hub, topic: &str, count: usize) {
        for _ in 0..2000 {
            if hub.topic_subscriber_count(topic) == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{topic} never had {count} subscribers");
    }

    #[test]
    fn a_delivery_records_one_latency_sample_and_its_batch_size() {
        with_recorder(|snapshotter, mut seen| async move {
            // Built after the recorder is installed: the hub registers its histograms then.
            let hub = Hub::builder().with_heartbeat(None).build();
            let addr = start(Server::new(Endpoint::new(hub.clone()))).await;
            let mut client = open(addr, "/?topic=t").await;
            subscribed(&hub, "t", 1).await;
            seen.take(&snapshotter);
            assert!(seen.histogram("ssehub_delivery_latency_seconds").is_empty(), "{seen:?}");

            hub.publish("t", Event::new("hello")).unwrap();
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(WAIT, client.read(&mut buf)).await.unwrap().unwrap();
            assert_eq!(&buf[..n], b"data: hello\n\n");
            // Recorded right after the write returns, which the client may beat.
            seen.until(&snapshotter, "a batch recorded", |s| {
                !s.histogram("ssehub_write_batch_bytes").is_empty()
            })
            .await;
            let latency = seen.histogram("ssehub_delivery_latency_seconds");
            assert_eq!(latency.len(), 1, "{seen:?}");
            assert!(latency[0] > 0.0 && latency[0] < WAIT.as_secs_f64(), "{latency:?}");
            assert_eq!(seen.histogram("ssehub_write_batch_frames"), [1.0]);
            assert_eq!(seen.histogram("ssehub_write_batch_bytes"), [13.0]);
        });
    }

    #[test]
    fn streams_ended_are_counted_by_reason() {
        with_recorder(|snapshotter, mut seen| async move {
            let ended = |reason: &str| format!("ssehub_streams_ended_total{{reason={reason}}}");

            // The client goes away: it closes its end.
            let hub = Hub::builder().with_heartbeat(None).build();
            let addr = start(Server::new(Endpoint::new(hub.clone()))).await;
            let client = open(addr, "/?topic=gone").await;
            subscribed(&hub, "gone", 1).await;
            drop(client);
            seen.until(&snapshotter, "client_gone", |s| s.counter(&ended("client_gone")) == 1)
                .await;

            // Disconnected by the application, then the hub shut down.
            let _a = open(addr, "/?topic=a").await;
            let _b = open(addr, "/?topic=b").await;
            subscribed(&hub, "a", 1).await;
            subscribed(&hub, "b", 1).await;
            assert_eq!(hub.disconnect_topic("a"), 1);
            seen.until(&snapshotter, "disconnected", |s| s.counter(&ended("disconnected")) == 1)
                .await;
            hub.shutdown();
            seen.until(&snapshotter, "shutdown", |s| s.counter(&ended("shutdown")) == 1).await;

            // Revoked by its principal, and ended at its expiry.
            let hub = Hub::builder().with_heartbeat(None).build();
            let endpoint = Endpoint::new(hub.clone()).with_resolver(principal_or_expiry);
            let addr = start(Server::new(endpoint)).await;
            let _revoked = open(addr, "/?topic=r").await;
            subscribed(&hub, "r", 1).await;
            assert_eq!(hub.revoke("ann"), 1);
            seen.until(&snapshotter, "revoked", |s| s.counter(&ended("revoked")) == 1).await;
            let _expiring = open(addr, "/expiring?topic=x").await;
            seen.until(&snapshotter, "expired", |s| s.counter(&ended("expired")) == 1).await;

            // A stalled client with `Disconnect`: dropped as slow by the hub.
            let hub = Hub::builder()
                .with_heartbeat(None)
                .with_capacity(4)
                .with_slow_policy(SlowPolicy::Disconnect)
                .build();
            let server = Server::new(Endpoint::new(hub.clone())).with_send_buffer(4096);
            let addr = start(server).await;
            let _slow = stalled(addr, "/?topic=slow").await;
            subscribed(&hub, "slow", 1).await;
            let payload = "s".repeat(1000);
            for _ in 0..2000 {
                if hub.topic_subscriber_count("slow") == 0 {
                    break;
                }
                let _ = hub.publish("slow", Event::new(payload.clone()));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seen.until(&snapshotter, "slow", |s| s.counter(&ended("slow")) == 1).await;

            // A stalled client with `DropOldest`: the hub keeps it, the write deadline ends it.
            let hub = Hub::builder()
                .with_heartbeat(None)
                .with_capacity(4)
                .with_slow_policy(SlowPolicy::DropOldest)
                .build();
            let endpoint = Endpoint::new(hub.clone());
            let server = Server::new(endpoint.clone())
                .with_send_buffer(4096)
                .with_write_timeout(Duration::from_millis(200));
            let addr = start(server).await;
            let _stuck = stalled(addr, "/?topic=stuck").await;
            subscribed(&hub, "stuck", 1).await;
            for _ in 0..4000 {
                if endpoint.connection_count() == 0 {
                    break;
                }
                let _ = hub.publish("stuck", Event::new(payload.clone()));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seen.until(&snapshotter, "write_deadline", |s| {
                s.counter(&ended("write_deadline")) == 1
            })
            .await;

            // Each stream counted once, under its own reason.
            seen.take(&snapshotter);
            let reasons = [
                "client_gone",
                "disconnected",
                "shutdown",
                "revoked",
                "expired",
                "slow",
                "write_deadline",
            ];
            for reason in reasons {
                assert_eq!(seen.counter(&ended(reason)), 1, "{reason}: {seen:?}");
            }
            let total: u64 = seen
                .counters
                .iter()
                .filter(|(k, _)| k.starts_with("ssehub_streams_ended"))
                .map(|(_, n)| n)
                .sum();
            assert_eq!(total, 7, "{seen:?}");
        });
    }

    #[test]
    fn the_axum_and_hyper_adapters_record_batches_and_ends() {
        with_recorder(|snapshotter, mut seen| async move {
            for adapter in ["axum", "hyper"] {
                let hub = Hub::builder().with_heartbeat(None).build();
                let endpoint = Endpoint::new(hub.clone());
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                if adapter == "axum" {
                    let app = axum::Router::new().route("/events", ssehub::axum::events(endpoint));
                    let listener = ssehub::axum::listener(listener, WAIT);
                    tokio::spawn(async move { axum::serve(listener, app).await });
                } else {
                    tokio::spawn(ssehub::hyper::serve(listener, endpoint));
                }
                let mut client = open(addr, "/events?topic=t").await;
                let _staying = open(addr, "/events?topic=t").await;
                subscribed(&hub, "t", 2).await;
                seen.take(&snapshotter);
                hub.publish("t", Event::new("hello")).unwrap();
                let mut buf = [0u8; 64];
                let n = tokio::time::timeout(WAIT, client.read(&mut buf)).await.unwrap().unwrap();
                assert!(String::from_utf8_lossy(&buf[..n]).contains("data: hello"), "{adapter}");
                seen.until(&snapshotter, "two batches", |s| {
                    s.histogram("ssehub_write_batch_bytes").len() == 2
                })
                .await;
                assert_eq!(seen.histogram("ssehub_write_batch_frames"), [1.0, 1.0], "{adapter}");
                assert_eq!(seen.histogram("ssehub_write_batch_bytes"), [13.0, 13.0], "{adapter}");
                assert_eq!(seen.histogram("ssehub_delivery_latency_seconds").len(), 2, "{adapter}");

                let ended = |reason: &str| format!("ssehub_streams_ended_total{{reason={reason}}}");
                drop(client);
                seen.until(&snapshotter, "client_gone", |s| s.counter(&ended("client_gone")) == 1)
                    .await;
                hub.shutdown();
                seen.until(&snapshotter, "shutdown", |s| s.counter(&ended("shutdown")) == 1).await;
                seen = Seen::default();
            }
        });
    }

    #[test]
    fn the_lag_gauge_follows_a_stalled_reader() {
        with_recorder(|snapshotter, mut seen| async move {
            let hub = Hub::builder().with_heartbeat(Some(Duration::from_millis(20))).build();
            let mut stalled = hub.subscribe("t").unwrap();
            let _keeping_up = hub.subscribe("t").unwrap();
            for n in 0..5 {
                hub.publish("t", Event::new(n.to_string())).unwrap();
            }
            let lag = "ssehub_slowest_subscriber_lag_events";
            seen.until(&snapshotter, "a lag of 5", |s| s.gauges.get(lag) == Some(&5.0)).await;
            // It reads what it was behind by; the next ticks see no one behind.
            let mut read = 0;
            while read < 5 {
                read += stalled.try_recv().unwrap().expect("queued").len();
            }
            seen.gauges.clear();
            seen.until(&snapshotter, "a lag of 0", |s| s.gauges.get(lag) == Some(&0.0)).await;
        });
    }
}
