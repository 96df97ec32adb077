//! Command-line flags, named as etcd's so scripts and operators can switch.
//! Each flag can also be set as a `WITAN_*` environment variable. Validated
//! once at start-up into [`Config`]; nothing else reads the environment.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::tls::TlsSettings;
use crate::tls::settings::{self, AutoTls, Side, SideFlags};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    New,
    Existing,
}

/// How `--auto-compaction-retention` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AutoCompactionMode {
    /// Keep the history of the last retention period (a duration).
    Periodic,
    /// Keep the last retention revisions (a number).
    Revision,
}

/// The leader's automatic compaction, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep the history of the last this long.
    Periodic(Duration),
    /// Keep this many revisions before the current one.
    Revision(i64),
}

/// The `witan` daemon's flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "witan",
    version,
    about = "A replicated key-value store that speaks the etcd v3 API"
)]
pub struct Flags {
    /// Human-readable name of this member.
    #[arg(long, env = "WITAN_NAME", default_value = "default")]
    pub name: String,
    /// Where this member keeps its data (default: `<name>.witan`).
    #[arg(long, env = "WITAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URLs to serve clients on (comma separated).
    #[arg(
        long,
        env = "WITAN_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,
    /// Client URLs this member advertises to the cluster.
    #[arg(
        long,
        env = "WITAN_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub advertise_client_urls: String,
    /// URLs to serve peers on (comma separated).
    #[arg(
        long,
        env = "WITAN_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,
    /// Peer URLs this member advertises to the cluster.
    #[arg(
        long,
        env = "WITAN_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster: `name=peer-url,name=peer-url,...` (default: this member alone).
    #[arg(long, env = "WITAN_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` to bootstrap a cluster, `existing` to join a running one.
    #[arg(
        long,
        env = "WITAN_INITIAL_CLUSTER_STATE",
        value_enum,
        default_value = "new"
    )]
    pub initial_cluster_state: ClusterState,
    /// Token that makes cluster and member ids unique to this cluster.
    #[arg(
        long,
        env = "WITAN_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Heartbeat interval in milliseconds.
    #[arg(
        long = "heartbeat-interval",
        env = "WITAN_HEARTBEAT_INTERVAL",
        default_value_t = 100
    )]
    pub heartbeat_interval_ms: u64,
    /// Election timeout in milliseconds.
    #[arg(
        long = "election-timeout",
        env = "WITAN_ELECTION_TIMEOUT",
        default_value_t = 1000
    )]
    pub election_timeout_ms: u64,
    /// Applied Raft entries between snapshots (then the log is purged).
    #[arg(long, env = "WITAN_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Most operations in one txn.
    #[arg(long, env = "WITAN_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Largest client request in bytes.
    #[arg(long, env = "WITAN_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Learners allowed in the cluster at once (etcd's default is 1; an
    /// operator growing 3 -> 5 voters adds two).
    #[arg(
        long = "max-learners",
        alias = "experimental-max-learners",
        env = "WITAN_MAX_LEARNERS",
        default_value_t = 1
    )]
    pub max_learners: usize,
    /// Interval of watch progress notifications, e.g. `10m`, `5s`.
    #[arg(
        long = "watch-progress-notify-interval",
        alias = "experimental-watch-progress-notify-interval",
        env = "WITAN_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m",
        value_parser = parse_duration
    )]
    pub watch_progress_notify_interval: Duration,
    /// Automatic compaction: `periodic` (retention is a duration) or
    /// `revision` (retention is a number of revisions).
    #[arg(
        long,
        env = "WITAN_AUTO_COMPACTION_MODE",
        value_enum,
        default_value = "periodic"
    )]
    pub auto_compaction_mode: AutoCompactionMode,
    /// History the leader keeps when compacting automatically: `0` is off;
    /// periodic mode takes a duration (`1h`, `30m`, `5s`; a bare number is
    /// hours), revision mode a number of revisions.
    #[arg(long, env = "WITAN_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Database size in bytes at which the member raises a NOSPACE alarm
    /// and refuses writes: `0` is etcd's default (2 GiB), a negative value
    /// turns the quota off.
    #[arg(
        long,
        env = "WITAN_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,
    /// Log format: `text` or `json`.
    #[arg(long, env = "WITAN_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Auth token type: `simple`, or
    /// `jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m` (etcd's).
    #[arg(long, env = "WITAN_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Seconds a simple token stays valid after its last use.
    #[arg(long, env = "WITAN_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost of stored password hashes (4 to 31).
    #[arg(long, env = "WITAN_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,
    /// Extra URLs serving only the HTTP endpoints (/metrics, /health,
    /// /livez, /readyz, /version), http or https (comma separated).
    #[arg(long, env = "WITAN_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,
    /// Local IP address peer connections are dialled from (default: the
    /// operating system's choice). Not an etcd flag: witan's robustness
    /// suite gives each member its own loopback address so the proxy it
    /// puts on the peer links can tell which member dialled.
    #[arg(long, env = "WITAN_PEER_SOURCE_IP")]
    pub peer_source_ip: Option<IpAddr>,
    #[command(flatten)]
    pub tls: TlsFlags,
}

