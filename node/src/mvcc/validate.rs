//! Checks a member makes before proposing a request, with etcd's errors
//! (`server/etcdserver/api/v3rpc/key.go`). Pure functions of the request.

use std::collections::BTreeMap;
use std::ops::Bound;

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
    check_ops(req, max_txn_ops)?;
    // One pass over the whole tree: nested branches are checked inside
    // it, so the nested txns need no pass of their own.
    for branch in [&req.success, &req.failure] {
        collect_writes(branch, &mut Written::default())?;
    }
    Ok(())
}

/// The op count and each op's own checks, at every level.
fn check_ops(req: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
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
                Some(OpRequest::RequestTxn(t)) => check_ops(t, max_txn_ops)?,
                None => {}
            }
        }
    }
    Ok(())
}

/// Adds the key ranges a branch writes (nested txns included) to
/// `written`, failing on the first overlap. Each op is visited once: the
/// nesting depth is bounded only by the request size, so anything more
/// than linear in it (as visiting a nested branch once per enclosing check
/// was: 2^depth) lets one request pin a server thread.
fn collect_writes(
    ops: &[crate::proto::etcdserverpb::RequestOp],
    written: &mut Written,
) -> Result<(), EtcdError> {
    for op in ops {
        let range = match &op.request {
            Some(OpRequest::RequestPut(p)) => KeyRange::new(&p.key, &[]),
            Some(OpRequest::RequestDeleteRange(d)) => KeyRange::new(&d.key, &d.range_end),
            Some(OpRequest::RequestTxn(t)) => {
                // Only one branch of a nested txn runs, so each is checked
                // against the outer writes on its own, not against the
                // other; what follows must avoid both.
                let mut branches = Vec::with_capacity(2);
                for branch in [&t.success, &t.failure] {
                    let mut own = Written::default();
                    collect_writes(branch, &mut own)?;
                    if own.intervals().any(|iv| written.overlaps(&iv)) {
                        return Err(EtcdError::DuplicateKey);
                    }
                    branches.push(own);
                }
                for own in branches {
                    for iv in own.intervals() {
                        written.insert(iv);
                    }
                }
                continue;
            }
            _ => continue,
        };
        let Some(iv) = Interval::of(&range) else {
            continue;
        };
        if written.overlaps(&iv) {
            return Err(EtcdError::DuplicateKey);
        }
        written.insert(iv);
    }
    Ok(())
}

/// A key range as the half-open interval `[lo, hi)` (`hi` `None`: no upper
/// bound). A single key `k` is `[k, k + "\0")`, the keys from `k` up to its
/// immediate successor.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    lo: Vec<u8>,
    hi: Option<Vec<u8>>,
}

impl Interval {
    fn of(range: &KeyRange) -> Option<Interval> {
        match range {
            KeyRange::Single(k) => {
                let mut hi = k.clone();
                hi.push(0);
                Some(Interval {
                    lo: k.clone(),
                    hi: Some(hi),
                })
            }
            KeyRange::From(lo) => Some(Interval {
                lo: lo.clone(),
                hi: None,
            }),
            KeyRange::Between(lo, hi) => Some(Interval {
                lo: lo.clone(),
                hi: Some(hi.clone()),
            }),
            KeyRange::Empty => None,
        }
    }
}

