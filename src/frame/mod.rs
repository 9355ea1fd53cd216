//! The wire format: events, their one-time encoding into shared `Bytes` frames, and the WHATWG
//! parser.
//!
//! This module knows nothing of the hub: it turns an [`Event`] into bytes and bytes back into
//! events.

// The codec of issue 14's compress-once stream classes. Until the engine's classes feed it,
// only its tests build it (with the zstd and flate2 dev-dependencies).
#[cfg(test)]
pub(crate) mod compress;
mod encode;
mod event;
pub mod parse;

pub use event::Event;
pub(crate) use event::MAX_ID_BYTES;
