//! Causality: [`VectorClock`] (a version vector) and [`CausalContext`] (every dot a
//! replica has seen, compactly).
//!
//! Two masters tick their own entries; comparing the clocks tells whether one write
//! saw the other or whether they raced:
//!
//! ```
//! use concord::{CausalOrder, ReplicaId, Resolver, VectorClock};
//!
//! let (a, b) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
//! let mut at_a = VectorClock::new();
//! at_a.increment(a); // A:[1,0]
//! let mut at_b = VectorClock::new();
//! at_b.increment(b); // B:[0,1]
//! assert_eq!(at_a.compare(&at_b), CausalOrder::Concurrent);
//!
//! // B receives A's clock, then writes again: that write saw A's.
//! at_b.merge(at_a.clone());
//! at_b.increment(b); // [1,2]
//! assert_eq!(at_a.compare(&at_b), CausalOrder::Before);
//! ```

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{Dot, ReplicaId};
use crate::resolver::{Outcome, Resolver};

/// How two clocks relate in the happened-before partial order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CausalOrder {
    /// The left clock happened before the right one (left < right).
    Before,
    /// The left clock happened after the right one (left > right).
    After,
    /// Both clocks are the same.
    Equal,
    /// Neither saw everything the other saw: the events raced.
    Concurrent,
}

/// A version vector: for each replica, how many of its events have been seen.
///
/// Entries are kept sorted by replica id with no zero entries, so equal clocks are
/// equal values and serialize identically (a JSON object from replica id to count).
/// Replicas can join at any time: a missing entry reads as zero.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct VectorClock {
    entries: Vec<(ReplicaId, u64)>,
}

impl VectorClock {
    /// The empty clock (nothing seen).
    pub fn new() -> Self {
        Self::default()
    }

    /// How many events of `replica` this clock has seen.
    pub fn get(&self, replica: ReplicaId) -> u64 {
        match self.find(replica) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    /// Records the next local event of `replica` and returns its dot.
    ///
    /// ```
    /// use concord::{ReplicaId, VectorClock};
    /// let a = ReplicaId::from_u128(1);
    /// let mut clock = VectorClock::new();
    /// assert_eq!(clock.increment(a).counter(), 1);
    /// assert_eq!(clock.increment(a).counter(), 2);
    /// assert_eq!(clock.get(a), 2);
    /// ```
    pub fn increment(&mut self, replica: ReplicaId) -> Dot {
        let counter = match self.find(replica) {
            Ok(i) => {
                self.entries[i].1 += 1;
                self.entries[i].1
            }
            Err(i) => {
                self.entries.insert(i, (replica, 1));
                1
            }
        };
        Dot::new(replica, counter)
    }

    /// Raises the entry of `replica` to at least `counter`.
    pub fn raise(&mut self, replica: ReplicaId, counter: u64) {
        if counter == 0 {
            return;
        }
        match self.find(replica) {
            Ok(i) => self.entries[i].1 = self.entries[i].1.max(counter),
            Err(i) => self.entries.insert(i, (replica, counter)),
        }
    }

    /// Records that `dot` (and, as a version vector implies, every earlier event of its
    /// replica) has been seen.
    pub fn observe(&mut self, dot: Dot) {
        self.raise(dot.replica(), dot.counter());
    }

    /// True if this clock has seen `dot`.
    pub fn covers(&self, dot: Dot) -> bool {
        dot.counter() <= self.get(dot.replica())
    }

    /// True if this clock has seen everything `other` has (`self >= other`).
    pub fn dominates(&self, other: &VectorClock) -> bool {
        matches!(self.compare(other), CausalOrder::After | CausalOrder::Equal)
    }

    /// Compares two clocks in the happened-before order.
    pub fn compare(&self, other: &VectorClock) -> CausalOrder {
        let (mut less, mut greater) = (false, false);
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.entries, &other.entries);
        while i < a.len() || j < b.len() {
            let ord = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.0.cmp(&y.0),
                (Some(_), None) => Ordering::Less,
                (None, _) => Ordering::Greater,
            };
            match ord {
                // Present only on the left (and non-zero): left is ahead there.
                Ordering::Less => {
                    greater = true;
                    i += 1;
                }
                Ordering::Greater => {
                    less = true;
                    j += 1;
                }
                Ordering::Equal => {
                    match a[i].1.cmp(&b[j].1) {
                        Ordering::Less => less = true,
                        Ordering::Greater => greater = true,
                        Ordering::Equal => {}
                    }
                    i += 1;
                    j += 1;
                }
            }
            if less && greater {
                return CausalOrder::Concurrent;
            }
        }
        match (less, greater) {
            (false, false) => CausalOrder::Equal,
            (true, false) => CausalOrder::Before,
            (false, true) => CausalOrder::After,
            (true, true) => CausalOrder::Concurrent,
        }
    }

    /// The pointwise minimum: what both clocks have seen.
    pub fn meet(&self, other: &VectorClock) -> VectorClock {
        let entries = self
            .entries
            .iter()
            .filter_map(|&(r, n)| {
                let m = n.min(other.get(r));
                (m > 0).then_some((r, m))
            })
            .collect();
        VectorClock { entries }
    }

    /// The replicas and counts, in replica-id order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(self.entries.iter())
    }

    /// How many replicas have a non-zero entry.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The total number of events seen (the sum of the entries).
    pub fn total(&self) -> u64 {
        self.entries.iter().map(|e| e.1).sum()
    }

    fn find(&self, replica: ReplicaId) -> std::result::Result<usize, usize> {
        self.entries.binary_search_by(|e| e.0.cmp(&replica))
    }
}

