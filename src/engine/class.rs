//! Stream classes: the subscribers that receive the same events in the same order (the same
//! topics and patterns, in the same encoding) share one compressor and one ring of compressed
//! blocks.
//!
//! A publish feeds its frame, under the sequencer, to every class that receives the topic:
//! compressed once into the class's open compression frame and flushed, so the block decodes at
//! once ([`Class::deliver`]). The block goes into the class's ring beside the frame itself
//! ([`Side`]), and every member reads the ring like any ring reader: a member in the frame's
//! context sends the block; one outside it (it joined mid-frame, skipped ahead, or sent a frame
//! of its own) sends the event compressed alone, made once per entry by the first member that
//! needs it and shared by the rest, until the next frame begins. A frame ends after
//! `frame_events` events or once it is `frame_time` old (at the next event, or by the frame
//! clock when the class goes quiet), so a member is back in the shared frame within one frame.
//!
//! [`ClassView`] is a member stream's side of this: what it last sent of the class's frame, and
//! the state machine that turns what a look took (blocks, and frames of its own) into bytes.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::engine::reader::Readers;
use crate::engine::ring::{Chunk, Extra, Ring, Side};
use crate::engine::stats::FanOut;
use crate::error::EndReason;
use crate::frame::compress::{solo, ClassEncoder, Codec, Encoding};
use crate::sync::{arc_swap, lock, rank, Arc, Mutex, SharedStr};

/// A hub's compression settings ([`HubBuilder::with_compression`]): how long the compression
/// frames its stream classes share run, the levels, and how many classes may exist.
///
/// A frame ends after `frame_events` events (256 by default) or once it is `frame_time` old
/// (one second), whichever comes first; a longer frame compresses better (the demo market
/// feed: 0.266x identity at 128 events, 0.246x at 256, against 0.214x for a compressor per
/// connection, `docs/benchmarks.md`), a shorter one lets a subscriber that joined or fell
/// outside the frame back in sooner (until then it gets each event compressed alone, 0.88x).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ssehub::{Compression, Encoding, Hub};
///
/// let hub = Hub::builder()
///     .with_compression(Some(
///         Compression::new()
///             .with_frame_events(128)
///             .with_frame_time(Duration::from_millis(500))
///             .with_level(Encoding::Zstd, 6)
///             .with_max_classes(256),
///     ))
///     .build();
/// # drop(hub);
/// ```
///
/// [`HubBuilder::with_compression`]: crate::HubBuilder::with_compression
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// See [`Framing`].
    pub(crate) framing: Framing,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::new()
    }
}

impl Compression {
    /// The defaults: frames of 256 events or one second, zstd level 3, gzip level 6, at most
    /// 1,024 classes.
    ///
    /// # Examples
    ///
    /// ```
    /// let settings = ssehub::Compression::new();
    /// # let _ = settings;
    /// ```
    #[must_use]
    pub fn new() -> Compression {
        Compression {
            framing: Framing {
                frame_events: 256,
                frame_time: Duration::from_secs(1),
                zstd_level: 3,
                gzip_level: 6,
                max_classes: 1024,
            },
        }
    }

    /// The most events in one compression frame (at least 1).
    ///
    /// # Examples
    ///
    /// ```
    /// let settings = ssehub::Compression::new().with_frame_events(64);
    /// # let _ = settings;
    /// ```
    #[must_use]
    pub fn with_frame_events(mut self, events: usize) -> Compression {
        self.framing.frame_events = events.max(1);
        self
    }

    /// The longest a compression frame stays open: a subscriber's own frames and a new
    /// subscriber's first shared block wait at most this long for a frame boundary (at least
    /// 10 ms).
    ///
    /// # Examples
    ///
    /// ```
    /// let settings = ssehub::Compression::new().with_frame_time(std::time::Duration::from_millis(250));
    /// # let _ = settings;
    /// ```
    #[must_use]
    pub fn with_frame_time(mut self, time: Duration) -> Compression {
        self.framing.frame_time = time.max(Duration::from_millis(10));
        self
    }

    /// The compression level of `encoding` (zstd 1 to 19, gzip 1 to 9; clamped). Identity has
    /// none: ignored.
    ///
    /// # Examples
    ///
    /// ```
    /// let settings = ssehub::Compression::new().with_level(ssehub::Encoding::Gzip, 1);
    /// # let _ = settings;
    /// ```
    #[must_use]
    pub fn with_level(mut self, encoding: Encoding, level: i32) -> Compression {
        match encoding.codec() {
            Some(Codec::Zstd) => self.framing.zstd_level = level.clamp(1, 19),
            Some(Codec::Gzip) => self.framing.gzip_level = level.clamp(1, 9),
            None => {}
        }
        self
    }

