//! A failover coordinator for master–follower deployments, sans-IO.
//!
//! The [`Coordinator`] never touches the network or a clock. The host feeds it what it
//! learns: health-check results ([`Coordinator::health`]) and replica positions
//! ([`Coordinator::observe`]: a replica's causal context, epoch and role, read from its
//! engine), plus the time for the switchover timeout ([`Coordinator::tick`]). It answers
//! with [`Action`]s, drained with [`Coordinator::poll_action`]: commands for the host to
//! run on a replica's engine, and [`Report`]s of each step for the operator.
//!
//! | action | the host calls, on that replica's engine |
//! |---|---|
//! | [`Action::StopWrites`] | [`SyncEngine::demote`](crate::sync::SyncEngine::demote) |
//! | [`Action::Promote`] | [`SyncEngine::promote_at`](crate::sync::SyncEngine::promote_at) |
//! | [`Action::Fence`] | [`SyncEngine::fence`](crate::sync::SyncEngine::fence) |
//!
//! A command that cannot be delivered (the replica is down) may be dropped: safety
//! never rests on it. The engines enforce it (configure them with
//! [`Config::master_follower`](crate::sync::Config::master_follower)): a master takes
//! writes only while a majority answers it within its lease; a replica supports one
//! master per epoch; and a promoted master waits, once a majority is in its epoch,
//! longer than a lease before its first write, so an old master cut off from the
//! coordinator, but not from the followers, has stopped before the new one starts.
//! That wait is the "wait longer than the lease before promoting" of failover
//! procedures, measured where it can be measured soundly (a coordinator's "the master
//! stopped answering me" says nothing about whether it still reaches the followers).
//!
//! # Choosing the candidate
//!
//! Among the healthy replicas other than the failed master that have reported a
//! position: the one whose context includes every other candidate's (it dominates),
//! else the one missing the fewest events that some candidate holds, ties broken by
//! the smallest replica id ([`choose_candidate`]). Every write acknowledged at
//! [`AckLevel::Quorum`](crate::sync::AckLevel::Quorum) is held by a majority, so with
//! a majority of the replicas reporting, some candidate holds it; whatever the chosen
//! one lacks reaches it from the others by replication (nothing is discarded).
//!
//! # Planned switchover
//!
//! [`Coordinator::switchover`] walks [`Step::StopWrites`] (the old master stops taking
//! writes), [`Step::WaitCaughtUp`] (until the target's context includes the old
//! master's final one: lag zero), [`Step::Promote`] (the target, in a new epoch),
//! [`Step::Demote`] (the old master takes the new epoch as a follower) and
//! [`Step::Done`], reporting each. Every step has the timeout (so a switchover ends
//! within four). If one of the first two outlasts it, the switchover is aborted and the old master resumes, in a new epoch
//! of its own; once the target has been told to promote there is no way back (it may
//! be taking writes): if it does not report itself master of the new epoch in time,
//! the switchover is abandoned ([`Report::SwitchoverAbandoned`]) and the coordinator
//! fails over automatically, in an epoch above every one it has seen; if the old
//! master does not report the new epoch in time, the switchover is abandoned too and
//! the target stays master (the old one is fenced by the first message of the new
//! epoch that reaches it). A master that fails its health checks, or a replica that
//! reports itself master of a newer epoch, ends a switchover in any step.
//!
//! # Checking the master
//!
//! Every promotion the coordinator orders is checked: the replica must report itself
//! master of that epoch, or of a newer one ([`Coordinator::observe`]), within the
//! switchover timeout. Until then a report that it is a follower is no verdict (it
//! may have heard of the epoch from another replica before it could act on it). One
//! that does not (it is down, or refused: a rogue promotion took the epoch first) is
//! reported ([`Report::PromotionFailed`]) at the timeout and the coordinator fails
//! over again, with a fresh epoch (a replica that reports itself master of a newer
//! epoch meanwhile is taken as the master at once). Once confirmed, a master that
//! passes its health checks but reports itself a follower counts as failing them.
//!
//! ```
//! use concord::ops::failover::{Action, Coordinator, CoordinatorConfig, Position, Report};
//! use concord::sync::Role;
//! use concord::{CausalContext, Dot, ReplicaId};
//!
//! let [m, f1, f2] = [1, 2, 3].map(ReplicaId::from_u128);
//! let config = CoordinatorConfig { failed_checks: 2, ..CoordinatorConfig::default() };
//! let mut coordinator = Coordinator::new([m, f1, f2], m, 0, config);
//! // F2 holds one more of M's writes than F1.
//! let mut ctx = CausalContext::new();
//! ctx.insert(Dot::new(m, 1));
//! coordinator.observe(f1, Position { context: ctx.clone(), epoch: 0, role: Role::Follower });
//! ctx.insert(Dot::new(m, 2));
//! coordinator.observe(f2, Position { context: ctx, epoch: 0, role: Role::Follower });
//! for node in [f1, f2] {
//!     coordinator.health(node, true);
//! }
//! coordinator.health(m, false);
//! assert_eq!(coordinator.poll_action(), None); // one failed check is not enough
//! coordinator.health(m, false);
//! let actions: Vec<Action> = std::iter::from_fn(|| coordinator.poll_action()).collect();
//! assert!(actions.contains(&Action::Fence { node: m, epoch: 1 })); // if M can be reached
//! assert!(actions.contains(&Action::Promote { node: f2, epoch: 1 }));
//! assert!(actions.contains(&Action::Report(Report::Promoted { node: f2, epoch: 1, missed: 0 })));
//! assert_eq!((coordinator.master(), coordinator.epoch()), (Some(f2), 1));
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::clock::CausalContext;
use crate::error::{Error, Result};
use crate::id::ReplicaId;
use crate::resolver::Resolver;
use crate::sync::{Role, MAX_EPOCH};

/// How the coordinator behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorConfig {
    /// How many consecutive failed health checks of the master start an automatic
    /// failover (at least 1; default 3).
    pub failed_checks: u32,
    /// How long, in milliseconds of the times given to [`Coordinator::switchover`]
    /// and [`Coordinator::tick`], each step of a planned switchover may take, and a
    /// promoted replica may take to report itself master of its epoch (default 30 s).
    pub switchover_timeout_ms: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            failed_checks: 3,
            switchover_timeout_ms: 30_000,
        }
    }
}