impl Resolver for VectorClock {
    fn merge(&mut self, other: Self) -> Outcome {
        self.merge_ref(&other)
    }

    fn merge_ref(&mut self, other: &Self) -> Outcome {
        let order = self.compare(other);
        match order {
            CausalOrder::Equal | CausalOrder::After => return Outcome::Unchanged,
            CausalOrder::Before => {
                self.entries.clone_from(&other.entries);
                return Outcome::Advanced;
            }
            CausalOrder::Concurrent => {}
        }
        let mut out = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        let (a, b) = (&self.entries, &other.entries);
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                Ordering::Less => {
                    out.push(a[i]);
                    i += 1;
                }
                Ordering::Greater => {
                    out.push(b[j]);
                    j += 1;
                }
                Ordering::Equal => {
                    out.push((a[i].0, a[i].1.max(b[j].1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&a[i..]);
        out.extend_from_slice(&b[j..]);
        self.entries = out;
        Outcome::Concurrent
    }
}

const TOKEN_DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The most entries a token may name when parsed.
const TOKEN_MAX_ENTRIES: usize = 4096;

fn token_digits(mut n: u128, out: &mut String) {
    let mut buf = Vec::new();
    loop {
        buf.push(TOKEN_DIGITS[(n & 63) as usize]);
        n >>= 6;
        if n == 0 {
            break;
        }
    }
    out.extend(buf.iter().rev().map(|&b| b as char));
}

fn token_number(s: &str) -> Option<u128> {
    if s.is_empty() || s.len() > 22 {
        return None;
    }
    let mut n: u128 = 0;
    for b in s.bytes() {
        let d = TOKEN_DIGITS.iter().position(|&x| x == b)? as u128;
        n = n.checked_mul(64)?.checked_add(d)?;
    }
    Some(n)
}

impl VectorClock {
    /// The compact text form of this clock, for a session token in an HTTP header or
    /// a cookie (the form of [`CausalContext::to_token`]): `replica.:counter` in base
    /// 64 (URL-safe), joined by `~`. Three random replica ids take about 80 bytes.
    ///
    /// ```
    /// use concord::{ReplicaId, VectorClock};
    ///
    /// let clock: VectorClock = [(ReplicaId::from_u128(1), 12), (ReplicaId::random(), 7)]
    ///     .into_iter()
    ///     .collect();
    /// let token = clock.to_token();
    /// assert_eq!(VectorClock::from_token(&token)?, clock);
    /// assert!(VectorClock::from_token("not a token").is_err());
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn to_token(&self) -> String {
        CausalContext::from(self).to_token()
    }

    /// Parses [`VectorClock::to_token`]'s form.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`](crate::Error::Decode) for anything
    /// [`CausalContext::from_token`] refuses, and for a token with gaps (a context,
    /// not a version vector).
    pub fn from_token(token: &str) -> crate::Result<VectorClock> {
        let ctx = CausalContext::from_token(token)?;
        let clock = ctx.clock();
        if CausalContext::from(&clock) != ctx {
            return Err(crate::Error::Decode {
                reason: "session token: it has gaps (parse it as a CausalContext)".into(),
            });
        }
        Ok(clock)
    }
}

/// The replicas and counts of a [`VectorClock`], in replica-id order: see
/// [`VectorClock::iter`].
#[derive(Clone, Debug)]
pub struct Iter<'a>(std::slice::Iter<'a, (ReplicaId, u64)>);

impl Iterator for Iter<'_> {
    type Item = (ReplicaId, u64);

    fn next(&mut self) -> Option<(ReplicaId, u64)> {
        self.0.next().copied()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<(ReplicaId, u64)> {
        self.0.next_back().copied()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl std::iter::FusedIterator for Iter<'_> {}

/// The replicas and counts, as [`VectorClock::iter`].
///
/// ```
/// use concord::{ReplicaId, VectorClock};
///
/// let (a, b) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
/// let clock: VectorClock = [(a, 3), (b, 5)].into_iter().collect();
/// let mut events = 0;
/// for (_replica, count) in &clock {
///     events += count;
/// }
/// assert_eq!(events, 8);
/// ```
impl<'a> IntoIterator for &'a VectorClock {
    type Item = (ReplicaId, u64);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Raises each replica's count to at least the given one, as [`VectorClock::raise`].
///
/// ```
/// use concord::{ReplicaId, VectorClock};
///
/// let (a, b) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
/// let mut clock: VectorClock = [(a, 3)].into_iter().collect();
/// clock.extend([(a, 1), (b, 4)]);
/// assert_eq!((clock.get(a), clock.get(b)), (3, 4));
/// ```
impl Extend<(ReplicaId, u64)> for VectorClock {
    fn extend<I: IntoIterator<Item = (ReplicaId, u64)>>(&mut self, iter: I) {
        for (r, n) in iter {
            self.raise(r, n);
        }
    }
}

impl FromIterator<(ReplicaId, u64)> for VectorClock {
    fn from_iter<I: IntoIterator<Item = (ReplicaId, u64)>>(iter: I) -> Self {
        let mut clock = VectorClock::new();
        for (r, n) in iter {
            clock.raise(r, n);
        }
        clock
    }
}

impl fmt::Debug for VectorClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(r, n)| (r, n)))
            .finish()
    }
}

impl Serialize for VectorClock {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.entries.iter().map(|(r, n)| (r, n)))
    }
}

