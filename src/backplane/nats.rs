//! The NATS backplane: history in one JetStream stream, fan-out to each node over a core NATS
//! subject by an ordered push consumer.
//!
//! Each topic is a subject `PREFIX.TOKEN` of the stream (`ssehub.>` by default), its token the
//! topic name with every byte outside `[A-Za-z0-9_:-]` written `%HH`, so any topic is one valid
//! subject token. A publish is a JetStream publish: acknowledged once the stream stored it, with
//! its stream sequence, which is the event's number on every node. Each node consumes the stream
//! with an ordered push consumer: the server pushes every message to a core NATS inbox of the
//! node, in stream order, each carrying its stream sequence; the client checks the sequence and
//! recreates the consumer where it left off after a gap or a reconnect.
//!
//! Plain core-NATS subscribers of the subjects would get the same messages with less work on the
//! server, but without their sequence numbers, so neither the id nor a missed message could be
//! known: the consumer is what makes the fan-out exact.
//!
//! The epoch is the stream's creation time: a stream deleted and made again (or lost with its
//! server's storage) numbers from 1 again, and its ids are then told apart from the old ones.

use std::time::Duration;

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType, Stream};
use async_nats::jetstream::Context;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use super::broker::{Broker, Connect, Fetched, Incoming, Link, Live, Outgoing, Polled, Position};
use super::{window, BackplaneError, BrokerError, Common};
use crate::engine::history::ResetReason;
use crate::sync::{AtomicU64, Ordering, PlainArc};
use crate::topic::Pattern;

/// The most stream messages one pattern resume may scan (more gets a `too-many` reset).
const MAX_SCAN: u64 = 100_000;

/// How a node joins NATS.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let nats = ssehub::backplane::Nats::new("nats://127.0.0.1:4222")
///     .with_stream("SSEHUB", "ssehub")
///     .with_max_events(1_000_000)
///     .with_max_age(Some(Duration::from_secs(3600)));
/// # drop(nats);
/// ```
#[derive(Clone)]
#[must_use]
pub struct Nats {
    /// `nats://host:port`.
    url: String,
    /// The JetStream stream's name.
    stream: String,
    /// The subjects' prefix (the stream takes `PREFIX.>`).
    prefix: String,
    /// Messages the stream keeps.
    max_events: usize,
    /// Age past which the stream drops a message.
    max_age: Option<Duration>,
    /// Timeouts and backoff.
    common: Common,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("url", &super::redact(&self.url))
            .field("stream", &self.stream)
            .field("prefix", &self.prefix)
            .field("max_events", &self.max_events)
            .field("max_age", &self.max_age)
            .field("common", &self.common)
            .finish()
    }
}

impl Nats {
    /// NATS at `url`, stream `SSEHUB` on subjects `ssehub.>` keeping 100,000 events for at most
    /// a day, in files; 5 s timeouts, reconnects backing off from 100 ms to 5 s.
    ///
    /// # Examples
    ///
    /// ```
    /// let nats = ssehub::backplane::Nats::new("nats://127.0.0.1:4222");
    /// # drop(nats);
    /// ```
    pub fn new(url: &str) -> Self {
        Nats {
            url: url.to_string(),
            stream: "SSEHUB".to_string(),
            prefix: "ssehub".to_string(),
            max_events: 100_000,
            max_age: Some(Duration::from_secs(24 * 3600)),
            common: Common::default(),
        }
    }

    /// The stream's name and the prefix of its subjects, so several deployments can share a
    /// NATS account. The stream is made when missing; an existing one is used as it is.
    ///
    /// # Examples
    ///
    /// ```
    /// let nats = ssehub::backplane::Nats::new("nats://127.0.0.1").with_stream("STAGING", "staging");
    /// # drop(nats);
    /// ```
    pub fn with_stream(mut self, name: &str, prefix: &str) -> Self {
        self.stream = name.to_string();
        self.prefix = prefix.to_string();
        self
    }

    /// Events the stream keeps, over all topics (at least 1). A resume from before the oldest
    /// kept gets a `too-old` reset.
    ///
    /// # Examples
    ///
    /// ```
    /// let nats = ssehub::backplane::Nats::new("nats://127.0.0.1").with_max_events(10_000);
    /// # drop(nats);
    /// ```
    pub fn with_max_events(mut self, events: usize) -> Self {
        self.max_events = events.max(1);
        self
    }

