#![cfg(feature = "testing")]
//! The guide's enable-wins `Flag` (section 8) failed the kit's `delta_since` check
//! for one seed (`CONCORD_SEED=9492138082968115977`): the kit pulled a `delta_since`
//! into a replica whose clock was not honest. This replays the shrunk program step by
//! step, without random seeds.

use std::collections::BTreeSet;

use concord::causal::{decode_dot, JoinEffect, ReplicaTable};
use concord::testing::{check_delta_since_pair, Operation, Program, Step, World};
use concord::{
    CausalContext, Crdt, Dot, DotStore, Hlc, ManualClock, Op, OrMap, ReplicaId, Resolver, Result,
};

/// The guide's enable-wins flag: on while it holds a dot.
#[derive(Clone, Debug, Default, PartialEq)]
struct Flag {
    dots: BTreeSet<Dot>,
}

impl DotStore for Flag {
    type Encoded<'a> = Vec<(u32, u64)>;
    type Decoded = Vec<(u32, u64)>;

    fn is_bottom(&self) -> bool {
        self.dots.is_empty()
    }

    fn for_each_dot(&self, f: &mut dyn FnMut(Dot)) {
        self.dots.iter().for_each(|&d| f(d));
    }

    fn join(&mut self, ctx: &CausalContext, other: Self, other_ctx: &CausalContext) -> JoinEffect {
        let mut effect = JoinEffect::default();
        let before = self.dots.len();
        self.dots
            .retain(|d| other.dots.contains(d) || !other_ctx.contains(*d));
        effect.killed = self.dots.len() < before;
        for d in other.dots {
            if ctx.contains(d) && !self.dots.contains(&d) {
                effect.discarded = true;
            } else {
                self.dots.insert(d);
            }
        }
        effect
    }

    fn kill(&mut self, ctx: &CausalContext) -> bool {
        let before = self.dots.len();
        self.dots.retain(|d| !ctx.contains(*d));
        self.dots.len() < before
    }

    fn filtered(&self, keep: &dyn Fn(Dot) -> bool) -> Self {
        let dots = self.dots.iter().copied().filter(|&d| keep(d)).collect();
        Flag { dots }
    }

    fn joined_siblings(&self, _: &CausalContext, _: &Self, _: &CausalContext) -> usize {
        0
    }

    fn size(&self) -> usize {
        self.dots.len()
    }

    fn encode<'a>(&'a self, table: &mut ReplicaTable) -> Self::Encoded<'a> {
        self.dots.iter().map(|&d| table.dot(d)).collect()
    }

    fn decode(decoded: Self::Decoded, replicas: &[ReplicaId]) -> Result<Self> {
        let dots = decoded
            .into_iter()
            .map(|(index, counter)| decode_dot(replicas, index, counter))
            .collect::<Result<_>>()?;
        Ok(Flag { dots })
    }
}

type Features = OrMap<String, Flag>;

/// Turns a flag on: replaces every dot this replica saw with a fresh one.
#[derive(Clone, Debug)]
struct On(&'static str);

impl Operation<Features> for On {
    fn apply(&self, features: &mut Features, hlc: &mut Hlc<ManualClock>) -> Result<Features> {
        features.update(self.0.into(), hlc, |flag: &mut Flag, op: &Op| {
            flag.dots.clear();
            flag.dots.insert(op.tag());
        })
    }
}

fn write(at: u8, name: &'static str) -> Step<On> {
    Step::Write { at, op: On(name) }
}

/// The shrunk program of the failure (replicas numbered from 0: `r1` is 0).
fn program() -> Program<On> {
    Program {
        replicas: 4,
        skew_ms: vec![0; 5],
        steps: vec![
            write(0, "dark-mode"),
            write(0, "beta"),
            Step::Deliver { back: 5, to: 2 },
            write(0, "beta"),
            write(2, "dark-mode"),
            write(0, "beta"),
            write(0, "beta"),
            write(0, "beta"),
            write(2, "dark-mode"),
            write(0, "beta"),
            Step::Deliver { back: 10, to: 1 },
            Step::Pull { from: 2, to: 1 },
        ],
    }
}

/// The kit's replay of the failure. `r2` receives `r3`'s second enable of
/// "dark-mode" as a mutator delta, before the first one (which overwrote `r1`'s
/// enable, `(r1,1)`): its clock then covers `(r3,1)` without `(r3,1)`'s effect, the
/// removal of `(r1,1)`. A pull computed against that clock leaves `(r1,1)` out of
/// the delta's causes, so `r2` logged the removal of `(r1,1)` against a context that
/// lacks what removed it, and its own `delta_since` for a peer still holding
/// `(r1,1)` (`r1` after its first write, an honest state) left that removal out.
/// The pull was outside `delta_since`'s terms; the kit now sends such a receiver the
/// full state.
#[test]
fn kit_replay_of_the_shrunk_program_passes_delta_since() {
    let world: World<Features, On> = program().run();
    // `r2` and `r3` hold the same state, and both tell `r1`'s old state (and every
    // other honest state of the run) of the removal.
    assert_eq!(world.replicas[1].state, world.replicas[2].state);
    world.check_delta_since().unwrap();
    // What the pull brought `r2`: `r3`'s whole context, the removal of `(r1,1)` with
    // the write that made it (before, only the dot `(r1,1)`).
    let pulled = world.pulled.last().expect("one pull");
    assert_eq!(pulled.context(), world.replicas[2].state.context());
    assert!(world.is_complete(1));
}

/// The same states by hand, without the kit: a replica that received a later
/// overwrite's delta before the earlier one and then a full state tells a peer that
/// still holds the overwritten enable of its removal.
#[test]
fn full_state_repairs_an_out_of_order_replica_for_delta_since() {
    let time = ManualClock::new(1_700_000_000_000);
    let mut h1 = Hlc::new(ReplicaId::from_u128(1), time.clone());
    let mut h3 = Hlc::new(ReplicaId::from_u128(3), time.clone());
    let (mut r1, mut r2, mut r3) = (Features::new(), Features::new(), Features::new());
    let first = On("dark-mode").apply(&mut r1, &mut h1).unwrap(); // (r1,1)
    let y = r1.clone(); // r1 after its first write: holds (r1,1)
    r3.merge(first);
    On("dark-mode").apply(&mut r3, &mut h3).unwrap(); // (r3,1) overwrites (r1,1)
    let second = On("dark-mode").apply(&mut r3, &mut h3).unwrap(); // (r3,2)
    r2.merge(second); // out of causal order: r2's clock covers (r3,1), not (r1,1)
    r2.merge(r3.clone());
    assert_eq!(r2, r3);
    for x in [&r3, &r2] {
        check_delta_since_pair(x, &y).unwrap();
        let mut by_delta = y.clone();
        by_delta.merge(x.delta_since(&y.context().clock()));
        let flag = by_delta.get("dark-mode").expect("on");
        assert_eq!(flag.dots.len(), 1, "(r1,1) was removed: {flag:?}");
    }
}
