//! Hot keys are contained, not fatal (issue 9): a key with more concurrent siblings
//! than a receiver's cap is set aside while every other key keeps flowing in both
//! directions; the operator sees it (a report naming the key and the sender, a
//! metric, a list), and it heals by itself once a write that saw the siblings
//! collapses it.

use std::collections::BTreeMap;

use concord::sync::{Config, MemoryLease, SyncEngine, Transmit};
use concord::{Error, Limits, ManualClock, MvRegister, OrMap, ReplicaId};

type Map = OrMap<String, MvRegister<u32>>;
type Engine = SyncEngine<Map, ManualClock>;

const START_MS: u64 = 1_700_000_000_000;
const HOT: &str = "hot";

fn id(n: u128) -> ReplicaId {
    ReplicaId::from_u128(n)
}

fn capped(cap: usize) -> Limits {
    Limits {
        max_siblings: cap,
        ..Limits::default()
    }
}

/// A network of engines on one manual clock, delivering every message.
struct Net {
    engines: Vec<Engine>,
    time: ManualClock,
    /// Bytes delivered per (from, to) pair of engine indices.
    bytes: BTreeMap<(usize, usize), u64>,
    /// Messages a receiver refused.
    refused: Vec<Error>,
    /// Hot keys reported to each engine (`Received::hot_keys`).
    reports: Vec<usize>,
    /// Messages carrying a delta, and their bytes, per (from, to).
    deltas: BTreeMap<(usize, usize), (u64, u64)>,
}

/// True if an encoded message carries a delta (it has a `"delta"` field).
fn carries_delta(bytes: &[u8]) -> bool {
    bytes.windows(8).any(|w| w == b"\"delta\":")
}

impl Net {
    /// Engine 0 is the hub (peers: everyone), the others talk to the hub only.
    fn star(caps: &[usize], tune: impl Fn(Config) -> Config) -> Net {
        let time = ManualClock::new(START_MS);
        let ids: Vec<ReplicaId> = (1..=caps.len() as u128).map(id).collect();
        let engines = caps
            .iter()
            .enumerate()
            .map(|(i, cap)| {
                let peers: Vec<ReplicaId> = if i == 0 {
                    ids[1..].to_vec()
                } else {
                    vec![ids[0]]
                };
                let config = tune(Config::with_peers(peers).limits(capped(*cap)));
                SyncEngine::new(ids[i], Map::new(), time.clone(), config)
                    .with_lease(MemoryLease::new())
                    .unwrap()
            })
            .collect();
        Net {
            engines,
            time,
            bytes: BTreeMap::new(),
            refused: Vec::new(),
            deltas: BTreeMap::new(),
            reports: vec![0; caps.len()],
        }
    }

    fn index(&self, node: ReplicaId) -> usize {
        self.engines.iter().position(|e| e.node() == node).unwrap()
    }

    /// Delivers everything until quiet, then moves time to the next deadline of any
    /// engine (timers fire, messages flow again), until `ms` have passed.
    fn run_for(&mut self, ms: u64) {
        let end = self.time.now() + ms;
        loop {
            self.deliver();
            if self.time.now() >= end {
                break;
            }
            let next = self
                .engines
                .iter()
                .filter_map(|e| e.poll_timeout())
                .min()
                .unwrap_or(end)
                .clamp(self.time.now() + 1, end);
            self.time.set(next);
            for e in &mut self.engines {
                e.handle_timeout();
            }
        }
    }

    fn deliver(&mut self) {
        loop {
            let mut queue: Vec<(usize, Transmit)> = Vec::new();
            for (i, e) in self.engines.iter_mut().enumerate() {
                while let Some(t) = e.poll_transmit() {
                    queue.push((i, t));
                }
            }
            if queue.is_empty() {
                return;
            }
            for (from, t) in queue {
                let to = self.index(t.to);
                *self.bytes.entry((from, to)).or_default() += t.bytes.len() as u64;
                if carries_delta(&t.bytes) {
                    let d = self.deltas.entry((from, to)).or_default();
                    d.0 += 1;
                    d.1 += t.bytes.len() as u64;
                }
                match self.engines[to].handle_bytes(&t.bytes) {
                    Ok(received) => self.reports[to] += received.hot_keys.len(),
                    Err(e) => self.refused.push(e),
                }
            }
        }
    }

