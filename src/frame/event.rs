//! The `Event` builder and its validation.

use std::time::Duration;

use crate::error::EventError;

/// Longest event id accepted, in bytes: the longest `Last-Event-ID` the hub resumes from (see
/// `history::MAX_LAST_EVENT_ID`), so every id it delivers can be sent back.
pub(crate) const MAX_ID_BYTES: usize = 256;

/// One server-sent event, before encoding.
///
/// Built with [`Event::new`] (or [`Event::comment`]) and the `with_*` methods, then handed to
/// [`Hub::publish`](crate::Hub::publish), which validates it, normalises its line breaks and
/// encodes it exactly once into one `Bytes` frame shared by every receiver.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ssehub::Event;
///
/// let event = Event::new("first line\nsecond line")
///     .with_event("tick")
///     .with_id("42")
///     .with_retry(Duration::from_millis(1500));
/// let frame = event.encode()?;
/// assert_eq!(
///     frame.as_ref(),
///     b"event: tick\nid: 42\nretry: 1500\ndata: first line\ndata: second line\n\n"
/// );
/// # Ok::<(), ssehub::EventError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `data` payload; `None` for a frame that only carries comments or fields.
    pub(crate) data: Option<String>,
    /// The `event` field (the client's event type).
    pub(crate) event: Option<String>,
    /// The `id` field (the client's last event id).
    pub(crate) id: Option<String>,
    /// The `retry` field in milliseconds.
    pub(crate) retry: Option<u64>,
    /// Comment lines, written before the fields.
    pub(crate) comments: Vec<String>,
    /// The key of the topic's keyed state, and the conflation key used by
    /// [`ConflateKey::Explicit`](crate::ConflateKey::Explicit); never written to the wire.
    pub(crate) key: Option<String>,
}

impl Event {
    /// An event carrying `data`, which may span several lines (CR, LF or CRLF).
    ///
    /// Empty data is a real event: it goes out as one `data:` line and clients dispatch it.
    ///
    /// # Examples
    ///
    /// ```
    /// let event = ssehub::Event::new("hello");
    /// assert_eq!(event.data(), Some("hello"));
    /// ```
    #[must_use]
    pub fn new(data: impl Into<String>) -> Self {
        Event { data: Some(data.into()), ..Event::default() }
    }

    /// A comment-only frame (`: text`), which clients never dispatch. Without further fields it
    /// is written with no blank line after it, like the hub's heartbeats.
    ///
    /// # Examples
    ///
    /// ```
    /// let frame = ssehub::Event::comment("hello").encode()?;
    /// assert_eq!(frame.as_ref(), b": hello\n");
    /// # Ok::<(), ssehub::EventError>(())
    /// ```
    #[must_use]
    pub fn comment(text: impl Into<String>) -> Self {
        Event { comments: vec![text.into()], ..Event::default() }
    }

    /// Sets the event type (`event:` field). Must not contain CR or LF.
    ///
    /// # Examples
    ///
    /// ```
    /// let event = ssehub::Event::new("1").with_event("tick");
    /// assert_eq!(event.event(), Some("tick"));
    /// ```
    #[must_use]
    pub fn with_event(mut self, event: impl Into<String>) -> Self {
        self.event = Some(event.into());
        self
    }

