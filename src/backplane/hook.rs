//! The engine side of a backplane: how events numbered by a broker enter a hub.
//!
//! Everything here runs under the hub's sequencer, like a local publish, so the hub's replay
//! and live-delivery guarantees hold unchanged: the broker's sequence number (plus an offset)
//! takes the place of the one the hub would have assigned. This is the only code that reaches
//! into the hub's internals; the brokers (`redis.rs`, `nats.rs`) use it and the public API only.
//!
//! The hub's own sequence numbers only ever grow, as its rings and cursors assume; a broker's
//! restart at 1 (a new epoch) must not take them back. So the hub numbers a broker event
//! `broker + offset`, the offset chosen when the hub joins an epoch so that the numbers go on
//! from where they were; ids on the wire carry the broker's number.

use std::time::Instant;

use bytes::Bytes;

use crate::error::EventError;
use crate::frame::Event;
use crate::history::{format_id, History, ResetReason};
use crate::hub::Shared;
use crate::queue::EndReason;
use crate::registry::TopicState;
use crate::sync::{lock, rank, Arc, AtomicBool, AtomicU64, Mutex, Ordering};
use crate::topic::{validate_topic, Pattern};

/// A hub's backplane state: set while a broker feeds it.
#[derive(Debug, Default)]
pub(crate) struct Remote {
    /// Whether a broker numbers this hub's events.
    attached: AtomicBool,
    /// The broker's epoch, part of every id.
    epoch: AtomicU64,
    /// The (hub) sequence number this hub's coverage of the broker's stream starts after: a
    /// resume point below it must be fetched from the broker.
    floor: AtomicU64,
    /// Hub sequence number minus broker sequence number, in the current epoch.
    offset: AtomicU64,
    /// Set while a backplane is joining or joined.
    pub(super) claimed: AtomicBool,
    /// The backplane, for the adapters' resumes.
    pub(super) node: Mutex<Option<super::WeakBackplane>, rank::BackplaneNode>,
}

impl Remote {
    /// Whether a broker numbers this hub's events. Acquire pairs with the Release in `rebase`,
    /// so a reader that sees it attached also sees the epoch.
    pub(crate) fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// The broker's epoch.
    pub(crate) fn epoch(&self) -> u64 {
        // Relaxed: written under the sequencer before `attached`'s Release; readers that need
        // it consistent with history read it under the sequencer too.
        self.epoch.load(Ordering::Relaxed)
    }

    /// Where this hub's coverage of the broker's stream starts.
    pub(crate) fn floor(&self) -> u64 {
        // Relaxed: changed only under the sequencer, and read under it by `resolve`.
        self.floor.load(Ordering::Relaxed)
    }

    /// The hub's sequence number for the broker's `seq` in the current epoch.
    pub(crate) fn to_local(&self, seq: u64) -> u64 {
        // Relaxed: changed only under the sequencer; readers outside it (a resume being
        // prepared) are checked again under it, against the epoch.
        seq.saturating_add(self.offset.load(Ordering::Relaxed))
    }
}

/// Events a backplane fetched from the broker for a resuming subscription, numbered as the
/// hub numbers them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Prefix {
    /// `(hub sequence, frame)`, oldest first, all after the client's id and at most `upto`.
    pub(crate) frames: Vec<(u64, Bytes)>,
    /// The broker's last event when fetched (as a hub number): the mirror continues after it.
    pub(crate) upto: u64,
    /// Why the fetch could not be exact, if it could not.
    pub(crate) reset: Option<ResetReason>,
}

/// What delivering one broker event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Queued for this many local subscribers.
    Queued(u64),
    /// Already delivered (or before this hub's coverage): skipped.
    Duplicate,
    /// Events before it were missed: local streams were ended so their clients resume exactly
    /// (from the broker), then it was delivered.
    AfterGap,
}

/// What a rebase did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rebased {
    /// Nothing was missed.
    Continuous,
    /// Events were missed: local streams were ended.
    Gap,
    /// The broker's history is another one (new epoch): local history was dropped and streams
    /// were ended.
    NewEpoch,
}

impl Shared {
    /// (Re)joins the broker's stream at `upto` (a broker number) in `epoch`. Under the
    /// sequencer: a resume after this either sees the hub's state before or after, never half
    /// of it.
    pub(crate) fn rebase_remote(this: &Arc<Self>, epoch: u64, upto: u64) -> Rebased {
        let mut sequencer = lock(&this.sequencer);
        let first = !this.remote.is_attached();
        let rebased = if first || epoch != this.remote.epoch() {
            // Numbers restart or mean other events: nothing kept here may be replayed, and the
            // hub's numbers go on from where they were.
            for (name, _) in this.registry.topic_counts() {
                if let Some(state) = this.registry.topic(&name) {
                    *lock(&state.history) = History::default();
                }
            }
            let offset = sequencer.saturating_sub(upto);
            this.remote.offset.store(offset, Ordering::Relaxed);
            *sequencer = upto.saturating_add(offset);
            if first {
                Rebased::Continuous
            } else {
                Rebased::NewEpoch
            }
        } else if this.remote.to_local(upto) > *sequencer {
            *sequencer = this.remote.to_local(upto);
            Rebased::Gap
        } else {
            return Rebased::Continuous;
        };
        this.remote.epoch.store(epoch, Ordering::Relaxed);
        this.remote.floor.store(*sequencer, Ordering::Relaxed);
        this.remote.attached.store(true, Ordering::Release);
        this.complete(*sequencer);
        if rebased != Rebased::Continuous {
            end_streams(this, *sequencer);
        }
        drop(sequencer);
        rebased
    }

