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
        l.write("v".into(), vec![0.5, f32::NAN], &mut h),
        Err(Error::Unencodable { .. })
    ));
    assert!(l.is_empty());
    let mut reg = MvRegister::new();
    assert!(reg.write(Some(f64::NAN), &mut h).is_err());
    assert_eq!(reg.values().count(), 0);
    let mut lww = LwwRegister::new();
    assert!(lww.write((1u8, f64::INFINITY), &mut h).is_err());
    assert!(lww.value().is_none());
}

#[test]
fn keys_of_any_shape_are_taken_but_not_a_nan() {
    let mut h = hlc();
    let mut m: OrMap<(u32, u32), PnCounter> = OrMap::new();
    m.increment((1, 2), 1, &mut h).unwrap();
    assert_eq!(m.count(&(1, 2)), 1);
    // A key holding a NaN or an infinity is refused before anything changes.
    let mut f: OrMap<(u8, Fl), PnCounter> = OrMap::new();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let e = f.increment((1, Fl(bad)), 1, &mut h).unwrap_err();
        assert!(matches!(e, Error::Unencodable { .. }), "{e}");
        assert!(f.is_empty() && f.context().is_empty());
    }
    f.increment((1, Fl(-0.5)), 1, &mut h).unwrap();
    let back: OrMap<(u8, Fl), PnCounter> =
        serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
    assert_eq!(back, f);
    // A value that is itself a map keyed by tuples is still refused: serde_json writes
    // a `BTreeMap` as an object, whose keys must be strings.
    type ByPair = BTreeMap<(u8, u8), u8>;
    let mut n: OrMap<String, LwwRegister<ByPair>> = OrMap::new();
    let value: ByPair = [((1, 2), 3)].into_iter().collect();
    assert!(n.write("k".into(), value, &mut h).is_err());
    assert!(n.is_empty());
}

/// String and integer keys keep the object form (older peers and the golden vectors
/// read it); any other key switches that map's entries to `[key, value]` pairs, and
/// both forms decode, strictly.
#[test]
fn entries_are_an_object_when_they_can_be_and_pairs_otherwise() {
    let mut h = hlc();
    let mut by_name: OrMap<String, PnCounter> = OrMap::new();
    by_name.increment("apples".into(), 1, &mut h).unwrap();
    let json = serde_json::to_value(&by_name).unwrap();
    assert!(json["e"].is_object(), "{json}");

    let mut by_id: OrMap<u64, PnCounter> = OrMap::new();
    by_id.increment(7, 1, &mut h).unwrap();
    assert!(serde_json::to_value(&by_id).unwrap()["e"].is_object());

    // An enum: unit variants are strings, a variant with data is not.
    let mut by_region: OrMap<Place, PnCounter> = OrMap::new();
    by_region.increment(Place::Home, 1, &mut h).unwrap();
    assert!(serde_json::to_value(&by_region).unwrap()["e"].is_object());
    by_region
        .increment(Place::Rack { row: 2, slot: 9 }, 1, &mut h)
        .unwrap();
    let json = serde_json::to_value(&by_region).unwrap();
    assert!(json["e"].is_array(), "{json}");
    let back: OrMap<Place, PnCounter> = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, by_region);
    // Back to keys that are all strings: the object form again.
    by_region
        .remove(&Place::Rack { row: 2, slot: 9 }, &mut h)
        .unwrap();
    assert!(serde_json::to_value(&by_region).unwrap()["e"].is_object());

    // A key twice is a decoding error in the pair form, as in the object form.
    let mut twice = json.clone();
    let first = twice["e"][0].clone();
    twice["e"].as_array_mut().unwrap().push(first);
    let e = serde_json::from_value::<OrMap<Place, PnCounter>>(twice).unwrap_err();
    assert!(e.to_string().contains("appears twice"), "{e}");
    // A pair of three is malformed.
    let mut long = json.clone();
    long["e"][0]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(1));
    assert!(serde_json::from_value::<OrMap<Place, PnCounter>>(long).is_err());
    // So is an entry list that is neither an object nor an array.
    let mut neither = json;
    neither["e"] = serde_json::json!(3);
    assert!(serde_json::from_value::<OrMap<Place, PnCounter>>(neither).is_err());
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
    let _ = b.receive_bytes(&hello.encode()).unwrap();
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

/// An enum key with unit and data variants.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
enum Place {
    Home,
    Rack { row: u8, slot: u16 },
    Named(String),
    Pair(i32, i32),
}

/// A struct key.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
struct Sku {
    vendor: u32,
    code: String,
    variant: Option<u8>,
}