    /// Sets the event id (`id:` field), written exactly as given. Must not contain CR, LF or
    /// NUL.
    ///
    /// # Examples
    ///
    /// ```
    /// let event = ssehub::Event::new("1").with_id("a-7");
    /// assert_eq!(event.id(), Some("a-7"));
    /// ```
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the client's reconnection time (`retry:` field), in whole milliseconds.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let event = ssehub::Event::new("1").with_retry(Duration::from_secs(3));
    /// assert_eq!(event.retry(), Some(Duration::from_secs(3)));
    /// ```
    #[must_use]
    pub fn with_retry(mut self, retry: Duration) -> Self {
        self.retry = Some(u64::try_from(retry.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Adds a comment line (`: text`), written before the fields. Line breaks in `text` start
    /// new comment lines.
    ///
    /// # Examples
    ///
    /// ```
    /// let frame = ssehub::Event::new("x").with_comment("note").encode()?;
    /// assert_eq!(frame.as_ref(), b": note\ndata: x\n\n");
    /// # Ok::<(), ssehub::EventError>(())
    /// ```
    #[must_use]
    pub fn with_comment(mut self, text: impl Into<String>) -> Self {
        self.comments.push(text.into());
        self
    }

    /// Sets the event's key: with keyed state on
    /// ([`HubBuilder::with_state`](crate::HubBuilder::with_state)) the event becomes its topic's
    /// latest value for that key, which a subscription made
    /// [`with_snapshot`](crate::Subscribe::with_snapshot) starts with; it is also the
    /// conflation key of subscribers with `SlowPolicy::Conflate { key: ConflateKey::Explicit }`.
    /// It is never sent to clients.
    ///
    /// # Examples
    ///
    /// ```
    /// let event = ssehub::Event::new("101.5").with_key("BTC-USD");
    /// assert_eq!(event.key(), Some("BTC-USD"));
    /// ```
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The data payload, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::Event::comment("c").data(), None);
    /// ```
    #[must_use]
    pub fn data(&self) -> Option<&str> {
        self.data.as_deref()
    }

    /// The event type, if set.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::Event::new("d").event(), None);
    /// ```
    #[must_use]
    pub fn event(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// The event id, if set.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::Event::new("d").with_id("7").id(), Some("7"));
    /// ```
    #[must_use]
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The reconnection time, if set.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::Event::new("d").retry(), None);
    /// ```
    #[must_use]
    pub fn retry(&self) -> Option<Duration> {
        self.retry.map(Duration::from_millis)
    }

    /// The comment lines.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::Event::comment("c").comments(), ["c"]);
    /// ```
    #[must_use]
    pub fn comments(&self) -> &[String] {
        &self.comments
    }

    /// The conflation key, if set.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::Event::new("d").key(), None);
    /// ```
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Checks the fields that would break the wire format.
    ///
    /// # Errors
    ///
    /// [`EventError::LineBreakInEvent`], [`EventError::LineBreakInId`], [`EventError::NulInId`],
    /// [`EventError::ControlInId`] or [`EventError::IdTooLong`] (an id over 256 bytes), in that
    /// order: an id a client could not send back to resume is refused.
    ///
    /// # Examples
    ///
    /// ```
    /// use ssehub::{Event, EventError};
    /// assert_eq!(Event::new("x").with_id("a\nb").validate(), Err(EventError::LineBreakInId));
    /// assert_eq!(Event::new("x").with_id("a\tb").validate(), Err(EventError::ControlInId));
    /// assert_eq!(
    ///     Event::new("x").with_id("9".repeat(300)).validate(),
    ///     Err(EventError::IdTooLong { len: 300, max: 256 })
    /// );
    /// assert_eq!(Event::new("x\ny").validate(), Ok(()));
    /// ```
    pub fn validate(&self) -> Result<(), EventError> {
        if let Some(event) = &self.event {
            if has_line_break(event) {
                return Err(EventError::LineBreakInEvent);
            }
        }
        if let Some(id) = &self.id {
            if has_line_break(id) {
                return Err(EventError::LineBreakInId);
            }
            if id.contains('\0') {
                return Err(EventError::NulInId);
            }
            if id.chars().any(char::is_control) {
                return Err(EventError::ControlInId);
            }
            if id.len() > MAX_ID_BYTES {
                return Err(EventError::IdTooLong { len: id.len(), max: MAX_ID_BYTES });
            }
        }
        Ok(())
    }

    /// Returns the event with every CRLF and lone CR in its data and comments turned into LF.
    ///
    /// A line break cannot cross the wire as CR or CRLF (the client splits lines on all three),
    /// so this is the event every client receives; the hub publishes and stores this form.
    ///
    /// # Examples
    ///
    /// ```
    /// let event = ssehub::Event::new("a\r\nb\rc").normalized();
    /// assert_eq!(event.data(), Some("a\nb\nc"));
    /// ```
    #[must_use]
    pub fn normalized(mut self) -> Self {
        if let Some(data) = &mut self.data {
            normalize_in_place(data);
        }
        for comment in &mut self.comments {
            normalize_in_place(comment);
        }
        self
    }
}

/// Whether `s` holds CR or LF.
fn has_line_break(s: &str) -> bool {
    s.bytes().any(|b| b == b'\r' || b == b'\n')
}

/// Rewrites CRLF and CR as LF; allocates only when `s` holds a CR. Copies the runs between CRs
/// as slices (CR is ASCII, so every run boundary is a char boundary).
fn normalize_in_place(s: &mut String) {
    let bytes = s.as_bytes();
    let Some(first) = memchr::memchr(b'\r', bytes) else {
        return;
    };
    let mut out = String::with_capacity(s.len());
    let mut start = 0;
    let mut at = Some(first);
    while let Some(cr) = at {
        out.push_str(&s[start..cr]);
        out.push('\n');
        start = if bytes.get(cr + 1) == Some(&b'\n') { cr + 2 } else { cr + 1 };
        at = memchr::memchr(b'\r', &bytes[start..]).map(|i| start + i);
    }
    out.push_str(&s[start..]);
    *s = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_name_with_cr_is_refused() {
        assert_eq!(
            Event::new("x").with_event("a\rb").validate(),
            Err(EventError::LineBreakInEvent)
        );
    }

    #[test]
    fn id_with_nul_is_refused() {
        assert_eq!(Event::new("x").with_id("a\0b").validate(), Err(EventError::NulInId));
    }

    #[test]
    fn normalising_keeps_lf_and_unicode() {
        let e = Event::new("é\r\r\nü\n").normalized();
        assert_eq!(e.data(), Some("é\n\nü\n"));
    }

    #[test]
    fn huge_retry_saturates() {
        assert_eq!(Event::new("x").with_retry(Duration::MAX).retry, Some(u64::MAX));
    }
}
