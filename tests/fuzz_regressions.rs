//! Replays every input in `tests/fuzz-crashers/` through the fuzz targets' own code
//! (`tests/fuzz_harness/mod.rs`, included below): crash inputs the fuzzer found, and hand-made
//! hostile inputs. A file `<target>-<name>` goes to target `decode`, `apply`,
//! `converge`, `sim`, `fold` or `large`; see `tests/fuzz-crashers/README.md`.
//!
//! * `decode` and `apply` inputs must come back as a clean `Err` (no panic; the
//!   harness also checks that the rejected input changed nothing).
//! * `converge`, `sim` and `fold` inputs must run without a panic and converge (and
//!   `fold`'s counter totals must be right).
//! * `large` inputs must pass the harness's checks, accepted or refused.
//!
//! Inputs that still expose an open bug are listed in [`OPEN_BUGS`] and replayed by
//! the ignored test `open_bugs_are_fixed` (`cargo test -- --ignored` shows them).
//!
//! The harness runs the simulator and decodes structured inputs with `arbitrary`,
//! which the `arbitrary` feature (implying `testing`) provides.
#![cfg(feature = "arbitrary")]

#[path = "fuzz_harness/mod.rs"]
mod harness;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Inputs that still fail because of a bug in concord (not in the input). Once the
/// bug is fixed, remove the name: the main test then keeps it fixed.
const OPEN_BUGS: &[&str] = &[];

fn crashers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-crashers")
}

/// Every input file (everything but the README), sorted by name.
fn inputs() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(crashers_dir())
        .expect("tests/fuzz-crashers/ exists")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).expect("readable input");
            (name, bytes)
        })
        .filter(|(name, _)| !name.starts_with("README"))
        .collect();
    out.sort();
    out
}

/// Replays one input; `Err` describes what went wrong.
fn replay(name: &str, bytes: &[u8]) -> Result<String, String> {
    let target = name.split('-').next().unwrap_or_default();
    let ran = catch_unwind(AssertUnwindSafe(|| match target {
        "decode" => Some(harness::decode(bytes)),
        "apply" => Some(harness::apply(bytes)),
        "converge" => {
            harness::converge(bytes);
            None
        }
        "sim" => {
            harness::sim(bytes);
            None
        }
        "fold" => {
            harness::fold(bytes);
            None
        }
        // Accepted or refused: the harness checks either way.
        "large" => {
            let _ = harness::large(bytes);
            None
        }
        _ => panic!("{name}: no target named {target:?} (decode, apply, converge, sim, large)"),
    }));
    match ran {
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("{name}: panicked: {message}"))
        }
        Ok(None) => Ok(format!("{name}: ran")),
        Ok(Some(Ok(()))) => Err(format!("{name}: accepted, expected a clean Err")),
        Ok(Some(Err(e))) => Ok(format!("{name}: {e}")),
    }
}