/// Where a replica stands, as its engine says: [`SyncEngine::context`],
/// [`SyncEngine::epoch`] and [`SyncEngine::role`].
///
/// [`SyncEngine::context`]: crate::sync::SyncEngine::context
/// [`SyncEngine::epoch`]: crate::sync::SyncEngine::epoch
/// [`SyncEngine::role`]: crate::sync::SyncEngine::role
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Every write the replica holds.
    pub context: CausalContext,
    /// Its fencing epoch.
    pub epoch: u64,
    /// Master or follower.
    pub role: Role,
}

impl<T: crate::causal::Crdt, S: crate::hlc::TimeSource> From<&crate::sync::SyncEngine<T, S>>
    for Position
{
    /// The engine's position, to hand to [`Coordinator::observe`].
    ///
    /// ```
    /// use concord::ops::failover::Position;
    /// use concord::sync::{Config, Role, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// let id = ReplicaId::from_u128(1);
    /// let e = SyncEngine::new(id, OrMap::<String, LwwRegister<u8>>::new(), ManualClock::new(0), Config::default());
    /// let position = Position::from(&e);
    /// assert_eq!((position.epoch, position.role), (0, Role::Master));
    /// ```
    fn from(engine: &crate::sync::SyncEngine<T, S>) -> Self {
        Position {
            context: engine.context().clone(),
            epoch: engine.epoch(),
            role: engine.role(),
        }
    }
}

/// The steps of a planned switchover, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Step {
    /// The old master was told to stop taking writes; waiting for it to report a
    /// follower.
    StopWrites,
    /// The old master stopped; waiting for the target to hold everything it holds.
    WaitCaughtUp,
    /// The target was told to promote itself in a new epoch; waiting for it to
    /// report a master of that epoch.
    Promote,
    /// The old master was told to take the new epoch as a follower; waiting for it
    /// to report so.
    Demote,
    /// The target is the master, the old master a follower of its epoch.
    Done,
}

/// What the coordinator tells the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    /// The master failed this many consecutive health checks: failing over.
    FailoverStarted {
        /// The failed master.
        master: ReplicaId,
        /// Consecutive failed checks.
        failed_checks: u32,
    },
    /// No healthy replica with a known position can take over: the failover waits
    /// for the next failed check (with new positions or health) to try again. Reported
    /// once per failure episode (until the master passes a check or a failover
    /// succeeds); later attempts that find no candidate are silent.
    NoCandidate {
        /// The failed master.
        master: ReplicaId,
    },
    /// `node` was chosen and told to promote itself at `epoch`; it lacked `missed`
    /// events that another candidate held (they reach it by replication).
    Promoted {
        /// The new master.
        node: ReplicaId,
        /// Its epoch.
        epoch: u64,
        /// Events some other candidate held and it did not, when chosen.
        missed: u64,
    },
    /// A planned switchover to `target` entered `step`.
    Switchover {
        /// The replica being promoted.
        target: ReplicaId,
        /// The step entered.
        step: Step,
    },
    /// A planned switchover to `target` timed out in `step` and was aborted: the old
    /// master was told to resume, at `epoch`.
    SwitchoverAborted {
        /// The replica that was to be promoted.
        target: ReplicaId,
        /// The step that timed out.
        step: Step,
        /// The epoch the old master resumes in.
        epoch: u64,
    },
    /// A planned switchover to `target` was given up in `step` (at or after
    /// [`Step::Promote`], or when a failover or a newer master took over): in
    /// [`Step::Demote`] the target stays master; otherwise an automatic failover
    /// follows, or the newer master is taken.
    SwitchoverAbandoned {
        /// The replica that was to be promoted.
        target: ReplicaId,
        /// The step it was in.
        step: Step,
    },
    /// `node`, told to promote itself at `epoch`, did not report itself master of
    /// that epoch (or a newer one) within the timeout (down, refused, or passed over
    /// by a newer epoch whose master did not report itself): the coordinator fails
    /// over again, in a fresh epoch.
    PromotionFailed {
        /// The replica that did not become master.
        node: ReplicaId,
        /// The epoch it was told to take.
        epoch: u64,
    },
}

/// What the host should do next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Call [`SyncEngine::demote`](crate::sync::SyncEngine::demote) on `node` (it
    /// stops taking writes, and keeps its epoch).
    StopWrites {
        /// The replica.
        node: ReplicaId,
    },
    /// Call [`SyncEngine::promote_at`](crate::sync::SyncEngine::promote_at)`(epoch)`
    /// on `node`.
    Promote {
        /// The replica.
        node: ReplicaId,
        /// The new epoch.
        epoch: u64,
    },
    /// Call [`SyncEngine::fence`](crate::sync::SyncEngine::fence)`(epoch)` on `node`
    /// (best effort: a master that cannot be reached is fenced by its lease and by
    /// the first message of the new epoch that reaches it).
    Fence {
        /// The replica.
        node: ReplicaId,
        /// The epoch it must take.
        epoch: u64,
    },
    /// Tell the operator.
    Report(Report),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Switchover {
    target: ReplicaId,
    old: ReplicaId,
    step: Step,
    deadline_ms: u64,
    /// The epoch the target was told to promote at (from [`Step::Promote`] on).
    epoch: u64,
}

/// A promotion ordered and not yet confirmed by the replica's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    node: ReplicaId,
    epoch: u64,
    deadline_ms: u64,
}

/// The failover coordinator: see the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coordinator {
    config: CoordinatorConfig,
    members: BTreeSet<ReplicaId>,
    master: Option<ReplicaId>,
    epoch: u64,
    failures: u32,
    healthy: BTreeMap<ReplicaId, bool>,
    positions: BTreeMap<ReplicaId, Position>,
    switchover: Option<Switchover>,
    /// The promotion awaiting confirmation, if any.
    pending: Option<Pending>,
    /// The latest time given (to `switchover` or `tick`).
    now_ms: u64,
    /// Whether `NoCandidate` was reported in the current failure episode.
    no_candidate_reported: bool,
    actions: VecDeque<Action>,
}

