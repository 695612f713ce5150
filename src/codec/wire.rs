//! The wire format: versioned messages in two forms, binary (protocol version 4) and
//! JSON (versions 1–3, and any version for debugging), and the checks applied before
//! a byte of them reaches the state.
//!
//! **Binary** (version 4, what two engines of this build speak): the first byte is
//! [`BINARY_MESSAGE`] (`0xC0`), then the message in [postcard]'s serde format, fields
//! in a fixed order: the envelope `v, vmax, from, to, inc`, then `epoch`, `lead`,
//! `echo`, `seen`, `delta`, `base`, `chunk`, `reply`. Integers are varints (zigzag
//! for signed ones), strings and lists carry a varint length, an option one tag byte,
//! a replica id 17 bytes (its length, 16, then its bytes); no field names. Inside a delta, replica ids are listed
//! once in a table (`r`) and every dot names its replica by index, so ids do not
//! repeat per key; a causal context (the delta's and `seen`/`base`) lists each
//! replica's ranges relative to one another, a lone counter as one varint
//! `distance << 1`, a run as `distance << 1 | 1` and its length − 1.
//!
//! **JSON**: one object (`serde_json`). Version 3:
//! `{"v":3,"vmax":3,"from":…,"to":…,"inc":…,"epoch":4,"lead":…,"echo":…,"seen":{…},
//! "delta":{…},"chunk":{…},"reply":true}` (`epoch` is left out when 0, `lead` and
//! `echo` when absent); version 2 is the same without `epoch`, `lead` and `echo`
//! (a message of version 1 or 2 never carries them, and one that does is read as an
//! older reader reads it: they are unknown fields, skipped whatever they hold; in
//! version 3 a non-integer or repeated one is refused);
//! version 1: `{"v":1,"from":…,"to":…,"inc":…,"clock":{…},"delta":{…},
//! "base":{…},"reply":true}` (see [`PROTOCOL_VERSION`] for what changed).
//! [`encode_json`] renders a version-4 message in version 3's layout with `"v":4`,
//! and [`decode`] reads that too.
//!
//! [`encode`] writes a message in the form of its version; [`decode`] tells the forms
//! apart by the first byte (JSON starts with `{` or whitespace, and `0xC0` is no
//! UTF-8 byte at all) before parsing. An engine writes the newest version both it
//! and the peer speak, so a version-4 build talks JSON to an older peer and binary
//! once both speak 4 (see the guide's "Rolling upgrades"). Durable state has a
//! binary form too: [`encode_snapshot`] (first byte [`BINARY_SNAPSHOT`], then the
//! format, see [`SNAPSHOT_VERSION`]; deflated past a few hundred bytes) and
//! [`decode_snapshot`], which reads JSON snapshots as well.
//!
//! *Why postcard, not a codec of our own*: it is plain serde, so one set of
//! `Serialize`/`Deserialize` impls writes both forms, and the replica table, the
//! relative context spans, the refusal of repeated keys and the decoding budget's
//! counters (called by the visitors, whatever the format) carry over unchanged; it
//! writes varints and no names, borrows strings from the input, never trusts a length
//! prefix for more than the bytes left, and is small, `no_std` and widely used. It is
//! not self-describing, so the types here branch on
//! [`is_human_readable`](serde::Serializer::is_human_readable) where JSON relied on
//! that (a span is a number or a pair in JSON; a map's entries an object or pairs;
//! optional fields are left out of JSON, written in order in binary). The same holds
//! for a value type of your own stored in a register: it must read back from a
//! format that is not self-describing (no `#[serde(untagged)]`, `flatten`,
//! `skip_serializing_if` or `deserialize_any`, as in `serde_json::Value`). One that
//! does not still replicates: [`encode`] checks every message that carries a delta by
//! decoding it back (unless [`Crdt::binary_faithful`] vouches for the state type:
//! the library's own types over strings, integers and the like), and writes one that does not read back as written in JSON, at
//! version 3 (which every peer speaking 4 reads), and [`encode_snapshot`] falls back
//! to the JSON form the same way; such values cost JSON's size on the wire, so an
//! engine holding many is better kept at
//! [`Config::protocol_version`](crate::sync::Config) 3, which stays JSON. The binary decoder has no nesting limit (JSON's stops at 128
//! levels): the library's types nest only as deep as their type says, but a
//! *recursive* value type of your own (a tree of itself) would let a peer nest deep
//! enough to overflow the stack; keep such a type at version 3 too. Values must keep to JSON's rules as well (see
//! [`Op::check`](crate::Op::check)): JSON remains the form for older peers and for
//! debugging.
//!
//! Decoding is one pass, and checks, in order: the size limit (before parsing), the
//! version (as soon as it is read), the envelope (`v`, `vmax`, `from`, `to`, `inc`,
//! first in both forms as this library writes them: an engine refuses a sender that
//! is no peer, or a message for someone else, before a byte of the body is decoded),
//! then the body under a [`Budget`] (entries and context ranges counted as they are
//! read, so a body past the limits is refused having allocated no more than them; a
//! length prefix of the library's own lists, maps, contexts and replica tables
//! reserves at most a few hundred elements, whatever it claims). Binary
//! input that is cut short, has bytes left over, or repeats a map key or a replica is
//! a [`Error::Decode`]. The engine then validates the contents. See the guide's
//! "Hostile peers".
//!
//! What refusing costs: memory stays within the limits, but a limit counts items, not
//! bytes, and items are denser on the wire than in memory. A context range is one
//! byte on the wire at the least (a lone counter) and 16 in memory, and each of a
//! message's contexts (`seen`, `base`, the delta's, a nested value's) may hold
//! [`Limits::max_context_ranges`] of them, so a message of nothing but ranges holds up
//! to 16 times its size before it is refused (twice that for a moment while a list
//! grows): keep `max_message_bytes` in proportion. Collections inside a value type of
//! your own (a `Vec` in a register) are read by serde's own implementations, which
//! preallocate up to 1 MiB whatever the length prefix claims, and charge nothing to the
//! budget per element: a list of zero-sized elements (`Vec<()>`) costs no bytes per
//! element, so a few bytes can claim 2^60 of them and keep the decoder busy counting;
//! do not store zero-sized elements in a list of a value type that peers you do not
//! trust can write.
//!
//! [postcard]: https://docs.rs/postcard
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
//!     epoch: 0,
//!     lead: None,
//!     echo: None,
//! };
//! let bytes = wire::encode(&msg);
//! assert_eq!(wire::decode::<OrMap<String, PnCounter>>(&bytes, 1 << 20)?, msg);
//! assert!(matches!(
//!     wire::decode::<OrMap<String, PnCounter>>(&bytes, 10),
//!     Err(Error::MessageTooLarge { .. })
//! ));
//! # Ok::<(), concord::Error>(())
//! ```

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::causal::{Crdt, Limits};
use crate::clock::{CausalContext, VectorClock};
use crate::error::{Error, Result};
use crate::id::ReplicaId;
use crate::sync::{Chunk, Message, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION};

