//! The one trait every replicated type implements, and what a merge reports.
//!
//! A [`Resolver`] is a join-semilattice: [`Resolver::merge`] computes the least upper
//! bound of two states. Because merge is commutative, associative and idempotent,
//! replicas that have received the same writes hold the same state, whatever order,
//! duplication or grouping the network delivered them in. A *delta* is a small state
//! of the same type, so merging a delta and merging a full state are one operation.
//!
//! ```
//! use concord::{Outcome, Resolver, VectorClock, ReplicaId};
//!
//! let (a, b) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
//! let mut left = VectorClock::new();
//! left.increment(a);
//! let mut right = VectorClock::new();
//! right.increment(b);
//!
//! // Each side saw an event the other did not: the merge reports the concurrency.
//! assert_eq!(left.clone().merge(right.clone()), Outcome::Concurrent);
//! // Merging again changes nothing (idempotence).
//! let mut joined = left.clone();
//! joined.merge(right.clone());
//! assert_eq!(joined.merge(right), Outcome::Unchanged);
//! ```

use serde::{Deserialize, Serialize};

/// What a merge did to the receiving state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// `self` already held everything `other` had: nothing changed.
    Unchanged,
    /// `other` was strictly ahead: `self` took its news and held nothing `other` lacked
    /// (after the merge, `self` equals `other`).
    Advanced,
    /// Each side held something the other had not seen: concurrent writes were joined
    /// (and, for registers, resolved).
    Concurrent,
}

impl Outcome {
    /// Builds an outcome from two facts: did `other` bring anything new (`gained`), and
    /// did `self` hold anything `other` lacked (`kept`)?
    pub fn from_flags(gained: bool, kept: bool) -> Outcome {
        match (gained, kept) {
            (false, _) => Outcome::Unchanged,
            (true, false) => Outcome::Advanced,
            (true, true) => Outcome::Concurrent,
        }
    }

    /// True unless the merge was [`Outcome::Unchanged`].
    pub fn changed(self) -> bool {
        self != Outcome::Unchanged
    }
}

/// A replicated type: a join-semilattice.
///
/// # Laws
///
/// For all reachable states `a`, `b`, `c` (writing `a ⊔ b` for "`a` after
/// `a.merge(b)`"):
///
/// * **commutative**: `a ⊔ b == b ⊔ a`;
/// * **associative**: `(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)`;
/// * **idempotent**: `a ⊔ a == a`, and merging it reports [`Outcome::Unchanged`].
///
/// The outcome must agree with the states: [`Outcome::Unchanged`] exactly when the
/// merge left `self` equal to what it was; [`Outcome::Advanced`] when the result equals
/// `other`. The test kit ([`crate::testing`], feature `testing`) checks all of this
/// for any type, including your own.
pub trait Resolver: Sized {
    /// Joins `other` into `self` (least upper bound) and reports what happened.
    ///
    /// Takes `other` by value so that merging a received delta needs no clone.
    fn merge(&mut self, other: Self) -> Outcome;

    /// Joins a borrowed state into `self`. The default clones `other`; types override it
    /// when they can merge without the clone.
    fn merge_ref(&mut self, other: &Self) -> Outcome
    where
        Self: Clone,
    {
        self.merge(other.clone())
    }
}
