//! `CowMap`: an ordered map whose frozen views cost O(leaves) to take, so a
//! state machine can hand a consistent copy of a large state to another thread
//! (to write a snapshot) while it goes on applying commands.
//!
//! The keys are range-partitioned into sorted leaves, each an
//! `Arc<BTreeMap<K, Arc<V>>>` of at most a configured number of entries
//! ([`LEAF_ENTRIES_MAX`] by default). A [`CowView`] clones the vector of leaf
//! `Arc`s; the first write to a leaf a view still shares copies that leaf (its
//! keys and value `Arc`s, never the values), and the first write to a value a
//! view shares copies that value. Nothing a view holds ever changes. Iteration
//! is in key order, the order of a `BTreeMap` holding the same entries, so a
//! machine moved onto a `CowMap` writes the same snapshot bytes as before.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The default largest number of entries in one leaf: a write after a view
/// copies at most this many keys and `Arc`s, and a view of 10 million entries
/// clones ~2.5k-5k `Arc`s.
pub const LEAF_ENTRIES_MAX: usize = 4096;

/// The smallest `leaf_max` [`CowMap::with_leaf_max`] accepts.
const LEAF_MAX_MIN: usize = 4;

type Leaf<K, V> = Arc<BTreeMap<K, Arc<V>>>;

/// An ordered map with cheap frozen views (see the module documentation).
///
/// Invariants: `leaves.len() == bounds.len() + 1 >= 1`; `bounds` is strictly
/// increasing; every key of leaf `i > 0` is `>= bounds[i - 1]` and every key of
/// leaf `i < last` is `< bounds[i]`; no leaf holds more than `leaf_max`
/// entries; when there are several leaves, none is empty.
pub struct CowMap<K, V> {
    /// The lower bound of leaf `i + 1` (leaf 0 has none).
    bounds: Vec<K>,
    leaves: Vec<Leaf<K, V>>,
    len: usize,
    leaf_max: usize,
}

impl<K: Ord + Clone, V: Clone> CowMap<K, V> {
    /// An empty map with leaves of at most [`LEAF_ENTRIES_MAX`] entries.
    pub fn new() -> Self {
        Self::with_leaf_max(LEAF_ENTRIES_MAX)
    }

    /// An empty map with leaves of at most `leaf_max` entries (at least 4; a
    /// smaller value is raised to 4). A leaf below a quarter of it is merged
    /// into a neighbour.
    pub fn with_leaf_max(leaf_max: usize) -> Self {
        Self {
            bounds: Vec::new(),
            leaves: vec![Arc::new(BTreeMap::new())],
            len: 0,
            leaf_max: leaf_max.max(LEAF_MAX_MIN),
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the map holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of leaves: what taking a [`CowView`] costs, in `Arc` clones.
    pub fn leaf_count(&self) -> usize {
        self.leaves.len()
    }

    /// The index of the leaf whose range holds `key`.
    fn locate<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.bounds.partition_point(|b| b.borrow() <= key)
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.leaves[self.locate(key)].get(key).map(|v| &**v)
    }

    /// True when the map holds `key`.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get(key).is_some()
    }

