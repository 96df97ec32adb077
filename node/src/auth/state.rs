//! The replicated auth state: whether auth is on, its revision, users and
//! roles. Every mutation here is a pure function of the state and the
//! request, so all members apply it identically; the revision goes up by
//! one on every change (etcd's `commitRevision`).
//!
//! Stored as rows of the `auth` redb table (see [`AuthState::to_rows`]):
//! `enabled`, `revision`, `user/<name>` (an `authpb.User`, password as its
//! bcrypt hash) and `role/<name>` (an `authpb.Role`).

use std::collections::BTreeMap;

use prost::Message;

use super::perm::{Interval, PermSet};
use crate::error::EtcdError;
use crate::proto::authpb::{Permission, Role, User, UserAddOptions};
use crate::proto::etcdserverpb::{
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
};

/// The role (and user) that may do everything.
pub const ROOT: &str = "root";

const ROW_ENABLED: &str = "enabled";
const ROW_REVISION: &str = "revision";
const USER_PREFIX: &str = "user/";
const ROLE_PREFIX: &str = "role/";

/// What one user may do, derived from their roles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserPerms {
    pub root: bool,
    pub read: PermSet,
    pub write: PermSet,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthState {
    pub enabled: bool,
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    /// Derived from users and roles after every change, so a check never
    /// walks roles.
    perms: BTreeMap<String, UserPerms>,
}

/// A row of the auth table that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("auth table row {key:?}: {detail}")]
pub struct BadRow {
    pub key: String,
    pub detail: String,
}

impl AuthState {
    /// The permissions of `user`, if it exists.
    pub fn perms(&self, user: &str) -> Option<&UserPerms> {
        self.perms.get(user)
    }

    fn rebuild_perms(&mut self) {
        self.perms = self
            .users
            .iter()
            .map(|(name, user)| (name.clone(), self.perms_of(user)))
            .collect();
    }

    fn perms_of(&self, user: &User) -> UserPerms {
        let mut read = Vec::new();
        let mut write = Vec::new();
        let mut root = false;
        for role_name in &user.roles {
            if role_name == ROOT {
                root = true;
            }
            let Some(role) = self.roles.get(role_name) else {
                continue;
            };
            for perm in &role.key_permission {
                let iv = Interval::of(&perm.key, &perm.range_end);
                match perm.perm_type {
                    0 => read.push(iv),
                    1 => write.push(iv),
                    2 => {
                        read.push(iv.clone());
                        write.push(iv);
                    }
                    // A type this build does not know grants nothing.
                    _ => {}
                }
            }
        }
        UserPerms {
            root,
            read: PermSet::new(read),
            write: PermSet::new(write),
        }
    }

