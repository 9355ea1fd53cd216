//! An incremental parser for `text/event-stream`, following the WHATWG HTML rules in section
//! 9.2.6, "Interpreting an event stream", to the letter.
//!
//! The hub never parses what it sends; this parser exists for clients, tests and the fuzz
//! targets, which check that every frame [`Event::encode`](crate::Event::encode) writes reads
//! back as the event it encodes.
//!
//! # Examples
//!
//! ```
//! use ssehub::parse::{ParsedEvent, Parser};
//!
//! let mut parser = Parser::new();
//! let mut events = Vec::new();
//! // Chunks may split anything: a field name, a CRLF, a UTF-8 sequence.
//! parser.feed(b"id: 7\r\nevent: ti", &mut events)?;
//! parser.feed(b"ck\r\ndata: caf\xc3", &mut events)?;
//! parser.feed(b"\xa9\r", &mut events)?;
//! parser.feed(b"\n\r\n", &mut events)?;
//! assert_eq!(events, [ParsedEvent::new("tick", "café").with_id("7")]);
//! assert_eq!(parser.last_event_id(), "7");
//! # Ok::<(), ssehub::parse::ParseError>(())
//! ```

/// The UTF-8 byte order mark, skipped once at the very start of a stream.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Default cap on a line, in bytes before decoding.
const DEFAULT_MAX_LINE: usize = 1 << 20;

/// Default cap on the data buffer of one event, in bytes after decoding.
const DEFAULT_MAX_EVENT: usize = 8 << 20;

/// Capacity a buffer may keep once emptied. Above it the allocation is given back, so one
/// hostile megabyte line does not stay resident for the life of a connection; below it the
/// buffer is reused, which is what makes chunk-split lines cheap.
const KEEP_CAPACITY: usize = 8 * 1024;

/// One dispatched event, as a browser's `EventSource` would deliver it.
///
/// # Examples
///
/// ```
/// use ssehub::parse::{parse_all, ParsedEvent};
///
/// let events = parse_all(b"retry: 500\nid: 1\ndata: x\n\n")?;
/// assert_eq!(events, [ParsedEvent::new("message", "x").with_id("1").with_retry(500)]);
/// assert_eq!(events[0].event, "message");
/// # Ok::<(), ssehub::parse::ParseError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParsedEvent {
    /// The event type: the `event` field, or `"message"` when it was absent or empty.
    pub event: String,
    /// The `data` lines joined with LF.
    pub data: String,
    /// The last event id at dispatch; it persists across events until an `id` field changes it.
    pub id: String,
    /// The reconnection time in milliseconds, if a valid `retry` field came in this event's
    /// block (since the previous blank line).
    pub retry: Option<u64>,
}

impl ParsedEvent {
    /// An event of type `event` carrying `data`, with an empty id and no retry; mostly for
    /// comparing with what the parser produced.
    ///
    /// # Examples
    ///
    /// ```
    /// let e = ssehub::parse::ParsedEvent::new("message", "hi");
    /// assert_eq!((e.id.as_str(), e.retry), ("", None));
    /// ```
    #[must_use]
    pub fn new(event: impl Into<String>, data: impl Into<String>) -> Self {
        ParsedEvent { event: event.into(), data: data.into(), id: String::new(), retry: None }
    }

    /// Sets the last event id.
    ///
    /// # Examples
    ///
    /// ```
    /// let e = ssehub::parse::ParsedEvent::new("message", "hi").with_id("3");
    /// assert_eq!(e.id, "3");
    /// ```
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the retry value in milliseconds.
    ///
    /// # Examples
    ///
    /// ```
    /// let e = ssehub::parse::ParsedEvent::new("message", "hi").with_retry(10);
    /// assert_eq!(e.retry, Some(10));
    /// ```
    #[must_use]
    pub fn with_retry(mut self, retry: u64) -> Self {
        self.retry = Some(retry);
        self
    }
}

/// Why the parser gave up on a stream. Both are limits that keep memory bounded on hostile
/// input; the stream itself is never "invalid", since the WHATWG rules accept any bytes.
///
/// # Examples
///
/// ```
/// use ssehub::parse::{ParseError, Parser};
///
/// let mut parser = Parser::with_limits(4, 64);
/// let err = parser.feed(b"data: too long\n", &mut Vec::new());
/// assert_eq!(err, Err(ParseError::LineTooLong { max: 4 }));
/// assert_eq!(err.unwrap_err().to_string(), "line is longer than 4 bytes");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A line, without its line ending, is longer than the limit.
    #[error("line is longer than {max} bytes")]
    LineTooLong {
        /// The limit in bytes, counted before UTF-8 decoding.
        max: usize,
    },
    /// The data buffer of one event grew past the limit.
    #[error("event data is larger than {max} bytes")]
    EventTooLarge {
        /// The limit in bytes, counted after UTF-8 decoding (with the LF after each line).
        max: usize,
    },
}

