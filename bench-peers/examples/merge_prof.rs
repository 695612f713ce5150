//! The trusted full-state join of two diverged 100,000-key replicas
//! (`Resolver::merge`), measured apart from its set-up, for callgrind:
//!
//! ```text
//! CG=1 valgrind --tool=callgrind --instr-atstart=no target/release/examples/merge_prof
//! ```
use concord_bench_peers::{concord_peer::Concord, diverged};
fn ctl(on: bool) {
    if std::env::var("CG").is_ok() {
        std::process::Command::new("callgrind_control")
            .args([
                "-i",
                if on { "on" } else { "off" },
                &std::process::id().to_string(),
            ])
            .status()
            .unwrap();
    }
}
fn main() {
    let (a, b) = diverged::<Concord>(100_000);
    let (mut a, b) = (a.engine.into_state(), b.engine.into_state());
    let t = std::time::Instant::now();
    ctl(true);
    concord::Resolver::merge(&mut a, b);
    ctl(false);
    println!("merge {:?}", t.elapsed());
    std::process::exit(0);
}
