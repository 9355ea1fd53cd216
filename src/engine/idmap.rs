//! `IdMap`: a persistent (copy-on-write) map from subscriber ids to values.
//!
//! Subscriber sets are read by every publish and replaced by every subscribe. Copying a flat set
//! on each subscribe makes n subscribes cost O(n²); this map is a bitmap-compressed radix trie
//! (64 children per node, fixed depth from the largest id) whose updates copy only the nodes on
//! one root-to-leaf path, O(log₆₄ n) nodes of at most 64 entries, and share the rest with the
//! previous version. Readers iterate a snapshot with no lock and no allocation.

use crate::sync::Arc;

/// Bits of the key consumed per level.
const BITS: u32 = 6;
/// The shift of the deepest possible root (levels at 0, 6, ..., 60 cover all 64 bits).
const MAX_SHIFT: u32 = 60;

/// A persistent map from `u64` keys to `V`. Cloning is O(1); `insert` and `remove` return a new
/// version and leave `self` untouched.
pub(crate) struct IdMap<V> {
    /// The root node; `None` when empty.
    root: Option<Arc<Node<V>>>,
    /// The shift of the root's level: the root covers keys below `64^(shift/6 + 1)`.
    shift: u32,
    /// Number of entries.
    len: usize,
}

/// One level of the trie. Children are stored densely; `bits` says which of the 64 slots exist,
/// and a slot's position is the number of set bits below it.
enum Node<V> {
    /// An inner level (shift > 0).
    Branch {
        /// Occupied slots.
        bits: u64,
        /// The children, in slot order.
        kids: Box<[Arc<Node<V>>]>,
    },
    /// The last level (shift 0).
    Leaf {
        /// Occupied slots.
        bits: u64,
        /// The values, in slot order.
        vals: Box<[V]>,
    },
}

impl<V> Clone for IdMap<V> {
    fn clone(&self) -> Self {
        IdMap { root: self.root.clone(), shift: self.shift, len: self.len }
    }
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap { root: None, shift: 0, len: 0 }
    }
}

impl<V> std::fmt::Debug for IdMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdMap").field("len", &self.len).finish()
    }
}

/// The bit for `key`'s slot at the level with `shift`.
fn slot_bit(key: u64, shift: u32) -> u64 {
    1u64 << ((key >> shift) & 63)
}

/// The dense position of `bit` in a node with occupied slots `bits`.
fn position(bits: u64, bit: u64) -> usize {
    (bits & (bit - 1)).count_ones() as usize
}

/// Whether a root at `shift` covers `key`.
fn covers(shift: u32, key: u64) -> bool {
    shift >= MAX_SHIFT || key >> (shift + BITS) == 0
}

/// Clones `items` with `item` inserted at `at`.
fn inserted<T: Clone>(items: &[T], at: usize, item: T) -> Box<[T]> {
    let mut out = Vec::with_capacity(items.len() + 1);
    out.extend_from_slice(&items[..at]);
    out.push(item);
    out.extend_from_slice(&items[at..]);
    out.into_boxed_slice()
}

/// Clones `items` with the element at `at` replaced.
fn replaced<T: Clone>(items: &[T], at: usize, item: T) -> Box<[T]> {
    let mut out = items.to_vec();
    out[at] = item;
    out.into_boxed_slice()
}

/// Clones `items` without the element at `at`.
fn removed<T: Clone>(items: &[T], at: usize) -> Box<[T]> {
    let mut out = Vec::with_capacity(items.len().saturating_sub(1));
    out.extend_from_slice(&items[..at]);
    out.extend_from_slice(&items[at + 1..]);
    out.into_boxed_slice()
}

impl<V: Clone> IdMap<V> {
    /// An empty map.
    pub(crate) fn new() -> Self {
        IdMap::default()
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value for `key`.
    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        let mut node = self.root.as_deref()?;
        if !covers(self.shift, key) {
            return None;
        }
        let mut shift = self.shift;
        loop {
            let bit = slot_bit(key, shift);
            match node {
                Node::Leaf { bits, vals } => {
                    return (bits & bit != 0).then(|| &vals[position(*bits, bit)]);
                }
                Node::Branch { bits, kids } => {
                    if bits & bit == 0 {
                        return None;
                    }
                    node = &kids[position(*bits, bit)];
                    shift -= BITS;
                }
            }
        }
    }

    /// A new version with `key` mapped to `val` (replacing any previous value).
    #[must_use]
    pub(crate) fn insert(&self, key: u64, val: V) -> Self {
        let Some(root) = &self.root else {
            let mut shift = 0;
            while !covers(shift, key) {
                shift += BITS;
            }
            return IdMap { root: Some(Arc::new(path(key, shift, val))), shift, len: 1 };
        };
        let mut root = root.clone();
        let mut shift = self.shift;
        while !covers(shift, key) {
            // Grow upwards: the old root becomes slot 0 of a new, higher level.
            root = Arc::new(Node::Branch { bits: 1, kids: Box::new([root]) });
            shift += BITS;
        }
        let (node, added) = insert_into(&root, shift, key, val);
        IdMap { root: Some(Arc::new(node)), shift, len: self.len + usize::from(added) }
    }