pub(crate) use super::budget;

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

#[derive(Serialize)]
#[serde(bound = "T: Serialize")]
struct V2Out<'a, T> {
    v: u32,
    vmax: u32,
    from: ReplicaId,
    to: ReplicaId,
    inc: ReplicaId,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lead: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    echo: Option<u64>,
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

/// Encodes a message in the form of the version it names (`msg.v`): binary from
/// [`BINARY_VERSION`] on, JSON before.
///
/// A version-1 message carries the gap-free prefix of `seen` and of `base` (version
/// 1 has no way to name gaps) and no chunk information; the engine never writes one
/// that needs more. Messages of versions 1 and 2 carry no `epoch`, `lead` or `echo`
/// (the engine in master–follower mode speaks version 3 only).
///
/// A binary message whose delta would not read back as written (a value type of your
/// own that does not serialize in binary, such as one with `#[serde(flatten)]`, or
/// one that needs a self-describing format to read back: `serde_json::Value`,
/// `#[serde(untagged)]`, `skip_serializing_if`) is written in JSON at version 3
/// instead, keeping its `vmax`: every peer that speaks 4 reads 3 as well, so such a
/// value costs JSON's size on the wire but never stops a link. A message with a delta
/// is checked by decoding it back (as its receiver will) and comparing, unless the
/// state type says every value of it reads back ([`Crdt::binary_faithful`]: the
/// library's maps, registers and counters of strings, integers, booleans, characters
/// and byte vectors), which skips the decode; one without a delta holds only the
/// library's own types and is not checked.
///
/// Never panics for the library's types: map keys of any shape travel (as
/// `[key, value]` pairs in JSON when they are not JSON object keys), and every value
/// and key a write stores passed the write-time check (no NaN or infinity, no
/// non-string keys inside a value: see [`Op::check`](crate::Op::check)). A value type
/// of your own whose [`DotStore::Encoded`](crate::DotStore::Encoded) form fails to
/// serialize in JSON as well makes this panic.
pub fn encode<T: Crdt>(msg: &Message<T>) -> Vec<u8> {
    if msg.v >= BINARY_VERSION {
        match encode_binary(msg) {
            Some(bytes) => bytes,
            None => json(msg, JSON_FALLBACK_VERSION),
        }
    } else {
        json(msg, msg.v)
    }
}

/// The version a message that cannot travel in binary is written in (see [`encode`]).
const JSON_FALLBACK_VERSION: u32 = BINARY_VERSION - 1;

/// Encodes a message as JSON whatever its version: what [`encode`] writes for
/// versions 1 to 3, and a readable rendering of a binary (version 4) message for
/// debugging, which [`decode`] reads back as well (version 4 in JSON is version 3's
/// layout with `"v":4`).
///
/// Panics only as [`encode`] does.
pub fn encode_json<T: Crdt>(msg: &Message<T>) -> Vec<u8> {
    json(msg, msg.v)
}

/// `msg` in JSON, written as version `v`.
fn json<T: Crdt>(msg: &Message<T>, v: u32) -> Vec<u8> {
    let _version = EncodingVersion::set(v);
    let written = if v <= 1 {
        serde_json::to_vec(&V1Out {
            v,
            vmax: (msg.vmax != v).then_some(msg.vmax),
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
            v,
            vmax: msg.vmax,
            from: msg.from,
            to: msg.to,
            inc: msg.inc,
            epoch: (v >= 3 && msg.epoch != 0).then_some(msg.epoch),
            lead: msg.lead.filter(|_| v >= 3),
            echo: msg.echo.filter(|_| v >= 3),
            seen: &msg.seen,
            delta: msg.delta.as_ref(),
            base: &msg.base,
            chunk: msg.chunk,
            reply: msg.reply,
        })
    };
    written.expect("a value type whose encoded form does not serialize (see DotStore::Encoded)")
}

/// The first byte of a binary message. It can never start JSON (which starts with `{`
/// or whitespace, and is UTF-8: `0xC0` is no UTF-8 byte at all), so [`decode`] tells
/// the forms apart before parsing.
pub const BINARY_MESSAGE: u8 = 0xC0;

/// The first byte of a binary snapshot ([`encode_snapshot`]); like
/// [`BINARY_MESSAGE`], never the start of JSON, and not that of a message either.
pub const BINARY_SNAPSHOT: u8 = 0xC1;

/// The first protocol version written in binary: [`encode`] writes versions from it
/// on in binary, older ones in JSON.
pub const BINARY_VERSION: u32 = 4;

/// The newest version of the binary snapshot form, written after
/// [`BINARY_SNAPSHOT`] (JSON snapshots carry none: they are told apart by their first
/// byte). Format 1: the value's binary serde form as is; format 2: its length (a
/// varint), then that form compressed with deflate (RFC 1951). [`encode_snapshot`]
/// writes 2 for values of [`COMPRESS_FROM`] bytes and more when it is smaller, 1
/// otherwise; [`decode_snapshot`] reads both.
pub const SNAPSHOT_VERSION: u32 = 2;

/// The size of a value's binary form from which [`encode_snapshot`] tries deflate.
pub const COMPRESS_FROM: usize = 256;

