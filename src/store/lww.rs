//! [`LwwRegister`]: a last-write-wins register ordered by hybrid-logical-clock time.
//!
//! The winner is the write with the larger `(timestamp, replica id)`: a total order, so
//! two writes in the same millisecond still resolve the same way everywhere. A write
//! that saw another one replaces it outright (it is newer by causality, whatever the
//! clocks say); only writes that raced are ordered by time. Until a later write
//! replaces them, the losers of a race are kept beside the winner, which is what makes
//! the register a lattice under any delivery order, and what lets a map remove a
//! winner without resurrecting a loser it never saw.
//!
//! ```
//! use concord::{Hlc, LwwRegister, ManualClock, ReplicaId, Resolver};
//!
//! let time = ManualClock::new(5_000);
//! let mut eu = Hlc::new(ReplicaId::from_u128(1), time.clone());
//! let mut us = Hlc::new(ReplicaId::from_u128(2), time.clone());
//!
//! let mut at_eu = LwwRegister::new();
//! let mut at_us = LwwRegister::new();
//! at_eu.write("blue".to_string(), &mut eu)?;
//! at_us.write("green".to_string(), &mut us)?; // same millisecond: the larger replica id wins
//!
//! at_eu.merge(at_us.clone());
//! at_us.merge(at_eu.clone());
//! assert_eq!(at_eu.value().map(String::as_str), Some("green"));
//! assert_eq!(at_eu, at_us);
//! # Ok::<(), concord::Error>(())
//! ```

use std::fmt;

use crate::causal::{local_write, Data, DotStore, Op, ReplicaTable};
use crate::clock::CausalContext;
use crate::dotfun::{self, DotFun};
use crate::error::Result;
use crate::hlc::{Hlc, TimeSource, Timestamp};
use crate::id::ReplicaId;
use crate::resolver::Resolver;

/// A value with the wall and logical parts of its write's timestamp (the replica part
/// is the dot's).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Stamped<T> {
    ms: u64,
    logical: u32,
    value: T,
}

/// A last-write-wins register.
///
/// One write is stored inline (no allocation in the usual, conflict-free case), so
/// the register is as large as a value plus about 72 bytes: keep large values behind a
/// `Box` or an `Arc` in a map of many keys.
#[derive(Clone, PartialEq, Eq)]
pub struct LwwRegister<T> {
    writes: DotFun<Stamped<T>>,
    ctx: CausalContext,
}

impl<T> Default for LwwRegister<T> {
    fn default() -> Self {
        LwwRegister {
            writes: DotFun::default(),
            ctx: CausalContext::new(),
        }
    }
}

impl<T: Data> LwwRegister<T> {
    /// An empty register.
    ///
    /// ```
    /// use concord::LwwRegister;
    ///
    /// let theme: LwwRegister<String> = LwwRegister::new();
    /// assert_eq!(theme.value(), None);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `value`, stamped by `hlc`, and returns the delta to ship to peers.
    ///
    /// ```
    /// use concord::{Hlc, LwwRegister, ManualClock, ReplicaId, Resolver};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(1_000));
    /// let mut theme = LwwRegister::new();
    /// let delta = theme.write("dark".to_string(), &mut hlc)?;
    /// let mut peer = LwwRegister::new();
    /// peer.merge(delta);
    /// assert_eq!(peer.value().map(String::as_str), Some("dark"));
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
    pub fn write<S: TimeSource>(&mut self, value: T, hlc: &mut Hlc<S>) -> Result<Self> {
        crate::probe::check_value(&value)?;
        let op = dotfun::next_op(&self.ctx, hlc)?;
        let mut ctx = std::mem::take(&mut self.ctx);
        let delta = local_write(self, &mut ctx, &op, |reg, op| reg.assign(op, value));
        self.ctx = ctx;
        // The delta carries the whole context (a register's is small): whoever applies it
        // learns every write this one replaced, even if earlier deltas were lost.
        Ok(delta.with_context(self.ctx.clone()))
    }