/// Reads a JSON object into a `BTreeMap`, refusing a key that appears twice (two
/// decoders could otherwise read one message differently). Each key is charged to the
/// decoding budget as one replica (it reads version vectors).
pub(crate) fn unique_btree<'de, D, K, V>(d: D) -> std::result::Result<BTreeMap<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    struct Unique<K, V>(std::marker::PhantomData<(K, V)>);
    impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> serde::de::Visitor<'de> for Unique<K, V> {
        type Value = BTreeMap<K, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map without repeated keys")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut access: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = access.next_entry()? {
                crate::wire::budget::replica(out.len() + 1).map_err(crate::wire::budget::custom)?;
                if out.insert(k, v).is_some() {
                    return Err(crate::wire::budget::custom("a key appears twice"));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique(std::marker::PhantomData))
}

impl<'de> Deserialize<'de> for VectorClock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let map = unique_btree::<D, ReplicaId, u64>(d)?;
        Ok(VectorClock {
            entries: map.into_iter().filter(|e| e.1 > 0).collect(),
        })
    }
}

/// A set of event counters of one replica, kept as sorted, disjoint, non-adjacent
/// inclusive ranges: `[1, 5], [8, 8]` means events 1–5 and 8 were seen.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "Vec<(u64, u64)>")]
struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    fn contains(&self, n: u64) -> bool {
        // The first range whose end is >= n.
        let i = self.0.partition_point(|r| r.1 < n);
        self.0.get(i).is_some_and(|r| r.0 <= n)
    }

    /// The length of the gap-free prefix starting at 1 (the version-vector entry).
    fn prefix(&self) -> u64 {
        match self.0.first() {
            Some(&(1, end)) => end,
            _ => 0,
        }
    }

    fn max(&self) -> u64 {
        self.0.last().map_or(0, |r| r.1)
    }

    /// Inserts `[lo, hi]`; returns true if anything was new.
    fn insert_range(&mut self, lo: u64, hi: u64) -> bool {
        debug_assert!(1 <= lo && lo <= hi);
        // Fast path: appending past the end (the common case for local events).
        if let Some(last) = self.0.last_mut() {
            if lo > last.1 {
                if lo == last.1 + 1 {
                    last.1 = hi;
                } else {
                    self.0.push((lo, hi));
                }
                return true;
            }
        } else {
            self.0.push((lo, hi));
            return true;
        }
        // Ranges that overlap or touch [lo, hi]: start..end.
        let start = self.0.partition_point(|r| r.1.saturating_add(1) < lo);
        let end = self.0.partition_point(|r| r.0 <= hi.saturating_add(1));
        if start < end && self.0[start].0 <= lo && self.0[start].1 >= hi {
            return false;
        }
        let new_lo = if start < end {
            lo.min(self.0[start].0)
        } else {
            lo
        };
        let new_hi = if start < end {
            hi.max(self.0[end - 1].1)
        } else {
            hi
        };
        self.0.splice(start..end, std::iter::once((new_lo, new_hi)));
        true
    }

    fn union(&mut self, other: &Ranges) -> bool {
        let mut changed = false;
        for &(lo, hi) in &other.0 {
            changed |= self.insert_range(lo, hi);
        }
        changed
    }

    /// True if every counter in `other` is in `self`.
    fn includes(&self, other: &Ranges) -> bool {
        other.0.iter().all(|&(lo, hi)| {
            let i = self.0.partition_point(|r| r.1 < lo);
            self.0.get(i).is_some_and(|r| r.0 <= lo && r.1 >= hi)
        })
    }

    /// The part above `floor`.
    fn above(&self, floor: u64) -> Ranges {
        let i = self.0.partition_point(|r| r.1 <= floor);
        let mut out: Vec<(u64, u64)> = self.0[i..].to_vec();
        if let Some(first) = out.first_mut() {
            first.0 = first.0.max(floor.saturating_add(1));
        }
        Ranges(out)
    }

    /// The counters in `self` that are not in `other`.
    fn minus(&self, other: &Ranges) -> Ranges {
        let mut out = Vec::new();
        let mut j = 0;
        for &(lo, hi) in &self.0 {
            let mut lo = lo;
            while j < other.0.len() && other.0[j].1 < lo {
                j += 1;
            }
            let mut k = j;
            while lo <= hi {
                match other.0.get(k) {
                    Some(&(olo, ohi)) if olo <= hi => {
                        if olo > lo {
                            out.push((lo, olo - 1));
                        }
                        if ohi >= hi {
                            lo = hi.saturating_add(1);
                            if hi == u64::MAX {
                                break;
                            }
                        } else {
                            lo = ohi + 1;
                            k += 1;
                        }
                    }
                    _ => {
                        out.push((lo, hi));
                        break;
                    }
                }
            }
        }
        Ranges(out)
    }

    /// The counters in both `self` and `other`.
    fn intersection(&self, other: &Ranges) -> Ranges {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < self.0.len() && j < other.0.len() {
            let (alo, ahi) = self.0[i];
            let (blo, bhi) = other.0[j];
            let (lo, hi) = (alo.max(blo), ahi.min(bhi));
            if lo <= hi {
                out.push((lo, hi));
            }
            if ahi < bhi {
                i += 1;
            } else {
                j += 1;
            }
        }
        Ranges(out)
    }

    fn count(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |n, r| n.saturating_add((r.1 - r.0).saturating_add(1)))
    }
}

