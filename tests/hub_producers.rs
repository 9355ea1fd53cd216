//! On-demand producers: one instance per topic while it has subscribers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssehub::parse::{ParsedEvent, Parser};
use ssehub::{Event, Hub, Producer, ProducerError, StopReason, Subscription};

/// Counts live instances: +1 when one starts, -1 when its future is dropped.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn hub() -> Hub {
    Hub::builder().with_heartbeat(None).build()
}

/// Waits (bounded) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn next_events(sub: &mut Subscription) -> Vec<ParsedEvent> {
    let batch = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("a batch in time")
        .expect("open");
    let mut out = Vec::new();
    Parser::new().feed(&batch.into_bytes(), &mut out).unwrap();
    out
}

/// A producer that publishes its topic name every few ms until stopped, counting instances.
fn ticker(live: Arc<AtomicUsize>, stops: Arc<Mutex<Vec<(String, StopReason)>>>) -> Producer {
    Producer::new("tick:*", move |ctx| {
        let live = live.clone();
        async move {
            live.fetch_add(1, Ordering::SeqCst);
            let _guard = Live(live);
            loop {
                if ctx.publish(Event::new(ctx.topic().to_string())).is_err() {
                    return Ok::<(), String>(());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    })
    .with_on_stop(move |topic, reason| {
        stops.lock().unwrap().push((topic.to_string(), reason.clone()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_runs_while_its_topic_has_subscribers() {
    let hub = hub();
    let (live, stops) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
    hub.add_producer(ticker(live.clone(), stops.clone())).unwrap();
    assert_eq!(live.load(Ordering::SeqCst), 0, "nothing runs without subscribers");
    let mut a = hub.subscribe("tick:a").unwrap();
    assert_eq!(next_events(&mut a).await[0].data, "tick:a");
    let b = hub.subscribe("tick:b").unwrap();
    let a2 = hub.subscribe("tick:a").unwrap();
    until("two instances", || live.load(Ordering::SeqCst) == 2).await;
    drop(a);
    drop(a2);
    until("tick:a stopped", || stops.lock().unwrap().len() == 1).await;
    assert_eq!(stops.lock().unwrap()[0], ("tick:a".to_string(), StopReason::Idle));
    assert_eq!(live.load(Ordering::SeqCst), 1);
    // A new subscriber starts it again.
    let mut again = hub.subscribe("tick:a").unwrap();
    assert_eq!(next_events(&mut again).await[0].data, "tick:a");
    hub.shutdown();
    until("all stopped", || live.load(Ordering::SeqCst) == 0).await;
    until("shutdown reported", || {
        stops.lock().unwrap().iter().filter(|(_, r)| *r == StopReason::Shutdown).count() == 2
    })
    .await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_never_runs_two_instances_or_none_while_subscribed() {
    let hub = hub();
    let (live, stops) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
    let peak = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (live, peak) = (live.clone(), peak.clone());
        tokio::spawn(async move {
            for _ in 0..4000 {
                peak.fetch_max(live.load(Ordering::SeqCst), Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    hub.add_producer(ticker(live.clone(), stops).with_linger(Duration::from_millis(1))).unwrap();
    let churners: Vec<_> = (0..2)
        .map(|_| {
            let hub = hub.clone();
            tokio::task::spawn_blocking(move || {
                for _ in 0..300 {
                    let sub = hub.subscribe("tick:x").unwrap();
                    std::thread::yield_now();
                    drop(sub);
                }
            })
        })
        .collect();
    for c in churners {
        c.await.unwrap();
    }
    watcher.await.unwrap();
    assert!(peak.load(Ordering::SeqCst) <= 1, "two instances ran at once");
    // After the churn, a subscriber that stays gets an instance.
    let mut stay = hub.subscribe("tick:x").unwrap();
    assert_eq!(next_events(&mut stay).await[0].data, "tick:x");
    until("one instance", || live.load(Ordering::SeqCst) == 1).await;
}

#[tokio::test]
async fn linger_keeps_a_producer_for_a_quick_reconnect() {
    let hub = hub();
    let starts = Arc::new(AtomicUsize::new(0));
    let counter = starts.clone();
    hub.add_producer(
        Producer::new("warm", move |mut ctx| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                ctx.stopped().await;
                Ok::<(), String>(())
            }
        })
        .with_linger(Duration::from_secs(30)),
    )
    .unwrap();
    let sub = hub.subscribe("warm").unwrap();
    until("started", || starts.load(Ordering::SeqCst) == 1).await;
    drop(sub);
    let _back = hub.subscribe("warm").unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(starts.load(Ordering::SeqCst), 1, "the lingering instance was reused");
}

#[tokio::test]
async fn a_producer_may_stop_itself_and_its_failures_become_error_events() {
    let hub = hub();
    let stops = Arc::new(Mutex::new(Vec::new()));
    let log = stops.clone();
    hub.add_producer(
        Producer::new("job:*", |ctx| async move {
            match ctx.topic() {
                "job:done" => {
                    ctx.publish(Event::new("finished")).map_err(|e| e.to_string())?;
                    Ok(())
                }
                "job:fail" => Err("upstream refused \"quota\"".to_string()),
                _ => panic!("producer bug"),
            }
        })
        .with_on_stop(move |topic, reason| {
            log.lock().unwrap().push((topic.to_string(), reason.clone()))
        }),
    )
    .unwrap();
    let mut done = hub.subscribe("job:done").unwrap();
    assert_eq!(next_events(&mut done).await[0].data, "finished");
    let mut fail = hub.subscribe("job:fail").unwrap();
    let error = &next_events(&mut fail).await[0];
    assert_eq!(error.event, "error");
    assert_eq!(error.data, r#"{"error":"upstream refused \"quota\""}"#);
    let mut boom = hub.subscribe("job:panic").unwrap();
    let error = &next_events(&mut boom).await[0];
    assert_eq!(
        (error.event.as_str(), error.data.as_str()),
        ("error", r#"{"error":"producer panicked"}"#)
    );
    until("three stops", || stops.lock().unwrap().len() == 3).await;
    let mut reasons: Vec<_> = stops.lock().unwrap().clone();
    reasons.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        reasons,
        [
            ("job:done".to_string(), StopReason::Finished),
            ("job:fail".to_string(), StopReason::Failed("upstream refused \"quota\"".into())),
            ("job:panic".to_string(), StopReason::Panicked),
        ]
    );
    assert_eq!(hub.stats().producer_panics, 1);
    // A producer that stopped itself is not restarted while its subscribers remain.
    let _second = hub.subscribe("job:done").unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(stops.lock().unwrap().len(), 3);
    // The hub and other subscribers carry on.
    hub.publish("job:done", Event::new("still here")).unwrap();
    assert_eq!(next_events(&mut done).await[0].data, "still here");
}

#[test]
fn adding_a_producer_needs_a_runtime_and_a_valid_target() {
    let hub = hub();
    let p = || Producer::new("t", |_| async { Ok::<(), String>(()) });
    assert_eq!(hub.add_producer(p()), Err(ProducerError::NoRuntime));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        assert!(matches!(
            hub.add_producer(Producer::new("bad\ntopic", |_| async { Ok::<(), String>(()) })),
            Err(ProducerError::Target(_))
        ));
        assert_eq!(hub.add_producer(p()), Ok(()));
        hub.shutdown();
        assert_eq!(hub.add_producer(p()), Err(ProducerError::Closed));
    });
}

/// A producer that publishes without pause sees its publish fail the moment the hub closes and
/// returns by itself, racing the stop signal: its stop is still reported as `Shutdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_returning_at_shutdown_reports_shutdown() {
    let hub = hub();
    let stops = Arc::new(Mutex::new(Vec::new()));
    let (log, started) = (stops.clone(), Arc::new(AtomicUsize::new(0)));
    let counter = started.clone();
    hub.add_producer(
        Producer::new("busy:*", move |ctx| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                while ctx.publish(Event::new("x")).is_ok() {
                    tokio::task::yield_now().await;
                }
                Ok::<(), String>(())
            }
        })
        .with_on_stop(move |topic, reason| {
            log.lock().unwrap().push((topic.to_string(), reason.clone()))
        }),
    )
    .unwrap();
    let subs: Vec<_> =
        (0..16).map(|i| hub.subscribe(format!("busy:{i}").as_str()).unwrap()).collect();
    until("all started", || started.load(Ordering::SeqCst) == 16).await;
    hub.shutdown();
    until("all stops reported", || stops.lock().unwrap().len() == 16).await;
    let reasons: Vec<_> = stops.lock().unwrap().iter().map(|(_, r)| r.clone()).collect();
    assert!(reasons.iter().all(|r| *r == StopReason::Shutdown), "{reasons:?}");
    drop(subs);
}
