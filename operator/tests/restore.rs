//! `spec.bootstrap.restore` end to end, without Kubernetes: a real witan
//! cluster is backed up by the real `witan-operator backup` (to the s3s-fs
//! server or a directory); then, for each of three new members, the two
//! restore init containers the StatefulSet builder produces run as the
//! kubelet would run them (their own command and args, with paths mapped to
//! temp dirs and `$(VAR)`s expanded from the member's environment). The
//! members then start with `--initial-cluster-state new` and must serve the
//! source's keys at the source's revisions.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    api::core::v1::Container,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use serde_json::Value;
use support::{ACCESS_KEY, RUN_TIMEOUT, S3Server, SECRET_KEY, backup, file_name, put};
use witan_operator::{
    backup::report::BackupReport,
    crd::{
        BackupLocation, BootstrapSpec, KvCluster, KvClusterSpec, PvcLocation, RestoreSpec,
        S3Location,
    },
    names::ClusterNames,
    resources::{cronjob::BACKUP_MOUNT, statefulset},
    restore::{
        self,
        observe::{RestoreRun, state},
        report::RestoreOutcome,
    },
};
use witan_tests::{Cluster, Member, json, run_bounded, witan_bin};

const OPERATOR: &str = env!("CARGO_BIN_EXE_witan-operator");

/// A stored KvCluster named `kv` restoring `name` from `source`.
fn kvcluster(source: BackupLocation, name: &str, created: &str) -> KvCluster {
    let mut spec = KvClusterSpec::with_replicas(3);
    spec.bootstrap = Some(BootstrapSpec {
        restore: Some(RestoreSpec {
            source,
            name: name.into(),
            source_cluster: None,
        }),
    });
    let mut kvc = KvCluster::new("kv", spec);
    kvc.metadata = ObjectMeta {
        name: Some("kv".into()),
        namespace: Some("prod".into()),
        uid: Some("uid-1".into()),
        creation_timestamp: Some(Time(created.parse().unwrap())),
        ..ObjectMeta::default()
    };
    kvc
}

/// The restore init containers of the member pods, as built for the API.
fn init_containers(kvc: &KvCluster) -> Vec<Container> {
    let names = ClusterNames::of(kvc).unwrap();
    let sts = statefulset::build(kvc, &names, 3, "witan-operator:test").unwrap();
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let init = pod.init_containers.unwrap();
    assert_eq!(init[0].name, restore::FETCH_CONTAINER);
    assert_eq!(init[1].name, restore::APPLY_CONTAINER);
    init
}

/// The value of `flag` in a member's command line.
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args.iter().position(|a| a == flag).expect(flag);
    &args[at + 1]
}

/// Where one member's pod paths live on this machine.
struct PodPaths {
    data_dir: PathBuf,
    work_dir: PathBuf,
    backup_dir: Option<PathBuf>,
    termination: PathBuf,
}

impl PodPaths {
    /// A pod path (or an argument holding one) mapped to this machine.
    fn map(&self, arg: &str) -> String {
        let mut arg = arg
            .replace(restore::WORK_DIR, &self.work_dir.display().to_string())
            .replace(statefulset::DATA_DIR, &self.data_dir.display().to_string());
        if let Some(dir) = &self.backup_dir {
            arg = arg.replace(BACKUP_MOUNT, &dir.display().to_string());
        }
        if arg == statefulset::WITAN_BINARY {
            arg = witan_bin().display().to_string();
        }
        arg
    }
}

/// `$(VAR)` expansion as the kubelet does it.
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_string();
    for (name, value) in env {
        out = out.replace(&format!("$({name})"), value);
    }
    assert!(!out.contains("$("), "unexpanded variable in {out}");
    out
}

