//! Conveniences per value type: maps of registers and of counters.

use super::*;

impl<K: Key, T: Data> OrMap<K, LwwRegister<T>> {
    /// Writes `value` to the register at `key`; returns the delta.
    ///
    /// ```
    /// use concord::{Hlc, LwwRegister, ManualClock, OrMap, ReplicaId, Resolver};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut settings: OrMap<String, LwwRegister<String>> = OrMap::new();
    /// let delta = settings.write("theme".into(), "dark".into(), &mut hlc)?;
    /// let mut peer = OrMap::new();
    /// peer.merge(delta);
    /// assert_eq!(peer.value("theme").map(String::as_str), Some("dark"));
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`OrMap::update`]: [`Error::ClockOverflow`] or [`Error::InvalidDot`], with
    /// nothing changed.
    pub fn write<S: TimeSource>(&mut self, key: K, value: T, hlc: &mut Hlc<S>) -> Result<Self> {
        crate::probe::check_value(&value)?;
        self.update(key, hlc, |reg, op| reg.assign(op, value))
    }

    /// The former name of [`OrMap::write`] on a map of last-writer-wins registers.
    ///
    /// # Errors
    ///
    /// As [`OrMap::write`].
    #[deprecated(
        since = "0.1.0",
        note = "renamed `write`, the write of a register at a key in every map"
    )]
    pub fn set<S: TimeSource>(&mut self, key: K, value: T, hlc: &mut Hlc<S>) -> Result<Self> {
        self.write(key, value, hlc)
    }

    /// The winning value at `key` (any borrowed form of the key type); `None` if
    /// absent.
    ///
    /// ```
    /// use concord::{Hlc, LwwRegister, ManualClock, OrMap, ReplicaId, Resolver};
    ///
    /// let time = ManualClock::new(1_000);
    /// let mut hlc_a = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// let mut hlc_b = Hlc::new(ReplicaId::from_u128(2), time.clone());
    /// let mut a: OrMap<String, LwwRegister<String>> = OrMap::new();
    /// let mut b = a.clone();
    /// a.write("theme".into(), "dark".into(), &mut hlc_a)?;
    /// time.advance(5);
    /// b.write("theme".into(), "light".into(), &mut hlc_b)?;
    /// a.merge(b);
    /// // The later write wins the race.
    /// assert_eq!(a.value("theme").map(String::as_str), Some("light"));
    /// assert_eq!(a.value("font"), None);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn value<Q>(&self, key: &Q) -> Option<&T>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).and_then(LwwRegister::value)
    }
}

