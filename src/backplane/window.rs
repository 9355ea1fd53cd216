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

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::broker::{Broker, Outgoing, Position};
use super::{BackplaneError, BrokerError};
use crate::sync::{AtomicU64, Ordering, PlainArc};

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
        self.queue.try_send(Job { event, reply }).map_err(|refused| match refused {
            mpsc::error::TrySendError::Full(_) => BackplaneError::Busy,
            mpsc::error::TrySendError::Closed(_) => BackplaneError::Closed,
        })?;
        let deadline = self.timeout.saturating_mul(2);
        match tokio::time::timeout(deadline, answer).await {
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
            let take = batch_len(&jobs);
            let batch: Vec<Job> = jobs.drain(..take).collect();
            // Relaxed: a statistic.
            batches.fetch_add(1, Ordering::Relaxed);
            send(&*broker, batch, timeout).await;
        }
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
    let (events, replies): (Vec<Outgoing>, Vec<oneshot::Sender<Answer>>) =
        batch.into_iter().map(|job| (job.event, job.reply)).unzip();
    match tokio::time::timeout(timeout, broker.publish(events)).await {
        Ok(answers) => {
            let mut answers = answers.into_iter();
            for reply in replies {
                // A broker that answered fewer than it was given broke its contract: the rest
                // were not acknowledged.
                let answer = answers.next().unwrap_or(Err(BackplaneError::Protocol));
                // A caller that left in the meantime needs no answer.
                let _ = reply.send(answer);
            }
        }
        Err(_) => {
            for reply in replies {
                let _ = reply.send(Err(BackplaneError::Timeout(timeout)));
            }
        }
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
            BackplaneError::Protocol => BackplaneError::Protocol,
        }
    }
}
