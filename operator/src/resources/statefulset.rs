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
            Capabilities, ConfigMapEnvSource, ConfigMapKeySelector, Container, ContainerPort,
            EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction,
            ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
            PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
            SeccompProfile, SecurityContext, TopologySpreadConstraint, Volume, VolumeMount,
            VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use crate::{
    backup::DEFAULT_TERMINATION_LOG,
    crd::{KvCluster, LATEST, RestoreSpec, VolumePolicy},
    error::Result,
    names::{CLIENT_PORT, ClusterNames, METRICS_PORT, PEER_PORT, image},
    resources::{child_meta, cronjob, tls},
    restore::{self, argv},
};

/// Where each member's volume is mounted; the data dir lives below it.
pub const DATA_MOUNT: &str = "/var/lib/witan";
/// The data dir inside the volume (a subdirectory, so a filesystem's
/// `lost+found` never sits in it).
pub const DATA_DIR: &str = "/var/lib/witan/data";
/// The non-root user and group of the witan image.
pub const RUN_AS: i64 = 65532;
/// The emptyDir the restore init containers share.
pub const RESTORE_VOLUME: &str = "restore";

/// Label on member pods whose client port speaks TLS.
pub const TLS_LABEL: &str = "witan.io/tls";

/// Where the node image has `witan` (the Dockerfile's ENTRYPOINT).
pub const WITAN_BINARY: &str = "/usr/local/bin/witan";

/// The member StatefulSet with `replicas` pods. `operator_image` runs the
/// restore fetch step when `spec.bootstrap.restore` is set.
pub fn build(
    kvc: &KvCluster,
    names: &ClusterNames,
    replicas: i32,
    operator_image: &str,
) -> Result<StatefulSet> {
    let spec = &kvc.spec;
    let mut pod_labels = names.labels();
    pod_labels.insert("witan.io/cluster".into(), names.name.clone());
    if spec.tls.is_some() {
        // Monitoring scrapes such members on the plain-http metrics port,
        // not the client port (charts/witan/templates/podmonitor.yaml).
        pod_labels.insert(TLS_LABEL.into(), "true".into());
    }

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
                spec: Some(pod_spec(kvc, names, operator_image)),
            },
            volume_claim_templates: Some(vec![volume_claim_template(kvc)]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    })
}

fn pod_spec(kvc: &KvCluster, names: &ClusterNames, operator_image: &str) -> PodSpec {
    let placement = &kvc.spec.placement;
    let topology_spread_constraints =
        match (&placement.topology_spread_constraints, &placement.affinity) {
            (Some(user), _) => Some(user.clone()),
            // The user chose their own placement rules: add nothing.
            (None, Some(_)) => None,
            (None, None) => Some(vec![spread_across_nodes(names)]),
        };
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    let mut member = container(kvc, names);
    if let Some(spec) = &kvc.spec.tls {
        for (volume, mount) in tls::member_volumes(spec, names) {
            volumes.push(volume);
            member
                .volume_mounts
                .get_or_insert_with(Vec::new)
                .push(mount);
        }
    }
    let restore = kvc.spec.bootstrap.as_ref().and_then(|b| b.restore.as_ref());
    let init_containers = restore.map(|restore| {
        volumes.extend(restore_volumes(restore));
        restore_init_containers(kvc, names, restore, operator_image)
    });
    PodSpec {
        init_containers,
        containers: vec![member],
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
        volumes: Some(volumes),
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

/// The member's identity and URLs as `WITAN_*` variables: `WITAN_NAME`
/// from the pod name first, so the others can expand it.
fn member_env(names: &ClusterNames) -> Vec<EnvVar> {
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
    let scheme = names.scheme();
    vec![
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
            format!("{scheme}://0.0.0.0:{CLIENT_PORT}"),
        ),
        env_value(
            "WITAN_ADVERTISE_CLIENT_URLS",
            format!("{scheme}://{host}:{CLIENT_PORT}"),
        ),
        env_value(
            "WITAN_LISTEN_PEER_URLS",
            format!("{scheme}://0.0.0.0:{PEER_PORT}"),
        ),
        env_value(
            "WITAN_INITIAL_ADVERTISE_PEER_URLS",
            format!("{scheme}://{host}:{PEER_PORT}"),
        ),
        // The operator adds every new member as a learner before one joint
        // change promotes them all: growing 1 -> 9 adds 8 at once, where
        // witan (like etcd) allows 1 by default.
        env_value("WITAN_MAX_LEARNERS", MAX_LEARNERS.to_string()),
    ]
}

/// `--initial-cluster`, `--initial-cluster-state`, `--initial-cluster-token`
/// from the cluster's ConfigMap.
fn configmap_env(names: &ClusterNames) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: names.configmap(),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }]
}

