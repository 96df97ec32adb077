//! Shared by the backup and restore tests: an S3-compatible server on
//! loopback (`s3s-fs`, SigV4 authentication) and a runner of the real
//! `witan-operator backup`.

#![allow(dead_code)] // Each test crate uses a different part.

use std::{net::SocketAddr, path::Path, process::Command, sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder as ConnBuilder,
};
use object_store::{ObjectStore, path::Path as ObjectPath};
use witan_operator::backup::{
    destination::{Destination, S3Options},
    report::{BackupReport, Outcome},
};
use witan_tests::{Cluster, revision_of, run_bounded};

pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
pub const ACCESS_KEY: &str = "witan-test-access";
pub const SECRET_KEY: &str = "witan-test-secret-key";

/// An S3-compatible server (`s3s-fs` over a temp dir) on a loopback port,
/// served by its own runtime until dropped.
pub struct S3Server {
    pub addr: SocketAddr,
    pub root: tempfile::TempDir,
    pub runtime: tokio::runtime::Runtime,
}

impl S3Server {
    pub fn start(buckets: &[&str]) -> S3Server {
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

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of the same kind the backup uses (object_store), for
    /// checking what was stored.
    pub fn client(&self, bucket: &str) -> Arc<dyn ObjectStore> {
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
    pub fn list(&self, store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
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
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    pub termination: String,
}

impl Run {
    pub fn outcome(&self) -> Outcome {
        let last = self.stdout.lines().last().unwrap_or_default();
        Outcome::parse(last).unwrap_or_else(|| {
            panic!(
                "no outcome on stdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn report(&self) -> BackupReport {
        assert!(self.ok, "backup failed:\n{}\n{}", self.stdout, self.stderr);
        let Outcome::Stored(report) = self.outcome() else {
            panic!("not a report: {}", self.stdout);
        };
        // The controller reads the same JSON from the termination message.
        assert_eq!(Outcome::parse(&self.termination), Some(self.outcome()));
        report
    }
}

pub fn backup(args: &[String], env: &[(&str, &str)], scratch: &Path) -> Run {
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

pub fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Writes one key and waits until every member applied it, so a snapshot
/// from any member holds it. Returns its revision.
pub fn put(c: &Cluster, key: &str) -> i64 {
    let revision = revision_of(&c.ctl(&["put", key, "value", "-w", "json"]));
    for i in 0..c.len() {
        c.wait_applied(i, revision);
    }
    revision
}

pub fn file_name(location: &str) -> String {
    location.rsplit('/').next().unwrap().to_string()
}

/// Turns auth on the way the controller does (`auth::next_step`, bounded):
/// root gets `root_password`, the operator's user the password in
/// `access`. Returns the steps taken.
pub fn turn_auth_on(
    runtime: &tokio::runtime::Runtime,
    api: &witan_operator::members::EtcdMembers,
    endpoints: &[String],
    access: &witan_operator::access::Access,
    root_password: &str,
    c: &Cluster,
) -> Vec<witan_operator::auth::AuthStep> {
    use witan_operator::{
        auth::{self, AuthStep, OPERATOR_USER, ROOT},
        members::MemberApi,
    };
    let operator_password = access
        .credentials
        .as_ref()
        .map(|c| c.password.clone())
        .unwrap_or_default();
    let mut steps = Vec::new();
    for _ in 0..=auth::MAX_STEPS {
        let state = runtime
            .block_on(api.auth_state(endpoints, access))
            .expect("auth state");
        let step = auth::next_step(&state, OPERATOR_USER);
        if step == AuthStep::Done {
            break;
        }
        let password = match &step {
            AuthStep::AddUser { user } if user == ROOT => root_password,
            AuthStep::AddUser { .. } => operator_password.as_str(),
            _ => "",
        };
        runtime
            .block_on(api.auth_apply(endpoints, access, &step, password))
            .unwrap_or_else(|e| panic!("{step:?}: {e}\n{}", c.logs()));
        steps.push(step);
    }
    steps
}
