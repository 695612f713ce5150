//! Delete-vs-update races: a removal of a key that another master updated without
//! seeing it (an overwrite, an increment, a write into a nested map) is reported, by
//! the masters that held the update when the removal reached them, once each; and
//! what is not such a race is not: a removal followed by a fresh write, two overwrites
//! racing (an ordinary sibling race), relays and chunked catch-ups.

mod support;

use concord::sync::{Config, Message, Snapshot, SyncEngine};
use concord::{
    Conflict, Crdt, Dot, DotStore, Error, Hlc, Limits, LwwRegister, ManualClock, MvRegister, OrMap,
    PnCounter, ReplicaId, Resolver,
};

type Profiles = OrMap<String, MvRegister<String>>;
type Engine = SyncEngine<Profiles, ManualClock>;

const START_MS: u64 = 1_700_000_000_000;

fn id(n: u128) -> ReplicaId {
    ReplicaId::from_u128(n)
}

/// Masters 1..=n, each a peer of those `linked` says.
fn engines_linked<T: Crdt + Default>(
    n: u128,
    time: &ManualClock,
    linked: impl Fn(u128, u128) -> bool,
    config: impl Fn(Config) -> Config,
) -> Vec<SyncEngine<T, ManualClock>> {
    (1..=n)
        .map(|me| {
            let peers = (1..=n).filter(|&p| p != me && linked(me, p)).map(id);
            SyncEngine::new(
                id(me),
                T::default(),
                time.clone(),
                config(Config::with_peers(peers)),
            )
        })
        .collect()
}

fn masters(n: u128, time: &ManualClock) -> Vec<Engine> {
    engines_linked(n, time, |_, _| true, |c| c)
}

/// Writes `value` at `key`; returns the write's dot.
fn write(e: &mut Engine, key: &str, value: &str) -> Dot {
    e.update(|m, hlc| m.write(key.into(), value.into(), hlc))
        .expect("a write")
        .dot
        .expect("a dot")
}

/// Removes `key`; returns the removal's dot.
fn remove<V: DotStore>(e: &mut SyncEngine<OrMap<String, V>, ManualClock>, key: &str) -> Dot {
    e.update(|m, hlc| m.remove(key, hlc))
        .expect("a removal")
        .dot
        .expect("a dot")
}

type Reports<V> = Vec<(usize, Conflict<String, V>)>;

fn settle<T: Crdt<Key = String> + Default + PartialEq>(
    engines: &mut [SyncEngine<T, ManualClock>],
    time: &ManualClock,
) -> Reports<T::Value> {
    support::settle_dropping(engines, time, |_| false)
}

/// Delivers every message whose link `open` allows (dropping the others), firing
/// timers `rounds` times; returns the conflicts reported and how many chunked
/// messages went.
fn exchange<T: Crdt<Key = String>>(
    engines: &mut [SyncEngine<T, ManualClock>],
    time: &ManualClock,
    open: impl Fn(usize, usize) -> bool,
    rounds: usize,
) -> (Reports<T::Value>, usize) {
    let mut reports = Vec::new();
    let mut chunks = 0;
    let mut fired = 0;
    for _ in 0..100_000 {
        let mut busy = false;
        for i in 0..engines.len() {
            while let Some(t) = engines[i].poll_transmit() {
                let to = engines
                    .iter()
                    .position(|e| e.node() == t.to)
                    .expect("a known peer");
                if !open(i, to) {
                    continue;
                }
                busy = true;
                let msg = Message::<T>::decode(&t.bytes, usize::MAX).expect("decodes");
                chunks += msg.chunk.is_some() as usize;
                let received = engines[to].handle_bytes(&t.bytes).expect("valid message");
                reports.extend(received.conflicts.into_iter().map(|c| (to, c)));
            }
        }
        if busy {
            continue;
        }
        if fired == rounds {
            return (reports, chunks);
        }
        fired += 1;
        let next = engines
            .iter()
            .filter_map(|e| e.poll_timeout())
            .min()
            .expect("a pending timer");
        time.set(next.max(time.now()));
        for e in engines.iter_mut() {
            if e.poll_timeout().is_some_and(|at| at <= time.now()) {
                e.handle_timeout();
            }
        }
    }
    panic!("the engines never stopped sending");
}

fn removals<V: DotStore>(reports: &Reports<V>) -> Vec<&(usize, Conflict<String, V>)> {
    reports.iter().filter(|(_, c)| c.is_removal()).collect()
}

