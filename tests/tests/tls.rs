//! TLS for clients and peers (docs/tls.md), with real `witan` processes,
//! Debian's etcdctl 3.4 and curl: mutual TLS on both ports, the refusals
//! (wrong CA, no client certificate, plain http, a peer from another CA),
//! certificate rotation without restart, `--auto-tls`, and a plain-http
//! `--listen-metrics-urls` listener next to a client port that demands
//! client certificates. Certificates are made in the test (rcgen).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;
use witan_tests::pki::{Ca, CertFiles, LOOPBACK, Leaf, serial_bytes};
use witan_tests::{Cluster, CtlOutput, Security, curl, free_ports, json, poll_until, run_bounded};

/// How long a rotated certificate may take to be served (the files are
/// read every second).
const ROTATION_TIMEOUT: Duration = Duration::from_secs(15);

/// The certificates of one test: a CA, per-member client-port and peer
/// certificates, a client certificate (CN `alice`), and a second CA that
/// nobody trusts.
struct Pki {
    dir: TempDir,
    ca: Ca,
    other_ca: Ca,
    alice: CertFiles,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::with_prefix("witan-pki-").expect("pki dir");
        let ca = Ca::new(dir.path(), "ca");
        let other_ca = Ca::new(dir.path(), "other-ca");
        let alice = ca.issue(dir.path(), "alice", &leaf("alice", &[], 0x100));
        Pki {
            dir,
            ca,
            other_ca,
            alice,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The certificate of member `i`'s client port (`kind` = "client") or
    /// peer port (`kind` = "peer"), issued by `ca` with `serial`.
    fn member_cert(&self, ca: &Ca, kind: &str, i: usize, serial: u64) -> CertFiles {
        let name = format!("node-{}", i + 1);
        ca.issue(
            self.path(),
            &format!("{kind}-{name}"),
            &leaf(&name, LOOPBACK, serial),
        )
    }

    /// etcdctl's flags for `alice` trusting our CA.
    fn ctl_flags(&self) -> Vec<String> {
        let mut flags = vec!["--cacert".to_string(), path_arg(self.ca.file())];
        flags.extend(self.alice.ctl_flags());
        flags
    }
}

fn leaf<'a>(common_name: &'a str, sans: &'a [&'a str], serial: u64) -> Leaf<'a> {
    Leaf {
        common_name,
        sans,
        serial,
    }
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// Initial serials: member i's client certificate is 0x1000 + i, its peer
/// certificate 0x2000 + i.
const CLIENT_SERIAL: u64 = 0x1000;
const PEER_SERIAL: u64 = 0x2000;

/// Flags of member `i` for client and peer mTLS, its peer certificate
/// issued by `peer_ca`, plus a plain-http metrics listener on `metrics_port`.
fn mtls_flags(pki: &Pki, i: usize, peer_ca: &Ca, metrics_port: u16) -> Vec<String> {
    let ca = path_arg(pki.ca.file());
    let mut flags = pki
        .member_cert(&pki.ca, "client", i, CLIENT_SERIAL + i as u64)
        .flags("");
    flags.extend(
        pki.member_cert(peer_ca, "peer", i, PEER_SERIAL + i as u64)
            .flags("peer-"),
    );
    flags.extend([
        "--trusted-ca-file".to_string(),
        ca.clone(),
        "--client-cert-auth".to_string(),
        "--peer-trusted-ca-file".to_string(),
        ca,
        "--peer-client-cert-auth".to_string(),
        "--listen-metrics-urls".to_string(),
        format!("http://127.0.0.1:{metrics_port}"),
    ]);
    flags
}

/// A 3-member cluster with https client and peer URLs and mutual TLS on
/// both; member `rogue` (if any) has a peer certificate from the other CA.
/// Returns the cluster and the members' metrics ports.
fn mtls_cluster(pki: &Pki, rogue: Option<usize>) -> (Cluster, Vec<u16>) {
    let metrics_ports = free_ports(3);
    let member_flags = (0..3)
        .map(|i| {
            let peer_ca = if Some(i) == rogue {
                &pki.other_ca
            } else {
                &pki.ca
            };
            mtls_flags(pki, i, peer_ca, metrics_ports[i])
        })
        .collect();
    let security = Security {
        client_https: true,
        peer_https: true,
        member_flags,
        ctl_flags: pki.ctl_flags(),
        wait_for: rogue.map(|r| (0..3).filter(|&i| i != r).collect()),
    };
    (
        Cluster::start_secure(3, &[], security, |_| {}),
        metrics_ports,
    )
}

