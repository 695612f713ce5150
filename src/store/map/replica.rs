//! A standalone map: the replica ([`Crdt`], [`Resolver`]): deltas, chunked
//! catch-up, validation of what a peer sent, checked merges, pruning and folding.

use super::*;

impl<K: Key, V: DotStore> OrMap<K, V> {
    /// Seals a piece of a chunked catch-up. A piece of phase 0 (`closing`: the range
    /// it covers) is closed over the removal log and over the folds it names, until
    /// neither adds a dot (see `close_over_removals`); its final context joins the
    /// cursor's `sent`. The witness of a stream below the floor (see `delta_chunk`)
    /// is held back while pending: out of the context, out of the elements (a live
    /// witness goes in phase 2), and with any fold in the piece that names it (the
    /// fold says it is gone; the other dots that fold folded then arrive dead before
    /// it, and the peer reads the counter short until it comes).
    fn seal_piece(
        &self,
        mut out: Self,
        cursor: &mut ChunkCursor,
        closing: Option<(&CausalContext, &CausalContext)>,
    ) -> Self {
        let Some(range) = closing else {
            if cursor.witness.is_none() {
                return self.seal_chunk(out);
            }
            self.close_over_folds(&mut out, false);
            return self.hold_back_witness(out, cursor.witness);
        };
        loop {
            let before = out.ctx.clone();
            self.close_over_removals(range, &cursor.sent, &mut out);
            self.close_over_folds(&mut out, false);
            // What sealing adds: the dots the piece's folds folded.
            if V::FOLDS {
                let mut folded = Vec::new();
                for v in out.entries.values() {
                    v.for_each_fold(&mut |d, _| folded.push(d));
                }
                for d in folded {
                    out.ctx.insert(d);
                }
            }
            if out.ctx == before {
                break;
            }
        }
        // A removal note whose dot the piece carries (a removal's own dot, sent as a
        // cause of another) goes with it: after the dot, the peer would drop the note
        // as known and never report the delete-vs-update race it marks.
        // (Not one an earlier piece sent, nor one this piece holds: the dots of the
        // notes already sent come again in phase 1's ranges. Such a note can arrive
        // before a note that supersedes it, unlike the note pass's order: the peer
        // may then report a race that the later removal covered, rather than miss
        // the report for good.)
        let (seen, _) = range;
        let mut have = CausalContext::new();
        for n in &out.notes.list {
            have.insert(n.dot);
        }
        let extra: Vec<RemovalNote<K>> = self
            .notes
            .list
            .iter()
            .filter(|n| {
                Some(n.dot) != cursor.witness
                    && !seen.contains(n.dot)
                    && !cursor.sent.contains(n.dot)
                    && out.ctx.contains(n.dot)
                    && !have.contains(n.dot)
            })
            .cloned()
            .collect();
        for note in extra {
            out.notes.push(note);
        }
        let piece = self.hold_back_witness(out, cursor.witness);
        if cursor.phase == 0 {
            cursor.sent.merge_ref(&piece.ctx);
        } else {
            cursor.sent = CausalContext::new();
        }
        piece
    }

    /// Takes `witness` (if any) out of a piece whose folds are closed over, and seals it.
    fn hold_back_witness(&self, mut out: Self, witness: Option<Dot>) -> Self {
        let Some(w) = witness else {
            out.seal();
            return out;
        };
        let mut drop = vec![w];
        for v in out.entries.values() {
            v.for_each_fold(&mut |folded, fold| {
                if folded == w {
                    drop.push(fold);
                }
            });
        }
        if drop.iter().any(|&d| out.ctx.contains(d)) {
            let gone = |d: Dot| drop.contains(&d);
            let mut emptied = Vec::new();
            for (pos, v) in out.entries.values_mut().enumerate() {
                let mut has = false;
                v.for_each_dot(&mut |d| has |= gone(d));
                if has {
                    *v = v.filtered(&|d| !gone(d));
                    if DotStore::size(v) == 0 {
                        emptied.push(pos);
                    }
                }
            }
            for pos in emptied.into_iter().rev() {
                out.entries.shift_remove_index(pos);
            }
            for &d in &drop {
                out.ctx = out.ctx.minus(&one_dot(d));
            }
        }
        out.seal();
        out
    }

    /// A piece of a chunked catch-up, completed.
    pub(super) fn seal_chunk(&self, mut out: Self) -> Self {
        self.close_over_folds(&mut out, false);
        out.seal();
        out
    }

