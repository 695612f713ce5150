//! A serializable snapshot of an engine's health.

use serde::{Deserialize, Serialize};

use crate::clock::{CausalContext, VectorClock};
use crate::id::ReplicaId;

use super::engine::Role;
use super::peer::PeerLag;

/// Counters and lag for one replica, ready to export (it serializes to JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The replica's node id.
    pub node: ReplicaId,
    /// The id its current incarnation stamps writes with.
    pub incarnation: ReplicaId,
    /// Master or follower.
    pub role: Role,
    /// Its version vector.
    pub clock: VectorClock,
    /// Local events issued (dots: one per element a write created, one per removal).
    pub writes: u64,
    /// Messages produced.
    pub messages_sent: u64,
    /// Messages accepted.
    pub messages_received: u64,
    /// Messages rejected with an error (state unchanged).
    pub messages_rejected: u64,
    /// Concurrent writes resolved while applying peers' deltas.
    pub conflicts_resolved: u64,
    /// Deltas skipped because they were computed against more than this replica had
    /// (after a restore from an older snapshot); a fresh one was requested.
    pub stale_deltas: u64,
    /// Deltas skipped because their context claimed, without the writes, dots of
    /// another writer beyond what that writer has reported having issued, or left
    /// more gaps than [`Limits::max_relayed_gaps`](crate::Limits::max_relayed_gaps)
    /// in writers that do not report here (see the guide's "Hostile peers"). The
    /// sender resends them on its timer; a count that keeps growing names a peer
    /// that makes such claims.
    #[serde(default)]
    pub unbacked_deltas: u64,
    /// Times the driver resent after a retransmission timeout.
    pub retransmits: u64,
    /// Chunks of catch-ups sent.
    pub chunks_sent: u64,
    /// Times the counter lease was extended (written to its store).
    pub lease_writes: u64,
    /// Keys held contained now: over the sibling cap, their new writes set aside
    /// (listed by [`SyncEngine::hot_keys`](super::SyncEngine::hot_keys)). Alert on a
    /// value that stays above 0: an application must collapse those keys.
    #[serde(default)]
    pub contained_hot_keys: u64,
    /// Writes (dots) set aside for those keys and not taken yet (bounded by
    /// [`Config::max_set_aside`](super::Config::max_set_aside)).
    #[serde(default)]
    pub set_aside_writes: u64,
    /// Reports of keys set aside ([`Received::hot_keys`](super::Received::hot_keys)):
    /// a key becoming contained, or more of its writes set aside.
    #[serde(default)]
    pub hot_keys_set_aside: u64,
    /// Contained keys that healed (every write set aside for them taken).
    #[serde(default)]
    pub hot_keys_healed: u64,
    /// Per-peer replication state, in peer-id order.
    pub peers: Vec<PeerMetrics>,
}

/// Replication state towards one peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerMetrics {
    /// The peer's node id.
    pub peer: ReplicaId,
    /// What the peer has acknowledged.
    pub acked: CausalContext,
    /// The protocol version spoken to it.
    pub protocol_version: u32,
    /// Lag towards it.
    pub lag: PeerLag,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) writes: u64,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) rejected: u64,
    pub(crate) conflicts: u64,
    pub(crate) stale: u64,
    pub(crate) unbacked: u64,
    pub(crate) retransmits: u64,
    pub(crate) chunks: u64,
    pub(crate) lease_writes: u64,
    pub(crate) set_aside: u64,
    pub(crate) healed: u64,
}
