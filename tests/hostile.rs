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
    b.receive_bytes(small.as_bytes()).expect("accepted");
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
    from.receive_bytes(&answer).expect("accepted");
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
    b.receive_bytes(&poison).expect("skipped, not refused");
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
    b.receive_bytes(&few)
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
    b.receive_bytes(&message(3, 2, &claim))
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
    b.receive_bytes(&message(3, 2, &claim))
        .expect("within A's report");
    assert_eq!(b.metrics().unbacked_deltas, 1);

    // A write far ahead backs its own dot, not the run below it.
    let writes = format!(
        r#"{{"r":["{writer}"],"c":[[0,[[1,{}]]]],"e":{{"x":[[0,{},5]]}}}}"#,
        upto + far - 1,
        upto + far
    );
    b.receive_bytes(&message(3, 2, &writes)).expect("skipped");
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
    b.receive_bytes(&message(3, 2, &writes))
        .expect("a write relayed with its element");
    assert_eq!(b.metrics().unbacked_deltas, 2);
    assert_eq!(b.state().get("x").and_then(|r| r.get()), Some(&5));
}