    /// Adds a removal-log entry (the dots `dead` that `trigger` killed) to a piece of
    /// a chunked catch-up from `seen` to `upto`, with its causes as far as `room`
    /// allows; returns the items added.
    fn tell_removal(
        &self,
        trigger: &Trigger,
        dead: &[Dot],
        (seen, upto): (&CausalContext, &CausalContext),
        room: usize,
        out: &mut Self,
    ) -> usize {
        let mut items = 0;
        for &d in dead.iter().filter(|d| upto.contains(**d)) {
            out.ctx.insert(d);
            items += 1;
            // A fold's removal of what it folded goes with the fold, even one made
            // since the stream began (see `close_over_folds`).
            if V::FOLDS {
                if let Some((fold, pos)) = self.fold_of(d) {
                    if !out.ctx.contains(fold) {
                        items += self.carry_fold(fold, pos, out);
                    }
                }
            }
        }
        // With the writes that made them (a fold of counter segments, say): a removal
        // must not arrive alone, even for the length of a stream. (Only while they
        // fit in this chunk's budget: a large trigger, a big received delta, is left
        // to phase 2 rather than overflow it.)
        let causes = trigger.intersection(upto).minus(seen);
        let room = room.saturating_sub(items) as u64;
        if !causes.is_empty() && causes.dot_count() <= room {
            let unsent = |d: Dot| !seen.contains(d) && upto.contains(d);
            for pos in self.positions_holding(&causes) {
                items += self.copy_part(pos, &unsent, out);
            }
        }
        // And, whatever the budget, the causes no entry holds (a removal's own dot; a
        // few context ranges): the receiver then logs the removal against a context
        // holding its cause, and tells it on to a peer that lacks that cause (without
        // them, a peer whose context covers the removed dots was never told, for
        // good).
        self.add_unheld(&causes, &mut out.ctx);
        items
    }

    /// Closes a piece of phase 0 over the removal log: a removal whose trigger the
    /// peer will hold once it has the piece (a cause copied whole, a nested map field
    /// written since, carries a later write's dot) goes in the piece with the dots it
    /// killed, and so on for the removals those were. Otherwise a stream broken after
    /// the piece left the peer acknowledging the trigger without its effects, and
    /// every later delta or stream took that for the removal's acknowledgement.
    /// (Whatever the budget: a removal and its trigger cannot be split.)
    ///
    /// `sent` is the context of the stream's earlier pieces of phase 0: a removal
    /// whose trigger is a received delta's context can be covered by several pieces
    /// together. One walk over the log, then a worklist: a removal's dead dots reach
    /// the removals they triggered through an index of the one-dot triggers, and the
    /// context triggers (received deltas, few) are checked again only when a round
    /// added dots.
    fn close_over_removals(
        &self,
        (seen, upto): (&CausalContext, &CausalContext),
        sent: &CausalContext,
        out: &mut Self,
    ) {
        if out.ctx.is_empty() {
            return;
        }
        let mut told = seen.clone();
        told.merge_ref(sent);
        told.merge_ref(&out.ctx);
        let mut by_dot: HashMap<Dot, Vec<usize>> = HashMap::new();
        let mut by_ctx: Vec<usize> = Vec::new();
        let mut queue: Vec<usize> = Vec::new();
        for (i, (_, trigger, dead)) in self.log.entries.iter().enumerate() {
            // Not those told already: by an earlier piece (their dots all sent), or
            // the peer had seen them.
            if trigger.seen_by(seen) || dead.iter().all(|&d| !upto.contains(d) || sent.contains(d))
            {
                continue;
            }
            if trigger.seen_by(&told) {
                queue.push(i);
            } else {
                match trigger {
                    Trigger::Dot(d) => by_dot.entry(*d).or_default().push(i),
                    Trigger::Ctx(_) => by_ctx.push(i),
                }
            }
        }
        while !queue.is_empty() {
            while let Some(i) = queue.pop() {
                let (_, trigger, dead) = &self.log.entries[i];
                for &d in dead.iter().filter(|d| upto.contains(**d)) {
                    if told.insert(d) {
                        if let Some(next) = by_dot.remove(&d) {
                            queue.extend(next);
                        }
                    }
                }
                self.tell_removal(trigger, dead, (seen, upto), 0, out);
            }
            by_ctx.retain(|&i| {
                if self.log.entries[i].1.seen_by(&told) {
                    queue.push(i);
                    false
                } else {
                    true
                }
            });
        }
    }