    fn bytes_between(&self, a: usize, b: usize) -> u64 {
        self.bytes.get(&(a, b)).copied().unwrap_or(0)
    }

    fn deltas_between(&self, a: usize, b: usize) -> (u64, u64) {
        self.deltas.get(&(a, b)).copied().unwrap_or((0, 0))
    }
}

fn keys_without_hot(m: &Map) -> Vec<String> {
    let mut keys: Vec<String> = m.keys().filter(|k| *k != HOT).cloned().collect();
    keys.sort();
    keys
}

/// The scenario: 100 masters write one key concurrently; a hub whose cap
/// takes them (200) holds 100 siblings; a receiver with the default cap of 64 syncs
/// with it while 10,000 other keys are written on both sides. Before containment the
/// receiver refused every delta (0 of the 10,000 keys arrived) and writers stalled.
#[test]
fn one_key_over_the_cap_does_not_stall_the_link() {
    scenario(100, 64, 5_000);
}

/// The same with a cap of 4 and 10 writers, on the driver's default timers.
#[test]
fn a_small_hot_key_on_default_timers() {
    scenario(10, 4, 50);
}

/// `writers` masters race on one key, a hub (cap `2 * writers`) collects them, a
/// receiver and the writers have `cap`; the hub and the receiver each write `keys`
/// ordinary keys, each writer one more.
fn scenario(writers: usize, cap: usize, keys: u32) {
    let mut caps = vec![2 * writers, cap];
    caps.extend(std::iter::repeat_n(cap, writers));
    // A hundred peers on the hub: heartbeats every 10 s (a round of them costs the
    // hub O(peers^2) context work) keep the debug build quick.
    let heartbeat_ms = if writers > 20 { 10_000 } else { 1_000 };
    let mut net = Net::star(&caps, |c| {
        c.heartbeat_ms(heartbeat_ms)
            .anti_entropy_ms(6 * heartbeat_ms.max(5_000))
    });
    net.run_for(3 * heartbeat_ms); // everyone introduces itself (protocol version 2 or later)
    let (hub, receiver) = (0, 1);

    for w in 0..writers {
        let n = w as u32;
        let e = &mut net.engines[2 + w];
        e.update(|m, hlc| m.write(HOT.into(), n, hlc)).unwrap();
        e.update(|m, hlc| m.write(format!("w{w:03}"), n, hlc))
            .unwrap();
    }
    for i in 0..keys {
        net.engines[hub]
            .update(|m, hlc| m.write(format!("h{i:05}"), i, hlc))
            .unwrap();
        net.engines[receiver]
            .update(|m, hlc| m.write(format!("r{i:05}"), i, hlc))
            .unwrap();
    }
    net.run_for(3 * heartbeat_ms.max(10_000));

    // Every ordinary key arrived everywhere, in both directions: nobody stalled.
    let expected = keys_without_hot(net.engines[hub].state());
    assert_eq!(expected.len(), 2 * keys as usize + writers);
    for (i, e) in net.engines.iter().enumerate() {
        assert_eq!(keys_without_hot(e.state()), expected, "engine {i}");
    }
    assert!(net.refused.is_empty(), "{:?}", &net.refused[..1]);
    assert_eq!(
        net.engines[hub].state().get(HOT).unwrap().values().count(),
        writers
    );

    // The receiver contains the key and says so: it took as many of the writes as
    // fit under its cap and set the rest aside, claiming none of those.
    let set_aside = (writers - cap) as u64;
    let hot = net.engines[receiver].hot_keys();
    assert_eq!(hot.len(), 1, "{hot:?}");
    assert_eq!(hot[0].key, HOT);
    assert_eq!(hot[0].from, [net.engines[hub].node()]);
    assert_eq!(hot[0].siblings, writers);
    assert_eq!(hot[0].set_aside.dot_count(), set_aside);
    let metrics = net.engines[receiver].metrics();
    assert_eq!(metrics.contained_hot_keys, 1);
    assert_eq!(metrics.set_aside_writes, set_aside);
    assert!(metrics.hot_keys_set_aside >= 1);
    let held = net.engines[receiver].state().get(HOT).unwrap();
    assert_eq!(held.values().count(), cap);
    let missing = hot_dots(&net.engines[hub])
        .into_iter()
        .filter(|(_, dot)| !net.engines[receiver].context().contains(*dot))
        .count();
    assert_eq!(missing as u64, set_aside);
    // So do the writers: each holds its own write and as many others as fit.
    for w in 0..writers {
        let e = &net.engines[2 + w];
        let held = e.state().get(HOT).unwrap();
        assert_eq!(held.values().count(), cap, "writer {w}");
        assert!(held.values().any(|v| *v == w as u32), "writer {w}");
        assert_eq!(e.hot_keys().len(), 1, "writer {w}");
        assert_eq!(
            e.hot_keys()[0].set_aside.dot_count(),
            set_aside,
            "writer {w}"
        );
    }

    // While contained, the hub offers the set-aside writes again, on its backed-off
    // retransmission timer (10 s, plus the relay delay of two heartbeats) and at
    // anti-entropy: a bounded trickle, not a loop.
    let window_ms = 60_000;
    let reported = net.reports[receiver];
    assert!(reported >= 1);
    let (count0, bytes0) = net.deltas_between(hub, receiver);
    let total0 = net.bytes_between(hub, receiver);
    net.run_for(window_ms);
    let (count1, bytes1) = net.deltas_between(hub, receiver);
    let (resends, resent) = (count1 - count0, bytes1 - bytes0);
    let total = net.bytes_between(hub, receiver) - total0;
    let entry = serde_json::to_vec(net.engines[hub].state().get(HOT).unwrap())
        .unwrap()
        .len() as u64;
    eprintln!(
        "{writers} writers, cap {cap}: while contained the hub resent {resends} deltas \
         ({resent} bytes; the hot entry alone is {entry} bytes) to the receiver in \
         {} s, of {total} bytes in all (heartbeats included)",
        window_ms / 1_000
    );
    let periods = window_ms / 10_000 + window_ms / 30_000 + 2;
    assert!(resends <= periods, "{resends} resends in {window_ms} ms");
    assert!(
        resent <= resends * (2 * entry + 8_192),
        "{resent} bytes resent"
    );
    assert_eq!(net.engines[receiver].hot_keys().len(), 1);
    assert!(net.refused.is_empty());
    // Resends of the same writes are not reported again.
    assert_eq!(net.reports[receiver], reported);

    // The application at the hub resolves the key: the collapse saw every sibling,
    // so it fits everywhere, and every replica heals by itself.
    let largest = |s: &[&u32]| **s.iter().max().unwrap();
    net.engines[hub]
        .update(|m, hlc| m.collapse(largest, hlc))
        .unwrap();
    net.run_for(4 * heartbeat_ms.max(10_000));
    let state = net.engines[hub].state().clone();
    assert_eq!(state.get(HOT).unwrap().get(), Some(&(writers as u32 - 1)));
    for (i, e) in net.engines.iter().enumerate() {
        assert_eq!(e.state(), &state, "engine {i}");
        assert!(e.hot_keys().is_empty(), "engine {i}: {:?}", e.hot_keys());
        let m = e.metrics();
        assert_eq!((m.contained_hot_keys, m.set_aside_writes), (0, 0));
        if i != hub {
            assert_eq!(m.hot_keys_healed, 1, "engine {i}");
        }
        assert!(e.is_idle(), "engine {i}");
    }
    // Healed, the link is quiet again: no more deltas.
    let (count2, _) = net.deltas_between(hub, receiver);
    net.run_for(3 * heartbeat_ms.max(10_000));
    assert_eq!(net.deltas_between(hub, receiver).0, count2);
    assert!(net.refused.is_empty());
}

