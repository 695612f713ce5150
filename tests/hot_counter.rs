//! A hot counter: one key incremented at three masters for a long time stays small
//! and cheap to write, because stable segments fold (`Config::fold_counters`, off by
//! default: a removal made after acknowledging the folded segments does not take the
//! fold away, see the last two tests).
//!
//! `CONCORD_COUNTER_OPS` sets the number of increments (default 30,000; the figure in
//! BENCHMARKS.md is from 1,000,000 in release, `--release -- --nocapture`).

mod support;

use std::time::Instant;

use concord::sync::{Config, SyncEngine};
use concord::{Conflict, ManualClock, OrMap, PnCounter, ReplicaId};

type Likes = OrMap<String, PnCounter>;
type Engine = SyncEngine<Likes, ManualClock>;

/// Delivers every message until all engines are idle and every write is acknowledged;
/// returns the conflicts the receivers reported, with the receiver's index.
fn settle(engines: &mut [Engine], time: &ManualClock) -> Vec<(usize, Conflict<String, PnCounter>)> {
    support::settle_dropping(engines, time, |_| false)
}

fn encoded_len(state: &Likes) -> usize {
    serde_json::to_vec(state).expect("encodes").len()
}

fn segments(state: &Likes) -> usize {
    state.get("likes").map_or(0, concord::DotStore::size)
}

/// Masters that fold their counters (`Config::fold_counters`, off by default).
fn masters(n: u128, time: &ManualClock) -> Vec<Engine> {
    masters_with(n, time, |c| c.fold_counters(true))
}

fn masters_with(n: u128, time: &ManualClock, tune: impl Fn(Config) -> Config) -> Vec<Engine> {
    let ids: Vec<ReplicaId> = (1..=n).map(ReplicaId::from_u128).collect();
    ids.iter()
        .map(|&id| {
            let peers = ids.iter().copied().filter(|&p| p != id);
            let config = tune(Config::with_peers(peers));
            SyncEngine::new(id, Likes::new(), time.clone(), config)
        })
        .collect()
}

#[test]
fn a_restored_state_folds_its_leftover_segments_without_a_new_write() {
    let time = ManualClock::new(1_700_000_000_000);
    let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    // A state saved before its segments were folded (say, by an older release).
    let mut saved = Likes::new();
    let mut hlc = concord::Hlc::new(a_id, time.clone());
    for _ in 0..20 {
        saved
            .apply("likes".into(), &mut hlc, |c, op| c.add(op, 1))
            .unwrap();
    }
    assert_eq!(segments(&saved), 20);
    let a_config = Config::with_peers([b_id])
        .incarnation(a_id)
        .fold_counters(true);
    let mut engines = vec![
        SyncEngine::new(a_id, saved, time.clone(), a_config),
        SyncEngine::new(
            b_id,
            Likes::new(),
            time.clone(),
            Config::with_peers([a_id]).fold_counters(true),
        ),
    ];
    settle(&mut engines, &time);
    for e in &engines {
        assert_eq!(e.state().count("likes"), 20);
        assert_eq!(segments(e.state()), 1, "{:?}", e.state());
    }
}

#[test]
fn folding_is_off_by_default() {
    let time = ManualClock::new(1_700_000_000_000);
    let mut engines = masters_with(2, &time, |c| c);
    for round in 0..10 {
        for _ in 0..10 {
            engines[round % 2]
                .update(|m, hlc| m.increment("likes".into(), 1, hlc))
                .unwrap();
        }
        settle(&mut engines, &time);
    }
    assert_eq!(engines[1].state().count("likes"), 100);
    assert_eq!(segments(engines[1].state()), 100, "a segment per update");
}

