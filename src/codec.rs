//! Layer 3, the codec: the one home of the wire and snapshot formats ([`wire`]: the
//! versioned envelope in JSON and binary, snapshots, decoding with limits), the
//! decoding budget every type's `Deserialize` charges (`budget`), and the check that a
//! value or key will travel before a write accepts it (`probe`).

pub(crate) mod budget;
pub(crate) mod probe;
pub mod wire;
