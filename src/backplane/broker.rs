//! What a broker is to a node: one trait, [`Broker`], that Redis and NATS implement, and the
//! one way to make one, [`Connect`]. Everything else a node does (numbering into the hub,
//! resumes, the reconnect loop, the state it reports) is written once, over these.
//!
//! The methods return boxed futures rather than being `async fn`s: a [`Backplane`] holds its
//! broker as `dyn Broker` (it is one public type whichever broker it joins), and an `async fn`
//! in a trait cannot be called through `dyn`. The box is one allocation per call, beside a
//! network round trip.
//!
//! [`Backplane`]: super::Backplane

use std::fmt;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::{BackplaneError, Common};
use crate::sync::PlainArc;
use crate::topic::Pattern;

/// A place in a broker's history: which history, and the number of an event in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    /// The history's epoch: a broker that lost its history starts another one.
    pub(crate) epoch: u64,
    /// The number of the event (0 before the first).
    pub(crate) seq: u64,
}

/// One item of a broker's live stream.
#[derive(Debug, PartialEq, Eq)]
// Redis ends its live stream with its connection: only NATS reports the link.
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) enum Incoming {
    /// An event the broker numbered `seq`.
    Event {
        /// The history it belongs to, when the message says (Redis): another one than the
        /// node's means the broker started a new history with this event.
        epoch: Option<u64>,
        /// Its number.
        seq: u64,
        /// Its topic; `None` for a message on the broker that is not one of ours, whose number
        /// is used up all the same, so that it does not look like a gap.
        topic: Option<String>,
        /// The event as [`codec`](super::codec) wrote it.
        payload: Bytes,
    },
    /// A message that is not one of ours and has no number.
    Unreadable,
    /// The connection under the subscription went down; the broker's client is bringing it
    /// back by itself and the subscription resumes (NATS).
    Down,
    /// The connection under the subscription is back (NATS).
    Up,
}

/// A broker's live stream: every event after the position it was opened at, in the broker's
/// order. It ends when the subscription is lost for good.
pub(crate) type Live = BoxStream<'static, Incoming>;

/// Events fetched from a broker's history for one resume: the engine's type, since a fetch
/// answers the hub's replay source (see [`WeakBackplane`](super::WeakBackplane)).
pub(crate) use crate::engine::Fetched;

/// What the node's position poll learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Polled {
    /// The broker did not answer.
    Unreachable,
    /// The broker answered, but has no history under the node's names (lost with its data).
    NoHistory,
    /// The broker's epoch and last number.
    At(Position),
}

/// One event on its way to the broker.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// Its topic.
    pub(crate) topic: String,
    /// The event as [`codec`](super::codec) wrote it.
    pub(crate) payload: Vec<u8>,
}

/// A connected broker: what a node asks of Redis or NATS. Every method is bounded by the
/// broker's timeout.
pub(crate) trait Broker: Send + Sync + 'static {
    /// Numbers and stores a batch of events, in order, and fans them out to every node's live
    /// stream: each one's place in the broker's history once the broker acknowledged it, or
    /// why it was not (one answer per event, in the batch's order).
    fn publish(&self, batch: Vec<Outgoing>)
        -> BoxFuture<'_, Vec<Result<Position, BackplaneError>>>;

    /// Opens the live stream, and says where it starts: every event after the returned
    /// position arrives on it, every event up to it is in the broker's history. `seen` is where
    /// this node was (`None` before it first joined), for a broker that can tell from it that
    /// its history went back in time and must start a new epoch (Redis).
    fn subscribe(
        &self,
        seen: Option<Position>,
    ) -> BoxFuture<'_, Result<(Position, Live), BackplaneError>>;

    /// The events after `after` on `topics` and the topics matching `patterns`, at most
    /// `max + 1` of them (one more than a resume may take, to tell it was too many).
    fn fetch<'a>(
        &'a self,
        after: u64,
        topics: &'a [String],
        patterns: &'a [Pattern],
        max: usize,
    ) -> BoxFuture<'a, Result<Fetched, BackplaneError>>;

    /// The broker's epoch and last number now.
    fn position(&self) -> BoxFuture<'_, Polled>;

    /// Every event of every topic in `(from.seq, upto]` of history `from.epoch`, as the live
    /// stream would have carried them (each an [`Incoming::Event`], in any order): for a node
    /// whose subscription came back behind the broker. `None` when the broker no longer has
    /// the whole range (another epoch, trimmed) or it holds more than `max` events.
    fn recover(
        &self,
        from: Position,
        upto: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<Option<Vec<Incoming>>, BackplaneError>>;
}

/// How to reach a broker: implemented by the public [`Redis`](super::Redis) and
/// [`Nats`](super::Nats) settings, held by [`BrokerConfig`](super::BrokerConfig).
pub(crate) trait Connect: fmt::Debug + Send + Sync {
    /// The settings every broker has.
    fn common(&self) -> Common;

    /// Connects (without subscribing). `link` hears of the connection going down and coming
    /// back, for a client that reconnects by itself between the node's subscriptions.
    fn connect(
        &self,
        link: Link,
    ) -> BoxFuture<'static, Result<PlainArc<dyn Broker>, BackplaneError>>;
}

/// Where a broker's client reports its connection going down and up: the live stream of the
/// subscription open at the time, if any.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) struct Link(tokio::sync::broadcast::Sender<bool>);

#[cfg_attr(not(feature = "nats"), allow(dead_code))]
impl Link {
    /// A link nobody listens to yet.
    pub(crate) fn new() -> Self {
        // A handful of flips between two reads of the live stream is already a flapping
        // link; a receiver that lags re-learns the state from the next flip.
        Link(tokio::sync::broadcast::channel(16).0)
    }

    /// Reports the connection up (`true`) or down.
    pub(crate) fn report(&self, up: bool) {
        // No receiver: no subscription open to hear it; the next one starts connected.
        let _ = self.0.send(up);
    }

    /// `live`, with the link's reports from now on merged into it as [`Incoming::Down`] and
    /// [`Incoming::Up`]. Ends when `live` ends.
    pub(crate) fn merge(&self, live: Live) -> Live {
        use futures_util::StreamExt;
        let reports = self.0.subscribe();
        let state = (live, reports, false);
        futures_util::stream::unfold(state, |(mut live, mut reports, mut quiet)| async move {
            loop {
                tokio::select! {
                    biased;
                    report = reports.recv(), if !quiet => match report {
                        Ok(up) => {
                            let item = if up { Incoming::Up } else { Incoming::Down };
                            return Some((item, (live, reports, quiet)));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        // The client is gone: the live stream ends with it.
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => quiet = true,
                    },
                    item = live.next() => return item.map(|item| (item, (live, reports, quiet))),
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// The link's reports reach the live stream in order, and the stream ends when the
    /// subscription's messages end, not when the reports do.
    #[tokio::test]
    async fn link_reports_merge_into_the_live_stream() {
        let link = Link::new();
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let messages = futures_util::stream::unfold(receiver, |mut r| async move {
            r.recv().await.map(|item| (item, r))
        })
        .boxed();
        let mut live = link.merge(messages);
        link.report(false);
        link.report(true);
        assert_eq!(live.next().await, Some(Incoming::Down));
        assert_eq!(live.next().await, Some(Incoming::Up));
        sender.send(Incoming::Unreadable).expect("open");
        assert_eq!(live.next().await, Some(Incoming::Unreadable));
        drop(link);
        drop(sender);
        assert_eq!(live.next().await, None);
    }
}
