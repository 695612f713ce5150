//! What is not a delete-vs-update race: a removal followed by a fresh write, and two
//! overwrites racing (an ordinary sibling race).

use concord::sync::{Config, SyncEngine};
use concord::{Conflict, ManualClock, MvRegister, OrMap, ReplicaId};

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
