//! The consumer side: a `Stream` of batches of shared frames.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_core::Stream;

use crate::engine::batch::Batch;
use crate::engine::class::Item;
use crate::engine::queue::Limits;
use crate::engine::reader::{self, Drained, Slot, Stop, View};
use crate::error::EndReason;
use crate::hub::Shared;
use crate::sync::{Arc, SharedStr};
use crate::Encoding;

/// A subscriber's id, unique within a hub; the target of
/// [`Hub::send_to`](crate::Hub::send_to).
///
/// # Examples
///
/// ```
/// let hub = ssehub::Hub::new();
/// let a = hub.subscribe("t")?;
/// let b = hub.subscribe("t")?;
/// assert_ne!(a.id(), b.id());
/// assert_eq!(a.id().to_string().parse::<u64>()?, a.id().as_u64());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(pub(crate) u64);

impl SubscriberId {
    /// The id as a number.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// assert!(hub.subscribe("t")?.id().as_u64() > 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The id with this number (for ids that travelled through a client or a database).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::SubscriberId::from_u64(7).as_u64(), 7);
    /// ```
    #[must_use]
    pub fn from_u64(id: u64) -> Self {
        SubscriberId(id)
    }
}

impl fmt::Display for SubscriberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A live subscription: a [`Stream`] of [`Batch`]es for one client.
///
/// Each poll hands over everything queued (up to the hub's batch cap) at once, so a burst
/// becomes one write. The stream ends when the hub shuts down (after the frames queued before
/// it), when the subscriber is disconnected as slow, or by [`Hub::disconnect`]; dropping the
/// subscription unregisters it.
///
/// [`Hub::disconnect`]: crate::Hub::disconnect
///
/// # Examples
///
/// ```
/// use futures_util::StreamExt;
/// use ssehub::{Event, Hub};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = Hub::new();
/// let mut sub = hub.subscribe("news")?;
/// hub.publish("news", Event::new("hello").with_id("1"))?;
/// let batch = sub.next().await.expect("one batch");
/// assert_eq!(batch.frames()[0].as_ref(), b"id: 1\ndata: hello\n\n");
/// hub.shutdown();
/// assert!(sub.next().await.is_none());
/// # Ok(())
/// # }
/// ```
pub struct Subscription {
    /// The hub, for limits and unregistering.
    shared: Arc<Shared>,
    /// This subscriber's queue.
    slot: Arc<Slot>,
    /// What its polls keep between them (its queue, its one feed).
    view: View,
    /// Frames that go before anything queued: the `connected` event or `retry:` hint, then the
    /// replayed events or a `reset`. Bounded by the hub's replay limit.
    pending: VecDeque<Bytes>,
    /// Why the stream ended, once it has.
    ended: Option<EndReason>,
    /// The session this connection serves, if any.
    session: Option<SharedStr>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.slot.id)
            .field("queued", &self.queued())
            .field("ended", &self.ended)
            .finish()
    }
}

impl Subscription {
    /// Wraps a registered slot.
    pub(crate) fn new(
        shared: Arc<Shared>,
        slot: Arc<Slot>,
        pending: VecDeque<Bytes>,
        session: Option<SharedStr>,
    ) -> Self {
        let view = View::new(&slot);
        Subscription { shared, slot, view, pending, ended: None, session }
    }

