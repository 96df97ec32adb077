//! Auth tokens, as etcd's `--auth-token`:
//! - `simple`: a random string every member learns through Raft (the
//!   Authenticate entry carries it), valid for `--auth-token-ttl` seconds
//!   after its last use, kept in memory only (lost on restart, as in etcd);
//! - `jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m`: a signed
//!   JWT with etcd's claims (`username`, `revision`, `exp`), which any
//!   member holding the public key verifies on its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// `--auth-token`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    Simple,
    Jwt(JwtOptions),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtOptions {
    pub sign_method: String,
    pub pub_key: Option<PathBuf>,
    pub priv_key: Option<PathBuf>,
    pub ttl: Duration,
}

/// etcd's default JWT lifetime.
const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);

/// Parses `--auth-token` (`simple`, or `jwt,` and etcd's options).
pub fn parse_auth_token(raw: &str) -> Result<TokenKind, String> {
    let mut parts = raw.split(',').map(str::trim);
    match parts.next() {
        Some("simple") | Some("") | None => {
            if parts.next().is_some() {
                return Err("simple tokens take no options".into());
            }
            Ok(TokenKind::Simple)
        }
        Some("jwt") => {
            let mut opts = JwtOptions {
                sign_method: String::new(),
                pub_key: None,
                priv_key: None,
                ttl: DEFAULT_JWT_TTL,
            };
            for part in parts.filter(|p| !p.is_empty()) {
                let (k, v) = part
                    .split_once('=')
                    .ok_or_else(|| format!("jwt option {part:?} is not key=value"))?;
                match k {
                    "sign-method" => opts.sign_method = v.to_string(),
                    "pub-key" => opts.pub_key = Some(PathBuf::from(v)),
                    "priv-key" => opts.priv_key = Some(PathBuf::from(v)),
                    "ttl" => opts.ttl = parse_go_duration(v)?,
                    other => return Err(format!("unknown jwt option {other:?}")),
                }
            }
            if opts.sign_method.is_empty() {
                return Err("jwt needs sign-method (e.g. RS256, ES256)".into());
            }
            Algorithm::from_str(&opts.sign_method)
                .map_err(|_| format!("unsupported jwt sign-method {:?}", opts.sign_method))?;
            if opts.pub_key.is_none() && opts.priv_key.is_none() {
                return Err("jwt needs pub-key and priv-key".into());
            }
            if opts.ttl.is_zero() {
                return Err("jwt ttl must be positive".into());
            }
            Ok(TokenKind::Jwt(opts))
        }
        Some(other) => Err(format!(
            "unknown token type {other:?} (use simple or jwt,...)"
        )),
    }
}

