//! Hybrid logical clock: timestamps that follow wall time yet never contradict causality.
//!
//! A [`Timestamp`] is `(wall_ms, logical, replica)`, totally ordered in that order. An
//! [`Hlc`] issues a strictly larger timestamp for every local event ([`Hlc::tick`]), and
//! after it has seen a remote timestamp ([`Hlc::observe`]) every timestamp it issues is
//! larger than that one too, even when the local wall clock is behind the sender's. So a
//! write that observed another write is ordered after it, whatever the clock skew.
//!
//! Remote timestamps are trusted only so far: one whose wall time is more than the
//! maximum offset ([`DEFAULT_MAX_OFFSET_MS`] unless set with [`Hlc::with_max_offset`])
//! ahead of local wall time is rejected with [`Error::ClockDrift`] and never adopted, so
//! a peer with a broken clock cannot drag every replica into the future.
//!
//! The clock reads wall time from a [`TimeSource`]: [`SystemClock`] in production,
//! [`ManualClock`] in tests and simulations.
//!
//! ```
//! use concord::hlc::{Hlc, ManualClock, Timestamp};
//! use concord::{Error, ReplicaId};
//!
//! // Replica A's wall clock is 300 ms behind replica B's.
//! let (a_time, b_time) = (ManualClock::new(1_700_000_000_000), ManualClock::new(1_700_000_000_300));
//! let mut a = Hlc::new(ReplicaId::from_u128(1), a_time.clone());
//! let mut b = Hlc::new(ReplicaId::from_u128(2), b_time);
//!
//! // B writes; A receives B's write, then writes itself.
//! let b_write = b.tick()?;
//! a.observe(&b_write)?;
//! let a_write = a.tick()?;
//!
//! // By A's wall clock its write happened earlier, yet it is ordered after B's.
//! assert!(a_time.now() < b_write.wall_ms());
//! assert!(a_write > b_write);
//! assert_eq!((a_write.wall_ms(), a_write.logical()), (1_700_000_000_300, 1));
//!
//! // A timestamp from a clock ten seconds ahead is refused, and A is unchanged.
//! let before = a.last();
//! let bogus = Timestamp::new(1_700_000_010_000, 0, ReplicaId::from_u128(3));
//! assert!(matches!(a.observe(&bogus), Err(Error::ClockDrift { .. })));
//! assert_eq!(a.last(), before);
//! # Ok::<(), concord::Error>(())
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::ReplicaId;

/// The maximum offset a new [`Hlc`] accepts: 500 ms.
///
/// Remote timestamps further ahead of local wall time are rejected. 500 ms is what
/// CockroachDB uses by default; it comfortably covers NTP-synchronised servers across
/// regions while bounding how far one bad clock can push the others.
pub const DEFAULT_MAX_OFFSET_MS: u64 = 500;

/// A hybrid-logical-clock timestamp, totally ordered by `(wall_ms, logical, replica)`.
///
/// Two replicas never issue equal timestamps, since the replica id breaks ties. It
/// serializes compactly as `{"ms":…,"l":…,"r":"<uuid>"}` and displays as
/// `1700000000000.3@6f1c2a3e` (wall ms, logical counter, first 8 hex digits of the
/// replica id).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Timestamp {
    // Field order is the sort order: `Ord` is derived.
    #[serde(rename = "ms")]
    wall_ms: u64,
    #[serde(rename = "l")]
    logical: u32,
    #[serde(rename = "r")]
    replica: ReplicaId,
}

impl Timestamp {
    /// A timestamp from its parts.
    pub const fn new(wall_ms: u64, logical: u32, replica: ReplicaId) -> Self {
        Timestamp {
            wall_ms,
            logical,
            replica,
        }
    }

    /// The wall-clock part, in milliseconds since the Unix epoch.
    pub const fn wall_ms(&self) -> u64 {
        self.wall_ms
    }

    /// The logical counter, which orders events within one wall-clock millisecond.
    pub const fn logical(&self) -> u32 {
        self.logical
    }

    /// The replica that issued the timestamp.
    pub const fn replica(&self) -> ReplicaId {
        self.replica
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}@{}",
            self.wall_ms,
            self.logical,
            self.replica.short()
        )
    }
}

/// A source of time for an [`Hlc`] and the sync engine: wall time for timestamps, and
/// a monotonic time for durations that must not jump (the master lease and a promoted
/// master's fencing wait).
pub trait TimeSource: Send {
    /// The current time in milliseconds since the Unix epoch. It may jump backwards; the
    /// clock stays monotonic regardless.
    fn now_ms(&self) -> u64;

