//! Every error the engine returns. Lag and drops are not errors: they are state reported on the
//! stream (`Batch::lagged`) and in [`Stats`](crate::Stats).

use crate::frame::Event;

/// Why an [`Event`] cannot be encoded into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The `event` name contains CR or LF, which would end the field early on the wire.
    #[error("event name contains a line break")]
    LineBreakInEvent,
    /// The `id` contains CR or LF, which would end the field early on the wire.
    #[error("event id contains a line break")]
    LineBreakInId,
    /// The `id` contains NUL; conforming clients ignore such an id, so it could never resume.
    #[error("event id contains NUL")]
    NulInId,
    /// The `id` contains another control character (a tab, an escape, ...): a client could not
    /// send it back in a `Last-Event-ID` header, and a resume treats such an id as malformed.
    #[error("event id contains a control character")]
    ControlInId,
    /// The `id` is longer than a client may send back in `Last-Event-ID` (256 bytes): a client
    /// could never resume from it.
    #[error("event id is {len} bytes, over the limit of {max}")]
    IdTooLong {
        /// Length of the id in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The encoded frame would be larger than the hub's `max_event_bytes`.
    #[error("encoded event is {size} bytes, over the limit of {max}")]
    TooLarge {
        /// Size of the encoded frame in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },
}

/// Why a topic name or a pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The name is empty.
    #[error("topic name is empty")]
    Empty,
    /// The name is longer than the hub's limit (in bytes).
    #[error("topic name is {len} bytes, over the limit of {max}")]
    TooLong {
        /// Length of the name in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The name contains a control character (U+0000..U+001F, U+007F..U+009F).
    #[error("topic name contains a control character")]
    ControlChar,
    /// The name contains an invisible formatting character (zero-width space, bidi override, ...).
    #[error("topic name contains an invisible character")]
    InvisibleChar,
    /// A topic name contains `*`, which is reserved for patterns.
    #[error("topic name contains '*', which only patterns may use")]
    Wildcard,
}

/// Why [`Hub::publish`](crate::Hub::publish) (or `broadcast`, `send_to`) refused an event.
///
/// Nothing was delivered, stored or counted when an error is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The hub was shut down; the event is handed back.
    #[error("hub is shut down")]
    Closed(Box<Event>),
    /// The event cannot be encoded.
    #[error("invalid event: {0}")]
    Event(#[from] EventError),
    /// The topic name is invalid.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// The glob over client ids given to [`Hub::send_to_matching`](crate::Hub::send_to_matching)
    /// is invalid (the rules of [`Pattern`](crate::Pattern), within the client id limit).
    #[error("invalid client pattern: {0}")]
    ClientPattern(TopicError),
}

/// Why [`Hub::subscribe`](crate::Hub::subscribe) refused a subscription.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The hub was shut down.
    #[error("hub is shut down")]
    Closed,
    /// A topic name or pattern is invalid.
    #[error("invalid topic {name:?}: {error}")]
    Topic {
        /// The offending name, truncated to 64 bytes so an attacker's input is not echoed whole.
        name: String,
        /// What is wrong with it.
        error: TopicError,
    },
    /// More topics and patterns than the hub allows per subscription.
    #[error("{count} topics and patterns, over the limit of {max}")]
    TooManyTopics {
        /// How many were asked for.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// The hub already has as many subscribers as it allows.
    #[error("hub is full ({max} subscribers)")]
    Full {
        /// The configured limit.
        max: usize,
    },
    /// A new session was needed, but the hub already remembers as many as
    /// [`SessionLimits::max_sessions`](crate::SessionLimits::max_sessions) allows and every one
    /// of them has a live connection (a disconnected one would have been forgotten to make room).
    #[error("hub is full ({max} sessions)")]
    SessionsFull {
        /// The configured limit.
        max: usize,
    },
    /// A session resume token was presented by a principal other than the session's owner.
    /// The attempt is counted in [`Stats::session_hijacks`](crate::Stats::session_hijacks).
    #[error("session token belongs to another principal")]
    SessionRefused,
    /// The missed events must come from the backplane's broker, which cannot be reached now;
    /// retrying later resumes exactly, where subscribing anyway would leave a gap.
    #[error("backplane broker unavailable for replay")]
    Unavailable,
    /// The client id or metadata (see [`Subscribe::with_client`](crate::Subscribe::with_client))
    /// is invalid or over its size limits.
    #[error("invalid client: {0}")]
    Client(#[from] ClientError),
    /// The rate tier's interval (see
    /// [`Subscribe::with_interval`](crate::Subscribe::with_interval)) is refused.
    #[error("invalid interval: {0}")]
    Interval(#[from] IntervalError),
}

/// Why a rate tier's interval (see [`Subscribe::with_interval`](crate::Subscribe::with_interval))
/// is refused.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ssehub::{Hub, IntervalError, Subscribe, SubscribeError};
///
/// let hub = Hub::new();
/// let fast = Subscribe::new().with_topic("t").with_interval(Duration::from_micros(500));
/// assert!(matches!(
///     hub.subscribe(fast),
///     Err(SubscribeError::Interval(IntervalError::OutOfRange { .. }))
/// ));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntervalError {
    /// Not a whole number of milliseconds from 10 ms to 60 s (zero means every event).
    #[error("{interval:?} is not a whole number of milliseconds from 10ms to 60s")]
    OutOfRange {
        /// The interval asked for.
        interval: std::time::Duration,
    },
    /// The hub already ticks as many distinct intervals as it allows (see
    /// [`HubBuilder::with_max_intervals`](crate::HubBuilder::with_max_intervals)).
    #[error("the hub already runs {max} distinct intervals")]
    TooMany {
        /// The configured limit.
        max: usize,
    },
}

/// Why [`Hub::update_subscription`](crate::Hub::update_subscription) or
/// [`Hub::update_session`](crate::Hub::update_session) refused a change. Nothing changed when
/// one is returned.
///
/// # Examples
///
/// ```
/// use ssehub::{Hub, SubscriptionChange, UpdateError};
///
/// let hub = Hub::new();
/// let sub = hub.subscribe("a")?;
/// let id = sub.id();
/// drop(sub);
/// let change = SubscriptionChange::new().with_added_topic("b");
/// assert_eq!(hub.update_subscription(id, change), Err(UpdateError::Ended));
/// # Ok::<(), ssehub::SubscribeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The hub was shut down.
    #[error("hub is shut down")]
    Closed,
    /// No live subscription has that id, or the session has no open stream now.
    #[error("no open stream to change")]
    Ended,
    /// No session has that token (or it expired).
    #[error("unknown session")]
    UnknownSession,
    /// The session belongs to another principal. The attempt is counted in
    /// [`Stats::session_hijacks`](crate::Stats::session_hijacks).
    #[error("session belongs to another principal")]
    SessionRefused,
    /// A topic name or pattern is invalid.
    #[error("invalid topic {name:?}: {error}")]
    Topic {
        /// The offending name, truncated to 64 bytes.
        name: String,
        /// What is wrong with it.
        error: TopicError,
    },
    /// The subscription would ask for more topics and patterns than the hub allows.
    #[error("{count} topics and patterns, over the limit of {max}")]
    TooManyTopics {
        /// How many it would ask for.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// The new interval is refused.
    #[error("invalid interval: {0}")]
    Interval(IntervalError),
    /// The stream is compressed: its stream class (its topics, patterns and pace) is fixed
    /// for its life. Open a new stream instead.
    #[error("a compressed stream's subscription cannot change")]
    Compressed,
}

impl From<SubscribeError> for UpdateError {
    fn from(error: SubscribeError) -> UpdateError {
        match error {
            SubscribeError::Topic { name, error } => UpdateError::Topic { name, error },
            SubscribeError::TooManyTopics { count, max } => {
                UpdateError::TooManyTopics { count, max }
            }
            SubscribeError::SessionRefused => UpdateError::SessionRefused,
            SubscribeError::Interval(error) => UpdateError::Interval(error),
            // Closed, and what a change never meets (a full hub, a replay, a client id).
            _ => UpdateError::Closed,
        }
    }
}

/// Why a subscription's client id or metadata (see
/// [`Subscribe::with_client`](crate::Subscribe::with_client)) is refused.
///
/// # Examples
///
/// ```
/// use ssehub::{ClientError, Hub, Subscribe, SubscribeError, TopicError};
///
/// let hub = Hub::new();
/// let refused = hub.subscribe(Subscribe::new().with_client("job:*")).map(drop);
/// assert_eq!(refused, Err(SubscribeError::Client(ClientError::Id(TopicError::Wildcard))));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The id breaks the rules of a topic name: empty, over 256 bytes, a control or invisible
    /// character, or `*` (kept for the globs of [`Hub::send_to_matching`](crate::Hub::send_to_matching)).
    #[error("client id: {0}")]
    Id(TopicError),
    /// More metadata entries than allowed.
    #[error("{count} metadata entries, over the limit of {max}")]
    TooManyEntries {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The metadata's keys and values add up to more bytes than allowed.
    #[error("metadata is {len} bytes, over the limit of {max}")]
    MetadataTooLarge {
        /// Bytes of every key and value together.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A metadata key is empty.
    #[error("metadata key is empty")]
    EmptyKey,
}

/// Why a subscription's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndReason {
    /// The subscriber could not keep up and its policy is [`SlowPolicy::Disconnect`](crate::SlowPolicy::Disconnect).
    #[error("subscriber was too slow")]
    Slow,
    /// The hub was shut down.
    #[error("hub shut down")]
    Shutdown,
    /// The application ended it (for example through
    /// [`Hub::disconnect`](crate::Hub::disconnect)).
    #[error("subscriber was disconnected")]
    Disconnected,
    /// The subscription was dropped.
    #[error("subscription was dropped")]
    Dropped,
    /// Its expiry came (see [`Subscribe::with_expiry`](crate::Subscribe::with_expiry)): the
    /// stream ended with a final `event: expired` frame, so its client reconnects with a fresh
    /// credential.
    #[error("subscription expired")]
    Expired,
    /// Its principal was revoked (see [`Hub::revoke`](crate::Hub::revoke)): the stream ended
    /// with a final `event: revoked` frame.
    #[error("subscriber's principal was revoked")]
    Revoked,
}

/// Why a producer cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerError {
    /// `add_producer` was called outside a Tokio runtime, where nothing could run it.
    #[error("producers need a Tokio runtime; call add_producer from within one")]
    NoRuntime,
    /// The target is not a valid topic name or pattern.
    #[error("invalid producer target: {0}")]
    Target(#[from] TopicError),
    /// The hub was shut down.
    #[error("hub is shut down")]
    Closed,
}

/// Why a TLS certificate and key could not be loaded (`server::TlsConfig`).
#[cfg(feature = "rustls")]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// The certificate PEM holds no `CERTIFICATE` block, or a malformed one.
    #[error("no valid certificate in {origin}: {reason}")]
    Certificate {
        /// The file, or `PEM` for bytes given directly.
        origin: String,
        /// What was wrong.
        reason: String,
    },
    /// The key PEM holds no private key (PKCS#8, PKCS#1 or SEC1), or a malformed one.
    #[error("no valid private key in {origin}: {reason}")]
    PrivateKey {
        /// The file, or `PEM` for bytes given directly.
        origin: String,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the pair: the key does not belong to the certificate, or its algorithm
    /// is not supported.
    #[error("certificate and key refused: {0}")]
    Refused(String),
}
