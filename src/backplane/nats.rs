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
use futures_util::StreamExt;

use super::{backoff, BackplaneError, Broker, BrokerError, Common, Fetched, Node};
use crate::history::ResetReason;
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
    max_events: i64,
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
    pub fn with_max_events(mut self, events: u64) -> Self {
        self.max_events = i64::try_from(events.max(1)).unwrap_or(i64::MAX);
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
        self.common.backoff = (first, longest.max(first));
        self
    }

    /// The settings shared by every broker.
    pub(super) fn common(&self) -> Common {
        self.common
    }

    /// Connects, makes or finds the stream, joins it and starts the node's task.
    pub(super) async fn open(
        self,
        node: &PlainArc<Node>,
    ) -> Result<(Broker, tokio::task::JoinHandle<()>), BackplaneError> {
        let timeout = self.common.timeout;
        let common = self.common;
        let events = PlainArc::downgrade(node);
        // Unknown (0) after a disconnect, until read again: a server may come back without
        // its stream, and a new stream is a new epoch.
        let epoch = PlainArc::new(AtomicU64::new(0));
        let forget = epoch.clone();
        let reconnects = PlainArc::downgrade(node);
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .event_callback(move |event| {
                let node = events.upgrade();
                if matches!(event, async_nats::Event::Disconnected) {
                    // Relaxed: a cache; a stale read costs one more lookup.
                    forget.store(0, Ordering::Relaxed);
                }
                async move {
                    match (event, node) {
                        (async_nats::Event::Connected, Some(node)) => node.set_connected(true),
                        (async_nats::Event::Disconnected, Some(node)) => node.set_connected(false),
                        _ => {}
                    }
                }
            })
            .reconnect_delay_callback(move |attempts| {
                let jitter = reconnects.upgrade().map_or(0, |node| {
                    let jitter = node.shared.jitter(Duration::from_secs(3600));
                    u64::try_from(jitter.as_millis()).unwrap_or(0)
                });
                let attempt = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
                backoff(&common, attempt, jitter)
            });
        let client = tokio::time::timeout(timeout, options.connect(self.url.as_str()))
            .await
            .map_err(|_| BackplaneError::Timeout(timeout))?
            .map_err(|e| BackplaneError::Unavailable(BrokerError::wrap(e)))?;
        let context = async_nats::jetstream::new(client.clone());
        let config = StreamConfig {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.prefix)],
            max_messages: self.max_events,
            max_age: self.max_age.unwrap_or_default(),
            storage: StorageType::File,
            ..StreamConfig::default()
        };
        let stream = within(timeout, context.get_or_create_stream(config.clone())).await?;
        let client = Client(PlainArc::new(Inner {
            client,
            context,
            stream_config: config,
            stream_name: self.stream,
            prefix: self.prefix,
            timeout,
            epoch,
        }));
        let (messages, _) = client.join(node, &stream).await?;
        node.set_connected(true);
        let task = tokio::spawn(run(node.clone(), client.clone(), messages));
        Ok((Broker::Nats(client), task))
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
#[derive(Clone)]
pub(crate) struct Client(PlainArc<Inner>);

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
    /// The subjects' prefix.
    prefix: String,
    /// How long one operation may take.
    timeout: Duration,
    /// The stream's epoch, as last read (0 when it must be read again).
    epoch: PlainArc<AtomicU64>,
}

/// An ordered consumer's messages.
type Messages = async_nats::jetstream::consumer::push::Ordered;

impl Client {
    /// The subject of `topic`.
    fn subject(&self, topic: &str) -> String {
        subject_of(&self.0.prefix, topic)
    }

    /// The topic of `subject`, if it is one of ours.
    fn topic(&self, subject: &str) -> Option<String> {
        topic_of(&self.0.prefix, subject)
    }

    /// The stream, looked up again (its state is what a caller wants).
    async fn stream(&self) -> Result<Stream, BackplaneError> {
        within(self.0.timeout, self.0.context.get_stream(&self.0.stream_name)).await
    }

    /// The stream's epoch (its creation time in milliseconds) and last sequence number, and its
    /// first one.
    async fn position(&self, stream: &Stream) -> Result<(u64, u64, u64), BackplaneError> {
        let info = within(self.0.timeout, stream.get_info()).await?;
        let created = info.created.unix_timestamp_nanos() / 1_000_000;
        let epoch = u64::try_from(created).map_err(|_| BackplaneError::Protocol)?;
        // Relaxed: a value on its own, for publish acknowledgements.
        self.0.epoch.store(epoch, Ordering::Relaxed);
        Ok((epoch, info.state.last_sequence, info.state.first_sequence))
    }

