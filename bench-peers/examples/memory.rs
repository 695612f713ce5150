//! Live heap bytes per key after building a 100k-key replica, for every peer: a
//! counting global allocator wraps the system one and the figure is the growth of
//! live bytes while the replica is built (the formatted keys and values the put
//! copies from are allocated before and freed after, so they do not count).
//!
//! Then the growth of live bytes while every key is overwritten once (a replica with
//! no peer acknowledging anything: for concord, the removal log keeps every
//! overwritten dot until its peers acknowledge it, up to 65,536 dots).
//!
//! `cargo run --release --example memory [-- --keys N]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use concord_bench_peers::automerge_peer::Automerge;
use concord_bench_peers::concord_peer::Concord;
use concord_bench_peers::crdts_peer::Crdts;
use concord_bench_peers::floor::Floor;
use concord_bench_peers::{build_from, Dataset, Peer};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn measure<P: Peer>(data: &Dataset, floor: Option<f64>) -> f64 {
    let before = LIVE.load(Ordering::Relaxed);
    let replica = build_from::<P>(data);
    let after = LIVE.load(Ordering::Relaxed);
    let per_key = (after - before) as f64 / data.keys.len() as f64;
    let ratio = floor.map_or("1.00×".to_string(), |f| format!("{:.2}×", per_key / f));
    println!(
        "| {:<18} | {:>12} | {:>9.1} | {:>8} |",
        P::NAME,
        after - before,
        per_key,
        ratio
    );
    drop(replica);
    per_key
}

fn measure_overwrite<P: Peer>(data: &Dataset) {
    let mut replica = build_from::<P>(data);
    let values: Vec<String> = data.values.iter().map(|v| format!("{v}'")).collect();
    let before = LIVE.load(Ordering::Relaxed);
    for (k, v) in data.keys.iter().zip(&values) {
        P::put(&mut replica, k, v);
    }
    P::flush(&mut replica);
    let after = LIVE.load(Ordering::Relaxed);
    println!(
        "| {:<18} | {:>12} | {:>9.1} |",
        P::NAME,
        after - before,
        (after - before) as f64 / data.keys.len() as f64
    );
    drop(replica);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut keys = concord_bench_peers::keys_from_env();
    while let Some(a) = args.next() {
        if a == "--keys" {
            keys = args.next().and_then(|s| s.parse().ok()).expect("--keys N");
        }
    }
    let data = Dataset::new(keys);
    println!("## Live heap after building {keys} keys\n");
    println!("| peer               |  heap bytes  | bytes/key | vs floor |");
    println!("|--------------------|-------------:|----------:|---------:|");
    let f = measure::<Floor>(&data, None);
    measure::<Concord>(&data, Some(f));
    measure::<Crdts>(&data, Some(f));
    measure::<Automerge>(&data, Some(f));
    println!("\n## Live heap growth while overwriting each of the {keys} keys once\n");
    println!("| peer               |  heap bytes  | bytes/overwrite |");
    println!("|--------------------|-------------:|----------:|");
    measure_overwrite::<Floor>(&data);
    measure_overwrite::<Concord>(&data);
    measure_overwrite::<Crdts>(&data);
    measure_overwrite::<Automerge>(&data);
}
