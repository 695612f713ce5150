//! A removal that reaches a peer through a chunked catch-up is passed on by that peer
//! like one it got in a delta: the chunk carries the removal's own dot with the dots
//! it removed, so the peer's removal log records the removal against a context that
//! holds its cause, and it tells the removal to a third replica whose context covers
//! the removed dot (before, that replica kept the removed key for good).

use concord::{
    ChunkCursor, Crdt, Hlc, Limits, ManualClock, MvRegister, OrMap, ReplicaId, Resolver,
};

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

/// A chunked catch-up that breaks right after the piece carrying a removal's note
/// (the note's dot is the removal's own) still removes: the piece carries the dots
/// the removal killed too. Before, they were left to a later piece of the log's pass;
/// the peer then acknowledged the removal's dot without them, and every later delta
/// or stream took that for the removal's acknowledgement, so the peer kept the
/// removed key for good (fuzz input `tests/fuzz-crashers/fold-3`, which needs no
/// folding: a reordered piece broke the stream there).
#[test]
fn a_stream_broken_after_a_removal_note_still_removes() {
    let time = ManualClock::new(1_700_000_000_000);
    let mut hs = Hlc::new(ReplicaId::from_u128(1), time.clone());
    let mut s = M::new();
    s.write("k".into(), 1, &mut hs).unwrap();
    s.write("other".into(), 2, &mut hs).unwrap();
    let mut r = M::new();
    r.merge(s.clone());
    s.remove("k", &mut hs).unwrap();
    assert_eq!(s.removal_notes().count(), 1);

    // The first piece (the note, on a budget of one item) arrives; the rest is lost.
    let (seen, upto) = (r.context().clone(), s.context().clone());
    let mut cursor = ChunkCursor::default();
    let first = s.delta_chunk(&seen, &upto, &mut cursor, 1);
    assert_eq!(first.removal_notes().count(), 1);
    r.merge(first);

    // Whatever the sender sends next, from what the peer now acknowledges.
    let mut by_delta = r.clone();
    by_delta.merge(s.delta_since_context(r.context()));
    let mut by_stream = r.clone();
    let (seen, upto) = (r.context().clone(), s.context().clone());
    let mut cursor = ChunkCursor::default();
    while !cursor.is_done() {
        by_stream.merge(s.delta_chunk(&seen, &upto, &mut cursor, 1));
    }
    for (how, m) in [
        ("the piece", &r),
        ("a delta", &by_delta),
        ("a stream", &by_stream),
    ] {
        assert!(!m.contains_key("k"), "after {how}: {m:?}");
        assert_eq!(m, &s, "after {how}");
    }
}

/// The same when the removal killed more than a piece holds: the note, the
/// removal's own dot and the dots it killed go in one piece, larger than the budget
/// (split, the peer would either drop the note, its dot being known, or log the
/// removal without its cause); a stream broken after any piece, or run to its end,
/// removes the key, and the peer keeps the note.
#[test]
fn a_removal_larger_than_a_piece_goes_whole_with_its_note() {
    let time = ManualClock::new(1_700_000_000_000);
    let mut s = M::new();
    for writer in 10..15 {
        let mut hlc = Hlc::new(ReplicaId::from_u128(writer), time.clone());
        let mut m = M::new();
        m.write("k".into(), writer as u32, &mut hlc).unwrap();
        s.merge(m);
    }
    let mut hs = Hlc::new(ReplicaId::from_u128(1), time.clone());
    s.write("other".into(), 2, &mut hs).unwrap();
    let r0 = s.clone();
    s.remove("k", &mut hs).unwrap();
    assert_eq!(s.pending_removals(), 5);

    for budget in [1, 3] {
        for broken_after in [1, 2, usize::MAX] {
            let mut r = r0.clone();
            let (seen, upto) = (r.context().clone(), s.context().clone());
            let mut cursor = ChunkCursor::default();
            let mut pieces = 0;
            while !cursor.is_done() && pieces < broken_after {
                let piece = s.delta_chunk(&seen, &upto, &mut cursor, budget);
                pieces += 1;
                r.merge(piece);
            }
            // Then a delta from what the peer acknowledges.
            r.merge(s.delta_since_context(r.context()));
            assert!(
                !r.contains_key("k"),
                "budget {budget}, {pieces} pieces: {r:?}"
            );
            assert_eq!(r, s, "budget {budget}, {pieces} pieces");
            assert_eq!(r.removal_notes().count(), 1, "the note arrived");
        }
    }
}

