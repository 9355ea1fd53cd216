//! `Event` to one shared `Bytes`: the only place the wire format is written.

use bytes::{BufMut, Bytes, BytesMut};

use super::Event;
use crate::error::EventError;

impl Event {
    /// Validates and encodes the event into its wire bytes, once: every receiver of the event
    /// gets a reference count of this one allocation (cloning the `Bytes` copies nothing).
    ///
    /// Fields go out as `field: value` (colon, one space), so values that start with a space
    /// survive; each line of the data becomes one `data:` line, split on CR, LF and CRLF; empty
    /// data is one `data:` line. A frame with data or fields ends with a blank line; a
    /// comment-only frame does not.
    ///
    /// # Errors
    ///
    /// The errors of [`Event::validate`].
    ///
    /// # Examples
    ///
    /// ```
    /// let frame = ssehub::Event::new(" spaced\r\nline").with_id("1").encode()?;
    /// assert_eq!(frame.as_ref(), b"id: 1\ndata:  spaced\ndata: line\n\n");
    /// let comment = ssehub::Event::comment("keep-alive").encode()?;
    /// assert_eq!(comment.as_ref(), b": keep-alive\n");
    /// # Ok::<(), ssehub::EventError>(())
    /// ```
    pub fn encode(&self) -> Result<Bytes, EventError> {
        self.validate()?;
        Ok(self.write(self.encoded_len()))
    }

    /// [`Event::encode`] refusing a frame over `max` bytes.
    pub(crate) fn encode_limited(&self, max: usize) -> Result<Bytes, EventError> {
        self.validate()?;
        let size = self.encoded_len();
        if size > max {
            return Err(EventError::TooLarge { size, max });
        }
        Ok(self.write(size))
    }

    /// Writes the validated event's `size` bytes.
    fn write(&self, size: usize) -> Bytes {
        // One exact allocation: the frame is written once and shared, so it is worth sizing.
        let mut buf = BytesMut::with_capacity(size);
        for comment in &self.comments {
            put_lines(&mut buf, b"", comment);
        }
        if let Some(event) = &self.event {
            put_field(&mut buf, b"event", event);
        }
        if let Some(id) = &self.id {
            put_field(&mut buf, b"id", id);
        }
        if let Some(retry) = self.retry {
            let mut digits = itoa_buf();
            put_field(&mut buf, b"retry", format_u64(retry, &mut digits));
        }
        if let Some(data) = &self.data {
            put_lines(&mut buf, b"data", data);
        }
        if self.has_fields() {
            buf.put_u8(b'\n');
        }
        debug_assert_eq!(buf.len(), size);
        buf.freeze()
    }

    /// Whether the frame carries fields (and so ends with a blank line).
    fn has_fields(&self) -> bool {
        self.data.is_some() || self.event.is_some() || self.id.is_some() || self.retry.is_some()
    }

    /// The exact encoded size.
    fn encoded_len(&self) -> usize {
        let mut size = 0;
        for comment in &self.comments {
            size += lines_len(0, comment);
        }
        if let Some(event) = &self.event {
            size += field_len(5, event.len());
        }
        if let Some(id) = &self.id {
            size += field_len(2, id.len());
        }
        if let Some(retry) = self.retry {
            let mut digits = itoa_buf();
            size += field_len(5, format_u64(retry, &mut digits).len());
        }
        if let Some(data) = &self.data {
            size += lines_len(4, data);
        }
        if self.has_fields() {
            size += 1;
        }
        size
    }
}

/// Length of `name: value\n` (or `name:\n` for an empty value).
fn field_len(name: usize, value: usize) -> usize {
    if value == 0 {
        name + 2
    } else {
        name + 3 + value
    }
}

/// Length of `text` written as one field line per line.
fn lines_len(name: usize, text: &str) -> usize {
    split_lines(text).map(|line| field_len(name, line.len())).sum()
}

/// Writes `name: value\n`, or `name:\n` when the value is empty.
fn put_field(buf: &mut BytesMut, name: &[u8], value: &str) {
    buf.put_slice(name);
    if value.is_empty() {
        buf.put_slice(b":\n");
    } else {
        buf.put_slice(b": ");
        buf.put_slice(value.as_bytes());
        buf.put_u8(b'\n');
    }
}

/// Writes one `name: line` per line of `text`.
fn put_lines(buf: &mut BytesMut, name: &[u8], text: &str) {
    for line in split_lines(text) {
        put_field(buf, name, line);
    }
}

/// Splits on CRLF, CR and LF, the three line endings the WHATWG parser accepts. An empty text is
/// one empty line, and a trailing break yields a trailing empty line, so the parser rebuilds the
/// exact (normalised) text.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let rest = &bytes[start..];
        match memchr::memchr2(b'\r', b'\n', rest) {
            Some(i) => {
                let line = &text[start..start + i];
                let crlf = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
                start += i + if crlf { 2 } else { 1 };
                Some(line)
            }
            None => {
                done = true;
                Some(&text[start..])
            }
        }
    })
}

/// Scratch space for a decimal `u64`.
fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

/// Formats `n` in decimal into `buf` without allocating.
fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(event: Event) -> Vec<u8> {
        event.encode().map(|f| f.to_vec()).unwrap_or_default()
    }

    #[test]
    fn data_lines_split_on_every_line_ending() {
        assert_eq!(wire(Event::new("a\rb\nc\r\nd")), b"data: a\ndata: b\ndata: c\ndata: d\n\n");
    }

    #[test]
    fn trailing_break_keeps_an_empty_line() {
        assert_eq!(wire(Event::new("a\n")), b"data: a\ndata:\n\n");
    }

    #[test]
    fn fields_without_data_still_end_the_block() {
        assert_eq!(wire(Event::default().with_id("9")), b"id: 9\n\n");
    }

    #[test]
    fn retry_is_decimal_milliseconds() {
        let e = Event::new("x").with_retry(std::time::Duration::from_millis(0));
        assert_eq!(wire(e), b"retry: 0\ndata: x\n\n");
        let mut buf = itoa_buf();
        assert_eq!(format_u64(u64::MAX, &mut buf), "18446744073709551615");
    }

    #[test]
    fn invalid_event_is_an_error_not_a_frame() {
        assert_eq!(Event::new("x").with_event("a\nb").encode(), Err(EventError::LineBreakInEvent));
    }

    #[test]
    fn size_limit_counts_the_encoded_frame() {
        let e = Event::new("12345");
        assert_eq!(e.encode_limited(13).map(|f| f.len()), Ok(13));
        assert_eq!(e.encode_limited(12), Err(EventError::TooLarge { size: 13, max: 12 }));
    }
}
