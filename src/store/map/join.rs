//! The standalone join: index, removal log and notes maintained, concurrencies
//! reported. It must agree with the nested join ([`DotStore::join`] in `nested.rs`).

use super::*;

impl<K: Key, V: DotStore> OrMap<K, V> {
    /// The standalone join: index and removal log maintained, concurrencies reported.
    pub(super) fn merge_reporting<C: ConflictSink<K, V>>(
        &mut self,
        other: Self,
        sink: &mut C,
    ) -> Outcome {
        self.merge_logging(other, sink, &CausalContext::new())
    }

    /// [`OrMap::merge_reporting`] of a part of a received state whose writes `set_aside`
    /// were left out of it (and out of its context) by the containing merge. The
    /// removals it carries are logged with those writes in their trigger: a removal
    /// may be caused by a write set aside (a collapse that overwrote the siblings), and
    /// a peer that holds the dead dot alive must be told of it until it has the write
    /// that killed it, not merely the dead dot itself (it may well have that: it holds
    /// it alive).
    pub(super) fn merge_logging<C: ConflictSink<K, V>>(
        &mut self,
        other: Self,
        sink: &mut C,
        set_aside: &CausalContext,
    ) -> Outcome {
        // No shortcut on the contexts alone: a state built from deltas that arrived out
        // of order can hold an element its own context says was overwritten.
        let grew = !self.ctx.includes(&other.ctx);
        let behind = !other.ctx.includes(&self.ctx);
        let mut effect = JoinEffect::default();
        let OrMap {
            entries: their_entries,
            ctx: their_ctx,
            index: their_index,
            notes: their_notes,
            ..
        } = other;
        // Removals new here (their dot is), each marked if the value it meets holds
        // an element the removal would not take (one the remover had not seen, a
        // fold aside): an update made without seeing the removal (every message that
        // carries an element carries the removals its writer had seen, or the
        // receiver has them already), so a race to report if the key is still there
        // after the merge. The value met is copied once per key, whatever the number
        // of notes (at most `NOTE_CAP` in all and `NOTES_PER_KEY` of one key, checked
        // on receipt).
        let mut fresh: Vec<(RemovalNote<K>, bool)> = Vec::new();
        let mut met_values: HashMap<K, V> = HashMap::new();
        for n in their_notes.list {
            if self.ctx.contains(n.dot) {
                continue;
            }
            let met = C::ACTIVE
                && self
                    .entries
                    .get(&n.key)
                    .is_some_and(|v| crate::causal::survives_kill(v, &n.seen));
            if met && !met_values.contains_key(&n.key) {
                let ours = self.entries.get(&n.key).expect("met").clone();
                met_values.insert(n.key.clone(), ours);
            }
            fresh.push((n, met));
        }

        // Removals the other side carries, for the log (before anything changes). Its
        // live dots are its dot index (built once, when it was decoded or written).
        let enumerate = their_ctx.dot_count() <= LOG_ENUMERATE_LIMIT;
        let their_live = if enumerate {
            live_dots(&their_entries, their_index)
        } else {
            DotMap::default()
        };
        let mut newly_dead: Vec<Dot> = if enumerate {
            their_ctx
                .dots()
                .filter(|d| {
                    !their_live.contains_key(d)
                        && (!self.ctx.contains(*d) || self.index.contains_key(d))
                })
                .collect()
        } else {
            Vec::new()
        };

        let mut removed = Vec::new();
        let original_len = self.entries.len();
        // Positions of ours the other side sent (a list: a delta touches few). Sized
        // before the loop, so that a full state does not reallocate it again and again.
        let mut visited: Vec<usize> = Vec::with_capacity(their_entries.len().min(original_len));
        // Entries the other side sent: join them.
        let mut before = Vec::new();
        let mut theirs = Vec::new();
        let mut expected = 0;
        for (key, their_value) in their_entries {
            match self.position_near(&key, &mut expected) {
                Some(pos) => {
                    visited.push(pos);
                    let value = &mut self.entries[pos];
                    if value.same_dots(&their_value) {
                        continue;
                    }
                    before.clear();
                    value.for_each_dot(&mut |d| before.push(d));
                    theirs.clear();
                    their_value.for_each_dot(&mut |d| theirs.push(d));
                    before.sort_unstable();
                    theirs.sort_unstable();
                    let conflict = C::ACTIVE && value.races(&self.ctx, &their_value, &their_ctx);
                    let report = conflict.then(|| (value.clone(), their_value.clone()));
                    effect = effect.or(value.join(&self.ctx, their_value, &their_ctx));
                    if V::FOLDS {
                        // A fold may die without its dot in their context (see
                        // `DotStore::fold`): what left is what is no longer held.
                        let mut after = Vec::new();
                        value.for_each_dot(&mut |d| after.push(d));
                        after.sort_unstable();
                        for d in &before {
                            if after.binary_search(d).is_err() {
                                self.index.remove(d);
                                if enumerate && !their_ctx.contains(*d) {
                                    newly_dead.push(*d);
                                }
                            }
                        }
                        // And a fold of theirs refused on arrival: told on, so that
                        // a peer holding it learns it is gone.
                        for d in &theirs {
                            if enumerate
                                && !self.ctx.contains(*d)
                                && after.binary_search(d).is_err()
                            {
                                newly_dead.push(*d);
                            }
                        }
                        let provs = &mut self.provs;
                        value.for_each_fold(&mut |folded, fold| {
                            provs.insert(folded, fold);
                        });
                    } else {
                        for d in &before {
                            if their_ctx.contains(*d) && theirs.binary_search(d).is_err() {
                                self.index.remove(d);
                            }
                        }
                    }
                    let value = &mut self.entries[pos];
                    let index = &mut self.index;
                    value.for_each_dot(&mut |d| {
                        index.insert(d, pos);
                    });
                    if value.is_bottom() {
                        removed.push(pos);
                    }
                    if let Some((ours, theirs_value)) = report {
                        sink.report(crate::causal::Conflict {
                            key,
                            ours_clock: crate::causal::clock_of(&ours),
                            theirs_clock: crate::causal::clock_of(&theirs_value),
                            ours,
                            theirs: theirs_value,
                            resolved: value.clone(),
                        });
                    }
                }
                None => {
                    let mut value = V::default();
                    if V::FOLDS && enumerate {
                        // A fold of theirs refused on arrival (see above).
                        theirs.clear();
                        their_value.for_each_dot(&mut |d| theirs.push(d));
                    }
                    effect = effect.or(value.join(&self.ctx, their_value, &their_ctx));
                    if V::FOLDS && enumerate {
                        let mut after = Vec::new();
                        value.for_each_dot(&mut |d| after.push(d));
                        for d in &theirs {
                            if !self.ctx.contains(*d) && !after.contains(d) {
                                newly_dead.push(*d);
                            }
                        }
                    }
                    if !value.is_bottom() {
                        let pos = self.entries.len();
                        let index = &mut self.index;
                        value.for_each_dot(&mut |d| {
                            index.insert(d, pos);
                        });
                        if V::FOLDS {
                            Self::note_folds(&mut self.provs, &value);
                        }
                        self.entries.insert(key, value);
                    }
                }
            }
        }
        // Entries of ours the other side did not send: kill what it has seen. A small
        // context (a delta) is looked up through the dot index; a large one (a full
        // state) is checked against every entry it did not visit.
        visited.sort_unstable();
        let touched: Vec<usize> = if their_ctx.dot_count() <= original_len as u64 {
            let mut touched: Vec<usize> = their_ctx
                .dots()
                .filter_map(|d| {
                    // A dot folded here is reached through its fold.
                    (self.index.get(&d).copied()).or_else(|| self.fold_of(d).map(|(_, pos)| pos))
                })
                .filter(|&pos| pos < original_len && visited.binary_search(&pos).is_err())
                .collect();
            touched.sort_unstable();
            touched.dedup();
            touched
        } else {
            // Every position `visited` (sorted, each once) lacks, by walking the two
            // together (no second array the size of the map).
            let mut next = visited.iter().copied().peekable();
            (0..original_len)
                .filter(|&pos| {
                    if next.peek() == Some(&pos) {
                        next.next();
                        false
                    } else {
                        true
                    }
                })
                .collect()
        };
        let mut scratch = Vec::new();
        for pos in touched {
            let value = &mut self.entries[pos];
            scratch.clear();
            value.for_each_dot(&mut |d| scratch.push(d));
            let mut reached = scratch.iter().any(|d| their_ctx.contains(*d));
            if V::FOLDS && !reached {
                value.for_each_fold(&mut |folded, _| reached |= their_ctx.contains(folded));
            }
            if !reached {
                continue;
            }
            effect.killed |= value.kill(&their_ctx);
            if V::FOLDS {
                let mut after = Vec::new();
                value.for_each_dot(&mut |d| after.push(d));
                for d in &scratch {
                    if !after.contains(d) {
                        self.index.remove(d);
                        if enumerate && !their_ctx.contains(*d) {
                            newly_dead.push(*d);
                        }
                    }
                }
            } else {
                for d in &scratch {
                    if their_ctx.contains(*d) {
                        self.index.remove(d);
                    }
                }
            }
            if value.is_bottom() {
                removed.push(pos);
            }
        }
        self.remove_positions(removed);

        self.ctx.merge_ref(&their_ctx);
        if enumerate {
            // Told to a peer until it acknowledges the received context that killed
            // them (it then holds the writes or removals that did).
            let mut trigger = their_ctx;
            trigger.merge_ref(set_aside);
            self.log.push(Trigger::Ctx(trigger), newly_dead);
        } else {
            self.log.raise_floor(&their_ctx);
        }
        // The notes kept (one per key and remover, its newest), and of them the ones
        // that met an update.
        let mut met_seqs = Vec::new();
        for (note, met) in fresh {
            if let Some(seq) = self.notes.push(note) {
                if met {
                    met_seqs.push(seq);
                }
            }
        }
        // One report per key: a delete-vs-update race, the removal the empty value,
        // with the removers' histories (each one's own dot the newest of its replica).
        // A removal that another kept one had seen, and that met an update the other
        // met too, is told by that one (now, or when it arrived); one whose update the
        // other had seen (possible only after deltas merged out of order) is told.
        let mut racing: IndexMap<K, crate::clock::VectorClock> = IndexMap::new();
        for seq in met_seqs {
            if let Some(pos) = self.notes.position(seq) {
                let note = &self.notes.list[pos];
                let ours = met_values.get(&note.key).expect("met");
                if self.notes.superseded(note, |other| {
                    crate::causal::survives_kill(ours, &other.seen)
                }) {
                    continue;
                }
                let clock = note.seen.max_clock();
                match racing.get_mut(&note.key) {
                    Some(joined) => {
                        joined.merge(clock);
                    }
                    None => {
                        racing.insert(note.key.clone(), clock);
                    }
                }
            }
        }
        for (key, theirs_clock) in racing {
            if let (Some(ours), Some(resolved)) = (met_values.remove(&key), self.entries.get(&key))
            {
                sink.report(crate::causal::Conflict {
                    key,
                    ours_clock: crate::causal::clock_of(&ours),
                    theirs_clock,
                    ours,
                    theirs: V::default(),
                    resolved: resolved.clone(),
                });
            }
        }
        Outcome::from_flags(grew || effect.killed, behind || effect.discarded)
    }
}

