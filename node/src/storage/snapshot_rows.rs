//! The state-machine tables as a sequence of [`Row`]s: read one row at a
//! time out of a read transaction, and written one row at a time into a
//! write transaction whose tables were emptied first. Both the Raft
//! snapshot stream and the in-memory [`SnapshotImage`](super::snapshot)
//! go through here, so the set of tables a snapshot covers is written down
//! once. Rows of format 2's key-ordered tables (from an older member's
//! stream or image) are loaded into those tables and converted at the end
//! ([`TableLoader::finish`], `legacy`).

use redb::{ReadableTable, Table, WriteTransaction};

use super::legacy::{self, KV_HISTORY, KV_LATEST, KV_REVS};
use super::snapshot_stream::Row;
use super::{ALARMS, AUTH, KV_RECORDS, LEASE_KEYS, LEASES, MEMBERS, META, StorageError, meta_key};

/// Calls `emit` with every row of every state-machine table, table by
/// table in key order, straight from redb's pages (no copy is kept).
pub fn visit_rows<E>(
    txn: &redb::ReadTransaction,
    mut emit: impl FnMut(Row<'_>) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<StorageError>,
{
    // redb's errors convert to StorageError, which converts to E.
    fn s<T>(r: Result<T, impl Into<StorageError>>) -> Result<T, StorageError> {
        r.map_err(Into::into)
    }
    for item in s(s(txn.open_table(KV_RECORDS))?.iter())? {
        let (k, v) = s(item)?;
        let (revision, sub) = k.value();
        emit(Row::Record {
            revision,
            sub,
            record: v.value(),
        })?;
    }
    for item in s(s(txn.open_table(LEASES))?.iter())? {
        let (k, v) = s(item)?;
        emit(Row::Lease {
            id: k.value(),
            record: v.value(),
        })?;
    }
    for item in s(s(txn.open_table(LEASE_KEYS))?.iter())? {
        let (k, _) = s(item)?;
        let (id, key) = k.value();
        emit(Row::LeaseKey { id, key })?;
    }
    for item in s(s(txn.open_table(MEMBERS))?.iter())? {
        let (k, v) = s(item)?;
        emit(Row::Member {
            id: k.value(),
            attributes: v.value(),
        })?;
    }
    for item in s(s(txn.open_table(ALARMS))?.iter())? {
        let (k, _) = s(item)?;
        let (member, alarm) = k.value();
        emit(Row::Alarm { member, alarm })?;
    }
    for item in s(s(txn.open_table(AUTH))?.iter())? {
        let (k, v) = s(item)?;
        emit(Row::Auth {
            name: k.value(),
            value: v.value(),
        })?;
    }
    Ok(())
}

/// Every state-machine table of one write transaction, emptied, taking
/// rows one at a time. Dropping the transaction without committing leaves
/// the store as it was.
pub struct TableLoader<'txn> {
    txn: &'txn WriteTransaction,
    records: Table<'txn, (u64, u32), &'static [u8]>,
    /// Format 2's tables, opened by the first such row.
    legacy: Option<LegacyTables<'txn>>,
    leases: Table<'txn, i64, &'static [u8]>,
    lease_keys: Table<'txn, (i64, &'static [u8]), ()>,
    members: Table<'txn, u64, &'static [u8]>,
    alarms: Table<'txn, (u64, i32), ()>,
    auth: Table<'txn, &'static str, &'static [u8]>,
    meta: Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> TableLoader<'txn> {
    /// Opens and empties every state-machine table of `txn`.
    pub fn open_emptied(txn: &'txn WriteTransaction) -> Result<Self, StorageError> {
        // Format 2's tables hold nothing after a load but what it converts.
        txn.delete_table(KV_LATEST)?;
        txn.delete_table(KV_HISTORY)?;
        txn.delete_table(KV_REVS)?;
        let mut loader = TableLoader {
            txn,
            records: txn.open_table(KV_RECORDS)?,
            legacy: None,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_table(LEASE_KEYS)?,
            members: txn.open_table(MEMBERS)?,
            alarms: txn.open_table(ALARMS)?,
            auth: txn.open_table(AUTH)?,
            meta: txn.open_table(META)?,
        };
        loader.records.retain(|_, _| false)?;
        loader.leases.retain(|_, _| false)?;
        loader.lease_keys.retain(|_, _| false)?;
        loader.members.retain(|_, _| false)?;
        loader.alarms.retain(|_, _| false)?;
        loader.auth.retain(|_, _| false)?;
        Ok(loader)
    }

    /// Inserts one row into its table.
    pub fn insert(&mut self, row: &Row<'_>) -> Result<(), StorageError> {
        match *row {
            Row::Record {
                revision,
                sub,
                record,
            } => {
                self.records.insert((revision, sub), record)?;
            }
            // The live versions are in the history too.
            Row::Latest { .. } => {}
            Row::History {
                key,
                revision,
                value,
            } => {
                self.legacy()?.history.insert((key, revision), value)?;
            }
            Row::Revs { revision, sub, key } => {
                self.legacy()?.revs.insert((revision, sub), key)?;
            }
            Row::Lease { id, record } => {
                self.leases.insert(id, record)?;
            }
            Row::LeaseKey { id, key } => {
                self.lease_keys.insert((id, key), ())?;
            }
            Row::Member { id, attributes } => {
                self.members.insert(id, attributes)?;
            }
            Row::Alarm { member, alarm } => {
                self.alarms.insert((member, alarm), ())?;
            }
            Row::Auth { name, value } => {
                self.auth.insert(name, value)?;
            }
        }
        Ok(())
    }

    /// Records the revision and compact revision the rows are at.
    pub fn set_revisions(
        &mut self,
        revision: i64,
        compact_revision: i64,
    ) -> Result<(), StorageError> {
        self.meta
            .insert(meta_key::REVISION, revision.to_le_bytes().as_slice())?;
        self.meta.insert(
            meta_key::COMPACT_REVISION,
            compact_revision.to_le_bytes().as_slice(),
        )?;
        Ok(())
    }

    /// The META table, for what the caller records beside the rows.
    pub fn meta(&mut self) -> &mut Table<'txn, &'static str, &'static [u8]> {
        &mut self.meta
    }

    fn legacy(&mut self) -> Result<&mut LegacyTables<'txn>, StorageError> {
        if self.legacy.is_none() {
            self.legacy = Some(LegacyTables {
                history: self.txn.open_table(KV_HISTORY)?,
                revs: self.txn.open_table(KV_REVS)?,
            });
        }
        Ok(self.legacy.as_mut().expect("opened above"))
    }

    /// Ends the load: rows of format 2's tables become records. Call it
    /// before committing.
    pub fn finish(self) -> Result<(), StorageError> {
        let txn = self.txn;
        let had_legacy = self.legacy.is_some();
        // The tables must be closed before the conversion deletes them.
        drop(self);
        if had_legacy {
            legacy::convert(txn)?;
        }
        Ok(())
    }
}

struct LegacyTables<'txn> {
    history: Table<'txn, (&'static [u8], u64), &'static [u8]>,
    revs: Table<'txn, (u64, u32), &'static [u8]>,
}