/// A float that can be a key (ordered by `total_cmp`, equal by bits): NaN and
/// infinities must be refused at the write, every other value must come back bit for
/// bit.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct Fl(f64);

impl PartialEq for Fl {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Fl {}
impl PartialOrd for Fl {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Fl {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl std::hash::Hash for Fl {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.to_bits().hash(h);
    }
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
            prop_assert_eq!(&back, &m);
            // The binary form, and the JSON through the same reader.
            let binary = concord::wire::encode_snapshot(&m);
            for bytes in [binary.as_slice(), json.as_bytes()] {
                let back: OrMap<K, MvRegister<T>> =
                    concord::wire::decode_snapshot(bytes).map_err(|e| {
                        TestCaseError::fail(format!("accepted but does not decode: {e}"))
                    })?;
                prop_assert_eq!(&back, &m);
            }
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

/// A register value of several shapes, floats of every class included (NaN and
/// infinities must be refused at the write).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Val {
    F(f64),
    Fs(Vec<f32>),
    S(String),
    Both(i64, Option<f64>),
}

fn val() -> impl Strategy<Value = Val> {
    prop_oneof![
        any::<f64>().prop_map(Val::F),
        proptest::collection::vec(any::<f32>(), 0..3).prop_map(Val::Fs),
        ".{0,6}".prop_map(Val::S),
        (any::<i64>(), proptest::option::of(any::<f64>())).prop_map(|(i, f)| Val::Both(i, f)),
    ]
}

fn place() -> impl Strategy<Value = Place> {
    prop_oneof![
        Just(Place::Home),
        (0u8..3, 0u16..3).prop_map(|(row, slot)| Place::Rack { row, slot }),
        "[ab]{0,2}".prop_map(Place::Named),
        (-2i32..2, any::<i32>()).prop_map(|(a, b)| Place::Pair(a, b)),
    ]
}

fn sku() -> impl Strategy<Value = Sku> {
    (0u32..3, "[xy]{0,2}", proptest::option::of(0u8..2)).prop_map(|(vendor, code, variant)| Sku {
        vendor,
        code,
        variant,
    })
}

/// One write of the round-trip program: at master A or B, a write or a removal.
#[derive(Clone, Debug)]
struct Step<K> {
    at_b: bool,
    remove: bool,
    key: K,
    value: Val,
}

fn steps<K: std::fmt::Debug + Clone>(
    key: impl Strategy<Value = K>,
) -> impl Strategy<Value = Vec<Step<K>>> {
    proptest::collection::vec(
        (any::<bool>(), prop::bool::weighted(0.15), key, val()).prop_map(
            |(at_b, remove, key, value)| Step {
                at_b,
                remove,
                key,
                value,
            },
        ),
        1..14,
    )
}

type Reg<K> = OrMap<K, MvRegister<Val>>;

/// Two masters write (races included), then exchange one session through bytes: every
/// message decodes to itself, both converge, and both snapshots restore to the same
/// state. A write that is refused changes nothing.
fn through_the_engine<K: concord::map::Key>(program: Vec<Step<K>>) -> Result<(), TestCaseError> {
    use concord::sync::{Message, Snapshot};
    let time = ManualClock::new(1_000);
    let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    let mut a = SyncEngine::new(
        a_id,
        Reg::<K>::new(),
        time.clone(),
        Config::with_peers([b_id]),
    )
    .with_lease(MemoryLease::new())
    .unwrap();
    let mut b = SyncEngine::new(
        b_id,
        Reg::<K>::new(),
        time.clone(),
        Config::with_peers([a_id]),
    )
    .with_lease(MemoryLease::new())
    .unwrap();
    for step in program {
        let at = if step.at_b { &mut b } else { &mut a };
        let before = at.state().clone();
        let result = at.update(|m, hlc| {
            if step.remove {
                m.remove(&step.key, hlc)
            } else {
                m.write(step.key.clone(), step.value.clone(), hlc)
            }
        });
        if let Err(e) = result {
            prop_assert!(matches!(e, Error::Unencodable { .. }), "{}", e);
            prop_assert_eq!(at.state(), &before, "a refused write changed the state");
        }
        time.advance(1);
    }
    let check = |msg: &Message<Reg<K>>| -> Result<Vec<u8>, TestCaseError> {
        // Both forms of the message: what the engine sends (binary between two
        // version-4 engines, JSON in a first exchange) and its JSON rendering.
        let json = concord::wire::encode_json(msg);
        prop_assert_eq!(json[0], b'{');
        let bytes = msg.encode();
        for form in [&bytes, &json] {
            let back = Message::<Reg<K>>::decode(form, 1 << 24).map_err(|e| {
                TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(form)))
            })?;
            prop_assert_eq!(&back, msg);
            prop_assert_eq!(back.encode(), bytes.clone(), "re-encoding differs");
        }
        Ok(bytes)
    };
    let hello = a.sync_with(b_id).unwrap();
    let bytes = check(&hello)?;
    let answer = b
        .receive_bytes(&bytes)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .reply
        .expect("B answers a session");
    let bytes = check(&answer)?;
    let _ = a
        .receive_bytes(&bytes)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(a.state(), b.state());
    // Both now speak version 4: a second session travels in binary.
    let again = a.sync_with(b_id).unwrap();
    prop_assert_eq!(again.v, 4);
    let bytes = check(&again)?;
    prop_assert_eq!(bytes[0], concord::wire::BINARY_MESSAGE);
    let _ = b
        .receive_bytes(&bytes)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for engine in [&mut a, &mut b] {
        let snapshot = engine.snapshot().unwrap();
        let json = serde_json::to_string(&snapshot).unwrap();
        let back: Snapshot<Reg<K>> =
            serde_json::from_str(&json).map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
        prop_assert_eq!(&back, &snapshot);
        let binary: Snapshot<Reg<K>> =
            concord::wire::decode_snapshot(&concord::wire::encode_snapshot(&snapshot))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&binary, &snapshot);
        let restored =
            SyncEngine::restore(binary, time.clone(), Config::with_peers([a_id, b_id])).unwrap();
        prop_assert_eq!(restored.state(), engine.state());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Keys of every shape, values with floats of every class: through
    /// `Message::encode`/`decode`, the engine's receive path and snapshot/restore.
    #[test]
    fn string_keys_round_trip(p in steps("[a-c]{0,2}")) {
        through_the_engine(p)?;
    }

