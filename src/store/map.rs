//! [`OrMap`]: an observed-remove map whose values are replicated types themselves.
//!
//! Keys map to any dot store of the library: registers, counters, or maps again, to
//! any depth. The semantics:
//!
//! * **Update wins** over a concurrent remove: a key removed at one replica while
//!   another updates it is present after the merge.
//! * **No resurrection**: the removal still takes away everything the remover had
//!   seen. A counter removed at A while B adds 1 reads 1, not its old value plus 1; a
//!   nested map keeps only the entries written concurrently with the removal.
//! * **No tombstones**: a removed key leaves nothing in the map. The causal context
//!   remembers the dots (as ranges that compact to a version vector), and a short log
//!   of recent removals, pruned as peers acknowledge them, lets
//!   [`delta_since`](crate::Crdt::delta_since) tell a peer what was removed without
//!   scanning the map.
//!
//! Lookups take any borrowed form of the key, as with `HashMap` (`get("apples")` on
//! a map keyed by `String`). [`OrMap::iter`], [`OrMap::keys`] and [`OrMap::values`]
//! walk the entries in this replica's storage order, without allocating; that order
//! differs between replicas holding the same state, so use [`OrMap::iter_sorted`]
//! (key order, the same everywhere) where the order shows.
//!
//! ```
//! use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId, Resolver};
//!
//! let time = ManualClock::new(0);
//! let mut a_clock = Hlc::new(ReplicaId::from_u128(1), time.clone());
//! let mut b_clock = Hlc::new(ReplicaId::from_u128(2), time.clone());
//!
//! // A shopping cart: product -> quantity.
//! let mut a: OrMap<String, PnCounter> = OrMap::new();
//! a.increment("apples".to_string(), 5, &mut a_clock)?;
//! let mut b = a.clone();
//!
//! // A removes the line while B, concurrently, adds one more.
//! a.remove("apples", &mut a_clock)?;
//! b.increment("apples".to_string(), 1, &mut b_clock)?;
//!
//! a.merge(b.clone());
//! b.merge(a.clone());
//! assert_eq!(a, b);
//! // The update survives the removal, without the 5 the remover had seen.
//! assert_eq!(a.get("apples").map(PnCounter::value), Some(1));
//! # Ok::<(), concord::Error>(())
//! ```

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::iter::FusedIterator;

use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize};

use crate::causal::{
    encode_context, ChunkCursor, ConflictSink, Crdt, Data, DecodedContext, DotMap, DotSet,
    DotStore, EncodedContext, JoinEffect, Limits, Op, ReplicaTable, SetAside,
};
use crate::clock::CausalContext;
use crate::counter::PnCounter;
use crate::dotfun::next_op;
use crate::error::{Error, Result};
use crate::hlc::{Hlc, TimeSource, Timestamp};
use crate::id::{Dot, ReplicaId};
use crate::lww::LwwRegister;
use crate::mvreg::{MergeFn, MvRegister};
use crate::resolver::{Outcome, Resolver};

/// What a map key must be: hashable, ordered (for a canonical iteration and wire
/// order), cloneable and serializable.
///
/// Any serde type will do: strings, integers, tuples, structs, enums with data. A
/// write refuses (with [`Error::Unencodable`], before anything changes) only a key
/// whose `Serialize` fails or that holds a NaN or infinite float, which JSON cannot
/// carry.
///
/// On the wire, a map whose keys all serialize as JSON strings or integers
/// (`String`, integers, newtypes of them, unit enum variants) is a JSON object, as it
/// always was. A map holding any other key (a tuple, a struct, an enum variant with
/// data, a bool, a float) is an array of `[key, value]` pairs instead, for that
/// message or snapshot only. Every release that takes such keys reads both forms; a
/// peer on an older release (one that refuses tuple keys at the write) reads only the
/// object form and refuses a pair-form message with a decoding error, so write keys
/// of other shapes only once every peer runs a release that takes them.
///
/// ```
/// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
///
/// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
/// // Stock per (warehouse, product).
/// let mut stock: OrMap<(u16, String), PnCounter> = OrMap::new();
/// stock.increment((7, "apples".into()), 30, &mut hlc)?;
/// let json = serde_json::to_string(&stock)?;
/// assert!(json.contains(r#"[[7,"apples"],"#), "{json}"); // a [key, value] pair
/// let back: OrMap<(u16, String), PnCounter> = serde_json::from_str(&json)?;
/// assert_eq!(back, stock);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Key: Clone + Eq + Hash + Ord + fmt::Debug + Serialize + DeserializeOwned {}

impl<T: Clone + Eq + Hash + Ord + fmt::Debug + Serialize + DeserializeOwned> Key for T {}

/// How many dead dots the removal log keeps before it folds its oldest entries into a
/// floor (peers behind the floor are sent the full state instead of a delta).
const LOG_CAP: usize = 1 << 16;

/// How many dots a received context may hold for the merge to list the removals it
/// carries; a larger one (a full state) raises the log's floor instead.
const LOG_ENUMERATE_LIMIT: u64 = 1 << 16;

/// Recent removals: which dots died, and the clock a peer must have reached to know it.
#[derive(Clone, Debug, Default)]
struct RemovalLog {
    /// `(trigger, dead dots)`: a peer whose clock does not cover `trigger` may still
    /// hold the dots alive and must be told.
    entries: VecDeque<(u64, CausalContext, Vec<Dot>)>,
    /// The sequence number of the next entry (a chunked catch-up walks the log by it).
    next_seq: u64,
    /// Removals older than this were forgotten: a peer below it gets the full state.
    floor: CausalContext,
    /// Dead dots held in `entries`.
    dots: usize,
}

impl RemovalLog {
    fn push(&mut self, trigger: CausalContext, dead: Vec<Dot>) {
        if dead.is_empty() {
            return;
        }
        self.dots += dead.len();
        self.entries.push_back((self.next_seq, trigger, dead));
        self.next_seq += 1;
        while self.dots > LOG_CAP {
            let Some((_, trigger, dead)) = self.entries.pop_front() else {
                break;
            };
            self.dots -= dead.len();
            self.floor.merge(trigger);
        }
    }

    fn raise_floor(&mut self, seen: &CausalContext) {
        self.floor.merge_ref(seen);
    }

    /// Forgets the removals every peer has acknowledged. The floor rises to cover
    /// them, so a peer that later comes back from an older snapshot, below what it had
    /// acknowledged, is sent the full state rather than a delta missing them.
    fn prune(&mut self, stable: &CausalContext) {
        let floor = &mut self.floor;
        let mut dropped = 0;
        self.entries.retain(|(_, trigger, dead)| {
            let keep = !stable.includes(trigger);
            if !keep {
                floor.merge_ref(trigger);
                dropped += dead.len();
            }
            keep
        });
        self.dots -= dropped;
    }
}

/// How many removal notes a map keeps (see [`RemovalNote`]); past it, the first kept
/// are forgotten (their removals still apply; a replica that learns of one only after
/// that is not told it raced). A received map holding more is refused.
const NOTE_CAP: usize = 1 << 12;