/// etcd's TLS flags (docs/tls.md). The booleans take `--flag`,
/// `--flag=true` and `--flag=false`, as Go's flag package does.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFlags {
    /// Certificate (PEM) of the client listener.
    #[arg(long, env = "WITAN_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of the client listener.
    #[arg(long, env = "WITAN_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA (PEM) that signs client certificates; clients must present one.
    #[arg(long, env = "WITAN_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require client certificates signed by --trusted-ca-file; their CN is
    /// the user name for auth.
    #[arg(long, env = "WITAN_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// Serve https clients with a self-signed certificate (kept in
    /// <data-dir>/fixtures/client).
    #[arg(long, env = "WITAN_AUTO_TLS", num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub auto_tls: bool,
    /// Certificate (PEM) of the peer listener, also presented when dialling peers.
    #[arg(long, env = "WITAN_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of the peer certificate.
    #[arg(long, env = "WITAN_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA (PEM) that signs the members' peer certificates.
    #[arg(long, env = "WITAN_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require peers to present a certificate signed by --peer-trusted-ca-file.
    #[arg(long, env = "WITAN_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,
    /// Peer TLS with a self-signed certificate (kept in
    /// <data-dir>/fixtures/peer); peers do not verify each other.
    #[arg(long, env = "WITAN_PEER_AUTO_TLS", num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub peer_auto_tls: bool,
    /// Validity of --auto-tls/--peer-auto-tls certificates, in years.
    #[arg(
        long = "self-signed-cert-validity",
        env = "WITAN_SELF_SIGNED_CERT_VALIDITY",
        default_value_t = 1
    )]
    pub self_signed_cert_validity_years: u32,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "invalid duration unit in {s:?} (use ms, s, m or h)"
        )),
    }
}

/// Reads `--auto-compaction-retention` for the given mode; `0` turns
/// automatic compaction off.
fn parse_auto_compaction(
    mode: AutoCompactionMode,
    raw: &str,
) -> Result<AutoCompaction, ConfigError> {
    const FLAG: &str = "auto-compaction-retention";
    let raw = raw.trim();
    match mode {
        AutoCompactionMode::Revision => {
            let n: i64 = raw.parse().map_err(|_| {
                bad(
                    FLAG,
                    format!("{raw:?} is not a number of revisions (revision mode)"),
                )
            })?;
            match n {
                0 => Ok(AutoCompaction::Off),
                n if n < 0 => Err(bad(FLAG, format!("{raw:?} must not be negative"))),
                n => Ok(AutoCompaction::Revision(n)),
            }
        }
        AutoCompactionMode::Periodic => {
            // As etcd: a bare number is hours.
            let retention = match raw.parse::<u64>() {
                Ok(hours) => Duration::from_secs(hours.saturating_mul(3600)),
                Err(_) => parse_duration(raw).map_err(|reason| {
                    bad(
                        FLAG,
                        format!("{reason} (periodic mode wants e.g. 1h, 30m, 5s or hours)"),
                    )
                })?,
            };
            if retention.is_zero() {
                Ok(AutoCompaction::Off)
            } else {
                Ok(AutoCompaction::Periodic(retention))
            }
        }
    }
}

/// Reads `--quota-backend-bytes` as etcd does: 0 is the default quota, a
/// negative value is no quota.
fn quota_backend_bytes(raw: i64) -> Option<u64> {
    match raw {
        0 => Some(crate::mvcc::alarm::DEFAULT_QUOTA_BACKEND_BYTES),
        n if n < 0 => None,
        n => Some(n.unsigned_abs()),
    }
}

