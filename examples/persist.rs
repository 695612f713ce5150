//! Persisting and restoring a replica: snapshots on disk, a counter lease, a crash, and
//! a restart that keeps the node's identity, never reuses a dot and catches up from a
//! peer.
//!
//! Node `paris` keeps two files in a directory: `snapshot.json` (what
//! [`SyncEngine::snapshot`] returns, as JSON, replaced atomically) and `lease` (a
//! [`FileLease`]: the highest write counter that may have left the engine). Node
//! `tokyo` is its peer. Paris saves a snapshot, writes twice more, sends those writes
//! to Tokyo, and crashes before its next save. Restored from the older snapshot with
//! its lease, it writes under the same node id again, above every counter it used
//! before, and gets its two lost writes back from Tokyo.
//!
//! Run it with `cargo run --example persist`.

use std::fs;
use std::path::{Path, PathBuf};

use concord::sync::{Config, FileLease, Snapshot, SyncEngine};
use concord::{LwwRegister, ManualClock, OrMap, ReplicaId, Result};

/// User id -> email.
type Emails = OrMap<String, LwwRegister<String>>;
type Engine = SyncEngine<Emails, ManualClock>;

/// Saves a snapshot: written to a temporary file, then renamed over the old one, so a
/// crash leaves the old snapshot or the new one, never half of one.
fn save(engine: &mut Engine, dir: &Path) -> Result<()> {
    let json = serde_json::to_vec_pretty(&engine.snapshot()?)?;
    let tmp = dir.join("snapshot.json.tmp");
    fs::write(&tmp, json).expect("write the snapshot");
    fs::rename(&tmp, dir.join("snapshot.json")).expect("replace the snapshot");
    Ok(())
}

/// Restarts a node from its directory: the snapshot, then the lease of its previous
/// life (before any write).
fn restore(dir: &Path, time: &ManualClock, config: Config) -> Result<Engine> {
    let json = fs::read(dir.join("snapshot.json")).expect("read the snapshot");
    let snapshot: Snapshot<Emails> = serde_json::from_slice(&json)?;
    SyncEngine::restore(snapshot, time.clone(), config)?
        .with_lease(FileLease::new(dir.join("lease")))
}

/// Moves messages between the two engines until neither has anything to send (the
/// network of this example: a direct call).
fn deliver(a: &mut Engine, b: &mut Engine) -> Result<()> {
    loop {
        let mut quiet = true;
        while let Some(t) = a.poll_transmit() {
            let _ = b.handle_bytes(&t.bytes)?;
            quiet = false;
        }
        while let Some(t) = b.poll_transmit() {
            let _ = a.handle_bytes(&t.bytes)?;
            quiet = false;
        }
        if quiet {
            return Ok(());
        }
    }
}

fn set(engine: &mut Engine, user: &str, email: &str) -> Result<u64> {
    let receipt = engine.update(|m, hlc| m.write(user.to_string(), email.to_string(), hlc))?;
    Ok(receipt.dot.expect("a write issues a dot").counter())
}

fn emails(engine: &Engine) -> Vec<String> {
    let state = engine.state();
    state
        .iter_sorted()
        .map(|(user, r)| format!("{user}={}", r.value().unwrap()))
        .collect()
}

fn main() -> Result<()> {
    let dir: PathBuf = std::env::temp_dir().join(format!("concord-persist-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir); // the demo starts from nothing
    fs::create_dir_all(&dir).expect("create the data directory");
    let (paris, tokyo) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    let time = ManualClock::new(1_700_000_000_000);
    let paris_config = Config::with_peers([tokyo]);

    let mut a = SyncEngine::new(paris, Emails::new(), time.clone(), paris_config.clone())
        .with_lease(FileLease::new(dir.join("lease")))?;
    let mut b = SyncEngine::new(
        tokyo,
        Emails::new(),
        time.clone(),
        Config::with_peers([paris]),
    );
    println!(
        "paris writes under its node id: {}",
        a.incarnation() == paris
    );

    // A write, replicated, then a snapshot on disk.
    set(&mut a, "alice", "alice@example.com")?;
    deliver(&mut a, &mut b)?;
    save(&mut a, &dir)?;
    println!("saved a snapshot holding {:?}", emails(&a));

    // Two more writes reach Tokyo; Paris crashes before its next save.
    time.advance(1_000);
    set(&mut a, "bob", "bob@example.com")?;
    let last = set(&mut a, "carol", "carol@example.com")?;
    deliver(&mut a, &mut b)?;
    let lease = fs::read_to_string(dir.join("lease")).expect("the lease file");
    println!(
        "paris issued counters up to {last}; the lease file says {}",
        lease.trim()
    );
    drop(a); // the crash: everything in memory is gone

    // Restart from disk: the older snapshot and the lease.
    time.advance(5_000);
    let mut a = restore(&dir, &time, paris_config)?;
    println!("restored paris holds {:?}", emails(&a));
    assert_eq!((a.node(), a.incarnation()), (paris, paris)); // the same identity

    // Its next write continues above the lease: counters 2 and 3 (bob's and carol's,
    // which Tokyo holds) are never issued again.
    let next = set(&mut a, "dave", "dave@example.com")?;
    println!("paris's next write has counter {next}, above the lease");
    assert!(next > last);

    // Catch up: Tokyo sends back what Paris lost, and takes Paris's new write.
    deliver(&mut a, &mut b)?;
    println!("after catching up, paris holds {:?}", emails(&a));
    assert_eq!(
        emails(&a),
        [
            "alice=alice@example.com",
            "bob=bob@example.com",
            "carol=carol@example.com",
            "dave=dave@example.com"
        ]
    );
    assert_eq!(a.state(), b.state());
    // Paris's entry in the version vector is whole again (1 to 4, no gap), and it is
    // still one entry for the node's whole life: no new id per restart.
    assert_eq!(a.clock().iter().collect::<Vec<_>>(), [(paris, 4)]);

    save(&mut a, &dir)?; // a service saves again now and then
    fs::remove_dir_all(&dir).expect("remove the example's directory");
    Ok(())
}
