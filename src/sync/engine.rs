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

/// How an engine is set up. Every field has a builder method of the same name.
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
    /// The largest encoded message, in bytes: received messages above it are refused
    /// before parsing, and the driver ([`SyncEngine::poll_transmit`]) splits a larger
    /// delta into chunks below it. Use the same value on every peer.
    pub max_message_bytes: usize,
    /// The most replicas a received causal context may name.
    pub max_clock_entries: usize,
    /// The id of this incarnation: writes are stamped with it while the engine has
    /// no counter lease (see [`SyncEngine::with_lease`]), and messages carry it as the
    /// sender's boot (`inc`) in any case. `None` (the default) draws a random one; set
    /// it only for deterministic tests, and never reuse one.
    pub incarnation: Option<ReplicaId>,
    /// How far ahead of local wall time, in milliseconds, a received timestamp may be
    /// (see [`Hlc::with_max_offset`]); further ahead, the message is refused with
    /// [`Error::ClockDrift`].
    pub max_offset_ms: u64,
    /// With `open_membership`, the most peers this replica keeps: a message from one
    /// more new replica is refused with [`Error::TooManyEntries`].
    pub max_peers: usize,
    /// The newest protocol version to speak (default [`PROTOCOL_VERSION`]); set it to
    /// an older one to hold a node back during a rolling upgrade.
    pub protocol_version: u32,
    /// How many counters one lease extension grants (see [`LeaseStore`]). With 1 (the
    /// default) the lease records exactly the highest counter that has left the
    /// engine, written at most once per outgoing batch of deltas, and a restart
    /// leaves a gap in the node's own context only for writes it sent and then lost.
    /// A larger block writes the lease less often, but each restart then leaves the
    /// unused rest of a block as a gap that never closes (a few bytes in every
    /// context, per restart), and the counter segments this node wrote before the
    /// restart no longer fold ([`Config::fold_counters`] cannot tell the gap from a
    /// fold of its earlier life still on its way): one or a few more segments per
    /// counter key, per restart.
    pub lease_block: u64,
    /// How long the driver waits for an acknowledgement before it resends, in
    /// milliseconds (doubled after every resend, up to `max_retransmit_ms`).
    pub retransmit_ms: u64,
    /// The longest wait between resends, in milliseconds.
    pub max_retransmit_ms: u64,
    /// How often the driver tells a quiet peer what this replica holds (which also
    /// feeds the peer's `since_heard_ms`), in milliseconds.
    pub heartbeat_ms: u64,
    /// How often the driver opens a full anti-entropy session with each peer (it asks
    /// the peer for everything this replica lacks), in milliseconds.
    pub anti_entropy_ms: u64,
    /// How many chunks of one catch-up may be unacknowledged at once.
    pub chunk_window: u32,
    /// Whether this master folds its own stable counter segments (see
    /// [`Crdt::fold_stable`]); **off by default**. Once every peer has acknowledged
    /// a master's segments of a counter (in acknowledgements read after the senders'
    /// earlier removals had arrived), the master folds them into one segment, a write
    /// of its own that names the newest dot it folded: a removal made after those
    /// acknowledgements holds that dot dead and never saw the fold, and takes the
    /// fold too, so a counter removed while another master folds it stays removed.
    /// It keeps a hot counter at a few segments per master instead of one per update
    /// (a million increments: 3 segments, 272 bytes).
    ///
    /// **Precondition: masters restart from everything they had acknowledged** (a
    /// node that persists before it sends, like `concord-node` with `fsync =
    /// "always"`). A master restored from an older state may remove a counter having
    /// seen only part of what a peer folded since: the removed increments can come
    /// back, and (rarely, when a fold of a fold races it) replicas can diverge. Leave
    /// folding off with weaker durability or with restores from backups. Folding also
    /// assumes that `peers` is every replica that may remove a counter (a full mesh),
    /// and waits until every peer speaks protocol version 3 (a fold travels to an
    /// older peer as a plain segment).
    ///
    /// Folding waits for *every* peer: while one is unreachable, this master's new
    /// segments stay unfolded (about 11 bytes of state per increment) and fold once
    /// it is back and has acknowledged them. A peer gone for good must be taken out
    /// of `peers` (a restart with the new configuration), or counters grow with
    /// every increment until it is.
    pub fold_counters: bool,
    /// The most received writes (dots) this replica keeps set aside at once for hot
    /// keys, keys a delta would push past [`Limits::max_siblings`] (see
    /// [`SyncEngine::hot_keys`]). A delta that would set aside more is refused whole
    /// with [`Error::TooManySiblings`], as it was before containment, so a peer cannot
    /// grow this replica's bookkeeping without bound. 0 turns containment off.
    pub max_set_aside: u64,
    /// Master–follower mode with fencing (`None`, the default: multi-master, and the
    /// engine behaves as it always did). With `Some(lease_ms)`:
    ///
    /// * a master takes local writes only while a majority of the replicas (itself
    ///   included) has answered it within `lease_ms`, measured on its own time
    ///   source's monotonic clock ([`TimeSource::monotonic_ms`]) from when it sent
    ///   what they answered; otherwise [`Error::NoQuorum`];
    /// * every promotion starts a new epoch, strictly greater than any seen; a master
    ///   that hears of a newer epoch steps down ([`Error::Deposed`]); a delta sent in
    ///   an older epoch than the receiver's is refused ([`Error::StaleEpoch`]); a
    ///   replica supports one master per epoch;
    /// * a promoted master takes writes only once a majority is in its epoch and then
    ///   `lease_ms + lease_ms / 4` have passed on its own monotonic clock
    ///   ([`Error::FencingWait`] until then): the lease of any earlier master has run
    ///   out by then, as long as the replicas' monotonic clocks *run* at rates within
    ///   10% of each other (their offsets, and steps of the wall clocks, do not
    ///   matter).
    ///
    /// Every node must speak protocol version 3 or newer ([`Config::protocol_version`]), must
    /// be configured with the same `lease_ms`, and `lease_ms` must be at least twice
    /// [`Config::heartbeat_ms`] (a master's heartbeats renew its lease). See the
    /// guide's "Failover and fencing".
    pub master_lease_ms: Option<u64>,
    /// In master–follower mode, how far a peer's epoch may be ahead of this replica's:
    /// a message with an epoch further ahead (or above `u64::MAX / 2`) is refused with
    /// [`Error::InvalidEpoch`], so a hostile peer cannot push the epoch to where the
    /// next promotion overflows. Every promotion adds 1, so the default (2^20) leaves
    /// room for a node that slept through a million failovers.
    pub max_epoch_ahead: u64,
}

/// The highest epoch a replica takes: promotions add 1, so this leaves room for
/// `u64::MAX / 2` of them after it, and a hostile epoch can never overflow one.
pub const MAX_EPOCH: u64 = u64::MAX / 2;

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
            protocol_version: PROTOCOL_VERSION,
            lease_block: 1,
            retransmit_ms: 1_000,
            max_retransmit_ms: 10_000,
            heartbeat_ms: 1_000,
            anti_entropy_ms: 30_000,
            chunk_window: 4,
            fold_counters: false,
            max_set_aside: 1 << 16,
            master_lease_ms: None,
            max_epoch_ahead: 1 << 20,
        }
    }
}

macro_rules! config_setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $field(mut self, $field: $ty) -> Self {
                self.$field = $field;
                self
            }
        )*
    };
}

impl Config {
    /// A master replicating with exactly these peers; every other setting at its default.
    ///
    /// ```
    /// use concord::sync::{Config, Role};
    /// use concord::ReplicaId;
    ///
    /// let (b_id, c_id) = (ReplicaId::from_u128(2), ReplicaId::from_u128(3));
    /// let config = Config::with_peers([b_id, c_id]).max_offset_ms(250);
    /// assert_eq!(config.peers, [b_id, c_id]);
    /// assert_eq!(config.role, Role::Master);
    /// config.validate()?;
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn with_peers(peers: impl IntoIterator<Item = ReplicaId>) -> Self {
        Config {
            peers: peers.into_iter().collect(),
            ..Config::default()
        }
    }

    /// The same configuration, accepting messages from replicas not yet in `peers`
    /// (they become peers, up to [`Config::max_peers`]).
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (hub_id, new_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut hub = SyncEngine::new(hub_id, Settings::new(), time.clone(), Config::default().open());
    /// let mut newcomer =
    ///     SyncEngine::new(new_id, Settings::new(), time, Config::with_peers([hub_id]));
    /// hub.receive(newcomer.sync_with(hub_id)?)?;
    /// assert_eq!(hub.peers().collect::<Vec<_>>(), [new_id]); // it joined
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn open(mut self) -> Self {
        self.open_membership = true;
        self
    }

    /// The same configuration as a read-only follower: it receives deltas and refuses
    /// local writes with [`Error::ReadOnly`] until [promoted](SyncEngine::promote).
    ///
    /// ```
    /// use concord::sync::{Config, Role, SyncEngine};
    /// use concord::{Error, LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, f_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let config = Config::with_peers([a_id]).follower();
    /// let mut f = SyncEngine::new(f_id, Settings::new(), ManualClock::new(1_000), config);
    /// assert_eq!(f.role(), Role::Follower);
    /// let refused = f.update(|m, hlc| m.set("volume".into(), 7, hlc));
    /// assert!(matches!(refused, Err(Error::ReadOnly { .. })));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn follower(mut self) -> Self {
        self.role = Role::Follower;
        self
    }

