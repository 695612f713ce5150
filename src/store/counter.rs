//! [`PnCounter`]: a counter that takes increments and decrements at every replica.
//!
//! The value is the sum of every replica's contributions, so concurrent increments
//! add up and nothing is double-counted, whatever order they arrive in.
//!
//! ```
//! use concord::{Hlc, ManualClock, PnCounter, ReplicaId, Resolver};
//!
//! let time = ManualClock::new(0);
//! let mut a = PnCounter::new();
//! let mut b = PnCounter::new();
//! a.increment(3, &mut Hlc::new(ReplicaId::from_u128(1), time.clone()))?;
//! b.increment(2, &mut Hlc::new(ReplicaId::from_u128(2), time.clone()))?;
//! b.increment(-1, &mut Hlc::new(ReplicaId::from_u128(2), time.clone()))?;
//! a.merge(b);
//! assert_eq!(a.value(), 4);
//! # Ok::<(), concord::Error>(())
//! ```
//!
//! Standalone, a counter keeps one entry per replica. Inside an
//! [`OrMap`](crate::OrMap) each update is a separate segment tagged with its own dot, so
//! that removing the counter takes away exactly the updates the remover had seen and an
//! update that raced the removal survives on its own (a cart line removed at one
//! replica while another adds 1 reads 1, not the old quantity plus 1). A counter that
//! is removed and re-added, or whose map entry is overwritten, sheds its segments.

use std::fmt;

use crate::causal::{local_write, DotStore, JoinEffect, Op, ReplicaTable};
use crate::clock::CausalContext;
use crate::dotfun::{self, DotFun};
use crate::error::Result;
use crate::hlc::{Hlc, TimeSource};
use crate::id::{Dot, ReplicaId};
use crate::resolver::Resolver;

/// A positive-negative counter.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PnCounter {
    segments: DotFun<Seg>,
    ctx: CausalContext,
}

/// One segment of a counter: an amount, and for a fold (see [`DotStore::fold`]) the
/// counter of the newest plain segment it folded (0 for a plain update).
///
/// A fold is a write of its own, with a fresh dot, that takes the place of segments
/// every peer had acknowledged. A peer can still remove the counter after that
/// acknowledgement and before the fold reaches it: its removal then kills the old
/// segments, which the fold already replaced, and not the fold, which it never saw.
/// So a fold remembers what it folded: a context that holds the newest folded dot
/// dead, and not the fold, kills the fold too (`killed_by`). The newest dot is
/// enough: the folder folds only segments every peer acknowledged, and it has
/// applied every removal a peer made before acknowledging them (an acknowledgement
/// travels with the sender's unacknowledged removals); a removal made after holds
/// every folded segment, the newest included. It is the newest *plain* segment, never
/// an earlier fold folded again: a peer that has not seen this fold holds it alive
/// (or dead by a removal, which then rightly kills the fold), whereas an earlier fold
/// can be dead at a peer that only learned it had been folded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Seg {
    pub(crate) n: i64,
    pub(crate) prov: u64,
}

impl Seg {
    fn plain(n: i64) -> Self {
        Seg { n, prov: 0 }
    }

    /// The newest dot this segment (tagged `tag`) folded, if it is a fold.
    fn folded(&self, tag: Dot) -> Option<Dot> {
        (self.prov > 0).then(|| Dot::new(tag.replica(), self.prov))
    }
}

/// True if a fold tagged `tag` that folded up to `prov` dies against a side whose
/// context is `ctx` and whose store is `store` (None: it holds nothing of the
/// counter): that side holds the newest folded dot dead and never saw the fold.
fn killed_by(
    tag: Dot,
    prov: Option<Dot>,
    ctx: &CausalContext,
    store: Option<&DotFun<Seg>>,
) -> bool {
    prov.is_some_and(|c| {
        !ctx.contains(tag) && ctx.contains(c) && !store.is_some_and(|s| s.contains(c))
    })
}