    /// The id of the session this subscription serves, when the hub issues sessions.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// assert_eq!(hub.subscribe("t")?.session_id(), None);
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    #[must_use]
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// This subscriber's id.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let sub = hub.subscribe("t")?;
    /// hub.send_to(sub.id(), ssehub::Event::new("just for you"))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn id(&self) -> SubscriberId {
        SubscriberId(self.slot.id)
    }

    /// Number of frames waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let sub = hub.subscribe("t")?;
    /// hub.publish("t", ssehub::Event::new("x"))?;
    /// assert_eq!(sub.queued(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn queued(&self) -> usize {
        self.slot.queue.len() + self.slot.ring_waiting()
    }

    /// Why the stream ended (`None` while it is live, even if it has been closed and still has
    /// frames to hand over).
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{EndReason, Hub};
    /// let hub = Hub::new();
    /// let mut sub = hub.subscribe("t")?;
    /// hub.shutdown();
    /// assert!(matches!(sub.try_recv(), Err(EndReason::Shutdown)));
    /// assert_eq!(sub.end_reason(), Some(EndReason::Shutdown));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn end_reason(&self) -> Option<EndReason> {
        self.ended
    }

    /// Waits for the next batch; `None` once the stream has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: frames stay queued until a call returns them.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hub = ssehub::Hub::new();
    /// let mut sub = hub.subscribe("t")?;
    /// hub.publish("t", ssehub::Event::new("x"))?;
    /// assert_eq!(sub.recv().await.map(|b| b.len()), Some(1));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Option<Batch> {
        poll_fn(|cx| self.poll_batch(Some(cx))).await
    }

    /// The next batch if one is ready: `Ok(None)` when nothing is queued, `Err` once the stream
    /// has ended.
    ///
    /// # Errors
    ///
    /// The [`EndReason`] once the stream has ended and everything queued was handed over.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let mut sub = hub.subscribe("t")?;
    /// assert!(sub.try_recv()?.is_none());
    /// hub.publish("t", ssehub::Event::new("x"))?;
    /// assert!(sub.try_recv()?.is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv(&mut self) -> Result<Option<Batch>, EndReason> {
        match self.poll_batch(None) {
            Poll::Ready(Some(batch)) => Ok(Some(batch)),
            Poll::Ready(None) => Err(self.ended.unwrap_or(EndReason::Dropped)),
            Poll::Pending => Ok(None),
        }
    }

    /// The content coding of this stream's batches: what [`Subscribe::with_encoding`] asked
    /// for, or [`Encoding::Identity`] when the hub sends it as it is (compression off, at its
    /// limit of stream classes, a stream at an interval or one that conflates).
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Encoding, Hub, Subscribe};
    /// let hub = Hub::new();
    /// let sub = hub.subscribe(Subscribe::from("t").with_encoding(Encoding::Gzip))?;
    /// assert_eq!(sub.encoding(), Encoding::Gzip);
    /// assert_eq!(hub.subscribe("t")?.encoding(), Encoding::Identity);
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    ///
    /// [`Subscribe::with_encoding`]: crate::Subscribe::with_encoding
    #[must_use]
    pub fn encoding(&self) -> Encoding {
        self.view.class.as_ref().map_or(Encoding::Identity, |class| Encoding::from(class.codec))
    }

    /// The stream's poll, with `cx` absent for `try_recv`.
    pub(crate) fn poll_batch(&mut self, cx: Option<&mut Context<'_>>) -> Poll<Option<Batch>> {
        if self.ended.is_some() {
            return Poll::Ready(None);
        }
        if self.view.class.is_some() {
            return self.poll_compressed(cx);
        }
        let config = self.shared.config();
        // Pending frames (connected, replay or reset) go out before live frames, in batches of
        // the usual size; live frames wait in the queue meanwhile, within its bound.
        let take = self.pending.len().min(config.max_batch_frames);
        let mut frames: Vec<Bytes> = self.pending.drain(..take).collect();
        if !self.pending.is_empty() {
            return Poll::Ready(Some(Batch::new(frames, 0)));
        }
        let room = config.max_batch_frames - frames.len();
        if room == 0 {
            return Poll::Ready(Some(Batch::new(frames, 0)));
        }
        let waker = cx.map(|cx| cx.waker());
        let drained = match self.next_batch(room, waker) {
            Ok(drained) => drained,
            Err(_) if !frames.is_empty() => return Poll::Ready(Some(Batch::new(frames, 0))),
            Err(reason) => {
                self.ended = Some(reason);
                return Poll::Ready(None);
            }
        };
        if frames.is_empty() && drained.is_empty() && drained.lagged == 0 {
            return Poll::Pending;
        }
        if drained.lagged > 0 && self.shared.config().lag_event {
            frames.push(crate::hub::lag_frame(drained.lagged));
        }
        if let Some(run) = drained.run {
            if frames.is_empty() {
                // The usual case: the batch is a range of the ring's chunk, one refcount.
                return Poll::Ready(Some(Batch::from_run(run, drained.lagged)));
            }
            frames.extend_from_slice(run.frames());
        } else if frames.is_empty() {
            // The drain's own vector is the batch.
            frames = drained.frames;
        } else {
            frames.extend(drained.frames);
        }
        Poll::Ready(Some(Batch::new(frames, drained.lagged)))
    }
}

