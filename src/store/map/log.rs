//! The removal log (which dots died, told to peers until they acknowledge it) and
//! the removal notes (which keys were removed, for reporting delete-vs-update races).

use super::*;

/// How many dead dots the removal log keeps before it folds its oldest entries into a
/// floor (peers behind the floor are sent the full state instead of a delta).
pub(super) const LOG_CAP: usize = 1 << 16;

/// How many dots a received context may hold for the merge to list the removals it
/// carries; a larger one (a full state) raises the log's floor instead.
pub(super) const LOG_ENUMERATE_LIMIT: u64 = 1 << 16;

/// What a peer must have seen to know of a removal: the dot of the local write that
/// made it (an overwrite or a removal here, most of the log), or the received
/// context that carried it. A local write's trigger is one dot, kept without a
/// context's allocation.
#[derive(Clone, Debug)]
pub(super) enum Trigger {
    /// A local write's dot.
    Dot(Dot),
    /// A received context (with the writes set aside from it, if any).
    Ctx(CausalContext),
}

impl Trigger {
    /// True if `ctx` covers the trigger (a peer that has seen `ctx` knows of the
    /// removal).
    pub(super) fn seen_by(&self, ctx: &CausalContext) -> bool {
        match self {
            Trigger::Dot(d) => ctx.contains(*d),
            Trigger::Ctx(c) => ctx.includes(c),
        }
    }

    /// Adds the trigger's dots to `ctx`.
    pub(super) fn add_to(&self, ctx: &mut CausalContext) {
        match self {
            Trigger::Dot(d) => {
                ctx.insert(*d);
            }
            Trigger::Ctx(c) => {
                ctx.merge_ref(c);
            }
        }
    }

    /// The trigger's dots that `within` holds.
    pub(super) fn intersection(&self, within: &CausalContext) -> CausalContext {
        match self {
            Trigger::Dot(d) => {
                let mut ctx = CausalContext::new();
                if within.contains(*d) {
                    ctx.insert(*d);
                }
                ctx
            }
            Trigger::Ctx(c) => c.intersection(within),
        }
    }
}

/// Recent removals: which dots died, and the clock a peer must have reached to know it.
#[derive(Clone, Debug, Default)]
pub(super) struct RemovalLog {
    /// `(seq, trigger, dead dots)`: a peer whose clock does not cover `trigger` may
    /// still hold the dots alive and must be told.
    pub(super) entries: VecDeque<(u64, Trigger, Vec<Dot>)>,
    /// The sequence number of the next entry (a chunked catch-up walks the log by it).
    pub(super) next_seq: u64,
    /// Removals older than this were forgotten: a peer below it gets the full state.
    pub(super) floor: CausalContext,
    /// Dead dots held in `entries`.
    pub(super) dots: usize,
}

impl RemovalLog {
    pub(super) fn push(&mut self, trigger: Trigger, dead: Vec<Dot>) {
        if dead.is_empty() {
            return;
        }
        self.dots += dead.len();
        self.entries.push_back((self.next_seq, trigger, dead));
        self.next_seq += 1;
        while self.dots > LOG_CAP {
            let Some((_, trigger, dead)) = self.entries.pop_front() else {
                break;
            };
            self.dots -= dead.len();
            trigger.add_to(&mut self.floor);
        }
    }

    pub(super) fn raise_floor(&mut self, seen: &CausalContext) {
        self.floor.merge_ref(seen);
    }

    /// Forgets the removals every peer has acknowledged. The floor rises to cover
    /// them, so a peer that later comes back from an older snapshot, below what it had
    /// acknowledged, is sent the full state rather than a delta missing them.
    pub(super) fn prune(&mut self, stable: &CausalContext) {
        let floor = &mut self.floor;
        let mut dropped = 0;
        self.entries.retain(|(_, trigger, dead)| {
            let keep = !trigger.seen_by(stable);
            if !keep {
                trigger.add_to(floor);
                dropped += dead.len();
            }
            keep
        });
        self.dots -= dropped;
    }
}

