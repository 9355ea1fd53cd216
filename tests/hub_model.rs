//! A model-based property test (`proptest-state-machine`): random sequences of subscribe,
//! unsubscribe, publish, targeted send, drain, slow readers, reconnect with the last id seen,
//! and shutdown, run against the hub and against a single-threaded model of it. Both must give
//! the same deliveries (every frame, in order), the same stream endings and the same errors.
//!
//! What the model assumes is the documented contract only: a `Disconnect` subscriber that would
//! fall more than its capacity behind on one of its topics (or have more than its capacity of
//! targeted sends waiting) ends with `EndReason::Slow` and receives nothing more (frames
//! replayed at subscribe are not part of that bound), a resume replays the missed
//! events of its topics, and after shutdown every stream ends after what was queued. Whether a
//! slow subscriber is detected at publish or at its next poll cannot be observed here, since
//! the test looks only at what a consumer receives.

use std::collections::VecDeque;

use proptest::prelude::*;
use proptest::sample::subsequence;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use ssehub::parse::Parser;
use ssehub::{EndReason, Event, HistoryLimits, Hub, PublishError, Subscribe, SubscribeError};
use ssehub::{SlowPolicy, Subscription};

const TOPICS: [&str; 3] = ["a", "b", "c"];
/// Capacity of a slow reader's queue: small, so random sequences overflow it.
const SLOW: usize = 3;
/// Capacity of every other queue.
const ROOMY: usize = 64;

#[derive(Debug, Clone)]
enum Op {
    Subscribe { topics: Vec<usize>, slow: bool },
    Unsubscribe(usize),
    Publish(usize),
    SendTo(usize),
    Drain(usize),
    Reconnect(usize),
    Shutdown,
}

#[derive(Debug, Clone, PartialEq)]
enum End {
    Slow,
    Shutdown,
}

#[derive(Debug, Clone)]
struct ModelSub {
    topics: Vec<usize>,
    slow: bool,
    /// Replayed at subscribe: outside the queue's bound.
    pending: VecDeque<u64>,
    queue: VecDeque<(u64, Option<usize>)>,
    ended: Option<End>,
    /// The last event it received (its resume point).
    last_seen: Option<u64>,
    /// Unsubscribed, replaced by a reconnect, or refused.
    gone: bool,
    /// What its last drain handed over (the system under test is checked against it).
    drained: Vec<u64>,
}

#[derive(Debug, Clone, Default)]
struct Model {
    subs: Vec<ModelSub>,
    /// The next event's number (each accepted publish or send takes one).
    next: u64,
    closed: bool,
    /// Topic events in publish order: (topic, number).
    history: Vec<(usize, u64)>,
}

impl Model {
    fn active(&self, i: usize) -> bool {
        self.subs.get(i).is_some_and(|s| !s.gone)
    }

    /// Event `n`, of `topic` (`None` for a targeted send), reaches `sub`. The bound applies per
    /// topic (each topic's ring) and to the subscriber's own queue of targeted sends.
    fn push(sub: &mut ModelSub, n: u64, topic: Option<usize>) {
        if sub.gone || sub.ended.is_some() {
            return;
        }
        sub.queue.push_back((n, topic));
        let waiting = sub.queue.iter().filter(|(_, t)| *t == topic).count();
        if waiting > if sub.slow { SLOW } else { ROOMY } {
            sub.queue.clear();
            sub.ended = Some(End::Slow);
        }
    }

    fn new_sub(&self, topics: Vec<usize>, slow: bool, resume: Option<u64>) -> ModelSub {
        let pending = match resume {
            Some(last) => self
                .history
                .iter()
                .filter(|(t, n)| *n > last && topics.contains(t))
                .map(|(_, n)| *n)
                .collect(),
            None => VecDeque::new(),
        };
        ModelSub {
            topics,
            slow,
            pending,
            queue: VecDeque::new(),
            ended: None,
            last_seen: resume,
            gone: self.closed,
            drained: Vec::new(),
        }
    }
}

struct HubModel;

impl ReferenceStateMachine for HubModel {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model { next: 1, ..Model::default() }).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        let subscribe = (subsequence(vec![0, 1, 2], 1..=3), any::<bool>())
            .prop_map(|(topics, slow)| Op::Subscribe { topics, slow });
        let publish = (0..TOPICS.len()).prop_map(Op::Publish);
        let n = state.subs.len();
        if n == 0 {
            return prop_oneof![3 => subscribe, 2 => publish, 1 => Just(Op::Shutdown)].boxed();
        }
        prop_oneof![
            3 => subscribe,
            5 => publish,
            2 => (0..n).prop_map(Op::SendTo),
            4 => (0..n).prop_map(Op::Drain),
            1 => (0..n).prop_map(Op::Unsubscribe),
            2 => (0..n).prop_map(Op::Reconnect),
            1 => Just(Op::Shutdown),
        ]
        .boxed()
    }

    fn preconditions(state: &Model, op: &Op) -> bool {
        match op {
            Op::Unsubscribe(i) | Op::Drain(i) | Op::Reconnect(i) => state.active(*i),
            Op::SendTo(i) => *i < state.subs.len(),
            _ => true,
        }
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        match op {
            Op::Subscribe { topics, slow } => {
                let sub = state.new_sub(topics.clone(), *slow, None);
                state.subs.push(sub);
            }
            Op::Unsubscribe(i) => state.subs[*i].gone = true,
            Op::Publish(t) if !state.closed => {
                let n = state.next;
                state.next += 1;
                state.history.push((*t, n));
                for sub in state.subs.iter_mut().filter(|s| s.topics.contains(t)) {
                    Model::push(sub, n, Some(*t));
                }
            }
            Op::SendTo(i) if !state.closed => {
                let n = state.next;
                state.next += 1;
                Model::push(&mut state.subs[*i], n, None);
            }
            Op::Publish(_) | Op::SendTo(_) => {}
            Op::Drain(i) => {
                let sub = &mut state.subs[*i];
                let mut got: Vec<u64> = sub.pending.drain(..).collect();
                got.extend(sub.queue.drain(..).map(|(n, _)| n));
                if let Some(&last) = got.last() {
                    sub.last_seen = Some(last);
                }
                sub.drained = got;
            }
            Op::Reconnect(i) => {
                let old = &mut state.subs[*i];
                old.gone = true;
                let (topics, slow, resume) = (old.topics.clone(), old.slow, old.last_seen);
                state.subs[*i] = state.new_sub(topics, slow, resume);
            }
            Op::Shutdown => {
                state.closed = true;
                for sub in state.subs.iter_mut().filter(|s| !s.gone && s.ended.is_none()) {
                    sub.ended = Some(End::Shutdown);
                }
            }
        }
        state
    }
}

