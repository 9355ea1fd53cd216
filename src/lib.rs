//! A high-throughput Server-Sent Events broadcast engine whose one-topic readers take no lock.
//!
//! ```
//! use ssehub::{Event, Hub, Subscribe};
//!
//! let hub = Hub::new();
//! let mut client = hub.subscribe(Subscribe::new().with_topic("news").with_pattern("price:*"))?;
//!
//! hub.publish("price:BTC", Event::new("64000.5").with_event("tick").with_id("1"))?;
//! hub.publish("news", Event::new("markets open"))?;
//!
//! // One poll hands over everything queued: one write for the socket.
//! let batch = client.try_recv()?.expect("two frames");
//! assert_eq!(
//!     batch.into_bytes().as_ref(),
//!     b"event: tick\nid: 1\ndata: 64000.5\n\ndata: markets open\n\n".as_slice()
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Why
//!
//! A feed that pushes small events to tens of thousands of connections spends its time on work
//! repeated per connection. ssehub does each piece of work once:
//!
//! - **Encode once.** An [`Event`] is validated and encoded into one [`bytes::Bytes`] frame;
//!   every receiver gets a reference count of the same allocation.
//! - **Copy-on-write registry.** Topic maps and subscriber sets are immutable snapshots behind
//!   `arc-swap`: a publish loads them with no lock and allocates nothing per subscriber.
//!   Subscribes copy O(log n) trie nodes, never the whole set.
//! - **One shared ring per topic, a bounded cursor per client, drained in batches.** A publish
//!   appends one entry to its topic's ring, whatever the number of subscribers; each subscriber
//!   reads from its own position, within its own bound and slow-client policy. A poll of a
//!   [`Subscription`] hands over everything waiting as one [`Batch`] (a vectored
//!   [`bytes::Buf`]), so a burst costs one write, and the consumer is woken once per burst.
//! - **Readers take no lock.** A ring's slots are written once and published with `Release`
//!   and its chunk list is an `arc-swap` snapshot, so a one-topic subscriber's poll that finds
//!   events is atomic loads and one compare-and-swap. What still locks: the sequencer (one
//!   publish at a time, which gives every subscriber one order), a subscriber's own queue (to
//!   park, to merge several topics, or when broadcasts or targeted sends wait in it), a ring's
//!   list of parked readers (to park, and a publish's wake), and history when it is on. The lock
//!   order is written down in the `sync` module and checked on every lock in debug builds.
//! - **One timer.** Heartbeats come from one hub-wide thread, not one timer per connection.
//!
//! # The slow-client contract
//!
//! Each subscriber may fall at most `capacity` frames behind on each of its topics, and have at
//! most `capacity` broadcasts and targeted sends waiting (1,024 by default;
//! [`HubBuilder::with_capacity`], [`Subscribe::with_capacity`]). A publish never waits for a
//! subscriber. When a subscriber falls further behind, its [`SlowPolicy`] decides:
//!
//! - [`SlowPolicy::Disconnect`] (default): at the publish that puts it over its bound, the
//!   stream ends with [`EndReason::Slow`], the subscriber leaves the hub and
//!   [`Stats::slow_disconnects`] counts it. The client reconnects and resumes from its last
//!   event id.
//! - [`SlowPolicy::DropOldest`]: the oldest frames are skipped; the next [`Batch`] reports how
//!   many were lost ([`Batch::lagged`], counted in [`Stats::frames_dropped`] then) and, unless
//!   disabled, starts with an `event: lagged` frame.
//! - [`SlowPolicy::Conflate`]: a queued frame with the same key is replaced by the new one, so
//!   the client gets the latest value per key; a queue full of distinct keys drops its oldest.
//!
//! A subscriber that never reads holds no frames of its own (the topic's ring holds each frame
//! once for everyone, at most the largest bound of its readers), and never slows the publisher
//! or the other subscribers.
//!
//! # Differences from the alternatives
//!
//! - `tokio::sync::broadcast` keeps one ring for all receivers too, but a receiver that falls
//!   behind lags by the ring's size, and each receiver pulls (and clones) values one at a time.
//!   ssehub gives each client its own bound and policy over the shared ring, merges several
//!   topics and its targeted sends in publish order, and drains in batches.
//! - axum's `Sse` formats each event per connection and runs a keep-alive timer per
//!   connection; ssehub encodes once per event and runs one timer per hub.
//! - `async-broadcast` applies back-pressure to the sender when a receiver is full; ssehub never
//!   lets a receiver slow the sender.
//!
//! # Features
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `metrics` | counters and gauges through the [`metrics`](https://docs.rs/metrics) facade |
//! | `axum` | [`axum::events`]: an [`Endpoint`] as an axum 0.8 route; [`axum::EventStream`]: a [`Subscription`] as a response |
//! | `hyper` | [`hyper::serve`] and a hyper 1 service over an [`Endpoint`]; [`hyper::Body`]: one vectored write per [`Batch`] |
//! | `server` | [`server::Server`]: the native listener, which owns each socket after the request |
//! | `rustls` | `server::TlsConfig`: HTTPS on the native listener, ALPN `h2` (hyper's HTTP/2) and `http/1.1` (the native path), reloadable |
//! | `client` | [`client::EventSource`]: a reconnecting SSE client over HTTP and HTTPS (rustls, HTTP/2 by ALPN), decoding zstd and gzip streams, yielding parsed events |
//! | `tracing` | logs (target `ssehub`) of streams dropped as slow or at the write deadline, refusals at accept and resolver panics |
//! | `redis` | [`backplane::Redis`]: several nodes share one Redis (pub/sub fan-out, replay history in Streams) |
//! | `nats` | [`backplane::Nats`]: several nodes share one NATS (subjects fan-out, replay history in JetStream) |

#![deny(
    missing_docs,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn,
    rustdoc::broken_intra_doc_links
)]
#![doc(test(attr(deny(warnings))))]

