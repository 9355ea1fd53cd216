//! `SubscriptionChange`: topics and patterns to add to and take off an open subscription.

/// A live change to an open subscription (see
/// [`Hub::update_subscription`](crate::Hub::update_subscription)): topics and patterns to take
/// off, then topics and patterns to add. Taking off a name the subscription does not have, or
/// adding one it has, changes nothing; a name in both ends up subscribed.
///
/// # Examples
///
/// ```
/// use ssehub::SubscriptionChange;
///
/// let change = SubscriptionChange::new()
///     .with_added_topic("price:ETH")
///     .with_added_pattern("news:*")
///     .with_removed_topic("price:BTC");
/// # drop(change);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct SubscriptionChange {
    /// Topics to add.
    pub(crate) add_topics: Vec<String>,
    /// Patterns to add.
    pub(crate) add_patterns: Vec<String>,
    /// Topics to take off.
    pub(crate) remove_topics: Vec<String>,
    /// Patterns to take off.
    pub(crate) remove_patterns: Vec<String>,
    /// The new interval, if it changes (zero: every event as it comes).
    pub(crate) interval: Option<std::time::Duration>,
}

impl SubscriptionChange {
    /// A change that changes nothing yet.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::SubscriptionChange::new(), ssehub::SubscriptionChange::default());
    /// ```
    pub fn new() -> Self {
        SubscriptionChange::default()
    }

    /// Adds an exact topic.
    ///
    /// # Examples
    ///
    /// ```
    /// let change = ssehub::SubscriptionChange::new().with_added_topic("a");
    /// # drop(change);
    /// ```
    pub fn with_added_topic(mut self, topic: impl Into<String>) -> Self {
        self.add_topics.push(topic.into());
        self
    }

    /// Adds a glob pattern (see [`Pattern`](crate::Pattern)).
    ///
    /// # Examples
    ///
    /// ```
    /// let change = ssehub::SubscriptionChange::new().with_added_pattern("price:*");
    /// # drop(change);
    /// ```
    pub fn with_added_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.add_patterns.push(pattern.into());
        self
    }

    /// Takes off a topic the subscription named (a topic it receives through a pattern stays
    /// while the pattern does).
    ///
    /// # Examples
    ///
    /// ```
    /// let change = ssehub::SubscriptionChange::new().with_removed_topic("a");
    /// # drop(change);
    /// ```
    pub fn with_removed_topic(mut self, topic: impl Into<String>) -> Self {
        self.remove_topics.push(topic.into());
        self
    }

    /// Takes off a pattern the subscription asked for.
    ///
    /// # Examples
    ///
    /// ```
    /// let change = ssehub::SubscriptionChange::new().with_removed_pattern("price:*");
    /// # drop(change);
    /// ```
    pub fn with_removed_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.remove_patterns.push(pattern.into());
        self
    }

    /// Switches the stream's pace to `interval` (zero: every event as it comes; see
    /// [`Subscribe::with_interval`](crate::Subscribe::with_interval)). Every event published
    /// before the change that the old pace still owed the stream (a tier's values waiting for
    /// its tick) is handed over first, so the stream misses nothing; from the change on, it
    /// receives at the new pace.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let change = ssehub::SubscriptionChange::new().with_interval(Duration::from_millis(250));
    /// assert_eq!(change.interval(), Some(Duration::from_millis(250)));
    /// ```
    pub fn with_interval(mut self, interval: std::time::Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// The interval it switches to, if it does.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::SubscriptionChange::new().interval(), None);
    /// ```
    #[must_use]
    pub fn interval(&self) -> Option<std::time::Duration> {
        self.interval
    }

    /// The topics it adds.
    ///
    /// # Examples
    ///
    /// ```
    /// let change = ssehub::SubscriptionChange::new().with_added_topic("a");
    /// assert_eq!(change.added_topics(), ["a"]);
    /// ```
    #[must_use]
    pub fn added_topics(&self) -> &[String] {
        &self.add_topics
    }

    /// The patterns it adds.
    ///
    /// # Examples
    ///
    /// ```
    /// let change = ssehub::SubscriptionChange::new().with_added_pattern("a:*");
    /// assert_eq!(change.added_patterns(), ["a:*"]);
    /// ```
    #[must_use]
    pub fn added_patterns(&self) -> &[String] {
        &self.add_patterns
    }
}