impl TryFrom<Vec<(u64, u64)>> for Ranges {
    type Error = String;

    fn try_from(v: Vec<(u64, u64)>) -> std::result::Result<Self, String> {
        let mut prev_end = 0u64;
        for (i, &(lo, hi)) in v.iter().enumerate() {
            if lo == 0 || lo > hi {
                return Err(format!("range [{lo}, {hi}] is empty or starts at 0"));
            }
            if i > 0 && lo <= prev_end.saturating_add(1) {
                return Err("ranges must be sorted, disjoint and non-adjacent".into());
            }
            prev_end = hi;
        }
        Ok(Ranges(v))
    }
}

impl From<Ranges> for Vec<(u64, u64)> {
    fn from(r: Ranges) -> Self {
        r.0
    }
}

/// Every dot a replica has seen: a version vector plus the dots seen out of order.
///
/// Stored per replica as ranges of counters, so the usual case (no gaps) is one pair
/// per replica and a gap costs one more pair; gaps fold away as soon as they close.
/// A removed element leaves no tombstone: its dot simply stays in the context.
///
/// ```
/// use concord::{CausalContext, Dot, ReplicaId};
///
/// let a = ReplicaId::from_u128(1);
/// let mut ctx = CausalContext::new();
/// ctx.insert(Dot::new(a, 1));
/// ctx.insert(Dot::new(a, 3)); // seen out of order: a gap at 2
/// assert_eq!(ctx.clock().get(a), 1);
/// assert!(!ctx.contains(Dot::new(a, 2)));
/// ctx.insert(Dot::new(a, 2)); // the gap closes and compacts
/// assert_eq!(ctx.clock().get(a), 3);
/// assert_eq!(ctx.next_dot(a), Dot::new(a, 4));
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct CausalContext {
    seen: BTreeMap<ReplicaId, Ranges>,
}

/// JSON: `{replica: [[lo, hi], ...], ...}`. Binary (not self-describing): a count,
/// then for each replica its id and its ranges relative to one another (see
/// `causal::Span`), so a context with many gaps costs a byte or two per range.
impl Serialize for CausalContext {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return self.seen.serialize(s);
        }
        s.collect_seq(
            self.seen
                .iter()
                .map(|(r, ranges)| (r, crate::causal::spans(&ranges.0))),
        )
    }
}

/// Reads the binary form of a context: `(replica, spans)` pairs, each replica once
/// and with at least one range, charged to the decoding budget as they are read.
struct BinaryContext;

impl<'de> serde::de::Visitor<'de> for BinaryContext {
    type Value = CausalContext;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a causal context: (replica, spans) pairs")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<CausalContext, A::Error> {
        let mut ctx = CausalContext::new();
        let mut counted = 0usize;
        while let Some((replica, ranges)) = seq.next_element_seed(BinaryReplica {
            counted: &mut counted,
        })? {
            crate::wire::budget::replica(ctx.seen.len() + 1)
                .map_err(crate::wire::budget::custom)?;
            if ranges.is_empty() {
                return Err(crate::wire::budget::custom(
                    "a replica without ranges in a causal context",
                ));
            }
            if ctx.seen.insert(replica, Ranges(ranges)).is_some() {
                return Err(crate::wire::budget::custom("a key appears twice"));
            }
        }
        Ok(ctx)
    }
}

/// One `(replica, spans)` pair of a binary context.
struct BinaryReplica<'a> {
    counted: &'a mut usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for BinaryReplica<'_> {
    type Value = (ReplicaId, Vec<(u64, u64)>);

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_tuple(2, self)
    }
}

impl<'de> serde::de::Visitor<'de> for BinaryReplica<'_> {
    type Value = (ReplicaId, Vec<(u64, u64)>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a (replica, spans) pair")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let replica = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(0, &self))?;
        let ranges = seq
            .next_element_seed(crate::causal::Spans {
                counted: &mut *self.counted,
            })?
            .ok_or_else(|| A::Error::invalid_length(1, &"a (replica, spans) pair"))?;
        Ok((replica, ranges))
    }
}

