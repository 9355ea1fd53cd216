//! Models of the shared per-topic rings through the hub (`Shared`): publishers appending
//! and waking parked readers, racing readers that drain, park, merge several rings in sequence
//! order, and fall behind; then models of one ring on its own: publishes racing lock-free
//! reads on a chunk boundary, a trim racing a reader, a reader's last-chunk handoff.

use std::future::poll_fn;
use std::task::{Context, Poll};

use loom::thread;

use bytes::Bytes;

use super::{assert_released, block_on, flag_waker, frame, labels, Outcomes};
use crate::engine::queue::{Limits, Queue, SlowPolicy};
use crate::engine::ring::{Bound, Member, Ring, Taken};
use crate::error::EndReason;
use crate::hub::subscription::Subscription;
use crate::hub::{Config, Shared, Subscribe};
use crate::sync::Arc;
use crate::Event;

/// Engine state with bounds of `capacity` frames under `policy`, no timer, no lag event.
fn shared(capacity: usize, policy: SlowPolicy) -> Arc<Shared> {
    let config =
        Config { capacity, policy, heartbeat: None, lag_event: false, ..Config::default() };
    Arc::new(Shared::new(config))
}

/// Publishes `data` to `topic`.
fn publish(shared: &Arc<Shared>, topic: &str, data: &str) {
    Shared::publish(shared, topic, Event::new(data)).expect("open");
}

/// The data of a frame (`data: x\n\n` is `x`).
fn data(frame: &[u8]) -> String {
    let text = std::str::from_utf8(frame).expect("UTF-8");
    text.trim_end().trim_start_matches("data: ").to_string()
}

/// Waits (parking between polls) until `count` frames have arrived or the stream ends; the
/// frames' data, in order, and the end reason if it ended.
fn wait_for(sub: &mut Subscription, count: usize) -> (Vec<String>, Option<EndReason>) {
    let mut seen = Vec::new();
    let ended = block_on(poll_fn(|cx| loop {
        match sub.poll_batch(Some(cx)) {
            Poll::Ready(Some(batch)) => {
                seen.extend(batch.frames().iter().map(|f| data(f)));
                if seen.len() >= count {
                    return Poll::Ready(None);
                }
            }
            Poll::Ready(None) => return Poll::Ready(sub.end_reason()),
            Poll::Pending => return Poll::Pending,
        }
    }));
    (seen, ended)
}

/// A reader of two topics parked in `block_on` while a publisher sends e1 to one and e2 to the
/// other: it is woken (a lost wake-up is a deadlock loom reports) and gets both, in publish
/// order, although they come from two rings it drains one after the other.
#[test]
fn loom_ring_two_rings_merge_in_publish_order_without_lost_wakeups() {
    loom::model(|| {
        let shared = shared(4, SlowPolicy::Disconnect);
        let mut sub =
            Shared::subscribe(&shared, Subscribe::new().with_topics(["a", "b"])).expect("open");
        let s = shared.clone();
        let publisher = thread::spawn(move || {
            publish(&s, "b", "e1");
            publish(&s, "a", "e2");
        });
        let (seen, ended) = wait_for(&mut sub, 2);
        publisher.join().unwrap();
        assert_eq!((seen, ended), (vec!["e1".to_string(), "e2".to_string()], None));
    });
}

/// A pattern reader parked on the rings it has while a publish creates a topic its pattern
/// matches (a ring it never parked on): it is still woken and gets the event.
#[test]
fn loom_ring_a_new_matching_topic_wakes_a_parked_pattern_reader() {
    loom::model(|| {
        let shared = shared(4, SlowPolicy::Disconnect);
        let mut sub =
            Shared::subscribe(&shared, Subscribe::new().with_pattern("p:*")).expect("open");
        let s = shared.clone();
        let publisher = thread::spawn(move || publish(&s, "p:1", "e1"));
        let (seen, ended) = wait_for(&mut sub, 1);
        publisher.join().unwrap();
        assert_eq!((seen, ended), (vec!["e1".to_string()], None));
    });
}

