//! Models of the producer lifecycle: the real [`Lifecycle`] (the instance bookkeeping the hub
//! drives from Tokio tasks) driven from loom threads, over the real registry's subscriber
//! counts. Each instance is a loom thread standing in for its supervisor task: it waits until
//! its predecessor is gone, counts itself live (the model fails if two instances of one topic
//! are live at once), waits to be told to stop, counts itself gone, says so, and reports its
//! end, in the order `Instance::supervise` does. The Tokio side (spawning, `select!`, aborting
//! the task and awaiting it) is not modelled here; `tests/hub_producers.rs` covers it.

use loom::sync::{Mutex, Notify};
use loom::thread::{self, JoinHandle};

use super::Outcomes;
use crate::engine::queue::{Queue, SlowPolicy};
use crate::engine::registry::{Registry, Slot};
use crate::services::producers::{subscriber_count, InstanceHandle, Lifecycle, Linger, Membership};
use crate::sync::{Arc, AtomicBool, AtomicUsize, Ordering, SharedStr};
use crate::StopReason;

/// A one-way flag a loom thread can wait for.
struct Signal {
    /// Raised once.
    raised: AtomicBool,
    /// Wakes the one thread that waits for it.
    notify: Notify,
}

impl Signal {
    /// A flag not raised yet.
    fn new() -> Arc<Signal> {
        Arc::new(Signal { raised: AtomicBool::new(false), notify: Notify::new() })
    }

    /// Raises it (again is harmless).
    fn raise(&self) {
        // SeqCst: these stand in for the watch channels, whose ordering is not under test.
        self.raised.store(true, Ordering::SeqCst);
        self.notify.notify();
    }

    /// Waits until it is raised. A wait that never ends is a deadlock, which loom reports.
    fn wait(&self) {
        while !self.raised.load(Ordering::SeqCst) {
            self.notify.wait();
        }
    }
}

/// The model's handle on an instance, in place of the hub's watch channels.
struct Handle {
    /// Raised to tell the instance to stop.
    stop: Arc<Signal>,
    /// Raised once the instance's "future" is gone.
    done: Arc<Signal>,
}

impl InstanceHandle for Handle {
    type Gone = Arc<Signal>;

    fn stop(&self) {
        self.stop.raise();
    }

    fn gone(&self) -> Arc<Signal> {
        self.done.clone()
    }
}

/// A registry, the lifecycle of its topics' instances, and what the instances did.
struct World {
    /// Who subscribes to what.
    registry: Registry,
    /// The code under test.
    lifecycle: Lifecycle<Handle>,
    /// Instances whose future exists right now.
    live: AtomicUsize,
    /// Instances started so far.
    started: AtomicUsize,
    /// The producer's linger setting.
    linger: Linger,
    /// The instances' threads, joined at the end. A model's own bookkeeping, outside the
    /// crate's lock order, so a plain loom mutex.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl World {
    /// Nobody subscribed, nothing running, a producer configured with `linger`.
    fn new(linger: Linger) -> Arc<World> {
        Arc::new(World {
            registry: Registry::new(),
            lifecycle: Lifecycle::default(),
            live: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            linger,
            threads: Mutex::new(Vec::new()),
        })
    }

    /// `topic`'s membership as the hub reads it (never shut down here).
    fn membership(&self, topic: &str) -> Membership {
        Membership { count: subscriber_count(&self.registry, topic), closed: false }
    }

    /// Waits for every instance's thread to end (a deadlock if one is never told to stop);
    /// returns how many were started in all.
    fn join_instances(&self) -> usize {
        let threads =
            std::mem::take(&mut *self.threads.lock().expect("no model thread panics holding it"));
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(self.live.load(Ordering::SeqCst), 0);
        assert_eq!(self.lifecycle.running(), Vec::new(), "an instance outlived its stop");
        self.started.load(Ordering::SeqCst)
    }

    /// Stops every instance (hub shutdown) and waits for them; returns how many were started.
    fn shut_down(&self) -> usize {
        self.lifecycle.stop_all();
        self.join_instances()
    }
}

/// Subscribes a new subscriber `id` to `topic`, then reports it, as `Shared::subscribe`
/// does once the registry's lock is released.
fn subscribe(world: &Arc<World>, id: u64, topic: &SharedStr) -> Arc<Slot> {
    let slot = register(world, id, topic);
    assert_eq!(report(world, topic), None, "a linger timer for a topic with a subscriber");
    slot
}

/// The registry half of [`subscribe`]: subscriber `id` is on `topic`, not reported yet.
fn register(world: &World, id: u64, topic: &SharedStr) -> Arc<Slot> {
    let slot = Arc::new(Slot::new(id, Queue::new(2, SlowPolicy::Disconnect), None));
    let topics = vec![topic.clone()];
    world.registry.subscribe(&slot, topics, Vec::new(), None, None, usize::MAX).expect("open");
    slot
}

/// Unsubscribes `id`, then reports it, as `Shared::remove` does; the linger timer to start,
/// if any.
fn unsubscribe(world: &Arc<World>, id: u64, topic: &SharedStr) -> Option<u64> {
    let removed = world.registry.unsubscribe(id).expect("subscribed");
    assert_eq!(removed.left, std::slice::from_ref(topic));
    report(world, topic)
}

/// One membership report: `Producers::reconcile` with the model's instances; the linger
/// timer to start, if any.
fn report(world: &Arc<World>, topic: &SharedStr) -> Option<u64> {
    let start = |generation, previous| start(world, topic, generation, previous);
    let timer = world.lifecycle.reconcile(topic, world.linger, || world.membership(topic), start);
    if world.linger == Linger::None {
        assert_eq!(timer, None, "a linger timer with no linger configured");
    }
    timer
}