/// The `restricted` Pod Security Standard, for every container the
/// operator creates (members, their init containers, backup jobs).
pub(crate) fn restricted() -> SecurityContext {
    SecurityContext {
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
    }
}

fn container(kvc: &KvCluster, names: &ClusterNames) -> Container {
    let env = member_env(names);
    let mut ports = vec![
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
    ];
    // With TLS the client port may demand a client certificate, which a
    // kubelet probe cannot present: probe the plain-http metrics port.
    let mut args = Vec::new();
    let probe_port = match &kvc.spec.tls {
        Some(spec) => {
            args.extend(tls::member_flags(spec));
            ports.push(ContainerPort {
                name: Some("metrics".into()),
                container_port: METRICS_PORT,
                ..ContainerPort::default()
            });
            "metrics"
        }
        None => "client",
    };
    args.extend(kvc.spec.extra_flags.iter().cloned());
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(probe_port.into()),
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
        args: (!args.is_empty()).then_some(args),
        env: Some(env),
        // --initial-cluster, --initial-cluster-state, --initial-cluster-token.
        env_from: Some(configmap_env(names)),
        ports: Some(ports),
        // A restored or large member may take a while to open its store.
        startup_probe: Some(probe("/livez", 2, 150)),
        liveness_probe: Some(probe("/livez", 10, 3)),
        // Not ready without a leader or while a learner (see the node's /readyz).
        readiness_probe: Some(probe("/readyz", 5, 2)),
        resources: kvc.spec.resources.clone(),
        security_context: Some(restricted()),
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

/// The volumes the restore steps add: the shared work dir and, for a PVC
/// source, the backups' claim.
fn restore_volumes(restore: &RestoreSpec) -> Vec<Volume> {
    let mut volumes = vec![Volume {
        name: RESTORE_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    volumes.extend(cronjob::location_parts(&restore.source, true).volume);
    volumes
}

/// The two restore init containers (see `crate::restore`): fetch in the
/// operator image, then `witan snapshot restore` in the member's image,
/// run by the operator binary the first step left in the work dir (the
/// node image has no shell to make it conditional).
fn restore_init_containers(
    kvc: &KvCluster,
    names: &ClusterNames,
    restore: &RestoreSpec,
    operator_image: &str,
) -> Vec<Container> {
    let source = cronjob::location_parts(&restore.source, true);
    let mut args = vec![
        "restore-fetch".to_string(),
        format!("--source={}", source.target),
        format!("--backup={}", restore.name),
    ];
    if restore.name == LATEST {
        args.push(format!(
            "--source-cluster={}",
            restore.source_cluster.as_deref().unwrap_or(&names.name)
        ));
        // Every member chooses among the same backups, whenever it starts.
        if let Some(created) = &kvc.metadata.creation_timestamp {
            args.push(format!("--not-after={}", created.0));
        }
    }
    args.extend([
        format!("--data-dir={DATA_DIR}"),
        format!("--work-dir={}", restore::WORK_DIR),
    ]);
    args.extend(source.s3_args);
    let mut env = source.env;
    env.push(EnvVar {
        name: "WITAN_INITIAL_CLUSTER_STATE".into(),
        value: None,
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: names.configmap(),
                key: "WITAN_INITIAL_CLUSTER_STATE".into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    });
    let work_mount = VolumeMount {
        name: RESTORE_VOLUME.into(),
        mount_path: restore::WORK_DIR.into(),
        ..VolumeMount::default()
    };
    let data_mount = |read_only: bool| VolumeMount {
        name: "data".into(),
        mount_path: DATA_MOUNT.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    };
    let mut fetch_mounts = vec![data_mount(true), work_mount.clone()];
    fetch_mounts.extend(source.mount);
    let fetch = Container {
        name: restore::FETCH_CONTAINER.into(),
        image: Some(operator_image.into()),
        command: Some(vec![cronjob::BINARY.into()]),
        args: Some(args),
        env: Some(env),
        volume_mounts: Some(fetch_mounts),
        termination_message_path: Some(DEFAULT_TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("50m".into())),
                ("memory".to_string(), Quantity("64Mi".into())),
            ])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(restricted()),
        ..Container::default()
    };

    let mut apply_args = vec![
        "restore-apply".to_string(),
        format!("--work-dir={}", restore::WORK_DIR),
        "--".to_string(),
    ];
    apply_args.extend(argv::witan_restore(
        WITAN_BINARY,
        &format!("{}/{}", restore::WORK_DIR, restore::SNAPSHOT_FILE),
        DATA_DIR,
        &argv::MemberFlags::from_pod_env(),
    ));
    let apply = Container {
        name: restore::APPLY_CONTAINER.into(),
        image: Some(image(kvc)),
        command: Some(vec![format!(
            "{}/{}",
            restore::WORK_DIR,
            restore::BINARY_IN_WORK_DIR
        )]),
        args: Some(apply_args),
        // The same identity and URLs as the member container: the data dir
        // is built for exactly the member that will run it.
        env: Some(member_env(names)),
        env_from: Some(configmap_env(names)),
        volume_mounts: Some(vec![data_mount(false), work_mount]),
        termination_message_path: Some(DEFAULT_TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        // `witan snapshot restore` holds the snapshot in memory: size it
        // like the member.
        resources: kvc.spec.resources.clone(),
        security_context: Some(restricted()),
        ..Container::default()
    };
    vec![fetch, apply]
}

/// The name of each member's volume claim template (and volume).
pub const DATA_VOLUME: &str = "data";

/// The PersistentVolumeClaim the StatefulSet made for member `ordinal`.
#[must_use]
pub fn claim_name(names: &ClusterNames, ordinal: u32) -> String {
    format!("{DATA_VOLUME}-{}", names.member(ordinal))
}

/// The `data` claim template of a StatefulSet.
#[must_use]
pub fn data_claim_template(statefulset: &StatefulSet) -> Option<&PersistentVolumeClaim> {
    statefulset
        .spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some(DATA_VOLUME))
}

/// `spec.resources.requests.storage` of a claim or claim template.
#[must_use]
pub fn claim_request(claim: &PersistentVolumeClaim) -> Option<String> {
    claim
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

/// Keep the claim template of a StatefulSet that exists: its
/// `volumeClaimTemplates` cannot change, so a new `spec.storage` reaches it
/// only when it is created again (see `crate::storage`).
pub fn keep_claim_template(statefulset: &mut StatefulSet, size: &str, class: Option<String>) {
    let template = statefulset
        .spec
        .as_mut()
        .and_then(|s| s.volume_claim_templates.as_mut())
        .and_then(|t| {
            t.iter_mut()
                .find(|t| t.metadata.name.as_deref() == Some(DATA_VOLUME))
        })
        .and_then(|t| t.spec.as_mut());
    if let Some(spec) = template {
        spec.storage_class_name = class;
        spec.resources = Some(VolumeResourceRequirements {
            requests: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity(size.to_string()),
            )])),
            limits: None,
        });
    }
}

