//! The checks of an application merge function ([`MergeFn`]).

use std::fmt;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::CheckResult;
use crate::causal::Crdt;
use crate::causal::Data;
use crate::hlc::{Hlc, ManualClock};
use crate::id::ReplicaId;
use crate::mvreg::{MergeFn, MvRegister};

/// The wall time of the masters that write the siblings.
const START_MS: u64 = 1_700_000_000_000;

/// One case: the siblings, in the canonical order a register holds them, and how
/// many of the masters holding them collapse the conflict at once.
#[derive(Clone)]
pub(crate) struct MergeCase<V> {
    siblings: Vec<V>,
    collapsing: usize,
}

impl<V: fmt::Debug> fmt::Debug for MergeCase<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sibling(s)", self.siblings.len())?;
        if self.siblings.len() > 1 {
            write!(f, ", {} masters collapse them at once", self.collapsing)?;
        }
        write!(f, ":")?;
        for v in &self.siblings {
            write!(f, "\n  {v:?}")?;
        }
        Ok(())
    }
}

/// Sibling lists of 1 to 5 values, and 2 to 4 collapsing masters.
pub(crate) fn cases<V: fmt::Debug>(
    values: impl Strategy<Value = V>,
) -> impl Strategy<Value = MergeCase<V>> {
    (proptest::collection::vec(values, 1..=5), 2..=4usize).prop_map(|(siblings, collapsing)| {
        MergeCase {
            siblings,
            collapsing,
        }
    })
}

pub(crate) const ADVICE: &str =
    "a merge function must be a function of the siblings alone: not of a \
                      HashMap's or HashSet's iteration order, the clock, a random number \
                      or the local replica";

fn fail(message: String) -> CheckResult {
    Err(TestCaseError::fail(message))
}

/// A copy of `value` as a peer decodes it from the wire (JSON).
fn over_the_wire<V: Data>(value: &V) -> Result<V, TestCaseError> {
    let text = serde_json::to_string(value)
        .map_err(|e| TestCaseError::fail(format!("the value {value:?} does not encode: {e}")))?;
    serde_json::from_str(&text).map_err(|e| {
        TestCaseError::fail(format!(
            "the value {value:?} does not survive the wire: {text} does not decode: {e}"
        ))
    })
}

/// Every master merges every other master's delta, received over the wire.
fn exchange<V: Data>(
    masters: &mut [MvRegister<V>],
    deltas: &[(usize, MvRegister<V>)],
) -> std::result::Result<usize, TestCaseError> {
    let mut reports = Vec::new();
    for (from, delta) in deltas {
        for (to, master) in masters.iter_mut().enumerate() {
            if to != *from {
                master
                    .try_merge(
                        over_the_wire(delta)?,
                        &crate::Limits::default(),
                        &mut reports,
                    )
                    .map_err(|e| TestCaseError::fail(format!("a delta was refused: {e}")))?;
            }
        }
    }
    Ok(reports.len())
}