/// A segment on the wire: `[replica index, counter, amount]`, and a fold's newest
/// folded counter as a fourth element (protocol version 3; an encoder writing for an
/// older peer leaves it out, see `wire::encoding_version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentWire(u32, u64, i64, u64);

impl serde::Serialize for SegmentWire {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        if !s.is_human_readable() {
            // The binary form (version 4 on) always has the fourth element: 0, one
            // byte, when the segment folded nothing.
            return serde::Serialize::serialize(&(self.0, self.1, self.2, self.3), s);
        }
        let with_prov = self.3 > 0 && crate::wire::encoding_version() >= FOLD_PROVENANCE_VERSION;
        let mut t = s.serialize_tuple(if with_prov { 4 } else { 3 })?;
        t.serialize_element(&self.0)?;
        t.serialize_element(&self.1)?;
        t.serialize_element(&self.2)?;
        if with_prov {
            t.serialize_element(&self.3)?;
        }
        t.end()
    }
}

impl<'de> serde::Deserialize<'de> for SegmentWire {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SegmentWire;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a segment [replica, counter, amount] or [replica, counter, amount, folded]",
                )
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<SegmentWire, A::Error> {
                use serde::de::Error as _;
                let i = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let c = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                let n = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(2, &self))?;
                let prov: u64 = seq.next_element()?.unwrap_or(0);
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(5, &self));
                }
                Ok(SegmentWire(i, c, n, prov))
            }
        }
        if !d.is_human_readable() {
            let (i, c, n, prov) = <(u32, u64, i64, u64) as serde::Deserialize>::deserialize(d)?;
            return Ok(SegmentWire(i, c, n, prov));
        }
        d.deserialize_seq(V)
    }
}

/// The protocol version from which a fold's provenance travels on the wire.
pub(crate) const FOLD_PROVENANCE_VERSION: u32 = 3;

impl PnCounter {
    /// A counter at zero.
    ///
    /// ```
    /// use concord::PnCounter;
    ///
    /// assert_eq!(PnCounter::new().value(), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `amount` (negative to decrement) as `hlc`'s replica and returns the delta.
    ///
    /// The replica's previous contribution is folded into the new entry, so a standalone
    /// counter holds one entry per replica.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, PnCounter, ReplicaId, Resolver};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut likes = PnCounter::new();
    /// likes.increment(5, &mut hlc)?;
    /// let delta = likes.increment(-2, &mut hlc)?;
    /// assert_eq!(likes.value(), 3);
    /// // The delta carries this replica's whole contribution.
    /// let mut peer = PnCounter::new();
    /// peer.merge(delta);
    /// assert_eq!(peer.value(), 3);
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Nothing is changed on error:
    ///
    /// * [`Error::ClockOverflow`](crate::Error::ClockOverflow) if `hlc`'s logical
    ///   counter is exhausted within the current millisecond (it works again once wall
    ///   time moves on);
    /// * [`Error::InvalidDot`](crate::Error::InvalidDot) if this replica has issued the
    ///   largest event counter allowed ([`MAX_COUNTER`](crate::causal::MAX_COUNTER)).
    pub fn increment<S: TimeSource>(&mut self, amount: i64, hlc: &mut Hlc<S>) -> Result<Self> {
        let op = dotfun::next_op(&self.ctx, hlc)?;
        let mut ctx = std::mem::take(&mut self.ctx);
        let delta = local_write(self, &mut ctx, &op, |c, op| {
            let me = op.dot().replica();
            let mut total = amount;
            c.segments.entries.retain(|(d, s)| {
                let mine = d.replica() == me;
                if mine {
                    total = total.saturating_add(s.n);
                }
                !mine
            });
            c.segments.insert(op.tag(), Seg::plain(total));
        });
        self.ctx = ctx;
        // The delta names every dot of this replica: applying it replaces all of the
        // replica's earlier contributions, even where earlier deltas were lost.
        Ok(PnCounter {
            segments: delta.segments,
            ctx: self.ctx.only(op.dot().replica()),
        })
    }

