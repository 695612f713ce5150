//! What several integration tests share: delivering every message between engines on
//! one manual clock until they settle.

use concord::sync::SyncEngine;
use concord::{Conflict, Crdt, ManualClock};

/// Delivers every message (dropping those `drop` picks, by their sequence number)
/// until all engines are idle, every write is acknowledged and the states agree;
/// returns the conflicts reported, with the receiver's index.
///
/// # Panics
///
/// If the engines do not settle within 10,000 rounds, or a message is refused.
#[allow(clippy::type_complexity)]
pub fn settle_dropping<T: Crdt + Default + PartialEq>(
    engines: &mut [SyncEngine<T, ManualClock>],
    time: &ManualClock,
    drop: impl Fn(usize) -> bool,
) -> Vec<(usize, Conflict<T::Key, T::Value>)> {
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
