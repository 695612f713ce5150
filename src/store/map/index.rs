//! The dot index (live dot -> entry) and the counter folds it resolves: finding,
//! copying and dropping the entries that hold given dots.

use super::*;

impl<K: Key, V: DotStore> OrMap<K, V> {
    /// Removes entries at `positions` (deferred removals), keeping the index right.
    pub(super) fn remove_positions(&mut self, mut positions: Vec<usize>) {
        positions.sort_unstable_by(|a, b| b.cmp(a));
        positions.dedup();
        for pos in positions {
            let last = self.entries.len() - 1;
            self.entries.swap_remove_index(pos);
            if pos != last && !self.index.is_empty() {
                let index = &mut self.index;
                self.entries[pos].for_each_dot(&mut |d| {
                    index.insert(d, pos);
                });
            }
        }
    }

    /// The positions of the entries holding a dot of `dots` (all of them dots this
    /// map has seen), in order. Few dots: found through the index. Many (a long
    /// absence, or keys rewritten often): a scan of the entries.
    pub(super) fn positions_holding(&self, dots: &CausalContext) -> Vec<usize> {
        let mut positions: Vec<usize> = if dots.dot_count() <= self.entries.len() as u64 {
            dots.dots()
                .filter_map(|d| self.index.get(&d).copied())
                .collect()
        } else {
            (0..self.entries.len())
                .filter(|&pos| {
                    let mut holds = false;
                    self.entries[pos].for_each_dot(&mut |d| holds |= dots.contains(d));
                    holds
                })
                .collect()
        };
        positions.sort_unstable();
        positions.dedup();
        positions
    }

    /// Copies the part of the entry at `pos` whose dots satisfy `keep` into `out`
    /// (entry and context); returns its size in items (0 if nothing is kept).
    pub(super) fn copy_part(
        &self,
        pos: usize,
        keep: &dyn Fn(Dot) -> bool,
        out: &mut Self,
    ) -> usize {
        let (k, v) = self.entries.get_index(pos).expect("position in range");
        // Whatever `out` already holds of the key (a part copied earlier in this
        // piece, a carried fold) stays: its dots are in `out.ctx` already.
        let mut have = Vec::new();
        if let Some(existing) = out.entries.get(k) {
            existing.for_each_dot(&mut |x| have.push(x));
        }
        have.sort_unstable();
        let part = v.filtered(&|d| keep(d) || have.binary_search(&d).is_ok());
        if part.is_bottom() {
            return 0;
        }
        part.for_each_dot(&mut |d| {
            out.ctx.insert(d);
        });
        let size = part.size().max(1);
        out.entries.insert(k.clone(), part);
        size
    }

    /// Adds to `ctx` the dots of `dots` no entry holds (dead here: a removal's own
    /// dot, say).
    pub(super) fn add_unheld(&self, dots: &CausalContext, ctx: &mut CausalContext) {
        for d in dots.dots().filter(|d| !self.index.contains_key(d)) {
            ctx.insert(d);
        }
    }

    /// Adds the live fold `fold` (held at `pos`) to `out`, beside what `out` holds of
    /// the same key; returns 1.
    pub(super) fn carry_fold(&self, fold: Dot, pos: usize, out: &mut Self) -> usize {
        let (k, v) = self.entries.get_index(pos).expect("position in range");
        let mut have = Vec::new();
        if let Some(existing) = out.entries.get(k) {
            existing.for_each_dot(&mut |x| have.push(x));
        }
        // Sorted: a hot counter's part may hold many segments.
        have.sort_unstable();
        let part = v.filtered(&|x| x == fold || have.binary_search(&x).is_ok());
        out.entries.insert(k.clone(), part);
        out.ctx.insert(fold);
        1
    }

    pub(super) fn rebuild_index(&mut self) {
        self.index.clear();
        let index = &mut self.index;
        for (pos, (_, v)) in self.entries.iter().enumerate() {
            v.for_each_dot(&mut |d| {
                index.insert(d, pos);
            });
        }
        if V::FOLDS {
            self.provs.clear();
            for v in self.entries.values() {
                Self::note_folds(&mut self.provs, v);
            }
        }
    }

    /// Records the folds `value` holds in `provs` (see [`OrMap::provs`]).
    pub(super) fn note_folds(provs: &mut DotMap<Dot>, value: &V) {
        value.for_each_fold(&mut |folded, fold| {
            provs.insert(folded, fold);
        });
    }

    /// The position of the live fold that folded `dot`, if any.
    pub(super) fn fold_of(&self, dot: Dot) -> Option<(Dot, usize)> {
        let fold = *self.provs.get(&dot)?;
        Some((fold, *self.index.get(&fold)?))
    }

    /// Makes a delta this map built name every fold that folded a dot it names: a
    /// peer that read a folded dot dead without the fold would take a removal for it
    /// and kill the fold when it arrives (see [`DotStore::fold`]). A dead fold goes
    /// along as its dot; a live one whole, or, with `carry` false (a chunk, whose
    /// size is budgeted), the folded dot is left out instead: it goes with the fold,
    /// which names it (see `seal`). Looked up from the smaller side: the delta's
    /// dots, or the folds held.
    pub(super) fn close_over_folds(&self, out: &mut Self, carry: bool) {
        if !V::FOLDS || self.provs.is_empty() {
            return;
        }
        let named: Vec<(Dot, Dot)> = if out.ctx.dot_count() <= self.provs.len() as u64 {
            out.ctx
                .dots()
                .filter_map(|d| self.provs.get(&d).map(|&f| (d, f)))
                .collect()
        } else {
            self.provs
                .iter()
                .filter(|(d, _)| out.ctx.contains(**d))
                .map(|(&d, &f)| (d, f))
                .collect()
        };
        let mut deferred = CausalContext::new();
        for (folded, fold) in named {
            if out.ctx.contains(fold) {
                continue;
            }
            match self.index.get(&fold) {
                Some(_) if !carry => {
                    deferred.insert(folded);
                }
                Some(&pos) => {
                    self.carry_fold(fold, pos, out);
                }
                None if self.ctx.contains(fold) => {
                    out.ctx.insert(fold);
                }
                None => {}
            }
        }
        if !deferred.is_empty() {
            out.ctx = out.ctx.minus(&deferred);
        }
    }
}
