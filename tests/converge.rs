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
use concord::{
    CausalContext, Dot, DotStore, Hlc, ManualClock, MvRegister, OrMap, PnCounter, Resolver, Result,
};
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
        let key = match *self {
            ProfileOp::Put(k, _) | ProfileOp::Remove(k) => KEYS[k],
        };
        recorded(map, key, |map| match *self {
            ProfileOp::Put(k, v) => map.write(KEYS[k].to_string(), v, hlc),
            ProfileOp::Remove(k) => map.remove(&KEYS[k].to_string(), hlc),
        })
    }
}

/// A write as the delete-vs-update oracle sees it: the key, whether it removed the
/// key, what its master had seen before it, and the dots it issued.
#[derive(Clone, Debug)]
struct Written {
    key: String,
    removal: bool,
    before: CausalContext,
    issued: CausalContext,
}

impl Written {
    /// The removal's own dot (its newest: a removal issues one).
    fn dot(&self) -> Dot {
        self.issued.dots().last().expect("a removal issues a dot")
    }

    /// What the remover had seen, its removal included.
    fn seen(&self) -> CausalContext {
        let mut seen = self.before.clone();
        for d in self.issued.dots() {
            seen.insert(d);
        }
        seen
    }
}

thread_local! {
    static WRITTEN: std::cell::RefCell<Vec<Written>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Applies `write` to `map`'s `key` and records it for the oracle.
fn recorded<V: DotStore>(
    map: &mut OrMap<String, V>,
    key: &str,
    write: impl FnOnce(&mut OrMap<String, V>) -> Result<OrMap<String, V>>,
) -> Result<OrMap<String, V>> {
    let before = map.context().clone();
    let had = map.contains_key(key);
    let delta = write(map)?;
    let issued = map.context().minus(&before);
    if !issued.is_empty() {
        WRITTEN.with(|w| {
            w.borrow_mut().push(Written {
                key: key.to_string(),
                removal: had && !map.contains_key(key),
                before,
                issued,
            })
        });
    }
    Ok(delta)
}

/// The delete-vs-update oracle, after quiescing: every removal report names a real
/// removal of its key, which the reporter learned of while holding a write of the
/// key made without seeing it (and the remover had not seen), once per node and
/// boot; and, in runs without crashes, for every removal and every write racing it
/// whose element survives to the end, the writer's node reported that removal or a
/// later removal of the key made after seeing it.
fn check_removal_reports<V: DotStore>(
    sim: &Sim<OrMap<String, V>>,
) -> std::result::Result<(), TestCaseError> {
    // A master held back to protocol version 1 or 2 tells nobody of its removals
    // (removal notes are version 3 on): only soundness is checked then.
    let complete = (0..sim.len()).all(|i| sim.engine(i).config().protocol_version >= 3);
    let written: Vec<Written> = WRITTEN.with(|w| w.borrow().clone());
    let removals: Vec<&Written> = written.iter().filter(|w| w.removal).collect();
    let writer_of = |dot: Dot| {
        written
            .iter()
            .find(|w| !w.removal && w.issued.contains(dot))
    };
    let mut told = std::collections::BTreeSet::new();
    for r in sim.conflict_log() {
        let c = &r.conflict;
        if !c.is_removal() {
            continue;
        }
        // The report names the removers' histories (one report per key and merge,
        // however many removals of the key it brought), each removal the newest of
        // its own replica: the removals of the key whose dots the clock names and
        // whose histories it covers, less those another of them had seen.
        let covered: Vec<&&Written> = removals
            .iter()
            .filter(|w| {
                let rdot = w.dot();
                w.key == c.key
                    && c.theirs_clock.get(rdot.replica()) == rdot.counter()
                    && w.seen()
                        .max_clock()
                        .iter()
                        .all(|(r, n)| c.theirs_clock.get(r) >= n)
            })
            .collect();
        let named: Vec<&&Written> = covered
            .iter()
            .copied()
            .filter(|w| {
                !covered
                    .iter()
                    .any(|o| o.dot() != w.dot() && o.seen().contains(w.dot()))
            })
            .collect();
        let mut joined = concord::VectorClock::default();
        for w in &named {
            joined.merge(w.seen().max_clock());
        }
        if named.is_empty() || joined != c.theirs_clock {
            return Err(TestCaseError::fail(format!(
                "a report of no removal: {c:?}"
            )));
        }
        for removal in named {
            let (rdot, seen) = (removal.dot(), removal.seen());
            let raced_by = |u: &Written| u.key == c.key && !u.before.contains(rdot);
            let mut raced = false;
            c.ours.for_each_dot(&mut |d| {
                raced |= !seen.contains(d) && writer_of(d).is_some_and(raced_by);
            });
            // A counter fold (a write of no one's) holds its replica's increments up
            // to the newest it folded; it races if one of those did and it survives
            // the removal (neither it nor what it folded seen).
            c.ours.for_each_fold(&mut |folded, fold| {
                raced |= !seen.contains(fold)
                    && !seen.contains(folded)
                    && written.iter().any(|u| {
                        !u.removal
                            && raced_by(u)
                            && u.issued.dots().any(|d| {
                                d.replica() == folded.replica()
                                    && d.counter() <= folded.counter()
                                    && !seen.contains(d)
                            })
                    });
            });
            prop_assert!(raced, "no write of ours raced {:?}: {:?}", removal, c);
            prop_assert!(
                told.insert((r.node, r.boot, rdot)),
                "node {} reported {:?} twice",
                r.node,
                rdot
            );
        }
    }
    if sim.stats().crashes > 0 || !complete {
        return Ok(());
    }
    let state = sim.engine(0).state();
    let node_of = |dot: Dot| {
        (0..sim.len()).find(|&i| {
            let e = sim.engine(i);
            e.node() == dot.replica() || e.incarnation() == dot.replica()
        })
    };
    for u in written.iter().filter(|w| !w.removal) {
        let Some(value) = state.get(&u.key) else {
            continue;
        };
        let mut survives = false;
        value.for_each_dot(&mut |d| survives |= u.issued.contains(d));
        if !survives {
            continue;
        }
        let udot = u.issued.dots().next().expect("a write issues a dot");
        let node = node_of(udot).expect("a writer");
        for r in removals.iter().filter(|r| r.key == u.key) {
            let rdot = r.dot();
            if u.before.contains(rdot) || r.seen().contains(udot) {
                continue; // one saw the other
            }
            let reported = told.iter().any(|&(n, _, d)| {
                n == node
                    && removals
                        .iter()
                        .any(|r2| r2.dot() == d && r2.key == u.key && r2.seen().contains(rdot))
            });
            prop_assert!(
                reported,
                "node {} never reported {:?}, which raced its write {:?}",
                node,
                r,
                u
            );
        }
    }
    Ok(())
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
        let key = match *self {
            CartOp::Add(c, ..) | CartOp::RemoveLine(c, _) | CartOp::Clear(c) => KEYS[c],
        };
        recorded(carts, key, |carts| match *self {
            CartOp::Add(c, p, n) => carts.update(KEYS[c].to_string(), hlc, |cart, op| {
                cart.update_in(op, KEYS[p].to_string(), |q, op| q.add(op, n))
            }),
            CartOp::RemoveLine(c, p) => carts.update(KEYS[c].to_string(), hlc, |cart, _| {
                cart.remove_in(&KEYS[p].to_string())
            }),
            CartOp::Clear(c) => carts.remove(&KEYS[c].to_string(), hlc),
        })
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

fn wide_op() -> impl Strategy<Value = WideOp> {
    // Any of 400 keys, or one of a few (so that removals race writes).
    let key = || prop_oneof![0..400u16, 0..16u16];
    prop_oneof![
        4 => (key(), any::<u8>()).prop_map(|(k, v)| WideOp::Put(k, v)),
        1 => key().prop_map(WideOp::Remove),
    ]
}

fn cart_op() -> impl Strategy<Value = CartOp> {
    prop_oneof![
        4 => (0..2usize, 0..3usize, -3..5i64).prop_map(|(c, p, n)| CartOp::Add(c, p, n)),
        1 => (0..2usize, 0..3usize).prop_map(|(c, p)| CartOp::RemoveLine(c, p)),
        1 => (0..2usize).prop_map(CartOp::Clear),
    ]
}

/// Runs the scenario on maps, heals, quiesces, and checks the spec, with the
/// delete-vs-update oracle on every report.
fn check_map<V, W>(
    nodes: usize,
    seed: u64,
    faults: Faults,
    limit: Option<usize>,
    actions: Vec<Action<W>>,
    versions: Option<Vec<u32>>,
) -> std::result::Result<(), TestCaseError>
where
    V: DotStore,
    W: Operation<OrMap<String, V>>,
{
    WRITTEN.with(|w| w.borrow_mut().clear());
    let mut sim: Sim<OrMap<String, V>> = Sim::new(nodes, seed, faults).with_conflict_log(true);
    if let Some(bytes) = limit {
        sim = sim.with_message_limit(bytes);
    }
    if let Some(v) = &versions {
        sim = sim.with_rolling_upgrade(v);
    }
    for action in actions {
        let crashed = match &action {
            Action::Crash { node } => Some(node % nodes),
            _ => None,
        };
        sim.step(action);
        // A write lost in a crash before it left its node: its dot may be issued
        // again, so the old write no longer counts.
        if let Some(i) = crashed {
            let (me, leased) = (sim.engine(i).node(), sim.lease(i));
            WRITTEN.with(|w| {
                w.borrow_mut().retain(|w| {
                    w.issued
                        .dots()
                        .all(|d| d.replica() != me || d.counter() <= leased)
                })
            });
        }
    }
    sim.quiesce();
    check_quiesced(&sim)?;
    check_removal_reports(&sim)
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
        check_map::<MvRegister<u8>, _>(nodes, seed, faults, limit, actions, None)?;
    }

    /// Many keys, removals among the writes, and a small message limit: catch-ups
    /// after partitions and crashes go in chunks
    /// (`a_partitioned_node_catches_up_in_chunks_under_loss` checks that such a
    /// catch-up does chunk), and their removal reports face the oracle.
    #[test]
    fn wide_maps_converge_in_chunks_under_faults(
        nodes in 2..=4usize,
        seed in any::<u64>(),
        faults in faults(),
        limit in 2_000..3_000usize,
        actions in prop::collection::vec(action(wide_op()), 0..120),
    ) {
        check_map::<MvRegister<u8>, _>(nodes, seed, faults, Some(limit), actions, None)?;
    }

    #[test]
    fn nested_carts_converge_under_faults(
        nodes in 2..=5usize,
        seed in any::<u64>(),
        faults in faults(),
        limit in message_limit(),
        actions in prop::collection::vec(action(cart_op()), 0..60),
    ) {
        check_map::<OrMap<String, PnCounter>, _>(nodes, seed, faults, limit, actions, None)?;
    }
}

/// An increment of one of a few shared counters, or a removal of one, recorded with
/// its dot (and a removal with what its master had seen), so the test can check each
/// total after quiescing: folding (stable segments merged into one per master and
/// key, around restarts from older snapshots too) must count every increment that no
/// removal of its key saw exactly once, and none that one saw, even when the removal
/// was made after acknowledging segments another master then folded. Several keys,
/// so that folds of different keys (and the map's record of what each fold folded)
/// live side by side, and removals of one key move the others in storage.
#[derive(Clone, Debug)]
enum Tally {
    Add(usize, i64),
    Remove(usize),
}

type Tallies = OrMap<String, PnCounter>;

const TALLY_KEYS: [&str; 3] = ["likes", "views", "stars"];

/// A recorded operation: its dot, its key, and an increment's amount or what a
/// removal saw.
type Tallied = (
    concord::Dot,
    usize,
    std::result::Result<i64, concord::CausalContext>,
);

thread_local! {
    static TALLIED: std::cell::RefCell<Vec<Tallied>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Operation<Tallies> for Tally {
    fn apply(&self, map: &mut Tallies, hlc: &mut Hlc<ManualClock>) -> Result<Tallies> {
        let k = match *self {
            Tally::Add(k, _) | Tally::Remove(k) => k % TALLY_KEYS.len(),
        };
        recorded(map, TALLY_KEYS[k], |map| {
            match *self {
                Tally::Add(_, n) => {
                    let dot = map.apply(TALLY_KEYS[k].into(), hlc, |c, op| c.add(op, n))?;
                    TALLIED.with(|t| t.borrow_mut().push((dot, k, Ok(n))));
                }
                Tally::Remove(_) => {
                    let seen = map.context().clone();
                    map.remove(TALLY_KEYS[k], hlc)?;
                    if let Some(dot) = map.context().minus(&seen).dots().next() {
                        TALLIED.with(|t| t.borrow_mut().push((dot, k, Err(seen))));
                    }
                }
            }
            // The engine ships `delta_since`, not this write's delta.
            Ok(Tallies::new())
        })
    }
}

fn tally_add() -> impl Strategy<Value = Tally> {
    (0..TALLY_KEYS.len(), -3..5i64).prop_map(|(k, n)| Tally::Add(k, n))
}

fn tally() -> impl Strategy<Value = Tally> {
    prop_oneof![
        6 => tally_add(),
        1 => (0..TALLY_KEYS.len()).prop_map(Tally::Remove),
    ]
}

/// How the masters of a tallies run restart and which versions they speak.
struct TallyRun {
    /// `Config::lease_block`.
    lease_block: u64,
    /// Crashed masters restart from everything they had.
    durable: bool,
    /// A rolling upgrade from these versions (see `Sim::with_rolling_upgrade`).
    versions: Option<Vec<u32>>,
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
    actions: Vec<Action<Tally>>,
    TallyRun {
        lease_block,
        durable,
        versions,
    }: TallyRun,
) -> std::result::Result<(), TestCaseError> {
    TALLIED.with(|t| t.borrow_mut().clear());
    WRITTEN.with(|w| w.borrow_mut().clear());
    let mut sim: Sim<Tallies> = Sim::new(nodes, seed, faults)
        .with_lease_block(lease_block)
        .with_fold_counters(true)
        .with_durable_crashes(durable)
        .with_conflict_log(true);
    if let Some(bytes) = limit {
        sim = sim.with_message_limit(bytes);
    }
    if let Some(v) = &versions {
        sim = sim.with_rolling_upgrade(v);
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
                    .retain(|(d, _, _)| d.replica() != me || d.counter() <= leased)
            });
            WRITTEN.with(|w| {
                w.borrow_mut().retain(|w| {
                    w.issued
                        .dots()
                        .all(|d| d.replica() != me || d.counter() <= leased)
                })
            });
        }
    }
    sim.quiesce();
    check_quiesced(&sim)?;
    let state = sim.engine(0).state();
    for (k, key) in TALLY_KEYS.iter().enumerate() {
        let expected: i64 = TALLIED.with(|t| {
            let t = t.borrow();
            let held = t
                .iter()
                .filter(|(dot, key, _)| *key == k && state.context().contains(*dot));
            let removals: Vec<&concord::CausalContext> = held
                .clone()
                .filter_map(|(_, _, op)| op.as_ref().err())
                .collect();
            held.filter_map(|(dot, _, op)| op.as_ref().ok().map(|n| (dot, n)))
                .filter(|(dot, _)| !removals.iter().any(|seen| seen.contains(**dot)))
                .map(|(_, n)| n)
                .sum()
        });
        prop_assert_eq!(state.count(*key), expected, "{}: {:?}", key, state);
    }
    // And every removal report names removals that an increment really raced (not a
    // fold of increments the remover had seen).
    check_removal_reports(&sim)
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
        actions in prop::collection::vec(action(tally_add()), 0..80),
    ) {
        check_tallies(nodes, seed, faults, limit, actions, TallyRun { lease_block, durable: false, versions: None })?;
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
        check_tallies(nodes, seed, faults, limit, actions, TallyRun { lease_block, durable: true, versions: None })?;
    }
}

