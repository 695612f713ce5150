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
//! [`FileLease`] is the default store (one small file, replaced atomically and
//! fsynced); [`MemoryLease`] is for tests and the simulator.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

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
}

/// A lease kept in memory, shared by its clones: it survives dropping an engine (a
/// simulated crash) but not the process. For tests and the simulator.
#[derive(Clone, Debug, Default)]
pub struct MemoryLease(Arc<Mutex<u64>>);

impl MemoryLease {
    /// An empty lease.
    pub fn new() -> Self {
        Self::default()
    }

    /// The recorded bound.
    pub fn get(&self) -> u64 {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LeaseStore for MemoryLease {
    fn load(&mut self) -> Result<u64> {
        Ok(self.get())
    }

    fn store(&mut self, upto: u64) -> Result<()> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = upto;
        Ok(())
    }
}

/// A lease kept in one file: written to a temporary file, fsynced, renamed over the
/// old one, and the directory fsynced, so a crash leaves either the old bound or the
/// new one, never a torn file.
///
/// ```
/// use concord::sync::{FileLease, LeaseStore};
///
/// let dir = std::env::temp_dir().join(format!("concord-lease-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let mut lease = FileLease::new(dir.join("lease"));
/// assert_eq!(lease.load()?, 0);
/// lease.store(1024)?;
/// assert_eq!(FileLease::new(dir.join("lease")).load()?, 1024);
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
        use std::io::Write;
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).map_err(|e| lease_error(&tmp, "creating", e))?;
        file.write_all(format!("{upto}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| lease_error(&tmp, "writing", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| lease_error(&self.path, "replacing", e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| lease_error(dir, "syncing", e))?;
        }
        Ok(())
    }
}
