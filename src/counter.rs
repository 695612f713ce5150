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

use crate::causal::{local_write, DotStore, Op, ReplicaTable};
use crate::clock::CausalContext;
use crate::dotfun::{self, DotFun};
use crate::error::Result;
use crate::hlc::{Hlc, TimeSource};
use crate::id::ReplicaId;

/// A positive-negative counter.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PnCounter {
    segments: DotFun<i64>,
    ctx: CausalContext,
}

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
            c.segments.entries.retain(|(d, n)| {
                let mine = d.replica() == me;
                if mine {
                    total = total.saturating_add(*n);
                }
                !mine
            });
            c.segments.insert(op.tag(), total);
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
        self.segments.insert(op.tag(), amount);
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
        let sum: i128 = self.segments.entries.iter().map(|(_, n)| *n as i128).sum();
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
        for (d, n) in &self.segments.entries {
            match out.last_mut() {
                Some((r, total)) if *r == d.replica() => *total = total.saturating_add(*n),
                _ => out.push((d.replica(), *n)),
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
    type Encoded<'a> = Vec<(u32, u64, i64)>;
    type Decoded = crate::causal::DecodedElements<(u32, u64, i64)>;

    crate::dotfun::forward_to_dotfun!(segments);

    fn joined_siblings(&self, _: &CausalContext, _: &Self, _: &CausalContext) -> usize {
        // Segments are not siblings: they add up to one value.
        0
    }

    fn races(&self, _: &CausalContext, _: &Self, _: &CausalContext) -> bool {
        // Concurrent increments add up: nothing is lost, nothing to resolve.
        false
    }

    const FOLDS: bool = true;

    fn fold(&mut self, op: &Op, stable: &CausalContext) {
        let me = op.dot().replica();
        let mut stable_count = 0;
        let mut own_write = None;
        for (d, _) in &self.segments.entries {
            if d.replica() != me {
                continue;
            }
            if op.issued(*d) {
                own_write = Some(*d);
            } else if stable.contains(*d) {
                stable_count += 1;
            }
        }
        // Worth a fold: two stable segments, or one beside this write's own segment.
        if stable_count + usize::from(own_write.is_some()) < 2 || stable_count == 0 {
            return;
        }
        // Summed wide: a fold whose sum would not fit in one segment is not made, so
        // the value reads the same however the segments are grouped (it is summed
        // wide too, and clamped only at the end).
        let total: i128 = self
            .segments
            .entries
            .iter()
            .filter(|(d, _)| d.replica() == me && (op.issued(*d) || stable.contains(*d)))
            .map(|(_, n)| *n as i128)
            .sum();
        let Ok(total) = i64::try_from(total) else {
            return;
        };
        self.segments
            .entries
            .retain(|(d, _)| !(d.replica() == me && (op.issued(*d) || stable.contains(*d))));
        let tag = own_write.unwrap_or_else(|| op.tag());
        self.segments.insert(tag, total);
    }

    fn foldable(&self, me: ReplicaId, stable: &CausalContext) -> (usize, usize) {
        let mut own = 0;
        let mut covered = 0;
        let mut sum: i128 = 0;
        for (d, n) in &self.segments.entries {
            if d.replica() == me {
                own += 1;
                if stable.contains(*d) {
                    covered += 1;
                    sum += *n as i128;
                }
            }
        }
        // Segments whose sum does not fit in one are not folded (see `fold`).
        if i64::try_from(sum).is_err() {
            covered = 0;
        }
        (own, covered)
    }

    fn encode<'a>(&'a self, table: &mut ReplicaTable) -> Self::Encoded<'a> {
        self.segments.encode(table, |i, c, n| (i, c, *n))
    }

    fn decode(decoded: Self::Decoded, replicas: &[ReplicaId]) -> Result<Self> {
        Ok(PnCounter {
            segments: DotFun::decode(decoded, replicas)?,
            ctx: CausalContext::new(),
        })
    }
}

crate::dotfun::standalone_impls!(PnCounter, capped = false);

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
