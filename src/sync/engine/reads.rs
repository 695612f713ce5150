//! What an engine tells its host: who holds a write, read tokens, lag, metrics.

use super::*;

impl<T: Crdt, S: TimeSource> SyncEngine<T, S> {
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
    /// let dot = a.update(|m, hlc| m.write("volume".into(), 7, hlc))?.dot.expect("a write");
    /// assert!(a.holders(dot).is_empty());
    /// let answer = b.receive(a.sync_with(b_id)?)?.reply.expect("B answers");
    /// let _ = a.receive(answer)?; // which acknowledges the write
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
    /// let dot = a.update(|m, hlc| m.write("volume".into(), 7, hlc))?.dot.expect("a write");
    /// assert!(a.is_replicated(dot, AckLevel::None)); // asynchronous: done at once
    /// let answer = b.receive(a.sync_with(b_id)?)?.reply.expect("B answers");
    /// let _ = a.receive(answer)?;
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
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// let header: String = a.token().to_token(); // to the client with A's answer
    ///
    /// // The client's next request reaches B, with the token.
    /// let token = CausalContext::from_token(&header)?;
    /// assert!(!b.can_serve(&token)); // B has not seen the client's write: wait or redirect
    /// let _ = b.receive(a.sync_with(b_id)?)?;
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
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// let token = a.token();
    /// assert!(a.can_serve(&token));
    /// assert!(!b.can_serve(&token));
    /// let _ = b.receive(a.sync_with(b_id)?)?;
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
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// let token = a.token();
    /// assert_eq!(b.read(&token).unwrap_err(), Error::NotCaughtUp { missing: 1 });
    /// let _ = b.receive(a.sync_with(b_id)?)?;
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
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// time.advance(250);
    /// let lag = a.lag(b_id).expect("B is a peer");
    /// assert_eq!((lag.unacked_writes, lag.oldest_unacked_ms), (1, 250));
    /// assert_eq!(lag.since_heard_ms, None); // never heard from B
    ///
    /// let answer = b.receive(a.sync_with(b_id)?)?.reply.expect("B answers");
    /// let _ = a.receive(answer)?;
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
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// let _ = b.receive(a.sync_with(b_id)?)?;
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
}