    /// The age past which the stream drops an event, or `None` for none.
    ///
    /// # Examples
    ///
    /// ```
    /// let nats = ssehub::backplane::Nats::new("nats://127.0.0.1").with_max_age(None);
    /// # drop(nats);
    /// ```
    pub fn with_max_age(mut self, age: Option<Duration>) -> Self {
        self.max_age = age;
        self
    }

    /// How long one NATS operation (a publish, a fetch, a connect) may take.
    ///
    /// # Examples
    ///
    /// ```
    /// let nats = ssehub::backplane::Nats::new("nats://127.0.0.1")
    ///     .with_timeout(std::time::Duration::from_secs(1));
    /// # drop(nats);
    /// ```
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.common.timeout = timeout;
        self
    }

    /// Most publishes that may wait on this node for the broker, behind the batch on the wire
    /// (4,096 by default): beyond it [`Backplane::publish`](super::Backplane::publish) fails at
    /// once with [`BackplaneError::Busy`](super::BackplaneError::Busy) instead of queueing
    /// without end. Concurrent publishes go to the broker in batches of up to 256 events (or
    /// 512 KiB) per round trip.
    ///
    /// # Examples
    ///
    /// ```
    /// let nats = ssehub::backplane::Nats::new("nats://127.0.0.1").with_max_in_flight(10_000);
    /// # drop(nats);
    /// ```
    pub fn with_max_in_flight(mut self, publishes: usize) -> Self {
        self.common.max_in_flight = publishes;
        self
    }

    /// The first and the longest pause between reconnect attempts (doubling, with jitter).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let nats = ssehub::backplane::Nats::new("nats://127.0.0.1")
    ///     .with_backoff(Duration::from_millis(50), Duration::from_secs(2));
    /// # drop(nats);
    /// ```
    pub fn with_backoff(mut self, first: Duration, longest: Duration) -> Self {
        self.common.backoff = super::Backoff { first, longest: longest.max(first) };
        self
    }
}

impl Connect for Nats {
    fn common(&self) -> Common {
        self.common
    }

    /// Connects and makes or finds the stream. The client then keeps its connection up by
    /// itself, paced by the node's backoff, and reports it going down and up to `link`.
    fn connect(
        &self,
        link: Link,
    ) -> BoxFuture<'static, Result<PlainArc<dyn Broker>, BackplaneError>> {
        Box::pin(self.clone().open(link))
    }
}

impl Nats {
    /// See [`Connect::connect`].
    async fn open(self, link: Link) -> Result<PlainArc<dyn Broker>, BackplaneError> {
        let timeout = self.common.timeout;
        let backoff = self.common.backoff;
        // Unknown (0) after a disconnect, until read again: a server may come back without
        // its stream, and a new stream is a new epoch.
        let epoch = PlainArc::new(AtomicU64::new(0));
        let forget = epoch.clone();
        let reports = link.clone();
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .event_callback(move |event| {
                match event {
                    async_nats::Event::Disconnected => {
                        // Relaxed: a cache; a stale read costs one more lookup.
                        forget.store(0, Ordering::Relaxed);
                        reports.report(false);
                    }
                    async_nats::Event::Connected => reports.report(true),
                    _ => {}
                }
                std::future::ready(())
            })
            .reconnect_delay_callback(move |attempts| {
                let attempt = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
                backoff.pause(attempt, super::supervisor::jitter())
            });
        let client = tokio::time::timeout(timeout, options.connect(self.url.as_str()))
            .await
            .map_err(|_| BackplaneError::Timeout(timeout))?
            .map_err(|e| BackplaneError::Unavailable(BrokerError::wrap(e)))?;
        let context = async_nats::jetstream::new(client.clone());
        let config = StreamConfig {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.prefix)],
            max_messages: i64::try_from(self.max_events).unwrap_or(i64::MAX),
            max_age: self.max_age.unwrap_or_default(),
            storage: StorageType::File,
            ..StreamConfig::default()
        };
        within(timeout, context.get_or_create_stream(config.clone())).await?;
        Ok(PlainArc::new(Client(Inner {
            client,
            context,
            stream_config: config,
            prefix: PlainArc::from(self.prefix.as_str()),
            stream_name: self.stream,
            timeout,
            epoch,
            link,
        })))
    }
}

/// `future` within `timeout`, its error as a backplane error.
async fn within<T, E: std::error::Error + Send + Sync + 'static>(
    timeout: Duration,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BackplaneError> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| BackplaneError::Timeout(timeout))?
        .map_err(|e| BackplaneError::Unavailable(BrokerError::wrap(e)))
}

/// The node's NATS client.
struct Client(Inner);

