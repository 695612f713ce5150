//! Golden wire vectors: deterministic messages and states (fixed replica ids, fixed
//! incarnations, a `ManualClock`), encoded and compared byte for byte with the files
//! committed in `tests/golden/`. A change of format is a visible diff there, never an
//! accident.
//!
//! To accept an intended change, regenerate the files and review the diff:
//!
//! ```text
//! CONCORD_BLESS=1 cargo test --all-features --test wire
//! git diff tests/golden/
//! ```
//!
//! Each file holds the encoding followed by one newline; binary encodings (protocol
//! version 4, binary snapshots) are kept as lowercase hex in `.hex` files, so a change
//! is a readable diff too. Every test also decodes the committed file and checks that
//! it gives back the same value, which encodes to the same bytes again.

use std::fmt::Debug;
use std::path::PathBuf;

use concord::sync::{Chunk, Config, Message, Snapshot, SyncEngine, PROTOCOL_VERSION};
use concord::{
    wire, CausalContext, Crdt, Dot, Hlc, LwwRegister, ManualClock, MvRegister, OrMap, PnCounter,
    ReplicaId, Resolver, VectorClock,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

const START_MS: u64 = 1_700_000_000_000;
const MAX_BYTES: usize = 1 << 20;

/// Replica ids that read well in the files: `…00a0` is node A, `…00a1` its first
/// incarnation.
fn id(n: u128) -> ReplicaId {
    ReplicaId::from_u128(n)
}

const A: u128 = 0xa0;
const B: u128 = 0xb0;
const C: u128 = 0xc0;

fn engine<T: Crdt + Default>(
    node: u128,
    peers: &[u128],
    time: &ManualClock,
) -> SyncEngine<T, ManualClock> {
    // Version 1: these vectors were written by the first release, and an engine held
    // back to version 1 must still write them byte for byte.
    let config = Config::with_peers(peers.iter().map(|p| id(*p)))
        .incarnation(id(node + 1))
        .protocol_version(1);
    SyncEngine::new(id(node), T::default(), time.clone(), config)
}

fn golden_path(name: &str) -> PathBuf {
    golden_file(&format!("{name}.json"))
}

fn golden_file(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(text).unwrap();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Compares binary `bytes` with `tests/golden/<name>.hex` (as [`golden`]) and returns
/// the committed bytes.
fn golden_binary(name: &str, bytes: &[u8]) -> Vec<u8> {
    unhex(&golden_at(
        golden_file(&format!("{name}.hex")),
        name,
        hex(bytes).as_bytes(),
    ))
}

/// A binary message vector (protocol version 4): `wire::encode`, `wire::decode`.
fn golden_binary_message<T: Crdt>(name: &str, msg: &Message<T>) {
    let bytes = wire::encode(msg);
    assert_eq!(bytes[0], wire::BINARY_MESSAGE);
    let committed = golden_binary(name, &bytes);
    let decoded = wire::decode::<T>(&committed, MAX_BYTES).expect("the golden file decodes");
    assert_eq!(&decoded, msg);
    assert_eq!(wire::encode(&decoded), committed);
}

/// Compares `bytes` with `tests/golden/<name>.json` (or writes the file when
/// `CONCORD_BLESS=1`), and returns the committed bytes (without the final newline).
fn golden(name: &str, bytes: &[u8]) -> Vec<u8> {
    golden_at(golden_path(name), name, bytes)
}

fn golden_at(path: PathBuf, name: &str, bytes: &[u8]) -> Vec<u8> {
    let mut expected_file = bytes.to_vec();
    expected_file.push(b'\n');
    if std::env::var_os("CONCORD_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &expected_file).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with CONCORD_BLESS=1 cargo test --all-features --test wire",
            path.display()
        )
    });
    if committed != expected_file {
        panic!(
            "the wire format of {name} changed.\n committed: {}\n   encoded: {}\n\
             If the change is intended, run CONCORD_BLESS=1 cargo test --all-features \
             --test wire and commit the diff of tests/golden/.",
            String::from_utf8_lossy(&committed).trim_end(),
            String::from_utf8_lossy(bytes),
        );
    }
    committed[..committed.len() - 1].to_vec()
}

/// A message vector: encoded with `wire::encode`, decoded with `wire::decode`.
fn golden_message<T: Crdt>(name: &str, msg: &Message<T>) {
    let bytes = wire::encode(msg);
    let committed = golden(name, &bytes);
    let decoded = wire::decode::<T>(&committed, MAX_BYTES).expect("the golden file decodes");
    assert_eq!(&decoded, msg);
    assert_eq!(wire::encode(&decoded), committed);
}

