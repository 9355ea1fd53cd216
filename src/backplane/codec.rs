//! The event on the broker: its fields, not its SSE frame, since each node encodes the frame
//! itself with the id the broker assigned (the id is the one field only known after the write).
//!
//! Layout: `b'S'`, version `1`, a flags byte (data, event, retry, key), a comment count, then
//! each comment, the event name and the key as a big-endian `u32` length and bytes, the retry
//! as a big-endian `u64`, and the data as the rest.

use crate::frame::Event;

/// The layout's first two bytes.
const MAGIC: [u8; 2] = [b'S', 1];
/// Flag: data present.
const DATA: u8 = 1;
/// Flag: event name present.
const NAME: u8 = 2;
/// Flag: retry present.
const RETRY: u8 = 4;
/// Flag: conflation key present.
const KEY: u8 = 8;

/// Why a payload from the broker is not an event this crate wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CodecError {
    /// Wrong magic or version.
    #[error("not an ssehub event")]
    Magic,
    /// Ends in the middle of a field.
    #[error("truncated event")]
    Truncated,
    /// A text field is not UTF-8.
    #[error("event field is not UTF-8")]
    Utf8,
}

/// Appends a length-prefixed string.
fn put(out: &mut Vec<u8>, text: &str) {
    // Events are bounded by the hub's size limit, far below 4 GiB.
    out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// The event's fields as stored on the broker (its id is not stored).
pub(crate) fn encode(event: &Event) -> Vec<u8> {
    let data = event.data.as_deref().unwrap_or("");
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&MAGIC);
    let flags = [
        (event.data.is_some(), DATA),
        (event.event.is_some(), NAME),
        (event.retry.is_some(), RETRY),
        (event.key.is_some(), KEY),
    ]
    .iter()
    .filter(|(present, _)| *present)
    .fold(0, |flags, (_, flag)| flags | flag);
    out.push(flags);
    out.extend_from_slice(&u32::try_from(event.comments.len()).unwrap_or(0).to_be_bytes());
    for comment in &event.comments {
        put(&mut out, comment);
    }
    if let Some(name) = &event.event {
        put(&mut out, name);
    }
    if let Some(key) = &event.key {
        put(&mut out, key);
    }
    if let Some(retry) = event.retry {
        out.extend_from_slice(&retry.to_be_bytes());
    }
    out.extend_from_slice(data.as_bytes());
    out
}

/// A reader over a payload.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A big-endian `u32`.
    fn u32(&mut self) -> Result<u32, CodecError> {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(bytes))
    }

    /// A length-prefixed string.
    fn text(&mut self) -> Result<String, CodecError> {
        let len = usize::try_from(self.u32()?).map_err(|_| CodecError::Truncated)?;
        text(self.take(len)?)
    }
}

/// Bytes as an owned string.
fn text(bytes: &[u8]) -> Result<String, CodecError> {
    std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| CodecError::Utf8)
}

/// The event a payload holds.
pub(crate) fn decode(payload: &[u8]) -> Result<Event, CodecError> {
    let mut reader = Reader(payload);
    if reader.take(2)? != MAGIC {
        return Err(CodecError::Magic);
    }
    let flags = reader.take(1)?[0];
    let count = reader.u32()?;
    let mut event = Event::default();
    // Each comment takes at least its 4-byte length: a count the payload cannot hold is not
    // trusted for an allocation.
    if usize::try_from(count).map_or(true, |n| n > reader.0.len() / 4) {
        return Err(CodecError::Truncated);
    }
    for _ in 0..count {
        event.comments.push(reader.text()?);
    }
    if flags & NAME != 0 {
        event.event = Some(reader.text()?);
    }
    if flags & KEY != 0 {
        event.key = Some(reader.text()?);
    }
    if flags & RETRY != 0 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(reader.take(8)?);
        event.retry = Some(u64::from_be_bytes(bytes));
    }
    if flags & DATA != 0 {
        event.data = Some(text(reader.0)?);
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn round_trips_every_field() {
        let event = Event::new("a\nb")
            .with_event("tick")
            .with_retry(Duration::from_millis(1500))
            .with_key("k")
            .with_comment("c1")
            .with_comment("");
        assert_eq!(decode(&encode(&event)), Ok(event));
        assert_eq!(decode(&encode(&Event::default())), Ok(Event::default()));
    }

    proptest::proptest! {
        #[test]
        fn any_event_round_trips(
            data in proptest::option::of(".*"),
            name in proptest::option::of(".*"),
            key in proptest::option::of(".*"),
            retry in proptest::option::of(proptest::num::u64::ANY),
            comments in proptest::collection::vec(".*", 0..4),
        ) {
            let event = Event { data, event: name, id: None, retry, comments, key };
            proptest::prop_assert_eq!(decode(&encode(&event)), Ok(event));
        }

        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode(&bytes);
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode(&framed);
        }
    }

    #[test]
    fn refuses_what_it_did_not_write() {
        let good = encode(&Event::new("x").with_event("e"));
        for cut in 0..good.len() - 1 {
            assert!(decode(&good[..cut]).is_err(), "{cut}");
        }
        assert_eq!(decode(b"XX"), Err(CodecError::Magic));
        assert_eq!(decode(&[b'S', 1, 0, 255, 255, 255, 255]), Err(CodecError::Truncated));
    }
}