    /// The former name of [`LwwRegister::write`].
    ///
    /// # Errors
    ///
    /// As [`LwwRegister::write`].
    #[deprecated(
        since = "0.1.0",
        note = "renamed `write`, the standalone write of every register"
    )]
    pub fn set<S: TimeSource>(&mut self, value: T, hlc: &mut Hlc<S>) -> Result<Self> {
        self.write(value, hlc)
    }

    /// Inside a map update: replaces the value with `value`, stamped by `op`.
    ///
    /// ```
    /// use concord::{Hlc, LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(1_000));
    /// let mut settings: OrMap<String, LwwRegister<u8>> = OrMap::new();
    /// settings.update("volume".into(), &mut hlc, |reg, op| reg.assign(op, 7))?;
    /// assert_eq!(settings.value("volume"), Some(&7));
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// A value that cannot travel (a NaN, say) is not stored, and the write fails with
    /// [`Error::Unencodable`](crate::Error::Unencodable) (see [`Op::check`]).
    pub fn assign(&mut self, op: &Op, value: T) {
        if !op.check(&value) {
            return;
        }
        let ts = op.timestamp();
        self.writes.assign(
            op.tag(),
            Stamped {
                ms: ts.wall_ms(),
                logical: ts.logical(),
                value,
            },
        );
    }

    /// The winning value: the largest `(timestamp, replica)`. `None` if never set.
    ///
    /// ```
    /// use concord::{Hlc, LwwRegister, ManualClock, ReplicaId, Resolver};
    ///
    /// let time = ManualClock::new(1_000);
    /// let mut hlc_a = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// let mut hlc_b = Hlc::new(ReplicaId::from_u128(2), time.clone());
    /// let mut a = LwwRegister::new();
    /// let mut b = LwwRegister::new();
    /// a.write("dark".to_string(), &mut hlc_a)?;
    /// time.advance(3);
    /// b.write("light".to_string(), &mut hlc_b)?;
    /// a.merge(b);
    /// assert_eq!(a.value().map(String::as_str), Some("light")); // the later write
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn value(&self) -> Option<&T> {
        self.winner().map(|(_, v)| v)
    }

    /// The winning value with its timestamp (whose replica is the writer's).
    ///
    /// ```
    /// use concord::{Hlc, LwwRegister, ManualClock, ReplicaId};
    ///
    /// let a = ReplicaId::from_u128(1);
    /// let mut hlc = Hlc::new(a, ManualClock::new(1_000));
    /// let mut theme = LwwRegister::new();
    /// theme.write("dark".to_string(), &mut hlc)?;
    /// let (ts, value) = theme.winner().unwrap();
    /// assert_eq!((ts.wall_ms(), ts.replica(), value.as_str()), (1_000, a, "dark"));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn winner(&self) -> Option<(Timestamp, &T)> {
        self.writes
            .entries
            .iter()
            .map(|(d, s)| (Timestamp::new(s.ms, s.logical, d.replica()), &s.value))
            .max_by_key(|(ts, _)| *ts)
    }

    /// The timestamp of the winning write; `None` if never set.
    ///
    /// ```
    /// use concord::{Hlc, LwwRegister, ManualClock, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(1_000));
    /// let mut theme = LwwRegister::new();
    /// assert_eq!(theme.timestamp(), None);
    /// theme.write("dark".to_string(), &mut hlc)?;
    /// assert_eq!(theme.timestamp(), Some(hlc.last()));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn timestamp(&self) -> Option<Timestamp> {
        self.winner().map(|(ts, _)| ts)
    }

    /// How many raced writes are held (1 when there was no race, 0 if never set). The
    /// losers of a race are kept beside the winner until a write that saw them all
    /// replaces them.
    ///
    /// ```
    /// use concord::{Hlc, LwwRegister, ManualClock, ReplicaId, Resolver};
    ///
    /// let time = ManualClock::new(1_000);
    /// let mut hlc_a = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// let mut hlc_b = Hlc::new(ReplicaId::from_u128(2), time.clone());
    /// let mut a = LwwRegister::new();
    /// let mut b = LwwRegister::new();
    /// a.write(1, &mut hlc_a)?;
    /// b.write(2, &mut hlc_b)?;
    /// a.merge(b);
    /// assert_eq!(a.write_count(), 2);
    /// a.write(3, &mut hlc_a)?; // saw both
    /// assert_eq!(a.write_count(), 1);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn write_count(&self) -> usize {
        self.writes.len()
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

impl<T: Data> fmt::Debug for LwwRegister<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("LwwRegister");
        d.field("value", &self.value());
        if self.writes.len() > 1 {
            d.field("writes", &self.writes.entries);
        }
        if !self.ctx.is_empty() {
            d.field("ctx", &self.ctx);
        }
        d.finish()
    }
}