    /// Inside a map update: adds `amount` as a new segment tagged by `op`.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// cart.update("apples".into(), &mut hlc, |qty, op| qty.add(op, 3))?;
    /// assert_eq!(cart.count("apples"), 3);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn add(&mut self, op: &Op, amount: i64) {
        self.segments.insert(op.tag(), Seg::plain(amount));
    }

    /// The current value: the sum of every contribution (saturating at the `i64`
    /// bounds).
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, PnCounter, ReplicaId, Resolver};
    ///
    /// let time = ManualClock::new(0);
    /// let mut a = PnCounter::new();
    /// let mut b = PnCounter::new();
    /// a.increment(i64::MAX, &mut Hlc::new(ReplicaId::from_u128(1), time.clone()))?;
    /// b.increment(1, &mut Hlc::new(ReplicaId::from_u128(2), time.clone()))?;
    /// a.merge(b);
    /// assert_eq!(a.value(), i64::MAX); // saturated, not wrapped
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn value(&self) -> i64 {
        let sum: i128 = self.segments.entries.iter().map(|(_, s)| s.n as i128).sum();
        sum.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    /// Each replica's contribution to the value, in replica-id order.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, PnCounter, ReplicaId, Resolver};
    ///
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(0);
    /// let mut a = PnCounter::new();
    /// let mut b = PnCounter::new();
    /// a.increment(3, &mut Hlc::new(a_id, time.clone()))?;
    /// b.increment(-1, &mut Hlc::new(b_id, time.clone()))?;
    /// a.merge(b);
    /// assert_eq!(a.contributions(), [(a_id, 3), (b_id, -1)]);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn contributions(&self) -> Vec<(ReplicaId, i64)> {
        let mut out: Vec<(ReplicaId, i64)> = Vec::new();
        for (d, s) in &self.segments.entries {
            match out.last_mut() {
                Some((r, total)) if *r == d.replica() => *total = total.saturating_add(s.n),
                _ => out.push((d.replica(), s.n)),
            }
        }
        out
    }

    fn with_context(mut self, ctx: CausalContext) -> Self {
        self.ctx = ctx;
        self
    }

    fn split(mut self) -> (Self, CausalContext) {
        let ctx = std::mem::take(&mut self.ctx);
        (self, ctx)
    }
}

impl fmt::Debug for PnCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("PnCounter");
        d.field("value", &self.value());
        d.field("segments", &self.segments.entries);
        if !self.ctx.is_empty() {
            d.field("ctx", &self.ctx);
        }
        d.finish()
    }
}

impl DotStore for PnCounter {
    type Encoded<'a> = Vec<SegmentWire>;
    type Decoded = crate::causal::DecodedElements<SegmentWire>;

    fn is_bottom(&self) -> bool {
        self.segments.is_empty()
    }

    fn for_each_dot(&self, f: &mut dyn FnMut(Dot)) {
        self.segments.dots().for_each(f);
    }

    fn same_dots(&self, other: &Self) -> bool {
        // Segments in dot order, and a fold's provenance: a fold that reached one side
        // through an older peer lost it, and the join gives it back (see `join`).
        let ours = self.segments.entries.iter().map(|(d, s)| (*d, s.prov));
        ours.eq(other.segments.entries.iter().map(|(d, s)| (*d, s.prov)))
    }

    fn join(&mut self, ctx: &CausalContext, other: Self, other_ctx: &CausalContext) -> JoinEffect {
        // Folds that die here (see `Seg`): ours against their side, theirs against ours.
        let mut dying: Vec<Dot> = Vec::new();
        let mut their_folds: Vec<(Dot, u64)> = Vec::new();
        for (d, s) in &self.segments.entries {
            if killed_by(*d, s.folded(*d), other_ctx, Some(&other.segments)) {
                dying.push(*d);
            }
        }
        for (d, s) in &other.segments.entries {
            if s.prov > 0 {
                their_folds.push((*d, s.prov));
                if killed_by(*d, s.folded(*d), ctx, Some(&self.segments)) {
                    dying.push(*d);
                }
            }
        }
        let mut effect = self.segments.join(ctx, other.segments, other_ctx);
        if !dying.is_empty() {
            let before = self.segments.len();
            self.segments.entries.retain(|(d, _)| !dying.contains(d));
            if self.segments.len() != before {
                // Ours killed, or theirs refused: both read as the join moving on.
                effect.killed = true;
                effect.discarded = true;
            }
        }
        // A fold that reached one side through a peer of an older protocol version
        // lost its provenance on the way: the side that knows it keeps it (the
        // join of one segment's two forms).
        for (d, prov) in their_folds {
            if let Ok(i) = self.segments.entries.binary_search_by(|e| e.0.cmp(&d)) {
                let s = &mut self.segments.entries[i].1;
                s.prov = s.prov.max(prov);
            }
        }
        effect
    }

