//! The backup CronJob: on `spec.backup.schedule`, the operator's own image
//! runs `witan-operator backup` against the client Service, storing the
//! snapshot in the PVC or the S3 bucket and keeping `retention` copies.
//! Owned by the KvCluster; the controller deletes it when `spec.backup` goes.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec},
    core::v1::{
        Container, EnvVar, EnvVarSource, PersistentVolumeClaimVolumeSource, PodSecurityContext,
        PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretKeySelector, Volume,
        VolumeMount,
    },
};
use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta};

use crate::{
    auth::{PASSWORD_KEY, USER_KEY, credentials_secret},
    backup::{CONTAINER, DEFAULT_TERMINATION_LOG},
    crd::{BackupLocation, BackupSpec, KvCluster},
    error::Result,
    names::ClusterNames,
    resources::{child_meta, statefulset::RUN_AS, tls},
};

/// Where a PVC destination is mounted in the backup pod.
pub const BACKUP_MOUNT: &str = "/var/lib/witan-backup";
/// Label on the backup pods naming their KvCluster (the controller lists
/// finished runs by it). Deliberately not the member selector labels: a
/// backup pod must never be counted as, or routed to as, a member.
pub const BACKUP_OF_LABEL: &str = "witan.io/backup-of";
/// The image when the operator is not told its own.
pub const DEFAULT_BACKUP_IMAGE: &str = concat!("witan-operator:", env!("CARGO_PKG_VERSION"));
/// Where the operator image has its binary (the Dockerfile's ENTRYPOINT).
pub const BINARY: &str = "/usr/local/bin/witan-operator";
/// Keys of the S3 credentials Secret.
pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";

/// The CronJob's name.
#[must_use]
pub fn name(names: &ClusterNames) -> String {
    format!("{}-backup", names.name)
}

/// Label selector of this cluster's backup pods.
#[must_use]
pub fn pod_selector(names: &ClusterNames) -> String {
    format!("{BACKUP_OF_LABEL}={}", names.name)
}

/// The backup CronJob of `kvc` for `backup`, running `image`.
pub fn build(
    kvc: &KvCluster,
    names: &ClusterNames,
    backup: &BackupSpec,
    image: &str,
) -> Result<CronJob> {
    let mut pod_labels = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "witan-backup".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), names.name.clone()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "witan-operator".to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            "backup".to_string(),
        ),
    ]);
    pod_labels.insert(BACKUP_OF_LABEL.into(), names.name.clone());

    let mut args = vec![
        "backup".to_string(),
        format!("--endpoints={}", names.client_service_url()),
        format!("--cluster={}", names.name),
        format!("--retention={}", backup.retention.max(1)),
    ];
    let parts = location_parts(&backup.destination, false);
    args.push(format!("--destination={}", parts.target));
    args.extend(parts.s3_args);
    let mut env = parts.env;
    let mut volumes: Vec<Volume> = parts.volume.into_iter().collect();
    let mut volume_mounts: Vec<VolumeMount> = parts.mount.into_iter().collect();
    if let Some(spec) = &kvc.spec.tls {
        let (volume, mount) = tls::client_volume(spec, names);
        volumes.push(volume);
        volume_mounts.push(mount);
        args.extend(tls::client_flags());
    }
    if kvc.spec.auth_enabled() {
        env.extend(credentials_env(names));
    }

    let container = Container {
        name: CONTAINER.into(),
        image: Some(image.into()),
        command: Some(vec![BINARY.into()]),
        args: Some(args),
        env: (!env.is_empty()).then_some(env),
        volume_mounts: (!volume_mounts.is_empty()).then_some(volume_mounts),
        termination_message_path: Some(DEFAULT_TERMINATION_LOG.into()),
        // A crash before the JSON is written still leaves a reason.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("50m".into())),
                ("memory".to_string(), Quantity("64Mi".into())),
            ])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(super::statefulset::restricted()),
        ..Container::default()
    };

    Ok(CronJob {
        metadata: child_meta(kvc, names, name(names))?,
        spec: Some(CronJobSpec {
            schedule: backup.schedule.clone(),
            // One snapshot at a time; a slow one delays the next, never
            // overlaps it.
            concurrency_policy: Some("Forbid".into()),
            // A run missed by more than this (operator or control plane
            // down) is skipped, not replayed in a burst.
            starting_deadline_seconds: Some(300),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(2),
                    active_deadline_seconds: Some(3600),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(pod_labels),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(PodSpec {
                            containers: vec![container],
                            restart_policy: Some("Never".into()),
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
                            volumes: (!volumes.is_empty()).then_some(volumes),
                            ..PodSpec::default()
                        }),
                    },
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        }),
        status: None,
    })
}

/// The operator's user and password, by reference to its credentials
/// Secret: the backup job authenticates as the operator does.
fn credentials_env(names: &ClusterNames) -> Vec<EnvVar> {
    [
        ("WITAN_BACKUP_USER", USER_KEY),
        ("WITAN_BACKUP_PASSWORD", PASSWORD_KEY),
    ]
    .into_iter()
    .map(|(name, key)| EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: credentials_secret(&names.name),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    })
    .collect()
}

