//! Read routing: which replica serves the next read.
//!
//! A host that sends reads to replicas (the replication guide's load balancer) keeps a
//! [`Router`] over the replicas it may read from. Each read asks [`Router::pick`] for
//! one; the caller then reports how the read went ([`Router::report_success`],
//! [`Router::report_failure`]), and feeds the router what it learns about the replicas
//! (health checks, lag, what they hold) as it learns it. The router owns no clock, no
//! socket and no random number generator: time is passed in as `now_ms`, and every
//! choice is a deterministic function of what it was told, so a test (or the
//! simulator) replays it exactly.
//!
//! # Policies compose
//!
//! A [`Policy`] is a chain of filters followed by one picker:
//!
//! 1. **health** ([`Policy::healthy`]): skip a replica whose health check fails
//!    ([`Router::report_check`]) or that the caller's failure reports have ejected
//!    (see below);
//! 2. **lag** ([`Policy::max_lag_writes`], [`Policy::max_lag_ms`]): skip a replica
//!    further behind than a bound, in writes it lacks or in the age of the oldest;
//! 3. **token** (always, when the read carries one): skip a replica that cannot serve
//!    the client's session token, by the same check as
//!    [`SyncEngine::can_serve`](crate::sync::SyncEngine::can_serve) ("its context
//!    includes the token");
//! 4. a **caller filter** of your own ([`Router::pick_with`]);
//! 5. then the **picker** chooses among the replicas left: [`Pick::RoundRobin`] (each
//!    in turn) or [`Pick::Weighted`] (smooth weighted round-robin, nginx's: over every
//!    run of picks as long as the sum of the weights, each replica is picked exactly
//!    its weight's number of times, interleaved rather than in bursts). A replica of
//!    weight 0 is drained: it is never picked.
//!
//! Lag bounds and tokens answer different questions, and the guide's sketch that
//! serves "read your writes" by comparing a replica's lag in seconds with the age of
//! the client's write is wrong: wall clocks are skewed, and a replica can be "one
//! second behind" and still lack the write. Session guarantees come from tokens (causal
//! contexts), which are exact; lag bounds give *bounded staleness* to reads that carry
//! no token.
//!
//! # When nothing is left
//!
//! [`Router::pick`] returns [`NoReplica`], never panics, and says how many replicas
//! each filter removed. The host should then read from the master (or the node the
//! client last wrote to, which serves its token by construction), or, for a token read,
//! wait for a replica to catch up. Routing anyway to a replica the policy refused
//! would break exactly the guarantee the policy was asked for.
//!
//! # Failure feedback
//!
//! After [`Policy::eject_after`] consecutive failures a replica is *ejected* for a
//! cool-down ([`Policy::cooldown_ms`]). When the cool-down has passed it comes back
//! on *probation*: it takes reads again, a success makes it [`Health::Up`], and a
//! single failure ejects it again for twice the previous cool-down (up to
//! [`Policy::max_cooldown_ms`]), so a replica that keeps failing is tried less and
//! less often. A success reported while it is ejected (a probe the host sent, or a late
//! answer) brings it back at once. Health checks are separate: a failing check keeps
//! the replica out until a passing one, whatever the reads say.
//!
//! ```
//! use concord::ops::route::{Health, Pick, Policy, Router};
//! use concord::ReplicaId;
//!
//! let (a, b, c) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2), ReplicaId::from_u128(3));
//! let mut router = Router::new(Policy::weighted().healthy().eject_after(2).cooldown_ms(1_000));
//! router.add(a, 3);
//! router.add(b, 1);
//! router.add(c, 0); // drained
//!
//! let picks: Vec<ReplicaId> = (0..4).map(|_| router.pick(0, None).unwrap()).collect();
//! assert_eq!(picks.iter().filter(|r| **r == a).count(), 3);
//! assert_eq!(picks.iter().filter(|r| **r == b).count(), 1);
//!
//! // Two failed reads at A eject it for a second.
//! router.report_failure(a, 10);
//! router.report_failure(a, 20);
//! assert_eq!(router.health(a, 20), Some(Health::Ejected { until_ms: 1_020 }));
//! assert_eq!(router.pick(30, None), Ok(b));
//! assert_eq!(router.pick(40, None), Ok(b));
//! // After the cool-down A is back, on probation.
//! assert_eq!(router.health(a, 1_020), Some(Health::Probation));
//! assert!(matches!(Policy::round_robin().pick_kind(), Pick::RoundRobin));
//! ```