impl Coordinator {
    /// A coordinator of `members` (every replica), whose master is `master`, at
    /// `epoch` (the highest epoch known; positions raise it).
    ///
    /// ```
    /// use concord::ops::failover::{Coordinator, CoordinatorConfig};
    /// use concord::ReplicaId;
    ///
    /// let ids = [1, 2, 3].map(ReplicaId::from_u128);
    /// let coordinator = Coordinator::new(ids, ids[0], 0, CoordinatorConfig::default());
    /// assert_eq!((coordinator.master(), coordinator.epoch()), (Some(ids[0]), 0));
    /// ```
    pub fn new(
        members: impl IntoIterator<Item = ReplicaId>,
        master: ReplicaId,
        epoch: u64,
        config: CoordinatorConfig,
    ) -> Self {
        let mut c = Coordinator::without_master(members, epoch, config);
        c.members.insert(master);
        c.master = Some(master);
        c
    }

    /// A coordinator of `members` that knows no master, at `epoch`: it fails over from
    /// no one, and holds for master the first replica that reports itself master of
    /// an epoch at least the newest it knows. A replica that finds itself deposed,
    /// with no master it can hear, starts over from this view rather than count its
    /// own follower role as a failed check of itself.
    ///
    /// ```
    /// use concord::ops::failover::{Coordinator, CoordinatorConfig, Position};
    /// use concord::sync::Role;
    /// use concord::{CausalContext, ReplicaId};
    ///
    /// let ids = [1, 2, 3].map(ReplicaId::from_u128);
    /// let mut coordinator = Coordinator::without_master(ids, 4, CoordinatorConfig::default());
    /// coordinator.health(ids[0], false);
    /// assert_eq!(coordinator.poll_action(), None);
    /// let position = Position { context: CausalContext::new(), epoch: 4, role: Role::Master };
    /// coordinator.observe(ids[1], position);
    /// assert_eq!((coordinator.master(), coordinator.epoch()), (Some(ids[1]), 4));
    /// ```
    pub fn without_master(
        members: impl IntoIterator<Item = ReplicaId>,
        epoch: u64,
        config: CoordinatorConfig,
    ) -> Self {
        Coordinator {
            config,
            members: members.into_iter().collect(),
            master: None,
            epoch: epoch.min(MAX_EPOCH),
            failures: 0,
            healthy: BTreeMap::new(),
            positions: BTreeMap::new(),
            switchover: None,
            pending: None,
            now_ms: 0,
            no_candidate_reported: false,
            actions: VecDeque::new(),
        }
    }

    /// The promotion ordered and not yet confirmed (the replica and its epoch), if
    /// any.
    ///
    /// ```
    /// use concord::ops::failover::{Coordinator, CoordinatorConfig};
    /// use concord::ReplicaId;
    ///
    /// let ids = [1, 2].map(ReplicaId::from_u128);
    /// let coordinator = Coordinator::new(ids, ids[0], 0, CoordinatorConfig::default());
    /// assert_eq!(coordinator.awaiting(), None);
    /// ```
    pub fn awaiting(&self) -> Option<(ReplicaId, u64)> {
        self.pending.map(|p| (p.node, p.epoch))
    }

    /// The replica the coordinator holds for master (the one it last promoted, or
    /// the one at the highest epoch that reported itself master).
    ///
    /// ```
    /// use concord::ops::failover::{Coordinator, CoordinatorConfig, Position};
    /// use concord::sync::Role;
    /// use concord::{CausalContext, ReplicaId};
    ///
    /// let ids = [1, 2, 3].map(ReplicaId::from_u128);
    /// let mut coordinator = Coordinator::new(ids, ids[0], 0, CoordinatorConfig::default());
    /// // Someone promoted replica 3 by hand, at epoch 4.
    /// let position = Position { context: CausalContext::new(), epoch: 4, role: Role::Master };
    /// coordinator.observe(ids[2], position);
    /// assert_eq!((coordinator.master(), coordinator.epoch()), (Some(ids[2]), 4));
    /// ```
    pub fn master(&self) -> Option<ReplicaId> {
        self.master
    }

