//! Per-topic replay history and `Last-Event-ID` resolution.
//!
//! Every event published while history is on gets a hub-wide sequence number (under the hub's
//! sequencer, so sequence order is delivery order for every subscriber) and is kept in its
//! topic's bounded ring. A reconnecting client's `Last-Event-ID` is turned back into a sequence
//! number; the events after it, from every topic of the subscription, are replayed in sequence
//! order before any live event. When that cannot be exact (an id we never issued, another
//! epoch, events already evicted, too many to replay) the client gets a `reset` event instead:
//! never a silent gap.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How much history each topic keeps for `Last-Event-ID` replay.
///
/// An event is evicted when any limit is exceeded. History is off by default; turn it on with
/// [`HubBuilder::with_history`](crate::HubBuilder::with_history).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ssehub::HistoryLimits;
///
/// let limits = HistoryLimits::new()
///     .with_max_events(500)
///     .with_max_bytes(256 * 1024)
///     .with_max_age(Some(Duration::from_secs(300)));
/// assert_eq!(limits.max_events(), 500);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct HistoryLimits {
    /// Most events kept per topic.
    max_events: usize,
    /// Most encoded bytes kept per topic.
    max_bytes: usize,
    /// Oldest event kept, if limited.
    max_age: Option<Duration>,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_events: 1000,
            max_bytes: 1024 * 1024,
            max_age: Some(Duration::from_secs(600)),
        }
    }
}

impl HistoryLimits {
    /// 1,000 events, 1 MiB and 10 minutes per topic.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::HistoryLimits::new().max_events(), 1000);
    /// ```
    pub fn new() -> Self {
        HistoryLimits::default()
    }

    /// Most events kept per topic.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::HistoryLimits::new().with_max_events(5).max_events(), 5);
    /// ```
    pub fn with_max_events(mut self, events: usize) -> Self {
        self.max_events = events;
        self
    }

    /// Most encoded bytes kept per topic.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::HistoryLimits::new().with_max_bytes(5).max_bytes(), 5);
    /// ```
    pub fn with_max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Oldest event kept, or `None` for no age limit.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::HistoryLimits::new().with_max_age(None).max_age(), None);
    /// ```
    pub fn with_max_age(mut self, age: Option<Duration>) -> Self {
        self.max_age = age;
        self
    }

    /// Most events kept per topic.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ssehub::HistoryLimits::new().max_events() > 0);
    /// ```
    #[must_use]
    pub fn max_events(&self) -> usize {
        self.max_events
    }

    /// Most encoded bytes kept per topic.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ssehub::HistoryLimits::new().max_bytes() > 0);
    /// ```
    #[must_use]
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Oldest event kept, if limited.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ssehub::HistoryLimits::new().max_age().is_some());
    /// ```
    #[must_use]
    pub fn max_age(&self) -> Option<Duration> {
        self.max_age
    }
}

/// Why a `Last-Event-ID` could not be resumed exactly; sent to the client in a `reset` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetReason {
    /// The id is not one this hub issued or still remembers.
    UnknownId,
    /// The id is malformed (not canonical, too long, from the future).
    Malformed,
    /// The id is from another epoch (the hub restarted).
    OtherEpoch,
    /// Events after the id were already evicted from history.
    TooOld,
    /// More events were missed than one reconnect may replay.
    TooMany,
    /// History is off, and events were published since the id.
    NoHistory,
}

impl ResetReason {
    /// The reason as sent in the `reset` event's data.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::ResetReason::TooOld.as_str(), "too-old");
    /// ```
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::UnknownId => "unknown-id",
            ResetReason::Malformed => "malformed",
            ResetReason::OtherEpoch => "other-epoch",
            ResetReason::TooOld => "too-old",
            ResetReason::TooMany => "too-many",
            ResetReason::NoHistory => "no-history",
        }
    }
}

impl fmt::Display for ResetReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One remembered event.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Hub-wide sequence number.
    pub(crate) seq: u64,
    /// The id as published, when the publisher gave one (hub ids are derived from `seq`).
    pub(crate) id: Option<Box<str>>,
    /// The encoded frame.
    pub(crate) frame: Bytes,
    /// When it was published.
    at: Instant,
}

/// One topic's ring.
#[derive(Debug, Default)]
pub(crate) struct History {
    /// Oldest first.
    entries: VecDeque<Entry>,
    /// Sum of the frames' lengths.
    bytes: usize,
    /// The highest sequence number evicted (0 if none): a resume point below it has a gap.
    evicted_upto: u64,
}

impl History {
    /// Appends an event and evicts what the limits no longer allow.
    pub(crate) fn append(
        &mut self,
        seq: u64,
        id: Option<&str>,
        frame: &Bytes,
        now: Instant,
        limits: &HistoryLimits,
    ) {
        self.bytes += frame.len();
        self.entries.push_back(Entry { seq, id: id.map(Box::from), frame: frame.clone(), at: now });
        self.prune(now, limits);
    }

