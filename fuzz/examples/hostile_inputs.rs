//! Writes the hand-made hostile inputs of `tests/fuzz-crashers/` (the files whose
//! names are not `<target>-<number>`). Rerun it after a change of wire format, and
//! review the diff:
//!
//! ```text
//! cd fuzz && cargo run --example hostile_inputs
//! ```
//!
//! The wire form of a causal context is `[[replica index, [span, …]], …]`, a span
//! being a lone counter `n` or a run `[n, extra]`, where `n` counts from the end of
//! the previous span of the same replica (see `concord::wire`).

use std::path::PathBuf;

use concord::causal::MAX_COUNTER;
use serde_json::{json, Value};

const A: &str = "00000000-0000-0000-0000-0000000000a0";
const B: &str = "00000000-0000-0000-0000-0000000000b0";
const A1: &str = "00000000-0000-0000-0000-0000000000a1";
const B1: &str = "00000000-0000-0000-0000-0000000000b1";
const C1: &str = "00000000-0000-0000-0000-0000000000c1";
const D1: &str = "00000000-0000-0000-0000-0000000000d1";
const E1: &str = "00000000-0000-0000-0000-0000000000e1";

/// A message from A to B (the harness's receiver) carrying `delta`.
fn msg(delta: Value) -> String {
    json!({"v": 1, "from": A, "to": B, "inc": A1, "clock": {A1: 1}, "delta": delta, "reply": true})
        .to_string()
}

