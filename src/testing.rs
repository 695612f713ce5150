//! The test kit: the specification concord's own types pass, run on *your* state
//! type, operations and merge functions. Enabled by the `testing` feature, which you
//! add for your tests only:
//!
//! ```toml
//! [dev-dependencies]
//! concord = { version = "0.1", features = ["testing"] }
//! ```
//!
//! You describe your setup with two things: your **operations** (a type implementing
//! [`Operation`]: how to apply one write to your state) with a [`proptest`] strategy
//! that generates them, and your **merge functions** ([`MergeFn`]) with a strategy for
//! the values they resolve. Everything else is the kit's. Three calls, a test each:
//!
//! * [`check_type`]: runs random [`Program`]s of your operations at several replicas,
//!   with full-state merges, `delta_since` pulls and late, duplicated and lost deltas in
//!   between, and checks the states, deltas and pulls they leave (jointly reachable, so
//!   the laws apply): merge is a join (commutative, associative, idempotent, with a
//!   truthful [`Outcome`](crate::Outcome)); a state joined with its mutator's delta is
//!   the mutated state; the deltas in any order, duplicated, join to the full-state
//!   merge; `delta_since` joins like the full state; replicas converge; states and
//!   deltas survive the wire.
//! * [`check_merge_fn`]: a merge function over random sibling lists is deterministic
//!   (the same siblings give the same value across calls, copies and replicas that
//!   received them over the wire), resolves one value (and copies of one value) to
//!   itself, and stays put when several masters collapse the same conflict at once.
//!   [`check_collapse_converges`] adds that they end with a single value.
//! * [`check_setup`]: your type, operations and merge functions together in the
//!   [simulator](sim) under loss, duplication, reordering, partitions, crashes and
//!   restarts from older snapshots: every replica converges, no write that reached a
//!   peer is lost, every replica shows the same resolved view, and collapsing does not
//!   change it. See [`Setup`].
//!
//! A failure panics with the property that broke, why, the smallest input proptest
//! shrank it to, and the seed of the run:
//!
//! ```text
//! concord::testing: the merge function failed
//! it is not deterministic: the same siblings gave two different values ...
//! minimal failing input: ...
//! seed = 1234; replay with CONCORD_SEED=1234
//! ```
//!
//! `CONCORD_SEED=1234 cargo test <name>` runs the same cases again, to the same
//! counterexample. [`Kit`] sets the number of cases or the seed in code, and returns
//! the [`Failure`] instead of panicking.
//!
//! The pieces are public for properties of your own: [`programs`], [`Program`] and
//! [`World`] (reachable states, with every write recorded for oracles),
//! [`reachable_states`], the `World` checks one by one, [`laws`] (the join laws on given states) and [`sim`] (the
//! simulator, its strategies and [`sim::check_quiesced`]).
//!
//! ```
//! use concord::testing::{self, proptest, Kit, Operation};
//! use concord::{Hlc, ManualClock, OrMap, PnCounter, Result};
//! use proptest::prelude::*;
//!
//! type Cart = OrMap<String, PnCounter>;
//!
//! /// The application's writes to a cart.
//! #[derive(Clone, Debug)]
//! enum Edit {
//!     Add(&'static str, i64),
//!     Drop(&'static str),
//! }
//!
//! impl Operation<Cart> for Edit {
//!     fn apply(&self, cart: &mut Cart, hlc: &mut Hlc<ManualClock>) -> Result<Cart> {
//!         match *self {
//!             Edit::Add(item, n) => cart.increment(item.to_string(), n, hlc),
//!             Edit::Drop(item) => cart.remove(item, hlc),
//!         }
//!     }
//! }
//!
//! let item = prop::sample::select(vec!["tea", "jam"]);
//! let edits = prop_oneof![
//!     3 => (item.clone(), -2..5i64).prop_map(|(i, n)| Edit::Add(i, n)),
//!     1 => item.prop_map(Edit::Drop),
//! ];
//! // In a test of your own: `testing::check_type::<Cart, _>(edits)`, 256 cases.
//! Kit::new().cases(16).check_type::<Cart, _>(edits).unwrap();
//! ```

use std::fmt;
use std::hash::{BuildHasher, Hasher};

pub use proptest;
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

use crate::causal::{Crdt, Data};
use crate::error::Result;
use crate::hlc::{Hlc, ManualClock};
use crate::mvreg::MergeFn;

