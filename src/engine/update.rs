//! A live change of a subscription: topics and patterns added to and taken off an open stream,
//! at one point in the sequence.

use crate::engine::registry::{Changed, Slot, Unchanged};
use crate::engine::{Engine, Names, Pace};
use crate::error::{IntervalError, SubscribeError};
use crate::sync::{lock, Arc};

impl Engine {
    /// Changes what `slot` receives, and at what pace when `pace` says (see
    /// `Registry::update`), under the sequencer: every
    /// publish is wholly before the change (delivered as the subscription stood, including on
    /// the topics it leaves) or wholly after (delivered as it stands now). `None` when the
    /// subscriber has ended. `applied` runs under the sequencer once the change is made (the
    /// hub records it in the subscriber's session there, so two changes are recorded in the
    /// order they were made).
    ///
    /// # Errors
    ///
    /// [`SubscribeError::TooManyTopics`] when it would ask for more topics and patterns than
    /// allowed, [`SubscribeError::Interval`] for a new interval past the hub's limit,
    /// [`SubscribeError::Closed`] after shutdown; nothing changes then.
    pub(crate) fn update(
        &self,
        slot: &Arc<Slot>,
        add: Names,
        remove: Names,
        pace: Option<Pace>,
        applied: impl FnOnce(),
    ) -> Result<Option<Changed>, SubscribeError> {
        let max = self.config.max_topics_per_subscription;
        let sequencer = lock(&self.sequencer);
        if self.is_closed() {
            return Err(SubscribeError::Closed);
        }
        let changed =
            self.registry.update(slot, add, remove, pace, max).map_err(
                |unchanged| match unchanged {
                    Unchanged::TooManyTopics(count) => SubscribeError::TooManyTopics { count, max },
                    Unchanged::Intervals => {
                        let max = self.config.max_intervals;
                        SubscribeError::Interval(IntervalError::TooMany { max })
                    }
                },
            )?;
        if changed.is_some() {
            applied();
        }
        drop(sequencer);
        self.report_sizes();
        Ok(changed)
    }
}