    /// The value of `key`, to change in place. The leaf and the value are
    /// copied first if a view shares them.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = self.locate(key);
        if !self.leaves[i].contains_key(key) {
            return None;
        }
        Arc::make_mut(&mut self.leaves[i])
            .get_mut(key)
            .map(Arc::make_mut)
    }

    /// The leaf `key` goes in, split first if `key` is new and the leaf is
    /// full, and whether `key` is there already.
    fn leaf_for(&mut self, key: &K) -> (usize, bool) {
        let i = self.locate(key);
        let present = self.leaves[i].contains_key(key);
        if !present && self.leaves[i].len() >= self.leaf_max {
            self.split(i);
            return (self.locate(key), false);
        }
        (i, present)
    }

    /// The value of `key`, inserting `default()` first if the map has none.
    pub fn get_or_insert_with(&mut self, key: K, default: impl FnOnce() -> V) -> &mut V {
        let (i, present) = self.leaf_for(&key);
        if !present {
            self.len += 1;
        }
        let leaf = Arc::make_mut(&mut self.leaves[i]);
        Arc::make_mut(leaf.entry(key).or_insert_with(|| Arc::new(default())))
    }

    /// Inserts `value` under `key` and returns the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let (i, _) = self.leaf_for(&key);
        let old = Arc::make_mut(&mut self.leaves[i]).insert(key, Arc::new(value));
        if old.is_none() {
            self.len += 1;
        }
        old.map(Arc::unwrap_or_clone)
    }

    /// Removes `key` and returns its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = self.locate(key);
        if !self.leaves[i].contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(&mut self.leaves[i]).remove(key)?;
        self.len -= 1;
        if self.leaves.len() > 1 && self.leaves[i].len() < self.leaf_min() {
            self.merge(i);
        }
        Some(Arc::unwrap_or_clone(old))
    }

    /// Below this many entries a leaf is merged into a neighbour.
    fn leaf_min(&self) -> usize {
        self.leaf_max / 4
    }

    /// Splits leaf `i` in two halves.
    fn split(&mut self, i: usize) {
        let leaf = Arc::make_mut(&mut self.leaves[i]);
        let Some(middle) = leaf.keys().nth(leaf.len() / 2).cloned() else {
            return;
        };
        let right = leaf.split_off(&middle);
        debug_assert!(!leaf.is_empty() && !right.is_empty());
        self.bounds.insert(i, middle);
        self.leaves.insert(i + 1, Arc::new(right));
    }

    /// Merges the small leaf `i` with a neighbour, splitting the result again if
    /// it is over `leaf_max`.
    fn merge(&mut self, i: usize) {
        debug_assert!(self.leaves.len() > 1);
        // Merge leaf `left + 1` into leaf `left`.
        let left = if i + 1 < self.leaves.len() { i } else { i - 1 };
        let right = self.leaves.remove(left + 1);
        self.bounds.remove(left);
        let mut right = Arc::unwrap_or_clone(right);
        Arc::make_mut(&mut self.leaves[left]).append(&mut right);
        if self.leaves[left].len() > self.leaf_max {
            self.split(left);
        }
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.leaves
            .iter()
            .flat_map(|leaf| leaf.iter().map(|(k, v)| (k, &**v)))
    }

    /// A frozen view of the map as it is now, in O(leaves): later writes to the
    /// map never show in it.
    pub fn view(&self) -> CowView<K, V> {
        CowView {
            leaves: self.leaves.clone(),
            len: self.len,
        }
    }

    /// Checks the invariants (tests and debug builds).
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        if self.leaves.len() != self.bounds.len() + 1 {
            return Err("leaves and bounds disagree");
        }
        if self.leaves.iter().map(|l| l.len()).sum::<usize>() != self.len {
            return Err("len is not the sum of the leaves");
        }
        if self.leaves.len() > 1 && self.leaves.iter().any(|l| l.is_empty()) {
            return Err("an empty leaf beside others");
        }
        if self.leaves.iter().any(|l| l.len() > self.leaf_max) {
            return Err("a leaf over leaf_max");
        }
        for (i, b) in self.bounds.iter().enumerate() {
            if self.leaves[i].keys().next_back().is_some_and(|k| k >= b) {
                return Err("a key at or above the next leaf's bound");
            }
            if self.leaves[i + 1].keys().next().is_some_and(|k| k < b) {
                return Err("a key below its leaf's bound");
            }
        }
        Ok(())
    }
}

impl<K: Ord + Clone, V: Clone> Default for CowMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// A clone shares every leaf, like a view.
impl<K: Clone, V> Clone for CowMap<K, V> {
    fn clone(&self) -> Self {
        Self {
            bounds: self.bounds.clone(),
            leaves: self.leaves.clone(),
            len: self.len,
            leaf_max: self.leaf_max,
        }
    }
}

/// Equal when they hold the same entries, however they are partitioned.
impl<K: Ord + Clone, V: Clone + PartialEq> PartialEq for CowMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<K: Ord + Clone + fmt::Debug, V: Clone + fmt::Debug> fmt::Debug for CowMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A frozen view of a [`CowMap`], taken by [`CowMap::view`]: `Send + 'static`
/// when the keys and values are `Send + Sync + 'static`, and cheap to clone.
pub struct CowView<K, V> {
    leaves: Vec<Leaf<K, V>>,
    len: usize,
}

