//! [`Setup`]: a user's state type, operations and merge functions, run in the
//! simulator under faults by [`check_setup`](super::check_setup).

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Range, RangeInclusive};
use std::rc::Rc;

use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use proptest::test_runner::TestCaseError;

use super::merge::ADVICE;
use super::sim::{self, check_quiesced, Action, Faults, Sim, Stats};
use super::{Failure, Kit, Operation};
use crate::causal::{Crdt, Data};
use crate::error::Result;
use crate::hlc::{Hlc, ManualClock};
use crate::map::{Key, OrMap};
use crate::mvreg::{MergeFn, MvRegister};

/// A state whose registers an application merge function resolves: what
/// [`Setup::merge_fn`] needs to show the state as the application does and to collapse
/// it. Implemented for [`MvRegister<V>`] and [`OrMap<K, MvRegister<V>>`]; for another
/// shape (a map of maps of registers), implement it in a few lines.
pub trait Resolvable<V>: Crdt {
    /// What the application shows: every register resolved by the merge function.
    type View: PartialEq + fmt::Debug + 'static;

    /// The view, with each register's siblings resolved by `f`.
    fn view(&self, f: &dyn MergeFn<V>) -> Self::View;

    /// How many registers hold concurrent siblings.
    fn conflicted(&self) -> usize;

    /// Writes `f`'s resolution back to every conflicted register, as a local write at
    /// the replica owning `hlc`; returns the delta.
    ///
    /// # Errors
    ///
    /// As the register's write, with nothing changed.
    fn collapse(&mut self, f: &dyn MergeFn<V>, hlc: &mut Hlc<ManualClock>) -> Result<Self>;
}

impl<V: Data + 'static> Resolvable<V> for MvRegister<V> {
    type View = Option<V>;

    fn view(&self, f: &dyn MergeFn<V>) -> Option<V> {
        self.resolve(|s: &[&V]| f.merge_values(s))
    }

    fn conflicted(&self) -> usize {
        usize::from(self.is_conflicted())
    }

    fn collapse(&mut self, f: &dyn MergeFn<V>, hlc: &mut Hlc<ManualClock>) -> Result<Self> {
        match self.is_conflicted() {
            true => {
                let resolved = self.view(f).expect("a conflicted register holds values");
                self.write(resolved, hlc)
            }
            false => Ok(MvRegister::new()),
        }
    }
}

impl<K: Key + 'static, V: Data + 'static> Resolvable<V> for OrMap<K, MvRegister<V>> {
    type View = Vec<(K, V)>;

    fn view(&self, f: &dyn MergeFn<V>) -> Vec<(K, V)> {
        let f = |s: &[&V]| f.merge_values(s);
        self.resolve_all(&f).map(|(k, v)| (k.clone(), v)).collect()
    }

    fn conflicted(&self) -> usize {
        self.conflicted_keys().len()
    }

    fn collapse(&mut self, f: &dyn MergeFn<V>, hlc: &mut Hlc<ManualClock>) -> Result<Self> {
        OrMap::collapse(self, |s: &[&V]| f.merge_values(s), hlc)
    }
}

/// A resolved view, compared without knowing its type.
trait View: fmt::Debug {
    fn as_any(&self) -> &dyn Any;
    fn same(&self, other: &dyn View) -> bool;
}

impl<X: PartialEq + fmt::Debug + 'static> View for X {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn same(&self, other: &dyn View) -> bool {
        other.as_any().downcast_ref::<X>() == Some(self)
    }
}

/// A merge function over the registers of `T`, with its value type erased.
trait Resolution<T> {
    fn view(&self, state: &T) -> Box<dyn View>;
    fn conflicted(&self, state: &T) -> usize;
    fn collapse(&self, state: &mut T, hlc: &mut Hlc<ManualClock>) -> Result<T>;
}

struct ByMergeFn<V, F> {
    f: F,
    values: PhantomData<fn(&V) -> V>,
}

impl<T: Resolvable<V>, V, F: MergeFn<V>> Resolution<T> for ByMergeFn<V, F> {
    fn view(&self, state: &T) -> Box<dyn View> {
        Box::new(state.view(&self.f))
    }

