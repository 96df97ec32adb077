//! An MVCC store held in memory: the same redb tables and revision
//! bookkeeping the state machine keeps, without a data dir, a Raft log or a
//! member. The fuzz targets (`fuzz/`) drive requests through it, and the
//! unit tests' `testkit` is built on it.
//!
//! Every call returns storage faults as errors, never panics: a fuzz input
//! must only be able to make a request fail.

use redb::backends::InMemoryBackend;
use redb::{Database, ReadOnlyTable, ReadableDatabase};

use super::apply::Applier;
use super::read::ReadView;
use crate::proto::mvccpb::Event;
use crate::storage::{KV_HISTORY, KV_LATEST, KV_REVS, LEASE_KEYS, LEASES, StorageError};

/// A read view of the committed state of a [`ScratchStore`].
pub type ScratchView = ReadView<
    ReadOnlyTable<&'static [u8], &'static [u8]>,
    ReadOnlyTable<(&'static [u8], u64), &'static [u8]>,
    ReadOnlyTable<(u64, u32), &'static [u8]>,
>;

/// The MVCC tables in an in-memory redb database, plus the revision and
/// compact revision the state machine keeps in its meta table.
pub struct ScratchStore {
    pub db: Database,
    pub revision: i64,
    pub compact_revision: i64,
}

impl ScratchStore {
    /// An empty store at revision 1, as a fresh member's.
    pub fn new() -> Result<Self, StorageError> {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .map_err(|e| StorageError::Redb(e.into()))?;
        let txn = db.begin_write()?;
        txn.open_table(KV_LATEST)?;
        txn.open_table(KV_HISTORY)?;
        txn.open_table(KV_REVS)?;
        txn.open_table(LEASES)?;
        txn.open_table(LEASE_KEYS)?;
        txn.commit()?;
        Ok(ScratchStore {
            db,
            revision: 1,
            compact_revision: 0,
        })
    }

    /// Runs `f` in one write transaction, as one applied batch, and commits
    /// it; returns `f`'s result and the events the batch produced.
    pub fn write<T>(
        &mut self,
        f: impl FnOnce(&mut Applier<'_>) -> T,
    ) -> Result<(T, Vec<Event>), StorageError> {
        let txn = self.db.begin_write()?;
        let (out, events, revision, compact) = {
            let mut applier = Applier::new(
                ReadView {
                    latest: txn.open_table(KV_LATEST)?,
                    history: txn.open_table(KV_HISTORY)?,
                    revs: txn.open_table(KV_REVS)?,
                    revision: self.revision,
                    compact_revision: self.compact_revision,
                },
                txn.open_table(LEASES)?,
                txn.open_table(LEASE_KEYS)?,
            );
            let out = f(&mut applier);
            (
                out,
                std::mem::take(&mut applier.events),
                applier.view.revision,
                applier.view.compact_revision,
            )
        };
        txn.commit()?;
        self.revision = revision;
        self.compact_revision = compact;
        Ok((out, events))
    }

    /// Runs `f` over a read view of the committed state.
    pub fn view<T>(&self, f: impl FnOnce(&ScratchView) -> T) -> Result<T, StorageError> {
        let txn = self.db.begin_read()?;
        let view = ReadView {
            latest: txn.open_table(KV_LATEST)?,
            history: txn.open_table(KV_HISTORY)?,
            revs: txn.open_table(KV_REVS)?,
            revision: self.revision,
            compact_revision: self.compact_revision,
        };
        Ok(f(&view))
    }
}