    /// The same configuration in master–follower mode with fencing epochs and a
    /// master lease of `lease_ms` (see [`Config::master_lease_ms`]).
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{Error, LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let [m_id, f1, f2] = [1, 2, 3].map(ReplicaId::from_u128);
    /// let config = Config::with_peers([f1, f2]).master_follower(3_000);
    /// config.validate()?;
    /// let mut m = SyncEngine::new(m_id, Settings::new(), ManualClock::new(1_000), config);
    /// // No follower has answered yet: the master may be alone in a partition.
    /// let refused = m.update(|s, hlc| s.set("volume".into(), 7, hlc));
    /// assert!(matches!(refused, Err(Error::NoQuorum { answered: 1, needed: 2, .. })));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn master_follower(mut self, lease_ms: u64) -> Self {
        self.master_lease_ms = Some(lease_ms);
        self
    }

    /// The same configuration with a fixed incarnation id: the writer id of an engine
    /// without a lease, and the boot id its messages carry (deterministic tests only:
    /// two engines, or two runs, must never share one).
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// let writer = ReplicaId::from_u128(11);
    /// let config = Config::default().incarnation(writer);
    /// let mut a = SyncEngine::new(
    ///     ReplicaId::from_u128(1),
    ///     OrMap::<String, LwwRegister<u32>>::new(),
    ///     ManualClock::new(1_000),
    ///     config,
    /// );
    /// let dot = a.update(|m, hlc| m.set("volume".into(), 7, hlc))?.dot.unwrap();
    /// assert_eq!(dot.replica(), writer); // the same dot on every run
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn incarnation(mut self, id: ReplicaId) -> Self {
        self.incarnation = Some(id);
        self
    }

    config_setters! {
        /// Sets [`Config::limits`], the limits on state received from peers.
        ///
        /// ```
        /// use concord::sync::Config;
        /// use concord::Limits;
        ///
        /// let config = Config::default().limits(Limits { max_siblings: 8, ..Limits::default() });
        /// assert_eq!(config.limits.max_siblings, 8);
        /// ```
        limits: Limits,
        /// Sets [`Config::max_message_bytes`] (the same on every peer).
        ///
        /// ```
        /// use concord::sync::Config;
        ///
        /// // Catch-ups larger than 64 KiB travel as chunks.
        /// let config = Config::default().max_message_bytes(64 << 10);
        /// config.validate()?;
        /// # Ok::<(), concord::Error>(())
        /// ```
        max_message_bytes: usize,
        /// Sets [`Config::max_clock_entries`].
        ///
        /// ```
        /// use concord::sync::Config;
        ///
        /// let config = Config::default().max_clock_entries(256);
        /// assert_eq!(config.max_clock_entries, 256);
        /// ```
        max_clock_entries: usize,
        /// Sets [`Config::max_offset_ms`].
        ///
        /// ```
        /// use concord::sync::Config;
        ///
        /// // Refuse timestamps more than 250 ms ahead of this host's clock.
        /// let config = Config::default().max_offset_ms(250);
        /// assert_eq!(config.max_offset_ms, 250);
        /// ```
        max_offset_ms: u64,
        /// Sets [`Config::max_peers`] (with [`Config::open`]).
        ///
        /// ```
        /// use concord::sync::Config;
        ///
        /// let config = Config::default().open().max_peers(8);
        /// assert!(config.open_membership);
        /// ```
        max_peers: usize,
        /// Sets [`Config::protocol_version`].
        ///
        /// ```
        /// use concord::sync::Config;
        ///
        /// // Step 1 of a rolling upgrade: new binaries, still speaking version 1.
        /// let config = Config::default().protocol_version(1);
        /// config.validate()?;
        /// assert!(Config::default().protocol_version(99).validate().is_err());
        /// # Ok::<(), concord::Error>(())
        /// ```
        protocol_version: u32,
        /// Sets [`Config::lease_block`].
        ///
        /// ```
        /// use concord::sync::Config;
        ///
        /// // One lease write per 1,000 counters, at the cost of a gap per restart.
        /// let config = Config::default().lease_block(1_000);
        /// config.validate()?;
        /// # Ok::<(), concord::Error>(())
        /// ```
        lease_block: u64,
        /// Sets [`Config::retransmit_ms`].
        ///
        /// ```
        /// use concord::sync::Config;
        ///
        /// // A fast network: resend after 200 ms, backing off to 5 s at most.
        /// let config = Config::default().retransmit_ms(200).max_retransmit_ms(5_000);
        /// config.validate()?;
        /// # Ok::<(), concord::Error>(())
        /// ```
        retransmit_ms: u64,
        /// Sets [`Config::max_retransmit_ms`] (at least [`Config::retransmit_ms`]).
        ///
        /// ```
        /// use concord::sync::Config;
        ///
        /// let config = Config::default().max_retransmit_ms(60_000);
        /// config.validate()?;
        /// assert!(Config::default().max_retransmit_ms(10).validate().is_err());
        /// # Ok::<(), concord::Error>(())
        /// ```
        max_retransmit_ms: u64,
        /// Sets [`Config::heartbeat_ms`].
        ///
        /// ```
        /// use concord::sync::Config;
        ///
        /// let config = Config::default().heartbeat_ms(5_000);
        /// assert_eq!(config.heartbeat_ms, 5_000);
        /// ```
        heartbeat_ms: u64,
        /// Sets [`Config::anti_entropy_ms`].
        ///
        /// ```
        /// use concord::sync::Config;
        ///
        /// // A full session with each peer every 5 minutes.
        /// let config = Config::default().anti_entropy_ms(300_000);
        /// assert_eq!(config.anti_entropy_ms, 300_000);
        /// ```
        anti_entropy_ms: u64,
        /// Sets [`Config::chunk_window`].
        ///
        /// ```
        /// use concord::sync::Config;
        ///
        /// // A long fat link: keep 16 chunks of a catch-up in flight.
        /// let config = Config::default().max_message_bytes(64 << 10).chunk_window(16);
        /// config.validate()?;
        /// # Ok::<(), concord::Error>(())
        /// ```
        chunk_window: u32,
        /// Sets [`Config::fold_counters`].
        ///
        /// ```
        /// use concord::sync::Config;
        ///
        /// // Like counters that are never removed: fold them.
        /// let config = Config::default().fold_counters(true);
        /// assert!(config.fold_counters);
        /// ```
        fold_counters: bool,
        /// Sets [`Config::max_set_aside`].
        ///
        /// ```
        /// use concord::sync::Config;
        ///
        /// // Refuse, rather than contain, a key over the sibling cap (the old way).
        /// let config = Config::default().max_set_aside(0);
        /// assert_eq!(config.max_set_aside, 0);
        /// ```
        max_set_aside: u64,
        /// Sets [`Config::max_epoch_ahead`].
        ///
        /// ```
        /// use concord::sync::Config;
        ///
        /// let config = Config::default().master_follower(3_000).max_epoch_ahead(1_000);
        /// assert_eq!(config.max_epoch_ahead, 1_000);
        /// ```
        max_epoch_ahead: u64,
    }

    /// Checks that the settings make sense together. [`SyncEngine::new`] does not call
    /// it: call it where the configuration is read (from a file, flags).
    ///
    /// ```
    /// use concord::sync::Config;
    /// use concord::Error;
    ///
    /// Config::default().retransmit_ms(200).max_retransmit_ms(5_000).validate()?;
    /// let bad = Config::default().retransmit_ms(20_000); // above max_retransmit_ms
    /// assert!(matches!(bad.validate(), Err(Error::InvalidConfig { .. })));
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first setting that does not.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: &str| {
            Err(Error::InvalidConfig {
                reason: reason.to_string(),
            })
        };
        if !(OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&self.protocol_version) {
            return bad("protocol_version is not one this build speaks");
        }
        if self.max_message_bytes < 1024 {
            return bad("max_message_bytes below 1024 leaves no room for a chunk");
        }
        if self.lease_block == 0 {
            return bad("lease_block must be at least 1");
        }
        if self.retransmit_ms == 0 || self.max_retransmit_ms < self.retransmit_ms {
            return bad("retransmit_ms must be positive and at most max_retransmit_ms");
        }
        if self.heartbeat_ms == 0 || self.anti_entropy_ms == 0 {
            return bad("heartbeat_ms and anti_entropy_ms must be positive");
        }
        if self.chunk_window == 0 {
            return bad("chunk_window must be at least 1");
        }
        if self.limits.max_siblings == 0 {
            return bad("limits.max_siblings must be at least 1");
        }
        if let Some(lease_ms) = self.master_lease_ms {
            if self.protocol_version < 3 {
                return bad("master_lease_ms (master–follower mode) needs protocol_version 3");
            }
            if lease_ms < 2 * self.heartbeat_ms {
                return bad("master_lease_ms must be at least twice heartbeat_ms");
            }
            if self.open_membership {
                return bad("master_lease_ms needs a fixed peer set: a majority of whom?");
            }
            if self.max_epoch_ahead == 0 {
                return bad("max_epoch_ahead must be at least 1");
            }
        }
        Ok(())
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

/// An engine's durable state: restore it with [`SyncEngine::restore`].
///
/// It serializes with serde in either form: a JSON object (what `serde_json` writes;
/// fields at their defaults are left out), or, in a binary serde format such as the
/// one [`crate::wire::encode_snapshot`] writes, every field in a fixed order.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot<T> {
    /// The replica's node id.
    pub node: ReplicaId,
    /// Its role when the snapshot was taken.
    pub role: Role,
    /// The replicated state.
    pub state: T,
    /// What each peer had acknowledged (snapshots of protocol version 1 name version
    /// vectors here; they restore as the same contexts).
    pub peers: Vec<(ReplicaId, CausalContext)>,
    /// The greatest hybrid-logical-clock timestamp issued or seen.
    pub hlc_last: Timestamp,
    /// The newest protocol version each peer was heard to speak: a restarted node
    /// speaks it from its first message (version 1 cannot name gaps, so a first
    /// exchange in version 1 could resend everything past one).
    pub peer_versions: Vec<(ReplicaId, u32)>,
    /// The fencing epoch (see [`SyncEngine::epoch`]); 0, and left out of the JSON
    /// form, until a promotion.
    pub epoch: u64,
    /// The master this replica supports in `epoch` (itself, if it leads it): kept so
    /// that a restarted replica never supports two masters in one epoch.
    pub leader: Option<ReplicaId>,
}

