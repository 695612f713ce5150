//! Hot keys: keys whose received writes the engine set aside rather than exceed the
//! sibling cap, and how they heal.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::causal::SetAside;
use crate::clock::CausalContext;
use crate::id::ReplicaId;
use crate::resolver::Resolver;

/// A key held *contained*: deltas from peers would have left more concurrent siblings
/// in it than [`Limits::max_siblings`](crate::Limits::max_siblings), so the engine
/// took everything else those deltas carried and set this key's new writes aside.
///
/// Reads of the key show what this replica held before (or a part of the writes,
/// whatever fitted under the cap). The writes set aside are not lost: this replica
/// does not claim to have seen them, so their senders offer them again, and once a
/// write that saw the siblings has collapsed the key (at any replica, for example
/// with [`OrMap::collapse`](crate::OrMap::collapse)) they fit, are taken, and the key
/// heals by itself: it leaves [`SyncEngine::hot_keys`](super::SyncEngine::hot_keys).
/// Each key set aside is also reported in
/// [`Received::hot_keys`](super::Received::hot_keys) and counted in
/// [`Metrics::contained_hot_keys`](super::Metrics::contained_hot_keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotKey<K> {
    /// The key.
    pub key: K,
    /// The peers whose deltas for it were set aside, in id order.
    pub from: Vec<ReplicaId>,
    /// The most siblings one of those deltas would have left in it.
    pub siblings: usize,
    /// The writes to it (their dots) set aside and not taken yet.
    pub set_aside: CausalContext,
    /// When it was first set aside, in milliseconds of the engine's time source.
    pub since_ms: u64,
}

/// One contained key's bookkeeping.
#[derive(Clone, Debug)]
struct Record {
    from: Vec<ReplicaId>,
    siblings: usize,
    /// The dots set aside that this replica has still not seen.
    dots: CausalContext,
    since_ms: u64,
}

/// The keys an engine holds contained.
#[derive(Clone, Debug)]
pub(crate) struct HotKeys<K> {
    records: BTreeMap<K, Record>,
    /// Dots held in `records` (bounded by `Config::max_set_aside`).
    pending: u64,
}

impl<K> Default for HotKeys<K> {
    fn default() -> Self {
        HotKeys {
            records: BTreeMap::new(),
            pending: 0,
        }
    }
}

impl<K: Ord + Clone> HotKeys<K> {
    /// Dots set aside and not seen yet, over every key.
    pub(crate) fn pending(&self) -> u64 {
        self.pending
    }

    /// How many keys are contained.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Records what one merge set aside from `from`; returns a report for each key
    /// that was not contained yet or had writes set aside that it had not (a resend
    /// of writes already set aside is not reported again).
    pub(crate) fn record(
        &mut self,
        set_aside: Vec<SetAside<K>>,
        from: ReplicaId,
        now_ms: u64,
    ) -> Vec<HotKey<K>> {
        let mut reports = Vec::new();
        for aside in set_aside {
            let key = aside.key.clone();
            let record = self.records.entry(aside.key).or_insert_with(|| Record {
                from: Vec::new(),
                siblings: 0,
                dots: CausalContext::new(),
                since_ms: now_ms,
            });
            let news = !record.dots.includes(&aside.dots);
            if let Err(pos) = record.from.binary_search(&from) {
                record.from.insert(pos, from);
            }
            record.siblings = record.siblings.max(aside.siblings);
            self.pending -= record.dots.dot_count();
            record.dots.merge_ref(&aside.dots);
            self.pending += record.dots.dot_count();
            if news {
                reports.push(HotKey {
                    key,
                    from: vec![from],
                    siblings: aside.siblings,
                    set_aside: aside.dots,
                    since_ms: now_ms,
                });
            }
        }
        reports
    }

    /// Forgets the writes `seen` now covers; returns how many keys healed (every write
    /// set aside for them has been taken, or superseded by one that was).
    pub(crate) fn heal(&mut self, seen: &CausalContext) -> usize {
        self.narrow(|dots| dots.minus(seen))
    }

    /// Forgets set-aside writes no peer holds (`held`: the union of what the peers'
    /// current boots acknowledged): they were lost in a crash and will never be
    /// offered again. Returns how many keys that left with nothing set aside.
    pub(crate) fn forget_unheld(&mut self, held: &CausalContext) -> usize {
        self.narrow(|dots| dots.intersection(held))
    }

    /// Replaces each key's set-aside writes by `keep` of them; drops the keys left
    /// with none and returns how many.
    fn narrow(&mut self, keep: impl Fn(&CausalContext) -> CausalContext) -> usize {
        let before = self.records.len();
        let mut pending = 0;
        self.records.retain(|_, record| {
            record.dots = keep(&record.dots);
            pending += record.dots.dot_count();
            !record.dots.is_empty()
        });
        self.pending = pending;
        before - self.records.len()
    }

    /// The contained keys, in key order.
    pub(crate) fn list(&self) -> Vec<HotKey<K>> {
        self.records
            .iter()
            .map(|(key, r)| HotKey {
                key: key.clone(),
                from: r.from.clone(),
                siblings: r.siblings,
                set_aside: r.dots.clone(),
                since_ms: r.since_ms,
            })
            .collect()
    }
}
