//! The operator's member client over TLS, against the reference: Debian's
//! etcd (3.4) serving its client port with `--cert-file`, `--key-file`,
//! `--trusted-ca-file` and `--client-cert-auth`, certificates made here with
//! openssl. With the operator's client certificate and the CA the members
//! are observed (rustls with ring, no openssl in the operator); without a
//! certificate, or with one from another CA, nothing answers. With a user
//! while the cluster's auth is still off, the client falls back to no user
//! on etcd's own "authentication is not enabled" answer.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use witan_operator::{
    access::{Access, ClientTls, Credentials},
    members::{EtcdMembers, MemberApi},
    names::ClusterNames,
    observed::Membership,
};
use witan_tests::{LineChild, free_ports, poll_until};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `ca` in `dir`, and a certificate `name` it signs.
fn ca(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
        ],
    );
}

fn issue(dir: &Path, ca: &str, name: &str, usage: &str, san: Option<&str>) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    let mut ext = format!("extendedKeyUsage={usage}\n");
    if let Some(san) = san {
        ext.push_str(&format!("subjectAltName={san}\n"));
    }
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

fn read(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).expect("read PEM")
}

fn client_tls(dir: &Path, ca: &str, name: &str) -> ClientTls {
    ClientTls {
        ca_pem: read(dir, &format!("{ca}.crt")),
        cert_pem: read(dir, &format!("{name}.crt")),
        key_pem: read(dir, &format!("{name}.key")),
    }
}

struct Etcd {
    _child: LineChild,
    _dir: tempfile::TempDir,
    certs: PathBuf,
    url: String,
}

/// One etcd member whose client port demands a certificate signed by `ca`.
fn etcd_with_client_cert_auth() -> Etcd {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).expect("certs dir");
    ca(&certs, "ca");
    issue(
        &certs,
        "ca",
        "server",
        "serverAuth",
        Some("DNS:localhost,IP:127.0.0.1"),
    );
    issue(&certs, "ca", "operator", "clientAuth", None);
    ca(&certs, "other-ca");
    issue(&certs, "other-ca", "stranger", "clientAuth", None);

    let ports = free_ports(2);
    let url = format!("https://127.0.0.1:{}", ports[0]);
    let peer = format!("http://127.0.0.1:{}", ports[1]);
    let file = |name: &str| certs.join(name).display().to_string();
    let mut command = Command::new("etcd");
    command
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--advertise-client-urls={url}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=default={peer}"))
        .arg(format!("--cert-file={}", file("server.crt")))
        .arg(format!("--key-file={}", file("server.key")))
        .arg(format!("--trusted-ca-file={}", file("ca.crt")))
        .arg("--client-cert-auth");
    let child = LineChild::spawn("etcd", command);
    Etcd {
        _child: child,
        _dir: dir,
        certs,
        url,
    }
}

fn names() -> ClusterNames {
    ClusterNames {
        name: "kv".into(),
        namespace: "test".into(),
        uid: "u".into(),
        tls: true,
    }
}

fn observe(api: &EtcdMembers, url: &str, access: &Access) -> Option<Membership> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime
        .block_on(api.observe(&names(), &[url.to_string()], access))
        .expect("observe never fails, it reports")
}

#[test]
fn the_operator_reaches_an_mtls_member_only_with_its_client_certificate() {
    let etcd = etcd_with_client_cert_auth();
    let api = EtcdMembers::default();
    let operator = Access {
        tls: Some(client_tls(&etcd.certs, "ca", "operator")),
        credentials: None,
    };
    let membership = poll_until(Duration::from_secs(30), "etcd over mTLS", || match observe(
        &api, &etcd.url, &operator,
    ) {
        Some(m) if m.members.iter().any(|m| m.is_leader && m.healthy) => Ok(m),
        other => Err(format!("{other:?}")),
    });
    assert_eq!(membership.members.len(), 1);
    assert!(membership.members[0].revision.is_some());
    assert!(membership.cluster_id.is_some());

    // No certificate at all: the handshake fails, nothing answers.
    assert_eq!(observe(&api, &etcd.url, &Access::default()), None);
    // A client certificate from another CA is refused by the member.
    let stranger = Access {
        tls: Some(ClientTls {
            ca_pem: read(&etcd.certs, "ca.crt"),
            ..client_tls(&etcd.certs, "other-ca", "stranger")
        }),
        credentials: None,
    };
    assert_eq!(observe(&api, &etcd.url, &stranger), None);
    // Trusting another CA, the operator refuses the member's certificate.
    let distrustful = Access {
        tls: Some(ClientTls {
            ca_pem: read(&etcd.certs, "other-ca.crt"),
            ..client_tls(&etcd.certs, "ca", "operator")
        }),
        credentials: None,
    };
    assert_eq!(observe(&api, &etcd.url, &distrustful), None);

    // A user while auth is off: etcd says "authentication is not enabled"
    // and the operator carries on without one.
    let with_user = Access {
        credentials: Some(Credentials {
            user: "witan-operator".into(),
            password: "unused-until-auth-is-on".into(),
        }),
        ..operator
    };
    let membership = observe(&api, &etcd.url, &with_user).expect("served without a user");
    assert!(membership.members[0].healthy);
}
