#![cfg(feature = "laws")]
//! The specification of the mergeable types, as properties over *reachable* states
//! (see `common`): the join-semilattice laws, delta mutation, `delta_since`,
//! convergence, the register and counter semantics, and the JSON wire form.
//!
//! Every property takes a [`Scenario`] (a random program of writes, clock moves,
//! merges and delta deliveries), so a failure shrinks to the smallest program that
//! breaks it and prints it.
//!
//! The clocks go through `laws::check_all`, since any clock is a valid state. The dot
//! stores go through the kit's individual laws inside our own `proptest!` instead:
//! `check_all` draws its three states independently, and two independent worlds both
//! issue the dot `(r1, 1)`, for different values, so such a triple is not jointly
//! reachable and would break the laws through no fault of the type. Here all the
//! states of a check come from one world.

mod common;

use common::*;
use concord::{
    laws, CausalContext, Conflict, Crdt, Hlc, Limits, LwwRegister, ManualClock, MvRegister,
    Outcome, PnCounter, ReplicaId, Resolver, VectorClock,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

type TestResult = Result<(), TestCaseError>;

/// proptest's defaults (256 cases), with failures saved where the runner finds them
/// again: `proptest-regressions/laws.txt` (the default location needs a `lib.rs`
/// beside the test file, which `tests/` lacks).
fn config() -> Config {
    Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/laws.txt",
        ))),
        ..Config::default()
    }
}

fn law(result: Result<(), String>) -> TestResult {
    result.map_err(TestCaseError::fail)
}

// ---------------------------------------------------------------------------------
// Clocks: every value is a reachable state, so the law kit's `check_all` applies.
// ---------------------------------------------------------------------------------

#[test]
fn vector_clock_is_a_join_semilattice() {
    laws::check_all_with(config(), vector_clock());
}

#[test]
fn causal_context_is_a_join_semilattice() {
    laws::check_all_with(config(), causal_context());
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn clocks_round_trip_through_json(clock in vector_clock(), ctx in causal_context()) {
        let json = serde_json::to_string(&clock).unwrap();
        prop_assert_eq!(serde_json::from_str::<VectorClock>(&json).unwrap(), clock);
        let json = serde_json::to_string(&ctx).unwrap();
        prop_assert_eq!(serde_json::from_str::<CausalContext>(&json).unwrap(), ctx);
    }
}

// ---------------------------------------------------------------------------------
// The properties every dot store shares, instantiated per type.
// ---------------------------------------------------------------------------------

/// Every write's delta, once to three times each, in a random order.
fn shuffled_deltas<M: Model>(world: &World<M>, mix: &mut Mix) -> Vec<M> {
    let mut out = Vec::new();
    for w in &world.writes {
        for _ in 0..1 + mix.below(3) {
            out.push(w.delta.clone());
        }
    }
    mix.shuffle(&mut out);
    out
}

fn join_all<M: Model>(states: impl IntoIterator<Item = M>) -> M {
    let mut acc = M::default();
    for s in states {
        acc.merge(s);
    }
    acc
}

fn semilattice_laws<M: Model>(world: &World<M>) -> TestResult {
    let finals = world.states();
    let all = world.finals_and_deltas();
    for a in &all {
        check(laws::idempotent(*a), &[a])?;
    }
    for (a, b) in pairs_of(world) {
        check(laws::commutative(a, b), &[&a, &b])?;
        check(laws::outcome_consistent(a, b), &[&a, &b])?;
    }
    for a in &finals {
        for b in &finals {
            for c in &all {
                check(laws::associative(*a, *b, *c), &[a, b, c])?;
            }
            for c in &finals {
                let (x, y, z) = (a.context(), b.context(), c.context());
                law(laws::all(x, y, z))?;
                law(laws::all(&x.clock(), &y.clock(), &z.clock()))?;
            }
        }
    }
    Ok(())
}

