//! Shared strategies for the integration tests: *reachable* states of the replicated
//! types, built by replaying a random list of [`Action`]s (local writes, clock moves,
//! full-state merges, delta deliveries, `delta_since` pulls) over a few replicas.
//!
//! The strategy generates the [`Scenario`] (the action list), not the states, so that
//! proptest shrinks the *program* and a failure prints the smallest list of actions
//! that breaks a law. [`Scenario::run`] replays it into a [`World`], which keeps every
//! state any replica held, every delta a mutator returned and every write made.
//!
//! States drawn from *different* worlds are not jointly reachable (both worlds issue
//! the dot `(replica 1, 1)`, for different values), so a law that relates several
//! states must take them from one world: see [`World::pool`].

// Each test binary that includes this module uses its own subset of it.
#![allow(dead_code)]

use std::fmt::Debug;
use std::ops::{Range, RangeInclusive};

use concord::{
    CausalContext, Crdt, Dot, DotStore, Hlc, LwwRegister, ManualClock, MvRegister, Outcome,
    PnCounter, ReplicaId, Timestamp, VectorClock,
};
use proptest::prelude::*;

/// The wall time every world starts at.
pub const START_MS: u64 = 1_700_000_000_000;

/// The most replicas a scenario may have (ids `1..=MAX_REPLICAS`).
pub const MAX_REPLICAS: usize = 5;

/// The id of the replica at `index` (0-based): `ReplicaId::from_u128(index + 1)`.
pub fn rid(index: usize) -> ReplicaId {
    ReplicaId::from_u128(index as u128 + 1)
}

/// A replicated type the scenarios can drive: how to generate one local operation and
/// how to apply it (returning the mutator's delta).
pub trait Model: Crdt + DotStore + Default {
    /// One local operation's argument (a value to write, an amount to add).
    type Input: Clone + Debug + 'static;

    /// Random operation arguments.
    fn input() -> BoxedStrategy<Self::Input>;

    /// Applies the operation at the replica owning `hlc`; returns the delta.
    fn mutate(&mut self, input: &Self::Input, hlc: &mut Hlc<ManualClock>) -> Self;
}

impl Model for LwwRegister<u8> {
    type Input = u8;

    fn input() -> BoxedStrategy<u8> {
        any::<u8>().boxed()
    }

    fn mutate(&mut self, input: &u8, hlc: &mut Hlc<ManualClock>) -> Self {
        self.set(*input, hlc).expect("set")
    }
}

impl Model for MvRegister<u8> {
    type Input = u8;

    fn input() -> BoxedStrategy<u8> {
        any::<u8>().boxed()
    }

    fn mutate(&mut self, input: &u8, hlc: &mut Hlc<ManualClock>) -> Self {
        self.write(*input, hlc).expect("write")
    }
}

impl Model for PnCounter {
    type Input = i64;

    fn input() -> BoxedStrategy<i64> {
        (-10i64..=10).boxed()
    }

    fn mutate(&mut self, input: &i64, hlc: &mut Hlc<ManualClock>) -> Self {
        self.increment(*input, hlc).expect("increment")
    }
}

/// One step of a scenario. Replicas are numbered from 0 here (replica `i` has the id
/// `rid(i)`), and taken modulo the scenario's replica count.
#[derive(Clone)]
pub enum Action<I> {
    /// Moves the shared wall clock forward by this many ms (0: the next writes fall in
    /// the same millisecond).
    Tick(u64),
    /// A local write at replica `at`.
    Write {
        /// The writing replica.
        at: u8,
        /// The operation's argument.
        input: I,
    },
    /// Full-state merge: `to` merges a copy of `from`'s state.
    Merge {
        /// The sending replica.
        from: u8,
        /// The receiving replica.
        to: u8,
    },
    /// Delivers a mutator delta to `to`: the newest one issued so far when `back` is 0,
    /// the one before it when 1, and so on (modulo the number issued). Deltas never
    /// delivered are dropped; delivered twice, duplicated; delivered after newer ones,
    /// reordered.
    Deliver {
        /// How far back in the issue log.
        back: u8,
        /// The receiving replica.
        to: u8,
    },
    /// Anti-entropy pull: `to` merges `from.delta_since(to's context clock)`.
    Pull {
        /// The replica computing the delta.
        from: u8,
        /// The receiving replica.
        to: u8,
    },
}

