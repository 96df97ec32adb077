//! etcd's authentication and key-range permissions.
//!
//! - [`state`]: the replicated users, roles and flags, and their pure
//!   mutations; stored in the `auth` redb table, written in the apply
//!   transaction, so Raft snapshots, backups and restores carry it.
//! - [`perm`]: key ranges as intervals; [`check`]: what each request needs
//!   and whether a caller has it.
//! - [`token`]: simple and JWT tokens.
//! - [`apply`]: how replicated auth requests change the state, and the
//!   re-check of writes at apply time.
//! - [`AuthStore`] (here): the member's in-memory copy of the state, which
//!   every check reads (never redb), replaced after each apply that changed
//!   it and after a snapshot install.
//!
//! Nothing here does network I/O; the gRPC services call in.

pub mod apply;
pub mod check;
pub mod perm;
pub mod state;
pub mod token;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::ReadableTable;

pub use self::check::{AuthInfo, Need};
use self::state::AuthState;
use self::token::{JwtTokens, SimpleTokens, TokenError, TokenKind};
use crate::error::EtcdError;
use crate::storage::{AUTH, StorageError};
use crate::tls::listener::ConnInfo;

/// gRPC metadata keys a token may come in (etcd's `TokenFieldNameGRPC`
/// and `TokenFieldNameSwagger`).
pub const TOKEN_METADATA_KEYS: [&str; 2] = ["token", "authorization"];

/// The auth flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub token: TokenKind,
    /// `--auth-token-ttl`: how long a simple token lives after its last use.
    pub token_ttl: Duration,
    /// `--bcrypt-cost`.
    pub bcrypt_cost: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token: TokenKind::Simple,
            token_ttl: Duration::from_secs(300),
            // etcd's default (bcrypt's own default is 12).
            bcrypt_cost: 10,
        }
    }
}

/// What a client presented: a token (gRPC metadata `token` or
/// `authorization`, the gateway's `Authorization` header) and the common
/// name of its verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub token: Option<String>,
    pub cert_common_name: Option<String>,
}

impl Credentials {
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        let token = TOKEN_METADATA_KEYS
            .iter()
            .find_map(|key| request.metadata().get(*key))
            // A token that is not text matches no token: invalid, not absent.
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let cert_common_name = ConnInfo::identity_of(request.extensions())
            .filter(|id| !id.common_name.is_empty())
            .map(|id| id.common_name.clone());
        Credentials {
            token,
            cert_common_name,
        }
    }
}

/// Token side effects of an applied batch, carried out after its commit.
#[derive(Debug, Default)]
pub struct AuthEffects {
    /// Simple tokens to register: (token, user).
    pub tokens: Vec<(String, String)>,
    /// Users whose tokens die (deleted, or a new password).
    pub invalidated: Vec<String>,
    /// Auth was disabled: every token dies.
    pub cleared: bool,
}

/// The member's view of the auth state, and its tokens.
pub struct AuthStore {
    /// Mirrors `state.enabled`: the one check the hot path pays when auth
    /// is off.
    enabled: AtomicBool,
    state: RwLock<Arc<AuthState>>,
    simple: SimpleTokens,
    jwt: Option<JwtTokens>,
    bcrypt_cost: u32,
}

