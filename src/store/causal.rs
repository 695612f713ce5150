//! The machinery shared by every replicated value: dot stores, write stamps, limits,
//! conflict reports and the compact encoding of dots.
//!
//! Every value in concord is a *dot store*: its elements are tagged with the [`Dot`] of
//! the write that made them, and a [`CausalContext`] remembers every dot ever seen. A
//! dot that the context has seen but the store no longer holds was overwritten or
//! removed; that is all a removal leaves behind, so there are no tombstones. Joining two
//! stores keeps an element if both sides hold it, or if the other side has never seen
//! its dot.
//!
//! Standalone values ([`MvRegister`](crate::MvRegister),
//! [`LwwRegister`](crate::LwwRegister), [`PnCounter`](crate::PnCounter),
//! [`OrMap`](crate::OrMap)) carry their own context. Inside an `OrMap`, values share
//! the map's context and keep theirs empty, so a nested value costs no clock of its own.
//!
//! You only need this module to nest a type of your own inside an `OrMap`: implement
//! [`DotStore`] for it.

use std::collections::HashMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::clock::{CausalContext, VectorClock};
use crate::error::{Error, Result};
use crate::hlc::Timestamp;
use crate::id::{Dot, ReplicaId};

/// What a register can hold: any cloneable, comparable, serializable value.
///
/// Implemented automatically for every type with those traits. Values travel as JSON,
/// so they must round-trip through it: the typed writes (a register's `write`, a map's
/// `write`, `collapse`) refuse a value holding a NaN or an infinite float, or
/// a map keyed by something other than strings and integers (a `BTreeMap` inside the
/// value: an [`OrMap`](crate::OrMap)'s own keys may be of any shape, see
/// [`Key`](crate::map::Key)), with [`Error::Unencodable`]. Inside an
/// [`OrMap::update`](crate::OrMap::update) closure the in-op setters (`assign`,
/// `update_in`) check too: a refused value is not stored and the write fails with the
/// same error (see [`Op::check`]). So every value a write accepts encodes, and
/// [`Message::encode`](crate::sync::Message::encode) cannot fail on a state of the
/// library's types.
pub trait Data: Clone + PartialEq + fmt::Debug + Serialize + DeserializeOwned {}

impl<T: Clone + PartialEq + fmt::Debug + Serialize + DeserializeOwned> Data for T {}

/// The largest event counter a replica may issue or a peer may name. Far beyond any
/// real history (2^62 events), and it keeps `counter + 1` from ever overflowing.
pub const MAX_COUNTER: u64 = 1 << 62;

/// The stamp of one local write: its hybrid-logical-clock time, and the dots it tags
/// new elements with.
///
/// Every element a write creates gets a dot of its own from [`Op::tag`] (one write may
/// fill several keys of a nested map, and each element must be named by exactly one
/// dot). The first dot, [`Op::dot`], also names the write itself: a write that only
/// removes still takes it, so version vectors see the removal.
///
/// An `Op` is handed out by reference, only inside a write, and is deliberately not
/// `Clone`: a copy would issue the same dots a second time, for different elements.
///
/// ```compile_fail,E0277
/// fn clone_it<T: Clone>(_: &T) {}
/// let mut hlc = concord::Hlc::new(concord::ReplicaId::from_u128(1), concord::ManualClock::new(0));
/// let mut map: concord::OrMap<String, concord::PnCounter> = concord::OrMap::new();
/// map.update("k".into(), &mut hlc, |counter, op| {
///     clone_it(op); // error[E0277]: `Op: Clone` is not satisfied
///     counter.add(op, 1);
/// })?;
/// # Ok::<(), concord::Error>(())
/// ```
#[derive(Debug, PartialEq, Eq)]
pub struct Op {
    first: Dot,
    next: std::cell::Cell<u64>,
    ts: Timestamp,
    /// Why a value offered to this write was not stored (the first refusal).
    refused: std::cell::RefCell<Option<String>>,
}

impl Op {
    /// A stamp whose first dot is `first`. The dot and the timestamp must come from
    /// the same replica.
    ///
    pub(crate) fn new(first: Dot, ts: Timestamp) -> Self {
        debug_assert_eq!(
            first.replica(),
            ts.replica(),
            "dot and timestamp from different replicas"
        );
        Op {
            first,
            next: std::cell::Cell::new(first.counter()),
            ts,
            refused: std::cell::RefCell::new(None),
        }
    }

    /// Checks that `value` (or a key) can travel: JSON has no NaN or infinities, and a
    /// map inside a value must have string or integer keys. Returns true if it may be
    /// stored. On false, the caller must not store it, and the write this op stamps
    /// fails with [`Error::Unencodable`] once its closure returns
    /// ([`OrMap::update`](crate::OrMap::update) and [`OrMap::apply`](crate::OrMap::apply)).
    /// The library's in-op setters (`assign`, `update_in`) call it; call it in
    /// the in-op methods of a value type of your own that store user data.
    ///
    /// ```
    /// use concord::{Error, Hlc, LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut gauges: OrMap<String, LwwRegister<f64>> = OrMap::new();
    /// let refused = gauges.update("load".into(), &mut hlc, |reg, op| reg.assign(op, f64::NAN));
    /// assert!(matches!(refused, Err(Error::Unencodable { .. })));
    /// assert!(gauges.is_empty()); // the NaN was not stored
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn check<T: Serialize + ?Sized>(&self, value: &T) -> bool {
        match crate::probe::check_value(value) {
            Ok(()) => true,
            Err(e) => {
                let mut refused = self.refused.borrow_mut();
                if refused.is_none() {
                    *refused = Some(match e {
                        Error::Unencodable { reason } => reason,
                        other => other.to_string(),
                    });
                }
                false
            }
        }
    }

