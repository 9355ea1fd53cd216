//! The Redis backplane: fan-out over one pub/sub channel, history in one Redis Stream per topic.
//!
//! Keys, all under one prefix (`ssehub` by default; put it in braces, `{ssehub}`, to keep every
//! key in one Redis Cluster slot, as the scripts need):
//!
//! | key | holds |
//! | --- | --- |
//! | `P:epoch` | the history's epoch (hex), set once; a Redis that lost its data gets a new one |
//! | `P:seq` | the last sequence number issued |
//! | `P:topics` | a hash: topic name to the last sequence number published to it |
//! | `P:t:TOPIC` | the topic's stream; entry `n-0` is event `n` |
//! | `P:trimmed` | a hash: topic name to the last sequence number trimmed from its stream |
//! | `P:events` | the pub/sub channel every node subscribes to |
//!
//! A publish is one Lua script for a whole batch of events: number each, `XADD` each, then
//! `PUBLISH` them in one message. Scripts run one at a time, so the channel's order is the
//! numbering's order, and a number is only used by an event that was stored (the `XADD` comes
//! before anything that could not be undone).

use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::Script;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use super::broker::{Broker, Connect, Fetched, Incoming, Link, Live, Outgoing, Polled, Position};
use super::{window, BackplaneError, Common};
use crate::engine::history::ResetReason;
use crate::sync::PlainArc;
use crate::topic::Pattern;