/// A snapshot as JSON writes it.
#[derive(Serialize)]
#[serde(bound = "T: Crdt")]
struct JsonSnapshotOut<'a, T> {
    node: ReplicaId,
    role: Role,
    state: &'a T,
    peers: &'a [(ReplicaId, CausalContext)],
    hlc_last: Timestamp,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    peer_versions: &'a [(ReplicaId, u32)],
    #[serde(skip_serializing_if = "is_zero")]
    epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<ReplicaId>,
}

/// A snapshot as JSON reads it.
#[derive(Deserialize)]
#[serde(bound = "T: Crdt")]
struct JsonSnapshotIn<T> {
    node: ReplicaId,
    role: Role,
    state: T,
    #[serde(deserialize_with = "acked_any_form")]
    peers: Vec<(ReplicaId, CausalContext)>,
    hlc_last: Timestamp,
    #[serde(default)]
    peer_versions: Vec<(ReplicaId, u32)>,
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    leader: Option<ReplicaId>,
}

/// A snapshot in a binary form: every field, in order.
#[derive(Serialize)]
#[serde(bound = "T: Crdt")]
struct BinarySnapshotOut<'a, T> {
    node: ReplicaId,
    role: Role,
    state: &'a T,
    peers: &'a [(ReplicaId, CausalContext)],
    hlc_last: Timestamp,
    peer_versions: &'a [(ReplicaId, u32)],
    epoch: u64,
    leader: Option<ReplicaId>,
}

/// A snapshot as a binary form reads it.
#[derive(Deserialize)]
#[serde(bound = "T: Crdt")]
struct BinarySnapshotIn<T> {
    node: ReplicaId,
    role: Role,
    state: T,
    peers: Vec<(ReplicaId, CausalContext)>,
    hlc_last: Timestamp,
    peer_versions: Vec<(ReplicaId, u32)>,
    epoch: u64,
    leader: Option<ReplicaId>,
}

impl<T: Crdt> Serialize for Snapshot<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            JsonSnapshotOut {
                node: self.node,
                role: self.role,
                state: &self.state,
                peers: &self.peers,
                hlc_last: self.hlc_last,
                peer_versions: &self.peer_versions,
                epoch: self.epoch,
                leader: self.leader,
            }
            .serialize(s)
        } else {
            BinarySnapshotOut {
                node: self.node,
                role: self.role,
                state: &self.state,
                peers: &self.peers,
                hlc_last: self.hlc_last,
                peer_versions: &self.peer_versions,
                epoch: self.epoch,
                leader: self.leader,
            }
            .serialize(s)
        }
    }
}

impl<'de, T: Crdt> Deserialize<'de> for Snapshot<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        if d.is_human_readable() {
            let j = JsonSnapshotIn::<T>::deserialize(d)?;
            Ok(Snapshot {
                node: j.node,
                role: j.role,
                state: j.state,
                peers: j.peers,
                hlc_last: j.hlc_last,
                peer_versions: j.peer_versions,
                epoch: j.epoch,
                leader: j.leader,
            })
        } else {
            let b = BinarySnapshotIn::<T>::deserialize(d)?;
            Ok(Snapshot {
                node: b.node,
                role: b.role,
                state: b.state,
                peers: b.peers,
                hlc_last: b.hlc_last,
                peer_versions: b.peer_versions,
                epoch: b.epoch,
                leader: b.leader,
            })
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn acked_any_form<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<(ReplicaId, CausalContext)>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Acked {
        Context(CausalContext),
        Clock(VectorClock),
    }
    let v: Vec<(ReplicaId, Acked)> = Deserialize::deserialize(d)?;
    Ok(v.into_iter()
        .map(|(id, a)| match a {
            Acked::Context(c) => (id, c),
            Acked::Clock(c) => (id, CausalContext::from(&c)),
        })
        .collect())
}

