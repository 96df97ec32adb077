//! The snapshot image: every state-machine table at one applied log id,
//! held in memory and serialized with MessagePack. `witan snapshot save`
//! files (`backup.rs`) and the `Hash` RPC use it; Raft snapshots no longer
//! do: they stream the same rows to a file (`snapshot_stream.rs`).

use prost::Message;
use redb::WriteTransaction;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::snapshot_rows::{TableLoader, visit_rows};
use super::snapshot_stream::Row;
use super::{META, StorageError, meta_i64, meta_key};
use crate::proto::witanpb::LeaseRecord;

/// Version of the image layout this build writes; a member refuses images
/// it does not know. Format 1 held the key-ordered tables of storage format
/// 2 (`latest`, `history`, `revs`); format 2 holds `records` instead. This
/// build reads both.
pub const IMAGE_FORMAT: u32 = 2;
const IMAGE_FORMAT_KEY_ORDERED: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotImage {
    pub format: u32,
    pub revision: i64,
    pub compact_revision: i64,
    /// Format 1 only (empty in format 2).
    pub latest: Vec<(ByteBuf, ByteBuf)>,
    pub history: Vec<(ByteBuf, u64, ByteBuf)>,
    pub revs: Vec<(u64, u32, ByteBuf)>,
    pub leases: Vec<(i64, ByteBuf)>,
    pub lease_keys: Vec<(i64, ByteBuf)>,
    pub members: Vec<(u64, ByteBuf)>,
    /// Raised alarms: (member id, `etcdserverpb.AlarmType`). Last, and
    /// empty when absent, so images written before alarms existed still
    /// decode.
    #[serde(default)]
    pub alarms: Vec<(u64, i32)>,
    /// The auth table's rows (users, roles, enabled, revision); empty in
    /// images from before auth existed.
    #[serde(default)]
    pub auth: Vec<(String, ByteBuf)>,
    /// `kv_records`: (revision, sub, kind byte + `mvccpb.KeyValue`); empty
    /// in format 1, which has `latest`, `history` and `revs` instead.
    #[serde(default)]
    pub records: Vec<(u64, u32, ByteBuf)>,
}

impl SnapshotImage {
    /// Reads every state-machine table through one consistent transaction.
    pub fn capture(txn: &redb::ReadTransaction) -> Result<Self, StorageError> {
        let meta = txn.open_table(META)?;
        let mut image = SnapshotImage {
            format: IMAGE_FORMAT,
            revision: meta_i64(&meta, meta_key::REVISION)?,
            compact_revision: meta_i64(&meta, meta_key::COMPACT_REVISION)?,
            ..Default::default()
        };
        visit_rows(txn, |row| {
            image.push(&row);
            Ok::<_, StorageError>(())
        })?;
        Ok(image)
    }

    fn push(&mut self, row: &Row<'_>) {
        let buf = ByteBuf::from;
        match *row {
            Row::Record {
                revision,
                sub,
                record,
            } => self.records.push((revision, sub, buf(record))),
            Row::Latest { key, value } => self.latest.push((buf(key), buf(value))),
            Row::History {
                key,
                revision,
                value,
            } => self.history.push((buf(key), revision, buf(value))),
            Row::Revs { revision, sub, key } => self.revs.push((revision, sub, buf(key))),
            Row::Lease { id, record } => self.leases.push((id, buf(record))),
            Row::LeaseKey { id, key } => self.lease_keys.push((id, buf(key))),
            Row::Member { id, attributes } => self.members.push((id, buf(attributes))),
            Row::Alarm { member, alarm } => self.alarms.push((member, alarm)),
            Row::Auth { name, value } => self.auth.push((name.to_string(), buf(value))),
        }
    }

