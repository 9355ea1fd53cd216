//! Compressed streams whose bytes many subscribers share: the encoder of a stream class and the
//! self-contained blocks a subscriber gets outside the class's frames.
//!
//! A stream class (everyone who receives the same events in the same order) has one
//! [`ClassEncoder`]. Each event is fed into it once and flushed ([`ClassEncoder::event`]), so
//! the block it returns decodes at once, with the context of every earlier event of the same
//! compression frame. Every subscriber that holds that context (it received every block since
//! the frame began) gets the same block. A frame ends after a number of events or when the
//! class is idle ([`ClassEncoder::close`]); the next event opens a new one with no history, so
//! a subscriber can start there.
//!
//! What a subscriber outside a frame's context gets (it joined mid-frame, skipped, or has a
//! frame of its own to send in order) is a [`solo`] block: a self-contained compression of
//! those frames, which decodes wherever the stream stands between blocks. A subscriber that
//! leaves a frame mid-way first sends [`Codec::leave`]'s bytes, so its decoder sees a whole
//! frame, then solo blocks until the class's next frame begins.
//!
//! - **zstd**: a class frame is one zstd frame (`ZSTD_e_flush` after each event, `ZSTD_e_end`
//!   at its end); a zstd stream may be any sequence of frames. A solo block is a whole frame.
//!   Leaving a frame mid-way is its last block written by the subscriber: an empty raw block
//!   with the last-block bit (the three bytes zstd itself ends a flushed frame with), valid
//!   since the frames declare neither their size nor a checksum.
//! - **gzip**: one gzip member per response: [`Codec::preamble`] is its header, then raw
//!   deflate. A class frame is the deflate blocks between two full flushes (`Z_SYNC_FLUSH`
//!   after each event, `Z_FULL_FLUSH` at its end, which drops the back-references); a solo
//!   block is a fresh deflate stream, sync-flushed. Every block ends on a byte boundary with no
//!   final bit, so any sequence of them is one valid deflate stream. The member has no trailer:
//!   the stream ends when the connection closes, as an identity stream does.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};
use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective;
use zstd::zstd_safe::{CCtx, CParameter, InBuffer, OutBuffer};

/// A stream's content coding (`Content-Encoding`): what [`Subscribe::with_encoding`] asks for
/// and [`Subscription::encoding`] says the stream is sent in.
///
/// A compressed stream's bytes are shared by every subscription of its stream class (the same
/// topics and patterns, the same encoding): each event is compressed once per class, not per
/// subscriber (see the hub's [`Compression`] settings).
///
/// # Examples
///
/// ```
/// use ssehub::{Encoding, Event, Hub, Subscribe};
///
/// let hub = Hub::new();
/// let mut sub = hub.subscribe(Subscribe::from("t").with_encoding(Encoding::Zstd))?;
/// assert_eq!(sub.encoding(), Encoding::Zstd);
/// hub.publish("t", Event::new("hello"))?;
/// let bytes = sub.try_recv()?.expect("a batch").into_bytes();
/// assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`Subscribe::with_encoding`]: crate::Subscribe::with_encoding
/// [`Subscription::encoding`]: crate::Subscription::encoding
/// [`Compression`]: crate::Compression
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Encoding {
    /// The events as they are.
    #[default]
    Identity,
    /// `zstd`: a sequence of zstd frames.
    Zstd,
    /// `gzip`: one gzip member, without a trailer (the stream ends when the connection does).
    Gzip,
}

impl Encoding {
    /// The `Content-Encoding` value.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::Encoding::Zstd.as_str(), "zstd");
    /// ```
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }

    /// The codec, for a compressed encoding.
    pub(crate) fn codec(self) -> Option<Codec> {
        match self {
            Encoding::Identity => None,
            Encoding::Zstd => Some(Codec::Zstd),
            Encoding::Gzip => Some(Codec::Gzip),
        }
    }
}

impl From<Codec> for Encoding {
    fn from(codec: Codec) -> Encoding {
        match codec {
            Codec::Zstd => Encoding::Zstd,
            Codec::Gzip => Encoding::Gzip,
        }
    }
}

/// A content coding with shared compressed frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Codec {
    /// `Content-Encoding: zstd`.
    Zstd,
    /// `Content-Encoding: gzip`.
    Gzip,
}