    fn kill(&mut self, ctx: &CausalContext) -> bool {
        let before = self.segments.len();
        self.segments
            .entries
            .retain(|(d, s)| !ctx.contains(*d) && !killed_by(*d, s.folded(*d), ctx, None));
        self.segments.len() != before
    }

    fn filtered(&self, keep: &dyn Fn(Dot) -> bool) -> Self {
        Self {
            segments: self.segments.filtered(keep),
            ctx: CausalContext::new(),
        }
    }

    fn size(&self) -> usize {
        self.segments.len()
    }

    fn joined_siblings(&self, _: &CausalContext, _: &Self, _: &CausalContext) -> usize {
        // Segments are not siblings: they add up to one value.
        0
    }

    fn races(&self, _: &CausalContext, _: &Self, _: &CausalContext) -> bool {
        // Concurrent increments add up: nothing is lost, nothing to resolve.
        false
    }

    fn for_each_fold(&self, f: &mut dyn FnMut(Dot, Dot)) {
        for (d, s) in &self.segments.entries {
            if let Some(c) = s.folded(*d) {
                f(c, *d);
            }
        }
    }

    const FOLDS: bool = true;

    fn binary_faithful() -> bool {
        true
    }

    fn fold(&mut self, op: &Op, stable: &CausalContext) {
        // The stable segments of this replica, not this write's own: the write's
        // increment was seen by nobody yet, and a removal that kills the fold must
        // not take it along. The fold gets a dot of its own.
        let me = op.dot().replica();
        let folds = |d: &Dot| d.replica() == me && !op.issued(*d) && stable.contains(*d);
        let mut count = 0usize;
        // The newest *plain* segment folded, not an earlier fold folded again: a
        // peer that has not seen this fold holds that segment alive, and so tells
        // this fold from a removal (see `killed_by`). Naming an earlier fold G here
        // chained the two: a peer that dropped G on a relayed piece naming only what
        // G had folded (G is dead at the relay) then refused this fold for good, as
        // if a removal had seen G and not it (fuzz input `fold-2`).
        let mut newest = 0u64;
        // Summed wide: a fold whose sum would not fit in one segment is not made, so
        // the value reads the same however the segments are grouped (it is summed
        // wide too, and clamped only at the end).
        let mut total: i128 = 0;
        for (d, s) in &self.segments.entries {
            if folds(d) {
                count += 1;
                if s.prov == 0 {
                    newest = newest.max(d.counter());
                }
                total += s.n as i128;
            }
        }
        // Folds alone are not folded again (there is at most one of this replica's
        // in a counter anyway): they wait for a plain segment to name.
        if count < 2 || newest == 0 {
            return;
        }
        let Ok(total) = i64::try_from(total) else {
            return;
        };
        self.segments.entries.retain(|(d, _)| !folds(d));
        // Folded down to a few segments: give back the room the many took (a single
        // segment goes back inline).
        self.segments.entries.shrink_to_fit();
        self.segments.insert(
            op.tag(),
            Seg {
                n: total,
                prov: newest,
            },
        );
    }