    /// Evicts past the limits.
    pub(crate) fn prune(&mut self, now: Instant, limits: &HistoryLimits) {
        while let Some(front) = self.entries.front() {
            let too_old =
                limits.max_age.is_some_and(|age| now.saturating_duration_since(front.at) > age);
            if self.entries.len() <= limits.max_events && self.bytes <= limits.max_bytes && !too_old
            {
                break;
            }
            self.bytes -= front.frame.len();
            self.evicted_upto = self.evicted_upto.max(front.seq);
            self.entries.pop_front();
        }
    }

    /// Whether nothing is remembered.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The highest sequence number this topic ever evicted.
    pub(crate) fn evicted_upto(&self) -> u64 {
        self.evicted_upto
    }

    /// The highest sequence number ever stored here (0 if none).
    pub(crate) fn last_seq(&self) -> u64 {
        self.entries.back().map_or(self.evicted_upto, |e| e.seq)
    }

    /// The sequence number of the newest event published with `id`.
    pub(crate) fn find(&self, id: &str) -> Option<u64> {
        self.entries.iter().rev().find(|e| e.id.as_deref() == Some(id)).map(|e| e.seq)
    }

    /// Events after `seq`, oldest first, at most `limit + 1` of them (one more than allowed
    /// tells the caller the limit was exceeded).
    pub(crate) fn after(&self, seq: u64, limit: usize) -> impl Iterator<Item = &Entry> {
        let start = self.entries.partition_point(|e| e.seq <= seq);
        self.entries.range(start..).take(limit.saturating_add(1))
    }
}

/// A hub-issued event id: `{epoch:x}-{seq}`.
pub(crate) fn format_id(epoch: u64, seq: u64) -> String {
    format!("{epoch:x}-{seq}")
}

/// What a `Last-Event-ID` means to this hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A hub id of this epoch.
    Ours(u64),
    /// Well-formed hub id of another epoch.
    OtherEpoch,
    /// Not in the hub's format: maybe a publisher's own id.
    Foreign,
}

/// Longest `Last-Event-ID` looked at; longer ones are malformed without being scanned.
pub(crate) const MAX_LAST_EVENT_ID: usize = crate::frame::MAX_ID_BYTES;

/// Parses a `Last-Event-ID` in the hub's format, canonical only (lower-case hex epoch, decimal
/// sequence without leading zeros or signs).
pub(crate) fn parse_id(id: &str, epoch: u64) -> Parsed {
    let Some((e, s)) = id.split_once('-') else {
        return Parsed::Foreign;
    };
    let canonical_hex = !e.is_empty()
        && e.len() <= 16
        && e.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && (e == "0" || !e.starts_with('0'));
    let canonical_dec = !s.is_empty()
        && s.len() <= 20
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !canonical_hex || !canonical_dec {
        return Parsed::Foreign;
    }
    match (u64::from_str_radix(e, 16), s.parse::<u64>()) {
        (Ok(e), Ok(seq)) if e == epoch => Parsed::Ours(seq),
        (Ok(_), Ok(_)) => Parsed::OtherEpoch,
        _ => Parsed::Foreign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Bytes {
        Bytes::from(format!("data: {n}\n\n"))
    }

    #[test]
    fn ring_evicts_by_count_bytes_and_age() {
        let t0 = Instant::now();
        let limits = HistoryLimits::new()
            .with_max_events(3)
            .with_max_bytes(1000)
            .with_max_age(Some(Duration::from_secs(10)));
        let mut h = History::default();
        for n in 1..=5 {
            h.append(n, None, &frame(n), t0, &limits);
        }
        assert_eq!(h.after(0, 10).map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(h.evicted_upto(), 2);
        let small = limits.with_max_bytes(20);
        h.prune(t0, &small);
        assert_eq!(h.after(0, 10).map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
        h.prune(t0 + Duration::from_secs(11), &limits);
        assert!(h.is_empty());
        assert_eq!(h.last_seq(), 5);
    }

    #[test]
    fn after_is_bounded_and_finds_publisher_ids() {
        let limits = HistoryLimits::new();
        let mut h = History::default();
        for n in 1..=10 {
            h.append(n * 2, Some(&format!("p{n}")), &frame(n), Instant::now(), &limits);
        }
        assert_eq!(h.after(7, 2).map(|e| e.seq).collect::<Vec<_>>(), [8, 10, 12]);
        assert_eq!(h.find("p3"), Some(6));
        assert_eq!(h.find("nope"), None);
    }

    #[test]
    fn ids_parse_only_when_canonical() {
        assert_eq!(parse_id(&format_id(0xabc, 42), 0xabc), Parsed::Ours(42));
        assert_eq!(parse_id("abd-42", 0xabc), Parsed::OtherEpoch);
        for foreign in [
            "abc-042",
            "ABC-42",
            "abc-+4",
            "abc-",
            "-4",
            "abc",
            "abc-4-2",
            "0abc-4",
            "abc-99999999999999999999",
        ] {
            assert_eq!(parse_id(foreign, 0xabc), Parsed::Foreign, "{foreign}");
        }
    }
}
