//! A map as the value of another map: a dot store sharing its parent's context.

use super::*;

impl<K: Key, V: DotStore> DotStore for OrMap<K, V> {
    type Encoded<'a>
        = EncodedEntries<'a, K, V>
    where
        Self: 'a;
    type Decoded = DecodedEntries<K, V::Decoded>;

    fn is_bottom(&self) -> bool {
        self.entries.is_empty()
    }

    fn for_each_dot(&self, f: &mut dyn FnMut(Dot)) {
        for v in self.entries.values() {
            v.for_each_dot(f);
        }
    }

    fn join(&mut self, ctx: &CausalContext, other: Self, other_ctx: &CausalContext) -> JoinEffect {
        let mut effect = JoinEffect::default();
        let their_entries = other.entries;
        self.entries.retain(|k, v| {
            if !their_entries.contains_key(k) {
                effect.killed |= v.kill(other_ctx);
            }
            !v.is_bottom()
        });
        for (k, their_value) in their_entries {
            match self.entries.get_index_of(&k) {
                Some(pos) => {
                    let value = &mut self.entries[pos];
                    effect = effect.or(value.join(ctx, their_value, other_ctx));
                    if value.is_bottom() {
                        self.entries.swap_remove_index(pos);
                    }
                }
                None => {
                    let mut value = V::default();
                    effect = effect.or(value.join(ctx, their_value, other_ctx));
                    if !value.is_bottom() {
                        self.entries.insert(k, value);
                    }
                }
            }
        }
        effect
    }

    fn kill(&mut self, ctx: &CausalContext) -> bool {
        let mut killed = false;
        self.entries.retain(|_, v| {
            killed |= v.kill(ctx);
            !v.is_bottom()
        });
        killed
    }

    fn filtered(&self, keep: &dyn Fn(Dot) -> bool) -> Self {
        let mut out = OrMap::new();
        for (k, v) in &self.entries {
            let part = v.filtered(keep);
            if !part.is_bottom() {
                out.entries.insert(k.clone(), part);
            }
        }
        out
    }

    fn same_dots(&self, other: &Self) -> bool {
        // Key by key, so that each value compares what its own join merges between
        // two forms of one element (a counter's fold provenance).
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .all(|(k, v)| other.entries.get(k).is_some_and(|o| v.same_dots(o)))
    }

    fn joined_siblings(
        &self,
        ctx: &CausalContext,
        other: &Self,
        other_ctx: &CausalContext,
    ) -> usize {
        let empty = V::default();
        let mut expected = 0;
        other
            .entries
            .iter()
            .map(|(k, theirs)| {
                let pos = self.position_near(k, &mut expected);
                pos.map_or(&empty, |pos| &self.entries[pos])
                    .joined_siblings(ctx, theirs, other_ctx)
            })
            .max()
            .unwrap_or(0)
    }

    fn size(&self) -> usize {
        self.entries.values().map(|v| 1 + v.size()).sum()
    }

    fn max_timestamp(&self) -> Option<Timestamp> {
        self.entries
            .values()
            .filter_map(DotStore::max_timestamp)
            .max()
    }

    fn races(&self, ctx: &CausalContext, other: &Self, other_ctx: &CausalContext) -> bool {
        // A race is a key both sides changed unseen by the other; a key only one side
        // touched (a delta carries only what changed) is none.
        other.entries.iter().any(|(k, theirs)| {
            self.entries
                .get(k)
                .is_some_and(|ours| ours.races(ctx, theirs, other_ctx))
        })
    }

    const FOLDS: bool = V::FOLDS;

    fn binary_faithful() -> bool {
        crate::wire::faithful_scalar::<K>() && V::binary_faithful()
    }

    fn for_each_fold(&self, f: &mut dyn FnMut(Dot, Dot)) {
        if V::FOLDS {
            for v in self.entries.values() {
                v.for_each_fold(f);
            }
        }
    }

    fn fold(&mut self, op: &Op, stable: &CausalContext) {
        if V::FOLDS {
            for v in self.entries.values_mut() {
                v.fold(op, stable);
            }
        }
    }

    fn foldable(&self, me: ReplicaId, stable: &CausalContext) -> (usize, usize) {
        if !V::FOLDS {
            return (0, 0);
        }
        self.entries
            .values()
            .map(|v| v.foldable(me, stable))
            .fold((0, 0), |(a, b), (c, d)| (a.max(c), b.max(d)))
    }

    fn encode<'a>(&'a self, table: &mut ReplicaTable) -> Self::Encoded<'a> {
        self.encode_entries(table)
    }

    fn decode(decoded: Self::Decoded, replicas: &[ReplicaId]) -> Result<Self> {
        Ok(OrMap {
            entries: Self::decode_entries(decoded, replicas)?,
            ..OrMap::default()
        })
    }
}
