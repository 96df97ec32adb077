//! The key-ordered MVCC tables of format 2, and their conversion into
//! `kv_records` (format 3). A format-2 data dir is converted when it is
//! opened; a Raft snapshot stream or snapshot image written by a format-2
//! member arrives as rows of these tables and is converted the same way
//! at the end of its install.
//!
//! Format 2 kept every version under (key, revision) in `kv_history`, the
//! live ones again under their key in `kv_latest`, and the order of changes
//! as (revision, sub) -> key in `kv_revs`, which compaction emptied below
//! the compact revision. So a version older than the compact revision
//! (the newest of its key, kept by compaction) has no sub any more: it gets
//! the next sub free at its revision, in key order, which every member
//! derives alike.

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use super::{KV_RECORDS, StorageError};

/// user key -> current `mvccpb.KeyValue` (live keys only).
pub(crate) const KV_LATEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv_latest");
/// (user key, mod_revision) -> kind byte + `mvccpb.KeyValue`.
pub(crate) const KV_HISTORY: TableDefinition<(&[u8], u64), &[u8]> =
    TableDefinition::new("kv_history");
/// (revision, sub) -> user key.
pub(crate) const KV_REVS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("kv_revs");

/// Whether `txn` holds format-2 MVCC tables.
pub(crate) fn present(txn: &WriteTransaction) -> Result<bool, StorageError> {
    let found = txn
        .list_tables()?
        .any(|t| [KV_LATEST.name(), KV_HISTORY.name(), KV_REVS.name()].contains(&t.name()));
    Ok(found)
}

/// Moves every version in the format-2 tables of `txn` into `kv_records`
/// and deletes those tables. Returns how many versions moved. The caller
/// commits (or drops) `txn`, so a crash leaves either format whole.
pub(crate) fn convert(txn: &WriteTransaction) -> Result<u64, StorageError> {
    if !present(txn)? {
        return Ok(0);
    }
    let mut moved = 0u64;
    {
        let history = txn.open_table(KV_HISTORY)?;
        let revs = txn.open_table(KV_REVS)?;
        let mut records = txn.open_table(KV_RECORDS)?;
        // Versions whose change is still listed keep their sub.
        for item in revs.iter()? {
            let (k, key) = item?;
            let (revision, sub) = k.value();
            let record = history.get((key.value(), revision))?.ok_or_else(|| {
                StorageError::corrupt(
                    "format-2 history",
                    format!("no version of a key changed at revision {revision}"),
                )
            })?;
            records.insert((revision, sub), record.value())?;
            moved += 1;
        }
        // The rest (compacted below) get the next free sub, in key order.
        for item in history.iter()? {
            let (k, record) = item?;
            let (key, revision) = k.value();
            let listed = revs
                .range((revision, 0u32)..=(revision, u32::MAX))?
                .map(|row| row.map(|(_, k)| k.value() == key))
                .collect::<Result<Vec<bool>, _>>()?
                .contains(&true);
            if listed {
                continue;
            }
            let sub = match records
                .range((revision, 0u32)..=(revision, u32::MAX))?
                .next_back()
            {
                Some(row) => row?.0.value().1 + 1,
                None => 0,
            };
            records.insert((revision, sub), record.value())?;
            moved += 1;
        }
    }
    txn.delete_table(KV_LATEST)?;
    txn.delete_table(KV_HISTORY)?;
    txn.delete_table(KV_REVS)?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableDatabase, backends::InMemoryBackend};

    use super::*;
    use crate::mvcc::{KIND_DELETE, KIND_PUT, decode_history, encode_history};
    use crate::proto::mvccpb::KeyValue;

    fn record(kind: u8, key: &str, rev: i64) -> Vec<u8> {
        encode_history(
            kind,
            &KeyValue {
                key: key.into(),
                mod_revision: rev,
                value: format!("{key}@{rev}").into(),
                ..Default::default()
            },
        )
    }

    fn memory_db() -> Database {
        Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap()
    }

    #[test]
    fn every_version_moves_and_compacted_ones_get_subs_in_key_order() {
        let db = memory_db();
        let txn = db.begin_write().unwrap();
        {
            let mut history = txn.open_table(KV_HISTORY).unwrap();
            let mut revs = txn.open_table(KV_REVS).unwrap();
            let mut latest = txn.open_table(KV_LATEST).unwrap();
            // Compacted at 4: a@2 and b@2 (one txn) lost their revs rows.
            for (key, rev, kind) in [("b", 2, KIND_PUT), ("a", 2, KIND_PUT), ("a", 4, KIND_PUT)] {
                history
                    .insert(
                        (key.as_bytes(), rev),
                        record(kind, key, rev as i64).as_slice(),
                    )
                    .unwrap();
            }
            history
                .insert((b"c".as_slice(), 5), record(KIND_DELETE, "c", 5).as_slice())
                .unwrap();
            revs.insert((4, 0), b"a".as_slice()).unwrap();
            revs.insert((5, 0), b"c".as_slice()).unwrap();
            latest.insert(b"a".as_slice(), b"".as_slice()).unwrap();
        }
        assert_eq!(convert(&txn).unwrap(), 4);
        assert!(!present(&txn).unwrap());
        txn.commit().unwrap();
        let txn = db.begin_read().unwrap();
        let records = txn.open_table(KV_RECORDS).unwrap();
        let rows: Vec<(u64, u32, u8, String)> = records
            .iter()
            .unwrap()
            .map(|row| {
                let (k, v) = row.unwrap();
                let (kind, kv) = decode_history(v.value()).unwrap();
                let (rev, sub) = k.value();
                (rev, sub, kind, String::from_utf8(kv.key).unwrap())
            })
            .collect();
        assert_eq!(
            rows,
            [
                (2, 0, KIND_PUT, "a".into()),
                (2, 1, KIND_PUT, "b".into()),
                (4, 0, KIND_PUT, "a".into()),
                (5, 0, KIND_DELETE, "c".into()),
            ]
        );
    }

    #[test]
    fn a_listed_change_without_its_version_is_damage() {
        let db = memory_db();
        let txn = db.begin_write().unwrap();
        txn.open_table(KV_HISTORY).unwrap();
        txn.open_table(KV_REVS)
            .unwrap()
            .insert((3, 0), b"x".as_slice())
            .unwrap();
        assert!(matches!(convert(&txn), Err(StorageError::Corrupt { .. })));
    }
}
