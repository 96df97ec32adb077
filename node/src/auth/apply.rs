//! Auth at apply time, deterministic on every member:
//! - replicated auth requests change the state (the caller must be root
//!   when auth is on, etcd's `needAdminPermission`);
//! - writes are checked again against the state of that moment, with the
//!   user and auth revision the serving member stamped on them, so a
//!   permission revoked between check and apply wins.

use std::sync::Arc;

use super::AuthEffects;
use super::check::{self, AuthInfo, Need};
use super::state::AuthState;
use crate::error::EtcdError;
use crate::proto::witanpb::InternalRequest;
use crate::proto::witanpb::internal_request::Request;

/// The caller a replicated request names, if any.
pub fn info_of(req: &InternalRequest) -> Option<AuthInfo> {
    (!req.username.is_empty()).then(|| AuthInfo {
        username: req.username.clone(),
        revision: req.auth_revision,
    })
}

/// Stamps the caller onto a request before it is proposed.
pub fn stamp(request: Request, info: Option<&AuthInfo>) -> InternalRequest {
    InternalRequest {
        request: Some(request),
        username: info.map(|i| i.username.clone()).unwrap_or_default(),
        auth_revision: info.map_or(0, |i| i.revision),
        internal: false,
    }
}

/// Whether a request changes the auth state (or authenticates).
pub fn is_auth_request(req: &InternalRequest) -> bool {
    matches!(
        req.request,
        Some(
            Request::AuthEnable(_)
                | Request::AuthDisable(_)
                | Request::Authenticate(_)
                | Request::AuthUserAdd(_)
                | Request::AuthUserDelete(_)
                | Request::AuthUserChangePassword(_)
                | Request::AuthUserGrantRole(_)
                | Request::AuthUserRevokeRole(_)
                | Request::AuthRoleAdd(_)
                | Request::AuthRoleDelete(_)
                | Request::AuthRoleGrantPermission(_)
                | Request::AuthRoleRevokePermission(_)
        )
    )
}

/// Applies an auth request to `state` (copied on first change) and notes
/// token effects; returns the auth revision after it.
pub fn apply_auth_request(
    state: &mut Arc<AuthState>,
    effects: &mut AuthEffects,
    req: &InternalRequest,
) -> Result<u64, EtcdError> {
    let info = info_of(req);
    if let Some(Request::Authenticate(auth)) = &req.request {
        // The password was checked by the member that took the request.
        if !state.enabled {
            return Err(EtcdError::AuthNotEnabled);
        }
        if !state.users.contains_key(&auth.name) {
            return Err(EtcdError::AuthFailed);
        }
        if !auth.simple_token.is_empty() {
            effects
                .tokens
                .push((auth.simple_token.clone(), auth.name.clone()));
        }
        return Ok(state.revision);
    }
    state.check_admin(info.as_ref())?;
    // Work on a copy: a refused request must leave the state untouched.
    let mut next = AuthState::clone(state);
    match &req.request {
        Some(Request::AuthEnable(_)) => next.enable()?,
        Some(Request::AuthDisable(_)) => {
            if next.enabled {
                effects.cleared = true;
            }
            next.disable();
        }
        Some(Request::AuthUserAdd(r)) => next.user_add(r)?,
        Some(Request::AuthUserDelete(r)) => {
            next.user_delete(&r.name)?;
            effects.invalidated.push(r.name.clone());
        }
        Some(Request::AuthUserChangePassword(r)) => {
            next.user_change_password(&r.name, &r.hashed_password)?;
            effects.invalidated.push(r.name.clone());
        }
        Some(Request::AuthUserGrantRole(r)) => next.user_grant_role(&r.user, &r.role)?,
        Some(Request::AuthUserRevokeRole(r)) => next.user_revoke_role(&r.name, &r.role)?,
        Some(Request::AuthRoleAdd(r)) => next.role_add(&r.name)?,
        Some(Request::AuthRoleDelete(r)) => next.role_delete(&r.role)?,
        Some(Request::AuthRoleGrantPermission(r)) => next.role_grant_permission(r)?,
        Some(Request::AuthRoleRevokePermission(r)) => next.role_revoke_permission(r)?,
        _ => return Err(EtcdError::Internal("not an auth request".into())),
    }
    let revision = next.revision;
    if next != **state {
        *state = Arc::new(next);
    }
    Ok(revision)
}

/// What a replicated KV write needs. `lease_keys` lists the keys attached
/// to a lease (LeaseRevoke, and a Put onto a lease, need write on all of
/// them, as etcd's `checkLeasePuts`).
pub fn write_needs(
    req: &InternalRequest,
    lease_keys: impl Fn(i64) -> Vec<Vec<u8>>,
) -> Option<Vec<Need>> {
    match &req.request {
        Some(Request::Put(put)) => {
            let mut needs = check::put_needs(put);
            if put.lease != 0 {
                needs.extend(check::lease_keys_needs(lease_keys(put.lease)));
            }
            Some(needs)
        }
        Some(Request::DeleteRange(del)) => Some(check::delete_range_needs(del)),
        Some(Request::Txn(txn)) => Some(check::txn_needs(txn)),
        Some(Request::LeaseRevoke(revoke)) => Some(check::lease_keys_needs(lease_keys(revoke.id))),
        _ => None,
    }
}

