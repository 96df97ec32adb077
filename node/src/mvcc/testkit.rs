//! A test harness for MVCC code: a real (in-memory) redb database with the
//! MVCC tables and the revision bookkeeping the state machine keeps in meta.

use super::apply::Applier;
use super::scratch::{ScratchStore, ScratchView};
use crate::error::EtcdError;
use crate::proto::etcdserverpb::{PutRequest, RangeRequest, RangeResponse};

/// A store plus the revision bookkeeping the state machine keeps in meta
/// (the in-memory [`ScratchStore`], panicking on storage faults).
pub(crate) struct Mvcc {
    pub store: ScratchStore,
}

impl std::ops::Deref for Mvcc {
    type Target = ScratchStore;
    fn deref(&self) -> &ScratchStore {
        &self.store
    }
}

impl Mvcc {
    pub fn new() -> Self {
        Mvcc {
            store: ScratchStore::new().unwrap(),
        }
    }

    /// Runs `f` in one write transaction, as one applied batch.
    pub fn write<T>(
        &mut self,
        f: impl FnOnce(&mut Applier<'_>) -> T,
    ) -> (T, Vec<crate::proto::mvccpb::Event>) {
        self.store.write(f).unwrap()
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
    pub fn view<T>(&self, f: impl FnOnce(&ScratchView<'_>) -> T) -> T {
        self.store.view(f).unwrap()
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