/// The gzip header every gzip stream starts with: deflate, no name or time, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// The last block of a zstd frame: raw, empty, the last-block bit set.
const ZSTD_LAST_EMPTY_BLOCK: [u8; 3] = [1, 0, 0];

/// A zstd window of 256 KiB: a class frame holds a few hundred small events, and every
/// decoder (a browser per connection) allocates the window the frame asks for.
const ZSTD_WINDOW_LOG: i32 = 18;

/// Why a block could not be compressed. zstd and deflate fail only on a bad parameter or out of
/// memory; the caller ends the class's frame and sends the event on uncompressed paths' terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CompressError {
    /// zstd refused (its error name).
    #[error("zstd: {0}")]
    Zstd(&'static str),
    /// deflate refused.
    #[error("deflate: {0}")]
    Deflate(String),
}

impl Codec {
    /// What a stream starts with, before any block.
    pub(crate) fn preamble(self) -> &'static [u8] {
        match self {
            Codec::Zstd => &[],
            Codec::Gzip => &GZIP_HEADER,
        }
    }

    /// What a subscriber sends after the last class block it takes from a frame it leaves
    /// before the frame's end, so what it sent of the frame decodes as a whole.
    pub(crate) fn leave(self) -> &'static [u8] {
        match self {
            Codec::Zstd => &ZSTD_LAST_EMPTY_BLOCK,
            // Each class block ends with a sync flush: byte-aligned, no final bit.
            Codec::Gzip => &[],
        }
    }
}

/// One stream class's compressor: one context, fed each event once.
pub(crate) struct ClassEncoder {
    /// The codec's context.
    context: Context,
    /// Whether a frame is open (an event was fed since the last end).
    open: bool,
    /// Output buffer, reused.
    out: Vec<u8>,
}

/// A codec's streaming context.
enum Context {
    /// zstd's.
    Zstd(Box<CCtx<'static>>),
    /// deflate's (raw, no zlib header).
    Deflate(Box<Compress>),
}

impl std::fmt::Debug for ClassEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let codec = match self.context {
            Context::Zstd(_) => Codec::Zstd,
            Context::Deflate(_) => Codec::Gzip,
        };
        f.debug_struct("ClassEncoder").field("codec", &codec).field("open", &self.open).finish()
    }
}

impl ClassEncoder {
    /// A compressor for `codec` at `level` (zstd: 1 to 19; gzip: 1 to 9; clamped).
    pub(crate) fn new(codec: Codec, level: i32) -> Result<ClassEncoder, CompressError> {
        let context = match codec {
            Codec::Zstd => Context::Zstd(Box::new(zstd_context(level)?)),
            Codec::Gzip => Context::Deflate(Box::new(deflate_context(level))),
        };
        Ok(ClassEncoder { context, open: false, out: Vec::with_capacity(4096) })
    }

    /// Whether a frame is open: the last block fed did not end one.
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// Compresses `frame` into the open frame (opening one), flushed so it decodes at once;
    /// with `end`, the frame ends after it. Returns the block.
    pub(crate) fn event(&mut self, frame: &[u8], end: bool) -> Result<Bytes, CompressError> {
        self.out.clear();
        let result = match &mut self.context {
            Context::Zstd(cctx) => {
                let directive = if end {
                    ZSTD_EndDirective::ZSTD_e_end
                } else {
                    ZSTD_EndDirective::ZSTD_e_flush
                };
                zstd_stream(cctx, frame, directive, &mut self.out)
            }
            Context::Deflate(deflate) => {
                let flush = if end { FlushCompress::Full } else { FlushCompress::Sync };
                deflate_stream(deflate, frame, flush, &mut self.out)
            }
        };
        if let Err(error) = result {
            self.reset();
            return Err(error);
        }
        self.open = !end;
        Ok(Bytes::copy_from_slice(&self.out))
    }