    fn conflicted(&self, state: &T) -> usize {
        state.conflicted()
    }

    fn collapse(&self, state: &mut T, hlc: &mut Hlc<ManualClock>) -> Result<T> {
        state.collapse(&self.f, hlc)
    }
}

/// A write in a setup's simulation: one of the user's operations, or a collapse with
/// one of the merge functions (numbered from 1 in the order they were given).
enum SetupOp<T, W> {
    User(W),
    Collapse(usize, Rc<dyn Resolution<T>>),
}

impl<T, W: Clone> Clone for SetupOp<T, W> {
    fn clone(&self) -> Self {
        match self {
            SetupOp::User(w) => SetupOp::User(w.clone()),
            SetupOp::Collapse(i, r) => SetupOp::Collapse(*i, r.clone()),
        }
    }
}

impl<T, W: fmt::Debug> fmt::Debug for SetupOp<T, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupOp::User(w) => w.fmt(f),
            SetupOp::Collapse(i, _) => write!(f, "Collapse(merge function {i})"),
        }
    }
}

impl<T, W: Operation<T>> Operation<T> for SetupOp<T, W> {
    fn apply(&self, state: &mut T, hlc: &mut Hlc<ManualClock>) -> Result<T> {
        match self {
            SetupOp::User(w) => w.apply(state, hlc),
            SetupOp::Collapse(_, r) => r.collapse(state, hlc),
        }
    }
}

/// One simulation: the simulator's settings and the actions.
struct SetupCase<T, W> {
    nodes: usize,
    seed: u64,
    faults: Faults,
    limit: Option<usize>,
    actions: Vec<Action<SetupOp<T, W>>>,
}

impl<T, W: Clone> Clone for SetupCase<T, W> {
    fn clone(&self) -> Self {
        SetupCase {
            nodes: self.nodes,
            seed: self.seed,
            faults: self.faults,
            limit: self.limit,
            actions: self.actions.clone(),
        }
    }
}

/// The settings on one line, then one action per line.
impl<T, W: fmt::Debug> fmt::Debug for SetupCase<T, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sim::new({}, {}, {:?})",
            self.nodes, self.seed, self.faults
        )?;
        if let Some(bytes) = self.limit {
            write!(f, ".with_message_limit({bytes})")?;
        }
        write!(f, ", {} actions:", self.actions.len())?;
        for action in &self.actions {
            write!(f, "\n  {action:?}")?;
        }
        Ok(())
    }
}

/// What [`check_setup`](super::check_setup) did: proof that the simulations put the
/// setup to work (a report of zero conflicts says the operations never raced).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetupReport {
    /// Simulations run.
    pub cases: u32,
    /// The seed they were drawn from (see [`SEED_VAR`](super::SEED_VAR)).
    pub seed: u64,
    /// What the simulations did, summed: writes, messages sent, lost and duplicated,
    /// conflicts reported, crashes...
    pub stats: Stats,
    /// Conflicted registers the merge functions resolved, summed over the quiet states
    /// the simulations reached (0: the merge functions were never put to work).
    pub resolved: u64,
}

impl fmt::Display for SetupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "{} simulations (seed {}): {} writes, {} messages ({} lost, {} duplicated), \
             {} crashes, {} conflicts reported, {} conflicted registers resolved",
            self.cases,
            self.seed,
            s.writes,
            s.sent,
            s.lost,
            s.duplicated,
            s.crashes,
            s.conflicts,
            self.resolved
        )
    }
}

