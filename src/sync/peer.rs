//! What an engine knows about each peer.

use serde::{Deserialize, Serialize};

use crate::causal::ChunkCursor;
use crate::clock::CausalContext;
use crate::id::ReplicaId;

/// A chunked catch-up in progress towards one peer.
#[derive(Clone, Debug)]
pub(crate) struct OutStream {
    /// The stream's id.
    pub(crate) id: u64,
    /// What the peer held when the stream started.
    pub(crate) seen: CausalContext,
    /// What this replica held when the stream started: the stream carries no dot
    /// beyond it (later writes follow in the next delta).
    pub(crate) upto: CausalContext,
    /// Where the next chunk starts.
    pub(crate) cursor: ChunkCursor,
    /// The index of the next chunk.
    pub(crate) next: u32,
    /// How many chunks the peer has applied (its next expected index).
    pub(crate) acked: u32,
    /// How many items the next chunk may hold (adapted to the message limit).
    pub(crate) items: usize,
    /// True once the last chunk was sent.
    pub(crate) finished: bool,
}

/// How many replaced boots of one peer are remembered (see [`Peer::retired`]).
pub(crate) const RETIRED_BOOTS: usize = 4;

/// One peer as seen from this replica.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// Every dot the peer is known to hold (the union of what its current boot has
    /// told us).
    pub(crate) acked: CausalContext,
    /// `acked` plus everything sent to it since and not yet acknowledged.
    pub(crate) offered: CausalContext,
    /// The boot that sent `acked`.
    pub(crate) boot: Option<ReplicaId>,
    /// The newest protocol version it speaks (`None`: not heard yet).
    pub(crate) vmax: Option<u32>,
    /// The last few boots it replaced (at most [`RETIRED_BOOTS`]): a late message
    /// from one of them does not change `vmax`.
    pub(crate) retired: Vec<ReplicaId>,
    /// When we last received a valid message from it (ms of our time source).
    pub(crate) last_heard_ms: Option<u64>,
    /// When we last sent it anything.
    pub(crate) last_sent_ms: Option<u64>,
    /// When the next anti-entropy opener is due (`None`: now).
    pub(crate) next_anti_entropy_ms: Option<u64>,
    /// Since when it has lacked other replicas' writes (relayed after a delay).
    pub(crate) relay_since: Option<u64>,
    /// When what was offered is resent if still unacknowledged.
    pub(crate) deadline: Option<u64>,
    /// What had been offered when `deadline` was armed: the deadline is about that.
    pub(crate) flight: Option<CausalContext>,
    /// The current retransmission timeout.
    pub(crate) rto: u64,
    /// It sent something that deserves an acknowledgement or an answer.
    pub(crate) owe_ack: bool,
    /// It sent a delta we had to skip: ask it to start over.
    pub(crate) owe_restart: bool,
    /// The catch-up stream we are sending it.
    pub(crate) out: Option<OutStream>,
    /// The stream it is sending us: `(its boot, stream, next expected index)`.
    pub(crate) inbound: Option<(ReplicaId, u64, u32)>,
    /// Our own dots it acknowledged in an acknowledgement we had caught up with (we
    /// held everything it had seen, its removals included): counter segments under
    /// these dots can no longer meet a removal of part of them from this peer.
    pub(crate) fold_ack: CausalContext,
    /// `acked`, from messages of version 2 or later only: their context is the
    /// sender's whole context, its own latest writes and removals included. A
    /// version-1 acknowledgement is a gap-free prefix, which can leave out a removal
    /// the sender made after a gap (a restarted boot's first dots), so it cannot
    /// tell that every earlier removal of the sender has arrived (folding needs that).
    pub(crate) exact_acked: CausalContext,
    /// Master–follower mode: the latest `lead` time it sent as the master this
    /// replica supports, to echo back.
    pub(crate) echo_out: Option<u64>,
    /// Master–follower mode, at a master: the latest of this master's send times it
    /// echoed in the master's epoch (it counts towards the lease until then plus the
    /// lease).
    pub(crate) lease_echo: Option<u64>,
    /// Master–follower mode, at a master: the first and the latest send time (`lead`)
    /// it sent this peer in its epoch, in this process: an echo outside them was
    /// never sent, and does not count.
    pub(crate) lead_sent: Option<(u64, u64)>,
}

impl Peer {
    pub(crate) fn new(rto: u64) -> Self {
        Peer {
            acked: CausalContext::new(),
            offered: CausalContext::new(),
            boot: None,
            vmax: None,
            retired: Vec::new(),
            last_heard_ms: None,
            last_sent_ms: None,
            next_anti_entropy_ms: None,
            relay_since: None,
            deadline: None,
            flight: None,
            rto,
            owe_ack: false,
            owe_restart: false,
            out: None,
            inbound: None,
            fold_ack: CausalContext::new(),
            exact_acked: CausalContext::new(),
            echo_out: None,
            lease_echo: None,
            lead_sent: None,
        }
    }
}

/// Replication lag towards one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLag {
    /// Local events (dots of this replica) the peer has not acknowledged. A write
    /// that fills several elements at once (several fields of a nested map) counts
    /// one per element, a removal one.
    pub unacked_writes: u64,
    /// Age in milliseconds of the oldest unacknowledged local write (0 if none).
    pub oldest_unacked_ms: u64,
    /// Milliseconds since the peer was last heard from (`None`: never).
    pub since_heard_ms: Option<u64>,
}
