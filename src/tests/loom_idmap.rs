//! Models of `IdMap` behind the copy-on-write cell: concurrent `rcu` updates of one snapshot.
//!
//! The mocked `ArcSwap::rcu` runs its closure outside the lock and re-runs it when another
//! writer swapped in between, as arc-swap's does; these models check that no update is lost
//! that way and that the re-run path was actually explored.

use std::sync::atomic::{AtomicBool as StdAtomicBool, Ordering as StdOrdering};

use loom::thread;

use crate::engine::idmap::IdMap;
use crate::sync::{arc_swap, Arc, ArcSwap};

/// A cell of ids to liveness tokens.
type Cell = ArcSwap<IdMap<Arc<u64>>>;

/// The values of the current snapshot, in key order.
fn values(cell: &Cell) -> Vec<u64> {
    cell.load().values().iter().map(|v| **v).collect()
}

/// Inserts `id` with `rcu`, counting the closure's runs; returns how many there were.
fn insert(cell: &Cell, id: u64, value: &Arc<u64>) -> usize {
    let mut runs = 0;
    cell.rcu(|map| {
        runs += 1;
        map.insert(id, value.clone())
    });
    runs
}

/// Two concurrent `rcu` inserts into one snapshot: both survive, whichever lost the race re-ran
/// its closure on the winner's snapshot, and every replaced snapshot is released.
#[test]
fn loom_idmap_concurrent_rcu_inserts_both_survive() {
    static RERAN: StdAtomicBool = StdAtomicBool::new(false);
    loom::model(|| {
        let cell: Arc<Cell> = Arc::new(arc_swap(IdMap::new()));
        let one = Arc::new(1);
        let two = Arc::new(2);

        let (c, v) = (cell.clone(), one.clone());
        let other = thread::spawn(move || insert(&c, 1, &v));
        let runs = insert(&cell, 2, &two) + other.join().unwrap();
        if runs > 2 {
            RERAN.store(true, StdOrdering::Relaxed);
        }

        assert_eq!(values(&cell), [1, 2]);
        let snapshot = cell.load();
        assert!(snapshot.get(1).is_some_and(|v| Arc::ptr_eq(v, &one)));
        assert!(snapshot.get(2).is_some_and(|v| Arc::ptr_eq(v, &two)));
        drop(snapshot);
        // One reference here, one in the live snapshot: re-run closures left nothing behind.
        assert_eq!((Arc::strong_count(&one), Arc::strong_count(&two)), (2, 2));
        drop(cell);
        assert_eq!((Arc::strong_count(&one), Arc::strong_count(&two)), (1, 1));
    });
    assert!(RERAN.load(StdOrdering::Relaxed), "loom never explored the rcu re-run");
}

/// An `rcu` insert racing an `rcu` remove of another id: the insert survives, the removal is not
/// undone, and the removed value is released once no snapshot holds it.
#[test]
fn loom_idmap_rcu_insert_vs_remove_both_take_effect() {
    loom::model(|| {
        let one = Arc::new(1);
        let two = Arc::new(2);
        let cell: Arc<Cell> = Arc::new(arc_swap(IdMap::new().insert(1, one.clone())));

        let c = cell.clone();
        let remover = thread::spawn(move || {
            c.rcu(|map| map.remove(1));
        });
        insert(&cell, 2, &two);
        remover.join().unwrap();

        assert_eq!(values(&cell), [2]);
        assert!(cell.load().get(1).is_none());
        let last = cell.load().remove(2);
        assert!(last.is_empty());
        assert_eq!(Arc::strong_count(&one), 1, "a replaced snapshot still holds it");
        assert_eq!(Arc::strong_count(&two), 2);
    });
}