impl<K: Key, T: Data> OrMap<K, MvRegister<T>> {
    /// Writes `value` at `key`, superseding the siblings this replica has seen; returns
    /// the delta.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, MvRegister, OrMap, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut emails: OrMap<String, MvRegister<String>> = OrMap::new();
    /// emails.write("alice".into(), "alice@old.example".into(), &mut hlc)?;
    /// emails.write("alice".into(), "alice@new.example".into(), &mut hlc)?;
    /// // The second write saw the first: one value, no siblings.
    /// let alice = emails.get("alice").unwrap();
    /// assert_eq!(alice.get().map(String::as_str), Some("alice@new.example"));
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`OrMap::update`]: [`Error::ClockOverflow`] or [`Error::InvalidDot`], with
    /// nothing changed.
    pub fn write<S: TimeSource>(&mut self, key: K, value: T, hlc: &mut Hlc<S>) -> Result<Self> {
        crate::probe::check_value(&value)?;
        self.update(key, hlc, |reg, op| reg.assign(op, value))
    }

    /// The value at `key` (any borrowed form of the key type) as the application merge
    /// function `f` resolves its siblings; `None` if absent. `f` is called only when
    /// there are two siblings or more.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, MvRegister, OrMap, ReplicaId, Resolver};
    ///
    /// let time = ManualClock::new(0);
    /// let mut hlc_a = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// let mut hlc_b = Hlc::new(ReplicaId::from_u128(2), time.clone());
    /// let mut a: OrMap<String, MvRegister<u32>> = OrMap::new();
    /// let mut b = a.clone();
    /// a.write("stock".into(), 7, &mut hlc_a)?;
    /// b.write("stock".into(), 5, &mut hlc_b)?;
    /// a.merge(b);
    /// // The application's rule: the lowest count is the safe one.
    /// let lowest = |s: &[&u32]| **s.iter().min().unwrap();
    /// assert_eq!(a.resolved("stock", lowest), Some(5));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn resolved<Q>(&self, key: &Q, f: impl MergeFn<T>) -> Option<T>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).and_then(|reg| reg.resolve(f))
    }

    /// Every key with its value resolved by `f`, in key order: the application's view
    /// of the map, the same on every replica that holds the same state. Sorts the
    /// entries as [`OrMap::iter_sorted`] does.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, MvRegister, OrMap, ReplicaId, Resolver};
    ///
    /// let time = ManualClock::new(0);
    /// let mut hlc_a = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// let mut hlc_b = Hlc::new(ReplicaId::from_u128(2), time.clone());
    /// let mut a: OrMap<String, MvRegister<u32>> = OrMap::new();
    /// let mut b = a.clone();
    /// a.write("pears".into(), 7, &mut hlc_a)?;
    /// a.write("apples".into(), 2, &mut hlc_a)?;
    /// b.write("pears".into(), 5, &mut hlc_b)?;
    /// a.merge(b);
    /// let lowest = |s: &[&u32]| **s.iter().min().unwrap();
    /// let view: Vec<(&String, u32)> = a.resolve_all(&lowest).collect();
    /// assert_eq!(view, [(&"apples".to_string(), 2), (&"pears".to_string(), 5)]);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn resolve_all<'a, F: MergeFn<T> + 'a>(
        &'a self,
        f: &'a F,
    ) -> impl Iterator<Item = (&'a K, T)> + 'a {
        self.iter_sorted()
            .filter_map(move |(k, reg)| reg.resolve(|s: &[&T]| f.merge_values(s)).map(|v| (k, v)))
    }

    /// The keys whose registers hold concurrent siblings, in key order. Allocates a
    /// list of the conflicted keys only.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, MvRegister, OrMap, ReplicaId, Resolver};
    ///
    /// let time = ManualClock::new(0);
    /// let mut hlc_a = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// let mut hlc_b = Hlc::new(ReplicaId::from_u128(2), time.clone());
    /// let mut a: OrMap<String, MvRegister<u32>> = OrMap::new();
    /// let mut b = a.clone();
    /// a.write("pears".into(), 7, &mut hlc_a)?;
    /// a.write("apples".into(), 2, &mut hlc_a)?;
    /// b.write("pears".into(), 5, &mut hlc_b)?;
    /// a.merge(b);
    /// assert_eq!(a.conflicted_keys().collect::<Vec<_>>(), ["pears"]);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn conflicted_keys(&self) -> impl ExactSizeIterator<Item = &K> + '_ {
        let mut keys: Vec<&K> = self
            .iter()
            .filter(|(_, r)| r.is_conflicted())
            .map(|(k, _)| k)
            .collect();
        keys.sort_unstable();
        keys.into_iter()
    }

    /// Writes the resolved value back to every conflicted key, collapsing the siblings;
    /// returns one delta covering all of them.
    ///
    /// The keys are written in key order, one write each.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, MvRegister, OrMap, ReplicaId, Resolver};
    ///
    /// let time = ManualClock::new(0);
    /// let mut hlc_a = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// let mut hlc_b = Hlc::new(ReplicaId::from_u128(2), time.clone());
    /// let mut a: OrMap<String, MvRegister<u32>> = OrMap::new();
    /// let mut b = a.clone();
    /// a.write("stock".into(), 7, &mut hlc_a)?;
    /// b.write("stock".into(), 5, &mut hlc_b)?;
    /// a.merge(b.clone());
    ///
    /// let lowest = |s: &[&u32]| **s.iter().min().unwrap();
    /// let delta = a.collapse(lowest, &mut hlc_a)?;
    /// assert_eq!(a.conflicted_keys().count(), 0);
    /// // B learns the resolution from the delta.
    /// b.merge(delta);
    /// assert_eq!(b.get("stock").unwrap().get(), Some(&5));
    /// assert_eq!(a, b);
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ClockOverflow`] or [`Error::InvalidDot`], as for [`OrMap::update`].
    /// One write per key: if the clock fails part way, the keys written before stay
    /// written (each is a complete write) and the error is returned.
    pub fn collapse<S: TimeSource>(
        &mut self,
        f: impl MergeFn<T>,
        hlc: &mut Hlc<S>,
    ) -> Result<Self> {
        let mut fixes: Vec<(K, T)> = self
            .iter()
            .filter(|(_, r)| r.is_conflicted())
            .filter_map(|(k, r)| {
                r.resolve(|s: &[&T]| f.merge_values(s))
                    .map(|v| (k.clone(), v))
            })
            .collect();
        fixes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // All or nothing: a merge function that produced an unencodable value (a NaN)
        // fails the collapse before any key is written.
        for (_, value) in &fixes {
            crate::probe::check_value(value)?;
        }
        let mut delta = OrMap::new();
        for (key, value) in fixes {
            let d = self.write(key, value, hlc)?;
            delta.merge(d);
        }
        delta.seal();
        Ok(delta)
    }
}

impl<K: Key> OrMap<K, PnCounter> {
    /// Adds `amount` (negative to subtract) to the counter at `key`; returns the delta.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId, Resolver};
    ///
    /// let time = ManualClock::new(0);
    /// let mut hlc_a = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// let mut hlc_b = Hlc::new(ReplicaId::from_u128(2), time.clone());
    /// let mut a: OrMap<String, PnCounter> = OrMap::new();
    /// let mut b = a.clone();
    /// a.increment("apples".into(), 3, &mut hlc_a)?;
    /// b.increment("apples".into(), 2, &mut hlc_b)?;
    /// b.increment("apples".into(), -1, &mut hlc_b)?;
    /// a.merge(b);
    /// // Concurrent increments add up.
    /// assert_eq!(a.count("apples"), 4);
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`OrMap::update`]: [`Error::ClockOverflow`] or [`Error::InvalidDot`], with
    /// nothing changed.
    pub fn increment<S: TimeSource>(
        &mut self,
        key: K,
        amount: i64,
        hlc: &mut Hlc<S>,
    ) -> Result<Self> {
        self.update(key, hlc, |c, op| c.add(op, amount))
    }

    /// The counter's value at `key` (any borrowed form of the key type); 0 if absent.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// cart.increment("apples".into(), 3, &mut hlc)?;
    /// assert_eq!(cart.count("apples"), 3);
    /// assert_eq!(cart.count("pears"), 0);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn count<Q>(&self, key: &Q) -> i64
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).map_or(0, PnCounter::value)
    }
}
