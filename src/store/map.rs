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

/// A map's entries, hashed with a randomly seeded hasher (foldhash, as the dot index):
/// keys come from peers, so the seed keeps them from choosing colliding ones, and it
/// costs a fraction of the standard library's SipHash per lookup.
pub(crate) type Entries<K, V> = IndexMap<K, V, foldhash::fast::RandomState>;

/// An observed-remove map of replicated values.
///
/// Standalone, it carries its causal context, an index from dots to entries (so that
/// merging a delta and computing [`delta_since`](Crdt::delta_since) cost time in
/// proportion to what changed) and a short removal log. As the value of another map it
/// uses its parent's context and keeps none of these.
pub struct OrMap<K, V> {
    entries: Entries<K, V>,
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
            entries: Entries::default(),
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

mod codec;
mod index;
mod join;
mod log;
mod nested;
mod read;
mod replica;
#[cfg(test)]
mod tests;
mod typed;
mod write;

use log::{Notes, RemovalLog, RemovalNote, Trigger, LOG_ENUMERATE_LIMIT};

pub use codec::{DecodedEntries, EncodedEntries};
pub use read::Iter;