    /// The witness of a stream to a peer below the floor (see `delta_chunk`): a dot
    /// of the floor (as far as the stream goes) the peer lacks that no piece needs
    /// before phase 1 ends. Not one
    /// the removal log names (a removal's trigger or the dots it killed go together
    /// in phase 0) if there is such a dot, else a removal note's dot (the note waits
    /// with it), else any.
    fn witness(&self, seen: &CausalContext, upto: &CausalContext) -> Option<Dot> {
        let lacking = self.log.floor.intersection(upto).minus(seen);
        let mut named = CausalContext::new();
        for (_, trigger, dead) in &self.log.entries {
            trigger.add_to(&mut named);
            for &d in dead {
                named.insert(d);
            }
        }
        let mut noted = CausalContext::new();
        for note in &self.notes.list {
            noted.insert(note.dot);
        }
        let free = lacking.minus(&named);
        last_dot(&free.minus(&noted))
            .or_else(|| last_dot(&free.intersection(&noted)))
            .or_else(|| last_dot(&lacking))
    }

    /// The dots of live elements, as a context.
    fn held(&self) -> CausalContext {
        let mut live: Vec<Dot> = self.index.keys().copied().collect();
        live.sort_unstable();
        let mut held = CausalContext::new();
        for d in live {
            held.insert(d);
        }
        held
    }

    /// Adds the ranges of `dead` past `at` to a piece, one item per range, while
    /// `items` stays under `max_items`, moving `at` on; true once every range is in.
    /// Computed on ranges, so a long run of removed dots costs one item and no walk
    /// over its dots.
    fn send_removed(
        &self,
        dead: &CausalContext,
        at: &mut Option<Dot>,
        items: &mut usize,
        max_items: usize,
        out: &mut Self,
    ) -> bool {
        for (r, ranges) in dead.ranges() {
            for &(lo, hi) in ranges {
                let lo = match *at {
                    Some(d) if r < d.replica() => continue,
                    Some(d) if r == d.replica() => lo.max(d.counter().saturating_add(1)),
                    _ => lo,
                };
                if lo > hi {
                    continue;
                }
                if *items >= max_items {
                    return false;
                }
                out.ctx.insert_range(r, lo, hi);
                *items += 1;
                *at = Some(Dot::new(r, hi));
            }
        }
        true
    }

    /// The full state as a delta (no index or log).
    pub(super) fn full(&self) -> Self {
        let mut copy = OrMap {
            entries: self.entries.clone(),
            ctx: self.ctx.clone(),
            index: self.index.clone(),
            provs: self.provs.clone(),
            log: RemovalLog::default(),
            notes: self.notes.clone(),
            scratch: Vec::new(),
            folding: Folding::default(),
        };
        copy.log.floor = copy.ctx.clone();
        copy
    }

    /// Makes a map built from parts (a delta) a complete standalone map: its dot
    /// index, and a removal-log floor at its context (it knows no removal history, so
    /// a peer below that gets all of it).
    pub(super) fn seal(&mut self) {
        self.rebuild_index();
        if V::FOLDS {
            // Whoever learns a fold learns that what it folded is gone (the fold's
            // own write says so; a relayed part of the state must too).
            for (&folded, _) in self.provs.iter() {
                self.ctx.insert(folded);
            }
        }
        self.log = RemovalLog {
            floor: self.ctx.clone(),
            ..RemovalLog::default()
        };
    }
}

impl<K: Key, V: DotStore> Resolver for OrMap<K, V> {
    fn merge(&mut self, other: Self) -> Outcome {
        self.merge_reporting(other, &mut ())
    }
}

/// Merges every map of the iterator into this one ([`Resolver::merge`] each; the
/// outcomes are not kept): a batch of deltas, say. The merge trusts its input: what a
/// peer sent goes through [`Crdt::try_merge`] (or the engine), which checks it first.
///
/// ```
/// use concord::{Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
///
/// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
/// let mut cart: OrMap<String, PnCounter> = OrMap::new();
/// let deltas = vec![
///     cart.increment("apples".into(), 3, &mut hlc)?,
///     cart.increment("pears".into(), 2, &mut hlc)?,
///     cart.remove("apples", &mut hlc)?,
/// ];
/// let mut peer = OrMap::new();
/// peer.extend(deltas.clone());
/// assert_eq!(peer, cart);
/// // Collecting joins them the same way.
/// assert_eq!(deltas.into_iter().collect::<OrMap<_, _>>(), cart);
/// # Ok::<(), concord::Error>(())
/// ```
impl<K: Key, V: DotStore> Extend<OrMap<K, V>> for OrMap<K, V> {
    fn extend<I: IntoIterator<Item = OrMap<K, V>>>(&mut self, iter: I) {
        for other in iter {
            Resolver::merge(self, other);
        }
    }
}

