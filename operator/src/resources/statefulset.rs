//! The StatefulSet: stable member identity (`<name>-<ordinal>`), one volume
//! per member, and `OnDelete` updates so that the operator, not the
//! StatefulSet controller, decides which member is replaced when.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{
            StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
            StatefulSetUpdateStrategy,
        },
        core::v1::{
            Capabilities, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource,
            EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
            PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec,
            PodTemplateSpec, Probe, SeccompProfile, SecurityContext, TopologySpreadConstraint,
            Volume, VolumeMount, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use crate::{
    crd::{KvCluster, VolumePolicy},
    error::Result,
    names::{CLIENT_PORT, ClusterNames, PEER_PORT, image},
    resources::child_meta,
};

/// Where each member's volume is mounted; the data dir lives below it.
pub const DATA_MOUNT: &str = "/var/lib/witan";
/// The data dir inside the volume (a subdirectory, so a filesystem's
/// `lost+found` never sits in it).
pub const DATA_DIR: &str = "/var/lib/witan/data";
/// The non-root user and group of the witan image.
pub const RUN_AS: i64 = 65532;

/// The member StatefulSet with `replicas` pods.
pub fn build(kvc: &KvCluster, names: &ClusterNames, replicas: i32) -> Result<StatefulSet> {
    let spec = &kvc.spec;
    let mut pod_labels = names.labels();
    pod_labels.insert("witan.io/cluster".into(), names.name.clone());

    Ok(StatefulSet {
        metadata: child_meta(kvc, names, names.statefulset())?,
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(names.headless_service()),
            selector: LabelSelector {
                match_labels: Some(names.selector_labels()),
                match_expressions: None,
            },
            // Founding members must start together: none is ready until a
            // leader is elected, so OrderedReady would wait forever on pod 0.
            pod_management_policy: Some("Parallel".into()),
            // The operator replaces members itself, followers first and the
            // leader last, never more than one at a time.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    // The StatefulSet shrinks only after the operator removed the
                    // member from Raft, so deleting its volume then is safe.
                    when_scaled: Some(
                        match spec.storage.on_scale_down {
                            VolumePolicy::Keep => "Retain",
                            VolumePolicy::Delete => "Delete",
                        }
                        .into(),
                    ),
                    // Deleting the KvCluster keeps the data: losing it should take
                    // a second, deliberate step.
                    when_deleted: Some("Retain".into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(kvc, names)),
            },
            volume_claim_templates: Some(vec![volume_claim_template(kvc)]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    })
}

fn pod_spec(kvc: &KvCluster, names: &ClusterNames) -> PodSpec {
    let placement = &kvc.spec.placement;
    let topology_spread_constraints =
        match (&placement.topology_spread_constraints, &placement.affinity) {
            (Some(user), _) => Some(user.clone()),
            // The user chose their own placement rules: add nothing.
            (None, Some(_)) => None,
            (None, None) => Some(vec![spread_across_nodes(names)]),
        };
    PodSpec {
        containers: vec![container(kvc, names)],
        // Service links would inject `<SERVICE>_PORT`-style variables; a
        // Service named `witan-...` would then produce `WITAN_*` variables
        // that the member reads as flags.
        enable_service_links: Some(false),
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            fs_group_change_policy: Some("OnRootMismatch".into()),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        node_selector: placement.node_selector.clone(),
        tolerations: placement.tolerations.clone(),
        affinity: placement.affinity.clone(),
        topology_spread_constraints,
        termination_grace_period_seconds: Some(30),
        volumes: Some(vec![Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    }
}

/// Spread members over nodes when possible, without blocking scheduling on
/// a cluster with fewer nodes than members.
fn spread_across_nodes(names: &ClusterNames) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "kubernetes.io/hostname".into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(names.selector_labels()),
            match_expressions: None,
        }),
        ..TopologySpreadConstraint::default()
    }
}

/// Learners a member accepts at once: enough for the largest step up
/// (1 -> 9 members).
const MAX_LEARNERS: u32 = 8;

