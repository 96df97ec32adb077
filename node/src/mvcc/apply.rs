//! Writes: how each replicated request changes the MVCC tables. Runs inside
//! the state machine's write transaction; deterministic on every member.

use prost::Message;
use redb::{ReadableTable, Table};

use super::index::{KeyIndex, Meta, Revision};
use super::range::KeyRange;
use super::read::ReadView;
use super::{KIND_DELETE, KIND_PUT, encode_history};
use crate::error::EtcdError;
use crate::proto::etcdserverpb::request_op::Request as OpRequest;
use crate::proto::etcdserverpb::response_op::Response as OpResponse;
use crate::proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseRevokeRequest, PutRequest, PutResponse, RangeRequest, ResponseOp,
    TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};
use crate::proto::witanpb::LeaseRecord;
use crate::storage::StorageError;

/// `kv_records`, open for writing.
pub type Records<'t> = Table<'t, (u64, u32), &'static [u8]>;
type Leases<'t> = Table<'t, i64, &'static [u8]>;
type LeaseKeys<'t> = Table<'t, (i64, &'static [u8]), ()>;

/// A failed apply: either etcd's answer to the client, or a storage fault
/// that must stop the state machine.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Rejected(#[from] EtcdError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<redb::StorageError> for ApplyError {
    fn from(e: redb::StorageError) -> Self {
        ApplyError::Storage(e.into())
    }
}

/// Lease changes the lessor must learn about after the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChange {
    Granted { id: i64, ttl_secs: i64 },
    Revoked { id: i64 },
}

/// The MVCC tables open for writing and the key index, plus what this
/// batch produced.
pub struct Applier<'t> {
    index: &'t mut KeyIndex,
    records: Records<'t>,
    /// The store's revision: the last write request's.
    pub revision: i64,
    /// Revisions below this are gone.
    pub compact_revision: i64,
    pub leases: Leases<'t>,
    pub lease_keys: LeaseKeys<'t>,
    /// Writes made so far in the current request (they share one revision).
    sub: u32,
    /// Events produced by this batch, in revision order, for watchers.
    pub events: Vec<Event>,
    pub lease_changes: Vec<LeaseChange>,
}

impl<'t> Applier<'t> {
    /// An applier over `records` and `index`, which must describe the same
    /// versions, at `revision` and `compact_revision`.
    pub fn new(
        (index, records): (&'t mut KeyIndex, Records<'t>),
        (revision, compact_revision): (i64, i64),
        leases: Leases<'t>,
        lease_keys: LeaseKeys<'t>,
    ) -> Self {
        Applier {
            index,
            records,
            revision,
            compact_revision,
            leases,
            lease_keys,
            sub: 0,
            events: Vec::new(),
            lease_changes: Vec::new(),
        }
    }

    /// The committed state plus this batch's writes so far, at the store's
    /// revision.
    pub fn view(&self) -> ReadView<'_, Records<'t>> {
        self.view_at(self.revision)
    }

    fn view_at(&self, revision: i64) -> ReadView<'_, Records<'t>> {
        ReadView {
            index: self.index,
            records: &self.records,
            revision,
            compact_revision: self.compact_revision,
        }
    }

    /// The revision writes of the current request get.
    fn write_revision(&self) -> i64 {
        self.revision + 1
    }

    /// Where the current request's next change goes.
    fn next_change(&mut self) -> Revision {
        let rev = Revision::new(self.write_revision(), self.sub);
        self.sub += 1;
        rev
    }

    /// Closes the current request: its writes, if any, become one revision.
    fn end_request(&mut self) {
        if self.sub > 0 {
            self.revision += 1;
            self.sub = 0;
        }
    }

    /// The revision a read inside the current request sees.
    fn read_revision(&self) -> i64 {
        if self.sub > 0 {
            self.revision + 1
        } else {
            self.revision
        }
    }

    fn lease_exists(&self, id: i64) -> Result<bool, StorageError> {
        Ok(self.leases.get(id)?.is_some())
    }

    /// Checks that a Put can be applied, against the state before it.
    fn check_put(&self, req: &PutRequest) -> Result<(), ApplyError> {
        if (req.ignore_value || req.ignore_lease) && self.index.latest(&req.key).is_none() {
            return Err(EtcdError::KeyNotFound.into());
        }
        if !req.ignore_lease && req.lease != 0 && !self.lease_exists(req.lease)? {
            return Err(EtcdError::LeaseNotFound.into());
        }
        Ok(())
    }