    /// The most stream classes at once (each costs a compressor, a few hundred KiB for zstd,
    /// and compression work on every publish to its topics); a subscription that would make
    /// one more is sent identity ([`Subscription::encoding`](crate::Subscription::encoding)
    /// says so).
    ///
    /// # Examples
    ///
    /// ```
    /// let settings = ssehub::Compression::new().with_max_classes(64);
    /// # let _ = settings;
    /// ```
    #[must_use]
    pub fn with_max_classes(mut self, classes: usize) -> Compression {
        self.framing.max_classes = classes;
        self
    }
}

/// The compression settings as the engine keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Framing {
    /// Events per compression frame at most.
    pub(crate) frame_events: usize,
    /// Longest time a frame stays open.
    pub(crate) frame_time: Duration,
    /// zstd's level.
    pub(crate) zstd_level: i32,
    /// gzip's level.
    pub(crate) gzip_level: i32,
    /// Most classes at once; a subscription past it is sent identity.
    pub(crate) max_classes: usize,
}

impl Framing {
    /// The level of `codec`.
    pub(crate) fn level(&self, codec: Codec) -> i32 {
        match codec {
            Codec::Zstd => self.zstd_level,
            Codec::Gzip => self.gzip_level,
        }
    }
}

/// What makes two subscriptions one class: the encoding, and the distinct topics and patterns
/// they name, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ClassKey {
    /// The encoding.
    pub(crate) codec: Codec,
    /// The topics, sorted.
    pub(crate) topics: Vec<SharedStr>,
    /// The patterns' sources, sorted.
    pub(crate) patterns: Vec<Box<str>>,
}

impl ClassKey {
    /// The key of subscriptions to `topics` and `patterns` (distinct) in `codec`.
    pub(crate) fn new(
        codec: Codec,
        topics: &[SharedStr],
        patterns: &[crate::topic::Pattern],
    ) -> ClassKey {
        let mut topics = topics.to_vec();
        topics.sort_unstable();
        let mut patterns: Vec<Box<str>> = patterns.iter().map(|p| Box::from(p.as_str())).collect();
        patterns.sort_unstable();
        ClassKey { codec, topics, patterns }
    }
}

/// One stream class.
#[derive(Debug)]
pub(crate) struct Class {
    /// What its members share.
    pub(crate) key: ClassKey,
    /// The compressed blocks, with the events beside them.
    pub(crate) ring: Arc<Ring>,
    /// Its members, with their cursors: the set a publish counts and scans.
    pub(crate) readers: Arc<Readers>,
    /// The compressor and the open frame; taken under the sequencer (a publish, the frame
    /// clock) or the registry's writer lock (a member joining), so never contended by readers.
    framing: Mutex<Open, rank::Framing>,
    /// The level its blocks are compressed at (solo blocks too).
    pub(crate) level: i32,
}

/// A class's compressor and where its frame stands.
#[derive(Debug)]
struct Open {
    /// The compressor.
    encoder: Option<ClassEncoder>,
    /// Events in the open frame.
    events: usize,
    /// When the open frame began.
    opened: Instant,
    /// The settings.
    framing: Framing,
}

/// Where a member starts in its class's ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// At a frame boundary: the next block begins a frame.
    InFrame,
    /// Inside an open frame whose start it did not get: solo blocks until the frame ends.
    Outside,
}

impl Class {
    /// A class for `key`, its compressor made for `framing`'s level (a class whose compressor
    /// cannot be made sends every event as a solo block).
    pub(crate) fn new(key: ClassKey, framing: Framing) -> Class {
        let level = framing.level(key.codec);
        let encoder = ClassEncoder::new(key.codec, level).ok();
        Class {
            key,
            ring: Arc::new(Ring::new()),
            readers: Arc::new(arc_swap(crate::engine::idmap::IdMap::new())),
            framing: Mutex::new(Open { encoder, events: 0, opened: Instant::now(), framing }),
            level,
        }
    }

    /// The encoding.
    pub(crate) fn codec(&self) -> Codec {
        self.key.codec
    }