/// Reads `{replica: [[lo, hi], ...], ...}`: ranges sorted, disjoint and non-adjacent,
/// no replica twice. Under a decoding budget (see `wire::budget`) every range and
/// every replica is charged as it is read, so a context past the limits is refused
/// before more than the limit is held.
impl<'de> Deserialize<'de> for CausalContext {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct ContextVisitor;
        impl<'de> serde::de::Visitor<'de> for ContextVisitor {
            type Value = CausalContext;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a causal context: replica ids to sorted ranges, each once")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> std::result::Result<CausalContext, A::Error> {
                let mut ctx = CausalContext::new();
                let mut ranges = 0usize;
                while let Some(replica) = access.next_key::<ReplicaId>()? {
                    crate::wire::budget::replica(ctx.seen.len() + 1)
                        .map_err(crate::wire::budget::custom)?;
                    let list = access.next_value_seed(RangesSeed {
                        counted: &mut ranges,
                    })?;
                    if ctx.seen.insert(replica, list).is_some() {
                        return Err(crate::wire::budget::custom("a key appears twice"));
                    }
                }
                Ok(ctx)
            }
        }
        if !d.is_human_readable() {
            return d.deserialize_seq(BinaryContext);
        }
        d.deserialize_map(ContextVisitor)
    }
}

/// One replica's ranges, checked and charged one by one.
struct RangesSeed<'a> {
    /// Ranges of the whole context read so far.
    counted: &'a mut usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for RangesSeed<'_> {
    type Value = Ranges;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Ranges, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RangesSeed<'_> {
    type Value = Ranges;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sorted, disjoint, non-adjacent [lo, hi] ranges")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Ranges, A::Error> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        while let Some((lo, hi)) = seq.next_element::<(u64, u64)>()? {
            *self.counted += 1;
            crate::wire::budget::range(*self.counted).map_err(crate::wire::budget::custom)?;
            if lo == 0 || lo > hi {
                return Err(crate::wire::budget::custom(format!(
                    "range [{lo}, {hi}] is empty or starts at 0"
                )));
            }
            if out
                .last()
                .is_some_and(|&(_, end)| lo <= end.saturating_add(1))
            {
                return Err(crate::wire::budget::custom(
                    "ranges must be sorted, disjoint and non-adjacent",
                ));
            }
            out.push((lo, hi));
        }
        Ok(Ranges(out))
    }
}

impl CausalContext {
    /// The empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// True if `dot` has been seen.
    pub fn contains(&self, dot: Dot) -> bool {
        self.seen
            .get(&dot.replica())
            .is_some_and(|r| r.contains(dot.counter()))
    }

    /// Records `dot` as seen; returns true if it was new. A dot with counter 0 is
    /// ignored (counters start at 1).
    pub fn insert(&mut self, dot: Dot) -> bool {
        if dot.counter() == 0 {
            return false;
        }
        self.seen
            .entry(dot.replica())
            .or_default()
            .insert_range(dot.counter(), dot.counter())
    }

    /// Records the events `lo..=hi` of `replica` as seen (`lo >= 1`, `lo <= hi`).
    pub(crate) fn insert_range(&mut self, replica: ReplicaId, lo: u64, hi: u64) -> bool {
        debug_assert!(lo >= 1 && lo <= hi);
        self.seen.entry(replica).or_default().insert_range(lo, hi)
    }

    /// The part of this context that names `replica`'s events.
    pub fn only(&self, replica: ReplicaId) -> CausalContext {
        let seen = self
            .seen
            .get(&replica)
            .map(|r| (replica, r.clone()))
            .into_iter()
            .collect();
        CausalContext { seen }
    }

    /// The newest counter seen from each replica, gaps or not.
    pub fn max_clock(&self) -> VectorClock {
        self.seen
            .iter()
            .map(|(r, ranges)| (*r, ranges.max()))
            .collect()
    }

    /// Records every event of every replica up to `clock`.
    pub fn insert_clock(&mut self, clock: &VectorClock) {
        for (r, n) in clock.iter() {
            self.seen.entry(r).or_default().insert_range(1, n);
        }
    }

    /// The next dot `replica` should issue: one past the highest it has seen.
    pub fn next_dot(&self, replica: ReplicaId) -> Dot {
        let max = self.seen.get(&replica).map_or(0, Ranges::max);
        Dot::new(replica, max + 1)
    }

    /// The highest counter seen from `replica` (gaps or not).
    pub fn max_counter(&self, replica: ReplicaId) -> u64 {
        self.seen.get(&replica).map_or(0, Ranges::max)
    }

    /// The compact part: for each replica, the counter up to which there are no gaps.
    pub fn clock(&self) -> VectorClock {
        self.seen
            .iter()
            .map(|(r, ranges)| (*r, ranges.prefix()))
            .collect()
    }

    /// True if every event of `clock` has been seen.
    pub fn covers(&self, clock: &VectorClock) -> bool {
        clock
            .iter()
            .all(|(r, n)| self.seen.get(&r).is_some_and(|ranges| ranges.prefix() >= n))
    }

    /// True if every dot of `other` has been seen here.
    pub fn includes(&self, other: &CausalContext) -> bool {
        other.seen.iter().all(|(r, theirs)| {
            theirs.0.is_empty() || self.seen.get(r).is_some_and(|mine| mine.includes(theirs))
        })
    }

