//! Writing a map: updates, removals (standalone and inside a parent's update).

use super::*;

impl<K: Key, V: DotStore> OrMap<K, V> {
    /// Updates the value at `key` (starting from an empty value if absent) as `hlc`'s
    /// replica, and returns the delta to ship to peers.
    ///
    /// `f` receives the value and the write's [`Op`]; it calls the value's own in-op
    /// methods (`assign`, `add`, or a nested map's `update_in`/`remove_in`).
    /// If the value ends up empty the key is removed.
    ///
    /// ```
    /// use concord::{Hlc, LwwRegister, ManualClock, OrMap, ReplicaId, Resolver};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut settings: OrMap<String, LwwRegister<u32>> = OrMap::new();
    /// let delta = settings.update("volume".into(), &mut hlc, |reg, op| reg.assign(op, 7))?;
    /// assert_eq!(delta.value("volume"), Some(&7));
    ///
    /// // A peer that merges the delta holds the same state.
    /// let mut peer = OrMap::new();
    /// peer.merge(delta);
    /// assert_eq!(peer, settings);
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Nothing is changed on error:
    ///
    /// * [`Error::ClockOverflow`] if `hlc`'s logical counter is exhausted within the
    ///   current millisecond (it works again once wall time moves on);
    /// * [`Error::InvalidDot`] if this replica has issued the largest event counter
    ///   allowed ([`MAX_COUNTER`](crate::causal::MAX_COUNTER));
    /// * [`Error::Unencodable`] if `key` cannot travel (it does not serialize, or holds
    ///   a NaN or infinite float).
    ///
    /// One more error comes after `f` ran: [`Error::Unencodable`] if `f` offered a
    /// value or a nested key that cannot travel (see [`Op::check`]). That value is
    /// not stored; whatever else `f` did stands, as a write of its own.
    ///
    /// ```
    /// use concord::{Error, Hlc, LwwRegister, ManualClock, OrMap, ReplicaId, Timestamp};
    ///
    /// let time = ManualClock::new(1_000);
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// // A peer's timestamp at the logical counter's limit leaves no room this millisecond.
    /// hlc.observe(&Timestamp::new(1_000, u32::MAX, ReplicaId::from_u128(2)))?;
    ///
    /// let mut settings: OrMap<String, LwwRegister<u32>> = OrMap::new();
    /// let refused = settings.update("volume".into(), &mut hlc, |reg, op| reg.assign(op, 7));
    /// assert_eq!(refused.unwrap_err(), Error::ClockOverflow);
    /// assert!(settings.is_empty());
    ///
    /// time.advance(1);
    /// settings.update("volume".into(), &mut hlc, |reg, op| reg.assign(op, 7))?;
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn update<S: TimeSource>(
        &mut self,
        key: K,
        hlc: &mut Hlc<S>,
        f: impl FnOnce(&mut V, &Op),
    ) -> Result<Self> {
        crate::probe::check_key(&key)?;
        let op = next_op(&self.ctx, hlc)?;
        let delta = self.mutate(key, &op, f, true).unwrap_or_default();
        match op.refusal() {
            Some(e) => Err(e),
            None => Ok(delta),
        }
    }

    /// [`OrMap::update`] without building a delta: for replicas that replicate with
    /// [`delta_since`](Crdt::delta_since) (as the sync engine does) rather than by
    /// shipping each write's delta. Returns the write's dot.
    ///
    /// ```
    /// use concord::{Crdt, Hlc, ManualClock, OrMap, PnCounter, ReplicaId, Resolver, VectorClock};
    ///
    /// let a = ReplicaId::from_u128(1);
    /// let mut hlc = Hlc::new(a, ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// let dot = cart.apply("apples".into(), &mut hlc, |c, op| c.add(op, 2))?;
    /// assert_eq!((dot.replica(), dot.counter()), (a, 1));
    ///
    /// // A peer that has seen nothing catches up through `delta_since`.
    /// let mut peer = OrMap::new();
    /// peer.merge(cart.delta_since(&VectorClock::new()));
    /// assert_eq!(peer.count("apples"), 2);
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Nothing is changed on error:
    ///
    /// * [`Error::ClockOverflow`] if `hlc`'s logical counter is exhausted within the
    ///   current millisecond (it works again once wall time moves on);
    /// * [`Error::InvalidDot`] if this replica has issued the largest event counter
    ///   allowed ([`MAX_COUNTER`](crate::causal::MAX_COUNTER));
    /// * [`Error::Unencodable`] if `key` cannot travel, with nothing changed, or, after
    ///   `f` ran, if `f` offered a value or a nested key that cannot travel: as for
    ///   [`OrMap::update`], that value is not stored and the rest of the write stands.
    pub fn apply<S: TimeSource>(
        &mut self,
        key: K,
        hlc: &mut Hlc<S>,
        f: impl FnOnce(&mut V, &Op),
    ) -> Result<Dot> {
        crate::probe::check_key(&key)?;
        let op = next_op(&self.ctx, hlc)?;
        self.mutate(key, &op, f, false);
        match op.refusal() {
            Some(e) => Err(e),
            None => Ok(op.dot()),
        }
    }

