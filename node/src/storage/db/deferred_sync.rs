//! redb's file backend, with one change: a checkpoint's fsync can run
//! after its commit has released redb's write lock.
//!
//! A checkpoint is a durable redb commit: it writes back every page the
//! non-durable applies dirtied since the last one and fsyncs the file.
//! redb does both inside the commit, so under its single write lock, and
//! every apply waits behind it: at 256 clients that was a 100–250 ms stall
//! once a second (docs/benchmarks.md). Here the checkpoint asks for its
//! commit's fsync to be deferred ([`SyncControl::defer_next_sync`]); the
//! commit then returns once the pages are written to the OS, and the
//! checkpoint pays the fsync ([`SyncControl::settle`]) while applies go on.
//!
//! Crash safety rests on one rule: nothing reaches the file after a
//! deferred fsync until that fsync is done. Every write, resize and
//! ordinary fsync pays an owed one first. So whatever a crash leaves on
//! disk is what redb itself could have left had it crashed somewhat
//! earlier in its own sequence of writes and fsyncs, which redb recovers
//! from: a commit whose fsync had not finished is rolled back to the one
//! before by its checksums, and the log replays what the state machine
//! lost. Between the commit and [`SyncControl::settle`] the checkpoint is
//! not durable, and nothing treats it as such: [`crate::storage::Store::checkpoint`]
//! returns only after it settled.
//!
//! Non-durable commits do not touch the file (redb keeps their pages in its
//! write buffer), so applies meet an owed fsync only when redb evicts from
//! that buffer or grows the file, and then they pay it, which is no worse
//! than waiting for the checkpoint as before.
//!
//! The backend also keeps the file's length as redb last set it, so the
//! write path's quota check reads an atomic instead of asking the kernel
//! (one `statx` per request was 2 % of a leader's CPU at 64 clients).

use std::fmt;
use std::fs::File;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// The error of the backend's I/O methods (without redb's `experimental-api-5`).
type BackendIoError = std::io::Error;

/// The deferral state shared by the backend (owned by redb) and the store.
#[derive(Default)]
pub struct SyncControl {
    /// The next `sync_data` is to be deferred.
    defer_next: AtomicBool,
    /// A deferred fsync has not run yet.
    owed: AtomicBool,
    /// Serializes paying the owed fsync, so that no one proceeds on the
    /// belief that another's fsync already covered it.
    paying: Mutex<()>,
    /// Set when a deferred fsync failed: redb believed that commit durable,
    /// so no further I/O is safe (after a failed fsync the kernel may have
    /// dropped the dirty pages). Every later call fails with this.
    failed: OnceLock<String>,
}

impl fmt::Debug for SyncControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncControl")
            .field("defer_next", &self.defer_next.load(Ordering::Relaxed))
            .field("owed", &self.owed.load(Ordering::Relaxed))
            .field("failed", &self.failed.get())
            .finish()
    }
}

impl SyncControl {
    /// The next fsync redb asks for is deferred until [`Self::settle`] (or
    /// the next I/O). Call it inside the write transaction whose commit is
    /// to be deferred, so that no other commit can take it.
    pub fn defer_next_sync(&self) {
        self.defer_next.store(true, Ordering::Release);
    }

    /// Withdraws a deferral the commit did not use (it failed early).
    pub fn cancel_deferral(&self) {
        self.defer_next.store(false, Ordering::Release);
    }

