//! Reachable states: random programs of the user's operations at a few replicas, with
//! merges, pulls and delta deliveries in between, and the checks over what they leave.
//!
//! The strategy generates the [`Program`], not the states, so that proptest shrinks the
//! *program* and a failure prints the smallest list of steps that breaks a law.
//! [`Program::run`] replays it into a [`World`], which keeps every state any replica
//! held, every delta a mutator returned and every write made.
//!
//! States drawn from *different* worlds are not jointly reachable (both worlds issue
//! the dot `(r1, 1)`, for different writes), so the laws relate states of one world.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::{Range, RangeInclusive};

use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use proptest::test_runner::TestCaseError;

use super::sim::Rng;
use super::{laws, CheckResult, Operation};
use crate::causal::{Crdt, Limits};
use crate::clock::{CausalContext, VectorClock};
use crate::error::Error;
use crate::hlc::{Hlc, ManualClock, Timestamp};
use crate::id::{Dot, ReplicaId};
use crate::resolver::Outcome;

/// The wall time every world starts at (ms since the Unix epoch).
pub const START_MS: u64 = 1_700_000_000_000;

/// The most replicas a program may have (ids `1..=MAX_REPLICAS`).
pub const MAX_REPLICAS: usize = 5;

/// The id of the replica at `index` (0-based): `ReplicaId::from_u128(index + 1)`.
pub fn replica_id(index: usize) -> ReplicaId {
    ReplicaId::from_u128(index as u128 + 1)
}

/// One step of a [`Program`]. Replicas are numbered from 0 (replica `i` has the id
/// [`replica_id`]`(i)`, shown as `r{i+1}`) and taken modulo the program's replica
/// count, so any generated number is valid.
#[derive(Clone, PartialEq, Eq)]
pub enum Step<W> {
    /// The shared wall clock moves forward by this many ms (0: the next writes fall in
    /// the same millisecond).
    Tick(u64),
    /// A local write at replica `at`.
    Write {
        /// The writing replica.
        at: u8,
        /// The operation.
        op: W,
    },
    /// Full-state merge: `to` merges a copy of `from`'s state.
    Merge {
        /// The sending replica.
        from: u8,
        /// The receiving replica.
        to: u8,
    },
    /// A mutator delta reaches `to`: the newest one issued so far when `back` is 0, the
    /// one before it when 1, and so on (modulo the number issued). Deltas never
    /// delivered are lost; delivered twice, duplicated; after newer ones, reordered.
    Deliver {
        /// How far back in the issue log.
        back: u8,
        /// The receiving replica.
        to: u8,
    },
    /// Anti-entropy pull: `to` merges `from.delta_since(to's context clock)`, or
    /// `from`'s full state if `to` does not meet `delta_since`'s terms (it merged
    /// mutator deltas out of causal order: see [`World::is_honest`]).
    Pull {
        /// The replica computing the delta.
        from: u8,
        /// The receiving replica.
        to: u8,
    },
}

/// Compact, replicas named by their ids (`r1` is `ReplicaId::from_u128(1)`), so that a
/// shrunk counterexample reads like a script.
impl<W: fmt::Debug> fmt::Debug for Step<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Tick(ms) => write!(f, "Tick(+{ms} ms)"),
            Step::Write { at, op } => write!(f, "Write(r{} <- {op:?})", *at as usize + 1),
            Step::Merge { from, to } => {
                write!(f, "Merge(r{} -> r{})", *from as usize + 1, *to as usize + 1)
            }
            Step::Deliver { back, to } => {
                write!(f, "Deliver(delta #-{back} -> r{})", *to as usize + 1)
            }
            Step::Pull { from, to } => {
                write!(f, "Pull(r{} -> r{})", *from as usize + 1, *to as usize + 1)
            }
        }
    }
}

