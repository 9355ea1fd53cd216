//! The one door to synchronisation primitives.
//!
//! Every `Arc`, `Mutex`, atomic and copy-on-write cell the engine uses comes from here, so the
//! loom models (`--cfg ssehub_loom`) can swap in loom's instrumented versions and explore every
//! interleaving of the real code. `real` and `mocked` export the same names.

#[cfg(not(ssehub_loom))]
mod real;
#[cfg(not(ssehub_loom))]
pub(crate) use real::*;

#[cfg(ssehub_loom)]
mod mocked;
#[cfg(ssehub_loom)]
pub(crate) use mocked::*;

/// Locks a mutex, ignoring poison: no code path panics while holding one of the engine's locks,
/// and a poisoned lock must not turn one panicking user callback into a panic for every client.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