/// Compact, one line per action, replicas named by their ids (`r1` is
/// `ReplicaId::from_u128(1)`), so that a shrunk counterexample reads like a script.
impl<I: Debug> Debug for Action<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Tick(ms) => write!(f, "Tick(+{ms} ms)"),
            Action::Write { at, input } => write!(f, "Write(r{} <- {input:?})", at + 1),
            Action::Merge { from, to } => write!(f, "Merge(r{} -> r{})", from + 1, to + 1),
            Action::Deliver { back, to } => {
                write!(f, "Deliver(delta #-{back} -> r{})", to + 1)
            }
            Action::Pull { from, to } => write!(f, "Pull(r{} -> r{})", from + 1, to + 1),
        }
    }
}

/// A random program over `replicas` replicas.
#[derive(Clone, Debug)]
pub struct Scenario<I> {
    /// How many replicas take part (ids `1..=replicas`).
    pub replicas: usize,
    /// Each replica's wall clock runs this many ms ahead of the shared time (all zero
    /// in most scenarios, so that writes fall in the same millisecond).
    pub skew_ms: Vec<u64>,
    /// The program.
    pub actions: Vec<Action<I>>,
}

fn tick_ms() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        2 => 1u64..3,
        1 => 10u64..1_000,
    ]
}

/// One random action over `replicas` replicas.
pub fn action<M: Model>(replicas: usize) -> impl Strategy<Value = Action<M::Input>> {
    let r = 0..replicas as u8;
    prop_oneof![
        4 => (r.clone(), M::input()).prop_map(|(at, input)| Action::Write { at, input }),
        2 => tick_ms().prop_map(Action::Tick),
        2 => (r.clone(), r.clone()).prop_map(|(from, to)| Action::Merge { from, to }),
        3 => (0u8..16, r.clone()).prop_map(|(back, to)| Action::Deliver { back, to }),
        1 => (r.clone(), r).prop_map(|(from, to)| Action::Pull { from, to }),
    ]
}

/// Per-replica clock skews: usually none (same-millisecond writes), sometimes up to
/// 300 ms (less than the HLC's default 500 ms max offset, so observing never fails).
pub fn skews() -> impl Strategy<Value = Vec<u64>> {
    prop_oneof![
        2 => Just(vec![0u64; MAX_REPLICAS]),
        1 => proptest::collection::vec(0u64..300, MAX_REPLICAS),
    ]
}

/// Random scenarios for type `M`.
pub fn scenario<M: Model>(
    replicas: RangeInclusive<usize>,
    len: Range<usize>,
) -> impl Strategy<Value = Scenario<M::Input>> {
    assert!(*replicas.start() >= 1 && *replicas.end() <= MAX_REPLICAS);
    replicas.prop_flat_map(move |n| {
        (
            skews(),
            proptest::collection::vec(action::<M>(n), len.clone()),
        )
            .prop_map(move |(skew_ms, actions)| Scenario {
                replicas: n,
                skew_ms,
                actions,
            })
    })
}

/// The usual scenario: four replicas, up to 40 actions.
pub fn scenario4<M: Model>() -> impl Strategy<Value = Scenario<M::Input>> {
    scenario::<M>(4..=4, 0..40)
}

/// A reachable state: replica 1's final state after a four-replica scenario.
///
/// Two draws are *not* jointly reachable (see the module docs); use it for unary
/// properties only.
pub fn reachable<M: Model>() -> impl Strategy<Value = M> {
    scenario4::<M>().prop_map(|s| s.run::<M>().replicas.swap_remove(0).state)
}

/// Every replica's final state after a four-replica scenario (jointly reachable).
pub fn reachable_replicas<M: Model>() -> impl Strategy<Value = Vec<M>> {
    scenario4::<M>().prop_map(|s| s.run::<M>().replicas.into_iter().map(|r| r.state).collect())
}

