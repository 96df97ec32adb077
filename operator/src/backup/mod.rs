//! `witan-operator backup`: what the backup CronJob runs.
//!
//! 1. Stream a snapshot from the cluster with `Maintenance.Snapshot` (what
//!    `etcdctl snapshot save` uses) and, as it streams, upload it and check
//!    its framing and SHA-256 trailer ([`verify`]); a bad snapshot is never
//!    completed, so no partial or corrupt object ever becomes visible (an S3
//!    multipart upload is aborted, a directory's staged file removed).
//! 2. Name it `<cluster>-<UTC time>-rev<revision>.witan-snapshot`
//!    ([`naming`]). The revision is the one the member puts in the first
//!    message's header, which witan sets to the revision of the image it
//!    captured in the same read transaction (not a Status taken before or
//!    after, which could differ from what the file holds).
//! 3. Delete all but the newest `retention` backups of this cluster
//!    ([`retention`], pure).
//! 4. Report `{time, revision, size, location, ...}` as JSON on stdout and in
//!    the termination log ([`report`]), which the controller turns into
//!    `status.lastBackup` and `BackupReady` ([`observe`], pure).
//!
//! Snapshot files are documented in docs/storage.md; restore one with
//! `witan snapshot restore`.

pub mod destination;
pub mod naming;
pub mod observe;
pub mod report;
pub mod retention;
pub mod trigger;
pub mod verify;

use std::{path::PathBuf, time::Duration};

use crate::access::{Access, ClientTls, Credentials};
use k8s_openapi::jiff::Timestamp;
use object_store::{ObjectStoreExt as _, buffered::BufWriter, path::Path as ObjectPath};
use tokio::io::AsyncWriteExt as _;
use tracing::{info, warn};

use self::{
    destination::{Destination, S3Options},
    naming::BackupName,
    report::{BackupReport, Outcome},
    verify::{SnapshotError, SnapshotVerifier},
};