/// How many removal notes of one key a map keeps (one per remover at most: concurrent
/// removals of the key by different replicas); past it, the key's first kept are
/// forgotten, as for [`NOTE_CAP`]. A received map holding more is refused.
const NOTES_PER_KEY: usize = 64;

/// How many context ranges the kept removal notes may hold in all; past it, the oldest
/// notes are forgotten, as for [`NOTE_CAP`].
const NOTE_RANGES_CAP: usize = 1 << 16;

/// A removal of a key, told to every replica until all have acknowledged it: the
/// removal's own dot (no element ever holds it), the key, and the remover's causal
/// context when it removed the key. A replica that learns of the removal (its dot is
/// new to it) while it holds an element of the key that the remover had not seen
/// holds an update made without seeing the removal: a delete-vs-update race, which it
/// reports. Notes are bookkeeping, not state: they take no part in equality, and are
/// pruned at causal stability like the removal log.
#[derive(Clone, Debug)]
struct RemovalNote<K> {
    dot: Dot,
    key: K,
    seen: CausalContext,
    /// Its place in this replica's list (a chunked catch-up walks the list by it);
    /// not sent.
    seq: u64,
}

/// The removal notes a standalone map keeps, oldest first (see [`RemovalNote`]). A
/// note of a removal whose context holds an earlier note's removal of the same key
/// supersedes it: a replica holding an update that raced the earlier removal but not
/// the later one has it taken by the later removal (nothing survives to report), and
/// one that learns of both at once is told once, of the later. A replica's context
/// holds all its own earlier dots, so of one replica's removals of a key only the
/// newest note is kept (a note of the same replica and key that neither holds nor is
/// held by the kept one comes from no honest replica and is dropped): a key removed
/// again and again keeps one note per concurrent remover, and at most
/// [`NOTES_PER_KEY`].
#[derive(Clone, Debug)]
struct Notes<K> {
    list: VecDeque<RemovalNote<K>>,
    /// Context ranges held by the notes' contexts.
    ranges: usize,
    /// The sequence number of the next note.
    next_seq: u64,
    /// The sequence numbers of each key's notes.
    by_key: HashMap<K, Vec<u64>>,
}

impl<K> Default for Notes<K> {
    fn default() -> Self {
        Notes {
            list: VecDeque::new(),
            ranges: 0,
            next_seq: 0,
            by_key: HashMap::new(),
        }
    }
}

impl<K: Key> Notes<K> {
    /// The position of the note numbered `seq`, if still held.
    fn position(&self, seq: u64) -> Option<usize> {
        let pos = self.list.partition_point(|n| n.seq < seq);
        (self.list.get(pos).is_some_and(|n| n.seq == seq)).then_some(pos)
    }

    /// True if a held note of the same key supersedes `note` (its removal had seen
    /// `note`'s).
    fn superseded(&self, note: &RemovalNote<K>) -> bool {
        self.by_key.get(&note.key).is_some_and(|seqs| {
            seqs.iter().any(|&seq| {
                self.position(seq)
                    .is_some_and(|pos| self.list[pos].seen.contains(note.dot))
            })
        })
    }

    /// Keeps `note` unless a held one supersedes it (or is one of the same replica
    /// that neither holds nor is held by it), dropping those it supersedes and, past
    /// the caps, the oldest. Returns its sequence number if kept.
    fn push(&mut self, mut note: RemovalNote<K>) -> Option<u64> {
        if self.superseded(&note) {
            return None;
        }
        if let Some(seqs) = self.by_key.get_mut(&note.key) {
            let same_replica = seqs.iter().any(|&seq| {
                let pos = self.list.partition_point(|n| n.seq < seq);
                self.list.get(pos).is_some_and(|n| {
                    n.seq == seq
                        && n.dot.replica() == note.dot.replica()
                        && !note.seen.contains(n.dot)
                })
            });
            if same_replica {
                return None;
            }
            let mut kept = Vec::with_capacity(seqs.len() + 1);
            for &seq in seqs.iter() {
                let pos = self.list.partition_point(|n| n.seq < seq);
                if self.list.get(pos).is_some_and(|n| n.seq == seq) {
                    if note.seen.contains(self.list[pos].dot) {
                        let old = self.list.remove(pos).expect("present");
                        self.ranges -= old.seen.range_count();
                    } else {
                        kept.push(seq);
                    }
                }
            }
            *seqs = kept;
        }
        note.seq = self.next_seq;
        self.next_seq += 1;
        self.ranges += note.seen.range_count();
        let seq = note.seq;
        let seqs = self.by_key.entry(note.key.clone()).or_default();
        seqs.push(seq);
        let crowded = (seqs.len() > NOTES_PER_KEY).then(|| seqs.remove(0));
        self.list.push_back(note);
        if let Some(first) = crowded {
            if let Some(pos) = self.position(first) {
                let old = self.list.remove(pos).expect("present");
                self.ranges -= old.seen.range_count();
            }
        }
        while self.list.len() > NOTE_CAP || self.ranges > NOTE_RANGES_CAP {
            let Some(old) = self.list.pop_front() else {
                break;
            };
            self.ranges -= old.seen.range_count();
            self.forget_key_seq(&old.key, old.seq);
        }
        Some(seq)
    }

    /// Keeps a note read from the wire as it is (a received map is checked by
    /// `validate_notes`, and its notes are weighed one by one when merged).
    fn push_received(&mut self, mut note: RemovalNote<K>) {
        note.seq = self.next_seq;
        self.next_seq += 1;
        self.ranges += note.seen.range_count();
        self.by_key
            .entry(note.key.clone())
            .or_default()
            .push(note.seq);
        self.list.push_back(note);
    }

