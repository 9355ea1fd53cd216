//! Resumable sessions: a client that reconnects with its token within the TTL gets back its
//! subscriptions and the targeted sends it missed.
//!
//! A session is issued at connect (its id and an unguessable token go out in the `connected`
//! event). While its connection lives, targeted sends to the session go to that connection's
//! queue; when the connection ends, they wait in a bounded buffer until the client resumes or the
//! TTL runs out. A token is bound to the principal it was issued to: presented by another one, it
//! is refused and counted as a hijack attempt. Topic events are not buffered here: the client's
//! `Last-Event-ID` replays them from history.
//!
//! Every session operation takes the sessions lock, which also orders the hand-over: a targeted
//! send goes either to the old connection (and is taken from its queue by the resume) or to the
//! new one, never to both or neither.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::engine::queue::{FrameKeys, Pushed};
use crate::engine::registry::Slot;
use crate::hub::{Subscribe, SubscriptionChange};
use crate::sync::{lock, rank, Arc, Mutex, SharedStr};

/// Settings of resumable sessions.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let limits = ssehub::SessionLimits::new()
///     .with_ttl(Duration::from_secs(120))
///     .with_buffer(50)
///     .with_max_sessions(100_000);
/// assert_eq!(limits.ttl(), Duration::from_secs(120));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct SessionLimits {
    /// How long a disconnected session waits for its client.
    ttl: Duration,
    /// Most targeted frames buffered while disconnected.
    buffer: usize,
    /// Most sessions remembered; past it, the longest-disconnected one is forgotten, and with
    /// none disconnected a new one is refused.
    max_sessions: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits { ttl: Duration::from_secs(300), buffer: 100, max_sessions: 100_000 }
    }
}

impl SessionLimits {
    /// A 5-minute TTL, 100 buffered targeted sends, 100,000 sessions.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::SessionLimits::new().buffer(), 100);
    /// ```
    pub fn new() -> Self {
        SessionLimits::default()
    }

    /// How long a disconnected session waits for its client.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let l = ssehub::SessionLimits::new().with_ttl(Duration::from_secs(1));
    /// assert_eq!(l.ttl(), Duration::from_secs(1));
    /// ```
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Most targeted sends buffered while disconnected (the oldest go first).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::SessionLimits::new().with_buffer(3).buffer(), 3);
    /// ```
    pub fn with_buffer(mut self, frames: usize) -> Self {
        self.buffer = frames;
        self
    }

    /// Most sessions remembered; past it, the longest-disconnected one is forgotten. When every
    /// remembered session has a live connection, a subscription that needs a new session is
    /// refused with [`SubscribeError::SessionsFull`](crate::SubscribeError::SessionsFull).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ssehub::SessionLimits::new().with_max_sessions(9).max_sessions(), 9);
    /// ```
    pub fn with_max_sessions(mut self, sessions: usize) -> Self {
        self.max_sessions = sessions;
        self
    }

    /// How long a disconnected session waits.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ssehub::SessionLimits::new().ttl().as_secs() > 0);
    /// ```
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Most targeted sends buffered while disconnected.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ssehub::SessionLimits::new().buffer() > 0);
    /// ```
    #[must_use]
    pub fn buffer(&self) -> usize {
        self.buffer
    }

    /// Most sessions remembered.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ssehub::SessionLimits::new().max_sessions() > 0);
    /// ```
    #[must_use]
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }
}

/// Where a session's targeted sends go.
#[derive(Debug)]
enum State {
    /// To this connection.
    Live(Arc<Slot>),
    /// Into a buffer, until the client resumes or the TTL runs out.
    Away {
        /// When the connection ended.
        since: Instant,
        /// Buffered frames, oldest first.
        buffer: VecDeque<Bytes>,
    },
}

/// One session.
#[derive(Debug)]
struct Session {
    /// The resume token.
    token: String,
    /// Who it was issued to.
    principal: Option<String>,
    /// The topics and patterns to restore on resume.
    topics: Vec<String>,
    /// See `topics`.
    patterns: Vec<String>,
    /// The interval a live change set, to restore on resume (`None`: the request's).
    interval: Option<std::time::Duration>,
    /// Where targeted sends go.
    state: State,
}

/// What a new connection gets from the session store.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The session's id.
    pub(crate) id: SharedStr,
    /// Its token (new or presented).
    pub(crate) token: String,
    /// Targeted frames missed while away (or taken from a previous live connection).
    pub(crate) missed: Vec<Bytes>,
    /// Topics to restore.
    pub(crate) topics: Vec<String>,
    /// Patterns to restore.
    pub(crate) patterns: Vec<String>,
    /// The interval to restore, if a live change set one.
    pub(crate) interval: Option<std::time::Duration>,
}