fn container(kvc: &KvCluster, names: &ClusterNames) -> Container {
    let env_value = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    // `$(WITAN_NAME)` is expanded by the kubelet from the variable above it.
    let host = format!(
        "$(WITAN_NAME).{}.{}.svc",
        names.headless_service(),
        names.namespace
    );
    let env = vec![
        EnvVar {
            name: "WITAN_NAME".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        },
        env_value("WITAN_DATA_DIR", DATA_DIR.into()),
        env_value(
            "WITAN_LISTEN_CLIENT_URLS",
            format!("http://0.0.0.0:{CLIENT_PORT}"),
        ),
        env_value(
            "WITAN_ADVERTISE_CLIENT_URLS",
            format!("http://{host}:{CLIENT_PORT}"),
        ),
        env_value(
            "WITAN_LISTEN_PEER_URLS",
            format!("http://0.0.0.0:{PEER_PORT}"),
        ),
        env_value(
            "WITAN_INITIAL_ADVERTISE_PEER_URLS",
            format!("http://{host}:{PEER_PORT}"),
        ),
        // The operator adds every new member as a learner before one joint
        // change promotes them all: growing 1 -> 9 adds 8 at once, where
        // witan (like etcd) allows 1 by default.
        env_value("WITAN_MAX_LEARNERS", MAX_LEARNERS.to_string()),
    ];
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("client".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    Container {
        name: "witan".into(),
        image: Some(image(kvc)),
        args: (!kvc.spec.extra_flags.is_empty()).then(|| kvc.spec.extra_flags.clone()),
        env: Some(env),
        // --initial-cluster, --initial-cluster-state, --initial-cluster-token.
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: names.configmap(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        ports: Some(vec![
            ContainerPort {
                name: Some("client".into()),
                container_port: CLIENT_PORT,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("peer".into()),
                container_port: PEER_PORT,
                ..ContainerPort::default()
            },
        ]),
        // A restored or large member may take a while to open its store.
        startup_probe: Some(probe("/livez", 2, 150)),
        liveness_probe: Some(probe("/livez", 10, 3)),
        // Not ready without a leader or while a learner (see the node's /readyz).
        readiness_probe: Some(probe("/readyz", 5, 2)),
        resources: kvc.spec.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: DATA_MOUNT.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    }
}

fn volume_claim_template(kvc: &KvCluster) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: kvc.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    kvc.spec.storage.size.clone(),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{Affinity, ResourceRequirements, Toleration},
        apimachinery::pkg::api::resource::Quantity,
    };
    use serde_json::{Value, json};

    use super::*;
    use crate::resources::testing::{assert_owned, kvc};

    fn sts_json(kvc: &KvCluster, replicas: i32) -> Value {
        let names = ClusterNames::of(kvc).unwrap();
        serde_json::to_value(build(kvc, &names, replicas).unwrap()).unwrap()
    }

    fn env(json: &Value) -> BTreeMap<String, Value> {
        json["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let value = e
                    .get("value")
                    .cloned()
                    .unwrap_or_else(|| e["valueFrom"].clone());
                (e["name"].as_str().unwrap().to_string(), value)
            })
            .collect()
    }

    #[test]
    fn statefulset_has_stable_identity_and_operator_driven_updates() {
        let json = sts_json(&kvc(3), 3);
        assert_owned(&json);
        let spec = &json["spec"];
        assert_eq!(spec["replicas"], 3);
        assert_eq!(spec["serviceName"], "kv-peer");
        assert_eq!(spec["podManagementPolicy"], "Parallel");
        assert_eq!(spec["updateStrategy"], json!({"type": "OnDelete"}));
        assert_eq!(
            spec["selector"]["matchLabels"]["app.kubernetes.io/instance"],
            "kv"
        );
        assert_eq!(
            spec["template"]["metadata"]["labels"]["app.kubernetes.io/instance"],
            "kv"
        );
    }

    #[test]
    fn each_member_gets_a_volume_of_the_requested_size_and_class() {
        let mut kvc = kvc(3);
        kvc.spec.storage.size = Quantity("8Gi".into());
        kvc.spec.storage.storage_class_name = Some("fast".into());
        let json = sts_json(&kvc, 3);
        let claim = &json["spec"]["volumeClaimTemplates"][0];
        assert_eq!(claim["metadata"]["name"], "data");
        assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "8Gi");
        assert_eq!(claim["spec"]["storageClassName"], "fast");
        assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        let mounts = &json["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
        assert_eq!(
            mounts[0],
            json!({"name": "data", "mountPath": "/var/lib/witan"})
        );
    }

    #[test]
    fn volumes_follow_the_scale_down_policy_and_survive_cluster_deletion() {
        let mut kvc = kvc(3);
        let policy = |kvc: &KvCluster| {
            sts_json(kvc, 3)["spec"]["persistentVolumeClaimRetentionPolicy"].clone()
        };
        assert_eq!(
            policy(&kvc),
            json!({"whenScaled": "Retain", "whenDeleted": "Retain"})
        );
        kvc.spec.storage.on_scale_down = VolumePolicy::Delete;
        assert_eq!(
            policy(&kvc),
            json!({"whenScaled": "Delete", "whenDeleted": "Retain"})
        );
    }

    #[test]
    fn probes_use_livez_and_readyz_on_the_client_port() {
        let json = sts_json(&kvc(3), 3);
        let c = &json["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
        assert_eq!(c["startupProbe"]["httpGet"]["path"], "/livez");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], "client");
        assert_eq!(
            c["ports"][0],
            json!({"name": "client", "containerPort": 2379})
        );
        assert_eq!(
            c["ports"][1],
            json!({"name": "peer", "containerPort": 2380})
        );
    }

    #[test]
    fn pods_meet_the_restricted_pod_security_standard() {
        let json = sts_json(&kvc(3), 3);
        let pod = &json["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(pod["securityContext"]["fsGroup"], 65532);
        let sc = &pod["containers"][0]["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        // With a read-only root filesystem the only writable paths are volumes.
        assert_eq!(pod["volumes"][0]["name"], "tmp");
        assert_eq!(pod["enableServiceLinks"], false);
    }

    #[test]
    fn each_pod_derives_its_member_flags_from_its_own_name() {
        let json = sts_json(&kvc(3), 3);
        let env = env(&json);
        assert_eq!(
            env["WITAN_NAME"],
            json!({"fieldRef": {"fieldPath": "metadata.name"}})
        );
        assert_eq!(
            env["WITAN_INITIAL_ADVERTISE_PEER_URLS"],
            "http://$(WITAN_NAME).kv-peer.prod.svc:2380"
        );
        assert_eq!(
            env["WITAN_ADVERTISE_CLIENT_URLS"],
            "http://$(WITAN_NAME).kv-peer.prod.svc:2379"
        );
        assert_eq!(env["WITAN_LISTEN_CLIENT_URLS"], "http://0.0.0.0:2379");
        assert_eq!(env["WITAN_LISTEN_PEER_URLS"], "http://0.0.0.0:2380");
        assert_eq!(env["WITAN_DATA_DIR"], "/var/lib/witan/data");
        assert_eq!(
            env["WITAN_MAX_LEARNERS"], "8",
            "room for 1 -> 9 in one step"
        );
        // WITAN_NAME must precede the variables that expand it.
        let first = &json["spec"]["template"]["spec"]["containers"][0]["env"][0]["name"];
        assert_eq!(first, "WITAN_NAME");
        let env_from = &json["spec"]["template"]["spec"]["containers"][0]["envFrom"][0];
        assert_eq!(env_from["configMapRef"]["name"], "kv-config");
    }

    #[test]
    fn members_spread_across_nodes_by_default() {
        let json = sts_json(&kvc(3), 3);
        let spread = &json["spec"]["template"]["spec"]["topologySpreadConstraints"][0];
        assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
        assert_eq!(spread["maxSkew"], 1);
        assert_eq!(spread["whenUnsatisfiable"], "ScheduleAnyway");
        assert_eq!(
            spread["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"],
            "kv"
        );
    }

    #[test]
    fn user_placement_resources_and_flags_reach_the_pod() {
        let mut kvc = kvc(3);
        kvc.spec.placement.node_selector = Some(BTreeMap::from([("disk".into(), "ssd".into())]));
        kvc.spec.placement.tolerations = Some(vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        }]);
        kvc.spec.placement.affinity = Some(Affinity::default());
        kvc.spec.resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), Quantity("500m".into()))])),
            ..ResourceRequirements::default()
        });
        kvc.spec.extra_flags = vec!["--snapshot-count=5000".into()];
        kvc.spec.image = Some("registry.example/witan:dev".into());
        let json = sts_json(&kvc, 3);
        let pod = &json["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"]["disk"], "ssd");
        assert_eq!(pod["tolerations"][0]["key"], "dedicated");
        assert!(pod.get("affinity").is_some());
        // The user's affinity replaces the default spreading.
        assert!(pod.get("topologySpreadConstraints").is_none());
        let c = &pod["containers"][0];
        assert_eq!(c["resources"]["requests"]["cpu"], "500m");
        assert_eq!(c["args"], json!(["--snapshot-count=5000"]));
        assert_eq!(c["image"], "registry.example/witan:dev");
    }

    #[test]
    fn version_selects_the_image_tag() {
        let mut kvc = kvc(1);
        kvc.spec.version = Some("0.2.0".into());
        let json = sts_json(&kvc, 1);
        assert_eq!(
            json["spec"]["template"]["spec"]["containers"][0]["image"],
            "witan:0.2.0"
        );
        assert_eq!(json["spec"]["replicas"], 1);
    }
}