/// Runs `container` as the kubelet would: its command (the operator image's
/// binary is this build's; the node image's is whatever the first step
/// copied to the work dir) and its args, mapped and expanded.
fn run_container(
    container: &Container,
    paths: &PodPaths,
    env: &BTreeMap<String, String>,
) -> (bool, RestoreOutcome) {
    let command = &container.command.as_ref().unwrap()[0];
    let program = if command == witan_operator::resources::cronjob::BINARY {
        PathBuf::from(OPERATOR)
    } else {
        PathBuf::from(paths.map(command))
    };
    let args: Vec<String> = container
        .args
        .as_ref()
        .unwrap()
        .iter()
        .map(|a| expand(&paths.map(a), env))
        .collect();
    let mut cmd = Command::new(&program);
    cmd.env_clear()
        .args(&args)
        .envs(env)
        .env("WITAN_RESTORE_TERMINATION_LOG", &paths.termination);
    let done = run_bounded(cmd, None, RUN_TIMEOUT);
    let message = std::fs::read_to_string(&paths.termination).unwrap_or_default();
    let outcome = RestoreOutcome::parse(&message).unwrap_or_else(|| {
        panic!(
            "{} {args:?}: no outcome in {message:?}\n{}\n{}",
            program.display(),
            done.stdout,
            done.stderr
        )
    });
    // The same JSON is the last line on stdout.
    assert_eq!(
        RestoreOutcome::parse(done.stdout.lines().last().unwrap_or_default()),
        Some(outcome.clone())
    );
    (done.status.is_some_and(|s| s.success()), outcome)
}

/// One member pod's restore: both init containers in order, with the
/// member's environment (identity from its flags, state `new`, the S3
/// credentials from the "Secret"). Returns what the controller would read.
struct MemberRestore<'a> {
    init: &'a [Container],
    backup_dir: Option<PathBuf>,
    scratch: &'a Path,
}

impl MemberRestore<'_> {
    fn run(&self, member: &Member, state: &str) -> Vec<RestoreRun> {
        self.run_as(&member.name, member.args(), member.data_dir(), state)
    }

    fn run_as(&self, name: &str, args: &[String], data_dir: &Path, state: &str) -> Vec<RestoreRun> {
        let env: BTreeMap<String, String> = [
            ("WITAN_NAME", name),
            ("WITAN_DATA_DIR", flag(args, "--data-dir")),
            ("WITAN_INITIAL_CLUSTER", flag(args, "--initial-cluster")),
            ("WITAN_INITIAL_CLUSTER_STATE", state),
            (
                "WITAN_INITIAL_CLUSTER_TOKEN",
                flag(args, "--initial-cluster-token"),
            ),
            (
                "WITAN_INITIAL_ADVERTISE_PEER_URLS",
                flag(args, "--initial-advertise-peer-urls"),
            ),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let work_dir = self.scratch.join(format!("work-{name}"));
        std::fs::create_dir_all(&work_dir).unwrap();
        let mut runs = Vec::new();
        for container in self.init {
            let paths = PodPaths {
                data_dir: data_dir.to_path_buf(),
                work_dir: work_dir.clone(),
                backup_dir: self.backup_dir.clone(),
                termination: self
                    .scratch
                    .join(format!("termination-{name}-{}", container.name)),
            };
            let (ok, outcome) = run_container(container, &paths, &env);
            runs.push(RestoreRun {
                pod: name.to_string(),
                container: container.name.clone(),
                exit_code: i32::from(!ok),
                message: outcome.to_json(),
            });
            if !ok {
                break;
            }
        }
        runs
    }
}

/// `etcdctl get "" --prefix -w json`: the header revision and every key
/// with its value and revisions.
fn everything(c: &Cluster) -> (i64, Value) {
    let got = json(&c.ctl(&["get", "", "--prefix", "-w", "json"]));
    (
        got["header"]["revision"].as_i64().unwrap(),
        got["kvs"].clone(),
    )
}

/// Writes keys, overwrites and deletes some, so revisions and versions are
/// not trivial.
fn write_history(c: &Cluster, prefix: &str) {
    for i in 0..5 {
        put(c, &format!("{prefix}key-{i}"));
    }
    put(c, &format!("{prefix}key-1"));
    put(c, &format!("{prefix}key-1"));
    c.ctl(&["del", &format!("{prefix}key-3")]);
}

fn outcome(run: &RestoreRun) -> RestoreOutcome {
    RestoreOutcome::parse(&run.message).unwrap()
}