/// The dots of the hot key's siblings at `e`, with the writer's index.
fn hot_dots(e: &Engine) -> Vec<(usize, concord::Dot)> {
    e.state()
        .get(HOT)
        .unwrap()
        .siblings()
        .map(|(dot, v)| (*v as usize, dot))
        .collect()
}

/// The simulator property: hot keys over the cap among ordinary keys, under loss,
/// duplication, reordering, partitions, crashes and chunked catch-ups.
#[cfg(feature = "testing")]
mod simulated {
    use std::collections::BTreeSet;

    use concord::testing::sim::{action_with, faults, message_limit, Action, Faults, Sim};
    use concord::testing::Operation;
    use concord::{Hlc, Limits, ManualClock, Result};
    use proptest::prelude::*;

    use super::Map;

    const HOT_KEYS: [&str; 2] = ["hot0", "hot1"];
    const CAP: usize = 2;

    /// An ordinary write (a fresh key: one writer, never over the cap) or a write to
    /// one of the keys every node races on.
    #[derive(Clone, Debug)]
    enum Op {
        Fresh(u8),
        Hot(usize, u8),
    }

    thread_local! {
        /// Fresh keys written so far in this case: each key has one writer and one
        /// write. (Not numbered by the writer's counter in its state: a node restarted
        /// from a snapshot older than its last writes lacks them until its peers send
        /// them back, so it would write the same key names again, unaware of the first
        /// writes: three of those on one key are a hot key, not an ordinary one.)
        static FRESH: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    impl Operation<Map> for Op {
        fn apply(&self, m: &mut Map, hlc: &mut Hlc<ManualClock>) -> Result<Map> {
            match self {
                Op::Fresh(v) => {
                    let me = hlc.replica();
                    let next = FRESH.with(|n| {
                        n.set(n.get() + 1);
                        n.get()
                    });
                    m.write(format!("{me}/{next}"), u32::from(*v), hlc)
                }
                Op::Hot(k, v) => m.write(HOT_KEYS[*k].into(), u32::from(*v), hlc),
            }
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u8>().prop_map(Op::Fresh),
            (0..HOT_KEYS.len(), any::<u8>()).prop_map(|(k, v)| Op::Hot(k, v)),
        ]
    }

    fn is_hot(key: &str) -> bool {
        HOT_KEYS.contains(&key)
    }

    /// Every ordinary key the same at every node (present everywhere or nowhere).
    fn ordinary_keys_agree(sim: &Sim<Map>) -> std::result::Result<(), TestCaseError> {
        let keys: BTreeSet<&String> = (0..sim.len())
            .flat_map(|i| sim.engine(i).state().keys())
            .filter(|k| !is_hot(k))
            .collect();
        for key in keys {
            let first = sim.engine(0).state().get(key);
            for i in 1..sim.len() {
                prop_assert_eq!(
                    sim.engine(i).state().get(key),
                    first,
                    "ordinary key {} differs at node {}",
                    key,
                    i
                );
            }
        }
        Ok(())
    }

    proptest! {
        // 32 cases by default; `CONCORD_SIM_CASES` for a long run.
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("CONCORD_SIM_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(32)
        ))]