/// The receivers of the removal reports, sorted.
fn reporters<V: DotStore>(reports: &Reports<V>) -> Vec<usize> {
    let mut at: Vec<usize> = removals(reports).iter().map(|(i, _)| *i).collect();
    at.sort_unstable();
    at
}

fn values(reg: &MvRegister<String>) -> Vec<&str> {
    let mut v: Vec<&str> = reg.values().map(String::as_str).collect();
    v.sort_unstable();
    v
}

/// Every replica holds no removal note once everything is acknowledged: they are
/// released at causal stability.
fn assert_notes_released<V: DotStore>(engines: &[SyncEngine<OrMap<String, V>, ManualClock>]) {
    for e in engines {
        assert_eq!(e.state().removal_notes().count(), 0, "{:?}", e.node());
    }
}

#[test]
fn a_removal_followed_by_a_fresh_write_is_no_race() {
    let time = ManualClock::new(START_MS);
    let mut engines = masters(3, &time);
    write(&mut engines[0], "alice", "alice@old.example");
    support::settle_dropping(&mut engines, &time, |_| false);
    remove(&mut engines[0], "alice");
    support::settle_dropping(&mut engines, &time, |_| false);
    // B saw the removal, then wrote Alice again: sequential, nothing to report.
    write(&mut engines[1], "alice", "alice@new.example");
    let reports = support::settle_dropping(&mut engines, &time, |_| false);
    assert!(reports.is_empty(), "{reports:?}");
}

#[test]
fn an_overwrite_met_by_an_overwrite_is_a_sibling_race_not_a_removal() {
    let time = ManualClock::new(START_MS);
    let mut engines = masters(3, &time);
    write(&mut engines[0], "alice", "alice@old.example");
    support::settle_dropping(&mut engines, &time, |_| false);
    write(&mut engines[0], "alice", "alice@a.example");
    write(&mut engines[1], "alice", "alice@b.example");
    let reports = support::settle_dropping(&mut engines, &time, |_| false);
    assert!(!reports.is_empty());
    assert!(reports.iter().all(|(_, c)| !c.is_removal()), "{reports:?}");
}

/// A removes Alice while B overwrites her, each unaware of the other; the remover's
/// messages go out first, so C learns of the removal before the overwrite.
#[test]
fn a_removal_racing_an_overwrite_is_reported_by_the_updater() {
    let time = ManualClock::new(START_MS);
    let mut engines = masters(3, &time);
    write(&mut engines[0], "alice", "alice@old.example");
    settle(&mut engines, &time);
    let removal = remove(&mut engines[0], "alice");
    let update = write(&mut engines[1], "alice", "alice@b.example");
    let reports = settle(&mut engines, &time);
    for e in &engines {
        assert_eq!(values(e.state().get("alice").unwrap()), ["alice@b.example"]);
    }
    // B held the overwrite when the removal arrived; A made the removal; C had the
    // removal before the overwrite reached it.
    assert_eq!(reporters(&reports), [1], "{reports:?}");
    let (_, c) = removals(&reports)[0];
    assert_eq!(c.key, "alice");
    assert_eq!(values(&c.ours), ["alice@b.example"]);
    assert_eq!(values(&c.resolved), ["alice@b.example"]);
    assert!(c.theirs.is_bottom());
    // The removal names itself, and had seen nothing of B's; B's value is its update.
    assert_eq!(c.theirs_clock.get(removal.replica()), removal.counter());
    assert_eq!(c.theirs_clock.get(update.replica()), 0);
    assert_eq!(c.ours_clock.get(update.replica()), update.counter());
    assert_notes_released(&engines);
}

/// The same race with the updater's messages out first: C holds the overwrite when
/// the removal reaches it, and reports it too.
#[test]
fn a_removal_arriving_after_the_update_is_reported_where_the_update_was() {
    let time = ManualClock::new(START_MS);
    let mut engines = masters(3, &time);
    write(&mut engines[0], "alice", "alice@old.example");
    settle(&mut engines, &time);
    // Index 0 (polled first) is now the updater, index 1 the remover.
    write(&mut engines[0], "alice", "alice@a.example");
    let removal = remove(&mut engines[1], "alice");
    let reports = settle(&mut engines, &time);
    for e in &engines {
        assert_eq!(values(e.state().get("alice").unwrap()), ["alice@a.example"]);
    }
    assert_eq!(reporters(&reports), [0, 2], "{reports:?}");
    for (_, c) in removals(&reports) {
        assert_eq!(c.key, "alice");
        assert_eq!(values(&c.resolved), ["alice@a.example"]);
        assert_eq!(c.theirs_clock.get(removal.replica()), removal.counter());
    }
}

