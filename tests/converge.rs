//! Convergence under any network schedule: random actions over the simulator, with
//! loss, duplication, reordering, partitions and crashes, then heal and quiesce.
//!
//! CI runs 500 cases per property; set `CONCORD_SIM_CASES` for more. The actions,
//! networks and message limits come from the test kit's strategies
//! (`concord::testing::sim`), and the checks after quiescing are the kit's
//! `check_quiesced`: the same ones `concord::testing::check_setup` runs on users'
//! setups.
#![cfg(feature = "testing")]

use concord::testing::sim::{action, check_quiesced, faults, message_limit, Action, Faults, Sim};
use concord::testing::Operation;
use concord::{Hlc, ManualClock, MvRegister, OrMap, PnCounter, Result};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

type Profiles = OrMap<String, MvRegister<u8>>;
type Carts = OrMap<String, OrMap<String, PnCounter>>;

const KEYS: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];

/// Writes to a map of multi-value registers.
#[derive(Clone, Debug)]
enum ProfileOp {
    Put(usize, u8),
    Remove(usize),
}

impl Operation<Profiles> for ProfileOp {
    fn apply(&self, map: &mut Profiles, hlc: &mut Hlc<ManualClock>) -> Result<Profiles> {
        match *self {
            ProfileOp::Put(k, v) => map.write(KEYS[k].to_string(), v, hlc),
            ProfileOp::Remove(k) => map.remove(&KEYS[k].to_string(), hlc),
        }
    }
}

/// Writes to carts: customer -> product -> quantity.
#[derive(Clone, Debug)]
enum CartOp {
    Add(usize, usize, i64),
    RemoveLine(usize, usize),
    Clear(usize),
}

impl Operation<Carts> for CartOp {
    fn apply(&self, carts: &mut Carts, hlc: &mut Hlc<ManualClock>) -> Result<Carts> {
        match *self {
            CartOp::Add(c, p, n) => carts.update(KEYS[c].to_string(), hlc, |cart, op| {
                cart.update_in(op, KEYS[p].to_string(), |q, op| q.add(op, n))
            }),
            CartOp::RemoveLine(c, p) => carts.update(KEYS[c].to_string(), hlc, |cart, _| {
                cart.remove_in(&KEYS[p].to_string())
            }),
            CartOp::Clear(c) => carts.remove(&KEYS[c].to_string(), hlc),
        }
    }
}

