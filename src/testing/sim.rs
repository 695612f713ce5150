//! A deterministic, seeded network simulator for testing replication setups.
//!
//! [`Sim`] runs N [`SyncEngine`]s in one process over a simulated network that loses,
//! duplicates and reorders messages, splits into partitions and heals, and crashes
//! replicas, which restart from their last snapshot. Everything is driven by one
//! [`Action`] enum, so a property test, a fuzz target and your own tests can share
//! scenarios; the same seed and actions always give the same run. Messages travel as
//! encoded bytes, so the wire format is exercised too. The writes are your
//! [`Operation`]s.
//!
//! [`check_setup`](super::check_setup) runs random simulations of your setup in one
//! call; the strategies it draws them from ([`action`], [`faults`], [`message_limit`])
//! and the checks it makes once a simulation is quiet ([`check_quiesced`]) are here for
//! properties of your own.
//!
//! ```
//! use concord::testing::sim::{Action, Faults, Sim};
//! use concord::testing::Operation;
//! use concord::{Hlc, ManualClock, MvRegister, OrMap, Result};
//!
//! /// The application's write: set `key` to `value`.
//! #[derive(Clone, Debug)]
//! struct Put(&'static str, u8);
//!
//! impl Operation<OrMap<String, MvRegister<u8>>> for Put {
//!     fn apply(
//!         &self,
//!         map: &mut OrMap<String, MvRegister<u8>>,
//!         hlc: &mut Hlc<ManualClock>,
//!     ) -> Result<OrMap<String, MvRegister<u8>>> {
//!         map.write(self.0.to_string(), self.1, hlc)
//!     }
//! }
//!
//! let mut sim = Sim::new(3, 42, Faults::lossy());
//! sim.run([
//!     Action::Partition { side_a: 0b001 },
//!     Action::Write { node: 0, op: Put("x", 1) },
//!     Action::Write { node: 1, op: Put("x", 2) },
//!     Action::Push { node: 0 },
//!     Action::Push { node: 1 },
//!     Action::Deliver { count: 10 },
//!     Action::Heal,
//! ]);
//! sim.quiesce();
//! assert!(sim.converged());
//! let x = sim.engine(2).state().get(&"x".to_string()).unwrap();
//! assert_eq!(x.values().count(), 2); // the partitioned writes raced: both kept
//! ```

use std::fmt;

use proptest::prelude::*;

/// The `arbitrary` crate (feature `arbitrary`), which [`Action`] and [`Faults`]
/// implement, for fuzz targets that build simulator programs from bytes.
#[cfg(feature = "arbitrary")]
pub use arbitrary;
use serde::{Deserialize, Serialize};

use super::{CheckResult, Operation};
use crate::causal::Crdt;
use crate::hlc::ManualClock;
use crate::id::{Dot, ReplicaId};
use crate::sync::{Config, MemoryLease, Snapshot, SyncEngine};

/// A small deterministic pseudo-random generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p` (in percent, 0–100).
    pub fn percent(&mut self, p: u8) -> bool {
        self.below(100) < p as usize
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<X>(&mut self, items: &mut [X]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// The network's misbehaviour, in percent per delivered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// Chance that a message is lost.
    pub loss: u8,
    /// Chance that a delivered message is delivered again later.
    pub duplicate: u8,
    /// Deliver in-flight messages in random order instead of the order sent.
    pub reorder: bool,
}

impl Faults {
    /// A perfect network: no loss, no duplicates, in order.
    pub fn none() -> Self {
        Faults {
            loss: 0,
            duplicate: 0,
            reorder: false,
        }
    }

    /// A bad network: 20% loss, 10% duplicates, reordering.
    pub fn lossy() -> Self {
        Faults {
            loss: 20,
            duplicate: 10,
            reorder: true,
        }
    }
}

/// One step of a simulation. Node numbers are taken modulo the number of nodes, so any
/// generated value is valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action<W> {
    /// A local write at `node`.
    Write {
        /// The writing node.
        node: usize,
        /// The application's write.
        op: W,
    },
    /// `from` sends whatever its driver has for anyone (the pair is kept for
    /// scenario compatibility: the driver decides the addressees).
    Sync {
        /// The node opening the session.
        from: usize,
        /// Its peer.
        to: usize,
    },
    /// `node` drains its driver ([`SyncEngine::poll_transmit`]).
    Push {
        /// The pushing node.
        node: usize,
    },
    /// Up to `count` in-flight messages are delivered (or lost, or duplicated).
    Deliver {
        /// How many.
        count: usize,
    },
    /// The network splits: nodes whose bit is set in `side_a` on one side, the rest on
    /// the other. Messages across are lost.
    Partition {
        /// Bit `i` set: node `i` is on side A.
        side_a: u64,
    },
    /// The partition heals.
    Heal,
    /// `node` persists a snapshot.
    Snapshot {
        /// The node.
        node: usize,
    },
    /// `node` crashes, losing everything since its last snapshot, and restarts from it
    /// (or, half the time at random, from the snapshot before that) with its counter lease,
    /// under the same node id.
    Crash {
        /// The node.
        node: usize,
    },
    /// Simulated time passes; every node handles its timeouts.
    Advance {
        /// Milliseconds.
        ms: u64,
    },
}