/// Why no live connection was found for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// No session has it (or it expired).
    Unknown,
    /// It belongs to another principal.
    Hijack,
    /// The session has no connection now.
    Away,
}

/// Why no session could be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The token belongs to another principal.
    Hijack,
    /// As many sessions as allowed are remembered and all of them have a live connection, so
    /// none can be forgotten to make room.
    Full,
}

/// All sessions.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    /// Sessions by id, and ids by token.
    inner: Mutex<Inner, rank::Sessions>,
}

/// The store under its lock.
#[derive(Debug, Default)]
struct Inner {
    /// Sessions by id.
    by_id: HashMap<SharedStr, Session>,
    /// Session ids by token.
    by_token: HashMap<String, SharedStr>,
    /// Session ids by the subscriber id of their live connection.
    by_slot: HashMap<u64, SharedStr>,
}

/// `n` random bytes as lower-case hex, from the operating system's generator: tokens must be
/// unguessable. Falls back to an error only if the OS generator fails.
fn random_hex(n: usize) -> Result<String, getrandom::Error> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Sessions {
    /// Opens a session for the connection with `slot`: resumes the one the request's token
    /// names if it is live or within its TTL and belongs to the request's principal, else
    /// issues a new one for the request's topics and patterns. The slot becomes the session's
    /// target at once. `None` when no session can be issued (no OS randomness for an
    /// unguessable token): the connection simply gets none.
    ///
    /// A new session past [`SessionLimits::max_sessions`] makes room by forgetting the session
    /// disconnected the longest; with none disconnected it is refused ([`Refused::Full`]), so
    /// the store never holds more than the limit.
    pub(crate) fn open(
        &self,
        limits: &SessionLimits,
        request: &Subscribe,
        slot: &Arc<Slot>,
        now: Instant,
    ) -> Result<Option<Opened>, Refused> {
        let (token, principal) = (request.session_token.as_deref(), request.principal.as_deref());
        let (topics, patterns) = (&request.topics, &request.patterns);
        let mut guard = lock(&self.inner);
        // One `&mut`, so its fields can be borrowed apart.
        let inner = &mut *guard;
        let known = token.and_then(|t| inner.by_token.get(t).cloned());
        if let Some(id) = known {
            let expired = inner.by_id.get(&id).is_some_and(|s| s.expired(limits, now));
            if expired {
                inner.remove(&id);
            } else if let Some(session) = inner.by_id.get_mut(&id) {
                if session.principal.as_deref() != principal {
                    return Err(Refused::Hijack);
                }
                let missed = match std::mem::replace(&mut session.state, State::Live(slot.clone()))
                {
                    State::Away { buffer, .. } => buffer.into(),
                    // Resumed while the old connection still looked alive: its queue is
                    // closed and its undelivered targeted frames move here.
                    State::Live(old) => {
                        inner.by_slot.remove(&old.id);
                        old.queue.close_taking_targeted().unwrap_or_default()
                    }
                };
                for topic in topics {
                    if !session.topics.contains(topic) {
                        session.topics.push(topic.clone());
                    }
                }
                for pattern in patterns {
                    if !session.patterns.contains(pattern) {
                        session.patterns.push(pattern.clone());
                    }
                }
                inner.by_slot.insert(slot.id, id.clone());
                return Ok(Some(Opened {
                    id,
                    token: session.token.clone(),
                    missed,
                    topics: session.topics.clone(),
                    patterns: session.patterns.clone(),
                    interval: session.interval,
                }));
            }
        }
        // Only a disconnected session may be forgotten: one with a live connection is in use,
        // so when every remembered session is live the new one is refused instead.
        while inner.by_id.len() >= limits.max_sessions {
            if !inner.forget_oldest_away() {
                return Err(Refused::Full);
            }
        }
        let (id, token) = match (random_hex(8), random_hex(16)) {
            (Ok(id), Ok(token)) => (SharedStr::from(id), token),
            // Without OS randomness no unguessable token can be issued; the connection simply
            // gets no session.
            _ => return Ok(None),
        };
        inner.by_token.insert(token.clone(), id.clone());
        inner.by_slot.insert(slot.id, id.clone());
        inner.by_id.insert(
            id.clone(),
            Session {
                token: token.clone(),
                principal: principal.map(str::to_string),
                topics: topics.to_vec(),
                patterns: patterns.to_vec(),
                interval: None,
                state: State::Live(slot.clone()),
            },
        );
        Ok(Some(Opened {
            id,
            token,
            missed: Vec::new(),
            topics: topics.to_vec(),
            patterns: patterns.to_vec(),
            interval: None,
        }))
    }

    /// The connection with `slot_id` ended: session `id` starts waiting for its client.
    pub(crate) fn detach(&self, id: &SharedStr, slot_id: u64, now: Instant) {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        if let Some(session) = inner.by_id.get_mut(id) {
            if matches!(&session.state, State::Live(slot) if slot.id == slot_id) {
                session.state = State::Away { since: now, buffer: VecDeque::new() };
                inner.by_slot.remove(&slot_id);
            }
        }
    }

    /// The live connection of the session `token` names, for a live change of what it
    /// receives: its slot and the session's id.
    pub(crate) fn live(
        &self,
        limits: &SessionLimits,
        token: &str,
        principal: Option<&str>,
        now: Instant,
    ) -> Result<(SharedStr, Arc<Slot>), Lookup> {
        let inner = lock(&self.inner);
        let id = inner.by_token.get(token).ok_or(Lookup::Unknown)?;
        let session = inner.by_id.get(id).ok_or(Lookup::Unknown)?;
        if session.expired(limits, now) {
            return Err(Lookup::Unknown);
        }
        if session.principal.as_deref() != principal {
            return Err(Lookup::Hijack);
        }
        match &session.state {
            State::Live(slot) => Ok((id.clone(), slot.clone())),
            State::Away { .. } => Err(Lookup::Away),
        }
    }

    /// Records a live change of the subscription whose connection is `slot_id` in its
    /// session, if it has one, so a resume restores what it receives now. Called under the
    /// sequencer, so changes are recorded in the order they were made.
    pub(crate) fn record_change(&self, slot_id: u64, change: &SubscriptionChange) {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let Some(id) = inner.by_slot.get(&slot_id) else { return };
        let Some(session) = inner.by_id.get_mut(id) else { return };
        if let Some(interval) = change.interval {
            session.interval = Some(interval);
        }
        session.topics.retain(|t| !change.remove_topics.contains(t));
        session.patterns.retain(|p| !change.remove_patterns.contains(p));
        for topic in &change.add_topics {
            if !session.topics.contains(topic) {
                session.topics.push(topic.clone());
            }
        }
        for pattern in &change.add_patterns {
            if !session.patterns.contains(pattern) {
                session.patterns.push(pattern.clone());
            }
        }
    }

    /// Sends a targeted frame to session `id`: to its connection, or into its buffer. Returns
    /// the push outcome and the connection's subscriber id (if it has one), `None` for an
    /// unknown session.
    pub(crate) fn send(
        &self,
        limits: &SessionLimits,
        id: &str,
        seq: u64,
        frame: &Bytes,
        keys: &FrameKeys<'_>,
    ) -> Option<(Pushed, Option<u64>)> {
        let mut inner = lock(&self.inner);
        let session = inner.by_id.get_mut(id)?;
        Some(match &mut session.state {
            State::Live(slot) => (slot.queue.push_targeted(seq, frame, keys), Some(slot.id)),
            State::Away { buffer, .. } => {
                let evicted = buffer.len() >= limits.buffer;
                if evicted {
                    buffer.pop_front();
                }
                if limits.buffer > 0 {
                    buffer.push_back(frame.clone());
                }
                (if evicted { Pushed::Evicted } else { Pushed::Queued }, None)
            }
        })
    }

    /// Forgets sessions disconnected for longer than the TTL.
    pub(crate) fn sweep(&self, limits: &SessionLimits, now: Instant) {
        lock(&self.inner).expire(limits, now);
    }

    /// Number of remembered sessions.
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).by_id.len()
    }
}

