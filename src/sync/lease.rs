//! Counter leases: how a node keeps one identity across restarts without ever
//! reusing a dot.
//!
//! A node stamps its writes with dots `(node, 1)`, `(node, 2)`, …. Restored from a
//! snapshot that is older than its last write, it must not issue a counter again that
//! it issued before the crash: peers may hold those dots with other values. Before
//! any of its dots can leave the engine in a delta, the engine durably records the
//! highest counter it has issued (the *lease*; with [`Config::lease_block`] above 1, a
//! block ahead); after a restart it continues above both the lease and the restored
//! snapshot. The counters between the snapshot and the lease were sent to someone:
//! the node never marks them as seen, peers that hold them send them back, and what
//! nobody received stays a gap (acknowledgements are causal contexts, so a gap costs
//! a few bytes, not a resend of everything after it). Only a crash that loses sent,
//! unacknowledged writes leaves such a gap.
//!
//! [`Config::lease_block`]: crate::sync::Config::lease_block
//!
//! Failure cases, and what they cost:
//!
//! * The lease store is lost with the snapshot kept (a new disk with an old backup):
//!   restore without a lease. The engine then writes under a fresh random id (a
//!   *disaster restore*), one more version-vector entry, as safe as before.
//! * The lease store fails to write: local writes still succeed, but their deltas
//!   stay in the engine (visible as lag) until a lease write succeeds.
//! * A snapshot newer than the lease is discarded and an older one restored, and
//!   later that newer snapshot is restored again: its unsent writes may share dots
//!   with writes made in between. Restore the newest snapshot you have.
//! * The lease is ahead of anything issued (a block was granted with
//!   `lease_block` above 1): the node skips the unused counters, which stay a gap.
//!
//! In master–follower mode ([`Config::master_lease_ms`]) the store keeps a second
//! record, the [`FenceRecord`]: the replica's fencing epoch, the master it supports in
//! it, and whether it was deposed. The engine writes it *before* it acts on a change
//! (before it echoes a new master, counts itself for one, or promotes itself), so a
//! replica restored from any snapshot, however old, still supports one master per
//! epoch: restoring takes the newer of the snapshot's epoch and the record's.
//!
//! [`Config::master_lease_ms`]: crate::sync::Config::master_lease_ms
//!
//! [`FileLease`] is the default store (one small file, replaced atomically and
//! fsynced, and a second one beside it for the fence record); [`MemoryLease`] is for
//! tests and the simulator.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::ReplicaId;

/// What a replica in master–follower mode must never forget across a restart: its
/// fencing epoch, the master it supports in that epoch, and whether it was deposed
/// (see [`LeaseStore::store_fence`]).
///
/// ```
/// use concord::sync::FenceRecord;
/// use concord::ReplicaId;
///
/// let record = FenceRecord { epoch: 3, leader: Some(ReplicaId::from_u128(2)), deposed: None };
/// assert!(record.epoch > FenceRecord::default().epoch);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    /// The highest epoch the replica has taken.
    pub epoch: u64,
    /// The master it supports in `epoch` (itself if it leads it), if any yet.
    pub leader: Option<ReplicaId>,
    /// The epoch in which it stepped down as master or was fenced, while it has not
    /// been promoted since.
    pub deposed: Option<u64>,
}

/// Where a node durably records the highest counter it may have issued.
pub trait LeaseStore: fmt::Debug + Send {
    /// The recorded bound (0 if none was ever recorded).
    ///
    /// # Errors
    ///
    /// [`Error::Lease`] if the store cannot be read.
    fn load(&mut self) -> Result<u64>;

    /// Durably records `upto`: it must survive a crash once this returns `Ok`.
    ///
    /// # Errors
    ///
    /// [`Error::Lease`] if it could not be recorded (then nothing may be assumed).
    fn store(&mut self, upto: u64) -> Result<()>;

    /// The recorded [`FenceRecord`], if any (master–follower mode).
    ///
    /// The default keeps nothing and returns `None`: a store that does not override
    /// both fence methods leaves the host to persist a snapshot after every change of
    /// epoch or supported master, before the engine's next message leaves (see the
    /// guide's "Failover and fencing").
    ///
    /// # Errors
    ///
    /// [`Error::Lease`] if the store cannot be read.
    fn load_fence(&mut self) -> Result<Option<FenceRecord>> {
        Ok(None)
    }

    /// Durably records `record`: it must survive a crash once this returns `Ok`. The
    /// engine calls it before it acts on a new epoch or master, and refuses the
    /// change (the promotion, or the message that brought it) if it fails.
    ///
    /// The default records nothing (see [`LeaseStore::load_fence`]).
    ///
    /// # Errors
    ///
    /// [`Error::Lease`] if it could not be recorded.
    fn store_fence(&mut self, record: &FenceRecord) -> Result<()> {
        let _ = record;
        Ok(())
    }
}