/// The deflate level [`encode_snapshot`] writes with. On a 100,000-key map it gives
/// 4.22 bytes a key with two-byte values (level 1: 5.22) and 5.64 with
/// fourteen-byte ones (5.91), for about a fifth more time than level 1; levels above
/// 4 gain under 2% more for twice the time.
const DEFLATE_LEVEL: u8 = 3;

/// A message in the binary form: the envelope first, in a fixed order, so that it is
/// read and checked before a byte of the body.
#[derive(Serialize)]
#[serde(bound = "T: Serialize")]
struct BinaryOut<'a, T> {
    v: u32,
    vmax: u32,
    from: ReplicaId,
    to: ReplicaId,
    inc: ReplicaId,
    epoch: u64,
    lead: Option<u64>,
    echo: Option<u64>,
    seen: &'a CausalContext,
    delta: Option<&'a T>,
    base: &'a CausalContext,
    chunk: Option<Chunk>,
    reply: bool,
}

/// The number of fields of [`BinaryOut`].
const BINARY_FIELDS: usize = 13;

/// `msg` in binary, or `None` if its delta does not serialize in binary or would not
/// read back as written (see [`encode`]).
fn encode_binary<T: Crdt>(msg: &Message<T>) -> Option<Vec<u8>> {
    let _version = EncodingVersion::set(msg.v);
    let out = BinaryOut {
        v: msg.v,
        vmax: msg.vmax,
        from: msg.from,
        to: msg.to,
        inc: msg.inc,
        epoch: msg.epoch,
        lead: msg.lead,
        echo: msg.echo,
        seen: &msg.seen,
        delta: msg.delta.as_ref(),
        base: &msg.base,
        chunk: msg.chunk,
        reply: msg.reply,
    };
    let bytes = postcard::to_extend(&out, vec![BINARY_MESSAGE]).ok()?;
    if msg.delta.is_some() && !T::binary_faithful() {
        let back = parse::<T>(&bytes, None, budget::Limits::NONE, |_| Ok(())).ok()?;
        let same = back.delta.as_ref().and_then(Option::as_ref) == msg.delta.as_ref()
            && back.seen.as_ref() == Some(&msg.seen)
            && matches!(&back.base, Some(Base::Context(base)) if *base == msg.base)
            && back.chunk == Some(msg.chunk)
            && back.reply == Some(msg.reply);
        if !same {
            return None;
        }
    }
    Some(bytes)
}

/// True if `T` is one of the types whose binary form reads back exactly as written,
/// whatever the value: strings, booleans, characters, fixed-width integers and byte
/// vectors. Floats are not among them (a NaN a peer sent would not compare equal to
/// itself), nor `usize`/`isize` (a 64-bit value does not read back on a 32-bit peer),
/// nor any type of the application's own (it may need a self-describing format). Told
/// apart by name, which is exact for these types within one build.
pub(crate) fn faithful_scalar<T: ?Sized>() -> bool {
    use std::any::type_name;
    let name = type_name::<T>();
    [
        type_name::<String>(),
        type_name::<bool>(),
        type_name::<char>(),
        type_name::<u8>(),
        type_name::<u16>(),
        type_name::<u32>(),
        type_name::<u64>(),
        type_name::<u128>(),
        type_name::<i8>(),
        type_name::<i16>(),
        type_name::<i32>(),
        type_name::<i64>(),
        type_name::<i128>(),
        type_name::<Vec<u8>>(),
    ]
    .contains(&name)
}

/// Encodes a durable value (an engine [`Snapshot`](crate::sync::Snapshot), or a
/// replicated state of its own) in the binary snapshot form: [`BINARY_SNAPSHOT`],
/// the format (a varint, see [`SNAPSHOT_VERSION`]), then the value in the binary serde
/// form that messages use, deflated when that makes it smaller (from
/// [`COMPRESS_FROM`] bytes). Read it with [`decode_snapshot`], which reads JSON too.
///
/// ```
/// use concord::sync::{Config, Snapshot, SyncEngine};
/// use concord::{wire, ManualClock, OrMap, PnCounter, ReplicaId};
///
/// type Map = OrMap<String, PnCounter>;
/// let id = ReplicaId::from_u128(1);
/// let mut a = SyncEngine::new(id, Map::new(), ManualClock::new(0), Config::default());
/// a.update(|m, hlc| m.increment("visits".into(), 1, hlc))?;
/// let snapshot = a.snapshot()?;
/// let saved = wire::encode_snapshot(&snapshot);
/// assert_eq!(saved[0], wire::BINARY_SNAPSHOT);
/// assert_eq!(wire::decode_snapshot::<Snapshot<Map>>(&saved)?, snapshot);
/// // JSON written before the binary form existed still reads.
/// let old = serde_json::to_vec(&snapshot)?;
/// assert_eq!(wire::decode_snapshot::<Snapshot<Map>>(&old)?, snapshot);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// A value that does not read back from the binary form as written (a value type of
/// your own that needs a self-describing format, such as `serde_json::Value`, or one
/// with `#[serde(flatten)]`, `untagged` or `skip_serializing_if`) is written in the
/// JSON form instead, which [`decode_snapshot`] reads as well: every value is decoded
/// back and compared before its binary form is returned, so a snapshot never becomes
/// unreadable.
///
/// Panics only if the value serializes in neither form (a value type of your own whose
/// `Serialize` fails; no value of the library's types, see [`encode`]).
pub fn encode_snapshot<S: Serialize + DeserializeOwned + PartialEq>(value: &S) -> Vec<u8> {
    let plain = postcard::to_extend(value, vec![BINARY_SNAPSHOT, 1])
        .ok()
        .filter(|plain| read_binary::<S>(&plain[2..]).is_ok_and(|back| back == *value));
    let Some(plain) = plain else {
        return serde_json::to_vec(value)
            .expect("a value type that serializes neither in binary nor in JSON");
    };
    let body = &plain[2..];
    if body.len() < COMPRESS_FROM {
        return plain;
    }
    let mut out = vec![BINARY_SNAPSHOT, 2];
    write_varint(&mut out, body.len() as u64);
    out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(body, DEFLATE_LEVEL));
    if out.len() < plain.len() {
        out
    } else {
        plain
    }
}