impl Session {
    /// Whether it has waited for its client longer than the TTL.
    fn expired(&self, limits: &SessionLimits, now: Instant) -> bool {
        matches!(self.state, State::Away { since, .. } if now.saturating_duration_since(since) > limits.ttl)
    }
}

impl Inner {
    /// Drops sessions disconnected for longer than the TTL.
    fn expire(&mut self, limits: &SessionLimits, now: Instant) {
        let expired: Vec<SharedStr> = self
            .by_id
            .iter()
            .filter(|(_, s)| s.expired(limits, now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove(&id);
        }
    }

    /// Forgets the session disconnected the longest; `false` when none is disconnected.
    fn forget_oldest_away(&mut self) -> bool {
        let oldest = self
            .by_id
            .iter()
            .filter_map(|(id, s)| match s.state {
                State::Away { since, .. } => Some((since, id.clone())),
                State::Live(_) => None,
            })
            .min_by_key(|(since, _)| *since)
            .map(|(_, id)| id);
        let Some(id) = oldest else { return false };
        self.remove(&id);
        true
    }

    /// Removes one session.
    fn remove(&mut self, id: &SharedStr) {
        if let Some(session) = self.by_id.remove(id) {
            self.by_token.remove(&session.token);
            if let State::Live(slot) = &session.state {
                self.by_slot.remove(&slot.id);
            }
        }
    }
}
