//! The member's redb database behind a reader-writer lock that only
//! defragmentation takes exclusively.
//!
//! redb's `Database::compact` needs `&mut Database` and fails while any
//! transaction is alive, but every other use shares the database. So every
//! transaction holds a shared guard for as long as it lives ([`ReadTxn`],
//! [`WriteTxn`]), and [`Db::compact`] takes the lock exclusively: it waits
//! for the transactions in flight to end, and new ones wait for it. On the
//! hot path the guard costs one uncontended atomic operation per
//! transaction. See `docs/storage.md` ("Defragmentation").
//!
//! Rule that keeps this deadlock-free: a thread never begins a transaction
//! while it holds another one. The lock prefers a waiting writer, so a
//! second shared acquisition behind a waiting defragmentation would wait
//! for a defragmentation that waits for the first.

pub mod deferred_sync;

use std::ops::{Deref, DerefMut};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{
    CommitError, CompactionError, Database, ReadTransaction, ReadableDatabase, TransactionError,
    WriteTransaction,
};

use self::deferred_sync::DeferredSyncBackend;
pub use self::deferred_sync::SyncHandle;

/// redb's page cache per member, in bytes. redb's default (1 GiB) is
/// filled as the file grows: at 400,000 keys three members held 1,977 MB
/// RSS against etcd's 697 MB; with 64 MiB they held 362 MB against 654 MB,
/// with `range_lin_64` and `range_1000_keys` unchanged (their data fits).
/// Pages outside it are read through the OS page cache, which is not the
/// process's memory, as etcd's mmap'd pages are not until touched.
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Opens (or creates) a member's database file with [`CACHE_BYTES`], on a
/// backend whose checkpoint fsyncs can run outside redb's write lock
/// ([`deferred_sync`]). Returns the handle that defers and settles them.
pub fn create(path: &std::path::Path) -> Result<(Database, SyncHandle), redb::DatabaseError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let (backend, sync) = DeferredSyncBackend::new(file)?;
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create_with_backend(backend)?;
    Ok((db, sync))
}

/// A redb database shared by transactions and taken whole by compaction.
pub struct Db {
    inner: RwLock<Database>,
}

impl Db {
    pub fn new(db: Database) -> Self {
        Db {
            inner: RwLock::new(db),
        }
    }

    fn shared(&self) -> RwLockReadGuard<'_, Database> {
        // A panic while holding a guard leaves nothing half-done in the
        // lock itself: redb keeps its own consistency, so poison is moot.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Begins a read transaction that keeps compaction out while it lives.
    pub fn begin_read(&self) -> Result<ReadTxn<'_>, TransactionError> {
        let guard = self.shared();
        let txn = guard.begin_read()?;
        Ok(ReadTxn {
            txn,
            _shared: guard,
        })
    }

    /// Begins a write transaction that keeps compaction out while it lives.
    pub fn begin_write(&self) -> Result<WriteTxn<'_>, TransactionError> {
        let guard = self.shared();
        let txn = guard.begin_write()?;
        Ok(WriteTxn {
            txn,
            _shared: guard,
        })
    }

    /// Compacts the file: waits for every transaction to end, blocks new
    /// ones until done. Returns whether anything was moved.
    pub fn compact(&self) -> Result<bool, CompactionError> {
        let mut db = self.inner.write().unwrap_or_else(|e| e.into_inner());
        db.compact()
    }
}

/// A read transaction and the shared guard it holds. Field order matters:
/// the transaction ends before the guard is released.
pub struct ReadTxn<'a> {
    txn: ReadTransaction,
    _shared: RwLockReadGuard<'a, Database>,
}

impl Deref for ReadTxn<'_> {
    type Target = ReadTransaction;
    fn deref(&self) -> &ReadTransaction {
        &self.txn
    }
}

/// A write transaction and the shared guard it holds until it commits or
/// is dropped (which aborts it).
pub struct WriteTxn<'a> {
    txn: WriteTransaction,
    _shared: RwLockReadGuard<'a, Database>,
}

impl WriteTxn<'_> {
    pub fn commit(self) -> Result<(), CommitError> {
        self.txn.commit()
    }

    pub fn abort(self) -> Result<(), redb::StorageError> {
        self.txn.abort()
    }
}

impl Deref for WriteTxn<'_> {
    type Target = WriteTransaction;
    fn deref(&self) -> &WriteTransaction {
        &self.txn
    }
}

impl DerefMut for WriteTxn<'_> {
    fn deref_mut(&mut self) -> &mut WriteTransaction {
        &mut self.txn
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");

    fn open() -> (tempfile::TempDir, Arc<Db>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db.redb")).unwrap();
        (dir, Arc::new(Db::new(db)))
    }

    #[test]
    fn compaction_waits_for_a_live_read_transaction() {
        let (_dir, db) = open();
        let txn = db.begin_read().unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        let compactor = {
            let db = db.clone();
            std::thread::spawn(move || {
                let result = db.compact();
                done_tx.send(()).unwrap();
                result
            })
        };
        // While the reader lives, compaction must not have run (it would
        // fail with TransactionInProgress, not wait, without the lock).
        assert!(
            done_rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "compaction ran under a live read transaction"
        );
        drop(txn);
        assert!(compactor.join().unwrap().is_ok());
    }

    #[test]
    fn compaction_shrinks_the_file_after_deletes() {
        let (dir, db) = open();
        let path = dir.path().join("db.redb");
        let value = vec![7u8; 64 * 1024];
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(T).unwrap();
            for i in 0..200u64 {
                t.insert(i, value.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(T).unwrap().retain(|_, _| false).unwrap();
        txn.commit().unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        assert!(db.compact().unwrap());
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(
            after * 4 < before,
            "file did not shrink: {before} -> {after} bytes"
        );
    }
}
