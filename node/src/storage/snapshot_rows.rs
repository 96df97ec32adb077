//! The state-machine tables as a sequence of [`Row`]s: read one row at a
//! time out of a read transaction, and written one row at a time into a
//! write transaction whose tables were emptied first. Both the Raft
//! snapshot stream and the in-memory [`SnapshotImage`](super::snapshot)
//! go through here, so the set of tables a snapshot covers is written down
//! once.

use redb::{ReadableTable, Table, WriteTransaction};

use super::snapshot_stream::Row;
use super::{
    ALARMS, AUTH, KV_HISTORY, KV_LATEST, KV_REVS, LEASE_KEYS, LEASES, MEMBERS, META, StorageError,
    meta_key,
};

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
    for item in s(s(txn.open_table(KV_LATEST))?.iter())? {
        let (k, v) = s(item)?;
        emit(Row::Latest {
            key: k.value(),
            value: v.value(),
        })?;
    }
    for item in s(s(txn.open_table(KV_HISTORY))?.iter())? {
        let (k, v) = s(item)?;
        let (key, revision) = k.value();
        emit(Row::History {
            key,
            revision,
            value: v.value(),
        })?;
    }
    for item in s(s(txn.open_table(KV_REVS))?.iter())? {
        let (k, v) = s(item)?;
        let (revision, sub) = k.value();
        emit(Row::Revs {
            revision,
            sub,
            key: v.value(),
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
    latest: Table<'txn, &'static [u8], &'static [u8]>,
    history: Table<'txn, (&'static [u8], u64), &'static [u8]>,
    revs: Table<'txn, (u64, u32), &'static [u8]>,
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
        let mut loader = TableLoader {
            latest: txn.open_table(KV_LATEST)?,
            history: txn.open_table(KV_HISTORY)?,
            revs: txn.open_table(KV_REVS)?,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_table(LEASE_KEYS)?,
            members: txn.open_table(MEMBERS)?,
            alarms: txn.open_table(ALARMS)?,
            auth: txn.open_table(AUTH)?,
            meta: txn.open_table(META)?,
        };
        loader.latest.retain(|_, _| false)?;
        loader.history.retain(|_, _| false)?;
        loader.revs.retain(|_, _| false)?;
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
            Row::Latest { key, value } => {
                self.latest.insert(key, value)?;
            }
            Row::History {
                key,
                revision,
                value,
            } => {
                self.history.insert((key, revision), value)?;
            }
            Row::Revs { revision, sub, key } => {
                self.revs.insert((revision, sub), key)?;
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
}
