//! `spec.bootstrap.restore`: founding members start from a backup.
//!
//! Each member pod of a KvCluster with `spec.bootstrap.restore` has two
//! init containers (built by `resources::statefulset`), sharing an
//! emptyDir mounted at [`WORK_DIR`]:
//!
//! 1. [`FETCH_CONTAINER`], the operator image: `witan-operator
//!    restore-fetch` ([`fetch`]). It copies its own binary into the work
//!    dir, then [`choose::decide`]s: a member whose data dir has anything
//!    in it, or that joins an existing cluster, restores nothing. Otherwise
//!    it finds the backup (a name, or [`choose::latest`]), downloads it with
//!    the same `object_store` code the backups use, checks its framing and
//!    SHA-256 trailer while it streams, and renames it into place only when
//!    it checked out.
//! 2. [`APPLY_CONTAINER`], the member's own witan image, running the
//!    operator binary the first step left in the work dir: `witan-operator
//!    restore-apply -- witan snapshot restore ...` ([`apply`]). It runs the
//!    command only if a checked backup is there, so the node image (no
//!    shell) needs nothing but `witan`, and the witan that builds the data
//!    dir is the version that will run it.
//!
//! Both report JSON as their termination message ([`report`]); the
//! controller turns it into the `Restored` condition ([`observe`]).

pub mod argv;
pub mod choose;
pub mod observe;
pub mod report;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use futures::TryStreamExt as _;
use k8s_openapi::jiff::Timestamp;
use object_store::{ObjectStore, ObjectStoreExt as _, path::Path as ObjectPath};
use tracing::info;

use self::{
    choose::Decision,
    report::{Fetched, RestoreOutcome},
};
use crate::backup::{
    DEFAULT_TERMINATION_LOG,
    destination::{Destination, S3Options},
    verify::{SnapshotError, SnapshotVerifier},
};

/// The init container that fetches the backup (operator image).
pub const FETCH_CONTAINER: &str = "restore-fetch";
/// The init container that builds the data dir (node image).
pub const APPLY_CONTAINER: &str = "restore";
/// The emptyDir both init containers share.
pub const WORK_DIR: &str = "/var/lib/witan-restore";
/// The checked backup, in the work dir.
pub const SNAPSHOT_FILE: &str = "backup.witan-snapshot";
/// What was fetched ([`Fetched`] as JSON), next to it.
pub const FETCHED_FILE: &str = "backup.json";
/// The operator binary, copied into the work dir for the second step.
pub const BINARY_IN_WORK_DIR: &str = "bin/witan-operator";

/// Flags of `witan-operator restore-fetch`.
#[derive(Clone, Debug, clap::Args)]
pub struct FetchArgs {
    /// `s3://bucket/prefix` or an absolute directory path.
    #[arg(long, env = "WITAN_RESTORE_SOURCE")]
    pub source: String,
    /// The backup's file name, or `latest`.
    #[arg(long, env = "WITAN_RESTORE_BACKUP")]
    pub backup: String,
    /// With `latest`: whose backups to choose among.
    #[arg(long, env = "WITAN_RESTORE_SOURCE_CLUSTER")]
    pub source_cluster: Option<String>,
    /// With `latest`: ignore backups taken after this time (RFC 3339), so
    /// every member chooses the same one.
    #[arg(long, env = "WITAN_RESTORE_NOT_AFTER")]
    pub not_after: Option<Timestamp>,
    /// The member's data dir: anything in it and nothing is restored.
    #[arg(long, env = "WITAN_DATA_DIR")]
    pub data_dir: PathBuf,
    /// `new` for a founding member; anything else restores nothing.
    #[arg(long, env = "WITAN_INITIAL_CLUSTER_STATE", default_value = "")]
    pub initial_cluster_state: String,
    /// Where the checked backup and this binary are left for the next step.
    #[arg(long, env = "WITAN_RESTORE_WORK_DIR", default_value = WORK_DIR)]
    pub work_dir: PathBuf,
    /// S3 endpoint URL (AWS when unset).
    #[arg(long, env = "WITAN_RESTORE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "WITAN_RESTORE_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Path-style S3 requests (most self-hosted servers need them).
    #[arg(long, env = "WITAN_RESTORE_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    #[arg(long, env = "WITAN_RESTORE_TERMINATION_LOG", default_value = DEFAULT_TERMINATION_LOG)]
    pub termination_log: PathBuf,
    /// Bound on the whole step, in seconds.
    #[arg(long, env = "WITAN_RESTORE_TIMEOUT_SECONDS", default_value_t = 1800)]
    pub timeout_seconds: u64,
}