    /// The first refusal of [`Op::check`], as the write's error.
    pub(crate) fn refusal(&self) -> Option<Error> {
        self.refused
            .borrow_mut()
            .take()
            .map(|reason| Error::Unencodable { reason })
    }

    /// The write's own dot (the first it issues).
    pub fn dot(&self) -> Dot {
        self.first
    }

    /// A fresh dot for one new element: the write's own dot the first time, the next
    /// counters after that.
    pub fn tag(&self) -> Dot {
        let n = self.next.get();
        self.next.set(n + 1);
        Dot::new(self.first.replica(), n)
    }

    /// The last counter this write used (its own dot's if it tagged nothing).
    pub(crate) fn last_counter(&self) -> u64 {
        (self.next.get().saturating_sub(1)).max(self.first.counter())
    }

    /// True if `dot` was issued by this write.
    pub(crate) fn issued(&self, dot: Dot) -> bool {
        dot.replica() == self.first.replica()
            && (self.first.counter()..=self.last_counter()).contains(&dot.counter())
    }

    /// Records every dot this write issued in `ctx`.
    pub(crate) fn record(&self, ctx: &mut CausalContext) {
        ctx.insert_range(
            self.first.replica(),
            self.first.counter(),
            self.last_counter(),
        );
    }

    /// The write's hybrid-logical-clock time.
    pub fn timestamp(&self) -> Timestamp {
        self.ts
    }
}

/// Limits applied to state received from peers (see [`Crdt::try_merge`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The most concurrent siblings one register may hold after a merge. A received
    /// state that would exceed it is refused whole by [`Crdt::try_merge`]; the
    /// [sync engine](crate::sync) *contains* such a key instead
    /// ([`Crdt::try_merge_containing`]): it takes everything else and sets that key's
    /// new writes aside until a write that saw its siblings collapses it (for example
    /// [`OrMap::collapse`](crate::OrMap::collapse)). See the guide's "Hot keys".
    pub max_siblings: usize,
    /// The most entries (keys, at every level of nesting, plus register siblings and
    /// counter segments) one received state may hold. A replica that is new or back
    /// from a long partition receives the whole state in one message, so this must
    /// exceed the state's size (as must the engine's `max_message_bytes`): one
    /// key over the limit blocks that catch-up. The default, 16 million, fits about 8
    /// million conflict-free register keys.
    pub max_entries: usize,
    /// The most ranges one received causal context may hold.
    pub max_context_ranges: usize,
    /// How far past what a writer has reported issuing (in its own messages to the
    /// [sync engine](crate::sync)) a delta from another peer may claim that writer's
    /// dots without their writes. Claims further ahead would silence the writer's
    /// future writes; a delta making them is skipped, not merged (see the guide's
    /// "Hostile peers"). Honest relays run ahead of a writer's own report only by
    /// what the relay saw of it first (its writes lost in a crash, say). Default 65,536.
    #[serde(default = "default_claim_ahead")]
    pub max_claim_ahead: u64,
    /// The most gaps that claims no writer vouches for may leave in the
    /// [sync engine](crate::sync)'s context, in all: ranges of a writer's entry that
    /// start past what the writer has reported issuing (all but the first, for a
    /// writer that does not report: a retired incarnation, a node reached only through
    /// relays, an invented one). Gaps below a report close once the writer's own dots
    /// arrive; these may never close, and every message would repeat them. A delta
    /// that would leave more is skipped, not merged. In a hub-and-spoke layout with
    /// large histories a spoke's catch-up may need more (the removed dots of writers
    /// behind the hub arrive before the writes between them); raise it there.
    /// Default 4096.
    #[serde(default = "default_relayed_gaps")]
    pub max_relayed_gaps: usize,
}

fn default_claim_ahead() -> u64 {
    1 << 16
}

fn default_relayed_gaps() -> usize {
    4096
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_siblings: 64,
            max_entries: 16_000_000,
            max_context_ranges: 16_000_000,
            max_claim_ahead: default_claim_ahead(),
            max_relayed_gaps: default_relayed_gaps(),
        }
    }
}

/// One key that [`Crdt::try_merge_containing`] set aside: taking the received entry
/// would have left more siblings in it than [`Limits::max_siblings`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAside<K> {
    /// The key.
    pub key: K,
    /// How many siblings its largest register would have held.
    pub siblings: usize,
    /// The received entry's dots that this replica had not seen: the writes it did
    /// not take, and does not claim to have seen (so the sender sends them again).
    pub dots: CausalContext,
}

/// What a join did, from the receiving side's point of view; merges turn it into an
/// [`Outcome`](crate::Outcome).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinEffect {
    /// An element of ours was removed (the other side had seen it and dropped it).
    pub killed: bool,
    /// An element of theirs was not taken (we had seen it and dropped it).
    pub discarded: bool,
}

impl JoinEffect {
    /// Both effects of `self` and `other`.
    pub fn or(self, other: JoinEffect) -> JoinEffect {
        JoinEffect {
            killed: self.killed || other.killed,
            discarded: self.discarded || other.discarded,
        }
    }
}

