//! Alarms and the space quota, as etcd defines them
//! (`server/storage/quota.go`, `server/etcdserver/apply/apply.go`).
//!
//! An alarm is a (member id, alarm type) pair raised and cleared through
//! Raft, so every member holds the same set. While a NOSPACE alarm is
//! active anywhere in the cluster, applying a request that would store more
//! (Put, a Txn with a put, LeaseGrant) fails with "database space exceeded"
//! on every member, deterministically (etcd's capped applier); reads,
//! deletes, compaction and lease revocation still work, so an operator can
//! make room. A CORRUPT alarm refuses every replicated KV and lease request
//! (etcd's corrupt applier), and wins over NOSPACE as it does in etcd.
//!
//! The quota itself is checked before proposing, by the member that serves
//! the request, against its own database file size: see [`quota_exceeded`].

use std::collections::BTreeSet;

use redb::ReadableTable;

use crate::error::EtcdError;
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::request_op::Request as OpRequest;
use crate::proto::etcdserverpb::{AlarmMember, AlarmRequest, AlarmResponse, AlarmType, TxnRequest};
use crate::proto::witanpb::InternalRequest;
use crate::proto::witanpb::internal_request::Request;
use crate::storage::StorageError;

/// etcd's default `--quota-backend-bytes`: 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// etcd's estimate of a key's metadata, added to every put's size.
const KV_OVERHEAD_BYTES: u64 = 256;
/// etcd's estimate of a lease record's size.
const LEASE_OVERHEAD_BYTES: u64 = 64;

/// How applying an alarm request changed the set, for the table to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmChange {
    Raised(u64, i32),
    Cleared(u64, i32),
}

/// The alarms raised in the cluster: (member id, `AlarmType` number).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveAlarms(BTreeSet<(u64, i32)>);

impl ActiveAlarms {
    /// Reads every alarm from the alarms table.
    pub fn load(table: &impl ReadableTable<(u64, i32), ()>) -> Result<Self, StorageError> {
        let mut set = BTreeSet::new();
        for item in table.iter()? {
            let (k, _) = item?;
            set.insert(k.value());
        }
        Ok(ActiveAlarms(set))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn any_of(&self, alarm: AlarmType) -> bool {
        self.0.iter().any(|&(_, a)| a == alarm as i32)
    }

    /// Alarms of type `filter`, or all of them for `NONE` (etcd's GET).
    pub fn list(&self, filter: i32) -> Vec<AlarmMember> {
        self.0
            .iter()
            .filter(|&&(_, a)| filter == AlarmType::None as i32 || a == filter)
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// What ACTIVATE or DEACTIVATE does to the set, as etcd's alarm store
    /// does it. Returns the response and how the set changed, if it did.
    pub fn apply(&mut self, req: &AlarmRequest) -> (AlarmResponse, Option<AlarmChange>) {
        let pair = (req.member_id, req.alarm);
        let member = AlarmMember {
            member_id: req.member_id,
            alarm: req.alarm,
        };
        let mut resp = AlarmResponse::default();
        let change = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {
                resp.alarms = self.list(req.alarm);
                None
            }
            // etcd ignores an activation of "no alarm".
            Ok(AlarmAction::Activate) if req.alarm == AlarmType::None as i32 => None,
            Ok(AlarmAction::Activate) => {
                // Already raised: answered as raised, nothing changes.
                resp.alarms.push(member);
                self.0
                    .insert(pair)
                    .then_some(AlarmChange::Raised(pair.0, pair.1))
            }
            Ok(AlarmAction::Deactivate) => {
                if self.0.remove(&pair) {
                    resp.alarms.push(member);
                    Some(AlarmChange::Cleared(pair.0, pair.1))
                } else {
                    None
                }
            }
            Err(_) => None,
        };
        (resp, change)
    }

    /// etcd's text for an alarm in `Status.errors`: `memberID:<id> alarm:<NAME>`.
    pub fn status_errors(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|&(member_id, alarm)| {
                let name = AlarmType::try_from(alarm)
                    .map(|a| a.as_str_name().to_string())
                    .unwrap_or_else(|_| alarm.to_string());
                format!("memberID:{member_id} alarm:{name}")
            })
            .collect()
    }