/// A value in the binary serde form, taking every byte.
fn read_binary<D: DeserializeOwned>(body: &[u8]) -> Result<D> {
    budget::take_reason();
    let mut de = postcard::Deserializer::from_bytes(body);
    let read = D::deserialize(&mut de).and_then(|v| Ok((v, de.finalize()?)));
    match read {
        Ok((value, [])) => Ok(value),
        Ok(_) => Err(Error::Decode {
            reason: "binary snapshot: trailing bytes".into(),
        }),
        Err(e) => Err(binary_error(e)),
    }
}

fn write_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads what [`encode_snapshot`] wrote, or the JSON form (`serde_json`) of the same
/// value, told apart by the first byte. Nothing is charged to a decoding budget (a
/// snapshot is the replica's own), nothing read is preallocated past what the bytes
/// can hold, and malformed input is an error, never a panic.
///
/// A deflated snapshot is inflated up to the length it states, and no further: this
/// trusts the snapshot to say how large it is, so a forged one (a few megabytes stating
/// hundreds) can make it allocate that much before refusing it. That is fine for the
/// replica's own files; for bytes from elsewhere, use [`decode_snapshot_with`], which
/// refuses to inflate past a maximum of your choice.
///
/// # Errors
///
/// [`Error::Decode`] (malformed, a message rather than a snapshot, or trailing
/// bytes), [`Error::InvalidSnapshot`] (a binary snapshot version this build does not
/// read).
pub fn decode_snapshot<D: DeserializeOwned>(bytes: &[u8]) -> Result<D> {
    decode_snapshot_with(bytes, usize::MAX)
}

/// [`decode_snapshot`], refusing a deflated snapshot that states more than
/// `max_inflated` bytes before inflating anything (and inflating no more than it
/// states): memory stays within `max_inflated` plus what the value itself takes.
///
/// ```
/// use concord::{wire, Error, Hlc, ManualClock, OrMap, PnCounter, ReplicaId};
///
/// type Map = OrMap<String, PnCounter>;
/// let mut hlc = Hlc::new(ReplicaId::from_u128(1), ManualClock::new(0));
/// let mut m = Map::new();
/// for i in 0..100 {
///     m.increment(format!("key {i}"), 1, &mut hlc)?;
/// }
/// let saved = wire::encode_snapshot(&m);
/// assert_eq!(saved[1], 2, "deflated");
/// assert_eq!(wire::decode_snapshot_with::<Map>(&saved, 1 << 20)?, m);
/// assert!(matches!(wire::decode_snapshot_with::<Map>(&saved, 100), Err(Error::Decode { .. })));
/// # Ok::<(), Error>(())
/// ```
///
/// # Errors
///
/// As [`decode_snapshot`].
pub fn decode_snapshot_with<D: DeserializeOwned>(bytes: &[u8], max_inflated: usize) -> Result<D> {
    match bytes.first() {
        Some(&BINARY_SNAPSHOT) => {
            let (version, body) = read_varint(&bytes[1..]).ok_or_else(|| Error::Decode {
                reason: "binary snapshot: no version".into(),
            })?;
            let inflated;
            let body = match version {
                1 => body,
                2 => {
                    let (len, deflated) = read_varint(body).ok_or_else(|| Error::Decode {
                        reason: "binary snapshot: no length".into(),
                    })?;
                    // The stated length, within the caller's maximum, bounds what is
                    // inflated: a corrupt stream cannot grow past it.
                    let limit = usize::try_from(len).unwrap_or(usize::MAX);
                    if limit > max_inflated {
                        return Err(Error::Decode {
                            reason: format!(
                                "binary snapshot: {len} bytes stated, more than the maximum of {max_inflated}"
                            ),
                        });
                    }
                    inflated = miniz_oxide::inflate::decompress_to_vec_with_limit(deflated, limit)
                        .map_err(|e| Error::Decode {
                            reason: format!("binary snapshot: deflate stream: {e}"),
                        })?;
                    if inflated.len() as u64 != len {
                        return Err(Error::Decode {
                            reason: format!(
                                "binary snapshot: {} bytes inflated, {len} stated",
                                inflated.len()
                            ),
                        });
                    }
                    &inflated[..]
                }
                _ => {
                    return Err(Error::InvalidSnapshot {
                        reason: format!(
                            "binary snapshot version {version}; this build reads 1 to {SNAPSHOT_VERSION}"
                        ),
                    })
                }
            };
            read_binary(body)
        }
        Some(&BINARY_MESSAGE) => Err(Error::Decode {
            reason: "a binary message, not a snapshot".into(),
        }),
        _ => Ok(serde_json::from_slice(bytes)?),
    }
}

/// A varint (7 bits a byte, least significant first), and what follows it; `None` if
/// it is cut short, longer than it needs to be (a last byte of 0 after the first), or
/// past 64 bits.
fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut n = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(b & 0x7f);
        // The tenth byte holds the 64th bit only.
        if i == 9 && bits > 1 {
            return None;
        }
        n |= bits << (7 * i);
        if b & 0x80 == 0 {
            return (i == 0 || b != 0).then(|| (n, &bytes[i + 1..]));
        }
    }
    None
}

/// The error for a binary decoder's failure: the visitor's reason when it gave one.
fn binary_error(e: postcard::Error) -> Error {
    Error::Decode {
        reason: match budget::take_reason() {
            Some(reason) => reason,
            None => format!("binary: {e}"),
        },
    }
}

thread_local! {
    /// The protocol version [`encode`] is writing (the newest outside it: snapshots).
    static ENCODING: std::cell::Cell<u32> = const { std::cell::Cell::new(PROTOCOL_VERSION) };
}

/// The protocol version the message being encoded on this thread is written in, so
/// that a value leaves out what an older peer would refuse (a counter fold's
/// provenance before version 3); [`PROTOCOL_VERSION`] outside [`encode`].
pub(crate) fn encoding_version() -> u32 {
    ENCODING.with(|e| e.get())
}