    /// Delivers one event numbered `seq` by the broker to `topic`'s local subscribers, and
    /// keeps it in the mirror. Encoded once, with the id `{epoch:x}-{seq}`, so every node sends
    /// the same bytes. `None` (a payload this node cannot read) and an event this node refuses
    /// still use up their number, so they do not look like a gap.
    pub(crate) fn deliver_remote(
        this: &Arc<Self>,
        topic: &str,
        seq: u64,
        event: Option<Event>,
    ) -> Result<Delivered, DeliverError> {
        let checked = match event {
            Some(event) => validate_topic(topic, this.config.max_topic_len)
                .map_err(|_| DeliverError::Topic)
                .map(|()| event.normalized())
                .and_then(|event| event.validate().map(|()| event).map_err(DeliverError::from)),
            None => Err(DeliverError::Payload),
        };
        let mut sequencer = lock(&this.sequencer);
        let (id, seq) = (seq, this.remote.to_local(seq));
        if seq <= *sequencer {
            return Ok(Delivered::Duplicate);
        }
        let gap = seq > *sequencer + 1;
        if gap {
            // Live streams cannot be told what they missed in-band without risking a
            // duplicate; ended, their clients come back with their last id and get it replayed.
            this.remote.floor.store(seq - 1, Ordering::Relaxed);
            end_streams(this, *sequencer);
        }
        *sequencer = seq;
        let mut event = checked?;
        event.id = Some(format_id(this.remote.epoch(), id));
        let frame = event.encode_limited(this.config.max_event_bytes)?;
        let history = this.config.history;
        let mut fan = match this.registry.topic_for_publish(topic, history.is_some()) {
            Some(state) => {
                if let Some(limits) = &history {
                    lock(&state.history).append(
                        seq,
                        None,
                        frame.as_bytes(),
                        Instant::now(),
                        limits,
                    );
                }
                crate::hub::deliver_to_topic(&state, seq, &event, frame.as_bytes())
            }
            None => crate::stats::FanOut::default(),
        };
        this.complete(seq);
        drop(sequencer);
        Shared::after_publish(this, &mut fan);
        Ok(if gap { Delivered::AfterGap } else { Delivered::Queued(fan.delivered) })
    }

    /// The frames a resuming subscription gets first when its start was fetched from the
    /// broker: those frames (the ones this hub has not delivered yet are left to the live
    /// stream), then the mirror's events after the fetch. Called under the sequencer, with
    /// `current` the last sequence number delivered.
    pub(crate) fn resolve_prefix(
        &self,
        prefix: &Prefix,
        current: u64,
        topics: &[Arc<TopicState>],
    ) -> Result<Vec<Bytes>, ResetReason> {
        if let Some(reason) = prefix.reset {
            return Err(reason);
        }
        let max = self.config.max_replay;
        let mut missed: Vec<(u64, Bytes)> =
            prefix.frames.iter().filter(|(seq, _)| *seq <= current).cloned().collect();
        if prefix.upto < current {
            if prefix.upto < self.registry.floor().max(self.remote.floor()) {
                return Err(ResetReason::TooOld);
            }
            for topic in topics {
                let history = lock(&topic.history);
                if prefix.upto < history.evicted_upto() {
                    return Err(ResetReason::TooOld);
                }
                missed.extend(history.after(prefix.upto, max).map(|e| (e.seq, e.frame.clone())));
                if missed.len() > max {
                    return Err(ResetReason::TooMany);
                }
            }
        }
        if missed.len() > max {
            return Err(ResetReason::TooMany);
        }
        missed.sort_unstable_by_key(|(seq, _)| *seq);
        missed.dedup_by_key(|(seq, _)| *seq);
        Ok(missed.into_iter().map(|(_, frame)| frame).collect())
    }

    /// The broker's number of the last event this hub delivered.
    pub(crate) fn remote_position(&self) -> u64 {
        let sequencer = lock(&self.sequencer);
        sequencer.saturating_sub(self.remote.offset.load(Ordering::Relaxed))
    }

    /// Whether this hub's mirror alone can resume `topics` and `patterns` after `seq` (a hub
    /// number) exactly.
    pub(crate) fn mirror_covers(&self, seq: u64, topics: &[String], patterns: &[Pattern]) -> bool {
        if seq < self.registry.floor().max(self.remote.floor()) {
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

    /// Encodes a broker event (`seq` is the broker's number) exactly as
    /// [`Shared::deliver_remote`] does, for a replay fetched from the broker.
    pub(crate) fn encode_remote(
        &self,
        epoch: u64,
        seq: u64,
        event: Event,
    ) -> Result<Bytes, DeliverError> {
        let mut event = event.normalized();
        event.validate()?;
        event.id = Some(format_id(epoch, seq));
        Ok(event.encode_limited(self.config.max_event_bytes)?.into_bytes())
    }
}

/// Ends every local stream after what was published up to `upto` (under the sequencer, so
/// nothing published after a gap reaches them and moves their clients' resume point past it).
/// They leave their topics' readers at once and the registry when their owners drop them.
fn end_streams(this: &Shared, upto: u64) {
    this.registry.subscribers().for_each(|slot| {
        Shared::end_held(slot, EndReason::Disconnected, upto);
    });
}

/// Why a broker event could not be delivered on this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeliverError {
    /// The topic is not valid on this node (a smaller length limit than the publisher's).
    #[error("invalid topic")]
    Topic,
    /// The event cannot be encoded within this node's limits.
    #[error("invalid event: {0}")]
    Event(#[from] EventError),
    /// The payload is not an event this crate published.
    #[error("unreadable payload")]
    Payload,
}