/// Arbitrary vector clocks over four replicas (every clock is a valid state).
pub fn vector_clock() -> impl Strategy<Value = VectorClock> + Clone {
    proptest::collection::vec((0..4usize, 0u64..6), 0..6)
        .prop_map(|v| v.into_iter().map(|(r, n)| (rid(r), n)).collect())
}

/// Arbitrary causal contexts over four replicas, with gaps (every dot set is valid).
pub fn causal_context() -> impl Strategy<Value = CausalContext> + Clone {
    (
        vector_clock(),
        proptest::collection::vec((0..4usize, 1u64..12), 0..8),
    )
        .prop_map(|(clock, dots)| {
            let mut ctx = CausalContext::from(&clock);
            for (r, n) in dots {
                ctx.insert(Dot::new(rid(r), n));
            }
            ctx
        })
}

/// One replica of a world.
#[derive(Debug)]
pub struct Replica<M> {
    /// Its id.
    pub id: ReplicaId,
    /// Its wall clock (the shared time plus its skew).
    pub time: ManualClock,
    /// Its hybrid logical clock.
    pub hlc: Hlc<ManualClock>,
    /// Its current state.
    pub state: M,
}

/// One local write, as it happened.
#[derive(Debug)]
pub struct WriteRecord<M: Model> {
    /// The writing replica (index).
    pub at: usize,
    /// The operation's argument.
    pub input: M::Input,
    /// The dot the write was tagged with.
    pub dot: Dot,
    /// Its HLC timestamp (the writer's `hlc.last()` right after the write).
    pub ts: Timestamp,
    /// The writer's causal context before the write: every write it supersedes.
    pub seen: CausalContext,
    /// The writer's state before the write.
    pub before: M,
    /// The delta the mutator returned.
    pub delta: M,
    /// The writer's state after the write.
    pub after: M,
    /// How many times each replica received this delta through [`Action::Deliver`].
    pub delivered: Vec<usize>,
}

/// A replayed scenario.
#[derive(Debug)]
pub struct World<M: Model> {
    /// The shared wall time (before skews).
    pub now_ms: u64,
    /// Per-replica skews.
    pub skew_ms: Vec<u64>,
    /// The replicas, with their final states.
    pub replicas: Vec<Replica<M>>,
    /// Every write, in order.
    pub writes: Vec<WriteRecord<M>>,
    /// Every state any replica held, in order (the empty initial state first).
    pub history: Vec<M>,
    /// The outcome of every merge performed.
    pub outcomes: Vec<Outcome>,
    /// Every `delta_since` computed by a pull.
    pub pulled: Vec<M>,
    /// Every delivery, in order: `(delta index, receiving replica)`.
    pub deliveries: Vec<(usize, usize)>,
}

impl<I: Clone + Debug + 'static> Scenario<I> {
    /// Replays the program for type `M`.
    pub fn run<M: Model<Input = I>>(&self) -> World<M> {
        let mut world = World::<M>::new(self.replicas, &self.skew_ms);
        for action in &self.actions {
            world.apply(action);
        }
        world
    }
}

impl<M: Model> World<M> {
    /// `n` replicas with empty states at [`START_MS`].
    pub fn new(n: usize, skew_ms: &[u64]) -> Self {
        let replicas = (0..n)
            .map(|i| {
                let time = ManualClock::new(START_MS + skew_ms.get(i).copied().unwrap_or(0));
                Replica {
                    id: rid(i),
                    hlc: Hlc::new(rid(i), time.clone()),
                    time,
                    state: M::default(),
                }
            })
            .collect();
        World {
            now_ms: START_MS,
            skew_ms: skew_ms.to_vec(),
            replicas,
            writes: Vec::new(),
            history: vec![M::default()],
            outcomes: Vec::new(),
            pulled: Vec::new(),
            deliveries: Vec::new(),
        }
    }

