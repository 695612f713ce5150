use super::*;
use crate::hlc::ManualClock;

type Cart = OrMap<String, PnCounter>;

fn hlc(n: u128) -> Hlc<ManualClock> {
    Hlc::new(ReplicaId::from_u128(n), ManualClock::new(1_000))
}

fn k(s: &str) -> String {
    s.to_string()
}

#[test]
fn update_wins_over_concurrent_remove_without_resurrection() {
    let (mut ha, mut hb) = (hlc(1), hlc(2));
    let mut a = Cart::new();
    a.increment(k("x"), 5, &mut ha).unwrap();
    let mut b = a.clone();
    b.increment(k("x"), 2, &mut hb).unwrap(); // b: 7, seen by a below
    a.merge(b.clone());
    a.remove(&k("x"), &mut ha).unwrap();
    b.increment(k("x"), 1, &mut hb).unwrap();
    let mut a2 = a.clone();
    a2.merge(b.clone());
    b.merge(a.clone());
    assert_eq!(a2, b);
    assert_eq!(a2.count(&k("x")), 1);
}

#[test]
fn re_add_after_remove() {
    let mut h = hlc(1);
    let mut m: OrMap<String, LwwRegister<u32>> = OrMap::new();
    m.write(k("a"), 1, &mut h).unwrap();
    m.remove(&k("a"), &mut h).unwrap();
    assert!(m.get(&k("a")).is_none());
    m.write(k("a"), 2, &mut h).unwrap();
    assert_eq!(m.value(&k("a")), Some(&2));
}

#[test]
fn iter_walks_storage_order_and_iter_sorted_key_order() {
    let mut h = hlc(1);
    let mut m = Cart::new();
    for key in ["d", "b", "a", "c"] {
        m.increment(k(key), 1, &mut h).unwrap();
    }
    fn walk(m: &Cart) -> Vec<&str> {
        m.iter().map(|(k, _)| k.as_str()).collect()
    }
    assert_eq!(walk(&m), ["d", "b", "a", "c"]);
    // A removal moves the last entry into the hole.
    m.remove("b", &mut h).unwrap();
    assert_eq!(walk(&m), ["d", "c", "a"]);
    assert_eq!(m.keys().collect::<Vec<_>>(), ["d", "c", "a"]);
    assert_eq!((&m).into_iter().len(), 3);
    let sorted: Vec<&str> = m.iter_sorted().map(|(k, _)| k.as_str()).collect();
    assert_eq!(sorted, ["a", "c", "d"]);
    // Debug output is canonical: key order.
    assert!(
        format!("{m:?}").starts_with(r#"OrMap { entries: {"a": "#),
        "{m:?}"
    );
}

#[test]
fn nested_remove_keeps_only_concurrent_inner_writes() {
    let (mut ha, mut hb) = (hlc(1), hlc(2));
    type Doc = OrMap<String, OrMap<String, LwwRegister<u32>>>;
    let mut a = Doc::new();
    a.update(k("user"), &mut ha, |m, op| {
        m.update_in(op, k("name"), |r, op| r.assign(op, 1));
        m.update_in(op, k("age"), |r, op| r.assign(op, 2));
    })
    .unwrap();
    let mut b = a.clone();
    a.remove(&k("user"), &mut ha).unwrap();
    b.update(k("user"), &mut hb, |m, op| {
        m.update_in(op, k("email"), |r, op| r.assign(op, 3))
    })
    .unwrap();
    a.merge(b.clone());
    let user = a.get(&k("user")).unwrap();
    assert_eq!(user.keys().cloned().collect::<Vec<_>>(), vec![k("email")]);
}

#[test]
fn delta_since_carries_overwrites_and_removals() {
    let (mut ha, mut hb) = (hlc(1), hlc(2));
    let mut a: OrMap<String, MvRegister<u32>> = OrMap::new();
    for i in 0..20 {
        a.write(format!("k{i}"), i, &mut ha).unwrap();
    }
    let mut b = OrMap::new();
    b.merge(a.clone());
    let b_clock = b.context().clock();
    a.write(k("k1"), 100, &mut ha).unwrap();
    a.remove(&k("k2"), &mut ha).unwrap();
    b.write(k("k3"), 300, &mut hb).unwrap();
    let delta = a.delta_since(&b_clock);
    assert_eq!(delta.len(), 1, "only k1 changed: {delta:?}");
    let mut via_delta = b.clone();
    via_delta.merge(delta);
    let mut via_full = b.clone();
    via_full.merge(a.clone());
    assert_eq!(via_delta, via_full);
    assert_eq!(
        via_delta
            .get(&k("k1"))
            .unwrap()
            .values()
            .collect::<Vec<_>>(),
        vec![&100]
    );
    assert!(via_delta.get(&k("k2")).is_none());
}

#[test]
fn forwarded_overwrite_reaches_a_third_replica() {
    // A writes, C gets it; B overwrites; M learns B's overwrite and forwards to C.
    let (mut ha, mut hb) = (hlc(1), hlc(2));
    let mut a: OrMap<String, MvRegister<u32>> = OrMap::new();
    a.write(k("x"), 1, &mut ha).unwrap();
    let mut b = a.clone();
    let mut c = a.clone();
    let mut m: OrMap<String, MvRegister<u32>> = OrMap::new();
    let overwrite = b.write(k("x"), 2, &mut hb).unwrap();
    m.merge(overwrite);
    let delta = m.delta_since(&c.context().clock());
    c.merge(delta);
    assert_eq!(
        c.get(&k("x")).unwrap().values().collect::<Vec<_>>(),
        vec![&2]
    );
}

#[test]
fn json_round_trip_and_sizes() {
    let mut h = hlc(1);
    let mut m: OrMap<String, MvRegister<String>> = OrMap::new();
    for i in 0..100 {
        m.write(format!("key-{i:06}"), format!("value-{i:06}"), &mut h)
            .unwrap();
    }
    let json = serde_json::to_string(&m).unwrap();
    let back: OrMap<String, MvRegister<String>> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m);
    let floor: IndexMap<String, String> = (0..100)
        .map(|i| (format!("key-{i:06}"), format!("value-{i:06}")))
        .collect();
    let floor_len = serde_json::to_string(&floor).unwrap().len();
    assert!(
        json.len() < floor_len * 2,
        "{} vs {}",
        json.len(),
        floor_len
    );
}
