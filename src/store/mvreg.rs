//! [`MvRegister`]: a multi-value register that keeps every concurrent write, and
//! [`MergeFn`], the application-level merge functions that resolve them.
//!
//! A write supersedes exactly the values its writer had seen. Writes that raced survive
//! side by side as *siblings*, read in a canonical order (by dot), so every replica
//! that holds the same writes reads the same list, and a deterministic merge function
//! over that list gives every replica the same answer.
//!
//! ```
//! use concord::{Hlc, ManualClock, MvRegister, ReplicaId, Resolver};
//!
//! let time = ManualClock::new(1_000);
//! let mut hlc_a = Hlc::new(ReplicaId::from_u128(1), time.clone());
//! let mut hlc_b = Hlc::new(ReplicaId::from_u128(2), time.clone());
//!
//! let mut a = MvRegister::new();
//! let mut b = MvRegister::new();
//! a.write("alice@old.example".to_string(), &mut hlc_a)?;
//! b.write("alice@new.example".to_string(), &mut hlc_b)?;
//! a.merge(b.clone());
//! b.merge(a.clone());
//!
//! // Both writes survive, in the same order everywhere.
//! assert_eq!(a.values().collect::<Vec<_>>(), ["alice@old.example", "alice@new.example"]);
//! assert_eq!(a, b);
//!
//! // An application function picks the answer; every replica computes the same one.
//! let pick_new_domain = |s: &[&String]| {
//!     s.iter().find(|v| v.ends_with("@new.example")).copied().unwrap_or(s[0]).clone()
//! };
//! assert_eq!(a.resolve(pick_new_domain).as_deref(), Some("alice@new.example"));
//!
//! // Writing the resolved value back collapses the siblings.
//! let resolved = a.resolve(pick_new_domain).unwrap();
//! a.write(resolved, &mut hlc_a)?;
//! assert_eq!(a.values().count(), 1);
//! # Ok::<(), concord::Error>(())
//! ```

use std::fmt;

use crate::causal::{local_write, Data, DotStore, Op, ReplicaTable};
use crate::clock::CausalContext;
use crate::dotfun::{self, DotFun};
use crate::error::Result;
use crate::hlc::{Hlc, TimeSource};
use crate::id::{Dot, ReplicaId};
use crate::resolver::Resolver;

/// An application-level merge function: given the siblings of a register in canonical
/// order (never empty), returns the value to show (and, if written back, to keep).
///
/// Any `Fn(&[&T]) -> T` is one. It must be deterministic (a pure function of its input)
/// for every replica to see the same answer.
pub trait MergeFn<T> {
    /// Resolves a non-empty list of concurrent values.
    fn merge_values(&self, siblings: &[&T]) -> T;
}

impl<T, F: Fn(&[&T]) -> T> MergeFn<T> for F {
    fn merge_values(&self, siblings: &[&T]) -> T {
        self(siblings)
    }
}

/// A multi-value register: every concurrent write survives as a sibling until a later
/// write that saw them all replaces them.
///
/// One sibling is stored inline (no allocation in the usual, conflict-free case), so
/// the register is as large as a value plus about 56 bytes: keep large values behind a
/// `Box` or an `Arc` in a map of many keys.
#[derive(Clone, PartialEq, Eq)]
pub struct MvRegister<T> {
    siblings: DotFun<T>,
    ctx: CausalContext,
}

impl<T> Default for MvRegister<T> {
    fn default() -> Self {
        MvRegister {
            siblings: DotFun::default(),
            ctx: CausalContext::new(),
        }
    }
}

impl<T: Data> MvRegister<T> {
    /// An empty register.
    ///
    /// ```
    /// use concord::MvRegister;
    ///
    /// let email: MvRegister<String> = MvRegister::new();
    /// assert_eq!(email.values().len(), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `value` as `hlc`'s replica, superseding every sibling this replica has
    /// seen, and returns the delta to ship to peers.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, MvRegister, ReplicaId, Resolver};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(1_000));
    /// let mut email = MvRegister::new();
    /// email.write("alice@old.example".to_string(), &mut hlc)?;
    /// let delta = email.write("alice@new.example".to_string(), &mut hlc)?;
    /// // The second write saw the first: one value left.
    /// assert_eq!(email.get().map(String::as_str), Some("alice@new.example"));
    /// let mut peer = MvRegister::new();
    /// peer.merge(delta);
    /// assert_eq!(peer, email);
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