    /// The highest epoch known (given, issued, or reported).
    ///
    /// ```
    /// use concord::ops::failover::{Coordinator, CoordinatorConfig};
    /// use concord::ReplicaId;
    ///
    /// let id = ReplicaId::from_u128(1);
    /// assert_eq!(Coordinator::new([id], id, 9, CoordinatorConfig::default()).epoch(), 9);
    /// ```
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The step of the planned switchover under way, if any.
    ///
    /// ```
    /// use concord::ops::failover::{Coordinator, CoordinatorConfig, Step};
    /// use concord::ReplicaId;
    ///
    /// let ids = [1, 2].map(ReplicaId::from_u128);
    /// let mut coordinator = Coordinator::new(ids, ids[0], 0, CoordinatorConfig::default());
    /// assert_eq!(coordinator.step(), None);
    /// coordinator.switchover(ids[1], 0)?;
    /// assert_eq!(coordinator.step(), Some(Step::StopWrites));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn step(&self) -> Option<Step> {
        self.switchover.as_ref().map(|s| s.step)
    }

    /// The next action for the host, if any.
    ///
    /// ```
    /// use concord::ops::failover::{Coordinator, CoordinatorConfig};
    /// use concord::ReplicaId;
    ///
    /// let id = ReplicaId::from_u128(1);
    /// let mut coordinator = Coordinator::new([id], id, 0, CoordinatorConfig::default());
    /// assert_eq!(coordinator.poll_action(), None);
    /// ```
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// A health-check result for `node`. Consecutive failed checks of the master
    /// start an automatic failover once they reach
    /// [`CoordinatorConfig::failed_checks`] (a planned switchover under way is
    /// abandoned); a successful check resets the count. A master whose promotion was
    /// confirmed and whose latest position says it is not master (it was deposed, or
    /// restarted as a follower) fails the check whatever the host says. Checks of
    /// other replicas say which can be candidates (a replica never checked is not
    /// one).
    ///
    /// ```
    /// use concord::ops::failover::{Action, Coordinator, CoordinatorConfig, Position, Report};
    /// use concord::sync::Role;
    /// use concord::{CausalContext, ReplicaId};
    ///
    /// let [m, f] = [1, 2].map(ReplicaId::from_u128);
    /// let mut coordinator = Coordinator::new([m, f], m, 0, CoordinatorConfig::default());
    /// coordinator.health(m, false);
    /// coordinator.health(m, false);
    /// coordinator.health(m, true); // answered again: the count starts over
    /// coordinator.health(m, false);
    /// assert_eq!(coordinator.poll_action(), None);
    /// coordinator.health(m, false);
    /// coordinator.health(m, false); // three in a row, but F was never checked
    /// assert_eq!(
    ///     std::iter::from_fn(|| coordinator.poll_action()).last(),
    ///     Some(Action::Report(Report::NoCandidate { master: m }))
    /// );
    /// ```
    pub fn health(&mut self, node: ReplicaId, ok: bool) {
        if !self.members.contains(&node) {
            return;
        }
        self.healthy.insert(node, ok);
        if Some(node) != self.master {
            return;
        }
        if ok && !self.not_master(node) {
            self.failures = 0;
            self.no_candidate_reported = false;
            return;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.config.failed_checks.max(1) {
            if let Some(s) = self.switchover.take() {
                self.abandon(&s);
            }
            self.pending = None;
            self.fail_over(node, true);
        }
    }

    /// True if `node`, the master, is known not to be one: its promotion (if it was
    /// ordered) is confirmed, no switchover is under way, and its latest position
    /// says follower.
    fn not_master(&self, node: ReplicaId) -> bool {
        self.switchover.is_none()
            && self.pending.is_none_or(|p| p.node != node)
            && self
                .positions
                .get(&node)
                .is_some_and(|p| p.role != Role::Master)
    }

    /// Reports a switchover given up in its step.
    fn abandon(&mut self, s: &Switchover) {
        self.actions
            .push_back(Action::Report(Report::SwitchoverAbandoned {
                target: s.target,
                step: s.step,
            }));
    }

    /// `node`'s position, read from its engine. It raises the known epoch, names a
    /// replica that reports itself master at a newer epoch than the known one (or at
    /// the known one, if no master is held) the master (ending a planned
    /// switchover under way), confirms an ordered promotion (the replica reports
    /// itself master of its epoch or a newer one), and moves a planned switchover on.
    /// A promotion is failed only by its deadline ([`Coordinator::tick`]).
    ///
    /// ```
    /// use concord::ops::failover::{Coordinator, CoordinatorConfig, Position};
    /// use concord::sync::Role;
    /// use concord::{CausalContext, ReplicaId};
    ///
    /// let ids = [1, 2].map(ReplicaId::from_u128);
    /// let mut coordinator = Coordinator::new(ids, ids[0], 0, CoordinatorConfig::default());
    /// let position = Position { context: CausalContext::new(), epoch: 3, role: Role::Follower };
    /// coordinator.observe(ids[1], position);
    /// assert_eq!(coordinator.epoch(), 3); // the next promotion is at 4
    /// ```
    pub fn observe(&mut self, node: ReplicaId, position: Position) {
        if !self.members.contains(&node) {
            return;
        }
        let epoch = position.epoch.min(MAX_EPOCH);
        let role = position.role;
        let confirms = self
            .pending
            .is_some_and(|p| p.node == node && role == Role::Master && epoch >= p.epoch);
        if role == Role::Master
            && !confirms
            && (epoch > self.epoch || (epoch == self.epoch && self.master.is_none()))
        {
            // Promoted behind the coordinator's back, in a newer epoch than any it
            // knows (or in the newest, by a coordinator that knows no master): that
            // is the master now.
            if let Some(s) = self.switchover.take() {
                self.abandon(&s);
            }
            self.pending = None;
            self.master = Some(node);
            self.failures = 0;
            self.no_candidate_reported = false;
        }
        self.epoch = self.epoch.max(epoch);
        self.positions.insert(node, position);
        if confirms {
            // Master of the epoch it was told to take, or of a newer one it reached
            // since (another replica's report raised the known epoch first).
            self.pending = None;
        }
        // Any other report of the promoted replica is no verdict before the deadline:
        // a follower of the epoch may not have acted yet (it heard of the epoch from
        // another replica first), and one passed over by a newer epoch is followed
        // when the newer epoch's master reports itself.
        self.advance();
    }

    /// An ordered promotion did not happen: reported, and a failover in a fresh epoch
    /// (without that replica as a candidate this time).
    fn promotion_failed(&mut self, p: Pending) {
        self.pending = None;
        if let Some(s) = self.switchover.take() {
            self.abandon(&s);
        }
        self.actions
            .push_back(Action::Report(Report::PromotionFailed {
                node: p.node,
                epoch: p.epoch,
            }));
        self.fail_over(p.node, false);
    }

    /// Orders `node` to promote itself at `epoch` and waits for its confirmation.
    fn promote(&mut self, node: ReplicaId, epoch: u64) {
        self.epoch = epoch;
        self.master = Some(node);
        self.pending = Some(Pending {
            node,
            epoch,
            deadline_ms: self.deadline(),
        });
        self.actions.push_back(Action::Promote { node, epoch });
    }

    fn deadline(&self) -> u64 {
        self.now_ms
            .saturating_add(self.config.switchover_timeout_ms)
    }

    /// The time (ms), for the timeouts of switchover steps and promotions.
    ///
    /// ```
    /// use concord::ops::failover::{Action, Coordinator, CoordinatorConfig, Report, Step};
    /// use concord::ReplicaId;
    ///
    /// let [m, f] = [1, 2].map(ReplicaId::from_u128);
    /// let config = CoordinatorConfig { switchover_timeout_ms: 5_000, ..CoordinatorConfig::default() };
    /// let mut coordinator = Coordinator::new([m, f], m, 0, config);
    /// coordinator.switchover(f, 1_000)?;
    /// assert_eq!(coordinator.poll_action().unwrap(), Action::StopWrites { node: m });
    /// coordinator.poll_action(); // the report
    /// coordinator.tick(6_000); // M never reported that it stopped
    /// assert_eq!(coordinator.poll_action().unwrap(), Action::Promote { node: m, epoch: 1 });
    /// assert_eq!(
    ///     coordinator.poll_action().unwrap(),
    ///     Action::Report(Report::SwitchoverAborted { target: f, step: Step::StopWrites, epoch: 1 })
    /// );
    /// assert_eq!(coordinator.master(), Some(m));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let now_ms = self.now_ms;
        // A switchover is never left in `Step::Done`; in `Step::Promote` the
        // promotion's own deadline (below) fails it and the switchover.
        if let Some(s) = self.switchover.clone().filter(|s| now_ms >= s.deadline_ms) {
            if s.step < Step::Promote {
                self.switchover = None;
                let epoch = self.next_epoch();
                self.failures = 0;
                self.promote(s.old, epoch);
                self.actions
                    .push_back(Action::Report(Report::SwitchoverAborted {
                        target: s.target,
                        step: s.step,
                        epoch,
                    }));
            } else if s.step == Step::Demote {
                self.switchover = None;
                self.abandon(&s);
            }
        }
        if let Some(p) = self.pending.filter(|p| now_ms >= p.deadline_ms) {
            self.promotion_failed(p);
        }
    }

    /// Starts a planned switchover from the current master to `target` (see the
    /// [module documentation](self#planned-switchover)); `now_ms` starts its timeout.
    ///
    /// # Errors
    ///
    /// [`Error::SwitchoverRefused`] if one is already under way, `target` is not a
    /// member or is the master already, there is no master, or a promotion awaits
    /// its confirmation ([`Coordinator::awaiting`]).
    pub fn switchover(&mut self, target: ReplicaId, now_ms: u64) -> Result<()> {
        let refuse = |reason| Err(Error::SwitchoverRefused { target, reason });
        if self.switchover.is_some() {
            return refuse("a switchover is already under way");
        }
        if !self.members.contains(&target) {
            return refuse("not a member");
        }
        let Some(old) = self.master else {
            return refuse("there is no master to switch from");
        };
        if old == target {
            return refuse("already the master");
        }
        if self.pending.is_some() {
            return refuse("a promotion is awaiting its confirmation");
        }
        self.now_ms = self.now_ms.max(now_ms);
        self.switchover = Some(Switchover {
            target,
            old,
            step: Step::StopWrites,
            deadline_ms: self.deadline(),
            epoch: 0,
        });
        self.actions.push_back(Action::StopWrites { node: old });
        self.report_step();
        self.advance();
        Ok(())
    }

    fn next_epoch(&self) -> u64 {
        self.epoch.saturating_add(1).min(MAX_EPOCH)
    }

    fn report_step(&mut self) {
        if let Some(s) = &self.switchover {
            let report = Report::Switchover {
                target: s.target,
                step: s.step,
            };
            self.actions.push_back(Action::Report(report));
        }
    }

    /// Moves a switchover on as far as the positions allow.
    fn advance(&mut self) {
        loop {
            let Some(s) = self.switchover.clone() else {
                return;
            };
            let old = self.positions.get(&s.old);
            let target = self.positions.get(&s.target);
            let next = match s.step {
                Step::StopWrites => old
                    .is_some_and(|p| p.role == Role::Follower)
                    .then_some(Step::WaitCaughtUp),
                Step::WaitCaughtUp => match (old, target) {
                    (Some(o), Some(t))
                        if o.role == Role::Follower && t.context.includes(&o.context) =>
                    {
                        Some(Step::Promote)
                    }
                    _ => None,
                },
                Step::Promote => target
                    .is_some_and(|p| p.role == Role::Master && p.epoch == s.epoch)
                    .then_some(Step::Demote),
                Step::Demote => old
                    .is_some_and(|p| p.role == Role::Follower && p.epoch >= s.epoch)
                    .then_some(Step::Done),
                Step::Done => None,
            };
            let Some(next) = next else {
                return;
            };
            let mut s = s;
            s.step = next;
            s.deadline_ms = self.deadline();
            match next {
                Step::Promote => {
                    s.epoch = self.next_epoch();
                    self.promote(s.target, s.epoch);
                }
                Step::Demote => self.actions.push_back(Action::Fence {
                    node: s.old,
                    epoch: s.epoch,
                }),
                _ => {}
            }
            self.switchover = Some(s);
            self.report_step();
            if next == Step::Done {
                self.switchover = None;
                self.failures = 0;
                return;
            }
        }
    }

    /// Fails over from `master` (failed, or a promotion that did not happen): the
    /// best healthy candidate other than it is promoted in a fresh epoch. With
    /// `started`, the start is reported (once per episode if there is no candidate).
    fn fail_over(&mut self, master: ReplicaId, started: bool) {
        self.fail_over_from(Some(master), started);
    }

    /// With no master known ([`Coordinator::without_master`]) and no promotion
    /// awaited, starts a failover now: the best healthy candidate (any member with a
    /// position, this host's replica included) is promoted in a fresh epoch, and
    /// checked as every promotion is. For a host that knows, from every other
    /// replica's own word, that none of them is a master: replicas that all hold no
    /// master and choose from the same positions choose the same one. Does nothing
    /// if a master is held or a promotion awaited.
    ///
    /// ```
    /// use concord::ops::failover::{Action, Coordinator, CoordinatorConfig, Position};
    /// use concord::sync::Role;
    /// use concord::{CausalContext, ReplicaId};
    ///
    /// let ids = [1, 2].map(ReplicaId::from_u128);
    /// let mut coordinator = Coordinator::without_master(ids, 3, CoordinatorConfig::default());
    /// for id in ids {
    ///     let position = Position { context: CausalContext::new(), epoch: 3, role: Role::Follower };
    ///     coordinator.observe(id, position);
    ///     coordinator.health(id, true);
    /// }
    /// coordinator.elect();
    /// assert_eq!(coordinator.poll_action(), Some(Action::Promote { node: ids[0], epoch: 4 }));
    /// assert_eq!(coordinator.awaiting(), Some((ids[0], 4)));
    /// ```
    pub fn elect(&mut self) {
        if self.master.is_none() && self.pending.is_none() {
            self.fail_over_from(None, false);
        }
    }

    fn fail_over_from(&mut self, master: Option<ReplicaId>, started: bool) {
        if let (true, false, Some(master)) = (started, self.no_candidate_reported, master) {
            self.actions
                .push_back(Action::Report(Report::FailoverStarted {
                    master,
                    failed_checks: self.failures,
                }));
        }
        let candidates: Vec<(ReplicaId, &CausalContext)> = self
            .positions
            .iter()
            .filter(|(id, _)| Some(**id) != master && self.healthy.get(id) == Some(&true))
            .map(|(id, p)| (*id, &p.context))
            .collect();
        let Some((node, missed)) = choose_candidate(&candidates) else {
            if let (false, Some(master)) = (self.no_candidate_reported, master) {
                self.no_candidate_reported = true;
                self.actions
                    .push_back(Action::Report(Report::NoCandidate { master }));
            }
            return;
        };
        let epoch = self.next_epoch();
        self.failures = 0;
        self.no_candidate_reported = false;
        if let Some(master) = master {
            self.actions.push_back(Action::Fence {
                node: master,
                epoch,
            });
        }
        self.promote(node, epoch);
        self.actions.push_back(Action::Report(Report::Promoted {
            node,
            epoch,
            missed,
        }));
    }
}

