//! Hostile peers: what a refused message may cost the replica that refuses it, and
//! what an accepted one may leave behind.
//!
//! A counting allocator (per thread, so the tests of this binary can run side by side)
//! measures the heap a refusal takes: a message from a non-peer, or addressed to
//! someone else, is refused before its body is decoded; a body past the limits is
//! refused as soon as the decoder passes them. No test asserts a duration.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use concord::sync::{Config, SyncEngine};
use concord::{wire, Error, Limits, ManualClock, MvRegister, OrMap, ReplicaId};

/// Counts the heap this thread holds, and its high-water mark.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as a copy: the old block and the new one, then the old freed.
            count(new_size as isize);
            count(-(layout.size() as isize));
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result and the most heap it held at once, in bytes.
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(|p| p.get()) - base;
    (r, peak.max(0) as usize)
}

type Map = OrMap<String, MvRegister<u8>>;
type Engine = SyncEngine<Map, ManualClock>;

fn id(n: u128) -> ReplicaId {
    ReplicaId::from_u128(n)
}

fn engine(me: u128, peers: &[u128], config: impl FnOnce(Config) -> Config) -> Engine {
    let config = config(Config::with_peers(peers.iter().map(|&p| id(p))).incarnation(id(100 + me)));
    SyncEngine::new(id(me), Map::new(), ManualClock::new(1_000), config)
}

/// A version-2 message from `from` to `to` carrying `delta` (raw JSON).
fn message(from: u128, to: u128, delta: &str) -> Vec<u8> {
    format!(
        r#"{{"v":2,"vmax":2,"from":"{}","to":"{}","inc":"{}","seen":{{}},"delta":{delta}}}"#,
        id(from),
        id(to),
        id(100 + from)
    )
    .into_bytes()
}