#[test]
fn a_key_overwritten_twice_before_the_removal_arrives_is_reported_once() {
    let time = ManualClock::new(START_MS);
    let mut engines = masters(3, &time);
    write(&mut engines[0], "alice", "alice@old.example");
    settle(&mut engines, &time);
    remove(&mut engines[0], "alice");
    write(&mut engines[1], "alice", "alice@b1.example");
    write(&mut engines[1], "alice", "alice@b2.example");
    let reports = settle(&mut engines, &time);
    assert_eq!(reporters(&reports), [1], "{reports:?}");
    assert_eq!(
        values(&removals(&reports)[0].1.resolved),
        ["alice@b2.example"]
    );
    assert_eq!(
        engines[2].state().get("alice").map(values),
        Some(vec!["alice@b2.example"])
    );
}

/// Three masters: two remove the key while the third overwrites it; each removal
/// is a race of its own, reported once by the updater.
#[test]
fn two_removals_racing_one_update_are_two_reports() {
    let time = ManualClock::new(START_MS);
    let mut engines = masters(3, &time);
    write(&mut engines[0], "alice", "alice@old.example");
    settle(&mut engines, &time);
    let by_a = remove(&mut engines[0], "alice");
    let by_b = remove(&mut engines[1], "alice");
    write(&mut engines[2], "alice", "alice@c.example");
    let reports = settle(&mut engines, &time);
    assert_eq!(reporters(&reports), [2, 2], "{reports:?}");
    let mut named: Vec<Dot> = removals(&reports)
        .iter()
        .map(|(_, c)| {
            let r = [by_a, by_b]
                .into_iter()
                .find(|d| c.theirs_clock.get(d.replica()) == d.counter())
                .expect("a report names its removal");
            // ... and had not seen the other removal.
            let other = if r == by_a { by_b } else { by_a };
            assert!(c.theirs_clock.get(other.replica()) < other.counter());
            r
        })
        .collect();
    named.sort_unstable();
    let mut both = vec![by_a, by_b];
    both.sort_unstable();
    assert_eq!(named, both);
}

#[test]
fn a_removal_racing_an_increment_is_reported() {
    let time = ManualClock::new(START_MS);
    let mut engines: Vec<SyncEngine<OrMap<String, PnCounter>, ManualClock>> =
        engines_linked(3, &time, |_, _| true, |c| c);
    engines[0]
        .update(|m, hlc| m.increment("espresso".into(), 3, hlc))
        .unwrap();
    settle(&mut engines, &time);
    remove(&mut engines[0], "espresso");
    engines[1]
        .update(|m, hlc| m.increment("espresso".into(), 1, hlc))
        .unwrap();
    let reports = settle(&mut engines, &time);
    for e in &engines {
        assert_eq!(
            e.state().count("espresso"),
            1,
            "the increment survives, alone"
        );
    }
    assert_eq!(reporters(&reports), [1], "{reports:?}");
    let (_, c) = removals(&reports)[0];
    assert_eq!((c.ours.value(), c.resolved.value()), (4, 1));
    assert_notes_released(&engines);
}

#[test]
fn a_removal_racing_a_write_into_a_nested_map_is_reported() {
    type Users = OrMap<String, OrMap<String, LwwRegister<String>>>;
    let time = ManualClock::new(START_MS);
    let mut engines: Vec<SyncEngine<Users, ManualClock>> =
        engines_linked(3, &time, |_, _| true, |c| c);
    engines[0]
        .update(|m, hlc| {
            m.update("alice".into(), hlc, |fields, op| {
                fields.update_in(op, "name".into(), |r, op| r.assign(op, "Alice".into()));
                fields.update_in(op, "city".into(), |r, op| r.assign(op, "Lisbon".into()));
            })
        })
        .unwrap();
    settle(&mut engines, &time);
    remove(&mut engines[0], "alice");
    engines[1]
        .update(|m, hlc| {
            m.update("alice".into(), hlc, |fields, op| {
                fields.update_in(op, "city".into(), |r, op| r.assign(op, "Porto".into()));
            })
        })
        .unwrap();
    let reports = settle(&mut engines, &time);
    for e in &engines {
        let alice = e.state().get("alice").expect("the update survives");
        assert_eq!(alice.value("city").map(String::as_str), Some("Porto"));
        assert!(!alice.contains_key("name"), "the removal took the name");
    }
    assert_eq!(reporters(&reports), [1], "{reports:?}");
    let (_, c) = removals(&reports)[0];
    assert_eq!(c.ours.len(), 2);
    assert_eq!(c.resolved.len(), 1);
}