#[cfg(any(feature = "axum", feature = "hyper", feature = "server"))]
mod adapters;
#[cfg(any(feature = "redis", feature = "nats"))]
pub mod backplane;
#[cfg(feature = "client")]
pub mod client;
mod engine;
mod error;
mod frame;
mod hub;
#[cfg(feature = "server")]
pub mod server;
mod services;
mod sync;
mod topic;

#[cfg(all(test, ssehub_loom))]
mod tests;

#[cfg(feature = "axum")]
pub use adapters::axum;
#[cfg(feature = "hyper")]
pub use adapters::hyper;
#[cfg(any(feature = "axum", feature = "hyper"))]
pub use adapters::resolve::{self, PathTopic, QueryTopics, Rejection, Resolver};
#[cfg(any(feature = "axum", feature = "hyper"))]
pub use adapters::{Cors, Endpoint};
pub use engine::batch::Batch;
pub use engine::class::Compression;
pub use engine::history::{HistoryLimits, ResetReason};
pub use engine::queue::{ConflateKey, SlowPolicy};
pub use engine::state::StateLimits;
#[cfg(feature = "metrics")]
pub use engine::stats::describe_metrics;
pub use engine::stats::Stats;
pub use error::{
    ClientError, EndReason, EventError, IntervalError, ProducerError, PublishError, SubscribeError,
    TopicError, UpdateError,
};
pub use frame::parse;
pub use frame::{Encoding, Event};
pub use hub::subscription::{SubscriberId, Subscription};
pub use hub::{Hub, HubBuilder, Pacing, Published, Subscribe, SubscriptionChange};
pub use services::clients::ConnectedClient;
pub use services::producers::{Producer, ProducerContext, StopReason};
pub use services::sessions::SessionLimits;
pub use topic::Pattern;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
struct ReadmeDoctests;