/// Flags of `witan-operator restore-apply`.
#[derive(Clone, Debug, clap::Args)]
pub struct ApplyArgs {
    #[arg(long, env = "WITAN_RESTORE_WORK_DIR", default_value = WORK_DIR)]
    pub work_dir: PathBuf,
    #[arg(long, env = "WITAN_RESTORE_TERMINATION_LOG", default_value = DEFAULT_TERMINATION_LOG)]
    pub termination_log: PathBuf,
    /// `witan snapshot restore ...`, run when a checked backup is there.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Store {
        what: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no backup of cluster {cluster:?} in {source_location}{bound} ({seen} files there)")]
    NoBackup {
        cluster: String,
        source_location: String,
        bound: String,
        seen: usize,
    },
    #[error("backup {location} is not a valid witan snapshot: {source}")]
    Invalid {
        location: String,
        #[source]
        source: SnapshotError,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("fetching the backup did not finish within {0:?}")]
    Timeout(Duration),
}

impl From<crate::backup::BackupError> for RestoreError {
    fn from(error: crate::backup::BackupError) -> Self {
        RestoreError::Config(error.to_string())
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Io { what, source }
}

/// `restore-fetch`: decide, fetch and check; report the outcome.
pub async fn fetch(args: &FetchArgs) -> Result<RestoreOutcome, RestoreError> {
    let timeout = Duration::from_secs(args.timeout_seconds);
    let result = match tokio::time::timeout(timeout, fetch_inner(args)).await {
        Ok(result) => result,
        Err(_) => Err(RestoreError::Timeout(timeout)),
    };
    let outcome = match &result {
        Ok(outcome) => outcome.clone(),
        Err(error) => RestoreOutcome::Failed {
            error: error.to_string(),
        },
    };
    outcome.publish(&args.termination_log);
    result
}

async fn fetch_inner(args: &FetchArgs) -> Result<RestoreOutcome, RestoreError> {
    let work = &args.work_dir;
    install_self(work)?;
    // A backup left from an earlier, interrupted run must never be applied
    // after this run decided otherwise.
    for stale in [SNAPSHOT_FILE, FETCHED_FILE] {
        remove_if_present(&work.join(stale))?;
    }
    let has_data = has_entries(&args.data_dir)?;
    if let Decision::Skip(reason) = choose::decide(has_data, &args.initial_cluster_state) {
        info!("{reason}");
        return Ok(RestoreOutcome::Skipped { reason });
    }

    let source = Destination::parse(&args.source)?;
    let store = source.open(&S3Options {
        endpoint: args.s3_endpoint.clone(),
        region: args.s3_region.clone(),
        path_style: args.s3_path_style,
        access_key_id: args.s3_access_key_id.clone(),
        secret_access_key: args.s3_secret_access_key.clone(),
    })?;
    let prefix = source.prefix();
    let name = resolve(&*store, &source, &prefix, args).await?;
    let location = source.location(&name);
    let path = if prefix.as_ref().is_empty() {
        ObjectPath::from(name.as_str())
    } else {
        prefix.clone().join(name.as_str())
    };
    info!(%location, "fetching backup");

    let partial = work.join(format!("{SNAPSHOT_FILE}.part"));
    let result = download(&*store, &path, &location, &partial).await;
    let verified = match result {
        Ok(verified) => verified,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    let backup = Fetched {
        location: location.clone(),
        size: verified.size,
        sha256: verified.sha256,
    };
    let json = serde_json::to_vec(&backup).map_err(|e| RestoreError::Config(e.to_string()))?;
    write_synced(&work.join(FETCHED_FILE), &json)?;
    // Last: the snapshot's presence is what tells the next step to run.
    std::fs::rename(&partial, work.join(SNAPSHOT_FILE))
        .map_err(io(format!("renaming {}", partial.display())))?;
    sync_dir(work)?;
    info!(%location, size = backup.size, "fetched and checked backup");
    Ok(RestoreOutcome::Fetched { backup })
}

/// The backup's file name: `args.backup`, or the one `latest` stands for.
async fn resolve(
    store: &dyn ObjectStore,
    source: &Destination,
    prefix: &ObjectPath,
    args: &FetchArgs,
) -> Result<String, RestoreError> {
    if args.backup != crate::crd::LATEST {
        choose::check_name(&args.backup).map_err(RestoreError::Config)?;
        return Ok(args.backup.clone());
    }
    let cluster = args
        .source_cluster
        .clone()
        .ok_or_else(|| RestoreError::Config("--backup latest needs --source-cluster".into()))?;
    let listed = store
        .list_with_delimiter((!prefix.as_ref().is_empty()).then_some(prefix))
        .await
        .map_err(|source| RestoreError::Store {
            what: format!("listing {}", args.source),
            source,
        })?;
    let names: Vec<String> = listed
        .objects
        .iter()
        .filter_map(|o| o.location.filename().map(str::to_string))
        .collect();
    choose::latest(&names, &cluster, args.not_after).ok_or_else(|| RestoreError::NoBackup {
        cluster,
        source_location: source.location(""),
        bound: args
            .not_after
            .map_or_else(String::new, |t| format!(" taken before {t}")),
        seen: names.len(),
    })
}

/// Streams `path` into `partial`, checking it on the way; fsyncs.
async fn download(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    location: &str,
    partial: &Path,
) -> Result<crate::backup::verify::Verified, RestoreError> {
    let got = store
        .get(path)
        .await
        .map_err(|source| RestoreError::Store {
            what: format!("reading {location}"),
            source,
        })?;
    let mut file =
        std::fs::File::create(partial).map_err(io(format!("creating {}", partial.display())))?;
    let mut verifier = SnapshotVerifier::new();
    let mut stream = got.into_stream();
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|source| RestoreError::Store {
            what: format!("reading {location}"),
            source,
        })?
    {
        verifier.update(&chunk);
        file.write_all(&chunk)
            .map_err(io(format!("writing {}", partial.display())))?;
    }
    let verified = verifier.finish().map_err(|source| RestoreError::Invalid {
        location: location.to_string(),
        source,
    })?;
    file.sync_all()
        .map_err(io(format!("syncing {}", partial.display())))?;
    Ok(verified)
}

/// Copies the running binary to the work dir (executable), for the next
/// init container, which runs in the node image.
fn install_self(work: &Path) -> Result<(), RestoreError> {
    use std::os::unix::fs::PermissionsExt as _;
    let exe = std::env::current_exe().map_err(io("finding this binary"))?;
    let target = work.join(BINARY_IN_WORK_DIR);
    let dir = target.parent().unwrap_or(work);
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let staged = dir.join(".witan-operator.part");
    std::fs::copy(&exe, &staged).map_err(io(format!(
        "copying {} to {}",
        exe.display(),
        staged.display()
    )))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
        .map_err(io(format!("chmod {}", staged.display())))?;
    std::fs::rename(&staged, &target).map_err(io(format!("renaming to {}", target.display())))
}

/// Whether `dir` exists and has anything in it.
pub fn has_entries(dir: &Path) -> Result<bool, RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(format!("reading {}", dir.display()))(e)),
    }
}