/// Sets [`encoding_version`] until dropped (restored on panic too).
struct EncodingVersion(u32);

impl EncodingVersion {
    fn set(v: u32) -> Self {
        EncodingVersion(ENCODING.with(|e| e.replace(v)))
    }
}

impl Drop for EncodingVersion {
    fn drop(&mut self) {
        ENCODING.with(|e| e.set(self.0));
    }
}

/// The part of a message that says who sent it to whom, in which version: read, and
/// checked, before a byte of the body (contexts and delta) is decoded.
///
/// ```
/// use concord::sync::{Config, SyncEngine};
/// use concord::{wire, ManualClock, OrMap, PnCounter, ReplicaId};
///
/// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
/// let mut a = SyncEngine::new(a_id, OrMap::<String, PnCounter>::new(), ManualClock::new(0), Config::with_peers([b_id]));
/// let bytes = a.sync_with(b_id)?.encode();
/// // Route it by its address without decoding its body.
/// let envelope = wire::envelope(&bytes, 1 << 20)?;
/// assert_eq!((envelope.from, envelope.to, envelope.size), (a_id, b_id, bytes.len()));
/// # Ok::<(), concord::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The protocol version the message is written in.
    pub v: u32,
    /// The newest version its sender speaks.
    pub vmax: u32,
    /// The sender.
    pub from: ReplicaId,
    /// The addressee.
    pub to: ReplicaId,
    /// The sender's boot.
    pub inc: ReplicaId,
    /// The size of the whole message, in bytes.
    pub size: usize,
}

/// What a decoder accepts: the size and version checked before parsing and in the
/// envelope, and the limits the body is held to *while* it is decoded (the first
/// entry or range past a limit stops the decoder, so no more than the limits is ever
/// allocated, whatever the message's size).
///
/// An engine decodes with its own [`Config`](crate::sync::Config)
/// (`max_message_bytes`, `protocol_version`, `limits`, `max_clock_entries`) and
/// checks the envelope against its peers; see [`decode_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The largest message, in bytes (refused before parsing).
    pub max_bytes: usize,
    /// The newest protocol version to accept.
    pub newest: u32,
    /// Entries ([`Limits::max_entries`]) and ranges of each causal context
    /// ([`Limits::max_context_ranges`]). The sibling cap is not a decoding limit: it
    /// depends on what the receiver holds, and is applied when merging.
    pub limits: Limits,
    /// The most replicas one causal context or version vector may name.
    pub max_clock_entries: usize,
}

impl Default for Budget {
    /// The engine's defaults: 64 MiB, [`PROTOCOL_VERSION`], [`Limits::default`], 4096
    /// replicas.
    fn default() -> Self {
        Budget {
            max_bytes: 64 << 20,
            newest: PROTOCOL_VERSION,
            limits: Limits::default(),
            max_clock_entries: 4096,
        }
    }
}

impl Budget {
    fn body(&self) -> budget::Limits {
        budget::Limits {
            entries: self.limits.max_entries,
            ranges: self.limits.max_context_ranges,
            replicas: self.max_clock_entries,
        }
    }
}

/// Decodes a message of any version this build speaks, refusing anything larger than
/// `max_bytes` before parsing it, an unknown version before its body, and a body past
/// the default [`Limits`] while decoding it (see [`Budget`]; [`decode_with`] takes
/// others).
///
/// # Errors
///
/// [`Error::MessageTooLarge`], [`Error::UnsupportedVersion`],
/// [`Error::TooManyEntries`], [`Error::Decode`].
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
    let budget = Budget {
        max_bytes,
        newest,
        ..Budget::default()
    };
    decode_with(bytes, &budget, |_| Ok(()))
}

/// Decodes a message in one pass under `budget`, calling `check` on its envelope
/// before the body is decoded: an error from `check` (a sender that is no peer, a
/// message addressed to someone else) refuses the message without decoding or
/// allocating its body.
///
/// In order: the size (before parsing), the version (as soon as it is read), `check`
/// (once the envelope is complete: the fields `v`, `vmax`, `from`, `to` and `inc`,
/// which every encoder of this library writes before the body), then the body, whose
/// entries and context ranges are counted against the budget as they are read. A
/// message whose envelope fields come after its body (not one this library writes) is
/// read the same way, only its body is kept as raw text until the envelope is
/// complete.
///
/// ```
/// use concord::sync::{Config, SyncEngine};
/// use concord::{wire, Error, ManualClock, OrMap, PnCounter, ReplicaId};
///
/// type Map = OrMap<String, PnCounter>;
/// let (a_id, b_id) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
/// let mut a = SyncEngine::new(a_id, Map::new(), ManualClock::new(0), Config::with_peers([b_id]));
/// a.update(|m, hlc| m.increment("visits".into(), 1, hlc))?;
/// let bytes = a.sync_with(b_id)?.encode();
///
/// let stranger = |e: &wire::Envelope| match e.from == a_id {
///     true => Err(Error::UnknownPeer { peer: e.from }),
///     false => Ok(()),
/// };
/// let refused = wire::decode_with::<Map>(&bytes, &wire::Budget::default(), stranger);
/// assert_eq!(refused, Err(Error::UnknownPeer { peer: a_id }));
/// assert!(wire::decode_with::<Map>(&bytes, &wire::Budget::default(), |_| Ok(())).is_ok());
/// # Ok::<(), concord::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::MessageTooLarge`], [`Error::UnsupportedVersion`], whatever `check`
/// returns, [`Error::TooManyEntries`] (a body past the budget), [`Error::Decode`].
pub fn decode_with<T: Crdt>(
    bytes: &[u8],
    budget: &Budget,
    check: impl FnOnce(&Envelope) -> Result<()>,
) -> Result<Message<T>> {
    if bytes.len() > budget.max_bytes {
        return Err(Error::MessageTooLarge {
            size: bytes.len(),
            limit: budget.max_bytes,
        });
    }
    let newest = budget.newest.min(PROTOCOL_VERSION);
    let m = parse::<T>(bytes, Some(newest), budget.body(), check)?;
    let missing = |field: &str| Error::Decode {
        reason: format!("missing field `{field}`"),
    };
    let (seen, base) = if m.v == 1 {
        let clock = m.clock.ok_or_else(|| missing("clock"))?;
        let base = match m.base {
            Some(Base::Clock(c)) => CausalContext::from(&c),
            _ => CausalContext::new(),
        };
        (CausalContext::from(&clock), base)
    } else {
        let base = match m.base {
            Some(Base::Context(c)) => c,
            _ => CausalContext::new(),
        };
        (m.seen.ok_or_else(|| missing("seen"))?, base)
    };
    Ok(Message {
        v: m.v,
        vmax: m.vmax,
        from: m.from,
        to: m.to,
        inc: m.inc,
        seen,
        delta: m.delta.flatten(),
        base,
        chunk: if m.v == 1 { None } else { m.chunk.flatten() },
        reply: m.reply.unwrap_or(false),
        epoch: if m.v >= 3 { m.epoch.unwrap_or(0) } else { 0 },
        lead: if m.v >= 3 { m.lead } else { None },
        echo: if m.v >= 3 { m.echo } else { None },
    })
}

