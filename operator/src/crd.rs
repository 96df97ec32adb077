//! The `KvCluster` custom resource (`witan.io/v1alpha1`, short name `kvc`).
//!
//! These Rust types are the single source of truth for the CRD schema:
//! `crdgen` prints `KvCluster::crd()` as YAML, the committed copies in
//! `crds/` and `charts/witan/crds/` are checked against it by
//! `tests/crd_drift.rs`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint},
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{Condition, Time},
    },
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod security;
pub use security::{
    AuthSpec, CertManagerSpec, IssuerRef, NetworkPolicySpec, SecretKeyRef, TlsSpec,
};

/// The API group of every witan resource.
pub const GROUP: &str = "witan.io";

/// Member counts a `KvCluster` may ask for. An even voting set tolerates no
/// more failures than the odd set one smaller, and costs one more write
/// acknowledgement, so the API server refuses even numbers outright.
pub const ALLOWED_REPLICAS: [i32; 5] = [1, 3, 5, 7, 9];

/// A replicated witan key-value store: the desired shape of one cluster.
// Two printer columns are both `type_ = "string"`, which the lint reads as a
// repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "witan.io",
    version = "v1alpha1",
    kind = "KvCluster",
    namespaced,
    shortname = "kvc",
    status = "KvClusterStatus",
    doc = "A replicated witan key-value store (etcd v3 API) managed by witan-operator",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "members that are ready"
    ),
    printcolumn(
        name = "Leader",
        type_ = "string",
        json_path = ".status.leader",
        description = "the member that leads Raft"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
// Members register their peer URLs (http or https) in Raft when they join:
// switching TLS on or off later would need every member re-registered.
#[x_kube(validation = Rule::new("has(self.tls) == has(oldSelf.tls)").message(
    "spec.tls cannot be added or removed once the cluster exists: members registered their peer URLs with the scheme they started with"
))]
pub struct KvClusterSpec {
    /// Number of voting members: 1, 3, 5, 7 or 9.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self in [1, 3, 5, 7, 9]").message(
        "replicas must be 1, 3, 5, 7 or 9: an even number of voters tolerates no more failures than one fewer"
    ))]
    pub replicas: i32,

    /// witan version: the image tag used when `image` is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// Full image reference; overrides `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// One persistent volume per member.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Compute resources of each member's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Where members may run. Without affinity or topologySpreadConstraints,
    /// members are spread across nodes.
    #[serde(default)]
    pub placement: Placement,

    /// Extra `witan` flags appended to every member's command line,
    /// e.g. `--snapshot-count=5000`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_flags: Vec<String>,

    /// Scheduled backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// How a new cluster starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,

    /// When true the operator changes nothing (it still reports status).
    #[serde(default)]
    pub paused: bool,

    /// TLS for clients and peers (https everywhere); plain http when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// etcd authentication (users, roles, tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,

    /// A NetworkPolicy admitting only clients, the operator, peers and
    /// monitoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
}

fn default_replicas() -> i32 {
    3
}

/// A member's volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
// The class of a PersistentVolume is fixed; the operator grows volumes in
// place (docs/operator.md), it does not migrate data between classes.
#[x_kube(validation = Rule::new(STORAGE_CLASS_IMMUTABLE_RULE).message(STORAGE_CLASS_IMMUTABLE_MESSAGE))]
pub struct StorageSpec {
    /// Size of each member's volume. It may grow after creation (the
    /// StorageClass must allow volume expansion), never shrink.
    #[serde(default = "default_storage_size")]
    #[x_kube(
        validation = Rule::new("isQuantity(string(self))").message("storage.size must be a quantity such as 10Gi"),
        validation = Rule::new(STORAGE_SIZE_GROWS_RULE).message(STORAGE_SIZE_GROWS_MESSAGE),
    )]
    pub size: Quantity,

    /// StorageClass of the volumes (the cluster default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,

    /// What happens to a removed member's volume on scale-down.
    #[serde(default)]
    pub on_scale_down: VolumePolicy,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            on_scale_down: VolumePolicy::default(),
        }
    }
}

/// CEL: `storageClassName` is set or unset as it was, and the same.
pub const STORAGE_CLASS_IMMUTABLE_RULE: &str = "has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)";
pub const STORAGE_CLASS_IMMUTABLE_MESSAGE: &str = "storage.storageClassName cannot change once the cluster exists: its volumes keep their StorageClass";
/// CEL: the size never shrinks (a size stored before this rule that is not
/// a quantity does not block updates).
pub const STORAGE_SIZE_GROWS_RULE: &str = "!isQuantity(string(oldSelf)) || quantity(string(self)).compareTo(quantity(string(oldSelf))) >= 0";
pub const STORAGE_SIZE_GROWS_MESSAGE: &str =
    "storage.size cannot shrink: a volume can be expanded, never reduced";

fn default_storage_size() -> Quantity {
    Quantity("1Gi".to_string())
}

/// Keep or delete a volume whose member went away.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VolumePolicy {
    /// Keep the volume (the safe default: data can be inspected or restored).
    #[default]
    Keep,
    /// Delete the volume with the member.
    Delete,
}