    /// The dots seen here that `clock` has not seen: the context of the range a delta
    /// for a peer at `clock` covers.
    pub fn since(&self, clock: &VectorClock) -> CausalContext {
        let seen = self
            .seen
            .iter()
            .filter_map(|(r, ranges)| {
                let above = ranges.above(clock.get(*r));
                (!above.0.is_empty()).then_some((*r, above))
            })
            .collect();
        CausalContext { seen }
    }

    /// Iterates over the dots seen here that `clock` has not (every counter of every
    /// range above the clock's entry). The count can be large for a far-behind clock.
    pub fn dots_since<'a>(&'a self, clock: &'a VectorClock) -> impl Iterator<Item = Dot> + 'a {
        self.seen.iter().flat_map(move |(r, ranges)| {
            let floor = clock.get(*r);
            ranges
                .0
                .iter()
                .flat_map(move |&(lo, hi)| lo.max(floor.saturating_add(1))..=hi)
                .map(move |n| Dot::new(*r, n))
        })
    }

    /// How many dots this context holds.
    pub fn dot_count(&self) -> u64 {
        self.seen
            .values()
            .fold(0u64, |n, r| n.saturating_add(r.count()))
    }

    /// How many ranges it takes to describe this context (a measure of its size).
    pub fn range_count(&self) -> usize {
        self.seen.values().map(|r| r.0.len()).sum()
    }

    /// The replicas that appear in this context.
    pub fn replicas(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.seen.keys().copied()
    }

    /// The ranges of counters seen from each replica (inclusive `(first, last)` pairs).
    pub fn ranges(&self) -> impl Iterator<Item = (ReplicaId, &[(u64, u64)])> + '_ {
        self.seen
            .iter()
            .map(|(r, ranges)| (*r, ranges.0.as_slice()))
    }

    /// The dots seen here that `other` has not seen: what a peer whose context is
    /// `other` lacks (gaps included, so a peer that misses a few old dots is sent
    /// just those).
    pub fn minus(&self, other: &CausalContext) -> CausalContext {
        let seen = self
            .seen
            .iter()
            .filter_map(|(r, mine)| {
                let rest = match other.seen.get(r) {
                    Some(theirs) => mine.minus(theirs),
                    None => mine.clone(),
                };
                (!rest.0.is_empty()).then_some((*r, rest))
            })
            .collect();
        CausalContext { seen }
    }

    /// The dots seen both here and in `other` (what two peers are both known to
    /// hold).
    pub fn intersection(&self, other: &CausalContext) -> CausalContext {
        let seen = self
            .seen
            .iter()
            .filter_map(|(r, mine)| {
                let both = mine.intersection(other.seen.get(r)?);
                (!both.0.is_empty()).then_some((*r, both))
            })
            .collect();
        CausalContext { seen }
    }

    /// The compact text form of this context, for a session token in an HTTP header
    /// or a cookie: per replica, its id and its ranges in base 64 (URL-safe), `~`
    /// between replicas, `.` before each range; a range is `:hi` (events 1 to `hi`,
    /// the usual case), `lo:hi`, or `n` (one event). Three random replica ids without
    /// gaps take about 80 bytes.
    ///
    /// ```
    /// use concord::{CausalContext, Dot, ReplicaId};
    ///
    /// let mut ctx = CausalContext::new();
    /// for n in [1, 2, 3, 7] {
    ///     ctx.insert(Dot::new(ReplicaId::from_u128(1), n));
    /// }
    /// ctx.insert(Dot::new(ReplicaId::random(), 1));
    /// let token = ctx.to_token();
    /// assert_eq!(CausalContext::from_token(&token)?, ctx);
    /// assert!(CausalContext::from_token("not a token").is_err());
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn to_token(&self) -> String {
        let mut out = String::new();
        for (r, ranges) in self.seen.iter().filter(|(_, r)| !r.0.is_empty()) {
            if !out.is_empty() {
                out.push('~');
            }
            token_digits(r.as_uuid().as_u128(), &mut out);
            for &(lo, hi) in &ranges.0 {
                out.push('.');
                if lo == 1 {
                    out.push(':');
                    token_digits(hi as u128, &mut out);
                } else if lo == hi {
                    token_digits(lo as u128, &mut out);
                } else {
                    token_digits(lo as u128, &mut out);
                    out.push(':');
                    token_digits(hi as u128, &mut out);
                }
            }
        }
        out
    }

    /// Parses [`CausalContext::to_token`]'s form (which is also
    /// [`VectorClock::to_token`]'s).
    ///
    /// # Errors
    ///
    /// [`Error::Decode`](crate::Error::Decode) for anything else: a malformed id or
    /// range, a counter beyond the largest a replica may issue, ranges out of order, a
    /// replica named twice, more than 4096 replicas or 65,536 ranges.
    pub fn from_token(token: &str) -> crate::Result<CausalContext> {
        let bad = |why: &str| crate::Error::Decode {
            reason: format!("session token: {why}"),
        };
        let mut ctx = CausalContext::new();
        if token.is_empty() {
            return Ok(ctx);
        }
        let mut total = 0usize;
        let max = crate::causal::MAX_COUNTER as u128;
        for part in token.split('~') {
            if ctx.seen.len() >= TOKEN_MAX_ENTRIES {
                return Err(bad("too many entries"));
            }
            let mut pieces = part.split('.');
            let r = token_number(pieces.next().unwrap_or_default())
                .ok_or_else(|| bad("malformed replica"))?;
            let mut ranges = Vec::new();
            for piece in pieces {
                total += 1;
                if total > 65_536 {
                    return Err(bad("too many ranges"));
                }
                let (lo, hi) = match piece.split_once(':') {
                    Some(("", hi)) => (Some(1), token_number(hi)),
                    Some((lo, hi)) => (token_number(lo), token_number(hi)),
                    None => (token_number(piece), token_number(piece)),
                };
                let (lo, hi) = lo
                    .zip(hi)
                    .filter(|(lo, hi)| *lo >= 1 && lo <= hi && *hi <= max)
                    .ok_or_else(|| bad("malformed range"))?;
                ranges.push((lo as u64, hi as u64));
            }
            let ranges = Ranges::try_from(ranges).map_err(|e| bad(&e))?;
            if ctx.seen.insert(ReplicaId::from_u128(r), ranges).is_some() {
                return Err(bad("a replica named twice"));
            }
        }
        Ok(ctx)
    }

    /// A context of the given replicas' ranges (each sorted, disjoint, non-adjacent,
    /// from 1 on: taken from another context).
    pub(crate) fn from_replicas(
        replicas: impl IntoIterator<Item = (ReplicaId, Vec<(u64, u64)>)>,
    ) -> CausalContext {
        let mut ctx = CausalContext::new();
        for (r, ranges) in replicas {
            ctx.set_ranges(r, ranges);
        }
        ctx
    }

    /// Sets the ranges of a replica this context does not name yet; `ranges` are
    /// sorted, disjoint, non-adjacent and start at 1 or later (a decoder checked them).
    pub(crate) fn set_ranges(&mut self, replica: ReplicaId, ranges: Vec<(u64, u64)>) {
        debug_assert!(!self.seen.contains_key(&replica));
        debug_assert!(Ranges::try_from(ranges.clone()).is_ok());
        if !ranges.is_empty() {
            self.seen.insert(replica, Ranges(ranges));
        }
    }

    /// Forgets every event of `replica` above `max`.
    pub(crate) fn truncate(&mut self, replica: ReplicaId, max: u64) {
        if let Some(ranges) = self.seen.get_mut(&replica) {
            ranges.0.retain(|r| r.0 <= max);
            if let Some(last) = ranges.0.last_mut() {
                last.1 = last.1.min(max);
            }
            if ranges.0.is_empty() {
                self.seen.remove(&replica);
            }
        }
    }

    /// Iterates over every dot seen here (the count can be large).
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.seen.iter().flat_map(|(r, ranges)| {
            ranges
                .0
                .iter()
                .flat_map(|&(lo, hi)| lo..=hi)
                .map(move |n| Dot::new(*r, n))
        })
    }

    /// True if nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.seen.values().all(|r| r.0.is_empty())
    }
}

