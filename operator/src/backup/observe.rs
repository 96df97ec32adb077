//! From the backup CronJob's finished pods to `status.lastBackup` and the
//! `BackupReady` condition. Pure: the controller lists the pods.

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use super::report::{BackupReport, Outcome};
use crate::crd::{BackupSpec, LastBackup};

/// One finished backup container, as its pod reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupRun {
    pub pod: String,
    pub finished_at: Timestamp,
    pub exit_code: i32,
    /// The termination message (our JSON, or the log tail when the process
    /// died before writing it: `FallbackToLogsOnError`).
    pub message: String,
}

/// The finished runs among `pods` (running or pending ones are skipped).
#[must_use]
pub fn runs_from_pods(pods: &[Pod]) -> Vec<BackupRun> {
    pods.iter()
        .filter_map(|pod| {
            let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
            let terminated = statuses
                .iter()
                .find(|s| s.name == super::CONTAINER)?
                .state
                .as_ref()?
                .terminated
                .as_ref()?;
            Some(BackupRun {
                pod: pod.metadata.name.clone().unwrap_or_default(),
                finished_at: terminated.finished_at.as_ref()?.0,
                exit_code: terminated.exit_code,
                message: terminated.message.clone().unwrap_or_default(),
            })
        })
        .collect()
}

/// `BackupReady`'s status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    True,
    False,
    Unknown,
}

/// What the status says about backups.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupState {
    pub last_backup: Option<LastBackup>,
    pub ready: Readiness,
    pub reason: &'static str,
    pub message: String,
}

/// The backup part of the status: the newest successful run's report (or
/// the previous `lastBackup` when that is newer, e.g. once the CronJob's
/// history limit removed the pods), and whether the newest run succeeded.
#[must_use]
pub fn state(
    spec: Option<&BackupSpec>,
    previous: Option<&LastBackup>,
    runs: &[BackupRun],
) -> BackupState {
    let Some(spec) = spec else {
        return BackupState {
            last_backup: previous.cloned(),
            ready: Readiness::False,
            reason: "NotConfigured",
            message: "spec.backup is not set".into(),
        };
    };
    let mut runs: Vec<(&BackupRun, Option<Outcome>)> = runs
        .iter()
        .map(|run| (run, Outcome::parse(&run.message)))
        .collect();
    // Newest first; the pod name breaks ties so the order is total.
    runs.sort_by(|(a, _), (b, _)| (b.finished_at, &b.pod).cmp(&(a.finished_at, &a.pod)));

    let newest_stored = runs.iter().find_map(|(run, outcome)| match outcome {
        Some(Outcome::Stored(report)) if run.exit_code == 0 => to_last_backup(report),
        _ => None,
    });
    let last_backup = match (newest_stored, previous) {
        (Some(new), Some(old)) if old.time.0 > new.time.0 => Some(old.clone()),
        (Some(new), _) => Some(new),
        (None, old) => old.cloned(),
    };

    match runs.first() {
        Some((run, Some(Outcome::Stored(report)))) if run.exit_code == 0 => BackupState {
            last_backup,
            ready: Readiness::True,
            reason: "BackupSucceeded",
            message: format!(
                "snapshot at revision {} ({} bytes) stored at {}",
                report.revision, report.size, report.location
            ),
        },
        Some((run, outcome)) => BackupState {
            last_backup,
            ready: Readiness::False,
            reason: "BackupFailed",
            message: match outcome {
                Some(Outcome::Failed { error }) => format!("{}: {error}", run.pod),
                _ if run.message.trim().is_empty() => {
                    format!("{} exited with code {}", run.pod, run.exit_code)
                }
                _ => format!(
                    "{} exited with code {}: {}",
                    run.pod,
                    run.exit_code,
                    run.message.trim()
                ),
            },
        },
        None => match last_backup {
            Some(last) => BackupState {
                message: format!(
                    "last snapshot at revision {} stored at {}",
                    last.revision, last.location
                ),
                last_backup: Some(last),
                ready: Readiness::True,
                reason: "BackupSucceeded",
            },
            None => BackupState {
                last_backup: None,
                ready: Readiness::Unknown,
                reason: "NoBackupYet",
                message: format!("no backup has run yet (schedule {:?})", spec.schedule),
            },
        },
    }
}