use crate::clock::CausalContext;
use crate::id::ReplicaId;
use crate::sync::{Metrics, PeerLag};

/// How a [`Router`] chooses among the replicas its filters left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pick {
    /// Each replica in turn, in the order they were added (weights only drain: a
    /// replica of weight 0 is skipped).
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin: each replica is picked in proportion to its
    /// weight, exactly over every run of picks as long as the sum of the weights (as
    /// long as the same replicas are eligible), and interleaved.
    Weighted,
}

/// The filters and the picker of a [`Router`] (see the [module docs](self)).
///
/// Built with [`Policy::round_robin`] or [`Policy::weighted`] and the filter methods;
/// a policy with no filter routes to every replica of non-zero weight.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "a builder method returns the changed policy"]
pub struct Policy {
    pick: Pick,
    healthy: bool,
    max_lag_writes: Option<u64>,
    max_lag_ms: Option<u64>,
    eject_after: u32,
    cooldown_ms: u64,
    max_cooldown_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            pick: Pick::RoundRobin,
            healthy: false,
            max_lag_writes: None,
            max_lag_ms: None,
            eject_after: 3,
            cooldown_ms: 5_000,
            max_cooldown_ms: 60_000,
        }
    }
}

impl Policy {
    /// Round-robin, no filter; ejection after 3 consecutive failures, for 5 s at first
    /// and at most 60 s (ejection matters only with [`Policy::healthy`]).
    pub fn round_robin() -> Policy {
        Policy::default()
    }

    /// Smooth weighted round-robin, no filter (the other settings as
    /// [`Policy::round_robin`]).
    pub fn weighted() -> Policy {
        Policy {
            pick: Pick::Weighted,
            ..Policy::default()
        }
    }

    /// Skips replicas whose health check fails or that failure reports ejected.
    pub fn healthy(mut self) -> Policy {
        self.healthy = true;
        self
    }

    /// Skips replicas that lack more than `writes` writes (see [`PeerLag`]). A replica
    /// whose lag was never reported is skipped too: nobody knows it is within the
    /// bound.
    pub fn max_lag_writes(mut self, writes: u64) -> Policy {
        self.max_lag_writes = Some(writes);
        self
    }

    /// Skips replicas whose oldest missing write is older than `ms` milliseconds (and
    /// replicas whose lag was never reported).
    pub fn max_lag_ms(mut self, ms: u64) -> Policy {
        self.max_lag_ms = Some(ms);
        self
    }

    /// Ejects a replica after `failures` consecutive failure reports (0 counts as 1).
    pub fn eject_after(mut self, failures: u32) -> Policy {
        self.eject_after = failures.max(1);
        self
    }

    /// How long the first ejection lasts, in milliseconds; each ejection straight
    /// after a probation doubles it.
    pub fn cooldown_ms(mut self, ms: u64) -> Policy {
        self.cooldown_ms = ms;
        self
    }

    /// The longest an ejection lasts, in milliseconds.
    pub fn max_cooldown_ms(mut self, ms: u64) -> Policy {
        self.max_cooldown_ms = ms;
        self
    }

    /// The picker.
    pub fn pick_kind(&self) -> Pick {
        self.pick
    }
}

/// A replica's health as the router sees it at some time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Taking reads.
    Up,
    /// Its health check fails ([`Router::report_check`]): out until one passes.
    Failing,
    /// Ejected by failure reports until `until_ms`.
    Ejected {
        /// When it comes back on probation.
        until_ms: u64,
    },
    /// Back after an ejection: taking reads, and one failure ejects it again (for
    /// longer).
    Probation,
}

