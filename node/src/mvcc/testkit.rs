//! A test harness for MVCC code: a real redb database with the MVCC tables
//! and the revision bookkeeping the state machine keeps in meta.

use redb::{Database, ReadableDatabase};

use super::apply::Applier;
use super::read::ReadView;
use crate::error::EtcdError;
use crate::proto::etcdserverpb::{PutRequest, RangeRequest, RangeResponse};
use crate::storage::{KV_HISTORY, KV_LATEST, KV_REVS, LEASE_KEYS, LEASES};

/// A store plus the revision bookkeeping the state machine keeps in meta.
pub(crate) struct Mvcc {
    _dir: tempfile::TempDir,
    pub db: Database,
    pub revision: i64,
    pub compact_revision: i64,
}

impl Mvcc {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(KV_LATEST).unwrap();
        txn.open_table(KV_HISTORY).unwrap();
        txn.open_table(KV_REVS).unwrap();
        txn.open_table(LEASES).unwrap();
        txn.open_table(LEASE_KEYS).unwrap();
        txn.commit().unwrap();
        Mvcc {
            _dir: dir,
            db,
            revision: 1,
            compact_revision: 0,
        }
    }

    /// Runs `f` in one write transaction, as one applied batch.
    pub fn write<T>(
        &mut self,
        f: impl FnOnce(&mut Applier<'_>) -> T,
    ) -> (T, Vec<crate::proto::mvccpb::Event>) {
        let txn = self.db.begin_write().unwrap();
        let (out, events, revision, compact) = {
            let mut applier = Applier::new(
                ReadView {
                    latest: txn.open_table(KV_LATEST).unwrap(),
                    history: txn.open_table(KV_HISTORY).unwrap(),
                    revs: txn.open_table(KV_REVS).unwrap(),
                    revision: self.revision,
                    compact_revision: self.compact_revision,
                },
                txn.open_table(LEASES).unwrap(),
                txn.open_table(LEASE_KEYS).unwrap(),
            );
            let out = f(&mut applier);
            (
                out,
                std::mem::take(&mut applier.events),
                applier.view.revision,
                applier.view.compact_revision,
            )
        };
        txn.commit().unwrap();
        self.revision = revision;
        self.compact_revision = compact;
        (out, events)
    }

    pub fn put(&mut self, key: &str, value: &str) -> i64 {
        self.write(|a| a.put(&put_req(key, value)).unwrap());
        self.revision
    }

    pub fn range(&self, req: RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.view(|view| view.range(&req))
    }

    pub fn get(&self, key: &str) -> Option<crate::proto::mvccpb::KeyValue> {
        self.range(range_req(key, ""))
            .unwrap()
            .kvs
            .into_iter()
            .next()
    }

    /// Runs `f` over a read view of the committed state.
    pub fn view<T>(
        &self,
        f: impl FnOnce(
            &ReadView<
                redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
                redb::ReadOnlyTable<(&'static [u8], u64), &'static [u8]>,
                redb::ReadOnlyTable<(u64, u32), &'static [u8]>,
            >,
        ) -> T,
    ) -> T {
        let txn = self.db.begin_read().unwrap();
        let view = ReadView {
            latest: txn.open_table(KV_LATEST).unwrap(),
            history: txn.open_table(KV_HISTORY).unwrap(),
            revs: txn.open_table(KV_REVS).unwrap(),
            revision: self.revision,
            compact_revision: self.compact_revision,
        };
        f(&view)
    }

    pub fn events(&self, from: i64) -> Result<Vec<crate::proto::mvccpb::Event>, EtcdError> {
        self.view(|view| view.events(from, self.revision, true))
    }
}

pub(crate) fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

pub(crate) fn range_req(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    }
}