#[test]
fn a_counter_only_one_master_writes_is_never_reported_as_a_conflict() {
    let time = ManualClock::new(1_700_000_000_000);
    let mut engines = masters(3, &time);
    let mut reports = Vec::new();
    for _session in 0..10 {
        for _ in 0..5 {
            engines[0]
                .update(|m, hlc| m.increment("likes".into(), 1, hlc))
                .unwrap();
            time.advance(1);
        }
        reports.extend(settle(&mut engines, &time));
    }
    assert_eq!(engines[2].state().count("likes"), 50);
    assert!(reports.is_empty(), "{reports:?}");

    // Concurrent increments at every master add up; none is a conflict either.
    for (i, e) in engines.iter_mut().enumerate() {
        e.update(|m, hlc| m.increment("likes".into(), i as i64 + 1, hlc))
            .unwrap();
    }
    assert!(settle(&mut engines, &time).is_empty());
    assert_eq!(engines[1].state().count("likes"), 56);
}

#[test]
fn a_removal_racing_an_increment_is_reported_as_delete_vs_update() {
    let time = ManualClock::new(1_700_000_000_000);
    let mut engines = masters(2, &time);
    engines[0]
        .update(|m, hlc| m.increment("espresso".into(), 3, hlc))
        .unwrap();
    settle(&mut engines, &time);
    // Without a message in between: A removes the line, B adds one more.
    engines[0]
        .update(|m, hlc| m.remove("espresso", hlc))
        .unwrap();
    engines[1]
        .update(|m, hlc| m.increment("espresso".into(), 1, hlc))
        .unwrap();
    let reports = settle(&mut engines, &time);
    for e in &engines {
        assert_eq!(e.state().count("espresso"), 1, "the update survives, alone");
    }
    // B, where the removal met the increment it had not seen, reports it.
    let removals: Vec<_> = reports.iter().filter(|(_, c)| c.is_removal()).collect();
    assert_eq!(removals.len(), 1, "{reports:?}");
    let (at, c) = removals[0];
    assert_eq!(*at, 1);
    assert_eq!(c.key, "espresso");
    assert_eq!(c.ours.value(), 4);
    assert_eq!(c.resolved.value(), 1);
}