/// The apply-time check of a write: `Ok` for requests that need none
/// (and for the members' own requests).
pub fn check_write(
    state: &AuthState,
    req: &InternalRequest,
    lease_keys: impl Fn(i64) -> Vec<Vec<u8>>,
) -> Result<(), EtcdError> {
    if !state.enabled || req.internal {
        return Ok(());
    }
    match write_needs(req, lease_keys) {
        Some(needs) => state.check(info_of(req).as_ref(), &needs),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::authpb::Permission;
    use crate::proto::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest,
        AuthRoleRevokePermissionRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
        LeaseRevokeRequest, PutRequest,
    };
    use crate::proto::witanpb::InternalAuthenticateRequest;

    fn run(
        state: &mut Arc<AuthState>,
        as_user: Option<&AuthInfo>,
        r: Request,
    ) -> Result<u64, EtcdError> {
        apply_auth_request(state, &mut AuthEffects::default(), &stamp(r, as_user))
    }

    /// root (root role) and alice (writes `a/`), auth on.
    fn setup() -> Arc<AuthState> {
        let mut s = Arc::new(AuthState::default());
        for name in ["root", "alice"] {
            run(
                &mut s,
                None,
                Request::AuthUserAdd(AuthUserAddRequest {
                    name: name.into(),
                    hashed_password: "h".into(),
                    ..Default::default()
                }),
            )
            .unwrap();
        }
        run(
            &mut s,
            None,
            Request::AuthRoleAdd(AuthRoleAddRequest { name: "w".into() }),
        )
        .unwrap();
        run(
            &mut s,
            None,
            Request::AuthRoleGrantPermission(AuthRoleGrantPermissionRequest {
                name: "w".into(),
                perm: Some(Permission {
                    perm_type: 1,
                    key: b"a/".to_vec(),
                    range_end: b"a0".to_vec(),
                }),
            }),
        )
        .unwrap();
        for (user, role) in [("root", "root"), ("alice", "w")] {
            run(
                &mut s,
                None,
                Request::AuthUserGrantRole(AuthUserGrantRoleRequest {
                    user: user.into(),
                    role: role.into(),
                }),
            )
            .unwrap();
        }
        run(&mut s, None, Request::AuthEnable(AuthEnableRequest {})).unwrap();
        s
    }

    fn who(s: &AuthState, name: &str) -> AuthInfo {
        AuthInfo {
            username: name.into(),
            revision: s.revision,
        }
    }

    #[test]
    fn management_needs_root_once_enabled() {
        let mut s = setup();
        let alice = who(&s, "alice");
        let before = s.clone();
        assert_eq!(
            run(
                &mut s,
                Some(&alice),
                Request::AuthRoleAdd(AuthRoleAddRequest { name: "x".into() })
            ),
            Err(EtcdError::PermissionDenied)
        );
        assert!(Arc::ptr_eq(&s, &before), "a refusal changes nothing");
        assert_eq!(
            run(
                &mut s,
                None,
                Request::AuthRoleAdd(AuthRoleAddRequest { name: "x".into() })
            ),
            Err(EtcdError::UserEmpty)
        );
        let root = who(&s, "root");
        let rev = run(
            &mut s,
            Some(&root),
            Request::AuthRoleAdd(AuthRoleAddRequest { name: "x".into() }),
        )
        .unwrap();
        assert_eq!(rev, before.revision + 1);
    }

    #[test]
    fn authenticate_registers_simple_tokens() {
        let s = setup();
        let mut effects = AuthEffects::default();
        let mut state = s.clone();
        let req = stamp(
            Request::Authenticate(InternalAuthenticateRequest {
                name: "alice".into(),
                simple_token: "tok.1".into(),
            }),
            None,
        );
        apply_auth_request(&mut state, &mut effects, &req).unwrap();
        assert_eq!(effects.tokens, vec![("tok.1".into(), "alice".into())]);
        let ghost = stamp(
            Request::Authenticate(InternalAuthenticateRequest {
                name: "ghost".into(),
                simple_token: "tok.2".into(),
            }),
            None,
        );
        assert_eq!(
            apply_auth_request(&mut state, &mut effects, &ghost),
            Err(EtcdError::AuthFailed)
        );
    }

    #[test]
    fn a_permission_revoked_before_apply_wins() {
        let mut s = setup();
        let alice = who(&s, "alice");
        let put = stamp(
            Request::Put(PutRequest {
                key: b"a/k".to_vec(),
                ..Default::default()
            }),
            Some(&alice),
        );
        assert_eq!(check_write(&s, &put, |_| vec![]), Ok(()));
        let root = who(&s, "root");
        run(
            &mut s,
            Some(&root),
            Request::AuthRoleRevokePermission(AuthRoleRevokePermissionRequest {
                role: "w".into(),
                key: b"a/".to_vec(),
                range_end: b"a0".to_vec(),
            }),
        )
        .unwrap();
        // Checked at the old revision: etcd says so.
        assert_eq!(
            check_write(&s, &put, |_| vec![]),
            Err(EtcdError::AuthOldRevision)
        );
        let again = stamp(put.request.clone().unwrap(), Some(&who(&s, "alice")));
        assert_eq!(
            check_write(&s, &again, |_| vec![]),
            Err(EtcdError::PermissionDenied)
        );
    }

    #[test]
    fn lease_revoke_needs_write_on_attached_keys_unless_internal() {
        let s = setup();
        let alice = who(&s, "alice");
        let mut revoke = stamp(
            Request::LeaseRevoke(LeaseRevokeRequest { id: 5 }),
            Some(&alice),
        );
        assert_eq!(check_write(&s, &revoke, |_| vec![b"a/x".to_vec()]), Ok(()));
        assert_eq!(
            check_write(&s, &revoke, |_| vec![b"a/x".to_vec(), b"b".to_vec()]),
            Err(EtcdError::PermissionDenied)
        );
        revoke.internal = true;
        revoke.username.clear();
        assert_eq!(check_write(&s, &revoke, |_| vec![b"b".to_vec()]), Ok(()));
    }
}
