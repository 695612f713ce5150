//! The test kit catches what it is there to catch: merge functions that read a
//! `HashMap`'s order or the clock, operations whose deltas lie, setups whose replicas
//! show different views; a failure names the seed that replays it; and the guide shows
//! `tests/user_kit.rs` as it is.
#![cfg(feature = "testing")]

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use concord::testing::{self, proptest, Failure, Kit, Operation, Setup};
use concord::{Hlc, ManualClock, MvRegister, OrMap, Result};
use proptest::prelude::*;

/// Short names: ties and repeats are frequent.
fn name() -> impl Strategy<Value = String> {
    "[abc]{0,2}"
}

/// The most frequent name, counted in a `HashMap` (a fresh random `RandomState` per
/// call): a tie goes to whichever name the map happens to list first.
fn most_frequent(siblings: &[&String]) -> String {
    let mut votes: HashMap<&str, usize> = HashMap::new();
    for s in siblings {
        *votes.entry(s.as_str()).or_default() += 1;
    }
    let mut best = ("", 0);
    for (name, n) in votes {
        if n > best.1 {
            best = (name, n);
        }
    }
    best.0.to_string()
}

/// The same rule with the ties broken by the siblings' order: sound.
fn most_frequent_first(siblings: &[&String]) -> String {
    let count = |s: &String| siblings.iter().filter(|t| **t == s).count();
    let mut best = siblings[0];
    for &s in siblings {
        if count(s) > count(best) {
            best = s;
        }
    }
    best.clone()
}

/// Every distinct name, in a `HashSet`'s order.
fn all_names(siblings: &[&String]) -> String {
    let names: HashSet<&str> = siblings.iter().map(|s| s.as_str()).collect();
    names.into_iter().collect::<Vec<_>>().join("+")
}

/// The first sibling, or the last on an odd nanosecond of the wall clock.
fn by_the_clock(siblings: &[&String]) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .subsec_nanos();
    match nanos % 2 {
        0 => siblings[0].clone(),
        _ => siblings[siblings.len() - 1].clone(),
    }
}

fn failure_of<V, F>(values: impl Strategy<Value = V>, f: F) -> Failure
where
    V: concord::Data,
    F: concord::MergeFn<V>,
{
    Kit::new()
        .check_merge_fn(values, f)
        .expect_err("the kit let a broken merge function through")
}

#[test]
fn a_merge_function_that_reads_a_hash_maps_order_is_caught() {
    let failure = failure_of(name(), most_frequent);
    assert!(failure.reason.contains("not deterministic"), "{failure}");
    assert!(failure.reason.contains("HashMap"), "{failure}");
    // The counterexample is a tie: two siblings or more.
    assert!(!failure.input.starts_with("1 sibling"), "{failure}");
    testing::check_merge_fn(name(), most_frequent_first);
}

#[test]
fn a_merge_function_that_reads_a_hash_sets_order_is_caught() {
    let failure = failure_of(name(), all_names);
    // As above: the HashSet's random order decides which check trips first.
    assert!(
        failure.reason.contains("not deterministic")
            || failure.reason.contains("collapsing changed"),
        "{failure}"
    );
}

#[test]
fn a_merge_function_that_reads_the_clock_is_caught() {
    let failure = failure_of(name(), by_the_clock);
    // Which check trips first depends on the clock (a call that disagrees with
    // another, or a collapse that changes the shown value).
    assert!(
        failure.reason.contains("not deterministic")
            || failure.reason.contains("collapsing changed"),
        "{failure}"
    );
}

#[test]
fn a_merge_function_that_adds_up_copies_is_caught() {
    // Summing the siblings double-counts copies of one value.
    let sum = |s: &[&u32]| s.iter().map(|v| **v).sum::<u32>();
    let failure = failure_of(0..1_000u32, sum);
    assert!(
        failure
            .reason
            .contains("copies of one value do not resolve to it"),
        "{failure}"
    );
    // Shrunk to a single sibling of value 1: [1, 1] sums to 2.
    assert_eq!(failure.input, "1 sibling(s):\n  1", "{failure}");
}

#[test]
fn a_merge_function_that_changes_a_single_value_is_caught() {
    let failure = failure_of(0..1_000u32, |s: &[&u32]| *s[0] + 1);
    assert!(
        failure.reason.contains("does not resolve to itself"),
        "{failure}"
    );
}

#[test]
fn a_value_not_equal_to_itself_is_caught() {
    let failure = failure_of(Just(f64::NAN), |s: &[&f64]| *s[0]);
    assert!(failure.reason.contains("not equal to itself"), "{failure}");
}

#[test]
fn a_failure_names_its_seed_and_the_seed_replays_it() {
    let sum = |s: &[&u32]| s.iter().map(|v| **v).sum::<u32>();
    let first = Kit::new()
        .seed(42)
        .check_merge_fn(0..1_000u32, sum)
        .unwrap_err();
    assert_eq!(first.seed, 42);
    let message = first.to_string();
    assert!(
        message.contains("seed = 42; replay with CONCORD_SEED=42"),
        "{message}"
    );
    assert!(message.starts_with("concord::testing: the merge function failed\n"));
    let again = Kit::new()
        .seed(42)
        .check_merge_fn(0..1_000u32, sum)
        .unwrap_err();
    assert_eq!(first, again);
}

#[test]
fn the_panicking_check_prints_the_failure() {
    let caught = std::panic::catch_unwind(|| testing::check_merge_fn(name(), all_names));
    let payload = caught.expect_err("check_merge_fn passed a HashSet-ordered function");
    let message = payload
        .downcast_ref::<String>()
        .expect("a formatted message");
    // Which check trips first depends on the HashSet's random order (a call that
    // disagrees with another, or a collapse that changes the shown value): the
    // message names the failure and the seed either way.
    assert!(
        message.starts_with("concord::testing: the merge function failed\n"),
        "{message}"
    );
    assert!(
        message.contains("not deterministic") || message.contains("collapsing changed"),
        "{message}"
    );
    assert!(message.contains("replay with CONCORD_SEED="), "{message}");
}