    /// Milliseconds on a clock that never goes backwards and runs at the rate of real
    /// time, whatever is done to the wall clock (its origin is arbitrary; only
    /// differences between two readings of one source mean anything). The master lease
    /// and the fencing wait are measured on it, so that a wall clock stepped back
    /// cannot extend a lease, nor one stepped forward end a wait early.
    ///
    /// The default is [`TimeSource::now_ms`]: right for a source whose wall time never
    /// steps (a [`ManualClock`] in tests), wrong for a real wall clock; implement it
    /// for any source a master–follower deployment runs on.
    fn monotonic_ms(&self) -> u64 {
        self.now_ms()
    }
}

/// The system's clocks: wall time via `chrono`, monotonic time via
/// [`std::time::Instant`].
///
/// Its monotonic time is the wall time at the process's first reading plus the time
/// elapsed since then by [`Instant`](std::time::Instant), so within a process it never
/// steps, and across restarts it starts near the wall time of the restart (above what
/// an earlier run read, unless the wall clock was stepped back between the runs).
///
/// ```
/// use concord::hlc::{SystemClock, TimeSource};
///
/// let (a, b) = (SystemClock.monotonic_ms(), SystemClock.monotonic_ms());
/// assert!(b >= a);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl TimeSource for SystemClock {
    fn now_ms(&self) -> u64 {
        // A system clock set before 1970 reads as the epoch.
        u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
    }

    fn monotonic_ms(&self) -> u64 {
        static ORIGIN: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();
        let (start, wall) = ORIGIN.get_or_init(|| (std::time::Instant::now(), self.now_ms()));
        let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        wall.saturating_add(elapsed)
    }
}

/// A clock that moves only when told to, for tests and simulations.
///
/// Clones share one time, so a test can keep a handle and move time while an [`Hlc`]
/// owns another:
///
/// ```
/// use concord::hlc::{Hlc, ManualClock};
/// use concord::ReplicaId;
///
/// let time = ManualClock::new(1_000);
/// let mut hlc = Hlc::new(ReplicaId::from_u128(1), time.clone());
/// assert_eq!(hlc.tick()?.wall_ms(), 1_000);
/// time.advance(5);
/// assert_eq!(hlc.tick()?.wall_ms(), 1_005);
/// # Ok::<(), concord::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start_ms)))
    }

    /// Sets the time, forwards or backwards.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::Relaxed);
    }

    /// Moves the time forwards by `ms` (saturating at `u64::MAX`).
    pub fn advance(&self, ms: u64) {
        // The closure always returns `Some`, so this cannot fail.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(ms))
            });
    }

    /// The current time.
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl TimeSource for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now()
    }
}

/// A hybrid logical clock owned by one replica.
///
/// It remembers the greatest timestamp it has issued or observed ([`Hlc::last`]) and
/// issues timestamps above it. Its wall component never runs ahead of the greatest
/// wall time seen, local or remote, so timestamps stay close to real time.
#[derive(Debug)]
pub struct Hlc<S: TimeSource = SystemClock> {
    replica: ReplicaId,
    source: S,
    last: Timestamp,
    max_offset_ms: u64,
    /// Counters up to this one may have been issued before a restart (see
    /// [`crate::sync::LeaseStore`]): the next dot is above it.
    counter_floor: u64,
}

impl<S: TimeSource> Hlc<S> {
    /// A clock for `replica` reading wall time from `source`, with the
    /// [default maximum offset](DEFAULT_MAX_OFFSET_MS).
    pub fn new(replica: ReplicaId, source: S) -> Self {
        Hlc {
            replica,
            source,
            last: Timestamp::new(0, 0, replica),
            max_offset_ms: DEFAULT_MAX_OFFSET_MS,
            counter_floor: 0,
        }
    }

    /// The counter the next write's dot must exceed, whatever the state holds (raised
    /// by the sync engine's counter lease after a restart).
    pub(crate) fn counter_floor(&self) -> u64 {
        self.counter_floor
    }

    pub(crate) fn set_counter_floor(&mut self, floor: u64) {
        self.counter_floor = floor;
    }

    /// Stamps writes with `replica` from now on (the engine switches from a random
    /// writer id to the node's own once a lease protects it).
    pub(crate) fn set_replica(&mut self, replica: ReplicaId) {
        self.replica = replica;
    }

