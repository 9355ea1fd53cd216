//! The one reconnect loop of a node, whatever its broker: it listens to the broker's live
//! stream, polls the broker's position every second, and when the subscription is lost (or
//! turns out stalled, or on another history) subscribes again after a backoff, reporting the
//! state [`Backplane::state`](super::Backplane::state) shows along the way, until the node
//! shuts down.
//!
//! Its decisions are plain values ([`Backoff`], [`Attempts`], [`Watch`]) so they are tested
//! without a broker; `tests/backplane_*.rs` test the loop against real ones.

use std::time::Duration;

use futures_util::StreamExt;

use super::broker::{Broker, Incoming, Live, Polled, Position};
use super::{BackplaneError, Node};
use crate::sync::PlainArc;

/// How often the loop polls the broker's position: for the lag it reports, a stalled
/// subscription and a history that changed under the node.
const POLL: Duration = Duration::from_secs(1);

/// Polls in a row that must agree before the loop gives a subscription up: a stall or a missing
/// history for one poll may be a moment's delay, for three it is not.
const STRIKES: u32 = 3;

/// The pause between reconnect attempts: doubling from the first up to the longest, with up to
/// half again of random jitter so nodes do not reconnect in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// The pause before the first attempt after a loss.
    pub(crate) first: Duration,
    /// The longest pause (before jitter).
    pub(crate) longest: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { first: Duration::from_millis(100), longest: Duration::from_secs(5) }
    }
}

impl Backoff {
    /// The pause before attempt `attempt` (from 0), `jitter` any random number.
    pub(crate) fn pause(&self, attempt: u32, jitter: u64) -> Duration {
        let base = self.first.saturating_mul(1u32 << attempt.min(16)).min(self.longest);
        let ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
        base + Duration::from_millis(if ms == 0 { 0 } else { jitter % (ms / 2 + 1) })
    }
}

/// A random number for [`Backoff::pause`]'s jitter (0 without randomness: the pause is then
/// the plain doubling one).
pub(crate) fn jitter() -> u64 {
    getrandom::u64().unwrap_or(0)
}

/// Counts the attempts since the subscription was last up.
#[derive(Debug)]
pub(crate) struct Attempts {
    /// The pauses.
    backoff: Backoff,
    /// Failed attempts since the last success.
    failed: u32,
}

impl Attempts {
    /// No attempt yet.
    pub(crate) fn new(backoff: Backoff) -> Self {
        Attempts { backoff, failed: 0 }
    }

    /// A subscription came up: the next loss starts from the first pause again.
    pub(crate) fn succeeded(&mut self) {
        self.failed = 0;
    }

    /// The subscription is down or an attempt failed: the pause before the next attempt.
    pub(crate) fn next_pause(&mut self, jitter: u64) -> Duration {
        let pause = self.backoff.pause(self.failed, jitter);
        self.failed = self.failed.saturating_add(1);
        pause
    }
}

/// What a poll makes of the subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Keep it.
    Keep,
    /// Give it up and subscribe again: the stream is stalled, or the broker's history is not
    /// the one it carries.
    Resubscribe,
}

/// The poll's memory, from one poll to the next, over one subscription.
#[derive(Debug)]
pub(crate) struct Watch {
    /// The node's position at the last poll.
    last: u64,
    /// Polls in a row that found the broker ahead and the node not moving: a half-open
    /// connection delivers nothing and reports no error.
    stalled: u32,
    /// Polls in a row that found the broker up without the node's history.
    missing: u32,
}

impl Watch {
    /// A watch over a subscription joined at `position`.
    pub(crate) fn new(position: u64) -> Self {
        Watch { last: position, stalled: 0, missing: 0 }
    }