impl<K, V> CowView<K, V> {
    /// The number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the view holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries in key order, as they were when the view was taken.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.leaves
            .iter()
            .flat_map(|leaf| leaf.iter().map(|(k, v)| (k, &**v)))
    }
}

impl<K, V> Clone for CowView<K, V> {
    fn clone(&self) -> Self {
        Self {
            leaves: self.leaves.clone(),
            len: self.len,
        }
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for CowView<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), so a failing seed replays.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn entries<'a>(it: impl Iterator<Item = (&'a u32, &'a Vec<u32>)>) -> Vec<(u32, Vec<u32>)> {
        it.map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Random interleavings of insert / get_mut / get_or_insert_with / remove /
    /// get / view against a `BTreeMap` model; every view taken stays equal to the
    /// model as it was then, whatever the map did afterwards.
    #[test]
    fn cow_map_matches_a_btree_map_and_its_views_stay_frozen() {
        for seed in 1..=200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let leaf_max = 4 + rng.below(12) as usize;
            let keys = 1 + rng.below(300) as u32;
            let mut map = CowMap::with_leaf_max(leaf_max);
            let mut model: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            let mut views = Vec::new();
            for step in 0..2_000u32 {
                let k = rng.below(u64::from(keys)) as u32;
                match rng.below(10) {
                    0..=3 => assert_eq!(map.insert(k, vec![step]), model.insert(k, vec![step])),
                    4 | 5 => {
                        let got = map.get_mut(&k).map(|v| {
                            v.push(step);
                            v.clone()
                        });
                        let want = model.get_mut(&k).map(|v| {
                            v.push(step);
                            v.clone()
                        });
                        assert_eq!(got, want);
                    }
                    6 => {
                        map.get_or_insert_with(k, Vec::new).push(step);
                        model.entry(k).or_default().push(step);
                    }
                    7 | 8 => assert_eq!(map.remove(&k), model.remove(&k)),
                    _ => {
                        views.push((map.view(), entries(model.iter())));
                        assert_eq!(map.get(&k), model.get(&k));
                        assert_eq!(map.contains_key(&k), model.contains_key(&k));
                    }
                }
                map.check_invariants()
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
                assert_eq!(map.len(), model.len(), "seed {seed} step {step}");
            }
            assert_eq!(entries(map.iter()), entries(model.iter()), "seed {seed}");
            for (view, frozen) in &views {
                assert_eq!(view.len(), frozen.len(), "seed {seed}");
                assert_eq!(&entries(view.iter()), frozen, "seed {seed}: a view changed");
            }
        }
    }

    // The view is written on another thread: what the test is about.
    #[allow(clippy::disallowed_methods)]
    #[test]
    fn a_view_is_send_and_static_and_outlives_its_map() {
        fn send_static<T: Send + 'static>(_: &T) {}
        let mut map = CowMap::new();
        for k in 0..10_000u32 {
            map.insert(k, k.to_string());
        }
        assert!(map.leaf_count() > 2, "10k entries span several leaves");
        let view = map.view();
        send_static(&view);
        map.get_mut(&7).unwrap().push('!');
        drop(map);
        let sum = std::thread::spawn(move || view.iter().filter(|(_, v)| v.ends_with('!')).count())
            .join()
            .unwrap();
        assert_eq!(sum, 0, "the write after the view does not show in it");
    }

    #[test]
    fn ascending_and_descending_fills_keep_leaves_bounded() {
        for keys in [
            (0..5_000u32).collect::<Vec<_>>(),
            (0..5_000u32).rev().collect(),
        ] {
            let mut map = CowMap::with_leaf_max(64);
            for &k in &keys {
                assert!(map.insert(k, ()).is_none());
            }
            map.check_invariants().unwrap();
            assert!(map.leaf_count() >= 5_000 / 64);
            assert!(map.iter().map(|(k, _)| *k).eq(0..5_000));
            for &k in &keys {
                assert_eq!(map.remove(&k), Some(()));
                map.check_invariants().unwrap();
            }
            assert!(map.is_empty());
            assert_eq!(map.leaf_count(), 1);
        }
    }
}