// ---------------------------------------------------------------------------------
// Concurrent collapse.
// ---------------------------------------------------------------------------------

/// The spec: several masters that collapse one conflict at once end with one value
/// and no new conflict report.
#[test]
fn masters_collapsing_one_conflict_at_once_end_with_one_value() {
    testing::check_collapse_converges(name(), most_frequent_first);
}

// ---------------------------------------------------------------------------------
// Types and operations.
// ---------------------------------------------------------------------------------

type Names = OrMap<String, MvRegister<String>>;

/// A write that returns an empty delta: a peer that applies it learns nothing.
#[derive(Clone, Debug)]
enum Forgetful {
    Put(usize, String),
}

impl Operation<Names> for Forgetful {
    fn apply(&self, names: &mut Names, hlc: &mut Hlc<ManualClock>) -> Result<Names> {
        let Forgetful::Put(k, v) = self;
        names.write(format!("k{k}"), v.clone(), hlc)?;
        Ok(Names::new())
    }
}

#[test]
fn an_operation_whose_delta_is_wrong_is_caught() {
    let ops = (0..3usize, name()).prop_map(|(k, v)| Forgetful::Put(k, v));
    let failure = Kit::new().check_type::<Names, _>(ops).unwrap_err();
    assert_eq!(
        failure.property,
        "a state joined with its mutator's delta is the mutated state"
    );
    assert!(
        failure
            .reason
            .contains("state ⊔ delta != the mutated state"),
        "{failure}"
    );
    // Shrunk to one write.
    assert!(failure.input.contains(", 1 steps:\n  Write(r"), "{failure}");
}

/// A write that fails after changing the state.
#[derive(Clone, Debug)]
struct HalfDone(usize);

impl Operation<Names> for HalfDone {
    fn apply(&self, names: &mut Names, hlc: &mut Hlc<ManualClock>) -> Result<Names> {
        names.write(format!("k{}", self.0), "x".to_string(), hlc)?;
        Err(concord::Error::ClockOverflow)
    }
}

#[test]
fn an_operation_that_fails_half_way_is_caught() {
    let failure = Kit::new()
        .check_type::<Names, _>((0..3usize).prop_map(HalfDone))
        .unwrap_err();
    assert!(
        failure
            .reason
            .contains("failed (hybrid logical clock counter overflow) but changed the state"),
        "{failure}"
    );
}

#[derive(Clone, Debug)]
struct Put(usize, String);

impl Operation<Names> for Put {
    fn apply(&self, names: &mut Names, hlc: &mut Hlc<ManualClock>) -> Result<Names> {
        names.write(format!("k{}", self.0), self.1.clone(), hlc)
    }
}

fn put() -> impl Strategy<Value = Put> {
    (0..3usize, name()).prop_map(|(k, v)| Put(k, v))
}

#[test]
fn a_sound_type_passes_and_the_programs_race() {
    Kit::new().cases(64).check_type::<Names, _>(put()).unwrap();
}

// ---------------------------------------------------------------------------------
// Setups in the simulator.
// ---------------------------------------------------------------------------------

#[test]
fn a_setup_whose_merge_function_reads_a_hash_sets_order_is_caught() {
    let setup = Setup::<Names, _>::new(put()).merge_fn(all_names);
    let failure = Kit::new().check_setup(setup).unwrap_err();
    assert_eq!(failure.property, "the setup in the simulator");
    // Caught when the nodes resolve their state, or else when their collapses write
    // back different values.
    assert!(
        failure
            .reason
            .contains("merge function 1 is not deterministic")
            || failure.reason.contains("collapsing changed the view"),
        "{failure}"
    );
    assert!(failure.input.starts_with("Sim::new("), "{failure}");
}

#[test]
fn a_sound_setup_passes_and_the_simulations_put_it_to_work() {
    let setup = Setup::<Names, _>::new(put()).merge_fn(most_frequent_first);
    let report = Kit::new().seed(7).check_setup(setup).unwrap();
    assert_eq!(report.cases, Setup::<Names, Put>::DEFAULT_CASES);
    assert_eq!(report.seed, 7);
    let s = &report.stats;
    assert!(s.writes > 100 && s.conflicts > 100, "{report}");
    assert!(
        s.lost > 10 && s.duplicated > 10 && s.crashes > 10,
        "{report}"
    );
    assert!(report.resolved > 10, "{report}");
    assert_eq!(s.rejected, 0, "{report}");
}

// ---------------------------------------------------------------------------------
// The guide.
// ---------------------------------------------------------------------------------

/// The guide's "Testing your own merge functions" shows `tests/user_kit.rs` verbatim.
#[test]
fn the_guide_shows_the_user_test_file_as_it_is() {
    let root = env!("CARGO_MANIFEST_DIR");
    let guide = std::fs::read_to_string(format!("{root}/docs/guide.md")).expect("the guide");
    let file = std::fs::read_to_string(format!("{root}/tests/user_kit.rs")).expect("the file");
    let start = guide
        .find("```rust,ignore\n//! A user's test of their own setup")
        .expect("the guide shows tests/user_kit.rs in a ```rust,ignore block");
    let body = &guide[start + "```rust,ignore\n".len()..];
    let shown = &body[..body.find("```\n").expect("the block ends")];
    assert_eq!(shown, file, "docs/guide.md and tests/user_kit.rs differ");
}