/// Numbers, stores and fans out a batch of events, in order: one script call and one message
/// on the channel for the whole batch. `KEYS`: the epoch, the counter, the topics hash, the
/// trimmed hash, then each event's stream; `ARGV`: the bound, the channel, a fresh epoch, then
/// each event's topic and payload.
///
/// Trimming is exact and remembered: once a stream holds an eighth more than its bound, the
/// oldest entries down to the bound go, and the last one's number is kept in `P:trimmed`, so a
/// resume from before it gets a reset, never a gap. (`MAXLEN ~` trims whole radix nodes and
/// `max-deleted-entry-id` does not count trimming, so neither could say which events are gone.)
/// Each stream the batch touched is checked once, after the batch.
///
/// The message is `EPOCH-FIRST+COUNT\n`, then for each event `TOPICLEN PAYLOADLEN\n`, the topic
/// and the payload (see [`parse_message`]).
const PUBLISH: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[1], epoch)
end
local max = tonumber(ARGV[1])
local n = tonumber(redis.call('GET', KEYS[2])) or 0
local first = n + 1
local parts = {}
local touched = {}
local order = {}
for i = 5, #KEYS do
  local topic = ARGV[2 * i - 6]
  local payload = ARGV[2 * i - 5]
  n = n + 1
  local id = string.format('%d', n)
  redis.call('XADD', KEYS[i], id .. '-0', 'd', payload)
  redis.call('HSET', KEYS[3], topic, id)
  if not touched[topic] then
    touched[topic] = KEYS[i]
    order[#order + 1] = topic
  end
  parts[#parts + 1] = string.len(topic) .. ' ' .. string.len(payload) .. '\n' .. topic .. payload
end
redis.call('SET', KEYS[2], string.format('%d', n))
for _, topic in ipairs(order) do
  local stream = touched[topic]
  local len = redis.call('XLEN', stream)
  if len > max + math.floor(max / 8) then
    local cut = redis.call('XRANGE', stream, '-', '+', 'COUNT', len - max)
    local last = tonumber(string.match(cut[#cut][1], '^(%d+)'))
    redis.call('XTRIM', stream, 'MINID', string.format('%d', last + 1))
    redis.call('HSET', KEYS[4], topic, string.format('%d', last))
  end
end
local head = epoch .. '-' .. string.format('%d', first) .. '+' .. string.format('%d', #KEYS - 4)
redis.call('PUBLISH', ARGV[2], head .. '\n' .. table.concat(parts))
return {epoch, string.format('%d', first)}
";

/// The epoch and position a node joins at. A Redis that lost its data (no epoch) or went back
/// in time (a position below what the node saw, as after a restore) gets a new epoch, so old
/// ids are answered with a reset instead of being taken for new events.
const REBASE: &str = r"
local epoch = redis.call('GET', KEYS[1])
local n = tonumber(redis.call('GET', KEYS[2])) or 0
if not epoch or (epoch == ARGV[1] and n < tonumber(ARGV[2])) then
  epoch = ARGV[3]
  redis.call('SET', KEYS[1], epoch)
end
return {epoch, string.format('%d', n)}
";

/// The events after `ARGV[1]` on the given topics, at most `ARGV[2]` per topic, with the epoch,
/// the position, and whether any topic already trimmed some of them: all read atomically.
const FETCH: &str = r"
local out = {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or '0', '0'}
local after = tonumber(ARGV[1])
for i = 5, #KEYS do
  local name = ARGV[i - 2]
  local last = tonumber(redis.call('HGET', KEYS[3], name)) or 0
  if last > after then
    local trimmed = tonumber(redis.call('HGET', KEYS[4], name)) or 0
    if trimmed > after or redis.call('EXISTS', KEYS[i]) == 0 then
      out[3] = '1'
    else
      local entries = redis.call('XRANGE', KEYS[i], string.format('%d', after + 1), '+', 'COUNT', ARGV[2])
      for _, entry in ipairs(entries) do
        table.insert(out, entry[1])
        table.insert(out, entry[2][2])
      end
    end
  end
end
return out
";

/// The events in `(ARGV[2], ARGV[3]]` of history `ARGV[1]` on the given topics, each as its id,
/// its topic and its payload, after `ok`; `gone` instead when the epoch is another, a topic
/// trimmed some of them, or there are more than `ARGV[4]`. `KEYS`: the epoch, the trimmed hash,
/// then each topic's stream; `ARGV[5..]`: the topics' names. All read atomically.
const RECOVER: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'gone'}
end
local after = tonumber(ARGV[2])
local max = tonumber(ARGV[4])
local out = {'ok'}
local count = 0
for i = 3, #KEYS do
  local name = ARGV[i + 2]
  local trimmed = tonumber(redis.call('HGET', KEYS[2], name)) or 0
  if trimmed > after then
    return {'gone'}
  end
  local entries = redis.call('XRANGE', KEYS[i], string.format('%d', after + 1), ARGV[3], 'COUNT', max + 1 - count)
  for _, entry in ipairs(entries) do
    out[#out + 1] = entry[1]
    out[#out + 1] = name
    out[#out + 1] = entry[2][2]
  end
  count = count + #entries
  if count > max then
    return {'gone'}
  end
end
return out
";

/// Most topics one resume may fetch (a pattern matching more gets a `too-many` reset).
const MAX_FETCH_TOPICS: usize = 4096;

/// How a node joins Redis.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let redis = ssehub::backplane::Redis::new("redis://127.0.0.1:6379")
///     .with_prefix("{ssehub}")
///     .with_max_events(10_000)
///     .with_timeout(Duration::from_secs(2));
/// # drop(redis);
/// ```
#[derive(Clone)]
#[must_use]
pub struct Redis {
    /// `redis://host:port/db`.
    url: String,
    /// Prefix of every key and of the channel.
    prefix: String,
    /// Events kept per topic stream (up to an eighth more, trimmed in batches).
    max_events: usize,
    /// Timeouts and backoff.
    common: Common,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &super::redact(&self.url))
            .field("prefix", &self.prefix)
            .field("max_events", &self.max_events)
            .field("common", &self.common)
            .finish()
    }
}

impl Redis {
    /// Redis at `url` (`redis://[:password@]host[:port][/db]`), keys under `ssehub`, 1,000
    /// events kept per topic, 5 s timeouts, reconnects backing off from 100 ms to 5 s.
    ///
    /// # Examples
    ///
    /// ```
    /// let redis = ssehub::backplane::Redis::new("redis://127.0.0.1:6379");
    /// # drop(redis);
    /// ```
    pub fn new(url: &str) -> Self {
        Redis {
            url: url.to_string(),
            prefix: "ssehub".to_string(),
            max_events: 1000,
            common: Common::default(),
        }
    }

    /// The prefix of every key and of the channel, so several deployments can share a Redis.
    ///
    /// # Examples
    ///
    /// ```
    /// let redis = ssehub::backplane::Redis::new("redis://127.0.0.1").with_prefix("staging");
    /// # drop(redis);
    /// ```
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// Events kept per topic in Redis (at least 1; up to an eighth more, as streams are
    /// trimmed in batches). A resume from before them is answered with a `too-old` reset.
    ///
    /// # Examples
    ///
    /// ```
    /// let redis = ssehub::backplane::Redis::new("redis://127.0.0.1").with_max_events(50_000);
    /// # drop(redis);
    /// ```
    pub fn with_max_events(mut self, events: usize) -> Self {
        self.max_events = events.max(1);
        self
    }

    /// How long one Redis operation (a publish, a fetch, a connect) may take.
    ///
    /// # Examples
    ///
    /// ```
    /// let redis = ssehub::backplane::Redis::new("redis://127.0.0.1")
    ///     .with_timeout(std::time::Duration::from_secs(1));
    /// # drop(redis);
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
    /// let redis = ssehub::backplane::Redis::new("redis://127.0.0.1").with_max_in_flight(10_000);
    /// # drop(redis);
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
    /// let redis = ssehub::backplane::Redis::new("redis://127.0.0.1")
    ///     .with_backoff(Duration::from_millis(50), Duration::from_secs(2));
    /// # drop(redis);
    /// ```
    pub fn with_backoff(mut self, first: Duration, longest: Duration) -> Self {
        self.common.backoff = super::Backoff { first, longest: longest.max(first) };
        self
    }
}

impl Connect for Redis {
    fn common(&self) -> Common {
        self.common
    }

    /// Makes the client; connections are made on first use (the node's first subscription).
    fn connect(&self, _: Link) -> BoxFuture<'static, Result<PlainArc<dyn Broker>, BackplaneError>> {
        let opened = ::redis::Client::open(self.url.as_str()).map_err(unavailable);
        let prefix = &self.prefix;
        let client = opened.map(|client| {
            PlainArc::new(Client(Inner {
                client,
                epoch_key: format!("{prefix}:epoch"),
                seq_key: format!("{prefix}:seq"),
                topics_key: format!("{prefix}:topics"),
                trimmed_key: format!("{prefix}:trimmed"),
                stream_prefix: format!("{prefix}:t:"),
                channel: format!("{prefix}:events"),
                max_events: self.max_events,
                timeout: self.common.timeout,
                connection: tokio::sync::Mutex::new(None),
                publish: Script::new(PUBLISH),
                rebase: Script::new(REBASE),
                fetch: Script::new(FETCH),
                recover: Script::new(RECOVER),
            })) as PlainArc<dyn Broker>
        });
        Box::pin(std::future::ready(client))
    }
}

/// A Redis error as a backplane error.
fn unavailable(error: ::redis::RedisError) -> BackplaneError {
    BackplaneError::Unavailable(super::BrokerError::wrap(error))
}

/// The node's Redis client.
struct Client(Inner);

/// See [`Client`].
struct Inner {
    /// Connection settings.
    client: ::redis::Client,
    /// See the module docs.
    epoch_key: String,
    /// See the module docs.
    seq_key: String,
    /// See the module docs.
    topics_key: String,
    /// See the module docs.
    trimmed_key: String,
    /// A topic's stream key is this and its name.
    stream_prefix: String,
    /// See the module docs.
    channel: String,
    /// Events kept per stream.
    max_events: usize,
    /// How long one operation may take.
    timeout: Duration,
    /// The command connection (multiplexed: publishes share it), made again after an error.
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// See [`PUBLISH`].
    publish: Script,
    /// See [`REBASE`].
    rebase: Script,
    /// See [`FETCH`].
    fetch: Script,
    /// See [`RECOVER`].
    recover: Script,
}

impl Client {
    /// Runs `op` on the command connection, within the timeout; a failed connection is
    /// dropped, so the next call connects again.
    async fn call<T, F>(
        &self,
        op: impl FnOnce(MultiplexedConnection) -> F,
    ) -> Result<T, BackplaneError>
    where
        F: std::future::Future<Output = ::redis::RedisResult<T>>,
    {
        let inner = &self.0;
        let attempt = async {
            let connection = {
                let mut slot = inner.connection.lock().await;
                match &*slot {
                    Some(connection) => connection.clone(),
                    None => {
                        let connection = inner.client.get_multiplexed_async_connection().await?;
                        *slot = Some(connection.clone());
                        connection
                    }
                }
            };
            op(connection).await
        };
        match tokio::time::timeout(inner.timeout, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if error.is_io_error() || error.is_connection_dropped() || error.is_timeout() {
                    *inner.connection.lock().await = None;
                }
                Err(unavailable(error))
            }
            Err(_) => {
                *inner.connection.lock().await = None;
                Err(BackplaneError::Timeout(inner.timeout))
            }
        }
    }

    /// See [`Broker::publish`]: the whole batch in one script call, numbered consecutively.
    async fn publish(&self, batch: Vec<Outgoing>) -> Vec<Result<Position, BackplaneError>> {
        let inner = &self.0;
        let count = batch.len();
        let fresh = format!("{:x}", super::fresh_epoch());
        let reply: Result<(String, String), BackplaneError> = self
            .call(|mut connection| async move {
                let mut invocation = inner.publish.prepare_invoke();
                invocation
                    .key(&inner.epoch_key)
                    .key(&inner.seq_key)
                    .key(&inner.topics_key)
                    .key(&inner.trimmed_key);
                for event in &batch {
                    invocation.key(format!("{}{}", inner.stream_prefix, event.topic));
                }
                invocation.arg(inner.max_events).arg(&inner.channel).arg(&fresh);
                for event in &batch {
                    invocation.arg(&event.topic).arg(&event.payload);
                }
                invocation.invoke_async(&mut connection).await
            })
            .await;
        let first = reply.and_then(|(epoch, first)| {
            parse_position(&epoch, &first).ok_or(BackplaneError::Protocol)
        });
        match first {
            Ok(first) => (0..count as u64)
                .map(|i| Ok(Position { epoch: first.epoch, seq: first.seq + i }))
                .collect(),
            Err(error) => window::each(&error, count),
        }
    }

    /// See [`Broker::position`]: the epoch and the last number, read together.
    async fn position(&self) -> Polled {
        let keys = [self.0.epoch_key.clone(), self.0.seq_key.clone()];
        let read: Result<(Option<String>, Option<String>), _> = self
            .call(|mut connection| async move {
                ::redis::cmd("MGET").arg(&keys).query_async(&mut connection).await
            })
            .await;
        match read {
            Err(_) => Polled::Unreachable,
            // A Redis that lost its data has no epoch until a node rejoins or publishes.
            Ok((None, _)) => Polled::NoHistory,
            Ok((Some(epoch), seq)) => {
                match parse_position(&epoch, seq.as_deref().unwrap_or("0")) {
                    Some(at) => Polled::At(at),
                    // Not ours to read: the live stream goes on, as it would without a poll.
                    None => Polled::Unreachable,
                }
            }
        }
    }

    /// See [`Broker::subscribe`]: subscribes to the channel, then learns where the broker is:
    /// everything published after that point arrives on the subscription, everything before is
    /// in the streams.
    async fn subscribe(&self, seen: Option<Position>) -> Result<(Position, Live), BackplaneError> {
        let inner = &self.0;
        let subscribe = async {
            let mut pubsub = inner.client.get_async_pubsub().await?;
            pubsub.subscribe(&inner.channel).await?;
            Ok::<_, ::redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(inner.timeout, subscribe)
            .await
            .map_err(|_| BackplaneError::Timeout(inner.timeout))?
            .map_err(unavailable)?;
        let seen_epoch = seen.map(|at| format!("{:x}", at.epoch)).unwrap_or_default();
        let seen = seen.map_or(0, |at| at.seq).to_string();
        let fresh = format!("{:x}", super::fresh_epoch());
        let (epoch, seq): (String, String) = self
            .call(|mut connection| async move {
                let mut invocation = inner.rebase.prepare_invoke();
                invocation
                    .key(&inner.epoch_key)
                    .key(&inner.seq_key)
                    .arg(&seen_epoch)
                    .arg(&seen)
                    .arg(&fresh);
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        let at = parse_position(&epoch, &seq).ok_or(BackplaneError::Protocol)?;
        let live = pubsub.into_on_message().flat_map(|message| {
            let message = Bytes::copy_from_slice(message.get_payload_bytes());
            futures_util::stream::iter(parse_message(&message))
        });
        Ok((at, live.boxed()))
    }

    /// See [`Broker::fetch`].
    async fn fetch(
        &self,
        after: u64,
        topics: &[String],
        patterns: &[Pattern],
        max: usize,
    ) -> Result<Fetched, BackplaneError> {
        let inner = &self.0;
        let mut names: Vec<String> = topics.to_vec();
        if !patterns.is_empty() {
            let key = inner.topics_key.clone();
            let known: Vec<String> = self
                .call(|mut connection| async move {
                    ::redis::cmd("HKEYS").arg(&key).query_async(&mut connection).await
                })
                .await?;
            names.extend(known.into_iter().filter(|t| patterns.iter().any(|p| p.matches(t))));
        }
        names.sort_unstable();
        names.dedup();
        if names.len() > MAX_FETCH_TOPICS {
            return Ok(Fetched { reset: Some(ResetReason::TooMany), ..Fetched::default() });
        }
        let reply: Vec<Vec<u8>> = self
            .call(|mut connection| async move {
                let mut invocation = inner.fetch.prepare_invoke();
                invocation
                    .key(&inner.epoch_key)
                    .key(&inner.seq_key)
                    .key(&inner.topics_key)
                    .key(&inner.trimmed_key);
                for name in &names {
                    invocation.key(format!("{}{name}", inner.stream_prefix));
                }
                invocation.arg(after).arg(max.saturating_add(1));
                for name in &names {
                    invocation.arg(name);
                }
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        let text = |bytes: &Vec<u8>| std::str::from_utf8(bytes).ok().map(str::to_owned);
        let (Some(epoch), Some(upto), Some(trimmed)) =
            (reply.first().and_then(text), reply.get(1).and_then(text), reply.get(2))
        else {
            return Err(BackplaneError::Protocol);
        };
        let at = parse_position(&epoch, &upto).ok_or(BackplaneError::Protocol)?;
        let mut fetched = Fetched { epoch: at.epoch, upto: at.seq, ..Fetched::default() };
        if trimmed.as_slice() == b"1" {
            fetched.reset = Some(ResetReason::TooOld);
            return Ok(fetched);
        }
        for pair in reply[3..].chunks(2) {
            let [id, payload] = pair else {
                return Err(BackplaneError::Protocol);
            };
            let seq = stream_seq(id).ok_or(BackplaneError::Protocol)?;
            // Undecodable events are skipped here as they are live.
            if let Ok(event) = super::codec::decode(payload) {
                fetched.events.push((seq, event));
            }
        }
        fetched.events.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(fetched)
    }
}

impl Client {
    /// See [`Broker::recover`]: the topics with events after `from` (from `P:topics`: every
    /// event up to `upto` was numbered before the subscription learned `upto`, so its topic is
    /// there already), then one [`RECOVER`] call over their streams.
    async fn recover(
        &self,
        from: Position,
        upto: u64,
        max: usize,
    ) -> Result<Option<Vec<Incoming>>, BackplaneError> {
        let inner = &self.0;
        let key = inner.topics_key.clone();
        let topics: Vec<(String, String)> = self
            .call(|mut connection| async move {
                ::redis::cmd("HGETALL").arg(&key).query_async(&mut connection).await
            })
            .await?;
        let names: Vec<String> = topics
            .into_iter()
            .filter(|(_, last)| last.parse::<u64>().map_or(true, |last| last > from.seq))
            .map(|(name, _)| name)
            .collect();
        if names.len() > MAX_FETCH_TOPICS {
            return Ok(None);
        }
        let reply: Vec<Vec<u8>> = self
            .call(|mut connection| async move {
                let mut invocation = inner.recover.prepare_invoke();
                invocation.key(&inner.epoch_key).key(&inner.trimmed_key);
                for name in &names {
                    invocation.key(format!("{}{name}", inner.stream_prefix));
                }
                invocation.arg(format!("{:x}", from.epoch)).arg(from.seq).arg(upto).arg(max);
                for name in &names {
                    invocation.arg(name);
                }
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        match reply.first().map(Vec::as_slice) {
            Some(b"gone") => return Ok(None),
            Some(b"ok") => {}
            _ => return Err(BackplaneError::Protocol),
        }
        let mut events = Vec::with_capacity((reply.len() - 1) / 3);
        for triple in reply[1..].chunks(3) {
            let [id, topic, payload] = triple else {
                return Err(BackplaneError::Protocol);
            };
            events.push(Incoming::Event {
                epoch: Some(from.epoch),
                seq: stream_seq(id).ok_or(BackplaneError::Protocol)?,
                topic: Some(
                    String::from_utf8(topic.clone()).map_err(|_| BackplaneError::Protocol)?,
                ),
                payload: Bytes::copy_from_slice(payload),
            });
        }
        Ok(Some(events))
    }
}

/// The event number of a stream entry's id, `n-0`.
fn stream_seq(id: &[u8]) -> Option<u64> {
    std::str::from_utf8(id).ok()?.strip_suffix("-0")?.parse().ok()
}

/// The position the scripts answer with, a hex epoch and a decimal number.
fn parse_position(epoch: &str, seq: &str) -> Option<Position> {
    Some(Position { epoch: u64::from_str_radix(epoch, 16).ok()?, seq: seq.parse().ok()? })
}

/// The events of one message on the channel, in order: `EPOCH-FIRST+COUNT\n` and then, for
/// each event, `TOPICLEN PAYLOADLEN\n`, the topic and the payload, as [`PUBLISH`] sends them.
/// The payloads are slices of `message` (one allocation for the whole batch). A message that
/// does not parse whole is one [`Incoming::Unreadable`]: nothing of it is delivered.
///
/// A message of the single-event layout that nodes before batching sent (`EPOCH-SEQ\nTOPIC\n`
/// and the payload) is read too, so nodes can be upgraded one at a time.
fn parse_message(message: &Bytes) -> Vec<Incoming> {
    parse_batch(message)
        .or_else(|| parse_single(message).map(|event| vec![event]))
        .unwrap_or_else(|| vec![Incoming::Unreadable])
}

/// See [`parse_message`]: the single-event layout.
fn parse_single(message: &Bytes) -> Option<Incoming> {
    let (id, rest) = split_line(message)?;
    let (epoch, seq) = id.split_once('-')?;
    let at = parse_position(epoch, seq)?;
    let (topic, payload) = split_line(&rest)?;
    Some(Incoming::Event {
        epoch: Some(at.epoch),
        seq: at.seq,
        topic: Some(topic.to_string()),
        payload,
    })
}

/// See [`parse_message`]; `None` for anything but a whole batch.
fn parse_batch(message: &Bytes) -> Option<Vec<Incoming>> {
    let (head, mut rest) = split_line(message)?;
    let (id, count) = head.split_once('+')?;
    let (epoch, first) = id.split_once('-')?;
    let first = parse_position(epoch, first)?;
    let count: usize = count.parse().ok()?;
    // Each event takes at least four bytes (`0 0\n`), so a count past that is a lie.
    if count > rest.len() / 4 + 1 {
        return None;
    }
    let mut events = Vec::with_capacity(count);
    for i in 0..count as u64 {
        let (lengths, body) = split_line(&rest)?;
        let (topic_len, payload_len) = lengths.split_once(' ')?;
        let topic_len: usize = topic_len.parse().ok()?;
        let payload_len: usize = payload_len.parse().ok()?;
        let end = topic_len.checked_add(payload_len)?;
        if body.len() < end {
            return None;
        }
        let topic = std::str::from_utf8(&body[..topic_len]).ok()?.to_string();
        events.push(Incoming::Event {
            epoch: Some(first.epoch),
            seq: first.seq.checked_add(i)?,
            topic: Some(topic),
            payload: body.slice(topic_len..end),
        });
        rest = body.slice(end..);
    }
    rest.is_empty().then_some(events)
}

/// The text before the first line break, and the bytes after it.
fn split_line(bytes: &Bytes) -> Option<(&str, Bytes)> {
    let at = memchr::memchr(b'\n', bytes)?;
    let line = std::str::from_utf8(&bytes[..at]).ok()?;
    Some((line, bytes.slice(at + 1..)))
}

impl Broker for Client {
    fn publish(
        &self,
        batch: Vec<Outgoing>,
    ) -> BoxFuture<'_, Vec<Result<Position, BackplaneError>>> {
        Box::pin(Client::publish(self, batch))
    }

    fn subscribe(
        &self,
        seen: Option<Position>,
    ) -> BoxFuture<'_, Result<(Position, Live), BackplaneError>> {
        Box::pin(Client::subscribe(self, seen))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An event of a parsed message, as (epoch, seq, topic, payload).
    fn event(item: &Incoming) -> (u64, u64, &str, &[u8]) {
        match item {
            Incoming::Event { epoch: Some(epoch), seq, topic: Some(topic), payload } => {
                (*epoch, *seq, topic.as_str(), &payload[..])
            }
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn a_batch_message_parses_into_its_events_in_order() {
        let message = Bytes::from_static(b"ab-7+3\n4 2\nnews\x01x1 0\nt3 3\nfoo\nba");
        let events = parse_message(&message);
        let events: Vec<_> = events.iter().map(event).collect();
        assert_eq!(
            events,
            [
                (0xab, 7, "news", &b"\x01x"[..]),
                (0xab, 8, "t", &b""[..]),
                (0xab, 9, "foo", &b"\nba"[..])
            ]
        );
    }

    #[test]
    fn the_single_event_layout_of_earlier_nodes_still_parses() {
        let events = parse_message(&Bytes::from_static(b"ab-7\nnews\n\x01x"));
        assert_eq!(
            events.iter().map(event).collect::<Vec<_>>(),
            [(0xab, 7, "news", &b"\x01x"[..])]
        );
        let events = parse_message(&Bytes::from_static(b"ab-7\nnews\n"));
        assert_eq!(events.iter().map(event).collect::<Vec<_>>(), [(0xab, 7, "news", &b""[..])]);
    }

    #[test]
    fn messages_parse_only_when_whole() {
        for bad in [
            &b"ab-7\nnews"[..],
            b"zz-7\nt\n",
            b"ab7\nt\n",
            b"ab-x\nt\n",
            b"",
            b"ab-7+2\n1 1\ntx",
            b"ab-7+1\n1 1\ntxy",
            b"ab-7+1\n1 5\ntx",
            b"ab-7+1\n1\ntx",
            b"ab-7+99999999999\n1 1\ntx",
            b"ab-18446744073709551615+2\n1 1\ntx1 1\nty",
        ] {
            let parsed = parse_message(&Bytes::from_static(bad));
            assert_eq!(parsed, [Incoming::Unreadable], "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