    /// Inside a map update: replaces every sibling with `value`, tagged with `op`.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, MvRegister, OrMap, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(1_000));
    /// let mut emails: OrMap<String, MvRegister<String>> = OrMap::new();
    /// emails.update("alice".into(), &mut hlc, |reg, op| reg.assign(op, "alice@example.com".into()))?;
    /// assert_eq!(emails.get("alice").unwrap().get().map(String::as_str), Some("alice@example.com"));
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// A value that cannot travel (a NaN, say) is not stored, and the write fails with
    /// [`Error::Unencodable`](crate::Error::Unencodable) (see [`Op::check`]).
    pub fn assign(&mut self, op: &Op, value: T) {
        if !op.check(&value) {
            return;
        }
        self.siblings.assign(op.tag(), value);
    }

    /// The former name of [`MvRegister::assign`].
    #[deprecated(
        since = "0.1.0",
        note = "renamed `assign`, the in-update write of every register"
    )]
    pub fn set(&mut self, op: &Op, value: T) {
        self.assign(op, value)
    }

    /// The siblings' values in canonical order (by dot), the same on every replica
    /// that holds the same state. Empty if never written.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, MvRegister, ReplicaId, Resolver};
    ///
    /// let time = ManualClock::new(1_000);
    /// let mut hlc_a = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// let mut hlc_b = Hlc::new(ReplicaId::from_u128(2), time.clone());
    /// let mut a = MvRegister::new();
    /// let mut b = MvRegister::new();
    /// a.write('x', &mut hlc_a)?;
    /// b.write('y', &mut hlc_b)?;
    /// b.merge(a.clone());
    /// a.merge(b.clone());
    /// // The same order on both sides, whichever merged first.
    /// assert_eq!(a.values().collect::<Vec<_>>(), [&'x', &'y']);
    /// assert_eq!(b.values().collect::<Vec<_>>(), [&'x', &'y']);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn values(&self) -> Values<'_, T> {
        Values(self.siblings.entries.iter())
    }

    /// The siblings with the dots of the writes that made them, in canonical order
    /// (by dot): who wrote what.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, MvRegister, ReplicaId, Resolver};
    ///
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = MvRegister::new();
    /// let mut b = MvRegister::new();
    /// a.write('x', &mut Hlc::new(a_id, time.clone()))?;
    /// b.write('y', &mut Hlc::new(b_id, time.clone()))?;
    /// a.merge(b);
    /// let writers: Vec<_> = a.siblings().map(|(dot, v)| (dot.replica(), *v)).collect();
    /// assert_eq!(writers, [(a_id, 'x'), (b_id, 'y')]);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn siblings(&self) -> impl ExactSizeIterator<Item = (Dot, &T)> + '_ {
        self.siblings.entries.iter().map(|e| (e.0, &e.1))
    }

    /// The value when there is exactly one, `None` when empty or conflicted.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, MvRegister, ReplicaId, Resolver};
    ///
    /// let time = ManualClock::new(1_000);
    /// let mut hlc_a = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// let mut hlc_b = Hlc::new(ReplicaId::from_u128(2), time.clone());
    /// let mut a = MvRegister::new();
    /// assert_eq!(a.get(), None);
    /// a.write(1, &mut hlc_a)?;
    /// assert_eq!(a.get(), Some(&1));
    /// let mut b = MvRegister::new();
    /// b.write(2, &mut hlc_b)?;
    /// a.merge(b);
    /// assert_eq!(a.get(), None); // two siblings
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// Siblings that all hold the same value (masters that resolved one conflict
    /// alike and wrote the result back concurrently) read as that one value.
    pub fn get(&self) -> Option<&T> {
        self.single()
    }

    /// The one value every sibling holds, if there is one.
    fn single(&self) -> Option<&T> {
        let mut values = self.values();
        let first = values.next()?;
        values.all(|v| v == first).then_some(first)
    }

    /// True if concurrent writes are waiting to be resolved: two or more siblings that
    /// do not all hold the same value (siblings of one value, left by masters that
    /// collapsed a conflict alike, need no resolution).
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, MvRegister, ReplicaId, Resolver};
    ///
    /// let time = ManualClock::new(1_000);
    /// let mut hlc_a = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// let mut hlc_b = Hlc::new(ReplicaId::from_u128(2), time.clone());
    /// let mut a = MvRegister::new();
    /// let mut b = MvRegister::new();
    /// a.write(1, &mut hlc_a)?;
    /// b.write(2, &mut hlc_b)?;
    /// a.merge(b);
    /// assert!(a.is_conflicted());
    /// a.write(3, &mut hlc_a)?; // a write that saw both
    /// assert!(!a.is_conflicted());
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn is_conflicted(&self) -> bool {
        self.siblings.len() > 1 && self.single().is_none()
    }

    /// The value an application merge function makes of the siblings: the single value
    /// as it is (also when every sibling holds that same value), or `f` over the
    /// canonical list. `None` if never written.
    ///
    /// ```
    /// use concord::{Hlc, ManualClock, MvRegister, ReplicaId, Resolver};
    ///
    /// let time = ManualClock::new(1_000);
    /// let mut hlc_a = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// let mut hlc_b = Hlc::new(ReplicaId::from_u128(2), time.clone());
    /// let mut a = MvRegister::new();
    /// let mut b = MvRegister::new();
    /// a.write(3_u32, &mut hlc_a)?;
    /// b.write(5_u32, &mut hlc_b)?;
    /// a.merge(b);
    /// let largest = |s: &[&u32]| **s.iter().max().unwrap();
    /// assert_eq!(a.resolve(largest), Some(5));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn resolve(&self, f: impl MergeFn<T>) -> Option<T> {
        if let Some(v) = self.single() {
            return Some(v.clone());
        }
        match self.siblings.entries.as_slice() {
            [] => None,
            [(_, v)] => Some(v.clone()),
            many => {
                let refs: Vec<&T> = many.iter().map(|e| &e.1).collect();
                Some(f.merge_values(&refs))
            }
        }
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

