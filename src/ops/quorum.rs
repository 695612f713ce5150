//! Quorum reads: merge what a majority of the replicas holds.
//!
//! A write acknowledged at [`AckLevel::Quorum`](crate::sync::AckLevel::Quorum) is held
//! by a majority of the replicas; any two majorities share a replica, so the join of
//! the states of *any* majority holds every such write. [`QuorumRead`] collects the
//! answers (full states, or deltas since what the reader holds) and says when a
//! majority has answered. It never talks to the network: the host asks the replicas
//! and feeds their answers in, and decides how long to wait; with fewer than a
//! majority, [`QuorumRead::finish`] refuses rather than guess.
//!
//! ```
//! use concord::ops::quorum::QuorumRead;
//! use concord::sync::{AckLevel, Config, SyncEngine};
//! use concord::{Error, LwwRegister, ManualClock, OrMap, ReplicaId};
//!
//! type Settings = OrMap<String, LwwRegister<u32>>;
//! let ids = [1, 2, 3].map(ReplicaId::from_u128);
//! let time = ManualClock::new(1_000);
//! let mut a = SyncEngine::new(ids[0], Settings::new(), time.clone(), Config::with_peers([ids[1], ids[2]]));
//! let mut b = SyncEngine::new(ids[1], Settings::new(), time.clone(), Config::with_peers([ids[0], ids[2]]));
//! let c = SyncEngine::new(ids[2], Settings::new(), time, Config::with_peers([ids[0], ids[1]]));
//!
//! // A write held by A and B: a majority of three.
//! let dot = a.update(|m, hlc| m.write("volume".into(), 7, hlc))?.dot.unwrap();
//! let answer = b.receive(a.sync_with(ids[1])?)?.reply.unwrap();
//! let _ = a.receive(answer)?;
//! assert!(a.is_replicated(dot, AckLevel::Quorum));
//!
//! // A reader that reaches B and C only still sees it.
//! let mut read = QuorumRead::new(ids);
//! read.add(ids[2], c.state().clone())?;
//! assert!(matches!(read.clone().finish(), Err(Error::NoQuorum { answered: 1, needed: 2, .. })));
//! read.add(ids[1], b.state().clone())?;
//! assert!(read.has_quorum());
//! assert_eq!(read.finish()?.value("volume"), Some(&7));
//! # Ok::<(), concord::Error>(())
//! ```

use std::collections::BTreeSet;

use crate::causal::{Crdt, Limits};
use crate::error::{Error, Result};
use crate::id::ReplicaId;

/// The answers of a quorum read so far, merged.
#[derive(Clone, Debug, PartialEq)]
pub struct QuorumRead<T> {
    replicas: BTreeSet<ReplicaId>,
    answered: BTreeSet<ReplicaId>,
    merged: T,
    limits: Limits,
}

impl<T: Crdt + Default> QuorumRead<T> {
    /// A read over `replicas`: every replica of the cluster, the reader's own node
    /// included if it is one (a majority is counted of all of them). Answers are
    /// checked against the default [`Limits`]; see [`QuorumRead::with_limits`].
    ///
    /// ```
    /// use concord::ops::quorum::QuorumRead;
    /// use concord::{OrMap, PnCounter, ReplicaId};
    ///
    /// let read = QuorumRead::<OrMap<String, PnCounter>>::new((1..=5).map(ReplicaId::from_u128));
    /// assert_eq!((read.answered(), read.needed()), (0, 3));
    /// ```
    pub fn new(replicas: impl IntoIterator<Item = ReplicaId>) -> Self {
        QuorumRead {
            replicas: replicas.into_iter().collect(),
            answered: BTreeSet::new(),
            merged: T::default(),
            limits: Limits::default(),
        }
    }

