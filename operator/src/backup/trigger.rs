//! Which KvCluster a finished backup Job belongs to. The backup Jobs are
//! owned by the CronJob, not by the KvCluster, so `Controller::owns` does not
//! see them; the controller watches them itself and reconciles the cluster
//! named by their label as soon as one finishes, instead of waiting for the
//! periodic requeue to notice `status.lastBackup`. Pure.

use k8s_openapi::api::batch::v1::Job;
use kube::runtime::reflector::ObjectRef;

use crate::{crd::KvCluster, resources::cronjob::BACKUP_OF_LABEL};

/// Label selector of the Jobs the operator's backup CronJobs create (the
/// CronJob's job template carries these labels).
#[must_use]
pub fn job_selector() -> String {
    format!("app.kubernetes.io/managed-by=witan-operator,{BACKUP_OF_LABEL}")
}

/// The KvCluster to reconcile for `job`: the one its backup label names, in
/// its namespace, once the Job has finished (`Complete` or `Failed`). A
/// running Job changes nothing the status reports, so it triggers nothing.
#[must_use]
pub fn kvcluster_of_finished_job(job: &Job) -> Option<ObjectRef<KvCluster>> {
    let labels = job.metadata.labels.as_ref()?;
    if labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        != Some("witan-operator")
    {
        return None;
    }
    let cluster = labels
        .get(BACKUP_OF_LABEL)
        .filter(|name| !name.is_empty())?;
    let namespace = job.metadata.namespace.as_deref()?;
    let finished = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        });
    finished.then(|| ObjectRef::new(cluster).within(namespace))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn job(labels: &[(&str, &str)], condition: Option<(&str, &str)>) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("kv-backup-29000000".into()),
                namespace: Some("prod".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..ObjectMeta::default()
            },
            status: Some(JobStatus {
                conditions: condition.map(|(type_, status)| {
                    vec![JobCondition {
                        type_: type_.into(),
                        status: status.into(),
                        ..JobCondition::default()
                    }]
                }),
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    const OURS: &[(&str, &str)] = &[
        ("app.kubernetes.io/managed-by", "witan-operator"),
        (BACKUP_OF_LABEL, "kv"),
    ];

    #[test]
    fn a_completed_backup_job_maps_to_its_kvcluster_in_its_namespace() {
        let target = kvcluster_of_finished_job(&job(OURS, Some(("Complete", "True"))));
        assert_eq!(target, Some(ObjectRef::new("kv").within("prod")));
    }

    #[test]
    fn a_failed_backup_job_maps_too() {
        let target = kvcluster_of_finished_job(&job(OURS, Some(("Failed", "True"))));
        assert_eq!(target, Some(ObjectRef::new("kv").within("prod")));
    }

    #[test]
    fn a_running_job_triggers_nothing() {
        assert_eq!(kvcluster_of_finished_job(&job(OURS, None)), None);
        // Kubernetes adds these while a Job is still going.
        assert_eq!(
            kvcluster_of_finished_job(&job(OURS, Some(("SuccessCriteriaMet", "True")))),
            None
        );
        assert_eq!(
            kvcluster_of_finished_job(&job(OURS, Some(("Complete", "False")))),
            None
        );
    }

    #[test]
    fn jobs_that_are_not_our_backups_trigger_nothing() {
        let done = Some(("Complete", "True"));
        assert_eq!(
            kvcluster_of_finished_job(&job(&[(BACKUP_OF_LABEL, "kv")], done)),
            None,
            "not managed by the operator"
        );
        assert_eq!(
            kvcluster_of_finished_job(&job(
                &[("app.kubernetes.io/managed-by", "witan-operator")],
                done
            )),
            None,
            "no cluster label"
        );
        assert_eq!(
            kvcluster_of_finished_job(&job(
                &[
                    ("app.kubernetes.io/managed-by", "witan-operator"),
                    (BACKUP_OF_LABEL, "")
                ],
                done
            )),
            None,
            "empty cluster label"
        );
    }

    #[test]
    fn the_watch_selector_names_the_labels_the_cronjob_template_sets() {
        assert_eq!(
            job_selector(),
            "app.kubernetes.io/managed-by=witan-operator,witan.io/backup-of"
        );
    }
}