/// The ordered pairs the binary properties are checked on: each replica's final state
/// with every state of [`World::finals_and_deltas`] (both ways), and each delta with
/// the two issued before and after it.
fn pairs_of<M: Model>(world: &World<M>) -> Vec<(&M, &M)> {
    let finals = world.states();
    let all = world.finals_and_deltas();
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

/// A law's verdict, with the states also shown in their JSON wire form (full replica
/// ids, exactly what a peer would send), ready to paste into a regression test.
fn check<M: Model>(result: Result<(), String>, states: &[&&M]) -> TestResult {
    result.map_err(|e| {
        let json: Vec<String> = states
            .iter()
            .map(|s| serde_json::to_string(**s).unwrap())
            .collect();
        TestCaseError::fail(format!("{e}\nthe states as JSON:\n {}", json.join("\n ")))
    })
}

fn mutator_deltas<M: Model>(world: &World<M>) -> TestResult {
    for w in &world.writes {
        let mut joined = w.before.clone();
        joined.merge(w.delta.clone());
        prop_assert_eq!(&joined, &w.after, "state ⊔ delta != mutated state");
        // The delta is a valid state of its own, and the new state already holds it.
        prop_assert_eq!(w.delta.validate(&Limits::default()), Ok(()));
        let mut again = w.after.clone();
        prop_assert_eq!(again.merge(w.delta.clone()), Outcome::Unchanged);
        prop_assert!(w.delta.context().contains(w.dot));
        prop_assert!(!w.seen.contains(w.dot), "a write reused a dot: {:?}", w.dot);
    }
    Ok(())
}

fn deltas_equal_full_merge<M: Model>(world: &World<M>, seed: u64) -> TestResult {
    let mut mix = Mix(seed);
    let full = world.join_of_states();
    let from_deltas = join_all(shuffled_deltas(world, &mut mix));
    prop_assert_eq!(
        &from_deltas,
        &full,
        "deltas in a random order != full-state merge"
    );

    // Any subset of the deltas, in two different orders, with duplicates: same state.
    let mut subset: Vec<M> = shuffled_deltas(world, &mut mix);
    subset.retain(|_| mix.below(2) == 0);
    let forwards = join_all(subset.iter().cloned());
    mix.shuffle(&mut subset);
    let shuffled = join_all(subset);
    prop_assert_eq!(forwards, shuffled, "the order of delta delivery mattered");
    Ok(())
}

fn delta_since_equals_full_merge<M: Model>(world: &World<M>) -> TestResult {
    for (x, y) in pairs_of(world) {
        let clock = y.context().clock();
        let delta = x.delta_since(&clock);
        let mut by_delta = y.clone();
        by_delta.merge(delta.clone());
        let mut by_state = y.clone();
        by_state.merge(x.clone());
        prop_assert_eq!(
            &by_delta,
            &by_state,
            "y ⊔ x.delta_since(y's clock) != y ⊔ x\n x = {:?}\n y = {:?}\n delta = {:?}",
            x,
            y,
            delta
        );
    }
    Ok(())
}

fn converges<M: Model>(
    scenario: &Scenario<M::Input>,
    seed: u64,
    converged: fn(&World<M>) -> TestResult,
) -> TestResult {
    // Full-state anti-entropy after the random schedule.
    let mut world = scenario.run::<M>();
    let expected = world.join_of_states();
    world.merge_all_pairs();
    for (i, s) in world.states().into_iter().enumerate() {
        prop_assert_eq!(
            s,
            &expected,
            "replica {} differs after all-pairs merge",
            i + 1
        );
    }
    converged(&world)?;

    // Delta-only anti-entropy: every replica receives every delta, in its own order.
    let mut mix = Mix(seed);
    let mut world = scenario.run::<M>();
    let all_deltas = join_all(world.writes.iter().map(|w| w.delta.clone()));
    prop_assert_eq!(&all_deltas, &expected);
    for to in 0..world.replicas.len() {
        for delta in shuffled_deltas(&world, &mut mix) {
            world.receive(to, delta);
        }
        prop_assert_eq!(
            &world.replicas[to].state,
            &expected,
            "replica {} differs after receiving every delta",
            to + 1
        );
    }
    converged(&world)
}

fn json_round_trip<M>(world: &World<M>) -> TestResult
where
    M: Model + Crdt<Key = (), Value = M>,
{
    for state in world.pool() {
        let json = serde_json::to_string(state).unwrap();
        let back: M =
            serde_json::from_str(&json).map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
        prop_assert_eq!(&back, state, "JSON round trip changed the state: {}", json);
        prop_assert_eq!(serde_json::to_string(&back).unwrap(), json);
        prop_assert_eq!(back.validate(&Limits::default()), Ok(()));
    }
    for (a, b) in pairs_of(world) {
        let decoded: M = serde_json::from_str(&serde_json::to_string(b).unwrap()).unwrap();

        let mut merged = a.clone();
        let merge_outcome = merged.merge(b.clone());
        let mut tried = a.clone();
        let mut conflicts: Vec<Conflict<M::Key, M::Value>> = Vec::new();
        let try_outcome = tried
            .try_merge(decoded, &Limits::default(), &mut conflicts)
            .map_err(|e| TestCaseError::fail(format!("try_merge rejected a valid state: {e}")))?;
        prop_assert_eq!(&tried, &merged);
        prop_assert_eq!(try_outcome, merge_outcome);

        // A conflict is reported exactly when each side held a write the other had
        // not seen, and then the merge was concurrent.
        let raced = holds_unseen(a, b.context()) && holds_unseen(b, a.context());
        prop_assert_eq!(
            conflicts.len(),
            usize::from(raced),
            "conflicts: {:?}",
            conflicts
        );
        if let Some(c) = conflicts.first() {
            prop_assert_eq!(merge_outcome, Outcome::Concurrent);
            // The report names both sides' writes and the merged ones.
            prop_assert_eq!(dots_of(&c.ours), dots_of(a));
            prop_assert_eq!(dots_of(&c.theirs), dots_of(b));
            prop_assert_eq!(dots_of(&c.resolved), dots_of(&merged));
        }
    }
    Ok(())
}

macro_rules! dot_store_properties {
    ($name:ident, $ty:ty, $converged:expr) => {
        mod $name {
            use super::*;

            type M = $ty;

            proptest! {
                #![proptest_config(config())]

                #[test]
                fn is_a_join_semilattice(s in scenario4::<M>()) {
                    semilattice_laws(&s.run::<M>())?;
                }

                #[test]
                fn state_join_delta_is_the_mutated_state(s in scenario4::<M>()) {
                    mutator_deltas(&s.run::<M>())?;
                }

                #[test]
                fn deltas_in_any_order_with_duplicates_equal_full_merge(
                    s in scenario4::<M>(),
                    seed in any::<u64>(),
                ) {
                    deltas_equal_full_merge(&s.run::<M>(), seed)?;
                }

                #[test]
                fn delta_since_a_clock_equals_full_merge(s in scenario4::<M>()) {
                    delta_since_equals_full_merge(&s.run::<M>())?;
                }

                #[test]
                fn replicas_converge(s in scenario::<M>(2..=5, 0..60), seed in any::<u64>()) {
                    converges::<M>(&s, seed, $converged)?;
                }

                #[test]
                fn json_round_trips_and_try_merge_equals_merge(s in scenario4::<M>()) {
                    json_round_trip(&s.run::<M>())?;
                }
            }
        }
    };
}

dot_store_properties!(lww_register, LwwRegister<u8>, lww_converged);
dot_store_properties!(mv_register, MvRegister<u8>, mv_converged);
dot_store_properties!(pn_counter, PnCounter, counter_converged);

// ---------------------------------------------------------------------------------
// What a converged state holds, per type (oracles computed from the write log).
// ---------------------------------------------------------------------------------

/// LWW: the surviving writes are exactly those no later write saw, and the winner is
/// the write with the largest `(timestamp, replica)` of all: since every replica's HLC
/// observes what it receives, a write that saw another always has a larger timestamp.
fn lww_converged(world: &World<LwwRegister<u8>>) -> TestResult {
    let survivors = world.unsuperseded_writes();
    let newest = world.writes.iter().max_by_key(|w| w.ts);
    for state in world.states() {
        let dots: Vec<_> = survivors.iter().map(|w| w.dot).collect();
        prop_assert_eq!(dots_of(state), dots);
        prop_assert_eq!(state.write_count(), survivors.len());
        prop_assert_eq!(state.timestamp(), newest.map(|w| w.ts));
        prop_assert_eq!(state.value(), newest.map(|w| &w.input));
    }
    Ok(())
}

/// A merge function that depends on the order of the siblings.
fn order_sensitive(siblings: &[&u8]) -> u8 {
    siblings
        .iter()
        .fold(7u8, |acc, v| acc.wrapping_mul(31).wrapping_add(**v))
}

/// MV: the siblings are exactly the writes no later write saw, in dot order; every
/// replica resolves them to the same value; writing that value back collapses them.
fn mv_converged(world: &World<MvRegister<u8>>) -> TestResult {
    let survivors = world.unsuperseded_writes();
    let expected: Vec<_> = survivors.iter().map(|w| (w.dot, w.input)).collect();
    let oracle_values: Vec<&u8> = survivors.iter().map(|w| &w.input).collect();
    let max = |s: &[&u8]| **s.iter().max().unwrap();
    let first = world.replicas[0].state.resolve(order_sensitive);
    for state in world.states() {
        let held: Vec<_> = state.siblings().map(|(d, v)| (d, *v)).collect();
        prop_assert_eq!(&held, &expected);
        prop_assert_eq!(state.resolve(order_sensitive), first);
        prop_assert_eq!(state.resolve(max), oracle_values.iter().max().map(|v| **v));
        if oracle_values.len() > 1 {
            prop_assert_eq!(first, Some(order_sensitive(&oracle_values)));
        }
    }

    // Replica 1 writes the resolved value back; the others receive only the delta.
    let Some(resolved) = first else {
        return Ok(());
    };
    let mut world = rebuild(world);
    let delta = world.write(0, &resolved);
    for to in 1..world.replicas.len() {
        world.receive(to, delta.clone());
    }
    for state in world.states() {
        prop_assert_eq!(state.values().collect::<Vec<_>>(), vec![&resolved]);
    }
    Ok(())
}

/// A world in the same state as `world` (replica states and HLCs), to keep writing in.
fn rebuild(world: &World<MvRegister<u8>>) -> World<MvRegister<u8>> {
    let mut fresh = World::new(world.replicas.len(), &world.skew_ms);
    fresh.advance(world.now_ms - START_MS);
    for (r, old) in fresh.replicas.iter_mut().zip(&world.replicas) {
        r.state = old.state.clone();
        r.hlc.observe(&old.hlc.last()).unwrap();
    }
    fresh
}

/// Counter: the value is the sum of every increment, and each replica's contribution
/// the sum of its own.
fn counter_converged(world: &World<PnCounter>) -> TestResult {
    let total: i64 = world.writes.iter().map(|w| w.input).sum();
    let mut per_replica = vec![0i64; world.replicas.len()];
    for w in &world.writes {
        per_replica[w.at] += w.input;
    }
    let expected: Vec<(ReplicaId, i64)> = per_replica
        .iter()
        .enumerate()
        .filter(|(i, _)| world.writes.iter().any(|w| w.at == *i))
        .map(|(i, n)| (rid(i), *n))
        .collect();
    for state in world.states() {
        prop_assert_eq!(state.value(), total);
        prop_assert_eq!(state.contributions(), expected.clone());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Reads between syncs: deltas that arrive late, twice or never must not make a
// replica show something no causally consistent view contains.
// ---------------------------------------------------------------------------------

/// No state a replica held shows a write that a write it has seen superseded (a
/// register: no stale sibling, hence no spurious conflict).
fn no_superseded_write_shown<M: Model>(world: &World<M>) -> TestResult {
    for state in &world.history {
        for dot in dots_of(state) {
            if let Some(w) = world
                .writes
                .iter()
                .find(|w| state.context().contains(w.dot) && w.seen.contains(dot))
            {
                return Err(TestCaseError::fail(format!(
                    "{state:?} holds {dot:?}, which the write {:?} it has seen superseded",
                    w.dot
                )));
            }
        }
    }
    Ok(())
}

/// Every counter a replica held reads, for each writer, the sum of a prefix of that
/// writer's increments (never a sum that writer never had).
fn counter_reads_prefixes(world: &World<PnCounter>) -> TestResult {
    for state in &world.history {
        for (replica, seen) in state.contributions() {
            let own: Vec<i64> = world
                .writes
                .iter()
                .filter(|w| w.dot.replica() == replica)
                .map(|w| w.input)
                .collect();
            let newest = dots_of(state)
                .into_iter()
                .filter(|d| d.replica() == replica)
                .map(|d| d.counter() as usize)
                .max()
                .unwrap_or(0);
            let prefix: i64 = own[..newest].iter().sum();
            prop_assert_eq!(
                seen,
                prefix,
                "{:?} reads {} from {:?}, whose running totals were {:?}",
                state,
                seen,
                replica,
                own.iter()
                    .scan(0, |t, n| {
                        *t += n;
                        Some(*t)
                    })
                    .collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mv_register_never_shows_a_superseded_write(s in scenario4::<MvRegister<u8>>()) {
        no_superseded_write_shown(&s.run::<MvRegister<u8>>())?;
    }

    #[test]
    fn lww_register_never_keeps_a_superseded_write(s in scenario4::<LwwRegister<u8>>()) {
        no_superseded_write_shown(&s.run::<LwwRegister<u8>>())?;
    }

    #[test]
    fn counter_reads_a_prefix_of_each_writers_increments(s in scenario4::<PnCounter>()) {
        counter_reads_prefixes(&s.run::<PnCounter>())?;
    }
}

// ---------------------------------------------------------------------------------
// The smallest counterexamples the properties above found, written out by hand so
// that they read as a story and keep failing loudly until fixed.
// ---------------------------------------------------------------------------------

/// Replica 1 applies three writes with `op`; returns its state and the three deltas.
fn three_writes<M: Model>(input: M::Input) -> (M, Vec<M>) {
    let mut hlc = Hlc::new(rid(0), ManualClock::new(START_MS));
    let mut state = M::default();
    let deltas = (0..3).map(|_| state.mutate(&input, &mut hlc)).collect();
    (state, deltas)
}

/// Replica 2 receives replica 1's deltas in the order 1, 3, 2, then replica 1's full
/// state, then `delta_since` its own clock: it must hold what replica 1 holds, and
/// merging either way round must agree.
fn reordered_deltas_then_full_state<M: Model>(input: M::Input) {
    let (at_1, deltas) = three_writes::<M>(input);
    let mut at_2 = M::default();
    at_2.merge(deltas[0].clone());
    at_2.merge(deltas[2].clone());
    at_2.merge(deltas[1].clone());
    let mut joined_2_1 = at_2.clone();
    joined_2_1.merge(at_1.clone());
    let mut joined_1_2 = at_1.clone();
    joined_1_2.merge(at_2.clone());
    assert_eq!(
        joined_1_2, joined_2_1,
        "merge is not commutative on two reachable states"
    );
    let mut pulled = at_2.clone();
    pulled.merge(at_1.delta_since(&at_2.context().clock()));
    assert_eq!(
        pulled, at_1,
        "delta_since did not bring replica 2 up to date"
    );
    assert_eq!(joined_2_1, at_1, "replica 2 never converges to replica 1");
}

#[test]
fn mv_register_deltas_delivered_1_3_2_converge() {
    reordered_deltas_then_full_state::<MvRegister<u8>>(1);
}

#[test]
fn lww_register_deltas_delivered_1_3_2_converge() {
    reordered_deltas_then_full_state::<LwwRegister<u8>>(1);
}

#[test]
fn counter_deltas_delivered_1_3_2_converge() {
    reordered_deltas_then_full_state::<PnCounter>(1);
}

/// Replica 1 counts +1 three times (it reads 3); replica 2 has received the first and
/// third deltas only: it must never read more than 3.
#[test]
fn counter_with_a_late_delta_does_not_double_count() {
    let (at_1, deltas) = three_writes::<PnCounter>(1);
    assert_eq!(at_1.value(), 3);
    let mut at_2 = PnCounter::new();
    at_2.merge(deltas[0].clone());
    at_2.merge(deltas[2].clone());
    assert!(
        at_2.value() <= 3,
        "replica 2 reads {} after three increments of 1: {at_2:?}",
        at_2.value()
    );
}

// ---------------------------------------------------------------------------------
// LWW: writes in the same millisecond.
// ---------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lww_same_millisecond_writes_converge_on_larger_timestamp_then_replica(
        a in 0..4usize,
        b in 0..4usize,
        ticks_a in 0..3usize,
        ticks_b in 0..3usize,
        shared_history in any::<bool>(),
        via_delta in any::<bool>(),
        (va, vb) in any::<(u8, u8)>(),
    ) {
        prop_assume!(a != b);
        let time = ManualClock::new(START_MS);
        let mut hlc_a = Hlc::new(rid(a), time.clone());
        let mut hlc_b = Hlc::new(rid(b), time.clone());
        let mut at_a = LwwRegister::new();
        if shared_history {
            at_a.set(0u8, &mut hlc_a).unwrap();
        }
        let mut at_b = at_a.clone();
        if shared_history {
            hlc_b.observe(&hlc_a.last()).unwrap();
        }
        // Earlier events in this millisecond move the logical counters apart.
        for _ in 0..ticks_a {
            hlc_a.tick().unwrap();
        }
        for _ in 0..ticks_b {
            hlc_b.tick().unwrap();
        }
        let delta_a = at_a.set(va, &mut hlc_a).unwrap();
        let delta_b = at_b.set(vb, &mut hlc_b).unwrap();
        let (ts_a, ts_b) = (hlc_a.last(), hlc_b.last());
        prop_assert_eq!(ts_a.wall_ms(), ts_b.wall_ms());

        let (send_a, send_b) = if via_delta {
            (delta_a, delta_b)
        } else {
            (at_a.clone(), at_b.clone())
        };
        let outcome_a = at_a.merge(send_b);
        let outcome_b = at_b.merge(send_a);
        prop_assert_eq!(outcome_a, Outcome::Concurrent);
        prop_assert_eq!(outcome_b, Outcome::Concurrent);
        prop_assert_eq!(&at_a, &at_b);

        let (winner_ts, winner_value) = if (ts_a, rid(a)) > (ts_b, rid(b)) {
            (ts_a, va)
        } else {
            (ts_b, vb)
        };
        prop_assert_eq!(at_a.winner(), Some((winner_ts, &winner_value)));
        if ts_a.logical() == ts_b.logical() {
            // A tie on (wall, logical): the larger replica id wins.
            let expected = if a > b { va } else { vb };
            prop_assert_eq!(at_a.value(), Some(&expected));
        }
    }
}

// ---------------------------------------------------------------------------------
// The strategies are not vacuous: they reach the interesting cases often.
// ---------------------------------------------------------------------------------

fn sample<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

fn fraction<T>(items: &[T], pred: impl Fn(&T) -> bool) -> f64 {
    items.iter().filter(|x| pred(x)).count() as f64 / items.len() as f64
}

#[test]
fn scenarios_reach_conflicts_races_and_faulty_delivery() {
    let worlds: Vec<World<MvRegister<u8>>> = sample(scenario4::<MvRegister<u8>>(), 256)
        .iter()
        .map(|s| s.run())
        .collect();
    let report = |what: &str, f: f64, at_least: f64| {
        assert!(f >= at_least, "only {:.0}% of worlds {what}", f * 100.0);
        eprintln!("{:>3.0}% of worlds {what}", f * 100.0);
    };
    report(
        "end with replica 1's register conflicted",
        fraction(&worlds, |w| w.replicas[0].state.is_conflicted()),
        0.15,
    );
    report(
        "hold a conflicted register somewhere",
        fraction(&worlds, |w| w.history.iter().any(|s| s.is_conflicted())),
        0.4,
    );
    report(
        "have a concurrent merge",
        fraction(&worlds, |w| w.outcomes.contains(&Outcome::Concurrent)),
        0.4,
    );
    report(
        "drop a delta",
        fraction(&worlds, |w| {
            w.writes.iter().any(|x| {
                x.delivered
                    .iter()
                    .enumerate()
                    .all(|(to, n)| to == x.at || *n == 0)
            })
        }),
        0.4,
    );
    report(
        "duplicate a delta",
        fraction(&worlds, |w| {
            w.writes.iter().any(|x| x.delivered.iter().any(|n| *n > 1))
        }),
        0.1,
    );
    report(
        "deliver a delta after a newer one from the same writer",
        fraction(&worlds, |w| {
            w.deliveries.iter().enumerate().any(|(k, &(i, to))| {
                w.deliveries[..k]
                    .iter()
                    .any(|&(j, t)| t == to && j > i && w.writes[j].at == w.writes[i].at)
            })
        }),
        0.05,
    );
    report(
        "pull a non-empty delta_since",
        fraction(&worlds, |w| {
            w.pulled.iter().any(|d| !d.context().is_empty())
        }),
        0.2,
    );

    let lww: Vec<World<LwwRegister<u8>>> = sample(scenario4::<LwwRegister<u8>>(), 256)
        .iter()
        .map(|s| {
            let mut w = s.run();
            w.merge_all_pairs();
            w
        })
        .collect();
    report(
        "converge on an LWW race",
        fraction(&lww, |w| w.replicas[0].state.write_count() > 1),
        0.15,
    );
    report(
        "converge on an LWW race decided by replica id alone",
        fraction(&lww, |w| {
            let survivors = w.unsuperseded_writes();
            survivors.iter().any(|x| {
                survivors.iter().any(|y| {
                    x.at != y.at
                        && (x.ts.wall_ms(), x.ts.logical()) == (y.ts.wall_ms(), y.ts.logical())
                })
            })
        }),
        0.05,
    );
}
