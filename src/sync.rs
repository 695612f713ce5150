//! The sans-IO sync engine: bidirectional delta exchange between masters.
//!
//! A [`SyncEngine`] owns one replica's state, stamps its local writes with the
//! replica's hybrid logical clock, and turns the state into [`Message`]s for its peers
//! and peers' messages back into state. It never touches a socket, a thread or a clock
//! of its own: the host moves the messages (over TCP, a queue, or the
//! [simulator](crate::testing::sim), feature `testing`) and the time comes from the engine's
//! [`TimeSource`](crate::TimeSource).
//!
//! # The protocol
//!
//! Every message carries the sender's version vector and, when the sender believes the
//! receiver lacks something, the delta the receiver is missing. Version vectors double
//! as acknowledgements.
//!
//! * **Session**: [`SyncEngine::sync_with`] sends my vector and the delta since what the
//!   peer last acknowledged, asking for a reply; the peer merges it and answers with
//!   the delta since my vector. Both sides have converged after one round trip (two
//!   messages).
//! * **Push**: after local writes, [`SyncEngine::push`] offers every peer the delta
//!   since its acknowledged vector; the replies acknowledge.
//! * Loss, duplication and reordering are harmless: merges are idempotent and
//!   order-insensitive, and the next session resends whatever is still missing. A new
//!   replica, or one back from a long partition, receives everything its vector lacks
//!   (the whole state at worst).
//!
//! ```
//! use concord::sync::{Config, SyncEngine};
//! use concord::{ManualClock, MvRegister, OrMap, ReplicaId};
//!
//! type Profiles = OrMap<String, MvRegister<String>>;
//! let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
//! let time = ManualClock::new(1_000);
//! let mut a = SyncEngine::new(a_id, Profiles::new(), time.clone(), Config::with_peers([b_id]));
//! let mut b = SyncEngine::new(b_id, Profiles::new(), time.clone(), Config::with_peers([a_id]));
//!
//! // Both masters write the same key without hearing from each other.
//! a.update(|m, hlc| m.write("alice".into(), "alice@a.example".into(), hlc))?;
//! b.update(|m, hlc| m.write("alice".into(), "alice@b.example".into(), hlc))?;
//!
//! // One round trip: A opens a session, B answers, A applies the answer.
//! let hello = a.sync_with(b_id)?;
//! let at_b = b.receive(hello)?;
//! assert_eq!(at_b.conflicts.len(), 1); // B saw the race on "alice"
//! let at_a = a.receive(at_b.reply.expect("B answers"))?;
//! assert_eq!(at_a.conflicts.len(), 1);
//! assert_eq!(a.state(), b.state());
//! # Ok::<(), concord::Error>(())
//! ```

mod engine;
mod hot;
mod lease;
mod message;
mod metrics;
mod peer;

pub use engine::{
    AckLevel, Config, Received, Role, Snapshot, SyncEngine, Transmit, WriteReceipt, MAX_EPOCH,
};
pub use hot::HotKey;
pub use lease::{FenceRecord, FileLease, LeaseStore, MemoryLease};
pub use message::{Chunk, Message, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION};
pub use metrics::{Metrics, PeerMetrics};
pub use peer::PeerLag;
