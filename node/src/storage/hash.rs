//! Consistency hashes for `Maintenance.HashKV` and `Maintenance.Hash`.
//!
//! HashKV follows etcd's semantics: a hash of every retained key-value
//! version up to a revision (0 = the current one), failing with `compacted`
//! below the compact revision and `future revision` above the current one.
//! It is computed from the MVCC records alone, so members that applied the
//! same log up to the same point (including the same compactions) answer
//! the same hash. The values are CRC-32C (Castagnoli, as etcd uses) but over
//! witan's own encoding, so they are not byte-compatible with etcd's.
//!
//! Hash covers the whole state-machine content of one member (keys, history,
//! leases, published member attributes, alarms), from one read transaction.

use redb::ReadableTable;

use super::StorageError;
use super::snapshot::SnapshotImage;
use crate::error::EtcdError;
use crate::mvcc::read::ReadView;
use crate::mvcc::{KIND_DELETE, decode_history};

/// Incremental CRC-32C (the `crc32c` crate does the arithmetic).
#[derive(Clone, Copy, Default)]
pub struct Crc32c(u32);

impl Crc32c {
    pub fn update(&mut self, data: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, data);
    }

    pub fn finish(&self) -> u32 {
        self.0
    }

    fn bytes(&mut self, data: &[u8]) {
        self.update(&(data.len() as u64).to_le_bytes());
        self.update(data);
    }

    fn int(&mut self, v: i64) {
        self.update(&v.to_le_bytes());
    }
}

/// What HashKV answers besides the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The revision the hash covers.
    pub revision: i64,
    /// The compact revision in effect; -1 when nothing was ever compacted,
    /// as etcd reports it.
    pub compact_revision: i64,
}