/// Reads only the envelope of a message (to route it, say), refusing anything larger
/// than `max_bytes` first; the body is not decoded. Any version is reported as
/// written: the engine that receives the message checks it.
///
/// # Errors
///
/// [`Error::MessageTooLarge`], [`Error::Decode`] (not a message, or an envelope field
/// missing).
pub fn envelope(bytes: &[u8], max_bytes: usize) -> Result<Envelope> {
    if bytes.len() > max_bytes {
        return Err(Error::MessageTooLarge {
            size: bytes.len(),
            limit: max_bytes,
        });
    }
    let mut read = None;
    let result = parse::<serde::de::IgnoredAny>(bytes, None, budget::Limits::NONE, |e| {
        read = Some(*e);
        Err(Error::Decode {
            reason: String::new(),
        })
    });
    match (read, result) {
        (Some(e), _) => Ok(e),
        (None, Err(e)) => Err(e),
        (None, Ok(_)) => unreachable!("the check runs on every message that parses"),
    }
}

/// The base of a delta: a version vector in version 1, a causal context after.
enum Base {
    Clock(VectorClock),
    Context(CausalContext),
}

/// A message's fields as read.
struct Parsed<D> {
    v: u32,
    vmax: u32,
    from: ReplicaId,
    to: ReplicaId,
    inc: ReplicaId,
    epoch: Option<u64>,
    lead: Option<u64>,
    echo: Option<u64>,
    seen: Option<CausalContext>,
    clock: Option<VectorClock>,
    base: Option<Base>,
    delta: Option<Option<D>>,
    chunk: Option<Option<Chunk>>,
    reply: Option<bool>,
}

/// Parses `bytes` in one pass: the envelope first, `check`ed (with the version, if
/// `newest` is given) before any body field is decoded, the body under `limits`.
fn parse<D: DeserializeOwned>(
    bytes: &[u8],
    newest: Option<u32>,
    limits: budget::Limits,
    check: impl FnOnce(&Envelope) -> Result<()>,
) -> Result<Parsed<D>> {
    let refusal = RefCell::new(None);
    let mut check = Some(check);
    let seed = MessageSeed::<D, _> {
        newest,
        size: bytes.len(),
        check: &mut check,
        refusal: &refusal,
        delta: PhantomData,
    };
    if bytes.first() == Some(&BINARY_MESSAGE) {
        let seed = BinarySeed::<D, _> {
            newest,
            size: bytes.len(),
            check: &mut check,
            refusal: &refusal,
            delta: PhantomData,
        };
        budget::take_reason();
        let (parsed, over) = budget::with(limits, || {
            let mut de = postcard::Deserializer::from_bytes(&bytes[1..]);
            let parsed = seed.deserialize(&mut de)?;
            Ok::<_, postcard::Error>((parsed, de.finalize()?))
        });
        return match parsed {
            Ok((parsed, [])) => Ok(parsed),
            Ok(_) => Err(Error::Decode {
                reason: "trailing bytes after a binary message".into(),
            }),
            Err(e) => match refusal.into_inner().or(over) {
                Some(refused) => Err(refused),
                None => Err(binary_error(e)),
            },
        };
    }
    let (parsed, over) = budget::with(limits, || {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let parsed = seed.deserialize(&mut de)?;
        de.end()?;
        Ok::<_, serde_json::Error>(parsed)
    });
    match parsed {
        Ok(parsed) => Ok(parsed),
        Err(e) => Err(refusal.into_inner().or(over).unwrap_or_else(|| e.into())),
    }
}

/// The top-level fields of a message, in any version.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    V,
    Vmax,
    From,
    To,
    Inc,
    Epoch,
    Lead,
    Echo,
    Seen,
    Clock,
    Delta,
    Base,
    Chunk,
    Reply,
    Other,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::V => "v",
            Field::Vmax => "vmax",
            Field::From => "from",
            Field::To => "to",
            Field::Inc => "inc",
            Field::Epoch => "epoch",
            Field::Lead => "lead",
            Field::Echo => "echo",
            Field::Seen => "seen",
            Field::Clock => "clock",
            Field::Delta => "delta",
            Field::Base => "base",
            Field::Chunk => "chunk",
            Field::Reply => "reply",
            Field::Other => "",
        }
    }

    /// True for the fields decoded only after the envelope was checked.
    fn is_body(self) -> bool {
        matches!(
            self,
            Field::Seen | Field::Clock | Field::Delta | Field::Base | Field::Chunk | Field::Reply
        )
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct FieldVisitor;
        impl serde::de::Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> std::result::Result<Field, E> {
                Ok(match name {
                    "v" => Field::V,
                    "vmax" => Field::Vmax,
                    "from" => Field::From,
                    "to" => Field::To,
                    "inc" => Field::Inc,
                    "epoch" => Field::Epoch,
                    "lead" => Field::Lead,
                    "echo" => Field::Echo,
                    "seen" => Field::Seen,
                    "clock" => Field::Clock,
                    "delta" => Field::Delta,
                    "base" => Field::Base,
                    "chunk" => Field::Chunk,
                    "reply" => Field::Reply,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(FieldVisitor)
    }
}

struct MessageSeed<'a, D, C> {
    newest: Option<u32>,
    size: usize,
    check: &'a mut Option<C>,
    /// Why the message was refused, when a check (not the syntax) refused it.
    refusal: &'a RefCell<Option<Error>>,
    delta: PhantomData<D>,
}

impl<'de, D: DeserializeOwned, C: FnOnce(&Envelope) -> Result<()>> DeserializeSeed<'de>
    for MessageSeed<'_, D, C>
{
    type Value = Parsed<D>;
    fn deserialize<De: serde::Deserializer<'de>>(
        self,
        d: De,
    ) -> std::result::Result<Parsed<D>, De::Error> {
        d.deserialize_map(self)
    }
}

