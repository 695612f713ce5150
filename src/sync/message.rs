//! The messages masters exchange, and the protocol versions they speak.

use serde::{Deserialize, Serialize};

use crate::causal::Crdt;
use crate::clock::CausalContext;
use crate::error::Result;
use crate::id::ReplicaId;

/// The newest protocol version this build speaks.
///
/// * **1**: acknowledgements are gap-free version vectors (`clock`), and a delta names
///   the vector it was computed against (`base`).
/// * **2**: acknowledgements are causal contexts (`seen`: range-compacted, so a peer
///   that misses a few old dots says exactly which), deltas larger than the message
///   limit travel as numbered chunks, and every message says the newest version its
///   sender speaks (`vmax`).
/// * **3**: every message carries the sender's fencing epoch (`epoch`) and, in
///   master–follower mode ([`Config::master_lease_ms`]), the lease fields `lead`
///   (sent by a master: its send time) and `echo` (sent back by a replica that
///   supports that master: the latest `lead` it received from it). A build that speaks
///   only version 2 skips the fields it does not know, so multi-master clusters
///   upgrade as before; master–follower mode needs every node on version 3.
///   A counter segment made by folding others carries the newest dot it folded (a
///   fourth element), so that a removal of what it folded takes it too (see
///   [`Config::fold_counters`](crate::sync::Config::fold_counters)); a replica folds
///   only while every peer speaks 3, and writes a fold to an older peer as a plain
///   segment.
/// * **4**: the same messages in a binary form ([`crate::wire`]: varint integers, no
///   field names, the envelope first in a fixed order), told apart from JSON by its
///   first byte ([`crate::wire::BINARY_MESSAGE`]). Versions 1–3 stay JSON, so a
///   version-4 build talks JSON to an older peer and binary once both speak 4.
///
/// [`Config::master_lease_ms`]: crate::sync::Config::master_lease_ms
///
/// Peers agree on the highest version both speak: an engine talks version 1 to a peer
/// it has not heard from yet (a version-1 build ignores the `vmax` field it does not
/// know), and switches up as soon as the peer's messages show it speaks more. A
/// rolling upgrade therefore never splits the cluster.
pub const PROTOCOL_VERSION: u32 = 4;

/// The oldest protocol version this build still speaks.
pub const OLDEST_PROTOCOL_VERSION: u32 = 1;

/// One message between two replicas: what the sender has seen (which acknowledges
/// everything in it), the delta it believes the receiver lacks (if any), and whether
/// it wants an answer.
#[derive(Clone, Debug, PartialEq)]
#[must_use = "a message must be sent to its peer"]
pub struct Message<T> {
    /// The protocol version the message is written in.
    pub v: u32,
    /// The newest protocol version the sender speaks.
    pub vmax: u32,
    /// The sending replica (its node id).
    pub from: ReplicaId,
    /// The receiving replica.
    pub to: ReplicaId,
    /// The sender's boot: a fresh id every time an engine is built or restored.
    /// Acknowledgements from one boot only grow; a new boot (restored from a
    /// snapshot) may hold less than the last one acknowledged, and replaces them.
    pub inc: ReplicaId,
    /// Every dot the sender has seen (its causal context). The receiver treats it as
    /// an acknowledgement of everything it names.
    pub seen: CausalContext,
    /// What the receiver lacks, as far as the sender knows.
    pub delta: Option<T>,
    /// What the receiver must already hold for `delta` to be applied; a receiver that
    /// does not (it was restored from an older snapshot, or an earlier chunk of the
    /// same catch-up has not arrived) skips the delta and answers with what it holds.
    pub base: CausalContext,
    /// Which part of a chunked delta this is (`None`: the whole delta).
    pub chunk: Option<Chunk>,
    /// True if the sender wants the receiver to answer with what the sender lacks.
    pub reply: bool,
    /// The sender's fencing epoch when it sent the message (version 3; 0 in older
    /// versions): see [`SyncEngine::epoch`](crate::sync::SyncEngine::epoch).
    pub epoch: u64,
    /// Set by a master–follower master that leads `epoch`: its time (ms of its time
    /// source's monotonic clock) when it sent the message, for the receiver to echo
    /// (version 3).
    pub lead: Option<u64>,
    /// Set by a replica that supports the addressee as the master of `epoch`: the
    /// latest `lead` it received from it. The master counts the replica towards its
    /// lease from that time, its own clock's (version 3).
    pub echo: Option<u64>,
}