/// How many removal notes a map keeps (see [`RemovalNote`]); past it, the first kept
/// are forgotten (their removals still apply; a replica that learns of one only after
/// that is not told it raced). A received map holding more is refused.
pub(super) const NOTE_CAP: usize = 1 << 12;

/// How many removal notes of one key a map keeps (one per remover at most: concurrent
/// removals of the key by different replicas); past it, the key's first kept are
/// forgotten, as for [`NOTE_CAP`]. A received map holding more is refused.
pub(super) const NOTES_PER_KEY: usize = 64;

/// How many context ranges the kept removal notes may hold in all; past it, the oldest
/// notes are forgotten, as for [`NOTE_CAP`].
pub(super) const NOTE_RANGES_CAP: usize = 1 << 16;

/// A removal of a key, told to every replica until all have acknowledged it: the
/// removal's own dot (no element ever holds it), the key, and the remover's causal
/// context when it removed the key. A replica that learns of the removal (its dot is
/// new to it) while it holds an element of the key that the remover had not seen
/// holds an update made without seeing the removal: a delete-vs-update race, which it
/// reports. Notes are bookkeeping, not state: they take no part in equality, and are
/// pruned at causal stability like the removal log.
#[derive(Clone, Debug)]
pub(super) struct RemovalNote<K> {
    pub(super) dot: Dot,
    pub(super) key: K,
    pub(super) seen: CausalContext,
    /// Its place in this replica's list (a chunked catch-up walks the list by it);
    /// not sent.
    pub(super) seq: u64,
}

/// The removal notes a standalone map keeps, oldest first (see [`RemovalNote`]). A
/// removal whose remover had seen an earlier removal of the same key (its dot, or a
/// later dot of its replica) supersedes it: a replica holding an update that raced
/// the earlier removal but not the later one has it taken by the later removal
/// (nothing survives to report), and one that learns of both at once, or of the
/// later first, is told of the later only. Superseded notes are left out of reports
/// (where the superseding one met the same update), not dropped: "had seen" is not
/// transitive over contexts with gaps, so dropping them would make the notes kept
/// depend on the order removals arrived in. Of one replica's removals of a key only
/// the newest note is kept (its counter is the highest), so a key removed again and
/// again keeps one note per remover, and at most [`NOTES_PER_KEY`]. The notes kept
/// are the same whatever the order of arrival, within the caps (past them the first
/// kept go first) and as long as a note pruned at stability is not received again.
#[derive(Clone, Debug)]
pub(super) struct Notes<K> {
    pub(super) list: VecDeque<RemovalNote<K>>,
    /// Context ranges held by the notes' contexts.
    pub(super) ranges: usize,
    /// The sequence number of the next note.
    pub(super) next_seq: u64,
    /// The sequence numbers of each key's notes.
    pub(super) by_key: HashMap<K, Vec<u64>>,
}

impl<K> Default for Notes<K> {
    fn default() -> Self {
        Notes {
            list: VecDeque::new(),
            ranges: 0,
            next_seq: 0,
            by_key: HashMap::new(),
        }
    }
}

impl<K: Key> Notes<K> {
    /// The position of the note numbered `seq`, if still held.
    pub(super) fn position(&self, seq: u64) -> Option<usize> {
        let pos = self.list.partition_point(|n| n.seq < seq);
        (self.list.get(pos).is_some_and(|n| n.seq == seq)).then_some(pos)
    }

    /// True if a held note of the same key supersedes `note` and `also_met` holds for
    /// it. A note supersedes another whose removal its remover had seen: it holds
    /// that removal's dot, or a later dot of its replica (the context of a replica
    /// that merged deltas out of order can hold the later without the earlier;
    /// causally, it has seen both).
    pub(super) fn superseded(
        &self,
        note: &RemovalNote<K>,
        also_met: impl Fn(&RemovalNote<K>) -> bool,
    ) -> bool {
        self.by_key.get(&note.key).is_some_and(|seqs| {
            seqs.iter().any(|&seq| {
                self.position(seq).is_some_and(|pos| {
                    let held = &self.list[pos];
                    held.dot != note.dot
                        && held.seen.max_counter(note.dot.replica()) >= note.dot.counter()
                        && also_met(held)
                })
            })
        })
    }

