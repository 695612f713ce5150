//! Durable storage: one redb file holding a base snapshot, an append-only log of the
//! changes since, the counter lease and the peers' acknowledgements.
//!
//! * `meta` table: `base_seq` (the last log record the base covers), `lease` (the
//!   highest counter that may have left the engine), `acks` (what each peer had
//!   acknowledged, JSON).
//! * `base` table: the state in concord's binary snapshot form
//!   (`concord::wire::encode_snapshot`), in pieces of [`BASE_PIECE`] bytes.
//! * `log` table: sequence number → record. A record is a local write's delta (tag
//!   0, the binary snapshot form) or a received replication message whose delta changed the state (tag 1,
//!   the frame as it arrived). Persisting a write or a merge costs the size of the
//!   change, never the size of the state.
//!
//! Files written before the binary form (JSON base and local records, version-1 to
//! version-3 frames) still open: each value is told apart by its first byte.
//!
//! Recovery reads the base and merges every later record in order. Compaction, on a
//! thread of its own that keeps a copy of base ⊔ log, folds the records since the
//! last compaction into that copy and writes it as the new base, deleting the
//! records it covers; it runs once the log holds `compact_after` records and as
//! many bytes as the base, so rewriting the base costs a constant per logged byte,
//! amortized. It works in short transactions (the new base goes into a table of its
//! own a few megabytes at a time, then one small transaction swaps it in; the
//! records it covers are deleted afterwards, a few thousand at a time), so a
//! compaction holds up the node's own commits for one short transaction at a time,
//! not for the time it takes to write the whole state.
//!
//! The file. redb reuses freed pages but never gives space back except from the
//! end of the file, and grows it by doubling: the file is sized for the largest
//! transient need (the old and new base side by side during a compaction, plus the
//! log), which keeps it within a few times the live data. Should it still exceed
//! `max_file_ratio` times the live data (base plus log), the compaction thread takes
//! the database to itself and runs redb's `Database::compact`, which moves the live
//! pages down and truncates the file; the node's commits wait meanwhile (see
//! `BENCHMARKS.md` for what that costs). Every start does the same before recovery.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock, RwLockReadGuard};
use std::time::Instant;

use concord::sync::LeaseStore;
use concord::{CausalContext, ReplicaId, Resolver};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::config::{Fsync, StorageConfig};
use crate::error::{Error, Result};
use crate::Kv;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// The base snapshot's bytes in pieces of [`BASE_PIECE`] bytes.
const BASE: TableDefinition<u32, &[u8]> = TableDefinition::new("base");
/// Where a compaction writes the next base before swapping it in (a leftover after a
/// crash is dropped at the next start).
const NEXT_BASE: TableDefinition<u32, &[u8]> = TableDefinition::new("next_base");
/// The size of a piece of the base: one value of the whole state would need one
/// contiguous region of the file, and a piece with its B-tree leaf fits in one 4 KiB
/// page (a 64 KiB piece took a 128 KiB allocation).
pub const BASE_PIECE: usize = 4_000;
/// How many base bytes one compaction transaction writes.
const BASE_TX_BYTES: usize = 4 << 20;
/// How many log records one compaction transaction deletes.
const DELETE_TX_RECORDS: u64 = 10_000;
/// The file is never compacted below this size.
pub const FILE_FLOOR: u64 = 4 << 20;

/// A peer's acknowledged context and protocol version, as saved.
pub type PeerRecord = (ReplicaId, CausalContext, u32);

/// The engine's place in master–follower replication, as saved: its fencing epoch,
/// the master it supports in that epoch, and its role. Saved in the same commit as
/// the batch that changed it, synced whatever the fsync policy, so it is on disk
/// before anything sent or answered after it (a
/// restarted replica never supports two masters in one epoch, and a restarted
/// master that was deposed never comes back as the master of its old epoch).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoleRecord {
    /// The fencing epoch.
    pub epoch: u64,
    /// The master supported in `epoch`.
    pub leader: Option<ReplicaId>,
    /// True if this node was a master.
    pub master: bool,
}

const LOCAL: u8 = 0;
const REMOTE: u8 = 1;

/// What recovery found on disk.
#[derive(Debug)]
pub struct Recovered {
    /// The state: the base with every later record merged.
    pub state: Kv,
    /// What each peer had acknowledged when last saved, and the newest protocol
    /// version it was heard to speak.
    pub acks: Vec<PeerRecord>,
    /// The epoch, leader and role last saved (master–follower mode), if any.
    pub role: Option<RoleRecord>,
    /// How many log records were replayed.
    pub replayed: u64,
    /// True if the file held anything (a restart rather than a first start).
    pub existed: bool,
    /// How long recovery took.
    pub took: std::time::Duration,
}

/// Counters the metrics read.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Commits.
    pub commits: AtomicU64,
    /// Records appended.
    pub records: AtomicU64,
    /// Finished compactions.
    pub compactions: AtomicU64,
    /// The last record the base covers.
    pub base_seq: AtomicU64,
    /// Bytes appended to the log.
    pub bytes: AtomicU64,
    /// Bytes of the log past the base.
    pub log_bytes: AtomicU64,
    /// Bytes of the base snapshot.
    pub base_bytes: AtomicU64,
    /// Bytes of the base snapshot before deflate (as [`base_bytes`](Self::base_bytes)
    /// when it is not deflated): what the log, whose records are mostly too short to
    /// be deflated, is compared with before compacting.
    pub base_plain_bytes: AtomicU64,
    /// Times the file was compacted (redb's `Database::compact`) while running.
    pub file_compactions: AtomicU64,
    /// How long the last of those took, in microseconds (the node's commits wait
    /// that long).
    pub file_compaction_micros: AtomicU64,
    /// The longest that one compaction transaction held the database's writer, in
    /// microseconds (the node's commits wait behind it).
    pub compaction_tx_micros_max: AtomicU64,
}

impl StoreStats {
    /// The live data: the base's bytes and the log's.
    pub fn live_bytes(&self) -> u64 {
        self.base_bytes.load(Ordering::Relaxed) + self.log_bytes.load(Ordering::Relaxed)
    }
}

