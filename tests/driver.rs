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
                    let _ = self.engines[to].handle_bytes(&t.bytes).unwrap();
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

/// The message a transmit carries, in whichever form it was written.
fn message(t: &Transmit) -> concord::sync::Message<Map> {
    concord::wire::decode(&t.bytes, usize::MAX).expect("engines write messages that decode")
}

fn has_delta(t: &Transmit) -> bool {
    message(t).delta.is_some()
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
fn a_dropped_delta_of_many_writes_is_resent_and_then_only_news_are_sent() {
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
        if message(t).chunk.is_some() && has_delta(t) {
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
    let from = concord::wire::envelope(&t.bytes, usize::MAX).unwrap().from;
    u128::from_str_radix(&from.to_string().replace('-', ""), 16).unwrap()
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
    // Two upgraded nodes move up to the newest version after the first exchange.
    let mut net = Net::new(2, |c| c);
    net.write(0, "x", 1);
    net.run(20, |_, _| false);
    assert!(net.converged());
    assert_eq!(
        net.engines[0].metrics().peers[0].protocol_version,
        concord::sync::PROTOCOL_VERSION
    );
}

/// A rolling upgrade from version 3 to 4: a node held at 3 and an upgraded one
/// converge both ways, the upgraded one writing JSON (version 3) to it; two upgraded
/// nodes move to binary (version 4) after their first exchange, and a restarted node
/// speaks binary from its first message to a peer its snapshot says speaks 4.
#[test]
fn a_node_held_at_version_3_and_an_upgraded_one_converge_and_a_pair_of_4_speaks_binary() {
    for old in [0, 1] {
        let mut net = Net::new(2, |c| c);
        let time = net.time.clone();
        let cfg = Config::with_peers([id(1), id(2)]).protocol_version(3);
        net.engines[old] = SyncEngine::new(id(old as u128 + 1), Map::new(), time, cfg)
            .with_lease(MemoryLease::new())
            .unwrap();
        for k in 0..20 {
            net.write(0, &format!("a{k}"), k);
            net.write(1, &format!("b{k}"), k);
        }
        net.write(0, "both", 1);
        net.write(1, "both", 2);
        let mut first_bytes = std::collections::BTreeSet::new();
        let mut versions = std::collections::BTreeSet::new();
        net.run(50, |_, t| {
            first_bytes.insert(t.bytes[0]);
            versions.insert(message(t).v);
            false
        });
        assert!(net.converged(), "old node {old}");
        assert_eq!(net.engines[0].state().len(), 41);
        assert_eq!(
            first_bytes.into_iter().collect::<Vec<_>>(),
            [b'{'],
            "old node {old}"
        );
        // Version 1 until each hears the other, then 3: never 4.
        assert_eq!(*versions.last().unwrap(), 3, "old node {old}");
        let m = net.engines[1 - old].metrics();
        assert_eq!(m.peers[0].protocol_version, 3);
    }
    // Two upgraded nodes: JSON (version 1) until they hear each other, then binary.
    let mut net = Net::new(2, |c| c);
    net.write(0, "x", 1);
    net.run(20, |_, _| false);
    assert!(net.converged());
    assert_eq!(net.engines[0].metrics().peers[0].protocol_version, 4);
    net.write(0, "y", 2);
    let mut seen = Vec::new();
    net.run(20, |_, t| {
        seen.push((t.bytes[0], message(t).v));
        false
    });
    assert!(net.converged());
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|&s| s == (concord::wire::BINARY_MESSAGE, 4)),
        "{seen:?}"
    );
    // A node restored from a snapshot speaks binary to that peer from the start.
    let snapshot = net.engines[0].snapshot().unwrap();
    let saved = concord::wire::encode_snapshot(&snapshot);
    let restored = concord::wire::decode_snapshot(&saved).unwrap();
    let cfg = Config::with_peers([id(1), id(2)]);
    net.engines[0] = SyncEngine::restore(restored, net.time.clone(), cfg)
        .unwrap()
        .with_lease(net.leases[0].clone())
        .unwrap();
    let hello = net.engines[0].sync_with(id(2)).unwrap();
    assert_eq!(hello.v, 4);
    assert_eq!(hello.encode()[0], concord::wire::BINARY_MESSAGE);
    let _ = net.engines[1].receive_bytes(&hello.encode()).unwrap();
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

/// A delta computed for a peer's previous boot (it restarted meanwhile from its latest
/// snapshot) is skipped, not merged: merged, it would carry the dot of an overwrite
/// without the overwrite, and the restarted peer would keep the old value for good.
#[test]
fn a_delta_for_a_previous_boot_is_not_merged() {
    let mut net = Net::new(2, |c| c);
    net.run(10, |_, _| false);
    net.write(0, "k", 1);
    net.run(20, |_, _| false);
    let snapshot = net.engines[0].snapshot().unwrap();
    net.write(0, "k", 2); // overwrites k=1; node 2 acknowledges it
    net.run(20, |_, _| false);
    let config = Config::with_peers([id(1), id(2)]);
    net.engines[0] = SyncEngine::restore(snapshot, net.time.clone(), config)
        .unwrap()
        .with_lease(net.leases[0].clone())
        .unwrap();
    net.write(1, "k", 3);
    // Node 2's delta, computed for node 1's previous boot, reaches the new boot first.
    while let Some(t) = net.engines[1].poll_transmit() {
        let _ = net.engines[0].handle_bytes(&t.bytes).unwrap();
    }
    net.run(50, |_, _| false);
    assert!(net.converged());
    let k = net.engines[0].state().get("k").unwrap();
    assert_eq!(k.values().copied().collect::<Vec<_>>(), [3]);
}

/// Two masters far apart catch up with each other in chunks at the same time.
#[test]
fn two_way_chunked_catch_up_needs_no_resend() {
    let mut net = Net::new(2, |c| c.max_message_bytes(2 << 10));
    net.run(10, |_, _| false);
    for k in 0..2_000u32 {
        net.write(0, &format!("a-{k:05}"), k);
        net.write(1, &format!("b-{k:05}"), k);
    }
    net.run(100, |_, _| false);
    assert!(net.converged());
    assert_eq!(net.engines[0].state().len(), 4_000);
    for e in &net.engines {
        let m = e.metrics();
        assert!(m.chunks_sent > 10, "{m:?}");
        assert_eq!(m.retransmits, 0, "{m:?}");
        assert_eq!(m.stale_deltas, 0, "{m:?}");
    }
}

/// A lost delta is resent after the retransmission timeout even while later writes
/// keep arriving (their acknowledgements do not push the deadline back).
#[test]
fn a_lost_delta_is_resent_under_steady_writes() {
    let mut net = Net::new(2, |c| c.retransmit_ms(500).anti_entropy_ms(600_000));
    net.run(10, |_, _| false);
    let lost = net.write(0, "first", 0);
    let mut dropped = false;
    let started = net.time.now();
    let mut arrived_at = None;
    for i in 1..40u32 {
        net.run(1, |_, t| {
            let lose = !dropped && has_delta(t) && t.to == id(2);
            dropped |= lose;
            lose
        });
        if arrived_at.is_none() && net.engines[1].context().contains(lost) {
            arrived_at = Some(net.time.now() - started);
        }
        net.time.advance(100);
        net.write(0, &format!("k{i}"), i);
    }
    assert!(dropped);
    let waited = arrived_at.expect("the lost write arrived");
    // Resent by the timer (500 ms, doubled at most once), not by anti-entropy.
    assert!(waited <= 2_000, "the lost write arrived after {waited} ms");
    assert!(net.engines[0].metrics().retransmits >= 1);
}

/// A hostile peer's context with one run of 2^40 dots costs one range, not a walk
/// over its dots, when a catch-up later removes-and-sends around it.
#[test]
fn a_huge_run_of_dots_in_a_context_is_cheap_to_chunk() {
    use concord::sync::{Message, PROTOCOL_VERSION};
    use concord::{CausalContext, Dot};
    let mut net = Net::new(2, |c| c.max_message_bytes(4 << 10));
    net.run(10, |_, _| false);
    let stranger = id(99);
    // A state with no entries whose context is one run of 2^40 removed dots.
    let json = format!(
        r#"{{"r":["{stranger}"],"c":[[0,[[1,{}]]]],"e":{{}}}}"#,
        (1u64 << 40) - 1
    );
    let delta: Map = serde_json::from_str(&json).unwrap();
    let msg = Message {
        v: PROTOCOL_VERSION,
        vmax: PROTOCOL_VERSION,
        from: id(2),
        to: id(1),
        inc: id(2),
        seen: net.engines[1].context().clone(),
        delta: Some(delta),
        base: CausalContext::new(),
        chunk: None,
        reply: false,
        epoch: 0,
        lead: None,
        echo: None,
    };
    let _ = net.engines[0].handle_message(msg).unwrap();
    // Node 2 restarts empty: node 1 catches it up in chunks, the run included.
    let config = Config::with_peers([id(1), id(2)]).max_message_bytes(4 << 10);
    net.engines[1] = SyncEngine::new(id(2), Map::new(), net.time.clone(), config);
    for k in 0..500u32 {
        net.write(0, &format!("key-{k:04}"), k);
    }
    net.run(100, |_, _| false);
    assert!(net.converged());
    assert!(net.engines[1]
        .context()
        .contains(Dot::new(stranger, 1 << 39)));
}

/// A peer cannot grow this replica's record of what it holds without bound by sending
/// ever new gaps: the record is held to the limit on context ranges.
#[test]
fn acknowledgements_stay_within_the_range_limit() {
    use concord::sync::{Message, PROTOCOL_VERSION};
    use concord::{CausalContext, Dot, Limits};
    let limits = Limits {
        max_context_ranges: 100,
        ..Limits::default()
    };
    let mut net = Net::new(2, |c| c.limits(limits.clone()));
    net.run(10, |_, _| false);
    let stranger = id(99);
    for round in 0..50u64 {
        let mut seen = CausalContext::new();
        for i in 0..80u64 {
            seen.insert(Dot::new(stranger, (round * 80 + i) * 2 + 1));
        }
        let msg: Message<Map> = Message {
            v: PROTOCOL_VERSION,
            vmax: PROTOCOL_VERSION,
            from: id(2),
            to: id(1),
            inc: id(2),
            seen,
            delta: None,
            base: CausalContext::new(),
            chunk: None,
            reply: false,
            epoch: 0,
            lead: None,
            echo: None,
        };
        let _ = net.engines[0].handle_message(msg).unwrap();
    }
    let acked = &net.engines[0].metrics().peers[0].acked;
    assert!(acked.range_count() <= 100, "{} ranges", acked.range_count());
}

/// A lease store that fails holds deltas back without making the event loop spin.
#[test]
fn a_failing_lease_store_does_not_spin_the_driver() {
    use concord::sync::LeaseStore;
    #[derive(Debug)]
    struct Broken;
    impl LeaseStore for Broken {
        fn load(&mut self) -> concord::Result<u64> {
            Ok(0)
        }
        fn store(&mut self, _: u64) -> concord::Result<()> {
            Err(concord::Error::Lease {
                reason: "disk full".into(),
            })
        }
    }
    let mut net = Net::new(3, |c| c);
    net.run(10, |_, _| false);
    net.write(1, "relayed", 1); // node 1 will have others' writes to relay
    let config = Config::with_peers([id(1), id(2), id(3)]);
    let time = net.time.clone();
    net.engines[0] = SyncEngine::new(id(1), net.engines[1].state().clone(), time.clone(), config)
        .with_lease(Broken)
        .unwrap();
    net.write(0, "mine", 1);
    let mut idle_wakeups = 0;
    for _ in 0..200 {
        let now = time.now();
        let next = net.engines[0].poll_timeout().unwrap();
        time.set(next.max(now));
        net.engines[0].handle_timeout();
        let mut sent = false;
        while let Some(t) = net.engines[0].poll_transmit() {
            sent = true;
            assert!(!has_delta(&t), "a delta left without a lease");
        }
        idle_wakeups += usize::from(!sent && next <= now);
    }
    assert!(
        idle_wakeups < 5,
        "{idle_wakeups} wake-ups with nothing to do"
    );
}

/// An acknowledgement claiming chunk index u32::MAX is harmless.
#[test]
fn a_chunk_index_at_the_maximum_is_harmless() {
    use concord::sync::{Chunk, Message, PROTOCOL_VERSION};
    use concord::CausalContext;
    let mut net = Net::new(2, |c| c);
    net.run(10, |_, _| false);
    let delta = Map::new();
    for with_delta in [false, true] {
        let msg = Message {
            v: PROTOCOL_VERSION,
            vmax: PROTOCOL_VERSION,
            from: id(2),
            to: id(1),
            inc: id(2),
            seen: net.engines[1].context().clone(),
            delta: with_delta.then(|| delta.clone()),
            base: CausalContext::new(),
            chunk: Some(Chunk {
                stream: u64::MAX,
                index: u32::MAX,
                last: false,
            }),
            reply: true,
            epoch: 0,
            lead: None,
            echo: None,
        };
        let _ = net.engines[0].handle_message(msg).unwrap();
    }
    net.write(0, "x", 1);
    net.run(20, |_, _| false);
    assert!(net.converged());
}

/// The manual path: after a session, the answering side's next push offers only what
/// is new, not the answer again.
#[test]
fn after_a_manual_session_push_offers_only_news() {
    let time = ManualClock::new(START_MS);
    let config = |me: u128| Config::with_peers([id(1), id(2)]).incarnation(id(me + 10));
    let mut a = SyncEngine::new(id(1), Map::new(), time.clone(), config(1));
    let mut b = SyncEngine::new(id(2), Map::new(), time.clone(), config(2));
    for k in 0..1_000u32 {
        b.update(|m, hlc| m.write(format!("k{k}"), k, hlc)).unwrap();
    }
    let hello = a.sync_with(id(2)).unwrap();
    let answer = b.receive(hello).unwrap().reply.unwrap();
    let _ = a.receive(answer).unwrap();
    assert_eq!(a.state(), b.state());
    assert!(b.push().is_empty(), "the answer was offered again");
    b.update(|m, hlc| m.write("new".into(), 1, hlc)).unwrap();
    let news = b.push();
    assert_eq!(news.len(), 1);
    assert_eq!(news[0].delta.as_ref().unwrap().len(), 1);
}

/// Three masters collapse one conflicted key at once with the same merge function:
/// after one more round they show one value, nothing is conflicted, and the round
/// reports no conflict (a handler that collapses every conflict does not loop).
#[test]
fn masters_collapsing_one_conflict_at_once_show_one_value() {
    let mut net = Net::new(3, |c| c);
    net.run(10, |_, _| false);
    for (i, v) in [(0, 3), (1, 5), (2, 4)] {
        net.write(i, "k", v);
    }
    net.run(20, |_, _| false);
    assert!(net.converged());
    assert_eq!(net.engines[0].state().conflicted_keys().count(), 1);
    let largest = |s: &[&u32]| **s.iter().max().unwrap();
    for e in &mut net.engines {
        e.update(|m, hlc| m.collapse(largest, hlc)).unwrap();
    }
    // One more round, counting the conflicts each receiver reports.
    let mut reports = 0;
    for _ in 0..5 {
        let mut queue = Vec::new();
        for (i, e) in net.engines.iter_mut().enumerate() {
            while let Some(t) = e.poll_transmit() {
                queue.push((i, t));
            }
        }
        for (_, t) in queue {
            let to = net.index(t.to);
            reports += net.engines[to]
                .handle_bytes(&t.bytes)
                .unwrap()
                .conflicts
                .len();
        }
    }
    net.run(20, |_, _| false);
    assert!(net.converged());
    for e in &net.engines {
        let k = e.state().get("k").unwrap();
        assert_eq!(k.get(), Some(&5));
        assert!(!k.is_conflicted());
        assert_eq!(e.state().conflicted_keys().count(), 0);
    }
    assert_eq!(reports, 0, "the collapse round reported conflicts");
}