pub mod laws;
mod merge;
mod program;
mod setup;
pub mod sim;

pub use program::{
    check_delta_since_pair, programs, programs_with, reachable_states, replica_id, Program,
    Refusal, Replica, Step, World, WriteRecord, MAX_REPLICAS, START_MS,
};
pub use setup::{Resolvable, Setup, SetupReport};

/// An operation of your application: one local write that the kit (and the
/// [simulator](sim)) can run at any replica.
///
/// ```
/// use concord::testing::Operation;
/// use concord::{Hlc, ManualClock, MvRegister, OrMap, Result};
///
/// type Emails = OrMap<String, MvRegister<String>>;
///
/// #[derive(Clone, Debug)]
/// struct SetEmail(String, String);
///
/// impl Operation<Emails> for SetEmail {
///     fn apply(&self, emails: &mut Emails, hlc: &mut Hlc<ManualClock>) -> Result<Emails> {
///         emails.write(self.0.clone(), self.1.clone(), hlc)
///     }
/// }
/// ```
pub trait Operation<T>: Clone + fmt::Debug {
    /// Applies the write to `state` with the replica's clock and returns the delta the
    /// mutator returned.
    ///
    /// # Errors
    ///
    /// Whatever the mutator returns; an operation that fails must leave `state`
    /// exactly as it was (the kit checks this).
    fn apply(&self, state: &mut T, hlc: &mut Hlc<ManualClock>) -> Result<T>;
}

/// What one check on one case returns: `Ok`, or why it failed (build one with
/// [`TestCaseError::fail`] or proptest's `prop_assert!` macros).
pub type CheckResult = std::result::Result<(), TestCaseError>;

/// The environment variable that fixes the seed of every check in the process:
/// `CONCORD_SEED=1234 cargo test my_test` replays a failure the kit reported with
/// `seed = 1234`.
pub const SEED_VAR: &str = "CONCORD_SEED";

/// A check that failed: which property, why, the smallest input that shows it, and the
/// seed that replays the run. Its `Display` is the message the panicking checks print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The property that broke, e.g. "replicas converge".
    pub property: String,
    /// Why, with the states or values involved.
    pub reason: String,
    /// The smallest failing input proptest shrank the failure to (a program, a list of
    /// siblings, a simulation), as text.
    pub input: String,
    /// The seed of the run: with [`SEED_VAR`] set to it (or [`Kit::seed`]), the same
    /// cases run again and shrink to the same input.
    pub seed: u64,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "concord::testing: {} failed", self.property)?;
        writeln!(f, "{}", self.reason)?;
        writeln!(f, "minimal failing input: {}", self.input)?;
        write!(
            f,
            "seed = {seed}; replay with {SEED_VAR}={seed}",
            seed = self.seed
        )
    }
}

impl std::error::Error for Failure {}

/// The settings of a run of checks: how many cases, which seed, and proptest's other
/// settings (such as where to keep failures for regression). Its methods return the
/// [`Failure`]; the free functions ([`check_type`], ...) panic with it.
///
/// ```
/// use concord::testing::{proptest, Kit};
/// use proptest::prelude::*;
///
/// // A merge function that keeps the largest sibling: sound.
/// let largest = |s: &[&u32]| **s.iter().max().unwrap();
/// Kit::new().cases(32).seed(7).check_merge_fn(any::<u32>(), largest).unwrap();
///
/// // One that keeps the last sibling plus one: a single value does not resolve to itself.
/// let bumped = |s: &[&u32]| s[s.len() - 1].wrapping_add(1);
/// let failure = Kit::new().seed(7).check_merge_fn(any::<u32>(), bumped).unwrap_err();
/// assert!(failure.reason.contains("does not resolve to itself"), "{failure}");
/// assert_eq!(failure.seed, 7);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Kit {
    config: Option<Config>,
    cases: Option<u32>,
    seed: Option<u64>,
}

impl Kit {
    /// The defaults: proptest's number of cases for the law and merge-function checks
    /// (256, or `PROPTEST_CASES`), [`Setup::DEFAULT_CASES`] simulations, and the seed
    /// from [`SEED_VAR`] or a random one.
    pub fn new() -> Self {
        Kit::default()
    }

