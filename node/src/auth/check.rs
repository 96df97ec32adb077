//! What each request needs, and whether a caller has it: etcd's
//! `isOpPermitted`, `IsAdminPermitted` and `checkTxnAuth`, as pure
//! functions of the auth state.

use super::state::AuthState;
use crate::error::EtcdError;
use crate::proto::etcdserverpb::request_op::Request as OpRequest;
use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};

/// Who is asking: a user name and the auth revision their token (or
/// certificate) was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    pub revision: u64,
}

/// One permission a request needs on `[key, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    Read(Vec<u8>, Vec<u8>),
    Write(Vec<u8>, Vec<u8>),
}

pub fn range_needs(req: &RangeRequest) -> Vec<Need> {
    vec![Need::Read(req.key.clone(), req.range_end.clone())]
}

pub fn put_needs(req: &PutRequest) -> Vec<Need> {
    let mut needs = vec![Need::Write(req.key.clone(), Vec::new())];
    if req.prev_kv {
        needs.push(Need::Read(req.key.clone(), Vec::new()));
    }
    needs
}

pub fn delete_range_needs(req: &DeleteRangeRequest) -> Vec<Need> {
    let mut needs = vec![Need::Write(req.key.clone(), req.range_end.clone())];
    if req.prev_kv {
        needs.push(Need::Read(req.key.clone(), req.range_end.clone()));
    }
    needs
}

/// Read on every compare and read op, write on every write op, in both
/// branches whatever the compares decide, nested txns included.
pub fn txn_needs(req: &TxnRequest) -> Vec<Need> {
    let mut needs = Vec::new();
    collect_txn_needs(req, &mut needs);
    needs
}

fn collect_txn_needs(req: &TxnRequest, needs: &mut Vec<Need>) {
    for cmp in &req.compare {
        needs.push(Need::Read(cmp.key.clone(), cmp.range_end.clone()));
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(OpRequest::RequestRange(r)) => needs.extend(range_needs(r)),
            Some(OpRequest::RequestPut(p)) => needs.extend(put_needs(p)),
            Some(OpRequest::RequestDeleteRange(d)) => needs.extend(delete_range_needs(d)),
            Some(OpRequest::RequestTxn(t)) => collect_txn_needs(t, needs),
            None => {}
        }
    }
}

/// Write on every key attached to a lease (LeaseRevoke, and a Put that
/// attaches a key to it, as etcd's `checkLeasePuts`).
pub fn lease_keys_needs(keys: Vec<Vec<u8>>) -> Vec<Need> {
    keys.into_iter()
        .map(|k| Need::Write(k, Vec::new()))
        .collect()
}

/// Read on every key attached to a lease (LeaseTimeToLive).
pub fn lease_keys_read_needs(keys: Vec<Vec<u8>>) -> Vec<Need> {
    keys.into_iter()
        .map(|k| Need::Read(k, Vec::new()))
        .collect()
}