    /// Runs the deferred fsync, if one is owed. After it returns `Ok`,
    /// every commit so far is durable.
    pub fn settle(&self, file: &dyn StorageBackend) -> Result<(), BackendIoError> {
        self.check()?;
        if !self.owed.load(Ordering::Acquire) {
            return Ok(());
        }
        let _paying = self.paying.lock().unwrap_or_else(|e| e.into_inner());
        if !self.owed.load(Ordering::Acquire) {
            return Ok(());
        }
        match file.sync_data() {
            Ok(()) => {
                self.owed.store(false, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                let _ = self.failed.set(format!("deferred fsync failed: {e}"));
                Err(e)
            }
        }
    }

    fn check(&self) -> Result<(), BackendIoError> {
        match self.failed.get() {
            Some(reason) => Err(std::io::Error::other(reason.clone())),
            None => Ok(()),
        }
    }
}

/// redb's [`FileBackend`] with deferrable fsyncs; see the module docs.
#[derive(Debug)]
pub struct DeferredSyncBackend {
    file: Arc<dyn StorageBackend>,
    control: Arc<SyncControl>,
    /// The file's length: every change to it comes through this backend.
    len_bytes: Arc<AtomicU64>,
}

/// What the store keeps to defer and settle fsyncs.
#[derive(Clone, Debug)]
pub struct SyncHandle {
    file: Arc<dyn StorageBackend>,
    control: Arc<SyncControl>,
    len_bytes: Arc<AtomicU64>,
}

impl SyncHandle {
    pub fn defer_next_sync(&self) {
        self.control.defer_next_sync();
    }

    pub fn cancel_deferral(&self) {
        self.control.cancel_deferral();
    }

    pub fn settle(&self) -> Result<(), BackendIoError> {
        self.control.settle(&*self.file)
    }

    /// The database file's length, as of redb's last resize or write.
    pub fn file_len_bytes(&self) -> u64 {
        self.len_bytes.load(Ordering::Acquire)
    }
}

impl DeferredSyncBackend {
    /// Wraps `file`; returns the backend for redb and the store's handle.
    pub fn new(file: File) -> Result<(Self, SyncHandle), redb::DatabaseError> {
        Ok(Self::over(Arc::new(FileBackend::new(file)?))?)
    }

    /// Wraps any backend (tests wrap an in-memory one that records calls).
    fn over(file: Arc<dyn StorageBackend>) -> Result<(Self, SyncHandle), BackendIoError> {
        let control = Arc::new(SyncControl::default());
        let len_bytes = Arc::new(AtomicU64::new(file.len()?));
        let handle = SyncHandle {
            file: file.clone(),
            control: control.clone(),
            len_bytes: len_bytes.clone(),
        };
        let backend = DeferredSyncBackend {
            file,
            control,
            len_bytes,
        };
        Ok((backend, handle))
    }