/// A Go duration such as `5m`, `90s`, `1h30m`, `500ms`.
fn parse_go_duration(raw: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {raw:?}");
    let mut rest = raw.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        total += unit;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Why the JWT keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading jwt key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("jwt key {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("jwt: {0}")]
    Config(String),
}

/// Simple tokens this member knows: token -> (user, expiry).
pub struct SimpleTokens {
    ttl: Duration,
    tokens: Mutex<Tokens>,
}

#[derive(Default)]
struct Tokens {
    live: HashMap<String, (String, Instant)>,
    /// When expired tokens were last dropped.
    purged: Option<Instant>,
}

/// How often `add` drops expired tokens: often enough that the map holds
/// little more than the tokens of the last TTL, rarely enough that a storm
/// of logins does not rescan it each time.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// Letters in a simple token before its `.` suffix (etcd uses 16).
const SIMPLE_TOKEN_LETTERS: usize = 16;

impl SimpleTokens {
    pub fn new(ttl: Duration) -> Self {
        SimpleTokens {
            ttl,
            tokens: Mutex::new(Tokens::default()),
        }
    }

    /// A fresh token: random letters, a dot and a number, like etcd's.
    pub fn generate() -> String {
        let mut rng = rand::rng();
        let letters: String = (0..SIMPLE_TOKEN_LETTERS)
            .map(|_| {
                let i = rng.random_range(0..52u8);
                char::from(if i < 26 { b'a' + i } else { b'A' + i - 26 })
            })
            .collect();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{letters}.{nanos}")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tokens> {
        // A panic while holding the lock leaves a map that is still valid.
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a token; expired ones are dropped on the way (at most once
    /// per [`PURGE_EVERY`]), so the map holds about the tokens of one TTL.
    pub fn add(&self, token: String, user: String, now: Instant) {
        let mut tokens = self.lock();
        if tokens
            .purged
            .is_none_or(|at| now.saturating_duration_since(at) >= PURGE_EVERY)
        {
            tokens.live.retain(|_, (_, expiry)| *expiry > now);
            tokens.purged = Some(now);
        }
        tokens.live.insert(token, (user, now + self.ttl));
    }

    /// The user of a live token; using it extends its life by the TTL.
    pub fn lookup(&self, token: &str, now: Instant) -> Option<String> {
        let mut tokens = self.lock();
        let (user, expiry) = tokens.live.get_mut(token)?;
        if *expiry <= now {
            tokens.live.remove(token);
            return None;
        }
        *expiry = now + self.ttl;
        Some(user.clone())
    }

    /// Forgets every token of `user` (deleted, or a new password).
    pub fn invalidate_user(&self, user: &str) {
        self.lock().live.retain(|_, (u, _)| u != user);
    }

    /// Forgets every token (auth disabled).
    pub fn clear(&self) {
        self.lock().live.clear();
    }

    /// How many tokens are held (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// etcd's JWT claims.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

pub struct JwtTokens {
    algorithm: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    ttl: Duration,
}

fn read_key(path: &PathBuf) -> Result<Vec<u8>, TokenError> {
    std::fs::read(path).map_err(|source| TokenError::Read {
        path: path.clone(),
        source,
    })
}

impl JwtTokens {
    /// Loads the keys `opts` names (PEM; the private key is only needed
    /// by members that issue tokens, HMAC methods use it for both).
    pub fn load(opts: &JwtOptions) -> Result<Self, TokenError> {
        let algorithm = Algorithm::from_str(&opts.sign_method)
            .map_err(|_| TokenError::Config(format!("sign-method {:?}", opts.sign_method)))?;
        let key_err = |path: &PathBuf| {
            let path = path.clone();
            move |e: jsonwebtoken::errors::Error| TokenError::Key {
                path,
                detail: e.to_string(),
            }
        };
        use Algorithm::*;
        let hmac = matches!(algorithm, HS256 | HS384 | HS512);
        let (encoding, decoding) = if hmac {
            let path = opts
                .priv_key
                .as_ref()
                .ok_or_else(|| TokenError::Config("HMAC methods need priv-key".into()))?;
            let secret = read_key(path)?;
            (
                Some(EncodingKey::from_secret(&secret)),
                DecodingKey::from_secret(&secret),
            )
        } else {
            let pub_path = opts
                .pub_key
                .as_ref()
                .ok_or_else(|| TokenError::Config("pub-key is required".into()))?;
            let pem = read_key(pub_path)?;
            let decoding = match algorithm {
                ES256 | ES384 => DecodingKey::from_ec_pem(&pem),
                EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            }
            .map_err(key_err(pub_path))?;
            let encoding = match &opts.priv_key {
                Some(path) => {
                    let pem = read_key(path)?;
                    Some(
                        match algorithm {
                            ES256 | ES384 => EncodingKey::from_ec_pem(&pem),
                            EdDSA => EncodingKey::from_ed_pem(&pem),
                            _ => EncodingKey::from_rsa_pem(&pem),
                        }
                        .map_err(key_err(path))?,
                    )
                }
                None => None,
            };
            (encoding, decoding)
        };
        Ok(JwtTokens {
            algorithm,
            encoding,
            decoding,
            ttl: opts.ttl,
        })
    }

    /// Signs a token for `username` at auth `revision`; `None` when this
    /// member holds no private key.
    pub fn sign(&self, username: &str, revision: u64) -> Option<String> {
        let encoding = self.encoding.as_ref()?;
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(self.ttl)
            .as_secs();
        let claims = Claims {
            username: username.to_string(),
            revision,
            exp,
        };
        match jsonwebtoken::encode(&Header::new(self.algorithm), &claims, encoding) {
            Ok(token) => Some(token),
            Err(e) => {
                tracing::error!(error = %e, "signing a jwt");
                None
            }
        }
    }

    /// (user, revision) of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        validation.required_spec_claims = ["exp".to_string()].into();
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_token_flag_parses_as_etcd() {
        assert_eq!(parse_auth_token("simple"), Ok(TokenKind::Simple));
        let jwt =
            parse_auth_token("jwt,pub-key=/a.pub,priv-key=/a,sign-method=RS256,ttl=10m").unwrap();
        assert_eq!(
            jwt,
            TokenKind::Jwt(JwtOptions {
                sign_method: "RS256".into(),
                pub_key: Some("/a.pub".into()),
                priv_key: Some("/a".into()),
                ttl: Duration::from_secs(600),
            })
        );
        assert!(
            parse_auth_token("jwt,pub-key=/a").is_err(),
            "no sign-method"
        );
        assert!(parse_auth_token("jwt,sign-method=XX1,pub-key=/a").is_err());
        assert!(
            parse_auth_token("jwt,sign-method=RS256").is_err(),
            "no keys"
        );
        assert!(parse_auth_token("jwt,sign-method=RS256,pub-key=/a,what=1").is_err());
        assert!(parse_auth_token("oauth").is_err());
        assert!(parse_auth_token("simple,ttl=1s").is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("m").is_err());
        assert!(parse_go_duration("5d").is_err());
    }

    #[test]
    fn simple_tokens_expire_unless_used() {
        let tokens = SimpleTokens::new(Duration::from_secs(10));
        let t0 = Instant::now();
        tokens.add("tok".into(), "alice".into(), t0);
        assert_eq!(
            tokens.lookup("tok", t0 + Duration::from_secs(9)).as_deref(),
            Some("alice")
        );
        // Used at 9 s: now good until 19 s.
        assert!(tokens.lookup("tok", t0 + Duration::from_secs(18)).is_some());
        assert!(tokens.lookup("tok", t0 + Duration::from_secs(29)).is_none());
        assert!(tokens.lookup("other", t0).is_none());
        tokens.add("a".into(), "alice".into(), t0);
        tokens.add("b".into(), "bob".into(), t0);
        tokens.invalidate_user("alice");
        assert!(tokens.lookup("a", t0).is_none());
        assert!(tokens.lookup("b", t0).is_some());
        tokens.clear();
        assert!(tokens.lookup("b", t0).is_none());
    }

    #[test]
    fn expired_tokens_are_dropped_when_new_ones_come() {
        let tokens = SimpleTokens::new(Duration::from_secs(1));
        let t0 = Instant::now();
        for n in 0..100 {
            tokens.add(format!("old.{n}"), "u".into(), t0);
        }
        assert_eq!(tokens.len(), 100);
        tokens.add("new.1".into(), "u".into(), t0 + Duration::from_secs(2));
        assert_eq!(tokens.len(), 1);
        assert!(!tokens.is_empty());
    }

    #[test]
    fn simple_tokens_are_distinct() {
        let a = SimpleTokens::generate();
        assert_ne!(a, SimpleTokens::generate());
        assert!(a.split_once('.').is_some_and(|(l, _)| l.len() == 16));
    }

    #[test]
    fn hmac_jwt_round_trip_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secret");
        std::fs::write(&key, b"not so secret").unwrap();
        let jwt = JwtTokens::load(&JwtOptions {
            sign_method: "HS256".into(),
            pub_key: None,
            priv_key: Some(key),
            ttl: Duration::from_secs(60),
        })
        .unwrap();
        let token = jwt.sign("alice", 7).unwrap();
        assert_eq!(jwt.verify(&token), Some(("alice".to_string(), 7)));
        assert_eq!(jwt.verify("garbage"), None);
        let mut tampered = token.clone();
        tampered.push('x');
        assert_eq!(jwt.verify(&tampered), None);
    }

    #[test]
    fn missing_key_files_are_reported() {
        let err = JwtTokens::load(&JwtOptions {
            sign_method: "RS256".into(),
            pub_key: Some("/nonexistent/key.pub".into()),
            priv_key: None,
            ttl: Duration::from_secs(60),
        });
        assert!(matches!(err, Err(TokenError::Read { .. })));
    }
}