/// A value that can live inside a causal container (an [`OrMap`](crate::OrMap)).
///
/// The methods take the causal contexts explicitly because a nested value shares its
/// container's context. All of the library's types implement it; implement it for your
/// own type to nest it (the law kit checks the result).
pub trait DotStore: Clone + Default + PartialEq + fmt::Debug {
    /// The borrowed form written to the wire (dots as indices into a replica table).
    /// Its `Serialize` must not fail for any state the type's methods build (check
    /// stored user values with [`Op::check`]): the wire encoder relies on it.
    type Encoded<'a>: Serialize
    where
        Self: 'a;
    /// The owned form read from the wire, validated by [`DotStore::decode`].
    type Decoded: DeserializeOwned;

    /// True if the store holds no element (never written, or everything removed).
    fn is_bottom(&self) -> bool;

    /// Calls `f` with the dot of every element held, at every level of nesting.
    fn for_each_dot(&self, f: &mut dyn FnMut(Dot));

    /// True if `self` and `other` hold the same elements, so that the standalone
    /// map's join leaves the value as it is without joining it (between replicas in
    /// sync, most of a full state). The default compares the dots each side holds,
    /// which suffices for a type whose join adds or removes whole elements. A type
    /// whose join also merges two forms of one element must override it to answer
    /// whether the join would change anything (and may override it to answer
    /// faster), comparing whatever that join merges: a counter
    /// compares its folds' provenance, and a map its values key by key, so that a
    /// counter inside does too. The library's registers compare their sorted dots
    /// in place.
    fn same_dots(&self, other: &Self) -> bool {
        let mut ours = Vec::new();
        self.for_each_dot(&mut |d| ours.push(d));
        let mut theirs = Vec::new();
        other.for_each_dot(&mut |d| theirs.push(d));
        ours.sort_unstable();
        theirs.sort_unstable();
        ours == theirs
    }

    /// Joins `other` (whose context is `other_ctx`) into `self` (whose context is
    /// `ctx`): an element survives if both sides hold it or the other side never saw
    /// its dot.
    fn join(&mut self, ctx: &CausalContext, other: Self, other_ctx: &CausalContext) -> JoinEffect;

    /// Removes every element whose dot `ctx` has seen (the join with an empty store);
    /// returns true if anything was removed.
    fn kill(&mut self, ctx: &CausalContext) -> bool;

    /// The part of the store whose dots satisfy `keep` (empty containers dropped).
    fn filtered(&self, keep: &dyn Fn(Dot) -> bool) -> Self;

    /// How many sibling values the largest register inside would hold after joining
    /// `other`, computed without changing anything.
    fn joined_siblings(
        &self,
        ctx: &CausalContext,
        other: &Self,
        other_ctx: &CausalContext,
    ) -> usize;

    /// The number of elements (keys, siblings, segments) at every level of nesting.
    fn size(&self) -> usize;

    /// The newest hybrid-logical-clock timestamp held, if the type keeps any.
    fn max_timestamp(&self) -> Option<Timestamp> {
        None
    }

    /// True if `self` and `other` show a reader the same single value, whatever dots
    /// tag it (several masters that resolved one conflict alike and wrote the result
    /// back): their join is no race to report. The default is `false`.
    fn same_view(&self, other: &Self) -> bool {
        let _ = other;
        false
    }

    /// True if joining `other` (context `other_ctx`) into `self` (context `ctx`)
    /// resolves a race worth reporting: each side holds an element the other never
    /// saw, and they do not show the same single value. The default suits registers;
    /// a counter never races (concurrent increments add up and nothing is lost), and a
    /// map races where one of its keys does.
    fn races(&self, ctx: &CausalContext, other: &Self, other_ctx: &CausalContext) -> bool {
        let mut ours_unseen = false;
        self.for_each_dot(&mut |d| ours_unseen |= !other_ctx.contains(d));
        let mut theirs_unseen = false;
        other.for_each_dot(&mut |d| theirs_unseen |= !ctx.contains(d));
        ours_unseen && theirs_unseen && !self.same_view(other)
    }

    /// Calls `f(folded, fold)` for every counter fold held, at every level of
    /// nesting: the newest dot a fold folded, and the fold's own dot (see
    /// [`DotStore::fold`]). A map uses it to find the fold a removal of a folded dot
    /// reaches. No-op for types without segments.
    fn for_each_fold(&self, f: &mut dyn FnMut(Dot, Dot)) {
        let _ = f;
    }

    /// True if every value of this type reads back from the binary wire form exactly
    /// as it was written, whatever it holds, so that [`wire::encode`](crate::wire::encode)
    /// can skip decoding a message back to check it. The default, `false`, keeps the
    /// check (a value type of your own may need a self-describing format, see
    /// [`wire`](crate::wire)); the library's registers answer `true` for strings,
    /// booleans, characters, integers and byte vectors, its counters always, and its
    /// maps when their keys are such a type and their values answer `true`.
    fn binary_faithful() -> bool
    where
        Self: Sized,
    {
        false
    }

    /// True if the store may hold counter segments that [`DotStore::fold`] can fold
    /// (a counter, or a map that may hold one). Maps of other values skip the folding
    /// work on every write.
    const FOLDS: bool = false;

    /// Folds the segments of `op`'s replica that `stable` covers (the dots every peer
    /// is known to hold, and after which no removal of part of them made before that
    /// acknowledgement can still arrive) into one segment with a dot of its own,
    /// issued by `op`, in every counter inside. The fold remembers the newest plain
    /// (not itself folded) dot it folded, so that a removal made after the
    /// acknowledgement, which holds that dot dead and never saw the fold, kills the
    /// fold too. Called by the map around a write (whose own segment is not folded);
    /// a no-op for types without segments.
    fn fold(&mut self, op: &Op, stable: &CausalContext) {
        let _ = (op, stable);
    }