    /// Keeps `note` unless a note of the same key and remover at least as new is
    /// held, dropping an older one of that remover and, past the caps, the oldest.
    /// Returns its sequence number if kept.
    ///
    /// Only a remover's own newer removal replaces a note: of one replica's removals
    /// the newest wins, whatever the order they arrive in, so replicas that learned
    /// of the same removals in different orders keep the same notes. A note another
    /// replica's removal supersedes (that removal had seen it) is kept all the same:
    /// "had seen" is not transitive over contexts with gaps (deltas merged out of
    /// order), so dropping it would leave replicas with different notes. Reports
    /// leave a superseded note out instead, where the superseding one met the same
    /// update (see [`Notes::superseded`]).
    pub(super) fn push(&mut self, note: RemovalNote<K>) -> Option<u64> {
        if let Some(seqs) = self.by_key.get_mut(&note.key) {
            let mut kept = Vec::with_capacity(seqs.len() + 1);
            let mut newer_held = false;
            for &seq in seqs.iter() {
                let pos = self.list.partition_point(|n| n.seq < seq);
                let Some(held) = self.list.get(pos).filter(|n| n.seq == seq) else {
                    continue;
                };
                if held.dot.replica() != note.dot.replica() {
                    kept.push(seq);
                } else if held.dot.counter() >= note.dot.counter() {
                    newer_held = true;
                    kept.push(seq);
                } else {
                    let old = self.list.remove(pos).expect("present");
                    self.ranges -= old.seen.range_count();
                }
            }
            *seqs = kept;
            if newer_held {
                return None;
            }
        }
        let mut note = note;
        note.seq = self.next_seq;
        self.next_seq += 1;
        self.ranges += note.seen.range_count();
        let seq = note.seq;
        let seqs = self.by_key.entry(note.key.clone()).or_default();
        seqs.push(seq);
        let crowded = (seqs.len() > NOTES_PER_KEY).then(|| seqs.remove(0));
        self.list.push_back(note);
        if let Some(first) = crowded {
            if let Some(pos) = self.position(first) {
                let old = self.list.remove(pos).expect("present");
                self.ranges -= old.seen.range_count();
            }
        }
        while self.list.len() > NOTE_CAP || self.ranges > NOTE_RANGES_CAP {
            let Some(old) = self.list.pop_front() else {
                break;
            };
            self.ranges -= old.seen.range_count();
            self.forget_key_seq(&old.key, old.seq);
        }
        Some(seq)
    }

    /// Keeps a note read from the wire as it is (a received map is checked by
    /// `validate_notes`, and its notes are weighed one by one when merged).
    pub(super) fn push_received(&mut self, mut note: RemovalNote<K>) {
        note.seq = self.next_seq;
        self.next_seq += 1;
        self.ranges += note.seen.range_count();
        self.by_key
            .entry(note.key.clone())
            .or_default()
            .push(note.seq);
        self.list.push_back(note);
    }