/// A reader with a bound of one drains while a publisher sends e1 and e2: it either keeps up
/// (gets both) or falls more than one behind and is dropped as slow, found by the publisher's
/// scan or by its own drain, whichever comes first; never both, never a gap, and the slow
/// disconnect is counted exactly when it happened.
#[test]
fn loom_ring_scan_vs_drain_drops_only_a_reader_that_fell_behind() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let shared = shared(1, SlowPolicy::Disconnect);
        let mut sub = Shared::subscribe(&shared, Subscribe::from("t")).expect("open");
        let s = shared.clone();
        let publisher = thread::spawn(move || {
            publish(&s, "t", "e1");
            publish(&s, "t", "e2");
        });
        let mut seen = Vec::new();
        let mut ended = None;
        for _ in 0..2 {
            match sub.try_recv() {
                Ok(Some(batch)) => seen.extend(batch.frames().iter().map(|f| data(f))),
                Ok(None) => {}
                Err(reason) => {
                    ended = Some(reason);
                    break;
                }
            }
        }
        publisher.join().unwrap();
        if ended.is_none() {
            loop {
                match sub.try_recv() {
                    Ok(Some(batch)) => seen.extend(batch.frames().iter().map(|f| data(f))),
                    Ok(None) => break,
                    Err(reason) => {
                        ended = Some(reason);
                        break;
                    }
                }
            }
        }
        let slow = shared.stats().slow_disconnects;
        match ended {
            None => {
                assert_eq!(seen, ["e1", "e2"]);
                assert_eq!(slow, 0);
                OUTCOMES.record("kept up");
            }
            Some(EndReason::Slow) => {
                assert!(seen.is_empty() || seen == ["e1"], "{seen:?}");
                assert_eq!(slow, 1);
                OUTCOMES.record("dropped");
            }
            Some(other) => panic!("ended as {other:?}"),
        }
        drop(sub);
        assert_eq!(shared.stats().subscribers, 0);
    });
    OUTCOMES.assert_reached(&["kept up", "dropped"]);
}

/// Two publishers each send one event to a topic while its reader drains and parks between
/// them: whichever takes the parked list first, the other's take either finds the reader
/// listed again or came before the reader's park, whose lock then shows the reader that event.
/// It gets both and never hangs (this model caught a lock-free "already parked" shortcut).
#[test]
fn loom_ring_a_reader_parks_again_between_two_racing_wakes() {
    loom::model(|| {
        let shared = shared(4, SlowPolicy::Disconnect);
        let mut sub = Shared::subscribe(&shared, Subscribe::from("t")).expect("open");
        let (s1, s2) = (shared.clone(), shared.clone());
        let first = thread::spawn(move || publish(&s1, "t", "e1"));
        let second = thread::spawn(move || publish(&s2, "t", "e2"));
        let (mut seen, ended) = wait_for(&mut sub, 2);
        first.join().unwrap();
        second.join().unwrap();
        seen.sort();
        assert_eq!((seen, ended), (vec!["e1".to_string(), "e2".to_string()], None));
    });
}

/// A parked reader leaves its topic while a publish wakes the parked list: the reader that
/// stays is woken and gets the event, and the one that left is gone from the topic's counts.
#[test]
fn loom_ring_a_leaver_racing_a_wake_leaves_the_others_woken() {
    loom::model(|| {
        let shared = shared(4, SlowPolicy::Disconnect);
        let mut stays = Shared::subscribe(&shared, Subscribe::from("t")).expect("open");
        let mut leaves = Shared::subscribe(&shared, Subscribe::from("t")).expect("open");
        // Park the leaver: its first poll finds nothing and lists it.
        assert!(block_on(poll_fn(|cx| Poll::Ready(leaves.poll_batch(Some(cx)).is_pending()))));
        let leaver = thread::spawn(move || drop(leaves));
        let s = shared.clone();
        let publisher = thread::spawn(move || publish(&s, "t", "e1"));
        let (seen, ended) = wait_for(&mut stays, 1);
        leaver.join().unwrap();
        publisher.join().unwrap();
        assert_eq!((seen, ended), (vec!["e1".to_string()], None));
        assert_eq!(shared.stats().subscribers, 1);
    });
}