fn volume_claim_template(kvc: &KvCluster) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
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
    use crate::{
        crd::{BackupLocation, BootstrapSpec, PvcLocation, S3Location, TlsSpec},
        resources::testing::{assert_owned, assert_restricted_pod, kvc, strings},
    };

    fn sts_json(kvc: &KvCluster, replicas: i32) -> Value {
        let names = ClusterNames::of(kvc).unwrap();
        serde_json::to_value(build(kvc, &names, replicas, "witan-operator:test").unwrap()).unwrap()
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
    fn an_existing_statefulset_keeps_its_claim_template_and_its_claims_are_named_by_member() {
        let mut kvc = kvc(3);
        kvc.spec.storage.size = Quantity("8Gi".into());
        let names = ClusterNames::of(&kvc).unwrap();
        let mut sts = build(&kvc, &names, 3, "witan-operator:test").unwrap();
        assert_eq!(
            claim_request(data_claim_template(&sts).unwrap()).as_deref(),
            Some("8Gi")
        );
        keep_claim_template(&mut sts, "1Gi", Some("slow".into()));
        let template = data_claim_template(&sts).unwrap();
        assert_eq!(claim_request(template).as_deref(), Some("1Gi"));
        assert_eq!(
            template
                .spec
                .as_ref()
                .unwrap()
                .storage_class_name
                .as_deref(),
            Some("slow")
        );
        // What the StatefulSet controller names them: <template>-<pod>.
        assert_eq!(claim_name(&names, 2), "data-kv-2");
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

    fn with_tls(client_cert_auth: bool) -> KvCluster {
        let mut kvc = kvc(3);
        kvc.spec.tls = Some(TlsSpec {
            client_cert_auth,
            ..TlsSpec::default()
        });
        kvc.spec.extra_flags = vec!["--snapshot-count=5000".into()];
        kvc
    }

    #[test]
    fn tls_mounts_the_secrets_read_only_uses_https_and_probes_the_metrics_port() {
        let json = sts_json(&with_tls(true), 3);
        let pod = &json["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let env = env(&json);
        assert_eq!(
            env["WITAN_INITIAL_ADVERTISE_PEER_URLS"],
            "https://$(WITAN_NAME).kv-peer.prod.svc:2380"
        );
        assert_eq!(
            env["WITAN_ADVERTISE_CLIENT_URLS"],
            "https://$(WITAN_NAME).kv-peer.prod.svc:2379"
        );
        assert_eq!(env["WITAN_LISTEN_CLIENT_URLS"], "https://0.0.0.0:2379");
        assert_eq!(env["WITAN_LISTEN_PEER_URLS"], "https://0.0.0.0:2380");
        let args = strings(&c["args"]);
        assert!(args.contains(&"--client-cert-auth"));
        assert!(args.contains(&"--peer-client-cert-auth"));
        assert!(args.contains(&"--cert-file=/run/secrets/witan/server/tls.crt"));
        assert!(args.contains(&"--listen-metrics-urls=http://0.0.0.0:2381"));
        // The user's flags come last, so they can override ours.
        assert_eq!(args.last(), Some(&"--snapshot-count=5000"));
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
        }
        assert_eq!(
            c["ports"][2],
            json!({"name": "metrics", "containerPort": 2381})
        );
        assert_eq!(
            json["spec"]["template"]["metadata"]["labels"]["witan.io/tls"],
            "true"
        );
        let mounts = c["volumeMounts"].as_array().unwrap();
        assert!(mounts.contains(&json!({"name": "tls-server",
            "mountPath": "/run/secrets/witan/server", "readOnly": true})));
        assert!(mounts.contains(&json!({"name": "tls-peer",
            "mountPath": "/run/secrets/witan/peer", "readOnly": true})));
        let volumes = pod["volumes"].as_array().unwrap();
        assert!(volumes.contains(&json!({"name": "tls-server",
            "secret": {"secretName": "kv-server-tls", "optional": false}})));
        assert!(volumes.contains(&json!({"name": "tls-peer",
            "secret": {"secretName": "kv-peer-tls", "optional": false}})));

        let without = sts_json(&with_tls(false), 3);
        let args = strings(&without["spec"]["template"]["spec"]["containers"][0]["args"]);
        assert!(!args.contains(&"--client-cert-auth"));
    }

    #[test]
    fn rotating_a_certificate_cannot_change_the_pod_template() {
        // The template names the Secrets and nothing about their content:
        // no checksum annotation, so a renewed certificate rolls nothing
        // (the node reloads the files).
        let json = sts_json(&with_tls(true), 3);
        let template = &json["spec"]["template"];
        assert!(template["metadata"].get("annotations").is_none());
        assert!(!template.to_string().contains("checksum"));
    }

    #[test]
    fn every_member_pod_shape_meets_the_restricted_profile_without_api_access() {
        let mut restoring = restoring("latest", s3_source());
        restoring.spec.tls = Some(TlsSpec::default());
        for kvc in [kvc(3), with_tls(true), restoring] {
            let json = sts_json(&kvc, 3);
            let pod = &json["spec"]["template"]["spec"];
            assert_restricted_pod(pod);
        }
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
    fn restoring(name: &str, source: BackupLocation) -> KvCluster {
        let mut kvc = kvc(3);
        kvc.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-02T03:04:05Z".parse().unwrap(),
            ));
        kvc.spec.bootstrap = Some(BootstrapSpec {
            restore: Some(RestoreSpec {
                source,
                name: name.into(),
                source_cluster: None,
            }),
        });
        kvc
    }

    fn s3_source() -> BackupLocation {
        BackupLocation {
            pvc: None,
            s3: Some(S3Location {
                endpoint: "http://minio:9000".into(),
                bucket: "backups".into(),
                prefix: Some("prod/kv".into()),
                region: None,
                force_path_style: true,
                credentials_secret_name: "s3-creds".into(),
            }),
        }
    }

    #[test]
    fn without_restore_there_are_no_init_containers() {
        let json = sts_json(&kvc(3), 3);
        assert!(
            json["spec"]["template"]["spec"]
                .get("initContainers")
                .is_none()
        );
    }

    #[test]
    fn restore_fetches_in_the_operator_image_then_restores_in_the_member_image() {
        let mut kvc = restoring("kv-20260101T000000.000Z-rev7.witan-snapshot", s3_source());
        kvc.spec.image = Some("registry.example/witan:dev".into());
        let json = sts_json(&kvc, 3);
        let pod = &json["spec"]["template"]["spec"];
        let init = pod["initContainers"].as_array().unwrap();
        assert_eq!(init.len(), 2);
        let (fetch, apply) = (&init[0], &init[1]);

        assert_eq!(fetch["name"], "restore-fetch");
        assert_eq!(fetch["image"], "witan-operator:test");
        assert_eq!(fetch["command"], json!(["/usr/local/bin/witan-operator"]));
        assert_eq!(
            strings(&fetch["args"]),
            [
                "restore-fetch",
                "--source=s3://backups/prod/kv",
                "--backup=kv-20260101T000000.000Z-rev7.witan-snapshot",
                "--data-dir=/var/lib/witan/data",
                "--work-dir=/var/lib/witan-restore",
                "--s3-endpoint=http://minio:9000",
                "--s3-path-style",
            ]
        );
        // Credentials by reference; the decision reads the ConfigMap's state.
        let env = fetch["env"].as_array().unwrap();
        assert_eq!(env[0]["valueFrom"]["secretKeyRef"]["name"], "s3-creds");
        assert_eq!(env[1]["name"], "AWS_SECRET_ACCESS_KEY");
        assert_eq!(
            env[2],
            json!({"name": "WITAN_INITIAL_CLUSTER_STATE", "valueFrom": {"configMapKeyRef":
                {"name": "kv-config", "key": "WITAN_INITIAL_CLUSTER_STATE", "optional": false}}})
        );
        // It only looks at the data dir.
        assert_eq!(
            fetch["volumeMounts"],
            json!([
                {"name": "data", "mountPath": "/var/lib/witan", "readOnly": true},
                {"name": "restore", "mountPath": "/var/lib/witan-restore"}
            ])
        );
        assert_eq!(fetch["terminationMessagePolicy"], "FallbackToLogsOnError");

        assert_eq!(apply["name"], "restore");
        assert_eq!(apply["image"], "registry.example/witan:dev");
        assert_eq!(
            apply["command"],
            json!(["/var/lib/witan-restore/bin/witan-operator"])
        );
        assert_eq!(
            strings(&apply["args"]),
            [
                "restore-apply",
                "--work-dir=/var/lib/witan-restore",
                "--",
                "/usr/local/bin/witan",
                "snapshot",
                "restore",
                "/var/lib/witan-restore/backup.witan-snapshot",
                "--data-dir",
                "/var/lib/witan/data",
                "--name",
                "$(WITAN_NAME)",
                "--initial-cluster",
                "$(WITAN_INITIAL_CLUSTER)",
                "--initial-advertise-peer-urls",
                "$(WITAN_INITIAL_ADVERTISE_PEER_URLS)",
                "--initial-cluster-token",
                "$(WITAN_INITIAL_CLUSTER_TOKEN)",
            ]
        );
        // The variables the args refer to are the member container's own.
        let main = &pod["containers"][0];
        assert_eq!(apply["env"], main["env"]);
        assert_eq!(apply["envFrom"], main["envFrom"]);
        assert_eq!(
            apply["volumeMounts"],
            json!([
                {"name": "data", "mountPath": "/var/lib/witan"},
                {"name": "restore", "mountPath": "/var/lib/witan-restore"}
            ])
        );
        for c in init {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["allowPrivilegeEscalation"], false);
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        }
        let volumes = pod["volumes"].as_array().unwrap();
        assert_eq!(volumes[1], json!({"name": "restore", "emptyDir": {}}));
        assert_eq!(volumes.len(), 2);
    }

    #[test]
    fn latest_is_bounded_by_the_clusters_creation_and_a_pvc_is_mounted_read_only() {
        let mut kvc = restoring(
            "latest",
            BackupLocation {
                pvc: Some(PvcLocation {
                    claim_name: "kv-backups".into(),
                    sub_path: Some("prod".into()),
                }),
                s3: None,
            },
        );
        let json = sts_json(&kvc, 3);
        let pod = &json["spec"]["template"]["spec"];
        let fetch = &pod["initContainers"][0];
        assert_eq!(
            strings(&fetch["args"])[..5],
            [
                "restore-fetch",
                "--source=/var/lib/witan-backup",
                "--backup=latest",
                "--source-cluster=kv",
                "--not-after=2026-01-02T03:04:05Z",
            ]
        );
        assert_eq!(
            fetch["volumeMounts"][2],
            json!({"name": "backup", "mountPath": "/var/lib/witan-backup",
                   "subPath": "prod", "readOnly": true})
        );
        assert_eq!(
            pod["volumes"][2],
            json!({"name": "backup", "persistentVolumeClaim":
                   {"claimName": "kv-backups", "readOnly": true}})
        );
        // Only the fetch step sees the backups.
        assert_eq!(
            pod["initContainers"][1]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            2
        );

        kvc.spec
            .bootstrap
            .as_mut()
            .unwrap()
            .restore
            .as_mut()
            .unwrap()
            .source_cluster = Some("old-kv".into());
        let json = sts_json(&kvc, 3);
        assert!(
            strings(&json["spec"]["template"]["spec"]["initContainers"][0]["args"])
                .contains(&"--source-cluster=old-kv")
        );
    }
}