/// etcdctl with exactly `flags` (not the cluster's) against `endpoint`.
fn ctl_with(endpoint: &str, flags: &[String], args: &[&str]) -> CtlOutput {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(flags.iter().map(String::as_str));
    CtlOutput::run(endpoint, &full, None)
}

/// curl's flags for `alice` trusting our CA.
fn curl_tls_flags(pki: &Pki) -> Vec<String> {
    vec![
        "--cacert".to_string(),
        path_arg(pki.ca.file()),
        "--cert".to_string(),
        path_arg(&pki.alice.cert),
        "--key".to_string(),
        path_arg(&pki.alice.key),
    ]
}

fn strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// Opens a new TLS connection to `127.0.0.1:port` as `client` (trusting
/// `ca`) and returns the serial number of the certificate the server
/// presents.
fn presented_serial(port: u16, ca: &Path, client: &CertFiles) -> Result<Vec<u8>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let certs = CertificateDer::pem_file_iter(&client.cert)
            .map_err(|e| e.to_string())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_file(&client.key).map_err(|e| e.to_string())?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let presented = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no server certificate")?;
        witan_node::tls::der::serial(presented).ok_or_else(|| "unreadable serial".to_string())
    })
}

/// Waits until new connections to `port` see the certificate `serial`.
fn wait_for_serial(port: u16, pki: &Pki, serial: u64, what: &str) {
    let expected = serial_bytes(serial);
    poll_until(ROTATION_TIMEOUT, what, || {
        match presented_serial(port, pki.ca.file(), &pki.alice) {
            Ok(seen) if seen == expected => Ok(()),
            Ok(seen) => Err(format!("serial {seen:02x?}, want {expected:02x?}")),
            Err(e) => Err(e),
        }
    });
}