/// Pod placement of the members.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
}

/// Scheduled snapshots of the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When to take a snapshot, in cron syntax (e.g. `0 */6 * * *`).
    pub schedule: String,
    /// Where snapshots are stored.
    pub destination: BackupLocation,
    /// How many snapshots to keep; older ones are deleted.
    #[serde(default = "default_retention")]
    #[x_kube(validation = Rule::new("self >= 1").message("retention must keep at least one backup"))]
    pub retention: i32,
}

fn default_retention() -> i32 {
    7
}

/// A place backups live: exactly one of a PVC or an S3-compatible bucket.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.pvc) != has(self.s3)").message("set exactly one of pvc or s3"))]
pub struct BackupLocation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcLocation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Location>,
}

/// Backups in a PersistentVolumeClaim.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvcLocation {
    pub claim_name: String,
    /// Directory inside the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// Backups in an S3-compatible bucket.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Location {
    /// Endpoint URL, e.g. `https://s3.eu-west-1.amazonaws.com` or a MinIO URL.
    pub endpoint: String,
    pub bucket: String,
    /// Key prefix inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style addressing (needed by most self-hosted servers).
    #[serde(default)]
    pub force_path_style: bool,
    /// Secret with keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub credentials_secret_name: String,
}

/// How a new cluster starts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Start from a backup instead of an empty store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
}

/// The backup a new cluster starts from (same keys and revisions). Only
/// founding members with an empty data dir restore it; members that have
/// data, or join later, never do (docs/backup.md).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// Where the backup is stored.
    pub source: BackupLocation,
    /// The backup's file name (object key below the prefix, or file in the
    /// PVC), or `latest`: the newest backup of `sourceCluster` taken before
    /// this KvCluster was created.
    #[x_kube(validation = Rule::new("self == 'latest' || (self != '' && self != '.' && self != '..' && !self.contains('/'))").message("name must be a backup's file name (no '/') or latest"))]
    pub name: String,
    /// The cluster whose backups `latest` chooses among (backups are named
    /// `<cluster>-<time>-rev<revision>.witan-snapshot`); this KvCluster's
    /// name when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_cluster: Option<String>,
}

/// `RestoreSpec::name` that picks the newest backup.
pub const LATEST: &str = "latest";

/// What the operator last saw of the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KvClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `Available`, `Progressing`, `Degraded`, `BackupReady`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Members the StatefulSet runs (the scale subresource reads this).
    #[serde(default)]
    pub replicas: i32,
    /// Members whose pod is ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the member pods, as a string (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// Name of the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Raft cluster id, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<LastBackup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Lifecycle summary shown by `kubectl get kvc`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Children are being created, the cluster has not answered yet.
    Creating,
    /// All members healthy, nothing to change.
    Running,
    /// Members are being added or removed.
    Scaling,
    /// Members are being replaced one by one.
    Upgrading,
    /// The members' volumes are being grown (`spec.storage.size`).
    Resizing,
    /// Serving, but a member is unhealthy or a step cannot proceed.
    Degraded,
    /// No member answers.
    Unavailable,
    /// `spec.paused` is set.
    Paused,
}

/// One Raft member as the operator last saw it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub name: String,
    /// Member id in hex.
    pub id: String,
    pub role: MemberRole,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberRole {
    Leader,
    Follower,
    Learner,
}

/// The last backup that succeeded.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastBackup {
    pub time: Time,
    pub revision: i64,
    pub size_bytes: i64,
    pub location: String,
}

impl KvClusterSpec {
    /// Whether authentication is asked for.
    #[must_use]
    pub fn auth_enabled(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.enabled)
    }

    /// A spec with `replicas` members and every other field at its default.
    #[must_use]
    pub fn with_replicas(replicas: i32) -> Self {
        Self {
            replicas,
            version: None,
            image: None,
            storage: StorageSpec::default(),
            resources: None,
            placement: Placement::default(),
            extra_flags: Vec::new(),
            backup: None,
            bootstrap: None,
            paused: false,
            tls: None,
            auth: None,
            network_policy: None,
        }
    }
}