/// One piece of a delta too large for one message (protocol version 2).
///
/// The pieces of one catch-up form a *stream*: each is a valid state on its own
/// (its entries and exactly the dots they hold), and the receiver applies them in
/// order, so removals sent early in the stream are known before the writes that
/// caused them arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// The stream (a sender-chosen number, new for every catch-up).
    pub stream: u64,
    /// The position of this piece in the stream, from 0.
    pub index: u32,
    /// True on the last piece. In an acknowledgement (a message without a delta),
    /// `index` is the next piece the receiver expects, and `last` says it skipped
    /// one (lost or out of order), so the sender starts the stream again.
    pub last: bool,
}

impl<T> Message<T> {
    /// True if the message carries no delta (an acknowledgement, a heartbeat or a
    /// session opener).
    ///
    /// ```
    /// use concord::sync::{Config, SyncEngine};
    /// use concord::{ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, OrMap::<String, PnCounter>::new(), time, Config::with_peers([b_id]));
    /// assert!(a.sync_with(b_id)?.is_ack_only()); // nothing to send yet
    /// a.update(|m, hlc| m.increment("visits".to_string(), 1, hlc))?;
    /// assert!(!a.sync_with(b_id)?.is_ack_only());
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn is_ack_only(&self) -> bool {
        self.delta.is_none()
    }
}

impl<T: Crdt> Message<T> {
    /// Encodes the message for the wire, in the version it names (see
    /// [`crate::wire::encode`], which says why it cannot fail). It needs no engine, so a reply can be encoded while
    /// the engine that produced it is borrowed again:
    ///
    /// ```
    /// use concord::sync::{Config, Message, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// type Map = OrMap<String, LwwRegister<u32>>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let time = ManualClock::new(1_000);
    /// let mut a = SyncEngine::new(a_id, Map::new(), time.clone(), Config::with_peers([b_id]));
    /// let mut b = SyncEngine::new(b_id, Map::new(), time, Config::with_peers([a_id]));
    /// a.update(|m, hlc| m.write("x".to_string(), 7, hlc))?;
    ///
    /// let bytes = a.sync_with(b_id)?.encode();
    /// let answer = b.receive_bytes(&bytes)?.reply.expect("B answers a session");
    /// let _ = a.receive_bytes(&answer.encode())?;
    /// assert_eq!(a.state(), b.state());
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        crate::wire::encode(self)
    }

    /// Decodes a message of any protocol version this build speaks, refusing input
    /// larger than `max_bytes` before parsing it (see [`crate::wire::decode`]). An
    /// engine decodes by itself ([`SyncEngine::handle_bytes`],
    /// [`SyncEngine::receive_bytes`]), checking the sender before the body; this is
    /// for hosts that inspect messages first (to route one, read its envelope alone
    /// with [`crate::wire::envelope`] and hand the bytes to the engine).
    ///
    /// [`SyncEngine::handle_bytes`]: crate::sync::SyncEngine::handle_bytes
    /// [`SyncEngine::receive_bytes`]: crate::sync::SyncEngine::receive_bytes
    ///
    /// ```
    /// use concord::sync::{Config, Message, SyncEngine};
    /// use concord::{Error, ManualClock, OrMap, PnCounter, ReplicaId};
    ///
    /// type Map = OrMap<String, PnCounter>;
    /// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    /// let mut a = SyncEngine::new(a_id, Map::new(), ManualClock::new(1_000), Config::with_peers([b_id]));
    /// let bytes = a.sync_with(b_id)?.encode();
    ///
    /// let msg = Message::<Map>::decode(&bytes, 1 << 20)?;
    /// assert_eq!((msg.from, msg.to), (a_id, b_id)); // route it by its address
    /// assert!(matches!(
    ///     Message::<Map>::decode(&bytes, 16),
    ///     Err(Error::MessageTooLarge { .. })
    /// ));
    /// # Ok::<(), concord::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`](crate::Error::MessageTooLarge),
    /// [`Error::UnsupportedVersion`](crate::Error::UnsupportedVersion),
    /// [`Error::TooManyEntries`](crate::Error::TooManyEntries) (a body past the default
    /// [`Limits`](crate::Limits), counted while decoding),
    /// [`Error::Decode`](crate::Error::Decode).
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Self> {
        crate::wire::decode(bytes, max_bytes)
    }
}
