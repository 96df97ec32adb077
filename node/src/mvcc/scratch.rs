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
use super::index::KeyIndex;
use super::read::ReadView;
use crate::proto::mvccpb::Event;
use crate::storage::{KV_RECORDS, LEASE_KEYS, LEASES, StorageError};

/// The records table of a [`ScratchStore`]'s committed state, as a read
/// view sees it.
pub type ScratchRecords = ReadOnlyTable<(u64, u32), &'static [u8]>;

/// A read view of the committed state of a [`ScratchStore`].
pub type ScratchView<'a> = ReadView<'a, ScratchRecords>;

/// The MVCC tables in an in-memory redb database and their key index, plus
/// the revision and compact revision the state machine keeps in its meta
/// table.
pub struct ScratchStore {
    pub db: Database,
    pub index: KeyIndex,
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
        txn.open_table(KV_RECORDS)?;
        txn.open_table(LEASES)?;
        txn.open_table(LEASE_KEYS)?;
        txn.commit()?;
        Ok(ScratchStore {
            db,
            index: KeyIndex::new(),
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
                (&mut self.index, txn.open_table(KV_RECORDS)?),
                (self.revision, self.compact_revision),
                txn.open_table(LEASES)?,
                txn.open_table(LEASE_KEYS)?,
            );
            let out = f(&mut applier);
            (
                out,
                std::mem::take(&mut applier.events),
                applier.revision,
                applier.compact_revision,
            )
        };
        txn.commit()?;
        self.revision = revision;
        self.compact_revision = compact;
        Ok((out, events))
    }

    /// Runs `f` over a read view of the committed state.
    pub fn view<T>(&self, f: impl FnOnce(&ScratchView<'_>) -> T) -> Result<T, StorageError> {
        let txn = self.db.begin_read()?;
        let records = txn.open_table(KV_RECORDS)?;
        let view = ReadView {
            index: &self.index,
            records: &records,
            revision: self.revision,
            compact_revision: self.compact_revision,
        };
        Ok(f(&view))
    }
}
