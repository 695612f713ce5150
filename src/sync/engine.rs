//! The engine itself.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::causal::{ChunkCursor, Conflict, Crdt, Limits, MAX_COUNTER};
use crate::clock::{CausalContext, VectorClock};
use crate::error::{Error, Result};
use crate::hlc::{Hlc, SystemClock, TimeSource, Timestamp};
use crate::id::{Dot, ReplicaId};
use crate::resolver::{Outcome, Resolver};

use super::hot::{HotKey, HotKeys};
use super::lease::{FenceRecord, LeaseStore};
use super::message::{Chunk, Message, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION};
use super::metrics::{Counters, Metrics, PeerMetrics};
use super::peer::{OutStream, Peer, PeerLag};

/// How many unacknowledged local writes the lag tracker remembers individually; past
/// this it thins the middle of the queue (the oldest write's age stays exact).
const WRITE_TIMES_CAP: usize = 4096;

/// Whether a replica takes local writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Takes local writes and replicates them.
    Master,
    /// Read-only: receives deltas, refuses local writes (master–slave replication).
    Follower,
}

/// How many replicas must hold a write before the host treats it as done: the
/// replication guide's asynchronous, semi-synchronous and synchronous levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckLevel {
    /// Asynchronous: done as soon as it is written locally.
    None,
    /// Semi-synchronous: done when at least this many peers hold it.
    Peers(usize),
    /// Synchronous: done when every peer holds it.
    All,
    /// Quorum: done when a majority of the replicas, this one included, holds it
    /// (with 2 peers, 1 of them; with 4, 2). Any two majorities share a replica, so a
    /// quorum read ([`crate::ops::quorum::QuorumRead`]) sees every write done at this
    /// level, and a failover candidate chosen among a majority holds it.
    Quorum,
}

/// What a local write produced.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteReceipt<R> {
    /// The write's dot (its last, if it issued several): ask
    /// [`SyncEngine::holders`] who holds it. `None` if the write changed nothing (it
    /// removed an absent key, say).
    pub dot: Option<Dot>,
    /// What the write function returned: usually the mutator's delta (already part of
    /// the state; [`SyncEngine::push`] computes what each peer lacks by itself).
    pub delta: R,
}

/// What applying a received message did.
#[derive(Clone, Debug, PartialEq)]
#[must_use = "a received message may need an answer (`reply`) and may report conflicts"]
pub struct Received<T: Crdt> {
    /// What the merge did to the state.
    pub outcome: Outcome,
    /// Every concurrency the merge resolved.
    pub conflicts: Vec<Conflict<T::Key, T::Value>>,
    /// The keys this message could not bring in whole without exceeding the sibling
    /// cap: the rest of it was taken, and writes to these keys were set aside (see
    /// [`HotKey`] and the guide's "Hot keys"). Each names the sender. A key is
    /// reported when it becomes contained and whenever writes not set aside before
    /// are, not again for each resend of the same writes.
    pub hot_keys: Vec<HotKey<T::Key>>,
    /// The answer to send back, if the sender asked for one.
    pub reply: Option<Message<T>>,
}

/// One encoded message for the host to send (from [`SyncEngine::poll_transmit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "the bytes must be sent to the peer"]
pub struct Transmit {
    /// The peer to send it to.
    pub to: ReplicaId,
    /// The message, encoded: at most [`Config::max_message_bytes`] to a peer that
    /// speaks protocol version 2 or newer (version 1 has no chunks), unless one key's
    /// value is larger than that and cannot be split (a counter goes in several
    /// messages; a register's siblings, or a nested map of registers, do not), or the
    /// envelope alone is (its two causal contexts, what the sender has seen and what
    /// the receiver must hold, fragmented into many ranges under a small limit: about
    /// 1 KB for four replicas with lease gaps in the JSON versions), in which case
    /// the peer refuses the message, on every resend.
    pub bytes: Vec<u8>,
}

/// The counter lease of an engine that keeps its node id across restarts.
#[derive(Debug)]
struct Lease {
    store: Box<dyn LeaseStore>,
    /// The highest counter durably granted.
    granted: u64,
}

/// One replica: its state, clock, peers and replication bookkeeping. Sans-IO.
///
/// # Driving it
///
/// Hosts either drive it with timers (the usual way: see the guide's "The driver
/// loop"): [`SyncEngine::handle_bytes`] for every message that arrives,
/// [`SyncEngine::poll_transmit`] until it returns `None` after every call, and
/// [`SyncEngine::handle_timeout`] when [`SyncEngine::poll_timeout`] says so; the engine
/// then resends what was lost, chunks large catch-ups, acknowledges answers and
/// heartbeats by itself. Or they call the manual steps ([`SyncEngine::sync_with`],
/// [`SyncEngine::push`], [`SyncEngine::receive`]) and move the replies themselves.
///
/// # Restart safety and identity
///
/// A dot must never name two different writes. An engine given a counter lease
/// ([`SyncEngine::with_lease`]) writes under its node id for its whole life: before
/// any of its dots can leave the engine, it durably records a bound on the counters it
/// may have issued, and restored from any snapshot it continues above that bound (see
/// [`LeaseStore`] for the details and failure cases). Version vectors then stay one
/// entry per node, and conflict reports, lag and tokens name nodes.
///
/// Without a lease, every engine that is built or restored writes under a fresh
/// random id (safe with no durable storage at all, at the cost of one version-vector
/// entry per incarnation): use it for tests and for replicas that never restart with
/// their state.
#[derive(Debug)]
pub struct SyncEngine<T: Crdt, S: TimeSource = SystemClock> {
    node: ReplicaId,
    hlc: Hlc<S>,
    state: T,
    role: Role,
    peers: BTreeMap<ReplicaId, Peer>,
    config: Config,
    /// `(counter, wall ms)` of local writes not yet acknowledged by every peer.
    write_times: VecDeque<(u64, u64)>,
    /// The last stable set counters were folded with (see `fold_counters`).
    fold_floor: CausalContext,
    counters: Counters,
    lease: Option<Lease>,
    /// A fresh id per boot (engine built or restored), sent as `inc`.
    boot: ReplicaId,
    /// The next chunk stream id.
    next_stream: u64,
    /// Where the driver's round-robin over peers starts next.
    cursor: usize,
    /// The keys held contained.
    hot: HotKeys<T::Key>,
    /// For each writer id that reports to this replica (a peer's node id, or one of
    /// its incarnations), the highest counter it has said it has seen of itself: the
    /// bound on what others may claim of it (see `check_relayed`).
    reports: BTreeMap<ReplicaId, u64>,
    /// The fencing epoch: the highest this replica has taken (see `epoch`).
    epoch: u64,
    /// The master this replica supports in `epoch` (itself if it leads it).
    leader: Option<ReplicaId>,
    /// Set when this master stepped down on seeing a newer epoch (that epoch).
    deposed: Option<u64>,
    /// A promoted master–follower master's wait before its first write.
    fence_wait: FenceWait,
}