/// The database, shared by the node's thread, the compaction thread and the lease:
/// each takes it shared for its transactions, and the compaction thread takes it
/// exclusively to compact the file (redb's `Database::compact` needs `&mut` and no
/// live transaction, which holding it exclusively guarantees).
#[derive(Clone)]
struct Db(Arc<RwLock<Database>>);

impl Db {
    fn get(&self) -> RwLockReadGuard<'_, Database> {
        // A panic elsewhere leaves redb's own state consistent (its transactions
        // roll back when dropped): carry on.
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The node's database.
pub struct Store {
    db: Db,
    fsync: Fsync,
    next_seq: u64,
    pending: Vec<Vec<u8>>,
    pending_acks: Option<Vec<u8>>,
    pending_role: Option<Vec<u8>>,
    unsynced: bool,
    compact_after: u64,
    compactor: Option<mpsc::SyncSender<u64>>,
    compaction_thread: Option<std::thread::JoinHandle<()>>,
    compacting: Arc<AtomicU64>,
    stats: Arc<StoreStats>,
    /// The highest lease bound committed, shared by every [`RedbLease`] of this
    /// store (0 until one loads it).
    lease_bound: Arc<AtomicU64>,
    /// Where the fence record is kept: a file beside the database (see
    /// [`RedbLease`]).
    fence: concord::sync::FileLease,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("next_seq", &self.next_seq)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

fn decode_record(rec: &[u8]) -> Result<Option<Kv>> {
    match rec.split_first() {
        // Binary since protocol version 4; JSON records of older files still read.
        Some((&LOCAL, body)) => Ok(Some(
            concord::wire::decode_snapshot(body).map_err(Error::storage)?,
        )),
        Some((&REMOTE, frame)) => {
            // A frame this node accepted once: replay it whatever the limits are now
            // (a lower `max_message_bytes`, say, must not make the file unreadable).
            let budget = concord::wire::Budget {
                max_bytes: usize::MAX,
                newest: concord::sync::PROTOCOL_VERSION,
                limits: concord::Limits {
                    max_siblings: usize::MAX,
                    max_entries: usize::MAX,
                    max_context_ranges: usize::MAX,
                    max_claim_ahead: u64::MAX,
                    max_relayed_gaps: usize::MAX,
                },
                max_clock_entries: usize::MAX,
            };
            Ok(concord::wire::decode_with::<Kv>(frame, &budget, |_| Ok(()))?.delta)
        }
        _ => Err(Error::Storage {
            reason: "a log record of unknown kind".into(),
        }),
    }
}

/// Ends the process if the thread holding it panics: a compaction thread that died
/// would leave the log growing for good, silently; a supervisor restarts the node.
struct ExitOnPanic(&'static str);

impl Drop for ExitOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the {} thread panicked: the node stops", self.0);
            std::process::exit(70);
        }
    }
}

/// What [`replay`] read.
struct Replayed {
    state: Kv,
    /// The last record merged.
    last: u64,
    /// How many records were merged, and their bytes.
    records: u64,
    record_bytes: u64,
    base_bytes: u64,
    base_plain_bytes: u64,
    existed: bool,
}