    /// Ends every successful mutation.
    fn changed(&mut self) {
        self.revision += 1;
        self.rebuild_perms();
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut User, EtcdError> {
        self.users.get_mut(name).ok_or(EtcdError::UserNotFound)
    }

    /// AuthEnable: needs user root holding role root. Enabling twice is a
    /// no-op, as in etcd.
    pub fn enable(&mut self) -> Result<(), EtcdError> {
        if self.enabled {
            return Ok(());
        }
        let root = self.users.get(ROOT).ok_or(EtcdError::RootUserNotExist)?;
        if !root.roles.iter().any(|r| r == ROOT) {
            return Err(EtcdError::RootRoleNotExist);
        }
        self.enabled = true;
        self.changed();
        Ok(())
    }

    pub fn disable(&mut self) {
        if self.enabled {
            self.enabled = false;
            self.changed();
        }
    }

    /// UserAdd; `req.hashed_password` holds the bcrypt hash unless the
    /// user has no password.
    pub fn user_add(&mut self, req: &AuthUserAddRequest) -> Result<(), EtcdError> {
        if req.name.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        if self.users.contains_key(&req.name) {
            return Err(EtcdError::UserAlreadyExist);
        }
        let options = req.options.unwrap_or(UserAddOptions { no_password: false });
        let password = if options.no_password {
            Vec::new()
        } else {
            req.hashed_password.as_bytes().to_vec()
        };
        self.users.insert(
            req.name.clone(),
            User {
                name: req.name.as_bytes().to_vec(),
                password,
                roles: Vec::new(),
                options: Some(options),
            },
        );
        self.changed();
        Ok(())
    }

    pub fn user_delete(&mut self, name: &str) -> Result<(), EtcdError> {
        if self.enabled && name == ROOT {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        self.users.remove(name).ok_or(EtcdError::UserNotFound)?;
        self.changed();
        Ok(())
    }

    pub fn user_change_password(&mut self, name: &str, hashed: &str) -> Result<(), EtcdError> {
        let user = self.user_mut(name)?;
        user.password = hashed.as_bytes().to_vec();
        self.changed();
        Ok(())
    }

    /// Grants `role`; granting a role the user has is a no-op. The root
    /// role need not exist as a role to be granted (etcd's rule).
    pub fn user_grant_role(&mut self, user: &str, role: &str) -> Result<(), EtcdError> {
        if !self.users.contains_key(user) {
            return Err(EtcdError::UserNotFound);
        }
        if role != ROOT && !self.roles.contains_key(role) {
            return Err(EtcdError::RoleNotFound);
        }
        let user = self.user_mut(user)?;
        match user.roles.binary_search_by(|r| r.as_str().cmp(role)) {
            Ok(_) => return Ok(()),
            Err(at) => user.roles.insert(at, role.to_string()),
        }
        self.changed();
        Ok(())
    }

    pub fn user_revoke_role(&mut self, name: &str, role: &str) -> Result<(), EtcdError> {
        if self.enabled && name == ROOT && role == ROOT {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        let user = self.user_mut(name)?;
        let at = user
            .roles
            .iter()
            .position(|r| r == role)
            .ok_or(EtcdError::RoleNotGranted)?;
        user.roles.remove(at);
        self.changed();
        Ok(())
    }

    pub fn role_add(&mut self, name: &str) -> Result<(), EtcdError> {
        if name.is_empty() {
            return Err(EtcdError::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(EtcdError::RoleAlreadyExist);
        }
        self.roles.insert(
            name.to_string(),
            Role {
                name: name.as_bytes().to_vec(),
                key_permission: Vec::new(),
            },
        );
        self.changed();
        Ok(())
    }

    /// Deletes a role and takes it away from every user holding it.
    pub fn role_delete(&mut self, name: &str) -> Result<(), EtcdError> {
        if self.enabled && name == ROOT {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        self.roles.remove(name).ok_or(EtcdError::RoleNotFound)?;
        for user in self.users.values_mut() {
            user.roles.retain(|r| r != name);
        }
        self.changed();
        Ok(())
    }

    /// Grants a permission; one on the same range replaces its type.
    pub fn role_grant_permission(
        &mut self,
        req: &AuthRoleGrantPermissionRequest,
    ) -> Result<(), EtcdError> {
        let perm = req.perm.clone().ok_or(EtcdError::PermissionNotGiven)?;
        if Interval::of(&perm.key, &perm.range_end).is_empty() {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        let role = self
            .roles
            .get_mut(&req.name)
            .ok_or(EtcdError::RoleNotFound)?;
        match role
            .key_permission
            .iter_mut()
            .find(|p| p.key == perm.key && p.range_end == perm.range_end)
        {
            Some(existing) => existing.perm_type = perm.perm_type,
            None => {
                let at = role
                    .key_permission
                    .partition_point(|p| (&p.key, &p.range_end) < (&perm.key, &perm.range_end));
                role.key_permission.insert(at, perm);
            }
        }
        self.changed();
        Ok(())
    }

    pub fn role_revoke_permission(
        &mut self,
        req: &AuthRoleRevokePermissionRequest,
    ) -> Result<(), EtcdError> {
        let role = self
            .roles
            .get_mut(&req.role)
            .ok_or(EtcdError::RoleNotFound)?;
        let at = role
            .key_permission
            .iter()
            .position(|p| p.key == req.key && p.range_end == req.range_end)
            .ok_or(EtcdError::PermissionNotGranted)?;
        role.key_permission.remove(at);
        self.changed();
        Ok(())
    }

    /// RoleGet's answer: the root role shows as read-write on every key,
    /// as in etcd.
    pub fn role_permissions(&self, name: &str) -> Result<Vec<Permission>, EtcdError> {
        let role = self.roles.get(name);
        if name == ROOT {
            return Ok(vec![Permission {
                perm_type: 2,
                key: Vec::new(),
                range_end: vec![0],
            }]);
        }
        Ok(role.ok_or(EtcdError::RoleNotFound)?.key_permission.clone())
    }

    /// The table rows that store this state.
    pub fn to_rows(&self) -> Vec<(String, Vec<u8>)> {
        let mut rows = vec![
            (ROW_ENABLED.to_string(), vec![u8::from(self.enabled)]),
            (
                ROW_REVISION.to_string(),
                self.revision.to_le_bytes().to_vec(),
            ),
        ];
        for (name, user) in &self.users {
            rows.push((format!("{USER_PREFIX}{name}"), user.encode_to_vec()));
        }
        for (name, role) in &self.roles {
            rows.push((format!("{ROLE_PREFIX}{name}"), role.encode_to_vec()));
        }
        rows
    }

    /// Rebuilds the state from its table rows.
    pub fn from_rows<'a>(
        rows: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, BadRow> {
        let mut state = AuthState::default();
        for (key, value) in rows {
            let bad = |detail: String| BadRow {
                key: key.to_string(),
                detail,
            };
            if key == ROW_ENABLED {
                state.enabled = value.first().copied().unwrap_or(0) != 0;
            } else if key == ROW_REVISION {
                let raw: [u8; 8] = value
                    .try_into()
                    .map_err(|_| bad(format!("{} bytes, expected 8", value.len())))?;
                state.revision = u64::from_le_bytes(raw);
            } else if let Some(name) = key.strip_prefix(USER_PREFIX) {
                let user = User::decode(value).map_err(|e| bad(e.to_string()))?;
                state.users.insert(name.to_string(), user);
            } else if let Some(name) = key.strip_prefix(ROLE_PREFIX) {
                let role = Role::decode(value).map_err(|e| bad(e.to_string()))?;
                state.roles.insert(name.to_string(), role);
            } else {
                return Err(bad("unknown row".into()));
            }
        }
        state.rebuild_perms();
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_user(s: &mut AuthState, name: &str) {
        s.user_add(&AuthUserAddRequest {
            name: name.into(),
            hashed_password: "hash".into(),
            ..Default::default()
        })
        .unwrap();
    }

    fn grant(s: &mut AuthState, role: &str, perm_type: i32, key: &str, end: &str) {
        s.role_grant_permission(&AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(Permission {
                perm_type,
                key: key.into(),
                range_end: end.into(),
            }),
        })
        .unwrap();
    }

    fn with_root() -> AuthState {
        let mut s = AuthState::default();
        add_user(&mut s, ROOT);
        s.role_add(ROOT).unwrap();
        s.user_grant_role(ROOT, ROOT).unwrap();
        s
    }

    #[test]
    fn enable_needs_root_user_with_root_role() {
        let mut s = AuthState::default();
        assert_eq!(s.enable(), Err(EtcdError::RootUserNotExist));
        add_user(&mut s, ROOT);
        assert_eq!(s.enable(), Err(EtcdError::RootRoleNotExist));
        s.user_grant_role(ROOT, ROOT).unwrap();
        let before = s.revision;
        s.enable().unwrap();
        assert!(s.enabled);
        assert_eq!(s.revision, before + 1);
        s.enable().unwrap();
        assert_eq!(s.revision, before + 1, "enabling twice changes nothing");
    }

    #[test]
    fn root_cannot_be_removed_while_enabled() {
        let mut s = with_root();
        s.enable().unwrap();
        assert_eq!(s.user_delete(ROOT), Err(EtcdError::InvalidAuthMgmt));
        assert_eq!(s.role_delete(ROOT), Err(EtcdError::InvalidAuthMgmt));
        assert_eq!(
            s.user_revoke_role(ROOT, ROOT),
            Err(EtcdError::InvalidAuthMgmt)
        );
        s.disable();
        s.user_revoke_role(ROOT, ROOT).unwrap();
        s.user_delete(ROOT).unwrap();
    }

    #[test]
    fn user_and_role_errors_are_etcds() {
        let mut s = AuthState::default();
        assert_eq!(
            s.user_add(&AuthUserAddRequest::default()),
            Err(EtcdError::UserEmpty)
        );
        add_user(&mut s, "u");
        assert_eq!(
            s.user_add(&AuthUserAddRequest {
                name: "u".into(),
                ..Default::default()
            }),
            Err(EtcdError::UserAlreadyExist)
        );
        assert_eq!(s.user_delete("x"), Err(EtcdError::UserNotFound));
        assert_eq!(s.role_add(""), Err(EtcdError::RoleEmpty));
        s.role_add("r").unwrap();
        assert_eq!(s.role_add("r"), Err(EtcdError::RoleAlreadyExist));
        assert_eq!(s.user_grant_role("u", "nope"), Err(EtcdError::RoleNotFound));
        assert_eq!(s.user_grant_role("x", "r"), Err(EtcdError::UserNotFound));
        assert_eq!(s.user_revoke_role("u", "r"), Err(EtcdError::RoleNotGranted));
        assert_eq!(
            s.role_revoke_permission(&AuthRoleRevokePermissionRequest {
                role: "r".into(),
                key: b"k".to_vec(),
                range_end: vec![],
            }),
            Err(EtcdError::PermissionNotGranted)
        );
        assert_eq!(s.role_delete("x"), Err(EtcdError::RoleNotFound));
    }

    #[test]
    fn permissions_follow_roles_and_grants() {
        let mut s = AuthState::default();
        add_user(&mut s, "u");
        s.role_add("r").unwrap();
        s.user_grant_role("u", "r").unwrap();
        grant(&mut s, "r", 0, "a/", "a0");
        grant(&mut s, "r", 1, "w", "");
        let p = s.perms("u").unwrap();
        assert!(p.read.covers(b"a/x", b""));
        assert!(!p.write.covers(b"a/x", b""));
        assert!(p.write.covers(b"w", b""));
        // Granting the same range again replaces its type.
        grant(&mut s, "r", 2, "a/", "a0");
        assert_eq!(s.roles["r"].key_permission.len(), 2);
        assert!(s.perms("u").unwrap().write.covers(b"a/x", b""));
        // Deleting the role takes it from the user.
        s.role_delete("r").unwrap();
        assert!(s.users["u"].roles.is_empty());
        assert!(!s.perms("u").unwrap().read.covers(b"a/x", b""));
    }

    #[test]
    fn every_change_bumps_the_revision_once() {
        let mut s = AuthState::default();
        add_user(&mut s, "u");
        s.role_add("r").unwrap();
        s.user_grant_role("u", "r").unwrap();
        assert_eq!(s.revision, 3);
        s.user_grant_role("u", "r").unwrap();
        assert_eq!(s.revision, 3, "an existing grant is a no-op");
        assert!(s.role_add("r").is_err());
        assert_eq!(s.revision, 3, "a refused change changes nothing");
    }

    #[test]
    fn rows_round_trip() {
        let mut s = with_root();
        s.role_add("r").unwrap();
        grant(&mut s, "r", 2, "k", "\0");
        s.enable().unwrap();
        let rows = s.to_rows();
        let back =
            AuthState::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        assert_eq!(back, s);
        assert!(back.perms(ROOT).unwrap().root);
        assert!(AuthState::from_rows([("what", &b""[..])]).is_err());
        assert!(AuthState::from_rows([("revision", &b"1"[..])]).is_err());
    }
}