/// Records every dot of the iterator, as [`CausalContext::insert`].
///
/// ```
/// use concord::{CausalContext, Dot, ReplicaId};
///
/// let a = ReplicaId::from_u128(1);
/// let mut ctx: CausalContext = [Dot::new(a, 1), Dot::new(a, 2)].into_iter().collect();
/// ctx.extend([Dot::new(a, 5)]);
/// assert!(ctx.contains(Dot::new(a, 2)) && ctx.contains(Dot::new(a, 5)));
/// assert!(!ctx.contains(Dot::new(a, 3))); // a gap
/// ```
impl Extend<Dot> for CausalContext {
    fn extend<I: IntoIterator<Item = Dot>>(&mut self, iter: I) {
        for dot in iter {
            self.insert(dot);
        }
    }
}

/// A context holding exactly the dots of the iterator (see [`Extend`]).
impl FromIterator<Dot> for CausalContext {
    fn from_iter<I: IntoIterator<Item = Dot>>(iter: I) -> Self {
        let mut ctx = CausalContext::new();
        ctx.extend(iter);
        ctx
    }
}

impl Resolver for CausalContext {
    fn merge(&mut self, other: Self) -> Outcome {
        self.merge_ref(&other)
    }

    fn merge_ref(&mut self, other: &Self) -> Outcome {
        let kept = !other.includes(self);
        let mut gained = false;
        for (r, theirs) in &other.seen {
            if theirs.0.is_empty() {
                continue;
            }
            match self.seen.get_mut(r) {
                Some(mine) => gained |= mine.union(theirs),
                None => {
                    self.seen.insert(*r, theirs.clone());
                    gained = true;
                }
            }
        }
        Outcome::from_flags(gained, kept)
    }
}

impl From<&VectorClock> for CausalContext {
    fn from(clock: &VectorClock) -> Self {
        let mut ctx = CausalContext::new();
        ctx.insert_clock(clock);
        ctx
    }
}

