//! The wire format: a versioned JSON envelope, and the checks applied before a byte of
//! it reaches the state.
//!
//! A message is one JSON object (`serde_json`): `{"v":1,"from":…,"to":…,"clock":{…},
//! "delta":{…},"reply":true}`. Inside a delta, replica ids are listed once in a table
//! (`"r"`) and every dot names its replica by index, so ids do not repeat per key.
//! Decoding checks, in order: the size limit (before parsing), the version (before the
//! body is interpreted), then the shape; the engine then validates the contents.
//!
//! ```
//! use concord::sync::{Message, PROTOCOL_VERSION};
//! use concord::{wire, Error, OrMap, PnCounter, ReplicaId, VectorClock};
//!
//! let msg: Message<OrMap<String, PnCounter>> = Message {
//!     v: PROTOCOL_VERSION,
//!     from: ReplicaId::from_u128(1),
//!     to: ReplicaId::from_u128(2),
//!     inc: ReplicaId::from_u128(1),
//!     clock: VectorClock::new(),
//!     delta: None,
//!     base: VectorClock::new(),
//!     reply: true,
//! };
//! let bytes = wire::encode(&msg);
//! assert_eq!(wire::decode::<OrMap<String, PnCounter>>(&bytes, 1 << 20)?, msg);
//! assert!(matches!(
//!     wire::decode::<OrMap<String, PnCounter>>(&bytes, 10),
//!     Err(Error::MessageTooLarge { .. })
//! ));
//! # Ok::<(), concord::Error>(())
//! ```

use serde::Deserialize;

use crate::causal::Crdt;
use crate::error::{Error, Result};
use crate::sync::{Message, PROTOCOL_VERSION};

/// Encodes a message as JSON bytes.
pub fn encode<T: Crdt>(msg: &Message<T>) -> Vec<u8> {
    serde_json::to_vec(msg).expect("concord messages always serialize")
}

/// Decodes a message, refusing anything larger than `max_bytes` before parsing it and
/// any version other than [`PROTOCOL_VERSION`] before interpreting its body.
///
/// # Errors
///
/// [`Error::MessageTooLarge`], [`Error::UnsupportedVersion`], [`Error::Decode`].
pub fn decode<T: Crdt>(bytes: &[u8], max_bytes: usize) -> Result<Message<T>> {
    if bytes.len() > max_bytes {
        return Err(Error::MessageTooLarge {
            size: bytes.len(),
            limit: max_bytes,
        });
    }
    #[derive(Deserialize)]
    struct Probe {
        v: u32,
    }
    let probe: Probe = serde_json::from_slice(bytes)?;
    if probe.v != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion {
            version: probe.v,
            supported: PROTOCOL_VERSION,
        });
    }
    Ok(serde_json::from_slice(bytes)?)
}
