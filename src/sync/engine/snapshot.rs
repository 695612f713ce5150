//! An engine's durable state and its two serde forms.

use super::*;

/// An engine's durable state: restore it with [`SyncEngine::restore`].
///
/// It serializes with serde in either form: a JSON object (what `serde_json` writes;
/// fields at their defaults are left out), or, in a binary serde format such as the
/// one [`crate::wire::encode_snapshot`] writes, every field in a fixed order.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot<T> {
    /// The replica's node id.
    pub node: ReplicaId,
    /// Its role when the snapshot was taken.
    pub role: Role,
    /// The replicated state.
    pub state: T,
    /// What each peer had acknowledged (snapshots of protocol version 1 name version
    /// vectors here; they restore as the same contexts).
    pub peers: Vec<(ReplicaId, CausalContext)>,
    /// The greatest hybrid-logical-clock timestamp issued or seen.
    pub hlc_last: Timestamp,
    /// The newest protocol version each peer was heard to speak: a restarted node
    /// speaks it from its first message (version 1 cannot name gaps, so a first
    /// exchange in version 1 could resend everything past one).
    pub peer_versions: Vec<(ReplicaId, u32)>,
    /// The fencing epoch (see [`SyncEngine::epoch`]); 0, and left out of the JSON
    /// form, until a promotion.
    pub epoch: u64,
    /// The master this replica supports in `epoch` (itself, if it leads it): kept so
    /// that a restarted replica never supports two masters in one epoch.
    pub leader: Option<ReplicaId>,
}

/// A snapshot as JSON writes it.
#[derive(Serialize)]
#[serde(bound = "T: Crdt")]
pub(super) struct JsonSnapshotOut<'a, T> {
    node: ReplicaId,
    role: Role,
    state: &'a T,
    peers: &'a [(ReplicaId, CausalContext)],
    hlc_last: Timestamp,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    peer_versions: &'a [(ReplicaId, u32)],
    #[serde(skip_serializing_if = "is_zero")]
    epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<ReplicaId>,
}

/// A snapshot as JSON reads it.
#[derive(Deserialize)]
#[serde(bound = "T: Crdt")]
pub(super) struct JsonSnapshotIn<T> {
    node: ReplicaId,
    role: Role,
    state: T,
    #[serde(deserialize_with = "acked_any_form")]
    peers: Vec<(ReplicaId, CausalContext)>,
    hlc_last: Timestamp,
    #[serde(default)]
    peer_versions: Vec<(ReplicaId, u32)>,
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    leader: Option<ReplicaId>,
}

/// A snapshot in a binary form: every field, in order.
#[derive(Serialize)]
#[serde(bound = "T: Crdt")]
pub(super) struct BinarySnapshotOut<'a, T> {
    node: ReplicaId,
    role: Role,
    state: &'a T,
    peers: &'a [(ReplicaId, CausalContext)],
    hlc_last: Timestamp,
    peer_versions: &'a [(ReplicaId, u32)],
    epoch: u64,
    leader: Option<ReplicaId>,
}

/// A snapshot as a binary form reads it.
#[derive(Deserialize)]
#[serde(bound = "T: Crdt")]
pub(super) struct BinarySnapshotIn<T> {
    node: ReplicaId,
    role: Role,
    state: T,
    peers: Vec<(ReplicaId, CausalContext)>,
    hlc_last: Timestamp,
    peer_versions: Vec<(ReplicaId, u32)>,
    epoch: u64,
    leader: Option<ReplicaId>,
}

impl<T: Crdt> Serialize for Snapshot<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            JsonSnapshotOut {
                node: self.node,
                role: self.role,
                state: &self.state,
                peers: &self.peers,
                hlc_last: self.hlc_last,
                peer_versions: &self.peer_versions,
                epoch: self.epoch,
                leader: self.leader,
            }
            .serialize(s)
        } else {
            BinarySnapshotOut {
                node: self.node,
                role: self.role,
                state: &self.state,
                peers: &self.peers,
                hlc_last: self.hlc_last,
                peer_versions: &self.peer_versions,
                epoch: self.epoch,
                leader: self.leader,
            }
            .serialize(s)
        }
    }
}

impl<'de, T: Crdt> Deserialize<'de> for Snapshot<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        if d.is_human_readable() {
            let j = JsonSnapshotIn::<T>::deserialize(d)?;
            Ok(Snapshot {
                node: j.node,
                role: j.role,
                state: j.state,
                peers: j.peers,
                hlc_last: j.hlc_last,
                peer_versions: j.peer_versions,
                epoch: j.epoch,
                leader: j.leader,
            })
        } else {
            let b = BinarySnapshotIn::<T>::deserialize(d)?;
            Ok(Snapshot {
                node: b.node,
                role: b.role,
                state: b.state,
                peers: b.peers,
                hlc_last: b.hlc_last,
                peer_versions: b.peer_versions,
                epoch: b.epoch,
                leader: b.leader,
            })
        }
    }
}

pub(super) fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub(super) fn acked_any_form<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<(ReplicaId, CausalContext)>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Acked {
        Context(CausalContext),
        Clock(VectorClock),
    }
    let v: Vec<(ReplicaId, Acked)> = Deserialize::deserialize(d)?;
    Ok(v.into_iter()
        .map(|(id, a)| match a {
            Acked::Context(c) => (id, c),
            Acked::Clock(c) => (id, CausalContext::from(&c)),
        })
        .collect())
}
