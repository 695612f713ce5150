//! What is not a delete-vs-update race: a removal followed by a fresh write, and two
//! overwrites racing (an ordinary sibling race).

mod support;

use concord::sync::{Config, SyncEngine};
use concord::{ManualClock, MvRegister, OrMap, ReplicaId};

type Profiles = OrMap<String, MvRegister<String>>;
type Engine = SyncEngine<Profiles, ManualClock>;

const START_MS: u64 = 1_700_000_000_000;

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