/// Fuzzers' structured input (feature `arbitrary`): an action drawn as [`action`]
/// draws it (node numbers 0 to 7, taken modulo the number of nodes; deliveries of up
/// to 16 messages; time passing up to 10 s), so that a fuzz target decodes its bytes
/// into a program of small, valid steps.
#[cfg(feature = "arbitrary")]
impl<'a, W: arbitrary::Arbitrary<'a>> arbitrary::Arbitrary<'a> for Action<W> {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let node = |u: &mut arbitrary::Unstructured<'a>| u.int_in_range(0..=7usize);
        Ok(match u.int_in_range(0..=19u8)? {
            0..=5 => Action::Write {
                node: node(u)?,
                op: W::arbitrary(u)?,
            },
            6 | 7 => Action::Sync {
                from: node(u)?,
                to: node(u)?,
            },
            8..=10 => Action::Push { node: node(u)? },
            11..=14 => Action::Deliver {
                count: u.int_in_range(0..=16)?,
            },
            15 => Action::Partition {
                side_a: <u64 as arbitrary::Arbitrary>::arbitrary(u)?,
            },
            16 => Action::Heal,
            17 => Action::Snapshot { node: node(u)? },
            18 => Action::Crash { node: node(u)? },
            _ => Action::Advance {
                ms: u.int_in_range(0..=10_000)?,
            },
        })
    }
}

/// Fuzzers' structured input (feature `arbitrary`): up to 60% loss and duplicates.
#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Faults {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Faults {
            loss: u.int_in_range(0..=60)?,
            duplicate: u.int_in_range(0..=60)?,
            reorder: <bool as arbitrary::Arbitrary>::arbitrary(u)?,
        })
    }
}

/// What happened during a simulation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Local writes applied.
    pub writes: u64,
    /// Messages sent.
    pub sent: u64,
    /// Messages delivered and accepted.
    pub delivered: u64,
    /// Messages lost (to faults or partitions).
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Messages rejected by their receiver (should stay 0 between honest replicas).
    pub rejected: u64,
    /// Concurrent writes reported by receivers.
    pub conflicts: u64,
    /// Crashes.
    pub crashes: u64,
    /// Replicated writes lost because every replica holding them crashed before a
    /// snapshot.
    pub lost_in_crashes: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Local writes whose dot had been issued before (must stay 0: a reused dot
    /// names two different writes).
    pub reused_dots: u64,
}

/// Adds up the counts of several simulations.
impl std::ops::AddAssign<&Stats> for Stats {
    fn add_assign(&mut self, other: &Stats) {
        // Destructured, so that a new counter cannot be forgotten here.
        let Stats {
            writes,
            sent,
            delivered,
            lost,
            duplicated,
            rejected,
            conflicts,
            crashes,
            lost_in_crashes,
            bytes,
            reused_dots,
        } = other;
        self.writes += writes;
        self.sent += sent;
        self.delivered += delivered;
        self.lost += lost;
        self.duplicated += duplicated;
        self.rejected += rejected;
        self.conflicts += conflicts;
        self.crashes += crashes;
        self.lost_in_crashes += lost_in_crashes;
        self.bytes += bytes;
        self.reused_dots += reused_dots;
    }
}

