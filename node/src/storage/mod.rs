//! What a member persists: the Raft log and vote in segment files
//! (`wal`), and one redb database holding the applied log id and
//! membership and the MVCC state machine. See `docs/storage.md` for the
//! format.
//!
//! Invariants:
//! - The applied log id is written in the same transaction as the state it
//!   covers, so a crash at any point replays cleanly from the log.
//! - Log appends are made durable by an fdatasync of the log (the only
//!   fsync a write waits for); state-machine applies commit with
//!   `Durability::None`, which redb makes durable at the next checkpoint
//!   ([`Store::checkpoint`], every [`CHECKPOINT_INTERVAL`] and before a
//!   snapshot). A crash therefore rolls the state machine back to its last
//!   checkpoint, and the log still holds every entry after it: the log is
//!   purged only up to a snapshot, which is taken at a durable point.

pub mod backup;
pub mod db;
pub mod hash;
pub mod log_store;
pub mod restore;
pub mod snapshot;
pub mod snapshot_file;
pub mod snapshot_rows;
pub mod snapshot_stream;
pub mod state_machine;
pub mod wal;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use redb::{ReadableTable, TableDefinition};

use self::db::Db;
use crate::proto::witanpb::MemberIdentity;

/// The on-disk format this build writes. Format 1 kept the Raft log in the
/// database (table `raft_log`); this build opens it and moves the log out
/// (`log_store::open_wal`), which makes it format 2.
pub const FORMAT_VERSION: u32 = 2;
const FORMAT_LOG_IN_DATABASE: u32 = 1;

/// How often the state machine is made durable when it changed: the
/// longest stretch of log a restart after a crash replays, in time. A
/// checkpoint writes back every page dirtied since the last one and
/// fsyncs it; under a steady write load a page is dirtied many times a
/// second, so a longer interval writes each page back once instead of
/// ten times. At 100 ms (etcd's backend commit interval) checkpoints cost
/// about a tenth of the members' CPU per put; at 1 s a crash replays at
/// most a second of log, which applies in a small fraction of that
/// (docs/benchmarks.md, docs/storage.md).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// user key -> current `mvccpb.KeyValue` (live keys only).
pub(crate) const KV_LATEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv_latest");
/// (user key, mod_revision) -> kind byte + `mvccpb.KeyValue`: every retained version.
pub(crate) const KV_HISTORY: TableDefinition<(&[u8], u64), &[u8]> =
    TableDefinition::new("kv_history");
/// (revision, sub) -> user key: the order of events, for watch replay.
pub(crate) const KV_REVS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("kv_revs");
/// lease id -> `witanpb.LeaseRecord`.
pub(crate) const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");
/// (lease id, user key) attached to it.
pub(crate) const LEASE_KEYS: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("lease_keys");
/// member id -> `witanpb.MemberAttributes` it published.
pub(crate) const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");
/// (member id, `etcdserverpb.AlarmType`) of every raised alarm.
pub(crate) const ALARMS: TableDefinition<(u64, i32), ()> = TableDefinition::new("alarms");
/// The replicated auth state: `enabled`, `revision`, `user/<name>`,
/// `role/<name>` (see `auth::state`).
pub(crate) const AUTH: TableDefinition<&str, &[u8]> = TableDefinition::new("auth");
/// "meta" -> snapshot meta (MessagePack), "data" -> snapshot bytes.
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub(crate) mod meta_key {
    pub const FORMAT_VERSION: &str = "format_version";
    pub const IDENTITY: &str = "identity";
    pub const VOTE: &str = "vote";
    pub const COMMITTED: &str = "committed";
    pub const LAST_PURGED: &str = "last_purged";
    pub const APPLIED: &str = "applied";
    pub const MEMBERSHIP: &str = "membership";
    pub const REVISION: &str = "revision";
    pub const COMPACT_REVISION: &str = "compact_revision";
}

/// What can go wrong below the state machine.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("opening database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("data dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedFormat { found: u32 },
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("decoding {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("defragmenting: {0}")]
    Compaction(#[from] redb::CompactionError),
    #[error(transparent)]
    Wal(#[from] wal::WalError),
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError::Redb(e.into())
            }
        }
    )*};
}
redb_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl StorageError {
    pub(crate) fn corrupt(what: &'static str, detail: impl ToString) -> Self {
        StorageError::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }
}

/// How long a measured in-use size is reused while the file size stays the
/// same: measuring walks every page of every table (redb has no cheaper
/// count), so a storm of scrapes or status calls must not repeat it.
const IN_USE_MAX_AGE: Duration = Duration::from_secs(5);

