//! A first program with concord: three regions replicate user profiles over channels,
//! race on one profile and resolve it with the application's own merge function, serve
//! a client's read-your-writes token, and restart a region from disk.
//!
//! Run it with `cargo run --example three_regions`.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};

use concord::sync::{Config, FileLease, Snapshot, SyncEngine};
use concord::{CausalContext, MvRegister, OrMap, ReplicaId, SystemClock};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    email: String,
    verified: bool,
}

/// User id -> profile; concurrent edits of one profile are kept side by side.
type Profiles = OrMap<String, MvRegister<Profile>>;

/// The application's merge: a verified email wins, then the larger (name, email), so
/// every region picks the same profile.
fn merge(siblings: &[&Profile]) -> Profile {
    let best = siblings
        .iter()
        .max_by_key(|p| (p.verified, &p.name, &p.email));
    (*best.expect("never called with no siblings")).clone()
}

struct Region {
    name: &'static str,
    dir: PathBuf, // its snapshot and its counter lease
    engine: SyncEngine<Profiles>,
    inbox: Receiver<Vec<u8>>,
}

/// Starts a region's engine: from its snapshot if it has one, always with its lease.
fn boot(id: ReplicaId, peers: Vec<ReplicaId>, dir: &Path) -> concord::Result<SyncEngine<Profiles>> {
    let config = Config::with_peers(peers);
    let lease = FileLease::new(dir.join("lease"));
    match std::fs::read(dir.join("snapshot.json")) {
        Ok(json) => {
            let snapshot: Snapshot<Profiles> = serde_json::from_slice(&json)?;
            SyncEngine::restore(snapshot, SystemClock, config)?.with_lease(lease)
        }
        Err(_) => SyncEngine::new(id, Profiles::new(), SystemClock, config).with_lease(lease),
    }
}

impl Region {
    fn save(&mut self) -> Result<(), Box<dyn Error>> {
        // Written beside the old one, then renamed over it: a crash leaves one whole.
        let json = serde_json::to_vec(&self.engine.snapshot()?)?;
        std::fs::write(self.dir.join("snapshot.tmp"), json)?;
        std::fs::rename(
            self.dir.join("snapshot.tmp"),
            self.dir.join("snapshot.json"),
        )?;
        Ok(())
    }

    fn write(
        &mut self,
        user: &str,
        name: &str,
        email: &str,
        verified: bool,
    ) -> concord::Result<()> {
        let p = Profile {
            name: name.into(),
            email: email.into(),
            verified,
        };
        self.engine
            .update(|m, hlc| m.write(user.to_string(), p, hlc))?;
        Ok(())
    }
}

/// Moves messages until every region is quiet; prints the races the merges resolved.
fn pump(regions: &mut [Region], links: &[(ReplicaId, Sender<Vec<u8>>)]) -> concord::Result<()> {
    loop {
        let mut quiet = true;
        for r in regions.iter_mut() {
            for bytes in r.inbox.try_iter() {
                for c in r.engine.handle_bytes(&bytes)?.conflicts {
                    let email = c.resolved.resolve(merge).map(|p| p.email);
                    println!("  {}: race on {:?}, resolved to {email:?}", r.name, c.key);
                }
                quiet = false;
            }
            while let Some(t) = r.engine.poll_transmit() {
                let (_, link) = links.iter().find(|(id, _)| *id == t.to).expect("a peer");
                link.send(t.bytes).expect("the inbox is open");
                quiet = false;
            }
        }
        if quiet {
            return Ok(());
        }
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let ids: Vec<ReplicaId> = (1..=3).map(ReplicaId::from_u128).collect();
    let (mut regions, mut links) = (Vec::new(), Vec::new());
    for (i, name) in ["us-east", "eu-west", "ap-south"].into_iter().enumerate() {
        let dir = std::env::temp_dir().join(format!("concord-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir); // the demo starts from nothing
        std::fs::create_dir_all(&dir)?;
        let (tx, inbox) = channel();
        links.push((ids[i], tx));
        let peers = ids.iter().copied().filter(|p| *p != ids[i]).collect();
        let engine = boot(ids[i], peers, &dir)?;
        regions.push(Region {
            name,
            dir,
            engine,
            inbox,
        });
    }
    pump(&mut regions, &links)?; // the regions say hello

    // A profile created in us-east, then edited in two regions at once.
    regions[0].write("alice", "Alice", "alice@old.example", true)?;
    pump(&mut regions, &links)?;
    regions[1].write("alice", "Alice B.", "alice@new.example", false)?;
    regions[2].write("alice", "Alice", "alice@verified.example", true)?;
    println!("concurrent edits in eu-west and ap-south:");
    pump(&mut regions, &links)?;
    for r in &regions {
        println!(
            "{} shows {:?}",
            r.name,
            r.engine.state().resolved("alice", merge)
        );
    }
    // Write the resolution back once: the siblings go away everywhere.
    regions[0].engine.update(|m, hlc| m.collapse(merge, hlc))?;
    pump(&mut regions, &links)?;
    assert!(regions
        .iter()
        .all(|r| r.engine.state().conflicted_keys().count() == 0));

    // A client writes in eu-west and keeps a token (in a cookie, say); its next read
    // lands in ap-south, which serves it only once it has seen that write.
    regions[1].write("bob", "Bob", "bob@example", false)?;
    let token: String = regions[1].engine.token().to_token();
    let seen = CausalContext::from_token(&token)?;
    println!(
        "ap-south can serve bob's client at once: {}",
        regions[2].engine.can_serve(&seen)
    );
    pump(&mut regions, &links)?;
    println!(
        "and after syncing: {:?}",
        regions[2].engine.read(&seen)?.resolved("bob", merge)
    );

    // ap-south saves, crashes, and restarts from its directory with the same node id.
    regions[2].save()?;
    regions[2].engine = boot(ids[2], vec![ids[0], ids[1]], &regions[2].dir)?;
    regions[2].write("carol", "Carol", "carol@example", true)?;
    pump(&mut regions, &links)?;
    assert!(regions
        .iter()
        .all(|r| r.engine.state() == regions[0].engine.state()));
    println!(
        "after the restart, every region holds {} profiles",
        regions[0].engine.state().len()
    );
    for r in &regions {
        std::fs::remove_dir_all(&r.dir)?;
    }
    Ok(())
}