    /// Ends the open frame (the class went idle); `None` when none is open.
    // Under loom there is no frame clock thread to call it.
    #[cfg_attr(ssehub_loom, allow(dead_code))]
    pub(crate) fn close(&mut self) -> Option<Bytes> {
        if !self.open {
            return None;
        }
        self.open = false;
        self.out.clear();
        let result = match &mut self.context {
            Context::Zstd(cctx) => {
                zstd_stream(cctx, &[], ZSTD_EndDirective::ZSTD_e_end, &mut self.out)
            }
            // A full flush after a sync flush writes one more empty stored block; ending the
            // frame needs only that the next block not look back, which a reset gives for free.
            Context::Deflate(deflate) => {
                deflate.reset();
                Ok(())
            }
        };
        match result {
            Ok(()) => Some(Bytes::copy_from_slice(&self.out)),
            Err(_) => {
                self.reset();
                Some(Bytes::from_static(&ZSTD_LAST_EMPTY_BLOCK))
            }
        }
    }

    /// Drops the context's state after a failure, so the next event opens a fresh frame.
    fn reset(&mut self) {
        self.open = false;
        match &mut self.context {
            Context::Zstd(cctx) => {
                let _ = cctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly);
            }
            Context::Deflate(deflate) => deflate.reset(),
        }
    }
}

/// A zstd context at `level`, windowed for small frames, declaring no size and no checksum.
fn zstd_context(level: i32) -> Result<CCtx<'static>, CompressError> {
    let mut cctx = CCtx::try_create().ok_or(CompressError::Zstd("out of memory"))?;
    let level = level.clamp(1, 19);
    for parameter in [
        CParameter::CompressionLevel(level),
        CParameter::WindowLog(ZSTD_WINDOW_LOG as u32),
        CParameter::ChecksumFlag(false),
        CParameter::ContentSizeFlag(false),
    ] {
        cctx.set_parameter(parameter).map_err(|code| CompressError::Zstd(zstd_error(code)))?;
    }
    Ok(cctx)
}

/// A raw deflate context at `level`.
fn deflate_context(level: i32) -> Compress {
    let level = u32::try_from(level.clamp(1, 9)).unwrap_or(6);
    Compress::new(Compression::new(level), false)
}

/// zstd's name for an error code.
fn zstd_error(code: usize) -> &'static str {
    zstd::zstd_safe::get_error_name(code)
}

/// Feeds `input` to `cctx` with `directive` until it is consumed and flushed, appending the
/// output to `out`.
fn zstd_stream(
    cctx: &mut CCtx<'static>,
    input: &[u8],
    directive: ZSTD_EndDirective,
    out: &mut Vec<u8>,
) -> Result<(), CompressError> {
    let mut input = InBuffer::around(input);
    loop {
        out.reserve(input.src.len().saturating_sub(input.pos()) / 2 + 64);
        let written = out.len();
        let left = {
            let mut output = OutBuffer::around_pos(out, written);
            cctx.compress_stream2(&mut output, &mut input, directive)
                .map_err(|code| CompressError::Zstd(zstd_error(code)))?
        };
        if left == 0 && input.pos() == input.src.len() {
            return Ok(());
        }
    }
}

/// Feeds `input` to `deflate` with `flush` until it is consumed and flushed, appending the
/// output to `out`.
fn deflate_stream(
    deflate: &mut Compress,
    input: &[u8],
    flush: FlushCompress,
    out: &mut Vec<u8>,
) -> Result<(), CompressError> {
    let start = deflate.total_in();
    loop {
        out.reserve(input.len() / 2 + 64);
        let taken = usize::try_from(deflate.total_in() - start).unwrap_or(input.len());
        let status = deflate
            .compress_vec(&input[taken..], out, flush)
            .map_err(|error| CompressError::Deflate(error.to_string()))?;
        let consumed = usize::try_from(deflate.total_in() - start).unwrap_or(0) == input.len();
        // Done once everything is in and the flush left room to spare (a full output buffer
        // may hold more to flush).
        if consumed && out.len() < out.capacity() && status != Status::BufError {
            return Ok(());
        }
    }
}

thread_local! {
    /// This thread's contexts for solo blocks: one per codec, reused (a zstd context costs a
    /// few hundred KiB to make), with the level it was made at.
    static SOLO: RefCell<SoloContexts> = const { RefCell::new(SoloContexts { zstd: None, deflate: None }) };
}