/// A line A - B - C: C learns of A's removal from B, which relays it.
#[test]
fn a_relayed_removal_is_reported_by_the_updater_behind_the_relay() {
    let time = ManualClock::new(START_MS);
    let line = |a: u128, b: u128| a.abs_diff(b) == 1;
    let mut engines: Vec<Engine> = engines_linked(3, &time, line, |c| c);
    write(&mut engines[0], "alice", "alice@old.example");
    settle(&mut engines, &time);
    remove(&mut engines[0], "alice");
    write(&mut engines[2], "alice", "alice@c.example");
    let reports = settle(&mut engines, &time);
    for e in &engines {
        assert_eq!(values(e.state().get("alice").unwrap()), ["alice@c.example"]);
    }
    // C (the updater) for sure; B, the relay, only if the overwrite reached it
    // first, which it does not here (A is polled before C).
    assert_eq!(reporters(&reports), [2], "{reports:?}");
    assert_notes_released(&engines);
}

/// Overwrites relayed along a line carry contexts that name dots the receiver
/// already holds overwritten: no removal report (a relayed delta's context omits
/// writes the receiver holds).
#[test]
fn relayed_overwrites_are_no_removal() {
    let time = ManualClock::new(START_MS);
    let line = |a: u128, b: u128| a.abs_diff(b) == 1;
    let mut engines: Vec<Engine> = engines_linked(3, &time, line, |c| c);
    write(&mut engines[0], "alice", "alice@old.example");
    settle(&mut engines, &time);
    write(&mut engines[2], "alice", "alice@c.example");
    write(&mut engines[0], "bob", "bob@a.example");
    settle(&mut engines, &time);
    write(&mut engines[1], "alice", "alice@b.example");
    write(&mut engines[2], "alice", "alice@c2.example");
    write(&mut engines[0], "alice", "alice@a.example");
    let reports = settle(&mut engines, &time);
    assert!(removals(&reports).is_empty(), "{reports:?}");
}

/// C is cut off while A removes one key that C updates and another that B then
/// writes afresh; C catches up in chunks (small messages) and reports the one race.
#[test]
fn a_chunked_catch_up_reports_the_race_and_nothing_else() {
    let time = ManualClock::new(START_MS);
    let small = |c: Config| c.max_message_bytes(4 << 10);
    let mut engines: Vec<Engine> = engines_linked(3, &time, |_, _| true, small);
    for i in 0..200 {
        write(&mut engines[0], &format!("user{i:03}"), "old@example");
    }
    settle(&mut engines, &time);
    let cut = |from: usize, to: usize| from != 2 && to != 2;
    // C updates user000, unaware of its removal; user001 is removed and written
    // again afresh; many more keys change meanwhile.
    write(&mut engines[2], "user000", "c@example");
    remove(&mut engines[0], "user000");
    remove(&mut engines[0], "user001");
    exchange(&mut engines, &time, cut, 5);
    write(&mut engines[1], "user001", "fresh@example");
    for i in 2..200 {
        write(&mut engines[1], &format!("user{i:03}"), "new@example");
    }
    let (reports, _) = exchange(&mut engines, &time, cut, 5);
    assert!(reports.is_empty(), "{reports:?}");
    let (mut reports, chunks) = exchange(&mut engines, &time, |_, _| true, 30);
    assert!(chunks > 1, "the catch-up was not chunked");
    reports.extend(settle(&mut engines, &time));
    assert_eq!(reporters(&reports), [2], "{reports:?}");
    assert_eq!(removals(&reports)[0].1.key, "user000");
    for e in &engines {
        assert_eq!(values(e.state().get("user000").unwrap()), ["c@example"]);
        assert_eq!(values(e.state().get("user001").unwrap()), ["fresh@example"]);
    }
}

/// A master restarted from a snapshot taken after it reported does not report
/// again, and no note outlives the acknowledgements.
#[test]
fn a_restart_after_the_report_does_not_report_again() {
    let time = ManualClock::new(START_MS);
    let mut engines = masters(3, &time);
    write(&mut engines[0], "alice", "alice@old.example");
    settle(&mut engines, &time);
    remove(&mut engines[0], "alice");
    write(&mut engines[1], "alice", "alice@b.example");
    // The removal reaches B (and is reported) before anything is acknowledged.
    let (reports, _) = exchange(&mut engines, &time, |from, _| from == 0, 0);
    assert_eq!(reporters(&reports), [1], "{reports:?}");
    let snapshot = engines[1].snapshot().unwrap();
    // Through its durable form, as a restarted process reads it.
    let bytes = serde_json::to_vec(&snapshot).unwrap();
    let snapshot: Snapshot<Profiles> = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        snapshot.state.removal_notes().count(),
        1,
        "kept until acknowledged"
    );
    let config = engines[1].config().clone();
    engines[1] = SyncEngine::restore(snapshot, time.clone(), config).unwrap();
    let reports = settle(&mut engines, &time);
    assert!(removals(&reports).is_empty(), "reported again: {reports:?}");
    assert_notes_released(&engines);
}

