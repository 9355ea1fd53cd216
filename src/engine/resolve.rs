//! Replay: the frames a resuming subscription gets before live ones, from the engine's history
//! or fetched from a replay source, resolved under the sequencer while it registers.

use bytes::Bytes;

use super::Engine;
use crate::engine::history::{parse_id, Parsed, ResetReason, MAX_LAST_EVENT_ID};
use crate::engine::registry::TopicState;
use crate::sync::{lock, Arc};

/// Where a new subscription starts.
#[derive(Debug)]
pub(crate) enum Start<'a> {
    /// With live events only.
    Live,
    /// After the event with this id (a client's `Last-Event-ID`), from the engine's history.
    After(&'a str),
    /// After a point whose first events were fetched from a replay source.
    Fetched(Replay),
}

/// Events fetched from a replay source for one resume, numbered as the engine numbers them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Replay {
    /// `(engine sequence, frame)`, oldest first, all after the client's id and at most `upto`.
    pub(crate) frames: Vec<(u64, Bytes)>,
    /// The source's last event when fetched (as an engine number): the engine's own history
    /// continues after it.
    pub(crate) upto: u64,
    /// Why the fetch could not be exact, if it could not.
    pub(crate) reset: Option<ResetReason>,
}

impl Engine {
    /// The frames a resume gets first, or why that cannot be exact. Called under the
    /// sequencer, with `current` the last sequence number taken.
    pub(super) fn resolve_start(
        &self,
        start: &Start<'_>,
        current: u64,
        topics: &[Arc<TopicState>],
    ) -> Result<Vec<Bytes>, ResetReason> {
        match start {
            Start::Live => Ok(Vec::new()),
            Start::After(last) => self.resolve(last, current, topics),
            Start::Fetched(replay) => self.resolve_fetched(replay, current, topics),
        }
    }

    /// The events after `last` on `topics`, oldest first, from the engine's history.
    fn resolve(
        &self,
        last: &str,
        current: u64,
        topics: &[Arc<TopicState>],
    ) -> Result<Vec<Bytes>, ResetReason> {
        if last.len() > MAX_LAST_EVENT_ID || last.chars().any(char::is_control) {
            return Err(ResetReason::Malformed);
        }
        let unknown = if self.config.history.is_some() {
            ResetReason::UnknownId
        } else {
            ResetReason::NoHistory
        };
        let resume = match parse_id(last, self.epoch()) {
            Parsed::Ours(seq) if self.local_seq(seq) > current => {
                return Err(ResetReason::Malformed)
            }
            Parsed::Ours(seq) => self.local_seq(seq),
            Parsed::OtherEpoch => return Err(ResetReason::OtherEpoch),
            Parsed::Foreign => {
                topics.iter().filter_map(|t| lock(&t.history).find(last)).max().ok_or(unknown)?
            }
        };
        if resume == current {
            return Ok(Vec::new());
        }
        if self.config.history.is_none() {
            return Err(ResetReason::NoHistory);
        }
        if resume < self.coverage_floor() {
            return Err(ResetReason::TooOld);
        }
        let mut missed = Vec::new();
        self.history_after(resume, topics, &mut missed)?;
        Ok(in_order(missed))
    }

    /// The frames of a resume whose start was fetched from a replay source: those frames (the
    /// ones this engine has not taken yet are left to the live stream), then the engine's own
    /// history after the fetch.
    fn resolve_fetched(
        &self,
        replay: &Replay,
        current: u64,
        topics: &[Arc<TopicState>],
    ) -> Result<Vec<Bytes>, ResetReason> {
        if let Some(reason) = replay.reset {
            return Err(reason);
        }
        let mut missed: Vec<(u64, Bytes)> =
            replay.frames.iter().filter(|(seq, _)| *seq <= current).cloned().collect();
        if replay.upto < current {
            if replay.upto < self.coverage_floor() {
                return Err(ResetReason::TooOld);
            }
            self.history_after(replay.upto, topics, &mut missed)?;
        }
        if missed.len() > self.config.max_replay {
            return Err(ResetReason::TooMany);
        }
        Ok(in_order(missed))
    }

    /// Adds `topics`' history after `resume` to `missed`, within the replay limit.
    fn history_after(
        &self,
        resume: u64,
        topics: &[Arc<TopicState>],
        missed: &mut Vec<(u64, Bytes)>,
    ) -> Result<(), ResetReason> {
        let max = self.config.max_replay;
        for topic in topics {
            let history = lock(&topic.history);
            if resume < history.evicted_upto() {
                return Err(ResetReason::TooOld);
            }
            missed.extend(history.after(resume, max).map(|e| (e.seq, e.frame.clone())));
            if missed.len() > max {
                return Err(ResetReason::TooMany);
            }
        }
        Ok(())
    }

    /// The epoch ids are issued in: the external clock's while it is attached.
    fn epoch(&self) -> u64 {
        if self.clock.is_attached() {
            self.clock.epoch()
        } else {
            self.config.epoch
        }
    }

    /// The engine's sequence number for the one in an id it issued (an external number is
    /// offset so the engine's numbers only grow).
    fn local_seq(&self, seq: u64) -> u64 {
        if self.clock.is_attached() {
            self.clock.to_local(seq)
        } else {
            seq
        }
    }

    /// The sequence number below which this engine may have missed events: topics that no
    /// longer exist, and the external clock's coverage (where it was attached, or a gap).
    fn coverage_floor(&self) -> u64 {
        self.registry.floor().max(self.clock.floor())
    }
}

/// `missed` sorted by sequence number, each number once (a fetched frame the engine's history
/// also holds), frames only.
fn in_order(mut missed: Vec<(u64, Bytes)>) -> Vec<Bytes> {
    missed.sort_unstable_by_key(|(seq, _)| *seq);
    missed.dedup_by_key(|(seq, _)| *seq);
    missed.into_iter().map(|(_, frame)| frame).collect()
}