    /// Runs `cases` cases per property (simulations included).
    pub fn cases(mut self, cases: u32) -> Self {
        self.cases = Some(cases);
        self
    }

    /// Uses `seed` whatever [`SEED_VAR`] says.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Uses proptest's `config` (its number of cases, failure persistence, shrink
    /// limits...); its seed is replaced by the kit's.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// The seed this kit runs with: [`Kit::seed`], else [`SEED_VAR`], else random.
    ///
    /// # Panics
    ///
    /// If [`SEED_VAR`] is set to something other than a number.
    pub fn run_seed(&self) -> u64 {
        if let Some(seed) = self.seed {
            return seed;
        }
        match std::env::var(SEED_VAR) {
            Ok(s) => s
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SEED_VAR}={s:?} is not a number (a u64)")),
            Err(_) => std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
        }
    }

    fn proptest_config(&self, default_cases: Option<u32>) -> Config {
        // Without a config of the caller's, failures are not persisted (proptest's
        // default place needs the source file of a `proptest!` test): the seed
        // replays them.
        let mut config = self.config.clone().unwrap_or_else(|| Config {
            failure_persistence: None,
            ..Config::default()
        });
        if let Some(cases) = self.cases {
            config.cases = cases;
        } else if let (None, Some(cases)) = (&self.config, default_cases) {
            config.cases = cases;
        }
        config
    }

    /// Runs `test` on cases drawn from `strategy`, seeded, and turns proptest's verdict
    /// into a [`Failure`] naming `property`; returns the seed.
    pub(crate) fn run<S>(
        &self,
        property: &str,
        default_cases: Option<u32>,
        strategy: &S,
        test: impl Fn(S::Value) -> CheckResult,
    ) -> std::result::Result<u64, Failure>
    where
        S: Strategy,
        S::Value: fmt::Debug,
    {
        let seed = self.run_seed();
        let mut config = self.proptest_config(default_cases);
        config.rng_seed = RngSeed::Fixed(seed);
        let mut runner = TestRunner::new(config);
        match runner.run(strategy, test) {
            Ok(()) => Ok(seed),
            Err(TestError::Fail(reason, input)) => Err(Failure {
                property: property.to_string(),
                reason: reason.message().to_string(),
                input: format!("{input:?}"),
                seed,
            }),
            Err(TestError::Abort(reason)) => Err(Failure {
                property: property.to_string(),
                reason: format!("the run was aborted: {}", reason.message()),
                input: String::new(),
                seed,
            }),
        }
    }

    /// [`check_type`], with this kit's settings.
    ///
    /// # Errors
    ///
    /// The first property that fails, with its shrunk [`Program`].
    pub fn check_type<T, W>(
        &self,
        ops: impl Strategy<Value = W> + 'static,
    ) -> std::result::Result<(), Failure>
    where
        T: Crdt + Default,
        W: Operation<T> + 'static,
    {
        let ops = ops.boxed();
        let four = programs(ops.clone());
        let seeded = (four.clone(), proptest::num::u64::ANY);
        self.run(
            "merge is a join (commutative, associative, idempotent) on reachable states",
            None,
            &four,
            |p| p.run::<T>().check_laws(),
        )?;
        self.run(
            "a state joined with its mutator's delta is the mutated state",
            None,
            &four,
            |p| p.run::<T>().check_mutator_deltas(),
        )?;
        self.run(
            "deltas in any order, duplicated, join to the full-state merge",
            None,
            &seeded,
            |(p, seed)| p.run::<T>().check_delta_merge(seed),
        )?;
        self.run("delta_since joins like the full state", None, &four, |p| {
            p.run::<T>().check_delta_since()
        })?;
        self.run("states and deltas survive the wire", None, &four, |p| {
            p.run::<T>().check_wire()
        })?;
        let wide = (programs_with(ops, 2..=5, 0..60), proptest::num::u64::ANY);
        self.run("replicas converge", None, &wide, |(p, seed)| {
            p.check_convergence::<T>(seed, |_| Ok(()))
        })?;
        Ok(())
    }

    /// [`check_merge_fn`], with this kit's settings.
    ///
    /// # Errors
    ///
    /// The first law the function breaks, with the shrunk siblings.
    pub fn check_merge_fn<V, F>(
        &self,
        values: impl Strategy<Value = V>,
        f: F,
    ) -> std::result::Result<(), Failure>
    where
        V: Data,
        F: MergeFn<V>,
    {
        let cases = merge::cases(values);
        self.run("the merge function", None, &cases, |case| {
            merge::check(&case, &f, false)
        })?;
        Ok(())
    }

    /// [`check_collapse_converges`], with this kit's settings.
    ///
    /// # Errors
    ///
    /// As [`Kit::check_merge_fn`], or several masters that collapsed one conflict
    /// concurrently ended with more than one sibling.
    pub fn check_collapse_converges<V, F>(
        &self,
        values: impl Strategy<Value = V>,
        f: F,
    ) -> std::result::Result<(), Failure>
    where
        V: Data,
        F: MergeFn<V>,
    {
        let cases = merge::cases(values);
        self.run(
            "concurrent collapse converges to one value",
            None,
            &cases,
            |case| merge::check(&case, &f, true),
        )?;
        Ok(())
    }

    /// [`check_setup`], with this kit's settings.
    ///
    /// # Errors
    ///
    /// The first simulation that breaks a property, shrunk.
    pub fn check_setup<T, W>(&self, setup: Setup<T, W>) -> std::result::Result<SetupReport, Failure>
    where
        T: Crdt + Default + 'static,
        W: Operation<T> + 'static,
    {
        setup.check(self)
    }
}