impl AuthStore {
    pub fn new(config: &AuthConfig, initial: AuthState) -> Result<Self, TokenError> {
        let jwt = match &config.token {
            TokenKind::Simple => None,
            TokenKind::Jwt(opts) => Some(JwtTokens::load(opts)?),
        };
        Ok(AuthStore {
            enabled: AtomicBool::new(initial.enabled),
            state: RwLock::new(Arc::new(initial)),
            simple: SimpleTokens::new(config.token_ttl),
            jwt,
            bcrypt_cost: config.bcrypt_cost,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The current state (cheap: an `Arc` clone).
    pub fn state(&self) -> Arc<AuthState> {
        // A panic while holding the lock cannot leave a half-written Arc.
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the state (after an apply changed it, or a snapshot).
    pub fn install(&self, state: Arc<AuthState>) {
        let enabled = state.enabled;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
        self.enabled.store(enabled, Ordering::Release);
    }

    /// Carries out an applied batch's token effects.
    pub fn apply_effects(&self, effects: AuthEffects) {
        if effects.cleared {
            self.simple.clear();
        }
        for user in &effects.invalidated {
            self.simple.invalidate_user(user);
        }
        let now = Instant::now();
        for (token, user) in effects.tokens {
            self.simple.add(token, user, now);
        }
    }

    /// Who presented `credentials`: the token's user, else the client
    /// certificate's common name; `None` when auth is off or nobody is
    /// named.
    pub fn resolve(&self, credentials: &Credentials) -> Result<Option<AuthInfo>, EtcdError> {
        if !self.is_enabled() {
            return Ok(None);
        }
        if let Some(token) = &credentials.token {
            return self.info_from_token(token).map(Some);
        }
        Ok(credentials.cert_common_name.as_ref().map(|cn| AuthInfo {
            username: cn.clone(),
            revision: self.state().revision,
        }))
    }

    /// Who a unary or streaming gRPC request comes from.
    pub fn info_of<T>(&self, request: &tonic::Request<T>) -> Result<Option<AuthInfo>, EtcdError> {
        if !self.is_enabled() {
            return Ok(None);
        }
        self.resolve(&Credentials::of(request))
    }

    /// The user a token names. A simple token reads at the current auth
    /// revision; a JWT at the revision it was signed at.
    pub fn info_from_token(&self, token: &str) -> Result<AuthInfo, EtcdError> {
        // etcd's gateway sends `Authorization: <token>`; tolerate a scheme.
        let token = token.strip_prefix("Bearer ").unwrap_or(token);
        match &self.jwt {
            Some(jwt) => jwt
                .verify(token)
                .map(|(username, revision)| AuthInfo { username, revision })
                .ok_or(EtcdError::InvalidAuthToken),
            None => self
                .simple
                .lookup(token, Instant::now())
                .map(|username| AuthInfo {
                    username,
                    revision: self.state().revision,
                })
                .ok_or(EtcdError::InvalidAuthToken),
        }
    }

    /// Whether `info` may do what `needs` says.
    pub fn check(&self, info: Option<&AuthInfo>, needs: &[Need]) -> Result<(), EtcdError> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.state().check(info, needs)
    }

    /// Whether `info` holds the root role (when auth is on).
    pub fn check_admin(&self, info: Option<&AuthInfo>) -> Result<(), EtcdError> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.state().check_admin(info)
    }

    /// A new simple token to replicate with Authenticate; `None` with JWT.
    pub fn new_simple_token(&self) -> Option<String> {
        match self.jwt {
            Some(_) => None,
            None => Some(SimpleTokens::generate()),
        }
    }

    /// The JWT for `user` at the current auth revision.
    pub fn sign_jwt(&self, user: &str) -> Option<String> {
        self.jwt.as_ref()?.sign(user, self.state().revision)
    }

    /// Hashes a password with `--bcrypt-cost` (slow on purpose: run it off
    /// the async threads).
    pub fn hash_password(&self, password: &str) -> Result<String, EtcdError> {
        bcrypt::hash(password, self.bcrypt_cost)
            .map_err(|e| EtcdError::Internal(format!("hashing a password: {e}")))
    }
}

/// Whether `password` matches the stored bcrypt `hash`.
pub fn verify_password(password: &str, hash: &[u8]) -> bool {
    std::str::from_utf8(hash)
        .ok()
        .and_then(|hash| bcrypt::verify(password, hash).ok())
        .unwrap_or(false)
}

/// Reads the auth state from its table.
pub fn load(txn: &redb::ReadTransaction) -> Result<AuthState, StorageError> {
    let table = txn.open_table(AUTH)?;
    let mut rows = Vec::new();
    for item in table.iter()? {
        let (k, v) = item?;
        rows.push((k.value().to_string(), v.value().to_vec()));
    }
    AuthState::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map_err(|e| StorageError::corrupt("auth table", e))
}

/// Replaces the auth table's rows with `state`.
pub fn save(
    table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    state: &AuthState,
) -> Result<(), StorageError> {
    table.retain(|_, _| false)?;
    for (key, value) in state.to_rows() {
        table.insert(key.as_str(), value.as_slice())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_identity::ClientCertIdentity;
    use crate::proto::etcdserverpb::AuthUserAddRequest;

    fn enabled_state() -> AuthState {
        let mut s = AuthState::default();
        s.user_add(&AuthUserAddRequest {
            name: "root".into(),
            hashed_password: "h".into(),
            ..Default::default()
        })
        .unwrap();
        s.user_grant_role("root", "root").unwrap();
        s.enable().unwrap();
        s
    }

    fn request(token: Option<(&'static str, &str)>, cn: Option<&str>) -> tonic::Request<()> {
        let mut req = tonic::Request::new(());
        if let Some((key, value)) = token {
            req.metadata_mut().insert(key, value.parse().unwrap());
        }
        if let Some(cn) = cn {
            req.extensions_mut().insert(ConnInfo {
                remote_addr: None,
                identity: Some(ClientCertIdentity {
                    common_name: cn.into(),
                }),
            });
        }
        req
    }

    #[test]
    fn tokens_come_from_metadata_or_the_certificate() {
        let store = AuthStore::new(&AuthConfig::default(), enabled_state()).unwrap();
        assert_eq!(store.info_of(&request(None, None)), Ok(None));
        assert_eq!(
            store.info_of(&request(Some(("token", "garbage")), None)),
            Err(EtcdError::InvalidAuthToken)
        );
        store.apply_effects(AuthEffects {
            tokens: vec![("good.1".into(), "root".into())],
            ..Default::default()
        });
        let info = store
            .info_of(&request(Some(("authorization", "good.1")), None))
            .unwrap()
            .unwrap();
        assert_eq!(info.username, "root");
        assert_eq!(info.revision, store.state().revision);
        assert_eq!(
            store
                .info_of(&request(None, Some("alice")))
                .unwrap()
                .map(|i| i.username),
            Some("alice".into())
        );
        // A token wins over the certificate, as in etcd.
        assert_eq!(
            store.info_of(&request(Some(("token", "bad")), Some("alice"))),
            Err(EtcdError::InvalidAuthToken)
        );
    }

    #[test]
    fn nothing_is_asked_when_auth_is_off() {
        let store = AuthStore::new(&AuthConfig::default(), AuthState::default()).unwrap();
        assert_eq!(
            store.info_of(&request(Some(("token", "garbage")), None)),
            Ok(None)
        );
        assert_eq!(store.check(None, &[]), Ok(()));
    }

    #[test]
    fn disabling_clears_tokens_and_deleting_a_user_kills_theirs() {
        let store = AuthStore::new(&AuthConfig::default(), enabled_state()).unwrap();
        store.apply_effects(AuthEffects {
            tokens: vec![("a.1".into(), "alice".into()), ("b.1".into(), "bob".into())],
            ..Default::default()
        });
        store.apply_effects(AuthEffects {
            invalidated: vec!["alice".into()],
            ..Default::default()
        });
        assert_eq!(
            store.info_from_token("a.1"),
            Err(EtcdError::InvalidAuthToken)
        );
        assert!(store.info_from_token("b.1").is_ok());
        store.apply_effects(AuthEffects {
            cleared: true,
            ..Default::default()
        });
        assert_eq!(
            store.info_from_token("b.1"),
            Err(EtcdError::InvalidAuthToken)
        );
    }

    #[test]
    fn passwords_verify_against_bcrypt_hashes() {
        let store = AuthStore::new(
            &AuthConfig {
                bcrypt_cost: 4,
                ..Default::default()
            },
            AuthState::default(),
        )
        .unwrap();
        let hash = store.hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$2"));
        assert!(verify_password("s3cret", hash.as_bytes()));
        assert!(!verify_password("wrong", hash.as_bytes()));
        assert!(!verify_password("s3cret", b"not a hash"));
    }

    #[test]
    fn state_round_trips_through_its_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::storage::Store::open(dir.path()).unwrap();
        let state = enabled_state();
        let txn = store.db().begin_write().unwrap();
        {
            let mut table = txn.open_table(AUTH).unwrap();
            save(&mut table, &state).unwrap();
        }
        txn.commit().unwrap();
        let txn = store.db().begin_read().unwrap();
        assert_eq!(load(&txn).unwrap(), state);
    }
}
