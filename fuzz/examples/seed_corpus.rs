//! Writes seed inputs for every target into `fuzz/corpus/<target>/` (git-ignored):
//! valid messages, states and programs for the fuzzer to mutate.
//!
//! ```text
//! cd fuzz && cargo run --example seed_corpus
//! ```

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (i, (target, bytes)) in concord_fuzz::seeds().into_iter().enumerate() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{i}")), bytes)?;
    }
    println!("seeds written to {}", root.display());
    Ok(())
}