/// How a pod reaches a backup location: the `--destination`/`--source`
/// value, the S3 flags, the credentials (by reference) and, for a PVC, the
/// volume and its mount at [`BACKUP_MOUNT`].
pub(crate) struct LocationParts {
    pub target: String,
    pub s3_args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub volume: Option<Volume>,
    pub mount: Option<VolumeMount>,
}

/// [`LocationParts`] of `location`; a PVC is mounted read-only when asked.
pub(crate) fn location_parts(location: &BackupLocation, read_only: bool) -> LocationParts {
    let mut parts = LocationParts {
        target: String::new(),
        s3_args: Vec::new(),
        env: Vec::new(),
        volume: None,
        mount: None,
    };
    if let Some(pvc) = &location.pvc {
        parts.volume = Some(Volume {
            name: "backup".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                read_only: Some(read_only),
            }),
            ..Volume::default()
        });
        // The kubelet validates subPath (relative, no `..`) and creates it.
        parts.mount = Some(VolumeMount {
            name: "backup".into(),
            mount_path: BACKUP_MOUNT.into(),
            sub_path: pvc.sub_path.clone().filter(|p| !p.is_empty()),
            read_only: read_only.then_some(true),
            ..VolumeMount::default()
        });
        parts.target = BACKUP_MOUNT.into();
    } else if let Some(s3) = &location.s3 {
        let prefix = s3.prefix.as_deref().unwrap_or("").trim_matches('/');
        parts.target = if prefix.is_empty() {
            format!("s3://{}", s3.bucket)
        } else {
            format!("s3://{}/{prefix}", s3.bucket)
        };
        parts.s3_args.push(format!("--s3-endpoint={}", s3.endpoint));
        if let Some(region) = &s3.region {
            parts.s3_args.push(format!("--s3-region={region}"));
        }
        if s3.force_path_style {
            parts.s3_args.push("--s3-path-style".into());
        }
        for key in [ACCESS_KEY_ID, SECRET_ACCESS_KEY] {
            parts.env.push(EnvVar {
                name: key.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: s3.credentials_secret_name.clone(),
                        key: key.into(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
            });
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        crd::{PvcLocation, S3Location},
        resources::testing::{assert_owned, kvc, strings},
    };

    fn pvc_backup() -> BackupSpec {
        BackupSpec {
            schedule: "0 */6 * * *".into(),
            destination: BackupLocation {
                pvc: Some(PvcLocation {
                    claim_name: "kv-backups".into(),
                    sub_path: Some("prod/kv".into()),
                }),
                s3: None,
            },
            retention: 5,
        }
    }

    fn s3_backup() -> BackupSpec {
        BackupSpec {
            schedule: "@daily".into(),
            destination: BackupLocation {
                pvc: None,
                s3: Some(S3Location {
                    endpoint: "http://minio.storage:9000".into(),
                    bucket: "backups".into(),
                    prefix: Some("/prod/kv/".into()),
                    region: Some("eu-west-1".into()),
                    force_path_style: true,
                    credentials_secret_name: "s3-creds".into(),
                }),
            },
            retention: 3,
        }
    }

    fn cronjob(backup: &BackupSpec) -> Value {
        let kvc = kvc(3);
        let names = ClusterNames::of(&kvc).unwrap();
        serde_json::to_value(build(&kvc, &names, backup, "witan-operator:test").unwrap()).unwrap()
    }

    fn pod_spec(json: &Value) -> &Value {
        &json["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    }

    #[test]
    fn the_cronjob_is_owned_scheduled_and_never_overlaps() {
        let json = cronjob(&pvc_backup());
        assert_owned(&json);
        assert_eq!(json["metadata"]["name"], "kv-backup");
        assert_eq!(json["spec"]["schedule"], "0 */6 * * *");
        assert_eq!(json["spec"]["concurrencyPolicy"], "Forbid");
        let pod = pod_spec(&json);
        assert_eq!(pod["restartPolicy"], "Never");
        let c = &pod["containers"][0];
        assert_eq!(c["name"], "backup");
        assert_eq!(c["image"], "witan-operator:test");
        assert_eq!(c["command"], json!(["/usr/local/bin/witan-operator"]));
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
        let args = c["args"].as_array().unwrap();
        assert_eq!(args[0], "backup");
        assert!(args.contains(&json!("--endpoints=http://kv-client.prod.svc:2379")));
        assert!(args.contains(&json!("--cluster=kv")));
        assert!(args.contains(&json!("--retention=5")));
    }

    #[test]
    fn backup_pods_are_not_selected_as_members() {
        let json = cronjob(&pvc_backup());
        let labels = &json["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels[BACKUP_OF_LABEL], "kv");
        // The member selector is name=witan + instance=kv: must not match.
        assert_eq!(labels["app.kubernetes.io/name"], "witan-backup");
        let names = ClusterNames::of(&kvc(3)).unwrap();
        assert_eq!(pod_selector(&names), "witan.io/backup-of=kv");
    }

    #[test]
    fn a_pvc_destination_is_mounted_at_its_sub_path() {
        let json = cronjob(&pvc_backup());
        let pod = pod_spec(&json);
        assert_eq!(
            pod["volumes"],
            json!([{"name": "backup", "persistentVolumeClaim":
                    {"claimName": "kv-backups", "readOnly": false}}])
        );
        let c = &pod["containers"][0];
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "backup", "mountPath": BACKUP_MOUNT, "subPath": "prod/kv"}])
        );
        assert!(
            c["args"]
                .as_array()
                .unwrap()
                .contains(&json!("--destination=/var/lib/witan-backup"))
        );
        assert!(c.get("env").is_none());
    }

    #[test]
    fn an_s3_destination_gets_credentials_from_the_secret() {
        let json = cronjob(&s3_backup());
        let pod = pod_spec(&json);
        assert!(pod.get("volumes").is_none());
        let c = &pod["containers"][0];
        let args = strings(&c["args"]);
        for expected in [
            "--destination=s3://backups/prod/kv",
            "--s3-endpoint=http://minio.storage:9000",
            "--s3-region=eu-west-1",
            "--s3-path-style",
            "--retention=3",
        ] {
            assert!(args.contains(&expected), "{expected} in {args:?}");
        }
        // Secrets travel by reference, never as literal values.
        assert_eq!(
            c["env"],
            json!([
                {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef":
                    {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID", "optional": false}}},
                {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef":
                    {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY", "optional": false}}}
            ])
        );
    }

    #[test]
    fn the_backup_pod_meets_the_restricted_pod_security_standard() {
        let json = cronjob(&s3_backup());
        let pod = pod_spec(&json);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(pod["automountServiceAccountToken"], false);
        let sc = &pod["containers"][0]["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    }

    #[test]
    fn with_tls_and_auth_the_job_presents_the_operators_certificate_and_user() {
        let mut kvc = kvc(3);
        kvc.spec.tls = Some(crate::crd::TlsSpec::default());
        kvc.spec.auth = Some(crate::crd::AuthSpec {
            enabled: true,
            root_password_secret_ref: crate::crd::SecretKeyRef {
                name: "root-pw".into(),
                key: "password".into(),
            },
        });
        let names = ClusterNames::of(&kvc).unwrap();
        let json = serde_json::to_value(
            build(&kvc, &names, &pvc_backup(), "witan-operator:test").unwrap(),
        )
        .unwrap();
        let pod = pod_spec(&json);
        crate::resources::testing::assert_restricted_pod(pod);
        let c = &pod["containers"][0];
        let args = strings(&c["args"]);
        assert!(args.contains(&"--endpoints=https://kv-client.prod.svc:2379"));
        assert!(args.contains(&"--cacert=/run/secrets/witan/client/ca.crt"));
        assert!(args.contains(&"--cert=/run/secrets/witan/client/tls.crt"));
        assert!(args.contains(&"--key=/run/secrets/witan/client/tls.key"));
        assert!(c["volumeMounts"].as_array().unwrap().contains(&json!(
            {"name": "tls-client", "mountPath": "/run/secrets/witan/client", "readOnly": true}
        )));
        assert!(pod["volumes"].as_array().unwrap().contains(&json!(
            {"name": "tls-client", "secret": {"secretName": "kv-operator-tls", "optional": false}}
        )));
        let env = c["env"].as_array().unwrap();
        assert!(env.contains(
            &json!({"name": "WITAN_BACKUP_USER", "valueFrom": {"secretKeyRef":
            {"name": "kv-operator-auth", "key": "username", "optional": false}}})
        ));
        assert!(env.contains(
            &json!({"name": "WITAN_BACKUP_PASSWORD", "valueFrom": {"secretKeyRef":
            {"name": "kv-operator-auth", "key": "password", "optional": false}}})
        ));
        // Without them, plain http and no credentials.
        let plain = cronjob(&pvc_backup());
        let c = &pod_spec(&plain)["containers"][0];
        assert!(c["args"][1] == "--endpoints=http://kv-client.prod.svc:2379");
        assert!(c.get("env").is_none());
    }

    #[test]
    fn a_finished_job_of_the_template_triggers_a_reconcile_of_its_cluster() {
        use crate::backup::trigger::kvcluster_of_finished_job;
        use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
        let kvc = kvc(3);
        let names = ClusterNames::of(&kvc).unwrap();
        let cronjob = build(&kvc, &names, &pvc_backup(), "witan-operator:test").unwrap();
        // What the CronJob controller creates: the template's labels, in the
        // CronJob's namespace.
        let mut metadata = cronjob.spec.unwrap().job_template.metadata.unwrap();
        metadata.namespace = Some(names.namespace.clone());
        let job = Job {
            metadata,
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: "Complete".into(),
                    status: "True".into(),
                    ..JobCondition::default()
                }]),
                ..JobStatus::default()
            }),
            ..Job::default()
        };
        let target = kvcluster_of_finished_job(&job).expect("mapped");
        assert_eq!(target.name, names.name);
        assert_eq!(target.namespace.as_deref(), Some(names.namespace.as_str()));
    }
}
