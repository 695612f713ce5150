//! The messages masters exchange.

use serde::{Deserialize, Serialize};

use crate::clock::VectorClock;
use crate::id::ReplicaId;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// One message between two replicas: the sender's version vector, the delta it
/// believes the receiver lacks (if any), and whether it wants an answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "T: Serialize + serde::de::DeserializeOwned")]
pub struct Message<T> {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub v: u32,
    /// The sending replica (its node id).
    pub from: ReplicaId,
    /// The receiving replica.
    pub to: ReplicaId,
    /// The sender's incarnation (see [`SyncEngine`](crate::sync::SyncEngine)'s restart
    /// safety): acknowledgements from one incarnation only grow; a new incarnation
    /// (restored from a snapshot) may acknowledge less than the last one did.
    pub inc: ReplicaId,
    /// Everything the sender has seen (its version vector). The receiver treats it as
    /// an acknowledgement of everything it names.
    pub clock: VectorClock,
    /// What the receiver lacks, as far as the sender knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<T>,
    /// The version vector `delta` was computed against: the receiver applies the delta
    /// only if it has seen all of it (a replica restored from an older snapshot may
    /// not have, and then asks for a fresh delta instead).
    #[serde(default, skip_serializing_if = "VectorClock::is_empty")]
    pub base: VectorClock,
    /// True if the sender wants the receiver to answer with what the sender lacks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reply: bool,
}