/// A random program: steps over a few replicas whose wall clocks may be skewed.
#[derive(Clone, PartialEq, Eq)]
pub struct Program<W> {
    /// How many replicas take part (ids `1..=replicas`).
    pub replicas: usize,
    /// Each replica's wall clock runs this many ms ahead of the shared time (all zero
    /// in most programs, so that writes fall in the same millisecond).
    pub skew_ms: Vec<u64>,
    /// The steps.
    pub steps: Vec<Step<W>>,
}

/// One step per line.
impl<W: fmt::Debug> fmt::Debug for Program<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} replicas", self.replicas)?;
        let skews = &self.skew_ms[..self.replicas.min(self.skew_ms.len())];
        if skews.iter().any(|s| *s != 0) {
            write!(f, ", clocks ahead by {skews:?} ms")?;
        }
        write!(f, ", {} steps:", self.steps.len())?;
        for step in &self.steps {
            write!(f, "\n  {step:?}")?;
        }
        Ok(())
    }
}

fn tick_ms() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        2 => 1u64..3,
        1 => 10u64..1_000,
    ]
}

fn step<W: Clone + fmt::Debug + 'static>(
    ops: BoxedStrategy<W>,
    replicas: usize,
) -> impl Strategy<Value = Step<W>> {
    let r = 0..replicas as u8;
    prop_oneof![
        4 => (r.clone(), ops).prop_map(|(at, op)| Step::Write { at, op }),
        2 => tick_ms().prop_map(Step::Tick),
        2 => (r.clone(), r.clone()).prop_map(|(from, to)| Step::Merge { from, to }),
        3 => (0u8..16, r.clone()).prop_map(|(back, to)| Step::Deliver { back, to }),
        1 => (r.clone(), r).prop_map(|(from, to)| Step::Pull { from, to }),
    ]
}

/// Per-replica clock skews: usually none (same-millisecond writes), sometimes up to
/// 300 ms (less than the HLC's default 500 ms max offset, so observing never fails).
fn skews() -> impl Strategy<Value = Vec<u64>> {
    prop_oneof![
        2 => Just(vec![0u64; MAX_REPLICAS]),
        1 => proptest::collection::vec(0u64..300, MAX_REPLICAS),
    ]
}

/// Programs of `ops` over four replicas, of up to 40 steps: what the checks of
/// [`check_type`](super::check_type) run on (convergence runs on
/// `programs_with(ops, 2..=5, 0..60)`).
pub fn programs<W: Clone + fmt::Debug + 'static>(
    ops: impl Strategy<Value = W> + 'static,
) -> BoxedStrategy<Program<W>> {
    programs_with(ops, 4..=4, 0..40)
}

/// Programs of `ops` over `replicas` replicas (between 1 and [`MAX_REPLICAS`]), with a
/// number of steps in `steps`.
///
/// # Panics
///
/// If `replicas` is empty or goes past [`MAX_REPLICAS`].
pub fn programs_with<W: Clone + fmt::Debug + 'static>(
    ops: impl Strategy<Value = W> + 'static,
    replicas: RangeInclusive<usize>,
    steps: Range<usize>,
) -> BoxedStrategy<Program<W>> {
    assert!(
        *replicas.start() >= 1 && *replicas.end() <= MAX_REPLICAS && !replicas.is_empty(),
        "programs run on 1 to {MAX_REPLICAS} replicas, not {replicas:?}"
    );
    let ops = ops.boxed();
    replicas
        .prop_flat_map(move |n| {
            (
                skews(),
                proptest::collection::vec(step(ops.clone(), n), steps.clone()),
            )
                .prop_map(move |(skew_ms, steps)| Program {
                    replicas: n,
                    skew_ms,
                    steps,
                })
        })
        .boxed()
}