    /// Applies one action.
    pub fn apply(&mut self, action: &Action<M::Input>) {
        let n = self.replicas.len();
        match action {
            Action::Tick(ms) => self.advance(*ms),
            Action::Write { at, input } => {
                self.write(*at as usize % n, input);
            }
            Action::Merge { from, to } => {
                let state = self.replicas[*from as usize % n].state.clone();
                self.receive(*to as usize % n, state);
            }
            Action::Deliver { back, to } => {
                if self.writes.is_empty() {
                    return;
                }
                let i = self.writes.len() - 1 - *back as usize % self.writes.len();
                let to = *to as usize % n;
                self.writes[i].delivered[to] += 1;
                self.deliveries.push((i, to));
                let delta = self.writes[i].delta.clone();
                self.receive(to, delta);
            }
            Action::Pull { from, to } => {
                let (from, to) = (*from as usize % n, *to as usize % n);
                let clock = self.replicas[to].state.context().clock();
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

    /// A local write at replica `at`; returns the delta.
    pub fn write(&mut self, at: usize, input: &M::Input) -> M {
        let n = self.replicas.len();
        let r = &mut self.replicas[at];
        let before = r.state.clone();
        let delta = r.state.mutate(input, &mut r.hlc);
        let dot = Dot::new(r.id, r.state.context().max_counter(r.id));
        self.writes.push(WriteRecord {
            at,
            input: input.clone(),
            dot,
            ts: r.hlc.last(),
            seen: before.context().clone(),
            before,
            delta: delta.clone(),
            after: r.state.clone(),
            delivered: vec![0; n],
        });
        self.history.push(r.state.clone());
        delta
    }

    /// Replica `to` receives `state` (a full state or a delta): its HLC observes the
    /// newest timestamp in it, as a sync engine does, then it merges.
    pub fn receive(&mut self, to: usize, state: M) -> Outcome {
        let r = &mut self.replicas[to];
        if let Some(ts) = Crdt::max_timestamp(&state) {
            r.hlc
                .observe(&ts)
                .expect("skews stay within the max offset");
        }
        let outcome = r.state.merge(state);
        self.outcomes.push(outcome);
        self.history.push(r.state.clone());
        outcome
    }

    /// The replicas' current states.
    pub fn states(&self) -> Vec<&M> {
        self.replicas.iter().map(|r| &r.state).collect()
    }

    /// Every state of the world: each state any replica held, each mutator delta and
    /// each `delta_since` result. Any two of them are jointly reachable.
    pub fn pool(&self) -> Vec<&M> {
        self.history
            .iter()
            .chain(self.writes.iter().map(|w| &w.delta))
            .chain(self.pulled.iter())
            .collect()
    }

    /// The replicas' current states, then every mutator delta and every `delta_since`
    /// result: the states the pairwise laws are checked on. Unlike [`World::pool`],
    /// which states these are does not depend on merges that happened along the way,
    /// so a failing scenario shrinks well.
    pub fn finals_and_deltas(&self) -> Vec<&M> {
        self.replicas
            .iter()
            .map(|r| &r.state)
            .chain(self.writes.iter().map(|w| &w.delta))
            .chain(self.pulled.iter())
            .collect()
    }

    /// The join of every replica's current state (full-state merges only).
    pub fn join_of_states(&self) -> M {
        let mut acc = M::default();
        for r in &self.replicas {
            acc.merge(r.state.clone());
        }
        acc
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
    pub fn unsuperseded_writes(&self) -> Vec<&WriteRecord<M>> {
        let mut out: Vec<_> = self
            .writes
            .iter()
            .filter(|w| !self.writes.iter().any(|later| later.seen.contains(w.dot)))
            .collect();
        out.sort_by_key(|w| w.dot);
        out
    }
}

/// The dots a state holds (in its store, not its context), sorted.
pub fn dots_of<M: DotStore>(state: &M) -> Vec<Dot> {
    let mut out = Vec::new();
    state.for_each_dot(&mut |d| out.push(d));
    out.sort();
    out
}

/// True if `state` holds a dot that `ctx` has not seen.
pub fn holds_unseen<M: DotStore>(state: &M, ctx: &CausalContext) -> bool {
    dots_of(state).into_iter().any(|d| !ctx.contains(d))
}

/// A small deterministic generator (splitmix64) for shuffles driven by a proptest seed.
pub struct Mix(pub u64);

impl Mix {
    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}