    fn forget_key_seq(&mut self, key: &K, seq: u64) {
        if let Some(seqs) = self.by_key.get_mut(key) {
            seqs.retain(|&s| s != seq);
            if seqs.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    /// Forgets the notes of removals every peer has acknowledged.
    fn prune(&mut self, stable: &CausalContext) {
        let before = self.list.len();
        let ranges = &mut self.ranges;
        self.list.retain(|n| {
            let keep = !stable.contains(n.dot);
            if !keep {
                *ranges -= n.seen.range_count();
            }
            keep
        });
        if self.list.len() != before {
            self.by_key.clear();
            for n in &self.list {
                self.by_key.entry(n.key.clone()).or_default().push(n.seq);
            }
        }
    }
}

/// An observed-remove map of replicated values.
///
/// Standalone, it carries its causal context, an index from dots to entries (so that
/// merging a delta and computing [`delta_since`](Crdt::delta_since) cost time in
/// proportion to what changed) and a short removal log. As the value of another map it
/// uses its parent's context and keeps none of these.
pub struct OrMap<K, V> {
    entries: IndexMap<K, V>,
    ctx: CausalContext,
    /// Live dot -> position in `entries` (standalone maps only).
    index: DotMap<usize>,
    /// For every counter fold held (standalone maps of counters only): the newest dot
    /// it folded -> the fold's own dot, so that a removal naming the folded dot finds
    /// the fold (see [`DotStore::fold`]). Entries whose fold has died since are
    /// harmless (a lookup checks the index) and dropped at the next `prune`.
    provs: DotMap<Dot>,
    log: RemovalLog,
    /// Removals not yet acknowledged everywhere, told to peers so that a replica
    /// holding an update the remover had not seen can report the race (standalone
    /// maps only).
    notes: Notes<K>,
    /// A reusable buffer for the dots of the value being written.
    scratch: Vec<Dot>,
    /// Counter folding (standalone maps of counters only).
    folding: Folding<K>,
}

/// What a map of counters knows for folding segments (see [`Crdt::fold_stable`]).
#[derive(Clone, Debug)]
struct Folding<K> {
    /// This replica's dots that may be folded (set by `fold_stable`).
    stable: CausalContext,
    /// Keys whose counters this replica wrote and has not folded to one segment yet.
    pending: indexmap::IndexSet<K>,
    /// Whether the entries were searched for such keys (once per map built from a
    /// snapshot or a message: the pending set is not part of the state).
    searched: bool,
}

impl<K> Default for Folding<K> {
    fn default() -> Self {
        Folding {
            stable: CausalContext::new(),
            pending: indexmap::IndexSet::new(),
            searched: false,
        }
    }
}

impl<K: Clone, V: Clone> Clone for OrMap<K, V> {
    fn clone(&self) -> Self {
        let mut index = self.index.clone();
        // Headroom, so that the first merges into a copy (a restored snapshot, say) do
        // not each pay for rehashing a nearly full index.
        index.reserve(index.len() / 8);
        OrMap {
            entries: self.entries.clone(),
            ctx: self.ctx.clone(),
            index,
            provs: self.provs.clone(),
            log: self.log.clone(),
            notes: self.notes.clone(),
            scratch: Vec::new(),
            folding: self.folding.clone(),
        }
    }
}

impl<K, V> Default for OrMap<K, V> {
    fn default() -> Self {
        OrMap {
            entries: IndexMap::new(),
            ctx: CausalContext::new(),
            index: DotMap::default(),
            provs: DotMap::default(),
            log: RemovalLog::default(),
            notes: Notes::default(),
            scratch: Vec::new(),
            folding: Folding::default(),
        }
    }
}

impl<K: Key, V: DotStore> PartialEq for OrMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.ctx == other.ctx && self.entries == other.entries
    }
}

impl<K: Key, V: DotStore> fmt::Debug for OrMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("OrMap");
        d.field("entries", &DebugSorted(self));
        if !self.ctx.is_empty() {
            d.field("ctx", &self.ctx);
        }
        d.finish()
    }
}

struct DebugSorted<'a, K, V>(&'a OrMap<K, V>);