#[test]
fn latest_backup_from_s3_restores_three_members_with_the_same_keys_and_revisions() {
    let source = Cluster::start(3);
    let s3 = S3Server::start(&["backups"]);
    let scratch = tempfile::tempdir().unwrap();
    let backup_args = vec![
        format!("--endpoints={}", source.members()[0].client_url()),
        "--cluster=kv".into(),
        "--destination=s3://backups/prod/kv".into(),
        format!("--s3-endpoint={}", s3.endpoint()),
        "--s3-path-style".into(),
        "--retention=5".into(),
    ];
    let creds = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ];
    write_history(&source, "a/");
    let older: BackupReport = backup(&backup_args, &creds, scratch.path()).report();
    write_history(&source, "b/");
    let newest: BackupReport = backup(&backup_args, &creds, scratch.path()).report();
    assert!(newest.revision > older.revision);
    let (source_revision, source_kvs) = everything(&source);
    assert_eq!(source_revision, newest.revision);
    drop(source);

    // The KvCluster is created after both backups: `latest` is the newest.
    let kvc = kvcluster(
        BackupLocation {
            pvc: None,
            s3: Some(S3Location {
                endpoint: s3.endpoint(),
                bucket: "backups".into(),
                prefix: Some("prod/kv".into()),
                region: None,
                force_path_style: true,
                credentials_secret_name: "kv-backup-s3".into(),
            }),
        },
        "latest",
        &k8s_openapi::jiff::Timestamp::now().to_string(),
    );
    let init = init_containers(&kvc);
    let steps = MemberRestore {
        init: &init,
        backup_dir: None,
        scratch: scratch.path(),
    };
    let runs = std::sync::Mutex::new(Vec::new());
    let mut restored = Cluster::start_prepared(3, &[], |member| {
        runs.lock().unwrap().extend(steps.run(member, "new"));
    });
    let runs = runs.into_inner().unwrap();

    // Every member fetched and restored the newest backup.
    assert_eq!(runs.len(), 6, "{runs:?}");
    for run in &runs {
        assert_eq!(run.exit_code, 0, "{run:?}");
        match outcome(run) {
            RestoreOutcome::Fetched { backup } => {
                assert_eq!(backup.location, newest.location);
                assert_eq!(backup.sha256, newest.sha256);
            }
            RestoreOutcome::Restored { backup, revision } => {
                assert_eq!(backup.location, newest.location);
                assert_eq!(revision, Some(newest.revision));
            }
            other => panic!("{run:?}: {other:?}"),
        }
    }
    // What the controller makes of it.
    let condition = state(&runs).unwrap();
    assert_eq!(condition.status, "True", "{condition:?}");
    assert!(
        condition.message.starts_with(&format!(
            "node-1, node-2, node-3 restored {} at revision {}",
            newest.location, newest.revision
        )),
        "{}",
        condition.message
    );

    // Same keys, values, create/mod revisions and versions; same revision.
    let (revision, kvs) = everything(&restored);
    assert_eq!(revision, source_revision);
    assert_eq!(kvs, source_kvs);
    // And it carries on from there.
    let next = witan_tests::revision_of(&restored.ctl(&["put", "after", "x", "-w", "json"]));
    assert_eq!(next, source_revision + 1);
    // Three voters, one cluster.
    let members = json(&restored.ctl(&["member", "list", "-w", "json"]));
    assert_eq!(members["members"].as_array().unwrap().len(), 3);

    // A pod restarting later (its data dir has data) restores nothing,
    // and neither does a member joining an existing cluster.
    restored.kill(1);
    let again = steps.run(restored.member(1), "new");
    assert_eq!(again.len(), 2);
    for run in &again {
        assert_eq!(run.exit_code, 0, "{run:?}");
        assert!(
            matches!(outcome(run), RestoreOutcome::Skipped { .. }),
            "{run:?}"
        );
    }
    assert_eq!(state(&again), None, "skips leave the condition as it was");
    let joining = restored.prepare_joining("node-4");
    let join = steps.run(restored.member(joining), "existing");
    assert!(
        matches!(&outcome(&join[0]), RestoreOutcome::Skipped { reason } if reason.contains("existing"))
    );
    assert!(matches!(outcome(&join[1]), RestoreOutcome::Skipped { .. }));
    assert!(!witan_operator::restore::has_entries(restored.member(joining).data_dir()).unwrap());
    // A KvCluster created between the two backups: `latest` is the older
    // one, whenever its members start.
    let between = kvcluster(
        kvc.spec.bootstrap.clone().unwrap().restore.unwrap().source,
        "latest",
        &older.time,
    );
    let fetch_only = init_containers(&between);
    let empty = scratch.path().join("between/data");
    let mut flags: Vec<String> = restored.member(0).args().to_vec();
    let at = flags.iter().position(|a| a == "--data-dir").unwrap();
    flags[at + 1] = empty.display().to_string();
    let runs = MemberRestore {
        init: &fetch_only[..1],
        backup_dir: None,
        scratch: &scratch.path().join("between"),
    }
    .run_as("node-1", &flags, &empty, "new");
    let RestoreOutcome::Fetched { backup } = outcome(&runs[0]) else {
        panic!("{runs:?}");
    };
    assert_eq!(backup.location, older.location);

    // The restarted member serves the data it had.
    restored.restart(1);
    let got = json(&restored.ctl_on(1, &["get", "b/key-1", "-w", "json"]));
    assert_eq!(got["kvs"][0]["version"], 3);
}

