//! The join laws: checks that a [`Resolver`] is a join-semilattice.
//!
//! Each law is a function over given states, returning why it failed:
//! [`commutative`], [`associative`], [`idempotent`] and [`outcome_consistent`] (the
//! reported [`Outcome`] agrees with what the merge did), or [`all`] of them. The
//! states must be jointly reachable: for a dot store (every map, register and counter,
//! and any state type of yours built on them) use
//! [`check_type`](super::check_type), or the states of one
//! [`World`](super::World), never states drawn independently (two independent
//! histories both issue the dot `(r1, 1)`, for different writes, and break the laws
//! through no fault of the type).
//!
//! For a type whose every value is a valid state (a clock, a max-register),
//! [`check_all`] draws the triples itself:
//!
//! ```
//! use concord::testing::laws;
//! use concord::{Outcome, Resolver};
//! use proptest::prelude::*;
//!
//! /// A user type: the highest score seen, a max-register.
//! #[derive(Clone, Debug, PartialEq)]
//! struct HighScore(u32);
//!
//! impl Resolver for HighScore {
//!     fn merge(&mut self, other: Self) -> Outcome {
//!         match other.0.cmp(&self.0) {
//!             std::cmp::Ordering::Greater => {
//!                 self.0 = other.0;
//!                 Outcome::Advanced
//!             }
//!             _ => Outcome::Unchanged,
//!         }
//!     }
//! }
//!
//! laws::check_all((0u32..1000).prop_map(HighScore));
//! ```
//!
//! A broken merge is caught with a minimal counterexample:
//!
//! ```should_panic
//! # use concord::testing::laws;
//! # use concord::{Outcome, Resolver};
//! # use proptest::prelude::*;
//! #[derive(Clone, Debug, PartialEq)]
//! struct Last(u32); // "the other side wins": not commutative
//! impl Resolver for Last {
//!     fn merge(&mut self, other: Self) -> Outcome {
//!         let changed = self.0 != other.0;
//!         self.0 = other.0;
//!         if changed { Outcome::Advanced } else { Outcome::Unchanged }
//!     }
//! }
//! laws::check_all((0u32..10).prop_map(Last));
//! ```

use std::fmt::Debug;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError};

use crate::resolver::{Outcome, Resolver};

fn join<T: Resolver + Clone>(a: &T, b: &T) -> (T, Outcome) {
    let mut x = a.clone();
    let outcome = x.merge(b.clone());
    (x, outcome)
}

/// `a ⊔ b == b ⊔ a`.
pub fn commutative<T: Resolver + Clone + PartialEq + Debug>(a: &T, b: &T) -> Result<(), String> {
    let (ab, _) = join(a, b);
    let (ba, _) = join(b, a);
    if ab == ba {
        Ok(())
    } else {
        Err(format!(
            "not commutative:\n a ⊔ b = {ab:?}\n b ⊔ a = {ba:?}"
        ))
    }
}

/// `(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)`.
pub fn associative<T: Resolver + Clone + PartialEq + Debug>(
    a: &T,
    b: &T,
    c: &T,
) -> Result<(), String> {
    let (ab, _) = join(a, b);
    let (left, _) = join(&ab, c);
    let (bc, _) = join(b, c);
    let (right, _) = join(a, &bc);
    if left == right {
        Ok(())
    } else {
        Err(format!(
            "not associative:\n (a ⊔ b) ⊔ c = {left:?}\n a ⊔ (b ⊔ c) = {right:?}"
        ))
    }
}

/// `a ⊔ a == a`, reported as [`Outcome::Unchanged`].
pub fn idempotent<T: Resolver + Clone + PartialEq + Debug>(a: &T) -> Result<(), String> {
    let (aa, outcome) = join(a, a);
    if &aa != a {
        return Err(format!("not idempotent:\n a = {a:?}\n a ⊔ a = {aa:?}"));
    }
    if outcome != Outcome::Unchanged {
        return Err(format!("a ⊔ a reported {outcome:?}, not Unchanged"));
    }
    Ok(())
}

/// The outcome of `a ⊔ b` agrees with the states: `Unchanged` exactly when the result
/// is `a`, `Advanced` only when the result is `b`, and merging the result again with
/// `b` is `Unchanged` (the join is an upper bound of `b`).
pub fn outcome_consistent<T: Resolver + Clone + PartialEq + Debug>(
    a: &T,
    b: &T,
) -> Result<(), String> {
    let (ab, outcome) = join(a, b);
    match outcome {
        Outcome::Unchanged if &ab != a => {
            return Err(format!(
                "reported Unchanged but a changed:\n a = {a:?}\n a ⊔ b = {ab:?}"
            ))
        }
        Outcome::Advanced | Outcome::Concurrent if &ab == a => {
            return Err(format!("reported {outcome:?} but a did not change: {a:?}"))
        }
        Outcome::Advanced if &ab != b => {
            return Err(format!(
                "reported Advanced but a ⊔ b != b:\n b = {b:?}\n a ⊔ b = {ab:?}"
            ))
        }
        _ => {}
    }
    let (again, outcome) = join(&ab, b);
    if again != ab || outcome != Outcome::Unchanged {
        return Err(format!(
            "a ⊔ b is not an upper bound of b: {again:?} ({outcome:?})"
        ));
    }
    Ok(())
}

/// All of the above on one triple.
pub fn all<T: Resolver + Clone + PartialEq + Debug>(a: &T, b: &T, c: &T) -> Result<(), String> {
    commutative(a, b)?;
    associative(a, b, c)?;
    idempotent(a)?;
    outcome_consistent(a, b)
}

/// Runs every law on triples drawn independently from `strategy`, with proptest's
/// default number of cases (override with the `PROPTEST_CASES` environment variable),
/// seeded as the [kit](super) is.
///
/// # Panics
///
/// With the smallest counterexample found and the seed, if any law fails.
pub fn check_all<T, S>(strategy: S)
where
    T: Resolver + Clone + PartialEq + Debug,
    S: Strategy<Value = T> + Clone,
{
    check_all_with(Config::default(), strategy)
}

/// [`check_all`] with an explicit proptest configuration.
///
/// # Panics
///
/// With the smallest counterexample found and the seed, if any law fails.
pub fn check_all_with<T, S>(config: Config, strategy: S)
where
    T: Resolver + Clone + PartialEq + Debug,
    S: Strategy<Value = T> + Clone,
{
    let triples = (strategy.clone(), strategy.clone(), strategy);
    let checked =
        super::Kit::new()
            .config(config)
            .run("the join laws", None, &triples, |(a, b, c)| {
                all(&a, &b, &c).map_err(TestCaseError::fail)
            });
    if let Err(failure) = checked {
        panic!("{failure}");
    }
}