/// Hashes every retained key-value version with `mod_revision <= revision`
/// (0 = the view's current revision), in revision order. Each version
/// contributes its key, mod/create revision, version, lease, a tombstone
/// flag and its value.
pub fn hash_kv<R>(view: &ReadView<'_, R>, revision: i64) -> Result<KvHash, EtcdError>
where
    R: ReadableTable<(u64, u32), &'static [u8]>,
{
    let revision = if revision <= 0 {
        view.revision
    } else {
        revision
    };
    if revision > view.revision {
        return Err(EtcdError::FutureRev);
    }
    if revision < view.compact_revision {
        return Err(EtcdError::Compacted);
    }
    let mut crc = Crc32c::default();
    crc.update(b"kv");
    let versions = view
        .records
        .range(..=(revision as u64, u32::MAX))
        .map_err(StorageError::from)?;
    for item in versions {
        let (k, v) = item.map_err(StorageError::from)?;
        let (rev, _) = k.value();
        let (kind, kv) = decode_history(v.value())?;
        crc.bytes(&kv.key);
        crc.int(rev as i64);
        crc.update(&[u8::from(kind == KIND_DELETE)]);
        crc.int(kv.create_revision);
        crc.int(kv.version);
        crc.int(kv.lease);
        crc.bytes(&kv.value);
    }
    Ok(KvHash {
        hash: crc.finish(),
        revision,
        compact_revision: if view.compact_revision > 0 {
            view.compact_revision
        } else {
            -1
        },
    })
}

/// Hashes the whole state-machine content read through `txn`; returns the
/// hash and the revision it covers.
pub fn hash_state(txn: &redb::ReadTransaction) -> Result<(u32, i64), StorageError> {
    let image = SnapshotImage::capture(txn)?;
    let mut crc = Crc32c::default();
    crc.update(&image.encode());
    Ok((crc.finish(), image.revision))
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;

    use super::*;
    use crate::mvcc::testkit::{Mvcc, put_req};
    use crate::proto::etcdserverpb::{CompactionRequest, DeleteRangeRequest};

    #[test]
    fn crc32c_check_value() {
        let mut crc = Crc32c::default();
        crc.update(b"123456789");
        assert_eq!(crc.finish(), 0xE306_9283);
    }

    enum Op {
        Put(&'static str, &'static str),
        Delete(&'static str),
        Compact(i64),
    }

    /// A store holding the result of `ops`.
    struct Kv(Mvcc);

    impl Kv {
        fn new(ops: &[Op]) -> Kv {
            let mut kv = Kv(Mvcc::new());
            for op in ops {
                kv.apply(op);
            }
            kv
        }

        fn apply(&mut self, op: &Op) {
            self.0.write(|applier| match op {
                Op::Put(k, v) => {
                    applier.put(&put_req(k, v)).unwrap();
                }
                Op::Delete(k) => {
                    applier
                        .delete_range(&DeleteRangeRequest {
                            key: k.as_bytes().to_vec(),
                            ..Default::default()
                        })
                        .unwrap();
                }
                Op::Compact(r) => applier
                    .compact(&CompactionRequest {
                        revision: *r,
                        physical: false,
                    })
                    .unwrap(),
            });
        }

        fn hash(&self, revision: i64) -> Result<KvHash, EtcdError> {
            self.0.view(|view| hash_kv(view, revision))
        }
    }

    const WRITES: [Op; 4] = [
        Op::Put("a", "1"),
        Op::Put("b", "2"),
        Op::Put("a", "3"),
        Op::Delete("b"),
    ];

    #[test]
    fn same_writes_hash_equal_and_a_different_value_differs() {
        let one = Kv::new(&WRITES);
        let two = Kv::new(&WRITES);
        assert_eq!(one.0.revision, 5);
        let h = one.hash(0).unwrap();
        assert_eq!(h, two.hash(0).unwrap());
        assert_eq!((h.revision, h.compact_revision), (5, -1));
        assert_eq!(one.hash(5).unwrap(), h);

        let other = Kv::new(&[
            Op::Put("a", "1"),
            Op::Put("b", "2"),
            Op::Put("a", "X"),
            Op::Delete("b"),
        ]);
        assert_ne!(other.hash(0).unwrap().hash, h.hash);
        // Before the differing write the two histories agree.
        assert_eq!(other.hash(3).unwrap(), one.hash(3).unwrap());
    }

    #[test]
    fn revision_bounds_are_respected() {
        let mut kv = Kv::new(&WRITES);
        let hashes: Vec<u32> = (1..=5).map(|r| kv.hash(r).unwrap().hash).collect();
        // Every revision adds a version, so every prefix hashes differently.
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                assert_ne!(hashes[i], hashes[j], "revisions {} and {}", i + 1, j + 1);
            }
        }
        assert_eq!(kv.hash(6), Err(EtcdError::FutureRev));
        // A later write leaves the hash at an earlier revision unchanged.
        kv.apply(&Op::Put("c", "4"));
        assert_eq!(kv.hash(5).unwrap().hash, hashes[4]);
        assert_eq!(kv.hash(6).unwrap().revision, 6);

        kv.apply(&Op::Compact(4));
        assert_eq!(kv.hash(3), Err(EtcdError::Compacted));
        let at4 = kv.hash(4).unwrap();
        assert_eq!(at4.compact_revision, 4);
        assert_eq!(kv.hash(0).unwrap().revision, 6);
    }

    #[test]
    fn whole_state_hash_tracks_content() {
        let one = Kv::new(&WRITES);
        let two = Kv::new(&WRITES);
        let state = |kv: &Kv| {
            let txn = kv.0.db.begin_read().unwrap();
            // hash_state reads the meta table too.
            hash_state(&txn).map(|(h, _)| h)
        };
        // Without a meta table the capture fails cleanly.
        assert!(state(&one).is_err());
        for kv in [&one, &two] {
            let txn = kv.0.db.begin_write().unwrap();
            txn.open_table(crate::storage::META).unwrap();
            txn.open_table(crate::storage::MEMBERS).unwrap();
            txn.open_table(crate::storage::ALARMS).unwrap();
            txn.open_table(crate::storage::AUTH).unwrap();
            txn.commit().unwrap();
        }
        assert_eq!(state(&one).unwrap(), state(&two).unwrap());
        let other = Kv::new(&[Op::Put("a", "1")]);
        let txn = other.0.db.begin_write().unwrap();
        txn.open_table(crate::storage::META).unwrap();
        txn.open_table(crate::storage::MEMBERS).unwrap();
        txn.open_table(crate::storage::ALARMS).unwrap();
        txn.open_table(crate::storage::AUTH).unwrap();
        txn.commit().unwrap();
        assert_ne!(state(&one).unwrap(), state(&other).unwrap());
    }
}
