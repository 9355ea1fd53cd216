//! `Batch`: everything one wake-up of a subscription hands to the socket.

use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

use crate::engine::ring::Run;

/// The frames a subscription yields in one poll: everything that was queued, up to the hub's
/// batch cap, as shared [`Bytes`] (no copy).
///
/// `Batch` implements [`bytes::Buf`] with [`chunks_vectored`](Buf::chunks_vectored), so a
/// writer sends a burst in one vectored write; [`Batch::into_bytes`] concatenates for sinks that
/// want one chunk.
///
/// # Examples
///
/// ```
/// use bytes::Buf;
/// use ssehub::{Event, Hub};
///
/// let hub = Hub::new();
/// let mut sub = hub.subscribe("ticks")?;
/// hub.publish("ticks", Event::new("1"))?;
/// hub.publish("ticks", Event::new("2"))?;
///
/// let batch = sub.try_recv()?.expect("two frames are queued");
/// assert_eq!(batch.len(), 2);
/// assert_eq!(batch.remaining(), 18);
/// assert_eq!(batch.into_bytes().as_ref(), b"data: 1\n\ndata: 2\n\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct Batch {
    /// The frames, when the batch owns them; those before `next` have been consumed through
    /// `Buf`.
    frames: Vec<Bytes>,
    /// The frames, when they are a range of a topic ring's chunk (then `frames` is empty):
    /// one refcount for the whole batch. Turned into `frames` if a write ends mid-frame.
    run: Option<Run>,
    /// The first frame not yet fully consumed.
    next: usize,
    /// Bytes left across `frames[next..]`.
    remaining: usize,
    /// Frames lost to eviction just before this batch.
    lagged: u64,
}

impl Batch {
    /// A batch of `frames`, preceded by a loss of `lagged` frames.
    pub(crate) fn new(frames: Vec<Bytes>, lagged: u64) -> Batch {
        let remaining = frames.iter().map(Bytes::len).sum();
        Batch { frames, run: None, next: 0, remaining, lagged }
    }

    /// A batch of the frames of `run`, preceded by a loss of `lagged` frames.
    pub(crate) fn from_run(run: Run, lagged: u64) -> Batch {
        let remaining = run.frames().iter().map(Bytes::len).sum();
        Batch { frames: Vec::new(), run: Some(run), next: 0, remaining, lagged }
    }

    /// Every frame, consumed or not.
    fn all(&self) -> &[Bytes] {
        match &self.run {
            Some(run) => run.frames(),
            None => &self.frames,
        }
    }

    /// Number of frames not yet consumed.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::Batch::default().len(), 0);
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.all().len() - self.next
    }

    /// Whether every frame has been consumed.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ssehub::Batch::default().is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frames not yet consumed.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ssehub::Batch::default().frames().is_empty());
    /// ```
    #[must_use]
    pub fn frames(&self) -> &[Bytes] {
        &self.all()[self.next..]
    }

    /// How many frames this subscriber lost (`SlowPolicy::DropOldest`, or `Conflate` with a full
    /// queue) since its previous batch. The hub's lag event, when enabled, is the first frame of
    /// such a batch.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::Batch::default().lagged(), 0);
    /// ```
    #[must_use]
    pub fn lagged(&self) -> u64 {
        self.lagged
    }

    /// The sequence number of its first unconsumed frame, when the batch is a run of a topic's
    /// ring (for the `metrics` feature's latency; a batch of owned frames does not know it).
    #[cfg(all(feature = "metrics", any(feature = "server", feature = "axum", feature = "hyper")))]
    pub(crate) fn first_seq(&self) -> Option<u64> {
        self.run.as_ref().filter(|_| self.next == 0).map(|run| run.first_seq())
    }

    /// The remaining bytes as one chunk: the frame itself when there is one (no copy), one
    /// concatenation otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ssehub::Batch::default().into_bytes().is_empty());
    /// ```
    #[must_use]
    pub fn into_bytes(mut self) -> Bytes {
        if self.len() == 1 {
            if self.run.is_some() {
                return self.frames()[0].clone();
            }
            return self.frames.swap_remove(self.next);
        }
        let mut out = BytesMut::with_capacity(self.remaining);
        for frame in self.frames() {
            out.extend_from_slice(frame);
        }
        out.freeze()
    }
}

