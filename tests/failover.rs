//! Failover under crashes and partitions: a master–follower cluster of engines in
//! master–follower mode (fencing epochs, master lease), a failover coordinator fed
//! with health checks and positions, and a network that loses, duplicates and
//! reorders messages, splits and heals; nodes crash and come back (with their durable
//! state: every node persists after every step, as a node with `fsync always` does).
//! Operators also promote nodes by hand, behind the coordinator's back.
//!
//! Clocks: every replica has its own ([`SimClock`]). Its wall clock is offset from
//! true time by up to [`WALL_OFFSET_MS`] either way (well within the engines'
//! `max_offset_ms`, as NTP keeps wall clocks); its monotonic clock, which the lease
//! and the fencing wait run on, starts anywhere (again at every restart: a new
//! process's clock may read lower than its predecessor's) and runs at a rate up to
//! [`MAX_DRIFT_PPM`] away from true time, so any two replicas' monotonic clocks run at
//! rates within 1.045 / 0.955 - 1 < 9.5% of each other: inside the lease's safety
//! assumption, rates within 10% of each other over a lease (the guide's "Failover
//! and fencing"; the engine's fencing wait of a lease and a quarter tolerates up to
//! 25%).
//!
//! Older backups: operators take backups of a node's durable snapshot, and a crash
//! may restore a node from any of its backups instead of its latest state. The rule,
//! as the design has it: what is restored is the snapshot; the node's lease store
//! (its counter lease and fence record: `FileLease`'s files, `concord-node`'s
//! `concord.redb.fence`) is kept apart from the snapshots and survives every crash
//! and restore (a deployment that loses it restores without it, under a fresh writer
//! id: not modelled here). Only a minority of the nodes, chosen per run, is ever
//! restored from a backup: a write acknowledged at quorum level is held by a
//! majority, some member of which then never loses it (a majority restored from
//! older backups would lose what only they held, whatever the protocol).
//!
//! After every run, healed and quiet:
//! * at most one master took writes in any epoch, and no master took a write after a
//!   master of a newer epoch had taken one (no overlap in time either);
//! * every write acknowledged at `AckLevel::Quorum` is in the converged state;
//! * every replica holds the same state;
//! * no message was refused except deltas of an older epoch (`Error::StaleEpoch`).
//!
//! CI runs 500 cases; set `CONCORD_SIM_CASES` for more (100,000 in release).
#![cfg(feature = "testing")]

use std::collections::{BTreeMap, BTreeSet};

use concord::hlc::TimeSource;
use concord::ops::failover::{
    Action as Do, Coordinator, CoordinatorConfig, Position, Report, Step,
};
use concord::sync::{AckLevel, Config, MemoryLease, Message, Role, Snapshot, SyncEngine};
use concord::testing::sim::Rng;
use concord::{Dot, Error, ManualClock, MvRegister, OrMap, ReplicaId};
use proptest::prelude::*;

type Profiles = OrMap<String, MvRegister<u16>>;

const LEASE_MS: u64 = 1_000;
const HEARTBEAT_MS: u64 = 250;
/// Bit of the partition mask that says which side the coordinator is on.
const COORDINATOR_BIT: u32 = 63;

/// How far a replica's wall clock may be from true time, either way (ms).
const WALL_OFFSET_MS: u64 = 100;
/// How far a replica's monotonic clock's rate may be from true time's, either way,
/// in parts per million (4.5%).
const MAX_DRIFT_PPM: u64 = 45_000;
/// How many backups are kept per node (the oldest goes first).
const BACKUPS: usize = 4;
/// The step timeout of the nodes' own coordinators (distributed runs).
const NODE_TIMEOUT_MS: u64 = 3_000;

/// One replica's clocks, read off the simulation's true time (see the module
/// documentation for the bounds).
#[derive(Clone, Debug)]
struct SimClock {
    time: ManualClock,
    /// The wall clock's offset from true time.
    wall_offset_ms: i64,
    /// True time and the monotonic clock's reading when its process started.
    mono_origin: (u64, u64),
    /// The monotonic clock's rate, away from true time's.
    drift_ppm: i64,
}

impl SimClock {
    fn new(time: ManualClock, rng: &mut Rng) -> Self {
        let spread = |rng: &mut Rng, bound: u64| {
            i64::try_from(rng.next_u64() % (2 * bound + 1)).unwrap() - i64::try_from(bound).unwrap()
        };
        let wall_offset_ms = spread(rng, WALL_OFFSET_MS);
        let drift_ppm = spread(rng, MAX_DRIFT_PPM);
        let mut clock = SimClock {
            time,
            wall_offset_ms,
            mono_origin: (0, 0),
            drift_ppm,
        };
        clock.restart(rng);
        clock
    }

    /// A new process: the same hardware (offset and rate), its monotonic clock
    /// starting anywhere.
    fn restart(&mut self, rng: &mut Rng) {
        self.mono_origin = (self.time.now(), rng.next_u64() % (1 << 40));
    }
}

impl TimeSource for SimClock {
    fn now_ms(&self) -> u64 {
        self.time.now().saturating_add_signed(self.wall_offset_ms)
    }

    fn monotonic_ms(&self) -> u64 {
        let elapsed = i128::from(self.time.now().saturating_sub(self.mono_origin.0));
        let run = elapsed * i128::from(1_000_000 + self.drift_ppm) / 1_000_000;
        self.mono_origin.1 + u64::try_from(run).unwrap()
    }
}