/// A delta of no entries whose context holds `spans` lone dots of replica `of`
/// (counters 1, 3, 5, ...: two bytes a span).
fn gappy_delta(of: u128, spans: usize) -> String {
    let mut s = format!(r#"{{"r":["{}"],"c":[[0,[1"#, id(of));
    for _ in 1..spans {
        s.push_str(",2");
    }
    s.push_str("]]],\"e\":{}}");
    s
}

/// A delta of `n` keys, one sibling each, of replica `of` at counters 1..=n.
fn keys_delta(of: u128, n: u64) -> String {
    let entries: Vec<String> = (1..=n).map(|k| format!(r#""k{k}":[[0,{k},1]]"#)).collect();
    format!(
        r#"{{"r":["{}"],"c":[[0,[[1,{}]]]],"e":{{{}}}}}"#,
        id(of),
        n - 1,
        entries.join(",")
    )
}

/// 1M two-byte spans: about 2 MB, which decoded whole takes 16 MB of ranges at least.
const SPANS: usize = 1 << 20;

#[test]
fn a_message_from_a_non_peer_is_refused_before_its_body_is_decoded() {
    let bytes = message(9, 2, &gappy_delta(1, SPANS));
    let mut b = engine(2, &[1], |c| c);
    let (result, peak) = peak_of(|| b.receive_bytes(&bytes).map(|_| ()));
    assert_eq!(result, Err(Error::UnknownPeer { peer: id(9) }));
    // The envelope only (before: every span decoded, 40 MB and more).
    assert!(peak < 4096, "refusing took {peak} bytes");
    assert_eq!(b.metrics().messages_rejected, 1);
}

#[test]
fn a_misaddressed_message_or_an_unknown_version_is_refused_before_its_body() {
    let body = gappy_delta(1, SPANS);
    let mut b = engine(2, &[1], |c| c);
    let misaddressed = message(1, 3, &body);
    let (result, peak) = peak_of(|| b.receive_bytes(&misaddressed).map(|_| ()));
    assert!(
        matches!(result, Err(Error::InvalidMessage { .. })),
        "{result:?}"
    );
    assert!(peak < 4096, "refusing took {peak} bytes");

    let newer = String::from_utf8(message(1, 2, &body))
        .unwrap()
        .replacen(r#""v":2"#, r#""v":9"#, 1);
    let (result, peak) = peak_of(|| b.receive_bytes(newer.as_bytes()).map(|_| ()));
    assert!(
        matches!(result, Err(Error::UnsupportedVersion { version: 9, .. })),
        "{result:?}"
    );
    assert!(peak < 4096, "refusing took {peak} bytes");
}

#[test]
fn an_envelope_after_the_body_is_checked_before_the_body_is_decoded() {
    // Not what this library writes, but valid JSON: the body is kept as raw text (a
    // borrowed slice) until the envelope is complete.
    let delta = gappy_delta(1, SPANS);
    let bytes = format!(
        r#"{{"delta":{delta},"seen":{{}},"v":2,"vmax":2,"from":"{}","to":"{}","inc":"{}"}}"#,
        id(9),
        id(2),
        id(109)
    );
    let mut b = engine(2, &[1], |c| c);
    let (result, peak) = peak_of(|| b.receive_bytes(bytes.as_bytes()).map(|_| ()));
    assert_eq!(result, Err(Error::UnknownPeer { peer: id(9) }));
    assert!(peak < 4096, "refusing took {peak} bytes");

    // From a peer, in the same order, it decodes and applies.
    let ok = bytes.replace(&id(9).to_string(), &id(1).to_string());
    let ok = ok.replace(&id(109).to_string(), &id(101).to_string());
    let small = ok.replace(&delta, &keys_delta(1, 3));
    let _ = b.receive_bytes(small.as_bytes()).expect("accepted");
    assert_eq!(b.state().len(), 3);
}

#[test]
fn a_context_past_the_range_limit_is_refused_while_it_is_decoded() {
    let limit = 1_000;
    let limits = Limits {
        max_context_ranges: limit,
        ..Limits::default()
    };
    let mut b = engine(2, &[1], |c| c.limits(limits.clone()));
    let bytes = message(1, 2, &gappy_delta(1, SPANS));
    let (result, peak) = peak_of(|| b.receive_bytes(&bytes).map(|_| ()));
    assert_eq!(
        result,
        Err(Error::TooManyEntries {
            what: "context ranges",
            count: limit + 1,
            limit
        })
    );
    // About the limit's worth of ranges (16 bytes each, and the vector's growth), not
    // the message's million (before: 40 MB and more).
    assert!(peak < 128 * 1024, "refusing took {peak} bytes");

    // The acknowledgement's context (`seen`) is held to the same limit.
    let seen: Vec<String> = (0..SPANS as u64)
        .map(|k| format!("[{},{}]", 2 * k + 1, 2 * k + 1))
        .collect();
    let bytes = format!(
        r#"{{"v":2,"vmax":2,"from":"{}","to":"{}","inc":"{}","seen":{{"{}":[{}]}}}}"#,
        id(1),
        id(2),
        id(101),
        id(1),
        seen.join(",")
    );
    let (result, peak) = peak_of(|| b.receive_bytes(bytes.as_bytes()).map(|_| ()));
    assert!(
        matches!(
            result,
            Err(Error::TooManyEntries {
                what: "context ranges",
                ..
            })
        ),
        "{result:?}"
    );
    assert!(peak < 128 * 1024, "refusing took {peak} bytes");
}

#[test]
fn a_state_past_the_entry_limit_is_refused_while_it_is_decoded() {
    let limit = 100;
    let limits = Limits {
        max_entries: limit,
        ..Limits::default()
    };
    let mut b = engine(2, &[1], |c| c.limits(limits.clone()));
    let bytes = message(1, 2, &keys_delta(1, 100_000));
    let (result, peak) = peak_of(|| b.receive_bytes(&bytes).map(|_| ()));
    assert_eq!(
        result,
        Err(Error::TooManyEntries {
            what: "entries",
            count: limit + 1,
            limit
        })
    );
    // A hundred keys' worth (before: all 100,000 keys decoded and indexed, 20 MB).
    assert!(peak < 256 * 1024, "refusing took {peak} bytes");
    assert!(b.state().is_empty());

    // One key of many siblings counts each sibling.
    let siblings: Vec<String> = (1..=1_000).map(|k| format!("[0,{k},1]")).collect();
    let delta = format!(
        r#"{{"r":["{}"],"c":[[0,[[1,999]]]],"e":{{"k":[{}]}}}}"#,
        id(1),
        siblings.join(",")
    );
    let result = b.receive_bytes(&message(1, 2, &delta)).map(|_| ());
    assert!(
        matches!(
            result,
            Err(Error::TooManyEntries {
                what: "entries",
                ..
            })
        ),
        "{result:?}"
    );
}

#[test]
fn the_free_decoder_holds_a_body_to_the_budget_it_is_given() {
    let bytes = message(1, 2, &keys_delta(1, 1_000));
    let budget = wire::Budget {
        limits: Limits {
            max_entries: 10,
            ..Limits::default()
        },
        ..wire::Budget::default()
    };
    let refused = wire::decode_with::<Map>(&bytes, &budget, |_| Ok(()));
    assert!(
        matches!(
            refused,
            Err(Error::TooManyEntries {
                what: "entries",
                ..
            })
        ),
        "{refused:?}"
    );
    let read = wire::decode::<Map>(&bytes, 1 << 20).expect("within the default limits");
    assert_eq!(read.delta.expect("a delta").len(), 1_000);
    let envelope = wire::envelope(&bytes, 1 << 20).expect("an envelope");
    assert_eq!((envelope.from, envelope.to, envelope.v), (id(1), id(2), 2));
}

/// Moves one session each way between two engines: `from` opens, `to` answers.
/// Returns the bytes of the two messages.
fn session(from: &mut Engine, to: &mut Engine) -> (usize, usize) {
    let hello = from.sync_with(to.node()).expect("a peer").encode();
    let answer = to
        .receive_bytes(&hello)
        .expect("accepted")
        .reply
        .expect("an answer")
        .encode();
    let _ = from.receive_bytes(&answer).expect("accepted");
    (hello.len(), answer.len())
}

#[test]
fn gaps_about_a_writer_that_does_not_report_are_bounded() {
    // X (3) sends B a 1 MB delta claiming 500,000 lone dots of a writer nobody hears
    // from (7). Before: B took it, and every later message between A and B carried
    // the 500,000 ranges (about 8 MB), with nothing new to send.
    let mut a = engine(1, &[2, 3], |c| c);
    let mut b = engine(2, &[1, 3], |c| c);
    let poison = message(3, 2, &gappy_delta(7, 500_000));
    let before = b.context().clone();
    let _ = b.receive_bytes(&poison).expect("skipped, not refused");
    assert_eq!(b.context(), &before, "nothing of it was taken");
    assert_eq!(b.metrics().unbacked_deltas, 1);
    for round in 0..3 {
        a.update(|m, hlc| m.write(format!("a{round}"), 1, hlc))
            .unwrap();
        let (hello, answer) = session(&mut a, &mut b);
        let (back, again) = session(&mut b, &mut a);
        for size in [hello, answer, back, again] {
            assert!(size < 2_000, "round {round}: a message of {size} bytes");
        }
    }
    assert_eq!(a.state(), b.state());

    // Within the bound, gaps are taken (a relay may carry them honestly).
    let few = message(3, 2, &gappy_delta(7, 100));
    let _ = b
        .receive_bytes(&few)
        .expect("a hundred gaps are within the bound");
    assert_eq!(b.context().range_count(), 100 + 1); // and A's one range
}

#[test]
fn claims_beyond_a_writers_own_report_are_not_taken_so_its_writes_are_not_silenced() {
    let mut a = engine(1, &[2, 3], |c| c);
    let mut b = engine(2, &[1, 3], |c| c);
    a.update(|m, hlc| m.write("k".into(), 1, hlc)).unwrap();
    session(&mut a, &mut b); // B has heard A report its own writes (one so far)
    let writer = a.incarnation();

    // X claims A's next million writes as seen (one range, no gap). Before: B took it,
    // and discarded A's next writes when they came, as overwritten.
    let far = 1 << 20;
    let claim = format!(r#"{{"r":["{writer}"],"c":[[0,[[1,{far}]]]],"e":{{}}}}"#);
    let before = b.context().clone();
    let _ = b
        .receive_bytes(&message(3, 2, &claim))
        .expect("skipped, not refused");
    assert_eq!(b.context(), &before, "nothing of it was taken");
    assert_eq!(b.metrics().unbacked_deltas, 1);
    a.update(|m, hlc| m.write("k".into(), 2, hlc)).unwrap();
    session(&mut a, &mut b);
    let held: Vec<&u8> = b.state().get("k").expect("a key").values().collect();
    assert_eq!(held, vec![&2]);

    // Up to what A has reported, the same claim is a removal like any other (X may
    // have overwritten A's write): taken.
    let upto = a.context().max_counter(writer);
    let claim = format!(
        r#"{{"r":["{writer}"],"c":[[0,[[1,{}]]]],"e":{{}}}}"#,
        upto - 1
    );
    let _ = b
        .receive_bytes(&message(3, 2, &claim))
        .expect("within A's report");
    assert_eq!(b.metrics().unbacked_deltas, 1);

    // A write far ahead backs its own dot, not the run below it.
    let writes = format!(
        r#"{{"r":["{writer}"],"c":[[0,[[1,{}]]]],"e":{{"x":[[0,{},5]]}}}}"#,
        upto + far - 1,
        upto + far
    );
    let _ = b.receive_bytes(&message(3, 2, &writes)).expect("skipped");
    assert_eq!(
        b.metrics().unbacked_deltas,
        2,
        "the run below the write is unbacked"
    );
    let writes = format!(
        r#"{{"r":["{writer}"],"c":[[0,[{}]]],"e":{{"x":[[0,{},5]]}}}}"#,
        upto + 10,
        upto + 10
    );
    let _ = b
        .receive_bytes(&message(3, 2, &writes))
        .expect("a write relayed with its element");
    assert_eq!(b.metrics().unbacked_deltas, 2);
    assert_eq!(b.state().get("x").and_then(|r| r.get()), Some(&5));
}

/// Writes the binary form (protocol version 4) by hand, so that a test can say
/// anything a hostile peer could: counts that lie, repeated keys, cut messages.
mod binary {
    pub fn varint(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    pub fn replica(out: &mut Vec<u8>, n: u128) {
        out.push(16);
        out.extend_from_slice(&n.to_be_bytes());
    }

    /// The envelope of a version-4 message from `from` to `to`, then `epoch`, no lease
    /// fields; the caller writes `seen`, the delta, `base`, `chunk` and `reply`.
    pub fn envelope(from: u128, to: u128) -> Vec<u8> {
        let mut out = vec![concord::wire::BINARY_MESSAGE];
        varint(&mut out, 4);
        varint(&mut out, 4);
        for n in [from, to, 100 + from] {
            replica(&mut out, n);
        }
        out.extend_from_slice(&[0, 0, 0]); // epoch 0, no lead, no echo
        out
    }

    /// A whole message: an empty `seen`, `delta` (the bytes of a state, or none),
    /// an empty `base`, no chunk, no reply.
    pub fn message(from: u128, to: u128, delta: Option<&[u8]>) -> Vec<u8> {
        let mut out = envelope(from, to);
        out.push(0); // seen: no replica
        match delta {
            Some(d) => {
                out.push(1);
                out.extend_from_slice(d);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&[0, 0, 0]); // base, chunk, reply
        out
    }

    /// A delta of no entries whose context holds `spans` lone dots of replica `of`
    /// (counters 1, 3, 5, ...: one byte a span).
    pub fn gappy_delta(of: u128, spans: usize) -> Vec<u8> {
        let mut out = vec![1];
        replica(&mut out, of);
        out.push(1); // one replica in the context
        out.push(0); // its index
        varint(&mut out, spans as u64);
        out.push(1 << 1); // the first: 1 from 0
        for _ in 1..spans {
            out.push(2 << 1); // then 2 from the last
        }
        out.push(0); // no entries
        out.push(0); // no removal notes
        out
    }

    /// A delta of the given keys, one sibling each (value 1), of replica `of` at
    /// counters 1..=n, whose context is `[1, n]`; `count` is the number of entries
    /// the delta claims.
    pub fn keys_delta(of: u128, keys: &[String], count: u64) -> Vec<u8> {
        let mut out = vec![1];
        replica(&mut out, of);
        out.extend_from_slice(&[1, 0, 1]); // one replica, index 0, one span
        varint(&mut out, 1 << 1 | 1); // a run from 1
        varint(&mut out, keys.len() as u64 - 1); // of n
        varint(&mut out, count);
        for (k, key) in keys.iter().enumerate() {
            varint(&mut out, key.len() as u64);
            out.extend_from_slice(key.as_bytes());
            out.push(1); // one sibling
            out.push(0); // replica index 0
            varint(&mut out, k as u64 + 1);
            out.push(1); // the value
        }
        out.push(0); // no removal notes
        out
    }

    pub fn keys(n: u64) -> Vec<String> {
        (1..=n).map(|k| format!("k{k}")).collect()
    }
}

/// The replica's state and context, to compare before and after a refusal.
fn fingerprint(e: &Engine) -> (Map, concord::CausalContext) {
    (e.state().clone(), e.context().clone())
}

#[test]
fn binary_messages_are_held_to_the_same_checks_before_and_while_decoding() {
    // From a non-peer, misaddressed, a newer version: refused on the envelope.
    let mut b = engine(2, &[1], |c| c);
    let body = binary::gappy_delta(1, SPANS);
    for (bytes, expected) in [
        (
            binary::message(9, 2, Some(&body)),
            Err(Error::UnknownPeer { peer: id(9) }),
        ),
        (
            binary::message(1, 3, Some(&body)),
            Err(Error::InvalidMessage {
                reason: format!("message from {} to {} reached {}", id(1), id(3), id(2)),
            }),
        ),
    ] {
        assert_eq!(bytes[0], wire::BINARY_MESSAGE);
        let (result, peak) = peak_of(|| b.receive_bytes(&bytes).map(|_| ()));
        assert_eq!(result, expected);
        assert!(peak < 4096, "refusing took {peak} bytes");
    }
    let mut newer = binary::message(1, 2, Some(&body));
    newer[1] = 9;
    let (result, peak) = peak_of(|| b.receive_bytes(&newer).map(|_| ()));
    assert_eq!(
        result,
        Err(Error::UnsupportedVersion {
            version: 9,
            supported: 4
        })
    );
    assert!(peak < 4096, "refusing took {peak} bytes");
    // Binary is version 4 on: a binary message claiming version 3 is malformed.
    let mut older = binary::message(1, 2, None);
    older[1] = 3;
    assert!(matches!(b.receive_bytes(&older), Err(Error::Decode { .. })));

    // A context past the range limit, and a state past the entry limit, while decoding.
    let limit = 1_000;
    let mut b = engine(2, &[1], |c| {
        c.limits(Limits {
            max_context_ranges: limit,
            max_entries: 100,
            ..Limits::default()
        })
    });
    let bytes = binary::message(1, 2, Some(&body));
    let (result, peak) = peak_of(|| b.receive_bytes(&bytes).map(|_| ()));
    assert_eq!(
        result,
        Err(Error::TooManyEntries {
            what: "context ranges",
            count: limit + 1,
            limit
        })
    );
    assert!(peak < 128 * 1024, "refusing took {peak} bytes");
    let keys = binary::keys(100_000);
    let many = binary::keys_delta(1, &keys, keys.len() as u64);
    let bytes = binary::message(1, 2, Some(&many));
    let (result, peak) = peak_of(|| b.receive_bytes(&bytes).map(|_| ()));
    assert_eq!(
        result,
        Err(Error::TooManyEntries {
            what: "entries",
            count: 101,
            limit: 100
        })
    );
    assert!(peak < 256 * 1024, "refusing took {peak} bytes");
    assert!(b.state().is_empty() && b.context().is_empty());

    // Within the limits, the same hand-written form is taken.
    let three = binary::keys_delta(1, &binary::keys(3), 3);
    let _ = b
        .receive_bytes(&binary::message(1, 2, Some(&three)))
        .expect("accepted");
    assert_eq!(b.state().len(), 3);
}

#[test]
fn binary_counts_that_lie_cut_messages_and_repeated_keys_are_typed_errors() {
    let mut b = engine(2, &[1], |c| c);
    let three = binary::keys_delta(1, &binary::keys(3), 3);
    let valid = binary::message(1, 2, Some(&three));
    let before = fingerprint(&b);

    // Counts of 2^60 elements (entries, replicas of the table, context replicas, a
    // key's length): nothing is reserved for them, the decoder runs out of bytes.
    let huge = 1u64 << 60;
    let lying_entries = binary::keys_delta(1, &binary::keys(3), huge);
    let mut lying_table = vec![];
    binary::varint(&mut lying_table, huge);
    let mut lying_context = vec![0];
    binary::varint(&mut lying_context, huge);
    let mut lying_key = binary::keys_delta(1, &binary::keys(1), 1);
    // The key's length: "k1" is 2 bytes, then 4 more, then the empty notes.
    let at = lying_key.len() - 8;
    assert_eq!(lying_key[at], 2);
    lying_key.splice(at..=at, {
        let mut v = vec![];
        binary::varint(&mut v, huge);
        v
    });
    for delta in [lying_entries, lying_table, lying_context, lying_key] {
        let bytes = binary::message(1, 2, Some(&delta));
        let (result, peak) = peak_of(|| b.receive_bytes(&bytes).map(|_| ()));
        assert!(matches!(result, Err(Error::Decode { .. })), "{result:?}");
        assert!(peak < 64 * 1024, "refusing took {peak} bytes");
        assert_eq!(fingerprint(&b), before);
    }

    // Every cut of a valid message is refused, and changes nothing; so are trailing
    // bytes.
    for len in 0..valid.len() {
        let result = b.receive_bytes(&valid[..len]);
        assert!(result.is_err(), "a message cut at {len} was taken");
        assert_eq!(fingerprint(&b), before, "cut at {len}");
    }
    let mut longer = valid.clone();
    longer.push(0);
    assert!(matches!(
        b.receive_bytes(&longer),
        Err(Error::Decode { .. })
    ));
    assert_eq!(fingerprint(&b), before);

    // A key twice in one map's entries, a replica twice in a context.
    let twice = binary::keys_delta(1, &["k1".to_string(), "k1".to_string()], 2);
    let result = b.receive_bytes(&binary::message(1, 2, Some(&twice)));
    match result {
        Err(Error::Decode { reason }) => assert!(reason.contains("appears twice"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let mut seen_twice = binary::envelope(1, 2);
    seen_twice.push(2);
    for _ in 0..2 {
        binary::replica(&mut seen_twice, 101);
        seen_twice.extend_from_slice(&[1, 1 << 1]); // one span: counter 1
    }
    seen_twice.extend_from_slice(&[0, 0, 0, 0]);
    match b.receive_bytes(&seen_twice) {
        Err(Error::Decode { reason }) => assert!(reason.contains("appears twice"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fingerprint(&b), before);

    // Every single-byte change of a valid message is either refused, changing
    // nothing, or taken as some other valid message: never a panic.
    for i in 0..valid.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bytes = valid.clone();
            bytes[i] ^= flip;
            let mut probe = engine(2, &[1], |c| c);
            let was = fingerprint(&probe);
            if probe.receive_bytes(&bytes).is_err() {
                assert_eq!(fingerprint(&probe), was, "byte {i} ^ {flip:#x}");
            }
        }
    }
    let _ = b.receive_bytes(&valid).expect("the valid message is taken");
    assert_eq!(b.state().len(), 3);
}

/// A binary snapshot of a context: replica 9, counter 1.
fn context_snapshot() -> Vec<u8> {
    let mut ctx = concord::CausalContext::new();
    ctx.insert(concord::Dot::new(id(9), 1));
    let bytes = wire::encode_snapshot(&ctx);
    // 0xC1, format 1, one replica, its id (length 16, 16 bytes), one span: counter 1.
    assert_eq!(bytes.len(), 2 + 1 + 17 + 2, "{bytes:x?}");
    assert_eq!(&bytes[..3], &[wire::BINARY_SNAPSHOT, 1, 1]);
    assert_eq!(&bytes[20..], &[1, 1 << 1]);
    bytes
}

#[test]
fn a_snapshot_with_trailing_bytes_is_refused() {
    let bytes = context_snapshot();
    assert!(wire::decode_snapshot::<concord::CausalContext>(&bytes).is_ok());
    let mut trailing = bytes.clone();
    trailing.push(0);
    let e = wire::decode_snapshot::<concord::CausalContext>(&trailing).unwrap_err();
    assert!(e.to_string().contains("trailing bytes"), "{e}");
}

#[test]
fn a_context_naming_a_replica_without_ranges_is_refused() {
    let bytes = context_snapshot();
    let mut empty = bytes[..20].to_vec();
    empty.push(0);
    let e = wire::decode_snapshot::<concord::CausalContext>(&empty).unwrap_err();
    assert!(e.to_string().contains("without ranges"), "{e}");
}

#[test]
fn snapshot_varints_that_are_not_canonical_or_overflow_are_refused() {
    let bytes = context_snapshot();
    // Format 1 written in two bytes.
    let mut long = vec![wire::BINARY_SNAPSHOT, 0x81, 0x00];
    long.extend_from_slice(&bytes[2..]);
    assert!(matches!(
        wire::decode_snapshot::<concord::CausalContext>(&long),
        Err(Error::Decode { .. })
    ));
    // A deflated snapshot whose stated length needs more than 64 bits: 2^64 + 2 would
    // read as 2 if the tenth byte's high bits were dropped.
    let mut over = vec![wire::BINARY_SNAPSHOT, 2];
    over.extend_from_slice(&[0x82, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]);
    over.extend_from_slice(&stored_block(&[1, 2]));
    let e = wire::decode_snapshot::<concord::CausalContext>(&over).unwrap_err();
    assert!(e.to_string().contains("no length"), "{e}");
}

/// A raw deflate stream holding `data` in one stored (uncompressed) block.
fn stored_block(data: &[u8]) -> Vec<u8> {
    let len = data.len() as u16;
    let mut out = vec![0x01];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn a_deflated_snapshot_inflates_no_further_than_it_states_nor_than_the_maximum() {
    // 64 KiB of zeros in stored blocks, stating 16 bytes: inflating stops at 16 (and
    // is refused), it does not inflate all of it and compare afterwards.
    let mut forged = vec![wire::BINARY_SNAPSHOT, 2, 16];
    for last in [false, true] {
        let block = stored_block(&vec![0u8; 32 << 10]);
        forged.push(u8::from(last));
        forged.extend_from_slice(&block[1..]);
    }
    let e = wire::decode_snapshot::<concord::CausalContext>(&forged).unwrap_err();
    assert!(e.to_string().contains("deflate stream"), "{e}");
    // Stating all 64 KiB: inflated, then refused as a context; under a maximum of
    // 1 KiB, refused before anything is inflated.
    forged.splice(2..3, [0x80, 0x80, 0x04]);
    let e = wire::decode_snapshot::<concord::CausalContext>(&forged).unwrap_err();
    assert!(!e.to_string().contains("stated"), "{e}");
    let (e, peak) = peak_of(|| {
        wire::decode_snapshot_with::<concord::CausalContext>(&forged, 1 << 10).unwrap_err()
    });
    assert!(e.to_string().contains("more than the maximum"), "{e}");
    assert!(peak < 4 << 10, "{peak} bytes allocated");
}

type Users = OrMap<String, OrMap<String, concord::LwwRegister<String>>>;

/// A receiver holding `key` as a nested map of `fields` fields of its own writing.
fn users_with(key: &str, fields: usize) -> Users {
    let mut hlc = concord::Hlc::new(id(2), ManualClock::new(1_700_000_000_000));
    let mut users = Users::new();
    users
        .update(key.into(), &mut hlc, |m, op| {
            for i in 0..fields {
                m.update_in(op, format!("field-{i:06}"), |r, op| {
                    r.assign(op, "x".repeat(32))
                });
            }
        })
        .unwrap();
    users
}

/// A map, as JSON, claiming removals of `key`: `per_replica` of each of `replicas`
/// invented replicas (dots 1, 2, ...), each note's context its own dot alone.
fn removals_json(key: &str, replicas: u64, per_replica: u64) -> String {
    let table: Vec<String> = (0..replicas)
        .map(|j| format!("\"00000000-0000-0000-0000-{:012x}\"", 0xee_0000 + j))
        .collect();
    let ctx: Vec<String> = (0..replicas)
        .map(|j| match per_replica {
            1 => format!("[{j},[1]]"),
            n => format!("[{j},[[1,{}]]]", n - 1),
        })
        .collect();
    let mut notes = Vec::new();
    for j in 0..replicas {
        for i in 1..=per_replica {
            notes.push(format!("[[{j},{i}],\"{key}\",[[{j},[{i}]]]]"));
        }
    }
    format!(
        "{{\"r\":[{}],\"c\":[{}],\"e\":{{}},\"x\":[{}]}}",
        table.join(","),
        ctx.join(","),
        notes.join(",")
    )
}

type UserReports = Vec<concord::Conflict<String, OrMap<String, concord::LwwRegister<String>>>>;

fn merge_claimed(
    receiver: &mut Users,
    json: &str,
) -> (concord::Result<concord::Outcome>, UserReports) {
    use concord::Crdt;
    let claimed: Users = serde_json::from_str(json).expect("well-formed JSON");
    let mut reports = Vec::new();
    let got = receiver.try_merge(claimed, &Limits::default(), &mut reports);
    (got, reports)
}

/// More removal notes than a map keeps, in one message: refused whole, with a typed
/// error, before any is weighed against the receiver's values.
#[test]
fn more_removal_notes_than_a_map_keeps_are_refused() {
    let mut receiver = users_with("big", 20);
    let before = receiver.clone();
    // 5,000 replicas removing "big" once each (more than the 4,096 notes kept).
    let (got, reports) = merge_claimed(&mut receiver, &removals_json("big", 5_000, 1));
    assert!(
        matches!(
            got,
            Err(Error::TooManyEntries {
                what: "removal notes",
                count: 5_000,
                limit: 4_096
            })
        ),
        "{got:?}"
    );
    assert!(reports.is_empty());
    assert_eq!(receiver, before);
    assert_eq!(receiver.removal_notes().count(), 0);
}

/// One replica's removals of one key: a map keeps only its newest, so a message with
/// two (or dozens, or thousands) is refused.
#[test]
fn two_removal_notes_of_one_key_by_one_replica_are_refused() {
    let mut receiver = users_with("big", 20);
    let before = receiver.clone();
    let (got, _) = merge_claimed(&mut receiver, &removals_json("big", 1, 4_000));
    assert!(
        matches!(
            got,
            Err(Error::TooManyEntries {
                what: "removal notes of one key",
                ..
            })
        ),
        "{got:?}"
    );
    assert_eq!(receiver, before);
    for per_replica in [2, 50] {
        let (got, reports) = merge_claimed(&mut receiver, &removals_json("big", 1, per_replica));
        assert!(
            matches!(
                got,
                Err(Error::InvalidDot {
                    reason: "two removal notes of one key by one replica",
                    ..
                })
            ),
            "{got:?}"
        );
        assert!(reports.is_empty());
        assert_eq!(receiver, before);
    }
}

/// More concurrent removers of one key than a map keeps notes of: refused.
#[test]
fn more_removers_of_one_key_than_a_map_keeps_are_refused() {
    let mut receiver = users_with("big", 20);
    let before = receiver.clone();
    let (got, reports) = merge_claimed(&mut receiver, &removals_json("big", 65, 1));
    assert!(
        matches!(
            got,
            Err(Error::TooManyEntries {
                what: "removal notes of one key",
                count: 65,
                limit: 64
            })
        ),
        "{got:?}"
    );
    assert!(reports.is_empty());
    assert_eq!(receiver, before);
}

/// As many removers of one key as a map keeps, all racing the receiver's large value:
/// taken, and told in one report (the value copied once for it, not once per note).
#[test]
fn removals_of_one_key_at_the_limit_cost_one_report() {
    let mut receiver = users_with("big", 2_000);
    let (got, reports) = merge_claimed(&mut receiver, &removals_json("big", 64, 1));
    got.expect("within the limits");
    assert_eq!(reports.len(), 1, "one report per key and merge");
    let c = &reports[0];
    assert!(c.is_removal());
    assert_eq!((c.ours.len(), c.resolved.len()), (2_000, 2_000));
    // Its clock names every remover.
    assert_eq!(c.theirs_clock.iter().count(), 64);
    assert_eq!(receiver.removal_notes().count(), 64);
    assert_eq!(receiver.get("big").map(OrMap::len), Some(2_000));
}
