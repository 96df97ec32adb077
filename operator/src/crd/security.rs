//! The security parts of a `KvCluster` spec: TLS (`spec.tls`), etcd
//! authentication (`spec.auth`) and the NetworkPolicy (`spec.networkPolicy`).

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// TLS on the client port and between members. Each Secret is of type
/// `kubernetes.io/tls` with `tls.crt`, `tls.key` and `ca.crt`; the members
/// read them from disk and reload them when they change, so rotating a
/// certificate restarts nothing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// The members' server certificate on the client port; its `ca.crt`
    /// verifies client certificates. Default `<name>-server-tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_secret_name: Option<String>,
    /// The members' peer certificate, presented and required on the peer
    /// port (both server and client auth); its `ca.crt` verifies the other
    /// members. Default `<name>-peer-tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_secret_name: Option<String>,
    /// The client certificate the operator and the backup jobs present; its
    /// `ca.crt` verifies the members' server certificate. Default
    /// `<name>-operator-tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_secret_name: Option<String>,
    /// Require a client certificate signed by the server Secret's `ca.crt`
    /// on the client port (etcd's `--client-cert-auth`).
    #[serde(default = "default_true")]
    pub client_cert_auth: bool,
    /// Have cert-manager issue the three Secrets: the operator creates
    /// `cert-manager.io/v1` Certificates for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerSpec>,
}

fn default_true() -> bool {
    true
}

/// Certificates issued by cert-manager.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerSpec {
    /// The Issuer or ClusterIssuer that signs all three certificates (so one
    /// CA verifies all of them, e.g. a CA issuer).
    pub issuer_ref: IssuerRef,
}

/// A cert-manager issuer, as in a Certificate's `spec.issuerRef`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    pub name: String,
    /// `Issuer` (in the KvCluster's namespace) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}

fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// etcd authentication: users, roles and tokens on every request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Turn authentication on once the cluster is up. The operator never
    /// turns it off again: set it back to false and run `etcdctl auth
    /// disable` yourself.
    #[serde(default)]
    pub enabled: bool,
    /// The password of the `root` user, which the operator creates.
    pub root_password_secret_ref: SecretKeyRef,
}

/// One key of a Secret in the KvCluster's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    #[serde(default = "default_password_key")]
    pub key: String,
}

fn default_password_key() -> String {
    "password".into()
}

/// A NetworkPolicy that admits only what a member needs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    #[serde(default)]
    pub enabled: bool,
    /// Who may reach the client port, besides the operator, the backup jobs
    /// and the members themselves. Empty: nobody else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<NetworkPolicyPeer>,
    /// Who may scrape `/metrics`: the metrics port with `spec.tls`, else the
    /// client port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitoring: Vec<NetworkPolicyPeer>,
}

impl TlsSpec {
    /// The Secret with the members' client-port certificate.
    #[must_use]
    pub fn server_secret(&self, cluster: &str) -> String {
        self.server_secret_name
            .clone()
            .unwrap_or_else(|| format!("{cluster}-server-tls"))
    }

    /// The Secret with the members' peer certificate.
    #[must_use]
    pub fn peer_secret(&self, cluster: &str) -> String {
        self.peer_secret_name
            .clone()
            .unwrap_or_else(|| format!("{cluster}-peer-tls"))
    }

    /// The Secret with the operator's (and backup jobs') client certificate.
    #[must_use]
    pub fn operator_secret(&self, cluster: &str) -> String {
        self.operator_secret_name
            .clone()
            .unwrap_or_else(|| format!("{cluster}-operator-tls"))
    }
}
