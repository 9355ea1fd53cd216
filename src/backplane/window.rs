//! The node's publish window: concurrent [`Backplane::publish`](super::Backplane::publish) calls
//! become one broker round trip per batch.
//!
//! A caller queues its event and waits for its own answer. The queue is bounded (the window):
//! when it is full the publish is refused at once with [`BackplaneError::Busy`], so a node fed
//! faster than its broker takes events says so instead of queueing without end. One task takes
//! whatever is queued, up to a batch's limits, hands it to the broker in one call, and answers
//! each caller with its own place in the broker's history. While one batch is on the wire the
//! next one gathers, so batches grow with the load by themselves, and a lone publish finds the
//! task idle and goes at once: it pays the one round trip it always paid, and waits for no
//! timer.
//!
//! A caller that gave up (its deadline passed, or its future was dropped) before its event left
//! is skipped: it was told the event was not published, and that stays true. Once a batch is
//! on the wire it is the broker's: an error then means "not acknowledged", as before batching.
//!
//! A caller with several events ([`Window::publish_all`]) is admitted whole or not at all, its
//! events queued in order as one group. Once one of them fails, the task sends none of the
//! group's later events (they are answered [`BackplaneError::Aborted`]), so a later event of a
//! group is never published after an earlier one failed in an earlier round trip.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::broker::{Broker, Outgoing, Position};
use super::{BackplaneError, BrokerError};
use crate::sync::{AtomicBool, AtomicU64, Ordering, PlainArc};

/// Most events in one batch.
const MAX_BATCH_EVENTS: usize = 256;

/// Most payload bytes in one batch: a batch is one script call and one message on Redis's
/// channel, and a broker's message size limit (NATS: 1 MiB by default) applies to it.
const MAX_BATCH_BYTES: usize = 512 << 10;

/// What one caller waits for.
type Answer = Result<Position, BackplaneError>;

/// One queued publish.
struct Job {
    /// The event.
    event: Outgoing,
    /// Where its answer goes.
    reply: oneshot::Sender<Answer>,
    /// The group of [`Window::publish_all`] it belongs to: set once one of its events failed.
    group: Option<PlainArc<AtomicBool>>,
}

/// The sending side of the window; the task ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// The bounded queue to the batching task.
    queue: mpsc::Sender<Job>,
    /// How long a broker call may take.
    timeout: Duration,
    /// Batches sent to the broker.
    batches: PlainArc<AtomicU64>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("topic", &self.event.topic).finish_non_exhaustive()
    }
}

impl Window {
    /// Starts the batching task for `broker`: at most `capacity` publishes wait behind the
    /// batch on the wire.
    pub(crate) fn start(broker: PlainArc<dyn Broker>, capacity: usize, timeout: Duration) -> Self {
        let (queue, jobs) = mpsc::channel(capacity.max(1));
        let batches = PlainArc::new(AtomicU64::new(0));
        tokio::spawn(run(broker, jobs, timeout, batches.clone()));
        Window { queue, timeout, batches }
    }

    /// Batches sent to the broker so far.
    pub(crate) fn batches(&self) -> u64 {
        // Relaxed: a statistic.
        self.batches.load(Ordering::Relaxed)
    }

    /// Publishes `event` in the next batch: its place in the broker's history once
    /// acknowledged.
    ///
    /// The wait is bounded by twice the broker timeout: the batch ahead on the wire, then its
    /// own.
    pub(crate) async fn publish(&self, event: Outgoing) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.queue.try_send(Job { event, reply, group: None }).map_err(
            |refused| match refused {
                mpsc::error::TrySendError::Full(_) => BackplaneError::Busy,
                mpsc::error::TrySendError::Closed(_) => BackplaneError::Closed,
            },
        )?;
        let deadline = self.timeout.saturating_mul(2);
        self.answer(answer, tokio::time::Instant::now() + deadline, deadline).await
    }

    /// Publishes `events` in order, in as few batches as their size allows: one answer per
    /// event, in the same order. All of them are admitted or none ([`BackplaneError::Busy`]
    /// for each when the window has no room for them all). Once one fails, the later ones not
    /// yet sent are answered [`BackplaneError::Aborted`] and never sent.
    ///
    /// The wait is bounded by the broker timeout once per batch the events take, plus the
    /// batch ahead on the wire.
    pub(crate) async fn publish_all(&self, events: Vec<Outgoing>) -> Vec<Answer> {
        let count = events.len();
        let permits = match self.queue.try_reserve_many(count) {
            Ok(permits) => permits,
            Err(mpsc::error::TrySendError::Full(())) => return each(&BackplaneError::Busy, count),
            Err(mpsc::error::TrySendError::Closed(())) => {
                return each(&BackplaneError::Closed, count)
            }
        };
        let group = PlainArc::new(AtomicBool::new(false));
        let mut answers = Vec::with_capacity(count);
        for (permit, event) in permits.zip(events) {
            let (reply, answer) = oneshot::channel();
            permit.send(Job { event, reply, group: Some(group.clone()) });
            answers.push(answer);
        }
        let batches = u32::try_from(count.div_ceil(MAX_BATCH_EVENTS)).unwrap_or(u32::MAX);
        let deadline = self.timeout.saturating_mul(batches.saturating_add(1));
        let until = tokio::time::Instant::now() + deadline;
        let mut out = Vec::with_capacity(count);
        for answer in answers {
            out.push(self.answer(answer, until, deadline).await);
        }
        out
    }

    /// Waits until `until` (`deadline` after the publish began) for one queued event's answer.
    async fn answer(
        &self,
        answer: oneshot::Receiver<Answer>,
        until: tokio::time::Instant,
        deadline: Duration,
    ) -> Answer {
        match tokio::time::timeout_at(until, answer).await {
            Ok(Ok(answer)) => answer,
            // The task is gone: the runtime is shutting down.
            Ok(Err(_)) => Err(BackplaneError::Closed),
            Err(_) => Err(BackplaneError::Timeout(deadline)),
        }
    }
}