    /// Learns where the stream is, then consumes it from just after there: every message
    /// stored later arrives on the consumer, everything before is in the stream.
    async fn join(&self, node: &Node, stream: &Stream) -> Result<(Messages, u64), BackplaneError> {
        let (epoch, upto, _) = self.position(stream).await?;
        node.rebase(epoch, upto);
        let config = OrderedConfig {
            deliver_subject: self.0.client.new_inbox(),
            filter_subject: format!("{}.>", self.0.prefix),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: upto + 1 },
            ..OrderedConfig::default()
        };
        let consumer = within(self.0.timeout, stream.create_consumer(config)).await?;
        let messages = within(self.0.timeout, consumer.messages()).await?;
        Ok((messages, epoch))
    }

    /// Stores one event; returns its epoch and stream sequence.
    pub(crate) async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
    ) -> Result<(u64, u64), BackplaneError> {
        // While disconnected the client would queue the message and send it after the
        // reconnect, long after this publish was reported failed: refuse it now instead.
        if self.0.client.connection_state() != async_nats::connection::State::Connected {
            return Err(BackplaneError::Unavailable(BrokerError::wrap(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "not connected to NATS",
            ))));
        }
        let timeout = self.0.timeout;
        let ack =
            within(timeout, self.0.context.publish(self.subject(topic), payload.into())).await?;
        let ack = within(timeout, std::future::IntoFuture::into_future(ack)).await?;
        // The epoch as last read (at join, every second, and after a reconnect): reading it on
        // every publish would double a publish's round trips.
        let mut epoch = self.0.epoch.load(Ordering::Relaxed);
        if epoch == 0 {
            epoch = self.position(&self.stream().await?).await?.0;
        }
        Ok((epoch, ack.sequence))
    }

    /// The events after `after` on `topics` and the topics matching `patterns`, up to the
    /// stream's position when asked.
    pub(crate) async fn fetch(
        &self,
        after: u64,
        topics: &[String],
        patterns: &[Pattern],
        max: usize,
    ) -> Result<Fetched, BackplaneError> {
        let stream = self.stream().await?;
        let (epoch, upto, first) = self.position(&stream).await?;
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
            self.read(&stream, after, upto, &filter, max, &wanted, &mut fetched).await?;
            if fetched.events.len() > max {
                break;
            }
        }
        fetched.events.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(fetched)
    }

    /// Reads the messages on `filter` in `(after, upto]` into `fetched`, at most `max + 1`.
    #[allow(clippy::too_many_arguments)]
    async fn read(
        &self,
        stream: &Stream,
        after: u64,
        upto: u64,
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
            if seq > upto {
                break;
            }
            let Some(topic) = self.topic(message.subject.as_str()) else { continue };
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

/// The node's task: delivers the consumer's messages; when the consumer fails for good, or
/// the stream turns out to be another one (a new epoch), joins again, with backoff.
async fn run(node: PlainArc<Node>, client: Client, first: Messages) {
    let mut messages = Some(first);
    let mut attempt: u32 = 0;
    loop {
        if node.is_closed() {
            return;
        }
        let joined = match messages.take() {
            Some(messages) => Ok(messages),
            // A stream lost with the server's storage is made again: a new epoch.
            None => match within(
                client.0.timeout,
                client.0.context.get_or_create_stream(client.0.stream_config.clone()),
            )
            .await
            {
                Ok(stream) => client.join(&node, &stream).await.map(|(m, _)| m),
                Err(error) => Err(error),
            },
        };
        if let Ok(mut messages) = joined {
            attempt = 0;
            listen(&node, &client, &mut messages).await;
        }
        if node.is_closed() {
            return;
        }
        let jitter = u64::try_from(node.shared.jitter(Duration::from_secs(3600)).as_millis());
        tokio::time::sleep(backoff(&node.common, attempt, jitter.unwrap_or(0))).await;
        attempt = attempt.saturating_add(1);
    }
}

/// Delivers messages until the consumer ends or the stream is another one; polls the stream's
/// position every second for the lag.
async fn listen(node: &Node, client: &Client, messages: &mut Messages) {
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    let mut errors = 0u32;
    let mut missing = 0u32;
    loop {
        tokio::select! {
            message = messages.next() => match message {
                None => return,
                Some(Err(_)) => {
                    // The ordered consumer recreates itself after a reconnect or a gap; a run
                    // of failures means it cannot, so join again from scratch.
                    errors += 1;
                    if errors >= 10 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some(Ok(message)) => {
                    errors = 0;
                    let Ok(info) = message.info() else {
                        node.skip();
                        continue;
                    };
                    let seq = info.stream_sequence;
                    match client.topic(message.subject.as_str()) {
                        Some(topic) => node.deliver(&topic, seq, &message.payload),
                        // Not a subject of ours: its number is used up all the same.
                        None => node.deliver("", seq, &[]),
                    }
                }
            },
            _ = poll.tick() => {
                if node.is_closed() {
                    return;
                }
                let connected =
                    client.0.client.connection_state() == async_nats::connection::State::Connected;
                let Ok(stream) = client.stream().await else {
                    // Connected, yet no stream: the server lost it (with its storage). Joining
                    // again makes it anew.
                    missing = if connected { missing + 1 } else { 0 };
                    if missing >= 3 {
                        return;
                    }
                    continue;
                };
                missing = 0;
                if let Ok((epoch, upto, _)) = client.position(&stream).await {
                    node.saw(upto);
                    if Some(epoch) != node.shared.external_epoch() || upto < node.position() {
                        // Another stream under the same name: numbers mean other events.
                        return;
                    }
                }
            }
        }
    }
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
