//! The driver's long-lived figures: bootstrap of an empty replica from a large master
//! (time, messages, bytes, and the peak of extra live heap while it runs) at a 64 KiB
//! message limit and at the default limit, and the bytes a dropped answer costs.
//! Beside them, Automerge's initial sync of an empty replica from a master holding the
//! same keys and values (its sync protocol from fresh sync states, every message
//! encoded and decoded), for a master built in one commit and one built a commit per
//! put.
//!
//! `cargo run --release --example catch_up [-- --keys N]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use concord::sync::{Config, MemoryLease, SyncEngine, Transmit};
use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

type Map = OrMap<String, LwwRegister<String>>;
type Engine = SyncEngine<Map, ManualClock>;

fn engine(me: u128, limit: usize, time: &ManualClock) -> Engine {
    let config = Config::with_peers([ReplicaId::from_u128(1), ReplicaId::from_u128(2)])
        .max_message_bytes(limit);
    SyncEngine::new(ReplicaId::from_u128(me), Map::new(), time.clone(), config)
        .with_lease(MemoryLease::new())
        .unwrap()
}

/// Runs both drivers until converged; returns (messages, bytes).
fn run(
    a: &mut Engine,
    b: &mut Engine,
    time: &ManualClock,
    mut drop: impl FnMut(&Transmit) -> bool,
) -> (u64, u64) {
    let (mut messages, mut bytes) = (0, 0);
    for _ in 0..100_000 {
        let mut moved = false;
        for from_a in [true, false] {
            let (src, dst) = if from_a {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            while let Some(t) = src.poll_transmit() {
                moved = true;
                messages += 1;
                bytes += t.bytes.len() as u64;
                if !drop(&t) {
                    let _ = dst.handle_bytes(&t.bytes).unwrap();
                }
            }
        }
        if !moved {
            if a.state() == b.state() {
                break;
            }
            let next = a.poll_timeout().min(b.poll_timeout()).unwrap();
            time.set(next.max(time.now()));
            a.handle_timeout();
            b.handle_timeout();
        }
    }
    assert_eq!(a.state(), b.state());
    (messages, bytes)
}

/// Runs `sync` (a bootstrap: it builds the joiner, syncs it and returns it with the
/// messages and bytes it took) and prints its table row: `what` (the limit or the
/// peer), the time, the messages and bytes, the live heap the joiner holds at the
/// end, and the peak above that.
fn row<J>(keys: usize, what: &str, sync: impl FnOnce() -> (J, u64, u64)) {
    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let start = Instant::now();
    let (joiner, messages, bytes) = sync();
    let elapsed = start.elapsed();
    let state = LIVE.load(Ordering::Relaxed) - baseline;
    let peak = PEAK.load(Ordering::Relaxed) - baseline;
    println!(
        "| {keys:>7} | {what:>9} | {:>8.1} ms | {messages:>8} | {:>9.1} MB | {:>8.1} MB | {:>8.1} MB |",
        elapsed.as_secs_f64() * 1e3,
        bytes as f64 / 1e6,
        state as f64 / 1e6,
        (peak - state) as f64 / 1e6,
    );
    drop(joiner);
}

fn bootstrap(keys: usize, limit: usize) {
    let time = ManualClock::new(1_700_000_000_000);
    let mut master = engine(1, limit, &time);
    for k in 0..keys {
        master
            .update(|m, hlc| m.write(format!("key-{k:07}"), format!("value-{k}"), hlc))
            .unwrap();
    }
    let what = if limit >= 1 << 20 {
        format!("{} MiB", limit >> 20)
    } else {
        format!("{} KiB", limit >> 10)
    };
    row(keys, &what, || {
        let mut joiner = engine(2, limit, &time);
        let (messages, bytes) = run(&mut master, &mut joiner, &time, |_| false);
        (joiner, messages, bytes)
    });
}

fn automerge_bootstrap(keys: usize, commit_per_put: bool) {
    use concord_bench_peers::automerge_peer::{get, new_replica, put_uncommitted, sync_fresh};
    let mut master = new_replica(1);
    for k in 0..keys {
        put_uncommitted(
            &mut master.doc,
            &format!("key-{k:07}"),
            &format!("value-{k}"),
        );
        if commit_per_put {
            let _ = master.doc.commit();
        }
    }
    let _ = master.doc.commit();
    let what = if commit_per_put {
        "Automerge, a commit per put"
    } else {
        "Automerge, one commit"
    };
    row(keys, what, || {
        let mut joiner = new_replica(2);
        let stats = sync_fresh(&mut master, &mut joiner);
        assert_eq!(get(&joiner.doc, "key-0000000"), ["value-0"]);
        let bytes = (stats.bytes_a_to_b + stats.bytes_b_to_a) as u64;
        (joiner, stats.messages as u64, bytes)
    });
}

fn dropped_answer(changes: usize) {
    let time = ManualClock::new(1_700_000_000_000);
    let mut a = engine(1, 64 << 20, &time);
    let mut b = engine(2, 64 << 20, &time);
    run(&mut a, &mut b, &time, |_| false);
    for k in 0..changes {
        b.update(|m, hlc| m.write(format!("key-{k:07}"), "v".into(), hlc))
            .unwrap();
    }
    // B's delta to A is lost once.
    let mut dropped = 0u64;
    let (_, recovered) = run(&mut a, &mut b, &time, |t| {
        let lose = dropped == 0 && t.to == ReplicaId::from_u128(1) && t.bytes.len() > 10_000;
        if lose {
            dropped = t.bytes.len() as u64;
        }
        lose
    });
    // After the answer is acknowledged, one new write costs what it is.
    b.update(|m, hlc| m.write("new".into(), "v".into(), hlc))
        .unwrap();
    let (messages, next) = run(&mut a, &mut b, &time, |_| false);
    println!(
        "dropped answer after {changes} changes: the lost message was {dropped} B; recovery sent {recovered} B in all; \
         the next write then cost {next} B in {messages} messages (the answer is not resent)"
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut keys = 100_000;
    while let Some(a) = args.next() {
        if a == "--keys" {
            keys = args.next().and_then(|s| s.parse().ok()).expect("--keys N");
        }
    }
    println!("| keys    | limit     | time        | messages | bytes        | state       | peak extra  |");
    println!("|---------|-----------|-------------|----------|--------------|-------------|-------------|");
    bootstrap(keys, 64 << 10);
    bootstrap(keys, 64 << 20);
    automerge_bootstrap(keys, false);
    automerge_bootstrap(keys, true);
    dropped_answer(10_000);
}