/// One live subscription of the hub and the last id it received.
struct Live {
    sub: Subscription,
    last_id: Option<String>,
}

struct System {
    hub: Hub,
    subs: Vec<Option<Live>>,
}

impl System {
    fn subscribe(&self, topics: &[usize], slow: bool, last_id: Option<String>) -> Option<Live> {
        let mut request = Subscribe::new()
            .with_topics(topics.iter().map(|&t| TOPICS[t]))
            .with_capacity(if slow { SLOW } else { ROOMY });
        if let Some(id) = &last_id {
            request = request.with_last_event_id(id.clone());
        }
        match self.hub.subscribe(request) {
            Ok(sub) => Some(Live { sub, last_id }),
            Err(SubscribeError::Closed) => None,
            Err(other) => panic!("unexpected refusal: {other:?}"),
        }
    }
}

/// Everything a subscription hands over now: the event numbers, in order, and how it ended.
fn drain(live: &mut Live) -> (Vec<u64>, Option<EndReason>) {
    let mut got = Vec::new();
    let mut parser = Parser::new();
    for _ in 0..1000 {
        match live.sub.try_recv() {
            Ok(Some(batch)) => {
                let mut events = Vec::new();
                parser.feed(&batch.into_bytes(), &mut events).expect("frames parse");
                for event in events {
                    got.push(event.data.parse().expect("a numbered event"));
                    live.last_id = Some(event.id);
                }
            }
            Ok(None) => return (got, None),
            Err(reason) => return (got, Some(reason)),
        }
    }
    panic!("a subscription kept handing out batches");
}

impl StateMachineTest for HubModel {
    type SystemUnderTest = System;
    type Reference = HubModel;

    fn init_test(_: &Model) -> System {
        let hub = Hub::builder()
            .with_heartbeat(None)
            .with_connected_event(false)
            .with_retry(None)
            .with_slow_policy(SlowPolicy::Disconnect)
            .with_history(Some(HistoryLimits::new()))
            .build();
        System { hub, subs: Vec::new() }
    }

    fn apply(mut system: System, model: &Model, op: Op) -> System {
        // `model` is the state after `op`.
        match op {
            Op::Subscribe { topics, slow } => {
                let live = system.subscribe(&topics, slow, None);
                assert_eq!(live.is_none(), model.closed, "subscribe after shutdown is Closed");
                system.subs.push(live);
            }
            Op::Unsubscribe(i) => system.subs[i] = None,
            Op::Publish(t) => {
                let result =
                    system.hub.publish(TOPICS[t], Event::new((model.next - 1).to_string()));
                check_publish(result, model.closed);
            }
            Op::SendTo(i) => {
                let event = Event::new((model.next - 1).to_string());
                let result = match &system.subs[i] {
                    Some(live) => system.hub.send_to(live.sub.id(), event),
                    // Gone: its id names nobody, like an id never issued.
                    None => system.hub.send_to(ssehub::SubscriberId::from_u64(u64::MAX), event),
                };
                check_publish(result, model.closed);
            }
            Op::Drain(i) => {
                let live = system.subs[i].as_mut().expect("an active subscription");
                let (got, end) = drain(live);
                let sub = &model.subs[i];
                let expected_end = sub.ended.as_ref().map(|end| match end {
                    End::Slow => EndReason::Slow,
                    End::Shutdown => EndReason::Shutdown,
                });
                assert_eq!(end, expected_end, "how subscription {i} ended");
                assert_eq!(got, sub.drained, "deliveries to subscription {i}");
            }
            Op::Reconnect(i) => {
                let old = system.subs[i].take().expect("an active subscription");
                let last_id = old.last_id.clone();
                drop(old);
                let sub = &model.subs[i];
                let live = system.subscribe(&sub.topics, sub.slow, last_id);
                assert_eq!(live.is_none(), model.closed, "subscribe after shutdown is Closed");
                system.subs[i] = live;
            }
            Op::Shutdown => system.hub.shutdown(),
        }
        system
    }
}

fn check_publish(result: Result<ssehub::Published, PublishError>, closed: bool) {
    match result {
        Ok(_) => assert!(!closed, "a publish after shutdown was accepted"),
        Err(PublishError::Closed(_)) => assert!(closed, "a publish before shutdown was refused"),
        Err(other) => panic!("unexpected publish error: {other:?}"),
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 4096, ..ProptestConfig::default() })]

    #[test]
    fn the_hub_behaves_like_its_model(sequential 1..60 => HubModel);
}
