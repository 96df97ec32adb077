//! How `spec.tls` reaches a pod: the TLS Secrets mounted read-only and the
//! etcd flags that point at the files. Pure: the Secrets' content never
//! enters the pod template, so rotating a certificate changes no template
//! and rolls no member (the node reloads the files).

use k8s_openapi::api::core::v1::{SecretVolumeSource, Volume, VolumeMount};

use crate::{
    crd::TlsSpec,
    names::{ClusterNames, METRICS_PORT},
};

// Mounted below /run (Docker's place for secrets): a tmpfs in any image,
// so the mount point can be made even when the image's /etc is read-only.

/// Where the members' client-port certificate is mounted.
pub const SERVER_DIR: &str = "/run/secrets/witan/server";
/// Where the members' peer certificate is mounted.
pub const PEER_DIR: &str = "/run/secrets/witan/peer";
/// Where a backup job's client certificate is mounted.
pub const CLIENT_DIR: &str = "/run/secrets/witan/client";
/// The keys of a `kubernetes.io/tls` Secret (cert-manager writes `ca.crt` too).
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
pub const CA_KEY: &str = "ca.crt";

/// A Secret volume and its read-only mount at `dir`.
fn secret_volume(name: &str, secret: String, dir: &str) -> (Volume, VolumeMount) {
    (
        Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: name.into(),
            mount_path: dir.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

/// The members' two certificate volumes and their mounts.
#[must_use]
pub fn member_volumes(tls: &TlsSpec, names: &ClusterNames) -> Vec<(Volume, VolumeMount)> {
    vec![
        secret_volume("tls-server", tls.server_secret(&names.name), SERVER_DIR),
        secret_volume("tls-peer", tls.peer_secret(&names.name), PEER_DIR),
    ]
}

/// The operator's client certificate, for a backup job.
#[must_use]
pub fn client_volume(tls: &TlsSpec, names: &ClusterNames) -> (Volume, VolumeMount) {
    secret_volume("tls-client", tls.operator_secret(&names.name), CLIENT_DIR)
}

fn file(dir: &str, key: &str) -> String {
    format!("{dir}/{key}")
}

/// etcd's TLS flags for a member. Peers always authenticate each other;
/// clients must present a certificate when `clientCertAuth` is set. Health
/// and metrics move to a plain-http port so probes need no certificate.
#[must_use]
pub fn member_flags(tls: &TlsSpec) -> Vec<String> {
    let mut flags = vec![
        format!("--cert-file={}", file(SERVER_DIR, CERT_KEY)),
        format!("--key-file={}", file(SERVER_DIR, KEY_KEY)),
        format!("--trusted-ca-file={}", file(SERVER_DIR, CA_KEY)),
    ];
    if tls.client_cert_auth {
        flags.push("--client-cert-auth".into());
    }
    flags.extend([
        format!("--peer-cert-file={}", file(PEER_DIR, CERT_KEY)),
        format!("--peer-key-file={}", file(PEER_DIR, KEY_KEY)),
        format!("--peer-trusted-ca-file={}", file(PEER_DIR, CA_KEY)),
        "--peer-client-cert-auth".into(),
        format!("--listen-metrics-urls=http://0.0.0.0:{METRICS_PORT}"),
    ]);
    flags
}

/// etcdctl's flags (`--cacert`, `--cert`, `--key`) for a backup job with
/// the client certificate at [`CLIENT_DIR`].
#[must_use]
pub fn client_flags() -> Vec<String> {
    vec![
        format!("--cacert={}", file(CLIENT_DIR, CA_KEY)),
        format!("--cert={}", file(CLIENT_DIR, CERT_KEY)),
        format!("--key={}", file(CLIENT_DIR, KEY_KEY)),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn names() -> ClusterNames {
        let mut kvc = crate::resources::testing::kvc(3);
        kvc.spec.tls = Some(TlsSpec::default());
        ClusterNames::of(&kvc).unwrap()
    }

    #[test]
    fn secrets_default_to_names_derived_from_the_cluster_and_mount_read_only() {
        let volumes = member_volumes(&TlsSpec::default(), &names());
        let (server, server_mount) = &volumes[0];
        assert_eq!(
            serde_json::to_value(server).unwrap(),
            json!({"name": "tls-server", "secret": {"secretName": "kv-server-tls", "optional": false}})
        );
        assert_eq!(server_mount.mount_path, SERVER_DIR);
        assert_eq!(server_mount.read_only, Some(true));
        let (peer, peer_mount) = &volumes[1];
        assert_eq!(
            peer.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("kv-peer-tls")
        );
        assert_eq!(peer_mount.read_only, Some(true));
        let (client, _) = client_volume(&TlsSpec::default(), &names());
        assert_eq!(
            client.secret.unwrap().secret_name.as_deref(),
            Some("kv-operator-tls")
        );
    }

    #[test]
    fn user_secret_names_win() {
        let tls = TlsSpec {
            server_secret_name: Some("srv".into()),
            peer_secret_name: Some("peers".into()),
            operator_secret_name: Some("op".into()),
            ..TlsSpec::default()
        };
        let volumes = member_volumes(&tls, &names());
        assert_eq!(
            volumes[0].0.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("srv")
        );
        assert_eq!(
            volumes[1].0.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("peers")
        );
        assert_eq!(
            client_volume(&tls, &names())
                .0
                .secret
                .unwrap()
                .secret_name
                .as_deref(),
            Some("op")
        );
    }

    #[test]
    fn member_flags_are_etcds_and_client_cert_auth_follows_the_spec() {
        let mut tls = TlsSpec {
            client_cert_auth: true,
            ..TlsSpec::default()
        };
        assert_eq!(
            member_flags(&tls),
            [
                "--cert-file=/run/secrets/witan/server/tls.crt",
                "--key-file=/run/secrets/witan/server/tls.key",
                "--trusted-ca-file=/run/secrets/witan/server/ca.crt",
                "--client-cert-auth",
                "--peer-cert-file=/run/secrets/witan/peer/tls.crt",
                "--peer-key-file=/run/secrets/witan/peer/tls.key",
                "--peer-trusted-ca-file=/run/secrets/witan/peer/ca.crt",
                "--peer-client-cert-auth",
                "--listen-metrics-urls=http://0.0.0.0:2381",
            ]
        );
        tls.client_cert_auth = false;
        assert!(!member_flags(&tls).contains(&"--client-cert-auth".to_string()));
        assert!(member_flags(&tls).contains(&"--peer-client-cert-auth".to_string()));
    }

    #[test]
    fn client_flags_point_at_the_mounted_client_certificate() {
        assert_eq!(
            client_flags(),
            [
                "--cacert=/run/secrets/witan/client/ca.crt",
                "--cert=/run/secrets/witan/client/tls.crt",
                "--key=/run/secrets/witan/client/tls.key",
            ]
        );
    }
}