/// The base and every record after it, merged (recovery).
fn replay(db: &Database) -> Result<Replayed> {
    let tx = db.begin_read().map_err(Error::storage)?;
    let mut base_bytes = 0;
    let mut base_plain_bytes = 0;
    let mut json = Vec::new();
    match tx.open_table(BASE) {
        Ok(base) => {
            for piece in base.iter().map_err(Error::storage)? {
                json.extend_from_slice(piece.map_err(Error::storage)?.1.value());
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(Error::storage(e)),
    }
    let (mut state, base_seq, mut existed) = match tx.open_table(META) {
        Ok(meta) => {
            let state = if json.is_empty() {
                Kv::new()
            } else {
                base_bytes = json.len() as u64;
                base_plain_bytes = plain_len(&json);
                // Binary since protocol version 4; a JSON base still reads.
                concord::wire::decode_snapshot(&json).map_err(Error::storage)?
            };
            drop(json);
            let seq = match meta.get("base_seq").map_err(Error::storage)? {
                Some(v) => u64_of(v.value()),
                None => 0,
            };
            let existed = meta.get("lease").map_err(Error::storage)?.is_some() || seq > 0;
            (state, seq, existed)
        }
        Err(redb::TableError::TableDoesNotExist(_)) => (Kv::new(), 0, false),
        Err(e) => return Err(Error::storage(e)),
    };
    let mut last = base_seq;
    let mut replayed = 0;
    let mut record_bytes = 0;
    match tx.open_table(LOG) {
        Ok(log) => {
            for item in log.range(base_seq + 1..).map_err(Error::storage)? {
                let (k, v) = item.map_err(Error::storage)?;
                if let Some(delta) = decode_record(v.value())? {
                    state.merge(delta);
                }
                record_bytes += v.value().len() as u64;
                last = k.value();
                replayed += 1;
                existed = true;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(Error::storage(e)),
    }
    Ok(Replayed {
        state,
        last,
        records: replayed,
        record_bytes,
        base_bytes,
        base_plain_bytes,
        existed,
    })
}

fn u64_of(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the database at `path` and recovers the state. Received
    /// frames in the log are replayed whatever the limits are now: they were accepted
    /// once, and lowering `max_message_bytes` must not make a file unreadable.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] if the file cannot be opened or holds a corrupt record.
    pub fn open(path: &Path, storage: &StorageConfig) -> Result<(Store, Recovered)> {
        let fsync = storage.fsync;
        let compact_after = storage.compact_after;
        let started = Instant::now();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut db = Database::create(path).map_err(Error::storage)?;
        // redb keeps its file's high-water mark (it grows the file by doubling and
        // reuses freed pages, but returns only trailing space): at start, with no
        // transaction live, give the rest back.
        drop_next_base(&db)?;
        while db.compact().map_err(Error::storage)? {}
        let db = Db(Arc::new(RwLock::new(db)));
        let Replayed {
            state,
            last,
            records: replayed,
            record_bytes,
            base_bytes,
            base_plain_bytes,
            existed,
        } = replay(&db.get())?;
        let acks = {
            let tx = db.get().begin_read().map_err(Error::storage)?;
            match tx.open_table(META) {
                Ok(meta) => match meta.get("acks").map_err(Error::storage)? {
                    Some(v) => serde_json::from_slice(v.value()).unwrap_or_default(),
                    None => Vec::new(),
                },
                Err(_) => Vec::new(),
            }
        };
        let role = {
            let tx = db.get().begin_read().map_err(Error::storage)?;
            match tx.open_table(META) {
                Ok(meta) => match meta.get("role").map_err(Error::storage)? {
                    // A record this version cannot read is refused rather than
                    // forgotten: forgetting the epoch could make the node support two
                    // masters in one epoch.
                    Some(v) => {
                        Some(
                            serde_json::from_slice(v.value()).map_err(|e| Error::Storage {
                                reason: format!("the saved epoch and role are unreadable: {e}"),
                            })?,
                        )
                    }
                    None => None,
                },
                Err(_) => None,
            }
        };
        let base_seq = {
            let tx = db.get().begin_read().map_err(Error::storage)?;
            match tx.open_table(META) {
                Ok(meta) => meta
                    .get("base_seq")
                    .map_err(Error::storage)?
                    .map_or(0, |v| u64_of(v.value())),
                Err(_) => 0,
            }
        };
        let stats = Arc::new(StoreStats::default());
        stats.base_seq.store(base_seq, Ordering::Relaxed);
        stats.log_bytes.store(record_bytes, Ordering::Relaxed);
        stats.base_bytes.store(base_bytes, Ordering::Relaxed);
        stats
            .base_plain_bytes
            .store(base_plain_bytes, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel::<u64>(1);
        let compacting = Arc::new(AtomicU64::new(0));
        let compaction_thread = {
            let db = db.clone();
            let stats = stats.clone();
            let compacting = compacting.clone();
            let file = Compactor {
                path: path.to_path_buf(),
                ratio: storage.max_file_ratio.max(1),
            };
            // The compaction thread keeps its own copy of base ⊔ log, so a compaction
            // reads only the records since the last one, in short read transactions:
            // a long one would pin every page the writer frees meanwhile, and the
            // file would grow with the write rate.
            let mut mirror = (state.clone(), last);
            std::thread::Builder::new()
                .name("compaction".into())
                .spawn(move || {
                    let _guard = ExitOnPanic("compaction");
                    for upto in rx {
                        match compact(&db, &mut mirror, upto, &stats) {
                            Ok(Some((last, folded, base, plain))) => {
                                stats.base_seq.store(last, Ordering::Relaxed);
                                stats.log_bytes.fetch_sub(folded, Ordering::Relaxed);
                                stats.base_bytes.store(base, Ordering::Relaxed);
                                stats.base_plain_bytes.store(plain, Ordering::Relaxed);
                                stats.compactions.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(None) => {}
                            Err(e) => tracing::error!("compaction failed: {e}"),
                        }
                        if let Err(e) = file.maybe_compact_file(&db, &stats) {
                            tracing::error!("compacting the file failed: {e}");
                        }
                        compacting.store(0, Ordering::Release);
                    }
                })?
        };
        let store = Store {
            db,
            fsync,
            next_seq: last + 1,
            pending: Vec::new(),
            pending_acks: None,
            pending_role: None,
            unsynced: false,
            compact_after: compact_after.max(1),
            compactor: Some(tx),
            compaction_thread: Some(compaction_thread),
            compacting,
            stats,
            lease_bound: Arc::new(AtomicU64::new(0)),
            fence: concord::sync::FileLease::new(path),
        };
        Ok((
            store,
            Recovered {
                state,
                acks,
                role,
                replayed,
                existed,
                took: started.elapsed(),
            },
        ))
    }

    /// The statistics the metrics read.
    pub fn stats(&self) -> Arc<StoreStats> {
        self.stats.clone()
    }

    /// A lease store in this database (see [`LeaseStore`] and [`RedbLease`]).
    pub fn lease(&self) -> RedbLease {
        RedbLease {
            db: self.db.clone(),
            durable: self.fsync == Fsync::None,
            bound: self.lease_bound.clone(),
            fence: self.fence.clone(),
        }
    }

    /// Records, durably, that a peer proved this node issued writes its file does not
    /// remember (an older copy of the file was restored, or the file was lost and the
    /// node restarted under the same id): the node refuses writes from now on, also
    /// after a restart (see [`Store::fenced`]).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] if it cannot be written.
    pub fn fence(&mut self, reason: &str) -> Result<()> {
        let tx = self.db.get().begin_write().map_err(Error::storage)?;
        {
            let mut meta = tx.open_table(META).map_err(Error::storage)?;
            meta.insert("fenced", reason.as_bytes())
                .map_err(Error::storage)?;
        }
        tx.commit().map_err(Error::storage)
    }

    /// Why the node was fenced (see [`Store::fence`]), if it was.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] if the database cannot be read.
    pub fn fenced(&self) -> Result<Option<String>> {
        let tx = self.db.get().begin_read().map_err(Error::storage)?;
        match tx.open_table(META) {
            Ok(meta) => Ok(meta
                .get("fenced")
                .map_err(Error::storage)?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(Error::storage(e)),
        }
    }

    /// Queues a local write's delta for the next commit.
    pub fn append_local(&mut self, delta: &Kv) {
        let mut rec = vec![LOCAL];
        // A state always serializes (see `concord::wire::encode`).
        rec.extend_from_slice(&concord::wire::encode_snapshot(delta));
        self.pending.push(rec);
    }

    /// Queues a received frame whose delta changed the state for the next commit.
    pub fn append_remote(&mut self, frame: &[u8]) {
        let mut rec = Vec::with_capacity(frame.len() + 1);
        rec.push(REMOTE);
        rec.extend_from_slice(frame);
        self.pending.push(rec);
    }

    /// Queues the peers' acknowledgements for the next commit.
    pub fn save_acks(&mut self, acks: &[PeerRecord]) {
        self.pending_acks = serde_json::to_vec(acks).ok();
    }

    /// Queues the engine's epoch, leader and role for the next commit (which is then
    /// synced, whatever the fsync policy).
    pub fn save_role(&mut self, role: &RoleRecord) {
        self.pending_role = serde_json::to_vec(role).ok();
    }

    /// True if records wait for a commit.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.pending_acks.is_some() || self.pending_role.is_some()
    }

    /// Writes everything queued in one transaction, synced as the policy says.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] if the transaction fails (nothing queued is then written).
    pub fn commit(&mut self) -> Result<()> {
        if !self.has_pending() {
            return Ok(());
        }
        let db = self.db.get();
        let mut tx = db.begin_write().map_err(Error::storage)?;
        // A change of role (a master that stopped taking writes, say) is synced
        // whatever the policy: a node restarted after it must not come back as the
        // master it no longer was (the epoch and leader are in the fence file too, but
        // the role is only here). It is rare.
        let durable = self.fsync != Fsync::None || self.pending_role.is_some();
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(Error::storage)?;
        let mut bytes = 0;
        let n = self.pending.len() as u64;
        {
            let mut log = tx.open_table(LOG).map_err(Error::storage)?;
            for (i, rec) in self.pending.iter().enumerate() {
                log.insert(self.next_seq + i as u64, rec.as_slice())
                    .map_err(Error::storage)?;
                bytes += rec.len() as u64;
            }
            if self.pending_acks.is_some() || self.pending_role.is_some() {
                let mut meta = tx.open_table(META).map_err(Error::storage)?;
                if let Some(acks) = &self.pending_acks {
                    meta.insert("acks", acks.as_slice())
                        .map_err(Error::storage)?;
                }
                if let Some(role) = &self.pending_role {
                    meta.insert("role", role.as_slice())
                        .map_err(Error::storage)?;
                }
            }
        }
        tx.commit().map_err(Error::storage)?;
        self.pending.clear();
        self.pending_acks = None;
        self.pending_role = None;
        self.next_seq += n;
        self.unsynced |= !durable;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.records.fetch_add(n, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.stats.log_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// With the `none` policy, makes every commit so far durable (called ten times
    /// a second: redb reclaims the pages of non-durable commits only at a durable
    /// one, so a longer period lets the file grow with the write rate); otherwise
    /// does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] if the sync fails.
    pub fn sync(&mut self) -> Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        let tx = self.db.get().begin_write().map_err(Error::storage)?;
        tx.commit().map_err(Error::storage)?;
        self.unsynced = false;
        Ok(())
    }

    /// How many records the log holds past the base.
    pub fn log_len(&self) -> u64 {
        (self.next_seq - 1).saturating_sub(self.stats.base_seq.load(Ordering::Relaxed))
    }

    /// Whether the log is long enough to compact (see [`maybe_compact`](Self::maybe_compact)).
    fn compaction_due(&self) -> bool {
        let log_bytes = self.stats.log_bytes.load(Ordering::Relaxed);
        let base_bytes = self.stats.base_plain_bytes.load(Ordering::Relaxed);
        // Only committed records are folded (queued acknowledgements do not matter).
        self.log_len() >= self.compact_after && log_bytes >= base_bytes && self.pending.is_empty()
    }

    /// Starts a compaction on the background thread if the log holds at least
    /// `compact_after` records and at least as many bytes as the base before deflate
    /// (so rewriting the base costs, amortized, a constant per logged byte, and the
    /// file stays within a small multiple of the state; the log's records are mostly
    /// too short to deflate, so comparing them with the deflated base would compact
    /// several times as often), and none is running.
    pub fn maybe_compact(&mut self) {
        if !self.compaction_due() {
            return;
        }
        if self
            .compacting
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && self
                .compactor
                .as_ref()
                .is_none_or(|c| c.try_send(self.next_seq - 1).is_err())
        {
            self.compacting.store(0, Ordering::Release);
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Let a running compaction finish, and the file be closed, before returning.
        self.compactor = None;
        if let Some(t) = self.compaction_thread.take() {
            let _ = t.join();
        }
    }
}

/// Drops a next base that a compaction had not swapped in when the process died.
fn drop_next_base(db: &Database) -> Result<()> {
    let tx = db.begin_write().map_err(Error::storage)?;
    if tx.delete_table(NEXT_BASE).map_err(Error::storage)? {
        tx.commit().map_err(Error::storage)?;
    } else {
        tx.abort().map_err(Error::storage)?;
    }
    Ok(())
}

/// Runs `f` in a write transaction of its own, committed with `durability`, and
/// records how long it held the writer.
fn write_tx<T>(
    db: &Db,
    durability: Durability,
    stats: &StoreStats,
    f: impl FnOnce(&redb::WriteTransaction) -> Result<T>,
) -> Result<T> {
    let db = db.get();
    let mut tx = db.begin_write().map_err(Error::storage)?;
    let started = Instant::now();
    tx.set_durability(durability).map_err(Error::storage)?;
    let out = f(&tx)?;
    tx.commit().map_err(Error::storage)?;
    stats
        .compaction_tx_micros_max
        .fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    Ok(out)
}

fn base_seq_in(tx: &redb::WriteTransaction) -> Result<u64> {
    let meta = tx.open_table(META).map_err(Error::storage)?;
    let seq = meta
        .get("base_seq")
        .map_err(Error::storage)?
        .map_or(0, |v| u64_of(v.value()));
    Ok(seq)
}

/// Writes base ⊔ log[..=upto] as the new base and deletes those records; returns
/// the last record folded, the bytes of the records folded and the new base's size.
///
/// Every step is a short transaction: the node's commits go on in between.
fn compact(
    db: &Db,
    mirror: &mut (Kv, u64),
    upto: u64,
    stats: &StoreStats,
) -> Result<Option<(u64, u64, u64, u64)>> {
    let (state, seq) = mirror;
    let mut folded = 0;
    while *seq < upto {
        let db = db.get();
        let tx = db.begin_read().map_err(Error::storage)?;
        let log = tx.open_table(LOG).map_err(Error::storage)?;
        let mut n = 0;
        for item in log.range(*seq + 1..=upto).map_err(Error::storage)? {
            let (k, v) = item.map_err(Error::storage)?;
            if let Some(delta) = decode_record(v.value())? {
                state.merge(delta);
            }
            folded += v.value().len() as u64;
            *seq = k.value();
            n += 1;
            if n == 1_000 {
                break;
            }
        }
        if n == 0 {
            break;
        }
    }
    let last = *seq;
    let encoded = concord::wire::encode_snapshot(&*state);
    // The next base, a few megabytes per transaction. These need no fsync of their
    // own: until the swap below, recovery ignores them (and drops them at start),
    // and the swap's durable commit makes them durable with it.
    write_tx(db, Durability::None, stats, |tx| {
        tx.delete_table(NEXT_BASE).map_err(Error::storage)?;
        Ok(())
    })?;
    let per_tx = BASE_TX_BYTES / BASE_PIECE;
    let pieces: Vec<&[u8]> = encoded.chunks(BASE_PIECE).collect();
    for (n, group) in pieces.chunks(per_tx).enumerate() {
        write_tx(db, Durability::None, stats, |tx| {
            let mut next = tx.open_table(NEXT_BASE).map_err(Error::storage)?;
            for (i, piece) in group.iter().enumerate() {
                next.insert((n * per_tx + i) as u32, *piece)
                    .map_err(Error::storage)?;
            }
            Ok(())
        })?;
    }
    // The swap: the old base's pages are freed whole (no copy of them is made).
    let swapped = write_tx(db, Durability::Immediate, stats, |tx| {
        let current = base_seq_in(tx)?;
        if current >= last {
            tx.delete_table(NEXT_BASE).map_err(Error::storage)?;
            return Ok(false);
        }
        tx.delete_table(BASE).map_err(Error::storage)?;
        tx.open_table(NEXT_BASE).map_err(Error::storage)?;
        tx.rename_table(NEXT_BASE, BASE).map_err(Error::storage)?;
        let mut meta = tx.open_table(META).map_err(Error::storage)?;
        meta.insert("base_seq", last.to_be_bytes().as_slice())
            .map_err(Error::storage)?;
        Ok(true)
    })?;
    if !swapped {
        return Ok(None);
    }
    // The records the base now covers (and any a crash left behind after an earlier
    // swap): recovery skips them already. Deleting them one key at a time edits each
    // B-tree page once per transaction (redb's `retain_in` copies the path to every
    // deleted key and frees the copies only at the end, which took hundreds of
    // megabytes for a large log).
    loop {
        let more = write_tx(db, Durability::None, stats, |tx| {
            let mut log = tx.open_table(LOG).map_err(Error::storage)?;
            for _ in 0..DELETE_TX_RECORDS {
                let first = log.first().map_err(Error::storage)?.map(|(k, _)| k.value());
                match first {
                    Some(k) if k <= last => {
                        log.remove(k).map_err(Error::storage)?;
                    }
                    _ => return Ok(false),
                }
            }
            Ok(true)
        })?;
        if !more {
            break;
        }
    }
    Ok(Some((
        last,
        folded,
        encoded.len() as u64,
        plain_len(&encoded),
    )))
}

/// The length of a base before deflate: the length a deflated binary snapshot
/// (`0xC1`, format 2) states after its format, or the length of anything else.
fn plain_len(encoded: &[u8]) -> u64 {
    if let [concord::wire::BINARY_SNAPSHOT, 2, rest @ ..] = encoded {
        let mut n = 0u64;
        for (i, &b) in rest.iter().enumerate().take(10) {
            n |= u64::from(b & 0x7f).checked_shl(7 * i as u32).unwrap_or(0);
            if b & 0x80 == 0 {
                return n;
            }
        }
    }
    encoded.len() as u64
}

/// Compacts the file when it exceeds `ratio` times the live data.
struct Compactor {
    path: PathBuf,
    ratio: u64,
}

impl Compactor {
    fn maybe_compact_file(&self, db: &Db, stats: &StoreStats) -> Result<()> {
        let len = std::fs::metadata(&self.path)?.len();
        let live = stats.live_bytes();
        if len <= FILE_FLOOR.max(live.saturating_mul(self.ratio)) {
            return Ok(());
        }
        let started = Instant::now();
        {
            // Exclusive: no transaction of the node's is live meanwhile, and its
            // commits wait.
            let mut db =
                db.0.write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            // redb counts commits made without fsync as live until a durable one
            // (their pages must survive a crash), and compacts only without any.
            db.begin_write()
                .map_err(Error::storage)?
                .commit()
                .map_err(Error::storage)?;
            while db.compact().map_err(Error::storage)? {}
        }
        let took = started.elapsed();
        stats
            .file_compaction_micros
            .store(took.as_micros() as u64, Ordering::Relaxed);
        stats.file_compactions.fetch_add(1, Ordering::Relaxed);
        let after = std::fs::metadata(&self.path)?.len();
        tracing::info!(
            "compacted the database file from {} to {} MiB ({} MiB live) in {:.0} ms",
            len >> 20,
            after >> 20,
            live >> 20,
            took.as_secs_f64() * 1e3
        );
        Ok(())
    }
}

/// The counter lease in the node's database.
///
/// The lease must cover every counter that has left the engine before a restart can
/// issue counters again. With the `always` and `group` policies the node commits
/// every write durably before anything leaves it, so the recovered log already
/// covers what was sent, and the lease is committed without an fsync of its own
/// (the next durable commit carries it). With `none` the log may lose its last
/// second, so the lease is committed durably, and the node takes it in blocks (see
/// [`NodeConfig::engine_config`](crate::config::NodeConfig::engine_config)); the node
/// also extends it itself before it answers a write or a read whose token names a dot
/// (see [`RedbLease::cover`]).
///
/// Every lease of one [`Store`] shares the bound: a store never moves it back (it
/// writes the larger of the stored and the asked bound), and asking for a bound
/// already recorded costs nothing.
///
/// The fence record (master–follower mode: the epoch, the master supported in it,
/// whether this node was deposed; see [`concord::sync::FenceRecord`]) is kept in a
/// file of its own beside the database, the database's path with `.fence` appended
/// (`concord.redb.fence`), written as [`concord::sync::FileLease`] writes it: a
/// temporary file, fsynced, renamed over the old one, the directory fsynced, whatever
/// the fsync policy, before the engine acts on the change (a new epoch or master is
/// rare). Kept outside the database, it survives an older copy of the database
/// being put back: the node still supports one master per epoch and a deposed master
/// stays deposed.
pub struct RedbLease {
    db: Db,
    durable: bool,
    bound: Arc<AtomicU64>,
    fence: concord::sync::FileLease,
}

impl RedbLease {
    /// The highest bound this process has loaded or recorded.
    pub fn bound(&self) -> u64 {
        self.bound.load(Ordering::Acquire)
    }

    /// Makes sure the recorded bound covers `upto`, extending it to `upto + block -
    /// 1` if not (one commit, synced if this lease is durable, per `block` counters).
    ///
    /// # Errors
    ///
    /// [`concord::Error::Lease`] if it cannot be recorded.
    pub fn cover(&mut self, upto: u64, block: u64) -> concord::Result<()> {
        if upto <= self.bound() {
            return Ok(());
        }
        self.store(upto.saturating_add(block.max(1) - 1))
    }
}

impl std::fmt::Debug for RedbLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbLease")
    }
}

impl LeaseStore for RedbLease {
    fn load(&mut self) -> concord::Result<u64> {
        let lease_err = |e: &dyn std::fmt::Display| concord::Error::Lease {
            reason: e.to_string(),
        };
        let db = self.db.get();
        let tx = db.begin_read().map_err(|e| lease_err(&e))?;
        match tx.open_table(META) {
            Ok(meta) => {
                let stored = meta
                    .get("lease")
                    .map_err(|e| lease_err(&e))?
                    .map_or(0, |v| u64_of(v.value()));
                self.bound.fetch_max(stored, Ordering::AcqRel);
                Ok(stored)
            }
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(lease_err(&e)),
        }
    }

    fn store(&mut self, upto: u64) -> concord::Result<()> {
        let lease_err = |e: &dyn std::fmt::Display| concord::Error::Lease {
            reason: e.to_string(),
        };
        if upto <= self.bound() {
            // Already recorded (by the node's own extension, say), with this
            // lease's durability: every lease of a store has the same.
            return Ok(());
        }
        let db = self.db.get();
        let mut tx = db.begin_write().map_err(|e| lease_err(&e))?;
        if !self.durable {
            tx.set_durability(Durability::None)
                .map_err(|e| lease_err(&e))?;
        }
        let upto = {
            let mut meta = tx.open_table(META).map_err(|e| lease_err(&e))?;
            let stored = meta
                .get("lease")
                .map_err(|e| lease_err(&e))?
                .map_or(0, |v| u64_of(v.value()));
            // Never move it back.
            let upto = upto.max(stored);
            meta.insert("lease", upto.to_be_bytes().as_slice())
                .map_err(|e| lease_err(&e))?;
            upto
        };
        tx.commit().map_err(|e| lease_err(&e))?;
        self.bound.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    fn load_fence(&mut self) -> concord::Result<Option<concord::sync::FenceRecord>> {
        self.fence.load_fence()
    }

    fn store_fence(&mut self, record: &concord::sync::FenceRecord) -> concord::Result<()> {
        self.fence.store_fence(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord::{Hlc, SystemClock};

    fn config(fsync: Fsync, compact_after: u64) -> StorageConfig {
        StorageConfig {
            fsync,
            compact_after,
            ..StorageConfig::default()
        }
    }

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = crate::harness::temp_dir(tag).unwrap();
        d.join("db.redb")
    }

    /// A received frame larger than any message limit the node may run with later
    /// is replayed all the same: it was accepted once, and a file must stay readable
    /// when the limits are lowered.
    #[test]
    fn a_large_received_frame_replays_whatever_the_limits() {
        use concord::sync::{Config, SyncEngine};
        use concord::ManualClock;

        let path = dir("store-large-frame");
        let (a, b) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
        let time = ManualClock::new(1_700_000_000_000);
        let engine_config = Config::with_peers([b]).max_message_bytes(64 << 20);
        let mut sender = SyncEngine::new(a, Kv::new(), time, engine_config);
        for i in 0..3_000 {
            sender
                .update(|m, hlc| m.write(format!("k{i}"), "x".repeat(1_000), hlc))
                .unwrap();
        }
        let frame = sender.sync_with(b).unwrap().encode();
        assert!(frame.len() > 2 << 20, "{} bytes", frame.len());
        {
            let (mut store, _) = Store::open(&path, &config(Fsync::Group, 1_000_000)).unwrap();
            store.append_remote(&frame);
            store.commit().unwrap();
        }
        let (_, rec) = Store::open(&path, &config(Fsync::Group, 1_000_000)).unwrap();
        assert_eq!(&rec.state, sender.state());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// The fence record is kept beside the database, synced before the engine acts
    /// on it: a follower whose database is put back to an older copy (from before it
    /// took a new epoch and master) still supports the master it supported, and not
    /// a second one of the same epoch (as the core's `FileLease` test does with an
    /// older snapshot).
    #[test]
    fn the_fence_record_survives_an_older_copy_of_the_database() {
        use concord::hlc::Timestamp;
        use concord::sync::{Config, Role, Snapshot, SyncEngine};
        use concord::ManualClock;

        let path = dir("store-fence-older-copy");
        let [a, b, c] = [1, 2, 3].map(ReplicaId::from_u128);
        let time = ManualClock::new(1_700_000_000_000);
        let cfg =
            |peers: [ReplicaId; 2]| Config::with_peers(peers).master_follower(2_000).follower();
        let storage = config(Fsync::Group, 1_000_000);
        let older = path.with_extension("older");
        // C, a follower at epoch 0 with no master yet; its file is copied aside.
        {
            let (mut store, _) = Store::open(&path, &storage).unwrap();
            store.save_role(&RoleRecord {
                epoch: 0,
                leader: None,
                master: false,
            });
            store.commit().unwrap();
        }
        std::fs::copy(&path, &older).unwrap();
        // B is promoted at epoch 1 and reaches C, which supports it.
        let mut node_b = SyncEngine::new(b, Kv::new(), time.clone(), cfg([a, c]));
        node_b.promote_at(1).unwrap();
        {
            let (mut store, _) = Store::open(&path, &storage).unwrap();
            let mut node_c = SyncEngine::new(c, Kv::new(), time.clone(), cfg([a, b]))
                .with_lease(store.lease())
                .unwrap();
            let _ = node_c.receive(node_b.sync_with(c).unwrap()).unwrap();
            assert_eq!((node_c.epoch(), node_c.leader()), (1, Some(b)));
            store.save_role(&RoleRecord {
                epoch: 1,
                leader: Some(b),
                master: false,
            });
            store.commit().unwrap();
        }
        // The older copy of the database is put back, and C restarts from it.
        std::fs::copy(&older, &path).unwrap();
        let (store, rec) = Store::open(&path, &storage).unwrap();
        let role = rec.role.clone().unwrap();
        assert_eq!((role.epoch, role.leader), (0, None), "the copy is older");
        let snapshot = Snapshot {
            node: c,
            role: Role::Follower,
            state: rec.state,
            peers: Vec::new(),
            hlc_last: Timestamp::new(0, 0, c),
            peer_versions: Vec::new(),
            epoch: role.epoch,
            leader: role.leader,
        };
        let mut node_c = SyncEngine::restore(snapshot, time.clone(), cfg([a, b]))
            .unwrap()
            .with_lease(store.lease())
            .unwrap();
        assert_eq!((node_c.epoch(), node_c.leader()), (1, Some(b)));
        // A, promoted at epoch 1 too (two coordinators raced), does not win C over.
        let mut node_a = SyncEngine::new(a, Kv::new(), time.clone(), cfg([b, c]));
        node_a.promote_at(1).unwrap();
        let _ = node_c.receive(node_a.sync_with(c).unwrap()).unwrap();
        assert_eq!((node_c.epoch(), node_c.leader()), (1, Some(b)));
        drop(store);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A file written before the binary form (a JSON base, a JSON local record, a
    /// version-3 JSON frame) opens with the same state, and what the node writes
    /// after it is binary.
    #[test]
    fn a_file_of_json_records_still_opens() {
        use concord::sync::{Config, SyncEngine};
        use concord::ManualClock;

        let path = dir("store-json");
        let (a, b) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
        let time = ManualClock::new(1_700_000_000_000);
        let mut hlc = Hlc::new(ReplicaId::from_u128(3), time.clone());
        let mut base = Kv::new();
        base.write("base".into(), "b".into(), &mut hlc).unwrap();
        let mut expected = base.clone();
        let local = expected
            .write("local".into(), "l".into(), &mut hlc)
            .unwrap();
        let mut sender = SyncEngine::new(
            a,
            Kv::new(),
            time,
            Config::with_peers([b]).protocol_version(3),
        );
        sender
            .update(|m, hlc| m.write("remote".into(), "r".into(), hlc))
            .unwrap();
        let frame = sender.sync_with(b).unwrap().encode();
        assert_eq!(frame[0], b'{', "a version-3 frame is JSON");
        expected.merge(sender.state().clone());
        {
            let (mut store, _) = Store::open(&path, &config(Fsync::Group, 1_000_000)).unwrap();
            let json = serde_json::to_vec(&base).unwrap();
            write_tx(&store.db, Durability::Immediate, &store.stats, |tx| {
                tx.open_table(BASE)
                    .map_err(Error::storage)?
                    .insert(0, json.as_slice())
                    .map_err(Error::storage)?;
                tx.open_table(META)
                    .map_err(Error::storage)?
                    .insert("base_seq", 0u64.to_be_bytes().as_slice())
                    .map_err(Error::storage)?;
                Ok(())
            })
            .unwrap();
            let mut rec = vec![LOCAL];
            rec.extend_from_slice(&serde_json::to_vec(&local).unwrap());
            store.pending.push(rec);
            store.append_remote(&frame);
            store.commit().unwrap();
            // What the node writes now is binary.
            store.append_local(&local);
            assert_eq!(
                store.pending.last().unwrap()[..2],
                [LOCAL, concord::wire::BINARY_SNAPSHOT]
            );
        }
        let (_, rec) = Store::open(&path, &config(Fsync::Group, 1_000_000)).unwrap();
        assert_eq!(rec.state, expected);
        assert_eq!(rec.state.len(), 3);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn records_survive_a_reopen_and_compaction_keeps_the_state() {
        let path = dir("store");
        let mut hlc = Hlc::new(ReplicaId::from_u128(1), SystemClock);
        let mut expected = Kv::new();
        {
            let (mut store, rec) = Store::open(&path, &config(Fsync::Group, 50)).unwrap();
            assert!(!rec.existed);
            for i in 0..120 {
                let delta = expected
                    .write(format!("k{}", i % 70), format!("v{i}"), &mut hlc)
                    .unwrap();
                store.append_local(&delta);
                if i % 7 == 0 {
                    store.commit().unwrap();
                }
            }
            store.commit().unwrap();
            store.maybe_compact();
            let until = Instant::now() + std::time::Duration::from_secs(10);
            while store.stats().compactions.load(Ordering::Relaxed) == 0 {
                assert!(Instant::now() < until, "no compaction");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert!(
                store.log_len() < 120,
                "the log still holds {}",
                store.log_len()
            );
            // More after the compaction.
            let delta = expected.remove("k3", &mut hlc).unwrap();
            store.append_local(&delta);
            store.commit().unwrap();
        }
        let (_, rec) = Store::open(&path, &config(Fsync::Group, 50)).unwrap();
        assert!(rec.existed);
        assert!(rec.replayed < 120);
        assert_eq!(rec.state, expected);
        assert_eq!(rec.state.len(), 69);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// The log is compared with the base as it is before deflate: records are mostly
    /// too short to deflate, and a base of values that deflate well would otherwise
    /// be rewritten several times as often per logged byte.
    #[test]
    fn compaction_waits_for_as_many_bytes_as_the_base_before_deflate() {
        let path = dir("pace");
        let mut hlc = Hlc::new(ReplicaId::from_u128(1), SystemClock);
        let mut state = Kv::new();
        let (mut store, _) = Store::open(&path, &config(Fsync::Group, 1)).unwrap();
        let stats = store.stats();
        for i in 0..100 {
            let delta = state
                .write(
                    format!("k{i}"),
                    "a value that deflates well. ".repeat(8),
                    &mut hlc,
                )
                .unwrap();
            store.append_local(&delta);
        }
        store.commit().unwrap();
        store.maybe_compact();
        let until = Instant::now() + std::time::Duration::from_secs(10);
        while stats.compactions.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < until, "no compaction");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let base = stats.base_bytes.load(Ordering::Relaxed);
        let plain = stats.base_plain_bytes.load(Ordering::Relaxed);
        assert!(
            plain > 3 * base,
            "{plain} bytes before deflate, {base} after"
        );
        // Log past the deflated base, short of the plain one: not yet due.
        let mut i = 0;
        while stats.log_bytes.load(Ordering::Relaxed) <= 2 * base {
            let delta = state
                .write(format!("k{}", i % 100), format!("v{i}"), &mut hlc)
                .unwrap();
            store.append_local(&delta);
            store.commit().unwrap();
            i += 1;
        }
        assert!(stats.log_bytes.load(Ordering::Relaxed) < plain);
        assert!(!store.compaction_due());
        while stats.log_bytes.load(Ordering::Relaxed) < plain {
            let delta = state
                .write(format!("k{}", i % 100), format!("v{i}"), &mut hlc)
                .unwrap();
            store.append_local(&delta);
            store.commit().unwrap();
            i += 1;
        }
        assert!(store.compaction_due());
        drop(store);
        // A reopened store reads the base's plain length back from the file.
        let (store, rec) = Store::open(&path, &config(Fsync::Group, 1)).unwrap();
        assert_eq!(rec.state, state);
        assert_eq!(
            store.stats().base_plain_bytes.load(Ordering::Relaxed),
            plain
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// The file under a long overwrite load: the state stays the same size, the log
    /// is written over and over, and the file stays within a multiple of the live
    /// data at every commit. With `max_file_ratio` 2 the file compaction runs too.
    #[test]
    fn the_file_stays_within_a_multiple_of_the_live_data() {
        let path = dir("bounded");
        let storage = StorageConfig {
            fsync: Fsync::None,
            compact_after: 2_000,
            max_file_ratio: 2,
        };
        let (mut store, _) = Store::open(&path, &storage).unwrap();
        let stats = store.stats();
        let mut hlc = Hlc::new(ReplicaId::from_u128(1), SystemClock);
        let mut state = Kv::new();
        // Values that do not compress (the base and the local records are deflated):
        // the file must grow as it would with real data.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise = || -> String {
            (0..1_000)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    char::from(b'!' + (seed % 94) as u8)
                })
                .collect()
        };
        let (keys, writes) = (2_000, 16_000);
        let mut worst: f64 = 0.0;
        let mut logged = 0u64;
        for i in 0..writes {
            let delta = state
                .write(format!("key-{:05}", i % keys), noise(), &mut hlc)
                .unwrap();
            store.append_local(&delta);
            if i % 8 == 7 {
                store.commit().unwrap();
                if i % 512 == 511 {
                    store.sync().unwrap();
                    store.maybe_compact();
                }
                let len = std::fs::metadata(&path).unwrap().len();
                let live = stats.live_bytes();
                if len > FILE_FLOOR {
                    worst = worst.max(len as f64 / live as f64);
                }
                // Past the first few megabytes, the file is within 10 times the live
                // data (the base and the log) at every commit.
                assert!(
                    len <= FILE_FLOOR + 10 * live,
                    "the file is {len} bytes for {live} bytes of live data"
                );
            }
        }
        logged += stats.bytes.load(Ordering::Relaxed);
        let until = Instant::now() + std::time::Duration::from_secs(30);
        while stats.file_compactions.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < until, "the file was never compacted");
            store.maybe_compact();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        eprintln!(
            "{logged} bytes logged, {} compactions, {} file compactions; file / live at most {worst:.2} past {FILE_FLOOR} bytes",
            stats.compactions.load(Ordering::Relaxed),
            stats.file_compactions.load(Ordering::Relaxed)
        );
        // Every key was written over several times.
        assert!(
            logged > 4 * stats.base_bytes.load(Ordering::Relaxed),
            "the load overwrote too little"
        );
        drop(store);
        let (_, rec) = Store::open(&path, &storage).unwrap();
        assert_eq!(rec.state, state);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn the_lease_and_acks_persist() {
        let path = dir("lease");
        let peer = ReplicaId::from_u128(9);
        {
            let (mut store, _) = Store::open(&path, &config(Fsync::None, 50)).unwrap();
            let mut lease = store.lease();
            assert_eq!(lease.load().unwrap(), 0);
            lease.store(42).unwrap();
            store.save_acks(&[(peer, CausalContext::new(), 2)]);
            store.commit().unwrap();
            store.sync().unwrap();
        }
        let (store, rec) = Store::open(&path, &config(Fsync::None, 50)).unwrap();
        assert!(rec.existed);
        assert_eq!(store.lease().load().unwrap(), 42);
        assert_eq!(rec.acks, vec![(peer, CausalContext::new(), 2)]);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn the_epoch_leader_and_role_persist() {
        let path = dir("role");
        let leader = ReplicaId::from_u128(7);
        let record = RoleRecord {
            epoch: 4,
            leader: Some(leader),
            master: false,
        };
        {
            let (mut store, rec) = Store::open(&path, &config(Fsync::Group, 50)).unwrap();
            assert_eq!(rec.role, None);
            store.save_role(&record);
            assert!(
                store.has_pending(),
                "the record waits for the batch's commit"
            );
            store.commit().unwrap();
        }
        let (_, rec) = Store::open(&path, &config(Fsync::Group, 50)).unwrap();
        assert_eq!(rec.role, Some(record));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn the_lease_never_moves_back_and_a_fence_persists() {
        let path = dir("lease-max");
        {
            let (mut store, _) = Store::open(&path, &config(Fsync::None, 50)).unwrap();
            let (mut a, mut b) = (store.lease(), store.lease());
            a.cover(5, 1024).unwrap();
            assert_eq!((a.bound(), b.bound()), (1028, 1028));
            // Another handle asking for less records nothing and moves nothing back.
            b.store(10).unwrap();
            b.cover(1028, 1024).unwrap();
            assert_eq!(a.load().unwrap(), 1028);
            b.cover(1029, 1).unwrap();
            assert_eq!(a.load().unwrap(), 1029);
            assert_eq!(store.fenced().unwrap(), None);
            store.fence("a test").unwrap();
        }
        let (store, _) = Store::open(&path, &config(Fsync::None, 50)).unwrap();
        assert_eq!(store.lease().load().unwrap(), 1029);
        assert_eq!(store.fenced().unwrap().as_deref(), Some("a test"));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_a_panic() {
        assert!(decode_record(&[]).is_err());
        assert!(decode_record(&[7, 1, 2]).is_err());
        assert!(decode_record(&[LOCAL, b'{']).is_err());
        assert!(decode_record(&[REMOTE, 0, 1, 2, 3]).is_err());
    }
}