/// A stream from a replica that learned a key's history in one full state (its
/// removal log's floor covers an overwrite it never logged) to a peer below that
/// floor: the first piece carries a removal note and the dot it removed, which
/// completes the peer's cover of the floor. Broken there, the next delta took the
/// peer for one that knew every removal the floor forgot, and the peer kept the
/// overwritten value for good. Now a dot of the floor the peer lacks is held back
/// until every removed dot has gone (the property
/// `laws::mv_map::delta_since_a_clock_equals_full_merge` found it).
#[test]
fn a_stream_below_the_floor_broken_early_still_removes() {
    let time = ManualClock::new(1_700_000_000_000);
    let mut h1 = Hlc::new(ReplicaId::from_u128(1), time.clone());
    let mut h3 = Hlc::new(ReplicaId::from_u128(3), time.clone());
    let mut r1 = M::new();
    let first = r1.write("a".into(), 0, &mut h1).unwrap();
    let mut r2 = M::new();
    r2.merge(first);
    r1.write("a".into(), 0, &mut h1).unwrap();
    let mut r3 = M::new();
    r3.merge(r1.clone());
    r3.remove("a", &mut h3).unwrap();
    let mut want = r2.clone();
    want.merge(r3.clone());
    assert!(!want.contains_key("a"));

    broken_anywhere_then_a_delta(&r3, &r2, &want);
}

/// After a restart the removal log is empty and its floor is the whole context: a
/// peer that lacks only the removal is below the floor, and the removal's note (its
/// dot the last the peer lacked) would complete its cover in the first piece. Broken
/// there, the next delta took the peer for one that knew every removal the floor
/// forgot, and it kept the removed value for good.
#[test]
fn a_stream_after_a_restart_broken_early_still_removes() {
    let time = ManualClock::new(1_700_000_000_000);
    let mut h1 = Hlc::new(ReplicaId::from_u128(1), time.clone());
    let mut h3 = Hlc::new(ReplicaId::from_u128(3), time.clone());
    let mut r1 = M::new();
    r1.write("a".into(), 0, &mut h1).unwrap();
    r1.write("b".into(), 0, &mut h1).unwrap();
    let r2 = r1.clone();
    let mut r3 = r1.clone();
    r3.remove("a", &mut h3).unwrap();
    // The restart.
    let r3: M = concord::wire::decode_snapshot(&concord::wire::encode_snapshot(&r3)).unwrap();
    let mut want = r2.clone();
    want.merge(r3.clone());
    assert!(!want.contains_key("a"));

    broken_anywhere_then_a_delta(&r3, &r2, &want);
}

