//! The one error type of the crate.
//!
//! Every fallible call returns [`Result`]. Errors caused by input from a peer are
//! raised *before* anything is mutated: a rejected message leaves the state exactly as
//! it was.

use crate::id::{Dot, ReplicaId};

/// Shorthand for `std::result::Result<T, concord::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in concord.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string that should name a replica is not a UUID.
    #[error("invalid replica id {input:?}: expected a UUID")]
    InvalidReplicaId {
        /// The offending input (truncated to 64 characters).
        input: String,
    },

    /// A remote hybrid-logical-clock timestamp is further ahead of the local wall clock
    /// than the configured maximum offset. The local clock was not changed.
    #[error("remote clock is {ahead_ms} ms ahead of local time (max offset {max_offset_ms} ms)")]
    ClockDrift {
        /// How far ahead of local wall time the remote timestamp is, in milliseconds.
        ahead_ms: u64,
        /// The configured maximum offset, in milliseconds.
        max_offset_ms: u64,
    },

    /// The logical counter of the hybrid logical clock would overflow (more than
    /// `u32::MAX` events in one millisecond, or a hostile remote timestamp).
    #[error("hybrid logical clock counter overflow")]
    ClockOverflow,

    /// A merge or write would leave more concurrent siblings in a register than its cap.
    #[error("{count} concurrent siblings exceed the cap of {cap}")]
    TooManySiblings {
        /// How many siblings the operation would have left.
        count: usize,
        /// The configured cap.
        cap: usize,
    },

    /// A dot is malformed (counter 0) or inconsistent with the causal context sent with it.
    #[error("invalid dot {dot}: {reason}")]
    InvalidDot {
        /// The offending dot.
        dot: Dot,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A local write was attempted on a read-only replica (a follower).
    #[error("replica {replica} is a read-only follower")]
    ReadOnly {
        /// The follower's id.
        replica: ReplicaId,
    },

    /// A local write was attempted on a master that stepped down because it saw a
    /// newer epoch: another replica was promoted (see the guide's "Failover and
    /// fencing"). Nothing was written; send the write to the new master.
    #[error("replica {replica} was deposed: epoch {epoch} has another master")]
    Deposed {
        /// The deposed replica's id.
        replica: ReplicaId,
        /// The newer epoch it saw.
        epoch: u64,
    },

    /// A local write was attempted on a master–follower master that has not heard
    /// from a majority of the replicas (itself included) within its lease
    /// ([`Config::master_lease_ms`](crate::sync::Config::master_lease_ms)): it may be
    /// on the minority side of a partition, so it takes no writes. Nothing was written.
    #[error("replica {replica} has no quorum: {answered} of the {needed} replicas needed answered within the lease")]
    NoQuorum {
        /// The master's id.
        replica: ReplicaId,
        /// How many replicas (itself included) answered within the lease.
        answered: usize,
        /// How many make a majority.
        needed: usize,
    },

    /// A local write was attempted on a newly promoted master–follower master that is
    /// still waiting out the lease a previous master may hold (until `until_ms` of
    /// its time source's monotonic clock, [`TimeSource::monotonic_ms`], or until a
    /// majority has answered in its epoch if `until_ms` is `None`). Nothing was
    /// written; retry after the wait.
    ///
    /// [`TimeSource::monotonic_ms`]: crate::hlc::TimeSource::monotonic_ms
    #[error("replica {replica} waits out the previous master's lease (until {until_ms:?})")]
    FencingWait {
        /// The new master's id.
        replica: ReplicaId,
        /// When the wait ends, once known (monotonic ms).
        until_ms: Option<u64>,
    },

    /// A message carrying a delta was sent in an epoch older than the receiver's
    /// (by a deposed master, or a replica that has not yet heard of the latest
    /// promotion). It was refused whole and nothing changed; the sender adopts the
    /// newer epoch from the receiver's next message and its writes then flow again.
    #[error("message from {from} is of epoch {epoch}, older than this replica's {current}")]
    StaleEpoch {
        /// The sender.
        from: ReplicaId,
        /// The epoch the message was sent in.
        epoch: u64,
        /// The receiver's epoch.
        current: u64,
    },

    /// An epoch was refused: a peer's epoch too far ahead of this replica's (see
    /// [`Config::max_epoch_ahead`](crate::sync::Config::max_epoch_ahead)), or a
    /// promotion to an epoch not above the current one. Nothing changed.
    #[error("invalid epoch {epoch}: {reason}")]
    InvalidEpoch {
        /// The epoch refused.
        epoch: u64,
        /// Why.
        reason: &'static str,
    },

    /// A failover coordinator refused to start a planned switchover (see
    /// [`Coordinator::switchover`](crate::ops::failover::Coordinator::switchover)).
    #[error("switchover to {target} refused: {reason}")]
    SwitchoverRefused {
        /// The replica the switchover was to promote.
        target: ReplicaId,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A message came from a replica that is not in the configured peer set.
    #[error("message from unknown peer {peer}")]
    UnknownPeer {
        /// The sender named in the message.
        peer: ReplicaId,
    },

    /// A message is larger than the configured limit (in bytes).
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// The size of the message, in bytes.
        size: usize,
        /// The configured limit, in bytes.
        limit: usize,
    },

    /// A message holds more entries (keys, dots, siblings, clock entries) than allowed.
    #[error("message holds {count} {what}, more than the limit of {limit}")]
    TooManyEntries {
        /// What was counted.
        what: &'static str,
        /// How many the message holds: when the decoder stopped at the first one past
        /// the limit (see [`wire::Budget`](crate::wire::Budget)), that one's number.
        count: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A message uses a protocol version this build does not speak.
    #[error("unsupported protocol version {version} (this build speaks {supported})")]
    UnsupportedVersion {
        /// The version named in the message.
        version: u32,
        /// The version this build speaks.
        supported: u32,
    },

    /// A message could not be decoded (malformed JSON or wrong shape).
    #[error("malformed message: {reason}")]
    Decode {
        /// The decoder's description of the problem.
        reason: String,
    },

    /// A message is well formed but its contents contradict each other or the protocol.
    #[error("invalid message: {reason}")]
    InvalidMessage {
        /// What is wrong with it.
        reason: String,
    },

    /// A read with a session token was refused: this replica has not yet seen every
    /// write the token names (it lags by `missing` events).
    #[error("replica has not caught up with the session token (events missing: {missing})")]
    NotCaughtUp {
        /// How many events named by the token this replica has not seen.
        missing: u64,
    },

    /// The node's counter lease could not be read or recorded (see
    /// [`LeaseStore`](crate::sync::LeaseStore)); the write that needed it changed
    /// nothing.
    #[error("counter lease: {reason}")]
    Lease {
        /// What failed.
        reason: String,
    },

    /// A write was refused because its key or value could not travel: JSON has no
    /// NaN or infinities, a map inside a value must have string or integer keys, and
    /// a key or value whose `Serialize` fails cannot travel at all. Nothing changed.
    #[error("cannot be encoded: {reason}")]
    Unencodable {
        /// What could not be encoded.
        reason: String,
    },

    /// An engine configuration is inconsistent (see `Config::validate`), or an alert
    /// rule is (see `ops::alert::Rule::validate`).
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// Which setting is wrong, and why.
        reason: String,
    },

    /// A snapshot cannot be restored (wrong shape, or it belongs to another replica).
    #[error("invalid snapshot: {reason}")]
    InvalidSnapshot {
        /// What is wrong with it.
        reason: String,
    },
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::Decode {
            reason: err.to_string(),
        }
    }
}