/// Runs every check on one case; with `one_value`, also that a concurrent collapse
/// ends with a single sibling.
pub(crate) fn check<V: Data, F: MergeFn<V>>(
    case: &MergeCase<V>,
    f: &F,
    one_value: bool,
) -> CheckResult {
    let siblings = &case.siblings;
    let refs: Vec<&V> = siblings.iter().collect();

    if let Some(v) = siblings.iter().find(|v| V::clone(v) != **v) {
        return fail(format!(
            "the value {v:?} is not equal to itself (a NaN?): replicas holding it never \
             compare equal, and it does not survive the wire"
        ));
    }

    // One value, and copies of one value, resolve to it.
    let v = &siblings[0];
    let alone = f.merge_values(&[v]);
    if &alone != v {
        return fail(format!(
            "a single value does not resolve to itself:\n value    = {v:?}\n f([value]) = {alone:?}"
        ));
    }
    let copies = f.merge_values(&[v, v]);
    if &copies != v {
        return fail(format!(
            "copies of one value do not resolve to it (masters that collapse the same \
             conflict at once leave copies of the resolution as siblings):\n \
             value = {v:?}\n f([value, value]) = {copies:?}"
        ));
    }

    // The same siblings give the same value: again, on copies, after the wire.
    let first = f.merge_values(&refs);
    let cloned: Vec<V> = siblings.to_vec();
    let decoded = siblings
        .iter()
        .map(over_the_wire)
        .collect::<Result<Vec<V>, _>>()?;
    let again = [
        ("a second call", f.merge_values(&refs)),
        (
            "a call on copies",
            f.merge_values(&cloned.iter().collect::<Vec<_>>()),
        ),
        (
            "a call on the values decoded from the wire",
            f.merge_values(&decoded.iter().collect::<Vec<_>>()),
        ),
    ];
    for (how, other) in again {
        if other != first {
            return fail(format!(
                "it is not deterministic: the same siblings gave two different values\n \
                 siblings    = {siblings:?}\n f(siblings) = {first:?} on the first call\n \
                 f(siblings) = {other:?} on {how}\n{ADVICE}"
            ));
        }
    }
    if siblings.len() < 2 {
        return Ok(());
    }

    // Masters that each wrote one sibling, and received the others' over the wire,
    // hold the same register and resolve it alike.
    let time = ManualClock::new(START_MS);
    let mut hlcs: Vec<Hlc<ManualClock>> = (0..siblings.len())
        .map(|i| Hlc::new(ReplicaId::from_u128(i as u128 + 1), time.clone()))
        .collect();
    let mut masters = vec![MvRegister::new(); siblings.len()];
    let mut deltas = Vec::new();
    for (i, value) in siblings.iter().enumerate() {
        let delta = masters[i]
            .write(value.clone(), &mut hlcs[i])
            .map_err(|e| TestCaseError::fail(format!("writing {value:?} failed: {e}")))?;
        deltas.push((i, delta));
    }
    exchange(&mut masters, &deltas)?;
    let held: Vec<&V> = masters[0].values().collect();
    prop_assert_eq!(
        &held,
        &refs,
        "the register does not list the siblings in write order"
    );
    for (i, master) in masters.iter().enumerate() {
        let resolved = master
            .resolve(|s: &[&V]| f.merge_values(s))
            .expect("every master wrote");
        if resolved != first {
            return fail(format!(
                "it is not deterministic: masters holding the same siblings resolve them \
                 differently\n siblings    = {siblings:?}\n f(siblings) = {first:?} on the \
                 first call\n f(siblings) = {resolved:?} at master r{}\n{ADVICE}",
                i + 1
            ));
        }
    }

    // Several masters collapse the conflict at once; once they have exchanged their
    // deltas, every master shows the value they wrote.
    let collapsing = case.collapsing.min(masters.len());
    let mut deltas = Vec::new();
    for (i, master) in masters.iter_mut().enumerate().take(collapsing) {
        let resolved = master
            .resolve(|s: &[&V]| f.merge_values(s))
            .expect("written");
        if resolved != first {
            return fail(format!(
                "it is not deterministic: a master collapsing the siblings resolved them \
                 differently\n siblings    = {siblings:?}\n f(siblings) = {first:?} on the \
                 first call\n f(siblings) = {resolved:?} at master r{} as it collapsed\n{ADVICE}",
                i + 1
            ));
        }
        let delta = master
            .write(resolved, &mut hlcs[i])
            .map_err(|e| TestCaseError::fail(format!("writing the resolution failed: {e}")))?;
        deltas.push((i, delta));
    }
    let reports = exchange(&mut masters, &deltas)?;
    for (i, master) in masters.iter().enumerate() {
        prop_assert_eq!(master, &masters[0], "masters differ after the collapse");
        let shown = master.resolve(|s: &[&V]| f.merge_values(s));
        if shown.as_ref() != Some(&first) {
            return fail(format!(
                "collapsing changed what a master shows: {collapsing} masters wrote back \
                 {first:?}, and master r{} now shows {shown:?} (its siblings: {:?})",
                i + 1,
                master.values().collect::<Vec<_>>()
            ));
        }
    }
    if one_value && (masters[0].get() != Some(&first) || masters[0].is_conflicted()) {
        return fail(format!(
            "{collapsing} masters collapsed the same conflict concurrently with the same \
             merge function and do not show one value: {:?}",
            masters[0].values().collect::<Vec<_>>()
        ));
    }
    if one_value && reports > 0 {
        return fail(format!(
            "{collapsing} masters collapsed the same conflict concurrently with the same \
             merge function, and exchanging the result reported {reports} new conflicts"
        ));
    }
    Ok(())
}
