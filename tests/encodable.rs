//! Every value a write accepts travels: writes refuse what JSON cannot carry (NaN and
//! infinite floats, map keys that are not strings or integers) with a typed error and
//! no change, and what they accept survives encode/decode and snapshot/restore.

use std::collections::BTreeMap;

use concord::sync::{Config, MemoryLease, SyncEngine};
use concord::{Error, Hlc, LwwRegister, ManualClock, MvRegister, OrMap, PnCounter, ReplicaId};
use proptest::prelude::*;

fn hlc() -> Hlc<ManualClock> {
    Hlc::new(ReplicaId::from_u128(1), ManualClock::new(1_000))
}

#[test]
fn non_finite_floats_are_refused_and_change_nothing() {
    let mut h = hlc();
    let mut m: OrMap<String, MvRegister<f64>> = OrMap::new();
    m.write("x".into(), 1.0, &mut h).unwrap();
    let before = m.clone();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let e = m.write("x".into(), bad, &mut h).unwrap_err();
        assert!(matches!(e, Error::Unencodable { .. }), "{e}");
        assert_eq!(m, before);
    }
    let mut l: OrMap<String, LwwRegister<Vec<f32>>> = OrMap::new();
    assert!(matches!(
        l.set("v".into(), vec![0.5, f32::NAN], &mut h),
        Err(Error::Unencodable { .. })
    ));
    assert!(l.is_empty());
    let mut reg = MvRegister::new();
    assert!(reg.write(Some(f64::NAN), &mut h).is_err());
    assert_eq!(reg.values().count(), 0);
    let mut lww = LwwRegister::new();
    assert!(lww.set((1u8, f64::INFINITY), &mut h).is_err());
    assert!(lww.value().is_none());
}

#[test]
fn keys_that_are_not_json_keys_are_refused_and_change_nothing() {
    let mut h = hlc();
    let mut m: OrMap<(u32, u32), PnCounter> = OrMap::new();
    let e = m.increment((1, 2), 1, &mut h).unwrap_err();
    assert!(matches!(e, Error::Unencodable { .. }), "{e}");
    assert!(m.is_empty() && m.context().is_empty());
    // A value that is itself a map keyed by tuples is refused too.
    type ByPair = BTreeMap<(u8, u8), u8>;
    let mut n: OrMap<String, LwwRegister<ByPair>> = OrMap::new();
    let value: ByPair = [((1, 2), 3)].into_iter().collect();
    assert!(n.set("k".into(), value, &mut h).is_err());
    assert!(n.is_empty());
}

#[test]
fn a_nan_written_at_one_master_cannot_wedge_the_link() {
    let time = ManualClock::new(1_000);
    let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    let mut a = SyncEngine::new(
        a_id,
        OrMap::<String, MvRegister<f64>>::new(),
        time.clone(),
        Config::with_peers([b_id]),
    )
    .with_lease(MemoryLease::new())
    .unwrap();
    let mut b = SyncEngine::new(
        b_id,
        OrMap::<String, MvRegister<f64>>::new(),
        time,
        Config::with_peers([a_id]),
    );
    assert!(a
        .update(|m, hlc| m.write("x".into(), f64::NAN, hlc))
        .is_err());
    a.update(|m, hlc| m.write("y".into(), 2.5, hlc)).unwrap();
    let hello = a.sync_with(b_id).unwrap();
    b.receive_bytes(&hello.encode()).unwrap();
    assert_eq!(b.state(), a.state());
    // The writer still snapshots and restores.
    let json = serde_json::to_string(&a.snapshot().unwrap()).unwrap();
    let back: concord::sync::Snapshot<OrMap<String, MvRegister<f64>>> =
        serde_json::from_str(&json).unwrap();
    SyncEngine::restore(back, ManualClock::new(2_000), Config::with_peers([b_id])).unwrap();
}

#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
enum Region {
    UsEast,
    EuWest,
}

fn round_trips<K: concord::map::Key, T: concord::Data>(
    key: K,
    value: T,
) -> Result<(), TestCaseError> {
    let mut h = hlc();
    let mut m: OrMap<K, MvRegister<T>> = OrMap::new();
    match m.write(key, value, &mut h) {
        Ok(_) => {
            let json = serde_json::to_string(&m).unwrap();
            let back: OrMap<K, MvRegister<T>> = serde_json::from_str(&json).map_err(|e| {
                TestCaseError::fail(format!("accepted but does not decode: {e}: {json}"))
            })?;
            prop_assert_eq!(back, m);
        }
        Err(e) => {
            prop_assert!(matches!(e, Error::Unencodable { .. }), "{}", e);
            prop_assert!(m.is_empty());
        }
    }
    Ok(())
}

proptest! {
    /// Any float, any key of the kinds JSON has: accepted ones round-trip, refused ones
    /// change nothing.
    #[test]
    fn accepted_writes_round_trip(
        f in any::<f64>(),
        g in any::<f32>(),
        i in any::<i64>(),
        s in ".{0,12}",
        tuple in any::<(u8, u16)>(),
        region in prop_oneof![Just(Region::UsEast), Just(Region::EuWest)],
    ) {
        round_trips(s.clone(), f)?;
        round_trips(i, (g, s.clone()))?;
        round_trips(region.clone(), vec![f, f64::from(g)])?;
        round_trips(tuple, region)?;
        round_trips(s, BTreeMap::from([(i, f)]))?;
    }
}