/// The CRD as YAML, exactly as committed in `crds/kvcluster.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    use kube::CustomResourceExt;
    let body = serde_yaml_ng::to_string(&KvCluster::crd())?;
    Ok(format!(
        "# Generated by `cargo run -p witan-operator --bin crdgen`; do not edit.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    use super::*;

    fn crd_json() -> Value {
        serde_json::to_value(KvCluster::crd()).expect("CRD serialises")
    }

    fn version(crd: &Value) -> &Value {
        &crd["spec"]["versions"][0]
    }

    #[test]
    fn crd_is_namespaced_with_short_name_kvc() {
        let crd = crd_json();
        assert_eq!(crd["metadata"]["name"], "kvclusters.witan.io");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["kvc"]));
        assert_eq!(version(&crd)["name"], "v1alpha1");
    }

    #[test]
    fn storage_size_only_grows_and_its_class_is_fixed_by_cel_rules() {
        let crd = crd_json();
        let storage = &version(&crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["storage"];
        let size_rules = storage["properties"]["size"]["x-kubernetes-validations"]
            .as_array()
            .expect("size rules");
        let rules: Vec<&str> = size_rules
            .iter()
            .filter_map(|r| r["rule"].as_str())
            .collect();
        assert_eq!(
            rules,
            ["isQuantity(string(self))", STORAGE_SIZE_GROWS_RULE],
            "quantities compared as such, not as strings"
        );
        assert!(
            STORAGE_SIZE_GROWS_RULE
                .contains("quantity(string(self)).compareTo(quantity(string(oldSelf))) >= 0")
        );
        assert_eq!(size_rules[1]["message"], STORAGE_SIZE_GROWS_MESSAGE);
        let class_rules = storage["x-kubernetes-validations"]
            .as_array()
            .expect("storage rules");
        assert_eq!(class_rules.len(), 1);
        assert_eq!(class_rules[0]["rule"], STORAGE_CLASS_IMMUTABLE_RULE);
        assert_eq!(class_rules[0]["message"], STORAGE_CLASS_IMMUTABLE_MESSAGE);
    }

    #[test]
    fn replicas_carry_a_cel_rule_that_only_admits_odd_sizes() {
        let crd = crd_json();
        let replicas = &version(&crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["replicas"];
        let rules = replicas["x-kubernetes-validations"]
            .as_array()
            .expect("rules");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0]["rule"], "self in [1, 3, 5, 7, 9]");
        assert!(
            rules[0]["message"]
                .as_str()
                .expect("message")
                .contains("1, 3, 5, 7 or 9")
        );
        assert_eq!(replicas["default"], 3);
    }

    #[test]
    fn backup_location_requires_exactly_one_destination() {
        let crd = crd_json();
        let location = &version(&crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["backup"]["properties"]["destination"];
        assert_eq!(
            location["x-kubernetes-validations"][0]["rule"],
            "has(self.pvc) != has(self.s3)"
        );
    }

    #[test]
    fn tls_can_only_be_chosen_at_creation() {
        let crd = crd_json();
        let spec = &version(&crd)["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["x-kubernetes-validations"][0]["rule"],
            "has(self.tls) == has(oldSelf.tls)"
        );
    }

    #[test]
    fn security_fields_parse_with_their_defaults() {
        let spec: KvClusterSpec = serde_json::from_value(json!({
            "tls": {"certManager": {"issuerRef": {"name": "ca"}}},
            "auth": {"enabled": true, "rootPasswordSecretRef": {"name": "root"}},
            "networkPolicy": {"enabled": true},
        }))
        .expect("parses");
        let tls = spec.tls.as_ref().expect("tls");
        assert!(tls.client_cert_auth, "mTLS unless turned off");
        let issuer = &tls.cert_manager.as_ref().expect("certManager").issuer_ref;
        assert_eq!(issuer.kind, "Issuer");
        assert_eq!(issuer.group, "cert-manager.io");
        assert_eq!(tls.server_secret("kv"), "kv-server-tls");
        assert_eq!(tls.peer_secret("kv"), "kv-peer-tls");
        assert_eq!(tls.operator_secret("kv"), "kv-operator-tls");
        let auth = spec.auth.as_ref().expect("auth");
        assert_eq!(auth.root_password_secret_ref.key, "password");
        assert!(spec.auth_enabled());
        let policy = spec.network_policy.as_ref().expect("networkPolicy");
        assert!(policy.clients.is_empty() && policy.monitoring.is_empty());
    }

    #[test]
    fn scale_subresource_points_at_spec_and_status_replicas() {
        let crd = crd_json();
        let sub = &version(&crd)["subresources"];
        assert_eq!(sub["status"], json!({}));
        assert_eq!(sub["scale"]["specReplicasPath"], ".spec.replicas");
        assert_eq!(sub["scale"]["statusReplicasPath"], ".status.replicas");
        assert_eq!(sub["scale"]["labelSelectorPath"], ".status.selector");
    }

    #[test]
    fn printer_columns_are_ready_leader_phase_age() {
        let crd = crd_json();
        let names: Vec<&str> = version(&crd)["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["Ready", "Leader", "Phase", "Age"]);
    }

    #[test]
    fn a_minimal_manifest_fills_defaults() {
        let kvc: KvClusterSpec = serde_json::from_value(json!({})).expect("empty spec parses");
        assert_eq!(kvc, KvClusterSpec::with_replicas(3));
        assert_eq!(kvc.storage.size, Quantity("1Gi".into()));
        assert_eq!(kvc.storage.on_scale_down, VolumePolicy::Keep);
    }

    #[test]
    fn the_cel_rule_and_the_operator_agree_on_allowed_replicas() {
        let crd = crd_json();
        let rule = &version(&crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["replicas"]["x-kubernetes-validations"][0]["rule"];
        assert_eq!(
            rule.as_str(),
            Some(format!("self in {ALLOWED_REPLICAS:?}").as_str())
        );
        assert!(ALLOWED_REPLICAS.iter().all(|r| r % 2 == 1));
    }
}
