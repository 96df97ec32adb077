//! Reads: Range at the latest or a past revision, with etcd's sort, limit,
//! filter, keys_only and count_only rules, and event replay for watches.

use std::cmp::Ordering;

use redb::ReadableTable;

use super::index::{KeyIndex, Revision};
use super::range::KeyRange;
use super::{KIND_DELETE, decode_history};
use crate::error::EtcdError;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request as OpRequest;
use crate::proto::etcdserverpb::response_op::Response as OpResponse;
use crate::proto::etcdserverpb::{
    Compare, RangeRequest, RangeResponse, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};
use crate::storage::StorageError;

/// The key index and the records table as one consistent state: the
/// index never names a record the table does not hold (see
/// `storage::Store::index` for how readers and the apply keep them in step).
pub struct ReadView<'a, R> {
    pub index: &'a KeyIndex,
    /// `kv_records`: (revision, sub) -> kind byte + `mvccpb.KeyValue`.
    pub records: &'a R,
    /// The newest revision visible through this view.
    pub revision: i64,
    /// Revisions below this are gone.
    pub compact_revision: i64,
}

impl<R> ReadView<'_, R>
where
    R: ReadableTable<(u64, u32), &'static [u8]>,
{
    /// The record at `rev`: its kind and key-value. The index only names
    /// records that exist, so a missing one is damage.
    pub fn record(&self, rev: Revision) -> Result<(u8, KeyValue), StorageError> {
        let raw = self.records.get(rev.table_key())?.ok_or_else(|| {
            StorageError::corrupt(
                "key index",
                format!("no record at revision {}.{}", rev.main, rev.sub),
            )
        })?;
        decode_history(raw.value())
    }

    fn kv(&self, rev: Revision) -> Result<KeyValue, StorageError> {
        Ok(self.record(rev)?.1)
    }

    /// The current version of one key.
    pub fn get_latest(&self, key: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        self.index.latest(key).map(|rev| self.kv(rev)).transpose()
    }

    /// Every live key-value in `range` at `revision`, in key order, along
    /// with how many there are. `keep` bounds how many are read and
    /// returned (the count still covers the whole range, from the index
    /// alone).
    pub fn scan(
        &self,
        range: &KeyRange,
        revision: i64,
        keep: usize,
    ) -> Result<(Vec<KeyValue>, usize), StorageError> {
        let mut kvs = Vec::new();
        if let KeyRange::Single(key) = range {
            let Some(rev) = self.index.at(key, revision) else {
                return Ok((kvs, 0));
            };
            if keep > 0 {
                kvs.push(self.kv(rev)?);
            }
            return Ok((kvs, 1));
        }
        let Some((lo, hi)) = range.bounds() else {
            return Ok((kvs, 0));
        };
        let mut count = 0usize;
        for (_, rev) in self.index.range(lo, hi, revision) {
            if kvs.len() < keep {
                kvs.push(self.kv(rev)?);
            }
            count += 1;
        }
        Ok((kvs, count))
    }

    /// The version of `key` just before `revision` (for a watch event's
    /// prev_kv), if one is retained and live.
    pub fn get_before(&self, key: &[u8], revision: i64) -> Result<Option<KeyValue>, StorageError> {
        self.index
            .before(key, revision)
            .map(|rev| self.kv(rev))
            .transpose()
    }

    /// One compare, over every key in its range (etcd's applyCompare).
    pub fn compare(&self, cmp: &Compare) -> Result<bool, StorageError> {
        let range = KeyRange::new(&cmp.key, &cmp.range_end);
        let (kvs, _) = self.scan(&range, i64::MAX, usize::MAX)?;
        let target = CompareTarget::try_from(cmp.target).unwrap_or(CompareTarget::Version);
        if kvs.is_empty() {
            // A value compare on a missing key always fails: there is no
            // way to tell a missing value from an empty one.
            if target == CompareTarget::Value {
                return Ok(false);
            }
            return Ok(compare_kv(cmp, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(cmp, kv)))
    }

    /// Answers a txn that writes nothing, locally: compares decide the
    /// branch, ranges read at this view's revision (without headers).
    pub fn read_only_txn(&self, req: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        let mut succeeded = true;
        for cmp in &req.compare {
            if !self.compare(cmp)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(OpRequest::RequestRange(range)) => {
                    OpResponse::ResponseRange(self.range(range)?)
                }
                Some(OpRequest::RequestTxn(nested)) => {
                    OpResponse::ResponseTxn(self.read_only_txn(nested)?)
                }
                Some(_) => {
                    return Err(EtcdError::Internal("write in a read-only txn".into()));
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

    /// Answers a Range request (without its header).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        let revision = if req.revision <= 0 {
            self.revision
        } else {
            req.revision
        };
        if revision > self.revision {
            return Err(EtcdError::FutureRev);
        }
        if revision < self.compact_revision {
            return Err(EtcdError::Compacted);
        }
        let order =
            SortOrder::try_from(req.sort_order).map_err(|_| EtcdError::InvalidSortOption)?;
        let target =
            SortTarget::try_from(req.sort_target).map_err(|_| EtcdError::InvalidSortOption)?;
        // etcd sorts ascending when a target other than the key is named
        // without an order.
        let order = match (order, target) {
            (SortOrder::None, t) if t != SortTarget::Key => SortOrder::Ascend,
            (o, _) => o,
        };
        let filtered = req.min_mod_revision > 0
            || req.max_mod_revision > 0
            || req.min_create_revision > 0
            || req.max_create_revision > 0;
        let needs_all = order != SortOrder::None || filtered;
        let keep = if req.count_only {
            0
        } else if needs_all || req.limit <= 0 {
            usize::MAX
        } else {
            usize::try_from(req.limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
        };
        let range = KeyRange::new(&req.key, &req.range_end);
        let (mut kvs, count) = self.scan(&range, revision, keep)?;
        if filtered {
            kvs.retain(|kv| {
                (req.min_mod_revision <= 0 || kv.mod_revision >= req.min_mod_revision)
                    && (req.max_mod_revision <= 0 || kv.mod_revision <= req.max_mod_revision)
                    && (req.min_create_revision <= 0
                        || kv.create_revision >= req.min_create_revision)
                    && (req.max_create_revision <= 0
                        || kv.create_revision <= req.max_create_revision)
            });
        }
        sort_kvs(&mut kvs, order, target);
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse {
            header: None,
            kvs,
            more,
            count: count as i64,
        })
    }

    /// Events with revisions in `[from, to]`, in revision order, each with
    /// its previous version when `with_prev` is set. Fails with
    /// `Compacted` when `from` is below the compact revision.
    pub fn events(&self, from: i64, to: i64, with_prev: bool) -> Result<Vec<Event>, EtcdError> {
        if from < self.compact_revision {
            return Err(EtcdError::Compacted);
        }
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        let iter = self
            .records
            .range::<(u64, u32)>((from.max(1) as u64, 0u32)..=(to as u64, u32::MAX))
            .map_err(StorageError::from)?;
        for item in iter {
            let (k, raw) = item.map_err(StorageError::from)?;
            let (rev, _) = k.value();
            let (kind, kv) = decode_history(raw.value())?;
            let prev_kv = if with_prev {
                self.get_before(&kv.key, rev as i64)?
            } else {
                None
            };
            out.push(Event {
                r#type: if kind == KIND_DELETE {
                    EventType::Delete as i32
                } else {
                    EventType::Put as i32
                },
                kv: Some(kv),
                prev_kv,
            });
        }
        Ok(out)
    }
}

/// Sorts as etcd does; key order is the input order, so a stable sort keeps
/// ties in key order.
pub fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    if order == SortOrder::None {
        return;
    }
    let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
        _ => kvs.sort_by(cmp),
    }
}