/// Reads `--auth-token`, `--auth-token-ttl` and `--bcrypt-cost`.
fn auth_config(flags: &Flags) -> Result<crate::auth::AuthConfig, ConfigError> {
    let token = crate::auth::token::parse_auth_token(&flags.auth_token)
        .map_err(|reason| bad("auth-token", reason))?;
    if flags.auth_token_ttl == 0 {
        return Err(bad("auth-token-ttl", "must be positive"));
    }
    if !(4..=31).contains(&flags.bcrypt_cost) {
        return Err(bad("bcrypt-cost", "must be between 4 and 31"));
    }
    Ok(crate::auth::AuthConfig {
        token,
        token_ttl: Duration::from_secs(flags.auth_token_ttl),
        bcrypt_cost: flags.bcrypt_cost,
    })
}

/// Validated configuration of one member.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_addrs: Vec<SocketAddr>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_addrs: Vec<SocketAddr>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// name -> peer URLs.
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
    pub max_learners: usize,
    pub watch_progress_notify_interval: Duration,
    pub auto_compaction: AutoCompaction,
    /// The space quota in bytes; `None` when turned off.
    pub quota_backend_bytes: Option<u64>,
    /// Token type, token TTL and bcrypt cost.
    pub auth: crate::auth::AuthConfig,
    /// `--listen-client-urls` with their schemes (`listen_client_addrs` in order).
    pub listen_client_urls: Vec<ListenUrl>,
    /// `--listen-peer-urls` with their schemes (`listen_peer_addrs` in order).
    pub listen_peer_urls: Vec<ListenUrl>,
    /// `--listen-metrics-urls`: HTTP endpoints only; https uses the client TLS.
    pub listen_metrics_urls: Vec<ListenUrl>,
    /// TLS of the client (and metrics) listeners.
    pub client_tls: TlsSettings,
    /// TLS of the peer listener and the peer dialer.
    pub peer_tls: TlsSettings,
    /// `--peer-source-ip`: where peer connections come from.
    pub peer_source_ip: Option<IpAddr>,
}

/// A listen URL: where to bind and whether to speak TLS there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenUrl {
    pub addr: SocketAddr,
    pub https: bool,
}

/// An `http(s)://host:port` URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    pub https: bool,
    /// Without IPv6 brackets.
    pub host: String,
    pub port: u16,
}

impl ParsedUrl {
    /// `host:port` (IPv6 in brackets), to dial.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A flag that does not make sense.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}

fn bad(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

fn url_list(flag: &'static str, raw: &str) -> Result<Vec<String>, ConfigError> {
    let urls: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(bad(flag, "at least one URL is required"));
    }
    for url in &urls {
        host_port(url).map_err(|reason| bad(flag, reason))?;
    }
    Ok(urls)
}

/// `http(s)://host:port` -> (host, port).
fn host_port(url: &str) -> Result<(String, u16), String> {
    parse_url(url).map(|u| (u.host, u.port))
}

/// Takes an `http://` or `https://` URL with a port apart.
pub fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let (https, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (
            false,
            url.strip_prefix("http://")
                .ok_or_else(|| format!("{url:?}: only http:// and https:// URLs are supported"))?,
        ),
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?}: a port is required"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{url:?}: invalid port {port:?}"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(ParsedUrl { https, host, port })
}

fn listen_addrs(flag: &'static str, raw: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    Ok(listen_urls(flag, raw)?
        .into_iter()
        .map(|u| u.addr)
        .collect())
}

fn listen_urls(flag: &'static str, raw: &str) -> Result<Vec<ListenUrl>, ConfigError> {
    let mut out = Vec::new();
    for url in url_list(flag, raw)? {
        let parsed = parse_url(&url).map_err(|r| bad(flag, r))?;
        let (host, port) = (parsed.host, parsed.port);
        let host = if host == "localhost" {
            "127.0.0.1".to_string()
        } else {
            host
        };
        let ip: std::net::IpAddr = host.parse().map_err(|_| {
            bad(
                flag,
                format!("{url:?}: listen on an IP address, not a name"),
            )
        })?;
        out.push(ListenUrl {
            addr: SocketAddr::new(ip, port),
            https: parsed.https,
        });
    }
    Ok(out)
}