/// An incremental `text/event-stream` parser: feed it chunks as they arrive, split anywhere.
///
/// It follows WHATWG HTML 9.2.6: one leading UTF-8 BOM is skipped; lines end with CRLF, LF or
/// CR; each line is decoded as UTF-8 with replacement characters; `event`, `data`, `id` and
/// `retry` fields are interpreted and anything else ignored; a blank line dispatches. An event
/// whose blank line never arrives is never returned.
///
/// Two ids are kept, as in the spec: the `id` field sets a buffer, and each blank line commits
/// that buffer as the last event id ([`Parser::last_event_id`]), which is what a client sends
/// as `Last-Event-ID` when it reconnects.
///
/// # Errors and limits
///
/// A line longer than `max_line` bytes or a data buffer over `max_event` bytes fails the
/// stream. The error is sticky: the partial line and event are freed, every later
/// [`Parser::feed`] returns the same error without reading, and [`Parser::reset`] makes the
/// parser ready for a new connection (keeping the last event id and reconnection time).
///
/// # Examples
///
/// ```
/// use ssehub::parse::{ParsedEvent, Parser};
///
/// let mut parser = Parser::new();
/// let mut events = Vec::new();
/// parser.feed(b"data: a\n\ndata: unfinished", &mut events)?;
/// assert_eq!(events, [ParsedEvent::new("message", "a")]);
/// // The connection dropped: the unfinished event is discarded.
/// parser.reset();
/// parser.feed(b"data: b\n\n", &mut events)?;
/// assert_eq!(events[1].data, "b");
/// # Ok::<(), ssehub::parse::ParseError>(())
/// ```
#[derive(Debug)]
pub struct Parser {
    /// Bytes of a line whose ending has not arrived yet.
    line: Vec<u8>,
    /// `Some(n)` while the stream's first `n` bytes have matched the BOM and fewer than three
    /// bytes have been seen; `None` once past the start.
    bom: Option<usize>,
    /// The last chunk ended with CR, so an LF opening the next chunk ends no line of its own.
    after_cr: bool,
    /// The field buffers and what persists across events.
    fields: Fields,
    /// Longest line accepted, in bytes before decoding.
    max_line: usize,
    /// The error that failed the stream, returned again until [`Parser::reset`].
    error: Option<ParseError>,
}

/// The spec's buffers, fed one complete line at a time.
#[derive(Debug, Default)]
struct Fields {
    /// The data buffer: each `data` value followed by LF.
    data: String,
    /// The event type buffer.
    event: String,
    /// The last event ID buffer, set by `id` fields.
    id: String,
    /// A `retry` value seen since the previous blank line.
    retry: Option<u64>,
    /// The last event id committed by the latest blank line.
    last_event_id: String,
    /// The reconnection time, set as soon as a valid `retry` field is read.
    reconnection_time: Option<u64>,
    /// Largest data buffer accepted, in bytes.
    max_event: usize,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new()
    }
}

impl Parser {
    /// A parser with the default limits: lines up to 1 MiB, event data up to 8 MiB.
    ///
    /// # Examples
    ///
    /// ```
    /// let parser = ssehub::parse::Parser::new();
    /// assert_eq!(parser.last_event_id(), "");
    /// assert_eq!(parser.reconnection_time(), None);
    /// ```
    #[must_use]
    pub fn new() -> Parser {
        Parser::with_limits(DEFAULT_MAX_LINE, DEFAULT_MAX_EVENT)
    }

    /// A parser accepting lines up to `max_line` bytes (before decoding, without the line
    /// ending) and event data up to `max_event` bytes (after decoding, with the LF after each
    /// `data` line, so `data: abc\n` counts 4).
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::parse::{ParseError, Parser};
    ///
    /// let mut parser = Parser::with_limits(64, 4);
    /// let mut events = Vec::new();
    /// assert_eq!(parser.feed(b"data: abc\n\n", &mut events), Ok(()));
    /// let err = parser.feed(b"data: abc\ndata: d\n", &mut events);
    /// assert_eq!(err, Err(ParseError::EventTooLarge { max: 4 }));
    /// ```
    #[must_use]
    pub fn with_limits(max_line: usize, max_event: usize) -> Parser {
        Parser {
            line: Vec::new(),
            bom: Some(0),
            after_cr: false,
            fields: Fields { max_event, ..Fields::default() },
            max_line,
            error: None,
        }
    }