/// The container name in the backup pods (the controller finds the
/// termination message by it).
pub const CONTAINER: &str = "backup";
/// Where Kubernetes reads a container's termination message by default.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// Uploads buffer this much before switching to a multipart upload.
const UPLOAD_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Flags of `witan-operator backup`.
#[derive(Clone, Debug, clap::Args)]
pub struct BackupArgs {
    /// Client URLs of the cluster, comma-separated (the client Service).
    #[arg(
        long,
        env = "WITAN_BACKUP_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub endpoints: Vec<String>,
    /// The KvCluster's name: the first part of every backup's name.
    #[arg(long, env = "WITAN_BACKUP_CLUSTER")]
    pub cluster: String,
    /// `s3://bucket/prefix` or an absolute directory path.
    #[arg(long, env = "WITAN_BACKUP_DESTINATION")]
    pub destination: String,
    /// How many backups of this cluster to keep.
    #[arg(long, env = "WITAN_BACKUP_RETENTION", default_value_t = 7,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub retention: u32,
    /// S3 endpoint URL (AWS when unset), e.g. `http://minio.storage:9000`.
    #[arg(long, env = "WITAN_BACKUP_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "WITAN_BACKUP_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Path-style S3 requests (most self-hosted servers need them).
    #[arg(long, env = "WITAN_BACKUP_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// Where the JSON outcome is written for Kubernetes to read.
    #[arg(long, env = "WITAN_BACKUP_TERMINATION_LOG", default_value = DEFAULT_TERMINATION_LOG)]
    pub termination_log: PathBuf,
    /// Bound on connecting to the cluster, in seconds.
    #[arg(
        long,
        env = "WITAN_BACKUP_CONNECT_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub connect_timeout_seconds: u64,
    /// CA certificate (PEM) that verifies the members (etcdctl's `--cacert`);
    /// https endpoints need it.
    #[arg(long, env = "WITAN_BACKUP_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) presented to the members (`--cert`).
    #[arg(long, env = "WITAN_BACKUP_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM) (`--key`).
    #[arg(long, env = "WITAN_BACKUP_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// User to authenticate as when the cluster has auth enabled.
    #[arg(long, env = "WITAN_BACKUP_USER", requires = "password")]
    pub user: Option<String>,
    #[arg(long, env = "WITAN_BACKUP_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Bound on the whole run, in seconds.
    #[arg(long, env = "WITAN_BACKUP_TIMEOUT_SECONDS", default_value_t = 1800)]
    pub timeout_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Etcd {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("the snapshot stream's first message has no header revision")]
    NoRevision,
    #[error("snapshot from the cluster is invalid: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("{what}: {source}")]
    Store {
        what: &'static str,
        #[source]
        source: object_store::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stored {location} has {found} bytes, the snapshot had {expected}")]
    SizeMismatch {
        location: String,
        found: u64,
        expected: u64,
    },
    #[error("stored {stored}, but pruning old backups failed: {source}")]
    Prune {
        stored: String,
        #[source]
        source: object_store::Error,
    },
    #[error("the backup did not finish within {0:?}")]
    Timeout(Duration),
}

/// Takes one backup, prunes, and writes the outcome to stdout and the
/// termination log. Returns the outcome's error for the exit status.
pub async fn run(args: &BackupArgs) -> Result<BackupReport, BackupError> {
    let timeout = Duration::from_secs(args.timeout_seconds);
    let result = match tokio::time::timeout(timeout, take(args)).await {
        Ok(result) => result,
        Err(_) => Err(BackupError::Timeout(timeout)),
    };
    let outcome = match &result {
        Ok(report) => Outcome::Stored(report.clone()),
        Err(error) => Outcome::Failed {
            error: error.to_string(),
        },
    };
    println!("{}", outcome.to_json());
    if let Err(error) = report::write_termination_log(&args.termination_log, &outcome) {
        // Handled here: outside a pod there may be no termination log.
        warn!(
            path = %args.termination_log.display(),
            "writing the termination log failed: {error}"
        );
    }
    result
}

async fn take(args: &BackupArgs) -> Result<BackupReport, BackupError> {
    if args.cluster.is_empty() || args.cluster.contains('/') {
        return Err(BackupError::Config(format!(
            "--cluster {:?} is not a cluster name",
            args.cluster
        )));
    }
    let destination = Destination::parse(&args.destination)?;
    let store = destination.open(&S3Options {
        endpoint: args.s3_endpoint.clone(),
        region: args.s3_region.clone(),
        path_style: args.s3_path_style,
        access_key_id: args.s3_access_key_id.clone(),
        secret_access_key: args.s3_secret_access_key.clone(),
    })?;
    let prefix = destination.prefix();

    let access = access(args)?;
    let mut client = crate::access::connect(
        &args.endpoints,
        &access,
        Duration::from_secs(args.connect_timeout_seconds),
        None,
    )
    .await
    .map_err(|source| BackupError::Etcd {
        what: "connecting to the cluster",
        source,
    })?;
    let time = Timestamp::now();
    let mut stream = client
        .snapshot()
        .await
        .map_err(|source| BackupError::Etcd {
            what: "starting the snapshot",
            source,
        })?;
    let next = |what| move |source| BackupError::Etcd { what, source };
    let first = stream
        .message()
        .await
        .map_err(next("reading the snapshot"))?;
    let revision = first
        .as_ref()
        .and_then(|m| m.header())
        .map(|h| h.revision())
        .filter(|r| *r > 0)
        .ok_or(BackupError::NoRevision)?;

    let name = BackupName {
        cluster: args.cluster.clone(),
        time,
        revision,
    }
    .render();
    let path = prefix.clone().join(name.as_str());
    let location = destination.location(&name);
    info!(%location, revision, "streaming snapshot");

    let mut verifier = SnapshotVerifier::new();
    let mut upload = BufWriter::with_capacity(store.clone(), path.clone(), UPLOAD_BUFFER_BYTES);
    let streamed: Result<(), BackupError> = async {
        let mut message = first;
        while let Some(m) = message {
            verifier.update(m.blob());
            upload
                .write_all(m.blob())
                .await
                .map_err(|source| BackupError::Io {
                    what: format!("uploading {location}"),
                    source,
                })?;
            message = stream
                .message()
                .await
                .map_err(next("reading the snapshot"))?;
        }
        Ok(())
    }
    .await;
    let verified = streamed.and_then(|()| verifier.finish().map_err(BackupError::from));
    let verified = match verified {
        Ok(verified) => verified,
        Err(error) => {
            // Never complete a bad upload; the object does not appear.
            if let Err(abort) = upload.abort().await {
                warn!("aborting the upload of {location} failed: {abort}");
            }
            return Err(error);
        }
    };
    upload.shutdown().await.map_err(|source| BackupError::Io {
        what: format!("completing the upload of {location}"),
        source,
    })?;
    let stored = store
        .head(&path)
        .await
        .map_err(|source| BackupError::Store {
            what: "reading back the stored snapshot",
            source,
        })?;
    if stored.size != verified.size {
        return Err(BackupError::SizeMismatch {
            location,
            found: stored.size,
            expected: verified.size,
        });
    }
    info!(%location, revision, size = verified.size, "stored snapshot");

    let pruned = prune(&*store, &destination, &prefix, args, &name)
        .await
        .map_err(|source| BackupError::Prune {
            stored: location.clone(),
            source,
        })?;
    Ok(BackupReport {
        time: time.to_string(),
        revision,
        size: verified.size,
        location,
        sha256: verified.sha256,
        pruned,
    })
}

/// The TLS material and credentials the flags name, read from disk.
fn access(args: &BackupArgs) -> Result<Access, BackupError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| BackupError::Io {
            what: format!("reading {}", path.display()),
            source,
        })
    };
    let tls = match (&args.cacert, &args.cert, &args.key) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => Some(ClientTls {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        }),
        _ => {
            return Err(BackupError::Config(
                "--cacert, --cert and --key go together".into(),
            ));
        }
    };
    let credentials = match (&args.user, &args.password) {
        (Some(user), Some(password)) => Some(Credentials {
            user: user.clone(),
            password: password.clone(),
        }),
        _ => None,
    };
    Ok(Access { tls, credentials })
}

/// Deletes what [`retention::to_prune`] chooses; returns their locations.
async fn prune(
    store: &dyn object_store::ObjectStore,
    destination: &Destination,
    prefix: &ObjectPath,
    args: &BackupArgs,
    just_written: &str,
) -> Result<Vec<String>, object_store::Error> {
    let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
    let listed = store.list_with_delimiter(prefix).await?;
    let names: Vec<String> = listed
        .objects
        .iter()
        .filter_map(|o| o.location.filename().map(str::to_string))
        .collect();
    let doomed = retention::to_prune(
        &names,
        &args.cluster,
        usize::try_from(args.retention).unwrap_or(usize::MAX),
        just_written,
    );
    let mut pruned = Vec::new();
    for name in doomed {
        let path = match prefix {
            Some(prefix) => prefix.clone().join(name.as_str()),
            None => ObjectPath::from(name.as_str()),
        };
        store.delete(&path).await?;
        let location = destination.location(&name);
        info!(%location, "pruned old backup");
        pruned.push(location);
    }
    Ok(pruned)
}