/// A protocol version for each node of a cluster in the middle of a rolling upgrade:
/// any mix of the versions this build speaks; a node moves to the newest when it
/// restarts.
fn versions(nodes: usize) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(1..=concord::sync::PROTOCOL_VERSION, nodes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Masters speaking versions 1 to 4 side by side (JSON and binary, with and
    /// without removal notes and fencing fields), each upgraded when it restarts:
    /// they converge, and every removal report is a real race.
    #[test]
    fn profiles_converge_across_a_rolling_upgrade(
        (nodes, versions) in (2..=5usize).prop_flat_map(|n| (Just(n), versions(n))),
        seed in any::<u64>(),
        faults in faults(),
        limit in message_limit(),
        actions in prop::collection::vec(action(profile_op()), 0..60),
    ) {
        check_map::<MvRegister<u8>, _>(nodes, seed, faults, limit, actions, Some(versions))?;
    }

    /// Nested counters (carts) across a rolling upgrade: a fold travels to an older
    /// peer as a plain segment, and folding waits until every peer speaks version 3.
    #[test]
    fn nested_carts_converge_across_a_rolling_upgrade(
        (nodes, versions) in (2..=4usize).prop_flat_map(|n| (Just(n), versions(n))),
        seed in any::<u64>(),
        faults in faults(),
        limit in message_limit(),
        actions in prop::collection::vec(action(cart_op()), 0..60),
    ) {
        check_map::<OrMap<String, PnCounter>, _>(nodes, seed, faults, limit, actions, Some(versions))?;
    }

    /// Folding counters with removals and durable restarts across a rolling upgrade:
    /// totals stay exact while some masters speak versions 1 or 2.
    #[test]
    fn counter_totals_survive_folding_across_a_rolling_upgrade(
        (nodes, versions) in (2..=4usize).prop_flat_map(|n| (Just(n), versions(n))),
        seed in any::<u64>(),
        faults in faults(),
        limit in message_limit(),
        lease_block in prop_oneof![Just(1u64), Just(3), Just(64)],
        actions in prop::collection::vec(action(tally()), 0..80),
    ) {
        check_tallies(nodes, seed, faults, limit, actions, TallyRun { lease_block, durable: true, versions: Some(versions) })?;
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

/// A write or a removal of one of many keys, recorded for the delete-vs-update oracle.
#[derive(Clone, Debug)]
enum WideOp {
    Put(u16, u8),
    Remove(u16),
}

impl Operation<Profiles> for WideOp {
    fn apply(&self, map: &mut Profiles, hlc: &mut Hlc<ManualClock>) -> Result<Profiles> {
        let k = match *self {
            WideOp::Put(k, _) | WideOp::Remove(k) => k,
        };
        let key = format!("key-{k:05}");
        recorded(map, &key, |map| match *self {
            WideOp::Put(_, v) => map.write(key.clone(), v, hlc),
            WideOp::Remove(_) => map.remove(&key, hlc),
        })
    }
}

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
