//! Reading a map: lookups, iteration, the causal context.

use super::*;

/// The entries of an [`OrMap`] in this replica's storage order: see [`OrMap::iter`].
pub struct Iter<'a, K, V>(indexmap::map::Iter<'a, K, V>);

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl<K, V> DoubleEndedIterator for Iter<'_, K, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back()
    }
}

impl<K, V> ExactSizeIterator for Iter<'_, K, V> {}

impl<K, V> FusedIterator for Iter<'_, K, V> {}

impl<K, V> Clone for Iter<'_, K, V> {
    fn clone(&self) -> Self {
        Iter(self.0.clone())
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Iter<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

/// The entries in this replica's storage order, as [`OrMap::iter`].
///
/// ```
/// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
///
/// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
/// let mut cart: OrMap<String, PnCounter> = OrMap::new();
/// cart.increment("apples".into(), 3, &mut hlc)?;
/// cart.increment("pears".into(), 2, &mut hlc)?;
/// let mut total = 0;
/// for (_product, count) in &cart {
///     total += count.value();
/// }
/// assert_eq!(total, 5);
/// # Ok::<(), concord::Error>(())
/// ```
impl<'a, K: Key, V: DotStore> IntoIterator for &'a OrMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    /// [`OrMap::iter`]: storage order, no allocation.
    fn into_iter(self) -> Iter<'a, K, V> {
        self.iter()
    }
}

impl<K: Key, V: DotStore> OrMap<K, V> {
    /// An empty map.
    ///
    /// ```
    /// use concord::{MvRegister, OrMap};
    ///
    /// let profiles: OrMap<String, MvRegister<String>> = OrMap::new();
    /// assert!(profiles.is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The value at `key`, which may be any borrowed form of the key type (`&str`
    /// for `String` keys).
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// cart.increment("apples".into(), 3, &mut hlc)?;
    /// assert_eq!(cart.get("apples").map(PnCounter::value), Some(3));
    /// assert!(cart.get("pears").is_none());
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key)
    }

    /// True if `key` (any borrowed form of the key type) is present.
    ///
    /// ```
    /// use concord::{Hlc, LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut settings: OrMap<String, LwwRegister<bool>> = OrMap::new();
    /// settings.write("dark-mode".into(), true, &mut hlc)?;
    /// assert!(settings.contains_key("dark-mode"));
    /// settings.remove("dark-mode", &mut hlc)?;
    /// assert!(!settings.contains_key("dark-mode"));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.contains_key(key)
    }

    /// The number of keys.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// cart.increment("apples".into(), 3, &mut hlc)?;
    /// cart.increment("pears".into(), 1, &mut hlc)?;
    /// cart.increment("apples".into(), 1, &mut hlc)?;
    /// assert_eq!(cart.len(), 2);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the map has no keys (a map whose keys were all removed is empty again).
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// assert!(cart.is_empty());
    /// cart.increment("apples".into(), 3, &mut hlc)?;
    /// assert!(!cart.is_empty());
    /// cart.remove("apples", &mut hlc)?;
    /// assert!(cart.is_empty());
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in this replica's storage order, without allocating.
    ///
    /// Storage order is insertion order until a key is removed (the last entry then
    /// takes the removed one's place). It depends on the order this replica received
    /// the writes in, so two replicas holding the same state may walk it differently;
    /// use [`OrMap::iter_sorted`] where the order shows. `&OrMap` iterates the same way
    /// in a `for` loop.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// cart.increment("pears".into(), 1, &mut hlc)?;
    /// cart.increment("apples".into(), 3, &mut hlc)?;
    /// let total: i64 = cart.iter().map(|(_, qty)| qty.value()).sum();
    /// assert_eq!(total, 4);
    /// for (product, qty) in &cart {
    ///     assert!(qty.value() > 0, "{product}");
    /// }
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter(self.entries.iter())
    }

    /// The entries in key order: the same order on every replica that holds the same
    /// state. Costs an allocation and a sort of `len()` references per call; prefer
    /// [`OrMap::iter`] where the order does not matter.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// cart.increment("pears".into(), 1, &mut hlc)?;
    /// cart.increment("apples".into(), 3, &mut hlc)?;
    /// let lines: Vec<(&str, i64)> =
    ///     cart.iter_sorted().map(|(k, qty)| (k.as_str(), qty.value())).collect();
    /// assert_eq!(lines, [("apples", 3), ("pears", 1)]);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn iter_sorted(&self) -> impl ExactSizeIterator<Item = (&K, &V)> + DoubleEndedIterator {
        let mut sorted: Vec<(&K, &V)> = self.entries.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        sorted.into_iter()
    }

    /// The keys in storage order (see [`OrMap::iter`]), without allocating.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// cart.increment("pears".into(), 1, &mut hlc)?;
    /// cart.increment("apples".into(), 3, &mut hlc)?;
    /// let mut products: Vec<&String> = cart.keys().collect();
    /// products.sort();
    /// assert_eq!(products, ["apples", "pears"]);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &K> + DoubleEndedIterator + '_ {
        self.entries.keys()
    }

    /// The values in storage order (see [`OrMap::iter`]), without allocating.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// cart.increment("pears".into(), 1, &mut hlc)?;
    /// cart.increment("apples".into(), 3, &mut hlc)?;
    /// assert_eq!(cart.values().map(PnCounter::value).sum::<i64>(), 4);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn values(&self) -> impl ExactSizeIterator<Item = &V> + DoubleEndedIterator + '_ {
        self.entries.values()
    }

    /// Every dot this map has seen (its own context; empty for a nested map). A
    /// removed key's dots stay here after the entry is gone: that is how the map
    /// remembers the removal without a tombstone.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let a = ReplicaId::from_u128(1);
    /// let mut hlc = Hlc::new(a, ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// cart.increment("apples".into(), 3, &mut hlc)?;
    /// cart.remove("apples", &mut hlc)?;
    /// assert!(cart.is_empty());
    /// // Two writes (the increment and the removal), both remembered.
    /// assert_eq!(cart.context().clock().get(a), 2);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }
}