/// The envelope and body fields read so far.
struct Fields<D> {
    v: Option<u32>,
    vmax: Option<u32>,
    from: Option<ReplicaId>,
    to: Option<ReplicaId>,
    inc: Option<ReplicaId>,
    epoch: Option<u64>,
    lead: Option<u64>,
    echo: Option<u64>,
    seen: Option<CausalContext>,
    clock: Option<VectorClock>,
    base: Option<Base>,
    delta: Option<Option<D>>,
    chunk: Option<Option<Chunk>>,
    reply: Option<bool>,
}

impl<D: DeserializeOwned> Fields<D> {
    /// The envelope, once every field of it is known (`vmax` is optional in version 1).
    fn envelope(&self, size: usize) -> Option<Envelope> {
        let v = self.v?;
        let vmax = match (self.vmax, v) {
            (Some(vmax), _) => vmax,
            (None, 1) => 1,
            (None, _) => return None,
        };
        Some(Envelope {
            v,
            vmax,
            from: self.from?,
            to: self.to?,
            inc: self.inc?,
            size,
        })
    }

    /// Reads one body field of a message of version `v` (fields the version does not
    /// have are skipped, as a version-1 reader skips `seen` and `chunk`).
    fn body<'de, A: MapAccess<'de>>(
        &mut self,
        field: Field,
        v: u32,
        read: &mut A,
    ) -> std::result::Result<(), A::Error> {
        match (field, v) {
            (Field::Seen, 2..) => self.seen = Some(read.next_value()?),
            (Field::Clock, 1) => self.clock = Some(read.next_value()?),
            (Field::Base, 1) => self.base = Some(Base::Clock(read.next_value()?)),
            (Field::Base, _) => self.base = Some(Base::Context(read.next_value()?)),
            (Field::Delta, _) => self.delta = Some(read.next_value()?),
            (Field::Chunk, 2..) => self.chunk = Some(read.next_value()?),
            (Field::Reply, _) => self.reply = Some(read.next_value()?),
            _ => {
                read.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The slot of a fencing field (`epoch`, `lead`, `echo`) in the decoder's table.
fn fencing_index(field: Field) -> usize {
    match field {
        Field::Epoch => 0,
        Field::Lead => 1,
        _ => 2,
    }
}

/// One raw body field, read before the envelope was complete.
struct RawField<'de> {
    field: Field,
    raw: &'de serde_json::value::RawValue,
}

/// Reads a deferred field's raw text as the value of a one-entry map, so that
/// [`Fields::body`] reads it exactly as it reads a field in place.
struct OneField<'de> {
    raw: Option<&'de serde_json::value::RawValue>,
}

impl<'de> MapAccess<'de> for OneField<'de> {
    type Error = serde_json::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        _: K,
    ) -> std::result::Result<Option<K::Value>, serde_json::Error> {
        unreachable!("only values are read")
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> std::result::Result<V::Value, serde_json::Error> {
        let raw = self.raw.take().expect("one value");
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let value = seed.deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }
}

impl<'de, D: DeserializeOwned, C: FnOnce(&Envelope) -> Result<()>> Visitor<'de>
    for MessageSeed<'_, D, C>
{
    type Value = Parsed<D>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a concord message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut read: A) -> std::result::Result<Parsed<D>, A::Error> {
        use serde::de::Error as _;
        let mut f = Fields::<D> {
            v: None,
            vmax: None,
            from: None,
            to: None,
            inc: None,
            epoch: None,
            lead: None,
            echo: None,
            seen: None,
            clock: None,
            base: None,
            delta: None,
            chunk: None,
            reply: None,
        };
        let mut present: Vec<Field> = Vec::new();
        let mut deferred: Vec<RawField<'de>> = Vec::new();
        // `epoch`, `lead`, `echo` as written (the first of each), and whether each
        // was repeated: read once the version is known (see below).
        let mut fencing: [Option<&'de serde_json::value::RawValue>; 3] = [None; 3];
        let mut fencing_repeated = [false; 3];
        let mut checked = false;
        // Refuses the message for `error`, keeping it for the caller.
        let refuse = |error: Error| {
            *self.refusal.borrow_mut() = Some(error);
            A::Error::custom("refused")
        };
        let mut run_check = |f: &Fields<D>| -> std::result::Result<(), A::Error> {
            let envelope = f.envelope(self.size).expect("complete");
            let check = self.check.take().expect("checked once");
            check(&envelope).map_err(refuse)
        };
        while let Some(field) = read.next_key::<Field>()? {
            if !matches!(
                field,
                Field::Other | Field::Epoch | Field::Lead | Field::Echo
            ) {
                if present.contains(&field) {
                    return Err(A::Error::custom(format!(
                        "duplicate field `{}`",
                        field.name()
                    )));
                }
                present.push(field);
            }
            match field {
                Field::V => {
                    let v: u32 = read.next_value()?;
                    if let Some(newest) = self.newest {
                        if !(OLDEST_PROTOCOL_VERSION..=newest).contains(&v) {
                            *self.refusal.borrow_mut() = Some(Error::UnsupportedVersion {
                                version: v,
                                supported: newest,
                            });
                            return Err(A::Error::custom("refused"));
                        }
                    }
                    f.v = Some(v);
                }
                Field::Vmax => f.vmax = Some(read.next_value()?),
                Field::From => f.from = Some(read.next_value()?),
                Field::To => f.to = Some(read.next_value()?),
                Field::Inc => f.inc = Some(read.next_value()?),
                // Fencing scalars: version 3's. Kept as written (the version may
                // come later), and read once the version is known: checked in version
                // 3, skipped in older versions whatever they hold, as a reader of
                // those versions skips every field it does not know.
                Field::Epoch | Field::Lead | Field::Echo => {
                    let i = fencing_index(field);
                    let raw: &'de serde_json::value::RawValue = read.next_value()?;
                    if fencing[i].is_some() {
                        fencing_repeated[i] = true;
                    } else {
                        fencing[i] = Some(raw);
                    }
                }
                Field::Other => {
                    read.next_value::<serde::de::IgnoredAny>()?;
                }
                body => {
                    debug_assert!(body.is_body());
                    if !checked && f.envelope(self.size).is_some() {
                        run_check(&f)?;
                        checked = true;
                    }
                    if checked {
                        f.body(body, f.v.expect("checked"), &mut read)?;
                    } else {
                        deferred.push(RawField {
                            field: body,
                            raw: read.next_value()?,
                        });
                    }
                }
            }
        }
        if !checked {
            for (field, known) in [
                (Field::V, f.v.is_some()),
                (Field::From, f.from.is_some()),
                (Field::To, f.to.is_some()),
                (Field::Inc, f.inc.is_some()),
                (
                    Field::Vmax,
                    f.envelope(self.size).is_some() || f.v.is_none(),
                ),
            ] {
                if !known {
                    return Err(A::Error::custom(format!(
                        "missing field `{}`",
                        field.name()
                    )));
                }
            }
            run_check(&f)?;
            let v = f.v.expect("checked");
            for RawField { field, raw } in deferred {
                f.body(field, v, &mut OneField { raw: Some(raw) })
                    .map_err(A::Error::custom)?;
            }
        }
        let v = f.v.expect("checked");
        if v >= 3 {
            for field in [Field::Epoch, Field::Lead, Field::Echo] {
                let i = fencing_index(field);
                if fencing_repeated[i] {
                    return Err(A::Error::custom(format!(
                        "duplicate field `{}`",
                        field.name()
                    )));
                }
                let value = fencing[i]
                    .map(|raw| serde_json::from_str::<u64>(raw.get()))
                    .transpose()
                    .map_err(|e| A::Error::custom(format!("`{}`: {e}", field.name())))?;
                match field {
                    Field::Epoch => f.epoch = value,
                    Field::Lead => f.lead = value,
                    _ => f.echo = value,
                }
            }
        }
        Ok(Parsed {
            v,
            vmax: f.envelope(self.size).expect("checked").vmax,
            from: f.from.expect("checked"),
            to: f.to.expect("checked"),
            inc: f.inc.expect("checked"),
            epoch: f.epoch,
            lead: f.lead,
            echo: f.echo,
            seen: f.seen,
            clock: f.clock,
            base: f.base,
            delta: f.delta,
            chunk: f.chunk,
            reply: f.reply,
        })
    }
}

/// Reads a binary message: the envelope, in its fixed order, checked before any body
/// field is read.
struct BinarySeed<'a, D, C> {
    newest: Option<u32>,
    size: usize,
    check: &'a mut Option<C>,
    refusal: &'a RefCell<Option<Error>>,
    delta: PhantomData<D>,
}

