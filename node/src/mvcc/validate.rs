//! Checks a member makes before proposing a request, with etcd's errors
//! (`server/etcdserver/api/v3rpc/key.go`). Pure functions of the request.

use super::range::KeyRange;
use crate::error::EtcdError;
use crate::proto::etcdserverpb::request_op::Request as OpRequest;
use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};

/// etcd's `MaxLeaseTTL`: 9,000,000,000 seconds.
pub const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

pub fn check_range(req: &RangeRequest) -> Result<(), EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

pub fn check_put(req: &PutRequest) -> Result<(), EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete_range(req: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Op count (the largest of compares, success and failure, at every level),
/// each op's own checks, and no key written twice on one branch.
pub fn check_txn(req: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > max_txn_ops {
        return Err(EtcdError::TooManyOps);
    }
    for cmp in &req.compare {
        if cmp.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
    }
    for branch in [&req.success, &req.failure] {
        for op in branch.iter() {
            match &op.request {
                Some(OpRequest::RequestRange(r)) => check_range(r)?,
                Some(OpRequest::RequestPut(p)) => check_put(p)?,
                Some(OpRequest::RequestDeleteRange(d)) => check_delete_range(d)?,
                Some(OpRequest::RequestTxn(t)) => check_txn(t, max_txn_ops)?,
                None => {}
            }
        }
        let mut written = Vec::new();
        collect_writes(branch, &mut written)?;
    }
    Ok(())
}

/// Gathers the key ranges a branch writes (nested txns included, each of
/// their branches on its own), failing on the first overlap.
fn collect_writes(
    ops: &[crate::proto::etcdserverpb::RequestOp],
    written: &mut Vec<KeyRange>,
) -> Result<(), EtcdError> {
    for op in ops {
        let range = match &op.request {
            Some(OpRequest::RequestPut(p)) => KeyRange::new(&p.key, &[]),
            Some(OpRequest::RequestDeleteRange(d)) => KeyRange::new(&d.key, &d.range_end),
            Some(OpRequest::RequestTxn(t)) => {
                // Only one branch of a nested txn runs, so each is checked
                // against the outer writes separately.
                for branch in [&t.success, &t.failure] {
                    let mut with_branch = written.clone();
                    collect_writes(branch, &mut with_branch)?;
                }
                let mut both = written.clone();
                let mut success_writes = Vec::new();
                collect_writes(&t.success, &mut success_writes)?;
                let mut failure_writes = Vec::new();
                collect_writes(&t.failure, &mut failure_writes)?;
                both.extend(success_writes);
                both.extend(failure_writes);
                *written = both;
                continue;
            }
            _ => continue,
        };
        if written.iter().any(|w| w.overlaps(&range)) {
            return Err(EtcdError::DuplicateKey);
        }
        written.push(range);
    }
    Ok(())
}

/// TTL bounds: too large is refused, too small is raised to the minimum.
pub fn lease_ttl(requested_secs: i64, min_ttl_secs: i64) -> Result<i64, EtcdError> {
    if requested_secs > MAX_LEASE_TTL_SECS {
        return Err(EtcdError::LeaseTtlTooLarge);
    }
    Ok(requested_secs.max(min_ttl_secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::RequestOp;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(OpRequest::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })),
        }
    }

    fn del(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(OpRequest::RequestDeleteRange(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                range_end: end.as_bytes().to_vec(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn put_rules() {
        let empty = PutRequest::default();
        assert_eq!(check_put(&empty), Err(EtcdError::EmptyKey));
        let value_with_ignore = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put(&value_with_ignore), Err(EtcdError::ValueProvided));
        let lease_with_ignore = PutRequest {
            key: b"k".to_vec(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(check_put(&lease_with_ignore), Err(EtcdError::LeaseProvided));
    }

    #[test]
    fn txn_duplicate_keys_are_refused() {
        let txn = TxnRequest {
            success: vec![put("a"), put("a")],
            ..Default::default()
        };
        assert_eq!(check_txn(&txn, 128), Err(EtcdError::DuplicateKey));
        let overlapping_delete = TxnRequest {
            success: vec![put("b"), del("a", "c")],
            ..Default::default()
        };
        assert_eq!(
            check_txn(&overlapping_delete, 128),
            Err(EtcdError::DuplicateKey)
        );
        let distinct = TxnRequest {
            success: vec![put("a"), put("b")],
            failure: vec![put("a")],
            ..Default::default()
        };
        assert_eq!(check_txn(&distinct, 128), Ok(()));
    }

    #[test]
    fn nested_txn_writes_count_against_the_outer_branch() {
        let nested = TxnRequest {
            success: vec![put("a")],
            ..Default::default()
        };
        let outer = TxnRequest {
            success: vec![
                put("a"),
                RequestOp {
                    request: Some(OpRequest::RequestTxn(nested)),
                },
            ],
            ..Default::default()
        };
        assert_eq!(check_txn(&outer, 128), Err(EtcdError::DuplicateKey));
    }

    #[test]
    fn txn_op_limit() {
        let txn = TxnRequest {
            success: (0..3).map(|i| put(&format!("k{i}"))).collect(),
            ..Default::default()
        };
        assert_eq!(check_txn(&txn, 2), Err(EtcdError::TooManyOps));
        assert_eq!(check_txn(&txn, 3), Ok(()));
    }

    #[test]
    fn lease_ttl_bounds() {
        assert_eq!(lease_ttl(1, 2), Ok(2));
        assert_eq!(lease_ttl(60, 2), Ok(60));
        assert_eq!(
            lease_ttl(MAX_LEASE_TTL_SECS + 1, 2),
            Err(EtcdError::LeaseTtlTooLarge)
        );
    }
}