    /// Parses the next chunk of the stream, appending every event it completes to `out`.
    ///
    /// # Errors
    ///
    /// [`ParseError::LineTooLong`] or [`ParseError::EventTooLarge`] when a limit is crossed.
    /// Events completed earlier in the chunk are still in `out`; the parser then refuses to
    /// read until [`Parser::reset`] (see the type's docs).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut parser = ssehub::parse::Parser::new();
    /// let mut events = Vec::new();
    /// parser.feed(b"data: one\r", &mut events)?;
    /// // The CR ended the line; the LF that follows belongs to it, it is not a blank line.
    /// parser.feed(b"\ndata: two\n", &mut events)?;
    /// assert!(events.is_empty());
    /// parser.feed(b"\n", &mut events)?;
    /// assert_eq!(events[0].data, "one\ntwo");
    /// # Ok::<(), ssehub::parse::ParseError>(())
    /// ```
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<ParsedEvent>) -> Result<(), ParseError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let result = self.feed_lines(chunk, out);
        if let Err(error) = result {
            self.error = Some(error);
            self.clear_stream();
        }
        result
    }

    /// The last event id committed by a blank line: what a reconnecting client sends as
    /// `Last-Event-ID` (empty means none).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut parser = ssehub::parse::Parser::new();
    /// parser.feed(b"id: 5\n", &mut Vec::new())?;
    /// assert_eq!(parser.last_event_id(), "");
    /// parser.feed(b"\n", &mut Vec::new())?;
    /// assert_eq!(parser.last_event_id(), "5");
    /// # Ok::<(), ssehub::parse::ParseError>(())
    /// ```
    #[must_use]
    pub fn last_event_id(&self) -> &str {
        &self.fields.last_event_id
    }

    /// The reconnection time in milliseconds from the latest valid `retry` field, kept across
    /// events and [`Parser::reset`].
    ///
    /// # Examples
    ///
    /// ```
    /// let mut parser = ssehub::parse::Parser::new();
    /// parser.feed(b"retry: 2500\nretry: soon\n", &mut Vec::new())?;
    /// assert_eq!(parser.reconnection_time(), Some(2500));
    /// # Ok::<(), ssehub::parse::ParseError>(())
    /// ```
    #[must_use]
    pub fn reconnection_time(&self) -> Option<u64> {
        self.fields.reconnection_time
    }

    /// Prepares for a new connection, as `EventSource` does when it reconnects: the partial
    /// line, the event being built and any error are dropped, a leading BOM is expected again,
    /// and the last event id and reconnection time are kept (the id buffer restarts from the
    /// committed last event id).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut parser = ssehub::parse::Parser::new();
    /// let mut events = Vec::new();
    /// parser.feed(b"id: 1\nretry: 10\ndata: a\n\ndata: lost", &mut events)?;
    /// parser.reset();
    /// parser.feed(b"\xEF\xBB\xBFdata: b\n\n", &mut events)?;
    /// assert_eq!(events[1].data, "b");
    /// assert_eq!(events[1].id, "1");
    /// assert_eq!(parser.reconnection_time(), Some(10));
    /// # Ok::<(), ssehub::parse::ParseError>(())
    /// ```
    pub fn reset(&mut self) {
        self.clear_stream();
        self.error = None;
    }

    /// Drops everything tied to the current connection and frees its buffers.
    fn clear_stream(&mut self) {
        self.line = Vec::new();
        self.bom = Some(0);
        self.after_cr = false;
        let fields = &mut self.fields;
        fields.data = String::new();
        fields.event = String::new();
        fields.retry = None;
        fields.id.clone_from(&fields.last_event_id);
    }

    /// Splits `chunk` into lines, joining the first with the bytes held from earlier chunks.
    fn feed_lines(&mut self, chunk: &[u8], out: &mut Vec<ParsedEvent>) -> Result<(), ParseError> {
        let mut rest = self.skip_bom(chunk);
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
            if self.line.len() + end > self.max_line {
                return Err(ParseError::LineTooLong { max: self.max_line });
            }
            if self.line.is_empty() {
                // The whole line is in this chunk: parse it in place, no copy.
                self.fields.line(&rest[..end], out)?;
            } else {
                self.line.extend_from_slice(&rest[..end]);
                let parsed = self.fields.line(&self.line, out);
                self.line.clear();
                self.line.shrink_to(KEEP_CAPACITY);
                parsed?;
            }
            let next = end + 1;
            rest = if rest[end] == b'\r' {
                match rest.get(next) {
                    Some(b'\n') => &rest[next + 1..],
                    Some(_) => &rest[next..],
                    None => {
                        self.after_cr = true;
                        &[]
                    }
                }
            } else {
                &rest[next..]
            };
        }
        // Checked before copying, so the held line never exceeds the limit.
        if self.line.len() + rest.len() > self.max_line {
            return Err(ParseError::LineTooLong { max: self.max_line });
        }
        self.line.extend_from_slice(rest);
        Ok(())
    }

    /// Consumes the BOM (or the part of it this chunk holds) at the start of the stream and
    /// returns the rest of the chunk.
    fn skip_bom<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let Some(mut matched) = self.bom else {
            return chunk;
        };
        let mut rest = chunk;
        while matched < BOM.len() {
            match rest.first() {
                None => {
                    self.bom = Some(matched);
                    return rest;
                }
                Some(&b) if b == BOM[matched] => {
                    matched += 1;
                    rest = &rest[1..];
                }
                Some(_) => {
                    // Not a BOM after all: the bytes held back start the first line. None of
                    // them is CR or LF, so they cannot end it.
                    self.line.extend_from_slice(&BOM[..matched]);
                    break;
                }
            }
        }
        self.bom = None;
        rest
    }
}

