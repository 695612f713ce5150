//! Convergence under any network schedule: random actions over the simulator, with
//! loss, duplication, reordering, partitions and crashes, then heal and quiesce.
//!
//! CI runs 500 cases per property; set `CONCORD_SIM_CASES` for more.

use concord::sim::{Action, Faults, Sim, SimOp};
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

impl SimOp<Profiles> for ProfileOp {
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

impl SimOp<Carts> for CartOp {
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

fn action<W: Clone + std::fmt::Debug + 'static>(
    op: impl Strategy<Value = W> + 'static,
) -> impl Strategy<Value = Action<W>> {
    prop_oneof![
        6 => (0..7usize, op).prop_map(|(node, op)| Action::Write { node, op }),
        2 => (0..7usize, 0..7usize).prop_map(|(from, to)| Action::Sync { from, to }),
        3 => (0..7usize).prop_map(|node| Action::Push { node }),
        5 => (1..8usize).prop_map(|count| Action::Deliver { count }),
        1 => any::<u64>().prop_map(|side_a| Action::Partition { side_a }),
        1 => Just(Action::Heal),
        1 => (0..7usize).prop_map(|node| Action::Snapshot { node }),
        1 => (0..7usize).prop_map(|node| Action::Crash { node }),
        1 => (0..2_000u64).prop_map(|ms| Action::Advance { ms }),
    ]
}

fn faults() -> impl Strategy<Value = Faults> {
    (0..=50u8, 0..30u8, any::<bool>()).prop_map(|(loss, duplicate, reorder)| Faults {
        loss,
        duplicate,
        reorder,
    })
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
/// A message limit for the run: none (the default 64 MiB), or one small enough that
/// catch-ups go in chunks.
fn limit() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![1 => Just(None), 1 => (2_000..4_000usize).prop_map(Some)]
}

fn check<T, W>(
    nodes: usize,
    seed: u64,
    faults: Faults,
    limit: Option<usize>,
    actions: Vec<Action<W>>,
) -> std::result::Result<(), TestCaseError>
where
    T: concord::Crdt + Default,
    W: SimOp<T>,
{
    let mut sim: Sim<T> = Sim::new(nodes, seed, faults);
    if let Some(bytes) = limit {
        sim = sim.with_message_limit(bytes);
    }
    sim.run(actions);
    sim.quiesce();
    prop_assert!(sim.converged(), "replicas diverged after quiescing");
    prop_assert_eq!(sim.stats().reused_dots, 0, "a dot was issued twice");
    // Identities survive restarts: version vectors name nodes only.
    for i in 0..sim.len() {
        prop_assert!(sim.engine(i).context().replicas().count() <= sim.len());
    }
    prop_assert_eq!(
        sim.stats().rejected,
        0,
        "an honest message was rejected: {:?}",
        sim.last_error()
    );
    // Every write some other replica held before its writer crashed survived.
    for (dot, holders) in sim.acknowledged_before_crash() {
        prop_assert!(*holders >= 1);
        for i in 0..sim.len() {
            prop_assert!(
                sim.engine(i).state().context().contains(*dot),
                "write {} acknowledged before a crash is missing at node {}",
                dot,
                i
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn profiles_converge_under_faults(
        nodes in 2..=7usize,
        seed in any::<u64>(),
        faults in faults(),
        limit in limit(),
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
        limit in limit(),
        actions in prop::collection::vec(action(cart_op()), 0..60),
    ) {
        check::<Carts, _>(nodes, seed, faults, limit, actions)?;
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

impl SimOp<Profiles> for Wide {
    fn apply(&self, map: &mut Profiles, hlc: &mut Hlc<ManualClock>) -> Result<Profiles> {
        map.write(format!("key-{:05}", self.0), self.1, hlc)
    }
}

/// A node partitioned away while the others write far more than one message holds
/// catches up in chunks, over a lossy network, through the driver alone.
#[test]
fn a_partitioned_node_catches_up_in_chunks_under_loss() {
    for seed in 0..20 {
        let mut sim: Sim<Profiles> = Sim::new(3, seed, Faults::lossy()).with_message_limit(1_200);
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
