//! HTTP adapters: an [`Endpoint`] (resolver, limits, CORS) shared by the axum and hyper
//! front-ends, which only turn its answers into their response types. They use the hub's
//! public API and hold no fan-out logic.

pub(crate) mod accept;
#[cfg(feature = "axum")]
pub mod axum;
pub(crate) mod encoding;
pub(crate) mod endpoint;
#[cfg(feature = "hyper")]
pub mod hyper;
pub mod resolve;
pub(crate) mod write_timeout;

pub use endpoint::{Cors, Endpoint};

/// Logs through `tracing` (target `ssehub`) when the `tracing` feature is on; otherwise the
/// arguments are not even evaluated.
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        tracing::$level!(target: "ssehub", $($arg)*);
    }};
}
pub(crate) use log;