/// What a router knows about one replica (given to [`Router::pick_with`]'s filter
/// and returned by [`Router::replica`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// The replica's node id.
    pub id: ReplicaId,
    /// Its weight (0: drained).
    pub weight: u32,
    /// Its lag as last reported (`None`: never).
    pub lag: Option<PeerLag>,
    /// What it is known to have seen: a token it includes is one it can serve. Empty
    /// until reported, so such a replica serves only reads without a token.
    pub context: CausalContext,
    /// Its health at the time of the call.
    pub health: Health,
}

/// No replica could take a read: how many each filter removed (each replica is
/// counted once, under the first filter that removed it, in the order of the module
/// docs). Read from the master instead, or wait and retry a token read.
///
/// This is an outcome rather than a [`crate::Error`]: nothing failed, the policy said
/// no.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, thiserror::Error)]
#[error(
    "no replica can take this read ({replicas} known: {unhealthy} unhealthy, {lagging} \
     lagging, {behind_token} behind the session token, {excluded} excluded by the caller, \
     {drained} drained); read from the master"
)]
pub struct NoReplica {
    /// How many replicas the router knows.
    pub replicas: usize,
    /// Removed by the health filter.
    pub unhealthy: usize,
    /// Removed by a lag bound.
    pub lagging: usize,
    /// Removed because they cannot serve the token.
    pub behind_token: usize,
    /// Removed by the caller's filter.
    pub excluded: usize,
    /// Of weight 0.
    pub drained: usize,
}

#[derive(Clone, Debug)]
struct Slot {
    id: ReplicaId,
    weight: u32,
    lag: Option<PeerLag>,
    context: CausalContext,
    check_failing: bool,
    /// Consecutive failure reports.
    failures: u32,
    /// Ejections since the last success (sets the next cool-down).
    ejections: u32,
    /// Ejected until then (`None`: never ejected since the last success).
    ejected_until: Option<u64>,
    /// Smooth weighted round-robin's running weight.
    current: i64,
}

impl Slot {
    fn health(&self, now_ms: u64) -> Health {
        if self.check_failing {
            Health::Failing
        } else {
            match self.ejected_until {
                Some(until_ms) if now_ms < until_ms => Health::Ejected { until_ms },
                Some(_) => Health::Probation,
                None => Health::Up,
            }
        }
    }

    fn info(&self, now_ms: u64) -> ReplicaInfo {
        ReplicaInfo {
            id: self.id,
            weight: self.weight,
            lag: self.lag,
            context: self.context.clone(),
            health: self.health(now_ms),
        }
    }
}

/// Chooses a replica for each read (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct Router {
    policy: Policy,
    slots: Vec<Slot>,
    /// Where round-robin looks first.
    cursor: usize,
}