/// A value vector (a state, a clock, a snapshot): plain `serde_json`.
fn golden_value<T: Serialize + DeserializeOwned + PartialEq + Debug>(name: &str, value: &T) {
    let bytes = serde_json::to_vec(value).unwrap();
    let committed = golden(name, &bytes);
    let decoded: T = serde_json::from_slice(&committed).expect("the golden file decodes");
    assert_eq!(&decoded, value);
    assert_eq!(serde_json::to_vec(&decoded).unwrap(), committed);
}

/// How many times `needle` occurs in `haystack`.
fn occurrences(haystack: &[u8], needle: &str) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle.as_bytes())
        .count()
}

type LwwMap = OrMap<String, LwwRegister<String>>;
type MvMap = OrMap<String, MvRegister<String>>;
type Cart = OrMap<String, PnCounter>;
type Doc = OrMap<String, OrMap<String, LwwRegister<u32>>>;

#[test]
fn lww_map_delta() {
    let time = ManualClock::new(START_MS);
    let mut a = engine::<LwwMap>(A, &[B], &time);
    let mut b = engine::<LwwMap>(B, &[A], &time);
    a.update(|m, hlc| m.write("color".into(), "blue".into(), hlc))
        .unwrap();
    a.update(|m, hlc| m.write("size".into(), "L".into(), hlc))
        .unwrap();
    let ack = b
        .receive(a.sync_with(id(B)).unwrap())
        .unwrap()
        .reply
        .unwrap();
    let _ = a.receive(ack).unwrap();

    // After the exchange A overwrites one key: the push carries only that key, and
    // its context names the new dot and the overwritten one.
    time.advance(7);
    a.update(|m, hlc| m.write("color".into(), "green".into(), hlc))
        .unwrap();
    let pushed = a.push();
    assert_eq!(pushed.len(), 1);
    let msg = &pushed[0];
    assert_eq!(msg.delta.as_ref().unwrap().len(), 1);
    golden_message("lww_map_delta", msg);
}

#[test]
fn mv_map_with_siblings() {
    let time = ManualClock::new(START_MS);
    let mut a = engine::<MvMap>(A, &[B, C], &time);
    let mut b = engine::<MvMap>(B, &[A, C], &time);
    let mut c = engine::<MvMap>(C, &[A, B], &time);
    a.update(|m, hlc| m.write("alice".into(), "alice@a.example".into(), hlc))
        .unwrap();
    b.update(|m, hlc| m.write("alice".into(), "alice@b.example".into(), hlc))
        .unwrap();
    c.update(|m, hlc| m.write("bob".into(), "bob@c.example".into(), hlc))
        .unwrap();
    time.advance(1);
    c.update(|m, hlc| m.write("alice".into(), "alice@c.example".into(), hlc))
        .unwrap();
    for msg in [b.sync_with(id(A)).unwrap(), c.sync_with(id(A)).unwrap()] {
        let _ = a.receive(msg).unwrap();
    }
    let alice = a.state().get(&"alice".to_string()).unwrap();
    assert_eq!(alice.values().count(), 3);

    // The full state, and A's answer to B's session: all B lacks, both siblings of
    // "alice" it has not seen and the whole of "bob".
    golden_value("mv_map_siblings_state", a.state());
    let hello = b.sync_with(id(A)).unwrap();
    let answer = a.receive(hello).unwrap().reply.unwrap();
    golden_message("mv_map_siblings_answer", &answer);

    // Replica ids are listed once per state, then named by index.
    let bytes = serde_json::to_vec(a.state()).unwrap();
    for incarnation in [A + 1, B + 1, C + 1] {
        assert_eq!(occurrences(&bytes, &id(incarnation).to_string()), 1);
    }
}

#[test]
fn counter_map_after_remove() {
    let time = ManualClock::new(START_MS);
    let mut a = engine::<Cart>(A, &[B], &time);
    let mut b = engine::<Cart>(B, &[A], &time);
    a.update(|m, hlc| m.increment("apples".into(), 5, hlc))
        .unwrap();
    a.update(|m, hlc| m.increment("pears".into(), 2, hlc))
        .unwrap();
    let ack = b
        .receive(a.sync_with(id(B)).unwrap())
        .unwrap()
        .reply
        .unwrap();
    let _ = a.receive(ack).unwrap();

    // A removes the apples while B, concurrently, adds one and takes a pear back.
    let removal = a
        .update(|m, hlc| m.remove(&"apples".to_string(), hlc))
        .unwrap()
        .delta;
    b.update(|m, hlc| m.increment("apples".into(), 1, hlc))
        .unwrap();
    b.update(|m, hlc| m.increment("pears".into(), -1, hlc))
        .unwrap();
    golden_value("counter_map_removal_delta", &removal);
    assert!(removal.is_empty(), "a removal delta is context only");

    let hello = a.sync_with(id(B)).unwrap();
    let answer = b.receive(hello).unwrap().reply.unwrap();
    let _ = a.receive(answer).unwrap();
    assert_eq!(a.state(), b.state());
    assert_eq!(a.state().count(&"apples".to_string()), 1, "no resurrection");
    assert_eq!(a.state().count(&"pears".to_string()), 1);
    golden_value("counter_map_after_remove", a.state());
}