impl<'de, D: DeserializeOwned, C: FnOnce(&Envelope) -> Result<()>> DeserializeSeed<'de>
    for BinarySeed<'_, D, C>
{
    type Value = Parsed<D>;
    fn deserialize<De: serde::Deserializer<'de>>(
        self,
        d: De,
    ) -> std::result::Result<Parsed<D>, De::Error> {
        d.deserialize_tuple(BINARY_FIELDS, self)
    }
}

/// The next element of a binary message, which has every field.
fn field<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(
    seq: &mut A,
    name: &str,
) -> std::result::Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| budget::custom(format!("missing field `{name}`")))
}

impl<'de, D: DeserializeOwned, C: FnOnce(&Envelope) -> Result<()>> Visitor<'de>
    for BinarySeed<'_, D, C>
{
    type Value = Parsed<D>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a binary concord message")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Parsed<D>, A::Error> {
        use serde::de::Error as _;
        let refuse = |error: Error| {
            *self.refusal.borrow_mut() = Some(error);
            A::Error::custom("refused")
        };
        let v: u32 = field(&mut seq, "v")?;
        if let Some(newest) = self.newest {
            if !(BINARY_VERSION..=newest).contains(&v) {
                return Err(refuse(if v < BINARY_VERSION {
                    Error::Decode {
                        reason: format!(
                            "a binary message of version {v} (binary starts at {BINARY_VERSION})"
                        ),
                    }
                } else {
                    Error::UnsupportedVersion {
                        version: v,
                        supported: newest,
                    }
                }));
            }
        }
        let envelope = Envelope {
            v,
            vmax: field(&mut seq, "vmax")?,
            from: field(&mut seq, "from")?,
            to: field(&mut seq, "to")?,
            inc: field(&mut seq, "inc")?,
            size: self.size,
        };
        let check = self.check.take().expect("checked once");
        check(&envelope).map_err(refuse)?;
        Ok(Parsed {
            v,
            vmax: envelope.vmax,
            from: envelope.from,
            to: envelope.to,
            inc: envelope.inc,
            epoch: Some(field(&mut seq, "epoch")?),
            lead: field(&mut seq, "lead")?,
            echo: field(&mut seq, "echo")?,
            seen: Some(field(&mut seq, "seen")?),
            clock: None,
            delta: Some(field(&mut seq, "delta")?),
            base: Some(Base::Context(field(&mut seq, "base")?)),
            chunk: Some(field(&mut seq, "chunk")?),
            reply: Some(field(&mut seq, "reply")?),
        })
    }
}