    pub(super) fn mutate(
        &mut self,
        key: K,
        op: &Op,
        f: impl FnOnce(&mut V, &Op),
        want_delta: bool,
    ) -> Option<Self> {
        let dot = op.dot();
        let entry = self.entries.entry(key);
        let pos = entry.index();
        let value = entry.or_default();
        let mut before = std::mem::take(&mut self.scratch);
        before.clear();
        value.for_each_dot(&mut |d| before.push(d));
        let split = before.len();
        f(value, op);
        let mut fold_pending = false;
        if V::FOLDS {
            let me = dot.replica();
            if !self.folding.stable.is_empty() {
                value.fold(op, &self.folding.stable);
            }
            fold_pending = value.foldable(me, &CausalContext::new()).0 > 1;
        }
        value.for_each_dot(&mut |d| before.push(d));
        let (old, new) = before.split_at_mut(split);
        let delta_value = want_delta.then(|| value.filtered(&|d| op.issued(d)));
        let bottom = value.is_bottom();

        // Sorted, so a value with many elements (a busy counter's segments) is
        // compared in O(n log n), not O(n^2).
        old.sort_unstable();
        new.sort_unstable();
        let mut dead = Vec::new();
        for d in old.iter().filter(|d| new.binary_search(d).is_err()) {
            self.index.remove(d);
            dead.push(*d);
        }
        for d in new.iter().filter(|d| old.binary_search(d).is_err()) {
            self.index.insert(*d, pos);
        }
        self.scratch = before;
        if V::FOLDS {
            let value = &self.entries[pos];
            let provs = &mut self.provs;
            value.for_each_fold(&mut |folded, fold| {
                if op.issued(fold) {
                    provs.insert(folded, fold);
                }
            });
        }
        let delta = delta_value.map(|delta_value| {
            let mut delta = OrMap::new();
            op.record(&mut delta.ctx);
            for d in &dead {
                delta.ctx.insert(*d);
            }
            if !delta_value.is_bottom() {
                let key = self.entries.get_index(pos).expect("present").0.clone();
                delta.entries.insert(key, delta_value);
            }
            delta.seal();
            delta
        });
        if fold_pending && !bottom {
            let key = self.entries.get_index(pos).expect("present").0;
            if !self.folding.pending.contains(key) {
                self.folding.pending.insert(key.clone());
            }
        }
        let removed_key = (bottom && !dead.is_empty())
            .then(|| self.entries.get_index(pos).expect("present").0.clone());
        if bottom {
            self.remove_positions(vec![pos]);
        }
        op.record(&mut self.ctx);
        if !dead.is_empty() {
            self.log.push(
                Trigger::Dot(Dot::new(dot.replica(), op.last_counter())),
                dead,
            );
        }
        let mut delta = delta;
        if let Some(key) = removed_key {
            // A write that left the value empty removed the key.
            self.note_removal(dot, key, delta.as_mut());
        }
        delta
    }

    /// Keeps (and adds to `delta`, if any) the note of a removal of `key` made here by
    /// the write whose dot is `dot`, just recorded in the context.
    pub(super) fn note_removal(&mut self, dot: Dot, key: K, delta: Option<&mut Self>) {
        let note = RemovalNote {
            dot,
            key,
            seen: self.ctx.clone(),
            seq: 0,
        };
        if let Some(delta) = delta {
            delta.notes.push(note.clone());
        }
        self.notes.push(note);
    }