impl<K: Key, V: DotStore> fmt::Debug for DebugSorted<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter_sorted()).finish()
    }
}

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
    /// settings.set("dark-mode".into(), true, &mut hlc)?;
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

    /// Updates the value at `key` (starting from an empty value if absent) as `hlc`'s
    /// replica, and returns the delta to ship to peers.
    ///
    /// `f` receives the value and the write's [`Op`]; it calls the value's own in-op
    /// methods (`assign`, `set`, `add`, or a nested map's `update_in`/`remove_in`).
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

    fn mutate(
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
            self.log
                .push(single(Dot::new(dot.replica(), op.last_counter())), dead);
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
    fn note_removal(&mut self, dot: Dot, key: K, delta: Option<&mut Self>) {
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
            self.log.push(single(op.dot()), dead);
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

    /// The removal log's size in dead dots: bookkeeping that lets
    /// [`delta_since`](Crdt::delta_since) tell peers about recent removals, released
    /// by [`prune`](Crdt::prune) once every peer has acknowledged them.
    ///
    /// ```
    /// use concord::{Crdt, Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// cart.increment("apples".into(), 3, &mut hlc)?;
    /// cart.remove("apples", &mut hlc)?;
    /// assert_eq!(cart.pending_removals(), 1);
    ///
    /// // Every peer has acknowledged everything: the log is released.
    /// let stable = cart.context().clone();
    /// cart.prune(&stable);
    /// assert_eq!(cart.pending_removals(), 0);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn pending_removals(&self) -> usize {
        self.log.dots
    }

    /// The removals this map still tells its peers of, in the order it learned of
    /// them (a map read from the wire or a snapshot: in dot order), each as its own
    /// dot, the key it removed and the remover's causal context when it removed it. A
    /// replica that learns of a removal while it holds an element of the key that
    /// context lacks (an update made without seeing the removal) reports a
    /// delete-vs-update race (see [`Conflict`](crate::Conflict)). Released by
    /// [`prune`](Crdt::prune) once every peer has acknowledged the removal; at most
    /// 4,096 are kept, and 64 of one key (the first kept go first), and a removal of a
    /// key whose remover had seen an earlier removal of it replaces that one's note (so
    /// a replica's removals of a key keep one note, of its newest).
    ///
    /// ```
    /// use concord::{Crdt, Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// cart.increment("apples".into(), 3, &mut hlc)?;
    /// cart.remove("apples", &mut hlc)?;
    /// let (dot, key, seen) = cart.removal_notes().next().unwrap();
    /// assert_eq!((dot.counter(), key.as_str()), (2, "apples"));
    /// assert!(seen.contains(dot));
    ///
    /// let stable = cart.context().clone();
    /// cart.prune(&stable);
    /// assert_eq!(cart.removal_notes().count(), 0);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn removal_notes(&self) -> impl ExactSizeIterator<Item = (Dot, &K, &CausalContext)> + '_ {
        self.notes.list.iter().map(|n| (n.dot, &n.key, &n.seen))
    }

    /// Removes entries at `positions` (deferred removals), keeping the index right.
    fn remove_positions(&mut self, mut positions: Vec<usize>) {
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
    fn positions_holding(&self, dots: &CausalContext) -> Vec<usize> {
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
    fn copy_part(&self, pos: usize, keep: &dyn Fn(Dot) -> bool, out: &mut Self) -> usize {
        let (k, v) = self.entries.get_index(pos).expect("position in range");
        let part = v.filtered(keep);
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
    fn add_unheld(&self, dots: &CausalContext, ctx: &mut CausalContext) {
        for d in dots.dots().filter(|d| !self.index.contains_key(d)) {
            ctx.insert(d);
        }
    }

    /// Adds the live fold `fold` (held at `pos`) to `out`, beside what `out` holds of
    /// the same key; returns 1.
    fn carry_fold(&self, fold: Dot, pos: usize, out: &mut Self) -> usize {
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

    fn rebuild_index(&mut self) {
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
    fn note_folds(provs: &mut DotMap<Dot>, value: &V) {
        value.for_each_fold(&mut |folded, fold| {
            provs.insert(folded, fold);
        });
    }

    /// The position of the live fold that folded `dot`, if any.
    fn fold_of(&self, dot: Dot) -> Option<(Dot, usize)> {
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
    fn close_over_folds(&self, out: &mut Self, carry: bool) {
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

    /// Checks received removal notes: no more than a map keeps (in all, and of one
    /// key), each with a context of a bounded size that holds its own dot, each dot
    /// once, in the map's context and held by no element, and at most one per key and
    /// remover (a map keeps only a replica's newest removal of a key).
    fn validate_notes(&self, limits: &Limits) -> Result<()> {
        let notes = &self.notes.list;
        let limit = NOTE_CAP.min(limits.max_entries);
        if notes.len() > limit {
            return Err(Error::TooManyEntries {
                what: "removal notes",
                count: notes.len(),
                limit,
            });
        }
        for seqs in self.notes.by_key.values() {
            if seqs.len() > NOTES_PER_KEY {
                return Err(Error::TooManyEntries {
                    what: "removal notes of one key",
                    count: seqs.len(),
                    limit: NOTES_PER_KEY,
                });
            }
        }
        let mut removers: std::collections::HashSet<(&K, ReplicaId)> =
            std::collections::HashSet::with_capacity(notes.len());
        let mut dots = DotSet::default();
        for n in notes {
            if n.seen.range_count() > limits.max_context_ranges {
                return Err(Error::TooManyEntries {
                    what: "context ranges",
                    count: n.seen.range_count(),
                    limit: limits.max_context_ranges,
                });
            }
            let reason = if !self.ctx.contains(n.dot) {
                "removal note's dot missing from the causal context sent with it"
            } else if !n.seen.contains(n.dot) {
                "removal note's context lacks the removal's own dot"
            } else if self.index.contains_key(&n.dot) {
                "removal note's dot tags an element"
            } else if !dots.insert(n.dot) {
                "the same removal note appears twice"
            } else if !removers.insert((&n.key, n.dot.replica())) {
                "two removal notes of one key by one replica"
            } else {
                continue;
            };
            return Err(Error::InvalidDot { dot: n.dot, reason });
        }
        Ok(())
    }

    /// A piece of a chunked catch-up, completed.
    fn seal_chunk(&self, mut out: Self) -> Self {
        self.close_over_folds(&mut out, false);
        out.seal();
        out
    }

    /// The full state as a delta (no index or log).
    fn full(&self) -> Self {
        let mut copy = OrMap {
            entries: self.entries.clone(),
            ctx: self.ctx.clone(),
            index: self.index.clone(),
            provs: self.provs.clone(),
            log: RemovalLog::default(),
            notes: self.notes.clone(),
            scratch: Vec::new(),
            folding: Folding::default(),
        };
        copy.log.floor = copy.ctx.clone();
        copy
    }

    /// Makes a map built from parts (a delta) a complete standalone map: its dot
    /// index, and a removal-log floor at its context (it knows no removal history, so
    /// a peer below that gets all of it).
    fn seal(&mut self) {
        self.rebuild_index();
        if V::FOLDS {
            // Whoever learns a fold learns that what it folded is gone (the fold's
            // own write says so; a relayed part of the state must too).
            for (&folded, _) in self.provs.iter() {
                self.ctx.insert(folded);
            }
        }
        self.log = RemovalLog {
            floor: self.ctx.clone(),
            ..RemovalLog::default()
        };
    }

    /// The standalone join: index and removal log maintained, concurrencies reported.
    fn merge_reporting<C: ConflictSink<K, V>>(&mut self, other: Self, sink: &mut C) -> Outcome {
        self.merge_logging(other, sink, &CausalContext::new())
    }

    /// [`OrMap::merge_reporting`] of a part of a received state whose writes `set_aside`
    /// were left out of it (and out of its context) by the containing merge. The
    /// removals it carries are logged with those writes in their trigger: a removal
    /// may be caused by a write set aside (a collapse that overwrote the siblings), and
    /// a peer that holds the dead dot alive must be told of it until it has the write
    /// that killed it, not merely the dead dot itself (it may well have that: it holds
    /// it alive).
    fn merge_logging<C: ConflictSink<K, V>>(
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
        // Positions of ours the other side sent (a list: a delta touches few).
        let mut visited: Vec<usize> = Vec::new();
        // Entries the other side sent: join them.
        let mut before = Vec::new();
        let mut theirs = Vec::new();
        for (key, their_value) in their_entries {
            match self.entries.get_index_of(&key) {
                Some(pos) => {
                    visited.push(pos);
                    let value = &mut self.entries[pos];
                    before.clear();
                    value.for_each_dot(&mut |d| before.push(d));
                    theirs.clear();
                    their_value.for_each_dot(&mut |d| theirs.push(d));
                    before.sort_unstable();
                    theirs.sort_unstable();
                    if before == theirs {
                        continue;
                    }
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
            let mut sent = vec![false; original_len];
            for &pos in &visited {
                sent[pos] = true;
            }
            (0..original_len).filter(|&pos| !sent[pos]).collect()
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
            let trigger = if set_aside.is_empty() {
                their_ctx.clone()
            } else {
                let mut trigger = their_ctx.clone();
                trigger.merge_ref(set_aside);
                trigger
            };
            self.log.push(trigger, newly_dead);
        } else {
            self.log.raise_floor(&their_ctx);
        }
        // The notes kept (those a held or another new note supersedes are not), and
        // of them the ones that met an update.
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
        let mut racing: IndexMap<K, crate::clock::VectorClock> = IndexMap::new();
        for seq in met_seqs {
            if let Some(pos) = self.notes.position(seq) {
                let note = &self.notes.list[pos];
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

fn single(dot: Dot) -> CausalContext {
    let mut ctx = CausalContext::new();
    ctx.insert(dot);
    ctx
}

impl<K: Key, T: Data> OrMap<K, LwwRegister<T>> {
    /// Sets the register at `key` to `value`; returns the delta.
    ///
    /// ```
    /// use concord::{Hlc, LwwRegister, ManualClock, OrMap, ReplicaId, Resolver};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut settings: OrMap<String, LwwRegister<String>> = OrMap::new();
    /// let delta = settings.set("theme".into(), "dark".into(), &mut hlc)?;
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
    pub fn set<S: TimeSource>(&mut self, key: K, value: T, hlc: &mut Hlc<S>) -> Result<Self> {
        crate::probe::check_value(&value)?;
        self.update(key, hlc, |reg, op| reg.assign(op, value))
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
    /// a.set("theme".into(), "dark".into(), &mut hlc_a)?;
    /// time.advance(5);
    /// b.set("theme".into(), "light".into(), &mut hlc_b)?;
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
        self.update(key, hlc, |reg, op| reg.set(op, value))
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

/// The wire form of a map's entries, in key order: a JSON object when every key is a
/// JSON object key (a string or an integer), an array of `[key, value]` pairs
/// otherwise (see [`Key`]).
pub struct EncodedEntries<'a, K, V: DotStore + 'a> {
    entries: Vec<(&'a K, V::Encoded<'a>)>,
    object: bool,
}

impl<K: Serialize, V: DotStore> Serialize for EncodedEntries<'_, K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // The binary form has a single one: a count, then keys and values in turn.
        if self.object || !s.is_human_readable() {
            let mut map = s.serialize_map(Some(self.entries.len()))?;
            for (k, v) in &self.entries {
                map.serialize_entry(k, v)?;
            }
            map.end()
        } else {
            let mut seq = s.serialize_seq(Some(self.entries.len()))?;
            for (k, v) in &self.entries {
                seq.serialize_element(&(k, v))?;
            }
            seq.end()
        }
    }
}

impl<K: Key, V: DotStore> OrMap<K, V> {
    fn encode_entries<'a>(&'a self, table: &mut ReplicaTable) -> EncodedEntries<'a, K, V> {
        let mut sorted: Vec<(&K, &V)> = self.entries.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let object = sorted.iter().all(|(k, _)| crate::probe::is_object_key(*k));
        EncodedEntries {
            entries: sorted
                .into_iter()
                .map(|(k, v)| (k, v.encode(table)))
                .collect(),
            object,
        }
    }

    fn decode_entries(
        decoded: DecodedEntries<K, V::Decoded>,
        replicas: &[ReplicaId],
    ) -> Result<IndexMap<K, V>> {
        let mut entries = IndexMap::with_capacity(decoded.0.len());
        for (k, v) in decoded.0 {
            entries.insert(k, V::decode(v, replicas)?);
        }
        Ok(entries)
    }
}

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

    fn joined_siblings(
        &self,
        ctx: &CausalContext,
        other: &Self,
        other_ctx: &CausalContext,
    ) -> usize {
        let empty = V::default();
        other
            .entries
            .iter()
            .map(|(k, theirs)| {
                self.entries
                    .get(k)
                    .unwrap_or(&empty)
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

impl<K: Key, V: DotStore> Resolver for OrMap<K, V> {
    fn merge(&mut self, other: Self) -> Outcome {
        self.merge_reporting(other, &mut ())
    }
}

impl<K: Key, V: DotStore> Crdt for OrMap<K, V> {
    type Key = K;
    type Value = V;

    fn context(&self) -> &CausalContext {
        &self.ctx
    }

    fn delta_since_context(&self, seen: &CausalContext) -> Self {
        self.delta_since_offered(seen, seen)
    }

    fn delta_since_offered(&self, offered: &CausalContext, acked: &CausalContext) -> Self {
        if !acked.includes(&self.log.floor) {
            return self.full();
        }
        let seen = offered;
        let since = self.ctx.minus(seen);
        let positions = self.positions_holding(&since);
        let mut delta = OrMap::new();
        for pos in positions {
            let (k, v) = self
                .entries
                .get_index(pos)
                .expect("index points into entries");
            let part = v.filtered(&|d| !seen.contains(d));
            if !part.is_bottom() {
                delta.entries.insert(k.clone(), part);
            }
        }
        delta.ctx = since;
        // Removals are told by what the peer acknowledged, not by what was offered: an
        // offered message may be lost while a later one carries its trigger. And they
        // go with the writes that caused them until the peer acknowledges those: a
        // removal whose cause is still in flight travels with the in-flight elements
        // again. Otherwise, if the message that carried the cause were lost for good
        // (its sender crashed, and so did every other holder), the removal alone
        // would drop what the write replaced and keep nothing of it (for a fold of
        // counter segments: the folded increments themselves).
        let pending = seen.minus(acked);
        let mut causes = CausalContext::new();
        for (_, trigger, dead) in &self.log.entries {
            if !acked.includes(trigger) {
                for &d in dead {
                    delta.ctx.insert(d);
                }
                if !pending.is_empty() {
                    causes.merge(pending.intersection(trigger));
                }
            }
        }
        if !causes.is_empty() {
            for pos in self.positions_holding(&causes) {
                self.copy_part(pos, &|x| !acked.contains(x), &mut delta);
            }
            self.add_unheld(&causes, &mut delta.ctx);
        }
        // Removal notes, told like removals: until the peer acknowledges them.
        for note in &self.notes.list {
            if !acked.contains(note.dot) {
                delta.ctx.insert(note.dot);
                delta.notes.push(note.clone());
            }
        }
        self.close_over_folds(&mut delta, true);
        delta.seal();
        delta
    }

    fn delta_chunk(
        &self,
        seen: &CausalContext,
        upto: &CausalContext,
        cursor: &mut ChunkCursor,
        max_items: usize,
    ) -> Self {
        let mut out = OrMap::new();
        let mut items = 0usize;
        let max_items = max_items.max(1);
        let unsent = |d: Dot| !seen.contains(d) && upto.contains(d);
        // Below the removal log's floor (now, or since the stream began): the log no
        // longer lists every removal the peer must learn, so phase 1 sends every
        // removed dot it has seen too. If that happens mid-stream, walk again.
        if !cursor.full && !seen.includes(&self.log.floor) {
            cursor.full = true;
            if cursor.phase >= 1 {
                cursor.phase = 1;
                cursor.dot = None;
            }
        }
        if cursor.phase == 0 {
            // Removal notes the peer lacks, first: each comes with its removal's dot,
            // so that the peer decides on it before any element of the stream.
            let start = self.notes.list.partition_point(|n| n.seq < cursor.note);
            for note in self.notes.list.range(start..) {
                if items >= max_items {
                    break;
                }
                if !seen.contains(note.dot) && upto.contains(note.dot) {
                    out.ctx.insert(note.dot);
                    items += 1 + note.seen.range_count();
                    out.notes.push(note.clone());
                }
                cursor.note = note.seq + 1;
            }
            if self.notes.list.back().is_some_and(|n| n.seq >= cursor.note) {
                // The budget ran out: the rest of the notes go in the next piece.
                return self.seal_chunk(out);
            }
            // Removals the peer may not know of (it may hold the dots alive).
            let start = self.log.entries.partition_point(|e| e.0 < cursor.log);
            for (seq, trigger, dead) in self.log.entries.range(start..) {
                if items >= max_items {
                    break;
                }
                if !seen.includes(trigger) {
                    for &d in dead.iter().filter(|d| upto.contains(**d)) {
                        out.ctx.insert(d);
                        items += 1;
                        // A fold's removal of what it folded goes with the fold, even
                        // one made since the stream began (see `close_over_folds`).
                        if V::FOLDS {
                            if let Some((fold, pos)) = self.fold_of(d) {
                                if !out.ctx.contains(fold) {
                                    items += self.carry_fold(fold, pos, &mut out);
                                }
                            }
                        }
                    }
                    // With the writes that made them (a fold of counter segments, say):
                    // a removal must not arrive alone, even for the length of a stream.
                    // (Only while they fit in this chunk's budget: a large trigger, a
                    // big received delta, is left to phase 2 rather than overflow it.)
                    let causes = trigger.intersection(upto).minus(seen);
                    let room = max_items.saturating_sub(items) as u64;
                    if !causes.is_empty() && causes.dot_count() <= room {
                        for pos in self.positions_holding(&causes) {
                            items += self.copy_part(pos, &unsent, &mut out);
                        }
                    }
                    // And, whatever the budget, the causes no entry holds (a
                    // removal's own dot; a few context ranges): the receiver then logs
                    // the removal against a context holding its cause, and tells it on
                    // to a peer that lacks that cause (without them, a peer whose
                    // context covers the removed dots was never told, for good).
                    self.add_unheld(&causes, &mut out.ctx);
                }
                cursor.log = seq + 1;
            }
            if self.log.entries.back().is_none_or(|e| e.0 < cursor.log) {
                cursor.phase = 1;
            }
        }
        if cursor.phase == 1 {
            // Dots removed here: those the peer never saw, and (below the floor) those
            // it may hold alive. Computed on ranges, so a long run of removed dots
            // costs one item and no walk over its dots.
            let mut live: Vec<Dot> = self.index.keys().copied().collect();
            live.sort_unstable();
            let mut held = CausalContext::new();
            for d in live {
                held.insert(d);
            }
            let candidates = if cursor.full {
                upto.clone()
            } else {
                upto.minus(seen)
            };
            let dead = candidates.minus(&held);
            let mut finished = true;
            'walk: for (r, ranges) in dead.ranges() {
                for &(lo, hi) in ranges {
                    let lo = match cursor.dot {
                        Some(d) if r < d.replica() => continue,
                        Some(d) if r == d.replica() => lo.max(d.counter().saturating_add(1)),
                        _ => lo,
                    };
                    if lo > hi {
                        continue;
                    }
                    if items >= max_items {
                        finished = false;
                        break 'walk;
                    }
                    out.ctx.insert_range(r, lo, hi);
                    items += 1;
                    cursor.dot = Some(Dot::new(r, hi));
                }
            }
            if finished {
                cursor.phase = 2;
            }
        }
        if cursor.phase == 2 {
            while cursor.pos < self.entries.len() && items < max_items {
                items += self.copy_part(cursor.pos, &unsent, &mut out);
                cursor.pos += 1;
            }
            if cursor.pos >= self.entries.len() {
                cursor.phase = 3;
            }
        }
        self.seal_chunk(out)
    }

    fn validate(&self, limits: &Limits) -> Result<()> {
        if self.ctx.range_count() > limits.max_context_ranges {
            return Err(Error::TooManyEntries {
                what: "context ranges",
                count: self.ctx.range_count(),
                limit: limits.max_context_ranges,
            });
        }
        let size = DotStore::size(self);
        if size > limits.max_entries {
            return Err(Error::TooManyEntries {
                what: "entries",
                count: size,
                limit: limits.max_entries,
            });
        }
        // The dot index holds every element's dot once, pointing at its entry: if
        // every dot is found there at its own entry and there are as many dots as
        // index keys, no dot tags two elements, and no second set of the dots is
        // built (a received map was indexed once, when it was decoded).
        let mut dots = 0usize;
        let mut indexed = true;
        let mut bad: Option<(Dot, &'static str)> = None;
        for (pos, v) in self.entries.values().enumerate() {
            v.for_each_dot(&mut |d| {
                dots += 1;
                indexed &= self.index.get(&d) == Some(&pos);
                if bad.is_none() && !self.ctx.contains(d) {
                    bad = Some((
                        d,
                        "element dot missing from the causal context sent with it",
                    ));
                }
            });
        }
        if bad.is_none() && !(indexed && dots == self.index.len()) {
            // A repeated dot (or an index out of step, which no map of this library
            // has): find the dot the slow way.
            let mut seen = DotSet::default();
            DotStore::for_each_dot(self, &mut |d| {
                if bad.is_none() && !seen.insert(d) {
                    bad = Some((d, "the same dot tags two elements"));
                }
            });
        }
        if let Some((dot, reason)) = bad {
            return Err(Error::InvalidDot { dot, reason });
        }
        self.validate_notes(limits)
    }

    fn for_each_element_dot(&self, f: &mut dyn FnMut(Dot)) {
        DotStore::for_each_dot(self, f);
    }

    fn try_merge<C: ConflictSink<K, V>>(
        &mut self,
        other: Self,
        limits: &Limits,
        sink: &mut C,
    ) -> Result<Outcome> {
        other.validate(limits)?;
        let count = DotStore::joined_siblings(self, &self.ctx, &other, &other.ctx);
        if count > limits.max_siblings {
            return Err(Error::TooManySiblings {
                count,
                cap: limits.max_siblings,
            });
        }
        Ok(self.merge_reporting(other, sink))
    }

    fn try_merge_containing<C: ConflictSink<K, V>>(
        &mut self,
        other: Self,
        limits: &Limits,
        sink: &mut C,
        budget: u64,
        set_aside: &mut Vec<SetAside<K>>,
    ) -> Result<Outcome> {
        other.validate(limits)?;
        let empty = V::default();
        let hot: Vec<(K, usize)> = other
            .entries
            .iter()
            .filter_map(|(k, theirs)| {
                let ours = self.entries.get(k).unwrap_or(&empty);
                let count = ours.joined_siblings(&self.ctx, theirs, &other.ctx);
                (count > limits.max_siblings).then(|| (k.clone(), count))
            })
            .collect();
        if hot.is_empty() {
            return Ok(self.merge_reporting(other, sink));
        }
        let mut other = other;
        // Of each hot key's received entry, take the writes this replica lacks in dot
        // order for as long as they fit under the cap (the count only grows with
        // each write taken: a binary search finds the longest prefix); set the rest
        // aside, out of the entry and out of the context merged.
        let mut strip: Vec<Dot> = Vec::new();
        let mut found = Vec::with_capacity(hot.len());
        let mut total = 0u64;
        for (key, siblings) in hot {
            let theirs = other.entries.get(&key).expect("a key of `other`");
            let ours = self.entries.get(&key).unwrap_or(&empty);
            let mut unseen: Vec<Dot> = Vec::new();
            theirs.for_each_dot(&mut |d| {
                if !self.ctx.contains(d) {
                    unseen.push(d);
                }
            });
            if unseen.is_empty() {
                // Over the cap already here (a cap lowered since): nothing new to take
                // or to set aside, and the merge adds no sibling.
                continue;
            }
            unseen.sort_unstable();
            let part = |m: usize| {
                let rest = &unseen[m..];
                theirs.filtered(&|d| rest.binary_search(&d).is_err())
            };
            let fits = |m: usize| {
                ours.joined_siblings(&self.ctx, &part(m), &other.ctx) <= limits.max_siblings
            };
            // The largest m in 0..len with fits(m) (fits(len) is false: the key is hot);
            // m = 0 when even the writes already seen here exceed the cap.
            let (mut lo, mut hi) = (0, unseen.len());
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if fits(mid) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            let taken = part(lo);
            let mut dots = CausalContext::new();
            for &d in &unseen[lo..] {
                dots.insert(d);
            }
            strip.extend_from_slice(&unseen[lo..]);
            if taken.is_bottom() {
                other.entries.swap_remove(&key);
            } else {
                other.entries.insert(key.clone(), taken);
            }
            total = total.saturating_add(dots.dot_count());
            found.push(SetAside {
                key,
                siblings,
                dots,
            });
        }
        if total > budget {
            let count = found.iter().map(|h| h.siblings).max().unwrap_or(0);
            return Err(Error::TooManySiblings {
                count,
                cap: limits.max_siblings,
            });
        }
        strip.sort_unstable();
        let mut stripped = CausalContext::new();
        for d in strip {
            stripped.insert(d);
        }
        other.ctx = other.ctx.minus(&stripped);
        let outcome = self.merge_logging(other, sink, &stripped);
        set_aside.extend(found);
        Ok(outcome)
    }

    fn max_timestamp(&self) -> Option<Timestamp> {
        DotStore::max_timestamp(self)
    }

    fn prune(&mut self, stable: &CausalContext) {
        self.log.prune(stable);
        self.notes.prune(stable);
        if V::FOLDS {
            let index = &self.index;
            self.provs.retain(|_, fold| index.contains_key(fold));
        }
    }

    fn fold_stable<S: TimeSource>(
        &mut self,
        stable: &CausalContext,
        hlc: &mut Hlc<S>,
    ) -> Result<bool> {
        if !V::FOLDS {
            return Ok(false);
        }
        let me = hlc.replica();
        self.folding.stable = stable.only(me);
        if self.folding.stable.is_empty() {
            return Ok(false);
        }
        if !self.folding.searched {
            // A map restored from a snapshot: its counters' leftover segments.
            self.folding.searched = true;
            for (key, value) in &self.entries {
                if value.foldable(me, &CausalContext::new()).0 > 1 {
                    self.folding.pending.insert(key.clone());
                }
            }
        }
        if self.folding.pending.is_empty() {
            return Ok(false);
        }
        let stable = self.folding.stable.clone();
        let keys: Vec<K> = self.folding.pending.drain(..).collect();
        let mut wrote = false;
        for (i, key) in keys.iter().enumerate() {
            let Some(value) = self.entries.get(key) else {
                continue; // removed since
            };
            let (own, covered) = value.foldable(me, &stable);
            if covered < 2 {
                if own > 1 {
                    self.folding.pending.insert(key.clone());
                }
                continue;
            }
            let op = match next_op(&self.ctx, hlc) {
                Ok(op) => op,
                Err(e) => {
                    self.folding.pending.extend(keys[i..].iter().cloned());
                    return Err(e);
                }
            };
            // `mutate` folds around the (empty) write and keeps the key pending while
            // segments that are not stable yet remain.
            self.mutate(key.clone(), &op, |_, _| {}, false);
            wrote = true;
        }
        Ok(wrote)
    }
}

/// The dots held by `entries`, as the keys of a map: `index` itself when it indexes
/// exactly those (every standalone map keeps it so; `try_merge_containing` leaves it
/// holding set-aside dots too), else collected afresh.
fn live_dots<K, V: DotStore>(entries: &IndexMap<K, V>, index: DotMap<usize>) -> DotMap<usize> {
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

/// A standalone map on the wire. `x`, its removal notes (`[[replica index,
/// counter], key, context]` each), is empty in messages to peers that speak a
/// protocol version below 3 (older builds ignore the field), and left out of JSON when
/// empty; the binary form, whose fields have no names, always writes it.
struct WireMap<'a, K, V: DotStore + 'a> {
    r: Vec<ReplicaId>,
    c: EncodedContext,
    e: EncodedEntries<'a, K, V>,
    x: Vec<((u32, u64), &'a K, EncodedContext)>,
}

impl<K: Serialize, V: DotStore> Serialize for WireMap<'_, K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let with_notes = !self.x.is_empty() || !s.is_human_readable();
        let mut w = s.serialize_struct("WireMap", if with_notes { 4 } else { 3 })?;
        w.serialize_field("r", &self.r)?;
        w.serialize_field("c", &self.c)?;
        w.serialize_field("e", &self.e)?;
        if with_notes {
            w.serialize_field("x", &self.x)?;
        } else {
            w.skip_field("x")?;
        }
        w.end()
    }
}

#[derive(Deserialize)]
#[serde(bound = "K: Key, V: DotStore")]
struct WireMapOwned<K, V: DotStore> {
    #[serde(deserialize_with = "crate::wire::budget::replicas")]
    r: Vec<ReplicaId>,
    c: DecodedContext,
    e: DecodedEntries<K, V::Decoded>,
    #[serde(default)]
    x: DecodedNotes<K>,
}

/// Removal notes as read from the wire, each charged to the decoding budget as one
/// entry (their contexts' ranges as ranges) while it is read.
struct DecodedNotes<K>(Vec<((u32, u64), K, DecodedContext)>);

impl<K> Default for DecodedNotes<K> {
    fn default() -> Self {
        DecodedNotes(Vec::new())
    }
}

impl<'de, K: Key> Deserialize<'de> for DecodedNotes<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct NotesVisitor<K>(std::marker::PhantomData<K>);
        impl<'de, K: Key> serde::de::Visitor<'de> for NotesVisitor<K> {
            type Value = DecodedNotes<K>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of removal notes")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut access: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some(note) = access.next_element()? {
                    crate::wire::budget::entry().map_err(serde::de::Error::custom)?;
                    out.push(note);
                }
                Ok(DecodedNotes(out))
            }
        }
        d.deserialize_seq(NotesVisitor(std::marker::PhantomData))
    }
}

/// A map's entries as read from the wire, before validation: either form (a JSON
/// object, or an array of `[key, value]` pairs), and a key that appears twice in
/// either is a decoding error (two decoders could otherwise read one message
/// differently). Each key is charged to the decoding budget as one entry as it is
/// read (see [`DecodedElements`](crate::causal::DecodedElements)).
#[derive(Debug)]
pub struct DecodedEntries<K, V>(IndexMap<K, V>);

impl<'de, K: Key, V: Deserialize<'de>> Deserialize<'de> for DecodedEntries<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Unique<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Key, V: Deserialize<'de>> serde::de::Visitor<'de> for Unique<K, V> {
            type Value = IndexMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map's entries (an object, or [key, value] pairs), each key once")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out =
                    IndexMap::with_capacity(crate::wire::budget::reserve(access.size_hint()));
                while let Some(k) = access.next_key()? {
                    crate::wire::budget::entry().map_err(crate::wire::budget::custom)?;
                    let v = access.next_value()?;
                    if out.insert(k, v).is_some() {
                        return Err(crate::wire::budget::custom("a map key appears twice"));
                    }
                }
                Ok(out)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut access: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out =
                    IndexMap::with_capacity(crate::wire::budget::reserve(access.size_hint()));
                while let Some((k, v)) = access.next_element::<(K, V)>()? {
                    crate::wire::budget::entry().map_err(crate::wire::budget::custom)?;
                    if out.insert(k, v).is_some() {
                        return Err(crate::wire::budget::custom("a map key appears twice"));
                    }
                }
                Ok(out)
            }
        }
        if !d.is_human_readable() {
            return d
                .deserialize_map(Unique(std::marker::PhantomData))
                .map(DecodedEntries);
        }
        d.deserialize_any(Unique(std::marker::PhantomData))
            .map(DecodedEntries)
    }
}

impl<K: Key, V: DotStore> Serialize for OrMap<K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut table = ReplicaTable::default();
        let c = encode_context(&self.ctx, &mut table);
        let e = self.encode_entries(&mut table);
        let x = if crate::wire::encoding_version() >= 3 {
            // In dot order: replicas holding the same notes encode them alike.
            let mut notes: Vec<&RemovalNote<K>> = self.notes.list.iter().collect();
            notes.sort_unstable_by_key(|n| n.dot);
            notes
                .into_iter()
                .map(|n| {
                    (
                        table.dot(n.dot),
                        &n.key,
                        encode_context(&n.seen, &mut table),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        WireMap {
            r: table.into_ids(),
            c,
            e,
            x,
        }
        .serialize(s)
    }
}

impl<'de, K: Key, V: DotStore> Deserialize<'de> for OrMap<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = WireMapOwned::<K, V>::deserialize(d)?;
        crate::causal::check_table(&raw.r).map_err(crate::wire::budget::custom)?;
        let ctx = raw.c.resolve(&raw.r).map_err(crate::wire::budget::custom)?;
        let entries = Self::decode_entries(raw.e, &raw.r).map_err(crate::wire::budget::custom)?;
        let mut map = OrMap {
            entries,
            ctx,
            ..OrMap::default()
        };
        map.seal();
        for ((idx, counter), key, seen) in raw.x.0 {
            let dot = crate::causal::decode_dot(&raw.r, idx, counter)
                .map_err(crate::wire::budget::custom)?;
            let seen = seen.resolve(&raw.r).map_err(crate::wire::budget::custom)?;
            map.notes.push_received(RemovalNote {
                dot,
                key,
                seen,
                seq: 0,
            });
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::ManualClock;

    type Cart = OrMap<String, PnCounter>;

    fn hlc(n: u128) -> Hlc<ManualClock> {
        Hlc::new(ReplicaId::from_u128(n), ManualClock::new(1_000))
    }

    fn k(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn update_wins_over_concurrent_remove_without_resurrection() {
        let (mut ha, mut hb) = (hlc(1), hlc(2));
        let mut a = Cart::new();
        a.increment(k("x"), 5, &mut ha).unwrap();
        let mut b = a.clone();
        b.increment(k("x"), 2, &mut hb).unwrap(); // b: 7, seen by a below
        a.merge(b.clone());
        a.remove(&k("x"), &mut ha).unwrap();
        b.increment(k("x"), 1, &mut hb).unwrap();
        let mut a2 = a.clone();
        a2.merge(b.clone());
        b.merge(a.clone());
        assert_eq!(a2, b);
        assert_eq!(a2.count(&k("x")), 1);
    }

    #[test]
    fn re_add_after_remove() {
        let mut h = hlc(1);
        let mut m: OrMap<String, LwwRegister<u32>> = OrMap::new();
        m.set(k("a"), 1, &mut h).unwrap();
        m.remove(&k("a"), &mut h).unwrap();
        assert!(m.get(&k("a")).is_none());
        m.set(k("a"), 2, &mut h).unwrap();
        assert_eq!(m.value(&k("a")), Some(&2));
    }

    #[test]
    fn iter_walks_storage_order_and_iter_sorted_key_order() {
        let mut h = hlc(1);
        let mut m = Cart::new();
        for key in ["d", "b", "a", "c"] {
            m.increment(k(key), 1, &mut h).unwrap();
        }
        fn walk(m: &Cart) -> Vec<&str> {
            m.iter().map(|(k, _)| k.as_str()).collect()
        }
        assert_eq!(walk(&m), ["d", "b", "a", "c"]);
        // A removal moves the last entry into the hole.
        m.remove("b", &mut h).unwrap();
        assert_eq!(walk(&m), ["d", "c", "a"]);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["d", "c", "a"]);
        assert_eq!((&m).into_iter().len(), 3);
        let sorted: Vec<&str> = m.iter_sorted().map(|(k, _)| k.as_str()).collect();
        assert_eq!(sorted, ["a", "c", "d"]);
        // Debug output is canonical: key order.
        assert!(
            format!("{m:?}").starts_with(r#"OrMap { entries: {"a": "#),
            "{m:?}"
        );
    }

    #[test]
    fn nested_remove_keeps_only_concurrent_inner_writes() {
        let (mut ha, mut hb) = (hlc(1), hlc(2));
        type Doc = OrMap<String, OrMap<String, LwwRegister<u32>>>;
        let mut a = Doc::new();
        a.update(k("user"), &mut ha, |m, op| {
            m.update_in(op, k("name"), |r, op| r.assign(op, 1));
            m.update_in(op, k("age"), |r, op| r.assign(op, 2));
        })
        .unwrap();
        let mut b = a.clone();
        a.remove(&k("user"), &mut ha).unwrap();
        b.update(k("user"), &mut hb, |m, op| {
            m.update_in(op, k("email"), |r, op| r.assign(op, 3))
        })
        .unwrap();
        a.merge(b.clone());
        let user = a.get(&k("user")).unwrap();
        assert_eq!(user.keys().cloned().collect::<Vec<_>>(), vec![k("email")]);
    }

    #[test]
    fn delta_since_carries_overwrites_and_removals() {
        let (mut ha, mut hb) = (hlc(1), hlc(2));
        let mut a: OrMap<String, MvRegister<u32>> = OrMap::new();
        for i in 0..20 {
            a.write(format!("k{i}"), i, &mut ha).unwrap();
        }
        let mut b = OrMap::new();
        b.merge(a.clone());
        let b_clock = b.context().clock();
        a.write(k("k1"), 100, &mut ha).unwrap();
        a.remove(&k("k2"), &mut ha).unwrap();
        b.write(k("k3"), 300, &mut hb).unwrap();
        let delta = a.delta_since(&b_clock);
        assert_eq!(delta.len(), 1, "only k1 changed: {delta:?}");
        let mut via_delta = b.clone();
        via_delta.merge(delta);
        let mut via_full = b.clone();
        via_full.merge(a.clone());
        assert_eq!(via_delta, via_full);
        assert_eq!(
            via_delta
                .get(&k("k1"))
                .unwrap()
                .values()
                .collect::<Vec<_>>(),
            vec![&100]
        );
        assert!(via_delta.get(&k("k2")).is_none());
    }

    #[test]
    fn forwarded_overwrite_reaches_a_third_replica() {
        // A writes, C gets it; B overwrites; M learns B's overwrite and forwards to C.
        let (mut ha, mut hb) = (hlc(1), hlc(2));
        let mut a: OrMap<String, MvRegister<u32>> = OrMap::new();
        a.write(k("x"), 1, &mut ha).unwrap();
        let mut b = a.clone();
        let mut c = a.clone();
        let mut m: OrMap<String, MvRegister<u32>> = OrMap::new();
        let overwrite = b.write(k("x"), 2, &mut hb).unwrap();
        m.merge(overwrite);
        let delta = m.delta_since(&c.context().clock());
        c.merge(delta);
        assert_eq!(
            c.get(&k("x")).unwrap().values().collect::<Vec<_>>(),
            vec![&2]
        );
    }

    #[test]
    fn json_round_trip_and_sizes() {
        let mut h = hlc(1);
        let mut m: OrMap<String, MvRegister<String>> = OrMap::new();
        for i in 0..100 {
            m.write(format!("key-{i:06}"), format!("value-{i:06}"), &mut h)
                .unwrap();
        }
        let json = serde_json::to_string(&m).unwrap();
        let back: OrMap<String, MvRegister<String>> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        let floor: IndexMap<String, String> = (0..100)
            .map(|i| (format!("key-{i:06}"), format!("value-{i:06}")))
            .collect();
        let floor_len = serde_json::to_string(&floor).unwrap().len();
        assert!(
            json.len() < floor_len * 2,
            "{} vs {}",
            json.len(),
            floor_len
        );
    }
}
