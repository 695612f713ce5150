//! A map has two joins that must agree: the standalone one (`store/map/join.rs`, with
//! its dot index, removal log and notes) and the one it uses as the value of another
//! map (`store/map/nested.rs`, under its parent's context). Here the same writes,
//! removals and merges run on standalone maps and on the same maps nested under one
//! key of a parent, at three replicas: after every step, each standalone map and its
//! nested twin hold the same entries.

use concord::{Hlc, ManualClock, MvRegister, OrMap, ReplicaId, Resolver};
use proptest::prelude::*;

type Inner = OrMap<String, MvRegister<u8>>;
type Parent = OrMap<String, Inner>;

const K: &str = "k";

#[derive(Clone, Debug)]
enum Step {
    /// Replica `at` writes `value` under `key`.
    Write { at: usize, key: u8, value: u8 },
    /// Replica `at` removes `key`.
    Remove { at: usize, key: u8 },
    /// Replica `to` merges replica `from`'s whole state.
    Merge { from: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize, 0..4u8, any::<u8>()).prop_map(|(at, key, value)| Step::Write { at, key, value }),
        2 => (0..3usize, 0..4u8).prop_map(|(at, key)| Step::Remove { at, key }),
        3 => (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Merge { from, to }),
    ]
}

/// The entries of a map, as (key, sorted siblings with their dots).
fn entries(m: &Inner) -> Vec<(String, Vec<(concord::Dot, u8)>)> {
    let mut out: Vec<_> = m
        .iter()
        .map(|(k, r)| {
            let mut s: Vec<_> = r.siblings().map(|(d, v)| (d, *v)).collect();
            s.sort();
            (k.clone(), s)
        })
        .collect();
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn standalone_and_nested_joins_agree(steps in prop::collection::vec(step(), 1..40)) {
        let time = ManualClock::new(1_000);
        let mut hlcs: Vec<Hlc<ManualClock>> = (1..=3u128)
            .map(|i| Hlc::new(ReplicaId::from_u128(i), time.clone()))
            .collect();
        let mut alone: Vec<Inner> = vec![Inner::new(); 3];
        let mut nested: Vec<Parent> = vec![Parent::new(); 3];
        for s in steps {
            time.advance(1);
            match s {
                Step::Write { at, key, value } => {
                    let key = format!("f{key}");
                    alone[at].write(key.clone(), value, &mut hlcs[at]).unwrap();
                    // The same dot: both maps issue the next counter of this replica,
                    // and a parent with one key has seen what its child has.
                    nested[at]
                        .apply(K.to_string(), &mut hlcs[at], |inner, op| {
                            inner.update_in(op, key, |r, op| r.assign(op, value))
                        })
                        .unwrap();
                }
                Step::Remove { at, key } => {
                    let key = format!("f{key}");
                    if alone[at].get(&key).is_none() {
                        continue;
                    }
                    alone[at].remove(&key, &mut hlcs[at]).unwrap();
                    nested[at]
                        .apply(K.to_string(), &mut hlcs[at], |inner, _| inner.remove_in(&key))
                        .unwrap();
                }
                Step::Merge { from, to } => {
                    let a = alone[from].clone();
                    alone[to].merge(a);
                    let n = nested[from].clone();
                    nested[to].merge(n);
                }
            }
            for i in 0..3 {
                let twin = nested[i].get(K).cloned().unwrap_or_default();
                prop_assert_eq!(entries(&alone[i]), entries(&twin), "replica {}", i);
            }
        }
    }
}