impl<T: fmt::Debug> fmt::Debug for MvRegister<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MvRegister");
        d.field("siblings", &self.siblings.entries);
        if !self.ctx.is_empty() {
            d.field("ctx", &self.ctx);
        }
        d.finish()
    }
}

impl<T> DotStore for MvRegister<T>
where
    T: Data,
{
    type Encoded<'a>
        = Vec<(u32, u64, &'a T)>
    where
        T: 'a;
    type Decoded = crate::causal::DecodedElements<(u32, u64, T)>;

    fn same_view(&self, other: &Self) -> bool {
        matches!((self.single(), other.single()), (Some(a), Some(b)) if a == b)
    }

    fn binary_faithful() -> bool {
        crate::wire::faithful_scalar::<T>()
    }

    crate::dotfun::forward_to_dotfun!(siblings);

    fn joined_siblings(
        &self,
        ctx: &CausalContext,
        other: &Self,
        other_ctx: &CausalContext,
    ) -> usize {
        self.siblings.joined_len(ctx, &other.siblings, other_ctx)
    }

    fn encode<'a>(&'a self, table: &mut ReplicaTable) -> Self::Encoded<'a> {
        self.siblings.encode(table, |i, c, v| (i, c, v))
    }

    fn decode(decoded: Self::Decoded, replicas: &[ReplicaId]) -> Result<Self> {
        Ok(MvRegister {
            siblings: DotFun::decode(decoded, replicas)?,
            ctx: CausalContext::new(),
        })
    }
}

crate::dotfun::standalone_impls!(MvRegister<T>, capped = true);

/// The siblings' values of an [`MvRegister`] in canonical order (by dot): see
/// [`MvRegister::values`].
pub struct Values<'a, T>(std::slice::Iter<'a, (Dot, T)>);

impl<'a, T> Iterator for Values<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        self.0.next().map(|e| &e.1)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl<T> DoubleEndedIterator for Values<'_, T> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|e| &e.1)
    }
}

impl<T> ExactSizeIterator for Values<'_, T> {}

impl<T> std::iter::FusedIterator for Values<'_, T> {}

impl<T> Clone for Values<'_, T> {
    fn clone(&self) -> Self {
        Values(self.0.clone())
    }
}

impl<T: fmt::Debug> fmt::Debug for Values<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

/// The siblings' values in canonical order, as [`MvRegister::values`].
///
/// ```
/// use concord::{Hlc, ManualClock, MvRegister, ReplicaId, Resolver};
///
/// let time = ManualClock::new(1_000);
/// let mut a = MvRegister::new();
/// let mut b = MvRegister::new();
/// a.write('x', &mut Hlc::new(ReplicaId::from_u128(1), time.clone()))?;
/// b.write('y', &mut Hlc::new(ReplicaId::from_u128(2), time))?;
/// a.merge(b);
/// let mut seen = Vec::new();
/// for value in &a {
///     seen.push(*value);
/// }
/// assert_eq!(seen, ['x', 'y']);
/// # Ok::<(), concord::Error>(())
/// ```
impl<'a, T: Data> IntoIterator for &'a MvRegister<T> {
    type Item = &'a T;
    type IntoIter = Values<'a, T>;