fn to_last_backup(report: &BackupReport) -> Option<LastBackup> {
    Some(LastBackup {
        time: Time(report.time.parse().ok()?),
        revision: report.revision,
        size_bytes: i64::try_from(report.size).ok()?,
        location: report.location.clone(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::crd::{BackupLocation, PvcLocation};

    fn spec() -> BackupSpec {
        BackupSpec {
            schedule: "0 * * * *".into(),
            destination: BackupLocation {
                pvc: Some(PvcLocation {
                    claim_name: "backups".into(),
                    sub_path: None,
                }),
                s3: None,
            },
            retention: 3,
        }
    }

    fn stored(revision: i64, time: &str) -> String {
        Outcome::Stored(BackupReport {
            time: time.into(),
            revision,
            size: 1056,
            location: format!("/b/kv-rev{revision}"),
            sha256: String::new(),
            pruned: vec![],
        })
        .to_json()
    }

    fn run(pod: &str, finished_second: i64, exit_code: i32, message: String) -> BackupRun {
        BackupRun {
            pod: pod.into(),
            finished_at: Timestamp::from_second(1_767_000_000 + finished_second).unwrap(),
            exit_code,
            message,
        }
    }

    #[test]
    fn finished_pods_become_runs_and_others_are_skipped() {
        let pod = |name: &str, state: serde_json::Value| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "status": {"containerStatuses": [{
                    "name": "backup", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": state
                }]}
            }))
            .unwrap()
        };
        let pods = vec![
            pod(
                "done",
                json!({"terminated": {"exitCode": 0, "message": "{}",
                        "finishedAt": "2026-01-01T00:00:00Z"}}),
            ),
            pod("running", json!({"running": {}})),
            serde_json::from_value(json!({"metadata": {"name": "pending"}})).unwrap(),
        ];
        let runs = runs_from_pods(&pods);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].pod, "done");
        assert_eq!(runs[0].message, "{}");
        assert_eq!(
            runs[0].finished_at,
            "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn the_newest_success_fills_last_backup_and_makes_backups_ready() {
        let runs = vec![
            run("a", 10, 0, stored(5, "2026-01-01T00:00:00Z")),
            run("b", 20, 0, stored(9, "2026-01-01T01:00:00Z")),
        ];
        let s = state(Some(&spec()), None, &runs);
        assert_eq!(s.ready, Readiness::True);
        assert_eq!(s.reason, "BackupSucceeded");
        let last = s.last_backup.unwrap();
        assert_eq!(last.revision, 9);
        assert_eq!(last.size_bytes, 1056);
        assert_eq!(last.location, "/b/kv-rev9");
        assert_eq!(last.time.0, "2026-01-01T01:00:00Z".parse().unwrap());
    }

    #[test]
    fn a_failed_newest_run_is_not_ready_but_keeps_the_last_success() {
        let runs = vec![
            run("ok", 10, 0, stored(5, "2026-01-01T00:00:00Z")),
            run(
                "bad",
                20,
                1,
                Outcome::Failed {
                    error: "S3: access denied".into(),
                }
                .to_json(),
            ),
        ];
        let s = state(Some(&spec()), None, &runs);
        assert_eq!(s.ready, Readiness::False);
        assert_eq!(s.reason, "BackupFailed");
        assert_eq!(s.message, "bad: S3: access denied");
        assert_eq!(s.last_backup.unwrap().revision, 5);

        // A process that died before writing its message: the log tail.
        let crashed = vec![run("oom", 30, 137, "killed\n".into())];
        let s = state(Some(&spec()), None, &crashed);
        assert_eq!(s.message, "oom exited with code 137: killed");
        assert_eq!(s.last_backup, None);
    }

    #[test]
    fn without_runs_the_previous_backup_stands_or_none_ran_yet() {
        let s = state(Some(&spec()), None, &[]);
        assert_eq!(s.ready, Readiness::Unknown);
        assert_eq!(s.reason, "NoBackupYet");

        let previous = LastBackup {
            time: Time("2026-01-01T00:00:00Z".parse().unwrap()),
            revision: 3,
            size_bytes: 1,
            location: "/b/x".into(),
        };
        let s = state(Some(&spec()), Some(&previous), &[]);
        assert_eq!(s.ready, Readiness::True);
        assert_eq!(s.last_backup, Some(previous.clone()));

        // An older success in the pods never replaces a newer recorded one.
        let runs = vec![run("old", 1, 0, stored(2, "2025-12-31T00:00:00Z"))];
        let s = state(Some(&spec()), Some(&previous), &runs);
        assert_eq!(s.last_backup, Some(previous));
    }

    #[test]
    fn no_backup_spec_is_not_configured() {
        let s = state(None, None, &[]);
        assert_eq!(s.ready, Readiness::False);
        assert_eq!(s.reason, "NotConfigured");
    }
}