    /// The same read, checking answers against `limits` (use the engines' own).
    ///
    /// ```
    /// use concord::ops::quorum::QuorumRead;
    /// use concord::{Limits, OrMap, PnCounter, ReplicaId};
    ///
    /// let limits = Limits { max_entries: 1_000, ..Limits::default() };
    /// let read = QuorumRead::<OrMap<String, PnCounter>>::new([ReplicaId::from_u128(1)])
    ///     .with_limits(limits);
    /// assert_eq!(read.needed(), 1);
    /// ```
    #[must_use = "it returns the changed read"]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Merges `from`'s answer: its state, or what it holds that the reader lacks (a
    /// delta is a state). A second answer from the same replica is merged too (it
    /// can only add) but counts once.
    ///
    /// ```
    /// use concord::ops::quorum::QuorumRead;
    /// use concord::{Error, OrMap, PnCounter, ReplicaId};
    ///
    /// type Carts = OrMap<String, PnCounter>;
    /// let mut read = QuorumRead::<Carts>::new([1, 2, 3].map(ReplicaId::from_u128));
    /// let stranger = ReplicaId::from_u128(9);
    /// assert_eq!(read.add(stranger, Carts::new()), Err(Error::UnknownPeer { peer: stranger }));
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::UnknownPeer`] if `from` is not one of the replicas; the answer's
    /// validation errors ([`Error::InvalidDot`], [`Error::TooManyEntries`],
    /// [`Error::TooManySiblings`]). On error nothing changed.
    pub fn add(&mut self, from: ReplicaId, answer: T) -> Result<()> {
        if !self.replicas.contains(&from) {
            return Err(Error::UnknownPeer { peer: from });
        }
        self.merged.try_merge(answer, &self.limits, &mut ())?;
        self.answered.insert(from);
        Ok(())
    }

    /// How many replicas have answered.
    ///
    /// ```
    /// use concord::ops::quorum::QuorumRead;
    /// use concord::{OrMap, PnCounter, ReplicaId};
    ///
    /// let id = ReplicaId::from_u128(1);
    /// let mut read = QuorumRead::<OrMap<String, PnCounter>>::new([id]);
    /// read.add(id, OrMap::new())?;
    /// read.add(id, OrMap::new())?; // counts once
    /// assert_eq!(read.answered(), 1);
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn answered(&self) -> usize {
        self.answered.len()
    }

    /// How many answers make a majority of the replicas.
    ///
    /// ```
    /// use concord::ops::quorum::QuorumRead;
    /// use concord::{OrMap, PnCounter, ReplicaId};
    ///
    /// let read = QuorumRead::<OrMap<String, PnCounter>>::new((1..=4).map(ReplicaId::from_u128));
    /// assert_eq!(read.needed(), 3);
    /// ```
    pub fn needed(&self) -> usize {
        self.replicas.len() / 2 + 1
    }

    /// True once a majority has answered.
    ///
    /// ```
    /// use concord::ops::quorum::QuorumRead;
    /// use concord::{OrMap, PnCounter, ReplicaId};
    ///
    /// let id = ReplicaId::from_u128(1);
    /// let mut read = QuorumRead::<OrMap<String, PnCounter>>::new([id]);
    /// assert!(!read.has_quorum());
    /// read.add(id, OrMap::new())?;
    /// assert!(read.has_quorum());
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn has_quorum(&self) -> bool {
        self.answered() >= self.needed()
    }

    /// What the answers so far merge to (not yet a quorum read unless
    /// [`QuorumRead::has_quorum`]).
    ///
    /// ```
    /// use concord::ops::quorum::QuorumRead;
    /// use concord::{OrMap, PnCounter, ReplicaId};
    ///
    /// let read = QuorumRead::<OrMap<String, PnCounter>>::new([ReplicaId::from_u128(1)]);
    /// assert!(read.state().is_empty());
    /// ```
    pub fn state(&self) -> &T {
        &self.merged
    }

    /// The merged state, if a majority answered: it holds every write acknowledged
    /// at [`AckLevel::Quorum`](crate::sync::AckLevel::Quorum) before the read began.
    ///
    /// # Errors
    ///
    /// [`Error::NoQuorum`] (its `replica` is the nil id: no one replica is at fault)
    /// if fewer than a majority answered.
    pub fn finish(self) -> Result<T> {
        if !self.has_quorum() {
            return Err(Error::NoQuorum {
                replica: ReplicaId::from_u128(0),
                answered: self.answered(),
                needed: self.needed(),
            });
        }
        Ok(self.merged)
    }
}
