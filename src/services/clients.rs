//! Client ids: the application's name for a subscription (`execution:abc123`) with its string
//! metadata, and the index that sends by glob walk.
//!
//! The index is ordered by id, so a send to a glob visits only the ids that start with the
//! glob's literal prefix (everything before its first `*`): a send to one exact id, or to
//! `execution:*`, costs a range lookup plus the ids it could match, not a walk over every
//! subscriber. Each id in that range is then checked with the crate's linear-time
//! [`Pattern`]. A send holds the index's lock (inside the sequencer, around the queue pushes),
//! so a subscription that joined the index before the send began receives it, and one that
//! left does not.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use crate::engine::registry::Slot;
use crate::error::ClientError;
use crate::hub::subscription::SubscriberId;
use crate::sync::{lock, rank, Arc, Mutex, SharedStr};
use crate::topic::{validate_topic, Pattern};

/// The longest client id, in bytes (the limit on `Last-Event-ID` and on topic names).
pub(crate) const MAX_ID_LEN: usize = 256;

/// The most metadata entries per subscription.
pub(crate) const MAX_ENTRIES: usize = 32;

/// The most bytes of metadata keys and values together per subscription.
pub(crate) const MAX_METADATA_BYTES: usize = 4096;

/// Checks a subscription's client id and metadata against the limits.
pub(crate) fn check(
    id: Option<&str>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), ClientError> {
    if let Some(id) = id {
        validate_topic(id, MAX_ID_LEN).map_err(ClientError::Id)?;
    }
    if metadata.len() > MAX_ENTRIES {
        return Err(ClientError::TooManyEntries { count: metadata.len(), max: MAX_ENTRIES });
    }
    if metadata.keys().any(String::is_empty) {
        return Err(ClientError::EmptyKey);
    }
    let len: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if len > MAX_METADATA_BYTES {
        return Err(ClientError::MetadataTooLarge { len, max: MAX_METADATA_BYTES });
    }
    Ok(())
}

/// A glob over client ids, checked like a topic pattern within the id limit.
pub(crate) fn pattern(glob: &str) -> Result<Pattern, crate::error::TopicError> {
    Pattern::with_max_len(glob, MAX_ID_LEN)
}

/// One live subscription with a client id, as [`Hub::clients`](crate::Hub::clients) lists it.
///
/// # Examples
///
/// ```
/// use ssehub::{Hub, Subscribe};
///
/// let hub = Hub::new();
/// let sub = hub.subscribe(Subscribe::new().with_client("user:ann").with_metadata("tab", "2"))?;
/// let clients = hub.clients();
/// assert_eq!(clients.len(), 1);
/// assert_eq!(clients[0].id(), "user:ann");
/// assert_eq!(clients[0].subscriber(), sub.id());
/// assert_eq!(clients[0].metadata().get("tab").map(String::as_str), Some("2"));
/// # Ok::<(), ssehub::SubscribeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedClient {
    /// The subscription.
    subscriber: SubscriberId,
    /// Its client id.
    id: String,
    /// Its metadata.
    metadata: BTreeMap<String, String>,
}

impl ConnectedClient {
    /// The subscription's id (for [`Hub::send_to`](crate::Hub::send_to) or
    /// [`Hub::disconnect`](crate::Hub::disconnect)).
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let sub = hub.subscribe(ssehub::Subscribe::new().with_client("a"))?;
    /// assert_eq!(hub.clients()[0].subscriber(), sub.id());
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    #[must_use]
    pub fn subscriber(&self) -> SubscriberId {
        self.subscriber
    }

    /// The client id it was subscribed with.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let _sub = hub.subscribe(ssehub::Subscribe::new().with_client("a"))?;
    /// assert_eq!(hub.clients()[0].id(), "a");
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its metadata.
    ///
    /// # Examples
    ///
    /// ```
    /// let hub = ssehub::Hub::new();
    /// let _sub = hub.subscribe(ssehub::Subscribe::new().with_client("a").with_metadata("k", "v"))?;
    /// assert_eq!(hub.clients()[0].metadata().len(), 1);
    /// # Ok::<(), ssehub::SubscribeError>(())
    /// ```
    #[must_use]
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
}

/// One entry of the index.
#[derive(Debug)]
struct Entry {
    /// The subscription.
    slot: Arc<Slot>,
    /// Its metadata.
    metadata: BTreeMap<String, String>,
}

/// Every live subscription that has a client id.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    /// The index under its lock.
    inner: Mutex<Inner, rank::Clients>,
}

/// The index under its lock.
#[derive(Debug, Default)]
struct Inner {
    /// Entries by (client id, subscriber id): ordered, so a glob's literal prefix is a range.
    by_id: BTreeMap<(SharedStr, u64), Entry>,
    /// Each subscriber's client id, to find its entry when it leaves.
    by_slot: HashMap<u64, SharedStr>,
}

impl Clients {
    /// Enters `slot` under client `id`.
    pub(crate) fn insert(&self, id: &str, metadata: BTreeMap<String, String>, slot: &Arc<Slot>) {
        let id = SharedStr::from(id);
        let mut inner = lock(&self.inner);
        inner.by_slot.insert(slot.id, id.clone());
        inner.by_id.insert((id, slot.id), Entry { slot: slot.clone(), metadata });
    }

    /// Takes subscriber `slot_id` out of the index, if it is there.
    pub(crate) fn remove(&self, slot_id: u64) {
        let mut inner = lock(&self.inner);
        if let Some(id) = inner.by_slot.remove(&slot_id) {
            inner.by_id.remove(&(id, slot_id));
        }
    }

    /// Calls `f` with every subscription whose client id `glob` matches, holding the index's
    /// lock (so the set is the one at this moment).
    pub(crate) fn for_matching(&self, glob: &Pattern, mut f: impl FnMut(&Arc<Slot>)) {
        let source = glob.as_str();
        let prefix = source.split('*').next().unwrap_or(source);
        let inner = lock(&self.inner);
        let start = (SharedStr::from(prefix), 0);
        let range = inner.by_id.range((Bound::Included(start), Bound::Unbounded));
        for ((id, _), entry) in range.take_while(|((id, _), _)| id.starts_with(prefix)) {
            if glob.matches(id) {
                f(&entry.slot);
            }
        }
    }

    /// Every entry, ordered by client id then subscriber id.
    pub(crate) fn list(&self) -> Vec<ConnectedClient> {
        let inner = lock(&self.inner);
        inner
            .by_id
            .iter()
            .map(|((id, subscriber), entry)| ConnectedClient {
                subscriber: SubscriberId(*subscriber),
                id: id.to_string(),
                metadata: entry.metadata.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        let none = BTreeMap::new();
        assert_eq!(check(Some("execution:abc123"), &none), Ok(()));
        assert!(matches!(check(Some(""), &none), Err(ClientError::Id(_))));
        assert!(matches!(check(Some(&"x".repeat(MAX_ID_LEN + 1)), &none), Err(ClientError::Id(_))));
        let many: BTreeMap<_, _> =
            (0..=MAX_ENTRIES).map(|i| (i.to_string(), String::new())).collect();
        assert!(matches!(check(None, &many), Err(ClientError::TooManyEntries { .. })));
        let big = BTreeMap::from([("k".to_string(), "v".repeat(MAX_METADATA_BYTES))]);
        assert!(matches!(check(None, &big), Err(ClientError::MetadataTooLarge { .. })));
        let empty_key = BTreeMap::from([(String::new(), "v".to_string())]);
        assert_eq!(check(None, &empty_key), Err(ClientError::EmptyKey));
    }
}
