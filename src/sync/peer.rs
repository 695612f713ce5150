//! What an engine knows about each peer.

use serde::{Deserialize, Serialize};

use crate::clock::VectorClock;

/// One peer as seen from this replica.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Peer {
    /// Everything the peer is known to hold (the largest vector its current
    /// incarnation has sent us).
    pub(crate) acked: VectorClock,
    /// The incarnation that sent `acked`.
    #[serde(skip)]
    pub(crate) incarnation: Option<crate::id::ReplicaId>,
    /// Our vector when we last pushed to it (to avoid resending the same delta).
    #[serde(skip)]
    pub(crate) pushed: Option<VectorClock>,
    /// When we last received a valid message from it (ms of our time source).
    pub(crate) last_heard_ms: Option<u64>,
}

/// Replication lag towards one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLag {
    /// Local events (dots of this incarnation) the peer has not acknowledged. A write
    /// that fills several elements at once (several fields of a nested map) counts
    /// one per element, a removal one.
    pub unacked_writes: u64,
    /// Age in milliseconds of the oldest unacknowledged local write (0 if none).
    pub oldest_unacked_ms: u64,
    /// Milliseconds since the peer was last heard from (`None`: never).
    pub since_heard_ms: Option<u64>,
}