/// A one-topic reader parked with one waker polls again with another (its stream moved to
/// another task) while a publish races that second poll: the second poll takes the event, or
/// the publish wakes the second waker (which replaced the first in the ring's parked list).
/// Waking only the replaced waker would be a lost wake-up.
#[test]
fn loom_ring_a_reader_parked_again_with_a_new_waker_is_woken_through_it() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let shared = shared(4, SlowPolicy::Disconnect);
        let mut sub = Shared::subscribe(&shared, Subscribe::from("t")).expect("open");
        let (_, old) = flag_waker();
        let (flag, new) = flag_waker();
        assert!(sub.poll_batch(Some(&mut Context::from_waker(&old))).is_pending());
        let s = shared.clone();
        let publisher = thread::spawn(move || publish(&s, "t", "e1"));
        let second = sub.poll_batch(Some(&mut Context::from_waker(&new)));
        publisher.join().unwrap();
        let seen = match second {
            Poll::Ready(Some(batch)) => {
                OUTCOMES.record("taken");
                labels(batch.frames())
            }
            Poll::Ready(None) => panic!("the stream ended"),
            Poll::Pending => {
                assert!(flag.woken(), "the publish woke the replaced waker only");
                OUTCOMES.record("woken");
                let (seen, ended) = wait_for(&mut sub, 1);
                assert_eq!(ended, None);
                seen.into_iter().map(|d| format!("data: {d}\n\n")).collect()
            }
        };
        assert_eq!(seen, ["data: e1\n\n"]);
    });
    OUTCOMES.assert_reached(&["taken", "woken"]);
}

// Models of one ring on its own (`CHUNK` is 2 under loom, so a few publishes cross a chunk
// boundary): the publisher's writes into write-once slots racing lock-free readers. Every slot
// access goes through loom's cell tracking, so a read not ordered after its slot's write, or a
// chunk's frames dropped while a reader reads them, fails the model.

/// A reader of `ring` with `capacity` and `policy`, starting at the tail.
fn ring_reader(ring: &Ring, capacity: usize, policy: SlowPolicy) -> Arc<Member> {
    let queue = Arc::new(Queue::new(capacity, policy));
    Arc::new(Member::new(1, queue, ring.join(capacity)))
}

/// Everything published, in batches of up to 64.
const ALL_OF_IT: Limits = Limits { frames: 64, bytes: usize::MAX };

/// What a reader at `cursor` with `bound` takes as one batch: its frames' labels (a run of one
/// chunk, or copied out), and what the take reported.
fn take_batch(ring: &Ring, cursor: u64, bound: Bound) -> (Vec<String>, Taken) {
    let mut out = Vec::new();
    let (taken, run) = ring.take_run(cursor, bound, u64::MAX, ALL_OF_IT, &mut out);
    match run {
        Some(run) => {
            assert!(out.is_empty(), "a run and copies at once");
            (labels(run.frames()), taken)
        }
        None => (labels(&out), taken),
    }
}

/// A publisher appends e3 (which starts a new chunk) and e4 while a reader at e2, the last
/// entry of the first chunk, takes one batch: it gets e2 alone (a run), or e2 and e3 (copied
/// out across the boundary), or all three, never an unwritten or torn slot; what it did not
/// take it gets afterwards, with nothing twice and every frame released at the end.
#[test]
fn loom_ring_publish_racing_take_run_on_a_chunk_boundary() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let ring = Arc::new(Ring::new());
        let bound = Bound { capacity: 8, policy: SlowPolicy::Disconnect };
        let (frames, tokens): (Vec<_>, Vec<_>) =
            ["e1", "e2", "e3", "e4"].into_iter().map(frame).unzip();
        ring.push(1, &frames[0]);
        let member = ring_reader(&ring, 8, SlowPolicy::Disconnect);
        ring.push(2, &frames[1]);
        let later: Vec<Bytes> = frames[2..].to_vec();
        drop(frames);
        let publisher = {
            let ring = ring.clone();
            thread::spawn(move || {
                ring.push(3, &later[0]);
                ring.push(4, &later[1]);
            })
        };
        // Let the publisher start: loom then explores preempting it anywhere in its pushes.
        thread::yield_now();
        let (first, taken) = take_batch(&ring, member.cursor(), bound);
        assert!(!taken.overflowed && taken.skipped == 0);
        assert_eq!(first.len(), taken.count);
        member.advance(taken.from + taken.count as u64);
        publisher.join().unwrap();
        let (rest, _) = take_batch(&ring, member.cursor(), bound);
        OUTCOMES.record(first.join(" "));
        let mut all = first;
        all.extend(rest);
        assert_eq!(all, ["e2", "e3", "e4"]);
        drop(ring);
        assert_released(&tokens.iter().collect::<Vec<_>>());
    });
    OUTCOMES.assert_reached(&["e2", "e2 e3", "e2 e3 e4"]);
}