/// Parses `name=url,name=url` (a name may repeat for several URLs).
pub fn parse_initial_cluster(raw: &str) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| bad("initial-cluster", format!("{part:?} is not name=url")))?;
        host_port(url).map_err(|r| bad("initial-cluster", r))?;
        out.entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    if out.is_empty() {
        return Err(bad("initial-cluster", "no members"));
    }
    Ok(out)
}

/// A founding member (`--initial-cluster-state new`) must be named in the
/// initial cluster with exactly the peer URLs it advertises.
fn check_founding_member(
    name: &str,
    initial_cluster: &BTreeMap<String, Vec<String>>,
    advertised: &[String],
) -> Result<(), ConfigError> {
    let mine = initial_cluster.get(name).ok_or_else(|| {
        bad(
            "initial-cluster",
            format!("does not name this member ({name:?})"),
        )
    })?;
    let mut mine = mine.clone();
    let mut advertised = advertised.to_vec();
    mine.sort();
    advertised.sort();
    if mine != advertised {
        return Err(bad(
            "initial-cluster",
            format!(
                "lists {mine:?} for {name:?} but --initial-advertise-peer-urls is {advertised:?}"
            ),
        ));
    }
    Ok(())
}

/// The bootstrap flags of a new cluster's member (`witan snapshot
/// restore`), validated as the daemon validates them: name, advertised peer
/// URLs, and the initial cluster (default: this member alone).
#[derive(Debug, Clone)]
pub struct FoundingMember {
    pub name: String,
    pub initial_advertise_peer_urls: Vec<String>,
    /// name -> peer URLs.
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    pub initial_cluster_token: String,
}

impl FoundingMember {
    pub fn parse(
        name: &str,
        initial_cluster: Option<&str>,
        initial_advertise_peer_urls: &str,
        initial_cluster_token: &str,
    ) -> Result<Self, ConfigError> {
        if name.is_empty() {
            return Err(bad("name", "must not be empty"));
        }
        let advertised = url_list("initial-advertise-peer-urls", initial_advertise_peer_urls)?;
        let cluster = match initial_cluster {
            Some(raw) => parse_initial_cluster(raw)?,
            None => BTreeMap::from([(name.to_string(), advertised.clone())]),
        };
        check_founding_member(name, &cluster, &advertised)?;
        Ok(FoundingMember {
            name: name.to_string(),
            initial_advertise_peer_urls: advertised,
            initial_cluster: cluster,
            initial_cluster_token: initial_cluster_token.to_string(),
        })
    }

    /// (member id, cluster id) exactly as a fresh member derives them at
    /// its first start.
    pub fn ids(&self) -> (u64, u64) {
        let token = &self.initial_cluster_token;
        let member_ids: Vec<u64> = self
            .initial_cluster
            .values()
            .map(|urls| crate::ids::member_id(urls, token))
            .collect();
        (
            crate::ids::member_id(&self.initial_advertise_peer_urls, token),
            crate::ids::cluster_id(&member_ids, token),
        )
    }
}