/// The join of every map of the iterator (see [`Extend`]).
impl<K: Key, V: DotStore> FromIterator<OrMap<K, V>> for OrMap<K, V> {
    fn from_iter<I: IntoIterator<Item = OrMap<K, V>>>(iter: I) -> Self {
        let mut map = OrMap::new();
        map.extend(iter);
        map
    }
}

impl<K: Key, V: DotStore> Crdt for OrMap<K, V> {
    type Key = K;
    type Value = V;

    fn context(&self) -> &CausalContext {
        &self.ctx
    }

    fn binary_faithful() -> bool {
        crate::wire::faithful_scalar::<K>() && V::binary_faithful()
    }

    fn holds_fold(&self) -> bool {
        let mut any = false;
        if V::FOLDS {
            DotStore::for_each_fold(self, &mut |_, _| any = true);
        }
        any
    }

    fn delta_since_context(&self, seen: &CausalContext) -> Self {
        self.delta_since_offered(seen, seen)
    }

    fn delta_since_offered(&self, offered: &CausalContext, acked: &CausalContext) -> Self {
        if !acked.includes(&self.log.floor) {
            return self.full();
        }
        let seen = offered;
        let since = self.ctx.minus(seen);
        let positions = self.positions_holding(&since);
        let mut delta = OrMap::new();
        for pos in positions {
            let (k, v) = self
                .entries
                .get_index(pos)
                .expect("index points into entries");
            let part = v.filtered(&|d| !seen.contains(d));
            if !part.is_bottom() {
                delta.entries.insert(k.clone(), part);
            }
        }
        delta.ctx = since;
        // Removals are told by what the peer acknowledged, not by what was offered: an
        // offered message may be lost while a later one carries its trigger. And they
        // go with the writes that caused them until the peer acknowledges those: a
        // removal whose cause is still in flight travels with the in-flight elements
        // again. Otherwise, if the message that carried the cause were lost for good
        // (its sender crashed, and so did every other holder), the removal alone
        // would drop what the write replaced and keep nothing of it (for a fold of
        // counter segments: the folded increments themselves).
        let pending = seen.minus(acked);
        let mut causes = CausalContext::new();
        for (_, trigger, dead) in &self.log.entries {
            if !trigger.seen_by(acked) {
                for &d in dead {
                    delta.ctx.insert(d);
                }
                if !pending.is_empty() {
                    causes.merge(trigger.intersection(&pending));
                }
            }
        }
        if !causes.is_empty() {
            for pos in self.positions_holding(&causes) {
                self.copy_part(pos, &|x| !acked.contains(x), &mut delta);
            }
            self.add_unheld(&causes, &mut delta.ctx);
        }
        // Removal notes, told like removals: until the peer acknowledges them.
        for note in &self.notes.list {
            if !acked.contains(note.dot) {
                delta.ctx.insert(note.dot);
                delta.notes.push(note.clone());
            }
        }
        self.close_over_folds(&mut delta, true);
        delta.seal();
        delta
    }