/// A replication setup to run in the simulator: your state type `T`, a strategy for
/// your operations `W`, and the merge functions the application resolves registers
/// with. [`check_setup`](super::check_setup) runs it.
///
/// Each simulation has 2 to 5 nodes (see [`Setup::nodes`]), all masters and peers of
/// each other, over a network that loses (up to 50%), duplicates (up to 30%) and
/// reorders messages, half the time with a message limit small enough that catch-ups
/// go in chunks; up to 60 random actions ([`sim::action`]): your operations, pushes,
/// deliveries, partitions and heals, snapshots, crashes that restart a node from its
/// latest or an older snapshot, time passing, and, with merge functions, collapses.
/// Then the network heals and the simulation runs until quiet, and:
///
/// * everything [`check_quiesced`] checks holds: every replica holds the same state,
///   no dot was issued twice, no honest message was rejected, no write that reached a
///   peer before its writer crashed was lost;
/// * for each merge function, every node shows the same resolved view, twice in a
///   row; then every node collapses at once, the simulation runs until quiet again,
///   and every node still shows that view.
///
/// ```
/// use concord::testing::{self, proptest, Kit, Operation, Setup};
/// use concord::{Hlc, ManualClock, MvRegister, OrMap, Result};
/// use proptest::prelude::*;
///
/// type Stock = OrMap<String, MvRegister<u32>>;
///
/// #[derive(Clone, Debug)]
/// struct Count(&'static str, u32);
///
/// impl Operation<Stock> for Count {
///     fn apply(&self, stock: &mut Stock, hlc: &mut Hlc<ManualClock>) -> Result<Stock> {
///         stock.write(self.0.to_string(), self.1, hlc)
///     }
/// }
///
/// let counts = (prop::sample::select(vec!["pears", "plums"]), 0..10u32)
///     .prop_map(|(item, n)| Count(item, n));
/// // Racing counts: the lowest is the safe one.
/// let lowest = |s: &[&u32]| **s.iter().min().unwrap();
/// let setup = Setup::<Stock, _>::new(counts).merge_fn(lowest);
/// // In a test of your own: `testing::check_setup(setup)`.
/// let report = Kit::new().cases(8).check_setup(setup).unwrap();
/// println!("{report}");
/// ```
pub struct Setup<T, W> {
    ops: BoxedStrategy<W>,
    nodes: RangeInclusive<usize>,
    steps: Range<usize>,
    resolutions: Vec<Rc<dyn Resolution<T>>>,
}

impl<T, W> Setup<T, W> {
    /// How many simulations [`check_setup`](super::check_setup) runs unless the
    /// [`Kit`] says otherwise.
    pub const DEFAULT_CASES: u32 = 64;
}

impl<T, W> Setup<T, W>
where
    T: Crdt + Default + 'static,
    W: Operation<T> + 'static,
{
    /// A setup whose writes are drawn from `ops`.
    pub fn new(ops: impl Strategy<Value = W> + 'static) -> Self {
        Setup {
            ops: ops.boxed(),
            nodes: 2..=5,
            steps: 0..60,
            resolutions: Vec::new(),
        }
    }

    /// Simulations of `nodes` nodes (2 to 5 by default; at most 16).
    ///
    /// # Panics
    ///
    /// If `nodes` is empty, starts at 0 or goes past 16.
    pub fn nodes(mut self, nodes: RangeInclusive<usize>) -> Self {
        assert!(
            *nodes.start() >= 1 && *nodes.end() <= 16 && !nodes.is_empty(),
            "a setup runs on 1 to 16 nodes, not {nodes:?}"
        );
        self.nodes = nodes;
        self
    }

    /// Simulations of a number of actions in `steps` (`0..60` by default).
    pub fn steps(mut self, steps: Range<usize>) -> Self {
        self.steps = steps;
        self
    }

    /// The application resolves the registers of `T` with the merge function `f`
    /// (called as many times as there are merge functions to check).
    pub fn merge_fn<V, F>(mut self, f: F) -> Self
    where
        T: Resolvable<V>,
        V: 'static,
        F: MergeFn<V> + 'static,
    {
        self.resolutions.push(Rc::new(ByMergeFn {
            f,
            values: PhantomData,
        }));
        self
    }

    fn strategy(&self) -> BoxedStrategy<SetupCase<T, W>> {
        let user = self.ops.clone().prop_map(SetupOp::User);
        let ops = if self.resolutions.is_empty() {
            user.boxed()
        } else {
            let all = self.resolutions.clone();
            let collapse =
                (0..all.len()).prop_map(move |i| SetupOp::Collapse(i + 1, all[i].clone()));
            prop_oneof![8 => user, 1 => collapse].boxed()
        };
        (
            self.nodes.clone(),
            any::<u64>(),
            sim::faults(),
            sim::message_limit(),
            proptest::collection::vec(
                sim::action_with(ops, (*self.nodes.end()).max(7)),
                self.steps.clone(),
            ),
        )
            .prop_map(|(nodes, seed, faults, limit, actions)| SetupCase {
                nodes,
                seed,
                faults,
                limit,
                actions,
            })
            .boxed()
    }

    pub(crate) fn check(self, kit: &Kit) -> std::result::Result<SetupReport, Failure> {
        let strategy = self.strategy();
        let report = RefCell::new(SetupReport::default());
        let seed = kit.run(
            "the setup in the simulator",
            Some(Self::DEFAULT_CASES),
            &strategy,
            |case| {
                let (stats, resolved) = run_case(&case, &self.resolutions)?;
                let mut report = report.borrow_mut();
                report.cases += 1;
                report.stats += &stats;
                report.resolved += resolved;
                Ok(())
            },
        )?;
        let mut report = report.into_inner();
        report.seed = seed;
        Ok(report)
    }
}

