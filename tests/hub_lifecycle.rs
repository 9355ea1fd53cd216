//! Shutdown, dropping the last handle, and counts returning to zero.

use std::time::Duration;

use futures_util::StreamExt;
use ssehub::{EndReason, Event, Hub, PublishError, Subscribe, SubscribeError};

#[tokio::test]
async fn shutdown_ends_every_stream_after_what_was_queued() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let mut a = hub.subscribe("t").unwrap();
    let mut b = hub.subscribe(Subscribe::new().with_pattern("*")).unwrap();
    hub.publish("t", Event::new("before")).unwrap();
    hub.shutdown_with(Event::new("bye").with_retry(Duration::from_secs(3))).unwrap();
    for sub in [&mut a, &mut b] {
        let batch = sub.next().await.expect("the queued frames");
        let bytes = batch.into_bytes();
        assert_eq!(&bytes[..], b"data: before\n\nretry: 3000\ndata: bye\n\n");
        assert!(sub.next().await.is_none());
        assert_eq!(sub.end_reason(), Some(EndReason::Shutdown));
    }
    // Idempotent; the second goodbye is refused and handed back.
    hub.shutdown();
    assert!(
        matches!(hub.shutdown_with(Event::new("again")), Err(PublishError::Closed(e)) if e.data() == Some("again"))
    );
    match hub.publish("t", Event::new("late")) {
        Err(PublishError::Closed(event)) => assert_eq!(event.data(), Some("late")),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(matches!(hub.broadcast(Event::new("late")), Err(PublishError::Closed(_))));
    assert_eq!(hub.subscribe("t").unwrap_err(), SubscribeError::Closed);
    drop((a, b));
    let stats = hub.stats();
    assert_eq!((stats.subscribers, stats.topics), (0, 0));
}

#[tokio::test]
async fn a_parked_stream_wakes_up_at_shutdown() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let mut sub = hub.subscribe("t").unwrap();
    let reader = tokio::spawn(async move {
        let mut batches = 0;
        while sub.next().await.is_some() {
            batches += 1;
        }
        (batches, sub.end_reason())
    });
    tokio::task::yield_now().await;
    hub.shutdown();
    let (batches, reason) =
        tokio::time::timeout(Duration::from_secs(10), reader).await.unwrap().unwrap();
    assert_eq!((batches, reason), (0, Some(EndReason::Shutdown)));
}

#[test]
fn dropping_the_last_handle_shuts_down() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let mut sub = hub.subscribe("t").unwrap();
    let other = hub.clone();
    drop(hub);
    other.publish("t", Event::new("still open")).unwrap();
    drop(other);
    assert!(sub.try_recv().unwrap().is_some());
    assert_eq!(sub.try_recv().unwrap_err(), EndReason::Shutdown);
}

#[test]
fn counts_return_to_zero_after_churn() {
    let hub = Hub::builder().with_heartbeat(None).build();
    for round in 0..20 {
        let subs: Vec<_> = (0..200)
            .map(|i| {
                hub.subscribe(
                    Subscribe::new()
                        .with_topic(format!("t{}", i % 7))
                        .with_pattern(format!("p{}:*", i % 3)),
                )
                .unwrap()
            })
            .collect();
        hub.publish(&format!("p{}:x", round % 3), Event::new("x")).unwrap();
        assert_eq!(hub.subscriber_count(), 200);
        drop(subs);
        let stats = hub.stats();
        assert_eq!((stats.subscribers, stats.topics), (0, 0), "round {round}");
    }
}

#[test]
fn disconnecting_ends_a_stream_after_its_queue() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let mut a = hub.subscribe("t").unwrap();
    let mut b = hub.subscribe("t").unwrap();
    hub.publish("t", Event::new("1")).unwrap();
    assert_eq!(hub.disconnect_topic("t"), 2);
    assert_eq!(hub.disconnect_topic("t"), 0);
    for sub in [&mut a, &mut b] {
        assert_eq!(sub.try_recv().unwrap().unwrap().len(), 1);
        assert_eq!(sub.try_recv().unwrap_err(), EndReason::Disconnected);
    }
    assert!(!hub.disconnect(a.id()));
}

#[tokio::test(flavor = "current_thread")]
async fn a_paced_shutdown_ends_streams_batch_by_batch_with_jittered_retry() {
    use ssehub::Pacing;
    let hub = Hub::builder().with_heartbeat(None).build();
    let mut subs: Vec<_> = (0..50).map(|_| hub.subscribe("t").unwrap()).collect();
    hub.publish("t", Event::new("last event")).unwrap();
    let pacing = Pacing::new()
        .with_batch(10)
        .with_interval(Duration::from_secs(3600))
        .with_retry(Duration::from_secs(1), Duration::from_secs(2));
    let shutdown = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.shutdown_paced(&pacing).await })
    };
    // On this single-threaded runtime the shutdown task runs to its first pause here.
    tokio::task::yield_now().await;
    assert!(hub.is_closed());
    assert!(matches!(hub.publish("t", Event::new("late")), Err(PublishError::Closed(_))));
    assert_eq!(hub.subscribe("t").unwrap_err(), SubscribeError::Closed);
    let mut retries = Vec::new();
    let mut still_open = 0;
    for sub in &mut subs {
        let batch = sub.try_recv().unwrap().expect("the queued event");
        let text = String::from_utf8(batch.into_bytes().to_vec()).unwrap();
        match text.split_once("retry: ") {
            Some((before, after)) => {
                assert_eq!(before, "data: last event\n\n");
                retries.push(after.trim().parse::<u64>().unwrap());
                assert_eq!(sub.try_recv().unwrap_err(), EndReason::Shutdown);
            }
            None => {
                assert_eq!(text, "data: last event\n\n");
                assert!(sub.try_recv().unwrap().is_none(), "not yet ended");
                still_open += 1;
            }
        }
    }
    // One batch ended; the rest wait for theirs.
    assert_eq!((retries.len(), still_open), (10, 40));
    assert!(retries.iter().all(|ms| (1000..=3000).contains(ms)));
    assert!(retries.iter().any(|ms| *ms != retries[0]), "retry hints are jittered");
    shutdown.abort();
    // A plain shutdown ends the rest at once; a second paced one has nothing to do.
    hub.shutdown();
    assert!(!hub.shutdown_paced(&Pacing::new()).await);
    for sub in &mut subs {
        assert!(matches!(sub.try_recv(), Err(EndReason::Shutdown)));
    }
}
