//! The receive path: checking what a peer sent (envelope, epoch, claims, contexts),
//! merging it, and what follows (hot keys, acknowledgements, counter folding).

use super::*;

impl<T: Crdt, S: TimeSource> SyncEngine<T, S> {
    /// Checks that `ctx` claims no write of this replica's writer id that it never
    /// issued: such a claim would stall or corrupt this replica's own writes.
    pub(super) fn check_claims(&self, ctx: &CausalContext) -> Result<()> {
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
    pub(super) fn unbacked_claims(&self, msg: &Message<T>, delta: &T) -> bool {
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
    pub(super) fn check_context(&self, ctx: &CausalContext) -> Result<()> {
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
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
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
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// // Move messages until neither engine has anything to send.
    /// let mut quiet = false;
    /// while !quiet {
    ///     quiet = true;
    ///     while let Some(t) = a.poll_transmit() {
    ///         let _ = b.handle_bytes(&t.bytes)?;
    ///         quiet = false;
    ///     }
    ///     while let Some(t) = b.poll_transmit() {
    ///         let _ = a.handle_bytes(&t.bytes)?;
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
    pub(super) fn decode(&self, bytes: &[u8]) -> Result<Message<T>> {
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
    pub(super) fn check_envelope(&self, v: u32, from: ReplicaId, to: ReplicaId) -> Result<()> {
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
    pub(super) fn check_epoch(&self, msg: &Message<T>) -> Result<()> {
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

    pub(super) fn apply(&mut self, msg: Message<T>, driver: bool) -> Result<Received<T>> {
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
        // A late message from a boot the peer has replaced (an upgrade's restart,
        // say) tells nothing of the version it speaks now.
        let retired = peer.retired.contains(&msg.inc);
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
            if let Some(old) = peer.boot.filter(|_| !retired) {
                if !peer.retired.contains(&old) {
                    if peer.retired.len() == crate::sync::peer::RETIRED_BOOTS {
                        peer.retired.remove(0);
                    }
                    peer.retired.push(old);
                }
            }
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
        if !retired || peer.vmax.is_none() {
            peer.vmax = Some(msg.vmax);
        }
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
    pub(super) fn may_contain(&self, v: u32, from: ReplicaId) -> bool {
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
    pub(super) fn heal_hot_keys(&mut self) {
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
    ///     let _ = writer.receive(answer)?; // versions agreed: containment needs version 2
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
    pub(super) fn forget_acknowledged(&mut self) {
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
    pub(super) fn fold_counters(&mut self) {
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
}
