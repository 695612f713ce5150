//! How an engine is set up: [`Config`] and its builder methods.

use super::*;

/// How an engine is set up. Every field has a builder method of the same name.
#[derive(Clone, Debug, PartialEq)]
#[must_use = "a builder method returns the changed configuration"]
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
    /// older peer as a plain segment, and would stay one there). So a message that
    /// carries a fold goes at version 3 at the least, whatever the peer was last heard
    /// to speak (a late message from its boot before an upgrade, or a relay that has
    /// not heard it since, may say less). Holding a node back below version 3
    /// ([`Config::protocol_version`]) once folds exist is not supported: it refuses
    /// the messages that carry folds until the limit is lifted.
    ///
    /// Folding waits for *every* peer: while one is unreachable, this master's new
    /// segments stay unfolded (about 11 bytes of state per increment) and fold once
    /// it is back and has acknowledged them. A peer gone for good must be taken out
    /// of `peers` (a restart with the new configuration), or counters grow with
    /// every increment until it is.
    ///
    /// In a rolling upgrade, every master that folds must run a build with the
    /// fold-of-a-fold fix (see the CHANGELOG): a fold made by an earlier build can
    /// name an earlier fold as what it folded, and a peer that dropped that earlier
    /// fold on a relayed catch-up piece then refuses the new one for good
    /// (`tests/fuzz-crashers/fold-2`).
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
    /// let _ = hub.receive(newcomer.sync_with(hub_id)?)?;
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
    /// let refused = f.update(|m, hlc| m.write("volume".into(), 7, hlc));
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
    /// let refused = m.update(|s, hlc| s.write("volume".into(), 7, hlc));
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
    /// let dot = a.update(|m, hlc| m.write("volume".into(), 7, hlc))?.dot.unwrap();
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