    fn into_iter(self) -> Values<'a, T> {
        self.values()
    }
}

/// Merges every register of the iterator into this one ([`Resolver::merge`] each;
/// the outcomes are not kept).
///
/// ```
/// use concord::{Hlc, ManualClock, MvRegister, ReplicaId};
///
/// let time = ManualClock::new(1_000);
/// let mut deltas = Vec::new();
/// for n in 1..=3 {
///     let mut hlc = Hlc::new(ReplicaId::from_u128(n), time.clone());
///     deltas.push(MvRegister::new().write(n as u32, &mut hlc)?);
/// }
/// let mut reg = MvRegister::new();
/// reg.extend(deltas.clone());
/// assert_eq!(reg.values().copied().collect::<Vec<_>>(), [1, 2, 3]); // three siblings
/// // Collecting joins them the same way.
/// assert_eq!(deltas.into_iter().collect::<MvRegister<u32>>(), reg);
/// # Ok::<(), concord::Error>(())
/// ```
impl<T: Data> Extend<MvRegister<T>> for MvRegister<T> {
    fn extend<I: IntoIterator<Item = MvRegister<T>>>(&mut self, iter: I) {
        for other in iter {
            Resolver::merge(self, other);
        }
    }
}

/// The join of every register of the iterator (see [`Extend`]).
impl<T: Data> FromIterator<MvRegister<T>> for MvRegister<T> {
    fn from_iter<I: IntoIterator<Item = MvRegister<T>>>(iter: I) -> Self {
        let mut reg = MvRegister::new();
        reg.extend(iter);
        reg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::{Crdt, Limits};
    use crate::hlc::ManualClock;
    use crate::resolver::Resolver;

    fn hlc(n: u128) -> Hlc<ManualClock> {
        Hlc::new(ReplicaId::from_u128(n), ManualClock::new(1_000))
    }

    #[test]
    fn a_write_supersedes_exactly_what_it_saw() {
        let (mut ha, mut hb, mut hc) = (hlc(1), hlc(2), hlc(3));
        let mut a = MvRegister::new();
        let mut b = MvRegister::new();
        a.write(1, &mut ha).unwrap();
        b.write(2, &mut hb).unwrap();
        let mut c = a.clone();
        c.merge(b.clone());
        assert_eq!(c.values().copied().collect::<Vec<_>>(), vec![1, 2]);
        // C saw both: its write replaces both.
        let delta = c.write(3, &mut hc).unwrap();
        assert_eq!(c.values().copied().collect::<Vec<_>>(), vec![3]);
        // A learns only the delta and still ends up with just 3.
        a.merge(delta);
        assert_eq!(a.values().copied().collect::<Vec<_>>(), vec![3]);
        // B wrote again without seeing C: that write races C's.
        b.write(4, &mut hb).unwrap();
        a.merge(b);
        assert_eq!(a.values().copied().collect::<Vec<_>>(), vec![4, 3]);
    }

    #[test]
    fn sibling_cap_is_a_typed_error_and_leaves_state_unchanged() {
        let limits = Limits {
            max_siblings: 2,
            ..Limits::default()
        };
        let mut acc = MvRegister::new();
        for n in 1..=2 {
            let mut r = MvRegister::new();
            r.write(n, &mut hlc(n as u128)).unwrap();
            acc.try_merge(r, &limits, &mut ()).unwrap();
        }
        let before = acc.clone();
        let mut third = MvRegister::new();
        third.write(3, &mut hlc(3)).unwrap();
        let err = acc.try_merge(third, &limits, &mut ()).unwrap_err();
        assert_eq!(err, crate::Error::TooManySiblings { count: 3, cap: 2 });
        assert_eq!(acc, before);
    }

    #[test]
    fn json_round_trip() {
        let mut a = MvRegister::new();
        a.write("x".to_string(), &mut hlc(1)).unwrap();
        let mut b = MvRegister::new();
        b.write("y".to_string(), &mut hlc(2)).unwrap();
        a.merge(b);
        let json = serde_json::to_string(&a).unwrap();
        let back: MvRegister<String> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }
}