    /// Sets how far ahead of local wall time, in milliseconds, a remote timestamp may be.
    #[must_use = "it returns the changed clock"]
    pub fn with_max_offset(mut self, max_offset_ms: u64) -> Self {
        self.max_offset_ms = max_offset_ms;
        self
    }

    /// The replica this clock issues timestamps for.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// The maximum offset, in milliseconds.
    pub fn max_offset_ms(&self) -> u64 {
        self.max_offset_ms
    }

    /// The greatest timestamp issued or observed so far (`0.0@<own replica>` at first).
    /// Every timestamp issued from now on is greater.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// Reads the wall clock of the time source (milliseconds since the Unix epoch).
    pub fn now_ms(&self) -> u64 {
        self.source.now_ms()
    }

    /// Reads the monotonic clock of the time source (see
    /// [`TimeSource::monotonic_ms`]).
    ///
    /// ```
    /// use concord::hlc::{Hlc, ManualClock};
    /// use concord::ReplicaId;
    ///
    /// let time = ManualClock::new(1_000);
    /// let hlc = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// time.advance(5);
    /// assert_eq!(hlc.monotonic_ms(), 1_005); // a manual clock keeps one time
    /// ```
    pub fn monotonic_ms(&self) -> u64 {
        self.source.monotonic_ms()
    }

    /// Raises [`Hlc::last`] to `ts` without the offset check: used when restoring a
    /// snapshot, whose timestamps this replica issued or accepted before.
    pub(crate) fn restore_last(&mut self, ts: Timestamp) {
        self.last = self.last.max(ts);
    }

