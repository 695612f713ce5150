//! Delete-vs-update races are reported, once, at the master holding the update that
//! survived; a removal followed by a fresh write is no race.

use concord::sync::{Config, SyncEngine};
use concord::{Conflict, Crdt, Hlc, ManualClock, MvRegister, OrMap, ReplicaId};

type Profiles = OrMap<String, MvRegister<String>>;
type Engine = SyncEngine<Profiles, ManualClock>;
type Report = (usize, Conflict<String, MvRegister<String>>);

const START_MS: u64 = 1_700_000_000_000;

/// Delivers every message (dropping those `drop` picks, by their sequence number)
/// until all engines are idle, every write is acknowledged and the states agree;
/// returns the conflicts reported, with the receiver's index.
fn settle(engines: &mut [Engine], time: &ManualClock, drop: impl Fn(usize) -> bool) -> Vec<Report> {
    let mut reports = Vec::new();
    let mut sent = 0;
    for _ in 0..10_000 {
        let mut busy = false;
        for i in 0..engines.len() {
            while let Some(t) = engines[i].poll_transmit() {
                busy = true;
                sent += 1;
                if drop(sent) {
                    continue;
                }
                let to = engines
                    .iter()
                    .position(|e| e.node() == t.to)
                    .expect("a known peer");
                let received = engines[to].handle_bytes(&t.bytes).expect("valid message");
                reports.extend(received.conflicts.into_iter().map(|c| (to, c)));
            }
        }
        if busy {
            continue;
        }
        let acked = engines.iter().all(|e| {
            e.peers()
                .all(|p| e.lag(p).expect("a peer").unacked_writes == 0)
        });
        if acked && engines.iter().all(|e| e.state() == engines[0].state()) {
            return reports;
        }
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
    panic!("the engines did not settle");
}

fn masters(n: u128, time: &ManualClock) -> Vec<Engine> {
    let ids: Vec<ReplicaId> = (1..=n).map(ReplicaId::from_u128).collect();
    ids.iter()
        .map(|&id| {
            let peers = ids.iter().copied().filter(|&p| p != id);
            SyncEngine::new(id, Profiles::new(), time.clone(), Config::with_peers(peers))
        })
        .collect()
}

fn write(e: &mut Engine, key: &str, value: &str) {
    e.update(|m, hlc| m.write(key.into(), value.into(), hlc))
        .expect("a write");
}

fn remove(e: &mut Engine, key: &str) {
    e.update(|m, hlc| m.remove(key, hlc)).expect("a removal");
}

#[test]
fn a_register_removed_while_another_master_overwrote_it_is_reported_once() {
    for drop_every in [0, 2, 3] {
        let time = ManualClock::new(START_MS);
        let mut engines = masters(3, &time);
        write(&mut engines[0], "alice", "alice@old.example");
        settle(&mut engines, &time, |_| false);
        // Without a message in between: A deletes Alice, B changes her address.
        remove(&mut engines[0], "alice");
        write(&mut engines[1], "alice", "alice@new.example");
        let reports = settle(&mut engines, &time, |n| {
            drop_every > 0 && n % drop_every == 0
        });
        for e in &engines {
            let values: Vec<&String> = e
                .state()
                .get("alice")
                .expect("the update survives")
                .values()
                .collect();
            assert_eq!(values, ["alice@new.example"]);
        }
        let removals: Vec<&Report> = reports.iter().filter(|(_, c)| c.is_removal()).collect();
        assert_eq!(
            removals.len(),
            1,
            "dropping every {drop_every}: {reports:?}"
        );
        let (at, c) = removals[0];
        assert_eq!(
            *at, 1,
            "B, whose overwrite survived the removal, reports it"
        );
        assert_eq!(c.key, "alice");
        assert_eq!(c.theirs.values().len(), 0);
        assert_eq!(
            c.resolved.values().collect::<Vec<_>>(),
            ["alice@new.example"]
        );
        assert_eq!(reports.len(), 1, "no other report: {reports:?}");
    }
}

#[test]
fn a_removal_followed_by_a_fresh_write_is_no_race() {
    let time = ManualClock::new(START_MS);
    let mut engines = masters(3, &time);
    write(&mut engines[0], "alice", "alice@old.example");
    settle(&mut engines, &time, |_| false);
    remove(&mut engines[0], "alice");
    settle(&mut engines, &time, |_| false);
    // B saw the removal, then wrote Alice again: sequential, nothing to report.
    write(&mut engines[1], "alice", "alice@new.example");
    let reports = settle(&mut engines, &time, |_| false);
    assert!(reports.is_empty(), "{reports:?}");
}

#[test]
fn an_overwrite_met_by_an_overwrite_is_a_sibling_race_not_a_removal() {
    let time = ManualClock::new(START_MS);
    let mut engines = masters(3, &time);
    write(&mut engines[0], "alice", "alice@old.example");
    settle(&mut engines, &time, |_| false);
    write(&mut engines[0], "alice", "alice@a.example");
    write(&mut engines[1], "alice", "alice@b.example");
    let reports = settle(&mut engines, &time, |_| false);
    assert!(!reports.is_empty());
    assert!(reports.iter().all(|(_, c)| !c.is_removal()), "{reports:?}");
}

#[test]
fn a_nested_field_removed_while_another_master_updated_it_is_reported() {
    type Users = OrMap<String, OrMap<String, MvRegister<String>>>;
    let time = ManualClock::new(START_MS);
    let mut a_hlc = Hlc::new(ReplicaId::from_u128(1), time.clone());
    let mut b_hlc = Hlc::new(ReplicaId::from_u128(2), time.clone());
    let mut a: Users = OrMap::new();
    a.update("alice".into(), &mut a_hlc, |fields, op| {
        fields.update_in(op, "city".into(), |r, op| r.set(op, "Lisbon".into()));
    })
    .unwrap();
    let mut b = a.clone();
    // A drops Alice altogether; B, unaware, moves her to Porto.
    let removal = a.remove("alice", &mut a_hlc).unwrap();
    b.update("alice".into(), &mut b_hlc, |fields, op| {
        fields.update_in(op, "city".into(), |r, op| r.set(op, "Porto".into()));
    })
    .unwrap();
    let mut conflicts = Vec::new();
    b.try_merge(removal, &Default::default(), &mut conflicts)
        .unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert!(conflicts[0].is_removal());
    assert_eq!(conflicts[0].key, "alice");
}