impl fmt::Debug for CausalContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.seen.iter().map(|(r, ranges)| (r, &ranges.0)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rid(n: u8) -> ReplicaId {
        ReplicaId::from_u128(n as u128)
    }

    fn clock() -> impl Strategy<Value = VectorClock> {
        proptest::collection::vec((0u8..4, 0u64..5), 0..5)
            .prop_map(|v| v.into_iter().map(|(r, n)| (rid(r), n)).collect())
    }

    fn context() -> impl Strategy<Value = CausalContext> {
        proptest::collection::vec((0u8..3, 1u64..12), 0..12).prop_map(|v| {
            let mut ctx = CausalContext::new();
            for (r, n) in v {
                ctx.insert(Dot::new(rid(r), n));
            }
            ctx
        })
    }

    /// The definition: `a <= b` iff every entry of a is <= b's.
    fn brute_force(a: &VectorClock, b: &VectorClock) -> CausalOrder {
        let le = (0..4).all(|r| a.get(rid(r)) <= b.get(rid(r)));
        let ge = (0..4).all(|r| a.get(rid(r)) >= b.get(rid(r)));
        match (le, ge) {
            (true, true) => CausalOrder::Equal,
            (true, false) => CausalOrder::Before,
            (false, true) => CausalOrder::After,
            (false, false) => CausalOrder::Concurrent,
        }
    }

    proptest! {
        #[test]
        fn compare_agrees_with_brute_force(a in clock(), b in clock()) {
            prop_assert_eq!(a.compare(&b), brute_force(&a, &b));
        }

        #[test]
        fn merge_is_pointwise_max(a in clock(), b in clock()) {
            let mut m = a.clone();
            m.merge_ref(&b);
            for r in 0..4 {
                prop_assert_eq!(m.get(rid(r)), a.get(rid(r)).max(b.get(rid(r))));
            }
            prop_assert!(m.dominates(&a) && m.dominates(&b));
        }

        #[test]
        fn context_matches_a_plain_set(dots in proptest::collection::vec((0u8..3, 1u64..12), 0..30)) {
            let mut ctx = CausalContext::new();
            let mut set = std::collections::BTreeSet::new();
            for (r, n) in dots {
                let d = Dot::new(rid(r), n);
                prop_assert_eq!(ctx.insert(d), set.insert(d));
            }
            for r in 0..3 {
                for n in 1..13 {
                    let d = Dot::new(rid(r), n);
                    prop_assert_eq!(ctx.contains(d), set.contains(&d));
                }
                // The compact prefix is the longest run 1..=k.
                let mut k = 0;
                while set.contains(&Dot::new(rid(r), k + 1)) { k += 1; }
                prop_assert_eq!(ctx.clock().get(rid(r)), k);
            }
            prop_assert_eq!(ctx.dot_count(), set.len() as u64);
        }

        #[test]
        fn since_holds_exactly_the_unseen_dots(ctx in context(), c in clock()) {
            let since = ctx.since(&c);
            for r in 0..4 {
                for n in 1..13 {
                    let d = Dot::new(rid(r), n);
                    prop_assert_eq!(since.contains(d), ctx.contains(d) && !c.covers(d));
                }
            }
            let listed: Vec<Dot> = ctx.dots_since(&c).collect();
            prop_assert_eq!(listed.len() as u64, since.dot_count());
        }

        #[test]
        fn minus_and_intersection_match_plain_sets(a in context(), b in context()) {
            let diff = a.minus(&b);
            let both = a.intersection(&b);
            for r in 0..4 {
                for n in 1..13 {
                    let d = Dot::new(rid(r), n);
                    prop_assert_eq!(diff.contains(d), a.contains(d) && !b.contains(d));
                    prop_assert_eq!(both.contains(d), a.contains(d) && b.contains(d));
                }
            }
            // Canonical form: equal sets compare equal.
            let mut rebuilt = CausalContext::new();
            for d in diff.dots() {
                rebuilt.insert(d);
            }
            prop_assert_eq!(rebuilt, diff);
            prop_assert_eq!(a.dots().count() as u64, a.dot_count());
        }

        #[test]
        fn context_union_contains_both(a in context(), b in context()) {
            let mut m = a.clone();
            m.merge_ref(&b);
            prop_assert!(m.includes(&a) && m.includes(&b));
            prop_assert_eq!(m.dot_count() as usize,
                a.dots_since(&VectorClock::new()).chain(b.dots_since(&VectorClock::new()))
                    .collect::<std::collections::BTreeSet<_>>().len());
        }

        #[test]
        fn json_round_trips(c in clock(), ctx in context()) {
            let back: VectorClock = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            prop_assert_eq!(back, c);
            let back: CausalContext = serde_json::from_str(&serde_json::to_string(&ctx).unwrap()).unwrap();
            prop_assert_eq!(back, ctx);
        }
    }

    #[test]
    fn malformed_ranges_are_rejected() {
        let a = rid(1);
        for bad in [
            format!(r#"{{"{a}":[[0,3]]}}"#),
            format!(r#"{{"{a}":[[4,3]]}}"#),
            format!(r#"{{"{a}":[[1,3],[4,5]]}}"#),
            format!(r#"{{"{a}":[[5,6],[1,2]]}}"#),
        ] {
            assert!(
                serde_json::from_str::<CausalContext>(&bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn zero_entries_vanish_so_equal_clocks_are_equal() {
        let a = rid(1);
        let json = format!(r#"{{"{a}":0}}"#);
        let c: VectorClock = serde_json::from_str(&json).unwrap();
        assert_eq!(c, VectorClock::new());
    }
}