    /// Judges one poll. `epoch` and `position` are the node's, read before the poll was sent:
    /// the node only moves forward meanwhile, so a broker behind `position` went back in time.
    pub(crate) fn judge(&mut self, polled: Polled, epoch: u64, position: u64) -> Verdict {
        let at = match polled {
            // The subscription itself says when the connection is lost.
            Polled::Unreachable => {
                self.missing = 0;
                return Verdict::Keep;
            }
            Polled::NoHistory => {
                self.missing += 1;
                return if self.missing >= STRIKES { Verdict::Resubscribe } else { Verdict::Keep };
            }
            Polled::At(at) => at,
        };
        self.missing = 0;
        if at.epoch != epoch || at.seq < position {
            // Another history under the same names: numbers mean other events now.
            return Verdict::Resubscribe;
        }
        let stuck = at.seq > position && position == self.last;
        self.stalled = if stuck { self.stalled + 1 } else { 0 };
        self.last = position;
        if self.stalled >= STRIKES {
            Verdict::Resubscribe
        } else {
            Verdict::Keep
        }
    }
}

/// Most events a node recovers from the broker's history when its subscription comes back
/// behind (see [`recover`]): a longer outage ends the streams instead, and their clients resume
/// from the broker's history on their own, spread over their reconnects, rather than this node
/// holding the whole range in memory at once.
pub(crate) const MAX_RECOVER: usize = 10_000;

/// Subscribes `node` to `broker`'s live stream and joins the hub to where it starts. When the
/// node is behind in the same history, the missed range is recovered first (see [`recover`]);
/// a range that cannot be, or a new epoch, ends the hub's streams (see [`Node::rebase`]).
pub(crate) async fn join(node: &Node, broker: &dyn Broker) -> Result<Live, BackplaneError> {
    let (at, live) = broker.subscribe(node.seen()).await?;
    if let Some(from) = node.seen().filter(|seen| seen.epoch == at.epoch && seen.seq < at.seq) {
        recover(node, broker, from, at.seq).await;
    }
    node.rebase(at.epoch, at.seq);
    Ok(live)
}

/// Delivers the events in `(from.seq, upto]` from the broker's history, before the live stream
/// that starts after `upto`: then [`Node::rebase`] finds the node at `upto` and ends nothing.
///
/// The seam: `upto` is where the live stream starts (see [`Broker::subscribe`]), so the range
/// and the live stream share no event; live events arriving while the range is fetched wait in
/// the subscription, unread, and are delivered after it, in order. Every delivery goes through
/// the hub's sequenced door, which also skips a duplicate should one come. The range is
/// delivered only when it is whole (every number from `from.seq + 1` to `upto`, once):
/// otherwise nothing is, and the rebase ends the streams as it would without recovery. Bounded
/// by [`MAX_RECOVER`] events and by the broker's timeout.
async fn recover(node: &Node, broker: &dyn Broker, from: Position, upto: u64) {
    let timeout = node.common.timeout;
    let asked = tokio::time::timeout(timeout, broker.recover(from, upto, MAX_RECOVER)).await;
    let Ok(Ok(Some(mut events))) = asked else { return };
    events.sort_unstable_by_key(|incoming| match incoming {
        Incoming::Event { seq, .. } => *seq,
        _ => 0,
    });
    let seqs = events.iter().map(|incoming| match incoming {
        Incoming::Event { seq, .. } => Some(*seq),
        _ => None,
    });
    if !whole(seqs, from.seq, upto) {
        return;
    }
    let count = events.len() as u64;
    for incoming in events {
        if let Incoming::Event { seq, topic, payload, .. } = incoming {
            match topic {
                Some(topic) => node.deliver(&topic, seq, &payload),
                None => node.deliver("", seq, &[]),
            }
        }
    }
    node.recovered(count);
}

/// Whether `seqs`, sorted, are exactly every number in `(after, upto]`, once each (`None`
/// stands for an item that is not an event).
fn whole(seqs: impl Iterator<Item = Option<u64>>, after: u64, upto: u64) -> bool {
    let mut next = after;
    for seq in seqs {
        match seq {
            Some(seq) if Some(seq) == next.checked_add(1) && seq <= upto => next = seq,
            _ => return false,
        }
    }
    next == upto
}