    fn foldable(&self, me: ReplicaId, stable: &CausalContext) -> (usize, usize) {
        let mut own = 0;
        let mut covered = 0;
        let mut plain = false;
        let mut sum: i128 = 0;
        for (d, s) in &self.segments.entries {
            if d.replica() == me {
                own += 1;
                if stable.contains(*d) {
                    covered += 1;
                    plain |= s.prov == 0;
                    sum += s.n as i128;
                }
            }
        }
        // Segments whose sum does not fit in one are not folded, nor folds alone
        // (see `fold`).
        if i64::try_from(sum).is_err() || !plain {
            covered = 0;
        }
        (own, covered)
    }

    fn encode<'a>(&'a self, table: &mut ReplicaTable) -> Self::Encoded<'a> {
        self.segments
            .encode(table, |i, c, s| SegmentWire(i, c, s.n, s.prov))
    }

    fn decode(decoded: Self::Decoded, replicas: &[ReplicaId]) -> Result<Self> {
        let mut bad = None;
        let triples = decoded.into_iter().map(|SegmentWire(i, c, n, prov)| {
            // A fold folded older dots of its own replica.
            if prov >= c && bad.is_none() {
                bad = Some((i, c));
            }
            (i, c, Seg { n, prov })
        });
        let segments = DotFun::decode(triples.collect::<Vec<_>>(), replicas)?;
        if let Some((i, c)) = bad {
            let dot = crate::causal::decode_dot(replicas, i, c)?;
            return Err(crate::Error::InvalidDot {
                dot,
                reason: "a fold names a folded dot that is not older than its own",
            });
        }
        Ok(PnCounter {
            segments,
            ctx: CausalContext::new(),
        })
    }
}

crate::dotfun::standalone_impls!(PnCounter, capped = false);

/// Merges every counter of the iterator into this one ([`Resolver::merge`] each; the
/// outcomes are not kept).
///
/// ```
/// use concord::{Hlc, ManualClock, PnCounter, ReplicaId};
///
/// let time = ManualClock::new(1_000);
/// let mut deltas = Vec::new();
/// for n in 1..=3 {
///     let mut hlc = Hlc::new(ReplicaId::from_u128(n), time.clone());
///     deltas.push(PnCounter::new().increment(10, &mut hlc)?);
/// }
/// let mut total = PnCounter::new();
/// total.extend(deltas.clone());
/// assert_eq!(total.value(), 30);
/// assert_eq!(deltas.into_iter().collect::<PnCounter>().value(), 30);
/// # Ok::<(), concord::Error>(())
/// ```
impl Extend<PnCounter> for PnCounter {
    fn extend<I: IntoIterator<Item = PnCounter>>(&mut self, iter: I) {
        for other in iter {
            Resolver::merge(self, other);
        }
    }
}

/// The join of every counter of the iterator (see [`Extend`]).
impl FromIterator<PnCounter> for PnCounter {
    fn from_iter<I: IntoIterator<Item = PnCounter>>(iter: I) -> Self {
        let mut counter = PnCounter::new();
        counter.extend(iter);
        counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::ManualClock;
    use crate::resolver::Resolver;

    #[test]
    fn standalone_counter_keeps_one_entry_per_replica() {
        let mut h = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
        let mut c = PnCounter::new();
        let mut peer = PnCounter::new();
        for _ in 0..1000 {
            let delta = c.increment(1, &mut h).unwrap();
            peer.merge(delta);
        }
        assert_eq!(c.value(), 1000);
        assert_eq!(peer, c);
        assert_eq!(c.size(), 1);
    }

    #[test]
    fn hostile_amounts_saturate_instead_of_overflowing() {
        let mut c = PnCounter::new();
        for n in 1..=3u128 {
            let mut h = Hlc::new(ReplicaId::from_u128(n), ManualClock::new(0));
            c.merge({
                let mut x = PnCounter::new();
                x.increment(i64::MAX, &mut h).unwrap();
                x
            });
        }
        assert_eq!(c.value(), i64::MAX);
    }

    #[test]
    fn json_round_trip() {
        let mut c = PnCounter::new();
        c.increment(
            5,
            &mut Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0)),
        )
        .unwrap();
        let back: PnCounter = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