/// The batching task: takes what is queued, publishes it in batches, answers each caller.
async fn run(
    broker: PlainArc<dyn Broker>,
    mut queue: mpsc::Receiver<Job>,
    timeout: Duration,
    batches: PlainArc<AtomicU64>,
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH_EVENTS);
    while queue.recv_many(&mut jobs, MAX_BATCH_EVENTS).await > 0 {
        jobs.retain(|job| !job.reply.is_closed());
        while !jobs.is_empty() {
            abort_failed_groups(&mut jobs);
            if jobs.is_empty() {
                break;
            }
            let take = batch_len(&jobs);
            let batch: Vec<Job> = jobs.drain(..take).collect();
            // Relaxed: a statistic.
            batches.fetch_add(1, Ordering::Relaxed);
            send(&*broker, batch, timeout).await;
        }
    }
}

/// Answers and removes the jobs whose group had an event fail: they are never sent.
fn abort_failed_groups(jobs: &mut Vec<Job>) {
    // Acquire: pairs with the Release that marked the group failed; in practice both sides
    // run on this task, the order matters only if that ever changes.
    let failed = |job: &Job| job.group.as_ref().is_some_and(|g| g.load(Ordering::Acquire));
    if !jobs.iter().any(failed) {
        return;
    }
    let (aborted, kept): (Vec<Job>, Vec<Job>) = jobs.drain(..).partition(|job| failed(job));
    *jobs = kept;
    for job in aborted {
        let _ = job.reply.send(Err(BackplaneError::Aborted));
    }
}

/// How many of `jobs` (at least one) fit in one batch's byte limit.
fn batch_len(jobs: &[Job]) -> usize {
    let mut bytes = 0usize;
    let fit = jobs
        .iter()
        .take_while(|job| {
            bytes += job.event.payload.len() + job.event.topic.len();
            bytes <= MAX_BATCH_BYTES
        })
        .count();
    fit.max(1)
}

/// Publishes one batch and answers its callers.
async fn send(broker: &dyn Broker, batch: Vec<Job>, timeout: Duration) {
    let mut events = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for Job { event, reply, group } in batch {
        events.push(event);
        waiting.push((reply, group));
    }
    let answers = match tokio::time::timeout(timeout, broker.publish(events)).await {
        Ok(answers) => answers,
        Err(_) => each(&BackplaneError::Timeout(timeout), waiting.len()),
    };
    let mut answers = answers.into_iter();
    for (reply, group) in waiting {
        // A broker that answered fewer than it was given broke its contract: the rest were
        // not acknowledged.
        let answer = answers.next().unwrap_or(Err(BackplaneError::Protocol));
        if let (Err(_), Some(group)) = (&answer, group) {
            // Release: see `abort_failed_groups`.
            group.store(true, Ordering::Release);
        }
        // A caller that left in the meantime needs no answer.
        let _ = reply.send(answer);
    }
}

/// The same failure for each event of a batch that failed as a whole.
pub(crate) fn each(error: &BackplaneError, count: usize) -> Vec<Answer> {
    (0..count).map(|_| Err(error.duplicate())).collect()
}

impl BackplaneError {
    /// An error saying the same (errors from the broker's client are not `Clone`: their
    /// message is kept).
    fn duplicate(&self) -> BackplaneError {
        match self {
            BackplaneError::Unavailable(cause) => BackplaneError::Unavailable(BrokerError::wrap(
                std::io::Error::other(cause.to_string()),
            )),
            BackplaneError::Timeout(after) => BackplaneError::Timeout(*after),
            BackplaneError::Topic(error) => BackplaneError::Topic(error.clone()),
            BackplaneError::Event(error) => BackplaneError::Event(error.clone()),
            BackplaneError::NoHistory => BackplaneError::NoHistory,
            BackplaneError::AlreadyAttached => BackplaneError::AlreadyAttached,
            BackplaneError::Closed => BackplaneError::Closed,
            BackplaneError::Busy => BackplaneError::Busy,
            BackplaneError::Aborted => BackplaneError::Aborted,
            BackplaneError::Protocol => BackplaneError::Protocol,
        }
    }
}