/// See [`Client`].
struct Inner {
    /// The connection (it reconnects by itself).
    client: async_nats::Client,
    /// JetStream on it.
    context: Context,
    /// The stream, as made when missing (at join, and again if it vanishes).
    stream_config: StreamConfig,
    /// The stream's name.
    stream_name: String,
    /// The subjects' prefix (shared with the live stream, which reads topics from subjects).
    prefix: PlainArc<str>,
    /// How long one operation may take.
    timeout: Duration,
    /// The stream's epoch, as last read (0 when it must be read again).
    epoch: PlainArc<AtomicU64>,
    /// Where the client reports its connection going down and up.
    link: Link,
}

/// An ordered consumer's messages.
type Messages = async_nats::jetstream::consumer::push::Ordered;

impl Client {
    /// The subject of `topic`.
    fn subject(&self, topic: &str) -> String {
        subject_of(&self.0.prefix, topic)
    }

    /// The stream, looked up again (its state is what a caller wants).
    async fn stream(&self) -> Result<Stream, BackplaneError> {
        within(self.0.timeout, self.0.context.get_stream(&self.0.stream_name)).await
    }

    /// The stream's epoch (its creation time in milliseconds) and last sequence number, and its
    /// first one.
    async fn tip(&self, stream: &Stream) -> Result<(u64, u64, u64), BackplaneError> {
        let info = within(self.0.timeout, stream.get_info()).await?;
        let created = info.created.unix_timestamp_nanos() / 1_000_000;
        let epoch = u64::try_from(created).map_err(|_| BackplaneError::Protocol)?;
        // Relaxed: a value on its own, for publish acknowledgements.
        self.0.epoch.store(epoch, Ordering::Relaxed);
        Ok((epoch, info.state.last_sequence, info.state.first_sequence))
    }

