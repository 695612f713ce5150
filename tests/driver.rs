//! The timer-driven driver, counter leases, chunked catch-up and version negotiation:
//! hosts that only call `handle_bytes`, `poll_transmit`, `poll_timeout` and
//! `handle_timeout` recover from every lost message, restart without growing version
//! vectors, bootstrap states far larger than a message, and talk to version-1 peers.

use concord::sync::{Config, MemoryLease, SyncEngine, Transmit};
use concord::{ManualClock, MvRegister, OrMap, ReplicaId, VectorClock};

type Map = OrMap<String, MvRegister<u32>>;
type Engine = SyncEngine<Map, ManualClock>;

const START_MS: u64 = 1_700_000_000_000;

fn id(n: u128) -> ReplicaId {
    ReplicaId::from_u128(n)
}

/// Engines on one in-process network; `drop` decides which transmits are lost.
struct Net {
    engines: Vec<Engine>,
    leases: Vec<MemoryLease>,
    time: ManualClock,
    /// Bytes delivered, per call of `run`.
    delivered_bytes: u64,
    delivered: u64,
}

impl Net {
    fn new(n: usize, config: impl Fn(Config) -> Config) -> Net {
        let time = ManualClock::new(START_MS);
        let ids: Vec<ReplicaId> = (1..=n as u128).map(id).collect();
        let leases: Vec<MemoryLease> = (0..n).map(|_| MemoryLease::new()).collect();
        let engines = ids
            .iter()
            .zip(&leases)
            .map(|(me, lease)| {
                let cfg = config(Config::with_peers(ids.iter().copied()));
                SyncEngine::new(*me, Map::new(), time.clone(), cfg)
                    .with_lease(lease.clone())
                    .unwrap()
            })
            .collect();
        Net {
            engines,
            leases,
            time,
            delivered_bytes: 0,
            delivered: 0,
        }
    }

    fn index(&self, node: ReplicaId) -> usize {
        self.engines.iter().position(|e| e.node() == node).unwrap()
    }

    /// Delivers everything until quiet, dropping what `drop` says; time passes by the
    /// engines' own deadlines. Returns after `rounds` timer rounds or when converged
    /// and quiet.
    fn run(&mut self, rounds: usize, mut drop: impl FnMut(usize, &Transmit) -> bool) {
        let mut sent = 0usize;
        for _ in 0..rounds {
            let mut queue: Vec<(usize, Transmit)> = Vec::new();
            loop {
                for (i, e) in self.engines.iter_mut().enumerate() {
                    while let Some(t) = e.poll_transmit() {
                        queue.push((i, t));
                    }
                }
                if queue.is_empty() {
                    break;
                }
                for (from, t) in std::mem::take(&mut queue) {
                    sent += 1;
                    if drop(sent, &t) {
                        continue;
                    }
                    let to = self.index(t.to);
                    self.delivered += 1;
                    self.delivered_bytes += t.bytes.len() as u64;
                    let _ = from;
                    self.engines[to].handle_bytes(&t.bytes).unwrap();
                }
            }
            if self.converged() {
                return;
            }
            let next = self
                .engines
                .iter()
                .filter_map(Engine::poll_timeout)
                .min()
                .unwrap();
            self.time.set(next.max(self.time.now()));
            for e in &mut self.engines {
                e.handle_timeout();
            }
        }
    }

    fn converged(&self) -> bool {
        self.engines
            .windows(2)
            .all(|w| w[0].state() == w[1].state())
    }

    fn write(&mut self, i: usize, key: &str, value: u32) -> concord::Dot {
        self.engines[i]
            .update(|m, hlc| m.write(key.to_string(), value, hlc))
            .unwrap()
            .dot
            .unwrap()
    }
}

fn has_delta(t: &Transmit) -> bool {
    String::from_utf8_lossy(&t.bytes).contains("\"delta\"")
}

#[test]
fn a_dropped_push_is_resent_by_the_driver_alone() {
    let mut net = Net::new(2, |c| c);
    net.run(10, |_, _| false); // first contact
    let dot = net.write(0, "x", 1);
    let mut dropped = false;
    // The first delta is lost; nothing but timers and the driver run after that.
    net.run(50, |_, t| {
        if !dropped && has_delta(t) {
            dropped = true;
            return true;
        }
        false
    });
    assert!(dropped);
    assert!(net.converged());
    assert!(net.engines[0].metrics().retransmits >= 1);
    assert!(net.engines[0].holders(dot).contains(&id(2)));
}