/// A note must come with its removal's dot and name no element; anything else is
/// refused with a typed error and leaves the receiver unchanged.
#[test]
fn a_malformed_removal_note_is_refused() {
    let time = ManualClock::new(START_MS);
    let mut hlc = Hlc::new(id(1), time.clone());
    let mut map = Profiles::new();
    map.write("alice".into(), "a".into(), &mut hlc).unwrap();
    map.write("bob".into(), "b".into(), &mut hlc).unwrap();
    let removal = map.remove("alice", &mut hlc).unwrap();
    let json: serde_json::Value = serde_json::to_value(&removal).unwrap();
    assert!(json.get("x").is_some(), "{json}");
    let mut receiver = Profiles::new();
    let mut other = Hlc::new(id(2), time.clone());
    receiver
        .write("carol".into(), "c".into(), &mut other)
        .unwrap();
    let before = receiver.clone();

    // The note's dot left out of the context.
    let mut bad = json.clone();
    bad["c"] = serde_json::json!([[0, [1]]]);
    let bad: Profiles = serde_json::from_value(bad).unwrap();
    let got = receiver.try_merge(bad, &Limits::default(), &mut Vec::new());
    assert!(matches!(got, Err(Error::InvalidDot { .. })), "{got:?}");
    assert_eq!(receiver, before);

    // The same note twice.
    let mut bad = json.clone();
    let note = bad["x"][0].clone();
    bad["x"].as_array_mut().unwrap().push(note);
    let bad: Profiles = serde_json::from_value(bad).unwrap();
    let got = receiver.try_merge(bad, &Limits::default(), &mut Vec::new());
    assert!(matches!(got, Err(Error::InvalidDot { .. })), "{got:?}");
    assert_eq!(receiver, before);

    // The intact removal merges.
    let good: Profiles = serde_json::from_value(json).unwrap();
    receiver
        .try_merge(good, &Limits::default(), &mut Vec::new())
        .unwrap();
    assert_eq!(receiver.removal_notes().count(), 1);
}

/// An overwrite's dead dot can arrive in one piece of a chunked catch-up and the
/// overwrite itself in a later one: the first piece takes a sibling and leaves
/// another, which is no removal (no removal note came) and reports nothing; the
/// piece that brings the overwrite reports the sibling race.
#[test]
fn an_overwrites_dead_dot_alone_in_a_chunk_is_no_removal() {
    let time = ManualClock::new(START_MS);
    let (mut a, mut b, mut c) = (
        Hlc::new(id(1), time.clone()),
        Hlc::new(id(2), time.clone()),
        Hlc::new(id(3), time.clone()),
    );
    let mut at_a = Profiles::new();
    at_a.write("alice".into(), "a".into(), &mut a).unwrap();
    let mut at_b = Profiles::new();
    at_b.write("alice".into(), "b".into(), &mut b).unwrap();
    // X holds both siblings; C had only A's and overwrote it.
    let mut x = at_a.clone();
    x.merge(at_b.clone());
    let mut at_c = at_a.clone();
    at_c.write("alice".into(), "c".into(), &mut c).unwrap();

    let mut cursor = concord::ChunkCursor::default();
    let mut pieces = 0;
    let mut reports: Vec<Conflict<String, MvRegister<String>>> = Vec::new();
    while !cursor.is_done() {
        let piece = at_c.delta_chunk(x.context(), at_c.context(), &mut cursor, 1);
        let before = reports.len();
        x.try_merge(piece, &Limits::default(), &mut reports)
            .unwrap();
        pieces += 1;
        if pieces == 1 {
            assert_eq!(
                values(x.get("alice").unwrap()),
                ["b"],
                "the first piece took a"
            );
            assert_eq!(reports.len(), before, "{reports:?}");
        }
    }
    assert!(pieces > 1);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(!reports[0].is_removal(), "{reports:?}");
    assert_eq!(values(x.get("alice").unwrap()), ["b", "c"]);
}

fn hlc(n: u128, time: &ManualClock) -> Hlc<ManualClock> {
    Hlc::new(id(n), time.clone())
}