/// One encoded message for the host to send (from [`SyncEngine::poll_transmit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The peer to send it to.
    pub to: ReplicaId,
    /// The message, encoded (at most [`Config::max_message_bytes`] unless a single
    /// entry is larger than that).
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
    /// let first = engine.update(|m, hlc| m.set("a".into(), 1, hlc))?.dot.unwrap();
    /// assert_eq!(first.replica(), node);
    /// let _to_peer = engine.sync_with(peer)?; // the write leaves: the lease records it
    /// assert_eq!(lease.get(), first.counter());
    ///
    /// // Crash; restart from the older snapshot with the same lease.
    /// let mut engine = SyncEngine::restore(snapshot, time, config)?.with_lease(lease)?;
    /// let second = engine.update(|m, hlc| m.set("b".into(), 2, hlc))?.dot.unwrap();
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// b.update(|m, hlc| m.set("volume".into(), 9, hlc))?;
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// assert_eq!(a.clock().get(a.incarnation()), 1);
    /// b.receive(a.sync_with(b_id)?)?;
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
    /// let dot = a.update(|m, hlc| m.set("volume".into(), 7, hlc))?.dot.unwrap();
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
    /// let refused = f.update(|m, hlc| m.set("volume".into(), 7, hlc));
    /// assert!(matches!(refused, Err(Error::ReadOnly { .. })));
    /// assert_eq!(f.promote()?, 1); // the master is gone: epoch 1 begins
    /// f.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
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
    /// let refused = m.update(|s, hlc| s.set("volume".into(), 7, hlc));
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
    /// m.receive(f.sync_with(m_id)?)?; // M hears of epoch 1 and steps down
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
    /// m.receive(answer)?;
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// b.demote();
    /// assert!(matches!(b.update(|m, hlc| m.set("volume".into(), 9, hlc)), Err(Error::ReadOnly { .. })));
    /// b.receive(a.sync_with(b_id)?)?; // it still replicates
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
    /// delta since it.
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
            v,
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// b.update(|m, hlc| m.set("bass".into(), 3, hlc))?;
    /// let hello = a.sync_with(b_id)?;
    /// let answer = b.receive(hello)?.reply.expect("a session asks for an answer");
    /// a.receive(answer)?;
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// for msg in a.push() {
    ///     // One message per peer that lacks something; each asks for an acknowledgement.
    ///     let ack = b.receive(msg)?.reply.expect("B acknowledges");
    ///     a.receive(ack)?;
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

    /// Checks that `ctx` claims no write of this replica's writer id that it never
    /// issued: such a claim would stall or corrupt this replica's own writes.
    fn check_claims(&self, ctx: &CausalContext) -> Result<()> {
        let me = self.hlc.replica();
        let claimed = ctx.max_counter(me);
        if claimed > self.issued() {
            return Err(Error::InvalidDot {
                dot: Dot::new(me, claimed),
                reason: "a write of this replica that it never issued",
            });
        }
        Ok(())
    }

    /// True if a delta's context makes claims about writers other than its sender and
    /// this replica that this replica does not take (a context claim is a dot "seen";
    /// an element backs the claim on its own dot). See the guide's "Hostile peers":
    ///
    /// * about a writer that reports to this replica (says, in its own messages, what
    ///   it has issued), nothing unbacked more than [`Limits::max_claim_ahead`] past
    ///   its report, so a peer cannot claim a writer's far future;
    /// * gaps: at most [`Limits::max_relayed_gaps`] in all, counting in each writer's
    ///   entry the ranges that start past its report (gaps below a report close once
    ///   the writer's own dots arrive; a writer that does not report has none).
    fn unbacked_claims(&self, msg: &Message<T>, delta: &T) -> bool {
        let ctx = delta.context();
        let own = |r: ReplicaId| {
            r == msg.from || r == msg.inc || r == self.node || r == self.hlc.replica()
        };
        let held = self.state.context();
        let limits = &self.config.limits;
        // Claims far past a reporting writer's word.
        let mut ceiling = VectorClock::new();
        let mut any = false;
        for r in ctx.replicas().filter(|r| !own(*r)) {
            if let Some(report) = self.reports.get(&r) {
                ceiling.raise(r, report.saturating_add(limits.max_claim_ahead).max(1));
                any = true;
            }
        }
        if any {
            let reporting = CausalContext::from_replicas(
                ctx.ranges()
                    .filter(|(r, _)| ceiling.get(*r) > 0)
                    .map(|(r, ranges)| (r, ranges.to_vec())),
            );
            let claimed = reporting.since(&ceiling).minus(held);
            if !claimed.is_empty() {
                let mut backed = CausalContext::new();
                delta.for_each_element_dot(&mut |d| {
                    if claimed.contains(d) {
                        backed.insert(d);
                    }
                });
                if !claimed.minus(&backed).is_empty() {
                    return true;
                }
            }
        }
        // Gaps past the writers' reports.
        let floor = |r: &ReplicaId| self.reports.get(r).copied().unwrap_or(0);
        let gaps = |r: &ReplicaId, ranges: &[(u64, u64)]| -> usize {
            let f = floor(r).saturating_add(1);
            ranges.iter().filter(|(lo, _)| *lo > f).count()
        };
        let mut added = 0usize;
        let mut removed = 0usize;
        for (r, ranges) in ctx.ranges().filter(|(r, _)| !own(*r)) {
            let mut union = held.only(r);
            let had = union.ranges().map(|(_, rs)| gaps(&r, rs)).sum::<usize>();
            union.merge_ref(&CausalContext::from_replicas([(r, ranges.to_vec())]));
            let has = union.ranges().map(|(_, rs)| gaps(&r, rs)).sum::<usize>();
            added += has.saturating_sub(had);
            removed += had.saturating_sub(has);
        }
        if added > removed {
            let before: usize = held
                .ranges()
                .filter(|(r, _)| !own(*r))
                .map(|(r, rs)| gaps(&r, rs))
                .sum();
            if before + added - removed > limits.max_relayed_gaps {
                return true;
            }
        }
        false
    }

    /// Checks a received context against the configured limits.
    fn check_context(&self, ctx: &CausalContext) -> Result<()> {
        let replicas = ctx.replicas().count();
        if replicas > self.config.max_clock_entries {
            return Err(Error::TooManyEntries {
                what: "version vector entries",
                count: replicas,
                limit: self.config.max_clock_entries,
            });
        }
        if ctx.range_count() > self.config.limits.max_context_ranges {
            return Err(Error::TooManyEntries {
                what: "context ranges",
                count: ctx.range_count(),
                limit: self.config.limits.max_context_ranges,
            });
        }
        if let Some((replica, n)) = ctx.max_clock().iter().find(|(_, n)| *n > MAX_COUNTER) {
            return Err(Error::InvalidDot {
                dot: Dot::new(replica, n),
                reason: "counter beyond the largest a replica may issue",
            });
        }
        Ok(())
    }

    /// Applies a message from a peer and returns the answer to send back, if any
    /// (the manual way; hosts on the driver call [`SyncEngine::handle_message`]).
    /// Everything is checked before anything changes: on error the state, the clock
    /// and the peer bookkeeping are exactly as before.
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// let received = b.receive(a.sync_with(b_id)?)?;
    /// assert_eq!(b.state().value("volume"), Some(&7));
    /// let answer = received.reply.expect("A asked for an answer");
    /// assert!(a.receive(answer)?.reply.is_none()); // an answer needs none
    ///
    /// // A replica B does not know is refused, and B is unchanged.
    /// let c_id = ReplicaId::from_u128(3);
    /// let mut c = SyncEngine::new(c_id, Settings::new(), time, Config::with_peers([b_id]));
    /// let refused = b.receive(c.sync_with(b_id)?);
    /// assert_eq!(refused.unwrap_err(), Error::UnknownPeer { peer: c_id });
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedVersion`], [`Error::UnknownPeer`], [`Error::InvalidMessage`]
    /// (misaddressed), [`Error::TooManyEntries`] (a context naming too many replicas
    /// or ranges), [`Error::ClockDrift`] (a timestamp past the maximum offset), and the
    /// state's own validation errors ([`Error::InvalidDot`], [`Error::TooManyEntries`],
    /// [`Error::TooManySiblings`]); in master–follower mode [`Error::StaleEpoch`],
    /// [`Error::InvalidEpoch`], and [`Error::Lease`] if the epoch or master the message
    /// brings cannot be recorded in the lease store first (the sender's retransmission
    /// tries again).
    pub fn receive(&mut self, msg: Message<T>) -> Result<Received<T>> {
        let result = self.apply(msg, false);
        if result.is_err() {
            self.counters.rejected += 1;
        }
        result
    }

    /// Applies a message from a peer for a host on the driver: the answer, if one is
    /// due, is queued for [`SyncEngine::poll_transmit`] (so `reply` is `None`). For a
    /// host that decodes messages itself (to route them, say); others call
    /// [`SyncEngine::handle_bytes`].
    ///
    /// ```
    /// use concord::sync::{Config, Message, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time.clone(), Config::with_peers([a_id]));
    /// let hello = a.poll_transmit().expect("A introduces itself");
    /// let msg = Message::<Settings>::decode(&hello.bytes, 1 << 20)?;
    /// assert_eq!(msg.to, b_id);
    /// let received = b.handle_message(msg)?;
    /// assert!(received.reply.is_none()); // queued instead:
    /// assert_eq!(b.poll_transmit().expect("B answers").to, a_id);
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`SyncEngine::receive`].
    pub fn handle_message(&mut self, msg: Message<T>) -> Result<Received<T>> {
        let result = self.apply(msg, true);
        if result.is_err() {
            self.counters.rejected += 1;
        }
        result
    }

    /// Decodes and applies a message for a host on the driver (see
    /// [`SyncEngine::handle_message`]), enforcing the size limit before parsing. Log an
    /// error and carry on: a refused message changed nothing.
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// // Move messages until neither engine has anything to send.
    /// let mut quiet = false;
    /// while !quiet {
    ///     quiet = true;
    ///     while let Some(t) = a.poll_transmit() {
    ///         b.handle_bytes(&t.bytes)?;
    ///         quiet = false;
    ///     }
    ///     while let Some(t) = b.poll_transmit() {
    ///         a.handle_bytes(&t.bytes)?;
    ///         quiet = false;
    ///     }
    /// }
    /// assert_eq!(b.state().value("volume"), Some(&7));
    ///
    /// assert!(matches!(b.handle_bytes(b"not a message"), Err(Error::Decode { .. })));
    /// assert_eq!(b.metrics().messages_rejected, 1);
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`], [`Error::UnsupportedVersion`], [`Error::Decode`],
    /// and everything [`SyncEngine::receive`] returns.
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> Result<Received<T>> {
        match self.decode(bytes) {
            Ok(msg) => self.handle_message(msg),
            Err(e) => {
                self.counters.rejected += 1;
                Err(e)
            }
        }
    }

    /// Decodes a message in one pass: the envelope is checked against this engine
    /// (version, addressee, sender) before the body is decoded, and the body is held
    /// to the configured limits while it is (see [`crate::wire::decode_with`]).
    fn decode(&self, bytes: &[u8]) -> Result<Message<T>> {
        let budget = crate::wire::Budget {
            max_bytes: self.config.max_message_bytes,
            newest: self.config.protocol_version,
            limits: self.config.limits.clone(),
            max_clock_entries: self.config.max_clock_entries,
        };
        crate::wire::decode_with::<T>(bytes, &budget, |e| self.check_envelope(e.v, e.from, e.to))
    }

    /// Checks who sent a message to whom, in which version: before its body is
    /// decoded, and again when a decoded message is handed in.
    fn check_envelope(&self, v: u32, from: ReplicaId, to: ReplicaId) -> Result<()> {
        if v < OLDEST_PROTOCOL_VERSION || v > self.config.protocol_version {
            return Err(Error::UnsupportedVersion {
                version: v,
                supported: self.config.protocol_version,
            });
        }
        if to != self.node || from == self.node {
            return Err(Error::InvalidMessage {
                reason: format!("message from {from} to {to} reached {}", self.node),
            });
        }
        if !self.peers.contains_key(&from) {
            if !self.config.open_membership {
                return Err(Error::UnknownPeer { peer: from });
            }
            if self.peers.len() >= self.config.max_peers {
                return Err(Error::TooManyEntries {
                    what: "peers",
                    count: self.peers.len() + 1,
                    limit: self.config.max_peers,
                });
            }
        }
        Ok(())
    }

    /// In master–follower mode, checks a message's epoch before anything changes:
    /// version 3 (older versions carry no epoch), not absurdly far ahead, and a delta
    /// not sent in an older epoch than this replica's.
    fn check_epoch(&self, msg: &Message<T>) -> Result<()> {
        if msg.v < 3 {
            return Err(Error::UnsupportedVersion {
                version: msg.v,
                supported: self.config.protocol_version,
            });
        }
        if msg.epoch > MAX_EPOCH
            || msg.epoch > self.epoch.saturating_add(self.config.max_epoch_ahead)
        {
            return Err(Error::InvalidEpoch {
                epoch: msg.epoch,
                reason: "too far ahead of this replica's epoch (see Config::max_epoch_ahead)",
            });
        }
        if msg.epoch < self.epoch && msg.delta.is_some() {
            return Err(Error::StaleEpoch {
                from: msg.from,
                epoch: msg.epoch,
                current: self.epoch,
            });
        }
        Ok(())
    }

    fn apply(&mut self, msg: Message<T>, driver: bool) -> Result<Received<T>> {
        self.check_envelope(msg.v, msg.from, msg.to)?;
        let fenced = self.config.master_lease_ms.is_some();
        if fenced {
            self.check_epoch(&msg)?;
        }
        self.check_context(&msg.seen)?;
        self.check_context(&msg.base)?;
        // What the peer says it has seen is an acknowledgement: a claim on writes of
        // ours that were never issued (a peer poisoned by a hostile third party) is
        // ignored rather than refused, so it cannot cut this link.
        let mut msg = msg;
        msg.seen.truncate(self.hlc.replica(), self.issued());
        msg.base.truncate(self.hlc.replica(), self.issued());
        if let Some(delta) = &msg.delta {
            self.check_claims(delta.context())?;
        }
        let newest = msg.delta.as_ref().and_then(Crdt::max_timestamp);
        if let Some(ts) = &newest {
            self.hlc.validate(ts)?;
        }
        // A delta is skipped (validated, not merged) when the receiver lacks what it
        // was computed against (it was restored from an older snapshot), or when it is
        // a chunk out of order (an earlier piece of the same stream is missing); the
        // answer then tells the sender what this replica holds.
        let base_missing = msg.delta.is_some() && !self.state.context().includes(&msg.base);
        let (in_order, stream_after) = match (&msg.chunk, self.peers.get(&msg.from)) {
            (Some(c), peer) => {
                let expected = peer.and_then(|p| p.inbound).is_some_and(|(boot, s, next)| {
                    boot == msg.inc && s == c.stream && next == c.index
                });
                let ok = c.index == 0 || expected;
                // Only a chunk moves the inbound stream on; an acknowledgement's chunk
                // field reports progress through one of *our* streams.
                let after =
                    msg.delta
                        .is_some()
                        .then_some((msg.inc, c.stream, c.index.saturating_add(1)));
                (ok, after)
            }
            (None, _) => (true, None),
        };
        // A delta whose context claims what no write backs and its writer never
        // reported (see `unbacked_claims`) is skipped too, but not answered at once:
        // the sender resends it on its backed-off timer, by when the writer's own
        // report has usually arrived.
        let unbacked = msg
            .delta
            .as_ref()
            .is_some_and(|delta| self.unbacked_claims(&msg, delta));
        let restart = msg.delta.is_some() && (base_missing || !in_order);
        let skip = restart || unbacked;
        if let (true, Some(delta)) = (skip, &msg.delta) {
            delta.validate(&self.config.limits)?;
        }
        // The epoch and master this message makes this replica take are recorded
        // before anything changes (and before it can echo that master): refused, with
        // nothing changed, if they cannot be.
        if fenced {
            if msg.epoch > self.epoch {
                self.persist_fence(self.fence_after(msg.epoch, msg.lead.map(|_| msg.from)))?;
            } else if msg.epoch == self.epoch && msg.lead.is_some() && self.leader.is_none() {
                self.persist_fence(self.fence_after(msg.epoch, Some(msg.from)))?;
            }
        }
        let mut conflicts = Vec::new();
        let had_delta = msg.delta.is_some();
        let mut set_aside = Vec::new();
        let contain = self.may_contain(msg.v, msg.from);
        let outcome = match msg.delta {
            Some(delta) if !skip && contain => {
                let budget = self.config.max_set_aside.saturating_sub(self.hot.pending());
                self.state.try_merge_containing(
                    delta,
                    &self.config.limits,
                    &mut conflicts,
                    budget,
                    &mut set_aside,
                )?
            }
            Some(delta) if !skip => {
                self.state
                    .try_merge(delta, &self.config.limits, &mut conflicts)?
            }
            _ => Outcome::Unchanged,
        };
        // Nothing below fails: the merge is done, record what it set aside, and what
        // the sender reports of its own writes (a version-1 clock stops at the first
        // gap: a lower bound, which is still its word).
        // A peer's new boot retires the old one's writer id: it will never report
        // again, so what others relay of it is only held to the gap bound.
        if let Some(old) = self.peers.get(&msg.from).and_then(|p| p.boot) {
            if old != msg.inc && old != msg.from {
                self.reports.remove(&old);
            }
        }
        for writer in [msg.from, msg.inc] {
            let said = msg.seen.max_counter(writer);
            if said > 0 || writer == msg.from {
                let report = self.reports.entry(writer).or_default();
                *report = (*report).max(said);
            }
        }
        let now = self.hlc.now_ms();
        let hot_keys = self.hot.record(set_aside, msg.from, now);
        self.counters.set_aside += hot_keys.len() as u64;
        if had_delta && !skip {
            self.heal_hot_keys();
        }
        // Validated above; a clock that moved backwards since then only narrows the
        // window, and the write is already merged, so a late drift error is ignored.
        if let Some(ts) = &newest {
            let _ = self.hlc.observe(ts);
        }
        // Fencing (master–follower mode): a newer epoch is taken (a master of an
        // older one steps down), and the first master heard in an epoch is the one
        // this replica supports in it.
        if fenced {
            if msg.epoch > self.epoch {
                self.enter_epoch(msg.epoch, msg.lead.map(|_| msg.from));
            } else if msg.epoch == self.epoch && msg.lead.is_some() && self.leader.is_none() {
                self.leader = Some(msg.from);
            }
        }
        let (epoch, leader) = (self.epoch, self.leader);
        let leads = fenced && self.role == Role::Master && leader == Some(self.node);
        let retransmit_ms = self.config.retransmit_ms;
        let peer = self
            .peers
            .entry(msg.from)
            .or_insert_with(|| Peer::new(retransmit_ms));
        // The lease: a supporter echoes its master's send times, and a master counts
        // a supporter from the latest time it echoed (one of its own, so no clock
        // offset enters). An echo counts only within the send times this master
        // actually sent that peer in its epoch, in this process: a made-up one (or
        // one of an earlier run) cannot extend the lease. A master's new boot starts
        // its send times over (its monotonic clock may have restarted lower).
        let mut echo_owed = false;
        if fenced && msg.epoch == epoch {
            if let (Some(stamp), true) = (msg.lead, leader == Some(msg.from)) {
                let same_boot = peer.boot == Some(msg.inc);
                peer.echo_out = Some(match peer.echo_out {
                    Some(e) if same_boot => e.max(stamp),
                    _ => stamp,
                });
                echo_owed = true;
            }
            let sent = peer.lead_sent;
            let echoed = msg
                .echo
                .filter(|e| sent.is_some_and(|(first, last)| first <= *e && *e <= last));
            if let (Some(echo), true) = (echoed, leads) {
                peer.lease_echo = Some(peer.lease_echo.map_or(echo, |e| e.max(echo)));
            }
        }
        // Acknowledgements of one boot only grow (a late reordered message changes
        // nothing). A new boot was restored from a snapshot and may hold less than its
        // predecessor acknowledged: its context replaces the old one, and everything
        // in flight to the old boot is forgotten.
        // Heard again after a silence of two heartbeats (a healed partition, a
        // restarted link): what is still unacknowledged goes again now, not after the
        // backed-off timer.
        let quiet_ms = 2 * self.config.heartbeat_ms;
        let silent = peer
            .last_heard_ms
            .is_none_or(|t| now.saturating_sub(t) > quiet_ms);
        let before = peer.acked.intersection(&peer.offered);
        let mut replaced_boot = false;
        if peer.boot == Some(msg.inc) {
            peer.acked.merge_ref(&msg.seen);
            if msg.v >= 2 {
                peer.exact_acked.merge_ref(&msg.seen);
                if peer.exact_acked.range_count() > self.config.limits.max_context_ranges {
                    peer.exact_acked = msg.seen.clone();
                }
            }
            // Bounded: an honest peer's context only grows, so the union is its
            // latest report; a peer sending ever new gaps is held to its last one.
            if peer.acked.range_count() > self.config.limits.max_context_ranges {
                peer.acked = msg.seen.clone();
            }
        } else {
            // (A late message from a replaced boot lands here too: its deltas then
            // carry a base the new boot lacks, the new boot skips them and answers,
            // and its answer puts this right.)
            peer.boot = Some(msg.inc);
            peer.acked = msg.seen.clone();
            peer.exact_acked = if msg.v >= 2 {
                msg.seen.clone()
            } else {
                CausalContext::new()
            };
            peer.offered = msg.seen.clone();
            peer.out = None;
            peer.inbound = None;
            peer.deadline = None;
            peer.flight = None;
            replaced_boot = true;
        }
        let progressed = !before.includes(&peer.acked.intersection(&peer.offered));
        if silent && !peer.acked.includes(&peer.offered) {
            peer.offered = peer.acked.clone();
            peer.out = None;
            peer.deadline = None;
            peer.flight = None;
            peer.rto = retransmit_ms;
        }
        peer.offered.merge_ref(&peer.acked);
        peer.vmax = Some(msg.vmax);
        peer.last_heard_ms = Some(now);
        if !skip {
            if let Some(after) = stream_after {
                peer.inbound = Some(after);
            }
        }
        // An acknowledgement (no delta) may report the peer's progress through a
        // stream of ours.
        if let (Some(c), false) = (&msg.chunk, had_delta) {
            if let Some(out) = peer.out.as_mut().filter(|o| o.id == c.stream) {
                out.acked = out.acked.max(c.index.min(out.next));
                if c.last && c.index < out.next {
                    // It skipped a piece (lost or reordered): start again from what it
                    // holds.
                    peer.out = None;
                    peer.offered = peer.acked.clone();
                }
            }
        }
        if peer
            .out
            .as_ref()
            .is_some_and(|o| o.finished && (o.acked >= o.next || peer.acked.includes(&o.upto)))
        {
            peer.out = None;
        }
        if peer.acked.includes(&peer.offered) && peer.out.is_none() {
            // The backoff ends when what was in flight arrived, not when a timeout
            // took back the offer (`offered` is then `acked`): writes the peer keeps
            // not taking (a hot key it holds contained) are resent at the backed-off
            // period, not every relay delay.
            if peer.deadline.is_some() {
                peer.rto = retransmit_ms;
            }
            peer.deadline = None;
            peer.flight = None;
        } else if peer.out.is_some() {
            if progressed && peer.deadline.is_some() {
                // A stream making progress: wait a full timeout from now.
                peer.deadline = Some(now + peer.rto);
            }
        } else if peer
            .flight
            .as_ref()
            .is_some_and(|oldest| peer.acked.includes(oldest))
        {
            // The oldest unacknowledged offer arrived; time the rest from now. (Other
            // progress does not move the deadline: a lost delta is resent after the
            // timeout even while later ones keep arriving.)
            peer.deadline = Some(now + peer.rto);
            peer.flight = Some(peer.offered.clone());
        }
        let wants_answer = msg.reply || restart || echo_owed;
        if driver {
            // An explicit question (a session opener, anti-entropy, or a peer that
            // skipped a delta) is answered at once with everything the peer has not
            // acknowledged, relays included. A delta asks only for an
            // acknowledgement: answering it with a resend would make two replicas
            // that each hold writes the other sets aside (a hot key contained on
            // both sides) send them back and forth without end; those go again on
            // the retransmission timer instead.
            if (restart || (msg.reply && !had_delta)) && peer.out.is_none() {
                peer.offered = peer.acked.clone();
                peer.relay_since = Some(0);
            }
            peer.owe_ack |= had_delta || wants_answer;
            peer.owe_restart |= restart;
        }
        if replaced_boot && self.hot.len() > 0 {
            // A peer restarted, perhaps from an older snapshot: writes set aside that
            // no peer holds any more were lost with it (one that turns up again is
            // set aside, and listed, again).
            let mut held = CausalContext::new();
            for p in self.peers.values() {
                held.merge_ref(&p.acked);
            }
            self.counters.healed += self.hot.forget_unheld(&held) as u64;
        }
        self.counters.received += 1;
        self.counters.conflicts += conflicts.len() as u64;
        if unbacked {
            self.counters.unbacked += 1;
        } else if skip {
            self.counters.stale += 1;
        }
        let reply = (!driver && wants_answer).then(|| {
            let theirs = msg.seen.clone();
            self.message(msg.from, &theirs, restart)
        });
        self.forget_acknowledged();
        self.refresh_fence();
        Ok(Received {
            outcome,
            conflicts,
            hot_keys,
            reply,
        })
    }

    /// True if a delta of protocol version `v` from `from` may be contained rather
    /// than refused. Containment leaves gaps in this replica's context until the key
    /// heals, and a version-1 acknowledgement cannot name a gap (the peer would resend
    /// everything past it, again and again), so it needs version 2 towards the sender
    /// and towards every peer known to speak only version 1.
    fn may_contain(&self, v: u32, from: ReplicaId) -> bool {
        self.config.max_set_aside > 0
            && v >= 2
            && self.config.protocol_version >= 2
            && self
                .peers
                .iter()
                .all(|(id, p)| *id == from || p.vmax.is_none_or(|vmax| vmax >= 2))
    }

    /// Forgets set-aside writes the state now holds (taken, or superseded by a write
    /// that was); a key whose every set-aside write is accounted for has healed.
    fn heal_hot_keys(&mut self) {
        if self.hot.len() > 0 {
            self.counters.healed += self.hot.heal(self.state.context()) as u64;
        }
    }

    /// The keys held contained, in key order: keys over the sibling cap whose new
    /// writes from peers were set aside while everything else kept flowing (see
    /// [`HotKey`] and the guide's "Hot keys"). A key leaves the list by itself once
    /// every write set aside for it has been taken, which happens after a write that
    /// saw its siblings collapses it, at any replica. Not part of a snapshot: after a
    /// restart a key still over the cap is listed again when its writes are next
    /// offered.
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{Limits, ManualClock, MvRegister, OrMap, ReplicaId};
    ///
    /// type Profiles = OrMap<String, MvRegister<u32>>;
    /// let ids = [1, 2, 3, 4].map(ReplicaId::from_u128);
    /// let time = ManualClock::new(1_000);
    /// let capped = Limits { max_siblings: 2, ..Limits::default() };
    /// let mut hub = SyncEngine::new(ids[0], Profiles::new(), time.clone(),
    ///     Config::with_peers(ids[1..].to_vec()).limits(capped.clone()));
    /// let mut writers = Vec::new();
    /// for id in &ids[1..] {
    ///     let config = Config::with_peers([ids[0]]).limits(capped.clone());
    ///     let mut writer = SyncEngine::new(*id, Profiles::new(), time.clone(), config);
    ///     let answer = hub.receive(writer.sync_with(ids[0])?)?.reply.expect("an answer");
    ///     writer.receive(answer)?; // versions agreed: containment needs version 2
    ///     writers.push(writer);
    /// }
    /// // Three masters race on "k": the hub takes two of the writes, the third is one
    /// // sibling too many and is set aside, and "other2" arrives all the same.
    /// for (n, writer) in writers.iter_mut().enumerate() {
    ///     writer.update(|m, hlc| m.write("k".into(), n as u32, hlc))?;
    ///     writer.update(|m, hlc| m.write(format!("other{n}"), 0, hlc))?;
    ///     let received = hub.receive(writer.sync_with(ids[0])?)?;
    ///     assert_eq!(received.hot_keys.len(), usize::from(n == 2));
    /// }
    /// assert_eq!(hub.state().len(), 4); // "k" and the three "other" keys
    /// let hot = hub.hot_keys();
    /// assert_eq!((hot[0].key.as_str(), hot[0].siblings), ("k", 3));
    /// assert_eq!(hub.metrics().contained_hot_keys, 1);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn hot_keys(&self) -> Vec<HotKey<T::Key>> {
        self.hot.list()
    }

    /// Drops bookkeeping every peer has acknowledged.
    fn forget_acknowledged(&mut self) {
        let me = self.hlc.replica();
        let mut stable: Option<CausalContext> = None;
        let mut lowest = u64::MAX;
        for p in self.peers.values() {
            lowest = lowest.min(p.acked.only(me).clock().get(me));
            stable = Some(match stable {
                None => p.acked.clone(),
                Some(s) => s.intersection(&p.acked),
            });
        }
        while self.write_times.front().is_some_and(|(c, _)| {
            *c <= lowest
                || self
                    .peers
                    .values()
                    .all(|p| p.acked.contains(Dot::new(me, *c)))
        }) {
            self.write_times.pop_front();
        }
        self.state.prune(&stable.unwrap_or_default());
        self.fold_counters();
    }

    /// Folds this replica's counter segments that have become causally stable (see
    /// [`Crdt::fold_stable`]): a dot of ours every peer acknowledged, each in an
    /// acknowledgement we had caught up with when we read it (so every removal that
    /// peer made before it, of part of those segments, is here already).
    fn fold_counters(&mut self) {
        if self.role == Role::Follower || !self.config.fold_counters {
            return;
        }
        // A fold's provenance travels from version 3 on: a peer that would receive
        // the fold as a plain segment could not tell a removal of what it folded.
        if self
            .peers
            .values()
            .any(|p| self.version_for(p) < crate::counter::FOLD_PROVENANCE_VERSION)
        {
            return;
        }
        let me = self.hlc.replica();
        let ctx = self.state.context();
        let mut floor: Option<CausalContext> = None;
        for p in self.peers.values_mut() {
            if ctx.includes(&p.exact_acked) {
                p.fold_ack = p.exact_acked.only(me);
            }
            floor = Some(match floor {
                None => p.fold_ack.clone(),
                Some(f) => f.intersection(&p.fold_ack),
            });
        }
        let mut floor = floor.unwrap_or_else(|| ctx.only(me));
        // Dots up to the lease's floor were issued before this boot. An earlier life
        // may have folded some of them already, in a write this one has not seen (it
        // restored an older snapshot): folding them again would count them twice. So
        // they wait until this boot holds every dot its earlier lives issued.
        //
        // With a lease taken in blocks, part of that range was never issued, and
        // the wait never ends: such a boot leaves each counter's earlier segments
        // unfolded (one or a few per counter per restart). Ending it when every peer
        // has acknowledged a write of this boot is not enough: a message of the
        // earlier life may still be in flight to a peer (the simulator's
        // counter-totals property finds the double count).
        let boot_floor = self.hlc.counter_floor();
        if boot_floor > 0 {
            let mut earlier = CausalContext::new();
            earlier.insert_range(me, 1, boot_floor);
            if !ctx.includes(&earlier) {
                floor = floor.minus(&earlier);
            }
        }
        if floor == self.fold_floor {
            return;
        }
        // A clock that cannot issue a dot this millisecond folds at the next message.
        if self.state.fold_stable(&floor, &mut self.hlc).is_ok() {
            self.fold_floor = floor;
        }
    }

    /// The peers known to hold `dot` (those whose acknowledged context has it).
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
    /// let dot = a.update(|m, hlc| m.set("volume".into(), 7, hlc))?.dot.expect("a write");
    /// assert!(a.holders(dot).is_empty());
    /// let answer = b.receive(a.sync_with(b_id)?)?.reply.expect("B answers");
    /// a.receive(answer)?; // which acknowledges the write
    /// assert_eq!(a.holders(dot), [b_id]);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn holders(&self, dot: Dot) -> Vec<ReplicaId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.acked.contains(dot))
            .map(|(id, _)| *id)
            .collect()
    }

    /// True once `dot` is held by as many peers as `level` asks for: wait for it to
    /// acknowledge a write semi-synchronously or synchronously.
    ///
    /// ```
    /// use concord::sync::{AckLevel, Config, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let [a_id, b_id, c_id] = [1, 2, 3].map(ReplicaId::from_u128);
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id, c_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time, Config::with_peers([a_id]));
    ///
    /// let dot = a.update(|m, hlc| m.set("volume".into(), 7, hlc))?.dot.expect("a write");
    /// assert!(a.is_replicated(dot, AckLevel::None)); // asynchronous: done at once
    /// let answer = b.receive(a.sync_with(b_id)?)?.reply.expect("B answers");
    /// a.receive(answer)?;
    /// assert!(a.is_replicated(dot, AckLevel::Peers(1))); // B holds it
    /// assert!(!a.is_replicated(dot, AckLevel::All)); // C does not, yet
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn is_replicated(&self, dot: Dot, level: AckLevel) -> bool {
        let holders = self.holders(dot).len();
        match level {
            AckLevel::None => true,
            AckLevel::Peers(k) => holders >= k,
            AckLevel::All => holders == self.peers.len(),
            AckLevel::Quorum => holders + 1 >= self.quorum(),
        }
    }

    /// A session token for a client: every write it has seen here (this replica's
    /// causal context). Hand it to any replica with [`SyncEngine::can_serve`] or
    /// [`SyncEngine::read`] for read-your-writes and monotonic reads; its compact text
    /// form ([`CausalContext::to_token`]) fits an HTTP header. It is a context, not a
    /// version vector, so it names writes past a gap too (a node restored from an
    /// older snapshot writes past one).
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{CausalContext, LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Settings = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Settings::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Settings::new(), time.clone(), Config::with_peers([a_id]));
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// let header: String = a.token().to_token(); // to the client with A's answer
    ///
    /// // The client's next request reaches B, with the token.
    /// let token = CausalContext::from_token(&header)?;
    /// assert!(!b.can_serve(&token)); // B has not seen the client's write: wait or redirect
    /// b.receive(a.sync_with(b_id)?)?;
    /// assert_eq!(b.read(&token)?.value("volume"), Some(&7));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn token(&self) -> CausalContext {
        self.state.context().clone()
    }

    /// True if this replica has seen every write `token` names.
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// let token = a.token();
    /// assert!(a.can_serve(&token));
    /// assert!(!b.can_serve(&token));
    /// b.receive(a.sync_with(b_id)?)?;
    /// assert!(b.can_serve(&token));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn can_serve(&self, token: &CausalContext) -> bool {
        self.state.context().includes(token)
    }

    /// The state, if this replica has seen every write `token` names.
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// let token = a.token();
    /// assert_eq!(b.read(&token).unwrap_err(), Error::NotCaughtUp { missing: 1 });
    /// b.receive(a.sync_with(b_id)?)?;
    /// assert_eq!(b.read(&token)?.value("volume"), Some(&7));
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NotCaughtUp`] with how many events it still lacks.
    pub fn read(&self, token: &CausalContext) -> Result<&T> {
        if self.can_serve(token) {
            return Ok(&self.state);
        }
        let missing = token.minus(self.state.context()).dot_count();
        Err(Error::NotCaughtUp { missing })
    }

    /// Lag towards `peer` (`None` if it is not a peer).
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// time.advance(250);
    /// let lag = a.lag(b_id).expect("B is a peer");
    /// assert_eq!((lag.unacked_writes, lag.oldest_unacked_ms), (1, 250));
    /// assert_eq!(lag.since_heard_ms, None); // never heard from B
    ///
    /// let answer = b.receive(a.sync_with(b_id)?)?.reply.expect("B answers");
    /// a.receive(answer)?;
    /// assert_eq!(a.lag(b_id).unwrap().unacked_writes, 0);
    /// assert_eq!(a.lag(b_id).unwrap().since_heard_ms, Some(0));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn lag(&self, peer: ReplicaId) -> Option<PeerLag> {
        let now = self.hlc.now_ms();
        let me = self.hlc.replica();
        let p = self.peers.get(&peer)?;
        let mine = self.state.context().only(me);
        let unacked = mine.minus(&p.acked).dot_count();
        let oldest = self
            .write_times
            .iter()
            .find(|(c, _)| !p.acked.contains(Dot::new(me, *c)))
            .map_or(0, |(_, ms)| now.saturating_sub(*ms));
        Some(PeerLag {
            unacked_writes: unacked,
            oldest_unacked_ms: if unacked == 0 { 0 } else { oldest },
            since_heard_ms: p.last_heard_ms.map(|t| now.saturating_sub(t)),
        })
    }

    /// A serializable snapshot of counters and lag (for a metrics endpoint: it takes
    /// `&self`).
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// b.receive(a.sync_with(b_id)?)?;
    /// let metrics = a.metrics();
    /// assert_eq!((metrics.writes, metrics.messages_sent), (1, 1));
    /// assert_eq!(metrics.peers[0].lag.unacked_writes, 1); // no answer received yet
    /// let json = serde_json::to_string(&metrics)?;
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn metrics(&self) -> Metrics {
        let ids: Vec<ReplicaId> = self.peers.keys().copied().collect();
        let peers = ids
            .into_iter()
            .filter_map(|id| {
                let lag = self.lag(id)?;
                let p = &self.peers[&id];
                Some(PeerMetrics {
                    peer: id,
                    acked: p.acked.clone(),
                    lag,
                    protocol_version: self.version_for(p),
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
            unbacked_deltas: self.counters.unbacked,
            retransmits: self.counters.retransmits,
            chunks_sent: self.counters.chunks,
            lease_writes: self.counters.lease_writes,
            contained_hot_keys: self.hot.len() as u64,
            set_aside_writes: self.hot.pending(),
            hot_keys_set_aside: self.counters.set_aside,
            hot_keys_healed: self.counters.healed,
            peers,
        }
    }

    /// Encodes a message for the wire (see [`crate::wire`]). Deprecated: it borrows
    /// the engine for nothing, so `b.encode(&b.sync_with(a)?)` does not compile; use
    /// [`Message::encode`] (`b.sync_with(a)?.encode()`), which gives the same bytes.
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
    /// let hello = a.sync_with(b_id)?;
    /// #[allow(deprecated)]
    /// let old = a.encode(&hello);
    /// assert_eq!(old, hello.encode());
    /// b.receive_bytes(&a.sync_with(b_id)?.encode())?; // no second borrow of `a`
    /// # Ok::<(), concord::Error>(())
    /// ```
    #[deprecated(
        since = "0.1.0",
        note = "use `Message::encode` (`msg.encode()`), which does not borrow the engine"
    )]
    pub fn encode(&self, msg: &Message<T>) -> Vec<u8> {
        crate::wire::encode(msg)
    }

    /// Decodes and applies a message from the wire, enforcing the configured size
    /// limit before parsing (the manual way: see [`SyncEngine::receive`]).
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// let answer = b.receive_bytes(&a.sync_with(b_id)?.encode())?.reply.expect("B answers");
    /// a.receive_bytes(&answer.encode())?;
    /// assert_eq!(a.state(), b.state());
    ///
    /// // Larger than `max_message_bytes`: refused before a byte is parsed.
    /// let mut small = SyncEngine::new(b_id, Settings::new(), time, Config::with_peers([a_id]).max_message_bytes(1024));
    /// let refused = small.receive_bytes(&[b' '; 2048]);
    /// assert_eq!(refused.unwrap_err(), Error::MessageTooLarge { size: 2048, limit: 1024 });
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`], [`Error::UnsupportedVersion`], [`Error::Decode`],
    /// and everything [`SyncEngine::receive`] returns.
    pub fn receive_bytes(&mut self, bytes: &[u8]) -> Result<Received<T>> {
        match self.decode(bytes) {
            Ok(msg) => self.receive(msg),
            Err(e) => {
                self.counters.rejected += 1;
                Err(e)
            }
        }
    }

    // ----- the driver -------------------------------------------------------------

    /// The current time of the engine's time source, in milliseconds: the clock that
    /// [`SyncEngine::poll_timeout`]'s deadlines are in.
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
    /// time.advance(500);
    /// assert_eq!(a.now_ms(), 1_500);
    /// ```
    pub fn now_ms(&self) -> u64 {
        self.hlc.now_ms()
    }

    /// True if every peer has acknowledged everything this replica holds and no
    /// catch-up is under way: nothing but heartbeats and anti-entropy is left to send
    /// ([`SyncEngine::poll_timeout`] always has a next heartbeat). A host that shuts
    /// down gracefully drives the engine until it is idle.
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// assert!(!a.is_idle()); // B has not acknowledged the write
    /// // Move messages until neither engine has anything to send.
    /// let mut quiet = false;
    /// while !quiet {
    ///     quiet = true;
    ///     while let Some(t) = a.poll_transmit() {
    ///         b.handle_bytes(&t.bytes)?;
    ///         quiet = false;
    ///     }
    ///     while let Some(t) = b.poll_transmit() {
    ///         a.handle_bytes(&t.bytes)?;
    ///         quiet = false;
    ///     }
    /// }
    /// assert!(a.is_idle() && b.is_idle());
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn is_idle(&self) -> bool {
        let ctx = self.state.context();
        self.peers
            .values()
            .all(|p| p.acked.includes(ctx) && p.out.is_none())
    }

    /// Handles the passing of time: resends what went unacknowledged for the
    /// retransmission timeout (with exponential backoff). Call it when
    /// [`SyncEngine::poll_timeout`]'s deadline has passed, then drain
    /// [`SyncEngine::poll_transmit`].
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
    /// // Move messages until neither engine has anything to send.
    /// let mut quiet = false;
    /// while !quiet {
    ///     quiet = true;
    ///     while let Some(t) = a.poll_transmit() {
    ///         b.handle_bytes(&t.bytes)?;
    ///         quiet = false;
    ///     }
    ///     while let Some(t) = b.poll_transmit() {
    ///         a.handle_bytes(&t.bytes)?;
    ///         quiet = false;
    ///     }
    /// }
    ///
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// let lost = a.poll_transmit().expect("the write's delta"); // the network drops it
    /// assert_eq!(lost.to, b_id);
    /// time.set(a.poll_timeout().expect("A waits for an acknowledgement"));
    /// a.handle_timeout();
    /// let resent = a.poll_transmit().expect("A resends the write");
    /// b.handle_bytes(&resent.bytes)?;
    /// assert_eq!(b.state().value("volume"), Some(&7));
    /// assert_eq!(a.metrics().retransmits, 1);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn handle_timeout(&mut self) {
        self.expire_flights();
        self.refresh_fence();
    }

    /// When, in milliseconds of the engine's time source, the host should call
    /// [`SyncEngine::handle_timeout`] (and drain [`SyncEngine::poll_transmit`]) at the
    /// latest: the next retransmission, heartbeat or anti-entropy deadline. `None` if
    /// there are no peers.
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
    /// // Move messages until neither engine has anything to send.
    /// let mut quiet = false;
    /// while !quiet {
    ///     quiet = true;
    ///     while let Some(t) = a.poll_transmit() {
    ///         b.handle_bytes(&t.bytes)?;
    ///         quiet = false;
    ///     }
    ///     while let Some(t) = b.poll_transmit() {
    ///         a.handle_bytes(&t.bytes)?;
    ///         quiet = false;
    ///     }
    /// }
    ///
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// let lost = a.poll_transmit().expect("the write's delta"); // the network drops it
    /// assert_eq!(lost.to, b_id);
    /// // A waits one retransmission timeout for B's acknowledgement.
    /// assert_eq!(a.poll_timeout(), Some(1_000 + a.config().retransmit_ms));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn poll_timeout(&self) -> Option<u64> {
        let hb = self.config.heartbeat_ms;
        self.peers
            .values()
            .flat_map(|p| {
                [
                    p.deadline,
                    Some(p.last_sent_ms.map_or(0, |t| t + hb)),
                    Some(p.next_anti_entropy_ms.unwrap_or(0)),
                    p.relay_since.map(|t| t.saturating_add(2 * hb)),
                ]
            })
            .flatten()
            .min()
    }

    /// The next message to send, if any: deltas and chunks of catch-ups, answers and
    /// acknowledgements, heartbeats and anti-entropy openers, resends after a timeout.
    /// Call it until it returns `None` after every local write, every received message
    /// and every timeout, and send each [`Transmit`]'s `bytes` to its `to`.
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
    /// a.update(|m, hlc| m.set("volume".into(), 7, hlc))?;
    /// // A host's send step: drain the engine into the network (here, a queue).
    /// let mut network = Vec::new();
    /// while let Some(t) = a.poll_transmit() {
    ///     network.push(t);
    /// }
    /// for t in network {
    ///     assert_eq!(t.to, b_id);
    ///     b.handle_bytes(&t.bytes)?;
    /// }
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.expire_flights();
        let ids: Vec<ReplicaId> = self.peers.keys().copied().collect();
        let n = ids.len();
        for k in 0..n {
            let id = ids[(self.cursor + k) % n];
            if let Some(bytes) = self.transmit_to(id) {
                self.cursor = (self.cursor + k + 1) % n.max(1);
                self.counters.sent += 1;
                return Some(Transmit { to: id, bytes });
            }
        }
        None
    }

    fn transmit_to(&mut self, id: ReplicaId) -> Option<Vec<u8>> {
        let now = self.hlc.now_ms();
        let p = self.peers.get(&id)?;
        let v = self.version_for(p);
        let heard = p.last_heard_ms.is_some();
        if p.out.is_some() {
            if let Some(bytes) = self.next_chunk(id, v) {
                return Some(bytes);
            }
        } else if heard && self.delta_due(id, now) {
            if self.lease_covers_issued() {
                if let Some(bytes) = self.send_delta(id, v) {
                    return Some(bytes);
                }
            } else if let Some(p) = self.peers.get_mut(&id) {
                // The lease store fails: deltas wait; try again a relay period later
                // rather than at every wake-up.
                p.relay_since = Some(now);
            }
        }
        let hb = self.config.heartbeat_ms;
        let ae = self.config.anti_entropy_ms;
        let p = self.peers.get_mut(&id)?;
        let ae_due = p.next_anti_entropy_ms.is_none_or(|t| now >= t);
        let hb_due = p.last_sent_ms.is_none_or(|t| now >= t + hb);
        if !(p.owe_ack || ae_due || hb_due) {
            return None;
        }
        let skipped = p.owe_restart;
        let reply = ae_due || !heard || skipped;
        if ae_due {
            p.next_anti_entropy_ms = Some(now + ae);
        }
        p.owe_ack = false;
        p.owe_restart = false;
        p.last_sent_ms = Some(now);
        // In an acknowledgement, `last` says a chunk of the stream was skipped.
        let progress = p.inbound.map(|(_, stream, index)| Chunk {
            stream,
            index,
            last: skipped,
        });
        let mut msg = self.envelope(id, v, None, reply);
        msg.chunk = progress.filter(|_| v >= 2);
        Some(crate::wire::encode(&msg))
    }

    /// True if `id` lacks something it should be sent now: this replica's own writes
    /// at once; other replicas' writes (which their authors send too) only once the
    /// peer has lacked them for two heartbeats, so that in a full mesh a write
    /// travels once per link rather than once per path.
    fn delta_due(&mut self, id: ReplicaId, now: u64) -> bool {
        let relay_ms = 2 * self.config.heartbeat_ms;
        let ctx = self.state.context();
        let own = ctx.only(self.hlc.replica());
        let Some(p) = self.peers.get_mut(&id) else {
            return false;
        };
        if p.offered.includes(ctx) {
            p.relay_since = None;
            return false;
        }
        if !p.offered.includes(&own) {
            return true;
        }
        let since = *p.relay_since.get_or_insert(now);
        now >= since.saturating_add(relay_ms)
    }

    /// Sends the delta a peer lacks in one message, or starts a chunked stream if it is
    /// too large for one.
    fn send_delta(&mut self, id: ReplicaId, v: u32) -> Option<Vec<u8>> {
        let now = self.hlc.now_ms();
        let p = self.peers.get(&id)?;
        // Version 2 pipelines (the delta since what was offered: acknowledgements
        // are contexts, so a lost earlier message shows as a gap and is resent);
        // version 1 always sends since what the peer acknowledged.
        let against = if v >= 2 {
            p.offered.clone()
        } else {
            p.acked.clone()
        };
        let ctx = self.state.context().clone();
        // A delta with more new dots than the limit has room for (an entry takes more
        // than 8 bytes) goes straight to a chunked stream, so a catch-up never holds
        // a copy of the state or its encoding: extra memory stays O(message size).
        let new_dots = ctx.minus(&against).dot_count();
        let surely_large = v >= 2 && new_dots > (self.config.max_message_bytes / 8) as u64;
        let bytes = if surely_large {
            None
        } else {
            let delta = self.state.delta_since_offered(&against, &p.acked);
            if delta.context().is_empty() {
                self.peers.get_mut(&id)?.offered.merge_ref(&ctx);
                return None;
            }
            let acked = p.acked.clone();
            let mut msg = self.envelope(id, v, Some(delta), true);
            // The removals left out assume the peer holds what it acknowledged: a peer
            // restored from an older snapshot since then skips the delta and says what
            // it holds (without this, it could learn a removal's dot without the
            // removal and keep the removed value for good).
            msg.base = acked;
            Some(crate::wire::encode(&msg))
        };
        let p = self.peers.get_mut(&id)?;
        p.offered.merge_ref(&ctx);
        p.relay_since = None;
        if p.deadline.is_none() {
            p.deadline = Some(now + p.rto);
            p.flight = Some(p.offered.clone());
        }
        p.last_sent_ms = Some(now);
        p.owe_ack = false;
        if let Some(bytes) = bytes.filter(|b| b.len() <= self.config.max_message_bytes || v < 2) {
            return Some(bytes);
        }
        // Too large: a stream of chunks from what the peer is known to hold.
        p.out = Some(OutStream {
            id: self.next_stream,
            seen: p.acked.clone(),
            upto: ctx,
            cursor: ChunkCursor::default(),
            next: 0,
            acked: 0,
            items: 1024,
            finished: false,
        });
        self.next_stream = self.next_stream.wrapping_add(1);
        self.next_chunk(id, v)
    }

    /// The next chunk of the stream to `id`, if the window allows one.
    fn next_chunk(&mut self, id: ReplicaId, v: u32) -> Option<Vec<u8>> {
        let now = self.hlc.now_ms();
        let window = self.config.chunk_window.max(1);
        let limit = self.config.max_message_bytes;
        let p = self.peers.get(&id)?;
        let out = p.out.as_ref()?;
        if out.finished || out.next.saturating_sub(out.acked) >= window {
            return None;
        }
        let (stream, index, seen, upto) = (out.id, out.next, out.seen.clone(), out.upto.clone());
        let mut items = out.items;
        loop {
            let mut cursor = self.peers[&id].out.as_ref()?.cursor.clone();
            let piece = self.state.delta_chunk(&seen, &upto, &mut cursor, items);
            let last = cursor.is_done();
            let mut msg = self.envelope(id, v, Some(piece), true);
            msg.base = seen.clone();
            msg.chunk = Some(Chunk {
                stream,
                index,
                last,
            });
            let bytes = crate::wire::encode(&msg);
            if bytes.len() > limit && items > 1 {
                items /= 2;
                continue;
            }
            let p = self.peers.get_mut(&id)?;
            let out = p.out.as_mut()?;
            out.cursor = cursor;
            out.next += 1;
            out.finished = last;
            out.items = if bytes.len() < limit / 4 {
                items.saturating_mul(2).min(1 << 20)
            } else {
                items
            };
            p.deadline = Some(now + p.rto);
            p.last_sent_ms = Some(now);
            p.owe_ack = false;
            self.counters.chunks += 1;
            return Some(bytes);
        }
    }
}
