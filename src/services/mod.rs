//! The optional services the hub runs around the engine: resumable sessions, the index of
//! client ids, on-demand producers, the hub-wide heartbeat, the rate tiers' clock and the expiry index (presence is a few lines of the
//! hub's own, in `hub/shared.rs`). The engine calls none of them: the hub calls them around engine
//! operations, with what those operations report (the topics a subscribe touched, the
//! subscribers a publish dropped).

pub(crate) mod clients;
pub(crate) mod expiry;
pub(crate) mod heartbeat;
pub(crate) mod producers;
pub(crate) mod sessions;
pub(crate) mod tier_clock;