    /// A new version without `key` (an O(1) clone when `key` is absent).
    #[must_use]
    pub(crate) fn remove(&self, key: u64) -> Self {
        let Some(root) = &self.root else {
            return self.clone();
        };
        if !covers(self.shift, key) {
            return self.clone();
        }
        match remove_from(root, self.shift, key) {
            None => self.clone(),
            Some(None) => IdMap::new(),
            Some(Some(node)) => {
                IdMap { root: Some(Arc::new(node)), shift: self.shift, len: self.len - 1 }
            }
        }
    }

    /// Calls `f` on every value, in key order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&V)) {
        if let Some(root) = &self.root {
            visit(root, &mut f);
        }
    }

    /// The values, in key order (allocates; not for hot paths).
    pub(crate) fn values(&self) -> Vec<V> {
        let mut out = Vec::with_capacity(self.len);
        self.for_each(|v| out.push(v.clone()));
        out
    }
}

/// A single-entry subtree for `key` at `shift`.
fn path<V>(key: u64, shift: u32, val: V) -> Node<V> {
    let bits = slot_bit(key, shift);
    if shift == 0 {
        Node::Leaf { bits, vals: Box::new([val]) }
    } else {
        Node::Branch { bits, kids: Box::new([Arc::new(path(key, shift - BITS, val))]) }
    }
}

/// A copy of `node` with `key` set; also whether the key is new.
fn insert_into<V: Clone>(node: &Node<V>, shift: u32, key: u64, val: V) -> (Node<V>, bool) {
    let bit = slot_bit(key, shift);
    match node {
        Node::Leaf { bits, vals } => {
            let at = position(*bits, bit);
            if bits & bit != 0 {
                (Node::Leaf { bits: *bits, vals: replaced(vals, at, val) }, false)
            } else {
                (Node::Leaf { bits: bits | bit, vals: inserted(vals, at, val) }, true)
            }
        }
        Node::Branch { bits, kids } => {
            let at = position(*bits, bit);
            if bits & bit != 0 {
                let (kid, added) = insert_into(&kids[at], shift - BITS, key, val);
                (Node::Branch { bits: *bits, kids: replaced(kids, at, Arc::new(kid)) }, added)
            } else {
                let kid = Arc::new(path(key, shift - BITS, val));
                (Node::Branch { bits: bits | bit, kids: inserted(kids, at, kid) }, true)
            }
        }
    }
}

/// A copy of `node` without `key`: `None` if the key is absent, `Some(None)` if the node
/// became empty.
fn remove_from<V: Clone>(node: &Node<V>, shift: u32, key: u64) -> Option<Option<Node<V>>> {
    let bit = slot_bit(key, shift);
    match node {
        Node::Leaf { bits, vals } => {
            if bits & bit == 0 {
                return None;
            }
            let rest = bits & !bit;
            Some(
                (rest != 0)
                    .then(|| Node::Leaf { bits: rest, vals: removed(vals, position(*bits, bit)) }),
            )
        }
        Node::Branch { bits, kids } => {
            if bits & bit == 0 {
                return None;
            }
            let at = position(*bits, bit);
            Some(match remove_from(&kids[at], shift - BITS, key)? {
                Some(kid) => {
                    Some(Node::Branch { bits: *bits, kids: replaced(kids, at, Arc::new(kid)) })
                }
                None => {
                    let rest = bits & !bit;
                    (rest != 0).then(|| Node::Branch { bits: rest, kids: removed(kids, at) })
                }
            })
        }
    }
}

/// Depth-first, in key order.
fn visit<V>(node: &Node<V>, f: &mut impl FnMut(&V)) {
    match node {
        Node::Leaf { vals, .. } => vals.iter().for_each(f),
        Node::Branch { kids, .. } => kids.iter().for_each(|kid| visit(kid, f)),
    }
}

#[cfg(all(test, not(ssehub_loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
    }

    fn key() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..200, 0u64..5000, any::<u64>(), Just(u64::MAX), Just(0)]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (key(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            key().prop_map(Op::Remove)
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_btreemap(ops in proptest::collection::vec(op(), 0..300)) {
            let mut model = BTreeMap::new();
            let mut map = IdMap::new();
            let mut versions = Vec::new();
            for op in ops {
                versions.push((map.clone(), model.clone()));
                match op {
                    Op::Insert(k, v) => { model.insert(k, v); map = map.insert(k, v); }
                    Op::Remove(k) => { model.remove(&k); map = map.remove(k); }
                }
                prop_assert_eq!(map.len(), model.len());
            }
            let got: Vec<u32> = map.values();
            let want: Vec<u32> = model.values().copied().collect();
            prop_assert_eq!(got, want);
            for (k, v) in &model {
                prop_assert_eq!(map.get(*k), Some(v));
            }
            // Old versions are untouched by later updates.
            for (old, old_model) in versions {
                prop_assert_eq!(old.values(), old_model.values().copied().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn sequential_ids_stay_shallow() {
        let mut map = IdMap::new();
        for k in 1..=100_000u64 {
            map = map.insert(k, k);
        }
        assert_eq!(map.shift, 12);
        for k in 1..=100_000u64 {
            map = map.remove(k);
        }
        assert!(map.is_empty());
        assert!(map.root.is_none());
    }
}