impl Buf for Batch {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.all().get(self.next).map_or(&[], |f| f.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of a batch");
        if let Some(run) = &self.run {
            // Whole frames of a shared chunk are skipped; a write that ends mid-frame turns
            // the rest into owned frames, which can be advanced in place.
            let frames = run.frames();
            while let Some(frame) = frames.get(self.next) {
                if cnt < frame.len() {
                    break;
                }
                cnt -= frame.len();
                self.remaining -= frame.len();
                self.next += 1;
            }
            if cnt == 0 {
                return;
            }
            self.frames = frames[self.next..].to_vec();
            self.run = None;
            self.next = 0;
        }
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(frame) = self.frames.get_mut(self.next) else {
                break;
            };
            if cnt < frame.len() {
                frame.advance(cnt);
                return;
            }
            cnt -= frame.len();
            // Release each frame as soon as it is written.
            *frame = Bytes::new();
            self.next += 1;
        }
        while self.frames.get(self.next).is_some_and(Bytes::is_empty) {
            self.next += 1;
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, frame) in dst.iter_mut().zip(self.frames()) {
            *slot = IoSlice::new(frame);
            n += 1;
        }
        n
    }
}

impl IntoIterator for Batch {
    type Item = Bytes;
    type IntoIter = std::vec::IntoIter<Bytes>;

    // The iterator type is the vector's, owned or not, so a shared batch's frames are copied
    // (refcounts) into one.
    #[allow(clippy::unnecessary_to_owned)]
    fn into_iter(mut self) -> Self::IntoIter {
        match self.run.take() {
            Some(run) => run.frames()[self.next..].to_vec().into_iter(),
            None => {
                self.frames.drain(..self.next);
                std::mem::take(&mut self.frames).into_iter()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch::new(vec![Bytes::from_static(b"abc"), Bytes::from_static(b"de")], 0)
    }

    #[test]
    fn advance_crosses_frames() {
        let mut b = batch();
        b.advance(4);
        assert_eq!(b.chunk(), b"e");
        assert_eq!(b.remaining(), 1);
        assert_eq!(b.len(), 1);
        b.advance(1);
        assert!(b.is_empty());
        assert_eq!(b.chunk(), b"");
    }

    #[test]
    fn vectored_chunks_cover_every_frame() {
        let b = batch();
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(b.chunks_vectored(&mut slices), 2);
        assert_eq!(&*slices[1], b"de");
    }

    /// A batch over a shared chunk of three frames, like the one a ring hands out.
    #[cfg(not(ssehub_loom))]
    fn shared() -> Batch {
        use crate::engine::queue::{Limits, Queue, SlowPolicy};
        use crate::engine::reader::{lone_feed, next_batch, Slot, View};

        let ring = crate::sync::Arc::new(crate::engine::ring::Ring::new());
        let slot = Slot::new(1, Queue::new(8, SlowPolicy::Disconnect), None);
        slot.add_feed(lone_feed(1, &slot.queue, &ring));
        for (seq, frame) in [b"abc".as_slice(), b"de", b"fgh"].into_iter().enumerate() {
            ring.push(seq as u64 + 1, &Bytes::from_static(frame));
        }
        let drained =
            next_batch(&slot, &mut View::new(&slot), || 3, Limits::ALL, None).expect("open");
        assert!(drained.frames.is_empty(), "one chunk: a run, no copies");
        Batch::from_run(drained.run.expect("a run"), 0)
    }

    #[cfg(not(ssehub_loom))]
    #[test]
    fn a_shared_batch_advances_by_whole_frames_then_owns_the_rest_mid_frame() {
        let mut b = shared();
        assert_eq!((b.len(), b.remaining()), (3, 8));
        b.advance(3);
        assert_eq!((b.chunk(), b.len(), b.remaining()), (&b"de"[..], 2, 5));
        b.advance(3);
        assert_eq!((b.chunk(), b.len(), b.remaining()), (&b"gh"[..], 1, 2));
        assert_eq!(b.frames(), [Bytes::from_static(b"gh")]);
        b.advance(2);
        assert!(b.is_empty());
    }

    #[cfg(not(ssehub_loom))]
    #[test]
    fn a_shared_batch_iterates_and_concatenates_like_an_owned_one() {
        let mut b = shared();
        b.advance(3);
        let rest: Vec<Bytes> = b.into_iter().collect();
        assert_eq!(rest, [Bytes::from_static(b"de"), Bytes::from_static(b"fgh")]);
        assert_eq!(shared().into_bytes().as_ref(), b"abcdefgh");
        let mut one = shared();
        one.advance(5);
        assert_eq!(one.into_bytes().as_ref(), b"fgh");
        let slices = &mut [IoSlice::new(&[]); 4];
        assert_eq!(shared().chunks_vectored(slices), 3);
    }

    #[test]
    fn into_bytes_concatenates_the_rest() {
        let mut b = batch();
        b.advance(3);
        assert_eq!(b.into_bytes().as_ref(), b"de");
        assert_eq!(batch().into_bytes().as_ref(), b"abcde");
    }
}