/// The node's task: listens on `first`, and each time the subscription is lost subscribes
/// again with backoff, until the node or its hub shuts down.
pub(crate) async fn run(node: PlainArc<Node>, broker: PlainArc<dyn Broker>, first: Live) {
    let mut attempts = Attempts::new(node.common.backoff);
    let mut live = Some(first);
    loop {
        if node.is_closed() {
            return;
        }
        let joined = match live.take() {
            Some(live) => Ok(live),
            None => join(&node, &*broker).await,
        };
        if let Ok(live) = joined {
            attempts.succeeded();
            node.set_connected(true);
            listen(&node, &*broker, live).await;
            node.set_connected(false);
        }
        if node.is_closed() {
            return;
        }
        tokio::time::sleep(attempts.next_pause(jitter())).await;
    }
}

/// Delivers the live stream's events until it ends, the node shuts down, or a poll gives the
/// subscription up.
async fn listen(node: &Node, broker: &dyn Broker, mut live: Live) {
    let mut poll = tokio::time::interval(POLL);
    let mut watch = Watch::new(node.position());
    loop {
        tokio::select! {
            incoming = live.next() => match incoming {
                None => return,
                Some(incoming) => receive(node, incoming),
            },
            _ = poll.tick() => {
                if node.is_closed() {
                    return;
                }
                // Joined before listening, so attached: only a failed connect detaches.
                let Some(epoch) = node.epoch() else { return };
                let position = node.position();
                let polled = broker.position().await;
                if let Polled::At(at) = polled {
                    node.saw(at.seq);
                }
                if watch.judge(polled, epoch, position) == Verdict::Resubscribe {
                    return;
                }
            }
        }
    }
}