fn cases() -> u32 {
    std::env::var("CONCORD_SIM_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

/// One step of a scenario. Node numbers are taken modulo the number of nodes.
#[derive(Clone, Debug)]
enum Act {
    /// A client writes at `node` (refused unless it is a master that may write).
    Write { node: usize, key: u8 },
    /// A client writes at the node the coordinator names master (as a router does).
    WriteAtMaster { key: u8 },
    /// Up to `count` messages are delivered (or lost, or duplicated).
    Deliver { count: usize },
    /// Time passes; every node handles its timeouts and sends what it has.
    Advance { ms: u64 },
    /// The network splits (bit `i`: node `i` on side A; bit 63: the coordinator).
    Partition { side_a: u64 },
    /// The network heals.
    Heal,
    /// `node` crashes (it stays down until restarted).
    Crash { node: usize },
    /// `node` restarts from its durable state.
    Restart { node: usize },
    /// An operator backs up every node's durable snapshot.
    Backup,
    /// `node` crashes and is restored from one of its backups (only a node of the
    /// run's minority that may be; see the module documentation).
    RestoreBackup { node: usize, which: usize },
    /// The coordinator checks every node it can reach, reads positions and acts.
    Check,
    /// An operator asks the coordinator for a planned switchover to `node`.
    Switchover { node: usize },
    /// An operator promotes `node` by hand (split-brain bait).
    RoguePromote { node: usize },
    /// The link between `a` and `b` is cut, both ways (the others stay up: `a` and
    /// `b` may still reach each other's peers).
    CutLink { a: usize, b: usize },
}

fn act(nodes: usize) -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => (0..nodes, 0..6u8).prop_map(|(node, key)| Act::Write { node, key }),
        6 => (0..6u8).prop_map(|key| Act::WriteAtMaster { key }),
        10 => (1..40usize).prop_map(|count| Act::Deliver { count }),
        6 => (0..600u64).prop_map(|ms| Act::Advance { ms }),
        1 => any::<u64>().prop_map(|side_a| Act::Partition { side_a }),
        1 => Just(Act::Heal),
        1 => (0..nodes).prop_map(|node| Act::Crash { node }),
        2 => (0..nodes).prop_map(|node| Act::Restart { node }),
        1 => Just(Act::Backup),
        3 => (0..nodes, 0..BACKUPS).prop_map(|(node, which)| Act::RestoreBackup { node, which }),
        4 => Just(Act::Check),
        1 => (0..nodes).prop_map(|node| Act::Switchover { node }),
        1 => (0..nodes).prop_map(|node| Act::RoguePromote { node }),
    ]
}

/// A node's own failover coordinator, as `concord-node` runs one on every node: fed
/// only what the node hears (the epoch of each peer's latest message its engine took,
/// and whether the peer led that epoch: `lead`), and carrying out only the actions
/// that name the node itself.
struct Local {
    coordinator: Coordinator,
    /// What each peer last said about itself, in a message the engine took.
    reported: BTreeMap<usize, (u64, Role)>,
    /// The last master other than this node that its coordinator held.
    failed_master: Option<ReplicaId>,
    /// Since when (true time) this node has been a master no majority supports.
    unsupported_since: Option<u64>,
    /// Since when (true time) this node has known no master while hearing every
    /// peer say it is none.
    masterless_since: Option<u64>,
}

fn node_coordinator_config() -> CoordinatorConfig {
    CoordinatorConfig {
        failed_checks: 2,
        switchover_timeout_ms: NODE_TIMEOUT_MS,
    }
}

/// The master `engine` supports: its leader, unless that is itself and it is no
/// longer a master.
fn supported(engine: &SyncEngine<Profiles, SimClock>) -> Option<ReplicaId> {
    engine
        .leader()
        .filter(|l| *l != engine.node() || engine.role() == Role::Master)
}

impl Local {
    /// A node's coordinator as it starts: holding the master its engine supports
    /// (else the configured one), at its engine's epoch.
    fn new(ids: &[ReplicaId], engine: &SyncEngine<Profiles, SimClock>) -> Self {
        let master = supported(engine).unwrap_or(ids[0]);
        Local {
            coordinator: Coordinator::new(
                ids.iter().copied(),
                master,
                engine.epoch(),
                node_coordinator_config(),
            ),
            reported: BTreeMap::new(),
            failed_master: None,
            unsupported_since: None,
            masterless_since: None,
        }
    }
}

struct Cluster {
    ids: Vec<ReplicaId>,
    /// Distributed runs: every node's own coordinator (the central one is unused).
    locals: Option<Vec<Local>>,
    /// Links cut one by one (`CutLink`), smaller node first.
    links_cut: BTreeSet<(usize, usize)>,
    engines: Vec<SyncEngine<Profiles, SimClock>>,
    configs: Vec<Config>,
    leases: Vec<MemoryLease>,
    clocks: Vec<SimClock>,
    durable: Vec<Snapshot<Profiles>>,
    /// Each node's backups, oldest first.
    backups: Vec<Vec<Snapshot<Profiles>>>,
    /// The nodes that may be restored from a backup: a minority.
    restorable: Vec<bool>,
    /// Restores from a backup older than the node's latest state.
    restored_older: u64,
    /// Whether a restore from a backup keeps the node's fence record (the rule; off
    /// only to show what breaks without it).
    keep_fence: bool,
    up: Vec<bool>,
    side_a: Option<u64>,
    network: Vec<(usize, usize, Vec<u8>)>,
    rng: Rng,
    loss: u8,
    duplicate: u8,
    reorder: bool,
    time: ManualClock,
    coordinator: Coordinator,
    next_value: u16,
    /// Which nodes took writes, by epoch.
    writers: BTreeMap<u64, BTreeSet<usize>>,
    /// The newest epoch any write was taken in so far.
    newest_written: u64,
    /// Writes taken at an older epoch after a newer epoch's first write.
    overlaps: Vec<String>,
    /// Writes not yet acknowledged at quorum level, with their writer.
    pending: Vec<(usize, Dot)>,
    /// Writes acknowledged at quorum level.
    acked: BTreeSet<Dot>,
    /// Refused messages other than stale-epoch deltas.
    unexpected: Vec<Error>,
    stale: u64,
    /// Writes refused at a master by the fencing rules (deposed, no quorum, waiting).
    refused_by_fence: u64,
    failovers: u64,
    switchovers_done: u64,
}

impl Cluster {
    fn new(n: usize, seed: u64, loss: u8, duplicate: u8, reorder: bool) -> Self {
        Self::with_drifts(n, seed, loss, duplicate, reorder, None)
    }