/// The remover removed the key and wrote it afresh; both reach a master still
/// holding the removed value in one delta: the fresh write saw the removal, no race.
#[test]
fn a_removal_and_a_fresh_write_arriving_together_are_no_race() {
    let time = ManualClock::new(START_MS);
    let mut hlc_a = hlc(1, &time);
    let mut a = Profiles::new();
    a.write("alice".into(), "old@example".into(), &mut hlc_a)
        .unwrap();
    let mut b = a.clone();
    a.remove("alice", &mut hlc_a).unwrap();
    a.write("alice".into(), "fresh@example".into(), &mut hlc_a)
        .unwrap();
    let delta = a.delta_since_context(b.context());
    assert_eq!(delta.removal_notes().count(), 1, "the removal travels");
    let mut reports: Vec<Conflict<String, MvRegister<String>>> = Vec::new();
    b.try_merge(delta, &Limits::default(), &mut reports)
        .unwrap();
    assert!(reports.is_empty(), "{reports:?}");
    assert_eq!(values(b.get("alice").unwrap()), ["fresh@example"]);
}

/// A counter fold is bookkeeping, not an update: U folds two increments that A had
/// seen when it removed the key; C, after the removal, adds 5. U learns of the
/// removal with C's increment: the fold dies with what it folded, the 5 is no race.
#[test]
fn a_fold_of_what_the_remover_had_seen_is_no_update() {
    let time = ManualClock::new(START_MS);
    let (mut hlc_u, mut hlc_a, mut hlc_c) = (hlc(1, &time), hlc(2, &time), hlc(3, &time));
    let mut u: OrMap<String, PnCounter> = OrMap::new();
    u.increment("likes".into(), 1, &mut hlc_u).unwrap();
    u.increment("likes".into(), 1, &mut hlc_u).unwrap();
    let mut a = u.clone();
    let mut c = u.clone();
    let stable = u.context().clone();
    assert!(u.fold_stable(&stable, &mut hlc_u).unwrap(), "a fold");
    a.remove("likes", &mut hlc_a).unwrap();
    c.merge(a.delta_since_context(c.context()));
    c.increment("likes".into(), 5, &mut hlc_c).unwrap();
    let mut reports: Vec<Conflict<String, PnCounter>> = Vec::new();
    u.try_merge(
        c.delta_since_context(u.context()),
        &Limits::default(),
        &mut reports,
    )
    .unwrap();
    assert_eq!(u.count("likes"), 5);
    assert!(reports.is_empty(), "{reports:?}");
}

/// The same with an increment of U's own after the fold, which the remover had not
/// seen: that one is a race, and the report is made.
#[test]
fn an_increment_after_a_fold_racing_a_removal_is_reported() {
    let time = ManualClock::new(START_MS);
    let (mut hlc_u, mut hlc_a) = (hlc(1, &time), hlc(2, &time));
    let mut u: OrMap<String, PnCounter> = OrMap::new();
    u.increment("likes".into(), 1, &mut hlc_u).unwrap();
    u.increment("likes".into(), 1, &mut hlc_u).unwrap();
    let mut a = u.clone();
    let stable = u.context().clone();
    assert!(u.fold_stable(&stable, &mut hlc_u).unwrap(), "a fold");
    u.increment("likes".into(), 7, &mut hlc_u).unwrap();
    let removal = a.remove("likes", &mut hlc_a).unwrap();
    let mut reports: Vec<Conflict<String, PnCounter>> = Vec::new();
    u.try_merge(removal, &Limits::default(), &mut reports)
        .unwrap();
    assert_eq!(u.count("likes"), 7);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(reports[0].is_removal());
    assert_eq!(
        (reports[0].ours.value(), reports[0].resolved.value()),
        (9, 7)
    );
}

/// A removal told again after every peer acknowledged it (its note released, by a
/// peer restarted from an old snapshot, say) is not new, and not reported again.
#[test]
fn a_removal_told_again_after_its_note_was_released_is_not_reported_again() {
    let time = ManualClock::new(START_MS);
    let (mut hlc_a, mut hlc_b) = (hlc(1, &time), hlc(2, &time));
    let mut a = Profiles::new();
    a.write("alice".into(), "old@example".into(), &mut hlc_a)
        .unwrap();
    let mut b = a.clone();
    let removal = a.remove("alice", &mut hlc_a).unwrap();
    b.write("alice".into(), "b@example".into(), &mut hlc_b)
        .unwrap();
    let mut reports: Vec<Conflict<String, MvRegister<String>>> = Vec::new();
    b.try_merge(removal.clone(), &Limits::default(), &mut reports)
        .unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let stable = b.context().clone();
    b.prune(&stable);
    assert_eq!(b.removal_notes().count(), 0, "released");
    b.try_merge(removal, &Limits::default(), &mut reports)
        .unwrap();
    assert_eq!(reports.len(), 1, "reported again: {reports:?}");
    assert_eq!(values(b.get("alice").unwrap()), ["b@example"]);
}