impl<K: Key, V> OrMap<K, V> {
    /// The position of `key`, looked for first at `expected`, which then moves past
    /// it. Replicas that share a history (forked from one state, or one bootstrapped
    /// from the other's full state, which lists its keys in order) mostly list their
    /// keys in one order, so walking the other's keys in turn finds most of them
    /// where expected with one comparison instead of a lookup at a random place of
    /// the hash table (about half the time of a full-state join of 100,000 keys).
    pub(super) fn position_near(&self, key: &K, expected: &mut usize) -> Option<usize> {
        let pos = match self.entries.get_index(*expected) {
            Some((ours, _)) if ours == key => Some(*expected),
            _ => self.entries.get_index_of(key),
        };
        if let Some(pos) = pos {
            *expected = pos + 1;
        }
        pos
    }
}

/// The dots held by `entries`, as the keys of a map: `index` itself when it indexes
/// exactly those (every standalone map keeps it so; `try_merge_containing` leaves it
/// holding set-aside dots too), else collected afresh.
pub(super) fn live_dots<K, V: DotStore>(
    entries: &Entries<K, V>,
    index: DotMap<usize>,
) -> DotMap<usize> {
    let mut count = 0usize;
    let mut indexed = true;
    for v in entries.values() {
        v.for_each_dot(&mut |d| {
            count += 1;
            indexed &= index.contains_key(&d);
        });
    }
    if indexed && count == index.len() {
        return index;
    }
    let mut live = DotMap::default();
    for v in entries.values() {
        v.for_each_dot(&mut |d| {
            live.insert(d, 0);
        });
    }
    live
}