struct InFlight {
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

struct Node<T: Crdt> {
    engine: SyncEngine<T, ManualClock>,
    snapshot: Option<Snapshot<T>>,
    older: Option<Snapshot<T>>,
    lease: MemoryLease,
}

/// A simulated cluster of replicas over a faulty network.
pub struct Sim<T: Crdt + Default> {
    nodes: Vec<Node<T>>,
    ids: Vec<ReplicaId>,
    network: Vec<InFlight>,
    rng: Rng,
    faults: Faults,
    side_a: Option<u64>,
    time: ManualClock,
    stats: Stats,
    /// Writes with the number of peers that held them when their writer crashed.
    crashed_writes: Vec<(Dot, usize)>,
    last_error: Option<crate::Error>,
    config: Config,
    /// The last dot of every local write (to catch a dot issued twice).
    issued: std::collections::HashSet<Dot>,
    /// Crashed nodes restart from their state at the crash (see `with_durable_crashes`).
    durable_crashes: bool,
    /// Every conflict reported, if kept (see `with_conflict_log`).
    conflict_log: Option<Vec<Reported<T::Key, T::Value>>>,
    /// How many times each node has restarted.
    boots: Vec<u32>,
    /// The protocol version each node speaks, if not the configured one (see
    /// `with_rolling_upgrade`).
    versions: Option<Vec<u32>>,
}

/// A conflict a node reported (see [`Sim::with_conflict_log`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Reported<K, V> {
    /// The node that reported it (its index).
    pub node: usize,
    /// How many times that node had restarted when it reported it.
    pub boot: u32,
    /// The report.
    pub conflict: crate::Conflict<K, V>,
}