    /// A cluster whose monotonic clocks run at the given rates (ppm away from true
    /// time, per node) rather than random ones within the bound.
    fn with_drifts(
        n: usize,
        seed: u64,
        loss: u8,
        duplicate: u8,
        reorder: bool,
        drifts: Option<&[i64]>,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let ids: Vec<ReplicaId> = (1..=n as u128).map(ReplicaId::from_u128).collect();
        let time = ManualClock::new(1_700_000_000_000);
        let mut engines = Vec::new();
        let mut configs = Vec::new();
        let mut leases = Vec::new();
        let mut clocks = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let mut config = Config::with_peers(ids.iter().copied().filter(|p| p != id))
                .master_follower(LEASE_MS)
                .heartbeat_ms(HEARTBEAT_MS)
                .retransmit_ms(HEARTBEAT_MS);
            if i > 0 {
                config = config.follower();
            }
            config.validate().expect("a valid configuration");
            let lease = MemoryLease::new();
            let boot = ReplicaId::from_u128(u128::from(rng.next_u64()) | 1 << 64);
            let mut clock = SimClock::new(time.clone(), &mut rng);
            if let Some(d) = drifts {
                clock.drift_ppm = d[i];
            }
            clocks.push(clock.clone());
            let engine = SyncEngine::new(
                *id,
                Profiles::new(),
                clock,
                config.clone().incarnation(boot),
            )
            .with_lease(lease.clone())
            .expect("a memory lease loads");
            engines.push(engine);
            configs.push(config);
            leases.push(lease);
        }
        let coordinator = Coordinator::new(
            ids.iter().copied(),
            ids[0],
            0,
            CoordinatorConfig {
                failed_checks: 2,
                switchover_timeout_ms: 20_000,
            },
        );
        // A minority (fewer than a quorum) may be restored from backups.
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        let mut restorable = vec![false; n];
        for i in order.into_iter().take((n - 1) / 2) {
            restorable[i] = true;
        }
        let mut cluster = Cluster {
            ids,
            locals: None,
            links_cut: BTreeSet::new(),
            engines,
            configs,
            leases,
            clocks,
            durable: Vec::new(),
            backups: vec![Vec::new(); n],
            restorable,
            restored_older: 0,
            keep_fence: true,
            up: vec![true; n],
            side_a: None,
            network: Vec::new(),
            rng,
            loss,
            duplicate,
            reorder,
            time,
            coordinator,
            next_value: 0,
            writers: BTreeMap::new(),
            newest_written: 0,
            overlaps: Vec::new(),
            pending: Vec::new(),
            acked: BTreeSet::new(),
            unexpected: Vec::new(),
            stale: 0,
            refused_by_fence: 0,
            failovers: 0,
            switchovers_done: 0,
        };
        cluster.durable = (0..n)
            .map(|i| cluster.engines[i].snapshot().expect("a memory lease"))
            .collect();
        cluster
    }

    /// The same cluster with a coordinator on every node (see [`Local`]).
    fn distributed(mut self) -> Self {
        let locals = self
            .engines
            .iter()
            .map(|e| Local::new(&self.ids, e))
            .collect();
        self.locals = Some(locals);
        self
    }

    fn n(&self) -> usize {
        self.engines.len()
    }

    fn cut(&self, a: u32, b: u32) -> bool {
        let link = (a.min(b) as usize, a.max(b) as usize);
        self.links_cut.contains(&link)
            || self
                .side_a
                .is_some_and(|mask| ((mask >> a) & 1) != ((mask >> b) & 1))
    }

    /// The coordinator reaches node `i`.
    fn reachable(&self, i: usize) -> bool {
        self.up[i] && !self.cut(COORDINATOR_BIT, i as u32)
    }

    fn index_of(&self, id: ReplicaId) -> usize {
        self.ids.iter().position(|x| *x == id).expect("a member")
    }

    fn drain(&mut self, i: usize) {
        if !self.up[i] {
            return;
        }
        for _ in 0..64 {
            let Some(t) = self.engines[i].poll_transmit() else {
                break;
            };
            let to = self.index_of(t.to);
            self.network.push((i, to, t.bytes));
        }
    }

    fn deliver_one(&mut self, faults: bool) -> bool {
        if self.network.is_empty() {
            return false;
        }
        let k = if faults && self.reorder {
            self.rng.below(self.network.len())
        } else {
            0
        };
        let (from, to, bytes) = self.network.remove(k);
        if !self.up[to]
            || self.cut(from as u32, to as u32)
            || (faults && self.rng.percent(self.loss))
        {
            return true;
        }
        if faults && self.rng.percent(self.duplicate) {
            self.network.push((from, to, bytes.clone()));
        }
        // The sender's own word on its epoch and role, as the node reads it off the
        // envelope.
        let report = self.locals.as_ref().and_then(|_| {
            Message::<Profiles>::decode(&bytes, usize::MAX)
                .ok()
                .map(|m| {
                    let role = if m.lead.is_some() {
                        Role::Master
                    } else {
                        Role::Follower
                    };
                    (m.epoch, role)
                })
        });
        match self.engines[to].handle_bytes(&bytes) {
            Ok(_) => {
                if let (Some(locals), Some(report)) = (&mut self.locals, report) {
                    let r = locals[to].reported.entry(from).or_insert(report);
                    if report.0 >= r.0 {
                        *r = report;
                    }
                }
                self.drain(to)
            }
            Err(Error::StaleEpoch { .. }) => self.stale += 1,
            Err(e) => self.unexpected.push(e),
        }
        true
    }

    fn write(&mut self, i: usize, key: u8) {
        if !self.up[i] {
            return;
        }
        self.next_value += 1;
        let value = self.next_value;
        let engine = &mut self.engines[i];
        let receipt = match engine.update(|m, hlc| m.write(format!("k{key}"), value, hlc)) {
            Ok(receipt) => receipt,
            Err(Error::Deposed { .. } | Error::NoQuorum { .. } | Error::FencingWait { .. }) => {
                self.refused_by_fence += 1;
                return;
            }
            Err(_) => return,
        };
        let epoch = engine.epoch();
        self.writers.entry(epoch).or_default().insert(i);
        if epoch < self.newest_written {
            self.overlaps.push(format!(
                "node {i} wrote in epoch {epoch} after a write of epoch {}",
                self.newest_written
            ));
        }
        self.newest_written = self.newest_written.max(epoch);
        if let Some(dot) = receipt.dot {
            self.pending.push((i, dot));
        }
        self.drain(i);
    }

    fn advance(&mut self, ms: u64) {
        self.time.advance(ms);
        if self.locals.is_none() {
            self.coordinator.tick(self.time.now());
            self.run_coordinator();
        }
        for i in 0..self.n() {
            if self.up[i] {
                self.engines[i].handle_timeout();
                self.drain(i);
            }
        }
    }

    fn crash(&mut self, i: usize) {
        self.up[i] = false;
    }

    fn restart(&mut self, i: usize) {
        if self.up[i] {
            return;
        }
        self.restore(i, self.durable[i].clone());
    }

    /// Node `i`, down, starts again from `snapshot`, with its lease store (which
    /// every crash and restore keeps) and a new process's monotonic clock.
    fn restore(&mut self, i: usize, snapshot: Snapshot<Profiles>) {
        let boot = ReplicaId::from_u128(u128::from(self.rng.next_u64()) | 1 << 64);
        let config = self.configs[i].clone().incarnation(boot);
        self.clocks[i].restart(&mut self.rng);
        self.engines[i] = SyncEngine::restore(snapshot, self.clocks[i].clone(), config)
            .expect("a snapshot restores")
            .with_lease(self.leases[i].clone())
            .expect("a memory lease loads");
        if let Some(locals) = &mut self.locals {
            // A new process: a new coordinator, nothing heard yet.
            locals[i] = Local::new(&self.ids, &self.engines[i]);
        }
        self.up[i] = true;
        self.drain(i);
    }

    fn backup(&mut self, i: usize) {
        let backups = &mut self.backups[i];
        backups.push(self.durable[i].clone());
        if backups.len() > BACKUPS {
            backups.remove(0);
        }
    }

    /// Node `i` crashes and comes back from one of its backups, if it is one that
    /// may be and it has any.
    fn restore_backup(&mut self, i: usize, which: usize) {
        if !self.restorable[i] || self.backups[i].is_empty() {
            return;
        }
        let snapshot = self.backups[i][which % self.backups[i].len()].clone();
        let latest = &self.durable[i];
        if snapshot.state.context() != latest.state.context()
            || (snapshot.epoch, snapshot.leader) != (latest.epoch, latest.leader)
        {
            self.restored_older += 1;
        }
        self.crash(i);
        if !self.keep_fence {
            // The counter lease survives, the fence record does not.
            let mut lease = MemoryLease::new();
            concord::sync::LeaseStore::store(&mut lease, self.leases[i].get())
                .expect("a memory lease stores");
            self.leases[i] = lease;
        }
        self.restore(i, snapshot);
    }

    /// The coordinator checks every node: followers first (they are the candidates),
    /// then the master it knows.
    fn check(&mut self) {
        let master = self.coordinator.master().map(|m| self.index_of(m));
        let order: Vec<usize> = (0..self.n())
            .filter(|i| Some(*i) != master)
            .chain(master)
            .collect();
        for i in order {
            let ok = self.reachable(i);
            if ok {
                let position = Position::from(&self.engines[i]);
                self.coordinator.observe(self.ids[i], position);
            }
            self.coordinator.health(self.ids[i], ok);
        }
        self.run_coordinator();
    }

    /// Every live node runs its own coordinator, as `concord-node` does
    /// (`Node::check_failover`): fed the peers' positions (what they acknowledged, and
    /// their own word on epoch and role), checks of the peers it hears (the master
    /// must also be the one it supports), and running only what names itself.
    fn check_distributed(&mut self) {
        for i in 0..self.n() {
            if self.up[i] {
                self.check_node(i);
            }
        }
    }

    fn check_node(&mut self, i: usize) {
        let me = self.ids[i];
        let now = self.time.now();
        let ids = self.ids.clone();
        let silence = 2 * HEARTBEAT_MS;
        let Some(locals) = self.locals.as_mut() else {
            return;
        };
        let local = &mut locals[i];
        let engine = &mut self.engines[i];
        let (epoch, leader) = (engine.epoch(), supported(engine));
        // Someone else's decision, at an epoch at least the coordinator's, stands.
        if let Some(l) = leader {
            let c = &local.coordinator;
            if c.master() != Some(l) && epoch >= c.epoch() {
                if let Some(old) = c.master().filter(|o| *o != me) {
                    local.failed_master = Some(old);
                }
                local.coordinator =
                    Coordinator::new(ids.iter().copied(), l, epoch, node_coordinator_config());
            }
        }
        // Deposed, with no master it can hear, and no promotion of it awaited: it
        // knows no master (its own follower role is no failed check of itself).
        let c = &local.coordinator;
        if c.master() == Some(me)
            && engine.role() != Role::Master
            && c.awaiting().is_none_or(|(n, _)| n != me)
        {
            let e = c.epoch().max(epoch);
            local.coordinator =
                Coordinator::without_master(ids.iter().copied(), e, node_coordinator_config());
        }
        let m = engine.metrics();
        // A master unsupported by a majority it hears, for three leases, steps down
        // (a split vote) and goes back to the master it failed over from.
        let unsupported = engine.role() == Role::Master
            && matches!(
                engine.writable(),
                Err(Error::NoQuorum { .. } | Error::FencingWait { until_ms: None, .. })
            );
        let heard = m
            .peers
            .iter()
            .filter(|p| p.lag.since_heard_ms.is_some_and(|t| t <= silence))
            .count();
        if unsupported && heard + 1 >= engine.quorum() {
            let since = *local.unsupported_since.get_or_insert(now);
            if now.saturating_sub(since) >= 3 * LEASE_MS {
                local.unsupported_since = None;
                if engine.fence(epoch).is_ok() && local.coordinator.master() == Some(me) {
                    // No one leads the epoch: the coordinator holds another node (the
                    // one it failed over from, else the first other one) for the
                    // master, whose checks fail, and the next failover starts a new
                    // epoch. (Knowing no master, every node could wait for good.)
                    let failed = local
                        .failed_master
                        .filter(|f| *f != me)
                        .or_else(|| ids.iter().copied().find(|f| *f != me))
                        .expect("a cluster of several nodes");
                    local.coordinator = Coordinator::new(
                        ids.iter().copied(),
                        failed,
                        epoch,
                        node_coordinator_config(),
                    );
                }
            }
        } else {
            local.unsupported_since = None;
        }
        let c = &mut local.coordinator;
        c.tick(now);
        for p in &m.peers {
            let j = ids.iter().position(|x| *x == p.peer).expect("a member");
            if let Some(&(epoch, role)) = local.reported.get(&j) {
                let position = Position {
                    context: p.acked.clone(),
                    epoch,
                    role,
                };
                c.observe(p.peer, position);
            }
        }
        c.observe(me, Position::from(&*engine));
        c.health(me, true);
        for p in &m.peers {
            let mut ok = p.lag.since_heard_ms.is_some_and(|t| t <= silence);
            if c.master() == Some(p.peer) {
                ok &= leader == Some(p.peer);
            }
            c.health(p.peer, ok);
        }
        // Knowing no master, hearing every peer, none of which says it is one: no one
        // leads. After a step timeout (promotions under way get that long), elect.
        let masterless = c.master().is_none()
            && c.awaiting().is_none()
            && engine.role() == Role::Follower
            && leader.is_none()
            && m.peers.iter().all(|p| {
                let j = ids.iter().position(|x| *x == p.peer).expect("a member");
                p.lag.since_heard_ms.is_some_and(|t| t <= silence)
                    && local
                        .reported
                        .get(&j)
                        .is_some_and(|r| r.1 == Role::Follower)
            });
        if masterless {
            let since = *local.masterless_since.get_or_insert(now);
            if now.saturating_sub(since) >= NODE_TIMEOUT_MS {
                local.masterless_since = None;
                c.elect();
            }
        } else {
            local.masterless_since = None;
        }
        let actions: Vec<Do> = std::iter::from_fn(|| c.poll_action()).collect();
        let theirs: Vec<u64> = actions
            .iter()
            .filter_map(|a| match a {
                Do::Promote { node, epoch } if *node != me => Some(*epoch),
                _ => None,
            })
            .collect();
        for action in actions {
            match action {
                Do::Promote { node, epoch } if node == me => {
                    self.failovers += 1;
                    let _ = engine.promote_at(epoch);
                }
                Do::Fence { node, epoch } if node == me && !theirs.contains(&epoch) => {
                    let _ = engine.fence(epoch);
                }
                Do::StopWrites { node } if node == me => engine.demote(),
                Do::Report(Report::FailoverStarted { master, .. }) => {
                    local.failed_master = Some(master);
                }
                Do::Report(Report::PromotionFailed { node, .. }) if node != me => {
                    local.failed_master = Some(node);
                }
                _ => {}
            }
        }
        self.drain(i);
    }

    /// The node that leads the newest epoch among the masters, if any.
    fn newest_master(&self) -> Option<usize> {
        (0..self.n())
            .filter(|i| self.up[*i] && self.engines[*i].role() == Role::Master)
            .max_by_key(|i| self.engines[*i].epoch())
    }

    /// Carries out the coordinator's actions on the nodes it reaches.
    fn run_coordinator(&mut self) {
        while let Some(action) = self.coordinator.poll_action() {
            let node = match &action {
                Do::StopWrites { node } | Do::Promote { node, .. } | Do::Fence { node, .. } => {
                    *node
                }
                Do::Report(Report::Switchover {
                    step: Step::Done, ..
                }) => {
                    self.switchovers_done += 1;
                    continue;
                }
                Do::Report(_) => continue,
            };
            if let Do::Promote { .. } = action {
                self.failovers += 1;
            }
            let i = self.index_of(node);
            if !self.reachable(i) {
                continue; // lost: the engines keep the cluster safe regardless
            }
            let engine = &mut self.engines[i];
            // A refused promotion (an epoch the node has passed) changes nothing.
            let _ = match action {
                Do::StopWrites { .. } => {
                    engine.demote();
                    Ok(())
                }
                Do::Promote { epoch, .. } => engine.promote_at(epoch),
                Do::Fence { epoch, .. } => engine.fence(epoch),
                Do::Report(_) => Ok(()),
            };
            self.drain(i);
        }
    }

    fn step(&mut self, a: Act) {
        let n = self.n();
        match a {
            Act::Write { node, key } => self.write(node % n, key),
            Act::WriteAtMaster { key } if self.locals.is_some() => {
                if let Some(i) = self.newest_master() {
                    self.write(i, key);
                }
            }
            Act::WriteAtMaster { key } => {
                if let Some(m) = self.coordinator.master() {
                    let i = self.index_of(m);
                    self.write(i, key);
                }
            }
            Act::Deliver { count } => {
                for _ in 0..count {
                    if !self.deliver_one(true) {
                        break;
                    }
                }
            }
            Act::Advance { ms } => self.advance(ms),
            Act::Partition { side_a } => self.side_a = Some(side_a),
            Act::Heal => {
                self.side_a = None;
                self.links_cut.clear();
            }
            Act::CutLink { a, b } => {
                let (a, b) = (a % n, b % n);
                if a != b {
                    self.links_cut.insert((a.min(b), a.max(b)));
                }
            }
            Act::Crash { node } => self.crash(node % n),
            Act::Restart { node } => self.restart(node % n),
            Act::Backup => (0..n).for_each(|i| self.backup(i)),
            Act::RestoreBackup { node, which } => self.restore_backup(node % n, which),
            Act::Check if self.locals.is_some() => self.check_distributed(),
            Act::Check => self.check(),
            // Planned switchovers run from one node, over the HTTP API: not modelled
            // in distributed runs.
            Act::Switchover { .. } if self.locals.is_some() => {}
            Act::Switchover { node } => {
                let now = self.time.now();
                let _ = self.coordinator.switchover(self.ids[node % n], now);
                self.run_coordinator();
            }
            Act::RoguePromote { node } => {
                let i = node % n;
                if self.up[i] {
                    let _ = self.engines[i].promote();
                    self.drain(i);
                }
            }
        }
        self.after_step();
    }

    /// Persists every live node (durable after every step) and records which writes
    /// their writers now see acknowledged at quorum level.
    fn after_step(&mut self) {
        for i in 0..self.n() {
            if self.up[i] {
                self.durable[i] = self.engines[i].snapshot().expect("a memory lease");
            }
        }
        let engines = &self.engines;
        let up = &self.up;
        let acked = &mut self.acked;
        self.pending.retain(|(i, dot)| {
            if up[*i] && engines[*i].is_replicated(*dot, AckLevel::Quorum) {
                acked.insert(*dot);
                false
            } else {
                true
            }
        });
    }

    /// Heals, restarts every node and lets the drivers (and the coordinator) run on a
    /// perfect network until every replica holds the same state and nothing is in
    /// flight.
    fn quiesce(&mut self) {
        self.side_a = None;
        self.links_cut.clear();
        for i in 0..self.n() {
            self.restart(i);
        }
        for _ in 0..400 {
            for i in 0..self.n() {
                self.drain(i);
            }
            while self.deliver_one(false) {}
            if self.converged() && self.network.is_empty() {
                return;
            }
            self.advance(500);
            self.after_step();
        }
    }

    /// Writes taken so far (acknowledged at any level).
    fn taken(&self) -> usize {
        self.pending.len() + self.acked.len()
    }

    /// Distributed runs, healed and quiet: the nodes' coordinators run on a perfect
    /// network until the epochs have not changed for ten seconds (over three step
    /// timeouts) and a master takes writes; that master, or why none was found.
    fn settle(&mut self) -> Result<usize, String> {
        let mut last: Vec<u64> = Vec::new();
        let mut stable = 0;
        for _ in 0..1_200 {
            self.step(Act::Check);
            self.step(Act::Advance { ms: 100 });
            while self.deliver_one(false) {}
            self.after_step();
            let epochs: Vec<u64> = self.engines.iter().map(|e| e.epoch()).collect();
            if epochs == last {
                stable += 1;
            } else {
                stable = 0;
                last = epochs;
            }
            let writable = (0..self.n()).find(|i| self.engines[*i].writable().is_ok());
            if let (true, Some(m)) = (stable >= 100, writable) {
                return Ok(m);
            }
        }
        let roles: Vec<String> = self
            .engines
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let c = self.locals.as_ref().map(|l| {
                    let c = &l[i].coordinator;
                    (c.master(), c.epoch(), c.awaiting(), l[i].reported.clone())
                });
                format!(
                    "{} epoch {} {:?} leader {:?} {:?}, coordinator {c:?}",
                    e.node(),
                    e.epoch(),
                    e.role(),
                    e.leader(),
                    e.writable()
                )
            })
            .collect();
        Err(format!("never settled with a writable master: {roles:?}"))
    }

    fn converged(&self) -> bool {
        self.engines
            .windows(2)
            .all(|w| w[0].state() == w[1].state())
    }

    /// The properties, after `quiesce`.
    fn check_spec(&self) -> Result<(), TestCaseError> {
        for (epoch, nodes) in &self.writers {
            prop_assert!(
                nodes.len() <= 1,
                "two masters took writes in epoch {}: nodes {:?}",
                epoch,
                nodes
            );
        }
        prop_assert!(self.overlaps.is_empty(), "{:?}", self.overlaps);
        prop_assert!(self.unexpected.is_empty(), "refused: {:?}", self.unexpected);
        if !self.converged() {
            let states: Vec<String> = self
                .engines
                .iter()
                .map(|e| {
                    format!(
                        "  {} (epoch {}, {:?}): {:?}",
                        e.node(),
                        e.epoch(),
                        e.role(),
                        e.state()
                    )
                })
                .collect();
            prop_assert!(false, "diverged:\n{}", states.join("\n"));
        }
        let held = self.engines[0].context();
        for dot in &self.acked {
            prop_assert!(
                held.contains(*dot),
                "write {} acknowledged at quorum level is lost",
                dot
            );
        }
        Ok(())
    }
}