/// Handles one item of the live stream.
fn receive(node: &Node, incoming: Incoming) {
    match incoming {
        Incoming::Event { epoch, seq, topic, payload } => {
            if let Some(epoch) = epoch.filter(|e| Some(*e) != node.epoch()) {
                // Another history (the broker lost its data and a publish started a new one):
                // join it where this event starts.
                node.rebase(epoch, seq.saturating_sub(1));
            }
            match topic {
                Some(topic) => node.deliver(&topic, seq, &payload),
                None => node.deliver("", seq, &[]),
            }
        }
        Incoming::Unreadable => node.skip(),
        Incoming::Down => node.set_connected(false),
        Incoming::Up => node.set_connected(true),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Counters;
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn backoff_doubles_from_the_first_pause_to_the_longest() {
        let backoff = Backoff::default();
        let pauses: Vec<Duration> = (0..9).map(|attempt| backoff.pause(attempt, 0)).collect();
        let expected = [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000].map(MS);
        assert_eq!(pauses, expected);
        assert_eq!(backoff.pause(u32::MAX, 0), MS(5000), "no overflow on a long outage");
        let zero = Backoff { first: Duration::ZERO, longest: Duration::ZERO };
        assert_eq!(zero.pause(3, u64::MAX), Duration::ZERO);
    }

    #[test]
    fn jitter_adds_at_most_half_again() {
        let backoff = Backoff { first: MS(20), longest: MS(500) };
        for attempt in 0..8 {
            let base = backoff.pause(attempt, 0);
            let mut widest = base;
            for jitter in [1, 7, 99, 12_345, u64::MAX / 3, u64::MAX] {
                let pause = backoff.pause(attempt, jitter);
                assert!(pause >= base && pause <= base + base / 2, "{attempt}: {pause:?}");
                widest = widest.max(pause);
            }
            assert!(widest > base, "jitter spreads attempt {attempt}");
        }
    }

    #[test]
    fn attempts_start_over_after_a_success() {
        let mut attempts = Attempts::new(Backoff::default());
        let first: Vec<Duration> = (0..4).map(|_| attempts.next_pause(0)).collect();
        assert_eq!(first, [100, 200, 400, 800].map(MS));
        attempts.succeeded();
        assert_eq!(attempts.next_pause(0), MS(100));
        assert_eq!(attempts.next_pause(0), MS(200));
    }

    fn at(epoch: u64, seq: u64) -> Polled {
        Polled::At(Position { epoch, seq })
    }

    #[test]
    fn a_stall_is_given_up_after_three_polls() {
        let mut watch = Watch::new(10);
        assert_eq!(watch.judge(at(1, 12), 1, 10), Verdict::Keep);
        assert_eq!(watch.judge(at(1, 12), 1, 10), Verdict::Keep);
        // The node moved: not a stall, however far behind it is.
        assert_eq!(watch.judge(at(1, 20), 1, 11), Verdict::Keep);
        assert_eq!(watch.judge(at(1, 20), 1, 11), Verdict::Keep);
        assert_eq!(watch.judge(at(1, 20), 1, 11), Verdict::Keep);
        // A broker that cannot be asked does not count, either way.
        assert_eq!(watch.judge(Polled::Unreachable, 1, 11), Verdict::Keep);
        assert_eq!(watch.judge(at(1, 20), 1, 11), Verdict::Resubscribe);
        // Caught up: never a stall.
        let mut idle = Watch::new(5);
        for _ in 0..10 {
            assert_eq!(idle.judge(at(1, 5), 1, 5), Verdict::Keep);
        }
    }

    #[test]
    fn another_history_is_given_up_at_once() {
        assert_eq!(Watch::new(5).judge(at(2, 5), 1, 5), Verdict::Resubscribe, "new epoch");
        assert_eq!(Watch::new(5).judge(at(1, 4), 1, 5), Verdict::Resubscribe, "went back");
        let mut missing = Watch::new(5);
        assert_eq!(missing.judge(Polled::NoHistory, 1, 5), Verdict::Keep);
        assert_eq!(missing.judge(Polled::NoHistory, 1, 5), Verdict::Keep);
        // Unreachable in between: the count starts again.
        assert_eq!(missing.judge(Polled::Unreachable, 1, 5), Verdict::Keep);
        assert_eq!(missing.judge(Polled::NoHistory, 1, 5), Verdict::Keep);
        assert_eq!(missing.judge(Polled::NoHistory, 1, 5), Verdict::Keep);
        assert_eq!(missing.judge(Polled::NoHistory, 1, 5), Verdict::Resubscribe);
    }

    #[test]
    fn only_a_whole_range_is_recovered() {
        let some = |seqs: &[u64]| seqs.iter().map(|s| Some(*s)).collect::<Vec<_>>();
        assert!(whole(some(&[5, 6, 7]).into_iter(), 4, 7));
        assert!(whole(some(&[]).into_iter(), 7, 7), "nothing missed");
        assert!(!whole(some(&[5, 7]).into_iter(), 4, 7), "a hole");
        assert!(!whole(some(&[5, 6]).into_iter(), 4, 7), "short of the end");
        assert!(!whole(some(&[6, 7]).into_iter(), 4, 7), "trimmed at the start");
        assert!(!whole(some(&[5, 5, 6, 7]).into_iter(), 4, 7), "twice");
        assert!(!whole(some(&[5, 6, 7, 8]).into_iter(), 4, 7), "past the live stream's start");
        assert!(!whole(vec![Some(5), None, Some(6)].into_iter(), 4, 6), "not an event");
        assert!(!whole(some(&[u64::MAX]).into_iter(), u64::MAX, u64::MAX), "no overflow");
    }

    #[test]
    fn the_link_counts_each_loss_once_and_none_at_shutdown() {
        let counters = Counters::default();
        let open = false;
        let state = |c: &Counters| (c.is_connected(), c.reconnects());
        counters.link(true, open);
        assert_eq!(state(&counters), (true, 0));
        counters.link(false, open);
        assert_eq!(state(&counters), (false, 1));
        // Down again (the client's report, then the loop's): one loss.
        counters.link(false, open);
        assert_eq!(state(&counters), (false, 1));
        counters.link(true, open);
        counters.link(true, open);
        assert_eq!(state(&counters), (true, 1));
        let closed = true;
        counters.link(false, closed);
        assert_eq!(state(&counters), (false, 1), "shutting down is not a reconnect");
    }
}