/// Linger timer `timer` of `topic` runs out.
fn linger_over(world: &World, topic: &SharedStr, timer: u64) {
    world.lifecycle.linger_over(topic, timer, || world.membership(topic));
}

/// Starts instance `generation` of `topic` on its own thread, after `previous` is gone.
fn start(
    world: &Arc<World>,
    topic: &SharedStr,
    generation: u64,
    previous: Option<Arc<Signal>>,
) -> Handle {
    world.started.fetch_add(1, Ordering::SeqCst);
    let handle = Handle { stop: Signal::new(), done: Signal::new() };
    let (w, topic, stop, done) =
        (world.clone(), topic.clone(), handle.stop.clone(), handle.done.clone());
    let thread = thread::spawn(move || {
        let world = w;
        if let Some(previous) = previous {
            previous.wait();
        }
        let before = world.live.fetch_add(1, Ordering::SeqCst);
        assert_eq!(before, 0, "two instances of {topic} at once");
        stop.wait();
        world.live.fetch_sub(1, Ordering::SeqCst);
        done.raise();
        let membership = || world.membership(&topic);
        world.lifecycle.ended(&topic, generation, &StopReason::Idle, membership);
    });
    world.threads.lock().expect("no model thread panics holding it").push(thread);
    handle
}

/// The last subscriber of a topic (A) leaves while a new one (B) joins, each reporting after
/// its registry change, so the two reports reach the lifecycle in either order and either may
/// read the other's change. Afterwards the topic, which has one subscriber, has exactly one
/// instance running; never two at once (a restarted one waited until its predecessor was
/// gone); and when B leaves too, that last unsubscribe stops every instance.
#[test]
fn loom_producer_last_unsubscribe_vs_first_subscribe() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let world = World::new(Linger::None);
        let topic: SharedStr = "t".into();
        let a = subscribe(&world, 1, &topic);
        assert_eq!(world.lifecycle.running(), [(topic.clone(), 1)]);

        let (w, t) = (world.clone(), topic.clone());
        let leaver = thread::spawn(move || assert_eq!(unsubscribe(&w, 1, &t), None));
        let b = subscribe(&world, 2, &topic);
        leaver.join().unwrap();

        let running = world.lifecycle.running();
        assert_eq!(running.len(), 1, "one subscriber, instances {running:?}");
        let generation = running[0].1;
        // B leaves too: that last unsubscribe stops the instance, with no shutdown.
        assert_eq!(unsubscribe(&world, 2, &topic), None);
        let started = world.join_instances();
        assert_eq!(started as u64, generation, "an instance started and was lost");
        OUTCOMES.record(if generation == 1 { "kept" } else { "restarted" });
        drop((a, b));
    });
    OUTCOMES.assert_reached(&["kept", "restarted"]);
}

/// Two subscribers join an idle topic at once: exactly one instance starts, whichever report
/// comes first, and it is the one running; shutdown stops it.
#[test]
fn loom_producer_two_first_subscribes_start_one_instance() {
    loom::model(|| {
        let world = World::new(Linger::None);
        let topic: SharedStr = "t".into();
        let (w, t) = (world.clone(), topic.clone());
        let other = thread::spawn(move || subscribe(&w, 1, &t));
        let b = subscribe(&world, 2, &topic);
        let a = other.join().unwrap();

        assert_eq!(world.lifecycle.running(), [(topic.clone(), 1)]);
        assert_eq!(world.shut_down(), 1);
        drop((a, b));
    });
}

/// A producer that lingers: its only subscriber (A) leaves, and the linger timer runs out while
/// a new subscriber (B) joins. If B was on the topic before the timer ran out, the instance is
/// kept (the timer does nothing, then or later); if the timer came first, it stopped the
/// instance and B's report started a new one, which waited for the old one to be gone. Either
/// way exactly one instance runs for B, and B leaving then stops it once its own timer runs out.
#[test]
fn loom_producer_linger_timer_vs_returning_subscriber() {
    static OUTCOMES: Outcomes = Outcomes::new();
    loom::model(|| {
        let world = World::new(Linger::Timer);
        let topic: SharedStr = "t".into();
        let a = subscribe(&world, 1, &topic);
        let timer = unsubscribe(&world, 1, &topic).expect("an idle topic lingers");

        let registered = Arc::new(AtomicBool::new(false));
        let (w, t, r) = (world.clone(), topic.clone(), registered.clone());
        let fired = thread::spawn(move || {
            // SeqCst: read before the timer reads the membership, so `true` means B was on
            // the topic by then.
            let b_first = r.load(Ordering::SeqCst);
            linger_over(&w, &t, timer);
            b_first
        });
        let b = register(&world, 2, &topic);
        registered.store(true, Ordering::SeqCst);
        assert_eq!(report(&world, &topic), None);
        let b_first = fired.join().unwrap();

        let running = world.lifecycle.running();
        assert_eq!(running.len(), 1, "one subscriber, instances {running:?}");
        let generation = running[0].1;
        linger_over(&world, &topic, timer);
        assert_eq!(world.lifecycle.running(), running, "a stale timer stopped the instance");

        let timer = unsubscribe(&world, 2, &topic).expect("an idle topic lingers");
        linger_over(&world, &topic, timer);
        // Generations and timers share one counter: A's instance is generation 1.
        let kept = generation == 1;
        if b_first {
            assert!(kept, "the timer stopped a topic that had a subscriber again");
        }
        assert_eq!(world.join_instances(), if kept { 1 } else { 2 });
        OUTCOMES.record(format!("b first {b_first}, kept {kept}"));
        drop((a, b));
    });
    OUTCOMES.assert_reached(&[
        "b first true, kept true",
        "b first false, kept true",
        "b first false, kept false",
    ]);
}
