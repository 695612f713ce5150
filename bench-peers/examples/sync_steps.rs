//! Where concord's sync time goes: each step of one engine session (hello with
//! delta, encode, receive and answer, encode, receive), averaged over 50 sessions.
//! `cargo run --release --example sync_steps`
use concord_bench_peers::{concord_peer::Concord, sync_pair};
use std::time::{Duration, Instant};
fn main() {
    let pair = sync_pair::<Concord>(100_000, 100);
    let mut t = [Duration::ZERO; 5];
    let n = 50;
    for _ in 0..n {
        let (mut a, mut b) = pair.clone();
        let s = Instant::now();
        let hello = a.engine.sync_with(b.engine.node()).unwrap();
        t[0] += s.elapsed();
        let s = Instant::now();
        let bytes = hello.encode();
        t[1] += s.elapsed();
        let s = Instant::now();
        let r = b.engine.receive_bytes(&bytes).unwrap();
        t[2] += s.elapsed();
        let s = Instant::now();
        let back = r.reply.unwrap().encode();
        t[3] += s.elapsed();
        let s = Instant::now();
        let _ = a.engine.receive_bytes(&back).unwrap();
        t[4] += s.elapsed();
    }
    for (name, d) in [
        "sync_with(delta)",
        "encode",
        "receive+reply",
        "encode reply",
        "receive",
    ]
    .iter()
    .zip(t)
    {
        println!("{name:>18}: {:?}", d / n);
    }
}