/// Checks your state type `T` and operations `W` on reachable states: random programs
/// of the operations `ops` generates, at several replicas, with merges, pulls and late,
/// duplicated and lost deltas in between (see the [module docs](self) for the
/// properties). 256 cases per property (proptest's default, or `PROPTEST_CASES`).
///
/// # Panics
///
/// With the [`Failure`]: the property, why, the shrunk [`Program`] and the seed.
pub fn check_type<T, W>(ops: impl Strategy<Value = W> + 'static)
where
    T: Crdt + Default,
    W: Operation<T> + 'static,
{
    if let Err(failure) = Kit::new().check_type::<T, W>(ops) {
        panic!("{failure}");
    }
}

/// Checks the application merge function `f` on sibling lists of 1 to 5 values drawn
/// from `values`, in canonical order as a register holds them:
///
/// * **one value resolves to itself**: `f([v]) == v`, and copies of one value
///   resolve to it (`f([v, v]) == v`: masters that collapse the same conflict at once
///   leave copies of the resolution as siblings);
/// * **deterministic**: the same siblings give the same value when `f` is called
///   again, on copies, and on values decoded from the wire, and masters that received
///   the siblings over the wire resolve them alike (a function that reads a `HashMap`'s
///   or `HashSet`'s iteration order, the clock, a random number or the local replica
///   fails here);
/// * **stable under collapse**: after several masters write the resolution back at
///   once and exchange their deltas, every master shows the value they wrote.
///
/// 256 cases (proptest's default, or `PROPTEST_CASES`).
///
/// # Panics
///
/// With the [`Failure`]: the law broken, the values involved, the shrunk siblings and
/// the seed.
pub fn check_merge_fn<V, F>(values: impl Strategy<Value = V>, f: F)
where
    V: Data,
    F: MergeFn<V>,
{
    if let Err(failure) = Kit::new().check_merge_fn(values, f) {
        panic!("{failure}");
    }
}

/// [`check_merge_fn`], and after several masters collapse the same conflict
/// concurrently and exchange their deltas, every register shows one value (its
/// siblings all hold the resolution, so it reads as that value and is not conflicted),
/// and the exchange reports no new conflict.
///
/// # Panics
///
/// With the [`Failure`], as [`check_merge_fn`].
pub fn check_collapse_converges<V, F>(values: impl Strategy<Value = V>, f: F)
where
    V: Data,
    F: MergeFn<V>,
{
    if let Err(failure) = Kit::new().check_collapse_converges(values, f) {
        panic!("{failure}");
    }
}

/// Runs `setup` in the simulator ([`Setup::DEFAULT_CASES`] simulations) and returns
/// what the runs did.
///
/// # Panics
///
/// With the [`Failure`]: the property, why, the shrunk simulation and the seed.
pub fn check_setup<T, W>(setup: Setup<T, W>) -> SetupReport
where
    T: Crdt + Default + 'static,
    W: Operation<T> + 'static,
{
    Kit::new()
        .check_setup(setup)
        .unwrap_or_else(|failure| panic!("{failure}"))
}