    fn delta_chunk(
        &self,
        seen: &CausalContext,
        upto: &CausalContext,
        cursor: &mut ChunkCursor,
        max_items: usize,
    ) -> Self {
        let mut out = OrMap::new();
        let mut items = 0usize;
        let max_items = max_items.max(1);
        let unsent = |d: Dot| !seen.contains(d) && upto.contains(d);
        // Below the removal log's floor (now, or since the stream began): the log no
        // longer lists every removal the peer must learn, so phase 1 sends every
        // removed dot it has seen too. If that happens mid-stream, walk again. Until
        // phase 1 is done, one dot of the floor the peer lacks (the witness) is held
        // back from every piece: a stream broken anywhere before leaves the peer
        // below the floor, and the next stream (or delta) sends those dots again.
        // Without it, the dots of earlier pieces could complete the peer's cover of
        // the floor, and the next stream took it for a peer that knew the removals
        // the floor forgot (the peer kept a value removed here, for good).
        if !cursor.full && !seen.includes(&self.log.floor) {
            cursor.full = true;
            cursor.witness = self.witness(seen, upto);
            if cursor.phase >= 1 {
                cursor.phase = 1;
                cursor.dot = None;
            }
        }
        let phase0 = cursor.phase == 0;
        if cursor.phase == 0 {
            // Removal notes the peer lacks, first: each comes with its removal's dot,
            // so that the peer decides on it before any element of the stream. Those
            // another held note supersedes go in a second pass, after all the others:
            // a peer that learns of both in one stream learns of the later removal
            // first, and is told of the earlier only if the later had seen the update
            // it met (as if both had come in one message).
            loop {
                let start = self.notes.list.partition_point(|n| n.seq < cursor.note);
                let witness = cursor.witness;
                let wanted = |note: &RemovalNote<K>| {
                    Some(note.dot) != witness
                        && !seen.contains(note.dot)
                        && upto.contains(note.dot)
                        && self.notes.superseded(note, |_| true) == cursor.superseded_notes
                };
                // A note's dot is (part of) the trigger of its removal's log entry: a
                // peer that acknowledges it counts as told of the removal, so the dots
                // the removal killed go no later than the note (left to the log's pass
                // in a later piece, they were lost for good when the stream broke in
                // between: the restarted stream took the peer's acknowledgement of the
                // note's dot for the removal's). The log entries naming each note left
                // to send, found in one walk over the log per piece.
                let mut pending = CausalContext::new();
                for note in self.notes.list.range(start..).filter(|n| wanted(n)) {
                    pending.insert(note.dot);
                }
                let mut naming: HashMap<Dot, Vec<usize>> = HashMap::new();
                if !pending.is_empty() {
                    for (i, (_, trigger, _)) in self.log.entries.iter().enumerate() {
                        if trigger.seen_by(seen) {
                            continue;
                        }
                        match trigger {
                            Trigger::Dot(d) if pending.contains(*d) => {
                                naming.entry(*d).or_default().push(i);
                            }
                            Trigger::Dot(_) => {}
                            Trigger::Ctx(c) => {
                                for d in c.intersection(&pending).dots() {
                                    naming.entry(d).or_default().push(i);
                                }
                            }
                        }
                    }
                }
                for note in self.notes.list.range(start..) {
                    if items >= max_items {
                        break;
                    }
                    if wanted(note) {
                        let size = 1 + note.seen.range_count();
                        let entries = naming.get(&note.dot).map_or(&[][..], Vec::as_slice);
                        let dead: usize = entries
                            .iter()
                            .map(|&i| {
                                let dead = &self.log.entries[i].2;
                                dead.iter().filter(|d| upto.contains(**d)).count()
                            })
                            .sum();
                        if items > 0 && items + size + dead > max_items {
                            // The next piece starts with it. (Alone it may still be
                            // larger than a piece: the note, its removal's own dot and
                            // the dots it killed cannot be split. Without the note the
                            // peer would drop it when it came, its dot being known; with
                            // the note's dot held back the peer would log the removal
                            // without its cause.)
                            break;
                        }
                        for &i in entries {
                            let (_, trigger, dead) = &self.log.entries[i];
                            let room = max_items.saturating_sub(items + size);
                            items += self.tell_removal(trigger, dead, (seen, upto), room, &mut out);
                        }
                        out.ctx.insert(note.dot);
                        items += size;
                        out.notes.push(note.clone());
                    }
                    cursor.note = note.seq + 1;
                }
                if self.notes.list.back().is_some_and(|n| n.seq >= cursor.note) {
                    // The budget ran out: the rest of the notes go in the next piece.
                    return self.seal_piece(out, cursor, Some((seen, upto)));
                }
                if cursor.superseded_notes {
                    break;
                }
                cursor.superseded_notes = true;
                cursor.note = 0;
            }
            // Removals the peer may not know of (it may hold the dots alive).
            let start = self.log.entries.partition_point(|e| e.0 < cursor.log);
            for (seq, trigger, dead) in self.log.entries.range(start..) {
                if items >= max_items {
                    break;
                }
                if !trigger.seen_by(seen) {
                    let room = max_items - items;
                    items += self.tell_removal(trigger, dead, (seen, upto), room, &mut out);
                }
                cursor.log = seq + 1;
            }
            if self.log.entries.back().is_none_or(|e| e.0 < cursor.log) {
                cursor.phase = 1;
            }
        }
        if cursor.phase == 1 {
            // Dots removed here: those the peer never saw, and (below the floor) those
            // it may hold alive.
            let candidates = if cursor.full {
                upto.clone()
            } else {
                upto.minus(seen)
            };
            let mut dead = candidates.minus(&self.held());
            let witness = cursor.witness.filter(|&w| dead.contains(w));
            if let Some(w) = witness {
                dead = dead.minus(&one_dot(w));
            }
            if self.send_removed(&dead, &mut cursor.dot, &mut items, max_items, &mut out) {
                if let Some(w) = witness {
                    out.ctx.insert(w);
                }
                // A witness that is a note's dot: the note, held back with it.
                if let Some(w) = cursor.witness.take() {
                    if let Some(note) = self.notes.list.iter().find(|n| n.dot == w) {
                        out.ctx.insert(w);
                        out.notes.push(note.clone());
                    }
                }
                cursor.phase = 2;
            }
        }
        if cursor.phase == 2 {
            while cursor.pos < self.entries.len() && items < max_items {
                // Only values that never race are split (counters, and maps of them:
                // concurrent increments are no conflict); a register's siblings or a
                // map's fields split over pieces would report one race per piece.
                if !V::FOLDS {
                    items += self.copy_part(cursor.pos, &unsent, &mut out);
                    cursor.pos += 1;
                    continue;
                }
                // A counter with more dots left to send than this piece has room for
                // (many unfolded segments) goes in several pieces, in dot order: each
                // holds part of its segments (with whatever the piece already holds of
                // the key: a carried fold, a removal's cause) and exactly their dots,
                // a valid state on its own, so no message outgrows the limit because
                // of one counter.
                let after = cursor.part;
                let pending = |d: Dot| unsent(d) && after.is_none_or(|a| d > a);
                let room = max_items - items;
                let (_, value) = self.entries.get_index(cursor.pos).expect("in range");
                let mut left = Vec::new();
                value.for_each_dot(&mut |d| {
                    if pending(d) {
                        left.push(d);
                    }
                });
                if left.len() <= room {
                    items += self.copy_part(cursor.pos, &pending, &mut out);
                    cursor.pos += 1;
                    cursor.part = None;
                } else {
                    // The rest of the room, filled: this piece is full.
                    left.sort_unstable();
                    let last = left[room - 1];
                    self.copy_part(cursor.pos, &|d| pending(d) && d <= last, &mut out);
                    cursor.part = Some(last);
                    break;
                }
            }
            if cursor.pos >= self.entries.len() {
                cursor.phase = 3;
            }
        }
        self.seal_piece(out, cursor, phase0.then_some((seen, upto)))
    }

