//! Numbers from elsewhere: the external clock a broker numbers events by, and the replay source
//! a resume fetches what the engine's own history lacks from. Together they are the only door a
//! backplane has into the engine, and the engine's code paths are the same with or without one.
//!
//! The engine's own sequence numbers only ever grow, as its rings and cursors assume; an
//! external clock's restart at 1 (a new epoch) must not take them back. So the engine numbers
//! an external event `n + offset`, the offset chosen when the clock is attached at an epoch so
//! that the numbers go on from where they were; ids on the wire carry the external number `n`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::pipeline::end_streams;
use super::Engine;
use crate::engine::history::{History, ResetReason};
use crate::engine::registry::TopicState;
use crate::error::SubscribeError;
use crate::frame::Event;
use crate::sync::{lock, AtomicBool, AtomicU64, Ordering};
use crate::topic::Pattern;

/// The external clock: set while something outside (a broker) numbers the engine's replayable
/// events.
#[derive(Debug, Default)]
pub(crate) struct ExternalClock {
    /// Whether the clock numbers this engine's events.
    attached: AtomicBool,
    /// The clock's epoch, part of every id it numbers.
    epoch: AtomicU64,
    /// The (engine) sequence number this engine's coverage of the clock's stream starts
    /// after: a resume point below it must be fetched from the replay source.
    floor: AtomicU64,
    /// Engine sequence number minus external number, in the current epoch.
    offset: AtomicU64,
}

impl ExternalClock {
    /// Whether the clock numbers this engine's events. Acquire pairs with the Release in
    /// `Engine::attach`, so a reader that sees it attached also sees the epoch.
    pub(crate) fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// The clock's epoch (0 before it was ever attached).
    pub(crate) fn epoch(&self) -> u64 {
        // Relaxed: written under the sequencer before `attached`'s Release; readers that need
        // it consistent with history read it under the sequencer too.
        self.epoch.load(Ordering::Relaxed)
    }

    /// Where this engine's coverage of the clock's stream starts.
    pub(crate) fn floor(&self) -> u64 {
        // Relaxed: changed only under the sequencer, and read under it by `resolve`.
        self.floor.load(Ordering::Relaxed)
    }

    /// Raises the coverage floor to `seq` (under the sequencer: numbers before it were missed).
    pub(super) fn raise_floor(&self, seq: u64) {
        // Relaxed: under the sequencer, like every change of the clock; see `floor`.
        self.floor.store(seq, Ordering::Relaxed);
    }

    /// The engine's sequence number for the clock's `n` in the current epoch.
    pub(crate) fn to_local(&self, n: u64) -> u64 {
        // Relaxed: changed only under the sequencer; readers outside it (a resume being
        // prepared) are checked again under it, against the epoch.
        n.saturating_add(self.offset.load(Ordering::Relaxed))
    }

    /// The clock's number for the engine's `seq` in the current epoch.
    fn to_external(&self, seq: u64) -> u64 {
        // Relaxed: as in `to_local`; the caller holds the sequencer.
        seq.saturating_sub(self.offset.load(Ordering::Relaxed))
    }
}

/// What attaching the external clock did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attached {
    /// Nothing was missed.
    Continuous,
    /// Numbers were missed: every stream was ended.
    Gap,
    /// The clock's history is another one (new epoch): the engine's history was dropped and
    /// every stream was ended.
    NewEpoch,
}

/// Events a replay source fetched for one resume, with the external clock's numbers.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    /// The clock's epoch.
    pub(crate) epoch: u64,
    /// The clock's last number when fetched.
    pub(crate) upto: u64,
    /// `(number, event)` after the resume point, oldest first, at most `upto`.
    pub(crate) events: Vec<(u64, Event)>,
    /// Why it could not be exact, if it could not.
    pub(crate) reset: Option<ResetReason>,
}

/// A fetch in flight.
pub(crate) type Fetch<'a> =
    Pin<Box<dyn Future<Output = Result<Fetched, SubscribeError>> + Send + 'a>>;

