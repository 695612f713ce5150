//! The driver: encoding and decoding for the host, timers, and the transmit queue.

use super::*;

impl<T: Crdt, S: TimeSource> SyncEngine<T, S> {
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
    /// let _ = b.receive_bytes(&a.sync_with(b_id)?.encode())?; // no second borrow of `a`
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
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// let answer = b.receive_bytes(&a.sync_with(b_id)?.encode())?.reply.expect("B answers");
    /// let _ = a.receive_bytes(&answer.encode())?;
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
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// assert!(!a.is_idle()); // B has not acknowledged the write
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
    ///         let _ = b.handle_bytes(&t.bytes)?;
    ///         quiet = false;
    ///     }
    ///     while let Some(t) = b.poll_transmit() {
    ///         let _ = a.handle_bytes(&t.bytes)?;
    ///         quiet = false;
    ///     }
    /// }
    ///
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// let lost = a.poll_transmit().expect("the write's delta"); // the network drops it
    /// assert_eq!(lost.to, b_id);
    /// time.set(a.poll_timeout().expect("A waits for an acknowledgement"));
    /// a.handle_timeout();
    /// let resent = a.poll_transmit().expect("A resends the write");
    /// let _ = b.handle_bytes(&resent.bytes)?;
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
    ///         let _ = b.handle_bytes(&t.bytes)?;
    ///         quiet = false;
    ///     }
    ///     while let Some(t) = b.poll_transmit() {
    ///         let _ = a.handle_bytes(&t.bytes)?;
    ///         quiet = false;
    ///     }
    /// }
    ///
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
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
    /// a.update(|m, hlc| m.write("volume".into(), 7, hlc))?;
    /// // A host's send step: drain the engine into the network (here, a queue).
    /// let mut network = Vec::new();
    /// while let Some(t) = a.poll_transmit() {
    ///     network.push(t);
    /// }
    /// for t in network {
    ///     assert_eq!(t.to, b_id);
    ///     let _ = b.handle_bytes(&t.bytes)?;
    /// }
    /// # Ok::<(), concord::Error>(())
    /// ```
    #[must_use = "the transmit is taken off the queue: send it"]
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

    pub(super) fn transmit_to(&mut self, id: ReplicaId) -> Option<Vec<u8>> {
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
    pub(super) fn delta_due(&mut self, id: ReplicaId, now: u64) -> bool {
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
    pub(super) fn send_delta(&mut self, id: ReplicaId, v: u32) -> Option<Vec<u8>> {
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
    pub(super) fn next_chunk(&mut self, id: ReplicaId, v: u32) -> Option<Vec<u8>> {
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