#[test]
fn nested_map() {
    let time = ManualClock::new(START_MS);
    let mut hlc = Hlc::new(id(A + 1), time.clone());
    let mut doc = Doc::new();
    doc.update("user:1".into(), &mut hlc, |profile, op| {
        profile.update_in(op, "age".into(), |r, op| r.assign(op, 41));
        profile.update_in(op, "zip".into(), |r, op| r.assign(op, 10115));
    })
    .unwrap();
    time.advance(1);
    let delta = doc
        .update("user:1".into(), &mut hlc, |profile, op| {
            profile.update_in(op, "age".into(), |r, op| r.assign(op, 42));
            profile.remove_in(&"zip".to_string());
        })
        .unwrap();
    doc.update("user:2".into(), &mut hlc, |profile, op| {
        profile.update_in(op, "age".into(), |r, op| r.assign(op, 7));
    })
    .unwrap();
    golden_value("nested_map_delta", &delta);
    golden_value("nested_map_state", &doc);

    // Version 1, as a peer that has not upgraded writes and reads it.
    let msg = Message {
        v: 1,
        vmax: 1,
        from: id(A),
        to: id(B),
        inc: id(A + 1),
        seen: CausalContext::from(&doc.context().clock()),
        delta: Some(doc.clone()),
        base: CausalContext::new(),
        chunk: None,
        reply: true,
        epoch: 0,
        lead: None,
        echo: None,
    };
    golden_message("nested_map_message", &msg);
    // Version 2: the context itself, and a chunk of a stream.
    let msg = Message {
        v: 2,
        vmax: 2,
        seen: doc.context().clone(),
        chunk: Some(Chunk {
            stream: 3,
            index: 1,
            last: true,
        }),
        ..msg
    };
    golden_message("nested_map_message_v2", &msg);
}