/// A removal (by C, after seeing A's) reaches B first, alone; A's, which it
/// supersedes, arrives later: B reports the first and not the second.
#[test]
fn a_removal_superseded_by_a_held_one_is_not_reported() {
    let time = ManualClock::new(START_MS);
    let (mut hlc_a, mut hlc_b, mut hlc_c) = (hlc(1, &time), hlc(2, &time), hlc(3, &time));
    let mut a = Profiles::new();
    a.write("alice".into(), "v0".into(), &mut hlc_a).unwrap();
    let mut b = a.clone();
    let mut c = a.clone();
    let n1 = a.remove("alice", &mut hlc_a).unwrap();
    b.write("alice".into(), "vb".into(), &mut hlc_b).unwrap();
    c.merge(n1.clone());
    c.write("alice".into(), "vc".into(), &mut hlc_c).unwrap();
    let n2 = c.remove("alice", &mut hlc_c).unwrap();
    let mut reports: Vec<Conflict<String, MvRegister<String>>> = Vec::new();
    b.try_merge(n2, &Limits::default(), &mut reports).unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].theirs_clock.get(id(3)), 2, "C's removal");
    // A's removal is new to B (C's delta named only its own dots).
    assert!(!b.context().contains(n1.removal_notes().next().unwrap().0));
    b.try_merge(n1, &Limits::default(), &mut reports).unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    // Both notes are kept (a note is dropped only for a newer one of its own
    // remover, so replicas that learn of removals in any order keep the same
    // notes); A's is left out of reports, as C's had seen it.
    assert_eq!(b.removal_notes().count(), 2, "C's and A's");
}

/// A removal whose remover merged deltas out of order (it holds a later write of the
/// earlier remover, not the earlier removal) and had seen the racing update does not
/// hide the earlier removal's race: B learns of both at once while holding X's
/// update, which A's removal had not seen; C's had, so only A's meets it, and A's
/// is reported.
#[test]
fn a_superseding_removal_that_saw_the_update_does_not_hide_the_race() {
    let time = ManualClock::new(START_MS);
    let (mut hlc_a, mut hlc_c, mut hlc_x) = (hlc(1, &time), hlc(3, &time), hlc(4, &time));
    let mut a = Profiles::new();
    a.write("alice".into(), "v0".into(), &mut hlc_a).unwrap();
    let mut c = a.clone();
    let mut x = a.clone();
    let update = x.write("alice".into(), "x".into(), &mut hlc_x).unwrap();
    let a_removal = a.remove("alice", &mut hlc_a).unwrap();
    let a_later = a.write("bob".into(), "b".into(), &mut hlc_a).unwrap();
    c.merge(update);
    c.write("alice".into(), "c".into(), &mut hlc_c).unwrap();
    c.merge(a_later); // out of order: without A's removal
    let c_removal = c.remove("alice", &mut hlc_c).unwrap();
    let mut both = Profiles::new();
    both.merge(a_removal);
    both.merge(c_removal);
    assert_eq!(both.removal_notes().count(), 2);
    let mut reports: Vec<Conflict<String, MvRegister<String>>> = Vec::new();
    x.try_merge(both, &Limits::default(), &mut reports).unwrap();
    assert_eq!(
        values(x.get("alice").unwrap()),
        ["x"],
        "the update survives"
    );
    let removals: Vec<_> = reports.iter().filter(|c| c.is_removal()).collect();
    assert_eq!(removals.len(), 1, "{reports:?}");
    assert_eq!(removals[0].theirs_clock.get(id(1)), 2, "A's removal");
    assert_eq!(removals[0].theirs_clock.get(id(3)), 0, "not C's");
}