    /// Every row of the image, table by table.
    fn rows(&self) -> impl Iterator<Item = Row<'_>> {
        let records = self.records.iter().map(|(rev, sub, v)| Row::Record {
            revision: *rev,
            sub: *sub,
            record: v,
        });
        let latest = self
            .latest
            .iter()
            .map(|(k, v)| Row::Latest { key: k, value: v });
        let history = self.history.iter().map(|(k, rev, v)| Row::History {
            key: k,
            revision: *rev,
            value: v,
        });
        let revs = self.revs.iter().map(|(rev, sub, k)| Row::Revs {
            revision: *rev,
            sub: *sub,
            key: k,
        });
        let leases = self
            .leases
            .iter()
            .map(|(id, v)| Row::Lease { id: *id, record: v });
        let lease_keys = self
            .lease_keys
            .iter()
            .map(|(id, k)| Row::LeaseKey { id: *id, key: k });
        let members = self.members.iter().map(|(id, v)| Row::Member {
            id: *id,
            attributes: v,
        });
        let alarms = self
            .alarms
            .iter()
            .map(|&(member, alarm)| Row::Alarm { member, alarm });
        let auth = self
            .auth
            .iter()
            .map(|(k, v)| Row::Auth { name: k, value: v });
        records
            .chain(latest)
            .chain(history)
            .chain(revs)
            .chain(leases)
            .chain(lease_keys)
            .chain(members)
            .chain(alarms)
            .chain(auth)
    }

    pub fn encode(&self) -> Vec<u8> {
        super::to_rmp(self)
    }

    pub fn decode(raw: &[u8]) -> Result<Self, StorageError> {
        let image: SnapshotImage =
            rmp_serde::from_slice(raw).map_err(|e| StorageError::corrupt("snapshot image", e))?;
        image
            .check_format()
            .map_err(|e| StorageError::corrupt("snapshot image", e))?;
        Ok(image)
    }

    /// Refuses an image layout this build does not read.
    pub fn check_format(&self) -> Result<(), String> {
        if (IMAGE_FORMAT_KEY_ORDERED..=IMAGE_FORMAT).contains(&self.format) {
            Ok(())
        } else {
            Err(format!(
                "image format {} (this build reads {IMAGE_FORMAT_KEY_ORDERED} to {IMAGE_FORMAT})",
                self.format
            ))
        }
    }

    /// Replaces every state-machine table with the image's content.
    pub fn restore(&self, txn: &WriteTransaction) -> Result<(), StorageError> {
        let mut tables = TableLoader::open_emptied(txn)?;
        for row in self.rows() {
            tables.insert(&row)?;
        }
        tables.set_revisions(self.revision, self.compact_revision)?;
        tables.finish()
    }

    /// [`restore`](Self::restore), then reads every record's key into a
    /// key index as the first start of a member on these tables will: a
    /// record that start could not index is refused now, not then.
    /// `witan snapshot restore` writes with it and `witan snapshot status`
    /// checks with it (see [`verify`](Self::verify)), so the two accept
    /// the same images.
    pub fn restore_checked(&self, txn: &WriteTransaction) -> Result<(), StorageError> {
        self.restore(txn)?;
        super::index_records(&txn.open_table(super::KV_RECORDS)?)?;
        Ok(())
    }

    /// Runs [`restore_checked`](Self::restore_checked) in a database in
    /// memory and returns the image's live keys.
    pub fn verify(&self) -> Result<usize, StorageError> {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StorageError::Redb(e.into()))?;
        let txn = db.begin_write()?;
        self.restore_checked(&txn)?;
        txn.abort()?;
        self.live_keys()
    }

    /// Keys live at the image's revision.
    pub fn live_keys(&self) -> Result<usize, StorageError> {
        if self.format == IMAGE_FORMAT_KEY_ORDERED {
            return Ok(self.latest.len());
        }
        // Records are in revision order: a key's last one decides.
        let mut live = std::collections::HashMap::new();
        for (_, _, record) in &self.records {
            let (kind, key, _) = crate::mvcc::record_summary(record)?;
            live.insert(key, kind != crate::mvcc::KIND_DELETE);
        }
        Ok(live.values().filter(|&&alive| alive).count())
    }

    /// (id, TTL) of every lease in the image.
    pub fn lease_ttls(&self) -> Result<Vec<(i64, i64)>, StorageError> {
        self.leases
            .iter()
            .map(|(id, raw)| {
                LeaseRecord::decode(raw.as_slice())
                    .map(|r| (*id, r.ttl))
                    .map_err(|e| StorageError::corrupt("lease record", e))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Store;

    #[test]
    fn alarms_and_auth_travel_in_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let image = SnapshotImage {
            format: IMAGE_FORMAT,
            revision: 3,
            alarms: vec![(5, 1), (9, 2)],
            auth: vec![("enabled".into(), ByteBuf::from(vec![1]))],
            ..Default::default()
        };
        let decoded = SnapshotImage::decode(&image.encode()).unwrap();
        let txn = store.db().begin_write().unwrap();
        decoded.restore(&txn).unwrap();
        txn.commit().unwrap();
        let txn = store.db().begin_read().unwrap();
        assert_eq!(SnapshotImage::capture(&txn).unwrap(), image);
    }

    #[test]
    fn an_image_from_before_alarms_still_decodes() {
        /// The image layout before alarms were added.
        #[derive(Serialize)]
        struct Old {
            format: u32,
            revision: i64,
            compact_revision: i64,
            latest: Vec<(ByteBuf, ByteBuf)>,
            history: Vec<(ByteBuf, u64, ByteBuf)>,
            revs: Vec<(u64, u32, ByteBuf)>,
            leases: Vec<(i64, ByteBuf)>,
            lease_keys: Vec<(i64, ByteBuf)>,
            members: Vec<(u64, ByteBuf)>,
        }
        let old = Old {
            format: IMAGE_FORMAT_KEY_ORDERED,
            revision: 4,
            compact_revision: 0,
            latest: vec![],
            history: vec![],
            revs: vec![],
            leases: vec![],
            lease_keys: vec![],
            members: vec![(1, ByteBuf::from(vec![1]))],
        };
        let image = SnapshotImage::decode(&crate::storage::to_rmp(&old)).unwrap();
        assert_eq!(image.revision, 4);
        assert_eq!(image.members.len(), 1);
        assert!(image.alarms.is_empty());
        assert!(image.auth.is_empty());
    }
}
