//! [`Mutex`]: the platform mutex (std's, or loom's under `--cfg ssehub_loom`) with its rank in
//! its type, and [`lock`], which checks the [lock order](super#lock-order) in debug builds.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use super::platform;

/// A lock's place in the crate's lock order: a thread may take a lock only when its `RANK` is
/// above that of every lock the thread holds.
pub(crate) trait Rank {
    /// The place in the order (outermost lowest).
    const RANK: u8;
    /// The lock's name, for the panic message.
    const NAME: &'static str;
}

/// A mutex whose rank `R` (a marker from [`rank`](super::rank)) fixes where it sits in the
/// lock order.
pub(crate) struct Mutex<T, R: Rank> {
    /// The lock itself.
    inner: platform::Mutex<T>,
    /// The rank, a type only.
    rank: PhantomData<fn() -> R>,
}

impl<T, R: Rank> Mutex<T, R> {
    /// A mutex holding `value`.
    pub(crate) fn new(value: T) -> Self {
        Mutex { inner: platform::Mutex::new(value), rank: PhantomData }
    }
}

impl<T: Default, R: Rank> Default for Mutex<T, R> {
    fn default() -> Self {
        Mutex::new(T::default())
    }
}

impl<T: std::fmt::Debug, R: Rank> std::fmt::Debug for Mutex<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutex")
            .field("rank", &format_args!("{} ({})", R::NAME, R::RANK))
            .field("lock", &self.inner)
            .finish()
    }
}

/// A held lock; releasing it (dropping the guard) takes its rank off the thread's list.
pub(crate) struct MutexGuard<'a, T> {
    /// The platform guard.
    inner: platform::MutexGuard<'a, T>,
    /// The rank it holds, for the debug check.
    #[cfg(all(debug_assertions, not(ssehub_loom)))]
    rank: u8,
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        #[cfg(all(debug_assertions, not(ssehub_loom)))]
        order::released(self.rank);
    }
}

/// Locks a mutex, ignoring poison: no code path panics while holding one of the engine's locks,
/// and a poisoned lock must not turn one panicking user callback into a panic for every client.
///
/// # Panics
///
/// In debug builds, if the thread holds a lock ranked at or above this one (see the
/// [lock order](super#lock-order)).
pub(crate) fn lock<T, R: Rank>(mutex: &Mutex<T, R>) -> MutexGuard<'_, T> {
    #[cfg(all(debug_assertions, not(ssehub_loom)))]
    order::taking(R::RANK, R::NAME);
    let inner = match mutex.inner.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    MutexGuard {
        inner,
        #[cfg(all(debug_assertions, not(ssehub_loom)))]
        rank: R::RANK,
    }
}

/// The debug check: the ranks this thread holds.
#[cfg(all(debug_assertions, not(ssehub_loom)))]
mod order {
    use std::cell::RefCell;

    thread_local! {
        /// The ranks (and names) of the locks this thread holds, in the order taken.
        static HELD: RefCell<Vec<(u8, &'static str)>> = const { RefCell::new(Vec::new()) };
    }

    /// Records that the thread is taking lock `name` of `rank`, after checking the order.
    pub(super) fn taking(rank: u8, name: &'static str) {
        // `try_with`: a lock taken while the thread's locals are being destroyed goes
        // unchecked rather than panicking.
        let _ = HELD.try_with(|held| {
            let mut held = held.borrow_mut();
            if let Some(&(above, holding)) = held.iter().max_by_key(|(r, _)| *r) {
                if above >= rank {
                    drop(held);
                    panic!(
                        "lock order: taking `{name}` (rank {rank}) while holding `{holding}` \
                         (rank {above}); see the lock order in src/sync/mod.rs"
                    );
                }
            }
            held.push((rank, name));
        });
    }

    /// Records that the thread released a lock of `rank` (guards may go in any order).
    pub(super) fn released(rank: u8) {
        let _ = HELD.try_with(|held| {
            let mut held = held.borrow_mut();
            if let Some(at) = held.iter().rposition(|(r, _)| *r == rank) {
                held.remove(at);
            }
        });
    }
}

#[cfg(all(test, debug_assertions, not(ssehub_loom)))]
mod tests {
    use super::super::rank;
    use super::*;

    #[test]
    fn locks_taken_outermost_first_pass_the_check() {
        let sequencer: Mutex<u64, rank::Sequencer> = Mutex::new(0);
        let queue: Mutex<u64, rank::Queue> = Mutex::new(0);
        let parked: Mutex<u64, rank::Parked> = Mutex::new(0);
        let held = (lock(&sequencer), lock(&queue), lock(&parked));
        drop(held);
        // Released in any order, the ranks are free again.
        let queue_first = lock(&queue);
        drop(queue_first);
        let _sequencer = lock(&sequencer);
    }

    #[test]
    #[should_panic(expected = "taking `Sequencer` (rank 10) while holding `Queue` (rank 60)")]
    fn taking_an_outer_lock_inside_an_inner_one_panics_naming_both() {
        let sequencer: Mutex<u64, rank::Sequencer> = Mutex::new(0);
        let queue: Mutex<u64, rank::Queue> = Mutex::new(0);
        let _queue = lock(&queue);
        let _sequencer = lock(&sequencer);
    }

    #[test]
    #[should_panic(expected = "taking `Queue` (rank 60) while holding `Queue` (rank 60)")]
    fn two_locks_of_one_rank_may_not_nest() {
        let (a, b): (Mutex<u8, rank::Queue>, Mutex<u8, rank::Queue>) =
            (Mutex::new(0), Mutex::new(0));
        let _a = lock(&a);
        let _b = lock(&b);
    }
}