fn cases() -> u32 {
    std::env::var("CONCORD_SIM_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

fn profile_op() -> impl Strategy<Value = ProfileOp> {
    prop_oneof![
        4 => (0..KEYS.len(), any::<u8>()).prop_map(|(k, v)| ProfileOp::Put(k, v)),
        1 => (0..KEYS.len()).prop_map(ProfileOp::Remove),
    ]
}

fn wide_op() -> impl Strategy<Value = Wide> {
    (0..400u16, any::<u8>()).prop_map(|(k, v)| Wide(k, v))
}

fn cart_op() -> impl Strategy<Value = CartOp> {
    prop_oneof![
        4 => (0..2usize, 0..3usize, -3..5i64).prop_map(|(c, p, n)| CartOp::Add(c, p, n)),
        1 => (0..2usize, 0..3usize).prop_map(|(c, p)| CartOp::RemoveLine(c, p)),
        1 => (0..2usize).prop_map(CartOp::Clear),
    ]
}

/// Runs the scenario, heals, quiesces, and checks the spec.
fn check<T, W>(
    nodes: usize,
    seed: u64,
    faults: Faults,
    limit: Option<usize>,
    actions: Vec<Action<W>>,
) -> std::result::Result<(), TestCaseError>
where
    T: concord::Crdt + Default,
    W: Operation<T>,
{
    let mut sim: Sim<T> = Sim::new(nodes, seed, faults);
    if let Some(bytes) = limit {
        sim = sim.with_message_limit(bytes);
    }
    sim.run(actions);
    sim.quiesce();
    check_quiesced(&sim)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn profiles_converge_under_faults(
        nodes in 2..=7usize,
        seed in any::<u64>(),
        faults in faults(),
        limit in message_limit(),
        actions in prop::collection::vec(action(profile_op()), 0..60),
    ) {
        check::<Profiles, _>(nodes, seed, faults, limit, actions)?;
    }

    /// Many keys and a small message limit: catch-ups after partitions and crashes go
    /// in chunks (`a_partitioned_node_catches_up_in_chunks_under_loss` checks that
    /// such a catch-up does chunk).
    #[test]
    fn wide_maps_converge_in_chunks_under_faults(
        nodes in 2..=4usize,
        seed in any::<u64>(),
        faults in faults(),
        limit in 2_000..3_000usize,
        actions in prop::collection::vec(action(wide_op()), 0..120),
    ) {
        check::<Profiles, _>(nodes, seed, faults, Some(limit), actions)?;
    }

    #[test]
    fn nested_carts_converge_under_faults(
        nodes in 2..=5usize,
        seed in any::<u64>(),
        faults in faults(),
        limit in message_limit(),
        actions in prop::collection::vec(action(cart_op()), 0..60),
    ) {
        check::<Carts, _>(nodes, seed, faults, limit, actions)?;
    }
}

/// An increment of one shared counter, or a removal of it, recorded with its dot
/// (and a removal with what its master had seen), so the test can check the total
/// after quiescing: folding (stable segments merged into one per master, around
/// restarts from older snapshots too) must count every increment that no removal
/// saw exactly once, and none that a removal saw, even when the removal was made
/// after acknowledging segments another master then folded.
#[derive(Clone, Debug)]
enum Tally {
    Add(i64),
    Remove,
}

type Tallies = OrMap<String, PnCounter>;

/// A recorded operation: its dot, and an increment's amount or what a removal saw.
type Tallied = (
    concord::Dot,
    std::result::Result<i64, concord::CausalContext>,
);

thread_local! {
    static TALLIED: std::cell::RefCell<Vec<Tallied>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Operation<Tallies> for Tally {
    fn apply(&self, map: &mut Tallies, hlc: &mut Hlc<ManualClock>) -> Result<Tallies> {
        match self {
            Tally::Add(n) => {
                let dot = map.apply("likes".into(), hlc, |c, op| c.add(op, *n))?;
                TALLIED.with(|t| t.borrow_mut().push((dot, Ok(*n))));
            }
            Tally::Remove => {
                let seen = map.context().clone();
                map.remove("likes", hlc)?;
                if let Some(dot) = map.context().minus(&seen).dots().next() {
                    TALLIED.with(|t| t.borrow_mut().push((dot, Err(seen))));
                }
            }
        }
        // The engine ships `delta_since`, not this write's delta.
        Ok(Tallies::new())
    }
}

fn tally() -> impl Strategy<Value = Tally> {
    prop_oneof![
        6 => (-3..5i64).prop_map(Tally::Add),
        1 => Just(Tally::Remove),
    ]
}

/// Runs tallies with folding on, quiesces, and checks the total: every increment the
/// replicas hold counts once, unless a removal they hold had seen it. `durable`:
/// crashed masters restart from everything they had (as a node with `fsync always`
/// does); otherwise from their last or second-to-last snapshot.
fn check_tallies(
    nodes: usize,
    seed: u64,
    faults: concord::testing::sim::Faults,
    limit: Option<usize>,
    lease_block: u64,
    actions: Vec<Action<Tally>>,
    durable: bool,
) -> std::result::Result<(), TestCaseError> {
    TALLIED.with(|t| t.borrow_mut().clear());
    let mut sim: Sim<Tallies> = Sim::new(nodes, seed, faults)
        .with_lease_block(lease_block)
        .with_fold_counters(true)
        .with_durable_crashes(durable);
    if let Some(bytes) = limit {
        sim = sim.with_message_limit(bytes);
    }
    for action in actions {
        let crashed = match &action {
            Action::Crash { node } => Some(node % nodes),
            _ => None,
        };
        sim.step(action);
        // A write lost in a crash before it left its node: its dot may be issued
        // again (by a write or a fold), so the old increment no longer counts.
        if let Some(i) = crashed {
            let (me, leased) = (sim.engine(i).node(), sim.lease(i));
            TALLIED.with(|t| {
                t.borrow_mut()
                    .retain(|(d, _)| d.replica() != me || d.counter() <= leased)
            });
        }
    }
    sim.quiesce();
    check_quiesced(&sim)?;
    let state = sim.engine(0).state();
    let expected: i64 = TALLIED.with(|t| {
        let t = t.borrow();
        let held = t.iter().filter(|(dot, _)| state.context().contains(*dot));
        let removals: Vec<&concord::CausalContext> = held
            .clone()
            .filter_map(|(_, op)| op.as_ref().err())
            .collect();
        held.filter_map(|(dot, op)| op.as_ref().ok().map(|n| (dot, n)))
            .filter(|(dot, _)| !removals.iter().any(|seen| seen.contains(**dot)))
            .map(|(_, n)| n)
            .sum()
    });
    prop_assert_eq!(state.count("likes"), expected, "{:?}", state);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Increments only, with crashes that lose unsaved state (restarts from older
    /// snapshots): folding never counts an increment twice or loses one.
    #[test]
    fn counter_totals_survive_folding_faults_and_restarts(
        nodes in 2..=4usize,
        seed in any::<u64>(),
        faults in faults(),
        limit in message_limit(),
        lease_block in prop_oneof![Just(1u64), Just(3), Just(64)],
        actions in prop::collection::vec(action((-3..5i64).prop_map(Tally::Add)), 0..80),
    ) {
        check_tallies(nodes, seed, faults, limit, lease_block, actions, false)?;
    }

    /// Increments and removals, with durable restarts (folding's precondition, see
    /// `Config::fold_counters`): a removal takes exactly the increments its master had
    /// seen, folded or not, even one made after acknowledging segments that another
    /// master then folded.
    #[test]
    fn counter_totals_with_removals_survive_folding_and_faults(
        nodes in 2..=4usize,
        seed in any::<u64>(),
        faults in faults(),
        limit in message_limit(),
        lease_block in prop_oneof![Just(1u64), Just(3), Just(64)],
        actions in prop::collection::vec(action(tally()), 0..80),
    ) {
        check_tallies(nodes, seed, faults, limit, lease_block, actions, true)?;
    }
}

/// The generator produces the interesting cases often: concurrent writes reported,
/// messages lost, crashes that lose acknowledged writes to a peer.
#[test]
fn scenarios_exercise_conflicts_losses_and_crashes() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (
        2..=7usize,
        any::<u64>(),
        faults(),
        prop::collection::vec(action(profile_op()), 30..60),
    );
    let (mut conflicts, mut lost, mut crash_acked) = (0, 0, 0);
    for i in 0..100 {
        let (nodes, seed, faults, actions) = strategy.new_tree(&mut runner).unwrap().current();
        let mut sim: Sim<Profiles> = Sim::new(nodes, seed, faults);
        if i % 2 == 0 {
            sim = sim.with_message_limit(2_000);
        }
        sim.run(actions);
        sim.quiesce();
        assert!(sim.converged());
        conflicts += (sim.stats().conflicts > 0) as u32;
        lost += (sim.stats().lost > 0) as u32;
        crash_acked += (!sim.acknowledged_before_crash().is_empty()) as u32;
    }
    assert!(
        conflicts > 30,
        "only {conflicts}/100 runs reported a conflict"
    );
    assert!(lost > 30, "only {lost}/100 runs lost a message");
    assert!(
        crash_acked > 5,
        "only {crash_acked}/100 runs crashed after replicating"
    );
}

/// A write of one of many keys.
#[derive(Clone, Debug)]
struct Wide(u16, u8);

impl Operation<Profiles> for Wide {
    fn apply(&self, map: &mut Profiles, hlc: &mut Hlc<ManualClock>) -> Result<Profiles> {
        map.write(format!("key-{:05}", self.0), self.1, hlc)
    }
}

/// A node partitioned away while the others write far more than one message holds
/// catches up in chunks, over a lossy network, through the driver alone.
#[test]
fn a_partitioned_node_catches_up_in_chunks_under_loss() {
    for seed in 0..20 {
        let mut sim: Sim<Profiles> = Sim::new(3, seed, Faults::lossy()).with_message_limit(500);
        let mut actions = vec![Action::Partition { side_a: 0b001 }];
        for i in 0..200u8 {
            actions.push(Action::Write {
                node: 1 + (i as usize % 2),
                op: Wide(u16::from(i) % 150, i),
            });
            actions.push(Action::Push {
                node: 1 + (i as usize % 2),
            });
            actions.push(Action::Deliver { count: 3 });
        }
        actions.push(Action::Heal);
        sim.run(actions);
        sim.quiesce();
        assert!(sim.converged(), "seed {seed}: diverged");
        assert!(sim.chunks_sent() > 0, "seed {seed}: no chunk was sent");
        assert_eq!(sim.stats().rejected, 0, "{:?}", sim.last_error());
    }
}