    /// For the counter inside with the most segments of `me`: how many it holds, and
    /// how many of them `stable` covers (see [`DotStore::fold`]). `(0, 0)` for types
    /// without segments.
    fn foldable(&self, me: ReplicaId, stable: &CausalContext) -> (usize, usize) {
        let _ = (me, stable);
        (0, 0)
    }

    /// The wire form, registering every replica it mentions in `table`.
    fn encode<'a>(&'a self, table: &mut ReplicaTable) -> Self::Encoded<'a>;

    /// Rebuilds a store from its wire form; fails on a replica index out of range or
    /// an invalid dot.
    fn decode(decoded: Self::Decoded, replicas: &[ReplicaId]) -> Result<Self>;
}

/// A map keyed by dots, hashed with a randomly seeded hasher (foldhash): dots come
/// from peers, and an unseeded hash would let a peer choose dots that all share a
/// bucket.
pub(crate) type DotMap<V> = HashMap<Dot, V, foldhash::fast::RandomState>;

/// A set of dots.
pub(crate) type DotSet = std::collections::HashSet<Dot, foldhash::fast::RandomState>;

/// The replicas mentioned by a state, numbered in order of first appearance so that the
/// wire form names each one once.
#[derive(Debug, Default)]
pub struct ReplicaTable {
    ids: Vec<ReplicaId>,
    index: HashMap<ReplicaId, u32>,
}

impl ReplicaTable {
    /// Returns the index of `replica`, adding it if new.
    pub fn index(&mut self, replica: ReplicaId) -> u32 {
        if let Some(&i) = self.index.get(&replica) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.ids.push(replica);
        self.index.insert(replica, i);
        i
    }

    /// The encoded form of a dot: `(replica index, counter)`.
    pub fn dot(&mut self, dot: Dot) -> (u32, u64) {
        (self.index(dot.replica()), dot.counter())
    }

    /// The replicas, by index.
    pub fn into_ids(self) -> Vec<ReplicaId> {
        self.ids
    }
}

/// Checks a received replica table: each replica named once (a repeated id would let
/// one replica's ranges arrive under two indices, out of order).
pub(crate) fn check_table(replicas: &[ReplicaId]) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(replicas.len());
    for r in replicas {
        if !seen.insert(*r) {
            return Err(Error::InvalidMessage {
                reason: format!("replica {r} appears twice in a replica table"),
            });
        }
    }
    Ok(())
}

/// Decodes a `(replica index, counter)` pair against a replica table.
pub fn decode_dot(replicas: &[ReplicaId], idx: u32, counter: u64) -> Result<Dot> {
    let replica = replicas
        .get(idx as usize)
        .copied()
        .ok_or_else(|| Error::InvalidMessage {
            reason: format!(
                "replica index {idx} out of range ({} replicas)",
                replicas.len()
            ),
        })?;
    let dot = Dot::new(replica, counter);
    if counter == 0 {
        return Err(Error::InvalidDot {
            dot,
            reason: "counters start at 1",
        });
    }
    if counter > MAX_COUNTER {
        return Err(Error::InvalidDot {
            dot,
            reason: "counter beyond the largest a replica may issue",
        });
    }
    Ok(dot)
}

/// The causal context on the wire: for each replica (by table index), its ranges.
pub(crate) type EncodedContext = Vec<(u32, Vec<Span>)>;

/// One range of counters on the wire, relative to the end of the previous range of
/// the same replica: a lone counter as one number (its distance from the previous
/// range), a run as `[distance, length - 1]`. Removals leave many lone dots in a
/// delta's context; this keeps each to a few bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Span {
    One(u64),
    Run(u64, u64),
}

/// In the binary form (not self-describing) a span is one varint `distance << 1 | run`,
/// followed by `length - 1` for a run: a lone counter costs a byte or two.
impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            // A distance past 2^63 (in a context built by hand: a decoder refuses any
            // counter past MAX_COUNTER, 2^62) would lose its top bit in the shift:
            // refused, so that it is written in JSON instead (see wire::encode).
            let (Span::One(gap) | Span::Run(gap, _)) = *self;
            if gap >> 63 != 0 {
                return Err(serde::ser::Error::custom(format!(
                    "a causal context distance of {gap} has no binary form"
                )));
            }
            return match *self {
                Span::One(gap) => s.serialize_u64(gap << 1),
                Span::Run(gap, extra) => (gap << 1 | 1, extra).serialize(s),
            };
        }
        match *self {
            Span::One(gap) => s.serialize_u64(gap),
            Span::Run(gap, extra) => (gap, extra).serialize(s),
        }
    }
}

/// Reads the binary form of a span: the tagged distance, then the length of a run.
struct BinarySpan;

impl<'de> serde::de::Visitor<'de> for BinarySpan {
    type Value = Span;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tagged distance, and a length for a run")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Span, A::Error> {
        use serde::de::Error as _;
        let tagged: u64 = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(0, &self))?;
        if tagged & 1 == 0 {
            return Ok(Span::One(tagged >> 1));
        }
        let extra = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(1, &self))?;
        Ok(Span::Run(tagged >> 1, extra))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct SpanVisitor;
        impl<'de> serde::de::Visitor<'de> for SpanVisitor {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a [distance, length] pair")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<Span, E> {
                Ok(Span::One(n))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Span, A::Error> {
                use serde::de::Error as _;
                let gap = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let extra = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(3, &self));
                }
                Ok(Span::Run(gap, extra))
            }
        }
        if !d.is_human_readable() {
            // A tuple of up to two elements: the second is read only for a run.
            return d.deserialize_tuple(2, BinarySpan);
        }
        d.deserialize_any(SpanVisitor)
    }
}