fn run(
    nodes: usize,
    seed: u64,
    (loss, duplicate, reorder): (u8, u8, bool),
    acts: Vec<Act>,
) -> Result<Cluster, TestCaseError> {
    let mut cluster = Cluster::new(nodes, seed, loss, duplicate, reorder);
    for a in acts {
        cluster.step(a);
    }
    cluster.quiesce();
    cluster.check_spec()?;
    Ok(cluster)
}

/// A distributed run (every node its own coordinator, see [`Local`]): the safety
/// properties after `quiesce`, then liveness: the nodes settle on one epoch with a
/// master that takes a write, acknowledged at quorum level, and the properties hold
/// again.
fn run_distributed(
    nodes: usize,
    seed: u64,
    (loss, duplicate, reorder): (u8, u8, bool),
    acts: Vec<Act>,
) -> Result<Cluster, TestCaseError> {
    let mut cluster = Cluster::new(nodes, seed, loss, duplicate, reorder).distributed();
    for a in acts {
        cluster.step(a);
    }
    cluster.quiesce();
    cluster.check_spec()?;
    let m = cluster.settle().map_err(TestCaseError::fail)?;
    let before = cluster.taken();
    cluster.step(Act::Write { node: m, key: 0 });
    prop_assert_eq!(
        cluster.taken(),
        before + 1,
        "the settled master refused a write"
    );
    let dot = cluster.pending.last().map(|(_, d)| *d);
    for _ in 0..20 {
        while cluster.deliver_one(false) {}
        cluster.step(Act::Advance { ms: 100 });
    }
    prop_assert!(
        dot.is_some_and(|d| cluster.acked.contains(&d)),
        "the settled master's write {:?} was not acknowledged at quorum level",
        dot
    );
    cluster.quiesce();
    cluster.check_spec()?;
    Ok(cluster)
}