#[test]
fn mutual_tls_cluster_serves_etcdctl_and_replicates_over_https_peers() {
    let pki = Pki::new();
    let (cluster, metrics_ports) = mtls_cluster(&pki, None);

    // A write through one member is read through another: Raft runs over
    // the https peer links.
    assert_eq!(cluster.ctl_on(0, &["put", "greeting", "hello"]), "OK\n");
    assert_eq!(cluster.ctl_on(2, &["get", "greeting"]), "greeting\nhello\n");
    let leader = cluster.leader();
    assert!(leader < 3);

    // member list and endpoint status --cluster: every URL is https, and
    // etcdctl reaches every advertised client URL with its certificate.
    let members = json(&cluster.ctl_on(1, &["member", "list", "-w", "json"]));
    let members = members["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    for m in members {
        for url in m["clientURLs"].as_array().expect("clientURLs") {
            assert!(
                url.as_str().is_some_and(|u| u.starts_with("https://")),
                "{m}"
            );
        }
        for url in m["peerURLs"].as_array().expect("peerURLs") {
            assert!(
                url.as_str().is_some_and(|u| u.starts_with("https://")),
                "{m}"
            );
        }
    }
    // witan's own client takes etcdctl's TLS flags: the same voter set
    // again changes nothing and lists the three voters.
    let ids: Vec<String> = members
        .iter()
        .map(|m| format!("{:x}", m["ID"].as_u64().expect("member ID")))
        .collect();
    let voters = |tls: &[String]| {
        let mut cmd = Command::new(witan_tests::witan_bin());
        cmd.args(["voters", "--endpoint", &cluster.endpoint(1)])
            .args(tls)
            .args(&ids);
        run_bounded(cmd, None, Duration::from_secs(30))
    };
    let mut tls_flags = vec!["--cacert".to_string(), path_arg(pki.ca.file())];
    tls_flags.extend(pki.alice.ctl_flags());
    let out = voters(&tls_flags);
    assert!(out.status.is_some_and(|s| s.success()), "{out:?}");
    assert_eq!(out.stdout.matches(", voter, ").count(), 3, "{out:?}");
    let out = voters(&[]);
    assert!(
        out.status.is_some_and(|s| !s.success()) && out.stderr.contains("--cacert"),
        "an https endpoint without --cacert: {out:?}"
    );

    let statuses = json(&cluster.ctl_on(0, &["endpoint", "status", "--cluster", "-w", "json"]));
    let statuses = statuses.as_array().expect("statuses");
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    for status in statuses {
        assert!(
            status["Endpoint"]
                .as_str()
                .is_some_and(|e| e.starts_with("https://127.0.0.1:")),
            "{status}"
        );
        assert!(status["Status"]["leader"].as_u64().is_some_and(|l| l != 0));
    }

    // The HTTP endpoints follow the client port's TLS.
    let endpoint = cluster.endpoint(0);
    let flags = curl_tls_flags(&pki);
    let reply = curl(&format!("{endpoint}/health"), &strs(&flags)).expect("https /health");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(json(&reply.body)["health"], "true");

    // Refusals. A CA that did not sign the server's certificate:
    let mut wrong_ca = vec!["--cacert".to_string(), path_arg(pki.other_ca.file())];
    wrong_ca.extend(pki.alice.ctl_flags());
    cluster.expect_err(ctl_with(&endpoint, &wrong_ca, &["get", "greeting"]));
    // No client certificate (client-cert-auth is on):
    let no_cert = vec!["--cacert".to_string(), path_arg(pki.ca.file())];
    cluster.expect_err(ctl_with(&endpoint, &no_cert, &["get", "greeting"]));
    // A client certificate from another CA:
    let stranger = pki
        .other_ca
        .issue(pki.path(), "mallory", &leaf("mallory", &[], 0x666));
    let mut stranger_flags = no_cert.clone();
    stranger_flags.extend(stranger.ctl_flags());
    cluster.expect_err(ctl_with(&endpoint, &stranger_flags, &["get", "greeting"]));
    // Plain http to the https port, with etcdctl and with curl:
    let plain = endpoint.replacen("https://", "http://", 1);
    cluster.expect_err(ctl_with(&plain, &[], &["get", "greeting"]));
    let reply = curl(&format!("{plain}/health"), &[]);
    assert!(
        !reply.as_ref().is_ok_and(|r| r.status == 200),
        "plain http must not be served: {reply:?}"
    );
    // curl without a client certificate gets no answer either.
    let reply = curl(
        &format!("{endpoint}/health"),
        &["--cacert", &path_arg(pki.ca.file())],
    );
    assert!(reply.is_err(), "no client certificate: {reply:?}");

    // --listen-metrics-urls: plain http, only the HTTP endpoints, while the
    // client port demands a client certificate.
    let metrics = format!("http://127.0.0.1:{}", metrics_ports[0]);
    let reply = curl(&format!("{metrics}/metrics"), &[]).expect("/metrics");
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("etcd_server_has_leader 1"), "{reply:?}");
    poll_until(
        Duration::from_secs(10),
        "/readyz on the metrics port",
        || match curl(&format!("{metrics}/readyz"), &[]) {
            Ok(reply) if reply.status == 200 && reply.body == "ok\n" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let reply = curl(
        &format!("{metrics}/v3/kv/range"),
        &["-X", "POST", "-d", "{}"],
    )
    .expect("gateway on the metrics port");
    assert_eq!(
        reply.status, 404,
        "the gateway is not on the metrics listener"
    );
}

#[test]
fn a_peer_with_a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let (cluster, _) = mtls_cluster(&pki, Some(2));

    // The two good members form the quorum and replicate.
    assert_eq!(cluster.ctl_on(0, &["put", "k", "v"]), "OK\n");
    assert_eq!(cluster.ctl_on(1, &["get", "k"]), "k\nv\n");

    // The good members refuse the rogue's handshakes, and it never gets a
    // leader (so no linearizable read, and no health).
    poll_until(
        Duration::from_secs(20),
        "a good member rejecting the rogue peer's TLS handshake",
        || {
            let rejected = (0..2).any(|i| {
                cluster
                    .member(i)
                    .log_tail(400)
                    .contains("rejected connection: TLS handshake failed")
            });
            if rejected {
                Ok(())
            } else {
                Err(cluster.logs())
            }
        },
    );
    let health = cluster.run(&cluster.endpoint(2), &["endpoint", "health"], None);
    cluster.expect_err(health);
    let serializable = cluster.run(
        &cluster.endpoint(2),
        &["get", "k", "--consistency", "s"],
        None,
    );
    assert_eq!(
        serializable.stdout, "",
        "the rogue member has none of the data: {serializable}"
    );
}