impl<T: Crdt + Default> Sim<T> {
    /// `n` masters, all peers of each other, over a network with `faults`, seeded with
    /// `seed`.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn new(n: usize, seed: u64, faults: Faults) -> Self {
        assert!(n > 0, "a simulation needs at least one node");
        let mut rng = Rng::new(seed);
        let ids: Vec<ReplicaId> = (1..=n as u128).map(ReplicaId::from_u128).collect();
        let time = ManualClock::new(1_700_000_000_000);
        let config = Config::with_peers(ids.iter().copied());
        let nodes = ids
            .iter()
            .map(|id| {
                let lease = MemoryLease::new();
                let boot = ReplicaId::from_u128(rng.next_u64() as u128 | 1 << 64);
                let engine = SyncEngine::new(
                    *id,
                    T::default(),
                    time.clone(),
                    config.clone().incarnation(boot),
                )
                .with_lease(lease.clone())
                .expect("a memory lease loads");
                Node {
                    engine,
                    snapshot: None,
                    older: None,
                    lease,
                }
            })
            .collect();
        Sim {
            nodes,
            ids,
            network: Vec::new(),
            rng,
            faults,
            side_a: None,
            time,
            stats: Stats::default(),
            crashed_writes: Vec::new(),
            last_error: None,
            config,
            issued: std::collections::HashSet::new(),
            durable_crashes: false,
            conflict_log: None,
            boots: vec![0; n],
            versions: None,
        }
    }

    /// The same simulation with every engine refusing messages above `bytes` (and so
    /// chunking catch-ups larger than that).
    pub fn with_message_limit(mut self, bytes: usize) -> Self {
        self.config.max_message_bytes = bytes;
        self.rebuilt()
    }

    /// The same simulation with every engine applying `limits` to what it receives: a
    /// low [`Limits::max_siblings`](crate::Limits::max_siblings) makes keys that many
    /// nodes write at once *hot*, contained by the engines (see
    /// [`SyncEngine::hot_keys`]).
    ///
    /// ```
    /// use concord::testing::sim::{Faults, Sim};
    /// use concord::{Limits, MvRegister, OrMap};
    ///
    /// let capped = Limits { max_siblings: 2, ..Limits::default() };
    /// let sim = Sim::<OrMap<String, MvRegister<u8>>>::new(3, 7, Faults::none()).with_limits(capped);
    /// assert_eq!(sim.engine(0).config().limits.max_siblings, 2);
    /// ```
    pub fn with_limits(mut self, limits: crate::Limits) -> Self {
        self.config.limits = limits;
        self.rebuilt()
    }

    /// The same simulation with every engine taking its counter lease in blocks of
    /// `block` counters ([`Config::lease_block`]): a restart then skips the unused
    /// rest of a block.
    ///
    /// ```
    /// use concord::testing::sim::{Faults, Sim};
    /// use concord::{MvRegister, OrMap};
    ///
    /// let sim = Sim::<OrMap<String, MvRegister<u8>>>::new(3, 7, Faults::none()).with_lease_block(16);
    /// assert_eq!(sim.engine(0).config().lease_block, 16);
    /// ```
    pub fn with_lease_block(mut self, block: u64) -> Self {
        self.config.lease_block = block;
        self.rebuilt()
    }

    /// The same simulation with counter folding on or off in every engine
    /// ([`Config::fold_counters`]).
    ///
    /// ```
    /// use concord::testing::sim::{Faults, Sim};
    /// use concord::{OrMap, PnCounter};
    ///
    /// let sim = Sim::<OrMap<String, PnCounter>>::new(3, 7, Faults::none()).with_fold_counters(true);
    /// assert!(sim.engine(0).config().fold_counters);
    /// ```
    pub fn with_fold_counters(mut self, on: bool) -> Self {
        self.config.fold_counters = on;
        self.rebuilt()
    }

    /// The same simulator with durable crashes (`on`): a crashed node restarts from
    /// everything it had at the crash, as a node that persists before it sends
    /// (`fsync always`) does, under a new boot; messages it sent stay in flight.
    /// Off (the default), it restarts from its last snapshot or the one before.
    ///
    /// ```
    /// use concord::testing::sim::{Faults, Sim};
    /// use concord::{OrMap, PnCounter};
    ///
    /// let sim = Sim::<OrMap<String, PnCounter>>::new(3, 7, Faults::none()).with_durable_crashes(true);
    /// assert_eq!(sim.len(), 3);
    /// ```
    pub fn with_durable_crashes(mut self, on: bool) -> Self {
        self.durable_crashes = on;
        self
    }

    /// Keeps every conflict the nodes report, with the reporter (see
    /// [`Sim::conflict_log`]), so that a test can check each report against what
    /// really raced. Off by default.
    ///
    /// ```
    /// use concord::testing::sim::{Faults, Sim};
    /// use concord::{OrMap, PnCounter};
    ///
    /// let sim = Sim::<OrMap<String, PnCounter>>::new(3, 7, Faults::none()).with_conflict_log(true);
    /// assert!(sim.conflict_log().is_empty());
    /// ```
    pub fn with_conflict_log(mut self, on: bool) -> Self {
        self.conflict_log = on.then(Vec::new);
        self
    }

    /// The conflicts reported so far, in the order they were, if
    /// [`Sim::with_conflict_log`] is on (else empty).
    pub fn conflict_log(&self) -> &[Reported<T::Key, T::Value>] {
        self.conflict_log.as_deref().unwrap_or(&[])
    }

    /// A rolling upgrade: node `i` starts speaking protocol version `versions[i]` (the
    /// newest where `versions` has no entry) and, at its first restart, is upgraded to
    /// the newest, [`PROTOCOL_VERSION`](crate::sync::PROTOCOL_VERSION). Nodes of every
    /// version replicate with one another meanwhile.
    ///
    /// ```
    /// use concord::testing::sim::{Faults, Sim};
    /// use concord::{OrMap, PnCounter};
    ///
    /// let sim = Sim::<OrMap<String, PnCounter>>::new(3, 7, Faults::none())
    ///     .with_rolling_upgrade(&[2, 3]);
    /// assert_eq!(sim.engine(0).config().protocol_version, 2);
    /// assert_eq!(sim.engine(2).config().protocol_version, concord::sync::PROTOCOL_VERSION);
    /// ```
    pub fn with_rolling_upgrade(mut self, versions: &[u32]) -> Self {
        let newest = self.config.protocol_version;
        self.versions = Some(
            (0..self.nodes.len())
                .map(|i| versions.get(i).copied().unwrap_or(newest))
                .collect(),
        );
        self.rebuilt()
    }

    /// The configuration node `i` runs under boot `boot`.
    fn config_of(&self, i: usize, boot: ReplicaId) -> Config {
        let config = self.config.clone().incarnation(boot);
        match &self.versions {
            Some(v) => config.protocol_version(v[i]),
            None => config,
        }
    }

    /// Every engine built again, empty, from `self.config`.
    fn rebuilt(mut self) -> Self {
        let ids = self.ids.clone();
        for (i, id) in ids.into_iter().enumerate() {
            let boot = ReplicaId::from_u128(self.rng.next_u64() as u128 | 1 << 64);
            let config = self.config_of(i, boot);
            let node = &mut self.nodes[i];
            node.engine = SyncEngine::new(id, T::default(), self.time.clone(), config)
                .with_lease(node.lease.clone())
                .expect("a memory lease loads");
        }
        self
    }

    /// The engine of node `i`.
    pub fn engine(&self, i: usize) -> &SyncEngine<T, ManualClock> {
        &self.nodes[i % self.nodes.len()].engine
    }

    /// The engine of node `i`, mutably (to write or read outside the action list).
    pub fn engine_mut(&mut self, i: usize) -> &mut SyncEngine<T, ManualClock> {
        let n = self.nodes.len();
        &mut self.nodes[i % n].engine
    }

    /// Node `i`'s counter lease: the highest counter that has left its engine. After a
    /// crash, its dots above the lease never left, and the restarted node may issue
    /// them again.
    pub fn lease(&self, i: usize) -> u64 {
        self.nodes[i % self.nodes.len()].lease.get()
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True if there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// What happened so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Messages in flight.
    pub fn in_flight(&self) -> usize {
        self.network.len()
    }

    /// The last error a receiver returned, if any (between honest replicas there
    /// should be none).
    pub fn last_error(&self) -> Option<&crate::Error> {
        self.last_error.as_ref()
    }

    /// Every write that had reached at least one other replica when its writer crashed,
    /// with how many peers held it (less those whose every holder later crashed before
    /// persisting it, counted in [`Stats::lost_in_crashes`]).
    pub fn acknowledged_before_crash(&self) -> &[(Dot, usize)] {
        &self.crashed_writes
    }

    /// Runs the actions in order.
    pub fn run<W: Operation<T>>(&mut self, actions: impl IntoIterator<Item = Action<W>>) {
        for action in actions {
            self.step(action);
        }
    }

    /// Runs one action.
    pub fn step<W: Operation<T>>(&mut self, action: Action<W>) {
        let n = self.nodes.len();
        match action {
            Action::Write { node, op } => {
                let engine = &mut self.nodes[node % n].engine;
                if let Ok(receipt) = engine.update(|state, hlc| op.apply(state, hlc)) {
                    self.stats.writes += 1;
                    if let Some(dot) = receipt.dot {
                        if !self.issued.insert(dot) {
                            self.stats.reused_dots += 1;
                        }
                    }
                }
            }
            Action::Sync { from, .. } => self.drain(from % n),
            Action::Push { node } => self.drain(node % n),
            Action::Deliver { count } => {
                for _ in 0..count {
                    if !self.deliver_one(true) {
                        break;
                    }
                }
            }
            Action::Partition { side_a } => self.side_a = Some(side_a),
            Action::Heal => self.side_a = None,
            Action::Snapshot { node } => {
                let node = &mut self.nodes[node % n];
                node.older = node.snapshot.take();
                node.snapshot = Some(node.engine.snapshot().expect("a memory lease never fails"));
            }
            Action::Crash { node } => self.crash(node % n),
            Action::Advance { ms } => {
                self.time.advance(ms.min(60_000));
                for i in 0..n {
                    self.nodes[i].engine.handle_timeout();
                }
            }
        }
    }

    fn index_of(&self, id: ReplicaId) -> usize {
        self.ids.iter().position(|x| *x == id).expect("known node")
    }

    /// Sends everything node `i`'s driver has to send.
    fn drain(&mut self, i: usize) {
        // Bounded: a driver with a lot to say (a chunked catch-up) says it over
        // several drains, as the window and acknowledgements allow.
        for _ in 0..64 {
            let Some(t) = self.nodes[i].engine.poll_transmit() else {
                break;
            };
            let to = self.index_of(t.to);
            self.send(i, to, t.bytes);
        }
    }

    fn send(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        self.stats.sent += 1;
        self.stats.bytes += bytes.len() as u64;
        self.network.push(InFlight { from, to, bytes });
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        match self.side_a {
            Some(mask) => ((mask >> (a % 64)) & 1) != ((mask >> (b % 64)) & 1),
            None => false,
        }
    }

    /// Delivers one in-flight message; false if none was in flight.
    fn deliver_one(&mut self, with_faults: bool) -> bool {
        if self.network.is_empty() {
            return false;
        }
        let i = if with_faults && self.faults.reorder {
            self.rng.below(self.network.len())
        } else {
            0
        };
        let msg = self.network.remove(i);
        if self.cut(msg.from, msg.to) || (with_faults && self.rng.percent(self.faults.loss)) {
            self.stats.lost += 1;
            return true;
        }
        if with_faults && self.rng.percent(self.faults.duplicate) {
            self.stats.duplicated += 1;
            self.network.push(InFlight {
                from: msg.from,
                to: msg.to,
                bytes: msg.bytes.clone(),
            });
        }
        match self.nodes[msg.to].engine.handle_bytes(&msg.bytes) {
            Ok(received) => {
                self.stats.delivered += 1;
                self.stats.conflicts += received.conflicts.len() as u64;
                if let Some(log) = &mut self.conflict_log {
                    let (node, boot) = (msg.to, self.boots[msg.to]);
                    log.extend(received.conflicts.into_iter().map(|conflict| Reported {
                        node,
                        boot,
                        conflict,
                    }));
                }
                self.drain(msg.to);
            }
            Err(e) => {
                self.stats.rejected += 1;
                self.last_error = Some(e);
            }
        }
        true
    }

    fn crash(&mut self, i: usize) {
        self.stats.crashes += 1;
        self.boots[i] += 1;
        // Record which of the crashing node's writes other replicas already hold.
        let engine = &self.nodes[i].engine;
        let me = engine.incarnation();
        let written = engine.state().context().max_counter(me);
        for counter in 1..=written {
            let dot = Dot::new(me, counter);
            let holders = (0..self.nodes.len())
                .filter(|&j| j != i && self.nodes[j].engine.state().context().contains(dot))
                .count();
            if holders > 0 {
                self.crashed_writes.push((dot, holders));
            }
        }
        // Dots above the lease never left the crashed engine: issuing them again is
        // harmless (nobody holds the old ones), so they no longer count as issued.
        let leased = self.nodes[i].lease.get();
        self.issued
            .retain(|d| d.replica() != me || d.counter() <= leased);
        let boot = ReplicaId::from_u128(self.rng.next_u64() as u128 | 1 << 64);
        if let Some(v) = &mut self.versions {
            // A restart is the node's upgrade (see `with_rolling_upgrade`).
            v[i] = self.config.protocol_version;
        }
        let config = self.config_of(i, boot);
        let from_older = !self.durable_crashes && self.rng.percent(50);
        let node = &mut self.nodes[i];
        if self.durable_crashes {
            // Everything it had is on disk: it restarts from its state at the crash.
            node.snapshot = Some(node.engine.snapshot().expect("a memory lease never fails"));
        }
        let snapshot = if from_older {
            node.older.clone().or_else(|| node.snapshot.clone())
        } else {
            node.snapshot.clone()
        };
        node.engine = match snapshot {
            Some(snapshot) => SyncEngine::restore(snapshot, self.time.clone(), config)
                .expect("a snapshot taken by the simulator restores"),
            None => SyncEngine::new(self.ids[i], T::default(), self.time.clone(), config),
        }
        .with_lease(node.lease.clone())
        .expect("a memory lease loads");
        // A write whose every holder has now crashed without persisting it is gone for
        // good: that is not a replication failure, so stop expecting it.
        let nodes = &self.nodes;
        let before = self.crashed_writes.len();
        self.crashed_writes.retain(|(dot, _)| {
            nodes
                .iter()
                .any(|n| n.engine.state().context().contains(*dot))
        });
        self.stats.lost_in_crashes += (before - self.crashed_writes.len()) as u64;
    }

    /// Heals the network and lets the drivers run, delivering without faults and
    /// letting time pass so that resends, heartbeats and anti-entropy fire, until every
    /// replica holds the same state and nothing is left to send (or `200` rounds
    /// pass). Nothing but the driver API is called: no manual session.
    pub fn quiesce(&mut self) {
        self.side_a = None;
        let n = self.nodes.len();
        let step = self.config.retransmit_ms.max(self.config.heartbeat_ms);
        for _ in 0..200 {
            for i in 0..n {
                self.drain(i);
            }
            while self.deliver_one(false) {}
            if self.converged() && self.network.is_empty() {
                return;
            }
            self.time.advance(step);
            for i in 0..n {
                self.nodes[i].engine.handle_timeout();
            }
        }
    }

    /// Chunks of catch-ups sent by every node's current engine.
    pub fn chunks_sent(&mut self) -> u64 {
        self.nodes
            .iter_mut()
            .map(|n| n.engine.metrics().chunks_sent)
            .sum()
    }

    /// True if every replica holds the same state.
    pub fn converged(&self) -> bool {
        self.nodes
            .windows(2)
            .all(|w| w[0].engine.state() == w[1].engine.state())
    }
}