#[test]
fn a_dropped_answer_is_resent_and_answers_are_acknowledged() {
    let mut net = Net::new(2, |c| c);
    net.run(10, |_, _| false);
    for k in 0..200 {
        net.write(1, &format!("k{k}"), k);
    }
    // Node 2's delta (its answer to node 1's anti-entropy or its push) is lost.
    let mut dropped = false;
    net.run(50, |_, t| {
        if !dropped && t.to == id(1) && has_delta(t) {
            dropped = true;
            return true;
        }
        false
    });
    assert!(dropped && net.converged());
    // Once acknowledged, one new write costs one small delta, not the 200 keys again.
    net.run(5, |_, _| false);
    let before = net.delivered_bytes;
    net.write(1, "new", 1);
    net.run(5, |_, _| false);
    let resent = net.delivered_bytes - before;
    assert!(net.converged());
    assert!(resent < 2_000, "{resent} bytes for one new write");
}

#[test]
fn a_dropped_chunk_is_resent_and_a_large_state_bootstraps() {
    let mut net = Net::new(2, |c| c.max_message_bytes(16 << 10));
    for k in 0..5_000u32 {
        net.write(0, &format!("key-{k:06}"), k);
    }
    let mut chunks = 0;
    net.run(200, |_, t| {
        assert!(t.bytes.len() <= 16 << 10, "{} bytes", t.bytes.len());
        if String::from_utf8_lossy(&t.bytes).contains("\"chunk\"") && has_delta(t) {
            chunks += 1;
            return chunks == 3; // the third chunk is lost
        }
        false
    });
    assert!(net.converged());
    assert!(chunks > 10, "{chunks} chunks");
    assert_eq!(net.engines[1].state().len(), 5_000);
}

/// The bootstrap the issue names: a new replica joins a 100,000-key master with a
/// 64 KiB message limit. (Timed in the closing note in release; here it checks that
/// it converges with every message within the limit.)
#[test]
fn bootstrap_of_100k_keys_at_64_kib() {
    let mut net = Net::new(2, |c| c.max_message_bytes(64 << 10));
    for k in 0..100_000u32 {
        net.write(0, &format!("key-{k:06}"), k);
    }
    let mut largest = 0;
    net.run(1_000, |_, t| {
        largest = largest.max(t.bytes.len());
        false
    });
    assert!(net.converged());
    assert!(largest <= 64 << 10, "{largest} bytes");
    assert_eq!(net.engines[1].state().len(), 100_000);
}

#[test]
fn ten_thousand_restarts_keep_one_identity_and_flat_messages() {
    let mut net = Net::new(2, |c| c);
    net.run(10, |_, _| false);
    let mut first_size = None;
    let mut snapshot = net.engines[0].snapshot().unwrap();
    for cycle in 0..restart_cycles() {
        // Restart node 1 from its last snapshot (every tenth time from an older one)
        // with its lease.
        let older = cycle % 10 == 9;
        if !older {
            snapshot = net.engines[0].snapshot().unwrap();
        }
        let config = Config::with_peers([id(1), id(2)]);
        net.engines[0] = SyncEngine::restore(snapshot.clone(), net.time.clone(), config)
            .unwrap()
            .with_lease(net.leases[0].clone())
            .unwrap();
        net.write(0, &format!("k{}", cycle % 50), cycle);
        let mut opening = 0;
        net.run(20, |_, t| {
            if t.to == id(2) && opening == 0 {
                opening = t.bytes.len();
            }
            false
        });
        assert!(net.converged(), "cycle {cycle}");
        if cycle == 0 || cycle + 1 == restart_cycles() {
            eprintln!("cycle {cycle}: opening message {opening} bytes");
        }
        let entries = net.engines[1].context().replicas().count();
        assert_eq!(
            entries, 1,
            "cycle {cycle}: {entries} version-vector entries (only node 1 writes)"
        );
        let size = *first_size.get_or_insert(opening);
        assert!(
            opening <= size + 200,
            "cycle {cycle}: opening message {opening} bytes, first was {size}"
        );
    }
}