fn remove_if_present(path: &Path) -> Result<(), RestoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("removing {}", path.display()))(e)),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), RestoreError> {
    let mut file =
        std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(format!("writing {}", path.display())))
}

fn sync_dir(dir: &Path) -> Result<(), RestoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", dir.display())))
}

/// `restore-apply`: run the command if a checked backup is in the work dir;
/// report the outcome.
pub fn apply(args: &ApplyArgs) -> Result<RestoreOutcome, RestoreError> {
    let result = apply_inner(args);
    let outcome = match &result {
        Ok(outcome) => outcome.clone(),
        Err(error) => RestoreOutcome::Failed {
            error: error.to_string(),
        },
    };
    outcome.publish(&args.termination_log);
    result
}

fn apply_inner(args: &ApplyArgs) -> Result<RestoreOutcome, RestoreError> {
    let snapshot = args.work_dir.join(SNAPSHOT_FILE);
    if !snapshot.exists() {
        return Ok(RestoreOutcome::Skipped {
            reason: "no backup was fetched for this member".into(),
        });
    }
    let fetched_file = args.work_dir.join(FETCHED_FILE);
    let backup: Fetched = std::fs::read(&fetched_file)
        .map_err(io(format!("reading {}", fetched_file.display())))
        .and_then(|raw| {
            serde_json::from_slice(&raw)
                .map_err(|e| RestoreError::Config(format!("{}: {e}", fetched_file.display())))
        })?;
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| RestoreError::Config("no command to run".into()))?;
    let shown = args.command.join(" ");
    info!(command = %shown, "restoring");
    let output = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("running {program}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    if !output.status.success() {
        return Err(RestoreError::Command {
            command: shown,
            status: output.status.to_string(),
            output: format!("{} {}", stdout.trim(), stderr.trim())
                .trim()
                .to_string(),
        });
    }
    // Done: the data dir is built, so the pod's later restarts skip; free
    // the emptyDir's space.
    remove_if_present(&snapshot)?;
    remove_if_present(&fetched_file)?;
    Ok(RestoreOutcome::Restored {
        backup,
        revision: argv::restored_revision(&stdout),
    })
}