    /// Pays an owed fsync before anything else reaches the file.
    fn before_io(&self) -> Result<(), BackendIoError> {
        self.control.settle(&*self.file)
    }
}

impl StorageBackend for DeferredSyncBackend {
    fn len(&self) -> Result<u64, BackendIoError> {
        self.control.check()?;
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        // Reads see the OS page cache, which holds every write so far.
        self.control.check()?;
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        self.before_io()?;
        self.file.set_len(len)?;
        self.len_bytes.store(len, Ordering::Release);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        self.control.check()?;
        if self.control.defer_next.swap(false, Ordering::AcqRel) {
            self.control.owed.store(true, Ordering::Release);
            return Ok(());
        }
        self.before_io()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        self.before_io()?;
        self.file.write(offset, data)?;
        // A write past the end extends the file.
        let end = offset.saturating_add(data.len() as u64);
        self.len_bytes.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    fn close(&self) -> Result<(), BackendIoError> {
        // A database dropped with a deferred fsync unpaid still ends durable.
        let settled = self.before_io();
        let closed = self.file.close();
        settled.and(closed)
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::backends::InMemoryBackend;
    use redb::{Database, Durability, ReadableDatabase, TableDefinition};

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    /// An in-memory backend that records the order of writes and fsyncs,
    /// and fails fsyncs on request.
    #[derive(Debug, Default)]
    struct Recorder {
        inner: InMemoryBackend,
        ops: Mutex<Vec<&'static str>>,
        fail_sync: AtomicBool,
    }

    impl Recorder {
        fn take(&self) -> Vec<&'static str> {
            let mut ops = std::mem::take(&mut *self.ops.lock().unwrap());
            // Consecutive writes say no more than one write.
            ops.dedup();
            ops
        }
        fn note(&self, op: &'static str) {
            self.ops.lock().unwrap().push(op);
        }
    }

    impl StorageBackend for Recorder {
        fn len(&self) -> Result<u64, BackendIoError> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
            self.note("set_len");
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> Result<(), BackendIoError> {
            if self.fail_sync.load(Ordering::Acquire) {
                return Err(std::io::Error::other("injected fsync failure"));
            }
            self.note("sync");
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
            self.note("write");
            self.inner.write(offset, data)
        }
    }

    fn open() -> (Database, SyncHandle, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let (backend, handle) = DeferredSyncBackend::over(recorder.clone()).unwrap();
        let db = Database::builder().create_with_backend(backend).unwrap();
        recorder.take();
        (db, handle, recorder)
    }

    fn put(db: &Database, key: u64, durability: Durability, sync: Option<&SyncHandle>) {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(durability).unwrap();
        txn.open_table(T)
            .unwrap()
            .insert(key, [7u8; 64].as_slice())
            .unwrap();
        if let Some(sync) = sync {
            sync.defer_next_sync();
        }
        txn.commit().unwrap();
        if let Some(sync) = sync {
            sync.cancel_deferral();
        }
    }

    #[test]
    fn a_deferred_commit_writes_its_pages_and_fsyncs_only_when_settled() {
        let (db, sync, recorder) = open();
        put(&db, 1, Durability::None, None);
        assert_eq!(
            recorder.take(),
            Vec::<&str>::new(),
            "non-durable commits stay in redb's buffer"
        );
        put(&db, 2, Durability::Immediate, Some(&sync));
        assert_eq!(
            recorder.take(),
            vec!["write"],
            "the commit wrote its pages, no fsync yet"
        );
        sync.settle().unwrap();
        assert_eq!(recorder.take(), vec!["sync"]);
        sync.settle().unwrap();
        assert_eq!(recorder.take(), Vec::<&str>::new(), "nothing owed any more");
    }

    #[test]
    fn nothing_reaches_the_file_after_a_deferred_fsync_until_it_is_paid() {
        let (db, sync, recorder) = open();
        put(&db, 1, Durability::Immediate, Some(&sync));
        recorder.take();
        // The next durable commit (not deferred) pays the owed fsync
        // before its first write.
        put(&db, 2, Durability::Immediate, None);
        let ops = recorder.take();
        assert_eq!(ops.first(), Some(&"sync"), "{ops:?}");
        assert_eq!(ops.last(), Some(&"sync"), "{ops:?}");
        assert!(ops.contains(&"write"), "{ops:?}");
        sync.settle().unwrap();
        assert_eq!(recorder.take(), Vec::<&str>::new());
        // Reads see everything, settled or not.
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(T).unwrap();
        assert!(table.get(1).unwrap().is_some() && table.get(2).unwrap().is_some());
    }

    #[test]
    fn an_unused_deferral_does_not_leak_into_the_next_commit() {
        let (db, sync, recorder) = open();
        sync.defer_next_sync();
        sync.cancel_deferral();
        put(&db, 1, Durability::Immediate, None);
        assert_eq!(
            recorder.take().last(),
            Some(&"sync"),
            "an ordinary commit fsyncs"
        );
    }

    #[test]
    fn a_failed_deferred_fsync_fails_every_later_call() {
        let (db, sync, recorder) = open();
        put(&db, 1, Durability::Immediate, Some(&sync));
        recorder.fail_sync.store(true, Ordering::Release);
        assert!(sync.settle().is_err());
        recorder.fail_sync.store(false, Ordering::Release);
        // The kernel may have dropped the pages: a retried fsync that
        // succeeds proves nothing, so the backend stays failed.
        let err = sync.settle().unwrap_err();
        assert!(err.to_string().contains("deferred fsync failed"), "{err}");
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(Durability::Immediate).unwrap();
        txn.open_table(T)
            .unwrap()
            .insert(2, [1u8; 8].as_slice())
            .unwrap();
        assert!(txn.commit().is_err());
    }
}
