//! etcdserverpb.Auth. Changes go through Raft (checked for the root role
//! when they apply, as etcd's `needAdminPermission`); passwords are hashed
//! here, before proposing, so the log never holds one in plaintext. Reads
//! (status, get, list) are answered from this member's state after a read
//! barrier, for root; a user may also get itself and the roles it holds,
//! as in etcd. Every answer comes after this member applied the change, so a
//! token or a grant is usable here as soon as the call returns.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::auth::apply::stamp;
use crate::auth::state::AuthState;
use crate::auth::{AuthInfo, verify_password};
use crate::error::EtcdError;
use crate::node::Member;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;
use crate::proto::witanpb::InternalAuthenticateRequest;
use crate::proto::witanpb::internal_request::Request as Internal;
use crate::proto::witanpb::internal_response::Response as Applied;

pub struct AuthService {
    member: Arc<Member>,
}

impl AuthService {
    pub fn new(member: Arc<Member>) -> Self {
        AuthService { member }
    }

    fn header(&self) -> Option<ResponseHeader> {
        self.member.header(self.member.hub.current_revision())
    }

    /// Proposes an auth change as `info` and waits until this member has
    /// applied it.
    async fn change(&self, request: Internal, info: Option<&AuthInfo>) -> Result<(), EtcdError> {
        match self.member.propose(stamp(request, info)).await? {
            Applied::Auth(_) => {}
            _ => return Err(EtcdError::Internal("unexpected response".into())),
        }
        // A forwarded change applied on the leader first; catch up, so the
        // caller's next request here sees it.
        self.member.linearizable_barrier().await
    }

    /// Proposes the change a request asks for, on behalf of its caller.
    async fn change_as<T>(
        &self,
        request: Request<T>,
        into: impl FnOnce(T) -> Internal,
    ) -> Result<(), Status> {
        let info = self.member.auth.info_of(&request)?;
        self.change(into(request.into_inner()), info.as_ref())
            .await
            .map_err(Status::from)
    }

    /// For reads: the caller must hold the root role, or pass `or_else`
    /// (etcd lets users read themselves and their own roles), checked
    /// against an up-to-date state.
    async fn admin_read<T>(
        &self,
        request: &Request<T>,
        or_else: impl FnOnce(&AuthState, &AuthInfo) -> bool,
    ) -> Result<(), EtcdError> {
        let info = self.member.auth.info_of(request)?;
        self.member.linearizable_barrier().await?;
        let state = self.member.auth.state();
        match state.check_admin(info.as_ref()) {
            Err(_) if info.as_ref().is_some_and(|info| or_else(&state, info)) => Ok(()),
            other => other,
        }
    }

    /// Hashes a password off the async threads (bcrypt is slow on purpose).
    async fn hash(&self, password: String) -> Result<String, EtcdError> {
        let member = self.member.clone();
        tokio::task::spawn_blocking(move || member.auth.hash_password(&password))
            .await
            .map_err(|e| EtcdError::Internal(format!("hashing task: {e}")))?
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        self.change_as(request, Internal::AuthEnable).await?;
        Ok(Response::new(AuthEnableResponse {
            header: self.header(),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.change_as(request, Internal::AuthDisable).await?;
        Ok(Response::new(AuthDisableResponse {
            header: self.header(),
        }))
    }

    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.admin_read(&request, |_, _| false).await?;
        let state = self.member.auth.state();
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled: state.enabled,
            auth_revision: state.revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = request.into_inner();
        // The password is checked here, where it arrived; only the user
        // name (and the simple token) travel through Raft.
        self.member.linearizable_barrier().await?;
        let state = self.member.auth.state();
        if !state.enabled {
            return Err(EtcdError::AuthNotEnabled.into());
        }
        let user = state.users.get(&req.name).ok_or(EtcdError::AuthFailed)?;
        let no_password = user.options.is_some_and(|o| o.no_password);
        let hash = user.password.clone();
        let password = req.password;
        let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .map_err(|e| EtcdError::Internal(format!("password check task: {e}")))?;
        if no_password || !matches {
            return Err(EtcdError::AuthFailed.into());
        }
        let simple_token = self.member.auth.new_simple_token();
        self.change(
            Internal::Authenticate(InternalAuthenticateRequest {
                name: req.name.clone(),
                simple_token: simple_token.clone().unwrap_or_default(),
            }),
            None,
        )
        .await?;
        let token = match simple_token {
            Some(token) => token,
            None => self.member.auth.sign_jwt(&req.name).ok_or_else(|| {
                EtcdError::Internal("this member has no jwt private key to sign with".into())
            })?,
        };
        Ok(Response::new(AuthenticateResponse {
            header: self.header(),
            token,
        }))
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let info = self.member.auth.info_of(&request)?;
        let mut req = request.into_inner();
        if !req.options.is_some_and(|o| o.no_password) {
            req.hashed_password = self.hash(std::mem::take(&mut req.password)).await?;
        }
        req.password.clear();
        self.change(Internal::AuthUserAdd(req), info.as_ref())
            .await?;
        Ok(Response::new(AuthUserAddResponse {
            header: self.header(),
        }))
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.admin_read(&request, |_, caller| caller.username == name)
            .await?;
        let state = self.member.auth.state();
        let user = state
            .users
            .get(&request.get_ref().name)
            .ok_or(EtcdError::UserNotFound)?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.admin_read(&request, |_, _| false).await?;
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users: self.member.auth.state().users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        self.change_as(request, Internal::AuthUserDelete).await?;
        Ok(Response::new(AuthUserDeleteResponse {
            header: self.header(),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let info = self.member.auth.info_of(&request)?;
        let mut req = request.into_inner();
        req.hashed_password = self.hash(std::mem::take(&mut req.password)).await?;
        self.change(Internal::AuthUserChangePassword(req), info.as_ref())
            .await?;
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: self.header(),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        self.change_as(request, Internal::AuthUserGrantRole).await?;
        Ok(Response::new(AuthUserGrantRoleResponse {
            header: self.header(),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        self.change_as(request, Internal::AuthUserRevokeRole)
            .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse {
            header: self.header(),
        }))
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        self.change_as(request, Internal::AuthRoleAdd).await?;
        Ok(Response::new(AuthRoleAddResponse {
            header: self.header(),
        }))
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let role = request.get_ref().role.clone();
        self.admin_read(&request, |state, caller| {
            state
                .users
                .get(&caller.username)
                .is_some_and(|u| u.roles.contains(&role))
        })
        .await?;
        let perm = self
            .member
            .auth
            .state()
            .role_permissions(&request.get_ref().role)?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.admin_read(&request, |_, _| false).await?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles: self.member.auth.state().roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        self.change_as(request, Internal::AuthRoleDelete).await?;
        Ok(Response::new(AuthRoleDeleteResponse {
            header: self.header(),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        self.change_as(request, Internal::AuthRoleGrantPermission)
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse {
            header: self.header(),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        self.change_as(request, Internal::AuthRoleRevokePermission)
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse {
            header: self.header(),
        }))
    }
}