/// The member's database.
#[derive(Clone)]
pub struct Store {
    db: Arc<Db>,
    /// Defers a checkpoint's fsync past its commit (`db::deferred_sync`).
    sync: db::SyncHandle,
    path: PathBuf,
    /// Last in-use measurement: when, the file size then, the bytes in use.
    in_use: Arc<Mutex<Option<(Instant, u64, u64)>>>,
    /// The applied log id (as stored) at the last checkpoint.
    checkpointed: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Store {
    /// Opens (or creates) `data_dir/member/witan.redb`, checking the format.
    pub fn open(data_dir: &Path) -> Result<Self, StorageError> {
        let dir = data_dir.join("member");
        std::fs::create_dir_all(&dir).map_err(|source| StorageError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join("witan.redb");
        let (db, sync) = db::create(&path).map_err(|source| StorageError::Open {
            path: path.clone(),
            source,
        })?;
        let store = Store {
            db: Arc::new(Db::new(db)),
            sync,
            path,
            in_use: Arc::new(Mutex::new(None)),
            checkpointed: Arc::new(Mutex::new(None)),
        };
        store.init_tables()?;
        Ok(store)
    }

    fn init_tables(&self) -> Result<(), StorageError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta
                .get(meta_key::FORMAT_VERSION)?
                .map(|v| decode_u32(v.value()))
                .transpose()?;
            match found {
                None => {
                    meta.insert(
                        meta_key::FORMAT_VERSION,
                        FORMAT_VERSION.to_le_bytes().as_slice(),
                    )?;
                }
                Some(FORMAT_VERSION | FORMAT_LOG_IN_DATABASE) => {}
                Some(found) => return Err(StorageError::UnsupportedFormat { found }),
            }
            txn.open_table(KV_LATEST)?;
            txn.open_table(KV_HISTORY)?;
            txn.open_table(KV_REVS)?;
            txn.open_table(LEASES)?;
            txn.open_table(LEASE_KEYS)?;
            txn.open_table(MEMBERS)?;
            txn.open_table(ALARMS)?;
            txn.open_table(AUTH)?;
            txn.open_table(SNAPSHOT)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Whether the Raft log is still in the database (format 1).
    pub(crate) fn log_in_database(&self) -> Result<bool, StorageError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let found = meta
            .get(meta_key::FORMAT_VERSION)?
            .map(|v| decode_u32(v.value()))
            .transpose()?;
        Ok(found == Some(FORMAT_LOG_IN_DATABASE))
    }

    /// Drops the format-1 log from the database once it is in the log
    /// files, durably, and marks the database format 2.
    pub(crate) fn finish_log_migration(&self) -> Result<(), StorageError> {
        let txn = self.db.begin_write()?;
        {
            txn.delete_table(RAFT_LOG)?;
            let mut meta = txn.open_table(META)?;
            for key in [meta_key::VOTE, meta_key::COMMITTED, meta_key::LAST_PURGED] {
                meta.remove(key)?;
            }
            meta.insert(
                meta_key::FORMAT_VERSION,
                FORMAT_VERSION.to_le_bytes().as_slice(),
            )?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Makes every state-machine commit so far durable (one redb commit
    /// with fsync). Returns whether there was anything to make durable.
    ///
    /// The commit writes the dirty pages back under redb's write lock, but
    /// its fsync runs after the lock is released, so applies go on during
    /// it; the checkpoint returns once the fsync is done.
    pub fn checkpoint(&self) -> Result<bool, StorageError> {
        let applied = {
            let txn = self.db.begin_read()?;
            let meta = txn.open_table(META)?;
            meta.get(meta_key::APPLIED)?.map(|v| v.value().to_vec())
        };
        let mut last = self.checkpointed.lock().unwrap_or_else(|e| e.into_inner());
        if *last == applied {
            return Ok(false);
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| StorageError::corrupt("durability", e))?;
        let started = Instant::now();
        // Inside the write transaction, so no other commit takes the deferral.
        self.sync.defer_next_sync();
        let committed = txn.commit();
        self.sync.cancel_deferral();
        committed?;
        let written = started.elapsed();
        self.sync.settle().map_err(|source| StorageError::Io {
            path: self.path.clone(),
            source,
        })?;
        tracing::debug!(
            write_back_ms = written.as_secs_f64() * 1e3,
            fsync_ms = (started.elapsed() - written).as_secs_f64() * 1e3,
            "checkpoint"
        );
        *last = applied;
        Ok(true)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the database file in bytes.
    pub fn file_size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Bytes of the file in allocated pages (etcd's "in use"), measured at
    /// most [`IN_USE_MAX_AGE`] ago and at the current file size. Briefly
    /// waits for the writer in flight.
    pub fn size_in_use_bytes(&self) -> Result<u64, StorageError> {
        let mut cached = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        let file_bytes = self.file_size_bytes();
        if let Some((at, measured_file_bytes, bytes)) = *cached
            && at.elapsed() < IN_USE_MAX_AGE
            && measured_file_bytes == file_bytes
        {
            return Ok(bytes);
        }
        let txn = self.db.begin_write()?;
        let stats = txn.stats()?;
        txn.abort()?;
        let bytes = stats.allocated_pages() * stats.page_size() as u64;
        *cached = Some((Instant::now(), file_bytes, bytes));
        Ok(bytes)
    }

    /// Compacts the database file (etcd's defragmentation of this member):
    /// every transaction waits until it is done. Returns the file size
    /// before and after, in bytes.
    pub fn defragment(&self) -> Result<(u64, u64), StorageError> {
        let before = self.file_size_bytes();
        self.db.compact()?;
        *self.in_use.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok((before, self.file_size_bytes()))
    }

    /// The member's identity, if this data dir has been bootstrapped.
    pub fn identity(&self) -> Result<Option<MemberIdentity>, StorageError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let Some(raw) = meta.get(meta_key::IDENTITY)? else {
            return Ok(None);
        };
        MemberIdentity::decode(raw.value())
            .map(Some)
            .map_err(|e| StorageError::corrupt("member identity", e))
    }

    /// Records the member's identity (once, at bootstrap), durably.
    pub fn save_identity(&self, identity: &MemberIdentity) -> Result<(), StorageError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(meta_key::IDENTITY, identity.encode_to_vec().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }
}

pub(crate) fn decode_u32(raw: &[u8]) -> Result<u32, StorageError> {
    let bytes: [u8; 4] = raw
        .try_into()
        .map_err(|_| StorageError::corrupt("u32", format!("{} bytes", raw.len())))?;
    Ok(u32::from_le_bytes(bytes))
}

pub(crate) fn decode_i64(raw: &[u8]) -> Result<i64, StorageError> {
    let bytes: [u8; 8] = raw
        .try_into()
        .map_err(|_| StorageError::corrupt("i64", format!("{} bytes", raw.len())))?;
    Ok(i64::from_le_bytes(bytes))
}

/// Reads an i64 meta value (0 when absent) from any table handle.
pub(crate) fn meta_i64(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<i64, StorageError> {
    match meta.get(key)? {
        Some(v) => decode_i64(v.value()),
        None => Ok(0),
    }
}

/// Reads a MessagePack meta value from any table handle.
pub(crate) fn meta_rmp<T: serde::de::DeserializeOwned>(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<Option<T>, StorageError> {
    match meta.get(key)? {
        Some(v) => rmp_serde::from_slice(v.value())
            .map(Some)
            .map_err(|e| StorageError::corrupt(key, e)),
        None => Ok(None),
    }
}

pub(crate) fn to_rmp<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain data structs to MessagePack cannot fail.
    rmp_serde::to_vec(value).expect("MessagePack encoding of witan's own types")
}

/// Runs short storage work (a commit without fsync, a point read) on the
/// calling task. Handing it to another thread costs more than the work:
/// `block_in_place` measured ~0.9 ms per call here against ~8 µs for a
/// non-durable redb commit. Fsyncs happen on the log flusher's own thread.
pub(crate) fn inline<T>(f: impl FnOnce() -> T) -> T {
    f()
}

/// Runs long storage work (building or installing a snapshot) without
/// starving the async runtime.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_format() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        {
            let txn = store.db().begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(meta_key::FORMAT_VERSION, 99u32.to_le_bytes().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        drop(store);
        match Store::open(dir.path()) {
            Err(StorageError::UnsupportedFormat { found: 99 }) => {}
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("opened an unknown format"),
        }
    }

    #[test]
    fn defragment_gives_back_what_was_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let value = vec![1u8; 32 * 1024];
        let txn = store.db().begin_write().unwrap();
        {
            let mut kv = txn.open_table(KV_LATEST).unwrap();
            for i in 0..300u32 {
                kv.insert(i.to_be_bytes().as_slice(), value.as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
        let full_in_use = store.size_in_use_bytes().unwrap();
        let txn = store.db().begin_write().unwrap();
        txn.open_table(KV_LATEST)
            .unwrap()
            .retain(|_, _| false)
            .unwrap();
        txn.commit().unwrap();
        let (before, after) = store.defragment().unwrap();
        assert!(after * 4 < before, "{before} -> {after} bytes");
        assert_eq!(after, store.file_size_bytes());
        let in_use = store.size_in_use_bytes().unwrap();
        assert!(
            in_use * 4 < full_in_use && in_use <= after,
            "in use {full_in_use} -> {in_use}, file {after}"
        );
        // The store still works after compaction.
        store.identity().unwrap();
    }
}