impl Router {
    /// A router with no replicas yet.
    pub fn new(policy: Policy) -> Router {
        Router {
            policy,
            slots: Vec::new(),
            cursor: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Adds a replica of weight `weight` (healthy, lag unknown, context empty), or
    /// sets the weight of one already there.
    pub fn add(&mut self, id: ReplicaId, weight: u32) {
        match self.slot_mut(id) {
            Some(s) => s.weight = weight,
            None => self.slots.push(Slot {
                id,
                weight,
                lag: None,
                context: CausalContext::new(),
                check_failing: false,
                failures: 0,
                ejections: 0,
                ejected_until: None,
                current: 0,
            }),
        }
    }

    /// Removes a replica; returns false if it was not there.
    pub fn remove(&mut self, id: ReplicaId) -> bool {
        let before = self.slots.len();
        self.slots.retain(|s| s.id != id);
        before != self.slots.len()
    }

    /// How many replicas the router knows.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True if the router knows no replica.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// What the router knows about `id` at `now_ms`.
    pub fn replica(&self, id: ReplicaId, now_ms: u64) -> Option<ReplicaInfo> {
        self.slot(id).map(|s| s.info(now_ms))
    }

    /// The health of `id` at `now_ms`.
    pub fn health(&self, id: ReplicaId, now_ms: u64) -> Option<Health> {
        self.slot(id).map(|s| s.health(now_ms))
    }

    /// Sets the lag of `id`; false if unknown.
    pub fn set_lag(&mut self, id: ReplicaId, lag: PeerLag) -> bool {
        self.slot_mut(id).map(|s| s.lag = Some(lag)).is_some()
    }

    /// Sets what `id` is known to have seen (for a replica this host runs, its
    /// [`SyncEngine::context`](crate::sync::SyncEngine::context); for a peer, what it
    /// acknowledged); false if unknown. Route on a lower bound, never a guess: a
    /// context that claims more than the replica holds sends token reads where they
    /// cannot be served.
    pub fn set_context(&mut self, id: ReplicaId, context: CausalContext) -> bool {
        self.slot_mut(id).map(|s| s.context = context).is_some()
    }

    /// Updates lag and contexts from an engine's [`Metrics`]: each peer the router
    /// knows gets the lag the engine measures towards it and the context it
    /// acknowledged (a lower bound of what it holds, so a token is never routed to a
    /// replica that cannot serve it); the engine's own node, if the router knows it,
    /// gets no lag and its version vector. Lag is the engine's view: its own writes
    /// the peer lacks.
    pub fn observe(&mut self, metrics: &Metrics) {
        for p in &metrics.peers {
            if let Some(s) = self.slot_mut(p.peer) {
                s.lag = Some(p.lag);
                s.context = p.acked.clone();
            }
        }
        if let Some(s) = self.slot_mut(metrics.node) {
            s.lag = Some(PeerLag {
                unacked_writes: 0,
                oldest_unacked_ms: 0,
                since_heard_ms: Some(0),
            });
            let mut context = CausalContext::new();
            context.insert_clock(&metrics.clock);
            s.context = context;
        }
    }

    /// Records a health check of `id`: a failing one keeps it out (under
    /// [`Policy::healthy`]) until a passing one; false if unknown.
    pub fn report_check(&mut self, id: ReplicaId, passing: bool) -> bool {
        self.slot_mut(id)
            .map(|s| s.check_failing = !passing)
            .is_some()
    }

    /// Records a read that `id` served: clears its failures and any ejection (a
    /// success while ejected is a successful probe). False if unknown.
    pub fn report_success(&mut self, id: ReplicaId, _now_ms: u64) -> bool {
        self.slot_mut(id)
            .map(|s| {
                s.failures = 0;
                s.ejections = 0;
                s.ejected_until = None;
            })
            .is_some()
    }

    /// Records a read that failed at `id` at `now_ms` and returns its health after
    /// it (`None`: unknown replica). A failure on probation, or the
    /// [`Policy::eject_after`]-th in a row, ejects it; a failure while ejected (a late
    /// answer) changes nothing but the count.
    pub fn report_failure(&mut self, id: ReplicaId, now_ms: u64) -> Option<Health> {
        let policy = self.policy.clone();
        let s = self.slot_mut(id)?;
        s.failures = s.failures.saturating_add(1);
        // From the ejection itself, not `health`: a replica whose check fails reads
        // as `Failing` while ejected too, and late failures must not eject it again
        // (each would double its cool-down).
        let eject = match s.ejected_until {
            Some(until_ms) if now_ms < until_ms => false,
            Some(_) => true,
            None => s.failures >= policy.eject_after,
        };
        if eject {
            let doublings = s.ejections.min(32);
            let cooldown = policy
                .cooldown_ms
                .saturating_mul(1u64 << doublings)
                .min(policy.max_cooldown_ms.max(policy.cooldown_ms));
            s.ejections = s.ejections.saturating_add(1);
            s.ejected_until = Some(now_ms.saturating_add(cooldown));
        }
        Some(s.health(now_ms))
    }

    /// The replica for a read at `now_ms`, carrying session `token` if any.
    ///
    /// # Errors
    ///
    /// [`NoReplica`] if the policy's filters left none (or none of non-zero weight).
    pub fn pick(
        &mut self,
        now_ms: u64,
        token: Option<&CausalContext>,
    ) -> Result<ReplicaId, NoReplica> {
        self.pick_with(now_ms, token, |_| true)
    }

    /// [`Router::pick`] with a filter of the caller's after the policy's: `admit`
    /// sees each replica the policy left and says whether it may take this read (a
    /// region, a replica the caller just tried, ...).
    ///
    /// ```
    /// use concord::ops::route::{Policy, Router};
    /// use concord::ReplicaId;
    ///
    /// let (a, b) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let mut router = Router::new(Policy::round_robin());
    /// router.add(a, 1);
    /// router.add(b, 1);
    /// // Retry a read elsewhere than where it just failed.
    /// assert_eq!(router.pick_with(0, None, |r| r.id != a), Ok(b));
    /// assert_eq!(router.pick_with(0, None, |r| r.id != b), Ok(a));
    /// let none = router.pick_with(0, None, |_| false).unwrap_err();
    /// assert_eq!((none.replicas, none.excluded), (2, 2));
    /// ```
    ///
    /// # Errors
    ///
    /// [`NoReplica`] if nothing is left.
    pub fn pick_with(
        &mut self,
        now_ms: u64,
        token: Option<&CausalContext>,
        mut admit: impl FnMut(&ReplicaInfo) -> bool,
    ) -> Result<ReplicaId, NoReplica> {
        let mut why = NoReplica {
            replicas: self.slots.len(),
            ..NoReplica::default()
        };
        let eligible: Vec<bool> = self
            .slots
            .iter()
            .map(|s| {
                let ok = self.admits(s, now_ms, token, &mut why, &mut admit);
                if ok && s.weight == 0 {
                    why.drained += 1;
                    return false;
                }
                ok
            })
            .collect();
        let chosen = match self.policy.pick {
            Pick::RoundRobin => self.round_robin(&eligible),
            Pick::Weighted => self.smooth_weighted(&eligible),
        };
        chosen.map(|i| self.slots[i].id).ok_or(why)
    }

    /// True if `s` passes the policy's filters and the caller's; counts why not.
    fn admits(
        &self,
        s: &Slot,
        now_ms: u64,
        token: Option<&CausalContext>,
        why: &mut NoReplica,
        admit: &mut impl FnMut(&ReplicaInfo) -> bool,
    ) -> bool {
        let p = &self.policy;
        if p.healthy && !matches!(s.health(now_ms), Health::Up | Health::Probation) {
            why.unhealthy += 1;
            return false;
        }
        let within = |bound: Option<u64>, value: fn(&PeerLag) -> u64| match bound {
            None => true,
            Some(max) => s.lag.as_ref().is_some_and(|l| value(l) <= max),
        };
        if !within(p.max_lag_writes, |l| l.unacked_writes)
            || !within(p.max_lag_ms, |l| l.oldest_unacked_ms)
        {
            why.lagging += 1;
            return false;
        }
        if token.is_some_and(|t| !s.context.includes(t)) {
            why.behind_token += 1;
            return false;
        }
        if !admit(&s.info(now_ms)) {
            why.excluded += 1;
            return false;
        }
        true
    }

    fn round_robin(&mut self, eligible: &[bool]) -> Option<usize> {
        let n = eligible.len();
        let start = if n == 0 { 0 } else { self.cursor % n };
        let i = (0..n).map(|k| (start + k) % n).find(|&i| eligible[i])?;
        self.cursor = i + 1;
        Some(i)
    }

    /// nginx's smooth weighted round-robin: every eligible replica's running weight
    /// grows by its weight, the largest is picked (the first on a tie) and loses the
    /// sum. Over a run of picks as long as the sum, each is picked its weight's
    /// number of times. A replica that is not eligible starts again from 0.
    fn smooth_weighted(&mut self, eligible: &[bool]) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if !eligible[i] {
                s.current = 0;
                continue;
            }
            let w = i64::from(s.weight);
            s.current = s.current.saturating_add(w);
            total = total.saturating_add(w);
            if best.is_none_or(|(_, c)| s.current > c) {
                best = Some((i, s.current));
            }
        }
        let (i, _) = best?;
        let s = &mut self.slots[i];
        s.current = s.current.saturating_sub(total);
        Some(i)
    }

    fn slot(&self, id: ReplicaId) -> Option<&Slot> {
        self.slots.iter().find(|s| s.id == id)
    }

    fn slot_mut(&mut self, id: ReplicaId) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.id == id)
    }
}