        /// Ordinary keys converge everywhere while hot keys are contained; the hot
        /// keys converge once a resolver (node 0) collapses them, again and again
        /// (each time it takes what fits under the cap and writes over it).
        #[test]
        fn hot_keys_are_contained_and_heal_once_resolved(
            nodes in 3usize..=5,
            seed in any::<u64>(),
            faults in faults(),
            limit in message_limit(),
            program in proptest::collection::vec(action_with(op(), 5), 1..60),
            burst in proptest::collection::vec(any::<u8>(), 3..=5),
        ) {
            contained_and_healed(nodes, seed, faults, limit, program, burst)?;
        }
    }

    /// OPEN BUG, ignored: a schedule that leaves a hot key unhealed at one replica
    /// (about one random case in tens of thousands; none failed in 20,000 here). A
    /// replica that contains the key learns, with the writes it sets aside, the
    /// removals they made (a collapse kills the siblings), and tells those removals
    /// on without their cause. A peer logs them against a context lacking the
    /// collapse and counts as told any replica whose context covers the dead
    /// siblings, which a replica holding them alive does. Withholding such removals
    /// until their cause is taken was tried and made things worse (a write relayed
    /// meanwhile goes without the removals it had seen:
    /// `hot_keys_heal_regression_seed_17046043080849072328` then fails). Run with
    /// `cargo test --all-features --test hot_keys -- --ignored`.
    #[test]
    #[ignore = "open bug: a removal caused by a set-aside collapse is relayed without its cause"]
    fn hot_keys_heal_regression_seed_17179695038294354814() {
        let faults = Faults {
            loss: 38,
            duplicate: 7,
            reorder: true,
        };
        let program = vec![
            Action::Sync { from: 2, to: 0 },
            Action::Deliver { count: 3 },
            Action::Deliver { count: 6 },
            Action::Deliver { count: 1 },
            Action::Write {
                node: 4,
                op: Op::Hot(0, 1),
            },
        ];
        contained_and_healed(
            5,
            17179695038294354814,
            faults,
            Some(2000),
            program,
            vec![97, 1, 167],
        )
        .unwrap();
    }

    /// A schedule with crashes that a first fix of the bug above (withholding a
    /// removal learned with a set-aside collapse until the collapse is taken) left
    /// unhealed: a write relayed meanwhile went without the removals it had seen.
    #[test]
    fn hot_keys_heal_regression_seed_17046043080849072328() {
        let faults = Faults {
            loss: 50,
            duplicate: 0,
            reorder: false,
        };
        let program = vec![
            Action::Push { node: 2 },
            Action::Crash { node: 0 },
            Action::Advance { ms: 157 },
            Action::Push { node: 4 },
            Action::Sync { from: 0, to: 0 },
            Action::Sync { from: 1, to: 0 },
            Action::Write {
                node: 4,
                op: Op::Hot(0, 0),
            },
            Action::Sync { from: 3, to: 0 },
            Action::Crash { node: 1 },
            Action::Deliver { count: 2 },
            Action::Write {
                node: 0,
                op: Op::Hot(0, 0),
            },
            Action::Partition {
                side_a: 1226697175109806327,
            },
            Action::Advance { ms: 1843 },
            Action::Deliver { count: 4 },
            Action::Deliver { count: 6 },
            Action::Write {
                node: 0,
                op: Op::Fresh(0),
            },
            Action::Deliver { count: 4 },
        ];
        contained_and_healed(
            5,
            17046043080849072328,
            faults,
            Some(2000),
            program,
            vec![0, 0, 0, 1],
        )
        .unwrap();
    }

    /// Ordinary keys converge everywhere while hot keys are contained; the hot keys
    /// converge once a resolver (node 0) collapses them, again and again (each time it
    /// takes what fits under the cap and writes over it).
    fn contained_and_healed(
        nodes: usize,
        seed: u64,
        faults: Faults,
        limit: Option<usize>,
        program: Vec<Action<Op>>,
        burst: Vec<u8>,
    ) -> std::result::Result<(), TestCaseError> {
        FRESH.with(|n| n.set(0));
        let capped = Limits {
            max_siblings: CAP,
            ..Limits::default()
        };
        let mut sim = Sim::<Map>::new(nodes, seed, faults).with_limits(capped);
        if let Some(bytes) = limit {
            sim = sim.with_message_limit(bytes);
        }
        sim.run(program);
        // A burst on one key from every node at once: over the cap for sure.
        for (node, v) in burst.iter().enumerate() {
            sim.step(Action::Write {
                node,
                op: Op::Hot(0, *v),
            });
        }
        sim.quiesce();
        prop_assert_eq!(sim.stats().rejected, 0, "{:?}", sim.last_error());
        ordinary_keys_agree(&sim)?;
        // Only the raced keys are contained, and they are contained somewhere.
        let mut contained = BTreeSet::new();
        for i in 0..sim.len() {
            for hot in sim.engine(i).hot_keys() {
                prop_assert!(is_hot(&hot.key), "{} contained at node {}", hot.key, i);
                prop_assert!(hot.siblings > CAP);
                contained.insert(hot.key);
            }
        }
        prop_assert!(contained.contains(HOT_KEYS[0]));

        // The resolver (node 0's application) collapses what it holds every second,
        // over the same faulty network; the rest then fits, and so on. A node at
        // the cap takes at least one more write per collapse.
        let largest = |s: &[&u32]| **s.iter().max().unwrap();
        for _ in 0..2_000 {
            let resolved = sim.engine(0).state().conflicted_keys().count() == 0;
            if resolved
                && sim.converged()
                && (0..sim.len()).all(|i| sim.engine(i).hot_keys().is_empty())
            {
                break;
            }
            // Collapse the conflicted keys, and write back the keys held contained
            // whose siblings here all agree (not conflicted, so `collapse` leaves
            // them, yet at the cap they take nothing more).
            let resolver = sim.engine_mut(0);
            let hot: Vec<String> = resolver.hot_keys().into_iter().map(|h| h.key).collect();
            resolver
                .update(|m, hlc| {
                    m.collapse(largest, hlc)?;
                    for key in &hot {
                        if let Some(v) = m.resolved(key, largest) {
                            m.write(key.clone(), v, hlc)?;
                        }
                    }
                    Ok::<_, concord::Error>(())
                })
                .unwrap();
            for node in 0..sim.len() {
                sim.step(Action::<Op>::Push { node });
            }
            sim.step(Action::<Op>::Deliver { count: 10_000 });
            sim.step(Action::<Op>::Advance { ms: 1_000 });
        }
        sim.quiesce();
        prop_assert!(
            sim.converged(),
            "the hot keys did not converge once resolved"
        );
        prop_assert_eq!(sim.stats().rejected, 0, "{:?}", sim.last_error());
        for key in HOT_KEYS {
            if let Some(reg) = sim.engine(0).state().get(key) {
                // (Siblings that all hold one value are resolved: `collapse` leaves
                // them, and they read as that value.)
                prop_assert!(!reg.is_conflicted(), "{} still conflicted", key);
            }
        }
        // A key stays listed only for writes that no replica holds any more (every
        // holder crashed before persisting them): they can never be taken.
        for i in 0..sim.len() {
            for hot in sim.engine(i).hot_keys() {
                for dot in hot.set_aside.dots() {
                    for j in 0..sim.len() {
                        prop_assert!(
                            !sim.engine(j).context().contains(dot),
                            "node {} still sets aside {} of {}, which node {} holds",
                            i,
                            dot,
                            hot.key,
                            j
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Containment keeps the state a lattice: the containing merge takes a part of what
/// it received (a state between the receiver and the plain merge), the rest completes
/// it, ordinary keys come out exactly as from the plain merge, and the cap holds.
#[cfg(feature = "testing")]
mod laws {
    use concord::testing::{reachable_states, Operation};
    use concord::{Crdt, Error, Hlc, Limits, ManualClock, Resolver, Result};
    use proptest::prelude::*;

    use super::Map;

    #[derive(Clone, Debug)]
    enum Op {
        Write(u8, u8),
        Remove(u8),
    }

    impl Operation<Map> for Op {
        fn apply(&self, m: &mut Map, hlc: &mut Hlc<ManualClock>) -> Result<Map> {
            match self {
                Op::Write(k, v) => m.write(format!("k{k}"), u32::from(*v), hlc),
                Op::Remove(k) => m.remove(&format!("k{k}"), hlc),
            }
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..3u8, any::<u8>()).prop_map(|(k, v)| Op::Write(k, v)),
            1 => (0..3u8).prop_map(Op::Remove),
        ]
    }

    fn joined(a: &Map, b: &Map) -> Map {
        let mut out = a.clone();
        out.merge(b.clone());
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn containment_is_a_partial_join(
            states in reachable_states::<Map, _>(op()),
            cap in 1usize..4,
        ) {
            let (a, b, c) = (&states[0], &states[1], &states[2]);
            let limits = Limits { max_siblings: cap, ..Limits::default() };
            for other in [b.clone(), b.delta_since_context(a.context())] {
                let plain = joined(a, &other);
                let mut contained = a.clone();
                let mut aside = Vec::new();
                contained
                    .try_merge_containing(other.clone(), &limits, &mut (), u64::MAX, &mut aside)
                    .unwrap();
                // Between the receiver and the plain merge; the rest completes it.
                prop_assert_eq!(&joined(&contained, a), &contained);
                prop_assert_eq!(&joined(&plain, &contained), &plain);
                prop_assert_eq!(&joined(&contained, &other), &plain);
                // A third replica converges whichever it hears first.
                prop_assert_eq!(
                    joined(&joined(c, &contained), &other),
                    joined(c, &plain)
                );
                prop_assert!(contained.validate(&Limits::default()).is_ok());
                // Ordinary keys exactly as in the plain merge; hot keys under the cap
                // (or no larger than before), their set-aside writes unclaimed.
                let hot: Vec<&String> = aside.iter().map(|h| &h.key).collect();
                for key in plain.keys().chain(contained.keys()) {
                    if hot.contains(&key) {
                        continue;
                    }
                    prop_assert_eq!(contained.get(key), plain.get(key), "key {}", key);
                }
                for h in &aside {
                    prop_assert!(h.siblings > cap);
                    prop_assert!(!h.dots.is_empty());
                    let held = contained.get(&h.key).map_or(0, |r| r.values().count());
                    let before = a.get(&h.key).map_or(0, |r| r.values().count());
                    prop_assert!(held <= cap.max(before), "{} holds {}", h.key, held);
                    for dot in h.dots.dots() {
                        prop_assert!(!contained.context().contains(dot));
                        prop_assert!(plain.context().contains(dot));
                    }
                }
                // Nothing to contain: it is the plain, capped merge (which also refuses
                // a register already over the cap here, a cap lowered since, that the
                // containing merge takes as it adds no sibling).
                let mut refused = a.clone();
                let result = refused.try_merge(other.clone(), &limits, &mut ());
                let over_already = a.values().any(|r| r.values().count() > cap);
                if !aside.is_empty() {
                    prop_assert!(result.is_err());
                } else if result.is_ok() {
                    prop_assert_eq!(&refused, &contained);
                } else {
                    prop_assert!(over_already, "refused, yet nothing to contain");
                    prop_assert_eq!(&contained, &plain);
                }
                if !aside.is_empty() {
                    // Past the budget, nothing changes and the error is the cap's.
                    let mut over = a.clone();
                    let e = over
                        .try_merge_containing(other.clone(), &limits, &mut (), 0, &mut Vec::new())
                        .unwrap_err();
                    prop_assert!(matches!(e, Error::TooManySiblings { .. }), "{}", e);
                    prop_assert_eq!(&over, a);
                }
            }
            // Idempotent.
            let mut same = a.clone();
            let mut aside = Vec::new();
            same.try_merge_containing(a.clone(), &limits, &mut (), u64::MAX, &mut aside)
                .unwrap();
            prop_assert_eq!(&same, a);
        }
    }
}

/// A key contained because of writes whose only holder then restarts from a snapshot
/// that lacks them: those writes will never come again, and the key leaves the list
/// (before, it stayed listed for good).
#[test]
fn set_aside_writes_lost_with_their_only_holder_are_forgotten() {
    use concord::{Hlc, Resolver};

    let time = ManualClock::new(START_MS);
    let mut hub_state = Map::new();
    for writer in 10..13 {
        let mut hlc = Hlc::new(id(writer), time.clone());
        let mut m = Map::new();
        m.write(HOT.into(), writer as u32, &mut hlc).unwrap();
        hub_state.merge(m);
    }
    assert_eq!(hub_state.get(HOT).unwrap().values().len(), 3);
    let config = |me: u128, peer: u128, cap: usize| {
        Config::with_peers([id(peer)])
            .limits(capped(cap))
            .incarnation(id(1000 + me))
    };
    let mut net = Net::star(&[200, 2], |c| c);
    net.engines[0] = SyncEngine::new(id(1), hub_state, time.clone(), config(1, 2, 200));
    net.engines[1] = SyncEngine::new(id(2), Map::new(), time.clone(), config(2, 1, 2));
    net.time = time.clone();
    net.run_for(5_000);
    assert_eq!(
        net.engines[1].hot_keys().len(),
        1,
        "the receiver holds the key contained"
    );

    // The hub restarts from a snapshot that never held the key (a new boot).
    let restarted = Config::with_peers([id(2)])
        .limits(capped(200))
        .incarnation(id(2000));
    net.engines[0] = SyncEngine::new(id(1), Map::new(), time.clone(), restarted);
    net.run_for(5_000);
    assert!(
        net.engines[1].hot_keys().is_empty(),
        "{:?}",
        net.engines[1].hot_keys()
    );
    assert_eq!(net.engines[0].state(), net.engines[1].state());
}