/// Written key ranges, merged into disjoint intervals keyed by their lower
/// bound, so an overlap check and an insert cost O(log n) plus the
/// intervals merged away. Disjoint intervals sorted by lower bound are
/// sorted by upper bound too, so the last one starting below `hi` is the
/// only one that can reach past `lo`.
#[derive(Debug, Default)]
struct Written {
    by_lo: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Written {
    /// The last interval starting below `iv`'s upper bound.
    fn last_below(&self, iv: &Interval) -> Option<(&Vec<u8>, &Option<Vec<u8>>)> {
        match &iv.hi {
            Some(hi) => self
                .by_lo
                .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(hi.as_slice())))
                .next_back(),
            None => self.by_lo.iter().next_back(),
        }
    }

    fn overlaps(&self, iv: &Interval) -> bool {
        self.last_below(iv).is_some_and(|(_, hi)| {
            hi.as_ref()
                .is_none_or(|hi| hi.as_slice() > iv.lo.as_slice())
        })
    }

    fn insert(&mut self, mut iv: Interval) {
        // Absorb every interval that overlaps or touches it.
        loop {
            let absorbed = match &iv.hi {
                Some(hi) => self
                    .by_lo
                    .range::<[u8], _>((Bound::Unbounded, Bound::Included(hi.as_slice())))
                    .next_back(),
                None => self.by_lo.iter().next_back(),
            }
            .filter(|(_, hi)| {
                hi.as_ref()
                    .is_none_or(|hi| hi.as_slice() >= iv.lo.as_slice())
            })
            .map(|(lo, _)| lo.clone());
            let Some(lo) = absorbed else {
                break;
            };
            let hi = self.by_lo.remove(&lo).flatten();
            if lo < iv.lo {
                iv.lo = lo;
            }
            iv.hi = match (iv.hi, hi) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        self.by_lo.insert(iv.lo, iv.hi);
    }

    fn intervals(&self) -> impl Iterator<Item = Interval> + '_ {
        self.by_lo.iter().map(|(lo, hi)| Interval {
            lo: lo.clone(),
            hi: hi.clone(),
        })
    }
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

    fn nested(txn: TxnRequest) -> RequestOp {
        RequestOp {
            request: Some(OpRequest::RequestTxn(txn)),
        }
    }

    #[test]
    fn branches_of_a_nested_txn_may_share_keys_but_not_with_their_surroundings() {
        let either = TxnRequest {
            success: vec![put("k")],
            failure: vec![put("k"), del("x", "z")],
            ..Default::default()
        };
        let ok = TxnRequest {
            success: vec![put("a"), nested(either.clone()), put("j"), put("l")],
            ..Default::default()
        };
        assert_eq!(check_txn(&ok, 128), Ok(()));
        // A later write inside the failure branch's delete range.
        let after = TxnRequest {
            success: vec![nested(either.clone()), put("y")],
            ..Default::default()
        };
        assert_eq!(check_txn(&after, 128), Err(EtcdError::DuplicateKey));
        // An earlier delete covering the key both branches put.
        let before = TxnRequest {
            success: vec![del("a", "l"), nested(either)],
            ..Default::default()
        };
        assert_eq!(check_txn(&before, 128), Err(EtcdError::DuplicateKey));
        // A range ending exactly where the next begins does not overlap.
        let adjacent = TxnRequest {
            success: vec![del("a", "c"), del("c", "e"), put("e"), put("b\0")],
            ..Default::default()
        };
        assert_eq!(check_txn(&adjacent, 128), Err(EtcdError::DuplicateKey));
        let adjacent = TxnRequest {
            success: vec![del("a", "c"), del("c", "e"), put("e"), put("f")],
            ..Default::default()
        };
        assert_eq!(check_txn(&adjacent, 128), Ok(()));
        // From-key ranges reach every later key.
        let from = TxnRequest {
            success: vec![del("m", "\0"), put("zzz")],
            ..Default::default()
        };
        assert_eq!(check_txn(&from, 128), Err(EtcdError::DuplicateKey));
    }

    /// Fuzzing finding: the duplicate-key check visited a nested txn's
    /// branch once per enclosing level and again per branch, 2^depth
    /// visits, so one small request nested 40 deep pinned a server thread
    /// for good. Now a 200-deep one is checked at once.
    #[test]
    fn deep_nesting_is_checked_in_linear_time() {
        let mut txn = TxnRequest {
            success: vec![put("deep")],
            ..Default::default()
        };
        for _ in 0..200 {
            txn = TxnRequest {
                success: vec![nested(txn)],
                ..Default::default()
            };
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(check_txn(&txn, 128));
        });
        let verdict = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(
            verdict,
            Ok(Ok(())),
            "a 200-deep txn was not checked in 10 s"
        );
    }

    #[test]
    fn many_writes_are_checked_quickly() {
        // 128 nested txns of 128 distinct puts each: 16,384 writes.
        let inner = |i: usize| TxnRequest {
            success: (0..128).map(|j| put(&format!("k{i:03}/{j:03}"))).collect(),
            ..Default::default()
        };
        let txn = TxnRequest {
            success: (0..128).map(|i| nested(inner(i))).collect(),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        assert_eq!(check_txn(&txn, 128), Ok(()));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
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