/// See [`SOLO`].
struct SoloContexts {
    /// zstd's, and its level.
    zstd: Option<(i32, CCtx<'static>)>,
    /// deflate's, and its level.
    deflate: Option<(i32, Compress)>,
}

/// `frames` as one self-contained block of `codec` at `level`: it decodes after any class
/// block, solo block or [`Codec::leave`], and leaves the stream where any of them could follow.
pub(crate) fn solo(codec: Codec, level: i32, frames: &[Bytes]) -> Result<Bytes, CompressError> {
    SOLO.with(|contexts| {
        let mut contexts = contexts.borrow_mut();
        let mut out = Vec::with_capacity(frames.iter().map(Bytes::len).sum::<usize>() / 2 + 64);
        match codec {
            Codec::Zstd => {
                if contexts.zstd.as_ref().is_none_or(|(made, _)| *made != level) {
                    contexts.zstd = Some((level, zstd_context(level)?));
                }
                let Some((_, cctx)) = contexts.zstd.as_mut() else {
                    return Err(CompressError::Zstd("no context"));
                };
                let last = frames.len().saturating_sub(1);
                for (i, frame) in frames.iter().enumerate() {
                    let directive = if i == last {
                        ZSTD_EndDirective::ZSTD_e_end
                    } else {
                        ZSTD_EndDirective::ZSTD_e_continue
                    };
                    if let Err(error) = zstd_stream(cctx, frame, directive, &mut out) {
                        let _ = cctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly);
                        return Err(error);
                    }
                }
                if frames.is_empty() {
                    zstd_stream(cctx, &[], ZSTD_EndDirective::ZSTD_e_end, &mut out)?;
                }
            }
            Codec::Gzip => {
                if contexts.deflate.as_ref().is_none_or(|(made, _)| *made != level) {
                    contexts.deflate = Some((level, deflate_context(level)));
                }
                let Some((_, deflate)) = contexts.deflate.as_mut() else {
                    return Err(CompressError::Deflate("no context".into()));
                };
                deflate.reset();
                let last = frames.len().saturating_sub(1);
                for (i, frame) in frames.iter().enumerate() {
                    let flush = if i == last { FlushCompress::Sync } else { FlushCompress::None };
                    deflate_stream(deflate, frame, flush, &mut out)?;
                }
                deflate.reset();
            }
        }
        Ok(Bytes::from(out))
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn event(i: usize) -> Bytes {
        Bytes::from(format!(
            "event: price\nid: 1a2-{i}\ndata: {{\"symbol\":\"S{}\",\"price\":{}.{}}}\n\n",
            i % 7,
            100 + i % 13,
            i % 100
        ))
    }

    /// Decodes a whole stream with the reference decoders: zstd's frame-by-frame decoder, or
    /// flate2's gzip reader (which needs the trailer the stream never sends: everything it
    /// decoded before it missed the trailer counts).
    pub(crate) fn decode(codec: Codec, stream: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match codec {
            Codec::Zstd => {
                let mut decoder = zstd::stream::read::Decoder::new(stream).expect("decoder");
                decoder.read_to_end(&mut out).expect("a valid zstd stream");
            }
            Codec::Gzip => {
                // flate2's readers call a stream without its final block truncated; the
                // decompressor itself decodes all it is given and says so.
                let mut raw = flate2::Decompress::new(false);
                let input = &stream[GZIP_HEADER.len()..];
                loop {
                    out.reserve(4096);
                    let taken = usize::try_from(raw.total_in()).expect("fits");
                    let status = raw
                        .decompress_vec(&input[taken..], &mut out, flate2::FlushDecompress::Sync)
                        .expect("a valid deflate stream");
                    assert_ne!(status, flate2::Status::StreamEnd, "no block is final");
                    let done = usize::try_from(raw.total_in()).expect("fits") == input.len();
                    if done && out.len() < out.capacity() {
                        break;
                    }
                }
                assert_eq!(&stream[..GZIP_HEADER.len()], &GZIP_HEADER);
            }
        }
        out
    }

    #[test]
    fn a_class_stream_decodes_to_its_events_and_each_block_decodes_at_once() {
        for codec in [Codec::Zstd, Codec::Gzip] {
            let mut encoder = ClassEncoder::new(codec, 3).expect("encoder");
            let mut stream = codec.preamble().to_vec();
            let mut identity = Vec::new();
            for i in 0..100 {
                let frame = event(i);
                let block = encoder.event(&frame, i % 16 == 15).expect("block");
                stream.extend_from_slice(&block);
                identity.extend_from_slice(&frame);
                // Flushed: everything so far decodes, with nothing held back.
                assert_eq!(decode(codec, &terminated(codec, &stream, &encoder)), identity);
            }
            assert!(
                stream.len() * 2 < identity.len(),
                "{codec:?}: {} of {}",
                stream.len(),
                identity.len()
            );
        }
    }

    /// `stream` as a subscriber leaving now would send it.
    fn terminated(codec: Codec, stream: &[u8], encoder: &ClassEncoder) -> Vec<u8> {
        let mut out = stream.to_vec();
        if encoder.is_open() {
            out.extend_from_slice(codec.leave());
        }
        out
    }

    #[test]
    fn a_subscriber_leaves_a_frame_mid_way_takes_solo_blocks_and_rejoins_at_the_next_frame() {
        for codec in [Codec::Zstd, Codec::Gzip] {
            let mut encoder = ClassEncoder::new(codec, 3).expect("encoder");
            let mut stream = codec.preamble().to_vec();
            let mut identity = Vec::new();
            // Events 0..5 shared, then it leaves for a frame of its own, then solo copies of
            // the class's events 5..8 (the frame ends after 7), then shared from 8.
            for i in 0..12 {
                let frame = event(i);
                let block = encoder.event(&frame, i == 7).expect("block");
                match i {
                    0..=4 | 8.. => stream.extend_from_slice(&block),
                    _ => {
                        if i == 5 {
                            stream.extend_from_slice(codec.leave());
                            let own = Bytes::from_static(b"event: own\ndata: x\n\n");
                            stream.extend_from_slice(
                                &solo(codec, 3, std::slice::from_ref(&own)).expect("own"),
                            );
                            identity.extend_from_slice(&own);
                        }
                        stream.extend_from_slice(
                            &solo(codec, 3, std::slice::from_ref(&frame)).expect("solo"),
                        );
                    }
                }
                identity.extend_from_slice(&frame);
            }
            assert_eq!(decode(codec, &terminated(codec, &stream, &encoder)), identity, "{codec:?}");
        }
    }

    #[test]
    fn an_idle_close_ends_the_frame_and_the_next_event_opens_one_a_joiner_can_start_at() {
        for codec in [Codec::Zstd, Codec::Gzip] {
            let mut encoder = ClassEncoder::new(codec, 3).expect("encoder");
            assert!(encoder.close().is_none(), "nothing open");
            let _ = encoder.event(&event(0), false).expect("block");
            let close = encoder.close().expect("an open frame closes");
            assert!(!encoder.is_open());
            // A joiner starts here: the preamble, then the next block, with no earlier context.
            let mut stream = codec.preamble().to_vec();
            stream.extend_from_slice(&encoder.event(&event(1), false).expect("block"));
            stream.extend_from_slice(codec.leave());
            assert_eq!(decode(codec, &stream), event(1), "{codec:?} after a close of {close:?}");
        }
    }

    #[test]
    fn solo_blocks_of_several_frames_and_of_none_decode_in_sequence() {
        for codec in [Codec::Zstd, Codec::Gzip] {
            let mut stream = codec.preamble().to_vec();
            let frames: Vec<Bytes> = (0..5).map(event).collect();
            stream.extend_from_slice(&solo(codec, 3, &frames).expect("solo"));
            stream.extend_from_slice(&solo(codec, 3, &[]).expect("empty"));
            stream.extend_from_slice(&solo(codec, 9, &frames[..1]).expect("another level"));
            let mut identity: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
            identity.extend_from_slice(&frames[0]);
            assert_eq!(decode(codec, &stream), identity, "{codec:?}");
        }
    }

    #[test]
    fn the_zstd_frames_declare_no_size_no_checksum_and_a_small_window() {
        let mut encoder = ClassEncoder::new(Codec::Zstd, 19).expect("encoder");
        let block = encoder.event(&event(0), false).expect("block");
        assert_eq!(&block[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a frame starts");
        let descriptor = block[4];
        assert_eq!(descriptor >> 6, 0, "no content size");
        assert_eq!(descriptor & 0b100, 0, "no checksum");
        assert_eq!(descriptor & 0b10_0000, 0, "not single-segment: a window is given");
        let window_log = 10 + (block[5] >> 3);
        assert!(window_log <= ZSTD_WINDOW_LOG as u8, "window 2^{window_log}");
    }
}