pub(crate) fn encode_context(ctx: &CausalContext, table: &mut ReplicaTable) -> EncodedContext {
    ctx.ranges()
        .map(|(r, ranges)| (table.index(r), spans(ranges)))
        .collect()
}

/// One replica's ranges (sorted, disjoint, non-adjacent), each relative to the last.
pub(crate) fn spans(ranges: &[(u64, u64)]) -> Vec<Span> {
    let mut previous = 0;
    ranges
        .iter()
        .map(|&(lo, hi)| {
            let gap = lo - previous;
            previous = hi;
            if lo == hi {
                Span::One(gap)
            } else {
                Span::Run(gap, hi - lo)
            }
        })
        .collect()
}

/// The elements of a dot store as read from the wire (register siblings, counter
/// segments): a list whose every element is charged to the decoding budget as one
/// entry of the state while it is read, so a message past
/// [`Limits::max_entries`] is refused before more is allocated. The library's stores
/// use it as their [`DotStore::Decoded`] form; a store of your own may too.
///
/// ```
/// use concord::causal::DecodedElements;
///
/// let read: DecodedElements<(u32, u64, i64)> = serde_json::from_str("[[0, 1, 5]]")?;
/// assert_eq!(read.into_vec(), vec![(0, 1, 5)]);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedElements<E>(Vec<E>);

impl<E> DecodedElements<E> {
    /// The elements, in wire order.
    pub fn into_vec(self) -> Vec<E> {
        self.0
    }
}

impl<E> IntoIterator for DecodedElements<E> {
    type Item = E;
    type IntoIter = std::vec::IntoIter<E>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'de, E: Deserialize<'de>> Deserialize<'de> for DecodedElements<E> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct ElementsVisitor<E>(std::marker::PhantomData<E>);
        impl<'de, E: Deserialize<'de>> serde::de::Visitor<'de> for ElementsVisitor<E> {
            type Value = DecodedElements<E>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of elements")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out =
                    Vec::with_capacity(crate::wire::budget::reserve(seq.size_hint()).min(64));
                while let Some(e) = seq.next_element()? {
                    crate::wire::budget::entry().map_err(crate::wire::budget::custom)?;
                    out.push(e);
                }
                Ok(DecodedElements(out))
            }
        }
        d.deserialize_seq(ElementsVisitor(std::marker::PhantomData))
    }
}

/// A causal context as read from the wire, before its replica indices are resolved
/// against the table: for each index, its ranges, made absolute and checked (sorted,
/// disjoint, non-adjacent, counters from 1 to [`MAX_COUNTER`]) as they are read, and
/// charged to the decoding budget one by one (see `wire::budget`), so no intermediate
/// list of spans is ever built.
#[derive(Debug, Default)]
pub(crate) struct DecodedContext(Vec<(u32, Vec<(u64, u64)>)>);

impl DecodedContext {
    /// The context, with each index resolved against the replica table.
    pub(crate) fn resolve(self, replicas: &[ReplicaId]) -> Result<CausalContext> {
        let mut named = vec![false; replicas.len()];
        let mut ctx = CausalContext::new();
        for (idx, ranges) in self.0 {
            let Some(seen) = named.get_mut(idx as usize) else {
                return Err(Error::InvalidMessage {
                    reason: format!(
                        "replica index {idx} out of range ({} replicas)",
                        replicas.len()
                    ),
                });
            };
            if std::mem::replace(seen, true) {
                return Err(Error::InvalidMessage {
                    reason: format!("replica index {idx} appears twice in a causal context"),
                });
            }
            ctx.set_ranges(replicas[idx as usize], ranges);
        }
        Ok(ctx)
    }
}

impl<'de> Deserialize<'de> for DecodedContext {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct ContextVisitor;
        impl<'de> serde::de::Visitor<'de> for ContextVisitor {
            type Value = DecodedContext;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a causal context: [replica index, spans] pairs")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<DecodedContext, A::Error> {
                let mut out = Vec::new();
                let mut counted = 0usize;
                while let Some(replica) = seq.next_element_seed(ReplicaSpans {
                    counted: &mut counted,
                })? {
                    out.push(replica);
                    crate::wire::budget::replica(out.len()).map_err(crate::wire::budget::custom)?;
                }
                Ok(DecodedContext(out))
            }
        }
        d.deserialize_seq(ContextVisitor)
    }
}

/// One `[replica index, spans]` pair of a context on the wire.
struct ReplicaSpans<'a> {
    /// Ranges of the whole context read so far.
    counted: &'a mut usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for ReplicaSpans<'_> {
    type Value = (u32, Vec<(u64, u64)>);
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        if !d.is_human_readable() {
            // A tuple: the binary form writes no length for it.
            return d.deserialize_tuple(2, self);
        }
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ReplicaSpans<'_> {
    type Value = (u32, Vec<(u64, u64)>);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a [replica index, spans] pair")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let idx: u32 = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(0, &self))?;
        let ranges = seq
            .next_element_seed(Spans {
                counted: &mut *self.counted,
            })?
            .ok_or_else(|| A::Error::invalid_length(1, &"a [replica index, spans] pair"))?;
        if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            return Err(A::Error::invalid_length(
                3,
                &"a [replica index, spans] pair",
            ));
        }
        Ok((idx, ranges))
    }
}