impl Fields {
    /// Interprets one complete line (without its ending).
    fn line(&mut self, line: &[u8], out: &mut Vec<ParsedEvent>) -> Result<(), ParseError> {
        // Field names and the colon are ASCII, and lossy decoding never turns other bytes into
        // ASCII, so matching on bytes and decoding only the values that are kept gives the same
        // result as decoding the line first.
        let (name, value) = match line.iter().position(|&b| b == b':') {
            None if line.is_empty() => {
                self.dispatch(out);
                return Ok(());
            }
            None => (line, &[][..]),
            Some(0) => return Ok(()),
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
        };
        match name {
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            b"data" => {
                let value = String::from_utf8_lossy(value);
                if self.data.len() + value.len() + 1 > self.max_event {
                    return Err(ParseError::EventTooLarge { max: self.max_event });
                }
                self.data.push_str(&value);
                self.data.push('\n');
            }
            b"id" if !value.contains(&0) => {
                self.id.clear();
                self.id.push_str(&String::from_utf8_lossy(value));
            }
            b"retry" => {
                if let Some(ms) = parse_retry(value) {
                    self.retry = Some(ms);
                    self.reconnection_time = Some(ms);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The spec's "dispatch the event", run on every blank line.
    fn dispatch(&mut self, out: &mut Vec<ParsedEvent>) {
        self.last_event_id.clone_from(&self.id);
        let retry = self.retry.take();
        if self.data.is_empty() {
            self.event.clear();
            self.event.shrink_to(KEEP_CAPACITY);
            return;
        }
        // The buffer is handed to the event rather than copied; a non-empty buffer always ends
        // with the LF written after its last line.
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        let event = if self.event.is_empty() {
            String::from("message")
        } else {
            std::mem::take(&mut self.event)
        };
        out.push(ParsedEvent { event, data, id: self.last_event_id.clone(), retry });
    }
}

/// A `retry` value: ASCII digits only, at least one, fitting in a `u64`.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |ms, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        ms.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Parses a whole stream with one [`Parser`] and default limits; a final event without its
/// blank line is discarded.
///
/// # Errors
///
/// The errors of [`Parser::feed`].
///
/// # Examples
///
/// ```
/// use ssehub::parse::{parse_all, ParsedEvent};
///
/// let events = parse_all(b"\xEF\xBB\xBFevent: up\ndata: 1\n\ndata: 2\n")?;
/// assert_eq!(events, [ParsedEvent::new("up", "1")]);
/// # Ok::<(), ssehub::parse::ParseError>(())
/// ```
pub fn parse_all(input: &[u8]) -> Result<Vec<ParsedEvent>, ParseError> {
    let mut out = Vec::new();
    Parser::new().feed(input, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` in order and returns the events, stopping at the first error.
    fn feed_all(parser: &mut Parser, chunks: &[&[u8]]) -> Result<Vec<ParsedEvent>, ParseError> {
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out)?;
        }
        Ok(out)
    }

    fn msg(data: &str) -> ParsedEvent {
        ParsedEvent::new("message", data)
    }

    #[test]
    fn chunk_boundaries_inside_tricky_sequences() {
        let cases: &[(&[&[u8]], &[&str])] = &[
            // A CRLF split between chunks is one line end, not a line end and a blank line.
            (&[b"data: a\r", b"\n", b"\r", b"\n"], &["a"]),
            (&[b"data: a\r", b"", b"\n", b"", b"\n"], &["a"]),
            // A CR ending a chunk swallows nothing but an LF.
            (&[b"data: a\r", b"\r"], &["a"]),
            (&[b"data: a\r", b"data: b\n\n"], &["a\nb"]),
            // The BOM is skipped once, even when split; a partial one starts the first line.
            (&[b"\xEF", b"", b"\xBB", b"\xBFdata: x\n\n\xEF\xBB\xBFdata: y\n\n"], &["x"]),
            (&[b"\xEF\xBB", b"data: x\n\n"], &[]),
            (&[b"\xEF", b"\ndata: x\n\n"], &["x"]),
            // Lines are decoded whole, so a split UTF-8 sequence survives; a truncated one
            // does not leak into the next line.
            (&[b"data: \xF0\x9F", b"\x98", b"\x80!\n\n"], &["\u{1F600}!"]),
            (&[b"data: \xF0\x9F", b"\ndata: \xFFa\n\n"], &["\u{FFFD}\n\u{FFFD}a"]),
        ];
        for (chunks, data) in cases {
            let expected: Vec<ParsedEvent> = data.iter().map(|d| msg(d)).collect();
            assert_eq!(feed_all(&mut Parser::new(), chunks), Ok(expected), "{chunks:?}");
        }
    }

    #[test]
    fn retry_needs_digits_that_fit() {
        assert_eq!(parse_retry(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_retry(b"18446744073709551616"), None);
        assert_eq!(parse_retry(b""), None);
        assert_eq!(parse_retry(b"+1"), None);
        assert_eq!(parse_retry(b"1 "), None);
        assert_eq!(parse_retry(b"0010"), Some(10));
    }

    #[test]
    fn last_event_id_is_committed_by_the_blank_line() {
        let mut p = Parser::new();
        feed_all(&mut p, &[b"id: 1\n\nid: 2\ndata: x\n"]).ok();
        assert_eq!(p.last_event_id(), "1");
        p.reset();
        // The uncommitted "2" went with the lost connection.
        assert_eq!(feed_all(&mut p, &[b"data: y\n\n"]), Ok(vec![msg("y").with_id("1")]));
    }

    #[test]
    fn long_line_fails_whether_buffered_or_not() {
        let too_long = Err(ParseError::LineTooLong { max: 8 });
        let parse = |chunks: &[&[u8]]| feed_all(&mut Parser::with_limits(8, 100), chunks);
        assert_eq!(parse(&[b"data: 123\n"]), too_long);
        assert_eq!(parse(&[b"data: 12", b"3"]), too_long);
        assert_eq!(parse(&[b"data: 12\n\n"]), Ok(vec![msg("12")]));
        assert_eq!(parse(&[b"data", b": 12", b"\r\n\n"]), Ok(vec![msg("12")]));
    }

    #[test]
    fn error_is_sticky_until_reset() {
        let mut p = Parser::with_limits(100, 3);
        let mut out = Vec::new();
        let err = ParseError::EventTooLarge { max: 3 };
        assert_eq!(p.feed(b"id: 9\ndata: a\n\ndata: abc\n", &mut out), Err(err));
        assert_eq!(out, [msg("a").with_id("9")]);
        assert_eq!(p.feed(b"\n", &mut out), Err(err));
        assert_eq!(out.len(), 1);
        p.reset();
        assert_eq!(p.feed(b"data: ab\n\n", &mut out), Ok(()));
        assert_eq!(out[1], msg("ab").with_id("9"));
    }

    #[test]
    fn data_limit_counts_each_line_feed() {
        let mut p = Parser::with_limits(100, 4);
        assert_eq!(feed_all(&mut p, &[b"data: a\ndata: b\n\n"]), Ok(vec![msg("a\nb")]));
        let err = feed_all(&mut p, &[b"data: a\ndata: b\ndata\n"]);
        assert_eq!(err, Err(ParseError::EventTooLarge { max: 4 }));
    }

    #[test]
    fn big_buffers_are_given_back() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        let long = vec![b'x'; 100_000];
        assert_eq!(p.feed(b"data: ", &mut out), Ok(()));
        assert_eq!(p.feed(&long, &mut out), Ok(()));
        assert!(p.line.capacity() >= 100_000);
        assert_eq!(p.feed(b"\n\n", &mut out), Ok(()));
        assert!(p.line.capacity() <= KEEP_CAPACITY);
        assert_eq!(p.fields.data.capacity(), 0);
        assert_eq!(out[0].data.len(), 100_000);
    }
}