    #[test]
    fn integer_keys_round_trip(p in steps(prop_oneof![-3i64..3, any::<i64>()])) {
        through_the_engine(p)?;
    }

    #[test]
    fn tuple_keys_round_trip(p in steps((0u8..3, "[ab]{0,1}"))) {
        through_the_engine(p)?;
    }

    #[test]
    fn struct_keys_round_trip(p in steps(sku())) {
        through_the_engine(p)?;
    }

    #[test]
    fn enum_keys_round_trip(p in steps(place())) {
        through_the_engine(p)?;
    }

    #[test]
    fn float_keys_round_trip(p in steps((0u8..2, prop_oneof![
        Just(0.0), Just(-0.0), Just(f64::NAN), Just(f64::INFINITY), any::<f64>()
    ]).prop_map(|(i, f)| (i, Fl(f))))) {
        through_the_engine(p)?;
    }

    #[test]
    fn mixed_keys_round_trip(p in steps((place(), proptest::option::of(sku())))) {
        through_the_engine(p)?;
    }
}

/// The in-op setters check too: a value or nested key that cannot travel is not
/// stored, and the write that offered it fails with a typed error; what encodes still
/// encodes, so `encode` never meets a value it cannot write.
#[test]
fn in_op_setters_refuse_what_cannot_travel() {
    let mut h = hlc();
    let mut m: OrMap<String, LwwRegister<f64>> = OrMap::new();
    let e = m
        .update("x".into(), &mut h, |r, op| r.assign(op, f64::INFINITY))
        .unwrap_err();
    assert!(matches!(e, Error::Unencodable { .. }), "{e}");
    assert!(m.is_empty());
    type ByPair = BTreeMap<(u8, u8), u8>;
    let mut mv: OrMap<String, MvRegister<ByPair>> = OrMap::new();
    let bad: ByPair = [((1, 2), 3)].into_iter().collect();
    assert!(mv
        .apply("x".into(), &mut h, |r, op| r.assign(op, bad))
        .is_err());
    assert!(mv.is_empty());

    // A nested write: the good field stands, the refused ones are not stored.
    type Doc = OrMap<String, OrMap<Fl, LwwRegister<f64>>>;
    let mut doc = Doc::new();
    let e = doc
        .update("d".into(), &mut h, |inner, op| {
            inner.update_in(op, Fl(1.0), |r, op| r.assign(op, 1.5));
            inner.update_in(op, Fl(2.0), |r, op| r.assign(op, f64::NAN));
            inner.update_in(op, Fl(f64::NAN), |r, op| r.assign(op, 3.0));
        })
        .unwrap_err();
    assert!(matches!(e, Error::Unencodable { .. }), "{e}");
    let inner = doc.get("d").unwrap();
    assert_eq!(inner.len(), 1);
    assert_eq!(inner.value(&Fl(1.0)), Some(&1.5));
    let back: Doc = serde_json::from_str(&serde_json::to_string(&doc).unwrap()).unwrap();
    assert_eq!(back, doc);
}