/// One replica's spans, turned into absolute ranges as they are read.
pub(crate) struct Spans<'a> {
    /// Ranges of the whole context read so far.
    pub(crate) counted: &'a mut usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for Spans<'_> {
    type Value = Vec<(u64, u64)>;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Spans<'_> {
    type Value = Vec<(u64, u64)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of spans")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut previous = 0u64;
        while let Some(span) = seq.next_element::<Span>()? {
            *self.counted += 1;
            crate::wire::budget::range(*self.counted).map_err(crate::wire::budget::custom)?;
            let (gap, extra) = match span {
                Span::One(gap) => (gap, 0),
                Span::Run(gap, extra) => (gap, extra),
            };
            let lo = previous.checked_add(gap);
            let hi = lo.and_then(|lo| lo.checked_add(extra));
            let (Some(lo), Some(hi)) = (lo, hi) else {
                return Err(crate::wire::budget::custom(
                    "causal context range overflows",
                ));
            };
            if gap == 0
                || (previous > 0 && gap < 2)
                || (matches!(span, Span::Run(..)) && extra == 0)
            {
                return Err(crate::wire::budget::custom(
                    "causal context ranges must be sorted, disjoint and non-adjacent",
                ));
            }
            if hi > MAX_COUNTER {
                return Err(crate::wire::budget::custom(format!(
                    "counter {hi} beyond the largest a replica may issue"
                )));
            }
            out.push((lo, hi));
            previous = hi;
        }
        Ok(out)
    }
}

/// One concurrency resolved by a merge: both sides had written to `key` without seeing
/// each other's write.
///
/// A *delete-vs-update* race is reported too: a replica removed `key` from an
/// [`OrMap`](crate::OrMap) while this replica held an update of it that the remover
/// had not seen (made without seeing the removal: an overwrite of the removed value, an
/// increment of a removed counter, a write into a removed nested map). The update
/// survives (a map is update-wins); `theirs` is then the empty value, `theirs_clock`
/// the remover's history (its entry for the remover's replica is the removal's own
/// dot, see [`OrMap::removal_notes`](crate::OrMap::removal_notes); the removers'
/// histories joined when one merge brings several removals of the key, which it
/// reports once) and [`Conflict::is_removal`] is true, so the application learns that
/// a delete was overridden. It is reported by every replica that held the update when
/// it first learned of the removal (always the replica that made the update, within
/// the limits on notes), at most once per replica per removal; see the guide's
/// "Conflicts in maps".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conflict<K, V> {
    /// The key both sides wrote (`()` for a standalone register or counter).
    pub key: K,
    /// Our value before the merge.
    pub ours: V,
    /// The causal history of our value: the newest dot of each replica it holds.
    pub ours_clock: VectorClock,
    /// The value the peer sent: its whole value in a full state, only the part this
    /// replica lacked in a delta (a counter's new segments, say, not its total).
    pub theirs: V,
    /// The causal history of their value.
    pub theirs_clock: VectorClock,
    /// The merged value, which every replica will converge to.
    pub resolved: V,
}

impl<K, V: DotStore> Conflict<K, V> {
    /// True for a delete-vs-update race: the peer's side is a removal (`theirs` is
    /// empty) and `resolved` is the update that survived it.
    ///
    /// ```
    /// use concord::{Crdt, Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let mut a_hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut b_hlc = Hlc::new(ReplicaId::from_u128(2), ManualClock::new(0));
    /// let mut a: OrMap<String, PnCounter> = OrMap::new();
    /// a.increment("apples".into(), 3, &mut a_hlc)?;
    /// let mut b = a.clone();
    /// // A removes the line while B, unaware, adds one more.
    /// let removal = a.remove("apples", &mut a_hlc)?;
    /// b.increment("apples".into(), 1, &mut b_hlc)?;
    ///
    /// let mut conflicts = Vec::new();
    /// b.try_merge(removal, &Default::default(), &mut conflicts)?;
    /// assert_eq!(b.count("apples"), 1); // the concurrent update survives, alone
    /// assert_eq!(conflicts.len(), 1);
    /// assert!(conflicts[0].is_removal());
    /// assert_eq!(conflicts[0].resolved.value(), 1);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn is_removal(&self) -> bool {
        self.theirs.is_bottom() && !self.resolved.is_bottom()
    }
}

/// Where a merge sends the concurrencies it resolves.
///
/// `()` discards them at no cost (the merge does not even look for them);
/// `Vec<Conflict<K, V>>` collects them.
pub trait ConflictSink<K, V> {
    /// False for sinks that discard everything: the merge then skips the detection.
    const ACTIVE: bool;
    /// Receives one resolved concurrency.
    fn report(&mut self, conflict: Conflict<K, V>);
}

impl<K, V> ConflictSink<K, V> for () {
    const ACTIVE: bool = false;
    fn report(&mut self, _: Conflict<K, V>) {}
}

impl<K, V> ConflictSink<K, V> for Vec<Conflict<K, V>> {
    const ACTIVE: bool = true;
    fn report(&mut self, conflict: Conflict<K, V>) {
        self.push(conflict);
    }
}

/// The newest dot of each replica among `dots`, as a vector clock.
pub(crate) fn clock_of<S: DotStore>(store: &S) -> VectorClock {
    let mut clock = VectorClock::new();
    store.for_each_dot(&mut |d| clock.observe(d));
    clock
}