impl<T> DotStore for LwwRegister<T>
where
    T: Data,
{
    type Encoded<'a>
        = Vec<(u32, u64, u64, u32, &'a T)>
    where
        T: 'a;
    type Decoded = crate::causal::DecodedElements<(u32, u64, u64, u32, T)>;

    crate::dotfun::forward_to_dotfun!(writes);

    fn binary_faithful() -> bool {
        crate::wire::faithful_scalar::<T>()
    }

    fn joined_siblings(
        &self,
        ctx: &CausalContext,
        other: &Self,
        other_ctx: &CausalContext,
    ) -> usize {
        self.writes.joined_len(ctx, &other.writes, other_ctx)
    }

    fn max_timestamp(&self) -> Option<Timestamp> {
        self.timestamp()
    }

    fn encode<'a>(&'a self, table: &mut ReplicaTable) -> Self::Encoded<'a> {
        self.writes
            .encode(table, |i, c, s| (i, c, s.ms, s.logical, &s.value))
    }

    fn decode(decoded: Self::Decoded, replicas: &[ReplicaId]) -> Result<Self> {
        let triples = decoded
            .into_iter()
            .map(|(i, c, ms, logical, value)| (i, c, Stamped { ms, logical, value }));
        Ok(LwwRegister {
            writes: DotFun::decode(triples, replicas)?,
            ctx: CausalContext::new(),
        })
    }
}

crate::dotfun::standalone_impls!(LwwRegister<T>, capped = true);

/// Merges every register of the iterator into this one ([`Resolver::merge`] each;
/// the outcomes are not kept).
///
/// ```
/// use concord::{Hlc, LwwRegister, ManualClock, ReplicaId};
///
/// let time = ManualClock::new(1_000);
/// let mut hlc = Hlc::new(ReplicaId::from_u128(1), time.clone());
/// let mut writer = LwwRegister::new();
/// let first = writer.write("dark".to_string(), &mut hlc)?;
/// time.advance(1);
/// let second = writer.write("light".to_string(), &mut hlc)?;
/// // Deltas in any order join to the same register.
/// let mut reader = LwwRegister::new();
/// reader.extend([second.clone(), first.clone()]);
/// assert_eq!(reader.value().map(String::as_str), Some("light"));
/// assert_eq!([first, second].into_iter().collect::<LwwRegister<_>>(), reader);
/// # Ok::<(), concord::Error>(())
/// ```
impl<T: Data> Extend<LwwRegister<T>> for LwwRegister<T> {
    fn extend<I: IntoIterator<Item = LwwRegister<T>>>(&mut self, iter: I) {
        for other in iter {
            Resolver::merge(self, other);
        }
    }
}

/// The join of every register of the iterator (see [`Extend`]).
impl<T: Data> FromIterator<LwwRegister<T>> for LwwRegister<T> {
    fn from_iter<I: IntoIterator<Item = LwwRegister<T>>>(iter: I) -> Self {
        let mut reg = LwwRegister::new();
        reg.extend(iter);
        reg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::ManualClock;
    use crate::resolver::Resolver;

    #[test]
    fn same_millisecond_writes_resolve_identically_on_both_sides() {
        let time = ManualClock::new(42);
        let mut ha = Hlc::new(ReplicaId::from_u128(9), time.clone());
        let mut hb = Hlc::new(ReplicaId::from_u128(3), time.clone());
        let mut a = LwwRegister::new();
        let mut b = LwwRegister::new();
        let da = a.write('a', &mut ha).unwrap();
        let db = b.write('b', &mut hb).unwrap();
        a.merge(db);
        b.merge(da);
        assert_eq!(a, b);
        // Same wall time and logical counter: the larger replica id (9) wins.
        assert_eq!(a.value(), Some(&'a'));
    }

    #[test]
    fn a_write_that_saw_another_wins_even_with_a_slower_clock() {
        let fast = ManualClock::new(10_000);
        let slow = ManualClock::new(1_000);
        let mut hf = Hlc::new(ReplicaId::from_u128(1), fast);
        let mut hs = Hlc::new(ReplicaId::from_u128(2), slow);
        let mut f = LwwRegister::new();
        f.write(1, &mut hf).unwrap();
        let mut s = f.clone();
        // The slow replica's clock is 9 s behind: its write still saw the first one.
        s.write(2, &mut hs).unwrap();
        f.merge(s);
        assert_eq!(f.value(), Some(&2));
        assert_eq!(f.write_count(), 1);
    }

    #[test]
    fn json_round_trip() {
        let mut a = LwwRegister::new();
        a.write(
            "x".to_string(),
            &mut Hlc::new(ReplicaId::from_u128(1), ManualClock::new(7)),
        )
        .unwrap();
        let json = serde_json::to_string(&a).unwrap();
        let back: LwwRegister<String> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }
}