/// A lease kept in memory, shared by its clones: it survives dropping an engine (a
/// simulated crash) but not the process. For tests and the simulator.
#[derive(Clone, Debug, Default)]
pub struct MemoryLease(Arc<Mutex<(u64, Option<FenceRecord>)>>);

impl MemoryLease {
    /// An empty lease.
    pub fn new() -> Self {
        Self::default()
    }

    /// The recorded bound.
    pub fn get(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// The recorded fence record, if any.
    ///
    /// ```
    /// use concord::sync::{Config, MemoryLease, SyncEngine};
    /// use concord::{LwwRegister, ManualClock, OrMap, ReplicaId};
    ///
    /// let [a, b] = [1, 2].map(ReplicaId::from_u128);
    /// let lease = MemoryLease::new();
    /// let config = Config::with_peers([b]).master_follower(2_000).follower();
    /// let mut e = SyncEngine::new(a, OrMap::<String, LwwRegister<u8>>::new(), ManualClock::new(0), config)
    ///     .with_lease(lease.clone())?;
    /// assert_eq!(lease.fence(), None);
    /// e.promote()?; // recorded before the promotion takes effect
    /// assert_eq!(lease.fence().map(|r| (r.epoch, r.leader)), Some((1, Some(a))));
    /// # Ok::<(), concord::Error>(())
    /// ```
    pub fn fence(&self) -> Option<FenceRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

impl LeaseStore for MemoryLease {
    fn load(&mut self) -> Result<u64> {
        Ok(self.get())
    }

    fn store(&mut self, upto: u64) -> Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).0 = upto;
        Ok(())
    }

    fn load_fence(&mut self) -> Result<Option<FenceRecord>> {
        Ok(self.fence())
    }

    fn store_fence(&mut self, record: &FenceRecord) -> Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(*record);
        Ok(())
    }
}

/// A lease kept in one file: written to a temporary file, fsynced, renamed over the
/// old one, and the directory fsynced, so a crash leaves either the old bound or the
/// new one, never a torn file. The fence record is kept the same way in a second file
/// beside it, named like the first with `.fence` appended.
///
/// ```
/// use concord::sync::{FenceRecord, FileLease, LeaseStore};
/// use concord::ReplicaId;
///
/// let dir = std::env::temp_dir().join(format!("concord-lease-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let mut lease = FileLease::new(dir.join("lease"));
/// assert_eq!(lease.load()?, 0);
/// lease.store(1024)?;
/// assert_eq!(FileLease::new(dir.join("lease")).load()?, 1024);
/// // The fence record (master–follower mode), in `lease.fence` beside it.
/// let record = FenceRecord { epoch: 4, leader: Some(ReplicaId::from_u128(2)), deposed: None };
/// assert_eq!(lease.load_fence()?, None);
/// lease.store_fence(&record)?;
/// assert_eq!(FileLease::new(dir.join("lease")).load_fence()?, Some(record));
/// std::fs::write(lease.fence_path(), b"torn").unwrap();
/// assert!(matches!(lease.load_fence(), Err(concord::Error::Lease { .. })));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), concord::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct FileLease {
    path: PathBuf,
}

impl FileLease {
    /// A lease stored at `path` (created on the first [`LeaseStore::store`]).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileLease { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fence record's file: the lease's path with `.fence` appended.
    ///
    /// ```
    /// use concord::sync::FileLease;
    ///
    /// let lease = FileLease::new("/var/lib/concord/lease");
    /// assert_eq!(lease.fence_path(), std::path::Path::new("/var/lib/concord/lease.fence"));
    /// ```
    pub fn fence_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".fence");
        PathBuf::from(name)
    }
}

/// Replaces `path` by `contents` atomically: a temporary file beside it, fsynced,
/// renamed over it, and the directory fsynced.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp).map_err(|e| lease_error(&tmp, "creating", e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| lease_error(&tmp, "writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| lease_error(path, "replacing", e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| lease_error(dir, "syncing", e))?;
    }
    Ok(())
}

fn lease_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Lease {
        reason: format!("{what} {}: {e}", path.display()),
    }
}

impl LeaseStore for FileLease {
    fn load(&mut self) -> Result<u64> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse().map_err(|_| Error::Lease {
                reason: format!("{} does not hold a counter", self.path.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(lease_error(&self.path, "reading", e)),
        }
    }

    fn store(&mut self, upto: u64) -> Result<()> {
        write_atomically(&self.path, format!("{upto}\n").as_bytes())
    }

    fn load_fence(&mut self) -> Result<Option<FenceRecord>> {
        let path = self.fence_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|_| Error::Lease {
                    reason: format!("{} does not hold a fence record", path.display()),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(lease_error(&path, "reading", e)),
        }
    }

    fn store_fence(&mut self, record: &FenceRecord) -> Result<()> {
        let bytes = serde_json::to_vec(record).map_err(|e| Error::Lease {
            reason: format!("encoding a fence record: {e}"),
        })?;
        write_atomically(&self.fence_path(), &bytes)
    }
}