    pub(super) fn forget_key_seq(&mut self, key: &K, seq: u64) {
        if let Some(seqs) = self.by_key.get_mut(key) {
            seqs.retain(|&s| s != seq);
            if seqs.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    /// Forgets the notes of removals every peer has acknowledged.
    pub(super) fn prune(&mut self, stable: &CausalContext) {
        let before = self.list.len();
        let ranges = &mut self.ranges;
        self.list.retain(|n| {
            let keep = !stable.contains(n.dot);
            if !keep {
                *ranges -= n.seen.range_count();
            }
            keep
        });
        if self.list.len() != before {
            self.by_key.clear();
            for n in &self.list {
                self.by_key.entry(n.key.clone()).or_default().push(n.seq);
            }
        }
    }
}

impl<K: Key, V: DotStore> OrMap<K, V> {
    /// The removal log's size in dead dots: bookkeeping that lets
    /// [`delta_since`](Crdt::delta_since) tell peers about recent removals, released
    /// by [`prune`](Crdt::prune) once every peer has acknowledged them.
    ///
    /// ```
    /// use concord::{Crdt, Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// cart.increment("apples".into(), 3, &mut hlc)?;
    /// cart.remove("apples", &mut hlc)?;
    /// assert_eq!(cart.pending_removals(), 1);
    ///
    /// // Every peer has acknowledged everything: the log is released.
    /// let stable = cart.context().clone();
    /// cart.prune(&stable);
    /// assert_eq!(cart.pending_removals(), 0);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn pending_removals(&self) -> usize {
        self.log.dots
    }

    /// The removals this map still tells its peers of, in the order it learned of
    /// them (a map read from the wire or a snapshot: in dot order), each as its own
    /// dot, the key it removed and the remover's causal context when it removed it. A
    /// replica that learns of a removal while it holds an element of the key that
    /// context lacks (an update made without seeing the removal) reports a
    /// delete-vs-update race (see [`Conflict`](crate::Conflict)). Released by
    /// [`prune`](Crdt::prune) once every peer has acknowledged the removal; at most
    /// 4,096 are kept, and 64 of one key (the first kept go first), and a replica's
    /// removal of a key replaces the note of its earlier one (so a replica's removals
    /// of a key keep one note, of its newest, whatever order they arrive in).
    ///
    /// ```
    /// use concord::{Crdt, Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
    /// let mut cart: OrMap<String, PnCounter> = OrMap::new();
    /// cart.increment("apples".into(), 3, &mut hlc)?;
    /// cart.remove("apples", &mut hlc)?;
    /// let (dot, key, seen) = cart.removal_notes().next().unwrap();
    /// assert_eq!((dot.counter(), key.as_str()), (2, "apples"));
    /// assert!(seen.contains(dot));
    ///
    /// let stable = cart.context().clone();
    /// cart.prune(&stable);
    /// assert_eq!(cart.removal_notes().count(), 0);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn removal_notes(&self) -> impl ExactSizeIterator<Item = (Dot, &K, &CausalContext)> + '_ {
        self.notes.list.iter().map(|n| (n.dot, &n.key, &n.seen))
    }

    /// Checks received removal notes: no more than a map keeps (in all, and of one
    /// key), each with a context of a bounded size that holds its own dot, each dot
    /// once, in the map's context and held by no element, and at most one per key and
    /// remover (a map keeps only a replica's newest removal of a key).
    pub(super) fn validate_notes(&self, limits: &Limits) -> Result<()> {
        let notes = &self.notes.list;
        let limit = NOTE_CAP.min(limits.max_entries);
        if notes.len() > limit {
            return Err(Error::TooManyEntries {
                what: "removal notes",
                count: notes.len(),
                limit,
            });
        }
        for seqs in self.notes.by_key.values() {
            if seqs.len() > NOTES_PER_KEY {
                return Err(Error::TooManyEntries {
                    what: "removal notes of one key",
                    count: seqs.len(),
                    limit: NOTES_PER_KEY,
                });
            }
        }
        let mut removers: std::collections::HashSet<(&K, ReplicaId)> =
            std::collections::HashSet::with_capacity(notes.len());
        let mut dots = DotSet::default();
        for n in notes {
            if n.seen.range_count() > limits.max_context_ranges {
                return Err(Error::TooManyEntries {
                    what: "context ranges",
                    count: n.seen.range_count(),
                    limit: limits.max_context_ranges,
                });
            }
            let reason = if !self.ctx.contains(n.dot) {
                "removal note's dot missing from the causal context sent with it"
            } else if !n.seen.contains(n.dot) {
                "removal note's context lacks the removal's own dot"
            } else if self.index.contains_key(&n.dot) {
                "removal note's dot tags an element"
            } else if !dots.insert(n.dot) {
                "the same removal note appears twice"
            } else if !removers.insert((&n.key, n.dot.replica())) {
                "two removal notes of one key by one replica"
            } else {
                continue;
            };
            return Err(Error::InvalidDot { dot: n.dot, reason });
        }
        Ok(())
    }
}
