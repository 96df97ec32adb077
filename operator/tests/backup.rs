//! `witan-operator backup` end to end: the real binary takes snapshots of a
//! real witan cluster and stores them in a real S3-compatible server
//! (`s3s-fs`, on loopback with SigV4 authentication) or a directory, prunes
//! to the retention, and what it stored restores: `witan snapshot status`
//! on the downloaded object shows the reported revision, keys and hash.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use object_store::{ObjectStoreExt as _, path::Path as ObjectPath};
use serde_json::Value;
use support::{ACCESS_KEY, RUN_TIMEOUT, S3Server, SECRET_KEY, backup, file_name, put};
use witan_operator::backup::{
    naming::BackupName,
    report::{BackupReport, Outcome},
};
use witan_tests::{Cluster, json, revision_of, run_bounded, witan_bin};

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