/// A ring holding e1 for one reader with `bound`, and a publisher thread appending e2 and e3
/// to it (which fills the first two-entry chunk and starts the next); the frames' liveness
/// tokens, for `assert_released`.
fn e1_then_a_publisher(
    bound: Bound,
) -> (Arc<Ring>, Arc<Member>, Bound, thread::JoinHandle<()>, Vec<Arc<()>>) {
    let ring = Arc::new(Ring::new());
    let member = ring_reader(&ring, bound.capacity, bound.policy);
    let (frames, tokens): (Vec<_>, Vec<_>) = ["e1", "e2", "e3"].into_iter().map(frame).unzip();
    ring.push(1, &frames[0]);
    let later: Vec<Bytes> = frames[1..].to_vec();
    drop(frames);
    let publisher = {
        let ring = ring.clone();
        thread::spawn(move || {
            ring.push(2, &later[0]);
            ring.push(3, &later[1]);
        })
    };
    (ring, member, bound, publisher, tokens)
}

/// A `DropOldest` reader with a bound of one takes a batch while the publisher appends e2 and
/// e3, which trims the first chunk: the reader's batch never points into freed slots (loom
/// tracks the drop of each slot), and it gets exactly the newest entry at the tail it saw,
/// with the skip counting the entries before it.
#[test]
fn loom_ring_trim_racing_a_reader() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let (ring, member, bound, publisher, tokens) =
            e1_then_a_publisher(Bound { capacity: 1, policy: SlowPolicy::DropOldest });
        thread::yield_now();
        let mut out = Vec::new();
        let (taken, run) = ring.take_run(member.cursor(), bound, u64::MAX, ALL_OF_IT, &mut out);
        let run = run.expect("one entry is one chunk's");
        let got = labels(run.frames());
        let newest = ["e1", "e2", "e3"].iter().position(|l| [*l] == got[..]).expect("one frame");
        assert_eq!((taken.count, taken.skipped), (1, newest as u64));
        publisher.join().unwrap();
        // Still readable after the publisher trimmed its chunk.
        assert_eq!(labels(run.frames()), got);
        OUTCOMES.record(got.join(" "));
        drop(run);
        drop(ring);
        assert_released(&tokens.iter().collect::<Vec<_>>());
    });
    OUTCOMES.assert_reached(&["e1", "e2", "e3"]);
}

/// A reader holds a batch of the last chunk (e1, perhaps e2) while the publisher writes e2 into
/// that chunk and starts the next one with e3: the batch keeps exactly what it took, the
/// chunk is never copied, and the reader then gets the rest in order.
#[test]
fn loom_ring_a_readers_last_chunk_handoff() {
    loom::model(|| {
        let (ring, member, bound, publisher, tokens) =
            e1_then_a_publisher(Bound { capacity: 8, policy: SlowPolicy::Disconnect });
        thread::yield_now();
        let mut out = Vec::new();
        // At most the first chunk's two entries: a run of the chunk the publisher writes.
        let two = Limits { frames: 2, ..ALL_OF_IT };
        let (taken, run) = ring.take_run(member.cursor(), bound, u64::MAX, two, &mut out);
        let run = run.expect("the first chunk's entries");
        let held = labels(run.frames());
        assert!(held == ["e1"] || held == ["e1", "e2"], "{held:?}");
        member.advance(taken.from + taken.count as u64);
        let (rest, _) = take_batch(&ring, member.cursor(), bound);
        publisher.join().unwrap();
        let (last, _) = take_batch(&ring, member.cursor() + rest.len() as u64, bound);
        assert_eq!(labels(run.frames()), held, "the batch changed under its reader");
        let mut all = held;
        all.extend(rest);
        all.extend(last);
        assert_eq!(all, ["e1", "e2", "e3"]);
        drop(run);
        drop(ring);
        assert_released(&tokens.iter().collect::<Vec<_>>());
    });
}
