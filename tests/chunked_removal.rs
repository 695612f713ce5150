//! A removal that reaches a peer through a chunked catch-up is passed on by that peer
//! like one it got in a delta: the chunk carries the removal's own dot with the dots
//! it removed, so the peer's removal log records the removal against a context that
//! holds its cause, and it tells the removal to a third replica whose context covers
//! the removed dot (before, that replica kept the removed key for good).

use concord::{ChunkCursor, Crdt, Hlc, ManualClock, MvRegister, OrMap, ReplicaId, Resolver};

type M = OrMap<String, MvRegister<u32>>;

#[test]
fn a_removal_relayed_after_a_chunked_catch_up_still_removes() {
    let time = ManualClock::new(1_700_000_000_000);
    let mut hs = Hlc::new(ReplicaId::from_u128(1), time.clone());
    let mut s = M::new();
    let mut r = M::new();
    s.write("k".into(), 1, &mut hs).unwrap();
    r.merge(s.clone());
    let c = r.clone();
    s.remove("k", &mut hs).unwrap();
    for i in 0..3 {
        s.write(format!("n{i}"), i, &mut hs).unwrap();
    }
    let (seen, upto) = (r.context().clone(), s.context().clone());
    let mut cursor = ChunkCursor::default();
    while !cursor.is_done() {
        r.merge(s.delta_chunk(&seen, &upto, &mut cursor, 1));
    }
    assert!(!r.contains_key("k"));
    let mut by_delta = c.clone();
    by_delta.merge(r.delta_since(&c.context().clock()));
    let mut by_state = c.clone();
    by_state.merge(r.clone());
    assert_eq!(by_delta, by_state);
    assert!(!by_delta.contains_key("k"));
}