/// Where a promoted master–follower master stands in waiting out an earlier master's
/// lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FenceWait {
    /// No wait (multi-master, a follower, or the wait is over).
    Ready,
    /// Waiting for a majority to be in this master's epoch.
    Majority,
    /// A majority was in the epoch; writes from this time on (ms).
    Until(u64),
}

impl<T: Crdt, S: TimeSource> SyncEngine<T, S> {
    /// A new replica `node` holding `state` (usually empty), reading time from
    /// `source`. It writes under a fresh random id until given a lease with
    /// [`SyncEngine::with_lease`].
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, OrMap, ReplicaId, SystemClock};
    ///
    /// let (node, peer) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let state = OrMap::<String, LwwRegister<u32>>::new();
    /// let engine = SyncEngine::new(node, state, SystemClock, Config::with_peers([peer]));
    /// assert_eq!(engine.node(), node);
    /// assert_ne!(engine.incarnation(), node); // no lease yet: writes under a random id
    /// ```
    pub fn new(node: ReplicaId, state: T, source: S, config: Config) -> Self {
        let incarnation = config.incarnation.unwrap_or_else(ReplicaId::random);
        let peers: BTreeMap<ReplicaId, Peer> = config
            .peers
            .iter()
            .filter(|p| **p != node)
            .map(|p| (*p, Peer::new(config.retransmit_ms)))
            .collect();
        // A peer's node id (its writer id once it holds a lease) reports from the
        // start: until it speaks, what this replica holds of it is all it is known to
        // have written.
        let reports = peers
            .keys()
            .map(|p| (*p, state.context().max_counter(*p)))
            .collect();
        SyncEngine {
            node,
            hlc: Hlc::new(incarnation, source).with_max_offset(config.max_offset_ms),
            state,
            role: config.role,
            peers,
            config,
            write_times: VecDeque::new(),
            fold_floor: CausalContext::new(),
            counters: Counters::default(),
            lease: None,
            // Deterministic tests fix the boot id along with the writer id.
            boot: incarnation,
            // Stream ids differ between boots (and, almost surely, between nodes).
            next_stream: (incarnation.as_uuid().as_u128() as u64) | 1,
            cursor: 0,
            hot: HotKeys::default(),
            reports,
            epoch: 0,
            leader: None,
            deposed: None,
            fence_wait: FenceWait::Ready,
        }
        .with_initial_leader()
    }

    /// In master–follower mode, a master built by configuration leads its epoch
    /// from the start (multi-master engines name no leader, so their snapshots stay
    /// as they were).
    fn with_initial_leader(mut self) -> Self {
        if self.config.master_lease_ms.is_some() && self.role == Role::Master {
            self.leader = Some(self.node);
        }
        self
    }

    /// Writes under the node id from now on, protected by `lease` (see "Restart safety
    /// and identity"): the next dot is above both the lease's bound and anything of
    /// the node's the state holds. Call it right after [`SyncEngine::new`] or
    /// [`SyncEngine::restore`], before the first write, with the store the node used
    /// in its previous life.
    ///
    /// ```
    /// use concord::sync::{Config, MemoryLease, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// let (node, peer) = (ReplicaId::from_u128(7), ReplicaId::from_u128(8));
    /// let lease = MemoryLease::new();
    /// let time = ManualClock::new(1_000);
    /// let config = Config::with_peers([peer]);
    /// let state = OrMap::<String, LwwRegister<u8>>::new();
    /// let mut engine =
    ///     SyncEngine::new(node, state, time.clone(), config.clone()).with_lease(lease.clone())?;
    /// let snapshot = engine.snapshot()?; // persisted before the write below
    /// let first = engine.update(|m, hlc| m.write("a".into(), 1, hlc))?.dot.unwrap();
    /// assert_eq!(first.replica(), node);
    /// let _to_peer = engine.sync_with(peer)?; // the write leaves: the lease records it
    /// assert_eq!(lease.get(), first.counter());
    ///
    /// // Crash; restart from the older snapshot with the same lease.
    /// let mut engine = SyncEngine::restore(snapshot, time, config)?.with_lease(lease)?;
    /// let second = engine.update(|m, hlc| m.write("b".into(), 2, hlc))?.dot.unwrap();
    /// assert_eq!(second.replica(), node);
    /// assert!(second.counter() > first.counter()); // never the same dot twice
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Lease`] if the store cannot be read; [`Error::InvalidSnapshot`] if this
    /// engine already wrote under another id.
    pub fn with_lease(mut self, store: impl LeaseStore + 'static) -> Result<Self> {
        let mut store: Box<dyn LeaseStore> = Box::new(store);
        let writer = self.hlc.replica();
        if writer != self.node && self.state.context().max_counter(writer) > 0 {
            return Err(Error::InvalidSnapshot {
                reason: format!("engine already wrote as {writer}; give the lease before writing"),
            });
        }
        let granted = store.load()?;
        if self.config.master_lease_ms.is_some() {
            if let Some(record) = store.load_fence()? {
                self.adopt_fence(record);
            }
        }
        let held = self.state.context().max_counter(self.node);
        if self.config.protocol_version < 2 && granted > held {
            // Writing above the lease would leave a gap in the node's entry, and a
            // version-1 acknowledgement cannot name writes past a gap (they would be
            // resent forever): while held back to version 1, a node restored from an
            // older snapshot keeps the fresh writer id instead, as before leases.
            self.lease = Some(Lease { store, granted });
            return Ok(self);
        }
        self.hlc.set_replica(self.node);
        self.hlc.set_counter_floor(granted.max(held));
        self.lease = Some(Lease { store, granted });
        // Whatever was worked out for folding before the lease named the boot's
        // floor starts over (see `fold_counters`).
        self.fold_floor = CausalContext::new();
        self.state
            .fold_stable(&CausalContext::new(), &mut self.hlc)?;
        self.fold_counters();
        Ok(self)
    }

    /// Takes a fence record from the lease store (master–follower mode) if it is at
    /// least as new as what the snapshot holds: the store is written before every
    /// change, so it is never behind a snapshot taken with it.
    fn adopt_fence(&mut self, record: FenceRecord) {
        if record.epoch < self.epoch || record.epoch > MAX_EPOCH {
            return;
        }
        let newer = record.epoch > self.epoch;
        if newer || record.leader.is_some() {
            self.leader = record.leader;
        }
        self.epoch = record.epoch;
        self.deposed = record.deposed;
        let leads = self.leader == Some(self.node) && self.deposed.is_none();
        if newer && leads {
            // Promoted after the snapshot, before the crash: a master again, waiting
            // out an earlier master's lease as any restored master does.
            self.role = Role::Master;
            self.fence_wait = FenceWait::Majority;
        } else if self.role == Role::Master && !leads {
            self.role = Role::Follower;
            self.fence_wait = FenceWait::Ready;
        }
    }

    /// This replica's fence record: what its lease store must hold before it acts.
    fn fence_record(&self) -> FenceRecord {
        FenceRecord {
            epoch: self.epoch,
            leader: self.leader,
            deposed: self.deposed,
        }
    }

    /// Durably records `record` before this replica acts on it (master–follower mode,
    /// with a lease store that keeps fence records; see [`LeaseStore::store_fence`]).
    fn persist_fence(&mut self, record: FenceRecord) -> Result<()> {
        if self.config.master_lease_ms.is_none() || record == self.fence_record() {
            return Ok(());
        }
        if let Some(lease) = &mut self.lease {
            lease.store.store_fence(&record)?;
        }
        Ok(())
    }

    /// The fence record this replica holds once it takes `epoch` (at least its own)
    /// supporting `leader` (see `enter_epoch`).
    fn fence_after(&self, epoch: u64, leader: Option<ReplicaId>) -> FenceRecord {
        let steps_down =
            self.role == Role::Master && epoch > self.epoch && leader != Some(self.node);
        FenceRecord {
            epoch,
            leader,
            deposed: if steps_down {
                Some(epoch)
            } else {
                self.deposed
            },
        }
    }

    /// Restores a replica from a snapshot. Without a lease it writes under a fresh
    /// random id (a *disaster restore*: see "Restart safety and identity"); follow it
    /// with [`SyncEngine::with_lease`] to keep the node id.
    ///
    /// ```
    /// use concord::sync::{Config, MemoryLease, Snapshot, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let (time, lease) = (ManualClock::new(1_000), MemoryLease::new());
    /// let config = Config::with_peers([b_id]);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), config.clone())
    ///     .with_lease(lease.clone())?;
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// let saved = concord::wire::encode_snapshot(&a.snapshot()?); // to disk, in a service
    /// drop(a); // crash
    ///
    /// let snapshot: Snapshot<Settings> = concord::wire::decode_snapshot(&saved)?;
    /// let a = SyncEngine::restore(snapshot, time, config)?.with_lease(lease)?;
    /// assert_eq!((a.node(), a.incarnation()), (a_id, a_id));
    /// assert_eq!(a.state().value("volume"), Some(&7));
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSnapshot`] if the configured incarnation id already issued dots
    /// in the snapshot's state, or the state fails validation.
    pub fn restore(snapshot: Snapshot<T>, source: S, mut config: Config) -> Result<Self> {
        // Our own state: check its consistency, not the limits meant for peers' input.
        let unlimited = Limits {
            max_siblings: usize::MAX,
            max_entries: usize::MAX,
            max_context_ranges: usize::MAX,
            max_claim_ahead: u64::MAX,
            max_relayed_gaps: usize::MAX,
        };
        snapshot.state.validate(&unlimited)?;
        let incarnation = config.incarnation.unwrap_or_else(ReplicaId::random);
        if snapshot.state.context().max_counter(incarnation) > 0 {
            return Err(Error::InvalidSnapshot {
                reason: format!("incarnation {incarnation} already issued writes"),
            });
        }
        config.incarnation = Some(incarnation);
        config.role = snapshot.role;
        let mut engine = SyncEngine::new(snapshot.node, snapshot.state, source, config);
        engine.hlc.restore_last(snapshot.hlc_last);
        engine.epoch = snapshot.epoch.min(MAX_EPOCH);
        engine.leader = snapshot.leader;
        if engine.config.master_lease_ms.is_some() && engine.role == Role::Master {
            // It may have been promoted just before the crash, with an earlier
            // master's lease still running: wait it out again.
            engine.fence_wait = FenceWait::Majority;
            if engine.leader.is_none() {
                engine.leader = Some(engine.node);
            }
        }
        for (peer, vmax) in &snapshot.peer_versions {
            if let Some(p) = engine.peers.get_mut(peer) {
                p.vmax = Some(*vmax);
            }
        }
        for (peer, acked) in snapshot.peers {
            let retransmit_ms = engine.config.retransmit_ms;
            if let Some(p) = engine.peers.get_mut(&peer) {
                p.offered = acked.clone();
                p.acked = acked;
            } else if engine.config.open_membership {
                let mut p = Peer::new(retransmit_ms);
                p.offered = acked.clone();
                p.acked = acked;
                engine.peers.insert(peer, p);
            }
        }
        Ok(engine)
    }

    /// The durable part of this replica: persist it, and [`SyncEngine::restore`] it
    /// after a restart. With a lease, the writes the snapshot holds are recorded in
    /// the lease first, so restoring any snapshot, newest or not, in any order, never
    /// issues one of their dots again.
    ///
    /// ```
    /// use concord::sync::{Config, MemoryLease, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let lease = MemoryLease::new();
    /// let mut a = SyncEngine::new(a_id, Settings::new(), ManualClock::new(1_000), Config::with_peers([b_id]))
    ///     .with_lease(lease.clone())?;
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// assert_eq!(lease.get(), 0); // nothing has left the engine yet
    /// let snapshot = a.snapshot()?;
    /// assert_eq!(lease.get(), 1); // the snapshot's write is leased
    /// assert_eq!(snapshot.node, a_id);
    /// // Write it somewhere durable: binary (`wire::encode_snapshot`), or JSON with serde.
    /// let bytes = concord::wire::encode_snapshot(&snapshot);
    /// let json = serde_json::to_string(&snapshot)?;
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Lease`] if the lease must grow and cannot.
    pub fn snapshot(&mut self) -> Result<Snapshot<T>> {
        let held = self.state.context().max_counter(self.hlc.replica());
        self.ensure_lease(held)?;
        Ok(Snapshot {
            node: self.node,
            role: self.role,
            state: self.state.clone(),
            peers: self
                .peers
                .iter()
                .map(|(id, p)| (*id, p.acked.clone()))
                .collect(),
            hlc_last: self.hlc.last(),
            peer_versions: self
                .peers
                .iter()
                .filter_map(|(id, p)| Some((*id, p.vmax?)))
                .collect(),
            epoch: self.epoch,
            leader: self.leader,
        })
    }

    /// This replica's node id.
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time.clone(), Config::with_peers([a_id]));
    /// assert_eq!(a.node(), a_id);
    /// assert_eq!(b.sync_with(a_id)?.from, b_id); // messages name the node
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn node(&self) -> ReplicaId {
        self.node
    }

    /// The id this replica's writes are stamped with: the node id once it has a lease,
    /// a random id of this incarnation before.
    ///
    /// ```
    /// use concord::sync::{Config, MemoryLease, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// let a_id = ReplicaId::from_u128(1);
    /// let state = OrMap::<String, LwwRegister<u32>>::new();
    /// let a = SyncEngine::new(a_id, state, ManualClock::new(1_000), Config::default());
    /// assert_ne!(a.incarnation(), a_id); // random: safe, but one more vector entry per boot
    /// let a = a.with_lease(MemoryLease::new())?;
    /// assert_eq!(a.incarnation(), a_id); // one identity for the node's whole life
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn incarnation(&self) -> ReplicaId {
        self.hlc.replica()
    }

    /// The replicated state (read it freely; write through [`SyncEngine::update`]).
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time.clone(), Config::with_peers([a_id]));
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// assert_eq!(a.state().value("volume"), Some(&7));
    /// assert_eq!(b.state().value("volume"), None); // until B syncs
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn state(&self) -> &T {
        &self.state
    }

    /// Takes the replicated state out of the engine.
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time.clone(), Config::with_peers([a_id]));
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// let settings: Settings = a.into_state();
    /// assert_eq!(settings.value("volume"), Some(&7));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn into_state(self) -> T {
        self.state
    }

    /// The configuration.
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time.clone(), Config::with_peers([a_id]));
    /// assert_eq!(a.config().peers, [b_id]);
    /// assert_eq!(a.config().retransmit_ms, Config::default().retransmit_ms);
    /// ```
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Merges a full state obtained out of band (a backup, a bulk copy from another
    /// region), validated and reported like a peer's delta.
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time.clone(), Config::with_peers([a_id]));
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// b.update(|m, hlc| m.write("volume".into(), 9, hlc))?;
    /// // B's whole state arrives as a file, say: A merges it like a delta.
    /// let merged = a.merge_state(b.state().clone())?;
    /// assert_eq!(merged.conflicts.len(), 1); // the race on "volume", resolved
    /// assert!(merged.reply.is_none());
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The state's validation errors ([`Error::InvalidDot`], [`Error::TooManyEntries`],
    /// [`Error::TooManySiblings`]), and [`Error::ClockDrift`] for a timestamp past the
    /// maximum offset; on error nothing changed.
    pub fn merge_state(&mut self, state: T) -> Result<Received<T>> {
        self.check_claims(state.context())?;
        let newest = state.max_timestamp();
        if let Some(ts) = &newest {
            self.hlc.validate(ts)?;
        }
        let mut conflicts = Vec::new();
        let outcome = self
            .state
            .try_merge(state, &self.config.limits, &mut conflicts)?;
        if let Some(ts) = &newest {
            let _ = self.hlc.observe(ts);
        }
        self.counters.conflicts += conflicts.len() as u64;
        self.heal_hot_keys();
        Ok(Received {
            outcome,
            conflicts,
            hot_keys: Vec::new(),
            reply: None,
        })
    }

    /// The version vector: every write this replica has seen, gap-free.
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time.clone(), Config::with_peers([a_id]));
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// assert_eq!(a.clock().get(a.incarnation()), 1);
    /// let _ = b.receive(a.sync_with(b_id)?)?;
    /// assert_eq!(b.clock(), a.clock());
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn clock(&self) -> VectorClock {
        self.state.context().clock()
    }

    /// Every dot this replica has seen (its version vector plus what it holds past a
    /// gap).
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time.clone(), Config::with_peers([a_id]));
    /// let dot = a.update(|m, hlc| m.write("volume".into(), 7, hlc))?.dot.unwrap();
    /// assert!(a.context().contains(dot));
    /// assert!(!b.context().contains(dot));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn context(&self) -> &CausalContext {
        self.state.context()
    }

    /// Master or follower.
    ///
    /// ```
    /// use concord::sync::{Config, Role, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time.clone(), Config::with_peers([a_id]));
    /// assert_eq!(a.role(), Role::Master);
    /// a.demote();
    /// assert_eq!(a.role(), Role::Follower);
    /// ```
    pub fn role(&self) -> Role {
        self.role
    }

    /// The peers, in id order.
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time.clone(), Config::with_peers([a_id]));
    /// assert_eq!(a.peers().collect::<Vec<_>>(), [b_id]);
    /// ```
    pub fn peers(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.peers.keys().copied()
    }

    /// The highest counter this replica may have issued under its writer id: what a
    /// peer may legitimately have seen of it.
    fn issued(&self) -> u64 {
        let me = self.hlc.replica();
        let held = self.state.context().max_counter(me);
        match &self.lease {
            Some(lease) => held.max(lease.granted),
            None => held,
        }
    }

    /// Makes sure the lease covers counters up to `upto`, extending it by a block.
    fn ensure_lease(&mut self, upto: u64) -> Result<()> {
        let block = self.config.lease_block.max(1);
        if let Some(lease) = &mut self.lease {
            if lease.granted < upto {
                let grant = upto.saturating_add(block - 1).min(MAX_COUNTER);
                lease.store.store(grant)?;
                lease.granted = grant;
                self.counters.lease_writes += 1;
            }
        }
        Ok(())
    }

    /// Applies a local write: `f` receives the state and the replica's clock and calls
    /// one of the state's mutators, returning what it returns (a delta, or with
    /// [`OrMap::apply`](crate::OrMap::apply) just a dot: the engine does not need the
    /// delta, it computes what each peer lacks from the state).
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{ManualClock, MvRegister, OrMap, ReplicaId};
    ///
    /// type Profiles = OrMap<String, MvRegister<String>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let mut a = SyncEngine::new(a_id, Profiles::new(), ManualClock::new(1_000), Config::with_peers([b_id]));
    ///
    /// let receipt = a.update(|m, hlc| m.write("alice".into(), "alice@a.example".into(), hlc))?;
    /// assert_eq!(receipt.dot.map(|d| d.counter()), Some(1)); // ask `holders` about it later
    /// assert_eq!(receipt.delta.len(), 1); // what the mutator returned
    ///
    /// // Several writes in one call: a closure that ends in `Ok(..)` names its error type.
    /// a.update(|m, hlc| {
    ///     m.write("bob".into(), "bob@a.example".into(), hlc)?;
    ///     m.write("carol".into(), "carol@a.example".into(), hlc)?;
    ///     Ok::<_, concord::Error>(())
    /// })?;
    /// assert_eq!(a.state().len(), 3);
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// The closure may fail with an error type of the application's own: any type a
    /// [`concord::Error`](Error) converts into. `?` on a mutator then works inside it,
    /// and the engine's own refusal arrives as that type too:
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// type Cart = OrMap<String, PnCounter>;
    ///
    /// #[derive(Debug, PartialEq)]
    /// enum ShopError {
    ///     OutOfStock { item: String },
    ///     Replication(concord::Error),
    /// }
    ///
    /// impl From<concord::Error> for ShopError {
    ///     fn from(e: concord::Error) -> Self {
    ///         ShopError::Replication(e)
    ///     }
    /// }
    ///
    /// fn add(cart: &mut SyncEngine<Cart, ManualClock>, item: &str, n: i64) -> Result<(), ShopError> {
    ///     let stock = 3;
    ///     cart.update(|m, hlc| {
    ///         if m.count(item) + n > stock {
    ///             return Err(ShopError::OutOfStock { item: item.to_string() });
    ///         }
    ///         m.increment(item.to_string(), n, hlc)?; // a concord::Error converts
    ///         Ok(())
    ///     })?;
    ///     Ok(())
    /// }
    ///
    /// let config = Config::with_peers([ReplicaId::from_u128(2)]);
    /// let mut cart = SyncEngine::new(ReplicaId::from_u128(1), Cart::new(), ManualClock::new(1_000), config);
    /// add(&mut cart, "espresso", 2)?;
    /// let refused = add(&mut cart, "espresso", 2);
    /// assert_eq!(refused, Err(ShopError::OutOfStock { item: "espresso".into() }));
    /// assert_eq!(cart.state().count("espresso"), 2); // nothing was written
    ///
    /// cart.demote();
    /// let refused = add(&mut cart, "tea", 1);
    /// assert!(matches!(refused, Err(ShopError::Replication(concord::Error::ReadOnly { .. }))));
    /// # Ok::<(), ShopError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ReadOnly`] on a follower (converted into `E`), before `f` runs, and in
    /// master–follower mode [`Error::Deposed`], [`Error::NoQuorum`] and
    /// [`Error::FencingWait`] (see [`SyncEngine::writable`]); and
    /// whatever `f` returns. The mutators fail only before changing anything, but a
    /// write that `f` completed before it failed stays written (it is part of the
    /// state, and replicates): check what the application must check before the
    /// first mutator, as above. The lease is not written here: it is extended
    /// before the write's dots leave the engine (a failing lease store holds deltas
    /// back and shows as lag, never as a lost write).
    pub fn update<R, E>(
        &mut self,
        f: impl FnOnce(&mut T, &mut Hlc<S>) -> std::result::Result<R, E>,
    ) -> std::result::Result<WriteReceipt<R>, E>
    where
        E: From<Error>,
    {
        self.refresh_fence();
        self.writable()?;
        let me = self.hlc.replica();
        let before = self
            .state
            .context()
            .max_counter(me)
            .max(self.hlc.counter_floor());
        let result = f(&mut self.state, &mut self.hlc);
        // Counted even if `f` failed after a write: that write is in the state.
        let after = self.state.context().max_counter(me).max(before);
        if after > before {
            let now = self.hlc.now_ms();
            self.counters.writes += after - before;
            self.write_times.push_back((after, now));
            if self.write_times.len() > WRITE_TIMES_CAP {
                // Keep the oldest exact; drop the second oldest.
                self.write_times.remove(1);
            }
        }
        Ok(WriteReceipt {
            dot: (after > before).then(|| Dot::new(me, after)),
            delta: result?,
        })
    }

    /// True if every dot this replica issued is under its durable lease (always
    /// without a lease), extending the lease if needed: only then may deltas leave the
    /// engine (snapshots extend it too).
    fn lease_covers_issued(&mut self) -> bool {
        let me = self.hlc.replica();
        let held = self.state.context().max_counter(me);
        self.ensure_lease(held).is_ok()
    }

    /// Turns this replica into a master (a follower's failover) in a new epoch, one
    /// above the highest it has seen, and returns that epoch. A failover coordinator
    /// that knows more epochs than this replica does gives the epoch itself with
    /// [`SyncEngine::promote_at`].
    ///
    /// In master–follower mode ([`Config::master_lease_ms`]) the new master takes
    /// writes once a majority is in its epoch and the previous master's lease has
    /// run out ([`Error::FencingWait`] until then); in multi-master mode at once.
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{Error, LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, f_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let config = Config::with_peers([a_id]).follower();
    /// let mut f = SyncEngine::new(f_id, Settings::new(), ManualClock::new(1_000), config);
    /// let refused = f.update(|m, hlc| m.write("volume".into(), 7, hlc));
    /// assert!(matches!(refused, Err(Error::ReadOnly { .. })));
    /// assert_eq!(f.promote()?, 1); // the master is gone: epoch 1 begins
    /// f.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEpoch`] if the epoch is already [`MAX_EPOCH`] (only hostile
    /// peers get it there, and then only in `u64::MAX / 2 / max_epoch_ahead` steps);
    /// [`Error::Lease`] if the new epoch cannot be recorded in the lease store
    /// (master–follower mode). Nothing changed.
    pub fn promote(&mut self) -> Result<u64> {
        let next = self.epoch.saturating_add(1);
        self.promote_at(next)?;
        Ok(next)
    }

    /// Turns this replica into the master of `epoch`, which must be above every epoch
    /// it has seen (a coordinator gives one above every epoch *it* has seen: see
    /// [`crate::ops::failover`]).
    ///
    /// ```
    /// use concord::sync::{Config, Role, SyncEngine};
    /// use concord::{Error, LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, f_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let config = Config::with_peers([a_id]).follower();
    /// let mut f = SyncEngine::new(f_id, Settings::new(), ManualClock::new(1_000), config);
    /// f.promote_at(7)?;
    /// assert_eq!((f.role(), f.epoch(), f.leader()), (Role::Master, 7, Some(f_id)));
    /// assert!(matches!(f.promote_at(7), Err(Error::InvalidEpoch { epoch: 7, .. })));
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEpoch`] if `epoch` is not above [`SyncEngine::epoch`] or is
    /// above [`MAX_EPOCH`]; [`Error::Lease`] if the new epoch cannot be recorded in the
    /// lease store (master–follower mode: it is recorded before the replica acts as
    /// its master). Nothing changed.
    pub fn promote_at(&mut self, epoch: u64) -> Result<()> {
        if epoch <= self.epoch {
            return Err(Error::InvalidEpoch {
                epoch,
                reason: "a promotion needs an epoch above every epoch this replica has seen",
            });
        }
        if epoch > MAX_EPOCH {
            return Err(Error::InvalidEpoch {
                epoch,
                reason: "above the highest epoch (u64::MAX / 2)",
            });
        }
        self.persist_fence(FenceRecord {
            epoch,
            leader: Some(self.node),
            deposed: None,
        })?;
        self.enter_epoch(epoch, Some(self.node));
        self.role = Role::Master;
        self.deposed = None;
        if self.config.master_lease_ms.is_some() {
            self.fence_wait = FenceWait::Majority;
        }
        Ok(())
    }

    /// Takes `epoch` as a follower: a coordinator's fence for a master it is failing
    /// over from (if the master can still be reached), or the last step of a planned
    /// switchover. Local writes are refused with [`Error::Deposed`] from now on, until
    /// a promotion. An `epoch` not above this replica's only makes it a follower.
    ///
    /// ```
    /// use concord::sync::{Config, Role, SyncEngine};
    /// use concord::{Error, LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (m_id, f_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let mut m = SyncEngine::new(m_id, Settings::new(), ManualClock::new(1_000), Config::with_peers([f_id]));
    /// m.fence(4)?; // F was promoted at epoch 4
    /// assert_eq!((m.role(), m.epoch()), (Role::Follower, 4));
    /// let refused = m.update(|s, hlc| s.write("volume".into(), 7, hlc));
    /// assert!(matches!(refused, Err(Error::Deposed { epoch: 4, .. })));
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEpoch`] if `epoch` is above [`MAX_EPOCH`]; [`Error::Lease`] if
    /// the epoch cannot be recorded in the lease store (master–follower mode). Nothing
    /// changed.
    pub fn fence(&mut self, epoch: u64) -> Result<()> {
        if epoch > MAX_EPOCH {
            return Err(Error::InvalidEpoch {
                epoch,
                reason: "above the highest epoch (u64::MAX / 2)",
            });
        }
        let record = if epoch > self.epoch {
            FenceRecord {
                epoch,
                leader: None,
                deposed: Some(epoch),
            }
        } else {
            FenceRecord {
                deposed: Some(self.epoch),
                ..self.fence_record()
            }
        };
        self.persist_fence(record)?;
        if epoch > self.epoch {
            self.enter_epoch(epoch, None);
        }
        self.role = Role::Follower;
        self.deposed = Some(self.epoch);
        self.fence_wait = FenceWait::Ready;
        Ok(())
    }

    /// The fencing epoch: the highest this replica has taken, by promotion or from a
    /// peer (master–follower mode) or by [`SyncEngine::fence`]. It starts at 0 and
    /// is kept in snapshots. In multi-master mode epochs change only by promotion and
    /// nothing is refused for them.
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let [m_id, f_id] = [1, 2].map(ReplicaId::from_u128);
    /// let time = ManualClock::new(1_000);
    /// let mut m = SyncEngine::new(m_id, Settings::new(), time.clone(),
    ///     Config::with_peers([f_id]).master_follower(2_000));
    /// let mut f = SyncEngine::new(f_id, Settings::new(), time,
    ///     Config::with_peers([m_id]).master_follower(2_000).follower());
    /// assert_eq!(f.promote()?, 1);
    /// let _ = m.receive(f.sync_with(m_id)?)?; // M hears of epoch 1 and steps down
    /// assert_eq!((m.epoch(), m.leader()), (1, Some(f_id)));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The master this replica supports in its epoch (itself if it leads it), if it
    /// has heard from one: in master–follower mode a replica supports the first
    /// master it hears from in an epoch, and no other in that epoch.
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let [m_id, f_id] = [1, 2].map(ReplicaId::from_u128);
    /// let config = Config::with_peers([f_id]).master_follower(2_000);
    /// let m = SyncEngine::new(m_id, Settings::new(), ManualClock::new(0), config);
    /// assert_eq!(m.leader(), Some(m_id));
    /// ```
    pub fn leader(&self) -> Option<ReplicaId> {
        self.leader
    }

    /// How many replicas, this one included, make a majority: `peers / 2 + 1` of
    /// `peers + 1` replicas (the count behind [`AckLevel::Quorum`] and the master
    /// lease).
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// let ids = [1, 2, 3, 4].map(ReplicaId::from_u128);
    /// let e = SyncEngine::new(ids[0], OrMap::<String, LwwRegister<u8>>::new(),
    ///     ManualClock::new(0), Config::with_peers(ids[1..].to_vec()));
    /// assert_eq!(e.quorum(), 3); // 3 of 4
    /// ```
    pub fn quorum(&self) -> usize {
        let replicas = self.peers.len() + 1;
        replicas / 2 + 1
    }

    /// Whether a local write would be taken now, and if not, why (for a health
    /// endpoint, or a router that sends writes to the master that takes them). A
    /// promoted master's wait is worked out when messages arrive, on
    /// [`SyncEngine::handle_timeout`] and on a write: called between them, this may
    /// still say [`Error::FencingWait`] with no end time.
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{Error, LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let [m_id, f_id] = [1, 2].map(ReplicaId::from_u128);
    /// let time = ManualClock::new(1_000);
    /// let mut m = SyncEngine::new(m_id, Settings::new(), time.clone(),
    ///     Config::with_peers([f_id]).master_follower(2_000));
    /// let mut f = SyncEngine::new(f_id, Settings::new(), time.clone(),
    ///     Config::with_peers([m_id]).master_follower(2_000).follower());
    /// assert!(matches!(m.writable(), Err(Error::NoQuorum { answered: 1, needed: 2, .. })));
    /// // M's message reaches F, F answers: a majority (both) within the lease.
    /// let answer = f.receive(m.sync_with(f_id)?)?.reply.expect("F answers");
    /// let _ = m.receive(answer)?;
    /// m.writable()?;
    /// time.advance(2_000); // a lease without an answer
    /// assert!(matches!(m.writable(), Err(Error::NoQuorum { .. })));
    /// assert!(matches!(f.writable(), Err(Error::ReadOnly { .. })));
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ReadOnly`] (a follower), [`Error::Deposed`] (a master that saw a newer
    /// epoch, or was fenced), and in master–follower mode [`Error::NoQuorum`] and
    /// [`Error::FencingWait`].
    pub fn writable(&self) -> Result<()> {
        if self.role == Role::Follower {
            return Err(match self.deposed {
                Some(epoch) => Error::Deposed {
                    replica: self.node,
                    epoch,
                },
                None => Error::ReadOnly { replica: self.node },
            });
        }
        if self.config.master_lease_ms.is_none() {
            return Ok(());
        }
        let (answered, needed) = (self.lease_holders(), self.quorum());
        if answered < needed {
            return Err(Error::NoQuorum {
                replica: self.node,
                answered,
                needed,
            });
        }
        match self.fence_wait {
            FenceWait::Ready => Ok(()),
            FenceWait::Until(t) if self.hlc.monotonic_ms() >= t => Ok(()),
            FenceWait::Until(t) => Err(Error::FencingWait {
                replica: self.node,
                until_ms: Some(t),
            }),
            FenceWait::Majority => Err(Error::FencingWait {
                replica: self.node,
                until_ms: None,
            }),
        }
    }

    /// How many replicas, this one included, answered this master in its epoch
    /// within the lease (master–follower mode), on monotonic time.
    fn lease_holders(&self) -> usize {
        let Some(lease_ms) = self.config.master_lease_ms else {
            return 0;
        };
        let now = self.hlc.monotonic_ms();
        1 + self
            .peers
            .values()
            .filter(|p| {
                p.lease_echo
                    .is_some_and(|t| now < t.saturating_add(lease_ms))
            })
            .count()
    }

    /// Moves a promoted master's wait on: once a majority is in its epoch, writes
    /// wait a lease and a quarter more (see [`Config::master_lease_ms`]); then the
    /// wait is over.
    fn refresh_fence(&mut self) {
        let Some(lease_ms) = self.config.master_lease_ms else {
            return;
        };
        let now = self.hlc.monotonic_ms();
        match self.fence_wait {
            FenceWait::Majority if self.lease_holders() >= self.quorum() => {
                let wait = lease_ms.saturating_add(lease_ms / 4);
                self.fence_wait = FenceWait::Until(now.saturating_add(wait));
            }
            FenceWait::Until(t) if now >= t => self.fence_wait = FenceWait::Ready,
            _ => {}
        }
    }

    /// Takes `epoch` (above the current one), supporting `leader` in it; a master
    /// that led an older epoch steps down.
    fn enter_epoch(&mut self, epoch: u64, leader: Option<ReplicaId>) {
        if self.role == Role::Master && epoch > self.epoch && leader != Some(self.node) {
            self.role = Role::Follower;
            self.deposed = Some(epoch);
        }
        self.epoch = epoch;
        self.leader = leader;
        self.fence_wait = FenceWait::Ready;
        for p in self.peers.values_mut() {
            p.echo_out = None;
            p.lease_echo = None;
            p.lead_sent = None;
        }
    }

    /// Turns this replica into a read-only follower: it still receives and serves
    /// reads.
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{Error, LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time.clone(), Config::with_peers([a_id]));
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// b.demote();
    /// assert!(matches!(b.update(|m, hlc| m.write("volume".into(), 9, hlc)), Err(Error::ReadOnly { .. })));
    /// let _ = b.receive(a.sync_with(b_id)?)?; // it still replicates
    /// assert_eq!(b.state().value("volume"), Some(&7));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn demote(&mut self) {
        self.role = Role::Follower;
        self.deposed = None;
        self.fence_wait = FenceWait::Ready;
    }

    /// The protocol version to speak to `peer`.
    fn version_for(&self, peer: &Peer) -> u32 {
        if self.config.master_lease_ms.is_some() {
            // Fencing needs every node on version 3 or newer (`Config::validate`):
            // version 3 until the peer is heard to speak more.
            let floor = 3.min(self.config.protocol_version);
            return peer.vmax.map_or(floor, |theirs| {
                theirs.clamp(floor, self.config.protocol_version)
            });
        }
        match peer.vmax {
            Some(theirs) => theirs.clamp(OLDEST_PROTOCOL_VERSION, self.config.protocol_version),
            None => OLDEST_PROTOCOL_VERSION.min(self.config.protocol_version),
        }
    }

    /// A message to `to`: what this replica has seen, and, if `against` is given, the
    /// delta since it (at version 3 at the least if it holds a fold, see
    /// `fold_version`).
    /// A master–follower master records the send time (`lead`) it stamps, per peer
    /// (see `Peer::lead_sent`).
    fn envelope(&mut self, to: ReplicaId, v: u32, delta: Option<T>, reply: bool) -> Message<T> {
        let fenced = self.config.master_lease_ms.is_some();
        let leads = fenced && self.role == Role::Master && self.leader == Some(self.node);
        let lead = leads.then(|| self.hlc.monotonic_ms());
        if let (Some(stamp), Some(p)) = (lead, self.peers.get_mut(&to)) {
            p.lead_sent = Some(
                p.lead_sent
                    .map_or((stamp, stamp), |(first, last)| (first, last.max(stamp))),
            );
        }
        Message {
            epoch: self.epoch,
            lead,
            echo: self
                .peers
                .get(&to)
                .and_then(|p| p.echo_out)
                .filter(|_| fenced),
            v: fold_version(v, delta.as_ref()),
            vmax: self.config.protocol_version,
            from: self.node,
            to,
            inc: self.boot,
            seen: self.state.context().clone(),
            delta,
            base: CausalContext::new(),
            chunk: None,
            reply,
        }
    }

    /// A whole-delta message for `to`, computed against `against`, recording it as
    /// offered.
    fn message(&mut self, to: ReplicaId, against: &CausalContext, reply: bool) -> Message<T> {
        self.message_since(to, against, against, reply)
    }

    /// [`SyncEngine::message`] with entries since `offered` and removals (and `base`)
    /// since `acked`.
    fn message_since(
        &mut self,
        to: ReplicaId,
        offered: &CausalContext,
        against: &CausalContext,
        reply: bool,
    ) -> Message<T> {
        let v = self
            .peers
            .get(&to)
            .map_or(OLDEST_PROTOCOL_VERSION, |p| self.version_for(p));
        let delta = if self.lease_covers_issued() {
            let delta = self.state.delta_since_offered(offered, against);
            (!delta.context().is_empty()).then_some(delta)
        } else {
            None
        };
        let now = self.hlc.now_ms();
        let ctx = self.state.context().clone();
        if let Some(p) = self.peers.get_mut(&to) {
            p.last_sent_ms = Some(now);
            if delta.is_some() {
                p.offered.merge_ref(&ctx);
                if p.deadline.is_none() {
                    p.deadline = Some(now + p.rto);
                    p.flight = Some(p.offered.clone());
                }
            }
        }
        self.counters.sent += 1;
        let mut msg = self.envelope(to, v, None, reply);
        if delta.is_some() {
            msg.base = against.clone();
        }
        msg.v = fold_version(v, delta.as_ref());
        msg.delta = delta;
        msg
    }

    /// Opens a sync session with `peer`: what I have seen, plus the delta since what
    /// the peer last acknowledged; asks for the peer's missing part in reply (the manual
    /// way: hosts on the driver let [`SyncEngine::poll_transmit`] decide).
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{Error, LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time.clone(), Config::with_peers([a_id]));
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// b.update(|m, hlc| m.write("bass".into(), 3, hlc))?;
    /// let hello = a.sync_with(b_id)?;
    /// let answer = b.receive(hello)?.reply.expect("a session asks for an answer");
    /// let _ = a.receive(answer)?;
    /// assert_eq!(a.state(), b.state()); // one round trip, both directions
    ///
    /// let stranger = ReplicaId::from_u128(9);
    /// assert_eq!(a.sync_with(stranger), Err(Error::UnknownPeer { peer: stranger }));
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::UnknownPeer`] if `peer` is not a peer.
    pub fn sync_with(&mut self, peer: ReplicaId) -> Result<Message<T>> {
        let acked = self
            .peers
            .get(&peer)
            .ok_or(Error::UnknownPeer { peer })?
            .acked
            .clone();
        Ok(self.message(peer, &acked, true))
    }

    /// Opens a session with every peer (in id order).
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let [a_id, b_id, c_id] = [1, 2, 3].map(ReplicaId::from_u128);
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time, Config::with_peers([b_id, c_id]));
    /// let hellos = a.sync_all();
    /// assert_eq!(hellos.iter().map(|m| m.to).collect::<Vec<_>>(), [b_id, c_id]);
    /// ```
    #[must_use = "the messages must be sent to the peers"]
    pub fn sync_all(&mut self) -> Vec<Message<T>> {
        let ids: Vec<ReplicaId> = self.peers.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| self.sync_with(id).ok())
            .collect()
    }

    /// Offers each peer that lacks something the delta since its acknowledged state
    /// (asking for an acknowledgement). A peer already offered the current state is
    /// skipped until the state changes again or the offer goes unacknowledged for the
    /// retransmission timeout, so calling `push` periodically also recovers a lost
    /// message. Hosts on the driver ([`SyncEngine::poll_transmit`]) need not call it.
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time.clone(), Config::with_peers([a_id]));
    ///
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// for msg in a.push() {
    ///     // One message per peer that lacks something; each asks for an acknowledgement.
    ///     let ack = b.receive(msg)?.reply.expect("B acknowledges");
    ///     let _ = a.receive(ack)?;
    /// }
    /// assert_eq!(b.state().value("volume"), Some(&7));
    /// assert!(a.push().is_empty()); // every peer holds everything
    /// # Ok::<(), concord::Error>(())
    /// ```
    #[must_use = "the messages must be sent to the peers"]
    pub fn push(&mut self) -> Vec<Message<T>> {
        self.expire_flights();
        let ctx = self.state.context();
        // Version 2 sends only what was not offered yet (a lost offer is resent once
        // the timeout has passed); version 1 sends since what the peer acknowledged.
        let due: Vec<(ReplicaId, CausalContext, CausalContext)> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.offered.includes(ctx))
            .map(|(id, p)| {
                let offered = if self.version_for(p) >= 2 {
                    p.offered.clone()
                } else {
                    p.acked.clone()
                };
                (*id, offered, p.acked.clone())
            })
            .collect();
        due.into_iter()
            .map(|(id, offered, acked)| self.message_since(id, &offered, &acked, true))
            .collect()
    }

    /// Resends after the retransmission timeout: forgets what was offered and not
    /// acknowledged in time, so the next offer starts again from what the peer holds.
    fn expire_flights(&mut self) {
        let now = self.hlc.now_ms();
        let max_rto = self.config.max_retransmit_ms;
        for p in self.peers.values_mut() {
            if p.deadline.is_some_and(|d| d <= now) {
                p.deadline = None;
                p.flight = None;
                if !p.acked.includes(&p.offered) || p.out.is_some() {
                    p.offered = p.acked.clone();
                    p.out = None;
                    p.rto = (p.rto.saturating_mul(2)).min(max_rto);
                    self.counters.retransmits += 1;
                }
            }
        }
    }
}

mod config;
mod driver;
mod reads;
mod receive;
mod snapshot;

pub use config::{Config, MAX_EPOCH};
pub use snapshot::Snapshot;

/// The version a message with `delta` is written at, `v` being the peer's: 3 at the
/// least if the delta holds a counter fold, which an older version would carry as a
/// plain segment, and the receiver keep so for good (unable to tell a removal of what
/// it folded). Every node speaks 3 when a fold is made (a master folds only while
/// all its peers do), so a peer that seems to speak less is one heard from a boot
/// before its upgrade, or one held back against `Config::fold_counters`' advice.
fn fold_version<T: Crdt>(v: u32, delta: Option<&T>) -> u32 {
    if v < crate::counter::FOLD_PROVENANCE_VERSION && delta.is_some_and(Crdt::holds_fold) {
        crate::counter::FOLD_PROVENANCE_VERSION
    } else {
        v
    }
}