impl Subscription {
    /// [`Subscription::poll_batch`] for a compressed stream: the same takes, turned into the
    /// bytes of its coding by its [`ClassView`] (a run of its class's blocks goes as it is).
    fn poll_compressed(&mut self, cx: Option<&mut Context<'_>>) -> Poll<Option<Batch>> {
        let config = self.shared.config();
        let take = self.pending.len().min(config.max_batch_frames);
        let mut front: Vec<Bytes> = self.pending.drain(..take).collect();
        let room = config.max_batch_frames - front.len();
        if !self.pending.is_empty() || room == 0 {
            return Poll::Ready(Some(self.encoded(front, false, Vec::new(), 0)));
        }
        let waker = cx.map(|cx| cx.waker());
        let drained = match self.next_batch(room, waker) {
            Ok(drained) => drained,
            Err(_) if !front.is_empty() => {
                return Poll::Ready(Some(self.encoded(front, false, Vec::new(), 0)));
            }
            Err(reason) => {
                self.ended = Some(reason);
                return Poll::Ready(None);
            }
        };
        if front.is_empty() && drained.is_empty() && drained.lagged == 0 {
            return Poll::Pending;
        }
        if drained.lagged > 0 && self.shared.config().lag_event {
            front.push(crate::hub::lag_frame(drained.lagged));
        }
        let mut items = drained.items;
        if let Some(run) = drained.run {
            if front.is_empty() {
                // The usual case: inside the class's frame, a run of its blocks as they are.
                if let Some(class) = self.view.class.as_mut() {
                    class.sent_blocks(run.ends_frame());
                }
                return Poll::Ready(Some(Batch::from_run(run, drained.lagged)));
            }
            items = (run.start..run.end)
                .map(|index| Item::Class { chunk: run.chunk.clone(), index })
                .collect();
        }
        Poll::Ready(Some(self.encoded(front, drained.skipped > 0, items, drained.lagged)))
    }

    /// A batch of `front` and `items` in the stream's coding.
    fn encoded(
        &mut self,
        front: Vec<Bytes>,
        skipped: bool,
        items: Vec<Item>,
        lagged: u64,
    ) -> Batch {
        let frames = match self.view.class.as_mut() {
            Some(class) => class.encode(front, skipped, items),
            None => front,
        };
        Batch::new(frames, lagged)
    }

    /// The hub's counters, for a writer's per-batch metrics.
    #[cfg(any(feature = "server", feature = "axum", feature = "hyper"))]
    pub(crate) fn counters(&self) -> &crate::engine::stats::Counters {
        &self.shared.engine.counters
    }

    /// Ready once the hub has dropped this subscriber as slow (nothing is taken from it);
    /// otherwise registers `cx`'s waker to hear of it.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn poll_dropped_as_slow(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.slot.queue.dropped_as_slow(cx.waker()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Takes the next batch from the subscriber's rings and queue (see `reader.rs`), counting
    /// the ring entries it skipped, and dropping it from the hub when it finds itself more
    /// than its bound behind.
    fn next_batch(&mut self, room: usize, waker: Option<&Waker>) -> Result<Drained, EndReason> {
        let limits = Limits { frames: room, bytes: self.shared.config().max_batch_bytes };
        let shared = &self.shared;
        match reader::next_batch(&self.slot, &mut self.view, || shared.watermark(), limits, waker) {
            Ok(drained) => {
                if drained.skipped > 0 {
                    self.shared.engine.counters.skipped(drained.skipped);
                }
                Ok(drained)
            }
            Err(Stop::Ended(reason)) => Err(reason),
            Err(Stop::Overflowed) => {
                // Fell more than its bound behind between two scans of a publisher (the scans
                // catch it otherwise): dropped here, as a publish would have.
                self.shared.engine.counters.overflowed();
                #[cfg(feature = "tracing")]
                tracing::info!(
                    target: "ssehub",
                    subscriber = self.slot.id,
                    reason = "slow",
                    "subscriber dropped"
                );
                Shared::remove(&self.shared, self.slot.id);
                Err(EndReason::Slow)
            }
        }
    }
}

impl Stream for Subscription {
    type Item = Batch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        self.get_mut().poll_batch(Some(cx))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        Shared::unsubscribe(&self.shared, &self.slot, self.session.as_ref());
    }
}
