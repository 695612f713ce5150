//! The engine itself.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::causal::{Conflict, Crdt, Limits, MAX_COUNTER};
use crate::clock::VectorClock;
use crate::error::{Error, Result};
use crate::hlc::{Hlc, SystemClock, TimeSource, Timestamp};
use crate::id::{Dot, ReplicaId};
use crate::resolver::{Outcome, Resolver};

use super::message::{Message, PROTOCOL_VERSION};
use super::metrics::{Counters, Metrics, PeerMetrics};
use super::peer::{Peer, PeerLag};

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

/// How an engine is set up.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The peers this replica exchanges with. With `open_membership` false (the
    /// default), a message from anyone else is rejected.
    pub peers: Vec<ReplicaId>,
    /// Accept messages from replicas not in `peers` (and add them as peers).
    pub open_membership: bool,
    /// Master or follower.
    pub role: Role,
    /// Limits on received state.
    pub limits: Limits,
    /// The largest encoded message accepted by [`SyncEngine::receive_bytes`], in bytes.
    pub max_message_bytes: usize,
    /// The most entries a received version vector may hold.
    pub max_clock_entries: usize,
    /// The id this incarnation stamps its writes with. `None` (the default) draws a
    /// random one; set it only for deterministic tests, and never reuse one.
    pub incarnation: Option<ReplicaId>,
    /// How far ahead of local wall time, in milliseconds, a received timestamp may be
    /// (see [`Hlc::with_max_offset`]); further ahead, the message is refused with
    /// [`Error::ClockDrift`].
    pub max_offset_ms: u64,
    /// With `open_membership`, the most peers this replica keeps: a message from one
    /// more new replica is refused with [`Error::TooManyEntries`].
    pub max_peers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            peers: Vec::new(),
            open_membership: false,
            role: Role::Master,
            limits: Limits::default(),
            max_message_bytes: 64 << 20,
            max_clock_entries: 4096,
            incarnation: None,
            max_offset_ms: crate::hlc::DEFAULT_MAX_OFFSET_MS,
            max_peers: 64,
        }
    }
}

impl Config {
    /// A master replicating with exactly these peers.
    pub fn with_peers(peers: impl IntoIterator<Item = ReplicaId>) -> Self {
        Config {
            peers: peers.into_iter().collect(),
            ..Config::default()
        }
    }

    /// The same configuration, accepting messages from replicas not yet in `peers`
    /// (they become peers).
    pub fn open(mut self) -> Self {
        self.open_membership = true;
        self
    }

    /// The same configuration as a read-only follower.
    pub fn follower(mut self) -> Self {
        self.role = Role::Follower;
        self
    }

    /// The same configuration with a fixed incarnation id (deterministic tests only).
    pub fn incarnation(mut self, id: ReplicaId) -> Self {
        self.incarnation = Some(id);
        self
    }
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
pub struct Received<T: Crdt> {
    /// What the merge did to the state.
    pub outcome: Outcome,
    /// Every concurrency the merge resolved.
    pub conflicts: Vec<Conflict<T::Key, T::Value>>,
    /// The answer to send back, if the sender asked for one.
    pub reply: Option<Message<T>>,
}

/// An engine's durable state: restore it with [`SyncEngine::restore`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "T: Crdt")]
pub struct Snapshot<T> {
    /// The replica's node id.
    pub node: ReplicaId,
    /// Its role when the snapshot was taken.
    pub role: Role,
    /// The replicated state.
    pub state: T,
    /// What each peer had acknowledged.
    pub peers: Vec<(ReplicaId, VectorClock)>,
    /// The greatest hybrid-logical-clock timestamp issued or seen.
    pub hlc_last: Timestamp,
}

/// One replica: its state, clock, peers and replication bookkeeping. Sans-IO.
///
/// # Restart safety
///
/// Every incarnation of a replica stamps its writes with an id of its own (random
/// unless configured): a replica restored from an older snapshot starts a new
/// incarnation, so it can never issue a dot it issued before, and needs neither a
/// persisted counter nor a round of questions to its peers. The node id, which peers
/// and membership use, stays the same. The cost is one version-vector entry per
/// incarnation.
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
    counters: Counters,
}