/// The acts of a distributed run: those of [`act`], and single links cut (one node
/// reaching another only through a third).
fn act_distributed(nodes: usize) -> impl Strategy<Value = Act> {
    prop_oneof![
        12 => act(nodes),
        1 => (0..nodes, 0..nodes).prop_map(|(a, b)| Act::CutLink { a, b }),
    ]
}

fn network() -> impl Strategy<Value = (u8, u8, bool)> {
    (0..=40u8, 0..20u8, any::<bool>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn one_master_per_epoch_and_no_quorum_write_lost(
        nodes in prop_oneof![Just(3usize), Just(5)],
        seed in any::<u64>(),
        net in network(),
        acts in prop::collection::vec(act(5), 0..200),
    ) {
        run(nodes, seed, net, acts)?;
    }

    /// The node's design: a coordinator on every node, fed only what the node hears
    /// from its peers and running only the actions that name the node, under crashes,
    /// partitions of the network and of single links: the same safety properties, and
    /// after the heal the epoch stops changing and a master takes writes.
    #[test]
    fn every_node_its_own_coordinator_keeps_one_master_per_epoch_and_settles(
        nodes in prop_oneof![Just(3usize), Just(5)],
        seed in any::<u64>(),
        net in network(),
        acts in prop::collection::vec(act_distributed(5), 0..200),
    ) {
        run_distributed(nodes, seed, net, acts)?;
    }
}

/// A master cut off from one follower only, with every node running its own
/// coordinator: the cut-off follower may take over (once: the others follow it, and
/// the old master, which cannot hear it, stays a follower that knows no master), and
/// the epoch settles, with a master taking writes, while the link stays down.
#[test]
fn nodes_coordinators_settle_when_the_master_is_cut_from_one_follower() {
    for seed in 0..20 {
        let mut c = Cluster::new(3, seed, 0, 0, false).distributed();
        for k in 0..20 {
            c.step(Act::Check);
            c.step(Act::Advance { ms: 100 });
            c.step(Act::Deliver { count: 100 });
            c.step(Act::Write {
                node: 0,
                key: k % 4,
            });
        }
        assert!(
            !c.acked.is_empty(),
            "seed {seed}: the master took quorum writes"
        );
        let before = c.engines.iter().map(|e| e.epoch()).max().unwrap();
        c.step(Act::CutLink { a: 0, b: 1 });
        let mut epochs = BTreeSet::new();
        let mut late = 0;
        for round in 0..300 {
            c.step(Act::Check);
            c.step(Act::Advance { ms: 100 });
            c.step(Act::Deliver { count: 100 });
            if round % 5 == 0 {
                let taken = c.taken();
                c.step(Act::WriteAtMaster { key: 5 });
                if round >= 200 && c.taken() > taken {
                    late += 1;
                }
            }
            epochs.extend(c.engines.iter().map(|e| e.epoch()));
        }
        let newer: Vec<u64> = epochs.into_iter().filter(|e| *e > before).collect();
        assert!(
            newer.len() <= 2,
            "seed {seed}: epochs after the cut {newer:?}"
        );
        assert!(
            late > 0,
            "seed {seed}: no write taken in the last 10 s (epochs {newer:?})"
        );
        c.quiesce();
        c.check_spec().unwrap();
    }
}

/// The master dies; the coordinator fails over to the follower that holds the most;
/// the new master takes writes once it has waited out the old lease; the old master
/// returns and steps down; nothing acknowledged at quorum level is lost.
#[test]
fn the_master_dies_a_follower_takes_over_and_the_old_master_steps_down() {
    for seed in 0..20 {
        let mut c = Cluster::new(3, seed, 0, 0, false);
        c.step(Act::Check);
        for k in 0..6 {
            c.step(Act::Advance { ms: 100 });
            c.step(Act::Deliver { count: 100 });
            c.step(Act::Write { node: 0, key: k });
            c.step(Act::Deliver { count: 100 });
        }
        assert!(
            !c.acked.is_empty(),
            "seed {seed}: the master took quorum writes"
        );
        assert_eq!(c.writers.get(&0).map(|w| w.len()), Some(1));
        c.step(Act::Crash { node: 0 });
        c.step(Act::Check);
        c.step(Act::Check); // two failed checks: failover
        let new_master = c.coordinator.master().map(|m| c.index_of(m));
        assert!(
            matches!(new_master, Some(1 | 2)),
            "seed {seed}: {new_master:?}"
        );
        let m = new_master.unwrap();
        assert_eq!(
            (c.engines[m].role(), c.engines[m].epoch()),
            (Role::Master, 1)
        );
        assert!(matches!(
            c.engines[m].writable(),
            Err(Error::FencingWait { .. } | Error::NoQuorum { .. })
        ));
        // It takes writes once a majority is in its epoch and the lease has passed.
        let mut waited = 0;
        while c.engines[m].writable().is_err() {
            c.step(Act::Advance { ms: 250 });
            c.step(Act::Deliver { count: 100 });
            waited += 250;
            assert!(
                waited < 10 * LEASE_MS,
                "seed {seed}: never writable: {:?}",
                c.engines[m].writable()
            );
        }
        assert!(
            waited >= LEASE_MS,
            "seed {seed}: it waited {waited} ms, less than a lease"
        );
        c.step(Act::Write { node: m, key: 9 });
        assert_eq!(c.writers.get(&1).map(|w| w.len()), Some(1));
        // The old master comes back: it hears of epoch 1 and steps down.
        c.step(Act::Restart { node: 0 });
        for _ in 0..20 {
            c.step(Act::Advance { ms: 500 });
            c.step(Act::Deliver { count: 100 });
        }
        assert_eq!(c.engines[0].epoch(), 1, "seed {seed}");
        assert!(matches!(
            c.engines[0].writable(),
            Err(Error::Deposed { epoch: 1, .. })
        ));
        c.quiesce();
        c.check_spec().unwrap();
    }
}

/// The master is cut off from everyone but keeps running: it loses its lease and
/// stops taking writes before the new master (on the majority side) takes any; after
/// the partition heals it steps down and its earlier writes still replicate.
#[test]
fn a_partitioned_master_stops_before_the_new_one_starts() {
    let mut c = Cluster::new(3, 7, 0, 0, false);
    c.step(Act::Check);
    for k in 0..4 {
        c.step(Act::Advance { ms: 100 });
        c.step(Act::Deliver { count: 100 });
        c.step(Act::Write { node: 0, key: k });
    }
    // Node 0 alone on side A; the coordinator and the followers on side B.
    c.step(Act::Partition { side_a: 0b001 });
    let mut refused_no_quorum = false;
    for _ in 0..40 {
        c.step(Act::Write { node: 0, key: 1 });
        c.step(Act::Advance { ms: 250 });
        c.step(Act::Deliver { count: 100 });
        c.step(Act::Check);
        refused_no_quorum |= matches!(c.engines[0].writable(), Err(Error::NoQuorum { .. }));
        let m = c.coordinator.master().map(|m| c.index_of(m));
        if m.is_some_and(|m| m != 0 && c.engines[m].writable().is_ok()) {
            break;
        }
    }
    assert!(refused_no_quorum, "the cut-off master kept its lease");
    let m = c.index_of(c.coordinator.master().unwrap());
    assert_ne!(m, 0);
    c.step(Act::Write { node: m, key: 2 });
    assert!(c.writers.contains_key(&1), "the new master took a write");
    c.step(Act::Heal);
    c.quiesce();
    c.check_spec().unwrap();
    assert_eq!(c.engines[0].role(), Role::Follower);
}

/// A master cut off from everyone keeps writing until its lease runs out on its own
/// clock; the new master starts after its fencing wait on its own. Runs the
/// partition of `a_partitioned_master_stops_before_the_new_one_starts` with the old
/// master's monotonic clock slow by `slow_ppm` and the others' fast by `fast_ppm`, and
/// returns the runs (of 20 seeds) in which the old master wrote after the new one.
fn overlaps_with_drift(slow_ppm: i64, fast_ppm: i64) -> usize {
    let mut overlapped = 0;
    for seed in 0..20 {
        let drifts = [-slow_ppm, fast_ppm, fast_ppm];
        let mut c = Cluster::with_drifts(3, seed, 0, 0, false, Some(&drifts));
        c.step(Act::Check);
        for k in 0..4 {
            c.step(Act::Advance { ms: 100 });
            c.step(Act::Deliver { count: 100 });
            c.step(Act::Write { node: 0, key: k });
        }
        c.step(Act::Partition { side_a: 0b001 });
        let mut new_wrote = false;
        for _ in 0..80 {
            c.step(Act::Write { node: 0, key: 1 });
            let m = c.coordinator.master().map(|m| c.index_of(m));
            if let Some(m) = m.filter(|m| *m != 0) {
                let before = c.writers.get(&c.engines[m].epoch()).map_or(0, |w| w.len());
                c.step(Act::Write { node: m, key: 2 });
                new_wrote |= c.writers.get(&c.engines[m].epoch()).map_or(0, |w| w.len()) > before;
            }
            c.step(Act::Advance { ms: 50 });
            c.step(Act::Deliver { count: 100 });
            c.step(Act::Check);
        }
        assert!(new_wrote, "seed {seed}: the new master never took a write");
        overlapped += usize::from(!c.overlaps.is_empty());
        c.step(Act::Heal);
        c.quiesce();
        if slow_ppm.max(fast_ppm) <= i64::try_from(MAX_DRIFT_PPM).unwrap() {
            c.check_spec().unwrap();
        }
    }
    overlapped
}

/// Within the clock bound (the old master's clock as slow, and the new master's as
/// fast, as the bound allows), a cut-off master stops before the new one starts.
/// Far outside it (rates of 0.6 and 1.4), the simulator sees the two overlap: the
/// bound is what the safety rests on, and the overlap check does catch a violation.
#[test]
fn the_lease_holds_with_clocks_drifting_within_the_bound() {
    let bound = i64::try_from(MAX_DRIFT_PPM).unwrap();
    assert_eq!(overlaps_with_drift(bound, bound), 0);
    let outside = overlaps_with_drift(400_000, 400_000);
    eprintln!(
        "runs (of 20) where the old master wrote after the new one, rates 0.6 and 1.4: {outside}"
    );
    assert!(outside > 0, "rates 0.6 and 1.4 never overlapped");
}

/// A follower that supported the new master is restored from a backup taken before
/// the failover, and finds itself on the side of a partition with the old master
/// (cut off since before the failover, so still the master of the old epoch). With
/// its fence record (the rule), it still supports the new master: the old master
/// never regains its lease. Without it (shown for contrast), it supports the old
/// master again, and the old master writes in its epoch after the new one has.
fn restored_follower_meets_the_old_master(keep_fence: bool) -> Cluster {
    let mut c = Cluster::new(3, 11, 0, 0, false);
    c.restorable = vec![false, false, true];
    c.keep_fence = keep_fence;
    c.step(Act::Check);
    for k in 0..4 {
        c.step(Act::Advance { ms: 100 });
        c.step(Act::Deliver { count: 100 });
        c.step(Act::Write { node: 0, key: k });
    }
    c.step(Act::Deliver { count: 100 });
    c.step(Act::Backup);
    // The master is cut off; the coordinator fails over to a follower.
    c.step(Act::Partition { side_a: 0b001 });
    let mut new = None;
    for _ in 0..80 {
        c.step(Act::Advance { ms: 100 });
        c.step(Act::Deliver { count: 100 });
        c.step(Act::Check);
        let m = c.coordinator.master().map(|m| c.index_of(m));
        if let Some(m) = m.filter(|m| *m != 0 && c.engines[*m].writable().is_ok()) {
            new = Some(m);
            break;
        }
    }
    let new = new.expect("a follower took over");
    c.step(Act::Write { node: new, key: 7 });
    assert_eq!(c.writers.get(&1).map(BTreeSet::len), Some(1));
    // Node 2 (the new master itself, or its supporter) comes back from the backup,
    // on the old master's side of a new partition.
    c.step(Act::RestoreBackup { node: 2, which: 0 });
    assert_eq!(c.restored_older, 1);
    let side_a = 0b001 | (1 << 2);
    c.step(Act::Partition { side_a });
    for _ in 0..40 {
        c.step(Act::Write { node: 0, key: 8 });
        c.step(Act::Advance { ms: 100 });
        c.step(Act::Deliver { count: 100 });
    }
    c
}

#[test]
fn a_node_restored_from_an_older_backup_keeps_its_fence() {
    let c = restored_follower_meets_the_old_master(true);
    assert!(c.overlaps.is_empty(), "{:?}", c.overlaps);
    assert_eq!(c.writers.get(&0).map(BTreeSet::len), Some(1));
    let mut c = c;
    c.quiesce();
    c.check_spec().unwrap();
    // Without the fence record, the old master writes again after the new one.
    let c = restored_follower_meets_the_old_master(false);
    assert!(
        !c.overlaps.is_empty(),
        "the old master never regained its lease"
    );
}

/// A planned switchover under a steady write load (each write goes to whichever node
/// the coordinator names master; refused writes are retried, as a client would)
/// completes, and every write that was taken (acknowledged at any level) is in the
/// final state at every replica.
#[test]
fn planned_switchover_under_write_load_loses_no_acknowledged_write() {
    for seed in 0..30 {
        let mut c = Cluster::new(3, seed, 10, 5, true);
        let mut taken: Vec<Dot> = Vec::new();
        let target = 1 + (seed as usize % 2);
        let mut key = 0u8;
        let mut requested = false;
        for round in 0..400 {
            if round == 40 {
                c.step(Act::Switchover { node: target });
                requested = true;
            }
            let master = c.index_of(c.coordinator.master().unwrap());
            let before = c.pending.len() + c.acked.len();
            c.step(Act::Write {
                node: master,
                key: key % 4,
            });
            if c.pending.len() + c.acked.len() > before {
                let dot = c
                    .pending
                    .last()
                    .map(|(_, d)| *d)
                    .unwrap_or_else(|| *c.acked.iter().last().unwrap());
                taken.push(dot);
            }
            key = key.wrapping_add(1);
            c.step(Act::Deliver { count: 6 });
            c.step(Act::Advance { ms: 150 });
            c.step(Act::Check);
            if requested && c.switchovers_done == 1 && round > 200 {
                break;
            }
        }
        assert_eq!(
            c.switchovers_done,
            1,
            "seed {seed}: the switchover did not finish ({:?})",
            c.coordinator.step()
        );
        assert_eq!(c.index_of(c.coordinator.master().unwrap()), target);
        assert!(
            c.writers.len() >= 2,
            "seed {seed}: both masters took writes: {:?}",
            c.writers
        );
        c.quiesce();
        c.check_spec().unwrap();
        for dot in &taken {
            for e in &c.engines {
                assert!(
                    e.context().contains(*dot),
                    "seed {seed}: write {dot} lost at {}",
                    e.node()
                );
            }
        }
    }
}

/// The generator reaches the interesting cases: failovers, writes in later epochs,
/// writes acknowledged at quorum level, stale-epoch deltas refused.
#[test]
fn scenarios_exercise_failover_and_fencing() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (
        prop_oneof![Just(3usize), Just(5)],
        any::<u64>(),
        network(),
        prop::collection::vec(act(5), 100..200),
    );
    let (mut later_epochs, mut acked, mut stale, mut failovers) = (0, 0, 0, 0);
    let mut two_masters_tried = 0;
    let mut restored_older = 0;
    for _ in 0..100 {
        let (nodes, seed, net, acts) = strategy.new_tree(&mut runner).unwrap().current();
        let c = run(nodes, seed, net, acts).unwrap();
        later_epochs += u32::from(c.writers.keys().any(|e| *e > 0));
        acked += u32::from(!c.acked.is_empty());
        stale += u32::from(c.stale > 0);
        failovers += u32::from(c.failovers > 0);
        two_masters_tried += u32::from(c.refused_by_fence > 0);
        restored_older += u32::from(c.restored_older > 0);
    }
    eprintln!(
        "failovers {failovers}, later epochs {later_epochs}, quorum acks {acked}, \
         stale {stale}, writes refused by a fence {two_masters_tried}, restored from an \
         older backup {restored_older} (of 100 runs)"
    );
    assert!(
        restored_older > 20,
        "only {restored_older}/100 runs restored a node from an older backup"
    );
    assert!(failovers > 30, "only {failovers}/100 runs failed over");
    assert!(
        later_epochs > 10,
        "only {later_epochs}/100 runs wrote after a promotion"
    );
    assert!(
        acked > 30,
        "only {acked}/100 runs acknowledged a write at quorum level"
    );
    assert!(
        stale > 5,
        "only {stale}/100 runs refused a stale-epoch delta"
    );
    assert!(
        two_masters_tried > 10,
        "only {two_masters_tried}/100 runs had a write refused by a deposed or waiting master"
    );
}