/// How many more times each node resolves its state when checking determinism.
const REPEATS: usize = 3;

fn fail(message: String) -> TestCaseError {
    TestCaseError::fail(message)
}

/// Runs one simulation and checks it; returns what it did and how many conflicted
/// registers the merge functions resolved.
fn run_case<T, W>(
    case: &SetupCase<T, W>,
    resolutions: &[Rc<dyn Resolution<T>>],
) -> std::result::Result<(Stats, u64), TestCaseError>
where
    T: Crdt + Default + 'static,
    W: Operation<T> + 'static,
{
    let mut sim: Sim<T> = Sim::new(case.nodes, case.seed, case.faults);
    if let Some(bytes) = case.limit {
        sim = sim.with_message_limit(bytes);
    }
    sim.run(case.actions.iter().cloned());
    sim.quiesce();
    check_quiesced(&sim)?;
    let n = sim.len();
    let mut resolved = 0;
    for (k, r) in resolutions.iter().enumerate() {
        let number = k + 1;
        resolved += r.conflicted(sim.engine(0).state()) as u64;
        let views: Vec<Box<dyn View>> = (0..n).map(|i| r.view(sim.engine(i).state())).collect();
        // Each node resolves its state a few more times: a function that depends on
        // anything but the siblings rarely gives the same answer every time.
        for (i, view) in views.iter().enumerate() {
            for _ in 0..REPEATS {
                let again = r.view(sim.engine(i).state());
                if !again.same(&**view) {
                    return Err(fail(format!(
                        "merge function {number} is not deterministic: from one state, \
                         node {i} shows\n {view:?}\nand then\n {again:?}\n{ADVICE}"
                    )));
                }
            }
        }
        for (i, view) in views.iter().enumerate().skip(1) {
            if !view.same(&*views[0]) {
                return Err(fail(format!(
                    "merge function {number} is not deterministic: nodes 0 and {i} hold \
                     the same state but show\n {:?}\nand\n {view:?}\n{ADVICE}",
                    views[0]
                )));
            }
        }
        for node in 0..n {
            sim.step(Action::Write {
                node,
                op: SetupOp::<T, W>::Collapse(number, r.clone()),
            });
        }
        sim.quiesce();
        check_quiesced(&sim)?;
        for i in 0..n {
            let after = r.view(sim.engine(i).state());
            if !after.same(&*views[0]) {
                return Err(fail(format!(
                    "collapsing changed the view: every node wrote back merge function \
                     {number}'s resolution at once; before, every node showed\n {:?}\n\
                     after, node {i} shows\n {after:?}\n(a merge function that is \
                     deterministic and resolves copies of a value to that value cannot \
                     change it: check it with check_merge_fn)",
                    views[0]
                )));
            }
        }
    }
    Ok((sim.stats().clone(), resolved))
}