/// Random simulation steps whose writes come from `ops`, with nodes numbered 0 to 6
/// (taken modulo the number of nodes): writes 6 in 20, deliveries of 1 to 7 messages 5,
/// pushes 3, syncs 2, and one each of partitions, heals, snapshots, crashes and time
/// passing (up to 2 s).
pub fn action<W: Clone + fmt::Debug + 'static>(
    ops: impl Strategy<Value = W> + 'static,
) -> impl Strategy<Value = Action<W>> {
    action_with(ops, 7)
}

/// [`action`] with nodes numbered 0 to `nodes - 1` (for simulations of more than 7
/// nodes).
///
/// # Panics
///
/// If `nodes` is 0.
pub fn action_with<W: Clone + fmt::Debug + 'static>(
    ops: impl Strategy<Value = W> + 'static,
    nodes: usize,
) -> impl Strategy<Value = Action<W>> {
    assert!(nodes > 0, "a simulation needs at least one node");
    prop_oneof![
        6 => (0..nodes, ops).prop_map(|(node, op)| Action::Write { node, op }),
        2 => (0..nodes, 0..nodes).prop_map(|(from, to)| Action::Sync { from, to }),
        3 => (0..nodes).prop_map(|node| Action::Push { node }),
        5 => (1..8usize).prop_map(|count| Action::Deliver { count }),
        1 => any::<u64>().prop_map(|side_a| Action::Partition { side_a }),
        1 => Just(Action::Heal),
        1 => (0..nodes).prop_map(|node| Action::Snapshot { node }),
        1 => (0..nodes).prop_map(|node| Action::Crash { node }),
        1 => (0..2_000u64).prop_map(|ms| Action::Advance { ms }),
    ]
}

