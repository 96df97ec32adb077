//! The Raft snapshot image: every state-machine table at one applied log
//! id, serialized with MessagePack. A member that fell behind the purged
//! log is brought up to date by installing it.

use prost::Message;
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{
    ALARMS, AUTH, KV_HISTORY, KV_LATEST, KV_REVS, LEASE_KEYS, LEASES, MEMBERS, META, StorageError,
    meta_i64, meta_key,
};
use crate::proto::witanpb::LeaseRecord;

/// Version of the image layout; a member refuses images it does not know.
pub const IMAGE_FORMAT: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotImage {
    pub format: u32,
    pub revision: i64,
    pub compact_revision: i64,
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
        for item in txn.open_table(KV_LATEST)?.iter()? {
            let (k, v) = item?;
            image
                .latest
                .push((ByteBuf::from(k.value()), ByteBuf::from(v.value())));
        }
        for item in txn.open_table(KV_HISTORY)?.iter()? {
            let (k, v) = item?;
            let (key, rev) = k.value();
            image
                .history
                .push((ByteBuf::from(key), rev, ByteBuf::from(v.value())));
        }
        for item in txn.open_table(KV_REVS)?.iter()? {
            let (k, v) = item?;
            let (rev, sub) = k.value();
            image.revs.push((rev, sub, ByteBuf::from(v.value())));
        }
        for item in txn.open_table(LEASES)?.iter()? {
            let (k, v) = item?;
            image.leases.push((k.value(), ByteBuf::from(v.value())));
        }
        for item in txn.open_table(LEASE_KEYS)?.iter()? {
            let (k, _) = item?;
            let (id, key) = k.value();
            image.lease_keys.push((id, ByteBuf::from(key)));
        }
        for item in txn.open_table(MEMBERS)?.iter()? {
            let (k, v) = item?;
            image.members.push((k.value(), ByteBuf::from(v.value())));
        }
        for item in txn.open_table(ALARMS)?.iter()? {
            let (k, _) = item?;
            image.alarms.push(k.value());
        }
        for item in txn.open_table(AUTH)?.iter()? {
            let (k, v) = item?;
            image
                .auth
                .push((k.value().to_string(), ByteBuf::from(v.value())));
        }
        Ok(image)
    }

    pub fn encode(&self) -> Vec<u8> {
        super::to_rmp(self)
    }

    pub fn decode(raw: &[u8]) -> Result<Self, StorageError> {
        let image: SnapshotImage =
            rmp_serde::from_slice(raw).map_err(|e| StorageError::corrupt("snapshot image", e))?;
        if image.format != IMAGE_FORMAT {
            return Err(StorageError::corrupt(
                "snapshot image",
                format!("format {} (this build reads {IMAGE_FORMAT})", image.format),
            ));
        }
        Ok(image)
    }

    /// Replaces every state-machine table with the image's content.
    pub fn restore(&self, txn: &WriteTransaction) -> Result<(), StorageError> {
        let mut latest = txn.open_table(KV_LATEST)?;
        latest.retain(|_, _| false)?;
        for (k, v) in &self.latest {
            latest.insert(k.as_slice(), v.as_slice())?;
        }
        let mut history = txn.open_table(KV_HISTORY)?;
        history.retain(|_, _| false)?;
        for (k, rev, v) in &self.history {
            history.insert((k.as_slice(), *rev), v.as_slice())?;
        }
        let mut revs = txn.open_table(KV_REVS)?;
        revs.retain(|_, _| false)?;
        for (rev, sub, k) in &self.revs {
            revs.insert((*rev, *sub), k.as_slice())?;
        }
        let mut leases = txn.open_table(LEASES)?;
        leases.retain(|_, _| false)?;
        for (id, v) in &self.leases {
            leases.insert(*id, v.as_slice())?;
        }
        let mut lease_keys = txn.open_table(LEASE_KEYS)?;
        lease_keys.retain(|_, _| false)?;
        for (id, k) in &self.lease_keys {
            lease_keys.insert((*id, k.as_slice()), ())?;
        }
        let mut members = txn.open_table(MEMBERS)?;
        members.retain(|_, _| false)?;
        for (id, v) in &self.members {
            members.insert(*id, v.as_slice())?;
        }
        let mut alarms = txn.open_table(ALARMS)?;
        alarms.retain(|_, _| false)?;
        for pair in &self.alarms {
            alarms.insert(*pair, ())?;
        }
        let mut auth = txn.open_table(AUTH)?;
        auth.retain(|_, _| false)?;
        for (k, v) in &self.auth {
            auth.insert(k.as_str(), v.as_slice())?;
        }
        let mut meta = txn.open_table(META)?;
        meta.insert(meta_key::REVISION, self.revision.to_le_bytes().as_slice())?;
        meta.insert(
            meta_key::COMPACT_REVISION,
            self.compact_revision.to_le_bytes().as_slice(),
        )?;
        Ok(())
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
            format: IMAGE_FORMAT,
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
