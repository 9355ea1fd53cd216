//! The wire format: events, their one-time encoding into shared `Bytes` frames, and the WHATWG
//! parser.
//!
//! This module knows nothing of the hub: it turns an [`Event`] into bytes and bytes back into
//! events.

// Issue 14's stream classes will feed it; until they land, only its tests do.
#[cfg(feature = "compression")]
#[allow(dead_code)]
pub(crate) mod compress;
mod encode;
mod event;
pub mod parse;

pub use event::Event;
pub(crate) use event::MAX_ID_BYTES;
