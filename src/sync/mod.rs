//! The one door to synchronisation primitives.
//!
//! Every `Arc`, `Mutex`, atomic and copy-on-write cell the engine uses comes from here, so the
//! loom models (`--cfg ssehub_loom`) can swap in loom's instrumented versions and explore every
//! interleaving of the real code. `real` and `mocked` export the same names.
//!
//! # Lock order
//!
//! Every `Mutex` in the crate names its rank in its type (`Mutex<T, rank::Queue>`), and a
//! thread may only take a lock ranked above every lock it already holds. In debug builds
//! [`lock`] checks this on each call against a per-thread list of held ranks and panics naming
//! both locks, so a test that takes two locks in the wrong order fails even when no deadlock
//! happens in that run. Release and loom builds do not check (loom runs in release).
//!
//! The locks, outermost first, and what each is taken inside of:
//!
//! | rank | lock | taken inside |
//! |---|---|---|
//! | [`rank::Sequencer`] | `Engine::sequencer`: one publish (and each atomic subscribe, resume, end, shutdown) at a time | nothing |
//! | [`rank::StateTopics`] | `Engine::state_topics`: the topics holding keyed state, for the hub-wide bound | the sequencer (a publish that gives a topic its first state) |
//! | [`rank::Writer`] | `Registry::writer`: topic and subscriber maps | the sequencer (a subscribe that must start atomically, a publish that creates a topic) |
//! | [`rank::Sessions`] | `Sessions::inner` | the sequencer (`send_to` a session) |
//! | [`rank::Clients`] | `Clients::inner`: subscriptions by client id | the sequencer (`send_to_matching`) |
//! | [`rank::History`] | `TopicState::history` | the sequencer (publish, resume), the writer (sweep, topic removal) |
//! | [`rank::State`] | `TopicState::state`: a topic's latest event per key | the sequencer (publish, a subscribe with a snapshot), the writer (sweep, topic removal) |
//! | [`rank::Pending`] | `Derived::pending`: a rate tier's values for its next tick | the sequencer (publish, tick, a subscribe or live change that joins or leaves a tier), the writer (join, leave) |
//! | [`rank::Framing`] | `Class::framing`: a stream class's compressor and its open frame | the sequencer (a publish feeds the class, the frame clock closes an idle frame), the writer (a subscriber joins the class) |
//! | [`rank::Queue`] | `Queue::inner`: a subscriber's own queue | the sequencer (a publish's push, ending a stream), the writer (attach wakes it), sessions, clients |
//! | [`rank::TierWaiting`] | `Tier::waiting`: readers to wake at the next tick | a reader's queue (a tier reader whose own frames wait for the mark), nothing (the tick takes it) |
//! | [`rank::Parked`] | `Ring::parked`: a ring's parked readers | the sequencer (ending a stream leaves its rings), the writer (detach, clear) |
//! | [`rank::ProducerSpecs`] | `Producers::specs` | nothing |
//! | [`rank::Producers`] | `Lifecycle::inner`: the running instances | nothing |
//! | [`rank::HeartbeatThread`] | `Heartbeat::thread` | nothing |
//! | [`rank::PerIp`] | `PerIp::open`: the listener's connections per address | nothing |
//! | [`rank::ReplaySource`] | `Shared::source`: the replay source a backplane registered | nothing |
//! | [`rank::BackplaneTask`] | a backplane's task handle | nothing |
//! | [`rank::Expiries`] | `Expiries::index`: subscriptions by expiry time | nothing |
//! | [`rank::ExpiryThread`] | `Expiries::thread` | nothing |
//! | [`rank::TierThread`] | `TierClock::thread` | nothing |
//! | [`rank::FrameThread`] | `FrameClock::thread` | nothing |
//!
//! A topic ring's readers take none of these to read: entries are write-once slots below a tail
//! published with `Release` (see `src/engine/ring.rs`). A subscriber's feeds (the rings it
//! reads) are an `ArcSwap` snapshot, not a lock. A subscriber's poll takes the queue's lock and
//! the `parked` lock one after the other, never one inside the other (see
//! `src/engine/reader.rs`); a one-topic poll that finds data takes none. The Redis backplane's
//! connection is a `tokio::sync::Mutex` held across `.await`, outside this order: nothing else
//! is taken under it.

#[cfg(not(ssehub_loom))]
mod real;
#[cfg(not(ssehub_loom))]
pub(crate) use real::*;

#[cfg(ssehub_loom)]
mod mocked;
#[cfg(ssehub_loom)]
pub(crate) use mocked::*;

mod append_only;
pub(crate) use append_only::AppendOnly;

mod ranked;
pub(crate) use ranked::{lock, Mutex, MutexGuard, Rank};

/// The ranks of the crate's locks (see the [lock order](self#lock-order)): marker types named
/// in each `Mutex`'s type, so the rank costs nothing at run time outside debug builds.
pub(crate) mod rank {
    use super::Rank;

    /// Declares each rank: a marker type and its place in the order.
    macro_rules! ranks {
        ($($(#[$doc:meta])* $name:ident = $rank:literal,)*) => {$(
            $(#[$doc])*
            #[derive(Debug)]
            pub(crate) enum $name {}

            impl Rank for $name {
                const RANK: u8 = $rank;
                const NAME: &'static str = stringify!($name);
            }
        )*};
    }

    ranks! {
        /// The hub's sequencer: outermost.
        Sequencer = 10,
        /// The topics holding keyed state: taken under the sequencer, and takes the writer
        /// lock and topics' state locks inside.
        StateTopics = 15,
        /// The registry's writer lock.
        Writer = 20,
        /// The session store.
        Sessions = 30,
        /// The index of client ids.
        Clients = 35,
        /// One topic's history.
        History = 40,
        /// One topic's keyed state.
        State = 45,
        /// One rate tier's pending values for a topic.
        Pending = 50,
        /// One stream class's compressor and frame (`engine/class.rs`).
        Framing = 55,
        /// One subscriber's own queue.
        Queue = 60,
        /// One interval's queues to wake at its next tick.
        TierWaiting = 65,
        /// One ring's parked readers.
        Parked = 70,
        /// The registered producers: taken with nothing else held.
        ProducerSpecs = 80,
        /// The running producer instances: taken with nothing else held.
        Producers = 81,
        /// The heartbeat thread's handle: taken with nothing else held.
        HeartbeatThread = 82,
        /// The native listener's per-address counts: taken with nothing else held.
        // Declared whether or not the listener's feature is on, so the order is one list.
        #[allow(dead_code)]
        PerIp = 83,
        /// The hub's replay source (a backplane's): taken with nothing else held.
        ReplaySource = 84,
        /// A backplane's task handle: taken with nothing else held.
        #[allow(dead_code)]
        BackplaneTask = 85,
        /// The expiry index: taken with nothing else held.
        Expiries = 86,
        /// The expiry thread's handle: taken with nothing else held.
        // Declared under loom too (where there is no thread), so the order is one list.
        #[allow(dead_code)]
        ExpiryThread = 87,
        /// The tier clock's thread handle: taken with nothing else held.
        #[allow(dead_code)]
        TierThread = 88,
        /// The frame clock's thread handle: taken with nothing else held.
        #[allow(dead_code)]
        FrameThread = 89,
    }
}