impl Config {
    pub fn from_flags(flags: Flags) -> Result<Self, ConfigError> {
        if flags.name.is_empty() {
            return Err(bad("name", "must not be empty"));
        }
        let initial_advertise_peer_urls = url_list(
            "initial-advertise-peer-urls",
            &flags.initial_advertise_peer_urls,
        )?;
        let initial_cluster = match &flags.initial_cluster {
            Some(raw) => parse_initial_cluster(raw)?,
            None => BTreeMap::from([(flags.name.clone(), initial_advertise_peer_urls.clone())]),
        };
        if flags.initial_cluster_state == ClusterState::New {
            check_founding_member(&flags.name, &initial_cluster, &initial_advertise_peer_urls)?;
        }
        if flags.heartbeat_interval_ms == 0 {
            return Err(bad("heartbeat-interval", "must be positive"));
        }
        if flags.election_timeout_ms < 5 * flags.heartbeat_interval_ms {
            return Err(bad(
                "election-timeout",
                "must be at least 5 times --heartbeat-interval",
            ));
        }
        if flags.snapshot_count == 0 {
            return Err(bad("snapshot-count", "must be positive"));
        }
        let auto_compaction =
            parse_auto_compaction(flags.auto_compaction_mode, &flags.auto_compaction_retention)?;
        let auth = auth_config(&flags)?;
        let data_dir = flags
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.witan", flags.name)));
        let listen_client_urls = listen_urls("listen-client-urls", &flags.listen_client_urls)?;
        let listen_peer_urls = listen_urls("listen-peer-urls", &flags.listen_peer_urls)?;
        let listen_metrics_urls = if flags.listen_metrics_urls.trim().is_empty() {
            Vec::new()
        } else {
            listen_urls("listen-metrics-urls", &flags.listen_metrics_urls)?
        };
        let advertise_client_urls =
            url_list("advertise-client-urls", &flags.advertise_client_urls)?;
        let (client_tls, peer_tls) = tls_settings(
            &flags,
            &data_dir,
            &advertise_client_urls,
            &initial_advertise_peer_urls,
            &initial_cluster,
        )?;
        Ok(Config {
            peer_source_ip: flags.peer_source_ip,
            auth,
            listen_client_urls,
            listen_peer_urls,
            listen_metrics_urls,
            client_tls,
            peer_tls,
            auto_compaction,
            quota_backend_bytes: quota_backend_bytes(flags.quota_backend_bytes),
            data_dir,
            name: flags.name,
            listen_client_addrs: listen_addrs("listen-client-urls", &flags.listen_client_urls)?,
            advertise_client_urls,
            listen_peer_addrs: listen_addrs("listen-peer-urls", &flags.listen_peer_urls)?,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state: flags.initial_cluster_state,
            initial_cluster_token: flags.initial_cluster_token,
            heartbeat_interval_ms: flags.heartbeat_interval_ms,
            election_timeout_ms: flags.election_timeout_ms,
            snapshot_count: flags.snapshot_count,
            max_txn_ops: flags.max_txn_ops,
            max_request_bytes: flags.max_request_bytes,
            max_learners: flags.max_learners,
            watch_progress_notify_interval: flags.watch_progress_notify_interval,
        })
    }

    /// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to seconds.
    pub fn min_lease_ttl_secs(&self) -> i64 {
        (self.election_timeout_ms * 3 / 2).div_ceil(1000) as i64
    }
}

/// The hosts of `urls` (for `--auto-tls` certificates).
fn hosts<'a>(urls: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    urls.into_iter()
        .filter_map(|u| parse_url(u).ok())
        .map(|u| u.host)
        .collect()
}