/// A map state with replica table `r`, context `c` and entries `e`.
fn state(r: &[&str], c: Value, e: Value) -> Value {
    json!({"r": r, "c": c, "e": e})
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz-crashers");
    let valid = msg(state(
        &[A1],
        json!([[0, [[1, 3]]]]),
        json!({"k3": [[0, 4, 5]]}),
    ));
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let siblings = state(
        &[A1, C1, D1, E1],
        json!([[0, [[1, 8]]], [1, [[1, 8]]], [2, [1]], [3, [1]]]),
        json!({"k1": [[0, 9, 1], [1, 9, 2], [2, 1, 3], [3, 1, 4]]}),
    );
    let mut inputs: Vec<(&str, Vec<u8>)> = vec![
        // Not JSON, or not the envelope.
        ("decode-empty", Vec::new()),
        ("decode-truncated-json", valid.as_bytes()[..valid.len() / 2].to_vec()),
        ("decode-not-utf8", b"{\"v\":1,\"from\":\"\xff\xfe\"}".to_vec()),
        ("decode-bad-uuid", valid.replacen(A, "not-a-uuid", 1).into_bytes()),
        ("decode-huge-version", valid.replacen("\"v\":1", "\"v\":4294967296", 1).into_bytes()),
        ("decode-unknown-version", valid.replacen("\"v\":1", "\"v\":3", 1).into_bytes()),
        (
            "decode-deeply-nested-arrays",
            format!(
                r#"{{"v":1,"from":"{A}","to":"{B}","inc":"{A1}","clock":{{}},"delta":{{"r":[],"c":{},"e":{{}}}}}}"#,
                deep(30_000)
            )
            .into_bytes(),
        ),
        // Numbers: past u64, floats, negative, zero, past the counter cap, overflowing.
        ("decode-huge-counter", msg(state(&[A1], json!([[0, [1]]]), json!({"k": [[0, "18446744073709551616", 1]]}))).replace("\"18446744073709551616\"", "18446744073709551616").into_bytes()),
        ("decode-float-counter", msg(state(&[A1], json!([[0, [1]]]), json!({}))).replacen("[[0,[1]]]", "[[0,[1e400]]]", 1).into_bytes()),
        ("decode-negative-number", msg(state(&[A1], json!([[0, [-1]]]), json!({}))).into_bytes()),
        ("decode-negative-range", msg(state(&[A1], json!([[0, [[5, -3]]]]), json!({}))).into_bytes()),
        ("decode-counter-zero-in-context", msg(state(&[A1], json!([[0, [0]]]), json!({}))).into_bytes()),
        ("decode-counter-zero-element", msg(state(&[A1], json!([[0, [[1, 2]]]]), json!({"k": [[0, 0, 1]]}))).into_bytes()),
        ("decode-counter-past-cap", msg(state(&[A1], json!([[0, [MAX_COUNTER + 1]]]), json!({}))).into_bytes()),
        ("decode-range-overflow", msg(state(&[A1], json!([[0, [[1, u64::MAX]]]]), json!({}))).into_bytes()),
        ("decode-clock-past-cap", json!({"v": 1, "from": A, "to": B, "inc": A1, "clock": {A1: u64::MAX}}).to_string().into_bytes()),
        // Shapes the context forbids: adjacent or repeated spans, a replica listed
        // twice, a run of length one.
        ("decode-adjacent-spans", msg(state(&[A1], json!([[0, [[1, 3], 1]]]), json!({}))).into_bytes()),
        ("decode-replica-listed-twice", msg(state(&[A1], json!([[0, [1]], [0, [3]]]), json!({}))).into_bytes()),
        ("decode-empty-run", msg(state(&[A1], json!([[0, [[1, 0]]]]), json!({}))).into_bytes()),
        // A key that appears twice (JSON allows it; two decoders could read the message
        // differently): in a version vector, a map's entries, a context, the envelope.
        // Written as text, since a JSON value cannot hold a repeated key.
        ("decode-duplicate-clock-replica", format!(r#"{{"v":1,"from":"{A}","to":"{B}","inc":"{A1}","clock":{{"{A1}":1,"{A1}":3}}}}"#).into_bytes()),
        ("decode-duplicate-map-key", format!(r#"{{"v":1,"from":"{A}","to":"{B}","inc":"{A1}","clock":{{"{A1}":2}},"delta":{{"r":["{A1}"],"c":[[0,[[1,1]]]],"e":{{"k":[[0,1,5]],"k":[[0,2,6]]}}}},"reply":true}}"#).into_bytes()),
        ("decode-duplicate-seen-replica", format!(r#"{{"v":2,"vmax":2,"from":"{A}","to":"{B}","inc":"{A1}","seen":{{"{A1}":[[1,1]],"{A1}":[[1,2]]}}}}"#).into_bytes()),
        ("decode-duplicate-envelope-field", format!(r#"{{"v":1,"from":"{A}","from":"{A}","to":"{B}","inc":"{A1}","clock":{{}}}}"#).into_bytes()),
        // Replica indices out of the table.
        ("decode-replica-index-out-of-range", msg(state(&[A1], json!([[7, [1]]]), json!({}))).into_bytes()),
        ("decode-element-replica-index-out-of-range", msg(state(&[A1], json!([[0, [1]]]), json!({"k": [[u32::MAX, 1, 1]]}))).into_bytes()),
        // Valid JSON, invalid contents.
        ("decode-element-not-in-context", msg(state(&[A1], json!([[0, [[1, 1]]]]), json!({"k": [[0, 9, 1]]}))).into_bytes()),
        ("decode-same-dot-two-keys", msg(state(&[A1], json!([[0, [[1, 1]]]]), json!({"k0": [[0, 1, 1]], "k1": [[0, 1, 2]]}))).into_bytes()),
        ("decode-too-many-siblings", msg(siblings.clone()).into_bytes()),
        ("decode-too-many-clock-entries", json!({"v": 1, "from": A, "to": B, "inc": A1, "clock": (1..40).map(|i| (format!("00000000-0000-0000-0000-{i:012x}"), json!(1))).collect::<serde_json::Map<_, _>>()}).to_string().into_bytes()),
        // The envelope lies about who is talking to whom.
        ("decode-unknown-peer", valid.replacen(A, "00000000-0000-0000-0000-0000000000d0", 1).into_bytes()),
        ("decode-misaddressed", valid.replacen(B, A, 1).into_bytes()),
        ("decode-from-self", valid.replacen(A, B, 1).into_bytes()),
        // Refused from the envelope, before the body (which would be refused anyway):
        // an unknown peer whose envelope follows its body.
        ("decode-unknown-peer-envelope-last", format!(r#"{{"delta":{},"clock":{{"{A1}":1}},"v":1,"from":"00000000-0000-0000-0000-0000000000d0","to":"{B}","inc":"{A1}"}}"#, state(&[A1], json!([[0, [[1, 3]]]]), json!({"k3": [[0, 4, 5]]}))).into_bytes()),
        // Past the harness's limits (4096 ranges, 4096 entries), refused while decoding.
        ("decode-too-many-context-ranges", msg(state(&[A1], json!([[0, std::iter::once(1).chain(std::iter::repeat_n(2, 5_000)).collect::<Vec<u64>>()]]), json!({}))).into_bytes()),
        ("decode-too-many-seen-ranges", json!({"v": 2, "vmax": 2, "from": A, "to": B, "inc": A1, "seen": {A1: (0..5_000u64).map(|k| json!([2 * k + 1, 2 * k + 1])).collect::<Vec<_>>()}}).to_string().into_bytes()),
        ("decode-too-many-entries", msg(state(&[A1], json!([[0, [[1, 4_999]]]]), (1..=5_000u64).map(|k| (format!("k{k}"), json!([[0, k, 1]]))).collect::<serde_json::Map<_, _>>().into())).into_bytes()),
        // Open bugs (see OPEN_BUGS in tests/fuzz_regressions.rs).
        ("decode-own-incarnation-at-cap", msg(state(&[B1], json!([[0, [[1, MAX_COUNTER - 1]]]]), json!({}))).into_bytes()),
        ("decode-stale-invalid-delta", json!({"v": 1, "from": A, "to": B, "inc": A1, "clock": {A1: 9}, "delta": state(&[A1], json!([[0, [[1, 1]]]]), json!({"k": [[0, 9, 1]]})), "base": {B1: 50}, "reply": true}).to_string().into_bytes()),
    ];
    let states: Vec<(&str, String)> = vec![
        (
            "apply-truncated-json",
            state(&[A1], json!([[0, [1]]]), json!({})).to_string()[..30].to_string(),
        ),
        ("apply-missing-table", json!({"c": [], "e": {}}).to_string()),
        (
            "apply-deeply-nested-arrays",
            format!(r#"{{"r":[],"c":{},"e":{{}}}}"#, deep(30_000)),
        ),
        (
            "apply-huge-counter",
            state(&[A1], json!([[0, [1]]]), json!({}))
                .to_string()
                .replacen("[[0,[1]]]", "[[0,[18446744073709551616]]]", 1),
        ),
        (
            "apply-counter-zero",
            state(&[A1], json!([[0, [[1, 1]]]]), json!({"k": [[0, 0, 1]]})).to_string(),
        ),
        (
            "apply-counter-past-cap",
            state(&[A1], json!([[0, [MAX_COUNTER + 1]]]), json!({})).to_string(),
        ),
        (
            "apply-negative-range",
            state(&[A1], json!([[0, [[9, -3]]]]), json!({})).to_string(),
        ),
        (
            "apply-adjacent-spans",
            state(&[A1], json!([[0, [[1, 4], 1]]]), json!({})).to_string(),
        ),
        (
            "apply-replica-index-out-of-range",
            state(&[A1], json!([[3, [1]]]), json!({})).to_string(),
        ),
        (
            "apply-element-not-in-context",
            state(&[A1], json!([]), json!({"k0": [[0, 1, 1]]})).to_string(),
        ),
        (
            "apply-same-dot-two-keys",
            state(
                &[A1],
                json!([[0, [[1, 1]]]]),
                json!({"k0": [[0, 1, 1]], "k1": [[0, 1, 2]]}),
            )
            .to_string(),
        ),
        // Siblings are an `Mv` (m) matter: counters hold segments, not siblings.
        ("apply-too-many-siblings", format!("m{siblings}")),
    ];
    inputs.extend(states.into_iter().map(|(name, s)| (name, s.into_bytes())));
    for (name, bytes) in &inputs {
        std::fs::write(dir.join(name), bytes)?;
    }
    println!("{} inputs written to {}", inputs.len(), dir.display());
    Ok(())
}
