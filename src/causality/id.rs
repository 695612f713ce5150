//! Identities: [`ReplicaId`] names a master, [`Dot`] names one event it issued.
//!
//! ```
//! use concord::{Dot, ReplicaId};
//!
//! let us_east: ReplicaId = "6f1c2a3e-0000-4000-8000-000000000001".parse().unwrap();
//! let first = Dot::new(us_east, 1);
//! assert_eq!(first.replica(), us_east);
//! assert_eq!(first.counter(), 1);
//! assert!(first < first.next());
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The identity of one replica (one master or follower).
///
/// A `uuid::Uuid` newtype: random ids never need coordination, so regions can be added
/// and removed freely. It displays, parses and serializes as the hyphenated UUID string.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplicaId(Uuid);

impl ReplicaId {
    /// A fresh random id (UUID v4).
    pub fn random() -> Self {
        ReplicaId(Uuid::new_v4())
    }

    /// Wraps an existing UUID.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        ReplicaId(uuid)
    }

    /// A deterministic id built from a number: handy in tests, examples and simulations.
    ///
    /// ```
    /// use concord::ReplicaId;
    /// assert_eq!(ReplicaId::from_u128(1), ReplicaId::from_u128(1));
    /// assert!(ReplicaId::from_u128(1) < ReplicaId::from_u128(2));
    /// ```
    pub const fn from_u128(n: u128) -> Self {
        ReplicaId(Uuid::from_u128(n))
    }

    /// The underlying UUID.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// Eight hex digits that tell replicas apart in logs: the first eight of a random
    /// id, the last eight of a small numbered one (such as [`ReplicaId::from_u128`]).
    ///
    /// ```
    /// use concord::ReplicaId;
    /// assert_eq!(ReplicaId::from_u128(0x2a).short(), "0000002a");
    /// ```
    pub fn short(&self) -> String {
        let n = self.0.as_u128();
        let digits = if n >> 96 == 0 {
            n as u32
        } else {
            (n >> 96) as u32
        };
        format!("{digits:08x}")
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicaId({})", self.short())
    }
}

impl FromStr for ReplicaId {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        Uuid::parse_str(s)
            .map(ReplicaId)
            .map_err(|_| crate::Error::InvalidReplicaId {
                input: s.chars().take(64).collect(),
            })
    }
}

impl From<Uuid> for ReplicaId {
    fn from(uuid: Uuid) -> Self {
        ReplicaId(uuid)
    }
}

/// One event: the `counter`-th event issued by `replica` (counters start at 1).
///
/// Every write in concord is tagged with a fresh dot; causality is tracked by which dots
/// a replica has seen, never by wall clocks.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct Dot {
    replica: ReplicaId,
    counter: u64,
}

impl Dot {
    /// The `counter`-th event of `replica`.
    pub const fn new(replica: ReplicaId, counter: u64) -> Self {
        Dot { replica, counter }
    }

    /// The replica that issued this event.
    pub const fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// Its sequence number at that replica (1 for the first event).
    pub const fn counter(&self) -> u64 {
        self.counter
    }

    /// The next event of the same replica.
    pub const fn next(&self) -> Dot {
        Dot {
            replica: self.replica,
            counter: self.counter + 1,
        }
    }
}

impl std::hash::Hash for Dot {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Three words, not a length-prefixed byte slice: dots key the hot indexes.
        let id = self.replica.0.as_u128();
        state.write_u64(id as u64);
        state.write_u64((id >> 64) as u64);
        state.write_u64(self.counter);
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.replica.short(), self.counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_id_round_trips_through_string_and_json() {
        let id = ReplicaId::random();
        let parsed: ReplicaId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<ReplicaId>(&json).unwrap(), id);
    }

    #[test]
    fn bad_replica_id_is_a_typed_error() {
        let err = "not-a-uuid".parse::<ReplicaId>().unwrap_err();
        assert!(matches!(err, crate::Error::InvalidReplicaId { .. }));
    }

    #[test]
    fn dot_round_trips_through_json() {
        let dot = Dot::new(ReplicaId::from_u128(7), 42);
        let json = serde_json::to_string(&dot).unwrap();
        assert_eq!(serde_json::from_str::<Dot>(&json).unwrap(), dot);
    }
}