/// The trap of leases: restored from an old snapshot, the node skips the counters it
/// may have used. A peer that held writes in that range, partitioned away during the
/// restart, returns with them: they are kept, not taken for deleted.
#[test]
fn writes_in_the_leased_gap_survive_a_partitioned_peer() {
    let mut net = Net::new(3, |c| c.lease_block(4));
    net.run(10, |_, _| false);
    let old = net.engines[0].snapshot().unwrap();
    for k in 0..10 {
        net.write(0, &format!("lost-{k}"), k);
    }
    // Only node 3 receives them.
    net.run(20, |_, t| t.to == id(2) || t_from(t) == 2);
    assert_eq!(net.engines[2].state().len(), 10);
    // Node 1 restarts from the old snapshot; node 3 is partitioned away meanwhile.
    let config = Config::with_peers([id(1), id(2), id(3)]).lease_block(4);
    net.engines[0] = SyncEngine::restore(old, net.time.clone(), config)
        .unwrap()
        .with_lease(net.leases[0].clone())
        .unwrap();
    net.write(0, "after", 1);
    net.run(20, |_, t| t.to == id(3) || t_from(t) == 3);
    assert_eq!(net.engines[0].state().len(), 1);
    // Node 3 returns: everything converges, the writes from before the restart too.
    net.run(50, |_, _| false);
    assert!(net.converged());
    assert_eq!(net.engines[0].state().len(), 11);
    let entries = net.engines[0].context().replicas().count();
    assert_eq!(entries, 1, "only node 1 ever wrote");
}

/// Which node a transmit comes from, by its `from` field.
fn t_from(t: &Transmit) -> u128 {
    let text = String::from_utf8_lossy(&t.bytes);
    let from = text.split("\"from\":\"").nth(1).unwrap();
    u128::from_str_radix(&from[..36].replace('-', ""), 16).unwrap()
}

#[test]
fn a_node_held_at_version_1_and_an_upgraded_one_converge_both_ways() {
    for old in [0, 1] {
        let mut net = Net::new(2, |c| c);
        let time = net.time.clone();
        let cfg = Config::with_peers([id(1), id(2)]).protocol_version(1);
        net.engines[old] = SyncEngine::new(id(old as u128 + 1), Map::new(), time, cfg)
            .with_lease(MemoryLease::new())
            .unwrap();
        for k in 0..20 {
            net.write(0, &format!("a{k}"), k);
            net.write(1, &format!("b{k}"), k);
        }
        net.write(0, "both", 1);
        net.write(1, "both", 2);
        let mut versions = std::collections::BTreeSet::new();
        net.run(50, |_, t| {
            let text = String::from_utf8_lossy(&t.bytes);
            versions.insert(text[5..6].to_string());
            false
        });
        assert!(net.converged(), "old node {old}");
        assert_eq!(net.engines[0].state().len(), 41);
        assert_eq!(
            versions.into_iter().collect::<Vec<_>>(),
            ["1"],
            "old node {old}"
        );
        let m = net.engines[1 - old].metrics();
        assert_eq!(m.peers[0].protocol_version, 1);
    }
    // Two upgraded nodes move up to version 2 after the first exchange.
    let mut net = Net::new(2, |c| c);
    net.write(0, "x", 1);
    net.run(20, |_, _| false);
    assert!(net.converged());
    assert_eq!(net.engines[0].metrics().peers[0].protocol_version, 2);
}

#[test]
fn session_tokens_are_compact() {
    let clock: VectorClock = (0..3)
        .map(|i| (ReplicaId::random(), 1_000_000 + i))
        .collect();
    let token = clock.to_token();
    assert!(token.len() <= 90, "{} bytes: {token}", token.len());
    assert_eq!(VectorClock::from_token(&token).unwrap(), clock);
    for bad in [
        "~",
        "a.b.c",
        "AAAA",
        "A.A~A.B",
        "A.zzzzzzzzzzzzzzzzzzzzzzzz",
    ] {
        assert!(VectorClock::from_token(bad).is_err(), "{bad}");
    }
}

/// How many restart cycles (`CONCORD_RESTARTS`, default 10,000: about 7 s in a debug build).
fn restart_cycles() -> u32 {
    std::env::var("CONCORD_RESTARTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}