    /// A member joining with `capacity`: its cursor in the ring (the tail) and whether it
    /// starts inside an open frame. Read together under the framing lock, which every push
    /// holds, so the two agree.
    pub(crate) fn join(&self, capacity: usize) -> (u64, Start) {
        let open = lock(&self.framing);
        let cursor = self.ring.join(capacity);
        let start = match &open.encoder {
            Some(encoder) if encoder.is_open() => Start::Outside,
            _ => Start::InFrame,
        };
        (cursor, start)
    }

    /// Feeds event `seq`'s `frame` to the class: one block into its ring (the frame ended
    /// after it when it is full or old), counted for every member. Under the sequencer.
    pub(crate) fn deliver(&self, seq: u64, frame: &Bytes, fan: &mut FanOut) {
        let members = self.readers.load();
        if members.is_empty() {
            return;
        }
        let mut open = lock(&self.framing);
        let now = Instant::now();
        if open.encoder.as_ref().is_some_and(|e| !e.is_open()) {
            open.events = 0;
            open.opened = now;
        }
        open.events += 1;
        let ends = open.events >= open.framing.frame_events
            || now.duration_since(open.opened) >= open.framing.frame_time;
        let (block, ends) = self.block(&mut open, frame, ends);
        let scan =
            self.ring.push_class(seq, &block, Extra { side: Side::new(frame.clone()), ends });
        drop(open);
        fan.delivered += members.len() as u64;
        if scan {
            let slow = self.ring.scan(&members).slow;
            for member in &slow {
                fan.delivered = fan.delivered.saturating_sub(1);
                if member.queue.close_discarding(EndReason::Slow) {
                    fan.slow += 1;
                    fan.slow_ids.push(member.id);
                }
            }
            if !slow.is_empty() {
                self.readers
                    .rcu(|set| slow.iter().fold((**set).clone(), |set, m| set.remove(m.id)));
            }
        }
        fan.classes.push(self.ring.clone());
    }

    /// `frame`'s block in the open frame, and whether it ends the frame. A compressor that
    /// fails (out of memory) is dropped: the frame is ended for whoever was in it and the
    /// event goes as a solo block, as every later one does.
    fn block(&self, open: &mut Open, frame: &Bytes, ends: bool) -> (Bytes, bool) {
        let mut was_open = false;
        if let Some(encoder) = open.encoder.as_mut() {
            was_open = encoder.is_open();
            if let Ok(block) = encoder.event(frame, ends) {
                return (block, ends);
            }
            open.encoder = None;
        }
        let codec = self.key.codec;
        // Whoever was inside the frame leaves it; with no frame open there is nothing to end.
        let mut block = if was_open { codec.leave().to_vec() } else { Vec::new() };
        if let Ok(alone) = solo(codec, self.level, std::slice::from_ref(frame)) {
            block.extend_from_slice(&alone);
        }
        (Bytes::from(block), true)
    }

    /// Ends the open frame if it is older than the frame time (the class went quiet), so its
    /// members' own frames and new members need not wait for the next event. `seq` is the
    /// sequencer's value; under it. Returns whether it pushed (the caller wakes the ring).
    // Under loom there is no frame clock thread to call it.
    #[cfg_attr(ssehub_loom, allow(dead_code))]
    pub(crate) fn close_if_idle(&self, seq: u64, now: Instant) -> bool {
        if self.readers.load().is_empty() {
            return false;
        }
        let mut open = lock(&self.framing);
        let due = now.duration_since(open.opened) >= open.framing.frame_time;
        let Some(encoder) = open.encoder.as_mut().filter(|e| e.is_open() && due) else {
            return false;
        };
        let Some(block) = encoder.close() else {
            return false;
        };
        let _ =
            self.ring.push_class(seq, &block, Extra { side: Side::new(Bytes::new()), ends: true });
        true
    }
}

/// A member stream's side of its class: the encoding, the level, and where it stands in the
/// class's frames. Kept in the stream itself (only its own polls change it).
#[derive(Debug)]
pub(crate) struct ClassView {
    /// The encoding.
    pub(crate) codec: Codec,
    /// The level of its solo blocks (1 to 19: a byte, so the view fits in the padding of the
    /// stream's state, which every idle connection keeps).
    level: i8,
    /// Whether the stream's preamble went out.
    started: bool,
    /// Outside the class's frame: solo blocks until a frame ends.
    outside: bool,
    /// In the class's frame, and the last block it sent did not end it: leaving needs the
    /// codec's closing bytes.
    mid_frame: bool,
}