/// The final states of the replicas after a random program of `ops` over four
/// replicas: jointly reachable states for properties of your own (a failure shrinks
/// through the program, though only the states are shown).
///
/// ```
/// use concord::testing::{laws, proptest, reachable_states, Operation};
/// use concord::{Hlc, ManualClock, PnCounter, Result};
/// use proptest::prelude::*;
/// use proptest::test_runner::{TestCaseError, TestRunner};
///
/// #[derive(Clone, Debug)]
/// struct Add(i64);
///
/// impl Operation<PnCounter> for Add {
///     fn apply(&self, c: &mut PnCounter, hlc: &mut Hlc<ManualClock>) -> Result<PnCounter> {
///         c.increment(self.0, hlc)
///     }
/// }
///
/// let states = reachable_states::<PnCounter, _>((-5..5i64).prop_map(Add));
/// TestRunner::default()
///     .run(&states, |s| laws::all(&s[0], &s[1], &s[2]).map_err(TestCaseError::fail))
///     .unwrap();
/// ```
pub fn reachable_states<T, W>(ops: impl Strategy<Value = W> + 'static) -> BoxedStrategy<Vec<T>>
where
    T: Crdt + Default + 'static,
    W: Operation<T> + 'static,
{
    programs(ops)
        .prop_map(|p| p.run::<T>().replicas.into_iter().map(|r| r.state).collect())
        .boxed()
}

/// One replica of a [`World`].
#[derive(Debug)]
pub struct Replica<T> {
    /// Its id.
    pub id: ReplicaId,
    /// Its wall clock (the shared time plus its skew).
    pub time: ManualClock,
    /// Its hybrid logical clock.
    pub hlc: Hlc<ManualClock>,
    /// Its current state.
    pub state: T,
}

/// One local write, as it happened.
#[derive(Debug)]
pub struct WriteRecord<T, W> {
    /// The writing replica (index).
    pub at: usize,
    /// The operation.
    pub op: W,
    /// The dots the write issued, in order (none for a write that changed nothing,
    /// such as removing an absent key).
    pub dots: Vec<Dot>,
    /// Its HLC timestamp (the writer's `hlc.last()` right after the write).
    pub ts: Timestamp,
    /// The writer's causal context before the write: every write it supersedes.
    pub seen: CausalContext,
    /// The writer's state before the write.
    pub before: T,
    /// The delta the operation returned.
    pub delta: T,
    /// The writer's state after the write.
    pub after: T,
    /// How many times each replica received this delta through [`Step::Deliver`].
    pub delivered: Vec<usize>,
}

impl<T, W> WriteRecord<T, W> {
    /// The last dot the write issued (the one that tags what it wrote).
    pub fn dot(&self) -> Option<Dot> {
        self.dots.last().copied()
    }
}

/// An operation that returned an error.
#[derive(Debug)]
pub struct Refusal<W> {
    /// The replica (index).
    pub at: usize,
    /// The operation.
    pub op: W,
    /// What it returned.
    pub error: Error,
    /// True if the replica's state changed all the same (a bug: a failing operation
    /// must change nothing).
    pub changed: bool,
}

/// A replayed [`Program`]: the replicas' states, and everything that happened on the way.
#[derive(Debug)]
pub struct World<T, W> {
    /// The shared wall time (before skews).
    pub now_ms: u64,
    /// Per-replica skews.
    pub skew_ms: Vec<u64>,
    /// The replicas, with their final states.
    pub replicas: Vec<Replica<T>>,
    /// Every write that succeeded, in order.
    pub writes: Vec<WriteRecord<T, W>>,
    /// Every operation that returned an error.
    pub refused: Vec<Refusal<W>>,
    /// Every state any replica held, in order (the empty initial state first).
    pub history: Vec<T>,
    /// For each state of [`World::history`], whether it was causally complete: it had
    /// received every write its context names and every write those had seen (what
    /// `delta_since` needs of its receiver; mutator deltas delivered out of causal
    /// order can leave a replica that is not).
    pub history_complete: Vec<bool>,
    /// The writes (indices into [`World::writes`]) each replica has received, its
    /// own included.
    pub received: Vec<BTreeSet<usize>>,
    /// The outcome of every merge performed.
    pub outcomes: Vec<Outcome>,
    /// Every `delta_since` a pull computed.
    pub pulled: Vec<T>,
    /// Every delivery, in order: `(index in writes, receiving replica)`.
    pub deliveries: Vec<(usize, usize)>,
}

impl<W: Clone + fmt::Debug> Program<W> {
    /// Replays the program for the state type `T`.
    pub fn run<T>(&self) -> World<T, W>
    where
        T: Crdt + Default,
        W: Operation<T>,
    {
        let mut world = World::new(self.replicas, &self.skew_ms);
        for step in &self.steps {
            world.apply(step);
        }
        world
    }

    /// Replays the program twice and brings every replica up to date: once by
    /// full-state merges between every pair, once by handing every replica every
    /// mutator delta (duplicated and in its own order, drawn from `seed`). Both times
    /// every replica must end with the join of all the states, which the deltas alone
    /// must also give; then `converged` (an oracle of yours, `|_| Ok(())` for none)
    /// checks each converged world.
    ///
    /// # Errors
    ///
    /// The first replica that differs, or what `converged` returns.
    pub fn check_convergence<T>(
        &self,
        seed: u64,
        converged: impl Fn(&World<T, W>) -> CheckResult,
    ) -> CheckResult
    where
        T: Crdt + Default,
        W: Operation<T>,
    {
        let mut world = self.run::<T>();
        let expected = world.join_of_states();
        world.merge_all_pairs();
        for (i, s) in world.states().into_iter().enumerate() {
            prop_assert_eq!(
                s,
                &expected,
                "replica r{} differs from the others after all-pairs merge",
                i + 1
            );
        }
        converged(&world)?;

        let mut rng = Rng::new(seed);
        let mut world = self.run::<T>();
        let all_deltas = join_all(world.writes.iter().map(|w| w.delta.clone()));
        prop_assert_eq!(
            &all_deltas,
            &expected,
            "the join of every delta differs from the join of the states"
        );
        for to in 0..world.replicas.len() {
            for delta in shuffled_deltas(&world, &mut rng) {
                world.receive(to, delta);
            }
            prop_assert_eq!(
                &world.replicas[to].state,
                &expected,
                "replica r{} differs after receiving every delta",
                to + 1
            );
        }
        converged(&world)
    }
}

fn join_all<T: Crdt + Default>(states: impl IntoIterator<Item = T>) -> T {
    let mut acc = T::default();
    for s in states {
        acc.merge(s);
    }
    acc
}

/// Every write's delta, once to three times each, in a random order.
fn shuffled_deltas<T: Clone, W>(world: &World<T, W>, rng: &mut Rng) -> Vec<T> {
    let mut out = Vec::new();
    for w in &world.writes {
        for _ in 0..1 + rng.below(3) {
            out.push(w.delta.clone());
        }
    }
    rng.shuffle(&mut out);
    out
}

/// The state as JSON, for failure messages (full replica ids, exactly what a peer
/// would send).
/// `y ⊔ x.delta_since(y's clock) == y ⊔ x`: the delta since what `y` has seen carries
/// everything `x` would. `y` must meet [`Crdt::delta_since`]'s terms (it holds every
/// write its clock covers, with its effects).
///
/// # Errors
///
/// The two results, with `x`, `y` and the delta, if they differ.
pub fn check_delta_since_pair<T: Crdt>(x: &T, y: &T) -> CheckResult {
    let delta = x.delta_since(&y.context().clock());
    let mut by_delta = y.clone();
    by_delta.merge(delta.clone());
    let mut by_state = y.clone();
    by_state.merge(x.clone());
    prop_assert_eq!(
        &by_delta,
        &by_state,
        "y ⊔ x.delta_since(y's clock) != y ⊔ x\n x = {}\n y = {}\n delta = {}",
        json(x),
        json(y),
        json(&delta)
    );
    Ok(())
}

fn json<T: serde::Serialize>(state: &T) -> String {
    serde_json::to_string(state).unwrap_or_else(|e| format!("<does not encode: {e}>"))
}

/// A law's verdict, with the states also shown in their JSON wire form, ready to paste
/// into a regression test.
fn law<T: serde::Serialize>(result: Result<(), String>, states: &[&T]) -> CheckResult {
    result.map_err(|e| {
        let json: Vec<String> = states.iter().map(|s| json(*s)).collect();
        TestCaseError::fail(format!("{e}\nthe states as JSON:\n {}", json.join("\n ")))
    })
}

impl<T: Crdt + Default, W: Clone + fmt::Debug> World<T, W> {
    /// `n` replicas with empty states at [`START_MS`], clocks ahead by `skew_ms`.
    pub fn new(n: usize, skew_ms: &[u64]) -> Self {
        let replicas = (0..n)
            .map(|i| {
                let time = ManualClock::new(START_MS + skew_ms.get(i).copied().unwrap_or(0));
                Replica {
                    id: replica_id(i),
                    hlc: Hlc::new(replica_id(i), time.clone()),
                    time,
                    state: T::default(),
                }
            })
            .collect();
        World {
            now_ms: START_MS,
            skew_ms: skew_ms.to_vec(),
            replicas,
            writes: Vec::new(),
            refused: Vec::new(),
            history: vec![T::default()],
            history_complete: vec![true],
            received: vec![BTreeSet::new(); n],
            outcomes: Vec::new(),
            pulled: Vec::new(),
            deliveries: Vec::new(),
        }
    }

    /// Applies one step.
    pub fn apply(&mut self, step: &Step<W>)
    where
        W: Operation<T>,
    {
        let n = self.replicas.len();
        match step {
            Step::Tick(ms) => self.advance(*ms),
            Step::Write { at, op } => {
                self.write(*at as usize % n, op);
            }
            Step::Merge { from, to } => {
                let (from, to) = (*from as usize % n, *to as usize % n);
                let got = self.received[from].clone();
                self.received[to].extend(got);
                let state = self.replicas[from].state.clone();
                self.receive(to, state);
            }
            Step::Deliver { back, to } => {
                if self.writes.is_empty() {
                    return;
                }
                let i = self.writes.len() - 1 - *back as usize % self.writes.len();
                let to = *to as usize % n;
                self.writes[i].delivered[to] += 1;
                self.deliveries.push((i, to));
                self.received[to].insert(i);
                let delta = self.writes[i].delta.clone();
                self.receive(to, delta);
            }
            Step::Pull { from, to } => {
                let (from, to) = (*from as usize % n, *to as usize % n);
                // `delta_since`'s terms: the receiver holds every write its clock
                // covers, with its effects. One that merged mutator deltas out of
                // causal order may not, and a delta computed against its clock can
                // leave it (and every peer it later sends deltas to) without a
                // removal; as the docs prescribe, it is sent the full state (the
                // delta since nothing) instead.
                let clock = if self.is_honest(to) {
                    self.replicas[to].state.context().clock()
                } else {
                    VectorClock::new()
                };
                // The delta carries the writes the clock does not cover.
                let got: Vec<usize> = self.received[from]
                    .iter()
                    .copied()
                    .filter(|&i| self.writes[i].dot().is_some_and(|d| !clock.covers(d)))
                    .collect();
                self.received[to].extend(got);
                let delta = self.replicas[from].state.delta_since(&clock);
                self.pulled.push(delta.clone());
                self.receive(to, delta);
            }
        }
    }

    /// Moves the shared wall time forward by `ms`.
    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        for (i, r) in self.replicas.iter().enumerate() {
            r.time
                .set(self.now_ms + self.skew_ms.get(i).copied().unwrap_or(0));
        }
    }

    /// A local write at replica `at` (an index); returns the delta, or `None` if the
    /// operation returned an error (recorded in [`World::refused`]).
    pub fn write(&mut self, at: usize, op: &W) -> Option<T>
    where
        W: Operation<T>,
    {
        let n = self.replicas.len();
        let r = &mut self.replicas[at];
        let before = r.state.clone();
        let issued = before.context().max_counter(r.id);
        match op.apply(&mut r.state, &mut r.hlc) {
            Ok(delta) => {
                let now = r.state.context().max_counter(r.id);
                self.writes.push(WriteRecord {
                    at,
                    op: op.clone(),
                    dots: (issued + 1..=now).map(|c| Dot::new(r.id, c)).collect(),
                    ts: r.hlc.last(),
                    seen: before.context().clone(),
                    before,
                    delta: delta.clone(),
                    after: r.state.clone(),
                    delivered: vec![0; n],
                });
                self.received[at].insert(self.writes.len() - 1);
                self.push_history(at);
                Some(delta)
            }
            Err(error) => {
                let changed = r.state != before;
                self.refused.push(Refusal {
                    at,
                    op: op.clone(),
                    error,
                    changed,
                });
                None
            }
        }
    }

    /// Replica `to` receives `state` (a full state or a delta): its HLC observes the
    /// newest timestamp in it, as a sync engine does, then it merges.
    ///
    /// # Panics
    ///
    /// If the state holds a timestamp further ahead than the HLC's max offset (the
    /// programs' skews stay well within it).
    pub fn receive(&mut self, to: usize, state: T) -> Outcome {
        let r = &mut self.replicas[to];
        if let Some(ts) = Crdt::max_timestamp(&state) {
            r.hlc
                .observe(&ts)
                .expect("the programs' clock skews stay within the max offset");
        }
        let outcome = r.state.merge(state);
        self.outcomes.push(outcome);
        self.push_history(to);
        outcome
    }

    fn push_history(&mut self, r: usize) {
        self.history.push(self.replicas[r].state.clone());
        let complete = self.is_complete(r);
        self.history_complete.push(complete);
    }

    /// True if replica `r` is causally complete: it has received every write its
    /// context names, and every write that those had seen.
    pub fn is_complete(&self, r: usize) -> bool {
        let ctx = self.replicas[r].state.context();
        let received = &self.received[r];
        self.writes.iter().enumerate().all(|(i, w)| {
            received.contains(&i)
                || w.dots.iter().all(|&d| {
                    !ctx.contains(d) && received.iter().all(|&j| !self.writes[j].seen.contains(d))
                })
        })
    }

    /// True if replica `r` meets [`Crdt::delta_since`]'s terms: it is causally
    /// complete ([`World::is_complete`]) and its context has no gaps, so its clock
    /// covers only writes it holds with their effects.
    pub fn is_honest(&self, r: usize) -> bool {
        let ctx = self.replicas[r].state.context();
        self.is_complete(r) && *ctx == CausalContext::from(&ctx.clock())
    }

    /// The replicas' current states.
    pub fn states(&self) -> Vec<&T> {
        self.replicas.iter().map(|r| &r.state).collect()
    }

    /// Every state of the world: each state any replica held, each mutator delta and
    /// each `delta_since` result. Any two of them are jointly reachable.
    pub fn pool(&self) -> Vec<&T> {
        self.history
            .iter()
            .chain(self.writes.iter().map(|w| &w.delta))
            .chain(self.pulled.iter())
            .collect()
    }

    /// The replicas' current states, then every mutator delta and every `delta_since`
    /// result: the states the pairwise laws are checked on. Unlike [`World::pool`],
    /// which states these are does not depend on merges along the way, so a failing
    /// program shrinks well.
    pub fn finals_and_deltas(&self) -> Vec<&T> {
        self.replicas
            .iter()
            .map(|r| &r.state)
            .chain(self.writes.iter().map(|w| &w.delta))
            .chain(self.pulled.iter())
            .collect()
    }

    /// The ordered pairs the binary properties are checked on: each replica's final
    /// state with every state of [`World::finals_and_deltas`] (both ways), and each
    /// delta with the two issued before and after it.
    pub fn pairs(&self) -> Vec<(&T, &T)> {
        let finals = self.states();
        let all = self.finals_and_deltas();
        let mut pairs = Vec::new();
        for a in &finals {
            for b in &all {
                pairs.push((*a, *b));
                pairs.push((*b, *a));
            }
        }
        let deltas = &all[finals.len()..];
        for (i, a) in deltas.iter().enumerate() {
            for b in &deltas[i.saturating_sub(2)..(i + 3).min(deltas.len())] {
                pairs.push((*a, *b));
            }
        }
        pairs
    }

    /// The join of every replica's current state.
    pub fn join_of_states(&self) -> T {
        join_all(self.replicas.iter().map(|r| r.state.clone()))
    }

    /// Full-state anti-entropy: every ordered pair of replicas merges, in index order,
    /// which leaves every replica holding the join of all.
    pub fn merge_all_pairs(&mut self) {
        let n = self.replicas.len();
        for from in 0..n {
            for to in 0..n {
                if from != to {
                    let state = self.replicas[from].state.clone();
                    self.receive(to, state);
                }
            }
        }
    }

    /// The writes that no later write saw, in dot order: exactly the ones a converged
    /// register keeps.
    pub fn unsuperseded_writes(&self) -> Vec<&WriteRecord<T, W>> {
        let mut out: Vec<_> = self
            .writes
            .iter()
            .filter(|w| {
                w.dot()
                    .is_some_and(|d| !self.writes.iter().any(|later| later.seen.contains(d)))
            })
            .collect();
        out.sort_by_key(|w| w.dot());
        out
    }

    /// The join laws ([`laws`]) on the world's states: idempotent on every final state,
    /// delta and pull; commutative and with a truthful outcome on [`World::pairs`];
    /// associative on every two final states with every state of
    /// [`World::finals_and_deltas`].
    ///
    /// # Errors
    ///
    /// The first law broken, with the states (also as JSON).
    pub fn check_laws(&self) -> CheckResult {
        let finals = self.states();
        let all = self.finals_and_deltas();
        for a in &all {
            law(laws::idempotent(*a), &[*a])?;
        }
        for (a, b) in self.pairs() {
            law(laws::commutative(a, b), &[a, b])?;
            law(laws::outcome_consistent(a, b), &[a, b])?;
        }
        for a in &finals {
            for b in &finals {
                for c in &all {
                    law(laws::associative(*a, *b, *c), &[*a, *b, *c])?;
                }
            }
        }
        Ok(())
    }

    /// Every write's delta: joined to the state before the write it gives the state
    /// after; it is a valid state of its own; the state after already holds it; it
    /// carries the dots the write issued, which the writer had not seen before. And an
    /// operation that failed changed nothing.
    ///
    /// # Errors
    ///
    /// The first write whose delta breaks one of these.
    pub fn check_mutator_deltas(&self) -> CheckResult {
        for w in &self.writes {
            let mut joined = w.before.clone();
            joined.merge(w.delta.clone());
            prop_assert_eq!(
                &joined,
                &w.after,
                "state ⊔ delta != the mutated state after {:?} at r{}\n delta = {:?}",
                w.op,
                w.at + 1,
                w.delta
            );
            prop_assert_eq!(
                w.delta.validate(&Limits::default()),
                Ok(()),
                "the delta of {:?} is not a valid state",
                w.op
            );
            let mut again = w.after.clone();
            prop_assert_eq!(
                again.merge(w.delta.clone()),
                Outcome::Unchanged,
                "the state after {:?} does not hold its own delta",
                w.op
            );
            for dot in &w.dots {
                prop_assert!(
                    w.delta.context().contains(*dot),
                    "the delta of {:?} does not carry the dot {} it issued",
                    w.op,
                    dot
                );
                prop_assert!(!w.seen.contains(*dot), "a write reused the dot {}", dot);
            }
        }
        for r in &self.refused {
            prop_assert!(
                !r.changed,
                "{:?} at r{} failed ({}) but changed the state",
                r.op,
                r.at + 1,
                r.error
            );
        }
        Ok(())
    }

    /// Every write's delta, one to three times each, in an order drawn from `seed`,
    /// joins to the join of the replicas' states; and any subset of them joins to the
    /// same state in two different orders.
    ///
    /// # Errors
    ///
    /// If the order or the duplicates mattered.
    pub fn check_delta_merge(&self, seed: u64) -> CheckResult {
        let mut rng = Rng::new(seed);
        let full = self.join_of_states();
        let from_deltas = join_all(shuffled_deltas(self, &mut rng));
        prop_assert_eq!(
            &from_deltas,
            &full,
            "the deltas in a random order, duplicated, != the full-state merge"
        );
        let mut subset = shuffled_deltas(self, &mut rng);
        subset.retain(|_| rng.below(2) == 0);
        let forwards = join_all(subset.iter().cloned());
        rng.shuffle(&mut subset);
        let shuffled = join_all(subset);
        prop_assert_eq!(forwards, shuffled, "the order of delta delivery mattered");
        Ok(())
    }

    /// `y ⊔ x.delta_since(y's clock)` equals `y ⊔ x` for every replica's final state
    /// `x` and every state `y` a replica held that meets `delta_since`'s terms: it is
    /// causally complete (see [`World::history_complete`]) and its context has no gaps.
    ///
    /// # Errors
    ///
    /// The first pair where the delta joins differently.
    pub fn check_delta_since(&self) -> CheckResult {
        let finals =
            (0..self.replicas.len()).map(|r| (&self.replicas[r].state, self.is_complete(r)));
        let held = self
            .history
            .iter()
            .zip(self.history_complete.iter().copied());
        for (y, complete) in held.chain(finals) {
            if !complete || *y.context() != CausalContext::from(&y.context().clock()) {
                continue;
            }
            for x in self.states() {
                check_delta_since_pair(x, y)?;
            }
        }
        Ok(())
    }

    /// Every state of [`World::pool`] survives its wire forms, JSON (decodes to an
    /// equal state that encodes to the same text, and validates) and binary
    /// ([`crate::wire::encode_snapshot`]: decodes to an equal state); on [`World::pairs`],
    /// `try_merge` of the decoded state equals `merge`, with the same outcome.
    ///
    /// # Errors
    ///
    /// The first state that does not round-trip, or pair that merges differently.
    pub fn check_wire(&self) -> CheckResult {
        for state in self.pool() {
            let text = serde_json::to_string(state)
                .map_err(|e| TestCaseError::fail(format!("{state:?} does not encode: {e}")))?;
            let back: T = serde_json::from_str(&text)
                .map_err(|e| TestCaseError::fail(format!("{text} does not decode: {e}")))?;
            prop_assert_eq!(
                &back,
                state,
                "the JSON round trip changed the state: {}",
                text
            );
            prop_assert_eq!(json(&back), text.clone(), "equal states encode differently");
            let binary = crate::wire::encode_snapshot(state);
            let back: T = crate::wire::decode_snapshot(&binary).map_err(|e| {
                TestCaseError::fail(format!("{text}: its binary form does not decode: {e}"))
            })?;
            prop_assert_eq!(
                &back,
                state,
                "the binary round trip changed the state: {}",
                text
            );
            prop_assert_eq!(
                back.validate(&Limits::default()),
                Ok(()),
                "a reachable state does not validate: {}",
                text
            );
        }
        for (a, b) in self.pairs() {
            let decoded: T = serde_json::from_str(&json(b))
                .map_err(|e| TestCaseError::fail(format!("{} does not decode: {e}", json(b))))?;
            let mut merged = a.clone();
            let outcome = merged.merge(b.clone());
            let mut tried = a.clone();
            let tried_outcome = tried
                .try_merge(decoded, &Limits::default(), &mut ())
                .map_err(|e| {
                    TestCaseError::fail(format!(
                        "try_merge rejected a reachable state: {e}\n a = {}\n b = {}",
                        json(a),
                        json(b)
                    ))
                })?;
            prop_assert_eq!(&tried, &merged, "try_merge and merge differ");
            prop_assert_eq!(
                tried_outcome,
                outcome,
                "try_merge and merge report differently"
            );
        }
        Ok(())
    }
}
