//! Hostile-input figures: what a hostile message costs the replica that refuses it
//! (peak heap above the baseline, counted by a counting allocator, and time), the time
//! per received dot for peer-chosen dots against sequential ones, and the size of the
//! messages two honest replicas exchange after a third poisoned one of them with a
//! context full of gaps.
//!
//! Run it with `cargo run --release --example hostile` (BENCHMARKS.md, "Hostile
//! input"). Not a test: it prints figures and asserts nothing about time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use concord::sync::{Config, SyncEngine};
use concord::{ManualClock, MvRegister, OrMap, ReplicaId};

/// Counts live heap bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size > layout.size() {
                let now =
                    LIVE.fetch_add(new_size - layout.size(), Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

type Map = OrMap<String, MvRegister<u8>>;
type Engine = SyncEngine<Map, ManualClock>;

fn id(n: u128) -> ReplicaId {
    ReplicaId::from_u128(n)
}

fn engine(me: u128, peers: &[u128]) -> Engine {
    let config = Config::with_peers(peers.iter().map(|&p| id(p))).incarnation(id(1000 + me));
    SyncEngine::new(id(me), Map::new(), ManualClock::new(1_000), config)
}

/// A version-2 message from `from` to `to` whose delta is `delta` (raw JSON).
fn message(from: u128, to: u128, delta: &str) -> Vec<u8> {
    format!(
        r#"{{"v":2,"vmax":2,"from":"{}","to":"{}","inc":"{}","seen":{{}},"delta":{delta}}}"#,
        id(from),
        id(to),
        id(1000 + from)
    )
    .into_bytes()
}

/// A delta of no entries whose context holds `spans` lone dots of replica `of`
/// (counters 1, 3, 5, ...: two bytes a span), padded to about `bytes` if `spans` is 0.
fn gappy_delta(of: u128, spans: usize) -> String {
    let mut s = format!(r#"{{"r":["{}"],"c":[[0,[1"#, id(of));
    for _ in 1..spans {
        s.push_str(",2");
    }
    s.push_str("]]],\"e\":{}}");
    s
}

/// A delta of `n` keys, each one sibling of replica `of`, at counters `k * step`.
fn dots_delta(of: u128, n: u64, step: u64) -> String {
    let mut c = String::new();
    let mut e = String::new();
    for k in 1..=n {
        if step == 1 {
            if k == 1 {
                write!(c, "[1,{}]", n - 1).unwrap();
            }
        } else {
            if k > 1 {
                c.push(',');
            }
            write!(c, "{step}").unwrap();
        }
        if k > 1 {
            e.push(',');
        }
        write!(e, r#""k{k}":[[0,{},1]]"#, k * step).unwrap();
    }
    format!(r#"{{"r":["{}"],"c":[[0,[{c}]]],"e":{{{e}}}}}"#, id(of))
}

fn mib(n: usize) -> f64 {
    n as f64 / (1 << 20) as f64
}

/// Runs `f`, returning its result, the peak heap above the heap before it, and the
/// seconds it took.
fn measure<R>(f: impl FnOnce() -> R) -> (R, usize, f64) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let t = Instant::now();
    let r = f();
    let secs = t.elapsed().as_secs_f64();
    (r, PEAK.load(Relaxed) - base, secs)
}

fn refusals() {
    // B's peers are A (1) and X (3); N (9) is no peer. 64 MiB of two-byte spans.
    let spans = ((64 << 20) - 400) / 2;
    let delta = gappy_delta(1, spans);
    let cases = [
        ("non-peer sender", message(9, 2, &delta)),
        ("misaddressed (to C)", message(1, 4, &delta)),
        ("peer, over the range limit", message(1, 2, &delta)),
    ];
    println!(
        "## Refusing a {:.1} MiB message of {spans} two-byte context spans",
        mib(cases[0].1.len())
    );
    println!();
    println!("| case | error | peak heap above baseline | × message | time |");
    println!("|---|---|---:|---:|---:|");
    for (name, bytes) in cases {
        let mut b = engine(2, &[1, 3]);
        let (result, peak, secs) = measure(|| b.receive_bytes(&bytes).map(|_| ()));
        let err = result.expect_err("refused");
        let err = err.to_string();
        let err = err.split(':').next().unwrap_or_default();
        println!(
            "| {name} | {err} | {:.2} MiB | {:.2} | {:.3} s |",
            mib(peak),
            peak as f64 / bytes.len() as f64,
            secs
        );
    }
    println!();
}

fn dots() {
    println!("## Receiving 200,000 dots (one sibling per key) from a peer");
    println!();
    println!("| dots | message | time | per dot | peak heap above baseline | × message |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, step) in [
        ("sequential (1, 2, 3, ...)", 1u64),
        ("hostile (k * 2^32)", 1 << 32),
    ] {
        let bytes = message(1, 2, &dots_delta(1, 200_000, step));
        let mut b = engine(2, &[1]);
        let (result, peak, secs) = measure(|| b.receive_bytes(&bytes).map(|_| ()));
        result.expect("accepted");
        assert_eq!(b.state().len(), 200_000);
        println!(
            "| {name} | {:.1} MB | {:.3} s | {:.2} µs | {:.1} MiB | {:.1} |",
            bytes.len() as f64 / 1e6,
            secs,
            secs * 1e6 / 200_000.0,
            mib(peak),
            peak as f64 / bytes.len() as f64
        );
    }
    println!();
}

fn poisoning() {
    // X (3) poisons B with 500k lone dots of a replica nobody knows (7); then A and B,
    // honest, exchange a write and a few heartbeats.
    let mut a = engine(1, &[2, 3]);
    let mut b = engine(2, &[1, 3]);
    let poison = message(3, 2, &gappy_delta(7, 500_000));
    let accepted = b.receive_bytes(&poison).map(|_| ());
    let before = b.metrics();
    println!(
        "## Poisoning: X sends B one {:.2} MB delta of 500,000 context gaps ({})",
        poison.len() as f64 / 1e6,
        match &accepted {
            // `unbacked_deltas` is read by name only where the field exists.
            Ok(()) if format!("{before:?}").contains("unbacked_deltas: 1") => {
                "skipped as unbacked".to_string()
            }
            Ok(()) => "accepted".to_string(),
            Err(e) => format!("refused: {e}"),
        }
    );
    println!();
    let mut sizes = Vec::new();
    for round in 0..3 {
        a.update(|m, hlc| m.write(format!("a{round}"), 1, hlc))
            .unwrap();
        let hello = a.sync_with(id(2)).unwrap().encode();
        let answer = b
            .receive_bytes(&hello)
            .unwrap()
            .reply
            .expect("answer")
            .encode();
        let _ = a.receive_bytes(&answer).unwrap();
        let heartbeat = b.sync_with(id(1)).unwrap().encode();
        let back = a
            .receive_bytes(&heartbeat)
            .unwrap()
            .reply
            .expect("answer")
            .encode();
        let _ = b.receive_bytes(&back).unwrap();
        sizes.push((hello.len(), answer.len(), heartbeat.len(), back.len()));
    }
    println!("| round | A→B write | B→A answer | B→A session | A→B answer |");
    println!("|---|---:|---:|---:|---:|");
    for (i, (w, a, h, r)) in sizes.into_iter().enumerate() {
        println!("| {} | {w} B | {a} B | {h} B | {r} B |", i + 1);
    }
    println!();
}

fn main() {
    refusals();
    dots();
    poisoning();
}