#[test]
fn fuzz_crashers_are_rejected_cleanly() {
    let mut failures = Vec::new();
    for (name, bytes) in inputs() {
        if OPEN_BUGS.contains(&name.as_str()) {
            continue;
        }
        match replay(&name, &bytes) {
            Ok(report) => println!("{report}"),
            Err(failure) => failures.push(failure),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
#[ignore = "open bugs: see OPEN_BUGS"]
fn open_bugs_are_fixed() {
    let failures: Vec<String> = inputs()
        .into_iter()
        .filter(|(name, _)| OPEN_BUGS.contains(&name.as_str()))
        .filter_map(|(name, bytes)| replay(&name, &bytes).err())
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_open_bug_has_an_input() {
    let names: Vec<String> = inputs().into_iter().map(|(name, _)| name).collect();
    for bug in OPEN_BUGS {
        assert!(
            names.iter().any(|n| n == bug),
            "OPEN_BUGS names a missing file {bug}"
        );
    }
}

/// The fuzzer's seeds are valid: messages and states are accepted, programs converge.
/// (Guards the harness itself: a harness that rejects everything would find nothing.)
#[test]
fn seeds_are_accepted() {
    for (target, bytes) in harness::seeds() {
        match target {
            "decode" => harness::decode(&bytes).unwrap(),
            "apply" => harness::apply(&bytes).unwrap(),
            _ => harness::converge(&bytes),
        }
    }
}

/// The structured decoders read any bytes, including none.
#[test]
fn decoders_take_any_bytes() {
    assert_eq!(harness::program(&[]).actions.len(), 0);
    let long: Vec<u8> = (0..=255).cycle().take(4_096).collect();
    assert_eq!(harness::program(&long).actions.len(), 256);
    for kind in [
        harness::Kind::Mv,
        harness::Kind::Counter,
        harness::Kind::Lww,
        harness::Kind::Nested,
    ] {
        let state = harness::build_state(&mut harness::Bytes::new(&long), kind);
        assert!(state.get("e").is_some(), "{state}");
    }
}

/// Hostile input that is nevertheless valid is accepted without a panic (the harness
/// checks the engine afterwards): nesting 30 000 deep inside a field the decoder
/// ignores, clock entries and an element dot at the counter cap.
#[test]
fn hostile_but_valid_inputs_are_accepted() {
    let a = "00000000-0000-0000-0000-0000000000a0";
    let b = "00000000-0000-0000-0000-0000000000b0";
    let a1 = "00000000-0000-0000-0000-0000000000a1";
    let cap = concord::causal::MAX_COUNTER;
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let messages = [
        format!(r#"{{"v":1,"from":"{a}","to":"{b}","inc":"{a1}","clock":{{}},"x":{deep}}}"#),
        format!(r#"{{"v":1,"from":"{a}","to":"{b}","inc":"{a1}","clock":{{"{a1}":{cap}}}}}"#),
    ];
    for msg in messages {
        harness::decode(msg.as_bytes()).unwrap();
    }
    // Found by cargo fuzz: a message forged in A's name carrying dots of A's own
    // writer. B accepts it (it cannot tell them from A's writes); A then refuses B's
    // state naming writes A never issued, and the harness counts that as a refusal.
    // Found by cargo fuzz: a removed dot past a gap; B answers in version 1, which
    // names no gaps (the harness compares the reply with its gap-free prefix).
    let gap = r#"{"clock":{"00000000-0000-0000-0000-0000000000a1":1},"delta":{"c":[[0,[[1,3],2]]],"e":{},"r":["00000000-0000-0000-0000-0000000000a1"]},"from":"00000000-0000-0000-0000-0000000000a0","inc":"00000000-0000-0000-0000-0000000000a1","reply":true,"to":"00000000-0000-0000-0000-0000000000b0","v":1}"#;
    harness::decode(gap.as_bytes()).unwrap();
    let forged = r#"{"clock":{"00000000-0000-0000-0000-0000000000a1":1},"delta":{"c":[[0,[[1,8]]],[1,[[1,8]]],[2,[1]],[3,[1]]],"e":{"k0":[[0,9,1],[1,9,2],[2,1,3],[3,1,4]]},"r":["00000000-0000-0000-0000-0000000000a1","00000000-0000-0000-0000-0000000000c1","00000000-0008-0000-0000-0000000000d1","00000000-0000-0000-0000-0000000000e1"]},"from":"00000000-0000-0000-0000-0000000000a0","inc":"00000000-0000-0000-0000-0000000000a1","reply":true,"to":"00000000-0000-0000-0000-0000000000b0","v":1}"#;
    harness::decode(forged.as_bytes()).unwrap();
    // The context's one span is the lone counter `cap` (counted from 0).
    let state = format!(r#"m{{"r":["{a1}"],"c":[[0,[{cap}]]],"e":{{"k0":[[0,{cap},1]]}}}}"#);
    harness::apply(state.as_bytes()).unwrap();
}

/// The `large` target's messages of the codec issue's cases are accepted (guards the
/// builder: a description the receiver always refused would test only refusals): a
/// context of 5,000 gaps by a writer nobody knows (accepted, its delta skipped: with
/// the cap on relayed gaps lifted, the harness's poisoning check fails on it), 50,000
/// dots `k·2^32` apart (the hash-flooding shape), nested counters with removal notes
/// and gaps, 60 siblings on one key.
#[test]
fn large_messages_of_the_codec_cases_are_accepted() {
    use harness::{Large, Run};
    let a1 = concord::ReplicaId::from_u128(0xa1);
    let other = concord::ReplicaId::from_u128(0xdead_beef);
    let run = |writer, start, stride, count, len| Run {
        writer,
        start,
        stride,
        count,
        len,
    };
    let cases = [
        Large {
            nested: false,
            writers: vec![a1, other],
            elements: vec![run(0, 1, 1, 1, 1)],
            ranges: vec![run(1, 2, 2, 5_000, 1)],
            keys: 1,
            notes: 0,
            claims: vec![],
            reply: true,
        },
        Large {
            nested: false,
            writers: vec![a1],
            elements: vec![run(0, 1, 1 << 32, 50_000, 1)],
            ranges: vec![],
            keys: 50_000,
            notes: 0,
            claims: vec![],
            reply: true,
        },
        Large {
            nested: true,
            writers: vec![a1, other],
            elements: vec![run(0, 1, 3, 300, 1), run(1, 5, 2, 300, 1)],
            ranges: vec![run(1, 2, 2, 100, 1)],
            keys: 7,
            notes: 14,
            claims: vec![(0, 2_000)],
            reply: false,
        },
        Large {
            nested: false,
            writers: vec![a1],
            elements: vec![run(0, 1, 2, 60, 1)],
            ranges: vec![],
            keys: 1,
            notes: 0,
            claims: vec![],
            reply: true,
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        harness::large_described(case).unwrap_or_else(|e| panic!("case {i}: {e}"));
    }
}

/// The `sim` target's programs decode from any bytes, and a program it decodes runs.
#[test]
fn sim_programs_decode_from_any_bytes() {
    harness::sim(&[]);
    let long: Vec<u8> = (0..=255u8).cycle().take(4_096).collect();
    harness::sim(&long);
}
