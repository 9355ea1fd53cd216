//! `Batch`: everything one wake-up of a subscription hands to the socket.

use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

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
    /// The frames; those before `next` have been consumed through `Buf`.
    frames: Vec<Bytes>,
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
        Batch { frames, next: 0, remaining, lagged }
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
        self.frames.len() - self.next
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
        &self.frames[self.next..]
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
        self.frames.get(self.next).map_or(&[], |f| f.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of a batch");
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
    type IntoIter = std::iter::Skip<std::vec::IntoIter<Bytes>>;

    fn into_iter(self) -> Self::IntoIter {
        let next = self.next;
        self.frames.into_iter().skip(next)
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

    #[test]
    fn into_bytes_concatenates_the_rest() {
        let mut b = batch();
        b.advance(3);
        assert_eq!(b.into_bytes().as_ref(), b"de");
        assert_eq!(batch().into_bytes().as_ref(), b"abcde");
    }
}