impl<T: Crdt, S: TimeSource> SyncEngine<T, S> {
    /// A new replica `node` holding `state` (usually empty), reading time from
    /// `source`.
    pub fn new(node: ReplicaId, state: T, source: S, config: Config) -> Self {
        let incarnation = config.incarnation.unwrap_or_else(ReplicaId::random);
        let peers = config
            .peers
            .iter()
            .filter(|p| **p != node)
            .map(|p| (*p, Peer::default()))
            .collect();
        SyncEngine {
            node,
            hlc: Hlc::new(incarnation, source).with_max_offset(config.max_offset_ms),
            state,
            role: config.role,
            peers,
            config,
            write_times: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// Restores a replica from a snapshot, as a new incarnation (see "Restart safety").
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
        for (peer, acked) in snapshot.peers {
            if let Some(p) = engine.peers.get_mut(&peer) {
                p.acked = acked;
            } else if engine.config.open_membership {
                engine.peers.insert(
                    peer,
                    Peer {
                        acked,
                        ..Peer::default()
                    },
                );
            }
        }
        Ok(engine)
    }

    /// The durable part of this replica: persist it, and [`SyncEngine::restore`] it
    /// after a restart.
    pub fn snapshot(&self) -> Snapshot<T> {
        Snapshot {
            node: self.node,
            role: self.role,
            state: self.state.clone(),
            peers: self
                .peers
                .iter()
                .map(|(id, p)| (*id, p.acked.clone()))
                .collect(),
            hlc_last: self.hlc.last(),
        }
    }

    /// This replica's node id.
    pub fn node(&self) -> ReplicaId {
        self.node
    }

    /// The id this incarnation stamps its writes with.
    pub fn incarnation(&self) -> ReplicaId {
        self.hlc.replica()
    }

    /// The replicated state (read it freely; write through [`SyncEngine::update`]).
    pub fn state(&self) -> &T {
        &self.state
    }

    /// Takes the replicated state out of the engine.
    pub fn into_state(self) -> T {
        self.state
    }

    /// Merges a full state obtained out of band (a backup, a bulk copy from another
    /// region), validated and reported like a peer's delta.
    ///
    /// # Errors
    ///
    /// The state's validation errors; on error nothing changed.
    pub fn merge_state(&mut self, state: T) -> Result<Received<T>> {
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
        Ok(Received {
            outcome,
            conflicts,
            reply: None,
        })
    }

    /// The version vector: every write this replica has seen, gap-free.
    pub fn clock(&self) -> VectorClock {
        self.state.context().clock()
    }

    /// Master or follower.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The peers, in id order.
    pub fn peers(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.peers.keys().copied()
    }

    /// Applies a local write: `f` receives the state and the replica's clock and calls
    /// one of the state's mutators, returning what it returns (a delta, or with
    /// [`OrMap::apply`](crate::OrMap::apply) just a dot: the engine does not need the
    /// delta, it computes what each peer lacks from the state).
    ///
    /// # Errors
    ///
    /// [`Error::ReadOnly`] on a follower; whatever `f` returns (the mutators fail only
    /// before changing anything).
    pub fn update<R>(
        &mut self,
        f: impl FnOnce(&mut T, &mut Hlc<S>) -> Result<R>,
    ) -> Result<WriteReceipt<R>> {
        if self.role == Role::Follower {
            return Err(Error::ReadOnly { replica: self.node });
        }
        let me = self.hlc.replica();
        let before = self.state.context().max_counter(me);
        let delta = f(&mut self.state, &mut self.hlc)?;
        let after = self.state.context().max_counter(me);
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
            delta,
        })
    }

    /// Turns this replica into a master.
    pub fn promote(&mut self) {
        self.role = Role::Master;
    }

    /// Turns this replica into a read-only follower.
    pub fn demote(&mut self) {
        self.role = Role::Follower;
    }

    /// Opens a sync session with `peer`: my vector, plus the delta since what the peer
    /// last acknowledged; asks for the peer's missing part in reply.
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

    /// Opens a session with every peer.
    pub fn sync_all(&mut self) -> Vec<Message<T>> {
        let peers: Vec<(ReplicaId, VectorClock)> = self
            .peers
            .iter()
            .map(|(id, p)| (*id, p.acked.clone()))
            .collect();
        peers
            .into_iter()
            .map(|(id, acked)| self.message(id, &acked, true))
            .collect()
    }

    /// Offers each peer that lacks something the delta since its acknowledged vector
    /// (asking for an acknowledgement). A peer already offered the current state is
    /// skipped until the state changes again.
    pub fn push(&mut self) -> Vec<Message<T>> {
        let mine = self.state.context().max_clock();
        let due: Vec<(ReplicaId, VectorClock)> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.acked.dominates(&mine) && p.pushed.as_ref() != Some(&mine))
            .map(|(id, p)| (*id, p.acked.clone()))
            .collect();
        due.into_iter()
            .map(|(id, acked)| {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.pushed = Some(mine.clone());
                }
                self.message(id, &acked, true)
            })
            .collect()
    }

    fn message(&mut self, to: ReplicaId, since: &VectorClock, reply: bool) -> Message<T> {
        let delta = self.state.delta_since(since);
        self.counters.sent += 1;
        let delta = (!delta.context().is_empty()).then_some(delta);
        Message {
            v: PROTOCOL_VERSION,
            from: self.node,
            to,
            inc: self.hlc.replica(),
            clock: self.clock(),
            base: if delta.is_some() {
                since.clone()
            } else {
                VectorClock::new()
            },
            delta,
            reply,
        }
    }

    /// Applies a message from a peer. Everything is checked before anything changes:
    /// on error the state, the clock and the peer bookkeeping are exactly as before.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedVersion`], [`Error::UnknownPeer`], [`Error::InvalidMessage`]
    /// (misaddressed, or a version vector with too many entries), [`Error::ClockDrift`]
    /// (a timestamp past the maximum offset), and the state's own validation errors
    /// ([`Error::InvalidDot`], [`Error::TooManyEntries`], [`Error::TooManySiblings`]).
    pub fn receive(&mut self, msg: Message<T>) -> Result<Received<T>> {
        let result = self.apply(msg);
        if result.is_err() {
            self.counters.rejected += 1;
        }
        result
    }

    fn apply(&mut self, msg: Message<T>) -> Result<Received<T>> {
        if msg.v != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion {
                version: msg.v,
                supported: PROTOCOL_VERSION,
            });
        }
        if msg.to != self.node || msg.from == self.node {
            return Err(Error::InvalidMessage {
                reason: format!(
                    "message from {} to {} reached {}",
                    msg.from, msg.to, self.node
                ),
            });
        }
        if !self.peers.contains_key(&msg.from) {
            if !self.config.open_membership {
                return Err(Error::UnknownPeer { peer: msg.from });
            }
            if self.peers.len() >= self.config.max_peers {
                return Err(Error::TooManyEntries {
                    what: "peers",
                    count: self.peers.len() + 1,
                    limit: self.config.max_peers,
                });
            }
        }
        for clock in [&msg.clock, &msg.base] {
            if clock.len() > self.config.max_clock_entries {
                return Err(Error::TooManyEntries {
                    what: "version vector entries",
                    count: clock.len(),
                    limit: self.config.max_clock_entries,
                });
            }
            if let Some((replica, n)) = clock.iter().find(|(_, n)| *n > MAX_COUNTER) {
                return Err(Error::InvalidDot {
                    dot: Dot::new(replica, n),
                    reason: "counter beyond the largest a replica may issue",
                });
            }
        }
        // No peer can have seen a write of this incarnation that it has not issued: a
        // message claiming one would stall or corrupt this replica's own writes.
        let me = self.hlc.replica();
        let issued = self.state.context().max_counter(me);
        let claimed = msg
            .delta
            .as_ref()
            .map_or(0, |d| d.context().max_counter(me))
            .max(msg.clock.get(me));
        if claimed > issued {
            return Err(Error::InvalidDot {
                dot: Dot::new(me, claimed),
                reason: "a write of this replica that it never issued",
            });
        }
        let newest = msg.delta.as_ref().and_then(Crdt::max_timestamp);
        if let Some(ts) = &newest {
            self.hlc.validate(ts)?;
        }
        let mut conflicts = Vec::new();
        // A delta computed against more than this replica has (it was restored from an
        // older snapshot since the peer last heard from it) could leave out removals
        // it needs: skip it and ask for a fresh one. A skipped delta is still
        // validated (a merged one is validated by `try_merge`, once).
        let stale = msg
            .delta
            .as_ref()
            .is_some_and(|_| !self.state.context().covers(&msg.base));
        if let (true, Some(delta)) = (stale, &msg.delta) {
            delta.validate(&self.config.limits)?;
        }
        let outcome = match msg.delta {
            Some(delta) if !stale => {
                self.state
                    .try_merge(delta, &self.config.limits, &mut conflicts)?
            }
            _ => Outcome::Unchanged,
        };
        // Validated above; a clock that moved backwards since then only narrows the
        // window, and the write is already merged, so a late drift error is ignored.
        if let Some(ts) = &newest {
            let _ = self.hlc.observe(ts);
        }
        let now = self.hlc.now_ms();
        let peer = self.peers.entry(msg.from).or_default();
        // Acknowledgements of one incarnation only grow (a late reordered message
        // changes nothing). A new incarnation was restored from a snapshot and may hold
        // less than its predecessor acknowledged: its clock replaces the old one.
        if peer.incarnation == Some(msg.inc) {
            peer.acked.merge_ref(&msg.clock);
        } else {
            peer.acked = msg.clock.clone();
            peer.incarnation = Some(msg.inc);
        }
        peer.last_heard_ms = Some(now);
        self.counters.received += 1;
        self.counters.conflicts += conflicts.len() as u64;
        if stale {
            self.counters.stale += 1;
        }
        let reply = (msg.reply || stale).then(|| {
            let theirs = msg.clock.clone();
            self.message(msg.from, &theirs, stale)
        });
        self.forget_acknowledged();
        Ok(Received {
            outcome,
            conflicts,
            reply,
        })
    }

    /// Drops bookkeeping every peer has acknowledged.
    fn forget_acknowledged(&mut self) {
        let me = self.hlc.replica();
        let lowest = self
            .peers
            .values()
            .map(|p| p.acked.get(me))
            .min()
            .unwrap_or(u64::MAX);
        while self.write_times.front().is_some_and(|(c, _)| *c <= lowest) {
            self.write_times.pop_front();
        }
        let stable = self
            .peers
            .values()
            .map(|p| p.acked.clone())
            .reduce(|a, b| a.meet(&b))
            .unwrap_or_default();
        self.state.prune(&stable);
    }

    /// The peers known to hold `dot` (those whose acknowledged vector covers it).
    pub fn holders(&self, dot: Dot) -> Vec<ReplicaId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.acked.covers(dot))
            .map(|(id, _)| *id)
            .collect()
    }

    /// True once `dot` is held by as many peers as `level` asks for.
    pub fn is_replicated(&self, dot: Dot, level: AckLevel) -> bool {
        let holders = self.holders(dot).len();
        match level {
            AckLevel::None => true,
            AckLevel::Peers(k) => holders >= k,
            AckLevel::All => holders == self.peers.len(),
        }
    }

    /// A session token for a client: the version vector of what it has written or
    /// read here. Hand it to any replica with [`SyncEngine::can_serve`] or
    /// [`SyncEngine::read`] for read-your-writes and monotonic reads.
    pub fn token(&self) -> VectorClock {
        self.clock()
    }

    /// True if this replica has seen every write `token` names.
    pub fn can_serve(&self, token: &VectorClock) -> bool {
        self.state.context().covers(token)
    }

    /// The state, if this replica has seen every write `token` names.
    ///
    /// # Errors
    ///
    /// [`Error::NotCaughtUp`] with how many events it still lacks.
    pub fn read(&self, token: &VectorClock) -> Result<&T> {
        if self.can_serve(token) {
            return Ok(&self.state);
        }
        let mine = self.clock();
        let missing = token
            .iter()
            .map(|(r, n)| n.saturating_sub(mine.get(r)))
            .sum();
        Err(Error::NotCaughtUp { missing })
    }

    /// Lag towards `peer`.
    pub fn lag(&mut self, peer: ReplicaId) -> Option<PeerLag> {
        let now = self.hlc.now_ms();
        let me = self.hlc.replica();
        let mine = self.state.context().max_counter(me);
        let p = self.peers.get(&peer)?;
        let acked = p.acked.get(me);
        let oldest = self
            .write_times
            .iter()
            .find(|(c, _)| *c > acked)
            .map_or(0, |(_, ms)| now.saturating_sub(*ms));
        Some(PeerLag {
            unacked_writes: mine.saturating_sub(acked),
            oldest_unacked_ms: oldest,
            since_heard_ms: p.last_heard_ms.map(|t| now.saturating_sub(t)),
        })
    }

    /// A serializable snapshot of counters and lag.
    pub fn metrics(&mut self) -> Metrics {
        let ids: Vec<ReplicaId> = self.peers.keys().copied().collect();
        let peers = ids
            .into_iter()
            .filter_map(|id| {
                let lag = self.lag(id)?;
                Some(PeerMetrics {
                    peer: id,
                    acked: self.peers[&id].acked.clone(),
                    lag,
                })
            })
            .collect();
        Metrics {
            node: self.node,
            incarnation: self.hlc.replica(),
            role: self.role,
            clock: self.clock(),
            writes: self.counters.writes,
            messages_sent: self.counters.sent,
            messages_received: self.counters.received,
            messages_rejected: self.counters.rejected,
            conflicts_resolved: self.counters.conflicts,
            stale_deltas: self.counters.stale,
            peers,
        }
    }

    /// Encodes a message for the wire (see [`crate::wire`]).
    pub fn encode(&self, msg: &Message<T>) -> Vec<u8> {
        crate::wire::encode(msg)
    }

    /// Decodes and applies a message from the wire, enforcing the configured size
    /// limit before parsing.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`], [`Error::UnsupportedVersion`], [`Error::Decode`],
    /// and everything [`SyncEngine::receive`] returns.
    pub fn receive_bytes(&mut self, bytes: &[u8]) -> Result<Received<T>> {
        match crate::wire::decode::<T>(bytes, self.config.max_message_bytes) {
            Ok(msg) => self.receive(msg),
            Err(e) => {
                self.counters.rejected += 1;
                Err(e)
            }
        }
    }
}