/// The (client, peer) TLS settings from the TLS flags and the URLs.
fn tls_settings(
    flags: &Flags,
    data_dir: &std::path::Path,
    advertise_client_urls: &[String],
    advertise_peer_urls: &[String],
    initial_cluster: &BTreeMap<String, Vec<String>>,
) -> Result<(TlsSettings, TlsSettings), ConfigError> {
    let tls = &flags.tls;
    let validity_years = tls.self_signed_cert_validity_years;
    if validity_years == 0 && (tls.auto_tls || tls.peer_auto_tls) {
        return Err(bad(
            "self-signed-cert-validity",
            "must be at least 1 (years)",
        ));
    }
    let split = |raw: &str| -> Vec<String> {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let listen_client = split(&flags.listen_client_urls);
    let listen_metrics = split(&flags.listen_metrics_urls);
    let listen_peer = split(&flags.listen_peer_urls);
    let https = |flag: &'static str, urls: &[String]| -> Vec<(&'static str, String)> {
        urls.iter()
            .filter(|u| u.starts_with("https://"))
            .map(|u| (flag, u.clone()))
            .collect()
    };
    let client_https: Vec<(&'static str, String)> = [
        https("listen-client-urls", &listen_client),
        https("listen-metrics-urls", &listen_metrics),
    ]
    .concat();
    let cluster_urls: Vec<String> = initial_cluster.values().flatten().cloned().collect();
    let peer_https: Vec<(&'static str, String)> = [
        https("listen-peer-urls", &listen_peer),
        https("initial-advertise-peer-urls", advertise_peer_urls),
        https("initial-cluster", &cluster_urls),
    ]
    .concat();
    let client_refs: Vec<(&'static str, &str)> =
        client_https.iter().map(|(f, u)| (*f, u.as_str())).collect();
    let peer_refs: Vec<(&'static str, &str)> =
        peer_https.iter().map(|(f, u)| (*f, u.as_str())).collect();
    let fixtures = data_dir.join("fixtures");
    let client = settings::settings(
        Side::Client,
        &SideFlags {
            cert_file: tls.cert_file.as_deref(),
            key_file: tls.key_file.as_deref(),
            trusted_ca_file: tls.trusted_ca_file.as_deref(),
            client_cert_auth: tls.client_cert_auth,
            auto_tls: tls.auto_tls,
        },
        &client_refs,
        AutoTls {
            dir: fixtures.join("client"),
            hosts: hosts(listen_client.iter().chain(advertise_client_urls)),
            validity_years,
        },
    )?;
    let peer = settings::settings(
        Side::Peer,
        &SideFlags {
            cert_file: tls.peer_cert_file.as_deref(),
            key_file: tls.peer_key_file.as_deref(),
            trusted_ca_file: tls.peer_trusted_ca_file.as_deref(),
            client_cert_auth: tls.peer_client_cert_auth,
            auto_tls: tls.peer_auto_tls,
        },
        &peer_refs,
        AutoTls {
            dir: fixtures.join("peer"),
            hosts: hosts(listen_peer.iter().chain(advertise_peer_urls)),
            validity_years,
        },
    )?;
    Ok((client, peer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::CertSource;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["witan"];
        argv.extend_from_slice(args);
        Config::from_flags(Flags::try_parse_from(argv).unwrap())
    }

    #[test]
    fn no_flags_is_a_single_local_member() {
        let cfg = parse(&[]).unwrap();
        assert_eq!(cfg.name, "default");
        assert_eq!(cfg.data_dir, PathBuf::from("default.witan"));
        assert_eq!(
            cfg.listen_client_addrs,
            vec!["127.0.0.1:2379".parse().unwrap()]
        );
        assert_eq!(
            cfg.listen_peer_addrs,
            vec!["127.0.0.1:2380".parse().unwrap()]
        );
        assert_eq!(cfg.initial_cluster.len(), 1);
        assert_eq!(cfg.min_lease_ttl_secs(), 2);
    }

    #[test]
    fn initial_cluster_must_name_this_member_with_its_urls() {
        let err = parse(&["--name", "a", "--initial-cluster", "b=http://127.0.0.1:1"]).unwrap_err();
        assert_eq!(err.flag, "initial-cluster");
        let err = parse(&[
            "--name",
            "a",
            "--initial-cluster",
            "a=http://127.0.0.1:1",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2",
        ])
        .unwrap_err();
        assert_eq!(err.flag, "initial-cluster");
    }

    #[test]
    fn auto_compaction_flags() {
        assert_eq!(parse(&[]).unwrap().auto_compaction, AutoCompaction::Off);
        let periodic = |r: &str| {
            let flag = format!("--auto-compaction-retention={r}");
            parse(&[&flag])
                .map(|c| c.auto_compaction)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            periodic("1h"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            periodic("30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            periodic("5s"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(5)))
        );
        // A bare number is hours, as etcd reads it.
        assert_eq!(
            periodic("2"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(7200)))
        );
        assert_eq!(periodic("0"), Ok(AutoCompaction::Off));
        assert_eq!(periodic("0s"), Ok(AutoCompaction::Off));
        let err = periodic("5x").unwrap_err();
        assert!(err.starts_with("--auto-compaction-retention:"), "{err}");
        assert!(periodic("-1").is_err());

        let revision = |r: &str| {
            let flag = format!("--auto-compaction-retention={r}");
            parse(&["--auto-compaction-mode", "revision", &flag])
                .map(|c| c.auto_compaction)
                .map_err(|e| e.to_string())
        };
        assert_eq!(revision("1000"), Ok(AutoCompaction::Revision(1000)));
        assert_eq!(revision("0"), Ok(AutoCompaction::Off));
        assert!(revision("1h").unwrap_err().contains("number of revisions"));
        assert!(revision("-5").unwrap_err().contains("negative"));
        assert!(
            Flags::try_parse_from(["witan", "--auto-compaction-mode", "daily"]).is_err(),
            "an unknown mode is refused"
        );
    }

    #[test]
    fn quota_backend_bytes_reads_as_etcds() {
        let quota = |args: &[&str]| parse(args).unwrap().quota_backend_bytes;
        assert_eq!(quota(&[]), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(
            quota(&["--quota-backend-bytes", "0"]),
            Some(2 * 1024 * 1024 * 1024)
        );
        assert_eq!(
            quota(&["--quota-backend-bytes", "8388608"]),
            Some(8_388_608)
        );
        assert_eq!(quota(&["--quota-backend-bytes", "-1"]), None);
        assert!(Flags::try_parse_from(["witan", "--quota-backend-bytes", "2GiB"]).is_err());
    }

    #[test]
    fn tls_flags() {
        // Plain http stays the default and needs no TLS.
        let cfg = parse(&[]).unwrap();
        assert_eq!(cfg.client_tls, TlsSettings::default());
        assert!(cfg.listen_metrics_urls.is_empty());
        assert!(!cfg.listen_client_urls[0].https);

        let err = parse(&["--listen-client-urls", "https://127.0.0.1:2379"]).unwrap_err();
        assert_eq!(err.flag, "listen-client-urls");
        assert!(err.reason.contains("must be provided"), "{err}");

        // Go-style booleans: bare, =true and =false.
        let https = [
            "--listen-client-urls",
            "https://127.0.0.1:2379",
            "--cert-file",
            "c.pem",
            "--key-file",
            "k.pem",
            "--trusted-ca-file",
            "ca.pem",
            "--listen-metrics-urls",
            "http://127.0.0.1:2381",
        ];
        for (flag, expected) in [
            ("--client-cert-auth", true),
            ("--client-cert-auth=true", true),
            ("--client-cert-auth=false", false),
        ] {
            let mut args = https.to_vec();
            args.push(flag);
            let cfg = parse(&args).unwrap();
            assert_eq!(cfg.client_tls.client_cert_auth, expected, "{flag}");
            assert!(cfg.listen_client_urls[0].https);
            assert_eq!(
                cfg.listen_metrics_urls,
                vec![ListenUrl {
                    addr: "127.0.0.1:2381".parse().unwrap(),
                    https: false
                }]
            );
        }

        // --auto-tls keeps its certificate under the data dir.
        let cfg = parse(&[
            "--data-dir",
            "/d",
            "--auto-tls",
            "--listen-client-urls",
            "https://127.0.0.1:2379",
        ])
        .unwrap();
        match cfg.client_tls.cert {
            Some(CertSource::Auto { dir, hosts, .. }) => {
                assert_eq!(dir, PathBuf::from("/d/fixtures/client"));
                assert!(hosts.contains(&"127.0.0.1".to_string()));
            }
            other => panic!("{other:?}"),
        }
        let err = parse(&["--auto-tls", "--self-signed-cert-validity", "0"]).unwrap_err();
        assert_eq!(err.flag, "self-signed-cert-validity");

        // https peers: the peer certificate and a CA to verify the others.
        let peer = "https://127.0.0.1:2380";
        let err = parse(&[
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .unwrap_err();
        assert!(err.reason.contains("--peer-cert-file"), "{err}");
        let cfg = parse(&[
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--peer-auto-tls",
        ])
        .unwrap();
        assert!(matches!(cfg.peer_tls.cert, Some(CertSource::Auto { .. })));
        assert!(cfg.listen_peer_urls[0].https);
    }

    #[test]
    fn durations_and_urls() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("5x").is_err());
        assert!(host_port("ftp://a:1").is_err());
        assert_eq!(host_port("https://a:1"), Ok(("a".to_string(), 1)));
        assert_eq!(
            host_port("http://[::1]:2379"),
            Ok(("::1".to_string(), 2379))
        );
    }

    #[test]
    fn auth_flags() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.auth, crate::auth::AuthConfig::default());
        let config = parse(&["--auth-token-ttl", "2", "--bcrypt-cost", "4"]).unwrap();
        assert_eq!(config.auth.token_ttl, Duration::from_secs(2));
        assert_eq!(config.auth.bcrypt_cost, 4);
        assert!(parse(&["--bcrypt-cost", "3"]).is_err());
        assert!(parse(&["--auth-token-ttl", "0"]).is_err());
        assert!(parse(&["--auth-token", "jwt"]).is_err());
        assert!(
            parse(&[
                "--auth-token",
                "jwt,sign-method=RS256,pub-key=/p,priv-key=/k"
            ])
            .is_ok()
        );
    }
}