#[test]
fn a_million_increments_fold_to_a_small_state() {
    let total: u64 = std::env::var("CONCORD_COUNTER_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let time = ManualClock::new(1_700_000_000_000);
    let mut engines = masters(3, &time);

    let mut done = 0u64;
    let mut max_segments = 0;
    let mut window = Instant::now();
    let mut window_start = 0u64;
    let mut checkpoints = vec![1_000u64, 100_000, 1_000_000];
    checkpoints.retain(|&c| c <= total);
    while done < total {
        let writer = ((done / 100) % 3) as usize;
        for _ in 0..100.min(total - done) {
            engines[writer]
                .update(|m, hlc| m.increment("likes".into(), 1, hlc))
                .expect("write");
            done += 1;
            time.advance(1);
        }
        settle(&mut engines, &time);
        max_segments = max_segments.max(segments(engines[0].state()));
        if checkpoints.first() == Some(&done) {
            let per_op = window.elapsed() / (done - window_start) as u32;
            println!(
                "{done} increments: {per_op:?} per increment (incl. sync), {} segments, {} B state",
                segments(engines[0].state()),
                encoded_len(engines[0].state())
            );
            checkpoints.remove(0);
            window = Instant::now();
            window_start = done;
        }
    }
    for e in &engines {
        assert_eq!(e.state().count("likes"), total as i64);
    }
    let bytes = encoded_len(engines[0].state());
    println!(
        "after {total}: {} segments (at most {max_segments} on the way), {bytes} B state",
        segments(engines[0].state())
    );
    // One segment per master once everything is acknowledged, whatever the count.
    assert!(
        segments(engines[0].state()) <= 3,
        "{:?}",
        engines[0].state()
    );
    assert!(bytes < 1024, "state of {bytes} B");
    // Bounded on the way too: what one round of 100 writes leaves, plus the folded.
    assert!(max_segments <= 110, "{max_segments} segments on the way");
}

/// A peer catching up in chunks gets a fold's removal of the folded segments in the
/// same chunk as the fold: its reading never dips, and nothing is reported.
#[test]
fn a_chunked_catch_up_never_shows_a_fold_without_its_segment() {
    let time = ManualClock::new(1_700_000_000_000);
    let mut engines = masters_with(2, &time, |c| c.max_message_bytes(1024).fold_counters(true));
    let others = |e: &mut Engine| {
        for i in 0..200 {
            e.update(|m, hlc| m.increment(format!("other-key-{i:04}"), 1, hlc))
                .unwrap();
        }
    };
    others(&mut engines[0]);
    settle(&mut engines, &time);
    for _ in 0..2 {
        engines[0]
            .update(|m, hlc| m.increment("k".into(), 1, hlc))
            .unwrap();
        settle(&mut engines, &time);
    }
    engines[1]
        .update(|m, hlc| m.increment("k".into(), 100, hlc))
        .unwrap();
    settle(&mut engines, &time);
    // B away (A's messages lost): A writes many other keys, then k again, folding its
    // earlier segments (beside this write's own segment, which is not folded).
    others(&mut engines[0]);
    engines[0]
        .update(|m, hlc| m.increment("k".into(), 1, hlc))
        .unwrap();
    while engines[0].poll_transmit().is_some() {}
    let k_segments = engines[0]
        .state()
        .get("k")
        .map_or(0, concord::DotStore::size);
    assert_eq!(
        k_segments, 3,
        "A folded its earlier segments: the fold, this write's, and B's"
    );

    // Back: one message at a time, watching B's reading of k.
    let mut readings = vec![engines[1].state().count("k")];
    for _ in 0..2_000 {
        time.advance(100);
        for e in engines.iter_mut() {
            if e.poll_timeout().is_some_and(|at| at <= time.now()) {
                e.handle_timeout();
            }
        }
        for i in 0..2 {
            while let Some(t) = engines[i].poll_transmit() {
                let got = engines[1 - i].handle_bytes(&t.bytes).unwrap();
                assert!(got.conflicts.is_empty(), "{:?}", got.conflicts);
                let r = engines[1].state().count("k");
                if readings.last() != Some(&r) {
                    readings.push(r);
                }
            }
        }
    }
    assert_eq!(readings, [102, 103], "B's readings of k");
    assert_eq!(engines[0].state(), engines[1].state());
}

#[test]
fn folding_never_changes_a_value_near_the_i64_bounds() {
    let time = ManualClock::new(1_700_000_000_000);
    let mut engines = masters(2, &time);
    engines[1]
        .update(|m, hlc| m.increment("likes".into(), -100, hlc))
        .unwrap();
    engines[0]
        .update(|m, hlc| m.increment("likes".into(), i64::MAX, hlc))
        .unwrap();
    settle(&mut engines, &time);
    // A's own segments now sum past i64::MAX; with B's -100 the value still fits.
    for _ in 0..3 {
        engines[0]
            .update(|m, hlc| m.increment("likes".into(), 5, hlc))
            .unwrap();
        settle(&mut engines, &time);
    }
    for e in &engines {
        assert_eq!(e.state().count("likes"), i64::MAX - 85);
    }
    // And folding resumes once the sum fits again.
    engines[0]
        .update(|m, hlc| m.increment("likes".into(), -100, hlc))
        .unwrap();
    settle(&mut engines, &time);
    engines[0]
        .update(|m, hlc| m.increment("likes".into(), 1, hlc))
        .unwrap();
    settle(&mut engines, &time);
    for e in &engines {
        assert_eq!(e.state().count("likes"), i64::MAX - 184);
        assert!(segments(e.state()) <= 3, "{}", segments(e.state()));
    }
}

#[test]
fn segments_wait_for_a_peer_that_is_down_and_fold_once_it_is_back() {
    let time = ManualClock::new(1_700_000_000_000);
    let mut engines = masters(3, &time);
    let down = engines[2].node();
    // C is unreachable: everything to or from it is lost while A increments.
    for round in 0..10 {
        for _ in 0..100 {
            engines[0]
                .update(|m, hlc| m.increment("likes".into(), 1, hlc))
                .unwrap();
        }
        for _ in 0..50 {
            let mut busy = false;
            for i in 0..2 {
                while let Some(t) = engines[i].poll_transmit() {
                    busy = true;
                    if t.to == down {
                        continue;
                    }
                    let to = engines.iter().position(|e| e.node() == t.to).unwrap();
                    let _ = engines[to].handle_bytes(&t.bytes).expect("valid message");
                }
            }
            while engines[2].poll_transmit().is_some() {}
            if !busy {
                break;
            }
        }
        time.advance(10);
        assert_eq!(engines[1].state().count("likes"), (round + 1) * 100);
    }
    // Nothing folds without C's acknowledgement: a segment per increment.
    assert!(
        segments(engines[0].state()) >= 1_000,
        "{}",
        segments(engines[0].state())
    );
    // C is back: it catches up, acknowledges, and A folds.
    settle(&mut engines, &time);
    engines[0]
        .update(|m, hlc| m.increment("likes".into(), 1, hlc))
        .unwrap();
    settle(&mut engines, &time);
    for e in &engines {
        assert_eq!(e.state().count("likes"), 1_001);
        assert!(segments(e.state()) <= 3, "{}", segments(e.state()));
    }
}

/// The user at A sees the counter, removes it; B folds the segments A acknowledged
/// before A's removal reaches it. Returns the count both masters settle on.
fn remove_after_acknowledging(fold: bool) -> i64 {
    let time = ManualClock::new(1_700_000_000_000);
    let mut engines = masters_with(2, &time, |c| c.fold_counters(fold));
    settle(&mut engines, &time);
    for _ in 0..2 {
        engines[1]
            .update(|m, hlc| m.increment("espresso".into(), 1, hlc))
            .unwrap();
    }
    // B's messages reach A; A's acknowledgements are held back for a moment.
    let mut held = Vec::new();
    for _ in 0..50 {
        while let Some(t) = engines[1].poll_transmit() {
            let _ = engines[0].handle_bytes(&t.bytes).expect("valid message");
        }
        while let Some(t) = engines[0].poll_transmit() {
            held.push(t);
        }
        if engines[0].state().count("espresso") == 2 {
            break;
        }
        time.advance(10);
        for e in engines.iter_mut() {
            if e.poll_timeout().is_some_and(|at| at <= time.now()) {
                e.handle_timeout();
            }
        }
    }
    assert_eq!(engines[0].state().count("espresso"), 2);
    engines[0]
        .update(|m, hlc| m.remove("espresso", hlc))
        .unwrap();
    let mut removal = Vec::new();
    while let Some(t) = engines[0].poll_transmit() {
        removal.push(t);
    }
    // The acknowledgements reach B first (B may fold), then the removal.
    for t in held.into_iter().chain(removal) {
        let _ = engines[1].handle_bytes(&t.bytes).expect("valid message");
    }
    settle(&mut engines, &time);
    assert_eq!(engines[0].state(), engines[1].state());
    engines[0].state().count("espresso")
}

#[test]
fn without_folding_a_removal_after_acknowledging_holds() {
    assert_eq!(remove_after_acknowledging(false), 0);
}

/// The fold B made of the segments A had acknowledged names the newest of them, which
/// A's later removal holds dead: the removal takes the fold too.
#[test]
fn with_folding_a_removal_after_acknowledging_holds() {
    assert_eq!(remove_after_acknowledging(true), 0);
}

/// A counter far larger than a message (folding off, its default: 2,000 unfolded
/// segments, about 20 KB, under a 1 KiB message limit) reaches a peer that joins
/// late, in chunks that each hold part of its segments: every message stays within
/// the limit, the peer refuses none, and it ends with the same total.
#[test]
fn a_counter_larger_than_a_message_reaches_a_late_peer_in_pieces() {
    let time = ManualClock::new(1_700_000_000_000);
    let mut engines = masters_with(2, &time, |c| c.max_message_bytes(1024));
    for _ in 0..2_000 {
        engines[0]
            .update(|m, hlc| m.increment("likes".into(), 1, hlc))
            .unwrap();
    }
    assert_eq!(segments(engines[0].state()), 2_000);
    assert!(encoded_len(engines[0].state()) > 20 * 1024);
    let mut largest = 0;
    let mut refused = 0;
    for _ in 0..20_000 {
        time.advance(100);
        for e in engines.iter_mut() {
            if e.poll_timeout().is_some_and(|at| at <= time.now()) {
                e.handle_timeout();
            }
        }
        let mut busy = false;
        for i in 0..2 {
            while let Some(t) = engines[i].poll_transmit() {
                busy = true;
                largest = largest.max(t.bytes.len());
                if engines[1 - i].handle_bytes(&t.bytes).is_err() {
                    refused += 1;
                }
            }
        }
        if !busy && engines[1].state().count("likes") == 2_000 {
            break;
        }
    }
    assert_eq!(
        refused, 0,
        "messages refused; the largest was {largest} bytes"
    );
    assert!(largest <= 1024, "a message of {largest} bytes");
    assert_eq!(engines[1].state().count("likes"), 2_000);
    assert_eq!(engines[1].state(), engines[0].state());
}

/// A fold of a fold: U folds its first two increments into G, then G and a third
/// increment into F. R holds G. A catch-up in pieces from U, which cannot tell what R
/// has seen and names every dead dot again, must not name the dot G folded dead
/// without F: R would take that for a removal of G, and then refuse F, which folded
/// G (fuzz input `fold-2`). Checked before and after U prunes what every peer has
/// seen, and after U restarts from its state.
#[test]
fn a_fold_of_a_fold_reaches_a_peer_holding_the_first_fold_in_pieces() {
    use concord::{ChunkCursor, Crdt, Hlc, Resolver};
    for (prune, restore) in [(false, false), (true, false), (false, true)] {
        let time = ManualClock::new(1_700_000_000_000);
        let mut hlc = Hlc::new(ReplicaId::from_u128(1), time.clone());
        let mut u = Likes::new();
        u.increment("likes".into(), 1, &mut hlc).unwrap();
        u.increment("likes".into(), 1, &mut hlc).unwrap();
        for i in 0..8 {
            u.increment(format!("other-{i}"), 1, &mut hlc).unwrap();
        }
        let first_two = u.context().clone();
        u.increment("likes".into(), 1, &mut hlc).unwrap();
        assert!(u.fold_stable(&first_two, &mut hlc).unwrap(), "G");
        let mut r = Likes::new();
        r.merge(u.clone());
        assert_eq!(
            (segments(&r), r.count("likes")),
            (2, 3),
            "R holds G and one"
        );
        let all = u.context().clone();
        assert!(u.fold_stable(&all, &mut hlc).unwrap(), "F");
        assert_eq!((segments(&u), u.count("likes")), (1, 3), "U holds F alone");
        if prune {
            // What every peer has seen: R's context, which holds G and not F.
            u.prune(&r.context().clone());
        }
        if restore {
            u = serde_json::from_slice(&serde_json::to_vec(&u).unwrap()).unwrap();
        }
        let (seen, upto) = (concord::CausalContext::new(), u.context().clone());
        let mut cursor = ChunkCursor::default();
        let mut pieces = 0;
        while !cursor.is_done() && pieces < 1_000 {
            r.merge(u.delta_chunk(&seen, &upto, &mut cursor, 1));
            pieces += 1;
        }
        assert!(cursor.is_done(), "the catch-up ends");
        assert_eq!(
            r.count("likes"),
            3,
            "prune {prune}: R's reading after {pieces} pieces"
        );
        assert_eq!(r, u, "prune {prune}");
    }
}