    fn validate(&self, limits: &Limits) -> Result<()> {
        if self.ctx.range_count() > limits.max_context_ranges {
            return Err(Error::TooManyEntries {
                what: "context ranges",
                count: self.ctx.range_count(),
                limit: limits.max_context_ranges,
            });
        }
        let size = DotStore::size(self);
        if size > limits.max_entries {
            return Err(Error::TooManyEntries {
                what: "entries",
                count: size,
                limit: limits.max_entries,
            });
        }
        // No dot may tag two elements, and every one must be in the context. Where the
        // context is not much larger than the map (the usual case), each dot's rank
        // among the context's dots marks a bit: no hash lookup at a random place per
        // dot, which was most of validating a full state of 100,000 keys.
        let bits = self.ctx.dot_count();
        if bits <= 8 * self.index.len() as u64 + 4096 {
            let ranks = Ranks::new(&self.ctx);
            let mut marked = vec![0u64; (bits as usize).div_ceil(64)];
            let mut bad: Option<(Dot, &'static str)> = None;
            DotStore::for_each_dot(self, &mut |d| {
                if bad.is_some() {
                    return;
                }
                match ranks.rank(d) {
                    None => {
                        bad = Some((
                            d,
                            "element dot missing from the causal context sent with it",
                        ))
                    }
                    Some(i) => {
                        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
                        if marked[word] & bit != 0 {
                            bad = Some((d, "the same dot tags two elements"));
                        }
                        marked[word] |= bit;
                    }
                }
            });
            if let Some((dot, reason)) = bad {
                return Err(Error::InvalidDot { dot, reason });
            }
            return self.validate_notes(limits);
        }
        // Otherwise through the dot index, which holds every element's dot once,
        // pointing at its entry: if every dot is found there at its own entry and
        // there are as many dots as index keys, no dot tags two elements, and no
        // second set of the dots is built (a received map was indexed once, when it
        // was decoded).
        let mut dots = 0usize;
        let mut indexed = true;
        let mut bad: Option<(Dot, &'static str)> = None;
        for (pos, v) in self.entries.values().enumerate() {
            v.for_each_dot(&mut |d| {
                dots += 1;
                indexed &= self.index.get(&d) == Some(&pos);
                if bad.is_none() && !self.ctx.contains(d) {
                    bad = Some((
                        d,
                        "element dot missing from the causal context sent with it",
                    ));
                }
            });
        }
        if bad.is_none() && !(indexed && dots == self.index.len()) {
            // A repeated dot (or an index out of step, which no map of this library
            // has): find the dot the slow way.
            let mut seen = DotSet::default();
            DotStore::for_each_dot(self, &mut |d| {
                if bad.is_none() && !seen.insert(d) {
                    bad = Some((d, "the same dot tags two elements"));
                }
            });
        }
        if let Some((dot, reason)) = bad {
            return Err(Error::InvalidDot { dot, reason });
        }
        self.validate_notes(limits)
    }

    fn for_each_element_dot(&self, f: &mut dyn FnMut(Dot)) {
        DotStore::for_each_dot(self, f);
    }

    fn try_merge<C: ConflictSink<K, V>>(
        &mut self,
        other: Self,
        limits: &Limits,
        sink: &mut C,
    ) -> Result<Outcome> {
        other.validate(limits)?;
        let count = DotStore::joined_siblings(self, &self.ctx, &other, &other.ctx);
        if count > limits.max_siblings {
            return Err(Error::TooManySiblings {
                count,
                cap: limits.max_siblings,
            });
        }
        Ok(self.merge_reporting(other, sink))
    }

    fn try_merge_containing<C: ConflictSink<K, V>>(
        &mut self,
        other: Self,
        limits: &Limits,
        sink: &mut C,
        budget: u64,
        set_aside: &mut Vec<SetAside<K>>,
    ) -> Result<Outcome> {
        other.validate(limits)?;
        let empty = V::default();
        let mut expected = 0;
        let hot: Vec<(K, usize)> = other
            .entries
            .iter()
            .filter_map(|(k, theirs)| {
                let pos = self.position_near(k, &mut expected);
                let ours = pos.map_or(&empty, |pos| &self.entries[pos]);
                let count = ours.joined_siblings(&self.ctx, theirs, &other.ctx);
                (count > limits.max_siblings).then(|| (k.clone(), count))
            })
            .collect();
        if hot.is_empty() {
            return Ok(self.merge_reporting(other, sink));
        }
        let mut other = other;
        // Of each hot key's received entry, take the writes this replica lacks in dot
        // order for as long as they fit under the cap (the count only grows with
        // each write taken: a binary search finds the longest prefix); set the rest
        // aside, out of the entry and out of the context merged.
        let mut strip: Vec<Dot> = Vec::new();
        let mut found = Vec::with_capacity(hot.len());
        let mut total = 0u64;
        for (key, siblings) in hot {
            let theirs = other.entries.get(&key).expect("a key of `other`");
            let ours = self.entries.get(&key).unwrap_or(&empty);
            let mut unseen: Vec<Dot> = Vec::new();
            theirs.for_each_dot(&mut |d| {
                if !self.ctx.contains(d) {
                    unseen.push(d);
                }
            });
            if unseen.is_empty() {
                // Over the cap already here (a cap lowered since): nothing new to take
                // or to set aside, and the merge adds no sibling.
                continue;
            }
            unseen.sort_unstable();
            let part = |m: usize| {
                let rest = &unseen[m..];
                theirs.filtered(&|d| rest.binary_search(&d).is_err())
            };
            let fits = |m: usize| {
                ours.joined_siblings(&self.ctx, &part(m), &other.ctx) <= limits.max_siblings
            };
            // The largest m in 0..len with fits(m) (fits(len) is false: the key is hot);
            // m = 0 when even the writes already seen here exceed the cap.
            let (mut lo, mut hi) = (0, unseen.len());
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if fits(mid) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            let taken = part(lo);
            let mut dots = CausalContext::new();
            for &d in &unseen[lo..] {
                dots.insert(d);
            }
            strip.extend_from_slice(&unseen[lo..]);
            if taken.is_bottom() {
                other.entries.swap_remove(&key);
            } else {
                other.entries.insert(key.clone(), taken);
            }
            total = total.saturating_add(dots.dot_count());
            found.push(SetAside {
                key,
                siblings,
                dots,
            });
        }
        if total > budget {
            let count = found.iter().map(|h| h.siblings).max().unwrap_or(0);
            return Err(Error::TooManySiblings {
                count,
                cap: limits.max_siblings,
            });
        }
        strip.sort_unstable();
        let mut stripped = CausalContext::new();
        for d in strip {
            stripped.insert(d);
        }
        other.ctx = other.ctx.minus(&stripped);
        let outcome = self.merge_logging(other, sink, &stripped);
        set_aside.extend(found);
        Ok(outcome)
    }

    fn max_timestamp(&self) -> Option<Timestamp> {
        DotStore::max_timestamp(self)
    }

    fn prune(&mut self, stable: &CausalContext) {
        self.log.prune(stable);
        self.notes.prune(stable);
        if V::FOLDS {
            let index = &self.index;
            self.provs.retain(|_, fold| index.contains_key(fold));
        }
    }

    fn fold_stable<S: TimeSource>(
        &mut self,
        stable: &CausalContext,
        hlc: &mut Hlc<S>,
    ) -> Result<bool> {
        if !V::FOLDS {
            return Ok(false);
        }
        let me = hlc.replica();
        self.folding.stable = stable.only(me);
        if self.folding.stable.is_empty() {
            return Ok(false);
        }
        if !self.folding.searched {
            // A map restored from a snapshot: its counters' leftover segments.
            self.folding.searched = true;
            for (key, value) in &self.entries {
                if value.foldable(me, &CausalContext::new()).0 > 1 {
                    self.folding.pending.insert(key.clone());
                }
            }
        }
        if self.folding.pending.is_empty() {
            return Ok(false);
        }
        let stable = self.folding.stable.clone();
        let keys: Vec<K> = self.folding.pending.drain(..).collect();
        let mut wrote = false;
        for (i, key) in keys.iter().enumerate() {
            let Some(value) = self.entries.get(key) else {
                continue; // removed since
            };
            let (own, covered) = value.foldable(me, &stable);
            if covered < 2 {
                if own > 1 {
                    self.folding.pending.insert(key.clone());
                }
                continue;
            }
            let op = match next_op(&self.ctx, hlc) {
                Ok(op) => op,
                Err(e) => {
                    self.folding.pending.extend(keys[i..].iter().cloned());
                    return Err(e);
                }
            };
            // `mutate` folds around the (empty) write and keeps the key pending while
            // segments that are not stable yet remain.
            self.mutate(key.clone(), &op, |_, _| {}, false);
            wrote = true;
        }
        Ok(wrote)
    }
}

/// The rank of each dot of a context among its dots (replicas in order, counters in
/// order), found from its ranges.
struct Ranks<'a> {
    replicas: Vec<ReplicaRanks<'a>>,
}

/// One replica's ranges in a context, and the rank of each range's first dot.
struct ReplicaRanks<'a> {
    replica: ReplicaId,
    ranges: &'a [(u64, u64)],
    firsts: Vec<u64>,
}

