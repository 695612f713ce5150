//! The wire format: a versioned JSON envelope, and the checks applied before a byte of
//! it reaches the state.
//!
//! A message is one JSON object (`serde_json`). Version 2, the current one:
//! `{"v":2,"vmax":2,"from":…,"to":…,"inc":…,"seen":{…},"delta":{…},"chunk":{…},
//! "reply":true}`; version 1, which this build still reads and writes for peers that
//! have not upgraded: `{"v":1,"from":…,"to":…,"inc":…,"clock":{…},"delta":{…},
//! "base":{…},"reply":true}` (see [`PROTOCOL_VERSION`] for what changed). Inside a
//! delta, replica ids are listed once in a table (`"r"`) and every dot names its
//! replica by index, so ids do not repeat per key. Decoding checks, in order: the size
//! limit (before parsing), the version (before the body is interpreted), then the
//! shape; the engine then validates the contents.
//!
//! ```
//! use concord::sync::{Message, PROTOCOL_VERSION};
//! use concord::{wire, CausalContext, Error, OrMap, PnCounter, ReplicaId};
//!
//! let msg: Message<OrMap<String, PnCounter>> = Message {
//!     v: PROTOCOL_VERSION,
//!     vmax: PROTOCOL_VERSION,
//!     from: ReplicaId::from_u128(1),
//!     to: ReplicaId::from_u128(2),
//!     inc: ReplicaId::from_u128(1),
//!     seen: CausalContext::new(),
//!     delta: None,
//!     base: CausalContext::new(),
//!     chunk: None,
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

use serde::{Deserialize, Serialize};

use crate::causal::Crdt;
use crate::clock::{CausalContext, VectorClock};
use crate::error::{Error, Result};
use crate::id::ReplicaId;
use crate::sync::{Chunk, Message, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION};

#[derive(Serialize)]
#[serde(bound = "T: Serialize")]
struct V1Out<'a, T> {
    v: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    vmax: Option<u32>,
    from: ReplicaId,
    to: ReplicaId,
    inc: ReplicaId,
    clock: VectorClock,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a T>,
    #[serde(skip_serializing_if = "VectorClock::is_empty")]
    base: VectorClock,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    reply: bool,
}

#[derive(Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
struct V1In<T> {
    #[serde(default)]
    vmax: Option<u32>,
    from: ReplicaId,
    to: ReplicaId,
    inc: ReplicaId,
    clock: VectorClock,
    #[serde(default)]
    delta: Option<T>,
    #[serde(default)]
    base: VectorClock,
    #[serde(default)]
    reply: bool,
}

#[derive(Serialize)]
#[serde(bound = "T: Serialize")]
struct V2Out<'a, T> {
    v: u32,
    vmax: u32,
    from: ReplicaId,
    to: ReplicaId,
    inc: ReplicaId,
    seen: &'a CausalContext,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a T>,
    #[serde(skip_serializing_if = "CausalContext::is_empty")]
    base: &'a CausalContext,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunk: Option<Chunk>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    reply: bool,
}

#[derive(Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
struct V2In<T> {
    vmax: u32,
    from: ReplicaId,
    to: ReplicaId,
    inc: ReplicaId,
    seen: CausalContext,
    #[serde(default)]
    delta: Option<T>,
    #[serde(default)]
    base: CausalContext,
    #[serde(default)]
    chunk: Option<Chunk>,
    #[serde(default)]
    reply: bool,
}

/// Encodes a message as JSON bytes, in the version it names (`msg.v`).
///
/// A version-1 message carries the gap-free prefix of `seen` and of `base` (version
/// 1 has no way to name gaps) and no chunk information; the engine never writes one
/// that needs more.
///
/// Infallible, because nothing in a state of the library's types can fail to
/// serialize: map keys of any shape travel (as `[key, value]` pairs when they are not
/// JSON object keys), every value and key a write stores passed the write-time check
/// (no NaN or infinity, no non-string keys inside a value: see
/// [`Op::check`](crate::Op::check)), and a state decoded from a peer came from JSON.
/// A value type of your own must keep the same promise for its
/// [`DotStore::Encoded`](crate::DotStore::Encoded) form; one that breaks it makes
/// this panic.
pub fn encode<T: Crdt>(msg: &Message<T>) -> Vec<u8> {
    let written = if msg.v <= 1 {
        serde_json::to_vec(&V1Out {
            v: msg.v,
            vmax: (msg.vmax != msg.v).then_some(msg.vmax),
            from: msg.from,
            to: msg.to,
            inc: msg.inc,
            clock: msg.seen.clock(),
            delta: msg.delta.as_ref(),
            base: msg.base.clock(),
            reply: msg.reply,
        })
    } else {
        serde_json::to_vec(&V2Out {
            v: msg.v,
            vmax: msg.vmax,
            from: msg.from,
            to: msg.to,
            inc: msg.inc,
            seen: &msg.seen,
            delta: msg.delta.as_ref(),
            base: &msg.base,
            chunk: msg.chunk,
            reply: msg.reply,
        })
    };
    written.expect("a value type whose encoded form does not serialize (see DotStore::Encoded)")
}

/// Decodes a message of any version this build speaks, refusing anything larger than
/// `max_bytes` before parsing it and an unknown version before interpreting its body.
///
/// # Errors
///
/// [`Error::MessageTooLarge`], [`Error::UnsupportedVersion`], [`Error::Decode`].
pub fn decode<T: Crdt>(bytes: &[u8], max_bytes: usize) -> Result<Message<T>> {
    decode_up_to(bytes, max_bytes, PROTOCOL_VERSION)
}

/// [`decode`], speaking versions up to `newest` only (an engine held back to an older
/// version during a rolling upgrade refuses what it would not have understood).
///
/// # Errors
///
/// As [`decode`].
pub fn decode_up_to<T: Crdt>(bytes: &[u8], max_bytes: usize, newest: u32) -> Result<Message<T>> {
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
    let newest = newest.min(PROTOCOL_VERSION);
    if probe.v < OLDEST_PROTOCOL_VERSION || probe.v > newest {
        return Err(Error::UnsupportedVersion {
            version: probe.v,
            supported: newest,
        });
    }
    if probe.v == 1 {
        let m: V1In<T> = serde_json::from_slice(bytes)?;
        Ok(Message {
            v: 1,
            vmax: m.vmax.unwrap_or(1),
            from: m.from,
            to: m.to,
            inc: m.inc,
            seen: CausalContext::from(&m.clock),
            delta: m.delta,
            base: CausalContext::from(&m.base),
            chunk: None,
            reply: m.reply,
        })
    } else {
        let m: V2In<T> = serde_json::from_slice(bytes)?;
        Ok(Message {
            v: probe.v,
            vmax: m.vmax,
            from: m.from,
            to: m.to,
            inc: m.inc,
            seen: m.seen,
            delta: m.delta,
            base: m.base,
            chunk: m.chunk,
            reply: m.reply,
        })
    }
}