    /// A timestamp for a local event, greater than every timestamp issued or observed
    /// before, even if the wall clock went backwards.
    ///
    /// # Errors
    ///
    /// [`Error::ClockOverflow`] if the logical counter is exhausted within the current
    /// millisecond; the clock is unchanged and works again once wall time passes
    /// [`last().wall_ms()`](Timestamp::wall_ms).
    ///
    /// ```
    /// use concord::hlc::{Hlc, ManualClock};
    /// use concord::ReplicaId;
    ///
    /// let time = ManualClock::new(1_000);
    /// let mut hlc = Hlc::new(ReplicaId::from_u128(1), time.clone());
    /// let first = hlc.tick()?;
    /// time.set(400); // the wall clock jumps back
    /// let second = hlc.tick()?;
    /// assert!(second > first);
    /// assert_eq!((second.wall_ms(), second.logical()), (1_000, 1));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn tick(&mut self) -> Result<Timestamp> {
        let now = self.source.now_ms();
        let next = self.next_after(self.last, now)?;
        self.last = next;
        Ok(next)
    }

    /// Checks that `remote` is within the maximum offset of local wall time, without
    /// changing the clock. Use it to validate a message before mutating anything.
    ///
    /// # Errors
    ///
    /// [`Error::ClockDrift`] if `remote` is too far ahead.
    pub fn validate(&mut self, remote: &Timestamp) -> Result<()> {
        let now = self.source.now_ms();
        self.check(remote, now)
    }

    /// Takes in a timestamp received from another replica: every timestamp issued
    /// afterwards is greater than `remote`.
    ///
    /// # Errors
    ///
    /// [`Error::ClockDrift`] if `remote` is too far ahead; the clock is unchanged.
    pub fn observe(&mut self, remote: &Timestamp) -> Result<()> {
        self.validate(remote)?;
        self.last = self.last.max(*remote);
        Ok(())
    }

    /// Observes `remote` and issues a timestamp for the receive event: the classic HLC
    /// receive rule, greater than both `remote` and [`Hlc::last`].
    ///
    /// # Errors
    ///
    /// [`Error::ClockDrift`] if `remote` is too far ahead, [`Error::ClockOverflow`] if
    /// the logical counter is exhausted. Either way the clock is unchanged.
    pub fn update(&mut self, remote: &Timestamp) -> Result<Timestamp> {
        let now = self.source.now_ms();
        self.check(remote, now)?;
        let next = self.next_after(self.last.max(*remote), now)?;
        self.last = next;
        Ok(next)
    }

    fn check(&self, remote: &Timestamp, now: u64) -> Result<()> {
        if remote.wall_ms > now.saturating_add(self.max_offset_ms) {
            return Err(Error::ClockDrift {
                ahead_ms: remote.wall_ms - now,
                max_offset_ms: self.max_offset_ms,
            });
        }
        Ok(())
    }

    /// The smallest timestamp of this replica above `after`, given wall time `now`.
    fn next_after(&self, after: Timestamp, now: u64) -> Result<Timestamp> {
        if now > after.wall_ms {
            return Ok(Timestamp::new(now, 0, self.replica));
        }
        let logical = after.logical.checked_add(1).ok_or(Error::ClockOverflow)?;
        Ok(Timestamp::new(after.wall_ms, logical, self.replica))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const START: u64 = 1_700_000_000_000;

    fn replica(n: u128) -> ReplicaId {
        ReplicaId::from_u128(n)
    }

    fn manual(n: u128, start_ms: u64) -> (Hlc<ManualClock>, ManualClock) {
        let time = ManualClock::new(start_ms);
        (Hlc::new(replica(n), time.clone()), time)
    }

    /// A clock that has ticked once at each wall time of `history`.
    fn after_history(history: &[u64]) -> (Hlc<ManualClock>, ManualClock) {
        let (mut hlc, time) = manual(1, 0);
        for &ms in history {
            time.set(ms);
            hlc.tick().unwrap();
        }
        (hlc, time)
    }

    fn any_timestamp() -> impl Strategy<Value = Timestamp> {
        (any::<u64>(), any::<u32>(), any::<u128>())
            .prop_map(|(ms, l, r)| Timestamp::new(ms, l, replica(r)))
    }

    #[test]
    fn orders_by_wall_then_logical_then_replica() {
        let ts = |ms, l, r| Timestamp::new(ms, l, replica(r));
        assert!(ts(1, 9, 9) < ts(2, 0, 0));
        assert!(ts(1, 1, 9) < ts(1, 2, 0));
        assert!(ts(1, 1, 1) < ts(1, 1, 2));
    }

    #[test]
    fn displays_wall_logical_and_replica_prefix() {
        let ts = Timestamp::new(START, 3, replica(0xabcd_ef12 << 96 | 7));
        assert_eq!(ts.to_string(), "1700000000000.3@abcdef12");
    }

    #[test]
    fn json_is_compact_and_stable() {
        let ts = Timestamp::new(START, 3, replica(1));
        let json = serde_json::to_string(&ts).unwrap();
        assert_eq!(
            json,
            r#"{"ms":1700000000000,"l":3,"r":"00000000-0000-0000-0000-000000000001"}"#
        );
    }

    #[test]
    fn system_clock_reads_current_time() {
        // Any time after this test was written.
        assert!(SystemClock.now_ms() > START);
    }

    #[test]
    fn manual_clock_clones_share_time() {
        let time = ManualClock::new(10);
        let other = time.clone();
        other.advance(5);
        assert_eq!(time.now(), 15);
        time.set(3);
        assert_eq!(other.now(), 3);
        time.advance(u64::MAX);
        assert_eq!(other.now(), u64::MAX);
    }

    #[test]
    fn logical_overflow_is_an_error_and_changes_nothing() {
        let (mut hlc, time) = manual(1, START);
        hlc.observe(&Timestamp::new(START, u32::MAX - 1, replica(2)))
            .unwrap();
        assert_eq!(hlc.tick().unwrap().logical(), u32::MAX);

        let before = hlc.last();
        assert_eq!(hlc.tick(), Err(Error::ClockOverflow));
        assert_eq!(hlc.last(), before);
        let remote = Timestamp::new(START, 0, replica(3));
        assert_eq!(hlc.update(&remote), Err(Error::ClockOverflow));
        assert_eq!(hlc.last(), before);

        // Once wall time moves on, the counter starts again.
        time.advance(1);
        assert_eq!(
            hlc.tick().unwrap(),
            Timestamp::new(START + 1, 0, replica(1))
        );
    }

    #[test]
    fn update_follows_the_hlc_receive_rule() {
        let (mut hlc, time) = manual(1, START);
        hlc.tick().unwrap();
        // Remote ahead of us: adopt its wall time and count past its logical part.
        let remote = Timestamp::new(START + 100, 7, replica(2));
        assert_eq!(
            hlc.update(&remote).unwrap(),
            Timestamp::new(START + 100, 8, replica(1))
        );
        // Local wall time overtakes both: the counter resets.
        time.set(START + 200);
        let stale = Timestamp::new(START + 150, 3, replica(2));
        assert_eq!(
            hlc.update(&stale).unwrap(),
            Timestamp::new(START + 200, 0, replica(1))
        );
    }

    proptest! {
        #[test]
        fn ticks_strictly_increase_whatever_the_wall_clock_does(
            moves in prop::collection::vec(0u64..1_000, 1..200),
        ) {
            let (mut hlc, time) = manual(1, 0);
            let mut prev = hlc.last();
            let mut max_seen = 0;
            for ms in moves {
                time.set(ms);
                max_seen = max_seen.max(ms);
                let ts = hlc.tick().unwrap();
                prop_assert!(ts > prev);
                // The wall part tracks the greatest wall time seen, never beyond it.
                prop_assert_eq!(ts.wall_ms(), max_seen);
                prop_assert_eq!(hlc.last(), ts);
                prev = ts;
            }
        }

        #[test]
        fn after_observing_a_timestamp_the_next_tick_is_greater(
            history in prop::collection::vec(0u64..10_000, 0..20),
            now in 0u64..10_000,
            remote_wall in any::<u64>(),
            remote_logical in 0..u32::MAX,
            remote_replica in any::<u128>(),
            later in 0u64..20_000,
        ) {
            let (mut hlc, time) = after_history(&history);
            time.set(now);
            let remote_wall = remote_wall % (now + DEFAULT_MAX_OFFSET_MS + 1);
            let remote = Timestamp::new(remote_wall, remote_logical, replica(remote_replica));
            hlc.observe(&remote).unwrap();
            time.set(later); // forwards or backwards
            prop_assert!(hlc.tick().unwrap() > remote);
        }

        #[test]
        fn a_timestamp_past_the_max_offset_is_rejected_and_changes_nothing(
            history in prop::collection::vec(0u64..10_000, 0..20),
            now in 0u64..10_000,
            max_offset in 0u64..1_000,
            excess in 1u64..1_000_000_000,
            remote_logical in any::<u32>(),
        ) {
            let (hlc, time) = after_history(&history);
            let mut hlc = hlc.with_max_offset(max_offset);
            let (mut twin, twin_time) = after_history(&history);
            time.set(now);
            twin_time.set(now);
            let before = hlc.last();
            let remote = Timestamp::new(now + max_offset + excess, remote_logical, replica(2));
            let drift = Error::ClockDrift { ahead_ms: max_offset + excess, max_offset_ms: max_offset };

            prop_assert_eq!(hlc.validate(&remote), Err(drift.clone()));
            prop_assert_eq!(hlc.observe(&remote), Err(drift.clone()));
            prop_assert_eq!(hlc.update(&remote), Err(drift));
            prop_assert_eq!(hlc.last(), before);
            prop_assert_eq!(hlc.tick().unwrap(), twin.tick().unwrap());
        }

        #[test]
        fn replicas_writing_in_the_same_millisecond_agree_on_the_order(
            a in any::<u128>(),
            b in any::<u128>(),
            now in 0u64..u64::MAX / 2,
        ) {
            prop_assume!(a != b);
            let (mut hlc_a, _) = manual(a, now);
            let (mut hlc_b, _) = manual(b, now);
            let (ts_a, ts_b) = (hlc_a.tick().unwrap(), hlc_b.tick().unwrap());
            prop_assert_eq!((ts_a.wall_ms(), ts_a.logical()), (ts_b.wall_ms(), ts_b.logical()));
            prop_assert_eq!(ts_a.cmp(&ts_b), a.cmp(&b));

            // Each side receives the other's timestamp over the wire: both still agree.
            let on_b: Timestamp = serde_json::from_str(&serde_json::to_string(&ts_a).unwrap()).unwrap();
            let on_a: Timestamp = serde_json::from_str(&serde_json::to_string(&ts_b).unwrap()).unwrap();
            prop_assert_eq!(ts_a.cmp(&on_a), on_b.cmp(&ts_b));
            hlc_a.observe(&on_a).unwrap();
            hlc_b.observe(&on_b).unwrap();
            let next_a = hlc_a.tick().unwrap();
            let next_b = hlc_b.tick().unwrap();
            prop_assert!(next_a > ts_a.max(ts_b) && next_b > ts_a.max(ts_b));
        }

        #[test]
        fn json_round_trips(ts in any_timestamp()) {
            let json = serde_json::to_string(&ts).unwrap();
            prop_assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), ts);
        }
    }
}