/// etcd's compareKV: one key-value against one compare.
pub fn compare_kv(cmp: &Compare, kv: &KeyValue) -> bool {
    let target = CompareTarget::try_from(cmp.target).unwrap_or(CompareTarget::Version);
    let ordering = match target {
        CompareTarget::Value => {
            let wanted: &[u8] = match &cmp.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(wanted)
        }
        CompareTarget::Create => kv.create_revision.cmp(&int_target(cmp)),
        CompareTarget::Mod => kv.mod_revision.cmp(&int_target(cmp)),
        CompareTarget::Version => kv.version.cmp(&int_target(cmp)),
        CompareTarget::Lease => kv.lease.cmp(&int_target(cmp)),
    };
    match CompareResult::try_from(cmp.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

fn int_target(cmp: &Compare) -> i64 {
    match cmp.target_union {
        Some(TargetUnion::Version(v))
        | Some(TargetUnion::CreateRevision(v))
        | Some(TargetUnion::ModRevision(v))
        | Some(TargetUnion::Lease(v)) => v,
        _ => 0,
    }
}

/// Whether a txn writes anything on either branch, at any depth.
pub fn txn_writes(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(req.failure.iter())
        .any(|op| match &op.request {
            Some(OpRequest::RequestPut(_)) | Some(OpRequest::RequestDeleteRange(_)) => true,
            Some(OpRequest::RequestTxn(t)) => txn_writes(t),
            _ => false,
        })
}

/// Whether a read-only txn may be served without ReadIndex: every op is a
/// serializable range (etcd's isTxnSerializable).
pub fn txn_serializable(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(req.failure.iter())
        .all(|op| matches!(&op.request, Some(OpRequest::RequestRange(r)) if r.serializable))
}