#[test]
fn envelope_without_delta() {
    let mut clock = VectorClock::new();
    clock.raise(id(A + 1), 3);
    clock.raise(id(B + 1), 1);
    let msg: Message<MvMap> = Message {
        v: 1,
        vmax: 1,
        from: id(B),
        to: id(A),
        inc: id(B + 1),
        seen: CausalContext::from(&clock),
        delta: None,
        base: CausalContext::new(),
        chunk: None,
        reply: false,
        epoch: 0,
        lead: None,
        echo: None,
    };
    golden_message("envelope_ack", &msg);
    // Version 2 names gaps: B has seen A's events 1-3 and 5.
    let mut seen = CausalContext::from(&clock);
    seen.insert(Dot::new(id(A + 1), 5));
    let msg = Message {
        v: 2,
        vmax: 2,
        seen,
        ..msg
    };
    golden_message("envelope_ack_v2", &msg);
    // Version 3 adds the fencing epoch, and the lease fields of master–follower mode:
    // here B supports A as the master of epoch 4 and echoes A's last send time.
    let msg = Message {
        v: 3,
        vmax: 3,
        epoch: 4,
        echo: Some(START_MS + 250),
        ..msg
    };
    golden_message("envelope_ack_v3", &msg);
    // Version 4 is the same message in binary: the envelope in a fixed order, then
    // the body; and its JSON rendering (for debugging) reads back as well.
    let v4 = Message {
        v: PROTOCOL_VERSION,
        vmax: PROTOCOL_VERSION,
        ..msg.clone()
    };
    assert_eq!(PROTOCOL_VERSION, 4);
    golden_binary_message("envelope_ack_v4", &v4);
    let json = golden("envelope_ack_v4_as_json", &wire::encode_json(&v4));
    assert_eq!(wire::decode::<MvMap>(&json, MAX_BYTES).unwrap(), v4);
    let binary = wire::encode(&v4);
    assert!(
        binary.len() * 2 < json.len(),
        "binary {} bytes, JSON {}",
        binary.len(),
        json.len()
    );
    // The envelope reads without the body, in either form.
    for bytes in [&binary, &json] {
        let e = wire::envelope(bytes, MAX_BYTES).unwrap();
        assert_eq!(
            (e.v, e.vmax, e.from, e.to, e.inc),
            (4, 4, id(B), id(A), id(B + 1))
        );
    }
    // A version-2 message reads as epoch 0 with no lease fields, even one that
    // carries them (only version 3 has them).
    let v2 = std::fs::read(golden_path("envelope_ack_v2")).unwrap();
    let v2 = wire::decode::<MvMap>(&v2, MAX_BYTES).unwrap();
    assert_eq!((v2.v, v2.epoch, v2.lead, v2.echo), (2, 0, None, None));
    let stray = String::from_utf8(std::fs::read(golden_path("envelope_ack_v2")).unwrap())
        .unwrap()
        .replacen(r#""inc":"#, r#""epoch":9,"lead":5,"inc":"#, 1);
    let v2 = wire::decode::<MvMap>(stray.as_bytes(), MAX_BYTES).unwrap();
    assert_eq!((v2.v, v2.epoch, v2.lead, v2.echo), (2, 0, None, None));
}

/// The fencing fields are version 3's. In a message of version 1 or 2 they are
/// unknown fields, which a reader of that version skips whatever they hold (as it
/// skips every field it does not know): a newer reader reads such a message exactly
/// as the older one does, whatever their value, type, place (before or after `v`) or
/// repetition. In version 3 they are checked: a non-integer or a repeated field is
/// refused. And a newer writer never puts them in an older version.
#[test]
fn fencing_fields_are_version_3_only() {
    let v2 = String::from_utf8(std::fs::read(golden_path("envelope_ack_v2")).unwrap()).unwrap();
    let v1 = String::from_utf8(std::fs::read(golden_path("envelope_ack")).unwrap()).unwrap();
    let v3 = String::from_utf8(std::fs::read(golden_path("envelope_ack_v3")).unwrap()).unwrap();
    let clean_v2 = wire::decode::<MvMap>(v2.as_bytes(), MAX_BYTES).unwrap();
    let clean_v1 = wire::decode::<MvMap>(v1.as_bytes(), MAX_BYTES).unwrap();
    let strays = [
        r#""epoch":"nine","#,
        r#""epoch":-1,"#,
        r#""epoch":null,"lead":{"x":[1,2]},"echo":1.5,"#,
        r#""epoch":1,"epoch":2,"lead":3,"lead":4,"#,
        r#""echo":18446744073709551616,"#,
    ];
    for stray in strays {
        for (text, clean) in [(&v2, &clean_v2), (&v1, &clean_v1)] {
            // After the envelope and before it (ahead of `v`).
            let after = text.replacen(r#""inc":"#, &format!(r#"{stray}"inc":"#), 1);
            let before = text.replacen('{', &format!("{{{stray}"), 1);
            for bytes in [after, before] {
                let read = wire::decode::<MvMap>(bytes.as_bytes(), MAX_BYTES)
                    .unwrap_or_else(|e| panic!("{bytes}: {e}"));
                assert_eq!(&read, clean, "{bytes}");
            }
        }
    }
    // Version 3 checks them.
    for stray in strays {
        let bytes = v3.replacen(r#""epoch":4,"#, stray, 1);
        assert!(
            matches!(
                wire::decode::<MvMap>(bytes.as_bytes(), MAX_BYTES),
                Err(concord::Error::Decode { .. })
            ),
            "{bytes}"
        );
    }
    let read = wire::decode::<MvMap>(v3.as_bytes(), MAX_BYTES).unwrap();
    assert_eq!(
        (read.epoch, read.lead, read.echo),
        (4, None, Some(START_MS + 250))
    );
    // Written in an older version, a message leaves them out.
    for v in [1, 2] {
        let msg = Message {
            v,
            vmax: v,
            epoch: 7,
            lead: Some(1),
            echo: Some(2),
            ..read.clone()
        };
        let text = String::from_utf8(wire::encode(&msg)).unwrap();
        for field in ["epoch", "lead", "echo"] {
            assert!(!text.contains(&format!(r#""{field}""#)), "{text}");
        }
    }
}

/// Version 3: a counter segment made by folding others names the newest dot it
/// folded (a fourth element). Written for a version-2 peer, the fold is a plain
/// segment, which that peer reads.
#[test]
fn counter_fold_provenance() {
    let mut hlc = Hlc::new(id(A + 1), ManualClock::new(START_MS));
    let mut m: OrMap<String, PnCounter> = OrMap::new();
    for n in [2, 3] {
        m.increment("likes".into(), n, &mut hlc).unwrap();
    }
    let stable = m.context().clone();
    assert!(m.fold_stable(&stable, &mut hlc).unwrap());
    assert_eq!(m.count("likes"), 5);
    assert_eq!(m.get("likes").map(concord::DotStore::size), Some(1));
    let msg = state_message(PROTOCOL_VERSION, &m);
    let v3 = Message {
        v: 3,
        vmax: 3,
        ..msg.clone()
    };
    golden_message("counter_fold_message_v3", &v3);
    golden_binary_message("counter_fold_message_v4", &msg);
    let older = Message { v: 2, ..v3 };
    let bytes = golden("counter_fold_message_as_v2", &wire::encode(&older));
    let read = wire::decode::<OrMap<String, PnCounter>>(&bytes, MAX_BYTES).unwrap();
    let plain = read.delta.unwrap();
    assert_eq!(plain.count("likes"), 5);
    both_forms_join_to_the_fold(plain, &m);
}

/// A message from `A` to `B` at version `v` carrying `m` whole.
fn state_message<T: Clone + Crdt>(v: u32, m: &T) -> Message<T> {
    Message {
        v,
        vmax: v,
        from: id(A),
        to: id(B),
        inc: id(A + 1),
        seen: m.context().clone(),
        delta: Some(m.clone()),
        base: CausalContext::new(),
        chunk: None,
        reply: false,
        epoch: 0,
        lead: None,
        echo: None,
    }
}

/// The same segment in its two forms, the fold (in `m`) and the plain one (in
/// `plain`, read from a message written for a version-2 peer): the join keeps the
/// provenance, whichever side holds it (the map's join once skipped a value whose
/// dots were the same on both sides, and kept the plain form).
fn both_forms_join_to_the_fold<T: Clone + Crdt + Debug>(plain: T, m: &T) {
    assert_ne!(&plain, m);
    for (mut x, y) in [(plain.clone(), m.clone()), (m.clone(), plain)] {
        x.merge(y);
        assert_eq!(&x, m);
    }
}

/// The same as the end of `counter_fold_provenance` for a counter inside a map
/// inside a map: the outer join compares the inner map key by key, so the fold's two
/// forms still meet and the provenance is kept.
#[test]
fn counter_fold_provenance_in_a_nested_map() {
    type Nested = OrMap<String, OrMap<String, PnCounter>>;
    let mut hlc = Hlc::new(id(A + 1), ManualClock::new(START_MS));
    let mut m: Nested = OrMap::new();
    for n in [2, 3] {
        m.update("cart".into(), &mut hlc, |inner, op| {
            inner.update_in(op, "apples".to_string(), |c, op| c.add(op, n))
        })
        .unwrap();
    }
    let stable = m.context().clone();
    assert!(m.fold_stable(&stable, &mut hlc).unwrap());
    let bytes = wire::encode(&state_message(2, &m));
    let read = wire::decode::<Nested>(&bytes, MAX_BYTES).unwrap();
    both_forms_join_to_the_fold(read.delta.unwrap(), &m);
}

#[test]
fn standalone_values() {
    let time = ManualClock::new(START_MS);
    let (mut ha, mut hb) = (Hlc::new(id(A + 1), time.clone()), Hlc::new(id(B + 1), time));
    let mut lww = LwwRegister::new();
    lww.write("blue".to_string(), &mut ha).unwrap();
    let mut theirs = LwwRegister::new();
    theirs.write("green".to_string(), &mut hb).unwrap();
    lww.merge(theirs);
    golden_value("lww_register", &lww);

    let mut mv = MvRegister::new();
    mv.write(1u8, &mut ha).unwrap();
    let mut other = MvRegister::new();
    other.write(2u8, &mut hb).unwrap();
    mv.merge(other);
    golden_value("mv_register", &mv);

    let mut counter = PnCounter::new();
    counter.increment(10, &mut ha).unwrap();
    counter.increment(-3, &mut hb).unwrap();
    golden_value("pn_counter", &counter);
}

#[test]
fn engine_snapshot() {
    let time = ManualClock::new(START_MS);
    let mut a = engine::<MvMap>(A, &[B], &time);
    let mut b = engine::<MvMap>(B, &[A], &time);
    a.update(|m, hlc| m.write("k".into(), "v".into(), hlc))
        .unwrap();
    let ack = b
        .receive(a.sync_with(id(B)).unwrap())
        .unwrap()
        .reply
        .unwrap();
    let _ = a.receive(ack).unwrap();
    a.update(|m, hlc| m.write("k".into(), "w".into(), hlc))
        .unwrap();
    let snapshot: Snapshot<MvMap> = a.snapshot().unwrap();
    golden_value("engine_snapshot", &snapshot);
    // The binary snapshot form, and the JSON file read through the same function.
    let bytes = wire::encode_snapshot(&snapshot);
    let committed = golden_binary("engine_snapshot", &bytes);
    assert_eq!(committed[..2], [wire::BINARY_SNAPSHOT, 1]);
    assert_eq!(
        wire::decode_snapshot::<Snapshot<MvMap>>(&committed).unwrap(),
        snapshot
    );
    let json = std::fs::read(golden_path("engine_snapshot")).unwrap();
    assert_eq!(
        wire::decode_snapshot::<Snapshot<MvMap>>(&json).unwrap(),
        snapshot
    );
    // A snapshot written by the first release (acknowledgements as version vectors)
    // still restores, with the same acknowledgements.
    let old = r#"{"node":"00000000-0000-0000-0000-0000000000a0","role":"Master","state":{"r":["00000000-0000-0000-0000-0000000000a1"],"c":[[0,[[1,1]]]],"e":{"k":[[0,2,"w"]]}},"peers":[["00000000-0000-0000-0000-0000000000b0",{"00000000-0000-0000-0000-0000000000a1":1}]],"hlc_last":{"ms":1700000000000,"l":1,"r":"00000000-0000-0000-0000-0000000000a1"}}"#;
    let old: Snapshot<MvMap> = serde_json::from_str(old).unwrap();
    // The same but for the peers' protocol versions, which the first release did not
    // record (the restored engine starts them at version 1).
    assert_eq!(
        old,
        Snapshot {
            peer_versions: Vec::new(),
            ..snapshot.clone()
        }
    );
    let config = Config::with_peers([id(B)]).incarnation(id(A + 2));
    SyncEngine::restore(old, time, config).unwrap();
}

/// A snapshot past `wire::COMPRESS_FROM` bytes is deflated (format 2), reads back,
/// and a damaged one is an error: a cut stream, a stated length that is too small (the
/// inflater stops there) or too large, an unknown format.
#[test]
fn large_binary_snapshots_are_deflated() {
    let mut hlc = Hlc::new(id(A + 1), ManualClock::new(START_MS));
    let mut m = MvMap::new();
    for k in 0..1_000 {
        m.write(format!("key-{k:06}"), format!("value-{k:06}"), &mut hlc)
            .unwrap();
    }
    let bytes = wire::encode_snapshot(&m);
    assert_eq!(bytes[..2], [wire::BINARY_SNAPSHOT, 2]);
    let json = serde_json::to_vec(&m).unwrap();
    assert!(
        bytes.len() * 4 < json.len(),
        "{} vs {}",
        bytes.len(),
        json.len()
    );
    assert_eq!(wire::decode_snapshot::<MvMap>(&bytes).unwrap(), m);

    // The stated length: a varint after the format byte.
    let mut stated = 0u64;
    let mut at = 2;
    for shift in (0..).step_by(7) {
        stated |= u64::from(bytes[at] & 0x7f) << shift;
        at += 1;
        if bytes[at - 1] & 0x80 == 0 {
            break;
        }
    }
    let restate = |len: u64| {
        let mut out = vec![wire::BINARY_SNAPSHOT, 2];
        let mut n = len;
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(&bytes[at..]);
        out
    };
    assert_eq!(restate(stated), bytes);
    for bad in [
        bytes[..bytes.len() - 10].to_vec(),
        restate(stated - 1),
        restate(stated + 1),
        restate(u64::MAX),
    ] {
        let e = wire::decode_snapshot::<MvMap>(&bad).unwrap_err();
        assert!(matches!(e, concord::Error::Decode { .. }), "{e:?}");
    }
    let mut unknown = bytes.clone();
    unknown[1] = 3;
    let e = wire::decode_snapshot::<MvMap>(&unknown).unwrap_err();
    assert!(matches!(e, concord::Error::InvalidSnapshot { .. }), "{e:?}");
}

/// Keys that are not JSON object keys (tuples here): the entries travel as an array of
/// `[key, value]` pairs, in key order.
#[test]
fn pair_form_entries() {
    type ByPair = OrMap<(u16, String), PnCounter>;
    let time = ManualClock::new(START_MS);
    let mut a = engine::<ByPair>(A, &[B], &time);
    a.update(|m, hlc| m.increment((7, "apples".into()), 5, hlc))
        .unwrap();
    a.update(|m, hlc| m.increment((2, "pears".into()), -1, hlc))
        .unwrap();
    let msg = a.sync_with(id(B)).unwrap();
    golden_message("pair_form_message", &msg);
    golden_value("pair_form_state", a.state());
    let bytes = serde_json::to_vec(a.state()).unwrap();
    assert_eq!(occurrences(&bytes, r#""e":[[[2,"pears"],"#), 1);
}

#[test]
fn every_golden_file_is_checked() {
    if std::env::var_os("CONCORD_BLESS").is_some() {
        return; // the other tests are writing the files right now
    }
    let dir = golden_path("x").parent().unwrap().to_path_buf();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "counter_fold_message_as_v2.json",
            "counter_fold_message_v3.json",
            "counter_fold_message_v4.hex",
            "counter_map_after_remove.json",
            "counter_map_removal_delta.json",
            "engine_snapshot.hex",
            "engine_snapshot.json",
            "envelope_ack.json",
            "envelope_ack_v2.json",
            "envelope_ack_v3.json",
            "envelope_ack_v4.hex",
            "envelope_ack_v4_as_json.json",
            "lww_map_delta.json",
            "lww_register.json",
            "mv_map_siblings_answer.json",
            "mv_map_siblings_state.json",
            "mv_register.json",
            "nested_map_delta.json",
            "nested_map_message.json",
            "nested_map_message_v2.json",
            "nested_map_state.json",
            "pair_form_message.json",
            "pair_form_state.json",
            "pn_counter.json",
        ],
        "a golden file without a test (or a test without a file)"
    );
}

/// Exchanges messages between two engines until neither has any to send, returning
/// the first byte and version of every message sent, and every refusal.
fn pump<T: Crdt>(
    a: &mut SyncEngine<T, ManualClock>,
    b: &mut SyncEngine<T, ManualClock>,
    time: &ManualClock,
) -> (Vec<(u8, u32)>, Vec<String>) {
    let (mut sent, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        time.advance(100);
        a.handle_timeout();
        b.handle_timeout();
        for a_to_b in [true, false] {
            let (from, to) = if a_to_b {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            while let Some(t) = from.poll_transmit() {
                let v = wire::envelope(&t.bytes, MAX_BYTES).unwrap().v;
                sent.push((t.bytes[0], v));
                if let Err(e) = to.handle_bytes(&t.bytes) {
                    refused.push(e.to_string());
                }
            }
        }
    }
    (sent, refused)
}

/// A register value of type `V` that the binary form cannot carry (it does not
/// serialize, or does not read back as written): two engines at the default protocol
/// version replicate it all the same (the messages that carry it in JSON, version
/// 3), keep speaking binary otherwise, and both snapshots of it read back.
fn replicates_and_restores<V>(first: V, second: V)
where
    V: Clone + Debug + PartialEq + Serialize + DeserializeOwned + 'static,
    OrMap<String, LwwRegister<V>>: Crdt,
{
    type Map<V> = OrMap<String, LwwRegister<V>>;
    let time = ManualClock::new(START_MS);
    let mut a = SyncEngine::new(
        id(A),
        Map::<V>::new(),
        time.clone(),
        Config::with_peers([id(B)]),
    );
    let mut b = SyncEngine::new(
        id(B),
        Map::<V>::new(),
        time.clone(),
        Config::with_peers([id(A)]),
    );
    let (sent, refused) = pump(&mut a, &mut b, &time);
    assert!(refused.is_empty(), "{refused:?}");
    assert!(sent.contains(&(wire::BINARY_MESSAGE, 4)), "{sent:?}");
    a.update(|m, hlc| m.write("k".into(), first.clone(), hlc))
        .unwrap();
    b.update(|m, hlc| m.write("j".into(), second.clone(), hlc))
        .unwrap();
    let (sent, refused) = pump(&mut a, &mut b, &time);
    assert!(refused.is_empty(), "{refused:?}");
    assert!(sent.contains(&(b'{', 3)), "{sent:?}");
    for e in [&a, &b] {
        assert_eq!(e.state().value("k"), Some(&first));
        assert_eq!(e.state().value("j"), Some(&second));
    }
    // Both snapshots read back, and each restored engine keeps replicating.
    for e in [&mut a, &mut b] {
        let snapshot = e.snapshot().unwrap();
        let saved = wire::encode_snapshot(&snapshot);
        assert_eq!(
            wire::decode_snapshot::<Snapshot<Map<V>>>(&saved).unwrap(),
            snapshot
        );
        let state = wire::encode_snapshot(e.state());
        assert_eq!(&wire::decode_snapshot::<Map<V>>(&state).unwrap(), e.state());
        let peer = if e.node() == id(A) { id(B) } else { id(A) };
        *e = SyncEngine::restore(snapshot, time.clone(), Config::with_peers([peer])).unwrap();
    }
    a.update(|m, hlc| m.write("later".into(), second.clone(), hlc))
        .unwrap();
    let (_, refused) = pump(&mut a, &mut b, &time);
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(b.state().value("later"), Some(&second));
}

/// `serde_json::Value` reads only from a self-describing format (`deserialize_any`).
#[test]
fn json_values_replicate_in_json() {
    replicates_and_restores(
        serde_json::json!({"x": 1, "y": [true, null, "z"]}),
        serde_json::json!(2.5),
    );
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Sparse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<u8>,
    b: u8,
}

/// A field left out when empty shifts every later field in a format without names.
#[test]
fn skipped_fields_replicate_in_json() {
    replicates_and_restores(Sparse { a: None, b: 1 }, Sparse { a: None, b: 0 });
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Inner {
    y: u32,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Flat {
    x: u32,
    #[serde(flatten)]
    inner: Inner,
}

/// `flatten` serializes a map of unknown length, which the binary form refuses.
#[test]
fn flattened_values_replicate_in_json() {
    replicates_and_restores(
        Flat {
            x: 1,
            inner: Inner { y: 2 },
        },
        Flat {
            x: 3,
            inner: Inner { y: 4 },
        },
    );
}

/// A context built by hand with a counter past 2^63 (beyond what any replica issues)
/// is never altered on the way: the binary form refuses it, and the snapshot is
/// written in JSON.
#[test]
fn a_hand_built_context_past_2_63_is_not_altered_in_a_snapshot() {
    let mut ctx = CausalContext::new();
    ctx.insert(Dot::new(id(5), (1u64 << 63) + 2));
    let saved = wire::encode_snapshot(&ctx);
    assert_eq!(saved[0], b'{', "{saved:x?}");
    if let Ok(back) = wire::decode_snapshot::<CausalContext>(&saved) {
        assert_eq!(back, ctx);
    }
}

/// Which state types `wire::encode` writes without decoding back: the library's own
/// over strings, integers, booleans, characters and byte vectors; anything with a
/// float or a type of the application's own keeps the check.
#[test]
fn binary_faithful_state_types() {
    assert!(OrMap::<String, MvRegister<String>>::binary_faithful());
    assert!(OrMap::<u64, LwwRegister<Vec<u8>>>::binary_faithful());
    assert!(OrMap::<String, PnCounter>::binary_faithful());
    assert!(OrMap::<String, OrMap<i32, MvRegister<char>>>::binary_faithful());
    assert!(!OrMap::<String, MvRegister<f64>>::binary_faithful());
    assert!(!OrMap::<String, LwwRegister<serde_json::Value>>::binary_faithful());
    assert!(!OrMap::<String, LwwRegister<Sparse>>::binary_faithful());
    assert!(!OrMap::<(u8, u8), PnCounter>::binary_faithful());
    assert!(!OrMap::<String, OrMap<String, MvRegister<Sparse>>>::binary_faithful());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// What the binary form carries unchecked reads back exactly: deltas of maps of
    /// registers and counters over arbitrary strings, integers and bytes, in messages
    /// from one engine to another.
    #[test]
    fn faithful_states_read_back_unchecked(
        writes in proptest::collection::vec(
            (".{0,12}", proptest::num::i64::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..6), 0u8..4),
            1..24,
        ),
    ) {
        type Mixed = OrMap<String, OrMap<String, MvRegister<Vec<u8>>>>;
        type Lww = OrMap<String, LwwRegister<i64>>;
        type Counters = OrMap<String, PnCounter>;
        let time = ManualClock::new(START_MS);
        let peers = Config::with_peers([id(B)]).incarnation(id(A + 1));
        let mut mixed = SyncEngine::new(id(A), Mixed::new(), time.clone(), peers.clone());
        let mut lww = SyncEngine::new(id(A), Lww::new(), time.clone(), peers.clone());
        let mut counters = SyncEngine::new(id(A), Counters::new(), time.clone(), peers);
        for (key, n, bytes, op) in &writes {
            time.advance(1);
            mixed
                .update(|m, hlc| {
                    m.apply(key.clone(), hlc, |inner, op| {
                        inner.update_in(op, "f".to_string(), |r, op| r.assign(op, bytes.clone()))
                    })
                })
                .unwrap();
            lww.update(|m, hlc| m.write(key.clone(), *n, hlc)).unwrap();
            counters.update(|m, hlc| m.increment(key.clone(), *n >> 8, hlc)).unwrap();
            if *op == 0 {
                counters.update(|m, hlc| m.remove(key, hlc)).unwrap();
            }
        }
        fn check<T: Crdt>(e: &mut SyncEngine<T, ManualClock>) {
            // Before it hears the peer, an engine writes an older version: the binary
            // form is asked for here.
            let mut msg = e.sync_with(id(B)).unwrap();
            msg.v = PROTOCOL_VERSION;
            assert!(msg.delta.is_some());
            let bytes = msg.encode();
            assert_eq!(bytes[0], wire::BINARY_MESSAGE);
            let back: Message<T> = wire::decode(&bytes, MAX_BYTES).unwrap();
            assert_eq!(back, msg);
        }
        check(&mut mixed);
        check(&mut lww);
        check(&mut counters);
    }
}