    /// Why applying `req` must fail while these alarms are active, if it
    /// must (etcd's corrupt and capped appliers).
    pub fn refusal(&self, req: &InternalRequest) -> Option<EtcdError> {
        if self.is_empty() {
            return None;
        }
        let Some(request) = &req.request else {
            return None;
        };
        // Alarms themselves and published attributes always apply, or an
        // alarm could never be cleared.
        if matches!(request, Request::Alarm(_) | Request::Publish(_)) {
            return None;
        }
        if self.any_of(AlarmType::Corrupt) {
            return Some(EtcdError::Corrupt);
        }
        if self.any_of(AlarmType::Nospace) && quota_cost_bytes(req) > 0 {
            return Some(EtcdError::NoSpace);
        }
        None
    }
}

/// The bytes a txn's puts may add: its costlier branch, nested txns
/// included (etcd only looks at the top level; a nested put is stored all
/// the same, so it is counted here).
fn txn_put_cost_bytes(req: &TxnRequest) -> u64 {
    let branch = |ops: &[crate::proto::etcdserverpb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(OpRequest::RequestPut(put)) => {
                    KV_OVERHEAD_BYTES + prost::Message::encoded_len(put) as u64
                }
                Some(OpRequest::RequestTxn(nested)) => txn_put_cost_bytes(nested),
                _ => 0,
            })
            .sum()
    };
    branch(&req.success).max(branch(&req.failure))
}

/// How many bytes a request may add to the database, as etcd estimates it;
/// 0 for requests the quota never stops.
pub fn quota_cost_bytes(req: &InternalRequest) -> u64 {
    match &req.request {
        Some(Request::Put(put)) => KV_OVERHEAD_BYTES + prost::Message::encoded_len(put) as u64,
        Some(Request::Txn(txn)) => txn_put_cost_bytes(txn),
        Some(Request::LeaseGrant(_)) => LEASE_OVERHEAD_BYTES,
        _ => 0,
    }
}