/// What a look at a compressed stream took, in order.
#[derive(Debug)]
pub(crate) enum Item {
    /// A frame of the subscriber's own (or one handed over from a ring it left).
    Own(Bytes),
    /// Entry `index` of a class ring's `chunk`.
    Class {
        /// The chunk.
        chunk: Arc<Chunk>,
        /// The entry.
        index: usize,
    },
}

impl ClassView {
    /// The view of a stream in `codec` at `level` that starts as `start` says.
    pub(crate) fn new(codec: Codec, level: i32, start: Start) -> ClassView {
        ClassView {
            codec,
            level: i8::try_from(level).unwrap_or(i8::MAX),
            started: false,
            outside: start == Start::Outside,
            mid_frame: false,
        }
    }

    /// Whether the stream may send the class's blocks as they are: preamble sent, inside the
    /// class's frames. Then a run of blocks is its batch as it stands.
    pub(crate) fn takes_blocks(&self) -> bool {
        self.started && !self.outside
    }

    /// Notes that a run of blocks went out as they are, the last one ending a frame or not.
    pub(crate) fn sent_blocks(&mut self, last_ends_frame: bool) {
        self.mid_frame = !last_ends_frame;
    }

    /// Notes that the stream skipped entries (it fell behind): it is outside the class's
    /// frame from here on.
    fn skipped(&mut self, out: &mut Vec<Bytes>) {
        self.leave(out);
        self.outside = true;
    }

    /// Leaves the class's frame if it is inside one mid-way.
    fn leave(&mut self, out: &mut Vec<Bytes>) {
        if !self.outside && self.mid_frame {
            let bytes = self.codec.leave();
            if !bytes.is_empty() {
                out.push(Bytes::from_static(bytes));
            }
            self.outside = true;
        }
        self.mid_frame = false;
    }

    /// The bytes of one batch: `front` (frames of its own that go first: pending opening
    /// frames, a lag notice), then `items` in order, after a skip of ring entries when
    /// `skipped`.
    pub(crate) fn encode(
        &mut self,
        front: Vec<Bytes>,
        skipped: bool,
        items: Vec<Item>,
    ) -> Vec<Bytes> {
        let mut out = Vec::with_capacity(items.len() + 2);
        if !self.started {
            self.started = true;
            let preamble = self.codec.preamble();
            if !preamble.is_empty() {
                out.push(Bytes::from_static(preamble));
            }
        }
        if skipped {
            self.skipped(&mut out);
        }
        let mut own = front;
        for item in items {
            match item {
                Item::Own(frame) => own.push(frame),
                Item::Class { chunk, index } => {
                    self.own_frames(&mut own, &mut out);
                    self.class_entry(&chunk, index, &mut out);
                }
            }
        }
        self.own_frames(&mut own, &mut out);
        out
    }

    /// Sends the frames of its own collected so far, as one solo block, after leaving the
    /// class's frame.
    fn own_frames(&mut self, own: &mut Vec<Bytes>, out: &mut Vec<Bytes>) {
        if own.is_empty() {
            return;
        }
        self.leave(out);
        if let Ok(block) = solo(self.codec, i32::from(self.level), own) {
            out.push(block);
        }
        own.clear();
    }

    /// Sends a class entry: its block inside the frame, its solo block outside it.
    fn class_entry(&mut self, chunk: &Arc<Chunk>, index: usize, out: &mut Vec<Bytes>) {
        let Some(entry) = chunk.class_entry(index) else {
            return;
        };
        if !self.outside {
            out.push(entry.block.clone());
            self.mid_frame = !entry.ends;
            return;
        }
        if !entry.side.identity.is_empty() {
            if let Some(block) = shared_solo(self.codec, i32::from(self.level), entry.side) {
                out.push(block);
            }
        }
        if entry.ends {
            // The next block begins a frame: back in the class's context.
            self.outside = false;
            self.mid_frame = false;
        }
    }
}

/// The entry's event compressed alone: made by the first member that needs it, then shared.
fn shared_solo(codec: Codec, level: i32, side: &Side) -> Option<Bytes> {
    if let Some(made) = side.solo.load().as_ref() {
        return Some(Bytes::clone(made));
    }
    let block = solo(codec, level, std::slice::from_ref(&side.identity)).ok()?;
    // Two members racing here both make it; either copy is the same bytes.
    let made = Arc::new(block.clone());
    side.solo.rcu(|_| Some(made.clone()));
    Some(block)
}