impl AuthState {
    /// etcd's `isOpPermitted` over every need.
    pub fn check(&self, info: Option<&AuthInfo>, needs: &[Need]) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        let info = match info {
            Some(info) if !info.username.is_empty() && info.revision != 0 => info,
            _ => return Err(EtcdError::UserEmpty),
        };
        if info.revision < self.revision {
            return Err(EtcdError::AuthOldRevision);
        }
        let perms = self
            .perms(&info.username)
            .ok_or(EtcdError::PermissionDenied)?;
        if perms.root {
            return Ok(());
        }
        for need in needs {
            let allowed = match need {
                Need::Read(key, end) => perms.read.covers(key, end),
                Need::Write(key, end) => perms.write.covers(key, end),
            };
            if !allowed {
                return Err(EtcdError::PermissionDenied);
            }
        }
        Ok(())
    }

    /// etcd's `IsAdminPermitted`: the caller must hold the root role.
    pub fn check_admin(&self, info: Option<&AuthInfo>) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        let info = match info {
            Some(info) if !info.username.is_empty() => info,
            _ => return Err(EtcdError::UserEmpty),
        };
        let perms = self.perms(&info.username).ok_or(EtcdError::UserNotFound)?;
        if perms.root {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::authpb::Permission;
    use crate::proto::etcdserverpb::{
        AuthRoleGrantPermissionRequest, AuthUserAddRequest, Compare, RequestOp,
    };

    /// Auth on; user `alice` reads `r/...`, writes `w/...`, does both on
    /// `rw`; `root` holds the root role.
    fn state() -> AuthState {
        let mut s = AuthState::default();
        for name in ["root", "alice"] {
            s.user_add(&AuthUserAddRequest {
                name: name.into(),
                hashed_password: "h".into(),
                ..Default::default()
            })
            .unwrap();
        }
        s.role_add("root").unwrap();
        s.user_grant_role("root", "root").unwrap();
        s.role_add("app").unwrap();
        for (perm_type, key, end) in [(0, "r/", "r0"), (1, "w/", "w0"), (2, "rw", "")] {
            s.role_grant_permission(&AuthRoleGrantPermissionRequest {
                name: "app".into(),
                perm: Some(Permission {
                    perm_type,
                    key: key.into(),
                    range_end: end.into(),
                }),
            })
            .unwrap();
        }
        s.user_grant_role("alice", "app").unwrap();
        s.enable().unwrap();
        s
    }

    fn as_user(s: &AuthState, name: &str) -> AuthInfo {
        AuthInfo {
            username: name.into(),
            revision: s.revision,
        }
    }

    fn put(key: &str) -> PutRequest {
        PutRequest {
            key: key.into(),
            ..Default::default()
        }
    }

    fn range(key: &str, end: &str) -> RangeRequest {
        RangeRequest {
            key: key.into(),
            range_end: end.into(),
            ..Default::default()
        }
    }

    #[test]
    fn reads_writes_and_readwrites() {
        let s = state();
        let a = as_user(&s, "alice");
        let ok = |needs: Vec<Need>| s.check(Some(&a), &needs);
        assert_eq!(ok(range_needs(&range("r/x", ""))), Ok(()));
        assert_eq!(ok(range_needs(&range("r/", "r0"))), Ok(()));
        assert_eq!(
            ok(range_needs(&range("w/x", ""))),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(ok(put_needs(&put("w/x"))), Ok(()));
        assert_eq!(ok(put_needs(&put("r/x"))), Err(EtcdError::PermissionDenied));
        assert_eq!(ok(put_needs(&put("rw"))), Ok(()));
        assert_eq!(ok(range_needs(&range("rw", ""))), Ok(()));
        assert_eq!(ok(put_needs(&put("zz"))), Err(EtcdError::PermissionDenied));
    }

    #[test]
    fn prev_kv_needs_read_too() {
        let s = state();
        let a = as_user(&s, "alice");
        let mut p = put("w/x");
        p.prev_kv = true;
        assert_eq!(
            s.check(Some(&a), &put_needs(&p)),
            Err(EtcdError::PermissionDenied)
        );
        let del = DeleteRangeRequest {
            key: b"w/".to_vec(),
            range_end: b"w0".to_vec(),
            prev_kv: false,
        };
        assert_eq!(s.check(Some(&a), &delete_range_needs(&del)), Ok(()));
        let partly_outside = DeleteRangeRequest {
            range_end: b"x".to_vec(),
            ..del
        };
        assert_eq!(
            s.check(Some(&a), &delete_range_needs(&partly_outside)),
            Err(EtcdError::PermissionDenied)
        );
    }

    #[test]
    fn txn_checks_compares_both_branches_and_nested_txns() {
        let s = state();
        let a = as_user(&s, "alice");
        let op_put = |k: &str| RequestOp {
            request: Some(OpRequest::RequestPut(put(k))),
        };
        let txn = TxnRequest {
            compare: vec![Compare {
                key: b"r/x".to_vec(),
                ..Default::default()
            }],
            success: vec![op_put("w/a")],
            failure: vec![RequestOp {
                request: Some(OpRequest::RequestRange(range("r/a", ""))),
            }],
        };
        assert_eq!(s.check(Some(&a), &txn_needs(&txn)), Ok(()));
        let mut outside_compare = txn.clone();
        outside_compare.compare[0].key = b"secret".to_vec();
        assert_eq!(
            s.check(Some(&a), &txn_needs(&outside_compare)),
            Err(EtcdError::PermissionDenied)
        );
        let mut bad_failure = txn.clone();
        bad_failure.failure.push(op_put("r/a"));
        assert_eq!(
            s.check(Some(&a), &txn_needs(&bad_failure)),
            Err(EtcdError::PermissionDenied)
        );
        let mut nested = txn.clone();
        nested.success.push(RequestOp {
            request: Some(OpRequest::RequestTxn(TxnRequest {
                success: vec![op_put("secret")],
                ..Default::default()
            })),
        });
        assert_eq!(
            s.check(Some(&a), &txn_needs(&nested)),
            Err(EtcdError::PermissionDenied)
        );
    }

    #[test]
    fn callers_without_user_or_with_old_revision() {
        let s = state();
        let needs = range_needs(&range("r/x", ""));
        assert_eq!(s.check(None, &needs), Err(EtcdError::UserEmpty));
        let old = AuthInfo {
            username: "alice".into(),
            revision: s.revision - 1,
        };
        assert_eq!(s.check(Some(&old), &needs), Err(EtcdError::AuthOldRevision));
        let ghost = as_user(&s, "ghost");
        assert_eq!(
            s.check(Some(&ghost), &needs),
            Err(EtcdError::PermissionDenied)
        );
        let root = as_user(&s, "root");
        assert_eq!(s.check(Some(&root), &put_needs(&put("anything"))), Ok(()));
    }

    #[test]
    fn admin_is_the_root_role() {
        let s = state();
        assert_eq!(s.check_admin(Some(&as_user(&s, "root"))), Ok(()));
        assert_eq!(
            s.check_admin(Some(&as_user(&s, "alice"))),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(
            s.check_admin(Some(&as_user(&s, "ghost"))),
            Err(EtcdError::UserNotFound)
        );
        assert_eq!(s.check_admin(None), Err(EtcdError::UserEmpty));
    }

    #[test]
    fn disabled_auth_lets_everything_through() {
        let mut s = state();
        s.disable();
        assert_eq!(s.check(None, &put_needs(&put("x"))), Ok(()));
        assert_eq!(s.check_admin(None), Ok(()));
    }

    #[test]
    fn lease_keys_need_write_each() {
        let s = state();
        let a = as_user(&s, "alice");
        let keys = vec![b"w/a".to_vec(), b"w/b".to_vec()];
        assert_eq!(s.check(Some(&a), &lease_keys_needs(keys)), Ok(()));
        let keys = vec![b"w/a".to_vec(), b"r/b".to_vec()];
        assert_eq!(
            s.check(Some(&a), &lease_keys_needs(keys.clone())),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(
            s.check(Some(&a), &lease_keys_read_needs(vec![b"r/b".to_vec()])),
            Ok(())
        );
    }
}
