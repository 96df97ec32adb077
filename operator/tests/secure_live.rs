//! The operator and its backup job against a real witan cluster with
//! mutual TLS on client and peer ports (certificates made here with rcgen,
//! as `spec.tls` would mount them): the operator observes the members with
//! its client certificate, turns auth on over TLS, then observes and
//! changes voters as its own user; `witan-operator backup` with
//! `--cacert/--cert/--key` and `--user/--password` (what the CronJob passes)
//! stores a snapshot, and with another CA's certificate it is refused.

mod support;

use std::{collections::BTreeSet, path::Path, time::Duration};

use support::{backup, put, turn_auth_on};
use tempfile::TempDir;
use witan_operator::{
    access::{Access, ClientTls, Credentials},
    auth::{OPERATOR_USER, ROOT},
    members::{EtcdMembers, MemberApi},
    names::ClusterNames,
};
use witan_tests::{
    Cluster, Security,
    pki::{Ca, CertFiles, LOOPBACK, Leaf},
    poll_until,
};

const OPERATOR_PASSWORD: &str = "operator-password";

fn leaf<'a>(common_name: &'a str, sans: &'a [&'a str], serial: u64) -> Leaf<'a> {
    Leaf {
        common_name,
        sans,
        serial,
    }
}

fn arg(path: &Path) -> String {
    path.display().to_string()
}

fn client_tls(ca: &Ca, cert: &CertFiles) -> ClientTls {
    let read = |p: &Path| std::fs::read(p).expect("read PEM");
    ClientTls {
        ca_pem: read(ca.file()),
        cert_pem: read(&cert.cert),
        key_pem: read(&cert.key),
    }
}

#[test]
fn the_operator_and_its_backups_work_over_mtls_with_auth_on() {
    let dir = TempDir::with_prefix("witan-secure-").expect("temp dir");
    let ca = Ca::new(dir.path(), "ca");
    let other_ca = Ca::new(dir.path(), "other-ca");
    // etcdctl in the harness acts as root: with client-cert auth the
    // certificate's CN is the user once auth is on.
    let root = ca.issue(dir.path(), "root", &leaf(ROOT, &[], 0x10));
    let operator = ca.issue(dir.path(), "operator", &leaf(OPERATOR_USER, &[], 0x11));
    let stranger = other_ca.issue(dir.path(), "stranger", &leaf(OPERATOR_USER, &[], 0x12));
    let member_flags = (0..3u64)
        .map(|i| {
            let name = format!("node-{}", i + 1);
            let mut flags = ca
                .issue(
                    dir.path(),
                    &format!("client-{name}"),
                    &leaf(&name, LOOPBACK, 0x100 + i),
                )
                .flags("");
            flags.extend(
                ca.issue(
                    dir.path(),
                    &format!("peer-{name}"),
                    &leaf(&name, LOOPBACK, 0x200 + i),
                )
                .flags("peer-"),
            );
            flags.extend([
                "--trusted-ca-file".into(),
                arg(ca.file()),
                "--client-cert-auth".into(),
                "--peer-trusted-ca-file".into(),
                arg(ca.file()),
                "--peer-client-cert-auth".into(),
            ]);
            flags
        })
        .collect();
    let mut ctl_flags = vec!["--cacert".to_string(), arg(ca.file())];
    ctl_flags.extend(root.ctl_flags());
    let security = Security {
        client_https: true,
        peer_https: true,
        member_flags,
        ctl_flags,
        wait_for: None,
    };
    let cluster = Cluster::start_secure(3, &[], security, |_| {});
    let endpoints: Vec<String> = cluster.members().iter().map(|m| m.client_url()).collect();
    assert!(endpoints[0].starts_with("https://"), "{endpoints:?}");

    let api = EtcdMembers::default();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let names = ClusterNames {
        name: "kv".into(),
        namespace: "test".into(),
        uid: "u".into(),
        tls: true,
    };
    let access = Access {
        tls: Some(client_tls(&ca, &operator)),
        credentials: Some(Credentials {
            user: OPERATOR_USER.into(),
            password: OPERATOR_PASSWORD.into(),
        }),
    };
    let all_healthy = |access: &Access| {
        runtime
            .block_on(api.observe(&names, &endpoints, access))
            .expect("observe")
            .is_some_and(|m| m.members.len() == 3 && m.members.iter().all(|m| m.healthy))
    };
    assert!(all_healthy(&access), "observed over mTLS");
    let strangers = Access {
        tls: Some(ClientTls {
            ca_pem: std::fs::read(ca.file()).expect("CA"),
            ..client_tls(&other_ca, &stranger)
        }),
        credentials: None,
    };
    assert!(!all_healthy(&strangers), "another CA's certificate");

    // Auth on, over TLS, as the controller does it.
    turn_auth_on(
        &runtime,
        &api,
        &endpoints,
        &access,
        "root-password",
        &cluster,
    );
    assert!(
        runtime
            .block_on(api.auth_state(&endpoints, &access))
            .expect("auth state")
            .enabled
    );
    poll_until(Duration::from_secs(10), "observed as the operator", || {
        all_healthy(&access)
            .then_some(())
            .ok_or_else(|| "not all healthy".to_string())
    });
    let voters: BTreeSet<u64> = (0..3).map(|i| cluster.member_id(i)).collect();
    runtime
        .block_on(api.change_voters(&endpoints, &access, &voters))
        .expect("ChangeVoters over mTLS as the operator");

    // The backup job, with the flags the CronJob passes.
    put(&cluster, "secure-key");
    let scratch = TempDir::new().expect("scratch");
    let destination = scratch.path().join("backups");
    let mut args = vec![
        format!("--endpoints={}", endpoints[0]),
        "--cluster=kv".into(),
        format!("--destination={}", destination.display()),
        format!("--cacert={}", arg(ca.file())),
        format!("--cert={}", arg(&operator.cert)),
        format!("--key={}", arg(&operator.key)),
    ];
    let report = backup(
        &args,
        &[
            ("WITAN_BACKUP_USER", OPERATOR_USER),
            ("WITAN_BACKUP_PASSWORD", OPERATOR_PASSWORD),
        ],
        scratch.path(),
    )
    .report();
    assert!(report.revision > 0);
    assert!(Path::new(&report.location).is_file(), "{}", report.location);

    // With a certificate from another CA the member does not serve it.
    args.truncate(4);
    args.push(format!("--cert={}", arg(&stranger.cert)));
    args.push(format!("--key={}", arg(&stranger.key)));
    let refused = backup(&args, &[], scratch.path());
    assert!(!refused.ok, "{}", refused.stdout);
}