/// A removal's own dot can go early in a chunked catch-up, as the cause of another
/// removal (here a full state merged from the remover is logged as one removal whose
/// trigger holds both removals' dots): its note goes with it. Before, the note came
/// in a later piece, the peer dropped it as known (its dot already there) and never
/// reported the race of that removal with its own concurrent update of the key, nor
/// passed the note on.
#[test]
fn a_removal_note_goes_with_its_dot_sent_as_a_cause() {
    use concord::{Conflict, PnCounter};
    type C = OrMap<String, PnCounter>;
    let time = ManualClock::new(1_700_000_000_000);
    let mut h1 = Hlc::new(ReplicaId::from_u128(1), time.clone());
    let mut h2 = Hlc::new(ReplicaId::from_u128(2), time.clone());
    let mut r1 = C::new();
    let mut r2 = C::new();
    r2.increment("b".into(), -8, &mut h2).unwrap();
    r1.increment("a".into(), -8, &mut h1).unwrap();
    r1.increment("b".into(), -8, &mut h1).unwrap();
    r1.remove("a", &mut h1).unwrap();
    r1.increment("a".into(), -8, &mut h1).unwrap();
    r1.remove("b", &mut h1).unwrap();
    let mut r3 = C::new();
    r3.merge(r1.clone());

    // In one message, r2 is told that the removal of b raced its increment.
    let mut whole = r2.clone();
    let mut told: Vec<Conflict<String, PnCounter>> = Vec::new();
    whole
        .try_merge(
            r3.delta_since_context(r2.context()),
            &Limits::default(),
            &mut told,
        )
        .unwrap();
    assert_eq!(told.len(), 1);
    assert!(told[0].is_removal());

    // And in a stream of one-item pieces.
    let (seen, upto) = (r2.context().clone(), r3.context().clone());
    let mut cursor = ChunkCursor::default();
    let mut chunked = r2.clone();
    let mut reports: Vec<Conflict<String, PnCounter>> = Vec::new();
    while !cursor.is_done() {
        let piece = r3.delta_chunk(&seen, &upto, &mut cursor, 1);
        chunked
            .try_merge(piece, &Limits::default(), &mut reports)
            .unwrap();
    }
    assert_eq!(chunked, whole);
    assert_eq!(
        reports.iter().map(|c| &c.key).collect::<Vec<_>>(),
        ["b"],
        "{reports:?}"
    );
    assert_eq!(
        chunked.removal_notes().count(),
        2,
        "both notes held, to pass on"
    );
}

/// Each removal note goes once in a stream: the piece where the removal pass ends
/// and the removed dots begin (whose ranges hold the notes' dots) does not carry the
/// notes sent before again.
#[test]
fn each_note_goes_once_in_a_stream() {
    let time = ManualClock::new(1_700_000_000_000);
    let mut hs = Hlc::new(ReplicaId::from_u128(1), time.clone());
    let mut s = M::new();
    for i in 0..50 {
        s.write(format!("k{i:02}"), i, &mut hs).unwrap();
    }
    let r0 = s.clone();
    for i in 0..50 {
        s.remove(&format!("k{i:02}"), &mut hs).unwrap();
    }
    for budget in [1, 4, 16] {
        let (seen, upto) = (r0.context().clone(), s.context().clone());
        let mut cursor = ChunkCursor::default();
        let mut r = r0.clone();
        let mut notes = 0;
        while !cursor.is_done() {
            let piece = s.delta_chunk(&seen, &upto, &mut cursor, budget);
            notes += piece.removal_notes().count();
            r.try_merge(piece, &Limits::default(), &mut ())
                .expect("a valid piece");
        }
        assert_eq!(notes, 50, "budget {budget}");
        assert_eq!(r, s);
    }
}

/// Streams `from`'s catch-up to `to` on budgets of 1 and 2 items, breaks it after
/// each piece (each must validate) and finishes it with a delta: `to` must end as
/// `want`.
fn broken_anywhere_then_a_delta(from: &M, to: &M, want: &M) {
    for budget in [1, 2] {
        let (seen, upto) = (to.context().clone(), from.context().clone());
        let mut cursor = ChunkCursor::default();
        let mut pieces = Vec::new();
        while !cursor.is_done() {
            pieces.push(from.delta_chunk(&seen, &upto, &mut cursor, budget));
        }
        for k in 0..=pieces.len() {
            let mut got = to.clone();
            for piece in &pieces[..k] {
                got.try_merge(piece.clone(), &Limits::default(), &mut ())
                    .expect("a valid piece");
            }
            got.merge(from.delta_since_context(got.context()));
            assert_eq!(&got, want, "budget {budget}, broken after {k} pieces");
        }
    }
}