#[test]
fn certificates_rotate_without_restart() {
    let pki = Pki::new();
    let (mut cluster, _) = mtls_cluster(&pki, None);
    let client_port = cluster.member(0).client_port;
    let peer_port = cluster.member(0).peer_port;
    wait_for_serial(
        client_port,
        &pki,
        CLIENT_SERIAL,
        "the first client certificate",
    );
    wait_for_serial(peer_port, &pki, PEER_SERIAL, "the first peer certificate");

    // The client port's certificate file is replaced on disk.
    pki.member_cert(&pki.ca, "client", 0, CLIENT_SERIAL + 0x10);
    wait_for_serial(
        client_port,
        &pki,
        CLIENT_SERIAL + 0x10,
        "the rotated client certificate",
    );
    assert_eq!(cluster.ctl_on(0, &["put", "after", "rotation"]), "OK\n");
    assert_eq!(cluster.ctl_on(0, &["get", "after"]), "after\nrotation\n");

    // A broken file (half written) keeps the current certificate.
    let client_cert = pki.path().join("client-node-1.pem");
    std::fs::write(&client_cert, "-----BEGIN CERTIFICATE-----\nMIIB").expect("truncate");
    poll_until(
        Duration::from_secs(10),
        "the warning about the bad file",
        || {
            if cluster
                .member(0)
                .log_tail(200)
                .contains("keeping the previous certificates")
            {
                Ok(())
            } else {
                Err(cluster.member(0).log_tail(20))
            }
        },
    );
    wait_for_serial(
        client_port,
        &pki,
        CLIENT_SERIAL + 0x10,
        "the kept certificate",
    );
    pki.member_cert(&pki.ca, "client", 0, CLIENT_SERIAL + 0x20);
    wait_for_serial(
        client_port,
        &pki,
        CLIENT_SERIAL + 0x20,
        "the certificate after the bad file",
    );

    // The peer certificate rotates too. Member 3 restarts so its links to
    // member 1 are new connections: member 1 presents the new certificate
    // as server and as client, and replication continues.
    pki.member_cert(&pki.ca, "peer", 0, PEER_SERIAL + 0x10);
    wait_for_serial(
        peer_port,
        &pki,
        PEER_SERIAL + 0x10,
        "the rotated peer certificate",
    );
    cluster.kill(2);
    cluster.restart(2);
    assert_eq!(cluster.ctl_on(0, &["put", "peer", "rotated"]), "OK\n");
    let revision = witan_tests::revision_of(&cluster.ctl_on(0, &["get", "peer", "-w", "json"]));
    cluster.wait_applied(2, revision);
    assert_eq!(
        cluster.ctl_on(2, &["get", "peer", "--consistency", "s"]),
        "peer\nrotated\n"
    );
}