    fn put_unchecked(&mut self, req: &PutRequest) -> Result<PutResponse, ApplyError> {
        let change = self.next_change();
        let rev = change.main;
        let (live, meta) = self.index.put(&req.key, change, |live| match live {
            Some((_, prior)) => Meta {
                version: prior.version + 1,
                lease: if req.ignore_lease {
                    prior.lease
                } else {
                    req.lease
                },
                ..prior
            },
            None => Meta {
                create_revision: rev,
                version: 1,
                lease: req.lease,
            },
        });
        // The index knows what a put builds on; the superseded record is
        // read only for its value. Watchers that want it read it themselves
        // (`server::watch`), as etcd's watch stream does.
        let mut old = match live {
            Some((rev, _)) if req.prev_kv || req.ignore_value => Some(self.view().record(rev)?.1),
            _ => None,
        };
        let value = match old.as_mut() {
            Some(old) if req.ignore_value && !req.prev_kv => std::mem::take(&mut old.value),
            Some(old) if req.ignore_value => old.value.clone(),
            _ => req.value.clone(),
        };
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: meta.create_revision,
            mod_revision: rev,
            version: meta.version,
            value,
            lease: meta.lease,
        };
        self.records
            .insert(change.table_key(), encode_history(KIND_PUT, &kv).as_slice())?;
        let old_lease = live.map_or(0, |(_, prior)| prior.lease);
        if old_lease != 0 && old_lease != meta.lease {
            self.lease_keys.remove((old_lease, req.key.as_slice()))?;
        }
        // A key that stays on its lease is already listed under it.
        if meta.lease != 0 && old_lease != meta.lease {
            self.lease_keys
                .insert((meta.lease, req.key.as_slice()), ())?;
        }
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(PutResponse {
            header: None,
            prev_kv: old.filter(|_| req.prev_kv),
        })
    }

    fn delete_key(&mut self, old: KeyValue) -> Result<(), ApplyError> {
        let change = self.next_change();
        let tombstone = KeyValue {
            key: old.key.clone(),
            mod_revision: change.main,
            ..Default::default()
        };
        self.records.insert(
            change.table_key(),
            encode_history(KIND_DELETE, &tombstone).as_slice(),
        )?;
        self.index.push_delete(&old.key, change);
        if old.lease != 0 {
            self.lease_keys.remove((old.lease, old.key.as_slice()))?;
        }
        self.events.push(Event {
            r#type: EventType::Delete as i32,
            kv: Some(tombstone),
            prev_kv: Some(old),
        });
        Ok(())
    }

    fn delete_range_inner(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, ApplyError> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let (olds, _) = self.view().scan(&range, i64::MAX, usize::MAX)?;
        let deleted = olds.len() as i64;
        let mut prev_kvs = Vec::new();
        for old in olds {
            if req.prev_kv {
                prev_kvs.push(old.clone());
            }
            self.delete_key(old)?;
        }
        Ok(DeleteRangeResponse {
            header: None,
            deleted,
            prev_kvs,
        })
    }

    /// Put: one new revision.
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, ApplyError> {
        self.check_put(req)?;
        let resp = self.put_unchecked(req)?;
        self.end_request();
        Ok(resp)
    }

    /// DeleteRange: one new revision if anything was deleted.
    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, ApplyError> {
        let resp = self.delete_range_inner(req)?;
        self.end_request();
        Ok(resp)
    }

    /// Txn: compares decide the branch (nested txns too) against the state
    /// before the txn; all writes share one revision.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, ApplyError> {
        let mut path = Vec::new();
        self.txn_path(req, &mut path)?;
        let mut cursor = 0;
        self.check_txn_puts(req, &path, &mut cursor)?;
        let mut cursor = 0;
        let resp = self.txn_exec(req, &path, &mut cursor)?;
        self.end_request();
        Ok(resp)
    }

    /// Decides every branch, depth first, before any op runs (as etcd).
    fn txn_path(&self, req: &TxnRequest, path: &mut Vec<bool>) -> Result<(), ApplyError> {
        let mut ok = true;
        for cmp in &req.compare {
            if !self.compare(cmp)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            if let Some(OpRequest::RequestTxn(nested)) = &op.request {
                self.txn_path(nested, path)?;
            }
        }
        Ok(())
    }

    fn check_txn_puts(
        &self,
        req: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
    ) -> Result<(), ApplyError> {
        let ok = path[*cursor];
        *cursor += 1;
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            match &op.request {
                Some(OpRequest::RequestPut(put)) => self.check_put(put)?,
                Some(OpRequest::RequestTxn(nested)) => self.check_txn_puts(nested, path, cursor)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn txn_exec(
        &mut self,
        req: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
    ) -> Result<TxnResponse, ApplyError> {
        let succeeded = path[*cursor];
        *cursor += 1;
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(OpRequest::RequestRange(range)) => {
                    OpResponse::ResponseRange(self.range_in_txn(range)?)
                }
                Some(OpRequest::RequestPut(put)) => {
                    OpResponse::ResponsePut(self.put_unchecked(put)?)
                }
                Some(OpRequest::RequestDeleteRange(del)) => {
                    OpResponse::ResponseDeleteRange(self.delete_range_inner(del)?)
                }
                Some(OpRequest::RequestTxn(nested)) => {
                    OpResponse::ResponseTxn(self.txn_exec(nested, path, cursor)?)
                }
                None => continue,
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            header: None,
            succeeded,
            responses,
        })
    }

    fn range_in_txn(
        &mut self,
        req: &RangeRequest,
    ) -> Result<crate::proto::etcdserverpb::RangeResponse, ApplyError> {
        // Reads inside a txn see the txn's own earlier writes, at the
        // revision those writes will get.
        Ok(self.view_at(self.read_revision()).range(req)?)
    }

    fn compare(&self, cmp: &Compare) -> Result<bool, ApplyError> {
        Ok(self.view().compare(cmp)?)
    }

    /// Compact: drop history below `revision`, keeping for each key the
    /// newest version at or below it (unless that is a deletion).
    pub fn compact(&mut self, req: &CompactionRequest) -> Result<(), ApplyError> {
        if req.revision <= self.compact_revision {
            return Err(EtcdError::Compacted.into());
        }
        if req.revision > self.revision {
            return Err(EtcdError::FutureRev.into());
        }
        let mut doomed = self.index.compact(req.revision);
        // In table order: neighbouring records share pages.
        doomed.sort_unstable();
        for rev in doomed {
            self.records.remove(rev.table_key())?;
        }
        self.compact_revision = req.revision;
        Ok(())
    }

    /// LeaseGrant: recorded; no new revision.
    pub fn lease_grant(
        &mut self,
        req: &LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse, ApplyError> {
        if self.lease_exists(req.id)? {
            return Err(EtcdError::LeaseExist.into());
        }
        let record = LeaseRecord {
            id: req.id,
            ttl: req.ttl,
        };
        self.leases
            .insert(req.id, record.encode_to_vec().as_slice())?;
        self.lease_changes.push(LeaseChange::Granted {
            id: req.id,
            ttl_secs: req.ttl,
        });
        Ok(LeaseGrantResponse {
            header: None,
            id: req.id,
            ttl: req.ttl,
            error: String::new(),
        })
    }

    /// LeaseRevoke: the lease and every key attached to it go, the keys in
    /// one revision.
    pub fn lease_revoke(&mut self, req: &LeaseRevokeRequest) -> Result<(), ApplyError> {
        if !self.lease_exists(req.id)? {
            return Err(EtcdError::LeaseNotFound.into());
        }
        let mut keys = Vec::new();
        for item in self
            .lease_keys
            .range::<(i64, &[u8])>((req.id, &[][..])..(req.id.saturating_add(1), &[][..]))?
        {
            let (k, _) = item?;
            keys.push(k.value().1.to_vec());
        }
        for key in keys {
            if let Some(old) = self.view().get_latest(&key)? {
                self.delete_key(old)?;
            }
            self.lease_keys.remove((req.id, key.as_slice()))?;
        }
        self.leases.remove(req.id)?;
        self.lease_changes.push(LeaseChange::Revoked { id: req.id });
        self.end_request();
        Ok(())
    }

    /// Keys attached to a lease, in key order.
    pub fn lease_keys_of(&self, id: i64) -> Result<Vec<Vec<u8>>, StorageError> {
        lease_keys_of(&self.lease_keys, id)
    }
}

/// Keys attached to a lease, from any table handle.
pub fn lease_keys_of(
    table: &impl ReadableTable<(i64, &'static [u8]), ()>,
    id: i64,
) -> Result<Vec<Vec<u8>>, StorageError> {
    let mut keys = Vec::new();
    for item in table.range::<(i64, &[u8])>((id, &[][..])..(id.saturating_add(1), &[][..]))? {
        let (k, _) = item?;
        keys.push(k.value().1.to_vec());
    }
    Ok(keys)
}