#[test]
fn a_named_backup_in_a_directory_restores_and_a_corrupt_one_is_refused() {
    let source = Cluster::start(1);
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("pvc/prod");
    write_history(&source, "");
    let report = backup(
        &[
            format!("--endpoints={}", source.members()[0].client_url()),
            "--cluster=old-kv".into(),
            format!("--destination={}", dir.display()),
        ],
        &[],
        scratch.path(),
    )
    .report();
    let (source_revision, source_kvs) = everything(&source);
    assert_eq!(source_revision, report.revision);
    drop(source);
    let name = file_name(&report.location);

    // A damaged copy next to it: one flipped bit in the middle (a fixed
    // offset outgrew the file when the format got smaller).
    let mut bytes = std::fs::read(&report.location).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(dir.join("damaged.witan-snapshot"), &bytes).unwrap();

    let pvc = || BackupLocation {
        pvc: Some(PvcLocation {
            claim_name: "backups".into(),
            sub_path: Some("prod".into()),
        }),
        s3: None,
    };
    // The PVC is mounted at its subPath, so the backup dir is `dir`.
    let damaged = kvcluster(pvc(), "damaged.witan-snapshot", "2020-01-01T00:00:00Z");
    let init = init_containers(&damaged);
    let steps = MemberRestore {
        init: &init,
        backup_dir: Some(dir.clone()),
        scratch: scratch.path(),
    };
    let data_dir = scratch.path().join("damaged-member/data");
    let flags: Vec<String> = [
        "--data-dir",
        &data_dir.display().to_string(),
        "--initial-cluster",
        "kv-0=http://127.0.0.1:1",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:1",
        "--initial-cluster-token",
        "t",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let runs = steps.run_as("kv-0", &flags, &data_dir, "new");
    assert_eq!(runs.len(), 1, "the restore step never runs: {runs:?}");
    assert_ne!(runs[0].exit_code, 0);
    let RestoreOutcome::Failed { error } = outcome(&runs[0]) else {
        panic!("{runs:?}");
    };
    assert!(error.contains("checksum mismatch"), "{error}");
    // Nothing is left for the next step, and no data dir was made.
    let work = scratch.path().join("work-kv-0");
    assert!(!work.join(restore::SNAPSHOT_FILE).exists());
    assert!(
        !work
            .join(format!("{}.part", restore::SNAPSHOT_FILE))
            .exists()
    );
    assert!(!restore::has_entries(&data_dir).unwrap());
    let condition = state(&runs).unwrap();
    assert_eq!(condition.reason, "RestoreFailed");
    assert!(
        condition.message.starts_with("kv-0 restore-fetch: backup "),
        "{condition:?}"
    );
    // Had the next step run anyway (a pod restarted between the two), it
    // finds nothing to apply.
    let mut apply_only = MemberRestore {
        init: &init[1..],
        backup_dir: Some(dir.clone()),
        scratch: scratch.path(),
    }
    .run_as("kv-0", &flags, &data_dir, "new");
    assert!(matches!(
        outcome(&apply_only.remove(0)),
        RestoreOutcome::Skipped { .. }
    ));

    // The named, intact backup: three members with the source's data.
    let kvc = kvcluster(pvc(), &name, "2020-01-01T00:00:00Z");
    let init = init_containers(&kvc);
    let steps = MemberRestore {
        init: &init,
        backup_dir: Some(dir.clone()),
        scratch: &scratch.path().join("second"),
    };
    let runs = std::sync::Mutex::new(Vec::new());
    let restored = Cluster::start_prepared(3, &[], |member| {
        runs.lock().unwrap().extend(steps.run(member, "new"));
    });
    let runs = runs.into_inner().unwrap();
    assert_eq!(state(&runs).unwrap().status, "True", "{runs:?}");
    let (revision, kvs) = everything(&restored);
    assert_eq!(revision, source_revision);
    assert_eq!(kvs, source_kvs);
    // The backup itself is untouched (the PVC is only read).
    assert_eq!(
        std::fs::read(&report.location).unwrap().len() as u64,
        report.size
    );
}