#[test]
fn auto_tls_member_serves_https_with_a_self_signed_certificate() {
    let security = Security {
        client_https: true,
        peer_https: true,
        member_flags: vec![vec![
            "--auto-tls".to_string(),
            "--peer-auto-tls".to_string(),
        ]],
        // etcdctl 3.4 applies --insecure-skip-tls-verify only together
        // with --insecure-transport=false (its default, true, leaves the
        // TLS settings empty and https then verifies).
        ctl_flags: vec![
            "--insecure-transport=false".to_string(),
            "--insecure-skip-tls-verify".to_string(),
        ],
        wait_for: None,
    };
    let mut cluster = Cluster::start_secure(1, &[], security, |_| {});
    assert_eq!(cluster.ctl(&["put", "auto", "tls"]), "OK\n");
    assert_eq!(cluster.ctl(&["get", "auto"]), "auto\ntls\n");

    // curl -k: /health over https.
    let endpoint = cluster.endpoint(0);
    let reply = curl(&format!("{endpoint}/health"), &["-k"]).expect("https /health");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(json(&reply.body)["health"], "true");
    // Without -k curl cannot verify a self-signed certificate.
    assert!(curl(&format!("{endpoint}/health"), &[]).is_err());

    // The certificates live in the data dir and are reused on restart.
    let fixtures = cluster.member(0).data_dir().join("fixtures");
    let client_cert: PathBuf = fixtures.join("client").join("cert.pem");
    assert!(fixtures.join("client").join("key.pem").is_file());
    assert!(fixtures.join("peer").join("cert.pem").is_file());
    let before = std::fs::read(&client_cert).expect("client cert");
    cluster.kill(0);
    cluster.restart(0);
    assert_eq!(std::fs::read(&client_cert).expect("client cert"), before);
    assert_eq!(cluster.ctl(&["get", "auto", "--print-value-only"]), "tls\n");
}

#[test]
fn bad_tls_flags_are_refused_at_start() {
    let dir = TempDir::with_prefix("witan-tls-flags-").expect("dir");
    let data_dir = path_arg(&dir.path().join("data"));
    let run = |args: &[&str]| {
        let mut cmd = Command::new(witan_tests::witan_bin());
        cmd.args(["--data-dir", &data_dir]).args(args);
        let out = run_bounded(cmd, None, Duration::from_secs(20));
        assert!(
            out.status.is_some_and(|s| !s.success()),
            "witan {args:?} must refuse to start: {out:?}"
        );
        out.stderr
    };
    let port = free_ports(1)[0];
    let https = format!("https://127.0.0.1:{port}");
    let stderr = run(&[
        "--listen-client-urls",
        &https,
        "--advertise-client-urls",
        &https,
    ]);
    assert!(
        stderr.contains(&format!(
            "TLS key/cert (--cert-file, --key-file) must be provided for client url {https} with HTTPS scheme"
        )),
        "{stderr}"
    );
    let missing = dir.path().join("missing-cert.pem");
    let stderr = run(&[
        "--listen-client-urls",
        &https,
        "--advertise-client-urls",
        &https,
        "--cert-file",
        &path_arg(&missing),
        "--key-file",
        &path_arg(&missing),
    ]);
    assert!(stderr.contains(&path_arg(&missing)), "{stderr}");
}

#[test]
fn the_client_certificate_cn_is_the_user_name_under_auth() {
    let pki = Pki::new();
    let mut flags = pki
        .member_cert(&pki.ca, "client", 0, CLIENT_SERIAL)
        .flags("");
    flags.extend([
        "--trusted-ca-file".to_string(),
        path_arg(pki.ca.file()),
        "--client-cert-auth".to_string(),
    ]);
    let security = Security {
        client_https: true,
        peer_https: false,
        member_flags: vec![flags],
        // Every harness etcdctl run presents alice's certificate (CN alice).
        ctl_flags: pki.ctl_flags(),
        wait_for: None,
    };
    let cluster = Cluster::start_secure(1, &[], security, |_| {});
    for key in ["a/one", "b/one"] {
        cluster.ctl(&["put", key, "v1"]);
    }
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "a/",
            "--prefix",
        ],
        &["user", "grant-role", "alice", "reader"],
        &["auth", "enable"],
    ] {
        cluster.ctl(args);
    }

    // No --user: the certificate's CN makes the caller alice, who may read
    // a/ and nothing else.
    assert_eq!(cluster.ctl(&["get", "a/one"]), "a/one\nv1\n");
    for denied in [&["put", "a/two", "x"][..], &["get", "b/one"]] {
        let out = cluster.ctl_err(denied);
        assert!(
            out.error_line().contains("etcdserver: permission denied"),
            "{out}"
        );
    }
    // A token (--user) wins over the certificate, as in etcd.
    assert_eq!(
        cluster.ctl(&["--user", "root:rootpw", "put", "b/two", "x"]),
        "OK\n"
    );
}