/// Where a resume the engine's own history cannot serve gets its missed events: the events
/// after an external number, kept somewhere else (a broker's history). Registered with the hub
/// by whatever attached the external clock; the hub asks it, the engine only sees the frames
/// and numbers that come back.
pub(crate) trait ReplaySource: Send + Sync {
    /// How long a resume waits for this engine to reach a number a client saw elsewhere
    /// (another node slightly ahead), rather than answer with a reset; `None` once the source
    /// is gone (the hub then resumes from its own history alone).
    fn catch_up(&self) -> Option<Duration>;

    /// The events after external number `after` on `topics` and `patterns`, at most `max` of
    /// them (one more tells the limit was exceeded). `Err(SubscribeError::Unavailable)` when
    /// they cannot be had now.
    fn fetch<'a>(
        &'a self,
        after: u64,
        topics: &'a [String],
        patterns: &'a [Pattern],
        max: usize,
    ) -> Fetch<'a>;
}

impl Engine {
    /// (Re)attaches the external clock at its number `upto` in `epoch`. Under the sequencer: a
    /// resume after this either sees the engine's state before or after, never half of it.
    pub(crate) fn attach(&self, epoch: u64, upto: u64) -> Attached {
        let mut sequencer = lock(&self.sequencer);
        let first = !self.clock.is_attached();
        let attached = if first || epoch != self.clock.epoch() {
            // Numbers restart or mean other events: nothing kept here may be replayed, and the
            // engine's numbers go on from where they were.
            for (name, _) in self.registry.topic_counts() {
                if let Some(state) = self.registry.topic(&name) {
                    *lock(&state.history) = History::default();
                }
            }
            let offset = sequencer.saturating_sub(upto);
            // Relaxed, as the epoch and floor below: changed only under the sequencer, and
            // published with `attached`'s Release.
            self.clock.offset.store(offset, Ordering::Relaxed);
            *sequencer = upto.saturating_add(offset);
            if first {
                Attached::Continuous
            } else {
                Attached::NewEpoch
            }
        } else if self.clock.to_local(upto) > *sequencer {
            *sequencer = self.clock.to_local(upto);
            Attached::Gap
        } else {
            return Attached::Continuous;
        };
        self.clock.epoch.store(epoch, Ordering::Relaxed);
        self.clock.floor.store(*sequencer, Ordering::Relaxed);
        // Release pairs with the Acquire in `is_attached`: the epoch is seen with it.
        self.clock.attached.store(true, Ordering::Release);
        self.complete(*sequencer);
        if attached != Attached::Continuous {
            end_streams(self, *sequencer);
        }
        attached
    }

    /// Detaches the external clock: the engine numbers its events itself again, in its own
    /// epoch, going on from the last number taken (so ids the clock numbered are another
    /// epoch's from now on).
    pub(crate) fn detach(&self) {
        let _sequencer = lock(&self.sequencer);
        // Release, under the sequencer: a publish that sees the clock detached numbers after
        // the last number the clock gave.
        self.clock.attached.store(false, Ordering::Release);
    }

    /// The clock's number of the last event this engine took.
    pub(crate) fn external_position(&self) -> u64 {
        let sequencer = lock(&self.sequencer);
        self.clock.to_external(*sequencer)
    }

    /// Whether this engine's own history alone can resume `topics` and `patterns` after `seq`
    /// (an engine number) exactly.
    pub(crate) fn covers(&self, seq: u64, topics: &[String], patterns: &[Pattern]) -> bool {
        if seq < self.registry.floor().max(self.clock.floor()) {
            return false;
        }
        let evicted_past = |state: &TopicState| lock(&state.history).evicted_upto() > seq;
        if topics.iter().filter_map(|t| self.registry.topic(t)).any(|s| evicted_past(&s)) {
            return false;
        }
        if patterns.is_empty() {
            return true;
        }
        !self
            .registry
            .topic_counts()
            .iter()
            .filter(|(name, _)| patterns.iter().any(|p| p.matches(name)))
            .filter_map(|(name, _)| self.registry.topic(name))
            .any(|s| evicted_past(&s))
    }
}