/// True if `store` holds a dot that `ctx` has not seen.
pub(crate) fn has_unseen<S: DotStore>(store: &S, ctx: &CausalContext) -> bool {
    let mut unseen = false;
    store.for_each_dot(&mut |d| unseen |= !ctx.contains(d));
    unseen
}

/// True if something of `store` survives [`DotStore::kill`] by `ctx`: an element
/// whose dot `ctx` lacks, unless it is a counter fold of a dot `ctx` holds (a fold
/// is bookkeeping: it dies with what it folded). Without cloning the store.
pub(crate) fn survives_kill<S: DotStore>(store: &S, ctx: &CausalContext) -> bool {
    if !S::FOLDS {
        return has_unseen(store, ctx);
    }
    let mut dying = Vec::new();
    store.for_each_fold(&mut |folded, fold| {
        if ctx.contains(folded) {
            dying.push(fold);
        }
    });
    dying.sort_unstable();
    let mut survives = false;
    store.for_each_dot(&mut |d| {
        survives |= !ctx.contains(d) && dying.binary_search(&d).is_err();
    });
    survives
}

/// Applies a local write to a store that has its own context and returns the part of
/// the store tagged with the new dot (the caller adds the delta's context).
pub(crate) fn local_write<S: DotStore>(
    store: &mut S,
    ctx: &mut CausalContext,
    op: &Op,
    write: impl FnOnce(&mut S, &Op),
) -> S {
    write(store, op);
    op.record(ctx);
    store.filtered(&|d| op.issued(d))
}

/// Where a chunked catch-up stands (see [`Crdt::delta_chunk`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkCursor {
    /// 0: removals from the log; 1: removed dots; 2: entries; 3: done.
    pub(crate) phase: u8,
    /// The sequence number of the next log entry to look at.
    pub(crate) log: u64,
    /// The last dot looked at in phase 1.
    pub(crate) dot: Option<Dot>,
    /// The next entry position in phase 2.
    pub(crate) pos: usize,
    /// The peer is below the removal log's floor: every removed dot it has seen goes
    /// too.
    pub(crate) full: bool,
    /// The sequence number of the next removal note to look at (phase 0).
    pub(crate) note: u64,
    /// Phase 0's second pass: the notes that another held note supersedes, sent
    /// after all the others.
    pub(crate) superseded_notes: bool,
    /// In phase 2, the last dot sent of the entry at `pos`, when that entry is larger
    /// than a piece (it goes in several, in dot order).
    pub(crate) part: Option<Dot>,
    /// Below the floor: a dot of the floor the peer lacks, held back from every piece
    /// until phase 1 has sent every removed dot (see `OrMap::delta_chunk`).
    pub(crate) witness: Option<Dot>,
    /// The context of the pieces of phase 0 sent so far (at most the removal log's
    /// triggers and dead dots and the notes' dots; emptied when phase 0 ends).
    pub(crate) sent: CausalContext,
}

impl ChunkCursor {
    /// True once the last piece has been produced.
    pub fn is_done(&self) -> bool {
        self.phase >= 3
    }

    /// Marks the catch-up as complete (for implementations of
    /// [`Crdt::delta_chunk`] that send everything at once).
    pub fn finish(&mut self) {
        self.phase = 3;
    }
}