    /// See [`Broker::subscribe`]: learns where the stream is (making it again if the server
    /// lost it: a new epoch), then consumes it from just after there: every message stored
    /// later arrives on the consumer, everything before is in the stream.
    async fn subscribe(&self) -> Result<(Position, Live), BackplaneError> {
        let made = self.0.context.get_or_create_stream(self.0.stream_config.clone());
        let stream = within(self.0.timeout, made).await?;
        let (epoch, upto, _) = self.tip(&stream).await?;
        let config = OrderedConfig {
            deliver_subject: self.0.client.new_inbox(),
            filter_subject: format!("{}.>", self.0.prefix),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: upto + 1 },
            ..OrderedConfig::default()
        };
        let consumer = within(self.0.timeout, stream.create_consumer(config)).await?;
        let messages = within(self.0.timeout, consumer.messages()).await?;
        let live = self.0.link.merge(live(messages, self.0.prefix.clone()));
        Ok((Position { epoch, seq: upto }, live))
    }

    /// See [`Broker::position`].
    async fn position(&self) -> Polled {
        let connected =
            self.0.client.connection_state() == async_nats::connection::State::Connected;
        match self.stream().await {
            Ok(stream) => match self.tip(&stream).await {
                Ok((epoch, seq, _)) => Polled::At(Position { epoch, seq }),
                Err(_) => Polled::Unreachable,
            },
            // Connected, yet no stream: the server lost it (with its storage).
            Err(_) if connected => Polled::NoHistory,
            Err(_) => Polled::Unreachable,
        }
    }

    /// See [`Broker::publish`]: every message of the batch is sent back to back, then their
    /// acknowledgements are awaited together, so the batch costs one round trip. Sent in order
    /// on one connection, the messages are stored in that order.
    async fn publish(&self, batch: Vec<Outgoing>) -> Vec<Result<Position, BackplaneError>> {
        // While disconnected the client would queue the messages and send them after the
        // reconnect, long after this publish was reported failed: refuse them now instead.
        if self.0.client.connection_state() != async_nats::connection::State::Connected {
            let down = BackplaneError::Unavailable(BrokerError::wrap(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "not connected to NATS",
            )));
            return window::each(&down, batch.len());
        }
        let timeout = self.0.timeout;
        let mut sent = Vec::with_capacity(batch.len());
        for event in batch {
            let subject = self.subject(&event.topic);
            sent.push(within(timeout, self.0.context.publish(subject, event.payload.into())).await);
        }
        let acknowledged =
            futures_util::future::join_all(sent.into_iter().map(|sent| async move {
                let ack = within(timeout, std::future::IntoFuture::into_future(sent?)).await?;
                Ok::<_, BackplaneError>(ack.sequence)
            }))
            .await;
        // The epoch as last read (at join, every second, and after a reconnect): reading it on
        // every publish would double a publish's round trips.
        let mut epoch = self.0.epoch.load(Ordering::Relaxed);
        if epoch == 0 {
            let tip = match self.stream().await {
                Ok(stream) => self.tip(&stream).await,
                Err(error) => Err(error),
            };
            match tip {
                Ok((current, _, _)) => epoch = current,
                Err(error) => return window::each(&error, acknowledged.len()),
            }
        }
        acknowledged.into_iter().map(|seq| seq.map(|seq| Position { epoch, seq })).collect()
    }

    /// See [`Broker::fetch`]: up to the stream's position when asked.
    async fn fetch(
        &self,
        after: u64,
        topics: &[String],
        patterns: &[Pattern],
        max: usize,
    ) -> Result<Fetched, BackplaneError> {
        let stream = self.stream().await?;
        let (epoch, upto, first) = self.tip(&stream).await?;
        let mut fetched = Fetched { epoch, upto, ..Fetched::default() };
        if upto <= after {
            return Ok(fetched);
        }
        // Limits trim the stream as a whole: a resume from before its first message may have
        // lost events of any topic.
        if first > after + 1 {
            fetched.reset = Some(ResetReason::TooOld);
            return Ok(fetched);
        }
        let mut filters: Vec<(String, bool)> = Vec::new();
        if patterns.is_empty() {
            let mut names = topics.to_vec();
            names.sort_unstable();
            names.dedup();
            filters.extend(names.iter().map(|t| (self.subject(t), false)));
        } else if upto - after > MAX_SCAN {
            fetched.reset = Some(ResetReason::TooMany);
            return Ok(fetched);
        } else {
            filters.push((format!("{}.>", self.0.prefix), true));
        }
        for (filter, scan) in filters {
            let wanted = |topic: &str| {
                !scan
                    || topics.iter().any(|t| t == topic)
                    || patterns.iter().any(|p| p.matches(topic))
            };
            self.read(&stream, after, &filter, max, &wanted, &mut fetched).await?;
            if fetched.events.len() > max {
                break;
            }
        }
        fetched.events.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(fetched)
    }

    /// Reads the messages on `filter` in `(after, fetched.upto]` into `fetched`, at most
    /// `max + 1`.
    async fn read(
        &self,
        stream: &Stream,
        after: u64,
        filter: &str,
        max: usize,
        wanted: &(dyn Fn(&str) -> bool + Sync),
        fetched: &mut Fetched,
    ) -> Result<(), BackplaneError> {
        let config = OrderedConfig {
            deliver_subject: self.0.client.new_inbox(),
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            ..OrderedConfig::default()
        };
        let consumer = within(self.0.timeout, stream.create_consumer(config)).await?;
        let mut pending = consumer.cached_info().num_pending;
        let mut messages = within(self.0.timeout, consumer.messages()).await?;
        while pending > 0 && fetched.events.len() <= max {
            let message = tokio::time::timeout(self.0.timeout, messages.next())
                .await
                .map_err(|_| BackplaneError::Timeout(self.0.timeout))?
                .ok_or(BackplaneError::Protocol)?
                .map_err(|e| BackplaneError::Unavailable(BrokerError::wrap(e)))?;
            let info = message.info().map_err(|_| BackplaneError::Protocol)?;
            let seq = info.stream_sequence;
            pending = info.pending;
            if seq > fetched.upto {
                break;
            }
            let Some(topic) = topic_of(&self.0.prefix, message.subject.as_str()) else { continue };
            if !wanted(&topic) {
                continue;
            }
            // Undecodable events are skipped here as they are live.
            if let Ok(event) = super::codec::decode(&message.payload) {
                fetched.events.push((seq, event));
            }
        }
        Ok(())
    }
}