    /// Removes `key` (any borrowed form of the key type) as `hlc`'s replica and
    /// returns the delta. Removes what this replica has seen of the key; a concurrent
    /// update elsewhere survives. Removing an absent key changes nothing and returns an
    /// empty delta.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId, Resolver};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// cart.increment("apples".into(), 3, &mut hlc)?;
    /// let mut peer = cart.clone();
    ///
    /// let removal = cart.remove("apples", &mut hlc)?;
    /// assert!(!cart.contains_key("apples"));
    /// // The delta carries the removal to peers.
    /// peer.merge(removal);
    /// assert_eq!(peer, cart);
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Nothing is changed on error (an absent key is not an error):
    ///
    /// * [`Error::ClockOverflow`] if `hlc`'s logical counter is exhausted within the
    ///   current millisecond (it works again once wall time moves on);
    /// * [`Error::InvalidDot`] if this replica has issued the largest event counter
    ///   allowed ([`MAX_COUNTER`](crate::causal::MAX_COUNTER)).
    pub fn remove<Q, S: TimeSource>(&mut self, key: &Q, hlc: &mut Hlc<S>) -> Result<Self>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(pos) = self.entries.get_index_of(key) else {
            return Ok(OrMap::new());
        };
        let op = next_op(&self.ctx, hlc)?;
        let mut dead = Vec::new();
        self.entries[pos].for_each_dot(&mut |d| dead.push(d));
        let mut delta = OrMap::new();
        op.record(&mut delta.ctx);
        for &d in &dead {
            delta.ctx.insert(d);
            self.index.remove(&d);
        }
        delta.seal();
        let key = self.entries.get_index(pos).expect("present").0.clone();
        self.remove_positions(vec![pos]);
        op.record(&mut self.ctx);
        if !dead.is_empty() {
            self.log.push(Trigger::Dot(op.dot()), dead);
        }
        self.note_removal(op.dot(), key, Some(&mut delta));
        Ok(delta)
    }

    /// Inside a parent map's update: updates the value at `key` with the parent's op
    /// (starting from an empty value if absent; a value left empty is removed).
    ///
    /// ```
    /// use concord::{Hlc, LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut users: OrMap<String, OrMap<String, LwwRegister<String>>> = OrMap::new();
    /// // One write sets two fields of a nested map.
    /// users.update("alice".into(), &mut hlc, |fields, op| {
    ///     fields.update_in(op, "name".into(), |r, op| r.assign(op, "Alice".into()));
    ///     fields.update_in(op, "city".into(), |r, op| r.assign(op, "Lisbon".into()));
    /// })?;
    /// let alice = users.get("alice").unwrap();
    /// assert_eq!(alice.value("city").map(String::as_str), Some("Lisbon"));
    /// assert_eq!(alice.len(), 2);
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// A key that cannot travel (one holding a NaN, say) is not written, and the
    /// write fails with [`Error::Unencodable`] (see [`Op::check`]).
    pub fn update_in(&mut self, op: &Op, key: K, f: impl FnOnce(&mut V, &Op)) {
        if !op.check(&key) {
            return;
        }
        let entry = self.entries.entry(key);
        let pos = entry.index();
        let value = entry.or_default();
        f(value, op);
        if value.is_bottom() {
            self.entries.swap_remove_index(pos);
        }
    }

    /// Inside a parent map's update: removes `key` (any borrowed form of the key type),
    /// everything the replica has seen of it.
    ///
    /// ```
    /// use concord::{Hlc, LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut users: OrMap<String, OrMap<String, LwwRegister<String>>> = OrMap::new();
    /// users.update("alice".into(), &mut hlc, |fields, op| {
    ///     fields.update_in(op, "name".into(), |r, op| r.assign(op, "Alice".into()));
    ///     fields.update_in(op, "city".into(), |r, op| r.assign(op, "Lisbon".into()));
    /// })?;
    /// // One write drops a field and changes another.
    /// users.update("alice".into(), &mut hlc, |fields, op| {
    ///     fields.remove_in("city");
    ///     fields.update_in(op, "name".into(), |r, op| r.assign(op, "Alicia".into()));
    /// })?;
    /// let alice = users.get("alice").unwrap();
    /// assert!(!alice.contains_key("city"));
    /// assert_eq!(alice.value("name").map(String::as_str), Some("Alicia"));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn remove_in<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.swap_remove(key);
    }
}