/// A top-level replicated state: what the sync engine replicates.
///
/// Implemented by every standalone type of the library; the usual choice is an
/// [`OrMap`](crate::OrMap).
pub trait Crdt:
    crate::Resolver + Clone + PartialEq + fmt::Debug + Serialize + DeserializeOwned
{
    /// What a conflict report names (`K` for a map, `()` for a register or counter).
    /// Ordered, so that the engine can list the keys it holds contained.
    type Key: Clone + fmt::Debug + Ord;
    /// The value type reported in conflicts.
    type Value: Clone + fmt::Debug;

    /// Every dot this state has seen.
    fn context(&self) -> &CausalContext;

    /// True if this state holds a counter fold (see [`DotStore::fold`]): a message
    /// carrying one goes at protocol version 3 at the least, where a fold keeps its
    /// provenance. The default is `false`.
    fn holds_fold(&self) -> bool {
        false
    }

    /// True if every state of this type reads back from the binary wire form exactly
    /// as it was written (see [`DotStore::binary_faithful`]): [`wire::encode`](crate::wire::encode)
    /// then writes a message without decoding it back to check. The default, `false`,
    /// keeps the check.
    fn binary_faithful() -> bool
    where
        Self: Sized,
    {
        false
    }

    /// Everything a peer whose state has seen exactly `clock` lacks, removals included.
    /// Merging the result into such a state equals merging the whole of `self`.
    ///
    /// The peer's clock must be honest: it has received everything the clock covers
    /// *with its effects*. States built from merged states and `delta_since` results
    /// always are. Mutator deltas merged out of causal order (a later write's delta
    /// before an earlier one's) can leave a replica whose clock covers a write it
    /// never saw, and a delta cannot repair that; a full-state merge does. The
    /// [sync engine](crate::sync) replicates with `delta_since` only, and skips a
    /// delta computed against more than the receiver holds.
    fn delta_since(&self, clock: &VectorClock) -> Self {
        self.delta_since_context(&CausalContext::from(clock))
    }

    /// Everything a peer whose state has seen exactly the dots of `seen` lacks,
    /// removals included: [`Crdt::delta_since`] for a peer whose context has gaps (it
    /// is sent only the dots it misses, not everything past its first gap). The same
    /// honesty rule applies: the peer holds every dot of `seen` with its effects.
    fn delta_since_context(&self, seen: &CausalContext) -> Self;

    /// What to send a peer that acknowledged `acked` and has since been sent
    /// everything up to `offered` (which may still be in flight, or lost): the entries
    /// and dots beyond `offered`, and every removal the peer may not know of by what it
    /// *acknowledged*, so that a lost earlier message cannot leave the peer holding a
    /// value a later one removed. The default sends the delta since `acked`.
    fn delta_since_offered(&self, offered: &CausalContext, acked: &CausalContext) -> Self {
        let _ = offered;
        self.delta_since_context(acked)
    }

    /// The next piece of a catch-up too large for one message: a part of
    /// [`Crdt::delta_since_context`]`(seen)` restricted to the dots of `upto` (what this
    /// replica held when the catch-up started), holding about `max_items` entries or
    /// context ranges, starting where `cursor` stands and moving it on. Each piece is
    /// a valid state on its own (its entries and exactly the dots they hold, plus dots
    /// removed here); applied in order, the pieces carry everything the delta would.
    /// Removals a peer must learn before the writes that caused them come first.
    ///
    /// The default sends the whole delta as one piece; [`OrMap`](crate::OrMap) splits.
    fn delta_chunk(
        &self,
        seen: &CausalContext,
        upto: &CausalContext,
        cursor: &mut ChunkCursor,
        max_items: usize,
    ) -> Self {
        let _ = (upto, max_items);
        cursor.finish();
        self.delta_since_context(seen)
    }

    /// Checks a received state against `limits` and its own consistency (every held dot
    /// is in its context, no dot tags two elements). Changes nothing.
    fn validate(&self, limits: &Limits) -> Result<()>;

    /// Calls `f` with the dot of every element held, at every depth: the dots of the
    /// context that an element *backs*. The [sync engine](crate::sync) uses it to tell
    /// a received context's claims that come with their writes from claims that come
    /// alone (see the guide's "Hostile peers"). The default calls nothing: every claim
    /// of a type that does not say counts as unbacked, which only delays relayed
    /// writes until their writer reports them itself. Every type of the library says.
    fn for_each_element_dot(&self, f: &mut dyn FnMut(Dot)) {
        let _ = f;
    }

    /// Validates `other`, then merges it, reporting every concurrency resolved into
    /// `sink`. On error `self` is left exactly as it was.
    fn try_merge<C: ConflictSink<Self::Key, Self::Value>>(
        &mut self,
        other: Self,
        limits: &Limits,
        sink: &mut C,
    ) -> Result<crate::Outcome>;

    /// [`Crdt::try_merge`], containing hot keys rather than refusing the whole of
    /// `other`: a key whose registers would hold more than [`Limits::max_siblings`]
    /// siblings after the merge is *hot*. Of its received entry, the writes this
    /// replica lacks are taken in dot order while they fit under the cap, and the
    /// rest is *set aside*: left out of the entry merged, and out of the context
    /// merged (this replica does not claim writes it did not take). Everything else is
    /// merged. What was merged is a part of `other` (a state below it in the
    /// lattice), so the result is still a join, and merging the rest later, once it
    /// fits, gives the state a plain merge would have.
    ///
    /// Each key set aside is appended to `set_aside`. If the keys to set aside would
    /// hold more than `budget` dots between them, nothing is merged and the error is
    /// [`Error::TooManySiblings`], as from [`Crdt::try_merge`].
    ///
    /// The default contains nothing (it is [`Crdt::try_merge`]): a standalone register
    /// has no other key to save. [`OrMap`](crate::OrMap) contains per top-level key.
    ///
    /// # Errors
    ///
    /// As [`Crdt::try_merge`]; on error `self` is left exactly as it was.
    fn try_merge_containing<C: ConflictSink<Self::Key, Self::Value>>(
        &mut self,
        other: Self,
        limits: &Limits,
        sink: &mut C,
        budget: u64,
        set_aside: &mut Vec<SetAside<Self::Key>>,
    ) -> Result<crate::Outcome> {
        let _ = (budget, set_aside);
        self.try_merge(other, limits, sink)
    }

    /// The newest hybrid-logical-clock timestamp this state holds.
    fn max_timestamp(&self) -> Option<Timestamp>;

    /// Forgets bookkeeping that every peer has acknowledged (`stable` is what all peers
    /// are known to have seen). Never changes the replicated value.
    fn prune(&mut self, stable: &CausalContext) {
        let _ = stable;
    }

    /// Folds counter segments written by `hlc`'s replica that `stable` covers into one
    /// segment per counter, as writes of this replica (they replicate like any write);
    /// returns true if it wrote anything. `stable` must hold only dots of this replica
    /// that every peer is known to hold, taken from acknowledgements sent while this
    /// replica already held everything their senders had seen (so no removal of part
    /// of them can still arrive). The [sync engine](crate::sync) computes it and calls
    /// this after every received message; the default does nothing.
    ///
    /// The folded value is the same; what changes is the state's size: a counter that
    /// takes a million increments keeps a segment per replica, not a million.
    ///
    /// # Errors
    ///
    /// [`Error::ClockOverflow`] or [`Error::InvalidDot`] from the writes, as for any
    /// write; what was folded before the error stays folded.
    fn fold_stable<S: crate::hlc::TimeSource>(
        &mut self,
        stable: &CausalContext,
        hlc: &mut crate::hlc::Hlc<S>,
    ) -> Result<bool> {
        let _ = (stable, hlc);
        Ok(false)
    }
}