impl Client {
    /// See [`Broker::recover`]: one ordered consumer over every topic's subject, from just
    /// after `from`, read up to `upto`.
    async fn recover(
        &self,
        from: Position,
        upto: u64,
        max: usize,
    ) -> Result<Option<Vec<Incoming>>, BackplaneError> {
        let stream = self.stream().await?;
        let (epoch, _, first) = self.tip(&stream).await?;
        let wanted = upto.saturating_sub(from.seq);
        // Limits trim the stream as a whole: a first message past the range's start means
        // some of it is gone.
        if epoch != from.epoch || first > from.seq + 1 || wanted > max as u64 {
            return Ok(None);
        }
        let mut events = Vec::new();
        if wanted == 0 {
            return Ok(Some(events));
        }
        let config = OrderedConfig {
            deliver_subject: self.0.client.new_inbox(),
            filter_subject: format!("{}.>", self.0.prefix),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from.seq + 1 },
            ..OrderedConfig::default()
        };
        let consumer = within(self.0.timeout, stream.create_consumer(config)).await?;
        let mut pending = consumer.cached_info().num_pending;
        let mut messages = within(self.0.timeout, consumer.messages()).await?;
        // Bounded by `pending` and by `max`: the stream may have lost messages of the range.
        while pending > 0 && events.len() < max {
            let message = tokio::time::timeout(self.0.timeout, messages.next())
                .await
                .map_err(|_| BackplaneError::Timeout(self.0.timeout))?
                .ok_or(BackplaneError::Protocol)?
                .map_err(|e| BackplaneError::Unavailable(BrokerError::wrap(e)))?;
            let info = message.info().map_err(|_| BackplaneError::Protocol)?;
            let seq = info.stream_sequence;
            pending = info.pending;
            if seq > upto {
                break;
            }
            events.push(Incoming::Event {
                epoch: None,
                seq,
                topic: topic_of(&self.0.prefix, message.subject.as_str()),
                payload: message.payload.clone(),
            });
            if seq == upto {
                break;
            }
        }
        Ok(Some(events))
    }
}

impl Broker for Client {
    fn publish(
        &self,
        batch: Vec<Outgoing>,
    ) -> BoxFuture<'_, Vec<Result<Position, BackplaneError>>> {
        Box::pin(Client::publish(self, batch))
    }

    /// NATS numbers within a stream whose epoch is its creation time: a stream that went back
    /// is another stream, so `seen` tells it nothing.
    fn subscribe(
        &self,
        _: Option<Position>,
    ) -> BoxFuture<'_, Result<(Position, Live), BackplaneError>> {
        Box::pin(Client::subscribe(self))
    }

    fn fetch<'a>(
        &'a self,
        after: u64,
        topics: &'a [String],
        patterns: &'a [Pattern],
        max: usize,
    ) -> BoxFuture<'a, Result<Fetched, BackplaneError>> {
        Box::pin(Client::fetch(self, after, topics, patterns, max))
    }

    fn position(&self) -> BoxFuture<'_, Polled> {
        Box::pin(Client::position(self))
    }

    fn recover(
        &self,
        from: Position,
        upto: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<Option<Vec<Incoming>>, BackplaneError>> {
        Box::pin(Client::recover(self, from, upto, max))
    }
}

/// An ordered consumer's messages as a live stream. The consumer recreates itself after a
/// reconnect or a gap; a run of ten failures in a row means it cannot, and ends the stream so
/// the node subscribes again from scratch.
fn live(messages: Messages, prefix: PlainArc<str>) -> Live {
    let state = (messages, prefix, 0u32);
    futures_util::stream::unfold(state, |(mut messages, prefix, mut errors)| async move {
        loop {
            match messages.next().await? {
                Err(_) => {
                    errors += 1;
                    if errors >= 10 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(message) => {
                    let item = match message.info() {
                        Ok(info) => Incoming::Event {
                            epoch: None,
                            seq: info.stream_sequence,
                            topic: topic_of(&prefix, message.subject.as_str()),
                            payload: message.payload.clone(),
                        },
                        Err(_) => Incoming::Unreadable,
                    };
                    return Some((item, (messages, prefix, 0)));
                }
            }
        }
    })
    .boxed()
}

/// The subject of `topic`: every byte outside `[A-Za-z0-9_:-]` as `%HH`.
fn subject_of(prefix: &str, topic: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + 1 + topic.len());
    subject.push_str(prefix);
    subject.push('.');
    for byte in topic.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b':' | b'-') {
            subject.push(char::from(byte));
        } else {
            subject.push_str(&format!("%{byte:02X}"));
        }
    }
    subject
}

/// The topic of `subject`, if it is one of `prefix`'s.
fn topic_of(prefix: &str, subject: &str) -> Option<String> {
    let token = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_through_subjects() {
        for topic in ["price:BTC", "a.b c*>%", "\u{fc}n\u{ef}", "x-y_z"] {
            let subject = subject_of("ssehub", topic);
            assert!(!subject["ssehub.".len()..].contains(['.', ' ', '*', '>']), "{subject}");
            assert_eq!(topic_of("ssehub", &subject).as_deref(), Some(topic));
        }
        assert_eq!(topic_of("ssehub", "other.x"), None);
        assert_eq!(topic_of("ssehub", "ssehub.%4"), None);
    }
}