/// Whether a request costing `cost_bytes` exceeds the quota on a member
/// whose database file is `db_size_bytes` (etcd: `size + cost < quota` is
/// available). `None` is no quota.
pub fn quota_exceeded(db_size_bytes: u64, cost_bytes: u64, quota_bytes: Option<u64>) -> bool {
    match quota_bytes {
        Some(quota) => cost_bytes > 0 && db_size_bytes.saturating_add(cost_bytes) >= quota,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{
        CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
        RequestOp,
    };
    use crate::proto::witanpb::MemberAttributes;

    fn req(r: Request) -> InternalRequest {
        InternalRequest {
            request: Some(r),
            ..Default::default()
        }
    }

    fn put() -> Request {
        Request::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    }

    fn op(r: OpRequest) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    fn alarm(action: AlarmAction, member_id: u64, alarm: AlarmType) -> AlarmRequest {
        AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        }
    }

    fn raised(pairs: &[(u64, AlarmType)]) -> ActiveAlarms {
        ActiveAlarms(pairs.iter().map(|&(m, a)| (m, a as i32)).collect())
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            success,
            failure,
            ..Default::default()
        }
    }

    #[test]
    fn nospace_refuses_what_stores_more_and_nothing_else() {
        let nospace = raised(&[(7, AlarmType::Nospace)]);
        let refused = |r: Request| nospace.refusal(&req(r));
        assert_eq!(refused(put()), Some(EtcdError::NoSpace));
        assert_eq!(
            refused(Request::LeaseGrant(LeaseGrantRequest::default())),
            Some(EtcdError::NoSpace)
        );
        let with_put = txn(
            vec![],
            vec![op(OpRequest::RequestPut(PutRequest::default()))],
        );
        assert_eq!(refused(Request::Txn(with_put)), Some(EtcdError::NoSpace));
        let nested = txn(
            vec![op(OpRequest::RequestTxn(txn(
                vec![op(OpRequest::RequestPut(PutRequest::default()))],
                vec![],
            )))],
            vec![],
        );
        assert_eq!(refused(Request::Txn(nested)), Some(EtcdError::NoSpace));

        let delete_only = txn(
            vec![op(OpRequest::RequestDeleteRange(
                DeleteRangeRequest::default(),
            ))],
            vec![],
        );
        assert_eq!(refused(Request::Txn(delete_only)), None);
        assert_eq!(
            refused(Request::DeleteRange(DeleteRangeRequest::default())),
            None
        );
        assert_eq!(
            refused(Request::Compaction(CompactionRequest::default())),
            None
        );
        assert_eq!(
            refused(Request::LeaseRevoke(LeaseRevokeRequest::default())),
            None
        );
        assert_eq!(refused(Request::Publish(MemberAttributes::default())), None);
        assert_eq!(
            refused(Request::Alarm(alarm(
                AlarmAction::Deactivate,
                7,
                AlarmType::Nospace
            ))),
            None
        );
    }

    #[test]
    fn no_alarm_refuses_nothing_and_corrupt_refuses_every_kv_request() {
        assert_eq!(ActiveAlarms::default().refusal(&req(put())), None);
        let corrupt = raised(&[(1, AlarmType::Nospace), (2, AlarmType::Corrupt)]);
        assert_eq!(corrupt.refusal(&req(put())), Some(EtcdError::Corrupt));
        assert_eq!(
            corrupt.refusal(&req(Request::DeleteRange(DeleteRangeRequest::default()))),
            Some(EtcdError::Corrupt)
        );
        assert_eq!(
            corrupt.refusal(&req(Request::Alarm(alarm(
                AlarmAction::Deactivate,
                2,
                AlarmType::Corrupt
            )))),
            None
        );
    }

    #[test]
    fn activate_and_deactivate_follow_etcds_alarm_store() {
        let mut alarms = ActiveAlarms::default();
        let (resp, change) = alarms.apply(&alarm(AlarmAction::Activate, 9, AlarmType::Nospace));
        assert_eq!(resp.alarms.len(), 1);
        assert_eq!(
            change,
            Some(AlarmChange::Raised(9, AlarmType::Nospace as i32))
        );
        // Raising it again answers it, changes nothing.
        let (resp, change) = alarms.apply(&alarm(AlarmAction::Activate, 9, AlarmType::Nospace));
        assert_eq!(resp.alarms.len(), 1);
        assert_eq!(change, None);
        // "No alarm" is never raised.
        let (resp, change) = alarms.apply(&alarm(AlarmAction::Activate, 9, AlarmType::None));
        assert!(resp.alarms.is_empty() && change.is_none());
        alarms.apply(&alarm(AlarmAction::Activate, 3, AlarmType::Corrupt));
        assert_eq!(alarms.list(AlarmType::None as i32).len(), 2);
        assert_eq!(
            alarms.list(AlarmType::Corrupt as i32),
            vec![AlarmMember {
                member_id: 3,
                alarm: AlarmType::Corrupt as i32
            }]
        );
        assert_eq!(
            alarms.status_errors(),
            vec!["memberID:3 alarm:CORRUPT", "memberID:9 alarm:NOSPACE"]
        );
        // Clearing another member's alarm leaves this one.
        let (resp, change) = alarms.apply(&alarm(AlarmAction::Deactivate, 4, AlarmType::Nospace));
        assert!(resp.alarms.is_empty() && change.is_none());
        let (resp, change) = alarms.apply(&alarm(AlarmAction::Deactivate, 9, AlarmType::Nospace));
        assert_eq!(resp.alarms.len(), 1);
        assert_eq!(
            change,
            Some(AlarmChange::Cleared(9, AlarmType::Nospace as i32))
        );
        assert_eq!(alarms.list(AlarmType::Nospace as i32), vec![]);
    }

    #[test]
    fn quota_counts_what_etcd_counts() {
        let quota = Some(1000);
        let cost = quota_cost_bytes(&req(put()));
        assert_eq!(cost, KV_OVERHEAD_BYTES + 6);
        assert!(!quota_exceeded(1000 - cost - 1, cost, quota));
        assert!(quota_exceeded(1000 - cost, cost, quota));
        // Requests that store nothing new always pass, even over quota.
        let del = quota_cost_bytes(&req(Request::DeleteRange(DeleteRangeRequest::default())));
        assert_eq!(del, 0);
        assert!(!quota_exceeded(5000, del, quota));
        // No quota, no limit.
        assert!(!quota_exceeded(u64::MAX, cost, None));
        // A txn costs its costlier branch.
        let big = PutRequest {
            value: vec![0; 100],
            ..Default::default()
        };
        let t = txn(
            vec![op(OpRequest::RequestPut(PutRequest::default()))],
            vec![op(OpRequest::RequestPut(big.clone()))],
        );
        assert_eq!(
            quota_cost_bytes(&req(Request::Txn(t))),
            KV_OVERHEAD_BYTES + prost::Message::encoded_len(&big) as u64
        );
        assert_eq!(
            quota_cost_bytes(&req(Request::LeaseGrant(LeaseGrantRequest::default()))),
            LEASE_OVERHEAD_BYTES
        );
    }
}