/// A chunked catch-up sends the notes a held one supersedes after all the others: B,
/// holding an update both removals raced, learns of C's removal (made after seeing
/// A's) before A's, pieces of one note each, and is told of C's only, as it would be
/// in one message.
#[test]
fn a_chunked_catch_up_tells_the_superseding_removal_first() {
    let time = ManualClock::new(START_MS);
    let (mut hlc_a, mut hlc_b, mut hlc_c) = (hlc(1, &time), hlc(2, &time), hlc(3, &time));
    let mut a = Profiles::new();
    a.write("alice".into(), "v0".into(), &mut hlc_a).unwrap();
    let mut b = a.clone();
    let mut c = a.clone();
    let mut relay = a.clone();
    let a_removal = a.remove("alice", &mut hlc_a).unwrap();
    b.write("alice".into(), "vb".into(), &mut hlc_b).unwrap();
    c.merge(a_removal.clone());
    c.write("alice".into(), "vc".into(), &mut hlc_c).unwrap();
    let c_removal = c.remove("alice", &mut hlc_c).unwrap();
    relay.merge(a_removal);
    relay.merge(c_removal);
    assert_eq!(relay.removal_notes().count(), 2);
    let mut cursor = concord::ChunkCursor::default();
    let mut reports: Vec<Conflict<String, MvRegister<String>>> = Vec::new();
    let mut pieces = 0;
    while !cursor.is_done() {
        let piece = relay.delta_chunk(b.context(), relay.context(), &mut cursor, 1);
        b.try_merge(piece, &Limits::default(), &mut reports)
            .unwrap();
        pieces += 1;
    }
    assert!(pieces > 2, "{pieces} pieces");
    let removals: Vec<_> = reports.iter().filter(|c| c.is_removal()).collect();
    assert_eq!(removals.len(), 1, "{reports:?}");
    assert_eq!(removals[0].theirs_clock.get(id(3)), 2, "C's removal");
    assert_eq!(b.removal_notes().count(), 2, "both notes arrived");
}

/// The other order: A's removal first (a report), then C's later one, made after
/// seeing A's but not B's write (a second race, a second report).
#[test]
fn a_superseding_removal_arriving_after_the_superseded_one_is_reported_too() {
    let time = ManualClock::new(START_MS);
    let (mut hlc_a, mut hlc_b, mut hlc_c) = (hlc(1, &time), hlc(2, &time), hlc(3, &time));
    let mut a = Profiles::new();
    a.write("alice".into(), "v0".into(), &mut hlc_a).unwrap();
    let mut b = a.clone();
    let mut c = a.clone();
    let n1 = a.remove("alice", &mut hlc_a).unwrap();
    b.write("alice".into(), "vb".into(), &mut hlc_b).unwrap();
    c.merge(n1.clone());
    c.write("alice".into(), "vc".into(), &mut hlc_c).unwrap();
    c.remove("alice", &mut hlc_c).unwrap();
    let mut reports: Vec<Conflict<String, MvRegister<String>>> = Vec::new();
    b.try_merge(n1, &Limits::default(), &mut reports).unwrap();
    b.try_merge(
        c.delta_since_context(b.context()),
        &Limits::default(),
        &mut reports,
    )
    .unwrap();
    let named: Vec<u64> = reports.iter().map(|r| r.theirs_clock.get(id(3))).collect();
    assert_eq!(named, [0, 2], "A's, then C's: {reports:?}");
    assert_eq!(values(b.get("alice").unwrap()), ["vb"]);
}

/// Two removals made without seeing each other reach the updater in one message
/// (through a relay): one report, whose `theirs_clock` names both.
#[test]
fn removals_of_one_key_arriving_together_are_one_report() {
    let time = ManualClock::new(START_MS);
    let (mut hlc_a, mut hlc_b, mut hlc_d) = (hlc(1, &time), hlc(2, &time), hlc(4, &time));
    let mut a = Profiles::new();
    a.write("alice".into(), "v0".into(), &mut hlc_a).unwrap();
    let mut b = a.clone();
    let mut d = a.clone();
    let mut relay = a.clone();
    let by_a = a.remove("alice", &mut hlc_a).unwrap();
    let by_d = d.remove("alice", &mut hlc_d).unwrap();
    b.write("alice".into(), "vb".into(), &mut hlc_b).unwrap();
    relay.merge(by_a);
    relay.merge(by_d);
    let message = relay.delta_since_context(b.context());
    assert_eq!(message.removal_notes().count(), 2);
    let mut reports: Vec<Conflict<String, MvRegister<String>>> = Vec::new();
    b.try_merge(message, &Limits::default(), &mut reports)
        .unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let c = &reports[0];
    assert!(c.is_removal());
    assert_eq!(
        (c.theirs_clock.get(id(1)), c.theirs_clock.get(id(4))),
        (2, 1)
    );
    assert_eq!(values(&c.resolved), ["vb"]);
    assert_eq!(b.removal_notes().count(), 2, "both kept");
}
