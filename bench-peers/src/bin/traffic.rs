//! Prints the size figures of the peer comparison (bytes are not timings, so they
//! come from a plain run, not from criterion):
//!
//! - full-state bytes per key (concord's binary snapshot and JSON, crdts JSON,
//!   Automerge `save()`, plain-map JSON);
//! - bytes and messages to converge two replicas that share `keys` keys and each
//!   made `changes` changes, both ways, against the raw JSON of the changed entries.
//!
//! The sync times printed here are one run each (noisy); criterion's
//! `sync/*` benches time the same calls properly.
//!
//! Usage: `cargo run --release --bin traffic [-- --keys N --changes M]`
//! (defaults from `BENCH_KEYS` / `BENCH_CHANGES`, else 100000 / 100; `BENCH_VALUES=short`
//! for values of about two bytes; `BENCH_PROTOCOL=3` for concord's JSON wire).

use std::time::Duration;

use concord_bench_peers::{
    apply_plan, automerge_peer, build, check_converged, concord_peer, crdts_peer, floor, timed,
    Peer, Plan, SyncStats,
};

fn main() {
    let mut keys = concord_bench_peers::keys_from_env();
    let mut changes = concord_bench_peers::changes_from_env();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || -> usize {
            args.next()
                .and_then(|s| s.replace('_', "").parse().ok())
                .unwrap_or_else(|| usage(&format!("{a} needs a number")))
        };
        match a.as_str() {
            "--keys" => keys = num(),
            "--changes" => changes = num(),
            "-h" | "--help" => usage(""),
            _ => usage(&format!("unknown argument {a}")),
        }
    }

    println!("# Peer traffic and state sizes: {keys} keys, {changes} changes per side\n");
    state_table(keys);
    println!();
    sync_table(keys, changes);
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("error: {err}");
    }
    eprintln!("usage: traffic [--keys N] [--changes M]");
    std::process::exit(if err.is_empty() { 0 } else { 2 })
}

fn state_row<P: Peer>(format: &str, keys: usize, floor_bytes: Option<usize>) -> usize {
    let mut r = build::<P>(keys);
    let bytes = P::state_bytes(&mut r);
    let per_key = bytes as f64 / keys as f64;
    let ratio = match floor_bytes {
        Some(f) => format!("{:.2}×", bytes as f64 / f as f64),
        None => "1.00×".into(),
    };
    println!(
        "| {:<18} | {:<22} | {:>12} | {:>9.2} | {:>8} |",
        P::NAME,
        format,
        bytes,
        per_key,
        ratio
    );
    bytes
}

fn state_table(keys: usize) {
    println!("## Full state\n");
    println!(
        "| peer               | format                 |        bytes | bytes/key | vs floor |"
    );
    println!(
        "|--------------------|------------------------|-------------:|----------:|---------:|"
    );
    let f = state_row::<floor::Floor>("serde_json", keys, None);
    state_row::<concord_peer::Concord>("wire::encode_snapshot", keys, Some(f));
    {
        let r = build::<concord_peer::Concord>(keys);
        let bytes = concord_peer::state_json_bytes(&r);
        println!(
            "| {:<18} | {:<22} | {:>12} | {:>9.2} | {:>7.2}× |",
            "concord",
            "serde_json",
            bytes,
            bytes as f64 / keys as f64,
            bytes as f64 / f as f64
        );
    }
    state_row::<crdts_peer::Crdts>("serde_json", keys, Some(f));
    state_row::<automerge_peer::Automerge>("save() binary", keys, Some(f));
    state_row::<automerge_peer::AutomergeBatched>("save() binary", keys, Some(f));
}

fn sync_row(name: &str, how: &str, s: &SyncStats, t: Duration, raw: usize) {
    println!(
        "| {:<18} | {:<35} | {:>4} | {:>4} | {:>10} | {:>10} | {:>10} | {:>9.1}× | {:>10.3} |",
        name,
        how,
        s.messages,
        s.messages_to_converge,
        s.bytes_a_to_b,
        s.bytes_b_to_a,
        s.bytes(),
        s.bytes() as f64 / raw as f64,
        t.as_secs_f64() * 1e3,
    );
}

fn sync_case<P: Peer>(
    plan: &Plan,
    how: &str,
    raw: usize,
    sync: fn(&mut P::Replica, &mut P::Replica) -> SyncStats,
) {
    let (mut a, mut b) = apply_plan::<P>(plan);
    let (s, t) = timed(|| sync(&mut a, &mut b));
    check_converged::<P>(&a, &b, plan);
    sync_row(P::NAME, how, &s, t, raw);
}

fn sync_table(keys: usize, changes: usize) {
    let plan = Plan::sync(keys, changes);
    let raw = plan.raw_changed_json_bytes();
    println!("## Converging both ways after {changes} + {changes} changes\n");
    println!(
        "Raw JSON of the {} changed entries: {raw} bytes ({} + {}).\n",
        plan.a.len() + plan.b.len(),
        plan.changed_json('a').len(),
        plan.changed_json('b').len()
    );
    println!("| peer               | how                                 | msgs | conv |  bytes A→B |  bytes B→A |      bytes |     vs raw | ms (1 run) |");
    println!("|--------------------|-------------------------------------|-----:|-----:|-----------:|-----------:|-----------:|-----------:|-----------:|");
    sync_case::<floor::Floor>(&plan, "changed entries as JSON", raw, floor::Floor::sync);
    sync_case::<concord_peer::Concord>(
        &plan,
        "one engine session, wire-encoded",
        raw,
        concord_peer::Concord::sync,
    );
    sync_case::<crdts_peer::Crdts>(
        &plan,
        "full state JSON both ways",
        raw,
        crdts_peer::Crdts::sync,
    );
    {
        let (mut a, mut b) = crdts_peer::apply_plan_logged(&plan);
        let (s, t) = timed(|| crdts_peer::sync_ops(&mut a, &mut b));
        check_converged::<crdts_peer::Crdts>(&a, &b, &plan);
        sync_row("crdts", "op log JSON (needs causal delivery)", &s, t, raw);
    }
    use automerge_peer::{sync_fresh, Automerge, AutomergeBatched};
    sync_case::<Automerge>(
        &plan,
        "sync protocol, persisted state",
        raw,
        Automerge::sync,
    );
    sync_case::<Automerge>(&plan, "sync protocol, fresh state", raw, sync_fresh);
    sync_case::<AutomergeBatched>(
        &plan,
        "sync protocol, persisted state",
        raw,
        AutomergeBatched::sync,
    );
    sync_case::<AutomergeBatched>(&plan, "sync protocol, fresh state", raw, sync_fresh);
}