/// Random networks: up to 50% loss, up to 30% duplicates, reordering half the time.
pub fn faults() -> impl Strategy<Value = Faults> {
    (0..=50u8, 0..30u8, any::<bool>()).prop_map(|(loss, duplicate, reorder)| Faults {
        loss,
        duplicate,
        reorder,
    })
}

/// A message limit for a run: none (the default 64 MiB) half the time, else one small
/// enough (2,000 to 4,000 bytes) that catch-ups go in chunks.
pub fn message_limit() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![1 => Just(None), 1 => (2_000..4_000usize).prop_map(Some)]
}

/// What must hold once a simulation is quiet ([`Sim::quiesce`]): every replica holds
/// the same state; no dot was issued twice; version vectors name nodes only (restarts
/// keep their identity); no honest message was rejected; every write that some other
/// replica held before its writer crashed is at every replica.
///
/// # Errors
///
/// The first of these that does not hold.
pub fn check_quiesced<T: Crdt + Default>(sim: &Sim<T>) -> CheckResult {
    if !sim.converged() {
        let states: Vec<String> = (0..sim.len())
            .map(|i| format!("  node {i}: {:?}", sim.engine(i).state()))
            .collect();
        prop_assert!(
            false,
            "replicas diverged after quiescing:\n{}",
            states.join("\n")
        );
    }
    prop_assert_eq!(sim.stats().reused_dots, 0, "a dot was issued twice");
    for i in 0..sim.len() {
        prop_assert!(
            sim.engine(i).context().replicas().count() <= sim.len(),
            "node {}'s context names more replicas than there are nodes: {:?}",
            i,
            sim.engine(i).context()
        );
    }
    prop_assert_eq!(
        sim.stats().rejected,
        0,
        "an honest message was rejected: {:?}",
        sim.last_error()
    );
    for (dot, holders) in sim.acknowledged_before_crash() {
        prop_assert!(*holders >= 1);
        for i in 0..sim.len() {
            prop_assert!(
                sim.engine(i).state().context().contains(*dot),
                "write {} held by {} peer(s) before its writer crashed is missing at node {}",
                dot,
                holders,
                i
            );
        }
    }
    Ok(())
}
