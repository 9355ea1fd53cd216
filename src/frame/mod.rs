//! The wire format: events, their one-time encoding into shared `Bytes` frames, and the WHATWG
//! parser.
//!
//! This module knows nothing of the hub: it turns an [`Event`] into bytes and bytes back into
//! events.

pub(crate) mod compress;
mod encode;
mod event;
pub mod parse;

pub use compress::Encoding;
pub use event::Event;
pub(crate) use event::MAX_ID_BYTES;
