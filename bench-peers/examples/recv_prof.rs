//! The receiving side of one concord sync session (100 + 100 changes in a 100,000-key
//! map), measured apart from its set-up: receive and answer, encode the answer,
//! receive it; averaged over `N` sessions (default 40).
//!
//! `cargo run --release --example recv_prof` prints the times. On a shared machine the
//! times vary with the load; instruction counts do not:
//!
//! ```text
//! CG=1 N=5 valgrind --tool=callgrind --instr-atstart=no target/release/examples/recv_prof
//! ```
//!
//! counts only the measured part (the example switches callgrind's instrumentation on
//! and off around it with `callgrind_control`). With `PERF_CTL=<fifo>` it does the same
//! for `perf record -D -1 --control fifo:<fifo>`.
use concord_bench_peers::{concord_peer::Concord, sync_pair};
use std::io::Write;
use std::time::{Duration, Instant};
fn ctl(cmd: &str) {
    if std::env::var("CG").is_ok() {
        let arg = if cmd.starts_with("enable") {
            "on"
        } else {
            "off"
        };
        std::process::Command::new("callgrind_control")
            .args(["-i", arg, &std::process::id().to_string()])
            .status()
            .unwrap();
        return;
    }
    if let Ok(p) = std::env::var("PERF_CTL") {
        let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.write_all(cmd.as_bytes()).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
}
fn main() {
    let pair = sync_pair::<Concord>(100_000, 100);
    let n: u32 = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut work = Vec::new();
    for _ in 0..n {
        let (mut a, b) = pair.clone();
        let hello = a.engine.sync_with(b.engine.node()).unwrap();
        let bytes = hello.encode();
        work.push((a, b, bytes));
    }
    let (mut t, mut t2, mut t3) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut keep = Vec::new();
    ctl("enable\n");
    for (a, mut b, bytes) in work.drain(..) {
        let s = Instant::now();
        let r = b.engine.receive_bytes(&bytes).unwrap();
        t += s.elapsed();
        let s = Instant::now();
        let back = r.reply.unwrap().encode();
        t3 += s.elapsed();
        keep.push((a, b, back));
    }
    for (a, _b, back) in keep.iter_mut() {
        let s = Instant::now();
        let _ = a.engine.receive_bytes(back).unwrap();
        t2 += s.elapsed();
    }
    ctl("disable\n");
    println!(
        "receive+reply {:?} encode reply {:?} receive {:?}",
        t / n,
        t3 / n,
        t2 / n
    );
    std::process::exit(0);
}
