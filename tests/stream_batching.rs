//! The consumer side: one batch per wake-up, woken once per burst, unregistered on drop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Buf;
use futures_core::Stream;
use ssehub::{Event, Hub, Subscribe, Subscription};

struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn poll(sub: &mut Subscription, waker: &Waker) -> Poll<Option<ssehub::Batch>> {
    std::pin::Pin::new(sub).poll_next(&mut Context::from_waker(waker))
}

#[test]
fn a_burst_wakes_the_consumer_once_and_arrives_in_one_batch() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let mut sub = hub.subscribe("t").unwrap();
    let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let waker = Waker::from(counter.clone());
    assert!(poll(&mut sub, &waker).is_pending());
    for n in 0..50 {
        hub.publish("t", Event::new(n.to_string())).unwrap();
    }
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    match poll(&mut sub, &waker) {
        Poll::Ready(Some(batch)) => assert_eq!(batch.len(), 50),
        other => panic!("expected a batch, got {other:?}"),
    }
}

#[test]
fn batches_are_capped_in_frames_and_bytes() {
    let hub = Hub::builder().with_heartbeat(None).with_max_batch(4, 1 << 20).build();
    let mut sub = hub.subscribe("t").unwrap();
    for n in 0..10 {
        hub.publish("t", Event::new(n.to_string())).unwrap();
    }
    let sizes: Vec<usize> =
        std::iter::from_fn(|| sub.try_recv().unwrap()).map(|b| b.len()).collect();
    assert_eq!(sizes, [4, 4, 2]);

    let hub = Hub::builder().with_heartbeat(None).with_max_batch(64, 100).build();
    let mut sub = hub.subscribe("t").unwrap();
    for _ in 0..3 {
        hub.publish("t", Event::new("x".repeat(60))).unwrap();
    }
    // One 67-byte frame fits; two do not; a single frame over the cap still goes alone.
    let sizes: Vec<usize> =
        std::iter::from_fn(|| sub.try_recv().unwrap()).map(|b| b.len()).collect();
    assert_eq!(sizes, [1, 1, 1]);
}

#[test]
fn a_batch_is_one_vectored_write_over_the_shared_frames() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let mut sub = hub.subscribe("t").unwrap();
    for n in 0..3 {
        hub.publish("t", Event::new(n.to_string())).unwrap();
    }
    let mut batch = sub.try_recv().unwrap().unwrap();
    let mut slices = [std::io::IoSlice::new(&[]); 8];
    assert_eq!(batch.chunks_vectored(&mut slices), 3);
    assert_eq!(batch.remaining(), 27);
    // A partial write resumes mid-frame.
    batch.advance(9);
    assert_eq!(batch.chunk(), b"data: 1\n\n");
    batch.advance(3);
    assert_eq!(batch.chunk(), b"a: 1\n\n");
    let mut rest = Vec::new();
    while batch.has_remaining() {
        let chunk = batch.chunk().to_vec();
        batch.advance(chunk.len());
        rest.extend(chunk);
    }
    assert_eq!(rest, b"a: 1\n\ndata: 2\n\n");
}

#[test]
fn the_connected_event_comes_first_and_carries_no_id() {
    let hub = Hub::builder().with_heartbeat(None).with_connected_event(true).build();
    let mut sub = hub.subscribe("t").unwrap();
    hub.publish("t", Event::new("x").with_id("1")).unwrap();
    let frames: Vec<_> = sub.try_recv().unwrap().unwrap().into_iter().collect();
    assert_eq!(
        frames[0],
        format!("event: connected\ndata: {{\"id\":{}}}\n\n", sub.id()).as_bytes()
    );
    assert!(!frames[0].windows(3).any(|w| w == b"id:"));
    assert_eq!(frames[1], b"id: 1\ndata: x\n\n".as_slice());
    let mut quiet = hub.subscribe(Subscribe::from("t").with_connected_event(false)).unwrap();
    assert!(quiet.try_recv().unwrap().is_none());
}

#[test]
fn dropping_a_subscription_unregisters_it() {
    let hub = Hub::builder().with_heartbeat(None).build();
    let sub = hub.subscribe(Subscribe::new().with_topic("t").with_pattern("u:*")).unwrap();
    assert_eq!(hub.subscriber_count(), 1);
    drop(sub);
    assert_eq!(hub.subscriber_count(), 0);
    assert_eq!(hub.publish("t", Event::new("x")).unwrap().receivers(), 0);
    assert_eq!(hub.publish("u:1", Event::new("x")).unwrap().receivers(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_task_receives_everything_published_from_another_thread() {
    use futures_util::StreamExt;
    let hub = Hub::builder().with_heartbeat(None).with_capacity(100_000).build();
    let mut sub = hub.subscribe("t").unwrap();
    let publisher = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            for n in 0..20_000u32 {
                hub.publish("t", Event::new(n.to_string())).unwrap();
            }
            hub.shutdown();
        })
    };
    let mut expected = 0u32;
    let mut batches = 0;
    while let Some(batch) = sub.next().await {
        batches += 1;
        for frame in batch {
            assert_eq!(frame, format!("data: {expected}\n\n").as_bytes());
            expected += 1;
        }
    }
    publisher.join().unwrap();
    assert_eq!(expected, 20_000);
    assert!(batches <= 20_000);
}