impl<'a> Ranks<'a> {
    fn new(ctx: &'a CausalContext) -> Self {
        let mut next = 0u64;
        let replicas = ctx
            .ranges()
            .map(|(r, ranges)| {
                let firsts = ranges
                    .iter()
                    .map(|&(lo, hi)| {
                        let first = next;
                        next = next.saturating_add(hi - lo + 1);
                        first
                    })
                    .collect();
                ReplicaRanks {
                    replica: r,
                    ranges,
                    firsts,
                }
            })
            .collect();
        Ranks { replicas }
    }

    /// The rank of `d`, or `None` if the context has not seen it.
    fn rank(&self, d: Dot) -> Option<u64> {
        let at = self
            .replicas
            .binary_search_by(|r| r.replica.cmp(&d.replica()))
            .ok()?;
        let ReplicaRanks { ranges, firsts, .. } = &self.replicas[at];
        let c = d.counter();
        let i = ranges.partition_point(|&(lo, _)| lo <= c).checked_sub(1)?;
        let (lo, hi) = ranges[i];
        (c <= hi).then(|| firsts[i] + (c - lo))
    }
}

/// The context of one dot.
fn one_dot(d: Dot) -> CausalContext {
    let mut c = CausalContext::new();
    c.insert(d);
    c
}

/// The largest dot of a context (of its last replica), found from its ranges.
fn last_dot(ctx: &CausalContext) -> Option<Dot> {
    let (r, ranges) = ctx.ranges().last()?;
    ranges.last().map(|&(_, hi)| Dot::new(r, hi))
}
