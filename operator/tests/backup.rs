//! `witan-operator backup` end to end: the real binary takes snapshots of a
//! real witan cluster and stores them in a real S3-compatible server
//! (`s3s-fs`, on loopback with SigV4 authentication) or a directory, prunes
//! to the retention, and what it stored restores: `witan snapshot status`
//! on the downloaded object shows the reported revision, keys and hash.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder as ConnBuilder,
};
use object_store::{ObjectStore, ObjectStoreExt as _, path::Path as ObjectPath};
use serde_json::Value;
use witan_operator::backup::{
    destination::{Destination, S3Options},
    naming::BackupName,
    report::{BackupReport, Outcome},
};
use witan_tests::{Cluster, json, revision_of, run_bounded, witan_bin};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const ACCESS_KEY: &str = "witan-test-access";
const SECRET_KEY: &str = "witan-test-secret-key";

/// An S3-compatible server (`s3s-fs` over a temp dir) on a loopback port,
/// served by its own runtime until dropped.
struct S3Server {
    addr: SocketAddr,
    root: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
}

impl S3Server {
    fn start(buckets: &[&str]) -> S3Server {
        let root = tempfile::tempdir().expect("s3 root");
        for bucket in buckets {
            std::fs::create_dir(root.path().join(bucket)).expect("bucket dir");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind s3 listener");
        let addr = listener.local_addr().expect("s3 addr");
        runtime.spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        S3Server {
            addr,
            root,
            runtime,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of the same kind the backup uses (object_store), for
    /// checking what was stored.
    fn client(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Destination::parse(&format!("s3://{bucket}"))
            .unwrap()
            .open(&S3Options {
                endpoint: Some(self.endpoint()),
                region: "us-east-1".into(),
                path_style: true,
                access_key_id: Some(ACCESS_KEY.into()),
                secret_access_key: Some(SECRET_KEY.into()),
            })
            .expect("s3 client")
    }

    /// Object names directly under `prefix`, sorted.
    fn list(&self, store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
        let listed = self
            .runtime
            .block_on(store.list_with_delimiter(Some(&ObjectPath::from(prefix))))
            .expect("list");
        let mut names: Vec<String> = listed
            .objects
            .iter()
            .map(|o| o.location.filename().unwrap().to_string())
            .collect();
        names.sort();
        names
    }
}

/// What one `witan-operator backup` run did.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
    termination: String,
}

impl Run {
    fn outcome(&self) -> Outcome {
        let last = self.stdout.lines().last().unwrap_or_default();
        Outcome::parse(last).unwrap_or_else(|| {
            panic!(
                "no outcome on stdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    fn report(&self) -> BackupReport {
        assert!(self.ok, "backup failed:\n{}\n{}", self.stdout, self.stderr);
        let Outcome::Stored(report) = self.outcome() else {
            panic!("not a report: {}", self.stdout);
        };
        // The controller reads the same JSON from the termination message.
        assert_eq!(Outcome::parse(&self.termination), Some(self.outcome()));
        report
    }
}

fn backup(args: &[String], env: &[(&str, &str)], scratch: &Path) -> Run {
    let termination = scratch.join(format!("termination-{}", rand_suffix()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_witan-operator"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("WITAN_") || name.starts_with("AWS_") {
            cmd.env_remove(&*name);
        }
    }
    cmd.arg("backup")
        .args(args)
        .arg("--termination-log")
        .arg(&termination)
        .arg("--connect-timeout-seconds=2")
        .arg("--timeout-seconds=30")
        .envs(env.iter().copied());
    let done = run_bounded(cmd, None, RUN_TIMEOUT);
    Run {
        ok: done.status.is_some_and(|s| s.success()),
        stdout: done.stdout,
        stderr: done.stderr,
        termination: std::fs::read_to_string(&termination).unwrap_or_default(),
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `witan snapshot status FILE -w json`.
fn snapshot_status(file: &Path) -> Value {
    let mut cmd = Command::new(witan_bin());
    cmd.args(["snapshot", "status"])
        .arg(file)
        .args(["-w", "json"]);
    let done = run_bounded(cmd, None, RUN_TIMEOUT);
    assert!(
        done.status.is_some_and(|s| s.success()),
        "witan snapshot status {}:\n{}\n{}",
        file.display(),
        done.stdout,
        done.stderr
    );
    json(&done.stdout)
}

/// Writes one key and waits until every member applied it, so a snapshot
/// from any member holds it. Returns its revision.
fn put(c: &Cluster, key: &str) -> i64 {
    let revision = revision_of(&c.ctl(&["put", key, "value", "-w", "json"]));
    for i in 0..c.len() {
        c.wait_applied(i, revision);
    }
    revision
}

fn file_name(location: &str) -> String {
    location.rsplit('/').next().unwrap().to_string()
}

/// A restorable snapshot: `witan snapshot status` agrees with the report
/// and the name, and holds `keys` keys.
fn assert_restorable(file: &Path, report: &BackupReport, keys: u64) {
    let status = snapshot_status(file);
    assert_eq!(
        status["revision"].as_i64(),
        Some(report.revision),
        "{status}"
    );
    assert_eq!(status["totalKey"].as_u64(), Some(keys), "{status}");
    assert_eq!(status["totalSize"].as_u64(), Some(report.size), "{status}");
    assert_eq!(status["hash"].as_str(), Some(report.sha256.as_str()));
    let name = BackupName::parse(&file_name(&report.location)).expect("a backup name");
    assert_eq!(name.revision, report.revision);
    assert_eq!(name.cluster, "kv");

    // And it restores into a new member's data dir.
    let target = tempfile::tempdir().unwrap();
    let data_dir = target.path().join("restored");
    let mut cmd = Command::new(witan_bin());
    cmd.args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(&data_dir)
        .args([
            "--name",
            "r1",
            "--initial-cluster",
            "r1=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster-token",
            "restored",
        ]);
    let done = run_bounded(cmd, None, RUN_TIMEOUT);
    assert!(
        done.status.is_some_and(|s| s.success()),
        "{}\n{}",
        done.stdout,
        done.stderr
    );
    assert!(
        done.stdout.contains(&format!(
            "restored snapshot at revision {} ",
            report.revision
        )),
        "{}",
        done.stdout
    );
    assert!(data_dir.is_dir());
}

#[test]
fn backups_to_s3_are_verified_pruned_to_retention_and_restorable() {
    let c = Cluster::start(3);
    let s3 = S3Server::start(&["backups"]);
    let store = s3.client("backups");
    let scratch = tempfile::tempdir().unwrap();
    // Things retention must never touch: another cluster's backup and a
    // foreign object under the same prefix.
    let other = BackupName {
        cluster: "kv-other".into(),
        time: "2020-01-01T00:00:00Z".parse().unwrap(),
        revision: 1,
    }
    .render();
    for name in [other.as_str(), "README"] {
        s3.runtime
            .block_on(store.put(
                &ObjectPath::from(format!("prod/kv/{name}")),
                b"not a snapshot".to_vec().into(),
            ))
            .expect("seed object");
    }

    let args = |retention: u32| -> Vec<String> {
        vec![
            format!("--endpoints={}", c.members()[0].client_url()),
            format!("--endpoints={}", c.members()[1].client_url()),
            "--cluster=kv".into(),
            "--destination=s3://backups/prod/kv".into(),
            format!("--s3-endpoint={}", s3.endpoint()),
            "--s3-path-style".into(),
            format!("--retention={retention}"),
        ]
    };
    let creds = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ];

    // Retention 2, run 4 times: the 2 newest remain.
    const RETENTION: usize = 2;
    let mut reports = Vec::new();
    for i in 0..RETENTION + 2 {
        let revision = put(&c, &format!("key-{i}"));
        let report = backup(&args(RETENTION as u32), &creds, scratch.path()).report();
        assert_eq!(
            report.revision, revision,
            "the snapshot holds the last write"
        );
        assert!(
            report.location.starts_with("s3://backups/prod/kv/kv-"),
            "{}",
            report.location
        );
        reports.push(report);
    }
    assert_eq!(reports[2].pruned, vec![reports[0].location.clone()]);
    assert_eq!(reports[3].pruned, vec![reports[1].location.clone()]);

    let mut expected: Vec<String> = reports[RETENTION..]
        .iter()
        .map(|r| file_name(&r.location))
        .collect();
    expected.push(other.clone());
    expected.push("README".into());
    expected.sort();
    assert_eq!(s3.list(&store, "prod/kv"), expected);

    // The newest object, downloaded through S3, is a snapshot that restores.
    let newest = reports.last().unwrap();
    let key = ObjectPath::from(format!("prod/kv/{}", file_name(&newest.location)));
    let bytes = s3
        .runtime
        .block_on(async { store.get(&key).await?.bytes().await })
        .expect("download");
    let downloaded = scratch.path().join("downloaded.witan-snapshot");
    std::fs::write(&downloaded, &bytes).unwrap();
    assert_restorable(&downloaded, newest, (RETENTION + 2) as u64);

    // Wrong credentials: the run fails, says why, and stores nothing.
    let before = s3.list(&store, "prod/kv");
    let denied = backup(
        &args(RETENTION as u32),
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", "wrong"),
        ],
        scratch.path(),
    );
    assert!(!denied.ok, "{}", denied.stdout);
    let Outcome::Failed { error } = denied.outcome() else {
        panic!("not a failure: {}", denied.stdout);
    };
    assert!(error.contains("403 Forbidden"), "{error}");
    assert_eq!(Outcome::parse(&denied.termination), Some(denied.outcome()));
    assert_eq!(s3.list(&store, "prod/kv"), before);
    drop(s3.root);
}

#[test]
fn backups_to_a_directory_are_pruned_to_retention_and_restorable() {
    let c = Cluster::start(1);
    let scratch = tempfile::tempdir().unwrap();
    let dir: PathBuf = scratch.path().join("pvc/sub");
    let args = vec![
        format!("--endpoints={}", c.members()[0].client_url()),
        "--cluster=kv".into(),
        format!("--destination={}", dir.display()),
        "--retention=3".into(),
    ];
    let mut reports = Vec::new();
    for i in 0..5 {
        put(&c, &format!("key-{i}"));
        reports.push(backup(&args, &[], scratch.path()).report());
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // Exactly the newest 3, and no staged temporary files left behind.
    let expected: Vec<String> = reports[2..]
        .iter()
        .map(|r| file_name(&r.location))
        .collect();
    assert_eq!(names, expected);
    for r in &reports[2..] {
        assert!(Path::new(&r.location).starts_with(&dir), "{}", r.location);
    }
    assert_restorable(Path::new(&reports[4].location), &reports[4], 5);
    assert_restorable(Path::new(&reports[2].location), &reports[2], 3);

    // An unreachable cluster: the run fails with the reason and writes nothing.
    let unreachable = backup(
        &[
            format!(
                "--endpoints=http://127.0.0.1:{}",
                witan_tests::free_ports(1)[0]
            ),
            "--cluster=kv".into(),
            format!("--destination={}", dir.display()),
        ],
        &[],
        scratch.path(),
    );
    assert!(!unreachable.ok);
    assert!(
        matches!(unreachable.outcome(), Outcome::Failed { .. }),
        "{}",
        unreachable.stdout
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
}

#[test]
fn a_snapshot_larger_than_the_upload_buffer_goes_up_in_parts() {
    let c = Cluster::start(1);
    let s3 = S3Server::start(&["big"]);
    let store = s3.client("big");
    let scratch = tempfile::tempdir().unwrap();
    // 7 values of 1.4 MB: a snapshot above the 8 MiB upload buffer, so the
    // upload is an S3 multipart upload.
    let value: String = (0..1_400_000u32)
        .map(|i| char::from(b'a' + u8::try_from((i * 7 + i / 13) % 26).unwrap()))
        .collect();
    let mut last = 0;
    for i in 0..7 {
        last = revision_of(&c.ctl_stdin(&["put", &format!("big-{i}"), "-w", "json"], &value));
    }
    c.wait_applied(0, last);
    let report = backup(
        &[
            format!("--endpoints={}", c.members()[0].client_url()),
            "--cluster=kv".into(),
            "--destination=s3://big".into(),
            format!("--s3-endpoint={}", s3.endpoint()),
            "--s3-path-style".into(),
            "--retention=1".into(),
        ],
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ],
        scratch.path(),
    )
    .report();
    assert!(report.size > 9_000_000, "{}", report.size);
    assert_eq!(report.revision, last);
    let name = file_name(&report.location);
    assert_eq!(s3.list(&store, ""), vec![name.clone()]);
    let bytes = s3
        .runtime
        .block_on(async { store.get(&ObjectPath::from(name)).await?.bytes().await })
        .expect("download");
    assert_eq!(bytes.len() as u64, report.size);
    let downloaded = scratch.path().join("big.witan-snapshot");
    std::fs::write(&downloaded, &bytes).unwrap();
    assert_restorable(&downloaded, &report, 7);
}