/// The failover candidate among `candidates` (replica and what it holds), with how
/// many events it lacks that another candidate holds: the one that lacks the fewest
/// (0 for one whose context includes every other's), ties broken by the smallest
/// replica id. `None` if there are no candidates.
///
/// ```
/// use concord::ops::failover::choose_candidate;
/// use concord::{CausalContext, Dot, ReplicaId};
///
/// let [m, a, b] = [1, 2, 3].map(ReplicaId::from_u128);
/// let (mut at_a, mut at_b) = (CausalContext::new(), CausalContext::new());
/// at_a.insert(Dot::new(m, 1));
/// at_b.insert(Dot::new(m, 1));
/// at_b.insert(Dot::new(m, 2));
/// assert_eq!(choose_candidate(&[(a, &at_a), (b, &at_b)]), Some((b, 0))); // B dominates
/// at_a.insert(Dot::new(m, 3));
/// assert_eq!(choose_candidate(&[(b, &at_b), (a, &at_a)]), Some((a, 1))); // a tie: the smaller id
/// ```
pub fn choose_candidate(candidates: &[(ReplicaId, &CausalContext)]) -> Option<(ReplicaId, u64)> {
    let mut union = CausalContext::new();
    for (_, ctx) in candidates {
        union.merge_ref(ctx);
    }
    candidates
        .iter()
        .map(|(id, ctx)| (union.minus(ctx).dot_count(), *id))
        .min()
        .map(|(missed, id)| (id, missed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Dot;

    fn ids() -> [ReplicaId; 3] {
        [1, 2, 3].map(ReplicaId::from_u128)
    }

    fn position(dots: &[(ReplicaId, u64)], epoch: u64, role: Role) -> Position {
        let mut context = CausalContext::new();
        for (r, c) in dots {
            context.insert(Dot::new(*r, *c));
        }
        Position {
            context,
            epoch,
            role,
        }
    }

    fn drain(c: &mut Coordinator) -> Vec<Action> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    #[test]
    fn a_switchover_walks_every_step_in_order_and_reports_each() {
        let [m, t, other] = ids();
        let mut c = Coordinator::new([m, t, other], m, 2, CoordinatorConfig::default());
        c.switchover(t, 0).unwrap();
        assert_eq!(
            drain(&mut c),
            [
                Action::StopWrites { node: m },
                Action::Report(Report::Switchover {
                    target: t,
                    step: Step::StopWrites
                })
            ]
        );
        // Still a master: nothing moves.
        c.observe(m, position(&[(m, 1), (m, 2)], 2, Role::Master));
        assert!(drain(&mut c).is_empty());
        c.observe(m, position(&[(m, 1), (m, 2)], 2, Role::Follower));
        assert_eq!(c.step(), Some(Step::WaitCaughtUp));
        drain(&mut c);
        // The target lags one write: no promotion yet.
        c.observe(t, position(&[(m, 1)], 2, Role::Follower));
        assert_eq!(c.step(), Some(Step::WaitCaughtUp));
        c.observe(t, position(&[(m, 1), (m, 2)], 2, Role::Follower));
        assert_eq!(
            drain(&mut c),
            [
                Action::Promote { node: t, epoch: 3 },
                Action::Report(Report::Switchover {
                    target: t,
                    step: Step::Promote
                })
            ]
        );
        // Within the step's timeout nothing moves (and after it the old master is
        // never told to resume: see `a_promotion_that_never_happens_fails_over`).
        c.tick(CoordinatorConfig::default().switchover_timeout_ms - 1);
        assert!(drain(&mut c).is_empty());
        c.observe(t, position(&[(m, 1), (m, 2)], 3, Role::Master));
        assert_eq!(
            drain(&mut c),
            [
                Action::Fence { node: m, epoch: 3 },
                Action::Report(Report::Switchover {
                    target: t,
                    step: Step::Demote
                })
            ]
        );
        c.observe(m, position(&[(m, 1), (m, 2)], 3, Role::Follower));
        assert_eq!(
            drain(&mut c),
            [Action::Report(Report::Switchover {
                target: t,
                step: Step::Done
            })]
        );
        assert_eq!((c.master(), c.epoch(), c.step()), (Some(t), 3, None));
    }

    #[test]
    fn switchovers_that_make_no_sense_are_refused() {
        let [m, t, _] = ids();
        let stranger = ReplicaId::from_u128(9);
        let mut c = Coordinator::new([m, t], m, 0, CoordinatorConfig::default());
        assert!(matches!(
            c.switchover(m, 0),
            Err(Error::SwitchoverRefused { .. })
        ));
        assert!(matches!(
            c.switchover(stranger, 0),
            Err(Error::SwitchoverRefused { .. })
        ));
        c.switchover(t, 0).unwrap();
        assert!(matches!(
            c.switchover(t, 0),
            Err(Error::SwitchoverRefused { .. })
        ));
    }

    #[test]
    fn failover_skips_unhealthy_replicas_and_takes_an_epoch_above_all_seen() {
        let [m, a, b] = ids();
        let config = CoordinatorConfig {
            failed_checks: 1,
            ..CoordinatorConfig::default()
        };
        let mut c = Coordinator::new([m, a, b], m, 0, config);
        // B holds more, but its last check failed; A reported epoch 6.
        c.observe(a, position(&[(m, 1)], 6, Role::Follower));
        c.observe(b, position(&[(m, 1), (m, 2)], 0, Role::Follower));
        c.health(a, true);
        c.health(b, false);
        c.health(m, false);
        let actions = drain(&mut c);
        assert!(actions.contains(&Action::Promote { node: a, epoch: 7 }));
        assert!(actions.contains(&Action::Fence { node: m, epoch: 7 }));
        assert_eq!(c.master(), Some(a));
        // A fails too and B is unhealthy: no candidate.
        c.health(a, false);
        assert_eq!(
            drain(&mut c).last(),
            Some(&Action::Report(Report::NoCandidate { master: a }))
        );
        assert_eq!(c.master(), Some(a));
    }

    fn config(failed_checks: u32) -> CoordinatorConfig {
        CoordinatorConfig {
            failed_checks,
            switchover_timeout_ms: 1_000,
        }
    }

    fn promotions(actions: &[Action]) -> Vec<(ReplicaId, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Promote { node, epoch } => Some((*node, *epoch)),
                _ => None,
            })
            .collect()
    }

    /// A switchover whose target never reports itself master (it is down) is
    /// abandoned after the timeout, and the coordinator fails over to another
    /// replica in a fresh epoch; the old master is not told to resume.
    #[test]
    fn a_promotion_that_never_happens_fails_over() {
        let [m, t, other] = ids();
        let mut c = Coordinator::new([m, t, other], m, 2, config(3));
        c.observe(other, position(&[(m, 1)], 2, Role::Follower));
        c.health(other, true);
        c.switchover(t, 0).unwrap();
        c.observe(m, position(&[(m, 1)], 2, Role::Follower));
        c.observe(t, position(&[(m, 1)], 2, Role::Follower));
        assert_eq!(c.step(), Some(Step::Promote));
        drain(&mut c);
        c.tick(500); // the Promote step got its own timeout from its start
        assert!(drain(&mut c).is_empty());
        c.tick(1_000);
        let actions = drain(&mut c);
        assert!(
            actions.contains(&Action::Report(Report::SwitchoverAbandoned {
                target: t,
                step: Step::Promote
            }))
        );
        assert!(actions.contains(&Action::Report(Report::PromotionFailed {
            node: t,
            epoch: 3
        })));
        assert_eq!(promotions(&actions), [(other, 4)]);
        assert!(actions.contains(&Action::Fence { node: t, epoch: 4 }));
        assert_eq!((c.master(), c.epoch(), c.step()), (Some(other), 4, None));
        // Its promotion is checked too: confirmed by its position.
        c.observe(other, position(&[(m, 1)], 4, Role::Master));
        c.tick(10_000);
        assert!(drain(&mut c).is_empty());
    }

    /// A promotion refused because a rogue promotion took that epoch (the replica
    /// reports a follower of it) fails at its deadline (a follower of the epoch may
    /// only not have acted yet), and the failover goes to an epoch above every one
    /// observed.
    #[test]
    fn a_refused_promotion_fails_over_above_every_epoch_seen() {
        let [m, a, b] = ids();
        let mut c = Coordinator::new([m, a, b], m, 0, config(1));
        c.observe(a, position(&[(m, 1), (m, 2)], 0, Role::Follower));
        c.observe(b, position(&[(m, 1)], 0, Role::Follower));
        c.health(a, true);
        c.health(b, true);
        c.health(m, false);
        assert_eq!(promotions(&drain(&mut c)), [(a, 1)]);
        // A stale position (before the action ran) is no verdict.
        c.observe(a, position(&[(m, 1), (m, 2)], 0, Role::Follower));
        assert!(drain(&mut c).is_empty());
        // B was promoted to epoch 1 by hand and A supports it (so A refuses epoch
        // 1); B has since been through epoch 5.
        c.observe(b, position(&[(m, 1)], 5, Role::Follower));
        assert!(drain(&mut c).is_empty());
        c.observe(a, position(&[(m, 1), (m, 2)], 1, Role::Follower));
        c.tick(999);
        assert!(drain(&mut c).is_empty());
        c.tick(1_000);
        let actions = drain(&mut c);
        assert_eq!(
            actions.first(),
            Some(&Action::Report(Report::PromotionFailed {
                node: a,
                epoch: 1
            }))
        );
        assert_eq!(promotions(&actions), [(b, 6)]);
        assert_eq!(c.master(), Some(b));
    }

    /// A promoted replica that reports itself master of an epoch above the one it was
    /// told to take (another replica's report raised the known epoch to it first)
    /// confirms the promotion: nothing fails over away from the master of the newest
    /// epoch.
    #[test]
    fn a_promoted_replica_master_of_a_newer_epoch_confirms_its_promotion() {
        let [m, a, b] = ids();
        let mut c = Coordinator::new([m, a, b], m, 4, config(1));
        c.observe(a, position(&[(m, 1)], 4, Role::Follower));
        c.observe(b, position(&[(m, 1)], 4, Role::Follower));
        c.health(a, true);
        c.health(b, true);
        c.health(m, false);
        assert_eq!(promotions(&drain(&mut c)), [(a, 5)]);
        c.observe(b, position(&[(m, 1)], 6, Role::Follower));
        c.observe(a, position(&[(m, 1)], 6, Role::Master));
        assert!(drain(&mut c).is_empty());
        assert_eq!((c.master(), c.epoch(), c.awaiting()), (Some(a), 6, None));
        c.tick(10_000);
        c.health(a, true);
        assert!(drain(&mut c).is_empty());
    }

    /// A promoted replica that reports a follower of the epoch it was told to take,
    /// before it could act (it heard of the epoch from another replica first), has
    /// until the deadline: reporting itself master then confirms the promotion.
    #[test]
    fn a_follower_of_the_promotion_epoch_is_given_until_the_deadline() {
        let [m, a, b] = ids();
        let mut c = Coordinator::new([m, a, b], m, 0, config(1));
        c.observe(a, position(&[(m, 1)], 0, Role::Follower));
        c.observe(b, position(&[], 0, Role::Follower));
        c.health(a, true);
        c.health(b, true);
        c.health(m, false);
        assert_eq!(promotions(&drain(&mut c)), [(a, 1)]);
        c.tick(100);
        c.observe(a, position(&[(m, 1)], 1, Role::Follower));
        assert!(drain(&mut c).is_empty());
        c.tick(400);
        c.observe(a, position(&[(m, 1)], 1, Role::Master));
        c.tick(10_000);
        assert!(drain(&mut c).is_empty());
        assert_eq!((c.master(), c.epoch()), (Some(a), 1));
    }

    /// A switchover is refused while a promotion awaits its confirmation (it would
    /// leave that promotion unchecked).
    #[test]
    fn a_switchover_waits_for_a_pending_promotion() {
        let [m, a, b] = ids();
        let mut c = Coordinator::new([m, a, b], m, 0, config(1));
        c.observe(a, position(&[], 0, Role::Follower));
        c.health(a, true);
        c.health(m, false);
        assert_eq!(promotions(&drain(&mut c)), [(a, 1)]);
        assert!(matches!(
            c.switchover(b, 0),
            Err(Error::SwitchoverRefused { .. })
        ));
        c.observe(a, position(&[], 1, Role::Master));
        c.switchover(b, 0).unwrap();
    }

    /// A coordinator without a master fails over from no one and takes the first
    /// replica reporting itself master of the newest epoch.
    #[test]
    fn a_coordinator_without_a_master_waits_for_one() {
        let [m, a, b] = ids();
        let mut c = Coordinator::without_master([m, a, b], 3, config(1));
        c.observe(a, position(&[], 3, Role::Follower));
        for n in [m, a, b] {
            c.health(n, false);
        }
        c.observe(m, position(&[], 2, Role::Master)); // an older epoch's master
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.master(), None);
        c.observe(b, position(&[], 3, Role::Master));
        assert_eq!((c.master(), c.epoch()), (Some(b), 3));
    }

    /// Health checks of a master that passes them but reports itself a follower
    /// count as failed: the coordinator fails over from it.
    #[test]
    fn a_master_that_is_not_master_fails_its_checks() {
        let [m, a, b] = ids();
        let mut c = Coordinator::new([m, a, b], m, 0, config(2));
        c.observe(a, position(&[(m, 1)], 0, Role::Follower));
        c.health(a, true);
        c.observe(m, position(&[(m, 1)], 0, Role::Master));
        c.health(m, true);
        c.health(m, true);
        assert!(drain(&mut c).is_empty());
        // M was deposed (or restarted as a follower) and answers its health checks.
        c.observe(m, position(&[(m, 1)], 0, Role::Follower));
        c.health(m, true);
        assert!(drain(&mut c).is_empty());
        c.health(m, true);
        let actions = drain(&mut c);
        assert!(actions.contains(&Action::Report(Report::FailoverStarted {
            master: m,
            failed_checks: 2
        })));
        assert_eq!(promotions(&actions), [(a, 1)]);
        // A's promotion is unconfirmed: its follower position is no failed check yet.
        c.health(a, true);
        c.health(a, true);
        assert!(drain(&mut c).is_empty());
    }

    /// A switchover stuck in any step does not block automatic failover: once the
    /// master fails its checks, the switchover is abandoned and the failover runs.
    #[test]
    fn a_stuck_switchover_does_not_block_automatic_failover() {
        let [m, t, other] = ids();
        let mut c = Coordinator::new([m, t, other], m, 0, config(3));
        c.observe(other, position(&[(m, 1)], 0, Role::Follower));
        c.health(other, true);
        c.switchover(t, 0).unwrap();
        drain(&mut c);
        for _ in 0..3 {
            c.health(m, false);
        }
        let actions = drain(&mut c);
        assert!(
            actions.contains(&Action::Report(Report::SwitchoverAbandoned {
                target: t,
                step: Step::StopWrites
            }))
        );
        assert_eq!(promotions(&actions), [(other, 1)]);
        assert_eq!(c.step(), None);
        // A new one may start, once the promotion is confirmed.
        c.observe(other, position(&[(m, 1)], 1, Role::Master));
        c.switchover(t, 0).unwrap();
    }

    /// A switchover stuck in Demote (the old master never reports the new epoch)
    /// ends after the timeout with the target as master.
    #[test]
    fn a_switchover_stuck_in_demote_ends_with_the_target_master() {
        let [m, t, _] = ids();
        let mut c = Coordinator::new([m, t], m, 0, config(3));
        c.switchover(t, 0).unwrap();
        c.observe(m, position(&[], 0, Role::Follower));
        c.observe(t, position(&[], 0, Role::Follower));
        c.tick(900);
        c.observe(t, position(&[], 1, Role::Master));
        assert_eq!(c.step(), Some(Step::Demote));
        drain(&mut c);
        c.tick(1_899);
        assert!(drain(&mut c).is_empty());
        c.tick(1_900);
        assert_eq!(
            drain(&mut c),
            [Action::Report(Report::SwitchoverAbandoned {
                target: t,
                step: Step::Demote
            })]
        );
        assert_eq!((c.master(), c.step()), (Some(t), None));
    }

    /// A replica that reports itself master of a newer epoch during a switchover (a
    /// rogue promotion) ends it: it is the master now.
    #[test]
    fn a_newer_master_ends_a_switchover() {
        let [m, t, rogue] = ids();
        let mut c = Coordinator::new([m, t, rogue], m, 0, config(3));
        c.switchover(t, 0).unwrap();
        drain(&mut c);
        c.observe(rogue, position(&[], 3, Role::Master));
        assert_eq!(
            drain(&mut c),
            [Action::Report(Report::SwitchoverAbandoned {
                target: t,
                step: Step::StopWrites
            })]
        );
        assert_eq!((c.master(), c.epoch(), c.step()), (Some(rogue), 3, None));
    }

    /// Without a candidate, a failure episode is reported once, however many checks
    /// fail: the action queue stays bounded. Later attempts still run (a candidate
    /// that appears is promoted), and a new episode is reported again.
    #[test]
    fn no_candidate_is_reported_once_per_episode() {
        let [m, f, _] = ids();
        let mut c = Coordinator::new([m, f], m, 0, config(3));
        for _ in 0..10_000 {
            c.health(m, false);
        }
        assert!(c.actions.len() <= 2, "{} actions queued", c.actions.len());
        assert_eq!(
            drain(&mut c),
            [
                Action::Report(Report::FailoverStarted {
                    master: m,
                    failed_checks: 3
                }),
                Action::Report(Report::NoCandidate { master: m })
            ]
        );
        c.health(m, true); // the episode ends
        for _ in 0..10_000 {
            c.health(m, false);
        }
        assert_eq!(drain(&mut c).len(), 2);
        c.observe(f, position(&[], 0, Role::Follower));
        c.health(f, true);
        c.health(m, false);
        assert_eq!(promotions(&drain(&mut c)), [(f, 1)]);
    }

    #[test]
    fn no_candidates_means_none() {
        assert_eq!(choose_candidate(&[]), None);
        let id = ReplicaId::from_u128(4);
        assert_eq!(
            choose_candidate(&[(id, &CausalContext::new())]),
            Some((id, 0))
        );
    }
}
